/* Live handover: a new relay process takes over everything this one holds,
 * over a Unix socket (SOCK_SEQPACKET: one message per send, descriptors
 * passed with SCM_RIGHTS), and the sidecars resume their streams on it.
 *
 *   new                                old (running)
 *   connect(handover_socket) ------->  accept; peer must be our uid or root
 *   HELLO {v, listen} -------------->  refuse (listen differs, draining, busy),
 *                                      or freeze: stop accepting, close every
 *                                      tunnel holding its streams, stop every
 *                                      socket, timer and listener
 *                      <-------------  ITEM relay (+ listener fds), ITEM lease
 *                                      (+ port fds), ITEM stream (+ socket) and
 *                                      its DATA, ITEM pending (+ socket), ITEM end
 *   adopt all of it, touching nothing
 *   READY -------------------------->  commit: forget what was passed, exit 0
 *   start: accept, write, time
 *
 * The commit point is READY reaching the old process's socket. The old one
 * gives up (REFUSE or EOF from the new one, or its handover_timeout_ms ran
 * out) by shutting the connection down first and then reading what is left:
 * a READY queued before the shutdown still commits; one sent after it fails
 * with EPIPE at the new process, which then exits without having touched
 * anything. So exactly one process goes on with the connections. Until the
 * commit the old process closes nothing the new one needs; after it, it
 * closes only its own descriptors (no shutdown, reset or SO_LINGER on a
 * connection another process owns: tun_group_forget). */
#include "relay/relay_int.h"
#include "relay/relay_fleet.h"
#include "fleet/splice.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "tunnel/tun_handover.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>

#define HO_VERSION 1
#define HO_MSG_MAX (64 * 1024) /* one message, type byte included */
#define HO_FDS_MAX 8	       /* descriptors in one message */

enum ho_type {
	HO_HELLO = 'H',	 /* new -> old: who takes over, and with what listen address */
	HO_REFUSE = 'X', /* either way: {"error": why}; the handover is off */
	HO_ITEM = 'S',	 /* old -> new: one JSON object of the state, with its fds */
	HO_DATA = 'D',	 /* old -> new: bytes of the stream item before it */
	HO_READY = 'Y',	 /* new -> old: the commit */
};

enum ho_phase {
	HO_IDLE,       /* listening */
	HO_WAIT_HELLO, /* old: a new process connected */
	HO_SENT,       /* old: frozen, state sent, waiting for READY */
	HO_GONE,       /* old: committed; everything is the new process's */
	HO_TAKEN,      /* new: adopted everything, not committed */
	HO_ABANDONED,  /* new: gave up before the commit */
};

struct relay_handover {
	struct relay *r;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int own_path; /* we bound it: unlink it at the end, unless handed on */
	struct evconnlistener *lev;
	int fd; /* the other process */
	pid_t peer_pid;
	struct event *rev, *timer;
	enum ho_phase phase;
	uint64_t t0_us;
	int admin_fd; /* old: the admin listener to pass on */
	char admin_listen[256];
	size_t nleases, nstreams, npending, ncarried;
	uint64_t nbytes;
	uint64_t nretained; /* of nbytes, sent and not yet acknowledged */
};

/* ---- messages ------------------------------------------------------------------ */

static int ho_wait(int fd, short what, uint64_t deadline_us)
{
	for (;;) {
		uint64_t now = sr_now_us();
		struct pollfd p = {.fd = fd, .events = what};
		int r;
		if (now >= deadline_us)
			return SR_ETIMEDOUT;
		r = poll(&p, 1, (int)((deadline_us - now + 999) / 1000));
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return SR_EIO;
	}
}

/* One message: a type byte, len bytes, and fds. Waits for room until the
 * deadline. Returns 0, SR_ECLOSED (the peer is gone or shut us out),
 * SR_ETIMEDOUT or SR_EIO. */
static int ho_send(int fd, enum ho_type type, const void *data, size_t len, const int *fds,
		   size_t nfds, uint64_t deadline_us)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * HO_FDS_MAX)];
	} cm;
	uint8_t t = (uint8_t)type;
	struct iovec iov[2] = {{&t, 1}, {(void *)data, len}};
	struct msghdr mh;

	if (nfds > HO_FDS_MAX || len + 1 > HO_MSG_MAX)
		return SR_EINVAL;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = len ? 2 : 1;
	if (nfds) {
		memset(&cm, 0, sizeof(cm));
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm.h.cmsg_level = SOL_SOCKET;
		cm.h.cmsg_type = SCM_RIGHTS;
		cm.h.cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(&cm.h), fds, sizeof(int) * nfds);
	}
	for (;;) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		int rc;
		if (n >= 0)
			return 0;
		if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
			return SR_ECLOSED;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return SR_EIO;
		rc = ho_wait(fd, POLLOUT, deadline_us);
		if (rc)
			return rc;
	}
}

static int ho_send_json(int fd, enum ho_type type, json_t *j, const int *fds, size_t nfds,
			uint64_t deadline_us)
{
	char *text;
	int rc;

	if (!j)
		return SR_ENOMEM;
	text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (!text)
		return SR_ENOMEM;
	rc = ho_send(fd, type, text, strlen(text), fds, nfds, deadline_us);
	free(text);
	return rc;
}

struct ho_msg {
	enum ho_type type;
	uint8_t buf[HO_MSG_MAX];
	size_t len; /* of the payload, after the type byte */
	int fds[HO_FDS_MAX];
	size_t nfds;
};

static void ho_msg_close_fds(struct ho_msg *m)
{
	for (size_t i = 0; i < m->nfds; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	m->nfds = 0;
}

/* One message, waiting until the deadline (0: do not wait). Returns 0, or
 * SR_EAGAIN-like SR_EBUSY (nothing queued and no wait), SR_ECLOSED (end of
 * file), SR_ETIMEDOUT, SR_EPROTO (truncated, empty or too many fds) or
 * SR_EIO. On success the caller owns m->fds. */
static int ho_recv(int fd, struct ho_msg *m, uint64_t deadline_us)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * HO_FDS_MAX)];
	} cm;
	struct iovec iov = {m->buf, sizeof(m->buf)};
	struct msghdr mh;

	m->nfds = 0;
	for (;;) {
		ssize_t n;
		int rc = 0;
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof(cm.buf);
		n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n >= 0) {
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
			     c = CMSG_NXTHDR(&mh, c)) {
				size_t k;
				if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
					continue;
				k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t i = 0; i < k; i++) {
					int x;
					memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
					if (m->nfds < HO_FDS_MAX)
						m->fds[m->nfds++] = x;
					else
						close(x);
				}
			}
			if (n == 0 && m->nfds == 0)
				return SR_ECLOSED;
			if (n == 0 || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
				ho_msg_close_fds(m);
				return SR_EPROTO;
			}
			m->type = (enum ho_type)m->buf[0];
			m->len = (size_t)n - 1;
			memmove(m->buf, m->buf + 1, m->len);
			m->buf[m->len] = '\0';
			return 0;
		}
		if (errno == ECONNRESET)
			return SR_ECLOSED;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return SR_EIO;
		if (!deadline_us)
			return SR_EBUSY;
		rc = ho_wait(fd, POLLIN, deadline_us);
		if (rc)
			return rc;
	}
}

/* The JSON object of a message (NULL if it is not one). */
static json_t *ho_json(const struct ho_msg *m)
{
	json_t *j = json_loadb((const char *)m->buf, m->len, JSON_REJECT_DUPLICATES, NULL);

	if (j && !json_is_object(j)) {
		json_decref(j);
		return NULL;
	}
	return j;
}

static int peer_allowed(int fd, pid_t *pid)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0)
		return 0;
	*pid = uc.pid;
	return uc.uid == geteuid() || uc.uid == 0;
}

/* "pid N", or what a peer in another PID namespace (another pod) is. */
static const char *who(pid_t pid, char *buf, size_t len)
{
	if (pid > 0)
		snprintf(buf, len, "pid %ld", (long)pid);
	else
		snprintf(buf, len, "a relay in another PID namespace");
	return buf;
}

/* "host:port" strings naming the same address and port. */
static int same_listen(const char *a, const char *b)
{
	char ha[256], hb[256];
	uint16_t pa, pb;
	struct sockaddr_storage sa, sb;
	socklen_t la, lb;

	if (!a || !b)
		return a == b;
	if (sr_split_hostport(a, ha, sizeof(ha), &pa, 8443) != 0 ||
	    sr_split_hostport(b, hb, sizeof(hb), &pb, 8443) != 0 ||
	    sr_parse_addr(ha, pa, &sa, &la) != 0 || sr_parse_addr(hb, pb, &sb, &lb) != 0)
		return strcmp(a, b) == 0;
	return la == lb && memcmp(&sa, &sb, la) == 0;
}

/* ---- freeze and resume (both sides) -------------------------------------------- */

static void foreach_ext(struct relay *r, void (*fn)(struct relay_lease_ext *lx, void *arg),
			void *arg);

struct ext_visit {
	void (*fn)(struct relay_lease_ext *lx, void *arg);
	void *arg;
};

static void visit_ext(struct relay_lease *l, void *arg)
{
	struct ext_visit *v = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);

	if (lx)
		v->fn(lx, v->arg);
}

static void foreach_ext(struct relay *r, void (*fn)(struct relay_lease_ext *lx, void *arg),
			void *arg)
{
	struct ext_visit v = {fn, arg};

	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		relay_lease_foreach(pr->t, visit_ext, &v);
}

static void freeze_lease(struct relay_lease_ext *lx, void *arg)
{
	int64_t left = relay_lease_grace_left_ms(lx->lease);

	relay_lease_listen(lx->lease, 0);
	/* A lease whose tunnel was just closed starts its grace period now. */
	lx->ho_grace_ms =
	    left >= 0 ? (uint64_t)left : (uint64_t)relay_lease_ttl(lx->lease) * 1000u;
	lx->ho_base_us = sr_now_us();
	relay_lease_grace_stop(lx->lease);
	/* No session carries it any more (freeze() detached them all). */
	if (tun_group_freeze(lx->group) != 0)
		*(int *)arg = 1;
	for (struct relay_pending *p = lx->pending; p; p = p->next)
		evtimer_del(p->timer);
}

/* Nothing this relay holds changes from here on: no accept, no tunnel, no
 * socket read or written, no timer that could end a lease or a stream. The
 * streams of every tunnel wait in their lease's group with exact counts.
 * Returns 0, or -1 if a group could not be frozen (resume_all undoes it). */
static int freeze(struct relay *r)
{
	int bad = 0;
	uint64_t now = sr_now_us();

	evconnlistener_disable(r->listener);
	evtimer_del(r->accept_pause);
	for (struct relay_tunnel *t = r->tunnels, *nx; t; t = nx) {
		nx = t->next;
		if (!t->conn) {
			/* TLS not done: it would register later. It reconnects. */
			relay_tunnel_free(t);
			continue;
		}
		if (t->lx) {
			struct relay_lease_ext *lx = t->lx;
			relay_tunnel_unlink_lease(t);
			lx->detached_us = now;
			tun_conn_close_hold(t->conn, 0);
		} else {
			tun_conn_close(t->conn, 0);
		}
		/* The closing session lets go of the group it handed its
		 * streams to: only the group has them now. A tunnel without a
		 * lease may have one too: one replaced by another tunnel of its
		 * lease was closed holding, and stays attached until it is
		 * freed (up to the 2 s flush timeout). */
		tun_conn_set_group(t->conn, NULL);
	}
	foreach_ext(r, freeze_lease, &bad);
	if (r->fleet)
		relay_fleet_freeze(r->fleet, 1);
	return bad ? -1 : 0;
}

static void resume_lease(struct relay_lease_ext *lx, void *arg)
{
	struct relay *r = arg;
	uint64_t now = sr_now_us(), gone = (now - lx->ho_base_us) / 1000u;
	uint64_t timeout = (uint64_t)r->o->pending_timeout_ms * 1000u;

	tun_group_thaw(lx->group);
	/* In a fleet the grace period is the lease's etcd lease, not a local
	 * timer (relay_tunnel_free): one here would close its ports while
	 * the fleet still has it. */
	if (!r->fleet)
		relay_lease_detach_ms(lx->lease,
				      lx->ho_grace_ms > gone ? lx->ho_grace_ms - gone : 0);
	for (struct relay_pending *p = lx->pending; p; p = p->next) {
		uint64_t waited = now - p->since_us;
		struct timeval tv = sr_tv_ms(waited < timeout ? (timeout - waited) / 1000u : 0);
		evtimer_add(p->timer, &tv);
	}
	relay_lease_listen(lx->lease, 1);
}

/* Accept, write and time again: the old relay after a handover it gave up,
 * or the new one once it committed. */
static void resume_all(struct relay *r)
{
	foreach_ext(r, resume_lease, r);
	if (r->fleet)
		relay_fleet_freeze(r->fleet, 0);
	/* accept_resume_cb tries again until the listener is armed */
	if (!r->draining && evconnlistener_enable(r->listener) != 0)
		event_active(r->accept_pause, EV_TIMEOUT, 1);
	if (r->ho->lev && evconnlistener_enable(r->ho->lev) != 0)
		SR_WARN("", "handover socket %s: out of memory; live handover is off",
			r->ho->path);
}

static void forget_lease(struct relay_lease_ext *lx, void *arg)
{
	(void)arg;
	tun_group_forget(lx->group);
	while (lx->pending) {
		struct relay_pending *p = lx->pending;
		lx->pending = p->next;
		close(p->fd); /* ours only: no reset, the connection is not ours */
		if (p->timer)
			event_free(p->timer);
		free(p);
	}
	lx->npending = 0;
}

/* What another process owns now is dropped without a trace on the wire. */
static void forget_all(struct relay *r)
{
	while (r->tunnels) {
		struct relay_tunnel *t = r->tunnels;
		relay_tunnel_unlink_lease(t);
		relay_tunnel_free(t);
	}
	foreach_ext(r, forget_lease, NULL);
	if (r->fleet)
		relay_fleet_forget_carried(r->fleet);
}

/* ---- old side ----------------------------------------------------------------------- */

static void conn_end(struct relay_handover *h)
{
	if (h->rev)
		event_free(h->rev);
	if (h->timer)
		event_free(h->timer);
	h->rev = h->timer = NULL;
	if (h->fd >= 0)
		close(h->fd);
	h->fd = -1;
	h->peer_pid = 0;
	if (h->phase != HO_GONE)
		h->phase = HO_IDLE;
}

static void refuse(struct relay_handover *h, const char *why)
{
	(void)ho_send_json(h->fd, HO_REFUSE, json_pack("{s:s}", "error", why), NULL, 0,
			   sr_now_us() + 1000000u);
}

static void commit(struct relay_handover *h, const json_t *ready)
{
	struct relay *r = h->r;
	uint64_t ms = (sr_now_us() - h->t0_us) / 1000u;
	char wb[64];

	if (json_is_true(json_object_get(ready, "handover_socket")))
		h->own_path = 0; /* the new relay listens on it now */
	SR_INFO("",
		"handed over to %s in %" PRIu64 " ms: %zu leases, %zu executor "
		"connections (%" PRIu64 " bytes buffered, %" PRIu64 " of them sent and not yet "
		"acknowledged), %zu waiting, %zu carried to other relays; exiting",
		who(h->peer_pid, wb, sizeof(wb)), ms, h->nleases, h->nstreams, h->nbytes,
		h->nretained, h->npending, h->ncarried);
	forget_all(r);
	h->phase = HO_GONE;
	conn_end(h);
	if (h->lev)
		evconnlistener_disable(h->lev); /* the new relay answers there now */
	r->handed_over = 1;
	event_base_loopbreak(r->base);
}

/* Give up: resume unless a READY came before the connection was shut. */
static void give_up(struct relay_handover *h, const char *why)
{
	struct relay *r = h->r;
	int was_frozen = h->phase == HO_SENT;
	char wb[64];

	if (was_frozen) {
		struct ho_msg *m = malloc(sizeof(*m));
		shutdown(h->fd, SHUT_RDWR);
		while (m && ho_recv(h->fd, m, 0) == 0) {
			ho_msg_close_fds(m);
			if (m->type == HO_READY) {
				json_t *j = ho_json(m);
				SR_INFO("", "handover: the new relay committed before it %s",
					why);
				commit(h, j);
				json_decref(j);
				free(m);
				return;
			}
		}
		free(m);
	}
	SR_WARN("", "handover to %s abandoned: %s%s", who(h->peer_pid, wb, sizeof(wb)), why,
		was_frozen ? "; this relay goes on (accepting again)" : "");
	conn_end(h);
	if (was_frozen) {
		resume_all(r);
		if (r->drain_wanted)
			relay_drain(r);
	}
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_handover *h = arg;
	char why[96];

	snprintf(why, sizeof(why), "not committed within relay.handover_timeout_ms (%u ms)",
		 h->r->o->handover_timeout_ms);
	give_up(h, why);
}

/* ---- old side: the state, item by item ---- */

struct snap {
	struct relay_handover *h;
	uint64_t deadline_us;
	int rc;
	char why[160];
};

static json_t *pool_json(const struct relay_pool_rt *pr)
{
	const struct relay_pool_opts *o = &pr->opts;

	return json_pack("{s:s,s:s?,s:s?,s:i,s:i,s:i,s:i}", "name", pr->name, "bind",
			 o->bind_address, "advertise", o->advertise_host, "port_min",
			 (int)o->port_min, "port_max", (int)o->port_max, "max_leases",
			 (int)o->max_leases, "backlog", (int)o->backlog);
}

/* The rules a lease was made under, for a new configuration without its
 * route or tenant (relay_exec_on_accept falls back to them). */
static json_t *rules_json(const struct relay_lease_ext *lx)
{
	const struct relay_route_cfg *rc = relay_policy_route_cfg(lx->pol->p, lx->route);
	const struct relay_tenant_cfg *tc = relay_policy_tenant_cfg(lx->pol->p, lx->tenant);
	json_t *cidrs = json_array();

	if (!cidrs)
		return NULL;
	for (unsigned i = 0; rc && i < rc->nexecutor_cidrs; i++)
		json_array_append_new(cidrs, json_string(rc->executor_cidrs[i]));
	return json_pack("{s:o,s:b,s:i,s:i,s:i}", "executor_cidrs", cidrs, "implicit_tenants",
			 lx->pol->implicit_tenants, "leases", tc ? (int)tc->max_leases : 0,
			 "connections", tc ? (int)tc->max_connections : 0, "pending",
			 tc ? (int)tc->max_pending : 0);
}

static int send_data(struct snap *sn, struct evbuffer *b)
{
	size_t len = b ? evbuffer_get_length(b) : 0, off = 0;
	static uint8_t chunk[HO_MSG_MAX - 1];

	while (off < len) {
		size_t n = len - off < sizeof(chunk) ? len - off : sizeof(chunk);
		struct evbuffer_ptr pos;

		/* b stays untouched: the stream goes on if the handover fails. */
		if (evbuffer_ptr_set(b, &pos, off, EVBUFFER_PTR_SET) != 0 ||
		    evbuffer_copyout_from(b, &pos, chunk, n) != (ev_ssize_t)n)
			return SR_ENOMEM;
		int rc = ho_send(sn->h->fd, HO_DATA, chunk, n, NULL, 0, sn->deadline_us);
		if (rc)
			return rc;
		off += n;
	}
	sn->h->nbytes += len;
	return 0;
}

static void send_lease(struct relay_lease_ext *lx, void *arg)
{
	struct snap *sn = arg;
	struct relay_handover *h = sn->h;
	struct relay_lease_state ls;
	char src[SR_ADDRSTRLEN] = "";
	int fds[TUN_PORT_MAX];
	size_t nfds = 0;
	json_t *j, *ports;
	uint64_t now = sr_now_us();

	if (sn->rc)
		return;
	relay_lease_get_state(lx->lease, &ls);
	for (int i = 0; i < TUN_PORT_MAX; i++)
		if (ls.fds[i] >= 0)
			fds[nfds++] = ls.fds[i];
	if (lx->src.ss_family == AF_INET || lx->src.ss_family == AF_INET6)
		sr_format_addr((const struct sockaddr *)&lx->src, src, sizeof(src));
	ports = json_pack("[i,i,i]", (int)ls.ports[0], (int)ls.ports[1], (int)ls.ports[2]);
	j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:o,s:o,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:o,s:o}",
		      "kind", "lease", "id", ls.id, "app", ls.app, "resume", ls.resume,
		      /* the token a sidecar may still hold (relay_int.h) */
		      "prev_resume", lx->prev_resume, "roles",
		      (int)ls.roles, "ttl_s", (json_int_t)ls.ttl_s, "ports", ports, "pool",
		      pool_json(lx->pool), "tenant", lx->tenant_name, "route", lx->route_name,
		      "idkey", lx->idkey, "src", src, "conns_total",
		      (json_int_t)lx->conns_total, "detached_ms",
		      (json_int_t)(lx->detached_us && now > lx->detached_us
				       ? (now - lx->detached_us) / 1000u
				       : 0),
		      "grace_left_ms", (json_int_t)lx->ho_grace_ms, "group",
		      tun_handover_group_json(lx->group), "rules", rules_json(lx));
	sn->rc = ho_send_json(h->fd, HO_ITEM, j, fds, nfds, sn->deadline_us);
	if (sn->rc) {
		snprintf(sn->why, sizeof(sn->why), "lease %s: %s", ls.id, sr_strerror(sn->rc));
		return;
	}
	h->nleases++;
	for (struct tun_stream *s = tun_handover_next(lx->group, NULL); s && !sn->rc;
	     s = tun_handover_next(lx->group, s)) {
		int fd = tun_handover_stream_fd(s);
		json_t *m = tun_handover_stream_json(s);
		if (m) {
			json_object_set_new(m, "kind", json_string("stream"));
			h->nretained +=
			    (uint64_t)(json_integer_value(json_object_get(m, "tx_sent")) -
				       json_integer_value(json_object_get(m, "tx_acked")));
		}
		sn->rc = ho_send_json(h->fd, HO_ITEM, m, &fd, fd >= 0, sn->deadline_us);
		if (!sn->rc)
			sn->rc = send_data(sn, tun_handover_stream_in(s));
		if (!sn->rc)
			sn->rc = send_data(sn, tun_handover_stream_out(s));
		h->nstreams++;
	}
	for (struct relay_pending *p = lx->pending; p && !sn->rc; p = p->next) {
		j = json_pack("{s:s,s:I,s:i,s:s,s:I}", "kind", "pending", "conn",
			      (json_int_t)p->conn_id, "role", (int)p->role, "peer", p->peer,
			      "waited_ms", (json_int_t)((now - p->since_us) / 1000u));
		sn->rc = ho_send_json(h->fd, HO_ITEM, j, &p->fd, 1, sn->deadline_us);
		h->npending++;
	}
	if (sn->rc)
		snprintf(sn->why, sizeof(sn->why), "lease %s: %s", ls.id, sr_strerror(sn->rc));
}

static json_t *stats_json(struct relay *r)
{
	struct relay_stats st;
	json_t *refused = json_array();

	relay_get_stats(r, &st);
	for (int i = 0; refused && i < RELAY_REFUSE_MAX; i++)
		json_array_append_new(refused, json_integer((json_int_t)st.refused[i]));
	return json_pack(
	    "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}",
	    "tunnels_accepted", (json_int_t)st.tunnels_accepted, "handshake_failures",
	    (json_int_t)st.handshake_failures, "accept_errors", (json_int_t)st.accept_errors,
	    "leases_granted", (json_int_t)st.leases_granted, "leases_resumed",
	    (json_int_t)st.leases_resumed, "leases_expired", (json_int_t)st.leases_expired,
	    "leases_reclaimed", (json_int_t)st.leases_reclaimed, "executor_conns",
	    (json_int_t)st.executor_conns, "executor_refused", (json_int_t)st.executor_refused,
	    "streams_opened", (json_int_t)st.streams_opened, "bytes_to_sidecar",
	    (json_int_t)st.bytes_to_sidecar, "bytes_to_executor",
	    (json_int_t)st.bytes_to_executor, "buffer_throttled",
	    (json_int_t)st.buffer_throttled, "reloads_ok", (json_int_t)st.reloads_ok,
	    "reloads_failed", (json_int_t)st.reloads_failed, "handovers",
	    (json_int_t)st.handovers, "refused", refused);
}

/* An executor connection this relay carries to another relay of the fleet:
 * both sockets and both pipes, with what is in them. */
static int send_carried(const char *lease, int role, uint64_t conn_id,
			const struct fleet_splice_state *st, void *arg)
{
	struct snap *sn = arg;
	int fds[6] = {st->a, st->b, st->pipe[0][0], st->pipe[0][1], st->pipe[1][0],
		      st->pipe[1][1]};
	json_t *j = json_pack("{s:s,s:s,s:i,s:I,s:[I,I],s:[b,b],s:[b,b],s:[I,I]}", "kind",
			      "carried", "lease", lease, "role", role, "conn",
			      (json_int_t)conn_id, "inpipe", (json_int_t)st->inpipe[0],
			      (json_int_t)st->inpipe[1], "eof", st->eof[0], st->eof[1], "shut",
			      st->shut[0], st->shut[1], "bytes", (json_int_t)st->bytes[0],
			      (json_int_t)st->bytes[1]);

	sn->rc = ho_send_json(sn->h->fd, HO_ITEM, j, fds, 6, sn->deadline_us);
	if (sn->rc) {
		snprintf(sn->why, sizeof(sn->why), "a carried connection: %s",
			 sr_strerror(sn->rc));
		return -1;
	}
	return 0;
}

static int send_state(struct relay_handover *h)
{
	struct relay *r = h->r;
	struct snap sn = {
	    .h = h, .deadline_us = h->t0_us + (uint64_t)r->o->handover_timeout_ms * 1000u};
	int fds[4];
	size_t nfds = 0;
	json_t *names = json_array(), *j;
	const char *peer_listen = NULL;

	fds[nfds++] = evconnlistener_get_fd(r->listener);
	json_array_append_new(names, json_string("listen"));
	if (h->admin_fd >= 0) {
		fds[nfds++] = h->admin_fd;
		json_array_append_new(names, json_string("admin"));
	}
	if (h->lev) {
		fds[nfds++] = evconnlistener_get_fd(h->lev);
		json_array_append_new(names, json_string("handover"));
	}
	if (r->fleet && relay_fleet_peer_fd(r->fleet) >= 0) {
		fds[nfds++] = relay_fleet_peer_fd(r->fleet);
		json_array_append_new(names, json_string("peer"));
		peer_listen = r->o->fleet.peer_listen;
	}
	j = json_pack("{s:s,s:i,s:s,s:s,s:s?,s:s?,s:s,s:I,s:o,s:o}", "kind", "relay", "v",
		      HO_VERSION, "version", SR_VERSION, "listen", r->o->listen, "admin_listen",
		      h->admin_fd >= 0 ? h->admin_listen : NULL, "peer_listen", peer_listen,
		      "handover_socket", h->path,
		      "next_conn_id", (json_int_t)r->next_conn_id, "fds", names, "stats",
		      stats_json(r));
	sn.rc = ho_send_json(h->fd, HO_ITEM, j, fds, nfds, sn.deadline_us);
	if (sn.rc) {
		snprintf(sn.why, sizeof(sn.why), "the relay item: %s", sr_strerror(sn.rc));
		goto out;
	}
	foreach_ext(r, send_lease, &sn);
	if (sn.rc)
		goto out;
	if (r->fleet) {
		long n = relay_fleet_foreach_carried(r->fleet, send_carried, &sn);
		if (n < 0)
			goto out;
		h->ncarried = (size_t)n;
	}
	sn.rc = ho_send_json(h->fd, HO_ITEM,
			     json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "kind", "end", "leases",
				       (json_int_t)h->nleases, "streams",
				       (json_int_t)h->nstreams, "pending",
				       (json_int_t)h->npending, "bytes", (json_int_t)h->nbytes,
				       "carried", (json_int_t)h->ncarried),
			     NULL, 0, sn.deadline_us);
	if (sn.rc)
		snprintf(sn.why, sizeof(sn.why), "the end item: %s", sr_strerror(sn.rc));
out:
	if (sn.rc) {
		give_up(h, sn.why);
		return -1;
	}
	return 0;
}

static void on_hello(struct relay_handover *h, const json_t *j)
{
	struct relay *r = h->r;
	const char *listen = json_string_value(json_object_get(j, "listen"));
	json_t *v = json_object_get(j, "v");
	char why[512], lb[SR_ESC_SIZE(128)], wb[64];

	if (!json_is_integer(v) || json_integer_value(v) != HO_VERSION) {
		snprintf(why, sizeof(why), "handover protocol v%d is required", HO_VERSION);
	} else if (!same_listen(listen, r->o->listen)) {
		/* The tunnel listener is passed as it is: it cannot move. */
		snprintf(why, sizeof(why),
			 "relay.listen differs (this relay: %s, the new one: %s); "
			 "the tunnel listener is handed over as it is, so it "
			 "cannot change",
			 r->o->listen, sr_esc_n(listen ? listen : "", 128, lb, sizeof(lb)));
	} else if (r->draining) {
		snprintf(why, sizeof(why), "this relay is draining");
	} else if (r->fleet && !relay_fleet_registered(r->fleet)) {
		/* A new process could not resume this relay's sidecars before
		 * etcd confirms it: their executors would wait. Here they are
		 * served meanwhile. */
		snprintf(why, sizeof(why), "this relay is not registered in the fleet's etcd now "
					   "(unreachable?); its sidecars could not resume on a "
					   "new relay until it is");
	} else {
		why[0] = '\0';
	}
	if (why[0]) {
		SR_WARN("", "takeover by %s refused: %s", who(h->peer_pid, wb, sizeof(wb)),
			why);
		refuse(h, why);
		conn_end(h);
		return;
	}
	SR_INFO("",
		"handover to %s: freezing (no accepts; tunnels closed, their streams "
		"held for the sidecars to resume)",
		who(h->peer_pid, wb, sizeof(wb)));
	h->nleases = h->nstreams = h->npending = 0;
	h->nbytes = h->nretained = 0;
	h->phase = HO_SENT;
	if (freeze(r) != 0) {
		give_up(h, "a lease's streams are still carried by a session");
		return;
	}
	if (send_state(h) == 0)
		SR_INFO("",
			"handover to %s: state sent (%zu leases, %zu executor connections, "
			"%" PRIu64 " bytes, %zu waiting) in %" PRIu64
			" ms; waiting for its commit",
			who(h->peer_pid, wb, sizeof(wb)), h->nleases, h->nstreams, h->nbytes,
			h->npending, (sr_now_us() - h->t0_us) / 1000u);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_handover *h = arg;
	struct ho_msg *m = malloc(sizeof(*m));
	json_t *j;
	int rc;
	char why[320], eb[SR_ESC_SIZE(200)];

	if (!m) {
		give_up(h, "out of memory");
		return;
	}
	rc = ho_recv(h->fd, m, 0);
	if (rc == SR_EBUSY) {
		free(m);
		return;
	}
	if (rc) {
		free(m);
		give_up(h,
			rc == SR_ECLOSED ? "the new relay went away" : "bad handover message");
		return;
	}
	ho_msg_close_fds(m); /* the new relay passes us none */
	j = ho_json(m);
	if (m->type == HO_HELLO && h->phase == HO_WAIT_HELLO && j) {
		on_hello(h, j);
	} else if (m->type == HO_READY && h->phase == HO_SENT) {
		commit(h, j);
	} else if (m->type == HO_REFUSE) {
		const char *e = json_string_value(json_object_get(j, "error"));
		snprintf(why, sizeof(why), "the new relay refused: %s",
			 sr_esc_n(e ? e : "(no reason)", 200, eb, sizeof(eb)));
		give_up(h, why);
	} else {
		give_up(h, "unexpected handover message");
	}
	json_decref(j);
	free(m);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct relay_handover *h = arg;
	struct relay *r = h->r;
	struct timeval tv = sr_tv_ms(r->o->handover_timeout_ms);
	pid_t pid = 0;

	if (!peer_allowed(fd, &pid)) {
		SR_WARN("",
			"handover socket: connection from pid %ld refused: not this relay's "
			"user nor root",
			(long)pid);
		close(fd);
		return;
	}
	if (h->phase != HO_IDLE) {
		int keep = h->fd;
		char wb[64], wb2[64];

		SR_WARN("", "takeover by %s refused: a handover to %s is under way already",
			who(pid, wb, sizeof(wb)), who(h->peer_pid, wb2, sizeof(wb2)));
		h->fd = fd;
		refuse(h, "a handover is under way already");
		h->fd = keep;
		close(fd);
		return;
	}
	h->fd = fd;
	h->peer_pid = pid;
	h->t0_us = sr_now_us();
	h->rev = event_new(r->base, fd, EV_READ | EV_PERSIST, read_cb, h);
	h->timer = evtimer_new(r->base, timeout_cb, h);
	if (!h->rev || !h->timer) {
		conn_end(h);
		return;
	}
	h->phase = HO_WAIT_HELLO;
	event_add(h->rev, NULL);
	evtimer_add(h->timer, &tv);
}

/* ---- the socket ------------------------------------------------------------------------ */

/* Bind path for a relay; a live relay there is not ours to replace (that is
 * what --takeover is for), a dead one's socket file is. */
static int bind_path(struct relay_handover *h, const char *path)
{
	struct sockaddr_un sa;
	struct stat stt;
	int fd, rc;
	mode_t old;
	char dir[sizeof(sa.sun_path)], *slash;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		SR_WARN("", "handover socket %s: path too long; live handover is off", path);
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash && slash != dir)
		*slash = '\0';
	else if (slash)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), ".");
	if (stat(dir, &stt) != 0 || !S_ISDIR(stt.st_mode)) {
		SR_INFO("", "handover socket %s: no directory %s; live handover is off", path,
			dir);
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (lstat(path, &stt) == 0) {
		if (!S_ISSOCK(stt.st_mode)) {
			SR_WARN(
			    "",
			    "handover socket %s: a file that is not a socket is in the way; "
			    "live handover is off",
			    path);
			close(fd);
			return -1;
		}
		int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		rc = probe >= 0 ? connect(probe, (struct sockaddr *)&sa, sizeof(sa)) : -1;
		if (probe >= 0)
			close(probe);
		if (rc == 0) {
			SR_WARN(
			    "",
			    "handover socket %s: a running relay answers there (start with "
			    "--takeover to take over from it); live handover is off for this "
			    "one",
			    path);
			close(fd);
			return -1;
		}
		unlink(path); /* a relay that is gone left it */
	}
	/* Mode 0600 from the start: umask, not chmod after bind (a race). */
	old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc != 0 || listen(fd, 4) != 0) {
		SR_WARN("", "handover socket %s: %s; live handover is off", path,
			strerror(errno));
		close(fd);
		return -1;
	}
	h->own_path = 1;
	return fd;
}

int relay_handover_start(struct relay *r, int fd, char *err, size_t errlen)
{
	struct relay_handover *h = calloc(1, sizeof(*h));
	const char *path = r->o->handover_socket;

	if (!h) {
		if (fd >= 0)
			close(fd);
		sr_seterr(err, errlen, "out of memory");
		return SR_ENOMEM;
	}
	h->r = r;
	h->fd = -1;
	h->admin_fd = -1;
	r->ho = h;
	if (path)
		snprintf(h->path, sizeof(h->path), "%s", path);
	if (fd < 0 && path && *path)
		fd = bind_path(h, path);
	if (fd < 0)
		return 0;
	/* Made disabled and enabled here: libevent enables it itself but
	 * ignores a failed event_add, leaving a socket that never accepts. */
	h->lev = evconnlistener_new(r->base, accept_cb, h,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
				    0, fd);
	if (!h->lev || evconnlistener_enable(h->lev) != 0) {
		if (h->lev) {
			evconnlistener_free(h->lev); /* closes fd */
			h->lev = NULL;
		} else {
			close(fd);
		}
		if (h->own_path)
			unlink(h->path);
		h->own_path = 0;
		sr_seterr(err, errlen, "out of memory");
		return SR_ENOMEM;
	}
	SR_INFO("",
		"handover socket %s: a new relay can take over from this one "
		"(sparkrelay relay --takeover)",
		h->path);
	return 0;
}

int relay_handover_busy(const struct relay *r)
{
	return r->ho && (r->ho->phase == HO_SENT || r->ho->phase == HO_TAKEN);
}

void relay_set_admin_listener(struct relay *r, int fd, const char *listen)
{
	if (!r->ho)
		return;
	r->ho->admin_fd = fd;
	snprintf(r->ho->admin_listen, sizeof(r->ho->admin_listen), "%s", listen ? listen : "");
}

int relay_handed_over(const struct relay *r)
{
	return r->handed_over;
}

void relay_handover_free(struct relay *r)
{
	struct relay_handover *h = r->ho;

	if (!h)
		return;
	if (h->phase == HO_SENT) {
		/* Leaving while frozen (a second signal): the same cut as
		 * give_up. A commit that came first makes the connections the
		 * new relay's; otherwise they are ours, and end with us. */
		struct ho_msg *m = malloc(sizeof(*m));
		shutdown(h->fd, SHUT_RDWR);
		while (m && ho_recv(h->fd, m, 0) == 0) {
			ho_msg_close_fds(m);
			if (m->type == HO_READY) {
				h->phase = HO_GONE;
				forget_all(r);
				break;
			}
		}
		free(m);
	} else if (h->phase == HO_TAKEN || h->phase == HO_ABANDONED) {
		/* The new side, not committed: the old relay keeps everything;
		 * only our descriptors go. */
		if (h->phase == HO_TAKEN)
			refuse(h, "the new relay stopped before it committed");
		forget_all(r);
	}
	conn_end(h);
	if (h->lev)
		evconnlistener_free(h->lev);
	if (h->own_path && h->path[0])
		unlink(h->path);
	r->ho = NULL;
	free(h);
}

/* ---- new side ------------------------------------------------------------------------ */

struct take {
	struct event_base *base;
	struct relay_opts *o;
	struct relay *r;
	int fd;
	uint64_t deadline_us;
	int *admin_fd;
	struct relay_lease_ext *lx; /* the lease whose streams come now */
	json_t *group;		    /* its group's state, restored after them */
	uint64_t leases, streams, pending, bytes, carried;
	int adopted_path; /* the handover listener came with it */
	pid_t old_pid;
	struct ho_msg m;
	char err[512];
};

static int take_fail(struct take *tk, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int take_fail(struct take *tk, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tk->err, sizeof(tk->err), fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

static int j_u64(const json_t *o, const char *key, uint64_t *v)
{
	json_t *x = json_object_get(o, key);

	if (!json_is_integer(x) || json_integer_value(x) < 0)
		return -1;
	*v = (uint64_t)json_integer_value(x);
	return 0;
}

static const char *j_str(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

/* A pool, tenant or route name as the configuration allows it (conf_table.c):
 * they reach log lines and metrics labels as they are. */
static int valid_name(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 1 || n > 63)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
			return 0;
	return 1;
}

static int pool_same(const struct relay_pool_opts *a, const struct relay_pool_opts *b)
{
	return relay_str_eq(a->bind_address, b->bind_address) &&
	       relay_str_eq(a->advertise_host, b->advertise_host) &&
	       a->port_min == b->port_min && a->port_max == b->port_max &&
	       a->max_leases == b->max_leases && a->backlog == b->backlog;
}

/* The pool a taken-over lease goes to: the new configuration's pool of that
 * name if it is unchanged, else a retired one with the old settings (as a
 * reload would have left it: its leases keep their ports and advertised
 * host until they end, it makes no new ones). */
static struct relay_pool_rt *take_pool(struct take *tk, const json_t *pj)
{
	static const struct relay_lease_cbs lcbs = {.on_accept = relay_exec_on_accept,
						    .on_expire = relay_exec_on_expire};
	struct relay *r = tk->r;
	struct relay_pool_opts po;
	struct relay_pool_rt *pr;
	const char *name = j_str(pj, "name");
	uint64_t v[4];

	memset(&po, 0, sizeof(po));
	if (!valid_name(name) || j_u64(pj, "port_min", &v[0]) || j_u64(pj, "port_max", &v[1]) ||
	    j_u64(pj, "max_leases", &v[2]) || j_u64(pj, "backlog", &v[3]) || v[0] < 1 ||
	    v[0] > v[1] || v[1] > 65535 || v[2] > 65535 || v[3] > 65535)
		return NULL;
	po.bind_address = (char *)j_str(pj, "bind");
	po.advertise_host = (char *)j_str(pj, "advertise");
	po.port_min = (uint32_t)v[0];
	po.port_max = (uint32_t)v[1];
	po.max_leases = (uint32_t)v[2];
	po.backlog = (uint32_t)v[3];
	for (pr = r->pools; pr; pr = pr->next)
		if (strcmp(pr->name, name) == 0 && pool_same(&pr->opts, &po))
			return pr;
	pr = calloc(1, sizeof(*pr));
	if (!pr)
		return NULL;
	pr->retired = 1;
	pr->name = strdup(name);
	pr->opts = po;
	pr->opts.bind_address = po.bind_address ? strdup(po.bind_address) : NULL;
	pr->opts.advertise_host = po.advertise_host ? strdup(po.advertise_host) : NULL;
	pr->t = relay_lease_table_new(r->base, &po, &lcbs, r);
	if (!pr->name || !pr->t || (po.bind_address && !pr->opts.bind_address) ||
	    (po.advertise_host && !pr->opts.advertise_host)) {
		relay_pool_free(pr);
		return NULL;
	}
	pr->next = r->pools;
	r->pools = pr;
	SR_INFO("",
		"pool %s: kept with its old settings for the leases taken over (ports "
		"%u-%u); the new configuration changed or dropped it",
		name, po.port_min, po.port_max);
	return pr;
}

/* The rules of a lease whose route or tenant the new configuration lacks:
 * a policy of its own with that route (its executor CIDRs) and tenant (its
 * limits), as a reload that removed them would have kept. */
static struct relay_pol *rules_pol(struct take *tk, const struct relay_pool_rt *pr,
				   const char *route, const char *tenant, const json_t *rules)
{
	static char never[] =
	    "0000000000000000000000000000000000000000000000000000000000000000";
	struct relay_policy_opts *po = calloc(1, sizeof(*po));
	struct relay_pol *pol = calloc(1, sizeof(*pol));
	json_t *cidrs = json_object_get(rules, "executor_cidrs"), *c;
	uint64_t lim[3];
	char why[256];
	size_t i;

	if (!po || !pol || !json_is_array(cidrs) || json_array_size(cidrs) > RELAY_MAX_CIDRS ||
	    j_u64(rules, "leases", &lim[0]) || j_u64(rules, "connections", &lim[1]) ||
	    j_u64(rules, "pending", &lim[2]))
		goto fail;
	pol->refs = 1;
	pol->implicit_tenants = json_is_true(json_object_get(rules, "implicit_tenants"));
	po->npools = 1;
	po->pools[0].name = pr->name;
	po->pools[0].pool = pr->opts;
	if (!pol->implicit_tenants) {
		/* Matches no sidecar: only its limits matter here. */
		po->ntenants = 1;
		po->tenants[0].name = (char *)tenant;
		po->tenants[0].token_sha256[0] = never;
		po->tenants[0].ntoken = 1;
		po->tenants[0].max_leases = (uint32_t)lim[0];
		po->tenants[0].max_connections = (uint32_t)lim[1];
		po->tenants[0].max_pending = (uint32_t)lim[2];
	}
	po->nroutes = 1;
	po->routes[0].name = (char *)route;
	po->routes[0].tenant = (char *)"*";
	po->routes[0].pool = pr->name;
	json_array_foreach(cidrs, i, c)
	{
		if (!json_is_string(c))
			goto fail;
		po->routes[0].executor_cidrs[i] = (char *)json_string_value(c);
	}
	po->routes[0].nexecutor_cidrs = (unsigned)json_array_size(cidrs);
	pol->p = relay_policy_new(po, &pr->opts, why, sizeof(why));
	if (!pol->p) {
		take_fail(tk, "the rules of route %s: %s", route, why);
		goto fail;
	}
	free(po);
	return pol;
fail:
	free(po);
	free(pol);
	return NULL;
}

/* The lease before: its streams are all in, its group can be restored. */
static int take_close_lease(struct take *tk)
{
	int rc = 0;

	if (tk->lx && tk->group &&
	    tun_handover_group_restore(tk->lx->group, tk->group, tk->err, sizeof(tk->err)) != 0)
		rc = SR_EINVAL;
	json_decref(tk->group);
	tk->group = NULL;
	tk->lx = NULL;
	return rc;
}

static int take_lease(struct take *tk, const json_t *j)
{
	struct relay *r = tk->r;
	struct relay_lease_state ls;
	struct relay_lease_ext *lx = NULL;
	struct relay_pool_rt *pr;
	struct relay_lease *l;
	const json_t *ports = json_object_get(j, "ports");
	const char *tenant = j_str(j, "tenant"), *route = j_str(j, "route"),
		   *idkey = j_str(j, "idkey");
	const char *src = j_str(j, "src"), *prev = j_str(j, "prev_resume");
	uint64_t roles, ttl, conns, detached, grace;
	struct tun_group_opts go = {.hold_ms = r->o->resume_hold_s * 1000u};
	char gctx[96], host[256];
	uint16_t sport;
	size_t k = 0;
	int rt, tn, rc;

	memset(&ls, 0, sizeof(ls));
	ls.id = j_str(j, "id");
	ls.app = j_str(j, "app");
	ls.resume = j_str(j, "resume");
	if (j_u64(j, "roles", &roles) || j_u64(j, "ttl_s", &ttl) ||
	    j_u64(j, "conns_total", &conns) || j_u64(j, "detached_ms", &detached) ||
	    j_u64(j, "grace_left_ms", &grace) || !json_is_array(ports) ||
	    json_array_size(ports) != TUN_PORT_MAX || !valid_name(tenant) ||
	    !valid_name(route) || !idkey || strlen(idkey) >= RELAY_IDKEY_MAX || !src ||
	    ttl > TUN_CTL_TTL_MAX || roles > 0xff || !ls.id || !tun_ctl_valid_lease_id(ls.id) ||
	    !ls.app || !tun_ctl_valid_app(ls.app))
		return take_fail(tk, "a lease item is malformed");
	ls.roles = (unsigned)roles;
	ls.ttl_s = (uint32_t)ttl;
	for (int i = 0; i < TUN_PORT_MAX; i++) {
		json_t *p = json_array_get(ports, (size_t)i);
		if (!json_is_integer(p) || json_integer_value(p) < 0 ||
		    json_integer_value(p) > 65535)
			return take_fail(tk, "a lease item is malformed");
		ls.ports[i] = (uint16_t)json_integer_value(p);
		ls.fds[i] = -1;
		if (ls.ports[i] && k < tk->m.nfds) {
			ls.fds[i] = tk->m.fds[k];
			tk->m.fds[k++] = -1;
		}
	}
	pr = take_pool(tk, json_object_get(j, "pool"));
	if (!pr) {
		for (int i = 0; i < TUN_PORT_MAX; i++)
			if (ls.fds[i] >= 0)
				close(ls.fds[i]);
		return take_fail(tk, "lease %s: its pool is malformed (or out of memory)",
				 ls.id);
	}
	rc = relay_lease_adopt(pr->t, &ls, &l); /* steals the fds */
	if (rc)
		return take_fail(tk, "lease %s: %s", ls.id,
				 rc == SR_EINVAL ? "its ports, id or token do not fit its pool"
						 : sr_strerror(rc));
	lx = calloc(1, sizeof(*lx));
	snprintf(gctx, sizeof(gctx), "lease=%s", relay_lease_id(l));
	if (!lx || !(lx->group = tun_group_new(r->base, TUN_ROLE_RELAY, &go, gctx))) {
		free(lx);
		relay_lease_release(l);
		return take_fail(tk, "out of memory");
	}
	tun_group_set_lease(lx->group, relay_lease_id(l));
	(void)tun_group_freeze(lx->group);
	lx->relay = r;
	lx->lease = l;
	lx->pool = pr;
	snprintf(lx->tenant_name, sizeof(lx->tenant_name), "%s", tenant);
	snprintf(lx->route_name, sizeof(lx->route_name), "%s", route);
	snprintf(lx->idkey, sizeof(lx->idkey), "%s", idkey);
	if (prev && *prev && tun_ctl_valid_resume(prev))
		snprintf(lx->prev_resume, sizeof(lx->prev_resume), "%s", prev);
	lx->conns_total = conns;
	lx->detached_us = detached * 1000u < sr_now_us() ? sr_now_us() - detached * 1000u : 1;
	lx->ho_grace_ms = grace;
	lx->ho_base_us = sr_now_us();
	if (*src && sr_split_hostport(src, host, sizeof(host), &sport, 0) == 0) {
		socklen_t sl;
		(void)sr_parse_addr(host, sport, &lx->src, &sl);
	}
	relay_lease_set_data(l, lx);
	rt = relay_policy_route_find(r->pol->p, route);
	tn = relay_policy_tenant_find(r->pol->p, tenant);
	if (rt >= 0 && tn >= 0) {
		lx->pol = r->pol;
		lx->pol->refs++;
		lx->route = rt;
		lx->tenant = tn;
	} else {
		lx->pol = rules_pol(tk, pr, route, tenant, json_object_get(j, "rules"));
		if (!lx->pol) {
			relay_release_lease(lx);
			return tk->err[0]
				   ? SR_EINVAL
				   : take_fail(tk, "lease %s: its rules are malformed", ls.id);
		}
		SR_INFO(gctx,
			"route %s or tenant %s is not in the new configuration: the lease "
			"keeps the rules it was made under",
			route, tenant);
	}
	if (relay_tenant_add(r, lx) != 0) {
		relay_release_lease(lx);
		return take_fail(tk, "out of memory");
	}
	tk->lx = lx;
	tk->group = json_incref(json_object_get(j, "group"));
	tk->leases++;
	return 0;
}

/* DATA messages until in + out bytes have come. */
static int take_data(struct take *tk, struct evbuffer *in, uint64_t nin, struct evbuffer *out,
		     uint64_t nout)
{
	uint64_t got = 0, want = nin + nout;

	while (got < want) {
		int rc = ho_recv(tk->fd, &tk->m, tk->deadline_us);
		size_t n, a;
		if (rc)
			return take_fail(tk, "stream bytes: %s", sr_strerror(rc));
		ho_msg_close_fds(&tk->m);
		if (tk->m.type != HO_DATA || tk->m.len == 0 || tk->m.len > want - got)
			return take_fail(tk, "stream bytes: an unexpected message");
		n = tk->m.len;
		a = got < nin ? (size_t)(nin - got < n ? nin - got : n) : 0;
		if ((a && evbuffer_add(in, tk->m.buf, a) != 0) ||
		    (n > a && evbuffer_add(out, tk->m.buf + a, n - a) != 0))
			return take_fail(tk, "out of memory");
		got += n;
	}
	tk->bytes += want;
	return 0;
}

static int take_stream(struct take *tk, json_t *j)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	uint64_t nin = 0, nout = 0;
	int fd = -1, rc;

	if (tk->m.nfds) {
		fd = tk->m.fds[0];
		tk->m.fds[0] = -1;
	}
	if (!in || !out) {
		rc = take_fail(tk, "out of memory");
	} else if (!tk->lx || j_u64(j, "in", &nin) || j_u64(j, "out", &nout) ||
		   nin > TUN_HO_BUF_MAX || nout > TUN_HO_BUF_MAX) {
		rc = take_fail(tk, "a stream item is malformed or comes before its lease");
	} else if ((rc = take_data(tk, in, nin, out, nout)) == 0) {
		json_object_del(j, "kind");
		rc =
		    tun_handover_adopt(tk->lx->group, j, fd, in, out, tk->err, sizeof(tk->err));
		fd = -1;
		tk->streams++;
	}
	if (fd >= 0)
		close(fd);
	if (in)
		evbuffer_free(in);
	if (out)
		evbuffer_free(out);
	return rc;
}

static int take_pending(struct take *tk, const json_t *j)
{
	uint64_t conn, role, waited, now = sr_now_us();
	const char *peer = j_str(j, "peer");
	int fd = -1;

	if (tk->m.nfds) {
		fd = tk->m.fds[0];
		tk->m.fds[0] = -1;
	}
	if (!tk->lx || fd < 0 || j_u64(j, "conn", &conn) || j_u64(j, "role", &role) ||
	    role >= TUN_PORT_MAX ||
	    !relay_lease_port(tk->lx->lease, (enum tun_port_role)role) ||
	    j_u64(j, "waited_ms", &waited) || !peer || strlen(peer) >= SR_ADDRSTRLEN ||
	    strspn(peer, "0123456789abcdefABCDEF.:[]") != strlen(peer)) {
		if (fd >= 0)
			close(fd);
		return take_fail(tk, "a waiting executor item is malformed");
	}
	if (waited * 1000u > now)
		waited = now / 1000u;
	if (!relay_exec_adopt_pending(tk->lx, fd, (enum tun_port_role)role, conn, peer,
				      now - waited * 1000u))
		return take_fail(tk, "out of memory");
	tk->pending++;
	return 0;
}

static void take_stats(struct relay *r, const json_t *st)
{
	const json_t *refused = json_object_get(st, "refused");
	uint64_t v;

#define GET(field)                                                                             \
	if (j_u64(st, #field, &v) == 0)                                                        \
		r->st.field = v;
	GET(tunnels_accepted);
	GET(handshake_failures);
	GET(accept_errors);
	GET(leases_granted);
	GET(leases_resumed);
	GET(leases_expired);
	GET(leases_reclaimed);
	GET(executor_conns);
	GET(executor_refused);
	GET(reloads_ok);
	GET(reloads_failed);
	GET(handovers);
#undef GET
	if (j_u64(st, "bytes_to_sidecar", &v) == 0)
		r->closed_bytes_in = v;
	if (j_u64(st, "bytes_to_executor", &v) == 0)
		r->closed_bytes_out = v;
	if (j_u64(st, "streams_opened", &v) == 0)
		r->closed_streams_opened = v;
	if (j_u64(st, "buffer_throttled", &v) == 0)
		r->closed_throttled = v;
	for (size_t i = 0; i < RELAY_REFUSE_MAX && i < json_array_size(refused); i++) {
		json_t *x = json_array_get(refused, i);
		if (json_is_integer(x) && json_integer_value(x) >= 0)
			r->st.refused[i] = (uint64_t)json_integer_value(x);
	}
}

/* The first item: the relay itself, around the listeners it passes. */
static int take_relay(struct take *tk, const json_t *j)
{
	const json_t *names = json_object_get(j, "fds"), *v = json_object_get(j, "v");
	const char *listen = j_str(j, "listen"), *admin = j_str(j, "admin_listen");
	const char *path = j_str(j, "handover_socket"), *peer = j_str(j, "peer_listen");
	struct relay_adopt ad = {-1, -1, -1};
	uint64_t next_id;
	char err[512];
	size_t i;
	json_t *n;

	if (!json_is_integer(v) || json_integer_value(v) != HO_VERSION ||
	    !json_is_array(names) || json_array_size(names) != tk->m.nfds ||
	    j_u64(j, "next_conn_id", &next_id) || !listen)
		return take_fail(tk, "the relay item is malformed");
	if (!same_listen(listen, tk->o->listen)) {
		char lb[SR_ESC_SIZE(128)];
		return take_fail(tk, "relay.listen differs (%s here, %s there)", tk->o->listen,
				 sr_esc_n(listen, 128, lb, sizeof(lb)));
	}
	json_array_foreach(names, i, n)
	{
		const char *name = json_string_value(n);
		int *fd = &tk->m.fds[i];
		if (!name)
			continue;
		if (strcmp(name, "listen") == 0) {
			ad.listen_fd = *fd;
			*fd = -1;
		} else if (strcmp(name, "admin") == 0 && admin && tk->o->admin_listen &&
			   strcmp(admin, tk->o->admin_listen) == 0) {
			*tk->admin_fd = *fd;
			*fd = -1;
		} else if (strcmp(name, "handover") == 0 && path && tk->o->handover_socket &&
			   strcmp(path, tk->o->handover_socket) == 0) {
			ad.handover_fd = *fd;
			*fd = -1;
		} else if (strcmp(name, "peer") == 0 && peer && tk->o->fleet.netcd &&
			   tk->o->fleet.peer_listen && strcmp(peer, tk->o->fleet.peer_listen) == 0) {
			/* The fleet's peer port: bound once, as the others. */
			ad.peer_fd = *fd;
			*fd = -1;
		}
	}
	if (ad.listen_fd < 0) {
		if (ad.handover_fd >= 0)
			close(ad.handover_fd);
		return take_fail(tk, "the relay item carries no tunnel listener");
	}
	tk->adopted_path = ad.handover_fd >= 0;
	tk->r = relay_new_adopt(tk->base, tk->o, &ad, err, sizeof(err));
	if (!tk->r)
		return take_fail(tk, "%s", err);
	tk->r->next_conn_id = next_id;
	take_stats(tk->r, json_object_get(j, "stats"));
	/* Until it commits, what it holds is the old relay's (relay_free forgets). */
	tk->r->ho->phase = HO_TAKEN;
	tk->r->ho->peer_pid = tk->old_pid;
	return 0;
}

/* A connection the old relay carries to another relay of the fleet. */
static int take_carried(struct take *tk, const json_t *j)
{
	const json_t *in = json_object_get(j, "inpipe"), *eof = json_object_get(j, "eof");
	const json_t *shut = json_object_get(j, "shut"), *by = json_object_get(j, "bytes");
	const char *lease = j_str(j, "lease");
	struct fleet_splice_state st;
	uint64_t conn, role;
	int rc;

	memset(&st, 0, sizeof(st));
	if (tk->m.nfds != 6 || !lease || j_u64(j, "conn", &conn) || j_u64(j, "role", &role) ||
	    role >= TUN_PORT_MAX || json_array_size(in) != 2 || json_array_size(eof) != 2 ||
	    json_array_size(shut) != 2 || json_array_size(by) != 2)
		return take_fail(tk, "a carried connection item is malformed");
	for (size_t k = 0; k < 2; k++) {
		json_t *i = json_array_get(in, k), *b = json_array_get(by, k);
		if (!json_is_integer(i) || json_integer_value(i) < 0 ||
		    json_integer_value(i) > 64 * 1024 * 1024 || !json_is_boolean(json_array_get(eof, k)) ||
		    !json_is_boolean(json_array_get(shut, k)) || !json_is_integer(b) ||
		    json_integer_value(b) < 0)
			return take_fail(tk, "a carried connection item is malformed");
		st.inpipe[k] = (size_t)json_integer_value(i);
		st.eof[k] = json_is_true(json_array_get(eof, k));
		st.shut[k] = json_is_true(json_array_get(shut, k));
		st.bytes[k] = (uint64_t)json_integer_value(b);
	}
	if (!tk->r->fleet)
		return take_fail(tk, "the running relay carries connections to its fleet, and "
				     "this one has no relay.fleet");
	st.a = tk->m.fds[0];
	st.b = tk->m.fds[1];
	st.pipe[0][0] = tk->m.fds[2];
	st.pipe[0][1] = tk->m.fds[3];
	st.pipe[1][0] = tk->m.fds[4];
	st.pipe[1][1] = tk->m.fds[5];
	for (int i = 0; i < 6; i++)
		tk->m.fds[i] = -1;
	rc = relay_fleet_adopt_carried(tk->r->fleet, lease, (int)role, conn, &st);
	if (rc)
		return take_fail(tk, "a carried connection: %s", sr_strerror(rc));
	tk->carried++;
	return 0;
}

static int take_end(struct take *tk, const json_t *j)
{
	uint64_t l, s, p, b, c = 0;

	if (j_u64(j, "leases", &l) || j_u64(j, "streams", &s) || j_u64(j, "pending", &p) ||
	    j_u64(j, "bytes", &b) || (json_object_get(j, "carried") && j_u64(j, "carried", &c)))
		return take_fail(tk, "the end item is malformed");
	if (c != tk->carried)
		return take_fail(tk, "the state is incomplete: %" PRIu64 "/%" PRIu64
				     " carried connections",
				 tk->carried, c);
	if (l != tk->leases || s != tk->streams || p != tk->pending || b != tk->bytes)
		return take_fail(tk,
				 "the state is incomplete: %" PRIu64 "/%" PRIu64 " leases, "
				 "%" PRIu64 "/%" PRIu64 " streams, %" PRIu64 "/%" PRIu64
				 " waiting, %" PRIu64 "/%" PRIu64 " bytes",
				 tk->leases, l, tk->streams, s, tk->pending, p, tk->bytes, b);
	return 0;
}

/* Connect to path; the relay there must run as our user or root. */
static int take_connect(struct take *tk, const char *path, int *none)
{
	struct sockaddr_un sa;
	int fd;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa.sun_path))
		return take_fail(tk, "relay.handover_socket %s: path too long", path);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return take_fail(tk, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;
		close(fd);
		if (e == ENOENT || e == ECONNREFUSED)
			*none = 1;
		return take_fail(tk, "no relay answers on %s (%s)", path, strerror(e));
	}
	if (!peer_allowed(fd, &tk->old_pid)) {
		close(fd);
		return take_fail(tk, "the relay on %s runs as another user", path);
	}
	tk->fd = fd;
	return 0;
}

/* The running relay's refusal, as our error (tk->err). */
static int take_refused(struct take *tk, const json_t *j)
{
	const char *e = j_str(j, "error");
	char eb[SR_ESC_SIZE(300)];

	return take_fail(tk, "the running relay refused: %s",
			 sr_esc_n(e ? e : "(no reason)", 300, eb, sizeof(eb)));
}

/* The connection ended before our greeting went out or an answer came: a
 * relay that refuses at once (a handover is under way already) sends its
 * reason and closes, and with our greeting unread there the close reaches us
 * as a reset first, ahead of the reason still queued. Read what is queued;
 * 1 if it was a refusal (tk->err says why). */
static int take_refused_at_once(struct take *tk)
{
	for (int i = 0; i < 2; i++) {
		int rc = ho_recv(tk->fd, &tk->m, 0);
		json_t *j;

		if (rc == SR_ECLOSED)
			continue; /* the reset, read once; the queue is behind it */
		if (rc)
			return 0;
		j = tk->m.type == HO_REFUSE ? ho_json(&tk->m) : NULL;
		ho_msg_close_fds(&tk->m);
		if (j) {
			take_refused(tk, j);
			json_decref(j);
			return 1;
		}
		return 0;
	}
	return 0;
}

struct relay *relay_takeover(struct event_base *base, struct relay_opts *o, int *admin_fd,
			     int *none, char *err, size_t errlen)
{
	struct take *tk = calloc(1, sizeof(*tk));
	struct relay *r = NULL;
	int rc, first = 1;
	json_t *j = NULL;

	*admin_fd = -1;
	*none = 0;
	if (!tk) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	tk->base = base;
	tk->o = o;
	tk->fd = -1;
	tk->admin_fd = admin_fd;
	tk->deadline_us = sr_now_us() + (uint64_t)o->handover_timeout_ms * 1000u;
	if (!o->handover_socket || !*o->handover_socket) {
		*none = 1;
		rc = take_fail(tk, "relay.handover_socket is not set");
		goto out;
	}
	rc = take_connect(tk, o->handover_socket, none);
	if (rc)
		goto out;
	rc = ho_send_json(tk->fd, HO_HELLO,
			  json_pack("{s:i,s:s,s:i,s:s}", "v", HO_VERSION, "version", SR_VERSION,
				    "pid", (int)getpid(), "listen", o->listen),
			  NULL, 0, tk->deadline_us);
	if (rc) {
		if (rc != SR_ECLOSED || !take_refused_at_once(tk))
			take_fail(tk, "cannot greet the running relay: %s", sr_strerror(rc));
		goto out;
	}
	for (;;) {
		const char *kind;
		rc = ho_recv(tk->fd, &tk->m, tk->deadline_us);
		if (rc) {
			if (rc == SR_ECLOSED && first && take_refused_at_once(tk))
				goto out;
			take_fail(tk,
				  rc == SR_ECLOSED ? "the running relay closed the connection"
						   : "receiving its state: %s",
				  sr_strerror(rc));
			goto out;
		}
		j = ho_json(&tk->m);
		if (tk->m.type == HO_REFUSE) {
			rc = take_refused(tk, j);
			goto out;
		}
		kind = j_str(j, "kind");
		if (tk->m.type != HO_ITEM || !kind || first != (strcmp(kind, "relay") == 0)) {
			rc = take_fail(tk, "an unexpected message from the running relay");
			goto out;
		}
		first = 0;
		if (strcmp(kind, "relay") == 0) {
			rc = take_relay(tk, j);
		} else if (strcmp(kind, "lease") == 0) {
			rc = take_close_lease(tk);
			if (!rc)
				rc = take_lease(tk, j);
		} else if (strcmp(kind, "stream") == 0) {
			rc = take_stream(tk, j);
		} else if (strcmp(kind, "pending") == 0) {
			rc = take_pending(tk, j);
		} else if (strcmp(kind, "carried") == 0) {
			rc = take_close_lease(tk);
			if (!rc)
				rc = take_carried(tk, j);
		} else if (strcmp(kind, "end") == 0) {
			rc = take_close_lease(tk);
			if (!rc)
				rc = take_end(tk, j);
			if (!rc)
				break;
		} else {
			rc = take_fail(tk, "an item of unknown kind");
		}
		ho_msg_close_fds(&tk->m);
		json_decref(j);
		j = NULL;
		if (rc)
			goto out;
	}
	r = tk->r;
	r->ho->fd = tk->fd;
	tk->fd = -1;
	r->ho->nleases = (size_t)tk->leases;
	r->ho->nstreams = (size_t)tk->streams;
	r->ho->npending = (size_t)tk->pending;
	r->ho->ncarried = (size_t)tk->carried;
	r->ho->nbytes = tk->bytes;
	r->ho->own_path = 0; /* the old relay's until the commit */
	r->ho->t0_us = tk->deadline_us - (uint64_t)o->handover_timeout_ms * 1000u;
	if (tk->adopted_path)
		r->ho->admin_fd = -2; /* marks "handover listener adopted" until the commit */
	tk->r = NULL;
out:
	ho_msg_close_fds(&tk->m);
	json_decref(j);
	if (tk->group)
		json_decref(tk->group);
	if (tk->r) {
		/* It gave up: the old relay keeps everything, told why. */
		tk->r->ho->fd = tk->fd;
		tk->fd = -1;
		refuse(tk->r->ho, tk->err);
		tk->r->ho->phase = HO_ABANDONED;
		relay_free(tk->r);
	} else if (tk->fd >= 0) {
		if (!r)
			(void)ho_send_json(tk->fd, HO_REFUSE,
					   json_pack("{s:s}", "error", tk->err), NULL, 0,
					   sr_now_us() + 1000000u);
		close(tk->fd);
	}
	if (!r) {
		if (*admin_fd >= 0)
			close(*admin_fd);
		*admin_fd = -1;
		sr_seterr(err, errlen, "%s", tk->err);
	}
	free(tk);
	return r;
}

int relay_takeover_commit(struct relay *r, char *err, size_t errlen)
{
	struct relay_handover *h = r->ho;
	int adopted = h->admin_fd == -2;
	int rc;

	if (h->phase != HO_TAKEN) {
		sr_seterr(err, errlen, "nothing to commit");
		return SR_EINVAL;
	}
	h->admin_fd = -1;
	rc =
	    ho_send_json(h->fd, HO_READY,
			 json_pack("{s:I,s:I,s:b}", "leases", (json_int_t)h->nleases, "streams",
				   (json_int_t)h->nstreams, "handover_socket", adopted),
			 NULL, 0, sr_now_us() + 2000000u);
	if (rc) {
		/* It shut us out first: everything stays the old relay's. */
		h->phase = HO_ABANDONED;
		sr_seterr(err, errlen,
			  "the running relay gave up before the commit (%s): it goes on",
			  sr_strerror(rc));
		return rc;
	}
	h->phase = HO_IDLE;
	conn_end(h);
	h->own_path = adopted;
	r->st.handovers++;
	resume_all(r);
	SR_INFO("",
		"took over in %" PRIu64 " ms: %zu leases, %zu executor connections (%" PRIu64
		" bytes buffered), %zu waiting, %zu carried to other relays; the sidecars "
		"reconnect and resume",
		(sr_now_us() - h->t0_us) / 1000u, h->nleases, h->nstreams, h->nbytes,
		h->npending, h->ncarried);
	return 0;
}

void relay_takeover_abandon(struct relay *r, const char *why)
{
	struct relay_handover *h = r->ho;

	if (!h || h->phase != HO_TAKEN)
		return;
	refuse(h, why);
	h->phase = HO_ABANDONED;
}
