/* Listener set-up and replies of the small HTTP APIs (contract in sr_http.h). */
#include "common/sr_http.h"

#include "common/sr_cidr.h"
#include "common/sr_err.h"
#include "common/sr_http_guard.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

/* The listener, made disabled and then enabled here: evhttp's own bind and
 * accept calls enable it themselves and ignore a failed event_add, which
 * would leave a bound socket that never accepts. Takes *adopt_fd (sets it
 * to -1) once a listener owns it. */
static int http_listen(struct sr_http *h, struct event_base *base, const struct sr_http_opts *o,
		       const char *host, uint16_t port, int *adopt_fd, char *err, size_t errlen)
{
	static const unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
				      LEV_OPT_REUSEABLE | LEV_OPT_DISABLED;
	struct evconnlistener *lev;

	if (o->adopt) {
		/* backlog 0: the other process made it listen already */
		lev = evconnlistener_new(base, NULL, NULL, flags, 0, *adopt_fd);
		if (!lev) {
			sr_seterr(err, errlen, "out of memory");
			return SR_ENOMEM;
		}
		*adopt_fd = -1;
	} else {
		struct evutil_addrinfo hints, *ai = NULL;
		char sport[8];
		int gai;

		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG;
		snprintf(sport, sizeof(sport), "%u", (unsigned)port);
		gai = evutil_getaddrinfo(host, sport, &hints, &ai);
		if (gai != 0 || !ai) {
			sr_seterr(err, errlen, "cannot listen on %s for the %s API: %s", o->listen,
				  o->name, gai ? evutil_gai_strerror(gai) : "no address");
			if (ai)
				evutil_freeaddrinfo(ai);
			return gai == EVUTIL_EAI_MEMORY ? SR_ENOMEM : SR_EIO;
		}
		errno = 0;
		lev = evconnlistener_new_bind(base, NULL, NULL, flags, 128, ai->ai_addr,
					      (int)ai->ai_addrlen);
		evutil_freeaddrinfo(ai);
		if (!lev) {
			int e = errno;

			sr_seterr(err, errlen, "cannot listen on %s for the %s API: %s", o->listen,
				  o->name, e ? strerror(e) : "out of memory");
			return e ? SR_EIO : SR_ENOMEM;
		}
	}
	h->sock = evhttp_bind_listener(h->http, lev);
	if (!h->sock) {
		evconnlistener_free(lev);
		sr_seterr(err, errlen, "out of memory");
		return SR_ENOMEM;
	}
	/* From here sr_http_fini (evhttp_free) frees lev. */
	if (evconnlistener_enable(lev) != 0) {
		sr_seterr(err, errlen, "cannot accept on %s for the %s API: out of memory",
			  o->listen, o->name);
		return SR_ENOMEM;
	}
	return 0;
}

int sr_http_init(struct sr_http *h, struct event_base *base, const struct sr_http_opts *o,
		 char *err, size_t errlen)
{
	char host[256];
	uint16_t port;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	struct timeval tv;
	int rc, adopt_fd = o->adopt ? o->fd : -1;

	memset(h, 0, sizeof(*h));
	if (!o->listen || sr_split_hostport(o->listen, host, sizeof(host), &port, -1) != 0) {
		sr_seterr(err, errlen, "%s listen address \"%s\" is not host:port", o->name,
			  o->listen ? o->listen : "(null)");
		rc = SR_EINVAL;
		goto fail_fd;
	}
	h->loopback = sr_host_is_loopback(host);
	if (o->loopback_only && !h->loopback) {
		sr_seterr(err, errlen, "%s listener on %s is not a loopback address: %s", o->name,
			  o->listen, o->loopback_only);
		rc = SR_EINVAL;
		goto fail_fd;
	}
	h->http = evhttp_new(base);
	if (!h->http) {
		rc = SR_ENOMEM;
		goto fail;
	}
	evhttp_set_max_headers_size(h->http, (ev_ssize_t)o->max_headers);
	evhttp_set_max_body_size(h->http, (ev_ssize_t)o->max_body);
	/* Also evhttp's inactivity timeout, which the deadline makes redundant
	 * but for a connection the guard could not track (out of memory). */
	tv = sr_tv_ms(o->deadline_ms);
	evhttp_set_timeout_tv(h->http, &tv);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
						EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
						EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
	evhttp_set_gencb(h->http, o->handler, o->arg);
	rc = http_listen(h, base, o, host, port, &adopt_fd, err, errlen);
	if (rc != 0) {
		sr_http_fini(h);
		goto fail_fd;
	}
	if (getsockname(evhttp_bound_socket_get_fd(h->sock), (struct sockaddr *)&ss, &sslen) ==
	    0)
		h->port = sr_addr_port((struct sockaddr *)&ss);
	snprintf(h->ctx, sizeof(h->ctx), strchr(host, ':') ? "%s [%s]:%u" : "%s %s:%u", o->name,
		 host, (unsigned)h->port);
	/* before the loop runs: evhttp accepts nothing until then */
	h->guard = sr_http_guard_new(base, h->http, o->max_conns, o->deadline_ms, h->ctx);
	if (!h->guard) {
		rc = SR_ENOMEM;
		goto fail;
	}
	return 0;
fail:
	sr_seterr(err, errlen, "out of memory");
	sr_http_fini(h);
fail_fd:
	if (adopt_fd >= 0)
		close(adopt_fd);
	return rc;
}

void sr_http_fini(struct sr_http *h)
{
	if (h->http)
		evhttp_free(h->http); /* closes the listener and every connection */
	sr_http_guard_free(h->guard);
	memset(h, 0, sizeof(*h));
}

static const char *reason_phrase(int code)
{
	switch (code) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 413:
		return "Payload Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 503:
		return "Service Unavailable";
	}
	return "Unknown";
}

void sr_http_reply(struct evhttp_request *req, int code, const char *ctype,
		   struct evbuffer *body)
{
	struct evkeyvalq *hdr = evhttp_request_get_output_headers(req);

	evhttp_add_header(hdr, "Content-Type", ctype);
	evhttp_add_header(hdr, "Cache-Control", "no-store");
	/* one request per connection: its deadline is the request's */
	evhttp_add_header(hdr, "Connection", "close");
	evhttp_send_reply(req, code, reason_phrase(code), body);
}

void sr_http_reply_text(struct evhttp_request *req, int code, const char *text)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, text, strlen(text));
	sr_http_reply(req, code, "text/plain; charset=utf-8", b);
	evbuffer_free(b);
}

void sr_http_reply_json(struct evhttp_request *req, int code, json_t *j)
{
	struct evbuffer *b;
	char *s;

	if (!j) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	/* ASCII: peer text inside (an app name, a certificate's CN) may hold
	 * characters a terminal acts on (U+009B), and curl prints the body. */
	s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
	json_decref(j);
	b = evbuffer_new();
	if (!s || !b) {
		free(s);
		if (b)
			evbuffer_free(b);
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, s, strlen(s));
	evbuffer_add(b, "\n", 1);
	free(s);
	sr_http_reply(req, code, "application/json", b);
	evbuffer_free(b);
}

void sr_http_reply_error(struct evhttp_request *req, int code, const char *msg)
{
	sr_http_reply_json(req, code, json_pack("{s:s}", "error", msg));
}
