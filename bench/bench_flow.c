/* Scenarios throughput, rpc, connect and idle. Each keeps its connections in
 * one array owned by the scenario; a connection's bufferevent is freed only
 * from the outermost callback of that connection, and the loop ends when the
 * last one is gone or the run's hard bound passes. */
#include "bench/bench.h"

#include "common/sr_err.h"
#include "common/sr_util.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static double flow_hard(const struct bench_opts *o, double soft)
{
	return o->timeout > 0 ? o->timeout : soft + 60;
}

/* ---------------------------------------------------------------- throughput */

struct tp_conn {
	struct tp *t;
	struct bufferevent *bev;
	uint64_t up_left;   /* bytes still to queue (fixed mode) */
	uint64_t up_queued; /* bytes handed to the output buffer */
	uint64_t up_sent;   /* counted when the connection ends */
	uint64_t down;
	uint64_t acked;     /* SINK's "OK n" */
	int up_done, shut, done;
	double t_end;
};

struct tp {
	struct bench_run run;
	struct bench_opts *o;
	struct tp_conn *c;
	int live, failed;
	double cpu1;
	int have_cpu1;
};

static int tp_sends(const struct tp *t)
{
	return t->o->dir & BENCH_UP;
}

static void tp_finish(struct tp_conn *c, int failed)
{
	struct evbuffer *out;
	if (c->done)
		return;
	out = bufferevent_get_output(c->bev);
	c->up_sent = c->up_queued - evbuffer_get_length(out);
	c->done = 1;
	c->t_end = bench_now_s();
	if (c->t->live == 1 && c->t->o->dir == BENCH_UP) {
		c->t->cpu1 = bench_proc_cpu(c->t->o->pids, c->t->o->npids);
		c->t->have_cpu1 = 1;
	}
	bufferevent_free(c->bev);
	c->bev = NULL;
	if (failed)
		c->t->failed++;
	if (--c->t->live == 0)
		event_base_loopexit(c->t->run.base, NULL);
}

static int tp_complete(const struct tp_conn *c)
{
	const struct bench_opts *o = c->t->o;
	switch (o->dir) {
	case BENCH_UP:
		return c->acked > 0;
	case BENCH_DOWN:
		return o->bytes > 0 && c->down >= o->bytes;
	case BENCH_BOTH:
		return o->bytes > 0 && c->down >= o->bytes && c->shut;
	}
	return 0;
}

static void tp_pump(struct tp_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	if (!c->up_done) {
		c->up_queued += bench_fill(out, BENCH_OUT_HIGH,
					   c->t->o->bytes ? &c->up_left : NULL);
		if (c->t->o->bytes && c->up_left == 0)
			c->up_done = 1;
	}
	if (c->up_done && !c->shut && evbuffer_get_length(out) == 0) {
		shutdown(bufferevent_getfd(c->bev), SHUT_WR);
		c->shut = 1;
	}
}

static void tp_read_cb(struct bufferevent *bev, void *arg)
{
	struct tp_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (c->t->o->dir == BENCH_UP) {
		char *line = evbuffer_readln(in, NULL, EVBUFFER_EOL_LF);
		if (line != NULL) {
			c->acked = strtoull(line[0] == 'O' ? line + 3 : line, NULL, 10);
			free(line);
			tp_finish(c, c->acked == 0);
		}
		return;
	}
	c->down += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (tp_complete(c))
		tp_finish(c, 0);
}

static void tp_write_cb(struct bufferevent *bev, void *arg)
{
	struct tp_conn *c = arg;
	if (!tp_sends(c->t))
		return;
	tp_pump(c);
	if (tp_complete(c))
		tp_finish(c, 0);
}

static void tp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct tp_conn *c = arg;
	const struct bench_opts *o = c->t->o;
	if (what & BEV_EVENT_CONNECTED) {
		struct evbuffer *out = bufferevent_get_output(bev);
		if (o->dir == BENCH_UP)
			evbuffer_add_printf(out, "SINK\n");
		else
			evbuffer_add_printf(out, "SRC %" PRIu64 "\n", o->bytes);
		if (tp_sends(c->t))
			tp_pump(c);
		return;
	}
	/* EOF: the server ends a SRC of n bytes by half-closing; in both mode
	 * our own bytes may still be on their way. */
	if ((what & BEV_EVENT_EOF) && o->dir == BENCH_BOTH && o->bytes > 0 && !c->shut &&
	    c->down >= o->bytes) {
		bufferevent_disable(bev, EV_READ);
		return;
	}
	tp_finish(c, !(what & BEV_EVENT_EOF) || (o->bytes > 0 && o->dir != BENCH_UP &&
						 c->down < o->bytes));
}

static void tp_on_stop(struct bench_run *run)
{
	struct tp *t = run->arg;
	int i;
	/* Sample while every connection is still open: a tool that forks per
	 * connection (socat) loses its children's CPU once they are gone. */
	if (t->o->dir != BENCH_UP) {
		t->cpu1 = bench_proc_cpu(t->o->pids, t->o->npids);
		t->have_cpu1 = 1;
	}
	for (i = 0; i < t->o->conns; i++) {
		struct tp_conn *c = &t->c[i];
		if (c->done)
			continue;
		if (t->o->dir == BENCH_UP) {
			/* Let the queued tail drain, then wait for the server's count. */
			c->up_done = 1;
			tp_pump(c);
		} else {
			tp_finish(c, 0);
		}
	}
}

int bench_throughput(struct bench_opts *o)
{
	static const char *dirs[] = {"", "down", "up", "both"};
	struct bench_report *r;
	struct tp t;
	double cpu0, cpu1, elapsed, t_end = 0;
	uint64_t up = 0, down = 0, total;
	int i, rc;

	memset(&t, 0, sizeof(t));
	t.o = o;
	t.c = calloc((size_t)o->conns, sizeof(*t.c));
	if (t.c == NULL)
		return SR_ENOMEM;
	cpu0 = bench_proc_cpu(o->pids, o->npids);
	rc = bench_run_init(&t.run, o->bytes ? 0 : o->seconds,
			    flow_hard(o, o->bytes ? 600 : o->seconds), tp_on_stop, &t);
	if (rc != 0) {
		free(t.c);
		return rc;
	}
	for (i = 0; i < o->conns; i++) {
		struct tp_conn *c = &t.c[i];
		c->t = &t;
		c->up_left = o->bytes;
		c->bev = bench_dial(t.run.base, &o->addr, o->addrlen);
		if (c->bev == NULL) {
			c->done = 1;
			t.failed++;
			continue;
		}
		t.live++;
		bufferevent_setwatermark(c->bev, EV_WRITE, BENCH_OUT_HIGH / 2, 0);
		bufferevent_setcb(c->bev, tp_read_cb, tp_write_cb, tp_event_cb, c);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	}
	if (t.live > 0)
		event_base_dispatch(t.run.base);
	/* Every connection may have ended (failed) before the soft bound. */
	bench_run_stop(&t.run);
	for (i = 0; i < o->conns; i++) {
		struct tp_conn *c = &t.c[i];
		if (!c->done) /* hard bound hit */
			tp_finish(c, 1);
		up += o->dir == BENCH_UP ? c->acked : (o->dir == BENCH_BOTH ? c->up_sent : 0);
		down += c->down;
		if (c->t_end > t_end)
			t_end = c->t_end;
	}
	cpu1 = t.have_cpu1 ? t.cpu1 : bench_proc_cpu(o->pids, o->npids);
	/* Duration mode: the window ends at the stop, except for up, which ends
	 * when the server has counted the last byte. */
	elapsed = (o->bytes == 0 && o->dir != BENCH_UP ? t.run.t_stop : t_end) - t.run.t0;
	if (elapsed <= 0)
		elapsed = 1e-9;
	total = up + down;

	r = bench_report_new("throughput", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "conns", o->conns);
	bench_report_param(r, "bytes", (double)o->bytes);
	bench_report_param(r, "seconds", o->seconds);
	bench_report_param_str(r, "dir", dirs[o->dir]);
	bench_report_num(r, "gbit_s", "throughput", (double)total * 8 / elapsed / 1e9, "Gbit/s", 2);
	bench_report_num(r, "up_gbit_s", "  up (client -> server)", (double)up * 8 / elapsed / 1e9, "Gbit/s", 2);
	bench_report_num(r, "down_gbit_s", "  down (server -> client)", (double)down * 8 / elapsed / 1e9, "Gbit/s", 2);
	bench_report_num(r, "bytes", "bytes moved", (double)total, "B", 0);
	bench_report_num(r, "elapsed_s", "elapsed", elapsed, "s", 3);
	if (o->npids > 0) {
		bench_report_num(r, "cpu_s", "tunnel CPU (--pid)", cpu1 - cpu0, "s", 2);
		bench_report_num(r, "cpu_s_per_gb", "tunnel CPU per GB",
				 total ? (cpu1 - cpu0) / ((double)total / 1e9) : 0, "s/GB", 3);
	}
	bench_report_num(r, "failed", "failed connections", t.failed, "", 0);
	bench_report_num(r, "timed_out", "hit the hard bound", t.run.timed_out, "", 0);
	rc = bench_report_finish(r);
	if (rc == 0 && (t.failed > 0 || t.run.timed_out))
		rc = SR_EIO;
out:
	bench_run_fini(&t.run);
	free(t.c);
	return rc;
}

/* ----------------------------------------------------------------------- rpc */

struct rpc_conn {
	struct rpc *p;
	struct bufferevent *bev;
	size_t got;
	uint64_t t_sent;
	int warm, done;
};

struct rpc {
	struct bench_run run;
	struct bench_opts *o;
	struct rpc_conn *c;
	struct bench_hist h;
	uint64_t rtts; /* every completed round trip, the unmeasured first ones too */
	double cpu0, cpu1;
	int live, failed;
};

static void rpc_finish(struct rpc_conn *c, int failed)
{
	if (c->done)
		return;
	c->done = 1;
	bufferevent_free(c->bev);
	c->bev = NULL;
	if (failed)
		c->p->failed++;
	if (--c->p->live == 0)
		event_base_loopexit(c->p->run.base, NULL);
}

static void rpc_send(struct rpc_conn *c)
{
	uint64_t left = c->p->o->size;
	c->got = 0;
	c->t_sent = sr_now_us();
	bench_fill(bufferevent_get_output(c->bev), SIZE_MAX, &left);
}

static void rpc_read_cb(struct bufferevent *bev, void *arg)
{
	struct rpc_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	c->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (c->got < c->p->o->size)
		return;
	if (c->got > c->p->o->size) {
		rpc_finish(c, 1); /* the echo returned more than was sent */
		return;
	}
	if (c->warm)
		bench_hist_add(&c->p->h, sr_now_us() - c->t_sent);
	c->warm = 1;
	c->p->rtts++;
	if (c->p->run.stopping || c->p->h.n + c->p->h.n_dropped >= c->p->o->count) {
		bench_run_stop(&c->p->run);
		return;
	}
	rpc_send(c);
}

static void rpc_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct rpc_conn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		evbuffer_add_printf(bufferevent_get_output(bev), "ECHO\n");
		rpc_send(c);
		return;
	}
	rpc_finish(c, 1);
}

static void rpc_on_stop(struct bench_run *run)
{
	struct rpc *p = run->arg;
	int i;
	/* Read while the load stops, before the closes add their own work. */
	p->cpu1 = bench_proc_cpu(p->o->pids, p->o->npids);
	for (i = 0; i < p->o->conns; i++)
		rpc_finish(&p->c[i], 0);
}

int bench_rpc(struct bench_opts *o)
{
	struct bench_report *r;
	struct rpc p;
	double elapsed;
	int i, rc;

	memset(&p, 0, sizeof(p));
	p.o = o;
	p.c = calloc((size_t)o->conns, sizeof(*p.c));
	if (p.c == NULL)
		return SR_ENOMEM;
	rc = bench_run_init(&p.run, o->seconds, flow_hard(o, o->seconds), rpc_on_stop, &p);
	if (rc != 0) {
		free(p.c);
		return rc;
	}
	for (i = 0; i < o->conns; i++) {
		struct rpc_conn *c = &p.c[i];
		c->p = &p;
		c->bev = bench_dial(p.run.base, &o->addr, o->addrlen);
		if (c->bev == NULL) {
			c->done = 1;
			p.failed++;
			continue;
		}
		p.live++;
		bufferevent_setcb(c->bev, rpc_read_cb, NULL, rpc_event_cb, c);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	}
	p.cpu0 = bench_proc_cpu(o->pids, o->npids);
	if (p.live > 0)
		event_base_dispatch(p.run.base);
	bench_run_stop(&p.run);
	elapsed = p.run.t_stop - p.run.t0;
	r = bench_report_new("rpc", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "conns", o->conns);
	bench_report_param(r, "size", (double)o->size);
	bench_report_hist(r, "rtt_us", "round trip", &p.h);
	bench_report_num(r, "rate", "round trips per second",
			 elapsed > 0 ? (double)p.h.n / elapsed : 0, "/s", 0);
	if (o->npids > 0) {
		/* The connects are in the figure too; a few against thousands of
		 * round trips. */
		bench_report_num(r, "cpu_s", "tunnel CPU (--pid)", p.cpu1 - p.cpu0, "s", 2);
		bench_report_num(r, "cpu_us_per_rtt", "tunnel CPU per round trip",
				 p.rtts ? (p.cpu1 - p.cpu0) * 1e6 / (double)p.rtts : 0, "us", 1);
	}
	bench_report_num(r, "failed", "failed connections", p.failed, "", 0);
	bench_report_num(r, "timed_out", "hit the hard bound", p.run.timed_out, "", 0);
	rc = bench_report_finish(r);
	if (rc == 0 && (p.failed > 0 || p.h.n == 0))
		rc = SR_EIO;
out:
	bench_run_fini(&p.run);
	bench_hist_fini(&p.h);
	free(p.c);
	return rc;
}

/* ------------------------------------------------------------------- connect */

#define CN_MSG 64

struct cn_slot {
	struct cn *n;
	struct bufferevent *bev;
	uint64_t t0;
	size_t got;
};

struct cn {
	struct bench_run run;
	struct bench_opts *o;
	struct cn_slot *s;
	struct bench_hist h_conn, h_reply;
	uint64_t started, completed, in_window, failed;
	double cpu0, cpu1;
	int live;
};

static void cn_start(struct cn_slot *s);

static void cn_end(struct cn_slot *s, int ok)
{
	struct cn *n = s->n;
	bufferevent_free(s->bev);
	s->bev = NULL;
	if (ok) {
		n->completed++;
		if (!n->run.stopping)
			n->in_window++;
	} else {
		n->failed++;
	}
	/* A target that refuses everything must not spin: give up after as many
	 * failures as the count bound, or 1000 with nothing completed. */
	if (n->failed >= n->o->count || (n->failed >= 1000 && n->completed == 0))
		bench_run_stop(&n->run);
	if (!n->run.stopping && n->started < n->o->count) {
		cn_start(s);
		return;
	}
	if (--n->live == 0)
		event_base_loopexit(n->run.base, NULL);
}

static void cn_read_cb(struct bufferevent *bev, void *arg)
{
	struct cn_slot *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	s->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (s->got < CN_MSG)
		return;
	bench_hist_add(&s->n->h_reply, sr_now_us() - s->t0);
	cn_end(s, s->got == CN_MSG);
}

static void cn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct cn_slot *s = arg;
	if (what & BEV_EVENT_CONNECTED) {
		uint64_t left = CN_MSG;
		bench_hist_add(&s->n->h_conn, sr_now_us() - s->t0);
		evbuffer_add_printf(bufferevent_get_output(bev), "ECHO\n");
		bench_fill(bufferevent_get_output(bev), SIZE_MAX, &left);
		return;
	}
	cn_end(s, 0);
}

static void cn_start(struct cn_slot *s)
{
	struct cn *n = s->n;
	for (;;) {
		n->started++;
		s->t0 = sr_now_us();
		s->got = 0;
		s->bev = bench_dial(n->run.base, &n->o->addr, n->o->addrlen);
		if (s->bev != NULL)
			break;
		/* No socket (EMFILE): this slot ends. */
		n->failed++;
		if (--n->live == 0)
			event_base_loopexit(n->run.base, NULL);
		return;
	}
	bufferevent_setcb(s->bev, cn_read_cb, NULL, cn_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

int bench_connect(struct bench_opts *o)
{
	struct bench_report *r;
	struct cn n;
	double window;
	int i, rc;

	memset(&n, 0, sizeof(n));
	n.o = o;
	n.s = calloc((size_t)o->concurrency, sizeof(*n.s));
	if (n.s == NULL)
		return SR_ENOMEM;
	rc = bench_run_init(&n.run, o->seconds, flow_hard(o, o->seconds), NULL, &n);
	if (rc != 0) {
		free(n.s);
		return rc;
	}
	n.live = o->concurrency;
	n.cpu0 = bench_proc_cpu(o->pids, o->npids);
	for (i = 0; i < o->concurrency; i++) {
		n.s[i].n = &n;
		if ((uint64_t)i < o->count)
			cn_start(&n.s[i]);
		else
			n.live--;
	}
	if (n.live > 0)
		event_base_dispatch(n.run.base);
	n.cpu1 = bench_proc_cpu(o->pids, o->npids);
	for (i = 0; i < o->concurrency; i++)
		if (n.s[i].bev != NULL) { /* hard bound hit */
			bufferevent_free(n.s[i].bev);
			n.failed++;
		}
	bench_run_stop(&n.run);
	window = n.run.t_stop - n.run.t0;
	r = bench_report_new("connect", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "concurrency", o->concurrency);
	bench_report_param(r, "seconds", o->seconds);
	bench_report_num(r, "rate", "connections per second",
			 window > 0 ? (double)n.in_window / window : 0, "/s", 0);
	bench_report_hist(r, "connect_us", "TCP connect to the front", &n.h_conn);
	bench_report_hist(r, "first_reply_us", "connect + first reply", &n.h_reply);
	if (o->npids > 0)
		bench_report_num(r, "cpu_us_per_conn", "tunnel CPU per connection",
				 n.completed ? (n.cpu1 - n.cpu0) * 1e6 / (double)n.completed : 0,
				 "us", 1);
	bench_report_num(r, "completed", "completed", (double)n.completed, "", 0);
	bench_report_num(r, "failed", "failed", (double)n.failed, "", 0);
	bench_report_num(r, "timed_out", "hit the hard bound", n.run.timed_out, "", 0);
	rc = bench_report_finish(r);
	if (rc == 0 && n.completed == 0)
		rc = SR_EIO;
out:
	bench_run_fini(&n.run);
	bench_hist_fini(&n.h_conn);
	bench_hist_fini(&n.h_reply);
	free(n.s);
	return rc;
}

/* ---------------------------------------------------------------------- idle */

#define IDLE_MSG 16

enum idle_phase { IDLE_OPENING, IDLE_HOLDING, IDLE_CHECKING, IDLE_DONE };

struct idle_conn {
	struct idle *d;
	struct bufferevent *bev;
	size_t got;
	int state; /* 0 connecting, 1 established, 2 checked, -1 failed */
};

struct idle {
	struct bench_run run;
	struct bench_opts *o;
	struct idle_conn *c;
	struct event *phase_ev;
	enum idle_phase phase;
	int next, pending, established, failed, checked, check_pending;
	long rss0[BENCH_MAX_PIDS], rss1[BENCH_MAX_PIDS];
	double t_open_done;
};

static void idle_open_more(struct idle *d);

static void idle_fail(struct idle_conn *c)
{
	struct idle *d = c->d;
	int was = c->state;
	if (c->bev) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	c->state = -1;
	d->failed++;
	if (was == 0) {
		d->pending--;
		idle_open_more(d);
	} else if (d->phase == IDLE_CHECKING && was == 1) {
		if (--d->check_pending == 0) {
			event_del(d->phase_ev);
			event_active(d->phase_ev, EV_TIMEOUT, 0);
		}
	}
}

static void idle_read_cb(struct bufferevent *bev, void *arg)
{
	struct idle_conn *c = arg;
	struct idle *d = c->d;
	struct evbuffer *in = bufferevent_get_input(bev);
	c->got += evbuffer_get_length(in);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (c->got < IDLE_MSG)
		return;
	if (c->got > IDLE_MSG) {
		idle_fail(c);
		return;
	}
	c->got = 0;
	if (c->state == 0) {
		c->state = 1;
		d->established++;
		d->pending--;
		idle_open_more(d);
	} else if (c->state == 1 && d->phase == IDLE_CHECKING) {
		c->state = 2;
		d->checked++;
		if (--d->check_pending == 0) {
			event_del(d->phase_ev);
			event_active(d->phase_ev, EV_TIMEOUT, 0);
		}
	}
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct idle_conn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		uint64_t left = IDLE_MSG;
		evbuffer_add_printf(bufferevent_get_output(bev), "ECHO\n");
		bench_fill(bufferevent_get_output(bev), SIZE_MAX, &left);
		return;
	}
	idle_fail(c);
}

static void idle_open_more(struct idle *d)
{
	struct timeval settle = {1, 0};
	while (d->phase == IDLE_OPENING && !d->run.stopping && d->pending < d->o->concurrency &&
	       d->next < d->o->conns) {
		struct idle_conn *c = &d->c[d->next++];
		c->d = d;
		c->bev = bench_dial(d->run.base, &d->o->addr, d->o->addrlen);
		if (c->bev == NULL) {
			c->state = -1;
			d->failed++;
			continue;
		}
		d->pending++;
		bufferevent_setcb(c->bev, idle_read_cb, NULL, idle_event_cb, c);
		bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	}
	if (d->phase == IDLE_OPENING && d->pending == 0 &&
	    (d->next == d->o->conns || d->run.stopping)) {
		/* All up (or refused): let the tunnels settle, then measure. */
		d->t_open_done = bench_now_s();
		d->phase = IDLE_HOLDING;
		evtimer_add(d->phase_ev, &settle);
	}
}

static void idle_phase_cb(evutil_socket_t fd, short what, void *arg)
{
	struct idle *d = arg;
	int i;
	switch (d->phase) {
	case IDLE_HOLDING: {
		struct timeval hold = bench_tv(d->o->hold);
		for (i = 0; i < d->o->npids; i++)
			d->rss1[i] = bench_proc_rss(d->o->pids[i]);
		d->phase = IDLE_CHECKING;
		d->check_pending = -1; /* armed after the hold */
		evtimer_add(d->phase_ev, &hold);
		break;
	}
	case IDLE_CHECKING:
		if (d->check_pending == -1) {
			/* Hold over: every connection must still carry one exchange. */
			struct timeval bound = {10, 0};
			d->check_pending = 0;
			for (i = 0; i < d->o->conns; i++) {
				struct idle_conn *c = &d->c[i];
				uint64_t left = IDLE_MSG;
				if (c->state != 1)
					continue;
				d->check_pending++;
				bench_fill(bufferevent_get_output(c->bev), SIZE_MAX, &left);
			}
			if (d->check_pending > 0) {
				evtimer_add(d->phase_ev, &bound);
				break;
			}
		}
		d->phase = IDLE_DONE;
		event_base_loopexit(d->run.base, NULL);
		break;
	default:
		break;
	}
}

static void idle_on_stop(struct bench_run *run)
{
	struct idle *d = run->arg;
	/* The opening phase ran out of time: measure what is up. */
	if (d->phase == IDLE_OPENING) {
		int i;
		for (i = 0; i < d->o->conns; i++)
			if (d->c[i].state == 0 && d->c[i].bev != NULL)
				idle_fail(&d->c[i]);
		idle_open_more(d);
	}
}

int bench_idle(struct bench_opts *o)
{
	struct bench_report *r;
	struct idle d;
	long tot0 = 0, tot1 = 0;
	int i, rc;

	memset(&d, 0, sizeof(d));
	d.o = o;
	d.c = calloc((size_t)o->conns, sizeof(*d.c));
	if (d.c == NULL)
		return SR_ENOMEM;
	for (i = 0; i < o->npids; i++)
		d.rss0[i] = bench_proc_rss(o->pids[i]);
	rc = bench_run_init(&d.run, o->seconds, flow_hard(o, o->seconds + o->hold + 15),
			    idle_on_stop, &d);
	if (rc != 0) {
		free(d.c);
		return rc;
	}
	d.phase_ev = evtimer_new(d.run.base, idle_phase_cb, &d);
	if (d.phase_ev == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	idle_open_more(&d);
	event_base_dispatch(d.run.base);

	r = bench_report_new("idle", o);
	if (r == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	bench_report_param(r, "conns", o->conns);
	bench_report_param(r, "hold", o->hold);
	bench_report_num(r, "established", "connections established", d.established, "", 0);
	bench_report_num(r, "open_s", "time to open them all",
			 d.t_open_done > 0 ? d.t_open_done - d.run.t0 : 0, "s", 2);
	bench_report_num(r, "alive_after_hold", "alive after the hold (one exchange)",
			 d.checked, "", 0);
	bench_report_num(r, "failed", "failed", d.failed, "", 0);
	for (i = 0; i < o->npids; i++) {
		char key[64], label[64];
		snprintf(key, sizeof(key), "rss_kib_pid%d", i);
		snprintf(label, sizeof(label), "RSS of pid %ld (and children)", o->pids[i]);
		bench_report_num(r, key, label, (double)d.rss1[i], "KiB", 0);
		snprintf(key, sizeof(key), "rss0_kib_pid%d", i);
		bench_report_num(r, key, "  before", (double)d.rss0[i], "KiB", 0);
		if (d.rss0[i] > 0 && d.rss1[i] > 0) {
			tot0 += d.rss0[i];
			tot1 += d.rss1[i];
		}
	}
	if (o->npids > 0)
		bench_report_num(r, "kib_per_conn", "memory per connection (all pids)",
				 d.established ? (double)(tot1 - tot0) / d.established : 0,
				 "KiB", 2);
	rc = bench_report_finish(r);
	/* Fewer than asked is a failed run: the figure is about holding N. */
	if (rc == 0 && (d.established < o->conns || d.checked < d.established))
		rc = SR_EIO;
out:
	for (i = 0; i < o->conns; i++)
		if (d.c[i].bev)
			bufferevent_free(d.c[i].bev);
	if (d.phase_ev)
		event_free(d.phase_ev);
	bench_run_fini(&d.run);
	free(d.c);
	return rc;
}
