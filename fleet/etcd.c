/* The etcd v3 client. See etcd.h.
 *
 * Every operation is one POST to the gateway through sr_curl, whose done
 * callback already runs from the event loop; so the user's callback runs
 * from there too, and a failed attempt can start the next endpoint's from
 * inside it. A watch is one streaming POST whose newline-delimited messages
 * arrive through sr_curl's stream mode; a keeper is two timers and at most
 * one keepalive in flight. User callbacks that may free their own object
 * (watch, keeper) are called last, or through a guard that says whether
 * the object still exists afterwards. */
#include "fleet/etcd.h"
#include "fleet/etcd_json.h"
#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define DEFAULT_TIMEOUT_MS 5000L
#define DEFAULT_MAX_ANSWER (4u * 1024 * 1024)
#define MAX_ENDPOINT_LEN 255
#define WATCH_BACKOFF_MIN_MS 100L
#define WATCH_BACKOFF_MAX_MS 5000L
#define KEEPER_MIN_INTERVAL_MS 200L
#define KEEPER_FIRST_RETRY_MS 1000L /* then doubled, up to the keepalive interval */
#define KEEPER_LAST_TRY_MS 200L     /* the shortest retry near the lease's end */

/* hasleader: a member without a leader refuses the request at once (code
 * 14, so a repeatable one moves to the next endpoint) and ends a watch
 * within about three election timeouts, instead of answering from a copy
 * that no longer changes or holding the request until it times out. */
static const char *const json_header[] = {"Content-Type: application/json",
					  "Grpc-Metadata-Hasleader: true"};

struct etcd {
	struct event_base *base;
	struct sr_curl *curl;
	char *ep[ETCD_MAX_ENDPOINTS];
	size_t nep;
	size_t cur; /* the endpoint that last answered */
	char *ca_file, *cert_file, *key_file;
	long timeout_ms;
	size_t max_answer;
	struct etcd_op *ops;
	struct etcd_watch *watches;
	struct etcd_keeper *keepers;
};

struct etcd_op {
	struct etcd *c;
	struct etcd_op *prev, *next;
	enum etcd_kind kind;
	char *body;
	size_t body_len;
	enum etcd_op_type *types; /* txn: success branch's types, then failure's */
	size_t nsucc, nfail;
	int repeatable; /* may be sent again after an attempt that may have arrived */
	long timeout_ms;
	size_t ep, tries;
	struct sr_curl_req *req;
	etcd_cb cb;
	void *arg;
};

struct etcd_keeper {
	struct etcd *c;
	struct etcd_keeper *prev, *next;
	int64_t lease, ttl;
	int64_t granted;      /* the TTL asked for: what etcd answers is held to it */
	long retry_ms;        /* the last retry's delay after failures; 0 after a success */
	uint64_t expire_us;   /* when the expire timer fires */
	struct event *tick;   /* the next keepalive */
	struct event *expire; /* the lease's end, as far as we know */
	struct etcd_op *op;   /* the keepalive in flight */
	uint64_t sent_us;     /* when it started */
	int lost;
	etcd_lost_cb lost_cb;
	void *arg;
};

struct etcd_watch {
	struct etcd *c;
	struct etcd_watch *prev, *next;
	struct etcd_watch_opts o; /* o.key points at key */
	char *key;
	int64_t next_rev; /* first revision not delivered yet; 0: from the stream's start */
	size_t ep;
	struct sr_curl_req *req;
	struct event *retry, *idle;
	long backoff_ms;
	int stopped; /* compacted: no more streams */
	int *gone;   /* set while a user callback runs: it becomes 1 if the watch is freed */
};

/* ---- lists --------------------------------------------------------------- */

#define LIST_ADD(head, x)                                                                      \
	do {                                                                                   \
		(x)->prev = NULL;                                                              \
		(x)->next = (head);                                                            \
		if (head)                                                                      \
			(head)->prev = (x);                                                    \
		(head) = (x);                                                                  \
	} while (0)

#define LIST_DEL(head, x)                                                                      \
	do {                                                                                   \
		if ((x)->prev)                                                                 \
			(x)->prev->next = (x)->next;                                           \
		else                                                                           \
			(head) = (x)->next;                                                    \
		if ((x)->next)                                                                 \
			(x)->next->prev = (x)->prev;                                           \
		(x)->prev = (x)->next = NULL;                                                  \
	} while (0)

/* ---- the client ---------------------------------------------------------- */

/* "http(s)://authority" with nothing after it but an optional "/", which is
 * dropped. A malformed endpoint is a configuration error, shown escaped. */
static char *endpoint_dup(const char *s, char *err, size_t errlen)
{
	char esc[SR_ESC_SIZE(80)];
	size_t n = s ? strlen(s) : 0;
	const char *auth;

	if (!s || n > MAX_ENDPOINT_LEN ||
	    (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0)) {
		sr_seterr(err, errlen,
			  "etcd endpoint \"%s\": want http://host:port or https://host:port",
			  sr_esc_n(s, 80, esc, sizeof(esc)));
		return NULL;
	}
	auth = s + (s[4] == 's' ? 8 : 7);
	if (n > 0 && s[n - 1] == '/')
		n--;
	if (auth >= s + n || memchr(auth, '/', (size_t)(s + n - auth)) ||
	    strpbrk(auth, "?#@ \\\"") || !sr_valid_chars(auth, MAX_ENDPOINT_LEN, ".-_:[]/")) {
		sr_seterr(err, errlen,
			  "etcd endpoint \"%s\": want http(s)://host:port with no path or user",
			  sr_esc_n(s, 80, esc, sizeof(esc)));
		return NULL;
	}
	return strndup(s, n);
}

int etcd_endpoint_check(const char *s, char *err, size_t errlen)
{
	char *d = endpoint_dup(s, err, errlen);

	if (!d && err && errlen && !err[0])
		sr_seterr(err, errlen, "out of memory");
	free(d);
	return d ? 0 : SR_EINVAL;
}

static char *opt_dup(const char *s, int *bad)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		*bad = 1;
	return d;
}

struct etcd *etcd_new(struct event_base *base, const struct etcd_opts *o, char *err,
		      size_t errlen)
{
	struct etcd *c;
	int bad = 0;

	if (err && errlen)
		err[0] = '\0';
	if (!o->endpoints || o->nendpoints == 0 || o->nendpoints > ETCD_MAX_ENDPOINTS) {
		sr_seterr(err, errlen, "etcd: 1 to %d endpoints, not %zu", ETCD_MAX_ENDPOINTS,
			  o->nendpoints);
		return NULL;
	}
	if (o->timeout_ms < 0) {
		sr_seterr(err, errlen, "etcd: a negative timeout");
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	c->base = base;
	c->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->max_answer = o->max_answer ? o->max_answer : DEFAULT_MAX_ANSWER;
	for (size_t i = 0; i < o->nendpoints; i++) {
		c->ep[i] = endpoint_dup(o->endpoints[i], err, errlen);
		if (!c->ep[i]) {
			if (err && errlen && !err[0])
				sr_seterr(err, errlen, "out of memory");
			etcd_free(c);
			return NULL;
		}
		c->nep++;
	}
	/* Checked once, here: a keepalive must not fail for a descriptor. */
	if (sr_curl_check_files(o->ca_file, o->cert_file, o->key_file, err, errlen) != 0) {
		etcd_free(c);
		return NULL;
	}
	c->ca_file = opt_dup(o->ca_file, &bad);
	c->cert_file = opt_dup(o->cert_file, &bad);
	c->key_file = opt_dup(o->key_file, &bad);
	c->curl = bad ? NULL : sr_curl_new(base);
	if (!c->curl) {
		sr_seterr(err, errlen, "out of memory");
		etcd_free(c);
		return NULL;
	}
	return c;
}

static void op_free(struct etcd_op *op)
{
	free(op->body);
	free(op->types);
	free(op);
}

static void watch_release(struct etcd_watch *w);
static void keeper_release(struct etcd_keeper *k);

const char *etcd_strerror(int err)
{
	switch (err) {
	case 0: return "ok";
	case SR_EIO: return "no answer";
	case SR_ETLS: return "TLS failed";
	case SR_ETIMEDOUT: return "timed out";
	case SR_ETOOBIG: return "answer too large";
	case SR_EPROTO: return "not an etcd answer";
	case SR_ENOTFOUND: return "not found";
	case SR_EBUSY: return "unavailable";
	case SR_EDENIED: return "denied";
	case SR_ENOMEM: return "out of memory";
	default: return "etcd error";
	}
}

void etcd_free(struct etcd *c)
{
	if (!c)
		return;
	while (c->watches)
		etcd_watch_free(c->watches);
	while (c->keepers)
		etcd_keeper_free(c->keepers);
	while (c->ops)
		etcd_cancel(c->ops);
	sr_curl_free(c->curl);
	for (size_t i = 0; i < c->nep; i++)
		free(c->ep[i]);
	free(c->ca_file);
	free(c->cert_file);
	free(c->key_file);
	free(c);
}

const char *etcd_endpoint(const struct etcd *c)
{
	return c->ep[c->cur];
}

/* ---- one request, tried on each endpoint --------------------------------- */

static void op_done(int err, long status, const char *body, size_t len, const char *cmsg,
		    void *arg);

static struct sr_curl_req *post(struct etcd *c, size_t ep, const char *path, const char *body,
				size_t body_len, long timeout_ms,
				size_t (*on_data)(const char *, size_t, void *),
				sr_curl_done_cb done, void *arg, char *err, size_t errlen)
{
	char url[MAX_ENDPOINT_LEN + 32];
	struct sr_curl_opts so = {
	    .method = "POST",
	    .url = url,
	    .body = body,
	    .body_len = body_len,
	    .headers = json_header,
	    .nheaders = SR_ARRAY_LEN(json_header),
	    .ca_file = c->ca_file,
	    .cert_file = c->cert_file,
	    .key_file = c->key_file,
	    .connect_timeout_ms = c->timeout_ms,
	    .timeout_ms = timeout_ms,
	    .max_body = c->max_answer,
	    .on_data = on_data,
	};

	snprintf(url, sizeof(url), "%s%s", c->ep[ep], path);
	return sr_curl_start(c->curl, &so, done, arg, err, errlen);
}

static int op_attempt(struct etcd_op *op, char *err, size_t errlen)
{
	op->tries++;
	op->req = post(op->c, op->ep, etcd_json_path(op->kind), op->body, op->body_len,
		       op->timeout_ms, NULL, op_done, op, err, errlen);
	return op->req ? 0 : SR_ENOMEM;
}

/* Try the next endpoint after a failed attempt, if that is allowed and one
 * is left. Returns 1 if an attempt was started. */
static int op_failover(struct etcd_op *op, const char *why)
{
	struct etcd *c = op->c;
	size_t from = op->ep;
	char err[200];

	if (op->tries >= c->nep)
		return 0;
	op->ep = (op->ep + 1) % c->nep;
	if (op_attempt(op, err, sizeof(err)) != 0)
		return 0;
	SR_WARN("etcd", "%s: %s; trying %s", c->ep[from], why, c->ep[op->ep]);
	return 1;
}

static void op_done(int err, long status, const char *body, size_t len, const char *cmsg,
		    void *arg)
{
	struct etcd_op *op = arg;
	struct etcd *c = op->c;
	struct etcd_answer a;
	int sent = err ? sr_curl_sent(op->req) : 1;
	size_t partial = err == SR_ETIMEDOUT ? sr_curl_received(op->req) : 0;

	memset(&a, 0, sizeof(a));
	op->req = NULL;
	if (err) {
		/* an answer too large is the same everywhere: not worth another try */
		if (err != SR_ETOOBIG && (op->repeatable || !sent) && op_failover(op, cmsg))
			return;
		snprintf(a.msg, sizeof(a.msg), "etcd %s: %s", c->ep[op->ep], cmsg);
		a.res.msg = a.msg;
		a.res.partial = partial;
	} else {
		c->cur = op->ep; /* it answered */
		err = etcd_json_answer(op->kind, status, body, len, op->types, op->nsucc,
				       op->types ? op->types + op->nsucc : NULL, op->nfail, &a);
		/* Unavailable: no leader, shutting down, or a proposal that timed
		 * out and may still be applied; so only what may repeat moves on */
		if (err && a.res.code == 14 && op->repeatable && op_failover(op, a.msg)) {
			etcd_answer_fini(&a);
			return;
		}
	}
	LIST_DEL(c->ops, op);
	op->cb(err, &a.res, op->arg);
	etcd_answer_fini(&a);
	op_free(op);
}

/* Takes body (freed on failure). */
static struct etcd_op *op_start(struct etcd *c, enum etcd_kind kind, char *body, size_t len,
				int repeatable, long timeout_ms, etcd_cb cb, void *arg,
				char *err, size_t errlen)
{
	struct etcd_op *op;

	if (!body)
		return NULL;
	if (!cb) {
		sr_seterr(err, errlen, "etcd: no callback");
		free(body);
		return NULL;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		sr_seterr(err, errlen, "out of memory");
		free(body);
		return NULL;
	}
	op->c = c;
	op->kind = kind;
	op->body = body;
	op->body_len = len;
	op->repeatable = repeatable;
	op->timeout_ms = timeout_ms ? timeout_ms : c->timeout_ms;
	op->ep = c->cur;
	op->cb = cb;
	op->arg = arg;
	if (op_attempt(op, err, errlen) != 0) {
		op_free(op);
		return NULL;
	}
	LIST_ADD(c->ops, op);
	return op;
}

void etcd_cancel(struct etcd_op *op)
{
	if (!op)
		return;
	sr_curl_cancel(op->req);
	LIST_DEL(op->c->ops, op);
	op_free(op);
}

struct etcd_op *etcd_kv(struct etcd *c, const struct etcd_req *rq, etcd_cb cb, void *arg,
			char *err, size_t errlen)
{
	static const enum etcd_kind kind[] = {[ETCD_RANGE] = ETCD_K_RANGE,
					      [ETCD_PUT] = ETCD_K_PUT,
					      [ETCD_DELETE] = ETCD_K_DELETE};
	size_t len = 0;
	char *body = etcd_json_req(rq, &len, err, errlen);

	if (!body)
		return NULL;
	return op_start(c, kind[rq->type], body, len, rq->type == ETCD_RANGE, 0, cb, arg, err,
			errlen);
}

struct etcd_op *etcd_txn(struct etcd *c, const struct etcd_cmp *cmp, size_t ncmp,
			 const struct etcd_req *success, size_t nsuccess,
			 const struct etcd_req *failure, size_t nfailure, etcd_cb cb, void *arg,
			 char *err, size_t errlen)
{
	size_t len = 0;
	char *body =
	    etcd_json_txn(cmp, ncmp, success, nsuccess, failure, nfailure, &len, err, errlen);
	enum etcd_op_type *types = NULL;
	struct etcd_op *op;
	int reads_only = 1;

	if (!body)
		return NULL;
	if (nsuccess + nfailure > 0) {
		types = malloc((nsuccess + nfailure) * sizeof(*types));
		if (!types) {
			free(body);
			sr_seterr(err, errlen, "out of memory");
			return NULL;
		}
	}
	for (size_t i = 0; i < nsuccess + nfailure; i++) {
		types[i] = i < nsuccess ? success[i].type : failure[i - nsuccess].type;
		reads_only &= types[i] == ETCD_RANGE;
	}
	op = op_start(c, ETCD_K_TXN, body, len, reads_only, 0, cb, arg, err, errlen);
	if (!op) {
		free(types);
		return NULL;
	}
	op->types = types;
	op->nsucc = nsuccess;
	op->nfail = nfailure;
	return op;
}

struct etcd_op *etcd_lease_grant(struct etcd *c, int64_t ttl, etcd_cb cb, void *arg, char *err,
				 size_t errlen)
{
	size_t len = 0;
	char *body = etcd_json_lease(ETCD_K_GRANT, ttl, &len, err, errlen);

	return op_start(c, ETCD_K_GRANT, body, len, 0, 0, cb, arg, err, errlen);
}

static struct etcd_op *keepalive(struct etcd *c, int64_t lease, long timeout_ms, etcd_cb cb,
				 void *arg, char *err, size_t errlen)
{
	size_t len = 0;
	char *body = etcd_json_lease(ETCD_K_KEEPALIVE, lease, &len, err, errlen);

	return op_start(c, ETCD_K_KEEPALIVE, body, len, 1, timeout_ms, cb, arg, err, errlen);
}

struct etcd_op *etcd_lease_keepalive(struct etcd *c, int64_t lease, etcd_cb cb, void *arg,
				     char *err, size_t errlen)
{
	return keepalive(c, lease, 0, cb, arg, err, errlen);
}

struct etcd_op *etcd_lease_revoke(struct etcd *c, int64_t lease, etcd_cb cb, void *arg,
				  char *err, size_t errlen)
{
	size_t len = 0;
	char *body = etcd_json_lease(ETCD_K_REVOKE, lease, &len, err, errlen);

	return op_start(c, ETCD_K_REVOKE, body, len, 0, 0, cb, arg, err, errlen);
}

/* ---- keeping a lease alive ----------------------------------------------- */

static long keeper_interval_ms(const struct etcd_keeper *k)
{
	long ms = (long)(k->ttl * 1000 / 3);

	return ms < KEEPER_MIN_INTERVAL_MS ? KEEPER_MIN_INTERVAL_MS : ms;
}

static void arm(struct event *ev, long ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	evtimer_add(ev, &tv);
}

/* The lease is gone: tell the owner, last (it may free k). */
static void keeper_lose(struct etcd_keeper *k, int err, const char *msg)
{
	k->lost = 1;
	etcd_cancel(k->op);
	k->op = NULL;
	evtimer_del(k->tick);
	evtimer_del(k->expire);
	k->lost_cb(err, msg, k->arg);
}

static void keeper_answer(int err, const struct etcd_result *res, void *arg)
{
	struct etcd_keeper *k = arg;
	char msg[ETCD_MSG_SIZE + 64];
	long next = keeper_interval_ms(k);

	k->op = NULL;
	if (err == SR_ENOTFOUND || (err == 0 && res->ttl <= 0)) {
		snprintf(msg, sizeof(msg), "etcd: lease %lld is gone (expired or revoked)",
			 (long long)k->lease);
		keeper_lose(k, SR_ENOTFOUND, msg);
		return;
	}
	if (err == 0) {
		/* Alive for ttl from when the keepalive left, at least. A TTL
		 * above the one granted (a faulty etcd, or anyone on the path to
		 * an http:// endpoint) would push the next keepalive and the
		 * expiry check out past the real lease's end: the relay would
		 * never notice it lost its registration. */
		int64_t ttl = res->ttl < k->granted ? res->ttl : k->granted;
		int64_t left_ms = ttl * 1000 - (int64_t)((sr_now_us() - k->sent_us) / 1000);
		k->ttl = ttl;
		k->retry_ms = 0;
		next = keeper_interval_ms(k);
		arm(k->expire, left_ms > 0 ? (long)left_ms : 0);
		k->expire_us = sr_now_us() + (uint64_t)(left_ms > 0 ? left_ms : 0) * 1000u;
	} else {
		/* Retries back off (1 s, doubled up to the interval, +-25 %):
		 * every lease a relay holds has a keeper, and at a fixed second
		 * they hit an etcd that is recovering a hundred times harder
		 * than when it is well. */
		uint64_t now = sr_now_us();
		long left_ms = k->expire_us > now ? (long)((k->expire_us - now) / 1000) : 0;
		SR_DEBUG("etcd", "lease %lld keepalive: %s", (long long)k->lease, res->msg);
		next = sr_backoff(&k->retry_ms, KEEPER_FIRST_RETRY_MS, next);
		/* Never past half the time the lease has left: the tries close
		 * in on its end, so an etcd back just before it still keeps it. */
		if (next > left_ms / 2)
			next = left_ms / 2 > KEEPER_LAST_TRY_MS ? left_ms / 2 : KEEPER_LAST_TRY_MS;
	}
	arm(k->tick, next);
}

static void keeper_tick(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_keeper *k = arg;
	char err[200];

	(void)fd;
	(void)what;
	if (k->op || k->lost)
		return;
	k->sent_us = sr_now_us();
	k->op = keepalive(k->c, k->lease, keeper_interval_ms(k), keeper_answer, k, err,
			  sizeof(err));
	if (!k->op) /* out of memory: try again later */
		arm(k->tick, keeper_interval_ms(k));
}

static void keeper_expire(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_keeper *k = arg;
	char msg[160];

	(void)fd;
	(void)what;
	snprintf(msg, sizeof(msg),
		 "etcd: lease %lld: no keepalive succeeded within its TTL of %lld s",
		 (long long)k->lease, (long long)k->ttl);
	keeper_lose(k, SR_ETIMEDOUT, msg);
}

struct etcd_keeper *etcd_keeper_new(struct etcd *c, int64_t lease, int64_t ttl,
				    etcd_lost_cb lost, void *arg)
{
	struct etcd_keeper *k;

	if (lease <= 0 || ttl <= 0 || ttl > INT32_MAX / 1000 || !lost)
		return NULL;
	k = calloc(1, sizeof(*k));
	if (!k)
		return NULL;
	k->c = c;
	k->lease = lease;
	k->ttl = k->granted = ttl;
	k->lost_cb = lost;
	k->arg = arg;
	k->tick = evtimer_new(c->base, keeper_tick, k);
	k->expire = evtimer_new(c->base, keeper_expire, k);
	if (!k->tick || !k->expire) {
		keeper_release(k);
		return NULL;
	}
	LIST_ADD(c->keepers, k);
	arm(k->tick, 0);
	arm(k->expire, (long)(ttl * 1000));
	k->expire_us = sr_now_us() + (uint64_t)ttl * 1000000u;
	return k;
}

static void keeper_release(struct etcd_keeper *k)
{
	if (k->tick)
		event_free(k->tick);
	if (k->expire)
		event_free(k->expire);
	free(k);
}

void etcd_keeper_free(struct etcd_keeper *k)
{
	if (!k)
		return;
	etcd_cancel(k->op);
	LIST_DEL(k->c->keepers, k);
	keeper_release(k);
}

/* ---- watches ------------------------------------------------------------- */

static void watch_start(struct etcd_watch *w);

/* Around a user callback that may free the watch: guard_off returns 1 if
 * it did (then touch nothing). */
static void guard_on(struct etcd_watch *w, int *gone)
{
	*gone = 0;
	w->gone = gone;
}

static int guard_off(struct etcd_watch *w, const int *gone)
{
	if (*gone)
		return 1;
	w->gone = NULL;
	return 0;
}

/* The stream failed: schedule the next one (next endpoint, backoff), then
 * tell the owner. Returns 1 if the owner freed the watch. */
static int watch_fail(struct etcd_watch *w, int err, const char *msg)
{
	struct etcd *c = w->c;
	long delay;
	int gone;

	if (w->req) {
		sr_curl_cancel(w->req);
		w->req = NULL;
	}
	evtimer_del(w->idle);
	delay = sr_backoff(&w->backoff_ms, WATCH_BACKOFF_MIN_MS, WATCH_BACKOFF_MAX_MS);
	SR_DEBUG("etcd", "watch via %s: %s; again in %ld ms from revision %lld", c->ep[w->ep],
		 msg, delay, (long long)w->next_rev);
	w->ep = (w->ep + 1) % c->nep;
	arm(w->retry, delay);
	if (!w->o.error)
		return 0;
	guard_on(w, &gone);
	w->o.error(err, msg, w->o.arg);
	return guard_off(w, &gone);
}

/* One message. Returns 0 to go on, 1 if the stream ended (watch failed,
 * stopped or freed: touch nothing). */
static int watch_msg(struct etcd_watch *w, const char *p, size_t n)
{
	struct etcd_watch_msg m;
	size_t skip = 0;
	int rc, gone;

	memset(&m, 0, sizeof(m));
	rc = etcd_json_watch_msg(p, n, &m);
	if (rc == 0 && m.err) {
		rc = m.err;
	} else if (rc == 0 && m.canceled && m.compact_revision > 0) {
		int64_t crev = m.compact_revision;
		etcd_watch_msg_fini(&m);
		w->stopped = 1;
		sr_curl_cancel(w->req);
		w->req = NULL;
		evtimer_del(w->idle);
		w->o.compacted(crev, w->o.arg); /* last: it may free w */
		return 1;
	} else if (rc == 0 && m.canceled) {
		snprintf(m.msg, sizeof(m.msg), "etcd canceled the watch: %s",
			 m.reason[0] ? m.reason : "no reason given");
		rc = SR_EPROTO;
	}
	/* events must come in revision order, the first at or after the start */
	for (size_t i = 0; rc == 0 && i < m.nev; i++) {
		int64_t r = m.ev[i].kv.mod_revision;
		if (i > 0 && r < m.ev[i - 1].kv.mod_revision) {
			snprintf(m.msg, sizeof(m.msg),
				 "etcd answer: watch events out of order");
			rc = SR_EPROTO;
		}
		if (r < w->next_rev)
			skip = i + 1; /* delivered before the stream broke */
	}
	if (rc) {
		char msg[ETCD_MSG_SIZE];
		snprintf(msg, sizeof(msg), "%s", m.msg);
		etcd_watch_msg_fini(&m);
		watch_fail(w, rc, msg);
		return 1;
	}
	if (m.created) {
		w->backoff_ms = 0; /* sr_backoff starts over */
		w->c->cur = w->ep;
		if (w->next_rev == 0)
			w->next_rev = m.revision + 1;
	} else if (m.nev == 0) {
		/* progress: every change up to m.revision has been sent */
		if (w->next_rev <= m.revision)
			w->next_rev = m.revision + 1;
		guard_on(w, &gone);
		w->o.events(NULL, 0, m.revision, w->o.arg);
		if (guard_off(w, &gone)) {
			etcd_watch_msg_fini(&m);
			return 1;
		}
	}
	if (m.nev > skip) {
		w->next_rev = m.ev[m.nev - 1].kv.mod_revision + 1;
		guard_on(w, &gone);
		w->o.events(m.ev + skip, m.nev - skip, m.revision, w->o.arg);
		if (guard_off(w, &gone)) {
			etcd_watch_msg_fini(&m);
			return 1;
		}
	}
	etcd_watch_msg_fini(&m);
	return 0;
}

/* Stream bytes: one JSON message per line. The gateway ends its last
 * message (an error) without a newline, so a remainder that is a whole
 * object is a message too. */
static size_t watch_data(const char *p, size_t n, void *arg)
{
	struct etcd_watch *w = arg;
	size_t used = 0;

	if (w->o.idle_ms > 0)
		arm(w->idle, w->o.idle_ms);
	while (used < n) {
		const char *line = p + used;
		const char *nl = memchr(line, '\n', n - used);
		size_t len = nl ? (size_t)(nl - line) : n - used;
		size_t t = len;

		while (t > 0 && (line[t - 1] == '\r' || line[t - 1] == ' '))
			t--;
		if (!nl) {
			if (t == 0 || line[t - 1] != '}')
				break;
			/* a whole object without its newline: only if it parses */
			{
				struct etcd_watch_msg probe;
				int ok;
				memset(&probe, 0, sizeof(probe));
				ok = etcd_json_watch_msg(line, t, &probe) == 0;
				etcd_watch_msg_fini(&probe);
				if (!ok)
					break;
			}
		}
		used += nl ? len + 1 : len;
		if (t > 0 && watch_msg(w, line, t))
			return 0; /* the request was cancelled: sr_curl drops the rest */
	}
	return used;
}

static void watch_done(int err, long status, const char *body, size_t len, const char *cmsg,
		       void *arg)
{
	struct etcd_watch *w = arg;
	char msg[ETCD_MSG_SIZE];

	(void)body;
	(void)len;
	w->req = NULL;
	if (err)
		snprintf(msg, sizeof(msg), "etcd %s: %s", w->c->ep[w->ep], cmsg);
	else if (status != 200)
		snprintf(msg, sizeof(msg), "etcd answer: HTTP %ld to a watch", status);
	else
		snprintf(msg, sizeof(msg), "etcd %s ended the watch stream", w->c->ep[w->ep]);
	watch_fail(w, err ? err : status != 200 ? SR_EPROTO : SR_ECLOSED, msg);
}

static void watch_start(struct etcd_watch *w)
{
	char err[200], msg[ETCD_MSG_SIZE];
	size_t len = 0;
	char *body =
	    etcd_json_watch(w->key, w->o.key_len, w->o.prefix, w->next_rev, w->o.prev_kv,
			    w->o.progress_notify, &len, err, sizeof(err));

	if (body)
		w->req = post(w->c, w->ep, "/v3/watch", body, len, 0, watch_data, watch_done, w,
			      err, sizeof(err));
	free(body);
	if (!w->req) {
		snprintf(msg, sizeof(msg), "etcd: cannot start a watch: %s", err);
		watch_fail(w, SR_ENOMEM, msg);
		return;
	}
	if (w->o.idle_ms > 0)
		arm(w->idle, w->o.idle_ms);
}

static void watch_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	watch_start(arg);
}

static void watch_idle(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_watch *w = arg;
	char msg[96];

	(void)fd;
	(void)what;
	snprintf(msg, sizeof(msg), "etcd: the watch stream was silent for %ld ms",
		 w->o.idle_ms);
	watch_fail(w, SR_ETIMEDOUT, msg);
}

struct etcd_watch *etcd_watch_new(struct etcd *c, const struct etcd_watch_opts *o, char *err,
				  size_t errlen)
{
	struct etcd_watch *w;

	if (!o->events || !o->compacted) {
		sr_seterr(err, errlen,
			  "etcd watch: events and compacted callbacks are required");
		return NULL;
	}
	if ((o->key_len == 0 && !o->prefix) || (o->key_len > 0 && !o->key) ||
	    o->start_revision < 0 || o->idle_ms < 0) {
		sr_seterr(
		    err, errlen,
		    "etcd watch: a key (or prefix), start revision >= 0 and idle_ms >= 0");
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	w->c = c;
	w->o = *o;
	w->key = malloc(o->key_len + 1);
	w->retry = evtimer_new(c->base, watch_retry, w);
	w->idle = evtimer_new(c->base, watch_idle, w);
	if (!w->key || !w->retry || !w->idle) {
		watch_release(w);
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	if (o->key_len)
		memcpy(w->key, o->key, o->key_len);
	w->key[o->key_len] = '\0';
	w->o.key = w->key;
	w->next_rev = o->start_revision;
	w->ep = c->cur;
	LIST_ADD(c->watches, w);
	/* from the loop, so that no callback runs inside this call */
	arm(w->retry, 0);
	return w;
}

static void watch_release(struct etcd_watch *w)
{
	if (w->retry)
		event_free(w->retry);
	if (w->idle)
		event_free(w->idle);
	free(w->key);
	free(w);
}

void etcd_watch_free(struct etcd_watch *w)
{
	if (!w)
		return;
	if (w->gone)
		*w->gone = 1;
	sr_curl_cancel(w->req);
	LIST_DEL(w->c->watches, w);
	watch_release(w);
}
