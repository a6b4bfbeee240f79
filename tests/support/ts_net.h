/* Test support: loopback sockets and socket addresses. Every helper fails
 * the running cmocka test on error, except where a return says otherwise. */
#ifndef TS_NET_H
#define TS_NET_H

#include <stdint.h>
#include <sys/socket.h>

/* A numeric IPv4 or IPv6 address with a port (the test fails if it does
 * not parse). */
struct sockaddr_storage ts_addr(const char *numeric, uint16_t port);
#define TS_SA(ss) ((const struct sockaddr *)&(ss))

/* A listening TCP socket on 127.0.0.1, port chosen by the kernel (*port).
 * bufsz > 0 sets SO_SNDBUF and SO_RCVBUF, which accepted sockets inherit. */
int ts_listen_loopback(int bufsz, int nonblock, uint16_t *port);
/* A bound UDP socket on 127.0.0.1, port chosen by the kernel (*port). */
int ts_udp_loopback(int nonblock, uint16_t *port);
/* The local port of a bound AF_INET or AF_INET6 socket. */
uint16_t ts_local_port(int fd);
/* Blocking connect to a numeric host; returns the fd or -errno. A listener
 * completes the handshake from its backlog, so no event loop needs to run. */
int ts_connect(const char *host, uint16_t port);
/* A non-blocking AF_UNIX stream pair. */
void ts_socketpair_nb(int sv[2]);

/* 1 if a TCP socket could bind host:port right now (SO_REUSEADDR), else 0. */
int ts_port_free(const char *host, uint16_t port);
/* The first of n consecutive ports in 20000..31999 that are all free now,
 * picked at random so that parallel tests rarely collide. */
uint16_t ts_pick_port_range(const char *host, uint16_t n);
/* 1 if ::1 can be bound here (IPv6 tests skip otherwise). */
int ts_have_ipv6_loopback(void);

#endif
