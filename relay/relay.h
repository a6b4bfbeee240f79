/* The relay role: accepts tunnels from sidecars over TLS, grants port leases
 * and carries each executor connection on its own stream. */
#ifndef RELAY_H
#define RELAY_H

#include <stdint.h>

#include "relay/relay_lease.h"
#include "tunnel/tun_conn.h"

struct event_base;
struct relay;

struct relay_opts {
	char *listen;              /* tunnel listener, "host:port" */
	char *cert_file;           /* PEM chain the relay presents */
	char *key_file;
	char *client_ca_file;      /* verify sidecar certificates against it (mTLS) */
	int require_client_cert;   /* refuse sidecars without a verified certificate */
	char *auth_token;          /* if set, register must carry this bearer token */
	struct relay_pool_opts pool;
	uint32_t lease_grace_s;        /* a lease outlives its tunnel this long */
	uint32_t pending_timeout_ms;   /* executor waits this long for a tunnel */
	uint32_t max_pending;          /* waiting executor connections per lease */
	uint32_t handshake_timeout_ms; /* TLS handshake plus register */
	uint32_t drain_timeout_ms;     /* SIGTERM: streams may finish within this */
	uint32_t max_tunnels;
	struct tun_conn_opts tun;
};

/* Fill every field with its default (strings NULL except listen/pool). */
void relay_opts_defaults(struct relay_opts *o);

struct relay_stats {
	uint64_t tunnels_accepted;
	uint64_t tunnels_active;
	uint64_t handshake_failures;
	uint64_t leases_active;
	uint64_t executor_conns;
	uint64_t executor_refused;
	uint64_t streams_active;
};

/* opts is borrowed and must outlive the relay. Binds the tunnel listener.
 * Returns NULL with a reason in err. */
struct relay *relay_new(struct event_base *base, const struct relay_opts *opts, char *err,
			size_t errlen);
void relay_free(struct relay *r);

/* Begin a graceful drain: GOAWAY to every tunnel, no new leases or executor
 * connections, exit the loop once streams are done or drain_timeout_ms passes. */
void relay_drain(struct relay *r);
/* The tunnel listener's bound port (useful when configured as port 0). */
uint16_t relay_listen_port(const struct relay *r);
void relay_get_stats(const struct relay *r, struct relay_stats *st);

#endif
