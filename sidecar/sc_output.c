/* What the sidecar writes for the notebook: the Spark settings of its lease
 * (a spark-defaults.conf fragment, the same as JSON, a marked block in the
 * spark-defaults.conf Spark reads, and on stdout), the status file the
 * notebook's hook and the start-up script read, and the state file that
 * keeps the resume token across restarts. One list of settings
 * (spark_settings) feeds them all. */
#include "sidecar/sc_int.h"
#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define SPARK_MAX_SETTINGS 10
/* A spark-defaults.conf larger than this is not rewritten (it would not be
 * one a person keeps). */
#define SC_DEFAULTS_MAX (1024 * 1024)
#define SC_BLOCK_BEGIN "# sparkrelay begin"
#define SC_BLOCK_END "# sparkrelay end"

struct spark_setting {
	const char *key, *val;
};

/* Numbers as text, owned by the caller of spark_settings. */
struct spark_ports {
	char p[TUN_PORT_MAX][8];
	char direct[24], rpc_max[12];
};

/* The settings a driver needs for lease l, in the order they are written.
 * direct_result_mib: see tunnel.direct_result_mib (0: Spark's defaults). */
static size_t spark_settings(const struct sidecar_lease_info *l, uint32_t direct_result_mib,
			     struct spark_ports *pt, struct spark_setting out[SPARK_MAX_SETTINGS])
{
	size_t n = 0;

	for (int r = 0; r < TUN_PORT_MAX; r++)
		snprintf(pt->p[r], sizeof(pt->p[r]), "%u", l->ports[r]);
	out[n++] = (struct spark_setting){"spark.driver.host", l->host};
	out[n++] = (struct spark_setting){"spark.driver.bindAddress", "127.0.0.1"};
	out[n++] = (struct spark_setting){"spark.driver.port", pt->p[TUN_PORT_DRIVER]};
	out[n++] = (struct spark_setting){"spark.driver.blockManager.port",
					  pt->p[TUN_PORT_BLOCKMANAGER]};
	if (l->ports[TUN_PORT_UI])
		out[n++] = (struct spark_setting){"spark.ui.port", pt->p[TUN_PORT_UI]};
	/* The advertised port is the bound port: a busy port must fail, not
	 * silently become P+1, which no executor would find. */
	out[n++] = (struct spark_setting){"spark.port.maxRetries", "0"};
	out[n++] = (struct spark_setting){"spark.kubernetes.executor.useDriverPodIP", "false"};
	/* Task results up to this size come back in the executor's RPC
	 * connection (through the relay) instead of being fetched by the driver
	 * from the executor's pod, which a notebook cannot reach. Spark uses the
	 * smaller of the two, so the RPC message limit (MiB) is raised with it,
	 * never below Spark's own 128. */
	if (direct_result_mib) {
		snprintf(pt->direct, sizeof(pt->direct), "%um", direct_result_mib);
		snprintf(pt->rpc_max, sizeof(pt->rpc_max), "%u",
			 direct_result_mib > 128 ? direct_result_mib : 128);
		out[n++] = (struct spark_setting){"spark.task.maxDirectResultSize", pt->direct};
		out[n++] = (struct spark_setting){"spark.rpc.message.maxSize", pt->rpc_max};
	}
	return n;
}

/* Defence in depth behind tun_ctl: every value of a setting, and the lease id
 * in the header comment, is one token of [A-Za-z0-9.:_-], so nothing that
 * reaches this file can end a line of spark-defaults.conf and start another
 * setting there. */
static int spark_value_ok(const char *v)
{
	return sr_valid_chars(v, TUN_CTL_HOST_MAX - 1, ".:_-");
}

static int lease_ok(const struct sidecar_lease_info *info, char *err, size_t errlen)
{
	if (!tun_ctl_valid_lease_id(info->lease) || !spark_value_ok(info->lease) ||
	    !sr_valid_host(info->host) || !spark_value_ok(info->host) ||
	    !info->ports[TUN_PORT_DRIVER] || !info->ports[TUN_PORT_BLOCKMANAGER]) {
		sr_seterr(err, errlen, "refusing to write Spark settings: lease id, host or "
				       "ports are not valid settings");
		return SR_EINVAL;
	}
	return 0;
}

static int write_fragment(const char *path, const struct sidecar_lease_info *info,
			  const struct spark_setting *kv, size_t n, char *err, size_t errlen)
{
	char text[2048];
	size_t len = (size_t)snprintf(text, sizeof(text),
				      "# Written by sparkrelay for lease %s. Do not edit.\n",
				      info->lease);

	for (size_t i = 0; i < n && len < sizeof(text); i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len, "%s %s\n", kv[i].key,
					kv[i].val);
	if (len >= sizeof(text))
		return SR_ETOOBIG;
	return sr_file_replace(path, text, len, 0644, err, errlen);
}

static int write_json(const char *path, const struct sidecar_lease_info *info,
		      const struct spark_setting *kv, size_t n, char *err, size_t errlen)
{
	json_t *root = json_object(), *spark = json_object(), *jp = json_object();
	char *text = NULL;
	int rv;

	if (!root || !spark || !jp) {
		json_decref(root);
		json_decref(spark);
		json_decref(jp);
		return SR_ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		json_object_set_new(spark, kv[i].key, json_string(kv[i].val));
	for (int r = 0; r < TUN_PORT_MAX; r++)
		if (info->ports[r])
			json_object_set_new(jp, tun_port_role_name(r), json_integer(info->ports[r]));
	json_object_set_new(root, "lease", json_string(info->lease));
	json_object_set_new(root, "host", json_string(info->host));
	json_object_set_new(root, "ports", jp);
	json_object_set_new(root, "spark", spark);
	text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(root);
	if (!text)
		return SR_ENOMEM;
	rv = sr_file_replace(path, text, strlen(text), 0644, err, errlen);
	free(text);
	return rv;
}

/* ---- the spark-defaults.conf Spark reads ----------------------------------- */

/* The key of a spark-defaults.conf line (Java properties: "k v", "k=v",
 * "k: v", leading blanks allowed) into key; "" for blank and comment lines. */
static void defaults_key(const char *line, size_t len, char *key, size_t keylen)
{
	size_t i = 0, k = 0;

	while (i < len && (line[i] == ' ' || line[i] == '\t'))
		i++;
	if (i < len && (line[i] == '#' || line[i] == '!'))
		i = len;
	while (i < len && line[i] != ' ' && line[i] != '\t' && line[i] != '=' &&
	       line[i] != ':' && line[i] != '\r' && k + 1 < keylen)
		key[k++] = line[i++];
	key[k] = '\0';
}

/* The current content of path, at most SC_DEFAULTS_MAX bytes, into *text
 * (NUL-terminated, caller frees; "" when there is no file) and its mode.
 * Never through a symlink, never anything but a regular file: the file is
 * rewritten with what was read, so a planted link must not make us copy
 * another file's content into it. */
static int defaults_read(const char *path, char **text, size_t *len, mode_t *mode, char *err,
			 size_t errlen)
{
	struct stat st;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);

	*text = NULL;
	*len = 0;
	*mode = 0644;
	if (fd < 0 && errno == ENOENT) {
		*text = calloc(1, 1);
		return *text ? 0 : SR_ENOMEM;
	}
	if (fd < 0) {
		sr_seterr(err, errlen, "%s: %s", path,
			  errno == ELOOP ? "is a symbolic link; not written through" : strerror(errno));
		return SR_EIO;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > SC_DEFAULTS_MAX) {
		sr_seterr(err, errlen, "%s: not a regular file of at most %d bytes", path,
			  SC_DEFAULTS_MAX);
		close(fd);
		return SR_EIO;
	}
	*mode = st.st_mode & 0777;
	if (!(*text = malloc((size_t)st.st_size + 1))) {
		close(fd);
		return SR_ENOMEM;
	}
	while (*len < (size_t)st.st_size &&
	       ((n = read(fd, *text + *len, (size_t)st.st_size - *len)) > 0 ||
		(n < 0 && errno == EINTR)))
		*len += n > 0 ? (size_t)n : 0;
	(*text)[*len] = '\0';
	close(fd);
	return 0;
}

int sc_defaults_update(const char *path, const struct sidecar_lease_info *l,
		       uint32_t direct_result_mib, char *err, size_t errlen)
{
	struct spark_setting kv[SPARK_MAX_SETTINGS];
	struct spark_ports pt;
	size_t n = 0, len, cap, out_len = 0;
	char *text = NULL, *out = NULL, key[128];
	int rv, in_block = 0;
	mode_t mode;

	if (!path)
		return 0;
	if (l) {
		if ((rv = lease_ok(l, err, errlen)) != 0)
			return rv;
		n = spark_settings(l, direct_result_mib, &pt, kv);
	}
	if ((rv = defaults_read(path, &text, &len, &mode, err, errlen)) != 0)
		return rv;
	cap = len + 2048;
	if (!(out = malloc(cap))) {
		free(text);
		return SR_ENOMEM;
	}
	/* Every line is kept but the old block and, when a lease is written,
	 * the lines that set one of its keys: Spark would take whichever came
	 * last, and the file would say two things. */
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t ll = nl ? (size_t)(nl - p) + 1 : strlen(p);
		int drop = in_block;

		if (strncmp(p, SC_BLOCK_BEGIN, strlen(SC_BLOCK_BEGIN)) == 0)
			/* a block whose end someone removed ends here */
			drop = 1, in_block = strstr(p, "\n" SC_BLOCK_END) != NULL;
		else if (strncmp(p, SC_BLOCK_END, strlen(SC_BLOCK_END)) == 0)
			drop = 1, in_block = 0;
		if (!drop && l) {
			defaults_key(p, ll, key, sizeof(key));
			for (size_t i = 0; i < n && !drop; i++)
				drop = key[0] && strcmp(key, kv[i].key) == 0;
		}
		if (!drop) {
			memcpy(out + out_len, p, ll);
			out_len += ll;
			if (!nl)
				out[out_len++] = '\n';
		}
		p += ll;
	}
	if (l) {
		out_len += (size_t)snprintf(out + out_len, cap - out_len,
					    SC_BLOCK_BEGIN ": lease %s, kept current by the sparkrelay "
							   "sidecar; do not edit\n",
					    l->lease);
		for (size_t i = 0; i < n && out_len < cap; i++)
			out_len += (size_t)snprintf(out + out_len, cap - out_len, "%s %s\n",
						    kv[i].key, kv[i].val);
		if (out_len < cap)
			out_len += (size_t)snprintf(out + out_len, cap - out_len, SC_BLOCK_END "\n");
	}
	if (out_len >= cap)
		rv = SR_ETOOBIG;
	else if (out_len == len && memcmp(out, text, len) == 0)
		rv = 0; /* nothing to change: no write, no new mtime */
	else if (len == 0 && out_len == 0)
		rv = 0;
	else
		rv = sr_file_replace(path, out, out_len, mode, err, errlen);
	free(out);
	free(text);
	return rv;
}

int sc_settings_write(const struct sidecar_opts *o, const struct sidecar_lease_info *info,
		      char *err, size_t errlen)
{
	struct spark_setting kv[SPARK_MAX_SETTINGS];
	struct spark_ports pt;
	size_t n;
	int rv;

	if ((rv = lease_ok(info, err, errlen)) != 0)
		return rv;
	n = spark_settings(info, o->direct_result_mib, &pt, kv);
	if (o->spark_conf_path &&
	    (rv = write_fragment(o->spark_conf_path, info, kv, n, err, errlen)) != 0)
		return rv;
	if (o->spark_json_path &&
	    (rv = write_json(o->spark_json_path, info, kv, n, err, errlen)) != 0)
		return rv;
	return sc_defaults_update(o->spark_defaults_path, info, o->direct_result_mib, err,
				  errlen);
}

void sc_settings_remove(const struct sidecar_opts *o, const char *logctx)
{
	const char *files[2] = {o->spark_json_path, o->spark_conf_path};
	char err[512];

	/* The JSON first: it is what says "there is a lease" to a reader. */
	for (int i = 0; i < 2; i++)
		if (files[i] && unlink(files[i]) != 0 && errno != ENOENT)
			SR_WARN(logctx, "cannot remove %s: %s", files[i], strerror(errno));
	if (sc_defaults_update(o->spark_defaults_path, NULL, 0, err, sizeof(err)) != 0)
		SR_WARN(logctx, "cannot remove the Spark settings: %s", err);
}

/* ---- status file ----------------------------------------------------------- */

static const char *const sc_status_names[] = {
	[SC_STATUS_CONNECTING] = "connecting",
	[SC_STATUS_LEASED] = "leased",
	[SC_STATUS_RECONNECTING] = "reconnecting",
	[SC_STATUS_UNREACHABLE] = "relay_unreachable",
	[SC_STATUS_NO_LEASE] = "no_lease",
	[SC_STATUS_STOPPED] = "stopped",
};

const char *sc_status_name(enum sc_status st)
{
	return (unsigned)st < SR_ARRAY_LEN(sc_status_names) ? sc_status_names[st] : "unknown";
}

void sc_status_write(const char *path, enum sc_status st, const struct sidecar_lease_info *l,
		     uint64_t changes, const char *message)
{
	json_t *root, *ports;
	char err[256], mbuf[SR_ESC_SIZE(256)];
	char *text;

	if (!path)
		return;
	root = json_object();
	ports = json_object();
	if (!root || !ports) {
		json_decref(root);
		json_decref(ports);
		return;
	}
	for (int r = 0; l->have_lease && r < TUN_PORT_MAX; r++)
		if (l->ports[r])
			json_object_set_new(ports, tun_port_role_name(r), json_integer(l->ports[r]));
	json_object_set_new(root, "state", json_string(sc_status_name(st)));
	json_object_set_new(root, "lease", l->have_lease ? json_string(l->lease) : json_null());
	json_object_set_new(root, "host", l->have_lease ? json_string(l->host) : json_null());
	json_object_set_new(root, "ports", ports);
	json_object_set_new(root, "connected", json_boolean(l->connected));
	json_object_set_new(root, "relay", l->relay[0] ? json_string(l->relay) : json_null());
	json_object_set_new(root, "lease_changes", json_integer((json_int_t)changes));
	json_object_set_new(root, "pid", json_integer((json_int_t)getpid()));
	json_object_set_new(root, "since", json_integer((json_int_t)time(NULL)));
	/* Shown in the notebook: printable text only, whatever produced it. */
	json_object_set_new(root, "message",
			    json_string(sr_esc_n(message ? message : "", 256, mbuf, sizeof(mbuf))));
	text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
	json_decref(root);
	if (!text || sr_file_replace(path, text, strlen(text), 0644, err, sizeof(err)) != 0)
		SR_WARN("", "cannot write the status file: %s", text ? err : "out of memory");
	free(text);
}

void sc_print_settings(const struct sidecar_lease_info *l, uint32_t direct_result_mib)
{
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], vbuf[SR_ESC_SIZE(TUN_CTL_HOST_MAX)];
	struct spark_setting kv[SPARK_MAX_SETTINGS];
	struct spark_ports pt;
	size_t n = spark_settings(l, direct_result_mib, &pt, kv);

	printf("sparkrelay: lease %s granted; Spark settings:\n",
	       sr_esc(l->lease, lbuf, sizeof(lbuf)));
	for (size_t i = 0; i < n; i++)
		printf("  %s=%s\n", kv[i].key, sr_esc(kv[i].val, vbuf, sizeof(vbuf)));
	fflush(stdout);
}

/* ---- state file ---------------------------------------------------------- */

void sc_state_load(const char *path, char *resume, size_t len, struct sidecar_lease_info *l)
{
	json_error_t jerr;
	char near[SR_ESC_SIZE(60)], epath[SR_ESC_SIZE(200)];
	json_t *root, *v, *ports;

	resume[0] = '\0';
	memset(l, 0, sizeof(*l));
	if (!path)
		return;
	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (access(path, F_OK) == 0)
			SR_WARN("", "ignoring state file \"%s\": %s",
				sr_esc(path, epath, sizeof(epath)),
				sr_mask_n(jerr.text, 60, near, sizeof(near)));
		return;
	}
	v = json_object_get(root, "resume");
	/* Sent to the relay as is: held to the same rule as one it sent us. */
	if (json_is_string(v) && tun_ctl_valid_resume(json_string_value(v)) &&
	    strlen(json_string_value(v)) < len) {
		snprintf(resume, len, "%s", json_string_value(v));
		SR_INFO("", "found resume token in %s: will ask for the same lease",
			sr_esc(path, epath, sizeof(epath)));
	} else if (v) {
		SR_WARN("", "ignoring state file %s: \"resume\" is not a resume token",
			sr_esc(path, epath, sizeof(epath)));
	}
	/* The lease whose settings a driver may still use: only to tell, when
	 * the next lease differs, that the driver must be restarted. */
	v = json_object_get(root, "lease");
	ports = json_object_get(root, "ports");
	if (resume[0] && json_is_string(v) && tun_ctl_valid_lease_id(json_string_value(v)) &&
	    json_is_string(json_object_get(root, "host")) &&
	    sr_valid_host(json_string_value(json_object_get(root, "host"))) &&
	    json_is_object(ports)) {
		for (int r = 0; r < TUN_PORT_MAX; r++) {
			json_t *p = json_object_get(ports, tun_port_role_name(r));
			if (json_is_integer(p) && json_integer_value(p) > 0 &&
			    json_integer_value(p) <= 65535)
				l->ports[r] = (uint16_t)json_integer_value(p);
		}
		snprintf(l->lease, sizeof(l->lease), "%s", json_string_value(v));
		snprintf(l->host, sizeof(l->host), "%s",
			 json_string_value(json_object_get(root, "host")));
		l->have_lease = l->ports[TUN_PORT_DRIVER] && l->ports[TUN_PORT_BLOCKMANAGER];
	}
	json_decref(root);
}

void sc_state_save(const char *path, const char *resume, const struct sidecar_lease_info *l)
{
	char err[256];
	json_t *root, *ports;
	char *text;

	if (!path)
		return;
	ports = json_object();
	for (int r = 0; ports && r < TUN_PORT_MAX; r++)
		if (l->ports[r])
			json_object_set_new(ports, tun_port_role_name(r), json_integer(l->ports[r]));
	root = ports ? json_pack("{s:s, s:s, s:s, s:o}", "resume", resume, "lease", l->lease,
				 "host", l->host, "ports", ports)
		     : NULL;
	text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
	if (!text || sr_file_replace(path, text, strlen(text), 0600, err, sizeof(err)) != 0)
		SR_WARN("", "cannot write state file: %s", text ? err : "out of memory");
	free(text);
	json_decref(root);
}

void sc_state_clear(const char *path)
{
	if (path && unlink(path) != 0 && errno != ENOENT)
		SR_WARN("", "cannot remove state file %s: %s", path, strerror(errno));
}
