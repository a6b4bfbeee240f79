/* Read-only views of a relay's leases and tunnels, and revoke: what the
 * admin API (relay_admin.c) shows and does. Views are borrowed for the
 * call of the visitor. */
#ifndef RELAY_VIEW_H
#define RELAY_VIEW_H

#include <stdint.h>

#include "relay/relay.h"

struct relay_lease_view {
	const char *id, *app, *tenant, *pool, *route, *host;
	uint16_t ports[TUN_PORT_MAX];
	int attached;           /* a tunnel carries it now */
	const char *peer;       /* that tunnel's sidecar address, "" if none */
	unsigned npending;      /* executors waiting for the tunnel */
	uint64_t conns_total;   /* executor connections accepted */
	uint64_t conns_active;
	/* executor connections the sidecar refused: nothing listened on the
	 * driver port on the notebook (refused_total{reason="driver"}) */
	uint64_t driver_refused;
};

struct relay_session_view {
	const char *peer;       /* sidecar address */
	const char *identity;   /* certificate CN, "" if none */
	const char *tenant;     /* "" until registered */
	const char *lease;      /* "" until registered */
	uint64_t age_ms;
	struct tun_conn_stats st;
};

/* Visit every lease / tunnel; views are borrowed for the call. */
void relay_foreach_lease(struct relay *r, void (*fn)(const struct relay_lease_view *v, void *arg),
			 void *arg);
void relay_foreach_session(struct relay *r,
			   void (*fn)(const struct relay_session_view *v, void *arg), void *arg);
/* Revoke: close the lease's tunnel and free its ports. 0, SR_ENOTFOUND, or
 * SR_EBUSY during a handover (relay_handover.c). */
int relay_revoke_lease(struct relay *r, const char *id);

#endif
