/* HTTP requests from inside the event loop: libcurl's multi-socket interface
 * driven by libevent, so a request never blocks the loop. Used by the relay
 * fleet's etcd client and by discovery (the Kubernetes API).
 *
 * One struct sr_curl per event loop; it keeps libcurl's connection cache, so
 * requests to the same server reuse their connections. Only http and https
 * are allowed; redirects are not followed. Every callback runs from the
 * event loop, never from inside sr_curl_start, sr_curl_cancel or libcurl, so
 * a callback may start and cancel requests (sr_curl_free excepted).
 *
 * The process must call curl_global_init once before sr_curl_new (the
 * commands do so in main). */
#ifndef SR_CURL_H
#define SR_CURL_H

#include <stddef.h>

struct event_base;
struct sr_curl;
struct sr_curl_req;

struct sr_curl_opts {
	const char *method;         /* NULL: GET, or POST when body is set */
	const char *url;            /* http:// or https:// */
	const char *body;           /* copied; NULL: none */
	size_t body_len;
	const char *const *headers; /* "Name: value"; CR or LF is refused */
	size_t nheaders;
	/* libcurl opens these by name as a request connects, on the event
	 * loop: check them first (sr_curl_check_files), where they are set. */
	const char *ca_file;        /* NULL: the system's trust store; else the only CA */
	const char *cert_file;      /* client certificate (PEM), or NULL */
	const char *key_file;       /* its key, or NULL */
	long connect_timeout_ms;    /* 0: 10 s */
	long timeout_ms;            /* whole request; 0: none (a stream) */
	size_t max_body;            /* 0: 1 MiB. Whole answer, or (stream) unconsumed bytes */
	/* Stream mode when set: answer bytes are handed over as they come, in
	 * order, and not kept for the done callback. Return how many bytes
	 * were used (a partial line stays and comes again with more), or
	 * (size_t)-1 to end the request (done is then called with err set). */
	size_t (*on_data)(const char *p, size_t n, void *arg);
};

/* 0 if each file given (NULL: none) opens without blocking and is a
 * regular file of a certificate's size; else SR_EINVAL with the reason, the
 * file named, in err. A FIFO there would block the event loop in open(). */
int sr_curl_check_files(const char *ca_file, const char *cert_file, const char *key_file,
			char *err, size_t errlen);

/* The request ended. err is 0 when an HTTP answer arrived (whatever its
 * status), or a negative SR_E* (SR_ETIMEDOUT, SR_ETOOBIG, SR_EIO, SR_ETLS,
 * SR_ECLOSED for an on_data refusal) with a one-line reason in errmsg.
 * body/len: the answer (NUL-terminated; empty in stream mode), borrowed for
 * the call. The request is freed after the call. */
typedef void (*sr_curl_done_cb)(int err, long status, const char *body, size_t len,
				const char *errmsg, void *arg);

struct sr_curl *sr_curl_new(struct event_base *base);
/* Cancels every open request (their done callbacks are not called). Not
 * from inside an sr_curl callback. NULL is a no-op. */
void sr_curl_free(struct sr_curl *c);

/* Start a request. Returns NULL on a bad option (reason in err) or
 * allocation failure; done is then never called. */
struct sr_curl_req *sr_curl_start(struct sr_curl *c, const struct sr_curl_opts *o,
				  sr_curl_done_cb done, void *arg, char *err, size_t errlen);
/* From inside r's own done callback only: 1 if any byte of the request
 * reached the server's connection, 0 if none did (refused connection, TLS
 * handshake failure). A request with 0 was certainly not acted on, so it
 * may be repeated elsewhere even if it is not idempotent. */
int sr_curl_sent(const struct sr_curl_req *r);
/* From inside r's own done callback only: bytes of the answer's body that
 * had come (on a timeout: how much of it came in time). */
size_t sr_curl_received(const struct sr_curl_req *r);
/* End a request whose done callback has not run; it will not run. */
void sr_curl_cancel(struct sr_curl_req *r);
/* Requests open (for tests and metrics). */
size_t sr_curl_pending(const struct sr_curl *c);

#endif
