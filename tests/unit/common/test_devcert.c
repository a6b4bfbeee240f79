/* sr_devcert: the generated PKI verifies with OpenSSL, names and usages are
 * right, keys match and are private. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/sr_devcert.h"
#include "common/sr_err.h"
#include "common/sr_util.h"
#include "tests/support/ts_pki.h"
#include "tests/support/ts_sys.h"

static const char *const files[] = {"ca.pem",	 "ca.key",	"relay.pem",
				    "relay.key", "sidecar.pem", "sidecar.key"};

/* Removes the files sr_devcert_write makes; anything else left in the
 * folder is a temporary file it left behind, and fails the test. */
static void dir_remove(struct ts_dir *d)
{
	char p[192];

	for (size_t i = 0; i < SR_ARRAY_LEN(files); i++) {
		ts_dir_file(d, files[i], p, sizeof(p));
		unlink(p);
	}
	assert_int_equal(ts_dir_count(d), 0);
	ts_dir_remove(d);
}

static X509 *load_cert(const struct ts_dir *d, const char *name)
{
	char p[192];

	ts_dir_file(d, name, p, sizeof(p));
	return ts_read_cert(p);
}

static EVP_PKEY *load_key(const struct ts_dir *d, const char *name)
{
	char p[192];

	ts_dir_file(d, name, p, sizeof(p));
	return ts_read_key(p);
}

static unsigned file_mode(const struct ts_dir *d, const char *name)
{
	char p[192];
	struct stat st;

	ts_dir_file(d, name, p, sizeof(p));
	assert_int_equal(stat(p, &st), 0);
	return st.st_mode & 07777;
}

/* X509_verify_cert of leaf against ca alone, for an SSL purpose. Returns the
 * X509_V_* result (X509_V_OK on success). */
static int verify(X509 *ca, X509 *leaf, int purpose)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int ok, res;

	assert_non_null(store);
	assert_non_null(ctx);
	assert_int_equal(X509_STORE_add_cert(store, ca), 1);
	assert_int_equal(X509_STORE_CTX_init(ctx, store, leaf, NULL), 1);
	assert_int_equal(X509_STORE_CTX_set_purpose(ctx, purpose), 1);
	ok = X509_verify_cert(ctx);
	res = X509_STORE_CTX_get_error(ctx);
	assert_true((ok == 1) == (res == X509_V_OK));
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	return res;
}

static void assert_cn(X509 *x, const char *want)
{
	char cn[128];

	assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
					      sizeof(cn)) > 0);
	assert_string_equal(cn, want);
}

static void test_devcert_chain_names_keys(void **state)
{
	static const char *const extra[] = {"relay.example.test", "10.1.2.3", "fd00::7", NULL};
	struct ts_dir d, other;
	char err[256] = "";
	X509 *ca, *relay, *sidecar, *other_ca;
	EVP_PKEY *k;

	umask(022);
	ts_dir_make(&d, "devcert");
	if (sr_devcert_write(d.path, extra, 2, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write: %s", err);

	ca = load_cert(&d, "ca.pem");
	relay = load_cert(&d, "relay.pem");
	sidecar = load_cert(&d, "sidecar.pem");

	/* Chain and purposes: relay is a server, sidecar a client, not vice versa. */
	assert_int_equal(X509_check_ca(ca), 1);
	assert_int_equal(X509_check_ca(relay), 0);
	assert_int_equal(X509_check_ca(sidecar), 0);
	assert_int_equal(verify(ca, relay, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	assert_int_equal(verify(ca, sidecar, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_not_equal(verify(ca, relay, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_not_equal(verify(ca, sidecar, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	/* A leaf is not its own trust anchor. */
	assert_int_not_equal(verify(relay, sidecar, X509_PURPOSE_SSL_CLIENT), X509_V_OK);

	assert_cn(relay, "sparkrelay-relay");
	assert_cn(sidecar, "sparkrelay-sidecar");

	/* Names on the relay certificate. */
	assert_int_equal(X509_check_host(relay, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(relay, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_ip_asc(relay, "127.0.0.2", 0), 1);
	assert_int_equal(X509_check_ip_asc(relay, "127.0.0.3", 0), 1);
	assert_int_equal(X509_check_ip_asc(relay, "::1", 0), 1);
	assert_int_equal(X509_check_host(relay, "relay.example.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(relay, "10.1.2.3", 0), 1);
	assert_int_equal(X509_check_ip_asc(relay, "fd00::7", 0), 1);
	assert_int_equal(X509_check_host(relay, "evil.example.test", 0, 0, NULL), 0);
	assert_int_equal(X509_check_ip_asc(relay, "127.0.0.4", 0), 0);
	/* An IP literal goes in as IP:, not DNS:. */
	assert_int_equal(X509_check_host(relay, "10.1.2.3", 0, 0, NULL), 0);

	/* Validity: starts in the past, ends after about `days`. */
	assert_true(X509_cmp_current_time(X509_get0_notBefore(relay)) < 0);
	assert_true(X509_cmp_time(X509_get0_notAfter(relay), NULL) > 0);
	{
		time_t t = time(NULL) + 2 * 86400 + 600;
		assert_true(X509_cmp_time(X509_get0_notAfter(relay), &t) < 0);
		t = time(NULL) + 2 * 86400 - 600;
		assert_true(X509_cmp_time(X509_get0_notAfter(relay), &t) > 0);
	}

	/* Keys match their certificates and no other. */
	k = load_key(&d, "ca.key");
	assert_int_equal(X509_check_private_key(ca, k), 1);
	assert_int_equal(X509_check_private_key(relay, k), 0);
	EVP_PKEY_free(k);
	k = load_key(&d, "relay.key");
	assert_int_equal(X509_check_private_key(relay, k), 1);
	assert_int_equal(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
	assert_int_equal(EVP_PKEY_get_bits(k), 256);
	EVP_PKEY_free(k);
	k = load_key(&d, "sidecar.key");
	assert_int_equal(X509_check_private_key(sidecar, k), 1);
	EVP_PKEY_free(k);
	ERR_clear_error();

	/* Modes. */
	assert_int_equal(file_mode(&d, "ca.key"), 0600);
	assert_int_equal(file_mode(&d, "relay.key"), 0600);
	assert_int_equal(file_mode(&d, "sidecar.key"), 0600);
	assert_int_equal(file_mode(&d, "ca.pem"), 0644);
	assert_int_equal(file_mode(&d, "relay.pem"), 0644);

	/* Serials are random: two runs give distinct CAs that do not trust
	 * each other's leaves. */
	ts_dir_make(&other, "devcert");
	assert_int_equal(sr_devcert_write(other.path, NULL, 1, err, sizeof(err)), 0);
	other_ca = load_cert(&other, "ca.pem");
	assert_int_not_equal(
	    ASN1_INTEGER_cmp(X509_get0_serialNumber(ca), X509_get0_serialNumber(other_ca)), 0);
	assert_int_not_equal(
	    ASN1_INTEGER_cmp(X509_get0_serialNumber(relay), X509_get0_serialNumber(sidecar)),
	    0);
	assert_int_not_equal(verify(other_ca, relay, X509_PURPOSE_SSL_SERVER), X509_V_OK);

	X509_free(other_ca);
	X509_free(sidecar);
	X509_free(relay);
	X509_free(ca);
	dir_remove(&other);
	dir_remove(&d);
}

/* A key file left behind with a loose mode is tightened on rewrite. */
static void test_devcert_rewrite_tightens_key_mode(void **state)
{
	struct ts_dir d;
	char p[128], err[256] = "";
	FILE *fp;

	ts_dir_make(&d, "devcert");
	ts_dir_file(&d, "relay.key", p, sizeof(p));
	fp = fopen(p, "w");
	assert_non_null(fp);
	fputs("old", fp);
	fclose(fp);
	assert_int_equal(chmod(p, 0666), 0);
	assert_int_equal(sr_devcert_write(d.path, NULL, 1, err, sizeof(err)), 0);
	assert_int_equal(file_mode(&d, "relay.key"), 0600);
	EVP_PKEY_free(load_key(&d, "relay.key"));
	dir_remove(&d);
}

static void assert_text(const char *path, const char *text)
{
	char *got = ts_read_file(path, NULL);

	assert_string_equal(got, text);
	free(got);
}

/* gen-certs run as root in a folder other users can write: a file planted
 * under a key's name (owned by another user, readable by them) must not
 * receive the key, and a planted symlink must not redirect it. The names
 * end up as new files of ours with the right modes, and nothing else in
 * the folder (the planted inode, the symlink's target) is written. */
static void test_devcert_planted_file_and_symlink_are_replaced(void **state)
{
	struct ts_dir d;
	char planted[128], keep[128], lnk[128], victim[128], p[128], err[256] = "";
	struct stat st;

	ts_dir_make(&d, "devcert");
	/* ca.key: a file someone else made, world-readable; "keep" is a second
	 * name for the same inode, as an open descriptor would be */
	ts_dir_file(&d, "ca.key", planted, sizeof(planted));
	ts_dir_file(&d, "keep", keep, sizeof(keep));
	ts_write_file(planted, "planted");
	assert_int_equal(chmod(planted, 0644), 0);
	assert_int_equal(link(planted, keep), 0);
	if (geteuid() == 0)
		assert_int_equal(chown(planted, 65534, 65534), 0);
	/* relay.key: a symlink to a file of the victim's */
	ts_dir_file(&d, "relay.key", lnk, sizeof(lnk));
	ts_dir_file(&d, "victim", victim, sizeof(victim));
	ts_write_file(victim, "victim");
	assert_int_equal(symlink(victim, lnk), 0);
	/* ca.pem: a dangling symlink (O_CREAT would create its target) */
	ts_dir_file(&d, "ca.pem", p, sizeof(p));
	assert_int_equal(symlink("/tmp/sr_devcert_dangling_target", p), 0);

	if (sr_devcert_write(d.path, NULL, 1, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write: %s", err);

	assert_text(keep, "planted");
	assert_text(victim, "victim");
	assert_int_not_equal(access("/tmp/sr_devcert_dangling_target", F_OK), 0);
	for (size_t i = 0; i < SR_ARRAY_LEN(files); i++) {
		ts_dir_file(&d, files[i], p, sizeof(p));
		assert_int_equal(lstat(p, &st), 0);
		assert_true(S_ISREG(st.st_mode));
		assert_int_equal(st.st_uid, geteuid());
		assert_int_equal(st.st_nlink, 1);
	}
	assert_int_equal(file_mode(&d, "ca.key"), 0600);
	assert_int_equal(file_mode(&d, "relay.key"), 0600);
	EVP_PKEY_free(load_key(&d, "ca.key"));
	EVP_PKEY_free(load_key(&d, "relay.key"));
	X509_free(load_cert(&d, "ca.pem"));
	unlink(keep);
	unlink(victim);
	dir_remove(&d); /* fails if a temporary file was left behind */
}

static void test_devcert_unwritable_dir(void **state)
{
	struct ts_dir d;
	char p[128], err[256] = "";

	ts_dir_make(&d, "devcert");
	/* Missing directory (the test may run as root, so a read-only one
	 * would not stop us). */
	ts_dir_file(&d, "missing", p, sizeof(p));
	assert_true(sr_devcert_write(p, NULL, 1, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, p));
	assert_non_null(strstr(err, "No such file"));

	/* A path that is a file, not a directory. */
	ts_dir_file(&d, "ca.pem", p, sizeof(p));
	fclose(fopen(p, "w"));
	err[0] = '\0';
	assert_true(sr_devcert_write(p, NULL, 1, err, sizeof(err)) < 0);
	assert_true(strlen(err) > 0);

	if (geteuid() != 0) {
		assert_int_equal(chmod(d.path, 0500), 0);
		err[0] = '\0';
		assert_int_equal(sr_devcert_write(d.path, NULL, 1, err, sizeof(err)), SR_EIO);
		assert_non_null(strstr(err, "Permission denied"));
		assert_int_equal(chmod(d.path, 0700), 0);
	}
	dir_remove(&d);
}

static void test_devcert_bad_arguments(void **state)
{
	static const char *const comma[] = {"ok.example", "a.example,DNS:evil.example", NULL};
	static const char *const space[] = {"has space", NULL};
	static const char *const empty[] = {"", NULL};
	struct ts_dir d;
	char p[128], err[256] = "";

	ts_dir_make(&d, "devcert");
	assert_int_equal(sr_devcert_write(d.path, comma, 1, err, sizeof(err)), SR_EINVAL);
	assert_non_null(strstr(err, "a.example,DNS:evil.example"));
	assert_int_equal(sr_devcert_write(d.path, space, 1, err, sizeof(err)), SR_EINVAL);
	assert_int_equal(sr_devcert_write(d.path, empty, 1, err, sizeof(err)), SR_EINVAL);
	err[0] = '\0';
	assert_int_equal(sr_devcert_write(d.path, NULL, 0, err, sizeof(err)), SR_EINVAL);
	assert_true(strlen(err) > 0);
	/* Nothing was written by the refused calls. */
	ts_dir_file(&d, "ca.pem", p, sizeof(p));
	assert_int_not_equal(access(p, F_OK), 0);
	dir_remove(&d);
}

/* gen-certs DIR --client NAME: a client certificate for an mTLS tenant,
 * from the CA already in DIR, with the CN and SANs the relay's tenants
 * match on. */
static void test_devcert_client(void **state)
{
	static const char *const sans[] = {"alice.notebooks.example",
					   "spiffe://c/ns/ds/sa/alice", "10.0.0.9", NULL};
	struct ts_dir d;
	char err[256] = "", p[192];
	X509 *ca, *cert;
	EVP_PKEY *k;
	GENERAL_NAMES *names;
	int uri = 0;

	ts_dir_make(&d, "devcert");
	/* no CA yet: says how to make one */
	assert_int_equal(sr_devcert_write_client(d.path, "alice", NULL, 1, err, sizeof(err)),
			 SR_ENOTFOUND);
	assert_non_null(strstr(err, "sparkrelay gen-certs"));
	assert_int_equal(ts_dir_count(&d), 0);
	assert_int_equal(sr_devcert_write(d.path, NULL, 1, err, sizeof(err)), 0);
	if (sr_devcert_write_client(d.path, "alice", sans, 1, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write_client: %s", err);

	ca = load_cert(&d, "ca.pem");
	cert = load_cert(&d, "client-alice.pem");
	assert_int_equal(verify(ca, cert, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	assert_int_not_equal(verify(ca, cert, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	assert_int_equal(X509_check_ca(cert), 0);
	assert_cn(cert, "alice");
	assert_int_equal(X509_check_host(cert, "alice.notebooks.example", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(cert, "10.0.0.9", 0), 1);
	names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	assert_non_null(names);
	for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
		if (g->type == GEN_URI &&
		    strcmp((const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier),
			   "spiffe://c/ns/ds/sa/alice") == 0)
			uri = 1;
	}
	GENERAL_NAMES_free(names);
	assert_true(uri);
	k = load_key(&d, "client-alice.key");
	assert_int_equal(X509_check_private_key(cert, k), 1);
	EVP_PKEY_free(k);
	assert_int_equal(file_mode(&d, "client-alice.key"), 0600);
	assert_int_equal(file_mode(&d, "client-alice.pem"), 0644);
	X509_free(cert);

	/* no SAN at all is fine too */
	assert_int_equal(sr_devcert_write_client(d.path, "bob", NULL, 1, err, sizeof(err)), 0);
	cert = load_cert(&d, "client-bob.pem");
	assert_null(X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL));
	assert_int_equal(verify(ca, cert, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	X509_free(cert);
	X509_free(ca);
	ERR_clear_error();
	for (const char *const *n =
		 (const char *const[]){"client-alice.pem", "client-alice.key", "client-bob.pem",
				       "client-bob.key", NULL};
	     *n; n++) {
		ts_dir_file(&d, *n, p, sizeof(p));
		assert_int_equal(unlink(p), 0);
	}
	dir_remove(&d);
}

/* gen-certs run again in the same folder (to add a name, say) keeps the CA
 * there: a client certificate it issued before still verifies, and so do
 * the new relay and sidecar certificates. A CA key of another CA is
 * refused, and nothing is replaced. */
/* d's ca.pem, checked to verify d's relay.pem. */
static X509 *ca_of_relay_cert(const struct ts_dir *d)
{
	X509 *ca = load_cert(d, "ca.pem"), *cert = load_cert(d, "relay.pem");

	assert_int_equal(verify(ca, cert, X509_PURPOSE_SSL_SERVER), X509_V_OK);
	X509_free(cert);
	return ca;
}

static void test_devcert_keep_ca(void **state)
{
	static const char *const more[] = {"relay-2.example", NULL};
	struct ts_dir d;
	char err[256] = "", p[192];
	X509 *ca, *ca2, *cert;
	int kept = -1;

	(void)state;
	ts_dir_make(&d, "devcert");
	assert_int_equal(sr_devcert_write_keep_ca(d.path, NULL, 1, &kept, err, sizeof(err)), 0);
	assert_int_equal(kept, 0);
	assert_int_equal(sr_devcert_write_client(d.path, "alice", NULL, 1, err, sizeof(err)),
			 0);
	ca = load_cert(&d, "ca.pem");
	if (sr_devcert_write_keep_ca(d.path, more, 1, &kept, err, sizeof(err)) != 0)
		fail_msg("again: %s", err);
	assert_int_equal(kept, 1);
	ca2 = ca_of_relay_cert(&d);
	assert_int_equal(X509_cmp(ca, ca2), 0);
	cert = load_cert(&d, "client-alice.pem");
	assert_int_equal(verify(ca2, cert, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	X509_free(cert);
	cert = load_cert(&d, "relay.pem");
	assert_int_equal(X509_check_host(cert, "relay-2.example", 0, 0, NULL), 1);
	X509_free(cert);
	cert = load_cert(&d, "sidecar.pem");
	assert_int_equal(verify(ca2, cert, X509_PURPOSE_SSL_CLIENT), X509_V_OK);
	X509_free(cert);
	X509_free(ca2);
	/* the CA key of another CA next to ca.pem: refused, nothing changed */
	{
		struct ts_dir other;
		char q[192];

		ts_dir_make(&other, "devcert-other");
		assert_int_equal(sr_devcert_write(other.path, NULL, 1, err, sizeof(err)), 0);
		ts_dir_file(&other, "ca.key", q, sizeof(q));
		ts_dir_file(&d, "ca.key", p, sizeof(p));
		assert_int_equal(rename(q, p), 0);
		dir_remove(&other);
	}
	assert_true(sr_devcert_write_keep_ca(d.path, NULL, 1, &kept, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "not a pair"));
	ca2 = load_cert(&d, "ca.pem");
	assert_int_equal(X509_cmp(ca, ca2), 0);
	X509_free(ca2);
	X509_free(ca);
	/* a key without its certificate says what to remove */
	ts_dir_file(&d, "ca.pem", p, sizeof(p));
	assert_int_equal(unlink(p), 0);
	assert_true(sr_devcert_write_keep_ca(d.path, NULL, 1, &kept, err, sizeof(err)) < 0);
	assert_non_null(strstr(err, "ca.key is there without its ca.pem: remove ca.key"));
	/* a CA that would expire before the new certificates is replaced */
	assert_int_equal(sr_devcert_write(d.path, NULL, 1, err, sizeof(err)), 0);
	ca = load_cert(&d, "ca.pem");
	if (sr_devcert_write_keep_ca(d.path, NULL, 30, &kept, err, sizeof(err)) != 0)
		fail_msg("short-lived CA: %s", err);
	assert_int_equal(kept, 2);
	ca2 = ca_of_relay_cert(&d);
	assert_int_not_equal(X509_cmp(ca, ca2), 0);
	X509_free(ca2);
	X509_free(ca);
	ERR_clear_error();
	for (const char *const *n =
		 (const char *const[]){"client-alice.pem", "client-alice.key", NULL};
	     *n; n++) {
		ts_dir_file(&d, *n, p, sizeof(p));
		assert_int_equal(unlink(p), 0);
	}
	dir_remove(&d);
}

/* A name that could leave the folder, smuggle a SAN entry or start an
 * option is refused, and nothing is written; so is a CA key that is not
 * the CA's. */
static void test_devcert_client_refusals(void **state)
{
	static const char *const bad_cn[] = {
	    "",	   "../x", ".hidden",
	    "-rf", "a b",  "a,b",
	    "a/b", "x\n",  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
	static const char *const bad_san[][2] = {{"a.example,DNS:evil.example", NULL},
						 {"x://a,DNS:b", NULL},
						 {"://x", NULL},
						 {"has space", NULL}};
	struct ts_dir d;
	char err[256] = "", p[192], q[192];

	ts_dir_make(&d, "devcert");
	assert_int_equal(sr_devcert_write(d.path, NULL, 1, err, sizeof(err)), 0);
	for (size_t i = 0; i < SR_ARRAY_LEN(bad_cn); i++) {
		err[0] = '\0';
		assert_int_equal(
		    sr_devcert_write_client(d.path, bad_cn[i], NULL, 1, err, sizeof(err)),
		    SR_EINVAL);
		assert_non_null(strstr(err, "client name"));
	}
	for (size_t i = 0; i < SR_ARRAY_LEN(bad_san); i++)
		assert_int_equal(
		    sr_devcert_write_client(d.path, "carol", bad_san[i], 1, err, sizeof(err)),
		    SR_EINVAL);
	assert_int_equal(ts_dir_count(&d), (int)SR_ARRAY_LEN(files));
	/* ca.key replaced by another key */
	ts_dir_file(&d, "relay.key", p, sizeof(p));
	ts_dir_file(&d, "ca.key", q, sizeof(q));
	assert_int_equal(rename(p, q), 0);
	assert_int_equal(sr_devcert_write_client(d.path, "carol", NULL, 1, err, sizeof(err)),
			 SR_EINVAL);
	assert_non_null(strstr(err, "not the key of the CA"));
	assert_int_equal(ts_dir_count(&d), (int)SR_ARRAY_LEN(files) - 1);
	dir_remove(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_devcert_chain_names_keys),
	    cmocka_unit_test(test_devcert_rewrite_tightens_key_mode),
	    cmocka_unit_test(test_devcert_planted_file_and_symlink_are_replaced),
	    cmocka_unit_test(test_devcert_unwritable_dir),
	    cmocka_unit_test(test_devcert_bad_arguments),
	    cmocka_unit_test(test_devcert_client),
	    cmocka_unit_test(test_devcert_keep_ca),
	    cmocka_unit_test(test_devcert_client_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
