/* The relay: TLS listener for sidecars, one tun_conn per sidecar, leases
 * whose ports accept executors, and the pending queue that holds executor
 * connections while a lease has no tunnel. */
#include "relay/relay.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "tunnel/tun_tls.h"
#include "tunnel/tun_tls_io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>

struct relay_tunnel;

/* An executor connection waiting for its lease's tunnel to come back. */
struct relay_pending {
	struct relay_pending *next;
	struct relay_lease_ext *owner;
	int fd;
	enum tun_port_role role;
	uint64_t conn_id;
	char peer[SR_ADDRSTRLEN];
	struct event *timer;
};

/* What the relay keeps per lease (relay_lease_set_data). */
struct relay_lease_ext {
	struct relay *relay;
	struct relay_lease *lease;
	struct relay_tunnel *tunnel; /* attached tunnel, NULL while in grace */
	struct relay_pending *pending;
	unsigned npending;
	char identity[160]; /* who created it: only they may resume it */
};

struct relay_tunnel {
	struct relay *relay;
	struct relay_tunnel *next, *prev;
	struct tun_tls_io *io; /* TLS transport; the session runs on its bufferevent */
	struct tun_conn *conn;
	struct relay_lease_ext *lx;
	struct event *timer; /* handshake + register deadline */
	char peer[SR_ADDRSTRLEN];
	char identity[160];
	char ctx[192];
};

struct relay {
	struct event_base *base;
	const struct relay_opts *o;
	SSL_CTX *ssl_ctx;
	struct evconnlistener *listener;
	struct relay_lease_table *leases;
	struct relay_tunnel *tunnels;
	struct event *drain_timer;
	uint64_t drain_deadline_us;
	uint64_t next_conn_id;
	int draining;
	struct relay_stats st;
};

void relay_opts_defaults(struct relay_opts *o)
{
	if (!o->pool.port_min)
		o->pool.port_min = 40000;
	if (!o->pool.port_max)
		o->pool.port_max = 40999;
	if (!o->pool.backlog)
		o->pool.backlog = 1024;
	if (!o->lease_grace_s)
		o->lease_grace_s = 300;
	if (!o->pending_timeout_ms)
		o->pending_timeout_ms = 30000;
	if (!o->max_pending)
		o->max_pending = 256;
	if (!o->handshake_timeout_ms)
		o->handshake_timeout_ms = 10000;
	if (!o->drain_timeout_ms)
		o->drain_timeout_ms = 30000;
	if (!o->max_tunnels)
		o->max_tunnels = 1024;
	tun_conn_opts_defaults(&o->tun);
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
	r->st.executor_refused++;
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
		r->st.executor_refused++;
		return;
	}
	rv = tun_conn_open_stream(lx->tunnel->conn, bev, relay_lease_port(lx->lease, role),
				  relay_lease_id(lx->lease), conn_id, peer);
	if (rv != 0) {
		SR_WARN(lx->tunnel->ctx, "conn=%llu peer=%s: cannot open stream: %s",
			(unsigned long long)conn_id, peer, sr_strerror(rv));
		r->st.executor_refused++;
		return;
	}
	SR_DEBUG(lx->tunnel->ctx, "conn=%llu peer=%s port=%u: stream opened",
		 (unsigned long long)conn_id, peer, relay_lease_port(lx->lease, role));
}

static void flush_pending(struct relay *r, struct relay_lease_ext *lx)
{
	while (lx->pending && lx->tunnel) {
		struct relay_pending *p = lx->pending;
		int fd = p->fd;
		lx->pending = p->next;
		lx->npending--;
		p->fd = -1;
		open_stream(r, lx, fd, p->role, p->conn_id, p->peer);
		pending_free(p, 0);
	}
}

static void on_executor(struct relay_lease *l, enum tun_port_role role, int fd,
			const struct sockaddr *sa, int salen, void *arg)
{
	struct relay *r = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);
	struct relay_pending *p;
	char peer[SR_ADDRSTRLEN];
	uint64_t conn_id = ++r->next_conn_id;
	struct timeval tv;

	sr_format_addr(sa, peer, sizeof(peer));
	r->st.executor_conns++;
	if (r->draining) {
		sr_sock_set_reset_on_close(fd);
		close(fd);
		r->st.executor_refused++;
		return;
	}
	if (lx->tunnel) {
		open_stream(r, lx, fd, role, conn_id, peer);
		return;
	}
	if (lx->npending >= r->o->max_pending) {
		SR_WARN(relay_lease_id(l), "conn=%llu peer=%s: refused, %u connections already "
					   "wait for the tunnel",
			(unsigned long long)conn_id, peer, lx->npending);
		sr_sock_set_reset_on_close(fd);
		close(fd);
		r->st.executor_refused++;
		return;
	}
	p = calloc(1, sizeof(*p));
	if (!p || !(p->timer = evtimer_new(r->base, pending_timeout_cb, p))) {
		free(p);
		close(fd);
		r->st.executor_refused++;
		return;
	}
	p->owner = lx;
	p->fd = fd;
	p->role = role;
	p->conn_id = conn_id;
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
	free(lx);
}

static void on_lease_expire(struct relay_lease *l, void *arg)
{
	struct relay *r = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	SR_INFO(relay_lease_id(l), "lease expired: no tunnel for %u s; ports closed",
		r->o->lease_grace_s);
	relay_lease_set_data(l, NULL);
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
	tun_conn_free(t->conn); /* before io: it holds io's plaintext end */
	tun_tls_io_free(t->io);
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
	snprintf(t->ctx, sizeof(t->ctx), "lease=%s app=%s peer=%s", relay_lease_id(lx->lease),
		 relay_lease_app(lx->lease), t->peer);
	tun_conn_set_logctx(t->conn, t->ctx);
	memset(&m, 0, sizeof(m));
	relay_lease_describe(lx->lease, &m);
	tun_conn_send_ctl(t->conn, &m);
	flush_pending(r, lx);
}

static void on_register(struct relay_tunnel *t, const struct tun_ctl_msg *m)
{
	struct relay *r = t->relay;
	struct relay_lease_ext *lx;
	struct relay_lease *l;
	int rv;

	if (t->lx) {
		send_error(t, "already_registered", "this tunnel already holds a lease");
		return;
	}
	if (r->draining) {
		send_error(t, "draining", "relay is shutting down; try another relay");
		return;
	}
	if (r->o->auth_token && !sr_secret_eq(m->token, r->o->auth_token)) {
		send_error(t, "unauthorized", "missing or wrong token");
		return;
	}
	if (m->resume[0]) {
		l = relay_lease_find_resume(r->leases, m->resume);
		lx = l ? relay_lease_data(l) : NULL;
		if (!lx || strcmp(lx->identity, t->identity) != 0) {
			/* Same answer for "no such lease" and "not yours": a resume
			 * token must not reveal whether it exists. */
			send_error(t, "unknown_lease", "no lease for this resume token");
			return;
		}
		SR_INFO(t->ctx, "resuming lease %s", relay_lease_id(l));
		attach(t, lx);
		return;
	}
	lx = calloc(1, sizeof(*lx));
	if (!lx) {
		send_error(t, "internal", "out of memory");
		return;
	}
	rv = relay_lease_create(r->leases, m->app,
				m->roles & (TUN_ROLE_BIT(TUN_PORT_DRIVER) |
					    TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER) |
					    TUN_ROLE_BIT(TUN_PORT_UI)),
				r->o->lease_grace_s, &l);
	if (rv != 0) {
		free(lx);
		send_error(t, rv == SR_ENOPORTS ? "no_ports" : rv == SR_EBUSY ? "too_many_leases" : "internal",
			   sr_strerror(rv));
		return;
	}
	lx->relay = r;
	lx->lease = l;
	snprintf(lx->identity, sizeof(lx->identity), "%s", t->identity);
	relay_lease_set_data(l, lx);
	SR_INFO(t->ctx, "lease %s granted to app \"%s\": driver port %u, blockManager port %u",
		relay_lease_id(l), m->app, relay_lease_port(l, TUN_PORT_DRIVER),
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

static void tunnel_on_closed(struct tun_conn *c, int err, void *arg)
{
	struct relay_tunnel *t = arg;
	const char *why = tun_tls_io_error(t->io);
	if (why[0])
		SR_DEBUG(t->ctx, "transport: %s", why);
	tunnel_free(t);
}

static const struct tun_conn_cbs relay_tun_cbs = {
	.on_ctl = tunnel_on_ctl,
	.on_closed = tunnel_on_closed,
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

static void handshake_cb(struct tun_tls_io *io, int err, const char *why, void *arg)
{
	struct relay_tunnel *t = arg;
	struct relay *r = t->relay;
	SSL *ssl = tun_tls_io_ssl(io);

	if (err != 0) {
		SR_WARN(t->ctx, "TLS handshake failed: %s", why);
		r->st.handshake_failures++;
		tunnel_free(t);
		return;
	}
	if (tun_tls_check_alpn(ssl) != 0) {
		SR_WARN(t->ctx, "TLS handshake failed: peer did not negotiate h2 (ALPN)");
		r->st.handshake_failures++;
		tunnel_free(t);
		return;
	}
	tun_tls_peer_name(ssl, t->identity, sizeof(t->identity));
	if (t->identity[0])
		snprintf(t->ctx, sizeof(t->ctx), "peer=%s cn=%s", t->peer, t->identity);
	t->conn = tun_conn_new(r->base, tun_tls_io_take_bev(io), TUN_ROLE_RELAY, &r->o->tun,
			       &relay_tun_cbs, t, t->ctx);
	if (!t->conn) {
		SR_ERROR(t->ctx, "cannot create tunnel session (out of memory)");
		tunnel_free(t);
		return;
	}
	SR_INFO(t->ctx, "tunnel up (TLS 1.3, h2); waiting for registration");
	r->st.tunnels_accepted++;
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
	if (r->draining || r->st.tunnels_active >= r->o->max_tunnels) {
		SR_WARN("", "peer=%s: tunnel refused (%s)", peer,
			r->draining ? "draining" : "max_tunnels reached");
		evutil_closesocket(fd);
		return;
	}
	sr_sock_nodelay(fd);
	sr_sock_notsent_lowat(fd, 1024 * 1024);
	t = calloc(1, sizeof(*t));
	ssl = SSL_new(r->ssl_ctx);
	if (!t || !ssl)
		goto fail;
	t->relay = r;
	snprintf(t->peer, sizeof(t->peer), "%s", peer);
	snprintf(t->ctx, sizeof(t->ctx), "peer=%s", peer);
	t->timer = evtimer_new(r->base, tunnel_timeout_cb, t);
	if (!t->timer)
		goto fail;
	t->io = tun_tls_io_new(r->base, fd, ssl, 1, 0, handshake_cb, t);
	ssl = NULL;
	fd = -1; /* both stolen, even on failure */
	if (!t->io)
		goto fail;
	tv.tv_sec = r->o->handshake_timeout_ms / 1000;
	tv.tv_usec = (r->o->handshake_timeout_ms % 1000) * 1000;
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

/* ---- lifecycle --------------------------------------------------------------- */

struct relay *relay_new(struct event_base *base, const struct relay_opts *o, char *err,
			size_t errlen)
{
	struct relay *r = calloc(1, sizeof(*r));
	struct sockaddr_storage ss;
	socklen_t sslen;
	char host[256];
	uint16_t port;
	static const struct relay_lease_cbs lcbs = {.on_accept = on_executor,
						    .on_expire = on_lease_expire};

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->base = base;
	r->o = o;
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
	r->leases = relay_lease_table_new(base, &o->pool, &lcbs, r);
	r->drain_timer = event_new(base, -1, EV_PERSIST, drain_check_cb, r);
	if (!r->leases || !r->drain_timer) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	r->listener = evconnlistener_new_bind(base, on_tunnel_accept, r,
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						      LEV_OPT_CLOSE_ON_EXEC,
					      1024, (struct sockaddr *)&ss, (int)sslen);
	if (!r->listener) {
		snprintf(err, errlen, "cannot listen on %s: %s", o->listen, strerror(errno));
		goto fail;
	}
	evconnlistener_set_error_cb(r->listener, listener_error_cb);
	SR_INFO("", "listening for sidecars on %s; executor ports %u-%u on %s", o->listen,
		o->pool.port_min, o->pool.port_max,
		o->pool.bind_address ? o->pool.bind_address : "0.0.0.0");
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
	if (r->leases) {
		relay_lease_foreach(r->leases, lease_drop, NULL);
		relay_lease_table_free(r->leases);
	}
	if (r->listener)
		evconnlistener_free(r->listener);
	if (r->drain_timer)
		event_free(r->drain_timer);
	SSL_CTX_free(r->ssl_ctx);
	free(r);
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
	st->leases_active = relay_lease_count(r->leases);
	st->streams_active = 0;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next)
		st->streams_active += t->conn ? tun_conn_nstreams(t->conn) : 0;
}
