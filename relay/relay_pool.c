/* Compiled policies and the pools' lease tables. A reload compiles a new
 * policy and syncs the pools to it; leases keep the policy they were made
 * under (a reference) until they end. */
#include "relay/relay_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/socket.h>

void relay_pol_unref(struct relay_pol *pol)
{
	if (pol && --pol->refs == 0) {
		relay_policy_free(pol->p);
		free(pol);
	}
}

int relay_str_eq(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") == 0;
}

static int pool_opts_eq(const struct relay_pool_opts *a, const struct relay_pool_opts *b)
{
	return relay_str_eq(a->bind_address, b->bind_address) &&
	       relay_str_eq(a->advertise_host, b->advertise_host) && a->port_min == b->port_min &&
	       a->port_max == b->port_max && a->max_leases == b->max_leases &&
	       a->backlog == b->backlog;
}

void relay_pool_free(struct relay_pool_rt *pr)
{
	relay_lease_table_free(pr->t);
	free(pr->opts.bind_address);
	free(pr->opts.advertise_host);
	free(pr->name);
	free(pr);
}

static struct relay_pool_rt *pool_rt_new(struct relay *r, const struct relay_pool_cfg *pc)
{
	static const struct relay_lease_cbs lcbs = {.on_accept = relay_exec_on_accept,
						    .on_expire = relay_exec_on_expire};
	struct relay_pool_rt *pr = calloc(1, sizeof(*pr));

	if (!pr)
		return NULL;
	pr->opts = pc->pool;
	pr->name = strdup(pc->name ? pc->name : "default");
	pr->opts.bind_address = pc->pool.bind_address ? strdup(pc->pool.bind_address) : NULL;
	pr->opts.advertise_host =
		pc->pool.advertise_host ? strdup(pc->pool.advertise_host) : NULL;
	pr->t = relay_lease_table_new(r->base, &pc->pool, &lcbs, r);
	if (!pr->name || !pr->t || (pc->pool.bind_address && !pr->opts.bind_address) ||
	    (pc->pool.advertise_host && !pr->opts.advertise_host)) {
		relay_pool_free(pr);
		return NULL;
	}
	return pr;
}

struct relay_pool_rt *relay_pool_find(struct relay *r, const char *name)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		if (!pr->retired && strcmp(pr->name, name) == 0)
			return pr;
	}
	return NULL;
}

/* A lease port is bound only when a lease is granted: a pool whose
 * pool.bind is not an address of this host would refuse every registration
 * ("internal" to the sidecar). Found at start and at a reload instead, by
 * binding a socket of that address to port 0. */
int relay_bind_addr_missing(const char *a)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, e = 0;

	if (!a || sr_parse_addr(a, 0, &ss, &len) != 0)
		return 0; /* the configuration's own check names it */
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len) != 0)
		e = errno;
	if (fd >= 0)
		close(fd);
	return e == EADDRNOTAVAIL || e == EAFNOSUPPORT ? e : 0;
}

int relay_pools_check_bind(const struct relay_policy *p, char *err, size_t errlen)
{
	size_t n = relay_policy_npools(p);

	for (size_t i = 0; i < n; i++) {
		const struct relay_pool_cfg *pc = relay_policy_pool(p, i);
		const char *a = pc->pool.bind_address;
		int e = relay_bind_addr_missing(a);

		if (e) {
			char eb[SR_ESC_SIZE(64)];

			sr_seterr(err, errlen,
				  "pool %s: pool.bind %s is not an address of this host (%s)",
				  pc->name ? pc->name : "default", sr_esc_n(a, 64, eb, sizeof(eb)),
				  strerror(e));
			return SR_EINVAL;
		}
	}
	return 0;
}

int relay_pools_sync(struct relay *r, const struct relay_policy *p)
{
	size_t n = relay_policy_npools(p);
	struct relay_pool_rt *fresh = NULL, **tail = &fresh;

	for (size_t i = 0; i < n; i++) {
		const struct relay_pool_cfg *pc = relay_policy_pool(p, i);
		struct relay_pool_rt *cur = relay_pool_find(r, pc->name ? pc->name : "default");
		if (cur && pool_opts_eq(&cur->opts, &pc->pool))
			continue;
		*tail = pool_rt_new(r, pc);
		if (!*tail) {
			while (fresh) {
				struct relay_pool_rt *x = fresh;
				fresh = x->next;
				relay_pool_free(x);
			}
			return SR_ENOMEM;
		}
		tail = &(*tail)->next;
	}
	/* Retire pools that the new policy changed or dropped. */
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		int keep = 0;
		if (pr->retired)
			continue;
		for (size_t i = 0; i < n && !keep; i++) {
			const struct relay_pool_cfg *pc = relay_policy_pool(p, i);
			keep = strcmp(pr->name, pc->name ? pc->name : "default") == 0 &&
			       pool_opts_eq(&pr->opts, &pc->pool);
		}
		if (!keep) {
			pr->retired = 1;
			SR_INFO("", "pool %s retired: its %zu leases keep their ports until they end",
				pr->name, relay_lease_count(pr->t));
		}
	}
	*tail = r->pools;
	r->pools = fresh;
	return 0;
}

void relay_pools_gc_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay *r = arg;
	struct relay_pool_rt **pp = &r->pools;

	while (*pp) {
		struct relay_pool_rt *pr = *pp;
		if (pr->retired && relay_lease_count(pr->t) == 0) {
			*pp = pr->next;
			relay_pool_free(pr);
			continue;
		}
		pp = &pr->next;
	}
}

struct relay_lease *relay_find_resume(struct relay *r, const char *token)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct relay_lease *l = relay_lease_find_resume(pr->t, token);
		if (l)
			return l;
	}
	return NULL;
}

struct relay_lease *relay_find_id(struct relay *r, const char *id)
{
	for (struct relay_pool_rt *pr = r->pools; pr; pr = pr->next) {
		struct relay_lease *l = relay_lease_find_id(pr->t, id);
		if (l)
			return l;
	}
	return NULL;
}
