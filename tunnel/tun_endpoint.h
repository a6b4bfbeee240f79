/* One end of a tunnel: the TCP socket, its TLS session and the HTTP/2
 * session (tun_conn) on top, as one object with one owner, for both roles.
 *
 *   relay:   accepted fd --TLS server--> tun_conn (TUN_ROLE_RELAY)
 *   sidecar: connecting fd --TLS client--> tun_conn (TUN_ROLE_SIDECAR)
 *   tests:   any connected fd, no TLS --> tun_conn (either role)
 *
 * Why not bufferevent_openssl: in libevent 2.1 it decrypts one TLS record
 * per loop iteration (two read syscalls and an epoll round each) and writes
 * each record with its own write syscall. Here the socket is read and written
 * in large chunks (many records per syscall), OpenSSL works on memory
 * buffers, and decrypted bytes go straight into the HTTP/2 parser.
 *
 * After the handshake the endpoint checks ALPN "h2", records the peer's
 * certificate identity, creates the session and calls on_up; the owner then
 * uses tun_endpoint_conn() for everything HTTP/2. Whatever ends the
 * endpoint (connect or handshake failure, timeout, transport error, the
 * session closing) is reported once through on_closed, always from an event
 * of its own, where the owner may call tun_endpoint_free(). */
#ifndef TUN_ENDPOINT_H
#define TUN_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "tunnel/tun_conn.h"

struct event_base;
struct tun_endpoint;

#define TUN_EP_MAX_SANS 8

struct tun_endpoint_cbs {
	/* Handshake done, ALPN and identity checked; tun_endpoint_conn() is
	 * valid from here on. The session starts right after this returns. */
	void (*on_up)(struct tun_endpoint *ep, void *arg);
	/* The endpoint is over. err is 0 or an SR_E* code; why is the transport's
	 * reason ("" if the session ended on its own: it logged why). */
	void (*on_closed)(struct tun_endpoint *ep, int err, const char *why, void *arg);
};

struct tun_endpoint_opts {
	enum tun_role role;
	/* NULL: plain TCP without TLS (tests, fuzzers). Otherwise stolen: a new
	 * SSL for this connection, verification parameters already set. */
	SSL *ssl;
	int connecting;             /* a non-blocking connect() is in progress on fd */
	uint32_t handshake_timeout_ms; /* connect plus TLS; 0 = no limit here */
	const struct tun_conn_opts *conn;
	/* The session's callbacks, called with the endpoint's arg. on_output
	 * and on_closed are the endpoint's own and are ignored here. */
	const struct tun_conn_cbs *conn_cbs;
	const char *logctx;
};

/* Steals fd (non-blocking) and o->ssl in every case. Never calls back before
 * it returns. Returns NULL on allocation failure. */
struct tun_endpoint *tun_endpoint_new(struct event_base *base, int fd,
				      const struct tun_endpoint_opts *o,
				      const struct tun_endpoint_cbs *cbs, void *arg);
/* Frees the session first, then sends what it left queued and a TLS
 * close_notify (one non-blocking attempt), then closes the socket. */
void tun_endpoint_free(struct tun_endpoint *ep);

/* The session; NULL before on_up. */
struct tun_conn *tun_endpoint_conn(const struct tun_endpoint *ep);
/* Verified peer certificate: subject CN ("" if none) and DNS/URI SANs. */
const char *tun_endpoint_peer_cn(const struct tun_endpoint *ep);
size_t tun_endpoint_peer_sans(const struct tun_endpoint *ep, const char *out[TUN_EP_MAX_SANS]);

#endif
