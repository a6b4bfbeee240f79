/* An etcd v3 client on the event loop, for the relay fleet's lease table:
 * keys, transactions, leases and watches through etcd's JSON gateway
 * (POST /v3/...), over sr_curl (libcurl's multi-socket interface), so no
 * call ever blocks the loop.
 *
 * Contracts that hold for every call below:
 * - Keys and values are bytes (pointer and length, any byte allowed).
 *   Results carry lengths too, and each key and value is also followed by a
 *   NUL that is not counted, for callers that know their keys are text.
 * - Every callback runs from the event loop, never from inside the call
 *   that started the operation. A callback may start and cancel
 *   operations and free watches and keepers (its own included), but not
 *   free the client.
 * - Results are borrowed for the duration of the callback.
 * - err is 0 or a negative SR_E* (common/sr_err.h):
 *     SR_EIO, SR_ETLS, SR_ETIMEDOUT  no answer (connection, TLS, time)
 *     SR_ETOOBIG    the answer was larger than max_answer
 *     SR_EPROTO     the answer is not what etcd sends (bad JSON, a field of
 *                   the wrong type, bad base64, a non-etcd HTTP status)
 *     otherwise     etcd's own error, res->code its gRPC code:
 *                   SR_ENOTFOUND (5, e.g. the lease is unknown),
 *                   SR_ETIMEDOUT (4), SR_EBUSY (8, 14: overloaded, no
 *                   leader), SR_EDENIED (7, 16), SR_EINVAL (any other)
 *   res->msg is then one printable line, with anything etcd or the network
 *   sent escaped (sr_esc); it is "" when err is 0.
 * - Answers are untrusted: each is bounded by max_answer, and every field
 *   is type-checked before use.
 *
 * Endpoints: a request goes to the endpoint that last answered. When it
 * gets no answer there, it is tried once on each other endpoint in turn,
 * provided that repeating it cannot apply it twice: reads (ranges, txns of
 * ranges only) and lease keepalives after any failure or an Unavailable
 * answer (code 14); writes (put, delete, txn, lease grant and revoke) only
 * when the request never reached the failed endpoint (refused connection,
 * failed TLS handshake). Otherwise the error is reported: a write that may
 * have been applied is for the caller to check (e.g. range the key). So one
 * request can take up to nendpoints * timeout_ms. */
#ifndef FLEET_ETCD_H
#define FLEET_ETCD_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct etcd;
struct etcd_op;
struct etcd_watch;
struct etcd_keeper;

#define ETCD_MAX_ENDPOINTS 16
#define ETCD_MAX_TXN_OPS 128 /* compares, and ops per branch (etcd's default limit) */

struct etcd_opts {
	/* "http://host:port" or "https://host:port" (a path is not allowed);
	 * 1..ETCD_MAX_ENDPOINTS, copied. */
	const char *const *endpoints;
	size_t nendpoints;
	const char *ca_file;   /* https: CA bundle (PEM); NULL: the system store. Copied. */
	const char *cert_file; /* client certificate for mutual TLS (PEM), or NULL. Copied. */
	const char *key_file;  /* its key, or NULL. Copied. */
	long timeout_ms;       /* one attempt of one request; 0: 5000 */
	size_t max_answer;     /* bytes of one answer, or of one watch message; 0: 4 MiB */
};

/* What etcd_new checks of one endpoint: 0, or SR_EINVAL with the reason
 * (the endpoint escaped) in err. */
int etcd_endpoint_check(const char *s, char *err, size_t errlen);

/* Returns NULL on a bad option (reason in err) or allocation failure.
 * The client has its own sr_curl (its own connections). The process must
 * have called curl_global_init. */
struct etcd *etcd_new(struct event_base *base, const struct etcd_opts *o, char *err,
		      size_t errlen);
/* Cancels every pending operation and frees every watch and keeper of the
 * client: no callback runs after this, and their handles are invalid. Not
 * from inside one of the client's callbacks. NULL is a no-op. */
void etcd_free(struct etcd *c);
/* A few words for an err of a callback, in etcd's terms (SR_EBUSY is
 * "unavailable" here: etcd's codes 8 and 14), for log lines. */
const char *etcd_strerror(int err);
/* The endpoint the next request goes to (the last that answered). */
const char *etcd_endpoint(const struct etcd *c);

/* ---- Keys ---------------------------------------------------------------- */

enum etcd_op_type {
	ETCD_RANGE = 1,
	ETCD_PUT,
	ETCD_DELETE,
};

/* One key operation, alone (etcd_kv) or in a transaction. Borrowed for the
 * call: everything is copied into the request. */
struct etcd_req {
	enum etcd_op_type type;
	const void *key;
	size_t key_len; /* >= 1, except with prefix */
	int prefix;	/* range, delete: every key starting with key (key_len 0: all keys) */
	const void *value; /* put */
	size_t value_len;
	int64_t lease;	  /* put: attach the key to this lease (0: none) */
	int64_t limit;	  /* range: at most this many keys (0: no limit) */
	int64_t revision; /* range: as the store was at this revision (0: now) */
	/* range: only keys last changed at or after this revision (0: any).
	 * etcd filters before limit but counts before it: count is every key
	 * in the range, nkvs the filtered ones up to limit. */
	int64_t min_mod_revision;
	int keys_only; /* range: keys and revisions, no values */
	/* range with prefix: begin at this key (which starts with key)
	 * instead of at the prefix; the next page after a limit is the last
	 * key answered with a NUL byte appended */
	const void *from;
	size_t from_len;
};

/* key and value are etcd's bytes, which may hold NUL bytes: use the
 * lengths. Each is followed by a NUL not counted in its length. */
struct etcd_kv {
	const char *key;
	size_t key_len;
	const char *value;
	size_t value_len;
	int64_t create_revision; /* revision of the put that created the key */
	int64_t mod_revision;	 /* revision of its last change */
	int64_t version;	 /* puts since it was created (1 after creation) */
	int64_t lease;		 /* the lease it is attached to, or 0 */
};

struct etcd_result {
	int code;		   /* with err from etcd: its gRPC code; else 0 */
	const char *msg;	   /* "" or one escaped line */
	size_t partial;		   /* with err SR_ETIMEDOUT: bytes of the answer that came */
	int64_t revision;	   /* the store's revision when etcd answered */
	enum etcd_op_type type;	   /* key operations and each txn op: which one */
	const struct etcd_kv *kvs; /* range: the keys, in key order */
	size_t nkvs;
	int64_t count;	 /* range: keys in the range (more than nkvs past limit) */
	int more;	 /* range: keys past limit exist */
	int64_t deleted; /* delete: how many keys */
	int succeeded;	 /* txn: the compares held and the success ops ran */
	const struct etcd_result *ops; /* txn: each op's result, in request order */
	size_t nops;
	int64_t lease; /* lease grant, keepalive: its id */
	int64_t ttl;   /* grant: seconds granted; keepalive: left, 0 = the lease is gone */
};

/* res is never NULL; with err set only code, msg and partial are meaningful. */
typedef void (*etcd_cb)(int err, const struct etcd_result *res, void *arg);

/* Start one range, put or delete. Returns NULL on a bad argument or
 * allocation failure (reason in err); cb is then never called. Otherwise
 * cb runs exactly once, unless the operation is cancelled. The handle is
 * invalid once cb has started. */
struct etcd_op *etcd_kv(struct etcd *c, const struct etcd_req *rq, etcd_cb cb, void *arg,
			char *err, size_t errlen);

/* Transactions: if every compare holds, the success ops run, else the
 * failure ops; atomically, in one revision. */
enum etcd_target {
	ETCD_CMP_CREATE = 1, /* create_revision (0: the key does not exist) */
	ETCD_CMP_MOD,	     /* mod_revision */
	ETCD_CMP_VERSION,    /* version (0: the key does not exist) */
	ETCD_CMP_VALUE,	     /* value (bytes) */
	ETCD_CMP_LEASE,	     /* lease (0: none or no key) */
};
enum etcd_cmp_op {
	ETCD_EQ = 1,
	ETCD_NE,
	ETCD_LT,
	ETCD_GT,
};
struct etcd_cmp {
	const void *key;
	size_t key_len; /* >= 1 */
	enum etcd_target target;
	enum etcd_cmp_op op;
	int64_t number;	   /* the revision, version or lease compared with */
	const void *value; /* ETCD_CMP_VALUE */
	size_t value_len;
};

/* res->succeeded says which branch ran; res->ops[i] is the result of that
 * branch's op i (nops = its length). Returns and calls back as etcd_kv. */
struct etcd_op *etcd_txn(struct etcd *c, const struct etcd_cmp *cmp, size_t ncmp,
			 const struct etcd_req *success, size_t nsuccess,
			 const struct etcd_req *failure, size_t nfailure, etcd_cb cb, void *arg,
			 char *err, size_t errlen);

/* ---- Leases -------------------------------------------------------------- */

/* A new lease of ttl seconds (etcd may raise a small TTL to its minimum,
 * about 1.5 election timeouts): res->lease, res->ttl. */
struct etcd_op *etcd_lease_grant(struct etcd *c, int64_t ttl, etcd_cb cb, void *arg, char *err,
				 size_t errlen);
/* Refresh a lease once: res->ttl is its new TTL, 0 if the lease is gone
 * (expired or revoked; err is then 0). */
struct etcd_op *etcd_lease_keepalive(struct etcd *c, int64_t lease, etcd_cb cb, void *arg,
				     char *err, size_t errlen);
/* End a lease now and delete its keys. An unknown lease: SR_ENOTFOUND. */
struct etcd_op *etcd_lease_revoke(struct etcd *c, int64_t lease, etcd_cb cb, void *arg,
				  char *err, size_t errlen);

/* End an operation whose callback has not started; it will not run. */
void etcd_cancel(struct etcd_op *op);

/* Keeping a lease alive: a keepalive every ttl/3 (ttl as etcd last
 * answered, never above the one granted), each attempt bounded by that
 * interval; after a failed one the next goes 1 s later, doubled after each
 * failure up to the interval, +-25 %, and never later than half the time
 * the lease has left (200 ms at least). lost is called once
 * when the lease is gone: err SR_ENOTFOUND when etcd says so, SR_ETIMEDOUT
 * when no keepalive has succeeded for a whole TTL, counted from the start of
 * the last one that did (or from etcd_keeper_new). After lost the keeper
 * does nothing; the owner frees it, from lost itself if it likes. msg is one
 * escaped line. */
typedef void (*etcd_lost_cb)(int err, const char *msg, void *arg);
/* ttl: the lease's TTL in seconds (>= 1) as granted; the lease counts as
 * alive for that long from this call, and the first keepalive is sent at
 * once. Returns NULL on a bad argument or allocation failure. */
struct etcd_keeper *etcd_keeper_new(struct etcd *c, int64_t lease, int64_t ttl,
				    etcd_lost_cb lost, void *arg);
/* Stop keeping the lease alive (it expires on its own, or revoke it). The
 * lost callback will not run. NULL is a no-op. */
void etcd_keeper_free(struct etcd_keeper *k);

/* ---- Watches ------------------------------------------------------------- */

enum etcd_event_type {
	ETCD_EV_PUT = 1,
	ETCD_EV_DELETE,
};
struct etcd_event {
	enum etcd_event_type type;
	struct etcd_kv kv;	    /* DELETE: key and mod_revision (the deletion's) only */
	const struct etcd_kv *prev; /* the key before the change, with prev_kv; else NULL */
};

/* Events in revision order, each revision once, whole (all events of one
 * revision are in one call). revision: the store's revision when etcd sent
 * them; n 0 is a progress notification: every change up to revision has
 * been delivered. */
typedef void (*etcd_events_cb)(const struct etcd_event *ev, size_t n, int64_t revision,
			       void *arg);
/* The revisions the watch needed next were compacted away: changes before
 * compact_revision cannot be delivered. The watch has stopped; the owner
 * reloads with a range and watches again from that range's revision + 1. */
typedef void (*etcd_compacted_cb)(int64_t compact_revision, void *arg);
/* The stream broke (err, msg as for etcd_cb): the watch reconnects by
 * itself after a backoff (100 ms doubling to 5 s, through the next
 * endpoint), resuming after the last revision delivered. For logs and
 * health; may be NULL. */
typedef void (*etcd_watch_err_cb)(int err, const char *msg, void *arg);

struct etcd_watch_opts {
	const void *key; /* borrowed for the call; copied */
	size_t key_len;
	int prefix;		/* every key starting with key (key_len 0: all keys) */
	int64_t start_revision; /* first revision wanted (0: changes from now on) */
	int prev_kv;		/* deliver each key's previous state */
	/* ask etcd for progress notifications (every
	 * --experimental-watch-progress-notify-interval, 10 min by default) */
	int progress_notify;
	/* restart a stream that delivered nothing for this long (0: never);
	 * with progress_notify, a little more than etcd's interval detects a
	 * stream that hangs without breaking */
	long idle_ms;
	etcd_events_cb events;	     /* required */
	etcd_compacted_cb compacted; /* required */
	etcd_watch_err_cb error;     /* optional */
	void *arg;
};

/* Start watching. Returns NULL on a bad argument or allocation failure
 * (reason in err); no callback runs before this returns. */
struct etcd_watch *etcd_watch_new(struct etcd *c, const struct etcd_watch_opts *o, char *err,
				  size_t errlen);
/* Stop; no callback runs after this. NULL is a no-op. */
void etcd_watch_free(struct etcd_watch *w);

#endif
