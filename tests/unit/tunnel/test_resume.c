/* Stream resumption (tun_group.h) below the socket layer: a relay-role and a
 * sidecar-role tun_conn driven through their sans-I/O interface, the bytes
 * between them carried by the test, and the tunnel cut at random byte
 * offsets in both directions while executors and drivers (real TCP sockets
 * on 127.0.0.1, played by the test through tests/support/ts_end.h) send,
 * half-close and reset. After every cut both sessions are thrown away, new
 * ones are made and the test plays the control messages of a resume
 * (register with a resume token, a lease that announces the held streams,
 * the relay reopening them).
 *
 * What must hold, every iteration: every byte each end sent arrives at the
 * other in order, exactly once (payloads are a function of stream and
 * offset, so a duplicate, a gap or a swap is a mismatch); a FIN arrives iff
 * it was sent, after every byte; a reset arrives as a reset (what came
 * before it is still in order); nothing stays held; the streams_active gauge
 * is back to 0 on both sides; ASan sees no leak.
 *
 * SR_RESUME_ITERS sets the number of iterations (default 600), SR_RESUME_SEED
 * the first seed; a failure names the seed that reproduces it.
 *
 * Then one idle stream, resumed without a replay; and resumed after one end's
 * record of what it received was altered: the other end resets the stream
 * instead of skipping or repeating bytes. And a stream whose executor (or
 * driver) resets its connection during the outage, with bytes waiting for
 * it: the stream is reset, and the resume resets the other end too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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
#include "tunnel/tun_internal.h" /* a held stream's record, altered */

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
	int resuming;               /* the next register carries the resume token */
	int leased;                 /* sidecar: lease seen on this tunnel */
	struct flow f[MAXF];
	int nf;
	int lfd;
	uint16_t lport;
	uint64_t cuts;
	uint64_t grows; /* receive window growths, every session */
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
	/* Windows grow here too (the round trips of this loop are microseconds):
	 * credit for bytes not yet received must not free them from the
	 * sender's replay buffer. */
	o.grow_min_rtt_us = 1;
	o.max_stream_window = o.stream_window * (1u << rnd(6));
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
			int k = evbuffer_remove(w, buf, left < sizeof(buf) ? left : sizeof(buf));
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

static void count_grows(struct h *h)
{
	struct tun_conn_stats st;

	tun_conn_get_stats(h->relay, &st);
	h->grows += st.window_grows;
	tun_conn_get_stats(h->sc, &st);
	h->grows += st.window_grows;
}

/* The tunnel dies: a random part of what is in flight arrives, the rest is
 * lost with the connection; both sessions see the transport fail. */
static void cut(struct h *h)
{
	deliver(h, rnd(3) == 0 ? 0 : rnd(40000));
	evbuffer_drain(h->r2s, evbuffer_get_length(h->r2s));
	evbuffer_drain(h->s2r, evbuffer_get_length(h->s2r));
	count_grows(h);
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
}

static int all_done(const struct h *h)
{
	for (int i = 0; i < h->nf; i++)
		if (!ts_end_pair_done(&h->f[i].ex, &h->f[i].dr))
			return 0;
	return 1;
}

/* ---- one iteration ------------------------------------------------------------ */

/* Both sessions, groups and sockets of the flows, and the loop. */
static void free_all(struct h *h)
{
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
		if (steps % 50 == 0 && getenv("SR_RESUME_TRACE"))
			fprintf(stderr, "step %d cuts %llu wires %zu %zu\n", steps, (unsigned long long)h->cuts, evbuffer_get_length(h->r2s), evbuffer_get_length(h->s2r));
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
	/* The streams_active gauge (sparkrelay_streams_active) is back to 0:
	 * a stream that died while held, or a reset one kept as a tombstone
	 * until the other side had its RST, is counted once and uncounted
	 * once, whichever session it ends on. */
	for (int i = 0; i < 200 && (tun_conn_nstreams(h->relay) || tun_conn_nstreams(h->sc)); i++) {
		deliver(h, 1u << 20);
		service(h);
		usleep(2000); /* streams that ended linger for a barrier PING, sent after 10 ms */
	}
	if (tun_conn_nstreams(h->relay) || tun_conn_nstreams(h->sc))
		fail_msg("seed %llu: streams_active %zu (relay), %zu (sidecar) after every flow "
			 "ended (cuts %llu)",
			 (unsigned long long)seed, tun_conn_nstreams(h->relay),
			 tun_conn_nstreams(h->sc), (unsigned long long)h->cuts);

	count_grows(h);
	free_all(h);
}

static void test_cut_anywhere_every_byte_exactly_once(void **state)
{
	struct h *h = *state;
	const char *n = getenv("SR_RESUME_ITERS"), *s0 = getenv("SR_RESUME_SEED");
	unsigned iters = n ? (unsigned)strtoul(n, NULL, 10) : 600;
	uint64_t first = s0 ? strtoull(s0, NULL, 10) : 1;
	uint64_t t0 = sr_now_us(), cuts = 0;

	for (unsigned i = 0; i < iters; i++) {
		h->cuts = 0;
		run_one(h, first + i);
		cuts += h->cuts;
	}
	print_message("%u iterations, %llu cuts, %llu window growths, %.1f s\n", iters,
		      (unsigned long long)cuts, (unsigned long long)h->grows,
		      (double)(sr_now_us() - t0) / 1e6);
	/* The replay rule for grown windows was exercised. */
	assert_true(iters < 50 || h->grows > 0);
}

/* Run the loop (and the wire) for ms milliseconds of real time. */
static void run_for(struct h *h, uint64_t ms)
{
	uint64_t end = sr_now_us() + ms * 1000u;

	while (sr_now_us() < end) {
		deliver(h, 1u << 20);
		service(h);
		usleep(2000);
	}
}

/* Bring up the tunnel (resuming if h->resuming) until the lease is seen. */
static void up(struct h *h)
{
	start_tunnel(h);
	for (int i = 0; i < 50 && !h->leased; i++) {
		deliver(h, 1u << 20);
		service(h);
	}
	assert_true(h->leased);
}

/* One stream (conn 7) that moved 16 bytes each way. */
static struct flow *one_stream(struct h *h)
{
	struct tun_group_opts go = {.hold_ms = 60000};
	struct flow *f = &h->f[0];
	struct sr_bsock *bev;
	int a, b;

	rng_state = 42;
	assert_non_null(h->base = event_base_new());
	h->r2s = evbuffer_new();
	h->s2r = evbuffer_new();
	h->gr = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-relay-group");
	h->gs = tun_group_new(h->base, TUN_ROLE_SIDECAR, &go, "t-sidecar-group");
	h->resuming = 0;
	h->cuts = 0;
	up(h);

	h->nf = 1;
	memset(f, 0, sizeof(*f));
	ts_end_init(&f->ex);
	ts_end_init(&f->dr);
	f->conn_id = 7;
	f->ex.tx_seed = f->dr.rx_seed = 11;
	f->dr.tx_seed = f->ex.rx_seed = 13;
	f->ex.tx_total = 16;
	ts_end_tcp_pair(h->lfd, h->lport, &a, &b);
	f->ex.fd = a;
	assert_non_null(bev = sr_bsock_new(h->base, b));
	assert_int_equal(tun_conn_open_stream(h->relay, bev, PORT, LEASE, f->conn_id,
					      "10.0.0.9:5000"),
			 0);
	for (int i = 0; i < 500 && f->dr.rx < 16; i++) {
		deliver(h, 1u << 20);
		service(h);
	}
	assert_int_equal(f->dr.rx, 16);
	f->dr.tx_total = 16; /* the driver answers */
	for (int i = 0; i < 500 && f->ex.rx < 16; i++) {
		deliver(h, 1u << 20);
		service(h);
	}
	assert_int_equal(f->ex.rx, 16);
	return f;
}

/* One stream that moved 16 bytes each way, idle, then the tunnel cut: held
 * at both ends with nothing to replay. */
static struct flow *one_idle_stream(struct h *h)
{
	struct tun_group_stats gr, gs;
	struct flow *f = one_stream(h);

	run_for(h, 600); /* idle */
	cut(h);
	tun_group_get_stats(h->gr, &gr);
	tun_group_get_stats(h->gs, &gs);
	assert_int_equal(gr.held, 1);
	assert_int_equal(gs.held, 1);
	assert_int_equal(gr.held_bytes, 0);
	assert_int_equal(gs.held_bytes, 0);
	return f;
}

/* An idle connection after a small exchange: both senders must have been
 * told the bytes were delivered, so neither keeps them for a replay (nor the
 * buffer holding them: about 1 KiB per idle connection and side). nghttp2
 * alone acknowledges only once half a stream window is consumed. */
static void test_idle_stream_keeps_nothing_for_replay(void **state)
{
	struct h *h = *state;
	struct tun_group_stats gr, gs;
	struct flow *f = one_idle_stream(h);

	/* Resumed without a replay, and still carrying bytes both ways. */
	up(h);
	f->ex.tx_total = 32;
	f->dr.tx_total = 32;
	for (int i = 0; i < 2000 && (f->dr.rx < 32 || f->ex.rx < 32); i++) {
		deliver(h, 1u << 20);
		service(h);
	}
	assert_int_equal(f->dr.rx, 32);
	assert_int_equal(f->ex.rx, 32);
	assert_true(f->ex.bad < 0 && f->dr.bad < 0);
	tun_group_get_stats(h->gr, &gr);
	tun_group_get_stats(h->gs, &gs);
	assert_int_equal(gr.resumed + gs.resumed, 2);
	assert_int_equal(gr.replayed_bytes + gs.replayed_bytes, 0);
	free_all(h);
}

/* Each end checks the resume point the other names for a stream: what it
 * says it received must lie between what was acknowledged and what was sent.
 * A relay (trusted less than the notebook) or a sidecar that names another
 * would have bytes skipped or sent twice; the stream is reset instead, at
 * both ends, and counted as lost ("mismatch"). Here one end's own record of
 * what it received is altered before the resume: 100 bytes more, or 1 less,
 * than the other sent (16). */
static void test_a_resume_point_that_cannot_be_true_resets_the_stream(void **state)
{
	struct h *h = *state;
	static const struct {
		int relay_lies; /* else the sidecar's record is altered */
		int64_t delta;
	} cases[] = {{1, 100}, {1, -1}, {0, 100}, {0, -1}};

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct flow *f = one_idle_stream(h);
		struct tun_group *liar = cases[k].relay_lies ? h->gr : h->gs;
		struct tun_group *judge = cases[k].relay_lies ? h->gs : h->gr;
		struct tun_group_stats gr, gs, js;

		assert_non_null(liar->held);
		assert_int_equal(liar->held->rx, 16);
		liar->held->rx = (uint64_t)((int64_t)liar->held->rx + cases[k].delta);
		up(h);
		f->ex.tx_total = 32;
		f->dr.tx_total = 32;
		for (int i = 0; i < 2000 && !(f->ex.err || f->ex.eof) + !(f->dr.err || f->dr.eof);
		     i++) {
			deliver(h, 1u << 20);
			service(h);
		}
		if (!f->ex.err || !f->dr.err)
			fail_msg("case %zu: executor err %d eof %d, driver err %d eof %d: want two "
				 "resets",
				 k, f->ex.err, f->ex.eof, f->dr.err, f->dr.eof);
		/* nothing skipped or repeated reached either end */
		assert_true(f->ex.bad < 0 && f->dr.bad < 0);
		assert_true(f->ex.rx <= 32 && f->dr.rx <= 32);
		tun_group_get_stats(judge, &js);
		assert_int_equal(js.lost[TUN_LOST_MISMATCH], 1);
		assert_int_equal(js.resumed, 0); /* the other end may count it before the verdict */
		tun_group_get_stats(h->gr, &gr);
		tun_group_get_stats(h->gs, &gs);
		assert_int_equal(gr.held + gs.held, 0);
		free_all(h);
	}
}

/* A held stream whose socket fails while the tunnel is away: the executor
 * (or the driver) gave up and reset its connection while bytes for it wait
 * in its output. That end finds out when the write fails: it resets the
 * stream at once, counts it lost ("socket") and keeps a tombstone, so that
 * the resume tells the other end, which resets its socket too, instead of
 * resuming a stream nobody reads. */
static void test_a_socket_that_fails_during_the_outage_resets_its_stream(void **state)
{
	struct h *h = *state;

	for (int driver_fails = 0; driver_fails < 2; driver_fails++) {
		struct flow *f = one_stream(h);
		struct ts_end *gone = driver_fails ? &f->dr : &f->ex;
		struct ts_end *sender = driver_fails ? &f->ex : &f->dr;
		struct tun_group *mine = driver_fails ? h->gs : h->gr;
		struct tun_group *theirs = driver_fails ? h->gr : h->gs;
		struct tun_group_stats ms, ts;
		uint64_t last = 0;

		/* The sender sends until flow control stops it; the end that
		 * will fail reads nothing, so bytes wait in its output. */
		sender->tx_total = 16 + (64u << 20);
		for (int i = 0, still = 0; i < 5000 && still < 100; i++) {
			deliver(h, 1u << 20);
			ts_end_service(sender);
			event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
			still = sender->tx == last ? still + 1 : 0;
			last = sender->tx;
		}
		assert_true(sender->tx > 16 && sender->tx < sender->tx_total);
		cut(h);

		sr_sock_set_reset_on_close(gone->fd);
		close(gone->fd);
		gone->fd = -1;
		gone->reset_done = 1;
		for (int i = 0; i < 500; i++) {
			tun_group_get_stats(mine, &ms);
			if (ms.lost[TUN_LOST_SOCKET])
				break;
			event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
			usleep(1000);
		}
		assert_int_equal(ms.lost[TUN_LOST_SOCKET], 1);
		/* the other end still holds it: it cannot know before the resume */
		tun_group_get_stats(theirs, &ts);
		assert_int_equal(ts.held, 1);
		assert_int_equal(sender->err, 0);

		up(h);
		for (int i = 0; i < 5000 && !sender->err; i++) {
			deliver(h, 1u << 20);
			service(h);
		}
		if (!sender->err)
			fail_msg("the %s failed during the outage: the %s saw err %d eof %d, want a "
				 "reset",
				 driver_fails ? "driver" : "executor",
				 driver_fails ? "executor" : "driver", sender->err, sender->eof);
		assert_true(sender->bad < 0);
		tun_group_get_stats(h->gr, &ms);
		tun_group_get_stats(h->gs, &ts);
		assert_int_equal(ms.held + ts.held, 0);
		assert_int_equal(ms.resumed + ts.resumed, 0);
		free_all(h);
	}
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
	    cmocka_unit_test_setup_teardown(test_cut_anywhere_every_byte_exactly_once, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_idle_stream_keeps_nothing_for_replay, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_a_resume_point_that_cannot_be_true_resets_the_stream,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_a_socket_that_fails_during_the_outage_resets_its_stream,
					    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
