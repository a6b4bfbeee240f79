/* fleet/peer: the relay-to-relay header byte for byte as documented, every
 * reason to refuse one (parser and real sockets), the deadline a slow
 * sender cannot stretch, replays, the fleet secret file, and a whole hop:
 * the executor's bytes arrive behind the header, untouched. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "fleet/peer.h"
#include "fleet/splice.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_loop.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_sys.h"

static const char test_key[] = "0123456789abcdef0123456789abcdef-fleet";
#define LEASE "L-7-0a1b2c3d"
#define SELF "relay-x" /* the listening relay's id: headers are made for it */
#define V FLEET_PEER_VERSION

static struct fleet_secret *test_secret(void)
{
	struct fleet_secret *s = NULL;

	assert_int_equal(fleet_secret_new(test_key, strlen(test_key), &s), 0);
	return s;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d) != NULL)
		n++;
	closedir(d);
	return n;
}

/* The header as the documentation spells it, built here without fleet/peer. */
struct raw {
	uint8_t b[256];
	size_t len;
};

/* The MAC of the body followed by the destination's length byte and id,
 * which are not sent. */
static void raw_seal_for(struct raw *r, const char *key, const char *dest)
{
	uint8_t in[256 + 1 + 64];
	unsigned int ml = 0;
	size_t body = r->len, dlen = strlen(dest);

	memcpy(in, r->b, body);
	in[body] = (uint8_t)dlen;
	memcpy(in + body + 1, dest, dlen);
	HMAC(EVP_sha256(), key, (int)strlen(key), in, body + 1 + dlen, r->b + body, &ml);
	assert_int_equal(ml, 32);
	r->len = body + 32;
}

static void raw_seal(struct raw *r, const char *key)
{
	raw_seal_for(r, key, SELF);
}

/* family 4/6 with 16 address bytes, or anything for the refusal tests;
 * the MAC is made with key (NULL: none appended). */
static void raw_make(struct raw *r, uint8_t version, uint8_t role, uint8_t family,
		     const uint8_t addr[16], uint16_t port, uint64_t time_ms, const char *lease,
		     size_t llen, const char *key)
{
	memset(r, 0, sizeof(*r));
	memcpy(r->b, "SRFW", 4);
	r->b[4] = version;
	r->b[5] = role;
	r->b[6] = family;
	r->b[7] = (uint8_t)llen;
	r->b[8] = (uint8_t)(port >> 8);
	r->b[9] = (uint8_t)port;
	for (int i = 0; i < 8; i++)
		r->b[10 + i] = (uint8_t)(time_ms >> (56 - 8 * i));
	for (int i = 0; i < 16; i++)
		r->b[18 + i] = (uint8_t)(0xa0 + i);
	memcpy(r->b + 34, addr, 16);
	memcpy(r->b + 50, lease, llen);
	r->len = 50 + llen;
	if (key)
		raw_seal(r, key);
}

static const uint8_t addr4[16] = {10, 1, 2, 3};

static void raw_good(struct raw *r, uint64_t time_ms)
{
	raw_make(r, V, TUN_PORT_BLOCKMANAGER, 4, addr4, 40123, time_ms, LEASE, strlen(LEASE),
		 test_key);
}

static enum fleet_peer_status parse_raw(const struct raw *r, const struct fleet_secret *s,
					uint64_t now_ms, struct fleet_peer_hdr *h)
{
	size_t hlen = 0;

	return fleet_peer_hdr_parse(r->b, r->len, s, SELF, now_ms, 60000, h, &hlen);
}

static void test_header_layout_matches_docs(void **state)
{
	struct fleet_secret *s = test_secret();
	struct sockaddr_storage ex = ts_addr("10.1.2.3", 40123);
	struct fleet_peer_hdr h;
	uint8_t out[FLEET_PEER_HDR_MAX];
	struct raw r;
	int n;

	(void)state;
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_BLOCKMANAGER, TS_SA(ex)), 0);
	h.time_ms = 1700000000123ull;
	for (int i = 0; i < 16; i++)
		h.nonce[i] = (uint8_t)(0xa0 + i);
	n = fleet_peer_hdr_encode(&h, s, SELF, out, sizeof(out));
	raw_good(&r, 1700000000123ull);
	assert_int_equal(n, (int)r.len);
	assert_int_equal(n, 50 + (int)strlen(LEASE) + 32);
	assert_memory_equal(out, r.b, r.len);
	assert_int_equal(fleet_peer_hdr_encode(&h, s, SELF, out, (size_t)n - 1), SR_EINVAL);
	fleet_secret_free(s);
}

static void test_header_round_trip(void **state)
{
	struct fleet_secret *s = test_secret();
	const char *addrs[] = {"10.1.2.3", "2001:db8::7", "::ffff:192.168.4.5"};
	const int fam[] = {AF_INET, AF_INET6, AF_INET};
	uint8_t out[FLEET_PEER_HDR_MAX];
	char longest[TUN_CTL_LEASE_MAX];

	(void)state;
	memset(longest, 'x', sizeof(longest) - 1);
	longest[0] = 'L';
	longest[1] = '-';
	longest[sizeof(longest) - 1] = '\0';
	for (size_t i = 0; i < SR_ARRAY_LEN(addrs); i++) {
		struct sockaddr_storage ex = ts_addr(addrs[i], (uint16_t)(1000 + i));
		struct fleet_peer_hdr h, back;
		char a1[SR_ADDRSTRLEN], a2[SR_ADDRSTRLEN];
		const char *lease = i == 2 ? longest : LEASE;
		size_t hlen = 0;
		int n;

		assert_int_equal(
		    fleet_peer_hdr_init(&h, lease, (enum tun_port_role)i, TS_SA(ex)), 0);
		n = fleet_peer_hdr_encode(&h, s, SELF, out, sizeof(out));
		assert_true(n > 0 && n <= FLEET_PEER_HDR_MAX);
		/* Every prefix asks for more, and says how much it has at least. */
		for (int k = 0; k < n; k++) {
			assert_int_equal(fleet_peer_hdr_parse(out, (size_t)k, s, SELF, h.time_ms,
							      60000, &back, &hlen),
					 FLEET_PEER_MORE);
			assert_int_equal(hlen, k < 50 ? 50 : n);
		}
		/* Bytes behind the header are not its business. */
		assert_int_equal(
		    fleet_peer_hdr_parse(out, sizeof(out), s, SELF, h.time_ms, 60000, &back, &hlen),
		    FLEET_PEER_OK);
		assert_int_equal(hlen, n);
		assert_string_equal(back.lease, lease);
		assert_int_equal(back.role, (int)i);
		assert_int_equal(back.exec.ss_family, fam[i]);
		assert_string_equal(sr_format_addr(TS_SA(back.exec), a1, sizeof(a1)),
				    i == 2 ? "192.168.4.5:1002"
					   : sr_format_addr(TS_SA(ex), a2, sizeof(a2)));
		assert_true(back.time_ms == h.time_ms);
		assert_memory_equal(back.nonce, h.nonce, 16);
	}
	fleet_secret_free(s);
}

static void test_header_init_refuses_invalid_fields(void **state)
{
	struct sockaddr_storage ok = ts_addr("10.1.2.3", 5), p0 = ts_addr("10.1.2.3", 0),
				any = ts_addr("0.0.0.0", 5), mc = ts_addr("ff02::1", 5);
	struct fleet_peer_hdr h;

	(void)state;
	assert_int_equal(fleet_peer_hdr_init(&h, "X-1", TUN_PORT_DRIVER, TS_SA(ok)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, NULL, TUN_PORT_DRIVER, TS_SA(ok)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_MAX, TS_SA(ok)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, TS_SA(p0)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, TS_SA(any)),
			 SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, TS_SA(mc)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, NULL), SR_EINVAL);
}

static void test_parse_refusals(void **state)
{
	struct fleet_secret *s = test_secret();
	const uint64_t now = 1700000000000ull;
	struct fleet_peer_hdr h;
	struct raw r;
	size_t hlen;
	uint8_t a[16];

	(void)state;
	raw_good(&r, now);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_OK);

	/* Framing: refused from the first byte that shows it. */
	r.b[0] = 'X';
	assert_int_equal(fleet_peer_hdr_parse(r.b, 1, s, SELF, now, 60000, &h, &hlen),
			 FLEET_PEER_BAD_MAGIC);
	raw_good(&r, now);
	r.b[3] = 'w';
	assert_int_equal(fleet_peer_hdr_parse(r.b, 4, s, SELF, now, 60000, &h, &hlen),
			 FLEET_PEER_BAD_MAGIC);
	/* Version 1, whose MAC did not name the destination relay. */
	raw_make(&r, V - 1, 0, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(fleet_peer_hdr_parse(r.b, 5, s, SELF, now, 60000, &h, &hlen),
			 FLEET_PEER_BAD_VERSION);
	raw_make(&r, 0, 0, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_VERSION);
	raw_good(&r, now);
	r.b[7] = TUN_CTL_LEASE_MAX; /* 48: one over */
	assert_int_equal(fleet_peer_hdr_parse(r.b, 50, s, SELF, now, 60000, &h, &hlen),
			 FLEET_PEER_OVERSIZE);
	r.b[7] = 255;
	assert_int_equal(fleet_peer_hdr_parse(r.b, 50, s, SELF, now, 60000, &h, &hlen),
			 FLEET_PEER_OVERSIZE);

	/* MAC: any changed byte, another secret, a truncated MAC. */
	for (size_t i = 5; i < r.len; i += 7) {
		raw_good(&r, now);
		r.b[i] ^= 0x01;
		assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_MAC);
	}
	raw_make(&r, V, 0, 4, addr4, 1, now, LEASE, strlen(LEASE),
		 "another secret of at least 32 bytes!");
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_MAC);

	/* Time: inside the window at both edges, refused one ms past each. */
	raw_good(&r, now - 60000);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_OK);
	raw_good(&r, now - 60001);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_STALE);
	raw_good(&r, now + 60000);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_OK);
	raw_good(&r, now + 60001);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_FUTURE);
	raw_good(&r, UINT64_MAX);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_FUTURE);
	raw_good(&r, 0);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_STALE);

	/* Fields, each with a valid MAC. */
	raw_make(&r, V, TUN_PORT_MAX, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ROLE);
	raw_make(&r, V, 255, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ROLE);
	raw_make(&r, V, 0, 5, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ADDR);
	raw_make(&r, V, 0, 4, addr4, 0, now, LEASE, strlen(LEASE), test_key);
	assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ADDR);
	{
		const char *bad4[] = {"0.0.0.0", "224.0.0.1", "255.255.255.255"};
		const char *bad6[] = {"::", "ff02::1", "::ffff:10.1.2.3"};
		for (size_t i = 0; i < 3; i++) {
			memset(a, 0, sizeof(a));
			assert_int_equal(inet_pton(AF_INET, bad4[i], a), 1);
			raw_make(&r, V, 0, 4, a, 1, now, LEASE, strlen(LEASE), test_key);
			assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ADDR);
			assert_int_equal(inet_pton(AF_INET6, bad6[i], a), 1);
			raw_make(&r, V, 0, 6, a, 1, now, LEASE, strlen(LEASE), test_key);
			assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ADDR);
		}
		memcpy(a, addr4, sizeof(a));
		a[15] = 1; /* IPv4 padding must be zero */
		raw_make(&r, V, 0, 4, a, 1, now, LEASE, strlen(LEASE), test_key);
		assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_ADDR);
	}
	{
		const char *bad[] = {"", "L-", "X-1", "L-a b", "L-\xc3\xa9", "L-a\nb"};
		for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++) {
			raw_make(&r, V, 0, 4, addr4, 1, now, bad[i], strlen(bad[i]), test_key);
			assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_LEASE);
		}
		raw_make(&r, V, 0, 4, addr4, 1, now, "L-1\0x", 5, test_key); /* NUL inside */
		assert_int_equal(parse_raw(&r, s, now, &h), FLEET_PEER_BAD_LEASE);
	}
	fleet_secret_free(s);
}

static void test_secret_file(void **state)
{
	struct ts_dir d = {{0}};
	struct fleet_secret *s = (struct fleet_secret *)1;
	char path[256], err[256];
	char key[FLEET_SECRET_MAX + 2];

	(void)state;
	ts_dir_make(&d, "fleet-secret");
	ts_dir_file(&d, "secret", path, sizeof(path));
	memset(key, 'k', sizeof(key));

	key[31] = '\0'; /* 31 bytes: too short; the text never shows the key */
	ts_write_file(path, key);
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), SR_EINVAL);
	assert_null(s);
	assert_contains(err, "holds 31");
	assert_null(strstr(err, "kkkk"));

	key[31] = 'k';
	key[32] = '\0';
	ts_write_file(path, key);
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), 0);
	assert_non_null(s);
	fleet_secret_free(s);

	key[FLEET_SECRET_MAX] = '\0';
	key[32] = 'k';
	ts_write_file(path, key);
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), 0);
	fleet_secret_free(s);
	key[FLEET_SECRET_MAX] = 'k';
	key[FLEET_SECRET_MAX + 1] = '\0';
	ts_write_file(path, key);
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), SR_EINVAL);
	assert_contains(err, "more than 1024");

	ts_dir_file(&d, "missing", path, sizeof(path));
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), SR_EIO);
	assert_contains(err, "cannot open");
	/* A FIFO hung the relay's start in open() (alarm: a hang fails). */
	ts_dir_file(&d, "fifo", path, sizeof(path));
	assert_int_equal(mkfifo(path, 0600), 0);
	alarm(10);
	assert_int_equal(fleet_secret_load(path, &s, err, sizeof(err)), SR_EINVAL);
	alarm(0);
	assert_contains(err, "not a regular file");
	fleet_secret_free(NULL);
	ts_dir_remove(&d);
}

/* A header seen on the wire between two relays is good at its destination
 * only: the MAC names that relay's id, so another relay of the fleet
 * refuses it (it was replayable across the fleet for the clock window). */
static void test_mac_names_the_destination(void **state)
{
	struct fleet_secret *s = test_secret();
	struct sockaddr_storage ex = ts_addr("10.1.2.3", 40123);
	struct fleet_peer_hdr h;
	uint8_t out[FLEET_PEER_HDR_MAX];
	char longest[FLEET_PEER_ID_MAX + 1];
	size_t hlen = 0;
	struct raw r;
	int n;

	(void)state;
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, TS_SA(ex)), 0);
	n = fleet_peer_hdr_encode(&h, s, "relay-b", out, sizeof(out));
	assert_true(n > 0);
	assert_int_equal(fleet_peer_hdr_parse(out, (size_t)n, s, "relay-b", h.time_ms, 60000,
					      NULL, &hlen),
			 FLEET_PEER_OK);
	assert_int_equal(fleet_peer_hdr_parse(out, (size_t)n, s, "relay-c", h.time_ms, 60000,
					      NULL, &hlen),
			 FLEET_PEER_BAD_MAC);
	/* A prefix of the id is another id (the length is in the MAC). */
	assert_int_equal(fleet_peer_hdr_parse(out, (size_t)n, s, "relay-", h.time_ms, 60000,
					      NULL, &hlen),
			 FLEET_PEER_BAD_MAC);
	/* The body's MAC alone (version 1's) is not enough. */
	raw_good(&r, h.time_ms);
	r.len -= 32;
	{
		unsigned int ml = 0;
		HMAC(EVP_sha256(), test_key, (int)strlen(test_key), r.b, r.len, r.b + r.len, &ml);
		r.len += 32;
	}
	assert_int_equal(parse_raw(&r, s, h.time_ms, NULL), FLEET_PEER_BAD_MAC);
	/* Ids outside 1..63 bytes make no header and match none. */
	memset(longest, 'r', sizeof(longest) - 1);
	longest[sizeof(longest) - 1] = '\0';
	assert_int_equal(fleet_peer_hdr_encode(&h, s, "", out, sizeof(out)), SR_EINVAL);
	assert_int_equal(fleet_peer_hdr_encode(&h, s, longest, out, sizeof(out)), SR_EINVAL);
	longest[FLEET_PEER_ID_MAX - 1] = '\0';
	n = fleet_peer_hdr_encode(&h, s, longest, out, sizeof(out));
	assert_true(n > 0);
	assert_int_equal(fleet_peer_hdr_parse(out, (size_t)n, s, longest, h.time_ms, 60000, NULL,
					      &hlen),
			 FLEET_PEER_OK);
	assert_int_equal(
	    fleet_peer_hdr_parse(out, (size_t)n, s, "", h.time_ms, 60000, NULL, &hlen),
	    FLEET_PEER_BAD_MAC);
	fleet_secret_free(s);
}

/* Peer addresses come from etcd: only a numeric IP:port a relay can be
 * dialled at passes, in at most 63 bytes. */
static void test_peer_addr_parse_is_strict(void **state)
{
	const char *good[] = {"10.0.0.3:7443", "127.0.0.2:1", "192.168.1.1:65535",
			      "[2001:db8::3]:7443", "[::1]:9"};
	const char *bad[] = {"", "10.0.0.3", "10.0.0.3:", ":7443", "10.0.0.3:0",
			     "10.0.0.3:65536", "10.0.0.3:07443", "10.0.0.3:+7443",
			     "10.0.0.3: 7443", "10.0.0.3:7443 ", " 10.0.0.3:7443",
			     "10.0.0.3:7443x", "0.0.0.0:7443", "0.1.2.3:7443", "224.0.0.1:7443",
			     "239.255.255.250:1900", "255.255.255.255:7443", "240.0.0.1:7443",
			     "[::]:7443", "[ff02::1]:7443", "[::ffff:10.0.0.3]:7443",
			     "2001:db8::3:7443", "[2001:db8::3]7443", "[2001:db8::3]:",
			     "[fe80::1%eth0]:7443", "relay-b.example:7443", "localhost:7443",
			     "010.0.0.3:7443", "10.0.0.3:7443:1", "[10.0.0.3]:7443"};
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	char a[SR_ADDRSTRLEN], longish[80];

	(void)state;
	for (size_t i = 0; i < SR_ARRAY_LEN(good); i++) {
		assert_int_equal(fleet_peer_addr_parse(good[i], strlen(good[i]), &ss, &sl), 0);
		assert_string_equal(sr_format_addr(TS_SA(ss), a, sizeof(a)), good[i]);
		assert_int_equal(sl, ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
							     : sizeof(struct sockaddr_in6));
	}
	for (size_t i = 0; i < SR_ARRAY_LEN(bad); i++)
		assert_int_equal(fleet_peer_addr_parse(bad[i], strlen(bad[i]), &ss, &sl), -1);
	/* The length given is the whole: a NUL inside, or text behind it that
	 * a C string would hide, is refused. */
	assert_int_equal(fleet_peer_addr_parse("10.0.0.3:7443\0x", 15, &ss, &sl), -1);
	assert_int_equal(fleet_peer_addr_parse("10.0.0.3:74", 11, &ss, &sl), 0);
	assert_int_equal(sr_addr_port(TS_SA(ss)), 74);
	/* Bounded: FLEET_PEER_ADDR_MAX - 1 bytes at most, whatever they say. */
	snprintf(longish, sizeof(longish), "[2001:0db8:0000:0000:0000:0000:0000:0003]:7443");
	assert_true(strlen(longish) < FLEET_PEER_ADDR_MAX);
	assert_int_equal(fleet_peer_addr_parse(longish, strlen(longish), &ss, &sl), 0);
	memset(longish, '1', sizeof(longish));
	assert_int_equal(fleet_peer_addr_parse(longish, FLEET_PEER_ADDR_MAX, &ss, &sl), -1);
	assert_int_equal(fleet_peer_addr_parse(NULL, 0, &ss, &sl), -1);
}

/* ------------------------------------------------------------ listener */

struct lt {
	struct event_base *base;
	struct fleet_secret *sec;
	struct fleet_peer_listener *l;
	uint16_t port;
	int accepted;
	int fd; /* the last accepted connection */
	struct fleet_peer_hdr h;
};

static void lt_cb(const struct fleet_peer_hdr *h, int fd, void *arg)
{
	struct lt *t = arg;

	t->accepted++;
	t->h = *h;
	if (t->fd >= 0)
		close(t->fd);
	t->fd = fd;
}

static void lt_open(struct lt *t, const struct fleet_peer_opts *o)
{
	struct sockaddr_storage ss = ts_addr("127.0.0.1", 0);
	char err[256] = "";

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	t->base = event_base_new();
	assert_non_null(t->base);
	t->sec = test_secret();
	t->l = fleet_peer_listener_new(t->base, TS_SA(ss), sizeof(struct sockaddr_in), t->sec,
				       SELF, o, lt_cb, t, err, sizeof(err));
	assert_non_null(t->l);
	t->port = fleet_peer_listener_port(t->l);
	assert_true(t->port > 0);
}

static void lt_close(struct lt *t)
{
	if (t->fd >= 0)
		close(t->fd);
	fleet_peer_listener_free(t->l);
	fleet_secret_free(t->sec);
	event_base_free(t->base);
}

struct lt_wait {
	struct lt *t;
	enum fleet_peer_status st;
	uint64_t want;
};

static int lt_counted(void *arg)
{
	struct lt_wait *w = arg;

	return fleet_peer_listener_count(w->t->l, w->st) >= w->want;
}

/* Runs the loop until the listener has counted want of st (bounded). */
static void lt_wait_count(struct lt *t, enum fleet_peer_status st, uint64_t want, int ms)
{
	struct lt_wait w = {t, st, want};

	assert_true(ts_loop_until(t->base, lt_counted, &w, ms));
}

/* 1 if the peer reset fd within ms (recv fails with ECONNRESET). */
static int saw_reset(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char b[64];
	ssize_t n;

	if (poll(&p, 1, ms) != 1)
		return 0;
	while ((n = recv(fd, b, sizeof(b), MSG_DONTWAIT)) > 0)
		;
	return n < 0 && errno == ECONNRESET;
}

static void send_all(int fd, const void *b, size_t n)
{
	assert_int_equal(send(fd, b, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* One connection sends r; the listener must refuse it for why, with a reset. */
static void expect_refused(struct lt *t, const struct raw *r, enum fleet_peer_status why)
{
	uint64_t before = fleet_peer_listener_count(t->l, why);
	int c = ts_connect("127.0.0.1", t->port);

	assert_true(c >= 0);
	send_all(c, r->b, r->len);
	lt_wait_count(t, why, before + 1, 2000);
	assert_true(saw_reset(c, 2000));
	close(c);
	assert_int_equal(t->accepted, 0);
}

static void test_listener_refusals_over_sockets(void **state)
{
	int fds = count_fds();
	uint64_t now = fleet_peer_now_ms();
	struct lt t;
	struct raw r;
	uint8_t zero[16] = {0};

	(void)state;
	lt_open(&t, NULL);

	raw_good(&r, now);
	r.b[0] = 'G'; /* "GET / HTTP/1.1" and the like */
	expect_refused(&t, &r, FLEET_PEER_BAD_MAGIC);
	raw_make(&r, 9, 0, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	expect_refused(&t, &r, FLEET_PEER_BAD_VERSION);
	raw_good(&r, now);
	r.b[7] = 200;
	r.len = 50;
	expect_refused(&t, &r, FLEET_PEER_OVERSIZE);
	raw_make(&r, V, 0, 4, addr4, 1, now, LEASE, strlen(LEASE),
		 "another secret of at least 32 bytes!");
	expect_refused(&t, &r, FLEET_PEER_BAD_MAC);
	raw_good(&r, now - 61000);
	expect_refused(&t, &r, FLEET_PEER_STALE);
	raw_good(&r, now + 61000);
	expect_refused(&t, &r, FLEET_PEER_FUTURE);
	raw_make(&r, V, 0, 4, addr4, 1, now, "L-no/slash", 10, test_key);
	expect_refused(&t, &r, FLEET_PEER_BAD_LEASE);
	raw_make(&r, V, 7, 4, addr4, 1, now, LEASE, strlen(LEASE), test_key);
	expect_refused(&t, &r, FLEET_PEER_BAD_ROLE);
	raw_make(&r, V, 0, 6, zero, 1, now, LEASE, strlen(LEASE), test_key);
	expect_refused(&t, &r, FLEET_PEER_BAD_ADDR);

	/* Truncated: the sender closes its side before the header is whole. */
	raw_good(&r, now);
	{
		int c = ts_connect("127.0.0.1", t.port);
		assert_true(c >= 0);
		send_all(c, r.b, r.len - 1);
		shutdown(c, SHUT_WR);
		lt_wait_count(&t, FLEET_PEER_TRUNCATED, 1, 2000);
		assert_true(saw_reset(c, 2000));
		close(c);
	}
	/* Reset by the sender while reading. */
	{
		int c = ts_connect("127.0.0.1", t.port);
		assert_true(c >= 0);
		send_all(c, r.b, 10);
		ts_loop_run_for(t.base, 20);
		sr_sock_set_reset_on_close(c);
		close(c);
		lt_wait_count(&t, FLEET_PEER_IO, 1, 2000);
	}
	assert_int_equal(t.accepted, 0);
	assert_int_equal(fleet_peer_listener_npending(t.l), 0);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_OK), 0);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

static void test_listener_slow_drip_hits_deadline(void **state)
{
	struct fleet_peer_opts o = {.header_timeout_ms = 400};
	int fds = count_fds();
	struct lt t;
	struct raw r;
	uint64_t t0, took;
	size_t sent = 0;
	int c;

	(void)state;
	lt_open(&t, &o);
	raw_good(&r, fleet_peer_now_ms());
	c = ts_connect("127.0.0.1", t.port);
	assert_true(c >= 0);
	t0 = sr_now_us();
	/* One byte every 30 ms: each byte arrives well inside any per-read
	 * timeout, and the whole would take 3 s. */
	while (fleet_peer_listener_count(t.l, FLEET_PEER_TIMEOUT) == 0 &&
	       sr_now_us() - t0 < 3000000u && sent < r.len - 1) {
		send(c, r.b + sent, 1, MSG_NOSIGNAL);
		sent++;
		ts_loop_run_for(t.base, 30);
	}
	took = sr_now_us() - t0;
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_TIMEOUT), 1);
	assert_true(took >= 380000u && took < 1000000u);
	assert_true(sent < r.len - 1);
	assert_true(saw_reset(c, 2000));
	close(c);
	assert_int_equal(t.accepted, 0);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

static void test_listener_busy_and_free_resets_pending(void **state)
{
	struct fleet_peer_opts o = {.max_pending = 2};
	int fds = count_fds();
	struct lt t;
	int c[3];

	(void)state;
	lt_open(&t, &o);
	for (int i = 0; i < 3; i++) {
		c[i] = ts_connect("127.0.0.1", t.port);
		assert_true(c[i] >= 0);
		send_all(c[i], "SRFW", 4);
	}
	lt_wait_count(&t, FLEET_PEER_BUSY, 1, 2000);
	assert_int_equal(fleet_peer_listener_npending(t.l), 2);
	/* The oldest made room for the newest. */
	assert_true(saw_reset(c[0], 2000));
	/* Freeing the listener resets those still reading. */
	fleet_peer_listener_free(t.l);
	t.l = NULL;
	assert_true(saw_reset(c[1], 2000));
	assert_true(saw_reset(c[2], 2000));
	for (int i = 0; i < 3; i++)
		close(c[i]);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

/* A blocking TCP connection to 127.0.0.1:port from src (another loopback
 * address: another relay). */
static int connect_from(const char *src, uint16_t port)
{
	struct sockaddr_storage from = ts_addr(src, 0), to = ts_addr("127.0.0.1", port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, TS_SA(from), sizeof(struct sockaddr_in)), 0);
	assert_int_equal(connect(fd, TS_SA(to), sizeof(struct sockaddr_in)), 0);
	return fd;
}

struct lt_np {
	struct lt *t;
	unsigned want;
};

static int lt_npending_is(void *arg)
{
	struct lt_np *w = arg;

	return fleet_peer_listener_npending(w->t->l) == w->want;
}

static void lt_wait_npending(struct lt *t, unsigned want)
{
	struct lt_np w = {t, want};

	assert_true(ts_loop_until(t->base, lt_npending_is, &w, 2000));
}

static void test_listener_caps_pending_per_source(void **state)
{
	struct fleet_peer_opts o = {.max_pending_per_source = 3};
	int fds = count_fds();
	struct lt t;
	int c[4], other;

	(void)state;
	lt_open(&t, &o);
	/* One source opens connections and sends nothing: past its share its
	 * oldest is reset, while the listener still has room for other relays. */
	for (int i = 0; i < 4; i++) {
		c[i] = ts_connect("127.0.0.1", t.port);
		assert_true(c[i] >= 0);
	}
	lt_wait_count(&t, FLEET_PEER_BUSY_SOURCE, 1, 2000);
	assert_int_equal(fleet_peer_listener_npending(t.l), 3);
	assert_true(saw_reset(c[0], 2000));
	other = connect_from("127.0.0.2", t.port);
	lt_wait_npending(&t, 4);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY_SOURCE), 1);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY), 0);
	/* A slot freed (the header deadline, or here a close) is usable again. */
	close(c[1]);
	lt_wait_count(&t, FLEET_PEER_TRUNCATED, 1, 2000);
	close(c[0]);
	c[0] = ts_connect("127.0.0.1", t.port);
	assert_true(c[0] >= 0);
	lt_wait_npending(&t, 4);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY_SOURCE), 1);
	c[1] = -1;
	for (int i = 0; i < 4; i++)
		if (c[i] >= 0)
			close(c[i]);
	close(other);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

/* A relay sends its header once its connect completes, which may be after
 * the listener accepted it: the header can be waiting in the socket, unread,
 * when the connection is the oldest and the slots are full. It is read
 * before the connection is taken for an idle one. */
static void test_a_header_waiting_unread_is_not_evicted(void **state)
{
	struct fleet_peer_opts o = {.max_pending = 2};
	int fds = count_fds();
	struct lt t;
	struct raw r;
	int a, b, c;

	(void)state;
	lt_open(&t, &o);
	a = ts_connect("127.0.0.1", t.port);
	assert_true(a >= 0);
	lt_wait_npending(&t, 1);
	/* Two more wait to be accepted, then a's header arrives: the loop
	 * sees the listener ready first and accepts both in one go. */
	b = ts_connect("127.0.0.1", t.port);
	c = ts_connect("127.0.0.1", t.port);
	assert_true(b >= 0 && c >= 0);
	raw_good(&r, fleet_peer_now_ms());
	send_all(a, r.b, r.len);
	for (int i = 0; i < 50 && fleet_peer_listener_npending(t.l) < 2; i++)
		ts_loop_run_for(t.base, 20);
	assert_int_equal(t.accepted, 1);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY), 0);
	close(a);
	close(b);
	close(c);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

/* A handover freezes the relay: a header that completes meanwhile must not
 * reach the frozen relay (it has passed its state on; the connection would
 * be lost). Disabled, the listener reads no pending header; enabled again,
 * it reads it. */
static void test_disabled_listener_reads_no_header(void **state)
{
	int fds = count_fds();
	struct lt t;
	struct raw r;
	int c;

	(void)state;
	lt_open(&t, NULL);
	raw_good(&r, fleet_peer_now_ms());
	c = ts_connect("127.0.0.1", t.port);
	assert_true(c >= 0);
	send_all(c, r.b, 10);
	lt_wait_npending(&t, 1);
	assert_int_equal(fleet_peer_listener_enable(t.l, 0), 0);
	send_all(c, r.b + 10, r.len - 10);
	ts_loop_run_for(t.base, 300);
	assert_int_equal(t.accepted, 0);
	assert_int_equal(fleet_peer_listener_npending(t.l), 1);
	assert_int_equal(fleet_peer_listener_enable(t.l, 1), 0);
	for (int i = 0; i < 100 && t.accepted == 0; i++)
		ts_loop_run_for(t.base, 20);
	assert_int_equal(t.accepted, 1);
	close(c);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

/* A relay's header, sent right behind its connect from src: accepted? */
static void expect_header_accepted(struct lt *t, const char *src)
{
	static uint8_t n;
	struct raw r;
	int before = t->accepted;
	int c = connect_from(src, t->port);

	raw_make(&r, V, TUN_PORT_BLOCKMANAGER, 4, addr4, 40123, fleet_peer_now_ms(), LEASE,
		 strlen(LEASE), NULL);
	r.b[18] = ++n; /* a nonce of its own: not a replay */
	raw_seal(&r, test_key);
	send_all(c, r.b, r.len);
	for (int i = 0; i < 100 && t->accepted == before; i++)
		ts_loop_run_for(t->base, 20);
	assert_int_equal(t->accepted, before + 1);
	close(c);
}

/* Connections that send nothing, from as many sources as it takes to fill
 * every slot, or from the very address a relay connects from (any process
 * on its node has it): a relay's header still gets through, and the oldest
 * idle connection makes room. Refusing the newcomer instead shut every
 * carried executor connection out. */
static void test_idle_connections_do_not_shut_out_a_relay(void **state)
{
	struct fleet_peer_opts o = {.max_pending = 4, .max_pending_per_source = 2};
	const char *idle_src[4] = {"127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"};
	int fds = count_fds();
	struct lt t;
	int c[4], d[2];

	(void)state;
	lt_open(&t, &o);
	for (int i = 0; i < 4; i++)
		c[i] = connect_from(idle_src[i], t.port);
	lt_wait_npending(&t, 4);
	expect_header_accepted(&t, "127.0.0.2");
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY), 1);
	assert_true(saw_reset(c[0], 2000));
	/* Idle connections from the relay's own address. */
	for (int i = 0; i < 2; i++)
		d[i] = connect_from("127.0.0.2", t.port);
	lt_wait_count(&t, FLEET_PEER_BUSY, 2, 2000);
	expect_header_accepted(&t, "127.0.0.2");
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_BUSY_SOURCE), 1);
	assert_true(saw_reset(d[0], 2000));
	for (int i = 0; i < 4; i++)
		close(c[i]);
	for (int i = 0; i < 2; i++)
		close(d[i]);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

static void test_listener_accepts_and_keeps_following_bytes(void **state)
{
	int fds = count_fds();
	struct sockaddr_storage ex = ts_addr("2001:db8::42", 33333);
	struct fleet_peer_hdr h;
	uint8_t buf[FLEET_PEER_HDR_MAX + 32];
	char got[32] = "";
	struct lt t;
	int n, c;

	(void)state;
	lt_open(&t, NULL);
	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_DRIVER, TS_SA(ex)), 0);
	n = fleet_peer_hdr_encode(&h, t.sec, SELF, buf, sizeof(buf));
	assert_true(n > 0);
	memcpy(buf + n, "executor-first", 14);
	c = ts_connect("127.0.0.1", t.port);
	assert_true(c >= 0);
	send_all(c, buf, (size_t)n + 14); /* one segment: header and data together */
	assert_true(ts_loop_until_count(t.base, &t.accepted, 1, 2000));
	assert_string_equal(t.h.lease, LEASE);
	assert_int_equal(t.h.role, TUN_PORT_DRIVER);
	assert_int_equal(sr_addr_port(TS_SA(t.h.exec)), 33333);
	assert_int_equal(recv(t.fd, got, sizeof(got), 0), 14);
	assert_memory_equal(got, "executor-first", 14);
	assert_int_equal(fleet_peer_listener_count(t.l, FLEET_PEER_OK), 1);

	/* The same header again is a replay, even on a new connection. */
	{
		struct raw r;
		memcpy(r.b, buf, (size_t)n);
		r.len = (size_t)n;
		t.accepted = 0;
		expect_refused(&t, &r, FLEET_PEER_REPLAY);
	}
	close(c);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

static void test_replay_memory_is_bounded_and_safe(void **state)
{
	struct fleet_peer_opts o = {.replay_slots = 4};
	uint64_t now = fleet_peer_now_ms();
	struct raw r[6];
	struct lt t;

	(void)state;
	lt_open(&t, &o);
	for (int i = 0; i < 6; i++) {
		raw_good(&r[i], now - 10000 + (uint64_t)i * 1000);
		r[i].len -= 32;
		r[i].b[18] = (uint8_t)i; /* distinct nonces */
		raw_seal(&r[i], test_key);
	}
	/* Four fill the memory; the fifth makes it forget the first. */
	for (int i = 0; i < 5; i++) {
		int c = ts_connect("127.0.0.1", t.port);
		send_all(c, r[i].b, r[i].len);
		assert_true(ts_loop_until_count(t.base, &t.accepted, i + 1, 2000));
		close(c);
	}
	/* The forgotten nonce is still refused (time at or before the floor),
	 * and so is a fresh nonce that old; a newer one passes. */
	t.accepted = 0;
	expect_refused(&t, &r[0], FLEET_PEER_REPLAY);
	{
		struct raw old;
		raw_good(&old, now - 10000);
		old.len -= 32;
		old.b[18] = 0x77;
		raw_seal(&old, test_key);
		expect_refused(&t, &old, FLEET_PEER_REPLAY);
	}
	expect_refused(&t, &r[3], FLEET_PEER_REPLAY);
	{
		int c = ts_connect("127.0.0.1", t.port);
		send_all(c, r[5].b, r[5].len);
		assert_true(ts_loop_until_count(t.base, &t.accepted, 1, 2000));
		close(c);
	}
	lt_close(&t);
}

/* ------------------------------------------------------------- the hop */

struct hop {
	int ends;
	enum fleet_splice_end end;
};

static void hop_cb(struct fleet_splice *sp, enum fleet_splice_end end, int err, void *arg)
{
	struct hop *h = arg;

	h->ends++;
	h->end = end;
}

static void test_hop_header_then_executor_bytes(void **state)
{
	int fds = count_fds();
	struct sockaddr_storage peer;
	struct fleet_peer_hdr h;
	struct fleet_splice *sp;
	uint8_t hdr[FLEET_PEER_HDR_MAX];
	struct hop hp = {0};
	struct lt t;
	uint16_t lport;
	int lfd, e, a, n;
	char got[16] = "";

	(void)state;
	lt_open(&t, NULL);
	peer = ts_addr("127.0.0.1", t.port);
	lfd = ts_listen_loopback(0, 0, &lport);
	e = ts_connect("127.0.0.1", lport);
	a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(e >= 0 && a >= 0);
	send_all(e, "hello X", 7);

	assert_int_equal(fleet_peer_hdr_init(&h, LEASE, TUN_PORT_BLOCKMANAGER, TS_SA(peer)), 0);
	n = fleet_peer_hdr_encode(&h, t.sec, SELF, hdr, sizeof(hdr));
	sp = fleet_splice_new(t.base, a, NULL, hop_cb, &hp);
	assert_non_null(sp);
	assert_int_equal(
	    fleet_splice_connect(sp, TS_SA(peer), sizeof(struct sockaddr_in), hdr, (size_t)n),
	    0);
	assert_true(ts_loop_until_count(t.base, &t.accepted, 1, 2000));
	assert_int_equal(t.h.role, TUN_PORT_BLOCKMANAGER);
	/* X reads the executor's bytes right behind the header; its answer
	 * reaches the executor. */
	for (int i = 0; i < 100 && (size_t)strlen(got) < 7; i++) {
		ssize_t k = recv(t.fd, got + strlen(got), 7 - strlen(got), MSG_DONTWAIT);
		(void)k;
		ts_loop_run_for(t.base, 10);
	}
	assert_string_equal(got, "hello X");
	send_all(t.fd, "hi", 2);
	ts_loop_run_for(t.base, 50);
	memset(got, 0, sizeof(got));
	assert_int_equal(recv(e, got, sizeof(got), MSG_DONTWAIT), 2);
	/* Both close: the pair ends cleanly. */
	shutdown(e, SHUT_WR);
	shutdown(t.fd, SHUT_WR);
	assert_true(ts_loop_until_count(t.base, &hp.ends, 1, 2000));
	assert_int_equal(hp.end, FLEET_SPLICE_DONE);
	fleet_splice_free(sp);
	close(e);
	close(lfd);
	lt_close(&t);
	assert_int_equal(count_fds(), fds);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_header_layout_matches_docs),
	    cmocka_unit_test(test_header_round_trip),
	    cmocka_unit_test(test_header_init_refuses_invalid_fields),
	    cmocka_unit_test(test_parse_refusals),
	    cmocka_unit_test(test_mac_names_the_destination),
	    cmocka_unit_test(test_peer_addr_parse_is_strict),
	    cmocka_unit_test(test_secret_file),
	    cmocka_unit_test(test_listener_refusals_over_sockets),
	    cmocka_unit_test(test_listener_slow_drip_hits_deadline),
	    cmocka_unit_test(test_listener_busy_and_free_resets_pending),
	    cmocka_unit_test(test_idle_connections_do_not_shut_out_a_relay),
	    cmocka_unit_test(test_disabled_listener_reads_no_header),
	    cmocka_unit_test(test_a_header_waiting_unread_is_not_evicted),
	    cmocka_unit_test(test_listener_caps_pending_per_source),
	    cmocka_unit_test(test_listener_accepts_and_keeps_following_bytes),
	    cmocka_unit_test(test_replay_memory_is_bounded_and_safe),
	    cmocka_unit_test(test_hop_header_then_executor_bytes),
	};

	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
