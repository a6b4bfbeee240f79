/* Development certificates for `sparkrelay demo` and `sparkrelay gen-certs`:
 * a throw-away CA, a relay certificate (SAN: localhost, 127.0.0.1..3, ::1 and
 * the extra names given) and a sidecar client certificate, all ECDSA P-256,
 * valid for a short time. Never used outside demo/dev unless asked for. */
#ifndef SR_DEVCERT_H
#define SR_DEVCERT_H

#include <stddef.h>

/* Writes ca.pem, ca.key, relay.pem, relay.key, sidecar.pem, sidecar.key into
 * dir (which must exist), keys mode 0600, certificates 0644, owned by the
 * caller. Each is created new under a temporary name and renamed into place:
 * a file or symlink already at one of those names is replaced, never written
 * through (safe in a directory other users can write). extra_names:
 * NULL-terminated list of DNS names or IP literals added to the relay SAN
 * (may be NULL). Returns 0 or a negative SR_E* with a reason in err. */
int sr_devcert_write(const char *dir, const char *const *extra_names, unsigned days,
		     char *err, size_t errlen);
/* The same, but a CA already in dir (ca.pem and ca.key, a pair) is kept and
 * signs the new relay and sidecar certificates (*kept set to 1), so that
 * what it issued before goes on verifying, as long as it outlives them;
 * one that would not is replaced (*kept 2); without one, a new CA is made
 * (*kept 0). A new CA is valid 365 days, so that running this again renews
 * the other certificates under it. `sparkrelay gen-certs`. */
int sr_devcert_write_keep_ca(const char *dir, const char *const *extra_names, unsigned days,
			     int *kept, char *err, size_t errlen);

/* Issue a client certificate (mTLS tenants) signed by the development CA in
 * dir (ca.pem and ca.key, as sr_devcert_write made them): subject CN cn,
 * extended key usage clientAuth, and the subject alternative names in sans
 * (NULL-terminated, may be NULL): DNS names, IP literals or URIs
 * ("spiffe://..."). Written as client-<cn>.pem and client-<cn>.key, the
 * same way as above. cn is 1..64 of letters, digits, '.', '_', '-' (not
 * starting with '.' or '-'): it names the files too. Returns 0 or a
 * negative SR_E* with a reason in err (SR_ENOTFOUND: no CA in dir). */
int sr_devcert_write_client(const char *dir, const char *cn, const char *const *sans,
			    unsigned days, char *err, size_t errlen);

#endif
