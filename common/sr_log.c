#include "common/sr_log.h"
#include "common/sr_err.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int sr_log_level_cur = SR_LOG_INFO;
static const char *log_role = "sparkrelay";

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

int sr_log_set_level_name(const char *name)
{
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			sr_log_level_cur = i;
			return 0;
		}
	}
	return SR_EINVAL;
}

void sr_log_set_level(int level)
{
	sr_log_level_cur = level;
}

void sr_log_set_role(const char *role)
{
	log_role = role;
}

void sr_log_write(int level, const char *ctx, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	va_list ap;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s [%s%s%s] ",
			      ts.tv_nsec / 1000000, level_names[level & 3], log_role,
			      ctx && *ctx ? " " : "", ctx ? ctx : "");
	if (n < sizeof(line)) {
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += (size_t)m;
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so lines of concurrent processes never interleave. */
	fwrite(line, 1, n, stderr);
}
