/* Files the daemon writes for others to read (state, Spark settings), and
 * a check of the files it reads through libraries that take a path. */
#ifndef SR_FILE_H
#define SR_FILE_H

#include <stddef.h>
#include <sys/types.h>

/* Replace path with len bytes of data, atomically and never through a file
 * or symlink someone else planted: a new file with an unpredictable name in
 * the same folder (O_CREAT|O_EXCL|O_NOFOLLOW), mode set with fchmod, fsync,
 * then rename over path. Returns 0, or SR_EIO / SR_EINVAL with the reason
 * (naming the file) in err. */
int sr_file_replace(const char *path, const void *data, size_t len, mode_t mode, char *err,
		    size_t errlen);

/* Certificates, keys and CA bundles are at most this big. */
#define SR_FILE_PEM_MAX (4 * 1024 * 1024)

/* path opened for reading without blocking, if it is a regular file of at
 * most max bytes (its size in *size, may be NULL): the descriptor, or
 * SR_EIO (it cannot be opened) / SR_EINVAL with the reason in err, without
 * the path ("No such file or directory", "Is a directory", "not a regular
 * file", "too big: N bytes, the limit is M"). A FIFO would block in open()
 * or read(), a device fill the memory. */
int sr_file_open(const char *path, size_t max, off_t *size, char *err, size_t errlen);
/* The same, closed again: 0 or the error. For files a library (OpenSSL,
 * libcurl) then reads by name. */
int sr_file_check(const char *path, size_t max, char *err, size_t errlen);

#endif
