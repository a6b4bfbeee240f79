/* disc_dns: the SRV query and the parser of its answer, with answers built
 * byte by byte here, hostile ones included: compression pointers that loop,
 * point forward or into the header; lengths and counts past the end; names
 * over 255 bytes; more records than asked; targets with bytes no host name
 * has. Also the RFC 2782 order: priority first, then weighted random. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "discovery/disc_dns.h"
#include "tests/support/ts_alloc.h"
#include "tests/support/ts_assert.h"
#include "tests/support/ts_sys.h"

#define QNAME "_sparkrelay._tcp.relays.example.com"
/* rdlength of the first record after start(): header, question, then the
 * record's owner pointer, type, class and TTL */
#define RDLEN_AT (12 + (sizeof(QNAME) + 1) + 4 + 2 + 2 + 2 + 4)
#define ID 0x4a5b

/* ---- building answers ------------------------------------------------------ */

struct msg {
	uint8_t b[8192];
	size_t n;
};

static void u8(struct msg *m, unsigned v)
{
	assert_true(m->n < sizeof(m->b));
	m->b[m->n++] = (uint8_t)v;
}

static void u16(struct msg *m, unsigned v)
{
	u8(m, v >> 8);
	u8(m, v & 0xff);
}

static void u32(struct msg *m, uint32_t v)
{
	u16(m, v >> 16);
	u16(m, v & 0xffff);
}

/* A name as labels, uncompressed ("" is the root). */
static void name(struct msg *m, const char *dotted)
{
	while (*dotted) {
		const char *dot = strchr(dotted, '.');
		size_t l = dot ? (size_t)(dot - dotted) : strlen(dotted);

		u8(m, (unsigned)l);
		for (size_t i = 0; i < l; i++)
			u8(m, (unsigned char)dotted[i]);
		dotted += l + (dot ? 1 : 0);
	}
	u8(m, 0);
}

static void ptr(struct msg *m, unsigned off)
{
	u16(m, 0xc000 | off);
}

static void header(struct msg *m, unsigned id, unsigned flags, unsigned qd, unsigned an)
{
	m->n = 0;
	u16(m, id);
	u16(m, flags);
	u16(m, qd);
	u16(m, an);
	u16(m, 0);
	u16(m, 0);
}

/* Header plus our question: a response, RD and RA, rcode as given. */
static void start(struct msg *m, unsigned rcode, unsigned an)
{
	header(m, ID, 0x8180 | rcode, 1, an);
	name(m, QNAME);
	u16(m, DISC_DNS_TYPE_SRV);
	u16(m, 1);
}

/* An SRV record whose owner is the question (pointer to offset 12). */
static void srv(struct msg *m, unsigned prio, unsigned weight, unsigned port, uint32_t ttl,
		const char *target)
{
	size_t rdlen_at;

	ptr(m, 12);
	u16(m, DISC_DNS_TYPE_SRV);
	u16(m, 1);
	u32(m, ttl);
	rdlen_at = m->n;
	u16(m, 0);
	u16(m, prio);
	u16(m, weight);
	u16(m, port);
	name(m, target);
	m->b[rdlen_at] = (uint8_t)((m->n - rdlen_at - 2) >> 8);
	m->b[rdlen_at + 1] = (uint8_t)(m->n - rdlen_at - 2);
}

static int parse(const struct msg *m, struct disc_srv_answer *a, char *err, size_t errlen)
{
	return disc_srv_parse(m->b, m->n, ID, QNAME, a, err, errlen);
}

static struct disc_srv_answer ans;
static char err[256];

#define PARSE(m) parse((m), &ans, err, sizeof(err))

static void expect_malformed(const struct msg *m, const char *why)
{
	err[0] = '\0';
	assert_int_equal(PARSE(m), SR_EPROTO);
	assert_contains(err, why);
	assert_int_equal(ans.n, 0);
}

/* ---- the query ----------------------------------------------------------- */

static void test_query_bytes(void **state)
{
	static const uint8_t want[] = {
	    0x12, 0x34, 0x01, 0x00, 0,	 1,   0,   0,	0, 0,	0, 0, /* id, RD, one question */
	    2,	  '_',	'x',  4,    '_', 't', 'c', 'p', 1, 'a', 0, 0, 33, 0, 1};
	uint8_t buf[DISC_DNS_QUERY_MAX];

	(void)state;
	assert_int_equal(disc_dns_query(buf, sizeof(buf), 0x1234, "_x._tcp.a", 33),
			 sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
	/* an absolute name is the same name */
	assert_int_equal(disc_dns_query(buf, sizeof(buf), 0x1234, "_x._tcp.a.", 33),
			 sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));
}

static void test_query_refuses_bad_names(void **state)
{
	uint8_t buf[DISC_DNS_QUERY_MAX];
	char label64[80], long_name[300];

	(void)state;
	memset(label64, 'a', 64);
	label64[64] = '\0';
	memset(long_name, 'a', sizeof(long_name));
	for (size_t i = 10; i < 254; i += 10)
		long_name[i] = '.';
	long_name[254] = '\0'; /* 254 characters: one too many */
	const char *bad[] = {"",    ".",	 "a..b", ".a",	  "a b",    "a\nb",
			     "a/b", "é.example", "a..",	 label64, long_name};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_false(disc_dns_name_ok(bad[i]));
		assert_int_equal(disc_dns_query(buf, sizeof(buf), 1, bad[i], 33), 0);
	}
	assert_false(disc_dns_name_ok(NULL));
	long_name[253] = '\0';
	assert_true(disc_dns_name_ok(long_name));
	assert_true(disc_dns_query(buf, sizeof(buf), 1, long_name, 33) <= DISC_DNS_QUERY_MAX);
	/* too small a buffer */
	assert_int_equal(disc_dns_query(buf, 20, 1, "a", 33), 0);
}

/* ---- answers ------------------------------------------------------------- */

static void test_answer_with_records(void **state)
{
	struct msg m;
	size_t target_at;

	(void)state;
	start(&m, 0, 3);
	srv(&m, 10, 60, 8443, 30, "relay-a.example.com");
	target_at = m.n - strlen("relay-a.example.com") - 2;
	srv(&m, 10, 20, 8443, 20, "Relay-B.Example.COM");
	/* a target that ends in a pointer into the first one */
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 60);
	u16(&m, 6 + 9);
	u16(&m, 20);
	u16(&m, 0);
	u16(&m, 9443);
	u8(&m, 6);
	memcpy(m.b + m.n, "backup", 6);
	m.n += 6;
	ptr(&m, (unsigned)target_at + 8); /* "example.com" */
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.truncated, 0);
	assert_int_equal(ans.rcode, 0);
	assert_int_equal(ans.n, 3);
	assert_int_equal(ans.skipped, 0);
	assert_int_equal(ans.min_ttl, 20);
	assert_int_equal(ans.rec[0].priority, 10);
	assert_int_equal(ans.rec[0].weight, 60);
	assert_int_equal(ans.rec[0].port, 8443);
	assert_string_equal(ans.rec[0].target, "relay-a.example.com");
	assert_string_equal(ans.rec[1].target, "relay-b.example.com"); /* lower case */
	assert_string_equal(ans.rec[2].target, "backup.example.com");
	assert_int_equal(ans.rec[2].port, 9443);
	assert_int_equal(ans.rec[2].priority, 20);
}

/* Resolvers may echo the question with its case changed (0x20 encoding). */
static void test_question_in_any_case(void **state)
{
	struct msg m;

	(void)state;
	header(&m, ID, 0x8180, 1, 1);
	name(&m, "_SparkRelay._TCP.Relays.EXAMPLE.com");
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	srv(&m, 1, 1, 443, 5, "r.example.com");
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, 1);
	/* and the name asked may be written with a final dot */
	assert_int_equal(disc_srv_parse(m.b, m.n, ID, QNAME ".", &ans, err, sizeof(err)), 0);
	assert_int_equal(ans.n, 1);
}

/* Datagrams that do not answer our query are ignored, not errors: a stray
 * or spoofed one must not end the wait for the real answer. */
static void test_not_an_answer_to_us(void **state)
{
	struct msg m;

	(void)state;
	start(&m, 0, 0);
	assert_int_equal(disc_srv_parse(m.b, m.n, ID + 1, QNAME, &ans, err, sizeof(err)),
			 SR_ENOTFOUND);
	m.b[2] &= 0x7f; /* a query, not a response */
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	start(&m, 0, 0);
	m.b[2] |= 0x10; /* another opcode */
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	start(&m, 0, 0);
	assert_int_equal(disc_srv_parse(m.b, m.n, ID, "_other._tcp.relays.example.com", &ans,
					err, sizeof(err)),
			 SR_ENOTFOUND);
	m.b[m.n - 3] = DISC_DNS_TYPE_A; /* the question's type */
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	start(&m, 0, 0);
	m.b[5] = 2; /* two questions */
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	m.b[5] = 0;
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	start(&m, 0, 0);
	m.n = 11;
	assert_int_equal(PARSE(&m), SR_ENOTFOUND);
	assert_int_equal(disc_srv_parse(m.b, 0, ID, QNAME, &ans, err, sizeof(err)),
			 SR_ENOTFOUND);
}

static void test_rcodes(void **state)
{
	struct msg m;

	(void)state;
	start(&m, DISC_DNS_RCODE_NXDOMAIN, 0);
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.rcode, DISC_DNS_RCODE_NXDOMAIN);
	assert_int_equal(ans.n, 0);
	start(&m, 2, 0);
	assert_int_equal(PARSE(&m), SR_ERESOLVE);
	assert_contains(err, "SERVFAIL");
	start(&m, 5, 0);
	assert_int_equal(PARSE(&m), SR_ERESOLVE);
	assert_contains(err, "REFUSED");
	start(&m, 15, 0);
	assert_int_equal(PARSE(&m), SR_ERESOLVE);
	assert_contains(err, "unknown rcode (15)");
}

static void test_truncated_answer_is_not_read(void **state)
{
	struct msg m;

	(void)state;
	start(&m, 0, 5); /* claims five records, holds none: TC says why */
	m.b[2] |= 0x02;
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.truncated, 1);
	assert_int_equal(ans.n, 0);
}

static void test_compression_pointer_loops(void **state)
{
	struct msg m;
	size_t at;

	(void)state;
	/* a pointer to itself */
	start(&m, 0, 1);
	at = m.n;
	ptr(&m, (unsigned)at);
	expect_malformed(&m, "malformed name in answer record 1");
	/* a pointer forward */
	start(&m, 0, 1);
	ptr(&m, (unsigned)m.n + 2);
	name(&m, "x");
	expect_malformed(&m, "malformed name");
	/* two labels, then a pointer back to the first of them */
	start(&m, 0, 1);
	at = m.n;
	u8(&m, 1);
	u8(&m, 'a');
	ptr(&m, (unsigned)at);
	expect_malformed(&m, "malformed name");
	/* two pointers to each other, reached through a third */
	start(&m, 0, 1);
	at = m.n;
	ptr(&m, (unsigned)at + 2);
	ptr(&m, (unsigned)at);
	expect_malformed(&m, "malformed name");
	/* into the header */
	start(&m, 0, 1);
	ptr(&m, 4);
	expect_malformed(&m, "malformed name");
	/* a loop in the SRV target, behind a good owner name */
	start(&m, 0, 1);
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 1);
	u16(&m, 8);
	u16(&m, 0);
	u16(&m, 0);
	u16(&m, 1);
	ptr(&m, (unsigned)m.n);
	expect_malformed(&m, "malformed SRV data");
}

static void test_lengths_past_the_end(void **state)
{
	struct msg m;

	(void)state;
	/* a label longer than what is left */
	start(&m, 0, 1);
	u8(&m, 40);
	u8(&m, 'a');
	expect_malformed(&m, "malformed name");
	/* more records counted than there are */
	start(&m, 0, 3);
	srv(&m, 1, 1, 443, 5, "r.example.com");
	expect_malformed(&m, "answer record 2 of 3 runs past the end");
	/* a huge count in a small message stops at the end */
	start(&m, 0, 65535);
	expect_malformed(&m, "answer record 1 of 65535 runs past the end");
	/* rdlength past the end */
	start(&m, 0, 1);
	srv(&m, 1, 1, 443, 5, "r.example.com");
	m.b[RDLEN_AT] = 0x40;
	expect_malformed(&m, "data runs past the end");
	/* a target that runs past its record: rdlength covers 2 of its bytes */
	start(&m, 0, 1);
	srv(&m, 1, 1, 443, 5, "r.example.com");
	m.b[RDLEN_AT] = 0;
	m.b[RDLEN_AT + 1] = 6 + 2;
	expect_malformed(&m, "malformed SRV data");
	/* a target that ends before its record does */
	start(&m, 0, 1);
	srv(&m, 1, 1, 443, 5, "r.example.com");
	m.b[RDLEN_AT + 1] += 2;
	u16(&m, 0);
	expect_malformed(&m, "malformed SRV data");
	/* SRV data too short for its fixed fields */
	start(&m, 0, 1);
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 1);
	u16(&m, 4);
	u32(&m, 0);
	expect_malformed(&m, "malformed SRV data");
	/* the label types that no one may use */
	start(&m, 0, 1);
	u8(&m, 0x41);
	u8(&m, 0);
	expect_malformed(&m, "malformed name");
	start(&m, 0, 1);
	u8(&m, 0x81);
	u8(&m, 0);
	expect_malformed(&m, "malformed name");
}

/* A name is at most 255 bytes on the wire, also when pointers join parts
 * that are each short enough. */
static void test_name_over_255_bytes(void **state)
{
	struct msg m;
	size_t part;

	(void)state;
	start(&m, 0, 2);
	/* record 1: a name of three 63-byte labels (193 bytes), an A record */
	part = m.n;
	for (int i = 0; i < 3; i++) {
		u8(&m, 63);
		for (int j = 0; j < 63; j++)
			u8(&m, 'a');
	}
	u8(&m, 0);
	u16(&m, DISC_DNS_TYPE_A);
	u16(&m, 1);
	u32(&m, 1);
	u16(&m, 0);
	/* record 2: one more 63-byte label, then a pointer to that name */
	u8(&m, 63);
	for (int j = 0; j < 63; j++)
		u8(&m, 'b');
	ptr(&m, (unsigned)part);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 1);
	u16(&m, 0);
	expect_malformed(&m, "malformed name in answer record 2");
}

/* Every cut of a good answer is refused cleanly, never read past its end. */
static void test_every_prefix(void **state)
{
	struct msg m;
	uint8_t *copy;

	(void)state;
	start(&m, 0, 2);
	srv(&m, 1, 1, 443, 5, "relay-a.example.com");
	srv(&m, 2, 1, 443, 5, "relay-b.example.com");
	for (size_t n = 0; n < m.n; n++) {
		/* an exact-size copy, so ASan sees any read past the end */
		copy = malloc(n ? n : 1);
		assert_non_null(copy);
		memcpy(copy, m.b, n);
		assert_int_not_equal(disc_srv_parse(copy, n, ID, QNAME, &ans, err, sizeof(err)),
				     0);
		assert_int_equal(ans.n, 0);
		free(copy);
	}
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, 2);
	/* bytes after the answer section (authority, additional) are not ours */
	u32(&m, 0xdeadbeef);
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, 2);
}

static void test_unusable_records_are_skipped(void **state)
{
	struct msg m;

	(void)state;
	start(&m, 0, 9);
	srv(&m, 1, 1, 443, 5, "good.example.com");
	srv(&m, 1, 1, 0, 5, "port-zero.example.com");
	srv(&m, 1, 1, 443, 5, "good.example.com"); /* a duplicate */
	srv(&m, 1, 1, 443, 5, "under_score.example.com");
	srv(&m, 1, 1, 443, 5, "-dash.example.com");
	srv(&m, 1, 1, 443, 5, ""); /* "." : not offered; not counted */
	/* a label holding a dot, a NUL, a space, a byte over 0x7f */
	{
		static const char *const odd[] = {"a.b", "a\0b", "a b", "a\xff"};
		for (int k = 0; k < 3; k++) {
			const char *t = odd[k];
			size_t l = 3;

			ptr(&m, 12);
			u16(&m, DISC_DNS_TYPE_SRV);
			u16(&m, 1);
			u32(&m, 5);
			u16(&m, (unsigned)(6 + 1 + l + 1));
			u16(&m, 1);
			u16(&m, 1);
			u16(&m, 443);
			u8(&m, (unsigned)l);
			for (size_t i = 0; i < l; i++)
				u8(&m, (unsigned char)t[i]);
			u8(&m, 0);
		}
	}
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, 1);
	assert_string_equal(ans.rec[0].target, "good.example.com");
	assert_int_equal(ans.skipped, 7);
}

static void test_more_records_than_kept(void **state)
{
	struct msg m;
	char t[64];

	(void)state;
	start(&m, 0, DISC_SRV_MAX + 8);
	for (int i = 0; i < DISC_SRV_MAX + 8; i++) {
		snprintf(t, sizeof(t), "relay-%d.example.com", i);
		srv(&m, 1, 1, 443, 5, t);
	}
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, DISC_SRV_MAX);
	assert_int_equal(ans.skipped, 8);
	assert_string_equal(ans.rec[DISC_SRV_MAX - 1].target, "relay-31.example.com");
}

/* Records of other names, types and classes are not ours: skipped, not
 * counted. A CNAME from the name asked is followed. */
static void test_other_records_and_cname(void **state)
{
	struct msg m;
	size_t alias_at;

	(void)state;
	start(&m, 0, 6);
	/* an A record of the name asked */
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_A);
	u16(&m, 1);
	u32(&m, 5);
	u16(&m, 4);
	u32(&m, 0x7f000001);
	/* an SRV record of another name */
	name(&m, "_other._tcp.example.com");
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 5);
	u16(&m, 6 + 8);
	u16(&m, 1);
	u16(&m, 1);
	u16(&m, 1);
	name(&m, "evil.x");
	/* an SRV record of our name in class CH */
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 3);
	u32(&m, 5);
	u16(&m, 6 + 8);
	u16(&m, 1);
	u16(&m, 1);
	u16(&m, 1);
	name(&m, "evil.x");
	/* CNAME to the alias, then the alias's SRV record */
	ptr(&m, 12);
	u16(&m, DISC_DNS_TYPE_CNAME);
	u16(&m, 1);
	u32(&m, 5);
	u16(&m, 2 + strlen("alias.example.com"));
	alias_at = m.n;
	name(&m, "alias.example.com");
	ptr(&m, (unsigned)alias_at);
	u16(&m, DISC_DNS_TYPE_SRV);
	u16(&m, 1);
	u32(&m, 7);
	u16(&m, 6 + 2 + strlen("relay.example.com"));
	u16(&m, 3);
	u16(&m, 4);
	u16(&m, 8443);
	name(&m, "relay.example.com");
	/* after the CNAME, records of the first name are not the answer */
	srv(&m, 1, 1, 443, 5, "stale.example.com");
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.n, 1);
	assert_int_equal(ans.skipped, 0);
	assert_string_equal(ans.rec[0].target, "relay.example.com");
	assert_int_equal(ans.rec[0].port, 8443);
	assert_int_equal(ans.min_ttl, 7);
}

static void test_ttl_with_high_bit_is_zero(void **state)
{
	struct msg m;

	(void)state;
	start(&m, 0, 2);
	srv(&m, 1, 1, 443, 300, "a.example.com");
	srv(&m, 1, 1, 443, 0x80000010u, "b.example.com");
	assert_int_equal(PARSE(&m), 0);
	assert_int_equal(ans.rec[1].ttl, 0);
	assert_int_equal(ans.min_ttl, 0);
}

/* Random bytes and random damage to a good answer: no crash, no read past
 * the end (ASan), and a failed parse leaves no record. Bounded. */
static uint32_t rng = 12345;

static uint32_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static void test_random_damage(void **state)
{
	struct msg good, m;

	(void)state;
	start(&good, 0, 3);
	srv(&good, 1, 1, 443, 5, "relay-a.example.com");
	srv(&good, 1, 2, 443, 5, "relay-b.example.com");
	srv(&good, 2, 1, 443, 5, "relay-c.example.com");
	for (int i = 0; i < 20000; i++) {
		uint8_t *copy;
		int rc;

		m = good;
		for (int k = 0, nk = 1 + (int)(next_rand() % 4); k < nk; k++)
			m.b[next_rand() % m.n] = (uint8_t)next_rand();
		if (next_rand() % 4 == 0)
			m.n = next_rand() % m.n;
		m.b[0] = ID >> 8;
		m.b[1] = ID & 0xff;
		copy = malloc(m.n ? m.n : 1);
		assert_non_null(copy);
		memcpy(copy, m.b, m.n);
		rc = disc_srv_parse(copy, m.n, ID, QNAME, &ans, err, sizeof(err));
		free(copy);
		if (rc != 0)
			assert_int_equal(ans.n, 0);
		assert_true(ans.n <= DISC_SRV_MAX);
		for (size_t r = 0; r < ans.n; r++)
			assert_true(ans.rec[r].port != 0 && ans.rec[r].target[0]);
	}
}

/* ---- order ------------------------------------------------------------------ */

static uint32_t rand_below(uint32_t k)
{
	return next_rand() % k;
}

static struct disc_srv_rec rec(unsigned prio, unsigned weight, const char *t)
{
	struct disc_srv_rec r;

	memset(&r, 0, sizeof(r));
	r.priority = (uint16_t)prio;
	r.weight = (uint16_t)weight;
	r.port = 1;
	snprintf(r.target, sizeof(r.target), "%s", t);
	return r;
}

static void test_order_by_priority_then_weight(void **state)
{
	struct disc_srv_rec r[5] = {rec(20, 1, "c"), rec(10, 1, "a1"), rec(30, 0, "d"),
				    rec(10, 3, "a3"), rec(20, 5, "c5")};
	unsigned order[5], first_a3 = 0, first_c5 = 0;
	const int runs = 4000;

	(void)state;
	for (int i = 0; i < runs; i++) {
		disc_srv_order(r, 5, order, rand_below);
		/* priority 10 first, then 20, then 30: never mixed */
		assert_int_equal(r[order[0]].priority, 10);
		assert_int_equal(r[order[1]].priority, 10);
		assert_int_equal(r[order[2]].priority, 20);
		assert_int_equal(r[order[3]].priority, 20);
		assert_int_equal(order[4], 2);
		/* a permutation */
		assert_int_equal(order[0] + order[1] + order[2] + order[3] + order[4], 10);
		first_a3 += order[0] == 3;
		first_c5 += order[2] == 4;
	}
	/* weight 3 of 4 goes first about 3/4 of the time; 5 of 6, 5/6 */
	assert_in_range(first_a3, runs * 70 / 100, runs * 80 / 100);
	assert_in_range(first_c5, runs * 79 / 100, runs * 88 / 100);
}

static void test_order_weight_zero_rarely_first(void **state)
{
	struct disc_srv_rec r[2] = {rec(1, 50, "heavy"), rec(1, 0, "spare")};
	struct disc_srv_rec z[3] = {rec(1, 0, "x"), rec(1, 0, "y"), rec(1, 0, "z")};
	unsigned order[3], spare_first = 0, seen[3] = {0};

	(void)state;
	for (int i = 0; i < 5000; i++) {
		disc_srv_order(r, 2, order, rand_below);
		spare_first += order[0] == 1;
		disc_srv_order(z, 3, order, rand_below);
		seen[order[0]]++;
	}
	assert_in_range(spare_first, 20, 250); /* 1 in 51 */
	/* all weights 0: each record can still come first */
	for (int k = 0; k < 3; k++)
		assert_true(seen[k] > 5000 / 10);
	disc_srv_order(r, 0, order, rand_below); /* nothing to order */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_query_bytes),
	    cmocka_unit_test(test_query_refuses_bad_names),
	    cmocka_unit_test(test_answer_with_records),
	    cmocka_unit_test(test_question_in_any_case),
	    cmocka_unit_test(test_not_an_answer_to_us),
	    cmocka_unit_test(test_rcodes),
	    cmocka_unit_test(test_truncated_answer_is_not_read),
	    cmocka_unit_test(test_compression_pointer_loops),
	    cmocka_unit_test(test_lengths_past_the_end),
	    cmocka_unit_test(test_name_over_255_bytes),
	    cmocka_unit_test(test_every_prefix),
	    cmocka_unit_test(test_unusable_records_are_skipped),
	    cmocka_unit_test(test_more_records_than_kept),
	    cmocka_unit_test(test_other_records_and_cname),
	    cmocka_unit_test(test_ttl_with_high_bit_is_zero),
	    cmocka_unit_test(test_random_damage),
	    cmocka_unit_test(test_order_by_priority_then_weight),
	    cmocka_unit_test(test_order_weight_zero_rarely_first),
	};

	ts_alloc_init();
	ts_log_level_from_env(SR_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
