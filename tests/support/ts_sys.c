#include "tests/support/ts_sys.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sr_log.h"

extern char **environ;

void ts_dir_make(struct ts_dir *d, const char *tag)
{
	char tmpl[sizeof(d->path)];
	int n = snprintf(tmpl, sizeof(tmpl), "/tmp/sr-%s-XXXXXX", tag);

	d->path[0] = '\0';
	assert_true(n > 0 && (size_t)n < sizeof(tmpl));
	if (!mkdtemp(tmpl))
		fail_msg("mkdtemp %s: %s", tmpl, strerror(errno));
	memcpy(d->path, tmpl, sizeof(d->path));
}

void ts_dir_file(const struct ts_dir *d, const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", d->path, name);

	assert_true(n > 0 && (size_t)n < len);
}

int ts_dir_count(const struct ts_dir *d)
{
	DIR *dir = opendir(d->path);
	struct dirent *e;
	int n = 0;

	assert_non_null(dir);
	while ((e = readdir(dir)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(dir);
	return n;
}

/* Unlink every entry of path; subfolders (depth levels deep) first. */
static void remove_entries(const char *path, int depth)
{
	DIR *dir = opendir(path);
	struct dirent *e;
	char p[512];

	if (!dir)
		return;
	while ((e = readdir(dir)) != NULL) {
		struct stat st;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (depth > 0)
				remove_entries(p, depth - 1);
			/* a read-only folder left by a test: make it removable */
			chmod(p, 0700);
			rmdir(p);
		} else {
			unlink(p);
		}
	}
	closedir(dir);
}

void ts_dir_remove(struct ts_dir *d)
{
	if (!d->path[0])
		return; /* never made, or removed already */
	chmod(d->path, 0700);
	remove_entries(d->path, 1);
	if (rmdir(d->path) != 0)
		fail_msg("rmdir %s: %s", d->path, strerror(errno));
	d->path[0] = '\0';
}

void ts_write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

char *ts_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	for (;;) {
		if (cap - n < 4096) {
			char *nb = realloc(buf, cap + 65536);

			assert_non_null(nb);
			buf = nb;
			cap += 65536;
		}
		size_t got = fread(buf + n, 1, cap - n - 1, f);
		n += got;
		if (got == 0)
			break;
	}
	assert_int_equal(ferror(f), 0);
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

void ts_src_path(const char *srcfile, const char *rel, char *buf, size_t len)
{
	const char *slash = strrchr(srcfile, '/');
	int n;

	if (slash)
		n = snprintf(buf, len, "%.*s/%s", (int)(slash - srcfile), srcfile, rel);
	else
		n = snprintf(buf, len, "./%s", rel);
	assert_true(n > 0 && (size_t)n < len);
}

void ts_env_clear(const char *prefix)
{
	size_t plen = strlen(prefix);
	int again = 1;

	while (again) {
		again = 0;
		for (char **ep = environ; *ep; ep++) {
			const char *eq = strchr(*ep, '=');
			size_t n = eq ? (size_t)(eq - *ep) : strlen(*ep);

			if (strncmp(*ep, prefix, plen) == 0) {
				char *name = strndup(*ep, n);

				assert_non_null(name);
				unsetenv(name);
				free(name);
				again = 1; /* environ changed under us: rescan */
				break;
			}
		}
	}
}

void ts_log_level_from_env(int dflt)
{
	const char *lvl = getenv("SR_TEST_LOG");

	sr_log_set_level(dflt);
	if (lvl && sr_log_set_level_name(lvl) != 0)
		fail_msg("SR_TEST_LOG=%s: want error|warn|info|debug", lvl);
}
