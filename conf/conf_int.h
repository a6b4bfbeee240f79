/* Private to conf/: the declarative tables and what the files of the loader
 * share. Where a change goes:
 *   conf_table.c   the keys: types, bounds, defaults, documentation
 *   conf_walk.c    the generic walker: JSON and text into structs by the tables
 *   conf_env.c     SPARKRELAY_* environment overrides
 *   conf_check.c   rules that span several keys, and the relay policy
 *   conf_err.c     the located, one-line error messages
 *   conf_locate.c  line and column of a JSON path in the file text
 *   conf_dump.c    the effective configuration as JSON, secrets redacted
 *   conf_docs.c    the generated reference, docs/configuration.md
 *   conf.c         the entry points of conf.h: read, parse, apply in order */
#ifndef CONF_INT_H
#define CONF_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "common/sr_text.h"

struct relay_opts;
struct sidecar_opts;

#define CONF_PATH_MAX 256 /* a dotted JSON path; longer unknown keys are cut */
#define CONF_GOT_MAX 48	  /* bytes of a bad value quoted back */
#define CONF_GOT_SIZE                                                                          \
	(SR_ESC_SIZE(CONF_GOT_MAX) + 2) /* conf_quote's output, quotes included                \
					 */
#define CONF_MSG_MAX 1024		/* one message after its location and path */
#define CONF_STR_LIMIT 4095u		/* bytes of one list item */

enum conf_type {
	CONF_STRING,  /* char *, NULL = unset */
	CONF_BOOL,    /* int, 0 or 1 */
	CONF_U32,     /* uint32_t */
	CONF_STRLIST, /* char *[max] at off, unsigned count at aux_off */
	CONF_GROUP,   /* a nested object with its own table */
	CONF_ARRAY,   /* an array of objects, each loaded with the table sub into one
			 element of a C array: elem_size bytes each, at most max, the
			 unsigned count at aux_off */
};

enum conf_flag {
	CONF_SECRET = 1u << 0,	 /* never printed: dumps and messages redact it */
	CONF_REQUIRED = 1u << 1, /* must be set once file and environment are applied */
	CONF_NULLABLE = 1u << 2, /* JSON null (or an empty env value) unsets it */
	CONF_SECTION = 1u << 3,	 /* a role section: int presence flag at aux_off */
};

/* Extra syntax a string (or each list item) must have. */
struct conf_format {
	const char *what;	     /* for messages and docs, e.g. "host:port" */
	int (*check)(const char *s); /* 0 if s is acceptable */
};

struct conf_group;

struct conf_entry {
	const char *key;
	enum conf_type type;
	unsigned flags;
	size_t off;	   /* of the field from the group's base; GROUP: base of sub;
			      ARRAY: element 0 */
	size_t aux_off;	   /* STRLIST, ARRAY: the unsigned count; CONF_SECTION: the int flag */
	size_t elem_size;  /* ARRAY: bytes per element */
	uint32_t min, max; /* U32: value; STRING: length in bytes; STRLIST, ARRAY: item count */
	const char *def;   /* default in environment syntax; NULL = unset/empty */
	const char *example;	       /* used instead of def in the generated examples */
	const struct conf_format *fmt; /* STRING or STRLIST items; may be NULL */
	const char *const *choices;    /* STRING: allowed values, NULL-terminated */
	const struct conf_group *sub;  /* GROUP; ARRAY: the table of one element */
	/* GROUP: key of a sibling ARRAY that replaces this group when not empty
	 * (relay.pool and relay.pools): giving both is an error, and dumps leave
	 * this group out while the array has elements. */
	const char *excl;
	unsigned role; /* CONF_SECTION: its CONF_ROLE_* bit (conf.h) */
	const char *doc;
};

struct conf_group {
	const struct conf_entry *e;
	size_t n;
	const char *doc;
};

/* The whole file, over struct sr_config. */
extern const struct conf_group conf_root_group;
/* The role sections, over struct relay_opts and struct sidecar_opts. */
extern const struct conf_group conf_relay_group;
extern const struct conf_group conf_tunnel_group;

#define CONF_GIVEN_MAX 8

/* Where a message comes from and goes to. */
struct conf_ctx {
	const char *origin; /* file name or "env"-like label */
	const char *text;   /* the JSON text, to locate values; NULL if none */
	size_t textlen;
	const char *env; /* while applying this variable, else NULL */
	unsigned roles;	 /* CONF_ROLE_* bits: the sections whose variables apply */
	int no_file;	 /* conf_load_env_roles: the environment alone */
	int env_applied; /* the checks after loading run: a variable set won */
	char *err;
	size_t errlen;
	/* ARRAY entries and GROUP entries with excl that the file or the
	 * environment gave (for the checks after loading); given_env[i] is set
	 * when the last value came from the environment. */
	const struct conf_entry *given[CONF_GIVEN_MAX];
	unsigned char given_env[CONF_GIVEN_MAX];
	unsigned ngiven;
};

static inline void *conf_at(void *base, size_t off)
{
	return (char *)base + off;
}

static inline const void *conf_at_c(const void *base, size_t off)
{
	return (const char *)base + off;
}

/* ---- conf_walk.c ---- */

/* Set one leaf from text in environment syntax (also used for defaults).
 * path is the dotted JSON path for messages. Returns 0 or SR_EINVAL/SR_ENOMEM
 * with a message in ctx. */
int conf_set_text(const struct conf_entry *e, void *base, const char *s, const char *path,
		  struct conf_ctx *ctx);
/* Load the JSON object obj into base through g; path is obj's JSON path. */
int conf_load_group(const struct conf_group *g, void *base, json_t *obj, const char *path,
		    struct conf_ctx *ctx);
/* Apply the table defaults of g to base (strings are strdup'ed). */
int conf_group_defaults(const struct conf_group *g, void *base);
/* Free every string of g found at base and zero those fields. */
void conf_group_free(const struct conf_group *g, void *base);
/* Every required key of g at base is set. elem, when not NULL, is the array
 * element being checked: a missing key is reported at that element, with no
 * variable to suggest (elements are set whole). */
int conf_check_required(const struct conf_group *g, const void *base, const char *path,
			const char *elem, struct conf_ctx *ctx);
/* No group with excl (relay.pool) was given next to its non-empty array. */
int conf_check_excl(const struct conf_group *g, const void *base, const char *path,
		    struct conf_ctx *ctx);
/* Remember that e (an ARRAY, or a GROUP with excl) was given, and whether
 * last by the environment; conf_given: 0 not given, 1 by the file, 2 by the
 * environment. */
void conf_mark_given(struct conf_ctx *ctx, const struct conf_entry *e, int from_env);
int conf_given(const struct conf_ctx *ctx, const struct conf_entry *e);
/* buf = path + "." + key (just key at the top). */
void conf_join(char *buf, size_t len, const char *path, const char *key);
/* The entry of g named key, or NULL. */
const struct conf_entry *conf_find(const struct conf_group *g, const char *key);

/* ---- conf_env.c ---- */

/* Fill buf with "SPARKRELAY_" + path upper-cased, dots as underscores. */
void conf_env_name(const char *path, char *buf, size_t len);
/* The variable that set the setting at path (it overrides the file), if one
 * did: its name in buf, else NULL. Only variables of the sections that
 * applied (ctx->roles). */
const char *conf_env_that_set(const struct conf_ctx *ctx, const char *path, char *buf,
			      size_t len);
/* Apply SPARKRELAY_* for every leaf of g at base (path: g's JSON path); a
 * variable inside a role section marks it present, and a hit below sets
 * *present when not NULL. The variables of a section not in ctx->roles are
 * left alone. */
int conf_env_group(const struct conf_group *g, void *base, const char *path, int *present,
		   struct conf_ctx *ctx);
/* SR_EINVAL if a variable under the prefix of log or of a section in
 * ctx->roles names no setting. */
int conf_env_check_unknown(struct conf_ctx *ctx);

/* ---- conf_check.c ---- */

/* The rules of a role section that span several keys, required keys
 * included, once file and environment are applied. */
int conf_check_relay(const struct relay_opts *r, struct conf_ctx *ctx);
int conf_check_tunnel(const struct sidecar_opts *s, struct conf_ctx *ctx);

/* ---- conf_err.c ---- */

/* Write "origin[:line:col]: path: <message>" into ctx->err ("env NAME: ..."
 * while ctx->env is set), the location found from path in ctx->text.
 * Returns SR_EINVAL. */
int conf_fail(struct conf_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, located at locpath instead (e.g. the object of a missing key). */
int conf_fail_at(struct conf_ctx *ctx, const char *path, const char *locpath, const char *fmt,
		 ...) __attribute__((format(printf, 4, 5)));
/* The same for key, a key found in the file under path (an unknown key),
 * located at the key itself. */
int conf_fail_key(struct conf_ctx *ctx, const char *path, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "path: <constraint of e> (got <got>)". */
int conf_fail_value(struct conf_ctx *ctx, const struct conf_entry *e, const char *path,
		    const char *got);
/* "origin: out of memory"; returns SR_ENOMEM. */
int conf_nomem(struct conf_ctx *ctx);
/* s for a one-line message: "value", escaped with sr_esc and cut after
 * CONF_GOT_MAX bytes ("..."), in a buffer of CONF_GOT_SIZE; a secret is
 * described ("a secret of 12 bytes"), never quoted. */
void conf_quote(const char *s, int secret, char *buf, size_t len);
/* A JSON value for a message: its text, or its type ("an object"). */
void conf_describe_json(const json_t *v, int secret, char *buf, size_t len);
/* The rule a value of e must follow ("must be ..."); env: in env syntax. */
void conf_constraint(const struct conf_entry *e, int env, char *buf, size_t len);
/* The rule one item of the list e must follow. */
void conf_item_constraint(const struct conf_entry *e, char *buf, size_t len);
/* The rule a jansson parse error names, without the source text it quotes. */
void conf_json_rule(const json_error_t *jerr, char *buf, size_t len);
/* Replace any control byte left in err by '?' (the one-line promise). */
void conf_err_one_line(char *err, size_t errlen);

/* ---- conf_dump.c ---- */

/* The JSON value of g at base, secrets shown as "<redacted>" if redact. */
json_t *conf_group_to_json(const struct conf_group *g, const void *base, int redact);
/* Print root (stolen; NULL means out of memory) indented, and a newline.
 * Returns 0, SR_ENOMEM or SR_EIO. */
int conf_json_print(json_t *root, FILE *out);

/* ---- conf_table.c ---- */

/* Is the host of a "host:port" listen address loopback (127.0.0.0/8, ::1,
 * or the name "localhost")? */
int conf_listen_is_loopback(const char *listen);

/* ---- conf_locate.c ---- */

/* Line and column (1-based, in characters) of the value at a path given as
 * segments (keys, or "[n]" for array elements) in validated JSON text; with
 * want_key, of the last segment's key instead. Returns 0, or -1 if absent. */
int conf_locate(const char *text, size_t len, const char *const *segs, size_t nsegs,
		int want_key, int *line, int *col);

#endif
