/* DNS messages for SRV discovery (RFC 1035, RFC 2782): encode one query and
 * parse its answer, on byte arrays (no sockets), so unit tests and the
 * fuzzer drive them directly.
 *
 * An answer is hostile input. It is read within its length only; a name
 * may use compression, but every pointer must point before the name it
 * continues (so no loop can form) and a name has at most 255 bytes on the
 * wire; a record whose fields run past the end, a count of records larger
 * than the message holds, or an SRV target that does not end exactly at the
 * end of its record makes the whole answer malformed. Records that are not
 * SRV records of the name asked (other names, types or classes, whatever
 * the server adds) are skipped; SRV records that cannot be used (a target
 * with bytes other than letters, digits and '-', port 0, a duplicate, more
 * than DISC_SRV_MAX) are skipped and counted. */
#ifndef DISC_DNS_H
#define DISC_DNS_H

#include <stddef.h>
#include <stdint.h>

#define DISC_DNS_TYPE_A 1
#define DISC_DNS_TYPE_CNAME 5
#define DISC_DNS_TYPE_AAAA 28
#define DISC_DNS_TYPE_SRV 33
#define DISC_DNS_RCODE_NXDOMAIN 3

/* Longest query disc_dns_query writes: header, a 255-byte name, type, class. */
#define DISC_DNS_QUERY_MAX (12 + 255 + 4)
/* SRV records kept from one answer. */
#define DISC_SRV_MAX 32
/* Longest name as dotted text, without the trailing dot. */
#define DISC_DNS_NAME_TEXT 253

struct disc_srv_rec {
	uint16_t priority, weight, port;
	uint32_t ttl;
	char target[DISC_DNS_NAME_TEXT + 1]; /* lower case, no trailing dot */
};

struct disc_srv_answer {
	int truncated;	  /* TC set: nothing was parsed; ask again over TCP */
	int rcode;	  /* 0 (NOERROR) or 3 (NXDOMAIN) */
	size_t n;	  /* usable records, in the order of the answer */
	unsigned skipped; /* SRV records of our name that could not be used */
	uint32_t min_ttl; /* smallest TTL of the records kept; 0 when none */
	struct disc_srv_rec rec[DISC_SRV_MAX];
};

/* A name that may be asked: dotted, 1..253 characters without a trailing
 * dot (one is allowed and ignored), labels of 1..63 letters, digits, '-'
 * and '_' (service labels: "_sparkrelay._tcp.example.com"). 1 or 0. */
int disc_dns_name_ok(const char *name);

/* Encode a recursive query for (name, qtype, class IN) with the given id
 * into buf (at least DISC_DNS_QUERY_MAX bytes). Returns its length, or 0
 * when the name fails disc_dns_name_ok. */
size_t disc_dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype);

/* Parse the answer msg[0..len) to the SRV query (id, name).
 *   0             an answer: NOERROR or NXDOMAIN, records in ans (maybe
 *                 none), or TC set (ans->truncated, nothing parsed)
 *   SR_ENOTFOUND  not an answer to this query (another id, not a response,
 *                 another question): ignore it and keep waiting
 *   SR_ERESOLVE   the server failed (SERVFAIL, REFUSED, ...: rcode named)
 *   SR_EPROTO     malformed
 * A one-line reason is written to err on every error. */
int disc_srv_parse(const uint8_t *msg, size_t len, uint16_t id, const char *name,
		   struct disc_srv_answer *ans, char *err, size_t errlen);

/* The order to try records in (RFC 2782): by priority, lowest first, and
 * within one priority by weighted random selection (a record of weight 0
 * is rarely first). Writes a permutation of 0..n-1 to order. rand_below(k)
 * returns a uniform number in [0, k). */
void disc_srv_order(const struct disc_srv_rec *rec, size_t n, unsigned *order,
		    uint32_t (*rand_below)(uint32_t));

#endif
