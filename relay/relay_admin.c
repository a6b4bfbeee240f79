/* Admin HTTP API of the relay (contract in relay_admin.h). Runs in the
 * relay's loop: every handler only reads snapshots the relay hands out and
 * answers at once, so a slow admin client can hold its own connection but
 * never the data path. */
#include "relay/relay_admin.h"
#include "relay/relay_view.h"

#include "common/sr_text.h"
#include "common/sr_err.h"
#include "common/sr_http.h"
#include "common/sr_http_guard.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "relay/relay.h"
#include "relay/relay_policy.h"
#include "tunnel/tun_endpoint.h"

#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

/* A drain requested over HTTP starts once the 200 has been written (so the
 * client sees it before the loop may exit), or after this long if the
 * client went away before the answer was sent. */
#define ADMIN_DRAIN_FALLBACK_MS 1000
/* The read-only metrics listener serves Prometheus and a probe or two:
 * fixed caps, as for the sidecar's status listener. */
#define METRICS_MAX_CONNS 16
#define METRICS_DEADLINE_MS 10000
#define METRICS_MAX_HEADERS (8 * 1024)
#define METRICS_MAX_BODY 1024

struct relay_admin {
	struct event_base *base;
	struct relay *relay;
	struct sr_http api; /* listener, connection cap and deadline */
	struct event *drain_ev;
	int have_token;
	/* SHA-256 of the token: comparing digests takes the same time whatever
	 * the length of the presented token. */
	unsigned char token_sha[SHA256_DIGEST_LENGTH];
	struct relay_admin_cbs cbs;
	void *cb_arg;
	struct relay_metrics *metrics; /* its guard's counters are shown too */
};

struct relay_metrics {
	struct relay *relay;
	struct sr_http api;
	struct relay_admin *admin; /* may be NULL */
};

enum admin_method {
	AM_GET = 1,
	AM_POST = 2,
	AM_DELETE = 4,
};

typedef void (*admin_handler)(struct relay_admin *a, struct evhttp_request *req,
			      const char *tail);

struct admin_route {
	const char *path;
	int prefix;	 /* path is a prefix; the rest is passed as tail */
	unsigned method; /* the one method it answers */
	int open;	 /* served without a token */
	admin_handler fn;
};

/* A string for JSON that cannot fail on NULL or invalid UTF-8 (a
 * certificate CN is not guaranteed to be UTF-8). */
static json_t *jstr(const char *s)
{
	json_t *v;

	if (!s)
		return json_null();
	v = json_string(s);
	return v ? v : json_string("<invalid utf-8>");
}

/* ---- /healthz /readyz --------------------------------------------- */

static void h_healthz(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	sr_http_reply_text(req, 200, "ok\n");
}

static void readyz(struct relay *r, struct evhttp_request *req)
{
	struct relay_stats st;

	relay_get_stats(r, &st);
	if (st.draining)
		sr_http_reply_text(req, 503, "not ready: draining\n");
	else if (st.fleet && !st.fleet_table_read)
		sr_http_reply_text(req, 503, "not ready: the fleet's lease table not read from etcd "
					     "yet\n");
	else if (st.fleet && !st.fleet_joined)
		sr_http_reply_text(req, 503, "not ready: not registered in the fleet (etcd) yet\n");
	else if (!st.ready)
		sr_http_reply_text(req, 503, "not ready: listeners or configuration not up yet\n");
	else
		sr_http_reply_text(req, 200, "ready\n");
}

static void h_readyz(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	readyz(a->relay, req);
}

/* ---- /metrics ------------------------------------------------------- */

static void metric_head(struct evbuffer *b, const char *name, const char *type,
			const char *help)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_one(struct evbuffer *b, const char *name, const char *type, const char *help,
		       uint64_t v)
{
	metric_head(b, name, type, help);
	evbuffer_add_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* A label value of the exposition format: '\\', '"' and newlines escaped.
 * Names of pools and tenants are restricted by the configuration, and lease
 * ids by the lease code; this is the last line of defence. */
static const char *label(const char *s, char *buf, size_t len)
{
	size_t o = 0;

	for (; s && *s && o + 3 < len; s++) {
		if (*s == '\\' || *s == '"') {
			buf[o++] = '\\';
			buf[o++] = *s;
		} else if (*s == '\n') {
			buf[o++] = '\\';
			buf[o++] = 'n';
		} else {
			buf[o++] = *s;
		}
	}
	buf[o] = '\0';
	return buf;
}

static void metric_hist(struct evbuffer *b, const char *name, const char *help,
			const struct relay_hist *h)
{
	uint64_t cum = 0;

	metric_head(b, name, "histogram", help);
	for (size_t i = 0; i < RELAY_HIST_BUCKETS - 1; i++) {
		cum += h->count[i];
		evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name,
				    (double)relay_hist_bounds_us[i] / 1e6,
				    (unsigned long long)cum);
	}
	cum += h->count[RELAY_HIST_BUCKETS - 1];
	/* +Inf and _count come from the same sum, as the format requires them
	 * to be equal even if a bucket and n were bumped apart. */
	evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	evbuffer_add_printf(b, "%s_sum %.6f\n", name, (double)h->sum_us / 1e6);
	evbuffer_add_printf(b, "%s_count %llu\n", name, (unsigned long long)cum);
}

static double wall_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The process_* metrics of the Prometheus client libraries, from /proc
 * (Linux): each is left out when it cannot be read. */
static void metrics_process(struct evbuffer *b)
{
	struct rusage ru;
	struct rlimit rl;
	long page = sysconf(_SC_PAGESIZE), tck = sysconf(_SC_CLK_TCK);
	unsigned long long vsize = 0, rss = 0, start = 0, btime = 0;
	char buf[1024], *p;
	size_t n;
	FILE *f;
	DIR *d;

	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		metric_head(b, "process_cpu_seconds_total", "counter",
			    "User and system CPU time spent, seconds.");
		evbuffer_add_printf(b, "process_cpu_seconds_total %.6f\n",
				    (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
					(double)ru.ru_stime.tv_sec +
					(double)ru.ru_stime.tv_usec / 1e6);
	}
	if ((f = fopen("/proc/self/statm", "r"))) {
		if (fscanf(f, "%llu %llu", &vsize, &rss) == 2 && page > 0) {
			metric_one(b, "process_virtual_memory_bytes", "gauge",
				   "Virtual memory size, bytes.", vsize * (unsigned long long)page);
			metric_one(b, "process_resident_memory_bytes", "gauge",
				   "Resident memory size, bytes.", rss * (unsigned long long)page);
		}
		fclose(f);
	}
	if ((d = opendir("/proc/self/fd"))) {
		uint64_t fds = 0;
		struct dirent *e;
		while ((e = readdir(d)))
			fds += e->d_name[0] != '.';
		closedir(d);
		metric_one(b, "process_open_fds", "gauge", "Open file descriptors.",
			   fds ? fds - 1 : 0); /* not the directory's own */
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		metric_one(b, "process_max_fds", "gauge",
			   "Maximum number of open file descriptors (soft RLIMIT_NOFILE).",
			   (uint64_t)rl.rlim_cur);
	/* Start time: /proc/self/stat field 22 (clock ticks after boot), after
	 * the command name, which may hold spaces and parentheses. */
	if ((f = fopen("/proc/self/stat", "r"))) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		buf[n] = '\0';
		fclose(f);
		p = strrchr(buf, ')');
		for (int field = 2; p && field < 22; field++)
			p = strchr(p + 1, ' ');
		if (p)
			start = strtoull(p + 1, NULL, 10);
	}
	if ((f = fopen("/proc/stat", "r"))) {
		while (fgets(buf, sizeof(buf), f))
			if (sscanf(buf, "btime %llu", &btime) == 1)
				break;
		fclose(f);
	}
	if (start && btime && tck > 0) {
		metric_head(b, "process_start_time_seconds", "gauge",
			    "Start time of the process since the Unix epoch, seconds.");
		evbuffer_add_printf(b, "process_start_time_seconds %.2f\n",
				    (double)btime + (double)start / (double)tck);
	}
}

/* One sample per pool or tenant of the family being written. */
struct family_ctx {
	struct evbuffer *b;
	const char *name;
	size_t off; /* of the uint64_t or uint32_t field in the view */
	int u32;
};

static uint64_t view_field(const void *v, const struct family_ctx *fc)
{
	const char *p = (const char *)v + fc->off;
	uint32_t u32;
	uint64_t u64;

	if (fc->u32) {
		memcpy(&u32, p, sizeof(u32));
		return u32;
	}
	memcpy(&u64, p, sizeof(u64));
	return u64;
}

static void pool_sample(const struct relay_pool_view *v, void *arg)
{
	struct family_ctx *fc = arg;
	char l[160];

	evbuffer_add_printf(fc->b, "%s{pool=\"%s\"} %llu\n", fc->name, label(v->name, l, sizeof(l)),
			    (unsigned long long)view_field(v, fc));
}

static void tenant_sample(const struct relay_tenant_view *v, void *arg)
{
	struct family_ctx *fc = arg;
	char l[160];

	evbuffer_add_printf(fc->b, "%s{tenant=\"%s\"} %llu\n", fc->name,
			    label(v->name, l, sizeof(l)), (unsigned long long)view_field(v, fc));
}

#define FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f) == 4

static void pool_family(struct relay *r, struct evbuffer *b, const char *name, const char *help,
			size_t off, int u32)
{
	struct family_ctx fc = {b, name, off, u32};

	metric_head(b, name, "gauge", help);
	relay_foreach_pool(r, pool_sample, &fc);
}

static void tenant_family(struct relay *r, struct evbuffer *b, const char *name,
			  const char *help, size_t off, int u32)
{
	struct family_ctx fc = {b, name, off, u32};

	metric_head(b, name, "gauge", help);
	relay_foreach_tenant(r, tenant_sample, &fc);
}

static void tenant_refusals(const char *tenant, const char *pool, const uint64_t *n, void *arg)
{
	char lt[160], lp[160];

	label(tenant, lt, sizeof(lt));
	label(pool, lp, sizeof(lp));
	for (int i = 0; i < RELAY_REFUSE_MAX; i++)
		if (n[i])
			evbuffer_add_printf(
			    arg, "sparkrelay_tenant_refused_total{tenant=\"%s\",pool=\"%s\",reason=\"%s\"} %llu\n",
			    lt, lp, relay_refusal_name((enum relay_refusal)i),
			    (unsigned long long)n[i]);
}

struct away_ctx {
	struct evbuffer *b;
	double now;
	uint64_t detached;
};

static void lease_away(const struct relay_lease_view *v, void *arg)
{
	struct away_ctx *ac = arg;
	char li[160], lt[160], lp[160];

	ac->detached += !v->attached;
	if (!v->resume.away_since_us)
		return;
	evbuffer_add_printf(ac->b,
			    "sparkrelay_resume_away_since_seconds{lease=\"%s\",tenant=\"%s\","
			    "pool=\"%s\"} %.3f\n",
			    label(v->id, li, sizeof(li)), label(v->tenant, lt, sizeof(lt)),
			    label(v->pool, lp, sizeof(lp)), ac->now - (double)v->away_ms / 1e3);
}

static void guard_metrics(struct evbuffer *b, const char *prefix, const char *what,
			  const char *cap, const struct sr_http_guard *g)
{
	struct sr_http_guard_stats gst;
	char name[96], help[256];

	sr_http_guard_get_stats(g, &gst);
	snprintf(name, sizeof(name), "sparkrelay_%s_connections_active", prefix);
	snprintf(help, sizeof(help), "%s connections open now.", what);
	metric_one(b, name, "gauge", help, gst.active);
	snprintf(name, sizeof(name), "sparkrelay_%s_connections_total", prefix);
	snprintf(help, sizeof(help), "%s connections accepted.", what);
	metric_one(b, name, "counter", help, gst.accepted);
	snprintf(name, sizeof(name), "sparkrelay_%s_connections_evicted_total", prefix);
	snprintf(help, sizeof(help), "%s connections closed to make room for a newer one (%s).",
		 what, cap);
	metric_one(b, name, "counter", help, gst.evicted);
	snprintf(name, sizeof(name), "sparkrelay_%s_connections_refused_total", prefix);
	snprintf(help, sizeof(help), "%s connections closed on accept: none could make room.",
		 what);
	metric_one(b, name, "counter", help, gst.refused);
	snprintf(name, sizeof(name), "sparkrelay_%s_connections_timed_out_total", prefix);
	snprintf(help, sizeof(help), "%s connections closed at their deadline.", what);
	metric_one(b, name, "counter", help, gst.timed_out);
}

/* The whole exposition; admin and metrics (either may be NULL) add their
 * listeners' connection counters. */
static void render_metrics(struct relay *r, const struct relay_admin *admin,
			   const struct relay_metrics *mx, struct evbuffer *b)
{
	struct tun_group_stats rs;
	struct relay_stats st;
	struct away_ctx ac = {b, wall_now_s(), 0};
	uint64_t away = 0;

	relay_get_stats(r, &st);
	metric_head(b, "sparkrelay_build_info", "gauge", "Version of the running relay.");
	evbuffer_add_printf(b, "sparkrelay_build_info{version=\"%s\"} 1\n", SR_VERSION);
	metric_one(b, "sparkrelay_ready", "gauge",
		   "1 when /readyz answers 200: listeners up, configuration loaded, not draining and, "
		   "with a fleet, joined it.",
		   st.ready ? 1 : 0);
	metric_one(b, "sparkrelay_draining", "gauge", "1 while the relay drains.",
		   st.draining ? 1 : 0);
	metric_one(b, "sparkrelay_tunnels_active", "gauge", "Sidecar tunnels connected now.",
		   st.tunnels_active);
	metric_one(b, "sparkrelay_tunnels_accepted_total", "counter",
		   "Sidecar tunnels that completed the TLS handshake.", st.tunnels_accepted);
	metric_one(b, "sparkrelay_handshake_failures_total", "counter",
		   "Tunnel connections that failed TLS, or did not complete TLS and "
		   "registration within relay.handshake_timeout_ms.",
		   st.handshake_failures);
	metric_one(b, "sparkrelay_handshakes_active", "gauge",
		   "Tunnel connections not registered yet (relay.max_handshakes).",
		   st.handshakes_active);
	metric_one(b, "sparkrelay_accept_errors_total", "counter",
		   "Tunnel listener accept() failures (EMFILE...); it pauses after each.",
		   st.accept_errors);
	metric_one(b, "sparkrelay_leases_reclaimed_total", "counter",
		   "Leases in grace ended for a new registration (relay.max_grace_leases).",
		   st.leases_reclaimed);
	metric_one(b, "sparkrelay_executor_buffered_bytes", "gauge",
		   "Bytes read from executors that sidecars have not acknowledged (unsent, or "
		   "kept for a replay).",
		   st.executor_buffered);
	metric_one(b, "sparkrelay_tunnel_buffer_full_total", "counter",
		   "Times a tunnel went over relay.max_tunnel_buffer.", st.buffer_throttled);
	metric_one(b, "sparkrelay_leases_active", "gauge", "Port leases held now.",
		   st.leases_active);
	metric_one(b, "sparkrelay_leases_granted_total", "counter", "Port leases granted.",
		   st.leases_granted);
	metric_one(b, "sparkrelay_leases_resumed_total", "counter",
		   "Leases resumed by a reconnecting sidecar.", st.leases_resumed);
	metric_one(b, "sparkrelay_leases_joined_total", "counter",
		   "Tunnels a sidecar added to a lease it holds (tunnel.connections).",
		   st.leases_joined);
	metric_one(b, "sparkrelay_leases_expired_total", "counter",
		   "Leases whose grace TTL ran out with no tunnel.", st.leases_expired);
	metric_one(b, "sparkrelay_executor_connections_total", "counter",
		   "Executor connections accepted on lease ports.", st.executor_conns);
	metric_one(b, "sparkrelay_handovers_total", "counter",
		   "Live handovers to a new relay process, counted by the new one.", st.handovers);
	if (st.fleet) {
		metric_one(b, "sparkrelay_fleet_registered", "gauge",
			   "1 while this relay's registration is alive in etcd.",
			   (uint64_t)st.fleet_registered);
		metric_one(b, "sparkrelay_fleet_leases", "gauge",
			   "Leases in the fleet's table in etcd, as this relay sees it.",
			   st.fleet_leases);
		metric_one(b, "sparkrelay_fleet_revision", "gauge",
			   "etcd's revision this relay's copy of the fleet's table is complete to; "
			   "a relay whose figure stays behind the others' has a stuck watch.",
			   st.fleet_revision);
		metric_one(b, "sparkrelay_fleet_carried_total", "counter",
			   "Executor connections carried to a relay that holds the lease's tunnel.",
			   st.fleet_carried);
		metric_one(b, "sparkrelay_fleet_carry_failed_total", "counter",
			   "Of those, no relay with a tunnel answered: the connection waited here.",
			   st.fleet_carry_failed);
	}
	metric_head(b, "sparkrelay_refused_total", "counter",
		    "Executor connections and registrations refused, by reason.");
	for (int i = 0; i < RELAY_REFUSE_MAX; i++)
		evbuffer_add_printf(b, "sparkrelay_refused_total{reason=\"%s\"} %llu\n",
				    relay_refusal_name((enum relay_refusal)i),
				    (unsigned long long)st.refused[i]);
	metric_head(b, "sparkrelay_tenant_refused_total", "counter",
		    "Refusals whose tenant is known, by tenant, pool (\"\" if none yet) and "
		    "reason; only those that happened.");
	relay_foreach_refusal(r, tenant_refusals, b);

	pool_family(r, b, "sparkrelay_pool_ports",
		    "Ports of the pool's range (relay.pool or relay.pools[]).",
		    FIELD(struct relay_pool_view, ports));
	pool_family(r, b, "sparkrelay_pool_ports_used", "Ports of the pool held by leases.",
		    FIELD(struct relay_pool_view, ports_used));
	pool_family(r, b, "sparkrelay_pool_leases", "Leases held from the pool.",
		    FIELD(struct relay_pool_view, leases));
	pool_family(r, b, "sparkrelay_pool_max_leases",
		    "The pool's max_leases; 0: no limit but its ports.",
		    FIELD(struct relay_pool_view, max_leases));
	tenant_family(r, b, "sparkrelay_tenant_leases", "Leases the tenant holds now.",
		      FIELD(struct relay_tenant_view, leases));
	tenant_family(r, b, "sparkrelay_tenant_connections",
		      "Executor connections of the tenant's leases now, carried or waiting.",
		      FIELD(struct relay_tenant_view, connections));
	tenant_family(r, b, "sparkrelay_tenant_max_leases", "The tenant's lease limit; 0: none.",
		      FIELD(struct relay_tenant_view, max_leases));
	tenant_family(r, b, "sparkrelay_tenant_max_connections",
		      "The tenant's connection limit; 0: none.",
		      FIELD(struct relay_tenant_view, max_connections));

	metric_one(b, "sparkrelay_streams_active", "gauge", "Tunnelled connections open now.",
		   st.streams_active);
	metric_one(b, "sparkrelay_streams_opened_total", "counter",
		   "Tunnelled connections (HTTP/2 streams) opened.", st.streams_opened);
	metric_head(b, "sparkrelay_bytes_total", "counter",
		    "Payload bytes carried, by direction.");
	evbuffer_add_printf(b, "sparkrelay_bytes_total{direction=\"to_driver\"} %llu\n",
			    (unsigned long long)st.bytes_to_sidecar);
	evbuffer_add_printf(b, "sparkrelay_bytes_total{direction=\"to_executor\"} %llu\n",
			    (unsigned long long)st.bytes_to_executor);

	/* Stream resumption (protocol v2): leases whose tunnel went while it
	 * carried streams hold them until it comes back. */
	relay_get_resume_stats(r, &rs, &away);
	metric_head(b, "sparkrelay_resume_away_since_seconds", "gauge",
		    "Per lease whose tunnel is away while it holds streams: when the tunnel "
		    "went, seconds since the Unix epoch.");
	relay_foreach_lease(r, lease_away, &ac);
	metric_one(b, "sparkrelay_leases_detached", "gauge",
		   "Leases without a tunnel now (in their grace period).", ac.detached);
	metric_one(b, "sparkrelay_resume_leases_away", "gauge",
		   "Leases whose tunnel is away while they hold streams.", away);
	metric_one(b, "sparkrelay_resume_streams_held", "gauge",
		   "Executor connections held open for a tunnel to come back.", rs.held);
	metric_one(b, "sparkrelay_resume_held_bytes", "gauge",
		   "Bytes kept for held connections (to send and to deliver).", rs.held_bytes);
	metric_one(b, "sparkrelay_resume_aways_total", "counter",
		   "Tunnels lost while they carried streams.", rs.aways);
	metric_one(b, "sparkrelay_resumes_total", "counter",
		   "Tunnels that came back and resumed held streams.", rs.resumes);
	metric_one(b, "sparkrelay_resume_streams_resumed_total", "counter",
		   "Held streams resumed on a new tunnel.", rs.resumed);
	metric_one(b, "sparkrelay_resume_replayed_bytes_total", "counter",
		   "Payload bytes sent again after a resume.", rs.replayed_bytes);
	metric_head(b, "sparkrelay_resume_streams_lost_total", "counter",
		    "Held streams reset instead of resumed, by reason.");
	for (int i = 0; i < TUN_LOST_MAX; i++)
		evbuffer_add_printf(b, "sparkrelay_resume_streams_lost_total{reason=\"%s\"} %llu\n",
				    tun_lost_name((enum tun_lost)i), (unsigned long long)rs.lost[i]);

	metric_head(b, "sparkrelay_reloads_total", "counter",
		    "Configuration reloads, by result.");
	evbuffer_add_printf(b, "sparkrelay_reloads_total{result=\"ok\"} %llu\n",
			    (unsigned long long)st.reloads_ok);
	evbuffer_add_printf(b, "sparkrelay_reloads_total{result=\"failed\"} %llu\n",
			    (unsigned long long)st.reloads_failed);
	metric_head(b, "sparkrelay_config_auto_reloads_total", "counter",
		    "Of those, reloads the file watch started (relay.reload.watch), by result.");
	evbuffer_add_printf(b, "sparkrelay_config_auto_reloads_total{result=\"ok\"} %llu\n",
			    (unsigned long long)st.auto_reloads_ok);
	evbuffer_add_printf(b, "sparkrelay_config_auto_reloads_total{result=\"failed\"} %llu\n",
			    (unsigned long long)st.auto_reloads_failed);
	metric_one(b, "sparkrelay_config_last_reload_successful", "gauge",
		   "1 if the last reload (or the start) applied the configuration file, 0 if it "
		   "was refused and an older configuration runs.",
		   st.last_reload_ok ? 1 : 0);
	metric_head(b, "sparkrelay_config_last_reload_success_timestamp_seconds", "gauge",
		    "When the configuration in force was loaded, seconds since the Unix epoch.");
	evbuffer_add_printf(b, "sparkrelay_config_last_reload_success_timestamp_seconds %.3f\n",
			    (double)st.last_reload_ok_unix_ms / 1e3);
	if (st.tls_cert_not_after > 0) {
		metric_head(b, "sparkrelay_tls_certificate_expiry_timestamp_seconds", "gauge",
			    "When the certificate new tunnels get (relay.tls.cert) expires, seconds "
			    "since the Unix epoch.");
		evbuffer_add_printf(b, "sparkrelay_tls_certificate_expiry_timestamp_seconds %lld\n",
				    (long long)st.tls_cert_not_after);
	}

	if (admin)
		guard_metrics(b, "admin", "Admin API", "relay.admin.max_connections",
			      admin->api.guard);
	if (mx)
		guard_metrics(b, "metrics", "Metrics listener", "its cap of 16", mx->api.guard);
	metric_hist(b, "sparkrelay_tunnel_rtt_seconds", "Tunnel PING round-trip time.",
		    &st.tunnel_rtt);
	metric_hist(b, "sparkrelay_executor_wait_seconds",
		    "Time an executor connection waited for its tunnel to come back (those "
		    "that waited relay.lease.pending_timeout_ms in vain are "
		    "sparkrelay_refused_total{reason=\"pending_timeout\"}).",
		    &st.pending_wait);
	metrics_process(b);
}

static void reply_metrics(struct relay *r, const struct relay_admin *admin,
			  const struct relay_metrics *mx, struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	render_metrics(r, admin, mx, b);
	sr_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
	evbuffer_free(b);
}

static void h_metrics(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	reply_metrics(a->relay, a, a->metrics, req);
}

/* ---- /v1/sessions /v1/leases --------------------------------------- */

static void session_to_json(const struct relay_session_view *v, void *arg)
{
	json_t *arr = arg, *o = json_object();

	if (!o)
		return;
	json_object_set_new(o, "peer", jstr(v->peer));
	json_object_set_new(o, "identity", jstr(v->identity));
	json_object_set_new(o, "tenant", jstr(v->tenant));
	json_object_set_new(o, "lease", jstr(v->lease));
	json_object_set_new(o, "app", jstr(v->app));
	json_object_set_new(o, "age_ms", json_integer((json_int_t)v->age_ms));
	json_object_set_new(o, "streams_active",
			    json_integer((json_int_t)v->st.streams_active));
	json_object_set_new(o, "streams_opened",
			    json_integer((json_int_t)v->st.streams_opened));
	json_object_set_new(o, "streams_reset", json_integer((json_int_t)v->st.streams_reset));
	/* The relay reads executor bytes into the tunnel: to the driver. */
	json_object_set_new(o, "bytes_to_driver",
			    json_integer((json_int_t)v->st.bytes_to_tunnel));
	json_object_set_new(o, "bytes_to_executor",
			    json_integer((json_int_t)v->st.bytes_from_tunnel));
	json_object_set_new(o, "rtt_us", json_integer((json_int_t)v->st.last_rtt_us));
	json_array_append_new(arr, o);
}

/* A lease's stream resumption state (the sidecar's /status has the same
 * object): "away" and "away_ms" while it holds streams for a tunnel to
 * come back. */
static json_t *resume_json(const struct tun_group_stats *g, uint64_t away_ms)
{
	json_t *o = json_object(), *lost = json_object();

	if (!o || !lost) {
		json_decref(o);
		json_decref(lost);
		return json_null();
	}
	for (int i = 0; i < TUN_LOST_MAX; i++)
		json_object_set_new(lost, tun_lost_name((enum tun_lost)i),
				    json_integer((json_int_t)g->lost[i]));
	json_object_set_new(o, "away", json_boolean(g->away_since_us != 0));
	json_object_set_new(o, "away_ms", json_integer((json_int_t)away_ms));
	json_object_set_new(o, "streams_held", json_integer((json_int_t)g->held));
	json_object_set_new(o, "bytes_held", json_integer((json_int_t)g->held_bytes));
	json_object_set_new(o, "aways", json_integer((json_int_t)g->aways));
	json_object_set_new(o, "resumes", json_integer((json_int_t)g->resumes));
	json_object_set_new(o, "streams_resumed", json_integer((json_int_t)g->resumed));
	json_object_set_new(o, "bytes_replayed", json_integer((json_int_t)g->replayed_bytes));
	json_object_set_new(o, "streams_lost", lost);
	return o;
}

static void lease_to_json(const struct relay_lease_view *v, void *arg)
{
	json_t *arr = arg, *o = json_object(), *ports = json_object();

	if (!o || !ports) {
		json_decref(o);
		json_decref(ports);
		return;
	}
	for (int role = 0; role < TUN_PORT_MAX; role++) {
		const char *name = tun_port_role_name((enum tun_port_role)role);
		if (v->ports[role] && name)
			json_object_set_new(ports, name, json_integer(v->ports[role]));
	}
	json_object_set_new(o, "id", jstr(v->id));
	json_object_set_new(o, "app", jstr(v->app));
	json_object_set_new(o, "tenant", jstr(v->tenant));
	json_object_set_new(o, "pool", jstr(v->pool));
	json_object_set_new(o, "route", jstr(v->route));
	json_object_set_new(o, "host", jstr(v->host));
	json_object_set_new(o, "ports", ports);
	json_object_set_new(o, "attached", json_boolean(v->attached));
	json_object_set_new(o, "tunnels", json_integer((json_int_t)v->ntunnels));
	json_object_set_new(o, "peer", jstr(v->peer));
	json_object_set_new(o, "pending", json_integer(v->npending));
	json_object_set_new(o, "conns_active", json_integer((json_int_t)v->conns_active));
	json_object_set_new(o, "conns_total", json_integer((json_int_t)v->conns_total));
	json_object_set_new(o, "driver_refused", json_integer((json_int_t)v->driver_refused));
	json_object_set_new(o, "detached_ms", json_integer((json_int_t)v->detached_ms));
	json_object_set_new(o, "expires_in_ms", v->expires_in_ms < 0
							? json_null()
							: json_integer((json_int_t)v->expires_in_ms));
	json_object_set_new(o, "resumption", resume_json(&v->resume, v->away_ms));
	json_array_append_new(arr, o);
}

static void h_sessions(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *arr = json_array();

	if (arr)
		relay_foreach_session(a->relay, session_to_json, arr);
	sr_http_reply_json(req, 200, arr);
}

static void h_leases(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *arr = json_array();

	if (arr)
		relay_foreach_lease(a->relay, lease_to_json, arr);
	sr_http_reply_json(req, 200, arr);
}

/* DELETE /v1/leases/<id> */
static void h_revoke(struct relay_admin *a, struct evhttp_request *req, const char *id)
{
	int rv;

	if (!*id || strchr(id, '/')) {
		sr_http_reply_error(req, 404, "no such lease");
		return;
	}
	rv = relay_revoke_lease(a->relay, id);
	if (rv == SR_ENOTFOUND) {
		sr_http_reply_error(req, 404, "no such lease");
		return;
	}
	if (rv == SR_EBUSY) {
		sr_http_reply_error(req, 503, "a handover to a new relay is under way");
		return;
	}
	if (rv != 0) {
		sr_http_reply_error(req, 500, sr_strerror(rv));
		return;
	}
	SR_INFO(a->api.ctx, "lease=%s revoked", id);
	sr_http_reply_json(req, 200, json_pack("{s:s,s:s}", "result", "revoked", "lease", id));
}

/* ---- /v1/config /v1/reload /v1/drain -------------------------------- */

static void h_config(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	json_t *j;

	if (!a->cbs.config_json) {
		sr_http_reply_error(req, 501, "this relay cannot show its configuration");
		return;
	}
	j = a->cbs.config_json(a->cb_arg);
	if (!j) {
		sr_http_reply_error(req, 500, "cannot render the configuration");
		return;
	}
	sr_http_reply_json(req, 200, j);
}

static void h_reload(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	char err[1024] = "";
	int rv;

	if (!a->cbs.reload) {
		sr_http_reply_error(req, 501, "this relay cannot reload its configuration");
		return;
	}
	rv = a->cbs.reload(a->cb_arg, err, sizeof(err));
	/* The callback logs the outcome (it also serves SIGHUP). */
	if (rv != 0) {
		sr_http_reply_error(req, 400, err[0] ? err : sr_strerror(rv));
		return;
	}
	sr_http_reply_json(req, 200, json_pack("{s:s}", "result", "ok"));
}

static void admin_start_drain(struct relay_admin *a)
{
	struct relay_stats st;

	evtimer_del(a->drain_ev);
	relay_get_stats(a->relay, &st);
	if (!st.draining)
		relay_drain(a->relay);
}

static void on_drain_timer(evutil_socket_t fd, short what, void *arg)
{
	admin_start_drain(arg);
}

static void on_drain_reply_sent(struct evhttp_request *req, void *arg)
{
	admin_start_drain(arg);
}

static void h_drain(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct relay_stats st;
	struct timeval tv = sr_tv_ms(ADMIN_DRAIN_FALLBACK_MS);

	relay_get_stats(a->relay, &st);
	if (!st.draining) {
		SR_INFO(a->api.ctx, "drain requested over the admin API");
		evhttp_request_set_on_complete_cb(req, on_drain_reply_sent, a);
		evtimer_add(a->drain_ev, &tv);
	}
	sr_http_reply_json(req, 200, json_pack("{s:s}", "result", "draining"));
}

/* ---- /v1/route/explain --------------------------------------------- */

/* A string member of o or NULL; -1 if present with another type. */
static int opt_string(json_t *o, const char *key, const char **out)
{
	json_t *v = json_object_get(o, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -1;
	*out = json_string_value(v);
	return 0;
}

/* Whether the client asked for JSON (ctl does; curl gets the text). */
static int wants_json(struct evhttp_request *req)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Accept");

	return h && strstr(h, "application/json") != NULL;
}

static void h_explain(struct relay_admin *a, struct evhttp_request *req, const char *tail)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in), nsans = 0;
	const char *sans[TUN_EP_MAX_SANS];
	struct relay_identity id;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	const char *cn, *token, *app, *addr;
	char msg[256];
	json_error_t jerr;
	char near[SR_ESC_SIZE(60)];
	json_t *body, *jsans, *res = NULL;

	/* evhttp already refused bodies over RELAY_ADMIN_MAX_BODY. */
	body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (!body || !json_is_object(body)) {
		snprintf(msg, sizeof(msg),
			 "body must be a JSON object {\"cn\",\"sans\",\"token\",\"app\","
			 "\"addr\"}%s%s",
			 body ? "" : ": ",
			 body ? "" : sr_mask_n(jerr.text, 60, near, sizeof(near)));
		sr_http_reply_error(req, 400, msg);
		goto out;
	}
	if (opt_string(body, "cn", &cn) || opt_string(body, "token", &token) ||
	    opt_string(body, "app", &app) || opt_string(body, "addr", &addr)) {
		sr_http_reply_error(req, 400, "cn, token, app and addr must be strings");
		goto out;
	}
	jsans = json_object_get(body, "sans");
	if (jsans && !json_is_null(jsans)) {
		size_t i;
		json_t *v;
		if (!json_is_array(jsans) || json_array_size(jsans) > TUN_EP_MAX_SANS) {
			snprintf(msg, sizeof(msg), "sans must be an array of at most %d strings",
				 TUN_EP_MAX_SANS);
			sr_http_reply_error(req, 400, msg);
			goto out;
		}
		json_array_foreach(jsans, i, v)
		{
			if (!json_is_string(v)) {
				sr_http_reply_error(req, 400, "sans must be strings");
				goto out;
			}
			sans[nsans++] = json_string_value(v);
		}
	}
	memset(&id, 0, sizeof(id));
	id.cn = cn;
	id.sans = sans;
	id.nsans = nsans;
	id.token = token;
	if (addr && *addr) {
		if (sr_parse_addr(addr, 0, &ss, &sslen) != 0) {
			char q[SR_ESC_SIZE(64)];

			snprintf(msg, sizeof(msg),
				 "addr: not a numeric IPv4 or IPv6 address: \"%s\"",
				 sr_mask_n(addr, 64, q, sizeof(q)));
			sr_http_reply_error(req, 400, msg);
			goto out;
		}
		id.addr = (const struct sockaddr *)&ss;
	}
	res = relay_explain_json(relay_get_policy(a->relay), &id, app);
	if (!res) {
		sr_http_reply_error(req, 500, "cannot explain");
		goto out;
	}
	if (wants_json(req)) {
		sr_http_reply_json(req, 200, res);
		res = NULL;
	} else {
		const char *text = json_string_value(json_object_get(res, "explanation"));
		size_t n = text ? strlen(text) : 0;
		struct evbuffer *b = evbuffer_new();
		if (!b) {
			evhttp_send_error(req, 500, NULL);
			goto out;
		}
		evbuffer_add(b, text ? text : "", n);
		if (n && text[n - 1] != '\n')
			evbuffer_add(b, "\n", 1);
		sr_http_reply(req, 200, "text/plain; charset=utf-8", b);
		evbuffer_free(b);
	}
out:
	json_decref(res);
	json_decref(body);
}

/* ---- routing and auth ----------------------------------------------- */

static const struct admin_route admin_routes[] = {
    {"/healthz", 0, AM_GET, 1, h_healthz},   {"/readyz", 0, AM_GET, 1, h_readyz},
    {"/metrics", 0, AM_GET, 0, h_metrics},   {"/v1/sessions", 0, AM_GET, 0, h_sessions},
    {"/v1/leases", 0, AM_GET, 0, h_leases},  {"/v1/leases/", 1, AM_DELETE, 0, h_revoke},
    {"/v1/config", 0, AM_GET, 0, h_config},  {"/v1/drain", 0, AM_POST, 0, h_drain},
    {"/v1/reload", 0, AM_POST, 0, h_reload}, {"/v1/route/explain", 0, AM_POST, 0, h_explain},
};

static const char *method_name(unsigned m)
{
	return m == AM_GET ? "GET, HEAD" : m == AM_POST ? "POST" : "DELETE";
}

/* Whether the request carries the configured bearer token. */
static int authorized(const struct relay_admin *a, struct evhttp_request *req)
{
	const char *h =
	    evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	unsigned char got[SHA256_DIGEST_LENGTH];

	if (!a->have_token)
		return 1;
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	while (*h == ' ')
		h++;
	SHA256((const unsigned char *)h, strlen(h), got);
	return CRYPTO_memcmp(got, a->token_sha, sizeof(got)) == 0;
}

static void admin_dispatch(struct evhttp_request *req, void *arg)
{
	struct relay_admin *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const struct admin_route *rt = NULL;
	unsigned m;

	if (!path || !*path)
		path = "/";
	for (size_t i = 0; i < SR_ARRAY_LEN(admin_routes); i++) {
		const struct admin_route *c = &admin_routes[i];
		size_t n = strlen(c->path);
		if (c->prefix ? strncmp(path, c->path, n) == 0 : strcmp(path, c->path) == 0) {
			rt = c;
			break;
		}
	}
	if (!rt) {
		sr_http_reply_error(req, 404, "no such endpoint");
		return;
	}
	if (!rt->open && !authorized(a, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
				  "Bearer realm=\"sparkrelay-admin\"");
		sr_http_reply_error(req, 401, "missing or wrong bearer token");
		return;
	}
	m = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD ? AM_GET
	    : cmd == EVHTTP_REQ_POST			    ? AM_POST
	    : cmd == EVHTTP_REQ_DELETE			    ? AM_DELETE
							    : 0;
	if (m != rt->method) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
				  method_name(rt->method));
		sr_http_reply_error(req, 405, "method not allowed");
		return;
	}
	rt->fn(a, req, rt->prefix ? path + strlen(rt->path) : NULL);
}

/* ---- lifecycle ------------------------------------------------------ */

struct relay_admin *relay_admin_new(struct event_base *base, struct relay *r,
				    const char *listen, const char *token,
				    const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				    size_t errlen)
{
	return relay_admin_new_fd(base, r, listen, -1, token, cbs, cb_arg, err, errlen);
}

struct relay_admin *relay_admin_new_fd(struct event_base *base, struct relay *r,
				       const char *listen, int fd, const char *token,
				       const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				       size_t errlen)
{
	const struct relay_opts *o = relay_get_opts(r);
	struct sr_http_opts ho = {
	    .name = "admin",
	    .listen = listen,
	    .max_headers = RELAY_ADMIN_MAX_HEADERS,
	    .max_body = RELAY_ADMIN_MAX_BODY,
	    .max_conns = o->admin_max_conns,
	    .deadline_ms = o->admin_request_timeout_ms,
	    .loopback_only = token && *token ? NULL
					     : "set relay.admin.token (every request must "
					       "then carry it)",
	    .handler = admin_dispatch,
	    .adopt = fd >= 0,
	    .fd = fd,
	};
	struct relay_admin *a = calloc(1, sizeof(*a));

	if (!a) {
		if (fd >= 0)
			close(fd);
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	a->base = base;
	a->relay = r;
	a->cb_arg = cb_arg;
	if (cbs)
		a->cbs = *cbs;
	if (token && *token) {
		a->have_token = 1;
		SHA256((const unsigned char *)token, strlen(token), a->token_sha);
	}
	a->drain_ev = evtimer_new(base, on_drain_timer, a);
	if (!a->drain_ev) {
		if (fd >= 0)
			close(fd);
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	ho.arg = a;
	if (sr_http_init(&a->api, base, &ho, err, errlen) != 0)
		goto fail;
	SR_INFO(a->api.ctx,
		"admin API listening%s; at most %u connections, each closed after %u ms",
		a->have_token ? " (token required)" : "", o->admin_max_conns,
		o->admin_request_timeout_ms);
	return a;
fail:
	relay_admin_free(a);
	return NULL;
}

void relay_admin_free(struct relay_admin *a)
{
	if (!a)
		return;
	if (a->metrics)
		a->metrics->admin = NULL;
	sr_http_fini(&a->api);
	if (a->drain_ev)
		event_free(a->drain_ev);
	OPENSSL_cleanse(a->token_sha, sizeof(a->token_sha));
	free(a);
}

uint16_t relay_admin_port(const struct relay_admin *a)
{
	return a->api.port;
}

int relay_admin_listen_fd(const struct relay_admin *a)
{
	return a->api.sock ? evhttp_bound_socket_get_fd(a->api.sock) : -1;
}

/* ---- the read-only metrics listener ----------------------------------- */

static void metrics_dispatch(struct evhttp_request *req, void *arg)
{
	struct relay_metrics *m = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	if (!path)
		path = "";
	if (strcmp(path, "/metrics") != 0 && strcmp(path, "/healthz") != 0 &&
	    strcmp(path, "/readyz") != 0) {
		sr_http_reply_error(req, 404, "no such endpoint (this listener serves /metrics, "
					      "/healthz and /readyz)");
		return;
	}
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		sr_http_reply_error(req, 405, "method not allowed");
		return;
	}
	if (strcmp(path, "/metrics") == 0)
		reply_metrics(m->relay, m->admin, m, req);
	else if (strcmp(path, "/healthz") == 0)
		h_healthz(NULL, req, NULL);
	else
		readyz(m->relay, req);
}

struct relay_metrics *relay_metrics_new(struct event_base *base, struct relay *r,
					struct relay_admin *admin, const char *listen, char *err,
					size_t errlen)
{
	struct relay_metrics *m = calloc(1, sizeof(*m));
	struct sr_http_opts ho = {
	    .name = "metrics",
	    .listen = listen,
	    .max_headers = METRICS_MAX_HEADERS,
	    .max_body = METRICS_MAX_BODY,
	    .max_conns = METRICS_MAX_CONNS,
	    .deadline_ms = METRICS_DEADLINE_MS,
	    .handler = metrics_dispatch,
	    .arg = m,
	};

	if (!m) {
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	m->relay = r;
	if (sr_http_init(&m->api, base, &ho, err, errlen) != 0) {
		free(m);
		return NULL;
	}
	if (admin) {
		m->admin = admin;
		admin->metrics = m;
	}
	SR_INFO(m->api.ctx, "metrics listening (GET /metrics, /healthz, /readyz; no token: "
			    "read-only)");
	return m;
}

void relay_metrics_free(struct relay_metrics *m)
{
	if (!m)
		return;
	if (m->admin)
		m->admin->metrics = NULL;
	sr_http_fini(&m->api);
	free(m);
}

uint16_t relay_metrics_port(const struct relay_metrics *m)
{
	return m->api.port;
}
