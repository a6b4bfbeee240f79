/* The entry points: read the file (bounded), parse it, then apply in order
 * the table defaults, the file, the environment and the checks; on any
 * error, leave the config empty and one line in err. */
#include "conf/conf.h"
#include "conf/conf_int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sr_err.h"
#include "common/sr_util.h"

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

/* The sections cfg holds as role bits; every role when it holds none. */
static unsigned conf_roles_present(const struct sr_config *cfg)
{
	unsigned roles = 0;
	size_t i;

	for (i = 0; i < conf_root_group.n; i++) {
		const struct conf_entry *e = &conf_root_group.e[i];

		if ((e->flags & CONF_SECTION) && *(const int *)conf_at_c(cfg, e->aux_off))
			roles |= e->role;
	}
	return roles ? roles : CONF_ROLES_ALL;
}

/* Nothing but JSON's white space (an empty file). */
static int conf_blank(const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", text[i]) || !text[i])
			return 0;
	return 1;
}

static int conf_load_text(const char *text, size_t len, const char *origin, unsigned roles,
			  int no_file, struct sr_config *cfg, char *err, size_t errlen)
{
	struct conf_ctx ctx = {
	    .origin = origin, .err = err, .errlen = errlen, .roles = roles, .no_file = no_file};
	char got[CONF_GOT_SIZE];
	json_error_t jerr;
	json_t *root = NULL;
	int rc;

	memset(cfg, 0, sizeof(*cfg));
	if (err && errlen)
		err[0] = '\0';
	if (len > CONF_MAX_FILE_SIZE) {
		sr_seterr(err, errlen, "%s: too big: %zu bytes, the limit is %d bytes", origin,
			  len, CONF_MAX_FILE_SIZE);
		return SR_ETOOBIG;
	}
	if (conf_group_defaults(&conf_root_group, cfg) != 0 || !(cfg->path = strdup(origin))) {
		rc = conf_nomem(&ctx);
		goto fail;
	}
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
		sr_seterr(err, errlen,
			  "%s: starts with a byte order mark (EF BB BF), which JSON "
			  "does not allow: save it as UTF-8 without one",
			  origin);
		rc = SR_EINVAL;
		goto fail;
	}
	if (conf_blank(text, len)) {
		sr_seterr(err, errlen,
			  "%s: empty: want a JSON object such as {\"relay\": {...}}", origin);
		rc = SR_EINVAL;
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
			   jerr.line > 0) {
			/* jansson: "duplicate object key near '"k"'": keep the key only */
			sr_seterr(err, errlen, "%s:%d:%d: duplicate key %.*s", origin,
				  jerr.line, jerr.column, (int)(nearlen - 1), near + 6);
			rc = SR_EINVAL;
		} else {
			char rule[JSON_ERROR_TEXT_LENGTH];

			conf_json_rule(&jerr, rule, sizeof(rule));
			if (jerr.line > 0)
				sr_seterr(err, errlen, "%s:%d:%d: %s: %s", origin, jerr.line,
					  jerr.column, what, rule);
			else
				sr_seterr(err, errlen, "%s: %s: %s", origin, what, rule);
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
	if (ctx.roles == CONF_ROLES_OF_FILE)
		ctx.roles = conf_roles_present(cfg);
	if ((rc = conf_env_check_unknown(&ctx)) != 0 ||
	    (rc = conf_env_group(&conf_root_group, cfg, "", NULL, &ctx)) != 0)
		goto fail;
	ctx.env_applied = 1;
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

int conf_load_string_roles(const char *json, const char *origin, unsigned roles,
			   struct sr_config *cfg, char *err, size_t errlen)
{
	return conf_load_text(json, strlen(json), origin ? origin : "config", roles, 0, cfg,
			      err, errlen);
}

int conf_load_env_roles(unsigned roles, struct sr_config *cfg, char *err, size_t errlen)
{
	return conf_load_text("{}", 2, "environment", roles, 1, cfg, err, errlen);
}

int conf_load_string(const char *json, const char *origin, struct sr_config *cfg, char *err,
		     size_t errlen)
{
	return conf_load_string_roles(json, origin, CONF_ROLES_ALL, cfg, err, errlen);
}

int conf_load_file(const char *path, struct sr_config *cfg, char *err, size_t errlen)
{
	return conf_load_file_roles(path, CONF_ROLES_ALL, cfg, err, errlen);
}

/* Up to max + 1 bytes of fd into buf: the count, or -1 with errno
 * (ETIMEDOUT when a pipe's writer neither wrote nor closed for wait_ms; *got
 * says how much came before). */
static ssize_t conf_read_all(int fd, char *buf, size_t max, bool is_reg, unsigned wait_ms,
			     size_t *got)
{
	uint64_t deadline = sr_now_us() / 1000u + wait_ms;
	size_t n = 0;

	while (n <= max) {
		ssize_t r = read(fd, buf + n, max + 1 - n);

		*got = n;
		if (r > 0) {
			n += (size_t)r;
			deadline = sr_now_us() / 1000u + wait_ms; /* the writer is there */
			continue;
		}
		if (r == 0)
			return (ssize_t)n;
		if (errno == EINTR)
			continue;
		if (is_reg || errno != EAGAIN)
			return -1;
		uint64_t now = sr_now_us() / 1000u;
		struct pollfd p = {.fd = fd, .events = POLLIN};

		if (now >= deadline || poll(&p, 1, (int)(deadline - now)) == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
	}
	return (ssize_t)n;
}

int conf_load_file_roles(const char *path, unsigned roles, struct sr_config *cfg, char *err,
			 size_t errlen)
{
	return conf_load_file_waiting(path, roles, CONF_PIPE_WAIT_MS, cfg, err, errlen);
}

int conf_load_file_waiting(const char *path, unsigned roles, unsigned pipe_wait_ms,
			   struct sr_config *cfg, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	size_t got = 0;
	int fd, rc, e;

	memset(cfg, 0, sizeof(*cfg));
	/* O_NONBLOCK: open() of a FIFO without a writer would wait for one */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) {
		e = errno;
		sr_seterr(err, errlen, "%s: cannot open: %s", path, strerror(e));
		return e == ENOENT ? SR_ENOTFOUND : SR_EIO;
	}
	if (fstat(fd, &st) != 0) {
		sr_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		rc = SR_EIO;
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		sr_seterr(err, errlen, "%s: cannot read: is a directory", path);
		rc = SR_EIO;
		goto out;
	}
	/* refuse before reading; non-regular files are bounded by the read */
	if (S_ISREG(st.st_mode) && st.st_size > CONF_MAX_FILE_SIZE) {
		sr_seterr(err, errlen, "%s: too big: %lld bytes, the limit is %d bytes", path,
			  (long long)st.st_size, CONF_MAX_FILE_SIZE);
		rc = SR_ETOOBIG;
		goto out;
	}
	if (!(buf = malloc(CONF_MAX_FILE_SIZE + 1))) {
		sr_seterr(err, errlen, "%s: out of memory", path);
		rc = SR_ENOMEM;
		goto out;
	}
	n = conf_read_all(fd, buf, CONF_MAX_FILE_SIZE, S_ISREG(st.st_mode), pipe_wait_ms, &got);
	if (n < 0) {
		if (errno == ETIMEDOUT && got == 0)
			sr_seterr(err, errlen,
				  "%s: cannot read: not a regular file, and nothing came to "
				  "read within %u ms (a FIFO nobody writes to?)",
				  path, pipe_wait_ms);
		else if (errno == ETIMEDOUT)
			sr_seterr(
			    err, errlen,
			    "%s: cannot read: not a regular file, and its writer sent %zu "
			    "bytes, then nothing more for %u ms without closing it",
			    path, got, pipe_wait_ms);
		else
			sr_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		rc = SR_EIO;
		goto out;
	}
	if (n == 0 && !S_ISREG(st.st_mode)) {
		sr_seterr(err, errlen,
			  "%s: cannot read: not a regular file, and it gave nothing%s", path,
			  S_ISFIFO(st.st_mode) ? " (a FIFO with no writer yet?)" : "");
		rc = SR_EIO;
		goto out;
	}
	if (n > CONF_MAX_FILE_SIZE) {
		sr_seterr(err, errlen, "%s: too big: over the limit of %d bytes", path,
			  CONF_MAX_FILE_SIZE);
		rc = SR_ETOOBIG;
		goto out;
	}
	rc = conf_load_text(buf, (size_t)n, path, roles, 0, cfg, err, errlen);
out:
	free(buf);
	close(fd);
	return rc;
}
