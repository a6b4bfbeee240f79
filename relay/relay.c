/* The relay: TLS listener for sidecars, one tun_conn per sidecar, leases
 * (from pools chosen by the routing policy) whose ports accept executors,
 * and the pending queue that holds executor connections while a lease has
 * no tunnel. */
#include "relay/relay.h"
#include "relay/relay_limits.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
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

#define MAX_SANS TUN_EP_MAX_SANS
/* The tunnel listener stops this long after accept() fails (EMFILE...). */
#define ACCEPT_PAUSE_MS 500
/* Refusals under a flood: at most one log line per kind this often. */
#define REFUSAL_LOG_PERIOD_US (10u * 1000000u)
/* App names in log lines: escaped, and cut to this many input bytes. */
#define LOG_APP_MAX 64

struct relay_tunnel;

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
	uint64_t detached_us;  /* when the tunnel went (in grace), 0 while attached */
	struct relay_ratelog rl_refused; /* executors over max_lease_connections */
	/* Who created it (relay_identity_key): only that identity may resume. */
	char idkey[RELAY_IDKEY_MAX];
	struct sockaddr_storage src; /* the creator's address, for reclaim order */
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
	char ctx[320];
};

struct relay {
	struct event_base *base;
	struct relay_opts *o; /* the caller's struct; relay_reload swaps its content */
	SSL_CTX *ssl_ctx;
	struct evconnlistener *listener;
	struct relay_pol *pol; /* current policy (one reference) */
	struct relay_pool_rt *pools;
	struct relay_tunnel *tunnels;
	unsigned nregistered; /* tunnels holding a lease (t->lx set) */
	struct event *accept_pause; /* re-enables the listener after EMFILE */
	struct relay_ratelog rl_accept; /* tunnel connections refused at accept */
	struct relay_ratelog rl_accept_err; /* accept() failures */
	struct event *drain_timer;
	struct event *gc_timer;
	uint64_t drain_deadline_us;
	uint64_t next_conn_id;
	uint64_t closed_bytes_in, closed_bytes_out, closed_streams_opened, closed_throttled;
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
		"handshake_limit", "handshake_source_limit", "tunnel_limit",
		"lease_connection_limit",
	};
	return (unsigned)r < RELAY_REFUSE_MAX ? names[r] : "unknown";
}

/* A peer's name (certificate CN) as one word of a log context: escaped, and
 * quoted when it holds a space or '=' that could pass for another field. */
static const char *log_word(const char *s, char *buf, size_t len)
{
	char esc[SR_ESC_SIZE(64)];

	sr_esc_n(s, 64, esc, sizeof(esc));
	if (!esc[0] || strpbrk(esc, " ="))
		snprintf(buf, len, "\"%s\"", esc);
	else
		snprintf(buf, len, "%s", esc);
	return buf;
}

static void refuse(struct relay *r, enum relay_refusal why)
{
	r->st.refused[why]++;
	if (why < RELAY_REFUSE_REG_AUTH || why == RELAY_REFUSE_LEASE_CONNS)
		r->st.executor_refused++;
}

/* The limits that apply to a tenant of policy pol (tc may be NULL). */
struct tenant_limits {
	uint32_t leases, connections, pending;
};

static void tenant_limits(const struct relay *r, const struct relay_pol *pol,
			  const struct relay_tenant_cfg *tc, struct tenant_limits *tl)
{
	memset(tl, 0, sizeof(*tl));
	if (pol->implicit_tenants) {
		tl->leases = r->o->default_tenant.leases;
		tl->connections = r->o->default_tenant.connections;
		tl->pending = r->o->default_tenant.pending;
	} else if (tc) {
		tl->leases = tc->max_leases;
		tl->connections = tc->max_connections;
		tl->pending = tc->max_pending;
	}
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

/* Executor connections a lease holds: carried now, or waiting for a tunnel. */
static uint64_t lease_conns(const struct relay_lease_ext *lx)
{
	uint64_t n = lx->npending;

	if (lx->tunnel && lx->tunnel->conn)
		n += tun_conn_nstreams(lx->tunnel->conn);
	return n;
}

struct tenant_usage {
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

static void count_tenant(struct relay_lease *l, void *arg)
{
	struct tenant_usage *u = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	if (!lx || strcmp(lx->tenant_name, u->tenant) != 0)
		return;
	u->leases++;
	u->conns += lease_conns(lx);
	if (lx->tunnel)
		return;
	u->grace++;
	if (u->pool && lx->pool != u->pool)
		return;
	if (!u->oldest || lx->detached_us < u->oldest->detached_us)
		u->oldest = lx;
	if (u->idkey && strcmp(lx->idkey, u->idkey) == 0 &&
	    relay_same_source((const struct sockaddr *)&lx->src, u->src) &&
	    (!u->oldest_mine || lx->detached_us < u->oldest_mine->detached_us))
		u->oldest_mine = lx;
}

/* What tenant holds. idkey, src and pool (all may be NULL) choose the reclaim
 * candidates: see reclaim_one. */
static void tenant_usage(struct relay *r, const char *tenant, const char *idkey,
			 const struct sockaddr *src, const struct relay_pool_rt *pool,
			 struct tenant_usage *u)
{
	memset(u, 0, sizeof(*u));
	u->tenant = tenant;
	u->idkey = idkey;
	u->src = src;
	u->pool = pool;
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
	const struct relay_pol *tpol;
	const struct relay_policy *pol;
	struct tenant_limits tl;
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
	tpol = cur >= 0 ? r->pol : lx->pol;
	tenant_limits(r, tpol, relay_policy_tenant_cfg(tpol->p, cur >= 0 ? cur : lx->tenant),
		      &tl);
	if (!relay_policy_executor_allowed(pol, route, sa)) {
		SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, address not in route %s's "
					   "executor_cidrs",
			(unsigned long long)conn_id, peer, lx->route_name);
		reset_fd(fd);
		refuse(r, RELAY_REFUSE_CIDR);
		return;
	}
	if (r->o->max_lease_connections &&
	    lease_conns(lx) >= (uint64_t)r->o->max_lease_connections) {
		uint64_t more = 0;
		if (relay_ratelog_allow(&lx->rl_refused, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
			SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, the lease is at its "
						   "limit of %u connections (relay.max_lease_"
						   "connections; %llu more refused since the last "
						   "line)",
				(unsigned long long)conn_id, peer, r->o->max_lease_connections,
				(unsigned long long)more);
		reset_fd(fd);
		refuse(r, RELAY_REFUSE_LEASE_CONNS);
		return;
	}
	if (tl.connections) {
		struct tenant_usage u;
		tenant_usage(r, lx->tenant_name, NULL, NULL, NULL, &u);
		if (u.conns >= tl.connections) {
			SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, tenant %s is at its "
						   "limit of %u connections",
				(unsigned long long)conn_id, peer, lx->tenant_name,
				tl.connections);
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
	if (tl.pending)
		max_pending = tl.pending;
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

/* The tunnel stops holding its lease; the caller decides what becomes of the
 * lease (grace, release). */
static void tunnel_unlink_lease(struct relay_tunnel *t)
{
	if (!t->lx)
		return;
	t->lx->tunnel = NULL;
	t->lx = NULL;
	t->relay->nregistered--;
}

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
		struct relay_lease_ext *lx = t->lx;
		tunnel_unlink_lease(t);
		lx->detached_us = sr_now_us();
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

static void send_error(struct relay_tunnel *t, const char *code, const char *text)
{
	struct tun_ctl_msg m;
	char esc[SR_ESC_SIZE(TUN_CTL_TEXT_MAX)];

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_ERROR;
	snprintf(m.code, sizeof(m.code), "%s", code);
	snprintf(m.message, sizeof(m.message), "%s", text);
	/* text may quote what the sidecar sent (its app name, say). */
	SR_WARN(t->ctx, "registration refused: %s (%s)", code, sr_esc(text, esc, sizeof(esc)));
	tun_conn_send_ctl(t->conn, &m);
	tun_conn_close(t->conn, 0);
}

static void attach(struct relay_tunnel *t, struct relay_lease_ext *lx)
{
	struct relay *r = t->relay;
	struct tun_ctl_msg m;
	char app[SR_ESC_SIZE(LOG_APP_MAX)];

	if (lx->tunnel && lx->tunnel != t) {
		/* Either the sidecar came back before we noticed its old tunnel
		 * died, or someone else holds the resume token: say both. */
		struct relay_tunnel *old = lx->tunnel;
		char cn[SR_ESC_SIZE(64) + 2], oldcn[SR_ESC_SIZE(64) + 2];
		SR_WARN(old->ctx, "replaced by a new tunnel from peer=%s cn=%s that resumed the "
				  "lease while this one (peer=%s cn=%s) was still attached; "
				  "closing this one",
			t->peer, log_word(t->identity, cn, sizeof(cn)), old->peer,
			log_word(old->identity, oldcn, sizeof(oldcn)));
		tunnel_unlink_lease(old);
		tun_conn_close(old->conn, SR_ECLOSED);
	}
	lx->tunnel = t;
	lx->detached_us = 0;
	t->lx = lx;
	r->nregistered++;
	relay_lease_attach(lx->lease, t);
	evtimer_del(t->timer);
	snprintf(t->ctx, sizeof(t->ctx), "lease=%s app=\"%s\" tenant=%s peer=%s",
		 relay_lease_id(lx->lease),
		 sr_esc_n(relay_lease_app(lx->lease), LOG_APP_MAX, app, sizeof(app)),
		 lx->tenant_name, t->peer);
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
	struct tenant_usage u;

	tenant_usage(r, tenant, idkey, (const struct sockaddr *)&t->addr, pool, &u);
	victim = u.oldest_mine ? u.oldest_mine : u.oldest;
	if (!victim)
		return 0;
	SR_WARN(t->ctx, "lease %s of tenant %s reclaimed after %llu s without a tunnel (%s): "
			"its sidecar must register again",
		relay_lease_id(victim->lease), tenant,
		(unsigned long long)((sr_now_us() - victim->detached_us) / 1000000u), why);
	r->st.leases_reclaimed++;
	release_lease(victim);
	return 1;
}

static void on_register(struct relay_tunnel *t, const struct tun_ctl_msg *m)
{
	struct relay *r = t->relay;
	const struct relay_policy *p = r->pol->p;
	const char *sans[MAX_SANS];
	const char *tname;
	struct relay_identity id;
	struct relay_lease_ext *lx;
	struct relay_pool_rt *pr;
	struct relay_lease *l;
	struct tenant_limits tl;
	struct tenant_usage u;
	char why[256], idkey[RELAY_IDKEY_MAX], app[SR_ESC_SIZE(LOG_APP_MAX)];
	unsigned roles;
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
	tname = relay_policy_tenant_name(p, tenant);
	if (relay_identity_key(t->identity, m->token, tname, idkey, sizeof(idkey)) != 0) {
		send_error(t, "internal", "cannot derive the sidecar's identity");
		return;
	}
	if (m->resume[0]) {
		l = find_resume(r, m->resume);
		lx = l ? relay_lease_data(l) : NULL;
		if (!lx || strcmp(lx->idkey, idkey) != 0 || strcmp(lx->tenant_name, tname) != 0) {
			/* Same answer for "no such lease" and "not yours": a resume
			 * token must not reveal whether it exists. */
			refuse(r, RELAY_REFUSE_REG_RESUME);
			send_error(t, "unknown_lease", "no lease for this resume token");
			return;
		}
		if (!lx->tunnel && r->nregistered >= r->o->max_tunnels) {
			refuse(r, RELAY_REFUSE_TUNNELS);
			send_error(t, "too_many_tunnels", "the relay carries its max_tunnels already");
			return;
		}
		/* A resume token is good for one resume: the lease message that
		 * attach() sends carries the next one, so a copy of the old one
		 * (from the sidecar's state file, say) is worthless from now on. */
		if (relay_lease_rotate_resume(l) != 0) {
			send_error(t, "internal", "cannot make a new resume token");
			return;
		}
		SR_INFO(t->ctx, "resuming lease %s", relay_lease_id(l));
		r->st.leases_resumed++;
		attach(t, lx);
		return;
	}
	if (r->nregistered >= r->o->max_tunnels) {
		refuse(r, RELAY_REFUSE_TUNNELS);
		send_error(t, "too_many_tunnels", "the relay carries its max_tunnels already");
		return;
	}
	route = relay_policy_route(p, tenant, m->app, (const struct sockaddr *)&t->addr, why,
				   sizeof(why));
	if (route < 0) {
		refuse(r, RELAY_REFUSE_REG_ROUTE);
		send_error(t, "no_route", why);
		return;
	}
	{
		const struct relay_pool_cfg *pc =
			relay_policy_pool(p, (size_t)relay_policy_route_pool(p, route));
		pr = pool_find(r, pc->name ? pc->name : "default");
	}
	if (!pr) {
		send_error(t, "internal", "pool not available");
		return;
	}
	/* Leases without a tunnel are what a client that registers and drops
	 * its tunnels piles up: past max_grace_leases a new registration of
	 * the tenant ends one of them (its own first) instead of taking more. */
	if (r->o->max_grace_leases) {
		tenant_usage(r, tname, NULL, NULL, NULL, &u);
		if (u.grace >= r->o->max_grace_leases)
			reclaim_one(t, tname, idkey, NULL,
				    "the tenant has relay.max_grace_leases leases without a tunnel");
	}
	tenant_limits(r, r->pol, relay_policy_tenant_cfg(p, tenant), &tl);
	if (tl.leases) {
		tenant_usage(r, tname, NULL, NULL, NULL, &u);
		if (u.leases >= tl.leases &&
		    !reclaim_one(t, tname, idkey, NULL, "the tenant is at its lease limit")) {
			refuse(r, RELAY_REFUSE_REG_LIMIT);
			snprintf(why, sizeof(why), "tenant %s holds %u leases already", tname,
				 tl.leases);
			send_error(t, "too_many_leases", why);
			return;
		}
	}
	lx = calloc(1, sizeof(*lx));
	if (!lx) {
		send_error(t, "internal", "out of memory");
		return;
	}
	roles = m->roles & (TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) |
			    TUN_ROLE_BIT(TUN_PORT_UI));
	rv = relay_lease_create(pr->t, m->app, roles, r->o->lease_grace_s, &l);
	if ((rv == SR_ENOPORTS || rv == SR_EBUSY) &&
	    reclaim_one(t, tname, idkey, pr, "the pool is full"))
		rv = relay_lease_create(pr->t, m->app, roles, r->o->lease_grace_s, &l);
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
	snprintf(lx->tenant_name, sizeof(lx->tenant_name), "%s", tname);
	snprintf(lx->route_name, sizeof(lx->route_name), "%s", relay_policy_route_name(p, route));
	memcpy(lx->idkey, idkey, sizeof(lx->idkey));
	memcpy(&lx->src, &t->addr, sizeof(lx->src));
	relay_lease_set_data(l, lx);
	r->st.leases_granted++;
	SR_INFO(t->ctx, "lease %s granted to app \"%s\" (tenant %s, route %s, pool %s): driver "
			"port %u, blockManager port %u",
		relay_lease_id(l), sr_esc_n(m->app, LOG_APP_MAX, app, sizeof(app)),
		lx->tenant_name, lx->route_name, pr->name, relay_lease_port(l, TUN_PORT_DRIVER),
		relay_lease_port(l, TUN_PORT_BLOCKMANAGER));
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
		SR_INFO(t->ctx, "lease released by the sidecar; closing the tunnel");
		{
			struct relay_lease_ext *lx = t->lx;
			tunnel_unlink_lease(t);
			release_lease(lx);
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
	if (t->identity[0]) {
		char cn[SR_ESC_SIZE(64) + 2];
		snprintf(t->ctx, sizeof(t->ctx), "peer=%s cn=%s", t->peer,
			 log_word(t->identity, cn, sizeof(cn)));
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
	tunnel_free(t);
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
	refuse(r, why);
	if (relay_ratelog_allow(&r->rl_accept, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
		SR_WARN("", "peer=%s: tunnel connection refused: %s (%llu more refused since the "
			    "last line)",
			peer, what, (unsigned long long)more);
	return 1;
}

static void on_tunnel_accept(struct evconnlistener *lst, evutil_socket_t fd,
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

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;

	if (!r->draining)
		evconnlistener_enable(r->listener);
}

/* accept() failed for a reason other than a peer that went away, typically
 * EMFILE or ENFILE. The connection stays in the backlog, so an armed
 * listener would wake again at once and spin: stop it for a moment, as the
 * lease ports do. A lasting shortage logs one line per REFUSAL_LOG_PERIOD. */
static void listener_error_cb(struct evconnlistener *lst, void *arg)
{
	struct relay *r = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = {ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000};
	uint64_t more = 0;

	r->st.accept_errors++;
	evconnlistener_disable(lst);
	evtimer_add(r->accept_pause, &tv);
	if (relay_ratelog_allow(&r->rl_accept_err, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
		SR_ERROR("", "tunnel listener: accept failed: %s; pausing it %d ms (%llu more "
			     "failures since the last line)",
			 evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS,
			 (unsigned long long)more);
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
		tunnel_unlink_lease(t);
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
	r->pol->implicit_tenants = o->policy.ntenants == 0;
	r->pol->p = relay_policy_new(&o->policy, &o->pool, err, errlen);
	if (!r->pol->p)
		goto fail;
	if (pools_sync(r, r->pol->p) != 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	r->drain_timer = event_new(base, -1, EV_PERSIST, drain_check_cb, r);
	r->gc_timer = event_new(base, -1, EV_PERSIST, gc_cb, r);
	r->accept_pause = evtimer_new(base, accept_resume_cb, r);
	if (!r->drain_timer || !r->gc_timer || !r->accept_pause) {
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
		tunnel_unlink_lease(t);
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
	if (r->accept_pause)
		event_free(r->accept_pause);
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
	np->implicit_tenants = o->policy.ntenants == 0;
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
	st->handshakes_active = r->st.tunnels_active - r->nregistered;
	st->executor_buffered = 0;
	st->buffer_throttled = r->closed_throttled;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		struct tun_conn_stats ts;
		if (!t->conn)
			continue;
		tun_conn_get_stats(t->conn, &ts);
		st->executor_buffered += ts.sock_in_buffered;
		st->buffer_throttled += ts.sock_in_throttled;
		st->streams_active += ts.streams_active;
		st->bytes_to_sidecar += ts.bytes_to_tunnel;
		st->bytes_to_executor += ts.bytes_from_tunnel;
		st->streams_opened += ts.streams_opened;
	}
	st->draining = r->draining;
	st->ready = r->st.ready && !r->draining;
}
