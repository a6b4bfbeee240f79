/* fleet/splice: a pair of real loopback TCP sockets joined in the kernel.
 *
 *   e (executor) -> a [pair] b -> x (the far relay's end)
 *
 * Byte-exact transfer both ways at once, half-close each way while the other
 * direction flows, resets carried each way, a far end that stops reading
 * (memory and CPU stay bounded), and the outcomes of dialling: refused,
 * timed out and hung up before any byte, each leaving the executor's socket
 * untouched so that another peer can be tried. No test leaks a descriptor. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "fleet/splice.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pattern.h"
#include "tests/support/ts_sys.h"

#define MIB (1024u * 1024u)

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

static uint64_t cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct st {
	struct event_base *base;
	int lfd, pfd; /* the executors' listener, the far relay's listener */
	uint16_t lport, pport;
	int e, a, x;
	struct fleet_splice *sp;
	int ends;
	enum fleet_splice_end end;
	int err;
	int free_in_cb;
	int fds;
};

static void st_cb(struct fleet_splice *sp, enum fleet_splice_end end, int err, void *arg)
{
	struct st *t = arg;

	t->ends++;
	t->end = end;
	t->err = err;
	if (t->free_in_cb && end != FLEET_SPLICE_UNREACHED) {
		fleet_splice_free(sp);
		t->sp = NULL;
	}
}

static int accept_nb(int lfd)
{
	return accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/* bufsz > 0: small socket buffers on every socket of the test. */
static void st_open_o(struct st *t, int bufsz, const struct fleet_splice_opts *o)
{
	memset(t, 0, sizeof(*t));
	t->fds = count_fds();
	t->x = -1;
	t->base = event_base_new();
	assert_non_null(t->base);
	t->lfd = ts_listen_loopback(bufsz, 0, &t->lport);
	t->pfd = ts_listen_loopback(bufsz, 1, &t->pport);
	t->e = ts_connect("127.0.0.1", t->lport);
	assert_true(t->e >= 0);
	if (bufsz > 0) {
		setsockopt(t->e, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
		setsockopt(t->e, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	}
	t->a = accept_nb(t->lfd);
	assert_true(t->a >= 0);
	t->sp = fleet_splice_new(t->base, t->a, o, st_cb, t);
	assert_non_null(t->sp);
	assert_int_equal(fcntl(t->e, F_SETFL, O_NONBLOCK), 0);
}

static void st_open(struct st *t, int bufsz)
{
	st_open_o(t, bufsz, NULL);
}

/* The pair spliced with a socket the test connected (small buffers too). */
static void st_start(struct st *t, int bufsz)
{
	int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage p = ts_addr("127.0.0.1", t->pport);

	assert_true(b >= 0);
	if (bufsz > 0) {
		setsockopt(b, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
		setsockopt(b, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	}
	assert_int_equal(connect(b, TS_SA(p), sizeof(struct sockaddr_in)), 0);
	assert_int_equal(fcntl(b, F_SETFL, O_NONBLOCK), 0);
	for (int i = 0; i < 100 && t->x < 0; i++) {
		t->x = accept_nb(t->pfd);
		if (t->x < 0)
			usleep(1000);
	}
	assert_true(t->x >= 0);
	assert_int_equal(fleet_splice_start(t->sp, b), 0);
	assert_int_equal(fleet_splice_start(t->sp, b), SR_EINVAL); /* not idle */
	assert_int_equal(fleet_splice_take(t->sp), -1);
}

static int st_x_accepted(void *arg)
{
	struct st *t = arg;

	if (t->x < 0)
		t->x = accept_nb(t->pfd);
	return t->x >= 0;
}

static void st_connect(struct st *t, const void *prefix, size_t plen)
{
	struct sockaddr_storage p = ts_addr("127.0.0.1", t->pport);

	assert_int_equal(
	    fleet_splice_connect(t->sp, TS_SA(p), sizeof(struct sockaddr_in), prefix, plen), 0);
	assert_true(ts_loop_until(t->base, st_x_accepted, t, 2000));
}

static void st_close(struct st *t)
{
	fleet_splice_free(t->sp);
	if (t->x >= 0)
		close(t->x);
	if (t->e >= 0)
		close(t->e);
	close(t->lfd);
	close(t->pfd);
	event_base_free(t->base);
	assert_int_equal(count_fds(), t->fds);
}

/* One direction of a transfer in progress, from fd `from` to fd `to`. */
struct flow {
	int from, to;
	uint32_t seed;
	uint64_t n, sent, got;
	int eof; /* `to` read EOF */
	uint8_t buf[64 * 1024];
};

static void flow_init(struct flow *f, int from, int to, uint32_t seed, uint64_t n)
{
	f->from = from;
	f->to = to;
	f->seed = seed;
	f->n = n;
	f->sent = f->got = 0;
	f->eof = 0;
}

/* Sends and receives what the sockets take now, checking every byte.
 * Returns 1 if anything moved. chunk bounds one send. */
static int flow_step(struct flow *f, size_t chunk)
{
	int moved = 0;
	ssize_t k;

	if (f->sent < f->n) {
		size_t want = f->n - f->sent < chunk ? (size_t)(f->n - f->sent) : chunk;
		if (want > sizeof(f->buf))
			want = sizeof(f->buf);
		ts_pat_fill(f->seed, f->sent, f->buf, want);
		k = send(f->from, f->buf, want, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			f->sent += (uint64_t)k;
			moved = 1;
		}
	}
	k = recv(f->to, f->buf, sizeof(f->buf), MSG_DONTWAIT);
	if (k > 0) {
		assert_int_equal(ts_pat_check(f->seed, f->got, f->buf, (size_t)k), -1);
		f->got += (uint64_t)k;
		assert_true(f->got <= f->n);
		moved = 1;
	} else if (k == 0) {
		f->eof = 1;
	}
	return moved;
}

/* Moves both flows (either may be NULL) to completion within ms. */
static void flows_run(struct st *t, struct flow *f1, struct flow *f2, int ms)
{
	uint64_t deadline = sr_now_us() + (uint64_t)ms * 1000u;

	while ((f1 && f1->got < f1->n) || (f2 && f2->got < f2->n)) {
		int moved = 0;

		assert_true(sr_now_us() < deadline);
		if (f1)
			moved |= flow_step(f1, 256 * 1024);
		if (f2)
			moved |= flow_step(f2, 256 * 1024);
		ts_loop_step(t->base,
			     0); /* not EVLOOP_NONBLOCK: it runs while anything is active */
		if (!moved)
			ts_loop_step(t->base, 1000);
	}
}

/* Runs until `to` of f reads EOF (within ms). */
static void flow_wait_eof(struct st *t, struct flow *f, int ms)
{
	uint64_t deadline = sr_now_us() + (uint64_t)ms * 1000u;

	while (!f->eof) {
		assert_true(sr_now_us() < deadline);
		flow_step(f, 0);
		ts_loop_step(t->base, 2000);
	}
}

/* 1 if fd was reset by its peer: recv fails with ECONNRESET within ms. */
static int saw_reset(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char b[4096];
	ssize_t n;

	if (poll(&p, 1, ms) != 1)
		return 0;
	while ((n = recv(fd, b, sizeof(b), MSG_DONTWAIT)) > 0)
		;
	return n < 0 && errno == ECONNRESET;
}

static void test_bytes_exact_both_ways_at_once(void **state)
{
	struct flow *up = malloc(sizeof(*up)), *down = malloc(sizeof(*down));
	uint64_t ab = 0, ba = 0;
	struct st t;

	(void)state;
	st_open(&t, 0);
	st_start(&t, 0);
	flow_init(up, t.e, t.x, 11, 6 * MIB);
	flow_init(down, t.x, t.e, 22, 5 * MIB + 12345);
	flows_run(&t, up, down, 30000);
	fleet_splice_bytes(t.sp, &ab, &ba);
	assert_true(ab == 6 * MIB && ba == 5 * MIB + 12345);
	/* Both sides end: a clean end, both closed. */
	shutdown(t.e, SHUT_WR);
	shutdown(t.x, SHUT_WR);
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_DONE);
	assert_int_equal(t.err, 0);
	flow_wait_eof(&t, up, 2000);
	flow_wait_eof(&t, down, 2000);
	free(up);
	free(down);
	st_close(&t);
}

/* from closes its sending side first; the other way keeps flowing. */
static void half_close(int first_is_executor)
{
	struct flow *f1 = malloc(sizeof(*f1)), *f2 = malloc(sizeof(*f2));
	struct st t;
	int one, two;

	st_open(&t, 0);
	st_start(&t, 0);
	t.free_in_cb = 1; /* the callback may free the pair */
	one = first_is_executor ? t.e : t.x;
	two = first_is_executor ? t.x : t.e;
	flow_init(f1, one, two, 5, 2 * MIB);
	flows_run(&t, f1, NULL, 20000);
	shutdown(one, SHUT_WR);
	flow_wait_eof(&t, f1, 2000);
	/* Half closed: the other direction still carries everything. */
	flow_init(f2, two, one, 6, 3 * MIB);
	flows_run(&t, f2, NULL, 20000);
	assert_int_equal(t.ends, 0);
	shutdown(two, SHUT_WR);
	flow_wait_eof(&t, f2, 2000);
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_DONE);
	assert_null(t.sp);
	free(f1);
	free(f2);
	st_close(&t);
}

static void test_half_close_from_executor(void **state)
{
	(void)state;
	half_close(1);
}

static void test_half_close_from_far_end(void **state)
{
	(void)state;
	half_close(0);
}

static void reset_from(int executor_resets, int after_half_close)
{
	struct flow *f = malloc(sizeof(*f));
	struct st t;
	int resetter, other;

	st_open(&t, 0);
	st_start(&t, 0);
	resetter = executor_resets ? t.e : t.x;
	other = executor_resets ? t.x : t.e;
	flow_init(f, resetter, other, 9, 256 * 1024);
	flows_run(&t, f, NULL, 10000);
	if (after_half_close) {
		/* The other side has said FIN; the resetter's reset still
		 * reaches it. */
		shutdown(other, SHUT_WR);
		ts_loop_run_for(t.base, 50);
	}
	sr_sock_set_reset_on_close(resetter);
	close(resetter);
	/* The other side keeps sending: the pair may meet the reset by writing
	 * into it (EPIPE) rather than by reading it. */
	for (int i = 0; i < 16; i++) {
		ts_pat_fill(1, 0, f->buf, 16384);
		(void)send(other, f->buf, 16384, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	if (executor_resets)
		t.e = -1;
	else
		t.x = -1;
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_RESET);
	assert_int_equal(t.err, SR_ECLOSED);
	assert_true(saw_reset(other, 2000));
	free(f);
	st_close(&t);
}

static void test_reset_from_executor(void **state)
{
	(void)state;
	reset_from(1, 0);
	reset_from(1, 1);
}

static void test_reset_from_far_end(void **state)
{
	(void)state;
	reset_from(0, 0);
	reset_from(0, 1);
}

static void test_stalled_reader_bounds_memory_and_cpu(void **state)
{
	struct flow *f = malloc(sizeof(*f));
	uint64_t ab1 = 0, ab2 = 0, c0, cpu, sent;
	struct st t;
	int idle = 0;

	(void)state;
	st_open(&t, 32 * 1024);
	st_start(&t, 32 * 1024);
	flow_init(f, t.e, t.x, 3, 64 * MIB);
	/* x reads nothing: fill everything between e and x with small sends
	 * (small segments fill a pipe's slots before its bytes). */
	for (uint64_t end = sr_now_us() + 5000000u; idle < 50 && sr_now_us() < end;) {
		size_t want = 512;
		ts_pat_fill(f->seed, f->sent, f->buf, want);
		ssize_t k = send(t.e, f->buf, want, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			f->sent += (uint64_t)k;
			idle = 0;
		} else {
			idle++;
		}
		ts_loop_step(t.base, 0);
		if (k <= 0)
			ts_loop_step(t.base, 2000);
	}
	sent = f->sent;
	/* Everything in flight is in socket buffers and one pipe. */
	assert_true(idle >= 50);
	assert_true(sent > 64 * 1024 && sent < 2 * MIB);
	fleet_splice_bytes(t.sp, &ab1, NULL);

	/* Stalled for a second: no byte moves, the loop sleeps. */
	c0 = cpu_us();
	ts_loop_run_for(t.base, 1000);
	cpu = cpu_us() - c0;
	fleet_splice_bytes(t.sp, &ab2, NULL);
	assert_true(ab2 == ab1);
	assert_true(cpu < 100000u);

	/* x reads again: every byte arrives, in order. */
	f->n = sent;
	flows_run(&t, f, NULL, 10000);
	assert_int_equal(t.ends, 0);
	free(f);
	st_close(&t);
}

/* Live handover: a running pair paused, its descriptors passed on (dup'd
 * here, as SCM_RIGHTS would), the pair forgotten without a reset, and a
 * new pair made from them: every byte arrives, those that waited in the
 * pipe included, both ways, and the pair ends cleanly. */
static void test_paused_pair_goes_on_in_another_pair(void **state)
{
	struct flow *f = malloc(sizeof(*f)), *back = malloc(sizeof(*back));
	struct fleet_splice_state st, st2;
	uint64_t ab = 0, before = 0;
	struct st t;
	int idle = 0;

	(void)state;
	st_open(&t, 32 * 1024);
	st_start(&t, 32 * 1024);
	flow_init(f, t.e, t.x, 5, 64 * MIB);
	/* x does not read: the pipe a -> b fills. */
	for (uint64_t end = sr_now_us() + 5000000u; idle < 50 && sr_now_us() < end;) {
		ssize_t k;
		ts_pat_fill(f->seed, f->sent, f->buf, 512);
		k = send(t.e, f->buf, 512, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			f->sent += (uint64_t)k;
			idle = 0;
		} else {
			idle++;
		}
		ts_loop_step(t.base, 0);
		if (k <= 0)
			ts_loop_step(t.base, 2000);
	}
	assert_int_equal(fleet_splice_export(t.sp, &st), SR_EINVAL); /* not paused */
	fleet_splice_pause(t.sp, 1);
	fleet_splice_bytes(t.sp, &before, NULL);
	/* Paused: x reads what reached it (checked), and nothing more moves. */
	f->n = f->sent;
	for (int quiet = 0; quiet < 5;) {
		ts_loop_run_for(t.base, 20);
		quiet = flow_step(f, 0) ? 0 : quiet + 1;
	}
	fleet_splice_bytes(t.sp, &ab, NULL);
	assert_true(ab == before);
	assert_true(f->got == ab);
	assert_int_equal(fleet_splice_export(t.sp, &st), 0);
	assert_true(st.inpipe[0] > 0);
	st2 = st;
	st2.a = dup(st.a);
	st2.b = dup(st.b);
	for (int k = 0; k < 2; k++)
		for (int i = 0; i < 2; i++)
			st2.pipe[k][i] = dup(st.pipe[k][i]);
	fleet_splice_forget(t.sp);
	t.sp = NULL;
	assert_int_equal(t.ends, 0);
	assert_false(saw_reset(t.e, 50));

	t.sp = fleet_splice_adopt(t.base, &st2, 0, NULL, st_cb, &t);
	assert_non_null(t.sp);
	flow_init(back, t.x, t.e, 6, 256 * 1024);
	flows_run(&t, f, back, 10000);
	shutdown(t.e, SHUT_WR);
	shutdown(t.x, SHUT_WR);
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_DONE);
	free(f);
	free(back);
	st_close(&t);
}

static void test_connect_refused_leaves_executor_untouched(void **state)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	char got[16] = "";
	struct st t;
	int hold, a;

	(void)state;
	st_open(&t, 0);
	/* A port bound but not listening, held for the test: refused. */
	hold = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(hold, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(hold, (struct sockaddr *)&sin, &sl), 0);
	assert_int_equal(send(t.e, "early", 5, 0), 5);

	assert_int_equal(
	    fleet_splice_connect(t.sp, (struct sockaddr *)&sin, sizeof(sin), "HDR", 3), 0);
	assert_int_equal(t.ends, 0); /* never from inside the call */
	assert_int_equal(
	    fleet_splice_connect(t.sp, (struct sockaddr *)&sin, sizeof(sin), NULL, 0),
	    SR_EINVAL);
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_UNREACHED);
	assert_int_equal(t.err, SR_EIO);
	/* a is the caller's again, with the executor's bytes unread. */
	a = fleet_splice_take(t.sp);
	t.sp = NULL;
	assert_true(a >= 0);
	assert_int_equal(recv(a, got, sizeof(got), 0), 5);
	assert_memory_equal(got, "early", 5);
	close(a);
	close(hold);
	st_close(&t);
}

static void test_connect_timeout_then_another_peer(void **state)
{
	struct fleet_splice_opts o = {.connect_timeout_ms = 300};
	struct sockaddr_storage full;
	char got[32] = "";
	struct st t;
	uint16_t fport;
	uint64_t t0, took;
	int ffd, fill[2], k, n = 0;

	(void)state;
	st_open_o(&t, 0, &o);

	/* A listener whose accept queue is full drops SYNs: no answer. */
	ffd = ts_listen_loopback(0, 1, &fport);
	assert_int_equal(listen(ffd, 0), 0);
	for (int i = 0; i < 2; i++) {
		struct sockaddr_storage f = ts_addr("127.0.0.1", fport);
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[i], TS_SA(f), sizeof(struct sockaddr_in));
	}
	usleep(20000);
	full = ts_addr("127.0.0.1", fport);
	t0 = sr_now_us();
	assert_int_equal(
	    fleet_splice_connect(t.sp, TS_SA(full), sizeof(struct sockaddr_in), "H1", 2), 0);
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 3000));
	took = sr_now_us() - t0;
	assert_int_equal(t.end, FLEET_SPLICE_UNREACHED);
	assert_int_equal(t.err, SR_ETIMEDOUT);
	assert_true(took >= 280000u && took < 1500000u);

	/* Another peer: the prefix, then the executor's bytes. */
	st_connect(&t, "H2:", 3);
	assert_int_equal(send(t.e, "payload", 7, 0), 7);
	for (int i = 0; i < 200 && n < 10; i++) {
		k = (int)recv(t.x, got + n, sizeof(got) - 1 - (size_t)n, MSG_DONTWAIT);
		if (k > 0)
			n += k;
		ts_loop_step(t.base, 5000);
	}
	assert_string_equal(got, "H2:payload");
	for (int i = 0; i < 2; i++)
		close(fill[i]);
	close(ffd);
	st_close(&t);
}

static void test_peer_hangs_up_before_a_byte(void **state)
{
	struct flow *f = malloc(sizeof(*f));
	struct st t;

	(void)state;
	st_open(&t, 0);
	/* The far relay refuses (a reset) before the executor said anything. */
	st_connect(&t, "HDR", 3);
	sr_sock_set_reset_on_close(t.x);
	close(t.x);
	t.x = -1;
	assert_true(ts_loop_until_count(t.base, &t.ends, 1, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_UNREACHED);
	assert_int_equal(t.err, SR_ECLOSED);
	/* A plain close (FIN) before any byte is the same. */
	st_connect(&t, "HDR", 3);
	close(t.x);
	t.x = -1;
	assert_true(ts_loop_until_count(t.base, &t.ends, 2, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_UNREACHED);

	/* Once a byte moved, a failure ends both. */
	st_connect(&t, NULL, 0);
	flow_init(f, t.e, t.x, 1, 1000);
	flows_run(&t, f, NULL, 5000);
	sr_sock_set_reset_on_close(t.x);
	close(t.x);
	t.x = -1;
	assert_true(ts_loop_until_count(t.base, &t.ends, 3, 2000));
	assert_int_equal(t.end, FLEET_SPLICE_RESET);
	assert_true(saw_reset(t.e, 2000));
	free(f);
	st_close(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bytes_exact_both_ways_at_once),
	    cmocka_unit_test(test_half_close_from_executor),
	    cmocka_unit_test(test_half_close_from_far_end),
	    cmocka_unit_test(test_reset_from_executor),
	    cmocka_unit_test(test_reset_from_far_end),
	    cmocka_unit_test(test_stalled_reader_bounds_memory_and_cpu),
	    cmocka_unit_test(test_paused_pair_goes_on_in_another_pair),
	    cmocka_unit_test(test_connect_refused_leaves_executor_untouched),
	    cmocka_unit_test(test_connect_timeout_then_another_peer),
	    cmocka_unit_test(test_peer_hangs_up_before_a_byte),
	};

	/* As sparkrelay's main: splice(2) into a reset socket raises SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
