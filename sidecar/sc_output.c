/* What the sidecar writes for the notebook: the Spark settings of its lease
 * (a spark-defaults.conf fragment, the same as JSON, and on stdout) and the
 * state file that keeps the resume token across restarts. One list of
 * settings (spark_settings) feeds all three. */
#include "sidecar/sc_int.h"
#include "common/sr_err.h"
#include "common/sr_file.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#define SPARK_MAX_SETTINGS 8

struct spark_setting {
	const char *key, *val;
};

/* Port numbers as text, owned by the caller of spark_settings. */
struct spark_ports {
	char p[TUN_PORT_MAX][8];
};

/* The settings a driver needs for lease l, in the order they are written. */
static size_t spark_settings(const struct sidecar_lease_info *l, struct spark_ports *pt,
			     struct spark_setting out[SPARK_MAX_SETTINGS])
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

int sidecar_write_spark_conf(const struct sidecar_lease_info *info, const char *conf_path,
			     const char *json_path, char *err, size_t errlen)
{
	struct spark_setting kv[SPARK_MAX_SETTINGS];
	struct spark_ports pt;
	size_t n;
	int rv;

	if (!tun_ctl_valid_lease_id(info->lease) || !spark_value_ok(info->lease) ||
	    !sr_valid_host(info->host) || !spark_value_ok(info->host) ||
	    !info->ports[TUN_PORT_DRIVER] || !info->ports[TUN_PORT_BLOCKMANAGER]) {
		sr_seterr(err, errlen, "refusing to write Spark settings: lease id, host or "
				       "ports are not valid settings");
		return SR_EINVAL;
	}
	n = spark_settings(info, &pt, kv);
	if (conf_path && (rv = write_fragment(conf_path, info, kv, n, err, errlen)) != 0)
		return rv;
	if (json_path && (rv = write_json(json_path, info, kv, n, err, errlen)) != 0)
		return rv;
	return 0;
}

void sc_print_settings(const struct sidecar_lease_info *l)
{
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], vbuf[SR_ESC_SIZE(TUN_CTL_HOST_MAX)];
	struct spark_setting kv[SPARK_MAX_SETTINGS];
	struct spark_ports pt;
	size_t n = spark_settings(l, &pt, kv);

	printf("sparkrelay: lease %s granted; Spark settings:\n",
	       sr_esc(l->lease, lbuf, sizeof(lbuf)));
	for (size_t i = 0; i < n; i++)
		printf("  %s=%s\n", kv[i].key, sr_esc(kv[i].val, vbuf, sizeof(vbuf)));
	fflush(stdout);
}

/* ---- state file ---------------------------------------------------------- */

void sc_state_load(const char *path, char *resume, size_t len)
{
	json_error_t jerr;
	char near[SR_ESC_SIZE(60)], epath[SR_ESC_SIZE(200)];
	json_t *root, *v;

	resume[0] = '\0';
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
		SR_INFO("", "found resume token in %s: will ask for the same lease", path);
	} else if (v) {
		SR_WARN("", "ignoring state file %s: \"resume\" is not a resume token", path);
	}
	json_decref(root);
}

void sc_state_save(const char *path, const char *resume, const struct sidecar_lease_info *l)
{
	char err[256];
	json_t *root;
	char *text;

	if (!path)
		return;
	root = json_pack("{s:s, s:s, s:s}", "resume", resume, "lease", l->lease, "host", l->host);
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
