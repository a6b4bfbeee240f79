/* The configuration file of both roles: one JSON file read with jansson,
 * checked against declarative tables (conf_table.c), then overridden from the
 * environment. The tables are the single source of truth for keys, types,
 * bounds, defaults and the generated reference (docs/configuration.md).
 *
 * Load order: table defaults, then the file, then SPARKRELAY_* variables,
 * then required-key and cross-field checks for the sections present. The
 * relay's checks include compiling relay.pools, relay.tenants and
 * relay.routes with relay_policy_compile (relay.pool is the only pool while
 * relay.pools is empty), so a bad reference is a load error.
 *
 * Every string in the filled structs is heap memory owned by the config and
 * freed by conf_free. */
#ifndef CONF_H
#define CONF_H

#include <stddef.h>
#include <stdio.h>

#include "relay/relay.h"
#include "sidecar/sidecar.h"

/* Files over this size are refused before parsing. */
#define CONF_MAX_FILE_SIZE (1024 * 1024)
/* A pipe or FIFO is read until its writer closes it, as long as the writer
 * sends something within this long of the start or of its last bytes:
 * `--config <(vault read ...)` works, a FIFO nobody writes to does not hang
 * check-config or the start. A reload runs on the relay's event loop, where
 * every tunnel waits meanwhile: it waits CONF_PIPE_WAIT_RELOAD_MS. */
#define CONF_PIPE_WAIT_MS 10000
#define CONF_PIPE_WAIT_RELOAD_MS 1000
/* Prefix of every environment override: SPARKRELAY_<JSON path, upper-cased,
 * dots as underscores>, e.g. SPARKRELAY_RELAY_POOL_PORT_MIN. */
#define CONF_ENV_PREFIX "SPARKRELAY_"

struct sr_config {
	char *path;	 /* origin, for messages */
	char *log_level; /* "error"|"warn"|"info"|"debug" */
	char *log_format; /* "text"|"json" */
	int have_relay, have_tunnel;
	struct relay_opts relay;
	struct sidecar_opts tunnel;
};

/* Defaults, then the file, then environment overrides. cfg is overwritten
 * without being freed first (pass a zeroed, conf_init'd or conf_free'd
 * struct). Returns 0, or a negative SR_E* with cfg left empty (conf_free is
 * then a no-op) and one line in err naming the origin, the location when
 * known ("file:line:col:"), the JSON path and the constraint:
 *   "relay.json:7:17: relay.pool.port_min: must be an integer 1..65535 (got 0)"
 *   "relay.json:7:12: syntax error: ..."
 *   "relay.json:4:9: relay.tls.certt: unknown key"
 *   "env SPARKRELAY_RELAY_POOL_PORT_MIN: relay.pool.port_min: must be ..."
 * Codes: SR_EINVAL (bad content), SR_ETOOBIG (over CONF_MAX_FILE_SIZE),
 * SR_ENOTFOUND (no such file), SR_EIO (unreadable), SR_ENOMEM.
 *
 * Environment: a variable applies whatever the file holds; setting a key of
 * "relay" or "tunnel" makes that section present. An empty value unsets a
 * nullable string. Lists are comma-separated; booleans take true/false/1/0.
 * The arrays of objects (relay.pools, relay.tenants, relay.routes) are set
 * whole, as JSON text (SPARKRELAY_RELAY_ROUTES='[{"name": "r"}]'); an empty
 * value empties them; their members have no variables of their own.
 * A SPARKRELAY_LOG_*, SPARKRELAY_RELAY_* or SPARKRELAY_TUNNEL_* variable that
 * names no setting is an error (it is almost certainly a typo).
 * conf_load_file reads the variables of both sections; see
 * conf_load_file_roles to read those of one role only. */
int conf_load_file(const char *path, struct sr_config *cfg, char *err, size_t errlen);
/* The same for text in memory (NUL-terminated); origin names it in messages.
 * conf_load_string("{}", "env", ...) configures from the environment only. */
int conf_load_string(const char *json, const char *origin, struct sr_config *cfg, char *err,
		     size_t errlen);

/* The role sections whose SPARKRELAY_* variables a load reads. */
enum conf_roles {
	/* those of the sections the file has; of both when it has none (what
	 * `check-config FILE` checks) */
	CONF_ROLES_OF_FILE = 0,
	CONF_ROLE_RELAY = 1 << 0,  /* SPARKRELAY_RELAY_* */
	CONF_ROLE_TUNNEL = 1 << 1, /* SPARKRELAY_TUNNEL_* */
	CONF_ROLES_ALL = CONF_ROLE_RELAY | CONF_ROLE_TUNNEL,
};

/* conf_load_file and conf_load_string for the roles given (enum conf_roles):
 * the variables of another role's section are neither applied nor checked,
 * so one environment can hold both roles' settings (`sparkrelay relay` is
 * not refused for a SPARKRELAY_TUNNEL_TOKEN meant for the sidecar). The
 * file's sections are loaded and checked whatever the roles; SPARKRELAY_LOG_*
 * always applies. */
int conf_load_file_roles(const char *path, unsigned roles, struct sr_config *cfg, char *err,
			 size_t errlen);
/* The same, a pipe's writer given pipe_wait_ms instead of CONF_PIPE_WAIT_MS. */
int conf_load_file_waiting(const char *path, unsigned roles, unsigned pipe_wait_ms,
			   struct sr_config *cfg, char *err, size_t errlen);
/* No file: the defaults and the environment's SPARKRELAY_* variables (the
 * origin of its messages is "environment"). */
int conf_load_env_roles(unsigned roles, struct sr_config *cfg, char *err, size_t errlen);
int conf_load_string_roles(const char *json, const char *origin, unsigned roles,
			   struct sr_config *cfg, char *err, size_t errlen);

/* The files the sidecar reads when it starts, read as it will read them:
 * the CA bundle (tunnel.tls.ca) holds a PEM certificate, the client
 * certificate and key (tunnel.tls.cert, .key) load and are a pair; the
 * folders of the files it writes (spark_conf, spark_json, spark_defaults,
 * status_file, state_file) exist. For
 * `sparkrelay tunnel` before it starts and for `check-config`, so a bad
 * file is one line naming the file and the key, e.g.
 *   "cannot load CA /nope/ca.pem (tunnel.tls.ca): No such file or directory"
 * Returns 0, or SR_EINVAL with that line in err. */
int conf_check_tunnel_files(const struct sidecar_opts *s, char *err, size_t errlen);

/* Zero cfg and fill both sections with the table defaults (have_* stay 0).
 * On allocation failure some default strings are left NULL. */
void conf_init(struct sr_config *cfg);
/* Free every string and zero cfg. NULL is a no-op. */
void conf_free(struct sr_config *cfg);

/* Zero o and apply the table defaults of one section (heap strings: release
 * them with the matching _fini). On allocation failure some default strings
 * are left NULL. */
void conf_relay_defaults(struct relay_opts *o);
void conf_sidecar_defaults(struct sidecar_opts *o);
/* Free the strings of a section filled by the loader or _defaults, and zero it. */
void conf_relay_fini(struct relay_opts *o);
void conf_sidecar_fini(struct sidecar_opts *o);

/* Markdown reference generated from the tables (docs/configuration.md).
 * Returns 0, SR_ENOMEM or SR_EIO. */
int conf_write_docs(FILE *out);

/* Print the effective config as JSON: "log", plus each section present, with
 * secrets (auth_token, token) shown as "<redacted>" when set. Returns 0,
 * SR_ENOMEM or SR_EIO. */
int conf_dump(const struct sr_config *cfg, FILE *out);

#endif
