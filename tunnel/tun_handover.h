/* A group's streams handed to another process (live relay handover).
 *
 * When a relay process hands over to a new one, every tunnel is closed with
 * tun_conn_close_hold() first, so that each executor stream of a lease is
 * held by the lease's group (tun_group.h) with exact byte counts. The old
 * process then freezes the group (its sockets are neither read nor written,
 * the hold timer stops), describes each stream (JSON, its socket and the
 * bytes of its socket's input and output) to the new process, which adopts
 * them into a frozen group of its own. Exactly one process thaws its group
 * afterwards: the new one once the handover is committed, or the old one if
 * it was abandoned; the other forgets its copy (tun_group_forget), closing
 * only its own descriptors, never touching the connections.
 *
 * What a stream carries over (tun_handover_stream_json):
 *   conn, port, lease, peer          its identity on the tunnel
 *   tx_sent, tx_acked, rx            the byte counts of tun_group.h
 *   up, down                         "open" | "eof" | "done" (down only)
 *   live                             false: a tombstone (socket closed, reset)
 *   fin_sent, answer_seen, rst_sent, tomb_done, finishing   flags
 *   in, out                          bytes of its socket's input (the
 *                                    tx_sent - tx_acked retained bytes first,
 *                                    then those not sent yet) and output (not
 *                                    yet written to the socket)
 * and the group (tun_handover_group_json): its counters, how long the tunnel
 * has been away and how much of the hold time is left. */
#ifndef TUN_HANDOVER_H
#define TUN_HANDOVER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tunnel/tun_group.h"

struct evbuffer;
struct tun_stream;

/* Largest input or output one stream may carry over, bytes: far above what
 * the flow-control windows let a stream buffer. */
#define TUN_HO_BUF_MAX (1u << 30)

/* Stop g from touching its sockets: held and finishing streams are neither
 * read nor written and the hold timer stops (its time left is kept). Only a
 * group whose session is gone may be frozen: returns SR_EBUSY while a
 * session carries it, else 0. Idempotent. */
int tun_group_freeze(struct tun_group *g);
/* Undo a freeze (or start an adopted group): output is written again,
 * half-closes and finished streams complete, the hold timer runs for what
 * was left. No-op on a group that is not frozen. */
void tun_group_thaw(struct tun_group *g);
int tun_group_frozen(const struct tun_group *g);

/* ---- export (the old process) ---- */

/* The streams of a frozen group, one after the other: NULL starts and ends.
 * Valid until the group is thawed or forgotten. */
struct tun_stream *tun_handover_next(struct tun_group *g, struct tun_stream *prev);
/* A new reference (NULL on allocation failure). */
json_t *tun_handover_stream_json(const struct tun_stream *s);
/* Its socket (-1 for a tombstone); stays the stream's. */
int tun_handover_stream_fd(const struct tun_stream *s);
/* Its socket's input and output (NULL for a tombstone); borrowed, read
 * them without draining. */
struct evbuffer *tun_handover_stream_in(const struct tun_stream *s);
struct evbuffer *tun_handover_stream_out(const struct tun_stream *s);
/* The group: counters, hold time left, time away. A new reference. */
json_t *tun_handover_group_json(const struct tun_group *g);

/* ---- import (the new process) ---- */

/* Into a frozen group g (relay role), which this call leaves frozen: a held
 * stream from its description, its socket fd (-1 for a tombstone; stolen in
 * every case, non-blocking) and its socket's bytes (in and out are drained
 * into its buffers; either may be NULL for none). Nothing touches the socket
 * before tun_group_thaw(). Returns 0, or SR_EINVAL (the description breaks
 * its rules, why in err) or SR_ENOMEM. */
int tun_handover_adopt(struct tun_group *g, const json_t *meta, int fd, struct evbuffer *in,
		       struct evbuffer *out, char *err, size_t errlen);
/* The group's counters and timers from tun_handover_group_json(), after its
 * streams were adopted. Returns 0 or SR_EINVAL. */
int tun_handover_group_restore(struct tun_group *g, const json_t *j, char *err, size_t errlen);

/* Free every stream of g without touching its connection: our descriptors
 * close, nothing is shut down, reset or written (another process owns the
 * connections now). The group stays usable (empty, not frozen). */
void tun_group_forget(struct tun_group *g);

#endif
