/* Who may register, which pool their lease comes from, and which executors
 * may connect to it: pools, tenants and routes, compiled from the relay
 * options into an immutable policy that a reload replaces as a whole.
 *
 * Without tenants every sidecar is the implicit tenant "default"; without
 * routes every tenant maps to the first pool and any executor address may
 * connect. */
#ifndef RELAY_POLICY_H
#define RELAY_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "relay/relay_lease.h"

#define RELAY_MAX_POOLS 16
#define RELAY_MAX_TENANTS 256
#define RELAY_MAX_ROUTES 256
#define RELAY_MAX_CIDRS 32
#define RELAY_MAX_MATCH 8

/* relay.pools[] */
struct relay_pool_cfg {
	char *name;
	struct relay_pool_opts pool;
};

/* relay.tenants[]: a sidecar is the first tenant any of whose matchers
 * fits (patterns: exact, or with '*' wildcards). */
struct relay_tenant_cfg {
	char *name;
	char *cn[RELAY_MAX_MATCH];  /* client certificate subject CN patterns */
	unsigned ncn;
	char *san[RELAY_MAX_MATCH]; /* client certificate DNS/URI SAN patterns */
	unsigned nsan;
	char *token_sha256[RELAY_MAX_MATCH]; /* hex SHA-256 of accepted bearer tokens */
	unsigned ntoken;
	uint32_t max_leases;      /* 0 = unlimited */
	uint32_t max_connections; /* concurrent executor connections over all its leases */
	uint32_t max_pending;     /* 0 = relay.lease.max_pending */
};

/* relay.routes[]: the first route that fits a registration decides. */
struct relay_route_cfg {
	char *name;
	char *tenant;  /* tenant name, or "*" */
	char *app;     /* app name pattern, NULL = any */
	char *sidecar_cidrs[RELAY_MAX_CIDRS]; /* where the sidecar dials from; none = any */
	unsigned nsidecar_cidrs;
	char *pool;    /* pool name */
	char *executor_cidrs[RELAY_MAX_CIDRS]; /* who may connect to the lease ports; none = any */
	unsigned nexecutor_cidrs;
};

struct relay_policy_opts {
	struct relay_pool_cfg pools[RELAY_MAX_POOLS];
	unsigned npools;
	struct relay_tenant_cfg tenants[RELAY_MAX_TENANTS];
	unsigned ntenants;
	struct relay_route_cfg routes[RELAY_MAX_ROUTES];
	unsigned nroutes;
};

struct relay_policy;

/* What is known about a registering sidecar. Strings may be NULL/empty. */
struct relay_identity {
	const char *cn;            /* verified client certificate CN */
	const char *const *sans;   /* verified client certificate DNS/URI SANs */
	size_t nsans;
	const char *token;         /* bearer token from the register message */
	const struct sockaddr *addr; /* sidecar's address as seen by the relay */
};

/* What relay_policy_compile found wrong. */
enum relay_policy_errkind {
	RELAY_POLICY_ERR_NONE = 0,
	RELAY_POLICY_ERR_NOMEM,	      /* allocation failed; path is "" */
	RELAY_POLICY_ERR_TOO_MANY,    /* more entries, patterns or CIDRs than the limits */
	RELAY_POLICY_ERR_MISSING,     /* a setting the policy needs is not set */
	RELAY_POLICY_ERR_INVALID,     /* a value breaks its own syntax or range */
	RELAY_POLICY_ERR_DUPLICATE,   /* a name used twice in one list */
	RELAY_POLICY_ERR_UNKNOWN_REF, /* a route names a tenant or pool that does not exist */
	RELAY_POLICY_ERR_CONFLICT,    /* settings contradict each other (port ranges) */
};

/* The list of the options the offending setting is in. */
enum relay_policy_list {
	RELAY_POLICY_POOL,    /* relay.pool, the only pool while relay.pools is empty */
	RELAY_POLICY_POOLS,   /* relay.pools */
	RELAY_POLICY_TENANTS, /* relay.tenants */
	RELAY_POLICY_ROUTES,  /* relay.routes */
};

#define RELAY_POLICY_PATH_MAX 96
#define RELAY_POLICY_MSG_MAX 448

struct relay_policy_err {
	enum relay_policy_errkind kind;
	enum relay_policy_list list;
	int index; /* the element of list, or -1: the list as a whole, or relay.pool */
	/* JSON path of the offending setting, keys joined by '.' and elements
	 * written [n]: "relay.routes[2].pool", "relay.tenants[0].match.cn[1]",
	 * "relay.pools[1]" (the element itself), "relay.routes" (the list). */
	char path[RELAY_POLICY_PATH_MAX];
	/* The rule broken, one line, without the path: "no pool \"gpu\"". Text
	 * from the options is quoted with control bytes shown as '?'. */
	char msg[RELAY_POLICY_MSG_MAX];
};

/* Compile. default_pool is used as the only pool when o->npools == 0 (it is
 * copied). Checks that every route names an existing pool and tenant, that
 * CIDRs parse, that names are unique. Returns NULL with err (when not NULL)
 * saying what and where, e.g. path "relay.routes[2].pool" and msg
 * "no pool \"gpu\"". */
struct relay_policy *relay_policy_compile(const struct relay_policy_opts *o,
					  const struct relay_pool_opts *default_pool,
					  struct relay_policy_err *err);
/* The same with the error as one line, "<path>: <msg>", e.g.
 * "relay.routes[2].pool: no pool \"gpu\"" ("relay policy: out of memory"). */
struct relay_policy *relay_policy_new(const struct relay_policy_opts *o,
				      const struct relay_pool_opts *default_pool, char *err,
				      size_t errlen);
void relay_policy_free(struct relay_policy *p);

/* The tenant of a sidecar: index into the tenants (or 0 for the implicit
 * "default"), or -1 when no tenant matches (why says so). */
int relay_policy_tenant(const struct relay_policy *p, const struct relay_identity *id,
			char *why, size_t whylen);
const char *relay_policy_tenant_name(const struct relay_policy *p, int tenant);
/* Limits of a tenant (the implicit tenant has none). */
const struct relay_tenant_cfg *relay_policy_tenant_cfg(const struct relay_policy *p, int tenant);

/* The route for a registration: index, or -1 with a reason. */
int relay_policy_route(const struct relay_policy *p, int tenant, const char *app,
		       const struct sockaddr *sidecar, char *why, size_t whylen);
const char *relay_policy_route_name(const struct relay_policy *p, int route);
/* A route's settings (its executor CIDRs: what a handover carries over for
 * a lease whose route the new configuration lacks). */
const struct relay_route_cfg *relay_policy_route_cfg(const struct relay_policy *p, int route);
/* The pool a route maps to: index into relay_policy_pool(). */
int relay_policy_route_pool(const struct relay_policy *p, int route);
size_t relay_policy_npools(const struct relay_policy *p);
const struct relay_pool_cfg *relay_policy_pool(const struct relay_policy *p, size_t i);

/* Index of the tenant / route with this name, or -1 (used to apply a
 * reloaded policy's limits and CIDRs to leases made before the reload). */
int relay_policy_tenant_find(const struct relay_policy *p, const char *name);
int relay_policy_route_find(const struct relay_policy *p, const char *name);

/* May an executor at addr connect to a lease made by this route? */
int relay_policy_executor_allowed(const struct relay_policy *p, int route,
				  const struct sockaddr *addr);

/* Explain, in a few lines of text, which tenant and route a registration
 * would get and why (for `sparkrelay ctl route explain`). Returns the
 * number of bytes written (like snprintf). */
int relay_policy_explain(const struct relay_policy *p, const struct relay_identity *id,
			 const char *app, char *out, size_t outlen);

#endif
