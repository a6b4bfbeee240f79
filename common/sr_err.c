#include "common/sr_err.h"

#include <stdarg.h>
#include <stdio.h>

const char *sr_strerror(int err)
{
	switch (err) {
	case SR_OK: return "ok";
	case SR_ENOMEM: return "out of memory";
	case SR_EINVAL: return "invalid input";
	case SR_ETOOBIG: return "input too large";
	case SR_EPROTO: return "protocol error";
	case SR_ETLS: return "TLS failure";
	case SR_EIO: return "I/O error";
	case SR_ETIMEDOUT: return "timed out";
	case SR_ENOPORTS: return "no free ports in pool";
	case SR_ENOTFOUND: return "not found";
	case SR_EDENIED: return "denied";
	case SR_EBUSY: return "limit reached";
	case SR_ECLOSED: return "closed by peer";
	case SR_EDRAINING: return "draining";
	case SR_EVERSION: return "unsupported version";
	case SR_ERESOLVE: return "name resolution failed";
	case SR_EH2: return "HTTP/2 error";
	}
	return "unknown error";
}

void sr_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}
