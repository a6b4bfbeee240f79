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

#include <unistd.h>

#include <event2/event.h>

#include "common/sr_util.h"
#include "tests/support/ts_end.h"
#include "tests/support/ts_tunpair.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_group.h"
#include "tunnel/tun_internal.h" /* a held stream's record, altered */

static void test_cut_anywhere_every_byte_exactly_once(void **state)
{
	struct ts_tp *h = *state;
	const char *n = getenv("SR_RESUME_ITERS"), *s0 = getenv("SR_RESUME_SEED");
	unsigned iters = n ? (unsigned)strtoul(n, NULL, 10) : 600;
	uint64_t first = s0 ? strtoull(s0, NULL, 10) : 1;
	uint64_t t0 = sr_now_us(), cuts = 0;

	for (unsigned i = 0; i < iters; i++) {
		ts_tp_run_one(h, first + i, NULL, "SR_RESUME_TRACE");
		cuts += h->cuts;
	}
	print_message("%u iterations, %llu cuts, %llu window growths, %.1f s\n", iters,
		      (unsigned long long)cuts, (unsigned long long)h->grows,
		      (double)(sr_now_us() - t0) / 1e6);
	/* The replay rule for grown windows was exercised. */
	assert_true(iters < 50 || h->grows > 0);
}

/* One stream (conn 7) that moved 16 bytes each way. */
static struct ts_flow *one_stream(struct ts_tp *h)
{
	struct ts_flow *f = &h->f[0];

	ts_tp_seed(h, 42);
	ts_tp_begin(h);
	ts_tp_up(h);

	h->nf = 1;
	memset(f, 0, sizeof(*f));
	ts_end_init(&f->ex);
	ts_end_init(&f->dr);
	f->conn_id = 7;
	f->ex.tx_seed = f->dr.rx_seed = 11;
	f->dr.tx_seed = f->ex.rx_seed = 13;
	f->ex.tx_total = 16;
	ts_tp_open_flow(h, 0);
	for (int i = 0; i < 500 && f->dr.rx < 16; i++) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
	}
	assert_int_equal(f->dr.rx, 16);
	f->dr.tx_total = 16; /* the driver answers */
	for (int i = 0; i < 500 && f->ex.rx < 16; i++) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
	}
	assert_int_equal(f->ex.rx, 16);
	return f;
}

/* One stream that moved 16 bytes each way, idle, then the tunnel cut: held
 * at both ends with nothing to replay. */
static struct ts_flow *one_idle_stream(struct ts_tp *h)
{
	struct tun_group_stats gr, gs;
	struct ts_flow *f = one_stream(h);

	ts_tp_run_for(h, 600); /* idle */
	ts_tp_cut(h);
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
	struct ts_tp *h = *state;
	struct tun_group_stats gr, gs;
	struct ts_flow *f = one_idle_stream(h);

	/* Resumed without a replay, and still carrying bytes both ways. */
	ts_tp_up(h);
	f->ex.tx_total = 32;
	f->dr.tx_total = 32;
	for (int i = 0; i < 2000 && (f->dr.rx < 32 || f->ex.rx < 32); i++) {
		ts_tp_deliver(h, 1u << 20);
		ts_tp_service(h);
	}
	assert_int_equal(f->dr.rx, 32);
	assert_int_equal(f->ex.rx, 32);
	assert_true(f->ex.bad < 0 && f->dr.bad < 0);
	tun_group_get_stats(h->gr, &gr);
	tun_group_get_stats(h->gs, &gs);
	assert_int_equal(gr.resumed + gs.resumed, 2);
	assert_int_equal(gr.replayed_bytes + gs.replayed_bytes, 0);
	ts_tp_end(h);
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
	struct ts_tp *h = *state;
	static const struct {
		int relay_lies; /* else the sidecar's record is altered */
		int64_t delta;
	} cases[] = {{1, 100}, {1, -1}, {0, 100}, {0, -1}};

	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		struct ts_flow *f = one_idle_stream(h);
		struct tun_group *liar = cases[k].relay_lies ? h->gr : h->gs;
		struct tun_group *judge = cases[k].relay_lies ? h->gs : h->gr;
		struct tun_group_stats gr, gs, js;

		assert_non_null(liar->held);
		assert_int_equal(liar->held->rx, 16);
		liar->held->rx = (uint64_t)((int64_t)liar->held->rx + cases[k].delta);
		ts_tp_up(h);
		f->ex.tx_total = 32;
		f->dr.tx_total = 32;
		for (int i = 0; i < 2000 && !(f->ex.err || f->ex.eof) + !(f->dr.err || f->dr.eof);
		     i++) {
			ts_tp_deliver(h, 1u << 20);
			ts_tp_service(h);
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
		/* nothing of the refused stream is left on the tunnel (the
		 * sidecar used to keep the stream its CONNECT came as) */
		for (int i = 0; i < 100; i++) {
			ts_tp_deliver(h, 1u << 20);
			ts_tp_service(h);
		}
		for (int end = 0; end < 2; end++) {
			struct tun_conn_stats cs;

			tun_conn_get_stats(end ? h->sc : h->relay, &cs);
			if (cs.streams_active != 0)
				fail_msg("case %zu: %s: %zu streams active after the reset", k,
					 end ? "sidecar" : "relay", cs.streams_active);
		}
		ts_tp_end(h);
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
	struct ts_tp *h = *state;

	for (int driver_fails = 0; driver_fails < 2; driver_fails++) {
		struct ts_flow *f = one_stream(h);
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
			ts_tp_deliver(h, 1u << 20);
			ts_end_service(sender);
			event_base_loop(h->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
			still = sender->tx == last ? still + 1 : 0;
			last = sender->tx;
		}
		assert_true(sender->tx > 16 && sender->tx < sender->tx_total);
		ts_tp_cut(h);

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

		ts_tp_up(h);
		for (int i = 0; i < 5000 && !sender->err; i++) {
			ts_tp_deliver(h, 1u << 20);
			ts_tp_service(h);
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
		ts_tp_end(h);
	}
}

/* A driver that reads nothing, and a relay that fills its streams' windows,
 * cuts the tunnel and resumes, again and again: each session grants every
 * stream a fresh window, so what the sidecar keeps for the driver used to
 * grow by a window per stream and resume, without a bound. A session now
 * adopts at most TUN_STALE_CONN_WINDOWS x conn_window of it (1 MiB here);
 * streams past it are reset, counted as lost ("socket"). */
static void test_resumes_into_a_driver_that_reads_nothing_are_bounded(void **state)
{
	struct ts_tp *h = *state;
	const uint64_t conn_window = 1u << 20;
	/* adopted, plus what one session can add: its window and the early
	 * credit with grown windows */
	const uint64_t bound = (TUN_STALE_CONN_WINDOWS + 3) * conn_window;
	struct tun_group_stats gs;
	uint64_t most = 0;
	int cycle;

	ts_tp_seed(h, 5);
	ts_tp_begin(h);
	h->small_bufs = 1;
	ts_tp_up(h);
	h->nf = TS_TP_MAXF;
	for (int i = 0; i < h->nf; i++) {
		struct ts_flow *f = &h->f[i];
		memset(f, 0, sizeof(*f));
		ts_end_init(&f->ex);
		ts_end_init(&f->dr);
		f->conn_id = 100 + (uint64_t)i;
		f->ex.tx_seed = f->dr.rx_seed = 21 + (uint32_t)i;
		f->dr.tx_seed = f->ex.rx_seed = 41 + (uint32_t)i;
		f->ex.tx_total = 1ull << 30;
		f->dr.no_read = 1;
		ts_tp_open_flow(h, i);
	}
	for (cycle = 0; cycle < 300; cycle++) {
		for (int k = 0; k < 40; k++) {
			ts_tp_deliver(h, 1u << 20);
			ts_tp_service(h);
		}
		ts_tp_cut(h);
		tun_group_get_stats(h->gs, &gs);
		if (gs.held_bytes > most)
			most = gs.held_bytes;
		assert_true(gs.held_bytes <= bound);
		ts_tp_up(h);
		for (int k = 0; k < 20; k++) { /* the resumes */
			ts_tp_deliver(h, 1u << 20);
			ts_tp_service(h);
		}
		tun_group_get_stats(h->gs, &gs);
		if (gs.lost[TUN_LOST_SOCKET])
			break;
	}
	print_message("%d resumes; the most kept for the drivers: %llu bytes (bound %llu)\n",
		      cycle, (unsigned long long)most, (unsigned long long)bound);
	assert_true(cycle < 300); /* the cap was reached, and streams reset */
	assert_true(most > TUN_STALE_CONN_WINDOWS * conn_window / 2);
	ts_tp_end(h);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_cut_anywhere_every_byte_exactly_once,
					    ts_tp_setup, ts_tp_teardown),
	    cmocka_unit_test_setup_teardown(
		test_resumes_into_a_driver_that_reads_nothing_are_bounded, ts_tp_setup,
		ts_tp_teardown),
	    cmocka_unit_test_setup_teardown(test_idle_stream_keeps_nothing_for_replay,
					    ts_tp_setup, ts_tp_teardown),
	    cmocka_unit_test_setup_teardown(
		test_a_resume_point_that_cannot_be_true_resets_the_stream, ts_tp_setup,
		ts_tp_teardown),
	    cmocka_unit_test_setup_teardown(
		test_a_socket_that_fails_during_the_outage_resets_its_stream, ts_tp_setup,
		ts_tp_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
