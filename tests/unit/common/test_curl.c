/* sr_curl: HTTP requests from the event loop, against a real HTTP server
 * (evhttp) on loopback in the same loop. What the fleet and discovery rely
 * on: answers and statuses arrive whole, stream answers arrive in order and
 * split where the reader says, every bound (size, time) ends a request with
 * its own error, and a callback may cancel or start requests. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"

struct env {
	struct event_base *base;
	struct evhttp *http;
	uint16_t port;
	struct sr_curl *curl;
	char url[128];
	struct evhttp_request *held; /* a request the server never answers */
	int stream_step;
	struct evhttp_request *stream;
	struct event *stream_ev;
};

struct result {
	int calls, err;
	long status;
	char body[8192];
	size_t len; /* the whole answer's length; body holds its start */
	char msg[512];
	char lines[16][64];
	int nlines;
};

static void stream_next(evutil_socket_t fd, short what, void *arg)
{
	static const char *const parts[] = {"one\ntw", "o\n", "three\nfour\n"};
	struct env *e = arg;
	struct evbuffer *b = evbuffer_new();
	struct timeval tv = {0, 20000};

	(void)fd;
	(void)what;
	if (e->stream_step < 3) {
		evbuffer_add(b, parts[e->stream_step], strlen(parts[e->stream_step]));
		evhttp_send_reply_chunk(e->stream, b);
		e->stream_step++;
		evtimer_add(e->stream_ev, &tv);
	} else {
		evhttp_send_reply_end(e->stream);
		e->stream = NULL;
	}
	evbuffer_free(b);
}

static void handler(struct evhttp_request *req, void *arg)
{
	struct env *e = arg;
	const char *uri = evhttp_request_get_uri(req);
	struct evbuffer *out = evbuffer_new();

	if (strcmp(uri, "/echo") == 0) {
		const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Test");
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		evbuffer_add_printf(out, "%s %s ", evhttp_request_get_command(req) == EVHTTP_REQ_POST
							  ? "POST" : "GET", h ? h : "-");
		evbuffer_add_buffer(out, in);
		evhttp_send_reply(req, 200, "OK", out);
	} else if (strcmp(uri, "/big") == 0) {
		for (int i = 0; i < 2000; i++)
			evbuffer_add(out, "0123456789", 10);
		evhttp_send_reply(req, 200, "OK", out);
	} else if (strcmp(uri, "/hold") == 0) {
		e->held = req; /* never answered: the client's timeout ends it */
	} else if (strcmp(uri, "/stream") == 0) {
		e->stream = req;
		e->stream_step = 0;
		evhttp_send_reply_start(req, 200, "OK");
		stream_next(-1, 0, e);
	} else {
		evhttp_send_reply(req, 404, "Not Found", out);
	}
	evbuffer_free(out);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct evhttp_bound_socket *bs;

	e->base = event_base_new();
	e->http = evhttp_new(e->base);
	evhttp_set_gencb(e->http, handler, e);
	evhttp_set_allowed_methods(e->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	bs = evhttp_bind_socket_with_handle(e->http, "127.0.0.1", 0);
	assert_non_null(bs);
	e->port = ts_local_port(evhttp_bound_socket_get_fd(bs));
	snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%u", e->port);
	e->curl = sr_curl_new(e->base);
	assert_non_null(e->curl);
	e->stream_ev = evtimer_new(e->base, stream_next, e);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	sr_curl_free(e->curl);
	if (e->held) { /* answered now so that evhttp frees it */
		evhttp_send_reply(e->held, 200, "OK", NULL);
		ts_loop_run_for(e->base, 20);
	}
	if (e->stream) { /* a stream its reader left: end it so evhttp frees it */
		event_del(e->stream_ev);
		evhttp_send_reply_end(e->stream);
		ts_loop_run_for(e->base, 20);
	}
	event_free(e->stream_ev);
	evhttp_free(e->http);
	event_base_free(e->base);
	free(e);
	return 0;
}

static void on_done(int err, long status, const char *body, size_t len, const char *msg,
		    void *arg)
{
	struct result *r = arg;

	r->calls++;
	r->err = err;
	r->status = status;
	r->len = len;
	len = len < sizeof(r->body) - 1 ? len : sizeof(r->body) - 1;
	memcpy(r->body, body, len);
	r->body[len] = '\0';
	snprintf(r->msg, sizeof(r->msg), "%s", msg);
}

static size_t on_lines(const char *p, size_t n, void *arg)
{
	struct result *r = arg;
	const char *nl = memchr(p, '\n', n);

	if (!nl)
		return 0; /* wait for the rest of the line */
	if (r->nlines < 16)
		snprintf(r->lines[r->nlines++], 64, "%.*s", (int)(nl - p), p);
	return (size_t)(nl - p) + 1;
}

static int done_once(void *arg)
{
	return ((struct result *)arg)->calls > 0;
}

static struct sr_curl_req *start(struct env *e, const char *path, struct sr_curl_opts *o,
				 struct result *r)
{
	char url[256], err[256];
	struct sr_curl_req *q;

	snprintf(url, sizeof(url), "%s%s", e->url, path);
	o->url = url;
	q = sr_curl_start(e->curl, o, on_done, r, err, sizeof(err));
	assert_non_null(q);
	return q;
}

static void test_get_and_post(void **state)
{
	struct env *e = *state;
	const char *hdrs[] = {"X-Test: hello"};
	struct sr_curl_opts o = {.headers = hdrs, .nheaders = 1};
	struct result a = {0}, b = {0};

	start(e, "/echo", &o, &a);
	assert_int_equal(a.calls, 0); /* never from inside start */
	o.body = "payload";
	o.body_len = 7;
	start(e, "/echo", &o, &b);
	assert_int_equal(sr_curl_pending(e->curl), 2);
	assert_true(ts_loop_until(e->base, done_once, &a, 5000));
	assert_true(ts_loop_until(e->base, done_once, &b, 5000));
	assert_int_equal(a.err, 0);
	assert_int_equal(a.status, 200);
	assert_string_equal(a.body, "GET hello ");
	assert_int_equal(b.status, 200);
	assert_string_equal(b.body, "POST hello payload");
	assert_int_equal(sr_curl_pending(e->curl), 0);
}

/* A proxy named by the environment would see the API server's and etcd's
 * requests (a plain-HTTP etcd's in clear) and could answer for them: the
 * request goes to the server itself, and the "proxy" gets no connection. */
static void test_proxy_from_the_environment_is_not_used(void **state)
{
	static const char *const vars[] = {"http_proxy", "https_proxy", "HTTPS_PROXY",
					   "all_proxy", "ALL_PROXY"};
	struct env *e = *state;
	struct sr_curl_opts o = {.timeout_ms = 3000};
	struct result r = {0};
	char proxy[64];
	uint16_t port;
	int sink = ts_listen_loopback(0, 1, &port);

	assert_true(sink >= 0);
	snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%u", port);
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		assert_int_equal(setenv(vars[i], proxy, 1), 0);
	start(e, "/echo", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
	assert_int_equal(r.err, 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "GET - ");
	assert_int_equal(accept(sink, NULL, NULL), -1);
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	close(sink);
}

static void test_status_is_not_an_error(void **state)
{
	struct env *e = *state;
	struct sr_curl_opts o = {0};
	struct result r = {0};

	start(e, "/nothing-here", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, 0);
	assert_int_equal(r.status, 404);
}

static void test_answer_over_max_body(void **state)
{
	struct env *e = *state;
	struct sr_curl_opts o = {.max_body = 1000};
	struct result r = {0};

	start(e, "/big", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, SR_ETOOBIG);
	assert_int_equal(r.len, 0);
	assert_non_null(strstr(r.msg, "1000"));
	/* the same request within its bound */
	memset(&r, 0, sizeof(r));
	o.max_body = 20000;
	start(e, "/big", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, 0);
	assert_int_equal(r.len, 20000);
}

static void test_timeout(void **state)
{
	struct env *e = *state;
	struct sr_curl_opts o = {.timeout_ms = 300};
	struct result r = {0};

	start(e, "/hold", &o, &r);
	ts_loop_run_for(e->base, 100);
	assert_int_equal(r.calls, 0);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, SR_ETIMEDOUT);
	assert_true(r.msg[0] != '\0');
}

static void test_stream_lines_in_order(void **state)
{
	struct env *e = *state;
	struct result r = {0};
	struct sr_curl_opts o = {.on_data = on_lines};
	char url[256], err[256];

	snprintf(url, sizeof(url), "%s/stream", e->url);
	o.url = url;
	assert_non_null(sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err)));
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, 0);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.nlines, 4);
	assert_string_equal(r.lines[0], "one");
	assert_string_equal(r.lines[1], "two"); /* split across two chunks */
	assert_string_equal(r.lines[2], "three");
	assert_string_equal(r.lines[3], "four");
	assert_int_equal(r.len, 0);
}

static size_t refuse(const char *p, size_t n, void *arg)
{
	(void)p;
	(void)n;
	(void)arg;
	return (size_t)-1;
}

static void test_stream_refused_by_reader(void **state)
{
	struct env *e = *state;
	struct result r = {0};
	struct sr_curl_opts o = {.on_data = refuse};

	start(e, "/stream", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, SR_ECLOSED);
	assert_int_equal(sr_curl_pending(e->curl), 0);
}

/* A line longer than max_body never ends: the request does. */
static size_t never_a_line(const char *p, size_t n, void *arg)
{
	(void)p;
	(void)n;
	(void)arg;
	return 0;
}

static void test_stream_unconsumed_bound(void **state)
{
	struct env *e = *state;
	struct result r = {0};
	struct sr_curl_opts o = {.on_data = never_a_line, .max_body = 8};

	start(e, "/stream", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, SR_ETOOBIG);
}

struct chain {
	struct env *e;
	struct sr_curl_req *victim;
	struct result victim_r, next_r;
	int calls;
};

static void chain_done(int err, long status, const char *body, size_t len, const char *msg,
		       void *arg)
{
	struct chain *ch = arg;
	struct sr_curl_opts o = {0};

	(void)err;
	(void)status;
	(void)body;
	(void)len;
	(void)msg;
	ch->calls++;
	sr_curl_cancel(ch->victim); /* from a callback: it never completes */
	start(ch->e, "/echo", &o, &ch->next_r); /* and a new one from here works */
}

static void test_cancel_and_start_from_a_callback(void **state)
{
	struct env *e = *state;
	struct chain ch = {.e = e};
	struct sr_curl_opts o = {.timeout_ms = 2000};
	char url[256], err[256];

	ch.victim = start(e, "/hold", &o, &ch.victim_r);
	snprintf(url, sizeof(url), "%s/echo", e->url);
	o.url = url;
	assert_non_null(sr_curl_start(e->curl, &o, chain_done, &ch, err, sizeof(err)));
	assert_true(ts_loop_until_count(e->base, &ch.calls, 1, 5000));
	assert_true(ts_loop_until(e->base, done_once, &ch.next_r, 5000));
	assert_int_equal(ch.next_r.status, 200);
	ts_loop_run_for(e->base, 2500); /* past the victim's own timeout */
	assert_int_equal(ch.victim_r.calls, 0);
	assert_int_equal(sr_curl_pending(e->curl), 0);
}

static void test_connection_refused(void **state)
{
	struct env *e = *state;
	struct result r = {0};
	struct sr_curl_opts o = {0};
	char err[256];
	uint16_t port;
	int fd = ts_listen_loopback(0, 0, &port);

	close(fd); /* a port nobody listens on */
	snprintf(e->url, sizeof(e->url), "http://127.0.0.1:%u", port);
	o.url = e->url;
	assert_non_null(sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err)));
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, SR_EIO);
	assert_true(r.msg[0] != '\0');
}

/* What lets the etcd client repeat a write on another endpoint: a request
 * that never reached a server says so, one that did says that too. */
struct sent_probe {
	struct sr_curl_req *req;
	int calls, err, sent;
};

static void sent_done(int err, long status, const char *body, size_t len, const char *msg,
		      void *arg)
{
	struct sent_probe *p = arg;

	(void)status;
	(void)body;
	(void)len;
	(void)msg;
	p->calls++;
	p->err = err;
	p->sent = sr_curl_sent(p->req);
}

static void test_sent_tells_whether_the_request_left(void **state)
{
	struct env *e = *state;
	struct sent_probe refused = {0}, answered = {0};
	struct sr_curl_opts o = {.body = "x", .body_len = 1};
	char url[256], err[256];
	uint16_t port;
	int fd = ts_listen_loopback(0, 0, &port);

	close(fd);
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/echo", port);
	o.url = url;
	refused.req = sr_curl_start(e->curl, &o, sent_done, &refused, err, sizeof(err));
	assert_non_null(refused.req);
	assert_true(ts_loop_until_count(e->base, &refused.calls, 1, 5000));
	assert_int_equal(refused.err, SR_EIO);
	assert_int_equal(refused.sent, 0);

	snprintf(url, sizeof(url), "%s/echo", e->url);
	answered.req = sr_curl_start(e->curl, &o, sent_done, &answered, err, sizeof(err));
	assert_non_null(answered.req);
	assert_true(ts_loop_until_count(e->base, &answered.calls, 1, 5000));
	assert_int_equal(answered.err, 0);
	assert_int_equal(answered.sent, 1);
}

/* A failed allocation fails one request at most: before, a timer libevent
 * could not arm made libcurl fail every later request of the handle. */
static void must_work_after(struct env *e)
{
	struct sr_curl_opts o = {0};
	struct result r = {0};

	start(e, "/echo", &o, &r);
	assert_true(ts_loop_until(e->base, done_once, &r, 5000));
	assert_int_equal(r.err, 0);
	assert_int_equal(r.status, 200);
}

static int start_once(void *arg, unsigned long n)
{
	struct env *e;
	void *st = NULL;
	struct sr_curl_opts o = {.body = "x", .body_len = 1};
	const char *hdrs[] = {"X-Test: a"};
	struct result r = {0};
	struct sr_curl_req *q;
	char url[256], err[256] = "";

	(void)arg;
	/* a fresh loop each time: libevent's timer heap grows on the first
	 * timer, which is what failed */
	setup(&st);
	e = st;
	o.headers = hdrs;
	o.nheaders = 1;
	snprintf(url, sizeof(url), "%s/echo", e->url);
	o.url = url;
	ts_alloc_arm(n);
	q = sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err));
	ts_alloc_disarm();
	if (q)
		sr_curl_cancel(q);
	else
		assert_true(err[0] != '\0');
	must_work_after(e);
	assert_int_equal(r.calls, 0);
	teardown(&st);
	return q ? 0 : SR_ENOMEM;
}

static int request_once(void *arg, unsigned long n)
{
	struct env *e = arg;
	struct sr_curl_opts o = {0};
	struct result r = {0};
	struct sr_curl_req *q;
	char url[256], err[256] = "";

	snprintf(url, sizeof(url), "%s/big", e->url);
	o.url = url;
	/* ours only: libevent may lose a callback for good when its own
	 * allocation fails inside the loop */
	ts_alloc_arm_ours(n);
	q = sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err));
	if (q)
		ts_loop_until(e->base, done_once, &r, 5000);
	ts_alloc_disarm();
	if (q)
		assert_int_equal(r.calls, 1); /* an answer or an error, never silence */
	must_work_after(e);
	return q && r.err == 0 && r.len == 20000 ? 0 : SR_ENOMEM;
}

static void test_failed_allocations_fail_one_request(void **state)
{
	struct ts_alloc_result res;

	ts_alloc_sweep("sr_curl_start", start_once, *state, &res);
	assert_int_equal(res.absorbed, 0);
	ts_alloc_sweep("sr_curl request", request_once, *state, &res);
}

static void test_bad_options_refused(void **state)
{
	struct env *e = *state;
	struct result r = {0};
	const char *hdrs[] = {"X-Test: a\r\nInjected: b"};
	struct sr_curl_opts o = {.url = "ftp://127.0.0.1/"};
	char err[256];

	assert_null(sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err)));
	assert_non_null(strstr(err, "http://"));
	o.url = e->url;
	o.headers = hdrs;
	o.nheaders = 1;
	assert_null(sr_curl_start(e->curl, &o, on_done, &r, err, sizeof(err)));
	assert_non_null(strstr(err, "line break"));
	assert_int_equal(sr_curl_pending(e->curl), 0);
	ts_loop_run_for(e->base, 50);
	assert_int_equal(r.calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_get_and_post, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_proxy_from_the_environment_is_not_used, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_status_is_not_an_error, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_answer_over_max_body, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stream_lines_in_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stream_refused_by_reader, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stream_unconsumed_bound, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cancel_and_start_from_a_callback, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_options_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_sent_tells_whether_the_request_left, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_failed_allocations_fail_one_request, setup,
					    teardown),
	};
	int rc;

	ts_alloc_init();
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
