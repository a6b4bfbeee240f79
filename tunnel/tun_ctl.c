/* Control-message codec: u32 big-endian length | one JSON object.
 *
 * This is the one place where control values enter either end. Every value a
 * peer sends is checked for type, bounded by the size of the struct field it
 * lands in, and held to its contract (tun_ctl.h): an over-long or malformed
 * value is an error, never truncated or cleaned, so a lease id or token can
 * never be silently shortened into another one, and a host or lease id can
 * never carry a line break into a file or log. The encoder refuses exactly
 * what the parser would refuse, so whatever we send, our own parser accepts. */
#include "tunnel/tun_ctl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "common/sr_err.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#define CTL_HDR_LEN 4
/* Peer-chosen text (object keys, role and type names) goes into error strings
 * that end up in logs: at most this many bytes of it, masked (sr_mask_n) so
 * that a peer cannot forge log lines. */
#define CTL_SHOW_MAX 32

static const char *const ctl_role_names[TUN_PORT_MAX] = {
    [TUN_PORT_DRIVER] = "driver",
    [TUN_PORT_BLOCKMANAGER] = "blockManager",
    [TUN_PORT_UI] = "ui",
};

/* One entry a line; clang-format would pack them into columns. */
/* clang-format off */
static const char *const ctl_type_names[] = {
	[TUN_CTL_REGISTER] = "register",
	[TUN_CTL_LEASE] = "lease",
	[TUN_CTL_ERROR] = "error",
	[TUN_CTL_RELEASE] = "release",
	[TUN_CTL_RELEASED] = "released",
	[TUN_CTL_DRAIN] = "drain",
};
/* clang-format on */

const char *tun_port_role_name(enum tun_port_role role)
{
	if ((unsigned)role >= TUN_PORT_MAX)
		return NULL;
	return ctl_role_names[role];
}

int tun_port_role_from_name(const char *name)
{
	if (name == NULL)
		return -1;
	for (int r = 0; r < TUN_PORT_MAX; r++)
		if (strcmp(name, ctl_role_names[r]) == 0)
			return r;
	return -1;
}

const char *tun_ctl_type_name(enum tun_ctl_type type)
{
	if ((unsigned)type >= SR_ARRAY_LEN(ctl_type_names) || ctl_type_names[type] == NULL)
		return NULL;
	return ctl_type_names[type];
}

/* ---- value contracts (tun_ctl.h) ----------------------------------------- */

int tun_ctl_valid_lease_id(const char *s)
{
	const size_t plen = sizeof(TUN_CTL_LEASE_PREFIX) - 1;

	return s != NULL && strncmp(s, TUN_CTL_LEASE_PREFIX, plen) == 0 &&
	       sr_valid_chars(s + plen, TUN_CTL_LEASE_MAX - 1 - plen, TUN_CTL_LEASE_EXTRA);
}

int tun_ctl_valid_resume(const char *s)
{
	return sr_valid_chars(s, TUN_CTL_RESUME_MAX - 1, TUN_CTL_RESUME_EXTRA);
}

const char *tun_ctl_join_token(const char *resume)
{
	const size_t plen = sizeof(TUN_CTL_JOIN_PREFIX) - 1;

	if (resume == NULL || strncmp(resume, TUN_CTL_JOIN_PREFIX, plen) != 0 ||
	    !tun_ctl_valid_resume(resume + plen))
		return NULL;
	return resume + plen;
}

int tun_ctl_join_proof(const char *token, char *out, size_t len)
{
	int n;

	if (token == NULL || !tun_ctl_valid_resume(token))
		return SR_EINVAL;
	n = snprintf(out, len, "%s%s", TUN_CTL_JOIN_PREFIX, token);
	if (n < 0 || (size_t)n >= len) {
		if (len)
			out[0] = '\0';
		return SR_EINVAL;
	}
	return 0;
}

int tun_ctl_valid_code(const char *s)
{
	size_t n;

	if (s == NULL || (n = strlen(s)) == 0 || n >= TUN_CTL_CODE_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '_'))
			return 0;
	return 1;
}

int tun_ctl_valid_app(const char *s)
{
	size_t n;

	/* C0, DEL and C1: C1 too, since a terminal may act on U+009B (CSI). */
	return s != NULL && (n = strlen(s)) != 0 && n < TUN_CTL_APP_MAX && !sr_text_problem(s);
}

/* The contract check of a string field the parser has read: 0, or SR_EPROTO
 * with a reason that names the field and the rule, never the value. */
static int ctl_check_field(const char *key, int ok, const char *rule, char *err, size_t errlen)
{
	if (ok)
		return 0;
	sr_seterr(err, errlen, "field \"%s\": %s", key, rule);
	return SR_EPROTO;
}

#define RULE_LEASE "not a lease id (\"L-\" then 1..45 letters, digits or '-')"
#define RULE_HOST "not a host name or IP address"
#define RULE_RESUME "not a resume token (letters, digits, '_' or '-')"
#define RULE_CODE "not an error code (a-z, 0-9 or '_')"
#define RULE_APP "has control characters or is not UTF-8"
#define RULE_JOIN "a join's resume is \"" TUN_CTL_JOIN_PREFIX "\" then a resume token"

static int ctl_type_from_name(const char *name)
{
	for (size_t t = 0; t < SR_ARRAY_LEN(ctl_type_names); t++)
		if (ctl_type_names[t] != NULL && strcmp(name, ctl_type_names[t]) == 0)
			return (int)t;
	return -1;
}

/* Copy string member `key` of obj into dst[dstsize]. Returns 0, or SR_EPROTO
 * when it is missing (and required), not a string, over-long, or empty when
 * nonempty is set. A missing optional member leaves dst as it was. */
static int ctl_get_str(json_t *obj, const char *key, char *dst, size_t dstsize, int required,
		       int nonempty, char *err, size_t errlen)
{
	json_t *v = json_object_get(obj, key);
	size_t n;

	if (v == NULL) {
		if (!required)
			return 0;
		sr_seterr(err, errlen, "field \"%s\": missing", key);
		return SR_EPROTO;
	}
	if (!json_is_string(v)) {
		sr_seterr(err, errlen, "field \"%s\": must be a string", key);
		return SR_EPROTO;
	}
	/* JSON_ALLOW_NUL is not passed to the loader, so no embedded NUL. */
	n = json_string_length(v);
	if (n >= dstsize) {
		sr_seterr(err, errlen, "field \"%s\": too long (%zu bytes, max %zu)", key, n,
			   dstsize - 1);
		return SR_EPROTO;
	}
	if (nonempty && n == 0) {
		sr_seterr(err, errlen, "field \"%s\": must not be empty", key);
		return SR_EPROTO;
	}
	memcpy(dst, json_string_value(v), n);
	dst[n] = '\0';
	return 0;
}

static int ctl_get_roles(json_t *obj, unsigned *roles, char *err, size_t errlen)
{
	json_t *arr = json_object_get(obj, "roles");
	char pbuf[SR_ESC_SIZE(CTL_SHOW_MAX)];
	size_t i;
	json_t *v;

	if (arr == NULL) {
		sr_seterr(err, errlen, "field \"roles\": missing");
		return SR_EPROTO;
	}
	if (!json_is_array(arr)) {
		sr_seterr(err, errlen, "field \"roles\": must be an array of role names");
		return SR_EPROTO;
	}
	if (json_array_size(arr) == 0) {
		sr_seterr(err, errlen, "field \"roles\": must list at least one role");
		return SR_EPROTO;
	}
	*roles = 0;
	json_array_foreach(arr, i, v)
	{
		int r;

		if (!json_is_string(v)) {
			sr_seterr(err, errlen, "field \"roles[%zu]\": must be a string", i);
			return SR_EPROTO;
		}
		r = tun_port_role_from_name(json_string_value(v));
		if (r < 0) {
			sr_mask_n(json_string_value(v), CTL_SHOW_MAX, pbuf, sizeof(pbuf));
			sr_seterr(err, errlen, "field \"roles[%zu]\": unknown role \"%s\"", i,
				  pbuf);
			return SR_EPROTO;
		}
		if (*roles & TUN_ROLE_BIT(r)) {
			sr_seterr(err, errlen, "field \"roles[%zu]\": duplicate role \"%s\"", i,
				  ctl_role_names[r]);
			return SR_EPROTO;
		}
		*roles |= TUN_ROLE_BIT(r);
	}
	return 0;
}

/* lease.ports: {"<role>": 1..65535, ...}, at least one; the granted roles
 * are the keys present. */
static int ctl_get_ports(json_t *obj, struct tun_ctl_msg *msg, char *err, size_t errlen)
{
	json_t *ports = json_object_get(obj, "ports");
	char pbuf[SR_ESC_SIZE(CTL_SHOW_MAX)];
	const char *key;
	json_t *v;

	if (ports == NULL) {
		sr_seterr(err, errlen, "field \"ports\": missing");
		return SR_EPROTO;
	}
	if (!json_is_object(ports)) {
		sr_seterr(err, errlen, "field \"ports\": must be an object of role: port");
		return SR_EPROTO;
	}
	if (json_object_size(ports) == 0) {
		sr_seterr(err, errlen, "field \"ports\": must grant at least one port");
		return SR_EPROTO;
	}
	json_object_foreach(ports, key, v)
	{
		int r = tun_port_role_from_name(key);
		json_int_t p;

		if (r < 0) {
			sr_seterr(err, errlen, "field \"ports.%s\": unknown role",
				  sr_mask_n(key, CTL_SHOW_MAX, pbuf, sizeof(pbuf)));
			return SR_EPROTO;
		}
		p = json_is_integer(v) ? json_integer_value(v) : 0;
		if (p < 1 || p > 65535) {
			sr_seterr(err, errlen,
				   "field \"ports.%s\": must be an integer 1..65535", key);
			return SR_EPROTO;
		}
		msg->ports[r] = (uint16_t)p;
		msg->roles |= TUN_ROLE_BIT(r);
	}
	for (int a = 0; a < TUN_PORT_MAX; a++)
		for (int b = a + 1; b < TUN_PORT_MAX; b++)
			if (msg->ports[a] && msg->ports[a] == msg->ports[b]) {
				sr_seterr(err, errlen,
					  "field \"ports\": \"%s\" and \"%s\" share port %u",
					  ctl_role_names[a], ctl_role_names[b], msg->ports[a]);
				return SR_EPROTO;
			}
	return 0;
}

static int ctl_get_u32(json_t *obj, const char *key, uint32_t max, uint32_t *out, char *err,
		       size_t errlen)
{
	json_t *v = json_object_get(obj, key);
	json_int_t n;

	if (v == NULL) {
		sr_seterr(err, errlen, "field \"%s\": missing", key);
		return SR_EPROTO;
	}
	n = json_is_integer(v) ? json_integer_value(v) : -1;
	if (n < 0 || (unsigned long long)n > max) {
		sr_seterr(err, errlen, "field \"%s\": must be an integer 0..%lu", key,
			   (unsigned long)max);
		return SR_EPROTO;
	}
	*out = (uint32_t)n;
	return 0;
}

static int ctl_parse_obj(json_t *root, struct tun_ctl_msg *msg, char *err, size_t errlen)
{
	json_t *v = json_object_get(root, "v");
	char pbuf[SR_ESC_SIZE(CTL_SHOW_MAX)];
	int type, rc;

	if (v == NULL) {
		sr_seterr(err, errlen, "field \"v\": missing");
		return SR_EPROTO;
	}
	if (!json_is_integer(v)) {
		sr_seterr(err, errlen, "field \"v\": must be an integer");
		return SR_EPROTO;
	}
	/* Checked before "type": another version may define other types. */
	if (json_integer_value(v) != 1 && json_integer_value(v) != TUN_CTL_VERSION) {
		sr_seterr(err, errlen, "field \"v\": unsupported version %lld (this end speaks "
				       "1 and %d)",
			   (long long)json_integer_value(v), TUN_CTL_VERSION);
		return SR_EVERSION;
	}
	msg->v = (int)json_integer_value(v);
	v = json_object_get(root, "type");
	if (v == NULL) {
		sr_seterr(err, errlen, "field \"type\": missing");
		return SR_EPROTO;
	}
	if (!json_is_string(v)) {
		sr_seterr(err, errlen, "field \"type\": must be a string");
		return SR_EPROTO;
	}
	type = ctl_type_from_name(json_string_value(v));
	if (type < 0) {
		sr_seterr(err, errlen, "field \"type\": unknown message type \"%s\"",
			  sr_mask_n(json_string_value(v), CTL_SHOW_MAX, pbuf, sizeof(pbuf)));
		return SR_EPROTO;
	}
	msg->type = (enum tun_ctl_type)type;

	switch (msg->type) {
	case TUN_CTL_REGISTER:
		if ((rc = ctl_get_str(root, "app", msg->app, sizeof(msg->app), 1, 1, err,
				      errlen)) < 0 ||
		    (rc = ctl_check_field("app", tun_ctl_valid_app(msg->app), RULE_APP, err,
					  errlen)) < 0 ||
		    (rc = ctl_get_roles(root, &msg->roles, err, errlen)) < 0 ||
		    (rc = ctl_get_str(root, "token", msg->token, sizeof(msg->token), 0, 0, err,
				      errlen)) < 0 ||
		    (rc = ctl_get_str(root, "resume", msg->resume, sizeof(msg->resume), 0, 0,
				      err, errlen)) < 0 ||
		    (rc = ctl_check_field("resume",
					  !msg->resume[0] || tun_ctl_valid_resume(msg->resume),
					  RULE_RESUME, err, errlen)) < 0 ||
		    (rc = ctl_get_str(root, "join", msg->join, sizeof(msg->join), 0, 0, err,
				      errlen)) < 0 ||
		    (json_object_get(root, "replaces") &&
		     (rc = ctl_get_u32(root, "replaces", UINT32_MAX, &msg->replaces, err,
				       errlen)) < 0) ||
		    (msg->join[0] &&
		     ((rc = ctl_check_field("join", tun_ctl_valid_lease_id(msg->join), RULE_LEASE,
					    err, errlen)) < 0 ||
		      (rc = ctl_check_field("resume", tun_ctl_join_token(msg->resume) != NULL,
					    RULE_JOIN, err, errlen)) < 0)) ||
		    /* a resume's lease id (newer sidecars): a relay whose copy
		     * of a fleet's lease table lacks the token asks etcd for it */
		    (rc = ctl_get_str(root, "lease", msg->lease, sizeof(msg->lease), 0, 0, err,
				      errlen)) < 0 ||
		    (msg->lease[0] &&
		     (rc = ctl_check_field("lease", tun_ctl_valid_lease_id(msg->lease), RULE_LEASE,
					   err, errlen)) < 0))
			return rc;
		if (!msg->resume[0] || msg->join[0])
			msg->lease[0] = '\0'; /* it names a resume's lease only */
		break;
	case TUN_CTL_LEASE:
		if ((rc = ctl_get_str(root, "lease", msg->lease, sizeof(msg->lease), 1, 1, err,
				      errlen)) < 0 ||
		    (rc = ctl_check_field("lease", tun_ctl_valid_lease_id(msg->lease),
					  RULE_LEASE, err, errlen)) < 0 ||
		    (rc = ctl_get_str(root, "host", msg->host, sizeof(msg->host), 1, 1, err,
				      errlen)) < 0 ||
		    (rc = ctl_check_field("host", sr_valid_host(msg->host), RULE_HOST, err,
					  errlen)) < 0 ||
		    (rc = ctl_get_ports(root, msg, err, errlen)) < 0 ||
		    (rc = ctl_get_u32(root, "ttl", TUN_CTL_TTL_MAX, &msg->ttl_s, err,
				      errlen)) < 0 ||
		    (json_object_get(root, "streams") &&
		     (rc = ctl_get_u32(root, "streams", TUN_CTL_STREAMS_MAX, &msg->streams, err,
				       errlen)) < 0) ||
		    (json_object_get(root, "tunnel") &&
		     (rc = ctl_get_u32(root, "tunnel", UINT32_MAX, &msg->tunnel, err, errlen)) <
			 0) ||
		    (rc = ctl_get_str(root, "resume", msg->resume, sizeof(msg->resume), 1, 0,
				      err, errlen)) < 0 ||
		    (rc = ctl_check_field("resume",
					  !msg->resume[0] || tun_ctl_valid_resume(msg->resume),
					  RULE_RESUME, err, errlen)) < 0)
			return rc;
		break;
	case TUN_CTL_ERROR:
		if ((rc = ctl_get_str(root, "code", msg->code, sizeof(msg->code), 1, 1, err,
				      errlen)) < 0 ||
		    (rc = ctl_check_field("code", tun_ctl_valid_code(msg->code), RULE_CODE, err,
					  errlen)) < 0 ||
		    (rc = ctl_get_str(root, "message", msg->message, sizeof(msg->message), 0, 0,
				      err, errlen)) < 0)
			return rc;
		break;
	case TUN_CTL_RELEASE:
	case TUN_CTL_RELEASED:
	case TUN_CTL_DRAIN:
		break;
	}
	return 0;
}

int tun_ctl_parse(const void *body, size_t len, struct tun_ctl_msg *msg, char *err,
		  size_t errlen)
{
	json_error_t jerr;
	char near[SR_ESC_SIZE(40)];
	json_t *root;
	int rc;

	memset(msg, 0, sizeof(*msg));
	/* Without JSON_DECODE_ANY only an object or array is accepted at the top
	 * level, and trailing bytes after it are an error (EOF check on). */
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		/* jansson quotes the peer's bytes near the error: masked. */
		sr_seterr(err, errlen, "malformed JSON at byte %d: %s", jerr.position,
			   sr_mask_n(jerr.text, 40, near, sizeof(near)));
		return SR_EPROTO;
	}
	if (!json_is_object(root)) {
		sr_seterr(err, errlen, "message must be a JSON object");
		rc = SR_EPROTO;
	} else {
		rc = ctl_parse_obj(root, msg, err, errlen);
	}
	json_decref(root);
	if (rc < 0)
		memset(msg, 0, sizeof(*msg));
	return rc;
}

/* The string field must be NUL-terminated inside its array; nonempty as the
 * parser demands. Returns 0 or SR_EINVAL. */
static int ctl_check_str(const char *s, size_t size, int nonempty)
{
	size_t n = strnlen(s, size);

	if (n == size || (nonempty && n == 0))
		return SR_EINVAL;
	return 0;
}

/* Returns 0, SR_EINVAL (not UTF-8, which jansson refuses), or SR_ENOMEM. */
static int ctl_set_str(json_t *obj, const char *key, const char *val)
{
	json_t *s = json_string(val);

	if (s == NULL) {
		/* json_string fails both on bad UTF-8 and on allocation; the
		 * unchecked variant fails only on allocation. */
		s = json_string_nocheck(val);
		if (s == NULL)
			return SR_ENOMEM;
		json_decref(s);
		return SR_EINVAL;
	}
	return json_object_set_new(obj, key, s) == 0 ? 0 : SR_ENOMEM;
}

static int ctl_set_int(json_t *obj, const char *key, json_int_t val)
{
	json_t *n = json_integer(val);

	if (n == NULL)
		return SR_ENOMEM;
	return json_object_set_new(obj, key, n) == 0 ? 0 : SR_ENOMEM;
}

static int ctl_build_register(const struct tun_ctl_msg *msg, json_t *root)
{
	json_t *roles;
	int rc;

	if (ctl_check_str(msg->app, sizeof(msg->app), 1) < 0 ||
	    ctl_check_str(msg->token, sizeof(msg->token), 0) < 0 ||
	    ctl_check_str(msg->resume, sizeof(msg->resume), 0) < 0 || msg->roles == 0 ||
	    (msg->roles & ~((1u << TUN_PORT_MAX) - 1)) != 0 || !tun_ctl_valid_app(msg->app) ||
	    (msg->resume[0] && !tun_ctl_valid_resume(msg->resume)) ||
	    ctl_check_str(msg->join, sizeof(msg->join), 0) < 0 ||
	    (msg->join[0] &&
	     (!tun_ctl_valid_lease_id(msg->join) || !tun_ctl_join_token(msg->resume))) ||
	    ctl_check_str(msg->lease, sizeof(msg->lease), 0) < 0 ||
	    (msg->lease[0] && msg->resume[0] && !msg->join[0] &&
	     !tun_ctl_valid_lease_id(msg->lease)))
		return SR_EINVAL;
	if ((rc = ctl_set_str(root, "app", msg->app)) < 0)
		return rc;
	roles = json_array();
	if (roles == NULL || json_object_set_new(root, "roles", roles) < 0)
		return SR_ENOMEM;
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		if (!(msg->roles & TUN_ROLE_BIT(r)))
			continue;
		if (json_array_append_new(roles, json_string(ctl_role_names[r])) < 0)
			return SR_ENOMEM;
	}
	if (msg->token[0] != '\0' && (rc = ctl_set_str(root, "token", msg->token)) < 0)
		return rc;
	if (msg->resume[0] != '\0' && (rc = ctl_set_str(root, "resume", msg->resume)) < 0)
		return rc;
	if (msg->join[0] != '\0' && (rc = ctl_set_str(root, "join", msg->join)) < 0)
		return rc;
	if (msg->lease[0] != '\0' && msg->resume[0] != '\0' && msg->join[0] == '\0' &&
	    (rc = ctl_set_str(root, "lease", msg->lease)) < 0)
		return rc;
	if (msg->replaces && (rc = ctl_set_int(root, "replaces", msg->replaces)) < 0)
		return rc;
	return 0;
}

static int ctl_build_lease(const struct tun_ctl_msg *msg, json_t *root)
{
	json_t *ports;
	int rc, n = 0;

	if (ctl_check_str(msg->lease, sizeof(msg->lease), 1) < 0 ||
	    ctl_check_str(msg->host, sizeof(msg->host), 1) < 0 ||
	    ctl_check_str(msg->resume, sizeof(msg->resume), 0) < 0 ||
	    !tun_ctl_valid_lease_id(msg->lease) || !sr_valid_host(msg->host) ||
	    (msg->resume[0] && !tun_ctl_valid_resume(msg->resume)) ||
	    msg->ttl_s > TUN_CTL_TTL_MAX || msg->streams > TUN_CTL_STREAMS_MAX)
		return SR_EINVAL;
	for (int a = 0; a < TUN_PORT_MAX; a++)
		for (int b = a + 1; b < TUN_PORT_MAX; b++)
			if (msg->ports[a] && msg->ports[a] == msg->ports[b])
				return SR_EINVAL;
	ports = json_object();
	if (ports == NULL || json_object_set_new(root, "ports", ports) < 0)
		return SR_ENOMEM;
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		if (msg->ports[r] == 0)
			continue;
		if ((rc = ctl_set_int(ports, ctl_role_names[r], msg->ports[r])) < 0)
			return rc;
		n++;
	}
	if (n == 0)
		return SR_EINVAL;
	if ((rc = ctl_set_str(root, "lease", msg->lease)) < 0 ||
	    (rc = ctl_set_str(root, "host", msg->host)) < 0 ||
	    (rc = ctl_set_int(root, "ttl", msg->ttl_s)) < 0 ||
	    (rc = ctl_set_str(root, "resume", msg->resume)) < 0 ||
	    (msg->streams && (rc = ctl_set_int(root, "streams", msg->streams)) < 0) ||
	    (msg->tunnel && (rc = ctl_set_int(root, "tunnel", msg->tunnel)) < 0))
		return rc;
	return 0;
}

static int ctl_build_error(const struct tun_ctl_msg *msg, json_t *root)
{
	int rc;

	if (ctl_check_str(msg->code, sizeof(msg->code), 1) < 0 ||
	    ctl_check_str(msg->message, sizeof(msg->message), 0) < 0 ||
	    !tun_ctl_valid_code(msg->code))
		return SR_EINVAL;
	if ((rc = ctl_set_str(root, "code", msg->code)) < 0)
		return rc;
	if (msg->message[0] != '\0' && (rc = ctl_set_str(root, "message", msg->message)) < 0)
		return rc;
	return 0;
}

int tun_ctl_encode(const struct tun_ctl_msg *msg, struct evbuffer *out)
{
	const char *tname = tun_ctl_type_name(msg->type);
	unsigned char *frame = NULL;
	json_t *root;
	size_t n;
	int rc;

	if (tname == NULL)
		return SR_EINVAL;
	root = json_object();
	if (root == NULL)
		return SR_ENOMEM;
	if ((rc = ctl_set_int(root, "v", msg->v ? msg->v : TUN_CTL_VERSION)) < 0 ||
	    (rc = ctl_set_str(root, "type", tname)) < 0)
		goto out;
	switch (msg->type) {
	case TUN_CTL_REGISTER:
		rc = ctl_build_register(msg, root);
		break;
	case TUN_CTL_LEASE:
		rc = ctl_build_lease(msg, root);
		break;
	case TUN_CTL_ERROR:
		rc = ctl_build_error(msg, root);
		break;
	case TUN_CTL_RELEASE:
	case TUN_CTL_RELEASED:
	case TUN_CTL_DRAIN:
		rc = 0;
		break;
	}
	if (rc < 0)
		goto out;

	/* One evbuffer_add of the whole frame, so a failure never leaves a
	 * partial frame in out. */
	n = json_dumpb(root, NULL, 0, JSON_COMPACT);
	if (n == 0 || n > UINT32_MAX) {
		rc = SR_ENOMEM;
		goto out;
	}
	frame = malloc(CTL_HDR_LEN + n);
	if (frame == NULL) {
		rc = SR_ENOMEM;
		goto out;
	}
	if (json_dumpb(root, (char *)frame + CTL_HDR_LEN, n, JSON_COMPACT) != n) {
		rc = SR_ENOMEM;
		goto out;
	}
	frame[0] = (unsigned char)(n >> 24);
	frame[1] = (unsigned char)(n >> 16);
	frame[2] = (unsigned char)(n >> 8);
	frame[3] = (unsigned char)n;
	rc = evbuffer_add(out, frame, CTL_HDR_LEN + n) == 0 ? 0 : SR_ENOMEM;
out:
	free(frame);
	json_decref(root);
	return rc;
}

/* A frame whose body was read but did not parse is drained too, so the error
 * refers to that frame only; a bad length prefix drains nothing, since the
 * body was never read and the stream cannot be resynchronised. */
int tun_ctl_decode(struct evbuffer *in, size_t max, struct tun_ctl_msg *msg, char *err,
		   size_t errlen)
{
	unsigned char hdr[CTL_HDR_LEN];
	size_t avail = evbuffer_get_length(in);
	unsigned char *body;
	uint32_t n;
	int rc;

	if (avail < CTL_HDR_LEN)
		return 0;
	if (evbuffer_copyout(in, hdr, CTL_HDR_LEN) != CTL_HDR_LEN)
		return SR_EPROTO;
	n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 |
	    (uint32_t)hdr[3];
	if (n == 0) {
		sr_seterr(err, errlen, "empty control frame");
		return SR_EPROTO;
	}
	if (n > max) {
		sr_seterr(err, errlen, "control frame of %lu bytes over the cap of %zu",
			   (unsigned long)n, max);
		return SR_ETOOBIG;
	}
	if (avail - CTL_HDR_LEN < n)
		return 0;
	body = evbuffer_pullup(in, (ev_ssize_t)(CTL_HDR_LEN + (size_t)n));
	if (body == NULL)
		return SR_ENOMEM;
	rc = tun_ctl_parse(body + CTL_HDR_LEN, n, msg, err, errlen);
	evbuffer_drain(in, CTL_HDR_LEN + (size_t)n);
	return rc < 0 ? rc : 1;
}
