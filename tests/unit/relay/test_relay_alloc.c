/* Failed allocations in the relay's constructors: for n = 1, 2, ... the nth
 * allocation fails (tests/support/ts_alloc.h), and each constructor must
 * return an error, free what it had built and leave nothing bound; with
 * ASan, no memory may be left unreachable after any attempt. Covered: the
 * lease table, a lease (all its ports or none), the policy, and the whole
 * relay with its admin API, built from a configuration with pools, tenants
 * and routes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "conf/conf.h"
#include "relay/relay.h"
#include "relay/relay_admin.h"
#include "relay/relay_lease.h"
#include "relay/relay_policy.h"
#include "sidecar/sidecar.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pki.h"
#include "tests/support/ts_sys.h"
#include "tunnel/tun_ctl.h"

#define RANGE_LEN 8
#define PROBE_MS 2000

/* SHA-256("abc") */
#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static struct ts_pki pki;

struct fx {
	struct event_base *base;
	struct relay_pool_opts pool;
	uint16_t port_base;
	struct sr_config cfg; /* a relay configuration with pools, tenants, routes */
	struct relay_lease_table *t;
};

static int accepted;

static void on_accept(struct relay_lease *l, enum tun_port_role role, int fd,
		      const struct sockaddr *peer, int peerlen, void *arg)
{
	accepted++;
	close(fd);
}

static void on_expire(struct relay_lease *l, void *arg)
{
}

static const struct relay_lease_cbs lease_cbs = {on_accept, on_expire};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char json[2048], err[512];

	assert_non_null(f);
	assert_non_null(f->base = event_base_new());
	f->port_base = ts_pick_port_range("127.0.0.1", RANGE_LEN);
	f->pool.bind_address = (char *)"127.0.0.1";
	f->pool.port_min = f->port_base;
	f->pool.port_max = f->port_base + RANGE_LEN - 1u;
	snprintf(
	    json, sizeof(json),
	    "{\"relay\": {\"listen\": \"127.0.0.1:0\",\n"
	    " \"tls\": {\"cert\": \"%s\", \"key\": \"%s\", \"client_ca\": \"%s\"},\n"
	    " \"pools\": [\n"
	    "  {\"name\": \"cpu\", \"bind\": \"127.0.0.1\", \"port_min\": %u, \"port_max\": "
	    "%u},\n"
	    "  {\"name\": \"gpu\", \"bind\": \"127.0.0.1\", \"advertise\": \"gpu.example\",\n"
	    "   \"port_min\": %u, \"port_max\": %u, \"max_leases\": 1}\n"
	    " ],\n"
	    " \"tenants\": [\n"
	    "  {\"name\": \"ops\", \"match\": {\"cn\": [\"ops-*\", \"root\"], \"san\": "
	    "[\"*.ops\"]}},\n"
	    "  {\"name\": \"ds\", \"match\": {\"token_sha256\": [\"" SHA_ABC "\"]},\n"
	    "   \"limits\": {\"leases\": 3, \"connections\": 700, \"pending\": 9}}\n"
	    " ],\n"
	    " \"routes\": [\n"
	    "  {\"name\": \"ds-gpu\", \"tenant\": \"ds\", \"app\": \"gpu-*\", \"pool\": "
	    "\"gpu\",\n"
	    "   \"sidecar_cidrs\": [\"127.0.0.0/8\"], \"executor_cidrs\": [\"10.20.0.0/16\", "
	    "\"fd00::/8\"]},\n"
	    "  {\"name\": \"rest\", \"pool\": \"cpu\"}\n"
	    " ],\n"
	    " \"admin\": {\"listen\": \"127.0.0.1:0\", \"token\": \"admin-secret\"}}}\n",
	    pki.relay_pem, pki.relay_key, pki.ca, f->port_base, f->port_base + 3u,
	    f->port_base + 4u, f->port_base + 7u);
	if (conf_load_string(json, "alloc.json", &f->cfg, err, sizeof(err)) != 0)
		fail_msg("configuration: %s", err);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	relay_lease_table_free(f->t);
	ts_loop_run_for(f->base, 5);
	conf_free(&f->cfg);
	event_base_free(f->base);
	free(f);
	return 0;
}

static void assert_range_free(const struct fx *f)
{
	for (unsigned i = 0; i < RANGE_LEN; i++)
		if (!ts_port_free("127.0.0.1", (uint16_t)(f->port_base + i)))
			fail_msg("port %u still bound", f->port_base + i);
}

/* A listener that the loop accepts connections on: 1 once *counter moved. */
static int probe_accepts(struct fx *f, uint16_t port, const int *counter)
{
	int want = *counter + 1, fd = ts_connect("127.0.0.1", port), ok;

	assert_true(fd >= 0);
	ok = ts_loop_until_count(f->base, counter, want, PROBE_MS);
	close(fd);
	return ok;
}

/* The admin API answers /healthz. */
static int probe_http(struct fx *f, uint16_t port)
{
	static const char req[] = "GET /healthz HTTP/1.0\r\n\r\n";
	int fd = ts_connect("127.0.0.1", port);
	uint64_t end = sr_now_us() + PROBE_MS * 1000u;
	char buf[64];
	ssize_t n = -1;

	assert_true(fd >= 0);
	assert_int_equal(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
	while (sr_now_us() < end) {
		ts_loop_step(f->base, 10000);
		n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
		if (n >= 0)
			break;
	}
	close(fd);
	return n > 0 && strncmp(buf, "HTTP/1.", 7) == 0;
}

/* ---- relay_lease_table_new, relay_lease_create ---------------------------------- */

static int table_once(void *arg, unsigned long n)
{
	struct fx *f = arg;
	struct relay_lease_table *t;

	ts_alloc_arm(n);
	t = relay_lease_table_new(f->base, &f->pool, &lease_cbs, f);
	ts_alloc_disarm();
	relay_lease_table_free(t);
	return t ? 0 : SR_ENOMEM;
}

static void test_lease_table_new(void **state)
{
	struct ts_alloc_result res;

	ts_alloc_sweep("relay_lease_table_new", table_once, *state, &res);
	assert_int_equal(res.absorbed, 0);
}

static int create_once(void *arg, unsigned long n)
{
	struct fx *f = arg;
	struct relay_lease *l = NULL;
	unsigned roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	int rc;

	ts_alloc_arm(n);
	rc = relay_lease_create(f->t, "alloc-app", roles, 30, &l);
	ts_alloc_disarm();
	if (rc != 0) {
		/* all or nothing: no lease, no port left bound */
		assert_int_equal(rc, SR_ENOMEM);
		assert_null(l);
		assert_int_equal(relay_lease_count(f->t), 0);
		assert_range_free(f);
		return rc;
	}
	assert_non_null(l);
	assert_int_equal(relay_lease_count(f->t), 1);
	/* a lease that exists accepts executors */
	if (!probe_accepts(f, relay_lease_port(l, TUN_PORT_DRIVER), &accepted))
		fail_msg("allocation %lu failed: the lease's port accepts nothing", n);
	relay_lease_release(l);
	assert_int_equal(relay_lease_count(f->t), 0);
	assert_range_free(f);
	return 0;
}

static void test_lease_create(void **state)
{
	struct fx *f = *state;
	struct ts_alloc_result res;

	assert_non_null(f->t = relay_lease_table_new(f->base, &f->pool, &lease_cbs, f));
	ts_alloc_sweep("relay_lease_create", create_once, f, &res);
}

/* ---- relay_policy_new ---------------------------------------------------------------- */

static int policy_once(void *arg, unsigned long n)
{
	struct fx *f = arg;
	char err[512] = "";
	struct relay_policy *p;

	ts_alloc_arm(n);
	p = relay_policy_new(&f->cfg.relay.policy, &f->cfg.relay.pool, err, sizeof(err));
	ts_alloc_disarm();
	relay_policy_free(p);
	if (!p) {
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	return 0;
}

static void test_policy_new(void **state)
{
	struct ts_alloc_result res;

	ts_alloc_sweep("relay_policy_new", policy_once, *state, &res);
	assert_int_equal(res.absorbed, 0);
}

/* ---- relay_new and relay_admin_new ------------------------------------------------------ */

static int relay_once(void *arg, unsigned long n)
{
	static const struct relay_admin_cbs cbs = {NULL, NULL};
	struct fx *f = arg;
	char err[512] = "";
	struct relay *r;
	struct relay_admin *adm = NULL;
	struct relay_stats st;
	int accepts = 1, answers = 1;

	ts_alloc_arm(n);
	r = relay_new(f->base, &f->cfg.relay, err, sizeof(err));
	if (r)
		adm = relay_admin_new(f->base, r, f->cfg.relay.admin_listen,
				      f->cfg.relay.admin_token, &cbs, NULL, err, sizeof(err));
	ts_alloc_disarm();
	if (r && adm) {
		/* a relay that returned accepts sidecars, and its admin API answers */
		int fd = ts_connect("127.0.0.1", relay_listen_port(r));

		assert_true(fd >= 0);
		accepts = 0;
		for (int i = 0; i < PROBE_MS / 10 && !accepts; i++) {
			ts_loop_step(f->base, 10000);
			relay_get_stats(r, &st);
			accepts = st.tunnels_active > 0;
		}
		close(fd);
		answers = probe_http(f, relay_admin_port(adm));
	}
	relay_admin_free(adm);
	relay_free(r);
	ts_loop_run_for(f->base, 1);
	assert_range_free(f);
	if (!accepts)
		fail_msg("allocation %lu failed: the relay accepts no sidecar", n);
	if (!answers)
		fail_msg("allocation %lu failed: the admin API does not answer", n);
	if (!r || !adm) {
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	return 0;
}

static void test_relay_new(void **state)
{
	ts_alloc_sweep("relay_new+relay_admin_new", relay_once, *state, NULL);
}

/* ---- a registration ------------------------------------------------------------------ */

/* One allocation fails somewhere while a sidecar dials, handshakes and
 * registers with a relay: it costs that one tunnel at most. The sidecar
 * dials again and gets its lease, the relay goes on serving, and nothing
 * leaks. libevent's own allocations are not failed here (it may lose a
 * callback it cannot allocate, which no caller can recover from). */
#define LEASE_WAIT_MS 8000

struct reg_run {
	struct fx *f;
	struct sr_config sc; /* the sidecar's configuration */
	char state[TS_PKI_PATH];
	int leases;
};

static void reg_on_lease(struct sidecar *s, const struct sidecar_lease_info *info, void *arg)
{
	((struct reg_run *)arg)->leases++;
}

static int reg_once(void *arg, unsigned long n)
{
	struct reg_run *a = arg;
	struct fx *f = a->f;
	char err[512] = "";
	struct relay *r;
	struct sidecar *s;
	int got;

	a->leases = 0;
	unlink(a->state); /* no resume token of an earlier relay */
	r = relay_new(f->base, &f->cfg.relay, err, sizeof(err));
	if (!r)
		fail_msg("relay_new: %s", err);
	snprintf(err, sizeof(err), "127.0.0.1:%u", relay_listen_port(r));
	free(a->sc.tunnel.relays[0]);
	assert_non_null(a->sc.tunnel.relays[0] = strdup(err));
	ts_alloc_arm_ours(n);
	s = sidecar_new(f->base, &a->sc.tunnel, reg_on_lease, a, err, sizeof(err));
	got = s && ts_loop_until_count(f->base, &a->leases, 1, LEASE_WAIT_MS);
	ts_alloc_disarm();
	sidecar_free(s);
	relay_free(r);
	ts_loop_run_for(f->base, 5);
	assert_range_free(f);
	if (!s) {
		assert_true(err[0] != '\0');
		return SR_ENOMEM;
	}
	if (!got) {
		if (!getenv("SR_TEST_ALLOC_KEEP_GOING"))
			fail_msg("allocation %lu failed: no lease within %d ms", n,
				 LEASE_WAIT_MS);
		print_message("allocation %lu failed: no lease within %d ms\n", n,
			      LEASE_WAIT_MS);
	}
	return 0;
}

static void test_registration(void **state)
{
	struct reg_run *a = calloc(1, sizeof(*a));
	char json[2048], err[512], conf[TS_PKI_PATH], sjson[TS_PKI_PATH];

	assert_non_null(a);
	a->f = *state;
	ts_dir_file(&pki.dir, "state.json", a->state, sizeof(a->state));
	ts_dir_file(&pki.dir, "spark-defaults.conf", conf, sizeof(conf));
	ts_dir_file(&pki.dir, "spark.json", sjson, sizeof(sjson));
	snprintf(
	    json, sizeof(json),
	    "{\"tunnel\": {\"relays\": [\"127.0.0.1:1\"], \"server_name\": \"localhost\",\n"
	    " \"tls\": {\"ca\": \"%s\", \"cert\": \"%s\", \"key\": \"%s\"},\n"
	    " \"token\": \"abc\", \"app\": \"gpu-alloc\",\n"
	    " \"state_file\": \"%s\", \"spark_conf\": \"%s\", \"spark_json\": \"%s\",\n"
	    " \"backoff_initial_ms\": 10, \"backoff_max_ms\": 100, \"dial_timeout_ms\": "
	    "2000, \"allowed_ports\": [\"1-65535\"]}}\n",
	    pki.ca, pki.sidecar_pem, pki.sidecar_key, a->state, conf, sjson);
	if (conf_load_string(json, "sidecar.json", &a->sc, err, sizeof(err)) != 0)
		fail_msg("sidecar configuration: %s", err);
	ts_alloc_sweep("sidecar registration with a relay", reg_once, a, NULL);
	conf_free(&a->sc);
	free(a);
}

static int group_setup(void **state)
{
	ts_pki_make(&pki, "relay-alloc");
	return 0;
}

static int group_teardown(void **state)
{
	ts_pki_remove(&pki);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	    T(test_lease_table_new), T(test_lease_create), T(test_policy_new),
	    T(test_relay_new),	     T(test_registration),
#undef T
	};

	ts_alloc_init();
	/* every attempt fails something: SR_TEST_LOG=error shows what is said */
	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
