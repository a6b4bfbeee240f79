/* Limits libevent's evhttp server lacks in 2.1: how many connections may be
 * open at once, and how long one may live. Its own timeout is an inactivity
 * timeout, so a client sending a byte every few seconds kept a connection
 * (and a file descriptor) forever, and nothing bounded their number. Used by
 * the relay's admin API and the sidecar's status listener.
 *
 * A new connection is always let in: with max_conns open, the oldest is
 * closed to make room, and the oldest of the newcomer's own source (an
 * IPv4 address, an IPv6 /64) when that source holds half of max_conns (so
 * that connections that send
 * nothing cannot keep health probes out, and one client cannot push out
 * another's). Every connection is closed at its deadline, counted from its
 * accept, whatever it is doing then (reading the request, waiting, writing
 * the answer). The
 * deadline bounds a request only if each connection carries one request:
 * the server should answer with "Connection: close" (evhttp's own error
 * pages do). Both kinds of close are counted. */
#ifndef SR_HTTP_GUARD_H
#define SR_HTTP_GUARD_H

#include <stdint.h>

struct event_base;
struct evhttp;
struct sr_http_guard;

struct sr_http_guard_stats {
	uint64_t active;    /* connections open now */
	uint64_t accepted;  /* admitted, since the start */
	uint64_t evicted;   /* closed to make room for a newer one */
	uint64_t refused;   /* closed on accept: none could make room */
	uint64_t timed_out; /* closed at their deadline */
};

/* Guard every connection http accepts from now on (it installs http's
 * bufferevent callback: the caller must not set its own). max_conns and
 * deadline_ms of 0 are taken as 1. ctx (copied) prefixes log lines.
 * Returns NULL on allocation failure. */
struct sr_http_guard *sr_http_guard_new(struct event_base *base, struct evhttp *http,
					unsigned max_conns, unsigned deadline_ms,
					const char *ctx);
/* Call after evhttp_free(http), which closes the guarded connections; frees
 * what is left. NULL is a no-op. */
void sr_http_guard_free(struct sr_http_guard *g);

void sr_http_guard_get_stats(const struct sr_http_guard *g, struct sr_http_guard_stats *st);

#endif
