/* Failed allocations in fleet/etcd: for n = 1, 2, ... the nth allocation
 * fails (tests/support/ts_alloc.h) in the client's constructor, in starting
 * each kind of operation, watch and keeper (request JSON included), and in
 * decoding answers and watch messages. Each attempt either works or is
 * refused with a reason (or, decoding, reports SR_ENOMEM with one line),
 * and with ASan no memory may be left unreachable after any attempt. No
 * etcd is needed: nothing is sent before the loop runs, and the loop does
 * not run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "fleet/etcd.h"
#include "fleet/etcd_json.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_sys.h"

static const char *const eps[] = {"http://127.0.0.1:9", "https://127.0.0.1:10"};

struct env {
	struct event_base *base;
	struct etcd *c;
};

static void never(int err, const struct etcd_result *r, void *arg)
{
	(void)err;
	(void)r;
	(void)arg;
	fail_msg("a callback ran without the loop");
}

static void never_lost(int err, const char *msg, void *arg)
{
	(void)err;
	(void)msg;
	(void)arg;
	fail_msg("a keeper callback ran without the loop");
}

static void never_events(const struct etcd_event *ev, size_t n, int64_t rev, void *arg)
{
	(void)ev;
	(void)n;
	(void)rev;
	(void)arg;
	fail_msg("a watch callback ran without the loop");
}

static void never_compacted(int64_t rev, void *arg)
{
	(void)rev;
	(void)arg;
	fail_msg("a watch callback ran without the loop");
}

static void refused_with_reason(const char *err)
{
	assert_true(err[0] != '\0');
	assert_null(strchr(err, '\n'));
}

/* A file etcd_new accepts as a CA, certificate or key (it checks only
 * that each is a regular file; libcurl reads them at the first request). */
static char pem_path[64];

static int new_once(void *arg, unsigned long n)
{
	struct env *e = arg;
	struct etcd_opts o = {.endpoints = eps,
			      .nendpoints = 2,
			      .ca_file = pem_path,
			      .cert_file = pem_path,
			      .key_file = pem_path};
	char err[256] = "";
	struct etcd *c;

	ts_alloc_arm(n);
	c = etcd_new(e->base, &o, err, sizeof(err));
	ts_alloc_disarm();
	if (!c) {
		refused_with_reason(err);
		return SR_ENOMEM;
	}
	assert_string_equal(etcd_endpoint(c), eps[0]);
	etcd_free(c);
	return 0;
}

enum what { W_PUT, W_RANGE, W_TXN, W_GRANT, W_KEEPALIVE, W_REVOKE, W_WATCH, W_KEEPER };

struct start_run {
	struct env *e;
	enum what what;
};

static int start_once(void *arg, unsigned long n)
{
	struct start_run *r = arg;
	struct etcd *c = r->e->c;
	static const char key[] = "fleet/\x00port/40001";
	struct etcd_req put = {.type = ETCD_PUT,
			       .key = key,
			       .key_len = sizeof(key) - 1,
			       .value = "relay-1",
			       .value_len = 7,
			       .lease = 77};
	struct etcd_req range = {
	    .type = ETCD_RANGE, .key = "fleet/", .key_len = 6, .prefix = 1, .limit = 10};
	struct etcd_cmp cmp[2] = {
	    {.key = key, .key_len = sizeof(key) - 1, .target = ETCD_CMP_CREATE, .op = ETCD_EQ},
	    {.key = "v",
	     .key_len = 1,
	     .target = ETCD_CMP_VALUE,
	     .op = ETCD_NE,
	     .value = "x",
	     .value_len = 1},
	};
	struct etcd_req ops[2] = {put, range};
	struct etcd_watch_opts wo = {.key = "fleet/",
				     .key_len = 6,
				     .prefix = 1,
				     .start_revision = 5,
				     .prev_kv = 1,
				     .progress_notify = 1,
				     .idle_ms = 1000,
				     .events = never_events,
				     .compacted = never_compacted};
	char err[256] = "";
	struct etcd_op *op = NULL;
	struct etcd_watch *w = NULL;
	struct etcd_keeper *k = NULL;
	int ok;

	ts_alloc_arm(n);
	switch (r->what) {
	case W_PUT:
		op = etcd_kv(c, &put, never, NULL, err, sizeof(err));
		break;
	case W_RANGE:
		op = etcd_kv(c, &range, never, NULL, err, sizeof(err));
		break;
	case W_TXN:
		op = etcd_txn(c, cmp, 2, ops, 2, &range, 1, never, NULL, err, sizeof(err));
		break;
	case W_GRANT:
		op = etcd_lease_grant(c, 10, never, NULL, err, sizeof(err));
		break;
	case W_KEEPALIVE:
		op = etcd_lease_keepalive(c, 77, never, NULL, err, sizeof(err));
		break;
	case W_REVOKE:
		op = etcd_lease_revoke(c, 77, never, NULL, err, sizeof(err));
		break;
	case W_WATCH:
		w = etcd_watch_new(c, &wo, err, sizeof(err));
		break;
	case W_KEEPER:
		k = etcd_keeper_new(c, 77, 10, never_lost, NULL);
		snprintf(err, sizeof(err), "%s", k ? "" : "refused");
		break;
	}
	ts_alloc_disarm();
	ok = op || w || k;
	etcd_cancel(op);
	etcd_watch_free(w);
	etcd_keeper_free(k);
	if (!ok) {
		if (n == 0 || getenv("SR_TEST_ALLOC_VERBOSE"))
			print_message("start %d n=%lu refused: %s\n", (int)r->what, n, err);
		refused_with_reason(err);
		return SR_ENOMEM;
	}
	return 0;
}

struct decode_run {
	enum etcd_kind kind; /* 0: a watch message */
	const char *body;
	int64_t want_rev;
};

static int decode_once(void *arg, unsigned long n)
{
	struct decode_run *r = arg;
	static const enum etcd_op_type succ[] = {ETCD_PUT, ETCD_RANGE};
	static const enum etcd_op_type fail[] = {ETCD_RANGE};
	int rc;

	/* ours only: jansson 2.14 may crash when its own allocation fails
	 * inside a parse; json_loadb as a whole does fail */
	ts_alloc_arm_ours(n);
	if (r->kind) {
		struct etcd_answer a;
		memset(&a, 0, sizeof(a));
		rc = etcd_json_answer(r->kind, 200, r->body, strlen(r->body), succ, 2, fail, 1,
				      &a);
		ts_alloc_disarm();
		if (rc == 0)
			assert_int_equal(a.res.revision, r->want_rev);
		else
			refused_with_reason(a.msg);
		etcd_answer_fini(&a);
	} else {
		struct etcd_watch_msg m;
		memset(&m, 0, sizeof(m));
		rc = etcd_json_watch_msg(r->body, strlen(r->body), &m);
		ts_alloc_disarm();
		if (rc == 0) {
			assert_int_equal(m.nev, 2);
			assert_non_null(m.ev[0].prev);
		} else {
			refused_with_reason(m.msg);
		}
		etcd_watch_msg_fini(&m);
	}
	if (rc)
		assert_int_equal(rc, SR_ENOMEM);
	return rc;
}

static void test_new(void **state)
{
	struct ts_alloc_result res;

	ts_alloc_sweep("etcd_new", new_once, *state, &res);
	assert_int_equal(res.absorbed, 0);
}

static void test_start_each_kind(void **state)
{
	static const char *const names[] = {"put",	 "range",  "txn",   "grant",
					    "keepalive", "revoke", "watch", "keeper"};
	struct env *e = *state;

	for (enum what w = W_PUT; w <= W_KEEPER; w++) {
		struct start_run r = {e, w};
		struct ts_alloc_result res;
		char what[64];

		snprintf(what, sizeof(what), "etcd %s start", names[w]);
		ts_alloc_sweep(what, start_once, &r, &res);
		assert_int_equal(res.absorbed, 0);
	}
}

static void test_decode(void **state)
{
	struct decode_run runs[] = {
	    {ETCD_K_RANGE,
	     "{\"header\":{\"revision\":\"9\"},\"kvs\":[{\"key\":\"YS8x\",\"value\":\"djE=\","
	     "\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\"},"
	     "{\"key\":\"YS8y\",\"value\":\"eA==\",\"lease\":\"7\"}],\"count\":\"2\"}",
	     9},
	    {ETCD_K_TXN,
	     "{\"header\":{\"revision\":\"7\"},\"succeeded\":true,\"responses\":["
	     "{\"response_put\":{\"header\":{\"revision\":\"7\"}}},{\"response_range\":"
	     "{\"kvs\":[{\"key\":\"dC8x\",\"value\":\"eQ==\"}],\"count\":\"1\"}}]}",
	     7},
	    {ETCD_K_KEEPALIVE, "{\"result\":{\"header\":{\"revision\":\"3\"},\"ID\":\"5\"}}",
	     3},
	    {0,
	     "{\"result\":{\"header\":{\"revision\":\"11\"},\"events\":[{\"kv\":{\"key\":"
	     "\"dy9h\",\"mod_revision\":\"10\",\"value\":\"Mg==\"},\"prev_kv\":{\"key\":"
	     "\"dy9h\",\"mod_revision\":\"9\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"dy9h\","
	     "\"mod_revision\":\"11\"}}]}}",
	     0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
		struct ts_alloc_result res;
		char what[64];

		snprintf(what, sizeof(what), "etcd decode %zu", i);
		ts_alloc_sweep(what, decode_once, &runs[i], &res);
		assert_int_equal(res.absorbed, 0);
	}
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct etcd_opts o = {.endpoints = eps, .nendpoints = 2};
	char err[256];

	assert_non_null(e);
	e->base = event_base_new();
	assert_non_null(e->base);
	e->c = etcd_new(e->base, &o, err, sizeof(err));
	assert_non_null(e->c);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	etcd_free(e->c);
	event_base_free(e->base);
	free(e);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_new, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_start_each_kind, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_decode, setup, teardown),
	};
	int rc;

	ts_alloc_init();
	curl_global_init(CURL_GLOBAL_DEFAULT);
	snprintf(pem_path, sizeof(pem_path), "/tmp/sr-etcd-alloc-%ld.pem", (long)getpid());
	{
		FILE *f = fopen(pem_path, "w");
		if (!f || fputs("-----BEGIN CERTIFICATE-----\n", f) < 0 || fclose(f) != 0)
			return 1;
	}
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	unlink(pem_path);
	curl_global_cleanup();
	return rc;
}
