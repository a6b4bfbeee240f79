/* Executor connections: admission on a lease port (draining, CIDRs,
 * tenant and lease limits), a stream at once when the lease's tunnel is up,
 * else a bounded wait in arrival order for the tunnel to come back. */
#include "relay/relay_int.h"
#include "relay/relay_fleet.h"
#include "common/sr_err.h"
#include "common/sr_bsock.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

static void pending_free(struct relay_pending *p, int reset)
{
	if (p->fd >= 0) {
		if (reset)
			sr_sock_set_reset_on_close(p->fd);
		close(p->fd);
	}
	if (p->timer)
		event_free(p->timer);
	free(p);
}

static void pending_unlink(struct relay_pending *p)
{
	struct relay_lease_ext *lx = p->owner;
	struct relay_pending **pp = &lx->pending, *prev = NULL;

	while (*pp && *pp != p) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp)
		*pp = p->next;
	if (lx->pending_tail == p)
		lx->pending_tail = prev;
	lx->npending--;
}

/* Whether a refusal of this kind for lx may be logged now; *more gets the
 * number of its refusals that were not logged since the previous line. */
static int refusal_log_allowed(struct relay_lease_ext *lx, enum relay_rl_exec kind,
			       uint64_t *more)
{
	return sr_ratelog_allow(&lx->rl_exec[kind], sr_now_us(), REFUSAL_LOG_PERIOD_US, more);
}

static void refuse(struct relay *r, struct relay_lease_ext *lx, enum relay_refusal why)
{
	relay_refuse_at(r, why, lx ? lx->tenant_name : "", lx && lx->pool ? lx->pool->name : "");
}

/* Executor conn_id waited relay.lease.pending_timeout_ms in vain: logged
 * (a line a period) and counted; the caller closes it. */
static void wait_timed_out(struct relay_lease_ext *lx, uint64_t conn_id, const char *peer)
{
	struct relay *r = lx->relay;
	char ctx[RELAY_LEASE_CTX_MAX];
	uint64_t more = 0;

	if (refusal_log_allowed(lx, RELAY_RL_WAIT_TIMEOUT, &more))
		SR_WARN(
		    relay_lease_ctx(lx, lx->lease, ctx, sizeof(ctx)),
		    "conn=%llu peer=%s: closed after waiting %u ms for the tunnel (%llu more "
		    "since the last line)",
		    (unsigned long long)conn_id, peer, r->o->pending_timeout_ms,
		    (unsigned long long)more);
	refuse(r, lx, RELAY_REFUSE_PENDING_TIMEOUT);
}

static void pending_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_pending *p = arg;

	wait_timed_out(p->owner, p->conn_id, p->peer);
	pending_unlink(p);
	pending_free(p, 1);
}

static void open_stream(struct relay *r, struct relay_lease_ext *lx, struct relay_tunnel *t,
			int fd, enum tun_port_role role, uint64_t conn_id, const char *peer)
{
	struct sr_bsock *bev;
	int rv;

	bev = sr_bsock_new(r->base, fd); /* closes fd on failure */
	if (!bev) {
		refuse(r, lx, RELAY_REFUSE_STREAM);
		return;
	}
	rv = tun_conn_open_stream(t->conn, bev, relay_lease_port(lx->lease, role),
				  relay_lease_id(lx->lease), conn_id, peer);
	if (rv != 0) {
		SR_WARN(t->ctx, "conn=%llu peer=%s: cannot open stream: %s",
			(unsigned long long)conn_id, peer, sr_strerror(rv));
		refuse(r, lx, RELAY_REFUSE_STREAM);
		return;
	}
	lx->conns_total++;
	SR_DEBUG(t->ctx, "conn=%llu peer=%s port=%u: stream opened",
		 (unsigned long long)conn_id, peer, relay_lease_port(lx->lease, role));
	/* nghttp2 holds the stream until one ends: the executor connection
	 * waits, which nothing else would show. */
	if (tun_conn_nstreams(t->conn) + 1 > tun_conn_peer_max_streams(t->conn)) {
		uint64_t more = 0;
		if (sr_ratelog_allow(&lx->rl_streams, sr_now_us(), REFUSAL_LOG_PERIOD_US,
				     &more))
			SR_WARN(t->ctx,
				"conn=%llu peer=%s: waits for a stream: the sidecar takes %u "
				"at once, the control stream included (its "
				"tunnel.h2.max_streams) (%llu more since the last line)",
				(unsigned long long)conn_id, peer,
				tun_conn_peer_max_streams(t->conn), (unsigned long long)more);
	}
}

/* The sidecar reset a stream before answering: almost always nothing
 * listens on the driver port on the notebook (the driver is not started,
 * or was started without the lease's settings). Counted per lease (`ctl
 * leases`) and as refused_total{reason="driver"}; one line per period. */
void relay_exec_on_refused(struct tun_conn *c, uint64_t conn_id, uint16_t port, void *arg)
{
	struct relay_tunnel *t = arg;
	struct relay_lease_ext *lx = t->lx;
	uint64_t more = 0;

	relay_refuse(t->relay, RELAY_REFUSE_DRIVER);
	if (!lx)
		return;
	lx->driver_refused++;
	if (sr_ratelog_allow(&lx->rl_driver, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
		SR_WARN(t->ctx, "conn=%llu port=%u: the sidecar refused the stream: nothing "
				"listens on the driver port on the notebook? (%llu more since the "
				"last line)",
			(unsigned long long)conn_id, port, (unsigned long long)more);
}

void relay_exec_flush_pending(struct relay *r, struct relay_lease_ext *lx)
{
	uint64_t now = sr_now_us();

	struct relay_tunnel *t;

	while (lx->pending && (t = relay_lease_pick_tunnel(lx, lx->pending->role)) != NULL) {
		struct relay_pending *p = lx->pending;
		int fd = p->fd;
		lx->pending = p->next;
		if (!lx->pending)
			lx->pending_tail = NULL;
		lx->npending--;
		p->fd = -1;
		relay_hist_add(&r->st.pending_wait, now - p->since_us);
		open_stream(r, lx, t, fd, p->role, p->conn_id, p->peer);
		pending_free(p, 0);
	}
}

static void reset_fd(int fd)
{
	sr_sock_set_reset_on_close(fd);
	close(fd);
}

void relay_exec_on_accept(struct relay_lease *l, enum tun_port_role role, int fd,
			  const struct sockaddr *sa, int salen, void *arg)
{
	(void)salen;
	relay_exec_accept(arg, l, role, fd, sa, 0);
}

/* A new connection (conn_id 0: numbered, counted, waiting from now), or one
 * back from a carry that failed (see relay_exec_wait_again). */
static void exec_accept(struct relay *r, struct relay_lease *l, enum tun_port_role role, int fd,
			const struct sockaddr *sa, int from_peer, uint64_t again_id,
			uint64_t since_us);

void relay_exec_accept(struct relay *r, struct relay_lease *l, enum tun_port_role role, int fd,
		       const struct sockaddr *sa, int from_peer)
{
	exec_accept(r, l, role, fd, sa, from_peer, 0, 0);
}

void relay_exec_wait_again(struct relay *r, struct relay_lease *l, enum tun_port_role role,
			   int fd, const struct sockaddr *sa, uint64_t conn_id,
			   uint64_t since_us)
{
	exec_accept(r, l, role, fd, sa, RELAY_EXEC_LOCAL, conn_id, since_us);
}

static void exec_accept(struct relay *r, struct relay_lease *l, enum tun_port_role role, int fd,
			const struct sockaddr *sa, int from_peer, uint64_t again_id,
			uint64_t since_us)
{
	struct relay_lease_ext *lx = relay_lease_data(l);
	const struct relay_pol *tpol;
	const struct relay_policy *pol;
	struct relay_tenant_limits tl;
	struct relay_pending *p;
	char peer[SR_ADDRSTRLEN], ctx[RELAY_LEASE_CTX_MAX];
	uint64_t conn_id = again_id ? again_id : ++r->next_conn_id, more = 0;
	uint64_t now = sr_now_us(), timeout_us = (uint64_t)r->o->pending_timeout_ms * 1000u;
	int cur, route;
	unsigned max_pending = r->o->max_pending;
	struct timeval tv;

	sr_format_addr(sa, peer, sizeof(peer));
	if (!again_id) {
		r->st.executor_conns++;
		since_us = now;
	}
	if (!lx || r->draining) {
		reset_fd(fd);
		refuse(r, lx, RELAY_REFUSE_DRAINING);
		return;
	}
	/* "Changed limits apply to new work": a new executor connection is
	 * judged by the current policy's route and tenant of the same name;
	 * only if a reload removed them do the lease's original rules apply. */
	cur = relay_policy_route_find(r->pol->p, lx->route_name);
	pol = cur >= 0 ? r->pol->p : lx->pol->p;
	route = cur >= 0 ? cur : lx->route;
	cur = relay_policy_tenant_find(r->pol->p, lx->tenant_name);
	tpol = cur >= 0 ? r->pol : lx->pol;
	relay_tenant_limits(r, tpol, relay_policy_tenant_cfg(tpol->p, cur >= 0 ? cur : lx->tenant),
		      &tl);
	/* Refusals are logged at most once per kind, lease and period (a
	 * scanner or a crash-looping executor makes thousands), and each one
	 * is counted. */
	if (!relay_policy_executor_allowed(pol, route, sa)) {
		if (refusal_log_allowed(lx, RELAY_RL_CIDR, &more))
			SR_WARN(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
				"conn=%llu peer=%s: refused, address not in route %s's "
				"executor_cidrs (%llu more refused since the last line)",
				(unsigned long long)conn_id, peer, lx->route_name,
				(unsigned long long)more);
		reset_fd(fd);
		refuse(r, lx, RELAY_REFUSE_CIDR);
		return;
	}
	if (r->o->max_lease_connections &&
	    relay_lease_conns(lx) >= (uint64_t)r->o->max_lease_connections) {
		if (sr_ratelog_allow(&lx->rl_refused, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
			SR_WARN(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
				"conn=%llu peer=%s: refused, the lease is at its limit of %u "
				"connections (relay.max_lease_connections; %llu more refused since "
				"the last line)",
				(unsigned long long)conn_id, peer, r->o->max_lease_connections,
				(unsigned long long)more);
		reset_fd(fd);
		refuse(r, lx, RELAY_REFUSE_LEASE_CONNS);
		return;
	}
	if (tl.connections) {
		struct relay_tenant_usage u;
		relay_tenant_usage(r, lx->tenant_name, NULL, NULL, NULL, &u);
		if (u.conns >= tl.connections) {
			if (refusal_log_allowed(lx, RELAY_RL_TENANT, &more))
				SR_WARN(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
					"conn=%llu peer=%s: refused, tenant %s is at its limit of "
					"%u connections (%llu more refused since the last line)",
					(unsigned long long)conn_id, peer, lx->tenant_name,
					tl.connections, (unsigned long long)more);
			reset_fd(fd);
			refuse(r, lx, RELAY_REFUSE_TENANT_LIMIT);
			return;
		}
	}
	/* Any open tunnel of the lease here; with none (all closing), the
	 * executor waits for the sidecar's next tunnel like during grace. */
	{
		struct relay_tunnel *t = relay_lease_pick_tunnel(lx, role);
		if (t) {
			open_stream(r, lx, t, fd, role, conn_id, peer);
			return;
		}
	}
	/* No tunnel here: a relay of the fleet that holds one carries it
	 * (not one that every relay just failed to carry). */
	if (from_peer == RELAY_EXEC_LOCAL && !again_id && r->fleet &&
	    relay_fleet_forward(r->fleet, lx, role, fd, sa, conn_id, since_us))
		return;
	/* Its wait is over already: every carry failed until the deadline
	 * (holders that etcd lists but nobody reaches, tried at each change). */
	if (again_id && now - since_us >= timeout_us) {
		wait_timed_out(lx, conn_id, peer);
		reset_fd(fd);
		return;
	}
	if (tl.pending)
		max_pending = tl.pending;
	if (lx->npending >= max_pending) {
		if (refusal_log_allowed(lx, RELAY_RL_QUEUE_FULL, &more))
			SR_WARN(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
				"conn=%llu peer=%s: refused, %u connections already wait for the "
				"tunnel (%llu more refused since the last line)",
				(unsigned long long)conn_id, peer, lx->npending,
				(unsigned long long)more);
		reset_fd(fd);
		refuse(r, lx, RELAY_REFUSE_PENDING_FULL);
		return;
	}
	p = calloc(1, sizeof(*p));
	if (!p || !(p->timer = evtimer_new(r->base, pending_timeout_cb, p))) {
		free(p);
		close(fd);
		refuse(r, lx, RELAY_REFUSE_STREAM);
		return;
	}
	p->owner = lx;
	p->fd = fd;
	p->role = role;
	p->conn_id = conn_id;
	p->since_us = since_us;
	p->from_peer = from_peer == RELAY_EXEC_FROM_PEER;
	snprintf(p->peer, sizeof(p->peer), "%s", peer);
	tv = sr_tv_ms((timeout_us - (now - since_us) + 999u) / 1000u);
	evtimer_add(p->timer, &tv);
	if (lx->pending_tail)
		lx->pending_tail->next = p;
	else
		lx->pending = p;
	lx->pending_tail = p;
	lx->npending++;
	if (!again_id)
		SR_INFO(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
			"conn=%llu peer=%s: waiting for the tunnel (up to %u ms)",
			(unsigned long long)conn_id, peer, r->o->pending_timeout_ms);
	else if (refusal_log_allowed(lx, RELAY_RL_UNCARRIED, &more))
		/* tried again at each change in etcd: one line a period */
		SR_INFO(
		    relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
		    "conn=%llu peer=%s: no relay carried it; waiting for the tunnel here (%llu "
		    "ms left; %llu more since the last line)",
		    (unsigned long long)conn_id, peer,
		    (unsigned long long)((timeout_us - (now - since_us)) / 1000u),
		    (unsigned long long)more);
}

void relay_lease_ext_free(struct relay_lease_ext *lx)
{
	/* Callers unlink its tunnels first; any left would keep a freed group. */
	if (lx->tunnel)
		relay_lease_end_tunnels(lx, NULL, NULL);
	relay_tenant_remove(lx->relay, lx);
	if (lx->group && lx->relay) {
		/* Its counters outlive it in the relay's totals; held streams
		 * end with the lease (tun_group_free counts them lost). */
		struct tun_group_stats gs;
		tun_group_get_stats(lx->group, &gs);
		gs.lost[TUN_LOST_ENDED] += gs.held;
		relay_group_stats_add(&lx->relay->closed_groups, &gs);
	}
	tun_group_free(lx->group);
	while (lx->pending) {
		struct relay_pending *p = lx->pending;
		lx->pending = p->next;
		pending_free(p, 1);
	}
	lx->pending_tail = NULL;
	relay_pol_unref(lx->pol);
	free(lx);
}

void relay_exec_on_expire(struct relay_lease *l, void *arg)
{
	struct relay *r = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	char ctx[RELAY_LEASE_CTX_MAX];

	SR_INFO(relay_lease_ctx(lx, l, ctx, sizeof(ctx)),
		"lease expired: no tunnel for %u s; ports closed", r->o->lease_grace_s);
	r->st.leases_expired++;
	relay_lease_set_data(l, NULL);
	if (lx)
		relay_lease_ext_free(lx);
}

void relay_release_lease(struct relay_lease_ext *lx)
{
	struct relay_lease *l = lx->lease;

	if (lx->relay && lx->relay->fleet)
		relay_fleet_released(lx->relay->fleet, lx);
	relay_lease_set_data(l, NULL);
	relay_lease_ext_free(lx);
	relay_lease_release(l);
}

struct relay_pending *relay_exec_adopt_pending(struct relay_lease_ext *lx, int fd,
					       enum tun_port_role role, uint64_t conn_id,
					       const char *peer, uint64_t since_us)
{
	struct relay_pending *p = calloc(1, sizeof(*p)), **tail;

	if (!p || !(p->timer = evtimer_new(lx->relay->base, pending_timeout_cb, p))) {
		free(p);
		close(fd);
		return NULL;
	}
	p->owner = lx;
	p->fd = fd;
	p->role = role;
	p->conn_id = conn_id;
	p->since_us = since_us;
	snprintf(p->peer, sizeof(p->peer), "%s", peer);
	for (tail = &lx->pending; *tail; tail = &(*tail)->next)
		;
	*tail = p;
	lx->npending++;
	return p;
}
