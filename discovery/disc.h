/* Relay discovery for the sidecar: the configured relay entries to an
 * ordered list of addresses to dial, each with the name its certificate is
 * verified against. Three kinds of entry:
 *
 *   host:port, [v6]:port     numeric, or a name looked up (A/AAAA, hosts
 *                            file) on every lookup (disc_resolve.h)
 *   srv:_SERVICE._PROTO.DOMAIN
 *                            DNS SRV records (disc_srv.h); their targets are
 *                            looked up (A/AAAA) and tried by priority, then
 *                            weighted random within a priority (RFC 2782).
 *                            TLS name: DOMAIN (RFC 6125's SRV source domain:
 *                            DNS alone cannot redirect us to another name).
 *   k8s:[NAMESPACE/]SERVICE[:PORTNAME]
 *                            the Ready endpoints of a Kubernetes Service,
 *                            from its EndpointSlices (disc_k8s.h), in random
 *                            order. NAMESPACE: the pod's own (namespace
 *                            file); PORTNAME: the Service's only port. TLS
 *                            name: SERVICE.NAMESPACE.svc.
 *
 * Entries keep their configured order; addresses past DISC_MAX_ADDRS are
 * left out. An SRV or k8s answer is reused for cache_s seconds (SRV: or
 * its TTL, if shorter). When asking again fails, the last answer is used
 * for up to stale_s seconds after it was received (logged as such; the
 * source is then asked again at most every cache_s); past that it is
 * dropped. An answer that names no relay (NXDOMAIN, no Ready endpoint)
 * is an answer, not a failure. */
#ifndef DISC_H
#define DISC_H

#include <stddef.h>
#include <stdint.h>

#include "discovery/disc_k8s.h"
#include "discovery/disc_resolve.h"

struct event_base;
struct disc;
struct disc_lookup;

#define DISC_MAX_NAMESERVERS 4
#define DISC_TLS_NAME_MAX 253

struct disc_opts {
	/* numeric "ip", "ip:port" or "[v6]:port"; none: resolv.conf's */
	char *nameservers[DISC_MAX_NAMESERVERS];
	unsigned nnameservers;
	uint32_t cache_s;    /* 0: ask on every lookup */
	uint32_t stale_s;    /* 0: never use an answer once asking failed */
	uint32_t timeout_ms; /* one SRV query or API request; 0: 5000 */
	/* The Kubernetes API; NULL: in-cluster defaults (the API server from
	 * KUBERNETES_SERVICE_HOST/PORT, files of the pod's service account). */
	char *k8s_api_server;
	char *k8s_token_file;
	char *k8s_ca_file;
	char *k8s_namespace_file;
};

enum disc_kind {
	DISC_HOSTPORT,
	DISC_SRV,
	DISC_K8S,
};

/* One relay entry, parsed. */
struct disc_target {
	enum disc_kind kind;
	char name[DISC_TLS_NAME_MAX + 1];     /* SRV: the name asked, lower case */
	char tls_name[DISC_TLS_NAME_MAX + 1]; /* SRV, K8S: see above ("" for a k8s
						 entry until its namespace is read) */
	char ns[DISC_K8S_NAME_MAX + 1];	      /* K8S: "" = the pod's namespace */
	char service[DISC_K8S_NAME_MAX + 1];
	char port_name[DISC_K8S_PORT_NAME_MAX + 1]; /* "" = the only port */
};

/* Parse one relay entry (syntax above). Returns 0 or SR_EINVAL with the
 * reason (the entry escaped) in err. */
int disc_target_parse(const char *s, struct disc_target *t, char *err, size_t errlen);

/* o and targets are borrowed and must outlive the disc. Makes the resolver
 * (nameservers, hosts file) and, for k8s entries, the HTTP client. Fails on
 * a bad entry, a bad nameserver, a k8s entry with no API server to ask, or
 * no memory, with the reason in err. */
struct disc *disc_new(struct event_base *base, const struct disc_opts *o, char *const *targets,
		      size_t ntargets, char *err, size_t errlen);
/* Cancels every lookup (no callback). NULL is a no-op. Not from inside a
 * disc callback. */
void disc_free(struct disc *d);

/* Find the relays now. cb is called once, never before this returns, with
 * err 0 and at least one address, or SR_ERESOLVE (nothing found) or
 * SR_ENOMEM; addrs is borrowed for the call. Several lookups may run at
 * once; they share the sources' answers. NULL on allocation failure. */
struct disc_lookup *disc_lookup(struct disc *d, disc_cb cb, void *arg);
/* Stop a lookup whose callback has not run; it will not run. NULL: no-op. */
void disc_lookup_cancel(struct disc_lookup *l);

#endif
