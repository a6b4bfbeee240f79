/* Port leases: see relay_lease.h for the contract.
 *
 * Lifecycle of a lease, as this file implements it:
 *   - relay_lease_create() binds every port and returns the lease DETACHED
 *     with no grace timer running: the caller attaches it right away (the
 *     registering tunnel is its owner). A lease that is never attached and
 *     never detached lives until released or the table is freed.
 *   - relay_lease_detach() starts the grace timer (ttl_s); attach stops it.
 *   - When the timer fires, on_expire runs and then the lease is freed.
 *
 * Re-entrancy: relay_lease_release() must not be called from inside on_accept
 * of the same lease (the listener that is running would be freed under
 * libevent); the owner defers such a release to its own event callback. Inside
 * on_expire a release of that same lease is a no-op, since the table frees it
 * right after on_expire returns. */
#include "relay/relay_lease.h"

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#define LEASE_BACKLOG_DEFAULT 1024
#define LEASE_RESUME_BYTES 32 /* 64 hex characters, < TUN_CTL_RESUME_MAX */
#define LEASE_ID_RANDOM_BYTES 4
#define LEASE_ACCEPT_PAUSE_S 1
#define LEASE_HASH_MIN 64
/* The app name in the log context is escaped and cut to LEASE_CTX_APP bytes. */
#define LEASE_CTX_APP 64
#define LEASE_CTX_MAX (TUN_CTL_LEASE_MAX + SR_ESC_SIZE(LEASE_CTX_APP) + 16)
#define LEASE_PORT_TAKEN (-100) /* internal; outside the SR_E* range */

struct lease_port {
	struct relay_lease *l;
	enum tun_port_role role;
	uint16_t port;               /* 0: role not held */
	struct evconnlistener *lev;  /* owns the bound, listening fd */
	struct event *pause_ev;      /* re-enables after an accept error */
	int nodelay_each;            /* adopted without TCP_NODELAY: set it per socket */
};

struct relay_lease {
	struct relay_lease_table *t;
	struct relay_lease *prev, *next; /* every lease, creation order */
	struct relay_lease *hnext;       /* id hash chain */
	uint32_t hash;
	char id[TUN_CTL_LEASE_MAX];
	char app[TUN_CTL_APP_MAX];
	char resume[2 * LEASE_RESUME_BYTES + 1];
	char ctx[LEASE_CTX_MAX]; /* log context: "lease=.. app=.." */
	unsigned roles;
	uint32_t ttl_s;
	struct lease_port ports[TUN_PORT_MAX];
	struct event *grace_ev;
	uint64_t grace_end_us; /* when the grace timer fires, 0 while none runs */
	void *data;
	int expiring; /* inside on_expire: release is deferred to the timer */
};

struct relay_lease_table {
	struct event_base *base;
	struct relay_pool_opts opts; /* strings owned */
	struct relay_lease_cbs cbs;
	void *arg;
	struct sockaddr_storage bind_ss; /* port filled per candidate */
	socklen_t bind_len;
	int bind_ok; /* bind_address parsed; otherwise create fails SR_EINVAL */
	uint32_t range;  /* port_max - port_min + 1, 0 if the range is invalid */
	uint8_t *held;   /* bitset over the range: port held by a live lease */
	uint32_t cursor; /* offset in the range where the next search starts */
	uint64_t seq;
	struct relay_lease *head, *tail;
	struct relay_lease **buckets;
	size_t nbuckets; /* power of two */
	size_t count;
};

/* ---- small helpers ------------------------------------------------------ */

static uint32_t lease_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a: ids are not secret */
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static int held_get(const struct relay_lease_table *t, uint32_t off)
{
	return (t->held[off >> 3] >> (off & 7)) & 1;
}

static void held_set(struct relay_lease_table *t, uint32_t off, int on)
{
	if (on)
		t->held[off >> 3] |= (uint8_t)(1u << (off & 7));
	else
		t->held[off >> 3] &= (uint8_t)~(1u << (off & 7));
}

/* The app name comes from the network: keep log lines one line and greppable. */
static void lease_make_ctx(struct relay_lease *l)
{
	char app[SR_ESC_SIZE(LEASE_CTX_APP)];

	snprintf(l->ctx, sizeof(l->ctx), "lease=%s app=\"%s\"", l->id,
		 sr_esc_n(l->app, LEASE_CTX_APP, app, sizeof(app)));
}

static void lease_format_ports(const struct relay_lease *l, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int r = 0; r < TUN_PORT_MAX && n < len; r++) {
		if (!l->ports[r].port)
			continue;
		const char *name = tun_port_role_name((enum tun_port_role)r);
		int m = snprintf(buf + n, len - n, "%s%s=%u", n ? " " : "",
				 name ? name : "?", l->ports[r].port);
		if (m < 0)
			break;
		n += (size_t)m;
	}
}

/* ---- id hash ------------------------------------------------------------ */

static int hash_grow(struct relay_lease_table *t)
{
	size_t n = t->nbuckets * 2;
	struct relay_lease **b = calloc(n, sizeof(*b));

	if (!b)
		return SR_ENOMEM;
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct relay_lease *l = t->buckets[i], *nx;
		for (; l; l = nx) {
			nx = l->hnext;
			l->hnext = b[l->hash & (n - 1)];
			b[l->hash & (n - 1)] = l;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
	return 0;
}

static void hash_insert(struct relay_lease_table *t, struct relay_lease *l)
{
	struct relay_lease **b = &t->buckets[l->hash & (t->nbuckets - 1)];
	l->hnext = *b;
	*b = l;
}

static void hash_remove(struct relay_lease_table *t, struct relay_lease *l)
{
	struct relay_lease **p = &t->buckets[l->hash & (t->nbuckets - 1)];
	for (; *p; p = &(*p)->hnext) {
		if (*p == l) {
			*p = l->hnext;
			l->hnext = NULL;
			return;
		}
	}
}

/* ---- listeners ---------------------------------------------------------- */

static void lease_accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
			    struct sockaddr *peer, int peerlen, void *arg)
{
	struct lease_port *p = arg;
	struct relay_lease *l = p->l;
	struct relay_lease_table *t = l->t;

	(void)lev;
	/* TCP_NODELAY: Linux copies it from the listening socket when the
	 * handshake completes (set at bind, before listen()), which saves a call
	 * per connection. A listener adopted without it may hold connections
	 * that completed before we set it: those get it here. */
	if (p->nodelay_each)
		sr_sock_nodelay(fd);
	if (!t->cbs.on_accept) {
		close(fd);
		return;
	}
	/* May hand the lease to code that must not free it here: see top. */
	t->cbs.on_accept(l, p->role, fd, peer, peerlen, t->arg);
}

/* Accept again; if the listener cannot be armed (out of memory), try again
 * after a pause instead of leaving the port deaf. */
static void lease_port_arm(struct lease_port *p)
{
	struct timeval tv = {LEASE_ACCEPT_PAUSE_S, 0};

	if (evconnlistener_enable(p->lev) == 0)
		return;
	SR_WARN(p->l->ctx, "cannot accept on port %u: out of memory; trying again in %d s",
		p->port, LEASE_ACCEPT_PAUSE_S);
	evtimer_add(p->pause_ev, &tv);
}

static void lease_pause_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	lease_port_arm(arg);
}

/* accept() failed with a non-retriable error, typically EMFILE/ENFILE. The
 * pending connection stays in the backlog, so a level-triggered listener
 * would wake the loop again at once: stop this port for a moment instead. */
static void lease_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct lease_port *p = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = {LEASE_ACCEPT_PAUSE_S, 0};

	SR_WARN(p->l->ctx, "accept on port %u failed: %s; pausing %d s", p->port,
		evutil_socket_error_to_string(err), LEASE_ACCEPT_PAUSE_S);
	evconnlistener_disable(lev);
	evtimer_add(p->pause_ev, &tv);
}

/* A listener from a relay older than this one has no TCP_NODELAY, and its
 * queue may hold connections that will never get it from the listener:
 * those are set one by one (lease_accept_cb). */
static void lease_port_nodelay_adopted(struct lease_port *p, int fd)
{
	int nd = 0;
	socklen_t len = sizeof(nd);

	if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nd, &len) != 0 || !nd) {
		p->nodelay_each = 1;
		sr_sock_nodelay(fd);
	}
}

/* Bind and listen on one port into *fdp. Returns 0, LEASE_PORT_TAKEN (try
 * the next port) or a negative SR_E* code. */
static int lease_bind_port(struct relay_lease_table *t, uint16_t port, int *fdp)
{
	struct sockaddr_storage ss = t->bind_ss;
	int one = 1, fd, err;
	int backlog = t->opts.backlog ? (int)t->opts.backlog : LEASE_BACKLOG_DEFAULT;

	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);

	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = errno;
		goto fail;
	}
	/* SO_REUSEADDR lets a released port be bound again while old executor
	 * connections sit in TIME_WAIT; it does not let two listeners share it. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
		err = errno;
		goto fail;
	}
	sr_sock_nodelay(fd); /* before listen(): inherited by every accepted socket */
	if (bind(fd, (struct sockaddr *)&ss, t->bind_len) < 0 || listen(fd, backlog) < 0) {
		err = errno;
		goto fail;
	}
	*fdp = fd;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	/* listen() too can report EADDRINUSE: two SO_REUSEADDR sockets may both
	 * bind a port that neither listens on yet. */
	if (err == EADDRINUSE || err == EACCES)
		return LEASE_PORT_TAKEN;
	SR_WARN("lease", "bind %s port %u: %s", t->opts.bind_address, port, strerror(err));
	if (err == ENOMEM || err == ENOBUFS)
		return SR_ENOMEM;
	if (err == EADDRNOTAVAIL || err == EAFNOSUPPORT)
		return SR_EINVAL; /* bind_address is not usable on this host */
	return SR_EIO;
}

static void lease_port_close(struct relay_lease_table *t, struct lease_port *p)
{
	if (p->pause_ev) {
		event_free(p->pause_ev);
		p->pause_ev = NULL;
	}
	if (p->lev) {
		evconnlistener_free(p->lev); /* closes the fd: LEV_OPT_CLOSE_ON_FREE */
		p->lev = NULL;
	}
	if (p->port) {
		held_set(t, (uint32_t)p->port - t->opts.port_min, 0);
		p->port = 0;
	}
}

/* Take the next free pool port for role p->role. */
static int lease_port_open(struct relay_lease_table *t, struct lease_port *p)
{
	int fd = -1, rc = SR_ENOPORTS;
	uint32_t off = 0, i;

	p->pause_ev = evtimer_new(t->base, lease_pause_cb, p);
	if (!p->pause_ev)
		return SR_ENOMEM;
	for (i = 0; i < t->range; i++) {
		off = (t->cursor + i) % t->range;
		if (held_get(t, off))
			continue;
		rc = lease_bind_port(t, (uint16_t)(t->opts.port_min + off), &fd);
		if (rc == 0)
			break;
		if (rc != LEASE_PORT_TAKEN)
			return rc;
		rc = SR_ENOPORTS;
	}
	if (rc != 0)
		return rc;
	/* backlog 0: the socket already listens with our backlog; libevent's
	 * -1 would call listen() again with its own default of 128. */
	/* Made disabled and enabled here: libevent enables it itself but
	 * ignores a failed event_add, leaving a port that never accepts. */
	p->lev = evconnlistener_new(t->base, lease_accept_cb, p,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
					    LEV_OPT_REUSEABLE | LEV_OPT_DISABLED,
				    0, fd);
	if (!p->lev) {
		close(fd);
		return SR_ENOMEM;
	}
	if (evconnlistener_enable(p->lev) != 0) {
		evconnlistener_free(p->lev); /* closes fd */
		p->lev = NULL;
		return SR_ENOMEM;
	}
	evconnlistener_set_error_cb(p->lev, lease_accept_error_cb);
	p->port = (uint16_t)(t->opts.port_min + off);
	held_set(t, off, 1);
	/* Advance past the port just taken so that a port released a moment
	 * ago is not handed to the next sidecar while executors of the old
	 * lease may still be retrying it. */
	t->cursor = (off + 1) % t->range;
	return 0;
}

/* ---- lease lifetime ----------------------------------------------------- */

static void lease_free(struct relay_lease *l, const char *why)
{
	struct relay_lease_table *t;

	if (!l)
		return;
	t = l->t;
	if (why)
		SR_INFO(l->ctx, "%s", why);
	if (l->grace_ev)
		event_free(l->grace_ev);
	for (int r = TUN_PORT_MAX - 1; r >= 0; r--)
		lease_port_close(t, &l->ports[r]);
	if (l->prev)
		l->prev->next = l->next;
	else if (t->head == l)
		t->head = l->next;
	if (l->next)
		l->next->prev = l->prev;
	else if (t->tail == l)
		t->tail = l->prev;
	hash_remove(t, l);
	t->count--;
	free(l);
}

static void lease_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_lease *l = arg;
	struct relay_lease_table *t = l->t;

	(void)fd;
	(void)what;
	l->grace_end_us = 0;
	SR_INFO(l->ctx, "grace ttl of %" PRIu32 " s ran out with no tunnel", l->ttl_s);
	l->expiring = 1;
	if (t->cbs.on_expire)
		t->cbs.on_expire(l, t->arg);
	lease_free(l, "expired");
}

/* ---- API ---------------------------------------------------------------- */

struct relay_lease_table *relay_lease_table_new(struct event_base *base,
						const struct relay_pool_opts *opts,
						const struct relay_lease_cbs *cbs, void *arg)
{
	struct relay_lease_table *t;

	if (!base || !opts)
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->base = base;
	t->opts = *opts;
	t->opts.bind_address = NULL;
	t->opts.advertise_host = NULL;
	if (cbs)
		t->cbs = *cbs;
	t->arg = arg;
	if (opts->bind_address) {
		t->opts.bind_address = strdup(opts->bind_address);
		if (!t->opts.bind_address)
			goto fail;
	}
	if (opts->advertise_host) {
		t->opts.advertise_host = strdup(opts->advertise_host);
		if (!t->opts.advertise_host)
			goto fail;
	}
	/* A bad address or range is reported by relay_lease_create as
	 * SR_EINVAL: configuration is validated where it is loaded. */
	t->bind_ok = opts->bind_address &&
		     sr_parse_addr(opts->bind_address, 0, &t->bind_ss, &t->bind_len) == 0;
	if (opts->port_min >= 1 && opts->port_min <= opts->port_max && opts->port_max <= 65535)
		t->range = opts->port_max - opts->port_min + 1;
	t->held = calloc(t->range / 8 + 1, 1);
	if (!t->held)
		goto fail;
	t->nbuckets = LEASE_HASH_MIN;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	if (!t->buckets)
		goto fail;
	return t;
fail:
	free(t->held);
	free(t->opts.advertise_host);
	free(t->opts.bind_address);
	free(t);
	return NULL;
}

void relay_lease_table_free(struct relay_lease_table *t)
{
	if (!t)
		return;
	while (t->head)
		lease_free(t->head, NULL);
	assert(t->count == 0);
	free(t->buckets);
	free(t->held);
	free(t->opts.advertise_host);
	free(t->opts.bind_address);
	free(t);
}

int relay_lease_create(struct relay_lease_table *t, const char *app, unsigned roles,
		       uint32_t ttl_s, struct relay_lease **out)
{
	struct relay_lease *l;
	char rnd[2 * LEASE_ID_RANDOM_BYTES + 1];
	char ports[96];
	int rc;

	if (out)
		*out = NULL;
	if (!t || !app || !out || roles == 0 || roles >= TUN_ROLE_BIT(TUN_PORT_MAX) ||
	    strlen(app) >= TUN_CTL_APP_MAX || !t->bind_ok || t->range == 0)
		return SR_EINVAL;
	if (t->opts.max_leases && t->count >= t->opts.max_leases)
		return SR_EBUSY;
	if (t->count + 1 > t->nbuckets && hash_grow(t) != 0)
		return SR_ENOMEM;

	l = calloc(1, sizeof(*l));
	if (!l)
		return SR_ENOMEM;
	l->t = t;
	l->roles = roles;
	l->ttl_s = ttl_s;
	memcpy(l->app, app, strlen(app) + 1);
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		l->ports[r].l = l;
		l->ports[r].role = (enum tun_port_role)r;
	}
	if (sr_random_hex(rnd, LEASE_ID_RANDOM_BYTES) != 0 ||
	    sr_random_hex(l->resume, LEASE_RESUME_BYTES) != 0) {
		rc = SR_EIO;
		goto fail;
	}
	snprintf(l->id, sizeof(l->id), "L-%" PRIu64 "-%s", t->seq + 1, rnd);
	lease_make_ctx(l);
	l->grace_ev = evtimer_new(t->base, lease_grace_cb, l);
	if (!l->grace_ev) {
		rc = SR_ENOMEM;
		goto fail;
	}
	/* All or nothing: a role that finds no port releases the others. */
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		if (!(roles & TUN_ROLE_BIT(r)))
			continue;
		rc = lease_port_open(t, &l->ports[r]);
		if (rc != 0)
			goto fail;
	}

	t->seq++;
	l->hash = lease_hash(l->id);
	hash_insert(t, l);
	l->prev = t->tail;
	if (t->tail)
		t->tail->next = l;
	else
		t->head = l;
	t->tail = l;
	t->count++;
	lease_format_ports(l, ports, sizeof(ports));
	SR_INFO(l->ctx, "created %s ttl=%" PRIu32 "s", ports, ttl_s);
	*out = l;
	return 0;
fail:
	for (int r = TUN_PORT_MAX - 1; r >= 0; r--)
		lease_port_close(t, &l->ports[r]);
	if (l->grace_ev)
		event_free(l->grace_ev);
	free(l);
	return rc;
}

struct relay_lease *relay_lease_find_resume(struct relay_lease_table *t, const char *token)
{
	struct relay_lease *found = NULL;

	if (!t || !token || !*token)
		return NULL;
	/* Scan every lease without an early exit so the time taken does not
	 * depend on where (or whether) the token matches. */
	for (struct relay_lease *l = t->head; l; l = l->next) {
		if (sr_secret_eq(l->resume, token))
			found = l;
	}
	return found;
}

struct relay_lease *relay_lease_find_id(struct relay_lease_table *t, const char *id)
{
	struct relay_lease *l;

	if (!t || !id)
		return NULL;
	l = t->buckets[lease_hash(id) & (t->nbuckets - 1)];
	for (; l; l = l->hnext) {
		if (strcmp(l->id, id) == 0)
			return l;
	}
	return NULL;
}

int relay_lease_rotate_resume(struct relay_lease *l)
{
	char fresh[sizeof(l->resume)];

	if (sr_random_hex(fresh, LEASE_RESUME_BYTES) != 0)
		return SR_EIO;
	memcpy(l->resume, fresh, sizeof(l->resume));
	return 0;
}

void relay_lease_release(struct relay_lease *l)
{
	if (!l || l->expiring)
		return;
	lease_free(l, "released");
}

void relay_lease_attach(struct relay_lease *l)
{
	evtimer_del(l->grace_ev);
	l->grace_end_us = 0;
}

void relay_lease_detach(struct relay_lease *l)
{
	struct timeval tv = {(time_t)l->ttl_s, 0};

	/* A second detach keeps the first deadline: the grace period is
	 * counted from when the tunnel was lost. */
	if (evtimer_pending(l->grace_ev, NULL))
		return;
	evtimer_add(l->grace_ev, &tv);
	l->grace_end_us = sr_now_us() + (uint64_t)l->ttl_s * 1000000u;
	SR_INFO(l->ctx, "detached; expires in %" PRIu32 " s unless resumed", l->ttl_s);
}

void relay_lease_describe(const struct relay_lease *l, struct tun_ctl_msg *msg)
{
	const struct relay_pool_opts *o = &l->t->opts;
	const char *host = o->advertise_host && *o->advertise_host ? o->advertise_host
								    : o->bind_address;

	msg->type = TUN_CTL_LEASE;
	snprintf(msg->lease, sizeof(msg->lease), "%s", l->id);
	snprintf(msg->host, sizeof(msg->host), "%s", host ? host : "");
	for (int r = 0; r < TUN_PORT_MAX; r++)
		msg->ports[r] = l->ports[r].port;
	msg->roles = l->roles;
	msg->ttl_s = l->ttl_s;
	snprintf(msg->resume, sizeof(msg->resume), "%s", l->resume);
}

const char *relay_lease_id(const struct relay_lease *l)
{
	return l->id;
}

const char *relay_lease_app(const struct relay_lease *l)
{
	return l->app;
}

uint32_t relay_lease_ttl(const struct relay_lease *l)
{
	return l->ttl_s;
}

uint16_t relay_lease_port(const struct relay_lease *l, enum tun_port_role role)
{
	if ((int)role < 0 || role >= TUN_PORT_MAX)
		return 0;
	return l->ports[role].port;
}

void relay_lease_set_data(struct relay_lease *l, void *data)
{
	l->data = data;
}

void *relay_lease_data(const struct relay_lease *l)
{
	return l->data;
}

size_t relay_lease_count(const struct relay_lease_table *t)
{
	return t ? t->count : 0;
}

const struct relay_pool_opts *relay_lease_table_opts(const struct relay_lease_table *t)
{
	return &t->opts;
}

void relay_lease_foreach(struct relay_lease_table *t,
			 void (*fn)(struct relay_lease *l, void *arg), void *arg)
{
	struct relay_lease *l, *nx;

	if (!t)
		return;
	for (l = t->head; l; l = nx) {
		nx = l->next;
		fn(l, arg);
	}
}

/* ---- live handover ------------------------------------------------------- */

void relay_lease_get_state(const struct relay_lease *l, struct relay_lease_state *st)
{
	memset(st, 0, sizeof(*st));
	st->id = l->id;
	st->app = l->app;
	st->resume = l->resume;
	st->roles = l->roles;
	st->ttl_s = l->ttl_s;
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		st->ports[r] = l->ports[r].port;
		st->fds[r] = l->ports[r].lev ? evconnlistener_get_fd(l->ports[r].lev) : -1;
	}
}

/* The <n> of "L-<n>-<hex>", so that ids made here later do not repeat it. */
static uint64_t lease_id_seq(const char *id)
{
	uint64_t n = 0;

	if (strncmp(id, "L-", 2) != 0)
		return 0;
	for (id += 2; *id >= '0' && *id <= '9'; id++) {
		if (n > (UINT64_MAX - 9) / 10)
			return 0;
		n = n * 10 + (uint64_t)(*id - '0');
	}
	return n;
}

int relay_lease_adopt(struct relay_lease_table *t, const struct relay_lease_state *st,
		      struct relay_lease **out)
{
	struct relay_lease *l = NULL;
	int fds[TUN_PORT_MAX];
	char ports[96];
	int rc = SR_EINVAL;

	for (int r = 0; r < TUN_PORT_MAX; r++)
		fds[r] = st->fds[r];
	*out = NULL;
	if (!st->id || !tun_ctl_valid_lease_id(st->id) || !st->app ||
	    strlen(st->app) >= TUN_CTL_APP_MAX || !st->resume ||
	    strlen(st->resume) != 2 * LEASE_RESUME_BYTES || !tun_ctl_valid_resume(st->resume) ||
	    st->roles == 0 || st->roles >= TUN_ROLE_BIT(TUN_PORT_MAX) || t->range == 0 ||
	    st->ttl_s > TUN_CTL_TTL_MAX)
		goto fail;
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		int want = (st->roles & TUN_ROLE_BIT(r)) != 0;
		uint16_t p = st->ports[r];
		if (want != (p != 0) || want != (fds[r] >= 0))
			goto fail;
		if (want && (p < t->opts.port_min || p > t->opts.port_max ||
			     held_get(t, (uint32_t)p - t->opts.port_min)))
			goto fail;
		for (int q = 0; want && q < r; q++)
			if (st->ports[q] == p)
				goto fail;
	}
	if (relay_lease_find_id(t, st->id)) {
		rc = SR_EBUSY;
		goto fail;
	}
	rc = SR_ENOMEM;
	if (t->count + 1 > t->nbuckets && hash_grow(t) != 0)
		goto fail;
	l = calloc(1, sizeof(*l));
	if (!l)
		goto fail;
	l->t = t;
	l->roles = st->roles;
	l->ttl_s = st->ttl_s;
	snprintf(l->id, sizeof(l->id), "%s", st->id);
	snprintf(l->app, sizeof(l->app), "%s", st->app);
	snprintf(l->resume, sizeof(l->resume), "%s", st->resume);
	lease_make_ctx(l);
	l->grace_ev = evtimer_new(t->base, lease_grace_cb, l);
	if (!l->grace_ev)
		goto fail;
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		struct lease_port *p = &l->ports[r];
		p->l = l;
		p->role = (enum tun_port_role)r;
		if (fds[r] < 0)
			continue;
		p->pause_ev = evtimer_new(t->base, lease_pause_cb, p);
		if (!p->pause_ev)
			goto fail;
		lease_port_nodelay_adopted(p, fds[r]);
		/* backlog 0: it listens already, with the backlog it was made with. */
		p->lev = evconnlistener_new(t->base, lease_accept_cb, p,
					    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
						    LEV_OPT_DISABLED,
					    0, fds[r]);
		if (!p->lev)
			goto fail;
		fds[r] = -1;
		evconnlistener_set_error_cb(p->lev, lease_accept_error_cb);
		p->port = st->ports[r];
		held_set(t, (uint32_t)p->port - t->opts.port_min, 1);
	}
	if (lease_id_seq(l->id) > t->seq)
		t->seq = lease_id_seq(l->id);
	l->hash = lease_hash(l->id);
	hash_insert(t, l);
	l->prev = t->tail;
	if (t->tail)
		t->tail->next = l;
	else
		t->head = l;
	t->tail = l;
	t->count++;
	lease_format_ports(l, ports, sizeof(ports));
	SR_INFO(l->ctx, "taken over %s ttl=%" PRIu32 "s", ports, l->ttl_s);
	*out = l;
	return 0;
fail:
	if (l) {
		for (int r = TUN_PORT_MAX - 1; r >= 0; r--)
			lease_port_close(t, &l->ports[r]);
		if (l->grace_ev)
			event_free(l->grace_ev);
		free(l);
	}
	for (int r = 0; r < TUN_PORT_MAX; r++)
		if (fds[r] >= 0)
			close(fds[r]);
	return rc;
}

int relay_lease_port_usable(const struct relay_lease_table *t, uint32_t port)
{
	return t->range != 0 && port >= t->opts.port_min && port <= t->opts.port_max &&
	       !held_get(t, port - t->opts.port_min);
}

void relay_lease_listen(struct relay_lease *l, int on)
{
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		struct lease_port *p = &l->ports[r];
		if (!p->lev)
			continue;
		/* A pause after an accept error would enable it again. */
		evtimer_del(p->pause_ev);
		if (on)
			lease_port_arm(p);
		else
			evconnlistener_disable(p->lev);
	}
}

int64_t relay_lease_grace_left_ms(const struct relay_lease *l)
{
	uint64_t now = sr_now_us();

	if (!l->grace_end_us)
		return -1;
	return l->grace_end_us > now ? (int64_t)((l->grace_end_us - now) / 1000u) : 0;
}

void relay_lease_grace_stop(struct relay_lease *l)
{
	evtimer_del(l->grace_ev);
	l->grace_end_us = 0;
}

void relay_lease_detach_ms(struct relay_lease *l, uint64_t ms)
{
	struct timeval tv = sr_tv_ms(ms);

	evtimer_del(l->grace_ev);
	evtimer_add(l->grace_ev, &tv);
	l->grace_end_us = sr_now_us() + ms * 1000u;
}
