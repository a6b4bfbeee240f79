/* The relay policy: tenant matching (CN, SAN, token hash, patterns), routes in
 * order (tenant, app pattern, sidecar CIDRs), pools, executor CIDRs, the
 * implicit tenant and route, every validation message, and explain(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay/relay_policy.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_net.h"

#define ERRLEN 512
/* SHA-256("abc") and SHA-256("xyz"), from FIPS 180-2 and sha256sum. */
#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_XYZ "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282"

#define S(x) ((char *)(x))

static struct relay_pool_opts default_pool(void)
{
	struct relay_pool_opts d = {
	    .bind_address = S("0.0.0.0"),
	    .advertise_host = S("relay.internal"),
	    .port_min = 40000,
	    .port_max = 40999,
	    .max_leases = 0,
	    .backlog = 128,
	};

	return d;
}

static struct relay_policy_opts *opts_new(void)
{
	struct relay_policy_opts *o = calloc(1, sizeof(*o));

	assert_non_null(o);
	return o;
}

static void add_pool(struct relay_policy_opts *o, const char *name, const char *bind,
		     uint32_t lo, uint32_t hi)
{
	struct relay_pool_cfg *p = &o->pools[o->npools++];

	p->name = S(name);
	p->pool = default_pool();
	p->pool.bind_address = S(bind);
	p->pool.port_min = lo;
	p->pool.port_max = hi;
}

static struct relay_tenant_cfg *add_tenant(struct relay_policy_opts *o, const char *name)
{
	struct relay_tenant_cfg *t = &o->tenants[o->ntenants++];

	t->name = S(name);
	return t;
}

static struct relay_route_cfg *add_route(struct relay_policy_opts *o, const char *name,
					 const char *tenant, const char *app, const char *pool)
{
	struct relay_route_cfg *r = &o->routes[o->nroutes++];

	r->name = S(name);
	r->tenant = S(tenant);
	r->app = S(app);
	r->pool = S(pool);
	return r;
}

static struct relay_policy *compile(const struct relay_policy_opts *o)
{
	struct relay_pool_opts d = default_pool();
	char err[ERRLEN] = "";
	struct relay_policy *p = relay_policy_new(o, &d, err, sizeof(err));

	if (!p)
		fail_msg("relay_policy_new: %s", err);
	return p;
}

static struct sockaddr_storage addr(const char *s)
{
	return ts_addr(s, 5000);
}

static int tenant_of(const struct relay_policy *p, const char *cn, const char *const *sans,
		     size_t nsans, const char *token, char *why)
{
	struct relay_identity id = {.cn = cn, .sans = sans, .nsans = nsans, .token = token};

	return relay_policy_tenant(p, &id, why, ERRLEN);
}

/* ---- implicit tenant and route ---- */

static void test_implicit_tenant_and_route(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_policy *p = compile(o);
	struct sockaddr_storage a = addr("203.0.113.5"), b = addr("2001:db8::9");
	const struct relay_pool_cfg *pool;
	const struct relay_tenant_cfg *tc;
	char why[ERRLEN];
	int t, r;

	(void)state;
	/* everyone is "default", even without any identity */
	t = tenant_of(p, NULL, NULL, 0, NULL, why);
	assert_int_equal(t, 0);
	assert_string_equal(relay_policy_tenant_name(p, t), "default");
	assert_contains(why, "no tenants are configured");
	assert_int_equal(tenant_of(p, "anyone", NULL, 0, "tok", why), 0);
	tc = relay_policy_tenant_cfg(p, t);
	assert_non_null(tc);
	assert_int_equal(tc->max_leases, 0);
	assert_int_equal(tc->max_connections, 0);
	assert_int_equal(tc->max_pending, 0);

	r = relay_policy_route(p, t, "any-app", (struct sockaddr *)&a, why, sizeof(why));
	assert_int_equal(r, 0);
	assert_string_equal(relay_policy_route_name(p, r), "default");
	assert_int_equal(relay_policy_route_pool(p, r), 0);
	assert_int_equal(relay_policy_npools(p), 1);
	pool = relay_policy_pool(p, 0);
	assert_string_equal(pool->name, "default");
	assert_string_equal(pool->pool.bind_address, "0.0.0.0");
	assert_string_equal(pool->pool.advertise_host, "relay.internal");
	assert_int_equal(pool->pool.port_min, 40000);
	assert_int_equal(pool->pool.port_max, 40999);
	assert_int_equal(pool->pool.backlog, 128);
	/* any executor may connect */
	assert_true(relay_policy_executor_allowed(p, r, (struct sockaddr *)&a));
	assert_true(relay_policy_executor_allowed(p, r, (struct sockaddr *)&b));
	/* out of range lookups */
	assert_null(relay_policy_pool(p, 1));
	assert_null(relay_policy_tenant_name(p, 1));
	assert_null(relay_policy_tenant_cfg(p, -1));
	assert_null(relay_policy_route_name(p, 1));
	assert_int_equal(relay_policy_route_pool(p, -1), -1);
	assert_false(relay_policy_executor_allowed(p, 5, (struct sockaddr *)&a));
	assert_int_equal(relay_policy_route(p, 3, "x", NULL, why, sizeof(why)), -1);
	relay_policy_free(p);
	relay_policy_free(NULL);
	free(o);
}

static void test_policy_owns_its_copy(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_policy *p;
	char name[] = "gpu", bind[] = "10.0.0.1";

	(void)state;
	add_pool(o, name, bind, 1000, 1010);
	p = compile(o);
	name[0] = 'X';
	bind[0] = '9';
	assert_string_equal(relay_policy_pool(p, 0)->name, "gpu");
	assert_string_equal(relay_policy_pool(p, 0)->pool.bind_address, "10.0.0.1");
	relay_policy_free(p);
	free(o);
}

/* ---- tenants ---- */

static void test_tenant_by_cn(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_policy *p;
	char why[ERRLEN];

	(void)state;
	t = add_tenant(o, "ops");
	t->cn[t->ncn++] = S("ops-admin");
	t = add_tenant(o, "team-a");
	t->cn[t->ncn++] = S("nb-*.team-a");
	t->cn[t->ncn++] = S("*-etl-*");
	t = add_tenant(o, "catch-all");
	t->cn[t->ncn++] = S("*");
	p = compile(o);

	assert_int_equal(tenant_of(p, "ops-admin", NULL, 0, NULL, why), 0);
	assert_contains(why, "cn \"ops-admin\" matches cn pattern \"ops-admin\"");
	/* exact patterns are exact */
	assert_int_equal(tenant_of(p, "ops-admin2", NULL, 0, NULL, why), 2);
	assert_int_equal(tenant_of(p, "nb-42.team-a", NULL, 0, NULL, why), 1);
	assert_contains(why, "matches cn pattern \"nb-*.team-a\"");
	assert_int_equal(tenant_of(p, "nb-.team-a", NULL, 0, NULL, why), 1); /* empty run */
	assert_int_equal(tenant_of(p, "x-etl-y", NULL, 0, NULL, why), 1);
	assert_contains(why, "\"*-etl-*\"");
	/* case-sensitive */
	assert_int_equal(tenant_of(p, "NB-42.team-a", NULL, 0, NULL, why), 2);
	/* an empty or absent CN fits nothing, not even "*" */
	assert_int_equal(tenant_of(p, "", NULL, 0, NULL, why), -1);
	assert_contains(why, "no tenant matches (cn none, 0 sans, no token)");
	assert_int_equal(tenant_of(p, NULL, NULL, 0, NULL, why), -1);
	assert_int_equal(relay_policy_tenant(p, NULL, why, sizeof(why)), -1);
	relay_policy_free(p);
	free(o);
}

static void test_glob_patterns(void **state)
{
	static const struct {
		const char *pat, *s;
		int want;
	} cases[] = {
	    {"abc", "abc", 1},
	    {"abc", "abcd", 0},
	    {"abc", "ab", 0},
	    {"a*", "a", 1},
	    {"a*", "abc", 1},
	    {"*c", "abc", 1},
	    {"*c", "abd", 0},
	    {"a*c", "ac", 1},
	    {"a*c", "abbbc", 1},
	    {"a*c", "abbbcd", 0},
	    {"a*b*c", "axbyc", 1},
	    {"a*b*c", "axbyd", 0},
	    {"**", "x", 1},
	    {"a**b", "ab", 1},
	    {"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", 1},
	    {"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0},
	    {"spiffe://x/*", "spiffe://x/ns/a/sa/b", 1},
	    {"?", "a", 0}, /* no '?' metacharacter */
	    {"?", "?", 1},
	};
	char why[ERRLEN], big[2000];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct relay_policy_opts *o = opts_new();
		struct relay_tenant_cfg *t = add_tenant(o, "t");
		struct relay_policy *p;
		int got;

		t->cn[t->ncn++] = S(cases[i].pat);
		p = compile(o);
		got = tenant_of(p, cases[i].s, NULL, 0, NULL, why) == 0;
		if (got != cases[i].want)
			fail_msg("pattern \"%s\" on \"%s\": %d, want %d", cases[i].pat,
				 cases[i].s, got, cases[i].want);
		relay_policy_free(p);
		free(o);
	}
	/* a subject over 1024 bytes fits no pattern, which bounds the work */
	{
		struct relay_policy_opts *o = opts_new();
		struct relay_tenant_cfg *t = add_tenant(o, "t");
		struct relay_policy *p;

		t->cn[t->ncn++] = S("*");
		p = compile(o);
		memset(big, 'a', 1024);
		big[1024] = '\0';
		assert_int_equal(tenant_of(p, big, NULL, 0, NULL, why), 0);
		big[1024] = 'a';
		big[1025] = '\0';
		assert_int_equal(tenant_of(p, big, NULL, 0, NULL, why), -1);
		relay_policy_free(p);
		free(o);
	}
}

static void test_tenant_by_san(void **state)
{
	static const char *const sans1[] = {"nb1.example.com", "spiffe://corp/ns/ml/sa/nb"};
	static const char *const sans2[] = {"", "other.example.org"};
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_policy *p;
	char why[ERRLEN];

	(void)state;
	t = add_tenant(o, "dns");
	t->san[t->nsan++] = S("*.example.org");
	t = add_tenant(o, "ml");
	t->san[t->nsan++] = S("spiffe://corp/ns/ml/*");
	p = compile(o);
	/* the second SAN decides; the CN plays no part for SAN patterns */
	assert_int_equal(tenant_of(p, "ignored", sans1, 2, NULL, why), 1);
	assert_contains(why, "san \"spiffe://corp/ns/ml/sa/nb\" matches san pattern");
	assert_int_equal(tenant_of(p, NULL, sans2, 2, NULL, why), 0);
	/* SAN patterns are not tried against the CN */
	assert_int_equal(tenant_of(p, "x.example.org", NULL, 0, NULL, why), -1);
	assert_contains(why, "cn \"x.example.org\", 0 sans");
	/* nsans bounds what is read */
	assert_int_equal(tenant_of(p, NULL, sans1, 1, NULL, why), -1);
	assert_contains(why, "1 san,");
	relay_policy_free(p);
	free(o);
}

static void test_tenant_by_token(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_policy *p;
	char why[ERRLEN];

	(void)state;
	t = add_tenant(o, "batch");
	t->token_sha256[t->ntoken++] = S(SHA_XYZ);
	t = add_tenant(o, "interactive");
	t->cn[t->ncn++] = S("never");
	/* upper-case hex is the same hash */
	t->token_sha256[t->ntoken++] =
	    S("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
	t->max_leases = 3;
	t->max_connections = 500;
	t->max_pending = 16;
	p = compile(o);
	assert_int_equal(tenant_of(p, NULL, NULL, 0, "abc", why), 1);
	assert_contains(why, "token_sha256[0]");
	assert_int_equal(tenant_of(p, NULL, NULL, 0, "xyz", why), 0);
	assert_int_equal(tenant_of(p, NULL, NULL, 0, "abd", why), -1);
	assert_contains(why, "a token");
	/* the hash itself is not a token */
	assert_int_equal(tenant_of(p, NULL, NULL, 0, SHA_ABC, why), -1);
	assert_int_equal(tenant_of(p, NULL, NULL, 0, "", why), -1);
	assert_contains(why, "no token");
	/* limits are carried as given */
	assert_string_equal(relay_policy_tenant_name(p, 1), "interactive");
	assert_int_equal(relay_policy_tenant_cfg(p, 1)->max_leases, 3);
	assert_int_equal(relay_policy_tenant_cfg(p, 1)->max_connections, 500);
	assert_int_equal(relay_policy_tenant_cfg(p, 1)->max_pending, 16);
	assert_string_equal(relay_policy_tenant_cfg(p, 1)->token_sha256[0],
			    "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
	relay_policy_free(p);
	free(o);
}

static void test_first_tenant_wins(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_policy *p;
	char why[ERRLEN];

	(void)state;
	t = add_tenant(o, "first");
	t->token_sha256[t->ntoken++] = S(SHA_ABC);
	t = add_tenant(o, "second");
	t->cn[t->ncn++] = S("nb");
	p = compile(o);
	/* both fit; order decides, whatever kind of matcher */
	assert_int_equal(tenant_of(p, "nb", NULL, 0, "abc", why), 0);
	assert_int_equal(tenant_of(p, "nb", NULL, 0, "nope", why), 1);
	relay_policy_free(p);
	free(o);
}

/* ---- routes ---- */

static void test_route_order_app_and_sidecar(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_route_cfg *r;
	struct relay_policy *p;
	struct sockaddr_storage in = addr("10.1.2.3"), out = addr("192.0.2.1"),
				in6 = addr("fd00::5"), mapped = addr("::ffff:10.9.9.9");
	char why[ERRLEN];
	int a, b;

	(void)state;
	add_pool(o, "cpu", "0.0.0.0", 40000, 40999);
	add_pool(o, "gpu", "0.0.0.0", 41000, 41999);
	t = add_tenant(o, "a");
	t->cn[t->ncn++] = S("a");
	t = add_tenant(o, "b");
	t->cn[t->ncn++] = S("b");
	add_route(o, "a-ml", "a", "ml-*", "gpu");
	r = add_route(o, "from-vpc", "*", NULL, "gpu");
	r->sidecar_cidrs[r->nsidecar_cidrs++] = S("10.0.0.0/8");
	r->sidecar_cidrs[r->nsidecar_cidrs++] = S("fd00::/8");
	add_route(o, "a-rest", "a", NULL, "cpu");
	p = compile(o);
	a = tenant_of(p, "a", NULL, 0, NULL, why);
	b = tenant_of(p, "b", NULL, 0, NULL, why);
	assert_int_equal(a, 0);
	assert_int_equal(b, 1);

	/* app pattern */
	assert_int_equal(
	    relay_policy_route(p, a, "ml-train", (struct sockaddr *)&out, why, sizeof(why)), 0);
	assert_contains(why, "relay.routes[0] \"a-ml\" matches");
	assert_int_equal(relay_policy_route_pool(p, 0), 1);
	assert_string_equal(relay_policy_pool(p, 1)->name, "gpu");
	/* not ml-*: falls through the CIDR route (outside) to a-rest */
	assert_int_equal(
	    relay_policy_route(p, a, "etl", (struct sockaddr *)&out, why, sizeof(why)), 2);
	assert_int_equal(relay_policy_route_pool(p, 2), 0);
	/* inside the sidecar CIDRs: the earlier route wins over a-rest */
	assert_int_equal(
	    relay_policy_route(p, a, "etl", (struct sockaddr *)&in, why, sizeof(why)), 1);
	assert_int_equal(
	    relay_policy_route(p, b, "etl", (struct sockaddr *)&in6, why, sizeof(why)), 1);
	assert_int_equal(
	    relay_policy_route(p, b, "etl", (struct sockaddr *)&mapped, why, sizeof(why)), 1);
	/* tenant b from outside: nothing */
	assert_int_equal(
	    relay_policy_route(p, b, "ml-x", (struct sockaddr *)&out, why, sizeof(why)), -1);
	assert_contains(why, "no route matches tenant \"b\", app \"ml-x\"");
	/* no sidecar address known: a route with sidecar CIDRs does not fit */
	assert_int_equal(relay_policy_route(p, b, "x", NULL, why, sizeof(why)), -1);
	/* an app pattern needs a matching app; a NULL app is "" */
	assert_int_equal(relay_policy_route(p, a, NULL, NULL, why, sizeof(why)), 2);
	assert_string_equal(relay_policy_route_name(p, 2), "a-rest");
	relay_policy_free(p);
	free(o);
}

static void test_route_null_pool_and_tenant(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_policy *p;
	char why[ERRLEN];

	(void)state;
	add_pool(o, "first", "0.0.0.0", 40000, 40010);
	add_pool(o, "second", "0.0.0.0", 40011, 40020);
	/* NULL tenant: any tenant; NULL pool: the first pool */
	add_route(o, "r", NULL, NULL, NULL);
	p = compile(o);
	assert_int_equal(relay_policy_route(p, 0, "x", NULL, why, sizeof(why)), 0);
	assert_int_equal(relay_policy_route_pool(p, 0), 0);
	relay_policy_free(p);
	free(o);
}

static void test_routes_with_implicit_tenant_and_pool(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_route_cfg *r;
	struct relay_policy *p;
	struct sockaddr_storage ok = addr("10.0.0.1"), bad = addr("10.1.0.1");
	char why[ERRLEN];

	(void)state;
	/* the implicit names are valid references */
	r = add_route(o, "only", "default", NULL, "default");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("10.0.0.0/16");
	p = compile(o);
	assert_int_equal(relay_policy_route(p, 0, "x", NULL, why, sizeof(why)), 0);
	assert_true(relay_policy_executor_allowed(p, 0, (struct sockaddr *)&ok));
	assert_false(relay_policy_executor_allowed(p, 0, (struct sockaddr *)&bad));
	relay_policy_free(p);
	free(o);
}

/* Tenants but no routes: every tenant gets the implicit route. */
static void test_implicit_route_with_tenants(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_policy *p;
	struct sockaddr_storage a = addr("198.51.100.1");
	char why[ERRLEN];
	int i;

	(void)state;
	add_pool(o, "first", "0.0.0.0", 40000, 40010);
	add_pool(o, "second", "0.0.0.0", 40011, 40020);
	t = add_tenant(o, "a");
	t->cn[t->ncn++] = S("a");
	t = add_tenant(o, "b");
	t->cn[t->ncn++] = S("b");
	p = compile(o);
	for (i = 0; i < 2; i++) {
		assert_int_equal(
		    relay_policy_route(p, i, "app", (struct sockaddr *)&a, why, sizeof(why)),
		    0);
		assert_contains(why,
				"no routes are configured: every tenant uses pool \"first\"");
	}
	assert_int_equal(relay_policy_route_pool(p, 0), 0);
	assert_true(relay_policy_executor_allowed(p, 0, (struct sockaddr *)&a));
	relay_policy_free(p);
	free(o);
}

static void test_executor_cidrs(void **state)
{
	static const struct {
		const char *addr;
		int want;
	} cases[] = {
	    {"10.0.0.1", 1},
	    {"10.255.1.1", 1},
	    {"11.0.0.1", 0},
	    {"192.168.7.9", 1},
	    {"192.168.8.1", 0},
	    {"2001:db8:5::1", 1},
	    {"2001:db9::1", 0},
	    {"::ffff:10.2.3.4", 1},
	    {"::ffff:11.2.3.4", 0},
	    {"::ffff:192.168.7.1", 1},
	    {"::1", 0},
	    {"127.0.0.1", 0},
	};
	struct relay_policy_opts *o = opts_new();
	struct relay_route_cfg *r;
	struct relay_policy *p;
	size_t i;

	(void)state;
	r = add_route(o, "r", "*", NULL, "default");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("10.0.0.0/8");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("192.168.7.0/24");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("2001:db8::/32");
	p = compile(o);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage a = addr(cases[i].addr);

		if (relay_policy_executor_allowed(p, 0, (struct sockaddr *)&a) != cases[i].want)
			fail_msg("executor %s: want %d", cases[i].addr, cases[i].want);
	}
	assert_false(relay_policy_executor_allowed(p, 0, NULL));
	relay_policy_free(p);
	free(o);
}

/* ---- validation ---- */

enum bad_kind {
	BAD_DUP_POOL,
	BAD_POOL_NO_NAME,
	BAD_POOL_RANGE,
	BAD_POOL_BIND,
	BAD_POOL_OVERLAP,
	BAD_POOL_OVERLAP_WILDCARD,
	BAD_POOL_OVERLAP_V6ANY,
	BAD_DEFAULT_POOL_RANGE,
	BAD_DUP_TENANT,
	BAD_TENANT_STAR,
	BAD_TENANT_NO_MATCH,
	BAD_TOKEN_SHORT,
	BAD_TOKEN_NOT_HEX,
	BAD_EMPTY_CN,
	BAD_DUP_ROUTE,
	BAD_ROUTE_NO_NAME,
	BAD_UNKNOWN_POOL,
	BAD_UNKNOWN_POOL_IMPLICIT,
	BAD_UNKNOWN_TENANT,
	BAD_UNKNOWN_TENANT_IMPLICIT,
	BAD_SIDECAR_CIDR,
	BAD_EXECUTOR_CIDR,
	BAD_TOO_MANY_POOLS,
	BAD_TOO_MANY_TENANTS,
	BAD_TOO_MANY_ROUTES,
	BAD_TOO_MANY_CN,
	BAD_TOO_MANY_CIDRS,
	BAD_POOL_NULL_BIND,
	BAD_MAX,
};

static const char *const bad_want[BAD_MAX] = {
    [BAD_DUP_POOL] = "relay.pools[1].name: duplicate name \"p\" (also relay.pools[0])",
    [BAD_POOL_NO_NAME] = "relay.pools[0].name: must be set",
    [BAD_POOL_RANGE] = "relay.pools[0].port_min: must be at most relay.pools[0].port_max "
		       "(100) (got 200)",
    [BAD_POOL_BIND] = "relay.pools[0].bind: must be a numeric IPv4 or IPv6 address (got "
		      "\"localhost\")",
    [BAD_POOL_OVERLAP] = "relay.pools[2]: ports 40500..41500 on 10.0.0.1 overlap "
			 "relay.pools[0] \"p\" (ports 40000..40999 on 10.0.0.1)",
    [BAD_POOL_OVERLAP_WILDCARD] = "relay.pools[1]: ports 40999..40999 on 0.0.0.0 overlap "
				  "relay.pools[0] \"p\"",
    [BAD_POOL_OVERLAP_V6ANY] = "relay.pools[1]: ports 40000..40000 on :: overlap",
    [BAD_DEFAULT_POOL_RANGE] = "relay.pool.port_min: must be at most relay.pool.port_max",
    [BAD_DUP_TENANT] = "relay.tenants[1].name: duplicate name \"t\" (also relay.tenants[0])",
    [BAD_TENANT_STAR] = "relay.tenants[0].name: \"*\" is reserved",
    [BAD_TENANT_NO_MATCH] = "relay.tenants[0].match: needs at least one cn, san or "
			    "token_sha256",
    [BAD_TOKEN_SHORT] = "relay.tenants[0].match.token_sha256[1]: must be 64 hex digits, the "
			"SHA-256 of the token (got 63 characters)",
    [BAD_TOKEN_NOT_HEX] = "relay.tenants[0].match.token_sha256[0]: must be 64 hex digits",
    [BAD_EMPTY_CN] = "relay.tenants[0].match.cn[0]: empty pattern",
    [BAD_DUP_ROUTE] = "relay.routes[1].name: duplicate name \"r\" (also relay.routes[0])",
    [BAD_ROUTE_NO_NAME] = "relay.routes[0].name: must be set",
    [BAD_UNKNOWN_POOL] = "relay.routes[2].pool: no pool \"gpu\"",
    [BAD_UNKNOWN_POOL_IMPLICIT] = "relay.routes[0].pool: no pool \"gpu\" (relay.pools is "
				  "empty: the only pool is \"default\", from relay.pool)",
    [BAD_UNKNOWN_TENANT] = "relay.routes[0].tenant: no tenant \"nobody\"",
    [BAD_UNKNOWN_TENANT_IMPLICIT] = "relay.routes[0].tenant: no tenant \"t\" (no tenants "
				    "are configured: the only tenant is \"default\")",
    [BAD_SIDECAR_CIDR] = "relay.routes[0].sidecar_cidrs[1]: must be an IPv4 or IPv6 CIDR "
			 "such as 10.0.0.0/8 or fd00::/8 (got \"10.0.0.0/33\")",
    [BAD_EXECUTOR_CIDR] = "relay.routes[0].executor_cidrs[0]: must be an IPv4 or IPv6 CIDR",
    [BAD_TOO_MANY_POOLS] = "relay.pools: at most 16 entries (got 17)",
    [BAD_TOO_MANY_TENANTS] = "relay.tenants: at most 256 entries (got 257)",
    [BAD_TOO_MANY_ROUTES] = "relay.routes: at most 256 entries (got 1000)",
    [BAD_TOO_MANY_CN] = "relay.tenants[0].match: at most 8 patterns or hashes of each kind",
    [BAD_TOO_MANY_CIDRS] = "relay.routes[0]: at most 32 CIDRs in each list",
    [BAD_POOL_NULL_BIND] = "relay.pool.bind: must be set (a numeric IPv4 or IPv6 address)",
};

static void make_bad(struct relay_policy_opts *o, struct relay_pool_opts *def, enum bad_kind k)
{
	struct relay_tenant_cfg *t;
	struct relay_route_cfg *r;
	unsigned i;

	switch (k) {
	case BAD_DUP_POOL:
		add_pool(o, "p", "0.0.0.0", 1000, 1001);
		add_pool(o, "p", "0.0.0.0", 2000, 2001);
		break;
	case BAD_POOL_NO_NAME:
		add_pool(o, "", "0.0.0.0", 1000, 1001);
		break;
	case BAD_POOL_RANGE:
		add_pool(o, "p", "0.0.0.0", 200, 100);
		break;
	case BAD_POOL_BIND:
		add_pool(o, "p", "localhost", 100, 200);
		break;
	case BAD_POOL_OVERLAP:
		add_pool(o, "p", "10.0.0.1", 40000, 40999);
		add_pool(o, "r", "2001:db8::1", 40000, 40999); /* other family: fine */
		add_pool(o, "q", "10.0.0.1", 40500, 41500);
		break;
	case BAD_POOL_OVERLAP_WILDCARD:
		add_pool(o, "p", "10.0.0.1", 40000, 40999);
		add_pool(o, "q", "0.0.0.0", 40999, 40999);
		break;
	case BAD_POOL_OVERLAP_V6ANY:
		add_pool(o, "p", "10.0.0.1", 40000, 40999);
		add_pool(o, "q", "::", 40000, 40000);
		break;
	case BAD_DEFAULT_POOL_RANGE:
		def->port_min = 50000;
		break;
	case BAD_DUP_TENANT:
		t = add_tenant(o, "t");
		t->cn[t->ncn++] = S("a");
		t = add_tenant(o, "t");
		t->cn[t->ncn++] = S("b");
		break;
	case BAD_TENANT_STAR:
		t = add_tenant(o, "*");
		t->cn[t->ncn++] = S("a");
		break;
	case BAD_TENANT_NO_MATCH:
		add_tenant(o, "t");
		break;
	case BAD_TOKEN_SHORT:
		t = add_tenant(o, "t");
		t->token_sha256[t->ntoken++] = S(SHA_ABC);
		t->token_sha256[t->ntoken++] = S(&SHA_XYZ[1]); /* 63 digits */
		break;
	case BAD_TOKEN_NOT_HEX:
		t = add_tenant(o, "t");
		t->token_sha256[t->ntoken++] =
		    S("zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
		break;
	case BAD_EMPTY_CN:
		t = add_tenant(o, "t");
		t->cn[t->ncn++] = S("");
		break;
	case BAD_DUP_ROUTE:
		add_route(o, "r", "*", NULL, "default");
		add_route(o, "r", "*", NULL, "default");
		break;
	case BAD_ROUTE_NO_NAME:
		add_route(o, NULL, "*", NULL, "default");
		break;
	case BAD_UNKNOWN_POOL:
		add_pool(o, "cpu", "0.0.0.0", 1000, 1001);
		add_route(o, "r0", "*", NULL, "cpu");
		add_route(o, "r1", "*", NULL, "cpu");
		add_route(o, "r2", "*", NULL, "gpu");
		break;
	case BAD_UNKNOWN_POOL_IMPLICIT:
		add_route(o, "r0", "*", NULL, "gpu");
		break;
	case BAD_UNKNOWN_TENANT:
		t = add_tenant(o, "t");
		t->cn[t->ncn++] = S("a");
		add_route(o, "r0", "nobody", NULL, NULL);
		break;
	case BAD_UNKNOWN_TENANT_IMPLICIT:
		add_route(o, "r0", "t", NULL, NULL);
		break;
	case BAD_SIDECAR_CIDR:
		r = add_route(o, "r0", "*", NULL, NULL);
		r->sidecar_cidrs[r->nsidecar_cidrs++] = S("10.0.0.0/8");
		r->sidecar_cidrs[r->nsidecar_cidrs++] = S("10.0.0.0/33");
		break;
	case BAD_EXECUTOR_CIDR:
		r = add_route(o, "r0", "*", NULL, NULL);
		r->executor_cidrs[r->nexecutor_cidrs++] = S("pods.example");
		break;
	case BAD_TOO_MANY_POOLS:
		for (i = 0; i < 16; i++)
			add_pool(o, "p", "0.0.0.0", 1000 + i, 1000 + i);
		o->npools = 17;
		break;
	case BAD_TOO_MANY_TENANTS:
		o->ntenants = RELAY_MAX_TENANTS + 1;
		break;
	case BAD_TOO_MANY_ROUTES:
		o->nroutes = 1000;
		break;
	case BAD_TOO_MANY_CN:
		t = add_tenant(o, "t");
		t->ncn = RELAY_MAX_MATCH + 1;
		break;
	case BAD_TOO_MANY_CIDRS:
		r = add_route(o, "r0", "*", NULL, NULL);
		r->nexecutor_cidrs = RELAY_MAX_CIDRS + 1;
		break;
	case BAD_POOL_NULL_BIND:
		def->bind_address = NULL;
		break;
	case BAD_MAX:
		break;
	}
}

static void test_validation_errors(void **state)
{
	int k;

	(void)state;
	for (k = 0; k < BAD_MAX; k++) {
		struct relay_policy_opts *o = opts_new();
		struct relay_pool_opts def = default_pool();
		struct relay_policy *p;
		char err[ERRLEN] = "";

		make_bad(o, &def, (enum bad_kind)k);
		p = relay_policy_new(o, &def, err, sizeof(err));
		if (p)
			fail_msg("case %d (%s) compiled", k, bad_want[k]);
		if (!strstr(err, bad_want[k]))
			fail_msg("case %d: expected \"%s\" in \"%s\"", k, bad_want[k], err);
		free(o);
	}
}

/* The typed error conf builds its located messages from: what (kind), which
 * list and element, and the JSON path, for every case above; and the text of
 * relay_policy_new is exactly "<path>: <msg>". */
#define K(x) RELAY_POLICY_ERR_##x
#define L(x) RELAY_POLICY_##x
static const struct {
	enum relay_policy_errkind kind;
	enum relay_policy_list list;
	int index;
	const char *path;
} bad_typed[BAD_MAX] = {
    [BAD_DUP_POOL] = {K(DUPLICATE), L(POOLS), 1, "relay.pools[1].name"},
    [BAD_POOL_NO_NAME] = {K(MISSING), L(POOLS), 0, "relay.pools[0].name"},
    [BAD_POOL_RANGE] = {K(CONFLICT), L(POOLS), 0, "relay.pools[0].port_min"},
    [BAD_POOL_BIND] = {K(INVALID), L(POOLS), 0, "relay.pools[0].bind"},
    [BAD_POOL_OVERLAP] = {K(CONFLICT), L(POOLS), 2, "relay.pools[2]"},
    [BAD_POOL_OVERLAP_WILDCARD] = {K(CONFLICT), L(POOLS), 1, "relay.pools[1]"},
    [BAD_POOL_OVERLAP_V6ANY] = {K(CONFLICT), L(POOLS), 1, "relay.pools[1]"},
    [BAD_DEFAULT_POOL_RANGE] = {K(CONFLICT), L(POOL), -1, "relay.pool.port_min"},
    [BAD_DUP_TENANT] = {K(DUPLICATE), L(TENANTS), 1, "relay.tenants[1].name"},
    [BAD_TENANT_STAR] = {K(INVALID), L(TENANTS), 0, "relay.tenants[0].name"},
    [BAD_TENANT_NO_MATCH] = {K(MISSING), L(TENANTS), 0, "relay.tenants[0].match"},
    [BAD_TOKEN_SHORT] = {K(INVALID), L(TENANTS), 0, "relay.tenants[0].match.token_sha256[1]"},
    [BAD_TOKEN_NOT_HEX] = {K(INVALID), L(TENANTS), 0,
			   "relay.tenants[0].match.token_sha256[0]"},
    [BAD_EMPTY_CN] = {K(INVALID), L(TENANTS), 0, "relay.tenants[0].match.cn[0]"},
    [BAD_DUP_ROUTE] = {K(DUPLICATE), L(ROUTES), 1, "relay.routes[1].name"},
    [BAD_ROUTE_NO_NAME] = {K(MISSING), L(ROUTES), 0, "relay.routes[0].name"},
    [BAD_UNKNOWN_POOL] = {K(UNKNOWN_REF), L(ROUTES), 2, "relay.routes[2].pool"},
    [BAD_UNKNOWN_POOL_IMPLICIT] = {K(UNKNOWN_REF), L(ROUTES), 0, "relay.routes[0].pool"},
    [BAD_UNKNOWN_TENANT] = {K(UNKNOWN_REF), L(ROUTES), 0, "relay.routes[0].tenant"},
    [BAD_UNKNOWN_TENANT_IMPLICIT] = {K(UNKNOWN_REF), L(ROUTES), 0, "relay.routes[0].tenant"},
    [BAD_SIDECAR_CIDR] = {K(INVALID), L(ROUTES), 0, "relay.routes[0].sidecar_cidrs[1]"},
    [BAD_EXECUTOR_CIDR] = {K(INVALID), L(ROUTES), 0, "relay.routes[0].executor_cidrs[0]"},
    [BAD_TOO_MANY_POOLS] = {K(TOO_MANY), L(POOLS), -1, "relay.pools"},
    [BAD_TOO_MANY_TENANTS] = {K(TOO_MANY), L(TENANTS), -1, "relay.tenants"},
    [BAD_TOO_MANY_ROUTES] = {K(TOO_MANY), L(ROUTES), -1, "relay.routes"},
    [BAD_TOO_MANY_CN] = {K(TOO_MANY), L(TENANTS), 0, "relay.tenants[0].match"},
    [BAD_TOO_MANY_CIDRS] = {K(TOO_MANY), L(ROUTES), 0, "relay.routes[0]"},
    [BAD_POOL_NULL_BIND] = {K(MISSING), L(POOL), -1, "relay.pool.bind"},
};
#undef K
#undef L

static void test_typed_errors(void **state)
{
	int k;

	(void)state;
	for (k = 0; k < BAD_MAX; k++) {
		struct relay_policy_opts *o = opts_new();
		struct relay_pool_opts def = default_pool();
		struct relay_policy_err e;
		char text[ERRLEN], want[ERRLEN];

		make_bad(o, &def, (enum bad_kind)k);
		memset(&e, 0x5a, sizeof(e));
		if (relay_policy_compile(o, &def, &e))
			fail_msg("case %d (%s) compiled", k, bad_typed[k].path);
		if (e.kind != bad_typed[k].kind || e.list != bad_typed[k].list ||
		    e.index != bad_typed[k].index || strcmp(e.path, bad_typed[k].path) != 0)
			fail_msg("case %d: kind %d list %d index %d path \"%s\", want %d %d %d "
				 "\"%s\"",
				 k, e.kind, e.list, e.index, e.path, bad_typed[k].kind,
				 bad_typed[k].list, bad_typed[k].index, bad_typed[k].path);
		/* the rule alone: the path is not repeated at its start */
		assert_true(e.msg[0] != '\0');
		assert_true(strncmp(e.msg, e.path, strlen(e.path)) != 0);
		assert_null(relay_policy_new(o, &def, text, sizeof(text)));
		snprintf(want, sizeof(want), "%s: %s", e.path, e.msg);
		assert_string_equal(text, want);
		/* no place for the error: still refused, and nothing to crash on */
		assert_null(relay_policy_compile(o, &def, NULL));
		free(o);
	}
}

static void test_overlap_rules(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_policy *p;

	(void)state;
	/* same ports, different addresses or families, and adjacent ranges: fine */
	add_pool(o, "a", "10.0.0.1", 40000, 40999);
	add_pool(o, "b", "10.0.0.2", 40000, 40999);
	add_pool(o, "c", "2001:db8::1", 40000, 40999);
	add_pool(o, "d", "10.0.0.1", 41000, 41999);
	add_pool(o, "e", "0.0.0.0", 42000, 42999);
	add_pool(o, "f", "::1", 42000, 42999); /* IPv6 address vs IPv4 wildcard */
	p = compile(o);
	assert_int_equal(relay_policy_npools(p), 6);
	relay_policy_free(p);
	free(o);
}

static void test_no_pool_at_all(void **state)
{
	struct relay_policy_opts *o = opts_new();
	char err[ERRLEN];

	(void)state;
	assert_null(relay_policy_new(o, NULL, err, sizeof(err)));
	assert_contains(err, "relay.pool: no pool is configured");
	{
		struct relay_policy_err e;

		assert_null(relay_policy_compile(o, NULL, &e));
		assert_int_equal(e.kind, RELAY_POLICY_ERR_MISSING);
		assert_int_equal(e.list, RELAY_POLICY_POOL);
		assert_string_equal(e.path, "relay.pool");
		assert_string_equal(e.msg, "no pool is configured");
	}
	free(o);
}

/* ---- explain ---- */

static void test_explain(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_tenant_cfg *t;
	struct relay_route_cfg *r;
	struct relay_policy *p;
	struct sockaddr_storage a = addr("10.1.2.3");
	struct relay_identity id = {.cn = "nb-7", .addr = (struct sockaddr *)&a};
	char out[2048], small[16];
	int n;

	(void)state;
	add_pool(o, "cpu", "0.0.0.0", 40000, 40999);
	add_pool(o, "gpu", "::", 41000, 41999);
	o->pools[1].pool.advertise_host = S("gpu.relay.internal");
	t = add_tenant(o, "ops");
	t->cn[t->ncn++] = S("ops-*");
	t = add_tenant(o, "notebooks");
	t->cn[t->ncn++] = S("nb-*");
	add_route(o, "ops-all", "ops", NULL, "cpu");
	add_route(o, "nb-ml", "notebooks", "ml-*", "cpu");
	r = add_route(o, "nb-corp", "*", NULL, "gpu");
	r->sidecar_cidrs[r->nsidecar_cidrs++] = S("192.168.0.0/16");
	r = add_route(o, "nb-rest", "notebooks", NULL, "gpu");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("10.0.0.0/8");
	r->executor_cidrs[r->nexecutor_cidrs++] = S("fd00::/8");
	p = compile(o);

	n = relay_policy_explain(p, &id, "etl", out, sizeof(out));
	assert_int_equal((size_t)n, strlen(out));
	assert_contains(out, "sidecar: cn \"nb-7\", 0 sans, no token, app \"etl\", from "
			     "10.1.2.3:5000\n");
	assert_contains(out, "  not tenant \"ops\" (relay.tenants[0]): no cn, san or token "
			     "matched\n");
	assert_contains(out, "tenant \"notebooks\" (relay.tenants[1]): cn \"nb-7\" matches cn "
			     "pattern \"nb-*\"\n");
	assert_contains(out, "  not route \"ops-all\" (relay.routes[0]): for tenant \"ops\", "
			     "not \"notebooks\"\n");
	assert_contains(out, "  not route \"nb-ml\" (relay.routes[1]): app \"etl\" does not "
			     "match app pattern \"ml-*\"\n");
	assert_contains(out, "  not route \"nb-corp\" (relay.routes[2]): sidecar address "
			     "10.1.2.3:5000 is outside sidecar_cidrs\n");
	assert_contains(out, "route \"nb-rest\" (relay.routes[3]): first route that matches\n");
	assert_contains(out, "pool \"gpu\" (relay.pools[1]): ports 41000..41999 on ::, "
			     "advertised as gpu.relay.internal\n");
	assert_contains(out, "executors: only from 10.0.0.0/8, fd00::/8\n");

	/* like snprintf: the full length even when cut, and always terminated */
	assert_int_equal(relay_policy_explain(p, &id, "etl", small, sizeof(small)), n);
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_int_equal(relay_policy_explain(p, &id, "etl", NULL, 0), n);

	/* no tenant */
	id.cn = "stranger";
	relay_policy_explain(p, &id, "etl", out, sizeof(out));
	assert_contains(out, "  not tenant \"notebooks\" (relay.tenants[1])");
	assert_contains(out, "tenant: none matches: the registration is refused\n");
	assert_null(strstr(out, "route"));

	/* a tenant but no route */
	id.cn = "ops-1";
	relay_policy_free(p);
	o->routes[0].tenant = S("notebooks");
	p = compile(o);
	relay_policy_explain(p, &id, "etl", out, sizeof(out));
	assert_contains(out, "tenant \"ops\" (relay.tenants[0])");
	assert_contains(out, "route: none matches: the registration is refused\n");
	assert_null(strstr(out, "pool \""));
	relay_policy_free(p);
	free(o);
}

static void test_explain_implicit(void **state)
{
	struct relay_policy_opts *o = opts_new();
	struct relay_policy *p = compile(o);
	struct relay_identity id = {.token = "t"};
	char out[2048];

	(void)state;
	relay_policy_explain(p, &id, NULL, out, sizeof(out));
	assert_contains(out, "sidecar: cn none, 0 sans, a token, app \"\", from an unknown "
			     "address\n");
	assert_contains(out, "tenant \"default\" (implicit: no tenants are configured");
	assert_contains(out, "relay.auth_token, if set, is still checked");
	assert_contains(out, "route \"default\" (implicit: no routes are configured");
	assert_contains(out, "pool \"default\" (relay.pool): ports 40000..40999 on 0.0.0.0, "
			     "advertised as relay.internal\n");
	assert_contains(out, "executors: any address may connect\n");
	/* the token itself never appears */
	assert_null(strstr(out, "\"t\""));
	relay_policy_free(p);
	free(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_implicit_tenant_and_route),
	    cmocka_unit_test(test_policy_owns_its_copy),
	    cmocka_unit_test(test_tenant_by_cn),
	    cmocka_unit_test(test_glob_patterns),
	    cmocka_unit_test(test_tenant_by_san),
	    cmocka_unit_test(test_tenant_by_token),
	    cmocka_unit_test(test_first_tenant_wins),
	    cmocka_unit_test(test_route_order_app_and_sidecar),
	    cmocka_unit_test(test_route_null_pool_and_tenant),
	    cmocka_unit_test(test_routes_with_implicit_tenant_and_pool),
	    cmocka_unit_test(test_implicit_route_with_tenants),
	    cmocka_unit_test(test_executor_cidrs),
	    cmocka_unit_test(test_validation_errors),
	    cmocka_unit_test(test_typed_errors),
	    cmocka_unit_test(test_overlap_rules),
	    cmocka_unit_test(test_no_pool_at_all),
	    cmocka_unit_test(test_explain),
	    cmocka_unit_test(test_explain_implicit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
