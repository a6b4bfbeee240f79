#include "discovery/disc_resolve.h"
#include "common/sr_err.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

struct disc_one {
	struct disc_req *req;
	struct evdns_getaddrinfo_request *gai;
	char host[256];
	char port[8];
	struct evutil_addrinfo *res;
	/* A numeric address is used as written: evdns would apply
	 * EVUTIL_AI_ADDRCONFIG to it too, and where libevent finds no global
	 * IPv6 address it never answers for an IPv6 literal at all. */
	int numeric;
	struct sockaddr_storage num;
	socklen_t numlen;
	int done;
};

struct disc_req {
	struct evdns_base *dns;
	struct event *fire;
	disc_cb cb;
	void *arg;
	size_t n, pending;
	int cancelled; /* freed when the last outstanding query reports */
	struct disc_one *one;
};

static void req_free(struct disc_req *r)
{
	for (size_t i = 0; i < r->n; i++) {
		if (r->one[i].res)
			evutil_freeaddrinfo(r->one[i].res);
	}
	if (r->fire)
		event_free(r->fire);
	free(r->one);
	free(r);
}

static void add_addr(struct disc_addr *addrs, size_t *n, const struct disc_one *o,
		     const void *sa, size_t len)
{
	if (*n >= DISC_MAX_ADDRS || len > sizeof(addrs[*n].ss))
		return;
	memcpy(&addrs[*n].ss, sa, len);
	addrs[*n].len = (socklen_t)len;
	snprintf(addrs[*n].host, sizeof(addrs[*n].host), "%s", o->host);
	(*n)++;
}

static void fire_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_req *r = arg;
	struct disc_addr *addrs = calloc(DISC_MAX_ADDRS, sizeof(*addrs));
	size_t n = 0;

	for (size_t i = 0; addrs && i < r->n; i++) {
		const struct disc_one *o = &r->one[i];

		if (o->numeric)
			add_addr(addrs, &n, o, &o->num, o->numlen);
		for (struct evutil_addrinfo *ai = o->res; ai; ai = ai->ai_next)
			add_addr(addrs, &n, o, ai->ai_addr, ai->ai_addrlen);
	}
	r->cb(!addrs ? SR_ENOMEM : n ? 0 : SR_ERESOLVE, addrs, n, r->arg);
	free(addrs);
	req_free(r);
}

static void gai_cb(int result, struct evutil_addrinfo *res, void *arg)
{
	struct disc_one *o = arg;
	struct disc_req *r = o->req;

	o->gai = NULL;
	o->done = 1;
	if (result == 0)
		o->res = res;
	if (--r->pending == 0) {
		if (r->cancelled)
			req_free(r);
		else
			event_active(r->fire, EV_TIMEOUT, 0);
	}
}

struct disc_req *disc_resolve(struct event_base *base, struct evdns_base *dns,
			      char *const *targets, size_t ntargets, disc_cb cb, void *arg,
			      char *err, size_t errlen)
{
	struct disc_req *r;
	struct evutil_addrinfo hints;
	char esc[SR_ESC_SIZE(64)];
	int no_servers;

	if (ntargets == 0) {
		sr_seterr(err, errlen, "no relay address to resolve");
		return NULL;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		goto nomem;
	r->one = calloc(ntargets, sizeof(*r->one));
	r->fire = event_new(base, -1, 0, fire_cb, r);
	if (!r->one || !r->fire)
		goto nomem;
	r->dns = dns;
	r->cb = cb;
	r->arg = arg;
	r->n = ntargets;
	r->pending = 1; /* held until every query is started */
	for (size_t i = 0; i < ntargets; i++) {
		struct disc_one *o = &r->one[i];
		uint16_t port;

		if (sr_split_hostport(targets[i], o->host, sizeof(o->host), &port, 0) != 0) {
			sr_seterr(err, errlen, "bad relay address \"%s\" (want host:port)",
				  sr_esc_n(targets[i], 64, esc, sizeof(esc)));
			goto fail;
		}
		/* port 0 is for listeners; nobody can be dialled there */
		if (port == 0) {
			sr_seterr(err, errlen,
				  "bad relay address \"%s\" (want a port 1..65535)",
				  sr_esc_n(targets[i], 64, esc, sizeof(esc)));
			goto fail;
		}
		snprintf(o->port, sizeof(o->port), "%u", port);
		o->req = r;
		o->numeric = sr_parse_addr(o->host, port, &o->num, &o->numlen) == 0;
		if (!o->numeric)
			r->pending++;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
	/* Without a nameserver evdns queues a query until one is added, that is
	 * forever: only the hosts file can answer, and it does so at once. */
	no_servers = evdns_base_count_nameservers(dns) == 0;
	for (size_t i = 0; i < ntargets; i++) {
		struct disc_one *o = &r->one[i];

		if (o->numeric)
			continue;
		/* May call gai_cb before returning (the hosts file, errors). */
		o->gai = evdns_getaddrinfo(dns, o->host, o->port, &hints, gai_cb, o);
		if (o->gai && no_servers) {
			evdns_getaddrinfo_cancel(o->gai); /* gai_cb follows, from the loop */
			o->gai = NULL;
		}
	}
	if (--r->pending == 0)
		event_active(r->fire, EV_TIMEOUT, 0);
	return r;

nomem:
	sr_seterr(err, errlen, "out of memory");
fail:
	if (r)
		req_free(r);
	return NULL;
}

void disc_cancel(struct disc_req *r)
{
	if (!r)
		return;
	if (r->pending == 0) {
		req_free(r); /* only the fire event was left; freeing it cancels it */
		return;
	}
	r->cancelled = 1;
	for (size_t i = 0; i < r->n; i++) {
		if (r->one[i].gai)
			evdns_getaddrinfo_cancel(r->one[i].gai); /* gai_cb sees EAI_CANCEL */
	}
}
