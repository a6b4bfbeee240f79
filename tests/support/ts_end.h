/* Test support: the two ends of an executor <-> driver connection, played
 * by a test over real TCP sockets on loopback while the code under test
 * carries the bytes between the daemon's sockets (test_resume.c,
 * test_tun_handover.c).
 *
 * Each end sends tx_total bytes of the pattern named tx_seed
 * (ts_pattern.h), then half-closes (shut) or, if reset_at is set, resets
 * the connection once it has sent that many bytes; it reads everything
 * that arrives and checks it against the pattern rx_seed. An exchange is
 * right when every byte each end sent arrived at the other in order,
 * exactly once, a FIN arrived iff one was sent, and a reset arrived as a
 * reset. Nothing blocks: ts_end_service does what the socket allows now,
 * from the test's loop. Helpers that check fail the running cmocka test. */
#ifndef TS_END_H
#define TS_END_H

#include <stdint.h>

struct ts_end {
	int fd;			   /* the test's socket; -1: none, or closed by a reset */
	uint32_t tx_seed, rx_seed; /* the pattern sent / expected */
	uint64_t tx_total, tx;	   /* send tx_total bytes (tx so far), then FIN if shut */
	int shut, shut_done;
	uint64_t reset_at; /* reset (RST) once this many are sent; 0: never */
	int reset_done;
	uint64_t rx;  /* bytes received */
	int64_t bad;  /* offset of the first wrong byte received, -1: none */
	int eof, err; /* FIN received; errno of the socket's first error */
	int no_read;  /* reads nothing (a driver that stopped reading) */
};

/* All zero, no socket, no wrong byte. */
void ts_end_init(struct ts_end *e);
/* Send what the socket takes now, reset or half-close when due, read and
 * check what arrived. A no-op without a socket. */
void ts_end_service(struct ts_end *e);
/* Close the socket if it is still open (the end of a test). */
void ts_end_close(struct ts_end *e);

/* 1 once the exchange between executor ex and driver dr is over: both FINs
 * sent and received, or, with a reset at either end, each end reset, failed
 * or saw the end. */
int ts_end_pair_done(const struct ts_end *ex, const struct ts_end *dr);
/* Fails the test, naming seed, flow and cuts, unless the exchange went
 * right (see above); call once ts_end_pair_done. */
void ts_end_pair_check(const struct ts_end *ex, const struct ts_end *dr, uint64_t seed,
		       int flow, uint64_t cuts);
/* One line of where the exchange stands (cmocka's print_message), for a
 * test that gives up waiting. */
void ts_end_pair_print(const struct ts_end *ex, const struct ts_end *dr, int flow);

/* A connected TCP pair through lfd, a blocking listener on 127.0.0.1:lport
 * (ts_listen_loopback): *a, the test's end, and *b, the daemon's, both
 * non-blocking with TCP_NODELAY. */
void ts_end_tcp_pair(int lfd, uint16_t lport, int *a, int *b);

#endif
