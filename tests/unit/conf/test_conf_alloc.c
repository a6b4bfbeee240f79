/* Failed allocations in the configuration loader: for n = 1, 2, ... the nth
 * allocation fails (tests/support/ts_alloc.h) while a full file of each role
 * plus environment overrides (scalars and whole arrays) is loaded. The
 * loader's own allocations fail, and jansson's parser calls as a whole:
 * not jansson's allocations inside a parse, on which jansson 2.14 itself
 * may crash. Each attempt must either load it all or return an
 * error with a reason and leave the configuration empty; with ASan, no
 * memory may be left unreachable after any attempt. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "conf/conf.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_conf.h"
#include "tests/support/ts_sys.h"

#define ERRLEN 512

struct run {
	const char *path;      /* conf_load_file, or */
	char *text;	       /* conf_load_string */
	struct sr_config want; /* what an attempt without a failure loads */
};

static int load(struct run *r, struct sr_config *cfg, char *err)
{
	if (r->path)
		return conf_load_file(r->path, cfg, err, ERRLEN);
	return conf_load_string(r->text, "alloc.json", cfg, err, ERRLEN);
}

static int load_once(void *arg, unsigned long n)
{
	struct run *r = arg;
	struct sr_config cfg;
	char err[ERRLEN] = "";
	char *a, *b;
	int rc;

	memset(&cfg, 0, sizeof(cfg));
	ts_alloc_arm_ours(n);
	rc = load(r, &cfg, err);
	ts_alloc_disarm();
	if (rc != 0) {
		assert_true(rc < 0);
		assert_true(err[0] != '\0');
		assert_null(strchr(err, '\n'));
		assert_empty_cfg(&cfg);
		conf_free(&cfg);
		return rc;
	}
	/* nothing half-loaded: a success is the whole configuration */
	a = ts_conf_dump(&cfg);
	b = ts_conf_dump(&r->want);
	assert_string_equal(a, b);
	free(a);
	free(b);
	conf_free(&cfg);
	return 0;
}

static void sweep(struct run *r, const char *what)
{
	char err[ERRLEN] = "";
	struct ts_alloc_result res;

	if (load(r, &r->want, err) != 0)
		fail_msg("%s: %s", what, err);
	ts_alloc_sweep(what, load_once, r, &res);
	assert_int_equal(res.absorbed, 0);
	conf_free(&r->want);
}

static int clear_env(void **state)
{
	(void)state;
	ts_env_clear("SPARKRELAY_");
	return 0;
}

static void test_relay_file_and_env(void **state)
{
	struct run r;
	char path[1024];

	memset(&r, 0, sizeof(r));
	TS_SRC_PATH("example-relay.json", path, sizeof(path));
	r.path = path;
	setenv("SPARKRELAY_RELAY_MAX_TUNNELS", "77", 1);
	setenv("SPARKRELAY_RELAY_ADMIN_TOKEN", "env-admin-token", 1);
	setenv("SPARKRELAY_RELAY_TENANTS",
	       "[{\"name\": \"ops\", \"match\": {\"cn\": [\"ops-*\"]}},"
	       " {\"name\": \"ds\", \"limits\": {\"leases\": 2},"
	       "  \"match\": {\"san\": [\"*.ds\", \"spiffe://corp/*\"]}}]",
	       1);
	setenv("SPARKRELAY_RELAY_ROUTES",
	       "[{\"name\": \"ds\", \"tenant\": \"ds\", \"app\": \"etl-*\","
	       "  \"executor_cidrs\": [\"10.0.0.0/8\", \"fd00::/8\"]},"
	       " {\"name\": \"rest\"}]",
	       1);
	sweep(&r, "conf_load_file(relay)");
}

static void test_tunnel_file_and_env(void **state)
{
	struct run r;
	char path[1024];

	memset(&r, 0, sizeof(r));
	TS_SRC_PATH("example-tunnel.json", path, sizeof(path));
	r.text = ts_read_file(path, NULL);
	setenv("SPARKRELAY_TUNNEL_RELAYS", "a.example:1, [fd00::9]:2", 1);
	setenv("SPARKRELAY_TUNNEL_APP", "env-app", 1);
	sweep(&r, "conf_load_string(tunnel)");
	free(r.text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_relay_file_and_env, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_tunnel_file_and_env, clear_env, clear_env),
	};

	ts_alloc_init();
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
