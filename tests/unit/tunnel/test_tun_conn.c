/* tun_conn: a relay-role and a sidecar-role tunnel driven against each other.
 *
 * The two conns are tun_endpoints over an AF_UNIX socketpair, without TLS
 * unless a test asks for it (cfg.tls: certificates from sr_devcert, so the
 * TLS transport of tun_endpoint.c runs under the same checks). Executors and the driver are
 * real TCP sockets on 127.0.0.1 that the test itself reads and writes, non
 * blocking, between bounded slices of the event loop: an executor is a
 * connected pair whose server end is handed to tun_conn_open_stream, and the
 * sidecar's on_connect dials a listener that plays the driver. Payloads are a
 * stateless pseudo-random function of (seed, offset), so every received byte
 * is checked against what its own stream sent.
 *
 * Some tests replace the relay by a raw nghttp2 client (security rules) or
 * put a recording tap between the conns (seed corpus for fuzz_h2: set
 * SR_H2_SEED_DIR to write it). Set SR_TEST_LOG=debug to see the conns' logs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#include "common/sr_bsock.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "common/sr_devcert.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_endpoint.h"
#include "tunnel/tun_tls.h"
#include "tunnel/tun_ctl.h"

#define KIB (1024u)
#define MIB (1024u * 1024u)
#define NSLOTS 32
#define NCMAP 512
#define NORPHANS 16
#define RAW_MAXID 64
#define SMALL_BUF 4096 /* kernel buffers of the "small" driver port */
#define IO_CHUNK (64 * 1024)
#define TAP_Q 4096 /* pieces a delaying tap holds per direction */

/* ---- payloads -------------------------------------------------------------- */

static uint64_t pat_word(uint32_t seed, uint64_t w)
{
	uint64_t x = w * 0x9E3779B97F4A7C15ull + (uint64_t)seed * 0xC2B2AE3D27D4EB4Full + 1;
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* Bytes [off, off+n) of the stream with this seed. */
static void pat_fill(uint32_t seed, uint64_t off, uint8_t *buf, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint64_t o = off + i;
		uint64_t w = pat_word(seed, o >> 3);
		for (unsigned b = (unsigned)(o & 7); b < 8 && i < n; b++, i++)
			buf[i] = (uint8_t)(w >> (8 * b));
	}
}

/* ---- one TCP endpoint played by the test ----------------------------------- */

struct ep {
	int fd; /* -1 until connected / accepted, and after close */
	/* sending: tx_total bytes of pattern tx_seed, then SHUT_WR if tx_shut */
	uint32_t tx_seed;
	uint64_t tx_total, tx_off;
	int tx_shut, tx_shut_done, tx_err;
	/* receiving (only while rx_on): checked against pattern rx_seed */
	int rx_on;
	uint32_t rx_seed;
	uint64_t rx_off;
	int64_t rx_bad; /* offset of the first wrong byte, -1 if none */
	int rx_eof, rx_err;
};

static uint8_t io_buf[IO_CHUNK], want_buf[IO_CHUNK];

static void ep_init(struct ep *e)
{
	memset(e, 0, sizeof(*e));
	e->fd = -1;
	e->rx_bad = -1;
	e->rx_on = 1;
}

static void ep_close(struct ep *e)
{
	if (e->fd >= 0)
		close(e->fd);
	e->fd = -1;
}

/* Close so that the peer sees RST. */
static void ep_reset(struct ep *e)
{
	assert_true(e->fd >= 0);
	sr_sock_set_reset_on_close(e->fd);
	ep_close(e);
}

static void ep_service(struct ep *e)
{
	if (e->fd < 0)
		return;
	while (e->tx_off < e->tx_total && !e->tx_err) {
		size_t n = e->tx_total - e->tx_off < IO_CHUNK
			       ? (size_t)(e->tx_total - e->tx_off)
			       : IO_CHUNK;
		ssize_t r;
		pat_fill(e->tx_seed, e->tx_off, io_buf, n);
		r = send(e->fd, io_buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0) {
			e->tx_off += (uint64_t)r;
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			break;
		e->tx_err = r < 0 ? errno : EIO;
	}
	if (e->tx_shut && !e->tx_shut_done && e->tx_off == e->tx_total) {
		shutdown(e->fd, SHUT_WR);
		e->tx_shut_done = 1;
	}
	while (e->rx_on && !e->rx_eof && !e->rx_err) {
		ssize_t r = recv(e->fd, io_buf, IO_CHUNK, MSG_DONTWAIT);
		if (r > 0) {
			if (e->rx_bad < 0) {
				pat_fill(e->rx_seed, e->rx_off, want_buf, (size_t)r);
				if (memcmp(io_buf, want_buf, (size_t)r) != 0) {
					ssize_t i = 0;
					while (io_buf[i] == want_buf[i])
						i++;
					e->rx_bad = (int64_t)(e->rx_off + (uint64_t)i);
				}
			}
			e->rx_off += (uint64_t)r;
		} else if (r == 0) {
			e->rx_eof = 1;
		} else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			break;
		} else {
			e->rx_err = errno;
		}
	}
}

/* ---- harness ----------------------------------------------------------------- */

/* One tunnelled connection: the executor's end and the driver's end. */
struct slot {
	uint64_t conn_id; /* 0: unused */
	struct ep ex, dr;
};

struct cfg {
	struct tun_conn_opts ropts, sopts;
	int bufsz;	/* >0: SO_SNDBUF and SO_RCVBUF of the test's TCP sockets */
	int raw_client; /* a raw nghttp2 client instead of the relay conn */
	int raw_no_ping_ack; /* it answers no PING */
	int tap;	/* relay and sidecar through a recording tap */
	int tap_delay_ms; /* the tap holds every byte this long each way (not recorded) */
	int tls;	/* TLS between the endpoints (development certificates) */
};

struct h {
	struct event_base *base;
	struct cfg cfg;
	struct tun_conn *relay, *sc;	/* the endpoints' sessions, once up */
	struct tun_endpoint *ep[2];	/* [0] relay, [1] sidecar */
	SSL_CTX *tls_ctx[2];
	int closed[2], close_err[2];	/* [0] relay, [1] sidecar */
	char close_why[2][256];

	/* control stream */
	int ctl_open;
	int register_on_open;
	int send_rc;
	int nctl[2];
	struct tun_ctl_msg ctl[2]; /* last received, by receiver */
	int nconfirmed;            /* relay's on_confirmed calls */
	int sc_nctl_at_confirm;    /* nctl[1] at the last of them */

	/* driver listeners: [0] normal, [1] with SMALL_BUF kernel buffers */
	int dl[2];
	uint16_t dport[2];
	uint16_t lease_ports[2]; /* on_connect accepts only these */
	int exl;		 /* executor listener */
	uint16_t export;
	int nconnect, nrefused;
	int dial_sndbuf_max; /* largest SO_SNDBUF of a socket dialled to the driver */
	struct tun_connect_req last_req;
	char last_lease[TUN_CTL_LEASE_MAX], last_peer[64];
	int last_dial_fd;
	struct {
		uint16_t lport, dport; /* Linux reuses a local port for another
					* destination: only the pair names a socket */
		uint64_t conn_id;
	} cmap[NCMAP];
	unsigned ncmap;
	uint64_t next_conn_id;
	struct slot s[NSLOTS];
	int orphans[NORPHANS];
	int norphans;

	/* raw nghttp2 client (cfg.raw_client) */
	nghttp2_session *raw;
	int raw_fd;
	struct evbuffer *raw_out;
	struct evbuffer *raw_seen; /* everything the raw client sent */
	int raw_status[RAW_MAXID];
	int raw_closed[RAW_MAXID];
	uint32_t raw_close_code[RAW_MAXID];
	struct evbuffer *raw_data[RAW_MAXID];
	int raw_err;
	int raw_no_read;   /* the raw client stops reading its socket */
	size_t raw_trickle; /* bytes the raw client may still send on raw_trickle_id */
	int32_t raw_trickle_id;
	char note[64]; /* printed when a wait times out */

	/* tap (cfg.tap): relay <-> tap_fd[0] ... tap_fd[1] <-> sidecar */
	int tap_fd[2];
	int tap_stall[2]; /* stop forwarding what arrives on tap_fd[i] */
	struct evbuffer *tap_out[2];  /* pending toward tap_fd[i] */
	struct evbuffer *tap_seen[2]; /* [0] relay->sidecar, [1] sidecar->relay */
	/* cfg.tap_delay_ms: what arrived on tap_fd[i], in arrival order, with
	 * the time each piece may go on */
	struct evbuffer *tap_hold[2];
	struct {
		uint64_t due_us;
		size_t len;
	} tap_q[2][TAP_Q];
	unsigned tap_qh[2], tap_qn[2];
};

static void msg_assert_equal(const struct tun_ctl_msg *a, const struct tun_ctl_msg *b)
{
	assert_int_equal(a->type, b->type);
	assert_string_equal(a->app, b->app);
	assert_int_equal(a->roles, b->roles);
	assert_string_equal(a->token, b->token);
	assert_string_equal(a->resume, b->resume);
	assert_string_equal(a->lease, b->lease);
	assert_string_equal(a->host, b->host);
	for (int r = 0; r < TUN_PORT_MAX; r++)
		assert_int_equal(a->ports[r], b->ports[r]);
	assert_int_equal(a->ttl_s, b->ttl_s);
	assert_string_equal(a->code, b->code);
	assert_string_equal(a->message, b->message);
}

static void make_register(struct tun_ctl_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = TUN_CTL_REGISTER;
	snprintf(m->app, sizeof(m->app), "%s", "notebook-\xc3\xa9t\xc3\xa9");
	m->roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	snprintf(m->token, sizeof(m->token), "%s", "bearer-0123456789abcdef");
	snprintf(m->resume, sizeof(m->resume), "%s", "resume-feedface");
}

static void make_lease(struct tun_ctl_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = TUN_CTL_LEASE;
	snprintf(m->lease, sizeof(m->lease), "%s", "L-42");
	snprintf(m->host, sizeof(m->host), "%s", "relay-0.spark.svc.cluster.local");
	m->roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	m->ports[TUN_PORT_DRIVER] = 40001;
	m->ports[TUN_PORT_BLOCKMANAGER] = 40002;
	m->ttl_s = 300;
	snprintf(m->resume, sizeof(m->resume), "%s", "resume-cafebabe");
}

static void set_bufs(int fd, int sz)
{
	if (sz <= 0)
		return;
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

static int sockopt_int(int fd, int opt)
{
	int v = 0;
	socklen_t len = sizeof(v);
	assert_int_equal(getsockopt(fd, SOL_SOCKET, opt, &v, &len), 0);
	return v;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	return ntohs(a.sin_port);
}

static int listen_loopback(int bufsz, int nonblock, uint16_t *port)
{
	struct sockaddr_in a;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	set_bufs(fd, bufsz); /* inherited by accepted sockets */
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 256), 0);
	*port = local_port(fd);
	return fd;
}

/* ---- tun_conn callbacks -------------------------------------------------------- */

static void on_ctl_cb(struct h *h, int who, const struct tun_ctl_msg *msg)
{
	h->nctl[who]++;
	h->ctl[who] = *msg;
}

static void relay_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg, void *arg)
{
	on_ctl_cb(arg, 0, msg);
}

static void sc_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg, void *arg)
{
	on_ctl_cb(arg, 1, msg);
}

static void sc_on_ctl_open(struct tun_conn *c, void *arg)
{
	struct h *h = arg;
	struct tun_ctl_msg m;

	h->ctl_open++;
	if (h->register_on_open) {
		make_register(&m);
		h->send_rc = tun_conn_send_ctl(c, &m);
	}
}

static struct sr_bsock *sc_on_connect(struct tun_conn *c, const struct tun_connect_req *req,
					 void *arg)
{
	struct h *h = arg;
	struct sr_bsock *bev;
	struct sockaddr_in a;
	int fd;

	h->nconnect++;
	h->last_req = *req;
	snprintf(h->last_lease, sizeof(h->last_lease), "%s", req->lease);
	snprintf(h->last_peer, sizeof(h->last_peer), "%s", req->peer);
	h->last_req.lease = h->last_lease;
	h->last_req.peer = h->last_peer;
	if (req->port == 0 ||
	    (req->port != h->lease_ports[0] && req->port != h->lease_ports[1])) {
		h->nrefused++;
		return NULL;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return NULL;
	set_bufs(fd, req->port == h->dport[1] ? SMALL_BUF : h->cfg.bufsz);
	bev = sr_bsock_new(h->base, fd); /* closes fd on failure */
	if (!bev)
		return NULL;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(req->port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	switch (sr_bsock_connect(bev, (struct sockaddr *)&a, sizeof(a), NULL)) {
	case 1:
		*req->connected = 1;
		break;
	case 0:
		break;
	default:
		sr_bsock_free(bev);
		return NULL;
	}
	/* connect() bound the local port: it tells the accepted driver socket
	 * which stream it belongs to. */
	h->cmap[h->ncmap % NCMAP].lport = local_port(fd);
	h->cmap[h->ncmap % NCMAP].dport = req->port;
	h->cmap[h->ncmap % NCMAP].conn_id = req->conn_id;
	h->ncmap++;
	h->last_dial_fd = fd;
	if (sockopt_int(fd, SO_SNDBUF) > h->dial_sndbuf_max)
		h->dial_sndbuf_max = sockopt_int(fd, SO_SNDBUF);
	return bev;
}

static void on_closed_cb(struct tun_endpoint *ep, int err, const char *why, void *arg)
{
	struct h *h = arg;
	int who = ep == h->ep[0] ? 0 : 1;

	h->closed[who]++;
	h->close_err[who] = err;
	snprintf(h->close_why[who], sizeof(h->close_why[who]), "%s", why);
}

static void on_up_cb(struct tun_endpoint *ep, void *arg)
{
	struct h *h = arg;

	if (ep == h->ep[0])
		h->relay = tun_endpoint_conn(ep);
	else
		h->sc = tun_endpoint_conn(ep);
}

static const struct tun_endpoint_cbs ep_cbs = {
    .on_up = on_up_cb,
    .on_closed = on_closed_cb,
};

static void relay_on_confirmed(struct tun_conn *c, void *arg)
{
	struct h *h = arg;

	h->nconfirmed++;
	h->sc_nctl_at_confirm = h->nctl[1];
}

static const struct tun_conn_cbs relay_cbs = {
    .on_ctl = relay_on_ctl,
    .on_confirmed = relay_on_confirmed,
};

static const struct tun_conn_cbs sc_cbs = {
    .on_ctl = sc_on_ctl,
    .on_ctl_open = sc_on_ctl_open,
    .on_connect = sc_on_connect,
};

/* ---- raw nghttp2 client ------------------------------------------------------------ */

static int raw_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
			 size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
			 void *user)
{
	struct h *h = user;
	int32_t id = f->hd.stream_id;

	if (f->hd.type == NGHTTP2_HEADERS && id > 0 && id < RAW_MAXID && namelen == 7 &&
	    memcmp(name, ":status", 7) == 0 && valuelen == 3)
		h->raw_status[id] =
		    (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
	return 0;
}

static int raw_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
		       size_t len, void *user)
{
	struct h *h = user;
	if (id > 0 && id < RAW_MAXID)
		evbuffer_add(h->raw_data[id], data, len);
	return 0;
}

static int raw_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
	struct h *h = user;
	if (id > 0 && id < RAW_MAXID) {
		h->raw_closed[id]++;
		h->raw_close_code[id] = code;
	}
	return 0;
}

static ssize_t raw_deferred_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
				 uint32_t *flags, nghttp2_data_source *src, void *user)
{
	struct h *h = user;

	if (id == h->raw_trickle_id && h->raw_trickle > 0 && len > 0) {
		h->raw_trickle--;
		buf[0] = 'x';
		return 1;
	}
	return NGHTTP2_ERR_DEFERRED; /* the control stream's request body stays open */
}

static void raw_start(struct h *h, int fd)
{
	nghttp2_session_callbacks *cb;
	nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};

	h->raw_fd = fd;
	assert_non_null(h->raw_out = evbuffer_new());
	assert_non_null(h->raw_seen = evbuffer_new());
	for (int i = 0; i < RAW_MAXID; i++)
		assert_non_null(h->raw_data[i] = evbuffer_new());
	assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
	nghttp2_session_callbacks_set_on_header_callback(cb, raw_on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, raw_on_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, raw_on_close);
	{
		nghttp2_option *opt;
		assert_int_equal(nghttp2_option_new(&opt), 0);
		if (h->cfg.raw_no_ping_ack)
			nghttp2_option_set_no_auto_ping_ack(opt, 1);
		assert_int_equal(nghttp2_session_client_new2(&h->raw, cb, h, opt), 0);
		nghttp2_option_del(opt);
	}
	nghttp2_session_callbacks_del(cb);
	assert_int_equal(nghttp2_submit_settings(h->raw, NGHTTP2_FLAG_NONE, iv, 1), 0);
}

static void raw_service(struct h *h)
{
	uint8_t buf[16384];

	for (; !h->raw_no_read;) {
		ssize_t n = recv(h->raw_fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n <= 0)
			break;
		ssize_t rv = nghttp2_session_mem_recv(h->raw, buf, (size_t)n);
		if (rv < 0 && !h->raw_err)
			h->raw_err = (int)rv;
	}
	for (;;) {
		const uint8_t *d;
		ssize_t n = nghttp2_session_mem_send(h->raw, &d);
		if (n <= 0)
			break;
		evbuffer_add(h->raw_out, d, (size_t)n);
		evbuffer_add(h->raw_seen, d, (size_t)n);
	}
	if (evbuffer_get_length(h->raw_out) > 0)
		(void)evbuffer_write(h->raw_out, h->raw_fd);
}

/* ---- tap ----------------------------------------------------------------------------- */

static void tap_service(struct h *h)
{
	uint8_t buf[16384];

	uint64_t now = sr_now_us();

	for (int i = 0; i < 2; i++) {
		for (; !h->tap_stall[i];) {
			ssize_t n;
			if (h->cfg.tap_delay_ms && h->tap_qn[i] == TAP_Q)
				break;
			n = recv(h->tap_fd[i], buf, sizeof(buf), MSG_DONTWAIT);
			if (n <= 0)
				break;
			if (h->cfg.tap_delay_ms) {
				unsigned k = (h->tap_qh[i] + h->tap_qn[i]++) % TAP_Q;
				h->tap_q[i][k].due_us = now + (uint64_t)h->cfg.tap_delay_ms * 1000u;
				h->tap_q[i][k].len = (size_t)n;
				evbuffer_add(h->tap_hold[i], buf, (size_t)n);
				continue;
			}
			evbuffer_add(h->tap_seen[i], buf, (size_t)n);
			evbuffer_add(h->tap_out[1 - i], buf, (size_t)n);
		}
		while (h->tap_qn[i] && h->tap_q[i][h->tap_qh[i]].due_us <= now) {
			evbuffer_remove_buffer(h->tap_hold[i], h->tap_out[1 - i],
					       h->tap_q[i][h->tap_qh[i]].len);
			h->tap_qh[i] = (h->tap_qh[i] + 1) % TAP_Q;
			h->tap_qn[i]--;
		}
	}
	for (int i = 0; i < 2; i++)
		if (evbuffer_get_length(h->tap_out[i]) > 0)
			(void)evbuffer_write(h->tap_out[i], h->tap_fd[i]);
}

/* ---- loop ---------------------------------------------------------------------------- */

static void attach_driver(struct h *h, int fd, uint16_t dport)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	uint64_t id = 0;

	sr_sock_nodelay(fd);
	if (getpeername(fd, (struct sockaddr *)&a, &len) == 0) {
		for (unsigned i = 0; i < NCMAP && i < h->ncmap; i++)
			if (h->cmap[i].lport == ntohs(a.sin_port) && h->cmap[i].dport == dport)
				id = h->cmap[i].conn_id;
	}
	for (int k = 0; id && k < NSLOTS; k++) {
		if (h->s[k].conn_id == id && h->s[k].dr.fd < 0) {
			h->s[k].dr.fd = fd;
			return;
		}
	}
	assert_true(h->norphans < NORPHANS);
	h->orphans[h->norphans++] = fd;
}

static void service(struct h *h)
{
	for (int i = 0; i < 2; i++) {
		int fd;
		while (h->dl[i] >= 0 &&
		       (fd = accept4(h->dl[i], NULL, NULL, SOCK_NONBLOCK)) >= 0)
			attach_driver(h, fd, h->dport[i]);
	}
	for (int k = 0; k < NSLOTS; k++) {
		ep_service(&h->s[k].ex);
		ep_service(&h->s[k].dr);
	}
	if (h->raw)
		raw_service(h);
	if (h->cfg.tap)
		tap_service(h);
}

/* One bounded slice of the event loop. */
static void step(struct h *h, int us)
{
	struct timeval tv = {0, us};
	event_base_loopexit(h->base, &tv);
	event_base_dispatch(h->base);
}

static void pump_for(struct h *h, int ms)
{
	uint64_t end = sr_now_us() + (uint64_t)ms * 1000u;
	do {
		service(h);
		step(h, 1000);
	} while (sr_now_us() < end);
	service(h);
}

#define PUMP_UNTIL(h, cond, ms)                                                                \
	do {                                                                                   \
		uint64_t end_ = sr_now_us() + (uint64_t)(ms)*1000u;                            \
		for (;;) {                                                                     \
			service(h);                                                            \
			if (cond)                                                              \
				break;                                                         \
			if (sr_now_us() >= end_)                                               \
				fail_msg("%s:%d: no \"%s\" within %d ms %s", __FILE__,         \
					 __LINE__, #cond, (int)(ms), (h)->note);               \
			step(h, 1000);                                                         \
		}                                                                              \
	} while (0)

static void conn_stats(struct tun_conn *c, struct tun_conn_stats *st)
{
	tun_conn_get_stats(c, st);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int setup(void **state)
{
	struct h *h = calloc(1, sizeof(*h));
	const char *lvl = getenv("SR_TEST_LOG");

	if (!h)
		return -1;
	sr_log_set_level(SR_LOG_ERROR);
	if (lvl)
		sr_log_set_level_name(lvl);
	h->dl[0] = h->dl[1] = h->exl = -1;
	h->raw_fd = -1;
	h->tap_fd[0] = h->tap_fd[1] = -1;
	for (int k = 0; k < NSLOTS; k++) {
		ep_init(&h->s[k].ex);
		ep_init(&h->s[k].dr);
	}
	*state = h;
	return 0;
}

static int teardown(void **state)
{
	struct h *h = *state;

	tun_endpoint_free(h->ep[0]);
	tun_endpoint_free(h->ep[1]);
	for (int i = 0; i < 2; i++)
		SSL_CTX_free(h->tls_ctx[i]);
	for (int k = 0; k < NSLOTS; k++) {
		ep_close(&h->s[k].ex);
		ep_close(&h->s[k].dr);
	}
	for (int i = 0; i < h->norphans; i++)
		close(h->orphans[i]);
	for (int i = 0; i < 2; i++) {
		if (h->dl[i] >= 0)
			close(h->dl[i]);
		if (h->tap_fd[i] >= 0)
			close(h->tap_fd[i]);
		if (h->tap_out[i])
			evbuffer_free(h->tap_out[i]);
		if (h->tap_seen[i])
			evbuffer_free(h->tap_seen[i]);
		if (h->tap_hold[i])
			evbuffer_free(h->tap_hold[i]);
	}
	if (h->exl >= 0)
		close(h->exl);
	if (h->raw)
		nghttp2_session_del(h->raw);
	if (h->raw_fd >= 0)
		close(h->raw_fd);
	if (h->raw_out)
		evbuffer_free(h->raw_out);
	if (h->raw_seen)
		evbuffer_free(h->raw_seen);
	for (int i = 0; i < RAW_MAXID; i++)
		if (h->raw_data[i])
			evbuffer_free(h->raw_data[i]);
	if (h->base)
		event_base_free(h->base);
	free(h);
	return 0;
}

static void socketpair_nb(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

/* Development certificates, made once per process and removed at its exit
 * (the folder holds a CA key). */
static char cert_dir_path[64];

static void cert_dir_remove(void)
{
	static const char *const files[] = {"ca.pem",	   "ca.key",	  "relay.pem",
					    "relay.key",   "sidecar.pem", "sidecar.key"};
	char f[128];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(f, sizeof(f), "%s/%s", cert_dir_path, files[i]);
		unlink(f);
	}
	rmdir(cert_dir_path);
}

static const char *cert_dir(void)
{
	char err[256];

	if (cert_dir_path[0])
		return cert_dir_path;
	snprintf(cert_dir_path, sizeof(cert_dir_path), "/tmp/sr-test-tun-conn-XXXXXX");
	assert_non_null(mkdtemp(cert_dir_path));
	atexit(cert_dir_remove);
	if (sr_devcert_write(cert_dir_path, NULL, 1, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write: %s", err);
	return cert_dir_path;
}

static SSL *new_ssl(struct h *h, enum tun_role role)
{
	char a[128], b[128], c[128], err[512];
	int i = role == TUN_ROLE_RELAY ? 0 : 1;
	SSL *ssl;

	if (!h->tls_ctx[i]) {
		if (role == TUN_ROLE_RELAY) {
			snprintf(a, sizeof(a), "%s/relay.pem", cert_dir());
			snprintf(b, sizeof(b), "%s/relay.key", cert_dir());
			h->tls_ctx[i] = tun_tls_server_ctx(a, b, NULL, 0, err, sizeof(err));
		} else {
			snprintf(c, sizeof(c), "%s/ca.pem", cert_dir());
			h->tls_ctx[i] = tun_tls_client_ctx(c, NULL, NULL, err, sizeof(err));
		}
		if (!h->tls_ctx[i])
			fail_msg("TLS context: %s", err);
	}
	assert_non_null(ssl = SSL_new(h->tls_ctx[i]));
	if (role == TUN_ROLE_SIDECAR)
		assert_int_equal(SSL_set1_host(ssl, "localhost"), 1);
	return ssl;
}

static void new_conn(struct h *h, int fd, enum tun_role role)
{
	int i = role == TUN_ROLE_RELAY ? 0 : 1;
	struct tun_endpoint_opts o = {
		.role = role,
		.ssl = h->cfg.tls ? new_ssl(h, role) : NULL,
		.conn = role == TUN_ROLE_RELAY ? &h->cfg.ropts : &h->cfg.sopts,
		.conn_cbs = role == TUN_ROLE_RELAY ? &relay_cbs : &sc_cbs,
		.logctx = role == TUN_ROLE_RELAY ? "test-relay" : "test-sidecar",
	};

	h->ep[i] = tun_endpoint_new(h->base, fd, &o, &ep_cbs, h);
	assert_non_null(h->ep[i]);
}

static void h_start(struct h *h, const struct cfg *cfg)
{
	int sv[2];

	h->cfg = *cfg;
	assert_non_null(h->base = event_base_new());
	h->dl[0] = listen_loopback(cfg->bufsz, 1, &h->dport[0]);
	h->dl[1] = listen_loopback(SMALL_BUF, 1, &h->dport[1]);
	h->exl = listen_loopback(cfg->bufsz, 0, &h->export);
	h->lease_ports[0] = h->dport[0];
	h->lease_ports[1] = h->dport[1];

	socketpair_nb(sv);
	if (cfg->tap) {
		int tv[2];
		socketpair_nb(tv);
		h->tap_fd[0] = sv[1];
		h->tap_fd[1] = tv[0];
		for (int i = 0; i < 2; i++) {
			assert_non_null(h->tap_out[i] = evbuffer_new());
			assert_non_null(h->tap_seen[i] = evbuffer_new());
			assert_non_null(h->tap_hold[i] = evbuffer_new());
		}
		new_conn(h, tv[1], TUN_ROLE_SIDECAR);
		new_conn(h, sv[0], TUN_ROLE_RELAY);
	} else {
		new_conn(h, sv[1], TUN_ROLE_SIDECAR);
		if (cfg->raw_client)
			raw_start(h, sv[0]);
		else
			new_conn(h, sv[0], TUN_ROLE_RELAY);
	}
	PUMP_UNTIL(h, h->sc && (h->relay || cfg->raw_client), 3000);
}

/* Configure slot k: the executor sends ex_tx bytes, the driver dr_tx bytes,
 * each shutting down its write side afterwards if asked. */
static struct slot *slot_cfg(struct h *h, int k, uint64_t ex_tx, int ex_shut, uint64_t dr_tx,
			     int dr_shut)
{
	struct slot *s = &h->s[k];
	uint32_t seed = (uint32_t)(h->next_conn_id + 1) * 2654435761u + (uint32_t)k;

	ep_close(&s->ex);
	ep_close(&s->dr);
	ep_init(&s->ex);
	ep_init(&s->dr);
	s->ex.tx_seed = s->dr.rx_seed = seed;
	s->dr.tx_seed = s->ex.rx_seed = seed ^ 0x5bd1e995u;
	s->ex.tx_total = ex_tx;
	s->ex.tx_shut = ex_shut;
	s->dr.tx_total = dr_tx;
	s->dr.tx_shut = dr_shut;
	return s;
}

/* An executor connects: the relay gets the server end of a fresh TCP pair. */
static void open_stream(struct h *h, int k, uint16_t port)
{
	struct slot *s = &h->s[k];
	struct sockaddr_in a;
	struct sr_bsock *bev;
	int cfd, sfd;

	cfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(cfd >= 0);
	set_bufs(cfd, h->cfg.bufsz);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(h->export);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0);
	sfd = accept4(h->exl, NULL, NULL, SOCK_NONBLOCK);
	assert_true(sfd >= 0);
	assert_int_equal(fcntl(cfd, F_SETFL, fcntl(cfd, F_GETFL) | O_NONBLOCK), 0);
	sr_sock_nodelay(cfd);
	sr_sock_nodelay(sfd);
	s->ex.fd = cfd;
	s->conn_id = ++h->next_conn_id;
	bev = sr_bsock_new(h->base, sfd);
	assert_non_null(bev);
	assert_int_equal(
	    tun_conn_open_stream(h->relay, bev, port, "L-42", s->conn_id, "10.1.2.3:45678"), 0);
}

static int slot_done(const struct slot *s)
{
	return s->dr.rx_off == s->ex.tx_total && s->ex.rx_off == s->dr.tx_total &&
	       (!s->ex.tx_shut || s->dr.rx_eof) && (!s->dr.tx_shut || s->ex.rx_eof);
}

static void slot_assert_clean(const struct slot *s)
{
	assert_int_equal(s->ex.rx_bad, -1);
	assert_int_equal(s->dr.rx_bad, -1);
	assert_int_equal(s->ex.rx_err, 0);
	assert_int_equal(s->dr.rx_err, 0);
	assert_int_equal(s->ex.tx_err, 0);
	assert_int_equal(s->dr.tx_err, 0);
	assert_true(s->dr.rx_off == s->ex.tx_total);
	assert_true(s->ex.rx_off == s->dr.tx_total);
}

static int slots_done(const struct h *h, int n)
{
	int done = 0;
	for (int k = 0; k < n; k++)
		done += slot_done(&h->s[k]);
	return done;
}

static int no_streams(struct h *h)
{
	return (!h->relay || tun_conn_nstreams(h->relay) == 0) && tun_conn_nstreams(h->sc) == 0;
}

static void start_tunnel(struct h *h, const struct cfg *cfg)
{
	h_start(h, cfg);
	PUMP_UNTIL(h, h->ctl_open == 1, 2000);
}

/* One stream moving bytes each way, ended cleanly at both ends, on a new
 * tunnel made with cfg: each received byte checked against what was sent. */
static void one_bulk_stream(struct h *h, const struct cfg *cfg, uint64_t bytes)
{
	struct slot *s;

	start_tunnel(h, cfg);
	s = slot_cfg(h, 0, bytes, 1, bytes, 1);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, slot_done(s), 30000);
	slot_assert_clean(s);
	/* Both sides ended cleanly: the stream is finished at both ends. */
	PUMP_UNTIL(h, no_streams(h), 2000);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_ctl_register_then_lease(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_ctl_msg want;

	h->register_on_open = 1;
	h_start(h, &cfg);
	PUMP_UNTIL(h, h->nctl[0] == 1, 2000);
	assert_int_equal(h->send_rc, 0);
	assert_int_equal(h->ctl_open, 1);
	make_register(&want);
	msg_assert_equal(&h->ctl[0], &want);

	make_lease(&want);
	assert_int_equal(tun_conn_send_ctl(h->relay, &want), 0);
	PUMP_UNTIL(h, h->nctl[1] == 1, 2000);
	msg_assert_equal(&h->ctl[1], &want);

	/* Several messages back to back arrive whole and in order. */
	memset(&want, 0, sizeof(want));
	want.type = TUN_CTL_DRAIN;
	assert_int_equal(tun_conn_send_ctl(h->relay, &want), 0);
	want.type = TUN_CTL_RELEASED;
	assert_int_equal(tun_conn_send_ctl(h->relay, &want), 0);
	PUMP_UNTIL(h, h->nctl[1] == 3, 2000);
	msg_assert_equal(&h->ctl[1], &want);

	pump_for(h, 100);
	assert_int_equal(h->nctl[0], 1);
	assert_int_equal(h->nctl[1], 3);
	assert_int_equal(h->ctl_open, 1);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
	assert_int_equal(tun_conn_nstreams(h->relay), 0); /* the control stream is no stream */
	assert_int_equal(tun_conn_nstreams(h->sc), 0);
}

/* on_confirmed comes once the peer has processed what was sent before
 * tun_conn_confirm (the relay retires a resume token on it), through the
 * endpoint; a confirm asked while another is in flight gets its own. */
static void test_confirm_after_peer_read(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_ctl_msg m;

	h->register_on_open = 1;
	h_start(h, &cfg);
	PUMP_UNTIL(h, h->nctl[0] == 1, 2000);
	make_lease(&m);
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	assert_int_equal(tun_conn_ctl_flushed(h->relay), 1);
	tun_conn_confirm(h->relay);
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_DRAIN;
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	assert_int_equal(tun_conn_ctl_flushed(h->relay), 1);
	tun_conn_confirm(h->relay);
	PUMP_UNTIL(h, h->nconfirmed == 2, 2000);
	assert_int_equal(h->sc_nctl_at_confirm, 2);
	pump_for(h, 100);
	assert_int_equal(h->nconfirmed, 2);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

static void test_bulk_4mib_each_way(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs, ss;

	one_bulk_stream(h, &cfg, 4 * MIB);
	conn_stats(h->relay, &rs);
	conn_stats(h->sc, &ss);
	assert_int_equal(rs.streams_opened, 1);
	assert_int_equal(ss.streams_opened, 1);
	assert_int_equal(rs.streams_reset, 0);
	assert_int_equal(ss.streams_reset, 0);
	assert_int_equal(rs.bytes_to_tunnel, 4 * MIB);
	assert_int_equal(rs.bytes_from_tunnel, 4 * MIB);
	assert_int_equal(ss.bytes_to_tunnel, 4 * MIB);
	assert_int_equal(ss.bytes_from_tunnel, 4 * MIB);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

static void test_20_parallel_streams_distinct_content(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs, ss;
	const int n = 20;

	cfg.ropts.stream_window = cfg.sopts.stream_window = 256 * KIB;
	start_tunnel(h, &cfg);
	for (int k = 0; k < n; k++) {
		slot_cfg(h, k, 512 * KIB + (uint64_t)k * 1000, 1, 384 * KIB + (uint64_t)k * 777,
			 1);
		open_stream(h, k, h->dport[k & 1]);
	}
	PUMP_UNTIL(h, slots_done(h, n) == n, 60000);
	for (int k = 0; k < n; k++)
		slot_assert_clean(&h->s[k]);
	PUMP_UNTIL(h, no_streams(h), 2000);
	conn_stats(h->relay, &rs);
	conn_stats(h->sc, &ss);
	assert_int_equal(rs.streams_opened, n);
	assert_int_equal(ss.streams_opened, n);
	assert_int_equal(rs.streams_closed, n);
	assert_int_equal(ss.streams_closed, n);
	assert_int_equal(rs.streams_reset + ss.streams_reset, 0);
	assert_int_equal(h->nconnect, n);
}

/* The executor ends its direction first, then the driver. */
static void test_half_close_executor_first(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct slot *s;

	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, 300 * KIB, 1, 0, 0);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, s->dr.rx_eof, 5000);
	assert_int_equal(s->dr.rx_off, 300 * KIB);
	assert_int_equal(s->dr.rx_bad, -1);
	/* The other direction is still open: the driver answers now. */
	s->dr.tx_total = 3 * MIB;
	PUMP_UNTIL(h, s->ex.rx_off == 3 * MIB, 10000);
	pump_for(h, 50);
	assert_false(s->ex.rx_eof);
	assert_int_equal(tun_conn_nstreams(h->relay), 1);
	assert_int_equal(tun_conn_nstreams(h->sc), 1);
	s->dr.tx_shut = 1;
	PUMP_UNTIL(h, s->ex.rx_eof, 5000);
	slot_assert_clean(s);
	PUMP_UNTIL(h, no_streams(h), 2000);
}

/* The driver ends its direction first, then the executor. */
static void test_half_close_driver_first(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct slot *s;

	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, 0, 0, 300 * KIB, 1);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, s->ex.rx_eof, 5000);
	assert_int_equal(s->ex.rx_off, 300 * KIB);
	assert_int_equal(s->ex.rx_bad, -1);
	s->ex.tx_total = 3 * MIB;
	PUMP_UNTIL(h, s->dr.rx_off == 3 * MIB, 10000);
	pump_for(h, 50);
	assert_false(s->dr.rx_eof);
	assert_int_equal(tun_conn_nstreams(h->relay), 1);
	s->ex.tx_shut = 1;
	PUMP_UNTIL(h, s->dr.rx_eof, 5000);
	slot_assert_clean(s);
	PUMP_UNTIL(h, no_streams(h), 2000);
}

static void test_reset_carried_both_ways(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs;
	struct slot *a, *b, *c;

	start_tunnel(h, &cfg);
	a = slot_cfg(h, 0, 64 * KIB, 0, 64 * KIB, 0);
	b = slot_cfg(h, 1, 64 * KIB, 0, 64 * KIB, 0);
	open_stream(h, 0, h->dport[0]);
	open_stream(h, 1, h->dport[0]);
	PUMP_UNTIL(h, slot_done(a) && slot_done(b), 5000);

	/* driver resets -> executor sees ECONNRESET */
	ep_reset(&a->dr);
	PUMP_UNTIL(h, a->ex.rx_err || a->ex.rx_eof, 3000);
	assert_int_equal(a->ex.rx_err, ECONNRESET);

	/* executor resets -> driver sees ECONNRESET */
	ep_reset(&b->ex);
	PUMP_UNTIL(h, b->dr.rx_err || b->dr.rx_eof, 3000);
	assert_int_equal(b->dr.rx_err, ECONNRESET);
	PUMP_UNTIL(h, no_streams(h), 2000);
	conn_stats(h->relay, &rs);
	assert_int_equal(rs.streams_reset, 2);

	/* the tunnel is unharmed */
	c = slot_cfg(h, 2, 1 * MIB, 1, 1 * MIB, 1);
	open_stream(h, 2, h->dport[0]);
	PUMP_UNTIL(h, slot_done(c), 10000);
	slot_assert_clean(c);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

static void test_on_connect_refusal_closes_executor(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs0, rs, ss;
	struct slot *good, *bad, *after;
	uint16_t not_leased;

	start_tunnel(h, &cfg);
	not_leased = (uint16_t)(h->dport[0] == 65535 ? 1024 : h->dport[0] + 1);
	if (not_leased == h->dport[1])
		not_leased++;
	good = slot_cfg(h, 0, 256 * KIB, 0, 256 * KIB, 0);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, good->dr.fd >= 0, 2000);
	conn_stats(h->relay, &rs0);

	bad = slot_cfg(h, 1, 1000, 0, 0, 0);
	open_stream(h, 1, not_leased);
	PUMP_UNTIL(h, bad->ex.rx_eof || bad->ex.rx_err, 3000);
	assert_true(bad->ex.rx_eof || bad->ex.rx_err == ECONNRESET);
	assert_int_equal(h->nrefused, 1);
	assert_int_equal(h->last_req.port, not_leased);

	PUMP_UNTIL(h, slot_done(good), 5000);
	slot_assert_clean(good);
	PUMP_UNTIL(h, tun_conn_nstreams(h->relay) == 1 && tun_conn_nstreams(h->sc) == 1, 2000);
	conn_stats(h->relay, &rs);
	conn_stats(h->sc, &ss);
	assert_int_equal(rs.streams_opened, 2);
	assert_int_equal(rs.streams_reset, rs0.streams_reset + 1);
	assert_int_equal(ss.streams_opened, 1); /* only the accepted one */
	assert_int_equal(h->nconnect, 2);

	/* and a later stream is accepted as usual */
	after = slot_cfg(h, 2, 100 * KIB, 1, 100 * KIB, 1);
	open_stream(h, 2, h->dport[1]);
	PUMP_UNTIL(h, slot_done(after), 5000);
	slot_assert_clean(after);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* A driver that never reads holds the executor to its stream window plus
 * the kernel buffers on the way; another stream meanwhile runs at speed. */
static void test_flow_control_bounds_a_stalled_stream(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct slot *stall, *bulk;
	uint64_t t0, t_bulk, left, bound;
	const uint32_t window = 256 * KIB, read_high = 64 * KIB;

	cfg.bufsz = 64 * KIB;
	cfg.ropts.stream_window = cfg.sopts.stream_window = window;
	cfg.ropts.sock_read_high = cfg.sopts.sock_read_high = read_high;
	start_tunnel(h, &cfg);
	stall = slot_cfg(h, 0, 32 * MIB, 0, 0, 0);
	stall->dr.rx_on = 0;
	bulk = slot_cfg(h, 1, 8 * MIB, 1, 0, 1);
	t0 = sr_now_us();
	open_stream(h, 0, h->dport[0]);
	open_stream(h, 1, h->dport[0]);
	PUMP_UNTIL(h, slot_done(bulk), 15000);
	t_bulk = sr_now_us() - t0;
	slot_assert_clean(bulk);
	if (sr_now_us() - t0 < 1000000u)
		pump_for(h, (int)((1000000u - (sr_now_us() - t0)) / 1000u) + 1);

	left = stall->ex.tx_off;
	/* Everything between the executor's send() and the driver's recv():
	 * the executor pair's kernel buffers, the relay's read buffer, the
	 * stream window (tunnel plus the sidecar's output buffer), and the
	 * kernel buffers of the sidecar -> driver socket. */
	bound = window + read_high + (uint64_t)sockopt_int(stall->ex.fd, SO_SNDBUF) +
		(uint64_t)sockopt_int(h->exl, SO_RCVBUF) + (uint64_t)h->dial_sndbuf_max +
		(uint64_t)sockopt_int(stall->dr.fd, SO_RCVBUF) + 1 * MIB;
	print_message("stalled stream: %llu bytes left the executor (bound %llu); "
		      "8 MiB on the other stream took %llu ms\n",
		      (unsigned long long)left, (unsigned long long)bound,
		      (unsigned long long)(t_bulk / 1000));
	assert_true(stall->dr.fd >= 0);
	assert_true(left > window); /* the stream did run up to its window */
	assert_true(left < bound);
	assert_true(left < 32 * MIB);

	stall->dr.rx_on = 1;
	PUMP_UNTIL(h, stall->dr.rx_off == 32 * MIB, 60000);
	assert_int_equal(stall->ex.tx_off, 32 * MIB);
	assert_int_equal(stall->dr.rx_bad, -1);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* Bytes in flight (sent as DATA by the relay, not yet written to a driver
 * socket by the sidecar), less those already known dropped. */
static uint64_t in_flight(struct h *h, uint64_t dropped)
{
	struct tun_conn_stats rs, ss;
	conn_stats(h->relay, &rs);
	conn_stats(h->sc, &ss);
	return rs.bytes_to_tunnel - ss.bytes_from_tunnel - dropped;
}

static uint64_t relay_to_tunnel(struct h *h)
{
	struct tun_conn_stats rs;
	conn_stats(h->relay, &rs);
	return rs.bytes_to_tunnel;
}

/* Streams reset while the sidecar still holds their unwritten DATA must give
 * that connection-window credit back, or the tunnel stalls for good. */
static void test_conn_window_credit_returned_after_resets(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	uint64_t sent = 0, dropped = 0;
	struct slot *s;

	cfg.ropts.conn_window = cfg.sopts.conn_window = 1 * MIB;
	start_tunnel(h, &cfg);
	for (int i = 0; i < 200; i++) {
		snprintf(h->note, sizeof(h->note), "(stream %d, %llu bytes dropped so far)", i,
			 (unsigned long long)dropped);
		if (i % 2 == 0) {
			s = slot_cfg(h, 0, 64 * KIB, 1, 0, 1);
			open_stream(h, 0, h->dport[0]);
			sent += 64 * KIB;
			PUMP_UNTIL(h, slot_done(s) && no_streams(h), 5000);
			slot_assert_clean(s);
		} else {
			/* The small port's kernel buffers take only a few KiB: the
			 * rest stays in the sidecar, received but unconsumed. */
			s = slot_cfg(h, 0, 64 * KIB, 0, 0, 0);
			s->dr.rx_on = 0;
			open_stream(h, 0, h->dport[1]);
			sent += 64 * KIB;
			PUMP_UNTIL(h,
				   s->dr.fd >= 0 && relay_to_tunnel(h) == sent &&
				       in_flight(h, dropped) >= 32 * KIB,
				   5000);
			pump_for(h, 2);
			ep_reset(&s->dr);
			PUMP_UNTIL(h, (s->ex.rx_eof || s->ex.rx_err) && no_streams(h), 5000);
			assert_int_equal(s->ex.rx_err, ECONNRESET);
			dropped += in_flight(h, dropped);
		}
	}
	h->note[0] = '\0';
	print_message("%llu bytes dropped by 100 resets, conn window 1 MiB\n",
		      (unsigned long long)dropped);
	assert_true(dropped > 2 * MIB); /* a leak would have exhausted the window */

	s = slot_cfg(h, 0, 16 * MIB, 1, 0, 1);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, slot_done(s), 60000);
	slot_assert_clean(s);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

#define NV(n, v)                                                                               \
	{                                                                                      \
		(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE     \
	}

static int32_t raw_connect_nv(struct h *h, const nghttp2_nv *nv, size_t n)
{
	nghttp2_data_provider prd = {.source = {.ptr = NULL},
				     .read_callback = raw_deferred_read};
	int32_t id = nghttp2_submit_request(h->raw, NULL, nv, n, &prd, NULL);

	assert_true(id > 0 && id < RAW_MAXID);
	return id;
}

static int32_t raw_connect(struct h *h, const char *authority)
{
	nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", authority),
			   NV("sparkrelay-lease", "L-9"), NV("sparkrelay-conn", "77"),
			   NV("sparkrelay-peer", "10.9.8.7:1234")};

	return raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
}

static int32_t raw_ctl(struct h *h)
{
	nghttp2_nv nv[] = {NV(":method", "POST"), NV(":scheme", "https"),
			   NV(":authority", "sparkrelay"), NV(":path", TUN_CTL_PATH)};
	nghttp2_data_provider prd = {.source = {.ptr = NULL},
				     .read_callback = raw_deferred_read};
	int32_t id = nghttp2_submit_request(h->raw, NULL, nv, SR_ARRAY_LEN(nv), &prd, NULL);

	assert_true(id > 0 && id < RAW_MAXID);
	return id;
}

static void write_seed(const char *dir, const char *name, uint8_t role, struct evbuffer *b,
		       size_t from, size_t to)
{
	char path[512];
	FILE *f;
	unsigned char *p = evbuffer_pullup(b, -1);

	assert_true(to <= evbuffer_get_length(b) && from <= to);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(&role, 1, 1, f), 1);
	assert_int_equal(fwrite(p + from, 1, to - from, f), to - from);
	assert_int_equal(fclose(f), 0);
}

static int all_closed(const struct h *h, const int32_t *ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!h->raw_closed[ids[i]])
			return 0;
	return 1;
}

/* A relay can make the sidecar dial nothing but 127.0.0.1:<port>, and only
 * after the control stream; there is one control stream. */
static void test_sidecar_refuses_other_targets(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	static const char *const bad[] = {
	    "10.0.0.1:22",	  "example.com:80", "127.0.0.2:22",	 "127.0.0.1.nip.io:80",
	    "[::1]:22",		  "127.0.0.1@10.0.0.1:22", "0.0.0.0:22", "",
	    "127.0.0.1:0",	  "127.0.0.1:65536", "127.0.0.1:+22",	 "127.0.0.1:022",
	    "127.0.0.1:22\n", "127.0.0.1:",	     "127.0.0.1",	 "127.0.0.1:22:22",
	    /* the sidecar dials 127.0.0.1 whatever the name: one spelling only */
	    "localhost:22"};
	int32_t early, ctl, ctl2, good, ids[SR_ARRAY_LEN(bad)];
	char target[64];
	struct tun_ctl_msg m, got;
	char err[128];

	cfg.raw_client = 1;
	h_start(h, &cfg);

	snprintf(target, sizeof(target), "127.0.0.1:%u", h->dport[0]);
	early = raw_connect(h, target);
	PUMP_UNTIL(h, h->raw_closed[early], 2000);
	assert_int_equal(h->raw_close_code[early], NGHTTP2_REFUSED_STREAM);
	assert_int_equal(h->nconnect, 0);

	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);

	for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++)
		ids[i] = raw_connect(h, bad[i]);
	good = raw_connect(h, target);
	PUMP_UNTIL(h, h->raw_status[good] == 200 && h->norphans == 1, 3000);
	PUMP_UNTIL(h, all_closed(h, ids, SR_ARRAY_LEN(bad)), 3000);
	for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++) {
		uint32_t code = h->raw_close_code[ids[i]];
		/* nghttp2 itself rejects a CONNECT without :authority, and
		 * control characters in a header value */
		if (code != NGHTTP2_REFUSED_STREAM &&
		    !((bad[i][0] == '\0' || strchr(bad[i], '\n')) &&
		      code == NGHTTP2_PROTOCOL_ERROR))
			fail_msg("target \"%s\": stream closed with %u, want REFUSED_STREAM",
				 bad[i], code);
	}
	assert_int_equal(h->nconnect, 1); /* only the loopback target reached on_connect */
	assert_int_equal(h->last_req.port, h->dport[0]);
	assert_string_equal(h->last_req.lease, "L-9");
	assert_int_equal(h->last_req.conn_id, 77);
	assert_string_equal(h->last_req.peer, "10.9.8.7:1234");
	assert_int_equal(h->raw_closed[good], 0);

	ctl2 = raw_ctl(h);
	PUMP_UNTIL(h, h->raw_closed[ctl2], 2000);
	assert_int_not_equal(h->raw_close_code[ctl2], NGHTTP2_NO_ERROR);
	assert_int_equal(h->ctl_open, 1);

	/* the first control stream still works */
	make_register(&m);
	assert_int_equal(tun_conn_send_ctl(h->sc, &m), 0);
	PUMP_UNTIL(h, evbuffer_get_length(h->raw_data[ctl]) > 4, 2000);
	pump_for(h, 10);
	assert_int_equal(
	    tun_ctl_decode(h->raw_data[ctl], TUN_CTL_MAX_DEFAULT, &got, err, sizeof(err)), 1);
	msg_assert_equal(&got, &m);
	assert_int_equal(h->raw_closed[ctl], 0);
	assert_int_equal(h->raw_err, 0);
	assert_int_equal(h->closed[1], 0);
	if (getenv("SR_H2_SEED_DIR"))
		write_seed(getenv("SR_H2_SEED_DIR"), "sidecar_refusals", 1, h->raw_seen,
			   sizeof(NGHTTP2_CLIENT_MAGIC) - 1, evbuffer_get_length(h->raw_seen));
}

/* The sidecar's request headers are taken only whole and well-formed: a lease
 * header that is not a lease id (a line break, over-long, repeated), a
 * connection id that is not decimal digits, or none at all, refuse the stream
 * before the owner is asked to dial anything. */
static void test_sidecar_refuses_bad_headers(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	char target[64], longid[TUN_CTL_LEASE_MAX + 8];
	int32_t ctl, good, ids[9];
	size_t n = 0;

	cfg.raw_client = 1;
	h_start(h, &cfg);
	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);
	snprintf(target, sizeof(target), "127.0.0.1:%u", h->dport[0]);
	memset(longid, 'x', sizeof(longid) - 1);
	longid[0] = 'L', longid[1] = '-', longid[sizeof(longid) - 1] = '\0';
	{
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "L-9\nspark.jars x"),
				   NV("sparkrelay-conn", "1")};
		ids[n++] = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	{
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", longid), NV("sparkrelay-conn", "1")};
		ids[n++] = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	{
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "L-9"), NV("sparkrelay-lease", "L-9"),
				   NV("sparkrelay-conn", "1")};
		ids[n++] = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	{
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "x-9"), NV("sparkrelay-conn", "1")};
		ids[n++] = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	static const char *const conns[] = {"7x", "", "-1", "18446744073709551616",
					    "123456789012345678901"};
	for (size_t i = 0; i < SR_ARRAY_LEN(conns); i++) {
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "L-9"), NV("sparkrelay-conn", conns[i])};
		ids[n++] = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	assert_int_equal(n, SR_ARRAY_LEN(ids));
	PUMP_UNTIL(h, all_closed(h, ids, n), 3000);
	for (size_t i = 0; i < n; i++) {
		uint32_t code = h->raw_close_code[ids[i]];
		/* case 0 has a line break, which nghttp2 itself refuses */
		if (code != NGHTTP2_REFUSED_STREAM && !(i == 0 && code == NGHTTP2_PROTOCOL_ERROR))
			fail_msg("case %zu: stream closed with %u, want REFUSED_STREAM", i, code);
	}
	assert_int_equal(h->nconnect, 0);
	{
		/* no connection id at all */
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "L-9")};
		int32_t id = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
		PUMP_UNTIL(h, h->raw_closed[id], 2000);
		assert_int_equal(h->raw_close_code[id], NGHTTP2_REFUSED_STREAM);
	}
	assert_int_equal(h->nconnect, 0);
	{
		/* the largest connection id still fits */
		nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":authority", target),
				   NV("sparkrelay-lease", "L-9"),
				   NV("sparkrelay-conn", "18446744073709551615")};
		good = raw_connect_nv(h, nv, SR_ARRAY_LEN(nv));
	}
	PUMP_UNTIL(h, h->raw_status[good] == 200, 3000);
	assert_int_equal(h->nconnect, 1);
	assert_true(h->last_req.conn_id == UINT64_MAX);
	assert_int_equal(h->closed[1], 0);
}

static void test_ping_timeout_closes_silent_tunnel(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs;
	struct slot *s;
	uint64_t t0, dt;

	cfg.ropts.ping_interval_ms = 100;
	cfg.ropts.ping_timeout_ms = 300;
	cfg.tap = 1;
	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, 10 * KIB, 0, 10 * KIB, 0);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, slot_done(s), 3000);

	/* An idle tunnel whose peer answers stays up. */
	pump_for(h, 800);
	assert_int_equal(h->closed[0], 0);
	conn_stats(h->relay, &rs);
	assert_true(rs.last_rtt_us > 0);

	/* The sidecar goes silent: no PING ACK comes back. */
	h->tap_stall[1] = 1;
	t0 = sr_now_us();
	PUMP_UNTIL(h, h->closed[0] == 1, 1200);
	dt = sr_now_us() - t0;
	print_message("relay gave up %llu ms after its peer went silent\n",
		      (unsigned long long)(dt / 1000));
	assert_int_equal(h->close_err[0], SR_ETIMEDOUT);
	assert_true(dt >= 100000);
	/* its streams are reset */
	PUMP_UNTIL(h, s->ex.rx_err || s->ex.rx_eof, 1000);
	assert_int_equal(s->ex.rx_err, ECONNRESET);
	pump_for(h, 200);
	assert_int_equal(h->closed[0], 1);
	assert_int_equal(h->closed[1], 0);
}

static void test_oversized_ctl_message_to_sidecar(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_ctl_msg m;

	cfg.sopts.ctl_max = 200;
	start_tunnel(h, &cfg);
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_DRAIN; /* under the cap: delivered */
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	PUMP_UNTIL(h, h->nctl[1] == 1, 2000);

	make_lease(&m);
	/* a valid host name of 251 bytes: four labels of 62 */
	memset(m.host, 'h', 251);
	m.host[62] = m.host[125] = m.host[188] = '.';
	m.host[251] = '\0';
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	PUMP_UNTIL(h, h->closed[1] == 1, 2000);
	assert_int_equal(h->close_err[1], SR_ETOOBIG);
	pump_for(h, 200);
	assert_int_equal(h->closed[1], 1);
	assert_int_equal(h->nctl[1], 1);
	assert_int_equal(tun_conn_send_ctl(h->sc, &m), SR_ECLOSED);
}

static void test_oversized_ctl_message_to_relay(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_ctl_msg m;

	cfg.ropts.ctl_max = 200;
	start_tunnel(h, &cfg);
	make_register(&m);
	memset(m.token, 't', TUN_CTL_TOKEN_MAX - 1);
	m.token[TUN_CTL_TOKEN_MAX - 1] = '\0';
	assert_int_equal(tun_conn_send_ctl(h->sc, &m), 0);
	PUMP_UNTIL(h, h->closed[0] == 1, 2000);
	assert_int_equal(h->close_err[0], SR_ETOOBIG);
	pump_for(h, 200);
	assert_int_equal(h->closed[0], 1);
	assert_int_equal(h->nctl[0], 0);
}

/* A whole session through a recording tap: control exchange, a stream with
 * data and half-closes both ways, a stream reset by the driver, a drain and
 * GOAWAY. With SR_H2_SEED_DIR set, what each side sent becomes the seed
 * corpus of fuzz_h2 (role byte first; the sidecar role's fuzz input starts
 * after the client preface, which the fuzzer adds itself). */
static void test_tap_session_and_fuzz_seeds(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_ctl_msg m;
	struct slot *a, *b;
	size_t r2s_ctl, s2r_ctl;
	const char *dir = getenv("SR_H2_SEED_DIR");
	static const char preface[] = NGHTTP2_CLIENT_MAGIC;

	cfg.tap = 1;
	h->register_on_open = 1;
	h_start(h, &cfg);
	PUMP_UNTIL(h, h->nctl[0] == 1, 2000);
	make_lease(&m);
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	PUMP_UNTIL(h, h->nctl[1] == 1, 2000);
	pump_for(h, 5);
	r2s_ctl = evbuffer_get_length(h->tap_seen[0]);
	s2r_ctl = evbuffer_get_length(h->tap_seen[1]);

	a = slot_cfg(h, 0, 1000, 1, 1500, 1);
	b = slot_cfg(h, 1, 2000, 0, 700, 0);
	open_stream(h, 0, h->dport[0]);
	open_stream(h, 1, h->dport[0]);
	PUMP_UNTIL(h, slot_done(a) && slot_done(b), 3000);
	slot_assert_clean(a);
	ep_reset(&b->dr);
	PUMP_UNTIL(h, b->ex.rx_err != 0, 2000);
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_DRAIN;
	assert_int_equal(tun_conn_send_ctl(h->relay, &m), 0);
	tun_conn_goaway(h->relay);
	PUMP_UNTIL(h, h->nctl[1] == 2 && no_streams(h), 2000);
	pump_for(h, 10);
	assert_int_equal(h->closed[0] + h->closed[1], 0);

	assert_true(evbuffer_get_length(h->tap_seen[0]) > r2s_ctl);
	assert_memory_equal(evbuffer_pullup(h->tap_seen[0], sizeof(preface) - 1), preface,
			    sizeof(preface) - 1);
	if (!dir)
		return;
	write_seed(dir, "sidecar_ctl", 1, h->tap_seen[0], sizeof(preface) - 1, r2s_ctl);
	write_seed(dir, "sidecar_session", 1, h->tap_seen[0], sizeof(preface) - 1,
		   evbuffer_get_length(h->tap_seen[0]));
	write_seed(dir, "relay_ctl", 0, h->tap_seen[1], 0, s2r_ctl);
	write_seed(dir, "relay_session", 0, h->tap_seen[1], 0,
		   evbuffer_get_length(h->tap_seen[1]));
}

/* Resets while both conns' transport output is at its cap (bulk data both
 * ways on another stream): the RST_STREAM may wait in nghttp2's queue while
 * the stream object is reaped, and later frames of that stream must not
 * reach freed memory (ASan). */
static void test_resets_while_tunnel_output_full(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct slot *bulk, *s;

	start_tunnel(h, &cfg);
	bulk = slot_cfg(h, 0, 48 * MIB, 1, 48 * MIB, 1);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, bulk->dr.rx_off > 1 * MIB && bulk->ex.rx_off > 1 * MIB, 5000);
	for (int i = 0; i < 40; i++) {
		int k = 1 + i % 8;
		snprintf(h->note, sizeof(h->note), "(reset %d)", i);
		s = slot_cfg(h, k, 256 * KIB, 0, 256 * KIB, 0);
		open_stream(h, k, h->dport[0]);
		PUMP_UNTIL(h, s->dr.fd >= 0 && s->dr.rx_off > 0 && s->ex.rx_off > 0, 5000);
		if (i % 2) {
			ep_reset(&s->dr);
			PUMP_UNTIL(h, s->ex.rx_err || s->ex.rx_eof, 5000);
		} else {
			ep_reset(&s->ex);
			PUMP_UNTIL(h, s->dr.rx_err || s->dr.rx_eof, 5000);
		}
	}
	h->note[0] = '\0';
	PUMP_UNTIL(h, slot_done(bulk), 60000);
	slot_assert_clean(bulk);
	PUMP_UNTIL(h, no_streams(h), 3000);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* ---- the same over TLS: tun_endpoint's own transport ------------------------ */

static void test_tls_bulk_4mib_each_way(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	struct tun_conn_stats rs, ss;

	cfg.tls = 1;
	one_bulk_stream(h, &cfg, 4 * MIB);
	conn_stats(h->relay, &rs);
	conn_stats(h->sc, &ss);
	assert_int_equal(rs.bytes_to_tunnel, 4 * MIB);
	assert_int_equal(ss.bytes_from_tunnel, 4 * MIB);
	assert_int_equal(ss.bytes_to_tunnel, 4 * MIB);
	assert_int_equal(rs.bytes_from_tunnel, 4 * MIB);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

static void test_tls_20_parallel_streams(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	const int n = 20;

	cfg.tls = 1;
	start_tunnel(h, &cfg);
	for (int k = 0; k < n; k++) {
		slot_cfg(h, k, 256 * KIB + (uint64_t)k * 1001, 1, 192 * KIB + (uint64_t)k * 777, 1);
		open_stream(h, k, h->dport[k & 1]);
	}
	PUMP_UNTIL(h, slots_done(h, n) == n, 60000);
	for (int k = 0; k < n; k++)
		slot_assert_clean(&h->s[k]);
	PUMP_UNTIL(h, no_streams(h), 2000);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* A sidecar that does not trust the relay's CA: both ends report the failed
 * handshake through on_closed, with a reason, and no session ever exists. */
static void test_tls_untrusted_relay_reports_reason(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	char err[512];
	int sv[2];

	cfg.tls = 1;
	h->cfg = cfg;
	assert_non_null(h->base = event_base_new());
	/* The sidecar trusts only public CAs, none of which signed the relay. */
	h->tls_ctx[1] = tun_tls_client_ctx("/etc/ssl/certs/ca-certificates.crt", NULL, NULL, err,
					   sizeof(err));
	if (!h->tls_ctx[1])
		skip();
	socketpair_nb(sv);
	new_conn(h, sv[1], TUN_ROLE_SIDECAR);
	new_conn(h, sv[0], TUN_ROLE_RELAY);
	PUMP_UNTIL(h, h->closed[0] == 1 && h->closed[1] == 1, 3000);
	assert_null(h->relay);
	assert_null(h->sc);
	assert_int_equal(h->close_err[1], SR_ETLS);
	assert_non_null(strstr(h->close_why[1], "certificate"));
	assert_true(h->close_why[0][0] != '\0');
}

/* A plain endpoint whose peer closes the socket reports it once. */
static void test_peer_eof_reported_once(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};

	start_tunnel(h, &cfg);
	tun_endpoint_free(h->ep[0]);
	h->ep[0] = NULL;
	h->relay = NULL;
	PUMP_UNTIL(h, h->closed[1] == 1, 2000);
	assert_int_equal(h->close_err[1], SR_ECLOSED);
	pump_for(h, 100);
	assert_int_equal(h->closed[1], 1);
}

/* ---- receive window auto-tuning --------------------------------------------------------- */

/* Through a tap that delays each way by 5 ms (a round trip of 10 ms or more,
 * above the 1 ms below which nothing grows). DATA the relay sent and the
 * sidecar has not yet written to the driver socket is what the sidecar's
 * window allows in flight. Windows are small so that a window-limited stream
 * stays far below what even a busy machine moves under ASan. */
static void aw_cfg(struct cfg *cfg, uint32_t window, uint32_t max)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->tap = 1;
	cfg->tap_delay_ms = 5;
	cfg->ropts.stream_window = cfg->sopts.stream_window = window;
	cfg->ropts.max_stream_window = cfg->sopts.max_stream_window = max;
}

/* Pump until cond or ms, keeping the largest in_flight() seen. */
#define AW_PUMP_UNTIL(h, cond, ms, maxf)                                                       \
	do {                                                                                   \
		uint64_t end_ = sr_now_us() + (uint64_t)(ms)*1000u;                            \
		for (;;) {                                                                     \
			uint64_t f_;                                                           \
			service(h);                                                            \
			f_ = in_flight(h, 0);                                                  \
			if (f_ > (maxf))                                                       \
				(maxf) = f_;                                                   \
			if ((cond) || sr_now_us() >= end_)                                     \
				break;                                                         \
			step(h, 1000);                                                         \
		}                                                                              \
	} while (0)

/* A stream whose driver reads at once: its window grows, so more than the
 * configured window is in flight, but never more than the maximum. */
static void test_window_grows_for_a_fast_stream_up_to_max(void **state)
{
	struct h *h = *state;
	struct cfg cfg;
	struct tun_conn_stats ss;
	struct slot *s;
	uint64_t maxf = 0, t0;
	const uint64_t total = 8 * MIB;
	const uint32_t window = 16 * KIB, max = 256 * KIB;

	aw_cfg(&cfg, window, max);
	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, total, 1, 0, 1);
	t0 = sr_now_us();
	open_stream(h, 0, h->dport[0]);
	AW_PUMP_UNTIL(h, slot_done(s), 60000, maxf);
	conn_stats(h->sc, &ss);
	print_message("fast stream: %llu MiB in %llu ms; at most %llu bytes in flight; "
		      "min RTT %llu us; %llu growths to %llu bytes\n",
		      (unsigned long long)(total / MIB),
		      (unsigned long long)((sr_now_us() - t0) / 1000),
		      (unsigned long long)maxf, (unsigned long long)ss.min_rtt_us,
		      (unsigned long long)ss.window_grows, (unsigned long long)ss.stream_window_max);
	assert_true(slot_done(s));
	slot_assert_clean(s);
	assert_true(ss.min_rtt_us >= 10000);
	assert_true(maxf > 2 * window); /* the window did grow */
	assert_true(maxf <= max);
	assert_int_equal(ss.stream_window_max, max);
	assert_int_equal(ss.window_grows, 4); /* 16 KiB doubled to 256 KiB, not beyond */
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* A stream whose driver does not read (small kernel buffers): its window
 * stays at the configured size, and so does what it holds. */
static void test_window_stays_for_a_stalled_stream(void **state)
{
	struct h *h = *state;
	struct cfg cfg;
	struct tun_conn_stats ss;
	struct slot *s;
	uint64_t maxf = 0;
	const uint64_t total = 8 * MIB;
	const uint32_t window = 64 * KIB;

	aw_cfg(&cfg, window, 1 * MIB);
	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, total, 1, 0, 1);
	s->dr.rx_on = 0;
	open_stream(h, 0, h->dport[1]);
	AW_PUMP_UNTIL(h, 0, 1500, maxf);
	conn_stats(h->sc, &ss);
	print_message("stalled stream: at most %llu bytes in flight; min RTT %llu us; "
		      "%llu growths\n",
		      (unsigned long long)maxf, (unsigned long long)ss.min_rtt_us,
		      (unsigned long long)ss.window_grows);
	assert_true(ss.min_rtt_us >= 10000);
	assert_int_equal(ss.window_grows, 0);
	assert_true(maxf <= window);
	assert_true(maxf > window / 2); /* it did fill its window */
	assert_true(s->ex.tx_off < total);

	s->dr.rx_on = 1;
	PUMP_UNTIL(h, slot_done(s), 60000);
	slot_assert_clean(s);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* Two streams that were fast (their windows grew) and then stalled must not
 * hold the whole connection window: a third stream still gets through. The
 * connection window is the smallest allowed above the windows, so that
 * without a growth budget the two stalled streams could take all of it
 * (early-returned credit plus credit owed). */
static void test_grown_streams_that_stall_leave_room(void **state)
{
	struct h *h = *state;
	struct cfg cfg;
	struct tun_conn_stats ss;
	struct slot *st[3], *c;
	uint64_t maxf = 0;
	const uint32_t window = 16 * KIB, max = 128 * KIB;

	aw_cfg(&cfg, window, max);
	cfg.ropts.conn_window = cfg.sopts.conn_window = max;
	start_tunnel(h, &cfg);
	for (int k = 0; k < 3; k++) {
		st[k] = slot_cfg(h, k, 256 * MIB, 1, 0, 1);
		open_stream(h, k, h->dport[1]);
	}
	AW_PUMP_UNTIL(h, st[0]->dr.rx_off > 4 * MIB && st[1]->dr.rx_off > 4 * MIB &&
			     st[2]->dr.rx_off > 4 * MIB, 30000, maxf);
	for (int k = 0; k < 3; k++) {
		assert_true(st[k]->dr.rx_off > 4 * MIB);
		st[k]->dr.rx_on = 0;
	}
	conn_stats(h->sc, &ss);
	pump_for(h, 1500); /* they fill what their windows and the kernel hold */
	c = slot_cfg(h, 3, 1000, 1, 1000, 1);
	open_stream(h, 3, h->dport[0]);
	PUMP_UNTIL(h, slot_done(c), 5000);
	slot_assert_clean(c);
	print_message("three grown streams stalled (%llu growths, largest window %llu); "
		      "a fourth stream passed\n",
		      (unsigned long long)ss.window_grows, (unsigned long long)ss.stream_window_max);
	assert_true(ss.window_grows > 0);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* A short path for growth (the growth RTT raised to 1 s, so that the tap's
 * 10 ms round trip counts as one), with company lasting company_ms. */
static void alone_cfg(struct cfg *cfg, uint32_t window, int company_ms)
{
	aw_cfg(cfg, window, 1 * MIB);
	cfg->ropts.grow_min_rtt_us = cfg->sopts.grow_min_rtt_us = 1000 * 1000;
	cfg->ropts.company_us = cfg->sopts.company_us = (uint32_t)company_ms * 1000;
}

/* On a short path (here: below a growth RTT raised to 1 s for the test, so
 * that the tap's 10 ms round trip counts as one) a stream's window grows only
 * while the stream is alone on the tunnel, to at most TUN_WIN_ALONE_MAX
 * windows; while another stream moves DATA the same way, the first has its
 * configured window again (in flight: one window per stream), and once that
 * stream is gone for TUN_COMPANY_US (cut to 0.5 s here) it has its grown
 * window back. */
static void test_window_grown_alone_is_withheld_with_company(void **state)
{
	struct h *h = *state;
	struct cfg cfg;
	struct tun_conn_stats ss;
	struct slot *bulk, *other;
	uint64_t max_alone = 0, max_company = 0, max_again = 0, bulk_before;
	const uint32_t window = 16 * KIB;
	const int company_ms = 500; /* TUN_COMPANY_US is 15 s */

	alone_cfg(&cfg, window, company_ms);
	start_tunnel(h, &cfg);
	bulk = slot_cfg(h, 0, 1024 * MIB, 1, 0, 1);
	open_stream(h, 0, h->dport[0]);
	AW_PUMP_UNTIL(h, (conn_stats(h->sc, &ss), ss.stream_window_max >= 8 * window), 20000,
		      max_alone);
	max_alone = 0;
	AW_PUMP_UNTIL(h, 0, 300, max_alone);
	conn_stats(h->sc, &ss);
	assert_true(ss.min_rtt_us >= 10000 && ss.min_rtt_us < 1000 * 1000);
	/* 16 KiB doubled to 128 KiB (TUN_WIN_ALONE_MAX windows), not to the 1 MiB maximum */
	assert_int_equal(ss.stream_window_max, TUN_WIN_ALONE_MAX * window);
	assert_int_equal(ss.window_grows, 3);
	assert_true(max_alone > 4 * window);

	other = slot_cfg(h, 1, 1 * MIB, 1, 0, 1);
	open_stream(h, 1, h->dport[0]);
	/* What the bulk stream had been granted before drains first. */
	PUMP_UNTIL(h, other->dr.rx_off >= 128 * KIB, 20000);
	bulk_before = bulk->dr.rx_off;
	AW_PUMP_UNTIL(h, slot_done(other), 30000, max_company);
	assert_true(slot_done(other));
	slot_assert_clean(other);

	pump_for(h, company_ms + 200);
	AW_PUMP_UNTIL(h, 0, 500, max_again);
	conn_stats(h->sc, &ss);
	print_message("in flight: %llu bytes alone, %llu with company, %llu alone again; "
		      "%llu growths\n",
		      (unsigned long long)max_alone, (unsigned long long)max_company,
		      (unsigned long long)max_again, (unsigned long long)ss.window_grows);
	assert_true(max_company <= 2 * window); /* a window each */
	assert_true(bulk->dr.rx_off > bulk_before); /* the bulk stream moved on meanwhile */
	assert_true(max_again > 4 * window);
	assert_int_equal(ss.window_grows, 3); /* given back, not grown anew */
	assert_true(bulk->dr.rx_bad < 0);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* Credit a grown stream withholds while it has company waits for the company
 * to leave, and is then returned although the stream is idle (no bytes come
 * that would return it); meanwhile the idle acknowledgements of the other
 * streams still go after TS_ACK_IDLE_MS, not when the withheld credit does. */
static void test_withheld_credit_does_not_hold_back_idle_acks(void **state)
{
	struct h *h = *state;
	struct cfg cfg;
	struct tun_conn_stats ss, rs;
	struct slot *bulk, *other;
	uint64_t maxf = 0, t0, waited_ms;
	const uint32_t window = 16 * KIB;
	const int company_ms = 2000;

	alone_cfg(&cfg, window, company_ms);
	start_tunnel(h, &cfg);
	/* The executor sends, the sidecar's window grows; the stream stays open. */
	bulk = slot_cfg(h, 0, 1 * MIB, 0, 0, 0);
	open_stream(h, 0, h->dport[0]);
	for (int i = 0; i < 64; i++) {
		AW_PUMP_UNTIL(h, (conn_stats(h->sc, &ss), ss.stream_window_max >= 8 * window) ||
				     bulk->dr.rx_off == bulk->ex.tx_total,
			      20000, maxf);
		if (ss.stream_window_max >= 8 * window)
			break;
		bulk->ex.tx_total += 1 * MIB;
	}
	assert_int_equal(ss.stream_window_max, 8 * window);

	/* Another stream moves a little while the bulk stream still sends:
	 * company. The bulk stream ends its bytes, idle now, and keeps its
	 * grown credit back; the other's last bytes are acknowledged once its
	 * socket has them, TS_ACK_IDLE_MS later. */
	bulk->ex.tx_total += 1024 * MIB;
	other = slot_cfg(h, 1, 4 * KIB, 0, 0, 0);
	open_stream(h, 1, h->dport[0]);
	PUMP_UNTIL(h, other->dr.rx_off == 4 * KIB, 5000);
	/* The bulk stream's executor stops; what it wrote drains, with the
	 * other stream's heartbeat every 0.2 s. */
	bulk->ex.tx_total = bulk->ex.tx_off;
	for (int i = 0; i < 100 && bulk->dr.rx_off < bulk->ex.tx_total; i++) {
		other->ex.tx_total += 100;
		pump_for(h, 200);
	}
	assert_int_equal(bulk->dr.rx_off, bulk->ex.tx_total);
	/* Idle, the bulk stream has its idle acknowledgement looked at; it
	 * withholds, to look again when the company leaves. */
	pump_for(h, 100);
	other->ex.tx_total += 100;
	PUMP_UNTIL(h, other->dr.rx_off == other->ex.tx_total, 5000);
	pump_for(h, 200);
	conn_stats(h->relay, &rs);
	print_message("unacknowledged with company: %llu bytes\n", (unsigned long long)rs.unacked);
	assert_true(rs.unacked >= 4 * window);  /* the bulk stream's growth, withheld */
	assert_true(rs.unacked <= 7 * window);  /* and nothing of the other stream */

	/* The company leaves: the withheld credit comes without new bytes. */
	t0 = sr_now_us();
	PUMP_UNTIL(h, (conn_stats(h->relay, &rs), rs.unacked == 0), company_ms + 3000);
	waited_ms = (sr_now_us() - t0) / 1000;
	print_message("withheld credit returned %llu ms later\n", (unsigned long long)waited_ms);
	assert_int_equal(rs.unacked, 0);
	assert_true(waited_ms >= (uint64_t)company_ms / 2);
	assert_true(bulk->dr.rx_bad < 0 && other->dr.rx_bad < 0);
	assert_int_equal(h->closed[0] + h->closed[1], 0);
}

/* A window growth announcement as tun_conn_grow_window sends it: a PING whose
 * payload is the bits 11, the stream id (31 bits), the growth (31 bits). */
static void raw_grow(struct h *h, int32_t id, uint32_t grow)
{
	uint64_t v = (3ull << 62) | ((uint64_t)id << 31) | grow;
	uint8_t opaque[8];

	for (int i = 0; i < 8; i++)
		opaque[i] = (uint8_t)(v >> (56 - 8 * i));
	assert_int_equal(nghttp2_submit_ping(h->raw, NGHTTP2_FLAG_NONE, opaque), 0);
}

/* Growth announced on a stream is credit the sender will not take as an
 * acknowledgement (it keeps those bytes for a resume): a peer may announce
 * up to the largest HTTP/2 window less the credit it already gave, not
 * more, or the sender would keep the bytes of every later WINDOW_UPDATE. */
static void test_window_growth_beyond_the_largest_window_is_refused(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	int32_t ctl, good;
	char target[64];

	cfg.raw_client = 1;
	h_start(h, &cfg);
	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);
	snprintf(target, sizeof(target), "127.0.0.1:%u", h->dport[0]);
	good = raw_connect(h, target);
	PUMP_UNTIL(h, h->raw_status[good] == 200 && h->norphans == 1, 3000);

	/* The sidecar's send window on it is the raw client's initial 65535:
	 * growing to the largest window is allowed, in two announcements. */
	raw_grow(h, good, 0x7fffffffu - 65535u - 1000u);
	raw_grow(h, good, 1000u);
	pump_for(h, 100);
	assert_int_equal(h->closed[1], 0);
	assert_int_equal(h->raw_closed[good], 0);

	/* One byte more is a window HTTP/2 does not allow. */
	raw_grow(h, good, 1);
	PUMP_UNTIL(h, h->closed[1] == 1, 2000);
	assert_int_equal(h->close_err[1], SR_EPROTO); /* nothing else here is one */
}

/* A relay that grants the largest window and never acknowledges (stream
 * credit is the acknowledgement; until it comes the sidecar keeps the bytes
 * for a replay): opens n streams to the driver. */
static void unacked_streams(struct h *h, int32_t *ids, int n)
{
	nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0x7fffffff}};
	char target[64];
	int32_t ctl;

	assert_true(n <= NORPHANS);
	assert_int_equal(nghttp2_submit_settings(h->raw, NGHTTP2_FLAG_NONE, iv, 1), 0);
	/* connection credit in plenty: only stream credit is withheld */
	assert_int_equal(nghttp2_session_set_local_window_size(h->raw, NGHTTP2_FLAG_NONE, 0, 1 << 30),
			 0);
	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);
	snprintf(target, sizeof(target), "127.0.0.1:%u", h->dport[0]);
	for (int i = 0; i < n; i++)
		ids[i] = raw_connect(h, target);
	PUMP_UNTIL(h, h->norphans == n, 3000);
}

/* The drivers of the n streams write what the kernel takes for ms; returns
 * the DATA bytes the raw client has received over all of them. */
static uint64_t drive(struct h *h, const int32_t *ids, int n, int ms)
{
	static uint8_t chunk[64 * KIB];
	uint64_t got = 0, end = sr_now_us() + (uint64_t)ms * 1000u;

	while (sr_now_us() < end) {
		for (int i = 0; i < n; i++)
			(void)send(h->orphans[i], chunk, sizeof(chunk), MSG_DONTWAIT | MSG_NOSIGNAL);
		service(h);
		step(h, 1000);
	}
	for (int i = 0; i < n; i++)
		got += evbuffer_get_length(h->raw_data[ids[i]]);
	return got;
}

/* Each stream keeps at most its largest window of sent, unacknowledged
 * bytes, and sends again as acknowledgements come. */
static void test_unacknowledged_bytes_per_stream_are_bounded(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	const uint32_t max = 1 * MIB;
	uint64_t got, acked = 0;
	int32_t id;

	cfg.raw_client = 1;
	cfg.sopts.max_stream_window = max; /* stream_window: the default 256 KiB */
	h_start(h, &cfg);
	unacked_streams(h, &id, 1);
	got = drive(h, &id, 1, 1000);
	print_message("never acknowledged: %llu bytes sent (bound %u)\n", (unsigned long long)got,
		      max);
	assert_true(got > 256 * KIB); /* the relay's window was used, beyond ours */
	assert_true(got <= max);
	/* Acknowledge what came, a few times over: about as much again follows,
	 * and never more than the bound is unacknowledged. */
	for (int round = 0; round < 4; round++) {
		assert_int_equal(
		    nghttp2_submit_window_update(h->raw, NGHTTP2_FLAG_NONE, id, (int32_t)(got - acked)),
		    0);
		acked = got;
		got = drive(h, &id, 1, 300);
		assert_true(got >= acked + max / 2);
		assert_true(got - acked <= max);
	}
	assert_int_equal(h->closed[1], 0);
	assert_int_equal(h->raw_err, 0);
	assert_int_equal(h->raw_closed[id], 0);
}

/* Over opts.sock_in_max (the bytes of the tunnel's sockets not yet
 * acknowledged), each stream keeps at most its stream_window
 * unacknowledged: many streams do not add up to many grown windows. */
static void test_unacknowledged_bytes_per_tunnel_are_bounded(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	const uint32_t max = 1 * MIB, cap = 2 * MIB, window = 64 * KIB;
	enum { N = 8 };
	uint64_t got, bound = cap + max + (uint64_t)N * window;
	int32_t ids[N];
	struct tun_conn_stats st;

	cfg.raw_client = 1;
	cfg.sopts.stream_window = window;
	cfg.sopts.max_stream_window = max;
	cfg.sopts.sock_in_max = cap;
	h_start(h, &cfg);
	unacked_streams(h, ids, N);
	got = drive(h, ids, N, 1000);
	conn_stats(h->sc, &st);
	print_message("%d streams never acknowledged: %llu bytes sent (bound %llu, without the "
		      "tunnel's cap %llu)\n",
		      N, (unsigned long long)got, (unsigned long long)bound,
		      (unsigned long long)N * max);
	assert_true(st.sock_in_throttled >= 1);
	assert_true(got <= bound);
	assert_int_equal(h->closed[1], 0);
	assert_int_equal(h->raw_err, 0);
}

/* Each INITIAL_WINDOW_SIZE entry of a SETTINGS frame walks every stream of
 * the session: a peer gets a few frames (at most 16 entries each), not a
 * stream of them, or one tunnel's peer keeps the whole event loop busy. */
static void test_settings_flood_ends_the_tunnel(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	nghttp2_settings_entry iv[2] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 70000},
					{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 80000}};
	int32_t ctl;

	cfg.raw_client = 1;
	h_start(h, &cfg);
	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);
	/* a few are fine */
	for (int i = 0; i < 10; i++)
		assert_int_equal(nghttp2_submit_settings(h->raw, NGHTTP2_FLAG_NONE, iv, 2), 0);
	pump_for(h, 100);
	assert_int_equal(h->closed[1], 0);
	/* a flood is not */
	for (int i = 0; i < 200; i++)
		assert_int_equal(nghttp2_submit_settings(h->raw, NGHTTP2_FLAG_NONE, iv, 2), 0);
	PUMP_UNTIL(h, h->closed[1] == 1, 2000);
	assert_int_equal(h->close_err[1], SR_EPROTO);
}

/* Ended streams linger, and a relay's lease waits for its confirmation,
 * until a barrier PING comes back. A peer that sends frames but answers no
 * PING would keep every stream that ended since: the tunnel ends once a
 * barrier waits past ping_timeout_ms. */
static void test_unanswered_barrier_ends_the_tunnel(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	int32_t ctl;
	uint64_t end;

	cfg.raw_client = 1;
	cfg.raw_no_ping_ack = 1;
	cfg.sopts.ping_interval_ms = 200;
	cfg.sopts.ping_timeout_ms = 800;
	h_start(h, &cfg);
	ctl = raw_ctl(h);
	PUMP_UNTIL(h, h->ctl_open == 1 && h->raw_status[ctl] == 200, 2000);
	tun_conn_confirm(h->sc); /* a barrier goes out */
	/* the raw client stays chatty (the sidecar answers its PINGs) */
	end = sr_now_us() + 2400 * 1000u;
	while (!h->closed[1] && sr_now_us() < end) {
		assert_int_equal(nghttp2_submit_ping(h->raw, NGHTTP2_FLAG_NONE, NULL), 0);
		pump_for(h, 50);
	}
	assert_int_equal(h->closed[1], 1);
	assert_int_equal(h->close_err[1], SR_EPROTO);
}

/* A relay (or sidecar) peer that stops reading and trickles a byte now and
 * then on a stream: each byte written to the socket would have its credit
 * returned 20 ms later (ack_idle_cb), queued behind output that cannot go
 * out, without end. While the output is backed up, no such update is
 * queued. */
static void test_trickle_into_a_peer_that_does_not_read(void **state)
{
	struct h *h = *state;
	struct cfg cfg = {0};
	static uint8_t chunk[64 * KIB];
	struct tun_conn_stats st;
	int32_t id;
	uint64_t end;

	cfg.raw_client = 1;
	cfg.sopts.ping_timeout_ms = 60000; /* not the subject here */
	cfg.sopts.ping_interval_ms = 30000;
	h_start(h, &cfg);
	unacked_streams(h, &id, 1); /* its large window lets the driver's bytes flow */
	PUMP_UNTIL(h, h->raw_status[id] == 200, 3000);
	/* The raw client stops reading; the driver's bytes fill the way. */
	h->raw_no_read = 1;
	end = sr_now_us() + 500 * 1000u;
	while (sr_now_us() < end) {
		(void)send(h->orphans[0], chunk, sizeof(chunk), MSG_DONTWAIT | MSG_NOSIGNAL);
		pump_for(h, 5);
	}
	/* A byte every 10 ms for 1 s, each written to the driver. */
	h->raw_trickle_id = id;
	end = sr_now_us() + 1000 * 1000u;
	while (sr_now_us() < end) {
		h->raw_trickle = 1;
		assert_int_equal(nghttp2_session_resume_data(h->raw, id), 0);
		pump_for(h, 10);
	}
	conn_stats(h->sc, &st);
	print_message("frames queued in the sidecar's session after 1 s of trickle: %llu; "
		      "bytes written to the driver: %llu\n",
		      (unsigned long long)st.h2_queued, (unsigned long long)st.bytes_from_tunnel);
	assert_true(st.bytes_from_tunnel >= 20); /* the trickle got through */
	assert_true(st.h2_queued < 10);
	assert_int_equal(h->closed[1], 0);
}

/* DATA frames in one direction of a tap's record (parsed from after the
 * client preface relay->sidecar, from the start the other way): the largest
 * payload, how many, and the bytes of the stream that carried the most. */
static size_t data_frames(struct evbuffer *seen, size_t skip, size_t *ndata, uint64_t *top)
{
	size_t len = evbuffer_get_length(seen), off = skip, largest = 0;
	const uint8_t *p = evbuffer_pullup(seen, -1);
	struct {
		uint32_t id;
		uint64_t bytes;
	} per[8] = {{0, 0}};

	*ndata = 0;
	*top = 0;
	while (off + 9 <= len) {
		size_t flen = ((size_t)p[off] << 16) | ((size_t)p[off + 1] << 8) | p[off + 2];
		uint32_t id = (((uint32_t)p[off + 5] & 0x7f) << 24) | ((uint32_t)p[off + 6] << 16) |
			      ((uint32_t)p[off + 7] << 8) | p[off + 8];
		if (p[off + 3] == NGHTTP2_DATA) {
			int i = 0;
			(*ndata)++;
			if (flen > largest)
				largest = flen;
			while (i < 7 && per[i].id && per[i].id != id)
				i++;
			per[i].id = id;
			per[i].bytes += flen;
			if (per[i].bytes > *top)
				*top = per[i].bytes;
		}
		off += 9 + flen;
	}
	assert_int_equal(off, len); /* whole frames only: the parse stayed in step */
	return largest;
}

/* h2.max_frame bounds the DATA payloads sent (nghttp2 alone stops at
 * 16 KiB): the smaller of the sender's and the receiver's setting, less
 * what makes header and payload whole TLS records (65536 -> 65527, 20000
 * -> 16375). A bulk
 * stream of 2 MiB each way reaches that size and never exceeds it, and the
 * parse sees each of its bytes once. (How many frames it takes depends on
 * how the kernel hands the test's writes to the relay: not checked.) */
static void bulk_frames(struct h *h, uint32_t relay_max, uint32_t sc_max)
{
	struct cfg cfg = {0};
	static const char preface[] = NGHTTP2_CLIENT_MAGIC;
	/* The smaller setting, cut 9 bytes short of whole 16 KiB TLS records
	 * (the frame's header fills the rest: tun_conn.c, h2_read_length_cb). */
	uint32_t want = (relay_max < sc_max ? relay_max : sc_max) / 16384 * 16384 - 9;
	uint64_t top;
	size_t largest, n;

	cfg.tap = 1;
	cfg.ropts.max_frame = relay_max;
	cfg.sopts.max_frame = sc_max;
	one_bulk_stream(h, &cfg, 2 * MIB);
	for (int dir = 0; dir < 2; dir++) {
		largest = data_frames(h->tap_seen[dir], dir == 0 ? sizeof(preface) - 1 : 0, &n,
				      &top);
		assert_int_equal(largest, want);
		assert_int_equal(top, 2 * MIB); /* the bulk stream, each byte once */
		assert_true(n >= 2 * MIB / want);
	}
}

static void test_data_frames_of_max_frame_default(void **state)
{
	bulk_frames(*state, 65536, 65536);
}

/* The sidecar asks for smaller frames: the relay sends what the sidecar
 * accepts, the sidecar what it set itself. */
static void test_data_frames_of_the_smaller_max_frame(void **state)
{
	bulk_frames(*state, 65536, 20000);
}

/* TLS records (5-byte header, then the length it gives) in seen from off:
 * how many, and the lengths of the first max of them in len[]. */
static int tls_records(struct evbuffer *seen, size_t off, size_t *lens, int max)
{
	size_t len = evbuffer_get_length(seen);
	const uint8_t *p = evbuffer_pullup(seen, -1);
	int n = 0;

	while (off + 5 <= len) {
		size_t rlen = ((size_t)p[off + 3] << 8) | p[off + 4];
		assert_int_equal(p[off], 23); /* application data, after the handshake */
		if (n < max)
			lens[n] = rlen;
		n++;
		off += 5 + rlen;
	}
	assert_int_equal(off, len); /* whole records only */
	return n;
}

/* Each TLS record costs a seal at one end and an open at the other,
 * whatever its size, so a DATA frame goes out in full records (16 KiB of
 * plaintext) but its last, its 9-byte header sealed with the payload: a
 * message of up to 16 KiB - 9 bytes (a heartbeat, an RPC) is one record each
 * way, and one of 3 x 16 KiB - 9 is three full ones. Where the header on its
 * own takes no more records (a payload of whole records, but at most 9
 * bytes), it goes alone and the payload is not copied. Before, a frame over
 * 4 KiB always sent its header as a record of its own. */
static void test_tls_data_frames_fill_their_records(void **state)
{
	/* TLS 1.3 on the wire: plaintext + content type + AES-GCM tag */
#define WIRE(plain) ((plain) + 1 + 16)
	static const struct {
		size_t len;
		int n;          /* records */
		size_t rec[3];  /* their lengths on the wire */
	} cases[] = {
	    {64, 1, {WIRE(9 + 64)}},
	    {4097, 1, {WIRE(9 + 4097)}},
	    {16375, 1, {WIRE(16384)}},
	    {16376, 2, {WIRE(9), WIRE(16376)}}, /* 2 records either way: no copy */
	    {16384, 2, {WIRE(9), WIRE(16384)}},
	    {3 * 16384 - 9, 3, {WIRE(16384), WIRE(16384), WIRE(16384)}},
	};
#undef WIRE
	struct h *h = *state;
	struct cfg cfg = {0};
	struct slot *s;

	cfg.tls = 1;
	cfg.tap = 1;
	start_tunnel(h, &cfg);
	s = slot_cfg(h, 0, 64, 0, 64, 0);
	open_stream(h, 0, h->dport[0]);
	PUMP_UNTIL(h, s->dr.rx_off == 64 && s->ex.rx_off == 64, 3000);
	for (size_t i = 0; i < SR_ARRAY_LEN(cases); i++) {
		size_t len = cases[i].len;
		for (int dir = 0; dir < 2; dir++) {
			struct ep *from = dir == 0 ? &s->ex : &s->dr, *to = dir == 0 ? &s->dr : &s->ex;
			uint64_t at = to->rx_off + len;
			size_t mark, lens[3];
			int n;

			pump_for(h, 50); /* the idle acknowledgements go out first */
			mark = evbuffer_get_length(h->tap_seen[dir]);
			from->tx_total += len;
			PUMP_UNTIL(h, to->rx_off == at, 3000);
			n = tls_records(h->tap_seen[dir], mark, lens, 3);
			assert_int_equal(n, cases[i].n);
			for (int r = 0; r < n; r++)
				assert_int_equal(lens[r], cases[i].rec[r]);
		}
	}
	slot_assert_clean(s);
}

int main(void)
{
	/* Like every libevent program (and sparkrelay itself): a write to a
	 * socket whose peer reset must give EPIPE, not kill the process. */
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	    T(test_ctl_register_then_lease),
	    T(test_confirm_after_peer_read),
	    T(test_bulk_4mib_each_way),
	    T(test_20_parallel_streams_distinct_content),
	    T(test_half_close_executor_first),
	    T(test_half_close_driver_first),
	    T(test_reset_carried_both_ways),
	    T(test_on_connect_refusal_closes_executor),
	    T(test_flow_control_bounds_a_stalled_stream),
	    T(test_conn_window_credit_returned_after_resets),
	    T(test_sidecar_refuses_other_targets),
	    T(test_sidecar_refuses_bad_headers),
	    T(test_ping_timeout_closes_silent_tunnel),
	    T(test_oversized_ctl_message_to_sidecar),
	    T(test_oversized_ctl_message_to_relay),
	    T(test_tap_session_and_fuzz_seeds),
	    T(test_resets_while_tunnel_output_full),
	    T(test_tls_bulk_4mib_each_way),
	    T(test_tls_20_parallel_streams),
	    T(test_tls_untrusted_relay_reports_reason),
	    T(test_peer_eof_reported_once),
	    T(test_window_grows_for_a_fast_stream_up_to_max),
	    T(test_window_stays_for_a_stalled_stream),
	    T(test_grown_streams_that_stall_leave_room),
	    T(test_window_grown_alone_is_withheld_with_company),
	    T(test_withheld_credit_does_not_hold_back_idle_acks),
	    T(test_window_growth_beyond_the_largest_window_is_refused),
	    T(test_unacknowledged_bytes_per_stream_are_bounded),
	    T(test_unacknowledged_bytes_per_tunnel_are_bounded),
	    T(test_settings_flood_ends_the_tunnel),
	    T(test_unanswered_barrier_ends_the_tunnel),
	    T(test_trickle_into_a_peer_that_does_not_read),
	    T(test_data_frames_of_max_frame_default),
	    T(test_data_frames_of_the_smaller_max_frame),
	    T(test_tls_data_frames_fill_their_records),
#undef T
	};
	if (getenv("SR_TEST_FILTER"))
		cmocka_set_test_filter(getenv("SR_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
