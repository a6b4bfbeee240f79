/* HTTP/2 DATA frames into TLS records: as few as the frame allows.
 *
 * Each TLS record costs a seal at one end and an open at the other, whatever
 * its size (a few microseconds each in OpenSSL 3.0), so a frame goes out in
 * full records of TUN_TLS_REC bytes but its last. The endpoint (TLS) and the
 * session (frame sizes) both follow this; it has its own unit test because
 * the socket input it reads from may be cut into pieces anywhere. */
#ifndef TUN_RECORDS_H
#define TUN_RECORDS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;
struct evbuffer_ptr;

/* The largest TLS record's plaintext (RFC 8446 5.1). */
#define TUN_TLS_REC (16 * 1024)

/* Seals n bytes at p: each call becomes records of TUN_TLS_REC bytes, the
 * last of them possibly shorter (SSL_write does so). 0, or an error that
 * tun_seal_frame returns as it is. */
typedef int (*tun_seal_fn)(void *arg, const void *p, size_t n);

/* Hands a frame's 9-byte header and the len payload bytes of src from pos
 * (pos moves past them) to seal, so that every record is full but the last:
 * the header, and any piece of src that would end a record early, are copied
 * into a record with the bytes after them; runs of whole records go to seal
 * straight from src's memory. Where the header alone costs no extra record
 * (len a multiple of TUN_TLS_REC, or up to 8 bytes short of one), it is
 * sealed alone and such a payload is not copied. Returns 0, seal's error,
 * or SR_EINVAL if src holds fewer than len bytes after pos (what was sealed
 * by then is sealed). */
int tun_seal_frame(const uint8_t *hdr, struct evbuffer *src, struct evbuffer_ptr *pos,
		   size_t len, tun_seal_fn seal, void *arg);

#endif
