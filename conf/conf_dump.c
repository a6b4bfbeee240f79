/* The effective configuration as JSON, driven by the tables: secrets shown
 * as "<redacted>", a role section only when present, and a group left out
 * while the array that replaces it has elements. `check-config`, the admin
 * API's GET /v1/config and the reference's examples print through here. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <stdio.h>
#include <string.h>

#include "common/sr_err.h"

#define CONF_REDACTED "<redacted>"

static json_t *conf_leaf_to_json(const struct conf_entry *e, const void *base, int redact)
{
	const char *s;
	const char *const *items;
	unsigned i, n;
	json_t *arr, *v;

	switch (e->type) {
	case CONF_U32:
		return json_integer(*(const uint32_t *)conf_at_c(base, e->off));
	case CONF_BOOL:
		return json_boolean(*(const int *)conf_at_c(base, e->off));
	case CONF_STRING:
		s = *(char *const *)conf_at_c(base, e->off);
		if (!s)
			return json_null();
		return json_string(redact && (e->flags & CONF_SECRET) ? CONF_REDACTED : s);
	case CONF_STRLIST:
		items = (const char *const *)conf_at_c(base, e->off);
		n = *(const unsigned *)conf_at_c(base, e->aux_off);
		if (!(arr = json_array()))
			return NULL;
		for (i = 0; i < n; i++) {
			s = redact && (e->flags & CONF_SECRET) ? CONF_REDACTED : items[i];
			if (json_array_append_new(arr, json_string(s)) != 0) {
				json_decref(arr);
				return NULL;
			}
		}
		return arr;
	case CONF_ARRAY:
		n = *(const unsigned *)conf_at_c(base, e->aux_off);
		if (!(arr = json_array()))
			return NULL;
		for (i = 0; i < n && i < e->max; i++) {
			v = conf_group_to_json(e->sub,
					       (const char *)conf_at_c(base, e->off) +
						   (size_t)i * e->elem_size,
					       redact);
			if (json_array_append_new(arr, v) != 0) {
				json_decref(arr);
				return NULL;
			}
		}
		return arr;
	case CONF_GROUP:
		break;
	}
	return NULL;
}

/* A group with excl is left out while its array has elements (it does not
 * apply then, and loading both is an error). */
static int conf_excluded(const struct conf_group *g, const struct conf_entry *e,
			 const void *base)
{
	size_t i;

	if (!e->excl)
		return 0;
	for (i = 0; i < g->n; i++)
		if (g->e[i].type == CONF_ARRAY && strcmp(g->e[i].key, e->excl) == 0)
			return *(const unsigned *)conf_at_c(base, g->e[i].aux_off) > 0;
	return 0;
}

json_t *conf_group_to_json(const struct conf_group *g, const void *base, int redact)
{
	json_t *obj = json_object(), *v;
	size_t i;

	if (!obj)
		return NULL;
	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		if (e->type == CONF_GROUP) {
			if ((e->flags & CONF_SECTION) &&
			    !*(const int *)conf_at_c(base, e->aux_off))
				continue;
			if (conf_excluded(g, e, base))
				continue;
			v = conf_group_to_json(e->sub, conf_at_c(base, e->off), redact);
		} else {
			v = conf_leaf_to_json(e, base, redact);
		}
		if (!v || json_object_set_new(obj, e->key, v) != 0) {
			json_decref(obj);
			return NULL;
		}
	}
	return obj;
}

int conf_json_print(json_t *root, FILE *out)
{
	int rc;

	if (!root)
		return SR_ENOMEM;
	rc = json_dumpf(root, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (rc != 0 || fputc('\n', out) == EOF)
		return SR_EIO;
	return 0;
}

int conf_dump(const struct sr_config *cfg, FILE *out)
{
	return conf_json_print(conf_group_to_json(&conf_root_group, cfg, 1), out);
}
