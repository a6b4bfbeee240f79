/* `check-config`, relay side: what the loader cannot see from the text
 * alone. The relay's TLS files are loaded as the relay will load them,
 * each failure naming the setting; routes that can never be used and CIDRs
 * written with host bits are warned about. The relay runs the same checks
 * at start (a bad file stops it with the same message) and at reload
 * (warnings only). */
#include "cmd/cmd.h"
#include "common/sr_cidr.h"
#include "common/sr_file.h"
#include "common/sr_text.h"
#include "relay/relay.h"
#include "relay/relay_policy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define PATH_SHOWN 200

/* What OpenSSL said last, short ("no start line"), and the queue cleared. */
static const char *ssl_reason(char *buf, size_t len)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	snprintf(buf, len, "%s", r ? r : "not accepted by OpenSSL");
	ERR_clear_error();
	return buf;
}

/* A regular file we can open, of a certificate's size? Fills why with the
 * reason if not. A FIFO would block here (and the relay at start). */
static int readable(const char *path, char *why, size_t len)
{
	return sr_file_check(path, SR_FILE_PEM_MAX, why, len) == 0;
}

static void warn(cmd_warn_fn fn, void *arg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn(cmd_warn_fn fn, void *arg, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (!fn)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fn(arg, msg);
}

/* The validity window of the certificate in force: outside it, sidecars
 * refuse the relay (a warning, as the relay itself would run). */
static void check_validity(SSL_CTX *ctx, const char *key, const char *path, cmd_warn_fn fn,
			   void *arg)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	char when[64] = "";
	BIO *b;

	if (!x)
		return;
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		if ((b = BIO_new(BIO_s_mem()))) {
			ASN1_TIME_print(b, X509_get0_notAfter(x));
			BIO_read(b, when, sizeof(when) - 1);
			BIO_free(b);
		}
		warn(fn, arg, "certificate %s (%s) expired on %s: sidecars will refuse it", path,
		     key, when);
	} else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		warn(fn, arg, "certificate %s (%s) is not valid yet (check the clock)", path, key);
	}
}

/* Never prompt for a passphrase: an encrypted key is refused, and *u says it
 * was asked for (OpenSSL 3 reports that as a decoder error, not
 * PEM_R_BAD_PASSWORD_READ). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	if (u)
		*(int *)u = 1;
	return -1;
}

/* The first PEM object of path read with fn, or NULL with the reason in
 * why ("No such file or directory", "no PEM block of that kind in it"). */
static void *read_pem(const char *path, int key, char *why, size_t len)
{
	BIO *b;
	void *obj;
	int encrypted = 0;

	if (!readable(path, why, len))
		return NULL;
	ERR_clear_error();
	b = BIO_new_file(path, "r");
	if (!b) {
		ssl_reason(why, len);
		return NULL;
	}
	obj = key ? (void *)PEM_read_bio_PrivateKey(b, NULL, no_passphrase, &encrypted)
		  : (void *)PEM_read_bio_X509_AUX(b, NULL, no_passphrase, NULL);
	BIO_free(b);
	if (!obj) {
		unsigned long e = ERR_peek_error();
		if (key && encrypted)
			snprintf(why, len, "the key is encrypted; the relay needs it unencrypted");
		else if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
			snprintf(why, len, "no PEM %s in it",
				 key ? "private key (\"-----BEGIN ... PRIVATE KEY-----\")"
				     : "certificate (\"-----BEGIN CERTIFICATE-----\")");
		else
			ssl_reason(why, len);
		ERR_clear_error();
	}
	return obj;
}

int cmd_check_relay_tls(const struct relay_opts *o, cmd_warn_fn fn, void *arg, char *err,
			size_t errlen)
{
	char cert[SR_ESC_SIZE(PATH_SHOWN)], key[SR_ESC_SIZE(PATH_SHOWN)],
	    ca[SR_ESC_SIZE(PATH_SHOWN)], why[256] = "";
	SSL_CTX *ctx;
	X509 *x = NULL;
	EVP_PKEY *pk = NULL;
	int rv = -1;

	sr_esc_n(o->cert_file, PATH_SHOWN, cert, sizeof(cert));
	sr_esc_n(o->key_file, PATH_SHOWN, key, sizeof(key));
	sr_esc_n(o->client_ca_file, PATH_SHOWN, ca, sizeof(ca));
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errlen, "cannot check the TLS files: %s", ssl_reason(why, sizeof(why)));
		return -1;
	}
	/* The leaf first, for a reason that names the problem; then the whole
	 * chain as the relay loads it. */
	if (!o->cert_file || !(x = read_pem(o->cert_file, 0, why, sizeof(why))) ||
	    SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
		if (x)
			ssl_reason(why, sizeof(why));
		snprintf(err, errlen, "cannot load certificate %s (relay.tls.cert): %s", cert,
			 o->cert_file ? why : "not set");
		goto out;
	}
	if (!o->key_file || !(pk = read_pem(o->key_file, 1, why, sizeof(why)))) {
		snprintf(err, errlen, "cannot load private key %s (relay.tls.key): %s", key,
			 o->key_file ? why : "not set");
		goto out;
	}
	if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen,
			 "private key %s (relay.tls.key) does not match certificate %s "
			 "(relay.tls.cert)",
			 key, cert);
		goto out;
	}
	check_validity(ctx, "relay.tls.cert", cert, fn, arg);
	why[0] = '\0';
	if (o->client_ca_file && (!readable(o->client_ca_file, why, sizeof(why)) ||
				  SSL_CTX_load_verify_locations(ctx, o->client_ca_file, NULL) != 1)) {
		if (!why[0])
			ssl_reason(why, sizeof(why));
		snprintf(err, errlen, "cannot load CA certificates %s (relay.tls.client_ca): %s",
			 ca, why);
		goto out;
	}
	rv = 0;
out:
	ERR_clear_error();
	X509_free(x);
	EVP_PKEY_free(pk);
	SSL_CTX_free(ctx);
	return rv;
}

/* Does pattern (an app pattern, NULL for any) match every app? */
static int matches_any_app(const char *pattern)
{
	if (!pattern)
		return 1;
	for (; *pattern; pattern++)
		if (*pattern != '*')
			return 0;
	return 1;
}

static void check_cidrs(char *const *cidrs, unsigned n, unsigned route, const char *key,
			cmd_warn_fn fn, void *arg)
{
	char norm[SR_CIDR_STRLEN], q[SR_ESC_SIZE(64)];
	struct sr_cidr c;
	int host_bits;

	for (unsigned i = 0; i < n; i++) {
		host_bits = 0;
		if (sr_cidr_parse(cidrs[i], &c, &host_bits) != 0 || !host_bits)
			continue;
		warn(fn, arg,
		     "relay.routes[%u].%s[%u]: %s has host bits set: it means %s (write that, or "
		     "the address with /%u for one host)",
		     route, key, i, sr_esc_n(cidrs[i], 64, q, sizeof(q)),
		     sr_cidr_format(&c, norm, sizeof(norm)), c.family == AF_INET ? 32u : 128u);
	}
}

void cmd_check_relay_policy(const struct relay_opts *o, cmd_warn_fn fn, void *arg)
{
	const struct relay_policy_opts *po = &o->policy;

	/* A warning, not an error: check-config may run on another machine
	 * (CI) than the relay. */
	for (unsigned i = 0; i < (po->npools ? po->npools : 1); i++) {
		const char *a =
		    po->npools ? po->pools[i].pool.bind_address : o->pool.bind_address;
		int e = relay_bind_addr_missing(a);
		char q[SR_ESC_SIZE(64)], key[32];

		if (!e)
			continue;
		if (po->npools)
			snprintf(key, sizeof(key), "relay.pools[%u].bind", i);
		else
			snprintf(key, sizeof(key), "relay.pool.bind");
		warn(fn, arg,
		     "%s %s is not an address of this host (%s): the relay refuses to start "
		     "with it here",
		     key, sr_esc_n(a, 64, q, sizeof(q)), strerror(e));
	}

	for (unsigned i = 0; i < po->nroutes; i++) {
		const struct relay_route_cfg *ri = &po->routes[i];
		const char *ti = ri->tenant ? ri->tenant : "*";

		check_cidrs(ri->sidecar_cidrs, ri->nsidecar_cidrs, i, "sidecar_cidrs", fn, arg);
		check_cidrs(ri->executor_cidrs, ri->nexecutor_cidrs, i, "executor_cidrs", fn, arg);
		if (!matches_any_app(ri->app) || ri->nsidecar_cidrs)
			continue;
		/* Route i takes every registration of its tenant (or of all): the
		 * routes after it that it covers are never used. */
		for (unsigned j = i + 1; j < po->nroutes; j++) {
			const struct relay_route_cfg *rj = &po->routes[j];
			const char *tj = rj->tenant ? rj->tenant : "*";
			if (strcmp(ti, "*") != 0 && strcmp(ti, tj) != 0)
				continue;
			warn(fn, arg,
			     "relay.routes[%u] (\"%s\") is never used: relay.routes[%u] (\"%s\") "
			     "before it takes every registration of %s%s%s (any app, from "
			     "anywhere); put the catch-all route last",
			     j, rj->name ? rj->name : "", i, ri->name ? ri->name : "",
			     strcmp(ti, "*") == 0 ? "every tenant" : "tenant \"",
			     strcmp(ti, "*") == 0 ? "" : ti, strcmp(ti, "*") == 0 ? "" : "\"");
		}
	}
}
