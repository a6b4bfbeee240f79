/* sr_text: escaping of untrusted text and the validators for peer values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/sr_text.h"

static void test_esc_keeps_printable_and_escapes_the_rest(void **st)
{
	char buf[128];
	(void)st;
	assert_string_equal(sr_esc("app-1 ok", buf, sizeof(buf)), "app-1 ok");
	assert_string_equal(sr_esc("a\nb\r\x1b[2J", buf, sizeof(buf)), "a\\x0ab\\x0d\\x1b[2J");
	assert_string_equal(sr_esc("q\"\\", buf, sizeof(buf)), "q\\\"\\\\");
	assert_string_equal(sr_esc("\xc3\xa9", buf, sizeof(buf)), "\\xc3\\xa9");
	assert_string_equal(sr_esc(NULL, buf, sizeof(buf)), "");
}

static void test_esc_cuts_long_values_with_ellipsis(void **st)
{
	char buf[16];
	(void)st;
	sr_esc("abcdefghijklmnopqrstuvwxyz", buf, sizeof(buf));
	assert_true(strlen(buf) < sizeof(buf));
	assert_string_equal(buf + strlen(buf) - 3, "...");
	assert_string_equal(sr_esc_n("abcdef", 3, buf, sizeof(buf)), "abc...");
	/* an escape sequence is never cut in half */
	sr_esc("\n\n\n\n\n\n", buf, sizeof(buf));
	assert_string_equal(buf, "\\x0a\\x0a\\x0a...");
}

/* The bytes sr_esc escapes are masked, nothing else; cut as sr_esc cuts. */
static void test_mask_replaces_what_esc_escapes(void **st)
{
	char buf[16];
	(void)st;
	assert_string_equal(sr_mask_n("app-1 ok", 0, buf, sizeof(buf)), "app-1 ok");
	assert_string_equal(sr_mask_n("a\nb\x1b[2J", 0, buf, sizeof(buf)), "a?b?[2J");
	assert_string_equal(sr_mask_n("q\"\\\xc3\xa9", 0, buf, sizeof(buf)), "q????");
	assert_string_equal(sr_mask_n(NULL, 0, buf, sizeof(buf)), "");
	assert_string_equal(sr_mask_n("abcdef", 3, buf, sizeof(buf)), "abc...");
	sr_mask_n("abcdefghijklmnopqrstuvwxyz", 0, buf, sizeof(buf));
	assert_string_equal(buf, "abcdefghijkl...");
}

static void test_esc_ctl_makes_one_line(void **st)
{
	char out[64];
	const char in[] = "x\ny\0z";
	(void)st;
	assert_int_equal(sr_esc_ctl(in, sizeof(in) - 1, out, sizeof(out)), strlen("x\\x0ay\\x00z"));
	assert_string_equal(out, "x\\x0ay\\x00z");
}

static void test_esc_ctl_escapes_c1_too(void **st)
{
	char out[64];
	/* U+009B (CSI) and U+0085 as UTF-8; U+00E9 and U+00A0 stay */
	const char in[] = "a\xc2\x9b"
			  "2J\xc3\xa9\xc2\x85\xc2\xa0";
	(void)st;
	sr_esc_ctl(in, sizeof(in) - 1, out, sizeof(out));
	assert_string_equal(out, "a\\xc2\\x9b2J\xc3\xa9\\xc2\\x85\xc2\xa0");
}

static void test_mask_ctl_leaves_valid_one_line_utf8(void **st)
{
	char s1[] = "ok \xc3\xa9t\xc3\xa9";
	char s2[] = "a\x1b[31m\xc2\x9b\x7f\n";
	char s3[] = "cut \xc3";			 /* a character cut in two */
	char s4[] = "\xff\xc0\xaf\xed\xa0\x80!"; /* not UTF-8, overlong, surrogate */
	(void)st;
	sr_mask_ctl(s1);
	assert_string_equal(s1, "ok \xc3\xa9t\xc3\xa9");
	sr_mask_ctl(s2);
	assert_string_equal(s2, "a?[31m????");
	sr_mask_ctl(s3);
	assert_string_equal(s3, "cut ?");
	sr_mask_ctl(s4);
	assert_string_equal(s4, "??????"
				"!");
	sr_mask_ctl(NULL);
	/* the same rule, as a verdict */
	assert_null(sr_text_problem("ok \xc3\xa9t\xc3\xa9"));
	assert_string_equal(sr_text_problem("a\xc2\x9b"), "control character");
	assert_string_equal(sr_text_problem("a\x7f"), "control character");
	assert_string_equal(sr_text_problem("cut \xc3"), "not UTF-8");
}

static void test_valid_host(void **st)
{
	(void)st;
	assert_true(sr_valid_host("relay.example.com"));
	assert_true(sr_valid_host("relay-1.example.com."));
	assert_true(sr_valid_host("10.0.0.5"));
	assert_true(sr_valid_host("::1"));
	assert_true(sr_valid_host("fe80::1"));
	assert_false(sr_valid_host(""));
	assert_false(sr_valid_host("a\nspark.jars=x"));
	assert_false(sr_valid_host("a b"));
	assert_false(sr_valid_host("-a.example"));
	assert_false(sr_valid_host("a-.example"));
	assert_false(sr_valid_host("a..b"));
	assert_false(sr_valid_host("[::1]"));
	assert_false(sr_valid_host("host:80"));
	char big[300];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_false(sr_valid_host(big));
}

static void test_valid_chars(void **st)
{
	(void)st;
	assert_true(sr_valid_chars("L-1-abc", 47, "-"));
	assert_false(sr_valid_chars("L-1 abc", 47, "-"));
	assert_false(sr_valid_chars("", 47, "-"));
	assert_false(sr_valid_chars("abcd", 3, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_esc_keeps_printable_and_escapes_the_rest),
	    cmocka_unit_test(test_esc_cuts_long_values_with_ellipsis),
	    cmocka_unit_test(test_mask_replaces_what_esc_escapes),
	    cmocka_unit_test(test_esc_ctl_makes_one_line),
	    cmocka_unit_test(test_esc_ctl_escapes_c1_too),
	    cmocka_unit_test(test_mask_ctl_leaves_valid_one_line_utf8),
	    cmocka_unit_test(test_valid_host),
	    cmocka_unit_test(test_valid_chars),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
