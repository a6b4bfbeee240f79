/* Read-only views of leases, tunnels, pools and tenants, and revoke, for
 * the admin API. */
#include "relay/relay_view.h"
#include "relay/relay_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <stdlib.h>
#include <string.h>

#define EXPLAIN_FIRST_TRY 4096

const char *relay_lease_ctx(const struct relay_lease_ext *lx, const struct relay_lease *l,
			    char *buf, size_t len)
{
	char app[SR_ESC_SIZE(LOG_APP_MAX)];

	snprintf(buf, len, "lease=%s app=\"%s\" tenant=%s", relay_lease_id(l),
		 sr_esc_n(relay_lease_app(l), LOG_APP_MAX, app, sizeof(app)),
		 lx && lx->tenant_name[0] ? lx->tenant_name : "-");
	return buf;
}

void relay_group_stats_add(struct tun_group_stats *sum, const struct tun_group_stats *g)
{
	sum->aways += g->aways;
	sum->resumes += g->resumes;
	sum->resumed += g->resumed;
	sum->replayed_bytes += g->replayed_bytes;
	for (int i = 0; i < TUN_LOST_MAX; i++)
		sum->lost[i] += g->lost[i];
}

struct lease_visit {
	void (*fn)(const struct relay_lease_view *v, void *arg);
	void *arg;
	const char *pool;
	uint64_t now;
};

static void visit_lease(struct relay_lease *l, void *arg)
{
	struct lease_visit *lv = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);
	struct relay_lease_view v;
	struct tun_ctl_msg m;

	memset(&v, 0, sizeof(v));
	memset(&m, 0, sizeof(m));
	relay_lease_describe(l, &m);
	v.id = relay_lease_id(l);
	v.app = relay_lease_app(l);
	v.host = m.host;
	v.pool = lv->pool;
	v.tenant = lx ? lx->tenant_name : "";
	v.route = lx ? lx->route_name : "";
	for (int i = 0; i < TUN_PORT_MAX; i++)
		v.ports[i] = relay_lease_port(l, (enum tun_port_role)i);
	v.attached = lx && lx->tunnel;
	v.peer = v.attached ? lx->tunnel->peer : "";
	v.npending = lx ? lx->npending : 0;
	v.conns_total = lx ? lx->conns_total : 0;
	v.driver_refused = lx ? lx->driver_refused : 0;
	v.ntunnels = lx ? lx->ntunnels : 0;
	v.conns_active = 0;
	for (const struct relay_tunnel *t = lx ? lx->tunnel : NULL; t; t = t->lnext)
		if (t->conn)
			v.conns_active += tun_conn_nstreams(t->conn);
	v.expires_in_ms = -1;
	if (lx && !lx->tunnel && lx->detached_us) {
		uint64_t ttl_ms = (uint64_t)m.ttl_s * 1000u;
		v.detached_ms = (lv->now - lx->detached_us) / 1000u;
		v.expires_in_ms = v.detached_ms < ttl_ms ? (int64_t)(ttl_ms - v.detached_ms) : 0;
	}
	if (lx && lx->group) {
		tun_group_get_stats(lx->group, &v.resume);
		if (v.resume.away_since_us)
			v.away_ms = (lv->now - v.resume.away_since_us) / 1000u;
	}
	lv->fn(&v, lv->arg);
}

void relay_foreach_lease(struct relay *r, void (*fn)(const struct relay_lease_view *v, void *arg),
			 void *arg)
{
	uint64_t now = sr_now_us();

	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct lease_visit lv = {fn, arg, pr->name, now};
		relay_lease_foreach(pr->t, visit_lease, &lv);
	}
}

void relay_foreach_session(struct relay *r,
			   void (*fn)(const struct relay_session_view *v, void *arg), void *arg)
{
	uint64_t now = sr_now_us();

	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		struct relay_session_view v;
		memset(&v, 0, sizeof(v));
		v.peer = t->peer;
		v.identity = t->identity;
		v.tenant = t->lx ? t->lx->tenant_name : "";
		v.lease = t->lx ? relay_lease_id(t->lx->lease) : "";
		v.app = t->lx ? relay_lease_app(t->lx->lease) : "";
		v.age_ms = (now - t->started_us) / 1000u;
		if (t->conn)
			tun_conn_get_stats(t->conn, &v.st);
		fn(&v, arg);
	}
}

static void count_ports(struct relay_lease *l, void *arg)
{
	uint64_t *used = arg;

	for (int i = 0; i < TUN_PORT_MAX; i++)
		*used += relay_lease_port(l, (enum tun_port_role)i) != 0;
}

void relay_foreach_pool(struct relay *r, void (*fn)(const struct relay_pool_view *v, void *arg),
			void *arg)
{
	/* Each name once: the live table first (its range is the pool's), the
	 * retired tables of that name added to it. */
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct relay_pool_view v;
		const struct relay_pool_rt *live = NULL;
		int seen = 0;

		for (struct relay_pool_rt *q = r->pools; q != pr; q = q->next)
			seen |= strcmp(q->name, pr->name) == 0;
		if (seen)
			continue;
		memset(&v, 0, sizeof(v));
		v.name = pr->name;
		for (struct relay_pool_rt *q = pr; q; q = q->next) {
			if (strcmp(q->name, pr->name) != 0)
				continue;
			if (!q->retired)
				live = q;
			v.leases += relay_lease_count(q->t);
			relay_lease_foreach(q->t, count_ports, &v.ports_used);
		}
		if (live) {
			v.port_min = live->opts.port_min;
			v.port_max = live->opts.port_max;
			v.max_leases = live->opts.max_leases;
			v.ports = live->opts.port_max >= live->opts.port_min
				      ? (uint64_t)live->opts.port_max - live->opts.port_min + 1
				      : 0;
		}
		fn(&v, arg);
	}
}

static void tenant_visit(struct relay *r, const char *name, int configured,
			 const struct relay_tenant_cfg *tc,
			 void (*fn)(const struct relay_tenant_view *v, void *arg), void *arg)
{
	struct relay_tenant_view v;
	struct relay_tenant_limits tl;
	struct relay_tenant_usage u;

	memset(&v, 0, sizeof(v));
	v.name = name;
	v.configured = configured;
	relay_tenant_usage(r, name, NULL, NULL, NULL, &u);
	v.leases = u.leases;
	v.connections = u.conns;
	if (configured) {
		relay_tenant_limits(r, r->pol, tc, &tl);
		v.max_leases = tl.leases;
		v.max_connections = tl.connections;
	}
	fn(&v, arg);
}

void relay_foreach_tenant(struct relay *r,
			  void (*fn)(const struct relay_tenant_view *v, void *arg), void *arg)
{
	const struct relay_policy *p = r->pol->p;

	if (r->pol->implicit_tenants) {
		tenant_visit(r, relay_policy_tenant_name(p, 0), 1, NULL, fn, arg);
	} else {
		for (int i = 0; relay_policy_tenant_cfg(p, i); i++)
			tenant_visit(r, relay_policy_tenant_name(p, i), 1,
				     relay_policy_tenant_cfg(p, i), fn, arg);
	}
	for (struct relay_tenant_acct *a = r->tenants; a; a = a->next) {
		int cur = relay_policy_tenant_find(p, a->name);
		if (cur < 0 && !(r->pol->implicit_tenants &&
				 strcmp(a->name, relay_policy_tenant_name(p, 0)) == 0))
			tenant_visit(r, a->name, 0, NULL, fn, arg);
	}
}

void relay_foreach_refusal(struct relay *r,
			   void (*fn)(const char *tenant, const char *pool, const uint64_t *n,
				      void *arg),
			   void *arg)
{
	for (const struct relay_refusal_key *k = r->refusal_keys; k; k = k->next)
		fn(k->tenant, k->pool, k->n, arg);
}

struct resume_sum {
	struct tun_group_stats *sum;
	uint64_t away;
};

static void sum_resume(const struct relay_lease_view *v, void *arg)
{
	struct resume_sum *rs = arg;

	relay_group_stats_add(rs->sum, &v->resume);
	rs->sum->held += v->resume.held;
	rs->sum->held_bytes += v->resume.held_bytes;
	if (v->resume.away_since_us) {
		rs->away++;
		if (!rs->sum->away_since_us || v->resume.away_since_us < rs->sum->away_since_us)
			rs->sum->away_since_us = v->resume.away_since_us;
	}
}

void relay_get_resume_stats(struct relay *r, struct tun_group_stats *sum, uint64_t *leases_away)
{
	struct resume_sum rs = {sum, 0};

	memset(sum, 0, sizeof(*sum));
	relay_group_stats_add(sum, &r->closed_groups);
	relay_foreach_lease(r, sum_resume, &rs);
	if (leases_away)
		*leases_away = rs.away;
}

int relay_revoke_lease(struct relay *r, const char *id)
{
	struct relay_lease *l = relay_find_id(r, id);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
	char ctx[RELAY_LEASE_CTX_MAX];

	if (!lx)
		return SR_ENOTFOUND;
	if (relay_handover_busy(r))
		return SR_EBUSY; /* frozen: the lease may be the new relay's already */
	SR_INFO(relay_lease_ctx(lx, l, ctx, sizeof(ctx)), "lease revoked by an operator");
	relay_lease_end_tunnels(lx, "revoked", "lease revoked by the relay operator");
	relay_release_lease(lx);
	return 0;
}

/* A string for JSON that cannot fail on invalid UTF-8 (names come from the
 * configuration, which is UTF-8, but the app from a sidecar's request). */
static json_t *jstr_or_null(const char *s)
{
	json_t *v;

	if (!s)
		return json_null();
	v = json_string(s);
	return v ? v : json_string("<invalid utf-8>");
}

json_t *relay_explain_json(const struct relay_policy *p, const struct relay_identity *id,
			   const char *app)
{
	char why[512] = "", *text = malloc(EXPLAIN_FIRST_TRY);
	const char *tenant = NULL, *route = NULL, *pool = NULL;
	int t = -1, rt = -1, n;
	json_t *o = NULL;

	if (!text)
		return NULL;
	n = relay_policy_explain(p, id, app, text, EXPLAIN_FIRST_TRY);
	if (n >= EXPLAIN_FIRST_TRY) {
		char *bigger = realloc(text, (size_t)n + 1);
		if (!bigger)
			goto out;
		text = bigger;
		relay_policy_explain(p, id, app, text, (size_t)n + 1);
	}
	t = relay_policy_tenant(p, id, why, sizeof(why));
	if (t >= 0) {
		tenant = relay_policy_tenant_name(p, t);
		rt = relay_policy_route(p, t, app, id->addr, why, sizeof(why));
	}
	if (rt >= 0) {
		const struct relay_pool_cfg *pc =
		    relay_policy_pool(p, (size_t)relay_policy_route_pool(p, rt));
		route = relay_policy_route_name(p, rt);
		pool = pc && pc->name ? pc->name : "default";
	}
	o = json_object();
	if (!o)
		goto out;
	if (json_object_set_new(o, "allowed", json_boolean(rt >= 0)) ||
	    json_object_set_new(o, "tenant", jstr_or_null(tenant)) ||
	    json_object_set_new(o, "route", jstr_or_null(route)) ||
	    json_object_set_new(o, "pool", jstr_or_null(pool)) ||
	    json_object_set_new(o, "reason", rt >= 0 ? json_null() : jstr_or_null(why)) ||
	    json_object_set_new(o, "explanation", jstr_or_null(text))) {
		json_decref(o);
		o = NULL;
	}
out:
	free(text);
	return o;
}
