/* Project-wide error codes. Functions return 0 or a negative SR_E* value;
 * library errors (OpenSSL, nghttp2, libevent, curl) are translated at the
 * boundary where they happen. */
#ifndef SR_ERR_H
#define SR_ERR_H

#include <stddef.h>

enum sr_err {
	SR_OK = 0,
	SR_ENOMEM = -1,      /* allocation failed */
	SR_EINVAL = -2,      /* bad argument or malformed input */
	SR_ETOOBIG = -3,     /* input over its configured cap */
	SR_EPROTO = -4,      /* peer broke the tunnel protocol */
	SR_ETLS = -5,        /* TLS handshake or record failure */
	SR_EIO = -6,         /* socket error */
	SR_ETIMEDOUT = -7,   /* a bounded wait ran out */
	SR_ENOPORTS = -8,    /* port pool exhausted */
	SR_ENOTFOUND = -9,   /* lease, stream or name unknown */
	SR_EDENIED = -10,    /* refused by policy */
	SR_EBUSY = -11,      /* limit reached, try later */
	SR_ECLOSED = -12,    /* peer closed */
	SR_EDRAINING = -13,  /* shutting down, no new work */
	SR_EVERSION = -14,   /* unsupported protocol version */
	SR_ERESOLVE = -15,   /* name resolution failed */
	SR_EH2 = -16,        /* nghttp2 reported an error */
};

/* Static string for an error code; never NULL. */
const char *sr_strerror(int err);

/* printf into a caller's error buffer; does nothing if err is NULL or
 * errlen is 0 (callers may not want the reason). */
void sr_seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
