/* Read-only views of a relay's leases, tunnels, pools, tenants and counters,
 * and revoke: what the admin API (relay_admin.c) shows and does. Views are
 * borrowed for the call of the visitor. */
#ifndef RELAY_VIEW_H
#define RELAY_VIEW_H

#include <stdint.h>

#include <jansson.h>

#include "relay/relay.h"
#include "tunnel/tun_group.h"

struct relay_lease_view {
	const char *id, *app, *tenant, *pool, *route, *host;
	uint16_t ports[TUN_PORT_MAX];
	int attached;           /* a tunnel carries it now */
	const char *peer;       /* that tunnel's sidecar address, "" if none */
	unsigned ntunnels;      /* its tunnels on this relay */
	unsigned npending;      /* executors waiting for the tunnel */
	uint64_t conns_total;   /* executor connections accepted */
	uint64_t conns_active;
	/* executor connections the sidecar refused: nothing listened on the
	 * driver port on the notebook (refused_total{reason="driver"}) */
	uint64_t driver_refused;
	uint64_t detached_ms;   /* how long the lease has been without a tunnel; 0 attached */
	int64_t expires_in_ms;  /* grace left while detached (>= 0); -1 while attached */
	/* Its executor streams across tunnels (tunnel/tun_group.h): held now,
	 * and since when (away_since_us, monotonic; 0 while none are held). */
	struct tun_group_stats resume;
	uint64_t away_ms;       /* how long its streams have been held; 0 if none */
};

struct relay_session_view {
	const char *peer;       /* sidecar address */
	const char *identity;   /* certificate CN, "" if none */
	const char *tenant;     /* "" until registered */
	const char *lease;      /* "" until registered */
	const char *app;        /* the lease's app, "" until registered */
	uint64_t age_ms;
	struct tun_conn_stats st;
};

/* One port pool by name. A reload that changes a pool keeps its old table
 * until its leases end: both count here under the one name. */
struct relay_pool_view {
	const char *name;
	uint32_t port_min, port_max; /* of the pool in force (0, 0: removed) */
	uint32_t max_leases;         /* 0: none but the range */
	uint64_t ports;              /* port_max - port_min + 1, 0 if removed */
	uint64_t ports_used;         /* held by leases, old tables included */
	uint64_t leases;
};

/* One tenant: every tenant of the policy in force (the implicit "default"
 * while none is configured), and tenants a reload removed that still hold
 * leases (configured 0). */
struct relay_tenant_view {
	const char *name;
	int configured;              /* in the policy in force */
	uint64_t leases, connections; /* held now */
	uint32_t max_leases, max_connections; /* its limits now; 0: none */
};

/* Visit every lease / tunnel / pool / tenant; views are borrowed for the call. */
void relay_foreach_lease(struct relay *r, void (*fn)(const struct relay_lease_view *v, void *arg),
			 void *arg);
void relay_foreach_session(struct relay *r,
			   void (*fn)(const struct relay_session_view *v, void *arg), void *arg);
void relay_foreach_pool(struct relay *r, void (*fn)(const struct relay_pool_view *v, void *arg),
			void *arg);
void relay_foreach_tenant(struct relay *r,
			  void (*fn)(const struct relay_tenant_view *v, void *arg), void *arg);
/* Refusals counted by tenant and pool ("" when not known), counts indexed
 * by enum relay_refusal; only pairs that had a refusal are visited. */
void relay_foreach_refusal(struct relay *r,
			   void (*fn)(const char *tenant, const char *pool, const uint64_t *n,
				      void *arg),
			   void *arg);

/* Stream resumption over every lease, ended ones included for the
 * counters; held and held_bytes are the state now, away_since_us the
 * earliest of the leases away. *leases_away (may be NULL) gets how many
 * leases hold streams now. */
void relay_get_resume_stats(struct relay *r, struct tun_group_stats *sum, uint64_t *leases_away);

/* Revoke: close the lease's tunnel and free its ports. 0, SR_ENOTFOUND, or
 * SR_EBUSY during a handover (relay_handover.c). */
int relay_revoke_lease(struct relay *r, const char *id);

/* Which tenant and route a registration would get under policy p, as JSON:
 *   {"allowed": bool, "tenant": name|null, "route": name|null,
 *    "pool": name|null, "reason": text|null, "explanation": text}
 * ("reason" says why it is refused; "explanation" is relay_policy_explain's
 * text). NULL when out of memory. */
json_t *relay_explain_json(const struct relay_policy *p, const struct relay_identity *id,
			   const char *app);

#endif
