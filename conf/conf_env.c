/* Environment overrides: SPARKRELAY_<JSON PATH> for every leaf of the tables,
 * applied over the file, and the check that a variable under a section
 * prefix names a real setting. Only the sections of the roles being loaded
 * are read: one environment often holds both roles' variables (a notebook
 * image, a shell that ran both), and each process ignores the other's. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sr_err.h"
#include "common/sr_text.h"

#define CONF_ENV_SHOW_MAX 96 /* bytes of an unknown variable name quoted back */

/* A role section whose variables this load leaves alone. */
static int conf_env_other_role(const struct conf_entry *e, const struct conf_ctx *ctx)
{
	return (e->flags & CONF_SECTION) && !(e->role & ctx->roles);
}

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

int conf_env_group(const struct conf_group *g, void *base, const char *path, int *present,
		   struct conf_ctx *ctx)
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

			if (conf_env_other_role(e, ctx))
				continue;
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
 * SPARKRELAY_* variables (SPARKRELAY_BIN for tests...) are not ours, nor
 * are those of the other role's section, whatever their name. The
 * prefix is matched on the raw entry, so a name of any length is checked:
 * one too long to be a setting is an error like any unknown name. The name
 * is quoted escaped and cut (it is text from the environment). */
int conf_env_check_unknown(struct conf_ctx *ctx)
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
			if (conf_env_other_role(&conf_root_group.e[i], ctx))
				continue;
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
