/* A buffered stream socket on plain libevent events (see sr_bsock.h). */
#include "common/sr_bsock.h"
#include "common/sr_util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

/* The first read of a connection, and of any after a short one. Reads up
 * to this size go through the stack (sr_bsock_read); larger ones go straight
 * into the input, in powers of two up to SR_BS_READ_MAX. */
#define BS_READ_MIN 4096

enum {
	BS_RD_ON = 1 << 0,      /* reading enabled */
	BS_WR_ON = 1 << 1,      /* writing enabled */
	BS_WR_ARMED = 1 << 2,   /* the write event is pending */
	BS_CONNECTING = 1 << 3, /* a connect is in progress */
	BS_DRAINED = 1 << 4,    /* the last read was short */
};

struct sr_bsock {
	struct event rd, wr;
	struct evbuffer *in, *out;
	sr_bsock_data_cb read_cb, write_cb;
	sr_bsock_event_cb event_cb;
	void *arg;
	int fd;
	int conn_err;       /* a connect that failed at once, reported later */
	uint32_t read_hint; /* the next read's size */
	uint32_t burst;     /* bytes of full reads since the socket was last empty */
	uint8_t flags;
};

static void wr_arm(struct sr_bsock *b, const struct timeval *tv)
{
	if (!(b->flags & BS_WR_ARMED) && event_add(&b->wr, tv) == 0)
		b->flags |= BS_WR_ARMED;
}

static void wr_disarm(struct sr_bsock *b)
{
	if (b->flags & BS_WR_ARMED) {
		event_del(&b->wr);
		b->flags &= (uint8_t)~BS_WR_ARMED;
	}
}

ssize_t sr_bsock_read(struct sr_bsock *b, size_t max)
{
	struct evbuffer_iovec v;
	/* A small read goes through the stack and is copied: the chain then
	 * fits the bytes (an idle connection's few bytes in a 4 KiB chain cost
	 * 0.2 KiB of RSS per connection in the idle bench, from the holes). */
	int small = b->read_hint <= BS_READ_MIN;
	size_t want = b->read_hint;
	char buf[BS_READ_MIN];
	ssize_t n;

	if (want > max)
		want = max;
	if (want == 0) {
		errno = EAGAIN;
		return -1;
	}
	if (!small && evbuffer_reserve_space(b->in, (ev_ssize_t)want, &v, 1) < 1) {
		errno = ENOMEM;
		return -1;
	}
	n = recv(b->fd, small ? buf : v.iov_base, want, 0);
	if (n <= 0) {
		b->flags |= BS_DRAINED;
		b->burst = 0;
		return n;
	}
	if (small) {
		if (evbuffer_add(b->in, buf, (size_t)n) != 0) {
			errno = ENOMEM;
			return -1;
		}
	} else {
		v.iov_len = (size_t)n;
		evbuffer_commit_space(b->in, &v, 1);
	}
	if ((size_t)n == want) {
		b->flags &= (uint8_t)~BS_DRAINED;
		if (b->burst < SR_BS_READ_MAX)
			b->burst += (uint32_t)n;
		if (want == b->read_hint && b->read_hint < SR_BS_READ_MAX)
			b->read_hint *= 2;
	} else {
		/* Short: the socket is empty. The next read asks for more than
		 * the whole burst got (a power of two, at least BS_READ_MIN): a
		 * peer that writes 16 KiB messages gets one recv per message, not
		 * 4 + 8 + 4 KiB, and a short one says the socket is empty. */
		size_t total = (size_t)b->burst + (size_t)n;
		uint32_t h = BS_READ_MIN;
		while (h <= total && h < SR_BS_READ_MAX)
			h *= 2;
		b->read_hint = h;
		b->burst = 0;
		b->flags |= BS_DRAINED;
	}
	return n;
}

int sr_bsock_drained(const struct sr_bsock *b)
{
	return (b->flags & BS_DRAINED) != 0;
}

/* A read that returned n <= 0: nothing (0 back), or an end or error that
 * disables reading and goes to event_cb (-1 back: b may be freed). */
static int read_ended(struct sr_bsock *b, ssize_t n)
{
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return 0;
	sr_bsock_disable(b, EV_READ);
	if (b->event_cb)
		b->event_cb(b, (short)(SR_BS_READING | (n == 0 ? SR_BS_EOF : SR_BS_ERROR)), b->arg);
	return -1;
}

int sr_bsock_read_upto(struct sr_bsock *b, size_t upto)
{
	for (int i = 0; i < 16 && !sr_bsock_drained(b); i++) {
		size_t len = evbuffer_get_length(b->in);
		ssize_t n;

		if (len >= upto)
			return 0;
		n = sr_bsock_read(b, upto - len);
		if (n <= 0)
			return read_ended(b, n);
	}
	return 0;
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct sr_bsock *b = arg;
	ssize_t n = sr_bsock_read(b, SR_BS_READ_MAX);

	(void)fd;
	(void)what;
	if (n <= 0) {
		(void)read_ended(b, n);
		return;
	}
	if (b->read_cb)
		b->read_cb(b, b->arg);
}

void sr_bsock_read_now(struct sr_bsock *b)
{
	if (b->flags & BS_RD_ON)
		on_read(b->fd, EV_READ, b);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
	struct sr_bsock *b = arg;
	long w;

	if (what & EV_TIMEOUT) {
		sr_bsock_disable(b, EV_READ | EV_WRITE);
		if (b->event_cb)
			b->event_cb(b, SR_BS_WRITING | SR_BS_TIMEOUT, b->arg);
		return;
	}
	if (b->flags & BS_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof(err);

		if (b->conn_err)
			err = b->conn_err;
		else if (getsockopt((int)fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
			err = errno;
		if (err == EINPROGRESS)
			return; /* not yet (spurious wake-up) */
		b->flags &= (uint8_t)~BS_CONNECTING;
		wr_disarm(b); /* drops the connect timeout */
		if (err) {
			sr_bsock_disable(b, EV_READ | EV_WRITE);
			errno = err;
			if (b->event_cb)
				b->event_cb(b, SR_BS_WRITING | SR_BS_ERROR, b->arg);
			return;
		}
		if ((b->flags & BS_WR_ON) && evbuffer_get_length(b->out) > 0)
			wr_arm(b, NULL);
		if (b->event_cb)
			b->event_cb(b, SR_BS_CONNECTED, b->arg);
		return;
	}
	w = evbuffer_get_length(b->out) ? sr_sock_send_evbuffer((int)fd, b->out) : 0;
	if (w < 0) {
		sr_bsock_disable(b, EV_READ | EV_WRITE);
		if (b->event_cb)
			b->event_cb(b, SR_BS_WRITING | SR_BS_ERROR, b->arg);
		return;
	}
	if (evbuffer_get_length(b->out) == 0) {
		wr_disarm(b);
		if (b->write_cb)
			b->write_cb(b, b->arg);
	}
}

struct sr_bsock *sr_bsock_new(struct event_base *base, int fd)
{
	struct sr_bsock *b = calloc(1, sizeof(*b));

	if (!b || !(b->in = evbuffer_new()) || !(b->out = evbuffer_new()) ||
	    event_assign(&b->rd, base, fd, EV_READ | EV_PERSIST, on_read, b) != 0 ||
	    event_assign(&b->wr, base, fd, EV_WRITE | EV_PERSIST, on_write, b) != 0) {
		if (b) {
			if (b->in)
				evbuffer_free(b->in);
			if (b->out)
				evbuffer_free(b->out);
			free(b);
		}
		close(fd);
		return NULL;
	}
	b->fd = fd;
	b->read_hint = BS_READ_MIN;
	return b;
}

void sr_bsock_free(struct sr_bsock *b)
{
	if (!b)
		return;
	event_del(&b->rd);
	event_del(&b->wr);
	evbuffer_free(b->in);
	evbuffer_free(b->out);
	if (b->fd >= 0)
		close(b->fd);
	free(b);
}

void sr_bsock_setcb(struct sr_bsock *b, sr_bsock_data_cb read_cb, sr_bsock_data_cb write_cb,
		    sr_bsock_event_cb event_cb, void *arg)
{
	b->read_cb = read_cb;
	b->write_cb = write_cb;
	b->event_cb = event_cb;
	b->arg = arg;
}

void sr_bsock_enable(struct sr_bsock *b, short what)
{
	if ((what & EV_READ) && !(b->flags & BS_RD_ON) && event_add(&b->rd, NULL) == 0)
		b->flags |= BS_RD_ON;
	if (what & EV_WRITE) {
		b->flags |= BS_WR_ON;
		if (!(b->flags & BS_CONNECTING) && evbuffer_get_length(b->out) > 0)
			wr_arm(b, NULL);
	}
}

void sr_bsock_disable(struct sr_bsock *b, short what)
{
	if ((what & EV_READ) && (b->flags & BS_RD_ON)) {
		event_del(&b->rd);
		b->flags &= (uint8_t)~BS_RD_ON;
	}
	if (what & EV_WRITE) {
		b->flags &= (uint8_t)~BS_WR_ON;
		if (!(b->flags & BS_CONNECTING))
			wr_disarm(b);
	}
}

int sr_bsock_connecting(struct sr_bsock *b, const struct timeval *timeout)
{
	b->flags |= BS_CONNECTING;
	wr_disarm(b);
	if (event_add(&b->wr, timeout) != 0)
		return -1;
	b->flags |= BS_WR_ARMED;
	return 0;
}

int sr_bsock_connect(struct sr_bsock *b, const struct sockaddr *sa, socklen_t salen,
		     const struct timeval *timeout)
{
	if (connect(b->fd, sa, salen) == 0)
		return 1;
	if (errno != EINPROGRESS) {
		if (errno != ECONNREFUSED && errno != ENETUNREACH && errno != EHOSTUNREACH &&
		    errno != ETIMEDOUT && errno != EADDRNOTAVAIL)
			return -1;
		b->conn_err = errno;
	}
	if (sr_bsock_connecting(b, timeout) != 0)
		return -1;
	if (b->conn_err)
		event_active(&b->wr, EV_WRITE, 1); /* reported from the loop */
	return 0;
}

struct evbuffer *sr_bsock_input(const struct sr_bsock *b)
{
	return b->in;
}

struct evbuffer *sr_bsock_output(const struct sr_bsock *b)
{
	return b->out;
}

int sr_bsock_fd(const struct sr_bsock *b)
{
	return b->fd;
}
