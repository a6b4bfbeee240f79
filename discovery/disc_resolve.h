/* Relay discovery: turn the configured relay list ("host:port", names may
 * have several addresses) into an ordered list of socket addresses, without
 * blocking the loop (libevent's asynchronous resolver). */
#ifndef DISC_RESOLVE_H
#define DISC_RESOLVE_H

#include <stddef.h>
#include <sys/socket.h>

struct event_base;
struct evdns_base;
struct disc_req;

#define DISC_MAX_ADDRS 64

struct disc_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	char host[256]; /* the configured name, for TLS verification and logs */
};

/* Called once with every address found, in configuration order (the order
 * within a name is the resolver's). err is 0 when at least one address was
 * found, else SR_ERESOLVE (or SR_ENOMEM). addrs is borrowed for the call. */
typedef void (*disc_cb)(int err, const struct disc_addr *addrs, size_t n, void *arg);

/* Start resolving targets, each "host:port" or "[v6]:port" with a port
 * 1..65535. A numeric host is used as written; a name is looked up in the
 * hosts file loaded into dns, then (with EVUTIL_AI_ADDRCONFIG) through its
 * nameservers, within their timeouts; with no nameserver, a name the hosts
 * file does not know fails at once. A name that does not resolve leaves out
 * only its own addresses. The callback never runs before this returns (it
 * is deferred through the event loop even for numeric addresses). Returns
 * NULL on an empty list, a malformed target or allocation failure, with
 * the reason in err if err is given (the target quoted escaped). */
struct disc_req *disc_resolve(struct event_base *base, struct evdns_base *dns,
			      char *const *targets, size_t ntargets, disc_cb cb, void *arg,
			      char *err, size_t errlen);
/* Cancel a request whose callback has not run yet; cb is not called. */
void disc_cancel(struct disc_req *r);

#endif
