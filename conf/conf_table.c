/* The settings tables: every key of the configuration file, its type, bounds,
 * default and documentation. The loader, the environment overrides, the dump
 * and docs/configuration.md are all driven from here. tun_conn_opts_defaults
 * (tunnel/tun_conn.c, for zero fields of callers outside conf) must agree
 * with the h2 table; test_conf checks every field. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#include "common/sr_cidr.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "tunnel/tun_ctl.h"

_Static_assert(SR_ARRAY_LEN(((struct sidecar_opts *)0)->relays) == SIDECAR_MAX_RELAYS,
	       "relays[] holds SIDECAR_MAX_RELAYS entries");
_Static_assert(SR_ARRAY_LEN(((struct disc_opts *)0)->nameservers) == DISC_MAX_NAMESERVERS,
	       "nameservers[] holds DISC_MAX_NAMESERVERS entries");

/* Longest path or token accepted: PATH_MAX-sized, so any real path fits. */
#define CONF_STR_MAX 4095u
#define CONF_HOST_MAX 253u /* a DNS name */
/* The default lease pool, and so the ports a sidecar accepts by default.
 * Below Linux's ephemeral range (32768-60999), where with
 * spark.port.maxRetries=0 the driver's bind could meet a client socket's
 * source port, and below Kubernetes NodePorts (30000-32767); clear of
 * MongoDB (27017-27019), FlexLM (27000-27009) and GlusterFS (24007-24008). */
#define CONF_DEFAULT_POOL_MIN "26000"
#define CONF_DEFAULT_POOL_MAX "26999"
/* A bearer token travels in the register message, which carries at most
 * this many bytes: a longer one could never be sent whole, nor match. */
#define CONF_TOKEN_MAX (TUN_CTL_TOKEN_MAX - 1u)

/* "host:port" with a port 1..65535: where sidecars dial. */
static int conf_check_hostport(const char *s)
{
	char host[256];
	uint16_t port;

	return sr_split_hostport(s, host, sizeof(host), &port, 0);
}

/* A relay entry: "host:port", "srv:NAME" or "k8s:[NS/]SERVICE[:PORT]". */
static int conf_check_relay_entry(const char *s)
{
	struct disc_target t;

	return disc_target_parse(s, &t, NULL, 0);
}

/* A nameserver: a numeric address, with a port or not. */
static int conf_check_nameserver(const char *s)
{
	struct sockaddr_storage ss;
	char host[256];
	socklen_t len;
	uint16_t port;

	if (sr_split_hostport(s, host, sizeof(host), &port, 53) != 0 || port == 0)
		return -1;
	return sr_parse_addr(host, port, &ss, &len);
}

/* The Kubernetes API server: https:// and a host, no query or fragment. */
static int conf_check_https_url(const char *s)
{
	if (strncmp(s, "https://", 8) != 0 || !s[8] || s[8] == '/')
		return -1;
	for (s += 8; *s; s++)
		if ((unsigned char)*s <= ' ' || (unsigned char)*s >= 0x7f || *s == '?' ||
		    *s == '#' || *s == '"' || *s == '\\')
			return -1;
	return 0;
}

/* "host:port" where port 0 asks the kernel for a free one (tests, demo).
 * sr_split_hostport refuses port 0, so check the rest with port 1. */
static int conf_check_listen(const char *s)
{
	char buf[300];
	size_t n = strlen(s);

	if (n >= 2 && n < sizeof(buf) && strcmp(s + n - 2, ":0") == 0) {
		memcpy(buf, s, n - 1);
		buf[n - 1] = '1';
		buf[n] = '\0';
		s = buf;
	}
	return conf_check_hostport(s);
}

/* A host executors or peers are told: a DNS name or an IP literal. */
static int conf_check_host(const char *s)
{
	return sr_valid_host(s) ? 0 : -1;
}

/* What a registration may carry as the app (tun_ctl.h). */
static int conf_check_app(const char *s)
{
	return tun_ctl_valid_app(s) ? 0 : -1;
}

/* A numeric IPv4 or IPv6 address: lease ports bind without DNS. */
static int conf_check_numeric(const char *s)
{
	struct sockaddr_storage ss;
	socklen_t len;

	return sr_parse_addr(s, 0, &ss, &len);
}

int conf_listen_is_loopback(const char *listen)
{
	struct sockaddr_storage ss;
	char host[256];
	socklen_t len;
	uint16_t port;

	if (!listen || sr_split_hostport(listen, host, sizeof(host), &port, 0) != 0)
		return 0;
	if (strcmp(host, "localhost") == 0)
		return 1;
	return sr_parse_addr(host, 0, &ss, &len) == 0 &&
	       sr_addr_is_loopback((const struct sockaddr *)&ss);
}

/* Names of pools, tenants and routes: they appear in logs, metrics labels
 * and `sparkrelay ctl`, so keep them to a safe alphabet. */
static int conf_check_name(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > 63)
		return -1;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
			return -1;
	return 0;
}

static int conf_check_tenant_ref(const char *s)
{
	return strcmp(s, "*") == 0 ? 0 : conf_check_name(s);
}

static int conf_check_cidr(const char *s)
{
	struct sr_cidr c;

	return sr_cidr_parse(s, &c, NULL);
}

static int conf_check_sha256(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		      (s[i] >= 'A' && s[i] <= 'F')))
			return -1;
	return i == 64 ? 0 : -1;
}

/* "N" or "N-M": a range of ports a lease may grant the sidecar. */
static int conf_check_port_range(const char *s)
{
	uint16_t lo, hi;

	return sidecar_port_range(s, &lo, &hi);
}

static const struct conf_format conf_fmt_port_range = {
    "a port or a range of ports N-M (N <= M) within 1..65535", conf_check_port_range};
static const struct conf_format conf_fmt_relay_entry = {
    "host:port, srv:_SERVICE._tcp.DOMAIN or k8s:[NAMESPACE/]SERVICE[:PORTNAME]",
    conf_check_relay_entry};
static const struct conf_format conf_fmt_nameserver = {
    "a numeric IPv4 or IPv6 address, with :port or not (53)", conf_check_nameserver};
static const struct conf_format conf_fmt_https_url = {"an https:// URL", conf_check_https_url};
static const struct conf_format conf_fmt_listen = {"host:port (port 0: any free port)",
						   conf_check_listen};
static const struct conf_format conf_fmt_numeric = {"a numeric IPv4 or IPv6 address",
						    conf_check_numeric};
static const struct conf_format conf_fmt_host = {
    "a DNS name (letters, digits, '-' and '.') or an IPv4 or IPv6 address", conf_check_host};
static const struct conf_format conf_fmt_app = {
    "UTF-8 text of 1..127 bytes without control characters", conf_check_app};
static const struct conf_format conf_fmt_name = {
    "a name of 1..63 letters, digits, '.', '_' or '-'", conf_check_name};
static const struct conf_format conf_fmt_tenant_ref = {"a tenant name or \"*\"",
						       conf_check_tenant_ref};
static const struct conf_format conf_fmt_cidr = {
    "an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8, or one address", conf_check_cidr};
static const struct conf_format conf_fmt_sha256 = {"64 hex digits (the SHA-256 of a token)",
						   conf_check_sha256};

static const char *const conf_log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const conf_log_formats[] = {"text", "json", NULL};

#define STR(T, k, field, fl, lo, hi, d, ex, f, text)                                           \
	{                                                                                      \
		.key = (k), .type = CONF_STRING, .flags = (fl), .off = offsetof(T, field),     \
		.min = (lo), .max = (hi), .def = (d), .example = (ex), .fmt = (f),             \
		.doc = (text)                                                                  \
	}
#define BOOL(T, k, field, d, text)                                                             \
	{                                                                                      \
		.key = (k), .type = CONF_BOOL, .off = offsetof(T, field), .min = 0, .max = 1,  \
		.def = (d), .doc = (text)                                                      \
	}
#define U32(T, k, field, lo, hi, d, text)                                                      \
	{                                                                                      \
		.key = (k), .type = CONF_U32, .off = offsetof(T, field), .min = (lo),          \
		.max = (hi), .def = (d), .doc = (text)                                         \
	}
#define GROUP(k, base_off, g)                                                                  \
	{                                                                                      \
		.key = (k), .type = CONF_GROUP, .off = (base_off), .sub = &(g)                 \
	}
#define LIST(T, k, field, count, hi, f, text)                                                  \
	{                                                                                      \
		.key = (k), .type = CONF_STRLIST, .off = offsetof(T, field),                   \
		.aux_off = offsetof(T, count), .min = 0, .max = (hi), .fmt = (f),              \
		.doc = (text)                                                                  \
	}
#define ARRAY(T, k, field, count, E, hi, g, ex, text)                                          \
	{                                                                                      \
		.key = (k), .type = CONF_ARRAY, .off = offsetof(T, field),                     \
		.aux_off = offsetof(T, count), .elem_size = sizeof(E), .min = 0, .max = (hi),  \
		.sub = &(g), .example = (ex), .doc = (text)                                    \
	}

#define N(a) SR_ARRAY_LEN(a)

/* ---- h2: struct tun_conn_opts, shared by both roles ---- */

static const struct conf_entry conf_h2[] = {
    U32(struct tun_conn_opts, "stream_window", stream_window, 1024, 2147483647, "262144",
	"HTTP/2 flow-control window per stream, bytes: what one stalled executor "
	"connection may hold in memory, and what a bulk stream may have in flight ahead "
	"of a heartbeat on the same tunnel. One stream moves at most window/RTT; on round "
	"trips of 1 ms or more a stream that keeps up grows its window up to "
	"max_stream_window, on shorter ones up to " SR_XSTR(TUN_WIN_ALONE_MAX)
	" windows while no other stream of the tunnel has moved data for "
	SR_XSTR(TUN_COMPANY_S) " s (see docs/architecture.md)."),
    U32(struct tun_conn_opts, "max_stream_window", max_stream_window, 1024, 2147483647,
	"16777216",
	"Largest window a stream's receive window may grow to, bytes. A stream whose "
	"socket takes a whole window within " SR_XSTR(TUN_WIN_GROW_RTTS)
	" of the tunnel's round trips (measured by PING), faster than the window "
	"before, has its window doubled, so one bulk stream fills a long path without a "
	"larger stream_window for every stream; a stalled socket then holds at most this much. Capped at "
	"conn_window; at most stream_window: no growth. Also the most a stream keeps "
	"sent and not yet acknowledged by the peer (for a replay after a reconnect; "
	"stream_window while the tunnel is over its buffer cap): give both ends the "
	"same stream_window and max_stream_window."),
    U32(struct tun_conn_opts, "conn_window", conn_window, 65535, 2147483647, "67108864",
	"HTTP/2 flow-control window of the whole tunnel, bytes; at least stream_window."),
    U32(struct tun_conn_opts, "ping_interval_ms", ping_interval_ms, 100, 3600000, "2000",
	"Send a PING when nothing was received for this long."),
    U32(struct tun_conn_opts, "ping_timeout_ms", ping_timeout_ms, 100, 3600000, "6000",
	"The peer is dead after this long without a frame; more than ping_interval_ms. Short "
	"on purpose: a tunnel declared dead loses no stream (they resume on the next one), "
	"and a silent path is noticed in seconds (see docs/architecture.md)."),
    U32(struct tun_conn_opts, "ctl_max", ctl_max, 1024, 16777216, "65536",
	"Largest control message accepted, bytes."),
    U32(struct tun_conn_opts, "out_high", out_high, 4096, 1073741824, "65536",
	"Stop generating frames while more than this many bytes wait to be sent."),
    U32(struct tun_conn_opts, "sock_read_high", sock_read_high, 1024, 1073741824, "262144",
	"Read high watermark of each bridged socket, bytes."),
    U32(struct tun_conn_opts, "max_frame", max_frame, 16384, 16777215, "65536",
	"Largest HTTP/2 DATA frame payload sent and accepted, bytes. Larger frames cost "
	"less CPU per byte; a heartbeat may wait behind one frame of bulk data. Frames "
	"sent are at most 1 MiB whatever this says (each tunnel keeps a buffer of one), "
	"and the largest sent is 9 bytes short of a multiple of 16 KiB, so that with its "
	"header it fills whole TLS records: 65527 bytes for 65536."),
    U32(struct tun_conn_opts, "max_streams", max_streams, 1, 1000000, "16384",
	"Concurrent streams (executor connections, plus the control stream) on one tunnel. The "
	"sidecar's is the limit: it tells the relay, an honest relay keeps executor "
	"connections past it waiting (and says so in its log), and a relay that opens more "
	"breaks the protocol and the tunnel ends. Each stream is a connection to the "
	"driver and a file descriptor on the notebook. The relay's is assumed until the "
	"sidecar's comes. Keep the sidecar's above relay.max_lease_connections."),
};
static const struct conf_group conf_h2_group = {conf_h2, N(conf_h2),
						"HTTP/2 tuning of the tunnel connection."};

/* ---- relay: struct relay_opts ---- */

static const struct conf_entry conf_relay_tls[] = {
    STR(struct relay_opts, "cert", cert_file, CONF_REQUIRED, 1, CONF_STR_MAX, NULL,
	"/etc/sparkrelay/relay.pem", NULL,
	"PEM certificate chain the relay presents to sidecars. Read again at every reload "
	"(and, with reload.watch, when the file changes): a renewed certificate serves the "
	"tunnels that come next; tunnels up keep theirs."),
    STR(struct relay_opts, "key", key_file, CONF_REQUIRED, 1, CONF_STR_MAX, NULL,
	"/etc/sparkrelay/relay.key", NULL,
	"PEM private key of that certificate (read again with it; a reload whose key does not "
	"match the certificate is refused)."),
    STR(struct relay_opts, "client_ca", client_ca_file, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	NULL, NULL,
	"CA bundle that verifies sidecar client certificates (mTLS); null: none asked. Read "
	"again at every reload, for the tunnels that come next."),
    BOOL(struct relay_opts, "require_client_cert", require_client_cert, "false",
	 "Refuse sidecars without a verified client certificate; needs client_ca."),
};
static const struct conf_group conf_relay_tls_group = {conf_relay_tls, N(conf_relay_tls),
						       "TLS of the tunnel listener (TLS 1.3)."};

/* The keys of one pool, over struct relay_pool_opts reached through F: the
 * single relay.pool group and each element of relay.pools share them. */
#define F_SELF(x) x
#define F_POOL(x) pool.x
#define POOL_KEYS(T, F)                                                                        \
	STR(T, "bind", F(bind_address), 0, 1, CONF_HOST_MAX, "0.0.0.0", NULL,                  \
	    &conf_fmt_numeric,                                                                 \
	    "Address the lease ports bind to: one of the relay host's (checked at start and "  \
	    "reload)."),                                                                       \
	    STR(T, "advertise", F(advertise_host), CONF_NULLABLE, 1, CONF_HOST_MAX, NULL,      \
		NULL, &conf_fmt_host,                                                          \
		"Host executors are told to connect to (spark.driver.host); null: chosen by "  \
		"the relay."),                                                                 \
	    U32(T, "port_min", F(port_min), 1, 65535, CONF_DEFAULT_POOL_MIN,                   \
		"First port of the lease pool (inclusive). Keep the pool out of the "          \
		"ephemeral range (Linux: 32768-60999) and the NodePort range "                 \
		"(30000-32767); see docs/operations.md."),                                     \
	    U32(T, "port_max", F(port_max), 1, 65535, CONF_DEFAULT_POOL_MAX,                   \
		"Last port of the lease pool (inclusive); at least port_min."),                \
	    U32(T, "max_leases", F(max_leases), 0, 65535, "0",                                 \
		"Leases held at once; 0: limited only by the port range."),                    \
	    U32(T, "backlog", F(backlog), 1, 65535, "1024",                                    \
		"listen() backlog of each lease port.")

static const struct conf_entry conf_relay_pool[] = {
    POOL_KEYS(struct relay_pool_opts, F_SELF),
};
static const struct conf_group conf_relay_pool_group = {
    conf_relay_pool, N(conf_relay_pool),
    "The port pool that leases are taken from when `relay.pools` is empty; it is then the "
    "pool named `default`. Giving both `relay.pool` and a non-empty `relay.pools` is an "
    "error."};

/* ---- relay.pools[], relay.tenants[], relay.routes[]: relay_policy.h ---- */

static const struct conf_entry conf_pool_elem[] = {
    STR(struct relay_pool_cfg, "name", name, CONF_REQUIRED, 1, 63, NULL, NULL, &conf_fmt_name,
	"Name that routes refer to."),
    POOL_KEYS(struct relay_pool_cfg, F_POOL),
};
static const struct conf_group conf_pool_elem_group = {
    conf_pool_elem, N(conf_pool_elem),
    "One named port pool. Pools on the same bind address (or where one binds a "
    "wildcard address that covers the other) must not share ports."};

static const struct conf_entry conf_tenant_match[] = {
    LIST(struct relay_tenant_cfg, "cn", cn, ncn, RELAY_MAX_MATCH, NULL,
	 "Patterns for the subject CN of the verified client certificate."),
    LIST(struct relay_tenant_cfg, "san", san, nsan, RELAY_MAX_MATCH, NULL,
	 "Patterns for the DNS and URI subject alternative names of the verified client "
	 "certificate; any SAN may match."),
    LIST(struct relay_tenant_cfg, "token_sha256", token_sha256, ntoken, RELAY_MAX_MATCH,
	 &conf_fmt_sha256,
	 "SHA-256 (hex) of bearer tokens that identify this tenant: `printf %s \"$TOKEN\" | "
	 "sha256sum`."),
};
static const struct conf_group conf_tenant_match_group = {
    conf_tenant_match, N(conf_tenant_match),
    "How a sidecar is recognised: the tenant fits when any one pattern or hash fits. At "
    "least one is required. Patterns are case-sensitive; `*` matches any run of "
    "characters."};

/* The defaults are those of relay.default_tenant: a tenant is bounded unless
 * an operator writes 0. */
static const struct conf_entry conf_tenant_limits[] = {
    U32(struct relay_tenant_cfg, "leases", max_leases, 0, 65535, "256",
	"Leases the tenant may hold at once; 0: no limit. At the limit, a new registration "
	"of the tenant ends one of its leases that has no tunnel (in its grace period), "
	"that of the same identity from the same address first, else the tenant's oldest, "
	"which may be another member's: the members of a tenant share its limit."),
    U32(struct relay_tenant_cfg, "connections", max_connections, 0, 1000000, "16384",
	"Concurrent executor connections over all of the tenant's leases; 0: no limit."),
    U32(struct relay_tenant_cfg, "pending", max_pending, 0, 65536, "0",
	"Executor connections waiting per lease; 0: `relay.lease.max_pending`."),
};
static const struct conf_group conf_tenant_limits_group = {
    conf_tenant_limits, N(conf_tenant_limits),
    "Limits the relay enforces for this tenant. Unset, they have the default values of "
    "`relay.default_tenant` (not its configured values)."};

static const struct conf_entry conf_tenant_elem[] = {
    STR(struct relay_tenant_cfg, "name", name, CONF_REQUIRED, 1, 63, NULL, NULL, &conf_fmt_name,
	"Name that routes refer to."),
    GROUP("match", 0, conf_tenant_match_group),
    GROUP("limits", 0, conf_tenant_limits_group),
};
static const struct conf_group conf_tenant_elem_group = {
    conf_tenant_elem, N(conf_tenant_elem),
    "One tenant: an identity and its limits. A sidecar is the first tenant that fits."};

static const struct conf_entry conf_route_elem[] = {
    STR(struct relay_route_cfg, "name", name, CONF_REQUIRED, 1, 63, NULL, NULL, &conf_fmt_name,
	"Name shown by `sparkrelay ctl` and in logs."),
    STR(struct relay_route_cfg, "tenant", tenant, 0, 1, 63, "*", NULL, &conf_fmt_tenant_ref,
	"Tenant this route applies to; `*`: every tenant."),
    STR(struct relay_route_cfg, "app", app, CONF_NULLABLE, 1, 127, NULL, NULL, NULL,
	"Pattern for the app name the sidecar registers; null: any app."),
    LIST(struct relay_route_cfg, "sidecar_cidrs", sidecar_cidrs, nsidecar_cidrs,
	 RELAY_MAX_CIDRS, &conf_fmt_cidr,
	 "The sidecar must connect from one of these networks; empty: from anywhere."),
    STR(struct relay_route_cfg, "pool", pool, CONF_NULLABLE, 1, 63, NULL, NULL, &conf_fmt_name,
	"Pool the lease is taken from; null: the first pool."),
    LIST(struct relay_route_cfg, "executor_cidrs", executor_cidrs, nexecutor_cidrs,
	 RELAY_MAX_CIDRS, &conf_fmt_cidr,
	 "Executors may connect to the lease ports only from these networks; empty: from "
	 "anywhere. Others are refused and counted."),
};
static const struct conf_group conf_route_elem_group = {
    conf_route_elem, N(conf_route_elem),
    "One route. The first route whose tenant, app and sidecar_cidrs all fit a "
    "registration decides its pool and its executor CIDRs."};

/* The documented example (docs/configuration.md); it must load. */
#define CONF_EX_POOLS                                                                          \
	"[{\"name\": \"cpu\", \"port_min\": 26000, \"port_max\": 26499},"                      \
	" {\"name\": \"gpu\", \"advertise\": \"gpu-relay.example.com\", \"port_min\": 26500,"  \
	" \"port_max\": 26999, \"max_leases\": 20}]"
#define CONF_EX_TENANTS                                                                        \
	"[{\"name\": \"platform\", \"match\": {\"cn\": [\"ops-*\"]}},"                         \
	" {\"name\": \"data-science\", \"match\": {\"san\": [\"*.notebooks.example.com\"],"    \
	" \"token_sha256\": "                                                                  \
	"[\"cc6e0df878d7f3972d5dc769a94be87dfa5da8bf05cd28fe13ee2aca4a54a005\"]},"             \
	" \"limits\": {\"leases\": 10, \"connections\": 5000, \"pending\": 64}}]"
#define CONF_EX_ROUTES                                                                         \
	"[{\"name\": \"platform-any\", \"tenant\": \"platform\", \"pool\": \"cpu\"},"          \
	" {\"name\": \"ds-gpu\", \"tenant\": \"data-science\", \"app\": \"gpu-*\", \"pool\": " \
	"\"gpu\","                                                                             \
	" \"executor_cidrs\": [\"10.20.0.0/16\", \"fd00:20::/48\"]},"                          \
	" {\"name\": \"ds-vpc\", \"tenant\": \"data-science\", \"sidecar_cidrs\": "            \
	"[\"10.0.0.0/8\"],"                                                                    \
	" \"pool\": \"cpu\", \"executor_cidrs\": [\"10.0.0.0/8\"]}]"

static const struct conf_entry conf_relay_admin[] = {
    STR(struct relay_opts, "listen", admin_listen, CONF_NULLABLE, 1, CONF_STR_MAX,
	"127.0.0.1:9090", NULL, &conf_fmt_listen,
	"Admin HTTP listener (health, metrics, sessions, leases, reload); null: none."),
    STR(struct relay_opts, "token", admin_token, CONF_NULLABLE | CONF_SECRET, 1, CONF_STR_MAX,
	NULL, NULL, NULL,
	"Bearer token every admin request but /healthz and /readyz must carry; required "
	"when listen is not a loopback address."),
    U32(struct relay_opts, "max_connections", admin_max_conns, 1, 65536, "64",
	"Admin connections open at once; a new one over it closes the oldest (of its own "
	"source, an address or IPv6 /64, when that source holds half of them), so idle "
	"connections cannot keep "
	"probes out (`sparkrelay_admin_connections_evicted_total`)."),
    U32(struct relay_opts, "request_timeout_ms", admin_request_timeout_ms, 100, 600000, "10000",
	"An admin connection is closed this long after it was accepted, however slowly it "
	"sends; each connection carries one request."),
};
static const struct conf_group conf_relay_admin_group = {
    conf_relay_admin, N(conf_relay_admin), "The relay's admin API (`sparkrelay ctl`)."};

static const struct conf_entry conf_relay_metrics[] = {
    STR(struct relay_opts, "listen", metrics_listen, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	"0.0.0.0:9469", &conf_fmt_listen,
	"Read-only HTTP listener for Prometheus: `GET /metrics`, `/healthz` and `/readyz`, "
	"without a token (it can change nothing), so it may listen on the node's address "
	"while the admin API stays on loopback; null: none. At most 16 connections at once, "
	"each closed 10 s after it was accepted. Must not be the admin listener's port."),
};
static const struct conf_group conf_relay_metrics_group = {
    conf_relay_metrics, N(conf_relay_metrics), "Metrics without the admin token."};

static const struct conf_entry conf_relay_reload[] = {
    BOOL(struct relay_opts, "watch", watch_config, "true",
	 "Re-read the configuration file when it changes, as SIGHUP does (a bad file is "
	 "refused and the running configuration stays). The file's directory is watched "
	 "(inotify), so a Kubernetes ConfigMap update, which swaps a symbolic link, is seen "
	 "too; a file whose content did not change is not reloaded. Counted as "
	 "`sparkrelay_config_auto_reloads_total`. The TLS files (relay.tls.cert, key, "
	 "client_ca) are watched the same way, so a certificate renewed in place (a "
	 "Kubernetes Secret, cert-manager) is used for new tunnels without a restart. Read "
	 "at start only."),
    U32(struct relay_opts, "debounce_ms", watch_debounce_ms, 10, 60000, "1000",
	"Wait this long after the last change in the directory before reading the file, so "
	"that an editor's or the kubelet's several steps make one reload."),
};
static const struct conf_group conf_relay_reload_group = {
    conf_relay_reload, N(conf_relay_reload), "Reloading the configuration file by itself."};

static const struct conf_entry conf_relay_lease[] = {
    U32(struct relay_opts, "grace_s", lease_grace_s, 0, 86400, "300",
	"A lease outlives its tunnel this long, so a reconnecting sidecar gets the same "
	"ports."),
    U32(struct relay_opts, "pending_timeout_ms", pending_timeout_ms, 0, 600000, "30000",
	"An executor connection waits this long for a missing tunnel."),
    U32(struct relay_opts, "max_pending", max_pending, 0, 65536, "256",
	"Executor connections waiting per lease; more are refused."),
    U32(struct relay_opts, "resume_hold_s", resume_hold_s, 1, 3600, "90",
	"Executor connections open when the tunnel went stay open (not read) this long for "
	"the sidecar to resume them; then they are reset. Below Spark's "
	"spark.network.timeout (120 s)."),
};
static const struct conf_group conf_relay_lease_group = {
    conf_relay_lease, N(conf_relay_lease), "Lease lifetime while the tunnel is away."};

/* ---- relay: what one peer may hold (relay.max_* and relay.default_tenant) ---- */

static const struct conf_entry conf_relay_default_tenant[] = {
    U32(struct relay_opts, "leases", default_tenant.leases, 0, 65535, "256",
	"Leases the implicit tenant may hold at once; 0: no limit."),
    U32(struct relay_opts, "connections", default_tenant.connections, 0, 1000000, "16384",
	"Concurrent executor connections over all of its leases; 0: no limit."),
    U32(struct relay_opts, "pending", default_tenant.pending, 0, 65536, "256",
	"Executor connections waiting per lease; 0: `relay.lease.max_pending`."),
};
static const struct conf_group conf_relay_default_tenant_group = {
    conf_relay_default_tenant, N(conf_relay_default_tenant),
    "Limits of the implicit tenant `default`, which every sidecar is while `relay.tenants` "
    "is empty (configured tenants have their own `limits`, with the same defaults). With "
    "no tenants configured, these bound the relay as a whole."};

/* ---- relay.fleet: struct relay_fleet_opts ---- */

static const struct conf_entry conf_relay_fleet[] = {
    LIST(struct relay_opts, "etcd", fleet.etcd, fleet.netcd, RELAY_FLEET_MAX_ETCD, NULL,
	 "etcd endpoints (`http://host:port` or `https://host:port`) of the fleet's lease "
	 "table; empty: no fleet, the relay keeps its leases in memory alone."),
    STR(struct relay_opts, "etcd_ca", fleet.etcd_ca, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	NULL, NULL, "CA bundle that verifies etcd (https endpoints); null: the system store."),
    STR(struct relay_opts, "etcd_cert", fleet.etcd_cert, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	NULL, NULL, "Client certificate towards etcd (mutual TLS); null: none."),
    STR(struct relay_opts, "etcd_key", fleet.etcd_key, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	NULL, NULL, "Private key of etcd_cert."),
    STR(struct relay_opts, "prefix", fleet.prefix, 0, 1, 128, "/sparkrelay/", NULL, NULL,
	"Every etcd key of the fleet starts with this; fleets sharing an etcd differ here."),
    STR(struct relay_opts, "id", fleet.id, CONF_NULLABLE, 1, 63, NULL, "relay-a", NULL,
	"This relay's name in the fleet (letters, digits, `.`, `_`, `-`); null: the host "
	"name. A relay restarted with the same id takes its place back."),
    STR(struct relay_opts, "peer_listen", fleet.peer_listen, CONF_NULLABLE, 1, CONF_STR_MAX,
	NULL, "0.0.0.0:8444", &conf_fmt_listen,
	"Listener for executor connections other relays carry here (plain TCP behind an "
	"HMAC-signed header); required with etcd."),
    STR(struct relay_opts, "peer_advertise", fleet.peer_advertise, CONF_NULLABLE, 1,
	CONF_STR_MAX, NULL, NULL, NULL,
	"`host:port` other relays dial to reach peer_listen (numeric host); null: "
	"peer_listen itself, which must then not be a wildcard address."),
    STR(struct relay_opts, "secret_file", fleet.secret_file, CONF_NULLABLE, 1, CONF_STR_MAX,
	NULL, "/etc/sparkrelay/fleet.secret", NULL,
	"File holding the fleet secret (32 to 1024 bytes, the same on every relay) that signs "
	"relay-to-relay headers; required with etcd."),
    U32(struct relay_opts, "ttl_s", fleet.ttl_s, 2, 3600, "10",
	"The relay's registration in etcd outlives the relay this long: other relays stop "
	"forwarding to a dead relay after at most this (sooner when its port refuses)."),
    U32(struct relay_opts, "register_wait_ms", fleet.register_wait_ms, 100, 60000, "5000",
	"A registration that etcd cannot confirm within this is refused with the error "
	"`fleet_unavailable`; existing leases and streams are not affected."),
    U32(struct relay_opts, "watch_idle_ms", fleet.watch_idle_ms, 1000, 86400000, "1500000",
	"The relay asks etcd for progress notifications on its watch of the lease table and "
	"starts the watch again when it delivers nothing for this long: a watch that went "
	"silent without breaking (an etcd member cut off from its cluster, a path that drops "
	"packets) would leave leases granted elsewhere unserved here (a resume here asks etcd "
	"and reads the table again on its own). Keep it at least 2.5 times etcd's "
	"`--experimental-watch-progress-notify-interval` (10 min by default): etcd skips "
	"the notification after an event and adds up to 10 % to its interval."),
};
static const struct conf_group conf_relay_fleet_group = {
    conf_relay_fleet, N(conf_relay_fleet),
    "The relay fleet: leases in etcd, any relay serves any lease (docs/architecture.md, "
    "\"Relay fleet\")."};

#define RELAY_LIMIT_KEYS                                                                       	U32(struct relay_opts, "max_tunnels", max_tunnels, 1, 1000000, "1024",                 	    "Registered tunnels (sidecars holding a lease) at once; a registration or resume " 	    "past it is refused. Connections that have not registered yet count against "      	    "max_handshakes instead."),                                                        	    U32(struct relay_opts, "max_handshakes", max_handshakes, 1, 1000000, "256",        		"Connections on the tunnel listener that have not registered (TLS handshake "  		"or registration under way, or closing); more are closed at once and counted " 		"as `sparkrelay_refused_total{reason=\"handshake_limit\"}`."),                 	    U32(struct relay_opts, "max_handshakes_per_source", max_handshakes_per_source, 1,  		1000000, "16",                                                                 		"Of those, from one address (IPv6: one /64); more are closed at once "         		"(reason `handshake_source_limit`). Notebooks behind one NAT share an "        		"address: this bounds how many register at the same moment, not how many "    		"stay connected."),                                                            	    U32(struct relay_opts, "max_lease_connections", max_lease_connections, 0, 1000000, 		"8192",                                                                        		"Executor connections one lease holds at once, carried or waiting; more are "  		"reset (reason `lease_connection_limit`); 0: no limit."),                      	    U32(struct relay_opts, "max_tunnel_buffer", max_tunnel_buffer, 65536, 2147483647,  		"16777216",                                                                    		"Bytes read from the executor sockets of one tunnel that the sidecar has not "  		"acknowledged: not yet sent (a sidecar that grants no flow-control window "   		"makes them pile up) or sent and kept for a replay. Over it, each socket of " 		"that tunnel buffers at most 16 KiB unsent and h2.stream_window kept until the sum is back " 		"under half of it, and TCP holds the rest in the executors. Shown as "         		"`sparkrelay_executor_buffered_bytes`."),                                      	    U32(struct relay_opts, "max_grace_leases", max_grace_leases, 0, 65535, "32",       \
		"Leases without a tunnel (in their grace period) one tenant keeps when it "    \
		"registers a new lease: past it, the registration ends one of them instead "   \
		"of taking more ports, as it also does when the tenant's lease limit or the "  \
		"pool is full. It ends the oldest one that the same identity from the same "   \
		"address left behind, else the tenant's oldest; that sidecar must register "   \
		"again. Counted as `sparkrelay_leases_reclaimed_total`. 0: no limit here."),   \
	    GROUP("default_tenant", 0, conf_relay_default_tenant_group)

static const struct conf_entry conf_relay[] = {
    STR(struct relay_opts, "listen", listen, 0, 1, CONF_STR_MAX, "0.0.0.0:8443", NULL,
	&conf_fmt_listen, "Address of the tunnel listener that sidecars dial."),
    GROUP("tls", 0, conf_relay_tls_group),
    STR(struct relay_opts, "auth_token", auth_token, CONF_NULLABLE | CONF_SECRET, 1,
	CONF_TOKEN_MAX, NULL, NULL, NULL,
	"Bearer token every sidecar must present when it registers (at most 255 bytes, "
	"what a registration carries); null: none."),
    {.key = "pool",
     .type = CONF_GROUP,
     .off = offsetof(struct relay_opts, pool),
     .sub = &conf_relay_pool_group,
     .excl = "pools"},
    ARRAY(struct relay_opts, "pools", policy.pools, policy.npools, struct relay_pool_cfg,
	  RELAY_MAX_POOLS, conf_pool_elem_group, CONF_EX_POOLS,
	  "Named port pools; empty: the single `relay.pool`."),
    ARRAY(struct relay_opts, "tenants", policy.tenants, policy.ntenants,
	  struct relay_tenant_cfg, RELAY_MAX_TENANTS, conf_tenant_elem_group, CONF_EX_TENANTS,
	  "Who may register, in order; empty: every sidecar is the tenant `default`."),
    ARRAY(struct relay_opts, "routes", policy.routes, policy.nroutes, struct relay_route_cfg,
	  RELAY_MAX_ROUTES, conf_route_elem_group, CONF_EX_ROUTES,
	  "Which pool a registration gets and which executors may connect, in order; "
	  "empty: every tenant gets the first pool and any executor may connect."),
    GROUP("lease", 0, conf_relay_lease_group),
    U32(struct relay_opts, "handshake_timeout_ms", handshake_timeout_ms, 100, 600000, "10000",
	"TLS handshake plus registration must finish within this."),
    U32(struct relay_opts, "drain_timeout_ms", drain_timeout_ms, 0, 3600000, "30000",
	"On SIGTERM, open streams may finish within this."),
    STR(struct relay_opts, "handover_socket", handover_socket, CONF_NULLABLE, 1, 107,
	"/run/sparkrelay/handover.sock", NULL, NULL,
	"Unix socket through which a new relay process takes over from this one "
	"(`sparkrelay relay --takeover`): listeners, leases and open executor connections "
	"move to it and no stream is lost (docs/operations.md, \"Drain and upgrade\"). Mode "
	"0600; only this relay's user or root may connect. Its directory must exist, else "
	"live handover is off (logged); null: off."),
    U32(struct relay_opts, "handover_timeout_ms", handover_timeout_ms, 100, 600000, "10000",
	"A handover that the new process has not committed within this is abandoned: the "
	"running relay accepts again and keeps everything. The new process gives up after "
	"as long."),
    RELAY_LIMIT_KEYS,
    GROUP("h2", offsetof(struct relay_opts, tun), conf_h2_group),
    GROUP("admin", 0, conf_relay_admin_group),
    GROUP("metrics", 0, conf_relay_metrics_group),
    GROUP("reload", 0, conf_relay_reload_group),
    GROUP("fleet", 0, conf_relay_fleet_group),
};
const struct conf_group conf_relay_group = {
    conf_relay, N(conf_relay),
    "The relay role (`sparkrelay relay`): accepts tunnels and grants port leases."};

/* ---- tunnel: struct sidecar_opts ---- */

static const struct conf_entry conf_tunnel_tls[] = {
    STR(struct sidecar_opts, "ca", ca_file, CONF_REQUIRED, 1, CONF_STR_MAX, NULL,
	"/etc/sparkrelay/ca.pem", NULL, "CA bundle that verifies the relay certificate."),
    STR(struct sidecar_opts, "cert", cert_file, CONF_NULLABLE, 1, CONF_STR_MAX, NULL, NULL,
	NULL, "Client certificate for mTLS; set together with key, or neither."),
    STR(struct sidecar_opts, "key", key_file, CONF_NULLABLE, 1, CONF_STR_MAX, NULL, NULL, NULL,
	"Private key of the client certificate."),
};
static const struct conf_group conf_tunnel_tls_group = {
    conf_tunnel_tls, N(conf_tunnel_tls),
    "TLS towards the relay (TLS 1.3, always verified). The files are read again before a "
    "tunnel is dialled when they changed (a CA or a short-lived client certificate renewed "
    "in place): tunnels up keep what they were made with."};

static const struct conf_entry conf_tunnel_admin[] = {
    STR(struct sidecar_opts, "listen", admin_listen, CONF_NULLABLE, 1, CONF_STR_MAX, NULL, NULL,
	&conf_fmt_listen,
	"Status HTTP listener (/healthz; /readyz: 200 with a lease and its tunnel up; "
	"/status: lease, ports, tunnel state); null: none. "
	"It shows no secret but names the relay: keep it on loopback."),
};
static const struct conf_group conf_tunnel_admin_group = {
    conf_tunnel_admin, N(conf_tunnel_admin), "The sidecar's status endpoint."};

static const struct conf_entry conf_tunnel_k8s[] = {
    STR(struct disc_opts, "api_server", k8s_api_server, CONF_NULLABLE, 9, CONF_STR_MAX, NULL,
	NULL, &conf_fmt_https_url,
	"The Kubernetes API server for `k8s:` relay entries; null: "
	"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (set in every pod)."),
    STR(struct disc_opts, "token_file", k8s_token_file, 0, 1, CONF_STR_MAX,
	"/var/run/secrets/kubernetes.io/serviceaccount/token", NULL, NULL,
	"Bearer token for the API server, read again for every request (kubelet rotates it)."),
    STR(struct disc_opts, "ca", k8s_ca_file, 0, 1, CONF_STR_MAX,
	"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", NULL, NULL,
	"CA bundle that verifies the API server."),
    STR(struct disc_opts, "namespace_file", k8s_namespace_file, 0, 1, CONF_STR_MAX,
	"/var/run/secrets/kubernetes.io/serviceaccount/namespace", NULL, NULL,
	"Namespace of a `k8s:` entry that names none."),
};
static const struct conf_group conf_tunnel_k8s_group = {
    conf_tunnel_k8s, N(conf_tunnel_k8s),
    "The Kubernetes API, for `k8s:` relay entries (the pod's service account by default; "
    "it needs `list` on `endpointslices`: docs/discovery.md)."};

static const struct conf_entry conf_tunnel_discovery[] = {
    LIST(struct disc_opts, "nameservers", nameservers, nnameservers, DISC_MAX_NAMESERVERS,
	 &conf_fmt_nameserver,
	 "DNS servers for relay names and `srv:` entries; empty: those of /etc/resolv.conf."),
    U32(struct disc_opts, "cache_s", cache_s, 0, 300, "5",
	"An answer of a `srv:` or `k8s:` entry is used again for this long (an SRV answer at "
	"most for its TTL); 0: asked on every dial round."),
    U32(struct disc_opts, "stale_s", stale_s, 0, 86400, "300",
	"When asking a `srv:` or `k8s:` entry fails, its last answer is used (and the log "
	"says so) while it is younger than this; 0: never."),
    U32(struct disc_opts, "timeout_ms", timeout_ms, 100, 60000, "5000",
	"One SRV query (every nameserver, twice round) or one API request."),
    GROUP("k8s", 0, conf_tunnel_k8s_group),
};
static const struct conf_group conf_tunnel_discovery_group = {
    conf_tunnel_discovery, N(conf_tunnel_discovery),
    "How relay entries are looked up (docs/discovery.md)."};

static const struct conf_entry conf_tunnel[] = {
    {.key = "relays",
     .type = CONF_STRLIST,
     .flags = CONF_REQUIRED,
     .off = offsetof(struct sidecar_opts, relays),
     .aux_off = offsetof(struct sidecar_opts, nrelays),
     .min = 1,
     .max = SIDECAR_MAX_RELAYS,
     .example = "relay.example.com:8443",
     .fmt = &conf_fmt_relay_entry,
     .doc = "Relays to dial, tried in turn: `host:port` (a name may resolve to many "
	    "addresses), `srv:` DNS SRV records, or `k8s:` the Ready endpoints of a Kubernetes "
	    "Service (docs/discovery.md)."},
    GROUP("discovery", offsetof(struct sidecar_opts, disc), conf_tunnel_discovery_group),
    STR(struct sidecar_opts, "server_name", server_name, CONF_NULLABLE, 1, CONF_HOST_MAX, NULL,
	NULL, &conf_fmt_host,
	"Name verified in the relay certificate; null: the host of a `host:port` entry, the "
	"DOMAIN of `srv:_SERVICE._tcp.DOMAIN`, SERVICE.NAMESPACE.svc for `k8s:`."),
    GROUP("tls", 0, conf_tunnel_tls_group),
    STR(struct sidecar_opts, "token", token, CONF_NULLABLE | CONF_SECRET, 1, CONF_TOKEN_MAX,
	NULL, NULL, NULL,
	"Bearer token sent when registering (at most 255 bytes, what a registration "
	"carries); null: none."),
    STR(struct sidecar_opts, "app", app_name, 0, 1, 127, "spark-notebook", NULL, &conf_fmt_app,
	"Application name shown by the relay (logs, leases)."),
    BOOL(struct sidecar_opts, "ui_port", want_ui, "false",
	 "Also lease a port for spark.ui.port."),
    {.key = "allowed_ports",
     .type = CONF_STRLIST,
     .off = offsetof(struct sidecar_opts, allowed_ports),
     .aux_off = offsetof(struct sidecar_opts, nallowed_ports),
     .min = 1,
     .max = SIDECAR_MAX_PORT_RANGES,
     .def = CONF_DEFAULT_POOL_MIN "-" CONF_DEFAULT_POOL_MAX,
     .fmt = &conf_fmt_port_range,
     .doc = "Ports a lease may grant (the driver binds them on the notebook): the relay's "
	    "pool ranges. A lease with another port is refused as a protocol error, so a "
	    "relay cannot make the driver bind a port of another local service. The default "
	    "is the relays' default pool; set it when the relay's pool differs."},
    STR(struct sidecar_opts, "spark_conf", spark_conf_path, CONF_NULLABLE, 1, CONF_STR_MAX,
	"spark-defaults.conf", NULL, NULL,
	"spark-defaults.conf fragment written when a lease is granted (its folder must "
	"exist, as for the other files the sidecar writes); null: not written."),
    STR(struct sidecar_opts, "spark_json", spark_json_path, CONF_NULLABLE, 1, CONF_STR_MAX,
	"spark.json", NULL, NULL, "The same Spark settings as JSON; null: not written."),
    STR(struct sidecar_opts, "spark_defaults", spark_defaults_path, CONF_NULLABLE, 1,
	CONF_STR_MAX, NULL, "/opt/spark/conf/spark-defaults.conf", NULL,
	"A spark-defaults.conf that Spark reads (in `$SPARK_CONF_DIR`): the sidecar keeps the "
	"lease's settings in a `# sparkrelay begin`/`end` block there, current on every lease "
	"change (other lines that set the same keys are dropped, every other line is kept), "
	"and removes the block when the lease is released, lost or the sidecar stops. Never "
	"written through a symlink. null: not kept."),
    STR(struct sidecar_opts, "status_file", status_path, CONF_NULLABLE, 1, CONF_STR_MAX, NULL,
	"/home/user/.sparkrelay/status.json", NULL,
	"JSON rewritten on every change of state: `state` (connecting, leased, reconnecting, "
	"relay_unreachable, no_lease, stopped), lease, host, ports, `lease_changes`, pid, "
	"message. For the notebook (docs/spark.md); null: not written."),
    U32(struct sidecar_opts, "direct_result_mib", direct_result_mib, 0, 1024, "256",
	"Task results up to this many MiB come back in the executor's RPC connection, through "
	"the relay: written as spark.task.maxDirectResultSize, with spark.rpc.message.maxSize "
	"raised to match. Spark fetches larger results from the executor's pod, which a "
	"notebook usually cannot reach (docs/spark.md). 0: Spark's defaults (1 MiB)."),
    STR(struct sidecar_opts, "state_file", state_path, CONF_NULLABLE, 1, CONF_STR_MAX,
	"sparkrelay-state.json", NULL, NULL,
	"Keeps the resume token across sidecar restarts; null: not kept."),
    U32(struct sidecar_opts, "backoff_initial_ms", backoff_initial_ms, 1, 600000, "100",
	"First reconnect delay; doubles (with jitter) up to backoff_max_ms."),
    U32(struct sidecar_opts, "backoff_max_ms", backoff_max_ms, 1, 3600000, "10000",
	"Longest reconnect delay; at least backoff_initial_ms."),
    U32(struct sidecar_opts, "dial_timeout_ms", dial_timeout_ms, 100, 600000, "10000",
	"TCP connect plus TLS handshake to one relay."),
    U32(struct sidecar_opts, "register_timeout_ms", register_timeout_ms, 1000, 600000, "30000",
	"From the TLS handshake to the relay's answer granting, resuming or joining the "
	"lease. A relay that does not answer in time (it answers PINGs but nothing else, "
	"or ended the control stream) counts as one that broke the protocol: the tunnel "
	"ends and the next relay address is dialled, after a longer backoff each time. "
	"Keep it above the relays' fleet.register_wait_ms (5 s)."),
    U32(struct sidecar_opts, "driver_connect_timeout_ms", driver_connect_timeout_ms, 100,
	600000, "5000", "Connecting to the driver on 127.0.0.1."),
    U32(struct sidecar_opts, "release_timeout_ms", release_timeout_ms, 0, 600000, "3000",
	"On shutdown, wait this long for the relay to confirm the release."),
    U32(struct sidecar_opts, "resume_hold_s", resume_hold_s, 1, 3600, "90",
	"Driver connections open when the tunnel went stay open (not read) this long for "
	"the tunnel to come back and resume them; then they are reset."),
    U32(struct sidecar_opts, "connections", connections, 1, SIDECAR_MAX_CONNECTIONS, "1",
	"Tunnels held for the one lease, each to a different relay where discovery gives "
	"several (else to the same relay): the first registers, the others join its lease. "
	"An executor connection goes over a live tunnel to the relay it reached; with "
	"several there, the driver port's (heartbeats) over the oldest and the block "
	"manager's and UI's (broadcasts) over the others, so that on a lossy link a "
	"heartbeat does not wait behind a broadcast's lost packets (set 2 for that). When "
	"one is lost the others carry on and a replacement is dialled; one that gives up on "
	"a relay holding driver connections of ours (3 s without an answer) leaves it to a "
	"spare tunnel, one more, which dials that relay until they resume or their "
	"resume_hold_s ends. A relay that cannot join leases leaves the sidecar with one "
	"tunnel (logged once)."),
    GROUP("h2", offsetof(struct sidecar_opts, tun), conf_h2_group),
    GROUP("admin", 0, conf_tunnel_admin_group),
};
const struct conf_group conf_tunnel_group = {
    conf_tunnel, N(conf_tunnel),
    "The sidecar role (`sparkrelay tunnel`): dials a relay for the driver next to it."};

/* ---- the file: struct sr_config ---- */

static const struct conf_entry conf_log[] = {
    {.key = "level",
     .type = CONF_STRING,
     .off = offsetof(struct sr_config, log_level),
     .min = 1,
     .max = 16,
     .def = "info",
     .choices = conf_log_levels,
     .doc = "Least severe level logged."},
    {.key = "format",
     .type = CONF_STRING,
     .off = offsetof(struct sr_config, log_format),
     .min = 1,
     .max = 16,
     .def = "text",
     .choices = conf_log_formats,
     .doc = "`text`: one line per message, `2026-11-27T07:31:31.123Z INFO  [relay "
	    "lease=L-1-6f2fc91c ...] message`; `json`: one JSON object per line with the "
	    "fields `time`, `level`, `role`, `ctx` and `msg` (every non-ASCII character as "
	    "`\\uXXXX`), for log pipelines. A reload applies a change."},
};
static const struct conf_group conf_log_group = {conf_log, N(conf_log), "Logging (stderr)."};

static const struct conf_entry conf_root[] = {
    GROUP("log", 0, conf_log_group),
    {.key = "relay",
     .type = CONF_GROUP,
     .flags = CONF_SECTION,
     .off = offsetof(struct sr_config, relay),
     .aux_off = offsetof(struct sr_config, have_relay),
     .sub = &conf_relay_group,
     .role = CONF_ROLE_RELAY},
    {.key = "tunnel",
     .type = CONF_GROUP,
     .flags = CONF_SECTION,
     .off = offsetof(struct sr_config, tunnel),
     .aux_off = offsetof(struct sr_config, have_tunnel),
     .sub = &conf_tunnel_group,
     .role = CONF_ROLE_TUNNEL},
};
const struct conf_group conf_root_group = {conf_root, N(conf_root), NULL};
