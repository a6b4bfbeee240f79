/* Shared between the files of the relay role; not part of its API.
 *
 *   relay.c         the relay object: create, free, drain, reload, stats
 *   relay_tunnel.c  tunnels from sidecars: accept, TLS, registration, control
 *   relay_exec.c    executor connections: admission, waiting, streams
 *   relay_pool.c    compiled policies and the pools' lease tables
 *   relay_tenant.c  what each tenant holds, against its limits
 *   relay_view.c    read-only views and revoke, for the admin API
 *   relay_handover.c live handover to a new relay process
 *   relay_fleet.c    the fleet: leases in etcd, executors carried between relays
 *
 * Ownership: the relay owns its tunnels (list), pools (list) and current
 * policy (one reference). A pool's lease table owns its leases; each lease
 * carries a relay_lease_ext (relay_lease_set_data) that holds a reference to
 * the policy it was made under, and its waiting executors. A tunnel and a
 * lease point at each other while attached (t->lx, lx->tunnel). */
#ifndef RELAY_INT_H
#define RELAY_INT_H

#include <stdint.h>
#include <sys/socket.h>

#include <event2/util.h>
#include <openssl/ssl.h>

#include "common/sr_log.h"
#include "common/sr_util.h"
#include "relay/relay.h"
#include "relay/relay_limits.h"
#include "tunnel/tun_endpoint.h"
#include "tunnel/tun_group.h"

struct event;
struct evconnlistener;
struct relay_tunnel;
struct fleet_reg;
struct relay_fleet;

/* Tunnels one lease may hold on this relay (a sidecar's tunnel.connections
 * is at most this). */
#define RELAY_LEASE_TUNNELS_MAX 4

/* Refusals under a flood: at most one log line per kind this often. */
#define REFUSAL_LOG_PERIOD_US (10u * 1000000u)

/* Kinds of executor refusal logged per lease under relay_lease_ext.rl_exec. */
enum relay_rl_exec {
	RELAY_RL_CIDR,
	RELAY_RL_TENANT,
	RELAY_RL_QUEUE_FULL,
	RELAY_RL_WAIT_TIMEOUT,
	RELAY_RL_UNCARRIED, /* waits again: no relay of the fleet carried it */
	RELAY_RL_EXEC_MAX,
};

/* Refusals by tenant and pool (sparkrelay_tenant_refused_total); made on
 * the first refusal of a pair, at most RELAY_REFUSAL_KEYS_MAX pairs (later
 * ones are counted in relay_stats only). */
#define RELAY_REFUSAL_KEYS_MAX 4096
struct relay_refusal_key {
	struct relay_refusal_key *next;
	char tenant[64];
	char pool[64];
	uint64_t n[RELAY_REFUSE_MAX];
};

/* App names in log lines: escaped, and cut to this many input bytes. */
#define LOG_APP_MAX 64

/* A compiled policy, kept alive while leases made under it exist: their
 * route and tenant indexes refer to it, and its rules still apply to them if
 * a reload removes their route or tenant. */
struct relay_pol {
	struct relay_policy *p;
	unsigned refs;
	int implicit_tenants; /* no tenants configured: relay.default_tenant limits apply */
};

/* One pool's lease table. A reload that changes or removes the pool retires
 * the table: it makes no new leases and is freed once its leases are gone. */
struct relay_pool_rt {
	struct relay_pool_rt *next;
	char *name;
	struct relay_pool_opts opts; /* own copies of the strings, for comparison */
	struct relay_lease_table *t;
	int retired;
};

/* An executor connection waiting for its lease's tunnel to come back. */
struct relay_pending {
	struct relay_pending *next;
	struct relay_lease_ext *owner;
	int fd;
	enum tun_port_role role;
	uint64_t conn_id;
	uint64_t since_us;
	char peer[SR_ADDRSTRLEN];
	struct event *timer;
	int from_peer; /* carried here by another relay: never carried on */
};

/* What the relay keeps per lease (relay_lease_set_data). */
struct relay_lease_ext {
	struct relay *relay;
	struct relay_lease *lease;
	struct relay_pool_rt *pool;
	struct relay_pol *pol; /* holds a reference */
	int route;
	int tenant;            /* index in pol at creation */
	char tenant_name[64];
	char route_name[64];
	/* Its tunnels here, newest first (relay_tunnel.lnext); NULL while in
	 * grace. A sidecar may hold several (the first registers or resumes,
	 * the others join), at most RELAY_LEASE_TUNNELS_MAX. */
	struct relay_tunnel *tunnel;
	unsigned ntunnels;
	/* executors waiting for the tunnel, oldest first: served in arrival
	 * order (Spark's first executor has waited longest) */
	struct relay_pending *pending, *pending_tail;
	unsigned npending;
	/* executor connections of this relay carried to another relay (a
	 * fleet): they count against the lease's and its tenant's limits here */
	unsigned ncarried;
	uint64_t conns_total;
	uint64_t detached_us;  /* when the tunnel went (in grace), 0 while attached */
	struct sr_ratelog rl_refused; /* executors over max_lease_connections */
	uint64_t driver_refused;         /* streams the sidecar refused (no driver) */
	struct sr_ratelog rl_driver;  /* their log lines */
	struct sr_ratelog rl_streams; /* executors waiting for the sidecar's stream limit */
	/* The other executor refusals, one log line per kind and period. */
	struct sr_ratelog rl_exec[RELAY_RL_EXEC_MAX];
	/* Who created it (relay_identity_key): only that identity may resume. */
	char idkey[RELAY_IDKEY_MAX];
	struct sockaddr_storage src; /* the creator's address, for reclaim order */
	struct relay_tenant_acct *acct;          /* its tenant's leases (relay_tenant.c) */
	/* Its executor streams, which outlive a tunnel (tunnel/tun_group.h). */
	struct tun_group *group;
	/* The resume token before the last rotation, "" once the sidecar is
	 * known to hold the new one (relay_tunnel.c, reg_resume). */
	char prev_resume[TUN_CTL_RESUME_MAX];
	struct relay_lease_ext *tnext, *tprev;
	/* Handover (relay_handover.c): the grace time left when it froze or
	 * was taken over, and when that was. */
	uint64_t ho_grace_ms;
	uint64_t ho_base_us;
};

struct relay_tunnel {
	struct relay *relay;
	struct fleet_reg *freg; /* a registration waiting for etcd (relay_fleet.c) */
	struct relay_tunnel *next, *prev;
	struct tun_endpoint *ep; /* socket, TLS and session */
	struct tun_conn *conn;   /* the endpoint's session, NULL until TLS is up */
	struct relay_lease_ext *lx;
	struct relay_tunnel *lnext; /* the next tunnel of lx */
	int joined;          /* it joined lx (another tunnel registered it) */
	uint32_t tid;        /* its id in lease messages ("tunnel"), random, nonzero */
	struct event *timer; /* handshake + register deadline */
	int open_after_lease; /* streams wait until the lease message has gone */
	struct sockaddr_storage addr;
	uint64_t started_us;
	char peer[SR_ADDRSTRLEN];
	char identity[160];
	char sans[TUN_EP_MAX_SANS][256];
	size_t nsans;
	char ctx[320];
};

struct relay {
	struct event_base *base;
	struct relay_opts *o; /* the caller's struct; relay_reload swaps its content */
	SSL_CTX *ssl_ctx;     /* for new tunnels; a reload may swap in another */
	struct evconnlistener *listener;
	struct relay_pol *pol; /* current policy (one reference) */
	struct relay_pool_rt *pools;
	struct relay_tenant_acct *tenants; /* leases by tenant name, for limits */
	struct relay_tunnel *tunnels;
	unsigned nregistered; /* tunnels holding a lease (t->lx set) */
	struct event *accept_pause; /* re-enables the listener after EMFILE */
	struct sr_ratelog rl_accept; /* tunnel connections refused at accept */
	struct sr_ratelog rl_accept_err; /* accept() failures */
	struct event *drain_timer;
	struct event *gc_timer;
	uint64_t drain_deadline_us;
	uint64_t next_conn_id;
	uint64_t closed_bytes_in, closed_bytes_out, closed_streams_opened, closed_throttled;
	int draining;
	struct relay_handover *ho; /* relay_handover.c */
	int handed_over;           /* a new process has everything: exit */
	int drain_wanted;          /* asked to drain during a handover */
	struct relay_stats st;
	/* Stream resumption of leases that ended (relay_lease_ext_free). */
	struct tun_group_stats closed_groups;
	struct relay_refusal_key *refusal_keys;
	unsigned nrefusal_keys;
	struct relay_fleet *fleet; /* relay_fleet.c; NULL: a relay alone */
};

/* The limits that apply to a tenant of policy pol (tc may be NULL). */
struct relay_tenant_limits {
	uint32_t leases, connections, pending;
};

/* The leases of one tenant (by name, across pools and reloads). */
struct relay_tenant_acct {
	struct relay_tenant_acct *next;
	char name[64];
	struct relay_lease_ext *leases;
	unsigned nleases;
};

struct relay_tenant_usage {
	const char *tenant;
	/* For a reclaim: the registering client, and the pool that must gain
	 * a free lease (NULL: any). */
	const char *idkey;
	const struct sockaddr *src;
	const struct relay_pool_rt *pool;
	uint64_t conns, leases, grace;
	struct relay_lease_ext *oldest;      /* in grace the longest */
	struct relay_lease_ext *oldest_mine; /* the same, created by this client */
};

/* relay.c */
void relay_hist_add(struct relay_hist *h, uint64_t us);
void relay_refuse(struct relay *r, enum relay_refusal why);
/* relay_refuse, and counted for tenant and pool too ("" when unknown). */
void relay_refuse_at(struct relay *r, enum relay_refusal why, const char *tenant,
		     const char *pool);
/* A peer's name (certificate CN) as one word of a log context: escaped,
 * and quoted when it holds a space or '=' that could pass for another field. */
const char *relay_log_word(const char *s, char *buf, size_t len);

/* relay_pool.c */
void relay_pol_unref(struct relay_pol *pol);
/* NULL and "" both mean "unset". */
int relay_str_eq(const char *a, const char *b);
/* Each pool's bind address is one of this host's (bound to port 0 to see):
 * 0, or SR_EINVAL with the pool and address named in err. */
int relay_pools_check_bind(const struct relay_policy *p, char *err, size_t errlen);
/* Make the live pools match policy p: keep unchanged ones, retire changed
 * or removed ones, add new ones. Returns 0 or SR_ENOMEM (nothing changed). */
int relay_pools_sync(struct relay *r, const struct relay_policy *p);
struct relay_pool_rt *relay_pool_find(struct relay *r, const char *name);
void relay_pool_free(struct relay_pool_rt *pr);
/* Timer: frees retired pools whose last lease has ended. */
void relay_pools_gc_cb(evutil_socket_t fd, short what, void *arg);
struct relay_lease *relay_find_resume(struct relay *r, const char *token);
struct relay_lease *relay_find_id(struct relay *r, const char *id);

/* What a new relay process takes over instead of binding (relay_handover.c):
 * listening sockets made by the old one; -1 where none. */
struct relay_adopt {
	int listen_fd;   /* the tunnel listener */
	int handover_fd; /* the handover socket's listener */
	int peer_fd;	 /* the fleet's peer listener (relay_fleet.h) */
};
/* relay_new, around adopted sockets (stolen in every case); the tunnel
 * listener is stopped until the takeover commits. */
struct relay *relay_new_adopt(struct event_base *base, struct relay_opts *o,
			      const struct relay_adopt *ad, char *err, size_t errlen);

/* relay_handover.c */
/* Listen on o->handover_socket (or adopt fd, when >= 0; stolen). A socket
 * that cannot be made turns live handover off with a warning: 0 then too;
 * SR_ENOMEM only when out of memory. */
int relay_handover_start(struct relay *r, int fd, char *err, size_t errlen);
/* Close the handover socket; after a handover (either side, committed or
 * not) forget what another process owns instead of resetting it. Called
 * first by relay_free. */
void relay_handover_free(struct relay *r);
/* A handover is under way: the relay is frozen, nothing may change. */
int relay_handover_busy(const struct relay *r);

/* relay_tenant.c */
void relay_tenant_limits(const struct relay *r, const struct relay_pol *pol,
			 const struct relay_tenant_cfg *tc, struct relay_tenant_limits *tl);
/* Executor connections of a lease: streams of its tunnel plus waiting ones. */
uint64_t relay_lease_conns(const struct relay_lease_ext *lx);
/* Account lx to its tenant (lx->tenant_name). Returns 0 or SR_ENOMEM. */
int relay_tenant_add(struct relay *r, struct relay_lease_ext *lx);
void relay_tenant_remove(struct relay *r, struct relay_lease_ext *lx);
/* What tenant holds, from its own leases only. idkey, src and pool (all may
 * be NULL) choose the reclaim candidates: see reclaim_one in relay_tunnel.c. */
void relay_tenant_usage(struct relay *r, const char *tenant, const char *idkey,
			const struct sockaddr *src, const struct relay_pool_rt *pool,
			struct relay_tenant_usage *u);

/* relay_exec.c */
/* relay_lease_cbs: an executor connected / a lease's grace ran out. */
void relay_exec_on_accept(struct relay_lease *l, enum tun_port_role role, int fd,
			  const struct sockaddr *sa, int salen, void *arg);
/* The same; from_peer: RELAY_EXEC_FROM_PEER: another relay of the fleet
 * carried it here, so it is never carried on to a third (no forwarding
 * loops). */
#define RELAY_EXEC_LOCAL 0
#define RELAY_EXEC_FROM_PEER 1
void relay_exec_accept(struct relay *r, struct relay_lease *l, enum tun_port_role role, int fd,
		       const struct sockaddr *sa, int from_peer);
/* An executor connection that waited here since since_us (as conn_id) and
 * that no relay of the fleet could carry: it waits again, for what is left
 * of relay.lease.pending_timeout_ms, and is not counted or logged anew. */
void relay_exec_wait_again(struct relay *r, struct relay_lease *l, enum tun_port_role role,
			   int fd, const struct sockaddr *sa, uint64_t conn_id,
			   uint64_t since_us);
void relay_exec_on_expire(struct relay_lease *l, void *arg);
/* The lease's tunnel is back: waiting executors become streams, in order. */
void relay_exec_flush_pending(struct relay *r, struct relay_lease_ext *lx);
/* Handover: an executor connection that waited in the old process (since
 * since_us), queued last; fd is stolen, closed on failure (NULL). Its timer
 * is the caller's to arm. */
struct relay_pending *relay_exec_adopt_pending(struct relay_lease_ext *lx, int fd,
					       enum tun_port_role role, uint64_t conn_id,
					       const char *peer, uint64_t since_us);
/* tun_conn_cbs.on_refused of a tunnel (arg: its struct relay_tunnel). */
void relay_exec_on_refused(struct tun_conn *c, uint64_t conn_id, uint16_t port, void *arg);
/* Free lx and its waiting executors (reset); the lease itself stays. */
void relay_lease_ext_free(struct relay_lease_ext *lx);
/* Free lx and release its lease (ports closed). */
void relay_release_lease(struct relay_lease_ext *lx);

/* relay_view.c */
/* Add the counters of g (not its held streams and bytes, which are the
 * state now) to sum. */
void relay_group_stats_add(struct tun_group_stats *sum, const struct tun_group_stats *g);
/* The context of a lease's log lines, "lease=L-.. app=\"..\" tenant=T", so
 * that grep 'lease=L-..' follows a notebook through the log. Returns buf. */
#define RELAY_LEASE_CTX_MAX (TUN_CTL_LEASE_MAX + SR_ESC_SIZE(LOG_APP_MAX) + 96)
const char *relay_lease_ctx(const struct relay_lease_ext *lx, const struct relay_lease *l,
			    char *buf, size_t len);

/* relay_tunnel.c */
void relay_tunnel_accept(struct evconnlistener *lst, evutil_socket_t fd, struct sockaddr *sa,
			 int salen, void *arg);
/* The tunnel stops holding its lease; the caller decides what becomes of
 * the lease (grace, release). */
void relay_tunnel_unlink_lease(struct relay_tunnel *t);
void relay_tunnel_free(struct relay_tunnel *t);
/* Registration steps, for relay_fleet.c: answer an error; make a lease
 * (ports bound, not attached; NULL after answering why); attach a lease
 * and send the lease message. */
void relay_tunnel_error(struct relay_tunnel *t, const char *code, const char *text);
struct relay_lease_ext *relay_tunnel_new_lease(struct relay_tunnel *t, const struct tun_ctl_msg *m,
					       int tenant, const char *tname, const char *idkey);
void relay_tunnel_attach(struct relay_tunnel *t, struct relay_lease_ext *lx, int fresh);
/* A register with "join", identified already, for lease lx (NULL: none):
 * proven says its proof matched the lease's resume token (current or
 * previous; relay_join_proven, or the fleet's digests). Checks the identity
 * and tenant and the tunnels per lease, then attaches t beside the lease's
 * other tunnels (no new token); or answers "join_refused". A tunnel of lx
 * that m->replaces ends first, its streams held for t. */
void relay_tunnel_join(struct relay_tunnel *t, struct relay_lease_ext *lx, int proven,
		       const struct tun_ctl_msg *m, const char *tname, const char *idkey);
/* 1 if resume (a register's) is a join proof for lx's token, current or
 * previous; both compared in constant time. */
int relay_join_proven(const struct relay_lease_ext *lx, const char *resume);
/* 1 if a sidecar identified as idkey in tenant tname may resume or join lx:
 * the same identity, and the lease's tenant, or the lease's tenant is gone
 * from the configuration (the lease keeps the rules it was made under). */
int relay_lease_is_theirs(const struct relay *r, const struct relay_lease_ext *lx,
			  const char *tname, const char *idkey);
/* Every tunnel of lx lets go of it and is closed; with code, after an error
 * message (code, text) on each. The lease is the caller's to end. */
void relay_lease_end_tunnels(struct relay_lease_ext *lx, const char *code, const char *text);
/* The open tunnel of lx that takes a new executor stream to the port of
 * role, or NULL. With several, the oldest carries the driver port's streams
 * (Spark's heartbeats, task launches and status updates) and the others,
 * fewest streams first, those of the block manager and UI ports (broadcast
 * pieces: bulk). Each tunnel is a TCP connection of its own, so a heartbeat
 * does not wait behind a broadcast's lost packet (head-of-line blocking). */
struct relay_tunnel *relay_lease_pick_tunnel(const struct relay_lease_ext *lx,
					     enum tun_port_role role);

#endif
