/* File watch through inotify on the directories (contract in sr_watch.h). */
#include "common/sr_watch.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

/* Everything that can replace, rewrite or re-link a file in a directory. */
#define WATCH_MASK                                                                             \
	(IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |   \
	 IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)

enum { W_DIR = 0, W_REAL = 1, W_MAX };

struct sr_watch {
	struct event_base *base;
	char *path;
	char ctx[64 + SR_ESC_SIZE(128)];
	int fd;
	int wd[W_MAX];
	char dirs[W_MAX][PATH_MAX];
	struct event *ev;    /* the inotify fd */
	struct event *timer; /* debounce */
	uint32_t debounce_ms;
	uint64_t first_event_us; /* of the current burst, 0 if none */
	unsigned char digest[SHA256_DIGEST_LENGTH];
	int have_digest;     /* the file was readable when last looked at */
	int unreadable_logged;
	sr_watch_cb cb;
	void *arg;
};

/* SHA-256 of the file (at most SR_WATCH_MAX_READ bytes, and its size).
 * Returns 0, or -1 with errno set. */
static int file_digest(const char *path, unsigned char out[SHA256_DIGEST_LENGTH])
{
	unsigned char buf[16384];
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint64_t total = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC), rv = -1, saved;
	ssize_t n;

	if (fd < 0 || !md)
		goto out;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		goto out;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		if (total < SR_WATCH_MAX_READ && EVP_DigestUpdate(md, buf, (size_t)n) != 1)
			goto out;
		total += (uint64_t)n;
	}
	if (n < 0 || EVP_DigestUpdate(md, &total, sizeof(total)) != 1 ||
	    EVP_DigestFinal_ex(md, out, NULL) != 1)
		goto out;
	rv = 0;
out:
	saved = errno;
	EVP_MD_CTX_free(md);
	if (fd >= 0)
		close(fd);
	errno = saved;
	return rv;
}

/* Directories to watch: the path's, and the resolved file's if elsewhere
 * (a link to a file outside). Watches that moved are replaced. */
static void watch_dirs(struct sr_watch *w)
{
	char tmp[PATH_MAX], real[PATH_MAX], want[W_MAX][PATH_MAX];

	snprintf(tmp, sizeof(tmp), "%s", w->path);
	snprintf(want[W_DIR], sizeof(want[W_DIR]), "%s", dirname(tmp));
	want[W_REAL][0] = '\0';
	if (realpath(w->path, real)) {
		snprintf(want[W_REAL], sizeof(want[W_REAL]), "%s", dirname(real));
		if (strcmp(want[W_REAL], want[W_DIR]) == 0)
			want[W_REAL][0] = '\0';
	}
	for (int i = 0; i < W_MAX; i++) {
		if (w->wd[i] >= 0 && strcmp(w->dirs[i], want[i]) == 0)
			continue;
		if (w->wd[i] >= 0 && (i == W_DIR || w->wd[i] != w->wd[W_DIR]))
			inotify_rm_watch(w->fd, w->wd[i]);
		w->wd[i] = -1;
		w->dirs[i][0] = '\0';
		if (!want[i][0])
			continue;
		w->wd[i] = inotify_add_watch(w->fd, want[i], WATCH_MASK);
		if (w->wd[i] >= 0)
			snprintf(w->dirs[i], sizeof(w->dirs[i]), "%s", want[i]);
	}
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sr_watch *w = arg;
	unsigned char d[SHA256_DIGEST_LENGTH];

	w->first_event_us = 0;
	watch_dirs(w);
	if (file_digest(w->path, d) != 0) {
		if (!w->unreadable_logged)
			SR_WARN(w->ctx, "cannot read the file (%s); the running configuration "
					"stays until it is readable again",
				strerror(errno));
		w->unreadable_logged = 1;
		w->have_digest = 0;
		return;
	}
	w->unreadable_logged = 0;
	if (w->have_digest && memcmp(d, w->digest, sizeof(d)) == 0)
		return;
	memcpy(w->digest, d, sizeof(d));
	w->have_digest = 1;
	w->cb(w->arg);
}

static void inotify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sr_watch *w = arg;
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	uint64_t now = sr_now_us();
	struct timeval tv = sr_tv_ms(w->debounce_ms);
	int any = 0;
	ssize_t n;

	/* The events only say "look again": drain them all. */
	while ((n = read(w->fd, buf, sizeof(buf))) > 0)
		any = 1;
	if (!any)
		return;
	if (!w->first_event_us)
		w->first_event_us = now;
	/* A directory that never stops changing still gets a look now and
	 * then. */
	if (now - w->first_event_us >= 10ull * w->debounce_ms * 1000u &&
	    evtimer_pending(w->timer, NULL))
		return;
	evtimer_add(w->timer, &tv);
}

struct sr_watch *sr_watch_new(struct event_base *base, const char *path, uint32_t debounce_ms,
			      sr_watch_cb cb, void *arg, char *err, size_t errlen)
{
	struct sr_watch *w = calloc(1, sizeof(*w));
	char esc[SR_ESC_SIZE(128)];

	if (!w) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	w->fd = -1;
	w->wd[W_DIR] = w->wd[W_REAL] = -1;
	w->base = base;
	w->cb = cb;
	w->arg = arg;
	w->debounce_ms = debounce_ms ? debounce_ms : 1;
	w->path = strdup(path);
	snprintf(w->ctx, sizeof(w->ctx), "watch %s", sr_esc_n(path, 128, esc, sizeof(esc)));
	if (!w->path) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		sr_seterr(err, errlen, "inotify: %s", strerror(errno));
		goto fail;
	}
	watch_dirs(w);
	if (w->wd[W_DIR] < 0) {
		sr_seterr(err, errlen, "cannot watch the directory of %s: %s", esc, strerror(errno));
		goto fail;
	}
	w->have_digest = file_digest(w->path, w->digest) == 0;
	w->ev = event_new(base, w->fd, EV_READ | EV_PERSIST, inotify_cb, w);
	w->timer = evtimer_new(base, timer_cb, w);
	if (!w->ev || !w->timer || event_add(w->ev, NULL) != 0) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	return w;
fail:
	sr_watch_free(w);
	return NULL;
}

void sr_watch_sync(struct sr_watch *w)
{
	if (w)
		w->have_digest = file_digest(w->path, w->digest) == 0;
}

void sr_watch_free(struct sr_watch *w)
{
	if (!w)
		return;
	if (w->ev)
		event_free(w->ev);
	if (w->timer)
		event_free(w->timer);
	if (w->fd >= 0)
		close(w->fd); /* removes the watches */
	free(w->path);
	free(w);
}
