#include "tests/support/ts_net.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "common/sr_util.h"

struct sockaddr_storage ts_addr(const char *numeric, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len;

	if (sr_parse_addr(numeric, port, &ss, &len) != 0)
		fail_msg("test address %s does not parse", numeric);
	return ss;
}

static int bound_loopback(int type, int nonblock, uint16_t *port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, type | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);

	assert_true(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	*port = ts_local_port(fd);
	return fd;
}

int ts_listen_loopback(int bufsz, int nonblock, uint16_t *port)
{
	struct sockaddr_in a;
	int one = 1;
	int fd =
	    socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bufsz > 0) {
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz)),
				 0);
		assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz)),
				 0);
	}
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 256), 0);
	*port = ts_local_port(fd);
	return fd;
}

int ts_udp_loopback(int nonblock, uint16_t *port)
{
	return bound_loopback(SOCK_DGRAM, nonblock, port);
}

uint16_t ts_local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	assert_true(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
	return sr_addr_port((struct sockaddr *)&ss);
}

int ts_connect(const char *host, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, err;

	if (sr_parse_addr(host, port, &ss, &len) != 0)
		return -EINVAL;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
		err = errno;
		close(fd);
		return -err;
	}
	return fd;
}

void ts_socketpair_nb(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv),
			 0);
}

int ts_port_free(const char *host, uint16_t port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1, ok;

	if (sr_parse_addr(host, port, &ss, &len) != 0)
		return 0;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ok = bind(fd, (struct sockaddr *)&ss, len) == 0;
	close(fd);
	return ok;
}

uint16_t ts_pick_port_range(const char *host, uint16_t n)
{
	assert_true(n > 0 && n < 12000);
	for (int attempt = 0; attempt < 50; attempt++) {
		/* below the ephemeral range (32768+), where client sockets come and go */
		uint16_t b = (uint16_t)(20000 + sr_rand_below(12000u - n));
		int ok = 1;

		for (uint16_t i = 0; i < n && ok; i++)
			ok = ts_port_free(host, (uint16_t)(b + i));
		if (ok)
			return b;
	}
	fail_msg("no free range of %u ports found on %s", n, host);
	return 0;
}

int ts_have_ipv6_loopback(void)
{
	struct sockaddr_in6 sa;
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;

	if (fd < 0)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sin6_family = AF_INET6;
	sa.sin6_addr = in6addr_loopback;
	ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}
