/* arc4random and arc4random_buf for the static build (packaging/static.cmake).
 *
 * Debian 12's libevent.a was configured against glibc 2.36, found arc4random
 * there, and calls it for evdns transaction ids (evutil_secure_rng_get_bytes).
 * That one reference would make the self-contained binary need glibc 2.36;
 * everything else it links needs at most 2.34. Defined here, in the program
 * itself, the link resolves libevent's calls to these instead of libc's, and
 * the binary runs on glibc 2.34 (Ubuntu 22.04, RHEL 9, Amazon Linux 2023).
 *
 * Same contract as glibc's: fills the buffer from the kernel's CSPRNG
 * (getrandom(2), /dev/urandom where the kernel lacks it) and never returns
 * without doing so: no entropy at all ends the process, as glibc does. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>

static void no_entropy(void)
{
	fputs("sparkrelay: fatal: cannot get random bytes from the kernel\n", stderr);
	abort();
}

static void from_urandom(unsigned char *p, size_t n)
{
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		no_entropy();
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			no_entropy();
		p += r;
		n -= (size_t)r;
	}
	close(fd);
}

void arc4random_buf(void *buf, size_t n)
{
	unsigned char *p = buf;

	while (n > 0) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == ENOSYS) {
			from_urandom(p, n);
			return;
		}
		if (r <= 0)
			no_entropy();
		p += r;
		n -= (size_t)r;
	}
}

uint32_t arc4random(void)
{
	uint32_t v;

	arc4random_buf(&v, sizeof(v));
	return v;
}
