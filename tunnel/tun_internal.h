/* Shared between tun_conn.c (the HTTP/2 session) and tun_stream.c (the
 * bridge between one stream and its TCP socket). Not part of the API. */
#ifndef TUN_INTERNAL_H
#define TUN_INTERNAL_H

#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <nghttp2/nghttp2.h>

#include "common/sr_bsock.h"
#include "common/sr_log.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_group.h"

/* A sidecar session adopts resumed streams with at most this many
 * conn_windows of bytes not yet written to the driver (tun_group.c). In
 * steady state a tunnel leaves at most three unwritten: the window, and
 * the early credit with the grown windows. */
#define TUN_STALE_CONN_WINDOWS 4u

/* Where a stream's socket side is. Changed only through tun_stream_go(),
 * which logs every transition at debug level. */
enum ts_state {
	TS_ST_NEW,        /* no socket yet (sidecar: before on_connect) */
	TS_ST_CONNECTING, /* sidecar: connect() to the driver in progress */
	TS_ST_OPEN,       /* socket up; up and down tell each direction */
	TS_ST_DEAD,       /* socket closed (FIN or RST sent); waits for nghttp2 */
	TS_ST_REAPING,    /* on conn->dead, freed by the reap event */
};

/* One direction of a stream: up = socket -> tunnel, down = tunnel -> socket. */
enum ts_dir {
	TS_DIR_OPEN, /* bytes flow */
	TS_DIR_EOF,  /* the end was seen at the source (up: socket EOF; down:
		      * END_STREAM received) and is being passed on */
	TS_DIR_DONE, /* down only: shutdown(SHUT_WR) done, after every byte */
};

/* A token bucket, in thousandths of a token (tun_conn.c, bucket_take). */
struct tun_bucket {
	uint64_t mtokens;
	uint64_t at_us;
};

/* tun_conn.h, tun_limits_new */
struct tun_limits {
	struct tun_bucket early_rst;
	struct sr_ratelog rl_refused; /* sidecar: tun_conn_log_refused */
};

/* Attributes and scheduling marks, not states. */
enum {
	TS_F_CTL = 1u << 0,       /* the control stream */
	TS_F_DEFERRED = 1u << 1,  /* data provider returned DEFERRED */
	TS_F_H2_CLOSED = 1u << 2, /* nghttp2 closed the stream (h2_error says how) */
	TS_F_RESET = 1u << 3,     /* close the socket with RST */
	TS_F_RESPONDED = 1u << 4, /* sidecar: response HEADERS submitted */
	TS_F_HDRS_SENT = 1u << 5, /* our HEADERS went out (sidecar: the answer;
				   * relay: the CONNECT) */
	TS_F_CONN_HDR = 1u << 6,  /* sidecar: the sparkrelay-conn header was seen */
	TS_F_WRITEQ = 1u << 7,    /* on conn->writeq: write its socket at once */
	TS_F_RESUMING = 1u << 8,  /* relay: reopened after a resume, waiting for the
				   * sidecar's answer (and its rx) before sending */
	TS_F_RESUME_HDR = 1u << 9,/* sidecar: the request carried sparkrelay-resume */
	TS_F_LINGER = 1u << 10,   /* ended normally; kept until a PING barrier */
	TS_F_FIN_SENT = 1u << 11, /* END_STREAM went out (serialized) */
	TS_F_ANSWER_SEEN = 1u << 12, /* relay: the sidecar's 200 came */
	TS_F_HELD = 1u << 13,     /* on its group's held list (s->conn is NULL) */
	TS_F_READ_FULL = 1u << 14,/* reading paused: sock_read_high bytes wait to be sent */
	TS_F_FINISHING = 1u << 15,/* complete at both ends; only its socket's output is left */
	TS_F_RST_SENT = 1u << 16, /* we reset it (RST_STREAM): a tombstone until the peer has it */
	TS_F_TOMB_DONE = 1u << 17,/* the peer has our reset (barrier, or it answered a resume) */
	TS_F_ACK_IDLE = 1u << 18, /* its socket output drained with credit unreturned:
				   * acknowledged by the conn's ack_ev (tun_stream.c) */
	TS_F_KEEP_FULL = 1u << 19,/* DEFERRED for want of room to keep sent bytes
				   * (retain_max): an acknowledgement resumes it */
	TS_F_RST_LATER = 1u << 20,/* relay: reset (RST_SENT) before the sidecar's
				   * answer; its RST_STREAM goes once that came */
};

/* Sidecar: a request's headers, bounded. An idle connection should not
 * carry them, so they live apart and go once the request is handled. */
struct ts_req {
	char authority[64];
	char lease[TUN_CTL_LEASE_MAX];
	char method[16];
	char path[40];
};

struct tun_stream {
	struct tun_conn *conn;          /* NULL while held by its group */
	struct tun_group *group;        /* NULL: the stream ends with its session */
	struct tun_stream *next, *prev; /* conn->streams, conn->dead, or group->held */
	struct tun_stream *lnext;       /* conn->linger */
	struct sr_bsock *sock;
	int32_t id;
	enum ts_state st;
	enum ts_dir up, down;
	uint32_t flags;     /* TS_F_* */
	uint32_t h2_error;  /* error code nghttp2 closed the stream with */
	uint16_t port;
	uint32_t pass_out;  /* bytes queued to the socket during this parse (tun_stream.c) */
	uint64_t conn_id;
	uint32_t origin; /* its session's origin when bound (tun_conn_set_origin) */
	unsigned slot;	 /* its session's slot when bound (tun_conn_set_slot) */
	/* Credit accounting for DATA received into this stream's socket output
	 * (see tun_stream.c): stream credit is owed for every such byte until
	 * it is written; connection credit was either returned on arrival
	 * (early, within the conn's budget) or is owed until the write. */
	size_t unconsumed;  /* bytes buffered = stream credit owed = early + conn_owed */
	size_t early;       /* of those, connection credit already returned */
	size_t conn_owed;   /* of those, connection credit still owed */
	/* Receive window (auto-tuning, tun_stream.c): stream_window plus what
	 * it grew by in this session; win_bytes bytes were written to the
	 * socket since win_t0_us, the start of the current measurement. */
	uint32_t win;
	uint32_t win_extra; /* win - stream_window, counted in conn->win_grown */
	uint64_t win_bytes;
	uint64_t win_t0_us;
	uint64_t win_rate;  /* bytes/s over the last window that grew it (and
			     * took a round trip or more), 0: none */
	uint32_t win_alone; /* of win_extra, grown below the growth RTT while
			     * the stream was alone: withheld with company */
	/* Sending side: window growth the peer announced and has not granted
	 * yet; that much credit is no acknowledgement (tun_conn.c). */
	uint64_t peer_grow;
	/* Bytes in the socket's output from an earlier session: written, but
	 * owed to no session's flow control. */
	size_t stale_out;
	/* Resumption (tun_group.h): tx_sent - tx_acked bytes at the front of the
	 * socket's input were sent and await the peer's acknowledgement. */
	uint64_t tx_sent, tx_acked, rx;
	uint64_t peer_rx;   /* from the peer's sparkrelay-resume */
	int peer_fin;
	int peer_rst;       /* the peer reset it while the tunnel was away */
	uint64_t linger_seq; /* the barrier PING that releases it, 0: not yet sent */
	/* held: when its tunnel went (0: handed over from another process,
	 * whose group's first loss counts for it) */
	uint64_t held_us;
	char lease_id[TUN_CTL_LEASE_MAX]; /* relay: for a resumed CONNECT */
	char peer[64]; /* the executor's address (sidecar: from its request) */
	struct ts_req *req; /* sidecar: until its request is handled */
	const char *bad_header; /* sidecar: a request header that broke its rule */
};

/* A tunnel session's life. Changed only through tun_conn_go(), which logs. */
enum tc_state {
	TC_ST_NEW,     /* created; tun_conn_start not called: no output, no callbacks */
	TC_ST_OPEN,    /* running */
	TC_ST_GOAWAY,  /* GOAWAY sent or received: no new streams, open ones go on */
	TC_ST_CLOSING, /* ended; streams killed, output flushed (bounded), reap pending */
	TC_ST_CLOSED,  /* on_closed was called */
};

struct tun_conn {
	struct event_base *base;
	struct evbuffer *out; /* frames for the transport to send */
	struct tun_rblock *rblock; /* what tun_conn_recv is parsing now, if counted */
	nghttp2_session *h2;
	enum tun_role role;
	struct tun_conn_opts opts;
	struct tun_conn_cbs cbs;
	void *arg;
	char logctx[192];

	struct tun_stream *streams; /* every stream nghttp2 may still name */
	struct tun_stream *dead;    /* finished on both sides, freed by reap */
	struct tun_stream *ctl;
	/* Streams that got DATA in this read: their sockets are written right
	 * after the read instead of on the next loop iteration (a hop of
	 * latency per message). Overflow just falls back to the latter. */
	struct tun_stream *writeq[64];
	unsigned nwriteq;
	struct evbuffer *ctl_in, *ctl_out;

	struct event *reap_ev;
	struct event *ping_ev;
	struct event *close_ev; /* bounds the final flush */
	struct event *ack_ev;   /* idle acknowledgements (tun_stream.c); made when first needed */
	uint64_t ack_due_us;    /* when ack_ev fires, if pending (sr_now_us) */
	struct event *barrier_ev; /* a barrier PING's short wait; made when first needed */
	struct event *flush_ev;   /* tun_conn_flush_soon; made when first needed */
	uint64_t last_recv_us;
	uint64_t ping_sent_us;
	uint64_t probe_sent_us;  /* an RTT probe PING in flight since, 0: none */
	uint64_t probe_seq;      /* its payload (TC_PROBE_TAG set) */
	uint64_t probe_at_us;    /* when the last probe was sent */
	int peer_reads_growth;   /* the peer's SETTINGS say it reads growth PINGs */

	/* Sidecar: bytes for the driver that resumed streams brought along
	 * unwritten from earlier sessions (stale_out), owed to no flow
	 * control of this one, by the slot that lost them; capped at
	 * TUN_STALE_CONN_WINDOWS x conn_window each (tun_group.c, take_held). */
	uint64_t stale_adopted[TUN_GROUP_SLOTS];
	int stale_said;	       /* the cap's warning was logged on this session */
	size_t early_buffered; /* sum of streams' early bytes; capped at conn_window
				* plus win_grown */
	size_t win_grown; /* sum of streams' win_extra: at most conn_window */
	/* Company (tun_stream.c): the last stream DATA arrived on, and when
	 * DATA last arrived on a stream other than the one before it. */
	int32_t data_last_id;
	uint64_t data_mixed_us;
	size_t in_buffered;    /* sum of the sockets' input (opts.sock_in_max set) */
	int in_throttled;      /* over sock_in_max: sockets read TUN_SOCK_IN_FLOOR at most */
	int peer_goaway;              /* a GOAWAY came (logged once) */
	enum tc_state st;
	struct tun_group *group; /* see tun_group.h; NULL: protocol v1 semantics */
	struct tun_conn *gnext, *gprev; /* the other sessions carrying group */
	uint32_t origin;                /* tun_conn_set_origin; 0: none */
	unsigned slot;			/* tun_conn_set_slot; below TUN_GROUP_SLOTS */
	/* Sidecar: resumed CONNECTs the lease on this session announced, and
	 * those come so far (tun_group_expect_on). */
	uint64_t resume_expect, resume_got;
	struct tun_stream *linger; /* ended streams waiting for a PING barrier */
	uint64_t ping_seq;       /* last barrier PING's payload */
	uint64_t barrier_out;    /* a barrier PING in flight, 0 if none */
	uint64_t barrier_sent_us; /* when it was sent */
	int want_barrier;        /* a stream lingers without a barrier yet */
	int confirm_wanted;      /* tun_conn_confirm: the next barrier answers it */
	uint64_t confirm_seq;    /* the barrier whose ACK calls on_confirmed, 0: none */
	int started_once; /* tun_conn_start was called (output may exist) */
	int ctl_wait;     /* on_ctl_sent is owed once ctl_out is empty */
	int flushing;     /* CLOSING, but the output is still being flushed */
	int close_err;
	int in_h2;        /* inside an nghttp2 call: do not re-enter */
	int want_flush;
	int data_held;  /* on_data took frames in this flush: on_output follows */
	uint32_t goaway_sent_error; /* we ended the session for a peer's error */
	char goaway_sent_why[80];   /* nghttp2's words for it (GOAWAY debug data) */
	/* Token buckets (tun_conn.c): sidecar, streams the relay reset before
	 * our answer went out ("rapid reset"); both roles, the peer's SETTINGS
	 * frames. */
	struct tun_bucket settings_in; /* each tunnel's own: one SETTINGS opens it */
	struct tun_limits own_limits;  /* unless opts.limits */
	struct tun_limits *lim;	      /* one of the two */
	struct tun_conn_stats stats;
};

struct tun_group {
	struct event_base *base;
	enum tun_role role;
	struct tun_group_opts opts;
	char logctx[192];
	char lease[TUN_CTL_LEASE_MAX];
	/* The sessions carrying it now (tun_conn.gnext), NULL: none. A sidecar
	 * with several tunnels to its lease has one group over all of them. */
	struct tun_conn *conn;
	struct tun_stream *held;  /* streams waiting for a tunnel */
	size_t nheld;
	size_t nheld_slot[TUN_GROUP_SLOTS]; /* of them, by the slot they were lost from */
	/* Streams complete at both ends when the tunnel died (the peer has
	 * forgotten them): their sockets get what is left, then a clean end. */
	struct tun_stream *finishing;
	uint64_t expect, got;     /* relay: resumed streams reopened / answered */
	uint64_t resume_started_us;
	/* When the tunnel that went last received anything: the outage began
	 * then, a PING timeout later than that. For the resume log only. */
	uint64_t silent_since_us;
	uint64_t replayed_at_resume; /* to log what one resume replayed */
	uint64_t resumed_at_resume;
	uint64_t lost_at_resume[TUN_LOST_MAX];
	struct event *hold_ev;
	int frozen;               /* handing over (tun_handover.h): sockets untouched */
	uint64_t hold_left_ms;    /* while frozen: what the hold timer had left */
	struct tun_group_stats st;
};

/* tun_group.c, for tun_conn.c and tun_stream.c */
/* The session ended without its owner's say: hold s (socket kept, not read). */
void tun_group_hold(struct tun_group *g, struct tun_stream *s);
/* Sidecar: a CONNECT that carries sparkrelay-resume, on stream placeholder p
 * (no socket). Returns the stream that now carries the id (the held one,
 * which replaced p), or NULL after answering with RST (code in *rst). */
struct tun_stream *tun_group_take(struct tun_group *g, struct tun_conn *c,
				  struct tun_stream *p, uint32_t *rst);
/* Free a held stream; a live one is reset and counted lost (why). */
void tun_group_lose(struct tun_group *g, struct tun_stream *s, enum tun_lost why);
/* A held stream's socket failed: reset, kept as a tombstone for the resume. */
void tun_group_socket_failed(struct tun_group *g, struct tun_stream *s);
/* Relay: the sidecar answered a resumed stream (or refused it). */
void tun_group_answered(struct tun_group *g, struct tun_stream *s);
/* Apply the peer's rx to s: drop what it has, resend the rest. 0 or -1 when
 * the counts cannot both be true. */
int tun_stream_apply_peer_rx(struct tun_stream *s);
/* Whether the peer's count peer_rx (and its end, peer_fin) can be true of
 * what s sent: between what it acknowledged and what was sent. */
int tun_stream_peer_rx_valid(const struct tun_stream *s, uint64_t peer_rx, int peer_fin);
/* A stream the peer no longer has but that was complete at both ends
 * (END_STREAM each way): deliver what is left and end cleanly. 1 if s was
 * complete (and is now the group's to finish), 0 if it is a loss. */
int tun_group_finish(struct tun_group *g, struct tun_stream *s);
/* A finishing stream's socket is done: free it. */
void tun_group_finished(struct tun_group *g, struct tun_stream *s);
/* One resumed CONNECT was handled on c (sidecar). */
void tun_group_count_resumed(struct tun_group *g, struct tun_conn *c);

/* tun_stream.c */
/* Shut the socket's write side, or end a finishing stream, if it is time. */
void tun_stream_finish_check(struct tun_stream *s);
/* Bytes left the socket's input as DATA: resume reading if it was full. */
void tun_stream_read_resume(struct tun_stream *s);
/* The peer acknowledged n more bytes (a stream WINDOW_UPDATE). */
void tun_stream_on_ack(struct tun_stream *s, uint32_t n);
/* Leave / join a session (resumption): sockets are not read while away. */
void tun_stream_unbind(struct tun_stream *s);
void tun_stream_bind(struct tun_stream *s, struct tun_conn *c);
/* Change s->st (logged at debug level with why). */
void tun_stream_go(struct tun_stream *s, enum ts_state st, const char *why);
/* Steals sock (may be NULL): it is freed on failure too. */
struct tun_stream *tun_stream_new(struct tun_conn *c, struct sr_bsock *sock);
void tun_stream_free(struct tun_stream *s);
/* Free s and close our descriptor of its socket, and nothing else: the
 * connection is another process's now (tun_handover.h). */
void tun_stream_forget(struct tun_stream *s);
/* Free s, its socket closed with a reset. */
void tun_stream_free_reset(struct tun_stream *s);
/* Give the stream its socket (sidecar: after on_connect). On failure the
 * socket is freed and SR_ENOMEM returned. */
int tun_stream_attach(struct tun_stream *s, struct sr_bsock *sock);
/* The same for a held stream (no session): a socket adopted in a handover.
 * Neither reading nor writing is enabled here. */
int tun_stream_attach_held(struct tun_stream *s, struct sr_bsock *sock);
/* The socket side is finished: close the socket now (with RST if asked).
 * The struct is freed from the conn's reap event once nghttp2 has closed
 * the stream too (tun_stream_maybe_reap, called again from on_stream_close). */
void tun_stream_kill(struct tun_stream *s, int reset_socket);
void tun_stream_maybe_reap(struct tun_stream *s);
void tun_stream_start_reading(struct tun_stream *s);
/* The driver socket is connected: answer the CONNECT and start reading. */
void tun_stream_connected(struct tun_stream *s);
/* nghttp2 delivered DATA for this stream. */
void tun_stream_on_data(struct tun_stream *s, const uint8_t *data, size_t len);
void tun_stream_on_peer_eof(struct tun_stream *s);
void tun_stream_on_h2_close(struct tun_stream *s, uint32_t error_code);
/* Write the queued output of the streams on conn->writeq now. */
void tun_stream_write_queued(struct tun_conn *c);
void tun_stream_writeq_drop(struct tun_conn *c);
extern const nghttp2_data_provider tun_stream_data_prd;

/* tun_conn.c, for tun_stream.c and tun_group.c */
/* Keep an ended stream until a PING barrier shows the peer has all of it. */
void tun_conn_linger(struct tun_conn *c, struct tun_stream *s);
/* Relay: open a CONNECT for s (new, or resumed with resume set). */
int tun_conn_submit_connect(struct tun_conn *c, struct tun_stream *s, int resume);
/* Move a held stream onto c, as stream id. */
void tun_conn_adopt(struct tun_conn *c, struct tun_stream *s, int32_t id);
#define tun_conn_closing(c) ((c)->st >= TC_ST_CLOSING)
void tun_conn_go(struct tun_conn *c, enum tc_state st);
void tun_conn_flush(struct tun_conn *c);
/* tun_conn_flush once the callbacks already due in this loop iteration ran:
 * the sockets read in one wake-up then share TLS records and a sendmsg. */
void tun_conn_flush_soon(struct tun_conn *c);
void tun_conn_schedule_reap(struct tun_conn *c);
/* Return window credit: both levels, stream only, connection only. */
void tun_conn_consume(struct tun_conn *c, int32_t id, size_t n);
void tun_conn_consume_stream(struct tun_conn *c, int32_t id, size_t n);
void tun_conn_consume_conn(struct tun_conn *c, size_t n);
/* A stream's window may grow: make sure the tunnel's minimum RTT is known
 * and not too old (an RTT probe PING, one at a time). */
void tun_conn_rtt_probe(struct tun_conn *c);
/* Raise s's receive window to win bytes: announce the growth to the peer,
 * then grant it. 0, or -1 if not done (the peer does not read
 * announcements, or nothing to grow). */
int tun_conn_grow_window(struct tun_conn *c, struct tun_stream *s, uint32_t win);
int tun_conn_submit_response(struct tun_conn *c, struct tun_stream *s);
void tun_conn_reset_stream(struct tun_conn *c, struct tun_stream *s, uint32_t code);

#endif
