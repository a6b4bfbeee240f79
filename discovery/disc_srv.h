/* One SRV query on the event loop. libevent 2.1's evdns resolves only A,
 * AAAA and PTR, so the query is ours (disc_dns.h encodes and parses), sent
 * to the nameservers evdns was given (resolv.conf, or the configuration).
 *
 * UDP to each nameserver in turn, twice round, with a fresh socket (its own
 * ephemeral port) and a random id per try; the socket is connected, so the
 * kernel drops datagrams from anyone but that server, and a datagram that is
 * not an answer to the question (another id or question) is ignored while
 * the try's time runs. A truncated answer is asked again over TCP of the
 * same server (2-byte length prefix, at most 65,535 bytes). A malformed
 * answer or a server failure (SERVFAIL, REFUSED) moves on to the next try.
 * The name is asked as written (absolute: no search list). */
#ifndef DISC_SRV_H
#define DISC_SRV_H

#include <stdint.h>

#include "discovery/disc_dns.h"

struct event_base;
struct evdns_base;
struct disc_srv_query;

/* Called once. err 0: ans holds the answer (maybe no record: NXDOMAIN or
 * none usable). Else SR_ETIMEDOUT, SR_ERESOLVE, SR_EPROTO, SR_EIO or
 * SR_ENOMEM with a one-line reason in msg (escaped: safe to log). ans and
 * msg are borrowed for the call; the query is freed after it. */
typedef void (*disc_srv_cb)(int err, const struct disc_srv_answer *ans, const char *msg,
			    void *arg);

/* Ask name (disc_dns_name_ok) within timeout_ms in all. Returns NULL on a
 * bad name, no nameserver in dns, or allocation failure, with the reason in
 * err; cb is then never called. cb never runs before this returns. */
struct disc_srv_query *disc_srv_query_start(struct event_base *base, struct evdns_base *dns,
					    const char *name, uint32_t timeout_ms,
					    disc_srv_cb cb, void *arg, char *err,
					    size_t errlen);
/* Stop a query whose callback has not run; it will not run. */
void disc_srv_query_cancel(struct disc_srv_query *q);

#endif
