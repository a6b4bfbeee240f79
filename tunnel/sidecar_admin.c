/* Status HTTP listener of the sidecar (contract in sidecar_admin.h). */
#include "tunnel/sidecar_admin.h"

#include "common/sr_cidr.h"
#include "common/sr_err.h"
#include "common/sr_http_guard.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "tunnel/sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

/* Nothing the sidecar serves needs more; larger requests are refused. */
#define SC_ADMIN_MAX_HEADERS (8 * 1024)
#define SC_ADMIN_MAX_BODY 1024
/* A probe or two and a person with curl: more connections than this at
 * once are closed on accept, and each is closed this long after its accept
 * however slowly it sends (one request per connection). Fixed, as the
 * listener serves nothing that would need more. */
#define SC_ADMIN_MAX_CONNS 16
#define SC_ADMIN_DEADLINE_MS 10000

struct sidecar_admin {
	struct sidecar *sidecar;
	struct evhttp *http;
	struct evhttp_bound_socket *sock;
	struct sr_http_guard *guard;
	uint16_t port;
	char ctx[SR_ADDRSTRLEN + 8];
};

static void reply(struct evhttp_request *req, int code, const char *reason, const char *ctype,
		  const char *body)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	/* one request per connection: the deadline bounds the request */
	evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static json_t *status_json(const struct sidecar_lease_info *li)
{
	json_t *o = json_object(), *ports = json_object();

	if (!o || !ports) {
		json_decref(o);
		json_decref(ports);
		return NULL;
	}
	for (int role = 0; li->have_lease && role < TUN_PORT_MAX; role++) {
		const char *name = tun_port_role_name((enum tun_port_role)role);
		if (li->ports[role] && name)
			json_object_set_new(ports, name, json_integer(li->ports[role]));
	}
	json_object_set_new(o, "have_lease", json_boolean(li->have_lease));
	json_object_set_new(o, "lease", li->have_lease ? json_string(li->lease) : json_null());
	json_object_set_new(o, "host", li->have_lease ? json_string(li->host) : json_null());
	json_object_set_new(o, "ports", ports);
	json_object_set_new(o, "ttl_s", json_integer(li->ttl_s));
	json_object_set_new(o, "connected", json_boolean(li->connected));
	json_object_set_new(o, "relay", li->relay[0] ? json_string(li->relay) : json_null());
	json_object_set_new(o, "reconnects", json_integer((json_int_t)li->reconnects));
	return o;
}

static void sc_admin_dispatch(struct evhttp_request *req, void *arg)
{
	struct sidecar_admin *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct sidecar_lease_info li;
	json_t *j;
	char *s;

	if (!path)
		path = "";
	if (strcmp(path, "/healthz") != 0 && strcmp(path, "/readyz") != 0 &&
	    strcmp(path, "/status") != 0) {
		reply(req, 404, "Not Found", "application/json",
		      "{\n  \"error\": \"no such endpoint\"\n}\n");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		reply(req, 405, "Method Not Allowed", "application/json",
		      "{\n  \"error\": \"method not allowed\"\n}\n");
		return;
	}
	if (strcmp(path, "/healthz") == 0) {
		reply(req, 200, "OK", "text/plain; charset=utf-8", "ok\n");
		return;
	}
	memset(&li, 0, sizeof(li));
	sidecar_get_lease(a->sidecar, &li);
	if (strcmp(path, "/readyz") == 0) {
		if (li.have_lease && li.connected)
			reply(req, 200, "OK", "text/plain; charset=utf-8", "ready\n");
		else
			reply(req, 503, "Service Unavailable", "text/plain; charset=utf-8",
			      li.have_lease ? "not ready: tunnel down\n"
					    : "not ready: no lease\n");
		return;
	}
	j = status_json(&li);
	s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
	json_decref(j);
	if (!s) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	{
		struct evbuffer *b = evbuffer_new();
		if (!b) {
			free(s);
			evhttp_send_error(req, 500, NULL);
			return;
		}
		evbuffer_add(b, s, strlen(s));
		evbuffer_add(b, "\n", 1);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
				  "application/json");
		evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control",
				  "no-store");
		evhttp_add_header(evhttp_request_get_output_headers(req), "Connection",
				  "close");
		evhttp_send_reply(req, 200, "OK", b);
		evbuffer_free(b);
	}
	free(s);
}

struct sidecar_admin *sidecar_admin_new(struct event_base *base, struct sidecar *s,
					const char *listen, char *err, size_t errlen)
{
	struct sidecar_admin *a;
	char host[256];
	uint16_t port;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);

	if (!listen || sr_split_hostport(listen, host, sizeof(host), &port, -1) != 0) {
		snprintf(err, errlen, "status listen address \"%s\" is not host:port",
			 listen ? listen : "(null)");
		return NULL;
	}
	a = calloc(1, sizeof(*a));
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	a->sidecar = s;
	a->http = evhttp_new(base);
	if (!a->http) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	evhttp_set_max_headers_size(a->http, SC_ADMIN_MAX_HEADERS);
	evhttp_set_max_body_size(a->http, SC_ADMIN_MAX_BODY);
	/* evhttp's inactivity timeout: only for a connection the guard could
	 * not track (out of memory) */
	evhttp_set_timeout(a->http, SC_ADMIN_DEADLINE_MS / 1000);
	/* Every method reaches sc_admin_dispatch, which answers 405 itself. */
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
						EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(a->http, sc_admin_dispatch, a);
	a->sock = evhttp_bind_socket_with_handle(a->http, host, port);
	if (!a->sock) {
		snprintf(err, errlen, "cannot listen on %s for the status API", listen);
		goto fail;
	}
	if (getsockname(evhttp_bound_socket_get_fd(a->sock), (struct sockaddr *)&ss, &sslen) ==
	    0)
		a->port = sr_addr_port((struct sockaddr *)&ss);
	snprintf(a->ctx, sizeof(a->ctx), strchr(host, ':') ? "status [%s]:%u" : "status %s:%u",
		 host, (unsigned)a->port);
	/* before the loop runs: evhttp accepts nothing until then */
	a->guard =
	    sr_http_guard_new(base, a->http, SC_ADMIN_MAX_CONNS, SC_ADMIN_DEADLINE_MS, a->ctx);
	if (!a->guard) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (!sr_host_is_loopback(host))
		SR_WARN(a->ctx, "status API is reachable off this host (lease and ports are "
				"visible to anyone who can connect)");
	else
		SR_INFO(a->ctx, "status API listening");
	return a;
fail:
	sidecar_admin_free(a);
	return NULL;
}

void sidecar_admin_free(struct sidecar_admin *a)
{
	if (!a)
		return;
	if (a->http)
		evhttp_free(a->http);
	sr_http_guard_free(a->guard);
	free(a);
}

uint16_t sidecar_admin_port(const struct sidecar_admin *a)
{
	return a->port;
}
