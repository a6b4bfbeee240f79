/* sr_util: sr_secret_eq answers equality for secrets of any lengths (its
 * constant time is a property of the code, not something a test can time
 * reliably on a shared machine). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/sr_util.h"

static void test_secret_eq_equal_strings(void **state)
{
	char a[300], b[300];

	(void)state;
	assert_int_equal(sr_secret_eq("", ""), 1);
	assert_int_equal(sr_secret_eq("hunter2", "hunter2"), 1);
	/* distinct buffers with the same content */
	memset(a, 'x', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memcpy(b, a, sizeof(b));
	assert_int_equal(sr_secret_eq(a, b), 1);
}

static void test_secret_eq_different_lengths(void **state)
{
	(void)state;
	/* a prefix of the secret, the secret plus one byte, and the empty token */
	assert_int_equal(sr_secret_eq("hunter", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("hunter2", "hunter"), 0);
	assert_int_equal(sr_secret_eq("hunter22", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("", "hunter2"), 0);
	assert_int_equal(sr_secret_eq("hunter2", ""), 0);
}

static void test_secret_eq_same_length_other_bytes(void **state)
{
	(void)state;
	assert_int_equal(sr_secret_eq("hunter2", "hunter3"), 0);
	assert_int_equal(sr_secret_eq("Hunter2", "hunter2"), 0);
}

static void test_secret_eq_null_is_never_equal(void **state)
{
	(void)state;
	assert_int_equal(sr_secret_eq(NULL, "x"), 0);
	assert_int_equal(sr_secret_eq("x", NULL), 0);
	assert_int_equal(sr_secret_eq(NULL, NULL), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_secret_eq_equal_strings),
	    cmocka_unit_test(test_secret_eq_different_lengths),
	    cmocka_unit_test(test_secret_eq_same_length_other_bytes),
	    cmocka_unit_test(test_secret_eq_null_is_never_equal),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
