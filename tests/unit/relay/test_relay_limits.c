/* relay_limits: the rate-limited refusal log, what one source is for the
 * per-source handshake cap, and the identity a resume is bound to. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "relay/relay_limits.h"
#include "tests/support/ts_net.h"

#define SA(x) ((const struct sockaddr *)&(x))

static void test_same_source(void **state)
{
	struct sockaddr_storage a = ts_addr("10.1.2.3", 1000), b = ts_addr("10.1.2.3", 2000),
				c = ts_addr("10.1.2.4", 1000);
	struct sockaddr_storage x = ts_addr("2001:db8:1:2::1", 1),
				y = ts_addr("2001:db8:1:2:ffff::9", 2),
				z = ts_addr("2001:db8:1:3::1", 1);
	struct sockaddr_storage m1 = ts_addr("::ffff:10.1.2.3", 1),
				m2 = ts_addr("::ffff:10.1.2.4", 1);

	(void)state;
	assert_true(relay_same_source(SA(a), SA(b))); /* ports do not matter */
	assert_false(relay_same_source(SA(a), SA(c)));
	assert_true(relay_same_source(SA(x), SA(y))); /* one /64 */
	assert_false(relay_same_source(SA(x), SA(z)));
	assert_false(relay_same_source(SA(a), SA(m1)));	 /* families differ */
	assert_false(relay_same_source(SA(m1), SA(m2))); /* mapped IPv4: whole address */
	assert_true(relay_same_source(SA(m1), SA(m1)));
	assert_false(relay_same_source(NULL, SA(a)));
}

static void test_identity_key(void **state)
{
	char k1[RELAY_IDKEY_MAX], k2[RELAY_IDKEY_MAX];
	char small[16];

	(void)state;
	/* The CN wins over the token. */
	assert_int_equal(relay_identity_key("sidecar-1", "tok", "t", k1, sizeof(k1)), 0);
	assert_string_equal(k1, "cn:sidecar-1");
	/* Token only: its SHA-256, never the token. printf %s abc | sha256sum */
	assert_int_equal(relay_identity_key("", "abc", "t", k1, sizeof(k1)), 0);
	assert_string_equal(
	    k1, "token:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	assert_int_equal(relay_identity_key(NULL, "abd", "t", k2, sizeof(k2)), 0);
	assert_string_not_equal(k1, k2);
	/* Neither: the tenant. */
	assert_int_equal(relay_identity_key(NULL, "", "team", k1, sizeof(k1)), 0);
	assert_string_equal(k1, "tenant:team");
	/* A CN that looks like a key of another kind stays apart from it. */
	assert_int_equal(relay_identity_key("x", NULL, NULL, k1, sizeof(k1)), 0);
	assert_int_equal(relay_identity_key(NULL, NULL, "x", k2, sizeof(k2)), 0);
	assert_string_not_equal(k1, k2);
	assert_int_equal(relay_identity_key("a", NULL, NULL, small, sizeof(small)), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_same_source),
	    cmocka_unit_test(test_identity_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
