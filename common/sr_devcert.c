/* Development PKI: one CA, a relay server certificate, a sidecar client
 * certificate, all ECDSA P-256 / SHA-256; later, client certificates with
 * a chosen name signed by that CA.
 *
 * Everything is made in memory first and written only when all of it
 * succeeded, so a failure never leaves a CA next to leaf certificates that
 * it did not sign. */
#include "common/sr_devcert.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/sr_err.h"

#define DEVCERT_MAX_DAYS 3650
/* sr_devcert_write_keep_ca: a new CA lives this long, so that running it
 * again renews the relay and sidecar certificates under the same CA. */
#define DEVCERT_KEPT_CA_DAYS 365
#define DEVCERT_SERIAL_LEN 16
#define DEVCERT_SAN_BASE "DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3,IP:::1"
#define DEVCERT_NAME_MAX 253 /* longest DNS name */
#define DEVCERT_CN_MAX 64    /* a client CN: it names files too */
#define DEVCERT_URI_MAX 255

/* Report an OpenSSL failure with the newest entry of its error queue, then
 * clear the queue so it does not leak into unrelated later calls. */
static int devcert_ssl_err(char *err, size_t errlen, const char *what)
{
	char buf[256] = "unknown OpenSSL error";
	unsigned long e, last = 0;

	while ((e = ERR_get_error()) != 0)
		last = e;
	if (last != 0)
		ERR_error_string_n(last, buf, sizeof(buf));
	sr_seterr(err, errlen, "%s: %s", what, buf);
	return SR_ETLS;
}

/* An extra SAN entry: an IP literal, or a DNS name of letters, digits, '-',
 * '.' and a leading "*." wildcard. Anything else is refused rather than
 * escaped: a ',' would smuggle another entry into the SAN list. */
static int devcert_name_kind(const char *name, int *is_ip)
{
	unsigned char addr[sizeof(struct in6_addr)];
	size_t n = strlen(name);

	*is_ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
	if (*is_ip)
		return 0;
	if (n == 0 || n > DEVCERT_NAME_MAX || name[0] == '.' || name[0] == '-')
		return SR_EINVAL;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.')
			continue;
		if (c == '*' && i == 0 && name[1] == '.')
			continue;
		return SR_EINVAL;
	}
	return 0;
}

/* A URI SAN ("spiffe://cluster/ns/team/sa/nb"): a scheme, "://", then
 * characters that can neither end the entry (',') nor hide in a log. */
static int devcert_uri_ok(const char *s)
{
	const char *sep = strstr(s, "://");
	size_t n = strlen(s);

	if (!sep || sep == s || n > DEVCERT_URI_MAX || !sep[3])
		return 0;
	for (const char *p = s; p < sep; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (p > s &&
		       ((*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.'))))
			return 0;
	for (const char *p = sep + 3; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || strchr("-._~/:@%+=!$&'()*;?#[]", *p)))
			return 0;
	return 1;
}

/* "DNS:localhost,...,IP:x,DNS:y" for the relay; caller frees. */
static int devcert_relay_san(const char *const *extra, char **out, char *err, size_t errlen)
{
	size_t cap = sizeof(DEVCERT_SAN_BASE), len;
	char *san;

	for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
		int is_ip;

		if (devcert_name_kind(extra[i], &is_ip) < 0) {
			sr_seterr(err, errlen,
				  "extra name \"%.64s\": not an IP literal or DNS name",
				  extra[i]);
			return SR_EINVAL;
		}
		cap += strlen(",DNS:") + strlen(extra[i]);
	}
	san = malloc(cap);
	if (san == NULL) {
		sr_seterr(err, errlen, "out of memory");
		return SR_ENOMEM;
	}
	len = (size_t)snprintf(san, cap, "%s", DEVCERT_SAN_BASE);
	for (size_t i = 0; extra != NULL && extra[i] != NULL; i++) {
		int is_ip;

		devcert_name_kind(extra[i], &is_ip);
		len += (size_t)snprintf(san + len, cap - len, ",%s:%s", is_ip ? "IP" : "DNS",
					extra[i]);
	}
	*out = san;
	return 0;
}

static int devcert_add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
	int ok;

	if (ext == NULL)
		return -1;
	ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	return ok ? 0 : -1;
}

struct devcert_ext {
	int nid;
	const char *value;
};

/* A certificate for key, signed by (issuer, issuer_key), or self-signed when
 * issuer is NULL. exts is terminated by nid 0. */
static X509 *devcert_make(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
			  unsigned days, const struct devcert_ext *exts)
{
	unsigned char serial[DEVCERT_SERIAL_LEN];
	X509V3_CTX ctx;
	X509_NAME *name;
	BIGNUM *bn = NULL;
	X509 *cert;

	cert = X509_new();
	if (cert == NULL)
		return NULL;
	if (!X509_set_version(cert, X509_VERSION_3))
		goto fail;

	/* Random positive serial: clear the top bit so the DER INTEGER needs no
	 * leading zero, and set a low bit so it is never zero. */
	if (RAND_bytes(serial, sizeof(serial)) != 1)
		goto fail;
	serial[0] &= 0x7f;
	serial[sizeof(serial) - 1] |= 0x01;
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) == NULL)
		goto fail;

	/* An hour of slack for peers whose clock runs behind ours. */
	if (X509_gmtime_adj(X509_getm_notBefore(cert), -3600) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(cert), (int)days, 0, NULL) == NULL)
		goto fail;

	name = X509_get_subject_name(cert);
	if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
					(const unsigned char *)"sparkrelay development", -1, -1,
					0) ||
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
					-1, 0))
		goto fail;
	if (!X509_set_issuer_name(cert,
				  issuer != NULL ? X509_get_subject_name(issuer) : name) ||
	    !X509_set_pubkey(cert, key))
		goto fail;

	X509V3_set_ctx(&ctx, issuer != NULL ? issuer : cert, cert, NULL, NULL, 0);
	X509V3_set_ctx_nodb(&ctx);
	if (devcert_add_ext(cert, &ctx, NID_subject_key_identifier, "hash") < 0)
		goto fail;
	if (issuer != NULL &&
	    devcert_add_ext(cert, &ctx, NID_authority_key_identifier, "keyid:always") < 0)
		goto fail;
	for (; exts->nid != 0; exts++)
		if (devcert_add_ext(cert, &ctx, exts->nid, exts->value) < 0)
			goto fail;

	if (X509_sign(cert, issuer_key != NULL ? issuer_key : key, EVP_sha256()) <= 0)
		goto fail;
	BN_free(bn);
	return cert;
fail:
	BN_free(bn);
	X509_free(cert);
	return NULL;
}

enum devcert_kind { DEVCERT_CERT, DEVCERT_KEY };

#define DEVCERT_TMP_TRIES 16

/* One output file: written under a fresh temporary name, then renamed. */
struct devcert_file {
	const char *name;
	enum devcert_kind kind;
	void *obj;
	char tmp[PATH_MAX]; /* "" until created */
};

/* Write f's PEM object into a new file next to its final name: certificates
 * 0644, keys 0600 (forced with fchmod, the umask may differ).
 *
 * gen-certs may run as root in a folder other users can write. Opening the
 * final name would write into whatever another user left there: a planted
 * file keeps its owner, who could then read the CA key, and a planted
 * symlink redirects the write. So the file is created here with
 * O_CREAT|O_EXCL|O_NOFOLLOW under an unpredictable name (a name someone
 * planted first fails with EEXIST and another is drawn), and rename()
 * later replaces the directory entry: whatever stood at the final name,
 * file or symlink, is unlinked, never written through. */
static int devcert_write_tmp(const char *dir, struct devcert_file *f, char *err, size_t errlen)
{
	mode_t mode = f->kind == DEVCERT_KEY ? 0600 : 0644;
	unsigned char rnd[8];
	int fd = -1, n, ok, tries;
	FILE *fp;

	for (tries = 0; tries < DEVCERT_TMP_TRIES; tries++) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return devcert_ssl_err(err, errlen, "random temporary name");
		n = snprintf(f->tmp, sizeof(f->tmp),
			     "%s/.%s.%02x%02x%02x%02x%02x%02x%02x%02x.tmp", dir, f->name,
			     rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
		if (n < 0 || (size_t)n >= sizeof(f->tmp)) {
			f->tmp[0] = '\0';
			sr_seterr(err, errlen, "%s/%s: path too long", dir, f->name);
			return SR_EINVAL;
		}
		fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0) {
		sr_seterr(err, errlen, "%s: %s", f->tmp, strerror(errno));
		f->tmp[0] = '\0';
		return SR_EIO;
	}
	if (fchmod(fd, mode) < 0) {
		sr_seterr(err, errlen, "%s: chmod: %s", f->tmp, strerror(errno));
		close(fd);
		return SR_EIO;
	}
	fp = fdopen(fd, "w");
	if (fp == NULL) {
		sr_seterr(err, errlen, "%s: %s", f->tmp, strerror(errno));
		close(fd);
		return SR_EIO;
	}
	if (f->kind == DEVCERT_KEY)
		ok = PEM_write_PrivateKey(fp, f->obj, NULL, NULL, 0, NULL, NULL);
	else
		ok = PEM_write_X509(fp, f->obj);
	/* on disk before the rename makes it the file */
	if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
		sr_seterr(err, errlen, "%s: %s", f->tmp, strerror(errno));
		fclose(fp);
		ERR_clear_error();
		return SR_EIO;
	}
	if (fclose(fp) != 0) {
		sr_seterr(err, errlen, "%s: %s", f->tmp, strerror(errno));
		ERR_clear_error();
		return SR_EIO;
	}
	if (!ok) {
		devcert_ssl_err(err, errlen, f->tmp);
		return SR_EIO;
	}
	return 0;
}

/* Every file written to a temporary name first, then each renamed into
 * place in order: a failure before the renames leaves the directory as it
 * was. Temporary files left by a failure are removed. */
static int devcert_write_all(const char *dir, struct devcert_file *files, size_t n, char *err,
			     size_t errlen)
{
	char path[PATH_MAX];
	size_t i;
	int rc = 0;

	for (i = 0; i < n && rc == 0; i++)
		rc = devcert_write_tmp(dir, &files[i], err, errlen);
	for (i = 0; i < n && rc == 0; i++) {
		int len = snprintf(path, sizeof(path), "%s/%s", dir, files[i].name);

		if (len < 0 || (size_t)len >= sizeof(path)) {
			sr_seterr(err, errlen, "%s/%s: path too long", dir, files[i].name);
			rc = SR_EINVAL;
		} else if (rename(files[i].tmp, path) < 0) {
			sr_seterr(err, errlen, "%s: %s", path, strerror(errno));
			rc = SR_EIO;
		} else {
			files[i].tmp[0] = '\0';
		}
	}
	for (i = 0; i < n; i++)
		if (files[i].tmp[0])
			unlink(files[i].tmp);
	return rc;
}

/* dir exists and is a directory. */
static int devcert_check_dir(const char *dir, char *err, size_t errlen)
{
	struct stat st;

	if (stat(dir, &st) < 0) {
		sr_seterr(err, errlen, "%s: %s", dir, strerror(errno));
		return SR_EIO;
	}
	if (!S_ISDIR(st.st_mode)) {
		sr_seterr(err, errlen, "%s: not a directory", dir);
		return SR_EIO;
	}
	return 0;
}

static void *devcert_read(const char *dir, const char *name, enum devcert_kind kind, int *rc,
			  char *err, size_t errlen);

/* sr_devcert_write, or with kept not NULL sr_devcert_write_keep_ca. */
static int devcert_write(const char *dir, const char *const *extra_names, unsigned days,
			 int *kept, char *err, size_t errlen)
{
	static const struct devcert_ext ca_exts[] = {
	    {NID_basic_constraints, "critical,CA:TRUE"},
	    {NID_key_usage, "critical,keyCertSign,cRLSign"},
	    {0, NULL},
	};
	static const struct devcert_ext sidecar_exts[] = {
	    {NID_basic_constraints, "critical,CA:FALSE"},
	    {NID_key_usage, "critical,digitalSignature"},
	    {NID_ext_key_usage, "clientAuth"},
	    {0, NULL},
	};
	struct devcert_ext relay_exts[] = {
	    {NID_basic_constraints, "critical,CA:FALSE"},
	    {NID_key_usage, "critical,digitalSignature"},
	    {NID_ext_key_usage, "serverAuth"},
	    {NID_subject_alt_name, NULL},
	    {0, NULL},
	};
	EVP_PKEY *ca_key = NULL, *relay_key = NULL, *sidecar_key = NULL;
	X509 *ca = NULL, *relay = NULL, *sidecar = NULL;
	char *san = NULL;
	int rc;

	if (dir == NULL || days == 0 || days > DEVCERT_MAX_DAYS) {
		sr_seterr(err, errlen, "devcert: need a directory and 1..%d days",
			  DEVCERT_MAX_DAYS);
		return SR_EINVAL;
	}
	if ((rc = devcert_check_dir(dir, err, errlen)) < 0)
		return rc;
	if ((rc = devcert_relay_san(extra_names, &san, err, errlen)) < 0)
		return rc;
	relay_exts[3].value = san;

	ERR_clear_error();
	if (kept) {
		/* The CA already there signs the new certificates: a new one
		 * would make every certificate it issued stop verifying. */
		*kept = 0;
		ca_key = devcert_read(dir, "ca.key", DEVCERT_KEY, &rc, err, errlen);
		if (ca_key) {
			time_t end = time(NULL) + (time_t)days * 86400;

			if (!(ca = devcert_read(dir, "ca.pem", DEVCERT_CERT, &rc, err,
						errlen))) {
				if (rc == SR_ENOTFOUND)
					sr_seterr(
					    err, errlen,
					    "%s/ca.key is there without its ca.pem: remove "
					    "ca.key for a new CA",
					    dir);
				goto out;
			}
			if (X509_check_private_key(ca, ca_key) != 1) {
				rc = devcert_ssl_err(err, errlen,
						     "ca.pem and ca.key are not a pair");
				goto out;
			}
			if (X509_cmp_time(X509_get0_notAfter(ca), &end) > 0) {
				*kept = 1;
			} else {
				/* it would expire before the new certificates: a
				 * new one, which the caller says */
				*kept = 2;
				X509_free(ca);
				EVP_PKEY_free(ca_key);
				ca = NULL;
				ca_key = NULL;
			}
		} else if (rc != SR_ENOTFOUND) {
			goto out;
		}
		ERR_clear_error();
	}
	if (!ca_key)
		ca_key = EVP_EC_gen("P-256");
	relay_key = EVP_EC_gen("P-256");
	sidecar_key = EVP_EC_gen("P-256");
	if (ca_key == NULL || relay_key == NULL || sidecar_key == NULL) {
		rc = devcert_ssl_err(err, errlen, "generating P-256 key");
		goto out;
	}
	if (!ca)
		ca = devcert_make(ca_key, "sparkrelay-dev-ca", NULL, NULL,
				  kept ? DEVCERT_KEPT_CA_DAYS : days, ca_exts);
	if (ca == NULL) {
		rc = devcert_ssl_err(err, errlen, "making CA certificate");
		goto out;
	}
	relay = devcert_make(relay_key, "sparkrelay-relay", ca, ca_key, days, relay_exts);
	if (relay == NULL) {
		rc = devcert_ssl_err(err, errlen, "making relay certificate");
		goto out;
	}
	sidecar =
	    devcert_make(sidecar_key, "sparkrelay-sidecar", ca, ca_key, days, sidecar_exts);
	if (sidecar == NULL) {
		rc = devcert_ssl_err(err, errlen, "making sidecar certificate");
		goto out;
	}

	{
		/* Keys first: a reader that finds a certificate can rely on its key. */
		struct devcert_file out[] = {
		    {"ca.key", DEVCERT_KEY, ca_key, ""},
		    {"relay.key", DEVCERT_KEY, relay_key, ""},
		    {"sidecar.key", DEVCERT_KEY, sidecar_key, ""},
		    {"ca.pem", DEVCERT_CERT, ca, ""},
		    {"relay.pem", DEVCERT_CERT, relay, ""},
		    {"sidecar.pem", DEVCERT_CERT, sidecar, ""},
		};

		size_t n = sizeof(out) / sizeof(out[0]);

		if (kept && *kept == 1) { /* the leaves only */
			out[0] = out[1];
			out[1] = out[2];
			out[2] = out[4];
			out[3] = out[5];
			n = 4;
		}
		rc = devcert_write_all(dir, out, n, err, errlen);
	}
out:
	X509_free(sidecar);
	X509_free(relay);
	X509_free(ca);
	EVP_PKEY_free(sidecar_key);
	EVP_PKEY_free(relay_key);
	EVP_PKEY_free(ca_key);
	free(san);
	return rc;
}

int sr_devcert_write(const char *dir, const char *const *extra_names, unsigned days, char *err,
		     size_t errlen)
{
	return devcert_write(dir, extra_names, days, NULL, err, errlen);
}

int sr_devcert_write_keep_ca(const char *dir, const char *const *extra_names, unsigned days,
			     int *kept, char *err, size_t errlen)
{
	return devcert_write(dir, extra_names, days, kept, err, errlen);
}

/* ---- client certificates from the development CA ----------------------- */

static int devcert_cn_ok(const char *cn)
{
	size_t n = strlen(cn);

	if (n == 0 || n > DEVCERT_CN_MAX || cn[0] == '.' || cn[0] == '-')
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((cn[i] >= 'a' && cn[i] <= 'z') || (cn[i] >= 'A' && cn[i] <= 'Z') ||
		      (cn[i] >= '0' && cn[i] <= '9') || cn[i] == '.' || cn[i] == '_' ||
		      cn[i] == '-'))
			return 0;
	return 1;
}

/* "DNS:a,IP:b,URI:c" of a client certificate, or NULL (none) in *out;
 * caller frees. */
static int devcert_client_san(const char *const *sans, char **out, char *err, size_t errlen)
{
	size_t cap = 1, len = 0;
	char *san;

	*out = NULL;
	for (size_t i = 0; sans != NULL && sans[i] != NULL; i++) {
		int is_ip;

		if (!devcert_uri_ok(sans[i]) && devcert_name_kind(sans[i], &is_ip) < 0) {
			sr_seterr(
			    err, errlen,
			    "name \"%.64s\": not a DNS name, IP literal or URI (scheme://...)",
			    sans[i]);
			return SR_EINVAL;
		}
		cap += strlen(",URI:") + strlen(sans[i]);
	}
	if (cap == 1)
		return 0;
	if (!(san = malloc(cap))) {
		sr_seterr(err, errlen, "out of memory");
		return SR_ENOMEM;
	}
	san[0] = '\0';
	for (size_t i = 0; sans[i] != NULL; i++) {
		int is_ip = 0;
		const char *kind = "URI";

		if (!devcert_uri_ok(sans[i])) {
			devcert_name_kind(sans[i], &is_ip);
			kind = is_ip ? "IP" : "DNS";
		}
		len += (size_t)snprintf(san + len, cap - len, "%s%s:%s", len ? "," : "", kind,
					sans[i]);
	}
	*out = san;
	return 0;
}

/* The PEM object in dir/name: a certificate or a private key; NULL with
 * *rc set (SR_ENOTFOUND: no such file). */
static void *devcert_read(const char *dir, const char *name, enum devcert_kind kind, int *rc,
			  char *err, size_t errlen)
{
	char path[PATH_MAX];
	void *obj = NULL;
	BIO *bio;
	int n = snprintf(path, sizeof(path), "%s/%s", dir, name);

	*rc = SR_EIO;
	if (n < 0 || (size_t)n >= sizeof(path)) {
		sr_seterr(err, errlen, "%s/%s: path too long", dir, name);
		return NULL;
	}
	errno = 0;
	if (!(bio = BIO_new_file(path, "r"))) {
		int e = errno;

		ERR_clear_error();
		if (e == ENOENT) {
			*rc = SR_ENOTFOUND;
			sr_seterr(err, errlen,
				  "%s: no development CA there (make one first: "
				  "sparkrelay gen-certs %s)",
				  path, dir);
		} else {
			sr_seterr(err, errlen, "%s: %s", path, e ? strerror(e) : "cannot open");
		}
		return NULL;
	}
	if (kind == DEVCERT_KEY)
		obj = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
	else
		obj = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!obj)
		devcert_ssl_err(err, errlen, path);
	return obj;
}

int sr_devcert_write_client(const char *dir, const char *cn, const char *const *sans,
			    unsigned days, char *err, size_t errlen)
{
	struct devcert_ext exts[] = {
	    {NID_basic_constraints, "critical,CA:FALSE"},
	    {NID_key_usage, "critical,digitalSignature"},
	    {NID_ext_key_usage, "clientAuth"},
	    {NID_subject_alt_name, NULL},
	    {0, NULL},
	};
	char key_name[DEVCERT_CN_MAX + 16], cert_name[DEVCERT_CN_MAX + 16];
	EVP_PKEY *ca_key = NULL, *key = NULL;
	X509 *ca = NULL, *cert = NULL;
	char *san = NULL;
	int rc;

	if (dir == NULL || cn == NULL || days == 0 || days > DEVCERT_MAX_DAYS) {
		sr_seterr(err, errlen, "devcert: need a directory, a name and 1..%d days",
			  DEVCERT_MAX_DAYS);
		return SR_EINVAL;
	}
	if (!devcert_cn_ok(cn)) {
		sr_seterr(err, errlen,
			  "client name \"%.64s\": must be 1..%d letters, digits, "
			  "'.', '_' or '-', not starting with '.' or '-'",
			  cn, DEVCERT_CN_MAX);
		return SR_EINVAL;
	}
	if (access(dir, F_OK) != 0 && errno == ENOENT) {
		sr_seterr(err, errlen,
			  "%s: no development CA there (make one first: sparkrelay "
			  "gen-certs %s)",
			  dir, dir);
		return SR_ENOTFOUND;
	}
	if ((rc = devcert_check_dir(dir, err, errlen)) < 0)
		return rc;
	if ((rc = devcert_client_san(sans, &san, err, errlen)) < 0)
		return rc;
	if (san)
		exts[3].value = san;
	else
		exts[3].nid = 0;
	ERR_clear_error();
	if (!(ca = devcert_read(dir, "ca.pem", DEVCERT_CERT, &rc, err, errlen)) ||
	    !(ca_key = devcert_read(dir, "ca.key", DEVCERT_KEY, &rc, err, errlen)))
		goto out;
	if (X509_check_private_key(ca, ca_key) != 1 || X509_check_ca(ca) == 0) {
		ERR_clear_error();
		sr_seterr(err, errlen, "%s: ca.key is not the key of the CA certificate ca.pem",
			  dir);
		rc = SR_EINVAL;
		goto out;
	}
	if (!(key = EVP_EC_gen("P-256"))) {
		rc = devcert_ssl_err(err, errlen, "generating P-256 key");
		goto out;
	}
	if (!(cert = devcert_make(key, cn, ca, ca_key, days, exts))) {
		rc = devcert_ssl_err(err, errlen, "making client certificate");
		goto out;
	}
	snprintf(key_name, sizeof(key_name), "client-%s.key", cn);
	snprintf(cert_name, sizeof(cert_name), "client-%s.pem", cn);
	{
		struct devcert_file files[] = {
		    {key_name, DEVCERT_KEY, key, ""},
		    {cert_name, DEVCERT_CERT, cert, ""},
		};

		rc = devcert_write_all(dir, files, sizeof(files) / sizeof(files[0]), err,
				       errlen);
	}
out:
	X509_free(cert);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(ca_key);
	free(san);
	return rc;
}
