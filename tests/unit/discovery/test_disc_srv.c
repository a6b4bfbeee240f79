/* SRV discovery end to end, against a small DNS server played by the test
 * on 127.0.0.1 (UDP and TCP on the same port, in the same event loop):
 * disc_srv_query (answers, TC and the TCP retry, silence, a failing server
 * then the next one, stray and malformed datagrams, a closed port, cancel)
 * and srv: entries through disc_lookup (targets resolved and ordered by
 * priority, the TLS name, reuse for cache_s, the last answer kept while the
 * server fails and dropped after stale_s, NXDOMAIN as an answer, lookups
 * sharing one query, allocation failures). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "discovery/disc.h"
#include "discovery/disc_srv.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_sys.h"

#define WAIT_MS 5000
#define QNAME "_sparkrelay._tcp.relays.test"

/* ---- the DNS server -------------------------------------------------------- */

struct rr {
	const char *name;
	int type;
	uint32_t ttl;
	const char *addr; /* A, AAAA */
	unsigned prio, weight, port;
	const char *target; /* SRV */
};

enum mode {
	M_ANSWER,
	M_SILENT,
	M_SERVFAIL,
	M_TRUNCATE,  /* UDP: TC and no record; TCP: the answer */
	M_STRAY,     /* a datagram with another id and one of garbage first */
	M_MALFORMED, /* a pointer loop in the answer */
};

struct fake {
	struct event_base *base;
	int udp;
	uint16_t port;
	struct event *ev;
	struct evconnlistener *lis;
	enum mode mode;
	const struct rr *rrs;
	size_t nrrs;
	int srv_udp, srv_tcp, other; /* queries seen */
};

static void put16(uint8_t *b, size_t *o, unsigned v)
{
	b[(*o)++] = (uint8_t)(v >> 8);
	b[(*o)++] = (uint8_t)v;
}

static void put32(uint8_t *b, size_t *o, uint32_t v)
{
	put16(b, o, v >> 16);
	put16(b, o, v & 0xffff);
}

static void put_name(uint8_t *b, size_t *o, const char *dotted)
{
	while (*dotted) {
		const char *dot = strchr(dotted, '.');
		size_t l = dot ? (size_t)(dot - dotted) : strlen(dotted);

		b[(*o)++] = (uint8_t)l;
		memcpy(b + *o, dotted, l);
		*o += l;
		dotted += l + (dot ? 1 : 0);
	}
	b[(*o)++] = 0;
}

/* The answer to query q as the mode says; its length, or 0 for none. */
static size_t respond(struct fake *f, const uint8_t *q, size_t qn, uint8_t *a, size_t cap,
		      int tcp)
{
	char name[256];
	size_t p = 12, o = 0, nl = 0, an_at;
	unsigned qtype, an = 0;
	int known = 0;

	if (qn < 17)
		return 0;
	while (p < qn && q[p] != 0) {
		size_t l = q[p++];

		if (l > 63 || p + l > qn || nl + l + 2 > sizeof(name))
			return 0;
		if (nl)
			name[nl++] = '.';
		for (size_t i = 0; i < l; i++)
			name[nl++] = (char)tolower(q[p + i]);
		p += l;
	}
	name[nl] = '\0';
	if (p + 5 > qn)
		return 0;
	qtype = (unsigned)q[p + 1] << 8 | q[p + 2];
	p += 5;
	if (qtype == 33)
		tcp ? f->srv_tcp++ : f->srv_udp++;
	else
		f->other++;
	if (f->mode == M_SILENT)
		return 0;
	memcpy(a, q, 2);
	o = 2;
	put16(a, &o, 0x8180 | (f->mode == M_SERVFAIL ? 2 : 0));
	put16(a, &o, 1);
	an_at = o;
	put16(a, &o, 0);
	put16(a, &o, 0);
	put16(a, &o, 0);
	memcpy(a + o, q + 12, p - 12); /* the question as asked */
	o += p - 12;
	if (f->mode == M_SERVFAIL)
		return o;
	if (qtype == 33 && f->mode == M_TRUNCATE && !tcp) {
		a[2] |= 0x02;
		return o;
	}
	if (qtype == 33 && f->mode == M_MALFORMED) {
		a[an_at + 1] = 1;
		put16(a, &o, 0xc000 | (unsigned)o); /* a pointer to itself */
		return o;
	}
	for (size_t i = 0; i < f->nrrs; i++) {
		const struct rr *r = &f->rrs[i];
		size_t rdlen_at;

		if (strcmp(r->name, name) != 0)
			continue;
		known = 1;
		if ((unsigned)r->type != qtype || o + 300 > cap)
			continue;
		put16(a, &o, 0xc00c);
		put16(a, &o, qtype);
		put16(a, &o, 1);
		put32(a, &o, r->ttl);
		rdlen_at = o;
		put16(a, &o, 0);
		if (qtype == 33) {
			put16(a, &o, r->prio);
			put16(a, &o, r->weight);
			put16(a, &o, r->port);
			put_name(a, &o, r->target);
		} else {
			int fam = qtype == 1 ? AF_INET : AF_INET6;

			assert_int_equal(inet_pton(fam, r->addr, a + o), 1);
			o += fam == AF_INET ? 4 : 16;
		}
		a[rdlen_at] = (uint8_t)((o - rdlen_at - 2) >> 8);
		a[rdlen_at + 1] = (uint8_t)(o - rdlen_at - 2);
		an++;
	}
	a[an_at] = (uint8_t)(an >> 8);
	a[an_at + 1] = (uint8_t)an;
	if (!known)
		a[3] |= 3; /* NXDOMAIN */
	return o;
}

static void udp_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fake *f = arg;
	uint8_t q[512], a[4096];
	struct sockaddr_storage from;
	socklen_t flen = sizeof(from);
	ssize_t n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
	size_t an;

	if (n <= 0)
		return;
	an = respond(f, q, (size_t)n, a, sizeof(a), 0);
	if (!an)
		return;
	if (f->mode == M_STRAY) {
		uint8_t junk[] = {0xde, 0xad, 0xbe, 0xef};

		a[0] ^= 0x55; /* another id */
		sendto(fd, a, an, 0, (struct sockaddr *)&from, flen);
		a[0] ^= 0x55;
		sendto(fd, junk, sizeof(junk), 0, (struct sockaddr *)&from, flen);
	}
	sendto(fd, a, an, 0, (struct sockaddr *)&from, flen);
}

static void tcp_read_cb(struct bufferevent *bev, void *arg)
{
	struct fake *f = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	uint8_t hdr[2], q[512], a[16384];
	size_t need, an;

	if (evbuffer_copyout(in, hdr, 2) != 2)
		return;
	need = (size_t)hdr[0] << 8 | hdr[1];
	if (need > sizeof(q) || evbuffer_get_length(in) < 2 + need)
		return;
	evbuffer_drain(in, 2);
	evbuffer_remove(in, q, need);
	an = respond(f, q, need, a + 2, sizeof(a) - 2, 1);
	if (!an)
		return;
	a[0] = (uint8_t)(an >> 8);
	a[1] = (uint8_t)an;
	bufferevent_write(bev, a, an + 2);
}

static void tcp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		bufferevent_free(bev);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct fake *f = arg;
	struct bufferevent *bev = bufferevent_socket_new(f->base, fd, BEV_OPT_CLOSE_ON_FREE);

	assert_non_null(bev);
	bufferevent_setcb(bev, tcp_read_cb, NULL, tcp_event_cb, f);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* UDP and TCP on one port of 127.0.0.1. */
static void fake_start(struct fake *f, struct event_base *base, const struct rr *rrs, size_t n)
{
	memset(f, 0, sizeof(*f));
	f->base = base;
	f->rrs = rrs;
	f->nrrs = n;
	for (int tries = 0; tries < 50 && !f->lis; tries++) {
		struct sockaddr_storage ss;

		f->udp = ts_udp_loopback(1, &f->port);
		ss = ts_addr("127.0.0.1", f->port);
		f->lis = evconnlistener_new_bind(base, accept_cb, f,
						 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
						 TS_SA(ss), sizeof(struct sockaddr_in));
		if (!f->lis)
			close(f->udp);
	}
	assert_non_null(f->lis);
	f->ev = event_new(base, f->udp, EV_READ | EV_PERSIST, udp_cb, f);
	assert_non_null(f->ev);
	assert_int_equal(event_add(f->ev, NULL), 0);
}

static void fake_stop(struct fake *f)
{
	if (f->ev) {
		event_free(f->ev);
		close(f->udp);
	}
	if (f->lis)
		evconnlistener_free(f->lis);
	memset(f, 0, sizeof(*f));
}

/* ---- fixture ------------------------------------------------------------------- */

struct got {
	int calls, err;
	struct disc_srv_answer ans;
	char msg[256];
	size_t n;
	struct disc_addr addrs[DISC_MAX_ADDRS];
};

struct fx {
	struct event_base *base;
	struct evdns_base *dns;
	struct fake dns1, dns2;
	struct got got;
	int returned, early;
	struct disc *disc;
	struct disc_opts o;
	char ns[2][64];
};

static const struct rr zone[] = {
    {QNAME, 33, 60, NULL, 20, 1, 9443, "relay-b.test"},
    {QNAME, 33, 60, NULL, 10, 1, 8443, "relay-a.test"},
    {"relay-a.test", 1, 60, "127.0.0.11", 0, 0, 0, NULL},
    {"relay-a.test", 28, 60, "fd00::11", 0, 0, 0, NULL},
    {"relay-b.test", 1, 60, "127.0.0.12", 0, 0, 0, NULL},
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_non_null(f->base = event_base_new());
	assert_non_null(f->dns = evdns_base_new(f->base, 0));
	f->o.timeout_ms = 2000;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	disc_free(f->disc);
	evdns_base_free(f->dns, 0);
	fake_stop(&f->dns1);
	fake_stop(&f->dns2);
	ts_loop_run_for(f->base, 10);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void add_ns(struct fx *f, const struct fake *d)
{
	char ns[64];

	snprintf(ns, sizeof(ns), "127.0.0.1:%u", d->port);
	assert_int_equal(evdns_base_nameserver_ip_add(f->dns, ns), 0);
}

static void on_answer(int err, const struct disc_srv_answer *ans, const char *msg, void *arg)
{
	struct fx *f = arg;

	if (!f->returned)
		f->early = 1;
	f->got.calls++;
	f->got.err = err;
	if (ans)
		f->got.ans = *ans;
	snprintf(f->got.msg, sizeof(f->got.msg), "%s", msg);
}

static void query(struct fx *f, uint32_t timeout_ms)
{
	char err[256] = "";
	struct disc_srv_query *q;

	memset(&f->got, 0, sizeof(f->got));
	f->returned = 0;
	q = disc_srv_query_start(f->base, f->dns, QNAME, timeout_ms, on_answer, f, err,
				 sizeof(err));
	f->returned = 1;
	if (!q)
		fail_msg("disc_srv_query_start: %s", err);
	assert_true(ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS));
	ts_loop_run_for(f->base, 10);
	assert_int_equal(f->got.calls, 1);
	assert_false(f->early);
}

/* ---- disc_srv_query ----------------------------------------------------------- */

static void test_udp_answer(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	add_ns(f, &f->dns1);
	query(f, 2000);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.ans.n, 2);
	assert_string_equal(f->got.ans.rec[0].target, "relay-b.test");
	assert_int_equal(f->got.ans.rec[1].port, 8443);
	assert_int_equal(f->dns1.srv_udp, 1);
	assert_int_equal(f->dns1.srv_tcp, 0);
}

/* Over 512 bytes of records: the server truncates over UDP and the query
 * is asked again over TCP, where all of them arrive. */
static void test_truncated_then_tcp(void **state)
{
	struct fx *f = *state;
	static struct rr many[30];
	static char targets[30][32];

	for (int i = 0; i < 30; i++) {
		snprintf(targets[i], sizeof(targets[i]), "relay-%02d.relays.test", i);
		many[i] =
		    (struct rr){QNAME, 33, 60, NULL, 1, 1, 8000 + (unsigned)i, targets[i]};
	}
	fake_start(&f->dns1, f->base, many, 30);
	f->dns1.mode = M_TRUNCATE;
	add_ns(f, &f->dns1);
	query(f, 2000);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->dns1.srv_udp, 1);
	assert_int_equal(f->dns1.srv_tcp, 1);
	assert_int_equal(f->got.ans.n, 30);
	assert_string_equal(f->got.ans.rec[29].target, "relay-29.relays.test");
}

static void test_silence_times_out(void **state)
{
	struct fx *f = *state;
	uint64_t t0 = sr_now_us(), ms;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_SILENT;
	add_ns(f, &f->dns1);
	query(f, 400);
	ms = (sr_now_us() - t0) / 1000;
	assert_int_equal(f->got.err, SR_ETIMEDOUT);
	assert_contains(f->got.msg, "no answer in time");
	assert_contains(f->got.msg, "127.0.0.1:");
	assert_int_equal(f->dns1.srv_udp, 2); /* twice round */
	assert_in_range(ms, 350, 1500);
}

/* timeout_ms bounds the whole query. With two silent nameservers and 100 ms,
 * each try is raised to TRY_MIN_MS (50 ms), and four tries (two rounds)
 * took 200 ms; a late truncated answer and a silent TCP retry doubled a
 * try the same way. Only the tries that fit are made. */
static void test_the_timeout_bounds_the_whole_query(void **state)
{
	struct fx *f = *state;
	uint64_t t0, ms;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	fake_start(&f->dns2, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = f->dns2.mode = M_SILENT;
	add_ns(f, &f->dns1);
	add_ns(f, &f->dns2);
	t0 = sr_now_us();
	query(f, 100);
	ms = (sr_now_us() - t0) / 1000;
	assert_int_equal(f->got.err, SR_ETIMEDOUT);
	/* Two tries of 50 ms fit (one, if the loop came late to the first
	 * timer); before, all four were made. */
	assert_in_range(f->dns1.srv_udp + f->dns2.srv_udp, 1, 2);
	assert_in_range(ms, 90, 1000);
}

static void test_failing_server_then_the_next(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	fake_start(&f->dns2, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_SERVFAIL;
	add_ns(f, &f->dns1);
	add_ns(f, &f->dns2);
	query(f, 2000);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.ans.n, 2);
	assert_int_equal(f->dns1.srv_udp, 1);
	assert_int_equal(f->dns2.srv_udp, 1);
	/* both failing: the last reason is given */
	f->dns2.mode = M_SERVFAIL;
	query(f, 2000);
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_contains(f->got.msg, "SERVFAIL");
}

/* A datagram with another id, and one of garbage, arrive before the
 * answer: both are ignored, the answer is taken. */
static void test_stray_datagrams_are_ignored(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_STRAY;
	add_ns(f, &f->dns1);
	query(f, 2000);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.ans.n, 2);
	assert_int_equal(f->dns1.srv_udp, 1);
}

static void test_malformed_answers_fail_cleanly(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_MALFORMED;
	add_ns(f, &f->dns1);
	query(f, 2000);
	assert_int_equal(f->got.err, SR_EPROTO);
	assert_contains(f->got.msg, "malformed name in answer record 1");
	assert_int_equal(f->dns1.srv_udp, 2);
}

/* Nothing listens: the kernel's port-unreachable ends each try at once. */
static void test_closed_port(void **state)
{
	struct fx *f = *state;
	uint16_t port;
	int fd = ts_udp_loopback(1, &port);
	char ns[64];
	uint64_t t0 = sr_now_us();

	close(fd);
	snprintf(ns, sizeof(ns), "127.0.0.1:%u", port);
	assert_int_equal(evdns_base_nameserver_ip_add(f->dns, ns), 0);
	query(f, 5000);
	assert_int_equal(f->got.err, SR_EIO);
	assert_contains(f->got.msg, "refused");
	assert_true(sr_now_us() - t0 < 2000000);
}

static void never(int err, const struct disc_srv_answer *ans, const char *msg, void *arg)
{
	fail_msg("callback after cancel");
}

static void test_cancel_and_refusals(void **state)
{
	struct fx *f = *state;
	struct disc_srv_query *q;
	char err[128];

	assert_null(
	    disc_srv_query_start(f->base, f->dns, QNAME, 1000, never, f, err, sizeof(err)));
	assert_string_equal(err, "no nameserver configured");
	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_SILENT;
	add_ns(f, &f->dns1);
	assert_null(disc_srv_query_start(f->base, f->dns, "bad name", 1000, never, f, err,
					 sizeof(err)));
	assert_string_equal(err, "not a DNS name");
	q = disc_srv_query_start(f->base, f->dns, QNAME, 1000, never, f, err, sizeof(err));
	assert_non_null(q);
	ts_loop_run_for(f->base, 30);
	disc_srv_query_cancel(q);
	ts_loop_run_for(f->base, 30);
	disc_srv_query_cancel(NULL);
}

/* ---- srv: entries through disc_lookup -------------------------------------------- */

static void on_lookup(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct fx *f = arg;

	if (!f->returned)
		f->early = 1;
	f->got.calls++;
	f->got.err = err;
	f->got.n = n;
	assert_true(n <= DISC_MAX_ADDRS);
	if (n)
		memcpy(f->got.addrs, addrs, n * sizeof(*addrs));
}

static void disc_make(struct fx *f, char *const *targets, size_t n)
{
	char err[256] = "";

	f->o.nameservers[0] = f->ns[0];
	snprintf(f->ns[0], sizeof(f->ns[0]), "127.0.0.1:%u", f->dns1.port);
	f->o.nnameservers = 1;
	disc_free(f->disc);
	f->disc = disc_new(f->base, &f->o, targets, n, err, sizeof(err));
	if (!f->disc)
		fail_msg("disc_new: %s", err);
}

static void lookup(struct fx *f)
{
	memset(&f->got, 0, sizeof(f->got));
	f->returned = 0;
	assert_non_null(disc_lookup(f->disc, on_lookup, f));
	f->returned = 1;
	assert_true(ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS));
	ts_loop_run_for(f->base, 10);
	assert_int_equal(f->got.calls, 1);
	assert_false(f->early);
}

static void assert_addr(const struct fx *f, size_t i, const char *want, const char *host)
{
	char buf[SR_ADDRSTRLEN];

	assert_true(i < f->got.n);
	sr_format_addr((const struct sockaddr *)&f->got.addrs[i].ss, buf, sizeof(buf));
	assert_string_equal(buf, want);
	assert_string_equal(f->got.addrs[i].host, host);
}

#define T(...) ((char *[]){__VA_ARGS__})
#define N(...) (sizeof((char *[]){__VA_ARGS__}) / sizeof(char *))
#define DISC(f, ...) disc_make((f), T(__VA_ARGS__), N(__VA_ARGS__))

/* stderr into a file while a lookup runs, for what the log says */
static int saved_stderr = -1;
static char cap_path[64];

static void capture_start(void)
{
	int fd;

	snprintf(cap_path, sizeof(cap_path), "/tmp/sr-disc-log-%d", (int)getpid());
	fd = open(cap_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_stderr = dup(2);
	dup2(fd, 2);
	close(fd);
	sr_log_set_level(SR_LOG_INFO);
}

static char *capture_end(void)
{
	char *text;

	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	ts_log_level_from_env(SR_LOG_ERROR);
	text = ts_read_file(cap_path, NULL);
	unlink(cap_path);
	return text;
}

/* Targets in priority order, each with its addresses, all with the SRV
 * name's domain as the TLS name; entries keep their configured order. */
static void test_lookup_srv_entry(void **state)
{
	struct fx *f = *state;
	char *log;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	DISC(f, "127.0.0.1:7000", "srv:" QNAME);
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, 0);
	/* (relay-a's AAAA record is asked for only on hosts with a global
	 * IPv6 address: EVUTIL_AI_ADDRCONFIG) */
	assert_int_equal(f->got.n, 3);
	assert_addr(f, 0, "127.0.0.1:7000", "127.0.0.1");
	assert_addr(f, 1, "127.0.0.11:8443", "relays.test");
	assert_addr(f, 2, "127.0.0.12:9443", "relays.test");
	assert_contains(log, "relay discovery srv:" QNAME ": 2 addresses (2 SRV records)");
	assert_contains(log, "TLS name relays.test");
	free(log);
}

static void test_answer_reused_for_cache_s(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->o.cache_s = 60;
	DISC(f, "srv:" QNAME);
	lookup(f);
	lookup(f);
	assert_int_equal(f->got.n, 2);
	assert_int_equal(f->dns1.srv_udp, 1);
	f->o.cache_s = 0;
	DISC(f, "srv:" QNAME);
	lookup(f);
	lookup(f);
	assert_int_equal(f->dns1.srv_udp, 3);
}

/* A TTL shorter than cache_s wins. */
static void test_ttl_bounds_the_reuse(void **state)
{
	struct fx *f = *state;
	static const struct rr ttl0[] = {
	    {QNAME, 33, 0, NULL, 10, 1, 8443, "relay-a.test"},
	    {"relay-a.test", 1, 60, "127.0.0.11", 0, 0, 0, NULL},
	};

	fake_start(&f->dns1, f->base, ttl0, SR_ARRAY_LEN(ttl0));
	f->o.cache_s = 60;
	DISC(f, "srv:" QNAME);
	lookup(f);
	lookup(f);
	assert_int_equal(f->got.n, 1);
	assert_int_equal(f->dns1.srv_udp, 2);
}

/* The server fails: the last answer is used while younger than stale_s,
 * and the log says so; after that it is dropped. */
static void test_last_answer_while_failing(void **state)
{
	struct fx *f = *state;
	char *log;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->o.cache_s = 0;
	f->o.stale_s = 1;
	f->o.timeout_ms = 200;
	DISC(f, "srv:" QNAME);
	lookup(f);
	assert_int_equal(f->got.n, 2);
	f->dns1.mode = M_SILENT;
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 2);
	assert_addr(f, 0, "127.0.0.11:8443", "relays.test");
	assert_contains(log, "SRV query failed: nameserver 127.0.0.1:");
	assert_contains(log, "no answer in time; using its answer from 0 s ago (2 addresses, "
			     "kept up to 1 s)");
	free(log);
	ts_loop_run_for(f->base, 1100);
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_int_equal(f->got.n, 0);
	assert_contains(log, "is older than 1 s (tunnel.discovery.stale_s): dropped");
	free(log);
	/* and the server back: found again */
	f->dns1.mode = M_ANSWER;
	lookup(f);
	assert_int_equal(f->got.n, 2);
}

/* With stale_s 0 a failure leaves nothing. */
static void test_no_stale_answer(void **state)
{
	struct fx *f = *state;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->o.stale_s = 0;
	f->o.timeout_ms = 200;
	DISC(f, "srv:" QNAME, "127.0.0.1:7000");
	lookup(f);
	assert_int_equal(f->got.n, 3);
	f->dns1.mode = M_SERVFAIL;
	lookup(f);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 1);
	assert_addr(f, 0, "127.0.0.1:7000", "127.0.0.1");
}

/* NXDOMAIN is an answer: no relay there, and the last one is not kept. */
static void test_nxdomain_is_an_answer(void **state)
{
	struct fx *f = *state;
	static const struct rr other[] = {{"x.test", 1, 60, "127.0.0.1", 0, 0, 0, NULL}};

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->o.stale_s = 600;
	DISC(f, "srv:" QNAME);
	lookup(f);
	assert_int_equal(f->got.n, 2);
	f->dns1.rrs = other;
	f->dns1.nrrs = 1;
	lookup(f);
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_int_equal(f->got.n, 0);
}

/* Records whose targets have no address are a failure of the source. */
static void test_targets_without_address(void **state)
{
	struct fx *f = *state;
	static const struct rr dangling[] = {{QNAME, 33, 60, NULL, 1, 1, 1, "gone.test"}};
	char *log;

	fake_start(&f->dns1, f->base, dangling, 1);
	DISC(f, "srv:" QNAME);
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_contains(log, "none of the 1 SRV targets has an address");
	free(log);
}

/* Two lookups at once wait for the same query. */
static void test_lookups_share_one_query(void **state)
{
	struct fx *f = *state;
	struct got g2;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	DISC(f, "srv:" QNAME);
	memset(&f->got, 0, sizeof(f->got));
	f->returned = 1;
	assert_non_null(disc_lookup(f->disc, on_lookup, f));
	assert_non_null(disc_lookup(f->disc, on_lookup, f));
	assert_true(ts_loop_until_count(f->base, &f->got.calls, 2, WAIT_MS));
	g2 = f->got;
	assert_int_equal(g2.n, 2);
	assert_int_equal(f->dns1.srv_udp, 1);
}

static void test_cancel_and_free_while_asking(void **state)
{
	struct fx *f = *state;
	struct disc_lookup *l;

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->dns1.mode = M_SILENT;
	DISC(f, "srv:" QNAME, "relay-a.test:1");
	memset(&f->got, 0, sizeof(f->got));
	l = disc_lookup(f->disc, on_lookup, f);
	assert_non_null(l);
	ts_loop_run_for(f->base, 20);
	disc_lookup_cancel(l);
	assert_non_null(disc_lookup(f->disc, on_lookup, f));
	ts_loop_run_for(f->base, 20);
	disc_free(f->disc); /* a lookup and the query still open */
	f->disc = NULL;
	ts_loop_run_for(f->base, 50);
	assert_int_equal(f->got.calls, 0);
}

static void test_no_nameserver_for_srv(void **state)
{
	struct fx *f = *state;
	char err[256];
	static char *targets[] = {"srv:" QNAME};

	/* a nameserver that is not an address */
	f->o.nameservers[0] = (char *)"dns.test";
	f->o.nnameservers = 1;
	assert_null(disc_new(f->base, &f->o, targets, 1, err, sizeof(err)));
	assert_string_equal(err, "cannot use the nameserver \"dns.test\"");
}

/* ---- failed allocations ---------------------------------------------------------- */

struct alloc_run {
	struct fx *f;
};

static char *alloc_targets[] = {"127.0.0.1:7000", "srv:" QNAME, "relay-b.test:1"};

/* The constructor: refused with a reason or made, nothing leaked. (Only
 * the constructor: evdns_base_new goes on after some of its allocations
 * failed, with a base that never sends a query.) */
static int new_once(void *arg, unsigned long nth)
{
	struct fx *f = ((struct alloc_run *)arg)->f;
	char err[256] = "";
	struct disc *d;

	ts_alloc_arm(nth);
	d = disc_new(f->base, &f->o, alloc_targets, 3, err, sizeof(err));
	ts_alloc_disarm();
	disc_free(d);
	ts_loop_run_for(f->base, 1);
	if (!d) {
		/* evdns does not say why it could not add a nameserver */
		if (strcmp(err, "out of memory") != 0)
			assert_contains(err, "cannot use the nameserver \"127.0.0.1:");
		return SR_ENOMEM;
	}
	return 0;
}

/* A lookup and everything its answer takes: refused at once, or its
 * callback runs once, never before disc_lookup returns. */
static int lookup_once(void *arg, unsigned long nth)
{
	struct fx *f = ((struct alloc_run *)arg)->f;
	char err[256] = "";
	struct disc_lookup *l;
	struct disc *d = disc_new(f->base, &f->o, alloc_targets, 3, err, sizeof(err));
	unsigned long used;
	int failed;

	assert_non_null(d);
	memset(&f->got, 0, sizeof(f->got));
	f->returned = 0;
	ts_alloc_arm(nth);
	l = disc_lookup(d, on_lookup, f);
	failed = ts_alloc_disarm();
	used = ts_alloc_count();
	f->returned = 1;
	if (!l) {
		assert_true(failed);
		disc_free(d);
		ts_loop_run_for(f->base, 5);
		return SR_ENOMEM;
	}
	/* (libevent's own allocations are not failed after the return: evdns
	 * drops a reply whose deferred callback it cannot allocate) */
	if (!failed)
		ts_alloc_arm_ours(nth - used);
	ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS);
	failed = ts_alloc_disarm() || failed;
	ts_loop_run_for(f->base, 5);
	if (f->got.calls != 1)
		fail_msg("allocation %lu: %d callbacks", nth, f->got.calls);
	assert_false(f->early);
	if (!failed)
		assert_int_equal(f->got.n, 4);
	disc_free(d);
	ts_loop_run_for(f->base, 5);
	return 0;
}

static void test_alloc_failures(void **state)
{
	struct fx *f = *state;
	struct alloc_run a = {f};

	fake_start(&f->dns1, f->base, zone, SR_ARRAY_LEN(zone));
	f->o.nameservers[0] = f->ns[0];
	snprintf(f->ns[0], sizeof(f->ns[0]), "127.0.0.1:%u", f->dns1.port);
	f->o.nnameservers = 1;
	ts_alloc_sweep("disc_new", new_once, &a, NULL);
	ts_alloc_sweep("disc_lookup(srv)", lookup_once, &a, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	    TEST(test_udp_answer),
	    TEST(test_truncated_then_tcp),
	    TEST(test_silence_times_out),
	    TEST(test_the_timeout_bounds_the_whole_query),
	    TEST(test_failing_server_then_the_next),
	    TEST(test_stray_datagrams_are_ignored),
	    TEST(test_malformed_answers_fail_cleanly),
	    TEST(test_closed_port),
	    TEST(test_cancel_and_refusals),
	    TEST(test_lookup_srv_entry),
	    TEST(test_answer_reused_for_cache_s),
	    TEST(test_ttl_bounds_the_reuse),
	    TEST(test_last_answer_while_failing),
	    TEST(test_no_stale_answer),
	    TEST(test_nxdomain_is_an_answer),
	    TEST(test_targets_without_address),
	    TEST(test_lookups_share_one_query),
	    TEST(test_cancel_and_free_while_asking),
	    TEST(test_no_nameserver_for_srv),
	    TEST(test_alloc_failures),
#undef TEST
	};

	ts_alloc_init();
	ts_log_level_from_env(SR_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
