/* Files the daemon writes for others to read (state, Spark settings). */
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

#endif
