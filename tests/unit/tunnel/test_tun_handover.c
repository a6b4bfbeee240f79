/* A group's held streams handed to "another process" (tun_handover.h) below
 * the socket layer: the harness of test_resume.c (tests/support/ts_tunpair.h:
 * a relay-role and a sidecar-role tun_conn driven through their sans-I/O
 * interface, the tunnel cut at random byte offsets while executors and
 * drivers send, half-close and reset), and at every cut the relay's group
 * is handed over the way a relay handover does it: frozen, every stream
 * described as JSON text, its socket duplicated (the other process's
 * descriptor) and the bytes of its socket's input and output copied,
 * adopted into a fresh group, the old group forgotten (its descriptors
 * closed, nothing else), the new one thawed; now and then a handover is
 * abandoned instead (the new group forgotten, the old one thawed). Then the
 * sidecar resumes on the new group.
 *
 * What must hold: every byte each end sent arrives at the other in order,
 * exactly once; a FIN arrives iff it was sent, after every byte; a reset
 * arrives as a reset; nothing stays held; the streams_active gauge is back
 * to 0 on both sides; forgetting a group resets no
 * connection and closes no socket the other group still has.
 *
 * SR_HANDOVER_ITERS sets the number of iterations (default 300),
 * SR_HANDOVER_SEED the first seed; a failure names the seed.
 *
 * And the new relay checks what it is handed: a stream description with a
 * field missing, another lease, a malformed executor address or byte counts
 * and states that cannot all be true is refused with its reason, nothing is
 * held for it, its descriptor is closed and the connection left alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_util.h"
#include "tests/support/ts_tunpair.h"
#include "tunnel/tun_group.h"
#include "tunnel/tun_handover.h"

#include <jansson.h>

#define LEASE TS_TP_LEASE
#define PORT TS_TP_PORT

/* What the random test moved, for its summary and its checks. */
static struct {
	uint64_t handovers, abandoned, moved, moved_bytes;
} ho;

/* Append a copy of src to dst, src left as it is (an abandoned handover
 * thaws the old group with its buffers). */
static void copy_into(struct evbuffer *dst, struct evbuffer *src)
{
	struct evbuffer_iovec v[64];
	size_t off = 0;
	int k = evbuffer_peek(src, -1, NULL, v, 64);

	assert_true(k >= 0 && k <= 64);
	for (int i = 0; i < k; i++) {
		assert_int_equal(evbuffer_add(dst, v[i].iov_base, v[i].iov_len), 0);
		off += v[i].iov_len;
	}
	assert_int_equal(off, evbuffer_get_length(src));
	ho.moved_bytes += off;
}

/* What a relay handover does with one group: freeze it, describe every
 * stream (through JSON text, as on the wire), give "the new process" a
 * duplicate of each socket and a copy of its buffers. Returns the new,
 * frozen group. */
static struct tun_group *hand_over(struct ts_tp *h, struct tun_group *old)
{
	struct tun_group_opts go = {.hold_ms = 60000};
	struct tun_group *g = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-relay-group-2");
	char err[256];
	json_t *gj;
	char *text;

	assert_non_null(g);
	assert_int_equal(tun_group_freeze(old), 0);
	tun_group_set_lease(g, LEASE);
	assert_int_equal(tun_group_freeze(g), 0);
	for (struct tun_stream *s = tun_handover_next(old, NULL); s;
	     s = tun_handover_next(old, s)) {
		json_t *meta = tun_handover_stream_json(s), *back;
		struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
		struct evbuffer *sin = tun_handover_stream_in(s),
				*sout = tun_handover_stream_out(s);
		int fd = tun_handover_stream_fd(s);
		assert_non_null(meta);
		text = json_dumps(meta, JSON_COMPACT);
		json_decref(meta);
		assert_non_null(text);
		back = json_loads(text, 0, NULL);
		free(text);
		assert_non_null(back);
		/* Copies, not moves: the old group keeps its buffers intact. */
		if (sin)
			copy_into(in, sin);
		if (sout)
			copy_into(out, sout);
		if (fd >= 0) {
			fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
			assert_true(fd >= 0);
		}
		if (tun_handover_adopt(g, back, fd, in, out, err, sizeof(err)) != 0)
			fail_msg("adopt: %s", err);
		json_decref(back);
		evbuffer_free(in);
		evbuffer_free(out);
		ho.moved++;
	}
	gj = tun_handover_group_json(old);
	assert_non_null(gj);
	text = json_dumps(gj, JSON_COMPACT);
	json_decref(gj);
	gj = json_loads(text, 0, NULL);
	free(text);
	if (tun_handover_group_restore(g, gj, err, sizeof(err)) != 0)
		fail_msg("restore: %s", err);
	json_decref(gj);
	return g;
}

/* After each cut the relay's streams move to a new group, or a handover is
 * abandoned (the new group forgotten, the old one going on). */
static void after_cut(struct ts_tp *h)
{
	struct tun_group *g;

	if (ts_tp_rnd(h, 4) == 0)
		return;
	g = hand_over(h, h->gr);
	if (ts_tp_rnd(h, 5) == 0) {
		tun_group_forget(g);
		tun_group_free(g);
		tun_group_thaw(h->gr);
		ho.abandoned++;
	} else {
		tun_group_forget(h->gr);
		tun_group_free(h->gr);
		h->gr = g;
		tun_group_thaw(h->gr);
		ho.handovers++;
	}
}

static void test_handover_at_every_cut_every_byte_exactly_once(void **state)
{
	struct ts_tp *h = *state;
	const char *n = getenv("SR_HANDOVER_ITERS"), *s0 = getenv("SR_HANDOVER_SEED");
	unsigned iters = n ? (unsigned)strtoul(n, NULL, 10) : 300;
	uint64_t first = s0 ? strtoull(s0, NULL, 10) : 1;
	uint64_t t0 = sr_now_us(), cuts = 0;

	for (unsigned i = 0; i < iters; i++) {
		ts_tp_run_one(h, first + i, after_cut, "SR_HANDOVER_TRACE");
		cuts += h->cuts;
	}
	print_message("%u iterations, %llu cuts, %llu handovers (%llu abandoned), %llu streams "
		      "and %llu buffered bytes moved, %.1f s\n",
		      iters, (unsigned long long)cuts, (unsigned long long)ho.handovers,
		      (unsigned long long)ho.abandoned, (unsigned long long)ho.moved,
		      (unsigned long long)ho.moved_bytes, (double)(sr_now_us() - t0) / 1e6);
	assert_true(ho.handovers > iters / 4);
	assert_true(ho.abandoned > 0);
	assert_true(ho.moved_bytes > 0);
}

/* ---- adopting a description that does not fit ------------------------------ */

/* A live stream as the old relay describes it: 10 bytes sent, 4 acknowledged,
 * so the 6 retained are at the front of its 6 input bytes. */
static json_t *good_meta(void)
{
	return json_pack("{sIsIsssssIsIsIsssssbsbsbsbsbsbsIsI}", "conn", (json_int_t)7, "port",
			 (json_int_t)PORT, "lease", LEASE, "peer", "10.0.0.9:40000", "tx_sent",
			 (json_int_t)10, "tx_acked", (json_int_t)4, "rx", (json_int_t)3, "up",
			 "open", "down", "open", "live", 1, "fin_sent", 0, "answer_seen", 1,
			 "rst_sent", 0, "tomb_done", 0, "finishing", 0, "in", (json_int_t)6,
			 "out", (json_int_t)0);
}

/* Adopt meta with a duplicate of sp[0] (the other process keeps sp[0]) and
 * 6 input bytes; returns adopt's result. */
static int adopt_one(struct tun_group *g, const json_t *meta, int sp[2], int with_fd, char *err,
		     size_t errlen, int *fd_out)
{
	struct evbuffer *in = evbuffer_new();
	int fd = with_fd ? fcntl(sp[0], F_DUPFD_CLOEXEC, 0) : -1;
	int rc;

	assert_non_null(in);
	assert_int_equal(evbuffer_add(in, "abcdef", 6), 0);
	if (with_fd)
		assert_true(fd >= 0);
	rc = tun_handover_adopt(g, meta, fd, in, NULL, err, errlen);
	evbuffer_free(in);
	*fd_out = fd;
	return rc;
}

/* The new relay validates each stream it is handed: a description whose
 * fields are missing or whose byte counts and states cannot all be true
 * (a resume from it could not be exact), or that names another lease or a
 * malformed executor address (it goes into log lines and a header), is
 * refused with a reason; nothing is held for it; the descriptor it was given
 * is closed, and the connection itself, still the old relay's, is not
 * touched. */
static void test_adopt_refuses_what_does_not_fit(void **state)
{
	struct ts_tp *h = *state;
	struct tun_group_opts go = {.hold_ms = 60000};
	/* One change each to good_meta(): the field, its new value as JSON
	 * (NULL: removed), the reason expected. The last round adopts it as it is. */
	static const struct {
		const char *key, *value, *why;
		int no_fd;
	} bad[] = {
	    {"conn", NULL, "a field is missing", 0},
	    {"tx_acked", "\"4\"", "a field is missing", 0},
	    {"port", "65536", "a field is missing", 0},
	    {"up", "\"done\"", "a field is missing", 0}, /* only the way down ends "done" */
	    {"lease", "\"L-2-0123abcd\"", "another lease", 0},
	    {"peer", "\"10.0.0.9:1\\nforged\"", "executor address is malformed", 0},
	    {"tx_acked", "11", "do not fit together", 0},    /* more acknowledged than sent */
	    {"tx_sent", "20", "do not fit together", 0},     /* 16 retained, 6 bytes of input */
	    {"finishing", "true", "do not fit together", 0}, /* no FIN was sent */
	    {"live", "true", "do not fit together", 1},	     /* live, and no socket */
	};
	const size_t n = sizeof(bad) / sizeof(bad[0]);
	char err[256];
	int sp[2], fd, rc;
	struct tun_group_stats st;

	h->base = event_base_new();
	assert_non_null(h->base);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
	for (size_t i = 0; i <= n; i++) {
		struct tun_group *g = tun_group_new(h->base, TUN_ROLE_RELAY, &go, "t-adopt");
		json_t *m = good_meta();

		assert_non_null(g);
		assert_non_null(m);
		tun_group_set_lease(g, LEASE);
		assert_int_equal(tun_group_freeze(g), 0);
		if (i < n && !bad[i].value)
			json_object_del(m, bad[i].key);
		else if (i < n)
			json_object_set_new(m, bad[i].key,
					    json_loads(bad[i].value, JSON_DECODE_ANY, NULL));
		rc = adopt_one(g, m, sp, i == n || !bad[i].no_fd, err, sizeof(err), &fd);
		tun_group_get_stats(g, &st);
		if (i == n) {
			assert_int_equal(rc, 0);
			assert_int_equal(st.held, 1);
			assert_int_equal(st.held_bytes, 6);
		} else {
			if (rc != SR_EINVAL || !strstr(err, bad[i].why))
				fail_msg("%s %s: rc %d, \"%s\"; want \"%s\"", bad[i].key,
					 bad[i].value ? bad[i].value : "removed", rc,
					 rc ? err : "", bad[i].why);
			assert_non_null(strstr(err, bad[i].value ? "conn=7" : "conn=0"));
			assert_int_equal(st.held, 0);
			/* our duplicate is closed, not leaked */
			if (!bad[i].no_fd)
				assert_int_equal(fcntl(fd, F_GETFD), -1);
		}
		/* The connection is still the other process's: no EOF, no reset. */
		{
			char c;
			ssize_t got = recv(sp[1], &c, 1, MSG_DONTWAIT);
			assert_true(got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
		}
		json_decref(m);
		tun_group_forget(g);
		tun_group_free(g);
	}
	close(sp[0]);
	close(sp[1]);
	event_base_free(h->base);
	h->base = NULL;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_handover_at_every_cut_every_byte_exactly_once,
					    ts_tp_setup, ts_tp_teardown),
	    cmocka_unit_test_setup_teardown(test_adopt_refuses_what_does_not_fit, ts_tp_setup,
					    ts_tp_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
