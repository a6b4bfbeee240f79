#include "tunnel/tun_tls_io.h"
#include "common/sr_err.h"
#include "common/sr_util.h"
#include "tunnel/tun_tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/err.h>

#define READ_CHUNK (64 * 1024)
#define READ_BUDGET (512 * 1024)   /* per event, so one busy tunnel cannot starve the loop */
#define CIPHER_HIGH (64 * 1024)   /* stop encrypting while this much waits for the socket */
#define PLAIN_HIGH (64 * 1024)    /* pair input cap: back-pressure towards tun_conn */
#define PLAIN_STUCK_MAX (1024 * 1024) /* plaintext tun_conn did not take (closing) */

enum { IO_CONNECTING, IO_HANDSHAKE, IO_OPEN, IO_DEAD };

struct tun_tls_io {
	struct event_base *base;
	int fd;
	SSL *ssl;
	BIO *rbio, *wbio; /* owned by ssl */
	struct event *rev, *wev;
	struct bufferevent *pair[2]; /* [0] for tun_conn, [1] ours */
	int pair0_taken;
	struct evbuffer *cout;       /* ciphertext not yet taken by the kernel */
	int state;
	int peer_eof;
	tun_tls_io_cb cb;
	void *arg;
	char err[256];
};

/* what: a prefix such as "TLS read", or NULL for none (the handshake: the
 * owner says "TLS handshake failed" itself). */
static void io_set_err_ssl(struct tun_tls_io *io, const char *what)
{
	char ssl[200];
	long vr = SSL_get_verify_result(io->ssl);
	tun_tls_errors(ssl, sizeof(ssl));
	if (vr != X509_V_OK && io->state == IO_HANDSHAKE)
		snprintf(io->err, sizeof(io->err), "%s%s%s (%s)", what ? what : "", what ? ": " : "",
			 X509_verify_cert_error_string(vr), ssl);
	else
		snprintf(io->err, sizeof(io->err), "%s%s%s", what ? what : "", what ? ": " : "",
			 ssl);
}

/* OpenSSL writes ciphertext through this BIO straight into io->cout: one
 * copy, where a memory BIO would also memset every byte it grows into. */
static int evb_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
	struct tun_tls_io *io = BIO_get_data(b);

	if (evbuffer_add(io->cout, data, len) != 0)
		return 0;
	*written = len;
	return 1;
}

static long evb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int evb_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static BIO_METHOD *evb_method(void)
{
	static BIO_METHOD *m; /* one per process, never freed */

	if (!m) {
		m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sparkrelay evbuffer");
		if (m && (!BIO_meth_set_write_ex(m, evb_write_ex) ||
			  !BIO_meth_set_ctrl(m, evb_ctrl) || !BIO_meth_set_create(m, evb_create))) {
			BIO_meth_free(m);
			m = NULL;
		}
	}
	return m;
}

/* Send the ciphertext queued in cout. */
static int io_send(struct tun_tls_io *io)
{
	while (evbuffer_get_length(io->cout) > 0) {
		long w = sr_sock_send_evbuffer(io->fd, io->cout);
		if (w > 0)
			continue;
		if (w == 0)
			break; /* the kernel is full: wait for EV_WRITE */
		snprintf(io->err, sizeof(io->err), "send: %s", strerror(errno));
		return SR_EIO;
	}
	if (evbuffer_get_length(io->cout) > 0)
		event_add(io->wev, NULL);
	else
		event_del(io->wev);
	return 0;
}

static void io_fail(struct tun_tls_io *io, int err)
{
	int was = io->state;

	if (was == IO_DEAD)
		return;
	io->state = IO_DEAD;
	event_del(io->rev);
	event_del(io->wev);
	if (was != IO_OPEN) {
		io->cb(io, err, io->err, io->arg); /* may free io */
		return;
	}
	/* Deferred: we may be deep inside tun_conn (its write reached us
	 * through the pair), which must not see its transport fail there. */
	if (io->pair[0])
		bufferevent_trigger_event(io->pair[0],
					  err == SR_ECLOSED ? (BEV_EVENT_READING | BEV_EVENT_EOF)
							    : (BEV_EVENT_READING | BEV_EVENT_ERROR),
					  BEV_TRIG_DEFER_CALLBACKS);
}

/* Plaintext from tun_conn: encrypt while the socket keeps up. */
static int io_encrypt(struct tun_tls_io *io)
{
	struct evbuffer *in = bufferevent_get_input(io->pair[1]);

	while (evbuffer_get_length(in) > 0 && evbuffer_get_length(io->cout) < CIPHER_HIGH) {
		struct evbuffer_iovec v;
		int n;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		n = SSL_write(io->ssl, v.iov_base, (int)v.iov_len);
		if (n <= 0) {
			io_set_err_ssl(io, "TLS write");
			return SR_ETLS;
		}
		evbuffer_drain(in, (size_t)n);
		/* Keep cout in step so CIPHER_HIGH bounds the ciphertext queue. */
		if (evbuffer_get_length(io->cout) >= 64 * 1024) {
			int rv = io_send(io);
			if (rv)
				return rv;
		}
	}
	return io_send(io);
}

static void pair_read_cb(struct bufferevent *bev, void *arg)
{
	struct tun_tls_io *io = arg;
	int rv;

	if (io->state != IO_OPEN)
		return;
	rv = io_encrypt(io);
	if (rv)
		io_fail(io, rv);
}

static void io_handshake(struct tun_tls_io *io)
{
	int r = SSL_do_handshake(io->ssl);
	int rv;

	if (r == 1) {
		rv = io_send(io); /* the last flight */
		if (rv) {
			io_fail(io, rv);
			return;
		}
		io->state = IO_OPEN;
		/* Application records may have arrived with the peer's last
		 * flight: look at them on the next iteration instead of waiting
		 * for more bytes (an event freed with io is simply dropped). */
		event_active(io->rev, EV_READ, 0);
		io->cb(io, 0, "", io->arg); /* may free io; else the owner takes pair[0] */
		return;
	}
	r = SSL_get_error(io->ssl, r);
	rv = io_send(io);
	if (r == SSL_ERROR_WANT_READ && rv == 0) {
		if (io->peer_eof) {
			snprintf(io->err, sizeof(io->err), "peer closed the connection");
			io_fail(io, SR_ECLOSED);
		}
		return;
	}
	if (rv == 0)
		io_set_err_ssl(io, NULL);
	io_fail(io, SR_ETLS);
}

/* Decrypt everything buffered into pair[1]'s output (-> tun_conn). */
static int io_decrypt(struct tun_tls_io *io)
{
	struct evbuffer *out = bufferevent_get_output(io->pair[1]);

	for (;;) {
		struct evbuffer_iovec v;
		int n;
		if (evbuffer_reserve_space(out, 16384, &v, 1) < 1) {
			snprintf(io->err, sizeof(io->err), "out of memory");
			return SR_ENOMEM;
		}
		n = SSL_read(io->ssl, v.iov_base, (int)(v.iov_len > 65536 ? 65536 : v.iov_len));
		if (n > 0) {
			v.iov_len = (size_t)n;
			if (evbuffer_get_length(out) > PLAIN_STUCK_MAX) {
				/* tun_conn stopped reading (it is closing): stop
				 * reading the socket rather than buffer without end. */
				evbuffer_commit_space(out, &v, 0);
				event_del(io->rev);
				return 0;
			}
			/* The pair hands this to tun_conn synchronously (no deferred
			 * callbacks: one loop iteration less per message); it may
			 * answer through us and even end the transport. */
			evbuffer_commit_space(out, &v, 1);
			if (io->state != IO_OPEN)
				return 0;
			continue;
		}
		evbuffer_commit_space(out, &v, 0);
		switch (SSL_get_error(io->ssl, n)) {
		case SSL_ERROR_WANT_READ:
			if (io->peer_eof) {
				snprintf(io->err, sizeof(io->err),
					 "connection closed without TLS close_notify");
				return SR_ECLOSED;
			}
			return io_send(io); /* e.g. a KeyUpdate answer */
		case SSL_ERROR_ZERO_RETURN:
			snprintf(io->err, sizeof(io->err), "peer closed the TLS session");
			return SR_ECLOSED;
		default:
			io_set_err_ssl(io, "TLS read");
			return SR_ETLS;
		}
	}
}

static void io_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_tls_io *io = arg;
	char buf[READ_CHUNK];
	size_t total = 0;
	int rv;

	while (total < READ_BUDGET) {
		ssize_t n = recv(io->fd, buf, sizeof(buf), 0);
		if (n > 0) {
			if (BIO_write(io->rbio, buf, (int)n) != (int)n) {
				snprintf(io->err, sizeof(io->err), "out of memory");
				io_fail(io, SR_ENOMEM);
				return;
			}
			total += (size_t)n;
			if ((size_t)n < sizeof(buf))
				break;
			continue;
		}
		if (n == 0) {
			io->peer_eof = 1;
			event_del(io->rev);
			break;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			break;
		snprintf(io->err, sizeof(io->err), "recv: %s", strerror(errno));
		io_fail(io, SR_EIO);
		return;
	}
	if (io->state == IO_HANDSHAKE) {
		io_handshake(io); /* may free io */
		return;
	}
	if (io->state != IO_OPEN)
		return;
	rv = io_decrypt(io);
	if (rv)
		io_fail(io, rv);
}

static void io_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_tls_io *io = arg;
	int rv;

	if (io->state == IO_CONNECTING) {
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
			soerr = errno;
		if (soerr) {
			snprintf(io->err, sizeof(io->err), "connect: %s", strerror(soerr));
			io_fail(io, SR_EIO);
			return;
		}
		io->state = IO_HANDSHAKE;
		event_add(io->rev, NULL);
		io_handshake(io);
		return;
	}
	rv = io_send(io);
	if (rv == 0 && io->state == IO_OPEN && evbuffer_get_length(io->cout) < CIPHER_HIGH)
		rv = io_encrypt(io); /* plaintext waited for room */
	if (rv)
		io_fail(io, rv);
}

struct tun_tls_io *tun_tls_io_new(struct event_base *base, int fd, SSL *ssl, int server,
				  int connecting, tun_tls_io_cb cb, void *arg)
{
	struct tun_tls_io *io = calloc(1, sizeof(*io));

	if (!io)
		goto fail_raw;
	io->base = base;
	io->fd = fd;
	io->ssl = ssl;
	io->cb = cb;
	io->arg = arg;
	io->cout = evbuffer_new();
	if (!io->cout || !evb_method())
		goto fail;
	io->rbio = BIO_new(BIO_s_mem());
	io->wbio = BIO_new(evb_method());
	if (!io->rbio || !io->wbio) {
		BIO_free(io->rbio);
		BIO_free(io->wbio);
		goto fail;
	}
	BIO_set_data(io->wbio, io);
	/* An empty read BIO means "would block", not end of file. */
	BIO_set_mem_eof_return(io->rbio, -1);
	SSL_set_bio(ssl, io->rbio, io->wbio);
	if (server)
		SSL_set_accept_state(ssl);
	else
		SSL_set_connect_state(ssl);
	io->rev = event_new(base, fd, EV_READ | EV_PERSIST, io_read_cb, io);
	io->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, io_write_cb, io);
	if (!io->rev || !io->wev ||
	    bufferevent_pair_new(base, 0, io->pair) != 0)
		goto fail;
	/* pair[1]: we read plaintext from tun_conn and write plaintext to it. */
	bufferevent_setcb(io->pair[1], pair_read_cb, NULL, NULL, io);
	bufferevent_setwatermark(io->pair[1], EV_READ, 0, PLAIN_HIGH);
	bufferevent_enable(io->pair[1], EV_READ | EV_WRITE);
	if (connecting || !server) {
		/* A client speaks first, from the write event: cb never runs
		 * before this constructor has returned. */
		io->state = IO_CONNECTING;
		event_add(io->wev, NULL);
	} else {
		io->state = IO_HANDSHAKE;
		event_add(io->rev, NULL);
	}
	return io;
fail:
	if (io) {
		io->fd = -1; /* closed below */
		io->ssl = NULL;
		tun_tls_io_free(io);
	}
fail_raw:
	SSL_free(ssl);
	close(fd);
	return NULL;
}

void tun_tls_io_free(struct tun_tls_io *io)
{
	if (!io)
		return;
	if (io->ssl && io->state == IO_OPEN && io->fd >= 0) {
		/* Flush what tun_conn left (a GOAWAY, a last message) and say
		 * goodbye properly; one non-blocking attempt, never a wait. */
		if (io->pair[1])
			(void)io_encrypt(io);
		if (SSL_shutdown(io->ssl) >= 0)
			(void)io_send(io);
	}
	if (io->rev)
		event_free(io->rev);
	if (io->wev)
		event_free(io->wev);
	if (io->pair[1])
		bufferevent_free(io->pair[1]);
	if (io->pair[0] && !io->pair0_taken)
		bufferevent_free(io->pair[0]);
	if (io->ssl)
		SSL_free(io->ssl); /* before cout: its write BIO appends there */
	if (io->cout)
		evbuffer_free(io->cout);
	if (io->fd >= 0)
		close(io->fd);
	free(io);
}

struct bufferevent *tun_tls_io_take_bev(struct tun_tls_io *io)
{
	if (io->pair0_taken || io->state != IO_OPEN)
		return NULL;
	io->pair0_taken = 1;
	return io->pair[0];
}

SSL *tun_tls_io_ssl(struct tun_tls_io *io)
{
	return io->ssl;
}

int tun_tls_io_fd(const struct tun_tls_io *io)
{
	return io->fd;
}

const char *tun_tls_io_error(const struct tun_tls_io *io)
{
	return io->err;
}
