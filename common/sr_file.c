/* Files the daemon writes for others to read, and a check of files it reads. */
#include "common/sr_file.h"
#include "common/sr_err.h"
#include "common/sr_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Replace path with data, atomically and never through a file someone else
 * put there: the data goes to a new file with an unpredictable name in the
 * same folder, created with O_EXCL and O_NOFOLLOW (neither a planted symlink
 * nor a planted file is ever opened, and the file's owner is us), given its
 * mode with fchmod (the umask does not decide it), then renamed over path;
 * rename() replaces a symlink at path instead of following it. */
int sr_file_replace(const char *path, const void *data_, size_t len, mode_t mode, char *err,
		    size_t errlen)
{
	const char *data = data_;
	char tmp[4096], rnd[2 * 8 + 1];
	int fd = -1;

	for (int tries = 0; fd < 0 && tries < 16; tries++) {
		if (sr_random_hex(rnd, 8) != 0) {
			sr_seterr(err, errlen, "%s: no random name for a temporary file", path);
			return SR_EIO;
		}
		if (snprintf(tmp, sizeof(tmp), "%s.tmp-%s", path, rnd) >= (int)sizeof(tmp)) {
			/* the reason first: a long path would push it off the end */
			sr_seterr(err, errlen, "path too long (%zu bytes): %.80s...", strlen(path),
				  path);
			return SR_EINVAL;
		}
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0 && errno != EEXIST) {
			sr_seterr(err, errlen, "%s: %s", tmp, strerror(errno));
			return SR_EIO;
		}
	}
	if (fd < 0) {
		sr_seterr(err, errlen, "%s: no free temporary name", path);
		return SR_EIO;
	}
	if (fchmod(fd, mode) != 0) {
		sr_seterr(err, errlen, "%s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		return SR_EIO;
	}
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			sr_seterr(err, errlen, "%s: %s", tmp, strerror(errno));
			close(fd);
			unlink(tmp);
			return SR_EIO;
		}
		data += n;
		len -= (size_t)n;
	}
	if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
		sr_seterr(err, errlen, "%s: %s", path, strerror(errno));
		unlink(tmp);
		return SR_EIO;
	}
	return 0;
}

int sr_file_open(const char *path, size_t max, off_t *size, char *err, size_t errlen)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK), rv = 0;

	if (fd < 0) {
		sr_seterr(err, errlen, "%s", strerror(errno));
		return SR_EIO;
	}
	if (fstat(fd, &st) != 0) {
		sr_seterr(err, errlen, "%s", strerror(errno));
		rv = SR_EIO;
	} else if (S_ISDIR(st.st_mode)) {
		sr_seterr(err, errlen, "%s", strerror(EISDIR));
		rv = SR_EINVAL;
	} else if (!S_ISREG(st.st_mode)) {
		sr_seterr(err, errlen, "not a regular file");
		rv = SR_EINVAL;
	} else if ((unsigned long long)st.st_size > max) {
		sr_seterr(err, errlen, "too big: %lld bytes, the limit is %zu",
			  (long long)st.st_size, max);
		rv = SR_EINVAL;
	}
	if (rv != 0) {
		close(fd);
		return rv;
	}
	if (size)
		*size = st.st_size;
	return fd;
}

int sr_file_check(const char *path, size_t max, char *err, size_t errlen)
{
	int fd = sr_file_open(path, max, NULL, err, errlen);

	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}
