/* The generic table walker: loads JSON objects into structs through the
 * declarative tables of conf_table.c (types, bounds, formats, defaults),
 * sets one value from text (defaults and environment overrides use it),
 * frees what it filled, and checks the table-driven rules (required keys,
 * a group excluded by its sibling array) once everything is applied. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sr_err.h"
#include "common/sr_util.h"

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
void conf_mark_given(struct conf_ctx *ctx, const struct conf_entry *e, int from_env)
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
int conf_given(const struct conf_ctx *ctx, const struct conf_entry *e)
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
	char got[CONF_GOT_SIZE], rule[256], itempath[CONF_PATH_MAX + 16];
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

void conf_join(char *buf, size_t len, const char *path, const char *key)
{
	snprintf(buf, len, "%s%s%s", path, *path ? "." : "", key);
}

const struct conf_entry *conf_find(const struct conf_group *g, const char *key)
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

static int conf_load_list(const struct conf_entry *e, void *base, json_t *v, const char *path,
			  struct conf_ctx *ctx)
{
	const char *items[SIDECAR_MAX_RELAYS > 64 ? SIDECAR_MAX_RELAYS : 64];
	char got[CONF_GOT_SIZE], rule[256], itempath[CONF_PATH_MAX + 16];
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
	char got[CONF_GOT_SIZE];
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

/* Edits (insert, delete, replace a byte) between a and b, counted up to
 * 64 bytes of each. */
static size_t edit_distance(const char *a, const char *b)
{
	size_t na = strnlen(a, 64), nb = strnlen(b, 64), row[65];

	for (size_t j = 0; j <= nb; j++)
		row[j] = j;
	for (size_t i = 1; i <= na; i++) {
		size_t diag = row[0];

		row[0] = i;
		for (size_t j = 1; j <= nb; j++) {
			size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);

			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			diag = up;
			row[j] = best;
		}
	}
	return row[nb];
}

/* The key of g that key most likely meant (a typo: at most a third of its
 * letters off, two at least), or NULL. */
static const char *closest_key(const struct conf_group *g, const char *key)
{
	size_t n = strnlen(key, 64), best = (n / 3 > 2 ? n / 3 : 2) + 1;
	const char *pick = NULL;

	for (size_t i = 0; i < g->n; i++) {
		size_t d = edit_distance(key, g->e[i].key);

		if (d < best && d < n) { /* not all of a short key replaced */
			best = d;
			pick = g->e[i].key;
		}
	}
	return pick;
}

int conf_load_group(const struct conf_group *g, void *base, json_t *obj, const char *path,
		    struct conf_ctx *ctx)
{
	char sub[CONF_PATH_MAX], keys[900], hint[96];
	const char *key, *near;
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
			if (off >= sizeof(keys)) /* never with today's groups */
				memcpy(keys + sizeof(keys) - 4, "...", 4);
			hint[0] = '\0';
			if ((near = closest_key(g, key)) != NULL)
				snprintf(hint, sizeof(hint), "did you mean \"%s\"? ", near);
			return conf_fail_key(ctx, path, key,
					     "unknown key (%sexpected one of: %s)", hint, keys);
		}
		conf_join(sub, sizeof(sub), path, key);
		if ((rc = conf_load_entry(e, base, v, sub, ctx)) != 0)
			return rc;
	}
	return 0;
}

/* Replace the elements of e with those of the JSON array v. Each element
 * starts from the table defaults of e->sub, and its required keys are
 * checked at once, so that a message names the element where it came from. */
static int conf_load_array(const struct conf_entry *e, void *base, json_t *v, const char *path,
			   struct conf_ctx *ctx)
{
	char got[CONF_GOT_SIZE], itempath[CONF_PATH_MAX + 16];
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

/* ---- checks once everything is applied ---- */

/* Required keys of g at base. elem, when not NULL, is the array element
 * being checked: a missing key is reported at that element, and with no
 * variable to suggest (elements are set whole). */
int conf_check_required(const struct conf_group *g, const void *base, const char *path,
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
		if (ctx->no_file)
			return conf_fail(ctx, sub,
					 "required, but not set (set %s, or give "
					 "--config FILE)",
					 name);
		return conf_fail(ctx, sub, "required, but not set (set it in the file or %s)",
				 name);
	}
	return 0;
}

/* A group with excl (relay.pool) given together with its non-empty array. */
int conf_check_excl(const struct conf_group *g, const void *base, const char *path,
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
