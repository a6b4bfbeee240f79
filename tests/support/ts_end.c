#include "tests/support/ts_end.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sr_util.h"
#include "tests/support/ts_pattern.h"

#define TS_END_IOB (64 * 1024)

void ts_end_init(struct ts_end *e)
{
	memset(e, 0, sizeof(*e));
	e->fd = -1;
	e->bad = -1;
}

void ts_end_service(struct ts_end *e)
{
	uint8_t buf[TS_END_IOB];

	if (e->fd < 0)
		return;
	while (!e->reset_done && !e->err && e->tx < e->tx_total) {
		uint64_t lim = e->reset_at ? e->reset_at : e->tx_total;
		size_t n = lim - e->tx < sizeof(buf) ? (size_t)(lim - e->tx) : sizeof(buf);
		ssize_t w;
		if (n == 0)
			break;
		ts_pat_fill(e->tx_seed, e->tx, buf, n);
		w = send(e->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w <= 0) {
			if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				e->err = errno;
			break;
		}
		e->tx += (uint64_t)w;
	}
	if (e->reset_at && !e->reset_done && e->tx >= e->reset_at) {
		sr_sock_set_reset_on_close(e->fd);
		close(e->fd);
		e->fd = -1;
		e->reset_done = 1;
		return;
	}
	if (e->shut && !e->shut_done && e->tx == e->tx_total) {
		shutdown(e->fd, SHUT_WR);
		e->shut_done = 1;
	}
	while (!e->eof && !e->err && !e->no_read) {
		ssize_t r = recv(e->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r > 0) {
			long i =
			    e->bad < 0 ? ts_pat_check(e->rx_seed, e->rx, buf, (size_t)r) : -1;
			if (i >= 0)
				e->bad = (int64_t)(e->rx + (uint64_t)i);
			e->rx += (uint64_t)r;
		} else if (r == 0) {
			e->eof = 1;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			break;
		} else {
			e->err = errno;
		}
	}
}

void ts_end_close(struct ts_end *e)
{
	if (e->fd >= 0)
		close(e->fd);
	e->fd = -1;
}

int ts_end_pair_done(const struct ts_end *ex, const struct ts_end *dr)
{
	if (ex->reset_at || dr->reset_at)
		return (ex->reset_done || ex->err || ex->eof) &&
		       (dr->reset_done || dr->err || dr->eof);
	return ex->eof && dr->eof && ex->shut_done && dr->shut_done;
}

void ts_end_pair_check(const struct ts_end *ex, const struct ts_end *dr, uint64_t seed,
		       int flow, uint64_t cuts)
{
	if (ex->bad >= 0 || dr->bad >= 0)
		fail_msg("seed %llu flow %d: wrong byte at %lld (executor) / %lld (driver)",
			 (unsigned long long)seed, flow, (long long)ex->bad,
			 (long long)dr->bad);
	if (ex->reset_at || dr->reset_at) {
		/* What arrived before the reset is a prefix of what was sent,
		 * and the other end saw the reset, not a clean end. */
		assert_true(dr->rx <= ex->tx);
		assert_true(ex->rx <= dr->tx);
		if ((ex->reset_at && !(dr->err == ECONNRESET || dr->err == EPIPE)) ||
		    (dr->reset_at && !(ex->err == ECONNRESET || ex->err == EPIPE)))
			fail_msg("seed %llu flow %d: a reset arrived as %s (executor err %d "
				 "eof %d, driver err %d eof %d, cuts %llu)",
				 (unsigned long long)seed, flow,
				 (ex->reset_at ? dr->eof : ex->eof) ? "a clean end" : "nothing",
				 ex->err, ex->eof, dr->err, dr->eof, (unsigned long long)cuts);
		return;
	}
	if (dr->rx != ex->tx_total || ex->rx != dr->tx_total)
		fail_msg("seed %llu flow %d: driver got %llu of %llu, executor %llu of %llu "
			 "(cuts %llu)",
			 (unsigned long long)seed, flow, (unsigned long long)dr->rx,
			 (unsigned long long)ex->tx_total, (unsigned long long)ex->rx,
			 (unsigned long long)dr->tx_total, (unsigned long long)cuts);
	assert_int_equal(ex->err, 0);
	assert_int_equal(dr->err, 0);
}

void ts_end_pair_print(const struct ts_end *ex, const struct ts_end *dr, int flow)
{
	print_message("flow %d: ex tx %llu/%llu rx %llu eof %d err %d rst %llu "
		      "| dr tx %llu/%llu rx %llu eof %d err %d rst %llu\n",
		      flow, (unsigned long long)ex->tx, (unsigned long long)ex->tx_total,
		      (unsigned long long)ex->rx, ex->eof, ex->err,
		      (unsigned long long)ex->reset_at, (unsigned long long)dr->tx,
		      (unsigned long long)dr->tx_total, (unsigned long long)dr->rx, dr->eof,
		      dr->err, (unsigned long long)dr->reset_at);
}

void ts_end_tcp_pair(int lfd, uint16_t lport, int *a, int *b)
{
	struct sockaddr_in sa;
	int one = 1;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons(lport);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	*a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(*a >= 0);
	assert_int_equal(connect(*a, (struct sockaddr *)&sa, sizeof(sa)), 0);
	*b = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(*b >= 0);
	assert_int_equal(fcntl(*a, F_SETFL, fcntl(*a, F_GETFL) | O_NONBLOCK), 0);
	setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
