/* The relay role: accepts tunnels from sidecars over TLS, grants port leases
 * and carries each executor connection on its own stream. */
#ifndef RELAY_H
#define RELAY_H

#include <stdint.h>

#include "relay/relay_lease.h"
#include "relay/relay_policy.h"
#include "tunnel/tun_conn.h"

struct event_base;
struct relay;

/* The relay fleet (relay_fleet.h): with no etcd endpoint, the relay is
 * alone and keeps its leases in memory only. */
#define RELAY_FLEET_MAX_ETCD 16
struct relay_fleet_opts {
	char *etcd[RELAY_FLEET_MAX_ETCD]; /* "http(s)://host:port" */
	unsigned netcd;
	char *etcd_ca, *etcd_cert, *etcd_key; /* TLS towards etcd; NULL: none */
	char *prefix;         /* every key of the fleet starts with it */
	char *id;             /* this relay's name in the fleet; NULL: the hostname */
	char *peer_listen;    /* relay-to-relay listener, "host:port" */
	char *peer_advertise; /* what other relays dial; NULL: peer_listen */
	char *secret_file;    /* the fleet's HMAC secret (fleet/peer.h) */
	uint32_t ttl_s;       /* the relay's registration TTL */
	uint32_t register_wait_ms; /* a registration waits this long for etcd */
	uint32_t watch_idle_ms;    /* a watch silent this long is started again */
};

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
	uint32_t resume_hold_s;        /* open executor sockets wait this long for a resume */
	uint32_t max_pending;          /* waiting executor connections per lease */
	uint32_t handshake_timeout_ms; /* TLS handshake plus register */
	uint32_t drain_timeout_ms;     /* SIGTERM: streams may finish within this */
	uint32_t max_tunnels;          /* registered tunnels holding a lease */
	uint32_t max_handshakes;       /* connections not registered yet */
	uint32_t max_handshakes_per_source; /* of those, from one address (IPv6: /64) */
	uint32_t max_lease_connections;     /* executor connections per lease; 0 = none */
	uint32_t max_tunnel_buffer;    /* bytes read from a tunnel's executor sockets */
	uint32_t max_grace_leases;     /* per tenant, leases without a tunnel; 0 = none */
	struct relay_default_tenant {  /* limits of the implicit tenant "default" */
		uint32_t leases, connections, pending; /* 0 = no limit / lease.max_pending */
	} default_tenant;
	struct tun_conn_opts tun;
	struct relay_policy_opts policy; /* pools, tenants, routes (relay_policy.h) */
	char *admin_listen;  /* admin HTTP listener "host:port", NULL = none */
	char *admin_token;   /* required on every admin request but /healthz and /readyz;
				mandatory when admin_listen is not a loopback address */
	uint32_t admin_max_conns;          /* admin connections open at once */
	uint32_t admin_request_timeout_ms; /* an admin connection lives at most this */
	char *handover_socket;         /* Unix socket a new relay takes over through; NULL: none */
	uint32_t handover_timeout_ms;  /* a handover not committed by then is abandoned */
	/* Read-only listener: GET /metrics, /healthz, /readyz without a token
	 * (relay_metrics_new); NULL = none. */
	char *metrics_listen;
	/* The program re-reads its configuration file when it changes
	 * (cmd/main.c); the relay itself only counts those reloads. */
	int watch_config;
	uint32_t watch_debounce_ms;
	struct relay_fleet_opts fleet;
};

/* Defaults come from the configuration tables (conf_relay_defaults). */

/* Why an executor connection or a registration was refused (metrics label). */
enum relay_refusal {
	RELAY_REFUSE_CIDR = 0,       /* executor address outside the route's CIDRs */
	RELAY_REFUSE_PENDING_FULL,   /* too many executors already wait for the tunnel */
	RELAY_REFUSE_PENDING_TIMEOUT,/* the tunnel did not come back in time */
	RELAY_REFUSE_DRAINING,       /* relay is shutting down */
	RELAY_REFUSE_TENANT_LIMIT,   /* tenant's connection limit */
	RELAY_REFUSE_STREAM,         /* the stream could not be opened */
	RELAY_REFUSE_REG_AUTH,       /* registration: no tenant / bad token */
	RELAY_REFUSE_REG_ROUTE,      /* registration: no route */
	RELAY_REFUSE_REG_LIMIT,      /* registration: tenant lease limit / pool full */
	RELAY_REFUSE_REG_RESUME,     /* registration: unknown or foreign resume token */
	RELAY_REFUSE_HANDSHAKES,     /* connection: max_handshakes reached */
	RELAY_REFUSE_SOURCE,         /* connection: max_handshakes_per_source reached */
	RELAY_REFUSE_TUNNELS,        /* registration: max_tunnels reached */
	RELAY_REFUSE_LEASE_CONNS,    /* executor: the lease's max_lease_connections */
	RELAY_REFUSE_DRIVER,         /* executor: the sidecar refused the stream (no driver) */
	RELAY_REFUSE_NO_PORTS,       /* registration: the pool has no free port */
	RELAY_REFUSE_MAX,
};
const char *relay_refusal_name(enum relay_refusal r);

/* Fixed buckets, microseconds: le 100 us, 250 us, 500 us, 1 ms, 2.5 ms, 5 ms,
 * 10 ms, 25 ms, 50 ms, 100 ms, 250 ms, 500 ms, 1 s, 2.5 s, 5 s, 10 s, 30 s,
 * 60 s, 120 s, 300 s, 600 s (the longest relay.lease.pending_timeout_ms),
 * +Inf. */
#define RELAY_HIST_BUCKETS 22
extern const uint64_t relay_hist_bounds_us[RELAY_HIST_BUCKETS - 1];
struct relay_hist {
	uint64_t count[RELAY_HIST_BUCKETS]; /* not cumulative */
	uint64_t sum_us;
	uint64_t n;
};

struct relay_stats {
	uint64_t tunnels_accepted;
	uint64_t tunnels_active;    /* every connection on the tunnel listener */
	uint64_t handshakes_active; /* of those, not registered (no lease) */
	uint64_t handshake_failures;
	uint64_t accept_errors;     /* tunnel listener accept() failures (EMFILE...) */
	uint64_t leases_active;
	uint64_t leases_granted;
	uint64_t leases_resumed;
	uint64_t leases_joined;     /* tunnels added to a lease by its sidecar */
	uint64_t leases_expired;
	uint64_t leases_reclaimed;  /* in grace, ended early for a new registration */
	uint64_t executor_conns;
	uint64_t executor_refused; /* sum of refused[] for executor reasons */
	uint64_t refused[RELAY_REFUSE_MAX];
	uint64_t streams_active;
	uint64_t streams_opened;
	uint64_t bytes_to_sidecar;  /* executor -> driver payload */
	uint64_t bytes_to_executor; /* driver -> executor payload */
	uint64_t executor_buffered; /* bytes read from executors, not yet sent on */
	uint64_t buffer_throttled;  /* times a tunnel went over max_tunnel_buffer */
	uint64_t reloads_ok, reloads_failed;
	uint64_t handovers;         /* takeovers this relay and its predecessors completed */
	uint64_t auto_reloads_ok, auto_reloads_failed; /* of those, by the file watch */
	int last_reload_ok;            /* the last reload (or the start) succeeded */
	uint64_t last_reload_ok_unix_ms; /* wall clock of the start or last good reload */
	int64_t tls_cert_not_after;      /* relay.tls.cert in use expires, Unix s; 0: unknown */
	struct relay_hist tunnel_rtt;   /* PING round trips */
	struct relay_hist pending_wait; /* executor wait for a tunnel that came back */
	/* The fleet (relay.fleet); all 0 without it. */
	int fleet;
	int fleet_registered;        /* this relay's registration is in etcd now */
	int fleet_table_read;        /* the lease table was read from etcd (once is enough) */
	int fleet_joined;            /* that, and this relay was registered in etcd once */
	uint64_t fleet_carried;      /* executor connections carried to another relay */
	uint64_t fleet_carry_failed; /* of those, no relay with a tunnel answered: waited here */
	uint64_t fleet_leases;       /* leases in the fleet's table, as this relay sees it */
	uint64_t fleet_revision;     /* etcd's revision this relay's copy of it is complete to */
	int ready; /* listeners up, configuration loaded, not draining, the fleet joined */
	int draining;
};

/* opts stays the caller's and must outlive the relay, which reads it and,
 * on a successful relay_reload(), swaps its content with the new options.
 * Binds the tunnel listener. Returns NULL with a reason in err. */
struct relay *relay_new(struct event_base *base, struct relay_opts *opts, char *err,
			size_t errlen);
void relay_free(struct relay *r);

/* Begin a graceful drain: GOAWAY to every tunnel, no new leases or executor
 * connections, exit the loop once streams are done or drain_timeout_ms passes. */
void relay_drain(struct relay *r);
/* The tunnel listener's bound port (useful when configured as port 0). */
uint16_t relay_listen_port(const struct relay *r);
void relay_get_stats(const struct relay *r, struct relay_stats *st);

/* Apply a new configuration atomically: the policy is compiled first and
 * the old one stays in force if that fails (err says why). On success the
 * relay takes ownership of *o (the caller gets the previous options back in
 * *o to free). Live tunnels and streams are untouched; new limits apply to
 * new work; a pool that shrinks or goes away keeps its existing leases
 * until they end. The TLS files are read again (new tunnels get the new
 * certificate; a pair that does not load refuses the reload). The tunnel
 * and admin listeners change only at restart (a change is reported as a
 * warning). */
int relay_reload(struct relay *r, struct relay_opts *o, char *err, size_t errlen);

/* A pool.bind address that is not one of this host's: the errno binding
 * it gives (EADDRNOTAVAIL), else 0 (also for a wildcard or a malformed
 * one). The relay refuses such a pool at start and reload; check-config
 * warns. */
int relay_bind_addr_missing(const char *addr);
/* Count a reload that failed before relay_reload (e.g. a bad file). */
void relay_count_reload_failure(struct relay *r);
/* Count a reload (already counted above) as one the file watch started. */
void relay_count_auto_reload(struct relay *r, int ok);
const struct relay_opts *relay_get_opts(const struct relay *r);
const struct relay_policy *relay_get_policy(const struct relay *r);

/* ---- live handover (docs/architecture.md, "Live handover") -----------------
 * A new relay process takes over from the running one through the Unix socket
 * o->handover_socket: the tunnel listener, the admin listener, every lease
 * with its listening ports and every executor connection (socket, counters,
 * buffered bytes) move to it, the sidecars reconnect and resume. Nothing is
 * refused, reset or lost; the old process exits once the new one committed. */

/* The new process, before its loop runs: connect to the relay on
 * o->handover_socket, receive its state and build a relay from it (opts
 * stays the caller's, as with relay_new). Nothing is accepted, read or
 * written on what it took until relay_takeover_commit(). *admin_fd is the old
 * relay's admin listener when o->admin_listen is the same address (use it
 * with relay_admin_new_fd), else -1. Returns NULL with a reason in err; then
 * the old relay keeps everything, and *none is 1 when no relay answered on
 * the socket at all (nothing to take over). */
struct relay *relay_takeover(struct event_base *base, struct relay_opts *o, int *admin_fd,
			     int *none, char *err, size_t errlen);
/* Commit: from a 0 return on, everything is this process's (run the loop).
 * Otherwise the old relay kept it all (it gave up first: err says why):
 * relay_free() and exit. */
int relay_takeover_commit(struct relay *r, char *err, size_t errlen);
/* Give up before committing; the old relay is told why and keeps running. */
void relay_takeover_abandon(struct relay *r, const char *why);
/* The old process: the admin listener to pass on (fd stays the caller's;
 * listen as configured). */
void relay_set_admin_listener(struct relay *r, int fd, const char *listen);
/* The old process: a new one took everything over; leave the loop (it was
 * broken already) and exit 0. */
int relay_handed_over(const struct relay *r);

#endif
