/* Small pieces of the relay's defences against starvation, kept apart from
 * relay.c so that unit tests can drive them: what counts as "one source" for
 * per-source limits, and the identity a lease's resume is bound to. (The
 * rate-limited log lines of refusals are common/sr_log.h's sr_ratelog.) */
#ifndef RELAY_LIMITS_H
#define RELAY_LIMITS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Whether a and b are the same source for per-source limits: IPv4 (and
 * IPv4-mapped IPv6) addresses compare whole; other IPv6 addresses compare
 * by their /64 prefix, since one host usually holds a whole /64. Ports are
 * ignored. Other families are never the same source. */
int relay_same_source(const struct sockaddr *a, const struct sockaddr *b);

/* "cn:" + 64 hex digits at most, or "token:" / "tenant:" + a name. */
#define RELAY_IDKEY_MAX 232

/* The identity a lease's resume is bound to: "cn:<CN>" when the sidecar
 * showed a certificate with a CN, else "token:<hex SHA-256>" of its bearer
 * token, else "tenant:<tenant>". cn, token and tenant may be NULL or "".
 * The token itself is never kept. Returns 0, or -1 if out (at least
 * RELAY_IDKEY_MAX bytes) is too small or hashing failed. */
int relay_identity_key(const char *cn, const char *token, const char *tenant, char *out,
		       size_t outlen);

#endif
