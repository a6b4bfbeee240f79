/* Admin HTTP API of the relay (contract in relay_admin.h). Runs in the
 * relay's loop: every handler only reads snapshots the relay hands out and
 * answers at once, so a slow admin client can hold its own connection but
 * never the data path. */
#include "relay/relay_admin.h"
#include "relay/relay_view.h"

#include "common/sr_text.h"
#include "common/sr_err.h"
#include "common/sr_http.h"
#include "common/sr_http_guard.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "relay/relay.h"
#include "relay/relay_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

/* A drain requested over HTTP starts once the 200 has been written (so the
 * client sees it before the loop may exit), or after this long if the
 * client went away before the answer was sent. */
#define ADMIN_DRAIN_FALLBACK_MS 1000
#define ADMIN_EXPLAIN_MAX 4096

struct relay_admin {
	struct event_base *base;
	struct relay *relay;
	struct sr_http api; /* listener, connection cap and deadline */
	struct event *drain_ev;
	int have_token;
	/* SHA-256 of the token: comparing digests takes the same time whatever
	 * the length of the presented token. */
	unsigned char token_sha[SHA256_DIGEST_LENGTH];
	struct relay_admin_cbs cbs;
	void *cb_arg;
};

enum admin_method {
	AM_GET = 1,
	AM_POST = 2,
	AM_DELETE = 4,
};

typedef void (*admin_handler)(struct relay_admin *a, struct evhttp_request *req,
			      const char *tail);

struct admin_route {
	const char *path;
	int prefix;	 /* path is a prefix; the rest is passed as tail */
	unsigned method; /* the one method it answers */
	int open;	 /* served without a token */
	admin_handler fn;
};

/* A string for JSON that cannot fail on NULL or invalid UTF-8 (a
 * certificate CN is not guaranteed to be UTF-8). */
static json_t *jstr(const char *s)
{
	json_t *v;

	if (!s)
		return json_null();
	v = json_string(s);
	return v ? v : json_string("<invalid utf-8>");
}

/* ---- /healthz /readyz --------------------------------------------- */

static void h_healthz(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	sr_http_reply_text(req, 200, "ok\n");
}

static void h_readyz(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct relay_stats st;

	relay_get_stats(a->relay, &st);
	if (st.draining)
		sr_http_reply_text(req, 503, "not ready: draining\n");
	else if (!st.ready)
		sr_http_reply_text(req, 503, "not ready: listeners or configuration not up yet\n");
	else
		sr_http_reply_text(req, 200, "ready\n");
}

/* ---- /metrics ------------------------------------------------------- */

static void metric_head(struct evbuffer *b, const char *name, const char *type,
			const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_one(struct evbuffer *b, const char *name, const char *type, const char *help,
		       uint64_t v)
{
	metric_head(b, name, type, help);
	evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void metric_hist(struct evbuffer *b, const char *name, const char *help,
			const struct relay_hist *h)
{
	uint64_t cum = 0;

	metric_head(b, name, "histogram", help);
	for (size_t i = 0; i < RELAY_HIST_BUCKETS - 1; i++) {
		cum += h->count[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name,
				    (double)relay_hist_bounds_us[i] / 1e6,
				    (unsigned long long)cum);
	}
	cum += h->count[RELAY_HIST_BUCKETS - 1];
	/* +Inf and _count come from the same sum, as the format requires them
	 * to be equal even if a bucket and n were bumped apart. */
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	evbuffer_add_printf(b, "%s_sum %.6f\n", name, (double)h->sum_us / 1e6);
	evbuffer_add_printf(b, "%s_count %llu\n", name, (unsigned long long)cum);
}

static void h_metrics(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct sr_http_guard_stats gst;
	struct relay_stats st;
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	relay_get_stats(a->relay, &st);
	metric_head(b, "sparkrelay_build_info", "gauge", "Version of the running relay.");
	evbuffer_add_printf(b, "sparkrelay_build_info{version=\"%s\"} 1\n", SR_VERSION);
	metric_one(b, "sparkrelay_ready", "gauge",
		   "1 when listeners are up and the configuration is loaded.",
		   st.ready ? 1 : 0);
	metric_one(b, "sparkrelay_draining", "gauge", "1 while the relay drains.",
		   st.draining ? 1 : 0);
	metric_one(b, "sparkrelay_tunnels_active", "gauge", "Sidecar tunnels connected now.",
		   st.tunnels_active);
	metric_one(b, "sparkrelay_tunnels_accepted_total", "counter",
		   "Sidecar tunnels that completed the TLS handshake.", st.tunnels_accepted);
	metric_one(b, "sparkrelay_handshake_failures_total", "counter",
		   "Tunnel connections that failed TLS or registration in time.",
		   st.handshake_failures);
	metric_one(b, "sparkrelay_handshakes_active", "gauge",
		   "Tunnel connections not registered yet (relay.max_handshakes).",
		   st.handshakes_active);
	metric_one(b, "sparkrelay_accept_errors_total", "counter",
		   "Tunnel listener accept() failures (EMFILE...); it pauses after each.",
		   st.accept_errors);
	metric_one(b, "sparkrelay_leases_reclaimed_total", "counter",
		   "Leases in grace ended for a new registration (relay.max_grace_leases).",
		   st.leases_reclaimed);
	metric_one(b, "sparkrelay_executor_buffered_bytes", "gauge",
		   "Bytes read from executors, not yet sent to sidecars.", st.executor_buffered);
	metric_one(b, "sparkrelay_tunnel_buffer_full_total", "counter",
		   "Times a tunnel went over relay.max_tunnel_buffer.", st.buffer_throttled);
	metric_one(b, "sparkrelay_leases_active", "gauge", "Port leases held now.",
		   st.leases_active);
	metric_one(b, "sparkrelay_leases_granted_total", "counter", "Port leases granted.",
		   st.leases_granted);
	metric_one(b, "sparkrelay_leases_resumed_total", "counter",
		   "Leases resumed by a reconnecting sidecar.", st.leases_resumed);
	metric_one(b, "sparkrelay_leases_expired_total", "counter",
		   "Leases whose grace TTL ran out with no tunnel.", st.leases_expired);
	metric_one(b, "sparkrelay_executor_connections_total", "counter",
		   "Executor connections accepted on lease ports.", st.executor_conns);
	metric_one(b, "sparkrelay_handovers_total", "counter",
		   "Live handovers to a new relay process, counted by the new one.", st.handovers);
	metric_head(b, "sparkrelay_refused_total", "counter",
		    "Executor connections and registrations refused, by reason.");
	for (int i = 0; i < RELAY_REFUSE_MAX; i++)
		evbuffer_add_printf(b, "sparkrelay_refused_total{reason=\"%s\"} %llu\n",
				    relay_refusal_name((enum relay_refusal)i),
				    (unsigned long long)st.refused[i]);
	metric_one(b, "sparkrelay_streams_active", "gauge", "Tunnelled connections open now.",
		   st.streams_active);
	metric_one(b, "sparkrelay_streams_opened_total", "counter",
		   "Tunnelled connections (HTTP/2 streams) opened.", st.streams_opened);
	metric_head(b, "sparkrelay_bytes_total", "counter",
		    "Payload bytes carried, by direction.");
	evbuffer_add_printf(b, "sparkrelay_bytes_total{direction=\"to_driver\"} %llu\n",
			    (unsigned long long)st.bytes_to_sidecar);
	evbuffer_add_printf(b, "sparkrelay_bytes_total{direction=\"to_executor\"} %llu\n",
			    (unsigned long long)st.bytes_to_executor);
	metric_head(b, "sparkrelay_reloads_total", "counter",
		    "Configuration reloads, by result.");
	evbuffer_add_printf(b, "sparkrelay_reloads_total{result=\"ok\"} %llu\n",
			    (unsigned long long)st.reloads_ok);
	evbuffer_add_printf(b, "sparkrelay_reloads_total{result=\"failed\"} %llu\n",
			    (unsigned long long)st.reloads_failed);
	sr_http_guard_get_stats(a->api.guard, &gst);
	metric_one(b, "sparkrelay_admin_connections_active", "gauge",
		   "Admin API connections open now.", gst.active);
	metric_one(b, "sparkrelay_admin_connections_total", "counter",
		   "Admin API connections accepted under relay.admin.max_connections.",
		   gst.accepted);
	metric_one(b, "sparkrelay_admin_connections_refused_total", "counter",
		   "Admin API connections closed on accept: relay.admin.max_connections were "
		   "open.",
		   gst.refused);
	metric_one(b, "sparkrelay_admin_connections_timed_out_total", "counter",
		   "Admin API connections closed at relay.admin.request_timeout_ms.",
		   gst.timed_out);
	metric_hist(b, "sparkrelay_tunnel_rtt_seconds", "Tunnel PING round-trip time.",
		    &st.tunnel_rtt);
	metric_hist(b, "sparkrelay_executor_wait_seconds",
		    "Time an executor connection waited for its tunnel to come back.",
		    &st.pending_wait);
	sr_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
}

/* ---- /v1/sessions /v1/leases --------------------------------------- */

static void session_to_json(const struct relay_session_view *v, void *arg)
{
	json_t *arr = arg, *o = json_object();

	if (!o)
		return;
	json_object_set_new(o, "peer", jstr(v->peer));
	json_object_set_new(o, "identity", jstr(v->identity));
	json_object_set_new(o, "tenant", jstr(v->tenant));
	json_object_set_new(o, "lease", jstr(v->lease));
	json_object_set_new(o, "age_ms", json_integer((json_int_t)v->age_ms));
	json_object_set_new(o, "streams_active",
			    json_integer((json_int_t)v->st.streams_active));
	json_object_set_new(o, "streams_opened",
			    json_integer((json_int_t)v->st.streams_opened));
	json_object_set_new(o, "streams_reset", json_integer((json_int_t)v->st.streams_reset));
	/* The relay reads executor bytes into the tunnel: to the driver. */
	json_object_set_new(o, "bytes_to_driver",
			    json_integer((json_int_t)v->st.bytes_to_tunnel));
	json_object_set_new(o, "bytes_to_executor",
			    json_integer((json_int_t)v->st.bytes_from_tunnel));
	json_object_set_new(o, "rtt_us", json_integer((json_int_t)v->st.last_rtt_us));
	json_array_append_new(arr, o);
}

static void lease_to_json(const struct relay_lease_view *v, void *arg)
{
	json_t *arr = arg, *o = json_object(), *ports = json_object();

	if (!o || !ports) {
		json_decref(o);
		json_decref(ports);
		return;
	}
	for (int role = 0; role < TUN_PORT_MAX; role++) {
		const char *name = tun_port_role_name((enum tun_port_role)role);
		if (v->ports[role] && name)
			json_object_set_new(ports, name, json_integer(v->ports[role]));
	}
	json_object_set_new(o, "id", jstr(v->id));
	json_object_set_new(o, "app", jstr(v->app));
	json_object_set_new(o, "tenant", jstr(v->tenant));
	json_object_set_new(o, "pool", jstr(v->pool));
	json_object_set_new(o, "route", jstr(v->route));
	json_object_set_new(o, "host", jstr(v->host));
	json_object_set_new(o, "ports", ports);
	json_object_set_new(o, "attached", json_boolean(v->attached));
	json_object_set_new(o, "peer", jstr(v->peer));
	json_object_set_new(o, "pending", json_integer(v->npending));
	json_object_set_new(o, "conns_active", json_integer((json_int_t)v->conns_active));
	json_object_set_new(o, "conns_total", json_integer((json_int_t)v->conns_total));
	json_object_set_new(o, "driver_refused", json_integer((json_int_t)v->driver_refused));
	json_array_append_new(arr, o);
}

static void h_sessions(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *arr = json_array();

	if (arr)
		relay_foreach_session(a->relay, session_to_json, arr);
	sr_http_reply_json(req, 200, arr);
}

static void h_leases(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *arr = json_array();

	if (arr)
		relay_foreach_lease(a->relay, lease_to_json, arr);
	sr_http_reply_json(req, 200, arr);
}

/* DELETE /v1/leases/<id> */
static void h_revoke(struct relay_admin *a, struct evhttp_request *req, const char *id)
{
	int rv;

	if (!*id || strchr(id, '/')) {
		sr_http_reply_error(req, 404, "no such lease");
		return;
	}
	rv = relay_revoke_lease(a->relay, id);
	if (rv == SR_ENOTFOUND) {
		sr_http_reply_error(req, 404, "no such lease");
		return;
	}
	if (rv == SR_EBUSY) {
		sr_http_reply_error(req, 503, "a handover to a new relay is under way");
		return;
	}
	if (rv != 0) {
		sr_http_reply_error(req, 500, sr_strerror(rv));
		return;
	}
	SR_INFO(a->api.ctx, "lease %s revoked", id);
	sr_http_reply_json(req, 200, json_pack("{s:s,s:s}", "result", "revoked", "lease", id));
}

/* ---- /v1/config /v1/reload /v1/drain -------------------------------- */

static void h_config(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *j;

	if (!a->cbs.config_json) {
		sr_http_reply_error(req, 501, "this relay cannot show its configuration");
		return;
	}
	j = a->cbs.config_json(a->cb_arg);
	if (!j) {
		sr_http_reply_error(req, 500, "cannot render the configuration");
		return;
	}
	sr_http_reply_json(req, 200, j);
}

static void h_reload(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	char err[1024] = "";
	int rv;

	if (!a->cbs.reload) {
		sr_http_reply_error(req, 501, "this relay cannot reload its configuration");
		return;
	}
	rv = a->cbs.reload(a->cb_arg, err, sizeof(err));
	/* The callback logs the outcome (it also serves SIGHUP). */
	if (rv != 0) {
		sr_http_reply_error(req, 400, err[0] ? err : sr_strerror(rv));
		return;
	}
	sr_http_reply_json(req, 200, json_pack("{s:s}", "result", "ok"));
}

static void admin_start_drain(struct relay_admin *a)
{
	struct relay_stats st;

	evtimer_del(a->drain_ev);
	relay_get_stats(a->relay, &st);
	if (!st.draining)
		relay_drain(a->relay);
}

static void on_drain_timer(evutil_socket_t fd, short what, void *arg)
{
	admin_start_drain(arg);
}

static void on_drain_reply_sent(struct evhttp_request *req, void *arg)
{
	admin_start_drain(arg);
}

static void h_drain(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct relay_stats st;
	struct timeval tv = sr_tv_ms(ADMIN_DRAIN_FALLBACK_MS);

	relay_get_stats(a->relay, &st);
	if (!st.draining) {
		SR_INFO(a->api.ctx, "drain requested over the admin API");
		evhttp_request_set_on_complete_cb(req, on_drain_reply_sent, a);
		evtimer_add(a->drain_ev, &tv);
	}
	sr_http_reply_json(req, 200, json_pack("{s:s}", "result", "draining"));
}

/* ---- /v1/route/explain --------------------------------------------- */

/* A string member of o or NULL; -1 if present with another type. */
static int opt_string(json_t *o, const char *key, const char **out)
{
	json_t *v = json_object_get(o, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -1;
	*out = json_string_value(v);
	return 0;
}

static void h_explain(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	struct relay_identity id;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	const char *cn, *token, *app, *addr;
	char msg[256], *out = NULL;
	json_error_t jerr;
	char near[SR_ESC_SIZE(60)];
	json_t *body;
	int n;

	/* evhttp already refused bodies over RELAY_ADMIN_MAX_BODY. */
	body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!body || !json_is_object(body)) {
		snprintf(msg, sizeof(msg),
			 "body must be a JSON object {\"cn\",\"token\",\"app\","
			 "\"addr\"}%s%s",
			 body ? "" : ": ",
			 body ? "" : sr_mask_n(jerr.text, 60, near, sizeof(near)));
		sr_http_reply_error(req, 400, msg);
		goto out;
	}
	if (opt_string(body, "cn", &cn) || opt_string(body, "token", &token) ||
	    opt_string(body, "app", &app) || opt_string(body, "addr", &addr)) {
		sr_http_reply_error(req, 400, "cn, token, app and addr must be strings");
		goto out;
	}
	memset(&id, 0, sizeof(id));
	id.cn = cn;
	id.token = token;
	if (addr && *addr) {
		if (sr_parse_addr(addr, 0, &ss, &sslen) != 0) {
			snprintf(msg, sizeof(msg),
				 "addr: not a numeric IPv4 or IPv6 address: \"%.64s\"", addr);
			sr_http_reply_error(req, 400, msg);
			goto out;
		}
		id.addr = (const struct sockaddr *)&ss;
	}
	out = malloc(ADMIN_EXPLAIN_MAX);
	if (!out) {
		evhttp_send_error(req, 500, NULL);
		goto out;
	}
	n = relay_policy_explain(relay_get_policy(a->relay), &id, app, out, ADMIN_EXPLAIN_MAX);
	if (n < 0) {
		sr_http_reply_error(req, 500, "cannot explain");
		goto out;
	}
	if (n > 0 && (size_t)n < ADMIN_EXPLAIN_MAX - 1 && out[n - 1] != '\n') {
		out[n] = '\n';
		out[n + 1] = '\0';
	}
	sr_http_reply_text(req, 200, out);
out:
	free(out);
	json_decref(body);
}

/* ---- routing and auth ----------------------------------------------- */

static const struct admin_route admin_routes[] = {
    {"/healthz", 0, AM_GET, 1, h_healthz},   {"/readyz", 0, AM_GET, 1, h_readyz},
    {"/metrics", 0, AM_GET, 0, h_metrics},   {"/v1/sessions", 0, AM_GET, 0, h_sessions},
    {"/v1/leases", 0, AM_GET, 0, h_leases},  {"/v1/leases/", 1, AM_DELETE, 0, h_revoke},
    {"/v1/config", 0, AM_GET, 0, h_config},  {"/v1/drain", 0, AM_POST, 0, h_drain},
    {"/v1/reload", 0, AM_POST, 0, h_reload}, {"/v1/route/explain", 0, AM_POST, 0, h_explain},
};

static const char *method_name(unsigned m)
{
	return m == AM_GET ? "GET, HEAD" : m == AM_POST ? "POST" : "DELETE";
}

/* Whether the request carries the configured bearer token. */
static int authorized(const struct relay_admin *a, struct evhttp_request *req)
{
	const char *h =
	    evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	unsigned char got[SHA256_DIGEST_LENGTH];

	if (!a->have_token)
		return 1;
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	while (*h == ' ')
		h++;
	SHA256((const unsigned char *)h, strlen(h), got);
	return CRYPTO_memcmp(got, a->token_sha, sizeof(got)) == 0;
}

static void admin_dispatch(struct evhttp_request *req, void *arg)
{
	struct relay_admin *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const struct admin_route *rt = NULL;
	unsigned m;

	if (!path || !*path)
		path = "/";
	for (size_t i = 0; i < SR_ARRAY_LEN(admin_routes); i++) {
		const struct admin_route *c = &admin_routes[i];
		size_t n = strlen(c->path);
		if (c->prefix ? strncmp(path, c->path, n) == 0 : strcmp(path, c->path) == 0) {
			rt = c;
			break;
		}
	}
	if (!rt) {
		sr_http_reply_error(req, 404, "no such endpoint");
		return;
	}
	if (!rt->open && !authorized(a, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  "Bearer realm=\"sparkrelay-admin\"");
		sr_http_reply_error(req, 401, "missing or wrong bearer token");
		return;
	}
	m = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD ? AM_GET
	    : cmd == EVHTTP_REQ_POST			    ? AM_POST
	    : cmd == EVHTTP_REQ_DELETE			    ? AM_DELETE
							    : 0;
	if (m != rt->method) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
				  method_name(rt->method));
		sr_http_reply_error(req, 405, "method not allowed");
		return;
	}
	rt->fn(a, req, rt->prefix ? path + strlen(rt->path) : NULL);
}

/* ---- lifecycle ------------------------------------------------------ */

struct relay_admin *relay_admin_new(struct event_base *base, struct relay *r,
				    const char *listen, const char *token,
				    const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				    size_t errlen)
{
	return relay_admin_new_fd(base, r, listen, -1, token, cbs, cb_arg, err, errlen);
}

struct relay_admin *relay_admin_new_fd(struct event_base *base, struct relay *r,
				       const char *listen, int fd, const char *token,
				       const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				       size_t errlen)
{
	const struct relay_opts *o = relay_get_opts(r);
	struct sr_http_opts ho = {
	    .name = "admin",
	    .listen = listen,
	    .max_headers = RELAY_ADMIN_MAX_HEADERS,
	    .max_body = RELAY_ADMIN_MAX_BODY,
	    .max_conns = o->admin_max_conns,
	    .deadline_ms = o->admin_request_timeout_ms,
	    .loopback_only = token && *token ? NULL
					     : "set relay.admin.token (every request must "
					       "then carry it)",
	    .handler = admin_dispatch,
	    .adopt = fd >= 0,
	    .fd = fd,
	};
	struct relay_admin *a = calloc(1, sizeof(*a));

	if (!a) {
		if (fd >= 0)
			close(fd);
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	a->base = base;
	a->relay = r;
	a->cb_arg = cb_arg;
	if (cbs)
		a->cbs = *cbs;
	if (token && *token) {
		a->have_token = 1;
		SHA256((const unsigned char *)token, strlen(token), a->token_sha);
	}
	a->drain_ev = evtimer_new(base, on_drain_timer, a);
	if (!a->drain_ev) {
		if (fd >= 0)
			close(fd);
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	ho.arg = a;
	if (sr_http_init(&a->api, base, &ho, err, errlen) != 0)
		goto fail;
	SR_INFO(a->api.ctx,
		"admin API listening%s; at most %u connections, each closed after %u ms",
		a->have_token ? " (token required)" : "", o->admin_max_conns,
		o->admin_request_timeout_ms);
	return a;
fail:
	relay_admin_free(a);
	return NULL;
}

void relay_admin_free(struct relay_admin *a)
{
	if (!a)
		return;
	sr_http_fini(&a->api);
	if (a->drain_ev)
		event_free(a->drain_ev);
	OPENSSL_cleanse(a->token_sha, sizeof(a->token_sha));
	free(a);
}

uint16_t relay_admin_port(const struct relay_admin *a)
{
	return a->api.port;
}

int relay_admin_listen_fd(const struct relay_admin *a)
{
	return a->api.sock ? evhttp_bound_socket_get_fd(a->api.sock) : -1;
}
