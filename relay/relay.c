/* The relay role: the object that holds the tunnel listener, the tunnels,
 * the policy and the pools; drain, reload and counters. The work itself is
 * in the files listed in relay_int.h. */
#include "relay/relay_int.h"
#include "relay/relay_fleet.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "tunnel/tun_tls.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include <event2/event.h>
#include <event2/listener.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/x509.h>

/* The tunnel listener stops this long after accept() fails (EMFILE...). */
#define ACCEPT_PAUSE_MS 500
/* While draining, how often the relay looks whether every stream is done. */
#define DRAIN_CHECK_MS 100

const uint64_t relay_hist_bounds_us[RELAY_HIST_BUCKETS - 1] = {
	100,      250,      500,       1000,      2500,      5000,      10000,
	25000,    50000,    100000,    250000,    500000,    1000000,   2500000,
	5000000,  10000000, 30000000,  60000000,  120000000, 300000000, 600000000,
};

/* For timestamps shown to people and Prometheus (the loop's clock is
 * monotonic). */
static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void relay_hist_add(struct relay_hist *h, uint64_t us)
{
	size_t i = 0;
	while (i < RELAY_HIST_BUCKETS - 1 && us > relay_hist_bounds_us[i])
		i++;
	h->count[i]++;
	h->sum_us += us;
	h->n++;
}

const char *relay_refusal_name(enum relay_refusal r)
{
	static const char *const names[RELAY_REFUSE_MAX] = {
		"cidr", "pending_full", "pending_timeout", "draining", "tenant_limit",
		"stream", "reg_auth", "reg_route", "reg_limit", "reg_resume",
		"handshake_limit", "handshake_source_limit", "tunnel_limit",
		"lease_connection_limit", "driver", "no_ports",
	};
	return (unsigned)r < RELAY_REFUSE_MAX ? names[r] : "unknown";
}

const char *relay_log_word(const char *s, char *buf, size_t len)
{
	char esc[SR_ESC_SIZE(64)];

	sr_esc_n(s, 64, esc, sizeof(esc));
	if (!esc[0] || strpbrk(esc, " ="))
		snprintf(buf, len, "\"%s\"", esc);
	else
		snprintf(buf, len, "%s", esc);
	return buf;
}

void relay_refuse(struct relay *r, enum relay_refusal why)
{
	r->st.refused[why]++;
	if (why < RELAY_REFUSE_REG_AUTH || why == RELAY_REFUSE_LEASE_CONNS ||
	    why == RELAY_REFUSE_DRIVER)
		r->st.executor_refused++;
}

void relay_refuse_at(struct relay *r, enum relay_refusal why, const char *tenant,
		     const char *pool)
{
	struct relay_refusal_key *k;

	relay_refuse(r, why);
	tenant = tenant ? tenant : "";
	pool = pool ? pool : "";
	for (k = r->refusal_keys; k; k = k->next)
		if (strcmp(k->tenant, tenant) == 0 && strcmp(k->pool, pool) == 0)
			break;
	if (!k && r->nrefusal_keys < RELAY_REFUSAL_KEYS_MAX && (k = calloc(1, sizeof(*k)))) {
		snprintf(k->tenant, sizeof(k->tenant), "%s", tenant);
		snprintf(k->pool, sizeof(k->pool), "%s", pool);
		k->next = r->refusal_keys;
		r->refusal_keys = k;
		r->nrefusal_keys++;
	}
	if (k)
		k->n[why]++;
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;

	if (!r->draining && evconnlistener_enable(r->listener) != 0) {
		struct timeval tv = sr_tv_ms(ACCEPT_PAUSE_MS);

		SR_WARN("", "cannot accept sidecars: out of memory; trying again in %d ms",
			ACCEPT_PAUSE_MS);
		evtimer_add(r->accept_pause, &tv);
	}
}

/* accept() failed for a reason other than a peer that went away, typically
 * EMFILE or ENFILE. The connection stays in the backlog, so an armed
 * listener would wake again at once and spin: stop it for a moment, as the
 * lease ports do. A lasting shortage logs one line per REFUSAL_LOG_PERIOD. */
static void listener_error_cb(struct evconnlistener *lst, void *arg)
{
	struct relay *r = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = sr_tv_ms(ACCEPT_PAUSE_MS);
	uint64_t more = 0;

	r->st.accept_errors++;
	evconnlistener_disable(lst);
	evtimer_add(r->accept_pause, &tv);
	if (sr_ratelog_allow(&r->rl_accept_err, sr_now_us(), REFUSAL_LOG_PERIOD_US, &more))
		SR_ERROR("", "tunnel listener: accept failed: %s; pausing it %d ms (%llu more "
			     "failures since the last line)",
			 evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS,
			 (unsigned long long)more);
}

static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;
	size_t streams = 0, carried;

	for (struct relay_tunnel *t = r->tunnels; t; t = t->next)
		streams += t->conn ? tun_conn_nstreams(t->conn) : 0;
	/* Executor connections carried to other relays have the same time to
	 * finish (the fleet chaos test saw them reset 0.1 s after SIGTERM). */
	carried = r->fleet ? relay_fleet_carrying(r->fleet) : 0;
	if (streams + carried == 0 && r->fleet && relay_fleet_withdrawing(r->fleet) &&
	    sr_now_us() < r->drain_deadline_us)
		return; /* other relays must learn first that this one is gone */
	if (streams + carried == 0) {
		SR_INFO("", "drained: no open streams; exiting");
		event_base_loopbreak(r->base);
		return;
	}
	if (sr_now_us() >= r->drain_deadline_us) {
		SR_WARN("",
			"drain timeout: %zu streams and %zu connections carried to other "
			"relays still open are reset",
			streams, carried);
		event_base_loopbreak(r->base);
	}
}

void relay_drain(struct relay *r)
{
	struct timeval tv = sr_tv_ms(DRAIN_CHECK_MS);
	struct tun_ctl_msg m;

	if (r->draining)
		return;
	if (relay_handover_busy(r)) {
		/* Frozen for a handover: draining now would reset what the new
		 * process may be taking. Done if the handover is abandoned. */
		SR_INFO("", "drain requested during a handover: done if the handover fails");
		r->drain_wanted = 1;
		return;
	}
	r->draining = 1;
	r->drain_deadline_us = sr_now_us() + (uint64_t)r->o->drain_timeout_ms * 1000u;
	SR_INFO("", "draining: no new tunnels, leases or executor connections; open streams "
		    "have %u ms to finish",
		r->o->drain_timeout_ms);
	evconnlistener_disable(r->listener);
	if (r->fleet)
		relay_fleet_drain(r->fleet);
	/* Lease ports keep accepting so that relay_exec_on_accept resets each new
	 * connection at once; a disabled listener would leave executors
	 * hanging in the kernel's backlog until the relay exits. */
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_DRAIN;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		if (!t->conn)
			continue;
		tun_conn_send_ctl(t->conn, &m);
		tun_conn_goaway(t->conn);
	}
	event_add(r->drain_timer, &tv);
	drain_check_cb(-1, 0, r);
}

/* The tunnel listener's TLS context from o's files. */
static SSL_CTX *tls_ctx(const struct relay_opts *o, char *err, size_t errlen)
{
	return tun_tls_server_ctx(o->cert_file, o->key_file, o->client_ca_file,
				  o->require_client_cert, err, errlen);
}

/* When the certificate of ctx expires, seconds since the Unix epoch; 0 if
 * unknown. */
static int64_t cert_not_after(SSL_CTX *ctx)
{
	X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
	struct tm tm;

	if (!x || ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

/* A reload's TLS context in force for new tunnels (those up keep theirs);
 * a new certificate is logged with its subject and end of validity. */
static void tls_swap(struct relay *r, SSL_CTX *ctx)
{
	X509 *x = SSL_CTX_get0_certificate(ctx), *old = SSL_CTX_get0_certificate(r->ssl_ctx);
	char subj[256] = "", esc[SR_ESC_SIZE(255)], until[64] = "", uesc[SR_ESC_SIZE(63)];
	BIO *b;

	if (x && (!old || X509_cmp(old, x) != 0)) {
		X509_NAME_oneline(X509_get_subject_name(x), subj, sizeof(subj));
		if ((b = BIO_new(BIO_s_mem())) != NULL) {
			int n = ASN1_TIME_print(b, X509_get0_notAfter(x)) == 1
				    ? BIO_read(b, until, (int)sizeof(until) - 1)
				    : 0;
			until[n > 0 ? n : 0] = '\0';
			BIO_free(b);
		}
		SR_INFO("",
			"relay.tls.cert: a new certificate for new tunnels (%s, valid until "
			"%s); tunnels up keep theirs",
			sr_esc(subj, esc, sizeof(esc)),
			until[0] ? sr_esc(until, uesc, sizeof(uesc)) : "?");
	}
	SSL_CTX_free(r->ssl_ctx);
	r->ssl_ctx = ctx;
}

struct relay *relay_new(struct event_base *base, struct relay_opts *o, char *err,
			size_t errlen)
{
	return relay_new_adopt(base, o, NULL, err, errlen);
}

struct relay *relay_new_adopt(struct event_base *base, struct relay_opts *o,
			      const struct relay_adopt *ad, char *err, size_t errlen)
{
	struct relay *r = calloc(1, sizeof(*r));
	int lfd = ad ? ad->listen_fd : -1, hfd = ad ? ad->handover_fd : -1;
	int pfd = ad ? ad->peer_fd : -1;
	int adopted = lfd >= 0; /* its listener accepts once the takeover commits */
	struct sockaddr_storage ss;
	socklen_t sslen;
	char host[256];
	uint16_t port;
	struct timeval gc = {1, 0};

	if (!r) {
		sr_seterr(err, errlen, "out of memory");
		goto fail_fds;
	}
	r->base = base;
	r->o = o; /* relay_reload() replaces its content in place */
	if (!o->listen || sr_split_hostport(o->listen, host, sizeof(host), &port, 8443) != 0 ||
	    sr_parse_addr(host, port, &ss, &sslen) != 0) {
		sr_seterr(err, errlen, "listen address \"%s\" must be a numeric host:port",
			  o->listen ? o->listen : "");
		goto fail;
	}
	r->ssl_ctx = tls_ctx(o, err, errlen);
	if (!r->ssl_ctx)
		goto fail;
	r->pol = calloc(1, sizeof(*r->pol));
	if (!r->pol) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	r->pol->refs = 1;
	r->pol->implicit_tenants = o->policy.ntenants == 0;
	r->pol->p = relay_policy_new(&o->policy, &o->pool, err, errlen);
	if (!r->pol->p || relay_pools_check_bind(r->pol->p, err, errlen) != 0)
		goto fail;
	if (relay_pools_sync(r, r->pol->p) != 0) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	r->drain_timer = event_new(base, -1, EV_PERSIST, drain_check_cb, r);
	r->gc_timer = event_new(base, -1, EV_PERSIST, relay_pools_gc_cb, r);
	r->accept_pause = evtimer_new(base, accept_resume_cb, r);
	if (!r->drain_timer || !r->gc_timer || !r->accept_pause) {
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	event_add(r->gc_timer, &gc);
	if (lfd >= 0) {
		/* Taken over from the relay that made it (backlog 0: it listens
		 * already); it accepts once the takeover commits. */
		r->listener = evconnlistener_new(base, relay_tunnel_accept, r,
						 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
							 LEV_OPT_DISABLED,
						 0, lfd);
		if (!r->listener) {
			sr_seterr(err, errlen, "out of memory");
			goto fail;
		}
		lfd = -1;
	} else {
		/* Made disabled and enabled below: libevent enables it itself but
		 * ignores a failed event_add, leaving a socket that never accepts. */
		r->listener = evconnlistener_new_bind(base, relay_tunnel_accept, r,
						      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
							      LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
						      1024, (struct sockaddr *)&ss, (int)sslen);
	}
	if (!r->listener) {
		sr_seterr(err, errlen, "cannot listen on %s: %s", o->listen, strerror(errno));
		goto fail;
	}
	evconnlistener_set_error_cb(r->listener, listener_error_cb);
	if (!adopted && evconnlistener_enable(r->listener) != 0) {
		sr_seterr(err, errlen, "cannot accept on %s: out of memory", o->listen);
		goto fail;
	}
	if (relay_handover_start(r, hfd, err, errlen) != 0) {
		hfd = -1;
		goto fail;
	}
	hfd = -1;
	if (o->fleet.netcd) {
		r->fleet = relay_fleet_new(r, pfd, ad != NULL, err, errlen); /* steals pfd */
		pfd = -1;
		if (!r->fleet)
			goto fail;
	}
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		SR_INFO("", "pool %s: executor ports %u-%u on %s, advertised as %s", pr->name,
			pr->opts.port_min, pr->opts.port_max,
			pr->opts.bind_address ? pr->opts.bind_address : "0.0.0.0",
			pr->opts.advertise_host ? pr->opts.advertise_host
						: (pr->opts.bind_address ? pr->opts.bind_address
									 : "0.0.0.0"));
	SR_INFO("", "%s sidecars on %s", ad ? "taking over the listener for" : "listening for",
		o->listen);
	r->st.ready = 1;
	r->st.last_reload_ok = 1;
	r->st.last_reload_ok_unix_ms = wall_ms();
	return r;
fail:
	relay_free(r);
fail_fds:
	if (lfd >= 0)
		close(lfd);
	if (hfd >= 0)
		close(hfd);
	if (pfd >= 0)
		close(pfd);
	return NULL;
}

static void lease_drop(struct relay_lease *l, void *arg)
{
	struct relay_lease_ext *lx = relay_lease_data(l);
	if (lx) {
		relay_lease_set_data(l, NULL);
		relay_lease_ext_free(lx);
	}
}

void relay_free(struct relay *r)
{
	if (!r)
		return;
	/* First: its callbacks reach into tunnels and leases. */
	relay_fleet_free(r->fleet);
	r->fleet = NULL;
	relay_handover_free(r);
	while (r->tunnels) {
		struct relay_tunnel *t = r->tunnels;
		relay_tunnel_unlink_lease(t);
		relay_tunnel_free(t);
	}
	while (r->pools) {
		struct relay_pool_rt *pr = r->pools;
		r->pools = pr->next;
		relay_lease_foreach(pr->t, lease_drop, NULL);
		relay_pool_free(pr);
	}
	relay_pol_unref(r->pol);
	if (r->listener)
		evconnlistener_free(r->listener);
	if (r->drain_timer)
		event_free(r->drain_timer);
	if (r->gc_timer)
		event_free(r->gc_timer);
	if (r->accept_pause)
		event_free(r->accept_pause);
	SSL_CTX_free(r->ssl_ctx);
	while (r->refusal_keys) {
		struct relay_refusal_key *k = r->refusal_keys;
		r->refusal_keys = k->next;
		free(k);
	}
	free(r);
}

/* Settings a reload cannot change: the listeners are bound once per
 * process (the TLS files, though, are read again: relay_reload). The new
 * options keep the running values (swapped, each string still owned once),
 * so that r->o always says what this process uses: a takeover is refused
 * unless its relay.listen is the listener passed on, and the fleet
 * advertises relay.listen to the other relays. */
static void keep_restart_only(struct relay_opts *run, struct relay_opts *o)
{
	static const struct {
		const char *name;
		size_t off;
	} strs[] = {
	    {"relay.listen", offsetof(struct relay_opts, listen)},
	    {"relay.admin.listen", offsetof(struct relay_opts, admin_listen)},
	    {"relay.metrics.listen", offsetof(struct relay_opts, metrics_listen)},
	};
	char names[256] = "";
	size_t n = 0;

	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
		char **a = (char **)((char *)run + strs[i].off);
		char **b = (char **)((char *)o + strs[i].off);
		char *t = *a;

		if (!relay_str_eq(*a, *b) && n < sizeof(names))
			n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", n ? ", " : "",
					      strs[i].name);
		*a = *b;
		*b = t;
	}
	if (n)
		SR_WARN("", "reload: %s changed; the running value stays until the next restart "
			    "or takeover",
			names);
}

int relay_reload(struct relay *r, struct relay_opts *o, char *err, size_t errlen)
{
	struct relay_pol *np = NULL;
	struct relay_opts tmp;
	int rc = SR_EINVAL;
	/* Read again, so that a certificate renewed in place (a Kubernetes
	 * Secret) is used by the tunnels that come next. Before the pools
	 * change: a bad pair refuses the whole reload. */
	SSL_CTX *ctx = tls_ctx(o, err, errlen);

	if (!ctx)
		goto fail;
	np = calloc(1, sizeof(*np));
	if (!np) {
		rc = SR_ENOMEM;
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	np->refs = 1;
	np->implicit_tenants = o->policy.ntenants == 0;
	np->p = relay_policy_new(&o->policy, &o->pool, err, errlen);
	if (!np->p || relay_pools_check_bind(np->p, err, errlen) != 0)
		goto fail;
	if (relay_pools_sync(r, np->p) != 0) {
		rc = SR_ENOMEM;
		sr_seterr(err, errlen, "out of memory");
		goto fail;
	}
	keep_restart_only(r->o, o);
	tls_swap(r, ctx);
	relay_pol_unref(r->pol);
	r->pol = np;
	tmp = *r->o;
	*r->o = *o;
	*o = tmp;
	r->st.reloads_ok++;
	r->st.last_reload_ok = 1;
	r->st.last_reload_ok_unix_ms = wall_ms();
	SR_INFO("", "configuration reloaded: %zu pool%s; live tunnels and streams untouched",
		relay_policy_npools(np->p), relay_policy_npools(np->p) == 1 ? "" : "s");
	relay_fleet_reloaded(r->fleet);
	return 0;
fail:
	relay_pol_unref(np);
	SSL_CTX_free(ctx);
	relay_count_reload_failure(r);
	return rc;
}

void relay_count_reload_failure(struct relay *r)
{
	r->st.reloads_failed++;
	r->st.last_reload_ok = 0;
}

void relay_count_auto_reload(struct relay *r, int ok)
{
	if (ok)
		r->st.auto_reloads_ok++;
	else
		r->st.auto_reloads_failed++;
}

const struct relay_opts *relay_get_opts(const struct relay *r)
{
	return r->o;
}

const struct relay_policy *relay_get_policy(const struct relay *r)
{
	return r->pol->p;
}

uint16_t relay_listen_port(const struct relay *r)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(evconnlistener_get_fd(r->listener), (struct sockaddr *)&ss, &len) != 0)
		return 0;
	return sr_addr_port((struct sockaddr *)&ss);
}

void relay_get_stats(const struct relay *r, struct relay_stats *st)
{
	*st = r->st;
	st->tls_cert_not_after = cert_not_after(r->ssl_ctx);
	st->leases_active = 0;
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next)
		st->leases_active += relay_lease_count(pr->t);
	st->streams_active = 0;
	st->bytes_to_sidecar = r->closed_bytes_in;
	st->bytes_to_executor = r->closed_bytes_out;
	st->streams_opened = r->closed_streams_opened;
	st->handshakes_active = r->st.tunnels_active - r->nregistered;
	st->executor_buffered = 0;
	st->buffer_throttled = r->closed_throttled;
	for (struct relay_tunnel *t = r->tunnels; t; t = t->next) {
		struct tun_conn_stats ts;
		if (!t->conn)
			continue;
		tun_conn_get_stats(t->conn, &ts);
		st->executor_buffered += ts.sock_in_buffered;
		st->buffer_throttled += ts.sock_in_throttled;
		st->streams_active += ts.streams_active;
		st->bytes_to_sidecar += ts.bytes_to_tunnel;
		st->bytes_to_executor += ts.bytes_from_tunnel;
		st->streams_opened += ts.streams_opened;
	}
	st->draining = r->draining;
	if (r->fleet)
		relay_fleet_stats(r->fleet, st);
	/* A fleet relay that has not joined yet cannot grant a lease (nor
	 * tell the others that it holds a tunnel): not ready, so discovery
	 * leaves it out. Once joined it stays ready through an etcd outage:
	 * its tunnels and streams go on, and every relay would lose etcd at
	 * once. */
	st->ready = r->st.ready && !r->draining && (!st->fleet || st->fleet_joined);
}
