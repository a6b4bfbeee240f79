/* One tunnel's HTTP/2 session (nghttp2), both roles, without a socket of
 * its own: the transport (tun_endpoint.c: TLS, or a plain socket in tests)
 * feeds it the peer's bytes with tun_conn_recv() and sends what it appends
 * to tun_conn_output(); tests and fuzzers can drive it with arrays alone.
 *
 * The relay is the HTTP/2 client (TUN_ROLE_RELAY): it opens the control
 * stream at once and then one CONNECT stream per executor connection, sending
 * the executor's first bytes right behind the HEADERS (no round trip). The
 * sidecar is the HTTP/2 server (TUN_ROLE_SIDECAR): it answers the control
 * stream, and for each CONNECT asks its owner for a socket to the driver.
 *
 * Streams and their sockets are bridged by tun_stream.c with manual flow
 * control: a WINDOW_UPDATE is sent only once bytes have left for the far
 * socket, so a stalled socket holds at most its stream window in memory.
 *
 * Objects are never freed inside nghttp2 or libevent callbacks of their own:
 * finished streams are reaped, and the owner's on_closed is called, from a
 * deferred event, where the owner may call tun_conn_free(). No function of
 * this module calls an owner callback before it returns to its caller from
 * tun_conn_new() or tun_conn_start(). */
#ifndef TUN_CONN_H
#define TUN_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "tunnel/tun_ctl.h"

struct sr_bsock;
struct evbuffer;
struct event_base;
struct tun_conn;

enum tun_role {
	TUN_ROLE_RELAY = 0,   /* HTTP/2 client, opens streams */
	TUN_ROLE_SIDECAR = 1, /* HTTP/2 server, dials the driver */
};

struct tun_conn_opts {
	uint32_t stream_window;    /* bytes, per stream, advertised to the peer */
	/* Receive window auto-tuning (tun_stream.c): a stream that drains a
	 * whole window within TUN_WIN_GROW_RTTS round trips has its window
	 * doubled, up to this (and to conn_window); <= stream_window: off. */
	uint32_t max_stream_window;
	/* Tests only (no configuration key): the round trip below which no
	 * window grows, microseconds; 0 = TUN_WIN_GROW_MIN_RTT_US. */
	uint32_t grow_min_rtt_us;
	/* Tests only: how long DATA on another stream counts as company,
	 * microseconds; 0 = TUN_COMPANY_US. */
	uint32_t company_us;
	uint32_t conn_window;      /* bytes, whole tunnel */
	uint32_t ping_interval_ms; /* PING when nothing was received for this long */
	uint32_t ping_timeout_ms;  /* peer is dead after this long without a frame */
	uint32_t ctl_max;          /* control message cap, bytes */
	uint32_t out_high;         /* stop generating frames above this many queued bytes */
	uint32_t sock_read_high;   /* read high watermark of each bridged socket */
	uint32_t max_streams;      /* concurrent streams (sidecar advertises it) */
	uint32_t max_frame;        /* largest DATA payload we send and accept, bytes */
	/* Bytes read from this tunnel's sockets and not yet sent as DATA, summed
	 * over its streams; 0 = no cap. Over it, every socket of the tunnel
	 * reads only up to TUN_SOCK_IN_FLOOR bytes (TCP backpressure holds the
	 * rest in the peers) until the sum is back under half of it. */
	uint32_t sock_in_max;
	/* Flood budgets that outlive this tunnel (tun_limits_new), or NULL:
	 * its own, full at its start. */
	struct tun_limits *limits;
};
/* The sidecar's budgets against a relay's floods that a new tunnel must
 * not renew (stream resets before their answer, log lines of refused
 * streams): kept by each of its tunnel slots across its reconnects. With
 * each tunnel's own, a relay that grants the lease, spends a budget and
 * closes cleanly got a full one again on the next tunnel, a tenth of a
 * second later. The SETTINGS budget stays each tunnel's: a tunnel opens
 * with one, and a slot may dial every second while driver connections
 * wait. */
struct tun_limits;
struct tun_limits *tun_limits_new(void); /* full; NULL if out of memory */
void tun_limits_free(struct tun_limits *l);
/* What each stream may still buffer while its tunnel is over sock_in_max:
 * enough for a heartbeat to pass a tunnel full of stalled streams. */
#define TUN_SOCK_IN_FLOOR (16u << 10)
/* Auto-tuning may grow a stream's receive window when the stream wrote a
 * whole window to its socket within this many of the tunnel's smallest PING
 * round trips (and faster than before, tun_stream.c). Not 2: on a lossy path
 * a window-limited stream stalls about a round trip behind each lost packet
 * (TCP delivers in order), so a window takes 3.5-4 round trips there
 * (measured at 25 ms one way and 1 % loss), more at higher loss. */
#define TUN_WIN_GROW_RTTS 8
/* No growth below this round trip (microseconds): on a LAN the configured
 * window already moves window/RTT (256 KiB / 1 ms = 256 MiB/s per stream),
 * and every byte of window is bulk that may queue ahead of a heartbeat. */
#define TUN_WIN_GROW_MIN_RTT_US 1000
/* Below that round trip a stream's window still grows while the stream is
 * alone: no DATA arrived on another stream of the tunnel for TUN_COMPANY_US.
 * Then nothing waits behind its bytes, and on a machine whose cores are busy
 * the far end does not always return credit before a configured window is
 * used up. Up to TUN_WIN_ALONE_MAX times stream_window; while another stream
 * has had DATA within TUN_COMPANY_US, the credit of that growth is withheld,
 * so the stream has its configured window again (tun_stream.c). 15 s: longer
 * than the 10 s between a Spark executor's heartbeats, each of which would
 * otherwise find the bulk stream alone and wait behind its grown window
 * (with 0.5 s, a heartbeat every 0.6 s beside bulk on loopback: p50 3.1 ms,
 * max 7.5; with 15 s: 1.4 and 3.4). The price: a stream that another one
 * talked beside in the last 15 s (iperf3's control connection) does not grow
 * (docs/benchmarks.md). */
#define TUN_COMPANY_S 15
#define TUN_COMPANY_US (TUN_COMPANY_S * 1000000u)
/* TUN_COMPANY_S, TUN_WIN_ALONE_MAX and TUN_WIN_GROW_RTTS are plain literals:
 * the settings' text quotes them (conf_table.c, SR_XSTR). */
#define TUN_WIN_ALONE_MAX 8

/* Defaults used when a field is 0. */
void tun_conn_opts_defaults(struct tun_conn_opts *o);

/* A new stream that the sidecar side must connect to the driver. */
struct tun_connect_req {
	uint16_t port;      /* from :authority, 127.0.0.1:<port> */
	const char *lease;  /* sparkrelay-lease header ("" if absent) */
	uint64_t conn_id;   /* sparkrelay-conn header, relay-assigned */
	const char *peer;   /* sparkrelay-peer header: the executor's address */
	/* Out: on_connect sets *connected = 1 when the socket it returns is
	 * connected already (a loopback connect() usually completes at once),
	 * which saves the stream a loop iteration before its response. */
	int *connected;
};

struct tun_conn_cbs {
	/* A control message arrived. msg is borrowed for the call. */
	void (*on_ctl)(struct tun_conn *c, const struct tun_ctl_msg *msg, void *arg);
	/* Sidecar only: the control stream is open, register now. */
	void (*on_ctl_open)(struct tun_conn *c, void *arg);
	/* Sidecar only: return a socket that is connecting (sr_bsock_connecting)
	 * or connected (see req->connected) to the driver (the stream takes
	 * ownership), or NULL to refuse the stream, which is then reset with
	 * REFUSED_STREAM. */
	struct sr_bsock *(*on_connect)(struct tun_conn *c, const struct tun_connect_req *req,
				       void *arg);
	/* Bytes were appended to tun_conn_output(), or on_data took frames:
	 * the transport should send them. Called at the end of a flush, never
	 * from inside nghttp2. */
	void (*on_output)(struct tun_conn *c, void *arg);
	/* Optional, the transport's: send one DATA frame now, its 9-byte header
	 * then len payload bytes found at offset off of src (which it must not
	 * change). Called only when tun_conn_output() is empty, so frames stay in
	 * order. The transport may hold them until on_output, which follows at
	 * the end of the flush (so several frames leave in one send). Returns 0,
	 * SR_EBUSY (no room now: try later), or another SR_E* (the transport
	 * failed). Without it frames are copied to the output. */
	int (*on_data)(struct tun_conn *c, const uint8_t *hdr, struct evbuffer *src, size_t off,
		       size_t len, void *arg);
	/* Optional: the control messages queued so far have all gone out, after
	 * tun_conn_ctl_flushed() returned 0. Frames submitted from here on
	 * reach the peer after them. */
	void (*on_ctl_sent)(struct tun_conn *c, void *arg);
	/* Optional: a PING round trip completed (microseconds). Counters only. */
	void (*on_rtt)(struct tun_conn *c, uint64_t rtt_us, void *arg);
	/* Optional: the peer has processed every frame queued before the last
	 * tun_conn_confirm() (a PING sent after them came back). Called while
	 * frames are being read: it must not close or free c. */
	void (*on_confirmed)(struct tun_conn *c, void *arg);
	/* Optional, relay: the sidecar reset a stream we opened before answering
	 * it, with REFUSED_STREAM: it could not connect to the driver (or the
	 * stream broke its rules). Streams being resumed do not count. Counters
	 * and logs only. */
	void (*on_refused)(struct tun_conn *c, uint64_t conn_id, uint16_t port, void *arg);
	/* Optional, sidecar: the socket on_connect returned still connecting
	 * did not connect (err: an errno value, ETIMEDOUT after the socket's
	 * write timeout); the stream is reset with REFUSED_STREAM. peer is the
	 * executor's address header. Counters and logs only. */
	void (*on_connect_failed)(struct tun_conn *c, uint64_t conn_id, uint16_t port,
				  const char *peer, int err, void *arg);
	/* The tunnel is over (err is an SR_E* code, or 0 for a clean end). Called
	 * once, from a deferred event; the owner may tun_conn_free(c) in it. */
	void (*on_closed)(struct tun_conn *c, int err, void *arg);
};

struct tun_conn_stats {
	uint64_t streams_opened;
	uint64_t streams_closed;
	uint64_t streams_reset;
	uint64_t bytes_to_tunnel;   /* payload read from sockets, sent as DATA */
	uint64_t bytes_from_tunnel; /* payload received as DATA, written to sockets */
	size_t streams_active;
	uint64_t last_rtt_us;       /* of the last PING round trip, 0 if none */
	uint64_t min_rtt_us;        /* the smallest PING round trip so far, 0 if none */
	uint64_t window_grows;      /* times a stream's receive window was doubled */
	uint64_t stream_window_max; /* largest receive window a stream reached */
	uint64_t sock_in_buffered;  /* now; counted only when sock_in_max is set */
	uint64_t sock_in_throttled; /* times the tunnel went over sock_in_max */
	uint64_t h2_queued;         /* now: frames nghttp2 holds, not yet serialized */
	uint64_t unacked;           /* now: DATA bytes sent, not yet acknowledged (kept) */
};

/* logctx is copied and prefixes every log line ("lease=L-3 peer=10.0.0.3:5123").
 * Nothing is sent and no callback runs until tun_conn_start(). Returns NULL
 * on allocation or nghttp2 failure. */
struct tun_conn *tun_conn_new(struct event_base *base, enum tun_role role,
			      const struct tun_conn_opts *opts, const struct tun_conn_cbs *cbs,
			      void *arg, const char *logctx);
/* Queue the connection preface (SETTINGS; the relay's control stream) and
 * start the PING timer. Calls on_output. */
void tun_conn_start(struct tun_conn *c);
void tun_conn_free(struct tun_conn *c);

/* ---- transport side ---------------------------------------------------- */

/* Bytes from the peer (plaintext). Returns 0, or a negative SR_E* code once
 * the session has failed (it is closing; on_closed follows): stop feeding. */
int tun_conn_recv(struct tun_conn *c, const uint8_t *data, size_t len);

/* A reference-counted block of received plaintext. Given to
 * tun_conn_recv_block(), its DATA payloads may go to a socket's output by
 * reference instead of by copy (when that socket is keeping up), each such
 * reference holding one count; release runs when the count drops to 0. */
struct tun_rblock {
	unsigned refs;
	void (*release)(struct tun_rblock *b);
};
int tun_conn_recv_block(struct tun_conn *c, const uint8_t *data, size_t len,
			struct tun_rblock *b);
/* What to send to the peer; the transport drains it. Frames are generated
 * only while it holds less than opts.out_high bytes. */
struct evbuffer *tun_conn_output(struct tun_conn *c);
/* The transport took bytes from the output: generate more frames. */
void tun_conn_output_drained(struct tun_conn *c);
/* The transport ended (peer EOF, error, TLS failure). why is logged. */
void tun_conn_transport_failed(struct tun_conn *c, int err, const char *why);

/* Replace the log context (e.g. once the lease is known). */
void tun_conn_set_logctx(struct tun_conn *c, const char *logctx);
const char *tun_conn_logctx(const struct tun_conn *c);
/* A WARN line for a stream the sidecar refuses, rate-limited per session:
 * a hostile relay can open streams faster than a log should grow. */
void tun_conn_log_refused(struct tun_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* 1 if every control message queued so far has gone out (a stream opened
 * now reaches the peer after them); else 0, and on_ctl_sent follows when
 * they have. */
int tun_conn_ctl_flushed(struct tun_conn *c);
/* Ask for on_confirmed once the peer has processed everything queued so
 * far. For control messages, call it once tun_conn_ctl_flushed() (or
 * on_ctl_sent) says they went out: a PING may overtake DATA still queued. */
void tun_conn_confirm(struct tun_conn *c);
/* Queue a control message. Relay: the control stream is opened by
 * tun_conn_new. Returns 0, SR_ECLOSED, SR_ENOMEM. */
int tun_conn_send_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg);

/* Relay only: open a CONNECT stream for an accepted executor socket. Takes
 * ownership of sock in every case (it is closed on failure). Returns 0 or
 * SR_ECLOSED / SR_EBUSY / SR_ENOMEM. */
int tun_conn_open_stream(struct tun_conn *c, struct sr_bsock *sock, uint16_t port,
			 const char *lease, uint64_t conn_id, const char *peer);

/* Graceful end: send GOAWAY; no new streams are accepted or opened. Open
 * streams continue. */
void tun_conn_goaway(struct tun_conn *c);
/* End the tunnel now: pending output is flushed best-effort, every open
 * stream's socket is reset, and on_closed follows (err as given). */
void tun_conn_close(struct tun_conn *c, int err);
/* The same, but the streams go to the conn's group (tun_group.h) to be
 * resumed on another tunnel: used when a newer tunnel replaces this one. */
void tun_conn_close_hold(struct tun_conn *c, int err);

size_t tun_conn_nstreams(const struct tun_conn *c);
/* The most streams the peer takes at once, the control stream included (its
 * SETTINGS_MAX_CONCURRENT_STREAMS; before its SETTINGS came, ours). Past it
 * nghttp2 keeps new streams queued until one ends. */
uint32_t tun_conn_peer_max_streams(const struct tun_conn *c);
/* Whether new streams can still be opened (not closing, no GOAWAY). */
int tun_conn_is_open(const struct tun_conn *c);
void tun_conn_get_stats(const struct tun_conn *c, struct tun_conn_stats *st);

#endif
