/* HTTP/2 DATA frames into TLS records (see tun_records.h). */
#include "tunnel/tun_records.h"
#include "common/sr_err.h"
#include "common/sr_util.h"

#include <string.h>

#include <event2/buffer.h>

int tun_seal_frame(const uint8_t *hdr, struct evbuffer *src, struct evbuffer_ptr *pos,
		   size_t len, tun_seal_fn seal, void *arg)
{
	uint8_t rec[TUN_TLS_REC];
	struct evbuffer_iovec v[8];
	size_t staged = 0;
	int rv;

	/* A payload of whole records (but at most 9 bytes) takes no more
	 * records with its header on its own, and needs no copy then. */
	if (len > 0 && (len % TUN_TLS_REC == 0 || len % TUN_TLS_REC > TUN_TLS_REC - 9)) {
		if ((rv = seal(arg, hdr, 9)) != 0)
			return rv;
	} else {
		memcpy(rec, hdr, 9);
		staged = 9;
	}
	while (len > 0) {
		int n = evbuffer_peek(src, (ev_ssize_t)len, pos, v, (int)SR_ARRAY_LEN(v));

		if (n <= 0)
			return SR_EINVAL;
		for (int i = 0; i < n && i < (int)SR_ARRAY_LEN(v) && len > 0; i++) {
			const uint8_t *p = v[i].iov_base;
			size_t k = v[i].iov_len < len ? v[i].iov_len : len;

			evbuffer_ptr_set(src, pos, k, EVBUFFER_PTR_ADD);
			len -= k;
			while (k > 0) {
				size_t t;

				if (staged == 0 && (k >= TUN_TLS_REC || len == 0)) {
					/* Whole records, or the frame's last bytes. */
					t = k >= TUN_TLS_REC ? k - k % TUN_TLS_REC : k;
					if ((rv = seal(arg, p, t)) != 0)
						return rv;
				} else {
					t = TUN_TLS_REC - staged < k ? TUN_TLS_REC - staged : k;
					memcpy(rec + staged, p, t);
					staged += t;
					if (staged == TUN_TLS_REC || (len == 0 && t == k)) {
						if ((rv = seal(arg, rec, staged)) != 0)
							return rv;
						staged = 0;
					}
				}
				p += t;
				k -= t;
			}
		}
	}
	if (staged > 0 && (rv = seal(arg, rec, staged)) != 0)
		return rv; /* an empty frame: its header alone */
	return 0;
}
