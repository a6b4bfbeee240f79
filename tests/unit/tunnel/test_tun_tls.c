/* tun_tls: the CN identity of a verified client certificate.
 *
 * A real TLS 1.3 handshake between tun_tls_server_ctx and tun_tls_client_ctx
 * over an in-memory BIO pair; the client certificates are signed at test
 * time by a development CA (sr_devcert) with subjects built byte by byte, so
 * a CN can carry what a hostile CA-issued certificate could: an embedded
 * NUL, control bytes, 200 bytes, a BMPString, two CN entries. The relay
 * keeps the identity in a 160-byte buffer. (A CN whose text does not
 * convert to UTF-8 is refused too, but OpenSSL 3 neither encodes nor parses
 * such a name, so no certificate can carry one here.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/sr_devcert.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "tunnel/tun_tls.h"
#include "tests/support/ts_pki.h"

#define IDENTITY_LEN 160 /* the relay's buffer */

struct pki {
	struct ts_pki f; /* also holds client.pem and client.key of make_client */
	X509 *ca_cert;
	EVP_PKEY *ca_key;
};

static struct pki pki;

static int setup(void **state)
{
	(void)state;
	ts_pki_make(&pki.f, "tun-tls");
	pki.ca_cert = ts_read_cert(pki.f.ca);
	pki.ca_key = ts_read_key(pki.f.ca_key);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	ts_pki_remove(&pki.f);
	X509_free(pki.ca_cert);
	EVP_PKEY_free(pki.ca_key);
	return 0;
}

/* One CN entry as raw bytes of an ASN.1 string type (no conversion, no
 * length bound: what a certificate on the wire may hold). */
struct cn {
	int type; /* V_ASN1_UTF8STRING, V_ASN1_BMPSTRING, ... */
	const char *bytes;
	int len;
};

/* Writes dir/client.pem and dir/client.key: a client certificate signed by
 * the CA whose subject is O=test plus the given CN entries. */
static void make_client(const struct cn *cns, size_t ncn)
{
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_NAME *name = X509_get_subject_name(x);
	char path[TS_PKI_PATH];
	FILE *f;

	assert_non_null(key);
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
						    (const unsigned char *)"test", -1, -1, 0),
			 1);
	for (size_t i = 0; i < ncn; i++)
		assert_int_equal(X509_NAME_add_entry_by_NID(name, NID_commonName, cns[i].type,
							    (const unsigned char *)cns[i].bytes,
							    cns[i].len, -1, 0),
				 1);
	assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(pki.ca_cert)), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	assert_true(X509_sign(x, pki.ca_key, EVP_sha256()) > 0);

	ts_dir_file(&pki.f.dir, "client.pem", path, sizeof(path));
	assert_non_null(f = fopen(path, "w"));
	assert_int_equal(PEM_write_X509(f, x), 1);
	fclose(f);
	ts_dir_file(&pki.f.dir, "client.key", path, sizeof(path));
	assert_non_null(f = fopen(path, "w"));
	assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(key);
}

/* Handshake the test client against the relay's server context and read the
 * CN identity the relay would see. Returns tun_tls_peer_name's result. */
static int peer_name_of_client(char *buf, size_t len)
{
	char err[512], cpem[TS_PKI_PATH], ckey[TS_PKI_PATH];
	SSL_CTX *sctx, *cctx;
	SSL *srv, *cli;
	BIO *sb, *cb;
	int sdone = 0, cdone = 0, rc;

	ts_dir_file(&pki.f.dir, "client.pem", cpem, sizeof(cpem));
	ts_dir_file(&pki.f.dir, "client.key", ckey, sizeof(ckey));
	sctx = tun_tls_server_ctx(pki.f.relay_pem, pki.f.relay_key, pki.f.ca, 1, err,
				  sizeof(err));
	if (!sctx)
		fail_msg("server ctx: %s", err);
	cctx = tun_tls_client_ctx(pki.f.ca, cpem, ckey, err, sizeof(err));
	if (!cctx)
		fail_msg("client ctx: %s", err);
	srv = SSL_new(sctx);
	cli = SSL_new(cctx);
	assert_non_null(srv);
	assert_non_null(cli);
	assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	SSL_set_bio(srv, sb, sb);
	SSL_set_bio(cli, cb, cb);
	SSL_set_accept_state(srv);
	SSL_set_connect_state(cli);
	for (int i = 0; i < 100 && !(sdone && cdone); i++) {
		if (!cdone) {
			int r = SSL_do_handshake(cli);
			if (r == 1)
				cdone = 1;
			else if (SSL_get_error(cli, r) != SSL_ERROR_WANT_READ)
				fail_msg("client handshake failed");
		}
		if (!sdone) {
			int r = SSL_do_handshake(srv);
			if (r == 1)
				sdone = 1;
			else if (SSL_get_error(srv, r) != SSL_ERROR_WANT_READ)
				fail_msg("server handshake failed");
		}
	}
	assert_true(sdone && cdone);
	assert_int_equal(SSL_get_verify_result(srv), X509_V_OK);
	memset(buf, 'Z', len);
	rc = tun_tls_peer_name(srv, buf, len);
	SSL_free(cli);
	SSL_free(srv);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	ERR_clear_error();
	return rc;
}

static void assert_identity(const struct cn *cns, size_t ncn, int want_rc, const char *want)
{
	char buf[IDENTITY_LEN];

	make_client(cns, ncn);
	assert_int_equal(peer_name_of_client(buf, sizeof(buf)), want_rc);
	assert_string_equal(buf, want);
}

static void test_plain_cn_is_the_identity(void **state)
{
	const struct cn cn = {V_ASN1_UTF8STRING, "sidecar-alice", 13};

	(void)state;
	assert_identity(&cn, 1, 0, "sidecar-alice");
}

static void test_no_cn_is_no_identity(void **state)
{
	(void)state;
	assert_identity(NULL, 0, 0, "");
}

/* "alice\0.evil": get_text_by_NID gave "alice", another tenant's name. */
static void test_embedded_nul_is_refused(void **state)
{
	const struct cn cn = {V_ASN1_UTF8STRING, "alice\0.evil", 11};

	(void)state;
	assert_identity(&cn, 1, SR_EINVAL, "");
}

static void test_control_byte_is_refused(void **state)
{
	const struct cn cn = {V_ASN1_UTF8STRING, "alice\x1b[2J", 9};

	(void)state;
	assert_identity(&cn, 1, SR_EINVAL, "");
}

/* A CN that does not fit was cut to its first 159 bytes: a prefix could be
 * someone else's identity. Exactly 159 bytes still fits. */
static void test_over_long_cn_is_refused(void **state)
{
	char longname[201];
	struct cn cn = {V_ASN1_UTF8STRING, longname, 200};
	char want[IDENTITY_LEN];

	(void)state;
	memset(longname, 'a', sizeof(longname) - 1);
	longname[200] = '\0';
	assert_identity(&cn, 1, SR_EINVAL, "");
	cn.len = IDENTITY_LEN;
	assert_identity(&cn, 1, SR_EINVAL, "");
	cn.len = IDENTITY_LEN - 1;
	memset(want, 'a', IDENTITY_LEN - 1);
	want[IDENTITY_LEN - 1] = '\0';
	assert_identity(&cn, 1, 0, want);
}

/* A BMPString is UTF-16: its raw bytes start with a NUL ("" before). The
 * identity is its UTF-8 text. */
static void test_bmpstring_is_converted_to_utf8(void **state)
{
	const struct cn cn = {V_ASN1_BMPSTRING, "\0h\0\xe9\0l\0l\0o", 10};

	(void)state;
	assert_identity(&cn, 1, 0, "h\xc3\xa9llo");
}

static void test_two_cns_are_refused(void **state)
{
	const struct cn cns[] = {{V_ASN1_UTF8STRING, "alice", 5},
				 {V_ASN1_UTF8STRING, "bob", 3}};

	(void)state;
	assert_identity(cns, 2, SR_EINVAL, "");
}

/* OpenSSL opens these files by name, on the relay's event loop when it
 * reloads: a FIFO blocked it there for every tunnel. Refused at once
 * (alarm: a hang fails the test). */
static void test_a_fifo_is_refused(void **state)
{
	char fifo[192], err[512];

	(void)state;
	ts_dir_file(&pki.f.dir, "fifo.pem", fifo, sizeof(fifo));
	assert_int_equal(mkfifo(fifo, 0600), 0);
	alarm(10);
	assert_null(tun_tls_server_ctx(fifo, pki.f.relay_key, NULL, 0, err, sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));
	assert_null(tun_tls_server_ctx(pki.f.relay_pem, fifo, NULL, 0, err, sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));
	assert_null(tun_tls_server_ctx(pki.f.relay_pem, pki.f.relay_key, fifo, 1, err,
				       sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));
	assert_null(tun_tls_client_ctx(fifo, NULL, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "not a regular file"));
	alarm(0);
	unlink(fifo);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain_cn_is_the_identity),
	    cmocka_unit_test(test_no_cn_is_no_identity),
	    cmocka_unit_test(test_embedded_nul_is_refused),
	    cmocka_unit_test(test_control_byte_is_refused),
	    cmocka_unit_test(test_over_long_cn_is_refused),
	    cmocka_unit_test(test_bmpstring_is_converted_to_utf8),
	    cmocka_unit_test(test_two_cns_are_refused),
	    cmocka_unit_test(test_a_fifo_is_refused),
	};

	if (!getenv("SR_TEST_LOG"))
		sr_log_set_level(SR_LOG_ERROR);
	return cmocka_run_group_tests(tests, setup, teardown);
}
