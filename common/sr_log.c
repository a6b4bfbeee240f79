#include "common/sr_log.h"
#include "common/sr_err.h"
#include "common/sr_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

#define LOG_LINE_MAX 2048

int sr_log_level_cur = SR_LOG_INFO;
static enum sr_log_format log_format = SR_LOG_TEXT;
static const char *log_role = "sparkrelay";

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *const level_json[] = {"error", "warn", "info", "debug"};

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

int sr_log_set_format_name(const char *name)
{
	if (strcasecmp(name, "text") == 0)
		log_format = SR_LOG_TEXT;
	else if (strcasecmp(name, "json") == 0)
		log_format = SR_LOG_JSON;
	else
		return SR_EINVAL;
	return 0;
}

void sr_log_set_format(enum sr_log_format f)
{
	log_format = f;
}

void sr_log_set_role(const char *role)
{
	log_role = role;
}

/* Length of the well-formed UTF-8 sequence at s[0..n), or 0: no overlong
 * forms, no surrogates, nothing above U+10FFFF (what jansson accepts). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len;
	unsigned cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* in[0..n) as valid UTF-8 into out (NUL-terminated): a byte that starts no
 * well-formed sequence becomes the four characters \xNN. */
static size_t utf8_clean(const char *in, size_t n, char *out, size_t outlen)
{
	static const char hexd[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, o = 0;

	while (i < n) {
		size_t k = utf8_len(s + i, n - i);
		if (k == 0) {
			if (o + 5 > outlen)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hexd[s[i] >> 4];
			out[o++] = hexd[s[i] & 15];
			i++;
			continue;
		}
		if (o + k + 1 > outlen)
			break;
		memcpy(out + o, s + i, k);
		o += k;
		i += k;
	}
	out[o] = '\0';
	return o;
}

/* One JSON object and a newline into line. Returns its length, or 0 when
 * it could not be made (out of memory): the caller writes text instead. */
static size_t json_line(int level, const char *stamp, const char *ctx, const char *msg,
			size_t msglen, char *line, size_t linelen)
{
	char clean_ctx[LOG_LINE_MAX], clean_msg[4 * LOG_LINE_MAX];
	size_t n = 0;
	json_t *o;

	utf8_clean(ctx ? ctx : "", ctx ? strlen(ctx) : 0, clean_ctx, sizeof(clean_ctx));
	utf8_clean(msg, msglen, clean_msg, sizeof(clean_msg));
	o = json_pack("{s:s,s:s,s:s,s:s,s:s}", "time", stamp, "level", level_json[level & 3],
		      "role", log_role, "ctx", clean_ctx, "msg", clean_msg);
	if (!o)
		return 0;
	/* ENSURE_ASCII: no raw control or bidi character reaches a terminal
	 * or a pipeline that renders the field. */
	n = json_dumpb(o, line, linelen - 1, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(o);
	if (n == 0 || n > linelen - 1)
		return 0; /* did not fit: json_dumpb wrote a partial object */
	line[n++] = '\n';
	return n;
}

void sr_log_write(int level, const char *ctx, const char *fmt, ...)
{
	char raw[LOG_LINE_MAX], line[LOG_LINE_MAX], stamp[40];
	struct timespec ts;
	struct tm tm;
	size_t n, m;
	va_list ap;
	int k;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ", ts.tv_nsec / 1000000);
	if (log_format == SR_LOG_JSON) {
		/* Escaping of the whole line is jansson's; the buffer is
		 * large enough for a message of LOG_LINE_MAX bytes that is
		 * entirely \uXXXX escapes. */
		char jline[8 * LOG_LINE_MAX];
		va_start(ap, fmt);
		k = vsnprintf(raw, sizeof(raw), fmt, ap);
		va_end(ap);
		m = k < 0 ? 0 : (size_t)k < sizeof(raw) ? (size_t)k : sizeof(raw) - 1;
		n = json_line(level, stamp, ctx, raw, m, jline, sizeof(jline));
		if (n) {
			fwrite(jline, 1, n, stderr);
			return;
		}
	}
	n = (size_t)snprintf(line, sizeof(line), "%s %-5s [%s] ", stamp, level_names[level & 3],
			     log_role);
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

int sr_ratelog_allow_n(struct sr_ratelog *rl, uint64_t now_us, uint64_t period_us,
		       unsigned burst, uint64_t *suppressed)
{
	if (!rl->next_us || now_us >= rl->next_us) {
		rl->next_us = now_us + (period_us ? period_us : 1);
		rl->lines = 0;
	}
	if (rl->lines >= (burst ? burst : 1)) {
		rl->suppressed++;
		return 0;
	}
	rl->lines++;
	if (suppressed)
		*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return 1;
}
