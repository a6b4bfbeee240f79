/* Test support: temporary folders and files, paths below the source tree,
 * the environment. Every helper fails the running cmocka test on error. */
#ifndef TS_SYS_H
#define TS_SYS_H

#include <stddef.h>

struct ts_dir {
	char path[128]; /* "" until made and after removal: zero the struct first */
};

/* A new private folder /tmp/sr-<tag>-XXXXXX. */
void ts_dir_make(struct ts_dir *d, const char *tag);
/* d->path + "/" + name into buf (the test fails if it does not fit). */
void ts_dir_file(const struct ts_dir *d, const char *name, char *buf, size_t len);
/* Entries in the folder, "." and ".." not counted. */
int ts_dir_count(const struct ts_dir *d);
/* Remove the folder with everything in it (one level of subfolders).
 * Does nothing when path is "" (never made, or removed already). */
void ts_dir_remove(struct ts_dir *d);

/* Write text to path (created or truncated, mode 0644 before umask). */
void ts_write_file(const char *path, const char *text);
/* The whole file, NUL-terminated, in malloc'd memory; *len (if not NULL)
 * gets its length. */
char *ts_read_file(const char *path, size_t *len);

/* A file named by its path relative to the folder of the calling source
 * file (TS_SRC_PATH passes __FILE__): data files checked in next to a test. */
void ts_src_path(const char *srcfile, const char *rel, char *buf, size_t len);
#define TS_SRC_PATH(rel, buf, len) ts_src_path(__FILE__, (rel), (buf), (len))

/* Unset every environment variable whose name starts with prefix, of any
 * length (SPARKRELAY_ for the configuration loader). */
void ts_env_clear(const char *prefix);

/* The log level: dflt (SR_LOG_ERROR - 1 is silent), unless SR_TEST_LOG
 * names one (error|warn|info|debug). */
void ts_log_level_from_env(int dflt);

#endif
