/* libFuzzer target for the relay-to-relay header parser (fleet/peer.c).
 *
 * The input is parsed as it is, and each of its prefixes' outcome must agree
 * with the whole: a prefix may only ask for more bytes or be refused for
 * framing (magic, version, length), which it can already show. A fuzzer
 * cannot forge an HMAC, so the input is also parsed "sealed": its MAC
 * replaced by the right one and the clock set to its own time plus a skew
 * from the input, which takes it past the MAC and the clock to the checks
 * of role, address and lease id. A header that parses must encode back to
 * the same bytes: the encoder and the parser agree on every field. The
 * input is also a relay's peer address as read from etcd
 * (fleet_peer_addr_parse): an address it accepts, formatted, parses back
 * to the same address. */
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/sr_util.h"
#include "fleet/peer.h"

static const char fuzz_key[] = "fuzz-fleet-secret-0123456789abcdef";
#define FUZZ_NOW_MS 1700000000000ull
#define FUZZ_WINDOW_MS 60000u
#define FUZZ_SELF "relay-fuzz"

static struct fleet_secret *fuzz_secret(void)
{
	static struct fleet_secret *s;

	if (s == NULL && fleet_secret_new(fuzz_key, strlen(fuzz_key), &s) != 0)
		abort();
	return s;
}

static int fuzz_framing(enum fleet_peer_status st)
{
	return st == FLEET_PEER_MORE || st == FLEET_PEER_BAD_MAGIC ||
	       st == FLEET_PEER_BAD_VERSION || st == FLEET_PEER_OVERSIZE;
}

static void fuzz_check(const uint8_t *buf, size_t len, uint64_t now_ms)
{
	struct fleet_peer_hdr h;
	uint8_t again[FLEET_PEER_HDR_MAX];
	enum fleet_peer_status st, pst;
	size_t hlen = 0, phlen;
	int n;

	st = fleet_peer_hdr_parse(buf, len, fuzz_secret(), FUZZ_SELF, now_ms, FUZZ_WINDOW_MS, &h,
				  &hlen);
	if (st < FLEET_PEER_OK || st >= FLEET_PEER_STATUS_MAX || st == FLEET_PEER_REPLAY ||
	    st > FLEET_PEER_BAD_ADDR)
		abort(); /* listener-only reasons never come from the parser */
	if (st == FLEET_PEER_MORE && (hlen <= len || hlen > FLEET_PEER_HDR_MAX))
		abort();
	if (st == FLEET_PEER_OK) {
		if (hlen > len || hlen > FLEET_PEER_HDR_MAX)
			abort();
		n = fleet_peer_hdr_encode(&h, fuzz_secret(), FUZZ_SELF, again, sizeof(again));
		if (n != (int)hlen || memcmp(again, buf, hlen) != 0) {
			fprintf(stderr, "a parsed header did not encode back to its bytes\n");
			abort();
		}
	}
	/* Prefixes: more, or the whole's outcome; short of a whole header,
	 * only a framing refusal. */
	for (size_t k = 0; k < len && k <= FLEET_PEER_HDR_MAX; k++) {
		pst = fleet_peer_hdr_parse(buf, k, fuzz_secret(), FUZZ_SELF, now_ms,
					   FUZZ_WINDOW_MS, NULL, &phlen);
		if (pst != FLEET_PEER_MORE && pst != st)
			abort();
		if (pst == FLEET_PEER_MORE && (phlen <= k || phlen > FLEET_PEER_HDR_MAX))
			abort();
		if (pst != FLEET_PEER_MORE && !fuzz_framing(pst) &&
		    (k < FLEET_PEER_HDR_FIXED ||
		     k < FLEET_PEER_HDR_FIXED + buf[7] + FLEET_PEER_MAC_LEN))
			abort();
	}
}

static void fuzz_addr(const char *s, size_t len)
{
	struct sockaddr_storage ss, again;
	socklen_t sl = 0, sl2 = 0;
	char back[SR_ADDRSTRLEN];

	if (fleet_peer_addr_parse(s, len, &ss, &sl) != 0)
		return;
	if ((ss.ss_family != AF_INET && ss.ss_family != AF_INET6) ||
	    sl != (ss.ss_family == AF_INET ? sizeof(struct sockaddr_in)
					   : sizeof(struct sockaddr_in6)))
		abort();
	sr_format_addr((struct sockaddr *)&ss, back, sizeof(back));
	if (fleet_peer_addr_parse(back, strlen(back), &again, &sl2) != 0 || sl2 != sl ||
	    memcmp(&again, &ss, sl) != 0) {
		fprintf(stderr, "an accepted peer address does not survive formatting\n");
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t sealed[FLEET_PEER_HDR_MAX + 8 + 1 + sizeof(FUZZ_SELF)];
	unsigned int maclen = 0;
	uint64_t t = 0;
	size_t body;

	fuzz_check(data, size, FUZZ_NOW_MS);
	fuzz_addr((const char *)data, size);

	if (size < FLEET_PEER_HDR_FIXED || size > sizeof(sealed))
		return 0;
	if (size > FLEET_PEER_HDR_MAX + 8)
		return 0;
	body = FLEET_PEER_HDR_FIXED + data[7];
	if (data[7] > TUN_CTL_LEASE_MAX - 1 || size < body + FLEET_PEER_MAC_LEN)
		return 0;
	/* The MAC covers the body and then the destination's length and id. */
	memcpy(sealed, data, body);
	sealed[body] = (uint8_t)strlen(FUZZ_SELF);
	memcpy(sealed + body + 1, FUZZ_SELF, strlen(FUZZ_SELF));
	HMAC(EVP_sha256(), fuzz_key, (int)strlen(fuzz_key), sealed,
	     body + 1 + strlen(FUZZ_SELF), sealed + body, &maclen);
	memcpy(sealed + body + FLEET_PEER_MAC_LEN, data + body + FLEET_PEER_MAC_LEN,
	       size - body - FLEET_PEER_MAC_LEN);
	for (int i = 0; i < 8; i++)
		t = t << 8 | sealed[10 + i];
	/* The byte after the header (if any) picks a clock skew around the
	 * window's edges. */
	if (size > body + FLEET_PEER_MAC_LEN) {
		int64_t skew = ((int64_t)sealed[body + FLEET_PEER_MAC_LEN] - 128) * 1000;
		/* In unsigned arithmetic: the header's time may be anything. */
		t += (uint64_t)skew;
	}
	fuzz_check(sealed, size, t);
	return 0;
}
