/* Development certificates for `sparkrelay demo` and `sparkrelay gen-certs`:
 * a throw-away CA, a relay certificate (SAN: localhost, 127.0.0.1..3, ::1 and
 * the extra names given) and a sidecar client certificate, all ECDSA P-256,
 * valid for a short time. Never used outside demo/dev unless asked for. */
#ifndef SR_DEVCERT_H
#define SR_DEVCERT_H

#include <stddef.h>

/* Writes ca.pem, ca.key, relay.pem, relay.key, sidecar.pem, sidecar.key into
 * dir (which must exist), keys mode 0600. extra_names: NULL-terminated list of
 * DNS names or IP literals added to the relay SAN (may be NULL).
 * Returns 0 or a negative SR_E* with a reason in err. */
int sr_devcert_write(const char *dir, const char *const *extra_names, unsigned days,
		     char *err, size_t errlen);

#endif
