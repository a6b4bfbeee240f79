/* Text that crosses a trust boundary: escaping for one log line or terminal
 * cell, and validators for the few shapes a peer may send us.
 *
 * Every string that came from the network, a file or the environment goes
 * through sr_esc() before it is printed, or through a validator before it
 * is stored. */
#ifndef SR_TEXT_H
#define SR_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* s (may be NULL: "") for one line: printable ASCII stays, '"' and '\\' get
 * a backslash, every other byte becomes \xNN; at most max_in input bytes are
 * shown (0: as many as fit), a cut value ends in "...". Always
 * NUL-terminates buf (len >= 1). Returns buf. */
const char *sr_esc_n(const char *s, size_t max_in, char *buf, size_t len);
#define sr_esc(s, buf, len) sr_esc_n((s), 0, (buf), (len))
/* As sr_esc_n, but every byte it would escape becomes '?'. For peer text
 * inside a message that is itself quoted or escaped later (error strings):
 * nothing is escaped twice, and no '"' ends the quote around it. */
const char *sr_mask_n(const char *s, size_t max_in, char *buf, size_t len);
/* Enough room for sr_esc or sr_mask_n of an n-byte string: 4 bytes per byte,
 * plus "...". */
#define SR_ESC_SIZE(n) (4 * (n) + 4)

/* Copy in[0..n) to out with control bytes (< 0x20, 0x7f, and both bytes of a
 * C1 character's UTF-8) as \xNN; used by the logger on a whole formatted
 * line. Returns the length written (at most outlen - 1), NUL-terminated. */
size_t sr_esc_ctl(const char *in, size_t n, char *out, size_t outlen);

/* Length of the well-formed UTF-8 sequence at s (its code point in *cp), or 0
 * for an invalid one (overlong, surrogate, past U+10FFFF, cut by the NUL). */
size_t sr_utf8_next(const unsigned char *s, uint32_t *cp);
/* A code point a terminal may act on: C0, DEL or C1 (U+0080..U+009F; U+009B
 * is CSI). */
#define sr_is_ctl(cp) ((cp) < 0x20 || ((cp) >= 0x7f && (cp) <= 0x9f))
/* Why the NUL-terminated s is not one line of text a peer may send (not
 * well-formed UTF-8, or a control character per sr_is_ctl), or NULL. */
const char *sr_text_problem(const char *s);
/* In place, for one line of valid UTF-8: every byte of a control character
 * (sr_is_ctl) and every byte that is not part of well-formed UTF-8 (a
 * sequence cut short, say) becomes '?'. The length does not change. NULL is
 * a no-op. */
void sr_mask_ctl(char *s);

/* A host a peer may name: a DNS name (letters, digits, '-' and '.', labels of
 * 1..63 characters not starting or ending with '-', 253 at most) or an IPv4 or
 * IPv6 literal (without brackets). */
int sr_valid_host(const char *s);

/* Every byte of s is in the set: ASCII letters, digits, and the characters
 * of extra; and 1 <= strlen(s) <= max. */
int sr_valid_chars(const char *s, size_t max, const char *extra);

#endif
