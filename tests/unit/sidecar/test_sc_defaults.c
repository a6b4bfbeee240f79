/* sc_defaults_update: the lease's block in the spark-defaults.conf Spark
 * reads. Every other line is kept byte for byte; lines setting one of the
 * lease's keys (any Java-properties separator) go; a new lease replaces the
 * block, none removes it; nothing is written through a symlink or into
 * something that is not a small regular file; the file keeps its mode; an
 * unchanged file is not rewritten. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "sidecar/sc_int.h"
#include "tests/support/ts_sys.h"

static struct sidecar_lease_info lease(const char *id, const char *host, uint16_t p1,
				       uint16_t p2)
{
	struct sidecar_lease_info l;

	memset(&l, 0, sizeof(l));
	l.have_lease = 1;
	snprintf(l.lease, sizeof(l.lease), "%s", id);
	snprintf(l.host, sizeof(l.host), "%s", host);
	l.ports[TUN_PORT_DRIVER] = p1;
	l.ports[TUN_PORT_BLOCKMANAGER] = p2;
	return l;
}

static const char *const USER_LINES =
    "# the user's comment\n"
    "spark.executor.memory 4g\n"
    "  spark.driver.port=1234\n"
    "spark.driver.host: old.example\n"
    "spark.driver.hostname keep-me\n"
    "spark.jars /opt/x.jar\n";

static const char *const KEPT =
    "# the user's comment\n"
    "spark.executor.memory 4g\n"
    "spark.driver.hostname keep-me\n"
    "spark.jars /opt/x.jar\n";

static void test_block_written_replaced_removed(void **state)
{
	struct sidecar_lease_info l1 = lease("L-1-aaaaaaaa", "relay-a.example", 26000, 26001);
	struct sidecar_lease_info l2 = lease("L-2-bbbbbbbb", "relay-b.example", 26002, 26003);
	struct ts_dir d = {""};
	char path[192], err[256], want[2048];
	char *text;

	(void)state;
	ts_dir_make(&d, "scdef");
	ts_dir_file(&d, "spark-defaults.conf", path, sizeof(path));
	ts_write_file(path, USER_LINES);
	assert_int_equal(chmod(path, 0640), 0);

	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), 0);
	text = ts_read_file(path, NULL);
	snprintf(want, sizeof(want),
		 "%s# sparkrelay begin: lease L-1-aaaaaaaa, kept current by the sparkrelay "
		 "sidecar; do not edit\n"
		 "spark.driver.host relay-a.example\n"
		 "spark.driver.bindAddress 127.0.0.1\n"
		 "spark.driver.port 26000\n"
		 "spark.driver.blockManager.port 26001\n"
		 "spark.port.maxRetries 0\n"
		 "spark.kubernetes.executor.useDriverPodIP false\n"
		 "spark.task.maxDirectResultSize 256m\n"
		 "spark.rpc.message.maxSize 256\n"
		 "# sparkrelay end\n",
		 KEPT);
	assert_string_equal(text, want);
	free(text);

	/* the next lease replaces the block: one block, the new ports */
	assert_int_equal(sc_defaults_update(path, &l2, 0, err, sizeof(err)), 0);
	text = ts_read_file(path, NULL);
	assert_non_null(strstr(text, "spark.driver.port 26002\n"));
	assert_null(strstr(text, "26000"));
	assert_null(strstr(text, "maxDirectResultSize")); /* direct_result_mib 0 */
	assert_non_null(strstr(text, "# sparkrelay begin: lease L-2-bbbbbbbb,"));
	assert_null(strstr(strstr(text, "# sparkrelay begin") + 1, "# sparkrelay begin"));
	assert_int_equal(strncmp(text, KEPT, strlen(KEPT)), 0);
	free(text);

	/* no lease: the block goes, every other line stays */
	assert_int_equal(sc_defaults_update(path, NULL, 0, err, sizeof(err)), 0);
	text = ts_read_file(path, NULL);
	assert_string_equal(text, KEPT);
	free(text);
	{
		struct stat st;
		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0640);
	}
	assert_int_equal(ts_dir_count(&d), 1); /* no temporary file left */
	ts_dir_remove(&d);
}

/* A block whose end marker someone removed: only the begin line goes, the
 * lines after it are the user's. A file without a final newline keeps its
 * last line. No file: created with the block, or nothing written. */
static void test_damaged_and_missing_files(void **state)
{
	struct sidecar_lease_info l1 = lease("L-1-aaaaaaaa", "10.0.0.5", 26000, 26001);
	struct ts_dir d = {""};
	char path[192], err[256];
	char *text;

	(void)state;
	ts_dir_make(&d, "scdef");
	ts_dir_file(&d, "spark-defaults.conf", path, sizeof(path));
	ts_write_file(path, "# sparkrelay begin: lease L-0-00000000\nspark.a 1\nspark.b 2");
	assert_int_equal(sc_defaults_update(path, NULL, 0, err, sizeof(err)), 0);
	text = ts_read_file(path, NULL);
	assert_string_equal(text, "spark.a 1\nspark.b 2\n");
	free(text);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(sc_defaults_update(path, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(access(path, F_OK), -1); /* nothing to remove, nothing written */
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), 0);
	text = ts_read_file(path, NULL);
	assert_int_equal(strncmp(text, "# sparkrelay begin: lease L-1-aaaaaaaa", 38), 0);
	assert_non_null(strstr(text, "spark.driver.host 10.0.0.5\n"));
	free(text);
	ts_dir_remove(&d);
}

/* Unchanged content is not rewritten (its inode and mtime stay). */
static void test_unchanged_file_is_not_rewritten(void **state)
{
	struct sidecar_lease_info l1 = lease("L-1-aaaaaaaa", "10.0.0.5", 26000, 26001);
	struct ts_dir d = {""};
	char path[192], err[256];
	struct stat a, b;

	(void)state;
	ts_dir_make(&d, "scdef");
	ts_dir_file(&d, "spark-defaults.conf", path, sizeof(path));
	ts_write_file(path, "spark.a 1\n");
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), 0);
	assert_int_equal(stat(path, &a), 0);
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), 0);
	assert_int_equal(stat(path, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	ts_dir_remove(&d);
}

/* A symlink at the path (someone planted it, or a link into another
 * folder) is refused: the file is rewritten with what was read, which
 * would copy the link target's content here. So is a directory. The
 * target stays as it was. */
static void test_symlink_and_non_files_refused(void **state)
{
	struct sidecar_lease_info l1 = lease("L-1-aaaaaaaa", "10.0.0.5", 26000, 26001);
	struct ts_dir d = {""};
	char path[192], victim[192], err[256];
	char *text;

	(void)state;
	ts_dir_make(&d, "scdef");
	ts_dir_file(&d, "spark-defaults.conf", path, sizeof(path));
	ts_dir_file(&d, "victim", victim, sizeof(victim));
	ts_write_file(victim, "secret\n");
	assert_int_equal(symlink(victim, path), 0);
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), SR_EIO);
	assert_non_null(strstr(err, "symbolic link"));
	text = ts_read_file(victim, NULL);
	assert_string_equal(text, "secret\n");
	free(text);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), SR_EIO);
	assert_non_null(strstr(err, "not a regular file"));
	assert_int_equal(rmdir(path), 0);
	ts_dir_remove(&d);
}

/* A lease whose values are not single tokens is refused before anything is
 * read or written (defence in depth behind the control-message parser). */
static void test_bad_lease_values_refused(void **state)
{
	struct sidecar_lease_info l1 = lease("L-1-aaaaaaaa", "10.0.0.5\nspark.jars x", 26000,
					     26001);
	struct ts_dir d = {""};
	char path[192], err[256];
	char *text;

	(void)state;
	ts_dir_make(&d, "scdef");
	ts_dir_file(&d, "spark-defaults.conf", path, sizeof(path));
	ts_write_file(path, "spark.a 1\n");
	assert_int_equal(sc_defaults_update(path, &l1, 256, err, sizeof(err)), SR_EINVAL);
	text = ts_read_file(path, NULL);
	assert_string_equal(text, "spark.a 1\n");
	free(text);
	ts_dir_remove(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_block_written_replaced_removed),
	    cmocka_unit_test(test_damaged_and_missing_files),
	    cmocka_unit_test(test_unchanged_file_is_not_rewritten),
	    cmocka_unit_test(test_symlink_and_non_files_refused),
	    cmocka_unit_test(test_bad_lease_values_refused),
	};

	ts_log_level_from_env(SR_LOG_ERROR - 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
