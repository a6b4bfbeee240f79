/* CIDR blocks: parsing (bare addresses, prefixes, host bits, IPv4-mapped
 * blocks, malformed input) and matching of AF_INET, AF_INET6 and
 * IPv4-mapped AF_INET6 socket addresses; the loopback rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <string.h>

#include "common/sr_cidr.h"
#include "common/sr_err.h"
#include "tests/support/ts_net.h"

static struct sockaddr_storage addr(const char *s)
{
	return ts_addr(s, 1234);
}

static int match(const char *cidr, const char *a)
{
	struct sr_cidr c;
	struct sockaddr_storage ss = addr(a);

	if (sr_cidr_parse(cidr, &c, NULL) != 0)
		fail_msg("%s does not parse", cidr);
	return sr_cidr_match(&c, (struct sockaddr *)&ss);
}

static void check_format(const char *in, const char *want, int want_host_bits)
{
	struct sr_cidr c;
	char buf[SR_CIDR_STRLEN];
	int hb = -1;

	if (sr_cidr_parse(in, &c, &hb) != 0)
		fail_msg("%s does not parse", in);
	assert_string_equal(sr_cidr_format(&c, buf, sizeof(buf)), want);
	if (hb != want_host_bits)
		fail_msg("%s: host_bits %d, want %d", in, hb, want_host_bits);
}

static void test_parse_forms(void **state)
{
	struct sr_cidr c;

	(void)state;
	assert_int_equal(sr_cidr_parse("10.0.0.0/8", &c, NULL), 0);
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 8);
	assert_int_equal(sr_cidr_parse("2001:db8::/32", &c, NULL), 0);
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 32);
	/* bare addresses are single hosts */
	assert_int_equal(sr_cidr_parse("192.0.2.7", &c, NULL), 0);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(sr_cidr_parse("fd00::1", &c, NULL), 0);
	assert_int_equal(c.prefix, 128);
	check_format("10.0.0.0/8", "10.0.0.0/8", 0);
	check_format("192.0.2.7", "192.0.2.7/32", 0);
	check_format("0.0.0.0/0", "0.0.0.0/0", 0);
	check_format("::/0", "::/0", 0);
	check_format("2001:DB8::/32", "2001:db8::/32", 0);
}

static void test_host_bits_normalised(void **state)
{
	(void)state;
	check_format("10.1.2.3/8", "10.0.0.0/8", 1);
	check_format("192.168.1.129/25", "192.168.1.128/25", 1);
	check_format("192.168.1.128/25", "192.168.1.128/25", 0);
	check_format("2001:db8:ffff::1/32", "2001:db8::/32", 1);
	check_format("10.255.255.255/0", "0.0.0.0/0", 1);
	/* the normalised block matches exactly what the written one denotes */
	assert_true(match("10.1.2.3/8", "10.200.0.1"));
	assert_false(match("10.1.2.3/8", "11.0.0.1"));
}

static void test_v4_mapped_block_is_v4(void **state)
{
	(void)state;
	check_format("::ffff:10.0.0.0/104", "10.0.0.0/8", 0);
	check_format("::ffff:192.0.2.1", "192.0.2.1/32", 0);
	assert_true(match("::ffff:10.0.0.0/104", "10.9.9.9"));
	/* a shorter prefix is a real IPv6 block */
	check_format("::ffff:0:0/95", "::fffe:0:0/95", 1);
}

static void test_parse_rejects(void **state)
{
	static const char *const bad[] = {
	    "",
	    "/8",
	    "10.0.0.0/",
	    "10.0.0.0/33",
	    "::/129",
	    "10.0.0.0/+8",
	    "10.0.0.0/ 8",
	    "10.0.0.0 /8",
	    "10.0.0/8",
	    "10.0.0.0/8/8",
	    "10.0.0.0/0x8",
	    "host.example",
	    "10.0.0.256",
	    "10.0.0.0/0008",
	    "1::2::3/64",
	    "fe80::1%eth0",
	    "10.0.0.0/-1",
	};
	struct sr_cidr c;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (sr_cidr_parse(bad[i], &c, NULL) != SR_EINVAL)
			fail_msg("\"%s\" was accepted", bad[i]);
	assert_int_equal(sr_cidr_parse(NULL, &c, NULL), SR_EINVAL);
}

static void test_match_v4(void **state)
{
	(void)state;
	assert_true(match("10.0.0.0/8", "10.0.0.0"));
	assert_true(match("10.0.0.0/8", "10.255.255.255"));
	assert_false(match("10.0.0.0/8", "9.255.255.255"));
	assert_false(match("10.0.0.0/8", "11.0.0.0"));
	assert_true(match("192.168.1.128/25", "192.168.1.200"));
	assert_false(match("192.168.1.128/25", "192.168.1.127"));
	assert_true(match("127.0.0.1", "127.0.0.1"));
	assert_false(match("127.0.0.1", "127.0.0.2"));
	assert_true(match("0.0.0.0/0", "203.0.113.9"));
	/* an IPv4 block never matches real IPv6 */
	assert_false(match("0.0.0.0/0", "2001:db8::1"));
}

static void test_match_v6(void **state)
{
	(void)state;
	assert_true(match("2001:db8::/32", "2001:db8:1234::5"));
	assert_false(match("2001:db8::/32", "2001:db9::1"));
	assert_true(match("fd00::/8", "fdff:ffff::1"));
	assert_false(match("fd00::/8", "fc00::1"));
	assert_true(match("2001:db8::/127", "2001:db8::1"));
	assert_false(match("2001:db8::/127", "2001:db8::2"));
	assert_true(match("::1", "::1"));
	assert_true(match("::/0", "2001:db8::1"));
	/* ::/0 is IPv6 only: IPv4 is not folded into it */
	assert_false(match("::/0", "10.0.0.1"));
	assert_false(match("::/0", "::ffff:10.0.0.1"));
}

static void test_match_v4_mapped_address(void **state)
{
	(void)state;
	/* a dual-stack socket sees IPv4 peers as ::ffff:a.b.c.d */
	assert_true(match("10.0.0.0/8", "::ffff:10.1.2.3"));
	assert_false(match("10.0.0.0/8", "::ffff:11.1.2.3"));
	assert_true(match("127.0.0.1", "::ffff:127.0.0.1"));
	assert_false(match("127.0.0.1", "::ffff:127.0.0.2"));
	/* not mapped: ::10.1.2.3 (compatible form) is IPv6 */
	assert_false(match("10.0.0.0/8", "::10.1.2.3"));
}

static void test_match_other_family_and_null(void **state)
{
	struct sr_cidr c;
	struct sockaddr sa;

	(void)state;
	assert_int_equal(sr_cidr_parse("0.0.0.0/0", &c, NULL), 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_family = AF_UNIX;
	assert_false(sr_cidr_match(&c, &sa));
	assert_false(sr_cidr_match(&c, NULL));
}

static void test_loopback(void **state)
{
	static const char *const yes[] = {"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"};
	static const char *const no[] = {"10.0.0.1", "::",	  "0.0.0.0",
					 "::2",	     "128.0.0.1", "::ffff:10.0.0.1"};
	struct sockaddr_storage ss;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		ss = addr(yes[i]);
		if (!sr_addr_is_loopback((struct sockaddr *)&ss))
			fail_msg("%s should be loopback", yes[i]);
	}
	for (i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		ss = addr(no[i]);
		if (sr_addr_is_loopback((struct sockaddr *)&ss))
			fail_msg("%s should not be loopback", no[i]);
	}
}

/* The rule every listener check shares: numeric loopback, or "localhost"
 * in any case; no other name, however it resolves. */
static void test_host_loopback(void **state)
{
	static const char *const yes[] = {"127.0.0.1",	      "127.255.0.9", "::1",
					  "::ffff:127.0.0.1", "localhost",   "LocalHost"};
	static const char *const no[] = {"10.0.0.1",
					 "0.0.0.0",
					 "::",
					 "::ffff:10.0.0.1",
					 "[::1]",
					 "127.0.0.1:80",
					 "localhost.",
					 "a.localhost",
					 "localhost1",
					 "admin.example",
					 ""};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		if (!sr_host_is_loopback(yes[i]))
			fail_msg("%s should be loopback", yes[i]);
	for (i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		if (sr_host_is_loopback(no[i]))
			fail_msg("%s should not be loopback", no[i]);
	assert_false(sr_host_is_loopback(NULL));
}

/* Per-source limits of the HTTP listeners count an IPv6 host by its /64, as
 * the tunnel listener does: a client with a /64 cannot take a slot per
 * address and push everyone else out. */
static void test_source_key(void **state)
{
	static const struct {
		const char *addr, *key;
	} cases[] = {
	    {"10.1.2.3", "10.1.2.3"},
	    {"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"},
	    {"2001:db8:1:2::1", "2001:db8:1:2::/64"},
	    {"2001:db8:1:3::1", "2001:db8:1:3::/64"},
	    {"::1", "::/64"},
	    {"::ffff:192.0.2.7", "192.0.2.7"},
	    {"fe80::1%eth0", "fe80::/64"},
	    {"fe80::2%eth1", "fe80::/64"},
	    {"", ""},
	    {"not an address", "not an address"},
	};
	char buf[64];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_string_equal(sr_source_key(cases[i].addr, buf, sizeof(buf)),
				    cases[i].key);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_forms),
	    cmocka_unit_test(test_host_bits_normalised),
	    cmocka_unit_test(test_v4_mapped_block_is_v4),
	    cmocka_unit_test(test_parse_rejects),
	    cmocka_unit_test(test_match_v4),
	    cmocka_unit_test(test_match_v6),
	    cmocka_unit_test(test_match_v4_mapped_address),
	    cmocka_unit_test(test_match_other_family_and_null),
	    cmocka_unit_test(test_loopback),
	    cmocka_unit_test(test_host_loopback),
	    cmocka_unit_test(test_source_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
