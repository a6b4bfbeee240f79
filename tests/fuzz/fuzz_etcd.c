/* libFuzzer target for the etcd gateway's answers (fleet/etcd_json.c), the
 * only parser of what etcd (or whatever answers in its place) sends.
 *
 * Byte 0 picks what the input answers: a range, put, delete, txn (branches
 * put+range / range), lease grant, keepalive or revoke, or one watch
 * message; byte 1 picks the HTTP status (200 or another); the rest is the
 * body. Beyond not crashing, leaking or hanging: a decoded answer keeps
 * its promises (every key non-empty, keys and values NUL-terminated, a txn
 * answers the branch it names op for op, events in the shape delivered),
 * and an error is one non-empty line without control bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "fleet/etcd_json.h"

static void check_line(const char *s)
{
	if (!s[0])
		abort();
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			abort();
}

static void check_kv(const struct etcd_kv *kv)
{
	if (kv->key_len == 0 || kv->key[kv->key_len] != '\0' ||
	    kv->value[kv->value_len] != '\0')
		abort();
}

static void check_result(const struct etcd_result *r)
{
	for (size_t i = 0; i < r->nkvs; i++)
		check_kv(&r->kvs[i]);
	if (r->nkvs > 0 && r->count < (int64_t)r->nkvs)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum etcd_op_type succ[] = {ETCD_PUT, ETCD_RANGE};
	static const enum etcd_op_type fail[] = {ETCD_RANGE};
	const char *body;
	size_t len;
	unsigned sel;
	long status;

	if (size < 2)
		return 0;
	sel = data[0] % 8;
	status = data[1] % 4 ? 200 : 400 + data[1];
	body = (const char *)data + 2;
	len = size - 2;
	if (sel < 7) {
		struct etcd_answer a;
		int rc;

		memset(&a, 0, sizeof(a));
		rc = etcd_json_answer((enum etcd_kind)(sel + 1), status, body, len, succ, 2,
				      fail, 1, &a);
		if (rc) {
			check_line(a.res.msg);
		} else {
			if (a.res.msg[0])
				abort();
			check_result(&a.res);
			if (sel + 1 == ETCD_K_TXN) {
				const enum etcd_op_type *t = a.res.succeeded ? succ : fail;
				if (a.res.nops != (a.res.succeeded ? 2u : 1u))
					abort();
				for (size_t i = 0; i < a.res.nops; i++) {
					if (a.res.ops[i].type != t[i])
						abort();
					check_result(&a.res.ops[i]);
				}
			}
		}
		etcd_answer_fini(&a);
	} else {
		struct etcd_watch_msg m;
		int rc;

		memset(&m, 0, sizeof(m));
		rc = etcd_json_watch_msg(body, len, &m);
		if (rc || m.err) {
			check_line(m.msg);
		} else {
			for (size_t i = 0; i < m.nev; i++) {
				check_kv(&m.ev[i].kv);
				if (m.ev[i].kv.mod_revision <= 0)
					abort();
				if (m.ev[i].type != ETCD_EV_PUT &&
				    m.ev[i].type != ETCD_EV_DELETE)
					abort();
				if (m.ev[i].prev)
					check_kv(m.ev[i].prev);
			}
		}
		etcd_watch_msg_fini(&m);
	}
	return 0;
}
