/* sr_log: one line per call in both formats; in JSON, every field escaped
 * by jansson, bytes that are not UTF-8 shown as text, no raw control or
 * non-ASCII character. stderr is redirected to a file for each case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/sr_err.h"
#include "common/sr_log.h"

/* What one sr_log_write call with ctx and msg puts on stderr. */
static char *capture(int level, const char *ctx, const char *msg)
{
	char path[] = "/tmp/sr-test-log-XXXXXX", *out;
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	long n;
	FILE *f;

	assert_true(fd >= 0 && saved >= 0);
	fflush(stderr);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	sr_log_write(level, ctx, "%s", msg);
	fflush(stderr);
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	close(fd);
	f = fopen(path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	out = calloc(1, (size_t)n + 1);
	assert_non_null(out);
	assert_int_equal(fread(out, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	unlink(path);
	return out;
}

/* The line is one JSON object of plain ASCII, ending in one newline. */
static json_t *one_json_line(const char *line)
{
	json_error_t e;
	json_t *o;
	size_t n = strlen(line);

	assert_true(n > 2 && line[n - 1] == '\n');
	assert_null(memchr(line, '\n', n - 1));
	for (size_t i = 0; i < n - 1; i++)
		assert_true((unsigned char)line[i] >= 0x20 && (unsigned char)line[i] < 0x7f);
	o = json_loadb(line, n, 0, &e);
	if (!o)
		fail_msg("not JSON (%s): %s", e.text, line);
	return o;
}

static void test_json_fields_and_escapes(void **st)
{
	json_t *o;
	char *line;

	(void)st;
	sr_log_set_role("relay");
	assert_int_equal(sr_log_set_format_name("json"), 0);
	/* A newline, an escape sequence, a quote, a backslash, a bidi override
	 * (valid UTF-8) and two bytes that are not UTF-8 (a lone continuation
	 * byte, a cut sequence). */
	line = capture(SR_LOG_WARN, "lease=L-1-ab app=\"x\"",
		       "a\nb\x1b[31m \"q\" \\ \xe2\x80\xae \x80 \xe2\x80");
	o = one_json_line(line);
	assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
	assert_string_equal(json_string_value(json_object_get(o, "role")), "relay");
	assert_string_equal(json_string_value(json_object_get(o, "ctx")), "lease=L-1-ab app=\"x\"");
	assert_string_equal(json_string_value(json_object_get(o, "msg")),
			    "a\nb\x1b[31m \"q\" \\ \xe2\x80\xae \\x80 \\xe2\\x80");
	assert_non_null(strstr(line, "\\u202E"));
	assert_non_null(strstr(line, "\\u001B"));
	assert_int_equal(json_object_size(o), 5);
	assert_true(json_is_string(json_object_get(o, "time")));
	json_decref(o);
	free(line);
	/* No context: an empty ctx, not a missing field. */
	line = capture(SR_LOG_INFO, NULL, "started");
	o = one_json_line(line);
	assert_string_equal(json_string_value(json_object_get(o, "ctx")), "");
	assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
	json_decref(o);
	free(line);
	/* The longest message is still one whole object. */
	{
		char big[4096];
		memset(big, '\x01', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		line = capture(SR_LOG_ERROR, "c", big);
		o = one_json_line(line);
		assert_true(strlen(json_string_value(json_object_get(o, "msg"))) > 1000);
		json_decref(o);
		free(line);
	}
	sr_log_set_format(SR_LOG_TEXT);
}

static void test_text_stays_one_escaped_line(void **st)
{
	char *line;

	(void)st;
	sr_log_set_role("relay");
	sr_log_set_format(SR_LOG_TEXT);
	line = capture(SR_LOG_INFO, "lease=L-1-ab", "a\nb");
	assert_non_null(strstr(line, " INFO  [relay lease=L-1-ab] a\\x0ab\n"));
	assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
	free(line);
}

static void test_ratelog_one_line_per_period(void **state)
{
	struct sr_ratelog rl;
	uint64_t more = 99;

	(void)state;
	memset(&rl, 0, sizeof(rl));
	assert_int_equal(sr_ratelog_allow(&rl, 1000, 500, &more), 1);
	assert_int_equal(more, 0);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(sr_ratelog_allow(&rl, 1000 + (uint64_t)i % 499, 500, &more),
				 0);
	/* The next line says how many were not logged, then counting starts again. */
	assert_int_equal(sr_ratelog_allow(&rl, 1500, 500, &more), 1);
	assert_int_equal(more, 1000);
	assert_int_equal(sr_ratelog_allow(&rl, 1501, 500, &more), 0);
	assert_int_equal(sr_ratelog_allow(&rl, 5000, 500, NULL), 1);
	assert_int_equal(sr_ratelog_allow(&rl, 5600, 500, &more), 1);
	assert_int_equal(more, 0);
}

/* Under a flood of one kind, the first burst lines of a period are written,
 * then none until the next period, whose first line counts the rest. */
static void test_ratelog_burst_per_period(void **state)
{
	struct sr_ratelog rl;
	uint64_t more = 99;
	int written = 0;

	(void)state;
	memset(&rl, 0, sizeof(rl));
	for (int i = 0; i < 1000; i++)
		written += sr_ratelog_allow_n(&rl, 1000 + (uint64_t)i % 500, 500, 20, &more);
	assert_int_equal(written, 20);
	assert_int_equal(more, 0); /* the first 20 follow each other: none left out */
	assert_int_equal(sr_ratelog_allow_n(&rl, 1500, 500, 20, &more), 1);
	assert_int_equal(more, 980);
	for (int i = 0; i < 19; i++)
		assert_int_equal(sr_ratelog_allow_n(&rl, 1600, 500, 20, &more), 1);
	assert_int_equal(sr_ratelog_allow_n(&rl, 1999, 500, 20, &more), 0);
}

static void test_format_names(void **st)
{
	(void)st;
	assert_int_equal(sr_log_set_format_name("JSON"), 0);
	assert_int_equal(sr_log_set_format_name("text"), 0);
	assert_int_equal(sr_log_set_format_name("xml"), SR_EINVAL);
	assert_int_equal(sr_log_set_format_name(""), SR_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_json_fields_and_escapes),
	    cmocka_unit_test(test_text_stays_one_escaped_line),
	    cmocka_unit_test(test_format_names),
	    cmocka_unit_test(test_ratelog_one_line_per_period),
	    cmocka_unit_test(test_ratelog_burst_per_period),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
