/* tun_seal_frame: a DATA frame into as few TLS records as it allows, from a
 * socket input cut into pieces anywhere. Each evbuffer_add_reference makes a
 * chain of its own, so the tests choose where the input is cut. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "common/sr_err.h"
#include "tunnel/tun_records.h"

#define MAXLEN (5 * TUN_TLS_REC + 100)
#define MAXREC 64

/* What seal saw: the bytes in order, and the records SSL_write would make of
 * each call (TUN_TLS_REC each, the last of a call shorter). */
struct sealed {
	uint8_t bytes[9 + MAXLEN];
	size_t len;
	size_t rec[MAXREC];
	int nrec;
	int direct;         /* calls whose bytes pointed into the payload itself */
	const uint8_t *src; /* the payload, to tell direct calls from copies */
	size_t src_len;
	int fail_at;        /* fail this call (1-based), 0: never */
	int calls;
};

static int seal(void *arg, const void *p, size_t n)
{
	struct sealed *s = arg;
	const uint8_t *b = p;

	assert_true(n > 0);
	if (++s->calls == s->fail_at)
		return SR_ETLS;
	assert_true(s->len + n <= sizeof(s->bytes));
	memcpy(s->bytes + s->len, p, n);
	s->len += n;
	if (b >= s->src && b < s->src + s->src_len)
		s->direct++;
	for (size_t left = n; left > 0;) {
		size_t r = left < TUN_TLS_REC ? left : TUN_TLS_REC;
		assert_true(s->nrec < MAXREC);
		s->rec[s->nrec++] = r;
		left -= r;
	}
	return 0;
}

static uint8_t payload[MAXLEN];
static const uint8_t hdr[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

/* Seals a frame of len bytes cut into pieces of the given lengths (the
 * last piece is whatever remains), after `skip` bytes that are not part of
 * the frame, and checks what every caller relies on. */
static void frame(size_t len, const size_t *cuts, int ncuts, size_t skip, struct sealed *s)
{
	struct evbuffer *src = evbuffer_new();
	struct evbuffer_ptr pos;
	size_t at = 0, min;

	assert_non_null(src);
	memset(s, 0, sizeof(*s));
	s->src = payload;
	s->src_len = len;
	if (skip)
		evbuffer_add(src, "skipped bytes, not the frame's", skip);
	for (int i = 0; i <= ncuts && at < len; i++) {
		size_t k = i < ncuts && cuts[i] < len - at ? cuts[i] : len - at;
		assert_int_equal(evbuffer_add_reference(src, payload + at, k, NULL, NULL), 0);
		at += k;
	}
	evbuffer_add(src, "after", 5); /* bytes past the frame stay unread */
	assert_int_equal(evbuffer_ptr_set(src, &pos, skip, EVBUFFER_PTR_SET), 0);
	assert_int_equal(tun_seal_frame(hdr, src, &pos, len, seal, s), 0);

	/* Header then payload, each byte once, in order. */
	assert_int_equal(s->len, 9 + len);
	assert_memory_equal(s->bytes, hdr, 9);
	assert_memory_equal(s->bytes + 9, payload, len);
	assert_int_equal(pos.pos, (ev_ssize_t)(skip + len));
	/* As few records as header and payload allow... */
	min = (9 + len + TUN_TLS_REC - 1) / TUN_TLS_REC;
	assert_int_equal(s->nrec, (int)min);
	/* ...each full but the last, or the header alone where that costs none. */
	for (int r = 0; r < s->nrec - 1; r++) {
		if (r == 0 && s->rec[0] == 9)
			continue;
		assert_int_equal(s->rec[r], TUN_TLS_REC);
	}
	if (s->rec[0] == 9 && len > 0)
		assert_true(len % TUN_TLS_REC == 0 || len % TUN_TLS_REC > TUN_TLS_REC - 9);
	evbuffer_free(src);
}

static void test_one_piece(void **state)
{
	static const size_t lens[] = {0, 1, 64, 4096, TUN_TLS_REC - 10, TUN_TLS_REC - 9,
				      TUN_TLS_REC - 8, TUN_TLS_REC - 1, TUN_TLS_REC,
				      TUN_TLS_REC + 1, 3 * TUN_TLS_REC - 9, 65527, 65536, MAXLEN};
	struct sealed *s = malloc(sizeof(*s));

	(void)state;
	assert_non_null(s);
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
		frame(lens[i], NULL, 0, 0, s);
	/* A 16 KiB payload: header alone, then the payload straight from the
	 * input (no copy). */
	frame(TUN_TLS_REC, NULL, 0, 0, s);
	assert_int_equal(s->nrec, 2);
	assert_int_equal(s->rec[0], 9);
	assert_int_equal(s->direct, 1);
	/* The largest frame the session asks for: four full records. */
	frame(65527, NULL, 0, 0, s);
	assert_int_equal(s->nrec, 4);
	free(s);
}

/* Reads end anywhere: pieces of 1 byte, pieces around the record size, and
 * more pieces than one evbuffer_peek returns (8). */
static void test_cut_input(void **state)
{
	static const size_t ones[20] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
					1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
	static const size_t around[] = {TUN_TLS_REC - 9, 9, TUN_TLS_REC + 1, TUN_TLS_REC - 1,
					20000, 3000, 2 * TUN_TLS_REC};
	static const size_t many[12] = {100, 5000, 17000, 1, 4095, 40000, 7, 16384, 16385,
					2, 3, 11000};
	struct sealed *s = malloc(sizeof(*s));

	(void)state;
	assert_non_null(s);
	frame(20, ones, 20, 0, s);
	frame(5000, ones, 20, 0, s);
	frame(65527, around, 7, 0, s);
	frame(MAXLEN, around, 7, 0, s);
	frame(MAXLEN, many, 12, 0, s);
	frame(2 * TUN_TLS_REC, many, 12, 0, s);
	frame(MAXLEN, many, 12, 7, s); /* the frame starts inside a chain */
	/* A whole record that is one piece goes straight from the input. */
	frame(3 * TUN_TLS_REC - 9, around + 1, 2, 0, s); /* 9, then 16385, then the rest */
	assert_true(s->direct >= 1);
	free(s);
}

/* Random cuts of random lengths, bounded: each check as above. */
static void test_random_cuts(void **state)
{
	struct sealed *s = malloc(sizeof(*s));
	unsigned seed = 12345;

	(void)state;
	assert_non_null(s);
	for (int round = 0; round < 400; round++) {
		size_t cuts[40];
		int n = (int)(rand_r(&seed) % 40);
		size_t len = (size_t)rand_r(&seed) % (MAXLEN + 1);

		for (int i = 0; i < n; i++)
			cuts[i] = 1 + (size_t)rand_r(&seed) % (rand_r(&seed) % 2 ? 64 : 2 * TUN_TLS_REC);
		frame(len, cuts, n, (size_t)rand_r(&seed) % 20, s);
	}
	free(s);
}

/* A seal that fails stops the frame there, with its error; an input shorter
 * than the frame is SR_EINVAL, not a read past it. */
static void test_errors(void **state)
{
	static const size_t cuts[] = {100, 20000, 7};
	struct sealed *s = malloc(sizeof(*s));
	struct evbuffer *src = evbuffer_new();
	struct evbuffer_ptr pos;
	const size_t len = 3 * TUN_TLS_REC - 9;
	size_t at = 0;
	int calls;

	(void)state;
	assert_non_null(s);
	assert_non_null(src);
	for (int i = 0; i < 4; i++) {
		size_t k = i < 3 ? cuts[i] : len - at;
		evbuffer_add_reference(src, payload + at, k, NULL, NULL);
		at += k;
	}
	memset(s, 0, sizeof(*s));
	evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
	assert_int_equal(tun_seal_frame(hdr, src, &pos, len, seal, s), 0);
	calls = s->calls;
	assert_true(calls >= 3);
	for (int fail = 1; fail <= calls; fail++) {
		memset(s, 0, sizeof(*s));
		s->fail_at = fail;
		evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
		assert_int_equal(tun_seal_frame(hdr, src, &pos, len, seal, s), SR_ETLS);
		assert_int_equal(s->calls, fail); /* nothing sealed after the failure */
	}
	memset(s, 0, sizeof(*s));
	evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
	assert_int_equal(tun_seal_frame(hdr, src, &pos, len + 1, seal, s), SR_EINVAL);
	evbuffer_free(src);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_one_piece),
	    cmocka_unit_test(test_cut_input),
	    cmocka_unit_test(test_random_cuts),
	    cmocka_unit_test(test_errors),
	};

	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + i / 251);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
