/* The streams of one lease across tunnels. See tun_group.h. */
#include "tunnel/tun_internal.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

const char *tun_lost_name(enum tun_lost why)
{
	static const char *const names[TUN_LOST_MAX] = {"hold", "unknown", "socket", "mismatch",
							 "ended"};
	return (unsigned)why < TUN_LOST_MAX ? names[why] : "?";
}

static void held_unlink(struct tun_group *g, struct tun_stream *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		g->held = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
	s->flags &= ~TS_F_HELD;
	g->nheld--;
	if (g->nheld_slot[s->slot])
		g->nheld_slot[s->slot]--;
	if (g->nheld == 0) {
		evtimer_del(g->hold_ev);
		g->st.away_since_us = 0;
	}
}

void tun_group_lose(struct tun_group *g, struct tun_stream *s, enum tun_lost why)
{
	if (s->flags & TS_F_HELD)
		held_unlink(g, s);
	/* A tombstone was reset already, and the peer learns it on resume. */
	if (s->st < TS_ST_DEAD) {
		g->st.lost[why]++;
		SR_INFO(g->logctx, "conn=%llu: stream lost (%s); its socket is reset",
			(unsigned long long)s->conn_id, tun_lost_name(why));
		if (s->sock)
			s->flags |= TS_F_RESET;
	}
	tun_stream_free(s);
}

/* A held stream's socket failed: reset it now, and keep it as a tombstone
 * so that the resume tells the peer (instead of "unknown"). */
void tun_group_socket_failed(struct tun_group *g, struct tun_stream *s)
{
	g->st.lost[TUN_LOST_SOCKET]++;
	SR_INFO(g->logctx, "conn=%llu: socket failed while the tunnel was away; the stream is "
			   "reset",
		(unsigned long long)s->conn_id);
	s->flags |= TS_F_RST_SENT;
	tun_stream_kill(s, 1);
}

/* Both ends had sent END_STREAM when the tunnel died: a peer that forgot
 * the stream had received all of ours (it frees a stream only after a PING
 * barrier that follows our END_STREAM), and we have all of its. */
static int complete(const struct tun_stream *s)
{
	return s->down != TS_DIR_OPEN && (s->flags & TS_F_FIN_SENT) && s->st == TS_ST_OPEN;
}

int tun_group_finish(struct tun_group *g, struct tun_stream *s)
{
	if (!complete(s))
		return 0;
	if (s->flags & TS_F_HELD)
		held_unlink(g, s);
	s->flags |= TS_F_FINISHING | TS_F_H2_CLOSED;
	s->h2_error = 0;
	s->prev = NULL;
	s->next = g->finishing;
	if (g->finishing)
		g->finishing->prev = s;
	g->finishing = s;
	tun_stream_finish_check(s); /* perhaps its output is empty already */
	return 1;
}

void tun_group_finished(struct tun_group *g, struct tun_stream *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		g->finishing = s->next;
	if (s->next)
		s->next->prev = s->prev;
	tun_stream_free(s);
}

/* Held streams of origin (0: all) the other end does not know: finished if
 * they were complete (the relay freed its side of a stream both ends had
 * ended, and the tunnel died before our PING barrier freed ours: nothing is
 * lost), else lost. why: what the other end said, for the log. Returns how
 * many were lost. */
static size_t reset_unknown_from(struct tun_group *g, uint32_t origin, const char *why)
{
	size_t n = 0, unknown = tun_group_held_from(g, origin);

	for (struct tun_stream *s = g->held, *nx; s; s = nx) {
		nx = s->next;
		if (origin && s->origin != origin)
			continue;
		if (tun_group_finish(g, s))
			continue;
		/* A tombstone (reset here, the peer forgot it because it had
		 * the reset) is not lost: tun_group_lose counts live ones only. */
		n += s->st < TS_ST_DEAD;
		tun_group_lose(g, s, TUN_LOST_UNKNOWN);
	}
	if (n)
		SR_WARN(g->logctx,
			"%s; %zu held streams reset (%s): %zu held here were unknown to it, "
			"%zu of them complete or reset already",
			why, n, tun_lost_name(TUN_LOST_UNKNOWN), unknown, unknown - n);
	else
		SR_DEBUG(g->logctx,
			 "%s; %zu held here are unknown to it, all complete or reset already: "
			 "finished",
			 why, unknown);
	return n;
}

size_t tun_group_held_from(const struct tun_group *g, uint32_t origin)
{
	size_t n = 0;

	if (!origin)
		return g->nheld;
	for (const struct tun_stream *s = g->held; s; s = s->next)
		n += s->origin == origin;
	return n;
}

void tun_group_reset(struct tun_group *g, enum tun_lost why)
{
	size_t n = 0;

	while (g->held) {
		struct tun_stream *s = g->held;
		if (why == TUN_LOST_UNKNOWN && tun_group_finish(g, s))
			continue;
		n += s->st < TS_ST_DEAD; /* as tun_group_lose counts: tombstones were reset */
		tun_group_lose(g, s, why);
	}
	if (why != TUN_LOST_UNKNOWN) {
		/* The lease ended or the hold ran out: nobody waits any more. */
		while (g->finishing) {
			struct tun_stream *s = g->finishing;
			g->finishing = s->next;
			s->flags |= TS_F_RESET;
			tun_stream_free(s);
		}
	}
	if (n)
		SR_WARN(g->logctx, "%zu held streams reset (%s)", n, tun_lost_name(why));
}

/* Has s been held its hold time at now? 1 ms early counts: libevent may
 * fire a little before the time. */
static int hold_over(const struct tun_group *g, const struct tun_stream *s, uint64_t now)
{
	return s->held_us + (uint64_t)g->opts.hold_ms * 1000u <= now + 1000;
}

/* A stream is held hold_ms from its own tunnel's loss: with several
 * tunnels (a sidecar's tunnel.connections), streams of a tunnel lost later
 * wait their full time, not what was left of the first loss's. */
static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_group *g = arg;
	uint64_t now = sr_now_us(), hold = (uint64_t)g->opts.hold_ms * 1000u, next = 0;
	size_t due = 0;

	(void)fd;
	(void)what;
	for (const struct tun_stream *s = g->held; s; s = s->next)
		if (hold_over(g, s, now))
			due++;
		else if (!next || s->held_us + hold < next)
			next = s->held_us + hold;
	if (due == g->nheld) {
		SR_WARN(g->logctx, "the tunnel stayed away %u s: resetting the %zu streams it held",
			g->opts.hold_ms / 1000u, g->nheld);
		tun_group_reset(g, TUN_LOST_HOLD);
		return;
	}
	SR_WARN(g->logctx,
		"a tunnel stayed away %u s: resetting the %zu streams it held (%zu of a tunnel "
		"lost later wait on)",
		g->opts.hold_ms / 1000u, due, g->nheld - due);
	for (struct tun_stream *s = g->held, *nx; s; s = nx) {
		nx = s->next;
		if (hold_over(g, s, now))
			tun_group_lose(g, s, TUN_LOST_HOLD);
	}
	/* what is left went later: a handover passes on its hold time */
	g->st.away_since_us = next - hold;
	{
		struct timeval tv = sr_tv_ms((uint32_t)((next - now) / 1000u + 1));

		evtimer_add(g->hold_ev, &tv);
	}
}

void tun_group_hold(struct tun_group *g, struct tun_stream *s)
{
	if (g->nheld == 0) {
		struct timeval tv = sr_tv_ms(g->opts.hold_ms);
		g->st.away_since_us = sr_now_us();
		g->silent_since_us = g->st.away_since_us;
		if (s->conn && s->conn->last_recv_us && s->conn->last_recv_us < g->silent_since_us)
			g->silent_since_us = s->conn->last_recv_us;
		g->st.aways++;
		evtimer_add(g->hold_ev, &tv);
	}
	s->conn = NULL;
	s->id = 0;
	s->h2_error = 0;
	/* Marks of the old session. ANSWER_SEEN (the sidecar had the stream)
	 * and FIN_SENT (our END_STREAM went out once) stay: they decide what a
	 * peer that no longer has the stream means (tun_group_finish). */
	s->flags &=
	    ~(TS_F_DEFERRED | TS_F_KEEP_FULL | TS_F_H2_CLOSED | TS_F_RESPONDED |
	      TS_F_HDRS_SENT | TS_F_CONN_HDR | TS_F_WRITEQ | TS_F_RESUMING | TS_F_RESUME_HDR |
	      TS_F_LINGER | TS_F_READ_FULL | TS_F_ACK_IDLE | TS_F_RST_LATER);
	s->linger_seq = 0;
	s->held_us = sr_now_us();
	s->flags |= TS_F_HELD;
	s->prev = NULL;
	s->next = g->held;
	if (g->held)
		g->held->prev = s;
	g->held = s;
	g->nheld++;
	g->nheld_slot[s->slot]++;
}

size_t tun_group_held(const struct tun_group *g)
{
	return g->nheld;
}

size_t tun_group_held_slot(const struct tun_group *g, unsigned slot)
{
	return slot < TUN_GROUP_SLOTS ? g->nheld_slot[slot] : 0;
}

/* ---- relay: reopen held streams ------------------------------------------- */

/* What a resume started by resume_begin did, in one line; a warning if it
 * lost streams (reset at both ends), with how many for each reason. */
static void resume_report(struct tun_group *g)
{
	uint64_t away = (sr_now_us() - g->resume_started_us) / 1000u, nlost = 0;
	char why[128] = "", tail[160] = "";
	size_t n = 0;

	for (int i = 0; i < TUN_LOST_MAX; i++) {
		uint64_t k = g->st.lost[i] - g->lost_at_resume[i];
		nlost += k;
		if (k && n < sizeof(why))
			n += (size_t)snprintf(why + n, sizeof(why) - n, "%s%s %" PRIu64,
					      n ? ", " : "", tun_lost_name((enum tun_lost)i), k);
	}
	if (nlost)
		snprintf(tail, sizeof(tail), "; %" PRIu64 " streams lost and reset (%s)", nlost,
			 why);
	SR_LOG(nlost ? SR_LOG_WARN : SR_LOG_INFO, g->logctx,
	       "resumed %" PRIu64 " streams, replayed %" PRIu64 " bytes after %" PRIu64
	       ".%03" PRIu64 " s away%s",
	       g->st.resumed - g->resumed_at_resume,
	       g->st.replayed_bytes - g->replayed_at_resume, away / 1000u, away % 1000u, tail);
}

/* A tunnel is back: what it resumes is counted from here. */
static void resume_begin(struct tun_group *g)
{
	if (!g->st.away_since_us)
		g->resume_started_us = sr_now_us();
	else if (g->silent_since_us)
		g->resume_started_us = g->silent_since_us;
	else
		g->resume_started_us = g->st.away_since_us;
	g->resumed_at_resume = g->st.resumed;
	g->replayed_at_resume = g->st.replayed_bytes;
	memcpy(g->lost_at_resume, g->st.lost, sizeof(g->lost_at_resume));
	g->got = 0;
}

size_t tun_group_resume(struct tun_group *g, struct tun_conn *c)
{
	size_t n = 0;

	resume_begin(g);
	g->expect = g->nheld;
	if (g->nheld)
		g->st.resumes++;
	while (g->held) {
		struct tun_stream *s = g->held;
		held_unlink(g, s);
		tun_conn_adopt(c, s, 0);
		s->flags |= TS_F_RESUMING;
		if (tun_conn_submit_connect(c, s, 1) != 0) {
			g->got++;
			tun_group_lose(g, s, TUN_LOST_UNKNOWN);
			continue;
		}
		n++;
	}
	/* Sent now: called outside c's input (an etcd answer, or once the
	 * lease message left), nothing else would send them before the next
	 * PING. */
	if (n)
		tun_conn_flush(c);
	if (n == 0 && g->st.resumes && g->expect == 0)
		return 0;
	return n;
}

void tun_group_answered(struct tun_group *g, struct tun_stream *s)
{
	g->got++;
	if (g->got == g->expect && g->expect)
		resume_report(g);
}

/* ---- sidecar: take a resumed CONNECT -------------------------------------- */

void tun_group_count_resumed(struct tun_group *g, struct tun_conn *c)
{
	if (++c->resume_got < c->resume_expect)
		return;
	if (c->resume_got > c->resume_expect)
		return; /* counted (and reported) once */
	if (tun_group_held_from(g, c->origin) > 0) {
		char why[64];

		snprintf(why, sizeof(why), "the relay resumed %" PRIu64 " streams",
			 c->resume_expect);
		reset_unknown_from(g, c->origin, why);
	}
	resume_report(g);
}

void tun_group_expect_on(struct tun_group *g, struct tun_conn *c, uint64_t n)
{
	size_t unknown = tun_group_held_from(g, c->origin);

	resume_begin(g);
	c->resume_expect = n;
	c->resume_got = 0;
	if (n || unknown)
		g->st.resumes++;
	if (n == 0 && unknown)
		reset_unknown_from(g, c->origin, "the relay resumed no stream");
}

/* The held stream s (NULL: none) for the resumed CONNECT p, or NULL after
 * choosing the reset to answer with. */
static struct tun_stream *take_held(struct tun_group *g, struct tun_conn *c,
				    struct tun_stream *p, struct tun_stream *s, uint32_t *rst)
{
	if (strcmp(p->req->lease, g->lease) != 0) {
		*rst = NGHTTP2_REFUSED_STREAM;
		return NULL;
	}
	if (!s) {
		/* Never seen here, or finished here: the relay opens it afresh
		 * if it was never established, else it learns it is gone. */
		*rst = NGHTTP2_REFUSED_STREAM;
		return NULL;
	}
	if (s->st >= TS_ST_DEAD || p->peer_rst) {
		/* Reset at one end while the tunnel was away: carried as one. */
		*rst = NGHTTP2_CONNECT_ERROR;
		if (s->st >= TS_ST_DEAD)
			tun_stream_free(s);
		else
			tun_stream_free_reset(s);
		return NULL;
	}
	if (!tun_stream_peer_rx_valid(s, p->peer_rx, p->peer_fin)) {
		/* Checked before s takes p's id: the reset then ends p as
		 * any refused stream (killing s after, p stayed listed
		 * until the tunnel ended, its id naming s). */
		*rst = NGHTTP2_CONNECT_ERROR;
		g->st.lost[TUN_LOST_MISMATCH]++;
		tun_stream_free_reset(s);
		return NULL;
	}
	/* s->slot: the slot whose tunnel lost it (a tunnel may adopt streams
	 * of two lost ones, each with its own unwritten bytes). */
	if (s->stale_out && c->stale_adopted[s->slot] + s->stale_out >
				(uint64_t)TUN_STALE_CONN_WINDOWS * c->opts.conn_window) {
		/* Each session grants every stream a fresh window, whatever
		 * its socket has not taken yet: a relay that fills the windows
		 * of a driver that does not read, drops the tunnel and resumes,
		 * again and again, would grow those bytes without a bound. */
		if (!c->stale_said) {
			c->stale_said = 1;
			SR_WARN(c->logctx,
				"resumed streams bring more than %u x tunnel.h2.conn_window "
				"(%u) not yet written to the driver: those past it are reset",
				TUN_STALE_CONN_WINDOWS, c->opts.conn_window);
		}
		*rst = NGHTTP2_CONNECT_ERROR;
		g->st.lost[TUN_LOST_SOCKET]++;
		tun_stream_free_reset(s);
		return NULL;
	}
	c->stale_adopted[s->slot] += s->stale_out;
	s->peer_rx = p->peer_rx;
	s->peer_fin = p->peer_fin;
	tun_conn_adopt(c, s, p->id);
	s->flags |= TS_F_RESUME_HDR | TS_F_CONN_HDR;
	tun_stream_apply_peer_rx(s); /* valid: checked above */
	g->st.resumed++;
	return s;
}

struct tun_stream *tun_group_take(struct tun_group *g, struct tun_conn *c,
				  struct tun_stream *p, uint32_t *rst)
{
	struct tun_stream *s = NULL;

	/* Connection ids are per relay: with tunnels to several relays the
	 * stream must also have come through this one (its origin). */
	if (strcmp(p->req->lease, g->lease) == 0)
		for (s = g->held; s && (s->conn_id != p->conn_id || s->origin != c->origin);
		     s = s->next)
			;
	if (s)
		held_unlink(g, s);
	s = take_held(g, c, p, s, rst);
	/* Counted once the stream is off the held list (the last one counted
	 * loses whatever is still held) and its outcome is in the stats (the
	 * last one counted reports them). */
	tun_group_count_resumed(g, c);
	return s;
}

/* ---- lifecycle --------------------------------------------------------------- */

struct tun_group *tun_group_new(struct event_base *base, enum tun_role role,
				const struct tun_group_opts *o, const char *logctx)
{
	struct tun_group *g = calloc(1, sizeof(*g));

	if (!g)
		return NULL;
	g->base = base;
	g->role = role;
	g->opts = *o;
	tun_group_set_logctx(g, logctx);
	g->hold_ev = evtimer_new(base, hold_cb, g);
	if (!g->hold_ev) {
		free(g);
		return NULL;
	}
	return g;
}

void tun_group_free(struct tun_group *g)
{
	if (!g)
		return;
	while (g->conn)
		tun_conn_set_group(g->conn, NULL);
	tun_group_reset(g, TUN_LOST_ENDED);
	event_free(g->hold_ev);
	free(g);
}

void tun_group_set_logctx(struct tun_group *g, const char *logctx)
{
	snprintf(g->logctx, sizeof(g->logctx), "%s", logctx ? logctx : "");
}

void tun_group_set_lease(struct tun_group *g, const char *lease_id)
{
	snprintf(g->lease, sizeof(g->lease), "%s", lease_id ? lease_id : "");
}

void tun_group_get_stats(const struct tun_group *g, struct tun_group_stats *st)
{
	*st = g->st;
	st->held = g->nheld;
	st->held_bytes = 0;
	for (const struct tun_stream *s = g->held; s; s = s->next)
		if (s->sock)
			st->held_bytes += evbuffer_get_length(sr_bsock_input(s->sock)) +
					  evbuffer_get_length(sr_bsock_output(s->sock));
}
