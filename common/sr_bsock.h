/* A buffered stream socket on two plain libevent events: an input and an
 * output evbuffer, a read and a write event, three callbacks. It is the part
 * of libevent's bufferevent_socket that the tunnel's executor and driver
 * sockets use, and no more:
 *  - 624 bytes per socket against a bufferevent's 976 (no locks, rate
 *    limits, deferred callbacks or watermarks), which counts per idle
 *    executor connection;
 *  - a read is one recv into the input, sized from the last one, where a
 *    bufferevent asks the kernel first (an ioctl per read) and reads at most
 *    4 KiB per wake-up;
 *  - neither buffer is frozen, so the owner may read into the input or send
 *    from the output itself (tun_stream.c does both on its fast paths).
 *
 * The semantics the owner relies on are a bufferevent's: reading, once
 * enabled, calls read_cb after bytes were added to the input; writing, once
 * enabled, writes the output whenever the socket takes it and calls write_cb
 * when the output ran empty; EOF or an error disables reading (or both) and
 * calls event_cb. Unlike a bufferevent, bytes added to the output do not arm
 * the write event by themselves: the owner calls sr_bsock_enable(EV_WRITE)
 * after adding them (an evbuffer callback for that would cost 48 bytes per
 * socket and a call per add). And the struct is freed at once
 * by sr_bsock_free, even from inside its own callback: a callback that may
 * free the socket must not touch it afterwards (none of ours does). */
#ifndef SR_BSOCK_H
#define SR_BSOCK_H

#include <stddef.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <sys/types.h>

struct event_base;
struct evbuffer;
struct sr_bsock;

/* event_cb's `what`: what happened, and while doing what. */
#define SR_BS_READING 0x01
#define SR_BS_WRITING 0x02
#define SR_BS_EOF 0x10
#define SR_BS_ERROR 0x20 /* errno holds the error */
#define SR_BS_TIMEOUT 0x40
#define SR_BS_CONNECTED 0x80

/* The largest single read (sr_bsock_read, and a read event's own). With
 * libevent's chain header its chain is a 128 KiB allocation; 64 KiB less
 * the header would take half, from the heap, where a burst's chains stayed
 * as holes (a relay's RSS stayed 2.6 MiB up after 50 held streams ended). */
#define SR_BS_READ_MAX (64 * 1024)

typedef void (*sr_bsock_data_cb)(struct sr_bsock *b, void *arg);
typedef void (*sr_bsock_event_cb)(struct sr_bsock *b, short what, void *arg);

/* Takes fd (non-blocking) in every case: it is closed on failure and by
 * sr_bsock_free. Neither reading nor writing is enabled. NULL: no memory. */
struct sr_bsock *sr_bsock_new(struct event_base *base, int fd);
/* Closes the socket and frees both buffers (references in the output are
 * released). NULL is ignored. */
void sr_bsock_free(struct sr_bsock *b);

void sr_bsock_setcb(struct sr_bsock *b, sr_bsock_data_cb read_cb, sr_bsock_data_cb write_cb,
		    sr_bsock_event_cb event_cb, void *arg);
/* EV_READ and/or EV_WRITE. Enabling EV_WRITE arms the write event only while
 * the output holds bytes: call it again after adding to the output. */
void sr_bsock_enable(struct sr_bsock *b, short what);
void sr_bsock_disable(struct sr_bsock *b, short what);

struct evbuffer *sr_bsock_input(const struct sr_bsock *b);
struct evbuffer *sr_bsock_output(const struct sr_bsock *b);
int sr_bsock_fd(const struct sr_bsock *b);

/* fd's non-blocking connect is in progress: event_cb gets SR_BS_CONNECTED
 * once it completes, SR_BS_WRITING|SR_BS_ERROR (errno set) if it fails, or
 * SR_BS_WRITING|SR_BS_TIMEOUT after timeout (NULL: none). Returns 0 or -1. */
int sr_bsock_connecting(struct sr_bsock *b, const struct timeval *timeout);

/* Connects fd to sa: 1 if connected at once (no event follows), else 0 and
 * the outcome comes as for sr_bsock_connecting, a refusal included. -1 and
 * errno if the connect could not be started. */
int sr_bsock_connect(struct sr_bsock *b, const struct sockaddr *sa, socklen_t salen,
		     const struct timeval *timeout);

/* While reading is enabled: what a read event does, now (a read, then
 * read_cb or event_cb; nothing if no bytes wait). */
void sr_bsock_read_now(struct sr_bsock *b);

/* One recv of at most max bytes into the input, without callbacks: the
 * number read, 0 at end of file, or -1 with errno (EAGAIN: nothing waits).
 * Its size follows the last burst (the bytes read since the socket was last
 * empty): the power of two above it, at least 4 KiB, so a peer that writes
 * messages of one size costs one recv per message. A small message right
 * after a big one lands in a chain of the big one's size, held until the
 * input is drained (for a tunnel stream: until the peer acknowledges it). */
ssize_t sr_bsock_read(struct sr_bsock *b, size_t max);
/* More reads, while each fills what it asks for and the input holds less
 * than upto bytes (16 at most: the loop has other sockets). An end or an
 * error disables reading and goes to event_cb, and -1 comes back (b may be
 * freed by then); else 0. */
int sr_bsock_read_upto(struct sr_bsock *b, size_t upto);
/* The last read took less than it asked for: the socket was empty then, and
 * reading again before the next read event finds nothing. */
int sr_bsock_drained(const struct sr_bsock *b);

#endif
