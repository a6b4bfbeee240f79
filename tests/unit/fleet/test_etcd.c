/* fleet/etcd against a real etcd (tests/support/ts_etcd.h) on loopback:
 * what the fleet's lease table relies on. Byte-exact keys and values,
 * prefix ranges, a create-if-absent transaction that exactly one of two
 * racing clients wins, leases kept alive and lost, watches that deliver
 * every change once and in order across etcd pausing and restarting, the
 * compacted-watch hand-over, mutual TLS (and a wrong CA failing as TLS),
 * and a dead first endpoint. Answers etcd never sends are in
 * test_etcd_answers.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <openssl/evp.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "fleet/etcd.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_etcd.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pki.h"
#include "tests/support/ts_sys.h"

#define WAIT_MS 10000
#define MAX_KVS 8
#define MAX_EVENTS 128

/* The group's etcd, shared by the tests that do not stop or pause it; each
 * uses its own keys. Tests that do get their own in per-test setup. */
static struct ts_etcd shared;

struct env {
	struct event_base *base;
	struct ts_etcd own; /* zeroed unless the test started its own */
	struct ts_etcd *etcd;
	struct etcd *c, *c2;
};

/* ---- recording answers --------------------------------------------------- */

struct kvcopy {
	char key[64], value[300];
	size_t key_len, value_len;
	int64_t create, mod, version, lease;
};

struct got {
	int calls, err, code;
	char msg[600];
	int64_t revision, count, deleted, lease, ttl;
	int more, succeeded, type;
	size_t nkvs, nops;
	struct kvcopy kv[MAX_KVS];
	int op_type[MAX_KVS];
	size_t op_nkvs[MAX_KVS];
	struct kvcopy op_kv0[MAX_KVS];
};

static void copy_kv(struct kvcopy *d, const struct etcd_kv *s)
{
	assert_true(s->key_len < sizeof(d->key) && s->value_len < sizeof(d->value));
	memcpy(d->key, s->key,
	       s->key_len + 1); /* the NUL that follows is part of the contract */
	memcpy(d->value, s->value, s->value_len + 1);
	d->key_len = s->key_len;
	d->value_len = s->value_len;
	d->create = s->create_revision;
	d->mod = s->mod_revision;
	d->version = s->version;
	d->lease = s->lease;
}

static void on_result(int err, const struct etcd_result *r, void *arg)
{
	struct got *g = arg;

	g->calls++;
	g->err = err;
	g->code = r->code;
	snprintf(g->msg, sizeof(g->msg), "%s", r->msg);
	if (err)
		return;
	g->revision = r->revision;
	g->count = r->count;
	g->deleted = r->deleted;
	g->lease = r->lease;
	g->ttl = r->ttl;
	g->more = r->more;
	g->succeeded = r->succeeded;
	g->type = r->type;
	g->nkvs = r->nkvs;
	for (size_t i = 0; i < r->nkvs && i < MAX_KVS; i++)
		copy_kv(&g->kv[i], &r->kvs[i]);
	g->nops = r->nops;
	for (size_t i = 0; i < r->nops && i < MAX_KVS; i++) {
		g->op_type[i] = r->ops[i].type;
		g->op_nkvs[i] = r->ops[i].nkvs;
		if (r->ops[i].nkvs)
			copy_kv(&g->op_kv0[i], &r->ops[i].kvs[0]);
	}
}

static void wait_one(struct env *e, struct got *g)
{
	assert_true(ts_loop_until_count(e->base, &g->calls, 1, WAIT_MS));
	assert_int_equal(g->calls, 1);
}

/* One operation to its end; the test fails if it could not start. */
static void kv(struct env *e, struct etcd *c, const struct etcd_req *rq, struct got *g)
{
	char err[256];

	memset(g, 0, sizeof(*g));
	if (!etcd_kv(c, rq, on_result, g, err, sizeof(err)))
		fail_msg("etcd_kv: %s", err);
	assert_int_equal(g->calls, 0); /* never from inside the call */
	wait_one(e, g);
}

static void put(struct env *e, struct etcd *c, const char *key, const char *value,
		int64_t lease, struct got *g)
{
	struct etcd_req rq = {.type = ETCD_PUT,
			      .key = key,
			      .key_len = strlen(key),
			      .value = value,
			      .value_len = strlen(value),
			      .lease = lease};

	kv(e, c, &rq, g);
	if (g->err)
		fail_msg("put %s: %s", key, g->msg);
}

static void get(struct env *e, struct etcd *c, const char *key, int prefix, struct got *g)
{
	struct etcd_req rq = {
	    .type = ETCD_RANGE, .key = key, .key_len = strlen(key), .prefix = prefix};

	kv(e, c, &rq, g);
	if (g->err)
		fail_msg("range %s: %s", key, g->msg);
}

static struct etcd *client(struct env *e, const char *const *eps, size_t n, const char *ca,
			   const char *cert, const char *key)
{
	struct etcd_opts o = {.endpoints = eps,
			      .nendpoints = n,
			      .ca_file = ca,
			      .cert_file = cert,
			      .key_file = key,
			      .timeout_ms = 3000};
	char err[256];
	struct etcd *c = etcd_new(e->base, &o, err, sizeof(err));

	if (!c)
		fail_msg("etcd_new: %s", err);
	return c;
}

static struct etcd *client_of(struct env *e, const struct ts_etcd *t)
{
	const char *eps[] = {t->url};

	return t->o.tls ? client(e, eps, 1, t->ca, t->client_cert, t->client_key)
			: client(e, eps, 1, NULL, NULL, NULL);
}

/* ---- setup --------------------------------------------------------------- */

static int group_setup(void **state)
{
	(void)state;
	ts_etcd_start(&shared, "etcd-shared", NULL);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	ts_etcd_stop(&shared);
	return 0;
}

static struct env *env_new(void)
{
	struct env *e = calloc(1, sizeof(*e));

	assert_non_null(e);
	e->base = event_base_new();
	assert_non_null(e->base);
	return e;
}

/* On the shared etcd. */
static int setup(void **state)
{
	struct env *e = env_new();

	e->etcd = &shared;
	e->c = client_of(e, e->etcd);
	*state = e;
	return 0;
}

static int setup_own(void **state)
{
	struct env *e = env_new();

	*state = e;
	ts_etcd_start(&e->own, "etcd-own", NULL);
	e->etcd = &e->own;
	e->c = client_of(e, e->etcd);
	return 0;
}

/* The test starts its etcd itself. */
static int setup_bare(void **state)
{
	*state = env_new();
	return 0;
}

static int setup_own_tls(void **state)
{
	struct env *e = env_new();
	struct ts_etcd_opts o = {.tls = 1};

	*state = e;
	ts_etcd_start(&e->own, "etcd-tls", &o);
	e->etcd = &e->own;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	etcd_free(e->c);
	etcd_free(e->c2);
	ts_etcd_stop(&e->own); /* also when the test failed half-way */
	event_base_free(e->base);
	free(e);
	return 0;
}

/* ---- keys ---------------------------------------------------------------- */

static void test_put_range_delete_binary(void **state)
{
	struct env *e = *state;
	static const char key[] = "bin/\x00\xff\n\"k";
	char value[256];
	struct etcd_req rq = {.type = ETCD_PUT,
			      .key = key,
			      .key_len = sizeof(key) - 1,
			      .value = value,
			      .value_len = sizeof(value)};
	struct got g, r;

	for (int i = 0; i < 256; i++)
		value[i] = (char)i; /* every byte, NUL first */
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_string_equal(g.msg, "");
	assert_true(g.revision > 0);
	assert_int_equal(g.type, ETCD_PUT);

	rq = (struct etcd_req){.type = ETCD_RANGE, .key = key, .key_len = sizeof(key) - 1};
	kv(e, e->c, &rq, &r);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.nkvs, 1);
	assert_int_equal(r.count, 1);
	assert_int_equal(r.kv[0].key_len, sizeof(key) - 1);
	assert_memory_equal(r.kv[0].key, key, sizeof(key) - 1);
	assert_int_equal(r.kv[0].key[sizeof(key) - 1], '\0');
	assert_int_equal(r.kv[0].value_len, sizeof(value));
	assert_memory_equal(r.kv[0].value, value, sizeof(value));
	assert_int_equal(r.kv[0].create, g.revision);
	assert_int_equal(r.kv[0].mod, g.revision);
	assert_int_equal(r.kv[0].version, 1);
	assert_int_equal(r.kv[0].lease, 0);

	/* an empty value is a value */
	rq = (struct etcd_req){.type = ETCD_PUT, .key = key, .key_len = sizeof(key) - 1};
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	rq = (struct etcd_req){.type = ETCD_RANGE, .key = key, .key_len = sizeof(key) - 1};
	kv(e, e->c, &rq, &r);
	assert_int_equal(r.nkvs, 1);
	assert_int_equal(r.kv[0].value_len, 0);
	assert_int_equal(r.kv[0].version, 2);
	assert_int_equal(r.kv[0].mod, g.revision);

	rq = (struct etcd_req){.type = ETCD_DELETE, .key = key, .key_len = sizeof(key) - 1};
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.deleted, 1);
	assert_int_equal(g.type, ETCD_DELETE);
	rq = (struct etcd_req){.type = ETCD_RANGE, .key = key, .key_len = sizeof(key) - 1};
	kv(e, e->c, &rq, &r);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.nkvs, 0);
	assert_int_equal(r.count, 0);
	assert_true(r.revision >= g.revision);
}

/* The fleet asks whether its mirror is behind etcd with a range of the
 * keys changed since the last revision it has, one key, no values. etcd
 * filters by revision before the limit; its count is of the whole range. */
static void test_range_of_keys_changed_since(void **state)
{
	struct env *e = *state;
	struct got g;
	int64_t seen;
	struct etcd_req rq = {.type = ETCD_RANGE,
			      .key = "chg/",
			      .key_len = 4,
			      .prefix = 1,
			      .limit = 1,
			      .keys_only = 1};

	put(e, e->c, "chg/a", "old", 0, &g);
	put(e, e->c, "chg/b", "old", 0, &g);
	seen = g.revision;
	put(e, e->c, "other", "x", 0, &g); /* outside the range */
	rq.min_mod_revision = seen + 1;
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.nkvs, 0);
	assert_int_equal(g.count, 2);

	put(e, e->c, "chg/c", "new value", 0, &g);
	put(e, e->c, "chg/d", "new value", 0, &g);
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.nkvs, 1);
	assert_true(g.more);
	assert_string_equal(g.kv[0].key, "chg/c");
	assert_true(g.kv[0].mod > seen);
	assert_int_equal(g.kv[0].value_len, 0); /* keys only */

	rq.min_mod_revision = 0; /* every key */
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.nkvs, 1);
	assert_string_equal(g.kv[0].key, "chg/a");

	rq.min_mod_revision = -1;
	assert_null(etcd_kv(e->c, &rq, NULL, NULL, g.msg, sizeof(g.msg)));
}

static void test_prefix_range_limit_and_delete(void **state)
{
	struct env *e = *state;
	struct got g;
	/* a prefix ending in 0xff: its range end carries into the byte before */
	static const char *const in[] = {"pfx\xff/a", "pfx\xff/b", "pfx\xff\xff"};
	static const char *const out[] = {"pfx", "pfx\xfe", "pfy"};
	struct etcd_req rq = {
	    .type = ETCD_RANGE, .key = "pfx\xff", .key_len = 4, .prefix = 1, .limit = 2};

	for (size_t i = 0; i < 3; i++) {
		put(e, e->c, in[i], "in", 0, &g);
		put(e, e->c, out[i], "out", 0, &g);
	}
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.nkvs, 2);
	assert_int_equal(g.count, 3);
	assert_true(g.more);
	assert_string_equal(g.kv[0].key, "pfx\xff/a"); /* in key order */
	assert_string_equal(g.kv[1].key, "pfx\xff/b");

	rq.limit = 0;
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.nkvs, 3);
	assert_false(g.more);
	for (size_t i = 0; i < 3; i++)
		assert_string_equal(g.kv[i].value, "in");

	rq.type = ETCD_DELETE;
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.deleted, 3);
	for (size_t i = 0; i < 3; i++) {
		get(e, e->c, out[i], 0, &g);
		assert_int_equal(g.nkvs, 1);
	}
}

/* The fleet reads its table in pages: each begins after the last key of the
 * one before ("from": that key and a NUL byte), all at the first page's
 * revision, so keys written in between are not seen and none is seen twice. */
static void test_prefix_read_in_pages_at_one_revision(void **state)
{
	struct env *e = *state;
	struct got g, w;
	/* "pg/a\x01" sorts right after "pg/a": the next page must not skip it */
	static const char *const keys[] = {"pg/a", "pg/a\x01", "pg/b", "pg/c", "pg/d"};
	char from[64], seen[8][64];
	size_t nseen = 0, pages = 0;
	struct etcd_req rq = {.type = ETCD_RANGE, .key = "pg/", .key_len = 3, .prefix = 1,
			      .limit = 2};
	struct etcd_req del = {.type = ETCD_DELETE, .key = "pg/c", .key_len = 4};

	for (size_t i = 0; i < 5; i++)
		put(e, e->c, keys[i], "v", 0, &w);
	put(e, e->c, "ph", "outside", 0, &w);
	kv(e, e->c, &rq, &g);
	assert_int_equal(g.err, 0);
	rq.revision = g.revision;
	for (;;) {
		pages++;
		for (size_t i = 0; i < g.nkvs && nseen < 8; i++)
			snprintf(seen[nseen++], sizeof(seen[0]), "%s", g.kv[i].key);
		if (!g.more)
			break;
		if (pages == 1) {
			/* after the first page: a key added, one deleted */
			put(e, e->c, "pg/bb", "new", 0, &w);
			kv(e, e->c, &del, &w);
			assert_int_equal(w.deleted, 1);
		}
		assert_true(g.kv[g.nkvs - 1].key_len < sizeof(from));
		memcpy(from, g.kv[g.nkvs - 1].key, g.kv[g.nkvs - 1].key_len);
		from[g.kv[g.nkvs - 1].key_len] = '\0';
		rq.from = from;
		rq.from_len = g.kv[g.nkvs - 1].key_len + 1;
		kv(e, e->c, &rq, &g);
		assert_int_equal(g.err, 0);
		assert_true(pages < 5);
	}
	assert_int_equal(pages, 3);
	assert_int_equal(nseen, 5);
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(seen[i], keys[i]);

	/* from must lie in the prefix, and only a prefix's range takes it */
	rq.from = "ph";
	rq.from_len = 2;
	assert_null(etcd_kv(e->c, &rq, NULL, NULL, g.msg, sizeof(g.msg)));
	rq.from = "pg/a";
	rq.from_len = 4;
	rq.prefix = 0;
	assert_null(etcd_kv(e->c, &rq, NULL, NULL, g.msg, sizeof(g.msg)));
}

/* The fleet grants a port with this: create the key unless someone has. */
struct racer {
	struct got g;
	char value[8];
};

static void start_create_if_absent(struct etcd *c, const char *key, struct racer *r)
{
	struct etcd_cmp cmp = {.key = key,
			       .key_len = strlen(key),
			       .target = ETCD_CMP_CREATE,
			       .op = ETCD_EQ,
			       .number = 0};
	struct etcd_req succ[2] = {
	    {.type = ETCD_PUT,
	     .key = key,
	     .key_len = strlen(key),
	     .value = r->value,
	     .value_len = strlen(r->value)},
	    {.type = ETCD_RANGE, .key = key, .key_len = strlen(key)},
	};
	struct etcd_req fail[1] = {{.type = ETCD_RANGE, .key = key, .key_len = strlen(key)}};
	char err[256];

	memset(&r->g, 0, sizeof(r->g));
	if (!etcd_txn(c, &cmp, 1, succ, 2, fail, 1, on_result, &r->g, err, sizeof(err)))
		fail_msg("etcd_txn: %s", err);
}

static void test_txn_create_if_absent_race(void **state)
{
	struct env *e = *state;
	struct racer a = {.value = "A"}, b = {.value = "B"};
	int wins_a = 0, wins_b = 0;

	e->c2 = client_of(e, e->etcd); /* its own connections */
	for (int round = 0; round < 40; round++) {
		char key[32];
		struct racer *win, *lose;

		snprintf(key, sizeof(key), "race/%d", round);
		start_create_if_absent(e->c, key, &a);
		start_create_if_absent(e->c2, key, &b);
		wait_one(e, &a.g);
		wait_one(e, &b.g);
		assert_int_equal(a.g.err, 0);
		assert_int_equal(b.g.err, 0);
		if (a.g.succeeded + b.g.succeeded != 1)
			fail_msg("round %d: %d transactions created %s", round,
				 a.g.succeeded + b.g.succeeded, key);
		win = a.g.succeeded ? &a : &b;
		lose = a.g.succeeded ? &b : &a;
		wins_a += a.g.succeeded;
		wins_b += b.g.succeeded;
		/* the winner's branch: put then its own range */
		assert_int_equal(win->g.nops, 2);
		assert_int_equal(win->g.op_type[0], ETCD_PUT);
		assert_int_equal(win->g.op_type[1], ETCD_RANGE);
		assert_string_equal(win->g.op_kv0[1].value, win->value);
		/* the loser sees the winner's key */
		assert_int_equal(lose->g.nops, 1);
		assert_int_equal(lose->g.op_type[0], ETCD_RANGE);
		assert_int_equal(lose->g.op_nkvs[0], 1);
		assert_string_equal(lose->g.op_kv0[0].value, win->value);
		assert_int_equal(lose->g.op_kv0[0].create, win->g.revision);
	}
	print_message("race: A won %d, B won %d of 40\n", wins_a, wins_b);
}

static void txn1(struct env *e, const struct etcd_cmp *cmp, struct got *g)
{
	struct etcd_req rq = {.type = ETCD_RANGE, .key = cmp->key, .key_len = cmp->key_len};
	char err[256];

	memset(g, 0, sizeof(*g));
	if (!etcd_txn(e->c, cmp, 1, &rq, 1, NULL, 0, on_result, g, err, sizeof(err)))
		fail_msg("etcd_txn: %s", err);
	wait_one(e, g);
	assert_int_equal(g->err, 0);
	assert_int_equal(g->nops, g->succeeded ? 1 : 0);
}

static void test_txn_compares(void **state)
{
	struct env *e = *state;
	struct got p, g, lease;
	const char *k = "cmp/k";
	struct etcd_cmp c = {.key = k, .key_len = strlen(k)};
	char err[256];
	struct etcd_req del = {.type = ETCD_DELETE, .key = k, .key_len = strlen(k)};

	put(e, e->c, k, "v1", 0, &p);
	put(e, e->c, k, "v2", 0, &p); /* version 2, mod_revision p.revision */

	c.target = ETCD_CMP_VALUE;
	c.op = ETCD_EQ;
	c.value = "v2";
	c.value_len = 2;
	txn1(e, &c, &g);
	assert_true(g.succeeded);
	c.op = ETCD_NE;
	txn1(e, &c, &g);
	assert_false(g.succeeded);
	c.value = "v1";
	txn1(e, &c, &g);
	assert_true(g.succeeded);

	c.target = ETCD_CMP_MOD;
	c.op = ETCD_EQ;
	c.number = p.revision;
	txn1(e, &c, &g);
	assert_true(g.succeeded);
	c.op = ETCD_LT;
	txn1(e, &c, &g);
	assert_false(g.succeeded);
	c.op = ETCD_GT;
	c.number = p.revision - 1;
	txn1(e, &c, &g);
	assert_true(g.succeeded);

	c.target = ETCD_CMP_VERSION;
	c.op = ETCD_EQ;
	c.number = 2;
	txn1(e, &c, &g);
	assert_true(g.succeeded);
	c.op = ETCD_LT;
	txn1(e, &c, &g);
	assert_false(g.succeeded);

	c.target = ETCD_CMP_CREATE;
	c.op = ETCD_EQ;
	c.number = 0;
	txn1(e, &c, &g);
	assert_false(g.succeeded);

	/* lease compare: the key follows the lease it was put with */
	memset(&lease, 0, sizeof(lease));
	assert_non_null(etcd_lease_grant(e->c, 30, on_result, &lease, err, sizeof(err)));
	wait_one(e, &lease);
	assert_int_equal(lease.err, 0);
	put(e, e->c, k, "v3", lease.lease, &p);
	c.target = ETCD_CMP_LEASE;
	c.op = ETCD_EQ;
	c.number = lease.lease;
	txn1(e, &c, &g);
	assert_true(g.succeeded);
	assert_int_equal(g.op_kv0[0].lease, lease.lease);
	c.number = lease.lease + 1;
	txn1(e, &c, &g);
	assert_false(g.succeeded);

	/* a delete inside a transaction reports its count */
	c.target = ETCD_CMP_VERSION;
	c.op = ETCD_GT;
	c.number = 0;
	memset(&g, 0, sizeof(g));
	assert_non_null(
	    etcd_txn(e->c, &c, 1, &del, 1, NULL, 0, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_true(g.succeeded);
	assert_int_equal(g.op_type[0], ETCD_DELETE);
	memset(&lease, 0, sizeof(lease));
	get(e, e->c, k, 0, &g);
	assert_int_equal(g.nkvs, 0);
}

/* ---- leases -------------------------------------------------------------- */

struct lost_rec {
	int calls, err;
	char msg[600];
	struct etcd_keeper **free_me;
};

static void on_lost(int err, const char *msg, void *arg)
{
	struct lost_rec *l = arg;

	l->calls++;
	l->err = err;
	snprintf(l->msg, sizeof(l->msg), "%s", msg);
	if (l->free_me) { /* from its own callback */
		etcd_keeper_free(*l->free_me);
		*l->free_me = NULL;
	}
}

static int64_t grant(struct env *e, struct etcd *c, int64_t ttl, int64_t *granted)
{
	struct got g;
	char err[256];

	memset(&g, 0, sizeof(g));
	if (!etcd_lease_grant(c, ttl, on_result, &g, err, sizeof(err)))
		fail_msg("grant: %s", err);
	wait_one(e, &g);
	if (g.err)
		fail_msg("grant: %s", g.msg);
	assert_true(g.lease > 0);
	assert_true(g.ttl >= ttl);
	*granted = g.ttl;
	return g.lease;
}

static void test_lease_kept_alive_then_expires(void **state)
{
	struct env *e = *state;
	struct lost_rec lost = {0};
	struct got g;
	int64_t ttl, lease = grant(e, e->c, 2, &ttl);
	struct etcd_keeper *k;
	uint64_t stopped;
	char err[256];

	put(e, e->c, "lease/kept", "x", lease, &g);
	k = etcd_keeper_new(e->c, lease, ttl, on_lost, &lost);
	assert_non_null(k);
	ts_loop_run_for(e->base, (int)(ttl * 1000 * 2 + 500)); /* two TTLs and more */
	assert_int_equal(lost.calls, 0);
	get(e, e->c, "lease/kept", 0, &g);
	assert_int_equal(g.nkvs, 1);
	assert_int_equal(g.kv[0].lease, lease);

	etcd_keeper_free(k);
	stopped = sr_now_us();
	get(e, e->c, "lease/kept", 0, &g);
	assert_int_equal(g.nkvs, 1);
	/* etcd checks expiry every 500 ms: gone within TTL + 3 s */
	while (g.nkvs && sr_now_us() - stopped < (uint64_t)(ttl + 3) * 1000000u) {
		ts_loop_run_for(e->base, 200);
		get(e, e->c, "lease/kept", 0, &g);
	}
	assert_int_equal(g.nkvs, 0);
	print_message("key gone %.1f s after the keepalives stopped (TTL %" PRId64 " s)\n",
		      (double)(sr_now_us() - stopped) / 1e6, ttl);
	/* a keepalive now: the lease is gone, TTL 0, no error */
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_keepalive(e->c, lease, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.ttl, 0);
	assert_int_equal(lost.calls, 0);
}

static void test_revoke_deletes_keys_and_keeper_sees_it(void **state)
{
	struct env *e = *state;
	struct lost_rec lost = {0};
	struct got g;
	int64_t ttl, lease = grant(e, e->c, 60, &ttl);
	struct etcd_keeper *k;
	char err[256];

	put(e, e->c, "lease/rev/a", "x", lease, &g);
	put(e, e->c, "lease/rev/b", "y", lease, &g);
	k = etcd_keeper_new(e->c, lease, ttl, on_lost, &lost);
	assert_non_null(k);
	lost.free_me = &k;

	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_revoke(e->c, lease, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, 0);
	get(e, e->c, "lease/rev/", 1, &g);
	assert_int_equal(g.nkvs, 0);

	/* revoking it again: etcd no longer knows the lease */
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_revoke(e->c, lease, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, SR_ENOTFOUND);
	assert_int_equal(g.code, 5);
	assert_contains(g.msg, "lease not found");

	/* (the keeper's first keepalive may have raced the revoke and found
	 * the lease gone already; then it freed itself) */
	etcd_keeper_free(k);
	memset(&lost, 0, sizeof(lost));
	lease = grant(e, e->c, 3, &ttl);
	k = etcd_keeper_new(e->c, lease, ttl, on_lost, &lost);
	lost.free_me = &k; /* freed from its own callback */
	ts_loop_run_for(e->base, 100);
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_revoke(e->c, lease, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_true(ts_loop_until_count(e->base, &lost.calls, 1, (int)ttl * 1000));
	assert_int_equal(lost.err, SR_ENOTFOUND);
	assert_contains(lost.msg, "is gone");
	assert_null(k);
	ts_loop_run_for(e->base, 1500);
	assert_int_equal(lost.calls, 1);
}

/* Unreachable past the TTL: lost with SR_ETIMEDOUT, no sooner. */
static void test_keeper_lost_when_etcd_paused(void **state)
{
	struct env *e = *state;
	struct lost_rec lost = {0};
	int64_t ttl, lease = grant(e, e->c, 2, &ttl);
	struct etcd_keeper *k = etcd_keeper_new(e->c, lease, ttl, on_lost, &lost);
	uint64_t t0;

	assert_non_null(k);
	ts_loop_run_for(e->base, 1000);
	ts_etcd_pause(e->etcd, 1);
	t0 = sr_now_us();
	assert_true(ts_loop_until_count(e->base, &lost.calls, 1, (int)ttl * 1000 + 2000));
	ts_etcd_pause(e->etcd, 0);
	assert_int_equal(lost.err, SR_ETIMEDOUT);
	assert_contains(lost.msg, "within its TTL");
	/* the last success was at most ttl/3 before the pause */
	assert_true(sr_now_us() - t0 > (uint64_t)ttl * 1000000u * 2 / 3 - 100000u);
	etcd_keeper_free(k);
}

/* ---- watches ------------------------------------------------------------- */

struct evrec {
	int type;
	char key[32], value[32];
	int64_t mod, prev_mod;
	int has_prev, call;
};

struct watchlog {
	int n, calls, progress, errors, compacted, last_err;
	int64_t compact_rev, last_rev;
	struct evrec ev[MAX_EVENTS];
	char last_msg[600];
	struct etcd_watch **free_on_compacted;
};

static void on_events(const struct etcd_event *ev, size_t n, int64_t revision, void *arg)
{
	struct watchlog *l = arg;

	if (n == 0) {
		l->progress++;
		l->last_rev = revision;
		return;
	}
	l->calls++;
	for (size_t i = 0; i < n; i++) {
		struct evrec *r;
		assert_true(l->n < MAX_EVENTS);
		r = &l->ev[l->n++];
		r->type = ev[i].type;
		snprintf(r->key, sizeof(r->key), "%s", ev[i].kv.key);
		snprintf(r->value, sizeof(r->value), "%s", ev[i].kv.value);
		r->mod = ev[i].kv.mod_revision;
		r->has_prev = ev[i].prev != NULL;
		r->prev_mod = ev[i].prev ? ev[i].prev->mod_revision : 0;
		r->call = l->calls;
	}
}

static void on_compacted(int64_t rev, void *arg)
{
	struct watchlog *l = arg;

	l->compacted++;
	l->compact_rev = rev;
	if (l->free_on_compacted) {
		etcd_watch_free(*l->free_on_compacted);
		*l->free_on_compacted = NULL;
	}
}

static void on_watch_err(int err, const char *msg, void *arg)
{
	struct watchlog *l = arg;

	l->errors++;
	l->last_err = err;
	snprintf(l->last_msg, sizeof(l->last_msg), "%s", msg);
}

static struct etcd_watch *watch(struct etcd *c, const char *prefix, int64_t start,
				struct watchlog *l, long idle_ms)
{
	struct etcd_watch_opts o = {.key = prefix,
				    .key_len = strlen(prefix),
				    .prefix = 1,
				    .start_revision = start,
				    .prev_kv = 1,
				    .idle_ms = idle_ms,
				    .events = on_events,
				    .compacted = on_compacted,
				    .error = on_watch_err,
				    .arg = l};
	char err[256];
	struct etcd_watch *w = etcd_watch_new(c, &o, err, sizeof(err));

	if (!w)
		fail_msg("etcd_watch_new: %s", err);
	return w;
}

/* The store's revision now: a watch from the next one misses nothing that
 * is written after this returns (a watch from 0 starts whenever etcd
 * creates it, which may be after a put made meanwhile). */
static int64_t rev_now(struct env *e, struct etcd *c)
{
	struct got g;

	get(e, c, "-", 0, &g);
	assert_true(g.revision > 0);
	return g.revision;
}

/* The watch delivers a put made now. */
static void watch_ready(struct env *e, struct watchlog *l, const char *key)
{
	struct got g;
	int want = l->n + 1;

	put(e, e->c, key, "ready", 0, &g);
	assert_true(ts_loop_until_count(e->base, &l->n, want, WAIT_MS));
}

static void test_watch_puts_and_deletes_in_order(void **state)
{
	struct env *e = *state;
	struct watchlog l = {0};
	struct etcd_watch *w = watch(e->c, "wo/", rev_now(e, e->c) + 1, &l, 0);
	struct got g, p1, p2, d;
	struct etcd_req two[2] = {
	    {.type = ETCD_PUT, .key = "wo/b", .key_len = 4, .value = "b", .value_len = 1},
	    {.type = ETCD_PUT, .key = "wo/c", .key_len = 4, .value = "c", .value_len = 1},
	};
	struct etcd_req del = {.type = ETCD_DELETE, .key = "wo/a", .key_len = 4};
	char err[256];

	assert_int_equal(l.calls, 0);
	watch_ready(e, &l, "wo/ready");
	put(e, e->c, "wo/a", "1", 0, &p1);
	put(e, e->c, "outside", "1", 0, &g); /* not under the prefix */
	put(e, e->c, "wo/a", "2", 0, &p2);
	kv(e, e->c, &del, &d);
	memset(&g, 0, sizeof(g));
	assert_non_null(
	    etcd_txn(e->c, NULL, 0, two, 2, NULL, 0, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_true(ts_loop_until_count(e->base, &l.n, 6, WAIT_MS));
	ts_loop_run_for(e->base, 100);
	assert_int_equal(l.n, 6);

	assert_int_equal(l.ev[1].type, ETCD_EV_PUT);
	assert_string_equal(l.ev[1].key, "wo/a");
	assert_string_equal(l.ev[1].value, "1");
	assert_int_equal(l.ev[1].mod, p1.revision);
	assert_false(l.ev[1].has_prev);
	assert_string_equal(l.ev[2].value, "2");
	assert_int_equal(l.ev[2].mod, p2.revision);
	assert_true(l.ev[2].has_prev);
	assert_int_equal(l.ev[2].prev_mod, p1.revision);
	assert_int_equal(l.ev[3].type, ETCD_EV_DELETE);
	assert_string_equal(l.ev[3].key, "wo/a");
	assert_int_equal(l.ev[3].mod, d.revision);
	assert_int_equal(l.ev[3].prev_mod, p2.revision);
	/* one transaction: one revision, one call */
	assert_string_equal(l.ev[4].key, "wo/b");
	assert_string_equal(l.ev[5].key, "wo/c");
	assert_int_equal(l.ev[4].mod, g.revision);
	assert_int_equal(l.ev[5].mod, g.revision);
	assert_int_equal(l.ev[4].call, l.ev[5].call);
	assert_int_equal(l.errors, 0);
	etcd_watch_free(w);
}

static void test_watch_from_a_past_revision(void **state)
{
	struct env *e = *state;
	struct watchlog l = {0};
	struct got first, g;
	struct etcd_watch *w;

	put(e, e->c, "wp/1", "a", 0, &first);
	put(e, e->c, "wp/2", "b", 0, &g);
	put(e, e->c, "wp/1", "c", 0, &g);
	w = watch(e->c, "wp/", first.revision + 1, &l, 0);
	assert_true(ts_loop_until_count(e->base, &l.n, 2, WAIT_MS));
	ts_loop_run_for(e->base, 100);
	assert_int_equal(l.n, 2); /* the first put is before the start */
	assert_string_equal(l.ev[0].key, "wp/2");
	assert_string_equal(l.ev[1].value, "c");
	assert_int_equal(l.ev[1].mod, g.revision);
	etcd_watch_free(w);
}

/* The writer puts keys 0..n-1 of the prefix; every event must arrive once,
 * in revision order, with the revision its put got. */
static void check_sequence(const struct watchlog *l, const int64_t *revs, int n, int first)
{
	assert_int_equal(l->n - first, n);
	for (int i = 0; i < n; i++) {
		const struct evrec *r = &l->ev[first + i];
		char want[16];

		snprintf(want, sizeof(want), "%d", i);
		if (r->mod != revs[i] || strcmp(r->value, want) != 0)
			fail_msg("event %d: value %s revision %" PRId64 ", want %s at %" PRId64,
				 i, r->value, r->mod, want, revs[i]);
	}
}

/* A put from outside the loop: while it blocks, no watch can reconnect, so
 * the watch must find these changes by resuming from the right revision. */
static int64_t put_outside(struct env *e, const char *key, const char *value)
{
	char json[256], out[512], k64[64], v64[64];
	const char *rev;
	long long r;

	EVP_EncodeBlock((unsigned char *)k64, (const unsigned char *)key, (int)strlen(key));
	EVP_EncodeBlock((unsigned char *)v64, (const unsigned char *)value, (int)strlen(value));
	snprintf(json, sizeof(json), "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
	if (ts_etcd_post(e->etcd, "/v3/kv/put", json, out, sizeof(out)) != 200)
		fail_msg("put %s from outside: %s", key, out);
	rev = strstr(out, "\"revision\":\"");
	if (!rev || sscanf(rev + 12, "%lld", &r) != 1)
		fail_msg("put %s from outside: no revision in %s", key, out);
	return r;
}

static void put_n(struct env *e, const char *prefix, int from, int to, int64_t *revs,
		  int outside)
{
	for (int i = from; i < to; i++) {
		char key[32], value[16];
		struct got g;

		snprintf(key, sizeof(key), "%s%d", prefix, i);
		snprintf(value, sizeof(value), "%d", i);
		if (outside) {
			revs[i] = put_outside(e, key, value);
			continue;
		}
		put(e, e->c, key, value, 0, &g);
		revs[i] = g.revision;
	}
}

static void test_watch_survives_a_pause(void **state)
{
	struct env *e = *state;
	struct watchlog l = {0};
	/* idle_ms below the pause: the stream is abandoned and resumed while
	 * etcd is stopped, so the resume path runs, not just a slow stream */
	struct etcd_watch *w;
	int64_t revs[10];

	e->c2 = client_of(e, e->etcd);
	w = watch(e->c2, "wz/", rev_now(e, e->c) + 1, &l, 700);
	watch_ready(e, &l, "wz/ready");
	put_n(e, "wz/k", 0, 5, revs, 0);
	assert_true(ts_loop_until_count(e->base, &l.n, 6, WAIT_MS));
	ts_etcd_pause(e->etcd, 1);
	ts_loop_run_for(e->base, 2000);
	ts_etcd_pause(e->etcd, 0);
	put_n(e, "wz/k", 5, 10, revs, 1);
	assert_true(ts_loop_until_count(e->base, &l.n, 11, WAIT_MS));
	ts_loop_run_for(e->base, 300);
	check_sequence(&l, revs, 10, 1);
	assert_true(l.errors >= 1);
	assert_int_equal(l.last_err, SR_ETIMEDOUT);
	etcd_watch_free(w);
}

static void test_watch_survives_a_restart(void **state)
{
	struct env *e = *state;
	struct watchlog l = {0};
	struct etcd_watch *w;
	int64_t revs[12];

	e->c2 = client_of(e, e->etcd);
	w = watch(e->c2, "wr/", rev_now(e, e->c) + 1, &l, 0);
	watch_ready(e, &l, "wr/ready");
	put_n(e, "wr/k", 0, 4, revs, 0);
	assert_true(ts_loop_until_count(e->base, &l.n, 5, WAIT_MS));
	ts_etcd_kill(e->etcd);
	ts_loop_run_for(e->base, 300); /* the watch finds out and retries, in vain */
	ts_etcd_restart(e->etcd);
	/* written before the watch can be back: it must still see them */
	put_n(e, "wr/k", 4, 12, revs, 1);
	assert_true(ts_loop_until_count(e->base, &l.n, 13, WAIT_MS));
	ts_loop_run_for(e->base, 300);
	check_sequence(&l, revs, 12, 1);
	assert_true(l.errors >= 1);
	etcd_watch_free(w);
}

static void test_compacted_watch_tells_owner(void **state)
{
	struct env *e = *state;
	struct watchlog l = {0}, l2 = {0};
	struct got first, g;
	struct etcd_watch *w, *w2;
	char json[128], out[512];

	put(e, e->c, "wc/k", "0", 0, &first);
	for (int i = 1; i < 5; i++)
		put(e, e->c, "wc/k", "x", 0, &g);
	snprintf(json, sizeof(json), "{\"revision\":\"%" PRId64 "\",\"physical\":true}",
		 g.revision);
	if (ts_etcd_post(e->etcd, "/v3/kv/compaction", json, out, sizeof(out)) != 200)
		fail_msg("compaction: %s", out);

	w = watch(e->c, "wc/", first.revision, &l, 0);
	l.free_on_compacted = &w; /* the owner frees it from the callback */
	assert_true(ts_loop_until_count(e->base, &l.compacted, 1, WAIT_MS));
	assert_int_equal(l.compact_rev, g.revision);
	assert_int_equal(l.n, 0);
	assert_null(w);

	/* reload, then watch from the reload's revision on */
	get(e, e->c, "wc/", 1, &g);
	assert_int_equal(g.nkvs, 1);
	w2 = watch(e->c, "wc/", g.revision + 1, &l2, 0);
	put(e, e->c, "wc/k", "after", 0, &first);
	assert_true(ts_loop_until_count(e->base, &l2.n, 1, WAIT_MS));
	assert_string_equal(l2.ev[0].value, "after");
	assert_int_equal(l2.compacted, 0);
	ts_loop_run_for(e->base, 200);
	assert_int_equal(l.compacted, 1);
	etcd_watch_free(w2);
}

static void test_progress_notifications(void **state)
{
	struct env *e = *state;
	struct ts_etcd_opts o = {.progress_interval = "500ms"};
	struct etcd_watch_opts wo = {.key = "pn/",
				     .key_len = 3,
				     .prefix = 1,
				     .progress_notify = 1,
				     .idle_ms = 2000,
				     .events = on_events,
				     .compacted = on_compacted,
				     .error = on_watch_err};
	struct watchlog l = {0};
	struct etcd_watch *w;
	struct got g;
	char err[256];

	ts_etcd_start(&e->own, "etcd-progress", &o);
	e->etcd = &e->own;
	e->c = client_of(e, e->etcd);
	wo.arg = &l;
	w = etcd_watch_new(e->c, &wo, err, sizeof(err));
	assert_non_null(w);
	put(e, e->c, "elsewhere", "x", 0, &g);
	assert_true(ts_loop_until_count(e->base, &l.progress, 3, WAIT_MS));
	assert_true(l.last_rev >= g.revision);
	/* the progress kept the idle timer from restarting the stream */
	assert_int_equal(l.errors, 0);
	etcd_watch_free(w);
}

/* ---- TLS and endpoints --------------------------------------------------- */

static void test_mutual_tls(void **state)
{
	struct env *e = *state;
	struct ts_etcd *t = e->etcd;
	const char *eps[] = {t->url};
	struct watchlog l = {0};
	struct etcd_watch *w;
	struct ts_pki other;
	struct got g;
	struct etcd_req rq = {.type = ETCD_RANGE, .key = "x", .key_len = 1};
	char err[256];

	assert_contains(t->url, "https://");
	e->c = client_of(e, t);
	w = watch(e->c, "tls/", rev_now(e, e->c) + 1, &l, 0);
	watch_ready(e, &l, "tls/ready"); /* a watch and requests on TLS */
	put(e, e->c, "tls/k", "v", 0, &g);
	get(e, e->c, "tls/k", 0, &g);
	assert_string_equal(g.kv[0].value, "v");
	etcd_watch_free(w);

	/* a CA that did not sign etcd's certificate: a TLS error */
	ts_pki_make(&other, "etcd-other-ca");
	e->c2 = client(e, eps, 1, other.ca, t->client_cert, t->client_key);
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_kv(e->c2, &rq, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	ts_pki_remove(&other);
	assert_int_equal(g.err, SR_ETLS);
	assert_contains(g.msg, t->url);
	etcd_free(e->c2);

	/* no client certificate: refused */
	e->c2 = client(e, eps, 1, t->ca, NULL, NULL);
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_kv(e->c2, &rq, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_true(g.err == SR_ETLS || g.err == SR_EIO);
	assert_true(g.msg[0] != '\0');
}

static void test_dead_first_endpoint(void **state)
{
	struct env *e = *state;
	char dead[64];
	uint16_t port;
	int fd = ts_listen_loopback(0, 0, &port);
	const char *eps[2] = {dead, e->etcd->url};
	struct watchlog l = {0};
	struct lost_rec lost = {0};
	struct etcd_watch *w;
	struct etcd_keeper *k;
	int64_t ttl, lease;
	struct got g;

	close(fd); /* nobody listens there */
	snprintf(dead, sizeof(dead), "http://127.0.0.1:%u", port);
	e->c2 = client(e, eps, 2, NULL, NULL, NULL);
	assert_string_equal(etcd_endpoint(e->c2), dead);
	/* a write too: the refused attempt never reached anyone */
	put(e, e->c2, "dead/k", "v", 0, &g);
	assert_string_equal(etcd_endpoint(e->c2), e->etcd->url);
	get(e, e->c2, "dead/k", 0, &g);
	assert_int_equal(g.nkvs, 1);
	lease = grant(e, e->c2, 2, &ttl);
	k = etcd_keeper_new(e->c2, lease, ttl, on_lost, &lost);
	etcd_free(e->c2);
	e->c2 = NULL;
	(void)k; /* freed with its client */

	/* a watch on a fresh client starts at the dead one and moves on */
	e->c2 = client(e, eps, 2, NULL, NULL, NULL);
	w = watch(e->c2, "dead/", rev_now(e, e->c) + 1, &l, 0);
	assert_true(ts_loop_until_count(e->base, &l.errors, 1, WAIT_MS));
	assert_int_equal(l.last_err, SR_EIO);
	assert_contains(l.last_msg, dead);
	ts_loop_run_for(e->base, 500);
	watch_ready(e, &l, "dead/ready");
	assert_string_equal(etcd_endpoint(e->c2), e->etcd->url);
	assert_int_equal(lost.calls, 0);
	(void)w;
}

int main(void)
{
	const struct CMUnitTest shared_tests[] = {
	    cmocka_unit_test_setup_teardown(test_put_range_delete_binary, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_range_of_keys_changed_since, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_prefix_range_limit_and_delete, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_prefix_read_in_pages_at_one_revision, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_txn_create_if_absent_race, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_txn_compares, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lease_kept_alive_then_expires, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_revoke_deletes_keys_and_keeper_sees_it, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_watch_puts_and_deletes_in_order, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_watch_from_a_past_revision, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compacted_watch_tells_owner, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_dead_first_endpoint, setup, teardown),
	};
	const struct CMUnitTest own_tests[] = {
	    cmocka_unit_test_setup_teardown(test_keeper_lost_when_etcd_paused, setup_own,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_watch_survives_a_pause, setup_own, teardown),
	    cmocka_unit_test_setup_teardown(test_watch_survives_a_restart, setup_own, teardown),
	    cmocka_unit_test_setup_teardown(test_mutual_tls, setup_own_tls, teardown),
	    cmocka_unit_test_setup_teardown(test_progress_notifications, setup_bare, teardown),
	};
	int rc;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	rc = cmocka_run_group_tests_name("shared etcd", shared_tests, group_setup,
					 group_teardown);
	rc |= cmocka_run_group_tests_name("own etcd", own_tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
