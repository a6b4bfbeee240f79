/* Read-only views of leases and tunnels, and revoke, for the admin API. */
#include "relay/relay_view.h"
#include "relay/relay_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <string.h>

struct lease_visit {
	void (*fn)(const struct relay_lease_view *v, void *arg);
	void *arg;
	const char *pool;
};

static void visit_lease(struct relay_lease *l, void *arg)
{
	struct lease_visit *lv = arg;
	struct relay_lease_ext *lx = relay_lease_data(l);
	struct relay_lease_view v;
	struct tun_ctl_msg m;

	memset(&v, 0, sizeof(v));
	memset(&m, 0, sizeof(m));
	relay_lease_describe(l, &m);
	v.id = relay_lease_id(l);
	v.app = relay_lease_app(l);
	v.host = m.host;
	v.pool = lv->pool;
	v.tenant = lx ? lx->tenant_name : "";
	v.route = lx ? lx->route_name : "";
	for (int i = 0; i < TUN_PORT_MAX; i++)
		v.ports[i] = relay_lease_port(l, (enum tun_port_role)i);
	v.attached = lx && lx->tunnel;
	v.peer = v.attached ? lx->tunnel->peer : "";
	v.npending = lx ? lx->npending : 0;
	v.conns_total = lx ? lx->conns_total : 0;
	v.driver_refused = lx ? lx->driver_refused : 0;
	v.conns_active = v.attached && lx->tunnel->conn ? tun_conn_nstreams(lx->tunnel->conn) : 0;
	lv->fn(&v, lv->arg);
}

void relay_foreach_lease(struct relay *r, void (*fn)(const struct relay_lease_view *v, void *arg),
			 void *arg)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct lease_visit lv = {fn, arg, pr->name};
		relay_lease_foreach(pr->t, visit_lease, &lv);
	}
}

void relay_foreach_session(struct relay *r,
			   void (*fn)(const struct relay_session_view *v, void *arg), void *arg)
{
	uint64_t now = sr_now_us();

	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		struct relay_session_view v;
		memset(&v, 0, sizeof(v));
		v.peer = t->peer;
		v.identity = t->identity;
		v.tenant = t->lx ? t->lx->tenant_name : "";
		v.lease = t->lx ? relay_lease_id(t->lx->lease) : "";
		v.age_ms = (now - t->started_us) / 1000u;
		if (t->conn)
			tun_conn_get_stats(t->conn, &v.st);
		fn(&v, arg);
	}
}

int relay_revoke_lease(struct relay *r, const char *id)
{
	struct relay_lease *l = relay_find_id(r, id);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;

	if (!lx)
		return SR_ENOTFOUND;
	if (relay_handover_busy(r))
		return SR_EBUSY; /* frozen: the lease may be the new relay's already */
	SR_INFO(relay_lease_id(l), "lease revoked by an operator");
	if (lx->tunnel) {
		struct relay_tunnel *t = lx->tunnel;
		struct tun_ctl_msg m;
		relay_tunnel_unlink_lease(t);
		memset(&m, 0, sizeof(m));
		m.type = TUN_CTL_ERROR;
		snprintf(m.code, sizeof(m.code), "revoked");
		snprintf(m.message, sizeof(m.message), "lease revoked by the relay operator");
		tun_conn_send_ctl(t->conn, &m);
		tun_conn_close(t->conn, 0);
	}
	relay_release_lease(lx);
	return 0;
}
