/* The relay fleet: see relay_fleet.h for what it does.
 *
 * Keys under the prefix P (values JSON unless said):
 *   P relays/<id>           {"peer": "host:port", "tunnel": "host:port"}, on
 *                           the relay's own etcd lease (TTL ttl_s)
 *   P leases/<lease>        {"app","tenant","route","pool","idkey","roles",
 *                           "ports":[driver,blockManager,ui],"resume","prev"}
 *                           on the lease's grace etcd lease (TTL grace_s)
 *   P ports/<port>          the lease id, on the same grace lease
 *   P tunnels/<lease>/<id>  "", on relay <id>'s own lease: it holds a tunnel
 * The grace lease is kept alive by every relay holding a tunnel of the
 * lease; when none does, it expires after grace_s and etcd deletes the
 * lease's keys at once, which every relay sees and closes its ports.
 *
 * The mirror is a list (for scans) with a hash by key (for lookups); a
 * change in etcd costs O(keys + local leases) (reconcile). A resume
 * compares every lease's digest, and carrying an executor scans the
 * mirror for the lease's tunnels keys (docs/architecture.md). */
#include "relay/relay_fleet.h"
#include "relay/relay_int.h"

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "fleet/etcd.h"
#include "fleet/peer.h"
#include "fleet/splice.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define FL_RETRY_MS 1000
#define FL_RETRY_MAX_MS 30000
#define FL_MAX_GRANT_TRIES 8
#define FL_MAX_TRIED 8
#define FL_ID_MAX 64
#define FL_KEY_MAX 512
#define FL_DIGEST_HEX (2 * SHA256_DIGEST_LENGTH + 1)
#define FL_LOG_PERIOD_US (10 * 1000000ull)
#define FL_GRACE_MIN_S 5 /* etcd raises tiny TTLs to its own minimum anyway */
#define FL_CTX "fleet"
/* A resume the mirror cannot find asks etcd whether the mirror is behind
 * (stale_*): at most FL_STALE_MAX such registrations wait at once, and a
 * watch still behind one of them after FL_STALE_LAG_MS is replaced by a
 * full read, at most once per FL_STALE_RESYNC_MS. */
#define FL_STALE_MAX 32
#define FL_STALE_LAG_MS 1000
#define FL_STALE_RESYNC_MS 10000
/* Keys mirrored at most (four per lease at most, plus one per relay): what
 * etcd holds beyond is not seen, and logged. */
#define FL_MAX_KEYS 262144
/* Our values are a few hundred bytes (a lease's JSON); a larger one under
 * the prefix is another writer's and is not kept (kv_wanted). */
#define FL_MAX_VALUE (64u * 1024)
#define FL_MAX_ANSWER (64u * 1024 * 1024)
/* The table is read in pages of at most this many keys (about 0.5 MB of
 * leases), all at the first page's revision; a page over FL_MAX_ANSWER is
 * asked again at an eighth of the size (large values of other writers
 * under the prefix), and later reads keep the smaller size. */
#define FL_PAGE_KEYS 1000

/* One key of the mirror (the prefix cut off): in the list f->kvs (for
 * scans) and in the hash f->kb by key (for lookups). */
struct fl_kv {
	struct fl_kv *next, *prev;
	struct fl_kv *hnext;
	uint32_t hash;
	char *key;
	char *val;
	size_t vlen;
	int64_t lease;
	int64_t mod;
	int sweep; /* sync_done: not in the read, and not newer than it */
	int warned; /* leases/: a bind failure was logged */
	/* leases/: not to be bound here (not a lease, or its pool, route or
	 * tenant not configured) as long as the value and the configuration
	 * stay: the relay's successful reloads + 1 when found so, else 0.
	 * Every change in etcd reconciles every lease not bound here, and a
	 * parse of each cost 122 ms a change at 20,000 of another pool. */
	uint64_t skip_gen;
	/* leases/: the value's "resume" and "prev" digests (hex, each in
	 * FL_DIGEST_HEX bytes, "" when absent), read once when the value came:
	 * a resume compares them with every lease's, and parsing each lease's
	 * JSON for that cost 135 ms a try at 20,000 leases. NULL: the value
	 * is not a lease. */
	char *dig;
	/* relays/: its "peer", checked when it came from etcd (fleet_peer_addr_parse);
	 * peerlen 0: none this relay would dial. */
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} peer;
	socklen_t peerlen;
};

/* A lease that a tunnel holds on this relay: its grace lease is kept
 * alive and tunnels/<lease>/<self> says so. */
struct fl_held {
	struct fl_held *next;
	struct relay_fleet *f;
	char id[TUN_CTL_LEASE_MAX];
	int64_t grace;
	struct etcd_keeper *k;
	/* etcd lost the lease while a tunnel holds it here: it is made
	 * again with the same id and ports, or ended here (held_reclaim). */
	struct etcd_op *op;
	struct event *retry;
	long backoff_ms; /* retry_later's state for retry */
	int64_t newgrace;
	char *json;
	/* The lease's resume and prev digests as etcd last showed them ("":
	 * never seen): made again, the lease keeps the token its sidecar has,
	 * which this relay may not (a join's relay has a token of its own). */
	char dig[2 * FL_DIGEST_HEX];
};

/* REG_STALE: a resume or a join whose token the mirror does not know,
 * waiting to learn whether the mirror is behind etcd. REG_PORTS: a join or
 * resume of a lease whose port a new lease here holds until etcd answers
 * its grant (which then fails: etcd has the port). */
enum fl_phase { REG_WAIT = 0, REG_GRANT, REG_TXN, REG_RESUME, REG_STALE, REG_PORTS };

struct fleet_reg {
	struct fleet_reg *next, *prev;
	struct relay_fleet *f;
	struct relay_tunnel *t;
	struct tun_ctl_msg m;
	int tenant;
	char tname[64];
	char idkey[RELAY_IDKEY_MAX];
	enum fl_phase phase;
	struct event *deadline;
	struct etcd_op *op;
	struct relay_lease_ext *lx; /* new lease not granted yet (owned), or resumed */
	int64_t grace;		    /* new lease: granted grace lease, 0: none yet */
	int tries;
	uint64_t started_us;
	char *json; /* resume: the value being put */
	/* REG_STALE: once etcd has answered (op done), the revision of the
	 * lease's key the mirror must reach before the token is looked up
	 * again, and since when it waits for it */
	int64_t stale_rev;
	uint64_t stale_since_us;
	int stale_checked;  /* the mirror is known current for the lease: a miss is final */
	int stale_conflict; /* a resume's write lost to a change the mirror lacked: once the
			     * mirror has it, the answer is resume_conflict */
	int ports_again;    /* REG_PORTS: looked at again by this run of ports_cb */
};

struct fl_fwd {
	struct fl_fwd *next, *prev;
	struct relay_fleet *f;
	struct fleet_splice *sp;
	char lease[TUN_CTL_LEASE_MAX];
	int role;
	struct sockaddr_storage exec;
	uint64_t conn_id, since_us; /* the executor connection, and when it came */
	char tried[FL_MAX_TRIED][FL_ID_MAX];
	int ntried;
	struct fleet_peer_hdr h;
	uint8_t hdr[FLEET_PEER_HDR_MAX];
	size_t hlen;
	int counted; /* in its lease's ncarried */
};

/* One key of a read in pages, copied (prefix included) until the last page
 * has come: the mirror changes only then, so a read that fails half-way
 * leaves the mirror as it was. */
struct fl_rkv {
	char *key, *val;
	size_t klen, vlen;
	int64_t lease, mod;
};

struct fl_read {
	struct fl_rkv *kv;
	size_t n, cap;
	int64_t rev;	/* the first page's revision: every page is read at it */
	unsigned pages;
	size_t seen;	/* keys read, kept or not (kv_wanted) */
	char *next;	/* where the next page begins (the last key and a NUL) */
	size_t next_len;
};

struct relay_fleet {
	struct relay *r;
	struct event_base *base;
	/* Lines an executor's or a peer's connect rate would write: one per
	 * FL_LOG_PERIOD_US each, counting those left out. */
	struct sr_ratelog rl_unreached, rl_unserved;
	struct etcd *etcd;
	struct fleet_secret *sec;
	struct fleet_peer_listener *peer;
	char *prefix;
	size_t plen;
	char id[FL_ID_MAX];
	char advertise[300];
	uint32_t ttl_s;
	uint32_t wait_ms;
	uint32_t watch_idle_ms; /* opts.watch_idle_ms */
	/* the relay's registration */
	int64_t self_lease;
	struct etcd_keeper *self_keeper;
	struct event *self_retry;
	long self_backoff_ms; /* retry_later's state for self_retry */
	int registered_once;  /* ready (relay_fleet_stats) from the first registration on */
	/* the mirror */
	struct fl_kv *kvs;
	size_t nkvs;
	struct fl_kv **kb; /* nkb buckets (a power of two), NULL until the first key */
	size_t nkb;
	uint32_t kseed;
	int full_logged;
	int nul_logged;
	int big_logged; /* kv_wanted */
	int synced;
	int64_t seen_rev; /* the mirror holds every change up to this revision */
	struct fl_read rd; /* a read of every key, in pages, under way */
	int64_t page_keys; /* keys a page: FL_PAGE_KEYS, less for good after a page too large */
	struct etcd_watch *watch;
	struct event *sync_retry;
	long sync_backoff_ms; /* retry_later's state for sync_retry */
	struct event *check_ev; /* deferred: held leases that lost their tunnel */
	struct event *ports_ev; /* deferred: REG_PORTS registrations look again */
	/* a port of a lease made elsewhere that something else holds here:
	 * looked at again with backoff, etcd may not change meanwhile */
	struct event *bind_retry;
	long bind_backoff_ms;
	struct fl_held *held;
	struct fleet_reg *regs;
	/* is the mirror behind etcd? (REG_STALE) */
	uint64_t stale_resync_us; /* the last full read it forced */
	struct event *stale_lag_ev;
	/* this relay's keys deleted by someone else: written back (restore_cb) */
	struct etcd_op *restore_op;
	struct event *restore_ev;
	int restore_again;
	long restore_backoff_ms;
	struct fl_fwd *fwds;
	uint64_t forwarded, forward_failed;
	int frozen;	 /* relay_fleet_freeze */
	int need_self;	 /* register once thawed */
	int draining;	 /* withdrawn: never registers again */
	int withdrawing; /* the revoke of the relay's etcd lease is under way */
};

/* ---- small helpers ------------------------------------------------------- */

static void sha256_hex(const char *s, char out[FL_DIGEST_HEX])
{
	unsigned char d[SHA256_DIGEST_LENGTH];
	static const char hx[] = "0123456789abcdef";

	SHA256((const unsigned char *)s, strlen(s), d);
	for (size_t i = 0; i < sizeof(d); i++) {
		out[2 * i] = hx[d[i] >> 4];
		out[2 * i + 1] = hx[d[i] & 15];
	}
	out[2 * sizeof(d)] = '\0';
}

static int valid_id(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= FL_ID_MAX)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' || *s == '-'))
			return 0;
	return 1;
}

static int fail_opt(const char **key, const char *which, char *why, size_t len,
		    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int fail_opt(const char **key, const char *which, char *why, size_t len,
		    const char *fmt, ...)
{
	va_list ap;

	*key = which;
	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return -1;
}

/* 0.0.0.0 or ::, however written */
static int addr_is_any(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	return ss->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

#define FL_ADDR_RULE                                                                           \
	"must be a numeric IP:port other relays can dial (not a wildcard, multicast or "        \
	"broadcast address, nor port 0)"

int relay_fleet_check_opts(const struct relay_fleet_opts *o, const char **key, char *why,
			   size_t len)
{
	char host[256], adv[FLEET_PEER_ADDR_MAX + 8], q[SR_ESC_SIZE(FLEET_PEER_ADDR_MAX)];
	struct sockaddr_storage ss, as;
	socklen_t sslen, al;
	uint16_t port;

	*key = NULL;
	if (!o->netcd)
		return 0;
	for (unsigned i = 0; i < o->netcd; i++)
		if (etcd_endpoint_check(o->etcd[i], why, len) != 0) {
			*key = "relay.fleet.etcd";
			return -1;
		}
	if (!o->peer_listen)
		return fail_opt(key, "relay.fleet.peer_listen", why, len,
				"required with relay.fleet.etcd");
	if (!o->secret_file)
		return fail_opt(key, "relay.fleet.secret_file", why, len,
				"required with relay.fleet.etcd");
	if (o->id && !valid_id(o->id))
		return fail_opt(key, "relay.fleet.id", why, len,
				"must be 1-63 letters, digits, '.', '_' or '-' (got \"%s\")",
				sr_esc_n(o->id, FL_ID_MAX, q, sizeof(q)));
	if (sr_split_hostport(o->peer_listen, host, sizeof(host), &port, 0) != 0 ||
	    sr_parse_addr(host, port, &ss, &sslen) != 0)
		return fail_opt(key, "relay.fleet.peer_listen", why, len,
				"must be a numeric host:port (got \"%s\")",
				sr_esc_n(o->peer_listen, FLEET_PEER_ADDR_MAX, q, sizeof(q)));
	if (o->peer_advertise) {
		if (fleet_peer_addr_parse(o->peer_advertise, strlen(o->peer_advertise), &as, &al))
			return fail_opt(key, "relay.fleet.peer_advertise", why, len,
					FL_ADDR_RULE " (got \"%s\")",
					sr_esc_n(o->peer_advertise, FLEET_PEER_ADDR_MAX, q,
						 sizeof(q)));
		return 0;
	}
	if (addr_is_any(&ss))
		return fail_opt(key, "relay.fleet.peer_advertise", why, len,
				"required when relay.fleet.peer_listen (\"%s\") is a wildcard "
				"address",
				sr_esc_n(o->peer_listen, FLEET_PEER_ADDR_MAX, q, sizeof(q)));
	/* Port 0 takes a free port at start: the host alone is checked. */
	snprintf(adv, sizeof(adv), ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host,
		 port ? port : 1);
	if (fleet_peer_addr_parse(adv, strlen(adv), &as, &al) != 0)
		return fail_opt(key, "relay.fleet.peer_listen", why, len,
				"with no relay.fleet.peer_advertise, other relays dial this address: "
				"its host must be one they can dial (not multicast or broadcast) "
				"(got \"%s\")",
				sr_esc_n(o->peer_listen, FLEET_PEER_ADDR_MAX, q, sizeof(q)));
	return 0;
}

static int mkkey(const struct relay_fleet *f, char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int mkkey(const struct relay_fleet *f, char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n = snprintf(buf, len, "%s", f->prefix), m;

	if (n < 0 || (size_t)n >= len)
		return -1;
	va_start(ap, fmt);
	m = vsnprintf(buf + n, len - (size_t)n, fmt, ap);
	va_end(ap);
	if (m < 0 || (size_t)(n + m) >= len)
		return -1;
	return n + m;
}

static void log_cb(int err, const struct etcd_result *res, void *arg)
{
	if (err)
		SR_DEBUG(FL_CTX, "%s: %s", (const char *)arg, res->msg);
}

/* An operation whose outcome nobody waits for. */
static void fire(struct relay_fleet *f, const struct etcd_req *rq, const char *what)
{
	char err[256];

	if (!etcd_kv(f->etcd, rq, log_cb, (void *)what, err, sizeof(err)))
		SR_WARN(FL_CTX, "%s: %s", what, err);
}

static void fl_revoke(struct relay_fleet *f, int64_t lease, const char *what)
{
	char err[256];

	if (lease && !etcd_lease_revoke(f->etcd, lease, log_cb, (void *)what, err, sizeof(err)))
		SR_WARN(FL_CTX, "%s: %s", what, err);
}

/* ---- the mirror ------------------------------------------------------------ */

/* FNV-1a, seeded per process: keys are chosen by whoever writes etcd. */
static uint32_t kv_hash(const struct relay_fleet *f, const char *key)
{
	uint32_t h = 2166136261u ^ f->kseed;

	for (; *key; key++) {
		h ^= (unsigned char)*key;
		h *= 16777619u;
	}
	return h;
}

/* O(1) on average. */
static struct fl_kv *kv_find(struct relay_fleet *f, const char *key)
{
	uint32_t h;

	if (!f->kb)
		return NULL;
	h = kv_hash(f, key);
	for (struct fl_kv *kv = f->kb[h & (f->nkb - 1)]; kv; kv = kv->hnext)
		if (kv->hash == h && strcmp(kv->key, key) == 0)
			return kv;
	return NULL;
}

/* Room for one more key: buckets at least as many as keys. 0 or SR_ENOMEM. */
static int kv_reserve(struct relay_fleet *f)
{
	size_t nb = f->nkb ? f->nkb : 64;
	struct fl_kv **kb;

	while (nb < f->nkvs + 1)
		nb *= 2;
	if (nb == f->nkb)
		return 0;
	kb = calloc(nb, sizeof(*kb));
	if (!kb)
		return f->kb ? 0 : SR_ENOMEM; /* longer chains, still correct */
	for (struct fl_kv *kv = f->kvs; kv; kv = kv->next) {
		kv->hnext = kb[kv->hash & (nb - 1)];
		kb[kv->hash & (nb - 1)] = kv;
	}
	free(f->kb);
	f->kb = kb;
	f->nkb = nb;
	return 0;
}

static void kv_free(struct relay_fleet *f, struct fl_kv *kv)
{
	struct fl_kv **pp = &f->kb[kv->hash & (f->nkb - 1)];

	while (*pp != kv)
		pp = &(*pp)->hnext;
	*pp = kv->hnext;
	if (kv->prev)
		kv->prev->next = kv->next;
	else
		f->kvs = kv->next;
	if (kv->next)
		kv->next->prev = kv->prev;
	f->nkvs--;
	free(kv->key);
	free(kv->val);
	free(kv->dig);
	free(kv);
}

static void kv_clear(struct relay_fleet *f)
{
	while (f->kvs)
		kv_free(f, f->kvs);
	free(f->kb);
	f->kb = NULL;
	f->nkb = 0;
}

static void kv_del(struct relay_fleet *f, const char *key)
{
	struct fl_kv *kv = kv_find(f, key);

	if (kv)
		kv_free(f, kv);
}

/* relays/<id>'s "peer": the address other relays carry executors to, so
 * it is checked here, where it enters from etcd, not where it is dialled. */
static void kv_relay_peer(struct fl_kv *kv)
{
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	json_t *j = json_loadb(kv->val, kv->vlen, 0, NULL), *p;

	kv->peerlen = 0;
	p = j ? json_object_get(j, "peer") : NULL;
	if (json_is_string(p) && fleet_peer_addr_parse(json_string_value(p), json_string_length(p),
						       &ss, &sl) == 0 &&
	    sl <= sizeof(kv->peer)) {
		memcpy(&kv->peer, &ss, sl);
		kv->peerlen = sl;
	} else {
		char eid[SR_ESC_SIZE(FL_ID_MAX)], epeer[SR_ESC_SIZE(FLEET_PEER_ADDR_MAX)];
		sr_esc_n(kv->key + 7, FL_ID_MAX, eid, sizeof(eid));
		if (json_is_string(p))
			sr_esc_n(json_string_value(p), FLEET_PEER_ADDR_MAX, epeer, sizeof(epeer));
		else
			snprintf(epeer, sizeof(epeer), "(none)");
		SR_WARN(FL_CTX, "relay %s: its peer address %s in etcd is not a numeric IP:port "
				"a relay can be dialled at; nothing is carried to it",
			eid, epeer);
	}
	json_decref(j);
}

static void kv_nul_key(struct relay_fleet *f)
{
	if (!f->nul_logged)
		SR_WARN(FL_CTX, "a key under the fleet's prefix holds a NUL byte: ignored (and "
				"any more such keys, without a line)");
	f->nul_logged = 1;
}

/* More keys than the mirror holds: logged once. */
static void kv_full(struct relay_fleet *f)
{
	if (!f->full_logged)
		SR_WARN(FL_CTX, "more than %d keys under the fleet's prefix: the rest are ignored",
			FL_MAX_KEYS);
	f->full_logged = 1;
}

static void kv_lease_digests(struct fl_kv *kv);
static struct fl_held *held_find(struct relay_fleet *f, const char *id);

/* Whether the mirror keeps key (prefix included; the caller checked it is
 * under the prefix) with a value of vlen bytes: only the four kinds the
 * fleet writes (the header of this file), so that other writers under the
 * prefix cost no memory, and values up to FL_MAX_VALUE (said once). */
static int kv_wanted(struct relay_fleet *f, const char *key, size_t klen, size_t vlen)
{
	static const char *const kinds[] = {"relays/", "leases/", "ports/", "tunnels/"};
	const char *k = key + f->plen;
	size_t n = klen - f->plen;
	int known = 0;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		known |= n > strlen(kinds[i]) && memcmp(k, kinds[i], strlen(kinds[i])) == 0;
	if (!known)
		return 0;
	if (vlen > FL_MAX_VALUE) {
		char q[SR_ESC_SIZE(64)];

		if (!f->big_logged)
			SR_WARN(
			    FL_CTX,
			    "key %s holds %zu bytes, more than a fleet value has (%u): ignored "
			    "(and any more such keys, without a line)",
			    sr_esc_n(k, 64, q, sizeof(q)), vlen, FL_MAX_VALUE);
		f->big_logged = 1;
		return 0;
	}
	return 1;
}

/* Key and value of a full etcd key (prefix included). Returns 0 or SR_ENOMEM. */
static int kv_put(struct relay_fleet *f, const char *key, size_t klen, const char *val,
		  size_t vlen, int64_t lease, int64_t mod)
{
	struct fl_kv *kv;
	char *k, *v;

	if (klen < f->plen || memcmp(key, f->prefix, f->plen) != 0 || klen - f->plen >= FL_KEY_MAX)
		return 0;
	/* The mirror's keys are C strings: one with a NUL would be taken for
	 * the key before it (a put or delete of "leases/<id>\0x" acting on
	 * leases/<id>). Values keep their length. */
	if (memchr(key, '\0', klen)) {
		kv_nul_key(f);
		return 0;
	}
	if (!kv_wanted(f, key, klen, vlen)) {
		/* as deleted: a key of ours that grew past the limit goes */
		k = strndup(key + f->plen, klen - f->plen);
		if (!k)
			return SR_ENOMEM;
		kv_del(f, k);
		free(k);
		return 0;
	}
	k = strndup(key + f->plen, klen - f->plen);
	v = malloc(vlen + 1);
	if (!k || !v) {
		free(k);
		free(v);
		return SR_ENOMEM;
	}
	memcpy(v, val, vlen);
	v[vlen] = '\0';
	kv = kv_find(f, k);
	if (kv) {
		free(k);
		free(kv->val);
	} else {
		if (f->nkvs >= FL_MAX_KEYS) {
			kv_full(f);
			free(k);
			free(v);
			return 0;
		}
		kv = kv_reserve(f) == 0 ? calloc(1, sizeof(*kv)) : NULL;
		if (!kv) {
			free(k);
			free(v);
			return SR_ENOMEM;
		}
		kv->key = k;
		kv->hash = kv_hash(f, k);
		kv->hnext = f->kb[kv->hash & (f->nkb - 1)];
		f->kb[kv->hash & (f->nkb - 1)] = kv;
		kv->next = f->kvs;
		if (f->kvs)
			f->kvs->prev = kv;
		f->kvs = kv;
		f->nkvs++;
	}
	kv->val = v;
	kv->vlen = vlen;
	kv->lease = lease;
	kv->mod = mod;
	kv->sweep = 0;
	kv->skip_gen = 0;
	if (strncmp(kv->key, "relays/", 7) == 0)
		kv_relay_peer(kv);
	if (strncmp(kv->key, "leases/", 7) == 0) {
		struct fl_held *h;
		kv_lease_digests(kv);
		if (kv->dig && (h = held_find(f, kv->key + 7)) != NULL)
			memcpy(h->dig, kv->dig, sizeof(h->dig));
	}
	return 0;
}

/* What leases/<id> says. */
struct fl_lease {
	const char *app, *tenant, *route, *pool, *idkey, *resume, *prev;
	int roles;
	int ports[TUN_PORT_MAX];
};

/* Parse kv's value; *root must be json_decref'd on 0. */
static int lease_parse(const struct fl_kv *kv, struct fl_lease *fl, json_t **root)
{
	json_error_t je;
	json_t *j = json_loadb(kv->val, kv->vlen, 0, &je), *ports;
	json_int_t roles;

	memset(fl, 0, sizeof(*fl));
	if (!j)
		return SR_EPROTO;
	fl->prev = "";
	/* roles as json_int_t: "i" would cut 2^32 + 1 to 1 */
	if (json_unpack(j, "{s:s, s:s, s:s, s:s, s:s, s:I, s:o, s:s, s?s}", "app", &fl->app,
			"tenant", &fl->tenant, "route", &fl->route, "pool", &fl->pool, "idkey",
			&fl->idkey, "roles", &roles, "ports", &ports, "resume", &fl->resume,
			"prev", &fl->prev) != 0 ||
	    !json_is_array(ports) || json_array_size(ports) != TUN_PORT_MAX || roles <= 0 ||
	    roles >= (json_int_t)TUN_ROLE_BIT(TUN_PORT_MAX) ||
	    strlen(fl->app) >= TUN_CTL_APP_MAX) {
		json_decref(j);
		return SR_EPROTO;
	}
	fl->roles = (int)roles;
	for (int i = 0; i < TUN_PORT_MAX; i++) {
		json_t *p = json_array_get(ports, (size_t)i);
		if (!json_is_integer(p) || json_integer_value(p) < 0 ||
		    json_integer_value(p) > 65535) {
			json_decref(j);
			return SR_EPROTO;
		}
		fl->ports[i] = (int)json_integer_value(p);
	}
	*root = j;
	return 0;
}

static void kv_lease_digests(struct fl_kv *kv)
{
	struct fl_lease fl;
	json_t *j;

	free(kv->dig);
	kv->dig = NULL;
	if (lease_parse(kv, &fl, &j) != 0)
		return;
	if ((kv->dig = calloc(2, FL_DIGEST_HEX)) != NULL) {
		if (strlen(fl.resume) == 2 * SHA256_DIGEST_LENGTH)
			memcpy(kv->dig, fl.resume, 2 * SHA256_DIGEST_LENGTH);
		if (strlen(fl.prev) == 2 * SHA256_DIGEST_LENGTH)
			memcpy(kv->dig + FL_DIGEST_HEX, fl.prev, 2 * SHA256_DIGEST_LENGTH);
	}
	json_decref(j);
}

static char *lease_json(const struct relay_lease_ext *lx, const char *resume_digest,
			const char *prev_digest)
{
	struct relay_lease_state st;
	json_t *j;
	char *s;

	relay_lease_get_state(lx->lease, &st);
	j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:[i,i,i], s:s, s:s}", "app", st.app,
		      "tenant", lx->tenant_name, "route", lx->route_name, "pool", lx->pool->name,
		      "idkey", lx->idkey, "roles", (int)st.roles, "ports", (int)st.ports[0],
		      (int)st.ports[1], (int)st.ports[2], "resume", resume_digest, "prev",
		      prev_digest);
	if (!j)
		return NULL;
	s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

/* ---- binding the ports of a lease made elsewhere -------------------------- */

static int bind_port(const struct relay_pool_rt *pr, int port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	if (sr_parse_addr(pr->opts.bind_address ? pr->opts.bind_address : "0.0.0.0",
			  (uint16_t)port, &ss, &len) != 0)
		return -1;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* TCP_NODELAY before listen(): accepted sockets copy it (relay_lease.c). */
	sr_sock_nodelay(fd);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, len) < 0 ||
	    listen(fd, pr->opts.backlog ? (int)pr->opts.backlog : 1024) < 0) {
		int e = errno; /* the caller tells EADDRINUSE apart */
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int ports_pending(const struct relay_fleet *f, const struct fl_lease *fl);
static void retry_later(struct event *ev, long *backoff_ms);

/* Connections of lease id carried from here now (see fwd_count). */
static unsigned fwds_counted(const struct relay_fleet *f, const char *id)
{
	unsigned n = 0;

	for (const struct fl_fwd *w = f->fwds; w; w = w->next)
		n += w->counted && strcmp(w->lease, id) == 0;
	return n;
}

/* Make the local lease of leases/<id> (id = kv->key + 7): its ports bound
 * here, no tunnel, no local grace timer (etcd's grace lease rules). */
static void lease_bind(struct relay_fleet *f, struct fl_kv *kv)
{
	struct relay *r = f->r;
	const char *id = kv->key + strlen("leases/");
	struct relay_lease_state st;
	struct relay_lease_ext *lx;
	struct relay_pool_rt *pr;
	struct relay_lease *l;
	struct fl_lease fl;
	char resume[TUN_CTL_RESUME_MAX];
	json_t *j;
	int route, tenant, rv;

	if (!tun_ctl_valid_lease_id(id) || lease_parse(kv, &fl, &j) != 0) {
		if (!kv->warned)
			SR_WARN(FL_CTX, "etcd key leases/... is not a lease this relay understands");
		kv->warned = 1;
		kv->skip_gen = r->st.reloads_ok + 1;
		return;
	}
	pr = relay_pool_find(r, fl.pool);
	route = relay_policy_route_find(r->pol->p, fl.route);
	tenant = relay_policy_tenant_find(r->pol->p, fl.tenant);
	if (!pr || pr->retired || route < 0 || tenant < 0) {
		if (!kv->warned)
			SR_INFO(FL_CTX, "lease=%s: not served here (pool, route or tenant not "
					"configured on this relay)",
				id);
		kv->warned = 1;
		kv->skip_gen = r->st.reloads_ok + 1;
		json_decref(j);
		return;
	}
	/* Checked before anything is bound: whoever writes etcd must not make
	 * this relay listen on a port outside its pool, even for a moment. */
	for (int i = 0; i < TUN_PORT_MAX; i++) {
		int dup = 0;
		if (!(fl.roles & (int)TUN_ROLE_BIT(i)))
			continue;
		for (int k = 0; k < i; k++)
			dup |= (fl.roles & (int)TUN_ROLE_BIT(k)) && fl.ports[k] == fl.ports[i];
		if (dup || !relay_lease_port_usable(pr->t, (uint32_t)fl.ports[i])) {
			/* Two relays granted the port at once, and etcd gave it
			 * to this lease: ours fails, then the lease is bound. */
			if (!kv->warned && !dup && ports_pending(f, &fl))
				SR_INFO(FL_CTX, "lease=%s: port %d is held here by a grant etcd "
						"has not answered yet; served once it ends",
					id, fl.ports[i]);
			else if (!kv->warned)
				SR_WARN(FL_CTX, "lease=%s: port %d is outside pool %s's range "
						"(%u-%u), repeated, or held by another lease here; "
						"not served here",
					id, fl.ports[i], pr->name, pr->opts.port_min,
					pr->opts.port_max);
			kv->warned = 1;
			json_decref(j);
			return;
		}
	}
	memset(&st, 0, sizeof(st));
	for (int i = 0; i < TUN_PORT_MAX; i++)
		st.fds[i] = -1;
	if (sr_random_hex(resume, 32) != 0) {
		json_decref(j);
		return;
	}
	/* The local token is never shown: resumes go by the digest in etcd. */
	st.id = id;
	st.app = fl.app;
	st.resume = resume;
	st.roles = (unsigned)fl.roles;
	st.ttl_s = r->o->lease_grace_s;
	for (int i = 0; i < TUN_PORT_MAX; i++) {
		if (!(st.roles & TUN_ROLE_BIT(i)))
			continue;
		st.ports[i] = (uint16_t)fl.ports[i];
		st.fds[i] = bind_port(pr, fl.ports[i]);
		if (st.fds[i] < 0) {
			/* another program holds the port: it may let go */
			int busy = errno == EADDRINUSE;
			if (!kv->warned)
				SR_WARN(FL_CTX, "lease=%s: cannot bind port %d here: %s%s", id,
					fl.ports[i], strerror(busy ? EADDRINUSE : errno),
					busy ? "; trying again" : "");
			kv->warned = 1;
			if (busy && !evtimer_pending(f->bind_retry, NULL))
				retry_later(f->bind_retry, &f->bind_backoff_ms);
			for (int k = 0; k < TUN_PORT_MAX; k++)
				if (st.fds[k] >= 0)
					close(st.fds[k]);
			json_decref(j);
			return;
		}
	}
	rv = relay_lease_adopt(pr->t, &st, &l);
	if (rv != 0) {
		if (!kv->warned)
			SR_WARN(FL_CTX, "lease=%s: cannot take it here: %s", id, sr_strerror(rv));
		kv->warned = 1;
		json_decref(j);
		return;
	}
	lx = calloc(1, sizeof(*lx));
	if (lx) {
		struct tun_group_opts go = {.hold_ms = r->o->resume_hold_s * 1000u};
		char gctx[96];
		snprintf(gctx, sizeof(gctx), "lease=%s", id);
		lx->group = tun_group_new(r->base, TUN_ROLE_RELAY, &go, gctx);
	}
	if (!lx || !lx->group) {
		free(lx);
		relay_lease_release(l);
		json_decref(j);
		return;
	}
	tun_group_set_lease(lx->group, id);
	lx->relay = r;
	lx->lease = l;
	lx->pool = pr;
	lx->pol = r->pol;
	lx->pol->refs++;
	lx->route = route;
	lx->tenant = tenant;
	lx->detached_us = sr_now_us();
	snprintf(lx->tenant_name, sizeof(lx->tenant_name), "%s", fl.tenant);
	snprintf(lx->route_name, sizeof(lx->route_name), "%s", fl.route);
	snprintf(lx->idkey, sizeof(lx->idkey), "%s", fl.idkey);
	lx->ncarried = fwds_counted(f, id);
	relay_lease_set_data(l, lx);
	json_decref(j);
	if (relay_tenant_add(r, lx) != 0) {
		relay_lease_set_data(l, NULL);
		relay_lease_ext_free(lx);
		relay_lease_release(l);
		return;
	}
	relay_lease_listen(l, 1);
	kv->warned = 0;
	SR_INFO(FL_CTX, "lease=%s: serving its ports here (driver %u)", id,
		relay_lease_port(l, TUN_PORT_DRIVER));
}

static void regs_forget(struct relay_fleet *f, struct relay_lease_ext *lx);
static struct etcd_op *lease_txn(struct relay_fleet *f, struct relay_lease_ext *lx,
				 int64_t grace, const char *json, int read_on_fail, etcd_cb cb,
				 void *arg, char *e, size_t elen);
static char *lease_json_now(struct relay_lease_ext *lx);
static char *lease_json_remade(struct relay_lease_ext *lx, const struct fl_held *h);
static void held_reclaim(struct relay_fleet *f, const char *id);

/* Ports here may have come free (a new lease dropped, or a registration
 * ended): registrations that waited for one look again, after this event. */
static void ports_freed(struct relay_fleet *f)
{
	for (struct fleet_reg *g = f->regs; g; g = g->next)
		if (g->phase == REG_PORTS) {
			if (f->ports_ev)
				event_active(f->ports_ev, EV_TIMEOUT, 0);
			return;
		}
}

/* Drop the local lease (no etcd change). */
static void lease_drop_local(struct relay_lease_ext *lx)
{
	struct relay_lease *l = lx->lease;
	struct relay_fleet *f = lx->relay ? lx->relay->fleet : NULL;

	if (f)
		regs_forget(f, lx);
	relay_lease_set_data(l, NULL);
	relay_lease_ext_free(lx);
	relay_lease_release(l);
	if (f)
		ports_freed(f);
}

static int reg_owns(struct relay_fleet *f, const struct relay_lease_ext *lx)
{
	for (struct fleet_reg *g = f->regs; g; g = g->next)
		if (g->lx == lx && g->phase != REG_RESUME)
			return 1;
	return 0;
}

static void forward_waiting(struct relay_fleet *f, struct relay_lease_ext *lx);

/* A local lease that etcd no longer has (released, or its grace ran out)
 * and that nothing here keeps: no tunnel, no registration making it. */
static int lease_gone(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	char key[FL_KEY_MAX];

	snprintf(key, sizeof(key), "leases/%s", relay_lease_id(lx->lease));
	return !kv_find(f, key) && !reg_owns(f, lx);
}

#define FL_DROP_CHUNK 64

/* Make the local leases match the mirror.
 *
 * O(K + L) for K mirrored keys and L local leases, plus O(L x G) for the
 * G registrations waiting on etcd (reg_owns; G is small): lookups are
 * hashed both ways (kv_find, relay_find_id), and the leases to drop are
 * collected in one pass, then dropped, because a drop changes the lists
 * walked. (It was O(K x L): a scan of the mirror per lease, restarted
 * after every drop.) Only if the id array cannot be allocated are they
 * dropped FL_DROP_CHUNK per pass. */
static void reconcile(struct relay_fleet *f)
{
	struct relay *r = f->r;
	char(*ids)[TUN_CTL_LEASE_MAX], chunk[FL_DROP_CHUNK][TUN_CTL_LEASE_MAX];
	size_t n = 0, cap, dropped;
	int full;

	/* Handing over: what the leases are is being passed as it is. */
	if (f->frozen)
		return;
	for (struct fl_kv *kv = f->kvs; kv; kv = kv->next)
		if (strncmp(kv->key, "leases/", 7) == 0 && kv->skip_gen != r->st.reloads_ok + 1 &&
		    !relay_find_id(r, kv->key + 7))
			lease_bind(f, kv);
	for (struct relay_tenant_acct *a = r->tenants; a; a = a->next)
		for (struct relay_lease_ext *lx = a->leases; lx; lx = lx->tnext)
			n++;
	ids = n ? malloc(n * sizeof(*ids)) : NULL;
	cap = ids ? n : FL_DROP_CHUNK;
	if (!ids)
		ids = chunk;
	do {
		size_t k = 0;

		full = 0;
		dropped = 0;
		for (struct relay_tenant_acct *a = r->tenants; a && !full; a = a->next)
			for (struct relay_lease_ext *lx = a->leases; lx; lx = lx->tnext) {
				if (!lease_gone(f, lx))
					continue;
				if (lx->tunnel) {
					/* etcd lost it while a tunnel holds it
					 * here (etcd out of reach longer than the
					 * grace, or the grace lease revoked): its
					 * ports are free in the fleet, so it is
					 * made again, or ended if they are taken. */
					held_reclaim(f, relay_lease_id(lx->lease));
					continue;
				}
				if (k == cap) {
					full = 1;
					break;
				}
				snprintf(ids[k++], TUN_CTL_LEASE_MAX, "%s", relay_lease_id(lx->lease));
			}
		for (size_t i = 0; i < k; i++) {
			struct relay_lease *l = relay_find_id(r, ids[i]);
			struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
			if (!lx || lx->tunnel || !lease_gone(f, lx))
				continue;
			SR_INFO(FL_CTX, "lease=%s ended in the fleet; ports closed here", ids[i]);
			lease_drop_local(lx);
			dropped++;
		}
	} while (full && dropped);
	if (ids != chunk)
		free(ids);
	for (struct relay_tenant_acct *a = r->tenants; a; a = a->next)
		for (struct relay_lease_ext *lx = a->leases; lx; lx = lx->tnext)
			if (lx->pending && !lx->tunnel)
				forward_waiting(f, lx);
	/* A lease whose grace lease etcd lost (no keeper here now) but that
	 * this copy never showed gone, a delete and a put seen together:
	 * another relay made it again, on a grace lease to keep from now on. */
	for (struct fl_held *h = f->held; h; h = h->next) {
		char key[FL_KEY_MAX];

		snprintf(key, sizeof(key), "leases/%s", h->id);
		if (!h->k && !h->op && kv_find(f, key))
			held_reclaim(f, h->id);
	}
}

/* ---- range + watch --------------------------------------------------------- */

static void sync_start(struct relay_fleet *f);
static void regs_wake(struct relay_fleet *f);
static void stale_caught_up(struct relay_fleet *f);

static void sync_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	sync_start(arg);
}

/* Again later: 1 s, doubled at each failure in a row up to FL_RETRY_MAX_MS,
 * +-25 % (*backoff_ms holds the last delay; 0 after a success). A fixed
 * second had every relay of a fleet ask a struggling etcd again at once:
 * past 64 MiB of keys, the whole table every second and a half. */
static void retry_later(struct event *ev, long *backoff_ms)
{
	struct timeval tv = sr_tv_ms(sr_backoff(backoff_ms, FL_RETRY_MS, FL_RETRY_MAX_MS));

	evtimer_add(ev, &tv);
}

static void self_restore(struct relay_fleet *f);

/* Is key (under the prefix) one this relay writes with its etcd lease:
 * relays/<id> or tunnels/<lease>/<id>? */
static int is_self_key(const struct relay_fleet *f, const char *key)
{
	size_t n = strlen(key), m = strlen(f->id);

	if (strncmp(key, "relays/", 7) == 0)
		return strcmp(key + 7, f->id) == 0;
	return strncmp(key, "tunnels/", 8) == 0 && n > 8 + m + 1 &&
	       key[n - m - 1] == '/' && strcmp(key + n - m, f->id) == 0;
}

static struct fl_held *held_find(struct relay_fleet *f, const char *id);

/* A tunnels/<lease>/<id> of this relay for a lease without a tunnel here:
 * a put of it (a restore, or an attach) that etcd applied after the delete
 * that followed it. Other relays would carry the lease's executors here
 * for good: delete it. Not while a handover is under way (the keys are the
 * other process's too). */
static void drop_stray_tunnels_key(struct relay_fleet *f, const struct etcd_kv *kv)
{
	const char *k = kv->key + f->plen, *lease;
	size_t n, m = strlen(f->id);
	char id[TUN_CTL_LEASE_MAX];
	struct etcd_req rq = {.type = ETCD_DELETE};

	if (kv->key_len <= f->plen || memcmp(kv->key, f->prefix, f->plen) != 0 ||
	    memchr(kv->key, '\0', kv->key_len) || strncmp(k, "tunnels/", 8) != 0 ||
	    !is_self_key(f, k) || f->frozen || f->draining || !f->self_keeper)
		return;
	lease = k + 8;
	n = strlen(lease) - m - 1;
	if (n == 0 || n >= sizeof(id))
		return;
	memcpy(id, lease, n);
	id[n] = '\0';
	if (held_find(f, id))
		return;
	rq.key = kv->key;
	rq.key_len = kv->key_len;
	fire(f, &rq, "delete a stray tunnels key");
}

static void watch_events(const struct etcd_event *ev, size_t n, int64_t revision, void *arg)
{
	struct relay_fleet *f = arg;
	int self_deleted = 0;

	/* Events come whole and in revision order; a progress notification
	 * (n 0) says every change up to revision has come. */
	if (n && ev[n - 1].kv.mod_revision > f->seen_rev)
		f->seen_rev = ev[n - 1].kv.mod_revision;
	else if (!n && revision > f->seen_rev)
		f->seen_rev = revision;
	for (size_t i = 0; i < n; i++) {
		const struct etcd_kv *kv = &ev[i].kv;
		if (ev[i].type == ETCD_EV_PUT) {
			if (kv_put(f, kv->key, kv->key_len, kv->value, kv->value_len, kv->lease,
				   kv->mod_revision) != 0)
				SR_WARN(FL_CTX, "out of memory for the mirror");
			else
				drop_stray_tunnels_key(f, kv);
		} else if (kv->key_len > f->plen && memcmp(kv->key, f->prefix, f->plen) == 0) {
			if (memchr(kv->key, '\0', kv->key_len)) {
				kv_nul_key(f);
			} else {
				kv_del(f, kv->key + f->plen);
				self_deleted |= is_self_key(f, kv->key + f->plen);
			}
		}
	}
	if (self_deleted)
		self_restore(f);
	if (n)
		reconcile(f);
	stale_caught_up(f);
}

static void watch_compacted(int64_t rev, void *arg)
{
	struct relay_fleet *f = arg;

	SR_WARN(FL_CTX, "watch fell behind etcd's compaction (revision %" PRId64
			"); reading every key again",
		rev);
	etcd_watch_free(f->watch);
	f->watch = NULL;
	sync_start(f);
}

static void watch_error(int err, const char *msg, void *arg)
{
	(void)arg;
	SR_WARN(FL_CTX, "etcd watch broke (%s): %s; reconnecting", etcd_strerror(err), msg);
}

static void read_reset(struct fl_read *rd)
{
	for (size_t i = 0; i < rd->n; i++) {
		free(rd->kv[i].key);
		free(rd->kv[i].val);
	}
	free(rd->kv);
	free(rd->next);
	memset(rd, 0, sizeof(*rd));
}

/* Copies the keys of a page that the mirror keeps (kv_wanted), counting
 * every key read in rd->seen. Returns 0 or SR_ENOMEM. */
static int read_keep(struct relay_fleet *f, const struct etcd_result *res)
{
	struct fl_read *rd = &f->rd;

	for (size_t i = 0; i < res->nkvs && rd->n < FL_MAX_KEYS; i++) {
		const struct etcd_kv *kv = &res->kvs[i];
		struct fl_rkv *k;

		rd->seen++;
		if (kv->key_len <= f->plen || memcmp(kv->key, f->prefix, f->plen) != 0 ||
		    !kv_wanted(f, kv->key, kv->key_len, kv->value_len))
			continue;
		if (rd->n == rd->cap) {
			size_t cap = rd->cap ? 2 * rd->cap : 1024;
			struct fl_rkv *nk = realloc(rd->kv, cap * sizeof(*nk));

			if (!nk)
				return SR_ENOMEM;
			rd->kv = nk;
			rd->cap = cap;
		}
		k = &rd->kv[rd->n];
		k->key = malloc(kv->key_len + 1);
		k->val = malloc(kv->value_len + 1);
		if (!k->key || !k->val) {
			free(k->key);
			free(k->val);
			return SR_ENOMEM;
		}
		memcpy(k->key, kv->key, kv->key_len);
		memcpy(k->val, kv->value, kv->value_len);
		k->key[kv->key_len] = '\0';
		k->val[kv->value_len] = '\0';
		k->klen = kv->key_len;
		k->vlen = kv->value_len;
		k->lease = kv->lease;
		k->mod = kv->mod_revision;
		rd->n++;
	}
	return 0;
}

static void sync_page(struct relay_fleet *f);

/* The read failed (logged): it begins again later. */
static void sync_failed(struct relay_fleet *f, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void sync_failed(struct relay_fleet *f, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	SR_WARN(FL_CTX, "%s", why);
	read_reset(&f->rd);
	retry_later(f->sync_retry, &f->sync_backoff_ms);
}

/* The mirror becomes what the read found, except for keys this relay wrote
 * itself after the read's revision (a lease granted or resumed meanwhile):
 * those stay, as the watch that carries on from the read's revision brings
 * them again anyway. A key the read found unchanged keeps its entry (and
 * the digests and bind state read from it). Returns 0 or SR_ENOMEM, which
 * leaves the mirror part old, part new, for the next read to mend. */
static int sync_swap(struct relay_fleet *f)
{
	struct fl_read *rd = &f->rd;
	struct fl_kv *kv, *next;

	for (kv = f->kvs; kv; kv = kv->next)
		kv->sweep = kv->mod <= rd->rev;
	for (size_t i = 0; i < rd->n; i++) {
		const struct fl_rkv *k = &rd->kv[i];
		struct fl_kv *old = NULL;

		if (k->klen > f->plen && !memchr(k->key, '\0', k->klen))
			old = kv_find(f, k->key + f->plen);
		if (old && old->mod >= k->mod) {
			old->sweep = 0;
			continue;
		}
		if (kv_put(f, k->key, k->klen, k->val, k->vlen, k->lease, k->mod) != 0)
			return SR_ENOMEM;
	}
	for (kv = f->kvs; kv; kv = next) {
		next = kv->next;
		if (kv->sweep)
			kv_free(f, kv);
	}
	return 0;
}

/* The read is complete: a watch carries on from its revision, and the
 * mirror becomes what it read. */
static void sync_done(struct relay_fleet *f)
{
	struct fl_read *rd = &f->rd;
	struct etcd_watch_opts wo;
	char e[256];

	memset(&wo, 0, sizeof(wo));
	wo.key = f->prefix;
	wo.key_len = f->plen;
	wo.prefix = 1;
	wo.start_revision = rd->rev + 1;
	/* A watch can go silent without breaking; etcd's progress
	 * notifications keep a live one talking. */
	wo.progress_notify = 1;
	wo.idle_ms = f->watch_idle_ms;
	wo.events = watch_events;
	wo.compacted = watch_compacted;
	wo.error = watch_error;
	wo.arg = f;
	f->watch = etcd_watch_new(f->etcd, &wo, e, sizeof(e));
	if (!f->watch) {
		sync_failed(f, "cannot watch etcd: %s; retrying", e);
		return;
	}
	if (sync_swap(f) != 0) {
		etcd_watch_free(f->watch);
		f->watch = NULL;
		sync_failed(f, "out of memory for the mirror; retrying");
		return;
	}
	if (!f->synced)
		SR_INFO(FL_CTX,
			"lease table read from etcd (%zu keys in %u page%s, revision %" PRId64
			")",
			rd->seen, rd->pages, rd->pages == 1 ? "" : "s", rd->rev);
	f->synced = 1;
	f->seen_rev = rd->rev;
	f->sync_backoff_ms = 0;
	read_reset(rd);
	reconcile(f);
	regs_wake(f);
	stale_caught_up(f);
}

static void sync_ranged(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;
	struct fl_read *rd = &f->rd;
	const struct etcd_kv *last;
	size_t had = rd->seen;

	if ((err == SR_ETOOBIG || (err == SR_ETIMEDOUT && res->partial)) && f->page_keys > 1) {
		/* Values of other writers under the prefix can be large: too
		 * large for an answer, or for the path to etcd to bring one
		 * within the timeout (it timed out with part of it come; none:
		 * etcd or the path is down, which a smaller page does not mend). */
		f->page_keys = f->page_keys > 8 ? f->page_keys / 8 : 1;
		if (err == SR_ETOOBIG)
			SR_INFO(FL_CTX, "a page of the fleet's keys was over %u MiB; reading %" PRId64
					" keys a page",
				FL_MAX_ANSWER >> 20, f->page_keys);
		else
			SR_INFO(FL_CTX, "a page of the fleet's keys did not come whole in time (%zu "
					"bytes did); reading %" PRId64 " keys a page",
				res->partial, f->page_keys);
		sync_page(f);
		return;
	}
	if (err) {
		/* An etcd that compacted the first page's revision meanwhile
		 * answers an error too: the read begins again. */
		sync_failed(f, "cannot read the fleet's keys from etcd (%s): %s; retrying",
			    etcd_strerror(err), res->msg);
		return;
	}
	if (!rd->rev)
		rd->rev = res->revision;
	rd->pages++;
	if (read_keep(f, res) != 0) {
		sync_failed(f, "out of memory for the mirror; retrying");
		return;
	}
	if (rd->seen - had < res->nkvs || (res->more && rd->n >= FL_MAX_KEYS)) {
		kv_full(f); /* the rest are ignored */
		sync_done(f);
		return;
	}
	if (!res->more || !res->nkvs) {
		sync_done(f);
		return;
	}
	last = &res->kvs[res->nkvs - 1];
	free(rd->next);
	rd->next = malloc(last->key_len + 1);
	if (!rd->next) {
		sync_failed(f, "out of memory for the mirror; retrying");
		return;
	}
	memcpy(rd->next, last->key, last->key_len);
	rd->next[last->key_len] = '\0'; /* the first key after it */
	rd->next_len = last->key_len + 1;
	sync_page(f);
}

/* The next page of the read (the first: rd->rev 0, "now"). */
static void sync_page(struct relay_fleet *f)
{
	struct fl_read *rd = &f->rd;
	struct etcd_req rq = {.type = ETCD_RANGE, .key = f->prefix, .key_len = f->plen, .prefix = 1};
	char e[256];

	rq.limit = f->page_keys;
	rq.revision = rd->rev;
	rq.from = rd->next;
	rq.from_len = rd->next_len;
	if (!etcd_kv(f->etcd, &rq, sync_ranged, f, e, sizeof(e)))
		sync_failed(f, "cannot read etcd: %s", e);
}

static void sync_start(struct relay_fleet *f)
{
	read_reset(&f->rd);
	sync_page(f);
}

/* ---- the relay's own registration ------------------------------------------- */

static void self_start(struct relay_fleet *f);
static void withdraw(struct relay_fleet *f);

static void put_tunnel_key(struct relay_fleet *f, const char *lease_id)
{
	char key[FL_KEY_MAX];
	struct etcd_req rq = {.type = ETCD_PUT, .value = "", .value_len = 0};

	if (!f->self_lease || f->draining ||
	    mkkey(f, key, sizeof(key), "tunnels/%s/%s", lease_id, f->id) < 0)
		return;
	rq.key = key;
	rq.key_len = strlen(key);
	rq.lease = f->self_lease;
	fire(f, &rq, "put tunnels key");
}

static void self_lost(int err, const char *msg, void *arg)
{
	struct relay_fleet *f = arg;

	SR_WARN(FL_CTX, "this relay's registration in etcd is lost (%s: %s); registering again",
		etcd_strerror(err), msg);
	etcd_keeper_free(f->self_keeper);
	f->self_keeper = NULL;
	f->self_lease = 0;
	/* Frozen for a handover: the new process may have replaced it. */
	if (f->frozen)
		f->need_self = 1;
	else
		self_start(f);
}

static void self_put(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;

	if (f->draining) {
		withdraw(f);
		return;
	}
	if (err) {
		SR_WARN(FL_CTX, "cannot register this relay in etcd (%s): %s; retrying",
			etcd_strerror(err), res->msg);
		fl_revoke(f, f->self_lease, "revoke unused relay lease");
		f->self_lease = 0;
		retry_later(f->self_retry, &f->self_backoff_ms);
		return;
	}
	f->self_keeper = etcd_keeper_new(f->etcd, f->self_lease, f->ttl_s, self_lost, f);
	if (!f->self_keeper) {
		f->self_lease = 0;
		retry_later(f->self_retry, &f->self_backoff_ms);
		return;
	}
	f->self_backoff_ms = 0;
	f->registered_once = 1;
	SR_INFO(FL_CTX, "registered in the fleet as %s (peer address %s)", f->id, f->advertise);
	for (struct fl_held *h = f->held; h; h = h->next)
		put_tunnel_key(f, h->id);
}

/* The put of relays/<id>: other relays read the peer address from it. */
static void self_req(struct relay_fleet *f, struct etcd_req *rq, char key[FL_KEY_MAX],
		     char val[600])
{
	mkkey(f, key, FL_KEY_MAX, "relays/%s", f->id);
	snprintf(val, 600, "{\"peer\":\"%s\",\"tunnel\":\"%s\"}", f->advertise,
		 f->r->o->listen);
	*rq = (struct etcd_req){.type = ETCD_PUT,
				.key = key,
				.key_len = strlen(key),
				.value = val,
				.value_len = strlen(val),
				.lease = f->self_lease};
}

/* relays/<id> or a tunnels/<lease>/<id> was deleted while the relay's etcd
 * lease lives (an operator's etcdctl del, a clean-up script): other relays
 * would carry no executor here (of that lease) until the relay registered
 * again, which it does only when the lease ends. A pass writes back what
 * the mirror lacks, in one transaction; one pass at a time, another after
 * it if more went meanwhile, and a failed one is tried again later. A delete
 * that came from the lease's end fails with NotFound: the keeper then
 * registers afresh, and this gives up. */
static void restore_done(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;

	f->restore_op = NULL;
	if (err && res->code == 5) /* NotFound: this relay's etcd lease is gone */
		return;
	if (err) {
		SR_WARN(FL_CTX, "cannot write this relay's keys back to etcd: %s; retrying",
			res->msg);
		retry_later(f->restore_ev, &f->restore_backoff_ms);
		return;
	}
	f->restore_backoff_ms = 0;
	if (f->restore_again) {
		f->restore_again = 0;
		event_active(f->restore_ev, EV_TIMEOUT, 0);
	}
}

static void restore_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_fleet *f = arg;
	/* the registration, then tunnels keys; keys and values live until the
	 * call returns (the request copies them) */
	static char keys[ETCD_MAX_TXN_OPS][FL_KEY_MAX];
	struct etcd_req rq[ETCD_MAX_TXN_OPS];
	char val[600], e[256];
	size_t n = 0, tunnels = 0;
	int self_missing;

	(void)fd;
	(void)what;
	if (!f->self_keeper || !f->self_lease || f->draining || f->frozen || f->restore_op)
		return;
	snprintf(keys[0], sizeof(keys[0]), "relays/%s", f->id);
	self_missing = !kv_find(f, keys[0]);
	if (self_missing) {
		self_req(f, &rq[0], keys[0], val);
		n = 1;
	}
	for (struct fl_held *h = f->held; h && n < ETCD_MAX_TXN_OPS; h = h->next) {
		if (mkkey(f, keys[n], sizeof(keys[n]), "tunnels/%s/%s", h->id, f->id) < 0 ||
		    kv_find(f, keys[n] + f->plen))
			continue;
		rq[n] = (struct etcd_req){.type = ETCD_PUT,
					  .key = keys[n],
					  .key_len = strlen(keys[n]),
					  .value = "",
					  .lease = f->self_lease};
		n++;
		tunnels++;
	}
	if (!n)
		return;
	SR_WARN(FL_CTX, "keys of this relay were deleted from etcd (%s%zu tunnels keys); "
			"writing them again",
		self_missing ? "its registration relays/<id>, " : "", tunnels);
	f->restore_op = etcd_txn(f->etcd, NULL, 0, rq, n, NULL, 0, restore_done, f, e, sizeof(e));
	if (!f->restore_op) {
		SR_WARN(FL_CTX, "cannot write this relay's keys back to etcd: %s", e);
		retry_later(f->restore_ev, &f->restore_backoff_ms);
	}
}

static void self_restore(struct relay_fleet *f)
{
	if (f->restore_op)
		f->restore_again = 1;
	else if (!evtimer_pending(f->restore_ev, NULL))
		event_active(f->restore_ev, EV_TIMEOUT, 0);
}

static void self_old(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;
	char key[FL_KEY_MAX], e[256], val[600];
	struct etcd_req rq;

	if (err) {
		self_put(err, res, f);
		return;
	}
	/* A predecessor with this id: its tunnels keys are stale. */
	if (res->nkvs == 1 && res->kvs[0].lease && res->kvs[0].lease != f->self_lease) {
		SR_INFO(FL_CTX, "replacing an earlier registration of %s", f->id);
		fl_revoke(f, res->kvs[0].lease, "revoke the previous registration");
	}
	self_req(f, &rq, key, val);
	if (!etcd_kv(f->etcd, &rq, self_put, f, e, sizeof(e))) {
		SR_WARN(FL_CTX, "%s", e);
		retry_later(f->self_retry, &f->self_backoff_ms);
	}
}

static void self_granted(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;
	char key[FL_KEY_MAX], e[256];
	struct etcd_req rq = {.type = ETCD_RANGE};

	if (err) {
		SR_WARN(FL_CTX, "cannot get an etcd lease for this relay (%s): %s; retrying",
			etcd_strerror(err), res->msg);
		retry_later(f->self_retry, &f->self_backoff_ms);
		return;
	}
	f->self_lease = res->lease;
	mkkey(f, key, sizeof(key), "relays/%s", f->id);
	rq.key = key;
	rq.key_len = strlen(key);
	if (!etcd_kv(f->etcd, &rq, self_old, f, e, sizeof(e))) {
		SR_WARN(FL_CTX, "%s", e);
		retry_later(f->self_retry, &f->self_backoff_ms);
	}
}

static void self_start(struct relay_fleet *f)
{
	char e[256];

	if (f->draining)
		return;
	if (!etcd_lease_grant(f->etcd, f->ttl_s, self_granted, f, e, sizeof(e))) {
		SR_WARN(FL_CTX, "%s", e);
		retry_later(f->self_retry, &f->self_backoff_ms);
	}
}

static void self_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	self_start(arg);
}

static void withdrawn(int err, const struct etcd_result *res, void *arg)
{
	struct relay_fleet *f = arg;

	f->withdrawing = 0;
	if (err)
		SR_WARN(FL_CTX, "cannot withdraw from the fleet (%s): %s; other relays stop "
				"dialling this one within %u s",
			etcd_strerror(err), res->msg, f->ttl_s);
	else
		SR_INFO(FL_CTX, "withdrawn from the fleet");
}

/* Revoking the relay's etcd lease deletes relays/<id> and every
 * tunnels/<lease>/<id> at once. */
static void withdraw(struct relay_fleet *f)
{
	char e[256];

	if (!f->self_lease)
		return;
	if (etcd_lease_revoke(f->etcd, f->self_lease, withdrawn, f, e, sizeof(e)))
		f->withdrawing = 1;
	else
		SR_WARN(FL_CTX, "cannot withdraw from the fleet: %s", e);
	f->self_lease = 0;
}

void relay_fleet_drain(struct relay_fleet *f)
{
	f->draining = 1;
	evtimer_del(f->self_retry);
	etcd_keeper_free(f->self_keeper);
	f->self_keeper = NULL;
	SR_INFO(FL_CTX, "draining: withdrawing from the fleet");
	withdraw(f);
}

void relay_fleet_stats(const struct relay_fleet *f, struct relay_stats *st)
{
	st->fleet = 1;
	st->fleet_registered = f->self_keeper != NULL;
	st->fleet_table_read = f->synced;
	st->fleet_joined = f->synced && f->registered_once;
	st->fleet_carried = f->forwarded;
	st->fleet_carry_failed = f->forward_failed;
	st->fleet_revision = f->seen_rev > 0 ? (uint64_t)f->seen_rev : 0;
	st->fleet_leases = 0;
	for (const struct fl_kv *kv = f->kvs; kv; kv = kv->next)
		st->fleet_leases += strncmp(kv->key, "leases/", 7) == 0;
}

int relay_fleet_registered(const struct relay_fleet *f)
{
	return f->self_keeper != NULL;
}

size_t relay_fleet_carrying(const struct relay_fleet *f)
{
	size_t n = 0;

	for (const struct fl_fwd *w = f->fwds; w; w = w->next)
		n++;
	return n;
}

int relay_fleet_withdrawing(const struct relay_fleet *f)
{
	return f->withdrawing;
}

/* ---- leases held here ----------------------------------------------------- */

static struct fl_held *held_find(struct relay_fleet *f, const char *id)
{
	for (struct fl_held *h = f->held; h; h = h->next)
		if (strcmp(h->id, id) == 0)
			return h;
	return NULL;
}

static void held_free(struct relay_fleet *f, struct fl_held *h, int delete_key)
{
	char key[FL_KEY_MAX];

	for (struct fl_held **pp = &f->held; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	if (delete_key && mkkey(f, key, sizeof(key), "tunnels/%s/%s", h->id, f->id) > 0) {
		struct etcd_req rq = {.type = ETCD_DELETE, .key = key, .key_len = strlen(key)};
		fire(f, &rq, "delete tunnels key");
	}
	etcd_keeper_free(h->k);
	etcd_cancel(h->op);
	fl_revoke(f, h->newgrace, "revoke an unused grace lease");
	if (h->retry)
		event_free(h->retry);
	free(h->json);
	free(h);
}

static void grace_lost(int err, const char *msg, void *arg)
{
	struct fl_held *h = arg;
	struct relay_fleet *f = h->f;

	etcd_keeper_free(h->k);
	h->k = NULL;
	if (err == SR_ENOTFOUND) {
		SR_WARN(FL_CTX, "lease=%s: its grace lease is gone from etcd", h->id);
		held_reclaim(f, h->id);
		return;
	}
	/* etcd unreachable: keep trying; the lease is served meanwhile. */
	SR_WARN(FL_CTX, "lease=%s: cannot keep its grace lease alive (%s); still trying", h->id,
		msg);
	h->k = etcd_keeper_new(f->etcd, h->grace, f->r->o->lease_grace_s > FL_GRACE_MIN_S
							 ? f->r->o->lease_grace_s
							 : FL_GRACE_MIN_S,
			       grace_lost, h);
}

static int64_t lease_grace_of(struct relay_fleet *f, const char *id)
{
	char key[FL_KEY_MAX];
	struct fl_kv *kv;

	snprintf(key, sizeof(key), "leases/%s", id);
	kv = kv_find(f, key);
	return kv ? kv->lease : 0;
}

static void reclaim_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fl_held *h = arg;

	(void)fd;
	(void)what;
	held_reclaim(h->f, h->id);
}

static void reclaim_later(struct fl_held *h)
{
	fl_revoke(h->f, h->newgrace, "revoke an unused grace lease");
	h->newgrace = 0;
	if (h->retry)
		retry_later(h->retry, &h->backoff_ms);
}

/* A failed reclaim's reads: leases/<id> is back and every port is id's. */
static int remade_elsewhere(const char *id, const struct etcd_result *res)
{
	if (res->nops < 2 || res->ops[0].nkvs != 1 || res->ops[0].kvs[0].lease <= 0)
		return 0;
	for (size_t i = 1; i < res->nops; i++) {
		const struct etcd_result *o = &res->ops[i];
		if (o->nkvs != 1 || o->kvs[0].value_len != strlen(id) ||
		    memcmp(o->kvs[0].value, id, o->kvs[0].value_len) != 0)
			return 0;
	}
	return 1;
}

static void reclaim_done(int err, const struct etcd_result *res, void *arg)
{
	struct fl_held *h = arg;
	struct relay_fleet *f = h->f;
	struct relay_lease *l = relay_find_id(f->r, h->id);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
	char key[FL_KEY_MAX];
	uint32_t ttl = f->r->o->lease_grace_s > FL_GRACE_MIN_S ? f->r->o->lease_grace_s
							       : FL_GRACE_MIN_S;

	h->op = NULL;
	if (err) {
		SR_WARN(FL_CTX, "lease=%s: cannot make it again in etcd (%s); retrying", h->id,
			res->msg);
		reclaim_later(h);
		return;
	}
	if (!res->succeeded && remade_elsewhere(h->id, res)) {
		/* Another relay with a tunnel of it made it again first. */
		fl_revoke(f, h->newgrace, "revoke an unused grace lease");
		h->newgrace = 0;
		etcd_keeper_free(h->k);
		h->grace = res->ops[0].kvs[0].lease;
		h->k = etcd_keeper_new(f->etcd, h->grace, ttl, grace_lost, h);
		h->backoff_ms = 0;
		SR_INFO(FL_CTX, "lease=%s: made again in etcd by another relay", h->id);
		return;
	}
	if (!res->succeeded) {
		/* Its id or a port belongs to another lease now: executors of
		 * that one must not reach this one's driver. */
		reclaim_later(h);
		if (!lx || !lx->tunnel)
			return;
		SR_WARN(FL_CTX, "lease=%s: etcd lost it and its ports went to another lease; "
				"ended here",
			h->id);
		relay_lease_end_tunnels(lx, "revoked",
					"the fleet's lease table lost this lease and its ports went "
					"to another; register again");
		relay_release_lease(lx); /* frees h */
		return;
	}
	etcd_keeper_free(h->k);
	h->grace = h->newgrace;
	h->newgrace = 0;
	h->k = etcd_keeper_new(f->etcd, h->grace, ttl, grace_lost, h);
	snprintf(key, sizeof(key), "%sleases/%s", f->prefix, h->id);
	kv_put(f, key, strlen(key), h->json, strlen(h->json), h->grace, res->revision);
	h->backoff_ms = 0;
	SR_INFO(FL_CTX, "lease=%s: made again in etcd after etcd lost it", h->id);
}

static void reclaim_granted(int err, const struct etcd_result *res, void *arg)
{
	struct fl_held *h = arg;
	struct relay_fleet *f = h->f;
	struct relay_lease *l = relay_find_id(f->r, h->id);
	struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
	char e[256];

	h->op = NULL;
	if (err) {
		SR_WARN(FL_CTX, "lease=%s: cannot make it again in etcd (%s); retrying", h->id,
			res->msg);
		reclaim_later(h);
		return;
	}
	h->newgrace = res->lease;
	free(h->json);
	h->json = lx && lx->tunnel ? lease_json_remade(lx, h) : NULL;
	if (h->json)
		h->op = lease_txn(f, lx, h->newgrace, h->json, 1, reclaim_done, h, e, sizeof(e));
	if (!h->op)
		reclaim_later(h);
}

/* h keeps grace alive: the grace lease leases/<id> is on now. */
static void held_keep(struct relay_fleet *f, struct fl_held *h, int64_t grace)
{
	uint32_t ttl =
	    f->r->o->lease_grace_s > FL_GRACE_MIN_S ? f->r->o->lease_grace_s : FL_GRACE_MIN_S;

	if (h->k && h->grace == grace)
		return;
	etcd_keeper_free(h->k);
	h->grace = grace;
	h->k = grace ? etcd_keeper_new(f->etcd, grace, ttl, grace_lost, h) : NULL;
}

/* etcd lost lease id while a tunnel holds it here: make its keys again on
 * a new grace lease, only if none of them exists meanwhile. If another
 * relay with a tunnel of it made it again first (and this one's copy never
 * showed the key gone), keep that grace lease alive instead: with the old
 * one dead, nothing here would, and the lease would expire when that relay
 * goes. */
static void held_reclaim(struct relay_fleet *f, const char *id)
{
	struct fl_held *h = held_find(f, id);
	char key[FL_KEY_MAX], e[256];
	uint32_t ttl = f->r->o->lease_grace_s > FL_GRACE_MIN_S ? f->r->o->lease_grace_s
							       : FL_GRACE_MIN_S;
	struct fl_kv *kv;

	snprintf(key, sizeof(key), "leases/%s", id);
	if (!h || h->op || !f->synced)
		return;
	if ((kv = kv_find(f, key))) {
		if (kv->lease > 0 && kv->lease != h->grace) {
			SR_INFO(FL_CTX, "lease=%s: made again in etcd by another relay", id);
			held_keep(f, h, kv->lease);
		}
		return;
	}
	if (!h->retry && !(h->retry = evtimer_new(f->base, reclaim_retry_cb, h)))
		return;
	evtimer_del(h->retry);
	h->op = etcd_lease_grant(f->etcd, ttl, reclaim_granted, h, e, sizeof(e));
	if (!h->op)
		reclaim_later(h);
}

void relay_fleet_attached(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	const char *id = relay_lease_id(lx->lease);
	struct fl_held *h = held_find(f, id);
	int64_t grace;

	if (!h) {
		h = calloc(1, sizeof(*h));
		if (!h)
			return;
		char key[FL_KEY_MAX];
		struct fl_kv *kv;

		h->f = f;
		snprintf(h->id, sizeof(h->id), "%s", id);
		snprintf(key, sizeof(key), "leases/%s", id);
		if ((kv = kv_find(f, key)) != NULL && kv->dig)
			memcpy(h->dig, kv->dig, sizeof(h->dig));
		h->next = f->held;
		f->held = h;
		put_tunnel_key(f, id);
	}
	/* Without a keeper, the grace lease this copy shows now: another
	 * relay may have made the lease again on a new one meanwhile. (A
	 * running keeper stays: this copy may be older than what it keeps.) */
	if (!h->k) {
		grace = lease_grace_of(f, id);
		held_keep(f, h, grace ? grace : h->grace);
	}
}

/* Deferred so that a tunnel replaced by another on this relay (unlink,
 * then attach) does not delete the key the attach keeps. */
static void check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_fleet *f = arg;
	int again = 1;

	(void)fd;
	(void)what;
	/* Handing over: the new relay takes the tunnels keys and grace leases
	 * as its sidecars resume; until then they stay (thaw runs this). */
	if (f->frozen)
		return;
	while (again) {
		again = 0;
		for (struct fl_held *h = f->held; h; h = h->next) {
			struct relay_lease *l = relay_find_id(f->r, h->id);
			struct relay_lease_ext *lx = l ? relay_lease_data(l) : NULL;
			if (lx && lx->tunnel)
				continue;
			held_free(f, h, 1);
			again = 1;
			break;
		}
	}
}

void relay_fleet_detached(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	(void)lx;
	event_active(f->check_ev, EV_TIMEOUT, 0);
}

void relay_fleet_released(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	const char *id = relay_lease_id(lx->lease);
	struct fl_held *h = held_find(f, id);
	char key[FL_KEY_MAX];
	int64_t grace = lease_grace_of(f, id);

	regs_forget(f, lx);
	if (h) {
		if (!grace)
			grace = h->grace;
		held_free(f, h, 1);
	}
	/* Revoking the grace lease deletes leases/ and ports/ at once. */
	fl_revoke(f, grace, "revoke a released lease");
	snprintf(key, sizeof(key), "leases/%s", id);
	kv_del(f, key);
}

/* ---- registration ------------------------------------------------------------ */

static void reg_free(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;

	if (g->prev)
		g->prev->next = g->next;
	else
		f->regs = g->next;
	if (g->next)
		g->next->prev = g->prev;
	if (g->t)
		g->t->freg = NULL;
	if (g->op)
		etcd_cancel(g->op);
	if (g->deadline)
		event_free(g->deadline);
	free(g->json);
	/* A grant that ended keeps its ports (the lease is etcd's now) or
	 * dropped them: a registration waiting for them has its answer. */
	ports_freed(f);
	/* g->m holds the sidecar's bearer token and resume token, idkey a
	 * digest of the token. */
	OPENSSL_cleanse(g, sizeof(*g));
	free(g);
}

/* End a registration that did not succeed: its new lease goes (here and,
 * through its grace lease, in etcd). */
static void reg_fail(struct fleet_reg *g, const char *code, const char *text)
{
	struct relay_fleet *f = g->f;
	struct relay_lease_ext *lx;

	if (g->op) {
		etcd_cancel(g->op);
		g->op = NULL;
	}
	lx = g->lx;
	g->lx = NULL; /* before the drop, which ends registrations that hold it */
	if (lx && g->phase != REG_RESUME)
		lease_drop_local(lx);
	fl_revoke(f, g->grace, "revoke an ungranted lease");
	g->grace = 0;
	if (g->t && code)
		relay_tunnel_error(g->t, code, text);
	reg_free(g);
}

/* An etcd operation of g failed: g ends with fleet_unavailable (the sidecar
 * keeps its lease and token and tries again). Returns 1 then. */
static int reg_etcd_failed(struct fleet_reg *g, int err, const struct etcd_result *res)
{
	char text[200];

	if (!err)
		return 0;
	snprintf(text, sizeof(text), "the fleet's lease table (etcd): %s", res->msg);
	reg_fail(g, "fleet_unavailable", text);
	return 1;
}

/* A registration that waits on etcd with lx ends when lx does: a resume's
 * lease can be released by its old tunnel, revoked by an operator or
 * dropped because etcd lost it before the write answers. */
static void regs_forget(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	int again = 1;

	while (again) {
		again = 0;
		for (struct fleet_reg *g = f->regs; g; g = g->next) {
			if (g->lx != lx)
				continue;
			g->lx = NULL; /* not ours to drop: whoever ends it does */
			reg_fail(g, "unknown_lease",
				 "the lease ended while this registration waited for the fleet's "
				 "lease table; register again");
			again = 1;
			break;
		}
	}
}

static void reg_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fleet_reg *g = arg;
	char text[200];

	(void)fd;
	(void)what;
	snprintf(text, sizeof(text),
		 "the fleet's lease table (etcd) did not answer within %u ms; try again",
		 g->f->wait_ms);
	reg_fail(g, "fleet_unavailable", text);
}

static void reg_new(struct fleet_reg *g);

static void reg_txn_done(int err, const struct etcd_result *res, void *arg)
{
	struct fleet_reg *g = arg;
	struct relay_fleet *f = g->f;
	struct relay_lease_ext *lx = g->lx;
	struct relay_tunnel *t = g->t;
	char key[FL_KEY_MAX];

	g->op = NULL;
	if (reg_etcd_failed(g, err, res))
		return;
	if (!res->succeeded) {
		/* Another relay took one of these ports (or the id) at the same
		 * moment: try other ports. */
		SR_INFO(FL_CTX, "lease=%s: a port was granted elsewhere at the same time; "
				"trying other ports",
			relay_lease_id(lx->lease));
		g->lx = NULL;
		lease_drop_local(lx);
		/* The winner's lease may be in the mirror already, its ports
		 * unbound here while ours held them: bind them now, not at the
		 * next unrelated change in etcd. */
		reconcile(f);
		if (++g->tries >= FL_MAX_GRANT_TRIES) {
			reg_fail(g, "no_ports", "ports kept being taken by other relays; try again");
			return;
		}
		reg_new(g);
		return;
	}
	snprintf(key, sizeof(key), "%sleases/%s", f->prefix, relay_lease_id(lx->lease));
	kv_put(f, key, strlen(key), g->json, strlen(g->json), g->grace, res->revision);
	g->lx = NULL;
	g->grace = 0; /* now the lease's own */
	SR_INFO(FL_CTX, "lease=%s granted in the fleet in %llu ms", relay_lease_id(lx->lease),
		(unsigned long long)((sr_now_us() - g->started_us) / 1000u));
	reg_free(g);
	relay_tunnel_attach(t, lx, 1);
}

/* The transaction that makes leases/<id> and ports/<p> of lx on the etcd
 * lease grace, only if none of them exists; read_on_fail: else it reads
 * those keys (res->ops, in the same order). */
static struct etcd_op *lease_txn(struct relay_fleet *f, struct relay_lease_ext *lx,
				 int64_t grace, const char *json, int read_on_fail, etcd_cb cb,
				 void *arg, char *e, size_t elen)
{
	struct relay_lease *l = lx->lease;
	struct etcd_cmp cmp[1 + TUN_PORT_MAX];
	struct etcd_req ops[1 + TUN_PORT_MAX], reads[1 + TUN_PORT_MAX];
	char keys[1 + TUN_PORT_MAX][FL_KEY_MAX];
	struct relay_lease_state st;
	const char *id = relay_lease_id(l);
	size_t n = 0;

	relay_lease_get_state(l, &st);
	memset(cmp, 0, sizeof(cmp));
	memset(ops, 0, sizeof(ops));
	memset(reads, 0, sizeof(reads));
	mkkey(f, keys[0], sizeof(keys[0]), "leases/%s", id);
	cmp[0] = (struct etcd_cmp){.key = keys[0], .key_len = strlen(keys[0]),
				   .target = ETCD_CMP_CREATE, .op = ETCD_EQ, .number = 0};
	ops[0] = (struct etcd_req){.type = ETCD_PUT, .key = keys[0], .key_len = strlen(keys[0]),
				   .value = json, .value_len = strlen(json), .lease = grace};
	n = 1;
	for (int i = 0; i < TUN_PORT_MAX; i++) {
		if (!st.ports[i])
			continue;
		mkkey(f, keys[n], sizeof(keys[n]), "ports/%u", st.ports[i]);
		cmp[n] = (struct etcd_cmp){.key = keys[n], .key_len = strlen(keys[n]),
					   .target = ETCD_CMP_CREATE, .op = ETCD_EQ, .number = 0};
		ops[n] = (struct etcd_req){.type = ETCD_PUT, .key = keys[n],
					   .key_len = strlen(keys[n]), .value = id,
					   .value_len = strlen(id), .lease = grace};
		n++;
	}
	for (size_t i = 0; i < n; i++)
		reads[i] = (struct etcd_req){.type = ETCD_RANGE, .key = keys[i],
					     .key_len = strlen(keys[i])};
	return etcd_txn(f->etcd, cmp, n, ops, n, read_on_fail ? reads : NULL,
			read_on_fail ? n : 0, cb, arg, e, elen);
}

/* The value of leases/<id> for lx made again after etcd lost it: the resume
 * digest etcd last showed (the token the sidecar has), and this relay's
 * own token as the previous one when it differs (a resume here that the
 * mirror had not shown yet). Without a digest seen: this relay's token. */
static char *lease_json_remade(struct relay_lease_ext *lx, const struct fl_held *h)
{
	struct relay_lease_state st;
	char local[FL_DIGEST_HEX];

	if (!h->dig[0])
		return lease_json_now(lx);
	relay_lease_get_state(lx->lease, &st);
	sha256_hex(st.resume, local);
	return lease_json(lx, h->dig,
			  strcmp(local, h->dig) != 0 ? local : h->dig + FL_DIGEST_HEX);
}

/* The value of leases/<id> for lx, its resume token being the current one. */
static char *lease_json_now(struct relay_lease_ext *lx)
{
	struct relay_lease_state st;
	char resume[FL_DIGEST_HEX];

	relay_lease_get_state(lx->lease, &st);
	sha256_hex(st.resume, resume);
	return lease_json(lx, resume, "");
}

static void reg_txn(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;
	char e[256];

	free(g->json);
	g->json = lease_json_now(g->lx);
	if (!g->json) {
		reg_fail(g, "internal", "out of memory");
		return;
	}
	g->phase = REG_TXN;
	g->op = lease_txn(f, g->lx, g->grace, g->json, 0, reg_txn_done, g, e, sizeof(e));
	if (!g->op)
		reg_fail(g, "internal", e);
}

static void reg_granted(int err, const struct etcd_result *res, void *arg)
{
	struct fleet_reg *g = arg;

	g->op = NULL;
	if (reg_etcd_failed(g, err, res))
		return;
	g->grace = res->lease;
	reg_txn(g);
}

static void reg_new(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;
	char e[256];
	uint32_t ttl = f->r->o->lease_grace_s > FL_GRACE_MIN_S ? f->r->o->lease_grace_s
								: FL_GRACE_MIN_S;

	/* Ports are picked here from what this relay holds (every live lease
	 * of the fleet in its pools is bound here) and confirmed by etcd. */
	g->lx = relay_tunnel_new_lease(g->t, &g->m, g->tenant, g->tname, g->idkey);
	if (!g->lx) {
		g->t->freg = NULL; /* answered already */
		g->t = NULL;
		reg_fail(g, NULL, NULL);
		return;
	}
	if (g->grace) {
		reg_txn(g);
		return;
	}
	g->phase = REG_GRANT;
	g->op = etcd_lease_grant(f->etcd, ttl, reg_granted, g, e, sizeof(e));
	if (!g->op)
		reg_fail(g, "internal", e);
}

/* Does a new lease here whose grant etcd has not answered hold one of
 * fl's ports? */
static int ports_pending(const struct relay_fleet *f, const struct fl_lease *fl)
{
	for (const struct fleet_reg *g = f->regs; g; g = g->next) {
		struct relay_lease_state st;

		if (!g->lx || g->phase == REG_RESUME)
			continue;
		relay_lease_get_state(g->lx->lease, &st);
		for (int i = 0; i < TUN_PORT_MAX; i++)
			for (int k = 0; k < TUN_PORT_MAX; k++)
				if ((fl->roles & (int)TUN_ROLE_BIT(i)) && st.ports[k] &&
				    st.ports[k] == fl->ports[i])
					return 1;
	}
	return 0;
}

/* Two relays granted the same port at once and the other's grant won:
 * ours holds the port here until etcd says so, a few ms, and the winner's
 * lease (kv) cannot be served here meanwhile. A join or resume of it waits
 * for that (REG_PORTS) instead of being refused: a refused resume would
 * cost the sidecar its lease. Returns 1 if g waits. */
static int ports_wait(struct fleet_reg *g, const struct fl_kv *kv, int waited)
{
	const char *id = kv->key + strlen("leases/");
	struct fl_lease fl;
	json_t *j;
	int pending;

	/* the id goes into the log line: etcd's text is checked first */
	if (!tun_ctl_valid_lease_id(id) || lease_parse(kv, &fl, &j) != 0)
		return 0;
	pending = ports_pending(g->f, &fl);
	json_decref(j);
	if (!pending)
		return 0;
	if (!waited)
		SR_INFO(FL_CTX,
			"lease=%s: a %s waits for a grant here that holds one of its ports "
			"(etcd gave the port to this lease)",
			id, g->m.join[0] ? "join" : "resume");
	g->phase = REG_PORTS;
	return 1;
}

static void stale_wait_for(struct fleet_reg *g, int64_t rev);

static void reg_resume_done(int err, const struct etcd_result *res, void *arg)
{
	struct fleet_reg *g = arg;
	struct relay_fleet *f = g->f;
	struct relay_lease_ext *lx = g->lx;
	struct relay_tunnel *t = g->t;
	char key[FL_KEY_MAX];

	g->op = NULL;
	if (reg_etcd_failed(g, err, res))
		return;
	if (!res->succeeded) {
		/* The lease changed in etcd since the token was checked: another
		 * resume of it (on this relay or another) won, or the mirror held
		 * an old version of it. The sidecar keeps its lease and token and
		 * tries again, which must find the change: when the mirror has
		 * not got it yet, the answer waits for it (stale_caught_up). */
		const struct etcd_result *cur = res->nops == 1 ? &res->ops[0] : NULL;

		if (cur && cur->nkvs == 1 && cur->kvs[0].mod_revision > f->seen_rev) {
			SR_INFO(FL_CTX,
				"lease=%s: the lease table here is behind etcd (revision %" PRId64
				", the lease changed at %" PRId64 "): a resume waits for it",
				relay_lease_id(lx->lease), f->seen_rev, cur->kvs[0].mod_revision);
			g->lx = NULL;
			g->stale_conflict = 1;
			stale_wait_for(g, cur->kvs[0].mod_revision);
			return;
		}
		SR_INFO(FL_CTX, "lease=%s: resume lost to another resume of it at the same time",
			relay_lease_id(lx->lease));
		reg_fail(g, "resume_conflict",
			 "the lease was resumed elsewhere at the same moment; try again");
		return;
	}
	snprintf(key, sizeof(key), "%sleases/%s", f->prefix, relay_lease_id(lx->lease));
	kv_put(f, key, strlen(key), g->json, strlen(g->json), lease_grace_of(f, relay_lease_id(lx->lease)),
	       res->revision);
	SR_INFO(FL_CTX, "lease=%s resumed in the fleet in %llu ms", relay_lease_id(lx->lease),
		(unsigned long long)((sr_now_us() - g->started_us) / 1000u));
	f->r->st.leases_resumed++;
	reg_free(g);
	relay_tunnel_attach(t, lx, 0);
}

static void stale_check(struct fleet_reg *g);
static void reg_join(struct fleet_reg *g);

static void reg_resume(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;
	struct relay *r = f->r;
	char digest[FL_DIGEST_HEX], fresh[FL_DIGEST_HEX], key[FL_KEY_MAX], e[256];
	struct fl_kv *found = NULL;
	struct relay_lease_state st;
	struct relay_lease *l = NULL;
	struct relay_lease_ext *lx = NULL;
	struct etcd_req rq = {.type = ETCD_PUT}, cur = {.type = ETCD_RANGE};
	struct etcd_cmp cmp;
	int waited;

	memset(&cmp, 0, sizeof(cmp));
	waited = g->phase == REG_PORTS;
	g->phase = REG_RESUME;
	sha256_hex(g->m.resume, digest);
	/* Every lease is compared, without an early exit; an absent digest
	 * is "", which no digest equals. */
	for (struct fl_kv *kv = f->kvs; kv; kv = kv->next) {
		if (!kv->dig || strncmp(kv->key, "leases/", 7) != 0)
			continue;
		if (CRYPTO_memcmp(kv->dig, digest, 2 * SHA256_DIGEST_LENGTH) == 0)
			found = kv;
		if (CRYPTO_memcmp(kv->dig + FL_DIGEST_HEX, digest, 2 * SHA256_DIGEST_LENGTH) == 0)
			found = kv;
	}
	if (found && !relay_find_id(r, found->key + 7))
		lease_bind(f, found);
	if (found)
		l = relay_find_id(r, found->key + 7);
	if (found && !l && ports_wait(g, found, waited))
		return;
	lx = l ? relay_lease_data(l) : NULL;
	if (!found && !g->stale_checked && g->m.lease[0]) {
		/* The lease may have been made or resumed elsewhere after this
		 * relay's watch last delivered; ask before answering. */
		stale_check(g);
		return;
	}
	if (!relay_lease_is_theirs(r, lx, g->tname, g->idkey)) {
		relay_refuse(r, RELAY_REFUSE_REG_RESUME);
		reg_fail(g, "unknown_lease", "no lease for this resume token");
		return;
	}
	if (relay_lease_rotate_resume(l) != 0) {
		reg_fail(g, "internal", "cannot make a new resume token");
		return;
	}
	relay_lease_get_state(l, &st);
	sha256_hex(st.resume, fresh);
	/* The token just used stays good until the sidecar has the new one
	 * (the lease message may die with the tunnel); the one before goes. */
	free(g->json);
	g->json = lease_json(lx, fresh, digest);
	if (!g->json) {
		reg_fail(g, "internal", "out of memory");
		return;
	}
	g->lx = lx;
	mkkey(f, key, sizeof(key), "leases/%s", relay_lease_id(l));
	rq.key = key;
	rq.key_len = strlen(key);
	rq.value = g->json;
	rq.value_len = strlen(g->json);
	rq.lease = found->lease;
	/* Only if the lease is still what the token was checked against: two
	 * relays resuming it with one token at once both read this revision,
	 * and exactly one write applies. */
	cmp.key = key;
	cmp.key_len = strlen(key);
	cmp.target = ETCD_CMP_MOD;
	cmp.op = ETCD_EQ;
	cmp.number = found->mod;
	/* If not: the lease's revision in etcd (is the mirror behind?). */
	cur.key = key;
	cur.key_len = strlen(key);
	cur.keys_only = 1;
	g->op = etcd_txn(f->etcd, &cmp, 1, &rq, 1, &cur, 1, reg_resume_done, g, e, sizeof(e));
	if (!g->op)
		reg_fail(g, "internal", e);
}

/* ---- a resume the mirror does not know -------------------------------------- */

/* The mirror lags etcd by the watch's delay, and by much more when the watch
 * stream stalls without breaking (until watch_idle_ms). A resume token it
 * does not know may belong to a lease made or resumed on another relay in
 * that time; answering unknown_lease would end a live lease (the sidecar
 * starts afresh, with new ports). So a miss of a resume that names its
 * lease (newer sidecars do) reads that one key from etcd, without its value:
 *   - absent, or changed no later than the mirror's revision: the mirror
 *     holds what etcd has for it, and a second lookup decides;
 *   - changed later: the registration waits until the watch has delivered
 *     that revision, then looks again; a watch still behind after
 *     FL_STALE_LAG_MS is replaced by a full read.
 * The registration's deadline bounds the whole wait: a sidecar then hears
 * fleet_unavailable and keeps its token, as it does when etcd does not
 * answer. A read of one key costs etcd little; at most FL_STALE_MAX
 * registrations wait at once (more hear fleet_unavailable), so made-up
 * tokens can neither pile up nor hold the handshake slots. */

/* The lease a registration in REG_STALE names. */
static const char *stale_lease(const struct fleet_reg *g)
{
	return g->m.join[0] ? g->m.join : g->m.lease;
}

/* The mirror is known to hold what etcd has for the lease: look again. */
static void stale_look_again(struct fleet_reg *g)
{
	if (g->m.join[0])
		reg_join(g);
	else
		reg_resume(g);
}

static int stale_waiting(const struct relay_fleet *f)
{
	int n = 0;

	for (const struct fleet_reg *g = f->regs; g; g = g->next)
		n += g->phase == REG_STALE;
	return n;
}

/* The first registration that has what the mirror waited for, or NULL. */
static struct fleet_reg *stale_reached(struct relay_fleet *f)
{
	for (struct fleet_reg *g = f->regs; g; g = g->next)
		if (g->phase == REG_STALE && !g->op && g->stale_rev && f->seen_rev >= g->stale_rev)
			return g;
	return NULL;
}

/* The mirror has reached the revision some registrations waited for. */
static void stale_caught_up(struct relay_fleet *f)
{
	struct fleet_reg *g;

	while ((g = stale_reached(f))) {
		g->phase = REG_RESUME;
		g->stale_checked = 1;
		if (g->stale_conflict)
			reg_fail(g, "resume_conflict", "the lease changed elsewhere; try again");
		else
			stale_look_again(g); /* found or refused: it leaves REG_STALE */
	}
}

static void stale_answered(int err, const struct etcd_result *res, void *arg)
{
	struct fleet_reg *g = arg;
	struct relay_fleet *f = g->f;

	g->op = NULL;
	if (reg_etcd_failed(g, err, res))
		return;
	if (res->nkvs == 0 || res->kvs[0].mod_revision <= f->seen_rev) {
		/* The mirror has the lease as etcd has it (or etcd has none). */
		g->phase = REG_RESUME;
		g->stale_checked = 1;
		stale_look_again(g);
		return;
	}
	SR_INFO(FL_CTX,
		"lease=%s: a %s waits for the lease table here, which is behind etcd "
		"(revision %" PRId64 ", the lease changed at %" PRId64 ")",
		stale_lease(g), g->m.join[0] ? "join" : "resume", f->seen_rev,
		res->kvs[0].mod_revision);
	stale_wait_for(g, res->kvs[0].mod_revision);
}

/* g waits until the mirror has rev (the lag timer watches the watch). */
static void stale_wait_for(struct fleet_reg *g, int64_t rev)
{
	struct relay_fleet *f = g->f;

	g->phase = REG_STALE;
	g->stale_rev = rev;
	g->stale_since_us = sr_now_us();
	if (!evtimer_pending(f->stale_lag_ev, NULL)) {
		struct timeval tv = sr_tv_ms(FL_STALE_LAG_MS);

		evtimer_add(f->stale_lag_ev, &tv);
	}
}

static void stale_check(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;
	struct etcd_req rq = {.type = ETCD_RANGE, .keys_only = 1};
	char key[FL_KEY_MAX], e[256];

	if (stale_waiting(f) >= FL_STALE_MAX) {
		reg_fail(g, "fleet_unavailable",
			 "too many registrations wait for the fleet's lease table; try again");
		return;
	}
	if (mkkey(f, key, sizeof(key), "leases/%s", stale_lease(g)) < 0) {
		reg_fail(g, "internal", "lease id too long for an etcd key");
		return;
	}
	rq.key = key;
	rq.key_len = strlen(key);
	g->phase = REG_STALE;
	g->stale_rev = 0;
	g->op = etcd_kv(f->etcd, &rq, stale_answered, g, e, sizeof(e));
	if (!g->op)
		reg_fail(g, "internal", e);
}

/* A watch that has not delivered, FL_STALE_LAG_MS after a registration
 * began to wait for it, a revision etcd already had is stuck or far
 * behind: read every key again. */
static void stale_lag_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_fleet *f = arg;
	uint64_t now = sr_now_us(), lag = FL_STALE_LAG_MS * 1000ull, next = 0;
	int late = 0;

	(void)fd;
	(void)what;
	for (struct fleet_reg *g = f->regs; g; g = g->next) {
		if (g->phase != REG_STALE || g->op || !g->stale_rev || f->seen_rev >= g->stale_rev)
			continue;
		if (now - g->stale_since_us >= lag)
			late = 1;
		else if (!next || g->stale_since_us + lag < next)
			next = g->stale_since_us + lag;
	}
	/* No watch: a full read is under way or waits for its retry. */
	if (late && f->watch &&
	    (!f->stale_resync_us || now - f->stale_resync_us >= FL_STALE_RESYNC_MS * 1000ull)) {
		SR_WARN(FL_CTX,
			"the etcd watch has not delivered revisions etcd has had for %u ms "
			"(a resume or join waits for them); reading every key again",
			FL_STALE_LAG_MS);
		f->stale_resync_us = now;
		etcd_watch_free(f->watch);
		f->watch = NULL;
		sync_start(f);
	}
	if (late || next) {
		uint32_t ms = late ? FL_STALE_LAG_MS : (uint32_t)((next - now) / 1000 + 1);
		struct timeval tv = sr_tv_ms(ms);

		evtimer_add(f->stale_lag_ev, &tv);
	}
}

/* Ports something else held: bound once it lets go (1 s, doubling up to
 * FL_RETRY_MAX_MS), without waiting for the next change in etcd. */
static void bind_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_fleet *f = arg;

	(void)fd;
	(void)what;
	if (f->synced && !f->frozen)
		reconcile(f);
	if (!evtimer_pending(f->bind_retry, NULL)) /* no port still busy re-armed it */
		f->bind_backoff_ms = 0;
}

/* ports_freed's event: every registration that waited for a port looks
 * again (once: one that waits on stays in REG_PORTS for the next). */
static void ports_cb(evutil_socket_t fd, short what, void *arg)
{
	struct relay_fleet *f = arg;
	struct fleet_reg *g;

	(void)fd;
	(void)what;
	for (g = f->regs; g; g = g->next)
		g->ports_again = g->phase == REG_PORTS;
	for (;;) {
		for (g = f->regs; g && !g->ports_again; g = g->next)
			;
		if (!g)
			break;
		g->ports_again = 0;
		stale_look_again(g);
	}
}

/* A join checks its proof against the digests in the mirror (a relay
 * does not know the tokens of leases made elsewhere) and changes nothing
 * in etcd: the lease keeps its token; relay_fleet_attached puts
 * tunnels/<lease>/<self>. A sidecar joins a second relay right after
 * another granted or resumed its lease, often before this relay's watch
 * has delivered that: a miss asks etcd first, as a resume's does
 * (stale_check), or the tunnel would go to another relay than the
 * sidecar chose, or to none. */
static void reg_join(struct fleet_reg *g)
{
	struct relay_fleet *f = g->f;
	struct relay *r = f->r;
	const char *token = tun_ctl_join_token(g->m.resume);
	struct relay_tunnel *t = g->t;
	char digest[FL_DIGEST_HEX], key[FL_KEY_MAX], tname[64], idkey[RELAY_IDKEY_MAX];
	struct tun_ctl_msg m = g->m;
	struct relay_lease *l = NULL;
	struct fl_kv *kv;
	struct fl_lease fl;
	int proven = 0, waited = g->phase == REG_PORTS;
	json_t *j;

	g->phase = REG_RESUME; /* a failure drops no lease */
	snprintf(key, sizeof(key), "leases/%s", g->m.join);
	kv = kv_find(f, key);
	if (kv && token && lease_parse(kv, &fl, &j) == 0) {
		int cur, prev;
		sha256_hex(token, digest);
		cur = strlen(fl.resume) == 2 * SHA256_DIGEST_LENGTH &&
		      CRYPTO_memcmp(fl.resume, digest, 2 * SHA256_DIGEST_LENGTH) == 0;
		prev = strlen(fl.prev) == 2 * SHA256_DIGEST_LENGTH &&
		       CRYPTO_memcmp(fl.prev, digest, 2 * SHA256_DIGEST_LENGTH) == 0;
		proven = cur | prev;
		json_decref(j);
		if (proven && !relay_find_id(r, g->m.join))
			lease_bind(f, kv);
		l = relay_find_id(r, g->m.join);
		if (proven && !l && ports_wait(g, kv, waited))
			return;
	}
	if (!proven && token && !g->stale_checked) {
		stale_check(g);
		return;
	}
	snprintf(tname, sizeof(tname), "%s", g->tname);
	snprintf(idkey, sizeof(idkey), "%s", g->idkey);
	reg_free(g); /* t->freg cleared */
	if (t)
		relay_tunnel_join(t, l ? relay_lease_data(l) : NULL, proven, &m, tname, idkey);
}

static void reg_go(struct fleet_reg *g)
{
	g->started_us = sr_now_us();
	if (g->m.join[0])
		reg_join(g);
	else if (g->m.resume[0])
		reg_resume(g);
	else
		reg_new(g);
}

static void regs_wake(struct relay_fleet *f)
{
	int again = 1;

	while (again) {
		again = 0;
		for (struct fleet_reg *g = f->regs; g; g = g->next)
			if (g->phase == REG_WAIT && !g->op) {
				g->phase = REG_GRANT;
				reg_go(g);
				again = 1;
				break;
			}
	}
}

void relay_fleet_register(struct relay_fleet *f, struct relay_tunnel *t,
			  const struct tun_ctl_msg *m, int tenant, const char *tname,
			  const char *idkey)
{
	struct fleet_reg *g;
	struct timeval tv = sr_tv_ms(f->wait_ms);

	if (t->freg) {
		relay_tunnel_error(t, "already_registered", "a registration is under way");
		return;
	}
	g = calloc(1, sizeof(*g));
	if (!g || !(g->deadline = evtimer_new(f->base, reg_deadline_cb, g))) {
		free(g);
		relay_tunnel_error(t, "internal", "out of memory");
		return;
	}
	g->f = f;
	g->t = t;
	g->m = *m;
	g->tenant = tenant;
	snprintf(g->tname, sizeof(g->tname), "%s", tname);
	snprintf(g->idkey, sizeof(g->idkey), "%s", idkey);
	g->next = f->regs;
	if (f->regs)
		f->regs->prev = g;
	f->regs = g;
	t->freg = g;
	evtimer_add(g->deadline, &tv);
	if (f->synced) {
		g->phase = REG_GRANT;
		reg_go(g);
	}
}

void relay_fleet_tunnel_gone(struct relay_fleet *f, struct relay_tunnel *t)
{
	(void)f;
	if (t->freg) {
		struct fleet_reg *g = t->freg;
		g->t = NULL;
		reg_fail(g, NULL, NULL);
	}
}

/* ---- forwarding ---------------------------------------------------------------- */

/* The peer address of a relay (not this one) with a tunnel of lease,
 * not tried yet (its id is then w->tried[w->ntried - 1]), and the header
 * for it in w->hdr; 0 with *sa filled, or -1. */
static int holder_next(struct relay_fleet *f, struct fl_fwd *w, struct sockaddr_storage *sa,
		       socklen_t *salen)
{
	char pre[FL_KEY_MAX];
	size_t n = (size_t)snprintf(pre, sizeof(pre), "tunnels/%s/", w->lease);

	for (struct fl_kv *kv = f->kvs; kv; kv = kv->next) {
		const char *rid = kv->key + n;
		char rkey[FL_KEY_MAX];
		struct fl_kv *rk;
		int seen = 0, hl;

		if (strncmp(kv->key, pre, n) != 0 || !valid_id(rid) || strcmp(rid, f->id) == 0)
			continue;
		for (int i = 0; i < w->ntried; i++)
			seen |= strcmp(w->tried[i], rid) == 0;
		if (seen || w->ntried >= FL_MAX_TRIED)
			continue;
		snprintf(w->tried[w->ntried++], FL_ID_MAX, "%s", rid);
		snprintf(rkey, sizeof(rkey), "relays/%s", rid);
		rk = kv_find(f, rkey);
		if (!rk || !rk->peerlen)
			continue;
		/* The MAC names rid: the header is good at that relay only. */
		hl = fleet_peer_hdr_encode(&w->h, f->sec, rid, w->hdr, sizeof(w->hdr));
		if (hl < 0)
			continue;
		w->hlen = (size_t)hl;
		memset(sa, 0, sizeof(*sa));
		memcpy(sa, &rk->peer, rk->peerlen);
		*salen = rk->peerlen;
		return 0;
	}
	return -1;
}

/* w counts (on) or no longer counts (off) in its lease's ncarried, if the
 * lease is still here. By id: a lease dropped here and bound again from
 * etcd is a new lease_ext, which starts from fwds_counted. */
static void fwd_count(struct fl_fwd *w, int on)
{
	struct relay_lease *l;
	struct relay_lease_ext *lx;

	if (w->counted == on)
		return;
	w->counted = on;
	l = relay_find_id(w->f->r, w->lease);
	lx = l ? relay_lease_data(l) : NULL;
	if (!lx)
		return;
	if (on)
		lx->ncarried++;
	else if (lx->ncarried > 0)
		lx->ncarried--;
}

static void fwd_free(struct fl_fwd *w)
{
	struct relay_fleet *f = w->f;

	fwd_count(w, 0);
	if (w->prev)
		w->prev->next = w->next;
	else
		f->fwds = w->next;
	if (w->next)
		w->next->prev = w->prev;
	fleet_splice_free(w->sp);
	free(w);
}

/* Whether an executor connection that came at since_us has time left for
 * one more try to carry it (a connect may take FLEET_SPLICE_CONNECT_TIMEOUT_MS)
 * within its relay.lease.pending_timeout_ms. */
static int fwd_time_left(const struct relay_fleet *f, uint64_t since_us)
{
	uint64_t waited_ms = (sr_now_us() - since_us) / 1000u;

	return waited_ms + FLEET_SPLICE_CONNECT_TIMEOUT_MS <= f->r->o->pending_timeout_ms;
}

static void fwd_cb(struct fleet_splice *sp, enum fleet_splice_end end, int err, void *arg)
{
	struct fl_fwd *w = arg;
	struct relay_fleet *f = w->f;
	struct sockaddr_storage sa;
	socklen_t salen;
	struct relay_lease *l;
	int fd;

	if (end != FLEET_SPLICE_UNREACHED) {
		if (end == FLEET_SPLICE_RESET)
			SR_DEBUG(FL_CTX, "lease=%s conn=%llu: carried connection reset (%s)",
				 w->lease, (unsigned long long)w->conn_id, sr_strerror(err));
		fwd_free(w);
		return;
	}
	{
		uint64_t more = 0;
		if (sr_ratelog_allow(&f->rl_unreached, sr_now_us(), FL_LOG_PERIOD_US, &more))
			SR_WARN(FL_CTX, "lease=%s conn=%llu: relay %s not reached (%s) (%llu "
					"more connections not carried at once since the last line)",
				w->lease, (unsigned long long)w->conn_id, w->tried[w->ntried - 1],
				sr_strerror(err), (unsigned long long)more);
	}
	if (fwd_time_left(f, w->since_us) && holder_next(f, w, &sa, &salen) == 0 &&
	    fleet_splice_connect(sp, (struct sockaddr *)&sa, salen, w->hdr, w->hlen) == 0) {
		SR_DEBUG(FL_CTX, "lease=%s conn=%llu: carried to relay %s", w->lease,
			 (unsigned long long)w->conn_id, w->tried[w->ntried - 1]);
		return;
	}
	/* No relay holds a tunnel that answers (or its wait has no time left
	 * for another try): wait here as a relay alone would, for the sidecar
	 * may come here. */
	f->forward_failed++;
	fwd_count(w, 0); /* counted again where it waits */
	fd = fleet_splice_take(sp);
	w->sp = NULL;
	l = fd >= 0 ? relay_find_id(f->r, w->lease) : NULL;
	if (l && relay_lease_data(l))
		relay_exec_wait_again(f->r, l, (enum tun_port_role)w->role, fd,
				      (struct sockaddr *)&w->exec, w->conn_id, w->since_us);
	else if (fd >= 0) {
		sr_sock_set_reset_on_close(fd);
		close(fd);
	}
	fwd_free(w);
}

int relay_fleet_forward(struct relay_fleet *f, struct relay_lease_ext *lx, int role, int fd,
			const struct sockaddr *exec, uint64_t conn_id, uint64_t since_us)
{
	struct sockaddr_storage sa;
	socklen_t salen;
	struct fl_fwd *w = calloc(1, sizeof(*w));

	if (!w)
		return 0;
	w->f = f;
	w->role = role;
	w->conn_id = conn_id;
	w->since_us = since_us;
	snprintf(w->lease, sizeof(w->lease), "%s", relay_lease_id(lx->lease));
	memcpy(&w->exec, exec, exec->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
							    : sizeof(struct sockaddr_in));
	if (fleet_peer_hdr_init(&w->h, w->lease, (enum tun_port_role)role, exec) != 0 ||
	    holder_next(f, w, &sa, &salen) != 0) {
		free(w);
		return 0;
	}
	w->sp = fleet_splice_new(f->base, fd, NULL, fwd_cb, w);
	if (!w->sp) {
		free(w);
		return 0;
	}
	if (fleet_splice_connect(w->sp, (struct sockaddr *)&sa, salen, w->hdr, w->hlen) != 0) {
		fleet_splice_take(w->sp);
		free(w);
		return 0;
	}
	w->next = f->fwds;
	if (f->fwds)
		f->fwds->prev = w;
	f->fwds = w;
	f->forwarded++;
	fwd_count(w, 1);
	SR_DEBUG(FL_CTX, "lease=%s conn=%llu: carried to relay %s", w->lease,
		 (unsigned long long)conn_id, w->tried[w->ntried - 1]);
	return 1;
}

/* Executors that wait here while a tunnel of their lease is up elsewhere;
 * those another relay carried here stay (no forwarding loops). */
static void forward_waiting(struct relay_fleet *f, struct relay_lease_ext *lx)
{
	struct relay_pending **pp = &lx->pending, *prev = NULL;

	while (*pp) {
		struct relay_pending *p = *pp;
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);

		/* (one whose wait ends before a connect could fail stays) */
		if (p->from_peer || !fwd_time_left(f, p->since_us) ||
		    getpeername(p->fd, (struct sockaddr *)&ss, &sl) != 0) {
			prev = p;
			pp = &p->next;
			continue;
		}
		if (!relay_fleet_forward(f, lx, p->role, p->fd, (struct sockaddr *)&ss,
					 p->conn_id, p->since_us))
			return;
		*pp = p->next;
		if (lx->pending_tail == p)
			lx->pending_tail = prev;
		lx->npending--;
		if (p->timer)
			event_free(p->timer);
		free(p);
	}
}

static void peer_cb(const struct fleet_peer_hdr *hdr, int fd, void *arg)
{
	struct relay_fleet *f = arg;
	struct relay_lease *l = relay_find_id(f->r, hdr->lease);

	if (!l || !relay_lease_data(l) || !relay_lease_port(l, hdr->role)) {
		uint64_t more = 0;
		if (sr_ratelog_allow(&f->rl_unserved, sr_now_us(), FL_LOG_PERIOD_US, &more))
			SR_WARN(FL_CTX, "lease=%s: a relay carried a connection for a lease not "
					"served here; reset (%llu more since the last line)",
				hdr->lease, (unsigned long long)more);
		sr_sock_set_reset_on_close(fd);
		close(fd);
		return;
	}
	relay_exec_accept(f->r, l, hdr->role, fd, (const struct sockaddr *)&hdr->exec,
			  RELAY_EXEC_FROM_PEER);
}

/* ---- lifetime ------------------------------------------------------------------- */

struct relay_fleet *relay_fleet_new(struct relay *r, int peer_fd, int taking, char *err,
				    size_t errlen)
{
	const struct relay_fleet_opts *o = &r->o->fleet;
	struct relay_fleet *f = calloc(1, sizeof(*f));
	struct etcd_opts eo;
	struct sockaddr_storage ss;
	socklen_t sslen;
	char host[256], why[512];
	const char *bad;
	uint16_t port;

	if (!f) {
		if (peer_fd >= 0)
			close(peer_fd);
		sr_seterr(err, errlen, "out of memory");
		return NULL;
	}
	f->r = r;
	f->frozen = f->need_self = taking;
	f->base = r->base;
	f->ttl_s = o->ttl_s ? o->ttl_s : 10;
	f->wait_ms = o->register_wait_ms ? o->register_wait_ms : 5000;
	f->watch_idle_ms = o->watch_idle_ms ? o->watch_idle_ms : 1500000;
	if (sr_random_bytes(&f->kseed, sizeof(f->kseed)) != 0)
		f->kseed = (uint32_t)sr_now_us();
	f->prefix = strdup(o->prefix ? o->prefix : "/sparkrelay/");
	if (!f->prefix)
		goto nomem;
	f->plen = strlen(f->prefix);
	if (relay_fleet_check_opts(o, &bad, why, sizeof(why)) != 0) {
		sr_seterr(err, errlen, "%s: %s", bad, why);
		goto fail;
	}
	if (o->id)
		snprintf(f->id, sizeof(f->id), "%s", o->id);
	else if (gethostname(f->id, sizeof(f->id) - 1) != 0)
		f->id[0] = '\0';
	if (!valid_id(f->id)) {
		sr_seterr(err, errlen, "relay.fleet.id: null, and the host name \"%s\" is not 1-63 "
				       "letters, digits, '.', '_' or '-': set relay.fleet.id",
			  sr_esc_n(f->id, FL_ID_MAX, why, sizeof(why)));
		goto fail;
	}
	if (fleet_secret_load(o->secret_file, &f->sec, err, errlen) != 0)
		goto fail;
	if (sr_split_hostport(o->peer_listen, host, sizeof(host), &port, 0) != 0 ||
	    sr_parse_addr(host, port, &ss, &sslen) != 0) { /* checked above */
		sr_seterr(err, errlen, "relay.fleet.peer_listen: cannot be parsed");
		goto fail;
	}
	if (peer_fd >= 0) {
		/* The old process's (live handover): never bound twice, no
		 * connection refused meanwhile. Accepts once thawed. */
		f->peer = fleet_peer_listener_adopt(f->base, peer_fd, f->sec, f->id, NULL,
						    peer_cb, f, err, errlen);
		peer_fd = -1;
	} else {
		f->peer = fleet_peer_listener_new(f->base, (struct sockaddr *)&ss, sslen, f->sec,
						  f->id, NULL, peer_cb, f, err, errlen);
		if (f->peer && taking)
			fleet_peer_listener_enable(f->peer, 0);
	}
	if (!f->peer)
		goto fail;
	/* Other relays check it as they read it from etcd: checked above. */
	if (o->peer_advertise)
		snprintf(f->advertise, sizeof(f->advertise), "%s", o->peer_advertise);
	else
		snprintf(f->advertise, sizeof(f->advertise),
			 ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host,
			 fleet_peer_listener_port(f->peer));
	memset(&eo, 0, sizeof(eo));
	eo.endpoints = (const char *const *)o->etcd;
	eo.nendpoints = o->netcd;
	eo.ca_file = o->etcd_ca;
	eo.cert_file = o->etcd_cert;
	eo.key_file = o->etcd_key;
	/* One attempt well inside a registration's wait, so that it can say
	 * why before its deadline. */
	eo.timeout_ms = f->wait_ms / 2 > 500 ? f->wait_ms / 2 : 500;
	/* Room for a page of large values (FL_PAGE_KEYS), not the client's
	 * 4 MiB default: a page over it is asked again smaller. */
	eo.max_answer = FL_MAX_ANSWER;
	f->etcd = etcd_new(f->base, &eo, err, errlen);
	if (!f->etcd)
		goto fail;
	f->self_retry = evtimer_new(f->base, self_retry_cb, f);
	f->page_keys = FL_PAGE_KEYS;
	f->sync_retry = evtimer_new(f->base, sync_retry_cb, f);
	f->check_ev = evtimer_new(f->base, check_cb, f);
	f->ports_ev = evtimer_new(f->base, ports_cb, f);
	f->bind_retry = evtimer_new(f->base, bind_retry_cb, f);
	f->stale_lag_ev = evtimer_new(f->base, stale_lag_cb, f);
	f->restore_ev = evtimer_new(f->base, restore_cb, f);
	if (!f->self_retry || !f->sync_retry || !f->check_ev || !f->ports_ev || !f->bind_retry ||
	    !f->stale_lag_ev || !f->restore_ev)
		goto nomem;
	if (!taking)
		self_start(f);
	sync_start(f);
	SR_INFO(FL_CTX, "fleet relay %s: etcd %s, prefix %s, peers dial %s", f->id, o->etcd[0],
		f->prefix, f->advertise);
	return f;
nomem:
	sr_seterr(err, errlen, "out of memory");
fail:
	if (peer_fd >= 0)
		close(peer_fd);
	relay_fleet_free(f);
	return NULL;
}

long relay_fleet_foreach_carried(struct relay_fleet *f, relay_fleet_carried_fn fn, void *arg)
{
	struct fleet_splice_state st;
	long n = 0;
	int rc;

	for (struct fl_fwd *w = f->fwds; w; w = w->next) {
		if (!w->sp || fleet_splice_export(w->sp, &st) != 0)
			continue;
		rc = fn(w->lease, w->role, w->conn_id, &st, arg);
		if (rc)
			return rc;
		n++;
	}
	return n;
}

int relay_fleet_adopt_carried(struct relay_fleet *f, const char *lease, int role,
			      uint64_t conn_id, const struct fleet_splice_state *st)
{
	struct fl_fwd *w = calloc(1, sizeof(*w));
	struct fleet_splice_state run = *st;

	if (!w || !tun_ctl_valid_lease_id(lease) || role < 0 || role >= TUN_PORT_MAX) {
		int rc = w ? SR_EINVAL : SR_ENOMEM;
		free(w);
		close(st->a);
		close(st->b);
		for (int k = 0; k < 2; k++)
			for (int i = 0; i < 2; i++)
				close(st->pipe[k][i]);
		return rc;
	}
	/* Carried already: a failure now ends it, never tries another relay. */
	run.moved = 1;
	w->f = f;
	w->role = role;
	w->conn_id = conn_id;
	w->since_us = sr_now_us(); /* never waits again: see run.moved */
	snprintf(w->lease, sizeof(w->lease), "%s", lease);
	w->ntried = FL_MAX_TRIED; /* it runs: never dialled again */
	w->sp = fleet_splice_adopt(f->base, &run, f->frozen, NULL, fwd_cb, w);
	if (!w->sp) {
		free(w);
		return SR_ENOMEM;
	}
	w->next = f->fwds;
	if (f->fwds)
		f->fwds->prev = w;
	f->fwds = w;
	fwd_count(w, 1);
	return 0;
}

void relay_fleet_forget_carried(struct relay_fleet *f)
{
	while (f->fwds) {
		struct fl_fwd *w = f->fwds;
		fleet_splice_forget(w->sp);
		w->sp = NULL;
		fwd_free(w);
	}
}

int relay_fleet_peer_fd(const struct relay_fleet *f)
{
	return f->peer ? fleet_peer_listener_fd(f->peer) : -1;
}

void relay_fleet_freeze(struct relay_fleet *f, int on)
{
	for (struct fl_fwd *w = f->fwds; w; w = w->next)
		if (w->sp)
			fleet_splice_pause(w->sp, on);
	if (on) {
		f->frozen = 1;
		fleet_peer_listener_enable(f->peer, 0);
		return;
	}
	f->frozen = 0;
	if (fleet_peer_listener_enable(f->peer, 1) != 0)
		SR_WARN(FL_CTX, "cannot accept on the peer port: out of memory");
	if (f->need_self) {
		f->need_self = 0;
		self_start(f);
	}
	event_active(f->check_ev, EV_TIMEOUT, 0);
	if (f->synced)
		reconcile(f);
}

void relay_fleet_reloaded(struct relay_fleet *f)
{
	/* Leases skipped for a pool, route or tenant not configured here may
	 * be served now (and skip_gen no longer matches for them). */
	if (f && !f->frozen && f->synced)
		reconcile(f);
}

void relay_fleet_free(struct relay_fleet *f)
{
	if (!f)
		return;
	while (f->regs) {
		struct fleet_reg *g = f->regs;
		struct relay_lease_ext *lx = g->lx;
		g->lx = NULL;
		if (lx && g->phase != REG_RESUME)
			lease_drop_local(lx);
		reg_free(g);
	}
	/* Frozen: a handover under way, or a new relay not committed; the
	 * carried connections may be another process's. */
	if (f->frozen)
		relay_fleet_forget_carried(f);
	while (f->fwds)
		fwd_free(f->fwds);
	while (f->held) {
		struct fl_held *h = f->held;
		f->held = h->next;
		etcd_keeper_free(h->k);
		etcd_cancel(h->op);
		if (h->retry)
			event_free(h->retry);
		free(h->json);
		free(h);
	}
	etcd_watch_free(f->watch);
	etcd_cancel(f->restore_op);
	etcd_keeper_free(f->self_keeper);
	etcd_free(f->etcd);
	fleet_peer_listener_free(f->peer);
	fleet_secret_free(f->sec);
	if (f->self_retry)
		event_free(f->self_retry);
	if (f->sync_retry)
		event_free(f->sync_retry);
	if (f->check_ev)
		event_free(f->check_ev);
	if (f->ports_ev)
		event_free(f->ports_ev);
	if (f->bind_retry)
		event_free(f->bind_retry);
	if (f->stale_lag_ev)
		event_free(f->stale_lag_ev);
	if (f->restore_ev)
		event_free(f->restore_ev);
	kv_clear(f);
	read_reset(&f->rd);
	free(f->prefix);
	free(f);
}
