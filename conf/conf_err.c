/* Every message the loader writes, in one shape:
 *   origin[:line:col]: json.path: rule (got value)
 * or "env NAME: json.path: ..." for a value from the environment. Values from
 * the file or the environment are quoted escaped and cut; secrets are
 * described, never quoted. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "common/sr_text.h"

#define CONF_MAX_DEPTH 16 /* segments in a path we try to locate */

/* Split a dotted path ("tunnel.relays[1]") into segments for conf_locate
 * ("tunnel", "relays", "[1]"), copied into buf. One slot is left free. */
static size_t conf_split_path(const char *path, char *buf, size_t buflen, const char **segs)
{
	size_t n = 0, o = 0, len;
	const char *p = path, *close;

	while (*p && n < CONF_MAX_DEPTH - 1) {
		if (*p == '.') {
			p++;
			continue;
		}
		if (*p == '[')
			len = (close = strchr(p, ']')) ? (size_t)(close - p) + 1 : strlen(p);
		else
			len = strcspn(p, ".[");
		if (o + len + 1 > buflen)
			break;
		memcpy(buf + o, p, len);
		buf[o + len] = '\0';
		segs[n++] = buf + o;
		o += len + 1;
		p += len;
	}
	return n;
}

/* A key from the file, for a JSON path in a message: control characters
 * shown as '?' (a path is not quoted, so sr_esc's backslashes would read as
 * part of the key), cut to fit buf. */
static const char *conf_key_text(const char *key, char *buf, size_t len)
{
	snprintf(buf, len, "%s", key);
	sr_mask_ctl(buf);
	return buf;
}

const char *conf_env_that_set(const struct conf_ctx *ctx, const char *path, char *buf,
			      size_t len)
{
	unsigned role;

	if (!path || !*path)
		return NULL;
	role = strncmp(path, "relay.", 6) == 0	  ? CONF_ROLE_RELAY
	       : strncmp(path, "tunnel.", 7) == 0 ? CONF_ROLE_TUNNEL
						  : 0;
	if (role && !(ctx->roles & role))
		return NULL;
	conf_env_name(path, buf, len);
	return getenv(buf) ? buf : NULL;
}

/* Write "origin[:line:col]: path[.rawkey]: <message>" into ctx->err.
 * rawkey, if not NULL, is a key found in the file under path (an unknown
 * key): its own position is reported. locpath, if not NULL, is located
 * instead of path (a key that is missing is reported at its object).
 * Returns SR_EINVAL. */
static int conf_vfail(struct conf_ctx *ctx, const char *path, const char *locpath,
		      const char *rawkey, const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));
static int conf_vfail(struct conf_ctx *ctx, const char *path, const char *locpath,
		      const char *rawkey, const char *fmt, va_list ap)
{
	char segbuf[CONF_PATH_MAX + 8], keybuf[64], at[32] = "", what[CONF_PATH_MAX + 72] = "";
	char msg[CONF_MSG_MAX], envbuf[CONF_PATH_MAX + 16];
	const char *segs[CONF_MAX_DEPTH], *env = NULL;
	size_t nsegs = 0;
	int line = 0, col = 0;

	if (!ctx->err || ctx->errlen == 0)
		return SR_EINVAL;
	if (!ctx->env && ctx->env_applied)
		env = conf_env_that_set(ctx, path, envbuf, sizeof(envbuf));
	if (!env && !ctx->env && ctx->env_applied && locpath)
		env = conf_env_that_set(ctx, locpath, envbuf, sizeof(envbuf));
	if (env) {
		/* a check after loading, of a value a variable gave */
	} else if (!ctx->env) {
		const char *lp = locpath ? locpath : path;

		if (ctx->text && lp) {
			nsegs = conf_split_path(lp, segbuf, sizeof(segbuf), segs);
			if (rawkey && nsegs < CONF_MAX_DEPTH)
				segs[nsegs++] = rawkey;
			if ((nsegs || !*lp) && conf_locate(ctx->text, ctx->textlen, segs, nsegs,
							   rawkey != NULL, &line, &col) != 0)
				line = 0;
		}
		if (line > 0)
			snprintf(at, sizeof(at), ":%d:%d", line, col);
	}
	if (path && (*path || rawkey))
		snprintf(what, sizeof(what), "%s%s%s: ", path, *path && rawkey ? "." : "",
			 rawkey ? conf_key_text(rawkey, keybuf, sizeof(keybuf)) : "");
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (!env)
		env = ctx->env;
	sr_seterr(ctx->err, ctx->errlen, "%s%s%s: %s%s", env ? "env " : "",
		  env ? env : ctx->origin, at, what, msg);
	return SR_EINVAL;
}

int conf_fail(struct conf_ctx *ctx, const char *path, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, NULL, NULL, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

/* The same, located at locpath (e.g. the object of a missing key). */
int conf_fail_at(struct conf_ctx *ctx, const char *path, const char *locpath, const char *fmt,
		 ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, locpath, NULL, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

int conf_fail_key(struct conf_ctx *ctx, const char *path, const char *key, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, NULL, key, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

int conf_nomem(struct conf_ctx *ctx)
{
	sr_seterr(ctx->err, ctx->errlen, "%s: out of memory", ctx->origin);
	return SR_ENOMEM;
}

/* The rule a jansson parse error names, without the source text jansson
 * quotes after it ("invalid token near 'hunter2'"): the token it quotes may
 * be a secret written without quotes or a secret string cut by a newline,
 * and the message reaches logs, terminals and HTTP answers. The location
 * (line, column) is reported by the caller instead. */
void conf_json_rule(const json_error_t *jerr, char *buf, size_t len)
{
	const char *near = strstr(jerr->text, " near '");
	size_t n = near ? (size_t)(near - jerr->text) : strlen(jerr->text);

	/* "invalid Unicode '\uD800'" quotes an escape from the value too */
	if (strncmp(jerr->text, "invalid Unicode", 15) == 0) {
		snprintf(buf, len, "invalid Unicode escape");
		return;
	}
	snprintf(buf, len, "%.*s", (int)n, jerr->text);
}

void conf_quote(const char *s, int secret, char *buf, size_t len)
{
	char esc[SR_ESC_SIZE(CONF_GOT_MAX)];

	if (secret)
		snprintf(buf, len, "a secret of %zu bytes", strlen(s));
	else
		snprintf(buf, len, "\"%s\"", sr_esc_n(s, CONF_GOT_MAX, esc, sizeof(esc)));
}

void conf_describe_json(const json_t *v, int secret, char *buf, size_t len)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		snprintf(buf, len, "an object");
		break;
	case JSON_ARRAY:
		snprintf(buf, len, "an array");
		break;
	case JSON_STRING:
		conf_quote(json_string_value(v), secret, buf, len);
		break;
	case JSON_INTEGER:
		/* a secret written as a bare number is still the secret */
		if (secret)
			snprintf(buf, len, "a number");
		else
			snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		if (secret)
			snprintf(buf, len, "a number");
		else /* "a real number 1000": 1e3 or 1000.0 in the file, not an integer */
			snprintf(buf, len, "a real number %g", json_real_value(v));
		break;
	case JSON_TRUE:
		snprintf(buf, len, "true");
		break;
	case JSON_FALSE:
		snprintf(buf, len, "false");
		break;
	case JSON_NULL:
		snprintf(buf, len, "null");
		break;
	}
}

/* The rule a value of e must follow, for messages ("must be ..."). */
void conf_constraint(const struct conf_entry *e, int env, char *buf, size_t len)
{
	const char *null = (e->flags & CONF_NULLABLE) && !env ? " or null" : "";
	size_t off;
	int i;

	switch (e->type) {
	case CONF_U32:
		snprintf(buf, len, "must be an integer %u..%u", e->min, e->max);
		break;
	case CONF_BOOL:
		snprintf(buf, len,
			 env ? "must be true, false, 1 or 0" : "must be true or false");
		break;
	case CONF_STRING:
		if (e->choices) {
			snprintf(buf, len, "must be one of");
			for (i = 0; e->choices[i]; i++) {
				off = strlen(buf);
				snprintf(buf + off, len - off, "%s \"%s\"", i ? "," : "",
					 e->choices[i]);
			}
			off = strlen(buf);
			snprintf(buf + off, len - off, "%s", null);
		} else if (e->fmt) {
			snprintf(buf, len, "must be %s%s", e->fmt->what, null);
		} else {
			snprintf(buf, len, "must be a string of %u..%u bytes%s", e->min, e->max,
				 null);
		}
		break;
	case CONF_STRLIST:
		snprintf(buf, len, "must be a %slist of %u..%u strings%s%s",
			 env ? "comma-separated " : "", e->min, e->max, e->fmt ? ", each " : "",
			 e->fmt ? e->fmt->what : "");
		break;
	case CONF_GROUP:
		snprintf(buf, len, "must be an object");
		break;
	case CONF_ARRAY:
		snprintf(buf, len, "must be a %slist of %u..%u objects", env ? "JSON " : "",
			 e->min, e->max);
		break;
	}
}

/* Constraint for one item of a list. */
void conf_item_constraint(const struct conf_entry *e, char *buf, size_t len)
{
	if (e->fmt)
		snprintf(buf, len, "must be %s", e->fmt->what);
	else
		snprintf(buf, len, "must be a string of 1..%u bytes", CONF_STR_LIMIT);
}

int conf_fail_value(struct conf_ctx *ctx, const struct conf_entry *e, const char *path,
		    const char *got)
{
	char rule[256];

	conf_constraint(e, ctx->env != NULL, rule, sizeof(rule));
	return conf_fail(ctx, path, "%s (got %s)", rule, got);
}

/* The promise of conf.h: one line. Every site quotes file and environment
 * text through conf_quote, sr_esc or with '?' for control bytes; this is
 * the backstop for text that reaches err otherwise (a key jansson quotes in
 * a duplicate-key error, a name in a policy message). */
void conf_err_one_line(char *err, size_t errlen)
{
	if (!err || errlen == 0)
		return;
	err[errlen - 1] = '\0';
	sr_mask_ctl(err);
}
