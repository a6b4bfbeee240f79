#include "discovery/disc_k8s.h"
#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#define TOKEN_MAX (16 * 1024)
#define NS_FILE_MAX 256
/* The API allows 1,000 endpoints per slice; a list has no bound of its own
 * beyond the body's size. */
#define EPS_PER_SLICE_MAX 1000
#define SLICES_MAX 10000

static int is_lower_alnum(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int disc_k8s_name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 1 || n > DISC_K8S_NAME_MAX || !is_lower_alnum((unsigned char)s[0]) ||
	    !is_lower_alnum((unsigned char)s[n - 1]))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-')
			return 0;
	return 1;
}

int disc_k8s_port_name_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	int letter = 0;

	if (n < 1 || n > DISC_K8S_PORT_NAME_MAX || s[0] == '-' || s[n - 1] == '-')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] >= 'a' && s[i] <= 'z')
			letter = 1;
		else if (!(s[i] >= '0' && s[i] <= '9') && !(s[i] == '-' && s[i + 1] != '-'))
			return 0;
	}
	return letter;
}

/* ---- the answer ---------------------------------------------------------- */

struct walk {
	const char *port_name;
	struct disc_ep *out;
	size_t max, n, ready;
	uint32_t (*rand_below)(uint32_t);
	char *err;
	size_t errlen;
};

static int bad(struct walk *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A field that breaks the API's schema: the whole answer is refused, with
 * the JSON path (indices and our own key names: nothing from the peer). */
static int bad(struct walk *w, const char *fmt, ...)
{
	va_list ap;

	if (w->err && w->errlen) {
		va_start(ap, fmt);
		vsnprintf(w->err, w->errlen, fmt, ap);
		va_end(ap);
	}
	return SR_EPROTO;
}

static int same_ep(const struct disc_ep *a, const struct disc_ep *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* Keep e: every Ready endpoint is kept with the same chance (reservoir
 * sampling), so a Service with more than max relays still spreads sidecars
 * over all of them. */
static void keep(struct walk *w, const struct disc_ep *e)
{
	for (size_t i = 0; i < w->n; i++)
		if (same_ep(&w->out[i], e))
			return;
	w->ready++;
	if (w->n < w->max) {
		w->out[w->n++] = *e;
	} else {
		uint32_t r =
		    w->rand_below(w->ready > UINT32_MAX ? UINT32_MAX : (uint32_t)w->ready);

		if (r < w->max)
			w->out[r] = *e;
	}
}

/* The port of slice i to use: 0 when it has none that fits (the slice is
 * skipped), or SR_EPROTO. */
static int slice_port(struct walk *w, json_t *ports, size_t i, unsigned *port)
{
	size_t j, tcp = 0;
	json_t *p;

	*port = 0;
	if (!ports || json_is_null(ports))
		return 0;
	if (!json_is_array(ports))
		return bad(w, "items[%zu].ports: not a list", i);
	json_array_foreach(ports, j, p)
	{
		json_t *name = json_object_get(p, "name");
		json_t *num = json_object_get(p, "port");
		json_t *proto = json_object_get(p, "protocol");
		const char *nm = "";
		json_int_t v;

		if (!json_is_object(p))
			return bad(w, "items[%zu].ports[%zu]: not an object", i, j);
		if (name && !json_is_null(name)) {
			if (!json_is_string(name))
				return bad(w, "items[%zu].ports[%zu].name: not a string", i, j);
			nm = json_string_value(name);
		}
		if (proto && !json_is_null(proto) && !json_is_string(proto))
			return bad(w, "items[%zu].ports[%zu].protocol: not a string", i, j);
		if (proto && json_is_string(proto) &&
		    strcmp(json_string_value(proto), "TCP") != 0)
			continue;
		if (!num || json_is_null(num)) /* "all ports": nothing to dial */
			continue;
		if (!json_is_integer(num))
			return bad(w, "items[%zu].ports[%zu].port: not an integer", i, j);
		v = json_integer_value(num);
		if (v < 1 || v > 65535)
			return bad(w, "items[%zu].ports[%zu].port: not in 1..65535", i, j);
		tcp++;
		if (w->port_name ? strcmp(nm, w->port_name) == 0 : tcp == 1)
			*port = (unsigned)v;
	}
	if (!w->port_name && tcp > 1) {
		sr_seterr(
		    w->err, w->errlen,
		    "items[%zu]: the Service has %zu TCP ports: name one in the relay entry "
		    "(k8s:NAMESPACE/SERVICE:PORTNAME)",
		    i, tcp);
		return SR_EPROTO;
	}
	return 0;
}

static int walk_endpoints(struct walk *w, json_t *eps, size_t i, int family, unsigned port)
{
	size_t j;
	json_t *e;

	if (!eps || json_is_null(eps))
		return 0;
	if (!json_is_array(eps))
		return bad(w, "items[%zu].endpoints: not a list", i);
	if (json_array_size(eps) > EPS_PER_SLICE_MAX)
		return bad(w, "items[%zu].endpoints: more than %d endpoints in one slice", i,
			   EPS_PER_SLICE_MAX);
	json_array_foreach(eps, j, e)
	{
		json_t *addrs, *a0, *cond, *ready;
		struct disc_ep ep;
		const char *s;

		memset(&ep, 0, sizeof(ep));
		if (!json_is_object(e))
			return bad(w, "items[%zu].endpoints[%zu]: not an object", i, j);
		addrs = json_object_get(e, "addresses");
		cond = json_object_get(e, "conditions");
		if (!json_is_array(addrs) || json_array_size(addrs) < 1 ||
		    json_array_size(addrs) > 100)
			return bad(w,
				   "items[%zu].endpoints[%zu].addresses: not a list of 1..100 "
				   "addresses",
				   i, j);
		ready = NULL;
		if (cond && !json_is_null(cond)) {
			if (!json_is_object(cond))
				return bad(
				    w, "items[%zu].endpoints[%zu].conditions: not an object", i,
				    j);
			ready = json_object_get(cond, "ready");
			if (ready && !json_is_null(ready) && !json_is_boolean(ready))
				return bad(
				    w,
				    "items[%zu].endpoints[%zu].conditions.ready: not a boolean",
				    i, j);
		}
		/* Every address is one of the same endpoint; the API lets
		 * consumers use the first. Each must still be an address. */
		for (size_t k = 0; k < json_array_size(addrs); k++) {
			unsigned char raw[16];

			a0 = json_array_get(addrs, k);
			s = json_string_value(a0);
			if (!s || strlen(s) > 45 || inet_pton(family, s, raw) != 1)
				return bad(w, "items[%zu].endpoints[%zu].addresses: %s", i, j,
					   family == AF_INET ? "not all IPv4 addresses"
							     : "not all IPv6 addresses");
			if (k > 0)
				continue;
			if (family == AF_INET) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&ep.ss;

				sin->sin_family = AF_INET;
				sin->sin_port = htons((uint16_t)port);
				memcpy(&sin->sin_addr, raw, 4);
				ep.len = sizeof(*sin);
			} else {
				struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ep.ss;

				sin6->sin6_family = AF_INET6;
				sin6->sin6_port = htons((uint16_t)port);
				memcpy(&sin6->sin6_addr, raw, 16);
				ep.len = sizeof(*sin6);
			}
		}
		/* conditions.ready absent or null means ready (the API's rule) */
		if (ready && json_is_false(ready))
			continue;
		keep(w, &ep);
	}
	return 0;
}

/* Objects and arrays in body, counted outside strings (a cheap pass before
 * the parse, whose memory goes with their number, not with the bytes). */
static size_t count_containers(const char *body, size_t len)
{
	size_t n = 0;
	int in_str = 0;

	for (size_t i = 0; i < len; i++) {
		char c = body[i];
		if (in_str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '{' || c == '[') {
			n++;
		}
	}
	return n;
}

int disc_k8s_parse(const char *body, size_t len, const char *port_name, struct disc_ep *out,
		   size_t max, size_t *n, size_t *ready, uint32_t (*rand_below)(uint32_t),
		   char *err, size_t errlen)
{
	struct walk w = {.port_name = port_name,
			 .out = out,
			 .max = max,
			 .rand_below = rand_below,
			 .err = err,
			 .errlen = errlen};
	json_error_t jerr;
	json_t *root, *items, *kind, *it;
	size_t i, matched = 0, slices = 0;
	int rc = 0;

	*n = *ready = 0;
	if (len > DISC_K8S_MAX_BODY) {
		sr_seterr(err, errlen, "answer of %zu bytes is over %u", len,
			  DISC_K8S_MAX_BODY);
		return SR_ETOOBIG;
	}
	if (count_containers(body, len) > DISC_K8S_MAX_CONTAINERS) {
		sr_seterr(err, errlen, "answer has over %u JSON objects and arrays",
			  DISC_K8S_MAX_CONTAINERS);
		return SR_ETOOBIG;
	}
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		char esc[SR_ESC_SIZE(80)];

		sr_seterr(err, errlen, "not JSON: line %d: %s", jerr.line,
			  sr_esc_n(jerr.text, 80, esc, sizeof(esc)));
		return SR_EPROTO;
	}
	kind = json_object_get(root, "kind");
	items = json_object_get(root, "items");
	if (!json_is_object(root)) {
		sr_seterr(err, errlen, "not a JSON object");
		rc = SR_EPROTO;
		goto out;
	}
	if (kind && !(json_is_string(kind) &&
		      strcmp(json_string_value(kind), "EndpointSliceList") == 0)) {
		char esc[SR_ESC_SIZE(40)];

		sr_seterr(err, errlen, "not an EndpointSliceList (kind \"%s\")",
			  sr_esc_n(json_string_value(kind), 40, esc, sizeof(esc)));
		rc = SR_EPROTO;
		goto out;
	}
	if (items && json_is_null(items))
		goto out; /* an empty list may come as null */
	if (!json_is_array(items)) {
		sr_seterr(err, errlen, "items: not a list");
		rc = SR_EPROTO;
		goto out;
	}
	if (json_array_size(items) > SLICES_MAX) {
		sr_seterr(err, errlen, "items: more than %d EndpointSlices", SLICES_MAX);
		rc = SR_ETOOBIG;
		goto out;
	}
	json_array_foreach(items, i, it)
	{
		json_t *type;
		const char *t;
		unsigned port;
		int family;

		if (!json_is_object(it)) {
			rc = bad(&w, "items[%zu]: not an object", i);
			goto out;
		}
		type = json_object_get(it, "addressType");
		t = json_string_value(type);
		if (!t) {
			rc = bad(&w, "items[%zu].addressType: not a string", i);
			goto out;
		}
		if (strcmp(t, "IPv4") == 0)
			family = AF_INET;
		else if (strcmp(t, "IPv6") == 0)
			family = AF_INET6;
		else
			continue; /* FQDN slices name hosts, not addresses */
		slices++;
		if ((rc = slice_port(&w, json_object_get(it, "ports"), i, &port)) != 0)
			goto out;
		if (port == 0)
			continue;
		matched++;
		if ((rc = walk_endpoints(&w, json_object_get(it, "endpoints"), i, family,
					 port)) != 0)
			goto out;
	}
	if (slices > 0 && matched == 0) {
		char esc[SR_ESC_SIZE(DISC_K8S_PORT_NAME_MAX)];

		if (port_name)
			sr_seterr(err, errlen, "no EndpointSlice has a TCP port named \"%s\"",
				  sr_esc(port_name, esc, sizeof(esc)));
		else
			sr_seterr(err, errlen, "no EndpointSlice has a TCP port");
		rc = SR_EPROTO;
		goto out;
	}
	*n = w.n;
	*ready = w.ready;
out:
	json_decref(root);
	if (rc != 0)
		*n = *ready = 0;
	return rc;
}

/* ---- files ----------------------------------------------------------------- */

/* The whole of a small regular file, NUL-terminated, white space around it
 * cut. Returns malloc'd text or NULL with the reason in err. */
static char *read_small(const char *path, size_t max, const char *what, char *err,
			size_t errlen)
{
	char esc[SR_ESC_SIZE(64)], why[128];
	char *buf = NULL, *s;
	size_t got = 0, n;
	int fd = sr_file_open(path, max, NULL, why, sizeof(why));

	if (fd == SR_EIO) {
		sr_seterr(err, errlen, "cannot open the %s file %s: %s", what,
			  sr_esc_n(path, 64, esc, sizeof(esc)), why);
		return NULL;
	}
	if (fd < 0) {
		sr_seterr(err, errlen,
			  "the %s file %s is not a regular file of at most %zu bytes", what,
			  sr_esc_n(path, 64, esc, sizeof(esc)), max);
		return NULL;
	}
	buf = malloc(max + 1);
	if (!buf) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	while (got <= max) {
		ssize_t r = read(fd, buf + got, max + 1 - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			sr_seterr(err, errlen, "cannot read the %s file %s: %s", what,
				  sr_esc_n(path, 64, esc, sizeof(esc)), strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	if (got > max) {
		sr_seterr(err, errlen, "the %s file %s is over %zu bytes", what,
			  sr_esc_n(path, 64, esc, sizeof(esc)), max);
		goto fail;
	}
	close(fd);
	buf[got] = '\0';
	for (s = buf; *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'; s++)
		;
	n = strlen(s);
	while (n &&
	       (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	memmove(buf, s, n);
	buf[n] = '\0';
	return buf;
fail:
	if (buf) {
		memset(buf, 0, max + 1);
		free(buf);
	}
	close(fd);
	return NULL;
}

int disc_k8s_read_namespace(const char *path, char *ns, size_t len, char *err, size_t errlen)
{
	char esc[SR_ESC_SIZE(64)];
	char *s = read_small(path, NS_FILE_MAX, "namespace", err, errlen);

	if (!s)
		return SR_EIO;
	if (!disc_k8s_name_ok(s) || strlen(s) >= len) {
		sr_seterr(err, errlen, "the namespace file %s does not hold a namespace name",
			  sr_esc_n(path, 64, esc, sizeof(esc)));
		free(s);
		return SR_EINVAL;
	}
	snprintf(ns, len, "%s", s);
	free(s);
	return 0;
}

/* ---- the request ----------------------------------------------------------- */

struct disc_k8s_req {
	struct sr_curl_req *http;
	/* Our own bound on the request, past libcurl's: a transfer that
	 * libcurl stops driving (a socket callback that failed) must still end. */
	struct event *deadline;
	uint32_t timeout_ms;
	char *port_name;
	disc_k8s_cb cb;
	void *arg;
};

/* libcurl's own timeout comes first; this one only catches a request that
 * nothing drives any more. */
#define DEADLINE_SLACK_MS 1000

static void req_free(struct disc_k8s_req *r)
{
	if (r->deadline)
		event_free(r->deadline);
	free(r->port_name);
	free(r);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_k8s_req *r = arg;
	char msg[96];

	sr_curl_cancel(r->http);
	snprintf(msg, sizeof(msg), "no answer within %u ms", r->timeout_ms + DEADLINE_SLACK_MS);
	r->cb(SR_ETIMEDOUT, NULL, 0, 0, msg, r->arg);
	req_free(r);
}

/* The "message" of a Kubernetes Status answer, escaped, or "". */
static void status_message(const char *body, size_t len, char *out, size_t outlen)
{
	json_t *j = json_loadb(body, len, 0, NULL);
	const char *m = json_string_value(json_object_get(j, "message"));

	out[0] = '\0';
	if (m) {
		char esc[SR_ESC_SIZE(160)];

		snprintf(out, outlen, ": \"%s\"", sr_esc_n(m, 160, esc, sizeof(esc)));
	}
	json_decref(j);
}

static void done_cb(int err, long status, const char *body, size_t len, const char *errmsg,
		    void *arg)
{
	struct disc_k8s_req *r = arg;
	struct disc_ep *eps = NULL;
	char msg[512] = "", detail[SR_ESC_SIZE(160) + 8];
	size_t n = 0, ready = 0;
	int rc = err;

	if (err != 0) {
		char esc[SR_ESC_SIZE(200)];

		snprintf(msg, sizeof(msg), "%s", sr_esc_n(errmsg, 200, esc, sizeof(esc)));
	} else if (status != 200) {
		const char *why = status == 401	  ? " (the API server refused the token)"
				  : status == 403 ? " (the service account may not list "
						    "endpointslices in this namespace)"
				  : status == 404 ? " (no such namespace or API)"
						  : "";

		status_message(body, len, detail, sizeof(detail));
		snprintf(msg, sizeof(msg), "HTTP %ld%s%s", status, why, detail);
		rc = status == 401 || status == 403 ? SR_EDENIED : SR_EPROTO;
	} else if (!(eps = calloc(DISC_K8S_MAX_EPS, sizeof(*eps)))) {
		snprintf(msg, sizeof(msg), "out of memory");
		rc = SR_ENOMEM;
	} else {
		rc = disc_k8s_parse(body, len, r->port_name, eps, DISC_K8S_MAX_EPS, &n, &ready,
				    sr_rand_below, msg, sizeof(msg));
	}
	r->cb(rc, rc == 0 ? eps : NULL, rc == 0 ? n : 0, rc == 0 ? ready : 0, msg, r->arg);
	free(eps);
	req_free(r);
}

struct disc_k8s_req *disc_k8s_fetch(struct event_base *base, struct sr_curl *c,
				    const struct disc_k8s_opts *o, disc_k8s_cb cb, void *arg,
				    char *err, size_t errlen)
{
	static const char path[] = "/apis/discovery.k8s.io/v1/namespaces/";
	static const char sel[] =
	    "/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D";
	struct disc_k8s_req *r = NULL;
	char *token = NULL, *auth = NULL, *url = NULL;
	const char *hdrs[2];
	size_t alen, ulen, api;

	if (!o->api_server || strncmp(o->api_server, "https://", 8) != 0 ||
	    !disc_k8s_name_ok(o->ns) || !disc_k8s_name_ok(o->service) ||
	    (o->port_name && !disc_k8s_port_name_ok(o->port_name))) {
		sr_seterr(err, errlen, "bad Kubernetes request options");
		return NULL;
	}
	if (sr_curl_check_files(o->ca_file, NULL, NULL, err, errlen) != 0)
		return NULL;
	token = read_small(o->token_file, TOKEN_MAX, "token", err, errlen);
	if (!token)
		return NULL;
	if (!sr_valid_chars(token, TOKEN_MAX, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")) {
		char esc[SR_ESC_SIZE(64)];

		sr_seterr(err, errlen,
			  "the token file %s is empty or has bytes other than "
			  "printable ASCII",
			  sr_esc_n(o->token_file, 64, esc, sizeof(esc)));
		goto fail;
	}
	api = strlen(o->api_server);
	while (api > 8 && o->api_server[api - 1] == '/')
		api--;
	alen = strlen(token) + 32;
	ulen = api + sizeof(path) + sizeof(sel) + strlen(o->ns) + strlen(o->service) + 1;
	auth = malloc(alen);
	url = malloc(ulen);
	r = calloc(1, sizeof(*r));
	if (r)
		r->deadline = evtimer_new(base, deadline_cb, r);
	if (!auth || !url || !r || !r->deadline ||
	    (o->port_name && !(r->port_name = strdup(o->port_name)))) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	snprintf(auth, alen, "Authorization: Bearer %s", token);
	snprintf(url, ulen, "%.*s%s%s%s%s", (int)api, o->api_server, path, o->ns, sel,
		 o->service);
	hdrs[0] = auth;
	hdrs[1] = "Accept: application/json";
	r->cb = cb;
	r->arg = arg;
	r->timeout_ms = o->timeout_ms ? o->timeout_ms : 5000;
	{
		struct sr_curl_opts co = {
		    .url = url,
		    .headers = hdrs,
		    .nheaders = 2,
		    .ca_file = o->ca_file,
		    .connect_timeout_ms = r->timeout_ms,
		    .timeout_ms = r->timeout_ms,
		    .max_body = DISC_K8S_MAX_BODY,
		};
		r->http = sr_curl_start(c, &co, done_cb, r, err, errlen);
	}
	if (!r->http)
		goto fail;
	{
		struct timeval tv = sr_tv_ms((uint64_t)r->timeout_ms + DEADLINE_SLACK_MS);

		evtimer_add(r->deadline, &tv);
	}
	memset(auth, 0, alen);
	memset(token, 0, strlen(token));
	free(auth);
	free(token);
	free(url);
	return r;
fail:
	if (auth)
		memset(auth, 0, alen);
	memset(token, 0, strlen(token));
	free(auth);
	free(token);
	free(url);
	if (r)
		req_free(r);
	return NULL;
}

void disc_k8s_cancel(struct disc_k8s_req *r)
{
	if (!r)
		return;
	sr_curl_cancel(r->http);
	req_free(r);
}
