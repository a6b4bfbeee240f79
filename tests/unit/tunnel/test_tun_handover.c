/* A group's held streams handed to "another process" (tun_handover.h) below
 * the socket layer: the harness of test_resume.c (a relay-role and a
 * sidecar-role tun_conn driven through their sans-I/O interface, the tunnel
 * cut at random byte offsets while executors and drivers send, half-close
 * and reset), and at every cut the relay's group is handed over the way a
 * relay handover does it: frozen, every stream described as JSON text, its
 * socket duplicated (the other process's descriptor) and the bytes of its
 * socket's input and output copied, adopted into a fresh group, the old
 * group forgotten (its descriptors closed, nothing else), the new one
 * thawed; now and then a handover is abandoned instead (the new group
 * forgotten, the old one thawed). Then the sidecar resumes on the new group.
 *
 * What must hold: every byte each end sent arrives at the other in order,
 * exactly once; a FIN arrives iff it was sent, after every byte; a reset
 * arrives as a reset; nothing stays held; forgetting a group resets no
 * connection and closes no socket the other group still has.
 *
 * SR_HANDOVER_ITERS sets the number of iterations (default 300),
 * SR_HANDOVER_SEED the first seed; a failure names the seed.
 *
 * And the new relay checks what it is handed: a stream description with a
 * field missing, another lease, a malformed executor address or byte counts
 * and states that cannot all be true is refused with its reason, nothing is
 * held for it, its descriptor is closed and the connection left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/sr_bsock.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "tests/support/ts_end.h"
#include "tests/support/ts_net.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_ctl.h"
#include "tunnel/tun_group.h"
#include "tunnel/tun_handover.h"

#include <jansson.h>

#define MAXF 6
#define LEASE "L-1-0123abcd"
#define PORT 41000
#define IOB (64 * 1024)

/* ---- deterministic randomness and payloads --------------------------------- */

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return n ? (uint32_t)(rng_state % n) : 0;
}

struct flow {
	uint64_t conn_id;
	struct ts_end ex, dr;
	int dialled; /* the sidecar dialled the driver for it */
};

struct h {
	struct event_base *base;
	struct tun_conn *relay, *sc;
	int closed[2];
	struct tun_group *gr, *gs;
	struct evbuffer *r2s, *s2r; /* bytes in flight */
	int resuming;		    /* the next register carries the resume token */
	int leased;		    /* sidecar: lease seen on this tunnel */
	struct flow f[MAXF];
	int nf;
	int lfd;
	uint16_t lport;
	uint64_t cuts;
	uint64_t handovers, abandoned, moved, moved_bytes;
};

/* ---- the two sessions ------------------------------------------------------- */

static void relay_output(struct tun_conn *c, void *arg)
{
	struct h *h = arg;
	if (c == h->relay)
		evbuffer_add_buffer(h->r2s, tun_conn_output(c));
}

static void sc_output(struct tun_conn *c, void *arg)
{
	struct h *h = arg;
	if (c == h->sc)
		evbuffer_add_buffer(h->s2r, tun_conn_output(c));
}

static void make_lease(struct tun_ctl_msg *m, uint32_t streams)
{
	memset(m, 0, sizeof(*m));
	m->type = TUN_CTL_LEASE;
	snprintf(m->lease, sizeof(m->lease), LEASE);
	snprintf(m->host, sizeof(m->host), "relay.example");
	m->ports[TUN_PORT_DRIVER] = PORT;
	m->roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	m->ttl_s = 60;
	snprintf(m->resume, sizeof(m->resume), "tok");
	m->streams = streams;
}

/* The relay's registration, as relay_tunnel.c does it: the lease (with the
 * number of held streams) first, then the held streams reopened. */
static void relay_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct h *h = arg;
	struct tun_ctl_msg lease;
	size_t held = tun_group_held(h->gr);

	if (m->type != TUN_CTL_REGISTER)
		return;
	tun_conn_set_group(c, h->gr);
	make_lease(&lease, (uint32_t)held);
	assert_int_equal(tun_conn_send_ctl(c, &lease), 0);
	if (m->resume[0])
		assert_int_equal(tun_group_resume(h->gr, c), held);
}

static void sc_on_ctl_open(struct tun_conn *c, void *arg)
{
	struct h *h = arg;
	struct tun_ctl_msg reg;

	memset(&reg, 0, sizeof(reg));
	reg.type = TUN_CTL_REGISTER;
	snprintf(reg.app, sizeof(reg.app), "resume-test");
	reg.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	if (h->resuming)
		snprintf(reg.resume, sizeof(reg.resume), "tok");
	assert_int_equal(tun_conn_send_ctl(c, &reg), 0);
}

static void sc_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct h *h = arg;

	if (m->type != TUN_CTL_LEASE)
		return;
	h->leased = 1;
	tun_conn_set_group(c, h->gs);
	tun_group_set_lease(h->gs, m->lease);
	if (h->resuming)
		tun_group_expect_on(h->gs, c, m->streams);
}

static struct sr_bsock *sc_on_connect(struct tun_conn *c, const struct tun_connect_req *req,
				      void *arg)
{
	struct h *h = arg;
	struct sr_bsock *bev;
	int a, b;

	for (int i = 0; i < h->nf; i++) {
		struct flow *f = &h->f[i];
		if (f->conn_id != req->conn_id)
			continue;
		assert_false(f->dialled); /* a held stream is never dialled twice */
		f->dialled = 1;
		ts_end_tcp_pair(h->lfd, h->lport, &a, &b);
		f->dr.fd = a;
		bev = sr_bsock_new(h->base, b);
		assert_non_null(bev);
		*req->connected = 1;
		return bev;
	}
	fail_msg("CONNECT for unknown conn id %llu", (unsigned long long)req->conn_id);
	return NULL;
}

static void on_closed(struct tun_conn *c, int err, void *arg)
{
	struct h *h = arg;
	h->closed[c == h->relay ? 0 : 1]++;
}

static const struct tun_conn_cbs relay_cbs = {
    .on_ctl = relay_on_ctl,
    .on_output = relay_output,
    .on_closed = on_closed,
};

static const struct tun_conn_cbs sc_cbs = {
    .on_ctl = sc_on_ctl,
    .on_ctl_open = sc_on_ctl_open,
    .on_connect = sc_on_connect,
    .on_output = sc_output,
    .on_closed = on_closed,
};

static void start_tunnel(struct h *h)
{
	struct tun_conn_opts o;

	memset(&o, 0, sizeof(o));
	o.stream_window = 16 * 1024 + rnd(48 * 1024); /* small: many acks, much retained */
	o.conn_window = 1u << 20;
	o.ping_interval_ms = 60000;
	o.ping_timeout_ms = 120000;
	o.sock_read_high = 16 * 1024 + rnd(64 * 1024);
	evbuffer_drain(h->r2s, evbuffer_get_length(h->r2s));
	evbuffer_drain(h->s2r, evbuffer_get_length(h->s2r));
	h->closed[0] = h->closed[1] = 0;
	h->leased = 0;
	h->relay = tun_conn_new(h->base, TUN_ROLE_RELAY, &o, &relay_cbs, h, "t-relay");
	h->sc = tun_conn_new(h->base, TUN_ROLE_SIDECAR, &o, &sc_cbs, h, "t-sidecar");
	assert_non_null(h->relay);
	assert_non_null(h->sc);
	tun_conn_start(h->sc);
	tun_conn_start(h->relay);
}

/* Move up to n bytes of what is in flight, each way. */
static void deliver(struct h *h, size_t n)
{
	uint8_t buf[IOB];

	for (int dir = 0; dir < 2; dir++) {
		struct evbuffer *w = dir ? h->s2r : h->r2s;
		struct tun_conn *to = dir ? h->relay : h->sc;
		size_t left = n;
		while (left > 0 && evbuffer_get_length(w) > 0) {
			int k =
			    evbuffer_remove(w, buf, left < sizeof(buf) ? left : sizeof(buf));
			if (k <= 0)
				break;
			left -= (size_t)k;
			if (tun_conn_recv(to, buf, (size_t)k) != 0)
				break;
		}
	}
}

static void service(struct h *h)
{
	for (int i = 0; i < h->nf; i++) {
		ts_end_service(&h->f[i].ex);
		ts_end_service(&h->f[i].dr);
	}
	event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* What a relay handover does with one group: freeze it, describe every
 * stream (through JSON text, as on the wire), give "the new process" a
 * duplicate of each socket and a copy of its buffers. Returns the new,
 * frozen group. */
static struct tun_group *hand_over(struct h *h, struct tun_group *old)
{
	struct tun_group_opts go = {.hold_ms = 60000};
	struct tun_group *g = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-relay-group-2");
	char err[256];
	json_t *gj;
	char *text;

	assert_non_null(g);
	assert_int_equal(tun_group_freeze(old), 0);
	tun_group_set_lease(g, LEASE);
	assert_int_equal(tun_group_freeze(g), 0);
	for (struct tun_stream *s = tun_handover_next(old, NULL); s;
	     s = tun_handover_next(old, s)) {
		json_t *meta = tun_handover_stream_json(s), *back;
		struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
		struct evbuffer *sin = tun_handover_stream_in(s),
				*sout = tun_handover_stream_out(s);
		int fd = tun_handover_stream_fd(s);
		assert_non_null(meta);
		text = json_dumps(meta, JSON_COMPACT);
		json_decref(meta);
		assert_non_null(text);
		back = json_loads(text, 0, NULL);
		free(text);
		assert_non_null(back);
		/* Copies, not moves: the old group keeps its buffers intact (an
		 * abandoned handover thaws it). */
		if (sin) {
			size_t n = evbuffer_get_length(sin);
			uint8_t *buf = malloc(n + 1);
			struct evbuffer_iovec v[64];
			size_t off = 0;
			int k = evbuffer_peek(sin, -1, NULL, v, 64);
			assert_true(k >= 0 && k <= 64);
			for (int i = 0; i < k; i++) {
				memcpy(buf + off, v[i].iov_base, v[i].iov_len);
				off += v[i].iov_len;
			}
			assert_int_equal(off, n);
			evbuffer_add(in, buf, n);
			h->moved_bytes += n;
			free(buf);
		}
		if (sout) {
			size_t n = evbuffer_get_length(sout);
			uint8_t *buf = malloc(n + 1);
			struct evbuffer_iovec v[64];
			size_t off = 0;
			int k = evbuffer_peek(sout, -1, NULL, v, 64);
			assert_true(k >= 0 && k <= 64);
			for (int i = 0; i < k; i++) {
				memcpy(buf + off, v[i].iov_base, v[i].iov_len);
				off += v[i].iov_len;
			}
			assert_int_equal(off, n);
			evbuffer_add(out, buf, n);
			h->moved_bytes += n;
			free(buf);
		}
		if (fd >= 0) {
			fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
			assert_true(fd >= 0);
		}
		if (tun_handover_adopt(g, back, fd, in, out, err, sizeof(err)) != 0)
			fail_msg("adopt: %s", err);
		json_decref(back);
		evbuffer_free(in);
		evbuffer_free(out);
		h->moved++;
	}
	gj = tun_handover_group_json(old);
	assert_non_null(gj);
	text = json_dumps(gj, JSON_COMPACT);
	json_decref(gj);
	gj = json_loads(text, 0, NULL);
	free(text);
	if (tun_handover_group_restore(g, gj, err, sizeof(err)) != 0)
		fail_msg("restore: %s", err);
	json_decref(gj);
	return g;
}

/* The tunnel dies: a random part of what is in flight arrives, the rest is
 * lost with the connection; both sessions see the transport fail. */
static void cut(struct h *h)
{
	deliver(h, rnd(3) == 0 ? 0 : rnd(40000));
	evbuffer_drain(h->r2s, evbuffer_get_length(h->r2s));
	evbuffer_drain(h->s2r, evbuffer_get_length(h->s2r));
	tun_conn_transport_failed(h->relay, SR_EIO, "cut by the test");
	tun_conn_transport_failed(h->sc, SR_EIO, "cut by the test");
	for (int i = 0; i < 200 && !(h->closed[0] && h->closed[1]); i++)
		event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(h->closed[0], 1);
	assert_int_equal(h->closed[1], 1);
	tun_conn_free(h->relay);
	tun_conn_free(h->sc);
	h->relay = h->sc = NULL;
	h->cuts++;
	h->resuming = 1;
	/* The relay's streams move to a new group, or a handover is abandoned
	 * (the new group forgotten, the old one going on). */
	if (rnd(4) != 0) {
		struct tun_group *g = hand_over(h, h->gr);
		if (rnd(5) == 0) {
			tun_group_forget(g);
			tun_group_free(g);
			tun_group_thaw(h->gr);
			h->abandoned++;
		} else {
			tun_group_forget(h->gr);
			tun_group_free(h->gr);
			h->gr = g;
			tun_group_thaw(h->gr);
			h->handovers++;
		}
	}
}

static int all_done(const struct h *h)
{
	for (int i = 0; i < h->nf; i++)
		if (!ts_end_pair_done(&h->f[i].ex, &h->f[i].dr))
			return 0;
	return 1;
}

/* ---- one iteration ------------------------------------------------------------ */

static void run_one(struct h *h, uint64_t seed)
{
	struct tun_group_opts go = {.hold_ms = 60000};
	struct tun_group_stats gst;
	int ncuts = 1 + (int)(seed % 3), steps = 0;

	rng_state = seed * 0x2545F4914F6CDD1Dull + 0x9E3779B97F4A7C15ull;
	assert_non_null(h->base = event_base_new());
	h->r2s = evbuffer_new();
	h->s2r = evbuffer_new();
	h->gr = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-relay-group");
	h->gs = tun_group_new(h->base, TUN_ROLE_SIDECAR, &go, "t-sidecar-group");
	assert_non_null(h->gr);
	assert_non_null(h->gs);
	h->resuming = 0;
	start_tunnel(h);
	for (int i = 0; i < 50 && !h->leased; i++) {
		deliver(h, 1u << 20);
		service(h);
	}
	assert_true(h->leased);

	h->nf = 1 + (int)rnd(MAXF);
	for (int i = 0; i < h->nf; i++) {
		struct flow *f = &h->f[i];
		int a, b;
		memset(f, 0, sizeof(*f));
		ts_end_init(&f->ex);
		ts_end_init(&f->dr);
		f->conn_id = seed * 16 + (uint64_t)i + 1;
		f->ex.tx_seed = f->dr.rx_seed = (uint32_t)(seed * 131 + (uint64_t)i);
		f->dr.tx_seed = f->ex.rx_seed = (uint32_t)(seed * 137 + (uint64_t)i + 7);
		f->ex.tx_total = rnd(4) ? rnd(300000) : 0;
		f->dr.tx_total = rnd(4) ? rnd(300000) : 0;
		f->ex.shut = 1;
		f->dr.shut = 1;
		/* Now and then an end resets midway, with bytes in flight. */
		if (rnd(6) == 0 && f->ex.tx_total)
			f->ex.reset_at = 1 + rnd((uint32_t)f->ex.tx_total);
		else if (rnd(6) == 0 && f->dr.tx_total)
			f->dr.reset_at = 1 + rnd((uint32_t)f->dr.tx_total);
		ts_end_tcp_pair(h->lfd, h->lport, &a, &b);
		f->ex.fd = a;
		struct sr_bsock *bev = sr_bsock_new(h->base, b);
		assert_non_null(bev);
		assert_int_equal(tun_conn_open_stream(h->relay, bev, PORT, LEASE, f->conn_id,
						      "10.0.0.9:5000"),
				 0);
	}

	while (!all_done(h)) {
		int cut_now = ncuts > 0 && rnd(4) == 0;
		if (cut_now) {
			cut(h);
			ncuts--;
			start_tunnel(h);
			for (int i = 0; i < 50 && !h->leased; i++) {
				deliver(h, 1u << 20);
				service(h);
			}
			assert_true(h->leased);
		}
		deliver(h, 1 + rnd(70000));
		service(h);
		if (steps % 50 == 0 && getenv("SR_HANDOVER_TRACE"))
			fprintf(stderr, "step %d cuts %llu wires %zu %zu\n", steps,
				(unsigned long long)h->cuts, evbuffer_get_length(h->r2s),
				evbuffer_get_length(h->s2r));
		if (++steps > 20000) {
			for (int i = 0; i < h->nf; i++)
				ts_end_pair_print(&h->f[i].ex, &h->f[i].dr, i);
			fail_msg("seed %llu: not done after %d steps (cuts %llu)",
				 (unsigned long long)seed, steps, (unsigned long long)h->cuts);
		}
	}

	for (int i = 0; i < h->nf; i++)
		ts_end_pair_check(&h->f[i].ex, &h->f[i].dr, seed, i, h->cuts);
	tun_group_get_stats(h->gr, &gst);
	assert_int_equal(gst.held, 0);
	assert_int_equal(gst.lost[TUN_LOST_HOLD], 0);
	tun_group_get_stats(h->gs, &gst);
	assert_int_equal(gst.held, 0);

	tun_conn_set_group(h->relay, NULL);
	tun_conn_set_group(h->sc, NULL);
	tun_conn_free(h->relay);
	tun_conn_free(h->sc);
	h->relay = h->sc = NULL;
	tun_group_free(h->gr);
	tun_group_free(h->gs);
	for (int i = 0; i < h->nf; i++) {
		ts_end_close(&h->f[i].ex);
		ts_end_close(&h->f[i].dr);
	}
	evbuffer_free(h->r2s);
	evbuffer_free(h->s2r);
	event_base_free(h->base);
	h->base = NULL;
}

static void test_handover_at_every_cut_every_byte_exactly_once(void **state)
{
	struct h *h = *state;
	const char *n = getenv("SR_HANDOVER_ITERS"), *s0 = getenv("SR_HANDOVER_SEED");
	unsigned iters = n ? (unsigned)strtoul(n, NULL, 10) : 300;
	uint64_t first = s0 ? strtoull(s0, NULL, 10) : 1;
	uint64_t t0 = sr_now_us(), cuts = 0;

	for (unsigned i = 0; i < iters; i++) {
		h->cuts = 0;
		run_one(h, first + i);
		cuts += h->cuts;
	}
	print_message("%u iterations, %llu cuts, %llu handovers (%llu abandoned), %llu streams "
		      "and %llu buffered bytes moved, %.1f s\n",
		      iters, (unsigned long long)cuts, (unsigned long long)h->handovers,
		      (unsigned long long)h->abandoned, (unsigned long long)h->moved,
		      (unsigned long long)h->moved_bytes, (double)(sr_now_us() - t0) / 1e6);
	assert_true(h->handovers > iters / 4);
	assert_true(h->abandoned > 0);
	assert_true(h->moved_bytes > 0);
}

/* ---- adopting a description that does not fit ------------------------------ */

/* A live stream as the old relay describes it: 10 bytes sent, 4 acknowledged,
 * so the 6 retained are at the front of its 6 input bytes. */
static json_t *good_meta(void)
{
	return json_pack("{sIsIsssssIsIsIsssssbsbsbsbsbsbsIsI}", "conn", (json_int_t)7, "port",
			 (json_int_t)PORT, "lease", LEASE, "peer", "10.0.0.9:40000", "tx_sent",
			 (json_int_t)10, "tx_acked", (json_int_t)4, "rx", (json_int_t)3, "up",
			 "open", "down", "open", "live", 1, "fin_sent", 0, "answer_seen", 1,
			 "rst_sent", 0, "tomb_done", 0, "finishing", 0, "in", (json_int_t)6,
			 "out", (json_int_t)0);
}

/* Adopt meta with a duplicate of sp[0] (the other process keeps sp[0]) and
 * 6 input bytes; returns adopt's result. */
static int adopt_one(struct tun_group *g, const json_t *meta, int sp[2], int with_fd, char *err,
		     size_t errlen, int *fd_out)
{
	struct evbuffer *in = evbuffer_new();
	int fd = with_fd ? fcntl(sp[0], F_DUPFD_CLOEXEC, 0) : -1;
	int rc;

	assert_non_null(in);
	assert_int_equal(evbuffer_add(in, "abcdef", 6), 0);
	if (with_fd)
		assert_true(fd >= 0);
	rc = tun_handover_adopt(g, meta, fd, in, NULL, err, errlen);
	evbuffer_free(in);
	*fd_out = fd;
	return rc;
}

/* The new relay validates each stream it is handed: a description whose
 * fields are missing or whose byte counts and states cannot all be true
 * (a resume from it could not be exact), or that names another lease or a
 * malformed executor address (it goes into log lines and a header), is
 * refused with a reason; nothing is held for it; the descriptor it was given
 * is closed, and the connection itself, still the old relay's, is not
 * touched. */
static void test_adopt_refuses_what_does_not_fit(void **state)
{
	struct h *h = *state;
	struct tun_group_opts go = {.hold_ms = 60000};
	/* One change each to good_meta(): the field, its new value as JSON
	 * (NULL: removed), the reason expected. The last round adopts it as it is. */
	static const struct {
		const char *key, *value, *why;
		int no_fd;
	} bad[] = {
	    {"conn", NULL, "a field is missing", 0},
	    {"tx_acked", "\"4\"", "a field is missing", 0},
	    {"port", "65536", "a field is missing", 0},
	    {"up", "\"done\"", "a field is missing", 0}, /* only the way down ends "done" */
	    {"lease", "\"L-2-0123abcd\"", "another lease", 0},
	    {"peer", "\"10.0.0.9:1\\nforged\"", "executor address is malformed", 0},
	    {"tx_acked", "11", "do not fit together", 0},    /* more acknowledged than sent */
	    {"tx_sent", "20", "do not fit together", 0},     /* 16 retained, 6 bytes of input */
	    {"finishing", "true", "do not fit together", 0}, /* no FIN was sent */
	    {"live", "true", "do not fit together", 1},	     /* live, and no socket */
	};
	const size_t n = sizeof(bad) / sizeof(bad[0]);
	char err[256];
	int sp[2], fd, rc;
	struct tun_group_stats st;

	h->base = event_base_new();
	assert_non_null(h->base);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	for (size_t i = 0; i <= n; i++) {
		struct tun_group *g = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-adopt");
		json_t *m = good_meta();

		assert_non_null(g);
		assert_non_null(m);
		tun_group_set_lease(g, LEASE);
		assert_int_equal(tun_group_freeze(g), 0);
		if (i < n && !bad[i].value)
			json_object_del(m, bad[i].key);
		else if (i < n)
			json_object_set_new(m, bad[i].key,
					    json_loads(bad[i].value, JSON_DECODE_ANY, NULL));
		rc = adopt_one(g, m, sp, i == n || !bad[i].no_fd, err, sizeof(err), &fd);
		tun_group_get_stats(g, &st);
		if (i == n) {
			assert_int_equal(rc, 0);
			assert_int_equal(st.held, 1);
			assert_int_equal(st.held_bytes, 6);
		} else {
			if (rc != SR_EINVAL || !strstr(err, bad[i].why))
				fail_msg("%s %s: rc %d, \"%s\"; want \"%s\"", bad[i].key,
					 bad[i].value ? bad[i].value : "removed", rc,
					 rc ? err : "", bad[i].why);
			assert_non_null(strstr(err, bad[i].value ? "conn=7" : "conn=0"));
			assert_int_equal(st.held, 0);
			/* our duplicate is closed, not leaked */
			if (!bad[i].no_fd)
				assert_int_equal(fcntl(fd, F_GETFD), -1);
		}
		/* The connection is still the other process's: no EOF, no reset. */
		{
			char c;
			ssize_t got = recv(sp[1], &c, 1, MSG_DONTWAIT);
			assert_true(got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
		}
		json_decref(m);
		tun_group_forget(g);
		tun_group_free(g);
	}
	close(sp[0]);
	close(sp[1]);
	event_base_free(h->base);
	h->base = NULL;
}

static int setup(void **state)
{
	struct h *h = calloc(1, sizeof(*h));
	const char *lvl = getenv("SR_TEST_LOG");

	if (!h)
		return -1;
	sr_log_set_level(SR_LOG_ERROR);
	if (lvl)
		sr_log_set_level_name(lvl);
	h->lfd = ts_listen_loopback(0, 0, &h->lport);
	*state = h;
	return 0;
}

static int teardown(void **state)
{
	struct h *h = *state;
	close(h->lfd);
	free(h);
	return 0;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_handover_at_every_cut_every_byte_exactly_once,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_adopt_refuses_what_does_not_fit, setup,
					    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
