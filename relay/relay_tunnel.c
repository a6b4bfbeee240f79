/* Tunnels from sidecars: accept (with caps on connections that have not
 * registered), TLS through tun_endpoint, registration (identity, tenant,
 * route, pool, limits; new lease or resume), the control messages of a
 * registered tunnel, and its end. */
#include "relay/relay_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "relay/relay_fleet.h"
#include "tunnel/tun_tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/listener.h>

void relay_tunnel_unlink_lease(struct relay_tunnel *t)
{
	struct relay_lease_ext *lx = t->lx;

	if (!lx)
		return;
	if (t->relay->fleet)
		relay_fleet_detached(t->relay->fleet, lx);
	for (struct relay_tunnel **pp = &lx->tunnel; *pp; pp = &(*pp)->lnext)
		if (*pp == t) {
			*pp = t->lnext;
			lx->ntunnels--;
			break;
		}
	t->lnext = NULL;
	t->lx = NULL;
	t->joined = 0;
	t->relay->nregistered--;
}

void relay_lease_end_tunnels(struct relay_lease_ext *lx, const char *code, const char *text)
{
	while (lx->tunnel) {
		struct relay_tunnel *t = lx->tunnel;
		relay_tunnel_unlink_lease(t);
		/* The lease ends: its streams end with the session, not held. */
		tun_conn_set_group(t->conn, NULL);
		if (code) {
			struct tun_ctl_msg m;
			memset(&m, 0, sizeof(m));
			m.type = TUN_CTL_ERROR;
			snprintf(m.code, sizeof(m.code), "%s", code);
			snprintf(m.message, sizeof(m.message), "%s", text);
			tun_conn_send_ctl(t->conn, &m);
		}
		tun_conn_close(t->conn, 0);
	}
}

static int tunnel_takes_streams(const struct relay_tunnel *t)
{
	/* A tunnel that is closing (or got GOAWAY) takes no new streams. */
	return t->conn && tun_conn_is_open(t->conn) && !t->open_after_lease;
}

struct relay_tunnel *relay_lease_pick_tunnel(const struct relay_lease_ext *lx,
					     enum tun_port_role role)
{
	struct relay_tunnel *oldest = NULL, *best = NULL;
	size_t least = 0;

	/* Joins are prepended: the last open tunnel is the oldest. */
	for (struct relay_tunnel *t = lx->tunnel; t; t = t->lnext)
		if (tunnel_takes_streams(t))
			oldest = t;
	if (!oldest || role == TUN_PORT_DRIVER)
		return oldest;
	for (struct relay_tunnel *t = lx->tunnel; t; t = t->lnext) {
		size_t n;
		if (t == oldest || !tunnel_takes_streams(t))
			continue;
		n = tun_conn_nstreams(t->conn);
		if (!best || n < least) {
			best = t;
			least = n;
		}
	}
	return best ? best : oldest;
}

void relay_tunnel_free(struct relay_tunnel *t)
{
	struct relay *r = t->relay;

	if (t->prev)
		t->prev->next = t->next;
	else if (r->tunnels == t)
		r->tunnels = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (r->fleet)
		relay_fleet_tunnel_gone(r->fleet, t);
	if (t->lx && t->lx->ntunnels > 1) {
		struct relay_lease_ext *lx = t->lx;
		relay_tunnel_unlink_lease(t);
		if (!r->draining)
			SR_INFO(t->ctx, "tunnel lost; the lease goes on over its %u other tunnel%s "
					"here",
				lx->ntunnels, lx->ntunnels == 1 ? "" : "s");
	} else if (t->lx) {
		struct relay_lease_ext *lx = t->lx;
		relay_tunnel_unlink_lease(t);
		lx->detached_us = sr_now_us();
		/* In a fleet the grace period is the lease's etcd lease, which
		 * every relay holding a tunnel keeps alive (relay_fleet.c). */
		if (!r->fleet)
			relay_lease_detach(lx->lease);
		if (!r->draining)
			SR_INFO(t->ctx, "tunnel lost; lease and ports kept for %u s",
				r->o->lease_grace_s);
	}
	if (t->conn) {
		struct tun_conn_stats st;
		tun_conn_get_stats(t->conn, &st);
		r->closed_bytes_in += st.bytes_to_tunnel;
		r->closed_bytes_out += st.bytes_from_tunnel;
		r->closed_streams_opened += st.streams_opened;
		r->closed_throttled += st.sock_in_throttled;
	}
	tun_endpoint_free(t->ep);
	if (t->timer)
		event_free(t->timer);
	r->st.tunnels_active--;
	free(t);
}

/* Refuse the registration with code and text (sent to the sidecar); detail
 * (may be NULL, already escaped) is for the log only. */
static void send_error_detail(struct relay_tunnel *t, const char *code, const char *text,
			      const char *detail)
{
	struct tun_ctl_msg m;
	char esc[SR_ESC_SIZE(TUN_CTL_TEXT_MAX)];

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_ERROR;
	snprintf(m.code, sizeof(m.code), "%s", code);
	snprintf(m.message, sizeof(m.message), "%s", text);
	/* text may quote what the sidecar sent (its app name, say). */
	SR_WARN(t->ctx, "registration refused: %s (%s%s%s)", code, sr_esc(text, esc, sizeof(esc)),
		detail ? "; " : "", detail ? detail : "");
	if (tun_conn_send_ctl(t->conn, &m) != 0) {
		/* text did not encode (not expected: peer text is masked) */
		snprintf(m.message, sizeof(m.message), "registration refused: %s", code);
		tun_conn_send_ctl(t->conn, &m);
	}
	tun_conn_close(t->conn, 0);
}

void relay_tunnel_error(struct relay_tunnel *t, const char *code, const char *text)
{
	send_error_detail(t, code, text, NULL);
}

/* After the lease message: held streams reopened, then waiting executors. */
static void open_streams(struct relay_tunnel *t)
{
	struct relay_lease_ext *lx = t->lx;

	t->open_after_lease = 0;
	if (!lx)
		return;
	/* The lease message carried a new resume token: tunnel_on_confirmed
	 * retires the old one once the sidecar has read it. */
	if (lx->prev_resume[0] && !t->joined)
		tun_conn_confirm(t->conn);
	if (tun_group_held(lx->group))
		tun_group_resume(lx->group, t->conn);
	relay_exec_flush_pending(t->relay, lx);
}

static void tunnel_on_confirmed(struct tun_conn *c, void *arg)
{
	struct relay_tunnel *t = arg;

	if (t->lx && t->lx->prev_resume[0]) {
		SR_DEBUG(t->ctx, "the sidecar has the new resume token; the old one is retired");
		memset(t->lx->prev_resume, 0, sizeof(t->lx->prev_resume));
	}
}

static void tunnel_on_ctl_sent(struct tun_conn *c, void *arg)
{
	struct relay_tunnel *t = arg;

	if (t->open_after_lease)
		open_streams(t);
}

/* Give lx to t and send the sidecar its lease. fresh: lx was granted just
 * now, so the sidecar has no resume token for it. */
static void attach_as(struct relay_tunnel *t, struct relay_lease_ext *lx, int fresh, int join)
{
	struct relay *r = t->relay;
	struct tun_ctl_msg m;
	int err;
	char app[SR_ESC_SIZE(LOG_APP_MAX)];

	/* A resume replaces every tunnel of the lease (a join adds one):
	 * either the sidecar came back before we noticed its old tunnels died,
	 * or someone else holds the resume token: say both. */
	while (!join && lx->tunnel) {
		struct relay_tunnel *old = lx->tunnel;
		char cn[SR_ESC_SIZE(64) + 2], oldcn[SR_ESC_SIZE(64) + 2];
		SR_WARN(old->ctx, "replaced by a new tunnel from peer=%s cn=%s that resumed the "
				  "lease while this one (peer=%s cn=%s) was still attached; "
				  "closing this one",
			t->peer, relay_log_word(t->identity, cn, sizeof(cn)), old->peer,
			relay_log_word(old->identity, oldcn, sizeof(oldcn)));
		relay_tunnel_unlink_lease(old);
		/* Its streams go to the lease's group, to resume on this one. */
		tun_conn_close_hold(old->conn, SR_ECLOSED);
	}
	t->lnext = lx->tunnel;
	lx->tunnel = t;
	lx->ntunnels++;
	lx->detached_us = 0;
	t->lx = lx;
	t->joined = join;
	while (!t->tid)
		t->tid = sr_rand_below(UINT32_MAX);
	r->nregistered++;
	relay_lease_attach(lx->lease);
	if (r->fleet)
		relay_fleet_attached(r->fleet, lx);
	evtimer_del(t->timer);
	snprintf(t->ctx, sizeof(t->ctx), "lease=%s app=\"%s\" tenant=%s peer=%s",
		 relay_lease_id(lx->lease),
		 sr_esc_n(relay_lease_app(lx->lease), LOG_APP_MAX, app, sizeof(app)),
		 lx->tenant_name, t->peer);
	tun_conn_set_logctx(t->conn, t->ctx);
	tun_group_set_logctx(lx->group, t->ctx);
	tun_conn_set_group(t->conn, lx->group);
	memset(&m, 0, sizeof(m));
	relay_lease_describe(lx->lease, &m);
	/* A joined tunnel leaves the token where the first one put it. */
	if (join)
		m.resume[0] = '\0';
	m.tunnel = t->tid;
	m.streams = (uint32_t)tun_group_held(lx->group);
	if ((err = tun_conn_send_ctl(t->conn, &m)) != 0) {
		/* Out of memory, or a value the message cannot carry (the
		 * configuration's checks make that unexpected). */
		if (fresh) {
			/* Nobody could ever resume it: release it now rather than
			 * hold its ports for the grace period. The sidecar dials
			 * again and registers anew. */
			SR_WARN(t->ctx,
				"cannot send the lease (%s); lease released, closing the "
				"tunnel",
				sr_strerror(err));
			tun_conn_set_group(t->conn, NULL);
			relay_tunnel_unlink_lease(t);
			relay_release_lease(lx);
		} else {
			SR_WARN(t->ctx,
				"cannot send the lease (%s); closing the tunnel, the lease "
				"waits for the sidecar to resume it",
				sr_strerror(err));
		}
		tun_conn_close_hold(t->conn, SR_ENOMEM);
		return;
	}
	/* Streams (held ones reopened, waiting executors) must reach the
	 * sidecar after the lease: it takes none before. */
	if (tun_conn_ctl_flushed(t->conn))
		open_streams(t);
	else
		t->open_after_lease = 1;
}

void relay_tunnel_attach(struct relay_tunnel *t, struct relay_lease_ext *lx, int fresh)
{
	attach_as(t, lx, fresh, 0);
}

/* A lease's context plus the sidecar's address, for lines logged before
 * attach() gives the tunnel that context. */
static const char *lease_peer_ctx(const struct relay_tunnel *t, const struct relay_lease_ext *lx,
				  char *buf, size_t len)
{
	char lctx[RELAY_LEASE_CTX_MAX];

	snprintf(buf, len, "%s peer=%s", relay_lease_ctx(lx, lx->lease, lctx, sizeof(lctx)),
		 t->peer);
	return buf;
}

/* End one of the tenant's leases that have no tunnel, so that a registration
 * of the same tenant can have a lease: the oldest one that this client (same
 * identity, same source) left behind, else the tenant's oldest. With pool
 * set, only leases of that pool count (their ports are what is missing).
 * Never touches another tenant's leases. Returns 1 if one was ended. */
static int reclaim_one(struct relay_tunnel *t, const char *tenant, const char *idkey,
		       const struct relay_pool_rt *pool, const char *why)
{
	struct relay *r = t->relay;
	struct relay_lease_ext *victim;
	struct relay_tenant_usage u;

	/* In a fleet a lease without a tunnel here may well have one on
	 * another relay: nothing here tells, so nothing is reclaimed. */
	if (r->fleet)
		return 0;
	relay_tenant_usage(r, tenant, idkey, (const struct sockaddr *)&t->addr, pool, &u);
	victim = u.oldest_mine ? u.oldest_mine : u.oldest;
	if (!victim)
		return 0;
	SR_WARN(t->ctx, "lease=%s of tenant %s reclaimed after %llu s without a tunnel (%s): "
			"its sidecar must register again",
		relay_lease_id(victim->lease), tenant,
		(unsigned long long)((sr_now_us() - victim->detached_us) / 1000000u), why);
	r->st.leases_reclaimed++;
	relay_release_lease(victim);
	return 1;
}

/* Who is registering: the tenant (index in the current policy) and the
 * identity key its leases are bound to. Returns the tenant, or -1 after
 * answering the refusal. */
static int reg_identify(struct relay_tunnel *t, const struct tun_ctl_msg *m, char *idkey,
			size_t idlen)
{
	struct relay *r = t->relay;
	const struct relay_policy *p = r->pol->p;
	const char *sans[TUN_EP_MAX_SANS];
	struct relay_identity id;
	char why[256];
	int tenant;

	if (r->o->auth_token && !sr_secret_eq(m->token, r->o->auth_token)) {
		relay_refuse(r, RELAY_REFUSE_REG_AUTH);
		relay_tunnel_error(t, "unauthorized", "missing or wrong token");
		return -1;
	}
	for (size_t i = 0; i < t->nsans; i++)
		sans[i] = t->sans[i];
	memset(&id, 0, sizeof(id));
	id.cn = t->identity;
	id.sans = sans;
	id.nsans = t->nsans;
	id.token = m->token;
	id.addr = (const struct sockaddr *)&t->addr;
	tenant = relay_policy_tenant(p, &id, why, sizeof(why));
	if (tenant < 0) {
		relay_refuse(r, RELAY_REFUSE_REG_AUTH);
		relay_tunnel_error(t, "unauthorized", why);
		return -1;
	}
	if (relay_identity_key(t->identity, m->token, relay_policy_tenant_name(p, tenant), idkey,
			       idlen) != 0) {
		relay_tunnel_error(t, "internal", "cannot derive the sidecar's identity");
		return -1;
	}
	return tenant;
}

static int tunnels_full(struct relay_tunnel *t)
{
	struct relay *r = t->relay;

	if (r->nregistered < r->o->max_tunnels)
		return 0;
	relay_refuse(r, RELAY_REFUSE_TUNNELS);
	relay_tunnel_error(t, "too_many_tunnels", "the relay carries its max_tunnels already");
	return 1;
}

/* The lease whose previous resume token is token, or NULL. Every lease is
 * compared, as relay_lease_find_resume does, so that the time taken does not
 * tell where (or whether) it matched. */
static struct relay_lease_ext *find_prev_resume(struct relay *r, const char *token)
{
	struct relay_lease_ext *found = NULL;

	for (struct relay_tenant_acct *a = r->tenants; a; a = a->next)
		for (struct relay_lease_ext *lx = a->leases; lx; lx = lx->tnext)
			if (sr_secret_eq(lx->prev_resume, token) && lx->prev_resume[0])
				found = lx;
	return found;
}

static void reg_resume(struct relay_tunnel *t, const struct tun_ctl_msg *m, const char *tname,
		       const char *idkey)
{
	struct relay *r = t->relay;
	struct relay_lease *l = relay_find_resume(r, m->resume);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
	/* The token that the last lease message replaced: that message may
	 * have died with its tunnel, leaving the sidecar with nothing newer. */
	int by_prev = 0;

	if (!lx) {
		lx = find_prev_resume(r, m->resume);
		l = lx ? lx->lease : NULL;
		by_prev = lx != NULL;
	}
	if (!relay_lease_is_theirs(r, lx, tname, idkey)) {
		/* Same answer for "no such lease" and "not yours": a resume
		 * token must not reveal whether it exists. */
		relay_refuse(r, RELAY_REFUSE_REG_RESUME);
		relay_tunnel_error(t, "unknown_lease", "no lease for this resume token");
		return;
	}
	if (!lx->tunnel && tunnels_full(t))
		return;
	/* A resume token is good for one resume: the lease message that
	 * attach() sends carries the next one, so a copy of the old one
	 * (from the sidecar's state file, say) is worthless once the sidecar
	 * has read that message (tunnel_on_confirmed). Until then the token
	 * used here still resumes: the message may be lost with the tunnel. */
	if (relay_lease_rotate_resume(l) != 0) {
		relay_tunnel_error(t, "internal", "cannot make a new resume token");
		return;
	}
	if (!by_prev)
		snprintf(lx->prev_resume, sizeof(lx->prev_resume), "%s", m->resume);
	SR_INFO(t->ctx, "resuming lease=%s%s", relay_lease_id(l),
		by_prev ? " (with the token before the last: the lease message that carried "
			  "its successor did not arrive)"
			: "");
	r->st.leases_resumed++;
	relay_tunnel_attach(t, lx, 0);
}

int relay_lease_is_theirs(const struct relay *r, const struct relay_lease_ext *lx,
			  const char *tname, const char *idkey)
{
	if (!lx || strcmp(lx->idkey, idkey) != 0)
		return 0;
	/* A reload or a takeover that dropped the lease's tenant leaves the
	 * lease its old rules; its sidecar, the same identity (a certificate's
	 * CN or a token's digest; an anonymous one's key names its tenant),
	 * now counts as another tenant and must still get its lease back,
	 * or a configuration change would cost every app of that tenant its
	 * executors. A tenant that still exists keeps its leases to itself. */
	return strcmp(lx->tenant_name, tname) == 0 ||
	       relay_policy_tenant_find(r->pol->p, lx->tenant_name) < 0;
}

int relay_join_proven(const struct relay_lease_ext *lx, const char *resume)
{
	const char *token = tun_ctl_join_token(resume);
	struct relay_lease_state st;
	int cur, prev;

	if (!lx || !token)
		return 0;
	relay_lease_get_state(lx->lease, &st);
	/* Both always compared: the time taken does not tell which matched. */
	cur = sr_secret_eq(st.resume, token);
	prev = sr_secret_eq(lx->prev_resume, token) && lx->prev_resume[0];
	return cur | prev;
}

void relay_tunnel_join(struct relay_tunnel *t, struct relay_lease_ext *lx, int proven,
		       const struct tun_ctl_msg *m, const char *tname, const char *idkey)
{
	struct relay *r = t->relay;
	struct relay_tunnel *old = NULL;

	if (!proven || !relay_lease_is_theirs(r, lx, tname, idkey)) {
		/* One answer for "no such lease", "wrong token" and "not
		 * yours", as for a resume. */
		relay_refuse(r, RELAY_REFUSE_REG_RESUME);
		relay_tunnel_error(t, "join_refused", "no lease to join for this token");
		return;
	}
	/* The sidecar lost this tunnel (its PING timeout, say) and we have
	 * not noticed yet: its streams wait to resume on the new one, which
	 * they can only once the old one has handed them to the group. */
	for (struct relay_tunnel *o = lx->tunnel; o && m->replaces; o = o->lnext)
		if (o->tid == m->replaces)
			old = o;
	if (old) {
		SR_WARN(old->ctx, "its sidecar lost this tunnel and replaces it with a new one "
				  "from peer=%s; closing this one",
			t->peer);
		relay_tunnel_unlink_lease(old);
		tun_conn_close_hold(old->conn, SR_ECLOSED);
	}
	if (lx->ntunnels >= RELAY_LEASE_TUNNELS_MAX) {
		char why[96];
		relay_refuse(r, RELAY_REFUSE_TUNNELS);
		snprintf(why, sizeof(why), "the lease holds %u tunnels on this relay already",
			 RELAY_LEASE_TUNNELS_MAX);
		relay_tunnel_error(t, "join_refused", why);
		return;
	}
	if (tunnels_full(t))
		return;
	SR_INFO(t->ctx, "joining lease=%s beside its %u other tunnel%s here",
		relay_lease_id(lx->lease), lx->ntunnels, lx->ntunnels == 1 ? "" : "s");
	r->st.leases_joined++;
	attach_as(t, lx, 0, 1);
}

/* The tenant's limits before a new lease: past max_grace_leases, or at its
 * lease limit, one of its leases without a tunnel is reclaimed. Returns 0
 * if a lease may be made, -1 after answering the refusal. */
static int reg_check_limits(struct relay_tunnel *t, int tenant, const char *tname,
			    const char *idkey)
{
	struct relay *r = t->relay;
	struct relay_tenant_limits tl;
	struct relay_tenant_usage u;
	char why[256];

	/* Leases without a tunnel are what a client that registers and drops
	 * its tunnels piles up: past max_grace_leases a new registration of
	 * the tenant ends one of them (its own first) instead of taking more. */
	if (r->o->max_grace_leases) {
		relay_tenant_usage(r, tname, NULL, NULL, NULL, &u);
		if (u.grace >= r->o->max_grace_leases)
			reclaim_one(t, tname, idkey, NULL,
				    "the tenant has relay.max_grace_leases leases without a tunnel");
	}
	relay_tenant_limits(r, r->pol, relay_policy_tenant_cfg(r->pol->p, tenant), &tl);
	if (!tl.leases)
		return 0;
	relay_tenant_usage(r, tname, NULL, NULL, NULL, &u);
	if (u.leases < tl.leases || reclaim_one(t, tname, idkey, NULL,
						"the tenant is at its lease limit"))
		return 0;
	relay_refuse_at(r, RELAY_REFUSE_REG_LIMIT, tname, "");
	snprintf(why, sizeof(why), "tenant %s holds %u leases already", tname, tl.leases);
	relay_tunnel_error(t, "too_many_leases", why);
	return -1;
}

struct relay_lease_ext *relay_tunnel_new_lease(struct relay_tunnel *t, const struct tun_ctl_msg *m,
					       int tenant, const char *tname, const char *idkey)
{
	struct relay *r = t->relay;
	const struct relay_policy *p = r->pol->p;
	const struct relay_pool_cfg *pc;
	struct relay_lease_ext *lx;
	struct relay_pool_rt *pr;
	struct relay_lease *l;
	char why[256], app[SR_ESC_SIZE(LOG_APP_MAX)], ctx[RELAY_LEASE_CTX_MAX + SR_ADDRSTRLEN];
	unsigned roles;
	int route, rv;

	if (tunnels_full(t))
		return NULL;
	route = relay_policy_route(p, tenant, m->app, (const struct sockaddr *)&t->addr, why,
				   sizeof(why));
	if (route < 0) {
		relay_refuse_at(r, RELAY_REFUSE_REG_ROUTE, tname, "");
		relay_tunnel_error(t, "no_route", why);
		return NULL;
	}
	pc = relay_policy_pool(p, (size_t)relay_policy_route_pool(p, route));
	pr = relay_pool_find(r, pc->name ? pc->name : "default");
	if (!pr) {
		relay_tunnel_error(t, "internal", "pool not available");
		return NULL;
	}
	if (reg_check_limits(t, tenant, tname, idkey) != 0)
		return NULL;
	lx = calloc(1, sizeof(*lx));
	if (!lx) {
		relay_tunnel_error(t, "internal", "out of memory");
		return NULL;
	}
	roles = m->roles & (TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) |
			    TUN_ROLE_BIT(TUN_PORT_UI));
	rv = relay_lease_create(pr->t, m->app, roles, r->o->lease_grace_s, &l);
	if ((rv == SR_ENOPORTS || rv == SR_EBUSY) &&
	    reclaim_one(t, tname, idkey, pr, "the pool is full"))
		rv = relay_lease_create(pr->t, m->app, roles, r->o->lease_grace_s, &l);
	if (rv != 0) {
		char detail[SR_ESC_SIZE(LOG_APP_MAX) + 256];
		free(lx);
		relay_refuse_at(r, rv == SR_ENOPORTS ? RELAY_REFUSE_NO_PORTS : RELAY_REFUSE_REG_LIMIT,
				tname, pr->name);
		/* Who asked and which pool is out, for the operator only. */
		snprintf(detail, sizeof(detail),
			 "pool %s: ports %u-%u, max_leases %u, leases held %zu; tenant %s, app "
			 "\"%s\"",
			 pr->name, pr->opts.port_min, pr->opts.port_max, pr->opts.max_leases,
			 relay_lease_count(pr->t), tname,
			 sr_esc_n(m->app, LOG_APP_MAX, app, sizeof(app)));
		send_error_detail(t,
				  rv == SR_ENOPORTS ? "no_ports"
				  : rv == SR_EBUSY  ? "too_many_leases"
						    : "internal",
				  sr_strerror(rv), detail);
		return NULL;
	}
	{
		struct tun_group_opts go = {.hold_ms = r->o->resume_hold_s * 1000u};
		char gctx[96];
		snprintf(gctx, sizeof(gctx), "lease=%s", relay_lease_id(l));
		lx->group = tun_group_new(r->base, TUN_ROLE_RELAY, &go, gctx);
	}
	if (!lx->group) {
		free(lx);
		relay_lease_release(l);
		relay_tunnel_error(t, "internal", "out of memory");
		return NULL;
	}
	tun_group_set_lease(lx->group, relay_lease_id(l));
	lx->relay = r;
	lx->lease = l;
	lx->pool = pr;
	lx->pol = r->pol;
	lx->pol->refs++;
	lx->route = route;
	lx->tenant = tenant;
	snprintf(lx->tenant_name, sizeof(lx->tenant_name), "%s", tname);
	snprintf(lx->route_name, sizeof(lx->route_name), "%s", relay_policy_route_name(p, route));
	snprintf(lx->idkey, sizeof(lx->idkey), "%s", idkey);
	memcpy(&lx->src, &t->addr, sizeof(lx->src));
	relay_lease_set_data(l, lx);
	if (relay_tenant_add(r, lx) != 0) {
		relay_release_lease(lx);
		relay_tunnel_error(t, "internal", "out of memory");
		return NULL;
	}
	r->st.leases_granted++;
	SR_INFO(lease_peer_ctx(t, lx, ctx, sizeof(ctx)),
		"lease %s granted to app \"%s\" (tenant %s, route %s, pool %s): driver "
		"port %u, blockManager port %u",
		relay_lease_id(l), sr_esc_n(m->app, LOG_APP_MAX, app, sizeof(app)),
		lx->tenant_name, lx->route_name, pr->name, relay_lease_port(l, TUN_PORT_DRIVER),
		relay_lease_port(l, TUN_PORT_BLOCKMANAGER));
	return lx;
}

static void reg_new_lease(struct relay_tunnel *t, const struct tun_ctl_msg *m, int tenant,
			  const char *tname, const char *idkey)
{
	struct relay_lease_ext *lx = relay_tunnel_new_lease(t, m, tenant, tname, idkey);

	if (lx)
		relay_tunnel_attach(t, lx, 1);
}

static void on_register(struct relay_tunnel *t, const struct tun_ctl_msg *m)
{
	struct relay *r = t->relay;
	char idkey[RELAY_IDKEY_MAX];
	const char *tname;
	int tenant;

	if (m->v != TUN_CTL_VERSION) {
		/* In the sidecar's own version, so that it can read why. */
		struct tun_ctl_msg e;
		memset(&e, 0, sizeof(e));
		e.type = TUN_CTL_ERROR;
		e.v = m->v;
		snprintf(e.code, sizeof(e.code), "version");
		snprintf(e.message, sizeof(e.message),
			 "this relay speaks tunnel protocol v%d and the sidecar v%d: upgrade the "
			 "sidecar to sparkrelay 0.2 or later",
			 TUN_CTL_VERSION, m->v);
		SR_WARN(t->ctx, "registration refused: the sidecar speaks tunnel protocol v%d, "
				"this relay v%d",
			m->v, TUN_CTL_VERSION);
		relay_refuse(r, RELAY_REFUSE_REG_AUTH);
		tun_conn_send_ctl(t->conn, &e);
		tun_conn_close(t->conn, 0);
		return;
	}
	if (t->lx) {
		relay_tunnel_error(t, "already_registered", "this tunnel already holds a lease");
		return;
	}
	if (r->draining) {
		relay_tunnel_error(t, "draining", "relay is shutting down; try another relay");
		return;
	}
	tenant = reg_identify(t, m, idkey, sizeof(idkey));
	if (tenant < 0)
		return;
	tname = relay_policy_tenant_name(r->pol->p, tenant);
	if (r->fleet) {
		/* Whether it grants, resumes or joins, a registration answered
		 * here adds a tunnel to this relay: max_tunnels before etcd. */
		if (!tunnels_full(t))
			relay_fleet_register(r->fleet, t, m, tenant, tname, idkey);
	} else if (m->join[0]) {
		struct relay_lease *l = relay_find_id(r, m->join);
		struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
		relay_tunnel_join(t, lx, relay_join_proven(lx, m->resume), m, tname, idkey);
	} else if (m->resume[0])
		reg_resume(t, m, tname, idkey);
	else
		reg_new_lease(t, m, tenant, tname, idkey);
}

static void tunnel_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct relay_tunnel *t = arg;
	struct tun_ctl_msg reply;

	switch (m->type) {
	case TUN_CTL_REGISTER:
		on_register(t, m);
		break;
	case TUN_CTL_RELEASE:
		if (!t->lx) {
			relay_tunnel_error(t, "no_lease", "nothing to release");
			break;
		}
		SR_INFO(t->ctx, "lease released by the sidecar; closing the tunnel");
		{
			struct relay_lease_ext *lx = t->lx;
			relay_tunnel_unlink_lease(t);
			/* its other tunnels: the sidecar is going, with the lease */
			relay_lease_end_tunnels(lx, NULL, NULL);
			relay_release_lease(lx);
		}
		memset(&reply, 0, sizeof(reply));
		reply.type = TUN_CTL_RELEASED;
		tun_conn_send_ctl(c, &reply);
		/* Only a tunnel with a lease holds a slot: a lease-less tunnel
		 * would be a way to keep max_tunnels full. The answer is
		 * flushed first (bounded), and nothing after it is read. */
		tun_conn_close(c, 0);
		break;
	default:
		SR_WARN(t->ctx, "unexpected control message %s", tun_ctl_type_name(m->type));
		tun_conn_close(c, SR_EPROTO);
		break;
	}
}

static void tunnel_on_rtt(struct tun_conn *c, uint64_t rtt_us, void *arg)
{
	struct relay_tunnel *t = arg;
	relay_hist_add(&t->relay->st.tunnel_rtt, rtt_us);
}

static const struct tun_conn_cbs relay_tun_cbs = {
	.on_ctl = tunnel_on_ctl,
	.on_ctl_sent = tunnel_on_ctl_sent,
	.on_rtt = tunnel_on_rtt,
	.on_confirmed = tunnel_on_confirmed,
	.on_refused = relay_exec_on_refused,
};

static void tunnel_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_tunnel *t = arg;
	struct relay *r = t->relay;

	if (!t->conn) {
		SR_WARN(t->ctx, "TLS handshake failed: no handshake within %u ms",
			r->o->handshake_timeout_ms);
		r->st.handshake_failures++;
		relay_tunnel_free(t);
		return;
	}
	SR_WARN(t->ctx, "register timeout: no registration within %u ms; closing",
		r->o->handshake_timeout_ms);
	/* As the metric's help says: TLS or registration not done in time. */
	r->st.handshake_failures++;
	tun_conn_close(t->conn, SR_ETIMEDOUT);
}

static void tunnel_on_up(struct tun_endpoint *ep, void *arg)
{
	struct relay_tunnel *t = arg;
	const char *sans[TUN_EP_MAX_SANS];

	snprintf(t->identity, sizeof(t->identity), "%s", tun_endpoint_peer_cn(ep));
	t->nsans = tun_endpoint_peer_sans(ep, sans);
	for (size_t i = 0; i < t->nsans; i++)
		snprintf(t->sans[i], sizeof(t->sans[i]), "%s", sans[i]);
	if (t->identity[0]) {
		char cn[SR_ESC_SIZE(64) + 2];
		snprintf(t->ctx, sizeof(t->ctx), "peer=%s cn=%s", t->peer,
			 relay_log_word(t->identity, cn, sizeof(cn)));
	}
	t->conn = tun_endpoint_conn(ep);
	tun_conn_set_logctx(t->conn, t->ctx);
	SR_INFO(t->ctx, "tunnel up (TLS 1.3, h2); waiting for registration");
	t->relay->st.tunnels_accepted++;
}

static void tunnel_on_closed(struct tun_endpoint *ep, int err, const char *why, void *arg)
{
	struct relay_tunnel *t = arg;

	if (!t->conn) {
		SR_WARN(t->ctx, "TLS handshake failed: %s", why);
		t->relay->st.handshake_failures++;
	} else if (why[0]) {
		SR_INFO(t->ctx, "transport: %s", why);
	}
	relay_tunnel_free(t);
}

static const struct tun_endpoint_cbs relay_ep_cbs = {
	.on_up = tunnel_on_up,
	.on_closed = tunnel_on_closed,
};

/* Connections that have not registered (TLS or registration not done, or
 * closing) have their own caps, overall and per source, so that idle or slow
 * connections cannot keep registered sidecars out; max_tunnels counts only
 * tunnels that hold a lease. Refusals are counted and logged rate-limited. */
static int accept_refused(struct relay *r, const struct sockaddr *sa, const char *peer)
{
	uint64_t handshakes = r->st.tunnels_active - r->nregistered, same = 0, more = 0;
	enum relay_refusal why;
	const char *what;

	if (handshakes >= r->o->max_handshakes) {
		why = RELAY_REFUSE_HANDSHAKES;
		what = "relay.max_handshakes connections are not registered yet";
	} else {
		for (struct relay_tunnel *t = r->tunnels; t; t = t->next)
			same += !t->lx && relay_same_source((const struct sockaddr *)&t->addr, sa);
		if (same < r->o->max_handshakes_per_source)
			return 0;
		why = RELAY_REFUSE_SOURCE;
		what = "relay.max_handshakes_per_source connections from this address are not "
		       "registered yet";
	}
	relay_refuse(r, why);
	if (sr_ratelog_allow(&r->rl_accept, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
		SR_WARN("", "peer=%s: tunnel connection refused: %s (%llu more refused since the "
			    "last line)",
			peer, what, (unsigned long long)more);
	return 1;
}

void relay_tunnel_accept(struct evconnlistener *lst, evutil_socket_t fd,
			     struct sockaddr *sa, int salen, void *arg)
{
	struct relay *r = arg;
	struct relay_tunnel *t;
	struct timeval tv;
	SSL *ssl;
	char peer[SR_ADDRSTRLEN];

	sr_format_addr(sa, peer, sizeof(peer));
	if (r->draining) {
		SR_WARN("", "peer=%s: tunnel refused (draining)", peer);
		evutil_closesocket(fd);
		return;
	}
	if (accept_refused(r, sa, peer)) {
		evutil_closesocket(fd);
		return;
	}
	sr_sock_nodelay(fd);
	sr_sock_notsent_lowat(fd, 128 * 1024);
	t = calloc(1, sizeof(*t));
	ssl = SSL_new(r->ssl_ctx);
	if (!t || !ssl)
		goto fail;
	t->relay = r;
	t->started_us = sr_now_us();
	if ((size_t)salen <= sizeof(t->addr))
		memcpy(&t->addr, sa, (size_t)salen);
	snprintf(t->peer, sizeof(t->peer), "%s", peer);
	snprintf(t->ctx, sizeof(t->ctx), "peer=%s", peer);
	t->timer = evtimer_new(r->base, tunnel_timeout_cb, t);
	if (!t->timer)
		goto fail;
	{
		struct tun_conn_opts topts = r->o->tun;
		struct tun_endpoint_opts eo = {
			.role = TUN_ROLE_RELAY,
			.ssl = ssl,
			.conn = &topts,
			.conn_cbs = &relay_tun_cbs,
			.logctx = t->ctx,
		};
		topts.sock_in_max = r->o->max_tunnel_buffer;
		t->ep = tun_endpoint_new(r->base, fd, &eo, &relay_ep_cbs, t);
	}
	ssl = NULL;
	fd = -1; /* both stolen, even on failure */
	if (!t->ep)
		goto fail;
	tv = sr_tv_ms(r->o->handshake_timeout_ms);
	evtimer_add(t->timer, &tv);
	t->next = r->tunnels;
	if (r->tunnels)
		r->tunnels->prev = t;
	r->tunnels = t;
	r->st.tunnels_active++;
	return;
fail:
	SR_ERROR("", "peer=%s: out of memory accepting tunnel", peer);
	if (ssl)
		SSL_free(ssl);
	if (t) {
		if (t->timer)
			event_free(t->timer);
		free(t);
	}
	if (fd >= 0)
		evutil_closesocket(fd);
}
