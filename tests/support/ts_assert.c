#include "tests/support/ts_assert.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tunnel/tun_ctl.h"

void assert_contains(const char *hay, const char *needle)
{
	if (!hay || !strstr(hay, needle))
		fail_msg("expected \"%s\" in \"%s\"", needle, hay ? hay : "(null)");
}

void assert_ctl_msg_equal(const struct tun_ctl_msg *a, const struct tun_ctl_msg *b)
{
	assert_int_equal(a->type, b->type);
	assert_string_equal(a->app, b->app);
	assert_int_equal(a->roles, b->roles);
	assert_string_equal(a->token, b->token);
	assert_string_equal(a->resume, b->resume);
	assert_string_equal(a->lease, b->lease);
	assert_string_equal(a->host, b->host);
	for (int r = 0; r < TUN_PORT_MAX; r++)
		assert_int_equal(a->ports[r], b->ports[r]);
	assert_int_equal(a->ttl_s, b->ttl_s);
	assert_string_equal(a->code, b->code);
	assert_string_equal(a->message, b->message);
	assert_int_equal(a->streams, b->streams);
}
