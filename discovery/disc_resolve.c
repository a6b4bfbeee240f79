#include "discovery/disc_resolve.h"
#include "common/sr_err.h"
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

static void fire_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disc_req *r = arg;
	struct disc_addr *addrs = calloc(DISC_MAX_ADDRS, sizeof(*addrs));
	size_t n = 0;

	for (size_t i = 0; addrs && i < r->n; i++) {
		for (struct evutil_addrinfo *ai = r->one[i].res; ai && n < DISC_MAX_ADDRS;
		     ai = ai->ai_next) {
			if (ai->ai_addrlen > sizeof(addrs[n].ss))
				continue;
			memcpy(&addrs[n].ss, ai->ai_addr, ai->ai_addrlen);
			addrs[n].len = (socklen_t)ai->ai_addrlen;
			snprintf(addrs[n].host, sizeof(addrs[n].host), "%s", r->one[i].host);
			n++;
		}
	}
	r->cb(n ? 0 : SR_ERESOLVE, addrs, n, r->arg);
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
			      char *const *targets, size_t ntargets,
			      disc_cb cb, void *arg, char *err, size_t errlen)
{
	struct disc_req *r = calloc(1, sizeof(*r));
	struct evutil_addrinfo hints;

	if (ntargets == 0) {
		sr_seterr(err, errlen, "no relay address to resolve");
		goto fail;
	}
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
	r->pending = ntargets + 1; /* +1 held until every query is started */
	for (size_t i = 0; i < ntargets; i++) {
		uint16_t port;
		if (sr_split_hostport(targets[i], r->one[i].host, sizeof(r->one[i].host), &port,
				      0) != 0) {
			sr_seterr(err, errlen, "bad relay address \"%s\" (want host:port)",
				  targets[i]);
			goto fail;
		}
		snprintf(r->one[i].port, sizeof(r->one[i].port), "%u", port);
		r->one[i].req = r;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
	for (size_t i = 0; i < ntargets; i++) {
		/* May call gai_cb before returning (numeric hosts, /etc/hosts). */
		r->one[i].gai = evdns_getaddrinfo(dns, r->one[i].host, r->one[i].port, &hints,
						  gai_cb, &r->one[i]);
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
