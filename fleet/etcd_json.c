/* etcd's v3 JSON gateway: requests and answers. See etcd_json.h.
 *
 * The gateway follows the proto3 JSON mapping: bytes are standard base64,
 * int64 fields are strings (numbers are accepted too), fields at their zero
 * value are left out, enums are names. An answer is decoded into an arena
 * (struct etcd_mem) freed in one go, so no early return can leak. */
#include "fleet/etcd_json.h"
#include "common/sr_err.h"
#include "common/sr_text.h"

#include <errno.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

struct etcd_mem {
	struct etcd_mem *next;
	alignas(max_align_t) unsigned char data[];
};

static void *mem_alloc(struct etcd_mem **m, size_t n)
{
	struct etcd_mem *b;

	if (n > SIZE_MAX / 2)
		return NULL;
	b = malloc(sizeof(*b) + n);
	if (!b)
		return NULL;
	b->next = *m;
	*m = b;
	return b->data;
}

static void mem_free(struct etcd_mem *m)
{
	while (m) {
		struct etcd_mem *next = m->next;
		free(m);
		m = next;
	}
}

/* ---- base64 -------------------------------------------------------------- */

static int b64_val(unsigned char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '+')
		return 62;
	if (ch == '/')
		return 63;
	return -1;
}

long etcd_b64_decode(const char *in, size_t n, unsigned char *out)
{
	size_t o = 0;

	if (n % 4 != 0)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int j = 0; j < 4; j++) {
			unsigned char ch = (unsigned char)in[i + j];
			if (ch == '=' && i + 4 == n && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad) /* "=" then a letter: "ab=c" */
				return -1;
			v[j] = b64_val(ch);
			if (v[j] < 0)
				return -1;
		}
		unsigned long w = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12 |
				  (unsigned long)v[2] << 6 | (unsigned long)v[3];
		/* the bits that padding leaves over must be zero (canonical form) */
		if ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff)))
			return -1;
		out[o++] = (unsigned char)(w >> 16);
		if (pad < 2)
			out[o++] = (unsigned char)(w >> 8);
		if (pad < 1)
			out[o++] = (unsigned char)w;
	}
	return (long)o;
}

/* ---- requests ------------------------------------------------------------ */

/* Request bodies are written as text rather than built with jansson: every
 * name is ours and every value is base64, digits or true, so nothing needs
 * escaping, and jansson 2.14's json_dumps can drop an object key when one of
 * its allocations fails and still return text. */
struct sb {
	char *p;
	size_t n, cap;
	int oom;
};

static char *sb_room(struct sb *b, size_t n)
{
	if (b->oom)
		return NULL;
	if (n > SIZE_MAX / 4 - b->n) {
		b->oom = 1;
		return NULL;
	}
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *q;
		while (cap < b->n + n + 1)
			cap *= 2;
		q = realloc(b->p, cap);
		if (!q) {
			b->oom = 1;
			return NULL;
		}
		b->p = q;
		b->cap = cap;
	}
	return b->p + b->n;
}

static void sb_add(struct sb *b, const char *s)
{
	size_t n = strlen(s);
	char *at = sb_room(b, n);

	if (!at)
		return;
	memcpy(at, s, n + 1);
	b->n += n;
}

/* ,"name":"<base64 of p[0..n)>" (without the comma when first). */
static void sb_b64(struct sb *b, int first, const char *name, const void *p, size_t n)
{
	char *at;
	int len;

	sb_add(b, first ? "\"" : ",\"");
	sb_add(b, name);
	sb_add(b, "\":\"");
	if (n > (size_t)INT32_MAX / 2) {
		b->oom = 1;
		return;
	}
	at = sb_room(b, 4 * ((n + 2) / 3));
	if (!at)
		return;
	len = EVP_EncodeBlock((unsigned char *)at, p, (int)n);
	if (len < 0) {
		b->oom = 1;
		return;
	}
	b->n += (size_t)len;
	sb_add(b, "\"");
}

/* ,"name":"<decimal>" (proto3 JSON writes int64 as a string). */
static void sb_i64(struct sb *b, int first, const char *name, int64_t v)
{
	char num[24];

	snprintf(num, sizeof(num), "%" PRId64, v);
	sb_add(b, first ? "\"" : ",\"");
	sb_add(b, name);
	sb_add(b, "\":\"");
	sb_add(b, num);
	sb_add(b, "\"");
}

/* ,"name":"text" for a text of ours. */
static void sb_name(struct sb *b, const char *name, const char *text)
{
	sb_add(b, ",\"");
	sb_add(b, name);
	sb_add(b, "\":\"");
	sb_add(b, text);
	sb_add(b, "\"");
}

static char *sb_done(struct sb *b, size_t *len, char *err, size_t errlen)
{
	if (b->oom || !b->p) {
		free(b->p);
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	*len = b->n;
	return b->p;
}

/* "key":... and, for a prefix, "range_end":... . The end of the keys
 * starting with key is the key with its last byte that is not 0xff
 * incremented and the rest cut, or "\0" (no end) when there is no such
 * byte; an empty prefix is every key: key "\0" with range_end "\0".
 * from (a prefix's range only): the range begins there instead. */
static void sb_key(struct sb *b, const void *key, size_t n, int prefix, const void *from,
		   size_t from_len)
{
	const unsigned char *k = key;
	unsigned char *end;
	size_t e = n;

	if (prefix && n == 0) {
		if (from)
			sb_b64(b, 1, "key", from, from_len);
		else
			sb_b64(b, 1, "key", "", 1);
		sb_b64(b, 0, "range_end", "", 1);
		return;
	}
	if (from)
		sb_b64(b, 1, "key", from, from_len);
	else
		sb_b64(b, 1, "key", key, n);
	if (!prefix)
		return;
	while (e > 0 && k[e - 1] == 0xff)
		e--;
	if (e == 0) {
		sb_b64(b, 0, "range_end", "", 1);
		return;
	}
	end = malloc(e);
	if (!end) {
		b->oom = 1;
		return;
	}
	memcpy(end, k, e);
	end[e - 1]++;
	sb_b64(b, 0, "range_end", end, e);
	free(end);
}

static int check_req(const struct etcd_req *rq, char *err, size_t errlen)
{
	if (rq->type != ETCD_RANGE && rq->type != ETCD_PUT && rq->type != ETCD_DELETE) {
		sr_seterr(err, errlen, "unknown key operation %d", (int)rq->type);
		return -1;
	}
	if ((rq->key_len > 0 && !rq->key) || (rq->value_len > 0 && !rq->value)) {
		sr_seterr(err, errlen, "a key or value with a length but no bytes");
		return -1;
	}
	if (rq->key_len == 0 && !(rq->prefix && rq->type != ETCD_PUT)) {
		sr_seterr(err, errlen,
			  "an empty key (only a range or delete prefix may be empty)");
		return -1;
	}
	if (rq->type == ETCD_PUT && rq->prefix) {
		sr_seterr(err, errlen, "a put names one key, not a prefix");
		return -1;
	}
	if (rq->from && (rq->type != ETCD_RANGE || !rq->prefix || !rq->from_len ||
			 rq->from_len < rq->key_len ||
			 (rq->key_len && memcmp(rq->from, rq->key, rq->key_len) != 0))) {
		sr_seterr(err, errlen, "from: only in a prefix's range, and a key with the prefix");
		return -1;
	}
	if (rq->limit < 0 || rq->revision < 0 || rq->lease < 0 || rq->min_mod_revision < 0) {
		sr_seterr(err, errlen, "a negative limit, revision, min_mod_revision or lease");
		return -1;
	}
	return 0;
}

/* The request object of one key operation. */
static void sb_req(struct sb *b, const struct etcd_req *rq)
{
	sb_add(b, "{");
	sb_key(b, rq->key, rq->key_len, rq->prefix, rq->from, rq->from_len);
	switch (rq->type) {
	case ETCD_RANGE:
		if (rq->limit)
			sb_i64(b, 0, "limit", rq->limit);
		if (rq->revision)
			sb_i64(b, 0, "revision", rq->revision);
		if (rq->min_mod_revision)
			sb_i64(b, 0, "min_mod_revision", rq->min_mod_revision);
		if (rq->keys_only)
			sb_add(b, ",\"keys_only\":true");
		break;
	case ETCD_PUT:
		sb_b64(b, 0, "value", rq->value, rq->value_len);
		if (rq->lease)
			sb_i64(b, 0, "lease", rq->lease);
		break;
	case ETCD_DELETE:
		break;
	}
	sb_add(b, "}");
}

char *etcd_json_req(const struct etcd_req *rq, size_t *len, char *err, size_t errlen)
{
	struct sb b = {0};

	if (check_req(rq, err, errlen) != 0)
		return NULL;
	sb_req(&b, rq);
	return sb_done(&b, len, err, errlen);
}

static void sb_branch(struct sb *b, const char *name, const struct etcd_req *rq, size_t n)
{
	static const char *const op_field[] = {
	    [ETCD_RANGE] = "{\"request_range\":",
	    [ETCD_PUT] = "{\"request_put\":",
	    [ETCD_DELETE] = "{\"request_delete_range\":",
	};

	sb_add(b, ",\"");
	sb_add(b, name);
	sb_add(b, "\":[");
	for (size_t i = 0; i < n; i++) {
		sb_add(b, i ? "," : "");
		sb_add(b, op_field[rq[i].type]);
		sb_req(b, &rq[i]);
		sb_add(b, "}");
	}
	sb_add(b, "]");
}

static void sb_cmp(struct sb *b, const struct etcd_cmp *c)
{
	static const char *const target[] = {
	    [ETCD_CMP_CREATE] = "CREATE",   [ETCD_CMP_MOD] = "MOD",
	    [ETCD_CMP_VERSION] = "VERSION", [ETCD_CMP_VALUE] = "VALUE",
	    [ETCD_CMP_LEASE] = "LEASE",
	};
	static const char *const field[] = {
	    [ETCD_CMP_CREATE] = "create_revision",
	    [ETCD_CMP_MOD] = "mod_revision",
	    [ETCD_CMP_VERSION] = "version",
	    [ETCD_CMP_VALUE] = "value",
	    [ETCD_CMP_LEASE] = "lease",
	};
	static const char *const result[] = {
	    [ETCD_EQ] = "EQUAL",
	    [ETCD_NE] = "NOT_EQUAL",
	    [ETCD_LT] = "LESS",
	    [ETCD_GT] = "GREATER",
	};

	sb_add(b, "{");
	sb_b64(b, 1, "key", c->key, c->key_len);
	sb_name(b, "target", target[c->target]);
	sb_name(b, "result", result[c->op]);
	if (c->target == ETCD_CMP_VALUE)
		sb_b64(b, 0, "value", c->value, c->value_len);
	else
		sb_i64(b, 0, field[c->target], c->number);
	sb_add(b, "}");
}

char *etcd_json_txn(const struct etcd_cmp *cmp, size_t ncmp, const struct etcd_req *success,
		    size_t nsuccess, const struct etcd_req *failure, size_t nfailure,
		    size_t *len, char *err, size_t errlen)
{
	struct sb b = {0};

	if (ncmp > ETCD_MAX_TXN_OPS || nsuccess > ETCD_MAX_TXN_OPS ||
	    nfailure > ETCD_MAX_TXN_OPS) {
		sr_seterr(err, errlen, "more than %d compares or ops in one branch",
			  ETCD_MAX_TXN_OPS);
		return NULL;
	}
	if ((ncmp && !cmp) || (nsuccess && !success) || (nfailure && !failure)) {
		sr_seterr(err, errlen, "a compare or op count without its array");
		return NULL;
	}
	for (size_t i = 0; i < ncmp; i++) {
		const struct etcd_cmp *c = &cmp[i];
		if (c->target < ETCD_CMP_CREATE || c->target > ETCD_CMP_LEASE ||
		    c->op < ETCD_EQ || c->op > ETCD_GT) {
			sr_seterr(err, errlen, "compare %zu: unknown target or operator", i);
			return NULL;
		}
		if (c->key_len == 0 || !c->key || (c->value_len > 0 && !c->value)) {
			sr_seterr(err, errlen,
				  "compare %zu: an empty key or a value without bytes", i);
			return NULL;
		}
	}
	for (size_t i = 0; i < nsuccess + nfailure; i++) {
		const struct etcd_req *rq = i < nsuccess ? &success[i] : &failure[i - nsuccess];
		char why[200];
		if (check_req(rq, why, sizeof(why)) != 0) {
			sr_seterr(err, errlen, "%s op %zu: %s",
				  i < nsuccess ? "success" : "failure",
				  i < nsuccess ? i : i - nsuccess, why);
			return NULL;
		}
	}
	sb_add(&b, "{\"compare\":[");
	for (size_t i = 0; i < ncmp; i++) {
		sb_add(&b, i ? "," : "");
		sb_cmp(&b, &cmp[i]);
	}
	sb_add(&b, "]");
	sb_branch(&b, "success", success, nsuccess);
	sb_branch(&b, "failure", failure, nfailure);
	sb_add(&b, "}");
	return sb_done(&b, len, err, errlen);
}

char *etcd_json_lease(enum etcd_kind kind, int64_t n, size_t *len, char *err, size_t errlen)
{
	struct sb b = {0};

	if (n <= 0) {
		sr_seterr(err, errlen,
			  kind == ETCD_K_GRANT ? "a TTL must be positive"
					       : "a lease id must be positive");
		return NULL;
	}
	sb_add(&b, "{");
	sb_i64(&b, 1, kind == ETCD_K_GRANT ? "TTL" : "ID", n);
	sb_add(&b, "}");
	return sb_done(&b, len, err, errlen);
}

char *etcd_json_watch(const void *key, size_t key_len, int prefix, int64_t start, int prev_kv,
		      int progress_notify, size_t *len, char *err, size_t errlen)
{
	struct sb b = {0};

	if ((key_len == 0 && !prefix) || (key_len > 0 && !key) || start < 0) {
		sr_seterr(err, errlen,
			  "a watch needs a key (or a prefix) and a start revision >= 0");
		return NULL;
	}
	sb_add(&b, "{\"create_request\":{");
	sb_key(&b, key, key_len, prefix, NULL, 0);
	if (start)
		sb_i64(&b, 0, "start_revision", start);
	if (prev_kv)
		sb_add(&b, ",\"prev_kv\":true");
	if (progress_notify)
		sb_add(&b, ",\"progress_notify\":true");
	sb_add(&b, "}}");
	return sb_done(&b, len, err, errlen);
}

const char *etcd_json_path(enum etcd_kind kind)
{
	switch (kind) {
	case ETCD_K_RANGE:
		return "/v3/kv/range";
	case ETCD_K_PUT:
		return "/v3/kv/put";
	case ETCD_K_DELETE:
		return "/v3/kv/deleterange";
	case ETCD_K_TXN:
		return "/v3/kv/txn";
	case ETCD_K_GRANT:
		return "/v3/lease/grant";
	case ETCD_K_KEEPALIVE:
		return "/v3/lease/keepalive";
	case ETCD_K_REVOKE:
		return "/v3/lease/revoke";
	}
	return "/";
}

/* ---- answers ------------------------------------------------------------- */

struct dec {
	struct etcd_mem **mem;
	char *msg; /* ETCD_MSG_SIZE */
};

static int bad(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A malformed answer: "etcd answer: <what>". Only our own field names go
 * into fmt; peer text is escaped by the caller. */
static int bad(struct dec *d, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(d->msg, ETCD_MSG_SIZE, "etcd answer: ");

	va_start(ap, fmt);
	vsnprintf(d->msg + n, ETCD_MSG_SIZE - (size_t)n, fmt, ap);
	va_end(ap);
	return SR_EPROTO;
}

static int oom(struct dec *d)
{
	snprintf(d->msg, ETCD_MSG_SIZE, "out of memory decoding an etcd answer");
	return SR_ENOMEM;
}

/* An optional int64: a decimal string (proto3 JSON) or a JSON integer.
 * Absent: 0. */
static int get_i64(struct dec *d, json_t *o, const char *name, const char *where, int64_t *out)
{
	json_t *v = json_object_get(o, name);
	const char *s;
	char *end;
	long long x;

	*out = 0;
	if (!v)
		return 0;
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return 0;
	}
	if (!json_is_string(v))
		return bad(d, "%s%s is not a number", where, name);
	s = json_string_value(v);
	if (json_string_length(v) == 0 || json_string_length(v) > 20 ||
	    strlen(s) != json_string_length(v) ||
	    !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
		return bad(d, "%s%s is not a 64-bit number", where, name);
	errno = 0;
	x = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || end == s || (s[0] == '-' && s[1] == '\0'))
		return bad(d, "%s%s is not a 64-bit number", where, name);
	*out = x;
	return 0;
}

static int get_bool(struct dec *d, json_t *o, const char *name, const char *where, int *out)
{
	json_t *v = json_object_get(o, name);

	*out = 0;
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return bad(d, "%s%s is not true or false", where, name);
	*out = json_is_true(v);
	return 0;
}

/* An optional object; absent: NULL. */
static int get_obj(struct dec *d, json_t *o, const char *name, const char *where, json_t **out)
{
	json_t *v = json_object_get(o, name);

	*out = NULL;
	if (v && !json_is_object(v))
		return bad(d, "%s%s is not an object", where, name);
	*out = v;
	return 0;
}

/* An optional array; absent: an empty one (NULL, *n 0). */
static int get_arr(struct dec *d, json_t *o, const char *name, const char *where, json_t **out,
		   size_t *n)
{
	json_t *v = json_object_get(o, name);

	*out = NULL;
	*n = 0;
	if (!v)
		return 0;
	if (!json_is_array(v))
		return bad(d, "%s%s is not an array", where, name);
	*out = v;
	*n = json_array_size(v);
	return 0;
}

/* Optional bytes in base64, decoded into the arena and NUL-terminated.
 * Absent: "" (length 0). */
static int get_bytes(struct dec *d, json_t *o, const char *name, const char *where,
		     const char **p, size_t *n)
{
	json_t *v = json_object_get(o, name);
	unsigned char *buf;
	long got;

	*p = "";
	*n = 0;
	if (!v)
		return 0;
	if (!json_is_string(v))
		return bad(d, "%s%s is not a string", where, name);
	buf = mem_alloc(d->mem, json_string_length(v) / 4 * 3 + 1);
	if (!buf)
		return oom(d);
	got = etcd_b64_decode(json_string_value(v), json_string_length(v), buf);
	if (got < 0)
		return bad(d, "%s%s is not base64", where, name);
	buf[got] = '\0';
	*p = (const char *)buf;
	*n = (size_t)got;
	return 0;
}

static int get_kv(struct dec *d, json_t *o, const char *where, struct etcd_kv *kv)
{
	int rc;

	if (!json_is_object(o))
		return bad(d, "%s is not an object", where);
	if ((rc = get_bytes(d, o, "key", where, &kv->key, &kv->key_len)) ||
	    (rc = get_bytes(d, o, "value", where, &kv->value, &kv->value_len)) ||
	    (rc = get_i64(d, o, "create_revision", where, &kv->create_revision)) ||
	    (rc = get_i64(d, o, "mod_revision", where, &kv->mod_revision)) ||
	    (rc = get_i64(d, o, "version", where, &kv->version)) ||
	    (rc = get_i64(d, o, "lease", where, &kv->lease)))
		return rc;
	if (kv->key_len == 0)
		return bad(d, "%s has no key", where);
	return 0;
}

static int get_header(struct dec *d, json_t *o, const char *where, int64_t *rev)
{
	json_t *h;
	int rc = get_obj(d, o, "header", where, &h);
	char w[64];

	*rev = 0;
	if (rc || !h)
		return rc;
	snprintf(w, sizeof(w), "%sheader.", where);
	return get_i64(d, h, "revision", w, rev);
}

static int get_kvs(struct dec *d, json_t *o, const char *where, struct etcd_result *r)
{
	json_t *arr;
	size_t n;
	struct etcd_kv *kvs;
	int rc = get_arr(d, o, "kvs", where, &arr, &n);

	if (rc || n == 0)
		return rc;
	kvs = mem_alloc(d->mem, n * sizeof(*kvs));
	if (!kvs)
		return oom(d);
	memset(kvs, 0, n * sizeof(*kvs));
	for (size_t i = 0; i < n; i++) {
		char w[64];
		snprintf(w, sizeof(w), "%skvs[%zu]", where, i);
		if ((rc = get_kv(d, json_array_get(arr, i), w, &kvs[i])) != 0)
			return rc;
	}
	r->kvs = kvs;
	r->nkvs = n;
	return 0;
}

/* The fields of one key operation's answer (alone, or inside a txn). */
static int get_op(struct dec *d, json_t *o, enum etcd_op_type type, const char *where,
		  struct etcd_result *r)
{
	int rc = get_header(d, o, where, &r->revision);

	r->type = type;
	if (rc)
		return rc;
	switch (type) {
	case ETCD_RANGE:
		if ((rc = get_kvs(d, o, where, r)) ||
		    (rc = get_bool(d, o, "more", where, &r->more)) ||
		    (rc = get_i64(d, o, "count", where, &r->count)))
			return rc;
		if (r->count < (int64_t)r->nkvs)
			return bad(d, "%scount is less than the keys given", where);
		return 0;
	case ETCD_PUT:
		return 0;
	case ETCD_DELETE:
		return get_i64(d, o, "deleted", where, &r->deleted);
	}
	return bad(d, "unknown op");
}

static int get_txn(struct dec *d, json_t *o, const enum etcd_op_type *succ, size_t nsucc,
		   const enum etcd_op_type *fail, size_t nfail, struct etcd_result *r)
{
	const enum etcd_op_type *types;
	struct etcd_result *ops;
	json_t *arr;
	size_t n, want;
	int rc;

	if ((rc = get_header(d, o, "", &r->revision)) ||
	    (rc = get_bool(d, o, "succeeded", "", &r->succeeded)) ||
	    (rc = get_arr(d, o, "responses", "", &arr, &n)))
		return rc;
	types = r->succeeded ? succ : fail;
	want = r->succeeded ? nsucc : nfail;
	if (n != want)
		return bad(d, "%zu responses for %zu ops", n, want);
	if (n == 0)
		return 0;
	ops = mem_alloc(d->mem, n * sizeof(*ops));
	if (!ops)
		return oom(d);
	memset(ops, 0, n * sizeof(*ops));
	for (size_t i = 0; i < n; i++) {
		json_t *one = json_array_get(arr, i), *body;
		char w[48];

		snprintf(w, sizeof(w), "responses[%zu]", i);
		if (!json_is_object(one) || json_object_size(one) != 1)
			return bad(d, "%s is not an object with one op", w);
		snprintf(w, sizeof(w), "responses[%zu].", i);
		switch (types[i]) {
		case ETCD_RANGE:
			body = json_object_get(one, "response_range");
			break;
		case ETCD_PUT:
			body = json_object_get(one, "response_put");
			break;
		default:
			body = json_object_get(one, "response_delete_range");
			break;
		}
		if (!body || !json_is_object(body))
			return bad(d, "%s answers another op than the one asked", w);
		ops[i].msg = "";
		if ((rc = get_op(d, body, types[i], w, &ops[i])) != 0)
			return rc;
	}
	r->ops = ops;
	r->nops = n;
	return 0;
}

/* gRPC code to project error. */
static int code_err(int64_t code)
{
	switch (code) {
	case 4:
		return SR_ETIMEDOUT;
	case 5:
		return SR_ENOTFOUND;
	case 7:
	case 16:
		return SR_EDENIED;
	case 8:
	case 14:
		return SR_EBUSY;
	default:
		return SR_EINVAL;
	}
}

/* An error answer? The gateway sends {"error": "text", "message": "text",
 * "code": N} for a refused request, and inside a stream {"error":
 * {"grpc_code": N, "message": "text", ...}}. Returns 1 (and *err, msg,
 * code set) if o is one, 0 if not, or a decode error. */
static int get_error(struct dec *d, json_t *o, int *err, int *code)
{
	json_t *e = json_object_get(o, "error");
	const char *text = NULL;
	int64_t c = 0;
	json_t *m;
	char esc[SR_ESC_SIZE(200)];
	int rc;

	if (!e || json_object_get(o, "header") || json_object_get(o, "result"))
		return 0;
	if (json_is_object(e)) {
		if ((rc = get_i64(d, e, "grpc_code", "error.", &c)) != 0)
			return rc;
		m = json_object_get(e, "message");
	} else if (json_is_string(e)) {
		if ((rc = get_i64(d, o, "code", "", &c)) != 0)
			return rc;
		m = json_object_get(o, "message");
		if (!m)
			m = e;
	} else {
		return bad(d, "error is neither a string nor an object");
	}
	if (m && !json_is_string(m))
		return bad(d, "the error message is not a string");
	if (c < 0 || c > 1000)
		return bad(d, "error code %" PRId64 " is not a gRPC code", c);
	text = m ? json_string_value(m) : "";
	*code = (int)c;
	*err = code_err(c);
	snprintf(d->msg, ETCD_MSG_SIZE, "etcd: %s (code %d)",
		 text[0] ? sr_esc_n(text, 200, esc, sizeof(esc)) : "error without a message",
		 (int)c);
	return 1;
}

static json_t *load(struct dec *d, const char *body, size_t len, int *rc)
{
	json_error_t jerr;
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	char esc[SR_ESC_SIZE(120)];

	*rc = 0;
	if (!root && json_error_code(&jerr) == json_error_out_of_memory) {
		*rc = oom(d);
		return NULL;
	}
	if (!root) {
		*rc = bad(d, "not JSON (%s at byte %d)",
			  sr_esc_n(jerr.text, 120, esc, sizeof(esc)), jerr.position);
		return NULL;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		*rc = bad(d, "not a JSON object");
		return NULL;
	}
	return root;
}

int etcd_json_answer(enum etcd_kind kind, long status, const char *body, size_t len,
		     const enum etcd_op_type *succ, size_t nsucc, const enum etcd_op_type *fail,
		     size_t nfail, struct etcd_answer *a)
{
	struct dec d = {&a->mem, a->msg};
	struct etcd_result *r = &a->res;
	json_t *root, *o;
	int rc, err = 0;
	char esc[SR_ESC_SIZE(100)];

	a->msg[0] = '\0';
	r->msg = a->msg;
	root = load(&d, body, len, &rc);
	if (!root) {
		if (status != 200) { /* a proxy's page, a wrong path: say what came */
			/* body need not end in a NUL; one byte past the 100 shown
			 * makes sr_esc_n mark the cut */
			char head[102];
			size_t k = len < sizeof(head) - 1 ? len : sizeof(head) - 1;
			memcpy(head, body, k);
			head[k] = '\0';
			snprintf(a->msg, sizeof(a->msg), "etcd answer: HTTP %ld: %s", status,
				 sr_esc_n(head, 100, esc, sizeof(esc)));
		}
		return rc;
	}
	rc = get_error(&d, root, &err, &r->code);
	if (rc == 1) {
		json_decref(root);
		return err;
	}
	if (rc == 0 && status != 200)
		rc = bad(&d, "HTTP %ld without an etcd error", status);
	o = root;
	if (rc == 0 && kind == ETCD_K_KEEPALIVE) {
		/* a streaming call: its one message is wrapped in "result" */
		rc = get_obj(&d, root, "result", "", &o);
		if (rc == 0 && !o)
			rc = bad(&d, "no result");
	}
	if (rc == 0) {
		switch (kind) {
		case ETCD_K_RANGE:
			rc = get_op(&d, o, ETCD_RANGE, "", r);
			break;
		case ETCD_K_PUT:
			rc = get_op(&d, o, ETCD_PUT, "", r);
			break;
		case ETCD_K_DELETE:
			rc = get_op(&d, o, ETCD_DELETE, "", r);
			break;
		case ETCD_K_TXN:
			rc = get_txn(&d, o, succ, nsucc, fail, nfail, r);
			break;
		case ETCD_K_GRANT:
		case ETCD_K_KEEPALIVE:
			if ((rc = get_header(&d, o, "", &r->revision)) == 0 &&
			    (rc = get_i64(&d, o, "ID", "", &r->lease)) == 0)
				rc = get_i64(&d, o, "TTL", "", &r->ttl);
			if (rc == 0 && kind == ETCD_K_GRANT && (r->lease <= 0 || r->ttl <= 0))
				rc = bad(&d, "a granted lease without an ID or TTL");
			if (rc == 0 && r->ttl < 0)
				r->ttl = 0;
			break;
		case ETCD_K_REVOKE:
			rc = get_header(&d, o, "", &r->revision);
			break;
		default:
			rc = bad(&d, "an answer to an unknown request");
			break;
		}
	}
	json_decref(root);
	if (rc) {
		r->kvs = NULL;
		r->nkvs = 0;
		r->ops = NULL;
		r->nops = 0;
	}
	return rc;
}

void etcd_answer_fini(struct etcd_answer *a)
{
	mem_free(a->mem);
	a->mem = NULL;
}

static int get_event(struct dec *d, json_t *o, size_t i, struct etcd_event *ev)
{
	json_t *t, *kv, *prev;
	char w[48];
	int rc;

	snprintf(w, sizeof(w), "events[%zu]", i);
	if (!json_is_object(o))
		return bad(d, "%s is not an object", w);
	t = json_object_get(o, "type");
	if (!t || (json_is_string(t) && strcmp(json_string_value(t), "PUT") == 0))
		ev->type = ETCD_EV_PUT;
	else if (json_is_string(t) && strcmp(json_string_value(t), "DELETE") == 0)
		ev->type = ETCD_EV_DELETE;
	else
		return bad(d, "%s.type is not PUT or DELETE", w);
	snprintf(w, sizeof(w), "events[%zu].", i);
	if ((rc = get_obj(d, o, "kv", w, &kv)) || (rc = get_obj(d, o, "prev_kv", w, &prev)))
		return rc;
	if (!kv)
		return bad(d, "%skv is missing", w);
	snprintf(w, sizeof(w), "events[%zu].kv", i);
	if ((rc = get_kv(d, kv, w, &ev->kv)) != 0)
		return rc;
	if (ev->kv.mod_revision <= 0)
		return bad(d, "%s has no mod_revision", w);
	if (prev) {
		struct etcd_kv *p = mem_alloc(d->mem, sizeof(*p));
		if (!p)
			return oom(d);
		memset(p, 0, sizeof(*p));
		snprintf(w, sizeof(w), "events[%zu].prev_kv", i);
		if ((rc = get_kv(d, prev, w, p)) != 0)
			return rc;
		ev->prev = p;
	}
	return 0;
}

int etcd_json_watch_msg(const char *p, size_t n, struct etcd_watch_msg *m)
{
	struct dec d = {&m->mem, m->msg};
	json_t *root, *r = NULL, *arr = NULL, *reason;
	size_t nev = 0;
	int rc, fragment = 0;
	char esc[SR_ESC_SIZE(200)];

	m->msg[0] = '\0';
	m->reason = "";
	root = load(&d, p, n, &rc);
	if (!root)
		return rc;
	rc = get_error(&d, root, &m->err, &m->code);
	if (rc == 1) {
		json_decref(root);
		return 0;
	}
	if (rc == 0) {
		rc = get_obj(&d, root, "result", "", &r);
		if (rc == 0 && !r)
			rc = bad(&d, "a watch message without a result");
	}
	if (rc == 0 && (rc = get_header(&d, r, "", &m->revision)) == 0 &&
	    (rc = get_bool(&d, r, "created", "", &m->created)) == 0 &&
	    (rc = get_bool(&d, r, "canceled", "", &m->canceled)) == 0 &&
	    (rc = get_bool(&d, r, "fragment", "", &fragment)) == 0 &&
	    (rc = get_i64(&d, r, "compact_revision", "", &m->compact_revision)) == 0)
		rc = get_arr(&d, r, "events", "", &arr, &nev);
	if (rc == 0 && fragment)
		rc = bad(&d, "a fragment of a watch message, which was not asked for");
	if (rc == 0 && (reason = json_object_get(r, "cancel_reason")) != NULL) {
		if (!json_is_string(reason)) {
			rc = bad(&d, "cancel_reason is not a string");
		} else {
			const char *s =
			    sr_esc_n(json_string_value(reason), 200, esc, sizeof(esc));
			char *copy = mem_alloc(&m->mem, strlen(s) + 1);
			if (!copy)
				rc = oom(&d);
			else
				m->reason = memcpy(copy, s, strlen(s) + 1);
		}
	}
	if (rc == 0 && nev > 0) {
		m->ev = mem_alloc(&m->mem, nev * sizeof(*m->ev));
		if (!m->ev)
			rc = oom(&d);
		else
			memset(m->ev, 0, nev * sizeof(*m->ev));
		for (size_t i = 0; rc == 0 && i < nev; i++)
			rc = get_event(&d, json_array_get(arr, i), i, &m->ev[i]);
		if (rc == 0)
			m->nev = nev;
	}
	json_decref(root);
	if (rc) {
		m->ev = NULL;
		m->nev = 0;
	}
	return rc;
}

void etcd_watch_msg_fini(struct etcd_watch_msg *m)
{
	mem_free(m->mem);
	m->mem = NULL;
}
