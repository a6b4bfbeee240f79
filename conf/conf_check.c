/* Checks that span several keys, run once the file and the environment are
 * applied: order between two settings (port_min <= port_max...), settings
 * that need another (require_client_cert needs client_ca), and the relay's
 * pools, tenants and routes compiled with relay_policy as the relay will. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <string.h>

#include "common/sr_err.h"
#include "relay/relay_policy.h"

/* Report a relay_policy_new message, "relay.routes[2].pool: no pool ...",
 * with the location of its path; when that array came from the
 * environment, name the variable instead. */
static int conf_fail_policy(const char *msg, struct conf_ctx *ctx)
{
	char path[CONF_PATH_MAX], name[CONF_PATH_MAX + 16], top[CONF_PATH_MAX];
	const char *colon = strstr(msg, ": ");
	size_t i, plen;
	int rc;

	/* relay_policy_new has only its message to tell allocation failure */
	if (strcmp(msg, "relay policy: out of memory") == 0)
		return conf_nomem(ctx);
	if (!colon || (size_t)(colon - msg) >= sizeof(path))
		return conf_fail(ctx, NULL, "%s", msg);
	memcpy(path, msg, (size_t)(colon - msg));
	path[colon - msg] = '\0';
	for (i = 0; i < conf_relay_group.n; i++) {
		const struct conf_entry *e = &conf_relay_group.e[i];

		if (e->type != CONF_ARRAY || conf_given(ctx, e) != 2)
			continue;
		conf_join(top, sizeof(top), "relay", e->key);
		plen = strlen(top);
		if (strncmp(path, top, plen) == 0 && (path[plen] == '[' || !path[plen])) {
			conf_env_name(top, name, sizeof(name));
			ctx->env = name;
			rc = conf_fail(ctx, path, "%s", colon + 2);
			ctx->env = NULL;
			return rc;
		}
	}
	return conf_fail(ctx, path, "%s", colon + 2);
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

int conf_check_relay(const struct relay_opts *r, struct conf_ctx *ctx)
{
	char msg[512], q[CONF_GOT_MAX + 16];
	struct relay_policy *pol;
	int rc;

	if ((rc = conf_check_required(&conf_relay_group, r, "relay", NULL, ctx)) != 0 ||
	    (rc = conf_check_excl(&conf_relay_group, r, "relay", ctx)) != 0)
		return rc;
	if (r->pool.port_min > r->pool.port_max)
		return conf_fail(ctx, "relay.pool.port_min",
				 "must be at most relay.pool.port_max (%u) (got %u)",
				 r->pool.port_max, r->pool.port_min);
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
	/* pools, tenants and routes refer to each other: compile them as the
	 * relay will, so that check-config catches what the relay would refuse */
	if (!(pol = relay_policy_new(&r->policy, &r->pool, msg, sizeof(msg))))
		return conf_fail_policy(msg, ctx);
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
