/* The configuration loader: defaults, full files of each role, every class of
 * error with its location, environment overrides, redacted dumps and the
 * generated reference in docs/configuration.md. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/sr_err.h"
#include "conf/conf.h"
#include "relay/relay_policy.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_conf.h"
#include "tests/support/ts_sys.h"
#include "tunnel/tun_conn.h"

#define ERRLEN 512

/* Remove every SPARKRELAY_* variable, of any length, so tests start from a
 * known environment. */
static int clear_env(void **state)
{
	(void)state;
	ts_env_clear("SPARKRELAY_");
	return 0;
}

static int load(const char *json, struct sr_config *cfg, char *err)
{
	return conf_load_string(json, "t.json", cfg, err, ERRLEN);
}

/* The defaults the specification gives, checked field by field. */
static void check_relay_defaults(const struct relay_opts *r)
{
	assert_string_equal(r->listen, "0.0.0.0:8443");
	assert_null(r->cert_file);
	assert_null(r->key_file);
	assert_null(r->client_ca_file);
	assert_int_equal(r->require_client_cert, 0);
	assert_null(r->auth_token);
	assert_string_equal(r->pool.bind_address, "0.0.0.0");
	assert_null(r->pool.advertise_host);
	/* below the ephemeral (32768-60999) and NodePort (30000-32767) ranges */
	assert_int_equal(r->pool.port_min, 26000);
	assert_int_equal(r->pool.port_max, 26999);
	assert_int_equal(r->pool.max_leases, 0);
	assert_int_equal(r->pool.backlog, 1024);
	assert_int_equal(r->lease_grace_s, 300);
	assert_int_equal(r->pending_timeout_ms, 30000);
	assert_int_equal(r->max_pending, 256);
	assert_int_equal(r->resume_hold_s, 90);
	assert_int_equal(r->handshake_timeout_ms, 10000);
	assert_int_equal(r->drain_timeout_ms, 30000);
	assert_int_equal(r->max_tunnels, 1024);
	assert_string_equal(r->admin_listen, "127.0.0.1:9090");
	assert_null(r->admin_token);
	assert_int_equal(r->policy.npools, 0);
	assert_int_equal(r->policy.ntenants, 0);
	assert_int_equal(r->policy.nroutes, 0);
}

static void check_h2_defaults(const struct tun_conn_opts *t)
{
	assert_int_equal(t->stream_window, 262144);
	assert_int_equal(t->conn_window, 67108864);
	assert_int_equal(t->max_stream_window, 16777216);
	assert_int_equal(t->ping_interval_ms, 2000);
	assert_int_equal(t->ping_timeout_ms, 6000);
	assert_int_equal(t->ctl_max, 65536);
	assert_int_equal(t->out_high, 65536);
	assert_int_equal(t->sock_read_high, 262144);
	assert_int_equal(t->max_streams, 16384);
}

static void check_tunnel_defaults(const struct sidecar_opts *s)
{
	assert_int_equal(s->nrelays, 0);
	assert_null(s->relays[0]);
	assert_null(s->server_name);
	assert_null(s->ca_file);
	assert_null(s->cert_file);
	assert_null(s->key_file);
	assert_null(s->token);
	assert_string_equal(s->app_name, "spark-notebook");
	assert_int_equal(s->want_ui, 0);
	/* the ports of the default pool, and no others */
	assert_int_equal(s->nallowed_ports, 1);
	assert_string_equal(s->allowed_ports[0], "26000-26999");
	assert_string_equal(s->spark_conf_path, "spark-defaults.conf");
	assert_string_equal(s->spark_json_path, "spark.json");
	assert_string_equal(s->state_path, "sparkrelay-state.json");
	assert_int_equal(s->backoff_initial_ms, 100);
	assert_int_equal(s->backoff_max_ms, 10000);
	assert_int_equal(s->dial_timeout_ms, 10000);
	assert_int_equal(s->register_timeout_ms, 30000);
	assert_int_equal(s->driver_connect_timeout_ms, 5000);
	assert_int_equal(s->release_timeout_ms, 3000);
	assert_null(s->admin_listen);
	assert_int_equal(s->disc.nnameservers, 0);
	assert_int_equal(s->disc.cache_s, 5);
	assert_int_equal(s->disc.stale_s, 300);
	assert_int_equal(s->disc.timeout_ms, 5000);
	assert_null(s->disc.k8s_api_server);
	assert_string_equal(s->disc.k8s_token_file,
			    "/var/run/secrets/kubernetes.io/serviceaccount/token");
	assert_string_equal(s->disc.k8s_ca_file,
			    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt");
	assert_string_equal(s->disc.k8s_namespace_file,
			    "/var/run/secrets/kubernetes.io/serviceaccount/namespace");
}

static void test_defaults_empty_file(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	assert_int_equal(load("{}", &cfg, err), 0);
	assert_string_equal(cfg.path, "t.json");
	assert_string_equal(cfg.log_level, "info");
	assert_int_equal(cfg.have_relay, 0);
	assert_int_equal(cfg.have_tunnel, 0);
	check_relay_defaults(&cfg.relay);
	check_h2_defaults(&cfg.relay.tun);
	check_tunnel_defaults(&cfg.tunnel);
	check_h2_defaults(&cfg.tunnel.tun);
	conf_free(&cfg);
	assert_empty_cfg(&cfg);
	conf_free(&cfg); /* twice is harmless */
	conf_free(NULL);
}

static void test_defaults_minimal_sections(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	assert_int_equal(
	    load("{\"relay\": {\"tls\": {\"cert\": \"c.pem\", \"key\": \"k.pem\"}},"
		 " \"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"ca.pem\"}},"
		 " \"log\": {}}",
		 &cfg, err),
	    0);
	assert_int_equal(cfg.have_relay, 1);
	assert_int_equal(cfg.have_tunnel, 1);
	assert_string_equal(cfg.relay.cert_file, "c.pem");
	assert_string_equal(cfg.relay.key_file, "k.pem");
	assert_string_equal(cfg.relay.listen, "0.0.0.0:8443");
	assert_int_equal(cfg.relay.pool.port_min, 26000);
	check_h2_defaults(&cfg.relay.tun);
	assert_int_equal(cfg.tunnel.nrelays, 1);
	assert_string_equal(cfg.tunnel.relays[0], "r:1");
	assert_string_equal(cfg.tunnel.ca_file, "ca.pem");
	assert_string_equal(cfg.tunnel.app_name, "spark-notebook");
	check_h2_defaults(&cfg.tunnel.tun);
	conf_free(&cfg);
}

/* tun_conn_opts_defaults (tunnel/, which must not include conf/) fills
 * the zero fields of callers outside conf: it must give what the h2 table
 * gives both sections, field by field, fields the table does not hold
 * included. */
static void test_h2_table_matches_tunnel_defaults(void **state)
{
	struct relay_opts r;
	struct sidecar_opts s;
	struct tun_conn_opts t;

	(void)state;
	conf_relay_defaults(&r);
	conf_sidecar_defaults(&s);
	memset(&t, 0, sizeof(t));
	tun_conn_opts_defaults(&t);
#define SAME(f)                                                                                \
	do {                                                                                   \
		if (r.tun.f != t.f || s.tun.f != t.f)                                          \
			fail_msg("h2." #f ": relay %u, tunnel %u, tun_conn_opts_defaults %u",  \
				 r.tun.f, s.tun.f, t.f);                                        \
	} while (0)
	SAME(stream_window);
	SAME(conn_window);
	SAME(max_stream_window);
	SAME(ping_interval_ms);
	SAME(ping_timeout_ms);
	SAME(ctl_max);
	SAME(out_high);
	SAME(sock_read_high);
	SAME(max_streams);
	SAME(sock_in_max);
#undef SAME
	/* a field added to tun_conn_opts without a line above */
	assert_memory_equal(&r.tun, &t, sizeof(t));
	assert_memory_equal(&s.tun, &t, sizeof(t));
	conf_relay_fini(&r);
	conf_sidecar_fini(&s);
}

static void test_defaults_helpers_match_init(void **state)
{
	struct sr_config cfg;
	struct relay_opts r;
	struct sidecar_opts s;

	(void)state;
	conf_init(&cfg);
	assert_string_equal(cfg.log_level, "info");
	conf_relay_defaults(&r);
	conf_sidecar_defaults(&s);
	check_relay_defaults(&r);
	check_h2_defaults(&r.tun);
	check_tunnel_defaults(&s);
	check_h2_defaults(&s.tun);
	assert_memory_equal(&r.tun, &cfg.relay.tun, sizeof(r.tun));
	assert_memory_equal(&s.tun, &cfg.tunnel.tun, sizeof(s.tun));
	conf_relay_fini(&r);
	conf_sidecar_fini(&s);
	assert_null(r.listen);
	assert_null(s.app_name);
	conf_relay_fini(NULL);
	conf_sidecar_fini(NULL);
	conf_free(&cfg);
}

static void test_full_relay_file(void **state)
{
	struct sr_config cfg;
	char path[1024], err[ERRLEN];
	const struct relay_opts *r = &cfg.relay;

	(void)state;
	TS_SRC_PATH("example-relay.json", path, sizeof(path));
	assert_int_equal(conf_load_file(path, &cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.path, path);
	assert_string_equal(cfg.log_level, "warn");
	assert_int_equal(cfg.have_relay, 1);
	assert_int_equal(cfg.have_tunnel, 0);
	assert_string_equal(r->listen, "127.0.0.1:9443");
	assert_string_equal(r->cert_file, "/etc/sr/relay.pem");
	assert_string_equal(r->key_file, "/etc/sr/relay.key");
	assert_string_equal(r->client_ca_file, "/etc/sr/clients.pem");
	assert_int_equal(r->require_client_cert, 1);
	assert_string_equal(r->auth_token, "relay-secret-token");
	assert_string_equal(r->pool.bind_address, "::");
	assert_string_equal(r->pool.advertise_host, "relay.internal");
	assert_int_equal(r->pool.port_min, 41000);
	assert_int_equal(r->pool.port_max, 41099);
	assert_int_equal(r->pool.max_leases, 50);
	assert_int_equal(r->pool.backlog, 128);
	assert_int_equal(r->lease_grace_s, 60);
	assert_int_equal(r->pending_timeout_ms, 15000);
	assert_int_equal(r->max_pending, 32);
	assert_int_equal(r->handshake_timeout_ms, 5000);
	assert_int_equal(r->drain_timeout_ms, 20000);
	assert_int_equal(r->max_tunnels, 64);
	assert_int_equal(r->tun.stream_window, 1048576);
	assert_int_equal(r->tun.conn_window, 16777216);
	assert_int_equal(r->tun.ping_interval_ms, 5000);
	assert_int_equal(r->tun.ping_timeout_ms, 20000);
	assert_int_equal(r->tun.ctl_max, 32768);
	assert_int_equal(r->tun.out_high, 131072);
	assert_int_equal(r->tun.sock_read_high, 65536);
	assert_int_equal(r->tun.max_streams, 5000);
	/* the absent section keeps its defaults */
	check_tunnel_defaults(&cfg.tunnel);
	conf_free(&cfg);
}

/* The three kinds of relay entry and the discovery settings load as written. */
static void test_discovery_keys(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];
	const struct sidecar_opts *s = &cfg.tunnel;

	(void)state;
	assert_int_equal(
	    load("{\"tunnel\": {\"relays\": [\"relay.example.com:8443\", "
		 "\"srv:_sparkrelay._tcp.relays.example.com.\", \"k8s:sparkrelay/relay:tunnel\", "
		 "\"k8s:relay\"], \"tls\": {\"ca\": \"ca.pem\"}, "
		 "\"discovery\": {\"nameservers\": [\"10.0.0.10\", \"[fd00::a]:5353\"], "
		 "\"cache_s\": 0, \"stale_s\": 60, \"timeout_ms\": 2000, "
		 "\"k8s\": {\"api_server\": \"https://10.96.0.1:443\", \"token_file\": \"/t\", "
		 "\"ca\": \"/c\", \"namespace_file\": \"/n\"}}}}",
		 &cfg, err),
	    0);
	assert_int_equal(s->nrelays, 4);
	assert_string_equal(s->relays[1], "srv:_sparkrelay._tcp.relays.example.com.");
	assert_string_equal(s->relays[2], "k8s:sparkrelay/relay:tunnel");
	assert_int_equal(s->disc.nnameservers, 2);
	assert_string_equal(s->disc.nameservers[1], "[fd00::a]:5353");
	assert_int_equal(s->disc.cache_s, 0);
	assert_int_equal(s->disc.stale_s, 60);
	assert_int_equal(s->disc.timeout_ms, 2000);
	assert_string_equal(s->disc.k8s_api_server, "https://10.96.0.1:443");
	assert_string_equal(s->disc.k8s_token_file, "/t");
	assert_string_equal(s->disc.k8s_ca_file, "/c");
	assert_string_equal(s->disc.k8s_namespace_file, "/n");
	conf_free(&cfg);
}

static void test_full_tunnel_file(void **state)
{
	struct sr_config cfg;
	char path[1024], err[ERRLEN];
	const struct sidecar_opts *s = &cfg.tunnel;

	(void)state;
	TS_SRC_PATH("example-tunnel.json", path, sizeof(path));
	assert_int_equal(conf_load_file(path, &cfg, err, sizeof(err)), 0);
	assert_string_equal(cfg.log_level, "debug");
	assert_int_equal(cfg.have_relay, 0);
	assert_int_equal(cfg.have_tunnel, 1);
	assert_int_equal(s->nrelays, 3);
	assert_string_equal(s->relays[0], "relay-a.example.com:8443");
	assert_string_equal(s->relays[1], "10.0.0.7:9443");
	assert_string_equal(s->relays[2], "[fd00::7]:443");
	assert_null(s->relays[3]);
	assert_string_equal(s->server_name, "relay.example.com");
	assert_string_equal(s->ca_file, "/etc/sr/ca.pem");
	assert_string_equal(s->cert_file, "/etc/sr/client.pem");
	assert_string_equal(s->key_file, "/etc/sr/client.key");
	assert_string_equal(s->token, "tunnel-secret-token");
	assert_string_equal(s->app_name, "etl-nightly");
	assert_int_equal(s->want_ui, 1);
	assert_string_equal(s->spark_conf_path, "/tmp/sr/spark-defaults.conf");
	assert_string_equal(s->spark_json_path, "/tmp/sr/spark.json");
	assert_string_equal(s->state_path, "/tmp/sr/state.json");
	assert_int_equal(s->backoff_initial_ms, 250);
	assert_int_equal(s->backoff_max_ms, 20000);
	assert_int_equal(s->dial_timeout_ms, 4000);
	assert_int_equal(s->driver_connect_timeout_ms, 2500);
	assert_int_equal(s->release_timeout_ms, 1500);
	assert_int_equal(s->tun.stream_window, 2097152);
	assert_int_equal(s->tun.conn_window, 33554432);
	assert_int_equal(s->tun.ping_interval_ms, 7000);
	assert_int_equal(s->tun.ping_timeout_ms, 21000);
	assert_int_equal(s->tun.ctl_max, 16384);
	assert_int_equal(s->tun.out_high, 524288);
	assert_int_equal(s->tun.sock_read_high, 131072);
	assert_int_equal(s->tun.max_streams, 2000);
	check_relay_defaults(&cfg.relay);
	conf_free(&cfg);
}

static void test_nullable_and_special_values(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	assert_int_equal(
	    load("{\"relay\": {\"listen\": \"[::1]:0\", \"auth_token\": null,"
		 " \"tls\": {\"cert\": \"c\", \"key\": \"k\", \"client_ca\": null},"
		 " \"pool\": {\"advertise\": null, \"port_min\": 5000, \"port_max\": 5000}},"
		 " \"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"a\","
		 " \"cert\": null, \"key\": null}, \"spark_conf\": null,"
		 " \"state_file\": null}}",
		 &cfg, err),
	    0);
	assert_string_equal(cfg.relay.listen, "[::1]:0");
	assert_null(cfg.relay.auth_token);
	assert_int_equal(cfg.relay.pool.port_min, cfg.relay.pool.port_max);
	assert_null(cfg.tunnel.spark_conf_path);
	assert_null(cfg.tunnel.state_path);
	assert_string_equal(cfg.tunnel.spark_json_path, "spark.json");
	conf_free(&cfg);
}

struct err_case {
	const char *name;
	const char *json;
	int rc;
	const char *want[3]; /* substrings of the message */
};

#define RELAY_OK_TLS "\"tls\": {\"cert\": \"c\", \"key\": \"k\"}"
#define TUNNEL_OK "\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"a\"}"

static const struct err_case err_cases[] = {
    {"syntax error has its line",
     "{\n  \"relay\": {\n    \"listen\": \"x:1\",\n  }\n}\n",
     SR_EINVAL,
     {"t.json:4:", "syntax error"}},
    {"syntax error: truncated", "{\"relay\": {", SR_EINVAL, {"t.json:1:", "syntax error"}},
    {"unknown key at its own position",
     "{\n  \"relay\": {\n    \"tls\": {\"certt\": \"a\"}\n  }\n}\n",
     SR_EINVAL,
     {"t.json:3:13: relay.tls.certt: unknown key", "cert, key, client_ca"}},
    {"an empty file says so", "  \n", SR_EINVAL, {"t.json: empty: want a JSON object"}},
    {"a byte order mark says so",
     "\xef\xbb\xbf{}",
     SR_EINVAL,
     {"t.json: starts with a byte order mark"}},
    {"unknown top-level key",
     "{\"log\": {}, \"relya\": {}}",
     SR_EINVAL,
     {"t.json:1:13: relya: unknown key (did you mean \"relay\"?", "log, relay, tunnel"}},
    {"a typo gets the key it meant, even past the list's first 256 bytes",
     "{\"relay\": {\"metrcs\": {}}}",
     SR_EINVAL,
     {"relay.metrcs: unknown key (did you mean \"metrics\"?", "reload, fleet)"}},
    {"no hint for a key like none",
     "{\"log\": {\"zzzzqq\": 1}}",
     SR_EINVAL,
     {"log.zzzzqq: unknown key (expected one of: level, format)"}},
    {"unknown key with a newline stays on one line",
     "{\"log\": {\"lev\\nel\": 1}}",
     SR_EINVAL,
     {"t.json:1:10: log.lev?el: unknown key (did you mean \"level\"? expected one of: level, "
      "format)"}},
    {"unknown key with a DEL byte is not quoted raw",
     "{\"log\": {\"lev\\u007fel\": 1}}",
     SR_EINVAL,
     {"t.json:1:10: log.lev?el: unknown key (did you mean \"level\"? expected one of: level, "
      "format)"}},
    {"duplicate key with a DEL byte is not quoted raw",
     "{\"log\": {\"a\x7f\": 1, \"a\x7f\": 2}}",
     SR_EINVAL,
     {"duplicate key \"a?\""}},
    {"duplicate key has its line",
     "{\n  \"relay\": {\n    \"max_tunnels\": 1,\n    \"max_tunnels\": 2\n  }\n}\n",
     SR_EINVAL,
     {"t.json:4:17: duplicate key \"max_tunnels\""}},
    {"wrong type: string for integer",
     "{\"relay\": {\"max_tunnels\": \"10\"}}",
     SR_EINVAL,
     {"t.json:1:27: relay.max_tunnels: must be an integer 1..1000000 (got \"10\")"}},
    {"wrong type: real for integer",
     "{\"relay\": {\"max_tunnels\": 1.5}}",
     SR_EINVAL,
     {"relay.max_tunnels: must be an integer 1..1000000 (got a real number 1.5)"}},
    {"a whole number in exponent form is a real number too",
     "{\"relay\": {\"max_tunnels\": 1e3}}",
     SR_EINVAL,
     {"relay.max_tunnels: must be an integer 1..1000000 (got a real number 1000)"}},
    {"wrong type: integer for boolean",
     "{\"tunnel\": {\"ui_port\": 1}}",
     SR_EINVAL,
     {"tunnel.ui_port: must be true or false (got 1)"}},
    {"wrong type: group not an object",
     "{\"relay\": {\"tls\": 5}}",
     SR_EINVAL,
     {"relay.tls: must be an object (got 5)"}},
    {"wrong type: section not an object",
     "{\"tunnel\": []}",
     SR_EINVAL,
     {"tunnel: must be an object (got an array)"}},
    {"null for a string that is not nullable",
     "{\"relay\": {\"listen\": null}}",
     SR_EINVAL,
     {"relay.listen: must be host:port", "(got null)"}},
    {"top level not an object",
     "[1, 2]",
     SR_EINVAL,
     {"t.json: the top level must be an object"}},
    {"out of range: port 0",
     "{\n  \"relay\": {\n    \"pool\": {\n      \"port_min\": 0\n    }\n  }\n}\n",
     SR_EINVAL,
     {"t.json:4:19: relay.pool.port_min: must be an integer 1..65535 (got 0)"}},
    {"out of range: negative",
     "{\"relay\": {\"pool\": {\"port_max\": -1}}}",
     SR_EINVAL,
     {"relay.pool.port_max: must be an integer 1..65535 (got -1)"}},
    {"out of range: above 32 bits",
     "{\"tunnel\": {\"h2\": {\"stream_window\": 4294967296}}}",
     SR_EINVAL,
     {"tunnel.h2.stream_window: must be an integer 1024..2147483647 (got 4294967296)"}},
    {"out of range: window over 2^31-1",
     "{\"relay\": {\"h2\": {\"stream_window\": 2147483648}}}",
     SR_EINVAL,
     {"relay.h2.stream_window: must be an integer 1024..2147483647"}},
    {"bad log level",
     "{\"log\": {\"level\": \"verbose\"}}",
     SR_EINVAL,
     {"t.json:1:19: log.level: must be one of \"error\", \"warn\", \"info\", \"debug\"",
      "(got \"verbose\")"}},
    {"listen without port",
     "{\"relay\": {\"listen\": \"0.0.0.0\"}}",
     SR_EINVAL,
     {"relay.listen: must be host:port (port 0: any free port) (got \"0.0.0.0\")"}},
    {"pool bind must be numeric",
     "{\"relay\": {\"pool\": {\"bind\": \"localhost\"}}}",
     SR_EINVAL,
     {"relay.pool.bind: must be a numeric IPv4 or IPv6 address (got \"localhost\")"}},
    {"empty string",
     "{\"relay\": {\"tls\": {\"cert\": \"\"}}}",
     SR_EINVAL,
     {"relay.tls.cert: must be a string of 1..4095 bytes (got \"\")"}},
    {"missing required relay cert",
     "{\"relay\": {\"tls\": {\"key\": \"k\"}}}",
     SR_EINVAL,
     {"t.json: relay.tls.cert: required", "SPARKRELAY_RELAY_TLS_CERT"}},
    {"missing required relay key",
     "{\"relay\": {\"tls\": {\"cert\": \"c\"}}}",
     SR_EINVAL,
     {"relay.tls.key: required"}},
    {"missing required relays",
     "{\"tunnel\": {\"tls\": {\"ca\": \"a\"}}}",
     SR_EINVAL,
     {"tunnel.relays: required", "SPARKRELAY_TUNNEL_RELAYS"}},
    {"missing required ca",
     "{\"tunnel\": {\"relays\": [\"r:1\"]}}",
     SR_EINVAL,
     {"tunnel.tls.ca: required"}},
    {"empty relay list",
     "{\"tunnel\": {\"relays\": []}}",
     SR_EINVAL,
     {"tunnel.relays: must be a list of 1..16 strings, each host:port, "
      "srv:_SERVICE._tcp.DOMAIN or k8s:[NAMESPACE/]SERVICE[:PORTNAME] (got 0 items)"}},
    {"too many relays",
     "{\"tunnel\": {\"relays\": "
     "[\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\","
     "\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\",\"a:1\"]}}",
     SR_EINVAL,
     {"tunnel.relays: must be a list of 1..16 strings", "(got 17 items)"}},
    {"relay item without port, located",
     "{\n \"tunnel\": {\n  \"relays\": [\n   \"a:1\",\n   \"nohost\"\n  ]\n }\n}\n",
     SR_EINVAL,
     {"t.json:5:4: tunnel.relays[1]: must be host:port, srv:_SERVICE._tcp.DOMAIN or "
      "k8s:[NAMESPACE/]SERVICE[:PORTNAME] (got \"nohost\")"}},
    {"keys written with escapes are located too",
     "{\"tunnel\": {\n  \"r\\u0065lays\": [\"a:1\", \"nohost\"]}}",
     SR_EINVAL,
     {"t.json:2:26: tunnel.relays[1]: must be host:port"}},
    {"relay item not a string",
     "{\"tunnel\": {\"relays\": [\"a:1\", 7]}}",
     SR_EINVAL,
     {"tunnel.relays[1]: must be host:port, srv:_SERVICE._tcp.DOMAIN or "
      "k8s:[NAMESPACE/]SERVICE[:PORTNAME] (got 7)"}},
    {"relay item with bad port",
     "{\"tunnel\": {\"relays\": [\"a:99999\"]}}",
     SR_EINVAL,
     {"tunnel.relays[0]: must be host:port, srv:_SERVICE._tcp.DOMAIN or "
      "k8s:[NAMESPACE/]SERVICE[:PORTNAME] (got \"a:99999\")"}},
    {"srv entry without _service._proto",
     "{\"tunnel\": {\"relays\": [\"srv:relay.example.com\"]}}",
     SR_EINVAL,
     {"tunnel.relays[0]: must be host:port, srv:", "(got \"srv:relay.example.com\")"}},
    {"k8s entry with a name Kubernetes refuses",
     "{\"tunnel\": {\"relays\": [\"k8s:Relays/sparkrelay:tunnel\"]}}",
     SR_EINVAL,
     {"tunnel.relays[0]: must be host:port, srv:", "(got \"k8s:Relays/sparkrelay:tunnel\")"}},
    {"nameserver that is a name",
     "{\"tunnel\": {\"discovery\": {\"nameservers\": [\"dns.example.com\"]}}}",
     SR_EINVAL,
     {"tunnel.discovery.nameservers[0]: must be a numeric IPv4 or IPv6 address"}},
    {"API server in clear text",
     "{\"tunnel\": {\"discovery\": {\"k8s\": {\"api_server\": \"http://10.0.0.1\"}}}}",
     SR_EINVAL,
     {"tunnel.discovery.k8s.api_server: must be an https:// URL"}},
    {"app empty",
     "{\"tunnel\": {\"app\": \"\"}}",
     SR_EINVAL,
     {"tunnel.app: must be UTF-8 text of 1..127 bytes without control characters (got \"\")"}},
    {"app too long",
     "{\"tunnel\": {\"app\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}",
     SR_EINVAL,
     {"tunnel.app: must be UTF-8 text of 1..127 bytes", "...\")"}},
    {"cross: port_min > port_max",
     "{\"relay\": {" RELAY_OK_TLS ",\n \"pool\": {\"port_min\": 41000, \"port_max\": 40000}}}",
     SR_EINVAL,
     {"t.json:2:23: relay.pool.port_min: must be at most relay.pool.port_max (40000) "
      "(got 41000)"}},
    {"cross: port_min > default port_max",
     "{\"relay\": {" RELAY_OK_TLS ", \"pool\": {\"port_min\": 50000}}}",
     SR_EINVAL,
     {"relay.pool.port_min: must be at most relay.pool.port_max (26999) (got 50000)"}},
    {"cross: require_client_cert without client_ca",
     "{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\", \"require_client_cert\": true}}}",
     SR_EINVAL,
     {"relay.tls.require_client_cert: true needs relay.tls.client_ca"}},
    {"cross: relay ping timeout not above interval",
     "{\"relay\": {" RELAY_OK_TLS ", \"h2\": {\"ping_interval_ms\": 30000, "
     "\"ping_timeout_ms\": 30000}}}",
     SR_EINVAL,
     {"relay.h2.ping_timeout_ms: must be greater than relay.h2.ping_interval_ms (30000) "
      "(got 30000)"}},
    {"cross: relay conn window below stream window",
     "{\"relay\": {" RELAY_OK_TLS ", \"h2\": {\"stream_window\": 1048576, "
     "\"conn_window\": 65535}}}",
     SR_EINVAL,
     {"relay.h2.conn_window: must be at least relay.h2.stream_window (1048576) "
      "(got 65535)"}},
    {"cross: tunnel conn window below stream window",
     "{\"tunnel\": {" TUNNEL_OK ", \"h2\": {\"conn_window\": 100000}}}",
     SR_EINVAL,
     {"tunnel.h2.conn_window: must be at least tunnel.h2.stream_window (262144)"}},
    {"cross: tunnel ping",
     "{\"tunnel\": {" TUNNEL_OK
     ", \"h2\": {\"ping_interval_ms\": 5000, \"ping_timeout_ms\": 5000}}}",
     SR_EINVAL,
     {"tunnel.h2.ping_timeout_ms: must be greater than tunnel.h2.ping_interval_ms"}},
    {"cross: tunnel cert without key",
     "{\"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"a\", \"cert\": \"c\"}}}",
     SR_EINVAL,
     {"tunnel.tls.cert: tunnel.tls.cert and tunnel.tls.key must be set together",
      "(tunnel.tls.key is not set)"}},
    {"cross: tunnel key without cert",
     "{\"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"a\", \"key\": \"k\"}}}",
     SR_EINVAL,
     {"tunnel.tls.key: ", "(tunnel.tls.cert is not set)"}},
    {"tunnel: allowed_ports range reversed",
     "{\"tunnel\": {" TUNNEL_OK ", \"allowed_ports\": [\"26000-26999\", \"27005-27000\"]}}",
     SR_EINVAL,
     {"tunnel.allowed_ports[1]: must be a port or a range of ports N-M (N <= M) within "
      "1..65535 "
      "(got \"27005-27000\")"}},
    {"tunnel: allowed_ports port 0",
     "{\"tunnel\": {" TUNNEL_OK ", \"allowed_ports\": [\"0-100\"]}}",
     SR_EINVAL,
     {"tunnel.allowed_ports[0]: must be a port or a range"}},
    {"tunnel: allowed_ports over 65535",
     "{\"tunnel\": {" TUNNEL_OK ", \"allowed_ports\": [\"65536\"]}}",
     SR_EINVAL,
     {"tunnel.allowed_ports[0]: must be a port or a range"}},
    {"tunnel: allowed_ports not a range",
     "{\"tunnel\": {" TUNNEL_OK ", \"allowed_ports\": [\"1-2-3\"]}}",
     SR_EINVAL,
     {"tunnel.allowed_ports[0]: must be a port or a range"}},
    {"tunnel: allowed_ports empty",
     "{\"tunnel\": {" TUNNEL_OK ", \"allowed_ports\": []}}",
     SR_EINVAL,
     {"tunnel.allowed_ports: "}},
    {"cross: backoff",
     "{\"tunnel\": {" TUNNEL_OK ", \"backoff_initial_ms\": 20000}}",
     SR_EINVAL,
     {"tunnel.backoff_initial_ms: must be at most tunnel.backoff_max_ms (10000) "
      "(got 20000)"}},
    {"secret is not echoed",
     "{\"relay\": {\"auth_token\": [\"hunter2-secret\"]}}",
     SR_EINVAL,
     {"relay.auth_token: must be a string of 1..255 bytes or null (got an array)"}},
    /* arrays of objects */
    {"array: not a list",
     "{\"relay\": {\"routes\": {\"name\": \"r\"}}}",
     SR_EINVAL,
     {"t.json:1:22: relay.routes: must be a list of 0..256 objects (got an object)"}},
    {"array: element not an object, located by index",
     "{\"relay\": {\"pools\": [\n  {\"name\": \"a\"},\n  5\n]}}",
     SR_EINVAL,
     {"t.json:3:3: relay.pools[1]: must be an object (got 5)"}},
    {"array: too many pools",
     "{\"relay\": {\"pools\": [{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}]}}",
     SR_EINVAL,
     {"relay.pools: must be a list of 0..16 objects (got 17 items)"}},
    {"array: too many cn patterns",
     "{\"relay\": {\"tenants\": [{\"name\": \"t\", \"match\": {\"cn\": "
     "[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}}]}}",
     SR_EINVAL,
     {"relay.tenants[0].match.cn: must be a list of 0..8 strings (got 9 items)"}},
    {"array: unknown key in an element, at its own position",
     "{\"relay\": {\"routes\": [\n  {\"name\": \"r\"},\n  {\"name\": \"s\", \"pools\": "
     "\"x\"}\n]}}",
     SR_EINVAL,
     {"t.json:3:17: relay.routes[1].pools: unknown key (did you mean \"pool\"? expected one "
      "of: name, tenant, app, "
      "sidecar_cidrs, pool, executor_cidrs)"}},
    {"array: bad value in a nested group of an element",
     "{\"relay\": {\"tenants\": [{\"name\": \"t\", \"match\": {\"cn\": [\"x\"]},\n"
     "  \"limits\": {\"leases\": -1}}]}}",
     SR_EINVAL,
     {"t.json:2:24: relay.tenants[0].limits.leases: must be an integer 0..65535 (got -1)"}},
    {"array: missing required name, at its element",
     "{\"relay\": {\"routes\": [\n  {\"name\": \"r\"},\n  {\"tenant\": \"*\"}\n]}}",
     SR_EINVAL,
     {"t.json:3:3: relay.routes[1].name: required, but not set"}},
    {"array: bad name alphabet",
     "{\"relay\": {\"pools\": [{\"name\": \"gpu pool\"}]}}",
     SR_EINVAL,
     {"relay.pools[0].name: must be a name of 1..63 letters, digits, '.', '_' or '-' "
      "(got \"gpu pool\")"}},
    {"array: bad CIDR item",
     "{\"relay\": {\"routes\": [{\"name\": \"r\", \"executor_cidrs\": [\"10.0.0.0/8\", "
     "\"10.0.0.0/40\"]}]}}",
     SR_EINVAL,
     {"relay.routes[0].executor_cidrs[1]: must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8",
      "(got \"10.0.0.0/40\")"}},
    {"array: bad token hash",
     "{\"relay\": {\"tenants\": [{\"name\": \"t\", \"match\": {\"token_sha256\": "
     "[\"abc\"]}}]}}",
     SR_EINVAL,
     {"relay.tenants[0].match.token_sha256[0]: must be 64 hex digits (the SHA-256 of a "
      "token) (got \"abc\")"}},
    {"array: route tenant must be a name or *",
     "{\"relay\": {\"routes\": [{\"name\": \"r\", \"tenant\": \"a*\"}]}}",
     SR_EINVAL,
     {"relay.routes[0].tenant: must be a tenant name or \"*\" (got \"a*\")"}},
    /* cross-field: the policy compiled by the loader, reported with its location */
    {"policy: route names an unknown pool",
     "{\"relay\": {" RELAY_OK_TLS ",\n"
     " \"pools\": [{\"name\": \"cpu\"}],\n"
     " \"routes\": [\n"
     "  {\"name\": \"a\", \"pool\": \"cpu\"},\n"
     "  {\"name\": \"b\"},\n"
     "  {\"name\": \"c\",\n"
     "   \"pool\": \"gpu\"}]}}",
     SR_EINVAL,
     {"t.json:7:12: relay.routes[2].pool: no pool \"gpu\""}},
    {"policy: route names an unknown tenant",
     "{\"relay\": {" RELAY_OK_TLS ", \"tenants\": [{\"name\": \"t\", \"match\": "
     "{\"cn\": [\"x\"]}}], \"routes\": [{\"name\": \"r\", \"tenant\": \"u\"}]}}",
     SR_EINVAL,
     {"relay.routes[0].tenant: no tenant \"u\""}},
    {"policy: route names a pool while relay.pools is empty",
     "{\"relay\": {" RELAY_OK_TLS ", \"routes\": [{\"name\": \"r\", \"pool\": \"cpu\"}]}}",
     SR_EINVAL,
     {"relay.routes[0].pool: no pool \"cpu\" (relay.pools is empty: the only pool is "
      "\"default\", from relay.pool)"}},
    {"policy: duplicate pool names",
     "{\"relay\": {" RELAY_OK_TLS ", \"pools\": [{\"name\": \"a\", \"port_min\": 1, "
     "\"port_max\": 2}, {\"name\": \"a\", \"port_min\": 3, \"port_max\": 4}]}}",
     SR_EINVAL,
     {"relay.pools[1].name: duplicate name \"a\" (also relay.pools[0])"}},
    {"policy: overlapping pools",
     "{\"relay\": {" RELAY_OK_TLS ", \"pools\": [{\"name\": \"a\"}, {\"name\": \"b\", "
     "\"bind\": \"10.0.0.1\", \"port_min\": 26999, \"port_max\": 27000}]}}",
     SR_EINVAL,
     {"relay.pools[1]: ports 26999..27000 on 10.0.0.1 overlap relay.pools[0] \"a\""}},
    {"policy: pool port_min above port_max",
     "{\"relay\": {" RELAY_OK_TLS ", \"pools\": [{\"name\": \"a\", \"port_min\": 27000}]}}",
     SR_EINVAL,
     {"relay.pools[0].port_min: must be at most relay.pools[0].port_max (26999) (got "
      "27000)"}},
    {"policy: tenant without matchers, located",
     "{\"relay\": {" RELAY_OK_TLS ",\n \"tenants\": [{\"name\": \"t\", \"match\": {}}]}}",
     SR_EINVAL,
     {"t.json:2:37: relay.tenants[0].match: needs at least one cn, san or token_sha256"}},
    {"pool and pools both given",
     "{\"relay\": {" RELAY_OK_TLS ",\n \"pool\": {\"port_min\": 45000},\n"
     " \"pools\": [{\"name\": \"a\"}]}}",
     SR_EINVAL,
     {"t.json:2:10: relay.pool: relay.pool and relay.pools cannot both be given"}},
    /* admin */
    {"admin: off loopback without a token",
     "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"0.0.0.0:9090\"}}}",
     SR_EINVAL,
     {"relay.admin.token: required when relay.admin.listen (\"0.0.0.0:9090\") is not a "
      "loopback address"}},
    {"admin: a routable address without a token",
     "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"[fd00::1]:9090\", "
     "\"token\": null}}}",
     SR_EINVAL,
     {"relay.admin.token: required"}},
    {"admin: a name that is not localhost without a token",
     "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"admin.example:9090\"}}}",
     SR_EINVAL,
     {"relay.admin.token: required"}},
    {"admin: bad listen",
     "{\"relay\": {\"admin\": {\"listen\": \"9090\"}}}",
     SR_EINVAL,
     {"relay.admin.listen: must be host:port (port 0: any free port) or null (got \"9090\")"}},
    /* metrics */
    {"metrics: on the admin listener's address",
     "{\"relay\": {" RELAY_OK_TLS ", \"metrics\": {\"listen\": \"127.0.0.1:9090\"}}}",
     SR_EINVAL,
     {"relay.metrics.listen: must not be the address of relay.admin.listen "
      "(\"127.0.0.1:9090\")"}},
    {"metrics: a wildcard on the admin listener's port",
     "{\"relay\": {" RELAY_OK_TLS ", \"metrics\": {\"listen\": \"0.0.0.0:9090\"}}}",
     SR_EINVAL,
     {"relay.metrics.listen: must not be"}},
    /* log */
    {"log: unknown format",
     "{\"log\": {\"format\": \"xml\"}}",
     SR_EINVAL,
     {"log.format: must be one of", "(got \"xml\")"}},
};

static void test_errors(void **state)
{
	size_t i, k;

	(void)state;
	for (i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
		const struct err_case *c = &err_cases[i];
		struct sr_config cfg;
		char err[ERRLEN] = "";
		int rc = load(c->json, &cfg, err);

		if (rc != c->rc)
			fail_msg("%s: rc %d, want %d (%s)", c->name, rc, c->rc, err);
		if (strchr(err, '\n'))
			fail_msg("%s: message is not one line: %s", c->name, err);
		for (k = 0; k < 3 && c->want[k]; k++)
			if (!strstr(err, c->want[k]))
				fail_msg("%s: expected \"%s\" in \"%s\"", c->name, c->want[k],
					 err);
		assert_empty_cfg(&cfg);
		conf_free(&cfg);
	}
}

static void test_secret_not_in_messages(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN], json[6000];
	size_t off;

	(void)state;
	/* a token over the limit: the message must describe, not quote it */
	off = (size_t)snprintf(json, sizeof(json), "{\"tunnel\": {\"token\": \"");
	memset(json + off, 'S', 4096);
	off += 4096;
	snprintf(json + off, sizeof(json) - off, "\"}}");
	assert_int_equal(load(json, &cfg, err), SR_EINVAL);
	assert_contains(err, "tunnel.token: must be a string of 1..255 bytes or null");
	assert_contains(err, "(got a secret of 4096 bytes)");
	assert_null(strstr(err, "SSSS"));
}

/* A token travels in the register message, which carries 255 bytes: a
 * longer tunnel.token was cut there (and refused by the relay), a longer
 * relay.auth_token could never match. Both are refused where they are set,
 * in the file and in the environment. */
static void test_tokens_fit_the_register_message(void **state)
{
	static const char *const keys[][3] = {
	    {"tunnel", "token", "SPARKRELAY_TUNNEL_TOKEN"},
	    {"relay", "auth_token", "SPARKRELAY_RELAY_AUTH_TOKEN"},
	};
	char tok[TUN_CTL_TOKEN_MAX + 1], json[1024], err[ERRLEN];
	struct sr_config cfg;

	(void)state;
	for (size_t k = 0; k < 2; k++) {
		const char *sect = keys[k][0], *key = keys[k][1];
		const char *rest = k == 0 ? TUNNEL_OK : RELAY_OK_TLS;

		for (size_t len = TUN_CTL_TOKEN_MAX - 1; len <= TUN_CTL_TOKEN_MAX; len++) {
			int want = len < TUN_CTL_TOKEN_MAX ? 0 : SR_EINVAL;

			memset(tok, 'T', len);
			tok[len] = '\0';
			snprintf(json, sizeof(json), "{\"%s\": {%s, \"%s\": \"%s\"}}", sect, rest,
				 key, tok);
			assert_int_equal(load(json, &cfg, err), want);
			if (want) {
				assert_contains(err, "must be a string of 1..255 bytes or null");
				assert_contains(err, "(got a secret of 256 bytes)");
			}
			conf_free(&cfg);

			snprintf(json, sizeof(json), "{\"%s\": {%s}}", sect, rest);
			assert_int_equal(setenv(keys[k][2], tok, 1), 0);
			assert_int_equal(load(json, &cfg, err), want);
			if (want)
				assert_contains(err, "1..255 bytes");
			unsetenv(keys[k][2]);
			conf_free(&cfg);
		}
	}
}

/* A secret next to a syntax error: jansson quotes up to 20 bytes of the
 * token where parsing failed, which is the secret itself when it is written
 * without quotes or its string is cut. The message keeps file:line:col and
 * the rule, never the text. */
static void test_syntax_error_does_not_quote_secrets(void **state)
{
	static const struct {
		const char *json, *want;
	} cases[] = {
	    /* a token pasted without quotes */
	    {"{\"relay\": {\"auth_token\": s3cr3t-Qz9}}", "t.json:1:26: syntax error: invalid token"},
	    /* a newline, a tab and the end of the file right after the secret */
	    {"{\"relay\": {\"auth_token\": \"s3cr3t-Qz9\n\"}}",
	     "t.json:1:36: syntax error: unexpected newline"},
	    {"{\"tunnel\": {\"token\": \"s3cr3t-Qz9\t\"}}",
	     "t.json:1:32: syntax error: control character 0x9"},
	    {"{\"tunnel\": {\"token\": \"s3cr3t-Qz9", "t.json:1:32: syntax error: premature end of input"},
	    /* a bad escape inside the secret */
	    {"{\"tunnel\": {\"token\": \"s3cr3t\\ud800-Qz9\"}}",
	     "t.json:1:39: syntax error: invalid Unicode escape"},
	    /* in the admin token, after valid content */
	    {"{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\"},\n"
	     " \"admin\": {\"token\": s3cr3t-Qz9}}}",
	     "t.json:2:21: syntax error: invalid token"},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sr_config cfg;
		char err[ERRLEN] = "";

		if (load(cases[i].json, &cfg, err) != SR_EINVAL)
			fail_msg("case %zu loaded", i);
		if (strstr(err, "s3cr3t") || strstr(err, "Qz9"))
			fail_msg("case %zu: the secret is quoted: %s", i, err);
		if (strstr(err, "near '"))
			fail_msg("case %zu: source text is quoted: %s", i, err);
		if (!strstr(err, cases[i].want))
			fail_msg("case %zu: expected \"%s\" in \"%s\"", i, cases[i].want, err);
		assert_empty_cfg(&cfg);
	}
}

/* A secret written as a bare number has the right type wrong: the message
 * names the type, not the number. */
static void test_numeric_secret_not_quoted(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	assert_int_equal(load("{\"relay\": {\"auth_token\": 73195561}}", &cfg, err), SR_EINVAL);
	assert_contains(err, "relay.auth_token: must be a string");
	assert_contains(err, "(got a number)");
	assert_null(strstr(err, "73195561"));
	assert_int_equal(load("{\"tunnel\": {\"token\": 7319.5561}}", &cfg, err), SR_EINVAL);
	assert_contains(err, "(got a number)");
	assert_null(strstr(err, "7319"));
}

/* A bad value from the file or the environment is quoted escaped with
 * sr_esc: control bytes as \xNN (an escape sequence never reaches a
 * terminal), quotes and backslashes with a backslash (the quoted value
 * cannot end early), bytes above 0x7e as \xNN. */
static void test_bad_values_are_quoted_escaped(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	assert_int_equal(load("{\"relay\": {\"listen\": \"a\\u001b[31m\\\"b\\\\c\"}}", &cfg, err),
			 SR_EINVAL);
	assert_contains(err, "relay.listen: must be host:port");
	assert_contains(err, "(got \"a\\x1b[31m\\\"b\\\\c\")");
	assert_null(strchr(err, '\x1b'));
	assert_int_equal(load("{\"log\": {\"level\": \"d\xc3\xa9" "bug\"}}", &cfg, err), SR_EINVAL);
	assert_contains(err, "(got \"d\\xc3\\xa9bug\")");
	/* a long value is cut after 48 bytes, escapes and all */
	assert_int_equal(load("{\"relay\": {\"listen\": \"\\u0001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
			      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}}",
			      &cfg, err),
			 SR_EINVAL);
	assert_contains(err, "(got \"\\x01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\")");
	setenv("SPARKRELAY_RELAY_LISTEN", "x\ty", 1);
	assert_int_equal(load("{}", &cfg, err), SR_EINVAL);
	unsetenv("SPARKRELAY_RELAY_LISTEN");
	assert_contains(err, "env SPARKRELAY_RELAY_LISTEN: relay.listen: must be host:port");
	assert_contains(err, "(got \"x\\x09y\")");
	assert_empty_cfg(&cfg);
}

/* Values that the relay or the sidecar could not send in a message, or
 * that name no host, are refused when the file is read: a bad advertise
 * made every registration fail with "out of memory"; an app with a control
 * character, and a relay entry whose host is no host name, passed
 * check-config and then failed at every dial. */
static void test_hosts_and_app_are_checked_at_load(void **state)
{
	static const struct {
		const char *json, *want;
	} cases[] = {
	    {"{\"relay\": {\"pool\": {\"advertise\": \"evil\\nspark.x=1\"}}}",
	     "relay.pool.advertise: must be a DNS name"},
	    {"{\"relay\": {\"pool\": {\"advertise\": \"not a host!\"}}}",
	     "relay.pool.advertise: must be a DNS name"},
	    {"{\"relay\": {\"pools\": [{\"name\": \"p\", \"advertise\": \"a b\"}]}}",
	     "advertise: must be a DNS name"},
	    {"{\"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"c\"}, \"app\": "
	     "\"nb\\u001b[31m\"}}",
	     "tunnel.app: must be UTF-8 text"},
	    {"{\"tunnel\": {\"relays\": [\"a\\u001b[31m:1\"], \"tls\": {\"ca\": \"c\"}}}",
	     "tunnel.relays"},
	    {"{\"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"c\"}, "
	     "\"server_name\": \"x y\"}}",
	     "tunnel.server_name: must be a DNS name"},
	};
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		if (load(cases[i].json, &cfg, err) != SR_EINVAL)
			fail_msg("case %zu accepted: %s", i, cases[i].json);
		assert_contains(err, cases[i].want);
		assert_null(strchr(err, '\x1b'));
		assert_empty_cfg(&cfg);
	}
	/* and good ones still pass */
	assert_int_equal(load("{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\"}, "
			      "\"pool\": {\"advertise\": \"relay.example.com\"}}}",
			      &cfg, err),
			 0);
	conf_free(&cfg);
	assert_int_equal(load("{\"tunnel\": {\"relays\": [\"r:1\"], \"tls\": {\"ca\": \"c\"}, "
			      "\"app\": \"n\u00e9-1\"}}",
			      &cfg, err),
			 0);
	conf_free(&cfg);
}

/* A check across settings (port_min <= port_max, a token for a non-loopback
 * admin listener) that fails because of a variable names the variable, not
 * the file's line of the value the variable replaced. */
static void test_cross_checks_name_the_variable(void **state)
{
	static const char *const json =
	    "{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\"},\n"
	    " \"pool\": {\"port_min\": 24100, \"port_max\": 24119},\n"
	    " \"admin\": {\"listen\": \"127.0.0.1:24093\"}}}";
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	assert_int_equal(load(json, &cfg, err), 0);
	conf_free(&cfg);
	setenv("SPARKRELAY_RELAY_POOL_PORT_MIN", "30000", 1);
	assert_int_equal(load(json, &cfg, err), SR_EINVAL);
	unsetenv("SPARKRELAY_RELAY_POOL_PORT_MIN");
	assert_contains(err, "env SPARKRELAY_RELAY_POOL_PORT_MIN: relay.pool.port_min: must be "
			     "at most relay.pool.port_max (24119) (got 30000)");
	setenv("SPARKRELAY_RELAY_POOL_PORT_MAX", "24000", 1);
	assert_int_equal(load(json, &cfg, err), SR_EINVAL);
	unsetenv("SPARKRELAY_RELAY_POOL_PORT_MAX");
	assert_contains(err, "env SPARKRELAY_RELAY_POOL_PORT_MAX: relay.pool.port_max: must be "
			     "at least relay.pool.port_min (24100) (got 24000)");
	setenv("SPARKRELAY_RELAY_ADMIN_LISTEN", "0.0.0.0:24093", 1);
	assert_int_equal(load(json, &cfg, err), SR_EINVAL);
	unsetenv("SPARKRELAY_RELAY_ADMIN_LISTEN");
	assert_contains(err, "env SPARKRELAY_RELAY_ADMIN_LISTEN: relay.admin.token: required");
	/* from the file, the file's line */
	assert_int_equal(load("{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\"},\n"
			      " \"pool\": {\"port_min\": 30000, \"port_max\": 24119}}}",
			      &cfg, err),
			 SR_EINVAL);
	assert_contains(err, "t.json:2:");
	assert_empty_cfg(&cfg);
}

/* An unknown key is shown in the path unquoted: its control characters as
 * '?', C1 (U+009B is CSI) as well as C0. */
static void test_unknown_keys_are_masked(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	assert_int_equal(load("{\"relay\": {\"\\u001b[31mX\\u009b2J\": 1}}", &cfg, err),
			 SR_EINVAL);
	assert_contains(err, "relay.?[31mX??2J");
	assert_null(strchr(err, '\x1b'));
	assert_null(strstr(err, "\xc2\x9b"));
	assert_empty_cfg(&cfg);
}

/* SPARKRELAY_<section>_* names of every length are checked: one too long to
 * be a setting is an error like any unknown name, quoted escaped and cut. */
static void test_env_unknown_names_of_any_length(void **state)
{
	static const size_t lens[] = {200, 271, 272, 273, 300, 5000};
	char name[5100];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		struct sr_config cfg;
		char err[ERRLEN] = "";
		size_t n = lens[i];

		memset(name, 'X', n);
		memcpy(name, "SPARKRELAY_RELAY_", 17);
		name[n] = '\0';
		assert_int_equal(setenv(name, "1", 1), 0);
		if (load("{\"relay\": {" RELAY_OK_TLS "}}", &cfg, err) != SR_EINVAL)
			fail_msg("a %zu-byte SPARKRELAY_RELAY_ name was ignored", n);
		unsetenv(name);
		assert_contains(err, "env SPARKRELAY_RELAY_XXXX");
		assert_contains(err, "no such setting");
		assert_true(strlen(err) < 200);
		if (n > 96)
			assert_contains(err, "XXX...");
		assert_empty_cfg(&cfg);
	}
	/* the tunnel and log sections too, and names not under a section stay
	 * someone else's */
	memset(name, 'Y', 400);
	memcpy(name, "SPARKRELAY_TUNNEL_", 18);
	name[400] = '\0';
	assert_int_equal(setenv(name, "1", 1), 0);
	{
		struct sr_config cfg;
		char err[ERRLEN] = "";

		assert_int_equal(load("{}", &cfg, err), SR_EINVAL);
		assert_contains(err, "env SPARKRELAY_TUNNEL_YYY");
	}
	unsetenv(name);
	memcpy(name, "SPARKRELAY_OTHER__", 18);
	assert_int_equal(setenv(name, "1", 1), 0);
	{
		struct sr_config cfg;
		char err[ERRLEN] = "";

		assert_int_equal(load("{}", &cfg, err), 0);
		conf_free(&cfg);
	}
	unsetenv(name);
}

/* An unknown name is environment text: control bytes reach the message
 * escaped, never raw. */
static void test_env_unknown_name_is_escaped(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	assert_int_equal(setenv("SPARKRELAY_LOG_\x1b[31mRED\"", "1", 1), 0);
	assert_int_equal(load("{}", &cfg, err), SR_EINVAL);
	unsetenv("SPARKRELAY_LOG_\x1b[31mRED\"");
	assert_null(strchr(err, '\x1b'));
	assert_contains(err, "env SPARKRELAY_LOG_\\x1b[31mRED\\\": no such setting");
}

static void test_file_missing(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	memset(&cfg, 0x5a, sizeof(cfg)); /* garbage in: must come back empty */
	assert_int_equal(conf_load_file("/nonexistent/sparkrelay.json", &cfg, err, sizeof(err)),
			 SR_ENOTFOUND);
	assert_contains(err, "/nonexistent/sparkrelay.json: cannot open: No such file");
	assert_empty_cfg(&cfg);
	conf_free(&cfg);
}

static void test_file_too_big(void **state)
{
	struct sr_config cfg;
	char path[] = "/tmp/test_conf_big_XXXXXX", err[ERRLEN];
	char *big;
	FILE *f;
	int fd;

	(void)state;
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	/* valid JSON, so only the size can refuse it */
	fputs("{\"log\": {\"level\": \"info\"}}", f);
	for (int i = 0; i < CONF_MAX_FILE_SIZE; i++)
		fputc(' ', f);
	fclose(f);
	assert_int_equal(conf_load_file(path, &cfg, err, sizeof(err)), SR_ETOOBIG);
	assert_contains(err, path);
	assert_contains(err, "too big");
	assert_contains(err, "1048576");
	assert_empty_cfg(&cfg);
	unlink(path);

	/* the same limit for text in memory */
	big = malloc(CONF_MAX_FILE_SIZE + 2);
	assert_non_null(big);
	memset(big, ' ', CONF_MAX_FILE_SIZE + 1);
	big[0] = '{';
	big[CONF_MAX_FILE_SIZE] = '}';
	big[CONF_MAX_FILE_SIZE + 1] = '\0';
	assert_int_equal(load(big, &cfg, err), SR_ETOOBIG);
	assert_contains(err, "t.json: too big");
	/* one byte less fits */
	big[CONF_MAX_FILE_SIZE - 1] = '}';
	big[CONF_MAX_FILE_SIZE] = '\0';
	assert_int_equal(load(big, &cfg, err), 0);
	conf_free(&cfg);
	free(big);
}

static void test_file_is_directory(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	assert_true(conf_load_file("/tmp", &cfg, err, sizeof(err)) < 0);
	assert_contains(err, "/tmp: ");
	assert_empty_cfg(&cfg);
}

static void test_env_overrides_file(void **state)
{
	struct sr_config cfg;
	char path[1024], err[ERRLEN];

	(void)state;
	TS_SRC_PATH("example-relay.json", path, sizeof(path));
	setenv("SPARKRELAY_RELAY_POOL_PORT_MIN", "41010", 1);
	setenv("SPARKRELAY_RELAY_TLS_REQUIRE_CLIENT_CERT", "0", 1);
	setenv("SPARKRELAY_RELAY_AUTH_TOKEN", "", 1); /* empty unsets a nullable string */
	setenv("SPARKRELAY_RELAY_H2_MAX_STREAMS", "77", 1);
	setenv("SPARKRELAY_LOG_LEVEL", "debug", 1);
	setenv("SPARKRELAY_BIN", "/not/ours", 1); /* outside our prefixes: ignored */
	assert_int_equal(conf_load_file(path, &cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.relay.pool.port_min, 41010);
	assert_int_equal(cfg.relay.pool.port_max, 41099); /* from the file */
	assert_int_equal(cfg.relay.require_client_cert, 0);
	assert_null(cfg.relay.auth_token);
	assert_int_equal(cfg.relay.tun.max_streams, 77);
	assert_int_equal(cfg.tunnel.tun.max_streams, 16384); /* the other section's h2 */
	assert_string_equal(cfg.log_level, "debug");
	assert_int_equal(cfg.have_tunnel, 0);
	conf_free(&cfg);
}

static void test_env_without_file(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	setenv("SPARKRELAY_TUNNEL_RELAYS", "a:1, b:2,[::1]:3", 1);
	setenv("SPARKRELAY_TUNNEL_TLS_CA", "/ca.pem", 1);
	setenv("SPARKRELAY_TUNNEL_TOKEN", "tok-from-env", 1);
	setenv("SPARKRELAY_TUNNEL_UI_PORT", "true", 1);
	assert_int_equal(conf_load_string("{}", "env", &cfg, err, sizeof(err)), 0);
	assert_int_equal(cfg.have_tunnel, 1); /* made present by the environment */
	assert_int_equal(cfg.have_relay, 0);
	assert_int_equal(cfg.tunnel.nrelays, 3);
	assert_string_equal(cfg.tunnel.relays[0], "a:1");
	assert_string_equal(cfg.tunnel.relays[1], "b:2");
	assert_string_equal(cfg.tunnel.relays[2], "[::1]:3");
	assert_string_equal(cfg.tunnel.ca_file, "/ca.pem");
	assert_string_equal(cfg.tunnel.token, "tok-from-env");
	assert_int_equal(cfg.tunnel.want_ui, 1);
	conf_free(&cfg);

	/* the list from the environment replaces the file's list */
	setenv("SPARKRELAY_TUNNEL_RELAYS", "c:4", 1);
	assert_int_equal(load("{\"tunnel\": {\"relays\": [\"x:1\", \"y:2\"]}}", &cfg, err), 0);
	assert_int_equal(cfg.tunnel.nrelays, 1);
	assert_string_equal(cfg.tunnel.relays[0], "c:4");
	assert_null(cfg.tunnel.relays[1]);
	conf_free(&cfg);

	/* a section made present by the environment is checked like a file's */
	unsetenv("SPARKRELAY_TUNNEL_TLS_CA");
	assert_int_equal(load("{}", &cfg, err), SR_EINVAL);
	assert_contains(err, "tunnel.tls.ca: required");
}

/* One environment often holds both roles' variables (a notebook image, a
 * shell that started both): a role neither applies nor checks the other
 * role's section variables, and still refuses unknown names in its own. */
static void test_env_other_role_is_ignored(void **state)
{
	static const char relay_json[] = "{\"relay\": {" RELAY_OK_TLS "}}";
	static const char tunnel_json[] = "{\"tunnel\": {" TUNNEL_OK "}}";
	struct sr_config cfg;
	char err[ERRLEN] = "";

	(void)state;
	/* the sidecar's settings, a bad one and a typo among them */
	setenv("SPARKRELAY_TUNNEL_TOKEN", "tok", 1);
	setenv("SPARKRELAY_TUNNEL_RELAYS", "not a host", 1);
	setenv("SPARKRELAY_TUNNEL_NO_SUCH_KEY", "1", 1);
	if (conf_load_string_roles(relay_json, "t.json", CONF_ROLE_RELAY, &cfg, err,
				   sizeof(err)) != 0)
		fail_msg("relay refused for the tunnel's variables: %s", err);
	assert_int_equal(cfg.have_relay, 1);
	assert_int_equal(cfg.have_tunnel, 0);
	assert_null(cfg.tunnel.token);
	conf_free(&cfg);
	/* check-config relay.json: the roles of the file */
	if (conf_load_string_roles(relay_json, "t.json", CONF_ROLES_OF_FILE, &cfg, err,
				   sizeof(err)) != 0)
		fail_msg("check-config refused for the tunnel's variables: %s", err);
	assert_int_equal(cfg.have_tunnel, 0);
	conf_free(&cfg);
	/* the relay from the environment alone */
	setenv("SPARKRELAY_RELAY_TLS_CERT", "c", 1);
	setenv("SPARKRELAY_RELAY_TLS_KEY", "k", 1);
	setenv("SPARKRELAY_RELAY_MAX_TUNNELS", "7", 1);
	if (conf_load_string_roles("{}", "environment", CONF_ROLE_RELAY, &cfg, err,
				   sizeof(err)) != 0)
		fail_msg("relay from the environment refused: %s", err);
	assert_int_equal(cfg.have_relay, 1);
	assert_int_equal(cfg.have_tunnel, 0);
	assert_int_equal(cfg.relay.max_tunnels, 7);
	conf_free(&cfg);
	/* its own section's typos are still errors */
	setenv("SPARKRELAY_RELAY_MAX_TUNNEL", "7", 1);
	assert_int_equal(conf_load_string_roles(relay_json, "t.json", CONF_ROLE_RELAY, &cfg, err,
						sizeof(err)),
			 SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_RELAY_MAX_TUNNEL: no such setting");
	assert_empty_cfg(&cfg);
	unsetenv("SPARKRELAY_RELAY_MAX_TUNNEL");
	/* the same the other way round: the sidecar ignores the relay's */
	setenv("SPARKRELAY_RELAY_POOL_PORT_MIN", "0", 1);
	setenv("SPARKRELAY_RELAY_NO_SUCH_KEY", "1", 1);
	unsetenv("SPARKRELAY_TUNNEL_RELAYS");
	unsetenv("SPARKRELAY_TUNNEL_NO_SUCH_KEY");
	if (conf_load_string_roles(tunnel_json, "t.json", CONF_ROLE_TUNNEL, &cfg, err,
				   sizeof(err)) != 0)
		fail_msg("tunnel refused for the relay's variables: %s", err);
	assert_int_equal(cfg.have_relay, 0);
	assert_string_equal(cfg.tunnel.token, "tok");
	conf_free(&cfg);
	setenv("SPARKRELAY_TUNNEL_TOKN", "x", 1);
	assert_int_equal(conf_load_string_roles(tunnel_json, "t.json", CONF_ROLE_TUNNEL, &cfg, err,
						sizeof(err)),
			 SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_TUNNEL_TOKN: no such setting");
	unsetenv("SPARKRELAY_TUNNEL_TOKN");
	/* log is shared: it applies, and is checked, for every role */
	setenv("SPARKRELAY_LOG_LEVEL", "debug", 1);
	assert_int_equal(conf_load_string_roles(tunnel_json, "t.json", CONF_ROLE_TUNNEL, &cfg, err,
						sizeof(err)),
			 0);
	assert_string_equal(cfg.log_level, "debug");
	conf_free(&cfg);
	setenv("SPARKRELAY_LOG_LEVL", "debug", 1);
	assert_int_equal(conf_load_string_roles(tunnel_json, "t.json", CONF_ROLE_TUNNEL, &cfg, err,
						sizeof(err)),
			 SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_LOG_LEVL: no such setting");
	unsetenv("SPARKRELAY_LOG_LEVL");
	/* the file's sections are checked whatever the role */
	assert_int_equal(conf_load_string_roles("{\"relay\": {" RELAY_OK_TLS "}, \"tunnel\": "
						"{\"relays\": []}}",
						"t.json", CONF_ROLE_RELAY, &cfg, err, sizeof(err)),
			 SR_EINVAL);
	assert_contains(err, "tunnel.relays: must be a list of 1..16 strings");
	/* a file without sections: every role's variables, as before */
	clear_env(NULL);
	setenv("SPARKRELAY_TUNNEL_RELAYS", "r:1", 1);
	setenv("SPARKRELAY_TUNNEL_TLS_CA", "ca.pem", 1);
	assert_int_equal(conf_load_string_roles("{}", "environment", CONF_ROLES_OF_FILE, &cfg, err,
						sizeof(err)),
			 0);
	assert_int_equal(cfg.have_tunnel, 1);
	conf_free(&cfg);
}

static void test_env_no_section_without_keys(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	setenv("SPARKRELAY_LOG_LEVEL", "error", 1);
	assert_int_equal(load("{}", &cfg, err), 0);
	assert_int_equal(cfg.have_relay, 0);
	assert_int_equal(cfg.have_tunnel, 0);
	assert_string_equal(cfg.log_level, "error");
	conf_free(&cfg);
}

struct env_case {
	const char *var, *value, *want[2];
};

static const struct env_case env_cases[] = {
    {"SPARKRELAY_RELAY_POOL_PORT_MIN",
     "0",
     {"env SPARKRELAY_RELAY_POOL_PORT_MIN: relay.pool.port_min: must be an integer 1..65535 "
      "(got \"0\")"}},
    {"SPARKRELAY_RELAY_POOL_PORT_MIN", "4x", {"must be an integer 1..65535 (got \"4x\")"}},
    {"SPARKRELAY_RELAY_POOL_PORT_MIN", "-5", {"(got \"-5\")"}},
    {"SPARKRELAY_RELAY_MAX_TUNNELS", "99999999999", {"relay.max_tunnels: must be an integer"}},
    {"SPARKRELAY_RELAY_TLS_REQUIRE_CLIENT_CERT",
     "yes",
     {"env SPARKRELAY_RELAY_TLS_REQUIRE_CLIENT_CERT: ",
      "must be true, false, 1 or 0 (got \"yes\")"}},
    {"SPARKRELAY_LOG_LEVEL", "", {"env SPARKRELAY_LOG_LEVEL: log.level: must be one of"}},
    {"SPARKRELAY_TUNNEL_RELAYS",
     "a:1,,b:2",
     {"env SPARKRELAY_TUNNEL_RELAYS: tunnel.relays[1]: must be host:port, srv:_SERVICE._tcp.DOMAIN or k8s:[NAMESPACE/]SERVICE[:PORTNAME] (got \"\")"}},
    {"SPARKRELAY_TUNNEL_RELAYS",
     "",
     {"tunnel.relays: must be a comma-separated list of 1..16 strings"}},
    {"SPARKRELAY_TUNNEL_RELAYS",
     "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,"
     "n:14,o:15,p:16,q:17",
     {"(got 17 items)"}},
    {"SPARKRELAY_TUNNEL_TOKEN", "x", {NULL}}, /* valid: the control case */
    {"SPARKRELAY_RELAY_POOL_PORTMIN",
     "1",
     {"env SPARKRELAY_RELAY_POOL_PORTMIN: no such setting"}},
    {"SPARKRELAY_TUNNEL_H2", "1", {"env SPARKRELAY_TUNNEL_H2: no such setting"}},
};

static void test_env_bad_values(void **state)
{
	size_t i, k;

	(void)state;
	for (i = 0; i < sizeof(env_cases) / sizeof(env_cases[0]); i++) {
		const struct env_case *c = &env_cases[i];
		struct sr_config cfg;
		char err[ERRLEN] = "";
		int rc;

		setenv(c->var, c->value, 1);
		rc = load("{\"relay\": {" RELAY_OK_TLS "}, \"tunnel\": {" TUNNEL_OK "}}", &cfg,
			  err);
		unsetenv(c->var);
		if (!c->want[0]) {
			if (rc != 0)
				fail_msg("%s=%s: rc %d (%s)", c->var, c->value, rc, err);
			conf_free(&cfg);
			continue;
		}
		if (rc != SR_EINVAL)
			fail_msg("%s=%s: rc %d, want SR_EINVAL", c->var, c->value, rc);
		for (k = 0; k < 2 && c->want[k]; k++)
			if (!strstr(err, c->want[k]))
				fail_msg("%s=%s: expected \"%s\" in \"%s\"", c->var, c->value,
					 c->want[k], err);
		assert_empty_cfg(&cfg);
	}
}

/* ---- pools, tenants, routes and the admin listener ---- */

#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static const char policy_json[] =
    "{\"relay\": {\"tls\": {\"cert\": \"c\", \"key\": \"k\"},\n"
    " \"pools\": [\n"
    "  {\"name\": \"cpu\", \"bind\": \"10.0.0.1\", \"port_min\": 40000, \"port_max\": 40099},\n"
    "  {\"name\": \"gpu\", \"advertise\": \"gpu.example\", \"port_min\": 41000,\n"
    "   \"port_max\": 41009, \"max_leases\": 5, \"backlog\": 64}\n"
    " ],\n"
    " \"tenants\": [\n"
    "  {\"name\": \"ops\", \"match\": {\"cn\": [\"ops-*\", \"root\"], \"san\": [\"*.ops\"]}},\n"
    "  {\"name\": \"ds\", \"match\": {\"token_sha256\": [\"" SHA_ABC "\"]},\n"
    "   \"limits\": {\"leases\": 3, \"connections\": 700, \"pending\": 9}}\n"
    " ],\n"
    " \"routes\": [\n"
    "  {\"name\": \"ds-gpu\", \"tenant\": \"ds\", \"app\": \"gpu-*\", \"pool\": \"gpu\",\n"
    "   \"sidecar_cidrs\": [\"10.0.0.0/8\"], \"executor_cidrs\": [\"10.20.0.0/16\", "
    "\"fd00::/8\"]},\n"
    "  {\"name\": \"rest\"}\n"
    " ]}}\n";

static void test_arrays_load(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];
	const struct relay_policy_opts *po = &cfg.relay.policy;

	(void)state;
	if (load(policy_json, &cfg, err) != 0)
		fail_msg("%s", err);
	assert_int_equal(po->npools, 2);
	assert_string_equal(po->pools[0].name, "cpu");
	assert_string_equal(po->pools[0].pool.bind_address, "10.0.0.1");
	assert_null(po->pools[0].pool.advertise_host);
	assert_int_equal(po->pools[0].pool.port_min, 40000);
	assert_int_equal(po->pools[0].pool.port_max, 40099);
	/* element defaults come from the same keys as relay.pool */
	assert_int_equal(po->pools[0].pool.max_leases, 0);
	assert_int_equal(po->pools[0].pool.backlog, 1024);
	assert_string_equal(po->pools[1].name, "gpu");
	assert_string_equal(po->pools[1].pool.bind_address, "0.0.0.0");
	assert_string_equal(po->pools[1].pool.advertise_host, "gpu.example");
	assert_int_equal(po->pools[1].pool.max_leases, 5);
	assert_int_equal(po->pools[1].pool.backlog, 64);
	assert_null(po->pools[2].name);

	assert_int_equal(po->ntenants, 2);
	assert_string_equal(po->tenants[0].name, "ops");
	assert_int_equal(po->tenants[0].ncn, 2);
	assert_string_equal(po->tenants[0].cn[0], "ops-*");
	assert_string_equal(po->tenants[0].cn[1], "root");
	assert_int_equal(po->tenants[0].nsan, 1);
	assert_string_equal(po->tenants[0].san[0], "*.ops");
	assert_int_equal(po->tenants[0].ntoken, 0);
	/* Unset limits are those of relay.default_tenant's defaults. */
	assert_int_equal(po->tenants[0].max_leases, 256);
	assert_int_equal(po->tenants[0].max_connections, 16384);
	assert_int_equal(po->tenants[0].max_pending, 0);
	assert_string_equal(po->tenants[1].name, "ds");
	assert_int_equal(po->tenants[1].ntoken, 1);
	assert_string_equal(po->tenants[1].token_sha256[0], SHA_ABC);
	assert_int_equal(po->tenants[1].max_leases, 3);
	assert_int_equal(po->tenants[1].max_connections, 700);
	assert_int_equal(po->tenants[1].max_pending, 9);

	assert_int_equal(po->nroutes, 2);
	assert_string_equal(po->routes[0].name, "ds-gpu");
	assert_string_equal(po->routes[0].tenant, "ds");
	assert_string_equal(po->routes[0].app, "gpu-*");
	assert_string_equal(po->routes[0].pool, "gpu");
	assert_int_equal(po->routes[0].nsidecar_cidrs, 1);
	assert_string_equal(po->routes[0].sidecar_cidrs[0], "10.0.0.0/8");
	assert_int_equal(po->routes[0].nexecutor_cidrs, 2);
	assert_string_equal(po->routes[0].executor_cidrs[1], "fd00::/8");
	/* defaults of a route: any tenant, any app, the first pool, anywhere */
	assert_string_equal(po->routes[1].name, "rest");
	assert_string_equal(po->routes[1].tenant, "*");
	assert_null(po->routes[1].app);
	assert_null(po->routes[1].pool);
	assert_int_equal(po->routes[1].nsidecar_cidrs, 0);
	assert_int_equal(po->routes[1].nexecutor_cidrs, 0);

	/* what was loaded compiles into the policy the relay will use */
	{
		struct relay_policy *p =
		    relay_policy_new(po, &cfg.relay.pool, err, sizeof(err));
		struct relay_identity id = {.token = "abc"};
		int t, r;

		assert_non_null(p);
		t = relay_policy_tenant(p, &id, err, sizeof(err));
		assert_int_equal(t, 1);
		r = relay_policy_route(p, t, "etl", NULL, err, sizeof(err));
		assert_int_equal(r, 1);
		assert_int_equal(relay_policy_route_pool(p, r), 0);
		relay_policy_free(p);
	}
	conf_free(&cfg);
	assert_empty_cfg(&cfg);
}

/* Up to the maximum loads; one more is refused (17 pools is in test_errors). */
static void test_array_max_counts(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN], *json;
	size_t cap = 64 * 1024, off;
	unsigned i;

	(void)state;
	json = malloc(cap);
	assert_non_null(json);
	off = (size_t)snprintf(json, cap, "{\"relay\": {" RELAY_OK_TLS ", \"pools\": [");
	for (i = 0; i < RELAY_MAX_POOLS; i++)
		off += (size_t)snprintf(
		    json + off, cap - off,
		    "%s{\"name\": \"p%u\", \"port_min\": %u, \"port_max\": %u}", i ? "," : "",
		    i, 1000 + 10 * i, 1009 + 10 * i);
	off += (size_t)snprintf(json + off, cap - off, "], \"routes\": [");
	for (i = 0; i < RELAY_MAX_ROUTES; i++)
		off += (size_t)snprintf(json + off, cap - off,
					"%s{\"name\": \"r%u\", \"pool\": \"p%u\"}",
					i ? "," : "", i, i % RELAY_MAX_POOLS);
	snprintf(json + off, cap - off, "]}}");
	if (load(json, &cfg, err) != 0)
		fail_msg("%s", err);
	assert_int_equal(cfg.relay.policy.npools, RELAY_MAX_POOLS);
	assert_int_equal(cfg.relay.policy.nroutes, RELAY_MAX_ROUTES);
	assert_string_equal(cfg.relay.policy.routes[RELAY_MAX_ROUTES - 1].name, "r255");
	assert_string_equal(cfg.relay.policy.pools[RELAY_MAX_POOLS - 1].name, "p15");
	conf_free(&cfg);

	/* one route more */
	snprintf(json + off, cap - off, ",{\"name\": \"extra\"}]}}");
	assert_int_equal(load(json, &cfg, err), SR_EINVAL);
	assert_contains(err, "relay.routes: must be a list of 0..256 objects (got 257 items)");
	assert_empty_cfg(&cfg);
	free(json);
}

static void test_admin_listen_rule(void **state)
{
	static const char *const ok[] = {
	    "{\"relay\": {" RELAY_OK_TLS "}}", /* the default: 127.0.0.1:9090 */
	    "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"127.0.0.2:0\"}}}",
	    "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"[::1]:9090\"}}}",
	    "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"localhost:9090\"}}}",
	    "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": null}}}",
	    "{\"relay\": {" RELAY_OK_TLS ", \"admin\": {\"listen\": \"0.0.0.0:9090\", "
	    "\"token\": \"s3cret\"}}}",
	};
	struct sr_config cfg;
	char err[ERRLEN], *out;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		if (load(ok[i], &cfg, err) != 0)
			fail_msg("case %zu: %s", i, err);
		conf_free(&cfg);
	}
	assert_int_equal(load(ok[4], &cfg, err), 0);
	assert_null(cfg.relay.admin_listen);
	conf_free(&cfg);
	/* the token is a secret: redacted in dumps */
	assert_int_equal(load(ok[5], &cfg, err), 0);
	assert_string_equal(cfg.relay.admin_token, "s3cret");
	out = ts_conf_dump(&cfg);
	assert_null(strstr(out, "s3cret"));
	assert_contains(out, "\"token\": \"<redacted>\"");
	free(out);
	conf_free(&cfg);
	/* the environment can open the listener, and the rule still holds */
	setenv("SPARKRELAY_RELAY_ADMIN_LISTEN", "10.1.1.1:9090", 1);
	assert_int_equal(load(ok[0], &cfg, err), SR_EINVAL);
	assert_contains(err, "relay.admin.token: required when relay.admin.listen "
			     "(\"10.1.1.1:9090\") is not a loopback address");
	setenv("SPARKRELAY_RELAY_ADMIN_TOKEN", "tok", 1);
	assert_int_equal(load(ok[0], &cfg, err), 0);
	conf_free(&cfg);
	unsetenv("SPARKRELAY_RELAY_ADMIN_LISTEN");
	unsetenv("SPARKRELAY_RELAY_ADMIN_TOKEN");
	/* the sidecar's status listener */
	setenv("SPARKRELAY_TUNNEL_ADMIN_LISTEN", "127.0.0.1:9191", 1);
	assert_int_equal(load("{\"tunnel\": {" TUNNEL_OK "}}", &cfg, err), 0);
	assert_string_equal(cfg.tunnel.admin_listen, "127.0.0.1:9191");
	conf_free(&cfg);
}

static void test_env_arrays(void **state)
{
	struct sr_config cfg;
	char err[ERRLEN];

	(void)state;
	/* a whole array from the environment replaces the file's */
	setenv("SPARKRELAY_RELAY_ROUTES",
	       "[{\"name\": \"env-route\", \"pool\": \"gpu\", \"executor_cidrs\": "
	       "[\"10.0.0.0/8\"]}]",
	       1);
	if (load(policy_json, &cfg, err) != 0)
		fail_msg("%s", err);
	assert_int_equal(cfg.relay.policy.nroutes, 1);
	assert_string_equal(cfg.relay.policy.routes[0].name, "env-route");
	assert_string_equal(cfg.relay.policy.routes[0].tenant, "*");
	assert_null(cfg.relay.policy.routes[1].name); /* the file's second route is gone */
	assert_int_equal(cfg.relay.policy.npools, 2); /* other arrays stay the file's */
	conf_free(&cfg);

	/* an empty value empties it */
	setenv("SPARKRELAY_RELAY_ROUTES", "", 1);
	assert_int_equal(load(policy_json, &cfg, err), 0);
	assert_int_equal(cfg.relay.policy.nroutes, 0);
	conf_free(&cfg);

	/* errors name the variable, and never a place in the file */
	setenv("SPARKRELAY_RELAY_ROUTES",
	       "[{\"name\": \"a\"}, {\"name\": \"b\", \"pool\": \"x\"}]", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err,
			"env SPARKRELAY_RELAY_ROUTES: relay.routes[1].pool: no pool \"x\"");
	assert_empty_cfg(&cfg);
	setenv("SPARKRELAY_RELAY_ROUTES", "[{\"name\": \"a\"}, {\"nam\": \"b\"}]", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_RELAY_ROUTES: relay.routes[1].nam: unknown key");
	setenv("SPARKRELAY_RELAY_ROUTES", "[{\"name\": \"a\"}, {}]", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_RELAY_ROUTES: relay.routes[1].name: required, but "
			     "not set");
	setenv("SPARKRELAY_RELAY_ROUTES", "[{\"name\": \"a\"", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err,
			"env SPARKRELAY_RELAY_ROUTES: relay.routes: must be a JSON list of "
			"0..256 objects (not JSON:");
	setenv("SPARKRELAY_RELAY_ROUTES", "{\"name\": \"a\"}", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err, "(got an object)");
	unsetenv("SPARKRELAY_RELAY_ROUTES");

	/* members have no variables of their own */
	setenv("SPARKRELAY_RELAY_ROUTES_0_NAME", "x", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err, "env SPARKRELAY_RELAY_ROUTES_0_NAME: no such setting");
	unsetenv("SPARKRELAY_RELAY_ROUTES_0_NAME");

	/* relay.pool from the environment next to the file's pools */
	setenv("SPARKRELAY_RELAY_POOL_PORT_MIN", "40001", 1);
	assert_int_equal(load(policy_json, &cfg, err), SR_EINVAL);
	assert_contains(err, "relay.pool: relay.pool and relay.pools cannot both be given");
	unsetenv("SPARKRELAY_RELAY_POOL_PORT_MIN");

	/* pools from the environment alone make the relay section present */
	setenv("SPARKRELAY_RELAY_POOLS",
	       "[{\"name\": \"only\", \"port_min\": 5000, "
	       "\"port_max\": 5001}]",
	       1);
	setenv("SPARKRELAY_RELAY_TLS_CERT", "c", 1);
	setenv("SPARKRELAY_RELAY_TLS_KEY", "k", 1);
	assert_int_equal(load("{}", &cfg, err), 0);
	assert_int_equal(cfg.have_relay, 1);
	assert_int_equal(cfg.relay.policy.npools, 1);
	assert_int_equal(cfg.relay.policy.pools[0].pool.port_max, 5001);
	conf_free(&cfg);
}

static void test_dump_round_trips_arrays(void **state)
{
	struct sr_config cfg, back;
	char err[ERRLEN], *out;
	json_error_t jerr;
	json_t *root, *relay;

	(void)state;
	assert_int_equal(load(policy_json, &cfg, err), 0);
	out = ts_conf_dump(&cfg);
	root = json_loads(out, 0, &jerr);
	assert_non_null(root);
	relay = json_object_get(root, "relay");
	/* relay.pool does not apply while relay.pools has elements: left out */
	assert_null(json_object_get(relay, "pool"));
	assert_int_equal(json_array_size(json_object_get(relay, "pools")), 2);
	assert_int_equal(json_array_size(json_object_get(relay, "tenants")), 2);
	assert_int_equal(json_array_size(json_object_get(relay, "routes")), 2);
	json_decref(root);
	if (load(out, &back, err) != 0)
		fail_msg("dump does not load: %s", err);
	assert_int_equal(back.relay.policy.npools, 2);
	assert_string_equal(back.relay.policy.pools[1].pool.advertise_host, "gpu.example");
	assert_string_equal(back.relay.policy.tenants[1].token_sha256[0], SHA_ABC);
	assert_int_equal(back.relay.policy.tenants[1].max_connections, 700);
	assert_string_equal(back.relay.policy.routes[0].executor_cidrs[1], "fd00::/8");
	assert_null(back.relay.policy.routes[1].pool);
	conf_free(&back);
	free(out);
	conf_free(&cfg);

	/* without pools, relay.pool is dumped as before */
	assert_int_equal(load("{\"relay\": {" RELAY_OK_TLS "}}", &cfg, err), 0);
	out = ts_conf_dump(&cfg);
	assert_contains(out, "\"pool\": {");
	assert_contains(out, "\"pools\": []");
	free(out);
	conf_free(&cfg);
}

static void test_dump_redacts_secrets(void **state)
{
	struct sr_config cfg, back;
	char path[1024], err[ERRLEN], *out;
	json_error_t jerr;
	json_t *root;

	(void)state;
	TS_SRC_PATH("example-relay.json", path, sizeof(path));
	setenv("SPARKRELAY_TUNNEL_TOKEN", "tunnel-secret-token", 1);
	setenv("SPARKRELAY_TUNNEL_RELAYS", "r:1", 1);
	setenv("SPARKRELAY_TUNNEL_TLS_CA", "ca.pem", 1);
	assert_int_equal(conf_load_file(path, &cfg, err, sizeof(err)), 0);
	clear_env(NULL);
	assert_string_equal(cfg.tunnel.token, "tunnel-secret-token");
	out = ts_conf_dump(&cfg);
	assert_null(strstr(out, "relay-secret-token"));
	assert_null(strstr(out, "tunnel-secret-token"));

	root = json_loads(out, 0, &jerr);
	assert_non_null(root);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(root, "relay"), "auth_token")),
	    "<redacted>");
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(root, "tunnel"), "token")),
	    "<redacted>");
	json_decref(root);

	/* everything else round-trips through the loader */
	assert_int_equal(load(out, &back, err), 0);
	assert_string_equal(back.relay.listen, cfg.relay.listen);
	assert_string_equal(back.relay.pool.bind_address, cfg.relay.pool.bind_address);
	assert_int_equal(back.relay.pool.port_min, cfg.relay.pool.port_min);
	assert_int_equal(back.relay.tun.max_streams, cfg.relay.tun.max_streams);
	assert_int_equal(back.relay.require_client_cert, cfg.relay.require_client_cert);
	assert_string_equal(back.tunnel.relays[0], "r:1");
	assert_string_equal(back.log_level, cfg.log_level);
	assert_int_equal(back.have_relay, 1);
	assert_int_equal(back.have_tunnel, 1);
	conf_free(&back);
	free(out);

	/* unset secrets stay null; absent sections are left out */
	conf_free(&cfg);
	assert_int_equal(load("{\"relay\": {" RELAY_OK_TLS "}}", &cfg, err), 0);
	out = ts_conf_dump(&cfg);
	root = json_loads(out, 0, &jerr);
	assert_non_null(root);
	assert_true(
	    json_is_null(json_object_get(json_object_get(root, "relay"), "auth_token")));
	assert_null(json_object_get(root, "tunnel"));
	assert_non_null(json_object_get(root, "log"));
	json_decref(root);
	free(out);
	conf_free(&cfg);
}

static char *docs_to_string(size_t *len)
{
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);

	assert_non_null(f);
	assert_int_equal(conf_write_docs(f), 0);
	assert_int_equal(fclose(f), 0);
	return buf;
}

static void test_docs_up_to_date(void **state)
{
	char path[1024], *gen, *disk;
	size_t genlen, disklen = 0, cap = 1 << 20, i, line = 1;
	FILE *f;

	(void)state;
	gen = docs_to_string(&genlen);
	TS_SRC_PATH("../../../docs/configuration.md", path, sizeof(path));
	f = fopen(path, "rb");
	if (!f)
		fail_msg("%s: missing. docs/configuration.md is stale: run `sparkrelay "
			 "config-docs > docs/configuration.md`",
			 path);
	disk = malloc(cap);
	assert_non_null(disk);
	disklen = fread(disk, 1, cap, f);
	fclose(f);
	for (i = 0; i < genlen && i < disklen && gen[i] == disk[i]; i++)
		line += gen[i] == '\n';
	if (genlen != disklen || i != genlen) {
		free(disk);
		free(gen);
		fail_msg("docs/configuration.md is stale: run `sparkrelay config-docs > "
			 "docs/configuration.md` (first difference on line %zu)",
			 line);
	}
	free(disk);
	free(gen);
}

/* What the reference says must hold: every env variable named, and each
 * complete example loads as its role. */
static void test_docs_content(void **state)
{
	static const char *const vars[] = {
	    "`SPARKRELAY_LOG_LEVEL`",
	    "`SPARKRELAY_RELAY_LISTEN`",
	    "`SPARKRELAY_RELAY_TLS_CERT`",
	    "`SPARKRELAY_RELAY_POOL_PORT_MIN`",
	    "`SPARKRELAY_RELAY_LEASE_GRACE_S`",
	    "`SPARKRELAY_RELAY_H2_MAX_STREAMS`",
	    "`SPARKRELAY_TUNNEL_RELAYS`",
	    "`SPARKRELAY_TUNNEL_TLS_CA`",
	    "`SPARKRELAY_TUNNEL_H2_STREAM_WINDOW`",
	    "sparkrelay check-config FILE",
	};
	const char *p, *end;
	size_t len, i, nexamples = 0;
	char *docs = docs_to_string(&len);
	char err[ERRLEN];

	(void)state;
	for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		assert_contains(docs, vars[i]);
	assert_contains(docs, "| `port_min` | integer | `26000` | 1..65535 | "
			      "`SPARKRELAY_RELAY_POOL_PORT_MIN` |");
	for (p = docs; (p = strstr(p, "```json\n")) != NULL; p = end) {
		struct sr_config cfg;
		char *json;

		p += 8;
		end = strstr(p, "```\n");
		assert_non_null(end);
		json = strndup(p, (size_t)(end - p));
		assert_non_null(json);
		if (conf_load_string(json, "example", &cfg, err, sizeof(err)) != 0)
			fail_msg("example %zu does not load: %s", nexamples, err);
		/* the first example is the relay's, the second the tunnel's */
		assert_int_equal(cfg.have_relay, nexamples == 0);
		assert_int_equal(cfg.have_tunnel, nexamples == 1);
		conf_free(&cfg);
		free(json);
		nexamples++;
	}
	assert_int_equal(nexamples, 2);
	free(docs);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_defaults_empty_file, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_defaults_minimal_sections, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_h2_table_matches_tunnel_defaults, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_defaults_helpers_match_init, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_full_relay_file, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_full_tunnel_file, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_discovery_keys, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_nullable_and_special_values, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_errors, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_secret_not_in_messages, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_tokens_fit_the_register_message, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_syntax_error_does_not_quote_secrets, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_numeric_secret_not_quoted, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_bad_values_are_quoted_escaped, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_hosts_and_app_are_checked_at_load, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_cross_checks_name_the_variable, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_unknown_keys_are_masked, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_env_unknown_names_of_any_length, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_env_unknown_name_is_escaped, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_file_missing, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_file_too_big, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_file_is_directory, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_env_overrides_file, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_env_without_file, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_env_other_role_is_ignored, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_env_no_section_without_keys, clear_env,
					    clear_env),
	    cmocka_unit_test_setup_teardown(test_env_bad_values, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_dump_redacts_secrets, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_arrays_load, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_array_max_counts, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_admin_listen_rule, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_env_arrays, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_dump_round_trips_arrays, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_docs_up_to_date, clear_env, clear_env),
	    cmocka_unit_test_setup_teardown(test_docs_content, clear_env, clear_env),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
