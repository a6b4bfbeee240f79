#include "common/sr_log.h"
#include "common/sr_err.h"
#include "common/sr_text.h"

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
	char raw[2048], line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n, m;
	va_list ap;
	int k;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ %-5s [%s] ",
			      ts.tv_nsec / 1000000, level_names[level & 3], log_role);
	/* Context and message may hold text from the network: whatever a caller
	 * forgot to escape, no control byte (a newline above all) reaches the
	 * log, so one call is always exactly one line. */
	k = snprintf(raw, sizeof(raw), "%s%s", ctx && *ctx ? ctx : "", ctx && *ctx ? "] " : "");
	m = k > 0 ? (size_t)k : 0;
	if (m < sizeof(raw)) {
		va_start(ap, fmt);
		k = vsnprintf(raw + m, sizeof(raw) - m, fmt, ap);
		va_end(ap);
		if (k > 0)
			m += (size_t)k;
	}
	if (m >= sizeof(raw))
		m = sizeof(raw) - 1;
	if (n < sizeof(line)) {
		/* The context sits inside the role's brackets: "[relay lease=..] msg". */
		if (ctx && *ctx) {
			line[n - 2] = ' ';
			n--;
		}
		n += sr_esc_ctl(raw, m, line + n, sizeof(line) - n);
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line so lines of concurrent processes never interleave. */
	fwrite(line, 1, n, stderr);
}
