/* The HTTP/2 session of one tunnel. See tun_conn.h for the contract. */
#include "tunnel/tun_internal.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#define HDR_LEASE "sparkrelay-lease"
#define HDR_CONN "sparkrelay-conn"
#define HDR_PEER "sparkrelay-peer"

void tun_conn_opts_defaults(struct tun_conn_opts *o)
{
	if (!o->stream_window)
		o->stream_window = 256u << 10;
	if (!o->conn_window)
		o->conn_window = 64u << 20;
	if (!o->ping_interval_ms)
		o->ping_interval_ms = 10000;
	if (!o->ping_timeout_ms)
		o->ping_timeout_ms = 30000;
	if (!o->ctl_max)
		o->ctl_max = TUN_CTL_MAX_DEFAULT;
	if (!o->out_high)
		o->out_high = 64u << 10;
	if (!o->sock_read_high)
		o->sock_read_high = 256u << 10;
	if (!o->max_streams)
		o->max_streams = 100000;
}

static void conn_fail(struct tun_conn *c, int err, const char *why);

/* ---- transport -> nghttp2 ---------------------------------------------- */

static void deliver_ctl(struct tun_conn *c)
{
	struct tun_ctl_msg msg;
	char err[256];
	int rv;

	while (!c->closing && (rv = tun_ctl_decode(c->ctl_in, c->opts.ctl_max, &msg, err,
						   sizeof(err))) == 1) {
		SR_DEBUG(c->logctx, "control message %s", tun_ctl_type_name(msg.type));
		if (c->cbs.on_ctl)
			c->cbs.on_ctl(c, &msg, c->arg);
	}
	if (!c->closing && rv < 0) {
		char why[320];
		snprintf(why, sizeof(why), "bad control message: %s", err);
		conn_fail(c, rv, why);
	}
}

static void transport_read_cb(struct bufferevent *bev, void *arg)
{
	struct tun_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_iovec v[16];
	int n, i;

	c->last_recv_us = sr_now_us();
	while (!c->closing && evbuffer_get_length(in) > 0) {
		size_t used = 0;
		n = evbuffer_peek(in, -1, NULL, v, (int)SR_ARRAY_LEN(v));
		if (n > (int)SR_ARRAY_LEN(v))
			n = (int)SR_ARRAY_LEN(v);
		for (i = 0; i < n && !c->closing; i++) {
			const uint8_t *p = v[i].iov_base;
			size_t left = v[i].iov_len;
			while (left > 0 && !c->closing) {
				ssize_t rv;
				c->in_h2 = 1;
				rv = nghttp2_session_mem_recv(c->h2, p, left);
				c->in_h2 = 0;
				if (rv < 0) {
					char why[128];
					snprintf(why, sizeof(why), "HTTP/2 error from peer: %s",
						 nghttp2_strerror((int)rv));
					evbuffer_drain(in, used);
					c->nwriteq = 0; /* closing: no socket is written now */
					conn_fail(c, SR_EPROTO, why);
					return;
				}
				used += (size_t)rv;
				p += rv;
				left -= (size_t)rv;
				/* Control data pauses parsing (h2_on_data_chunk): a lease
				 * must be known before the CONNECTs that follow it. */
				if (evbuffer_get_length(c->ctl_in) > 0)
					deliver_ctl(c);
			}
		}
		evbuffer_drain(in, used);
	}
	if (c->nwriteq)
		tun_stream_write_queued(c);
	tun_conn_flush(c);
}

static void transport_write_cb(struct bufferevent *bev, void *arg)
{
	struct tun_conn *c = arg;
	if (c->closing) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			tun_conn_schedule_reap(c);
		return;
	}
	tun_conn_flush(c);
}

static void transport_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct tun_conn *c = arg;
	char why[320];

	if (what & BEV_EVENT_EOF) {
		conn_fail(c, SR_ECLOSED, "tunnel closed by peer");
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		char ssl[256];
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e) {
			ERR_error_string_n(e, ssl, sizeof(ssl));
			snprintf(why, sizeof(why), "tunnel TLS error: %s", ssl);
			conn_fail(c, SR_ETLS, why);
		} else {
			/* The TLS layer reports the reason to the owner. */
			snprintf(why, sizeof(why), "tunnel transport failed");
			conn_fail(c, SR_EIO, why);
		}
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		conn_fail(c, SR_ETIMEDOUT, "tunnel I/O timeout");
}

/* ---- nghttp2 -> transport ---------------------------------------------- */

static ssize_t h2_send_cb(nghttp2_session *h2, const uint8_t *data, size_t len, int flags,
			  void *user)
{
	struct tun_conn *c = user;
	struct evbuffer *out = bufferevent_get_output(c->bev);

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
	struct evbuffer *out = bufferevent_get_output(c->bev);
	struct evbuffer *in;
	struct evbuffer_iovec v;

	if (!s->sock)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* socket gone: reset the stream */
	if (evbuffer_get_length(out) >= c->opts.out_high)
		return NGHTTP2_ERR_WOULDBLOCK;
	in = bufferevent_get_input(s->sock);
	/* One contiguous chain per frame, so bufferevent_openssl writes it as a
	 * single TLS record instead of a 9-byte record plus a payload record. */
	if (evbuffer_reserve_space(out, (ev_ssize_t)(9 + length), &v, 1) != 1 ||
	    v.iov_len < 9 + length)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	memcpy(v.iov_base, framehd, 9);
	if (evbuffer_remove(in, (char *)v.iov_base + 9, length) != (int)length)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	v.iov_len = 9 + length;
	if (evbuffer_commit_space(out, &v, 1) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	c->stats.bytes_to_tunnel += length;
	return 0;
}

void tun_conn_flush(struct tun_conn *c)
{
	int rv;

	if (c->in_h2) {
		c->want_flush = 1;
		return;
	}
	if (c->closing)
		return;
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
	if (!c->closing && !nghttp2_session_want_read(c->h2) &&
	    !nghttp2_session_want_write(c->h2)) {
		char why[128];
		if (c->goaway_sent_error)
			snprintf(why, sizeof(why), "protocol error: peer broke HTTP/2 (%s)",
				 nghttp2_http2_strerror(c->goaway_sent_error));
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

/* ---- nghttp2 callbacks --------------------------------------------------- */

static int h2_on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s;

	if (c->role != TUN_ROLE_SIDECAR || frame->hd.type != NGHTTP2_HEADERS ||
	    frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	if (c->goaway || c->closing) {
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
		/* The response to our request: only :status matters. */
		if (namelen == 7 && memcmp(name, ":status", 7) == 0 &&
		    !(valuelen == 3 && memcmp(value, "200", 3) == 0)) {
			s->h2_error = NGHTTP2_CONNECT_ERROR;
			return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		}
		return 0;
	}
#define IS(lit) (namelen == sizeof(lit) - 1 && memcmp(name, lit, namelen) == 0)
	if (IS(":method"))
		copy_hdr(s->method, sizeof(s->method), value, valuelen);
	else if (IS(":authority"))
		copy_hdr(s->authority, valuelen < sizeof(s->authority) ? sizeof(s->authority) : 1,
			 value, valuelen);
	else if (IS(":path"))
		copy_hdr(s->path, valuelen < sizeof(s->path) ? sizeof(s->path) : 1, value,
			 valuelen);
	else if (IS(HDR_LEASE))
		copy_hdr(s->lease, sizeof(s->lease), value, valuelen);
	else if (IS(HDR_PEER))
		copy_hdr(s->peer, sizeof(s->peer), value, valuelen);
	else if (IS(HDR_CONN)) {
		char tmp[24];
		copy_hdr(tmp, sizeof(tmp), value, valuelen);
		s->conn_id = strtoull(tmp, NULL, 10);
	}
#undef IS
	return 0;
}

static int parse_authority_port(const char *auth, uint16_t *port)
{
	char host[64];
	if (sr_split_hostport(auth, host, sizeof(host), port, 0) != 0)
		return SR_EINVAL;
	/* A relay may only ever name the sidecar's own loopback. */
	if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "localhost") != 0)
		return SR_EDENIED;
	return 0;
}

static ssize_t ctl_read_cb(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
			   uint32_t *data_flags, nghttp2_data_source *src, void *user)
{
	struct tun_conn *c = user;
	int n = evbuffer_remove(c->ctl_out, buf, length);

	if (n > 0)
		return n;
	if (c->closing) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		return 0;
	}
	c->ctl->flags |= TS_DEFERRED;
	return NGHTTP2_ERR_DEFERRED;
}

static int sidecar_on_request(struct tun_conn *c, struct tun_stream *s)
{
	static const nghttp2_nv ok[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3,
					 NGHTTP2_NV_FLAG_NONE}};
	nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = ctl_read_cb};
	struct tun_connect_req req;
	struct bufferevent *sock;
	int connected = 0;

	if (strcmp(s->method, "POST") == 0 && strcmp(s->path, TUN_CTL_PATH) == 0) {
		if (c->ctl) {
			SR_WARN(c->logctx, "second control stream refused");
			return NGHTTP2_PROTOCOL_ERROR;
		}
		c->ctl = s;
		s->flags |= TS_CTL;
		prd.source.ptr = s;
		if (nghttp2_submit_response(c->h2, s->id, ok, 1, &prd) != 0)
			return NGHTTP2_INTERNAL_ERROR;
		s->flags |= TS_RESPONDED;
		if (c->cbs.on_ctl_open)
			c->cbs.on_ctl_open(c, c->arg);
		return 0;
	}
	if (strcmp(s->method, "CONNECT") != 0 || !c->ctl) {
		SR_WARN(c->logctx, "stream %d refused: method %s before control stream", s->id,
			s->method);
		return NGHTTP2_REFUSED_STREAM;
	}
	if (parse_authority_port(s->authority, &s->port) != 0) {
		SR_WARN(c->logctx, "stream %d refused: target \"%s\" is not 127.0.0.1:<port>",
			s->id, s->authority);
		return NGHTTP2_REFUSED_STREAM;
	}
	req.port = s->port;
	req.lease = s->lease;
	req.conn_id = s->conn_id;
	req.peer = s->peer;
	req.connected = &connected;
	sock = c->cbs.on_connect ? c->cbs.on_connect(c, &req, c->arg) : NULL;
	if (!sock)
		return NGHTTP2_REFUSED_STREAM;
	if (tun_stream_attach(s, sock) != 0)
		return NGHTTP2_INTERNAL_ERROR; /* attach freed sock */
	s->flags |= TS_CONNECTING;
	c->stats.streams_opened++;
	if (connected)
		tun_stream_connected(s); /* inside a callback: the flush is deferred */
	return 0;
}

static int h2_on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;
	struct tun_stream *s = NULL;

	if (frame->hd.stream_id)
		s = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);

	switch (frame->hd.type) {
	case NGHTTP2_PING:
		if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->ping_sent_us) {
			c->stats.last_rtt_us = sr_now_us() - c->ping_sent_us;
			c->ping_sent_us = 0;
			if (c->cbs.on_rtt)
				c->cbs.on_rtt(c, c->stats.last_rtt_us, c->arg);
		}
		break;
	case NGHTTP2_GOAWAY:
		c->goaway = 1;
		SR_INFO(c->logctx, "peer sent GOAWAY (%s)",
			nghttp2_http2_strerror(frame->goaway.error_code));
		break;
	case NGHTTP2_HEADERS:
		if (!s)
			break;
		if (c->role == TUN_ROLE_SIDECAR && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
			int code = sidecar_on_request(c, s);
			if (code) {
				nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, s->id,
							  (uint32_t)code);
				break;
			}
		}
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			tun_stream_on_peer_eof(s);
		break;
	case NGHTTP2_DATA:
		if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
			if (s->flags & TS_CTL) {
				/* The control stream lives as long as the tunnel. */
				conn_fail(c, SR_EPROTO, "control stream ended by peer");
				break;
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
	if (s->flags & TS_CTL) {
		tun_conn_consume(c, id, len);
		/* Bounded: the decoder rejects frames over ctl_max, so anything
		 * beyond one frame plus its prefix is a peer flooding us. */
		if (evbuffer_get_length(c->ctl_in) + len > (size_t)c->opts.ctl_max + 8u * 1024) {
			conn_fail(c, SR_ETOOBIG, "control stream over its size cap");
			return 0;
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
	if (s->flags & TS_CTL) {
		if (!c->closing)
			conn_fail(c, SR_EPROTO, "control stream closed by peer");
		s->flags |= TS_H2_CLOSED;
		return 0;
	}
	tun_stream_on_h2_close(s, error_code);
	if (!(s->flags & TS_DEAD) && !s->sock)
		tun_stream_kill(s, 0);
	tun_stream_maybe_reap(s);
	return 0;
}

static int h2_on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user)
{
	struct tun_conn *c = user;
	if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
		c->goaway_sent_error = frame->goaway.error_code;
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
	if (!c->closing) {
		tun_conn_flush(c);
		return;
	}
	if (c->closed_cb_done)
		return;
	if (c->flushing && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return; /* transport_write_cb or close_ev brings us back */
	c->closed_cb_done = 1;
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

static void kill_all_streams(struct tun_conn *c)
{
	/* c->closing is set, so each killed stream moves to the dead list. */
	while (c->streams) {
		struct tun_stream *s = c->streams;
		if (s->flags & TS_DEAD)
			tun_stream_maybe_reap(s);
		else
			tun_stream_kill(s, !(s->flags & TS_CTL)); /* executors see a reset */
	}
}

static void conn_fail(struct tun_conn *c, int err, const char *why)
{
	if (c->closing)
		return;
	c->closing = 1;
	c->close_err = err;
	if (err == 0 || err == SR_ECLOSED)
		SR_INFO(c->logctx, "tunnel closed: %s", why);
	else
		SR_WARN(c->logctx, "tunnel closed: %s", why);
	bufferevent_disable(c->bev, EV_READ);
	kill_all_streams(c);
	tun_conn_schedule_reap(c);
}

void tun_conn_close(struct tun_conn *c, int err)
{
	struct timeval tv = {2, 0};

	if (c->closing)
		return;
	c->closing = 1;
	c->close_err = err;
	bufferevent_disable(c->bev, EV_READ);
	kill_all_streams(c);
	nghttp2_session_terminate_session(c->h2, err ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_NO_ERROR);
	if (!c->in_h2) {
		c->in_h2 = 1;
		(void)nghttp2_session_send(c->h2);
		c->in_h2 = 0;
	}
	/* Flush GOAWAY and the last control message, bounded in time. */
	c->flushing = 1;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	evtimer_add(c->close_ev, &tv);
	tun_conn_schedule_reap(c);
}

void tun_conn_goaway(struct tun_conn *c)
{
	if (c->goaway || c->closing)
		return;
	c->goaway = 1;
	nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
			      nghttp2_session_get_last_proc_stream_id(c->h2), NGHTTP2_NO_ERROR,
			      NULL, 0);
	tun_conn_flush(c);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;
	uint64_t now = sr_now_us();
	uint64_t idle = now - c->last_recv_us;

	if (c->closing)
		return;
	if (idle >= (uint64_t)c->opts.ping_timeout_ms * 1000u) {
		char why[96];
		snprintf(why, sizeof(why), "peer silent for %" PRIu64 " ms (ping timeout)",
			 idle / 1000u);
		conn_fail(c, SR_ETIMEDOUT, why);
		return;
	}
	if (idle >= (uint64_t)c->opts.ping_interval_ms * 1000u && !c->ping_sent_us) {
		c->ping_sent_us = now;
		nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
		tun_conn_flush(c);
	} else if (c->ping_sent_us && idle < (uint64_t)c->opts.ping_interval_ms * 1000u) {
		c->ping_sent_us = 0; /* traffic arrived; a lost ACK is no failure */
	}
}

int tun_conn_submit_response(struct tun_conn *c, struct tun_stream *s)
{
	static const nghttp2_nv ok[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3,
					 NGHTTP2_NV_FLAG_NONE}};
	nghttp2_data_provider prd = tun_stream_data_prd;

	if (s->flags & (TS_RESPONDED | TS_H2_CLOSED))
		return 0;
	prd.source.ptr = s;
	if (nghttp2_submit_response(c->h2, s->id, ok, 1, &prd) != 0)
		return SR_EH2;
	s->flags |= TS_RESPONDED;
	return 0;
}

void tun_conn_reset_stream(struct tun_conn *c, struct tun_stream *s, uint32_t code)
{
	if (s->id > 0 && !(s->flags & TS_H2_CLOSED))
		nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, code);
}

struct tun_conn *tun_conn_new(struct event_base *base, struct bufferevent *bev,
			      enum tun_role role, const struct tun_conn_opts *opts,
			      const struct tun_conn_cbs *cbs, void *arg, const char *logctx)
{
	struct tun_conn *c;
	nghttp2_session_callbacks *hcb = NULL;
	nghttp2_option *hopt = NULL;
	nghttp2_settings_entry iv[4];
	size_t niv = 0;
	int rv;

	c = calloc(1, sizeof(*c));
	if (!c) {
		bufferevent_free(bev);
		return NULL;
	}
	c->base = base;
	c->bev = bev;
	c->role = role;
	c->opts = *opts;
	tun_conn_opts_defaults(&c->opts);
	c->cbs = *cbs;
	c->arg = arg;
	tun_conn_set_logctx(c, logctx);
	c->last_recv_us = sr_now_us();

	c->ctl_in = evbuffer_new();
	c->ctl_out = evbuffer_new();
	c->reap_ev = event_new(base, -1, 0, reap_cb, c);
	c->close_ev = evtimer_new(base, close_timeout_cb, c);
	c->ping_ev = event_new(base, -1, EV_PERSIST, ping_cb, c);
	if (!c->ctl_in || !c->ctl_out || !c->reap_ev || !c->close_ev || !c->ping_ev)
		goto fail;

	if (nghttp2_session_callbacks_new(&hcb) != 0 || nghttp2_option_new(&hopt) != 0)
		goto fail;
	nghttp2_session_callbacks_set_send_callback(hcb, h2_send_cb);
	nghttp2_session_callbacks_set_send_data_callback(hcb, h2_send_data_cb);
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
	 * reset limit (1000 burst, 33/s) would end a busy tunnel (issue #1984). */
	nghttp2_option_set_stream_reset_rate_limit(hopt, 1u << 30, 1u << 30);
	nghttp2_option_set_max_settings(hopt, 64);

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
		s->flags |= TS_CTL;
		c->ctl = s;
		prd.source.ptr = s;
		id = nghttp2_submit_request(c->h2, NULL, ctl_req, SR_ARRAY_LEN(ctl_req), &prd, s);
		if (id < 0)
			goto fail;
		s->id = id;
	}

	bufferevent_setcb(bev, transport_read_cb, transport_write_cb, transport_event_cb, c);
	bufferevent_setwatermark(bev, EV_WRITE, c->opts.out_high / 2, 0);
	bufferevent_set_max_single_read(bev, 256 * 1024);
	bufferevent_set_max_single_write(bev, 256 * 1024);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	{
		uint32_t period = c->opts.ping_interval_ms / 2;
		struct timeval tv = {period / 1000, (period % 1000) * 1000};
		if (period < 50)
			tv = (struct timeval){0, 50000};
		event_add(c->ping_ev, &tv);
	}
	tun_conn_flush(c);
	/* Bytes may already be waiting (they arrived with the handshake). */
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		transport_read_cb(bev, c);
	return c;

fail:
	if (hcb)
		nghttp2_session_callbacks_del(hcb);
	if (hopt)
		nghttp2_option_del(hopt);
	tun_conn_free(c);
	return NULL;
}

void tun_conn_free(struct tun_conn *c)
{
	if (!c)
		return;
	/* The session goes first, so no callback can name a freed stream. */
	if (c->h2)
		nghttp2_session_del(c->h2);
	c->h2 = NULL;
	while (c->streams) {
		struct tun_stream *s = c->streams;
		c->streams = s->next;
		if (!(s->flags & TS_DEAD))
			s->flags |= TS_RESET; /* executors and driver see a reset */
		tun_stream_free(s);
	}
	while (c->dead) {
		struct tun_stream *s = c->dead;
		c->dead = s->next;
		tun_stream_free(s);
	}
	if (c->bev)
		bufferevent_free(c->bev);
	if (c->reap_ev)
		event_free(c->reap_ev);
	if (c->close_ev)
		event_free(c->close_ev);
	if (c->ping_ev)
		event_free(c->ping_ev);
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

int tun_conn_send_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg)
{
	int rv;

	if (c->closing || !c->ctl)
		return SR_ECLOSED;
	rv = tun_ctl_encode(msg, c->ctl_out);
	if (rv != 0)
		return rv;
	if ((c->ctl->flags & TS_DEFERRED) && c->ctl->id > 0) {
		c->ctl->flags &= ~TS_DEFERRED;
		nghttp2_session_resume_data(c->h2, c->ctl->id);
	}
	tun_conn_flush(c);
	return 0;
}

int tun_conn_open_stream(struct tun_conn *c, struct bufferevent *sock, uint16_t port,
			 const char *lease, uint64_t conn_id, const char *peer)
{
	char authority[32], idbuf[24];
	struct tun_stream *s;
	nghttp2_data_provider prd = tun_stream_data_prd;
	int32_t id;

	if (c->closing || c->goaway || c->role != TUN_ROLE_RELAY) {
		bufferevent_free(sock);
		return c->goaway ? SR_EDRAINING : SR_ECLOSED;
	}
	snprintf(authority, sizeof(authority), "127.0.0.1:%u", port);
	snprintf(idbuf, sizeof(idbuf), "%llu", (unsigned long long)conn_id);
	nghttp2_nv nva[] = {
		{(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
		{(uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority),
		 NGHTTP2_NV_FLAG_NONE},
		{(uint8_t *)HDR_LEASE, (uint8_t *)lease, sizeof(HDR_LEASE) - 1, strlen(lease),
		 NGHTTP2_NV_FLAG_NONE},
		{(uint8_t *)HDR_CONN, (uint8_t *)idbuf, sizeof(HDR_CONN) - 1, strlen(idbuf),
		 NGHTTP2_NV_FLAG_NONE},
		{(uint8_t *)HDR_PEER, (uint8_t *)peer, sizeof(HDR_PEER) - 1, strlen(peer),
		 NGHTTP2_NV_FLAG_NONE},
	};

	s = tun_stream_new(c, sock); /* frees sock on failure */
	if (!s)
		return SR_ENOMEM;
	s->port = port;
	s->conn_id = conn_id;
	prd.source.ptr = s;
	id = nghttp2_submit_request(c->h2, NULL, nva, SR_ARRAY_LEN(nva), &prd, s);
	if (id < 0) {
		tun_stream_kill(s, 1);
		return id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE ? SR_EBUSY : SR_EH2;
	}
	s->id = id;
	c->stats.streams_opened++;
	tun_stream_start_reading(s);
	tun_conn_flush(c);
	return 0;
}

int tun_conn_is_open(const struct tun_conn *c)
{
	return !c->closing && !c->goaway;
}

size_t tun_conn_nstreams(const struct tun_conn *c)
{
	size_t n = c->stats.streams_active;
	return c->ctl && !(c->ctl->flags & TS_DEAD) ? n - 1 : n;
}

void tun_conn_get_stats(const struct tun_conn *c, struct tun_conn_stats *st)
{
	*st = c->stats;
	st->streams_active = tun_conn_nstreams(c);
	st->sock_in_buffered = c->in_buffered;
}
