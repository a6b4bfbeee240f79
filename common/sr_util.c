#include "common/sr_util.h"
#include "common/sr_err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <event2/buffer.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

int sr_split_hostport(const char *s, char *hostbuf, size_t hostlen, uint16_t *port,
		      int default_port)
{
	const char *colon = NULL, *hs = s, *he;
	char *end;
	long p;

	if (!s || !*s)
		return SR_EINVAL;
	if (*s == '[') {
		he = strchr(s, ']');
		if (!he)
			return SR_EINVAL;
		hs = s + 1;
		if (he[1] == ':')
			colon = he + 1;
		else if (he[1] != '\0')
			return SR_EINVAL;
	} else {
		colon = strrchr(s, ':');
		if (colon && strchr(s, ':') != colon)
			return SR_EINVAL; /* bare IPv6 needs brackets */
		he = colon ? colon : s + strlen(s);
	}
	if (he == hs || (size_t)(he - hs) >= hostlen)
		return SR_EINVAL;
	memcpy(hostbuf, hs, (size_t)(he - hs));
	hostbuf[he - hs] = '\0';
	if (!colon) {
		if (default_port <= 0)
			return SR_EINVAL;
		*port = (uint16_t)default_port;
		return 0;
	}
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || p < 0 || p > 65535)
		return SR_EINVAL;
	*port = (uint16_t)p;
	return 0;
}

int sr_parse_addr(const char *host, uint16_t port, struct sockaddr_storage *ss,
		  socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return 0;
	}
	return SR_EINVAL;
}

char *sr_format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in4->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, len, "?");
	}
	return buf;
}

uint16_t sr_addr_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return 0;
}

void sr_sock_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void sr_sock_keepalive(int fd, int idle_s, int intvl_s, int cnt)
{
	int one = 1;

	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl_s, sizeof(intvl_s));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

void sr_sock_notsent_lowat(int fd, int bytes)
{
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &bytes, sizeof(bytes));
}

void sr_sock_set_reset_on_close(int fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

#define SEND_VECS 32
#define SEND_MAX (1 << 20) /* bytes peeked for one sendmsg */

long sr_sock_send_evbuffer_tail(int fd, struct evbuffer *buf, const void *tail,
				size_t tail_len, size_t *tail_sent)
{
	struct evbuffer_iovec v[SEND_VECS + 1];
	struct msghdr mh;
	size_t have = evbuffer_get_length(buf), from_buf;
	/* With a length evbuffer_peek counts every chain that length needs,
	 * past the vectors given (with -1 it would stop at SEND_VECS). */
	int n = have ? evbuffer_peek(buf, have < SEND_MAX ? (ev_ssize_t)have : SEND_MAX, NULL, v,
				     SEND_VECS)
		     : 0;
	int with_tail = tail_len > 0 && have <= SEND_MAX && n >= 0 && n <= SEND_VECS;
	ssize_t w;

	if (tail_sent)
		*tail_sent = 0;
	if (n < 0)
		n = 0;
	if (n > SEND_VECS)
		n = SEND_VECS;
	if (with_tail) {
		v[n].iov_base = (void *)tail;
		v[n].iov_len = tail_len;
		n++;
	}
	if (n == 0)
		return 0;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = (struct iovec *)v; /* evbuffer_iovec matches struct iovec on POSIX */
	mh.msg_iovlen = (size_t)n;
	w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (w < 0)
		return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
	from_buf = (size_t)w < have ? (size_t)w : have;
	evbuffer_drain(buf, from_buf);
	if (with_tail && tail_sent)
		*tail_sent = (size_t)w - from_buf;
	return (long)w;
}

long sr_sock_send_evbuffer(int fd, struct evbuffer *buf)
{
	return sr_sock_send_evbuffer_tail(fd, buf, NULL, 0, NULL);
}

uint64_t sr_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct timeval sr_tv_ms(uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)((ms % 1000u) * 1000u)};
	return tv;
}

int sr_random_bytes(void *buf, size_t len)
{
	return RAND_bytes(buf, (int)len) == 1 ? 0 : SR_EIO;
}

int sr_random_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[64];

	if (nbytes > sizeof(raw) || sr_random_bytes(raw, nbytes) != 0)
		return SR_EINVAL;
	for (size_t i = 0; i < nbytes; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[2 * nbytes] = '\0';
	return 0;
}

long sr_backoff(long *last_ms, long first_ms, long max_ms)
{
	long ms = *last_ms > 0 ? *last_ms * 2 : first_ms;

	if (ms > max_ms)
		ms = max_ms;
	*last_ms = ms;
	return ms - ms / 4 + (long)sr_rand_below((uint32_t)(ms / 2 + 1));
}

uint32_t sr_rand_below(uint32_t n)
{
	static uint64_t state;
	if (n == 0)
		return 0;
	if (state == 0 && sr_random_bytes(&state, sizeof(state)) != 0)
		state = sr_now_us() | 1;
	/* xorshift64*: jitter only, never secrets. */
	state ^= state >> 12;
	state ^= state << 25;
	state ^= state >> 27;
	return (uint32_t)(((state * 2685821657736338717ull) >> 32) % n);
}

long sr_raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return -1;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
		(void)getrlimit(RLIMIT_NOFILE, &rl);
	}
	return (long)rl.rlim_cur;
}

/* Compares SHA-256 digests, not the strings: CRYPTO_memcmp needs equal
 * lengths, and returning early on a length mismatch would tell a caller
 * who times the answer how long the secret is. Hashing costs time in
 * proportion to each input's own length only. */
int sr_secret_eq(const char *a, const char *b)
{
	unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
	int eq;

	if (!a || !b)
		return 0;
	SHA256((const unsigned char *)a, strlen(a), da);
	SHA256((const unsigned char *)b, strlen(b), db);
	eq = CRYPTO_memcmp(da, db, sizeof(da)) == 0;
	OPENSSL_cleanse(da, sizeof(da));
	OPENSSL_cleanse(db, sizeof(db));
	return eq;
}
