/* A group's streams handed to another process. See tun_handover.h. */
#include "tunnel/tun_handover.h"
#include "tunnel/tun_internal.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

static const char *const dir_names[] = {"open", "eof", "done"};

/* Flags that mean something to a held stream (tun_group_hold keeps them). */
#define HO_FLAGS (TS_F_FIN_SENT | TS_F_ANSWER_SEEN | TS_F_RST_SENT | TS_F_TOMB_DONE)

/* ---- freeze and thaw ------------------------------------------------------- */

int tun_group_freeze(struct tun_group *g)
{
	uint64_t now = sr_now_us(), end;

	if (g->frozen)
		return 0;
	if (g->conn)
		return SR_EBUSY;
	g->frozen = 1;
	end = g->st.away_since_us + (uint64_t)g->opts.hold_ms * 1000u;
	g->hold_left_ms = g->nheld && end > now ? (end - now) / 1000u : 0;
	evtimer_del(g->hold_ev);
	for (struct tun_stream *s = g->held; s; s = s->next)
		if (s->sock)
			sr_bsock_disable(s->sock, EV_READ | EV_WRITE);
	for (struct tun_stream *s = g->finishing; s; s = s->next)
		if (s->sock)
			sr_bsock_disable(s->sock, EV_READ | EV_WRITE);
	return 0;
}

void tun_group_thaw(struct tun_group *g)
{
	struct tun_stream *s, *nx;

	if (!g->frozen)
		return;
	g->frozen = 0;
	if (g->nheld) {
		struct timeval tv = sr_tv_ms(g->hold_left_ms);
		evtimer_add(g->hold_ev, &tv);
	}
	/* Held streams write what they were given, and pass a FIN on after it;
	 * finishing ones end once their output is out (either may free s). */
	for (s = g->held; s; s = nx) {
		nx = s->next;
		if (!s->sock)
			continue;
		sr_bsock_enable(s->sock, EV_WRITE);
		tun_stream_finish_check(s);
	}
	for (s = g->finishing; s; s = nx) {
		nx = s->next;
		sr_bsock_enable(s->sock, EV_WRITE);
		tun_stream_finish_check(s);
	}
}

int tun_group_frozen(const struct tun_group *g)
{
	return g->frozen;
}

/* ---- export ------------------------------------------------------------------ */

struct tun_stream *tun_handover_next(struct tun_group *g, struct tun_stream *prev)
{
	if (!prev)
		return g->held ? g->held : g->finishing;
	if (prev->next)
		return prev->next;
	return (prev->flags & TS_F_HELD) ? g->finishing : NULL;
}

json_t *tun_handover_stream_json(const struct tun_stream *s)
{
	int live = s->st == TS_ST_OPEN && s->sock;

	return json_pack(
	    "{s:I,s:i,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:b,s:b,s:b,s:b,s:b,s:b,s:I,s:I}", "conn",
	    (json_int_t)s->conn_id, "port", (int)s->port, "lease", s->lease_id, "peer", s->peer,
	    "tx_sent", (json_int_t)s->tx_sent, "tx_acked", (json_int_t)s->tx_acked, "rx",
	    (json_int_t)s->rx, "up", dir_names[s->up], "down", dir_names[s->down], "live", live,
	    "fin_sent", (s->flags & TS_F_FIN_SENT) != 0, "answer_seen",
	    (s->flags & TS_F_ANSWER_SEEN) != 0, "rst_sent", (s->flags & TS_F_RST_SENT) != 0,
	    "tomb_done", (s->flags & TS_F_TOMB_DONE) != 0, "finishing",
	    (s->flags & TS_F_FINISHING) != 0, "in",
	    (json_int_t)(live ? evbuffer_get_length(sr_bsock_input(s->sock)) : 0), "out",
	    (json_int_t)(live ? evbuffer_get_length(sr_bsock_output(s->sock)) : 0));
}

int tun_handover_stream_fd(const struct tun_stream *s)
{
	return s->st == TS_ST_OPEN && s->sock ? sr_bsock_fd(s->sock) : -1;
}

struct evbuffer *tun_handover_stream_in(const struct tun_stream *s)
{
	return s->st == TS_ST_OPEN && s->sock ? sr_bsock_input(s->sock) : NULL;
}

struct evbuffer *tun_handover_stream_out(const struct tun_stream *s)
{
	return s->st == TS_ST_OPEN && s->sock ? sr_bsock_output(s->sock) : NULL;
}

json_t *tun_handover_group_json(const struct tun_group *g)
{
	const struct tun_group_stats *st = &g->st;
	uint64_t now = sr_now_us();
	json_t *lost = json_array();
	json_t *j;

	if (!lost)
		return NULL;
	for (int i = 0; i < TUN_LOST_MAX; i++)
		if (json_array_append_new(lost, json_integer((json_int_t)st->lost[i])) != 0) {
			json_decref(lost);
			return NULL;
		}
	j = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "hold_left_ms",
		      (json_int_t)(g->frozen ? g->hold_left_ms : 0), "away_ms",
		      (json_int_t)(st->away_since_us && now > st->away_since_us
				       ? (now - st->away_since_us) / 1000u
				       : 0),
		      "aways", (json_int_t)st->aways, "resumes", (json_int_t)st->resumes,
		      "resumed", (json_int_t)st->resumed, "replayed_bytes",
		      (json_int_t)st->replayed_bytes, "lost", lost);
	return j;
}

/* ---- import ------------------------------------------------------------------ */

static int get_u64(const json_t *o, const char *key, uint64_t *v)
{
	json_t *x = json_object_get(o, key);

	if (!json_is_integer(x) || json_integer_value(x) < 0)
		return -1;
	*v = (uint64_t)json_integer_value(x);
	return 0;
}

static int get_bool(const json_t *o, const char *key, int *v)
{
	json_t *x = json_object_get(o, key);

	if (!json_is_boolean(x))
		return -1;
	*v = json_is_true(x);
	return 0;
}

static int get_dir(const json_t *o, const char *key, int max, enum ts_dir *d)
{
	const char *v = json_string_value(json_object_get(o, key));

	for (int i = 0; v && i <= max; i++)
		if (strcmp(v, dir_names[i]) == 0) {
			*d = (enum ts_dir)i;
			return 0;
		}
	return -1;
}

static int get_str(const json_t *o, const char *key, char *dst, size_t len)
{
	const char *v = json_string_value(json_object_get(o, key));

	if (!v || strlen(v) >= len)
		return -1;
	memcpy(dst, v, strlen(v) + 1);
	return 0;
}

/* An executor address as the relay formats it ("1.2.3.4:5", "[::1]:5"): it
 * goes into log lines and a CONNECT header as it is. */
static int valid_peer(const char *p)
{
	return *p && strspn(p, "0123456789abcdefABCDEF.:[]") == strlen(p);
}

/* Link s at the head of one of g's lists. */
static void link_front(struct tun_stream **head, struct tun_stream *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

int tun_handover_adopt(struct tun_group *g, const json_t *meta, int fd, struct evbuffer *in,
		       struct evbuffer *out, char *err, size_t errlen)
{
	struct tun_stream *s = NULL;
	struct sr_bsock *bev = NULL;
	uint64_t conn = 0, port = 0, in_len = 0, out_len = 0;
	int live = 0, fin_sent = 0, answer_seen = 0, rst_sent = 0, tomb_done = 0, finishing = 0;
	const char *bad = NULL;
	int rc = SR_EINVAL;

	if (!g->frozen || g->role != TUN_ROLE_RELAY) {
		bad = "the group is not a frozen relay group";
		goto fail;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		rc = SR_ENOMEM;
		goto fail;
	}
	if (!json_is_object(meta) || get_u64(meta, "conn", &conn) ||
	    get_u64(meta, "port", &port) || port == 0 || port > 65535 ||
	    get_str(meta, "lease", s->lease_id, sizeof(s->lease_id)) ||
	    get_str(meta, "peer", s->peer, sizeof(s->peer)) ||
	    get_u64(meta, "tx_sent", &s->tx_sent) || get_u64(meta, "tx_acked", &s->tx_acked) ||
	    get_u64(meta, "rx", &s->rx) || get_dir(meta, "up", TS_DIR_EOF, &s->up) ||
	    get_dir(meta, "down", TS_DIR_DONE, &s->down) || get_bool(meta, "live", &live) ||
	    get_bool(meta, "fin_sent", &fin_sent) ||
	    get_bool(meta, "answer_seen", &answer_seen) ||
	    get_bool(meta, "rst_sent", &rst_sent) || get_bool(meta, "tomb_done", &tomb_done) ||
	    get_bool(meta, "finishing", &finishing) || get_u64(meta, "in", &in_len) ||
	    get_u64(meta, "out", &out_len)) {
		bad = "a field is missing or has the wrong type";
		goto fail;
	}
	if (!valid_peer(s->peer)) {
		bad = "its executor address is malformed";
		goto fail;
	}
	if (strcmp(s->lease_id, g->lease) != 0) {
		bad = "it belongs to another lease";
		goto fail;
	}
	/* What the byte counts and states must satisfy for the resume to be
	 * exact: the retained bytes are at the front of the input. */
	if (s->tx_acked > s->tx_sent || (live && in_len < s->tx_sent - s->tx_acked) ||
	    in_len > TUN_HO_BUF_MAX || out_len > TUN_HO_BUF_MAX || live != (fd >= 0) ||
	    (!live && (in_len || out_len)) || (in ? evbuffer_get_length(in) : 0) != in_len ||
	    (out ? evbuffer_get_length(out) : 0) != out_len ||
	    (finishing && (!live || !fin_sent || s->down == TS_DIR_OPEN)) ||
	    (!live && !rst_sent)) {
		bad = "its byte counts or states do not fit together";
		goto fail;
	}
	s->conn_id = conn;
	s->port = (uint16_t)port;
	s->group = g;
	s->st = live ? TS_ST_OPEN : TS_ST_DEAD;
	s->flags = (fin_sent ? TS_F_FIN_SENT : 0) | (answer_seen ? TS_F_ANSWER_SEEN : 0) |
		   (rst_sent ? TS_F_RST_SENT : 0) | (tomb_done ? TS_F_TOMB_DONE : 0);
	if (live) {
		bev = sr_bsock_new(g->base, fd);
		fd = -1; /* sr_bsock_new took it */
		if (!bev) {
			rc = SR_ENOMEM;
			goto fail;
		}
		if (tun_stream_attach_held(s, bev) != 0) { /* frees bev */
			bev = NULL;
			rc = SR_ENOMEM;
			goto fail;
		}
		bev = NULL;
		if (in && evbuffer_add_buffer(sr_bsock_input(s->sock), in) != 0) {
			rc = SR_ENOMEM;
			goto fail;
		}
		if (out && evbuffer_add_buffer(sr_bsock_output(s->sock), out) != 0) {
			rc = SR_ENOMEM;
			goto fail;
		}
		/* Written to the socket for an earlier session: no session owes
		 * flow-control credit for it. */
		s->stale_out = (size_t)out_len;
	}
	if (finishing) {
		s->flags |= TS_F_FINISHING | TS_F_H2_CLOSED;
		link_front(&g->finishing, s);
	} else {
		s->flags |= TS_F_HELD;
		link_front(&g->held, s);
		g->nheld++;
	}
	return 0;
fail:
	if (bad)
		sr_seterr(err, errlen, "conn=%llu: %s", (unsigned long long)conn, bad);
	else
		sr_seterr(err, errlen, "conn=%llu: out of memory", (unsigned long long)conn);
	if (s) {
		/* Only our descriptor goes: the other process still owns the
		 * connection until the handover commits. */
		tun_stream_forget(s);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

int tun_handover_group_restore(struct tun_group *g, const json_t *j, char *err, size_t errlen)
{
	struct tun_group_stats *st = &g->st;
	uint64_t left = 0, away = 0;
	json_t *lost = json_object_get(j, "lost");
	size_t i;
	json_t *v;

	if (!json_is_object(j) || get_u64(j, "hold_left_ms", &left) ||
	    get_u64(j, "away_ms", &away) || get_u64(j, "aways", &st->aways) ||
	    get_u64(j, "resumes", &st->resumes) || get_u64(j, "resumed", &st->resumed) ||
	    get_u64(j, "replayed_bytes", &st->replayed_bytes) || !json_is_array(lost) ||
	    json_array_size(lost) > TUN_LOST_MAX) {
		sr_seterr(err, errlen, "group: a field is missing or has the wrong type");
		return SR_EINVAL;
	}
	json_array_foreach(lost, i, v)
	{
		if (!json_is_integer(v) || json_integer_value(v) < 0) {
			sr_seterr(err, errlen, "group: lost counts must be integers");
			return SR_EINVAL;
		}
		st->lost[i] = (uint64_t)json_integer_value(v);
	}
	/* Never longer than this relay's own hold time. */
	if (left > g->opts.hold_ms)
		left = g->opts.hold_ms;
	g->hold_left_ms = left;
	if (g->nheld || g->finishing) {
		uint64_t now = sr_now_us();
		st->away_since_us = away * 1000u < now ? now - away * 1000u : 1;
	}
	return 0;
}

/* ---- forget -------------------------------------------------------------------- */

void tun_group_forget(struct tun_group *g)
{
	while (g->held) {
		struct tun_stream *s = g->held;
		g->held = s->next;
		tun_stream_forget(s);
	}
	while (g->finishing) {
		struct tun_stream *s = g->finishing;
		g->finishing = s->next;
		tun_stream_forget(s);
	}
	g->nheld = 0;
	memset(g->nheld_slot, 0, sizeof(g->nheld_slot));
	g->frozen = 0;
	g->hold_left_ms = 0;
	g->st.away_since_us = 0;
	evtimer_del(g->hold_ev);
}
