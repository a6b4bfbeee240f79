/* One end of a tunnel: socket, TLS and HTTP/2 session. See tun_endpoint.h. */
#include "tunnel/tun_endpoint.h"
#include "common/sr_err.h"
#include "common/sr_util.h"
#include "tunnel/tun_records.h"
#include "tunnel/tun_tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/err.h>

#define READ_CHUNK (64 * 1024)
#define READ_BUDGET (512 * 1024)  /* per event, so one busy tunnel cannot starve the loop */
#define CIPHER_HIGH (64 * 1024)   /* stop encrypting while this much waits for the socket */
#define PLAIN_BLOCK (64 * 1024)   /* decrypted bytes handed to the parser at once */

enum ep_state {
	EP_CONNECTING, /* TCP connect in progress */
	EP_HANDSHAKE,  /* TLS handshake */
	EP_OPEN,       /* session running */
	EP_DEAD,       /* transport over; on_closed pending or done */
};

struct tun_endpoint {
	struct event_base *base;
	int fd;
	SSL *ssl;         /* NULL: plain transport */
	BIO *bio;         /* ours over cin/cout, owned by ssl */
	struct evbuffer *cin;   /* bytes read from the socket, not yet decrypted */
	struct plain_block *plain; /* decrypted bytes, reused (see ep_decrypt) */
	struct event *rev, *wev;
	struct event *timer;    /* handshake deadline */
	struct event *close_ev; /* reports a transport failure from its own event */
	struct evbuffer *cout;  /* ciphertext (or plain bytes) not yet taken by the kernel */
	enum ep_state state;
	int peer_eof;
	int wr_errno;     /* send() failed inside evb_write_ex; ep_send reports it */
	int fail_err;
	int closed_reported;

	struct tun_conn *conn;
	enum tun_role role;
	struct tun_conn_opts conn_opts;
	struct tun_conn_cbs owner_cbs; /* the owner's session callbacks */
	struct tun_endpoint_cbs cbs;
	void *arg;
	uint32_t handshake_timeout_ms;
	char logctx[192];

	char cn[160];
	char sans[TUN_EP_MAX_SANS][256];
	size_t nsans;
	char err[256];
};

/* ---- the session's callbacks, forwarded to the owner ---------------------- */

static void fw_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_ctl)
		ep->owner_cbs.on_ctl(c, m, ep->arg);
}

static void fw_ctl_open(struct tun_conn *c, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_ctl_open)
		ep->owner_cbs.on_ctl_open(c, ep->arg);
}

static struct sr_bsock *fw_connect(struct tun_conn *c, const struct tun_connect_req *req,
				   void *arg)
{
	struct tun_endpoint *ep = arg;
	return ep->owner_cbs.on_connect ? ep->owner_cbs.on_connect(c, req, ep->arg) : NULL;
}

static void fw_ctl_sent(struct tun_conn *c, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_ctl_sent)
		ep->owner_cbs.on_ctl_sent(c, ep->arg);
}

static void fw_rtt(struct tun_conn *c, uint64_t rtt_us, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_rtt)
		ep->owner_cbs.on_rtt(c, rtt_us, ep->arg);
}

static void fw_confirmed(struct tun_conn *c, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_confirmed)
		ep->owner_cbs.on_confirmed(c, ep->arg);
}

static void fw_refused(struct tun_conn *c, uint64_t conn_id, uint16_t port, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_refused)
		ep->owner_cbs.on_refused(c, conn_id, port, ep->arg);
}

static void fw_connect_failed(struct tun_conn *c, uint64_t conn_id, uint16_t port,
			      const char *peer, int err, void *arg)
{
	struct tun_endpoint *ep = arg;
	if (ep->owner_cbs.on_connect_failed)
		ep->owner_cbs.on_connect_failed(c, conn_id, port, peer, err, ep->arg);
}

static void ep_on_output(struct tun_conn *c, void *arg);

static void ep_conn_closed(struct tun_conn *c, int err, void *arg)
{
	struct tun_endpoint *ep = arg;

	ep->closed_reported = 1;
	ep->cbs.on_closed(ep, err, ep->err, ep->arg); /* may free ep */
}

/* ---- ciphertext -------------------------------------------------------------- */

/* what: a prefix such as "TLS read", or NULL for none (the handshake: the
 * owner says "TLS handshake failed" itself). */
static void ep_set_err_ssl(struct tun_endpoint *ep, const char *what)
{
	char ssl[200];
	long vr = SSL_get_verify_result(ep->ssl);
	tun_tls_errors(ssl, sizeof(ssl));
	if (vr != X509_V_OK && ep->state == EP_HANDSHAKE)
		snprintf(ep->err, sizeof(ep->err), "%s%s%s (%s)", what ? what : "",
			 what ? ": " : "", X509_verify_cert_error_string(vr), ssl);
	else
		snprintf(ep->err, sizeof(ep->err), "%s%s%s", what ? what : "", what ? ": " : "",
			 ssl);
}

/* OpenSSL writes ciphertext through this BIO, into ep->cout. A record that
 * completes a batch (cout reaches CIPHER_HIGH with it, see ep_write_frame)
 * goes to the socket with the batch straight from OpenSSL's buffer, and is
 * copied only if the kernel does not take it. A failed send is kept for
 * ep_send to report: OpenSSL would only say "TLS write". */
static int evb_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
	struct tun_endpoint *ep = BIO_get_data(b);
	size_t have = evbuffer_get_length(ep->cout);

	*written = len;
	if (ep->wr_errno)
		return 1; /* the transport is failing: nothing more goes out */
	if (have + len >= CIPHER_HIGH && ep->state == EP_OPEN) {
		size_t sent;
		if (sr_sock_send_evbuffer_tail(ep->fd, ep->cout, data, len, &sent) < 0) {
			ep->wr_errno = errno;
			return 1;
		}
		data += sent;
		len -= sent;
		if (len == 0)
			return 1;
	}
	if (evbuffer_add(ep->cout, data, len) != 0)
		return 0;
	return 1;
}

/* ...and takes ciphertext from ep->cin, into which the socket is read
 * directly: one copy (into OpenSSL's record buffer), where a memory BIO
 * would take two. Empty means "would block", not end of file. */
static int evb_read_ex(BIO *b, char *buf, size_t len, size_t *readbytes)
{
	struct tun_endpoint *ep = BIO_get_data(b);
	int n = evbuffer_remove(ep->cin, buf, len);

	BIO_clear_retry_flags(b);
	if (n <= 0) {
		BIO_set_retry_read(b);
		return 0;
	}
	*readbytes = (size_t)n;
	return 1;
}

static long evb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct tun_endpoint *ep = BIO_get_data(b);

	if (cmd == BIO_CTRL_PENDING)
		return ep ? (long)evbuffer_get_length(ep->cin) : 0;
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
			  !BIO_meth_set_read_ex(m, evb_read_ex) ||
			  !BIO_meth_set_ctrl(m, evb_ctrl) || !BIO_meth_set_create(m, evb_create))) {
			BIO_meth_free(m);
			m = NULL;
		}
	}
	return m;
}

/* Send what cout holds; arm the write event for the rest. */
static int ep_send(struct tun_endpoint *ep)
{
	if (ep->wr_errno) {
		snprintf(ep->err, sizeof(ep->err), "send: %s", strerror(ep->wr_errno));
		return SR_EIO;
	}
	while (evbuffer_get_length(ep->cout) > 0) {
		long w = sr_sock_send_evbuffer(ep->fd, ep->cout);
		if (w > 0)
			continue;
		if (w == 0)
			break; /* the kernel is full: wait for EV_WRITE */
		snprintf(ep->err, sizeof(ep->err), "send: %s", strerror(errno));
		return SR_EIO;
	}
	if (evbuffer_get_length(ep->cout) > 0)
		event_add(ep->wev, NULL);
	else
		event_del(ep->wev);
	return 0;
}

/* Send only once a full batch waits (see ep_write_frame). */
static int ep_send_full(struct tun_endpoint *ep)
{
	return evbuffer_get_length(ep->cout) >= CIPHER_HIGH ? ep_send(ep) : 0;
}

/* The transport is over. Reported from close_ev, never from inside the
 * session (we may be deep in its flush when a send fails). */
static void ep_fail(struct tun_endpoint *ep, int err)
{
	if (ep->state == EP_DEAD)
		return;
	ep->state = EP_DEAD;
	ep->fail_err = err;
	event_del(ep->rev);
	event_del(ep->wev);
	event_del(ep->timer);
	event_active(ep->close_ev, EV_TIMEOUT, 0);
}

static void close_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_endpoint *ep = arg;

	if (ep->conn) {
		/* The session reaps its streams and calls ep_conn_closed. */
		tun_conn_transport_failed(ep->conn, ep->fail_err, ep->err);
		return;
	}
	ep->closed_reported = 1;
	ep->cbs.on_closed(ep, ep->fail_err, ep->err, ep->arg); /* may free ep */
}

/* Session output: encrypt (or move) while the socket keeps up, and send.
 * Returns with the session output empty, or with cout at CIPHER_HIGH and the
 * write event armed: never with both queues idle. */
static int ep_encrypt(struct tun_endpoint *ep)
{
	struct evbuffer *in = tun_conn_output(ep->conn);

	if (!ep->ssl) {
		evbuffer_add_buffer(ep->cout, in);
		return ep_send(ep);
	}
	for (;;) {
		int rv;
		while (evbuffer_get_length(in) > 0 && evbuffer_get_length(ep->cout) < CIPHER_HIGH) {
			struct evbuffer_iovec v;
			int n;
			if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
				break;
			n = SSL_write(ep->ssl, v.iov_base, (int)v.iov_len);
			if (n <= 0) {
				ep_set_err_ssl(ep, "TLS write");
				return SR_ETLS;
			}
			evbuffer_drain(in, (size_t)n);
		}
		rv = ep_send(ep);
		if (rv)
			return rv;
		/* The kernel took it all and more waits: go round again. */
		if (evbuffer_get_length(ep->cout) >= CIPHER_HIGH || evbuffer_get_length(in) == 0)
			return 0;
	}
}

/* The session's DATA frames: header and payload go to TLS (or the socket)
 * in as few records as the frame allows, each full but the last
 * (tun_records.h). The ciphertext waits in cout until CIPHER_HIGH or the end
 * of the flush (ep_on_output): one sendmsg per 64 KiB instead of one per
 * frame, which cost more CPU than the copy into cout saves (3.5-3.7 against
 * 4.1-4.5 middle CPU s/GB, iperf3 through relay and sidecar, alternating
 * runs). */
static int ep_write_frame(struct tun_endpoint *ep, const uint8_t *hdr, struct evbuffer *src,
			  size_t off, size_t len);

static int ep_on_data(struct tun_conn *c, const uint8_t *hdr, struct evbuffer *src, size_t off,
		      size_t len, void *arg)
{
	struct tun_endpoint *ep = arg;
	int rv;

	if (ep->state != EP_OPEN)
		return SR_EBUSY; /* failing: close_ev reports it */
	rv = ep_write_frame(ep, hdr, src, off, len);
	if (rv == 0 || rv == SR_EBUSY || rv == SR_EINVAL)
		return rv;
	/* The transport failed: the session stops here, and hears why from
	 * close_ev, not as a failure of its own. */
	ep_fail(ep, rv);
	return SR_EBUSY;
}

/* tun_seal_frame's output, n bytes at a time: into TLS, all of them
 * (records of up to 16 KiB each), or as they are on a plain transport. */
static int ep_seal(void *arg, const void *p, size_t n)
{
	struct tun_endpoint *ep = arg;

	if (!ep->ssl)
		return evbuffer_add(ep->cout, p, n) == 0 ? 0 : SR_ENOMEM;
	if (SSL_write(ep->ssl, p, (int)n) != (int)n) {
		ep_set_err_ssl(ep, "TLS write");
		return SR_ETLS;
	}
	return 0;
}

static int ep_write_frame(struct tun_endpoint *ep, const uint8_t *hdr, struct evbuffer *src,
			  size_t off, size_t len)
{
	struct evbuffer_ptr pos;
	int rv;

	if (evbuffer_get_length(ep->cout) >= CIPHER_HIGH) {
		if ((rv = ep_send(ep)) != 0)
			return rv;
		if (evbuffer_get_length(ep->cout) >= CIPHER_HIGH)
			return SR_EBUSY;
	}
	if (evbuffer_ptr_set(src, &pos, off, EVBUFFER_PTR_SET) != 0)
		return SR_EINVAL;
	if ((rv = tun_seal_frame(hdr, src, &pos, len, ep_seal, ep)) != 0)
		return rv;
	return ep_send_full(ep);
}

static void ep_on_output(struct tun_conn *c, void *arg)
{
	struct tun_endpoint *ep = arg;
	int rv;

	if (ep->state != EP_OPEN)
		return;
	rv = ep_encrypt(ep);
	if (rv)
		ep_fail(ep, rv);
}

/* ---- handshake --------------------------------------------------------------- */

static void ep_up(struct tun_endpoint *ep)
{
	struct tun_conn_cbs cbs = {
		.on_ctl = fw_ctl,
		.on_ctl_open = fw_ctl_open,
		.on_connect = fw_connect,
		.on_output = ep_on_output,
		.on_data = ep_on_data,
		.on_ctl_sent = fw_ctl_sent,
		.on_rtt = fw_rtt,
		.on_confirmed = fw_confirmed,
		.on_refused = fw_refused,
		.on_connect_failed = fw_connect_failed,
		.on_closed = ep_conn_closed,
	};

	if (ep->ssl) {
		if (tun_tls_check_alpn(ep->ssl) != 0) {
			snprintf(ep->err, sizeof(ep->err), "peer did not negotiate h2 (ALPN)");
			ep_fail(ep, SR_EPROTO);
			return;
		}
		tun_tls_peer_name(ep->ssl, ep->cn, sizeof(ep->cn));
		ep->nsans = tun_tls_peer_sans(ep->ssl, ep->sans, TUN_EP_MAX_SANS);
	}
	ep->conn = tun_conn_new(ep->base, ep->role, &ep->conn_opts, &cbs, ep, ep->logctx);
	if (!ep->conn) {
		snprintf(ep->err, sizeof(ep->err), "cannot create the HTTP/2 session (out of memory)");
		ep_fail(ep, SR_ENOMEM);
		return;
	}
	event_del(ep->timer);
	ep->state = EP_OPEN;
	/* Application bytes may have arrived with the peer's last flight: look
	 * at them on the next iteration instead of waiting for more. */
	event_active(ep->rev, EV_READ, 0);
	ep->cbs.on_up(ep, ep->arg); /* the owner sets up its side (log context) */
	tun_conn_start(ep->conn);
}

static void ep_handshake(struct tun_endpoint *ep)
{
	int r = SSL_do_handshake(ep->ssl);
	int rv;

	if (r == 1) {
		rv = ep_send(ep); /* the last flight */
		if (rv) {
			ep_fail(ep, rv);
			return;
		}
		ep_up(ep);
		return;
	}
	r = SSL_get_error(ep->ssl, r);
	rv = ep_send(ep);
	if (r == SSL_ERROR_WANT_READ && rv == 0) {
		if (ep->peer_eof) {
			snprintf(ep->err, sizeof(ep->err), "peer closed the connection");
			ep_fail(ep, SR_ECLOSED);
		}
		return;
	}
	if (rv == 0)
		ep_set_err_ssl(ep, NULL);
	ep_fail(ep, SR_ETLS);
}

/* ---- plaintext into the session ------------------------------------------------ */

/* Decrypted bytes, counted (tun_rblock): DATA in them may go to a socket's
 * output by reference. One is reused while nobody else holds it. */
struct plain_block {
	struct tun_rblock rb;
	size_t len;
	uint8_t data[PLAIN_BLOCK];
};

static void plain_block_release(struct tun_rblock *rb)
{
	free(rb);
}

static struct plain_block *plain_block_get(struct tun_endpoint *ep)
{
	struct plain_block *b = ep->plain;

	if (b && b->rb.refs == 1) {
		b->len = 0;
		return b;
	}
	if (b && --b->rb.refs == 0)
		free(b);
	b = malloc(sizeof(*b));
	ep->plain = b;
	if (b) {
		b->rb.refs = 1; /* ours */
		b->rb.release = plain_block_release;
		b->len = 0;
	}
	return b;
}

static int ep_decrypt(struct tun_endpoint *ep)
{
	for (;;) {
		struct plain_block *b = plain_block_get(ep);
		int n = 0, rv, err = SSL_ERROR_NONE;

		if (!b) {
			snprintf(ep->err, sizeof(ep->err), "out of memory");
			return SR_ENOMEM;
		}
		/* Fill the block with records, then parse it at once. */
		while (b->len < sizeof(b->data)) {
			n = SSL_read(ep->ssl, b->data + b->len, (int)(sizeof(b->data) - b->len));
			if (n <= 0)
				break;
			b->len += (size_t)n;
		}
		/* Read the reason now: feeding the session may write (and so
		 * change what SSL_get_error would say). */
		if (n <= 0) {
			err = SSL_get_error(ep->ssl, n);
			if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_ZERO_RETURN)
				ep_set_err_ssl(ep, "TLS read");
		}
		if (b->len > 0) {
			rv = tun_conn_recv_block(ep->conn, b->data, b->len, &b->rb);
			b->len = 0;
			if (rv != 0) {
				/* The session failed and is closing: it reports. */
				event_del(ep->rev);
				return 0;
			}
			if (ep->state != EP_OPEN)
				return 0;
		}
		switch (err) {
		case SSL_ERROR_NONE:
			continue; /* the block was full: there may be more */
		case SSL_ERROR_WANT_READ:
			if (ep->peer_eof) {
				snprintf(ep->err, sizeof(ep->err),
					 "connection closed without TLS close_notify");
				return SR_ECLOSED;
			}
			/* e.g. a KeyUpdate answer. Through ep_encrypt, not ep_send:
			 * emptying cout alone would disarm the write event while
			 * session output still waits for room. */
			return ep_encrypt(ep);
		case SSL_ERROR_ZERO_RETURN:
			snprintf(ep->err, sizeof(ep->err), "peer closed the TLS session");
			return SR_ECLOSED;
		default:
			return SR_ETLS;
		}
	}
}

/* Plain transport: hand what was read to the session, chunk by chunk. */
static int plain_feed(struct tun_endpoint *ep)
{
	struct evbuffer_iovec v[8];

	while (evbuffer_get_length(ep->cin) > 0) {
		int n = evbuffer_peek(ep->cin, -1, NULL, v, (int)SR_ARRAY_LEN(v));
		size_t used = 0;
		if (n > (int)SR_ARRAY_LEN(v))
			n = (int)SR_ARRAY_LEN(v);
		for (int i = 0; i < n; i++) {
			if (tun_conn_recv(ep->conn, v[i].iov_base, v[i].iov_len) != 0)
				return -1;
			used += v[i].iov_len;
		}
		evbuffer_drain(ep->cin, used);
	}
	return 0;
}

/* One recv() of up to READ_CHUNK straight into cin. Not evbuffer_read():
 * libevent 2.1 caps it at 4 KiB per call (EVBUFFER_MAX_READ) after a
 * FIONREAD ioctl, which made a bulk tunnel cost a readv, an ioctl and an
 * epoll_wait per 4 KiB. */
static ssize_t ep_recv(struct tun_endpoint *ep)
{
	struct evbuffer_iovec v;
	ssize_t n;

	if (evbuffer_reserve_space(ep->cin, READ_CHUNK, &v, 1) < 1) {
		errno = ENOMEM;
		return -1;
	}
	n = recv(ep->fd, v.iov_base, v.iov_len < READ_CHUNK ? v.iov_len : READ_CHUNK, 0);
	if (n > 0) {
		v.iov_len = (size_t)n;
		if (evbuffer_commit_space(ep->cin, &v, 1) != 0) {
			errno = ENOMEM;
			return -1;
		}
	}
	return n;
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_endpoint *ep = arg;
	size_t total = 0;
	int rv;

	while (total < READ_BUDGET && ep->state != EP_DEAD) {
		ssize_t n = ep_recv(ep);
		if (n > 0) {
			total += (size_t)n;
			if (n < READ_CHUNK)
				break;
			continue;
		}
		if (n == 0) {
			ep->peer_eof = 1;
			event_del(ep->rev);
			break;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			break;
		snprintf(ep->err, sizeof(ep->err), "recv: %s", strerror(errno));
		ep_fail(ep, SR_EIO);
		return;
	}
	if (ep->state == EP_HANDSHAKE) {
		ep_handshake(ep);
		return;
	}
	if (ep->state != EP_OPEN)
		return;
	if (!ep->ssl) {
		if (plain_feed(ep) != 0) {
			event_del(ep->rev); /* the session is closing: it reports */
			return;
		}
		if (ep->peer_eof) {
			snprintf(ep->err, sizeof(ep->err), "connection closed by peer");
			ep_fail(ep, SR_ECLOSED);
		}
		return;
	}
	rv = ep_decrypt(ep);
	if (rv)
		ep_fail(ep, rv);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_endpoint *ep = arg;
	struct evbuffer *out;
	int rv;

	if (ep->state == EP_CONNECTING) {
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (getsockopt(ep->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
			soerr = errno;
		if (soerr) {
			snprintf(ep->err, sizeof(ep->err), "connect: %s", strerror(soerr));
			ep_fail(ep, SR_EIO);
			return;
		}
		event_del(ep->wev);
		event_add(ep->rev, NULL);
		if (!ep->ssl) {
			ep_up(ep);
			return;
		}
		ep->state = EP_HANDSHAKE;
		ep_handshake(ep);
		return;
	}
	rv = ep_send(ep);
	if (rv == 0 && ep->state == EP_OPEN && evbuffer_get_length(ep->cout) < CIPHER_HIGH) {
		out = tun_conn_output(ep->conn);
		rv = ep_encrypt(ep); /* session output waited for room */
		/* Below half of out_high the session may make more frames. */
		if (rv == 0 && evbuffer_get_length(out) <= ep->conn_opts.out_high / 2)
			tun_conn_output_drained(ep->conn);
	}
	if (rv)
		ep_fail(ep, rv);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_endpoint *ep = arg;

	snprintf(ep->err, sizeof(ep->err), "no %s within %u ms",
		 ep->state == EP_CONNECTING ? "connection" : "TLS session",
		 ep->handshake_timeout_ms);
	ep_fail(ep, SR_ETIMEDOUT);
}

/* ---- lifecycle ------------------------------------------------------------------ */

struct tun_endpoint *tun_endpoint_new(struct event_base *base, int fd,
				      const struct tun_endpoint_opts *o,
				      const struct tun_endpoint_cbs *cbs, void *arg)
{
	struct tun_endpoint *ep = calloc(1, sizeof(*ep));
	SSL *ssl = o->ssl;

	if (!ep)
		goto fail_raw;
	ep->base = base;
	ep->fd = fd;
	ep->role = o->role;
	ep->conn_opts = *o->conn;
	tun_conn_opts_defaults(&ep->conn_opts);
	if (o->conn_cbs)
		ep->owner_cbs = *o->conn_cbs;
	ep->cbs = *cbs;
	ep->arg = arg;
	ep->handshake_timeout_ms = o->handshake_timeout_ms;
	snprintf(ep->logctx, sizeof(ep->logctx), "%s", o->logctx ? o->logctx : "");
	ep->cout = evbuffer_new();
	ep->cin = evbuffer_new();
	ep->rev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, ep);
	ep->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, ep);
	ep->timer = evtimer_new(base, timeout_cb, ep);
	ep->close_ev = event_new(base, -1, 0, close_cb, ep);
	if (!ep->cout || !ep->cin || !ep->rev || !ep->wev || !ep->timer || !ep->close_ev)
		goto fail;
	if (ssl) {
		if (!evb_method())
			goto fail;
		ep->bio = BIO_new(evb_method());
		if (!ep->bio)
			goto fail;
		BIO_set_data(ep->bio, ep);
		SSL_set_bio(ssl, ep->bio, ep->bio); /* one reference, both ways */
		if (o->role == TUN_ROLE_RELAY)
			SSL_set_accept_state(ssl);
		else
			SSL_set_connect_state(ssl);
		ep->ssl = ssl;
		ssl = NULL;
	}
	/* event_add can fail (out of memory): an endpoint whose first event or
	 * handshake timer is not armed would never make progress. */
	if (o->handshake_timeout_ms) {
		struct timeval tv = sr_tv_ms(o->handshake_timeout_ms);
		if (evtimer_add(ep->timer, &tv) != 0)
			goto fail;
	}
	if (o->connecting || (ep->ssl && o->role == TUN_ROLE_SIDECAR) || !ep->ssl) {
		/* A client speaks first, and a plain endpoint comes up, from the
		 * write event: no callback runs before this constructor returns. */
		ep->state = EP_CONNECTING;
		if (event_add(ep->wev, NULL) != 0)
			goto fail;
	} else {
		ep->state = EP_HANDSHAKE;
		if (event_add(ep->rev, NULL) != 0)
			goto fail;
	}
	return ep;
fail:
	if (ep) {
		ep->fd = -1; /* closed below */
		tun_endpoint_free(ep);
	}
fail_raw:
	SSL_free(ssl);
	close(fd);
	return NULL;
}

void tun_endpoint_free(struct tun_endpoint *ep)
{
	if (!ep)
		return;
	if (ep->conn) {
		/* Whatever the session left queued (a GOAWAY, a last message)
		 * goes out first, then a proper goodbye; one non-blocking attempt. */
		if (ep->state == EP_OPEN && ep->fd >= 0) {
			(void)ep_encrypt(ep);
			if (ep->ssl && SSL_shutdown(ep->ssl) >= 0)
				(void)ep_send(ep);
		}
		tun_conn_free(ep->conn);
	}
	if (ep->rev)
		event_free(ep->rev);
	if (ep->wev)
		event_free(ep->wev);
	if (ep->timer)
		event_free(ep->timer);
	if (ep->close_ev)
		event_free(ep->close_ev);
	if (ep->ssl)
		SSL_free(ep->ssl); /* before cout: its write BIO appends there */
	if (ep->cout)
		evbuffer_free(ep->cout);
	if (ep->cin)
		evbuffer_free(ep->cin);
	if (ep->plain && --ep->plain->rb.refs == 0)
		free(ep->plain);
	if (ep->fd >= 0)
		close(ep->fd);
	free(ep);
}

struct tun_conn *tun_endpoint_conn(const struct tun_endpoint *ep)
{
	return ep->conn;
}

const char *tun_endpoint_peer_cn(const struct tun_endpoint *ep)
{
	return ep->cn;
}

size_t tun_endpoint_peer_sans(const struct tun_endpoint *ep, const char *out[TUN_EP_MAX_SANS])
{
	for (size_t i = 0; i < ep->nsans; i++)
		out[i] = ep->sans[i];
	return ep->nsans;
}
