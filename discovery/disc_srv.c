#include "discovery/disc_srv.h"
#include "common/sr_err.h"
#include "common/sr_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>

#define NS_MAX 8
#define ROUNDS 2
#define TRY_MIN_MS 50
/* Without EDNS an answer over UDP has at most 512 bytes; a larger datagram
 * is taken if it fits here, and refused as malformed if not. */
#define UDP_BUF 4096
/* Datagrams read per wake-up: a flood of stray ones cannot hold the loop. */
#define UDP_BURST 16

struct disc_srv_query {
	struct event_base *base;
	char name[DISC_DNS_NAME_TEXT + 2];
	struct sockaddr_storage ns[NS_MAX];
	socklen_t nslen[NS_MAX];
	int nns, tries, try_no, cur;
	uint32_t try_ms;
	uint64_t deadline_us; /* the whole query's: timeout_ms from its start */
	uint16_t id;
	uint8_t q[DISC_DNS_QUERY_MAX];
	size_t qlen;
	int fd;
	struct event *rd;
	struct bufferevent *tcp;
	struct event *timer; /* this try's deadline */
	int last;	     /* this try's timer ends at the query's deadline */
	struct event *fire;  /* the result goes out from here */
	int err;
	char msg[256];
	struct disc_srv_answer ans;
	disc_srv_cb cb;
	void *arg;
};

static void try_next(struct disc_srv_query *q);

/* A try's timer: try_ms, but never past the query's deadline (a TCP retry
 * after a truncated answer, or try_ms raised to TRY_MIN_MS, would go past
 * it). */
static struct timeval try_tv(struct disc_srv_query *q)
{
	uint64_t now = sr_now_us();
	uint64_t left = now >= q->deadline_us ? 0 : (q->deadline_us - now + 999) / 1000;

	q->last = left <= q->try_ms;
	return sr_tv_ms(q->last ? (long)left : (long)q->try_ms);
}

static void close_try(struct disc_srv_query *q)
{
	if (q->rd) {
		event_free(q->rd);
		q->rd = NULL;
	}
	if (q->fd >= 0) {
		close(q->fd);
		q->fd = -1;
	}
	if (q->tcp) {
		bufferevent_free(q->tcp);
		q->tcp = NULL;
	}
	if (q->timer)
		evtimer_del(q->timer);
}

static void finish(struct disc_srv_query *q, int err)
{
	close_try(q);
	q->err = err;
	event_active(q->fire, EV_TIMEOUT, 0);
}

static void fire_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_srv_query *q = arg;

	q->cb(q->err, q->err ? NULL : &q->ans, q->msg, q->arg);
	disc_srv_query_cancel(q);
}

/* The reason of a failed try, kept for the callback if no try succeeds. */
static void try_failed(struct disc_srv_query *q, int err, const char *detail)
{
	char peer[SR_ADDRSTRLEN];

	sr_format_addr((const struct sockaddr *)&q->ns[q->cur], peer, sizeof(peer));
	q->err = err;
	snprintf(q->msg, sizeof(q->msg), "nameserver %s: %s", peer, detail);
	try_next(q);
}

/* 0: done (finished or moved on); 1: not ours, keep waiting. */
static int take_answer(struct disc_srv_query *q, const uint8_t *m, size_t n, int tcp)
{
	char why[160];
	int rc = disc_srv_parse(m, n, q->id, q->name, &q->ans, why, sizeof(why));

	if (rc == SR_ENOTFOUND && !tcp)
		return 1;
	if (rc != 0) {
		try_failed(q, rc == SR_ERESOLVE ? SR_ERESOLVE : SR_EPROTO, why);
		return 0;
	}
	if (q->ans.truncated && tcp) {
		try_failed(q, SR_EPROTO, "truncated answer over TCP");
		return 0;
	}
	return -1; /* an answer (maybe truncated over UDP): the caller goes on */
}

static void tcp_read_cb(struct bufferevent *bev, void *arg)
{
	struct disc_srv_query *q = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	uint8_t hdr[2];
	size_t need;
	const uint8_t *m;

	if (evbuffer_copyout(in, hdr, 2) != 2)
		return;
	need = (size_t)hdr[0] << 8 | hdr[1];
	if (evbuffer_get_length(in) < 2 + need)
		return;
	m = evbuffer_pullup(in, (ev_ssize_t)(2 + need));
	if (!m) {
		snprintf(q->msg, sizeof(q->msg), "out of memory");
		finish(q, SR_ENOMEM);
		return;
	}
	if (take_answer(q, m + 2, need, 1) < 0)
		finish(q, 0);
}

static void tcp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct disc_srv_query *q = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	try_failed(q, SR_EIO,
		   (what & BEV_EVENT_EOF) ? "closed the TCP connection before answering"
					  : "TCP connection failed");
}

static void start_tcp(struct disc_srv_query *q)
{
	struct timeval tv = try_tv(q);
	uint8_t len[2] = {(uint8_t)(q->qlen >> 8), (uint8_t)q->qlen};

	close_try(q);
	q->tcp = bufferevent_socket_new(q->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!q->tcp || bufferevent_write(q->tcp, len, 2) != 0 ||
	    bufferevent_write(q->tcp, q->q, q->qlen) != 0) {
		snprintf(q->msg, sizeof(q->msg), "out of memory");
		finish(q, SR_ENOMEM);
		return;
	}
	bufferevent_setcb(q->tcp, tcp_read_cb, NULL, tcp_event_cb, q);
	/* a message and its prefix, and no more is buffered */
	bufferevent_setwatermark(q->tcp, EV_READ, 0, 2 + 65535);
	if (bufferevent_socket_connect(q->tcp, (struct sockaddr *)&q->ns[q->cur],
				       (int)q->nslen[q->cur]) != 0) {
		try_failed(q, SR_EIO, "TCP connect failed");
		return;
	}
	bufferevent_enable(q->tcp, EV_READ | EV_WRITE);
	evtimer_add(q->timer, &tv);
}

static void udp_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_srv_query *q = arg;
	uint8_t buf[UDP_BUF];

	for (int i = 0; i < UDP_BURST; i++) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_TRUNC);
		int rc;

		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return;
			try_failed(q, SR_EIO, strerror(errno));
			return;
		}
		if ((size_t)n > sizeof(buf)) {
			try_failed(q, SR_EPROTO, "oversized UDP answer");
			return;
		}
		rc = take_answer(q, buf, (size_t)n, 0);
		if (rc == 1)
			continue;
		if (rc < 0) {
			if (q->ans.truncated)
				start_tcp(q);
			else
				finish(q, 0);
		}
		return;
	}
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_srv_query *q = arg;

	/* libevent may fire a little before the deadline by our clock: a
	 * timer armed up to the deadline ends the query all the same */
	if (q->last)
		q->deadline_us = 0;
	try_failed(q, SR_ETIMEDOUT,
		   q->tcp ? "no answer over TCP in time" : "no answer in time");
}

static void try_next(struct disc_srv_query *q)
{
	struct timeval tv;
	const char *why;
	uint16_t id;

	close_try(q);
	/* Out of time: no more tries, the last one's reason stands. */
	if (q->try_no > 0 && sr_now_us() >= q->deadline_us)
		q->try_no = q->tries;
	for (; q->try_no < q->tries; q->try_no++) {
		tv = try_tv(q);
		q->cur = q->try_no % q->nns;
		if (sr_random_bytes(&id, sizeof(id)) != 0) {
			why = "no random bytes for the query id";
			goto fail;
		}
		q->id = id;
		q->qlen = disc_dns_query(q->q, sizeof(q->q), q->id, q->name, DISC_DNS_TYPE_SRV);
		q->fd = socket(q->ns[q->cur].ss_family,
			       SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (q->fd < 0 ||
		    connect(q->fd, (struct sockaddr *)&q->ns[q->cur], q->nslen[q->cur]) != 0 ||
		    send(q->fd, q->q, q->qlen, 0) != (ssize_t)q->qlen) {
			char peer[SR_ADDRSTRLEN];
			int e = errno;

			sr_format_addr((const struct sockaddr *)&q->ns[q->cur], peer,
				       sizeof(peer));
			q->err = SR_EIO;
			snprintf(q->msg, sizeof(q->msg), "nameserver %s: %s", peer,
				 strerror(e));
			close_try(q);
			continue;
		}
		q->rd = event_new(q->base, q->fd, EV_READ | EV_PERSIST, udp_read_cb, q);
		if (!q->rd || event_add(q->rd, NULL) != 0 || evtimer_add(q->timer, &tv) != 0) {
			why = "out of memory";
			q->err = SR_ENOMEM;
			goto fail_msg;
		}
		q->try_no++;
		return;
	}
	finish(q, q->err ? q->err : SR_ETIMEDOUT);
	return;
fail:
	q->err = SR_EIO;
fail_msg:
	snprintf(q->msg, sizeof(q->msg), "%s", why);
	finish(q, q->err);
}

struct disc_srv_query *disc_srv_query_start(struct event_base *base, struct evdns_base *dns,
					    const char *name, uint32_t timeout_ms,
					    disc_srv_cb cb, void *arg, char *err, size_t errlen)
{
	struct disc_srv_query *q;

	if (!disc_dns_name_ok(name)) {
		sr_seterr(err, errlen, "not a DNS name");
		return NULL;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	q->fd = -1;
	q->base = base;
	q->cb = cb;
	q->arg = arg;
	snprintf(q->name, sizeof(q->name), "%s", name);
	for (int i = 0; i < NS_MAX; i++) {
		int n = evdns_base_get_nameserver_addr(
		    dns, i, (struct sockaddr *)&q->ns[q->nns], sizeof(q->ns[0]));

		if (n < 0)
			break;
		if ((size_t)n > sizeof(q->ns[0]) ||
		    (q->ns[q->nns].ss_family != AF_INET && q->ns[q->nns].ss_family != AF_INET6))
			continue;
		q->nslen[q->nns++] = (socklen_t)n;
	}
	if (q->nns == 0) {
		sr_seterr(err, errlen, "no nameserver configured");
		free(q);
		return NULL;
	}
	q->tries = q->nns * ROUNDS;
	q->deadline_us = sr_now_us() + (uint64_t)timeout_ms * 1000u;
	q->try_ms = timeout_ms / (uint32_t)q->tries;
	if (q->try_ms < TRY_MIN_MS)
		q->try_ms = TRY_MIN_MS;
	q->timer = evtimer_new(base, timer_cb, q);
	q->fire = event_new(base, -1, 0, fire_cb, q);
	if (!q->timer || !q->fire) {
		sr_seterr(err, errlen, "out of memory");
		disc_srv_query_cancel(q);
		return NULL;
	}
	try_next(q);
	return q;
}

void disc_srv_query_cancel(struct disc_srv_query *q)
{
	if (!q)
		return;
	close_try(q);
	if (q->timer)
		event_free(q->timer);
	if (q->fire)
		event_free(q->fire);
	free(q);
}
