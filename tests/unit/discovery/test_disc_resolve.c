/* disc_resolve: the relay list to socket addresses through libevent's
 * evdns, with no real DNS server. Names come from a hosts file loaded with
 * evdns_base_load_hosts, or from a small DNS responder on 127.0.0.1 played
 * by the test (A and AAAA answers, NXDOMAIN, or silence). Checked: numeric
 * and bracketed IPv6 literals, configuration order across relays, a name
 * that does not resolve next to one that does, cancel before the answer,
 * refused input, and that the callback never runs before disc_resolve
 * returns and runs once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "discovery/disc_resolve.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_sys.h"

#define WAIT_MS 3000
#define DNS_TYPE_A 1
#define DNS_TYPE_AAAA 28

/* ---- a DNS responder on 127.0.0.1 ---------------------------------------- */

struct record {
	const char *name; /* lower case, no trailing dot */
	int type;	  /* DNS_TYPE_A or DNS_TYPE_AAAA */
	const char *addr;
};

struct dns_fake {
	int fd;
	uint16_t port;
	struct event *ev;
	int silent; /* read queries, answer none */
	int queries;
	int aaaa_queries;
	const struct record *recs;
	size_t nrecs;
};

/* The question name of a query at q (after the 12-byte header) as lower-case
 * dotted text; returns the offset just past it, or 0 if malformed. */
static size_t read_qname(const uint8_t *p, size_t len, size_t q, char *out, size_t outlen)
{
	size_t o = 0;

	while (q < len && p[q] != 0) {
		size_t l = p[q++];

		if (l > 63 || q + l > len || o + l + 2 > outlen)
			return 0;
		if (o)
			out[o++] = '.';
		for (size_t i = 0; i < l; i++)
			out[o++] = (char)tolower(p[q + i]);
		q += l;
	}
	if (q >= len)
		return 0;
	out[o] = '\0';
	return q + 1;
}

static void put16(uint8_t *b, size_t *o, unsigned v)
{
	b[(*o)++] = (uint8_t)(v >> 8);
	b[(*o)++] = (uint8_t)v;
}

static void dns_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dns_fake *d = arg;
	uint8_t q[512], a[1024];
	struct sockaddr_storage from;
	socklen_t flen = sizeof(from);
	char name[256];
	ssize_t n = recvfrom(fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
	size_t qend, o, ancount_at;
	unsigned qtype, an = 0;
	int known = 0;

	if (n < 12)
		return;
	d->queries++;
	if (d->silent)
		return;
	qend = read_qname(q, (size_t)n, 12, name, sizeof(name));
	assert_true(qend > 0 && qend + 4 <= (size_t)n);
	qtype = (unsigned)q[qend] << 8 | q[qend + 1];
	qend += 4;
	if (qtype == DNS_TYPE_AAAA)
		d->aaaa_queries++;

	o = 0;
	a[o++] = q[0]; /* id */
	a[o++] = q[1];
	put16(a, &o, 0x8180); /* response, recursion desired and available */
	put16(a, &o, 1);      /* one question */
	ancount_at = o;
	put16(a, &o, 0);
	put16(a, &o, 0);
	put16(a, &o, 0);
	memcpy(a + o, q + 12, qend - 12); /* the question as asked (0x20 case) */
	o += qend - 12;
	for (size_t i = 0; i < d->nrecs; i++) {
		const struct record *r = &d->recs[i];
		uint8_t raw[16];
		size_t rlen = r->type == DNS_TYPE_A ? 4 : 16;

		if (strcmp(r->name, name) != 0)
			continue;
		known = 1;
		if ((unsigned)r->type != qtype)
			continue;
		assert_int_equal(
		    inet_pton(r->type == DNS_TYPE_A ? AF_INET : AF_INET6, r->addr, raw), 1);
		put16(a, &o, 0xc00c); /* the name: a pointer to the question */
		put16(a, &o, qtype);
		put16(a, &o, 1); /* IN */
		put16(a, &o, 0);
		put16(a, &o, 60); /* TTL */
		put16(a, &o, (unsigned)rlen);
		memcpy(a + o, raw, rlen);
		o += rlen;
		an++;
	}
	a[ancount_at] = (uint8_t)(an >> 8);
	a[ancount_at + 1] = (uint8_t)an;
	if (!known)
		a[3] |= 3; /* NXDOMAIN */
	sendto(fd, a, o, 0, (struct sockaddr *)&from, flen);
}

/* ---- fixture ---------------------------------------------------------------- */

struct got {
	int calls;
	int err;
	size_t n;
	struct disc_addr addrs[DISC_MAX_ADDRS];
};

struct fx {
	struct event_base *base;
	struct evdns_base *dns;
	struct dns_fake fake;
	struct ts_dir dir;
	struct got got;
	int returned; /* disc_resolve has returned */
	int early;    /* the callback ran before it did */
};

static void on_resolved(int err, const struct disc_addr *addrs, size_t n, void *arg)
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

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->fake.fd = -1;
	assert_non_null(f->base = event_base_new());
	/* no resolv.conf, no /etc/hosts: only what each test gives */
	assert_non_null(f->dns = evdns_base_new(f->base, 0));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	evdns_base_free(f->dns, 0);
	if (f->fake.ev)
		event_free(f->fake.ev);
	if (f->fake.fd >= 0)
		close(f->fake.fd);
	/* deferred callbacks of cancelled queries free their memory here */
	ts_loop_run_for(f->base, 10);
	event_base_free(f->base);
	ts_dir_remove(&f->dir);
	free(f);
	return 0;
}

/* Start the responder with these records and make it the only nameserver. */
static void fake_start(struct fx *f, const struct record *recs, size_t nrecs)
{
	char ns[64];

	f->fake.recs = recs;
	f->fake.nrecs = nrecs;
	f->fake.fd = ts_udp_loopback(1, &f->fake.port);
	f->fake.ev =
	    event_new(f->base, f->fake.fd, EV_READ | EV_PERSIST, dns_read_cb, &f->fake);
	assert_non_null(f->fake.ev);
	assert_int_equal(event_add(f->fake.ev, NULL), 0);
	snprintf(ns, sizeof(ns), "127.0.0.1:%u", f->fake.port);
	assert_int_equal(evdns_base_nameserver_ip_add(f->dns, ns), 0);
	/* a silent server must not be retried for long */
	assert_int_equal(evdns_base_set_option(f->dns, "timeout:", "1"), 0);
	assert_int_equal(evdns_base_set_option(f->dns, "attempts:", "1"), 0);
}

static void hosts_file(struct fx *f, const char *text)
{
	char path[192];

	ts_dir_make(&f->dir, "disc");
	ts_dir_file(&f->dir, "hosts", path, sizeof(path));
	ts_write_file(path, text);
	assert_int_equal(evdns_base_load_hosts(f->dns, path), 0);
}

static struct disc_req *start(struct fx *f, char *const *targets, size_t n)
{
	char err[256] = "";
	struct disc_req *r;

	f->returned = 0;
	r = disc_resolve(f->base, f->dns, targets, n, on_resolved, f, err, sizeof(err));
	f->returned = 1;
	if (!r)
		fail_msg("disc_resolve: %s", err);
	return r;
}

/* Resolve and wait for the one callback. */
static void resolve(struct fx *f, char *const *targets, size_t n)
{
	start(f, targets, n);
	assert_int_equal(f->got.calls, 0);
	assert_true(ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS));
	ts_loop_run_for(f->base, 20); /* no second call */
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
	assert_int_equal(f->got.addrs[i].len, f->got.addrs[i].ss.ss_family == AF_INET
						  ? sizeof(struct sockaddr_in)
						  : sizeof(struct sockaddr_in6));
}

#define T(...) ((char *[]){__VA_ARGS__})
#define N(...) (sizeof((char *[]){__VA_ARGS__}) / sizeof(char *))
#define RESOLVE(f, ...) resolve((f), T(__VA_ARGS__), N(__VA_ARGS__))

/* ---- tests ------------------------------------------------------------------ */

static void test_numeric_ipv4(void **state)
{
	struct fx *f = *state;

	RESOLVE(f, "127.0.0.1:8443");
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 1);
	assert_addr(f, 0, "127.0.0.1:8443", "127.0.0.1");
}

static void test_ipv6_literal_in_brackets(void **state)
{
	struct fx *f = *state;

	RESOLVE(f, "[::1]:443", "[fd00::7]:8443");
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 2);
	assert_addr(f, 0, "[::1]:443", "::1");
	assert_addr(f, 1, "[fd00::7]:8443", "fd00::7");
}

static void test_names_from_hosts_file(void **state)
{
	struct fx *f = *state;

	hosts_file(f, "# relays\n"
		      "10.0.0.1 relay-a.test\n"
		      "10.0.0.2 relay-a.test relay-alias.test\n"
		      "127.0.0.9 relay-b.test\n");
	RESOLVE(f, "relay-a.test:9000");
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 2);
	assert_addr(f, 0, "10.0.0.1:9000", "relay-a.test");
	assert_addr(f, 1, "10.0.0.2:9000", "relay-a.test");
	memset(&f->got, 0, sizeof(f->got));
	RESOLVE(f, "relay-alias.test:1");
	assert_int_equal(f->got.n, 1);
	assert_addr(f, 0, "10.0.0.2:1", "relay-alias.test");
}

/* With no nameserver (no resolv.conf), a name the hosts file does not know
 * fails at once: evdns would hold its query until a nameserver is added,
 * and the sidecar would wait for ever instead of dialling the others. */
static void test_no_nameserver_fails_at_once(void **state)
{
	struct fx *f = *state;
	uint64_t t0 = sr_now_us();

	assert_int_equal(evdns_base_count_nameservers(f->dns), 0);
	hosts_file(f, "127.0.0.5 known.test\n");
	RESOLVE(f, "unknown.test:1", "known.test:2");
	assert_true(sr_now_us() - t0 < 1000000u);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 1);
	assert_addr(f, 0, "127.0.0.5:2", "known.test");
	memset(&f->got, 0, sizeof(f->got));
	RESOLVE(f, "unknown.test:1");
	assert_int_equal(f->got.err, SR_ERESOLVE);
}

/* Relays come back in configuration order, each with all its addresses and
 * the name it was configured by (for TLS verification). */
static void test_several_relays_in_order(void **state)
{
	struct fx *f = *state;
	static const struct record recs[] = {
	    {"dns-a.test", DNS_TYPE_A, "192.0.2.10"},
	    {"dns-a.test", DNS_TYPE_A, "192.0.2.11"},
	    {"dns-b.test", DNS_TYPE_A, "198.51.100.7"},
	};

	hosts_file(f, "127.0.0.5 hosts-a.test\n127.0.0.6 hosts-a.test\n");
	fake_start(f, recs, SR_ARRAY_LEN(recs));
	RESOLVE(f, "dns-b.test:1", "hosts-a.test:2", "127.0.0.3:3", "dns-a.test:4", "[::1]:5");
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 7);
	assert_addr(f, 0, "198.51.100.7:1", "dns-b.test");
	assert_addr(f, 1, "127.0.0.5:2", "hosts-a.test");
	assert_addr(f, 2, "127.0.0.6:2", "hosts-a.test");
	assert_addr(f, 3, "127.0.0.3:3", "127.0.0.3");
	assert_addr(f, 4, "192.0.2.10:4", "dns-a.test");
	assert_addr(f, 5, "192.0.2.11:4", "dns-a.test");
	assert_addr(f, 6, "[::1]:5", "::1");
	assert_true(f->fake.queries > 0);
}

/* AAAA answers count as addresses of the name too. Names are looked up
 * with EVUTIL_AI_ADDRCONFIG: where libevent finds no global IPv6 address on
 * the host it asks for A records only, and the name has no address. */
static void test_aaaa_answers(void **state)
{
	struct fx *f = *state;
	static const struct record recs[] = {
	    {"six.test", DNS_TYPE_AAAA, "2001:db8::1"},
	    {"six.test", DNS_TYPE_AAAA, "2001:db8::2"},
	};

	fake_start(f, recs, SR_ARRAY_LEN(recs));
	RESOLVE(f, "six.test:443");
	if (f->fake.aaaa_queries == 0) {
		assert_int_equal(f->got.err, SR_ERESOLVE);
		assert_int_equal(f->got.n, 0);
		print_message("libevent sees no IPv6 address here: no AAAA query was made\n");
		skip();
		return;
	}
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 2);
	assert_addr(f, 0, "[2001:db8::1]:443", "six.test");
	assert_addr(f, 1, "[2001:db8::2]:443", "six.test");
}

/* A relay whose name does not resolve does not hide the others. */
static void test_unresolvable_next_to_good(void **state)
{
	struct fx *f = *state;
	static const struct record recs[] = {
	    {"good.test", DNS_TYPE_A, "203.0.113.1"},
	};

	fake_start(f, recs, SR_ARRAY_LEN(recs));
	RESOLVE(f, "nx.test:1", "good.test:2", "nx2.test:3");
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 1);
	assert_addr(f, 0, "203.0.113.1:2", "good.test");
}

static void test_nothing_resolves(void **state)
{
	struct fx *f = *state;

	fake_start(f, NULL, 0);
	RESOLVE(f, "nx.test:1", "nx2.test:3");
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_int_equal(f->got.n, 0);
}

/* Cancelled while the server has not answered: the callback never runs and
 * nothing is left behind (LeakSanitizer at exit). */
static void test_cancel_before_the_answer(void **state)
{
	struct fx *f = *state;
	struct disc_req *r;

	fake_start(f, NULL, 0);
	f->fake.silent = 1;
	r = start(f, T("slow.test:1", "127.0.0.1:2"), 2);
	ts_loop_run_for(f->base, 50);
	assert_true(f->fake.queries > 0);
	assert_int_equal(f->got.calls, 0);
	disc_cancel(r);
	ts_loop_run_for(f->base, 1500); /* past the 1 s query timeout */
	assert_int_equal(f->got.calls, 0);
}

/* Cancelled after every answer is in but before the callback's turn. */
static void test_cancel_after_answers_before_callback(void **state)
{
	struct fx *f = *state;
	struct disc_req *r;

	r = start(f, T("127.0.0.1:1", "[::1]:2"), 2);
	disc_cancel(r);
	ts_loop_run_for(f->base, 50);
	assert_int_equal(f->got.calls, 0);
	disc_cancel(NULL);
}

static void expect_refused(struct fx *f, char *const *targets, size_t n, const char *want)
{
	char err[256] = "";

	assert_null(
	    disc_resolve(f->base, f->dns, targets, n, on_resolved, f, err, sizeof(err)));
	assert_contains(err, want);
	ts_loop_run_for(f->base, 20);
	assert_int_equal(f->got.calls, 0);
}

static void test_bad_input(void **state)
{
	struct fx *f = *state;

	expect_refused(f, T("relay.test"), 1, "bad relay address \"relay.test\"");
	expect_refused(f, T("relay.test:0"), 1,
		       "bad relay address \"relay.test:0\" (want a port 1..65535)");
	expect_refused(f, T("127.0.0.1:0"), 1, "\"127.0.0.1:0\"");
	expect_refused(f, T("[::1]"), 1, "\"[::1]\"");
	expect_refused(f, T("::1:443"), 1, "\"::1:443\"");
	expect_refused(f, T("relay.test:65536"), 1, "\"relay.test:65536\"");
	expect_refused(f, T(":443"), 1, "\":443\"");
	/* one bad entry refuses the list: the configuration is wrong */
	expect_refused(f, T("127.0.0.1:1", "relay.test:x"), 2, "\"relay.test:x\"");
	/* the text is quoted escaped, as it may come from the environment */
	expect_refused(f, T("a\nb:1:2"), 1, "\"a\\x0ab:1:2\"");
	expect_refused(f, T("127.0.0.1:1"), 0, "no relay address");
}

/* ---- failed allocations ------------------------------------------------------ */

struct alloc_run {
	struct fx *f;
	char *const *targets;
	size_t n;
};

static int resolve_once(void *arg, unsigned long nth)
{
	struct alloc_run *a = arg;
	struct fx *f = a->f;
	char err[256] = "";
	struct disc_req *r;
	unsigned long used;
	int failed;

	memset(&f->got, 0, sizeof(f->got));
	f->early = 0;
	f->returned = 0;
	ts_alloc_arm(nth);
	r = disc_resolve(f->base, f->dns, a->targets, a->n, on_resolved, f, err, sizeof(err));
	failed = ts_alloc_disarm();
	used = ts_alloc_count();
	f->returned = 1;
	if (!r) {
		assert_true(failed);
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	/* Then the answers: a failure of ours after disc_resolve returned
	 * reaches the callback as an error, once, and never before the return.
	 * (libevent's own allocations are not failed here: evdns drops a reply
	 * whose deferred callback it cannot allocate, and nobody hears of it.) */
	if (!failed)
		ts_alloc_arm_ours(nth - used);
	ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS);
	ts_alloc_disarm();
	ts_loop_run_for(f->base, 5);
	assert_int_equal(f->got.calls, 1);
	assert_false(f->early);
	return 0;
}

static void test_alloc_failures(void **state)
{
	struct fx *f = *state;
	static const struct record recs[] = {
	    {"dns-a.test", DNS_TYPE_A, "192.0.2.10"},
	};
	struct alloc_run a = {f, T("dns-a.test:1", "hosts-a.test:2", "127.0.0.1:3", "[::1]:4"),
			      4};
	struct ts_alloc_result res;

	hosts_file(f, "127.0.0.5 hosts-a.test\n");
	fake_start(f, recs, SR_ARRAY_LEN(recs));
	ts_alloc_sweep("disc_resolve", resolve_once, &a, &res);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	    TEST(test_numeric_ipv4),
	    TEST(test_ipv6_literal_in_brackets),
	    TEST(test_names_from_hosts_file),
	    TEST(test_no_nameserver_fails_at_once),
	    TEST(test_several_relays_in_order),
	    TEST(test_aaaa_answers),
	    TEST(test_unresolvable_next_to_good),
	    TEST(test_nothing_resolves),
	    TEST(test_cancel_before_the_answer),
	    TEST(test_cancel_after_answers_before_callback),
	    TEST(test_bad_input),
	    TEST(test_alloc_failures),
#undef TEST
	};

	ts_alloc_init();
	ts_log_level_from_env(SR_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
