/* Two TCP sockets joined in the kernel: what one receives the other sends,
 * both ways, through splice(2) and one pipe per direction, so no byte is
 * copied to user space. Driven by libevent, non-blocking.
 *
 * - Backpressure: a side is read only while its direction's pipe has room;
 *   memory is bounded by two pipes (pipe_bytes each) whatever the peers do.
 * - Half-close: EOF from one side becomes shutdown(SHUT_WR) of the other once
 *   its pipe is drained; the other direction keeps flowing. When both
 *   directions have ended so, both sockets are closed: FLEET_SPLICE_DONE.
 * - Reset: a reset or error on either side (seen by a read, or by a write
 *   into it) closes the other with a reset (SO_LINGER 0) and drops what is
 *   in the pipes: FLEET_SPLICE_RESET. A reset that arrives after a side's
 *   FIN is seen when the other direction next writes into it, as in TCP.
 * - Connecting: fleet_splice_connect dials b itself (timeout, then writes a
 *   prefix, e.g. a fleet/peer.h header, ahead of a's bytes). Until a byte has
 *   moved either way, a failure leaves a untouched and reports
 *   FLEET_SPLICE_UNREACHED, so the caller can dial another peer. After a
 *   byte moved, a failure ends both.
 *
 * splice(2) into a socket whose peer is gone raises SIGPIPE (it takes no
 * MSG_NOSIGNAL): the process must ignore SIGPIPE, as sparkrelay does.
 *
 * TCP sockets splice on every Linux kernel this project runs on (2.6.25
 * on), so there is no copy loop to fall back to: a socket that cannot
 * splice (EINVAL) ends the pair as an error. Each pair holds two sockets and
 * four pipe descriptors. Pipes count against fs.pipe-user-pages-soft (per
 * user; 512 pairs of 64 KiB pipes by default): past it the kernel gives an
 * unprivileged user's new pipes two pages, which still works, slower. */
#ifndef FLEET_SPLICE_H
#define FLEET_SPLICE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;

#define FLEET_SPLICE_CONNECT_TIMEOUT_MS 1000
#define FLEET_SPLICE_PIPE_BYTES (64 * 1024)
#define FLEET_SPLICE_PREFIX_MAX 512

struct fleet_splice;

enum fleet_splice_end {
	/* b was not reached (connect refused, failed or timed out), or hung up
	 * before any byte moved: b is closed, a is untouched and still the
	 * pair's. The caller may fleet_splice_connect again, or
	 * fleet_splice_take a back, or fleet_splice_free (resets a). */
	FLEET_SPLICE_UNREACHED = 1,
	/* Both directions ended by FIN; both sockets are closed. */
	FLEET_SPLICE_DONE,
	/* One side reset or failed; the other was reset; both are closed. */
	FLEET_SPLICE_RESET,
};

/* TCP keepalive of the socket fleet_splice_connect dials (the listener
 * that accepts it sets the same, fleet/peer.c): a relay whose node vanished
 * without a FIN or RST while the hop was idle is noticed after 30 s idle +
 * 3 x 10 s (sr_sock_keepalive), instead of the pair holding the carried
 * executor's connection, six descriptors and its lease's connection slot
 * for ever. With bytes in flight, TCP's retransmission limit ends it instead
 * (net.ipv4.tcp_retries2: about 15 minutes by default). No TCP_USER_TIMEOUT:
 * it would also end a hop whose receiver keeps its window shut that long (a
 * driver in a long GC pause), which is alive. */
#define FLEET_SPLICE_KEEPIDLE_S 30
#define FLEET_SPLICE_KEEPINTVL_S 10
#define FLEET_SPLICE_KEEPCNT 3

struct fleet_splice_opts {
	uint32_t connect_timeout_ms; /* 0: FLEET_SPLICE_CONNECT_TIMEOUT_MS */
	uint32_t pipe_bytes;	     /* per direction; 0: FLEET_SPLICE_PIPE_BYTES */
};

/* Called once per connect (UNREACHED) or at the end (DONE, RESET), always
 * from an event of the pair, never from inside a fleet_splice_* call. err:
 * 0 for DONE; SR_ETIMEDOUT (connect timeout), SR_EIO (connect failed, socket
 * error), SR_ECLOSED (a side reset, or b hung up before a byte moved) or
 * SR_EINVAL (a socket that cannot splice). The callback may free sp, or
 * after UNREACHED connect it again. */
typedef void (*fleet_splice_cb)(struct fleet_splice *sp, enum fleet_splice_end end, int err,
				void *arg);

/* A pair for the connected, non-blocking TCP socket a (its options are left
 * as they are). On success the pair owns a; on NULL (SR_ENOMEM, or no pipe:
 * EMFILE) the caller still does. o may be NULL. */
struct fleet_splice *fleet_splice_new(struct event_base *base, int a,
				      const struct fleet_splice_opts *o, fleet_splice_cb cb,
				      void *arg);

/* Dial peer (non-blocking, TCP_NODELAY, keepalive, at most connect_timeout_ms), write
 * prefix[0..plen) (copied; may be empty) and splice. The outcome comes to
 * the callback. Returns 0, or SR_EINVAL (plen over FLEET_SPLICE_PREFIX_MAX,
 * or the pair is not idle: it was started or is connecting). */
int fleet_splice_connect(struct fleet_splice *sp, const struct sockaddr *peer, socklen_t len,
			 const void *prefix, size_t plen);

/* Splice a with the connected, non-blocking socket b, which the pair then
 * owns. Returns 0, SR_EINVAL (the pair is not idle) or SR_ENOMEM; on an
 * error b stays the caller's. */
int fleet_splice_start(struct fleet_splice *sp, int b);

/* Bytes moved so far from a to b and from b to a (either may be NULL). */
void fleet_splice_bytes(const struct fleet_splice *sp, uint64_t *a_to_b, uint64_t *b_to_a);

/* Hands a back and frees the pair: only while idle (never started, or after
 * FLEET_SPLICE_UNREACHED). Returns a, or -1 (nothing changed) otherwise. */
int fleet_splice_take(struct fleet_splice *sp);

/* Frees the pair; a socket still open is closed with a reset. NULL does
 * nothing. */
void fleet_splice_free(struct fleet_splice *sp);

/* Live handover: a running pair moves to another process with its two
 * sockets and its two pipes (whatever bytes are in them). */
struct fleet_splice_state {
	int a, b;
	int pipe[2][2];	  /* per direction (0: a -> b): read end, write end */
	size_t inpipe[2]; /* bytes in each pipe */
	int eof[2], shut[2];
	uint64_t bytes[2];
	int moved;
};
/* Stop moving bytes (on: no read, write or timeout) or go on. */
void fleet_splice_pause(struct fleet_splice *sp, int on);
/* A paused pair that runs (connected, its prefix written): st gets its
 * state, the descriptors still the pair's. 0, or SR_EINVAL. */
int fleet_splice_export(const struct fleet_splice *sp, struct fleet_splice_state *st);
/* Free the pair closing its descriptors as they are, with no reset or
 * shutdown: another process owns the connections. NULL does nothing. */
void fleet_splice_forget(struct fleet_splice *sp);
/* A running pair from st (descriptors stolen in every case; closed when it
 * returns NULL), paused if paused is set. */
struct fleet_splice *fleet_splice_adopt(struct event_base *base,
					const struct fleet_splice_state *st, int paused,
					const struct fleet_splice_opts *o, fleet_splice_cb cb,
					void *arg);

#endif
