/* The relay: TLS listener for sidecars, one tun_conn per sidecar, leases
 * (from pools chosen by the routing policy) whose ports accept executors,
 * and the pending queue that holds executor connections while a lease has
 * no tunnel. */
#include "relay/relay.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "tunnel/tun_tls.h"
#include "tunnel/tun_endpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define MAX_SANS 8

struct relay_tunnel;

/* A compiled policy, kept alive while leases made under it exist: their
 * route and tenant indexes refer to it, and its rules still apply to them if
 * a reload removes their route or tenant. */
struct relay_pol {
	struct relay_policy *p;
	unsigned refs;
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
	struct relay_tunnel *tunnel; /* attached tunnel, NULL while in grace */
	struct relay_pending *pending;
	unsigned npending;
	uint64_t conns_total;
	char identity[160]; /* certificate CN of the creator: only it may resume */
};

struct relay_tunnel {
	struct relay *relay;
	struct relay_tunnel *next, *prev;
	struct tun_endpoint *ep; /* socket, TLS and session */
	struct tun_conn *conn;   /* the endpoint's session, NULL until TLS is up */
	struct relay_lease_ext *lx;
	struct event *timer; /* handshake + register deadline */
	struct sockaddr_storage addr;
	uint64_t started_us;
	char peer[SR_ADDRSTRLEN];
	char identity[160];
	char sans[MAX_SANS][256];
	size_t nsans;
	char ctx[192];
};

struct relay {
	struct event_base *base;
	struct relay_opts *o; /* the caller's struct; relay_reload swaps its content */
	SSL_CTX *ssl_ctx;
	struct evconnlistener *listener;
	struct relay_pol *pol; /* current policy (one reference) */
	struct relay_pool_rt *pools;
	struct relay_tunnel *tunnels;
	struct event *drain_timer;
	struct event *gc_timer;
	uint64_t drain_deadline_us;
	uint64_t next_conn_id;
	uint64_t closed_bytes_in, closed_bytes_out, closed_streams_opened;
	int draining;
	struct relay_stats st;
};

const uint64_t relay_hist_bounds_us[RELAY_HIST_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000,
};

static void hist_add(struct relay_hist *h, uint64_t us)
{
	size_t i = 0;
	while (i < RELAY_HIST_BUCKETS - 1 && us > relay_hist_bounds_us[i])
		i++;
	h->count[i]++;
	h->sum_us += us;
	h->n++;
}

const char *relay_refusal_name(enum relay_refusal r)
{
	static const char *const names[RELAY_REFUSE_MAX] = {
		"cidr", "pending_full", "pending_timeout", "draining", "tenant_limit",
		"stream", "reg_auth", "reg_route", "reg_limit", "reg_resume",
	};
	return (unsigned)r < RELAY_REFUSE_MAX ? names[r] : "unknown";
}

static void refuse(struct relay *r, enum relay_refusal why)
{
	r->st.refused[why]++;
	if (why < RELAY_REFUSE_REG_AUTH)
		r->st.executor_refused++;
}

/* ---- policies and pools ---------------------------------------------------- */

static void pol_unref(struct relay_pol *pol)
{
	if (pol && --pol->refs == 0) {
		relay_policy_free(pol->p);
		free(pol);
	}
}

/* NULL and "" both mean "unset". */
static int str_eq(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

static int pool_opts_eq(const struct relay_pool_opts *a, const struct relay_pool_opts *b)
{
	return str_eq(a->bind_address, b->bind_address) &&
	       str_eq(a->advertise_host, b->advertise_host) && a->port_min == b->port_min &&
	       a->port_max == b->port_max && a->max_leases == b->max_leases &&
	       a->backlog == b->backlog;
}

static void pool_rt_free(struct relay_pool_rt *pr)
{
	relay_lease_table_free(pr->t);
	free(pr->opts.bind_address);
	free(pr->opts.advertise_host);
	free(pr->name);
	free(pr);
}

static void on_executor(struct relay_lease *l, enum tun_port_role role, int fd,
			const struct sockaddr *sa, int salen, void *arg);
static void on_lease_expire(struct relay_lease *l, void *arg);

static struct relay_pool_rt *pool_rt_new(struct relay *r, const struct relay_pool_cfg *pc)
{
	static const struct relay_lease_cbs lcbs = {.on_accept = on_executor,
						    .on_expire = on_lease_expire};
	struct relay_pool_rt *pr = calloc(1, sizeof(*pr));

	if (!pr)
		return NULL;
	pr->opts = pc->pool;
	pr->name = strdup(pc->name ? pc->name : "default");
	pr->opts.bind_address = pc->pool.bind_address ? strdup(pc->pool.bind_address) : NULL;
	pr->opts.advertise_host =
		pc->pool.advertise_host ? strdup(pc->pool.advertise_host) : NULL;
	pr->t = relay_lease_table_new(r->base, &pc->pool, &lcbs, r);
	if (!pr->name || !pr->t || (pc->pool.bind_address && !pr->opts.bind_address) ||
	    (pc->pool.advertise_host && !pr->opts.advertise_host)) {
		pool_rt_free(pr);
		return NULL;
	}
	return pr;
}

static struct relay_pool_rt *pool_find(struct relay *r, const char *name)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		if (!pr->retired && strcmp(pr->name, name) == 0)
			return pr;
	}
	return NULL;
}

/* Make the live pools match policy p: keep unchanged ones, retire changed
 * or removed ones, add new ones. Returns 0 or SR_ENOMEM (nothing changed). */
static int pools_sync(struct relay *r, const struct relay_policy *p)
{
	size_t n = relay_policy_npools(p);
	struct relay_pool_rt *fresh = NULL, **tail = &fresh;

	for (size_t i = 0; i < n; i++) {
		const struct relay_pool_cfg *pc = relay_policy_pool(p, i);
		struct relay_pool_rt *cur = pool_find(r, pc->name ? pc->name : "default");
		if (cur && pool_opts_eq(&cur->opts, &pc->pool))
			continue;
		*tail = pool_rt_new(r, pc);
		if (!*tail) {
			while (fresh) {
				struct relay_pool_rt *x = fresh;
				fresh = x->next;
				pool_rt_free(x);
			}
			return SR_ENOMEM;
		}
		tail = &(*tail)->next;
	}
	/* Retire pools that the new policy changed or dropped. */
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		int keep = 0;
		if (pr->retired)
			continue;
		for (size_t i = 0; i < n && !keep; i++) {
			const struct relay_pool_cfg *pc = relay_policy_pool(p, i);
			keep = strcmp(pr->name, pc->name ? pc->name : "default") == 0 &&
			       pool_opts_eq(&pr->opts, &pc->pool);
		}
		if (!keep) {
			pr->retired = 1;
			SR_INFO("", "pool %s retired: its %zu leases keep their ports until they end",
				pr->name, relay_lease_count(pr->t));
		}
	}
	*tail = r->pools;
	r->pools = fresh;
	return 0;
}

static void gc_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;
	struct relay_pool_rt **pp = &r->pools;

	while (*pp) {
		struct relay_pool_rt *pr = *pp;
		if (pr->retired && relay_lease_count(pr->t) == 0) {
			*pp = pr->next;
			pool_rt_free(pr);
			continue;
		}
		pp = &pr->next;
	}
}

/* ---- executor connections ----------------------------------------------- */

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
	struct relay_pending **pp = &p->owner->pending;
	while (*pp && *pp != p)
		pp = &(*pp)->next;
	if (*pp)
		*pp = p->next;
	p->owner->npending--;
}

static void pending_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_pending *p = arg;
	struct relay *r = p->owner->relay;

	SR_WARN(relay_lease_id(p->owner->lease),
		"conn=%llu peer=%s: closed after waiting %u ms for the tunnel",
		(unsigned long long)p->conn_id, p->peer, r->o->pending_timeout_ms);
	refuse(r, RELAY_REFUSE_PENDING_TIMEOUT);
	pending_unlink(p);
	pending_free(p, 1);
}

static void open_stream(struct relay *r, struct relay_lease_ext *lx, int fd,
			enum tun_port_role role, uint64_t conn_id, const char *peer)
{
	struct bufferevent *bev;
	int rv;

	bev = bufferevent_socket_new(r->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!bev) {
		close(fd);
		refuse(r, RELAY_REFUSE_STREAM);
		return;
	}
	rv = tun_conn_open_stream(lx->tunnel->conn, bev, relay_lease_port(lx->lease, role),
				  relay_lease_id(lx->lease), conn_id, peer);
	if (rv != 0) {
		SR_WARN(lx->tunnel->ctx, "conn=%llu peer=%s: cannot open stream: %s",
			(unsigned long long)conn_id, peer, sr_strerror(rv));
		refuse(r, RELAY_REFUSE_STREAM);
		return;
	}
	lx->conns_total++;
	SR_DEBUG(lx->tunnel->ctx, "conn=%llu peer=%s port=%u: stream opened",
		 (unsigned long long)conn_id, peer, relay_lease_port(lx->lease, role));
}

static void flush_pending(struct relay *r, struct relay_lease_ext *lx)
{
	uint64_t now = sr_now_us();

	while (lx->pending && lx->tunnel) {
		struct relay_pending *p = lx->pending;
		int fd = p->fd;
		lx->pending = p->next;
		lx->npending--;
		p->fd = -1;
		hist_add(&r->st.pending_wait, now - p->since_us);
		open_stream(r, lx, fd, p->role, p->conn_id, p->peer);
		pending_free(p, 0);
	}
}

struct tenant_usage {
	const char *tenant;
	uint64_t conns, leases;
};

static void count_tenant(struct relay_lease *l, void *arg)
{
	struct tenant_usage *u = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	if (!lx || strcmp(lx->tenant_name, u->tenant) != 0)
		return;
	u->leases++;
	u->conns += lx->npending;
	if (lx->tunnel && lx->tunnel->conn)
		u->conns += tun_conn_nstreams(lx->tunnel->conn);
}

static void tenant_usage(struct relay *r, const char *tenant, struct tenant_usage *u)
{
	memset(u, 0, sizeof(*u));
	u->tenant = tenant;
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		relay_lease_foreach(pr->t, count_tenant, u);
}

static void reset_fd(int fd)
{
	sr_sock_set_reset_on_close(fd);
	close(fd);
}

static void on_executor(struct relay_lease *l, enum tun_port_role role, int fd,
			const struct sockaddr *sa, int salen, void *arg)
{
	struct relay *r = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);
	const struct relay_tenant_cfg *tc;
	const struct relay_policy *pol;
	struct relay_pending *p;
	char peer[SR_ADDRSTRLEN];
	uint64_t conn_id = ++r->next_conn_id;
	int cur, route;
	unsigned max_pending = r->o->max_pending;
	struct timeval tv;

	sr_format_addr(sa, peer, sizeof(peer));
	r->st.executor_conns++;
	if (!lx || r->draining) {
		reset_fd(fd);
		refuse(r, RELAY_REFUSE_DRAINING);
		return;
	}
	/* "Changed limits apply to new work": a new executor connection is
	 * judged by the current policy's route and tenant of the same name;
	 * only if a reload removed them do the lease's original rules apply. */
	cur = relay_policy_route_find(r->pol->p, lx->route_name);
	pol = cur >= 0 ? r->pol->p : lx->pol->p;
	route = cur >= 0 ? cur : lx->route;
	cur = relay_policy_tenant_find(r->pol->p, lx->tenant_name);
	tc = cur >= 0 ? relay_policy_tenant_cfg(r->pol->p, cur)
		      : relay_policy_tenant_cfg(lx->pol->p, lx->tenant);
	if (!relay_policy_executor_allowed(pol, route, sa)) {
		SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, address not in route %s's "
					   "executor_cidrs",
			(unsigned long long)conn_id, peer, lx->route_name);
		reset_fd(fd);
		refuse(r, RELAY_REFUSE_CIDR);
		return;
	}
	if (tc && tc->max_connections) {
		struct tenant_usage u;
		tenant_usage(r, lx->tenant_name, &u);
		if (u.conns >= tc->max_connections) {
			SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, tenant %s is at its "
						   "limit of %u connections",
				(unsigned long long)conn_id, peer, lx->tenant_name,
				tc->max_connections);
			reset_fd(fd);
			refuse(r, RELAY_REFUSE_TENANT_LIMIT);
			return;
		}
	}
	/* A tunnel that is closing (or got GOAWAY) takes no new streams: the
	 * executor waits for the sidecar's next tunnel like during grace. */
	if (lx->tunnel && lx->tunnel->conn && tun_conn_is_open(lx->tunnel->conn)) {
		open_stream(r, lx, fd, role, conn_id, peer);
		return;
	}
	if (tc && tc->max_pending)
		max_pending = tc->max_pending;
	if (lx->npending >= max_pending) {
		SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, %u connections already "
					   "wait for the tunnel",
			(unsigned long long)conn_id, peer, lx->npending);
		reset_fd(fd);
		refuse(r, RELAY_REFUSE_PENDING_FULL);
		return;
	}
	p = calloc(1, sizeof(*p));
	if (!p || !(p->timer = evtimer_new(r->base, pending_timeout_cb, p))) {
		free(p);
		close(fd);
		refuse(r, RELAY_REFUSE_STREAM);
		return;
	}
	p->owner = lx;
	p->fd = fd;
	p->role = role;
	p->conn_id = conn_id;
	p->since_us = sr_now_us();
	snprintf(p->peer, sizeof(p->peer), "%s", peer);
	tv.tv_sec = r->o->pending_timeout_ms / 1000;
	tv.tv_usec = (r->o->pending_timeout_ms % 1000) * 1000;
	evtimer_add(p->timer, &tv);
	p->next = lx->pending;
	lx->pending = p;
	lx->npending++;
	SR_INFO(relay_lease_id(l), "conn=%llu peer=%s: waiting for the tunnel (up to %u ms)",
		(unsigned long long)conn_id, peer, r->o->pending_timeout_ms);
}

static void lease_ext_free(struct relay_lease_ext *lx)
{
	while (lx->pending) {
		struct relay_pending *p = lx->pending;
		lx->pending = p->next;
		pending_free(p, 1);
	}
	pol_unref(lx->pol);
	free(lx);
}

static void on_lease_expire(struct relay_lease *l, void *arg)
{
	struct relay *r = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	SR_INFO(relay_lease_id(l), "lease expired: no tunnel for %u s; ports closed",
		r->o->lease_grace_s);
	r->st.leases_expired++;
	relay_lease_set_data(l, NULL);
	if (lx)
		lease_ext_free(lx);
}

static void release_lease(struct relay_lease_ext *lx)
{
	struct relay_lease *l = lx->lease;
	relay_lease_set_data(l, NULL);
	lease_ext_free(lx);
	relay_lease_release(l);
}

/* ---- tunnels --------------------------------------------------------------- */

static void tunnel_free(struct relay_tunnel *t)
{
	struct relay *r = t->relay;

	if (t->prev)
		t->prev->next = t->next;
	else if (r->tunnels == t)
		r->tunnels = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->lx) {
		t->lx->tunnel = NULL;
		relay_lease_detach(t->lx->lease);
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
	}
	tun_endpoint_free(t->ep);
	if (t->timer)
		event_free(t->timer);
	r->st.tunnels_active--;
	free(t);
}

static void send_error(struct relay_tunnel *t, const char *code, const char *text)
{
	struct tun_ctl_msg m;

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_ERROR;
	snprintf(m.code, sizeof(m.code), "%s", code);
	snprintf(m.message, sizeof(m.message), "%s", text);
	SR_WARN(t->ctx, "registration refused: %s (%s)", code, text);
	tun_conn_send_ctl(t->conn, &m);
	tun_conn_close(t->conn, 0);
}

static void attach(struct relay_tunnel *t, struct relay_lease_ext *lx)
{
	struct relay *r = t->relay;
	struct tun_ctl_msg m;

	if (lx->tunnel && lx->tunnel != t) {
		/* The sidecar came back before we noticed its old tunnel died. */
		struct relay_tunnel *old = lx->tunnel;
		SR_INFO(old->ctx, "replaced by a new tunnel from %s", t->peer);
		old->lx = NULL;
		lx->tunnel = NULL;
		tun_conn_close(old->conn, SR_ECLOSED);
	}
	lx->tunnel = t;
	t->lx = lx;
	relay_lease_attach(lx->lease, t);
	evtimer_del(t->timer);
	snprintf(t->ctx, sizeof(t->ctx), "lease=%s app=%s tenant=%s peer=%s",
		 relay_lease_id(lx->lease), relay_lease_app(lx->lease), lx->tenant_name, t->peer);
	tun_conn_set_logctx(t->conn, t->ctx);
	memset(&m, 0, sizeof(m));
	relay_lease_describe(lx->lease, &m);
	tun_conn_send_ctl(t->conn, &m);
	flush_pending(r, lx);
}

static struct relay_lease *find_resume(struct relay *r, const char *token)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct relay_lease *l = relay_lease_find_resume(pr->t, token);
		if (l)
			return l;
	}
	return NULL;
}

static struct relay_lease *find_id(struct relay *r, const char *id)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct relay_lease *l = relay_lease_find_id(pr->t, id);
		if (l)
			return l;
	}
	return NULL;
}

static void on_register(struct relay_tunnel *t, const struct tun_ctl_msg *m)
{
	struct relay *r = t->relay;
	const struct relay_policy *p = r->pol->p;
	const struct relay_tenant_cfg *tc;
	const char *sans[MAX_SANS];
	struct relay_identity id;
	struct relay_lease_ext *lx;
	struct relay_pool_rt *pr;
	struct relay_lease *l;
	char why[256];
	int tenant, route, rv;

	if (t->lx) {
		send_error(t, "already_registered", "this tunnel already holds a lease");
		return;
	}
	if (r->draining) {
		send_error(t, "draining", "relay is shutting down; try another relay");
		return;
	}
	if (r->o->auth_token && !sr_secret_eq(m->token, r->o->auth_token)) {
		refuse(r, RELAY_REFUSE_REG_AUTH);
		send_error(t, "unauthorized", "missing or wrong token");
		return;
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
		refuse(r, RELAY_REFUSE_REG_AUTH);
		send_error(t, "unauthorized", why);
		return;
	}
	if (m->resume[0]) {
		l = find_resume(r, m->resume);
		lx = l ? relay_lease_data(l) : NULL;
		if (!lx || strcmp(lx->identity, t->identity) != 0 ||
		    strcmp(lx->tenant_name, relay_policy_tenant_name(p, tenant)) != 0) {
			/* Same answer for "no such lease" and "not yours": a resume
			 * token must not reveal whether it exists. */
			refuse(r, RELAY_REFUSE_REG_RESUME);
			send_error(t, "unknown_lease", "no lease for this resume token");
			return;
		}
		SR_INFO(t->ctx, "resuming lease %s", relay_lease_id(l));
		r->st.leases_resumed++;
		attach(t, lx);
		return;
	}
	route = relay_policy_route(p, tenant, m->app, (const struct sockaddr *)&t->addr, why,
				   sizeof(why));
	if (route < 0) {
		refuse(r, RELAY_REFUSE_REG_ROUTE);
		send_error(t, "no_route", why);
		return;
	}
	tc = relay_policy_tenant_cfg(p, tenant);
	if (tc && tc->max_leases) {
		struct tenant_usage u;
		tenant_usage(r, relay_policy_tenant_name(p, tenant), &u);
		if (u.leases >= tc->max_leases) {
			refuse(r, RELAY_REFUSE_REG_LIMIT);
			snprintf(why, sizeof(why), "tenant %s holds %u leases already",
				 relay_policy_tenant_name(p, tenant), tc->max_leases);
			send_error(t, "too_many_leases", why);
			return;
		}
	}
	{
		const struct relay_pool_cfg *pc =
			relay_policy_pool(p, (size_t)relay_policy_route_pool(p, route));
		pr = pool_find(r, pc->name ? pc->name : "default");
	}
	lx = calloc(1, sizeof(*lx));
	if (!pr || !lx) {
		free(lx);
		send_error(t, "internal", pr ? "out of memory" : "pool not available");
		return;
	}
	rv = relay_lease_create(pr->t, m->app,
				m->roles & (TUN_ROLE_BIT(TUN_PORT_DRIVER) |
					    TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) |
					    TUN_ROLE_BIT(TUN_PORT_UI)),
				r->o->lease_grace_s, &l);
	if (rv != 0) {
		free(lx);
		refuse(r, RELAY_REFUSE_REG_LIMIT);
		send_error(t,
			   rv == SR_ENOPORTS ? "no_ports"
			   : rv == SR_EBUSY  ? "too_many_leases"
					     : "internal",
			   sr_strerror(rv));
		return;
	}
	lx->relay = r;
	lx->lease = l;
	lx->pool = pr;
	lx->pol = r->pol;
	lx->pol->refs++;
	lx->route = route;
	lx->tenant = tenant;
	snprintf(lx->tenant_name, sizeof(lx->tenant_name), "%s",
		 relay_policy_tenant_name(p, tenant));
	snprintf(lx->route_name, sizeof(lx->route_name), "%s", relay_policy_route_name(p, route));
	snprintf(lx->identity, sizeof(lx->identity), "%s", t->identity);
	relay_lease_set_data(l, lx);
	r->st.leases_granted++;
	SR_INFO(t->ctx, "lease %s granted to app \"%s\" (tenant %s, route %s, pool %s): driver "
			"port %u, blockManager port %u",
		relay_lease_id(l), m->app, lx->tenant_name, lx->route_name, pr->name,
		relay_lease_port(l, TUN_PORT_DRIVER), relay_lease_port(l, TUN_PORT_BLOCKMANAGER));
	attach(t, lx);
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
			send_error(t, "no_lease", "nothing to release");
			break;
		}
		SR_INFO(t->ctx, "lease released by the sidecar");
		{
			struct relay_lease_ext *lx = t->lx;
			t->lx = NULL;
			lx->tunnel = NULL;
			release_lease(lx);
		}
		memset(&reply, 0, sizeof(reply));
		reply.type = TUN_CTL_RELEASED;
		tun_conn_send_ctl(c, &reply);
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
	hist_add(&t->relay->st.tunnel_rtt, rtt_us);
}

static const struct tun_conn_cbs relay_tun_cbs = {
	.on_ctl = tunnel_on_ctl,
	.on_rtt = tunnel_on_rtt,
};

static void tunnel_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_tunnel *t = arg;
	struct relay *r = t->relay;

	if (!t->conn) {
		SR_WARN(t->ctx, "TLS handshake failed: no handshake within %u ms",
			r->o->handshake_timeout_ms);
		r->st.handshake_failures++;
		tunnel_free(t);
		return;
	}
	SR_WARN(t->ctx, "register timeout: no registration within %u ms; closing",
		r->o->handshake_timeout_ms);
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
	if (t->identity[0])
		snprintf(t->ctx, sizeof(t->ctx), "peer=%s cn=%s", t->peer, t->identity);
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
	tunnel_free(t);
}

static const struct tun_endpoint_cbs relay_ep_cbs = {
	.on_up = tunnel_on_up,
	.on_closed = tunnel_on_closed,
};

static void on_tunnel_accept(struct evconnlistener *lst, evutil_socket_t fd,
			     struct sockaddr *sa, int salen, void *arg)
{
	struct relay *r = arg;
	struct relay_tunnel *t;
	struct timeval tv;
	SSL *ssl;
	char peer[SR_ADDRSTRLEN];

	sr_format_addr(sa, peer, sizeof(peer));
	if (r->draining || r->st.tunnels_active >= r->o->max_tunnels) {
		SR_WARN("", "peer=%s: tunnel refused (%s)", peer,
			r->draining ? "draining" : "max_tunnels reached");
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
		struct tun_endpoint_opts eo = {
			.role = TUN_ROLE_RELAY,
			.ssl = ssl,
			.conn = &r->o->tun,
			.conn_cbs = &relay_tun_cbs,
			.logctx = t->ctx,
		};
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

static void listener_error_cb(struct evconnlistener *lst, void *arg)
{
	SR_ERROR("", "tunnel listener: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* ---- drain ------------------------------------------------------------------ */

static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;
	size_t streams = 0;

	for (struct relay_tunnel *t = r->tunnels; t; t = t->next)
		streams += t->conn ? tun_conn_nstreams(t->conn) : 0;
	if (streams == 0) {
		SR_INFO("", "drained: no open streams; exiting");
		event_base_loopbreak(r->base);
		return;
	}
	if (sr_now_us() >= r->drain_deadline_us) {
		SR_WARN("", "drain timeout: %zu streams still open are reset", streams);
		event_base_loopbreak(r->base);
	}
}

void relay_drain(struct relay *r)
{
	struct timeval tv = {0, 100000};
	struct tun_ctl_msg m;

	if (r->draining)
		return;
	r->draining = 1;
	r->drain_deadline_us = sr_now_us() + (uint64_t)r->o->drain_timeout_ms * 1000u;
	SR_INFO("", "draining: no new tunnels, leases or executor connections; open streams "
		    "have %u ms to finish",
		r->o->drain_timeout_ms);
	evconnlistener_disable(r->listener);
	/* Lease ports keep accepting so that on_executor resets each new
	 * connection at once; a disabled listener would leave executors
	 * hanging in the kernel's backlog until the relay exits. */
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_DRAIN;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		if (!t->conn)
			continue;
		tun_conn_send_ctl(t->conn, &m);
		tun_conn_goaway(t->conn);
	}
	event_add(r->drain_timer, &tv);
	drain_check_cb(-1, 0, r);
}

/* ---- admin views ----------------------------------------------------------- */

struct lease_visit {
	void (*fn)(const struct relay_lease_view *v, void *arg);
	void *arg;
	const char *pool;
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
	v.conns_active = v.attached && lx->tunnel->conn ? tun_conn_nstreams(lx->tunnel->conn) : 0;
	lv->fn(&v, lv->arg);
}

void relay_foreach_lease(struct relay *r, void (*fn)(const struct relay_lease_view *v, void *arg),
			 void *arg)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct lease_visit lv = {fn, arg, pr->name};
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
		v.age_ms = (now - t->started_us) / 1000u;
		if (t->conn)
			tun_conn_get_stats(t->conn, &v.st);
		fn(&v, arg);
	}
}

int relay_revoke_lease(struct relay *r, const char *id)
{
	struct relay_lease *l = find_id(r, id);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;

	if (!lx)
		return SR_ENOTFOUND;
	SR_INFO(relay_lease_id(l), "lease revoked by an operator");
	if (lx->tunnel) {
		struct relay_tunnel *t = lx->tunnel;
		struct tun_ctl_msg m;
		t->lx = NULL;
		lx->tunnel = NULL;
		memset(&m, 0, sizeof(m));
		m.type = TUN_CTL_ERROR;
		snprintf(m.code, sizeof(m.code), "revoked");
		snprintf(m.message, sizeof(m.message), "lease revoked by the relay operator");
		tun_conn_send_ctl(t->conn, &m);
		tun_conn_close(t->conn, 0);
	}
	release_lease(lx);
	return 0;
}

/* ---- lifecycle --------------------------------------------------------------- */

struct relay *relay_new(struct event_base *base, const struct relay_opts *o, char *err,
			size_t errlen)
{
	struct relay *r = calloc(1, sizeof(*r));
	struct sockaddr_storage ss;
	socklen_t sslen;
	char host[256];
	uint16_t port;
	struct timeval gc = {1, 0};

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->base = base;
	/* Borrowed; relay_reload() replaces its content in place. */
	r->o = (struct relay_opts *)o;
	if (!o->listen || sr_split_hostport(o->listen, host, sizeof(host), &port, 8443) != 0 ||
	    sr_parse_addr(host, port, &ss, &sslen) != 0) {
		snprintf(err, errlen, "listen address \"%s\" must be a numeric host:port",
			 o->listen ? o->listen : "");
		goto fail;
	}
	r->ssl_ctx = tun_tls_server_ctx(o->cert_file, o->key_file, o->client_ca_file,
					o->require_client_cert, err, errlen);
	if (!r->ssl_ctx)
		goto fail;
	r->pol = calloc(1, sizeof(*r->pol));
	if (!r->pol) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	r->pol->refs = 1;
	r->pol->p = relay_policy_new(&o->policy, &o->pool, err, errlen);
	if (!r->pol->p)
		goto fail;
	if (pools_sync(r, r->pol->p) != 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	r->drain_timer = event_new(base, -1, EV_PERSIST, drain_check_cb, r);
	r->gc_timer = event_new(base, -1, EV_PERSIST, gc_cb, r);
	if (!r->drain_timer || !r->gc_timer) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	event_add(r->gc_timer, &gc);
	r->listener = evconnlistener_new_bind(base, on_tunnel_accept, r,
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						      LEV_OPT_CLOSE_ON_EXEC,
					      1024, (struct sockaddr *)&ss, (int)sslen);
	if (!r->listener) {
		snprintf(err, errlen, "cannot listen on %s: %s", o->listen, strerror(errno));
		goto fail;
	}
	evconnlistener_set_error_cb(r->listener, listener_error_cb);
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		SR_INFO("", "pool %s: executor ports %u-%u on %s, advertised as %s", pr->name,
			pr->opts.port_min, pr->opts.port_max,
			pr->opts.bind_address ? pr->opts.bind_address : "0.0.0.0",
			pr->opts.advertise_host ? pr->opts.advertise_host
						: (pr->opts.bind_address ? pr->opts.bind_address
									 : "0.0.0.0"));
	SR_INFO("", "listening for sidecars on %s", o->listen);
	r->st.ready = 1;
	return r;
fail:
	relay_free(r);
	return NULL;
}

static void lease_drop(struct relay_lease *l, void *arg)
{
	struct relay_lease_ext *lx = relay_lease_data(l);
	if (lx) {
		relay_lease_set_data(l, NULL);
		lease_ext_free(lx);
	}
}

void relay_free(struct relay *r)
{
	if (!r)
		return;
	while (r->tunnels) {
		struct relay_tunnel *t = r->tunnels;
		if (t->lx) {
			t->lx->tunnel = NULL;
			t->lx = NULL;
		}
		tunnel_free(t);
	}
	while (r->pools) {
		struct relay_pool_rt *pr = r->pools;
		r->pools = pr->next;
		relay_lease_foreach(pr->t, lease_drop, NULL);
		pool_rt_free(pr);
	}
	pol_unref(r->pol);
	if (r->listener)
		evconnlistener_free(r->listener);
	if (r->drain_timer)
		event_free(r->drain_timer);
	if (r->gc_timer)
		event_free(r->gc_timer);
	SSL_CTX_free(r->ssl_ctx);
	free(r);
}

int relay_reload(struct relay *r, struct relay_opts *o, char *err, size_t errlen)
{
	struct relay_pol *np;
	struct relay_opts tmp;

	np = calloc(1, sizeof(*np));
	if (!np) {
		snprintf(err, errlen, "out of memory");
		r->st.reloads_failed++;
		return SR_ENOMEM;
	}
	np->refs = 1;
	np->p = relay_policy_new(&o->policy, &o->pool, err, errlen);
	if (!np->p) {
		free(np);
		r->st.reloads_failed++;
		return SR_EINVAL;
	}
	if (pools_sync(r, np->p) != 0) {
		snprintf(err, errlen, "out of memory");
		pol_unref(np);
		r->st.reloads_failed++;
		return SR_ENOMEM;
	}
	if (!str_eq(o->listen, r->o->listen) || !str_eq(o->cert_file, r->o->cert_file) ||
	    !str_eq(o->key_file, r->o->key_file) ||
	    !str_eq(o->client_ca_file, r->o->client_ca_file) ||
	    o->require_client_cert != r->o->require_client_cert ||
	    !str_eq(o->admin_listen, r->o->admin_listen))
		SR_WARN("", "reload: listen address, TLS and admin settings take effect at the "
			    "next restart");
	pol_unref(r->pol);
	r->pol = np;
	tmp = *r->o;
	*r->o = *o;
	*o = tmp;
	r->st.reloads_ok++;
	SR_INFO("", "configuration reloaded: %zu pools; live tunnels and streams untouched",
		relay_policy_npools(np->p));
	return 0;
}

void relay_count_reload_failure(struct relay *r)
{
	r->st.reloads_failed++;
}

const struct relay_opts *relay_get_opts(const struct relay *r)
{
	return r->o;
}

const struct relay_policy *relay_get_policy(const struct relay *r)
{
	return r->pol->p;
}

uint16_t relay_listen_port(const struct relay *r)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(evconnlistener_get_fd(r->listener), (struct sockaddr *)&ss, &len) != 0)
		return 0;
	return sr_addr_port((struct sockaddr *)&ss);
}

void relay_get_stats(const struct relay *r, struct relay_stats *st)
{
	*st = r->st;
	st->leases_active = 0;
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		st->leases_active += relay_lease_count(pr->t);
	st->streams_active = 0;
	st->bytes_to_sidecar = r->closed_bytes_in;
	st->bytes_to_executor = r->closed_bytes_out;
	st->streams_opened = r->closed_streams_opened;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		struct tun_conn_stats ts;
		if (!t->conn)
			continue;
		tun_conn_get_stats(t->conn, &ts);
		st->streams_active += ts.streams_active;
		st->bytes_to_sidecar += ts.bytes_to_tunnel;
		st->bytes_to_executor += ts.bytes_from_tunnel;
		st->streams_opened += ts.streams_opened;
	}
	st->draining = r->draining;
	st->ready = r->st.ready && !r->draining;
}
