/* The streams of one lease, which outlive any one tunnel (protocol v2).
 *
 * Spark executors exit when their connection to the driver closes, so a
 * tunnel that dies must not take the executor and driver sockets with it.
 * A session (tun_conn) that carries a group hands it its streams when the
 * tunnel ends for any reason but its owner's decision (read error, reset,
 * TLS failure, PING timeout): the group holds them, not reading their
 * sockets (TCP backpressure holds the peers) but still writing what was
 * already received, for at most opts.hold_ms. When the sidecar comes back
 * with its resume token, the relay reopens each held stream on the new
 * tunnel and both ends replay exactly what the other has not received.
 *
 * Byte accounting, per stream and direction:
 *  - tx_sent: payload bytes serialized as DATA (handed to the transport);
 *  - tx_acked: bytes the peer acknowledged with stream WINDOW_UPDATEs, which
 *    it sends only once bytes have been written to its socket (manual flow
 *    control), so every acknowledged byte has been delivered;
 *  - rx: payload bytes received (written to the socket or queued for it).
 * The sender keeps [tx_acked, tx_sent) at the front of the socket's input
 * buffer, so what it may have to replay is bounded by the peer's stream
 * window. On resume each end learns the other's rx for the stream and
 * resends from there: in order, exactly once. END_STREAM is resent when the
 * peer has not seen it; a stream one end reset is reset at the other. A
 * stream that ended normally lingers until a PING sent after its last frame
 * is acknowledged (the peer has processed everything before it), so that an
 * end lost with the tunnel is replayed too.
 *
 * Both roles create one group per lease; the relay with the lease, the
 * sidecar for its whole life (its lease may change: tun_group_reset). */
#ifndef TUN_GROUP_H
#define TUN_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "tunnel/tun_conn.h"

struct event_base;
struct tun_group;

/* Why held streams were lost (reset at both ends) instead of resumed. */
enum tun_lost {
	TUN_LOST_HOLD = 0,  /* the tunnel stayed away longer than hold_ms */
	TUN_LOST_UNKNOWN,   /* the other end no longer had the stream */
	TUN_LOST_SOCKET,    /* its socket failed while the tunnel was away */
	TUN_LOST_MISMATCH,  /* the two ends' byte counts could not both be true */
	TUN_LOST_ENDED,     /* the lease ended (released, revoked, expired, changed) */
	TUN_LOST_MAX,
};
const char *tun_lost_name(enum tun_lost why);

struct tun_group_opts {
	uint32_t hold_ms; /* how long held sockets wait for the tunnel */
};

struct tun_group_stats {
	size_t held;              /* streams held now (tunnel away) */
	size_t held_bytes;        /* bytes kept for them: to send and to deliver */
	uint64_t away_since_us;   /* when the tunnel went, 0 while it is up */
	uint64_t aways;           /* tunnels lost while they carried streams */
	uint64_t resumes;         /* tunnels that came back and resumed streams */
	uint64_t resumed;         /* streams resumed */
	uint64_t replayed_bytes;  /* payload sent again after a resume */
	uint64_t lost[TUN_LOST_MAX];
};

struct tun_group *tun_group_new(struct event_base *base, enum tun_role role,
				const struct tun_group_opts *o, const char *logctx);
/* Resets every held stream (counted TUN_LOST_ENDED). Detach the group from
 * its session first (tun_conn_set_group(c, NULL)) if one carries it. */
void tun_group_free(struct tun_group *g);
void tun_group_set_logctx(struct tun_group *g, const char *logctx);
/* The lease the group's streams belong to: a resumed CONNECT must name it. */
void tun_group_set_lease(struct tun_group *g, const char *lease_id);

/* c carries g's streams from now on; streams c opens or accepts join g.
 * NULL detaches (c's streams then end with c, as in protocol v1). Several
 * sessions may carry one group (a lease's tunnels); tun_group_free detaches
 * them all. */
void tun_conn_set_group(struct tun_conn *c, struct tun_group *g);

/* Streams held now, waiting for a tunnel. */
size_t tun_group_held(const struct tun_group *g);
/* Held streams lost from sessions of this slot (tun_conn_set_slot). */
#define TUN_GROUP_SLOTS 8u
size_t tun_group_held_slot(const struct tun_group *g, unsigned slot);
/* Relay: reopen every held stream on c (call after queueing the lease that
 * announces tun_group_held() streams). Returns how many were reopened. */
size_t tun_group_resume(struct tun_group *g, struct tun_conn *c);
/* Sidecar: the lease on tunnel c (which carries g) announced n resumed
 * streams; once n resumed CONNECTs have come on c, any stream of c's origin
 * still held is lost (UNKNOWN). With tunnels to several relays (origins,
 * tun_conn_set_origin) a relay resumes only the streams whose other end it
 * has; those of other origins stay held. Origin 0: every held stream. */
void tun_group_expect_on(struct tun_group *g, struct tun_conn *c, uint64_t n);
/* Held streams of origin (0: all). */
size_t tun_group_held_from(const struct tun_group *g, uint32_t origin);
/* Streams that c opens or accepts from now on carry origin (sidecar: which
 * relay they came through); a held stream keeps it. 0: none. */
void tun_conn_set_origin(struct tun_conn *c, uint32_t origin);
/* Sidecar: which of its tunnel slots c is (0..TUN_GROUP_SLOTS-1; 0 by
 * default). Streams held after c is lost count against the stream limit of
 * that slot's next tunnel only (tun_group_held_slot). */
void tun_conn_set_slot(struct tun_conn *c, unsigned slot);
/* Reset every held stream now. */
void tun_group_reset(struct tun_group *g, enum tun_lost why);
void tun_group_get_stats(const struct tun_group *g, struct tun_group_stats *st);

#endif
