/* Scenarios fairness and spark: small messages that must not wait behind bulk
 * transfers on the same tunnel, and a simulated Spark application, in which
 * one executor can also send large task results back on its RPC connection
 * (spark.task.maxDirectResultSize raised, as the sidecar writes it) while
 * the others keep their heartbeats. */
#include "bench/bench.h"

#include "common/sr_err.h"
#include "common/sr_util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ fairness */

static double flow_hard_fair(const struct bench_opts *o)
{
	return o->timeout > 0 ? o->timeout : o->seconds + 60;
}

#define FAIR_MSG 64
#define FAIR_WARMUP_S 0.3

struct fair_bulk {
	struct fair *f;
	struct bufferevent *bev;
	uint64_t down, queued;
};

struct fair {
	struct bench_run run;
	struct bench_opts *o;
	struct bufferevent *hb;
	struct event *tick;
	struct fair_bulk *b;
	struct bench_hist h;
	uint64_t t_sent, due, skipped;
	int queued;
	size_t got;
	int outstanding, hb_failed, bulk_failed;
	double t_bulk0;
};

static void fair_bulk_close(struct fair_bulk *b, int failed)
{
	if (b->bev == NULL)
		return;
	bufferevent_free(b->bev);
	b->bev = NULL;
	if (failed)
		b->f->bulk_failed++;
}

static void fair_bulk_read_cb(struct bufferevent *bev, void *arg)
{
	struct fair_bulk *b = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (b->f->o->dir == BENCH_UP) /* only the final "OK n" comes back */
		return;
	b->down += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
}

static void fair_bulk_write_cb(struct bufferevent *bev, void *arg)
{
	struct fair_bulk *b = arg;
	if (b->f->o->dir & BENCH_UP)
		b->queued += bench_fill(bufferevent_get_output(bev), BENCH_OUT_HIGH, NULL);
}

static void fair_bulk_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct fair_bulk *b = arg;
	if (what & BEV_EVENT_CONNECTED) {
		evbuffer_add_printf(bufferevent_get_output(bev), "%s\n",
				    b->f->o->dir == BENCH_UP ? "SINK" : "SRC 0");
		fair_bulk_write_cb(bev, b);
		return;
	}
	fair_bulk_close(b, 1);
}

static void fair_hb_send(struct fair *f)
{
	uint64_t left = FAIR_MSG;
	f->outstanding = 1;
	f->got = 0;
	f->t_sent = sr_now_us();
	bench_fill(bufferevent_get_output(f->hb), SIZE_MAX, &left);
}

static void fair_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fair *f = arg;
	if (f->hb == NULL || f->run.stopping)
		return;
	if (f->outstanding) {
		/* The previous one is still on its way: this one goes when it
		 * returns, its latency counted from now, when it was due. */
		if (!f->queued) {
			f->queued = 1;
			f->due = sr_now_us();
			f->skipped++;
		}
		return;
	}
	fair_hb_send(f);
}

static void fair_hb_read_cb(struct bufferevent *bev, void *arg)
{
	struct fair *f = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	f->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (f->outstanding && f->got >= FAIR_MSG) {
		if (bench_now_s() - f->run.t0 >= FAIR_WARMUP_S)
			bench_hist_add(&f->h, sr_now_us() - f->t_sent);
		f->outstanding = 0;
		if (f->queued && !f->run.stopping) {
			f->queued = 0;
			fair_hb_send(f);
			f->t_sent = f->due;
		}
	}
}

static void fair_hb_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct fair *f = arg;
	if (what & BEV_EVENT_CONNECTED) {
		struct timeval tv = sr_tv_ms((uint64_t)f->o->hb_ms);
		evbuffer_add_printf(bufferevent_get_output(bev), "ECHO\n");
		event_add(f->tick, &tv);
		return;
	}
	bufferevent_free(f->hb);
	f->hb = NULL;
	f->hb_failed = 1;
	bench_run_stop(&f->run);
}

static void fair_on_stop(struct bench_run *run)
{
	event_base_loopexit(run->base, NULL);
}

int bench_fairness(struct bench_opts *o)
{
	struct bench_report *r;
	struct fair f;
	uint64_t bytes = 0;
	double elapsed;
	int i, rc;

	memset(&f, 0, sizeof(f));
	f.o = o;
	f.b = calloc((size_t)(o->bulk > 0 ? o->bulk : 1), sizeof(*f.b));
	if (f.b == NULL)
		return SR_ENOMEM;
	rc = bench_run_init(&f.run, o->seconds, flow_hard_fair(o), fair_on_stop, &f);
	if (rc != 0) {
		free(f.b);
		return rc;
	}
	f.tick = event_new(f.run.base, -1, EV_PERSIST, fair_tick_cb, &f);
	f.hb = bench_dial(f.run.base, &o->addr, o->addrlen);
	if (f.tick == NULL || f.hb == NULL) {
		rc = SR_EIO;
		goto out;
	}
	bufferevent_setcb(f.hb, fair_hb_read_cb, NULL, fair_hb_event_cb, &f);
	bufferevent_enable(f.hb, EV_READ | EV_WRITE);
	f.t_bulk0 = bench_now_s();
	for (i = 0; i < o->bulk; i++) {
		struct fair_bulk *b = &f.b[i];
		b->f = &f;
		b->bev = bench_dial(f.run.base, &o->addr, o->addrlen);
		if (b->bev == NULL) {
			f.bulk_failed++;
			continue;
		}
		bufferevent_setwatermark(b->bev, EV_WRITE, BENCH_OUT_HIGH / 2, 0);
		bufferevent_setcb(b->bev, fair_bulk_read_cb, fair_bulk_write_cb,
				  fair_bulk_event_cb, b);
		bufferevent_enable(b->bev, EV_READ | EV_WRITE);
	}
	event_base_dispatch(f.run.base);
	bench_run_stop(&f.run);
	for (i = 0; i < o->bulk; i++) {
		struct fair_bulk *b = &f.b[i];
		uint64_t unsent = b->bev ? evbuffer_get_length(bufferevent_get_output(b->bev)) : 0;
		bytes += b->down + (b->queued > unsent ? b->queued - unsent : 0);
		fair_bulk_close(b, 0);
	}
	elapsed = f.run.t_stop - f.t_bulk0;
	r = bench_report_new("fairness", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "bulk", o->bulk);
	bench_report_param(r, "hb_ms", o->hb_ms);
	bench_report_param(r, "seconds", o->seconds);
	bench_report_hist(r, "hb_rtt_us", "heartbeat round trip", &f.h);
	bench_report_num(r, "hb_skipped", "ticks queued behind a late one", (double)f.skipped, "", 0);
	bench_report_num(r, "bulk_gbit_s", "bulk throughput meanwhile",
			 elapsed > 0 ? (double)bytes * 8 / elapsed / 1e9 : 0, "Gbit/s", 2);
	bench_report_num(r, "failed", "failed connections", f.hb_failed + f.bulk_failed, "", 0);
	rc = bench_report_finish(r);
	if (rc == 0 && (f.hb_failed || f.h.n == 0))
		rc = SR_EIO;
out:
	if (f.hb)
		bufferevent_free(f.hb);
	if (f.tick)
		event_free(f.tick);
	bench_run_fini(&f.run);
	bench_hist_fini(&f.h);
	free(f.b);
	return rc;
}

/* --------------------------------------------------------------------- spark */

#define SP_BOOT_MSG 128   /* bootstrap: ask for the driver's properties */
#define SP_REG_MSG 512    /* RegisterExecutor */
#define SP_HB_MSG 256     /* Heartbeat */
#define SP_STATUS_MSG 160 /* StatusUpdate */
#define SP_STATUS_PER_HB 3
#define SP_RESULT_REPLY 16 /* the driver's acknowledgement of a result */
#define SP_RESULT_EXEC 0   /* the executor that sends the results */

enum sp_state { SP_WAIT, SP_BOOT, SP_REG, SP_RUN, SP_DEAD };
enum sp_msg { SP_NONE, SP_M_REG, SP_M_HB, SP_M_STATUS, SP_M_RESULT };

struct sp_exec {
	struct sp *s;
	int id;
	enum sp_state state;
	struct bufferevent *boot, *rpc, *bm;
	struct event *hb_ev, *status_ev;
	uint64_t t_start, t_sent, bm_got, bm_t0;
	size_t got;
	enum sp_msg outstanding;
	uint64_t hb_due, status_due; /* queued behind the outstanding message */
	int hb_queued, status_queued, fetched;
	int during;        /* the outstanding message was sent while a result was in flight */
	int result_queued; /* another result is due */
	uint64_t res_left; /* payload of the result in flight still to queue */
};

struct sp {
	struct bench_run run;
	struct bench_opts *o;
	struct sp_exec *e;
	struct event *arrive_ev, *end_ev;
	int arrived, registered, fetched, finished_bm;
	int fail_boot, fail_rpc, fail_bm;
	int lost; /* executors that ended before registering */
	double t_all_registered, t_first_fetch, t_last_fetch;
	uint64_t bm_bytes, bm_total;
	struct bench_hist h_reg, h_hb, h_status, h_fetch;
	double hb_s;
	/* results: o->results of result_bytes each from executor SP_RESULT_EXEC */
	struct event *result_ev;
	uint64_t result_bytes, result_us_total;
	int results_sent, results_done, result_failed, result_active;
	struct bench_hist h_result, h_hb_before, h_hb_during, h_hb_result_exec;
};

static int sp_results_over(const struct sp *s)
{
	return s->result_bytes == 0 || s->result_failed || s->results_done >= s->o->results;
}

static void sp_check_end(struct sp *s)
{
	if (s->registered + s->lost >= s->o->executors &&
	    s->finished_bm + s->lost >= s->o->executors && sp_results_over(s) &&
	    !event_pending(s->end_ev, EV_TIMEOUT, NULL)) {
		struct timeval tv = bench_tv(s->o->hold);
		evtimer_add(s->end_ev, &tv);
	}
}

static void sp_kill(struct sp_exec *e)
{
	if (e->boot)
		bufferevent_free(e->boot);
	if (e->rpc)
		bufferevent_free(e->rpc);
	if (e->bm)
		bufferevent_free(e->bm);
	e->boot = e->rpc = e->bm = NULL;
	if (e->hb_ev)
		event_del(e->hb_ev);
	if (e->status_ev)
		event_del(e->status_ev);
	e->state = SP_DEAD;
}

static struct bufferevent *sp_dial(struct sp_exec *e, int bm, bufferevent_data_cb rd,
				   bufferevent_event_cb ev)
{
	const struct bench_opts *o = e->s->o;
	struct bufferevent *bev = bm ? bench_dial(e->s->run.base, &o->addr2, o->addr2len)
				     : bench_dial(e->s->run.base, &o->addr, o->addrlen);
	if (bev == NULL)
		return NULL;
	bufferevent_setcb(bev, rd, NULL, ev, e);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return bev;
}

/* One message on the RPC connection (server mode RPC): the driver answers
 * `reply` bytes once all n have arrived. */
static void sp_msg(struct sp_exec *e, uint64_t n, uint32_t reply)
{
	struct evbuffer *out = bufferevent_get_output(e->rpc);
	unsigned char h[8] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
			      (unsigned char)(n >> 8),  (unsigned char)n,
			      (unsigned char)(reply >> 24), (unsigned char)(reply >> 16),
			      (unsigned char)(reply >> 8),  (unsigned char)reply};
	e->got = 0;
	e->during = e->s->result_active;
	evbuffer_add(out, h, sizeof(h));
	e->res_left = n;
	/* small messages go whole; a result is topped up by sp_rpc_write_cb */
	bench_fill(out, n > BENCH_OUT_HIGH ? BENCH_OUT_HIGH : SIZE_MAX, &e->res_left);
}

static void sp_send(struct sp_exec *e, struct bufferevent *bev, size_t n)
{
	uint64_t left = n;
	e->got = 0;
	bench_fill(bufferevent_get_output(bev), SIZE_MAX, &left);
}

static void sp_rpc_write_cb(struct bufferevent *bev, void *arg)
{
	struct sp_exec *e = arg;
	if (e->res_left)
		bench_fill(bufferevent_get_output(bev), BENCH_OUT_HIGH, &e->res_left);
}

static void sp_rpc_next(struct sp_exec *e)
{
	if (e->outstanding != SP_NONE || e->rpc == NULL)
		return;
	if (e->hb_queued) {
		e->hb_queued = 0;
		e->outstanding = SP_M_HB;
		e->t_sent = e->hb_due;
		sp_msg(e, SP_HB_MSG, SP_HB_MSG);
	} else if (e->status_queued) {
		e->status_queued = 0;
		e->outstanding = SP_M_STATUS;
		e->t_sent = e->status_due;
		sp_msg(e, SP_STATUS_MSG, SP_STATUS_MSG);
	} else if (e->result_queued && !e->s->run.stopping) {
		/* A task result (DirectTaskResult in a StatusUpdate): one
		 * message, heartbeats of this executor wait behind it as in
		 * Spark; the other executors' must not. */
		e->result_queued = 0;
		e->outstanding = SP_M_RESULT;
		e->t_sent = sr_now_us();
		e->s->result_active = 1;
		e->s->results_sent++;
		sp_msg(e, e->s->result_bytes, SP_RESULT_REPLY);
	}
}

static void sp_result_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sp *s = arg;
	struct sp_exec *e = &s->e[SP_RESULT_EXEC];

	if (e->state != SP_RUN || e->rpc == NULL) {
		s->result_failed = 1;
		sp_check_end(s);
		return;
	}
	e->result_queued = 1;
	sp_rpc_next(e);
}

static void sp_hb_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sp_exec *e = arg;
	if (e->s->run.stopping)
		return;
	if (!e->hb_queued) {
		e->hb_queued = 1;
		e->hb_due = sr_now_us(); /* latency counts from when it was due */
	}
	sp_rpc_next(e);
}

static void sp_status_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sp_exec *e = arg;
	if (e->s->run.stopping)
		return;
	if (!e->status_queued) {
		e->status_queued = 1;
		e->status_due = sr_now_us();
	}
	sp_rpc_next(e);
}

static void sp_bm_read_cb(struct bufferevent *bev, void *arg)
{
	struct sp_exec *e = arg;
	struct sp *s = e->s;
	struct evbuffer *in = bufferevent_get_input(bev);
	e->bm_got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (e->bm_got < s->bm_bytes)
		return;
	bench_hist_add(&s->h_fetch, sr_now_us() - e->bm_t0);
	s->bm_total += e->bm_got;
	s->t_last_fetch = bench_now_s();
	s->fetched++;
	s->finished_bm++;
	e->fetched = 1;
	bufferevent_free(e->bm);
	e->bm = NULL;
	sp_check_end(s);
}

static void sp_bm_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sp_exec *e = arg;
	if (what & BEV_EVENT_CONNECTED) {
		evbuffer_add_printf(bufferevent_get_output(bev), "SRC %" PRIu64 "\n",
				    e->s->bm_bytes);
		return;
	}
	e->s->fail_bm++;
	e->s->finished_bm++;
	bufferevent_free(e->bm);
	e->bm = NULL;
	sp_check_end(e->s);
}

static void sp_rpc_read_cb(struct bufferevent *bev, void *arg)
{
	struct sp_exec *e = arg;
	struct sp *s = e->s;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t want = e->state == SP_REG		? SP_REG_MSG
		      : e->outstanding == SP_M_HB	? SP_HB_MSG
		      : e->outstanding == SP_M_RESULT ? SP_RESULT_REPLY
						      : SP_STATUS_MSG;
	e->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (e->got < want)
		return;
	if (e->state == SP_REG) {
		struct timeval hb = bench_tv(s->hb_s);
		struct timeval st = bench_tv(s->hb_s / (SP_STATUS_PER_HB + 1));
		e->state = SP_RUN;
		e->outstanding = SP_NONE;
		bench_hist_add(&s->h_reg, sr_now_us() - e->t_start);
		if (++s->registered == s->o->executors) {
			s->t_all_registered = bench_now_s();
			/* results once every executor's heartbeats are going */
			if (s->result_bytes) {
				/* some heartbeats first: the latency to compare with */
				struct timeval tv = bench_tv(4 * s->hb_s > 0.5 ? 4 * s->hb_s : 0.5);
				evtimer_add(s->result_ev, &tv);
			}
		}
		evtimer_add(e->hb_ev, &hb);
		evtimer_add(e->status_ev, &st);
		e->bm_t0 = sr_now_us();
		if (s->t_first_fetch == 0)
			s->t_first_fetch = bench_now_s();
		e->bm = sp_dial(e, 1, sp_bm_read_cb, sp_bm_event_cb);
		if (e->bm == NULL) {
			s->fail_bm++;
			s->finished_bm++;
		}
		sp_check_end(s);
		return;
	}
	if (e->outstanding == SP_M_HB && s->result_bytes && e->id == SP_RESULT_EXEC) {
		bench_hist_add(&s->h_hb_result_exec, sr_now_us() - e->t_sent);
	} else if (e->outstanding == SP_M_HB) {
		bench_hist_add(&s->h_hb, sr_now_us() - e->t_sent);
		if (e->during || s->result_active)
			bench_hist_add(&s->h_hb_during, sr_now_us() - e->t_sent);
		else if (s->result_bytes && s->results_sent == 0)
			bench_hist_add(&s->h_hb_before, sr_now_us() - e->t_sent);
	} else if (e->outstanding == SP_M_STATUS && s->result_bytes && e->id == SP_RESULT_EXEC) {
		bench_hist_add(&s->h_hb_result_exec, sr_now_us() - e->t_sent);
	} else if (e->outstanding == SP_M_STATUS) {
		bench_hist_add(&s->h_status, sr_now_us() - e->t_sent);
	} else if (e->outstanding == SP_M_RESULT) {
		uint64_t us = sr_now_us() - e->t_sent;
		bench_hist_add(&s->h_result, us);
		s->result_us_total += us;
		s->result_active = 0;
		if (++s->results_done < s->o->results)
			e->result_queued = 1;
		sp_check_end(s);
	}
	e->outstanding = SP_NONE;
	sp_rpc_next(e);
}

static void sp_rpc_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sp_exec *e = arg;
	if (what & BEV_EVENT_CONNECTED) {
		evbuffer_add_printf(bufferevent_get_output(bev), "RPC\n");
		e->outstanding = SP_M_REG;
		sp_msg(e, SP_REG_MSG, SP_REG_MSG);
		return;
	}
	/* A closed RPC connection ends the executor, as in Spark. */
	e->s->fail_rpc++;
	if (e->outstanding == SP_M_RESULT || e->result_queued) {
		e->s->result_failed = 1;
		e->s->result_active = 0;
	}
	if (e->state != SP_RUN) {
		e->s->lost++;
	} else if (e->bm != NULL) {
		e->s->fail_bm++;
		e->s->finished_bm++;
	}
	sp_kill(e);
	sp_check_end(e->s);
}

static void sp_boot_read_cb(struct bufferevent *bev, void *arg)
{
	struct sp_exec *e = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	e->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (e->got < SP_BOOT_MSG)
		return;
	bufferevent_free(e->boot);
	e->boot = NULL;
	e->state = SP_REG;
	e->rpc = sp_dial(e, 0, sp_rpc_read_cb, sp_rpc_event_cb);
	if (e->rpc != NULL) {
		bufferevent_setcb(e->rpc, sp_rpc_read_cb, sp_rpc_write_cb, sp_rpc_event_cb, e);
		bufferevent_setwatermark(e->rpc, EV_WRITE, BENCH_OUT_HIGH / 2, 0);
	}
	if (e->rpc == NULL) {
		e->s->fail_rpc++;
		e->s->lost++;
		sp_kill(e);
		sp_check_end(e->s);
	}
}

static void sp_boot_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct sp_exec *e = arg;
	if (what & BEV_EVENT_CONNECTED) {
		evbuffer_add_printf(bufferevent_get_output(bev), "ECHO\n");
		sp_send(e, bev, SP_BOOT_MSG);
		return;
	}
	e->s->fail_boot++;
	e->s->lost++;
	sp_kill(e);
	sp_check_end(e->s);
}

/* One batch per second; executors inside a batch start together, as pods
 * scheduled together do. */
static void sp_arrive_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sp *s = arg;
	int i;
	if (s->run.stopping)
		return;
	for (i = 0; i < s->o->batch && s->arrived < s->o->executors; i++) {
		struct sp_exec *e = &s->e[s->arrived++];
		e->state = SP_BOOT;
		e->t_start = sr_now_us();
		e->boot = sp_dial(e, 0, sp_boot_read_cb, sp_boot_event_cb);
		if (e->boot == NULL) {
			s->fail_boot++;
			s->lost++;
			sp_kill(e);
		}
	}
	if (s->arrived == s->o->executors)
		event_del(s->arrive_ev);
	sp_check_end(s);
}

static void sp_end_cb(evutil_socket_t fd, short what, void *arg)
{
	bench_run_stop(&((struct sp *)arg)->run);
}

static void sp_on_stop(struct bench_run *run)
{
	event_base_loopexit(run->base, NULL);
}

int bench_spark(struct bench_opts *o)
{
	struct bench_report *r;
	struct sp s;
	struct timeval one = {1, 0};
	double span;
	int i, rc;

	memset(&s, 0, sizeof(s));
	s.o = o;
	s.hb_s = o->hb_ms / 1000.0 * o->time_scale;
	s.bm_bytes = (uint64_t)(o->bm_mib * 1024 * 1024);
	s.result_bytes = (uint64_t)(o->result_mib * 1024 * 1024);
	s.e = calloc((size_t)o->executors, sizeof(*s.e));
	if (s.e == NULL)
		return SR_ENOMEM;
	rc = bench_run_init(&s.run, o->seconds, flow_hard_fair(o), sp_on_stop, &s);
	if (rc != 0) {
		free(s.e);
		return rc;
	}
	s.arrive_ev = event_new(s.run.base, -1, EV_PERSIST, sp_arrive_cb, &s);
	s.end_ev = evtimer_new(s.run.base, sp_end_cb, &s);
	s.result_ev = evtimer_new(s.run.base, sp_result_cb, &s);
	if (s.arrive_ev == NULL || s.end_ev == NULL || s.result_ev == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	for (i = 0; i < o->executors; i++) {
		s.e[i].s = &s;
		s.e[i].id = i;
		s.e[i].hb_ev = event_new(s.run.base, -1, EV_PERSIST, sp_hb_cb, &s.e[i]);
		s.e[i].status_ev = event_new(s.run.base, -1, EV_PERSIST, sp_status_cb, &s.e[i]);
		if (s.e[i].hb_ev == NULL || s.e[i].status_ev == NULL) {
			rc = SR_ENOMEM;
			goto out;
		}
	}
	event_add(s.arrive_ev, &one);
	sp_arrive_cb(-1, EV_TIMEOUT, &s);
	event_base_dispatch(s.run.base);
	bench_run_stop(&s.run);

	span = s.t_last_fetch > s.t_first_fetch ? s.t_last_fetch - s.t_first_fetch : 0;
	r = bench_report_new("spark", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "executors", o->executors);
	bench_report_param(r, "batch", o->batch);
	bench_report_param(r, "hb_s", s.hb_s);
	bench_report_param(r, "bm_mib", o->bm_mib);
	bench_report_num(r, "registered", "executors registered", s.registered, "", 0);
	bench_report_num(r, "all_registered_s", "time until all registered",
			 s.t_all_registered > 0 ? s.t_all_registered - s.run.t0 : -1, "s", 2);
	bench_report_hist(r, "register_us", "arrival -> registered", &s.h_reg);
	bench_report_hist(r, "hb_rtt_us", "heartbeat round trip", &s.h_hb);
	bench_report_hist(r, "status_rtt_us", "status update round trip", &s.h_status);
	bench_report_hist(r, "fetch_us", "broadcast fetch time", &s.h_fetch);
	bench_report_num(r, "broadcast_gbit_s", "broadcast throughput (aggregate)",
			 span > 0 ? (double)s.bm_total * 8 / span / 1e9 : 0, "Gbit/s", 2);
	if (s.result_bytes) {
		bench_report_param(r, "result_mib", o->result_mib);
		bench_report_param(r, "results", o->results);
		bench_report_num(r, "results_ok", "task results acknowledged by the driver",
				 s.results_done, "", 0);
		bench_report_hist(r, "result_us", "task result: first byte -> acknowledged",
				  &s.h_result);
		bench_report_num(r, "result_gbit_s", "task result throughput (one stream)",
				 s.result_us_total
				     ? (double)s.result_bytes * s.results_done * 8 /
					   ((double)s.result_us_total / 1e6) / 1e9
				     : 0,
				 "Gbit/s", 2);
		bench_report_hist(r, "hb_before_result_us",
				  "heartbeat round trip of the others before the results",
				  &s.h_hb_before);
		bench_report_hist(r, "hb_during_result_us",
				  "heartbeat round trip of other executors during results",
				  &s.h_hb_during);
		bench_report_hist(r, "hb_result_exec_us",
				  "heartbeat, status of the executor sending them (wait behind)",
				  &s.h_hb_result_exec);
	}
	bench_report_num(r, "fail_boot", "failed bootstrap connections", s.fail_boot, "", 0);
	bench_report_num(r, "fail_rpc", "failed RPC connections", s.fail_rpc, "", 0);
	bench_report_num(r, "fail_bm", "failed block-manager fetches", s.fail_bm, "", 0);
	bench_report_num(r, "timed_out", "hit the time bound", s.t_all_registered == 0 ||
			 s.finished_bm < o->executors, "", 0);
	rc = bench_report_finish(r);
	if (rc == 0 && (s.fail_boot || s.fail_rpc || s.fail_bm || s.registered < o->executors ||
			(s.result_bytes && s.results_done < o->results)))
		rc = SR_EIO;
out:
	for (i = 0; i < o->executors; i++) {
		sp_kill(&s.e[i]);
		if (s.e[i].hb_ev)
			event_free(s.e[i].hb_ev);
		if (s.e[i].status_ev)
			event_free(s.e[i].status_ev);
	}
	if (s.arrive_ev)
		event_free(s.arrive_ev);
	if (s.end_ev)
		event_free(s.end_ev);
	if (s.result_ev)
		event_free(s.result_ev);
	bench_run_fini(&s.run);
	bench_hist_fini(&s.h_reg);
	bench_hist_fini(&s.h_hb);
	bench_hist_fini(&s.h_status);
	bench_hist_fini(&s.h_fetch);
	bench_hist_fini(&s.h_result);
	bench_hist_fini(&s.h_hb_before);
	bench_hist_fini(&s.h_hb_during);
	bench_hist_fini(&s.h_hb_result_exec);
	free(s.e);
	return rc;
}
