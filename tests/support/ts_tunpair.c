#include "tests/support/ts_tunpair.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/sr_bsock.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "tests/support/ts_net.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_ctl.h"
#include "tunnel/tun_group.h"

#define TS_TP_IOB (64 * 1024)

uint32_t ts_tp_rnd(struct ts_tp *h, uint32_t n)
{
	h->rng ^= h->rng << 13;
	h->rng ^= h->rng >> 7;
	h->rng ^= h->rng << 17;
	return n ? (uint32_t)(h->rng % n) : 0;
}

void ts_tp_seed(struct ts_tp *h, uint64_t seed)
{
	h->rng = seed * 0x2545F4914F6CDD1Dull + 0x9E3779B97F4A7C15ull;
}

/* ---- the two sessions ------------------------------------------------------- */

static void relay_output(struct tun_conn *c, void *arg)
{
	struct ts_tp *h = arg;

	if (c == h->relay)
		evbuffer_add_buffer(h->r2s, tun_conn_output(c));
}

static void sc_output(struct tun_conn *c, void *arg)
{
	struct ts_tp *h = arg;

	if (c == h->sc)
		evbuffer_add_buffer(h->s2r, tun_conn_output(c));
}

static void make_lease(struct tun_ctl_msg *m, uint32_t streams)
{
	memset(m, 0, sizeof(*m));
	m->type = TUN_CTL_LEASE;
	snprintf(m->lease, sizeof(m->lease), TS_TP_LEASE);
	snprintf(m->host, sizeof(m->host), "relay.example");
	m->ports[TUN_PORT_DRIVER] = TS_TP_PORT;
	m->roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	m->ttl_s = 60;
	snprintf(m->resume, sizeof(m->resume), "tok");
	m->streams = streams;
}

/* The relay's registration, as relay_tunnel.c does it: the lease (with the
 * number of held streams) first, then the held streams reopened. */
static void relay_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct ts_tp *h = arg;
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
	struct ts_tp *h = arg;
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
	struct ts_tp *h = arg;

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
	struct ts_tp *h = arg;
	struct sr_bsock *bev;
	int a, b;

	(void)c;
	for (int i = 0; i < h->nf; i++) {
		struct ts_flow *f = &h->f[i];
		if (f->conn_id != req->conn_id)
			continue;
		assert_false(f->dialled); /* a held stream is never dialled twice */
		f->dialled = 1;
		ts_end_tcp_pair(h->lfd, h->lport, &a, &b);
		if (h->small_bufs) {
			int one = 1; /* the kernel's minimum */
			setsockopt(a, SOL_SOCKET, SO_RCVBUF, &one, sizeof(one));
			setsockopt(b, SOL_SOCKET, SO_SNDBUF, &one, sizeof(one));
		}
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
	struct ts_tp *h = arg;

	(void)err;
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

static void start_tunnel(struct ts_tp *h)
{
	struct tun_conn_opts o;

	memset(&o, 0, sizeof(o));
	o.stream_window = 16 * 1024 + ts_tp_rnd(h, 48 * 1024); /* small: much retained */
	o.conn_window = 1u << 20;
	o.ping_interval_ms = 60000;
	o.ping_timeout_ms = 120000;
	o.sock_read_high = 16 * 1024 + ts_tp_rnd(h, 64 * 1024);
	/* Windows grow here too (the round trips of this loop are microseconds):
	 * credit for bytes not yet received must not free them from the
	 * sender's replay buffer. */
	o.grow_min_rtt_us = 1;
	o.max_stream_window = o.stream_window * (1u << ts_tp_rnd(h, 6));
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

void ts_tp_up(struct ts_tp *h)
{
	start_tunnel(h);
	for (int i = 0; i < 50 && !h->leased; i++) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
	}
	assert_true(h->leased);
}

void ts_tp_deliver(struct ts_tp *h, size_t n)
{
	uint8_t buf[TS_TP_IOB];

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

void ts_tp_service(struct ts_tp *h)
{
	for (int i = 0; i < h->nf; i++) {
		ts_end_service(&h->f[i].ex);
		ts_end_service(&h->f[i].dr);
	}
	event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

void ts_tp_run_for(struct ts_tp *h, uint64_t ms)
{
	uint64_t end = sr_now_us() + ms * 1000u;

	while (sr_now_us() < end) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
		usleep(2000);
	}
}

static void count_grows(struct ts_tp *h)
{
	struct tun_conn_stats st;

	tun_conn_get_stats(h->relay, &st);
	h->grows += st.window_grows;
	tun_conn_get_stats(h->sc, &st);
	h->grows += st.window_grows;
}

void ts_tp_cut(struct ts_tp *h)
{
	ts_tp_deliver(h, ts_tp_rnd(h, 3) == 0 ? 0 : ts_tp_rnd(h, 40000));
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

/* ---- a harness's life ------------------------------------------------------- */

struct ts_tp *ts_tp_new(void)
{
	struct ts_tp *h = calloc(1, sizeof(*h));

	assert_non_null(h);
	h->lfd = ts_listen_loopback(0, 0, &h->lport);
	return h;
}

void ts_tp_free(struct ts_tp *h)
{
	if (!h)
		return;
	close(h->lfd);
	free(h);
}

int ts_tp_setup(void **state)
{
	const char *lvl = getenv("SR_TEST_LOG");

	sr_log_set_level(SR_LOG_ERROR);
	if (lvl)
		sr_log_set_level_name(lvl);
	*state = ts_tp_new();
	return 0;
}

int ts_tp_teardown(void **state)
{
	ts_tp_free(*state);
	return 0;
}

void ts_tp_begin(struct ts_tp *h)
{
	struct tun_group_opts go = {.hold_ms = 60000};

	assert_non_null(h->base = event_base_new());
	assert_non_null(h->r2s = evbuffer_new());
	assert_non_null(h->s2r = evbuffer_new());
	h->gr = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-relay-group");
	h->gs = tun_group_new(h->base, TUN_ROLE_SIDECAR, &go, "t-sidecar-group");
	assert_non_null(h->gr);
	assert_non_null(h->gs);
	h->resuming = 0;
	h->cuts = 0;
	h->nf = 0;
}

void ts_tp_end(struct ts_tp *h)
{
	if (h->relay)
		count_grows(h);
	tun_conn_set_group(h->relay, NULL);
	tun_conn_set_group(h->sc, NULL);
	tun_conn_free(h->relay);
	tun_conn_free(h->sc);
	h->relay = h->sc = NULL;
	tun_group_free(h->gr);
	tun_group_free(h->gs);
	h->gr = h->gs = NULL;
	for (int i = 0; i < h->nf; i++) {
		ts_end_close(&h->f[i].ex);
		ts_end_close(&h->f[i].dr);
	}
	h->nf = 0;
	evbuffer_free(h->r2s);
	evbuffer_free(h->s2r);
	h->r2s = h->s2r = NULL;
	event_base_free(h->base);
	h->base = NULL;
}

void ts_tp_open_flow(struct ts_tp *h, int i)
{
	struct ts_flow *f = &h->f[i];
	struct sr_bsock *bev;
	int a, b;

	ts_end_tcp_pair(h->lfd, h->lport, &a, &b);
	f->ex.fd = a;
	assert_non_null(bev = sr_bsock_new(h->base, b));
	assert_int_equal(tun_conn_open_stream(h->relay, bev, TS_TP_PORT, TS_TP_LEASE,
					      f->conn_id, "10.0.0.9:5000"),
			 0);
}

/* ---- the random iteration --------------------------------------------------- */

static int all_done(const struct ts_tp *h)
{
	for (int i = 0; i < h->nf; i++)
		if (!ts_end_pair_done(&h->f[i].ex, &h->f[i].dr))
			return 0;
	return 1;
}

static void random_flows(struct ts_tp *h, uint64_t seed)
{
	h->nf = 1 + (int)ts_tp_rnd(h, TS_TP_MAXF);
	for (int i = 0; i < h->nf; i++) {
		struct ts_flow *f = &h->f[i];

		memset(f, 0, sizeof(*f));
		ts_end_init(&f->ex);
		ts_end_init(&f->dr);
		f->conn_id = seed * 16 + (uint64_t)i + 1;
		f->ex.tx_seed = f->dr.rx_seed = (uint32_t)(seed * 131 + (uint64_t)i);
		f->dr.tx_seed = f->ex.rx_seed = (uint32_t)(seed * 137 + (uint64_t)i + 7);
		f->ex.tx_total = ts_tp_rnd(h, 4) ? ts_tp_rnd(h, 300000) : 0;
		f->dr.tx_total = ts_tp_rnd(h, 4) ? ts_tp_rnd(h, 300000) : 0;
		f->ex.shut = 1;
		f->dr.shut = 1;
		/* Now and then an end resets midway, with bytes in flight. */
		if (ts_tp_rnd(h, 6) == 0 && f->ex.tx_total)
			f->ex.reset_at = 1 + ts_tp_rnd(h, (uint32_t)f->ex.tx_total);
		else if (ts_tp_rnd(h, 6) == 0 && f->dr.tx_total)
			f->dr.reset_at = 1 + ts_tp_rnd(h, (uint32_t)f->dr.tx_total);
		ts_tp_open_flow(h, i);
	}
}

void ts_tp_run_one(struct ts_tp *h, uint64_t seed, void (*after_cut)(struct ts_tp *h),
		   const char *trace_env)
{
	struct tun_group_stats gst;
	int ncuts = 1 + (int)(seed % 3), steps = 0;
	int trace = trace_env && getenv(trace_env);

	ts_tp_seed(h, seed);
	ts_tp_begin(h);
	ts_tp_up(h);
	random_flows(h, seed);

	while (!all_done(h)) {
		if (ncuts > 0 && ts_tp_rnd(h, 4) == 0) {
			ts_tp_cut(h);
			if (after_cut)
				after_cut(h);
			ncuts--;
			ts_tp_up(h);
		}
		ts_tp_deliver(h, 1 + ts_tp_rnd(h, 70000));
		ts_tp_service(h);
		if (trace && steps % 50 == 0)
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
	/* The streams_active gauge (sparkrelay_streams_active) is back to 0:
	 * a stream that died while held, or a reset one kept as a tombstone
	 * until the other side had its RST, is counted once and uncounted
	 * once, whichever session it ends on. */
	for (int i = 0; i < 200 && (tun_conn_nstreams(h->relay) || tun_conn_nstreams(h->sc));
	     i++) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
		usleep(
		    2000); /* streams that ended linger for a barrier PING, sent after 10 ms */
	}
	if (tun_conn_nstreams(h->relay) || tun_conn_nstreams(h->sc))
		fail_msg(
		    "seed %llu: streams_active %zu (relay), %zu (sidecar) after every flow "
		    "ended (cuts %llu)",
		    (unsigned long long)seed, tun_conn_nstreams(h->relay),
		    tun_conn_nstreams(h->sc), (unsigned long long)h->cuts);
	ts_tp_end(h);
}
