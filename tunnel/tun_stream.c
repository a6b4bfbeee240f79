/* The bridge between one HTTP/2 stream and one TCP socket, used by both the
 * relay (executor socket) and the sidecar (driver socket).
 *
 * Connection credit: a stalled socket must not hold connection window, or
 * enough stalled executors (conn_window / stream_window of them) would stop
 * every stream of the tunnel, heartbeats included. So connection credit is
 * returned as soon as DATA is buffered, as long as the tunnel's early-paid
 * buffered bytes stay under conn_window; past that budget it is returned
 * when the bytes are written, as stream credit always is. A stream whose
 * window grew (auto-tuning, below) widens that budget by its growth, for as
 * long as it holds bytes for this session: else two grown streams that stall
 * could hold every byte of the connection window. Growth on a tunnel is at
 * most conn_window in all, so memory per tunnel stays bounded by about three
 * times conn_window.
 *
 * Backpressure, both ways:
 *  - socket -> tunnel: the socket's read high watermark stops reading while
 *    its input holds sock_read_high bytes that the data provider has not
 *    turned into DATA frames (the stream window or the tunnel is full).
 *  - tunnel -> socket: DATA is appended to the socket's output and consumed
 *    (WINDOW_UPDATE) only as the output evbuffer callback reports bytes
 *    written to the kernel, so a stalled socket holds at most its window.
 *    The window is the stream's own (s->win, see "Receive window
 *    auto-tuning" below), at most max_stream_window.
 *  - socket -> tunnel, per tunnel (opts.sock_in_max): a peer that grants no
 *    window would otherwise make every socket of the tunnel hold
 *    sock_read_high bytes. Over the cap, every socket's read high watermark
 *    drops to TUN_SOCK_IN_FLOOR (so small messages still pass) until the sum
 *    is back under half the cap. */
#include "tunnel/tun_internal.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_bsock.h"
#include "common/sr_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>

/* Payloads at least this large may be queued by reference (stream_take_data). */
#define TS_REF_MIN 4096
/* A stream whose socket has written everything it received returns the
 * stream credit nghttp2 is still holding back this long after (ack_idle_cb).
 * Short, so that the chains the acknowledged bytes free are reused by the
 * connections opened next rather than left as holes in the heap (200 ms cost
 * 0.1-0.4 KiB of RSS per connection in the idle bench); long enough that a
 * busy stream sends at most 50 such WINDOW_UPDATEs a second. */
#define TS_ACK_IDLE_MS 20


static void stream_log_ctx(const struct tun_stream *s, char *buf, size_t len)
{
	const char *ctx = s->conn ? s->conn->logctx : s->group ? s->group->logctx : "";

	snprintf(buf, len, "%s conn=%llu stream=%d", ctx, (unsigned long long)s->conn_id, s->id);
}

static void maybe_finish(struct tun_stream *s);
static int sock_write_now(struct tun_stream *s);
static void read_check(struct tun_stream *s);

/* Bytes the sender keeps for a replay: sent, not yet acknowledged. */
static size_t retained(const struct tun_stream *s)
{
	return (size_t)(s->tx_sent - s->tx_acked);
}

/* What the socket's input holds beyond the retained bytes: not yet sent. */
static size_t unsent(const struct tun_stream *s)
{
	size_t len = s->sock ? evbuffer_get_length(sr_bsock_input(s->sock)) : 0;
	size_t r = retained(s);

	return len > r ? len - r : 0;
}

/* The data provider of s stopped for want of room to keep sent bytes
 * (stream_read_cb): let it look again. Only then: a stream deferred for
 * want of socket bytes is resumed by its socket's next read, and resuming
 * it on every acknowledgement cost a flush pass per WINDOW_UPDATE. */
static void resume_sending(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	if (!(s->flags & TS_F_KEEP_FULL))
		return;
	s->flags &= ~TS_F_KEEP_FULL;
	if (c && c->h2 && s->id > 0 && (s->flags & TS_F_DEFERRED) &&
	    !(s->flags & (TS_F_H2_CLOSED | TS_F_RESUMING))) {
		s->flags &= ~TS_F_DEFERRED;
		nghttp2_session_resume_data(c->h2, s->id);
		tun_conn_flush_soon(c);
	}
}

void tun_stream_on_ack(struct tun_stream *s, uint32_t n)
{
	size_t r = retained(s);

	if (n > r)
		n = (uint32_t)r; /* credit for bytes dropped with a dead socket */
	if (n && s->sock)
		evbuffer_drain(sr_bsock_input(s->sock), n);
	s->tx_acked += n;
	resume_sending(s);
}

int tun_stream_peer_rx_valid(const struct tun_stream *s, uint64_t peer_rx, int peer_fin)
{
	return peer_rx >= s->tx_acked && peer_rx <= s->tx_sent &&
	       !(peer_fin && s->up == TS_DIR_OPEN);
}

int tun_stream_apply_peer_rx(struct tun_stream *s)
{
	uint64_t drop;

	if (!tun_stream_peer_rx_valid(s, s->peer_rx, s->peer_fin))
		return -1;
	drop = s->peer_rx - s->tx_acked;
	if (drop && s->sock)
		evbuffer_drain(sr_bsock_input(s->sock), (size_t)drop);
	if (s->group)
		s->group->st.replayed_bytes += s->tx_sent - s->peer_rx;
	s->tx_acked = s->tx_sent = s->peer_rx;
	read_check(s);
	return 0;
}

void tun_stream_go(struct tun_stream *s, enum ts_state st, const char *why)
{
	static const char *const names[] = {"NEW", "CONNECTING", "OPEN", "DEAD", "REAPING"};

	if (sr_log_level_cur >= SR_LOG_DEBUG && !(s->flags & TS_F_CTL)) {
		char ctx[256];
		stream_log_ctx(s, ctx, sizeof(ctx));
		SR_DEBUG(ctx, "%s -> %s (%s)", names[s->st], names[st], why);
	}
	s->st = st;
}

/* Receive window auto-tuning. One stream moves at most window/RTT, so on a
 * long path the configured stream_window, sized for heartbeats beside bulk
 * and for what a stalled socket may hold, throttles bulk. Each stream
 * measures how long its socket takes to take a whole window (bytes written,
 * so a stalled or slow reader never counts as fast); when that is under
 * TUN_WIN_GROW_RTTS times the tunnel's smallest PING round trip, and at a
 * rate a quarter above that of the window before (the last growth paid),
 * the window is doubled, up to max_stream_window (and conn_window). It never
 * shrinks within a session; a stalled stream holds at most its window, at
 * most max_stream_window. On a short path (below TUN_WIN_GROW_MIN_RTT_US) a
 * window grows only while its stream is alone on the tunnel, and the peer
 * gets that growth only while it is (has_company, stream_credit).
 *
 * Stream credit is ours rather than nghttp2_session_consume's, so that it
 * is returned in steps of half the configured window whatever the window
 * has grown to: credit for bytes written to the socket. The sending side
 * takes credit as proof that bytes arrived (tun_stream_on_ack frees them
 * from its replay buffer), so growth, credit for bytes not received, is
 * announced first (tun_conn_grow_window), and only to a peer that says it
 * reads announcements. */
static uint32_t win_max(const struct tun_conn *c)
{
	uint32_t m = c->opts.max_stream_window;

	if (m > c->opts.conn_window)
		m = c->opts.conn_window;
	return m > c->opts.stream_window ? m : c->opts.stream_window;
}

/* The most bytes a stream keeps sent and unacknowledged (retained): the
 * largest window a peer of ours grants (it acknowledges as its socket takes
 * bytes, so it never has more than its window unacknowledged), and only
 * stream_window while the tunnel is over opts.sock_in_max, whose count
 * includes them: many streams then hold a window each, not a grown one.
 * stream_window still lets an honest peer's acknowledgements (in half
 * windows) come at its pace. At most half the cap, so that one grown stream
 * alone never throttles its tunnel. */
static size_t retain_max(const struct tun_conn *c)
{
	size_t m = c->in_throttled ? c->opts.stream_window : win_max(c);

	if (c->opts.sock_in_max && m > c->opts.sock_in_max / 2)
		m = c->opts.sock_in_max / 2;
	return m > TUN_SOCK_IN_FLOOR ? m : TUN_SOCK_IN_FLOOR;
}

/* s holds no more bytes for its session (unbound or its socket closed):
 * its growth no longer widens the session's early budget. */
static void win_release(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	if (c)
		c->win_grown -= s->win_extra < c->win_grown ? s->win_extra : c->win_grown;
	s->win_extra = 0;
	s->win_alone = 0;
}

/* DATA arrived on another stream of c within TUN_COMPANY_US: its bytes
 * cross the tunnel in the same direction as those of a bulk stream here, and
 * wait behind whatever that stream has in flight; so will the next ones. */
static uint64_t company_left_us(const struct tun_conn *c)
{
	uint64_t span = c->opts.company_us ? c->opts.company_us : TUN_COMPANY_US;
	uint64_t since;

	if (!c->data_mixed_us)
		return 0;
	since = sr_now_us() - c->data_mixed_us;
	return since < span ? span - since : 0;
}

static int has_company(const struct tun_conn *c)
{
	return company_left_us(c) > 0;
}

/* Credit s withholds now: its window grown while alone, if it has company.
 * With it withheld the peer has the configured window (plus growth for a
 * long path) and no more; it comes back once the stream is alone again. The
 * bytes it stands for are no loss on a resume, which replays from what this
 * end says it received, not from what it credited. */
static size_t credit_withheld(const struct tun_stream *s)
{
	return s->win_alone && has_company(s->conn) ? s->win_alone : 0;
}

static void win_reset(struct tun_stream *s, const struct tun_conn *c)
{
	s->win = c->opts.stream_window;
	s->win_extra = 0;
	s->win_bytes = 0;
	/* The first window is timed from here, when it was offered: its bytes
	 * come in one burst, whose rate says nothing. */
	s->win_t0_us = sr_now_us();
	s->win_rate = 0;
	s->win_alone = 0;
	s->peer_grow = 0; /* a new HTTP/2 stream: announcements were for the old */
}

/* Credit for the bytes written to the socket: those received (nghttp2's
 * effective recv data length: received, not yet credited) less those still
 * buffered for the socket. */
static void stream_credit(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;
	size_t hold = s->unconsumed;
	int32_t ru;

	if (s->id <= 0 || !c->h2)
		return;
	hold += credit_withheld(s);
	ru = nghttp2_session_get_stream_effective_recv_data_length(c->h2, s->id);
	if (ru <= 0 || (size_t)ru <= hold)
		return;
	/* In half windows, as nghttp2 would: fewer frames. */
	if ((size_t)ru - hold < c->opts.stream_window / 2)
		return;
	nghttp2_submit_window_update(c->h2, NGHTTP2_FLAG_NONE, s->id, (int32_t)((size_t)ru - hold));
}

/* n more bytes of s were written to its socket. */
static void win_consumed(struct tun_stream *s, size_t n)
{
	struct tun_conn *c = s->conn;
	uint32_t max = win_max(c);
	uint64_t now, elapsed, rate, rtt = c->stats.min_rtt_us;
	int far;

	if (s->win >= max || (s->flags & TS_F_CTL) || !c->peer_reads_growth)
		return;
	now = sr_now_us();
	s->win_bytes += n;
	if (s->win_bytes < s->win)
		return;
	/* Measured from the end of the previous window, idle gaps included:
	 * a reader that takes big gulps at a slow pace is slow. */
	elapsed = now - s->win_t0_us;
	rate = s->win_bytes * 1000000u / (elapsed ? elapsed : 1);
	/* Only while growing pays: a window-limited stream goes about twice as
	 * fast with twice the window; one limited by its reader, the path or
	 * the CPU does not, and more window would only be more bytes queued. */
	far = rtt >= (c->opts.grow_min_rtt_us ? c->opts.grow_min_rtt_us : TUN_WIN_GROW_MIN_RTT_US);
	if (!far) {
		/* A short path: only while alone, up to TUN_WIN_ALONE_MAX windows. */
		uint64_t cap = (uint64_t)c->opts.stream_window * TUN_WIN_ALONE_MAX;

		if (cap < max)
			max = (uint32_t)cap;
		if (s->win >= max || has_company(c))
			goto next;
	}
	if (elapsed < TUN_WIN_GROW_RTTS * rtt && rate * 4 > s->win_rate * 5) {
		uint32_t w = s->win > max / 2 ? max : s->win * 2;

		if (c->win_grown + (w - s->win) > c->opts.conn_window)
			goto next; /* the tunnel's growth budget is spent */
		if (sr_log_level_cur >= SR_LOG_DEBUG) {
			char ctx[256];
			stream_log_ctx(s, ctx, sizeof(ctx));
			SR_DEBUG(ctx, "receive window %u -> %u bytes (a window in %llu us, "
				      "min RTT %llu us, %llu bytes/s)",
				 s->win, w, (unsigned long long)elapsed, (unsigned long long)rtt,
				 (unsigned long long)rate);
		}
		if (tun_conn_grow_window(c, s, w) == 0) {
			c->win_grown += w - s->win;
			s->win_extra += w - s->win;
			if (!far)
				s->win_alone += w - s->win;
			s->win = w;
			/* A window taken within a round trip came in a burst
			 * (it was in flight already): its rate is no measure. */
			if (elapsed >= rtt)
				s->win_rate = rate;
			c->stats.window_grows++;
			if (w > c->stats.stream_window_max)
				c->stats.stream_window_max = w;
		}
	}
next:
	s->win_bytes = 0;
	s->win_t0_us = now;
}

/* ack_ev fires in ms milliseconds, or sooner if it already would. */
static void ack_arm(struct tun_conn *c, uint64_t ms)
{
	uint64_t due = sr_now_us() + ms * 1000;
	struct timeval tv = sr_tv_ms(ms);

	if (evtimer_pending(c->ack_ev, NULL) && c->ack_due_us <= due)
		return;
	c->ack_due_us = due;
	evtimer_add(c->ack_ev, &tv);
}

/* nghttp2 returns stream credit only once half the window is consumed, so
 * the last bytes of an exchange stay unacknowledged for as long as the
 * stream is idle, and the sender keeps them (and the buffer chain holding
 * them: about 1 KiB for a few bytes) for a replay that cannot be needed.
 * Streams whose socket output drained hand back what they consumed once a
 * timer of the conn fires: at most one WINDOW_UPDATE per stream per
 * TS_ACK_IDLE_MS, each for bytes written to the socket, as tun_group.h
 * requires of an acknowledgement. */
static void ack_idle_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_conn *c = arg;
	int sent = 0, again = 0;

	(void)fd;
	(void)what;
	if (!c->h2 || tun_conn_closing(c))
		return;
	/* The transport is backed up (the peer does not read): frames wait
	 * in our output or, behind a DATA frame the transport would not take,
	 * in nghttp2's queue. An update queued now would only wait too, and
	 * returning credit lets the peer send more, which marks its stream
	 * idle again: a peer that trickles bytes and never reads would grow
	 * that queue without end. Look again later; the marks stay. */
	if (evbuffer_get_length(c->out) >= c->opts.out_high ||
	    nghttp2_session_get_outbound_queue_size(c->h2) > 0) {
		ack_arm(c, TS_ACK_IDLE_MS);
		return;
	}
	for (struct tun_stream *s = c->streams; s; s = s->next) {
		int32_t n;
		size_t keep;

		if (!(s->flags & TS_F_ACK_IDLE))
			continue;
		s->flags &= ~TS_F_ACK_IDLE;
		/* Busy again: the next drain marks it anew. */
		if (s->unconsumed || !s->sock || s->id <= 0 || (s->flags & TS_F_H2_CLOSED) ||
		    evbuffer_get_length(sr_bsock_output(s->sock)) != 0)
			continue;
		/* Everything received is consumed (unconsumed is 0): what
		 * nghttp2 has not acknowledged yet is written to the socket. */
		n = nghttp2_session_get_stream_effective_recv_data_length(c->h2, s->id);
		keep = credit_withheld(s);
		if (keep) {
			/* the rest when the stream is alone again */
			s->flags |= TS_F_ACK_IDLE;
			again = 1;
			n = n > 0 && (size_t)n > keep ? n - (int32_t)keep : 0;
		}
		if (n > 0 && nghttp2_submit_window_update(c->h2, NGHTTP2_FLAG_NONE, s->id, n) == 0)
			sent = 1;
	}
	if (again) {
		/* Withheld until the company is gone: look then (new company
		 * moves that end; it is looked up again then). */
		uint64_t ms = company_left_us(c) / 1000 + 1;

		ack_arm(c, ms > TS_ACK_IDLE_MS ? ms : TS_ACK_IDLE_MS);
	}
	if (sent)
		tun_conn_flush(c);
}

static void ack_when_idle(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	if ((s->flags & TS_F_ACK_IDLE) || s->id <= 0 || !c->h2 ||
	    nghttp2_session_get_stream_effective_recv_data_length(c->h2, s->id) <= 0)
		return;
	if (!c->ack_ev && !(c->ack_ev = evtimer_new(c->base, ack_idle_cb, c)))
		return; /* out of memory: the bytes wait for nghttp2's own update */
	s->flags |= TS_F_ACK_IDLE;
	/* Sooner than a stream that waits for its company to leave. */
	ack_arm(c, TS_ACK_IDLE_MS);
}

static void sock_out_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct tun_stream *s = arg;
	size_t n = info->n_deleted;
	size_t owed, early;

	if (n == 0)
		return;
	/* Bytes of an earlier session were owed to no flow control of this one. */
	if (s->stale_out) {
		size_t k = n < s->stale_out ? n : s->stale_out;
		s->stale_out -= k;
		n -= k;
	}
	if (n == 0 || !s->conn)
		return;
	if (n > s->unconsumed)
		n = s->unconsumed; /* never consume more than was received */
	s->unconsumed -= n;
	/* Which of the written bytes were paid early does not matter, only
	 * that every byte's connection credit is returned exactly once. */
	owed = n < s->conn_owed ? n : s->conn_owed;
	early = n - owed;
	s->conn_owed -= owed;
	s->early -= early;
	s->conn->early_buffered -= early;
	s->conn->stats.bytes_from_tunnel += n;
	win_consumed(s, n);
	stream_credit(s);
	tun_conn_consume_conn(s->conn, owed);
	if (s->unconsumed == 0 && evbuffer_get_length(buf) == 0)
		ack_when_idle(s);
	tun_conn_flush_soon(s->conn); /* the credit of every socket written now, together */
}

static void maybe_finish(struct tun_stream *s)
{
	if (s->st >= TS_ST_DEAD)
		return;
	if (s->down == TS_DIR_EOF && s->st == TS_ST_OPEN && s->sock &&
	    evbuffer_get_length(sr_bsock_output(s->sock)) == 0) {
		/* The driver or executor sees FIN only after every byte. */
		shutdown(sr_bsock_fd(s->sock), SHUT_WR);
		s->down = TS_DIR_DONE;
	}
	if (!(s->flags & TS_F_H2_CLOSED))
		return;
	/* Closed without END_STREAM from the peer (RST_STREAM, even with
	 * NO_ERROR): its direction was cut, not finished, so the socket gets a
	 * reset rather than being left open with nobody behind it. */
	if (s->h2_error != NGHTTP2_NO_ERROR || s->down == TS_DIR_OPEN) {
		tun_stream_kill(s, 1);
		return;
	}
	if (s->down != TS_DIR_DONE || (s->flags & TS_F_LINGER))
		return;
	if (s->flags & TS_F_FINISHING) {
		tun_group_finished(s->group, s); /* its socket has had everything */
		return;
	}
	/* Ended normally at both ends of this session; but our last frames may
	 * not have reached the peer if the tunnel dies now: a resumable stream
	 * keeps its socket (both directions finished) until a PING barrier. */
	if (s->conn->group)
		tun_conn_linger(s->conn, s);
	else
		tun_stream_kill(s, 0);
}

static void sock_event_cb(struct sr_bsock *bev, short what, void *arg);

void tun_stream_finish_check(struct tun_stream *s)
{
	maybe_finish(s);
}

/* The read high watermark of this conn's sockets right now. */
static size_t sock_read_high(const struct tun_conn *c)
{
	size_t high = c->opts.sock_read_high;

	if (c->in_throttled && high > TUN_SOCK_IN_FLOOR)
		high = TUN_SOCK_IN_FLOOR;
	return high;
}

/* Reading a socket pauses while sock_read_high bytes wait to be sent
 * (TS_F_READ_FULL), and resumes once they are sent. The input also holds the
 * sent, unacknowledged bytes, which do not count here. */
static void read_check(struct tun_stream *s)
{
	if (s->sock && s->conn && !(s->flags & TS_F_READ_FULL) &&
	    unsent(s) >= sock_read_high(s->conn)) {
		s->flags |= TS_F_READ_FULL;
		sr_bsock_disable(s->sock, EV_READ);
	}
}

void tun_stream_read_resume(struct tun_stream *s)
{
	if ((s->flags & TS_F_READ_FULL) && s->conn && unsent(s) < sock_read_high(s->conn)) {
		s->flags &= ~TS_F_READ_FULL;
		tun_stream_start_reading(s);
	}
}

static void in_throttle(struct tun_conn *c, int on)
{
	c->in_throttled = on;
	if (on)
		c->stats.sock_in_throttled++;
	for (struct tun_stream *s = c->streams; s; s = s->next) {
		if (on) {
			read_check(s);
		} else {
			tun_stream_read_resume(s);
			resume_sending(s); /* it may keep more than the floor again */
		}
	}
}

/* Input of a socket grew (read) or shrank (sent as DATA): keep the tunnel's
 * sum, and throttle or release every socket of the tunnel at the edges. */
static void sock_in_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct tun_stream *s = arg;
	struct tun_conn *c = s->conn;

	(void)buf;
	c->in_buffered += info->n_added;
	c->in_buffered -= info->n_deleted < c->in_buffered ? info->n_deleted : c->in_buffered;
	if (!c->in_throttled && c->in_buffered > c->opts.sock_in_max)
		in_throttle(c, 1);
	else if (c->in_throttled && c->in_buffered <= c->opts.sock_in_max / 2)
		in_throttle(c, 0);
}

/* A read event reads once (sr_bsock.c); while that filled what it asked
 * for, top the input up to the read high watermark in large reads, in this
 * same wake-up. The retained bytes at the front do not count against it.
 * Returns 0, or -1 if the stream was ended. */
static int sock_read_more(struct tun_stream *s, struct sr_bsock *bev)
{
	return sr_bsock_read_upto(bev, sock_read_high(s->conn) + retained(s));
}

/* A read that leaves this many bytes of the stream unsent, when they can
 * go out now, flushes the session in its own callback (tun_conn_flush:
 * every stream's pending DATA is sealed and sent) instead of once at the
 * end of the wake-up (tun_conn_flush_soon). With several busy sockets the
 * deferred flush came after all of them were read, up to sock_read_high
 * each; sealing a large read at once cost about 2 % less CPU per byte with
 * one and with eight iperf3 connections (docs/benchmarks.md, "Eight
 * connections: sealed while hot"), presumably because its bytes are still
 * in the CPU's cache. Small reads still share one flush per wake-up, and a
 * stream that cannot send (no window, or the tunnel's output full) does not
 * flush on every read. */
#define SOCK_FLUSH_NOW (64u << 10)

static int can_send_now(const struct tun_stream *s)
{
	const struct tun_conn *c = s->conn;

	return s->id > 0 && evbuffer_get_length(c->out) < c->opts.out_high &&
	       nghttp2_session_get_stream_remote_window_size(c->h2, s->id) > 0 &&
	       nghttp2_session_get_remote_window_size(c->h2) > 0;
}

static void sock_read_cb(struct sr_bsock *bev, void *arg)
{
	struct tun_stream *s = arg;
	struct tun_conn *c = s->conn;

	if (!c) {
		sr_bsock_disable(bev, EV_READ); /* held: the peers wait */
		return;
	}
	if (sock_read_more(s, bev) != 0)
		return;
	read_check(s);
	if (s->id > 0 && (s->flags & TS_F_DEFERRED) && !(s->flags & TS_F_H2_CLOSED)) {
		s->flags &= ~TS_F_DEFERRED;
		nghttp2_session_resume_data(c->h2, s->id);
	}
	if (unsent(s) >= SOCK_FLUSH_NOW && can_send_now(s))
		tun_conn_flush(c);
	else
		tun_conn_flush_soon(c);
}

static void sock_write_cb(struct sr_bsock *bev, void *arg)
{
	struct tun_stream *s = arg;

	if (s->st == TS_ST_OPEN && evbuffer_get_length(sr_bsock_output(bev)) == 0)
		sr_bsock_disable(bev, EV_WRITE); /* until bytes wait again */
	maybe_finish(s);
	if (s->conn)
		tun_conn_schedule_reap(s->conn);
}

/* Linux reports a peer's reset as end of file when it arrives with nothing
 * left to read (recv checks the socket's "done" state before its error):
 * the reset is then still pending as the socket's error. A reset must not
 * reach the other end as a clean end. */
static short eof_or_reset(struct sr_bsock *bev, short what)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if ((what & SR_BS_EOF) && !(what & SR_BS_ERROR) &&
	    getsockopt(sr_bsock_fd(bev), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err) {
		EVUTIL_SET_SOCKET_ERROR(err);
		what = (short)((what & ~SR_BS_EOF) | SR_BS_ERROR);
	}
	return what;
}

static void sock_event_cb(struct sr_bsock *bev, short what, void *arg)
{
	struct tun_stream *s = arg;
	struct tun_conn *c = s->conn;

	what = eof_or_reset(bev, what);
	char ctx[256];

	if (what & SR_BS_CONNECTED) {
		tun_stream_connected(s);
		return;
	}
	if (!c && (s->flags & TS_F_FINISHING)) {
		tun_group_finished(s->group, s); /* complete: nobody to tell */
		return;
	}
	if (!c) {
		/* Held: an end is remembered for the resume; a failure loses it. */
		if ((what & SR_BS_EOF) && !(what & SR_BS_ERROR) && s->st == TS_ST_OPEN) {
			s->up = TS_DIR_EOF;
			sr_bsock_disable(bev, EV_READ);
			return;
		}
		tun_group_socket_failed(s->group, s);
		return;
	}
	if ((what & SR_BS_EOF) && !(what & SR_BS_ERROR) && s->st == TS_ST_OPEN) {
		s->up = TS_DIR_EOF;
		if (s->id > 0 && !(s->flags & TS_F_H2_CLOSED)) {
			s->flags &= ~TS_F_DEFERRED;
			nghttp2_session_resume_data(c->h2, s->id);
		}
		tun_conn_flush_soon(c);
		return;
	}
	/* Error, reset or timeout: the peer of this socket is gone. */
	if (s->st == TS_ST_CONNECTING && c->cbs.on_connect_failed) {
		int err = EVUTIL_SOCKET_ERROR();

		c->cbs.on_connect_failed(c, s->conn_id, s->port, s->peer,
					 (what & SR_BS_TIMEOUT) ? ETIMEDOUT : err, c->arg);
		EVUTIL_SET_SOCKET_ERROR(err);
	}
	if (sr_log_level_cur >= SR_LOG_DEBUG) {
		stream_log_ctx(s, ctx, sizeof(ctx));
		SR_DEBUG(ctx, "socket %s: %s",
			 s->st == TS_ST_CONNECTING ? "connect failed" : "closed",
			 (what & SR_BS_TIMEOUT) ? "timeout" : strerror(EVUTIL_SOCKET_ERROR()));
	}
	if (!(s->flags & TS_F_H2_CLOSED))
		tun_conn_reset_stream(c, s,
				      s->st == TS_ST_CONNECTING ? NGHTTP2_REFUSED_STREAM
								 : NGHTTP2_CONNECT_ERROR);
	tun_stream_kill(s, 1);
	tun_conn_flush(c);
}

int tun_stream_attach(struct tun_stream *s, struct sr_bsock *sock)
{
	struct evbuffer *in = sr_bsock_input(sock);

	if (!evbuffer_add_cb(sr_bsock_output(sock), sock_out_cb, s) ||
	    (s->conn->opts.sock_in_max && !evbuffer_add_cb(in, sock_in_cb, s))) {
		sr_bsock_free(sock);
		return SR_ENOMEM;
	}
	s->sock = sock;
	s->conn->in_buffered += s->conn->opts.sock_in_max ? evbuffer_get_length(in) : 0;
	sr_bsock_setcb(sock, sock_read_cb, sock_write_cb, sock_event_cb, s);
	return 0;
}

int tun_stream_attach_held(struct tun_stream *s, struct sr_bsock *sock)
{
	if (evbuffer_add_cb(sr_bsock_output(sock), sock_out_cb, s) == NULL) {
		sr_bsock_free(sock);
		return SR_ENOMEM;
	}
	s->sock = sock;
	sr_bsock_setcb(sock, sock_read_cb, sock_write_cb, sock_event_cb, s);
	sr_bsock_disable(sock, EV_READ | EV_WRITE);
	return 0;
}

struct tun_stream *tun_stream_new(struct tun_conn *c, struct sr_bsock *sock)
{
	struct tun_stream *s = calloc(1, sizeof(*s));
	if (!s) {
		if (sock)
			sr_bsock_free(sock);
		return NULL;
	}
	s->conn = c;
	s->group = c->group;
	s->origin = c->origin;
	s->slot = c->slot;
	win_reset(s, c);
	if (sock) {
		if (tun_stream_attach(s, sock) != 0) {
			free(s);
			return NULL;
		}
		s->st = TS_ST_OPEN; /* relay: an accepted executor socket */
	}
	s->next = c->streams;
	if (c->streams)
		c->streams->prev = s;
	c->streams = s;
	c->stats.streams_active++;
	return s;
}

void tun_stream_connected(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	tun_stream_go(s, TS_ST_OPEN, "driver connected");
	sr_sock_nodelay(sr_bsock_fd(s->sock));
	if (!c) {
		/* Held: answered once the relay resumes it. */
		sr_bsock_disable(s->sock, EV_READ);
		return;
	}
	if (tun_conn_submit_response(c, s) != 0) {
		tun_conn_reset_stream(c, s, NGHTTP2_INTERNAL_ERROR);
		tun_stream_kill(s, 1);
	} else if (sock_write_now(s) == 0) {
		/* DATA that arrived while connecting waited in the output (not
		 * in the conn's write queue: that holds streams only within one
		 * tunnel read); it went out above. */
		tun_stream_start_reading(s);
	}
	tun_conn_flush(c);
}

/* A socket's write event is enabled only while its output holds bytes:
 * most are written at once by tun_stream_write_queued, and a write event
 * armed for them anyway cost two epoll_ctl and a wake-up per message (one
 * pair more per connection, armed on an empty output at the start). */
static void sock_write_sync(struct tun_stream *s)
{
	if (!s->sock)
		return;
	if (evbuffer_get_length(sr_bsock_output(s->sock)) > 0)
		sr_bsock_enable(s->sock, EV_WRITE);
	else
		sr_bsock_disable(s->sock, EV_WRITE);
}

/* Writes what s's output holds now and arms the write event for what the
 * kernel did not take; then a FIN that came with the data may follow (the
 * socket's write callback runs only for its own writes).
 * Returns 0, or -1 if the stream was ended by a send error: that is
 * reported at once, since the send took the socket's pending error (a
 * reset) and a read after it would see a clean end. */
static int sock_write_now(struct tun_stream *s)
{
	struct evbuffer *out = sr_bsock_output(s->sock);

	if (evbuffer_get_length(out) > 0 && sr_sock_send_evbuffer(sr_bsock_fd(s->sock), out) < 0) {
		sock_event_cb(s->sock, SR_BS_WRITING | SR_BS_ERROR, s);
		return -1;
	}
	sock_write_sync(s);
	maybe_finish(s);
	return 0;
}

void tun_stream_start_reading(struct tun_stream *s)
{
	if (s->sock && s->conn && s->st == TS_ST_OPEN && s->up == TS_DIR_OPEN &&
	    !(s->flags & (TS_F_READ_FULL | TS_F_RESUMING))) {
		sr_bsock_enable(s->sock, EV_READ);
		sock_write_sync(s);
	}
}

/* The input accounting of s's session (opts.sock_in_max) lets go of s. */
static void sock_in_unbind(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;
	struct evbuffer *in;

	if (!s->sock || !c || !c->opts.sock_in_max)
		return;
	in = sr_bsock_input(s->sock);
	if (evbuffer_remove_cb(in, sock_in_cb, s) == 0) {
		size_t n = evbuffer_get_length(in);
		c->in_buffered -= n < c->in_buffered ? n : c->in_buffered;
		if (c->in_throttled && c->in_buffered <= c->opts.sock_in_max / 2)
			in_throttle(c, 0);
	}
}

void tun_stream_unbind(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	sock_in_unbind(s);
	if (s->sock)
		sr_bsock_disable(s->sock, EV_READ); /* the peers wait, by TCP */
	/* What waits in the output is still written; no session owes for it. */
	s->stale_out += s->unconsumed;
	c->early_buffered -= s->early;
	win_release(s);
	s->unconsumed = s->early = s->conn_owed = 0;
	if (s->prev)
		s->prev->next = s->next;
	else
		c->streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	if (s->id > 0 && c->h2)
		nghttp2_session_set_stream_user_data(c->h2, s->id, NULL);
	/* A dead one (a tombstone) was uncounted when it died. */
	if (s->st < TS_ST_DEAD)
		c->stats.streams_active--;
}

void tun_stream_bind(struct tun_stream *s, struct tun_conn *c)
{
	s->conn = c;
	s->group = c->group;
	s->origin = c->origin;
	s->slot = c->slot;
	win_reset(s, c);
	s->next = c->streams;
	s->prev = NULL;
	if (c->streams)
		c->streams->prev = s;
	c->streams = s;
	if (s->st < TS_ST_DEAD) /* a tombstone, or one that died while held, is not active */
		c->stats.streams_active++;
	if (!s->sock)
		return;
	if (c->opts.sock_in_max && evbuffer_add_cb(sr_bsock_input(s->sock), sock_in_cb, s))
		c->in_buffered += evbuffer_get_length(sr_bsock_input(s->sock));
	s->flags &= ~TS_F_READ_FULL; /* tun_stream_start_reading decides */
}

static void stream_close_socket(struct tun_stream *s)
{
	if (s->sock) {
		int fd = sr_bsock_fd(s->sock);
		evbuffer_remove_cb(sr_bsock_output(s->sock), sock_out_cb, s);
		sock_in_unbind(s);
		if ((s->flags & TS_F_RESET) && fd >= 0)
			sr_sock_set_reset_on_close(fd);
		sr_bsock_free(s->sock);
		s->sock = NULL;
	}
	/* Bytes still queued for the socket are dropped: give their credit back
	 * so the connection window does not shrink for good. */
	if (s->unconsumed && s->conn) {
		tun_conn_consume_stream(s->conn, s->id, s->unconsumed);
		tun_conn_consume_conn(s->conn, s->conn_owed);
		s->conn->early_buffered -= s->early;
		s->unconsumed = s->early = s->conn_owed = 0;
	}
	win_release(s);
}

void tun_stream_maybe_reap(struct tun_stream *s)
{
	struct tun_conn *c = s->conn;

	if (s->st != TS_ST_DEAD)
		return;
	/* nghttp2 keeps our pointer as stream user data (and as the data
	 * source) until it closes the stream: free only after that, or once
	 * the session is never driven again (closing). */
	if (s->id > 0 && !(s->flags & TS_F_H2_CLOSED) && !tun_conn_closing(c))
		return;
	/* We reset it: until a PING barrier shows the peer has our RST_STREAM,
	 * a tunnel that dies must still be able to tell it on resume. */
	if (s->group && (s->flags & TS_F_RST_SENT) && !(s->flags & (TS_F_TOMB_DONE | TS_F_LINGER)) &&
	    !tun_conn_closing(c)) {
		tun_conn_linger(c, s);
		return;
	}
	if (s->flags & TS_F_LINGER)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		c->streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = NULL;
	s->next = c->dead;
	c->dead = s;
	tun_stream_go(s, TS_ST_REAPING, "nghttp2 is done with it");
	tun_conn_schedule_reap(c);
}

void tun_stream_kill(struct tun_stream *s, int reset_socket)
{
	struct tun_conn *c = s->conn;

	if (s->st >= TS_ST_DEAD)
		return;
	if (reset_socket)
		s->flags |= TS_F_RESET;
	tun_stream_go(s, TS_ST_DEAD, (s->flags & TS_F_RESET) ? "socket reset" : "socket closed");
	if (!c) {
		stream_close_socket(s); /* held: the group keeps it as a tombstone */
		return;
	}
	/* The socket goes now (the executor or driver sees FIN or RST at
	 * once); the struct waits for nghttp2 to be done with it. */
	stream_close_socket(s);
	c->stats.streams_active--;
	if (!(s->flags & TS_F_CTL)) {
		c->stats.streams_closed++;
		if (reset_socket)
			c->stats.streams_reset++;
	}
	tun_stream_maybe_reap(s);
}

void tun_stream_forget(struct tun_stream *s)
{
	if (!s)
		return;
	if (s->sock) {
		/* None of our callbacks may run on it again, and nothing may
		 * reach the connection (no shutdown, no SO_LINGER): our
		 * descriptor closes, the connection lives on elsewhere. */
		sr_bsock_setcb(s->sock, NULL, NULL, NULL, NULL);
		evbuffer_remove_cb(sr_bsock_output(s->sock), sock_out_cb, s);
		evbuffer_remove_cb(sr_bsock_input(s->sock), sock_in_cb, s);
		sr_bsock_disable(s->sock, EV_READ | EV_WRITE);
		sr_bsock_free(s->sock);
		s->sock = NULL;
	}
	free(s->req);
	free(s);
}

void tun_stream_free_reset(struct tun_stream *s)
{
	if (s->sock && s->st < TS_ST_DEAD)
		s->flags |= TS_F_RESET;
	tun_stream_free(s);
}

void tun_stream_free(struct tun_stream *s)
{
	if (!s)
		return;
	stream_close_socket(s);
	free(s->req);
	free(s);
}

static void rblock_unref(const void *data, size_t len, void *extra)
{
	struct tun_rblock *b = extra;

	if (--b->refs == 0)
		b->release(b);
}

/* DATA for the socket. When the socket is keeping up (its output holds
 * nothing but what this parse queued by reference: it all goes out in
 * tun_stream_write_queued at the end of the parse) a large payload is queued
 * by reference to the received block rather than copied; otherwise copied,
 * so that a slow socket pins no more than its own bytes. A block carries
 * several DATA frames of one stream: without the second case all but the
 * first were copied. */
static int stream_take_data(struct tun_stream *s, const uint8_t *data, size_t len)
{
	struct evbuffer *out = sr_bsock_output(s->sock);
	struct tun_rblock *b = s->conn->rblock;
	size_t have = evbuffer_get_length(out);
	/* Everything in the output was queued during this parse. */
	int fresh = !have || ((s->flags & TS_F_WRITEQ) && have == s->pass_out);
	int rv;

	if (!have)
		s->pass_out = 0;
	if (len > UINT32_MAX - s->pass_out)
		fresh = 0;
	if (b && fresh && len >= TS_REF_MIN) {
		b->refs++;
		if (evbuffer_add_reference(out, data, len, rblock_unref, b) == 0) {
			s->pass_out += (uint32_t)len;
			return 0;
		}
		b->refs--;
	}
	rv = evbuffer_add(out, data, len);
	if (rv == 0 && fresh)
		s->pass_out += (uint32_t)len;
	return rv;
}

void tun_stream_on_data(struct tun_stream *s, const uint8_t *data, size_t len)
{
	if (s->st >= TS_ST_DEAD || !s->sock) {
		tun_conn_consume(s->conn, s->id, len);
		return;
	}
	if (stream_take_data(s, data, len) != 0) {
		tun_conn_consume(s->conn, s->id, len);
		tun_conn_reset_stream(s->conn, s, NGHTTP2_INTERNAL_ERROR);
		tun_stream_kill(s, 1);
		return;
	}
	s->rx += len;
	s->unconsumed += len;
	if (s->id != s->conn->data_last_id) {
		if (s->conn->data_last_id)
			s->conn->data_mixed_us = sr_now_us();
		s->conn->data_last_id = s->id;
	}
	if (s->win < win_max(s->conn) && s->conn->peer_reads_growth)
		tun_conn_rtt_probe(s->conn);
	if (s->conn->early_buffered + len <= s->conn->opts.conn_window + s->conn->win_grown) {
		s->early += len;
		s->conn->early_buffered += len;
		tun_conn_consume_conn(s->conn, len);
	} else {
		s->conn_owed += len;
	}
	if (!(s->flags & TS_F_WRITEQ) && s->st == TS_ST_OPEN) {
		if (s->conn->nwriteq < SR_ARRAY_LEN(s->conn->writeq)) {
			s->flags |= TS_F_WRITEQ;
			s->conn->writeq[s->conn->nwriteq++] = s;
		} else {
			sock_write_sync(s); /* the socket's write event writes it */
		}
	}
}

/* The write queue is dropped unwritten (the session is ending): the
 * sockets' write events write what the queued streams hold, as they would have
 * without the queue. */
void tun_stream_writeq_drop(struct tun_conn *c)
{
	for (unsigned i = 0; i < c->nwriteq; i++) {
		struct tun_stream *s = c->writeq[i];

		s->flags &= ~TS_F_WRITEQ;
		if (s->st == TS_ST_OPEN)
			sock_write_sync(s);
	}
	c->nwriteq = 0;
}

void tun_stream_write_queued(struct tun_conn *c)
{
	/* Streams stay allocated until the reap event, so the pointers are
	 * valid here even if a write below ends one of them. */
	for (unsigned i = 0; i < c->nwriteq; i++) {
		struct tun_stream *s = c->writeq[i];

		s->flags &= ~TS_F_WRITEQ;
		if (!s->sock || s->st != TS_ST_OPEN)
			continue;
		if (evbuffer_get_length(sr_bsock_output(s->sock)) > 0)
			(void)sock_write_now(s);
	}
	c->nwriteq = 0;
}

void tun_stream_on_peer_eof(struct tun_stream *s)
{
	if (s->down == TS_DIR_OPEN)
		s->down = TS_DIR_EOF;
	maybe_finish(s);
}

void tun_stream_on_h2_close(struct tun_stream *s, uint32_t error_code)
{
	s->flags |= TS_F_H2_CLOSED;
	s->h2_error = error_code;
	if (error_code != NGHTTP2_NO_ERROR && !(s->flags & TS_F_CTL) && s->sock &&
	    sr_log_level_cur >= SR_LOG_DEBUG) {
		char ctx[256];
		stream_log_ctx(s, ctx, sizeof(ctx));
		SR_DEBUG(ctx, "stream reset by peer: %s", nghttp2_http2_strerror(error_code));
	}
	maybe_finish(s);
}

/* Data provider: hands socket bytes to nghttp2 without copying them here;
 * the copy happens once, in the conn's send_data callback. */
static ssize_t stream_read_cb(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length,
			      uint32_t *data_flags, nghttp2_data_source *src, void *user)
{
	struct tun_stream *s = src->ptr;
	size_t avail = 0, total, keep;

	/* A held stream's old DATA item, a resumed one whose answer (and the
	 * sidecar's rx) has not come yet, or one reset before its answer (the
	 * reset follows the answer): nothing to send here. */
	if (s->conn != user || (s->flags & (TS_F_RESUMING | TS_F_RST_LATER))) {
		s->flags |= TS_F_DEFERRED;
		return NGHTTP2_ERR_DEFERRED;
	}
	if (s->sock && s->st < TS_ST_DEAD)
		avail = unsent(s);
	total = avail;
	if (avail == 0) {
		if (s->up != TS_DIR_OPEN || s->st >= TS_ST_DEAD) {
			*data_flags |= NGHTTP2_DATA_FLAG_EOF;
			return 0;
		}
		s->flags |= TS_F_DEFERRED;
		return NGHTTP2_ERR_DEFERRED;
	}
	/* Sent bytes are kept until the peer acknowledges them: a peer that
	 * grants window and never acknowledges must not make us keep every
	 * byte the socket sends. */
	keep = retain_max(s->conn);
	if (retained(s) >= keep) {
		s->flags |= TS_F_DEFERRED | TS_F_KEEP_FULL; /* tun_stream_on_ack resumes it */
		return NGHTTP2_ERR_DEFERRED;
	}
	s->flags &= ~TS_F_KEEP_FULL;
	if (avail > keep - retained(s))
		avail = keep - retained(s);
	/* length is at most h2.max_frame: nghttp2 asked h2_read_length_cb. */
	if (avail > length)
		avail = length;
	*data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
	if (s->up != TS_DIR_OPEN && avail == total)
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)avail;
}

const nghttp2_data_provider tun_stream_data_prd = {.source = {.ptr = NULL},
						   .read_callback = stream_read_cb};
