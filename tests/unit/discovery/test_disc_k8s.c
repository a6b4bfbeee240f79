/* Kubernetes discovery: the EndpointSlice parser on a recorded list and on
 * malformed and oversized ones, the service-account files, and the request
 * against a stand-in API server played by the test (HTTPS with a
 * certificate made at test time, checking the bearer token, serving
 * recorded JSON). No real Kubernetes API server runs here. Then k8s:
 * entries through disc_lookup: the TLS name, random order, the last
 * answer kept while the API server fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/ssl.h>

#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "discovery/disc.h"
#include "discovery/disc_k8s.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pki.h"
#include "tests/support/ts_sys.h"

#define WAIT_MS 5000
#define TOKEN "eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl"
#define PATH                                                                                   \
	"/apis/discovery.k8s.io/v1/namespaces/sparkrelay/endpointslices"                       \
	"?labelSelector=kubernetes.io%2Fservice-name%3Dsparkrelay"

static struct ts_pki pki;
static char *recorded; /* k8s/endpointslices.json */
static size_t recorded_len;

static uint32_t rng = 99;

static uint32_t rand_below(uint32_t k)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng % k;
}

/* ---- the parser --------------------------------------------------------------- */

struct parsed {
	int rc;
	size_t n, ready;
	struct disc_ep eps[DISC_K8S_MAX_EPS];
	char err[512];
	char addr[DISC_K8S_MAX_EPS][SR_ADDRSTRLEN];
};

static struct parsed P;

static int parse_n(const char *body, size_t len, const char *port, size_t max)
{
	memset(&P, 0, sizeof(P));
	P.rc = disc_k8s_parse(body, len, port, P.eps, max, &P.n, &P.ready, rand_below, P.err,
			      sizeof(P.err));
	for (size_t i = 0; i < P.n; i++)
		sr_format_addr((const struct sockaddr *)&P.eps[i].ss, P.addr[i],
			       sizeof(P.addr[i]));
	return P.rc;
}

static int parse(const char *body, const char *port)
{
	return parse_n(body, strlen(body), port, DISC_K8S_MAX_EPS);
}

static void test_recorded_list(void **state)
{
	(void)state;
	assert_int_equal(parse_n(recorded, recorded_len, "tunnel", DISC_K8S_MAX_EPS), 0);
	/* Ready true or absent; the terminating and not-ready ones left out;
	 * the FQDN slice skipped; the port named "tunnel", not "metrics". */
	assert_int_equal(P.n, 4);
	assert_int_equal(P.ready, 4);
	assert_string_equal(P.addr[0], "10.0.1.17:8443");
	assert_string_equal(P.addr[1], "10.0.3.9:8443");
	assert_string_equal(P.addr[2], "10.0.3.27:8443");
	assert_string_equal(P.addr[3], "[fd00:10:0:1::17]:8443");
	assert_int_equal(P.eps[0].len, sizeof(struct sockaddr_in));
	assert_int_equal(P.eps[3].len, sizeof(struct sockaddr_in6));
	assert_int_equal(parse_n(recorded, recorded_len, "metrics", 2), 0);
	assert_int_equal(P.n, 2);
	assert_int_equal(P.ready, 4);
	assert_int_equal(parse_n(recorded, recorded_len, "grpc", DISC_K8S_MAX_EPS), SR_EPROTO);
	assert_string_equal(P.err, "no EndpointSlice has a TCP port named \"grpc\"");
	/* no port named: only a Service with one port will do */
	assert_int_equal(parse_n(recorded, recorded_len, NULL, DISC_K8S_MAX_EPS), SR_EPROTO);
	assert_contains(P.err, "items[0]: the Service has 2 TCP ports: name one in the relay "
			       "entry");
}

#define SLICE(type, eps, ports)                                                                \
	"{\"kind\": \"EndpointSliceList\", \"items\": [{\"addressType\": \"" type              \
	"\", \"endpoints\": " eps ", \"ports\": " ports "}]}"
#define ONE_PORT "[{\"port\": 8443}]"

static void test_small_lists(void **state)
{
	(void)state;
	/* the only port, unnamed, protocol absent (TCP) */
	assert_int_equal(
	    parse(SLICE("IPv4", "[{\"addresses\": [\"192.0.2.1\"]}]", ONE_PORT), NULL), 0);
	assert_int_equal(P.n, 1);
	assert_string_equal(P.addr[0], "192.0.2.1:8443");
	/* UDP ports and "all ports" (no number) are not dialled */
	assert_int_equal(
	    parse(SLICE("IPv4", "[{\"addresses\": [\"192.0.2.1\"]}]",
			"[{\"port\": 53, \"protocol\": \"UDP\"}, {\"name\": \"t\"}, "
			"{\"port\": 8443, \"protocol\": \"TCP\"}]"),
		  NULL),
	    0);
	assert_string_equal(P.addr[0], "192.0.2.1:8443");
	/* empty answers are answers */
	assert_int_equal(parse("{\"kind\": \"EndpointSliceList\", \"items\": []}", "tunnel"),
			 0);
	assert_int_equal(P.n, 0);
	assert_int_equal(parse("{\"items\": null}", "tunnel"), 0);
	assert_int_equal(parse(SLICE("IPv4", "null", ONE_PORT), NULL), 0);
	assert_int_equal(P.n, 0);
	/* ready null counts as ready, as the API says */
	assert_int_equal(parse(SLICE("IPv4",
				     "[{\"addresses\": [\"192.0.2.1\"], \"conditions\": "
				     "{\"ready\": null}}]",
				     ONE_PORT),
			       NULL),
			 0);
	assert_int_equal(P.n, 1);
	/* one address in two slices is one relay; extra addresses of an
	 * endpoint are checked but only the first is used */
	assert_int_equal(
	    parse("{\"items\": [{\"addressType\": \"IPv4\", \"endpoints\": [{\"addresses\": "
		  "[\"192.0.2.1\", \"192.0.2.9\"]}], \"ports\": [{\"port\": 1}]}, "
		  "{\"addressType\": \"IPv4\", \"endpoints\": [{\"addresses\": "
		  "[\"192.0.2.1\"]}], "
		  "\"ports\": [{\"port\": 1}]}]}",
		  NULL),
	    0);
	assert_int_equal(P.n, 1);
	assert_int_equal(P.ready, 1);
}

static void expect_bad(const char *body, int rc, const char *why)
{
	if (parse(body, NULL) != rc)
		fail_msg("%s: got %d (%s), want %d", body, P.rc, P.err, rc);
	assert_contains(P.err, why);
	assert_int_equal(P.n, 0);
	assert_int_equal(P.ready, 0);
}

static void test_malformed_lists(void **state)
{
	static const struct {
		const char *body, *why;
	} bad[] = {
	    {"", "not JSON"},
	    {"{\"items\": [", "not JSON"},
	    {"[]", "not a JSON object"},
	    {"{\"kind\": \"Status\", \"items\": []}",
	     "not an EndpointSliceList (kind \"Status\")"},
	    {"{\"kind\": \"x\\u0007\\n\", \"items\": []}", "(kind \"x\\x07\\x0a\")"},
	    {"{\"kind\": 7}", "not an EndpointSliceList"},
	    {"{}", "items: not a list"},
	    {"{\"items\": {}}", "items: not a list"},
	    {"{\"items\": [7]}", "items[0]: not an object"},
	    {"{\"items\": [{}]}", "items[0].addressType: not a string"},
	    {SLICE("IPv4", "[]", "{}"), "items[0].ports: not a list"},
	    {SLICE("IPv4", "[]", "[7]"), "items[0].ports[0]: not an object"},
	    {SLICE("IPv4", "[]", "[{\"port\": \"8443\"}]"),
	     "items[0].ports[0].port: not an integer"},
	    {SLICE("IPv4", "[]", "[{\"port\": 0}]"), "items[0].ports[0].port: not in 1..65535"},
	    {SLICE("IPv4", "[]", "[{\"port\": 65536}]"), "ports[0].port: not in 1..65535"},
	    {SLICE("IPv4", "[]", "[{\"port\": -1}]"), "ports[0].port: not in 1..65535"},
	    {SLICE("IPv4", "[]", "[{\"port\": 1.5}]"), "ports[0].port: not an integer"},
	    {SLICE("IPv4", "[]", "[{\"name\": 1, \"port\": 1}]"),
	     "ports[0].name: not a string"},
	    {SLICE("IPv4", "[]", "[{\"protocol\": 6, \"port\": 1}]"),
	     "ports[0].protocol: not a string"},
	    {SLICE("IPv4", "{}", ONE_PORT), "items[0].endpoints: not a list"},
	    {SLICE("IPv4", "[7]", ONE_PORT), "items[0].endpoints[0]: not an object"},
	    {SLICE("IPv4", "[{}]", ONE_PORT), "endpoints[0].addresses: not a list of 1..100"},
	    {SLICE("IPv4", "[{\"addresses\": []}]", ONE_PORT), "not a list of 1..100"},
	    {SLICE("IPv4", "[{\"addresses\": [7]}]", ONE_PORT), "not all IPv4 addresses"},
	    {SLICE("IPv4", "[{\"addresses\": [\"relay.example.com\"]}]", ONE_PORT),
	     "endpoints[0].addresses: not all IPv4 addresses"},
	    {SLICE("IPv4", "[{\"addresses\": [\"fd00::1\"]}]", ONE_PORT), "not all IPv4"},
	    {SLICE("IPv6", "[{\"addresses\": [\"10.0.0.1\"]}]", ONE_PORT), "not all IPv6"},
	    {SLICE("IPv4", "[{\"addresses\": [\"10.0.0.1\\n\"]}]", ONE_PORT), "not all IPv4"},
	    {SLICE("IPv4", "[{\"addresses\": [\"10.0.0.1\", \"x\"]}]", ONE_PORT),
	     "not all IPv4"},
	    {SLICE("IPv4", "[{\"addresses\": [\"010.0.0.1\"]}]", ONE_PORT), "not all IPv4"},
	    {SLICE("IPv4", "[{\"addresses\": [\"10.0.0.1\"], \"conditions\": 1}]", ONE_PORT),
	     "endpoints[0].conditions: not an object"},
	    {SLICE("IPv4",
		   "[{\"addresses\": [\"10.0.0.1\"], \"conditions\": {\"ready\": \"true\"}}]",
		   ONE_PORT),
	     "endpoints[0].conditions.ready: not a boolean"},
	    /* a key twice: which one would the API server have meant? */
	    {"{\"items\": [], \"items\": []}", "not JSON"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_bad(bad[i].body, SR_EPROTO, bad[i].why);
	/* NUL inside a string */
	assert_int_equal(parse_n("{\"kind\": \"a\\u0000b\"}", 20, NULL, 8), SR_EPROTO);
}

/* Sizes past what the API can produce are refused, not walked. */
static void test_oversized_lists(void **state)
{
	size_t cap = 1001 * 40 + 200, o = 0;
	char *big = malloc(cap);
	char *huge;

	(void)state;
	assert_non_null(big);
	o += (size_t)snprintf(big + o, cap - o,
			      "{\"items\": [{\"addressType\": \"IPv4\", \"ports\": "
			      "[{\"port\": 1}], \"endpoints\": [");
	for (int i = 0; i < 1001; i++)
		o += (size_t)snprintf(big + o, cap - o, "%s{\"addresses\": [\"10.0.%d.%d\"]}",
				      i ? "," : "", i / 250, i % 250);
	o += (size_t)snprintf(big + o, cap - o, "]}]}");
	assert_int_equal(parse_n(big, o, NULL, 8), SR_EPROTO);
	assert_contains(P.err, "items[0].endpoints: more than 1000 endpoints in one slice");
	free(big);
	huge = calloc(1, DISC_K8S_MAX_BODY + 2);
	assert_non_null(huge);
	memset(huge, ' ', DISC_K8S_MAX_BODY + 1);
	huge[0] = '{';
	huge[DISC_K8S_MAX_BODY] = '}';
	assert_int_equal(parse_n(huge, DISC_K8S_MAX_BODY + 1, NULL, 8), SR_ETOOBIG);
	assert_contains(P.err, "over 4194304");
	free(huge);
}

/* Resident memory of this process now, in KiB. */
static long rss_kib(void)
{
	long pages = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
			resident = 0;
		fclose(f);
	}
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* 4 MiB of empty objects is under the byte cap, but 1.4 million JSON
 * values: about 320 MiB parsed (more under ASan), on the sidecar's event
 * loop, before the slice count could refuse it. Refused before the parse;
 * a child measures what the parse of it costs. */
static void test_many_tiny_objects_are_refused_before_the_parse(void **state)
{
	size_t cap = DISC_K8S_MAX_BODY, o = 0;
	char *body = malloc(cap);
	int status;
	pid_t pid;

	(void)state;
	assert_non_null(body);
	o += (size_t)snprintf(body, cap, "{\"items\": [{}");
	while (o + 8 < cap) {
		memcpy(body + o, ",{}", 3);
		o += 3;
	}
	memcpy(body + o, "]}", 2);
	o += 2;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		long before = rss_kib();
		struct rusage ru;
		int rc = parse_n(body, o, NULL, 8);
		getrusage(RUSAGE_SELF, &ru);
		_exit(rc != SR_ETOOBIG ? 2 : ru.ru_maxrss - before > 64 * 1024 ? 3 : 0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(parse_n(body, o, NULL, 8), SR_ETOOBIG);
	assert_contains(P.err, "over 200000 JSON objects and arrays");
	free(body);
}

/* More Ready endpoints than kept: a random sample of all of them, so that
 * sidecars spread over the whole fleet. */
static void test_sample_of_a_large_service(void **state)
{
	size_t cap = 300 * 48 + 200, o = 0;
	char *body = malloc(cap);
	int seen_late = 0, seen[300] = {0};

	(void)state;
	assert_non_null(body);
	o += (size_t)snprintf(body + o, cap - o,
			      "{\"items\": [{\"addressType\": \"IPv4\", \"ports\": "
			      "[{\"port\": 8443}], \"endpoints\": [");
	for (int i = 0; i < 300; i++)
		o += (size_t)snprintf(body + o, cap - o, "%s{\"addresses\": [\"10.1.%d.%d\"]}",
				      i ? "," : "", i / 200, i % 200 + 1);
	o += (size_t)snprintf(body + o, cap - o, "]}]}");
	for (int run = 0; run < 20; run++) {
		assert_int_equal(parse_n(body, o, NULL, 16), 0);
		assert_int_equal(P.n, 16);
		assert_int_equal(P.ready, 300);
		for (size_t i = 0; i < P.n; i++) {
			const struct sockaddr_in *sin =
			    (const struct sockaddr_in *)&P.eps[i].ss;
			uint32_t a = ntohl(sin->sin_addr.s_addr);
			int idx = (int)((a >> 8) & 0xff) * 200 + (int)(a & 0xff) - 1;

			assert_in_range(idx, 0, 299);
			seen[idx]++;
			seen_late += idx >= 16;
			for (size_t j = 0; j < i; j++)
				assert_memory_not_equal(&P.eps[i].ss, &P.eps[j].ss,
							P.eps[i].len);
		}
	}
	assert_true(seen_late > 20 * 16 / 2);
	free(body);
}

/* ---- files ------------------------------------------------------------------------ */

static void test_namespace_file(void **state)
{
	char path[192], ns[DISC_K8S_NAME_MAX + 1], err[256];

	(void)state;
	ts_dir_file(&pki.dir, "namespace", path, sizeof(path));
	ts_write_file(path, "sparkrelay\n");
	assert_int_equal(disc_k8s_read_namespace(path, ns, sizeof(ns), err, sizeof(err)), 0);
	assert_string_equal(ns, "sparkrelay");
	ts_write_file(path, "Spark Relay");
	assert_int_equal(disc_k8s_read_namespace(path, ns, sizeof(ns), err, sizeof(err)),
			 SR_EINVAL);
	assert_contains(err, "does not hold a namespace name");
	unlink(path);
	assert_int_equal(disc_k8s_read_namespace(path, ns, sizeof(ns), err, sizeof(err)),
			 SR_EIO);
	assert_contains(err, "cannot open the namespace file");
	assert_int_equal(
	    disc_k8s_read_namespace(pki.dir.path, ns, sizeof(ns), err, sizeof(err)), SR_EIO);
	assert_contains(err, "is not a regular file of at most 256 bytes");
}

static void test_names(void **state)
{
	(void)state;
	assert_true(disc_k8s_name_ok("sparkrelay"));
	assert_true(disc_k8s_name_ok("a-1"));
	assert_false(disc_k8s_name_ok("-a"));
	assert_false(disc_k8s_name_ok("a-"));
	assert_false(disc_k8s_name_ok("A"));
	assert_false(disc_k8s_name_ok("a.b"));
	assert_false(disc_k8s_name_ok(""));
	assert_false(disc_k8s_name_ok(NULL));
	assert_true(disc_k8s_port_name_ok("tunnel"));
	assert_true(disc_k8s_port_name_ok("h2-tls"));
	assert_false(disc_k8s_port_name_ok("8443")); /* needs a letter */
	assert_false(disc_k8s_port_name_ok("a--b"));
	assert_false(disc_k8s_port_name_ok("abcdefghijklmnop")); /* 16 */
	assert_false(disc_k8s_port_name_ok("Tunnel"));
}

/* ---- the stand-in API server --------------------------------------------------------- */

struct api {
	struct event_base *base;
	struct evhttp *http;
	SSL_CTX *ctx;
	uint16_t port;
	int status;
	const char *body;
	size_t body_len;
	int hold; /* never answer */
	struct evhttp_request *held;
	int requests, bad_token;
	char last_uri[512];
};

static struct bufferevent *api_bevcb(struct event_base *base, void *arg)
{
	struct api *a = arg;
	SSL *ssl = SSL_new(a->ctx); /* fails in the allocation sweeps too */

	if (!ssl)
		return NULL; /* evhttp speaks plain HTTP then: the client's TLS fails */
	return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
					      BEV_OPT_CLOSE_ON_FREE);
}

static void api_handler(struct evhttp_request *req, void *arg)
{
	struct api *a = arg;
	struct evbuffer *out = evbuffer_new();
	const char *auth =
	    evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");

	a->requests++;
	snprintf(a->last_uri, sizeof(a->last_uri), "%s", evhttp_request_get_uri(req));
	if (!auth || strcmp(auth, "Bearer " TOKEN) != 0) {
		a->bad_token++;
		evbuffer_add_printf(out, "{\"kind\": \"Status\", \"status\": \"Failure\", "
					 "\"message\": \"Unauthorized\", \"code\": 401}");
		evhttp_send_reply(req, 401, "Unauthorized", out);
	} else if (strcmp(a->last_uri, PATH) != 0) {
		evhttp_send_reply(req, 404, "Not Found", out);
	} else if (a->hold) {
		a->held = req;
	} else {
		evbuffer_add(out, a->body, a->body_len);
		evhttp_send_reply(req, a->status, "X", out);
	}
	evbuffer_free(out);
}

static void api_start(struct api *a, struct event_base *base)
{
	struct evhttp_bound_socket *bs;

	memset(a, 0, sizeof(*a));
	a->base = base;
	a->status = 200;
	a->body = recorded;
	a->body_len = recorded_len;
	a->ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(a->ctx);
	assert_int_equal(SSL_CTX_use_certificate_chain_file(a->ctx, pki.relay_pem), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(a->ctx, pki.relay_key, SSL_FILETYPE_PEM),
			 1);
	a->http = evhttp_new(base);
	assert_non_null(a->http);
	evhttp_set_bevcb(a->http, api_bevcb, a);
	evhttp_set_gencb(a->http, api_handler, a);
	bs = evhttp_bind_socket_with_handle(a->http, "127.0.0.1", 0);
	assert_non_null(bs);
	a->port = ts_local_port(evhttp_bound_socket_get_fd(bs));
}

static void api_stop(struct api *a)
{
	if (!a->http)
		return;
	if (a->held) {
		evhttp_send_reply(a->held, 500, "X", NULL);
		ts_loop_run_for(a->base, 20);
	}
	evhttp_free(a->http);
	SSL_CTX_free(a->ctx);
	memset(a, 0, sizeof(*a));
}

/* ---- fixture ----------------------------------------------------------------------- */

struct got {
	int calls, err;
	size_t n, ready;
	char msg[512];
	struct disc_addr addrs[DISC_MAX_ADDRS];
	char addr[DISC_MAX_ADDRS][SR_ADDRSTRLEN];
};

struct fx {
	struct event_base *base;
	struct sr_curl *curl;
	struct api api;
	struct got got;
	int returned, early;
	char url[64], token[192], nsfile[192];
	struct disc_opts o;
	struct disc *disc;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_non_null(f->base = event_base_new());
	assert_non_null(f->curl = sr_curl_new(f->base));
	api_start(&f->api, f->base);
	snprintf(f->url, sizeof(f->url), "https://127.0.0.1:%u", f->api.port);
	ts_dir_file(&pki.dir, "token", f->token, sizeof(f->token));
	ts_write_file(f->token, TOKEN "\n");
	ts_dir_file(&pki.dir, "namespace", f->nsfile, sizeof(f->nsfile));
	ts_write_file(f->nsfile, "sparkrelay\n");
	f->o.k8s_api_server = f->url;
	f->o.k8s_token_file = f->token;
	f->o.k8s_ca_file = pki.ca;
	f->o.k8s_namespace_file = f->nsfile;
	f->o.timeout_ms = 3000;
	f->o.nameservers[0] = (char *)"127.0.0.1:1"; /* never asked: no name to look up */
	f->o.nnameservers = 1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	disc_free(f->disc);
	sr_curl_free(f->curl);
	api_stop(&f->api);
	ts_loop_run_for(f->base, 10);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void on_fetch(int err, const struct disc_ep *eps, size_t n, size_t ready,
		     const char *msg, void *arg)
{
	struct fx *f = arg;

	if (!f->returned)
		f->early = 1;
	f->got.calls++;
	f->got.err = err;
	f->got.n = n;
	f->got.ready = ready;
	snprintf(f->got.msg, sizeof(f->got.msg), "%s", msg);
	for (size_t i = 0; i < n && i < DISC_MAX_ADDRS; i++)
		sr_format_addr((const struct sockaddr *)&eps[i].ss, f->got.addr[i],
			       sizeof(f->got.addr[i]));
}

static struct disc_k8s_opts kopts(struct fx *f)
{
	struct disc_k8s_opts o = {
	    .api_server = f->url,
	    .token_file = f->token,
	    .ca_file = pki.ca,
	    .ns = "sparkrelay",
	    .service = "sparkrelay",
	    .port_name = "tunnel",
	    .timeout_ms = 3000,
	};
	return o;
}

static void fetch(struct fx *f, const struct disc_k8s_opts *o)
{
	char err[256] = "";
	struct disc_k8s_req *r;

	memset(&f->got, 0, sizeof(f->got));
	f->returned = 0;
	r = disc_k8s_fetch(f->base, f->curl, o, on_fetch, f, err, sizeof(err));
	f->returned = 1;
	if (!r)
		fail_msg("disc_k8s_fetch: %s", err);
	assert_true(ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS));
	ts_loop_run_for(f->base, 10);
	assert_int_equal(f->got.calls, 1);
	assert_false(f->early);
}

/* ---- the request --------------------------------------------------------------------- */

static void test_fetch(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	char slash[80];

	fetch(f, &o);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 4);
	assert_int_equal(f->got.ready, 4);
	assert_string_equal(f->got.addr[3], "[fd00:10:0:1::17]:8443");
	assert_int_equal(f->api.bad_token, 0);
	assert_string_equal(f->api.last_uri, PATH);
	/* an API server URL with a trailing '/' names the same paths */
	snprintf(slash, sizeof(slash), "%s//", f->url);
	o.api_server = slash;
	fetch(f, &o);
	assert_int_equal(f->got.err, 0);
	assert_string_equal(f->api.last_uri, PATH);
}

static void test_fetch_refused(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	static const char forbidden[] =
	    "{\"kind\": \"Status\", \"message\": \"endpointslices.discovery.k8s.io is "
	    "forbidden: "
	    "User \\\"system:serviceaccount:nb:default\\\" cannot list\\n\", \"code\": 403}";

	ts_write_file(f->token, "another-token");
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_EDENIED);
	assert_string_equal(f->got.msg,
			    "HTTP 401 (the API server refused the token): \"Unauthorized\"");
	ts_write_file(f->token, TOKEN);
	f->api.status = 403;
	f->api.body = forbidden;
	f->api.body_len = strlen(forbidden);
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_EDENIED);
	assert_contains(f->got.msg, "HTTP 403 (the service account may not list endpointslices "
				    "in this namespace): \"endpointslices.discovery.k8s.io is "
				    "forbidden: User \\\"system:serviceaccount:nb:default\\\" "
				    "cannot list\\x0a\"");
	f->api.status = 500;
	f->api.body = "<html>";
	f->api.body_len = 6;
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_EPROTO);
	assert_string_equal(f->got.msg, "HTTP 500");
	o.ns = "elsewhere";
	fetch(f, &o);
	assert_string_equal(f->got.msg, "HTTP 404 (no such namespace or API)");
}

static void test_fetch_bad_answers(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	char *big = malloc(DISC_K8S_MAX_BODY + 100);

	assert_non_null(big);
	memset(big, ' ', DISC_K8S_MAX_BODY + 100);
	f->api.body = "{\"items\": [{\"addressType\": 4}]}";
	f->api.body_len = strlen(f->api.body);
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_EPROTO);
	assert_string_equal(f->got.msg, "items[0].addressType: not a string");
	f->api.body = big;
	f->api.body_len = DISC_K8S_MAX_BODY + 100;
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_ETOOBIG);
	f->api.hold = 1;
	o.timeout_ms = 300;
	fetch(f, &o);
	assert_int_equal(f->got.err, SR_ETIMEDOUT);
	free(big);
}

static void test_fetch_wrong_ca(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	/* a CA that did not sign the server's certificate: the sidecar's own */
	o.ca_file = pki.sidecar_pem;
	fetch(f, &o);
	assert_int_not_equal(f->got.err, 0);
	assert_int_equal(f->api.requests, 0);
}

/* The configured CA is the only one trusted. libcurl also has a built-in
 * directory of CAs (Debian's: every public CA); with it beside the file,
 * anyone with a public certificate for the API server's name could take
 * the service account's token and answer with relays of their choosing.
 * That directory is replaced, in a mount namespace of this process, by one
 * holding the CA that signed the stand-in API server: a fetch that names
 * another CA must still fail. Needs root (a mount namespace). */
static void test_ca_file_alone_is_trusted(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	char *path = NULL, capath[256], dir[192], name[256];
	struct stat st;
	CURL *c = curl_easy_init();
	X509 *ca;

	assert_non_null(c);
	if (curl_easy_getinfo(c, CURLINFO_CAPATH, &path) != CURLE_OK || !path ||
	    strlen(path) >= sizeof(capath)) {
		curl_easy_cleanup(c);
		skip(); /* no built-in directory: nothing to ignore */
	}
	snprintf(capath, sizeof(capath), "%s", path);
	curl_easy_cleanup(c);
	if (geteuid() != 0 || stat(capath, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    unshare(CLONE_NEWNS) != 0)
		skip();
	assert_int_equal(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0);
	ts_dir_file(&pki.dir, "capath", dir, sizeof(dir));
	assert_int_equal(mkdir(dir, 0755), 0);
	assert_non_null(ca = ts_read_cert(pki.ca));
	snprintf(name, sizeof(name), "%s/%08lx.0", dir, X509_subject_name_hash(ca));
	X509_free(ca);
	assert_int_equal(symlink(pki.ca, name), 0);
	assert_int_equal(mount(dir, capath, NULL, MS_BIND, NULL), 0);

	/* A CA that did not sign the server's certificate: the sidecar's. */
	o.ca_file = pki.sidecar_pem;
	fetch(f, &o);
	assert_int_equal(umount(capath), 0);
	assert_int_not_equal(f->got.err, 0);
	assert_int_equal(f->api.requests, 0);
}

/* libcurl opens the CA file by name on the event loop: a FIFO there would
 * block the whole sidecar in open(), past every timeout. Refused at once
 * (alarm: a hang fails the test instead of stalling it). */
static void test_ca_file_that_is_a_fifo_is_refused(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	char err[256] = "", fifo[192];

	ts_dir_file(&pki.dir, "ca-fifo", fifo, sizeof(fifo));
	assert_int_equal(mkfifo(fifo, 0600), 0);
	o.ca_file = fifo;
	alarm(10);
	assert_null(disc_k8s_fetch(f->base, f->curl, &o, on_fetch, f, err, sizeof(err)));
	ts_loop_run_for(f->base, 100);
	alarm(0);
	assert_contains(err, "not a regular file");
	assert_int_equal(f->got.calls, 0);
	assert_int_equal(f->api.requests, 0);
}

static void test_token_file_problems(void **state)
{
	struct fx *f = *state;
	struct disc_k8s_opts o = kopts(f);
	char err[256], *big;

	o.token_file = "/nonexistent/token";
	assert_null(disc_k8s_fetch(f->base, f->curl, &o, on_fetch, f, err, sizeof(err)));
	assert_contains(err, "cannot open the token file /nonexistent/token");
	o.token_file = f->token;
	ts_write_file(f->token, "  \n");
	assert_null(disc_k8s_fetch(f->base, f->curl, &o, on_fetch, f, err, sizeof(err)));
	assert_contains(err, "is empty or has bytes other than printable ASCII");
	ts_write_file(f->token, "abc\r\nX-Injected: 1");
	assert_null(disc_k8s_fetch(f->base, f->curl, &o, on_fetch, f, err, sizeof(err)));
	assert_contains(err, "is empty or has bytes other than printable ASCII");
	big = malloc(17 * 1024);
	assert_non_null(big);
	memset(big, 'a', 17 * 1024 - 1);
	big[17 * 1024 - 1] = '\0';
	ts_write_file(f->token, big);
	free(big);
	assert_null(disc_k8s_fetch(f->base, f->curl, &o, on_fetch, f, err, sizeof(err)));
	assert_contains(err, "of at most 16384 bytes");
	ts_loop_run_for(f->base, 20);
	assert_int_equal(f->api.requests, 0);
	assert_int_equal(f->got.calls, 0);
}

/* ---- k8s: entries through disc_lookup --------------------------------------------------- */

static void on_lookup(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct fx *f = arg;

	if (!f->returned)
		f->early = 1;
	f->got.calls++;
	f->got.err = err;
	f->got.n = n;
	if (n)
		memcpy(f->got.addrs, addrs, n * sizeof(*addrs));
	for (size_t i = 0; i < n; i++)
		sr_format_addr((const struct sockaddr *)&addrs[i].ss, f->got.addr[i],
			       sizeof(f->got.addr[i]));
}

static void disc_make(struct fx *f, char *const *targets, size_t n)
{
	char err[256] = "";

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

#define T(...) ((char *[]){__VA_ARGS__})
#define N(...) (sizeof((char *[]){__VA_ARGS__}) / sizeof(char *))
#define DISC(f, ...) disc_make((f), T(__VA_ARGS__), N(__VA_ARGS__))

static int has(const struct fx *f, const char *addr)
{
	for (size_t i = 0; i < f->got.n; i++)
		if (strcmp(f->got.addr[i], addr) == 0)
			return 1;
	return 0;
}

/* The Ready endpoints, in a random order, each with the Service's name to
 * verify; the namespace from the namespace file. */
static void test_lookup_k8s_entry(void **state)
{
	struct fx *f = *state;
	int first_differs = 0;
	char first[SR_ADDRSTRLEN];

	f->o.cache_s = 60;
	DISC(f, "127.0.0.1:7000", "k8s:sparkrelay:tunnel");
	lookup(f);
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 5);
	assert_string_equal(f->got.addr[0], "127.0.0.1:7000");
	for (size_t i = 1; i < 5; i++)
		assert_string_equal(f->got.addrs[i].host, "sparkrelay.sparkrelay.svc");
	assert_true(has(f, "10.0.1.17:8443") && has(f, "10.0.3.9:8443") &&
		    has(f, "10.0.3.27:8443") && has(f, "[fd00:10:0:1::17]:8443"));
	snprintf(first, sizeof(first), "%s", f->got.addr[1]);
	for (int i = 0; i < 30; i++) {
		lookup(f);
		first_differs |= strcmp(first, f->got.addr[1]) != 0;
	}
	assert_true(first_differs);
	assert_int_equal(f->api.requests, 1); /* reused for cache_s */
	/* a namespace named in the entry */
	DISC(f, "k8s:sparkrelay/sparkrelay");
	f->api.body = SLICE("IPv4", "[{\"addresses\": [\"192.0.2.7\"]}]", ONE_PORT);
	f->api.body_len = strlen(f->api.body);
	lookup(f);
	assert_int_equal(f->got.n, 1);
	assert_string_equal(f->got.addr[0], "192.0.2.7:8443");
	assert_string_equal(f->got.addrs[0].host, "sparkrelay.sparkrelay.svc");
}

static int saved_stderr = -1;
static char cap_path[64];

static void capture_start(void)
{
	int fd;

	snprintf(cap_path, sizeof(cap_path), "/tmp/sr-disc-k8s-log-%d", (int)getpid());
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

static void test_lookup_keeps_last_answer(void **state)
{
	struct fx *f = *state;
	char *log;

	f->o.cache_s = 0;
	f->o.stale_s = 600;
	DISC(f, "k8s:sparkrelay:tunnel");
	lookup(f);
	assert_int_equal(f->got.n, 4);
	f->api.status = 503;
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, 0);
	assert_int_equal(f->got.n, 4);
	assert_contains(log,
			"relay discovery k8s:sparkrelay:tunnel: listing EndpointSlices "
			"failed: HTTP 503; using its answer from 0 s ago (4 addresses, kept "
			"up to 600 s)");
	free(log);
	/* no Ready endpoint is an answer, not a failure */
	f->api.status = 200;
	f->api.body = SLICE("IPv4",
			    "[{\"addresses\": [\"192.0.2.7\"], \"conditions\": "
			    "{\"ready\": false}}]",
			    "[{\"name\": \"tunnel\", \"port\": 8443}]");
	f->api.body_len = strlen(f->api.body);
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.err, SR_ERESOLVE);
	assert_contains(log, "relay discovery k8s:sparkrelay:tunnel: no relay (0 Ready "
			     "endpoints)");
	free(log);
	/* a failure now has nothing to fall back on */
	f->api.status = 503;
	lookup(f);
	assert_int_equal(f->got.err, SR_ERESOLVE);
}

static void test_namespace_unreadable(void **state)
{
	struct fx *f = *state;
	char *log;

	unlink(f->nsfile);
	DISC(f, "k8s:sparkrelay:tunnel", "127.0.0.1:7000");
	capture_start();
	lookup(f);
	log = capture_end();
	assert_int_equal(f->got.n, 1);
	assert_contains(log, "relay discovery k8s:sparkrelay:tunnel: cannot open the namespace "
			     "file");
	free(log);
	assert_int_equal(f->api.requests, 0);
}

/* Where the API server is: the configuration, or the variables of a pod. */
static void test_api_server_needed(void **state)
{
	struct fx *f = *state;
	char err[256];
	static char *targets[] = {"k8s:sparkrelay:tunnel"};
	struct disc *d;

	f->o.k8s_api_server = NULL;
	unsetenv("KUBERNETES_SERVICE_HOST");
	unsetenv("KUBERNETES_SERVICE_PORT");
	assert_null(disc_new(f->base, &f->o, targets, 1, err, sizeof(err)));
	assert_contains(err, "set tunnel.discovery.k8s.api_server, or run in a pod");
	setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
	setenv("KUBERNETES_SERVICE_PORT", "443x", 1);
	assert_null(disc_new(f->base, &f->o, targets, 1, err, sizeof(err)));
	setenv("KUBERNETES_SERVICE_PORT", "443", 1);
	d = disc_new(f->base, &f->o, targets, 1, err, sizeof(err));
	assert_non_null(d);
	disc_free(d);
	setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
	d = disc_new(f->base, &f->o, targets, 1, err, sizeof(err));
	assert_non_null(d);
	disc_free(d);
	setenv("KUBERNETES_SERVICE_HOST", "a b", 1);
	assert_null(disc_new(f->base, &f->o, targets, 1, err, sizeof(err)));
	unsetenv("KUBERNETES_SERVICE_HOST");
	unsetenv("KUBERNETES_SERVICE_PORT");
	f->o.k8s_api_server = (char *)"http://127.0.0.1:1";
	assert_null(disc_new(f->base, &f->o, targets, 1, err, sizeof(err)));
	assert_string_equal(err, "the Kubernetes API server must be an https:// URL");
}

static void test_entries(void **state)
{
	struct disc_target t;
	char err[256];

	(void)state;
	assert_int_equal(disc_target_parse("k8s:ns-1/relay:tunnel", &t, err, sizeof(err)), 0);
	assert_int_equal(t.kind, DISC_K8S);
	assert_string_equal(t.ns, "ns-1");
	assert_string_equal(t.service, "relay");
	assert_string_equal(t.port_name, "tunnel");
	assert_string_equal(t.tls_name, "relay.ns-1.svc");
	assert_int_equal(disc_target_parse("k8s:relay", &t, err, sizeof(err)), 0);
	assert_string_equal(t.ns, "");
	assert_string_equal(t.port_name, "");
	assert_string_equal(t.tls_name, "");
	assert_int_equal(
	    disc_target_parse("srv:_sparkrelay._tcp.Relays.Example.com.", &t, err, sizeof(err)),
	    0);
	assert_int_equal(t.kind, DISC_SRV);
	assert_string_equal(t.name, "_sparkrelay._tcp.relays.example.com");
	assert_string_equal(t.tls_name, "relays.example.com");
	assert_int_equal(disc_target_parse("[::1]:443", &t, err, sizeof(err)), 0);
	assert_int_equal(t.kind, DISC_HOSTPORT);
	static const char *const bad[] = {
	    "k8s:",
	    "k8s:/relay",
	    "k8s:ns/",
	    "k8s:Relay",
	    "k8s:relay:",
	    "k8s:relay:Tunnel",
	    "k8s:a/b/c",
	    "k8s:relay:tunnel:x",
	    "k8s:"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	    "srv:",
	    "srv:relays.example.com",
	    "srv:_x.example.com",
	    "srv:_x._tcp",
	    "srv:_x._tcp.",
	    "srv:_x._tcp..com",
	    "srv:_x._tcp.a_b.com",
	    "srv:_x._tcp.a b",
	    "relay.example.com",
	    "relay.example.com:0",
	    "k8s\n:relay"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (disc_target_parse(bad[i], &t, err, sizeof(err)) != SR_EINVAL)
			fail_msg("accepted \"%s\"", bad[i]);
		assert_contains(err, "bad relay entry \"");
	}
	assert_int_equal(disc_target_parse("k8s\n:relay", &t, err, sizeof(err)), SR_EINVAL);
	assert_contains(err, "\"k8s\\x0a:relay\"");
}

/* ---- failed allocations --------------------------------------------------------------- */

static int lookup_once(void *arg, unsigned long nth)
{
	struct fx *f = arg;
	char err[256] = "";
	static char *targets[] = {"k8s:sparkrelay:tunnel", "127.0.0.1:7000"};
	struct disc *d = disc_new(f->base, &f->o, targets, 2, err, sizeof(err));
	struct disc_lookup *l;
	unsigned long used;
	int failed;

	assert_non_null(d);
	memset(&f->got, 0, sizeof(f->got));
	f->returned = 0;
	ts_alloc_arm_ours(nth);
	l = disc_lookup(d, on_lookup, f);
	failed = ts_alloc_disarm();
	used = ts_alloc_count();
	f->returned = 1;
	if (!l) {
		assert_true(failed);
		disc_free(d);
		return SR_ENOMEM;
	}
	if (!failed)
		ts_alloc_arm_ours(nth - used);
	ts_loop_until_count(f->base, &f->got.calls, 1, WAIT_MS);
	failed = ts_alloc_disarm() || failed;
	ts_loop_run_for(f->base, 5);
	if (f->got.calls != 1)
		fail_msg("allocation %lu: %d callbacks", nth, f->got.calls);
	assert_false(f->early);
	if (!failed)
		assert_int_equal(f->got.n, 5);
	disc_free(d);
	ts_loop_run_for(f->base, 5);
	return 0;
}

static void test_alloc_failures(void **state)
{
	struct fx *f = *state;

	/* some failures inside libcurl's socket callback leave the request to
	 * disc_k8s's own deadline: keep it short */
	f->o.timeout_ms = 300;
	ts_alloc_sweep("disc_lookup(k8s)", lookup_once, f, NULL);
}

static int group_setup(void **state)
{
	char path[256];

	(void)state;
	ts_pki_make(&pki, "disc-k8s");
	TS_SRC_PATH("k8s/endpointslices.json", path, sizeof(path));
	recorded = ts_read_file(path, &recorded_len);
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	free(recorded);
	ts_pki_remove(&pki);
	curl_global_cleanup();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_recorded_list),
	    cmocka_unit_test(test_small_lists),
	    cmocka_unit_test(test_malformed_lists),
	    cmocka_unit_test(test_oversized_lists),
	    cmocka_unit_test(test_many_tiny_objects_are_refused_before_the_parse),
	    cmocka_unit_test(test_sample_of_a_large_service),
	    cmocka_unit_test(test_namespace_file),
	    cmocka_unit_test(test_names),
	    cmocka_unit_test(test_entries),
#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	    TEST(test_fetch),
	    TEST(test_fetch_refused),
	    TEST(test_fetch_bad_answers),
	    TEST(test_fetch_wrong_ca),
	    TEST(test_ca_file_alone_is_trusted),
	    TEST(test_ca_file_that_is_a_fifo_is_refused),
	    TEST(test_token_file_problems),
	    TEST(test_lookup_k8s_entry),
	    TEST(test_lookup_keeps_last_answer),
	    TEST(test_namespace_unreadable),
	    TEST(test_api_server_needed),
	    TEST(test_alloc_failures),
#undef TEST
	};

	ts_alloc_init();
	ts_log_level_from_env(SR_LOG_ERROR);
	/* The stand-in API server writes to clients that gave up on its
	 * certificate, as the daemons do: an error, not a signal. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
