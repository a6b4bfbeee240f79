/* See splice.h. */
#include "fleet/splice.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/sr_err.h"
#include "common/sr_util.h"

/* Rounds of read-then-write per direction in one event: a fast pair yields
 * to the loop after this many, and level-triggered events bring it back. */
#define SPLICE_ROUNDS 8

enum splice_state { SP_IDLE, SP_CONNECTING, SP_RUNNING, SP_ENDED };
enum { SIDE_A = 0, SIDE_B = 1 };
enum { ARM_AR = 1, ARM_AW = 2, ARM_BR = 4, ARM_BW = 8 };

/* One direction: src -> pipe -> dst. */
struct splice_dir {
	int pipe[2];
	size_t cap;    /* the pipe's size */
	size_t inpipe; /* bytes in it */
	int eof;       /* src gave EOF */
	int shut;      /* dst got SHUT_WR */
	int full;      /* the last read met a pipe out of slots before cap bytes */
	uint64_t bytes;
};

struct fleet_splice {
	struct event_base *base;
	fleet_splice_cb cb;
	void *arg;
	struct fleet_splice_opts o;
	enum splice_state state;
	int a, b;
	struct event *ar, *aw, *br, *bw, *timer;
	unsigned armed;
	int moved;		/* a byte or a's FIN moved: no retry elsewhere */
	int connect_err;	/* a connect that failed at once, reported from the timer */
	int fail_side;		/* the side whose read or write failed */
	int paused;		/* fleet_splice_pause */
	struct splice_dir d[2]; /* [0] a -> b, [1] b -> a */
	size_t plen, poff;
	uint8_t prefix[FLEET_SPLICE_PREFIX_MAX];
};

static void sp_io_cb(evutil_socket_t fd, short what, void *arg);

static void sp_arm(struct fleet_splice *sp, struct event *ev, unsigned bit, int want)
{
	if (ev == NULL)
		return;
	if (want && !(sp->armed & bit)) {
		event_add(ev, NULL);
		sp->armed |= bit;
	} else if (!want && (sp->armed & bit)) {
		event_del(ev);
		sp->armed &= ~bit;
	}
}

static void sp_rearm(struct fleet_splice *sp)
{
	const struct splice_dir *ab = &sp->d[0], *ba = &sp->d[1];
	int run = sp->state == SP_RUNNING && !sp->paused;
	int prefix_left = sp->poff < sp->plen;

	sp_arm(sp, sp->ar, ARM_AR,
	       run && !prefix_left && !ab->eof && !ab->full && ab->inpipe < ab->cap);
	sp_arm(sp, sp->bw, ARM_BW,
	       (run && (prefix_left || ab->inpipe > 0)) ||
		   (sp->state == SP_CONNECTING && !sp->paused));
	sp_arm(sp, sp->br, ARM_BR, run && !ba->eof && !ba->full && ba->inpipe < ba->cap);
	sp_arm(sp, sp->aw, ARM_AW, run && ba->inpipe > 0);
}

static int sp_errno_to_err(int e)
{
	if (e == ECONNRESET || e == EPIPE || e == ENOTCONN)
		return SR_ECLOSED;
	if (e == EINVAL)
		return SR_EINVAL;
	if (e == ETIMEDOUT)
		return SR_ETIMEDOUT;
	return SR_EIO;
}

static void sp_close_b(struct fleet_splice *sp, int reset)
{
	sp_arm(sp, sp->br, ARM_BR, 0);
	sp_arm(sp, sp->bw, ARM_BW, 0);
	if (sp->br)
		event_free(sp->br);
	if (sp->bw)
		event_free(sp->bw);
	sp->br = sp->bw = NULL;
	if (sp->b >= 0) {
		if (reset)
			sr_sock_set_reset_on_close(sp->b);
		close(sp->b);
	}
	sp->b = -1;
}

static int sp_attach_b(struct fleet_splice *sp, int b)
{
	sp->br = event_new(sp->base, b, EV_READ | EV_PERSIST, sp_io_cb, sp);
	sp->bw = event_new(sp->base, b, EV_WRITE | EV_PERSIST, sp_io_cb, sp);
	if (sp->br == NULL || sp->bw == NULL) {
		if (sp->br)
			event_free(sp->br);
		if (sp->bw)
			event_free(sp->bw);
		sp->br = sp->bw = NULL;
		return SR_ENOMEM;
	}
	sp->b = b;
	return 0;
}

static void sp_reset_dirs(struct fleet_splice *sp)
{
	for (int k = 0; k < 2; k++) {
		struct splice_dir *d = &sp->d[k];
		d->inpipe = 0;
		d->eof = d->shut = d->full = 0;
		d->bytes = 0;
	}
	sp->moved = 0;
	sp->plen = sp->poff = 0;
}

/* b failed before anything moved: back to idle with a untouched. */
static void sp_unreached(struct fleet_splice *sp, int err)
{
	evtimer_del(sp->timer);
	sp_close_b(sp, 1);
	sp_arm(sp, sp->ar, ARM_AR, 0);
	sp_arm(sp, sp->aw, ARM_AW, 0);
	sp_reset_dirs(sp);
	sp->connect_err = 0;
	sp->state = SP_IDLE;
	sp->cb(sp, FLEET_SPLICE_UNREACHED, err, sp->arg);
}

static void sp_end(struct fleet_splice *sp, enum fleet_splice_end end, int err)
{
	int reset = end != FLEET_SPLICE_DONE;

	evtimer_del(sp->timer);
	sp_close_b(sp, reset);
	sp_arm(sp, sp->ar, ARM_AR, 0);
	sp_arm(sp, sp->aw, ARM_AW, 0);
	if (reset)
		sr_sock_set_reset_on_close(sp->a);
	close(sp->a);
	sp->a = -1;
	sp->state = SP_ENDED;
	sp->cb(sp, end, err, sp->arg);
}

/* Moves what it can in direction k. Returns 0, or an error with the side
 * that failed in sp->fail_side. */
static int sp_pump(struct fleet_splice *sp, int k)
{
	struct splice_dir *d = &sp->d[k];
	int src = k == 0 ? sp->a : sp->b, dst = k == 0 ? sp->b : sp->a;
	int src_side = k == 0 ? SIDE_A : SIDE_B;
	ssize_t n;

	if (k == 0 && sp->poff < sp->plen)
		return 0; /* a's bytes go behind the prefix */
	for (int round = 0; round < SPLICE_ROUNDS; round++) {
		int progress = 0;

		if (!d->eof && !d->full && d->inpipe < d->cap) {
			n = splice(src, NULL, d->pipe[1], NULL, d->cap - d->inpipe,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				d->inpipe += (size_t)n;
				sp->moved = 1;
				progress = 1;
			} else if (n == 0) {
				d->eof = 1;
				if (src_side == SIDE_B && !sp->moved) {
					sp->fail_side = SIDE_B;
					return SR_ECLOSED;
				}
				sp->moved = 1;
			} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
				/* With bytes in the pipe this is a pipe out of slots
				 * (partial pages), not an empty socket: wait for the
				 * write side instead of a read event that would fire
				 * at once, again and again. */
				if (d->inpipe > 0)
					d->full = 1;
			} else if (errno != EINTR) {
				sp->fail_side = src_side;
				return sp_errno_to_err(errno);
			}
		}
		if (d->inpipe > 0) {
			n = splice(d->pipe[0], NULL, dst, NULL, d->inpipe,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				d->inpipe -= (size_t)n;
				d->bytes += (uint64_t)n;
				d->full = 0;
				progress = 1;
			} else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
				   errno != EINTR) {
				sp->fail_side = 1 - src_side;
				return sp_errno_to_err(errno);
			}
		}
		if (d->eof && d->inpipe == 0 && !d->shut) {
			if (shutdown(dst, SHUT_WR) != 0) {
				sp->fail_side = 1 - src_side;
				return sp_errno_to_err(errno);
			}
			d->shut = 1;
		}
		if (!progress)
			break;
	}
	return 0;
}

static void sp_run(struct fleet_splice *sp)
{
	int rc = 0;

	if (sp->poff < sp->plen) {
		ssize_t n = send(sp->b, sp->prefix + sp->poff, sp->plen - sp->poff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0)
			sp->poff += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			sp->fail_side = SIDE_B;
			rc = sp_errno_to_err(errno);
		}
	}
	if (rc == 0)
		rc = sp_pump(sp, 0);
	if (rc == 0)
		rc = sp_pump(sp, 1);
	if (rc != 0) {
		if (sp->fail_side == SIDE_B && !sp->moved)
			sp_unreached(sp, rc);
		else
			sp_end(sp, FLEET_SPLICE_RESET, rc);
		return;
	}
	if (sp->d[0].shut && sp->d[1].shut) {
		sp_end(sp, FLEET_SPLICE_DONE, 0);
		return;
	}
	sp_rearm(sp);
}

static void sp_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fleet_splice *sp = arg;
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	if (sp->paused)
		return;
	if (sp->state == SP_CONNECTING) {
		if (getsockopt(sp->b, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
			soerr = errno;
		if (soerr == EINPROGRESS || soerr == EALREADY)
			return;
		if (soerr != 0) {
			/* A reset that beat this event is the peer hanging up. */
			sp_unreached(sp, soerr == ECONNRESET ? SR_ECLOSED : SR_EIO);
			return;
		}
		evtimer_del(sp->timer);
		sp->state = SP_RUNNING;
	}
	if (sp->state == SP_RUNNING)
		sp_run(sp);
}

static void sp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fleet_splice *sp = arg;

	if (sp->state == SP_CONNECTING)
		sp_unreached(sp, sp->connect_err ? sp->connect_err : SR_ETIMEDOUT);
}

struct fleet_splice *fleet_splice_new(struct event_base *base, int a,
				      const struct fleet_splice_opts *o, fleet_splice_cb cb,
				      void *arg)
{
	struct fleet_splice *sp = calloc(1, sizeof(*sp));

	if (sp == NULL)
		return NULL;
	sp->base = base;
	sp->cb = cb;
	sp->arg = arg;
	sp->a = -1;
	sp->b = -1;
	for (int k = 0; k < 2; k++)
		sp->d[k].pipe[0] = sp->d[k].pipe[1] = -1;
	if (o != NULL)
		sp->o = *o;
	if (sp->o.connect_timeout_ms == 0)
		sp->o.connect_timeout_ms = FLEET_SPLICE_CONNECT_TIMEOUT_MS;
	if (sp->o.pipe_bytes == 0)
		sp->o.pipe_bytes = FLEET_SPLICE_PIPE_BYTES;
	for (int k = 0; k < 2; k++) {
		struct splice_dir *d = &sp->d[k];
		int got;

		if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) != 0)
			goto fail;
		/* Past fs.pipe-max-size or the per-user soft limit this fails or
		 * is cut; the pipe keeps what the kernel gave it. */
		(void)fcntl(d->pipe[1], F_SETPIPE_SZ, (int)sp->o.pipe_bytes);
		got = fcntl(d->pipe[1], F_GETPIPE_SZ);
		if (got <= 0)
			goto fail;
		d->cap = (size_t)got;
	}
	sp->ar = event_new(base, a, EV_READ | EV_PERSIST, sp_io_cb, sp);
	sp->aw = event_new(base, a, EV_WRITE | EV_PERSIST, sp_io_cb, sp);
	sp->timer = evtimer_new(base, sp_timer_cb, sp);
	if (sp->ar == NULL || sp->aw == NULL || sp->timer == NULL)
		goto fail;
	sp->a = a;
	return sp;

fail:
	fleet_splice_free(sp);
	return NULL;
}

int fleet_splice_connect(struct fleet_splice *sp, const struct sockaddr *peer, socklen_t len,
			 const void *prefix, size_t plen)
{
	struct timeval tv = sr_tv_ms(sp->o.connect_timeout_ms);
	int fd;

	if (sp->state != SP_IDLE || plen > sizeof(sp->prefix))
		return SR_EINVAL;
	sp_reset_dirs(sp);
	if (plen > 0)
		memcpy(sp->prefix, prefix, plen);
	sp->plen = plen;
	sp->state = SP_CONNECTING;
	sp->connect_err = 0;
	fd = socket(peer->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		sp->connect_err = sp_errno_to_err(errno) == SR_EINVAL ? SR_EINVAL : SR_EIO;
	} else if (sp_attach_b(sp, fd) != 0) {
		close(fd);
		sp->connect_err = SR_EIO;
	} else {
		sr_sock_nodelay(fd);
		sr_sock_keepalive(fd, FLEET_SPLICE_KEEPIDLE_S, FLEET_SPLICE_KEEPINTVL_S,
				  FLEET_SPLICE_KEEPCNT);
		if (connect(fd, peer, len) != 0 && errno != EINPROGRESS) {
			sp_close_b(sp, 0);
			sp->connect_err = SR_EIO;
		}
	}
	/* A failure now is reported from the timer, never from this call. */
	if (sp->connect_err)
		tv = sr_tv_ms(0);
	else
		sp_rearm(sp);
	evtimer_add(sp->timer, &tv);
	return 0;
}

int fleet_splice_start(struct fleet_splice *sp, int b)
{
	if (sp->state != SP_IDLE || b < 0)
		return SR_EINVAL;
	if (sp_attach_b(sp, b) != 0)
		return SR_ENOMEM;
	sp_reset_dirs(sp);
	sp->state = SP_RUNNING;
	sp_rearm(sp);
	return 0;
}

void fleet_splice_bytes(const struct fleet_splice *sp, uint64_t *a_to_b, uint64_t *b_to_a)
{
	if (a_to_b)
		*a_to_b = sp->d[0].bytes;
	if (b_to_a)
		*b_to_a = sp->d[1].bytes;
}

int fleet_splice_take(struct fleet_splice *sp)
{
	int a;

	if (sp->state != SP_IDLE)
		return -1;
	a = sp->a;
	sp->a = -1;
	fleet_splice_free(sp);
	return a;
}

void fleet_splice_pause(struct fleet_splice *sp, int on)
{
	sp->paused = on;
	if (sp->state == SP_CONNECTING) {
		/* Its timeout restarts whole: a connect is never cut short. */
		struct timeval tv = sr_tv_ms(sp->connect_err ? 0 : sp->o.connect_timeout_ms);
		if (on)
			evtimer_del(sp->timer);
		else
			evtimer_add(sp->timer, &tv);
	}
	sp_rearm(sp);
}

int fleet_splice_export(const struct fleet_splice *sp, struct fleet_splice_state *st)
{
	if (sp->state != SP_RUNNING || !sp->paused || sp->poff < sp->plen)
		return SR_EINVAL;
	memset(st, 0, sizeof(*st));
	st->a = sp->a;
	st->b = sp->b;
	for (int k = 0; k < 2; k++) {
		st->pipe[k][0] = sp->d[k].pipe[0];
		st->pipe[k][1] = sp->d[k].pipe[1];
		st->inpipe[k] = sp->d[k].inpipe;
		st->eof[k] = sp->d[k].eof;
		st->shut[k] = sp->d[k].shut;
		st->bytes[k] = sp->d[k].bytes;
	}
	st->moved = sp->moved;
	return 0;
}

void fleet_splice_forget(struct fleet_splice *sp)
{
	if (sp == NULL)
		return;
	sp->paused = 1;
	sp_rearm(sp);
	if (sp->b >= 0)
		close(sp->b); /* ours only: no reset, no shutdown */
	sp->b = -1;
	if (sp->a >= 0)
		close(sp->a);
	sp->a = -1;
	fleet_splice_free(sp);
}

struct fleet_splice *fleet_splice_adopt(struct event_base *base,
					const struct fleet_splice_state *st, int paused,
					const struct fleet_splice_opts *o, fleet_splice_cb cb,
					void *arg)
{
	struct fleet_splice *sp = calloc(1, sizeof(*sp));
	int ok = sp != NULL;

	if (sp != NULL) {
		sp->base = base;
		sp->cb = cb;
		sp->arg = arg;
		sp->a = st->a;
		sp->b = -1;
		if (o != NULL)
			sp->o = *o;
		if (sp->o.connect_timeout_ms == 0)
			sp->o.connect_timeout_ms = FLEET_SPLICE_CONNECT_TIMEOUT_MS;
		for (int k = 0; k < 2; k++) {
			struct splice_dir *d = &sp->d[k];
			int got = fcntl(st->pipe[k][1], F_GETPIPE_SZ);
			d->pipe[0] = st->pipe[k][0];
			d->pipe[1] = st->pipe[k][1];
			d->inpipe = st->inpipe[k];
			d->eof = st->eof[k];
			d->shut = st->shut[k];
			d->bytes = st->bytes[k];
			d->cap = got > 0 ? (size_t)got : 0;
			ok &= got > 0 && d->inpipe <= d->cap;
		}
		sp->moved = st->moved;
		sp->paused = paused;
		sp->ar = event_new(base, st->a, EV_READ | EV_PERSIST, sp_io_cb, sp);
		sp->aw = event_new(base, st->a, EV_WRITE | EV_PERSIST, sp_io_cb, sp);
		sp->timer = evtimer_new(base, sp_timer_cb, sp);
		ok &= sp->ar != NULL && sp->aw != NULL && sp->timer != NULL;
		if (ok && sp_attach_b(sp, st->b) != 0)
			ok = 0;
	}
	if (!ok) {
		if (sp == NULL || sp->b < 0)
			close(st->b);
		if (sp != NULL) {
			fleet_splice_forget(sp);
		} else {
			close(st->a);
			for (int k = 0; k < 2; k++)
				for (int i = 0; i < 2; i++)
					close(st->pipe[k][i]);
		}
		return NULL;
	}
	sp->state = SP_RUNNING;
	sp_rearm(sp);
	return sp;
}

void fleet_splice_free(struct fleet_splice *sp)
{
	if (sp == NULL)
		return;
	sp_close_b(sp, 1);
	if (sp->ar)
		event_free(sp->ar);
	if (sp->aw)
		event_free(sp->aw);
	if (sp->timer)
		event_free(sp->timer);
	if (sp->a >= 0) {
		sr_sock_set_reset_on_close(sp->a);
		close(sp->a);
	}
	for (int k = 0; k < 2; k++)
		for (int i = 0; i < 2; i++)
			if (sp->d[k].pipe[i] >= 0)
				close(sp->d[k].pipe[i]);
	free(sp);
}
