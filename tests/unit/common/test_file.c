/* sr_file: the files the sidecar writes for others to read (its state file,
 * the Spark settings) and the check of files the daemon reads by name
 * (certificates, keys, a service account token), in a temporary folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sr_err.h"
#include "common/sr_file.h"

struct dir {
	char path[256];
};

static int setup(void **state)
{
	struct dir *d = calloc(1, sizeof(*d));

	if (!d)
		return -1;
	snprintf(d->path, sizeof(d->path), "/tmp/sr-test-file-XXXXXX");
	if (!mkdtemp(d->path)) {
		free(d);
		return -1;
	}
	*state = d;
	return 0;
}

static int teardown(void **state)
{
	struct dir *d = *state;
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->path);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", d->path);
	free(d);
	return 0;
}

static void at(const struct dir *d, const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", d->path, name);
}

/* The names in the folder other than . and .., for "nothing left behind". */
static int entries(const struct dir *d)
{
	DIR *dp = opendir(d->path);
	struct dirent *e;
	int n = 0;

	assert_non_null(dp);
	while ((e = readdir(dp)))
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(dp);
	return n;
}

static void read_all(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = read(fd, buf, len - 1);
	assert_true(n >= 0);
	buf[n] = '\0';
	close(fd);
}

/* The content and the mode asked for, whatever the umask; a second write
 * replaces the first whole. */
static void test_replace_writes_content_and_mode(void **state)
{
	struct dir *d = *state;
	char p[300], buf[64], err[256];
	struct stat st;
	mode_t old = umask(077);

	at(d, "spark.conf", p, sizeof(p));
	assert_int_equal(sr_file_replace(p, "first version\n", 14, 0644, err, sizeof(err)), 0);
	assert_int_equal(sr_file_replace(p, "second\n", 7, 0644, err, sizeof(err)), 0);
	umask(old);
	read_all(p, buf, sizeof(buf));
	assert_string_equal(buf, "second\n");
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);
	assert_int_equal(entries(d), 1); /* no temporary file left */
}

/* A symlink planted at the path is replaced, not followed: the file it
 * points at keeps its content. */
static void test_replace_does_not_follow_a_symlink(void **state)
{
	struct dir *d = *state;
	char p[300], victim[300], buf[64], err[256];
	struct stat st;
	int fd;

	at(d, "victim", victim, sizeof(victim));
	at(d, "state.json", p, sizeof(p));
	fd = open(victim, O_WRONLY | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "precious", 8), 8);
	close(fd);
	assert_int_equal(symlink(victim, p), 0);
	assert_int_equal(sr_file_replace(p, "{}", 2, 0600, err, sizeof(err)), 0);
	read_all(victim, buf, sizeof(buf));
	assert_string_equal(buf, "precious");
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	read_all(p, buf, sizeof(buf));
	assert_string_equal(buf, "{}");
}

/* What cannot be written is said, naming the file, and leaves nothing
 * behind: a folder that is gone, a path too long, a folder in the way. */
static void test_replace_failures_name_the_file_and_leave_nothing(void **state)
{
	struct dir *d = *state;
	char p[300], err[256], lng[5000];

	at(d, "gone/spark.conf", p, sizeof(p));
	assert_int_equal(sr_file_replace(p, "x", 1, 0644, err, sizeof(err)), SR_EIO);
	assert_non_null(strstr(err, p));
	assert_non_null(strstr(err, "No such file or directory"));

	memset(lng, 'a', sizeof(lng) - 1);
	lng[0] = '/';
	lng[sizeof(lng) - 1] = '\0';
	assert_int_equal(sr_file_replace(lng, "x", 1, 0644, err, sizeof(err)), SR_EINVAL);
	assert_non_null(strstr(err, "path too long"));

	at(d, "a-folder", p, sizeof(p));
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(sr_file_replace(p, "x", 1, 0644, err, sizeof(err)), SR_EIO);
	assert_non_null(strstr(err, p));
	assert_int_equal(entries(d), 1); /* the folder, no temporary file */
}

/* Files read by name: a regular file of at most max bytes, else the reason,
 * at once (a FIFO must not block the start-up). */
static void test_open_takes_only_small_regular_files(void **state)
{
	struct dir *d = *state;
	char p[300], err[256];
	off_t size = 0;
	int fd;

	at(d, "cert.pem", p, sizeof(p));
	assert_int_equal(sr_file_replace(p, "0123456789", 10, 0600, err, sizeof(err)), 0);
	fd = sr_file_open(p, 10, &size, err, sizeof(err));
	assert_true(fd >= 0);
	assert_int_equal(size, 10);
	close(fd);
	assert_int_equal(sr_file_check(p, 10, err, sizeof(err)), 0);

	assert_int_equal(sr_file_open(p, 9, NULL, err, sizeof(err)), SR_EINVAL);
	assert_string_equal(err, "too big: 10 bytes, the limit is 9");

	assert_int_equal(sr_file_check(d->path, 100, err, sizeof(err)), SR_EINVAL);
	assert_string_equal(err, "Is a directory");

	at(d, "fifo", p, sizeof(p));
	assert_int_equal(mkfifo(p, 0600), 0);
	assert_int_equal(sr_file_check(p, 100, err, sizeof(err)), SR_EINVAL);
	assert_string_equal(err, "not a regular file");

	at(d, "missing.pem", p, sizeof(p));
	assert_int_equal(sr_file_check(p, 100, err, sizeof(err)), SR_EIO);
	assert_string_equal(err, "No such file or directory");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_replace_writes_content_and_mode, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_replace_does_not_follow_a_symlink, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(
		test_replace_failures_name_the_file_and_leave_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_open_takes_only_small_regular_files, setup,
					    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
