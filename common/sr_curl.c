/* libcurl's multi-socket interface on libevent. See sr_curl.h.
 *
 * libcurl tells us which sockets to watch (sock_cb) and when to call it
 * back (timer_cb); we call curl_multi_socket_action from those events. The
 * caller's callbacks are never run from inside libcurl: after each action,
 * dispatch() hands over what arrived (stream bytes, finished requests), so
 * a callback may use this module freely. A request cancelled during dispatch
 * is only marked, and freed when dispatch ends. */
#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>

#define DEFAULT_CONNECT_MS 10000L
#define DEFAULT_MAX_BODY (1024 * 1024)

enum req_state {
	REQ_RUNNING,  /* in the multi handle */
	REQ_FINISHED, /* out of it; done not yet called */
	REQ_DEAD,     /* done called or cancelled; freed after dispatch */
};

struct sock_ev {
	struct event *ev;
	struct sock_ev *prev, *next;
};

struct sr_curl_req {
	struct sr_curl *c;
	CURL *easy;
	struct curl_slist *hdrs;
	char *body;
	char *buf; /* answer bytes not yet handed over */
	size_t len, cap, max;
	size_t (*on_data)(const char *p, size_t n, void *arg);
	sr_curl_done_cb done;
	void *arg;
	enum req_state state;
	CURLcode result;
	int too_big;
	int refused; /* on_data said stop */
	int no_mem;  /* its socket could not be watched: fail it */
	char errbuf[CURL_ERROR_SIZE];
	struct sr_curl_req *prev, *next;
};

struct sr_curl {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	struct sr_curl_req *reqs; /* every request not yet freed */
	struct sock_ev *socks;
	size_t open;              /* requests whose done may still run */
	int dispatching;
	int timer_failed; /* the last timeout libcurl asked for is not armed */
};

static void req_unlink_free(struct sr_curl_req *r)
{
	struct sr_curl *c = r->c;

	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	if (r->easy)
		curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->hdrs);
	free(r->body);
	free(r->buf);
	free(r);
}

/* Out of libcurl; the caller still owns r (marks or frees it). */
static void req_detach(struct sr_curl_req *r)
{
	if (r->state == REQ_RUNNING)
		curl_multi_remove_handle(r->c->multi, r->easy);
}

static int map_error(const struct sr_curl_req *r)
{
	if (r->too_big)
		return SR_ETOOBIG;
	if (r->refused)
		return SR_ECLOSED;
	switch (r->result) {
	case CURLE_OUT_OF_MEMORY:
		return SR_ENOMEM;
	case CURLE_OPERATION_TIMEDOUT:
		return SR_ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
		return SR_ERESOLVE;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CIPHER:
		return SR_ETLS;
	default:
		return SR_EIO;
	}
}

/* Hand stream bytes to on_data. Returns 0, or -1 if it refused them (the
 * request is then finished with an error). */
static int deliver(struct sr_curl_req *r)
{
	while (r->len > 0 && r->state != REQ_DEAD) {
		size_t used = r->on_data(r->buf, r->len, r->arg);
		if (r->state == REQ_DEAD) /* cancelled from inside */
			return 0;
		if (used == (size_t)-1 || used > r->len) {
			r->refused = 1;
			return -1;
		}
		if (used == 0)
			break;
		memmove(r->buf, r->buf + used, r->len - used);
		r->len -= used;
	}
	return 0;
}

static void finish(struct sr_curl_req *r)
{
	char msg[CURL_ERROR_SIZE + 64], esc[SR_ESC_SIZE(CURL_ERROR_SIZE)];
	long status = 0;
	int err = 0;

	if (r->result != CURLE_OK || r->too_big || r->refused) {
		err = map_error(r);
		if (r->too_big)
			snprintf(msg, sizeof(msg), "answer larger than %zu bytes", r->max);
		else if (r->refused)
			snprintf(msg, sizeof(msg), "answer refused by its reader");
		else
			snprintf(msg, sizeof(msg), "%s",
				 sr_esc(r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result),
					esc, sizeof(esc)));
	} else {
		msg[0] = '\0';
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
	}
	r->state = REQ_DEAD;
	r->c->open--;
	r->done(err, status, err || r->on_data ? "" : (r->buf ? r->buf : ""),
		err || r->on_data ? 0 : r->len, msg, r->arg);
}

static void dispatch(struct sr_curl *c)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
		struct sr_curl_req *r = NULL;
		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		if (!r || r->state != REQ_RUNNING)
			continue;
		r->result = m->data.result;
		curl_multi_remove_handle(c->multi, r->easy);
		r->state = REQ_FINISHED;
	}
	for (struct sr_curl_req *r = c->reqs; r; r = r->next) {
		if (r->no_mem && r->state == REQ_RUNNING) {
			curl_multi_remove_handle(c->multi, r->easy);
			r->result = CURLE_OUT_OF_MEMORY;
			r->state = REQ_FINISHED;
		}
	}

	c->dispatching++;
	for (struct sr_curl_req *r = c->reqs; r; r = r->next) {
		if (r->state == REQ_DEAD)
			continue;
		if (r->on_data && r->len > 0 && !r->too_big && deliver(r) != 0 &&
		    r->state == REQ_RUNNING) {
			curl_multi_remove_handle(c->multi, r->easy);
			r->state = REQ_FINISHED;
		}
		if (r->state == REQ_FINISHED)
			finish(r);
	}
	if (--c->dispatching == 0) {
		struct sr_curl_req *r = c->reqs, *next;
		for (; r; r = next) {
			next = r->next;
			if (r->state == REQ_DEAD)
				req_unlink_free(r);
		}
	}
}

static void timer_retry(struct sr_curl *c);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct sr_curl *c = arg;
	int running;

	(void)fd;
	(void)what;
	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	timer_retry(c);
	dispatch(c);
}

static void on_sock(evutil_socket_t fd, short what, void *arg)
{
	struct sr_curl *c = arg;
	int running, action = 0;

	if (what & EV_READ)
		action |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		action |= CURL_CSELECT_OUT;
	curl_multi_socket_action(c->multi, fd, action, &running);
	timer_retry(c);
	dispatch(c);
}

static void sock_free(struct sr_curl *c, struct sock_ev *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		c->socks = s->next;
	if (s->next)
		s->next->prev = s->prev;
	event_free(s->ev);
	free(s);
}

/* The transfer whose socket could not be watched ends with SR_ENOMEM at
 * the next dispatch. Not -1 to libcurl, which would fail every transfer
 * of the multi handle for good (see timer_cb). */
static int sock_failed(CURL *easy)
{
	struct sr_curl_req *r = NULL;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
	if (r)
		r->no_mem = 1;
	return 0;
}

static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp)
{
	struct sr_curl *c = arg;
	struct sock_ev *s = sockp;
	short kind = EV_PERSIST;

	if (what == CURL_POLL_REMOVE) {
		if (s) {
			curl_multi_assign(c->multi, fd, NULL);
			sock_free(c, s);
		}
		return 0;
	}
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s)
			return sock_failed(easy);
		s->ev = event_new(c->base, fd, kind, on_sock, c);
		if (!s->ev) {
			free(s);
			return sock_failed(easy);
		}
		s->next = c->socks;
		if (c->socks)
			c->socks->prev = s;
		c->socks = s;
		curl_multi_assign(c->multi, fd, s);
	} else {
		event_del(s->ev);
		event_assign(s->ev, c->base, fd, kind, on_sock, c);
	}
	return event_add(s->ev, NULL) == 0 ? 0 : sock_failed(easy);
}

/* Never returns -1: libcurl would then fail every transfer of the multi
 * handle, later ones included, for good. A timer that cannot be armed
 * (evtimer_add grows libevent's heap, which may fail) is noted instead:
 * sr_curl_start refuses the request that needed it, and after each action
 * it is tried again. */
static int timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
	struct sr_curl *c = arg;
	struct timeval tv;

	(void)multi;
	c->timer_failed = 0;
	if (timeout_ms < 0) {
		event_del(c->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	if (evtimer_add(c->timer, &tv) != 0)
		c->timer_failed = 1;
	return 0;
}

static void timer_retry(struct sr_curl *c)
{
	long ms = -1;

	if (c->timer_failed && curl_multi_timeout(c->multi, &ms) == CURLM_OK)
		timer_cb(c->multi, ms, c);
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct sr_curl_req *r = arg;
	size_t n = size * nmemb;

	if (r->len + n > r->max) {
		r->too_big = 1;
		return 0; /* libcurl ends the transfer: CURLE_WRITE_ERROR */
	}
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		char *b;
		while (cap < r->len + n + 1)
			cap *= 2;
		b = realloc(r->buf, cap);
		if (!b)
			return 0;
		r->buf = b;
		r->cap = cap;
	}
	memcpy(r->buf + r->len, p, n);
	r->len += n;
	r->buf[r->len] = '\0';
	return n;
}

struct sr_curl *sr_curl_new(struct event_base *base)
{
	struct sr_curl *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base = base;
	c->multi = curl_multi_init();
	c->timer = evtimer_new(base, on_timer, c);
	if (!c->multi || !c->timer) {
		sr_curl_free(c);
		return NULL;
	}
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	return c;
}

void sr_curl_free(struct sr_curl *c)
{
	if (!c)
		return;
	while (c->reqs) {
		req_detach(c->reqs);
		req_unlink_free(c->reqs);
	}
	if (c->multi)
		curl_multi_cleanup(c->multi);
	while (c->socks)
		sock_free(c, c->socks);
	if (c->timer)
		event_free(c->timer);
	free(c);
}

static int file_usable(const char *what, const char *path, char *err, size_t errlen)
{
	char why[128], esc[SR_ESC_SIZE(64)];

	if (!path || sr_file_check(path, SR_FILE_PEM_MAX, why, sizeof(why)) == 0)
		return 1;
	sr_seterr(err, errlen, "the %s %s: %s", what, sr_esc_n(path, 64, esc, sizeof(esc)), why);
	return 0;
}

int sr_curl_check_files(const char *ca_file, const char *cert_file, const char *key_file,
			char *err, size_t errlen)
{
	return file_usable("CA file", ca_file, err, errlen) &&
			       file_usable("certificate file", cert_file, err, errlen) &&
			       file_usable("key file", key_file, err, errlen)
		   ? 0
		   : SR_EINVAL;
}

static int set_opts(struct sr_curl_req *r, const struct sr_curl_opts *o, char *err, size_t errlen)
{
	CURL *e = r->easy;
	int ok = 1;

	if (o->body) {
		r->body = malloc(o->body_len + 1);
		if (!r->body)
			return SR_ENOMEM;
		memcpy(r->body, o->body, o->body_len);
		r->body[o->body_len] = '\0';
	}
	for (size_t i = 0; i < o->nheaders; i++) {
		struct curl_slist *h;
		if (strpbrk(o->headers[i], "\r\n")) {
			sr_seterr(err, errlen, "an HTTP header holds a line break");
			return SR_EINVAL;
		}
		h = curl_slist_append(r->hdrs, o->headers[i]);
		if (!h)
			return SR_ENOMEM;
		r->hdrs = h;
	}
	ok &= curl_easy_setopt(e, CURLOPT_URL, o->url) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_WRITEDATA, r) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_USERAGENT, "sparkrelay/" SR_VERSION) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
			       o->connect_timeout_ms > 0 ? o->connect_timeout_ms
							 : DEFAULT_CONNECT_MS) == CURLE_OK;
	ok &= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK;
	/* Never a proxy from the environment (http_proxy, HTTPS_PROXY,
	 * ALL_PROXY): it would see or steer the API server's and etcd's
	 * traffic, and a plain-HTTP etcd's in clear. */
	ok &= curl_easy_setopt(e, CURLOPT_PROXY, "") == CURLE_OK;
	if (o->timeout_ms > 0)
		ok &= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms) == CURLE_OK;
	if (r->hdrs)
		ok &= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs) == CURLE_OK;
	if (r->body) {
		ok &= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)o->body_len) == CURLE_OK;
		ok &= curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body) == CURLE_OK;
	}
	if (o->method)
		ok &= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method) == CURLE_OK;
	/* The configured CA alone: libcurl would also trust every CA of the
	 * system's directory (its built-in CAPATH) beside it. */
	if (o->ca_file) {
		ok &= curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file) == CURLE_OK;
		ok &= curl_easy_setopt(e, CURLOPT_CAPATH, NULL) == CURLE_OK;
	}
	if (o->cert_file)
		ok &= curl_easy_setopt(e, CURLOPT_SSLCERT, o->cert_file) == CURLE_OK;
	if (o->key_file)
		ok &= curl_easy_setopt(e, CURLOPT_SSLKEY, o->key_file) == CURLE_OK;
	if (!ok) {
		sr_seterr(err, errlen, "libcurl refused a request option");
		return SR_EINVAL;
	}
	return 0;
}

struct sr_curl_req *sr_curl_start(struct sr_curl *c, const struct sr_curl_opts *o,
				  sr_curl_done_cb done, void *arg, char *err, size_t errlen)
{
	struct sr_curl_req *r;

	if (err && errlen)
		err[0] = '\0';
	if (!o->url || (strncmp(o->url, "http://", 7) != 0 && strncmp(o->url, "https://", 8) != 0)) {
		sr_seterr(err, errlen, "the URL must start with http:// or https://");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	r->c = c;
	r->done = done;
	r->arg = arg;
	r->on_data = o->on_data;
	r->max = o->max_body ? o->max_body : DEFAULT_MAX_BODY;
	r->easy = curl_easy_init();
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	if (!r->easy) {
		sr_seterr(err, errlen, "out of memory");
		req_unlink_free(r);
		return NULL;
	}
	if (set_opts(r, o, err, errlen) != 0) {
		if (err && !err[0])
			sr_seterr(err, errlen, "out of memory");
		req_unlink_free(r);
		return NULL;
	}
	c->timer_failed = 0;
	if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK) {
		sr_seterr(err, errlen, "libcurl refused the request");
		req_unlink_free(r);
		return NULL;
	}
	if (c->timer_failed) { /* it would never start */
		curl_multi_remove_handle(c->multi, r->easy);
		timer_retry(c);
		sr_seterr(err, errlen, "out of memory");
		req_unlink_free(r);
		return NULL;
	}
	c->open++;
	return r;
}

void sr_curl_cancel(struct sr_curl_req *r)
{
	struct sr_curl *c;

	if (!r || r->state == REQ_DEAD)
		return;
	c = r->c;
	req_detach(r);
	r->state = REQ_DEAD;
	c->open--;
	if (!c->dispatching)
		req_unlink_free(r);
}

int sr_curl_sent(const struct sr_curl_req *r)
{
	long n = 0;

	/* the header bytes libcurl wrote to the socket (0 when connect or the
	 * TLS handshake failed) */
	if (!r->easy || curl_easy_getinfo(r->easy, CURLINFO_REQUEST_SIZE, &n) != CURLE_OK)
		return 1; /* unknown: assume it may have been acted on */
	return n > 0;
}

size_t sr_curl_received(const struct sr_curl_req *r)
{
	curl_off_t n = 0;

	if (!r->easy || curl_easy_getinfo(r->easy, CURLINFO_SIZE_DOWNLOAD_T, &n) != CURLE_OK ||
	    n < 0)
		return 0;
	return (size_t)n;
}

size_t sr_curl_pending(const struct sr_curl *c)
{
	return c->open;
}
