/* Relay discovery: entries, the answers of SRV and k8s sources, lookups.
 *
 *   disc_lookup -> host:port entries: disc_resolve, every time
 *               -> srv:/k8s: entries: the source's answer, or a refresh
 *                  (disc_srv + disc_resolve of the targets, or disc_k8s)
 *               -> all in: the list, in entry order (fire_cb)
 *
 * A source has at most one refresh under way, which every lookup that
 * needs it waits for; a refresh that fails leaves the last answer in place
 * while it is younger than stale_s. */
#include "discovery/disc.h"
#include "common/sr_curl.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "discovery/disc_srv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/dns.h>
#include <event2/event.h>

#define DEFAULT_TIMEOUT_MS 5000
#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount/"
#define URL_MAX 4200

struct disc_src {
	struct disc *d;
	size_t idx;
	struct disc_target t;
	const char *entry; /* as configured, for logs */
	/* the last answer */
	int have;
	uint64_t got_us, fresh_us;
	size_t nrec;			       /* SRV: records kept; K8S: 0 */
	struct disc_srv_rec rec[DISC_SRV_MAX]; /* SRV: rec[i] has eps[first[i]..+count[i]] */
	size_t first[DISC_SRV_MAX], count[DISC_SRV_MAX];
	struct disc_ep *eps;
	size_t neps;
	int failing; /* the last refresh failed */
	/* the refresh under way */
	int refreshing;
	struct disc_srv_query *q;
	struct disc_srv_answer *ans; /* while the targets are looked up */
	struct disc_req *rr;
	struct disc_k8s_req *k;
	char tls_name[DISC_TLS_NAME_MAX + 1]; /* of the answer being made */
};

struct slot {
	struct disc_lookup *l;
	struct disc_req *r;
	struct disc_addr *a;
	size_t n;
};

struct disc_lookup {
	struct disc *d;
	disc_cb cb;
	void *arg;
	struct slot *slot; /* one per entry; used by host:port entries */
	unsigned pending;
	uint64_t waits; /* bit idx: waiting for source idx's refresh */
	struct event *fire;
	struct disc_lookup *prev, *next;
};

struct disc {
	struct event_base *base;
	const struct disc_opts *o;
	struct evdns_base *dns;
	struct sr_curl *curl;
	int curl_global;
	char api_server[URL_MAX];
	char *const *targets;
	size_t n;
	struct disc_src **src; /* NULL for host:port entries */
	struct disc_lookup *lookups;
};

/* ---- entries ------------------------------------------------------------ */

int disc_target_parse(const char *s, struct disc_target *t, char *err, size_t errlen)
{
	char esc[SR_ESC_SIZE(64)];
	char host[256];
	uint16_t port;

	memset(t, 0, sizeof(*t));
	if (strncmp(s, "srv:", 4) == 0) {
		const char *name = s + 4, *dom;
		size_t n;

		/* _SERVICE._PROTO.DOMAIN: the domain is what the relay
		 * certificate must name */
		dom = name[0] == '_' ? strchr(name, '.') : NULL;
		dom = dom && dom[1] == '_' ? strchr(dom + 1, '.') : NULL;
		if (!disc_dns_name_ok(name) || !dom || !dom[1] || dom[1] == '.') {
			sr_seterr(err, errlen,
				  "bad relay entry \"%s\" (want srv:_SERVICE._tcp.DOMAIN)",
				  sr_esc_n(s, 64, esc, sizeof(esc)));
			return SR_EINVAL;
		}
		t->kind = DISC_SRV;
		n = strlen(name);
		if (name[n - 1] == '.')
			n--;
		for (size_t i = 0; i < n; i++)
			t->name[i] =
			    (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
		t->name[n] = '\0';
		snprintf(t->tls_name, sizeof(t->tls_name), "%s", t->name + (dom + 1 - name));
		if (!sr_valid_host(t->tls_name)) {
			sr_seterr(err, errlen,
				  "bad relay entry \"%s\" (its DOMAIN is not a host name)",
				  sr_esc_n(s, 64, esc, sizeof(esc)));
			return SR_EINVAL;
		}
		return 0;
	}
	if (strncmp(s, "k8s:", 4) == 0) {
		const char *p = s + 4, *slash = strchr(p, '/'), *colon;
		const char *svc = slash ? slash + 1 : p;
		size_t nl = slash ? (size_t)(slash - p) : 0, sl;

		colon = strchr(svc, ':');
		sl = colon ? (size_t)(colon - svc) : strlen(svc);
		if (nl < sizeof(t->ns) && sl < sizeof(t->service)) {
			memcpy(t->ns, p, nl);
			memcpy(t->service, svc, sl);
		}
		if (colon)
			snprintf(t->port_name, sizeof(t->port_name), "%s", colon + 1);
		if ((slash && !disc_k8s_name_ok(t->ns)) || !disc_k8s_name_ok(t->service) ||
		    (colon && (strlen(colon + 1) >= sizeof(t->port_name) ||
			       !disc_k8s_port_name_ok(t->port_name)))) {
			sr_seterr(
			    err, errlen,
			    "bad relay entry \"%s\" (want k8s:[NAMESPACE/]SERVICE[:PORTNAME] "
			    "with Kubernetes names)",
			    sr_esc_n(s, 64, esc, sizeof(esc)));
			memset(t, 0, sizeof(*t));
			return SR_EINVAL;
		}
		t->kind = DISC_K8S;
		if (t->ns[0])
			snprintf(t->tls_name, sizeof(t->tls_name), "%s.%s.svc", t->service,
				 t->ns);
		return 0;
	}
	if (sr_split_hostport(s, host, sizeof(host), &port, 0) != 0 || port == 0 ||
	    !sr_valid_host(host)) {
		sr_seterr(err, errlen,
			  "bad relay entry \"%s\" (want host:port with a port 1..65535, "
			  "srv:_SERVICE._tcp.DOMAIN or k8s:[NAMESPACE/]SERVICE[:PORTNAME])",
			  sr_esc_n(s, 64, esc, sizeof(esc)));
		return SR_EINVAL;
	}
	t->kind = DISC_HOSTPORT;
	return 0;
}

/* ---- sources ------------------------------------------------------------------ */

static void src_cancel_refresh(struct disc_src *s)
{
	disc_srv_query_cancel(s->q);
	disc_cancel(s->rr);
	disc_k8s_cancel(s->k);
	free(s->ans);
	s->q = NULL;
	s->rr = NULL;
	s->k = NULL;
	s->ans = NULL;
	s->refreshing = 0;
}

static void src_free(struct disc_src *s)
{
	if (!s)
		return;
	src_cancel_refresh(s);
	free(s->eps);
	free(s);
}

/* The refresh ended: the lookups waiting for it go on. */
static void src_done(struct disc_src *s)
{
	uint64_t bit = 1ull << s->idx;

	s->refreshing = 0;
	for (struct disc_lookup *l = s->d->lookups; l; l = l->next)
		if (l->waits & bit) {
			l->waits &= ~bit;
			if (--l->pending == 0)
				event_active(l->fire, EV_TIMEOUT, 0);
		}
}

static uint64_t secs_us(uint32_t s)
{
	return (uint64_t)s * 1000000u;
}

static void src_failed(struct disc_src *s, const char *why)
{
	const struct disc_opts *o = s->d->o;
	uint64_t now = sr_now_us(), age = s->have ? (now - s->got_us) / 1000000u : 0;

	s->failing = 1;
	if (s->have && now - s->got_us <= secs_us(o->stale_s)) {
		s->fresh_us = now + secs_us(o->cache_s);
		SR_WARN("",
			"relay discovery %s: %s; using its answer from %llu s ago (%zu "
			"address%s, kept up to %u s)",
			s->entry, why, (unsigned long long)age, s->neps,
			s->neps == 1 ? "" : "es", o->stale_s);
		return;
	}
	if (s->have)
		SR_WARN("",
			"relay discovery %s: %s; its last answer (%llu s ago) is older "
			"than %u s (tunnel.discovery.stale_s): dropped",
			s->entry, why, (unsigned long long)age, o->stale_s);
	else
		SR_WARN("", "relay discovery %s: %s", s->entry, why);
	s->have = 0;
	s->neps = s->nrec = 0;
	s->fresh_us = 0;
}

/* Take a new answer: eps (steals), grouped by rec for SRV. */
static void src_ok(struct disc_src *s, struct disc_ep *eps, size_t neps, uint32_t ttl_s,
		   const char *what)
{
	const struct disc_opts *o = s->d->o;
	uint64_t now = sr_now_us();
	uint32_t keep = o->cache_s < ttl_s ? o->cache_s : ttl_s;
	int changed = !s->have || s->neps != neps || s->failing;

	free(s->eps);
	s->eps = eps;
	s->neps = neps;
	s->have = 1;
	s->failing = 0;
	s->got_us = now;
	s->fresh_us = now + secs_us(keep);
	memcpy(s->t.tls_name, s->tls_name, sizeof(s->t.tls_name));
	if (changed && neps == 0)
		SR_WARN("", "relay discovery %s: no relay (%s)", s->entry, what);
	else if (changed)
		SR_INFO("", "relay discovery %s: %zu address%s (%s), TLS name %s", s->entry,
			neps, neps == 1 ? "" : "es", what, s->t.tls_name);
	else
		SR_DEBUG("", "relay discovery %s: %zu addresses (%s)", s->entry, neps, what);
}

static void srv_targets_cb(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct disc_src *s = arg;
	struct disc_srv_answer *ans = s->ans;
	struct disc_ep *eps = NULL;
	size_t k = 0;
	char what[96];

	s->rr = NULL;
	s->ans = NULL;
	if (err == SR_ENOMEM || (n && !(eps = calloc(n, sizeof(*eps))))) {
		src_failed(s, "out of memory");
		goto out;
	}
	if (n == 0) {
		snprintf(what, sizeof(what), "none of the %zu SRV targets has an address",
			 ans->n);
		src_failed(s, what);
		goto out;
	}
	/* disc_resolve keeps the order of the targets, each target's
	 * addresses together; match them to their record by name and port
	 * (records are distinct in both). */
	for (size_t i = 0; i < ans->n; i++) {
		s->rec[i] = ans->rec[i];
		s->first[i] = k;
		for (size_t j = 0; j < n; j++)
			if (strcmp(addrs[j].host, ans->rec[i].target) == 0 &&
			    sr_addr_port((const struct sockaddr *)&addrs[j].ss) ==
				ans->rec[i].port) {
				eps[k].ss = addrs[j].ss;
				eps[k].len = addrs[j].len;
				k++;
			}
		s->count[i] = k - s->first[i];
	}
	s->nrec = ans->n;
	snprintf(what, sizeof(what), "%zu SRV record%s", ans->n, ans->n == 1 ? "" : "s");
	src_ok(s, eps, k, ans->min_ttl, what);
out:
	free(ans);
	src_done(s);
}

static void srv_answer_cb(int err, const struct disc_srv_answer *ans, const char *msg,
			  void *arg)
{
	struct disc_src *s = arg;
	char why[320], *targets[DISC_SRV_MAX], tbuf[DISC_SRV_MAX][DISC_DNS_NAME_TEXT + 8];

	s->q = NULL;
	if (err != 0) {
		snprintf(why, sizeof(why), "SRV query failed: %s", msg);
		src_failed(s, why);
		src_done(s);
		return;
	}
	if (ans->skipped)
		SR_WARN("",
			"relay discovery %s: %u SRV record%s left out (a target that is not "
			"a host name, port 0, a duplicate, or over %d records)",
			s->entry, ans->skipped, ans->skipped == 1 ? "" : "s", DISC_SRV_MAX);
	if (ans->n == 0) {
		s->nrec = 0;
		src_ok(s, NULL, 0, ans->min_ttl,
		       ans->rcode == DISC_DNS_RCODE_NXDOMAIN ? "NXDOMAIN" : "no SRV record");
		src_done(s);
		return;
	}
	if (!(s->ans = malloc(sizeof(*s->ans)))) {
		src_failed(s, "out of memory");
		src_done(s);
		return;
	}
	*s->ans = *ans;
	for (size_t i = 0; i < ans->n; i++) {
		snprintf(tbuf[i], sizeof(tbuf[i]), "%s:%u", ans->rec[i].target,
			 ans->rec[i].port);
		targets[i] = tbuf[i];
	}
	s->rr = disc_resolve(s->d->base, s->d->dns, targets, ans->n, srv_targets_cb, s, why,
			     sizeof(why));
	if (!s->rr) {
		free(s->ans);
		s->ans = NULL;
		src_failed(s, why);
		src_done(s);
	}
}

static void k8s_cb(int err, const struct disc_ep *eps, size_t n, size_t ready, const char *msg,
		   void *arg)
{
	struct disc_src *s = arg;
	struct disc_ep *copy = NULL;
	char why[600];

	s->k = NULL;
	if (err != 0) {
		snprintf(why, sizeof(why), "listing EndpointSlices failed: %s", msg);
		src_failed(s, why);
	} else if (n && !(copy = malloc(n * sizeof(*copy)))) {
		src_failed(s, "out of memory");
	} else {
		if (n)
			memcpy(copy, eps, n * sizeof(*copy));
		snprintf(why, sizeof(why), "%zu Ready endpoint%s%s", ready,
			 ready == 1 ? "" : "s", ready > n ? ", a random sample kept" : "");
		s->nrec = 0;
		src_ok(s, copy, n, UINT32_MAX, why);
	}
	src_done(s);
}

/* Start a refresh. 0 when under way (src_done follows), else it failed at
 * once (and was logged). */
static int src_refresh(struct disc_src *s)
{
	struct disc *d = s->d;
	char err[320], why[400];
	uint32_t tmo = d->o->timeout_ms ? d->o->timeout_ms : DEFAULT_TIMEOUT_MS;

	s->refreshing = 1;
	if (s->t.kind == DISC_SRV) {
		snprintf(s->tls_name, sizeof(s->tls_name), "%s", s->t.tls_name);
		s->q = disc_srv_query_start(d->base, d->dns, s->t.name, tmo, srv_answer_cb, s,
					    err, sizeof(err));
		if (s->q)
			return 0;
		snprintf(why, sizeof(why), "SRV query failed: %s", err);
	} else {
		char ns[DISC_K8S_NAME_MAX + 1];
		const char *nsf =
		    d->o->k8s_namespace_file ? d->o->k8s_namespace_file : SA_DIR "namespace";

		snprintf(ns, sizeof(ns), "%s", s->t.ns);
		if (!ns[0] &&
		    disc_k8s_read_namespace(nsf, ns, sizeof(ns), err, sizeof(err)) != 0) {
			snprintf(why, sizeof(why), "%s", err);
			goto fail;
		}
		snprintf(s->tls_name, sizeof(s->tls_name), "%s.%s.svc", s->t.service, ns);
		struct disc_k8s_opts ko = {
		    .api_server = d->api_server,
		    .token_file = d->o->k8s_token_file ? d->o->k8s_token_file : SA_DIR "token",
		    .ca_file = d->o->k8s_ca_file ? d->o->k8s_ca_file : SA_DIR "ca.crt",
		    .ns = ns,
		    .service = s->t.service,
		    .port_name = s->t.port_name[0] ? s->t.port_name : NULL,
		    .timeout_ms = tmo,
		};
		s->k = disc_k8s_fetch(d->base, d->curl, &ko, k8s_cb, s, err, sizeof(err));
		if (s->k)
			return 0;
		snprintf(why, sizeof(why), "cannot list EndpointSlices: %s", err);
	}
fail:
	s->refreshing = 0;
	src_failed(s, why);
	return -1;
}

/* ---- lookups ------------------------------------------------------------------ */

static void lookup_free(struct disc_lookup *l)
{
	struct disc *d = l->d;

	if (l->prev)
		l->prev->next = l->next;
	else
		d->lookups = l->next;
	if (l->next)
		l->next->prev = l->prev;
	if (l->slot)
		for (size_t i = 0; i < d->n; i++) {
			disc_cancel(l->slot[i].r);
			free(l->slot[i].a);
		}
	if (l->fire)
		event_free(l->fire);
	free(l->slot);
	free(l);
}

static void add(struct disc_addr *out, size_t *n, const struct disc_ep *e, const char *host)
{
	if (*n >= DISC_MAX_ADDRS)
		return;
	memcpy(&out[*n].ss, &e->ss, e->len);
	out[*n].len = e->len;
	snprintf(out[*n].host, sizeof(out[*n].host), "%s", host);
	(*n)++;
}

static void add_src(const struct disc_src *s, struct disc_addr *out, size_t *n)
{
	if (!s->have)
		return;
	if (s->t.kind == DISC_SRV) {
		unsigned order[DISC_SRV_MAX];

		disc_srv_order(s->rec, s->nrec, order, sr_rand_below);
		for (size_t i = 0; i < s->nrec; i++)
			for (size_t j = 0; j < s->count[order[i]]; j++)
				add(out, n, &s->eps[s->first[order[i]] + j], s->t.tls_name);
		return;
	}
	/* a random order, so that sidecars spread over the relays */
	{
		size_t start = *n, m;

		for (size_t i = 0; i < s->neps; i++)
			add(out, n, &s->eps[i], s->t.tls_name);
		m = *n - start;
		for (size_t i = m; i > 1; i--) {
			size_t j = sr_rand_below((uint32_t)i);
			struct disc_addr tmp = out[start + i - 1];

			out[start + i - 1] = out[start + j];
			out[start + j] = tmp;
		}
	}
}

static void fire_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_lookup *l = arg;
	struct disc *d = l->d;
	struct disc_addr *out = calloc(DISC_MAX_ADDRS, sizeof(*out));
	size_t n = 0;

	for (size_t i = 0; out && i < d->n; i++) {
		if (d->src[i])
			add_src(d->src[i], out, &n);
		for (size_t j = 0; j < l->slot[i].n && n < DISC_MAX_ADDRS; j++)
			out[n++] = l->slot[i].a[j];
	}
	l->cb(!out ? SR_ENOMEM : n ? 0 : SR_ERESOLVE, out, n, l->arg);
	free(out);
	lookup_free(l);
}

static void host_cb(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct slot *sl = arg;

	sl->r = NULL;
	if (n && (sl->a = malloc(n * sizeof(*addrs)))) {
		memcpy(sl->a, addrs, n * sizeof(*addrs));
		sl->n = n;
	}
	if (--sl->l->pending == 0)
		event_active(sl->l->fire, EV_TIMEOUT, 0);
}

struct disc_lookup *disc_lookup(struct disc *d, disc_cb cb, void *arg)
{
	struct disc_lookup *l = calloc(1, sizeof(*l));
	uint64_t now = sr_now_us();

	if (!l)
		return NULL;
	l->d = d;
	l->cb = cb;
	l->arg = arg;
	l->next = d->lookups;
	if (d->lookups)
		d->lookups->prev = l;
	d->lookups = l;
	l->slot = calloc(d->n, sizeof(*l->slot));
	l->fire = event_new(d->base, -1, 0, fire_cb, l);
	if (!l->slot || !l->fire) {
		lookup_free(l);
		return NULL;
	}
	l->pending = 1; /* held until everything is started */
	for (size_t i = 0; i < d->n; i++) {
		struct disc_src *s = d->src[i];

		if (!s) {
			l->slot[i].l = l;
			/* allocation failure: this entry gives no address */
			l->slot[i].r = disc_resolve(d->base, d->dns, &d->targets[i], 1, host_cb,
						    &l->slot[i], NULL, 0);
			if (l->slot[i].r)
				l->pending++;
			continue;
		}
		if (!s->refreshing && s->have && now < s->fresh_us)
			continue;
		if (s->refreshing || src_refresh(s) == 0) {
			l->waits |= 1ull << i;
			l->pending++;
		}
	}
	if (--l->pending == 0)
		event_active(l->fire, EV_TIMEOUT, 0);
	return l;
}

void disc_lookup_cancel(struct disc_lookup *l)
{
	if (l)
		lookup_free(l);
}

/* ---- the object ----------------------------------------------------------------- */

/* https://HOST:PORT from the variables Kubernetes sets in every pod. */
static int api_from_env(char *out, size_t len)
{
	const char *h = getenv("KUBERNETES_SERVICE_HOST"),
		   *p = getenv("KUBERNETES_SERVICE_PORT");
	char *end;
	unsigned long port;

	if (!h || !p || !sr_valid_host(h) || !*p)
		return -1;
	port = strtoul(p, &end, 10);
	if (*end || port < 1 || port > 65535 || p[0] < '0' || p[0] > '9')
		return -1;
	snprintf(out, len, strchr(h, ':') ? "https://[%s]:%lu" : "https://%s:%lu", h, port);
	return 0;
}

void disc_free(struct disc *d)
{
	if (!d)
		return;
	while (d->lookups)
		lookup_free(d->lookups);
	if (d->src)
		for (size_t i = 0; i < d->n; i++)
			src_free(d->src[i]);
	free(d->src);
	sr_curl_free(d->curl);
	if (d->curl_global)
		curl_global_cleanup();
	if (d->dns)
		evdns_base_free(d->dns, 0);
	free(d);
}

struct disc *disc_new(struct event_base *base, const struct disc_opts *o, char *const *targets,
		      size_t ntargets, char *err, size_t errlen)
{
	struct disc *d;
	struct disc_target t;
	char esc[SR_ESC_SIZE(64)];
	int k8s = 0;

	if (ntargets == 0 || ntargets > 64) {
		sr_seterr(err, errlen, "want 1..64 relay entries");
		return NULL;
	}
	for (size_t i = 0; i < ntargets; i++) {
		if (disc_target_parse(targets[i], &t, err, errlen) != 0)
			return NULL;
		k8s |= t.kind == DISC_K8S;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		goto nomem;
	d->base = base;
	d->o = o;
	d->targets = targets;
	d->n = ntargets;
	if (!(d->src = calloc(ntargets, sizeof(*d->src))))
		goto nomem;
	for (size_t i = 0; i < ntargets; i++) {
		disc_target_parse(targets[i], &t, NULL, 0);
		if (t.kind == DISC_HOSTPORT)
			continue;
		if (!(d->src[i] = calloc(1, sizeof(*d->src[i]))))
			goto nomem;
		d->src[i]->d = d;
		d->src[i]->idx = i;
		d->src[i]->t = t;
		d->src[i]->entry = targets[i];
	}
	if (o->nnameservers) {
		d->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (!d->dns)
			goto nomem;
		for (unsigned i = 0; i < o->nnameservers && i < DISC_MAX_NAMESERVERS; i++)
			if (evdns_base_nameserver_ip_add(d->dns, o->nameservers[i]) != 0) {
				sr_seterr(err, errlen, "cannot use the nameserver \"%s\"",
					  sr_esc_n(o->nameservers[i], 64, esc, sizeof(esc)));
				goto fail;
			}
	} else {
		d->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
						  EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (!d->dns) /* no resolv.conf: numeric addresses and the hosts file */
			d->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (!d->dns)
			goto nomem;
	}
	evdns_base_load_hosts(d->dns, NULL);
	if (k8s) {
		if (o->k8s_api_server) {
			snprintf(d->api_server, sizeof(d->api_server), "%s", o->k8s_api_server);
		} else if (api_from_env(d->api_server, sizeof(d->api_server)) != 0) {
			sr_seterr(err, errlen,
				  "a k8s: relay entry needs the Kubernetes API: set "
				  "tunnel.discovery.k8s.api_server, or run in a pod "
				  "(KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)");
			goto fail;
		}
		if (strncmp(d->api_server, "https://", 8) != 0) {
			sr_seterr(err, errlen,
				  "the Kubernetes API server must be an https:// URL");
			goto fail;
		}
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
			sr_seterr(err, errlen, "cannot initialise libcurl");
			goto fail;
		}
		d->curl_global = 1;
		if (!(d->curl = sr_curl_new(base)))
			goto nomem;
	}
	return d;
nomem:
	sr_seterr(err, errlen, "out of memory");
fail:
	disc_free(d);
	return NULL;
}
