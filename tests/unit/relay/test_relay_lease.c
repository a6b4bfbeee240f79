/* relay_lease: real listeners on loopback driven by a real event_base. Every
 * wait is bounded by a deadline; each test picks its own random port range so
 * parallel runs rarely collide. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "relay/relay_lease.h"
#include "tunnel/tun_ctl.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"

#define RANGE_LEN 8
#define MAX_FDS 64
#define WAIT_MS 2000

struct fx {
	struct event_base *base;
	struct relay_lease_table *t;
	struct relay_pool_opts opts;
	uint16_t port_base; /* first port of the pool range */
	uint16_t nports;
	/* on_accept */
	int accepts[TUN_PORT_MAX];
	int accepts_total;
	int nodelay_ok; /* every accepted fd had TCP_NODELAY */
	uint16_t accepted_local_port[TUN_PORT_MAX];
	struct relay_lease *accepted_lease;
	int fds[MAX_FDS];
	int nfds;
	/* on_expire */
	int expires;
	struct relay_lease *expired;
	char expired_id[TUN_CTL_LEASE_MAX];
	int release_in_expire; /* on_expire also calls relay_lease_release */
	struct rlimit saved_nofile; /* restored at teardown when changed */
	int nofile_changed;
	int fillers[MAX_FDS]; /* fds that exhaust the lowered RLIMIT_NOFILE */
	int nfillers;
};

static void keep_fd(struct fx *f, int fd)
{
	assert_true(f->nfds < MAX_FDS);
	f->fds[f->nfds++] = fd;
}

static void on_accept(struct relay_lease *l, enum tun_port_role role, int fd,
		      const struct sockaddr *peer, int peerlen, void *arg)
{
	struct fx *f = arg;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int nd = 0;
	socklen_t ndl = sizeof(nd);

	assert_non_null(peer);
	assert_true(peerlen > 0);
	assert_true((int)role >= 0 && role < TUN_PORT_MAX);
	f->accepts[role]++;
	f->accepts_total++;
	f->accepted_lease = l;
	if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nd, &ndl) != 0 || !nd)
		f->nodelay_ok = 0;
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		f->accepted_local_port[role] = sr_addr_port((struct sockaddr *)&ss);
	keep_fd(f, fd);
}

static void on_expire(struct relay_lease *l, void *arg)
{
	struct fx *f = arg;

	f->expires++;
	f->expired = l;
	snprintf(f->expired_id, sizeof(f->expired_id), "%s", relay_lease_id(l));
	if (f->release_in_expire)
		relay_lease_release(l); /* must be harmless: the table frees it */
}

static const struct relay_lease_cbs test_cbs = {on_accept, on_expire};

/* ---- helpers ------------------------------------------------------------ */

static void fx_table_full(struct fx *f, const char *bind, const char *adv, uint16_t n,
			  uint32_t max_leases)
{
	f->nports = n;
	f->port_base = ts_pick_port_range(bind, n);
	f->opts.bind_address = (char *)bind;
	f->opts.advertise_host = (char *)adv;
	f->opts.port_min = f->port_base;
	f->opts.port_max = (uint32_t)f->port_base + n - 1;
	f->opts.max_leases = max_leases;
	f->opts.backlog = 0;
	f->t = relay_lease_table_new(f->base, &f->opts, &test_cbs, f);
	assert_non_null(f->t);
}

static void fx_table(struct fx *f, uint32_t max_leases)
{
	fx_table_full(f, "127.0.0.1", NULL, RANGE_LEN, max_leases);
}

static int in_range(const struct fx *f, uint16_t p)
{
	return p >= f->port_base && p < f->port_base + f->nports;
}

static int connect_loop(struct fx *f, uint16_t port)
{
	int fd = ts_connect("127.0.0.1", port);
	if (fd >= 0)
		keep_fd(f, fd);
	return fd;
}

static void run_until(struct fx *f, const int *counter, int want, int ms)
{
	ts_loop_until_count(f->base, counter, want, ms);
}

static void run_for(struct fx *f, int ms)
{
	ts_loop_run_for(f->base, ms);
}

static int is_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	}
	return 1;
}

/* The resume token of l, as the lease message carries it. */
struct token {
	char s[TUN_CTL_RESUME_MAX];
};

static struct token resume_of(const struct relay_lease *l)
{
	struct tun_ctl_msg m;
	struct token t;

	memset(&m, 0, sizeof(m));
	relay_lease_describe(l, &m);
	snprintf(t.s, sizeof(t.s), "%s", m.resume);
	return t;
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->base = event_base_new();
	assert_non_null(f->base);
	f->nodelay_ok = 1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	for (int i = 0; i < f->nfillers; i++)
		close(f->fillers[i]);
	if (f->nofile_changed)
		setrlimit(RLIMIT_NOFILE, &f->saved_nofile);
	relay_lease_table_free(f->t);
	for (int i = 0; i < f->nfds; i++)
		close(f->fds[i]);
	event_base_free(f->base);
	free(f);
	return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_create_two_roles_listening(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	uint16_t pd, pb;
	char want_prefix[8];

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "myapp", roles, 30, &l), 0);
	assert_non_null(l);
	assert_int_equal(relay_lease_count(f->t), 1);
	assert_string_equal(relay_lease_app(l), "myapp");

	/* "L-<n>-<8 hex>" and a 64-hex resume token. */
	snprintf(want_prefix, sizeof(want_prefix), "L-1-");
	assert_memory_equal(relay_lease_id(l), want_prefix, 4);
	assert_true(is_hex(relay_lease_id(l) + 4, 8));
	assert_true(is_hex(resume_of(l).s, 64));

	pd = relay_lease_port(l, TUN_PORT_DRIVER);
	pb = relay_lease_port(l, TUN_PORT_BLOCKMANAGER);
	assert_true(in_range(f, pd));
	assert_true(in_range(f, pb));
	assert_int_not_equal(pd, pb);
	assert_int_equal(relay_lease_port(l, TUN_PORT_UI), 0);
	assert_int_equal(relay_lease_port(l, (enum tun_port_role)TUN_PORT_MAX), 0);

	assert_true(connect_loop(f, pd) >= 0);
	assert_true(connect_loop(f, pb) >= 0);
	run_until(f, &f->accepts_total, 2, WAIT_MS);
	assert_int_equal(f->accepts[TUN_PORT_DRIVER], 1);
	assert_int_equal(f->accepts[TUN_PORT_BLOCKMANAGER], 1);
	assert_int_equal(f->accepts[TUN_PORT_UI], 0);
	/* The role reported is the role of the port the client dialled. */
	assert_int_equal(f->accepted_local_port[TUN_PORT_DRIVER], pd);
	assert_int_equal(f->accepted_local_port[TUN_PORT_BLOCKMANAGER], pb);
	assert_ptr_equal(f->accepted_lease, l);
	assert_true(f->nodelay_ok);
}

static void test_second_lease_gets_other_ports_and_sequence(void **state)
{
	struct fx *f = *state;
	struct relay_lease *a = NULL, *b = NULL;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "a", roles, 30, &a), 0);
	assert_int_equal(relay_lease_create(f->t, "b", roles, 30, &b), 0);
	assert_memory_equal(relay_lease_id(b), "L-2-", 4);
	assert_string_not_equal(resume_of(a).s, resume_of(b).s);
	uint16_t p[4] = {relay_lease_port(a, TUN_PORT_DRIVER),
			 relay_lease_port(a, TUN_PORT_BLOCKMANAGER),
			 relay_lease_port(b, TUN_PORT_DRIVER),
			 relay_lease_port(b, TUN_PORT_BLOCKMANAGER)};
	for (int i = 0; i < 4; i++)
		for (int j = i + 1; j < 4; j++)
			assert_int_not_equal(p[i], p[j]);
}

static void test_skips_port_listened_by_other(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct sockaddr_storage ss;
	socklen_t len;
	int squat;

	fx_table(f, 0);
	/* Someone else listens on the first port of the range. */
	assert_int_equal(sr_parse_addr("127.0.0.1", f->port_base, &ss, &len), 0);
	squat = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(squat >= 0);
	keep_fd(f, squat);
	assert_int_equal(bind(squat, (struct sockaddr *)&ss, len), 0);
	assert_int_equal(listen(squat, 4), 0);

	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30, &l),
			 0);
	assert_true(in_range(f, relay_lease_port(l, TUN_PORT_DRIVER)));
	assert_int_not_equal(relay_lease_port(l, TUN_PORT_DRIVER), f->port_base);
}

static void test_skips_port_bound_without_reuse(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct sockaddr_storage ss;
	socklen_t len;
	int squat;

	fx_table(f, 0);
	/* Bound but not listening, no SO_REUSEADDR: our bind gets EADDRINUSE. */
	assert_int_equal(sr_parse_addr("127.0.0.1", f->port_base, &ss, &len), 0);
	squat = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(squat >= 0);
	keep_fd(f, squat);
	assert_int_equal(bind(squat, (struct sockaddr *)&ss, len), 0);

	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30, &l),
			 0);
	assert_true(in_range(f, relay_lease_port(l, TUN_PORT_DRIVER)));
	assert_int_not_equal(relay_lease_port(l, TUN_PORT_DRIVER), f->port_base);
}

static void test_pool_exhaustion_is_all_or_nothing(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l[RANGE_LEN / 2] = {0}, *x = NULL, *y = NULL;
	unsigned two = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	unsigned three = two | TUN_ROLE_BIT(TUN_PORT_UI);
	uint16_t freed[2];

	fx_table(f, 0);
	for (int i = 0; i < RANGE_LEN / 2; i++)
		assert_int_equal(relay_lease_create(f->t, "app", two, 30, &l[i]), 0);
	assert_int_equal(relay_lease_count(f->t), RANGE_LEN / 2);

	x = (struct relay_lease *)0x1;
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30, &x),
			 SR_ENOPORTS);
	assert_null(x);
	assert_int_equal(relay_lease_count(f->t), RANGE_LEN / 2);

	/* Two ports free: a three-port lease takes both, fails on the third,
	 * and must give both back. */
	freed[0] = relay_lease_port(l[1], TUN_PORT_DRIVER);
	freed[1] = relay_lease_port(l[1], TUN_PORT_BLOCKMANAGER);
	relay_lease_release(l[1]);
	assert_int_equal(relay_lease_create(f->t, "big", three, 30, &x), SR_ENOPORTS);
	assert_null(x);
	assert_int_equal(relay_lease_count(f->t), RANGE_LEN / 2 - 1);
	for (int i = 0; i < 2; i++) {
		int fd = ts_connect("127.0.0.1", freed[i]);
		assert_int_equal(fd, -ECONNREFUSED);
	}
	assert_int_equal(relay_lease_create(f->t, "small", two, 30, &y), 0);
	uint16_t got[2] = {relay_lease_port(y, TUN_PORT_DRIVER),
			   relay_lease_port(y, TUN_PORT_BLOCKMANAGER)};
	assert_true((got[0] == freed[0] && got[1] == freed[1]) ||
		    (got[0] == freed[1] && got[1] == freed[0]));
	assert_int_equal(relay_lease_count(f->t), RANGE_LEN / 2);
}

static void test_max_leases_busy(void **state)
{
	struct fx *f = *state;
	struct relay_lease *a = NULL, *b = NULL, *c = NULL;
	unsigned r = TUN_ROLE_BIT(TUN_PORT_DRIVER);

	fx_table(f, 2);
	assert_int_equal(relay_lease_create(f->t, "a", r, 30, &a), 0);
	assert_int_equal(relay_lease_create(f->t, "b", r, 30, &b), 0);
	assert_int_equal(relay_lease_create(f->t, "c", r, 30, &c), SR_EBUSY);
	assert_null(c);
	assert_int_equal(relay_lease_count(f->t), 2);
	relay_lease_release(a);
	assert_int_equal(relay_lease_create(f->t, "c", r, 30, &c), 0);
	assert_int_equal(relay_lease_count(f->t), 2);
}

static void test_find_by_resume_and_id(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l[3] = {0};
	char wrong[TUN_CTL_RESUME_MAX];
	char id[TUN_CTL_LEASE_MAX];

	fx_table(f, 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30,
						    &l[i]),
				 0);
	for (int i = 0; i < 3; i++) {
		assert_ptr_equal(relay_lease_find_resume(f->t, resume_of(l[i]).s), l[i]);
		assert_ptr_equal(relay_lease_find_id(f->t, relay_lease_id(l[i])), l[i]);
	}
	/* Same length, one character off. */
	snprintf(wrong, sizeof(wrong), "%s", resume_of(l[1]).s);
	wrong[10] = wrong[10] == 'a' ? 'b' : 'a';
	assert_null(relay_lease_find_resume(f->t, wrong));
	/* Prefix and extension of a real token. */
	snprintf(wrong, sizeof(wrong), "%s", resume_of(l[1]).s);
	wrong[63] = '\0';
	assert_null(relay_lease_find_resume(f->t, wrong));
	snprintf(wrong, sizeof(wrong), "%sx", resume_of(l[1]).s);
	assert_null(relay_lease_find_resume(f->t, wrong));
	assert_null(relay_lease_find_resume(f->t, ""));
	/* An id is not a resume token, and vice versa. */
	assert_null(relay_lease_find_resume(f->t, relay_lease_id(l[0])));
	assert_null(relay_lease_find_id(f->t, resume_of(l[0]).s));
	assert_null(relay_lease_find_id(f->t, "L-99-00000000"));

	/* A released lease is no longer found. */
	snprintf(id, sizeof(id), "%s", relay_lease_id(l[2]));
	snprintf(wrong, sizeof(wrong), "%s", resume_of(l[2]).s);
	relay_lease_release(l[2]);
	assert_null(relay_lease_find_id(f->t, id));
	assert_null(relay_lease_find_resume(f->t, wrong));
	assert_ptr_equal(relay_lease_find_id(f->t, relay_lease_id(l[0])), l[0]);
}

/* A rotated resume token finds the lease; the old one no longer does, and
 * the lease message carries the new one. */
static void test_rotate_resume(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL, *other = NULL;
	char old[TUN_CTL_RESUME_MAX];

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30, &l),
			 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30,
					    &other),
			 0);
	snprintf(old, sizeof(old), "%s", resume_of(l).s);
	assert_int_equal(relay_lease_rotate_resume(l), 0);
	assert_true(is_hex(resume_of(l).s, 64));
	assert_string_not_equal(resume_of(l).s, old);
	assert_null(relay_lease_find_resume(f->t, old));
	assert_ptr_equal(relay_lease_find_resume(f->t, resume_of(l).s), l);
	assert_ptr_equal(relay_lease_find_resume(f->t, resume_of(other).s), other);
}

/* More leases than the initial id hash buckets, so the table must grow and
 * still find each one. */
static void test_find_id_after_table_grows(void **state)
{
	struct fx *f = *state;
	enum { N = 150 };
	struct relay_lease *l[N] = {0};
	static char ids[N][TUN_CTL_LEASE_MAX];

	fx_table_full(f, "127.0.0.1", NULL, N + 10, 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30,
						    &l[i]),
				 0);
	assert_int_equal(relay_lease_count(f->t), N);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(relay_lease_find_id(f->t, relay_lease_id(l[i])), l[i]);
	for (int i = 0; i < N; i += 2) {
		snprintf(ids[i], sizeof(ids[i]), "%s", relay_lease_id(l[i]));
		relay_lease_release(l[i]);
	}
	for (int i = 0; i < N; i += 2)
		assert_null(relay_lease_find_id(f->t, ids[i]));
	for (int i = 1; i < N; i += 2)
		assert_ptr_equal(relay_lease_find_id(f->t, relay_lease_id(l[i])), l[i]);
	assert_int_equal(relay_lease_count(f->t), N / 2);
}

static void test_release_closes_ports(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	uint16_t pd, pb;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", roles, 30, &l), 0);
	pd = relay_lease_port(l, TUN_PORT_DRIVER);
	pb = relay_lease_port(l, TUN_PORT_BLOCKMANAGER);
	assert_true(connect_loop(f, pd) >= 0);
	relay_lease_release(l);
	assert_int_equal(relay_lease_count(f->t), 0);
	assert_int_equal(ts_connect("127.0.0.1", pd), -ECONNREFUSED);
	assert_int_equal(ts_connect("127.0.0.1", pb), -ECONNREFUSED);
	/* Released without expiry. */
	run_for(f, 50);
	assert_int_equal(f->expires, 0);
}

static void test_detach_ttl_expires_once(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	uint16_t pd;
	char id[TUN_CTL_LEASE_MAX];

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 1, &l), 0);
	snprintf(id, sizeof(id), "%s", relay_lease_id(l));
	pd = relay_lease_port(l, TUN_PORT_DRIVER);
	relay_lease_attach(l);
	relay_lease_detach(l);
	uint64_t t0 = sr_now_us();
	run_until(f, &f->expires, 1, 3000);
	uint64_t took = sr_now_us() - t0;
	assert_int_equal(f->expires, 1);
	assert_ptr_equal(f->expired, l);
	assert_string_equal(f->expired_id, id);
	assert_true(took >= 900000 && took < 2500000);
	/* Once, and the lease is gone with its ports. */
	run_for(f, 200);
	assert_int_equal(f->expires, 1);
	assert_int_equal(relay_lease_count(f->t), 0);
	assert_null(relay_lease_find_id(f->t, id));
	assert_int_equal(ts_connect("127.0.0.1", pd), -ECONNREFUSED);
}

static void test_attach_before_expiry_keeps_lease(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	uint16_t pd;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 1, &l), 0);
	pd = relay_lease_port(l, TUN_PORT_DRIVER);
	relay_lease_detach(l);
	run_for(f, 500);
	relay_lease_attach(l);
	run_for(f, 1500);
	assert_int_equal(f->expires, 0);
	assert_int_equal(relay_lease_count(f->t), 1);
	assert_true(connect_loop(f, pd) >= 0);
	run_until(f, &f->accepts_total, 1, WAIT_MS);
	assert_int_equal(f->accepts[TUN_PORT_DRIVER], 1);
	/* A second detach then expires as usual. */
	relay_lease_detach(l);
	run_until(f, &f->expires, 1, 3000);
	assert_int_equal(f->expires, 1);
	assert_int_equal(relay_lease_count(f->t), 0);
}

static void test_release_inside_on_expire_is_harmless(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;

	fx_table(f, 0);
	f->release_in_expire = 1;
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 0, &l), 0);
	relay_lease_detach(l);
	run_until(f, &f->expires, 1, WAIT_MS);
	assert_int_equal(f->expires, 1);
	assert_int_equal(relay_lease_count(f->t), 0);
}

static void test_cursor_does_not_reuse_released_port(void **state)
{
	struct fx *f = *state;
	struct relay_lease *a = NULL, *b = NULL, *c = NULL;
	unsigned r = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	uint16_t pa, pb;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "a", r, 30, &a), 0);
	pa = relay_lease_port(a, TUN_PORT_DRIVER);
	relay_lease_release(a);
	assert_int_equal(relay_lease_create(f->t, "b", r, 30, &b), 0);
	pb = relay_lease_port(b, TUN_PORT_DRIVER);
	assert_int_not_equal(pb, pa);
	relay_lease_release(b);
	assert_int_equal(relay_lease_create(f->t, "c", r, 30, &c), 0);
	assert_int_not_equal(relay_lease_port(c, TUN_PORT_DRIVER), pa);
	assert_int_not_equal(relay_lease_port(c, TUN_PORT_DRIVER), pb);
}

static void test_describe_fills_message(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct tun_ctl_msg msg;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_UI);

	fx_table_full(f, "127.0.0.1", "relay.example.internal", RANGE_LEN, 0);
	assert_int_equal(relay_lease_create(f->t, "app", roles, 300, &l), 0);
	memset(&msg, 0, sizeof(msg));
	msg.ports[TUN_PORT_BLOCKMANAGER] = 1234; /* stale value must be cleared */
	relay_lease_describe(l, &msg);
	assert_int_equal(msg.type, TUN_CTL_LEASE);
	assert_string_equal(msg.lease, relay_lease_id(l));
	assert_string_equal(msg.host, "relay.example.internal");
	assert_int_equal(msg.ports[TUN_PORT_DRIVER], relay_lease_port(l, TUN_PORT_DRIVER));
	assert_int_equal(msg.ports[TUN_PORT_UI], relay_lease_port(l, TUN_PORT_UI));
	assert_true(in_range(f, msg.ports[TUN_PORT_DRIVER]));
	assert_true(in_range(f, msg.ports[TUN_PORT_UI]));
	assert_int_equal(msg.ports[TUN_PORT_BLOCKMANAGER], 0);
	assert_int_equal(msg.roles, roles);
	assert_int_equal(msg.ttl_s, 300);
	assert_ptr_equal(relay_lease_find_resume(f->t, msg.resume), l);
}

static void test_describe_host_defaults_to_bind_address(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct tun_ctl_msg msg;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l), 0);
	memset(&msg, 0, sizeof(msg));
	relay_lease_describe(l, &msg);
	assert_string_equal(msg.host, "127.0.0.1");
}

struct visit_log {
	int n;
	struct relay_lease *seen[4];
};

static void visit(struct relay_lease *l, void *arg)
{
	struct visit_log *v = arg;
	if (v->n < 4)
		v->seen[v->n] = l;
	v->n++;
}

static void test_data_slot_and_foreach(void **state)
{
	struct fx *f = *state;
	struct relay_lease *a = NULL, *b = NULL;
	struct visit_log v = {0};
	int tag;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "a", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &a), 0);
	assert_int_equal(relay_lease_create(f->t, "b", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &b), 0);
	assert_null(relay_lease_data(a));
	relay_lease_set_data(a, &tag);
	assert_ptr_equal(relay_lease_data(a), &tag);
	assert_null(relay_lease_data(b));

	relay_lease_foreach(f->t, visit, &v);
	assert_int_equal(v.n, 2);
	assert_true((v.seen[0] == a && v.seen[1] == b) || (v.seen[0] == b && v.seen[1] == a));
}

static void test_invalid_arguments(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = (struct relay_lease *)0x1;
	char longapp[TUN_CTL_APP_MAX + 1];

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", 0, 5, &l), SR_EINVAL);
	assert_null(l);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_MAX), 5, &l),
			 SR_EINVAL);
	assert_int_equal(relay_lease_create(f->t, NULL, TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l),
			 SR_EINVAL);
	memset(longapp, 'a', sizeof(longapp) - 1);
	longapp[sizeof(longapp) - 1] = '\0';
	assert_int_equal(relay_lease_create(f->t, longapp, TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l),
			 SR_EINVAL);
	assert_int_equal(relay_lease_count(f->t), 0);

	/* A bind address that is not numeric, and an empty range. */
	struct relay_pool_opts o = f->opts;
	struct relay_lease_table *t2;
	o.bind_address = "localhost";
	t2 = relay_lease_table_new(f->base, &o, &test_cbs, f);
	assert_non_null(t2);
	assert_int_equal(relay_lease_create(t2, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l),
			 SR_EINVAL);
	relay_lease_table_free(t2);
	o = f->opts;
	o.port_min = o.port_max + 1;
	t2 = relay_lease_table_new(f->base, &o, &test_cbs, f);
	assert_non_null(t2);
	assert_int_equal(relay_lease_create(t2, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l),
			 SR_EINVAL);
	relay_lease_table_free(t2);

	relay_lease_table_free(NULL);
	relay_lease_release(NULL);
	assert_int_equal(relay_lease_count(NULL), 0);
}

static void test_table_free_closes_everything_without_expire(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	uint16_t pd;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 0, &l), 0);
	pd = relay_lease_port(l, TUN_PORT_DRIVER);
	relay_lease_detach(l); /* timer pending when the table goes */
	relay_lease_table_free(f->t);
	f->t = NULL;
	run_for(f, 100);
	assert_int_equal(f->expires, 0);
	assert_int_equal(ts_connect("127.0.0.1", pd), -ECONNREFUSED);
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* accept() failing with EMFILE leaves the connection in the backlog; the
 * listener must back off for about a second instead of waking the loop over
 * and over, then accept the connection once descriptors are available. */
static void test_accept_emfile_pauses_listener(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct rlimit rl;
	int probe;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_DRIVER), 5, &l), 0);
	assert_true(connect_loop(f, relay_lease_port(l, TUN_PORT_DRIVER)) >= 0);

	/* Lower the soft limit just above the lowest free descriptor and fill
	 * every free slot below it. */
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &f->saved_nofile), 0);
	probe = fcntl(0, F_DUPFD_CLOEXEC, 0);
	assert_true(probe >= 0);
	close(probe);
	rl = f->saved_nofile;
	rl.rlim_cur = (rlim_t)probe + 4;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	f->nofile_changed = 1;
	while (f->nfillers < MAX_FDS) {
		int fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
		if (fd < 0) {
			assert_int_equal(errno, EMFILE);
			break;
		}
		f->fillers[f->nfillers++] = fd;
	}

	double cpu0 = cpu_seconds();
	run_for(f, 400);
	double cpu = cpu_seconds() - cpu0;
	assert_int_equal(f->accepts_total, 0);
	/* A spinning loop would burn the whole 400 ms. */
	assert_true(cpu < 0.15);

	for (int i = 0; i < f->nfillers; i++)
		close(f->fillers[i]);
	f->nfillers = 0;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &f->saved_nofile), 0);
	f->nofile_changed = 0;
	/* Resumes from its timer, about a second after the failure. */
	run_until(f, &f->accepts_total, 1, 2500);
	assert_int_equal(f->accepts[TUN_PORT_DRIVER], 1);
}

static void test_ipv6_loopback(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct tun_ctl_msg msg;
	int fd;

	if (!ts_have_ipv6_loopback()) {
		skip();
		return;
	}
	fx_table_full(f, "::1", NULL, RANGE_LEN, 0);
	assert_int_equal(relay_lease_create(f->t, "app", TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER), 5,
					    &l),
			 0);
	assert_true(in_range(f, relay_lease_port(l, TUN_PORT_BLOCKMANAGER)));
	fd = ts_connect("::1", relay_lease_port(l, TUN_PORT_BLOCKMANAGER));
	assert_true(fd >= 0);
	keep_fd(f, fd);
	run_until(f, &f->accepts_total, 1, WAIT_MS);
	assert_int_equal(f->accepts[TUN_PORT_BLOCKMANAGER], 1);
	memset(&msg, 0, sizeof(msg));
	relay_lease_describe(l, &msg);
	assert_string_equal(msg.host, "::1");
}

/* ---- handover: a lease rebuilt around another table's sockets ------------ */

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

static void test_adopt_keeps_id_token_ports_and_listeners(void **state)
{
	struct fx *f = *state;
	struct relay_lease_table *old;
	struct relay_lease *a = NULL, *b = NULL, *c = NULL;
	struct relay_lease_state st;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	char id[TUN_CTL_LEASE_MAX];
	struct token tok;
	uint16_t pd;

	fx_table(f, 0);
	old = relay_lease_table_new(f->base, &f->opts, &test_cbs, f);
	assert_non_null(old);
	for (int i = 0; i < 3; i++) /* a sequence number the adopter must not reuse */
		assert_int_equal(relay_lease_create(old, "handed", roles, 30, &a), 0);
	relay_lease_get_state(a, &st);
	snprintf(id, sizeof(id), "%s", st.id);
	tok = resume_of(a);
	pd = st.ports[TUN_PORT_DRIVER];
	/* "Another process": its own descriptors of the same sockets, from an
	 * older relay that did not set TCP_NODELAY on its listeners. */
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		int zero = 0;
		st.fds[r] = st.fds[r] >= 0 ? fcntl(st.fds[r], F_DUPFD_CLOEXEC, 0) : -1;
		if (st.fds[r] >= 0)
			assert_int_equal(setsockopt(st.fds[r], IPPROTO_TCP, TCP_NODELAY, &zero,
						    sizeof(zero)), 0);
	}
	/* An executor queued during the handover: its socket was made from the
	 * listener before the adopter could set anything on it. */
	assert_true(connect_loop(f, pd) >= 0);
	assert_int_equal(relay_lease_adopt(f->t, &st, &b), 0);
	relay_lease_table_free(old); /* closes its own descriptors only */
	assert_string_equal(relay_lease_id(b), id);
	assert_string_equal(relay_lease_app(b), "handed");
	assert_string_equal(resume_of(b).s, tok.s);
	assert_ptr_equal(relay_lease_find_resume(f->t, tok.s), b);
	assert_ptr_equal(relay_lease_find_id(f->t, id), b);
	assert_int_equal(relay_lease_port(b, TUN_PORT_DRIVER), pd);
	assert_int_equal(relay_lease_grace_left_ms(b), -1);

	/* Stopped until told: a connect waits in the backlog, not refused. */
	assert_true(connect_loop(f, pd) >= 0);
	run_for(f, 100);
	assert_int_equal(f->accepts_total, 0);
	relay_lease_listen(b, 1);
	run_until(f, &f->accepts_total, 2, WAIT_MS);
	assert_int_equal(f->accepts[TUN_PORT_DRIVER], 2);
	assert_ptr_equal(f->accepted_lease, b);
	assert_true(f->nodelay_ok); /* both: the one queued before the adoption too */

	/* New leases here neither repeat its id's number nor take its ports. */
	assert_int_equal(relay_lease_create(f->t, "next", roles, 30, &c), 0);
	assert_memory_equal(relay_lease_id(c), "L-4-", 4);
	assert_int_not_equal(relay_lease_port(c, TUN_PORT_DRIVER), pd);
	assert_int_not_equal(relay_lease_port(c, TUN_PORT_BLOCKMANAGER), pd);
}

static void test_adopt_refuses_what_does_not_fit_and_closes_the_sockets(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	struct relay_lease_state st;
	char resume[65];
	int fd[2];

	fx_table(f, 0);
	memset(resume, 'a', 64);
	resume[64] = '\0';
	for (int k = 0; k < 7; k++) {
		uint16_t p = f->port_base;
		memset(&st, 0, sizeof(st));
		st.id = "L-7-0123abcd";
		st.app = "x";
		st.resume = resume;
		st.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
		st.ttl_s = 30;
		st.fds[0] = st.fds[1] = st.fds[2] = -1;
		fd[0] = socket(AF_INET, SOCK_STREAM, 0);
		assert_true(fd[0] >= 0);
		st.fds[TUN_PORT_DRIVER] = fd[0];
		st.ports[TUN_PORT_DRIVER] = p;
		switch (k) {
		case 0: st.ports[TUN_PORT_DRIVER] = (uint16_t)(f->port_base + f->nports); break;
		case 1: st.id = "L-7-bad id"; break;
		case 2: st.resume = "short"; break;
		case 3: st.roles |= TUN_ROLE_BIT(TUN_PORT_UI); break; /* a role without a port */
		case 4: st.fds[TUN_PORT_DRIVER] = -1; break;          /* a port without a socket */
		case 5: st.ttl_s = TUN_CTL_TTL_MAX + 1; break;
		case 6: st.app = NULL; break;
		}
		assert_int_equal(relay_lease_adopt(f->t, &st, &l), SR_EINVAL);
		assert_null(l);
		if (k != 4)
			assert_false(fd_open(fd[0]));
		else
			close(fd[0]);
	}
	/* The same id twice, or a port another lease here holds. */
	memset(&st, 0, sizeof(st));
	st.id = "L-7-0123abcd";
	st.app = "x";
	st.resume = resume;
	st.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	st.ttl_s = 30;
	st.fds[1] = st.fds[2] = -1;
	st.fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	st.ports[0] = f->port_base;
	assert_int_equal(relay_lease_adopt(f->t, &st, &l), 0);
	fd[0] = st.fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	st.ports[0] = (uint16_t)(f->port_base + 1);
	assert_int_equal(relay_lease_adopt(f->t, &st, &l), SR_EBUSY);
	assert_false(fd_open(fd[0]));
	fd[1] = st.fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	st.id = "L-8-0123abcd";
	st.ports[0] = f->port_base;
	assert_int_equal(relay_lease_adopt(f->t, &st, &l), SR_EINVAL);
	assert_false(fd_open(fd[1]));
	assert_int_equal(relay_lease_count(f->t), 1);
}

static void test_grace_time_left_is_kept_and_restarted(void **state)
{
	struct fx *f = *state;
	struct relay_lease *l = NULL;
	int64_t left;

	fx_table(f, 0);
	assert_int_equal(relay_lease_create(f->t, "g", TUN_ROLE_BIT(TUN_PORT_DRIVER), 30, &l), 0);
	assert_int_equal(relay_lease_grace_left_ms(l), -1);
	relay_lease_detach(l);
	left = relay_lease_grace_left_ms(l);
	assert_true(left > 29000 && left <= 30000);
	relay_lease_grace_stop(l);
	assert_int_equal(relay_lease_grace_left_ms(l), -1);
	run_for(f, 50);
	relay_lease_detach_ms(l, 150);
	left = relay_lease_grace_left_ms(l);
	assert_true(left > 100 && left <= 150);
	run_until(f, &f->expires, 1, WAIT_MS);
	assert_int_equal(f->expires, 1);
	assert_int_equal(relay_lease_count(f->t), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_create_two_roles_listening),
		T(test_second_lease_gets_other_ports_and_sequence),
		T(test_skips_port_listened_by_other),
		T(test_skips_port_bound_without_reuse),
		T(test_pool_exhaustion_is_all_or_nothing),
		T(test_max_leases_busy),
		T(test_find_by_resume_and_id),
		T(test_rotate_resume),
		T(test_find_id_after_table_grows),
		T(test_release_closes_ports),
		T(test_detach_ttl_expires_once),
		T(test_attach_before_expiry_keeps_lease),
		T(test_release_inside_on_expire_is_harmless),
		T(test_cursor_does_not_reuse_released_port),
		T(test_describe_fills_message),
		T(test_describe_host_defaults_to_bind_address),
		T(test_data_slot_and_foreach),
		T(test_invalid_arguments),
		T(test_table_free_closes_everything_without_expire),
		T(test_accept_emfile_pauses_listener),
		T(test_ipv6_loopback),
		T(test_adopt_keeps_id_token_ports_and_listeners),
		T(test_adopt_refuses_what_does_not_fit_and_closes_the_sockets),
		T(test_grace_time_left_is_kept_and_restarted),
#undef T
	};

	sr_log_set_level(SR_LOG_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
