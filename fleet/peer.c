/* See peer.h. */
#include "fleet/peer.h"
#include "fleet/splice.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

static const uint8_t peer_magic[4] = {'S', 'R', 'F', 'W'};

/* A refusal of one kind is logged at most once per period; the line says
 * how many were not (sr_ratelog). */
#define PEER_LOG_PERIOD_US (10u * 1000000u)
/* accept() failing (EMFILE) pauses the listener this long instead of spinning. */
#define PEER_ACCEPT_PAUSE_MS 100

struct fleet_secret {
	size_t len;
	uint8_t key[];
};

/* ---------------------------------------------------------------- secret */

int fleet_secret_new(const void *key, size_t len, struct fleet_secret **out)
{
	struct fleet_secret *s;

	*out = NULL;
	if (len < FLEET_SECRET_MIN || len > FLEET_SECRET_MAX)
		return SR_EINVAL;
	s = malloc(sizeof(*s) + len);
	if (s == NULL)
		return SR_ENOMEM;
	s->len = len;
	memcpy(s->key, key, len);
	*out = s;
	return 0;
}

void fleet_secret_free(struct fleet_secret *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s->key, s->len);
	free(s);
}

int fleet_secret_load(const char *path, struct fleet_secret **out, char *err, size_t errlen)
{
	/* One byte more than allowed, to tell "too long" from "exactly the max". */
	uint8_t buf[FLEET_SECRET_MAX + 1];
	char epath[SR_ESC_SIZE(64)], why[128];
	size_t have = 0;
	int fd, rc;

	*out = NULL;
	sr_esc_n(path, 64, epath, sizeof(epath));
	/* Not blocking, a regular file: a FIFO would hang the relay's start. */
	fd = sr_file_open(path, SR_FILE_PEM_MAX, NULL, why, sizeof(why));
	if (fd < 0) {
		sr_seterr(err, errlen, "fleet secret %s: %s%s", epath,
			  fd == SR_EIO ? "cannot open: " : "", why);
		return fd;
	}
	while (have < sizeof(buf)) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			sr_seterr(err, errlen, "fleet secret %s: cannot read: %s", epath,
				  strerror(errno));
			close(fd);
			OPENSSL_cleanse(buf, sizeof(buf));
			return SR_EIO;
		}
		if (n == 0)
			break;
		have += (size_t)n;
	}
	close(fd);
	if (have < FLEET_SECRET_MIN || have > FLEET_SECRET_MAX) {
		sr_seterr(err, errlen,
			  "fleet secret %s: must hold %d to %d bytes, it holds %s%zu", epath,
			  FLEET_SECRET_MIN, FLEET_SECRET_MAX,
			  have > FLEET_SECRET_MAX ? "more than " : "",
			  have > FLEET_SECRET_MAX ? (size_t)FLEET_SECRET_MAX : have);
		OPENSSL_cleanse(buf, sizeof(buf));
		return SR_EINVAL;
	}
	rc = fleet_secret_new(buf, have, out);
	OPENSSL_cleanse(buf, sizeof(buf));
	if (rc != 0)
		sr_seterr(err, errlen, "fleet secret %s: %s", epath, sr_strerror(rc));
	return rc;
}

/* ---------------------------------------------------------------- header */

static const char *const peer_status_names[FLEET_PEER_STATUS_MAX] = {
    [FLEET_PEER_OK] = "ok",
    [FLEET_PEER_MORE] = "more",
    [FLEET_PEER_BAD_MAGIC] = "bad_magic",
    [FLEET_PEER_BAD_VERSION] = "bad_version",
    [FLEET_PEER_OVERSIZE] = "oversize",
    [FLEET_PEER_BAD_MAC] = "bad_mac",
    [FLEET_PEER_STALE] = "stale",
    [FLEET_PEER_FUTURE] = "future",
    [FLEET_PEER_BAD_LEASE] = "bad_lease",
    [FLEET_PEER_BAD_ROLE] = "bad_role",
    [FLEET_PEER_BAD_ADDR] = "bad_addr",
    [FLEET_PEER_REPLAY] = "replay",
    [FLEET_PEER_TRUNCATED] = "truncated",
    [FLEET_PEER_TIMEOUT] = "timeout",
    [FLEET_PEER_IO] = "io",
    [FLEET_PEER_BUSY] = "busy",
    [FLEET_PEER_BUSY_SOURCE] = "busy_source",
};

const char *fleet_peer_status_name(int status)
{
	if (status < 0 || status >= FLEET_PEER_STATUS_MAX)
		return "unknown";
	return peer_status_names[status];
}

uint64_t fleet_peer_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* A relay id as a header's destination. */
static int peer_id_valid(const char *id)
{
	size_t n = id ? strnlen(id, FLEET_PEER_ID_MAX) : 0;

	return n > 0 && n < FLEET_PEER_ID_MAX;
}

/* HMAC of data[0..len) followed by the destination's length byte and id:
 * the id is bound without being sent. */
static int peer_mac(const struct fleet_secret *sec, const uint8_t *data, size_t len,
		    const char *dest, uint8_t mac[FLEET_PEER_MAC_LEN])
{
	uint8_t in[FLEET_PEER_HDR_MAX + 1 + FLEET_PEER_ID_MAX];
	size_t dlen = strnlen(dest, FLEET_PEER_ID_MAX);
	unsigned int maclen = 0;

	if (len > FLEET_PEER_HDR_MAX || dlen == 0 || dlen >= FLEET_PEER_ID_MAX)
		return SR_EINVAL;
	memcpy(in, data, len);
	in[len] = (uint8_t)dlen;
	memcpy(in + len + 1, dest, dlen);
	if (HMAC(EVP_sha256(), sec->key, (int)sec->len, in, len + 1 + dlen, mac, &maclen) ==
		NULL ||
	    maclen != FLEET_PEER_MAC_LEN)
		return SR_EIO;
	return 0;
}

/* The 16 address bytes of the header and the family byte for sa, with a
 * v4-mapped IPv6 address turned into IPv4. 0, or -1 for another family. */
static int peer_addr_bytes(const struct sockaddr *sa, uint8_t *family, uint8_t addr[16],
			   uint16_t *port)
{
	memset(addr, 0, 16);
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		*family = 4;
		memcpy(addr, &in->sin_addr, 4);
		*port = ntohs(in->sin_port);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		*port = ntohs(in6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			*family = 4;
			memcpy(addr, in6->sin6_addr.s6_addr + 12, 4);
		} else {
			*family = 6;
			memcpy(addr, in6->sin6_addr.s6_addr, 16);
		}
		return 0;
	}
	return -1;
}

/* An address a TCP peer can have: not unspecified, multicast or broadcast;
 * IPv4 padded with zeros; no v4-mapped IPv6 (IPv4 has one spelling). */
static int peer_addr_valid(uint8_t family, const uint8_t addr[16], uint16_t port)
{
	static const uint8_t zero[16];

	if (port == 0)
		return 0;
	if (family == 4) {
		if (memcmp(addr + 4, zero, 12) != 0 || memcmp(addr, zero, 4) == 0)
			return 0;
		if (addr[0] >= 224) /* multicast, reserved, broadcast */
			return 0;
		return 1;
	}
	if (family == 6) {
		struct in6_addr a;
		memcpy(a.s6_addr, addr, 16);
		return !IN6_IS_ADDR_UNSPECIFIED(&a) && !IN6_IS_ADDR_MULTICAST(&a) &&
		       !IN6_IS_ADDR_V4MAPPED(&a);
	}
	return 0;
}

static void peer_addr_store(uint8_t family, const uint8_t addr[16], uint16_t port,
			    struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == 4) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		memcpy(&in->sin_addr, addr, 4);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		memcpy(in6->sin6_addr.s6_addr, addr, 16);
	}
}

int fleet_peer_addr_parse(const char *s, size_t len, struct sockaddr_storage *sa,
			  socklen_t *salen)
{
	char host[FLEET_PEER_ADDR_MAX];
	const char *colon, *p;
	uint8_t family, addr[16];
	size_t hlen;
	unsigned long port = 0;

	if (s == NULL || len == 0 || len >= FLEET_PEER_ADDR_MAX || memchr(s, '\0', len))
		return -1;
	if (s[0] == '[') {
		const char *close = memchr(s, ']', len);
		if (close == NULL || close + 1 >= s + len || close[1] != ':')
			return -1;
		hlen = (size_t)(close - s - 1);
		memcpy(host, s + 1, hlen);
		colon = close + 1;
		family = 6;
	} else {
		colon = memchr(s, ':', len);
		if (colon == NULL || memchr(colon + 1, ':', (size_t)(s + len - colon - 1)))
			return -1;
		hlen = (size_t)(colon - s);
		memcpy(host, s, hlen);
		family = 4;
	}
	host[hlen] = '\0';
	p = colon + 1;
	/* 1..65535, digits only: no sign, space or leading zero for strtoul
	 * to forgive. */
	if (p >= s + len || (size_t)(s + len - p) > 5 || *p == '0')
		return -1;
	for (; p < s + len; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port == 0 || port > 65535)
		return -1;
	memset(addr, 0, sizeof(addr));
	if (inet_pton(family == 4 ? AF_INET : AF_INET6, host, addr) != 1)
		return -1;
	/* 0.0.0.0/8 dials this host (Linux), 240/4 and up is reserved or
	 * broadcast; peer_addr_valid refuses the rest. */
	if (family == 4 && (addr[0] == 0 || addr[0] >= 240))
		return -1;
	if (!peer_addr_valid(family, addr, (uint16_t)port))
		return -1;
	peer_addr_store(family, addr, (uint16_t)port, sa);
	*salen = family == 4 ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	return 0;
}

/* lease is a lease id of exactly len bytes (no NUL inside). */
static int peer_lease_valid(const char *lease, size_t len)
{
	char buf[TUN_CTL_LEASE_MAX];

	if (len == 0 || len >= sizeof(buf) || memchr(lease, '\0', len) != NULL)
		return 0;
	memcpy(buf, lease, len);
	buf[len] = '\0';
	return tun_ctl_valid_lease_id(buf);
}

int fleet_peer_hdr_init(struct fleet_peer_hdr *h, const char *lease, enum tun_port_role role,
			const struct sockaddr *exec)
{
	uint8_t family, addr[16];
	uint16_t port;

	memset(h, 0, sizeof(*h));
	if (lease == NULL || !tun_ctl_valid_lease_id(lease) || (unsigned)role >= TUN_PORT_MAX ||
	    exec == NULL || peer_addr_bytes(exec, &family, addr, &port) != 0 ||
	    !peer_addr_valid(family, addr, port))
		return SR_EINVAL;
	snprintf(h->lease, sizeof(h->lease), "%s", lease);
	h->role = role;
	peer_addr_store(family, addr, port, &h->exec);
	h->time_ms = fleet_peer_now_ms();
	return sr_random_bytes(h->nonce, sizeof(h->nonce)) == 0 ? 0 : SR_EIO;
}

int fleet_peer_hdr_encode(const struct fleet_peer_hdr *h, const struct fleet_secret *sec,
			  const char *dest, uint8_t *out, size_t outlen)
{
	uint8_t family, addr[16];
	uint16_t port;
	size_t llen = strnlen(h->lease, sizeof(h->lease));
	size_t total = FLEET_PEER_HDR_FIXED + llen + FLEET_PEER_MAC_LEN;

	if (!peer_lease_valid(h->lease, llen) || (unsigned)h->role >= TUN_PORT_MAX ||
	    peer_addr_bytes((const struct sockaddr *)&h->exec, &family, addr, &port) != 0 ||
	    !peer_addr_valid(family, addr, port) || !peer_id_valid(dest) || outlen < total)
		return SR_EINVAL;
	memcpy(out, peer_magic, 4);
	out[4] = FLEET_PEER_VERSION;
	out[5] = (uint8_t)h->role;
	out[6] = family;
	out[7] = (uint8_t)llen;
	put_be16(out + 8, port);
	put_be64(out + 10, h->time_ms);
	memcpy(out + 18, h->nonce, FLEET_PEER_NONCE_LEN);
	memcpy(out + 34, addr, 16);
	memcpy(out + FLEET_PEER_HDR_FIXED, h->lease, llen);
	if (peer_mac(sec, out, FLEET_PEER_HDR_FIXED + llen, dest,
		     out + FLEET_PEER_HDR_FIXED + llen) != 0)
		return SR_EINVAL;
	return (int)total;
}

enum fleet_peer_status fleet_peer_hdr_parse(const uint8_t *buf, size_t len,
					    const struct fleet_secret *sec, const char *self,
					    uint64_t now_ms,
					    uint32_t window_ms, struct fleet_peer_hdr *h,
					    size_t *hlen)
{
	uint8_t mac[FLEET_PEER_MAC_LEN];
	size_t llen, total;
	uint64_t t;
	uint16_t port;

	/* Garbage is refused from its first wrong byte, not after a deadline. */
	if (memcmp(buf, peer_magic, len < 4 ? len : 4) != 0)
		return FLEET_PEER_BAD_MAGIC;
	if (len > 4 && buf[4] != FLEET_PEER_VERSION)
		return FLEET_PEER_BAD_VERSION;
	if (len < FLEET_PEER_HDR_FIXED) {
		*hlen = FLEET_PEER_HDR_FIXED;
		return FLEET_PEER_MORE;
	}
	llen = buf[7];
	if (llen > TUN_CTL_LEASE_MAX - 1)
		return FLEET_PEER_OVERSIZE;
	total = FLEET_PEER_HDR_FIXED + llen + FLEET_PEER_MAC_LEN;
	*hlen = total;
	if (len < total)
		return FLEET_PEER_MORE;

	if (!peer_id_valid(self) || peer_mac(sec, buf, FLEET_PEER_HDR_FIXED + llen, self, mac) != 0 ||
	    CRYPTO_memcmp(mac, buf + FLEET_PEER_HDR_FIXED + llen, FLEET_PEER_MAC_LEN) != 0)
		return FLEET_PEER_BAD_MAC;
	t = get_be64(buf + 10);
	/* Differences, not sums: a time near UINT64_MAX must not wrap. */
	if (t < now_ms && now_ms - t > window_ms)
		return FLEET_PEER_STALE;
	if (t > now_ms && t - now_ms > window_ms)
		return FLEET_PEER_FUTURE;
	if (buf[5] >= TUN_PORT_MAX)
		return FLEET_PEER_BAD_ROLE;
	port = get_be16(buf + 8);
	if (!peer_addr_valid(buf[6], buf + 34, port))
		return FLEET_PEER_BAD_ADDR;
	if (!peer_lease_valid((const char *)buf + FLEET_PEER_HDR_FIXED, llen))
		return FLEET_PEER_BAD_LEASE;
	if (h != NULL) {
		memset(h, 0, sizeof(*h));
		memcpy(h->lease, buf + FLEET_PEER_HDR_FIXED, llen);
		h->role = (enum tun_port_role)buf[5];
		peer_addr_store(buf[6], buf + 34, port, &h->exec);
		h->time_ms = t;
		memcpy(h->nonce, buf + 18, FLEET_PEER_NONCE_LEN);
	}
	return FLEET_PEER_OK;
}

/* ---------------------------------------------------------- replay cache */

/* The nonces of accepted headers, newest last in a ring, indexed by a
 * chained hash. When the ring is full the oldest is forgotten, and a header
 * at or before its time is refused from then on (floor_ms): it might be a
 * replay of the forgotten one. Memory stays at replay_slots entries whatever
 * the rate; past replay_slots connections per clock window, a peer whose
 * clock lags the others' by more than the ring's span is refused as a
 * replay. Entries older than the clock window are dropped first, without
 * raising the floor: the window refuses those headers anyway. */
struct peer_nonce {
	uint8_t nonce[FLEET_PEER_NONCE_LEN];
	uint64_t time_ms;
	int32_t next; /* chain in its bucket, -1 ends */
};

struct peer_replay {
	struct peer_nonce *e; /* cap entries; ring [head, head + n) */
	int32_t *bucket;      /* nbuckets chain heads, -1 empty */
	uint32_t cap, n, head, mask;
	uint64_t floor_ms;
};

static uint32_t replay_hash(const struct peer_replay *r, const uint8_t *nonce)
{
	uint32_t h;

	/* Nonces are random and MAC-protected: their bytes are the hash. */
	memcpy(&h, nonce, sizeof(h));
	return h & r->mask;
}

static int replay_init(struct peer_replay *r, uint32_t cap)
{
	uint32_t nb = 1;

	memset(r, 0, sizeof(*r));
	while (nb < cap && nb < (1u << 30))
		nb <<= 1;
	r->e = calloc(cap, sizeof(*r->e));
	r->bucket = malloc(nb * sizeof(*r->bucket));
	if (r->e == NULL || r->bucket == NULL) {
		free(r->e);
		free(r->bucket);
		r->e = NULL;
		r->bucket = NULL;
		return SR_ENOMEM;
	}
	for (uint32_t i = 0; i < nb; i++)
		r->bucket[i] = -1;
	r->cap = cap;
	r->mask = nb - 1;
	return 0;
}

static void replay_fini(struct peer_replay *r)
{
	free(r->e);
	free(r->bucket);
	memset(r, 0, sizeof(*r));
}

static void replay_drop_oldest(struct peer_replay *r)
{
	int32_t idx = (int32_t)r->head;
	int32_t *pp = &r->bucket[replay_hash(r, r->e[idx].nonce)];

	while (*pp != idx)
		pp = &r->e[*pp].next;
	*pp = r->e[idx].next;
	r->head = (r->head + 1) % r->cap;
	r->n--;
}

/* 1 if (nonce, time) may be a replay; else remembers it and returns 0. */
static int replay_check(struct peer_replay *r, const uint8_t *nonce, uint64_t time_ms,
			uint64_t now_ms, uint32_t window_ms)
{
	uint32_t slot;

	if (time_ms <= r->floor_ms)
		return 1;
	for (int32_t i = r->bucket[replay_hash(r, nonce)]; i >= 0; i = r->e[i].next)
		if (memcmp(r->e[i].nonce, nonce, FLEET_PEER_NONCE_LEN) == 0)
			return 1;
	while (r->n > 0 && r->e[r->head].time_ms < now_ms &&
	       now_ms - r->e[r->head].time_ms > window_ms)
		replay_drop_oldest(r);
	if (r->n == r->cap) {
		if (r->e[r->head].time_ms > r->floor_ms)
			r->floor_ms = r->e[r->head].time_ms;
		replay_drop_oldest(r);
		if (time_ms <= r->floor_ms)
			return 1;
	}
	slot = (r->head + r->n) % r->cap;
	memcpy(r->e[slot].nonce, nonce, FLEET_PEER_NONCE_LEN);
	r->e[slot].time_ms = time_ms;
	r->e[slot].next = r->bucket[replay_hash(r, nonce)];
	r->bucket[replay_hash(r, nonce)] = (int32_t)slot;
	r->n++;
	return 0;
}

/* -------------------------------------------------------------- listener */

/* A connection still reading its header. */
struct peer_conn {
	struct fleet_peer_listener *l;
	struct peer_conn *next, *prev;
	int fd;
	struct event *ev;
	uint64_t deadline_us;
	size_t have, need;
	uint8_t buf[FLEET_PEER_HDR_MAX];
	char peer[SR_ADDRSTRLEN];
	uint8_t src_family, src[16]; /* the source address, for the per-source cap */
};

struct fleet_peer_listener {
	struct event_base *base;
	struct evconnlistener *lev;
	struct event *pause; /* re-enables the listener after an accept failure */
	const struct fleet_secret *sec;
	char self[FLEET_PEER_ID_MAX];
	struct fleet_peer_opts o;
	fleet_peer_cb cb;
	void *arg;
	struct peer_conn *pending;
	unsigned npending;
	struct peer_replay replay;
	uint64_t count[FLEET_PEER_STATUS_MAX];
	struct sr_ratelog rl[FLEET_PEER_STATUS_MAX];
	struct sr_ratelog rl_accept;
	uint16_t port;
};

static int peer_ratelog_allow(struct sr_ratelog *rl, uint64_t *suppressed)
{
	return sr_ratelog_allow(rl, sr_now_us(), PEER_LOG_PERIOD_US, suppressed);
}

static void peer_conn_unlink(struct peer_conn *c)
{
	struct fleet_peer_listener *l = c->l;

	if (c->prev)
		c->prev->next = c->next;
	else
		l->pending = c->next;
	if (c->next)
		c->next->prev = c->prev;
	l->npending--;
	event_free(c->ev);
}

/* Counts, logs (rate-limited, per reason) and resets the connection. */
static void peer_refuse(struct fleet_peer_listener *l, int fd, const char *peer,
			enum fleet_peer_status why)
{
	uint64_t more = 0;

	l->count[why]++;
	if (peer_ratelog_allow(&l->rl[why], &more))
		SR_WARN("fleet peer",
			"peer=%s: relay-to-relay connection refused: %s (%llu more "
			"refused for this reason since the last line)",
			peer, fleet_peer_status_name(why), (unsigned long long)more);
	sr_sock_set_reset_on_close(fd);
	close(fd);
}

static void peer_conn_refuse(struct peer_conn *c, enum fleet_peer_status why)
{
	peer_conn_unlink(c);
	peer_refuse(c->l, c->fd, c->peer, why);
	free(c);
}

static void peer_conn_arm(struct peer_conn *c)
{
	uint64_t now = sr_now_us();
	uint64_t left = c->deadline_us > now ? c->deadline_us - now : 0;
	struct timeval tv = {.tv_sec = (time_t)(left / 1000000u),
			     .tv_usec = (suseconds_t)(left % 1000000u)};

	/* A deadline from the accept, not from the last byte: a slow drip
	 * cannot keep a connection here longer than header_timeout_ms. */
	event_add(c->ev, &tv);
}

static void peer_conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct peer_conn *c = arg;
	struct fleet_peer_listener *l = c->l;
	struct fleet_peer_hdr h;
	enum fleet_peer_status st;
	uint64_t now_ms;
	size_t need;
	ssize_t n;

	if (what & EV_TIMEOUT) {
		peer_conn_refuse(c, FLEET_PEER_TIMEOUT);
		return;
	}
	for (;;) {
		/* Exactly up to the header's end: the executor's bytes behind it
		 * stay in the socket for the owner. */
		n = recv(c->fd, c->buf + c->have, c->need - c->have, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			peer_conn_arm(c);
			return;
		}
		if (n < 0) {
			peer_conn_refuse(c, FLEET_PEER_IO);
			return;
		}
		if (n == 0) {
			peer_conn_refuse(c, FLEET_PEER_TRUNCATED);
			return;
		}
		c->have += (size_t)n;
		now_ms = fleet_peer_now_ms();
		need = 0;
		st = fleet_peer_hdr_parse(c->buf, c->have, l->sec, l->self, now_ms,
					  l->o.clock_window_ms, &h, &need);
		if (st == FLEET_PEER_MORE) {
			c->need = need;
			continue;
		}
		if (st == FLEET_PEER_OK &&
		    replay_check(&l->replay, h.nonce, h.time_ms, now_ms, l->o.clock_window_ms))
			st = FLEET_PEER_REPLAY;
		if (st != FLEET_PEER_OK) {
			peer_conn_refuse(c, st);
			return;
		}
		break;
	}
	peer_conn_unlink(c);
	l->count[FLEET_PEER_OK]++;
	free(c);
	l->cb(&h, (int)fd, l->arg);
}

/* Room for one more connection: c, the oldest (of a source), is read once
 * more first, for a relay's header may be in its socket by now (the relay
 * sends it once its connect completes, which can come after the accept);
 * if that does not take c out of the pending list, c is reset. */
static void peer_make_room(struct fleet_peer_listener *l, struct peer_conn *c,
			   enum fleet_peer_status why)
{
	unsigned before = l->npending;

	peer_conn_read_cb(c->fd, EV_READ, c); /* may free c */
	if (l->npending == before)
		peer_conn_refuse(c, why);
}

static void peer_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
			   int salen, void *arg)
{
	struct fleet_peer_listener *l = arg;
	struct peer_conn *c;
	char peer[SR_ADDRSTRLEN];
	uint8_t family = 0, src[16];
	uint16_t sport;
	uint32_t same = 0;
	struct peer_conn *oldest = NULL;

	sr_format_addr(sa, peer, sizeof(peer));
	/* Full, for everyone or for this source: the oldest pending connection
	 * goes, not the new one (refusing the newcomer let connections that
	 * send nothing, from 16 sources, shut every relay out). Sources count
	 * by whole address: relays on one IPv6 /64 are still apart. */
	if (peer_addr_bytes(sa, &family, src, &sport) != 0)
		memset(src, 0, sizeof(src));
	for (struct peer_conn *o = l->pending; o; o = o->next)
		if (o->src_family == family && memcmp(o->src, src, sizeof(src)) == 0) {
			same++;
			oldest = o;
		}
	if (same >= l->o.max_pending_per_source) {
		if (!oldest) {
			peer_refuse(l, (int)fd, peer, FLEET_PEER_BUSY_SOURCE);
			return;
		}
		peer_make_room(l, oldest, FLEET_PEER_BUSY_SOURCE);
	}
	if (l->npending >= l->o.max_pending) {
		oldest = l->pending;
		while (oldest && oldest->next)
			oldest = oldest->next;
		if (!oldest) {
			peer_refuse(l, (int)fd, peer, FLEET_PEER_BUSY);
			return;
		}
		peer_make_room(l, oldest, FLEET_PEER_BUSY);
	}
	c = calloc(1, sizeof(*c));
	if (c != NULL)
		c->ev = event_new(l->base, fd, EV_READ, peer_conn_read_cb, c);
	if (c == NULL || c->ev == NULL) {
		free(c);
		peer_refuse(l, (int)fd, peer, FLEET_PEER_BUSY);
		return;
	}
	c->l = l;
	c->fd = (int)fd;
	sr_sock_keepalive(c->fd, FLEET_SPLICE_KEEPIDLE_S, FLEET_SPLICE_KEEPINTVL_S,
			  FLEET_SPLICE_KEEPCNT);
	c->need = FLEET_PEER_HDR_FIXED;
	c->src_family = family;
	memcpy(c->src, src, sizeof(src));
	c->deadline_us = sr_now_us() + (uint64_t)l->o.header_timeout_ms * 1000u;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->next = l->pending;
	if (l->pending)
		l->pending->prev = c;
	l->pending = c;
	l->npending++;
	/* Z writes the header right behind its connect: it is usually here. */
	peer_conn_read_cb(fd, EV_READ, c);
}

static void peer_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct fleet_peer_listener *l = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = sr_tv_ms(PEER_ACCEPT_PAUSE_MS);
	uint64_t more = 0;

	/* EMFILE and the like: the connection stays in the backlog, so an
	 * armed listener would wake again at once. */
	evconnlistener_disable(lev);
	evtimer_add(l->pause, &tv);
	if (peer_ratelog_allow(&l->rl_accept, &more))
		SR_ERROR("fleet peer",
			 "peer listener: accept failed: %s; pausing it %d ms (%llu "
			 "more failures since the last line)",
			 evutil_socket_error_to_string(err), PEER_ACCEPT_PAUSE_MS,
			 (unsigned long long)more);
}

static void peer_pause_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fleet_peer_listener *l = arg;

	evconnlistener_enable(l->lev);
}

/* Listen on sa, or around the listening socket fd when fd >= 0 (stolen in
 * every case; made disabled). */
static struct fleet_peer_listener *
peer_listener_make(struct event_base *base, const struct sockaddr *sa, socklen_t salen, int fd,
		   const struct fleet_secret *sec, const char *self,
		   const struct fleet_peer_opts *o, fleet_peer_cb cb, void *arg, char *err,
		   size_t errlen)
{
	struct fleet_peer_listener *l;
	struct sockaddr_storage bound;
	socklen_t blen = sizeof(bound);
	char addr[SR_ADDRSTRLEN];

	if (fd >= 0 && getsockname(fd, (struct sockaddr *)&bound, &blen) == 0)
		sr_format_addr((struct sockaddr *)&bound, addr, sizeof(addr));
	else if (sa != NULL)
		sr_format_addr(sa, addr, sizeof(addr));
	else
		snprintf(addr, sizeof(addr), "?");
	if (sec == NULL || cb == NULL || !peer_id_valid(self)) {
		sr_seterr(err, errlen, "peer listener: no secret, relay id or callback");
		goto fail_fd;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL)
		goto nomem;
	l->base = base;
	l->sec = sec;
	snprintf(l->self, sizeof(l->self), "%s", self);
	l->cb = cb;
	l->arg = arg;
	if (o != NULL)
		l->o = *o;
	if (l->o.header_timeout_ms == 0)
		l->o.header_timeout_ms = FLEET_PEER_HEADER_TIMEOUT_MS;
	if (l->o.clock_window_ms == 0)
		l->o.clock_window_ms = FLEET_PEER_CLOCK_WINDOW_MS;
	if (l->o.max_pending == 0)
		l->o.max_pending = FLEET_PEER_MAX_PENDING;
	if (l->o.max_pending_per_source == 0)
		l->o.max_pending_per_source = FLEET_PEER_MAX_PENDING_PER_SOURCE;
	if (l->o.replay_slots == 0)
		l->o.replay_slots = FLEET_PEER_REPLAY_SLOTS;
	if (replay_init(&l->replay, l->o.replay_slots) != 0)
		goto nomem_l;
	l->pause = evtimer_new(base, peer_pause_cb, l);
	if (l->pause == NULL)
		goto nomem_l;
	if (fd >= 0) {
		/* backlog 0: it listens already, with the backlog it was made with. */
		l->lev = evconnlistener_new(base, peer_accept_cb, l,
					    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
						LEV_OPT_DISABLED,
					    0, fd);
		if (l->lev == NULL)
			goto nomem_l;
		fd = -1;
	} else {
		l->lev = evconnlistener_new_bind(base, peer_accept_cb, l,
						 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						     LEV_OPT_CLOSE_ON_EXEC,
						 1024, sa, (int)salen);
	}
	if (l->lev == NULL) {
		sr_seterr(err, errlen, "peer listener: cannot listen on %s: %s", addr,
			  strerror(errno));
		fleet_peer_listener_free(l);
		return NULL;
	}
	evconnlistener_set_error_cb(l->lev, peer_accept_error_cb);
	blen = sizeof(bound);
	if (getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&bound, &blen) == 0)
		l->port = sr_addr_port((const struct sockaddr *)&bound);
	return l;

nomem_l:
	fleet_peer_listener_free(l);
nomem:
	sr_seterr(err, errlen, "peer listener on %s: %s", addr, sr_strerror(SR_ENOMEM));
fail_fd:
	if (fd >= 0)
		close(fd);
	return NULL;
}

struct fleet_peer_listener *
fleet_peer_listener_new(struct event_base *base, const struct sockaddr *sa, socklen_t salen,
			const struct fleet_secret *sec, const char *self,
			const struct fleet_peer_opts *o, fleet_peer_cb cb, void *arg, char *err,
			size_t errlen)
{
	return peer_listener_make(base, sa, salen, -1, sec, self, o, cb, arg, err, errlen);
}

struct fleet_peer_listener *
fleet_peer_listener_adopt(struct event_base *base, int fd, const struct fleet_secret *sec,
			  const char *self, const struct fleet_peer_opts *o, fleet_peer_cb cb,
			  void *arg, char *err, size_t errlen)
{
	return peer_listener_make(base, NULL, 0, fd, sec, self, o, cb, arg, err, errlen);
}

int fleet_peer_listener_enable(struct fleet_peer_listener *l, int on)
{
	/* Connections still reading their header stop too: one completed
	 * while a handover has the relay frozen would reach a relay that has
	 * passed its state on already. Their deadline keeps running. */
	for (struct peer_conn *c = l->pending; c; c = c->next) {
		if (on)
			peer_conn_arm(c);
		else
			event_del(c->ev);
	}
	if (!on) {
		evtimer_del(l->pause);
		return evconnlistener_disable(l->lev) == 0 ? 0 : SR_ENOMEM;
	}
	return evconnlistener_enable(l->lev) == 0 ? 0 : SR_ENOMEM;
}

int fleet_peer_listener_fd(const struct fleet_peer_listener *l)
{
	return evconnlistener_get_fd(l->lev);
}

void fleet_peer_listener_free(struct fleet_peer_listener *l)
{
	if (l == NULL)
		return;
	while (l->pending) {
		struct peer_conn *c = l->pending;
		peer_conn_unlink(c);
		sr_sock_set_reset_on_close(c->fd);
		close(c->fd);
		free(c);
	}
	if (l->lev)
		evconnlistener_free(l->lev);
	if (l->pause)
		event_free(l->pause);
	replay_fini(&l->replay);
	free(l);
}

uint16_t fleet_peer_listener_port(const struct fleet_peer_listener *l)
{
	return l->port;
}

uint64_t fleet_peer_listener_count(const struct fleet_peer_listener *l,
				   enum fleet_peer_status status)
{
	return (unsigned)status < FLEET_PEER_STATUS_MAX ? l->count[status] : 0;
}

unsigned fleet_peer_listener_npending(const struct fleet_peer_listener *l)
{
	return l->npending;
}
