#include "tunnel/tun_tls.h"
#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_log.h"
#include "common/sr_text.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

static const unsigned char alpn_wire[] = "\x02h2";

/* Bytes of a refused CN shown in the log. */
#define TUN_TLS_CN_SHOW 64

char *tun_tls_errors(char *buf, size_t len)
{
	unsigned long e;
	size_t n = 0;

	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		char one[256];
		ERR_error_string_n(e, one, sizeof(one));
		if (n < len) {
			int m = snprintf(buf + n, len - n, "%s%s", n ? "; " : "", one);
			if (m > 0)
				n += (size_t)m;
		}
	}
	if (n == 0)
		snprintf(buf, len, "no OpenSSL error recorded");
	return buf;
}

/* The path and OpenSSL's text (which may quote it) are escaped: both end
 * up in the log and in the admin API's answer to a reload. */
static void set_err(char *err, size_t errlen, const char *what, const char *file)
{
	char ssl[512], essl[SR_ESC_SIZE(511)], esc[SR_ESC_SIZE(64)];

	tun_tls_errors(ssl, sizeof(ssl));
	sr_seterr(err, errlen, "%s%s%s: %s", what, file ? " " : "",
		  file ? sr_esc_n(file, 64, esc, sizeof(esc)) : "",
		  sr_esc(ssl, essl, sizeof(essl)));
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, alpn_wire, sizeof(alpn_wire) - 1, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL; /* only h2 is spoken here */
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *ctx_common(const SSL_METHOD *m, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(m);
	if (!ctx) {
		set_err(err, errlen, "SSL_CTX_new", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	/* AES-128-GCM first (OpenSSL prefers AES-256): the same strength class
	 * as ssh's aes128-gcm, and about a third less CPU per byte. */
	if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
					  "TLS_CHACHA20_POLY1305_SHA256") != 1) {
		set_err(err, errlen, "SSL_CTX_set_ciphersuites", NULL);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Session tickets would let a stolen ticket skip client-cert checks on
	 * resumption; reconnects are rare enough to afford full handshakes. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_num_tickets(ctx, 0);
	return ctx;
}

/* OpenSSL opens the files by name as the relay or the sidecar starts: a
 * FIFO there would hang it without a word, a device be read without end. */
static int file_ok(const char *what, const char *path, char *err, size_t errlen)
{
	char why[128], esc[SR_ESC_SIZE(64)];

	if (sr_file_check(path, SR_FILE_PEM_MAX, why, sizeof(why)) == 0)
		return 1;
	sr_seterr(err, errlen, "%s %s: %s", what, sr_esc_n(path, 64, esc, sizeof(esc)), why);
	return 0;
}

static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err,
		     size_t errlen)
{
	if (!file_ok("cannot load certificate", cert, err, errlen) ||
	    !file_ok("cannot load private key", key, err, errlen))
		return SR_ETLS;
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		set_err(err, errlen, "cannot load certificate", cert);
		return SR_ETLS;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		set_err(err, errlen, "cannot load private key", key);
		return SR_ETLS;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		set_err(err, errlen, "private key does not match certificate", key);
		return SR_ETLS;
	}
	return 0;
}

SSL_CTX *tun_tls_server_ctx(const char *cert_file, const char *key_file,
			    const char *client_ca, int require_client_cert, char *err,
			    size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_server_method(), err, errlen);
	if (!ctx)
		return NULL;
	if (load_pair(ctx, cert_file, key_file, err, errlen) != 0)
		goto fail;
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	if (client_ca && *client_ca) {
		STACK_OF(X509_NAME) *names;
		if (!file_ok("cannot load client CA", client_ca, err, errlen))
			goto fail;
		if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
			set_err(err, errlen, "cannot load client CA", client_ca);
			goto fail;
		}
		names = SSL_load_client_CA_file(client_ca);
		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx,
				   SSL_VERIFY_PEER |
					   (require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
				   NULL);
	} else if (require_client_cert) {
		sr_seterr(err, errlen, "require_client_cert needs a client CA file");
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tun_tls_client_ctx(const char *ca_file, const char *cert_file, const char *key_file,
			    char *err, size_t errlen)
{
	SSL_CTX *ctx;

	if (!ca_file || !*ca_file) {
		sr_seterr(err, errlen, "a CA file to verify the relay is required");
		return NULL;
	}
	ctx = ctx_common(TLS_client_method(), err, errlen);
	if (!ctx)
		return NULL;
	if (!file_ok("cannot load CA file", ca_file, err, errlen))
		goto fail;
	if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
		set_err(err, errlen, "cannot load CA file", ca_file);
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if ((cert_file && *cert_file) != (key_file && *key_file)) {
		sr_seterr(err, errlen, "client certificate and key must be given together");
		goto fail;
	}
	if (cert_file && *cert_file && load_pair(ctx, cert_file, key_file, err, errlen) != 0)
		goto fail;
	if (SSL_CTX_set_alpn_protos(ctx, alpn_wire, sizeof(alpn_wire) - 1) != 0) {
		set_err(err, errlen, "SSL_CTX_set_alpn_protos", NULL);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

int tun_tls_check_alpn(SSL *ssl)
{
	const unsigned char *p = NULL;
	unsigned int n = 0;
	SSL_get0_alpn_selected(ssl, &p, &n);
	return (n == 2 && memcmp(p, "h2", 2) == 0) ? 0 : SR_EPROTO;
}

size_t tun_tls_peer_sans(SSL *ssl, char (*out)[256], size_t max)
{
	X509 *peer = SSL_get0_peer_certificate(ssl);
	GENERAL_NAMES *names;
	size_t n = 0;

	if (!peer || SSL_get_verify_result(ssl) != X509_V_OK)
		return 0;
	names = X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
	if (!names)
		return 0;
	for (int i = 0; i < sk_GENERAL_NAME_num(names) && n < max; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
		const ASN1_IA5STRING *v;
		if (g->type == GEN_DNS)
			v = g->d.dNSName;
		else if (g->type == GEN_URI)
			v = g->d.uniformResourceIdentifier;
		else
			continue;
		/* Embedded NULs would let a name pose as another: skip them. */
		if ((size_t)v->length >= sizeof(out[0]) ||
		    memchr(v->data, '\0', (size_t)v->length))
			continue;
		memcpy(out[n], v->data, (size_t)v->length);
		out[n][v->length] = '\0';
		n++;
	}
	GENERAL_NAMES_free(names);
	return n;
}

/* Why the CN entry of subj cannot name the peer, or NULL with its UTF-8
 * text in *utf8 (OPENSSL_free) and length in *n. X509_NAME_get_text_by_NID
 * copied the raw bytes and cut them at the buffer, so "alice\0x" became
 * "alice", a 200-byte CN its first 159 bytes, and a BMPString its UTF-16. */
static const char *cn_refusal(const X509_NAME *subj, int idx, unsigned char **utf8, int *n)
{
	const ASN1_STRING *cn;

	/* two CNs: which one is the identity depends on who reads it */
	if (X509_NAME_get_index_by_NID(subj, NID_commonName, idx) >= 0)
		return "more than one CN";
	cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
	if (!cn)
		return "no CN data";
	*n = ASN1_STRING_to_UTF8(utf8, cn);
	if (*n < 0) {
		*utf8 = NULL;
		return "not convertible to UTF-8";
	}
	if (memchr(*utf8, '\0', (size_t)*n))
		return "embedded NUL";
	return sr_text_problem((const char *)*utf8); /* ASN1_STRING_to_UTF8 ends it */
}

int tun_tls_peer_name(SSL *ssl, char *buf, size_t len)
{
	X509 *peer = SSL_get0_peer_certificate(ssl);
	const X509_NAME *subj;
	unsigned char *utf8 = NULL;
	const char *why;
	int idx, n = 0;

	buf[0] = '\0';
	if (!peer || SSL_get_verify_result(ssl) != X509_V_OK)
		return 0;
	subj = X509_get_subject_name(peer);
	idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
	if (idx < 0)
		return 0;
	why = cn_refusal(subj, idx, &utf8, &n);
	if (!why && (size_t)n >= len)
		why = "too long";
	if (why) {
		char shown[SR_ESC_SIZE(TUN_TLS_CN_SHOW)];

		sr_esc_n(utf8 ? (const char *)utf8 : "", TUN_TLS_CN_SHOW, shown, sizeof(shown));
		SR_WARN("tls", "peer certificate CN refused (%s, %d bytes): \"%s\"; the peer has "
			       "no CN identity",
			why, n, shown);
		OPENSSL_free(utf8);
		ERR_clear_error();
		return SR_EINVAL;
	}
	memcpy(buf, utf8, (size_t)n);
	buf[n] = '\0';
	OPENSSL_free(utf8);
	return 0;
}
