/* What the project's two small HTTP APIs (the relay's admin API, the
 * sidecar's status API) share: the evhttp listener, set up one way, and the
 * replies.
 *
 * The listener caps request headers and bodies, passes every method to the
 * handler (which answers 405 with an Allow header itself; evhttp alone would
 * answer 501), and is guarded (sr_http_guard.h): at most max_conns
 * connections open at once, each closed deadline_ms after its accept. Every
 * reply says "Connection: close", so a connection carries one request and
 * the deadline bounds that request, and "Cache-Control: no-store". */
#ifndef SR_HTTP_H
#define SR_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/sr_util.h"

struct event_base;
struct evbuffer;
struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;
struct sr_http_guard;

struct sr_http_opts {
	const char *name;     /* "admin": in messages, the log context, "the admin API" */
	const char *listen;   /* "host:port" or "[v6]:port"; port 0 picks a free port */
	size_t max_headers;   /* bytes; larger requests are refused by evhttp */
	size_t max_body;      /* bytes */
	unsigned max_conns;   /* open at once; a new one closes the oldest */
	unsigned deadline_ms; /* each connection is closed this long after its accept */
	/* Not NULL: a listen host that is not loopback (sr_host_is_loopback) is
	 * refused before anything is bound, with this advice after the reason. */
	const char *loopback_only;
	void (*handler)(struct evhttp_request *req, void *arg);
	void *arg;
	/* Set: serve fd, a listening socket on listen made by another process
	 * (a relay handover), instead of binding; stolen in every case. */
	int adopt;
	int fd;
};

/* Embedded in its owner; read the fields, do not write them. */
struct sr_http {
	struct evhttp *http;
	struct evhttp_bound_socket *sock;
	struct sr_http_guard *guard;
	uint16_t port;                /* the bound port */
	int loopback;                 /* the listen host is loopback */
	char ctx[SR_ADDRSTRLEN + 16]; /* "admin 127.0.0.1:9090": log context */
};

/* Listen in base (or adopt o->fd); connections are served once the loop runs. Returns 0, or
 * SR_EINVAL (listen is not host:port, or not loopback under loopback_only),
 * SR_EIO (cannot bind) or SR_ENOMEM, with a one-line reason in err; h then
 * needs no sr_http_fini. */
int sr_http_init(struct sr_http *h, struct event_base *base, const struct sr_http_opts *o,
		 char *err, size_t errlen);
/* Close the listener and every connection. A zeroed h is a no-op. */
void sr_http_fini(struct sr_http *h);

/* Answer req with code and its standard reason phrase, Content-Type ctype
 * and body (borrowed: its bytes are moved out). */
void sr_http_reply(struct evhttp_request *req, int code, const char *ctype,
		   struct evbuffer *body);
/* A text/plain (UTF-8) answer. */
void sr_http_reply_text(struct evhttp_request *req, int code, const char *text);
/* j as indented JSON (ASCII, other characters as \u escapes) and a newline.
 * Steals j; NULL (a failed construction) answers 500. */
void sr_http_reply_json(struct evhttp_request *req, int code, json_t *j);
/* {"error": msg} as sr_http_reply_json. */
void sr_http_reply_error(struct evhttp_request *req, int code, const char *msg);

#endif
