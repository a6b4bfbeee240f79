/* The loader: one generic walker that loads JSON objects against the tables
 * of conf_table.c, the environment overrides, and the checks that span
 * several keys. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sr_err.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "relay/relay_policy.h"

#define CONF_PATH_MAX 256 /* a dotted JSON path; longer unknown keys are cut */
#define CONF_MAX_DEPTH 16 /* segments in a path we try to locate */
#define CONF_GOT_MAX 48	  /* characters of a bad value quoted back */
#define CONF_STR_LIMIT 4095u
#define CONF_ENV_SHOW_MAX 96 /* bytes of an unknown variable name quoted back */

static void *conf_at(void *base, size_t off)
{
	return (char *)base + off;
}

static const void *conf_at_c(const void *base, size_t off)
{
	return (const char *)base + off;
}

/* ---- messages ---- */

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
	char segbuf[CONF_PATH_MAX + 8], keybuf[64];
	const char *segs[CONF_MAX_DEPTH];
	size_t nsegs = 0, off = 0;
	int line = 0, col = 0, r;

	if (!ctx->err || ctx->errlen == 0)
		return SR_EINVAL;
	if (ctx->env) {
		r = snprintf(ctx->err, ctx->errlen, "env %s: ", ctx->env);
	} else {
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
			r = snprintf(ctx->err, ctx->errlen, "%s:%d:%d: ", ctx->origin, line,
				     col);
		else
			r = snprintf(ctx->err, ctx->errlen, "%s: ", ctx->origin);
	}
	if (r > 0)
		off = (size_t)r < ctx->errlen ? (size_t)r : ctx->errlen - 1;
	if (rawkey) {
		/* a key from the file: keep the message on one line */
		size_t i;

		for (i = 0; rawkey[i] && i + 1 < sizeof(keybuf); i++)
			keybuf[i] = (unsigned char)rawkey[i] < 0x20 || rawkey[i] == 0x7f
					? '?'
					: rawkey[i];
		keybuf[i] = '\0';
	}
	if (path && (*path || rawkey)) {
		r = snprintf(ctx->err + off, ctx->errlen - off, "%s%s%s: ", path,
			     *path && rawkey ? "." : "", rawkey ? keybuf : "");
		if (r > 0)
			off +=
			    (size_t)r < ctx->errlen - off ? (size_t)r : ctx->errlen - off - 1;
	}
	vsnprintf(ctx->err + off, ctx->errlen - off, fmt, ap);
	return SR_EINVAL;
}

static int conf_fail(struct conf_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int conf_fail(struct conf_ctx *ctx, const char *path, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, NULL, NULL, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

/* The same, located at locpath (e.g. the object of a missing key). */
static int conf_fail_at(struct conf_ctx *ctx, const char *path, const char *locpath,
			const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int conf_fail_at(struct conf_ctx *ctx, const char *path, const char *locpath,
			const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, locpath, NULL, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

static int conf_fail_key(struct conf_ctx *ctx, const char *path, const char *key,
			 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int conf_fail_key(struct conf_ctx *ctx, const char *path, const char *key,
			 const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	conf_vfail(ctx, path, NULL, key, fmt, ap);
	va_end(ap);
	return SR_EINVAL;
}

static int conf_nomem(struct conf_ctx *ctx)
{
	if (ctx->err && ctx->errlen)
		snprintf(ctx->err, ctx->errlen, "%s: out of memory", ctx->origin);
	return SR_ENOMEM;
}

/* The rule a jansson parse error names, without the source text jansson
 * quotes after it ("invalid token near 'hunter2'"): the token it quotes may
 * be a secret written without quotes or a secret string cut by a newline,
 * and the message reaches logs, terminals and HTTP answers. The location
 * (line, column) is reported by the caller instead. */
static void conf_json_rule(const json_error_t *jerr, char *buf, size_t len)
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

/* s quoted for a one-line message: control bytes shown as '?', long values cut. */
static void conf_quote(const char *s, int secret, char *buf, size_t len)
{
	size_t n = strlen(s), i, o = 0;

	if (secret) {
		snprintf(buf, len, "a secret of %zu bytes", n);
		return;
	}
	if (len < 8) {
		buf[0] = '\0';
		return;
	}
	buf[o++] = '"';
	for (i = 0; i < n && i < CONF_GOT_MAX && o + 5 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (i < n && o + 5 < len) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o++] = '"';
	buf[o] = '\0';
}

static void conf_describe_json(const json_t *v, int secret, char *buf, size_t len)
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
		else
			snprintf(buf, len, "%g", json_real_value(v));
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
static void conf_constraint(const struct conf_entry *e, int env, char *buf, size_t len)
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
static void conf_item_constraint(const struct conf_entry *e, char *buf, size_t len)
{
	if (e->fmt)
		snprintf(buf, len, "must be %s", e->fmt->what);
	else
		snprintf(buf, len, "must be a string of 1..%u bytes", CONF_STR_LIMIT);
}

static int conf_fail_value(struct conf_ctx *ctx, const struct conf_entry *e, const char *path,
			   const char *got)
{
	char rule[256];

	conf_constraint(e, ctx->env != NULL, rule, sizeof(rule));
	return conf_fail(ctx, path, "%s (got %s)", rule, got);
}

/* ---- setting values ---- */

static int conf_str_ok(const struct conf_entry *e, const char *s)
{
	size_t n = strlen(s);
	int i;

	if (n < e->min || n > e->max)
		return 0;
	if (e->choices) {
		for (i = 0; e->choices[i]; i++)
			if (strcmp(s, e->choices[i]) == 0)
				return 1;
		return 0;
	}
	return !e->fmt || e->fmt->check(s) == 0;
}

static int conf_item_ok(const struct conf_entry *e, const char *s)
{
	size_t n = strlen(s);

	return n >= 1 && n <= CONF_STR_LIMIT && (!e->fmt || e->fmt->check(s) == 0);
}

/* Replace *slot with a copy of s (NULL: unset). */
static int conf_put_str(char **slot, const char *s)
{
	char *copy = NULL;

	if (s && !(copy = strdup(s)))
		return SR_ENOMEM;
	free(*slot);
	*slot = copy;
	return 0;
}

static void conf_list_clear(const struct conf_entry *e, void *base)
{
	char **items = conf_at(base, e->off);
	unsigned *count = conf_at(base, e->aux_off);
	unsigned i;

	for (i = 0; i < *count; i++) {
		free(items[i]);
		items[i] = NULL;
	}
	*count = 0;
}

/* Install n already-validated items (copied) in place of the old list. */
static int conf_list_put(const struct conf_entry *e, void *base, const char *const *src,
			 unsigned n)
{
	char *tmp[SIDECAR_MAX_RELAYS > 64 ? SIDECAR_MAX_RELAYS : 64];
	char **items = conf_at(base, e->off);
	unsigned *count = conf_at(base, e->aux_off);
	unsigned i;

	if (n > SR_ARRAY_LEN(tmp) || n > e->max)
		return SR_EINVAL;
	for (i = 0; i < n; i++) {
		if (!(tmp[i] = strdup(src[i]))) {
			while (i > 0)
				free(tmp[--i]);
			return SR_ENOMEM;
		}
	}
	conf_list_clear(e, base);
	for (i = 0; i < n; i++)
		items[i] = tmp[i];
	*count = n;
	return 0;
}

/* ---- arrays of objects ---- */

static void *conf_elem(const struct conf_entry *e, void *base, unsigned i)
{
	return (char *)conf_at(base, e->off) + (size_t)i * e->elem_size;
}

/* Free every element of an ARRAY and zero them and the count. */
static void conf_array_clear(const struct conf_entry *e, void *base)
{
	unsigned *count = conf_at(base, e->aux_off);
	unsigned i;

	for (i = 0; i < *count && i < e->max; i++) {
		conf_group_free(e->sub, conf_elem(e, base, i));
		memset(conf_elem(e, base, i), 0, e->elem_size);
	}
	*count = 0;
}

/* Remember that e was given, and whether last by the environment. */
static void conf_mark_given(struct conf_ctx *ctx, const struct conf_entry *e, int from_env)
{
	unsigned i;

	for (i = 0; i < ctx->ngiven && ctx->given[i] != e; i++)
		;
	if (i == ctx->ngiven) {
		if (i >= CONF_GIVEN_MAX)
			return;
		ctx->given[ctx->ngiven++] = e;
	}
	ctx->given_env[i] = from_env != 0;
}

/* 0: not given; 1: by the file; 2: by the environment. */
static int conf_given(const struct conf_ctx *ctx, const struct conf_entry *e)
{
	unsigned i;

	for (i = 0; i < ctx->ngiven; i++)
		if (ctx->given[i] == e)
			return ctx->given_env[i] ? 2 : 1;
	return 0;
}

static int conf_load_array(const struct conf_entry *e, void *base, json_t *v, const char *path,
			   struct conf_ctx *ctx);

/* Strict decimal: digits only, no sign or blanks, fits in 32 bits. */
static int conf_parse_u32(const char *s, uint32_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > UINT32_MAX)
			return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

int conf_set_text(const struct conf_entry *e, void *base, const char *s, const char *path,
		  struct conf_ctx *ctx)
{
	char got[CONF_GOT_MAX + 16], rule[256], itempath[CONF_PATH_MAX + 16];
	int secret = (e->flags & CONF_SECRET) != 0, rc;
	uint32_t u;

	conf_quote(s, secret, got, sizeof(got));
	switch (e->type) {
	case CONF_U32:
		if (conf_parse_u32(s, &u) != 0 || u < e->min || u > e->max)
			return conf_fail_value(ctx, e, path, got);
		*(uint32_t *)conf_at(base, e->off) = u;
		return 0;
	case CONF_BOOL:
		if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0)
			*(int *)conf_at(base, e->off) = 1;
		else if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0)
			*(int *)conf_at(base, e->off) = 0;
		else
			return conf_fail_value(ctx, e, path, got);
		return 0;
	case CONF_STRING:
		if (!*s && (e->flags & CONF_NULLABLE))
			s = NULL;
		else if (!conf_str_ok(e, s))
			return conf_fail_value(ctx, e, path, got);
		if (conf_put_str(conf_at(base, e->off), s) != 0)
			return conf_nomem(ctx);
		return 0;
	case CONF_STRLIST: {
		const char *items[SIDECAR_MAX_RELAYS > 64 ? SIDECAR_MAX_RELAYS : 64];
		char *copy = strdup(s), *p, *next;
		unsigned n = 0;

		if (!copy)
			return conf_nomem(ctx);
		rc = 0;
		/* count every item, so the message gives the real number */
		for (p = copy; *s && p; p = next) {
			char *end;

			next = strchr(p, ',');
			if (next)
				*next++ = '\0';
			while (*p == ' ' || *p == '\t')
				p++;
			end = p + strlen(p);
			while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
				*--end = '\0';
			if (n < e->max && n < SR_ARRAY_LEN(items) && !conf_item_ok(e, p)) {
				conf_item_constraint(e, rule, sizeof(rule));
				conf_quote(p, secret, got, sizeof(got));
				snprintf(itempath, sizeof(itempath), "%s[%u]", path, n);
				rc = conf_fail(ctx, itempath, "%s (got %s)", rule, got);
				break;
			}
			if (n < SR_ARRAY_LEN(items))
				items[n] = p;
			n++;
		}
		if (rc == 0 && (n < e->min || n > e->max || n > SR_ARRAY_LEN(items))) {
			snprintf(got, sizeof(got), "%u items", n);
			rc = conf_fail_value(ctx, e, path, got);
		}
		if (rc == 0 && conf_list_put(e, base, items, n) != 0)
			rc = conf_nomem(ctx);
		free(copy);
		return rc;
	}
	case CONF_ARRAY: {
		/* a whole JSON array: its elements have no variables of their own */
		const char *text = ctx->text;
		size_t textlen = ctx->textlen;
		char jrule[JSON_ERROR_TEXT_LENGTH];
		json_error_t jerr;
		json_t *v;

		if (!*s) {
			if (e->min > 0)
				return conf_fail_value(ctx, e, path, "an empty value");
			conf_array_clear(e, base);
			conf_mark_given(ctx, e, ctx->env != NULL);
			return 0;
		}
		if (strlen(s) > CONF_MAX_FILE_SIZE)
			return conf_fail(ctx, path, "too big: over the limit of %d bytes",
					 CONF_MAX_FILE_SIZE);
		if (!(v = json_loads(s, JSON_REJECT_DUPLICATES, &jerr))) {
			if (json_error_code(&jerr) == json_error_out_of_memory)
				return conf_nomem(ctx);
			conf_constraint(e, ctx->env != NULL, rule, sizeof(rule));
			conf_json_rule(&jerr, jrule, sizeof(jrule));
			return conf_fail(ctx, path, "%s (not JSON: %s at character %d)", rule,
					 jrule, jerr.position);
		}
		/* positions in the file mean nothing for this text */
		ctx->text = NULL;
		ctx->textlen = 0;
		rc = conf_load_array(e, base, v, path, ctx);
		ctx->text = text;
		ctx->textlen = textlen;
		json_decref(v);
		return rc;
	}
	case CONF_GROUP:
		break;
	}
	return conf_fail(ctx, path, "cannot be set from text");
}

static void conf_join(char *buf, size_t len, const char *path, const char *key)
{
	snprintf(buf, len, "%s%s%s", path, *path ? "." : "", key);
}

static const struct conf_entry *conf_find(const struct conf_group *g, const char *key)
{
	size_t i;

	for (i = 0; i < g->n; i++)
		if (strcmp(g->e[i].key, key) == 0)
			return &g->e[i];
	return NULL;
}

/* ---- defaults and freeing ---- */

int conf_group_defaults(const struct conf_group *g, void *base)
{
	char err[256];
	struct conf_ctx ctx = {.origin = "defaults", .err = err, .errlen = sizeof(err)};
	size_t i;
	int rc;

	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		if (e->type == CONF_GROUP)
			rc = conf_group_defaults(e->sub, conf_at(base, e->off));
		else if (e->def)
			rc = conf_set_text(e, base, e->def, e->key, &ctx);
		else
			rc = 0;
		if (rc != 0)
			return rc;
	}
	return 0;
}

void conf_group_free(const struct conf_group *g, void *base)
{
	size_t i;

	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];
		char **slot;

		switch (e->type) {
		case CONF_GROUP:
			conf_group_free(e->sub, conf_at(base, e->off));
			break;
		case CONF_STRING:
			slot = conf_at(base, e->off);
			free(*slot);
			*slot = NULL;
			break;
		case CONF_STRLIST:
			conf_list_clear(e, base);
			break;
		case CONF_ARRAY:
			conf_array_clear(e, base);
			break;
		case CONF_U32:
		case CONF_BOOL:
			break;
		}
	}
}

/* ---- the JSON walker ---- */

static int conf_load_group(const struct conf_group *g, void *base, json_t *obj,
			   const char *path, struct conf_ctx *ctx);

static int conf_load_list(const struct conf_entry *e, void *base, json_t *v, const char *path,
			  struct conf_ctx *ctx)
{
	const char *items[SIDECAR_MAX_RELAYS > 64 ? SIDECAR_MAX_RELAYS : 64];
	char got[CONF_GOT_MAX + 16], rule[256], itempath[CONF_PATH_MAX + 16];
	size_t i, n;
	json_t *item;

	if (!json_is_array(v)) {
		conf_describe_json(v, 0, got, sizeof(got));
		return conf_fail_value(ctx, e, path, got);
	}
	n = json_array_size(v);
	if (n < e->min || n > e->max || n > SR_ARRAY_LEN(items)) {
		snprintf(got, sizeof(got), "%zu items", n);
		return conf_fail_value(ctx, e, path, got);
	}
	json_array_foreach(v, i, item)
	{
		if (!json_is_string(item) || !conf_item_ok(e, json_string_value(item))) {
			conf_item_constraint(e, rule, sizeof(rule));
			conf_describe_json(item, (e->flags & CONF_SECRET) != 0, got,
					   sizeof(got));
			snprintf(itempath, sizeof(itempath), "%s[%zu]", path, i);
			return conf_fail(ctx, itempath, "%s (got %s)", rule, got);
		}
		items[i] = json_string_value(item);
	}
	if (conf_list_put(e, base, items, (unsigned)n) != 0)
		return conf_nomem(ctx);
	return 0;
}

static int conf_load_entry(const struct conf_entry *e, void *base, json_t *v, const char *path,
			   struct conf_ctx *ctx)
{
	char got[CONF_GOT_MAX + 16];
	json_int_t iv;

	conf_describe_json(v, (e->flags & CONF_SECRET) != 0, got, sizeof(got));
	switch (e->type) {
	case CONF_GROUP:
		if (!json_is_object(v))
			return conf_fail_value(ctx, e, path, got);
		if (e->flags & CONF_SECTION)
			*(int *)conf_at(base, e->aux_off) = 1;
		if (e->excl)
			conf_mark_given(ctx, e, 0);
		return conf_load_group(e->sub, conf_at(base, e->off), v, path, ctx);
	case CONF_U32:
		if (!json_is_integer(v))
			return conf_fail_value(ctx, e, path, got);
		iv = json_integer_value(v);
		if (iv < (json_int_t)e->min || iv > (json_int_t)e->max)
			return conf_fail_value(ctx, e, path, got);
		*(uint32_t *)conf_at(base, e->off) = (uint32_t)iv;
		return 0;
	case CONF_BOOL:
		if (!json_is_boolean(v))
			return conf_fail_value(ctx, e, path, got);
		*(int *)conf_at(base, e->off) = json_is_true(v);
		return 0;
	case CONF_STRING:
		if (json_is_null(v) && (e->flags & CONF_NULLABLE)) {
			conf_put_str(conf_at(base, e->off), NULL);
			return 0;
		}
		if (!json_is_string(v) || !conf_str_ok(e, json_string_value(v)))
			return conf_fail_value(ctx, e, path, got);
		if (conf_put_str(conf_at(base, e->off), json_string_value(v)) != 0)
			return conf_nomem(ctx);
		return 0;
	case CONF_STRLIST:
		return conf_load_list(e, base, v, path, ctx);
	case CONF_ARRAY:
		return conf_load_array(e, base, v, path, ctx);
	}
	return SR_EINVAL;
}

static int conf_load_group(const struct conf_group *g, void *base, json_t *obj,
			   const char *path, struct conf_ctx *ctx)
{
	char sub[CONF_PATH_MAX], keys[256];
	const char *key;
	json_t *v;
	size_t i, off;
	int rc;

	json_object_foreach(obj, key, v)
	{
		const struct conf_entry *e = conf_find(g, key);

		if (!e) {
			keys[0] = '\0';
			for (i = 0, off = 0; i < g->n && off < sizeof(keys); i++) {
				int r = snprintf(keys + off, sizeof(keys) - off, "%s%s",
						 i ? ", " : "", g->e[i].key);
				if (r > 0)
					off += (size_t)r;
			}
			return conf_fail_key(ctx, path, key,
					     "unknown key (expected one of: %s)", keys);
		}
		conf_join(sub, sizeof(sub), path, key);
		if ((rc = conf_load_entry(e, base, v, sub, ctx)) != 0)
			return rc;
	}
	return 0;
}

static int conf_check_required(const struct conf_group *g, const void *base, const char *path,
			       const char *elem, struct conf_ctx *ctx);

/* Replace the elements of e with those of the JSON array v. Each element
 * starts from the table defaults of e->sub, and its required keys are
 * checked at once, so that a message names the element where it came from. */
static int conf_load_array(const struct conf_entry *e, void *base, json_t *v, const char *path,
			   struct conf_ctx *ctx)
{
	char got[CONF_GOT_MAX + 16], itempath[CONF_PATH_MAX + 16];
	unsigned *count = conf_at(base, e->aux_off);
	size_t i, n;
	json_t *item;
	int rc;

	if (!json_is_array(v)) {
		conf_describe_json(v, 0, got, sizeof(got));
		return conf_fail_value(ctx, e, path, got);
	}
	n = json_array_size(v);
	if (n < e->min || n > e->max) {
		snprintf(got, sizeof(got), "%zu items", n);
		return conf_fail_value(ctx, e, path, got);
	}
	conf_mark_given(ctx, e, ctx->env != NULL);
	conf_array_clear(e, base);
	json_array_foreach(v, i, item)
	{
		void *elem = conf_elem(e, base, (unsigned)i);

		snprintf(itempath, sizeof(itempath), "%s[%zu]", path, i);
		memset(elem, 0, e->elem_size);
		*count = (unsigned)i + 1; /* conf_group_free reaches it from here on */
		if (conf_group_defaults(e->sub, elem) != 0)
			return conf_nomem(ctx);
		if (!json_is_object(item)) {
			conf_describe_json(item, 0, got, sizeof(got));
			return conf_fail(ctx, itempath, "must be an object (got %s)", got);
		}
		if ((rc = conf_load_group(e->sub, elem, item, itempath, ctx)) != 0 ||
		    (rc = conf_check_required(e->sub, elem, itempath, itempath, ctx)) != 0)
			return rc;
	}
	return 0;
}

/* ---- environment ---- */

void conf_env_name(const char *path, char *buf, size_t len)
{
	size_t o = 0, plen = strlen(CONF_ENV_PREFIX);

	if (len == 0)
		return;
	if (plen >= len)
		plen = len - 1;
	memcpy(buf, CONF_ENV_PREFIX, plen);
	o = plen;
	for (; *path && o + 1 < len; path++)
		buf[o++] = *path == '.' ? '_' : (char)toupper((unsigned char)*path);
	buf[o] = '\0';
}

/* Apply SPARKRELAY_* for every leaf of g; a hit inside a section marks it present. */
static int conf_env_group(const struct conf_group *g, void *base, const char *path,
			  int *present, struct conf_ctx *ctx)
{
	char sub[CONF_PATH_MAX], name[CONF_PATH_MAX + 16];
	const char *v;
	size_t i;
	int rc;

	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		conf_join(sub, sizeof(sub), path, e->key);
		if (e->type == CONF_GROUP) {
			int hit = 0;

			if (e->flags & CONF_SECTION) {
				rc = conf_env_group(e->sub, conf_at(base, e->off), sub,
						    conf_at(base, e->aux_off), ctx);
				if (rc != 0)
					return rc;
				continue;
			}
			rc = conf_env_group(e->sub, conf_at(base, e->off), sub, &hit, ctx);
			if (rc != 0)
				return rc;
			if (hit && present)
				*present = 1;
			if (hit && e->excl)
				conf_mark_given(ctx, e, 1);
			continue;
		}
		conf_env_name(sub, name, sizeof(name));
		if (!(v = getenv(name)))
			continue;
		ctx->env = name;
		rc = conf_set_text(e, base, v, sub, ctx);
		ctx->env = NULL;
		if (rc != 0)
			return rc;
		if (present)
			*present = 1;
	}
	return 0;
}

/* Is `name` (a whole variable name) the variable of some leaf of g? */
static int conf_env_known(const struct conf_group *g, const char *path, const char *name)
{
	char sub[CONF_PATH_MAX], leaf[CONF_PATH_MAX + 16];
	size_t i;

	for (i = 0; i < g->n; i++) {
		conf_join(sub, sizeof(sub), path, g->e[i].key);
		if (g->e[i].type == CONF_GROUP) {
			if (conf_env_known(g->e[i].sub, sub, name))
				return 1;
			continue;
		}
		conf_env_name(sub, leaf, sizeof(leaf));
		if (strcmp(leaf, name) == 0)
			return 1;
	}
	return 0;
}

/* A variable under a section prefix (SPARKRELAY_RELAY_...) that names no
 * setting is a typo that would otherwise be silently ignored. Other
 * SPARKRELAY_* variables (SPARKRELAY_BIN for tests...) are not ours. The
 * prefix is matched on the raw entry, so a name of any length is checked:
 * one too long to be a setting is an error like any unknown name. The name
 * is quoted escaped and cut (it is text from the environment). */
static int conf_env_check_unknown(struct conf_ctx *ctx)
{
	char prefix[CONF_PATH_MAX + 16], name[CONF_PATH_MAX + 16];
	char shown[SR_ESC_SIZE(CONF_ENV_SHOW_MAX)];
	size_t i, plen;
	char **ep;

	for (ep = environ; ep && *ep; ep++) {
		const char *eq = strchr(*ep, '=');
		size_t nlen = eq ? (size_t)(eq - *ep) : strlen(*ep);
		size_t cut = nlen < sizeof(name) ? nlen : sizeof(name) - 1;

		if (strncmp(*ep, CONF_ENV_PREFIX, strlen(CONF_ENV_PREFIX)) != 0)
			continue;
		memcpy(name, *ep, cut);
		name[cut] = '\0';
		for (i = 0; i < conf_root_group.n; i++) {
			conf_env_name(conf_root_group.e[i].key, prefix, sizeof(prefix));
			plen = strlen(prefix);
			if (nlen <= plen || strncmp(*ep, prefix, plen) != 0 ||
			    (*ep)[plen] != '_')
				continue;
			if (cut == nlen && conf_env_known(&conf_root_group, "", name))
				break;
			sr_esc_n(name, CONF_ENV_SHOW_MAX, shown, sizeof(shown));
			ctx->env = shown;
			if (nlen >= sizeof(name))
				conf_fail(ctx, NULL, "no such setting (a name of %zu bytes)",
					  nlen);
			else
				conf_fail(ctx, NULL, "no such setting");
			ctx->env = NULL;
			return SR_EINVAL;
		}
	}
	return 0;
}

/* ---- checks once everything is applied ---- */

/* Required keys of g at base. elem, when not NULL, is the array element
 * being checked: a missing key is reported at that element, and with no
 * variable to suggest (elements are set whole). */
static int conf_check_required(const struct conf_group *g, const void *base, const char *path,
			       const char *elem, struct conf_ctx *ctx)
{
	char sub[CONF_PATH_MAX], name[CONF_PATH_MAX + 16];
	size_t i;
	int rc, unset;

	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		conf_join(sub, sizeof(sub), path, e->key);
		if (e->type == CONF_GROUP) {
			if ((rc = conf_check_required(e->sub, conf_at_c(base, e->off), sub,
						      elem, ctx)) != 0)
				return rc;
			continue;
		}
		if (!(e->flags & CONF_REQUIRED))
			continue;
		if (e->type == CONF_STRLIST || e->type == CONF_ARRAY)
			unset = *(const unsigned *)conf_at_c(base, e->aux_off) == 0;
		else
			unset = *(char *const *)conf_at_c(base, e->off) == NULL;
		if (!unset)
			continue;
		if (elem)
			return conf_fail_at(ctx, sub, elem, "required, but not set");
		conf_env_name(sub, name, sizeof(name));
		return conf_fail(ctx, sub, "required, but not set (set it in the file or %s)",
				 name);
	}
	return 0;
}

/* A group with excl (relay.pool) given together with its non-empty array. */
static int conf_check_excl(const struct conf_group *g, const void *base, const char *path,
			   struct conf_ctx *ctx)
{
	char sub[CONF_PATH_MAX], arr[CONF_PATH_MAX];
	const struct conf_entry *a;
	size_t i;

	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		if (e->type != CONF_GROUP || !e->excl || !(a = conf_find(g, e->excl)) ||
		    a->type != CONF_ARRAY)
			continue;
		if (!conf_given(ctx, e) || *(const unsigned *)conf_at_c(base, a->aux_off) == 0)
			continue;
		conf_join(sub, sizeof(sub), path, e->key);
		conf_join(arr, sizeof(arr), path, a->key);
		return conf_fail(ctx, sub,
				 "%s and %s cannot both be given (%s applies only when %s is "
				 "empty: move it into %s)",
				 sub, arr, sub, arr, arr);
	}
	return 0;
}

/* Report a relay_policy_new message, "relay.routes[2].pool: no pool ...",
 * with the location of its path; when that array came from the
 * environment, name the variable instead. */
static int conf_fail_policy(const char *msg, struct conf_ctx *ctx)
{
	char path[CONF_PATH_MAX], name[CONF_PATH_MAX + 16], top[CONF_PATH_MAX];
	const char *colon = strstr(msg, ": ");
	size_t i, plen;
	int rc;

	/* relay_policy_new has only its message to tell allocation failure */
	if (strcmp(msg, "relay policy: out of memory") == 0)
		return conf_nomem(ctx);
	if (!colon || (size_t)(colon - msg) >= sizeof(path))
		return conf_fail(ctx, NULL, "%s", msg);
	memcpy(path, msg, (size_t)(colon - msg));
	path[colon - msg] = '\0';
	for (i = 0; i < conf_relay_group.n; i++) {
		const struct conf_entry *e = &conf_relay_group.e[i];

		if (e->type != CONF_ARRAY || conf_given(ctx, e) != 2)
			continue;
		conf_join(top, sizeof(top), "relay", e->key);
		plen = strlen(top);
		if (strncmp(path, top, plen) == 0 && (path[plen] == '[' || !path[plen])) {
			conf_env_name(top, name, sizeof(name));
			ctx->env = name;
			rc = conf_fail(ctx, path, "%s", colon + 2);
			ctx->env = NULL;
			return rc;
		}
	}
	return conf_fail(ctx, path, "%s", colon + 2);
}

static int conf_check_h2(const struct tun_conn_opts *t, const char *sect, struct conf_ctx *ctx)
{
	char path[64];

	if (t->ping_timeout_ms <= t->ping_interval_ms) {
		snprintf(path, sizeof(path), "%s.h2.ping_timeout_ms", sect);
		return conf_fail(ctx, path,
				 "must be greater than %s.h2.ping_interval_ms (%u) (got %u)",
				 sect, t->ping_interval_ms, t->ping_timeout_ms);
	}
	if (t->conn_window < t->stream_window) {
		snprintf(path, sizeof(path), "%s.h2.conn_window", sect);
		return conf_fail(ctx, path,
				 "must be at least %s.h2.stream_window (%u) (got %u)", sect,
				 t->stream_window, t->conn_window);
	}
	return 0;
}

static int conf_check_relay(const struct relay_opts *r, struct conf_ctx *ctx)
{
	char msg[512], q[CONF_GOT_MAX + 16];
	struct relay_policy *pol;
	int rc;

	if ((rc = conf_check_required(&conf_relay_group, r, "relay", NULL, ctx)) != 0 ||
	    (rc = conf_check_excl(&conf_relay_group, r, "relay", ctx)) != 0)
		return rc;
	if (r->pool.port_min > r->pool.port_max)
		return conf_fail(ctx, "relay.pool.port_min",
				 "must be at most relay.pool.port_max (%u) (got %u)",
				 r->pool.port_max, r->pool.port_min);
	if (r->require_client_cert && !r->client_ca_file)
		return conf_fail(
		    ctx, "relay.tls.require_client_cert",
		    "true needs relay.tls.client_ca to verify client certificates");
	if ((rc = conf_check_h2(&r->tun, "relay", ctx)) != 0)
		return rc;
	if (r->admin_listen && !r->admin_token && !conf_listen_is_loopback(r->admin_listen)) {
		conf_quote(r->admin_listen, 0, q, sizeof(q));
		return conf_fail_at(ctx, "relay.admin.token", "relay.admin.listen",
				    "required when relay.admin.listen (%s) is not a loopback "
				    "address",
				    q);
	}
	/* pools, tenants and routes refer to each other: compile them as the
	 * relay will, so that check-config catches what the relay would refuse */
	if (!(pol = relay_policy_new(&r->policy, &r->pool, msg, sizeof(msg))))
		return conf_fail_policy(msg, ctx);
	relay_policy_free(pol);
	return 0;
}

static int conf_check_tunnel(const struct sidecar_opts *s, struct conf_ctx *ctx)
{
	int rc;

	if ((rc = conf_check_required(&conf_tunnel_group, s, "tunnel", NULL, ctx)) != 0)
		return rc;
	if (!s->cert_file != !s->key_file)
		return conf_fail(
		    ctx, s->cert_file ? "tunnel.tls.cert" : "tunnel.tls.key",
		    "tunnel.tls.cert and tunnel.tls.key must be set together (%s is "
		    "not set)",
		    s->cert_file ? "tunnel.tls.key" : "tunnel.tls.cert");
	if (s->backoff_initial_ms > s->backoff_max_ms)
		return conf_fail(ctx, "tunnel.backoff_initial_ms",
				 "must be at most tunnel.backoff_max_ms (%u) (got %u)",
				 s->backoff_max_ms, s->backoff_initial_ms);
	return conf_check_h2(&s->tun, "tunnel", ctx);
}

/* ---- entry points ---- */

void conf_init(struct sr_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	conf_group_defaults(&conf_root_group, cfg);
}

void conf_free(struct sr_config *cfg)
{
	if (!cfg)
		return;
	conf_group_free(&conf_root_group, cfg);
	free(cfg->path);
	memset(cfg, 0, sizeof(*cfg));
}

void conf_relay_defaults(struct relay_opts *o)
{
	memset(o, 0, sizeof(*o));
	conf_group_defaults(&conf_relay_group, o);
}

void conf_sidecar_defaults(struct sidecar_opts *o)
{
	memset(o, 0, sizeof(*o));
	conf_group_defaults(&conf_tunnel_group, o);
}

void conf_relay_fini(struct relay_opts *o)
{
	if (!o)
		return;
	conf_group_free(&conf_relay_group, o);
	memset(o, 0, sizeof(*o));
}

void conf_sidecar_fini(struct sidecar_opts *o)
{
	if (!o)
		return;
	conf_group_free(&conf_tunnel_group, o);
	memset(o, 0, sizeof(*o));
}

/* The promise of conf.h: one line. Every site quotes file and environment
 * text through conf_quote, sr_esc or with '?' for control bytes; this is
 * the backstop for text that reaches err otherwise (a key jansson quotes in
 * a duplicate-key error, a name in a policy message). */
static void conf_err_one_line(char *err, size_t errlen)
{
	size_t i;

	if (!err || errlen == 0)
		return;
	for (i = 0; i < errlen && err[i]; i++)
		if ((unsigned char)err[i] < 0x20 || err[i] == 0x7f)
			err[i] = '?';
}

static int conf_load_text(const char *text, size_t len, const char *origin,
			  struct sr_config *cfg, char *err, size_t errlen)
{
	struct conf_ctx ctx = {.origin = origin, .err = err, .errlen = errlen};
	char got[32];
	json_error_t jerr;
	json_t *root = NULL;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	if (err && errlen)
		err[0] = '\0';
	if (len > CONF_MAX_FILE_SIZE) {
		if (err && errlen)
			snprintf(err, errlen, "%s: too big: %zu bytes, the limit is %d bytes",
				 origin, len, CONF_MAX_FILE_SIZE);
		return SR_ETOOBIG;
	}
	if (conf_group_defaults(&conf_root_group, cfg) != 0 || !(cfg->path = strdup(origin))) {
		rc = conf_nomem(&ctx);
		goto fail;
	}
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		const char *what = json_error_code(&jerr) == json_error_duplicate_key
				       ? "duplicate key"
				       : "syntax error";

		const char *near = strstr(jerr.text, "near '");
		size_t nearlen = near ? strlen(near + 6) : 0;

		if (json_error_code(&jerr) == json_error_out_of_memory) {
			rc = conf_nomem(&ctx);
		} else if (json_error_code(&jerr) == json_error_duplicate_key && nearlen > 1 &&
			   jerr.line > 0 && err && errlen) {
			/* jansson: "duplicate object key near '"k"'": keep the key only */
			snprintf(err, errlen, "%s:%d:%d: duplicate key %.*s", origin, jerr.line,
				 jerr.column, (int)(nearlen - 1), near + 6);
			rc = SR_EINVAL;
		} else {
			char rule[JSON_ERROR_TEXT_LENGTH];

			conf_json_rule(&jerr, rule, sizeof(rule));
			if (err && errlen && jerr.line > 0)
				snprintf(err, errlen, "%s:%d:%d: %s: %s", origin, jerr.line,
					 jerr.column, what, rule);
			else if (err && errlen)
				snprintf(err, errlen, "%s: %s: %s", origin, what, rule);
			rc = SR_EINVAL;
		}
		goto fail;
	}
	if (!json_is_object(root)) {
		conf_describe_json(root, 0, got, sizeof(got));
		rc = conf_fail(&ctx, NULL, "the top level must be an object (got %s)", got);
		goto fail;
	}
	ctx.text = text;
	ctx.textlen = len;
	if ((rc = conf_load_group(&conf_root_group, cfg, root, "", &ctx)) != 0)
		goto fail;
	json_decref(root);
	root = NULL;
	if ((rc = conf_env_check_unknown(&ctx)) != 0 ||
	    (rc = conf_env_group(&conf_root_group, cfg, "", NULL, &ctx)) != 0)
		goto fail;
	if (cfg->have_relay && (rc = conf_check_relay(&cfg->relay, &ctx)) != 0)
		goto fail;
	if (cfg->have_tunnel && (rc = conf_check_tunnel(&cfg->tunnel, &ctx)) != 0)
		goto fail;
	return 0;
fail:
	json_decref(root);
	conf_free(cfg);
	conf_err_one_line(err, errlen);
	return rc;
}

int conf_load_string(const char *json, const char *origin, struct sr_config *cfg, char *err,
		     size_t errlen)
{
	return conf_load_text(json, strlen(json), origin ? origin : "config", cfg, err, errlen);
}

int conf_load_file(const char *path, struct sr_config *cfg, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t n;
	FILE *f;
	int rc, e;

	memset(cfg, 0, sizeof(*cfg));
	if (!(f = fopen(path, "rb"))) {
		e = errno;
		if (err && errlen)
			snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
		return e == ENOENT ? SR_ENOTFOUND : SR_EIO;
	}
	if (fstat(fileno(f), &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			if (err && errlen)
				snprintf(err, errlen, "%s: cannot read: is a directory", path);
			rc = SR_EIO;
			goto out;
		}
		/* refuse before reading; non-regular files are bounded by the read */
		if (S_ISREG(st.st_mode) && st.st_size > CONF_MAX_FILE_SIZE) {
			if (err && errlen)
				snprintf(err, errlen,
					 "%s: too big: %lld bytes, the limit is %d bytes", path,
					 (long long)st.st_size, CONF_MAX_FILE_SIZE);
			rc = SR_ETOOBIG;
			goto out;
		}
	}
	if (!(buf = malloc(CONF_MAX_FILE_SIZE + 1))) {
		if (err && errlen)
			snprintf(err, errlen, "%s: out of memory", path);
		rc = SR_ENOMEM;
		goto out;
	}
	n = fread(buf, 1, CONF_MAX_FILE_SIZE + 1, f);
	if (ferror(f)) {
		if (err && errlen)
			snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		rc = SR_EIO;
		goto out;
	}
	if (n > CONF_MAX_FILE_SIZE) {
		if (err && errlen)
			snprintf(err, errlen, "%s: too big: over the limit of %d bytes", path,
				 CONF_MAX_FILE_SIZE);
		rc = SR_ETOOBIG;
		goto out;
	}
	rc = conf_load_text(buf, n, path, cfg, err, errlen);
out:
	free(buf);
	fclose(f);
	return rc;
}
