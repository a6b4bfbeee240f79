/* sr_bsock: the executor and driver sockets' buffered socket. What the
 * stream code relies on: bytes arrive whole and in order, an end or an error
 * is reported once, a write event fires only while bytes wait, a refused or
 * silent connect is reported from the loop, the socket may be freed from its
 * own callback, and reads are sized so a small message takes a small buffer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "common/sr_bsock.h"
#include "common/sr_util.h"
#include "tests/support/ts_net.h"

struct fx {
	struct event_base *base;
	struct sr_bsock *b;
	int peer;
	int reads, writes, events;
	short last_what;
	int last_errno;
	int free_in_cb;
};

static void on_read(struct sr_bsock *b, void *arg)
{
	struct fx *f = arg;

	f->reads++;
	if (f->free_in_cb) {
		sr_bsock_free(b);
		f->b = NULL;
	}
}

static void on_write(struct sr_bsock *b, void *arg)
{
	struct fx *f = arg;

	(void)b;
	f->writes++;
}

static void on_event(struct sr_bsock *b, short what, void *arg)
{
	struct fx *f = arg;

	(void)b;
	f->events++;
	f->last_what = what;
	f->last_errno = errno;
}

static void nonblock(int fd)
{
	assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* A connected loopback TCP pair: f->b on one end, f->peer (blocking) the other. */
static void tcp_pair(struct fx *f)
{
	uint16_t port;
	int l = ts_listen_loopback(0, 0, &port), c, a;

	c = ts_connect("127.0.0.1", port);
	assert_true(c >= 0);
	a = accept(l, NULL, NULL);
	assert_true(a >= 0);
	close(l);
	nonblock(a);
	f->peer = c;
	assert_non_null(f->b = sr_bsock_new(f->base, a));
	sr_bsock_setcb(f->b, on_read, on_write, on_event, f);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_non_null(f->base = event_base_new());
	f->peer = -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	sr_bsock_free(f->b);
	if (f->peer >= 0)
		close(f->peer);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void loop_until(struct fx *f, const int *counter, int want)
{
	for (int i = 0; i < 2000 && *counter < want; i++)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(500);
	assert_true(*counter >= want);
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

/* 300 KiB from the peer arrive whole and in order, then its FIN as EOF,
 * once, with reading disabled after it. */
static void test_bytes_arrive_whole_then_eof(void **state)
{
	struct fx *f = *state;
	size_t n = 300 * 1024, got;
	uint8_t *src = malloc(n), *dst = malloc(n);

	assert_non_null(src);
	assert_non_null(dst);
	fill(src, n, 7);
	tcp_pair(f);
	sr_bsock_enable(f->b, EV_READ);
	for (size_t off = 0; off < n;) {
		ssize_t w = send(f->peer, src + off, n - off, MSG_DONTWAIT);
		if (w > 0)
			off += (size_t)w;
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	}
	shutdown(f->peer, SHUT_WR);
	loop_until(f, &f->events, 1);
	got = evbuffer_get_length(sr_bsock_input(f->b));
	assert_int_equal(got, n);
	assert_int_equal(evbuffer_remove(sr_bsock_input(f->b), dst, n), (int)n);
	assert_memory_equal(src, dst, n);
	assert_int_equal(f->events, 1);
	assert_int_equal(f->last_what, SR_BS_READING | SR_BS_EOF);
	for (int i = 0; i < 20; i++)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(f->events, 1); /* reported once */
	free(src);
	free(dst);
}

/* Reads start at 4 KiB and double while each fills; a short read means the
 * socket is empty (drained). A small message is copied into a buffer that
 * fits it rather than a 4 KiB one. */
static void test_read_sizes_follow_the_traffic(void **state)
{
	struct fx *f = *state;
	static uint8_t big[200 * 1024];
	ssize_t n;

	tcp_pair(f);
	assert_int_equal(send(f->peer, "0123456789", 10, 0), 10);
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 10);
	assert_true(sr_bsock_drained(f->b));
	evbuffer_drain(sr_bsock_input(f->b), 10);

	fill(big, sizeof(big), 3);
	assert_int_equal(send(f->peer, big, sizeof(big), 0), (ssize_t)sizeof(big));
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 4096);
	assert_false(sr_bsock_drained(f->b));
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 8192);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 16384); /* still growing */
	/* max is honoured */
	assert_int_equal(sr_bsock_read(f->b, 100), 100);
	/* The rest, as the kernel delivers it; a short read says drained. */
	for (int i = 0; i < 2000 && evbuffer_get_length(sr_bsock_input(f->b)) < sizeof(big); i++) {
		size_t want = sizeof(big) - evbuffer_get_length(sr_bsock_input(f->b));
		n = sr_bsock_read(f->b, SIZE_MAX);
		if (n > 0 && (size_t)n < want && (size_t)n < 4096)
			assert_true(sr_bsock_drained(f->b));
		if (n < 0) {
			assert_int_equal(errno, EAGAIN);
			usleep(1000);
		}
	}
	assert_int_equal(evbuffer_get_length(sr_bsock_input(f->b)), sizeof(big));
	/* Nothing left: EAGAIN, not an end. */
	errno = 0;
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), -1);
	assert_int_equal(errno, EAGAIN);
}

/* After a burst of 16 KiB (a message read as 4 + 8 + 4 KiB), the next read
 * asks for more than that: the next such message takes one recv, which is
 * short and so also says the socket is empty. Likewise for 40 KiB; a small
 * message brings the size down to 4 KiB again. */
static void test_read_size_learns_the_message_size(void **state)
{
	struct fx *f = *state;
	static uint8_t msg[16384], big[40 * 1024];

	fill(msg, sizeof(msg), 7);
	fill(big, sizeof(big), 8);
	tcp_pair(f);
	assert_int_equal(send(f->peer, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 4096);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 8192);
	assert_false(sr_bsock_drained(f->b));
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 4096);
	assert_true(sr_bsock_drained(f->b));
	for (int k = 0; k < 3; k++) {
		assert_int_equal(send(f->peer, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
		usleep(20000);
		assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), (ssize_t)sizeof(msg));
		assert_true(sr_bsock_drained(f->b));
	}
	assert_int_equal(evbuffer_get_length(sr_bsock_input(f->b)), 4 * sizeof(msg));
	/* A bigger message: the hint grows past it, then fits it in one read. */
	for (int k = 0; k < 2; k++) {
		assert_int_equal(send(f->peer, big, sizeof(big), 0), (ssize_t)sizeof(big));
		usleep(20000);
		if (k == 0) {
			assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 32768);
			assert_false(sr_bsock_drained(f->b));
			assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), (ssize_t)sizeof(big) - 32768);
		} else {
			assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), (ssize_t)sizeof(big));
		}
		assert_true(sr_bsock_drained(f->b));
	}
	/* A small message after them: the hint follows it down again. */
	assert_int_equal(send(f->peer, "x", 1, 0), 1);
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 1);
	assert_int_equal(send(f->peer, msg, sizeof(msg), 0), (ssize_t)sizeof(msg));
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 4096);
}

/* read_upto stops at its mark and reads on from there until a short read;
 * the peer's FIN, read after that, is reported through event_cb once. */
static void test_read_upto_stops_at_the_mark(void **state)
{
	struct fx *f = *state;
	static uint8_t big[32 * 1024];

	fill(big, sizeof(big), 5);
	tcp_pair(f);
	assert_int_equal(send(f->peer, big, sizeof(big), 0), (ssize_t)sizeof(big));
	shutdown(f->peer, SHUT_WR);
	usleep(20000);
	assert_int_equal(sr_bsock_read(f->b, SIZE_MAX), 4096); /* as a read event would */
	assert_int_equal(sr_bsock_read_upto(f->b, 10000), 0);
	assert_int_equal(evbuffer_get_length(sr_bsock_input(f->b)), 10000);
	assert_int_equal(sr_bsock_read_upto(f->b, SIZE_MAX), 0);
	assert_true(sr_bsock_drained(f->b));
	assert_int_equal(evbuffer_get_length(sr_bsock_input(f->b)), sizeof(big));
	assert_int_equal(f->events, 0);
	sr_bsock_enable(f->b, EV_READ);
	loop_until(f, &f->events, 1);
	assert_int_equal(f->last_what, SR_BS_READING | SR_BS_EOF);
	assert_int_equal(f->reads, 0);
}

/* The output goes out while writing is enabled, write_cb says when it ran
 * empty, and an enabled socket with nothing to write wakes nobody. */
static void test_write_event_only_while_bytes_wait(void **state)
{
	struct fx *f = *state;
	size_t n = 2 * 1024 * 1024, got = 0;
	uint8_t *src = malloc(n), *dst = malloc(n);

	assert_non_null(src);
	assert_non_null(dst);
	fill(src, n, 11);
	tcp_pair(f);
	nonblock(f->peer);
	assert_int_equal(evbuffer_add(sr_bsock_output(f->b), src, n), 0);
	sr_bsock_enable(f->b, EV_WRITE);
	for (int i = 0; i < 20000 && got < n; i++) {
		ssize_t r = recv(f->peer, dst + got, n - got, 0);
		if (r > 0)
			got += (size_t)r;
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	}
	assert_int_equal(got, n);
	assert_memory_equal(src, dst, n);
	loop_until(f, &f->writes, 1);
	assert_int_equal(f->writes, 1);
	/* Enabled, empty: no wake-up, no callback. */
	sr_bsock_enable(f->b, EV_WRITE);
	for (int i = 0; i < 20; i++)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(f->writes, 1);
	/* Bytes again, enabled again: they go out and write_cb runs again. */
	assert_int_equal(evbuffer_add(sr_bsock_output(f->b), "x", 1), 0);
	sr_bsock_enable(f->b, EV_WRITE);
	loop_until(f, &f->writes, 2);
	assert_int_equal(recv(f->peer, dst, 10, 0), 1);
	free(src);
	free(dst);
}

/* A connect to a port nobody listens on is refused at once on loopback:
 * the refusal still comes as an event, from the loop, with its errno. */
static void test_refused_connect_is_an_event(void **state)
{
	struct fx *f = *state;
	uint16_t port;
	int l = ts_listen_loopback(0, 0, &port);
	struct sockaddr_storage ss = ts_addr("127.0.0.1", port);
	int fd;

	close(l); /* now nobody listens there */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	assert_true(fd >= 0);
	assert_non_null(f->b = sr_bsock_new(f->base, fd));
	sr_bsock_setcb(f->b, on_read, on_write, on_event, f);
	assert_int_equal(sr_bsock_connect(f->b, TS_SA(ss), sizeof(struct sockaddr_in), NULL), 0);
	assert_int_equal(f->events, 0); /* not from inside the call */
	loop_until(f, &f->events, 1);
	assert_int_equal(f->last_what, SR_BS_WRITING | SR_BS_ERROR);
	assert_int_equal(f->last_errno, ECONNREFUSED);
}

/* A connect that completes reports CONNECTED (or says so at once), and
 * bytes queued before it go out after it. */
static void test_connect_then_bytes_flow(void **state)
{
	struct fx *f = *state;
	uint16_t port;
	int l = ts_listen_loopback(0, 0, &port), a, fd, rc;
	struct sockaddr_storage ss = ts_addr("127.0.0.1", port);
	char buf[8];

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	assert_true(fd >= 0);
	assert_non_null(f->b = sr_bsock_new(f->base, fd));
	sr_bsock_setcb(f->b, on_read, on_write, on_event, f);
	assert_int_equal(evbuffer_add(sr_bsock_output(f->b), "hello", 5), 0);
	sr_bsock_enable(f->b, EV_WRITE);
	rc = sr_bsock_connect(f->b, TS_SA(ss), sizeof(struct sockaddr_in), NULL);
	assert_true(rc == 0 || rc == 1);
	if (rc == 0) {
		loop_until(f, &f->events, 1);
		assert_int_equal(f->last_what, SR_BS_CONNECTED);
	}
	sr_bsock_enable(f->b, EV_WRITE);
	loop_until(f, &f->writes, 1);
	a = accept(l, NULL, NULL);
	assert_true(a >= 0);
	assert_int_equal(recv(a, buf, sizeof(buf), 0), 5);
	assert_memory_equal(buf, "hello", 5);
	close(a);
	close(l);
}

/* A connect that gets no answer ends with a timeout event. The listener's
 * accept queue is full, so Linux drops the SYN. */
static void test_silent_connect_times_out(void **state)
{
	struct fx *f = *state;
	uint16_t port;
	int l = ts_listen_loopback(0, 0, &port), fill_fds[8], nfill = 0, fd;
	struct sockaddr_storage ss = ts_addr("127.0.0.1", port);
	struct timeval tv = sr_tv_ms(200);

	assert_int_equal(listen(l, 0), 0);
	/* Fill the accept queue (backlog 0 holds one) with blocking connects
	 * that complete; then a non-blocking one stays in progress. */
	for (int i = 0; i < 8; i++) {
		int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		assert_true(c >= 0);
		fill_fds[nfill++] = c;
		if (connect(c, TS_SA(ss), sizeof(struct sockaddr_in)) != 0 && errno == EINPROGRESS) {
			usleep(20000);
			int err = 0;
			socklen_t len = sizeof(err);
			getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len);
			struct sockaddr_in peer;
			socklen_t plen = sizeof(peer);
			if (getpeername(c, (struct sockaddr *)&peer, &plen) != 0)
				break; /* this one hangs: the queue is full */
		}
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	assert_true(fd >= 0);
	assert_non_null(f->b = sr_bsock_new(f->base, fd));
	sr_bsock_setcb(f->b, on_read, on_write, on_event, f);
	if (sr_bsock_connect(f->b, TS_SA(ss), sizeof(struct sockaddr_in), &tv) != 0)
		skip(); /* the kernel took it after all */
	loop_until(f, &f->events, 1);
	assert_int_equal(f->last_what, SR_BS_WRITING | SR_BS_TIMEOUT);
	for (int i = 0; i < nfill; i++)
		close(fill_fds[i]);
	close(l);
}

/* The owner may free the socket from its read callback while its write
 * event is active in the same loop iteration (ASan checks the rest). */
static void test_free_from_own_callback(void **state)
{
	struct fx *f = *state;
	static uint8_t big[4 << 20];

	tcp_pair(f);
	f->free_in_cb = 1;
	/* More than the socket buffers take: the write event stays armed. */
	assert_int_equal(evbuffer_add(sr_bsock_output(f->b), big, sizeof(big)), 0);
	sr_bsock_enable(f->b, EV_READ | EV_WRITE);
	assert_int_equal(send(f->peer, "ping", 4, 0), 4);
	loop_until(f, &f->reads, 1);
	assert_null(f->b);
	for (int i = 0; i < 20; i++)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	assert_int_equal(f->reads, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_bytes_arrive_whole_then_eof, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_read_sizes_follow_the_traffic, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_read_size_learns_the_message_size, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_read_upto_stops_at_the_mark, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_write_event_only_while_bytes_wait, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_refused_connect_is_an_event, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connect_then_bytes_flow, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_silent_connect_times_out, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_free_from_own_callback, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
