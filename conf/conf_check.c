/* Checks that span several keys, run once the file and the environment are
 * applied: order between two settings (port_min <= port_max...), settings
 * that need another (require_client_cert needs client_ca), and the relay's
 * pools, tenants and routes compiled with relay_policy as the relay will. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_util.h"
#include "relay/relay_fleet.h"
#include "relay/relay_policy.h"

/* The key under "relay" of each list relay_policy checks. */
static const char *const conf_policy_key[] = {
    [RELAY_POLICY_POOL] = "pool",
    [RELAY_POLICY_POOLS] = "pools",
    [RELAY_POLICY_TENANTS] = "tenants",
    [RELAY_POLICY_ROUTES] = "routes",
};

/* Report what relay_policy_compile refused at the location of its path;
 * when that list came from the environment (a whole array is set by one
 * variable), name the variable instead. */
static int conf_fail_policy(const struct relay_policy_err *pe, struct conf_ctx *ctx)
{
	char top[CONF_PATH_MAX], name[CONF_PATH_MAX + 16];
	const struct conf_entry *e = NULL;
	int rc;

	if (pe->kind == RELAY_POLICY_ERR_NOMEM)
		return conf_nomem(ctx);
	if ((size_t)pe->list < SR_ARRAY_LEN(conf_policy_key))
		e = conf_find(&conf_relay_group, conf_policy_key[pe->list]);
	if (!e || e->type != CONF_ARRAY || conf_given(ctx, e) != 2)
		return conf_fail(ctx, pe->path, "%s", pe->msg);
	conf_join(top, sizeof(top), "relay", e->key);
	conf_env_name(top, name, sizeof(name));
	ctx->env = name;
	rc = conf_fail(ctx, pe->path, "%s", pe->msg);
	ctx->env = NULL;
	return rc;
}

static int conf_check_h2(const struct tun_conn_opts *t, const char *sect, struct conf_ctx *ctx)
{
	char path[64];

	if (t->ping_timeout_ms <= t->ping_interval_ms) {
		snprintf(path, sizeof(path), "%s.h2.ping_timeout_ms", sect);
		return conf_fail(ctx, path,
				 "must be greater than %s.h2.ping_interval_ms (%u) (got %u)",
				 sect, t->ping_interval_ms, t->ping_timeout_ms);
	}
	if (t->conn_window < t->stream_window) {
		snprintf(path, sizeof(path), "%s.h2.conn_window", sect);
		return conf_fail(ctx, path,
				 "must be at least %s.h2.stream_window (%u) (got %u)", sect,
				 t->stream_window, t->conn_window);
	}
	return 0;
}

/* Whether hosts a and b of two listen addresses may be the same socket
 * address: equal, or either one a wildcard. */
static int conf_hosts_overlap(const char *a, const char *b)
{
	static const char *const any[] = {"", "0.0.0.0", "::", "[::]"};

	for (size_t i = 0; i < SR_ARRAY_LEN(any); i++)
		if (strcmp(a, any[i]) == 0 || strcmp(b, any[i]) == 0)
			return 1;
	return strcmp(a, b) == 0;
}

/* The metrics listener cannot share the admin listener's socket address:
 * one of them would fail to bind at start. */
static int conf_check_metrics(const struct relay_opts *r, struct conf_ctx *ctx)
{
	char ha[256], hm[256], q[CONF_GOT_SIZE];
	uint16_t pa, pm;

	if (!r->metrics_listen || !r->admin_listen ||
	    sr_split_hostport(r->admin_listen, ha, sizeof(ha), &pa, 0) != 0 ||
	    sr_split_hostport(r->metrics_listen, hm, sizeof(hm), &pm, 0) != 0)
		return 0;
	if (pa == 0 || pa != pm || !conf_hosts_overlap(ha, hm)) /* port 0: any free port */
		return 0;
	conf_quote(r->admin_listen, 0, q, sizeof(q));
	return conf_fail(ctx, "relay.metrics.listen",
			 "must not be the address of relay.admin.listen (%s): the admin API "
			 "needs its token, metrics do not",
			 q);
}

/* relay.fleet as the relay will take it (but the files: the relay loads the
 * secret at start). A setting that is missing is located at relay.fleet. */
static int conf_check_fleet(const struct relay_fleet_opts *o, struct conf_ctx *ctx)
{
	const char *key;
	char why[512];

	if (relay_fleet_check_opts(o, &key, why, sizeof(why)) == 0)
		return 0;
	if ((strcmp(key, "relay.fleet.peer_listen") == 0 && !o->peer_listen) ||
	    (strcmp(key, "relay.fleet.secret_file") == 0 && !o->secret_file) ||
	    (strcmp(key, "relay.fleet.peer_advertise") == 0 && !o->peer_advertise))
		return conf_fail_at(ctx, key, "relay.fleet", "%s", why);
	return conf_fail(ctx, key, "%s", why);
}

int conf_check_relay(const struct relay_opts *r, struct conf_ctx *ctx)
{
	char q[CONF_GOT_SIZE];
	struct relay_policy_err pe;
	struct relay_policy *pol;
	int rc;

	if ((rc = conf_check_required(&conf_relay_group, r, "relay", NULL, ctx)) != 0 ||
	    (rc = conf_check_excl(&conf_relay_group, r, "relay", ctx)) != 0)
		return rc;
	if (r->pool.port_min > r->pool.port_max) {
		char v[CONF_PATH_MAX + 16];

		/* blamed on the one a variable set, if only one was */
		if (conf_env_that_set(ctx, "relay.pool.port_max", v, sizeof(v)) &&
		    !conf_env_that_set(ctx, "relay.pool.port_min", v, sizeof(v)))
			return conf_fail(ctx, "relay.pool.port_max",
					 "must be at least relay.pool.port_min (%u) (got %u)",
					 r->pool.port_min, r->pool.port_max);
		return conf_fail(ctx, "relay.pool.port_min",
				 "must be at most relay.pool.port_max (%u) (got %u)",
				 r->pool.port_max, r->pool.port_min);
	}
	if (r->require_client_cert && !r->client_ca_file)
		return conf_fail(
		    ctx, "relay.tls.require_client_cert",
		    "true needs relay.tls.client_ca to verify client certificates");
	if ((rc = conf_check_h2(&r->tun, "relay", ctx)) != 0)
		return rc;
	if (r->admin_listen && !r->admin_token && !conf_listen_is_loopback(r->admin_listen)) {
		conf_quote(r->admin_listen, 0, q, sizeof(q));
		return conf_fail_at(ctx, "relay.admin.token", "relay.admin.listen",
				    "required when relay.admin.listen (%s) is not a loopback "
				    "address",
				    q);
	}
	if ((rc = conf_check_metrics(r, ctx)) != 0)
		return rc;
	if ((rc = conf_check_fleet(&r->fleet, ctx)) != 0)
		return rc;
	/* pools, tenants and routes refer to each other: compile them as the
	 * relay will, so that check-config catches what the relay would refuse */
	if (!(pol = relay_policy_compile(&r->policy, &r->pool, &pe)))
		return conf_fail_policy(&pe, ctx);
	relay_policy_free(pol);
	return 0;
}

int conf_check_tunnel(const struct sidecar_opts *s, struct conf_ctx *ctx)
{
	int rc;

	if ((rc = conf_check_required(&conf_tunnel_group, s, "tunnel", NULL, ctx)) != 0)
		return rc;
	if (!s->cert_file != !s->key_file)
		return conf_fail(
		    ctx, s->cert_file ? "tunnel.tls.cert" : "tunnel.tls.key",
		    "tunnel.tls.cert and tunnel.tls.key must be set together (%s is "
		    "not set)",
		    s->cert_file ? "tunnel.tls.key" : "tunnel.tls.cert");
	if (s->backoff_initial_ms > s->backoff_max_ms)
		return conf_fail(ctx, "tunnel.backoff_initial_ms",
				 "must be at most tunnel.backoff_max_ms (%u) (got %u)",
				 s->backoff_max_ms, s->backoff_initial_ms);
	return conf_check_h2(&s->tun, "tunnel", ctx);
}

/* ---- the sidecar's TLS files: conf_check_tunnel_files (conf.h) ---- */

/* Larger PEM files are refused: a system CA bundle is about 200 KiB. */
#define CONF_PEM_MAX SR_FILE_PEM_MAX

/* What one file is, for messages: "cannot load CA /x (tunnel.tls.ca): why". */
struct conf_pem {
	const char *what, *path, *key;
};

static int conf_pem_fail(const struct conf_pem *f, char *err, size_t errlen, const char *why)
{
	char pbuf[SR_ESC_SIZE(256)];

	sr_seterr(err, errlen, "cannot load %s %s (%s): %s", f->what,
		  sr_esc_n(f->path, 256, pbuf, sizeof(pbuf)), f->key, why);
	ERR_clear_error();
	return SR_EINVAL;
}

/* The last reason OpenSSL recorded, for a file that is not what it should be. */
static int conf_pem_fail_ssl(const struct conf_pem *f, char *err, size_t errlen,
			     const char *what)
{
	char why[192];
	unsigned long e, last = 0;
	const char *reason;

	while ((e = ERR_get_error()) != 0)
		last = e;
	reason = last ? ERR_reason_error_string(last) : NULL;
	snprintf(why, sizeof(why), "%s%s%s%s", what, reason ? " (" : "", reason ? reason : "",
		 reason ? ")" : "");
	return conf_pem_fail(f, err, errlen, why);
}

/* The whole file in a memory BIO, or NULL with the reason in err. Read the
 * way the sidecar will, but bounded: a FIFO or a device never blocks the
 * check and /dev/zero does not fill the memory. */
static BIO *conf_pem_read(const struct conf_pem *f, char *err, size_t errlen)
{
	char why[160];
	BIO *bio = NULL;
	char *buf = NULL;
	off_t size = 0;
	ssize_t n;
	size_t len = 0;
	int fd;

	fd = sr_file_open(f->path, CONF_PEM_MAX, &size, why, sizeof(why));
	if (fd < 0) {
		conf_pem_fail(f, err, errlen, why);
		return NULL;
	}
	if (!(buf = malloc((size_t)size + 1))) {
		conf_pem_fail(f, err, errlen, "out of memory");
		goto out;
	}
	while (len <= (size_t)size &&
	       (n = read(fd, buf + len, (size_t)size + 1 - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			conf_pem_fail(f, err, errlen, strerror(errno));
			goto out;
		}
		len += (size_t)n;
	}
	if (len == 0) {
		conf_pem_fail(f, err, errlen, "the file is empty");
		goto out;
	}
	if (!(bio = BIO_new(BIO_s_mem())) || BIO_write(bio, buf, (int)len) != (int)len) {
		BIO_free(bio);
		bio = NULL;
		conf_pem_fail(f, err, errlen, "out of memory");
	}
out:
	free(buf);
	close(fd);
	return bio;
}

/* As SSL_CTX_load_verify_locations reads a CA file: PEM blocks, at least
 * one certificate among them. */
static int conf_check_ca(const struct conf_pem *f, char *err, size_t errlen)
{
	STACK_OF(X509_INFO) *inf;
	BIO *bio = conf_pem_read(f, err, errlen);
	int ncert = 0;

	if (!bio)
		return SR_EINVAL;
	ERR_clear_error();
	inf = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!inf)
		return conf_pem_fail_ssl(f, err, errlen, "not PEM certificates");
	for (int i = 0; i < sk_X509_INFO_num(inf); i++)
		ncert += sk_X509_INFO_value(inf, i)->x509 != NULL;
	sk_X509_INFO_pop_free(inf, X509_INFO_free);
	if (ncert == 0)
		return conf_pem_fail(f, err, errlen, "no PEM certificate in it");
	return 0;
}

/* A key that asks for a passphrase: the sidecar has none to give. */
static int conf_pem_no_pass(char *buf, int size, int rwflag, void *u)
{
	*(int *)u = 1;
	return -1;
}

/* The client certificate and its key, read as SSL_CTX_use_certificate_chain_file
 * and SSL_CTX_use_PrivateKey_file will, and checked to be a pair. */
static int conf_check_pair(const struct conf_pem *cf, const struct conf_pem *kf, char *err,
			   size_t errlen)
{
	char why[SR_ESC_SIZE(256) + 64], pbuf[SR_ESC_SIZE(256)];
	X509 *cert = NULL;
	EVP_PKEY *pkey = NULL;
	BIO *bio;
	int rc = SR_EINVAL, encrypted = 0;

	if (!(bio = conf_pem_read(cf, err, errlen)))
		return SR_EINVAL;
	ERR_clear_error();
	cert = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!cert)
		return conf_pem_fail_ssl(cf, err, errlen, "no PEM certificate in it");
	if (!(bio = conf_pem_read(kf, err, errlen)))
		goto out;
	pkey = PEM_read_bio_PrivateKey(bio, NULL, conf_pem_no_pass, &encrypted);
	BIO_free(bio);
	if (!pkey) {
		if (encrypted)
			conf_pem_fail(kf, err, errlen,
				      "the key is encrypted; the sidecar needs it unencrypted");
		else
			conf_pem_fail_ssl(kf, err, errlen, "no PEM private key in it");
		goto out;
	}
	if (X509_check_private_key(cert, pkey) != 1) {
		snprintf(why, sizeof(why), "it does not match certificate %s (tunnel.tls.cert)",
			 sr_esc_n(cf->path, 256, pbuf, sizeof(pbuf)));
		conf_pem_fail(kf, err, errlen, why);
		goto out;
	}
	rc = 0;
out:
	EVP_PKEY_free(pkey);
	X509_free(cert);
	ERR_clear_error();
	return rc;
}

/* The folder a file the sidecar writes goes into exists: it makes none, and
 * found out only at the first lease ("cannot write Spark settings: <its
 * temporary file>: No such file or directory"). */
static int conf_check_out_dir(const char *path, const char *key, char *err, size_t errlen)
{
	char copy[PATH_MAX], esc[SR_ESC_SIZE(200)];
	struct stat st;

	if ((size_t)snprintf(copy, sizeof(copy), "%s", path) >= sizeof(copy))
		return 0; /* the write says what is wrong */
	if (stat(dirname(copy), &st) != 0) {
		sr_seterr(err, errlen, "the folder of %s (%s) %s: %s",
			  sr_esc_n(path, 200, esc, sizeof(esc)), key,
			  errno == ENOENT ? "does not exist" : "cannot be read",
			  strerror(errno));
		return SR_EINVAL;
	}
	if (!S_ISDIR(st.st_mode)) {
		sr_seterr(err, errlen, "the folder of %s (%s) is not a folder",
			  sr_esc_n(path, 200, esc, sizeof(esc)), key);
		return SR_EINVAL;
	}
	return 0;
}

int conf_check_tunnel_files(const struct sidecar_opts *s, char *err, size_t errlen)
{
	const struct conf_pem ca = {"CA", s->ca_file, "tunnel.tls.ca"};
	const struct conf_pem cert = {"certificate", s->cert_file, "tunnel.tls.cert"};
	const struct conf_pem key = {"key", s->key_file, "tunnel.tls.key"};
	const struct {
		const char *path, *key;
	} outs[] = {{s->spark_conf_path, "tunnel.spark_conf"},
		    {s->spark_json_path, "tunnel.spark_json"},
		    {s->spark_defaults_path, "tunnel.spark_defaults"},
		    {s->status_path, "tunnel.status_file"},
		    {s->state_path, "tunnel.state_file"}};
	int rc;

	for (size_t i = 0; i < sizeof(outs) / sizeof(outs[0]); i++)
		if (outs[i].path && *outs[i].path &&
		    (rc = conf_check_out_dir(outs[i].path, outs[i].key, err, errlen)) != 0)
			return rc;
	if (s->ca_file && (rc = conf_check_ca(&ca, err, errlen)) != 0)
		return rc;
	if (s->cert_file && s->key_file)
		return conf_check_pair(&cert, &key, err, errlen);
	return 0;
}
