/* TLS over a TCP socket with memory BIOs, for the tunnel.
 *
 * Why not bufferevent_openssl: in libevent 2.1 it decrypts one TLS record
 * per loop iteration (two read syscalls and an epoll round each) and writes
 * each record with its own write syscall. Here the socket is read and
 * written in large chunks (many records per syscall) and OpenSSL works on
 * memory buffers.
 *
 * The plaintext side is one end of a bufferevent pair (callbacks not
 * deferred: data reaches tun_conn in the same loop iteration), which the owner
 * hands to tun_conn_new() once the handshake is done; transport EOF and
 * errors arrive there as BEV_EVENT_EOF / BEV_EVENT_ERROR. The owner frees
 * the tun_conn (and with it that end) before it frees this object. */
#ifndef TUN_TLS_IO_H
#define TUN_TLS_IO_H

#include <stddef.h>

#include <openssl/ssl.h>

struct bufferevent;
struct event_base;
struct tun_tls_io;

/* Handshake result: err 0 on success, else a negative SR_E* with a reason.
 * Called once; the owner may free io inside it. */
typedef void (*tun_tls_io_cb)(struct tun_tls_io *io, int err, const char *why, void *arg);

/* Steals fd (non-blocking) and ssl in every case. connecting: a connect()
 * is in progress on fd (client side); the handshake starts when it is done.
 * server selects the accept role. Returns NULL on allocation failure. */
struct tun_tls_io *tun_tls_io_new(struct event_base *base, int fd, SSL *ssl, int server,
				  int connecting, tun_tls_io_cb cb, void *arg);
/* Best effort: sends what is queued and a close_notify, then closes. */
void tun_tls_io_free(struct tun_tls_io *io);

/* After a successful handshake: the plaintext bufferevent. The caller takes
 * ownership (tun_conn_new frees it); call once. */
struct bufferevent *tun_tls_io_take_bev(struct tun_tls_io *io);
SSL *tun_tls_io_ssl(struct tun_tls_io *io);
int tun_tls_io_fd(const struct tun_tls_io *io);
/* The reason of the last transport failure, "" if none. */
const char *tun_tls_io_error(const struct tun_tls_io *io);

#endif
