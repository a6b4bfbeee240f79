#include "common/sr_text.h"

#include <arpa/inet.h>
#include <string.h>

static const char hexd[] = "0123456789abcdef";

/* sr_esc_n, or with mask set sr_mask_n: one rule for which bytes are kept. */
static const char *text_quote(const char *s, size_t max_in, char *buf, size_t len, int mask)
{
	size_t i, o = 0;

	if (!s)
		s = "";
	for (i = 0; s[i] && (max_in == 0 || i < max_in); i++) {
		unsigned char c = (unsigned char)s[i];
		char one[4];
		size_t k = 0;

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
			one[k++] = (char)c;
		} else if (mask) {
			one[k++] = '?';
		} else if (c == '"' || c == '\\') {
			one[k++] = '\\';
			one[k++] = (char)c;
		} else {
			one[k++] = '\\';
			one[k++] = 'x';
			one[k++] = hexd[c >> 4];
			one[k++] = hexd[c & 15];
		}
		if (o + k + 4 > len) /* keep room for "..." and the NUL */
			break;
		memcpy(buf + o, one, k);
		o += k;
	}
	if (s[i] && o + 4 <= len) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	if (len)
		buf[o < len ? o : len - 1] = '\0';
	return buf;
}

const char *sr_esc_n(const char *s, size_t max_in, char *buf, size_t len)
{
	return text_quote(s, max_in, buf, len, 0);
}

const char *sr_mask_n(const char *s, size_t max_in, char *buf, size_t len)
{
	return text_quote(s, max_in, buf, len, 1);
}

size_t sr_utf8_next(const unsigned char *s, uint32_t *cp)
{
	uint32_t v, min;
	size_t n;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2, v = s[0] & 0x1fu, min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3, v = s[0] & 0x0fu, min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4, v = s[0] & 0x07u, min = 0x10000;
	} else {
		return 0;
	}
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3fu);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

const char *sr_text_problem(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		uint32_t cp;
		size_t k = sr_utf8_next(p, &cp);

		if (k == 0)
			return "not UTF-8";
		if (sr_is_ctl(cp))
			return "control character";
		p += k;
	}
	return NULL;
}

void sr_mask_ctl(char *s)
{
	unsigned char *p = (unsigned char *)s;

	while (p && *p) {
		uint32_t cp;
		size_t k = sr_utf8_next(p, &cp);

		if (k == 0) {
			*p++ = '?';
		} else if (sr_is_ctl(cp)) {
			memset(p, '?', k);
			p += k;
		} else {
			p += k;
		}
	}
}

static int c1_trail(char c)
{
	return (unsigned char)c >= 0x80 && (unsigned char)c <= 0x9f;
}

size_t sr_esc_ctl(const char *in, size_t n, char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		/* U+0080..U+009F (C1) too, both bytes of its UTF-8 (c2 80..9f):
		 * a terminal may act on U+009B (CSI) as on ESC [ */
		int c1 = (c == 0xc2 && i + 1 < n && c1_trail(in[i + 1])) ||
			 (i > 0 && (unsigned char)in[i - 1] == 0xc2 && c1_trail(in[i]));

		if (!c1 && c >= 0x20 && c != 0x7f) {
			if (o + 1 >= outlen)
				break;
			out[o++] = (char)c;
			continue;
		}
		if (o + 4 >= outlen)
			break;
		out[o++] = '\\';
		out[o++] = 'x';
		out[o++] = hexd[c >> 4];
		out[o++] = hexd[c & 15];
	}
	out[o] = '\0';
	return o;
}

static int is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

int sr_valid_host(const char *s)
{
	unsigned char a6[16];
	size_t n, label = 0;

	if (!s || !*s)
		return 0;
	n = strlen(s);
	if (inet_pton(AF_INET6, s, a6) == 1 || inet_pton(AF_INET, s, a6) == 1)
		return 1;
	if (n > 253)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			continue;
		}
		if (!is_alnum(c) && c != '-')
			return 0;
		if (c == '-' && label == 0)
			return 0;
		if (++label > 63)
			return 0;
	}
	/* One trailing dot (absolute name) is fine; an empty last label is not. */
	if (label == 0)
		return n > 1 && s[n - 1] == '.' && s[n - 2] != '.';
	return s[n - 1] != '-';
}

int sr_valid_chars(const char *s, size_t max, const char *extra)
{
	size_t n;

	if (!s || !*s)
		return 0;
	n = strlen(s);
	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!is_alnum(c) && !(extra && strchr(extra, c)))
			return 0;
	}
	return 1;
}
