/* Private to conf/: the declarative tables and the walker's shared helpers. */
#ifndef CONF_INT_H
#define CONF_INT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

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
	char *err;
	size_t errlen;
	/* ARRAY entries and GROUP entries with excl that the file or the
	 * environment gave (for the checks after loading); given_env[i] is set
	 * when the last value came from the environment. */
	const struct conf_entry *given[CONF_GIVEN_MAX];
	unsigned char given_env[CONF_GIVEN_MAX];
	unsigned ngiven;
};

/* Set one leaf from text in environment syntax (also used for defaults).
 * path is the dotted JSON path for messages. Returns 0 or SR_EINVAL/SR_ENOMEM
 * with a message in ctx. */
int conf_set_text(const struct conf_entry *e, void *base, const char *s, const char *path,
		  struct conf_ctx *ctx);
/* Apply the table defaults of g to base (strings are strdup'ed). */
int conf_group_defaults(const struct conf_group *g, void *base);
/* Free every string of g found at base and zero those fields. */
void conf_group_free(const struct conf_group *g, void *base);
/* The JSON value of g at base, secrets shown as "<redacted>" if redact. */
json_t *conf_group_to_json(const struct conf_group *g, const void *base, int redact);

/* Is the host of a "host:port" listen address loopback (127.0.0.0/8, ::1,
 * or the name "localhost")? */
int conf_listen_is_loopback(const char *listen);

/* Fill buf with "SPARKRELAY_" + path upper-cased, dots as underscores. */
void conf_env_name(const char *path, char *buf, size_t len);

/* Line and column (1-based, in characters) of the value at a path given as
 * segments (keys, or "[n]" for array elements) in validated JSON text; with
 * want_key, of the last segment's key instead. Returns 0, or -1 if absent. */
int conf_locate(const char *text, size_t len, const char *const *segs, size_t nsegs,
		int want_key, int *line, int *col);

#endif
