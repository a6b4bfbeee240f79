/* TLS contexts for the tunnel: TLS 1.3 only, ALPN "h2", verification on. */
#ifndef TUN_TLS_H
#define TUN_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#define TUN_ALPN "h2"

/* Relay side. client_ca may be NULL (no client certificates asked). With
 * require_client_cert a sidecar without a verified certificate fails the
 * handshake. Returns NULL with a reason in err. */
SSL_CTX *tun_tls_server_ctx(const char *cert_file, const char *key_file,
			    const char *client_ca, int require_client_cert, char *err,
			    size_t errlen);

/* Sidecar side. ca_file is required; cert/key are optional (both or none). */
SSL_CTX *tun_tls_client_ctx(const char *ca_file, const char *cert_file,
			    const char *key_file, char *err, size_t errlen);

/* After the handshake: 0 if ALPN chose "h2", SR_EPROTO otherwise. */
int tun_tls_check_alpn(SSL *ssl);

/* Subject CN of the verified peer certificate, as UTF-8, into buf; "" if
 * none. A CN that cannot name the peer exactly is refused: more than one CN,
 * a string that does not convert to UTF-8, an embedded NUL or other control
 * byte, or len bytes or more (it would be cut). A refusal is logged and
 * leaves buf "" (no CN identity). Returns 0, or SR_EINVAL when refused. */
int tun_tls_peer_name(SSL *ssl, char *buf, size_t len);

/* DNS and URI subject alternative names of the verified peer certificate,
 * up to max of them, each NUL-terminated in out[i] (len bytes). Returns the
 * count (0 if none or not verified). */
size_t tun_tls_peer_sans(SSL *ssl, char (*out)[256], size_t max);

/* Drain OpenSSL's error queue into buf as one line; returns buf. */
char *tun_tls_errors(char *buf, size_t len);

#endif
