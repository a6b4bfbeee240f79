/* Watch one file for a change of its content, the ways configuration files
 * change: written in place, replaced by a rename, or, in a Kubernetes
 * ConfigMap volume, swapped with a symbolic link (the kubelet writes a new
 * timestamped directory and renames the "..data" link to it; the file's
 * own path never changes). So the watch is on the file's directory (and on
 * the directory of the file the path resolves to, when that is elsewhere),
 * with inotify, and any event there is a hint: after debounce_ms without a
 * further event (at most 10 x debounce_ms after the first), the file is
 * read and its SHA-256 compared with the content seen last. Only a changed,
 * readable content calls the callback; an unreadable file is logged and
 * waited out. Linux only. */
#ifndef SR_WATCH_H
#define SR_WATCH_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct sr_watch;

/* Files larger than this are compared by their first bytes and their size. */
#define SR_WATCH_MAX_READ (16u << 20)

typedef void (*sr_watch_cb)(void *arg);

/* Start watching path (copied) in base; its content now is the reference.
 * Returns NULL with a reason in err (no inotify, no such directory). */
struct sr_watch *sr_watch_new(struct event_base *base, const char *path, uint32_t debounce_ms,
			      sr_watch_cb cb, void *arg, char *err, size_t errlen);
/* The file was just read by other means (a reload on SIGHUP): its content
 * now is the reference, so the watch does not reload it a second time.
 * NULL is a no-op. */
void sr_watch_sync(struct sr_watch *w);
/* Stop; NULL is a no-op. May be called from the callback's caller only. */
void sr_watch_free(struct sr_watch *w);

#endif
