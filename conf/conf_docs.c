/* The Markdown reference generated from the tables (docs/configuration.md,
 * checked against this by test_conf), with an example file for each role. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <stdio.h>
#include <string.h>

#include "common/sr_err.h"

/* Overlay the table's example values (they pass the same checks as input). */
static int conf_group_examples(const struct conf_group *g, void *base)
{
	char err[256];
	struct conf_ctx ctx = {.origin = "example", .err = err, .errlen = sizeof(err)};
	size_t i;
	int rc = 0;

	for (i = 0; i < g->n && rc == 0; i++) {
		const struct conf_entry *e = &g->e[i];

		if (e->type == CONF_GROUP)
			rc = conf_group_examples(e->sub, (char *)base + e->off);
		else if (e->example)
			rc = conf_set_text(e, base, e->example, e->key, &ctx);
	}
	return rc;
}

/* A complete file for one role: every key, defaults plus examples. */
static int conf_write_example(FILE *out, int relay)
{
	struct sr_config cfg;
	int rc;

	conf_init(&cfg);
	if (relay) {
		cfg.have_relay = 1;
		rc = conf_group_examples(&conf_relay_group, &cfg.relay);
	} else {
		cfg.have_tunnel = 1;
		rc = conf_group_examples(&conf_tunnel_group, &cfg.tunnel);
	}
	fprintf(out, "\n## Example: %s\n\n```json\n", relay ? "relay" : "tunnel");
	if (rc == 0)
		rc = conf_json_print(conf_group_to_json(&conf_root_group, &cfg, 0), out);
	fputs("```\n", out);
	conf_free(&cfg);
	return rc;
}

static void conf_md_text(FILE *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '|')
			fputc('\\', out);
		fputc(*s, out);
	}
}

static void conf_md_type(FILE *out, const struct conf_entry *e)
{
	const char *t = "";

	switch (e->type) {
	case CONF_STRING:
		t = e->flags & CONF_NULLABLE ? "string or null" : "string";
		break;
	case CONF_BOOL:
		t = "boolean";
		break;
	case CONF_U32:
		t = "integer";
		break;
	case CONF_STRLIST:
		t = "list of strings";
		break;
	case CONF_ARRAY:
		t = "list of objects";
		break;
	case CONF_GROUP:
		t = "object";
		break;
	}
	fputs(t, out);
}

static void conf_md_default(FILE *out, const struct conf_entry *e)
{
	if (e->def) {
		fputc('`', out);
		if (e->type == CONF_STRING)
			fputc('"', out);
		conf_md_text(out, e->def);
		if (e->type == CONF_STRING)
			fputc('"', out);
		fputc('`', out);
	} else if (e->flags & CONF_REQUIRED) {
		fputs("(required)", out);
	} else if (e->type == CONF_STRLIST || e->type == CONF_ARRAY) {
		fputs("`[]`", out);
	} else {
		fputs("`null`", out);
	}
}

static void conf_md_range(FILE *out, const struct conf_entry *e)
{
	int i;

	switch (e->type) {
	case CONF_U32:
		fprintf(out, "%u..%u", e->min, e->max);
		break;
	case CONF_BOOL:
		fputs("`true`, `false`", out);
		break;
	case CONF_STRING:
		if (e->choices) {
			for (i = 0; e->choices[i]; i++)
				fprintf(out, "%s`%s`", i ? ", " : "", e->choices[i]);
		} else if (e->fmt) {
			conf_md_text(out, e->fmt->what);
		} else {
			fprintf(out, "%u..%u bytes", e->min, e->max);
		}
		break;
	case CONF_STRLIST:
		fprintf(out, "%u..%u items", e->min, e->max);
		if (e->fmt) {
			fputs(", each ", out);
			conf_md_text(out, e->fmt->what);
		}
		break;
	case CONF_ARRAY:
		fprintf(out, "%u..%u items", e->min, e->max);
		break;
	case CONF_GROUP:
		break;
	}
}

/* The tables of g and its subgroups. arrayenv, inside an array element, is
 * the variable that sets the whole array (elements have none of their own). */
static void conf_md_group(FILE *out, const struct conf_group *g, const char *path,
			  const char *arrayenv)
{
	char sub[256], env[300];
	size_t i, leaves = 0;

	for (i = 0; i < g->n; i++)
		leaves += g->e[i].type != CONF_GROUP;
	if (path[0]) {
		fprintf(out, "\n### `%s`\n\n", path);
		if (g->doc)
			fprintf(out, "%s\n", g->doc);
	}
	if (leaves) {
		fputs("\n| key | type | default | range | env variable | description |\n"
		      "|---|---|---|---|---|---|\n",
		      out);
		for (i = 0; i < g->n; i++) {
			const struct conf_entry *e = &g->e[i];

			if (e->type == CONF_GROUP)
				continue;
			snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", e->key);
			conf_env_name(sub, env, sizeof(env));
			fprintf(out, "| `%s` | ", e->key);
			conf_md_type(out, e);
			fputs(" | ", out);
			conf_md_default(out, e);
			fputs(" | ", out);
			conf_md_range(out, e);
			if (arrayenv)
				fprintf(out, " | (in `%s`) | ", arrayenv);
			else
				fprintf(out, " | `%s` | ", env);
			conf_md_text(out, e->doc);
			if (e->flags & CONF_REQUIRED)
				fputs(" Required.", out);
			if (e->flags & CONF_SECRET)
				fputs(" Secret: redacted by dumps and messages.", out);
			if (e->type == CONF_ARRAY)
				fprintf(out, " Each element: `%s[]`.", sub);
			fputs(" |\n", out);
		}
	}
	for (i = 0; i < g->n; i++) {
		const struct conf_entry *e = &g->e[i];

		snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", e->key);
		if (e->type == CONF_GROUP) {
			conf_md_group(out, e->sub, sub, arrayenv);
		} else if (e->type == CONF_ARRAY) {
			conf_env_name(sub, env, sizeof(env));
			snprintf(sub + strlen(sub), sizeof(sub) - strlen(sub), "[]");
			conf_md_group(out, e->sub, sub, env);
		}
	}
}

int conf_write_docs(FILE *out)
{
	int rc;

	fputs(
	    "# Configuration reference\n"
	    "\n"
	    "<!-- Generated from conf/conf_table.c by `sparkrelay config-docs`; do not edit. "
	    "-->\n"
	    "\n"
	    "Both roles read one JSON file. It may hold the `relay` section, the `tunnel`\n"
	    "section or both, next to `log`: `sparkrelay relay` needs `relay` and\n"
	    "`sparkrelay tunnel` needs `tunnel`. Keys left out take their defaults.\n"
	    "\n"
	    "Unknown keys, duplicate keys, values of the wrong type or out of range, missing\n"
	    "required keys and inconsistent settings are errors that name the file, the line\n"
	    "and column when known, the JSON path and the rule broken, for example\n"
	    "`relay.json:7:17: relay.pool.port_min: must be an integer 1..65535 (got 0)`.\n",
	    out);
	fprintf(
	    out,
	    "Files over %d bytes are refused. The file may be a pipe, as in\n"
	    "`--config <(envsubst < relay.json.in)`: it is read until its writer closes it,\n"
	    "as long as the writer sends something within %d s of the start and of its\n"
	    "last bytes (a FIFO nobody writes to is an error, not a hang; a FIFO must\n"
	    "have its writer before the read). A reload waits %d ms only, since every\n"
	    "tunnel of the relay waits for it; a pipe read at the start is at its end\n"
	    "then anyway, so reloads want a regular file. Check a file, environment\n"
	    "included, without starting anything:\n"
	    "\n"
	    "```sh\n"
	    "sparkrelay check-config FILE\n"
	    "```\n",
	    CONF_MAX_FILE_SIZE, CONF_PIPE_WAIT_MS / 1000, CONF_PIPE_WAIT_RELOAD_MS);
	fputs("\n"
	      "Rules that span several keys: `relay.pool.port_min` <= `relay.pool.port_max`;\n"
	      "`relay.tls.require_client_cert` needs `relay.tls.client_ca`;\n"
	      "`relay.admin.token` is required when `relay.admin.listen` is not a loopback\n"
	      "address; `relay.pool` and a non-empty `relay.pools` are not given together;\n"
	      "pools, tenants and routes must agree with each other (see below);\n"
	      "`tunnel.tls.cert` and `tunnel.tls.key` are set together or not at all;\n"
	      "`tunnel.backoff_initial_ms` <= `tunnel.backoff_max_ms`; in each `h2` group,\n"
	      "`ping_timeout_ms` > `ping_interval_ms` and `conn_window` >= `stream_window`.\n"
	      "\n"
	      "## Environment overrides\n"
	      "\n"
	      "Every setting can be overridden by an environment variable named\n"
	      "`" CONF_ENV_PREFIX "` plus its JSON path upper-cased, dots as underscores:\n"
	      "`relay.pool.port_min` is `" CONF_ENV_PREFIX
	      "RELAY_POOL_PORT_MIN`. The environment\n"
	      "wins over the file.\n"
	      "\n"
	      "- Lists are comma-separated: `" CONF_ENV_PREFIX
	      "TUNNEL_RELAYS=a.example:8443,b.example:8443`.\n"
	      "- Booleans take `true`, `false`, `1` or `0`.\n"
	      "- An empty value unsets a setting that may be null.\n"
	      "- The lists of objects `relay.pools`, `relay.tenants` and `relay.routes` are\n"
	      "  set whole, as JSON: `" CONF_ENV_PREFIX
	      "RELAY_ROUTES='[{\"name\": \"all\", \"pool\": \"cpu\"}]'`\n"
	      "  replaces the file's routes and an empty value empties the list. Their\n"
	      "  members have no variables of their own.\n"
	      "- Setting a variable of the `relay` or `tunnel` section makes that section\n"
	      "  present, so a role can be configured from the environment alone.\n"
	      "- Each role reads the variables of its own section and of `log` only:\n"
	      "  `sparkrelay relay` ignores `" CONF_ENV_PREFIX
	      "TUNNEL_*` and `sparkrelay tunnel` ignores\n"
	      "  `" CONF_ENV_PREFIX
	      "RELAY_*`, so one environment can hold the settings of both.\n"
	      "  `sparkrelay check-config FILE` reads those of the sections FILE has (of\n"
	      "  both when it has none).\n"
	      "- A bad value is an error naming the variable, and so is a variable\n"
	      "  under `" CONF_ENV_PREFIX "LOG_`, `" CONF_ENV_PREFIX
	      "RELAY_` or `" CONF_ENV_PREFIX "TUNNEL_`\n"
	      "  (of a section read) that names no setting (a typo would otherwise go\n"
	      "  unnoticed).\n"
	      "\n"
	      "## Routing: pools, tenants and routes\n"
	      "\n"
	      "When a sidecar registers, the relay decides three things, in this order:\n"
	      "\n"
	      "1. **Tenant**: the first entry of `relay.tenants` that fits the sidecar.\n"
	      "   A tenant fits when any one of its `match` entries fits: a `cn` pattern\n"
	      "   against the subject CN of the verified client certificate, a `san`\n"
	      "   pattern against any of its DNS or URI subject alternative names, or a\n"
	      "   `token_sha256` against the SHA-256 of the bearer token the sidecar\n"
	      "   presents (`tunnel.token`). Patterns are case-sensitive and `*` matches\n"
	      "   any run of characters (there is no other wildcard); a sidecar without\n"
	      "   a certificate or a token fits no pattern, not even `*`. A sidecar that\n"
	      "   fits no tenant is refused. With no tenants at all, every sidecar is the\n"
	      "   tenant `default`. `relay.auth_token`, when set, is checked in every case.\n"
	      "2. **Route**: the first entry of `relay.routes` whose `tenant` (a name, or\n"
	      "   `*`), `app` (a pattern for the app name the sidecar registers; null: any\n"
	      "   app) and `sidecar_cidrs` (where the sidecar connects from; empty:\n"
	      "   anywhere) all fit. A registration that fits no route is refused. With\n"
	      "   no routes at all, every tenant gets the first pool and any executor may\n"
	      "   connect.\n"
	      "3. **Pool and executors**: the route's `pool` gives the lease its ports and\n"
	      "   the host executors are told, and its `executor_cidrs` the only networks\n"
	      "   executors may connect from to those ports (empty: anywhere); other\n"
	      "   executors are refused and counted. The tenant's `limits` apply on top.\n"
	      "\n"
	      "`relay.pools` names the pools; while it is empty, the single `relay.pool`\n"
	      "group is the only pool, named `default`. Pools on the same bind address must\n"
	      "not share ports (`0.0.0.0` covers every IPv4 address, `::` every address).\n"
	      "\n"
	      "The three lists are checked together when the file is loaded: duplicate\n"
	      "names, a route naming an unknown tenant or pool, a bad CIDR or a token hash\n"
	      "that is not 64 hex digits are errors that name the entry, for example\n"
	      "`relay.json:14:7: relay.routes[2].pool: no pool \"gpu\"`.\n"
	      "\n"
	      "CIDRs are written `10.0.0.0/8`, `fd00::/8`, or as one address (`/32`,\n"
	      "`/128`). Host bits past the prefix are ignored (`10.1.2.3/8` is\n"
	      "`10.0.0.0/8`). An IPv4 peer seen as IPv4-mapped IPv6 (`::ffff:10.1.2.3`)\n"
	      "matches IPv4 CIDRs; `::/0` matches IPv6 only, so \"anywhere\" is an empty list\n"
	      "(or `0.0.0.0/0` plus `::/0`).\n"
	      "\n"
	      "`sparkrelay ctl route explain` shows which tenant, route and pool a\n"
	      "registration would get from the running relay, and why each earlier entry\n"
	      "did not fit.\n"
	      "\n"
	      "## Settings\n",
	      out);
	conf_md_group(out, &conf_root_group, "", NULL);
	if ((rc = conf_write_example(out, 1)) != 0 || (rc = conf_write_example(out, 0)) != 0)
		return rc;
	return ferror(out) ? SR_EIO : 0;
}
