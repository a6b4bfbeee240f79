/* What each tenant holds, to hold it to its limits: every lease is on its
 * tenant's list (by name, so a reload that keeps the name keeps the count),
 * and a question about a tenant walks that tenant's leases only. */
#include "relay/relay_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <stdlib.h>
#include <string.h>

void relay_tenant_limits(const struct relay *r, const struct relay_pol *pol,
			  const struct relay_tenant_cfg *tc, struct relay_tenant_limits *tl)
{
	memset(tl, 0, sizeof(*tl));
	if (pol->implicit_tenants) {
		tl->leases = r->o->default_tenant.leases;
		tl->connections = r->o->default_tenant.connections;
		tl->pending = r->o->default_tenant.pending;
	} else if (tc) {
		tl->leases = tc->max_leases;
		tl->connections = tc->max_connections;
		tl->pending = tc->max_pending;
	}
}

/* Executor connections a lease holds: carried now (through a tunnel here,
 * or to another relay), or waiting for a tunnel. */
uint64_t relay_lease_conns(const struct relay_lease_ext *lx)
{
	uint64_t n = (uint64_t)lx->npending + lx->ncarried;

	for (const struct relay_tunnel *t = lx->tunnel; t; t = t->lnext)
		if (t->conn)
			n += tun_conn_nstreams(t->conn);
	return n;
}

static struct relay_tenant_acct *acct_find(struct relay *r, const char *name)
{
	for (struct relay_tenant_acct *a = r->tenants; a; a = a->next)
		if (strcmp(a->name, name) == 0)
			return a;
	return NULL;
}

int relay_tenant_add(struct relay *r, struct relay_lease_ext *lx)
{
	struct relay_tenant_acct *a = acct_find(r, lx->tenant_name);

	if (!a) {
		a = calloc(1, sizeof(*a));
		if (!a)
			return SR_ENOMEM;
		snprintf(a->name, sizeof(a->name), "%s", lx->tenant_name);
		a->next = r->tenants;
		r->tenants = a;
	}
	lx->acct = a;
	lx->tprev = NULL;
	lx->tnext = a->leases;
	if (a->leases)
		a->leases->tprev = lx;
	a->leases = lx;
	a->nleases++;
	return 0;
}

void relay_tenant_remove(struct relay *r, struct relay_lease_ext *lx)
{
	struct relay_tenant_acct *a = lx->acct, **pp;

	if (!a)
		return;
	if (lx->tprev)
		lx->tprev->tnext = lx->tnext;
	else
		a->leases = lx->tnext;
	if (lx->tnext)
		lx->tnext->tprev = lx->tprev;
	lx->acct = NULL;
	lx->tnext = lx->tprev = NULL;
	if (--a->nleases > 0)
		return;
	for (pp = &r->tenants; *pp && *pp != a; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = a->next;
	free(a);
}

void relay_tenant_usage(struct relay *r, const char *tenant, const char *idkey,
			const struct sockaddr *src, const struct relay_pool_rt *pool,
			struct relay_tenant_usage *u)
{
	struct relay_tenant_acct *a = acct_find(r, tenant);

	memset(u, 0, sizeof(*u));
	u->tenant = tenant;
	if (!a)
		return;
	u->leases = a->nleases;
	for (struct relay_lease_ext *lx = a->leases; lx; lx = lx->tnext) {
		u->conns += relay_lease_conns(lx);
		if (lx->tunnel)
			continue;
		u->grace++;
		if (pool && lx->pool != pool)
			continue;
		if (!u->oldest || lx->detached_us < u->oldest->detached_us)
			u->oldest = lx;
		if (idkey && strcmp(lx->idkey, idkey) == 0 &&
		    relay_same_source((const struct sockaddr *)&lx->src, src) &&
		    (!u->oldest_mine || lx->detached_us < u->oldest_mine->detached_us))
			u->oldest_mine = lx;
	}
}
