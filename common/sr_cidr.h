/* Address prefixes (CIDR blocks) for access rules: "10.0.0.0/8",
 * "2001:db8::/32", or a bare address meaning /32 or /128.
 *
 * Families are kept apart, with one bridge: IPv4-mapped IPv6 is IPv4. An
 * AF_INET6 peer ::ffff:a.b.c.d is matched as the IPv4 address a.b.c.d, and a
 * block written inside ::ffff:0:0/96 (e.g. "::ffff:10.0.0.0/104") is parsed
 * as the IPv4 block it denotes ("10.0.0.0/8"). Otherwise an IPv4 block never
 * matches an IPv6 address and the reverse: "::/0" matches every IPv6 address
 * but no IPv4 one, so "everyone" is written "0.0.0.0/0" plus "::/0". */
#ifndef SR_CIDR_H
#define SR_CIDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128" plus NUL, rounded up */
#define SR_CIDR_STRLEN 64

struct sr_cidr {
	int family;	  /* AF_INET or AF_INET6 */
	uint8_t addr[16]; /* network address (host bits zero); 4 bytes used for AF_INET */
	unsigned prefix;  /* 0..32 or 0..128 */
};

/* Parse s into c. Host bits set beyond the prefix ("10.1.2.3/8") are
 * accepted and cleared, as most routers and firewalls do: the block is the
 * same either way, and sr_cidr_format shows the normalised form. *host_bits
 * (if not NULL) is set to 1 when that happened, so a caller can warn.
 * Returns 0, or SR_EINVAL for anything else than a numeric address with an
 * optional decimal prefix length in range (no blanks, no leading '+'). */
int sr_cidr_parse(const char *s, struct sr_cidr *c, int *host_bits);

/* 1 if addr (AF_INET or AF_INET6; port ignored) lies in c, else 0. Other
 * families and NULL never match. */
int sr_cidr_match(const struct sr_cidr *c, const struct sockaddr *addr);

/* The normalised block, "10.0.0.0/8", into buf. Returns buf. */
char *sr_cidr_format(const struct sr_cidr *c, char *buf, size_t len);

/* The project's one loopback rule, for every check that decides whether a
 * listener is reachable off this host (admin and status APIs, configuration
 * checks). 1 if addr is a loopback address: 127.0.0.0/8, ::1, or
 * ::ffff:127.0.0.0/104; other families and NULL are not. */
int sr_addr_is_loopback(const struct sockaddr *addr);

/* The same rule for host, as written in a listen address (no brackets, no
 * port): a numeric address is loopback by sr_addr_is_loopback; of names,
 * only "localhost" is, in any case, as resolvers must answer it with
 * loopback addresses (RFC 6761, 6.3). Any other name is not, whatever it
 * resolves to now ("localhost." and "x.localhost" included). NULL is not. */
int sr_host_is_loopback(const char *host);

/* The source a per-source limit counts, from a numeric address: an IPv4
 * address as it is, an IPv6 one by its /64 ("2001:db8:1:2::/64"), since one
 * host usually holds a whole /64 (the tunnel listener's rule); IPv4-mapped
 * IPv6 as IPv4; a zone ("%eth0") is left out. Clients that share a /64 (the
 * pods of one node in an IPv6 cluster) count as one. Anything else is copied
 * as it is. Into buf; returns buf. */
char *sr_source_key(const char *addr, char *buf, size_t len);

#endif
