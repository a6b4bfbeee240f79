/* Small helpers shared by every module: addresses, sockets, time, randomness. */
#ifndef SR_UTIL_H
#define SR_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>

#define SR_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
/* A macro's value as a string literal: SR_XSTR(TUN_WIN_ALONE_MAX) is "8". */
#define SR_STR(x) #x
#define SR_XSTR(x) SR_STR(x)
#define SR_ADDRSTRLEN 64 /* "[v6]:port" */

/* Split "host:port", "[v6]:port" or "host" (then *port = default_port).
 * Port 0 is accepted (listen on any port); dialers must refuse it.
 * host is written NUL-terminated into hostbuf. Returns 0 or SR_EINVAL. */
int sr_split_hostport(const char *s, char *hostbuf, size_t hostlen, uint16_t *port,
		      int default_port);

/* Parse a numeric address (no DNS) plus port into ss. Returns 0 or SR_EINVAL. */
int sr_parse_addr(const char *host, uint16_t port, struct sockaddr_storage *ss,
		  socklen_t *len);

/* "1.2.3.4:5" or "[::1]:5" into buf (at least SR_ADDRSTRLEN). Returns buf. */
char *sr_format_addr(const struct sockaddr *sa, char *buf, size_t len);

/* The port of an AF_INET or AF_INET6 address, 0 otherwise. */
uint16_t sr_addr_port(const struct sockaddr *sa);

/* TCP_NODELAY on; every socket of ours carries latency-sensitive RPC. */
void sr_sock_nodelay(int fd);
/* TCP keepalive on: after idle_s without a segment, a probe every intvl_s;
 * cnt unanswered probes end the connection (ETIMEDOUT). For hops with no
 * protocol of their own to notice a peer that vanished without a FIN or
 * RST (a node powered off, a partition). */
void sr_sock_keepalive(int fd, int idle_s, int intvl_s, int cnt);
/* Keep at most `bytes` of unsent data in the kernel for this socket (tunnel
 * sockets): the rest waits in user space, where HTTP/2 can still put a
 * heartbeat ahead of bulk data instead of behind megabytes of send buffer. */
void sr_sock_notsent_lowat(int fd, int bytes);
/* Close so that the peer sees a TCP RST (SO_LINGER 0): carries a reset. */
void sr_sock_set_reset_on_close(int fd);

/* Write as much of buf as the socket takes now, without SIGPIPE (a peer
 * that closed gives EPIPE, not a signal). Drains what was sent. Returns the
 * bytes sent (0 if none: EAGAIN), or -1 with errno set. */
struct evbuffer;
long sr_sock_send_evbuffer(int fd, struct evbuffer *buf);
/* The same, then tail_len bytes of tail behind buf in the same sendmsg, but
 * only when all of buf fits in one call (else tail waits: *tail_sent 0), so
 * tail never overtakes buf. *tail_sent is how much of tail went out. */
long sr_sock_send_evbuffer_tail(int fd, struct evbuffer *buf, const void *tail,
				size_t tail_len, size_t *tail_sent);

/* A timeval of ms milliseconds, for libevent timers. */
struct timeval sr_tv_ms(uint64_t ms);

/* Monotonic clock in microseconds. */
uint64_t sr_now_us(void);

/* Fill buf with cryptographically random bytes. Returns 0 or SR_EIO. */
int sr_random_bytes(void *buf, size_t len);
/* Hex token of 2*nbytes characters (out must hold 2*nbytes+1). */
int sr_random_hex(char *out, size_t nbytes);
/* Uniform in [0, n) from a non-crypto generator (jitter). */
uint32_t sr_rand_below(uint32_t n);
/* The next delay of a retry that backs off: first_ms when *last_ms is 0,
 * else twice *last_ms, at most max_ms; stored in *last_ms (set it to 0
 * after a success) and returned +-25 %, so that peers that failed together
 * do not come back together. */
long sr_backoff(long *last_ms, long first_ms, long max_ms);

/* Raise RLIMIT_NOFILE to its hard limit; returns the soft limit now in force. */
long sr_raise_nofile(void);

/* String equality for secrets whose running time does not depend on where
 * the strings differ nor on whether their lengths match. 1 if equal, 0 if
 * not or if either is NULL. */
int sr_secret_eq(const char *a, const char *b);

#endif
