/* fleet/etcd against answers no etcd sends: a stand-in gateway (evhttp in
 * the test's loop) serves malformed, oversized and hostile answers and
 * scripted watch streams. What the fleet relies on: every such answer is a
 * clean error with one escaped line (no crash, no leak under ASan), a watch
 * survives broken streams without losing or repeating an event, only
 * requests that cannot apply twice move to another endpoint, and cancel
 * and free leave no callback behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "fleet/etcd.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_sys.h"

#define WAIT_MS 5000
#define MAX_CONNS 8
#define MAX_STEPS 8

/* ---- the stand-in gateway ------------------------------------------------ */

/* One watch connection: chunks sent 30 ms apart; then the stream ends, or
 * stays open (keep_open). */
struct stream_script {
	const char *chunk[MAX_STEPS];
	int keep_open;
};

struct fake {
	struct event_base *base;
	struct evhttp *http;
	char url[64];
	/* unary answers */
	int status;
	const char *body;
	int hold; /* never answer */
	int requests;
	char last_path[64], last_body[2048];
	struct evhttp_request *held[4];
	int nheld;
	/* watch streams */
	const struct stream_script *script; /* one per connection */
	int nscript, conns;
	char watch_body[MAX_CONNS][512];
	struct evhttp_request *stream;		/* the one being scripted */
	struct evhttp_request *open[MAX_CONNS]; /* every stream not ended, not closed */
	int step;
	struct event *tick;
};

static void body_of(struct evhttp_request *req, char *out, size_t len)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);

	if (n >= len)
		n = len - 1;
	evbuffer_copyout(in, out, n);
	out[n] = '\0';
}

static void forget_open(struct fake *f, struct evhttp_request *req)
{
	for (int i = 0; i < MAX_CONNS; i++)
		if (f->open[i] == req)
			f->open[i] = NULL;
}

static void stream_tick(evutil_socket_t fd, short what, void *arg)
{
	struct fake *f = arg;
	const struct stream_script *s = &f->script[f->conns - 1];
	struct timeval tv = {0, 30000};

	(void)fd;
	(void)what;
	if (!f->stream)
		return;
	if (f->step < MAX_STEPS && s->chunk[f->step]) {
		struct evbuffer *b = evbuffer_new();
		evbuffer_add(b, s->chunk[f->step], strlen(s->chunk[f->step]));
		evhttp_send_reply_chunk(f->stream, b);
		evbuffer_free(b);
		f->step++;
		evtimer_add(f->tick, &tv);
	} else if (!s->keep_open) {
		forget_open(f, f->stream);
		evhttp_send_reply_end(f->stream);
		f->stream = NULL;
	}
}

/* The client dropped a stream (evhttp found out writing to it, and frees
 * the request). */
static void stream_closed(struct evhttp_connection *evcon, void *arg)
{
	struct fake *f = arg;

	if (f->stream && evhttp_request_get_connection(f->stream) == evcon)
		f->stream = NULL;
	for (int i = 0; i < MAX_CONNS; i++)
		if (f->open[i] && evhttp_request_get_connection(f->open[i]) == evcon)
			f->open[i] = NULL;
}

static void handler(struct evhttp_request *req, void *arg)
{
	struct fake *f = arg;
	const char *uri = evhttp_request_get_uri(req);
	struct evbuffer *out;

	if (strcmp(uri, "/v3/watch") == 0) {
		if (f->conns >= f->nscript) {
			evhttp_send_reply(req, 503, "No more", NULL);
			return;
		}
		body_of(req, f->watch_body[f->conns], sizeof(f->watch_body[0]));
		f->conns++;
		/* a previous stream the client gave up on stays open, forgotten */
		f->stream = req;
		f->open[f->conns - 1] = req;
		evhttp_connection_set_closecb(evhttp_request_get_connection(req), stream_closed,
					      f);
		f->step = 0;
		evhttp_send_reply_start(req, 200, "OK");
		stream_tick(-1, 0, f);
		return;
	}
	f->requests++;
	snprintf(f->last_path, sizeof(f->last_path), "%s", uri);
	body_of(req, f->last_body, sizeof(f->last_body));
	if (f->hold && f->nheld < 4) {
		f->held[f->nheld++] = req;
		return;
	}
	out = evbuffer_new();
	evbuffer_add(out, f->body ? f->body : "", f->body ? strlen(f->body) : 0);
	evhttp_send_reply(req, f->status ? f->status : 200, "X", out);
	evbuffer_free(out);
}

static void fake_start(struct fake *f, struct event_base *base)
{
	struct evhttp_bound_socket *bs;

	memset(f, 0, sizeof(*f));
	f->base = base;
	f->http = evhttp_new(base);
	assert_non_null(f->http);
	evhttp_set_gencb(f->http, handler, f);
	evhttp_set_allowed_methods(f->http, EVHTTP_REQ_POST);
	bs = evhttp_bind_socket_with_handle(f->http, "127.0.0.1", 0);
	assert_non_null(bs);
	snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u",
		 ts_local_port(evhttp_bound_socket_get_fd(bs)));
	f->tick = evtimer_new(base, stream_tick, f);
}

static void fake_stop(struct fake *f)
{
	if (!f->http)
		return;
	for (int i = 0; i < f->nheld; i++) /* answered now so that evhttp frees them */
		evhttp_send_reply(f->held[i], 200, "OK", NULL);
	/* streams the client dropped but evhttp has not noticed: ended now so
	 * that evhttp frees them */
	for (int i = 0; i < MAX_CONNS; i++)
		if (f->open[i])
			evhttp_send_reply_end(f->open[i]);
	ts_loop_run_for(f->base, 20);
	event_free(f->tick);
	evhttp_free(f->http);
	f->http = NULL;
}

/* ---- the test's environment ---------------------------------------------- */

struct env {
	struct event_base *base;
	struct fake f, f2;
	struct etcd *c;
};

static struct etcd *client(struct env *e, const char *const *eps, size_t n, long timeout_ms,
			   size_t max_answer)
{
	struct etcd_opts o = {.endpoints = eps,
			      .nendpoints = n,
			      .timeout_ms = timeout_ms,
			      .max_answer = max_answer};
	char err[256];
	struct etcd *c = etcd_new(e->base, &o, err, sizeof(err));

	if (!c)
		fail_msg("etcd_new: %s", err);
	return c;
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	const char *eps[1];

	assert_non_null(e);
	e->base = event_base_new();
	fake_start(&e->f, e->base);
	eps[0] = e->f.url;
	e->c = client(e, eps, 1, 2000, 4096);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	etcd_free(e->c);
	fake_stop(&e->f);
	fake_stop(&e->f2);
	event_base_free(e->base);
	free(e);
	return 0;
}

struct got {
	int calls, err, code;
	char msg[600];
	int64_t revision, ttl, lease;
	size_t nkvs;
};

static void on_result(int err, const struct etcd_result *r, void *arg)
{
	struct got *g = arg;

	g->calls++;
	g->err = err;
	g->code = r->code;
	snprintf(g->msg, sizeof(g->msg), "%s", r->msg);
	g->revision = r->revision;
	g->ttl = r->ttl;
	g->lease = r->lease;
	g->nkvs = r->nkvs;
}

static void wait_one(struct env *e, struct got *g)
{
	assert_true(ts_loop_until_count(e->base, &g->calls, 1, WAIT_MS));
	ts_loop_run_for(e->base, 10);
	assert_int_equal(g->calls, 1);
}

static void no_control_bytes(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			fail_msg("a control byte 0x%02x in an error message",
				 (unsigned char)*s);
}

static const struct etcd_req range_x = {.type = ETCD_RANGE, .key = "x", .key_len = 1};
static const struct etcd_req put_x = {
    .type = ETCD_PUT, .key = "x", .key_len = 1, .value = "v", .value_len = 1};

static void run(struct env *e, struct etcd *c, const struct etcd_req *rq, struct got *g)
{
	char err[256];

	memset(g, 0, sizeof(*g));
	if (!etcd_kv(c, rq, on_result, g, err, sizeof(err)))
		fail_msg("etcd_kv: %s", err);
	wait_one(e, g);
}

/* ---- unary answers ------------------------------------------------------- */

struct bad_case {
	int status;
	const char *body;
	int err;
	const char *msg; /* a part of the one-line reason */
};

static void test_malformed_range_answers(void **state)
{
	struct env *e = *state;
	static const struct bad_case cases[] = {
	    {200, "not json", SR_EPROTO, "not JSON"},
	    {200, "", SR_EPROTO, "not JSON"},
	    {200, "[1,2]", SR_EPROTO, "not a JSON object"},
	    {200, "{\"header\":[]}", SR_EPROTO, "header is not an object"},
	    {200, "{\"header\":{\"revision\":\"abc\"}}", SR_EPROTO,
	     "header.revision is not a 64-bit number"},
	    {200, "{\"header\":{\"revision\":\"99999999999999999999\"}}", SR_EPROTO,
	     "header.revision is not a 64-bit number"},
	    {200, "{\"header\":{\"revision\":\"-\"}}", SR_EPROTO, "not a 64-bit number"},
	    {200, "{\"header\":{\"revision\":1.5}}", SR_EPROTO,
	     "header.revision is not a number"},
	    {200, "{\"kvs\":{}}", SR_EPROTO, "kvs is not an array"},
	    {200, "{\"kvs\":[7]}", SR_EPROTO, "kvs[0] is not an object"},
	    {200, "{\"kvs\":[{\"key\":\"!!!!\"}],\"count\":\"1\"}", SR_EPROTO,
	     "kvs[0]key is not base64"},
	    {200, "{\"kvs\":[{\"key\":\"YQ\"}],\"count\":\"1\"}", SR_EPROTO, "not base64"},
	    {200, "{\"kvs\":[{\"key\":\"YR==\"}],\"count\":\"1\"}", SR_EPROTO, "not base64"},
	    {200, "{\"kvs\":[{\"key\":\"YQ==\",\"value\":5}],\"count\":\"1\"}", SR_EPROTO,
	     "kvs[0]value is not a string"},
	    {200, "{\"kvs\":[{\"value\":\"YQ==\"}],\"count\":\"1\"}", SR_EPROTO, "has no key"},
	    {200, "{\"kvs\":[{\"key\":\"YQ==\"},{\"key\":\"Yg==\"}],\"count\":\"1\"}",
	     SR_EPROTO, "count is less"},
	    {200, "{\"more\":\"yes\"}", SR_EPROTO, "more is not true or false"},
	    {200, "{\"header\":{},\"header\":{}}", SR_EPROTO, "not JSON"},
	    {502, "<html>Bad \x01gateway</html>", SR_EPROTO,
	     "HTTP 502: <html>Bad \\x01gateway"},
	    {404, "{\"some\":\"json\"}", SR_EPROTO, "HTTP 404 without an etcd error"},
	    {200, "{\"error\":[1]}", SR_EPROTO, "neither a string nor an object"},
	    {200, "{\"error\":\"x\",\"message\":7}", SR_EPROTO, "message is not a string"},
	    {400, "{\"error\":\"x\",\"code\":\"many\"}", SR_EPROTO,
	     "code is not a 64-bit number"},
	};
	struct got g;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		e->f.status = cases[i].status;
		e->f.body = cases[i].body;
		run(e, e->c, &range_x, &g);
		if (g.err != cases[i].err || !strstr(g.msg, cases[i].msg))
			fail_msg("case %zu (%s): err %d \"%s\", want %d with \"%s\"", i,
				 cases[i].body, g.err, g.msg, cases[i].err, cases[i].msg);
		no_control_bytes(g.msg);
		assert_int_equal(g.nkvs, 0);
	}
	assert_string_equal(e->f.last_path, "/v3/kv/range");
}

/* Keys and values are bytes: a NUL inside is kept, with the length, for
 * the caller to refuse (relay_fleet's mirror ignores such keys; a C string
 * would have made "leases/<id>\0x" act on leases/<id>). */
struct got_kv {
	int calls, err;
	size_t nkvs, key_len[2], value_len[2];
	char key[2][32], value[2][32];
};

static void on_kvs(int err, const struct etcd_result *r, void *arg)
{
	struct got_kv *g = arg;

	g->calls++;
	g->err = err;
	g->nkvs = r->nkvs;
	for (size_t i = 0; i < r->nkvs && i < 2; i++) {
		g->key_len[i] = r->kvs[i].key_len;
		g->value_len[i] = r->kvs[i].value_len;
		assert_true(r->kvs[i].key_len < sizeof(g->key[i]));
		assert_true(r->kvs[i].value_len < sizeof(g->value[i]));
		memcpy(g->key[i], r->kvs[i].key, r->kvs[i].key_len + 1);
		memcpy(g->value[i], r->kvs[i].value, r->kvs[i].value_len + 1);
	}
}

static void test_nul_bytes_in_keys_and_values_keep_their_length(void **state)
{
	struct env *e = *state;
	struct got_kv g = {0};
	char err[256];

	/* "leases/L-1\0x" = "v\0w", then "\0" = "" */
	e->f.status = 200;
	e->f.body = "{\"header\":{\"revision\":\"9\"},\"kvs\":["
		    "{\"key\":\"bGVhc2VzL0wtMQB4\",\"value\":\"dgB3\"},"
		    "{\"key\":\"AA==\"}],\"count\":\"2\"}";
	if (!etcd_kv(e->c, &range_x, on_kvs, &g, err, sizeof(err)))
		fail_msg("etcd_kv: %s", err);
	assert_true(ts_loop_until_count(e->base, &g.calls, 1, WAIT_MS));
	assert_int_equal(g.err, 0);
	assert_int_equal(g.nkvs, 2);
	assert_int_equal(g.key_len[0], 12);
	assert_memory_equal(g.key[0], "leases/L-1\0x", 13); /* and the NUL after it */
	assert_int_equal(g.value_len[0], 3);
	assert_memory_equal(g.value[0], "v\0w", 4);
	assert_int_equal(g.key_len[1], 1);
	assert_int_equal(g.key[1][0], '\0');
	assert_int_equal(g.value_len[1], 0);
}

static void test_etcd_errors_surface_escaped(void **state)
{
	struct env *e = *state;
	struct got g;

	e->f.status = 400;
	e->f.body = "{\"error\":\"etcdserver: \\u0007bad\\nkey\\\"\",\"message\":"
		    "\"etcdserver: \\u0007bad\\nkey\\\"\",\"code\":3}";
	run(e, e->c, &range_x, &g);
	assert_int_equal(g.err, SR_EINVAL);
	assert_int_equal(g.code, 3);
	assert_string_equal(g.msg, "etcd: etcdserver: \\x07bad\\x0akey\\\" (code 3)");

	e->f.status = 404;
	e->f.body = "{\"error\":\"etcdserver: requested lease not found\",\"code\":5}";
	run(e, e->c, &range_x, &g);
	assert_int_equal(g.err, SR_ENOTFOUND);
	assert_contains(g.msg, "lease not found");

	/* the form inside a stream */
	e->f.status = 503;
	e->f.body =
	    "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"no leader\"}}";
	run(e, e->c, &put_x, &g);
	assert_int_equal(g.err, SR_EBUSY);
	assert_int_equal(g.code, 14);
	assert_string_equal(g.msg, "etcd: no leader (code 14)");

	/* a long message is cut, not the line */
	{
		static char body[3000];
		int n = snprintf(body, sizeof(body), "{\"error\":\"");
		memset(body + n, 'a', 2000);
		snprintf(body + n + 2000, sizeof(body) - (size_t)n - 2000, "\",\"code\":2}");
		e->f.status = 500;
		e->f.body = body;
		run(e, e->c, &range_x, &g);
		assert_int_equal(g.err, SR_EINVAL);
		assert_contains(g.msg, "aaa...");
		assert_true(strlen(g.msg) < 300);
	}
}

static void test_answer_over_max_answer(void **state)
{
	struct env *e = *state;
	static char big[8192];
	struct got g;

	memset(big, ' ', sizeof(big) - 3);
	big[0] = '{';
	big[sizeof(big) - 2] = '}';
	e->f.body = big; /* valid JSON, 8 KiB; the client takes 4 KiB */
	run(e, e->c, &range_x, &g);
	assert_int_equal(g.err, SR_ETOOBIG);
	assert_contains(g.msg, "4096");
	assert_int_equal(e->f.requests, 1); /* too big anywhere: not tried again */
}

static void test_txn_and_lease_answers_checked(void **state)
{
	struct env *e = *state;
	struct etcd_cmp cmp = {
	    .key = "x", .key_len = 1, .target = ETCD_CMP_VERSION, .op = ETCD_EQ};
	struct etcd_req ops[2] = {put_x, range_x};
	static const struct bad_case txn[] = {
	    {200, "{\"succeeded\":true,\"responses\":[{\"response_put\":{}}]}", SR_EPROTO,
	     "1 responses for 2 ops"},
	    {200,
	     "{\"succeeded\":true,\"responses\":[{\"response_range\":{}},"
	     "{\"response_range\":{}}]}",
	     SR_EPROTO, "responses[0]. answers another op"},
	    {200,
	     "{\"succeeded\":true,\"responses\":[{\"response_put\":{}},"
	     "{\"response_range\":{},\"response_put\":{}}]}",
	     SR_EPROTO, "with one op"},
	    {200,
	     "{\"succeeded\":true,\"responses\":[{\"response_put\":{}},"
	     "{\"response_range\":{\"kvs\":[{\"key\":1}]}}]}",
	     SR_EPROTO, "responses[1].kvs[0]key is not a string"},
	    {200, "{\"succeeded\":1}", SR_EPROTO, "succeeded is not true or false"},
	    /* the failure branch has no ops */
	    {200, "{\"responses\":[{\"response_put\":{}}]}", SR_EPROTO,
	     "1 responses for 0 ops"},
	};
	struct got g;
	char err[256];

	for (size_t i = 0; i < sizeof(txn) / sizeof(txn[0]); i++) {
		e->f.status = txn[i].status;
		e->f.body = txn[i].body;
		memset(&g, 0, sizeof(g));
		assert_non_null(
		    etcd_txn(e->c, &cmp, 1, ops, 2, NULL, 0, on_result, &g, err, sizeof(err)));
		wait_one(e, &g);
		if (g.err != txn[i].err || !strstr(g.msg, txn[i].msg))
			fail_msg("txn case %zu: err %d \"%s\", want \"%s\"", i, g.err, g.msg,
				 txn[i].msg);
	}
	/* a well-formed answer, for contrast */
	e->f.body = "{\"header\":{\"revision\":\"9\"},\"succeeded\":true,\"responses\":["
		    "{\"response_put\":{\"header\":{\"revision\":\"9\"}}},"
		    "{\"response_range\":{\"kvs\":[{\"key\":\"eA==\",\"value\":\"dg==\"}],"
		    "\"count\":\"1\"}}]}";
	memset(&g, 0, sizeof(g));
	assert_non_null(
	    etcd_txn(e->c, &cmp, 1, ops, 2, NULL, 0, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.revision, 9);
	assert_contains(e->f.last_body, "\"target\":\"VERSION\"");

	/* grant without an id; keepalive without its result wrapper */
	e->f.body = "{\"TTL\":\"5\"}";
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_grant(e->c, 5, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, SR_EPROTO);
	assert_contains(g.msg, "without an ID");
	e->f.body = "{\"ID\":\"5\",\"TTL\":\"5\"}";
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_keepalive(e->c, 5, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, SR_EPROTO);
	assert_contains(g.msg, "no result");
	assert_string_equal(e->f.last_path, "/v3/lease/keepalive");
	assert_string_equal(e->f.last_body, "{\"ID\":\"5\"}");
	e->f.body = "{\"result\":{\"ID\":\"5\",\"TTL\":\"4\"}}";
	memset(&g, 0, sizeof(g));
	assert_non_null(etcd_lease_keepalive(e->c, 5, on_result, &g, err, sizeof(err)));
	wait_one(e, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.ttl, 4);
	assert_int_equal(g.lease, 5);
}

/* ---- endpoints ----------------------------------------------------------- */

/* A write that may have reached etcd is not sent again, not even after
 * Unavailable (etcd says that also of a proposal that timed out and may yet
 * be applied); a read is. */
static void test_failover_only_when_safe(void **state)
{
	struct env *e = *state;
	const char *eps[2];
	struct got g;

	fake_start(&e->f2, e->base);
	e->f2.body = "{\"header\":{\"revision\":\"3\"}}";
	eps[0] = e->f.url;
	eps[1] = e->f2.url;
	etcd_free(e->c);
	e->c = client(e, eps, 2, 300, 0);

	e->f.hold = 1; /* the first endpoint takes requests and never answers */
	run(e, e->c, &put_x, &g);
	assert_int_equal(g.err, SR_ETIMEDOUT);
	assert_contains(g.msg, e->f.url);
	assert_int_equal(e->f2.requests, 0);
	assert_string_equal(etcd_endpoint(e->c), e->f.url);

	run(e, e->c, &range_x, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.revision, 3);
	assert_int_equal(e->f2.requests, 1);
	assert_string_equal(etcd_endpoint(e->c), e->f2.url); /* remembered */
	run(e, e->c, &put_x, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(e->f2.requests, 2);

	/* now the second answers Unavailable: a put stays, a range moves on */
	e->f.hold = 0;
	e->f.body = "{\"header\":{\"revision\":\"4\"}}";
	e->f2.status = 503;
	e->f2.body = "{\"error\":\"etcdserver: request timed out\",\"code\":14}";
	run(e, e->c, &put_x, &g);
	assert_int_equal(g.err, SR_EBUSY);
	assert_contains(g.msg, "request timed out");
	assert_int_equal(e->f2.requests, 3);
	assert_int_equal(e->f.requests, 2);
	run(e, e->c, &range_x, &g);
	assert_int_equal(g.err, 0);
	assert_int_equal(g.revision, 4);
	assert_int_equal(e->f2.requests, 4);
	assert_int_equal(e->f.requests, 3);
	assert_string_equal(etcd_endpoint(e->c), e->f.url);
}

/* ---- watches ------------------------------------------------------------- */

struct watchlog {
	int n, calls, progress, errors, compacted;
	int errs[16];
	char msgs[16][300];
	int64_t revs[32], compact_rev, progress_rev;
	char keys[32][16];
	int free_in_events;
	struct etcd_watch *w;
};

static void on_events(const struct etcd_event *ev, size_t n, int64_t revision, void *arg)
{
	struct watchlog *l = arg;

	if (n == 0) {
		l->progress++;
		l->progress_rev = revision;
		return;
	}
	l->calls++;
	for (size_t i = 0; i < n && l->n < 32; i++) {
		l->revs[l->n] = ev[i].kv.mod_revision;
		snprintf(l->keys[l->n], sizeof(l->keys[0]), "%s", ev[i].kv.key);
		l->n++;
	}
	if (l->free_in_events) {
		etcd_watch_free(l->w);
		l->w = NULL;
	}
}

static void on_compacted(int64_t rev, void *arg)
{
	struct watchlog *l = arg;

	l->compacted++;
	l->compact_rev = rev;
}

static void on_watch_err(int err, const char *msg, void *arg)
{
	struct watchlog *l = arg;

	if (l->errors < 16) {
		l->errs[l->errors] = err;
		snprintf(l->msgs[l->errors], sizeof(l->msgs[0]), "%s", msg);
	}
	l->errors++;
}

static struct etcd_watch *watch(struct env *e, int64_t start, struct watchlog *l)
{
	struct etcd_watch_opts o = {.key = "w/",
				    .key_len = 2,
				    .prefix = 1,
				    .start_revision = start,
				    .events = on_events,
				    .compacted = on_compacted,
				    .error = on_watch_err,
				    .arg = l};
	char err[256];
	struct etcd_watch *w = etcd_watch_new(e->c, &o, err, sizeof(err));

	if (!w)
		fail_msg("etcd_watch_new: %s", err);
	l->w = w;
	return w;
}

#define CREATED(rev) "{\"result\":{\"header\":{\"revision\":\"" rev "\"},\"created\":true}}\n"
#define EV(key64, rev)                                                                         \
	"{\"kv\":{\"key\":\"" key64 "\",\"mod_revision\":\"" rev "\",\"value\":\"eA==\"}}"
#define EVENTS(...)                                                                            \
	"{\"result\":{\"header\":{\"revision\":\"99\"},\"events\":[" __VA_ARGS__ "]}}\n"

static char oversized[6000];

static void test_watch_stream_faults(void **state)
{
	struct env *e = *state;
	/* key names: dy9h = "w/a", dy9i = "w/b", dy9j = "w/c", dy9k = "w/d" */
	struct stream_script script[] = {
	    /* 0: from now (created at 10): 11 and 12, the message split in two
	     * chunks; then the stream ends */
	    {{CREATED("10"), EVENTS(EV("dy9h", "11") "," EV("dy9i", "12")), NULL}, 0},
	    /* 1: resumed at 13; 12 again (dropped), 13; a progress to 20; garbage */
	    {{CREATED("20"), EVENTS(EV("dy9i", "12") "," EV("dy9j", "13")),
	      "{\"result\":{\"header\":{\"revision\":\"20\"}}}\n", "garbage\n", NULL},
	     1},
	    /* 2: resumed at 21; out of order */
	    {{CREATED("22"), EVENTS(EV("dy9k", "23") "," EV("dy9k", "22")), NULL}, 1},
	    /* 3: a message larger than max_answer */
	    {{CREATED("22"), oversized, NULL}, 1},
	    /* 4: etcd's error at the end of a stream, without its newline */
	    {{CREATED("22"),
	      "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"transport is "
	      "closing\",\"http_status\":\"Service Unavailable\"}}",
	      NULL},
	     0},
	    /* 5: compacted */
	    {{"{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"30\"}}\n",
	      NULL},
	     1},
	};
	struct watchlog l = {0};
	const char *part;
	char first[512];

	/* split message 0's second line in the middle of a revision */
	part = script[0].chunk[1];
	snprintf(first, sizeof(first), "%.*s", (int)(strlen(part) / 2), part);
	script[0].chunk[1] = first;
	script[0].chunk[2] = part + strlen(part) / 2;
	memset(oversized, ' ', sizeof(oversized) - 1);
	oversized[sizeof(oversized) - 1] = '\0';
	e->f.script = script;
	e->f.nscript = 6;

	watch(e, 0, &l);
	assert_int_equal(e->f.conns, 0); /* nothing from inside the call */
	assert_true(ts_loop_until_count(e->base, &l.compacted, 1, 3 * WAIT_MS));
	ts_loop_run_for(e->base, 300);

	/* each revision once, in order */
	assert_int_equal(l.n, 3);
	assert_int_equal(l.revs[0], 11);
	assert_int_equal(l.revs[1], 12);
	assert_int_equal(l.revs[2], 13);
	assert_string_equal(l.keys[0], "w/a");
	assert_string_equal(l.keys[2], "w/c");
	assert_int_equal(l.progress, 1);
	assert_int_equal(l.progress_rev, 20);
	assert_int_equal(l.compact_rev, 30);
	assert_int_equal(l.compacted, 1);

	/* where each stream resumed */
	assert_null(strstr(e->f.watch_body[0], "start_revision"));
	assert_contains(e->f.watch_body[1], "\"start_revision\":\"13\"");
	assert_contains(e->f.watch_body[2], "\"start_revision\":\"21\"");
	assert_contains(e->f.watch_body[3], "\"start_revision\":\"21\"");
	assert_contains(e->f.watch_body[4], "\"start_revision\":\"21\"");
	assert_contains(e->f.watch_body[5], "\"start_revision\":\"21\"");
	assert_contains(e->f.watch_body[0], "\"key\":\"dy8=\",\"range_end\":\"dzA=\"");

	/* and why each broke */
	assert_int_equal(l.errors, 5);
	assert_int_equal(l.errs[0], SR_ECLOSED);
	assert_contains(l.msgs[0], "ended the watch stream");
	assert_int_equal(l.errs[1], SR_EPROTO);
	assert_contains(l.msgs[1], "not JSON");
	assert_int_equal(l.errs[2], SR_EPROTO);
	assert_contains(l.msgs[2], "out of order");
	assert_int_equal(l.errs[3], SR_ETOOBIG);
	assert_int_equal(l.errs[4], SR_EBUSY);
	assert_contains(l.msgs[4], "transport is closing");
	for (int i = 0; i < 5; i++)
		no_control_bytes(l.msgs[i]);
	/* stopped: no sixth stream */
	assert_int_equal(e->f.conns, 6);
	etcd_watch_free(l.w);
}

static void test_watch_freed_from_its_callback(void **state)
{
	struct env *e = *state;
	const struct stream_script script[] = {
	    {{CREATED("5") EVENTS(EV("dy9h", "6")) EVENTS(EV("dy9i", "7")), NULL}, 1},
	};
	struct watchlog l = {.free_in_events = 1};

	e->f.script = script;
	e->f.nscript = 1;
	watch(e, 6, &l);
	assert_true(ts_loop_until_count(e->base, &l.calls, 1, WAIT_MS));
	ts_loop_run_for(e->base, 300);
	assert_int_equal(l.calls, 1); /* the second message was not delivered */
	assert_null(l.w);
	assert_int_equal(l.errors, 0);
}

static void test_watch_idle_restarts_a_silent_stream(void **state)
{
	struct env *e = *state;
	const struct stream_script script[] = {
	    {{CREATED("5"), NULL}, 1},
	    {{CREATED("5"), EVENTS(EV("dy9h", "6")), NULL}, 1},
	};
	struct etcd_watch_opts o = {.key = "w/a",
				    .key_len = 3,
				    .idle_ms = 300,
				    .events = on_events,
				    .compacted = on_compacted,
				    .error = on_watch_err};
	struct watchlog l = {0};
	char err[256];
	struct etcd_watch *w;

	e->f.script = script;
	e->f.nscript = 2;
	o.arg = &l;
	w = etcd_watch_new(e->c, &o, err, sizeof(err));
	assert_non_null(w);
	assert_true(ts_loop_until_count(e->base, &l.n, 1, WAIT_MS));
	assert_int_equal(l.errors, 1);
	assert_int_equal(l.errs[0], SR_ETIMEDOUT);
	assert_contains(l.msgs[0], "silent for 300 ms");
	assert_contains(e->f.watch_body[1], "\"start_revision\":\"6\"");
	assert_null(strstr(e->f.watch_body[1], "range_end")); /* one key */
	/* the old stream was dropped: the stand-in may end it now */
	etcd_watch_free(w);
}

/* ---- keepers, cancel, free ----------------------------------------------- */

struct lost_rec {
	int calls, err;
	char msg[300];
};

static void on_lost(int err, const char *msg, void *arg)
{
	struct lost_rec *l = arg;

	l->calls++;
	l->err = err;
	snprintf(l->msg, sizeof(l->msg), "%s", msg);
}

static void test_keeper_unreachable_past_ttl(void **state)
{
	struct env *e = *state;
	struct lost_rec lost = {0};
	uint16_t port;
	int fd = ts_listen_loopback(0, 0, &port);
	char dead[64];
	const char *eps[1] = {dead};
	struct etcd_keeper *k;
	uint64_t t0;

	close(fd);
	snprintf(dead, sizeof(dead), "http://127.0.0.1:%u", port);
	etcd_free(e->c);
	e->c = client(e, eps, 1, 0, 0);
	t0 = sr_now_us();
	k = etcd_keeper_new(e->c, 42, 1, on_lost, &lost);
	assert_non_null(k);
	assert_true(ts_loop_until_count(e->base, &lost.calls, 1, WAIT_MS));
	assert_true(sr_now_us() - t0 >= 950000u); /* not before the TTL is up */
	assert_int_equal(lost.err, SR_ETIMEDOUT);
	assert_contains(lost.msg, "lease 42");
	ts_loop_run_for(e->base, 500);
	assert_int_equal(lost.calls, 1);
	etcd_keeper_free(k);

	/* etcd says TTL 0: gone at once */
	etcd_free(e->c);
	eps[0] = e->f.url;
	e->c = client(e, eps, 1, 0, 0);
	e->f.body = "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"42\"}}";
	memset(&lost, 0, sizeof(lost));
	k = etcd_keeper_new(e->c, 42, 60, on_lost, &lost);
	assert_true(ts_loop_until_count(e->base, &lost.calls, 1, WAIT_MS));
	assert_int_equal(lost.err, SR_ENOTFOUND);
	etcd_keeper_free(k);
}

/* What etcd answers to a keepalive is held to the TTL granted: a TTL far
 * above it (a faulty etcd, or anyone on the path to an http:// endpoint)
 * pushed the next keepalive and the expiry check past the real lease's
 * end, so the relay never saw its registration go. And while etcd fails,
 * retries back off from 1 s instead of coming every second from every
 * keeper a relay has (one per lease it holds). */
static void test_keeper_holds_the_ttl_and_backs_off(void **state)
{
	struct env *e = *state;
	struct lost_rec lost = {0};
	struct etcd_keeper *k;

	e->f.body = "{\"result\":{\"header\":{\"revision\":\"1\"},\"ID\":\"42\","
		    "\"TTL\":\"1000000000000\"}}";
	k = etcd_keeper_new(e->c, 42, 3, on_lost, &lost);
	assert_non_null(k);
	ts_loop_run_for(e->base, 3500);
	/* every TTL/3 = 1 s: at 0, 1, 2 and 3 s */
	assert_true(e->f.requests >= 3);
	assert_int_equal(lost.calls, 0);
	etcd_keeper_free(k);

	e->f.requests = 0;
	e->f.status = 503;
	e->f.body = "{\"code\":14,\"error\":\"etcdserver: no leader\","
		    "\"message\":\"etcdserver: no leader\"}";
	k = etcd_keeper_new(e->c, 42, 300, on_lost, &lost);
	assert_non_null(k);
	ts_loop_run_for(e->base, 5000);
	/* 0, then about 1, 2 and 4 s later (+-25 %): 3 or 4 in 5 s, not 6 */
	assert_true(e->f.requests >= 2 && e->f.requests <= 4);
	assert_int_equal(lost.calls, 0);
	etcd_keeper_free(k);
}

static void test_cancel_and_free_call_nothing(void **state)
{
	struct env *e = *state;
	struct got g1 = {0}, g2 = {0};
	struct lost_rec lost = {0};
	struct watchlog l = {0};
	const struct stream_script script[] = {{{CREATED("5"), NULL}, 1}};
	char err[256];
	struct etcd_op *op;

	e->f.hold = 1;
	e->f.script = script;
	e->f.nscript = 1;
	op = etcd_kv(e->c, &range_x, on_result, &g1, err, sizeof(err));
	assert_non_null(op);
	ts_loop_run_for(e->base, 50);
	etcd_cancel(op);
	assert_non_null(etcd_kv(e->c, &put_x, on_result, &g2, err, sizeof(err)));
	assert_non_null(etcd_keeper_new(e->c, 7, 60, on_lost, &lost));
	watch(e, 0, &l);
	ts_loop_run_for(e->base, 200);
	assert_int_equal(e->f.conns, 1);
	etcd_free(e->c); /* a pending put, keeper, watch: all gone, silently */
	e->c = NULL;
	ts_loop_run_for(e->base, 2500); /* past the requests' timeout */
	assert_int_equal(g1.calls + g2.calls + lost.calls + l.errors + l.calls, 0);
}

static void test_bad_arguments(void **state)
{
	struct env *e = *state;
	static const char *const bad_eps[] = {
	    "ftp://127.0.0.1:2379", "http://127.0.0.1:2379/v3",	  "http://",
	    "127.0.0.1:2379",	    "http://user@127.0.0.1:2379", "http://127.0.0.1:2379?x",
	    "http://a b:1",	    "http://127.0.0.1:\x01",
	};
	const char *many[ETCD_MAX_ENDPOINTS + 1];
	struct etcd_opts o = {.nendpoints = 1};
	struct etcd_req rq;
	struct etcd_req ops[ETCD_MAX_TXN_OPS + 1];
	struct etcd_watch_opts wo = {0};
	struct got g = {0};
	char err[256];

	for (size_t i = 0; i < sizeof(bad_eps) / sizeof(bad_eps[0]); i++) {
		o.endpoints = &bad_eps[i];
		assert_null(etcd_new(e->base, &o, err, sizeof(err)));
		assert_contains(err, "etcd endpoint");
		no_control_bytes(err);
	}
	for (size_t i = 0; i < ETCD_MAX_ENDPOINTS + 1; i++)
		many[i] = "http://127.0.0.1:2379";
	o.endpoints = many;
	o.nendpoints = ETCD_MAX_ENDPOINTS + 1;
	assert_null(etcd_new(e->base, &o, err, sizeof(err)));
	o.nendpoints = 0;
	assert_null(etcd_new(e->base, &o, err, sizeof(err)));
	/* a trailing slash is fine */
	many[0] = "http://127.0.0.1:2379/";
	o.nendpoints = 1;
	{
		struct etcd *c = etcd_new(e->base, &o, err, sizeof(err));
		assert_non_null(c);
		assert_string_equal(etcd_endpoint(c), "http://127.0.0.1:2379");
		etcd_free(c);
	}

	rq = (struct etcd_req){.type = ETCD_PUT, .key = "", .key_len = 0};
	assert_null(etcd_kv(e->c, &rq, on_result, &g, err, sizeof(err)));
	assert_contains(err, "empty key");
	rq = (struct etcd_req){.type = ETCD_PUT, .key = "a", .key_len = 1, .prefix = 1};
	assert_null(etcd_kv(e->c, &rq, on_result, &g, err, sizeof(err)));
	rq = (struct etcd_req){.type = 9, .key = "a", .key_len = 1};
	assert_null(etcd_kv(e->c, &rq, on_result, &g, err, sizeof(err)));
	rq = (struct etcd_req){.type = ETCD_RANGE, .key = "a", .key_len = 1, .limit = -1};
	assert_null(etcd_kv(e->c, &rq, on_result, &g, err, sizeof(err)));
	rq = (struct etcd_req){.type = ETCD_RANGE, .key = "a", .key_len = 1};
	assert_null(etcd_kv(e->c, &rq, NULL, &g, err, sizeof(err)));
	for (size_t i = 0; i < ETCD_MAX_TXN_OPS + 1; i++)
		ops[i] = range_x;
	assert_null(etcd_txn(e->c, NULL, 0, ops, ETCD_MAX_TXN_OPS + 1, NULL, 0, on_result, &g,
			     err, sizeof(err)));
	assert_contains(err, "more than");
	{
		struct etcd_cmp cmp = {.key = "a", .key_len = 1, .target = 77, .op = ETCD_EQ};
		assert_null(
		    etcd_txn(e->c, &cmp, 1, NULL, 0, NULL, 0, on_result, &g, err, sizeof(err)));
	}
	assert_null(etcd_lease_grant(e->c, 0, on_result, &g, err, sizeof(err)));
	assert_null(etcd_lease_revoke(e->c, -1, on_result, &g, err, sizeof(err)));
	assert_null(etcd_keeper_new(e->c, 1, 0, on_lost, NULL));
	wo = (struct etcd_watch_opts){.key = "a", .key_len = 1};
	assert_null(etcd_watch_new(e->c, &wo, err, sizeof(err)));
	wo.events = on_events;
	wo.compacted = on_compacted;
	wo.key_len = 0;
	assert_null(etcd_watch_new(e->c, &wo, err, sizeof(err)));
	ts_loop_run_for(e->base, 50);
	assert_int_equal(g.calls, 0);
	assert_int_equal(e->f.requests, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_malformed_range_answers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nul_bytes_in_keys_and_values_keep_their_length,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_etcd_errors_surface_escaped, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_answer_over_max_answer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_txn_and_lease_answers_checked, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_failover_only_when_safe, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watch_stream_faults, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watch_freed_from_its_callback, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_watch_idle_restarts_a_silent_stream, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_keeper_unreachable_past_ttl, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keeper_holds_the_ttl_and_backs_off, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_cancel_and_free_call_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
	};
	int rc;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
