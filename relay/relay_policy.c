/* The routing policy: an immutable, deep copy of pools, tenants and routes,
 * checked once by relay_policy_compile, so that lookups on the registration and
 * accept paths never fail for a reason other than "no match".
 *
 * Matching rules, also stated in docs/configuration.md:
 * - Patterns are compared byte for byte (case-sensitive); '*' matches any
 *   run of bytes, '/' and '.' included; there is no other metacharacter.
 * - A tenant fits when any of its matchers fits: a CN pattern against the
 *   certificate CN, a SAN pattern against any of the first RP_MAX_SANS SANs,
 *   or the SHA-256 of the bearer token against any token_sha256. A missing or
 *   empty CN, SAN or token fits nothing, not even "*".
 * - Subjects longer than RP_SUBJECT_MAX bytes fit no pattern, which bounds
 *   the glob's work to RP_SUBJECT_MAX * pattern length steps. */
#include "relay/relay_policy.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/sr_cidr.h"
#include "common/sr_err.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#define RP_DEFAULT "default" /* the implicit tenant, route and single pool */
#define RP_SUBJECT_MAX 1024
#define RP_MAX_SANS 64
#define RP_SHA256_LEN 32
#define RP_QUOTE_MAX 80 /* characters of a name or subject quoted back */

struct rp_tenant {
	struct relay_tenant_cfg cfg; /* deep copy */
	uint8_t token[RELAY_MAX_MATCH][RP_SHA256_LEN];
};

struct rp_route {
	struct relay_route_cfg cfg; /* deep copy; tenant and pool are never NULL */
	int tenant;		    /* index into tenants, -1 = any */
	int pool;		    /* index into pools */
	struct sr_cidr sidecar[RELAY_MAX_CIDRS];
	struct sr_cidr executor[RELAY_MAX_CIDRS];
};

struct relay_policy {
	struct relay_pool_cfg pools[RELAY_MAX_POOLS];
	unsigned npools;
	int pools_implicit;	   /* pools[0] is the default pool (relay.pool) */
	struct rp_tenant *tenants; /* at least one: the implicit tenant */
	unsigned ntenants;
	int tenants_implicit;
	struct rp_route *routes; /* at least one: the implicit route */
	unsigned nroutes;
	int routes_implicit;
};

/* ---- small helpers ---- */

/* s for a one-line message: control characters as '?', long values cut
 * (a character cut in two as '?': the message must stay valid UTF-8 to be
 * sent to the sidecar or put in JSON). */
static const char *rp_q(const char *s, char *buf, size_t len)
{
	size_t i, o = 0;

	if (!s)
		s = "";
	for (i = 0; s[i] && i < RP_QUOTE_MAX && o + 4 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[o++] = (char)c;
	}
	buf[o] = '\0';
	sr_mask_ctl(buf);
	if (s[i] && o + 4 < len)
		memcpy(buf + o, "...", 4);
	return buf;
}

/* Glob with '*' only, iterative with one backtrack point: the classic
 * greedy algorithm, O(|pat| * |s|) steps, no recursion. */
static int rp_glob(const char *pat, const char *s)
{
	const char *star = NULL, *resume = NULL;

	if (!s || strlen(s) > RP_SUBJECT_MAX)
		return 0;
	while (*s) {
		if (*pat == '*') {
			star = pat++;
			resume = s;
		} else if (*pat == *s) {
			pat++;
			s++;
		} else if (star) {
			pat = star + 1;
			s = ++resume;
		} else {
			return 0;
		}
	}
	while (*pat == '*')
		pat++;
	return *pat == '\0';
}

static int rp_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* 64 hex digits (either case) into 32 bytes. */
static int rp_unhex_sha256(const char *s, uint8_t out[RP_SHA256_LEN])
{
	size_t i;

	if (!s || strlen(s) != 2 * RP_SHA256_LEN)
		return -1;
	for (i = 0; i < RP_SHA256_LEN; i++) {
		int hi = rp_hexval(s[2 * i]), lo = rp_hexval(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static const char *const rp_list_path[] = {
    [RELAY_POLICY_POOL] = "relay.pool",
    [RELAY_POLICY_POOLS] = "relay.pools",
    [RELAY_POLICY_TENANTS] = "relay.tenants",
    [RELAY_POLICY_ROUTES] = "relay.routes",
};

/* Fill e: what (kind), where (list, index, and field below the element, or
 * NULL for the element or list itself) and the rule broken. */
static int rp_fail(struct relay_policy_err *e, enum relay_policy_errkind kind,
		   enum relay_policy_list list, int index, const char *field, const char *fmt,
		   ...) __attribute__((format(printf, 6, 7)));
static int rp_fail(struct relay_policy_err *e, enum relay_policy_errkind kind,
		   enum relay_policy_list list, int index, const char *field, const char *fmt,
		   ...)
{
	char elem[16] = "";
	va_list ap;

	e->kind = kind;
	e->list = list;
	e->index = index;
	if (index >= 0)
		snprintf(elem, sizeof(elem), "[%d]", index);
	snprintf(e->path, sizeof(e->path), "%s%s%s%s", rp_list_path[list], elem,
		 field ? "." : "", field ? field : "");
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

/* "name[k]", for a field that is an item of a list. */
static const char *rp_item(char *buf, size_t len, const char *name, unsigned k)
{
	snprintf(buf, len, "%s[%u]", name, k);
	return buf;
}

static int rp_dup(char **dst, const char *src)
{
	*dst = NULL;
	if (src && !(*dst = strdup(src)))
		return SR_ENOMEM;
	return 0;
}

static int rp_dup_list(char **dst, char *const *src, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		if (rp_dup(&dst[i], src[i]) != 0)
			return SR_ENOMEM;
	return 0;
}

static void rp_free_list(char **l, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		free(l[i]);
}

/* ---- compile ---- */

static int rp_pool_prefix(const struct relay_policy *p, unsigned i, char *buf, size_t len)
{
	if (p->pools_implicit)
		return snprintf(buf, len, "relay.pool");
	return snprintf(buf, len, "relay.pools[%u]", i);
}

/* Two bind addresses that the kernel would not let hold the same port at
 * once: equal, a family's wildcard against an address of that family, or
 * "::" against anything (lease sockets are dual-stack: IPV6_V6ONLY is off). */
static int rp_bind_conflict(const struct sr_cidr *a, const struct sr_cidr *b)
{
	static const uint8_t zero[16];
	int a_any = memcmp(a->addr, zero, 16) == 0, b_any = memcmp(b->addr, zero, 16) == 0;

	if ((a->family == AF_INET6 && a_any) || (b->family == AF_INET6 && b_any))
		return 1;
	if (a->family != b->family)
		return 0;
	return a_any || b_any || memcmp(a->addr, b->addr, 16) == 0;
}

static int rp_compile_pools(struct relay_policy *p, const struct relay_policy_opts *o,
			    const struct relay_pool_opts *def, struct relay_policy_err *e)
{
	struct sr_cidr bind[RELAY_MAX_POOLS];
	char at[40], at2[40], q[RP_QUOTE_MAX + 8], q2[RP_QUOTE_MAX + 8];
	enum relay_policy_list pl;
	unsigned i, j;
	int pi;

	if (o->npools > RELAY_MAX_POOLS)
		return rp_fail(e, RELAY_POLICY_ERR_TOO_MANY, RELAY_POLICY_POOLS, -1, NULL,
			       "at most %d entries (got %u)", RELAY_MAX_POOLS, o->npools);
	if (o->npools == 0 && !def)
		return rp_fail(e, RELAY_POLICY_ERR_MISSING, RELAY_POLICY_POOL, -1, NULL,
			       "no pool is configured");
	p->pools_implicit = o->npools == 0;
	p->npools = p->pools_implicit ? 1 : o->npools;
	for (i = 0; i < p->npools; i++) {
		const struct relay_pool_opts *src = p->pools_implicit ? def : &o->pools[i].pool;
		struct relay_pool_cfg *dst = &p->pools[i];

		/* the strings are duplicated below; never free the caller's */
		dst->pool = *src;
		dst->pool.bind_address = dst->pool.advertise_host = NULL;
		if (rp_dup(&dst->name, p->pools_implicit ? RP_DEFAULT : o->pools[i].name) !=
			0 ||
		    rp_dup(&dst->pool.bind_address, src->bind_address) != 0 ||
		    rp_dup(&dst->pool.advertise_host, src->advertise_host) != 0)
			return SR_ENOMEM;
	}
	for (i = 0; i < p->npools; i++) {
		const struct relay_pool_cfg *pc = &p->pools[i];

		pl = p->pools_implicit ? RELAY_POLICY_POOL : RELAY_POLICY_POOLS;
		pi = p->pools_implicit ? -1 : (int)i;
		rp_pool_prefix(p, i, at, sizeof(at));
		if (!pc->name || !*pc->name)
			return rp_fail(e, RELAY_POLICY_ERR_MISSING, pl, pi, "name",
				       "must be set");
		for (j = 0; j < i; j++)
			if (strcmp(p->pools[j].name, pc->name) == 0)
				return rp_fail(e, RELAY_POLICY_ERR_DUPLICATE, pl, pi, "name",
					       "duplicate name \"%s\" (also relay.pools[%u])",
					       rp_q(pc->name, q, sizeof(q)), j);
		if (!pc->pool.bind_address)
			return rp_fail(e, RELAY_POLICY_ERR_MISSING, pl, pi, "bind",
				       "must be set (a numeric IPv4 or IPv6 address)");
		if (sr_cidr_parse(pc->pool.bind_address, &bind[i], NULL) != 0 ||
		    strchr(pc->pool.bind_address, '/'))
			return rp_fail(e, RELAY_POLICY_ERR_INVALID, pl, pi, "bind",
				       "must be a numeric IPv4 or IPv6 address (got \"%s\")",
				       rp_q(pc->pool.bind_address, q, sizeof(q)));
		if (pc->pool.port_min < 1 || pc->pool.port_min > 65535)
			return rp_fail(e, RELAY_POLICY_ERR_INVALID, pl, pi, "port_min",
				       "must be 1..65535 (got %u)", pc->pool.port_min);
		if (pc->pool.port_max < 1 || pc->pool.port_max > 65535)
			return rp_fail(e, RELAY_POLICY_ERR_INVALID, pl, pi, "port_max",
				       "must be 1..65535 (got %u)", pc->pool.port_max);
		if (pc->pool.port_min > pc->pool.port_max)
			return rp_fail(e, RELAY_POLICY_ERR_CONFLICT, pl, pi, "port_min",
				       "must be at most %s.port_max (%u) (got %u)", at,
				       pc->pool.port_max, pc->pool.port_min);
		for (j = 0; j < i; j++) {
			const struct relay_pool_cfg *pj = &p->pools[j];

			if (!rp_bind_conflict(&bind[i], &bind[j]) ||
			    pc->pool.port_max < pj->pool.port_min ||
			    pj->pool.port_max < pc->pool.port_min)
				continue;
			rp_pool_prefix(p, j, at2, sizeof(at2));
			return rp_fail(e, RELAY_POLICY_ERR_CONFLICT, pl, pi, NULL,
				       "ports %u..%u on %s overlap %s \"%s\" (ports %u..%u "
				       "on %s)",
				       pc->pool.port_min, pc->pool.port_max,
				       pc->pool.bind_address, at2,
				       rp_q(pj->name, q2, sizeof(q2)), pj->pool.port_min,
				       pj->pool.port_max, pj->pool.bind_address);
		}
	}
	return 0;
}

static int rp_compile_tenants(struct relay_policy *p, const struct relay_policy_opts *o,
			      struct relay_policy_err *e)
{
	const enum relay_policy_list tl = RELAY_POLICY_TENANTS;
	char q[RP_QUOTE_MAX + 8], f[48];
	unsigned i, j, k;

	if (o->ntenants > RELAY_MAX_TENANTS)
		return rp_fail(e, RELAY_POLICY_ERR_TOO_MANY, tl, -1, NULL,
			       "at most %d entries (got %u)", RELAY_MAX_TENANTS, o->ntenants);
	p->tenants_implicit = o->ntenants == 0;
	p->ntenants = p->tenants_implicit ? 1 : o->ntenants;
	if (!(p->tenants = calloc(p->ntenants, sizeof(*p->tenants))))
		return SR_ENOMEM;
	if (p->tenants_implicit)
		return rp_dup(&p->tenants[0].cfg.name, RP_DEFAULT);
	for (i = 0; i < o->ntenants; i++) {
		const struct relay_tenant_cfg *src = &o->tenants[i];
		struct rp_tenant *t = &p->tenants[i];

		if (src->ncn > RELAY_MAX_MATCH || src->nsan > RELAY_MAX_MATCH ||
		    src->ntoken > RELAY_MAX_MATCH)
			return rp_fail(e, RELAY_POLICY_ERR_TOO_MANY, tl, (int)i, "match",
				       "at most %d patterns or hashes of each kind",
				       RELAY_MAX_MATCH);
		t->cfg = *src;
		memset(t->cfg.cn, 0, sizeof(t->cfg.cn));
		memset(t->cfg.san, 0, sizeof(t->cfg.san));
		memset(t->cfg.token_sha256, 0, sizeof(t->cfg.token_sha256));
		t->cfg.name = NULL;
		if (rp_dup(&t->cfg.name, src->name) != 0 ||
		    rp_dup_list(t->cfg.cn, src->cn, src->ncn) != 0 ||
		    rp_dup_list(t->cfg.san, src->san, src->nsan) != 0 ||
		    rp_dup_list(t->cfg.token_sha256, src->token_sha256, src->ntoken) != 0)
			return SR_ENOMEM;
		if (!t->cfg.name || !*t->cfg.name)
			return rp_fail(e, RELAY_POLICY_ERR_MISSING, tl, (int)i, "name",
				       "must be set");
		if (strcmp(t->cfg.name, "*") == 0)
			return rp_fail(e, RELAY_POLICY_ERR_INVALID, tl, (int)i, "name",
				       "\"*\" is reserved (a route's \"any tenant\")");
		for (j = 0; j < i; j++)
			if (strcmp(p->tenants[j].cfg.name, t->cfg.name) == 0)
				return rp_fail(e, RELAY_POLICY_ERR_DUPLICATE, tl, (int)i,
					       "name",
					       "duplicate name \"%s\" (also relay.tenants[%u])",
					       rp_q(t->cfg.name, q, sizeof(q)), j);
		if (t->cfg.ncn + t->cfg.nsan + t->cfg.ntoken == 0)
			return rp_fail(e, RELAY_POLICY_ERR_MISSING, tl, (int)i, "match",
				       "needs at least one cn, san or token_sha256 (tenant "
				       "\"%s\" would match no sidecar)",
				       rp_q(t->cfg.name, q, sizeof(q)));
		for (k = 0; k < t->cfg.ncn; k++)
			if (!t->cfg.cn[k] || !*t->cfg.cn[k])
				return rp_fail(e, RELAY_POLICY_ERR_INVALID, tl, (int)i,
					       rp_item(f, sizeof(f), "match.cn", k),
					       "empty pattern");
		for (k = 0; k < t->cfg.nsan; k++)
			if (!t->cfg.san[k] || !*t->cfg.san[k])
				return rp_fail(e, RELAY_POLICY_ERR_INVALID, tl, (int)i,
					       rp_item(f, sizeof(f), "match.san", k),
					       "empty pattern");
		for (k = 0; k < t->cfg.ntoken; k++)
			if (rp_unhex_sha256(t->cfg.token_sha256[k], t->token[k]) != 0)
				return rp_fail(
				    e, RELAY_POLICY_ERR_INVALID, tl, (int)i,
				    rp_item(f, sizeof(f), "match.token_sha256", k),
				    "must be 64 hex digits, the SHA-256 of the token (got %zu "
				    "characters)",
				    t->cfg.token_sha256[k] ? strlen(t->cfg.token_sha256[k])
							   : 0);
	}
	return 0;
}

static int rp_find_tenant(const struct relay_policy *p, const char *name)
{
	unsigned i;

	for (i = 0; i < p->ntenants; i++)
		if (strcmp(p->tenants[i].cfg.name, name) == 0)
			return (int)i;
	return -1;
}

static int rp_find_pool(const struct relay_policy *p, const char *name)
{
	unsigned i;

	for (i = 0; i < p->npools; i++)
		if (strcmp(p->pools[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* The CIDR list `name` of route i. */
static int rp_compile_cidrs(struct sr_cidr *dst, char *const *src, unsigned n, unsigned i,
			    const char *name, struct relay_policy_err *e)
{
	char q[RP_QUOTE_MAX + 8], f[48];
	unsigned k;

	for (k = 0; k < n; k++)
		if (sr_cidr_parse(src[k], &dst[k], NULL) != 0)
			return rp_fail(e, RELAY_POLICY_ERR_INVALID, RELAY_POLICY_ROUTES, (int)i,
				       rp_item(f, sizeof(f), name, k),
				       "must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or "
				       "fd00::/8 (got \"%s\")",
				       rp_q(src[k], q, sizeof(q)));
	return 0;
}

static int rp_compile_routes(struct relay_policy *p, const struct relay_policy_opts *o,
			     struct relay_policy_err *e)
{
	const enum relay_policy_list rl = RELAY_POLICY_ROUTES;
	char q[RP_QUOTE_MAX + 8];
	unsigned i, j;
	int rc;

	if (o->nroutes > RELAY_MAX_ROUTES)
		return rp_fail(e, RELAY_POLICY_ERR_TOO_MANY, rl, -1, NULL,
			       "at most %d entries (got %u)", RELAY_MAX_ROUTES, o->nroutes);
	p->routes_implicit = o->nroutes == 0;
	p->nroutes = p->routes_implicit ? 1 : o->nroutes;
	if (!(p->routes = calloc(p->nroutes, sizeof(*p->routes))))
		return SR_ENOMEM;
	if (p->routes_implicit) {
		p->routes[0].tenant = -1;
		p->routes[0].pool = 0;
		if (rp_dup(&p->routes[0].cfg.name, RP_DEFAULT) != 0 ||
		    rp_dup(&p->routes[0].cfg.tenant, "*") != 0 ||
		    rp_dup(&p->routes[0].cfg.pool, p->pools[0].name) != 0)
			return SR_ENOMEM;
		return 0;
	}
	for (i = 0; i < o->nroutes; i++) {
		const struct relay_route_cfg *src = &o->routes[i];
		struct rp_route *r = &p->routes[i];

		if (src->nsidecar_cidrs > RELAY_MAX_CIDRS ||
		    src->nexecutor_cidrs > RELAY_MAX_CIDRS)
			return rp_fail(e, RELAY_POLICY_ERR_TOO_MANY, rl, (int)i, NULL,
				       "at most %d CIDRs in each list", RELAY_MAX_CIDRS);
		r->cfg = *src;
		memset(r->cfg.sidecar_cidrs, 0, sizeof(r->cfg.sidecar_cidrs));
		memset(r->cfg.executor_cidrs, 0, sizeof(r->cfg.executor_cidrs));
		r->cfg.name = r->cfg.tenant = r->cfg.app = r->cfg.pool = NULL;
		/* a NULL tenant is any tenant, a NULL pool the first pool */
		if (rp_dup(&r->cfg.name, src->name) != 0 ||
		    rp_dup(&r->cfg.tenant, src->tenant ? src->tenant : "*") != 0 ||
		    rp_dup(&r->cfg.app, src->app) != 0 ||
		    rp_dup(&r->cfg.pool, src->pool ? src->pool : p->pools[0].name) != 0 ||
		    rp_dup_list(r->cfg.sidecar_cidrs, src->sidecar_cidrs,
				src->nsidecar_cidrs) != 0 ||
		    rp_dup_list(r->cfg.executor_cidrs, src->executor_cidrs,
				src->nexecutor_cidrs) != 0)
			return SR_ENOMEM;
		if (!r->cfg.name || !*r->cfg.name)
			return rp_fail(e, RELAY_POLICY_ERR_MISSING, rl, (int)i, "name",
				       "must be set");
		for (j = 0; j < i; j++)
			if (strcmp(p->routes[j].cfg.name, r->cfg.name) == 0)
				return rp_fail(e, RELAY_POLICY_ERR_DUPLICATE, rl, (int)i,
					       "name",
					       "duplicate name \"%s\" (also relay.routes[%u])",
					       rp_q(r->cfg.name, q, sizeof(q)), j);
		if (strcmp(r->cfg.tenant, "*") == 0) {
			r->tenant = -1;
		} else if ((r->tenant = rp_find_tenant(p, r->cfg.tenant)) < 0) {
			return rp_fail(e, RELAY_POLICY_ERR_UNKNOWN_REF, rl, (int)i, "tenant",
				       "no tenant \"%s\"%s", rp_q(r->cfg.tenant, q, sizeof(q)),
				       p->tenants_implicit
					   ? " (no tenants are configured: the only tenant "
					     "is \"" RP_DEFAULT "\")"
					   : "");
		}
		if ((r->pool = rp_find_pool(p, r->cfg.pool)) < 0)
			return rp_fail(e, RELAY_POLICY_ERR_UNKNOWN_REF, rl, (int)i, "pool",
				       "no pool \"%s\"%s", rp_q(r->cfg.pool, q, sizeof(q)),
				       p->pools_implicit
					   ? " (relay.pools is empty: the only pool is "
					     "\"" RP_DEFAULT "\", from relay.pool)"
					   : "");
		rc = rp_compile_cidrs(r->sidecar, r->cfg.sidecar_cidrs, r->cfg.nsidecar_cidrs,
				      i, "sidecar_cidrs", e);
		if (rc == 0)
			rc = rp_compile_cidrs(r->executor, r->cfg.executor_cidrs,
					      r->cfg.nexecutor_cidrs, i, "executor_cidrs", e);
		if (rc != 0)
			return rc;
	}
	return 0;
}

struct relay_policy *relay_policy_compile(const struct relay_policy_opts *o,
					  const struct relay_pool_opts *default_pool,
					  struct relay_policy_err *err)
{
	static const struct relay_policy_opts empty;
	struct relay_policy_err scratch;
	struct relay_policy *p;
	int rc;

	if (!err)
		err = &scratch;
	memset(err, 0, sizeof(*err));
	err->index = -1;
	if (!o)
		o = &empty;
	if (!(p = calloc(1, sizeof(*p)))) {
		rc = SR_ENOMEM;
		goto fail;
	}
	if ((rc = rp_compile_pools(p, o, default_pool, err)) != 0 ||
	    (rc = rp_compile_tenants(p, o, err)) != 0 ||
	    (rc = rp_compile_routes(p, o, err)) != 0)
		goto fail;
	return p;
fail:
	if (rc == SR_ENOMEM) {
		memset(err, 0, sizeof(*err));
		err->kind = RELAY_POLICY_ERR_NOMEM;
		err->index = -1;
		snprintf(err->msg, sizeof(err->msg), "out of memory");
	}
	relay_policy_free(p);
	return NULL;
}

struct relay_policy *relay_policy_new(const struct relay_policy_opts *o,
				      const struct relay_pool_opts *default_pool, char *err,
				      size_t errlen)
{
	struct relay_policy_err e;
	struct relay_policy *p = relay_policy_compile(o, default_pool, &e);

	if (!p)
		sr_seterr(err, errlen, "%s: %s", e.path[0] ? e.path : "relay policy", e.msg);
	else if (err && errlen)
		err[0] = '\0';
	return p;
}

void relay_policy_free(struct relay_policy *p)
{
	unsigned i;

	if (!p)
		return;
	if (p->routes) {
		for (i = 0; i < p->nroutes; i++) {
			struct relay_route_cfg *c = &p->routes[i].cfg;

			free(c->name);
			free(c->tenant);
			free(c->app);
			free(c->pool);
			rp_free_list(c->sidecar_cidrs, RELAY_MAX_CIDRS);
			rp_free_list(c->executor_cidrs, RELAY_MAX_CIDRS);
		}
		free(p->routes);
	}
	if (p->tenants) {
		for (i = 0; i < p->ntenants; i++) {
			struct relay_tenant_cfg *c = &p->tenants[i].cfg;

			free(c->name);
			rp_free_list(c->cn, RELAY_MAX_MATCH);
			rp_free_list(c->san, RELAY_MAX_MATCH);
			rp_free_list(c->token_sha256, RELAY_MAX_MATCH);
		}
		free(p->tenants);
	}
	for (i = 0; i < RELAY_MAX_POOLS; i++) {
		free(p->pools[i].name);
		free(p->pools[i].pool.bind_address);
		free(p->pools[i].pool.advertise_host);
	}
	free(p);
}

/* ---- tenants ---- */

/* SHA-256 of the presented token; 0, or -1 if there is none to hash. */
static int rp_token_digest(const char *token, uint8_t out[RP_SHA256_LEN])
{
	unsigned int len = 0;

	if (!token || !*token)
		return -1;
	if (EVP_Digest(token, strlen(token), out, &len, EVP_sha256(), NULL) != 1 ||
	    len != RP_SHA256_LEN)
		return -1;
	return 0;
}

/* Does tenant t fit id? how says which matcher did. digest is NULL when no
 * token was presented. */
static int rp_tenant_fits(const struct rp_tenant *t, const struct relay_identity *id,
			  const uint8_t *digest, char *how, size_t howlen)
{
	char q1[RP_QUOTE_MAX + 8], q2[RP_QUOTE_MAX + 8];
	size_t s, nsans = id->sans ? id->nsans : 0;
	unsigned k;
	int hit = -1;

	if (nsans > RP_MAX_SANS)
		nsans = RP_MAX_SANS;
	if (id->cn && *id->cn) {
		for (k = 0; k < t->cfg.ncn; k++) {
			if (rp_glob(t->cfg.cn[k], id->cn)) {
				snprintf(how, howlen, "cn \"%s\" matches cn pattern \"%s\"",
					 rp_q(id->cn, q1, sizeof(q1)),
					 rp_q(t->cfg.cn[k], q2, sizeof(q2)));
				return 1;
			}
		}
	}
	for (s = 0; s < nsans; s++) {
		if (!id->sans[s] || !*id->sans[s])
			continue;
		for (k = 0; k < t->cfg.nsan; k++) {
			if (rp_glob(t->cfg.san[k], id->sans[s])) {
				snprintf(how, howlen, "san \"%s\" matches san pattern \"%s\"",
					 rp_q(id->sans[s], q1, sizeof(q1)),
					 rp_q(t->cfg.san[k], q2, sizeof(q2)));
				return 1;
			}
		}
	}
	if (digest) {
		/* every hash is compared, in constant time each */
		for (k = 0; k < t->cfg.ntoken; k++)
			if (CRYPTO_memcmp(digest, t->token[k], RP_SHA256_LEN) == 0 && hit < 0)
				hit = (int)k;
		if (hit >= 0) {
			snprintf(how, howlen, "the token's SHA-256 is token_sha256[%d]", hit);
			return 1;
		}
	}
	snprintf(how, howlen, "no cn, san or token matched");
	return 0;
}

static void rp_describe_identity(const struct relay_identity *id, char *buf, size_t len)
{
	char q[RP_QUOTE_MAX + 8];

	snprintf(buf, len, "cn %s%s%s, %zu san%s, %s", id->cn && *id->cn ? "\"" : "",
		 id->cn && *id->cn ? rp_q(id->cn, q, sizeof(q)) : "none",
		 id->cn && *id->cn ? "\"" : "", id->sans ? id->nsans : 0,
		 id->sans && id->nsans == 1 ? "" : "s",
		 id->token && *id->token ? "a token" : "no token");
}

int relay_policy_tenant(const struct relay_policy *p, const struct relay_identity *id,
			char *why, size_t whylen)
{
	static const struct relay_identity anon;
	uint8_t digest[RP_SHA256_LEN];
	char how[2 * RP_QUOTE_MAX + 64], who[RP_QUOTE_MAX + 64];
	int have_digest;
	unsigned i;

	if (why && whylen)
		why[0] = '\0';
	if (!why)
		whylen = 0;
	if (!p)
		return -1;
	if (!id)
		id = &anon;
	if (p->tenants_implicit) {
		snprintf(why, whylen,
			 "no tenants are configured: every sidecar is \"" RP_DEFAULT "\"");
		return 0;
	}
	have_digest = rp_token_digest(id->token, digest) == 0;
	for (i = 0; i < p->ntenants; i++) {
		if (rp_tenant_fits(&p->tenants[i], id, have_digest ? digest : NULL, how,
				   sizeof(how))) {
			snprintf(why, whylen, "%s", how);
			OPENSSL_cleanse(digest, sizeof(digest));
			return (int)i;
		}
	}
	OPENSSL_cleanse(digest, sizeof(digest));
	rp_describe_identity(id, who, sizeof(who));
	snprintf(why, whylen, "no tenant matches (%s)", who);
	return -1;
}

const char *relay_policy_tenant_name(const struct relay_policy *p, int tenant)
{
	if (!p || tenant < 0 || (unsigned)tenant >= p->ntenants)
		return NULL;
	return p->tenants[tenant].cfg.name;
}

const struct relay_tenant_cfg *relay_policy_tenant_cfg(const struct relay_policy *p, int tenant)
{
	if (!p || tenant < 0 || (unsigned)tenant >= p->ntenants)
		return NULL;
	return &p->tenants[tenant].cfg;
}

/* ---- routes ---- */

static int rp_cidrs_match(const struct sr_cidr *c, unsigned n, const struct sockaddr *addr)
{
	unsigned k;

	for (k = 0; k < n; k++)
		if (sr_cidr_match(&c[k], addr))
			return 1;
	return 0;
}

/* Does route r take this registration? why says why not. */
static int rp_route_fits(const struct relay_policy *p, const struct rp_route *r, int tenant,
			 const char *app, const struct sockaddr *sidecar, char *why,
			 size_t whylen)
{
	char q1[RP_QUOTE_MAX + 8], q2[RP_QUOTE_MAX + 8], a[SR_ADDRSTRLEN];

	if (r->tenant >= 0 && r->tenant != tenant) {
		snprintf(why, whylen, "for tenant \"%s\", not \"%s\"",
			 rp_q(r->cfg.tenant, q1, sizeof(q1)),
			 rp_q(p->tenants[tenant].cfg.name, q2, sizeof(q2)));
		return 0;
	}
	if (r->cfg.app && !rp_glob(r->cfg.app, app ? app : "")) {
		snprintf(why, whylen, "app \"%s\" does not match app pattern \"%s\"",
			 rp_q(app, q1, sizeof(q1)), rp_q(r->cfg.app, q2, sizeof(q2)));
		return 0;
	}
	if (r->cfg.nsidecar_cidrs > 0 &&
	    !rp_cidrs_match(r->sidecar, r->cfg.nsidecar_cidrs, sidecar)) {
		if (sidecar &&
		    (sidecar->sa_family == AF_INET || sidecar->sa_family == AF_INET6))
			snprintf(why, whylen, "sidecar address %s is outside sidecar_cidrs",
				 sr_format_addr(sidecar, a, sizeof(a)));
		else
			snprintf(why, whylen,
				 "sidecar address unknown, and the route has sidecar_cidrs");
		return 0;
	}
	snprintf(why, whylen, "matches");
	return 1;
}

int relay_policy_route(const struct relay_policy *p, int tenant, const char *app,
		       const struct sockaddr *sidecar, char *why, size_t whylen)
{
	char tmp[2 * RP_QUOTE_MAX + 64], q1[RP_QUOTE_MAX + 8], q2[RP_QUOTE_MAX + 8];
	unsigned i;

	if (why && whylen)
		why[0] = '\0';
	if (!why)
		whylen = 0;
	if (!p)
		return -1;
	if (tenant < 0 || (unsigned)tenant >= p->ntenants) {
		snprintf(why, whylen, "no such tenant (%d)", tenant);
		return -1;
	}
	for (i = 0; i < p->nroutes; i++) {
		if (rp_route_fits(p, &p->routes[i], tenant, app, sidecar, tmp, sizeof(tmp))) {
			if (p->routes_implicit)
				snprintf(why, whylen,
					 "no routes are configured: every tenant uses pool "
					 "\"%s\"",
					 rp_q(p->pools[0].name, q1, sizeof(q1)));
			else
				snprintf(why, whylen, "relay.routes[%u] \"%s\" matches", i,
					 rp_q(p->routes[i].cfg.name, q1, sizeof(q1)));
			return (int)i;
		}
	}
	snprintf(why, whylen, "no route matches tenant \"%s\", app \"%s\"",
		 rp_q(p->tenants[tenant].cfg.name, q1, sizeof(q1)), rp_q(app, q2, sizeof(q2)));
	return -1;
}

const char *relay_policy_route_name(const struct relay_policy *p, int route)
{
	if (!p || route < 0 || (unsigned)route >= p->nroutes)
		return NULL;
	return p->routes[route].cfg.name;
}

const struct relay_route_cfg *relay_policy_route_cfg(const struct relay_policy *p, int route)
{
	if (!p || route < 0 || (unsigned)route >= p->nroutes)
		return NULL;
	return &p->routes[route].cfg;
}

int relay_policy_tenant_find(const struct relay_policy *p, const char *name)
{
	for (unsigned i = 0; p && name && i < p->ntenants; i++) {
		if (p->tenants[i].cfg.name && strcmp(p->tenants[i].cfg.name, name) == 0)
			return (int)i;
	}
	return -1;
}

int relay_policy_route_find(const struct relay_policy *p, const char *name)
{
	for (unsigned i = 0; p && name && i < p->nroutes; i++) {
		if (p->routes[i].cfg.name && strcmp(p->routes[i].cfg.name, name) == 0)
			return (int)i;
	}
	return -1;
}

int relay_policy_route_pool(const struct relay_policy *p, int route)
{
	if (!p || route < 0 || (unsigned)route >= p->nroutes)
		return -1;
	return p->routes[route].pool;
}

size_t relay_policy_npools(const struct relay_policy *p)
{
	return p ? p->npools : 0;
}

const struct relay_pool_cfg *relay_policy_pool(const struct relay_policy *p, size_t i)
{
	if (!p || i >= p->npools)
		return NULL;
	return &p->pools[i];
}

int relay_policy_executor_allowed(const struct relay_policy *p, int route,
				  const struct sockaddr *addr)
{
	const struct rp_route *r;

	if (!p || route < 0 || (unsigned)route >= p->nroutes)
		return 0;
	r = &p->routes[route];
	if (r->cfg.nexecutor_cidrs == 0)
		return 1;
	return rp_cidrs_match(r->executor, r->cfg.nexecutor_cidrs, addr);
}

/* ---- explain ---- */

struct rp_out {
	char *buf;
	size_t len, n; /* n: bytes the whole text needs, like snprintf */
};

static void rp_printf(struct rp_out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void rp_printf(struct rp_out *o, const char *fmt, ...)
{
	size_t room = o->n < o->len ? o->len - o->n : 0;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(room ? o->buf + o->n : NULL, room, fmt, ap);
	va_end(ap);
	if (r > 0)
		o->n += (size_t)r;
}

static void rp_explain_pool(struct rp_out *o, const struct relay_policy *p, int pool)
{
	const struct relay_pool_cfg *pc = &p->pools[pool];
	char q[RP_QUOTE_MAX + 8], at[40];

	rp_pool_prefix(p, (unsigned)pool, at, sizeof(at));
	rp_printf(o, "pool \"%s\" (%s): ports %u..%u on %s, advertised as %s\n",
		  rp_q(pc->name, q, sizeof(q)), at, pc->pool.port_min, pc->pool.port_max,
		  pc->pool.bind_address,
		  pc->pool.advertise_host ? pc->pool.advertise_host : "(chosen by the relay)");
}

static void rp_explain_executors(struct rp_out *o, const struct rp_route *r)
{
	char c[SR_CIDR_STRLEN];
	unsigned k;

	if (r->cfg.nexecutor_cidrs == 0) {
		rp_printf(o, "executors: any address may connect\n");
		return;
	}
	rp_printf(o, "executors: only from");
	for (k = 0; k < r->cfg.nexecutor_cidrs; k++)
		rp_printf(o, "%s %s", k ? "," : "",
			  sr_cidr_format(&r->executor[k], c, sizeof(c)));
	rp_printf(o, "\n");
}

int relay_policy_explain(const struct relay_policy *p, const struct relay_identity *id,
			 const char *app, char *out, size_t outlen)
{
	static const struct relay_identity anon;
	struct rp_out o = {out, out ? outlen : 0, 0};
	char how[2 * RP_QUOTE_MAX + 64], who[RP_QUOTE_MAX + 64], q[RP_QUOTE_MAX + 8];
	char a[SR_ADDRSTRLEN];
	uint8_t digest[RP_SHA256_LEN];
	int tenant = -1, route = -1, have_digest;
	unsigned i;

	if (o.len)
		out[0] = '\0';
	if (!p)
		return 0;
	if (!id)
		id = &anon;
	rp_describe_identity(id, who, sizeof(who));
	rp_printf(&o, "sidecar: %s, app \"%s\", from %s\n", who, rp_q(app, q, sizeof(q)),
		  id->addr &&
			  (id->addr->sa_family == AF_INET || id->addr->sa_family == AF_INET6)
		      ? sr_format_addr(id->addr, a, sizeof(a))
		      : "an unknown address");

	if (p->tenants_implicit) {
		tenant = 0;
		rp_printf(
		    &o,
		    "tenant \"" RP_DEFAULT "\" (implicit: no tenants are configured, every "
		    "sidecar is this tenant; relay.auth_token, if set, is still checked)\n");
	} else {
		have_digest = rp_token_digest(id->token, digest) == 0;
		for (i = 0; i < p->ntenants && tenant < 0; i++) {
			int fits = rp_tenant_fits(
			    &p->tenants[i], id, have_digest ? digest : NULL, how, sizeof(how));

			if (fits) {
				tenant = (int)i;
				rp_printf(&o, "tenant \"%s\" (relay.tenants[%u]): %s\n",
					  rp_q(p->tenants[i].cfg.name, q, sizeof(q)), i, how);
			} else {
				rp_printf(&o, "  not tenant \"%s\" (relay.tenants[%u]): %s\n",
					  rp_q(p->tenants[i].cfg.name, q, sizeof(q)), i, how);
			}
		}
		OPENSSL_cleanse(digest, sizeof(digest));
		if (tenant < 0) {
			rp_printf(&o, "tenant: none matches: the registration is refused\n");
			return o.n > INT_MAX ? INT_MAX : (int)o.n;
		}
	}

	if (p->routes_implicit) {
		route = 0;
		rp_printf(&o,
			  "route \"" RP_DEFAULT "\" (implicit: no routes are configured, every "
			  "tenant gets the first pool and any executor may connect)\n");
	} else {
		for (i = 0; i < p->nroutes && route < 0; i++) {
			const struct rp_route *r = &p->routes[i];

			if (rp_route_fits(p, r, tenant, app, id->addr, how, sizeof(how))) {
				route = (int)i;
				rp_printf(&o,
					  "route \"%s\" (relay.routes[%u]): first route that "
					  "matches\n",
					  rp_q(r->cfg.name, q, sizeof(q)), i);
			} else {
				rp_printf(&o, "  not route \"%s\" (relay.routes[%u]): %s\n",
					  rp_q(r->cfg.name, q, sizeof(q)), i, how);
			}
		}
		if (route < 0) {
			rp_printf(&o, "route: none matches: the registration is refused\n");
			return o.n > INT_MAX ? INT_MAX : (int)o.n;
		}
	}
	rp_explain_pool(&o, p, p->routes[route].pool);
	rp_explain_executors(&o, &p->routes[route]);
	return o.n > INT_MAX ? INT_MAX : (int)o.n;
}
