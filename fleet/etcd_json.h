/* Internal to fleet/etcd.c (and its fuzz target): the JSON that etcd's v3
 * gateway takes and gives. Requests are built from the API's structs with
 * keys and values in base64 and 64-bit numbers as strings; answers are
 * decoded with every field type-checked, base64 decoded strictly, and any
 * deviation reported as SR_EPROTO with a one-line reason. Pure functions:
 * no I/O, no event loop. */
#ifndef FLEET_ETCD_JSON_H
#define FLEET_ETCD_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "fleet/etcd.h"

#define ETCD_MSG_SIZE 512

enum etcd_kind {
	ETCD_K_RANGE = 1,
	ETCD_K_PUT,
	ETCD_K_DELETE,
	ETCD_K_TXN,
	ETCD_K_GRANT,
	ETCD_K_KEEPALIVE,
	ETCD_K_REVOKE,
};

/* The gateway path of a request kind ("/v3/kv/range", ...). */
const char *etcd_json_path(enum etcd_kind kind);

/* Request bodies: malloc'd JSON (NUL-terminated, *len its length), or NULL
 * on a bad argument (reason in err) or allocation failure (err "out of
 * memory"). */
char *etcd_json_req(const struct etcd_req *rq, size_t *len, char *err, size_t errlen);
char *etcd_json_txn(const struct etcd_cmp *cmp, size_t ncmp, const struct etcd_req *success,
		    size_t nsuccess, const struct etcd_req *failure, size_t nfailure,
		    size_t *len, char *err, size_t errlen);
/* kind GRANT (n: the TTL), KEEPALIVE or REVOKE (n: the lease id). */
char *etcd_json_lease(enum etcd_kind kind, int64_t n, size_t *len, char *err, size_t errlen);
/* A watch create request from start (0: from now). */
char *etcd_json_watch(const void *key, size_t key_len, int prefix, int64_t start, int prev_kv,
		      int progress_notify, size_t *len, char *err, size_t errlen);

struct etcd_mem; /* every allocation behind one decoded answer */

struct etcd_answer {
	struct etcd_result res; /* res.msg points at msg */
	struct etcd_mem *mem;
	char msg[ETCD_MSG_SIZE];
};

/* Decode the answer (HTTP status, body) to a request of this kind into a,
 * which the caller zeroed. A txn passes its branches' op types, which the
 * answer must match. Returns 0 or the error (see etcd.h), res.code and
 * res.msg set. Always call etcd_answer_fini afterwards. */
int etcd_json_answer(enum etcd_kind kind, long status, const char *body, size_t len,
		     const enum etcd_op_type *succ, size_t nsucc, const enum etcd_op_type *fail,
		     size_t nfail, struct etcd_answer *a);
void etcd_answer_fini(struct etcd_answer *a);

/* One message of a watch stream. */
struct etcd_watch_msg {
	int err, code; /* an error message from etcd: its err and code */
	int created, canceled;
	int64_t revision; /* header revision */
	int64_t compact_revision;
	const char *reason;    /* "" or etcd's cancel reason, escaped */
	struct etcd_event *ev; /* in the order etcd sent them */
	size_t nev;
	struct etcd_mem *mem;
	char msg[ETCD_MSG_SIZE];
};

/* Decode one watch message (a JSON object) into m, which the caller zeroed.
 * Returns 0 (m->err may still hold an error that etcd sent) or SR_EPROTO
 * / SR_ENOMEM with m->msg set. Always call etcd_watch_msg_fini afterwards. */
int etcd_json_watch_msg(const char *p, size_t n, struct etcd_watch_msg *m);
void etcd_watch_msg_fini(struct etcd_watch_msg *m);

/* Strict standard base64 (with padding) of in[0..n) into out, which has
 * room for n / 4 * 3 bytes. Returns the decoded length, or -1 if in is
 * not base64. Exposed for tests. */
long etcd_b64_decode(const char *in, size_t n, unsigned char *out);

#endif
