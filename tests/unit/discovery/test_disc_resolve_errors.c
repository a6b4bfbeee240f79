/* disc_resolve refusals: each says why, into whatever buffer it is given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <event2/event.h>

#include "discovery/disc_resolve.h"

static void never_called(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	(void)err;
	(void)addrs;
	(void)n;
	(void)arg;
	fail_msg("a refused request reported");
}

/* The caller's buffer may hold anything before the call. */
static void prefill(char *err, size_t len)
{
	memset(err, 'x', len - 1);
	err[len - 1] = '\0';
}

static int setup(void **state)
{
	*state = event_base_new();
	return *state ? 0 : -1;
}

static int teardown(void **state)
{
	event_base_free(*state);
	return 0;
}

static void test_empty_list_says_so(void **state)
{
	char err[128];

	prefill(err, sizeof(err));
	assert_null(disc_resolve(*state, NULL, NULL, 0, never_called, NULL, err, sizeof(err)));
	assert_string_equal(err, "no relay address to resolve");
}

static void test_malformed_target_is_named(void **state)
{
	struct event_base *base = *state;
	char *targets[] = {"relay.example:443", "no-port"};
	char err[128];

	prefill(err, sizeof(err));
	assert_null(disc_resolve(base, NULL, targets, 2, never_called, NULL, err, sizeof(err)));
	assert_string_equal(err, "bad relay address \"no-port\" (want host:port)");
	/* No buffer: refused all the same. */
	assert_null(disc_resolve(base, NULL, targets, 2, never_called, NULL, NULL, 0));
	assert_null(disc_resolve(base, NULL, NULL, 0, never_called, NULL, err, 0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_empty_list_says_so, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_malformed_target_is_named, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
