/* Status HTTP listener of the sidecar (contract in sidecar_admin.h). */
#include "sidecar/sidecar_admin.h"

#include "common/sr_err.h"
#include "common/sr_http.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "sidecar/sidecar.h"
#include "tunnel/tun_group.h"

#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <jansson.h>

/* Nothing the sidecar serves needs more; larger requests are refused. */
#define SC_ADMIN_MAX_HEADERS (8 * 1024)
#define SC_ADMIN_MAX_BODY 1024
/* A probe or two and a person with curl: at most this many connections
 * are open at once, and each is closed this long after its accept
 * however slowly it sends (one request per connection). Fixed, as the
 * listener serves nothing that would need more. A new connection closes
 * the oldest (sr_http_guard.h). */
#define SC_ADMIN_MAX_CONNS 16
#define SC_ADMIN_DEADLINE_MS 10000

struct sidecar_admin {
	struct sidecar *sidecar;
	struct sr_http api;
};

/* The driver connections held while the tunnel is away, and what resuming
 * them did: the same object as a lease's "resumption" in the relay's
 * /v1/leases. */
static json_t *resume_json(const struct tun_group_stats *g)
{
	json_t *o = json_object(), *lost = json_object();
	uint64_t away_ms = g->away_since_us ? (sr_now_us() - g->away_since_us) / 1000u : 0;

	if (!o || !lost) {
		json_decref(o);
		json_decref(lost);
		return NULL;
	}
	for (int i = 0; i < TUN_LOST_MAX; i++)
		json_object_set_new(lost, tun_lost_name((enum tun_lost)i),
				    json_integer((json_int_t)g->lost[i]));
	json_object_set_new(o, "away", json_boolean(g->away_since_us != 0));
	json_object_set_new(o, "away_ms", json_integer((json_int_t)away_ms));
	json_object_set_new(o, "streams_held", json_integer((json_int_t)g->held));
	json_object_set_new(o, "bytes_held", json_integer((json_int_t)g->held_bytes));
	json_object_set_new(o, "aways", json_integer((json_int_t)g->aways));
	json_object_set_new(o, "resumes", json_integer((json_int_t)g->resumes));
	json_object_set_new(o, "streams_resumed", json_integer((json_int_t)g->resumed));
	json_object_set_new(o, "bytes_replayed", json_integer((json_int_t)g->replayed_bytes));
	json_object_set_new(o, "streams_lost", lost);
	return o;
}

static json_t *status_json(const struct sidecar_lease_info *li, const struct tun_group_stats *g)
{
	json_t *o = json_object(), *ports = json_object(), *resume = resume_json(g);

	if (!o || !ports || !resume) {
		json_decref(o);
		json_decref(ports);
		json_decref(resume);
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
	json_object_set_new(o, "tunnels", json_integer((json_int_t)li->tunnels));
	json_object_set_new(o, "relay", li->relay[0] ? json_string(li->relay) : json_null());
	json_object_set_new(o, "reconnects", json_integer((json_int_t)li->reconnects));
	json_object_set_new(o, "resumption", resume);
	return o;
}

static void sc_admin_dispatch(struct evhttp_request *req, void *arg)
{
	struct sidecar_admin *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct sidecar_lease_info li;

	if (!path)
		path = "";
	if (strcmp(path, "/healthz") != 0 && strcmp(path, "/readyz") != 0 &&
	    strcmp(path, "/status") != 0) {
		sr_http_reply_error(req, 404, "no such endpoint");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		sr_http_reply_error(req, 405, "method not allowed");
		return;
	}
	if (strcmp(path, "/healthz") == 0) {
		sr_http_reply_text(req, 200, "ok\n");
		return;
	}
	memset(&li, 0, sizeof(li));
	sidecar_get_lease(a->sidecar, &li);
	if (strcmp(path, "/readyz") == 0) {
		if (li.have_lease && li.connected)
			sr_http_reply_text(req, 200, "ready\n");
		else
			sr_http_reply_text(req, 503,
					   li.have_lease ? "not ready: tunnel down\n"
							 : "not ready: no lease\n");
		return;
	}
	{
		struct tun_group_stats g;
		sidecar_get_resume_stats(a->sidecar, &g);
		sr_http_reply_json(req, 200, status_json(&li, &g));
	}
}

struct sidecar_admin *sidecar_admin_new(struct event_base *base, struct sidecar *s,
					const char *listen, char *err, size_t errlen)
{
	struct sidecar_admin *a = calloc(1, sizeof(*a));
	struct sr_http_opts ho = {
	    .name = "status",
	    .listen = listen,
	    .max_headers = SC_ADMIN_MAX_HEADERS,
	    .max_body = SC_ADMIN_MAX_BODY,
	    .max_conns = SC_ADMIN_MAX_CONNS,
	    .deadline_ms = SC_ADMIN_DEADLINE_MS,
	    .handler = sc_admin_dispatch,
	    .arg = a,
	};

	if (!a) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	a->sidecar = s;
	if (sr_http_init(&a->api, base, &ho, err, errlen) != 0) {
		free(a);
		return NULL;
	}
	if (!a->api.loopback)
		SR_WARN(a->api.ctx, "status API is reachable off this host (lease and ports are "
				    "visible to anyone who can connect)");
	else
		SR_INFO(a->api.ctx, "status API listening");
	return a;
}

void sidecar_admin_free(struct sidecar_admin *a)
{
	if (!a)
		return;
	sr_http_fini(&a->api);
	free(a);
}

uint16_t sidecar_admin_port(const struct sidecar_admin *a)
{
	return a->api.port;
}
