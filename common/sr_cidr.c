#include "common/sr_cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/sr_err.h"
#include "common/sr_util.h"

static const uint8_t sr_cidr_v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* The address of sa as (family, bytes), IPv4-mapped IPv6 folded to IPv4.
 * Returns 0, or -1 for other families. */
static int sr_cidr_addr_of(const struct sockaddr *sa, int *family, uint8_t bytes[16])
{
	if (!sa)
		return -1;
	if (sa->sa_family == AF_INET) {
		memcpy(bytes, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
		*family = AF_INET;
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const uint8_t *a6 =
		    ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;

		if (memcmp(a6, sr_cidr_v4mapped, 12) == 0) {
			memcpy(bytes, a6 + 12, 4);
			*family = AF_INET;
		} else {
			memcpy(bytes, a6, 16);
			*family = AF_INET6;
		}
		return 0;
	}
	return -1;
}

/* Clear the bits of a (nbytes long) past prefix; returns 1 if any was set. */
static int sr_cidr_mask(uint8_t *a, size_t nbytes, unsigned prefix)
{
	int changed = 0;
	size_t i;

	for (i = 0; i < nbytes; i++) {
		unsigned bits = prefix > 8 * i ? prefix - 8 * (unsigned)i : 0;
		uint8_t m = bits >= 8 ? 0xff : (uint8_t)(0xffu << (8 - bits));

		if (a[i] & (uint8_t)~m)
			changed = 1;
		a[i] &= m;
	}
	return changed;
}

int sr_cidr_parse(const char *s, struct sr_cidr *c, int *host_bits)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *slash;
	unsigned prefix = 0, max;
	size_t hlen;
	int changed;

	if (host_bits)
		*host_bits = 0;
	if (!s || !c)
		return SR_EINVAL;
	memset(c, 0, sizeof(*c));
	slash = strchr(s, '/');
	hlen = slash ? (size_t)(slash - s) : strlen(s);
	if (hlen == 0 || hlen >= sizeof(host))
		return SR_EINVAL;
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return SR_EINVAL;
	}
	if (slash) {
		const char *p = slash + 1;

		/* 1..3 digits: rejects "", "+8", " 8", "0x8" and absurd lengths */
		if (!*p || strlen(p) > 3)
			return SR_EINVAL;
		for (; *p; p++) {
			if (*p < '0' || *p > '9')
				return SR_EINVAL;
			prefix = prefix * 10 + (unsigned)(*p - '0');
		}
		if (prefix > max)
			return SR_EINVAL;
	} else {
		prefix = max;
	}
	if (c->family == AF_INET6 && prefix >= 96 &&
	    memcmp(c->addr, sr_cidr_v4mapped, 12) == 0) {
		/* an IPv4 block spelt as IPv4-mapped IPv6 */
		memmove(c->addr, c->addr + 12, 4);
		memset(c->addr + 4, 0, 12);
		c->family = AF_INET;
		prefix -= 96;
	}
	c->prefix = prefix;
	changed = sr_cidr_mask(c->addr, c->family == AF_INET ? 4 : 16, prefix);
	if (host_bits)
		*host_bits = changed;
	return 0;
}

int sr_cidr_match(const struct sr_cidr *c, const struct sockaddr *addr)
{
	uint8_t a[16];
	int family;

	if (!c || sr_cidr_addr_of(addr, &family, a) != 0 || family != c->family)
		return 0;
	sr_cidr_mask(a, family == AF_INET ? 4 : 16, c->prefix);
	return memcmp(a, c->addr, family == AF_INET ? 4 : 16) == 0;
}

char *sr_cidr_format(const struct sr_cidr *c, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (len == 0)
		return buf;
	if (!c || (c->family != AF_INET && c->family != AF_INET6) ||
	    !inet_ntop(c->family, c->addr, host, sizeof(host))) {
		snprintf(buf, len, "?");
		return buf;
	}
	snprintf(buf, len, "%s/%u", host, c->prefix);
	return buf;
}

int sr_addr_is_loopback(const struct sockaddr *addr)
{
	static const uint8_t v6_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
	uint8_t a[16];
	int family;

	if (sr_cidr_addr_of(addr, &family, a) != 0)
		return 0;
	if (family == AF_INET)
		return a[0] == 127;
	return memcmp(a, v6_loopback, 16) == 0;
}

int sr_host_is_loopback(const char *host)
{
	struct sockaddr_storage ss;
	socklen_t len;

	if (!host)
		return 0;
	if (strcasecmp(host, "localhost") == 0)
		return 1;
	return sr_parse_addr(host, 0, &ss, &len) == 0 &&
	       sr_addr_is_loopback((const struct sockaddr *)&ss);
}

char *sr_source_key(const char *addr, char *buf, size_t len)
{
	struct in6_addr a6;
	char text[INET6_ADDRSTRLEN];
	size_t n = strcspn(addr, "%"); /* fe80::1%eth0: the zone is not the host */

	if (n >= sizeof(text)) {
		snprintf(buf, len, "%s", addr);
		return buf;
	}
	memcpy(text, addr, n);
	text[n] = '\0';
	if (inet_pton(AF_INET6, text, &a6) != 1) {
		snprintf(buf, len, "%s", addr);
		return buf;
	}
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		inet_ntop(AF_INET, a6.s6_addr + 12, text, sizeof(text));
		snprintf(buf, len, "%s", text);
		return buf;
	}
	memset(a6.s6_addr + 8, 0, 8);
	inet_ntop(AF_INET6, &a6, text, sizeof(text));
	snprintf(buf, len, "%s/64", text);
	return buf;
}
