/* Levelled, structured log lines on stderr, one line per call, in one of
 * two formats:
 *   text: 2026-11-27T07:31:31.123Z INFO  [relay lease=7 conn=42 peer=10.0.0.3:5123] stream opened
 *   json: {"time":"2026-11-27T07:31:31.123Z","level":"info","role":"relay",
 *          "ctx":"lease=7 conn=42 peer=10.0.0.3:5123","msg":"stream opened"}
 * The SR_LOG macro tests the level before evaluating its arguments, so a
 * disabled level costs one comparison. */
#ifndef SR_LOG_H
#define SR_LOG_H

#include <stdarg.h>
#include <stdint.h>

enum sr_log_level {
	SR_LOG_ERROR = 0,
	SR_LOG_WARN = 1,
	SR_LOG_INFO = 2,
	SR_LOG_DEBUG = 3,
};

enum sr_log_format {
	SR_LOG_TEXT = 0, /* the line above; control bytes shown as \xNN */
	/* One JSON object per line, fields time, level, role, ctx, msg, written
	 * by jansson with every non-ASCII character as \uXXXX; a byte that is
	 * not UTF-8 becomes the text "\xNN". Falls back to a text line when
	 * memory runs out. */
	SR_LOG_JSON = 1,
};

extern int sr_log_level_cur;

/* Returns SR_EINVAL for a name other than error|warn|info|debug. */
int sr_log_set_level_name(const char *name);
void sr_log_set_level(int level);
/* Returns SR_EINVAL for a name other than text|json. */
int sr_log_set_format_name(const char *name);
void sr_log_set_format(enum sr_log_format f);
/* Prefix every line with this process role, e.g. "relay" (borrowed, static). */
void sr_log_set_role(const char *role);

void sr_log_write(int level, const char *ctx, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define SR_LOG(level, ctx, ...)                                  \
	do {                                                     \
		if ((level) <= sr_log_level_cur)                 \
			sr_log_write((level), (ctx), __VA_ARGS__); \
	} while (0)

#define SR_ERROR(ctx, ...) SR_LOG(SR_LOG_ERROR, ctx, __VA_ARGS__)
#define SR_WARN(ctx, ...) SR_LOG(SR_LOG_WARN, ctx, __VA_ARGS__)
#define SR_INFO(ctx, ...) SR_LOG(SR_LOG_INFO, ctx, __VA_ARGS__)
#define SR_DEBUG(ctx, ...) SR_LOG(SR_LOG_DEBUG, ctx, __VA_ARGS__)

/* At most a few log lines per period for one kind of repeated event (a
 * refusal, a peer's bad input): under a flood the log gets a line now and
 * then that says how many were not written. Zeroed: the first is written. */
struct sr_ratelog {
	uint64_t next_us;    /* the current period ends here */
	uint64_t suppressed; /* calls not written since the last line */
	unsigned lines;      /* written in the current period */
};

/* Returns 1 when a line may be written now: fewer than burst lines were
 * written in the current period (one starts at the first call after the
 * last one ended). *suppressed (may be NULL) then gets the number of calls
 * refused since the previous line. Returns 0 (and counts the call)
 * otherwise. */
int sr_ratelog_allow_n(struct sr_ratelog *rl, uint64_t now_us, uint64_t period_us,
		       unsigned burst, uint64_t *suppressed);
/* One line per period. */
#define sr_ratelog_allow(rl, now_us, period_us, suppressed)                                     \
	sr_ratelog_allow_n((rl), (now_us), (period_us), 1, (suppressed))

#endif
