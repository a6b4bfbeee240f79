/* Control-stream messages of tunnel protocol v2.
 *
 * The control stream is the first stream of a tunnel, opened by the relay
 * (POST /sparkrelay/v1/control). Both directions carry a sequence of frames:
 *
 *     u32 length (network byte order) | JSON object of `length` bytes
 *
 * Every object has "v" (2; 1 from an older peer) and "type". Frames longer than the configured cap
 * (TUN_CTL_MAX_DEFAULT unless configured) are a protocol error, detected from
 * the length prefix before the body is buffered.
 *
 *   sidecar -> relay   {"v":2,"type":"register","app":"..","roles":["driver","blockManager"],
 *                       "resume":"<token>"?, "token":"<bearer>"?}
 *   relay -> sidecar   {"v":2,"type":"lease","lease":"L-..","host":"..",
 *                       "ports":{"driver":40001,"blockManager":40002},"ttl":300,
 *                       "resume":"<token>", "streams":N?}
 *
 * v2 adds stream resumption (tun_group.h): "streams" in a lease that resumes
 * is the number of held streams the relay reopens right after it. A relay
 * answers a v1 register with error "version" (in a v1 message, so an old
 * sidecar can read it); a v1 relay refuses a v2 register outright.
 *
 * A sidecar that holds the lease on one tunnel adds more (protocol v2, a
 * register with "join"): the same register fields plus
 *   sidecar -> relay   "join":"L-..", "resume":"join_<resume token>"
 * The relay attaches the tunnel to that lease without giving it a new resume
 * token (the "lease" answer has "resume":""), and refuses with error
 * "join_refused". Every "lease" names its tunnel ("tunnel":N, relay-chosen,
 * nonzero); a join that replaces a tunnel the sidecar lost to the same relay
 * says "replaces":N, and the relay ends that tunnel first if it still has it
 * (its PING timeout not fired yet), so that its streams resume on the new one. The token hides behind TUN_CTL_JOIN_PREFIX so that a relay
 * that predates joins (it ignores "join") looks it up as a resume token,
 * finds none and answers "unknown_lease": it never resumes the lease, which
 * would give it a new token and close the sidecar's first tunnel.
 *   relay -> sidecar   {"v":1,"type":"error","code":"no_ports","message":".."}
 *   sidecar -> relay   {"v":1,"type":"release"}
 *   relay -> sidecar   {"v":1,"type":"released"}
 *   relay -> sidecar   {"v":1,"type":"drain"}
 *
 * This module does not touch sockets: it reads and writes evbuffers. */
#ifndef TUN_CTL_H
#define TUN_CTL_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define TUN_CTL_VERSION 2
#define TUN_CTL_STREAMS_MAX 1000000
#define TUN_CTL_MAX_DEFAULT (64 * 1024)
#define TUN_CTL_PATH "/sparkrelay/v1/control"

/* The ports a lease can hold, by the Spark setting they serve. */
enum tun_port_role {
	TUN_PORT_DRIVER = 0,       /* spark.driver.port */
	TUN_PORT_BLOCKMANAGER = 1, /* spark.driver.blockManager.port */
	TUN_PORT_UI = 2,           /* spark.ui.port */
	TUN_PORT_MAX = 3,
};
#define TUN_ROLE_BIT(r) (1u << (r))

enum tun_ctl_type {
	TUN_CTL_REGISTER = 1,
	TUN_CTL_LEASE,
	TUN_CTL_ERROR,
	TUN_CTL_RELEASE,
	TUN_CTL_RELEASED,
	TUN_CTL_DRAIN,
};

/* Field sizes bound what a peer can make us store. */
#define TUN_CTL_APP_MAX 128
#define TUN_CTL_TOKEN_MAX 256
#define TUN_CTL_RESUME_MAX 80
#define TUN_CTL_LEASE_MAX 48
#define TUN_CTL_HOST_MAX 256
#define TUN_CTL_CODE_MAX 32
#define TUN_CTL_TEXT_MAX 256

/* What each value may hold: the contract of both ends. The parser refuses
 * anything else (the message is a protocol error, never cleaned up), and the
 * encoder refuses to send it, so a value that passed here can go into a file,
 * a log line or a Spark setting without meaning more than it says.
 *
 *   lease id     "L-" then 1..45 of [A-Za-z0-9-]; the relay makes
 *                "L-<sequence>-<8 hex digits>". Also the sparkrelay-lease
 *                header of every executor stream.
 *   resume       0..79 of [A-Za-z0-9_-] (empty: none); the relay makes 64 hex
 *                digits.
 *   host         a DNS name or an IPv4/IPv6 literal without brackets
 *                (sr_valid_host): the advertised spark.driver.host.
 *   ports        1..65535 each, no two roles on the same port.
 *   ttl          0..TUN_CTL_TTL_MAX seconds.
 *   code         1..31 of [a-z0-9_].
 *   app          1..127 bytes of UTF-8 without control characters (C0, DEL,
 *                C1): the relay shows it in logs and in `ctl leases`.
 *   message      0..255 bytes of UTF-8: free text, escaped wherever shown.
 *   token        0..255 bytes of UTF-8: compared, never shown. */
#define TUN_CTL_LEASE_PREFIX "L-"
#define TUN_CTL_LEASE_EXTRA "-"   /* allowed besides ASCII letters and digits */
#define TUN_CTL_RESUME_EXTRA "_-" /* likewise */
#define TUN_CTL_TTL_MAX (7u * 24u * 3600u)
/* A join's "resume": this prefix, then the lease's resume token. */
#define TUN_CTL_JOIN_PREFIX "join_"

/* 1 if s is a lease id / a nonempty resume token / an error code as above. */
int tun_ctl_valid_lease_id(const char *s);
int tun_ctl_valid_resume(const char *s);
int tun_ctl_valid_code(const char *s);
int tun_ctl_valid_app(const char *s);
/* A join's proof for resume token: TUN_CTL_JOIN_PREFIX + token into out
 * (TUN_CTL_RESUME_MAX bytes). 0, or SR_EINVAL (no valid token, too long). */
int tun_ctl_join_proof(const char *token, char *out, size_t len);
/* The resume token inside a join's proof, or NULL if resume is not one. */
const char *tun_ctl_join_token(const char *resume);

struct tun_ctl_msg {
	enum tun_ctl_type type;
	/* register */
	char app[TUN_CTL_APP_MAX];
	unsigned roles; /* TUN_ROLE_BIT set; register: requested, lease: granted */
	char token[TUN_CTL_TOKEN_MAX];   /* bearer token, "" if none */
	char resume[TUN_CTL_RESUME_MAX]; /* register: token to resume, lease: new token */
	char join[TUN_CTL_LEASE_MAX];    /* register: the lease to join, "" if none */
	uint32_t replaces; /* register (a join): the tunnel it replaces, 0: none */
	uint32_t tunnel;   /* lease: this tunnel's id at the relay, 0: none (older relay) */
	/* lease; register with a resume (not a join): the lease it resumes, ""
	 * if not known (older sidecars never send it) */
	char lease[TUN_CTL_LEASE_MAX];
	char host[TUN_CTL_HOST_MAX];
	uint16_t ports[TUN_PORT_MAX]; /* by role; 0 = not granted */
	uint32_t ttl_s;
	uint32_t streams; /* lease, v2: resumed streams that follow */
	int v;            /* the message's version: parse sets it; encode uses it if set */
	/* error */
	char code[TUN_CTL_CODE_MAX];
	char message[TUN_CTL_TEXT_MAX];
};

/* "driver", "blockManager", "ui"; NULL for an unknown role. */
const char *tun_port_role_name(enum tun_port_role role);
/* Role for a name, or -1. */
int tun_port_role_from_name(const char *name);
const char *tun_ctl_type_name(enum tun_ctl_type type);

/* Parse one JSON object (the frame body). Unknown keys are ignored for
 * forward compatibility; missing required keys, wrong types, values over the
 * field sizes or outside their contract (above), or "v" != 1 are errors. The
 * error text never quotes a rejected value. Returns 0, SR_EPROTO, or SR_EVERSION;
 * on error a reason is written to err (may be NULL). */
int tun_ctl_parse(const void *body, size_t len, struct tun_ctl_msg *msg, char *err,
		  size_t errlen);

/* Append one framed message to out. Returns 0, SR_ENOMEM or SR_EINVAL (a
 * value the parser would refuse). */
int tun_ctl_encode(const struct tun_ctl_msg *msg, struct evbuffer *out);

/* Take one frame from in if complete. Returns 1 and drains it when a message
 * was parsed into msg, 0 when more bytes are needed, or a negative error
 * (SR_ETOOBIG when the length prefix exceeds max, SR_EPROTO, SR_EVERSION). */
int tun_ctl_decode(struct evbuffer *in, size_t max, struct tun_ctl_msg *msg, char *err,
		   size_t errlen);

#endif
