/* Connection cap and per-connection deadline for an evhttp server (contract
 * in sr_http_guard.h).
 *
 * How it hooks into evhttp (libevent 2.1.12), and why this way:
 *
 * evhttp accepts on its own listener and has no public call that hands it a
 * socket we accepted ourselves, nor a "new connection" or "connection
 * count" hook (those came in 2.2). What 2.1 offers is evhttp_set_bevcb: for
 * each accepted socket, evhttp asks us for the bufferevent it will use.
 * That is our accept hook. The evhttp_connection that will own the
 * bufferevent does not exist yet when we are asked, but evhttp sets it as
 * the bufferevent's callback argument before it returns to the loop. So:
 *
 *   1. bevcb: make the bufferevent, count the connection (or mark it over
 *      the cap), take an extra reference on the bufferevent so that it
 *      stays valid whatever evhttp does with it, and activate our
 *      per-connection timer event, which runs right after evhttp's accept
 *      callback returns.
 *   2. that first run ("attach"): bufferevent_getcb gives the
 *      evhttp_connection; evhttp_connection_set_closecb tells us when evhttp
 *      frees it (it calls that callback exactly once for a server
 *      connection, from evhttp_connection_free, including from evhttp_free);
 *      the extra reference is dropped. If evhttp already let the connection
 *      go (bufferevent_free cleared its callbacks), our reference was the
 *      last one and dropping it closes the socket. An over-the-cap
 *      connection is closed now; any other gets its timer armed for the
 *      rest of its deadline.
 *   3. to close a connection (cap or deadline) we raise a read timeout on
 *      its bufferevent (bufferevent_trigger_event): evhttp's own error
 *      callback then frees the connection exactly as it does for its own
 *      timeout, whatever state it is in, and the close callback frees our
 *      record. Freeing evhttp's objects ourselves would race its state
 *      machine.
 *
 * Refusing at accept by pausing the listener (as the relay does on EMFILE)
 * would leave clients waiting in the kernel backlog with nothing counted;
 * accepting and closing at once keeps the refusal visible to both sides. */
#include "common/sr_http_guard.h"

#include "common/sr_cidr.h"
#include "common/sr_log.h"
#include "common/sr_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>

struct guard_conn {
	struct sr_http_guard *g;
	struct bufferevent *bev;
	struct evhttp_connection *evcon; /* once attached */
	struct event *timer;		 /* attach, then the deadline */
	uint64_t t0_us;			 /* accepted at */
	int attached;			 /* evhttp owns bev alone, closecb set */
	int admitted;			 /* counted in active (attached, not refused) */
	char src[64];			 /* its source: sr_source_key() */
	struct guard_conn *prev, *next;
};

struct sr_http_guard {
	struct event_base *base;
	unsigned max_conns;
	unsigned deadline_ms;
	uint64_t warned_us; /* last warning about evictions */
	struct guard_conn *conns;
	struct guard_conn *closing; /* set while we ask evhttp to close it */
	struct sr_http_guard_stats st;
	char ctx[64];
};

static void conn_unlink(struct guard_conn *c)
{
	struct sr_http_guard *g = c->g;

	if (c->prev)
		c->prev->next = c->next;
	else
		g->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->admitted && g->st.active > 0)
		g->st.active--;
	if (g->closing == c)
		g->closing = NULL;
}

/* The record only; the bufferevent is evhttp's (or was released). May run
 * inside c's own timer callback: libevent allows freeing an event there. */
static void conn_free(struct guard_conn *c)
{
	conn_unlink(c);
	event_free(c->timer);
	free(c);
}

/* evhttp frees the connection (on its own, at our request, or in
 * evhttp_free). */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	conn_free(arg);
}

/* Ask evhttp to drop the connection as on its own timeout. c is freed by
 * the time this returns (through on_conn_close). */
static void conn_close(struct guard_conn *c)
{
	struct sr_http_guard *g = c->g;

	g->closing = c;
	/* Not deferred (the bufferevent has no BEV_OPT_DEFER_CALLBACKS):
	 * evhttp_error_cb runs now, with the bufferevent referenced. */
	bufferevent_trigger_event(c->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, 0);
	if (g->closing == c) {
		/* evhttp kept it: never seen with 2.1.12; keep it counted and
		 * let evhttp's own timeout end it rather than guess. */
		g->closing = NULL;
		SR_ERROR(g->ctx, "connection did not close at the guard's request");
	}
}

/* The oldest admitted connection, of source src (or of any when src is
 * NULL), and how many there are. The list runs newest first. */
static struct guard_conn *oldest_of(struct sr_http_guard *g, const char *src, unsigned *n)
{
	struct guard_conn *oldest = NULL;

	*n = 0;
	for (struct guard_conn *o = g->conns; o; o = o->next)
		if (o->admitted && (!src || strcmp(o->src, src) == 0)) {
			oldest = o;
			(*n)++;
		}
	return oldest;
}

/* Close the oldest connection to make room for a new one; said at most
 * every 10 s, with the count so far. */
static void evict(struct sr_http_guard *g, struct guard_conn *victim, const char *why)
{
	uint64_t now = sr_now_us();

	g->st.evicted++;
	if (!g->warned_us || now - g->warned_us >= 10u * 1000000u) {
		g->warned_us = now;
		SR_WARN(g->ctx,
			"%s: closing the oldest to make room (%llu so far, counted as "
			"evicted)",
			why, (unsigned long long)g->st.evicted);
	}
	conn_close(victim);
}

/* Returns 1 if c is admitted, 0 if it was closed (and freed).
 * A new connection is always let in: at the cap the oldest makes room, first
 * of its own source when that source holds half the cap. Refusing the
 * newcomer instead let a few connections that send nothing shut out every
 * health probe and scrape for as long as they were renewed; now such a
 * client has to open max_conns connections within the few milliseconds a
 * probe takes to push it out, and one source cannot push out another's. */
static int admit(struct sr_http_guard *g, struct guard_conn *c)
{
	unsigned per_src = g->max_conns > 1 ? g->max_conns / 2 : 1, n;
	struct guard_conn *victim = oldest_of(g, c->src, &n);
	char why[160];

	if (victim && n >= per_src) {
		snprintf(why, sizeof(why), "%u connections open from %s", n, c->src);
		evict(g, victim, why);
	}
	victim = oldest_of(g, NULL, &n);
	if (victim && n >= g->max_conns) {
		snprintf(why, sizeof(why), "%u connections open", n);
		evict(g, victim, why);
	}
	if (g->st.active >= g->max_conns) {
		/* nothing could be closed (never seen: see conn_close) */
		g->st.refused++;
		SR_WARN(g->ctx, "%u connections open: a new one is closed", g->max_conns);
		conn_close(c); /* frees c */
		return 0;
	}
	c->admitted = 1;
	g->st.active++;
	g->st.accepted++;
	return 1;
}

static void attach(struct guard_conn *c)
{
	struct sr_http_guard *g = c->g;
	bufferevent_event_cb ecb = NULL;
	void *cbarg = NULL;
	uint64_t elapsed_ms;
	struct timeval tv;
	char *addr = NULL;
	ev_uint16_t port = 0;

	bufferevent_getcb(c->bev, NULL, NULL, &ecb, &cbarg);
	if (!ecb || !cbarg) {
		/* evhttp freed it already (bufferevent_free clears the callbacks):
		 * ours is the last reference, and dropping it closes the socket. */
		bufferevent_decref(c->bev);
		conn_free(c);
		return;
	}
	c->evcon = cbarg;
	evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
	c->attached = 1;
	bufferevent_decref(c->bev); /* evhttp holds its own */
	/* numeric (evhttp asks getnameinfo for NI_NUMERICHOST) */
	evhttp_connection_get_peer(c->evcon, &addr, &port);
	sr_source_key(addr ? addr : "", c->src, sizeof(c->src));
	if (!admit(g, c))
		return; /* closed and freed */
	elapsed_ms = (sr_now_us() - c->t0_us) / 1000u;
	elapsed_ms = elapsed_ms < g->deadline_ms ? g->deadline_ms - elapsed_ms : 0;
	tv = sr_tv_ms(elapsed_ms);
	evtimer_add(c->timer, &tv);
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct guard_conn *c = arg;

	if (!c->attached) {
		attach(c);
		return;
	}
	c->g->st.timed_out++;
	SR_DEBUG(c->g->ctx, "connection open for %u ms: closed", c->g->deadline_ms);
	conn_close(c);
}

/* evhttp_set_bevcb: called for each socket evhttp accepted. Returning NULL
 * makes evhttp create its own bufferevent: only when we are out of memory,
 * and then the connection still has evhttp's inactivity timeout. */
static struct bufferevent *guard_bevcb(struct event_base *base, void *arg)
{
	struct sr_http_guard *g = arg;
	struct guard_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->g = g;
	c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	c->timer = evtimer_new(base, on_conn_timer, c);
	if (!c->bev || !c->timer) {
		if (c->bev)
			bufferevent_free(c->bev);
		if (c->timer)
			event_free(c->timer);
		free(c);
		SR_WARN(g->ctx, "out of memory: a connection is not guarded");
		return NULL;
	}
	bufferevent_incref(c->bev);
	c->t0_us = sr_now_us();
	c->next = g->conns;
	if (g->conns)
		g->conns->prev = c;
	g->conns = c;
	event_active(c->timer, EV_TIMEOUT, 1);
	return c->bev;
}

struct sr_http_guard *sr_http_guard_new(struct event_base *base, struct evhttp *http,
					unsigned max_conns, unsigned deadline_ms,
					const char *ctx)
{
	struct sr_http_guard *g = calloc(1, sizeof(*g));

	if (!g)
		return NULL;
	g->base = base;
	g->max_conns = max_conns ? max_conns : 1;
	g->deadline_ms = deadline_ms ? deadline_ms : 1;
	snprintf(g->ctx, sizeof(g->ctx), "%s", ctx ? ctx : "");
	evhttp_set_bevcb(http, guard_bevcb, g);
	return g;
}

void sr_http_guard_free(struct sr_http_guard *g)
{
	if (!g)
		return;
	/* evhttp_free closed every attached connection through on_conn_close;
	 * what is left was accepted but not attached yet, and still holds our
	 * reference (the last one: evhttp_free released its own). */
	while (g->conns) {
		struct guard_conn *c = g->conns;

		if (!c->attached)
			bufferevent_decref(c->bev);
		conn_free(c);
	}
	free(g);
}

void sr_http_guard_get_stats(const struct sr_http_guard *g, struct sr_http_guard_stats *st)
{
	*st = g->st;
}
