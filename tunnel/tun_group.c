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
	if (g->nheld == 0) {
		evtimer_del(g->hold_ev);
		g->st.away_since_us = 0;
	}
}

static void remember_gone(struct tun_group *g, uint64_t conn_id)
{
	g->gone[g->ngone++ % SR_ARRAY_LEN(g->gone)] = conn_id;
}

static int was_gone(const struct tun_group *g, uint64_t conn_id)
{
	unsigned n = g->ngone < SR_ARRAY_LEN(g->gone) ? g->ngone : SR_ARRAY_LEN(g->gone);

	for (unsigned i = 0; i < n; i++)
		if (g->gone[i] == conn_id)
			return 1;
	return 0;
}

void tun_group_lose(struct tun_group *g, struct tun_stream *s, enum tun_lost why)
{
	if (s->flags & TS_F_HELD)
		held_unlink(g, s);
	g->st.lost[why]++;
	/* A stream whose both directions had ended normally loses nothing. */
	if (sr_log_level_cur >= SR_LOG_DEBUG || !(s->up != TS_DIR_OPEN && s->down == TS_DIR_DONE))
		SR_INFO(g->logctx, "conn=%llu: stream lost (%s); its socket is reset",
			(unsigned long long)s->conn_id, tun_lost_name(why));
	if (g->role == TUN_ROLE_SIDECAR)
		remember_gone(g, s->conn_id);
	if (s->sock && s->st < TS_ST_DEAD)
		s->flags |= TS_F_RESET;
	tun_stream_free(s);
}

void tun_group_reset(struct tun_group *g, enum tun_lost why)
{
	size_t n = g->nheld;

	while (g->held)
		tun_group_lose(g, g->held, why);
	if (n)
		SR_WARN(g->logctx, "%zu held streams reset (%s)", n, tun_lost_name(why));
}

static void hold_cb(evutil_socket_t fd, short what, void *arg)
{
	struct tun_group *g = arg;

	SR_WARN(g->logctx, "the tunnel stayed away %u s: resetting the %zu streams it held",
		g->opts.hold_ms / 1000u, g->nheld);
	tun_group_reset(g, TUN_LOST_HOLD);
}

void tun_group_hold(struct tun_group *g, struct tun_stream *s)
{
	if (g->nheld == 0) {
		struct timeval tv = sr_tv_ms(g->opts.hold_ms);
		g->st.away_since_us = sr_now_us();
		g->st.aways++;
		evtimer_add(g->hold_ev, &tv);
	}
	s->conn = NULL;
	s->id = 0;
	s->h2_error = 0;
	/* Marks of the old session; ANSWER_SEEN stays: the sidecar had it. */
	s->flags &= ~(TS_F_DEFERRED | TS_F_H2_CLOSED | TS_F_RESPONDED | TS_F_ANSWERED |
		      TS_F_CONN_HDR | TS_F_WRITEQ | TS_F_RESUMING | TS_F_RESUME_HDR |
		      TS_F_LINGER | TS_F_FIN_SENT);
	s->linger_seq = 0;
	s->flags |= TS_F_HELD;
	s->prev = NULL;
	s->next = g->held;
	if (g->held)
		g->held->prev = s;
	g->held = s;
	g->nheld++;
}

size_t tun_group_held(const struct tun_group *g)
{
	return g->nheld;
}

/* ---- relay: reopen held streams ------------------------------------------- */

static void resume_report(struct tun_group *g)
{
	uint64_t away = (sr_now_us() - g->resume_started_us) / 1000u;

	SR_INFO(g->logctx, "resumed %" PRIu64 " streams, replayed %" PRIu64 " bytes after %" PRIu64
			   ".%03" PRIu64 " s away",
		g->st.resumed - g->resumed_at_resume,
		g->st.replayed_bytes - g->replayed_at_resume, away / 1000u, away % 1000u);
}

size_t tun_group_resume(struct tun_group *g, struct tun_conn *c)
{
	size_t n = 0;

	g->resume_started_us = g->st.away_since_us ? g->st.away_since_us : sr_now_us();
	g->resumed_at_resume = g->st.resumed;
	g->replayed_at_resume = g->st.replayed_bytes;
	g->expect = g->nheld;
	g->got = 0;
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

void tun_group_count_resumed(struct tun_group *g)
{
	if (++g->got < g->expect)
		return;
	if (g->held) {
		SR_WARN(g->logctx, "the relay resumed %" PRIu64 " streams; %zu held here are "
				   "unknown to it",
			g->expect, g->nheld);
		tun_group_reset(g, TUN_LOST_UNKNOWN);
	}
	resume_report(g);
}

void tun_group_expect(struct tun_group *g, uint64_t n)
{
	g->resume_started_us = g->st.away_since_us ? g->st.away_since_us : sr_now_us();
	g->resumed_at_resume = g->st.resumed;
	g->replayed_at_resume = g->st.replayed_bytes;
	g->expect = n;
	g->got = 0;
	if (n || g->nheld)
		g->st.resumes++;
	if (n == 0 && g->held) {
		SR_WARN(g->logctx, "the relay resumed no stream; %zu held here are unknown to it",
			g->nheld);
		tun_group_reset(g, TUN_LOST_UNKNOWN);
	}
}

struct tun_stream *tun_group_take(struct tun_group *g, struct tun_conn *c,
				  struct tun_stream *p, uint32_t *rst)
{
	struct tun_stream *s;

	tun_group_count_resumed(g);
	if (strcmp(p->lease, g->lease) != 0) {
		*rst = NGHTTP2_REFUSED_STREAM;
		return NULL;
	}
	for (s = g->held; s && s->conn_id != p->conn_id; s = s->next)
		;
	if (!s) {
		/* "Never seen" lets the relay open it afresh (it was never
		 * established here); "reset" tells it the stream is gone. */
		*rst = was_gone(g, p->conn_id) ? NGHTTP2_CONNECT_ERROR : NGHTTP2_REFUSED_STREAM;
		return NULL;
	}
	held_unlink(g, s);
	s->peer_rx = p->peer_rx;
	s->peer_fin = p->peer_fin;
	tun_conn_adopt(c, s, p->id);
	s->flags |= TS_F_RESUME_HDR | TS_F_CONN_HDR;
	if (tun_stream_apply_peer_rx(s) != 0) {
		*rst = NGHTTP2_CONNECT_ERROR;
		g->st.lost[TUN_LOST_MISMATCH]++;
		tun_stream_kill(s, 1);
		return NULL;
	}
	g->st.resumed++;
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
	if (g->conn)
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
			st->held_bytes += evbuffer_get_length(bufferevent_get_input(s->sock)) +
					  evbuffer_get_length(bufferevent_get_output(s->sock));
}
