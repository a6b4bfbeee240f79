/* The HTTP/2 session of one tunnel. See tun_conn.h for the contract. */
#include "tunnel/tun_internal.h"
#include "tunnel/tun_records.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define HDR_LEASE "sparkrelay-lease"
#define HDR_CONN "sparkrelay-conn"
#define HDR_PEER "sparkrelay-peer"
/* Protocol v2, on a resumed stream: "<rx>;<fin>", the bytes this end has
 * received on the stream (and 1 if it saw END_STREAM): the other end resends
 * from there. In the relay's CONNECT and in the sidecar's answer. */
#define HDR_RESUME "sparkrelay-resume"

/* Incoming resets on the sidecar (the HTTP/2 server). A relay resets a stream
 * when its executor connection fails, at most once per stream, so in a burst
 * at most every open stream of the app (a 2,000-executor app holds about
 * 4,000-6,000) and, sustained, no faster than executors connect (Kubernetes
 * starts 5-20 executor pods a second with a few connections each: ~100/s).
 * The bucket below is twice and ten times that; past it nghttp2 sends GOAWAY
 * and the tunnel ends (h2_on_frame_send). The relay role is the HTTP/2 client,
 * for which nghttp2 has no such limit; its value there only documents that
 * the sidecar, its peer, is trusted more. */
#define SC_RST_BURST 10000
#define SC_RST_RATE 1000 /* per second */

/* Rapid reset (CVE-2023-44487) costs the sidecar more than the stream: each
 * CONNECT is a driver connect(), done before the next frame is read, so
 * HEADERS+RST_STREAM pairs would make the driver accept connections at the
 * relay's pace while the bucket above still has room. A legitimate relay
 * resets a stream before our :status 200 went out only if the executor gave
 * up within the same tunnel read as its CONNECT, or while the driver's accept
 * queue was full; a few a second at most. Past this budget the tunnel ends
 * as a protocol error (the sidecar then backs off harder each time). */
#define SC_EARLY_RST_BURST 200
#define SC_EARLY_RST_RATE 20 /* per second */

/* A peer's SETTINGS frames: each INITIAL_WINDOW_SIZE entry costs a walk of
 * every stream (nghttp2), so with thousands of streams a stream of SETTINGS
 * frames would keep the event loop, every tunnel's, busy. A peer sends one
 * when the session starts and rarely another; past this budget the tunnel
 * ends as a protocol error. */
#define TUN_SETTINGS_MAX 16   /* entries per frame */
#define TUN_SETTINGS_BURST 32 /* frames */
#define TUN_SETTINGS_RATE 1   /* per second */

/* The same values as the h2 table of conf/conf_table.c (tunnel/ does not
 * include conf/); tests/unit/conf/test_conf.c checks that they agree. */
void tun_conn_opts_defaults(struct tun_conn_opts *o)
{
	if (!o->stream_window)
		o->stream_window = 256u << 10;
	if (!o->conn_window)
		o->conn_window = 64u << 20;
	if (!o->max_stream_window)
		o->max_stream_window = 16u << 20;
	if (!o->ping_interval_ms)
		o->ping_interval_ms = 2000;
	if (!o->ping_timeout_ms)
		o->ping_timeout_ms = 6000;
	if (!o->ctl_max)
		o->ctl_max = TUN_CTL_MAX_DEFAULT;
	if (!o->out_high)
		o->out_high = 64u << 10;
	if (!o->sock_read_high)
		o->sock_read_high = 256u << 10;
	if (!o->max_streams)
		o->max_streams = 16384;
	if (!o->max_frame)
		o->max_frame = 65536;
}

static void conn_fail(struct tun_conn *c, int err, const char *why);
static void resume_value(const struct tun_stream *s, char *buf, size_t len);
static int parse_resume(const uint8_t *v, size_t len, uint64_t *rx, int *fin, int *rst);
static void barrier_acked(struct tun_conn *c, uint64_t seq);
static void barrier_send(struct tun_conn *c);
static void barrier_soon(struct tun_conn *c);

void tun_conn_go(struct tun_conn *c, enum tc_state st)
{
	static const char *const names[] = {"NEW", "OPEN", "GOAWAY", "CLOSING", "CLOSED"};

	SR_DEBUG(c->logctx, "session %s -> %s", names[c->st], names[st]);
	c->st = st;
}

/* ---- transport -> nghttp2 ---------------------------------------------- */

static void deliver_ctl(struct tun_conn *c)
{
	struct tun_ctl_msg msg;
	char err[256];
	int rv;

	while (!tun_conn_closing(c) && (rv = tun_ctl_decode(c->ctl_in, c->opts.ctl_max, &msg, err,
						   sizeof(err))) == 1) {
		SR_DEBUG(c->logctx, "control message %s", tun_ctl_type_name(msg.type));
		if (c->cbs.on_ctl)
			c->cbs.on_ctl(c, &msg, c->arg);
	}
	if (!tun_conn_closing(c) && rv < 0) {
		char why[320];
		snprintf(why, sizeof(why), "bad control message: %s", err);
		conn_fail(c, rv, why);
	}
}

int tun_conn_recv(struct tun_conn *c, const uint8_t *p, size_t left)
{
	c->last_recv_us = sr_now_us();
	while (left > 0 && !tun_conn_closing(c)) {
		ssize_t rv;
		c->in_h2 = 1;
		rv = nghttp2_session_mem_recv(c->h2, p, left);
		c->in_h2 = 0;
		if (rv < 0) {
			char why[128];
			snprintf(why, sizeof(why), "HTTP/2 error from peer: %s",
				 nghttp2_strerror((int)rv));
			tun_stream_writeq_drop(c); /* closing: no direct write now */
			conn_fail(c, SR_EPROTO, why);
			return SR_EPROTO;
		}
		p += rv;
		left -= (size_t)rv;
		/* Control data pauses parsing (h2_on_data_chunk): a lease must be
		 * known before the CONNECTs that follow it. */
		if (evbuffer_get_length(c->ctl_in) > 0)
			deliver_ctl(c);
	}
	if (tun_conn_closing(c))
		return c->close_err ? c->close_err : SR_ECLOSED;
	if (c->nwriteq)
		tun_stream_write_queued(c);
	tun_conn_flush(c);
	return 0;
}

int tun_conn_recv_block(struct tun_conn *c, const uint8_t *data, size_t len,
			struct tun_rblock *b)
{
	int rv;

	c->rblock = b;
	rv = tun_conn_recv(c, data, len);
	c->rblock = NULL;
	return rv;
}

struct evbuffer *tun_conn_output(struct tun_conn *c)
{
	return c->out;
}

void tun_conn_output_drained(struct tun_conn *c)
{
	if (tun_conn_closing(c)) {
		if (evbuffer_get_length(c->out) == 0)
			tun_conn_schedule_reap(c);
		return;
	}
	tun_conn_flush(c);
}

void tun_conn_transport_failed(struct tun_conn *c, int err, const char *why)
{
	c->flushing = 0; /* nothing more can be sent */
	conn_fail(c, err, why);
}

/* ---- nghttp2 -> transport ---------------------------------------------- */

static ssize_t h2_send_cb(nghttp2_session *h2, const uint8_t *data, size_t len, int flags,
			  void *user)
{
	struct tun_conn *c = user;
	struct evbuffer *out = c->out;

	if (evbuffer_get_length(out) >= c->opts.out_high)
		return NGHTTP2_ERR_WOULDBLOCK;
	if (evbuffer_add(out, data, len) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return (ssize_t)len;
}

static int h2_send_data_cb(nghttp2_session *h2, nghttp2_frame *frame, const uint8_t *framehd,
			   size_t length, nghttp2_data_source *src, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s = src->ptr;
	struct evbuffer *out = c->out;
	struct evbuffer *in;
	struct evbuffer_iovec v;

	if (!s->sock || s->conn != c)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* socket gone: reset the stream */
	if (evbuffer_get_length(out) >= c->opts.out_high)
		return NGHTTP2_ERR_WOULDBLOCK;
	in = sr_bsock_input(s->sock);
	/* Nothing queued ahead of this frame: the transport takes the payload
	 * straight from the socket's input (no copy here). */
	if (c->cbs.on_data && evbuffer_get_length(out) == 0) {
		int rv = c->cbs.on_data(c, framehd, in, (size_t)(s->tx_sent - s->tx_acked), length,
					c->arg);
		if (rv == 0) {
			c->data_held = 1;
			s->tx_sent += length;
			tun_stream_read_resume(s);
			c->stats.bytes_to_tunnel += length;
			return 0;
		}
		if (rv == SR_EBUSY)
			return NGHTTP2_ERR_WOULDBLOCK;
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	/* One contiguous chain per frame, so the TLS layer encrypts it as a
	 * single record instead of a 9-byte record plus a payload record. */
	if (evbuffer_reserve_space(out, (ev_ssize_t)(9 + length), &v, 1) != 1 ||
	    v.iov_len < 9 + length)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	memcpy(v.iov_base, framehd, 9);
	/* The bytes stay at the front of the input until the peer acknowledges
	 * them (tun_stream_on_ack): a resumed stream may have to send them again. */
	{
		struct evbuffer_ptr pos;
		if (evbuffer_ptr_set(in, &pos, (size_t)(s->tx_sent - s->tx_acked),
				     EVBUFFER_PTR_SET) != 0 ||
		    evbuffer_copyout_from(in, &pos, (char *)v.iov_base + 9, length) !=
			    (ev_ssize_t)length)
			return NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	s->tx_sent += length;
	tun_stream_read_resume(s);
	v.iov_len = 9 + length;
	if (evbuffer_commit_space(out, &v, 1) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	c->stats.bytes_to_tunnel += length;
	return 0;
}

/* Without this callback nghttp2 cuts every DATA frame at 16 KiB, whatever
 * SETTINGS_MAX_FRAME_SIZE says; h2.max_frame (64 KiB by default) is what
 * we want: fewer frames to make and parse, and with several busy streams
 * the receiver writes one frame per socket write. nghttp2 clamps the answer
 * to both flow-control windows (a stream without credit never gets here),
 * so a frame cut by a window may end with a short TLS record. It also
 * grows its frame buffer to one frame and keeps it, hence the
 * TC_SEND_FRAME_MAX cap on what we send, whatever max_frame allows the
 * peer to send us. */
#define TC_SEND_FRAME_MAX (1u << 20)

static ssize_t h2_read_length_cb(nghttp2_session *h2, uint8_t type, int32_t id,
				 int32_t conn_window, int32_t stream_window, uint32_t peer_max,
				 void *user)
{
	struct tun_conn *c = user;
	uint32_t n = c->opts.max_frame < peer_max ? c->opts.max_frame : peer_max;

	(void)h2;
	(void)type;
	(void)id;
	(void)conn_window;
	(void)stream_window;
	if (n > TC_SEND_FRAME_MAX)
		n = TC_SEND_FRAME_MAX;
	/* 9 bytes short of whole TLS records (16 KiB each): a full frame and
	 * its header then seal into full records, with no 9-byte record left
	 * at its end (tun_records.h). n is at least 16384,
	 * HTTP/2's smallest SETTINGS_MAX_FRAME_SIZE. */
	if (n >= TUN_TLS_REC)
		n = n / TUN_TLS_REC * TUN_TLS_REC - 9;
	return (ssize_t)n;
}

static void flush_soon_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tun_conn_flush(arg);
}

/* An event made active now runs after every callback already active in
 * this iteration (libevent runs its active queue in order, one priority
 * here), so all sockets that epoll reported readable are read first. */
void tun_conn_flush_soon(struct tun_conn *c)
{
	if (!c->flush_ev && !(c->flush_ev = event_new(c->base, -1, 0, flush_soon_cb, c))) {
		tun_conn_flush(c); /* out of memory: at once */
		return;
	}
	event_active(c->flush_ev, EV_TIMEOUT, 0); /* once, however often asked */
}

void tun_conn_flush(struct tun_conn *c)
{
	int rv;

	if (c->in_h2) {
		c->want_flush = 1;
		return;
	}
	if (c->st != TC_ST_OPEN && c->st != TC_ST_GOAWAY)
		return;
	if (c->want_barrier && !c->barrier_out)
		barrier_soon(c);
	for (;;) {
		size_t before = evbuffer_get_length(c->out), after;
		do {
			c->want_flush = 0;
			c->in_h2 = 1;
			rv = nghttp2_session_send(c->h2);
			c->in_h2 = 0;
			if (rv != 0) {
				conn_fail(c, SR_EH2, nghttp2_strerror(rv));
				return;
			}
		} while (c->want_flush);
		after = evbuffer_get_length(c->out);
		if (after == before) {
			if (c->data_held && c->cbs.on_output) {
				c->data_held = 0;
				c->cbs.on_output(c, c->arg); /* frames the transport holds */
			}
			break;
		}
		c->data_held = 0; /* on_output below sends them too */
		if (c->cbs.on_output)
			c->cbs.on_output(c, c->arg); /* the transport usually takes it all */
		if (tun_conn_closing(c))
			return;
		/* nghttp2 stopped at out_high: if the transport made room, go on
		 * here rather than wait for a write event that may never come. */
		if (after < c->opts.out_high || evbuffer_get_length(c->out) >= c->opts.out_high ||
		    !nghttp2_session_want_write(c->h2))
			break;
	}
	/* ctl_out empty: nghttp2 has the last control bytes in a frame that it
	 * sends before anything submitted after it. */
	if (c->ctl_wait && evbuffer_get_length(c->ctl_out) == 0 && !tun_conn_closing(c)) {
		c->ctl_wait = 0;
		if (c->cbs.on_ctl_sent)
			c->cbs.on_ctl_sent(c, c->arg);
	}
	/* The sidecar sent GOAWAY with an error: nghttp2 found the relay breaking
	 * HTTP/2 (a flood, the reset rate limit). No new stream is taken after
	 * it, so a tunnel kept open would strand the executors still to come. */
	if (!tun_conn_closing(c) && c->role == TUN_ROLE_SIDECAR && c->goaway_sent_error) {
		char why[192];
		snprintf(why, sizeof(why),
			 "protocol error: relay broke HTTP/2 (sent GOAWAY %s%s%s)",
			 nghttp2_http2_strerror(c->goaway_sent_error),
			 c->goaway_sent_why[0] ? ": " : "", c->goaway_sent_why);
		conn_fail(c, SR_EPROTO, why);
		return;
	}
	if (!tun_conn_closing(c) && !nghttp2_session_want_read(c->h2) &&
	    !nghttp2_session_want_write(c->h2)) {
		char why[192];
		if (c->goaway_sent_error)
			snprintf(why, sizeof(why), "protocol error: peer broke HTTP/2 (%s%s%s)",
				 nghttp2_http2_strerror(c->goaway_sent_error),
				 c->goaway_sent_why[0] ? ": " : "", c->goaway_sent_why);
		else
			snprintf(why, sizeof(why), "HTTP/2 session finished");
		conn_fail(c, c->goaway_sent_error ? SR_EPROTO : 0, why);
	}
}

void tun_conn_consume_stream(struct tun_conn *c, int32_t id, size_t n)
{
	if (n && c->h2 && id > 0)
		nghttp2_session_consume_stream(c->h2, id, n); /* no-op once the stream is gone */
}

void tun_conn_consume_conn(struct tun_conn *c, size_t n)
{
	if (n && c->h2)
		nghttp2_session_consume_connection(c->h2, n);
}

void tun_conn_consume(struct tun_conn *c, int32_t id, size_t n)
{
	if (n == 0 || !c->h2)
		return;
	/* Also returns connection-level credit when the stream is gone. */
	if (id > 0)
		nghttp2_session_consume(c->h2, id, n);
	else
		nghttp2_session_consume_connection(c->h2, n);
}

/* RTT probes: PINGs whose payload starts with the bits 10 (barrier PINGs
 * count up from 1, the liveness PING is all zeros). The smallest round trip seen
 * stands for the path's propagation delay: samples taken under load also
 * hold queueing, which a larger window would only lengthen. */
#define TC_PROBE_TAG (2ull << 62)
#define TC_TAG_MASK (3ull << 62)
/* A window growth announcement (tun_conn_grow_window): the bits 11, then
 * the stream id (31 bits), then the growth in bytes (31 bits). */
#define TC_GROW_TAG (3ull << 62)
/* Our own SETTINGS parameter (from the experimental range): 1 = "this end
 * reads growth announcements", so the other end may grow its windows. */
#define TC_SETTINGS_WIN_GROWTH 0xf5a1
/* A probe at most this often while a stream may still grow. */
#define TC_PROBE_EVERY_US (10u * 1000u * 1000u)
#define TC_PROBE_FIRST 4 /* probes sent back to back before that pace */
/* How long ended streams wait for their barrier PING (barrier_soon). */
#define TC_BARRIER_DELAY_MS 10

static void rtt_sample(struct tun_conn *c, uint64_t rtt_us)
{
	c->stats.last_rtt_us = rtt_us;
	if (!c->stats.min_rtt_us || rtt_us < c->stats.min_rtt_us)
		c->stats.min_rtt_us = rtt_us;
	if (c->cbs.on_rtt)
		c->cbs.on_rtt(c, rtt_us, c->arg);
}

static void probe_send(struct tun_conn *c, uint64_t now)
{
	uint8_t opaque[8];
	uint64_t seq = (c->probe_seq + 1) | TC_PROBE_TAG;

	for (int i = 0; i < 8; i++)
		opaque[i] = (uint8_t)(seq >> (56 - 8 * i));
	if (nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque) == 0) {
		c->probe_seq = seq;
		c->probe_sent_us = now;
	}
}

/* The peer will send WINDOW_UPDATE beyond the bytes it received (a grown
 * window) on one stream: the next that many bytes of credit on it are no
 * acknowledgement. An announcement may run ahead of older credit (PINGs
 * overtake queued WINDOW_UPDATEs), which is then held back too, never
 * taken for more than it is.
 *
 * Bounded by the window the peer may have: the credit it gave and we have
 * not used (our send window) plus the growth it announced and has not
 * granted yet add up to at most its window, which HTTP/2 caps at 2^31-1
 * (RFC 9113 6.9.1) whatever its max_stream_window (ours says nothing about
 * its own). An announcement beyond that is a protocol error, not clamped: it
 * would turn later credit into acknowledgements of bytes never received,
 * which a resume then could not replay. Returns 0, or -1 for that error. */
static int on_growth_ping(struct tun_conn *c, const uint8_t *opaque)
{
	uint64_t v = 0, grow;
	struct tun_stream *s;
	int32_t id, win;

	for (int i = 0; i < 8; i++)
		v = v << 8 | opaque[i];
	if ((v & TC_TAG_MASK) != TC_GROW_TAG)
		return 0;
	id = (int32_t)((v >> 31) & 0x7fffffffu);
	if (id <= 0)
		return 0;
	s = nghttp2_session_get_stream_user_data(c->h2, id);
	if (!s || (s->flags & TS_F_CTL))
		return 0;
	grow = v & 0x7fffffffu;
	win = nghttp2_session_get_stream_remote_window_size(c->h2, id);
	if ((uint64_t)(win > 0 ? win : 0) + s->peer_grow + grow > NGHTTP2_MAX_WINDOW_SIZE)
		return -1;
	s->peer_grow += grow;
	return 0;
}

int tun_conn_grow_window(struct tun_conn *c, struct tun_stream *s, uint32_t win)
{
	uint8_t opaque[8];
	uint64_t v;
	int32_t cur;

	if (!c->peer_reads_growth || s->id <= 0 || tun_conn_closing(c))
		return -1;
	cur = nghttp2_session_get_stream_effective_local_window_size(c->h2, s->id);
	if (cur <= 0 || (uint32_t)cur >= win || win > 0x7fffffffu)
		return -1;
	v = TC_GROW_TAG | ((uint64_t)s->id << 31) | (uint64_t)(win - (uint32_t)cur);
	for (int i = 0; i < 8; i++)
		opaque[i] = (uint8_t)(v >> (56 - 8 * i));
	/* The announcement first: PINGs go out before any WINDOW_UPDATE
	 * queued with or after them (nghttp2's urgent queue). */
	if (nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque) != 0)
		return -1;
	if (nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, s->id,
						  (int32_t)win) != 0)
		return -1; /* announced, not granted: the peer only keeps more */
	return 0;
}

void tun_conn_rtt_probe(struct tun_conn *c)
{
	uint64_t now;

	if (tun_conn_closing(c) || c->st == TC_ST_NEW)
		return;
	now = sr_now_us();
	/* One in flight; one whose answer never came is given up after a while. */
	if (c->probe_sent_us && now - c->probe_sent_us < TC_PROBE_EVERY_US)
		return;
	/* The first samples follow each other: the one sent at start may have
	 * waited behind the handshake's work. */
	if (c->stats.min_rtt_us && c->probe_seq >= (TC_PROBE_TAG | TC_PROBE_FIRST) &&
	    now - c->probe_at_us < TC_PROBE_EVERY_US)
		return;
	c->probe_at_us = now;
	probe_send(c, now);
}

/* ---- nghttp2 callbacks --------------------------------------------------- */

static int h2_on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s;

	if (c->role != TUN_ROLE_SIDECAR || frame->hd.type != NGHTTP2_HEADERS ||
	    frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	if (c->st != TC_ST_OPEN) {
		nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
					  NGHTTP2_REFUSED_STREAM);
		return 0; /* no stream object: the rest of its frames are ignored */
	}
	s = tun_stream_new(c, NULL);
	if (!s) {
		nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
					  NGHTTP2_INTERNAL_ERROR);
		return 0;
	}
	s->id = frame->hd.stream_id;
	nghttp2_session_set_stream_user_data(h2, s->id, s);
	return 0;
}

static void copy_hdr(char *dst, size_t dstlen, const uint8_t *v, size_t len)
{
	if (len >= dstlen)
		len = dstlen - 1; /* oversize values are rejected by validation below */
	memcpy(dst, v, len);
	dst[len] = '\0';
}

/* sparkrelay-conn: 1..20 decimal digits that fit in 64 bits. */
static int parse_conn_id(const uint8_t *v, size_t len, uint64_t *out)
{
	uint64_t n = 0;

	if (len == 0 || len > 20)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned d = (unsigned)v[i] - '0';
		if (d > 9 || n > (UINT64_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	*out = n;
	return 0;
}

/* Sidecar: one request header of a CONNECT. A header that breaks its rule,
 * or comes twice, marks the stream, which sidecar_on_request then refuses. */
static void sidecar_header(struct tun_stream *s, const uint8_t *name, size_t namelen,
			   const uint8_t *value, size_t valuelen)
{
#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
	struct ts_req *r = s->req;

	if (!r && !(r = s->req = calloc(1, sizeof(*r)))) {
		s->bad_header = "(out of memory)";
		return;
	}
	if (IS(":method")) {
		copy_hdr(r->method, sizeof(r->method), value, valuelen);
	} else if (IS(":authority")) {
		copy_hdr(r->authority, valuelen < sizeof(r->authority) ? sizeof(r->authority) : 1,
			 value, valuelen);
	} else if (IS(":path")) {
		copy_hdr(r->path, valuelen < sizeof(r->path) ? sizeof(r->path) : 1, value,
			 valuelen);
	} else if (IS(HDR_LEASE)) {
		/* Never truncated: a cut value could equal a shorter lease id. */
		if (r->lease[0] || valuelen >= sizeof(r->lease)) {
			s->bad_header = HDR_LEASE;
			return;
		}
		copy_hdr(r->lease, sizeof(r->lease), value, valuelen);
		if (!tun_ctl_valid_lease_id(r->lease))
			s->bad_header = HDR_LEASE;
	} else if (IS(HDR_PEER)) {
		/* Only names the executor in log lines, escaped there. */
		copy_hdr(s->peer, sizeof(s->peer), value, valuelen);
	} else if (IS(HDR_CONN)) {
		if ((s->flags & TS_F_CONN_HDR) || parse_conn_id(value, valuelen, &s->conn_id) != 0)
			s->bad_header = HDR_CONN;
		s->flags |= TS_F_CONN_HDR;
	} else if (IS(HDR_RESUME)) {
		if ((s->flags & TS_F_RESUME_HDR) ||
		    parse_resume(value, valuelen, &s->peer_rx, &s->peer_fin, &s->peer_rst) != 0)
			s->bad_header = HDR_RESUME;
		s->flags |= TS_F_RESUME_HDR;
	}
#undef IS
}

static int h2_on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name,
			size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
			void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s;

	if (frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	s = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
	if (!s)
		return 0;
	if (c->role == TUN_ROLE_RELAY) {
		/* The response to our request: :status, and on a resumed stream
		 * how much of ours the sidecar has. */
		if (namelen == 7 && memcmp(name, ":status", 7) == 0 &&
		    !(valuelen == 3 && memcmp(value, "200", 3) == 0)) {
			s->h2_error = NGHTTP2_CONNECT_ERROR;
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		}
		if (namelen == sizeof(HDR_RESUME) - 1 && memcmp(name, HDR_RESUME, namelen) == 0) {
			if ((s->flags & TS_F_RESUME_HDR) ||
			    parse_resume(value, valuelen, &s->peer_rx, &s->peer_fin,
					 &s->peer_rst) != 0)
				return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
			s->flags |= TS_F_RESUME_HDR;
		}
		return 0;
	}
	sidecar_header(s, name, namelen, value, valuelen);
	return 0;
}

/* The only target a relay may name: "127.0.0.1:<1..65535>", digits without a
 * sign or leading zero. "localhost" is refused too: the sidecar dials
 * 127.0.0.1 whatever the name says, so accepting a second spelling would only
 * blur what the relay asked for (and a name is not always 127.0.0.1). */
static int parse_authority_port(const char *auth, uint16_t *port)
{
	static const char host[] = "127.0.0.1:";
	const char *p = auth + sizeof(host) - 1;
	unsigned long v = 0;
	size_t n = 0;

	if (strncmp(auth, host, sizeof(host) - 1) != 0)
		return SR_EDENIED;
	for (; p[n] >= '0' && p[n] <= '9' && n < 6; n++)
		v = v * 10 + (unsigned long)(p[n] - '0');
	if (n == 0 || n > 5 || p[n] != '\0' || p[0] == '0' || v > 65535)
		return SR_EINVAL;
	*port = (uint16_t)v;
	return 0;
}

/* Streams the sidecar refuses. A legitimate relay opens none; a hostile one
 * can open one per HEADERS frame of a few bytes, each a log line a dozen
 * times its size, in a log nobody rotates. So the first
 * TUN_REFUSED_LOG_BURST of a period are written, then none until the next,
 * whose first line counts those left out. */
#define TUN_REFUSED_LOG_BURST 20
#define TUN_REFUSED_LOG_PERIOD_US (10ull * 1000000)

void tun_conn_log_refused(struct tun_conn *c, const char *fmt, ...)
{
	char msg[512];
	uint64_t more = 0;
	va_list ap;

	if (!sr_ratelog_allow_n(&c->lim->rl_refused, sr_now_us(), TUN_REFUSED_LOG_PERIOD_US,
				TUN_REFUSED_LOG_BURST, &more))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (more)
		SR_WARN(c->logctx, "%s (%llu more streams refused and not logged before this)",
			msg, (unsigned long long)more);
	else
		SR_WARN(c->logctx, "%s", msg);
}

/* One token from b, which holds at most burst and gains rate a second;
 * 0 if it is empty. */
static int bucket_take(struct tun_bucket *b, unsigned burst, unsigned rate)
{
	const uint64_t cap = burst * 1000ull;
	uint64_t now = sr_now_us();
	uint64_t t = b->mtokens + (now - b->at_us) * rate / 1000u;

	b->mtokens = t < cap ? t : cap;
	b->at_us = now;
	if (b->mtokens < 1000)
		return 0;
	b->mtokens -= 1000;
	return 1;
}

static void bucket_fill(struct tun_bucket *b, unsigned burst, uint64_t now_us)
{
	b->mtokens = burst * 1000ull;
	b->at_us = now_us;
}

static void limits_fill(struct tun_limits *l)
{
	uint64_t now = sr_now_us();

	memset(l, 0, sizeof(*l));
	bucket_fill(&l->early_rst, SC_EARLY_RST_BURST, now);
}

struct tun_limits *tun_limits_new(void)
{
	struct tun_limits *l = malloc(sizeof(*l));

	if (l)
		limits_fill(l);
	return l;
}

void tun_limits_free(struct tun_limits *l)
{
	free(l);
}

/* Whether one more stream reset before its answer fits the sidecar's budget
 * (SC_EARLY_RST_*). */
static int early_reset_allowed(struct tun_conn *c)
{
	return bucket_take(&c->lim->early_rst, SC_EARLY_RST_BURST, SC_EARLY_RST_RATE);
}

static ssize_t ctl_read_cb(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
			   uint32_t *data_flags, nghttp2_data_source *src, void *user)
{
	struct tun_conn *c = user;
	int n = evbuffer_remove(c->ctl_out, buf, length);

	if (n > 0)
		return n;
	if (tun_conn_closing(c)) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		return 0;
	}
	c->ctl->flags |= TS_F_DEFERRED;
	return NGHTTP2_ERR_DEFERRED;
}

/* Sidecar: a resumed CONNECT (sparkrelay-resume): the held stream with that
 * id takes over from the placeholder *sp. */
static int sidecar_on_resume(struct tun_conn *c, struct tun_stream **sp)
{
	struct tun_stream *p = *sp, *s;
	uint32_t rst = NGHTTP2_REFUSED_STREAM;

	if (!c->group) {
		tun_conn_log_refused(c, "stream %d refused: resumed before the lease", p->id);
		return NGHTTP2_REFUSED_STREAM;
	}
	s = tun_group_take(c->group, c, p, &rst);
	if (!s)
		return (int)rst;
	/* The placeholder goes; nghttp2 now names the held stream. */
	if (p->prev)
		p->prev->next = p->next;
	else
		c->streams = p->next;
	if (p->next)
		p->next->prev = p->prev;
	c->stats.streams_active--;
	tun_stream_free(p);
	*sp = s;
	if (s->st == TS_ST_OPEN) {
		if (tun_conn_submit_response(c, s) != 0)
			return NGHTTP2_INTERNAL_ERROR;
		tun_stream_start_reading(s);
	} /* else still connecting to the driver: answered when connected */
	return 0;
}

static int sidecar_on_request(struct tun_conn *c, struct tun_stream **sp)
{
	struct tun_stream *s = *sp;
	static const nghttp2_nv ok[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3,
					 NGHTTP2_NV_FLAG_NONE}};
	nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = ctl_read_cb};
	struct tun_connect_req req;
	struct sr_bsock *sock;
	int connected = 0;
	const struct ts_req *r = s->req;

	if (!r)
		return NGHTTP2_INTERNAL_ERROR; /* sidecar_header ran out of memory */
	if (strcmp(r->method, "POST") == 0 && strcmp(r->path, TUN_CTL_PATH) == 0) {
		if (c->ctl) {
			tun_conn_log_refused(c, "stream %d refused: a second control stream", s->id);
			return NGHTTP2_PROTOCOL_ERROR;
		}
		c->ctl = s;
		s->flags |= TS_F_CTL;
		prd.source.ptr = s;
		if (nghttp2_submit_response(c->h2, s->id, ok, 1, &prd) != 0)
			return NGHTTP2_INTERNAL_ERROR;
		s->flags |= TS_F_RESPONDED;
		if (c->cbs.on_ctl_open)
			c->cbs.on_ctl_open(c, c->arg);
		return 0;
	}
	if (strcmp(r->method, "CONNECT") != 0 || !c->ctl) {
		char mbuf[SR_ESC_SIZE(sizeof(r->method))];
		tun_conn_log_refused(c, "stream %d refused: method \"%s\" %s", s->id,
				     sr_esc(r->method, mbuf, sizeof(mbuf)),
				     c->ctl ? "is not CONNECT" : "before the control stream");
		return NGHTTP2_REFUSED_STREAM;
	}
	if (parse_authority_port(r->authority, &s->port) != 0) {
		char abuf[SR_ESC_SIZE(sizeof(r->authority))];
		tun_conn_log_refused(c, "stream %d refused: target \"%s\" is not 127.0.0.1:<port>",
				     s->id, sr_esc(r->authority, abuf, sizeof(abuf)));
		return NGHTTP2_REFUSED_STREAM;
	}
	if (!s->bad_header && !(s->flags & TS_F_CONN_HDR))
		s->bad_header = HDR_CONN;
	if (s->bad_header) {
		tun_conn_log_refused(c, "stream %d refused: %s header missing, repeated or malformed",
				     s->id, s->bad_header);
		return NGHTTP2_REFUSED_STREAM;
	}
	if (s->flags & TS_F_RESUME_HDR)
		return sidecar_on_resume(c, sp);
	/* Streams held for a resume keep their driver connections: those lost
	 * from this tunnel slot count against max_streams with those open (s
	 * and the control stream included), or a relay that opens streams and
	 * drops the tunnel, again and again, would hold max_streams more each
	 * time for hold_ms. (Those of another slot, with tunnel.connections 2,
	 * count on that slot's next tunnel, which resumes them.) */
	if (c->group) {
		size_t held = tun_group_held_slot(c->group, c->slot);
		if (held && held + tun_conn_nstreams(c) + 1 > c->opts.max_streams) {
			tun_conn_log_refused(
			    c,
			    "stream %d refused: %zu streams held for a resume and "
			    "%zu open reach tunnel.h2.max_streams (%u)",
			    s->id, held, tun_conn_nstreams(c), c->opts.max_streams);
			return NGHTTP2_REFUSED_STREAM;
		}
	}
	req.port = s->port;
	req.lease = r->lease;
	req.conn_id = s->conn_id;
	req.peer = s->peer;
	req.connected = &connected;
	sock = c->cbs.on_connect ? c->cbs.on_connect(c, &req, c->arg) : NULL;
	if (!sock)
		return NGHTTP2_REFUSED_STREAM;
	if (tun_stream_attach(s, sock) != 0)
		return NGHTTP2_INTERNAL_ERROR; /* attach freed sock */
	tun_stream_go(s, TS_ST_CONNECTING, "dialling the driver");
	c->stats.streams_opened++;
	if (connected)
		tun_stream_connected(s); /* inside a callback: the flush is deferred */
	return 0;
}

/* Relay: the sidecar answered a CONNECT. A resumed stream starts to send
 * now, from what the sidecar says it has. Returns -1 if s was reset. */
static int relay_on_answer(struct tun_conn *c, struct tun_stream *s)
{
	s->flags |= TS_F_ANSWER_SEEN;
	if (s->flags & TS_F_RST_LATER) {
		/* the executor went before the answer: the reset goes now */
		s->flags &= ~TS_F_RST_LATER;
		nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id,
					  NGHTTP2_CONNECT_ERROR);
		return -1;
	}
	if (!(s->flags & TS_F_RESUMING))
		return 0;
	s->flags &= ~TS_F_RESUMING;
	/* Counted before tun_group_answered: the last answer reports them. */
	if (!(s->flags & TS_F_RESUME_HDR) || tun_stream_apply_peer_rx(s) != 0) {
		if (c->group) {
			c->group->st.lost[TUN_LOST_MISMATCH]++;
			tun_group_answered(c->group, s);
		}
		SR_WARN(c->logctx, "conn=%llu: the sidecar's resume point does not match ours; "
				   "resetting the stream",
			(unsigned long long)s->conn_id);
		tun_conn_reset_stream(c, s, NGHTTP2_CONNECT_ERROR);
		tun_stream_kill(s, 1);
		return -1;
	}
	if (c->group) {
		c->group->st.resumed++;
		tun_group_answered(c->group, s);
	}
	if (s->flags & TS_F_DEFERRED) {
		s->flags &= ~TS_F_DEFERRED;
		nghttp2_session_resume_data(c->h2, s->id);
	}
	tun_stream_start_reading(s);
	return 0;
}

static int h2_on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s = NULL;

	if (frame->hd.stream_id)
		s = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);

	switch (frame->hd.type) {
	case NGHTTP2_WINDOW_UPDATE:
		/* Credit comes back only for bytes the peer has received: those
		 * need no replay. The exception, window growth, was announced
		 * before it (on_growth_ping) and is not an acknowledgement. */
		if (s && !(s->flags & TS_F_CTL)) {
			uint64_t n = (uint32_t)frame->window_update.window_size_increment;
			uint64_t g = n < s->peer_grow ? n : s->peer_grow;

			s->peer_grow -= g;
			if (n > g)
				tun_stream_on_ack(s, (uint32_t)(n - g));
		}
		break;
	case NGHTTP2_SETTINGS:
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) &&
		    !bucket_take(&c->settings_in, TUN_SETTINGS_BURST, TUN_SETTINGS_RATE)) {
			conn_fail(c, SR_EPROTO, "protocol error: peer sends SETTINGS faster than "
						"the tunnel allows (a SETTINGS flood)");
			return NGHTTP2_ERR_CALLBACK_FAILURE; /* read no further */
		}
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
			for (size_t i = 0; i < frame->settings.niv; i++)
				if (frame->settings.iv[i].settings_id == TC_SETTINGS_WIN_GROWTH)
					c->peer_reads_growth = frame->settings.iv[i].value == 1;
		break;
	case NGHTTP2_PING:
		if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) &&
		    on_growth_ping(c, frame->ping.opaque_data) != 0) {
			conn_fail(c, SR_EPROTO,
				  "protocol error: window growth announced beyond the largest "
				  "HTTP/2 window");
			return NGHTTP2_ERR_CALLBACK_FAILURE; /* read no further */
		}
		if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
			uint64_t seq = 0;
			for (int i = 0; i < 8; i++)
				seq = seq << 8 | frame->ping.opaque_data[i];
			if (seq & TC_TAG_MASK) {
				if (c->probe_sent_us && seq == c->probe_seq) {
					rtt_sample(c, sr_now_us() - c->probe_sent_us);
					c->probe_sent_us = 0;
				}
			} else if (seq) {
				barrier_acked(c, seq);
			} else if (c->ping_sent_us) {
				rtt_sample(c, sr_now_us() - c->ping_sent_us);
				c->ping_sent_us = 0;
			}
		}
		break;
	case NGHTTP2_GOAWAY:
		if (c->st == TC_ST_OPEN)
			tun_conn_go(c, TC_ST_GOAWAY);
		/* Logged once: a peer may send GOAWAY after GOAWAY. */
		if (!c->peer_goaway)
			SR_INFO(c->logctx, "peer sent GOAWAY (%s)",
				nghttp2_http2_strerror(frame->goaway.error_code));
		c->peer_goaway = 1;
		break;
	case NGHTTP2_RST_STREAM:
		SR_DEBUG(c->logctx, "stream=%d: RST_STREAM received (%s)%s", frame->hd.stream_id,
			 nghttp2_http2_strerror(frame->rst_stream.error_code), s ? "" : " (no stream)");
		if (c->role == TUN_ROLE_RELAY && s && c->cbs.on_refused &&
		    frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM &&
		    !(s->flags & (TS_F_CTL | TS_F_ANSWER_SEEN | TS_F_RESUMING)))
			c->cbs.on_refused(c, s->conn_id, s->port, c->arg);
		if (c->role == TUN_ROLE_SIDECAR && s &&
		    !(s->flags & (TS_F_CTL | TS_F_HDRS_SENT)) && !early_reset_allowed(c)) {
			char why[160];
			snprintf(why, sizeof(why),
				 "protocol error: relay resets streams before they are answered "
				 "faster than %d/s (rapid reset)",
				 SC_EARLY_RST_RATE);
			conn_fail(c, SR_EPROTO, why);
			return NGHTTP2_ERR_CALLBACK_FAILURE; /* read no further */
		}
		break;
	case NGHTTP2_HEADERS:
		if (!s)
			break;
		if (c->role == TUN_ROLE_SIDECAR && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
			int code = sidecar_on_request(c, &s);

			free(s->req); /* s may be another stream now, without one */
			s->req = NULL;
			if (code) {
				nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
							  (uint32_t)code);
				break;
			}
		}
		if (c->role == TUN_ROLE_RELAY && frame->headers.cat == NGHTTP2_HCAT_RESPONSE &&
		    relay_on_answer(c, s) != 0)
			break;
		if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && (s->flags & TS_F_CTL)) {
			/* trailers ending it, as DATA with END_STREAM below */
			conn_fail(c, SR_EPROTO, "control stream ended by peer");
			return NGHTTP2_ERR_CALLBACK_FAILURE;
		}
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			tun_stream_on_peer_eof(s);
		break;
	case NGHTTP2_DATA:
		if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
			if (s->flags & TS_F_CTL) {
				/* The control stream lives as long as the tunnel. */
				conn_fail(c, SR_EPROTO, "control stream ended by peer");
				return NGHTTP2_ERR_CALLBACK_FAILURE; /* read no further */
			}
			tun_stream_on_peer_eof(s);
		}
		break;
	default:
		break;
	}
	return 0;
}

static int h2_on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
			    size_t len, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s = nghttp2_session_get_stream_user_data(h2, id);

	if (!s) {
		tun_conn_consume(c, id, len);
		return 0;
	}
	if (s->flags & TS_F_CTL) {
		tun_conn_consume(c, id, len);
		/* Bounded: the decoder rejects frames over ctl_max, so anything
		 * beyond one frame plus its prefix is a peer flooding us. */
		if (evbuffer_get_length(c->ctl_in) + len > (size_t)c->opts.ctl_max + 8u * 1024) {
			conn_fail(c, SR_ETOOBIG, "control stream over its size cap");
			return NGHTTP2_ERR_CALLBACK_FAILURE;
		}
		evbuffer_add(c->ctl_in, data, len);
		return NGHTTP2_ERR_PAUSE; /* deliver it before the next frame */
	}
	tun_stream_on_data(s, data, len);
	return 0;
}

static int h2_on_stream_close(nghttp2_session *h2, int32_t id, uint32_t error_code, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s = nghttp2_session_get_stream_user_data(h2, id);

	if (!s)
		return 0;
	if (s->flags & TS_F_CTL) {
		s->flags |= TS_F_H2_CLOSED;
		if (tun_conn_closing(c))
			return 0;
		conn_fail(c, SR_EPROTO, "control stream closed by peer");
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	if (s->flags & TS_F_RESUMING) {
		s->flags &= ~TS_F_RESUMING;
		/* Never established at the sidecar (no answer ever came, so
		 * nothing was acknowledged either): open it afresh, sending
		 * everything from the first byte. */
		if (error_code == NGHTTP2_REFUSED_STREAM && !(s->flags & TS_F_ANSWER_SEEN) &&
		    s->tx_acked == 0 && s->st == TS_ST_OPEN && !tun_conn_closing(c)) {
			nghttp2_session_set_stream_user_data(h2, id, NULL);
			s->tx_sent = 0;
			if (tun_conn_submit_connect(c, s, 0) == 0) {
				c->stats.streams_opened++;
				tun_stream_start_reading(s);
				if (c->group)
					tun_group_answered(c->group, s);
				return 0;
			}
		}
		if (s->st >= TS_ST_DEAD) {
			/* A tombstone: the sidecar has our reset now. */
			s->flags |= TS_F_TOMB_DONE;
		} else if (error_code != NGHTTP2_REFUSED_STREAM) {
			/* The sidecar reset it while the tunnel was away: a reset,
			 * carried as one below. */
		} else if ((s->flags & TS_F_FIN_SENT) && s->down != TS_DIR_OPEN) {
			/* Complete at both ends before the tunnel died: the sidecar
			 * forgot it after receiving everything. End it cleanly. */
			error_code = NGHTTP2_NO_ERROR;
		} else if (c->group) {
			c->group->st.lost[TUN_LOST_UNKNOWN]++;
		}
		/* After the count: the last answer reports the resume. */
		if (c->group)
			tun_group_answered(c->group, s);
	}
	tun_stream_on_h2_close(s, error_code);
	if (s->st < TS_ST_DEAD && !s->sock)
		tun_stream_kill(s, 0);
	tun_stream_maybe_reap(s);
	return 0;
}

static int h2_on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;

	if (frame->hd.stream_id > 0 &&
	    (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA)) {
		struct tun_stream *s = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
		if (s && frame->hd.type == NGHTTP2_HEADERS)
			s->flags |= TS_F_HDRS_SENT;
		if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
			s->flags |= TS_F_FIN_SENT;
			SR_DEBUG(c->logctx, "conn=%llu stream=%d: END_STREAM sent",
				 (unsigned long long)s->conn_id, s->id);
		}
	}
	if (frame->hd.type == NGHTTP2_RST_STREAM)
		SR_DEBUG(c->logctx, "stream=%d: RST_STREAM sent (%s)", frame->hd.stream_id,
			 nghttp2_http2_strerror(frame->rst_stream.error_code));
	if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR &&
	    !c->goaway_sent_error) {
		char raw[sizeof(c->goaway_sent_why)];
		size_t n = frame->goaway.opaque_data_len;

		c->goaway_sent_error = frame->goaway.error_code; /* tun_conn_flush acts on it */
		if (n > sizeof(raw) - 1)
			n = sizeof(raw) - 1;
		if (n)
			memcpy(raw, frame->goaway.opaque_data, n);
		raw[n] = '\0'; /* not NUL-terminated in the frame */
		sr_mask_n(raw, 0, c->goaway_sent_why, sizeof(c->goaway_sent_why));
	}
	return 0;
}

static int h2_on_invalid_frame(nghttp2_session *h2, const nghttp2_frame *frame, int err,
			       void *user)
{
	struct tun_conn *c = user;
	SR_DEBUG(c->logctx, "invalid frame type %d on stream %d: %s", frame->hd.type,
		 frame->hd.stream_id, nghttp2_strerror(err));
	return 0;
}

/* ---- lifecycle ------------------------------------------------------------ */

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;

	while (c->dead) {
		struct tun_stream *s = c->dead;
		c->dead = s->next;
		if (s == c->ctl)
			c->ctl = NULL;
		tun_stream_free(s);
	}
	if (!tun_conn_closing(c)) {
		tun_conn_flush(c);
		return;
	}
	if (c->st == TC_ST_CLOSED)
		return;
	if (c->flushing && evbuffer_get_length(c->out) > 0)
		return; /* tun_conn_output_drained or close_ev brings us back */
	tun_conn_go(c, TC_ST_CLOSED);
	evtimer_del(c->close_ev);
	if (c->cbs.on_closed)
		c->cbs.on_closed(c, c->close_err, c->arg); /* may free c */
}

void tun_conn_schedule_reap(struct tun_conn *c)
{
	if (!event_pending(c->reap_ev, EV_TIMEOUT, NULL))
		event_active(c->reap_ev, EV_TIMEOUT, 0);
}

static void close_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;
	c->flushing = 0; /* the final flush did not finish in time: give up on it */
	tun_conn_schedule_reap(c);
}

/* The session is over. With hold and a group (protocol v2), every stream
 * whose socket lives is handed to the group, to be resumed on the next
 * tunnel; the others, and all of them without, end here (executors see a
 * reset). tun_conn_closing(c) is set, so killed streams move to the dead
 * list. */
static void end_all_streams(struct tun_conn *c, int hold)
{
	struct tun_group *g = hold ? c->group : NULL;

	tun_stream_writeq_drop(c);
	c->linger = NULL;
	while (c->streams) {
		struct tun_stream *s = c->streams;
		int tomb = s->st == TS_ST_DEAD && (s->flags & TS_F_RST_SENT) &&
			   !(s->flags & TS_F_TOMB_DONE);
		if (s->st >= TS_ST_DEAD && !(g && tomb)) {
			s->flags &= ~TS_F_LINGER;
			tun_stream_maybe_reap(s);
		} else if (g && !(s->flags & TS_F_CTL) && s->st != TS_ST_NEW) {
			tun_stream_unbind(s);
			tun_group_hold(g, s);
		} else {
			tun_stream_kill(s, !(s->flags & TS_F_CTL));
		}
	}
}

static void conn_fail(struct tun_conn *c, int err, const char *why)
{
	if (tun_conn_closing(c))
		return;
	tun_conn_go(c, TC_ST_CLOSING);
	c->close_err = err;
	if (err == 0 || err == SR_ECLOSED)
		SR_INFO(c->logctx, "tunnel closed: %s", why);
	else
		SR_WARN(c->logctx, "tunnel closed: %s", why);
	/* Not the owner's decision: the streams wait for the next tunnel. */
	end_all_streams(c, 1);
	tun_conn_schedule_reap(c);
}

static void conn_close(struct tun_conn *c, int err, int hold)
{
	struct timeval tv = {2, 0};

	if (tun_conn_closing(c))
		return;
	tun_conn_go(c, TC_ST_CLOSING);
	c->close_err = err;
	end_all_streams(c, hold);
	nghttp2_session_terminate_session(c->h2, err ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_NO_ERROR);
	/* Flush GOAWAY and the last control message, bounded in time. */
	c->flushing = 1;
	if (!c->in_h2 && c->started_once) {
		size_t before = evbuffer_get_length(c->out);
		c->in_h2 = 1;
		(void)nghttp2_session_send(c->h2);
		c->in_h2 = 0;
		if ((evbuffer_get_length(c->out) > before || c->data_held) && c->cbs.on_output) {
			c->data_held = 0;
			c->cbs.on_output(c, c->arg);
		}
	}
	evtimer_add(c->close_ev, &tv);
	tun_conn_schedule_reap(c);
}

void tun_conn_close(struct tun_conn *c, int err)
{
	conn_close(c, err, 0);
}

void tun_conn_close_hold(struct tun_conn *c, int err)
{
	conn_close(c, err, 1);
}

void tun_conn_goaway(struct tun_conn *c)
{
	if (c->st != TC_ST_OPEN)
		return;
	tun_conn_go(c, TC_ST_GOAWAY);
	nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
			      nghttp2_session_get_last_proc_stream_id(c->h2), NGHTTP2_NO_ERROR,
			      NULL, 0);
	tun_conn_flush(c);
}

/* Liveness: a PING once nothing has come for ping_interval_ms, the end once
 * nothing has come for ping_timeout_ms. The timer is set for the next of
 * those two moments (not polled), so a timeout fires when it is due. */
static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;
	uint64_t now = sr_now_us();
	uint64_t idle = now - c->last_recv_us;
	uint64_t interval = (uint64_t)c->opts.ping_interval_ms * 1000u;
	uint64_t timeout = (uint64_t)c->opts.ping_timeout_ms * 1000u;
	uint64_t next;
	struct timeval tv;

	if (tun_conn_closing(c))
		return;
	if (idle >= timeout) {
		char why[96];
		snprintf(why, sizeof(why), "peer silent for %" PRIu64 " ms (ping timeout)",
			 idle / 1000u);
		conn_fail(c, SR_ETIMEDOUT, why);
		return;
	}
	/* A peer that sends frames but leaves our barrier PING unanswered
	 * would keep every stream that ended since lingering (tun_conn.c,
	 * "barrier"), memory that grows with its executors' connections. */
	if (c->barrier_out && now - c->barrier_sent_us >= timeout) {
		char why[96];
		snprintf(why, sizeof(why), "protocol error: peer left a PING unanswered for %" PRIu64
					   " ms",
			 (now - c->barrier_sent_us) / 1000u);
		conn_fail(c, SR_EPROTO, why);
		return;
	}
	if (c->ping_sent_us && idle < interval)
		c->ping_sent_us = 0; /* traffic arrived; a lost ACK is no failure */
	if (idle >= interval && !c->ping_sent_us) {
		c->ping_sent_us = now;
		nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
		tun_conn_flush(c);
	}
	next = (idle < interval ? interval : timeout) - idle;
	if (next < 10000)
		next = 10000;
	tv = sr_tv_ms(next / 1000u);
	tv.tv_usec += (suseconds_t)(next % 1000u);
	event_add(c->ping_ev, &tv);
}

int tun_conn_submit_response(struct tun_conn *c, struct tun_stream *s)
{
	static const nghttp2_nv ok[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3,
					 NGHTTP2_NV_FLAG_NONE}};
	nghttp2_data_provider prd = tun_stream_data_prd;

	char rbuf[32];
	nghttp2_nv nva[2] = {ok[0]};

	if (s->flags & (TS_F_RESPONDED | TS_F_H2_CLOSED))
		return 0;
	if (s->flags & TS_F_RESUME_HDR) {
		resume_value(s, rbuf, sizeof(rbuf));
		nva[1] = (nghttp2_nv){(uint8_t *)HDR_RESUME, (uint8_t *)rbuf,
				      sizeof(HDR_RESUME) - 1, strlen(rbuf), NGHTTP2_NV_FLAG_NONE};
	}
	prd.source.ptr = s;
	if (nghttp2_submit_response(c->h2, s->id, nva, (s->flags & TS_F_RESUME_HDR) ? 2 : 1,
				    &prd) != 0)
		return SR_EH2;
	s->flags |= TS_F_RESPONDED;
	return 0;
}

void tun_conn_reset_stream(struct tun_conn *c, struct tun_stream *s, uint32_t code)
{
	s->flags |= TS_F_RST_SENT;
	if (s->id <= 0 || (s->flags & TS_F_H2_CLOSED))
		return;
	/* Relay: a stream the sidecar has, and has not answered yet, is reset
	 * once it has answered. A sidecar ends a tunnel whose relay resets
	 * streams before their answer faster than SC_EARLY_RST_RATE (a
	 * rapid-reset attack costs it a connect() to the driver each), and
	 * executors that give up at once (a crash loop, a scanner, a client's
	 * own timeout) would do just that through an honest relay. The
	 * sidecar is connecting to the driver anyway; the reset reaches it a
	 * round trip later. A CONNECT still queued here is cancelled by the
	 * reset instead (nghttp2 drops the HEADERS): the sidecar never sees it. */
	if (c->role == TUN_ROLE_RELAY && (s->flags & TS_F_HDRS_SENT) &&
	    !(s->flags & (TS_F_CTL | TS_F_ANSWER_SEEN | TS_F_RESUMING))) {
		s->flags |= TS_F_RST_LATER;
		return;
	}
	nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, code);
}

struct tun_conn *tun_conn_new(struct event_base *base, enum tun_role role,
			      const struct tun_conn_opts *opts, const struct tun_conn_cbs *cbs,
			      void *arg, const char *logctx)
{
	struct tun_conn *c;
	nghttp2_session_callbacks *hcb = NULL;
	nghttp2_option *hopt = NULL;
	nghttp2_settings_entry iv[6];
	size_t niv = 0;
	int rv;

	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->base = base;
	c->role = role;
	c->opts = *opts;
	tun_conn_opts_defaults(&c->opts);
	c->cbs = *cbs;
	c->arg = arg;
	tun_conn_set_logctx(c, logctx);
	c->last_recv_us = sr_now_us();
	bucket_fill(&c->settings_in, TUN_SETTINGS_BURST, c->last_recv_us);
	c->lim = opts->limits ? opts->limits : &c->own_limits;
	if (!opts->limits)
		limits_fill(&c->own_limits);

	c->ctl_in = evbuffer_new();
	c->ctl_out = evbuffer_new();
	c->out = evbuffer_new();
	c->reap_ev = event_new(base, -1, 0, reap_cb, c);
	c->close_ev = evtimer_new(base, close_timeout_cb, c);
	c->ping_ev = evtimer_new(base, ping_cb, c);
	if (!c->ctl_in || !c->ctl_out || !c->out || !c->reap_ev || !c->close_ev || !c->ping_ev)
		goto fail;

	if (nghttp2_session_callbacks_new(&hcb) != 0 || nghttp2_option_new(&hopt) != 0)
		goto fail;
	nghttp2_session_callbacks_set_send_callback(hcb, h2_send_cb);
	nghttp2_session_callbacks_set_send_data_callback(hcb, h2_send_data_cb);
	nghttp2_session_callbacks_set_data_source_read_length_callback(hcb, h2_read_length_cb);
	nghttp2_session_callbacks_set_on_frame_recv_callback(hcb, h2_on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(hcb, h2_on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(hcb, h2_on_stream_close);
	nghttp2_session_callbacks_set_on_header_callback(hcb, h2_on_header);
	nghttp2_session_callbacks_set_on_begin_headers_callback(hcb, h2_on_begin_headers);
	nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(hcb, h2_on_invalid_frame);
	nghttp2_session_callbacks_set_on_frame_send_callback(hcb, h2_on_frame_send);

	nghttp2_option_set_no_auto_window_update(hopt, 1);
	nghttp2_option_set_no_closed_streams(hopt, 1);
	nghttp2_option_set_peer_max_concurrent_streams(hopt, c->opts.max_streams);
	/* Executors come and go, often with resets; nghttp2's default incoming
	 * reset limit (1000 burst, 33/s) would end a busy tunnel (issue #1984).
	 * The sidecar's limit is bounded all the same (SC_RST_*). */
	if (role == TUN_ROLE_SIDECAR)
		nghttp2_option_set_stream_reset_rate_limit(hopt, SC_RST_BURST, SC_RST_RATE);
	else
		nghttp2_option_set_stream_reset_rate_limit(hopt, 1u << 30, 1u << 30);
	/* Each INITIAL_WINDOW_SIZE entry walks every stream of the session:
	 * few entries a frame (ours carry 5), few frames (TUN_SETTINGS_*). */
	nghttp2_option_set_max_settings(hopt, TUN_SETTINGS_MAX);

	if (role == TUN_ROLE_RELAY)
		rv = nghttp2_session_client_new2(&c->h2, hcb, c, hopt);
	else
		rv = nghttp2_session_server_new2(&c->h2, hcb, c, hopt);
	nghttp2_session_callbacks_del(hcb);
	hcb = NULL;
	nghttp2_option_del(hopt);
	hopt = NULL;
	if (rv != 0)
		goto fail;

	iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
					     c->opts.stream_window};
	/* Larger than HTTP/2's 16 KiB default: per frame, nghttp2, our callbacks
	 * and the TLS layer each do a fixed amount of work; a heartbeat behind
	 * a 64 KiB frame waits some 0.1 ms at tunnel speeds. */
	iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, c->opts.max_frame};
	iv[niv++] = (nghttp2_settings_entry){TC_SETTINGS_WIN_GROWTH, 1};
	iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
					     role == TUN_ROLE_SIDECAR ? c->opts.max_streams : 0};
	if (role == TUN_ROLE_RELAY)
		iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
	if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, niv) != 0 ||
	    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
						  (int32_t)c->opts.conn_window) != 0)
		goto fail;

	if (role == TUN_ROLE_RELAY) {
		static const nghttp2_nv ctl_req[] = {
			{(uint8_t *)":method", (uint8_t *)"POST", 7, 4, NGHTTP2_NV_FLAG_NONE},
			{(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
			{(uint8_t *)":authority", (uint8_t *)"sparkrelay", 10, 10,
			 NGHTTP2_NV_FLAG_NONE},
			{(uint8_t *)":path", (uint8_t *)TUN_CTL_PATH, 5, sizeof(TUN_CTL_PATH) - 1,
			 NGHTTP2_NV_FLAG_NONE},
		};
		nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = ctl_read_cb};
		struct tun_stream *s = tun_stream_new(c, NULL);
		int32_t id;
		if (!s)
			goto fail;
		s->flags |= TS_F_CTL;
		c->ctl = s;
		prd.source.ptr = s;
		id = nghttp2_submit_request(c->h2, NULL, ctl_req, SR_ARRAY_LEN(ctl_req), &prd, s);
		if (id < 0)
			goto fail;
		s->id = id;
	}

	return c;

fail:
	if (hcb)
		nghttp2_session_callbacks_del(hcb);
	if (hopt)
		nghttp2_option_del(hopt);
	tun_conn_free(c);
	return NULL;
}

void tun_conn_start(struct tun_conn *c)
{
	struct timeval tv = sr_tv_ms(c->opts.ping_interval_ms);

	if (c->st != TC_ST_NEW)
		return;
	c->started_once = 1;
	tun_conn_go(c, TC_ST_OPEN);
	c->last_recv_us = sr_now_us();
	event_add(c->ping_ev, &tv);
	/* The first RTT sample, before any bulk data queues behind it. */
	c->probe_at_us = c->last_recv_us;
	probe_send(c, c->last_recv_us);
	tun_conn_flush(c);
}

void tun_conn_set_origin(struct tun_conn *c, uint32_t origin)
{
	c->origin = origin;
}

void tun_conn_set_slot(struct tun_conn *c, unsigned slot)
{
	c->slot = slot < TUN_GROUP_SLOTS ? slot : TUN_GROUP_SLOTS - 1;
}

/* c off its group's list of sessions (c->group stays). */
static void group_unlink(struct tun_conn *c)
{
	if (!c->group)
		return;
	if (c->gprev)
		c->gprev->gnext = c->gnext;
	else if (c->group->conn == c)
		c->group->conn = c->gnext;
	if (c->gnext)
		c->gnext->gprev = c->gprev;
	c->gnext = c->gprev = NULL;
}

void tun_conn_free(struct tun_conn *c)
{
	if (!c)
		return;
	group_unlink(c);
	/* The session goes first, so no callback can name a freed stream. */
	if (c->h2)
		nghttp2_session_del(c->h2);
	c->h2 = NULL;
	while (c->streams) {
		struct tun_stream *s = c->streams;
		c->streams = s->next;
		if (s->st < TS_ST_DEAD)
			s->flags |= TS_F_RESET; /* executors and driver see a reset */
		tun_stream_free(s);
	}
	while (c->dead) {
		struct tun_stream *s = c->dead;
		c->dead = s->next;
		tun_stream_free(s);
	}
	/* Every stream gave back what it had counted into the conn. */
	assert(c->early_buffered == 0);
	assert(c->in_buffered == 0);
	if (c->out)
		evbuffer_free(c->out);
	if (c->reap_ev)
		event_free(c->reap_ev);
	if (c->close_ev)
		event_free(c->close_ev);
	if (c->ping_ev)
		event_free(c->ping_ev);
	if (c->ack_ev)
		event_free(c->ack_ev);
	if (c->barrier_ev)
		event_free(c->barrier_ev);
	if (c->flush_ev)
		event_free(c->flush_ev);
	if (c->ctl_in)
		evbuffer_free(c->ctl_in);
	if (c->ctl_out)
		evbuffer_free(c->ctl_out);
	free(c);
}

void tun_conn_set_logctx(struct tun_conn *c, const char *logctx)
{
	snprintf(c->logctx, sizeof(c->logctx), "%s", logctx ? logctx : "");
}

const char *tun_conn_logctx(const struct tun_conn *c)
{
	return c->logctx;
}

int tun_conn_ctl_flushed(struct tun_conn *c)
{
	if (evbuffer_get_length(c->ctl_out) == 0)
		return 1;
	c->ctl_wait = 1;
	return 0;
}

int tun_conn_send_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg)
{
	int rv;

	if (tun_conn_closing(c) || !c->ctl)
		return SR_ECLOSED;
	rv = tun_ctl_encode(msg, c->ctl_out);
	if (rv != 0)
		return rv;
	if ((c->ctl->flags & TS_F_DEFERRED) && c->ctl->id > 0) {
		c->ctl->flags &= ~TS_F_DEFERRED;
		nghttp2_session_resume_data(c->h2, c->ctl->id);
	}
	tun_conn_flush(c);
	return 0;
}

/* "<rx>;<fin>" of s, for HDR_RESUME. */
static void resume_value(const struct tun_stream *s, char *buf, size_t len)
{
	snprintf(buf, len, "%llu;%d;%d", (unsigned long long)s->rx, s->down != TS_DIR_OPEN,
		 s->st >= TS_ST_DEAD);
}

/* HDR_RESUME's value: decimal digits, ";0" or ";1" (fin), ";0" or ";1" (reset). */
static int parse_resume(const uint8_t *v, size_t len, uint64_t *rx, int *fin, int *rst)
{
	uint64_t n = 0;
	size_t i = 0;

	for (; i < len && i < 20 && v[i] >= '0' && v[i] <= '9'; i++) {
		unsigned d = (unsigned)v[i] - '0';
		if (n > (UINT64_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	if (i == 0 || i + 4 != len || v[i] != ';' || (v[i + 1] != '0' && v[i + 1] != '1') ||
	    v[i + 2] != ';' || (v[i + 3] != '0' && v[i + 3] != '1'))
		return -1;
	*rx = n;
	*fin = v[i + 1] == '1';
	*rst = v[i + 3] == '1';
	return 0;
}

int tun_conn_submit_connect(struct tun_conn *c, struct tun_stream *s, int resume)
{
	char authority[32], idbuf[24], rbuf[32];
	nghttp2_data_provider prd = tun_stream_data_prd;
	nghttp2_nv nva[6];
	size_t n = 0;
	int32_t id;

#define NV(name, value)                                                                        \
	(nghttp2_nv){(uint8_t *)(name), (uint8_t *)(value), strlen(name), strlen(value),       \
		     NGHTTP2_NV_FLAG_NONE}
	snprintf(authority, sizeof(authority), "127.0.0.1:%u", s->port);
	snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)s->conn_id);
	nva[n++] = NV(":method", "CONNECT");
	nva[n++] = NV(":authority", authority);
	nva[n++] = NV(HDR_LEASE, s->lease_id);
	nva[n++] = NV(HDR_CONN, idbuf);
	nva[n++] = NV(HDR_PEER, s->peer);
	if (resume) {
		resume_value(s, rbuf, sizeof(rbuf));
		nva[n++] = NV(HDR_RESUME, rbuf);
	}
#undef NV
	prd.source.ptr = s;
	id = nghttp2_submit_request(c->h2, NULL, nva, n, &prd, s);
	if (id < 0)
		return id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE ? SR_EBUSY : SR_EH2;
	s->id = id;
	return 0;
}

int tun_conn_open_stream(struct tun_conn *c, struct sr_bsock *sock, uint16_t port,
			 const char *lease, uint64_t conn_id, const char *peer)
{
	struct tun_stream *s;
	int rv;

	if (c->st != TC_ST_OPEN || c->role != TUN_ROLE_RELAY) {
		sr_bsock_free(sock);
		return c->st == TC_ST_GOAWAY ? SR_EDRAINING : SR_ECLOSED;
	}
	s = tun_stream_new(c, sock); /* frees sock on failure */
	if (!s)
		return SR_ENOMEM;
	s->port = port;
	s->conn_id = conn_id;
	snprintf(s->lease_id, sizeof(s->lease_id), "%s", lease);
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	rv = tun_conn_submit_connect(c, s, 0);
	if (rv != 0) {
		tun_stream_kill(s, 1);
		return rv;
	}
	c->stats.streams_opened++;
	tun_stream_start_reading(s);
	/* An executor speaks first, and its first bytes are often here by now:
	 * read at once, they leave with the CONNECT in one record instead of
	 * in another after the next wake-up (an EAGAIN when they are not). */
	if (s->sock)
		sr_bsock_read_now(s->sock);
	tun_conn_flush(c);
	return 0;
}

void tun_conn_adopt(struct tun_conn *c, struct tun_stream *s, int32_t id)
{
	tun_stream_bind(s, c);
	s->id = id;
	if (id > 0)
		nghttp2_session_set_stream_user_data(c->h2, id, s);
}

void tun_conn_set_group(struct tun_conn *c, struct tun_group *g)
{
	group_unlink(c);
	c->group = g;
	if (g) {
		c->gnext = g->conn;
		if (g->conn)
			g->conn->gprev = c;
		g->conn = c;
	}
	for (struct tun_stream *s = c->streams; s; s = s->next)
		if (!(s->flags & TS_F_CTL))
			s->group = g;
}

void tun_conn_linger(struct tun_conn *c, struct tun_stream *s)
{
	s->flags |= TS_F_LINGER;
	s->linger_seq = 0;
	s->lnext = c->linger;
	c->linger = s;
	c->want_barrier = 1;
	tun_conn_flush(c);
}

/* A barrier PING came back: the peer has processed every frame sent before
 * it, so streams that ended before it was sent are complete at both ends. */
static void barrier_acked(struct tun_conn *c, uint64_t seq)
{
	struct tun_stream **pp = &c->linger;

	if (seq != c->barrier_out)
		return;
	c->barrier_out = 0;
	if (c->confirm_seq && c->confirm_seq <= seq) {
		c->confirm_seq = 0;
		if (c->cbs.on_confirmed)
			c->cbs.on_confirmed(c, c->arg);
	}
	while (*pp) {
		struct tun_stream *s = *pp;
		if (s->linger_seq && s->linger_seq <= seq) {
			*pp = s->lnext;
			s->lnext = NULL;
			s->flags &= ~TS_F_LINGER;
			if (s->st >= TS_ST_DEAD) {
				s->flags |= TS_F_TOMB_DONE; /* the peer has our reset */
				tun_stream_maybe_reap(s);
			} else {
				tun_stream_kill(s, 0);
			}
			continue;
		}
		pp = &s->lnext;
	}
}

/* Send one barrier PING for the streams that linger without one. */
static void barrier_send(struct tun_conn *c)
{
	uint8_t opaque[8];
	uint64_t seq = ++c->ping_seq;

	for (int i = 0; i < 8; i++)
		opaque[i] = (uint8_t)(seq >> (56 - 8 * i));
	if (nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque) != 0)
		return;
	c->barrier_out = seq;
	c->barrier_sent_us = sr_now_us();
	c->want_barrier = 0;
	if (c->confirm_wanted) {
		c->confirm_wanted = 0;
		c->confirm_seq = seq;
	}
	for (struct tun_stream *s = c->linger; s; s = s->lnext)
		if (!s->linger_seq)
			s->linger_seq = seq;
}

static void barrier_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;

	(void)fd;
	(void)what;
	if ((c->st == TC_ST_OPEN || c->st == TC_ST_GOAWAY) && c->want_barrier && !c->barrier_out) {
		barrier_send(c);
		tun_conn_flush(c);
	}
}

/* Streams that ended wait TC_BARRIER_DELAY_MS for their barrier PING, so
 * that those ending meanwhile share it: with one PING per stream, each
 * connection opened and closed cost both ends a PING and its answer, two
 * records more each way. What waits is only the release of sockets done in
 * both directions. A confirmation (tun_conn_confirm) does not wait. */
static void barrier_soon(struct tun_conn *c)
{
	struct timeval tv = sr_tv_ms(TC_BARRIER_DELAY_MS);

	if (c->confirm_wanted) {
		barrier_send(c);
		return;
	}
	if (!c->barrier_ev && !(c->barrier_ev = evtimer_new(c->base, barrier_cb, c))) {
		barrier_send(c); /* out of memory: no wait */
		return;
	}
	if (!evtimer_pending(c->barrier_ev, NULL))
		evtimer_add(c->barrier_ev, &tv);
}

void tun_conn_confirm(struct tun_conn *c)
{
	if (tun_conn_closing(c))
		return;
	/* A barrier already in flight went out before what we must cover. */
	c->confirm_wanted = 1;
	c->want_barrier = 1;
	tun_conn_flush(c);
}

int tun_conn_is_open(const struct tun_conn *c)
{
	return c->st == TC_ST_OPEN;
}

size_t tun_conn_nstreams(const struct tun_conn *c)
{
	size_t n = c->stats.streams_active;
	return c->ctl && c->ctl->st < TS_ST_DEAD ? n - 1 : n;
}

uint32_t tun_conn_peer_max_streams(const struct tun_conn *c)
{
	return c->h2 ? nghttp2_session_get_remote_settings(
			   c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
		     : c->opts.max_streams;
}

void tun_conn_get_stats(const struct tun_conn *c, struct tun_conn_stats *st)
{
	*st = c->stats;
	st->streams_active = tun_conn_nstreams(c);
	st->sock_in_buffered = c->in_buffered;
	st->h2_queued = c->h2 ? nghttp2_session_get_outbound_queue_size(c->h2) : 0;
	st->unacked = 0;
	for (const struct tun_stream *s = c->streams; s; s = s->next)
		st->unacked += s->tx_sent - s->tx_acked;
}
