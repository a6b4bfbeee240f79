/* sr_util: sr_secret_eq answers equality for secrets of any lengths (its
 * constant time is a property of the code, not something a test can time
 * reliably on a shared machine); sr_sock_send_evbuffer_tail keeps the
 * order of its bytes whatever the buffer's shape and the socket's room. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "common/sr_util.h"

static void test_secret_eq_equal_strings(void **state)
{
	char a[300], b[300];

	(void)state;
	assert_int_equal(sr_secret_eq("", ""), 1);
	assert_int_equal(sr_secret_eq("hunter2", "hunter2"), 1);
	/* distinct buffers with the same content */
	memset(a, 'x', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memcpy(b, a, sizeof(b));
	assert_int_equal(sr_secret_eq(a, b), 1);
}

static void test_secret_eq_different_lengths(void **state)
{
	(void)state;
	/* a prefix of the secret, the secret plus one byte, and the empty token */
	assert_int_equal(sr_secret_eq("hunter", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("hunter2", "hunter"), 0);
	assert_int_equal(sr_secret_eq("hunter22", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("hunter2", ""), 0);
}

static void test_secret_eq_same_length_other_bytes(void **state)
{
	(void)state;
	assert_int_equal(sr_secret_eq("hunter2", "hunter3"), 0);
	assert_int_equal(sr_secret_eq("Hunter2", "hunter2"), 0);
}

static void test_secret_eq_null_is_never_equal(void **state)
{
	(void)state;
	assert_int_equal(sr_secret_eq(NULL, "x"), 0);
	assert_int_equal(sr_secret_eq("x", NULL), 0);
	assert_int_equal(sr_secret_eq(NULL, NULL), 0);
}

/* ---- sr_sock_send_evbuffer_tail --------------------------------------------- */

#define CHAINS 40   /* more than one sendmsg's vectors */
#define CHAIN_LEN 100
#define TAIL_LEN 5000

static uint8_t chain_src[CHAINS][CHAIN_LEN], tail_src[TAIL_LEN];

/* A buffer of CHAINS separate chains (one per reference), bytes unlike the
 * tail's, and what the peer must read: every chain in order, then the tail. */
static struct evbuffer *chained(uint8_t *want)
{
	struct evbuffer *b = evbuffer_new();

	assert_non_null(b);
	for (int i = 0; i < CHAINS; i++) {
		for (int j = 0; j < CHAIN_LEN; j++)
			chain_src[i][j] = (uint8_t)(i * 7 + j);
		assert_int_equal(evbuffer_add_reference(b, chain_src[i], CHAIN_LEN, NULL, NULL), 0);
		memcpy(want + i * CHAIN_LEN, chain_src[i], CHAIN_LEN);
	}
	for (int j = 0; j < TAIL_LEN; j++)
		tail_src[j] = (uint8_t)(200 + j % 37);
	memcpy(want + CHAINS * CHAIN_LEN, tail_src, TAIL_LEN);
	return b;
}

static size_t drain_peer(int fd, uint8_t *got, size_t off, size_t cap)
{
	for (;;) {
		ssize_t n = recv(fd, got + off, cap - off, MSG_DONTWAIT);
		if (n <= 0) {
			assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
			return off;
		}
		off += (size_t)n;
	}
}

/* Sent at once: the tail goes out behind every chain, never among them
 * (a tail put behind only the chains that fit in the vectors would
 * overtake the rest: a TLS record ahead of earlier ones). */
static void test_send_tail_behind_every_chain(void **state)
{
	static uint8_t want[CHAINS * CHAIN_LEN + TAIL_LEN], got[sizeof(want)];
	struct evbuffer *b = chained(want);
	size_t tail_off = 0, have = 0;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	for (int round = 0; round < 10 && tail_off < TAIL_LEN; round++) {
		size_t sent = 0;
		long w = sr_sock_send_evbuffer_tail(sv[0], b, tail_src + tail_off,
						    TAIL_LEN - tail_off, &sent);
		assert_true(w > 0);
		if (sent > 0)
			assert_int_equal(evbuffer_get_length(b), 0); /* all of b went first */
		tail_off += sent;
	}
	assert_int_equal(tail_off, TAIL_LEN);
	have = drain_peer(sv[1], got, 0, sizeof(got));
	assert_int_equal(have, sizeof(want));
	assert_memory_equal(got, want, sizeof(want));
	evbuffer_free(b);
	close(sv[0]);
	close(sv[1]);
}

/* A socket with little room: many partial sends, each resumed by the caller
 * where the last one stopped, and the peer reads the bytes in order. */
static void test_send_tail_partial_sends_keep_order(void **state)
{
	static uint8_t want[CHAINS * CHAIN_LEN + TAIL_LEN], got[sizeof(want)];
	struct evbuffer *b = chained(want);
	size_t tail_off = 0, have = 0;
	int sv[2], small = 2048, partial = 0;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
	for (int round = 0; round < 1000 && (tail_off < TAIL_LEN || have < sizeof(want));
	     round++) {
		size_t sent = 0, before = evbuffer_get_length(b) + (TAIL_LEN - tail_off);
		long w = sr_sock_send_evbuffer_tail(sv[0], b, tail_src + tail_off,
						    TAIL_LEN - tail_off, &sent);
		assert_true(w >= 0);
		if (w > 0 && (size_t)w < before)
			partial++;
		tail_off += sent;
		have = drain_peer(sv[1], got, have, sizeof(got));
	}
	assert_int_equal(tail_off, TAIL_LEN);
	assert_int_equal(have, sizeof(want));
	assert_true(partial > 0); /* the small buffer did cut sends short */
	assert_memory_equal(got, want, sizeof(want));
	evbuffer_free(b);
	close(sv[0]);
	close(sv[1]);
}

/* A peer that closed: -1 with errno, no signal, nothing drained. */
static void test_send_tail_to_closed_peer_fails(void **state)
{
	struct evbuffer *b = evbuffer_new();
	size_t sent = 7;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	evbuffer_add(b, "abc", 3);
	assert_int_equal(sr_sock_send_evbuffer_tail(sv[0], b, "def", 3, &sent), -1);
	assert_int_equal(errno, EPIPE);
	assert_int_equal(sent, 0);
	assert_int_equal(evbuffer_get_length(b), 3);
	evbuffer_free(b);
	close(sv[0]);
}

/* Retries towards etcd back off: 1 s, 2, 4, ... up to the cap, each +-25 %,
 * and from the start again after a success. */
static void test_backoff_doubles_to_its_cap_with_jitter(void **state)
{
	long last = 0, want = 1000;

	(void)state;
	for (int i = 0; i < 8; i++) {
		long d = sr_backoff(&last, 1000, 10000);
		assert_int_equal(last, want);
		assert_in_range(d, want - want / 4, want + want / 4);
		want = want * 2 > 10000 ? 10000 : want * 2;
	}
	last = 0;
	assert_in_range(sr_backoff(&last, 1000, 10000), 750, 1250);
	/* a cap below the first delay wins */
	last = 0;
	assert_in_range(sr_backoff(&last, 1000, 400), 300, 500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_secret_eq_equal_strings),
	    cmocka_unit_test(test_secret_eq_different_lengths),
	    cmocka_unit_test(test_secret_eq_same_length_other_bytes),
	    cmocka_unit_test(test_secret_eq_null_is_never_equal),
	    cmocka_unit_test(test_send_tail_behind_every_chain),
	    cmocka_unit_test(test_send_tail_partial_sends_keep_order),
	    cmocka_unit_test(test_send_tail_to_closed_peer_fails),
	    cmocka_unit_test(test_backoff_doubles_to_its_cap_with_jitter),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
