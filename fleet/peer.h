/* Relay-to-relay forwarding: the header one relay (Z) writes in front of an
 * executor's bytes when it carries that executor connection to a relay (X)
 * that holds a tunnel of the lease, and X's listener that checks it.
 *
 * The hop is plain TCP, like the executor connection it carries. Z connects
 * to X's peer address, writes one header and then the executor's bytes at
 * once (no answer is awaited); X reads exactly the header, checks it, and
 * hands the socket, positioned at the executor's first byte, to its owner,
 * or refuses by closing it with a reset (SO_LINGER 0).
 *
 * Header, version 2 (integers in network byte order):
 *
 *   off  len  field
 *     0    4  magic "SRFW"
 *     4    1  version, 1
 *     5    1  role: enum tun_port_role (0 driver, 1 blockManager, 2 ui)
 *     6    1  executor address family: 4 or 6
 *     7    1  L: length of the lease id, at most TUN_CTL_LEASE_MAX - 1
 *     8    2  executor port, 1..65535
 *    10    8  time: milliseconds since the Unix epoch, Z's wall clock
 *    18   16  nonce: random
 *    34   16  executor address: IPv6, or IPv4 followed by 12 zero bytes
 *    50    L  lease id (tun_ctl_valid_lease_id, no NUL)
 *  50+L   32  HMAC-SHA256 under the fleet secret of bytes [0, 50+L),
 *             then one byte D and the D bytes of the destination relay's
 *             id (X's relay.fleet.id; not sent, X knows its own)
 *
 * The MAC names the relay the header is meant for: a header seen on the
 * wire between Z and X is refused by every other relay (bad_mac), and X
 * refuses it again within the clock window by its nonce (replay). Version
 * 1 had no destination; a relay refuses it (bad_version).
 *
 * At most FLEET_PEER_HDR_MAX (129) bytes. An IPv4-mapped IPv6 address is
 * sent as IPv4; the unspecified, multicast and broadcast addresses, port 0
 * and nonzero padding are invalid. This module does not log the secret, and
 * never quotes a refused header's bytes. */
#ifndef FLEET_PEER_H
#define FLEET_PEER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tunnel/tun_ctl.h"

struct event_base;

#define FLEET_PEER_VERSION 2
#define FLEET_PEER_HDR_FIXED 50
#define FLEET_PEER_MAC_LEN 32
#define FLEET_PEER_NONCE_LEN 16
#define FLEET_PEER_HDR_MAX (FLEET_PEER_HDR_FIXED + TUN_CTL_LEASE_MAX - 1 + FLEET_PEER_MAC_LEN)
/* A relay id, the header's destination: 1..FLEET_PEER_ID_MAX - 1 bytes,
 * no NUL. */
#define FLEET_PEER_ID_MAX 64
/* "IPv4:port" or "[IPv6]:port", the longest a peer address may be. */
#define FLEET_PEER_ADDR_MAX 64

/* Defaults of struct fleet_peer_opts. */
#define FLEET_PEER_HEADER_TIMEOUT_MS 2000
#define FLEET_PEER_CLOCK_WINDOW_MS 60000
#define FLEET_PEER_MAX_PENDING 256
#define FLEET_PEER_MAX_PENDING_PER_SOURCE 16
#define FLEET_PEER_REPLAY_SLOTS 65536

/* The fleet secret: the HMAC key every relay of a fleet shares. */
#define FLEET_SECRET_MIN 32
#define FLEET_SECRET_MAX 1024
struct fleet_secret;

/* Read the secret from path once: its bytes exactly as stored (a trailing
 * newline is part of it), FLEET_SECRET_MIN..FLEET_SECRET_MAX of them. The
 * error text names the file and what is wrong, never its content. Returns 0,
 * SR_EIO (cannot read), SR_EINVAL (too short or too long) or SR_ENOMEM. */
int fleet_secret_load(const char *path, struct fleet_secret **out, char *err, size_t errlen);
/* The same from bytes in memory (copied). */
int fleet_secret_new(const void *key, size_t len, struct fleet_secret **out);
/* Wipes the key. NULL does nothing. */
void fleet_secret_free(struct fleet_secret *s);

/* What a header says. */
struct fleet_peer_hdr {
	char lease[TUN_CTL_LEASE_MAX];
	enum tun_port_role role;
	struct sockaddr_storage exec; /* AF_INET or AF_INET6, with the port */
	uint64_t time_ms;
	uint8_t nonce[FLEET_PEER_NONCE_LEN];
};

/* Outcome of parsing a header, and the reasons a listener refuses one. */
enum fleet_peer_status {
	FLEET_PEER_OK = 0,
	FLEET_PEER_MORE,	/* not complete yet */
	FLEET_PEER_BAD_MAGIC,	/* not a peer header at all */
	FLEET_PEER_BAD_VERSION, /* a version this relay does not speak */
	FLEET_PEER_OVERSIZE,	/* lease id length over the bound */
	FLEET_PEER_BAD_MAC,	/* not made with this fleet's secret, or altered */
	FLEET_PEER_STALE,	/* time older than the clock window */
	FLEET_PEER_FUTURE,	/* time newer than the clock window */
	FLEET_PEER_BAD_LEASE,	/* lease id outside its contract */
	FLEET_PEER_BAD_ROLE,	/* not a tun_port_role */
	FLEET_PEER_BAD_ADDR,	/* family, address or port invalid */
	/* Listener only. */
	FLEET_PEER_REPLAY,    /* nonce seen before, or older than what is remembered */
	FLEET_PEER_TRUNCATED, /* closed before the header was complete */
	FLEET_PEER_TIMEOUT,   /* header not complete within header_timeout_ms */
	FLEET_PEER_IO,	      /* reset or socket error while reading the header */
	FLEET_PEER_BUSY,      /* the oldest reading when max_pending were */
	FLEET_PEER_BUSY_SOURCE, /* its source's oldest when max_pending_per_source were */
	FLEET_PEER_STATUS_MAX,
};

/* "ok", "more", "bad_magic", ...: a metric label; never NULL. */
const char *fleet_peer_status_name(int status);

/* A header for an executor connection: now (wall clock) and a fresh nonce.
 * exec is AF_INET or AF_INET6 (a v4-mapped address becomes AF_INET).
 * Returns 0, SR_EINVAL (a field the parser would refuse) or SR_EIO (no
 * randomness). */
int fleet_peer_hdr_init(struct fleet_peer_hdr *h, const char *lease, enum tun_port_role role,
			const struct sockaddr *exec);

/* Write h, meant for the relay whose id is dest, into out. Returns the
 * length (at most FLEET_PEER_HDR_MAX), or SR_EINVAL when a field or dest is
 * invalid or out is too small. */
int fleet_peer_hdr_encode(const struct fleet_peer_hdr *h, const struct fleet_secret *sec,
			  const char *dest, uint8_t *out, size_t outlen);

/* Parse the header at the start of buf[0..len), which must be meant for
 * the relay whose id is self (else FLEET_PEER_BAD_MAC). Returns FLEET_PEER_OK with
 * *hlen = its length and h filled; FLEET_PEER_MORE with *hlen = the length
 * it has at least (> len) when more bytes are needed; or a refusal. Reads no
 * byte past the header, so a caller that reads exactly *hlen bytes keeps the
 * executor's bytes in the socket. Framing (magic, version, length) is
 * refused as soon as its bytes are there; the MAC is checked (in constant
 * time) before any other field, then the time against now_ms +- window_ms,
 * then role, address and lease id. h (may be NULL) is written only on OK. */
enum fleet_peer_status fleet_peer_hdr_parse(const uint8_t *buf, size_t len,
					    const struct fleet_secret *sec, const char *self,
					    uint64_t now_ms,
					    uint32_t window_ms, struct fleet_peer_hdr *h,
					    size_t *hlen);

/* A relay's peer address as read from etcd (untrusted): exactly
 * "a.b.c.d:port" or "[v6]:port" in len bytes (at most
 * FLEET_PEER_ADDR_MAX - 1, no NUL), numeric, port 1..65535 without sign or
 * leading zero; not an address one cannot dial a relay at (unspecified,
 * 0.0.0.0/8, multicast, broadcast, reserved 240/4, v4-mapped IPv6).
 * Returns 0 with *sa and *salen filled, or -1. */
int fleet_peer_addr_parse(const char *s, size_t len, struct sockaddr_storage *sa,
			  socklen_t *salen);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
uint64_t fleet_peer_now_ms(void);

/* The listener. Each accepted connection must deliver a whole valid header
 * meant for this relay within header_timeout_ms of its accept, whatever
 * its pace; its nonce must be new. Zero fields take the defaults above. */
struct fleet_peer_opts {
	uint32_t header_timeout_ms;
	uint32_t clock_window_ms;
	uint32_t max_pending;		 /* connections still reading a header */
	uint32_t max_pending_per_source; /* of those, from one address */
	uint32_t replay_slots;		 /* nonces remembered (32 bytes each) */
};

/* A connection whose header passed: fd is now the callback's (non-blocking,
 * the executor's bytes unread behind the header); hdr is borrowed for the
 * call. The owner serves it from a local tunnel of the lease or closes it
 * with a reset: it must never forward a peer connection again, which is
 * what keeps a fleet free of forwarding loops. The callback must not free
 * the listener. */
typedef void (*fleet_peer_cb)(const struct fleet_peer_hdr *hdr, int fd, void *arg);

struct fleet_peer_listener;

/* Listen on sa (port 0: the kernel picks one) for headers meant for the
 * relay id self (copied). sec is borrowed and must outlive the listener.
 * Returns NULL with the reason in err. */
struct fleet_peer_listener *
fleet_peer_listener_new(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
			const struct fleet_secret *sec, const char *self,
			const struct fleet_peer_opts *o,
			fleet_peer_cb cb, void *arg, char *err, size_t errlen);
/* The same around a socket that listens already (another process made it,
 * live handover), stolen in every case; it accepts once enabled. */
struct fleet_peer_listener *
fleet_peer_listener_adopt(struct event_base *base, int fd, const struct fleet_secret *sec,
			  const char *self, const struct fleet_peer_opts *o, fleet_peer_cb cb,
			  void *arg, char *err, size_t errlen);
/* Accept and read headers (on) or not: new connections wait in the
 * backlog, those reading a header wait unread (their deadline runs on).
 * 0, or SR_ENOMEM. */
int fleet_peer_listener_enable(struct fleet_peer_listener *l, int on);
/* The listening socket (still the listener's), for passing to another
 * process. */
int fleet_peer_listener_fd(const struct fleet_peer_listener *l);
/* Stops listening and resets every connection still reading its header.
 * NULL does nothing. */
void fleet_peer_listener_free(struct fleet_peer_listener *l);
/* The port it listens on. */
uint16_t fleet_peer_listener_port(const struct fleet_peer_listener *l);
/* Connections handed to the callback (FLEET_PEER_OK) and refused, by
 * status; FLEET_PEER_MORE stays 0. */
uint64_t fleet_peer_listener_count(const struct fleet_peer_listener *l,
				   enum fleet_peer_status status);
/* Connections still reading their header. */
unsigned fleet_peer_listener_npending(const struct fleet_peer_listener *l);

#endif
