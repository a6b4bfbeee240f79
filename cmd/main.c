/* sparkrelay: one binary, several roles. This file only maps the command
 * line and the configuration onto each module's options and runs the loop. */
#include "cmd/cmd.h"
#include "common/sr_curl.h"
#include "common/sr_devcert.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "common/sr_watch.h"
#include "conf/conf.h"
#include "fleet/peer.h"
#include "relay/relay.h"
#include "relay/relay_admin.h"
#include "sidecar/sidecar.h"
#include "sidecar/sidecar_admin.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <event2/event.h>

extern char **environ;

int cmd_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
	       const char *who)
{
	char esc[SR_ESC_SIZE(48)];
	int ch;

	opterr = 0;
	ch = getopt_long(argc, argv, shortopts, longopts, NULL);
	if (ch == '?' || ch == ':') {
		const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";
		fprintf(stderr, "sparkrelay %s: bad option \"%s\" (unknown, or a value "
				"missing)\n",
			who, sr_esc_n(arg, 48, esc, sizeof(esc)));
		return '?';
	}
	return ch;
}

static void vprint_line(FILE *f, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void vprint_line(FILE *f, const char *fmt, va_list ap)
{
	char line[4096], out[4 * sizeof(line)];
	int n = vsnprintf(line, sizeof(line), fmt, ap);

	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	sr_esc_ctl(line, (size_t)n, out, sizeof(out));
	fprintf(f, "%s\n", out);
}

void cmd_eprintf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint_line(stderr, fmt, ap);
	va_end(ap);
}

void cmd_printf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprint_line(stdout, fmt, ap);
	va_end(ap);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: sparkrelay <command> [options]\n"
		"\n"
		"Carries Spark executor connections to a notebook driver that cannot accept\n"
		"inbound connections, over one outbound TLS/HTTP-2 tunnel.\n"
		"\n"
		"commands:\n"
		"  demo                     relay, sidecar, stand-in driver and executors on\n"
		"                           loopback with throw-away certificates (start here)\n"
		"  relay  [--config FILE]   run the relay (cluster side, DaemonSet)\n"
		"         [--takeover[=auto]] take over from the relay running on\n"
		"                           relay.handover_socket, losing no connection\n"
		"                           (auto: start afresh when none runs there)\n"
		"         [--wait-after-handover] once taken over, wait for SIGTERM\n"
		"  tunnel [--config FILE]   run the sidecar (notebook side)\n"
		"  ctl COMMAND              admin client: sessions, leases, drain, reload, ...\n"
		"  check-config FILE        validate a configuration file (--print: show it)\n"
		"  route explain --config FILE ...\n"
		"                           which tenant and route a sidecar would get\n"
		"  config-docs              print the configuration reference (Markdown)\n"
		"  gen-certs DIR [NAME...]  write a development CA and certificates into DIR\n"
		"  gen-certs DIR --client NAME  a client certificate (mTLS tenant) from it\n"
		"  version                  print the version (also -V, --version)\n"
		"\n"
		"`sparkrelay COMMAND --help` describes a command.\n"
		"Configuration: docs/configuration.md; every setting can also be set with\n"
		"an environment variable SPARKRELAY_<PATH> (e.g. SPARKRELAY_RELAY_LISTEN).\n");
}

static int print_version(void)
{
	printf("sparkrelay %s (tunnel protocol v%d)\n", SR_VERSION, TUN_CTL_VERSION);
	return 0;
}

struct run_ctx {
	struct event_base *base;
	struct relay *relay;
	struct sidecar *sidecar;
	struct relay_admin *admin;
	struct relay_metrics *metrics;
	struct sidecar_admin *sc_admin;
	struct sr_watch *watch; /* relay.reload.watch */
	/* relay.reload.watch on the TLS files too (a Secret renewed in place) */
	struct tls_watch {
		struct run_ctx *rc;
		const char *setting; /* "relay.tls.cert" */
		char *path;	     /* watched */
		struct sr_watch *w;
	} tls[3];
	struct event *tls_rewatch; /* the paths may have changed: after a reload */
	struct sr_config *cfg;
	const char *config; /* file to re-read on reload, NULL = environment only */
	int signals;
	int level_from_cli; /* --log-level wins over the file, at reloads too */
	int idle; /* handed over, waiting for a signal to exit (--wait-after-handover) */
	int taking;                  /* taking over from a running relay */
	struct event *metrics_retry; /* the metrics port is still the old relay's */
	unsigned metrics_tries;
};

/* relay --takeover */
enum takeover_mode {
	TAKEOVER_NO = 0,
	TAKEOVER_REQUIRED, /* fail when no relay answers on relay.handover_socket */
	TAKEOVER_AUTO,     /* start afresh then */
};

struct relay_flags {
	enum takeover_mode takeover;
	int wait_after_handover;
};

/* A check's warning as a log line. */
static void log_warning(void *arg, const char *msg)
{
	SR_WARN("", "configuration: %s", msg);
}

/* Re-read the configuration and apply it to the relay atomically; a bad file
 * leaves the running configuration in force. Used by SIGHUP and the admin
 * API. Returns 0 or an SR_E* code with the reason in err. */
static int reload_relay(void *arg, char *err, size_t errlen)
{
	struct run_ctx *rc = arg;
	struct sr_config ncfg;
	int rv;

	memset(&ncfg, 0, sizeof(ncfg));
	/* Whatever started this reload, the watches have seen this content. */
	sr_watch_sync(rc->watch);
	for (size_t i = 0; i < SR_ARRAY_LEN(rc->tls); i++)
		sr_watch_sync(rc->tls[i].w);
	if (rc->config)
		rv = conf_load_file_waiting(rc->config, CONF_ROLE_RELAY,
					    CONF_PIPE_WAIT_RELOAD_MS, &ncfg, err, errlen);
	else
		rv = conf_load_env_roles(CONF_ROLE_RELAY, &ncfg, err, errlen);
	if (rv == 0 && !ncfg.have_relay) {
		sr_seterr(err, errlen, "%s has no \"relay\" section",
			  rc->config ? rc->config : "the environment");
		rv = SR_EINVAL;
	}
	/* The TLS files as at start: each failure names its setting. */
	if (rv == 0 && cmd_check_relay_tls(&ncfg.relay, log_warning, NULL, err, errlen) != 0)
		rv = SR_EINVAL;
	if (rv != 0) {
		relay_count_reload_failure(rc->relay);
	} else {
		cmd_check_relay_policy(&ncfg.relay, log_warning, NULL);
		rv = relay_reload(rc->relay, &ncfg.relay, err, errlen);
		if (rv == 0 && rc->tls_rewatch)
			event_active(rc->tls_rewatch, EV_TIMEOUT, 0);
		if (rv == 0 && ncfg.log_level && !rc->level_from_cli)
			sr_log_set_level_name(ncfg.log_level);
		if (rv == 0 && ncfg.log_format)
			sr_log_set_format_name(ncfg.log_format);
	}
	conf_free(&ncfg); /* on success it holds the previous relay options */
	if (rv != 0)
		SR_ERROR("", "reload refused, the running configuration stays: %s", err);
	return rv;
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	struct run_ctx *rc = arg;

	if (++rc->signals > 1 || rc->idle) {
		if (!rc->idle)
			SR_WARN("", "second signal: exiting now");
		event_base_loopbreak(rc->base);
		return;
	}
	SR_INFO("", "signal %d: shutting down gracefully", (int)sig);
	if (rc->relay)
		relay_drain(rc->relay);
	if (rc->sidecar)
		sidecar_shutdown(rc->sidecar);
}

/* GET /v1/config: the effective configuration, secrets redacted. */
static json_t *config_json(void *arg)
{
	struct run_ctx *rc = arg;
	char *text = NULL;
	size_t len = 0;
	json_t *j = NULL;
	FILE *f = open_memstream(&text, &len);

	if (!f)
		return NULL;
	if (conf_dump(rc->cfg, f) == 0 && fflush(f) == 0)
		j = json_loadb(text, len, 0, NULL);
	fclose(f);
	free(text);
	return j;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct run_ctx *rc = arg;
	char err[1024];

	if (rc->idle) {
		SR_INFO("", "SIGHUP: this relay handed over to a new process; nothing to reload");
		return;
	}
	if (!rc->relay) {
		SR_WARN("", "SIGHUP: the sidecar has nothing to reload; restart it to change "
			    "its configuration");
		return;
	}
	SR_INFO("", "SIGHUP: reloading %s", rc->config ? rc->config : "the environment");
	(void)reload_relay(rc, err, sizeof(err));
}

/* rf: the relay's own flags (NULL for the sidecar, which has none). */
static int parse_common(int argc, char **argv, const char **config, const char *cmd,
			struct relay_flags *rf)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"log-level", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},
		{"takeover", optional_argument, NULL, 'T'},
		{"wait-after-handover", no_argument, NULL, 'W'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	int ch;

	optind = 1;
	while ((ch = cmd_getopt(argc, argv, "c:l:hV", longopts, cmd)) != -1) {
		switch (ch) {
		case 'c':
			*config = optarg;
			break;
		case 'T':
			if (!rf || (optarg && strcmp(optarg, "auto") != 0)) {
				fprintf(stderr, "sparkrelay %s: %s\n", cmd,
					rf ? "--takeover takes no value but \"auto\""
					   : "--takeover is a relay option");
				return 2;
			}
			rf->takeover = optarg ? TAKEOVER_AUTO : TAKEOVER_REQUIRED;
			break;
		case 'W':
			if (!rf) {
				fprintf(stderr, "sparkrelay %s: --wait-after-handover is a relay "
						"option\n",
					cmd);
				return 2;
			}
			rf->wait_after_handover = 1;
			break;
		case 'l':
			if (sr_log_set_level_name(optarg) != 0) {
				char esc[SR_ESC_SIZE(32)];
				fprintf(stderr, "sparkrelay %s: unknown log level \"%s\"\n", cmd,
					sr_esc_n(optarg, 32, esc, sizeof(esc)));
				return 2;
			}
			break;
		case 'h':
			printf("usage: sparkrelay %s [--config FILE] [--log-level LEVEL]%s\n"
			       "Runs the %s. Its settings come from FILE and from\n"
			       "the SPARKRELAY_%s_* and SPARKRELAY_LOG_* environment variables,\n"
			       "which override the file; without --config the environment alone\n"
			       "configures it. LEVEL: error, warn, info or debug (overrides\n"
			       "log.level). Reference: docs/configuration.md (`sparkrelay\n"
			       "config-docs`).\n",
			       cmd, rf ? " [--takeover[=auto]] [--wait-after-handover]" : "",
			       rf ? "relay (cluster side)" : "sidecar (notebook side)",
			       rf ? "RELAY" : "TUNNEL");
			if (rf)
				printf("\n--takeover: take over from the relay running on "
				       "relay.handover_socket (its listeners,\n"
				       "  leases and executor connections; none is lost), which then "
				       "exits 0. Fails\n"
				       "  when none runs there; --takeover=auto then starts afresh.\n"
				       "--wait-after-handover: once a new relay took over from this "
				       "one, wait for\n"
				       "  SIGTERM or SIGINT before exiting 0 (a container that must not "
				       "restart).\n"
				       "SIGTERM still drains (docs/operations.md).\n");
			printf("\nExit status: 0 once stopped by SIGTERM or SIGINT (%s), 1 on "
			       "a\nconfiguration or start error, 2 on a usage error.\n",
			       rf ? "drained" : "the lease released");
			return 1;
		case 'V':
			print_version();
			return 1;
		default:
			fprintf(stderr, "usage: sparkrelay %s [--config FILE] [--log-level LEVEL] "
					"(--help: more)\n",
				cmd);
			return 2;
		}
	}
	if (optind < argc) {
		cmd_eprintf("sparkrelay %s: unexpected argument \"%s\" (--help: usage)", cmd,
			    argv[optind]);
		return 2;
	}
	return 0;
}

static int load_config(const char *path, unsigned role, struct sr_config *cfg, const char *cmd)
{
	char err[1024];
	int rv;

	if (path)
		rv = conf_load_file_roles(path, role, cfg, err, sizeof(err));
	else
		rv = conf_load_env_roles(role, cfg, err, sizeof(err));
	if (rv != 0) {
		cmd_eprintf("sparkrelay %s: %s", cmd, err);
		return 1;
	}
	return 0;
}

/* relay.reload.watch: the file changed; the same refuse-bad-file rule as
 * SIGHUP (reload_relay logs the outcome). */
static void on_config_changed(void *arg)
{
	struct run_ctx *rc = arg;
	char err[1024], esc[SR_ESC_SIZE(200)];
	int rv;

	SR_INFO("", "%s changed: reloading it (relay.reload.watch)",
		sr_esc_n(rc->config, 200, esc, sizeof(esc)));
	rv = reload_relay(rc, err, sizeof(err));
	relay_count_auto_reload(rc->relay, rv == 0);
}

/* relay.reload.watch: a TLS file changed (a certificate renewed in place). */
static void on_tls_changed(void *arg)
{
	struct tls_watch *t = arg;
	char err[1024], esc[SR_ESC_SIZE(200)];
	int rv;

	SR_INFO("", "%s %s changed: reloading (relay.reload.watch)", t->setting,
		sr_esc_n(t->path, 200, esc, sizeof(esc)));
	rv = reload_relay(t->rc, err, sizeof(err));
	relay_count_auto_reload(t->rc->relay, rv == 0);
}

/* Watch the TLS files the relay uses now; those whose setting changed are
 * watched afresh. Run from an event of its own, never from a watch's own
 * callback (sr_watch_free). */
static void watch_tls_files(evutil_socket_t fd, short what, void *arg)
{
	struct run_ctx *rc = arg;
	const struct relay_opts *o = relay_get_opts(rc->relay);
	const char *paths[3] = {o->cert_file, o->key_file, o->client_ca_file};
	static const char *const settings[3] = {"relay.tls.cert", "relay.tls.key",
						"relay.tls.client_ca"};
	char err[512], esc[SR_ESC_SIZE(200)];

	(void)fd;
	(void)what;
	for (size_t i = 0; i < SR_ARRAY_LEN(rc->tls); i++) {
		struct tls_watch *t = &rc->tls[i];
		if (t->w && paths[i] && strcmp(t->path, paths[i]) == 0)
			continue; /* a watch that failed is tried again */
		sr_watch_free(t->w);
		free(t->path);
		t->w = NULL;
		t->path = NULL;
		t->rc = rc;
		t->setting = settings[i];
		if (!paths[i])
			continue;
		t->path = strdup(paths[i]);
		if (t->path)
			t->w = sr_watch_new(rc->base, t->path, rc->cfg->relay.watch_debounce_ms,
					    on_tls_changed, t, err, sizeof(err));
		if (!t->w)
			SR_WARN("",
				"cannot watch %s %s (%s); reload it with SIGHUP or `sparkrelay "
				"ctl reload`",
				settings[i], sr_esc_n(paths[i], 200, esc, sizeof(esc)),
				t->path ? err : "out of memory");
	}
}

static void unwatch_tls_files(struct run_ctx *rc)
{
	for (size_t i = 0; i < SR_ARRAY_LEN(rc->tls); i++) {
		sr_watch_free(rc->tls[i].w);
		free(rc->tls[i].path);
		rc->tls[i].w = NULL;
		rc->tls[i].path = NULL;
	}
	if (rc->tls_rewatch)
		event_free(rc->tls_rewatch);
	rc->tls_rewatch = NULL;
}

/* Before the relay binds anything: its TLS files load and the key fits,
 * or it does not start, with the setting named. */
static int relay_preflight(const struct sr_config *cfg)
{
	char err[1024];

	if (cmd_check_relay_tls(&cfg->relay, log_warning, NULL, err, sizeof(err)) != 0) {
		SR_ERROR("", "cannot start: %s", err);
		return -1;
	}
	cmd_check_relay_policy(&cfg->relay, log_warning, NULL);
	return 0;
}

/* The relay's listeners beside the tunnel one, and the file watch. */
/* A relay taking over starts its metrics listener once the old relay,
 * which keeps the port until it exits, let it go: tried every 100 ms for
 * 30 s. The metrics are not the data path: a port still busy then is a
 * warning, not a reason to stop. */
#define METRICS_RETRY_MS 100
#define METRICS_RETRY_TRIES 300

static int start_metrics(struct run_ctx *rc, char *err, size_t errlen)
{
	rc->metrics = relay_metrics_new(rc->base, rc->relay, rc->admin,
					rc->cfg->relay.metrics_listen, err, errlen);
	return rc->metrics ? 0 : -1;
}

static void on_metrics_retry(evutil_socket_t fd, short what, void *arg)
{
	struct run_ctx *rc = arg;
	struct timeval tv = {0, METRICS_RETRY_MS * 1000};
	char err[1024];

	(void)fd;
	(void)what;
	if (!rc->relay || relay_handed_over(rc->relay) || start_metrics(rc, err, sizeof(err)) == 0)
		return;
	if (++rc->metrics_tries < METRICS_RETRY_TRIES) {
		evtimer_add(rc->metrics_retry, &tv);
		return;
	}
	SR_WARN("", "cannot start the metrics listener: %s (the admin API still serves "
		    "/metrics)",
		err);
}

/* The admin API (on the listener a predecessor handed over, admin_fd, or
 * a new one), the takeover's commit, the metrics listener and the file
 * watch. On failure before the commit, the old relay keeps serving. */
static int relay_start_extras(struct run_ctx *rc, const struct sr_config *cfg, int admin_fd)
{
	static const struct relay_admin_cbs acbs = {.reload = reload_relay,
						    .config_json = config_json};
	char err[1024];

	if (cfg->relay.admin_listen) {
		rc->admin = relay_admin_new_fd(rc->base, rc->relay, cfg->relay.admin_listen,
					       admin_fd, cfg->relay.admin_token, &acbs, rc, err,
					       sizeof(err));
		if (!rc->admin) {
			SR_ERROR("", "cannot start the admin API: %s", err);
			if (rc->taking)
				relay_takeover_abandon(rc->relay, "the new relay cannot start its "
								  "admin API");
			return -1;
		}
	} else if (admin_fd >= 0) {
		close(admin_fd);
	}
	if (rc->taking && relay_takeover_commit(rc->relay, err, sizeof(err)) != 0) {
		SR_ERROR("", "takeover failed: %s", err);
		return -1;
	}
	if (rc->admin)
		relay_set_admin_listener(rc->relay, relay_admin_listen_fd(rc->admin),
					 cfg->relay.admin_listen);
	if (cfg->relay.metrics_listen && start_metrics(rc, err, sizeof(err)) != 0) {
		struct timeval tv = {0, METRICS_RETRY_MS * 1000};
		if (!rc->taking) {
			SR_ERROR("", "cannot start the metrics listener: %s", err);
			return -1;
		}
		SR_INFO("", "metrics listener: %s; retrying until the old relay lets it go", err);
		rc->metrics_retry = evtimer_new(rc->base, on_metrics_retry, rc);
		if (!rc->metrics_retry || evtimer_add(rc->metrics_retry, &tv) != 0)
			SR_WARN("", "cannot start the metrics listener: %s", err);
	}
	if (rc->config && cfg->relay.watch_config) {
		rc->watch = sr_watch_new(rc->base, rc->config, cfg->relay.watch_debounce_ms,
					 on_config_changed, rc, err, sizeof(err));
		/* Not fatal: SIGHUP and `ctl reload` still work. */
		if (!rc->watch)
			SR_WARN("", "cannot watch the configuration file (%s); reload it with "
				    "SIGHUP or `sparkrelay ctl reload`",
				err);
	}
	if (cfg->relay.watch_config) {
		rc->tls_rewatch = event_new(rc->base, -1, 0, watch_tls_files, rc);
		if (rc->tls_rewatch)
			watch_tls_files(-1, 0, rc);
	}
	return 0;
}

/* The names (never the values) of the SPARKRELAY_* variables the role
 * reads, comma-separated, and how many. */
static unsigned env_overrides(int is_relay, char *buf, size_t len)
{
	const char *sect = is_relay ? "SPARKRELAY_RELAY_" : "SPARKRELAY_TUNNEL_";
	unsigned n = 0;
	size_t off = 0;

	buf[0] = '\0';
	for (char **e = environ; e && *e; e++) {
		const char *eq = strchr(*e, '=');
		char name[SR_ESC_SIZE(64)], raw[65];
		if (!eq || (strncmp(*e, sect, strlen(sect)) != 0 &&
			    strncmp(*e, "SPARKRELAY_LOG_", 15) != 0))
			continue;
		snprintf(raw, sizeof(raw), "%.*s", (int)(eq - *e < 64 ? eq - *e : 64), *e);
		n++;
		if (off < len) {
			int w = snprintf(buf + off, len - off, "%s%s", off ? "," : "",
					 sr_esc_n(raw, 64, name, sizeof(name)));
			off += w > 0 ? (size_t)w : 0;
		}
	}
	return n;
}

/* One line at start that says what runs: version, file, overrides, and the
 * settings an operator looks for first. */
static void log_startup_summary(const struct run_ctx *rc, const struct sr_config *cfg,
				int is_relay)
{
	char env[512], file[SR_ESC_SIZE(200)];
	unsigned nenv = env_overrides(is_relay, env, sizeof(env));

	if (rc->config)
		sr_esc_n(rc->config, 200, file, sizeof(file));
	if (is_relay) {
		const struct relay_opts *o = &cfg->relay;
		SR_INFO("", "sparkrelay %s (tunnel protocol v%d) relay: config %s%s; %u "
			    "environment override%s%s%s%s; listen %s; %u pool%s, %u tenant%s, %u "
			    "route%s; admin %s%s; metrics %s; auth token %s, client certificates "
			    "%s; log %s/%s",
			SR_VERSION, TUN_CTL_VERSION, rc->config ? file : "(environment only)",
			rc->watch ? " (watched)" : "", nenv, nenv == 1 ? "" : "s", nenv ? " (" : "",
			env, nenv ? ")" : "", o->listen, o->policy.npools ? o->policy.npools : 1,
			o->policy.npools == 1 || !o->policy.npools ? "" : "s", o->policy.ntenants,
			o->policy.ntenants == 1 ? "" : "s", o->policy.nroutes,
			o->policy.nroutes == 1 ? "" : "s",
			o->admin_listen ? o->admin_listen : "off",
			o->admin_listen ? (o->admin_token ? " (token)" : " (no token)") : "",
			o->metrics_listen ? o->metrics_listen : "off",
			o->auth_token ? "required" : "none",
			o->require_client_cert ? "required"
			: o->client_ca_file    ? "verified if shown"
					       : "not asked",
			cfg->log_level ? cfg->log_level : "info",
			cfg->log_format ? cfg->log_format : "text");
	} else {
		const struct sidecar_opts *o = &cfg->tunnel;
		char app[SR_ESC_SIZE(64)];
		SR_INFO("", "sparkrelay %s (tunnel protocol v%d) tunnel: config %s; %u "
			    "environment override%s%s%s%s; %u relay%s, first %s; app \"%s\"; "
			    "client certificate %s; status %s; log %s/%s",
			SR_VERSION, TUN_CTL_VERSION, rc->config ? file : "(environment only)", nenv,
			nenv == 1 ? "" : "s", nenv ? " (" : "", env, nenv ? ")" : "", o->nrelays,
			o->nrelays == 1 ? "" : "s", o->nrelays ? o->relays[0] : "-",
			sr_esc_n(o->app_name, 64, app, sizeof(app)), o->cert_file ? "yes" : "no",
			o->admin_listen ? o->admin_listen : "off",
			cfg->log_level ? cfg->log_level : "info",
			cfg->log_format ? cfg->log_format : "text");
	}
}

/* SSLKEYLOGFILE was set (and is now removed from the environment). */
#define KEYLOG_IGNORED                                                                         \
	"SSLKEYLOGFILE is set and ignored: it would write TLS session secrets to a file"
static int keylog_ignored;

static int run_role(int argc, char **argv, int is_relay)
{
	const char *cmd = is_relay ? "relay" : "tunnel";
	const char *config = NULL;
	struct sr_config cfg;
	struct run_ctx rc;
	struct event *sigterm = NULL, *sigint = NULL, *sighup = NULL;
	struct relay_flags rf;
	char err[1024];
	int rv, status = 1;
	int admin_fd = -1;

	memset(&rc, 0, sizeof(rc));
	memset(&cfg, 0, sizeof(cfg));
	memset(&rf, 0, sizeof(rf));
	sr_log_set_level(-1);
	rv = parse_common(argc, argv, &config, cmd, is_relay ? &rf : NULL);
	if (rv)
		return rv == 1 ? 0 : rv;
	rc.level_from_cli = sr_log_level_cur >= 0;
	if (!rc.level_from_cli)
		sr_log_set_level(SR_LOG_INFO);
	if (load_config(config, is_relay ? CONF_ROLE_RELAY : CONF_ROLE_TUNNEL, &cfg, cmd) != 0)
		return 1;
	if (!rc.level_from_cli && cfg.log_level)
		sr_log_set_level_name(cfg.log_level);
	if (cfg.log_format)
		sr_log_set_format_name(cfg.log_format);
	if (is_relay ? !cfg.have_relay : !cfg.have_tunnel) {
		if (config)
			cmd_eprintf("sparkrelay %s: %s has no \"%s\" section", cmd, config,
				    cmd);
		else
			cmd_eprintf("sparkrelay %s: no configuration: give --config FILE (a "
				    "\"%s\" section), or set SPARKRELAY_%s_* variables "
				    "(docs/configuration.md)",
				    cmd, cmd, is_relay ? "RELAY" : "TUNNEL");
		goto out;
	}
	/* A TLS file the sidecar cannot use is a configuration mistake: say
	 * which file and which key before anything starts. */
	if (!is_relay && conf_check_tunnel_files(&cfg.tunnel, err, sizeof(err)) != 0) {
		cmd_eprintf("sparkrelay %s: %s", cmd, err);
		goto out;
	}
	sr_log_set_role(cmd);
	if (keylog_ignored)
		SR_WARN("", "%s", KEYLOG_IGNORED);
	rc.config = config;
	rc.cfg = &cfg;
	sr_raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	if (is_relay && relay_preflight(&cfg) != 0)
		goto out;

	rc.base = event_base_new();
	if (!rc.base)
		goto out;
	/* Before a takeover: a signal that comes while it runs waits for the
	 * loop instead of killing a process that may own the connections. */
	sigterm = evsignal_new(rc.base, SIGTERM, on_stop_signal, &rc);
	sigint = evsignal_new(rc.base, SIGINT, on_stop_signal, &rc);
	sighup = evsignal_new(rc.base, SIGHUP, on_hup, &rc);
	if (!sigterm || !sigint || !sighup)
		goto out;
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_add(sighup, NULL);
	/* conf applied the table defaults already; do not re-default zeros. */
	if (is_relay && rf.takeover) {
		int none = 0;
		rc.relay = relay_takeover(rc.base, &cfg.relay, &admin_fd, &none, err, sizeof(err));
		rc.taking = rc.relay != NULL;
		if (!rc.relay && none && rf.takeover == TAKEOVER_AUTO) {
			SR_INFO("", "no relay to take over (%s): starting afresh", err);
			rc.relay = relay_new(rc.base, &cfg.relay, err, sizeof(err));
		} else if (!rc.relay) {
			SR_ERROR("", "takeover failed%s: %s",
				 none ? "" : ", the running relay keeps everything", err);
			goto out;
		}
	} else if (is_relay) {
		rc.relay = relay_new(rc.base, &cfg.relay, err, sizeof(err));
	} else {
		rc.sidecar = sidecar_new(rc.base, &cfg.tunnel, NULL, NULL, err, sizeof(err));
	}
	if (!rc.relay && !rc.sidecar) {
		SR_ERROR("", "cannot start: %s", err);
		goto out;
	}
	if (rc.relay) {
		int fd = admin_fd;
		admin_fd = -1; /* relay_start_extras owns it */
		if (relay_start_extras(&rc, &cfg, fd) != 0)
			goto out;
	}
	if (rc.sidecar && cfg.tunnel.admin_listen) {
		rc.sc_admin = sidecar_admin_new(rc.base, rc.sidecar, cfg.tunnel.admin_listen, err,
						sizeof(err));
		if (!rc.sc_admin) {
			SR_ERROR("", "cannot start the status API: %s", err);
			goto out;
		}
	}
	log_startup_summary(&rc, &cfg, is_relay);
	event_base_dispatch(rc.base);
	status = 0;
	if (rc.relay && relay_handed_over(rc.relay)) {
		/* Everything is the new relay's: only our descriptors close,
		 * the metrics port among them (the new relay waits for it). */
		sr_watch_free(rc.watch);
		unwatch_tls_files(&rc);
		relay_metrics_free(rc.metrics);
		relay_admin_free(rc.admin);
		relay_free(rc.relay);
		rc.watch = NULL;
		rc.metrics = NULL;
		rc.admin = NULL;
		rc.relay = NULL;
		if (rf.wait_after_handover && rc.signals == 0) {
			SR_INFO("", "handed over; waiting for SIGTERM (--wait-after-handover)");
			rc.idle = 1;
			event_base_dispatch(rc.base);
		}
	}
	SR_INFO("", "stopped");
out:
	if (sigterm)
		event_free(sigterm);
	if (sigint)
		event_free(sigint);
	if (sighup)
		event_free(sighup);
	if (rc.metrics_retry)
		event_free(rc.metrics_retry);
	if (admin_fd >= 0)
		close(admin_fd);
	sr_watch_free(rc.watch);
	unwatch_tls_files(&rc);
	relay_metrics_free(rc.metrics);
	relay_admin_free(rc.admin);
	sidecar_admin_free(rc.sc_admin);
	relay_free(rc.relay);
	sidecar_free(rc.sidecar);
	if (rc.base) {
		/* Deferred bufferevent callbacks hold references until they run. */
		event_base_loop(rc.base, EVLOOP_NONBLOCK);
		event_base_free(rc.base);
	}
	conf_free(&cfg);
	return status;
}

static const char check_config_usage[] =
    "usage: sparkrelay check-config [-q | --print] FILE\n"
    "Validates FILE and the SPARKRELAY_* environment overrides of its sections as the\n"
    "relay or sidecar would load them, and for the relay loads its TLS certificate,\n"
    "key and client CA. Warnings (routes never used, CIDRs with host bits) go to\n"
    "stderr; exit status 1 on any error, 2 on a usage error, else 0.\n"
    "  --print      also print the effective configuration, secrets redacted\n"
    "  -q, --quiet  no \"configuration OK\" line\n";

struct check_out {
	unsigned warnings;
};

static void check_warning(void *arg, const char *msg)
{
	struct check_out *co = arg;

	co->warnings++;
	fprintf(stderr, "warning: %s\n", msg);
}

/* The relay section's checks beyond the loader's: TLS files, the fleet's
 * secret and etcd files (read as the relay reads them at start), policy
 * warnings. */
static int check_config_relay(const struct sr_config *cfg, struct check_out *co)
{
	const struct relay_fleet_opts *fl = &cfg->relay.fleet;
	struct fleet_secret *sec = NULL;
	char err[1024];

	char why[900];

	if (cmd_check_relay_tls(&cfg->relay, check_warning, co, err, sizeof(err)) != 0 ||
	    (fl->netcd && fl->secret_file &&
	     fleet_secret_load(fl->secret_file, &sec, err, sizeof(err)) != 0)) {
		cmd_eprintf("%s", err);
		return -1;
	}
	fleet_secret_free(sec);
	if (fl->netcd && sr_curl_check_files(fl->etcd_ca, fl->etcd_cert, fl->etcd_key, why,
					     sizeof(why)) != 0) {
		cmd_eprintf("relay.fleet.etcd_ca, etcd_cert, etcd_key: %s", why);
		return -1;
	}
	cmd_check_relay_policy(&cfg->relay, check_warning, co);
	return 0;
}

static int cmd_check_config(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"print", no_argument, NULL, 'p'},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct check_out co = {0};
	struct sr_config cfg;
	char err[1024];
	int ch, print = 0, quiet = 0, rv = 1;
	const char *file;

	optind = 1;
	while ((ch = cmd_getopt(argc, argv, "pqh", longopts, "check-config")) != -1) {
		switch (ch) {
		case 'p':
			print = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'h':
			fputs(check_config_usage, stdout);
			return 0;
		default:
			fputs(check_config_usage, stderr);
			return 2;
		}
	}
	if (optind + 1 != argc) {
		fprintf(stderr, "sparkrelay check-config: %s\n",
			optind >= argc ? "FILE is required" : "one FILE only");
		fputs(check_config_usage, stderr);
		return 2;
	}
	file = argv[optind];
	memset(&cfg, 0, sizeof(cfg));
	if (conf_load_file_roles(file, CONF_ROLES_OF_FILE, &cfg, err, sizeof(err)) != 0) {
		cmd_eprintf("%s", err);
		return 1;
	}
	if (!cfg.have_relay && !cfg.have_tunnel) {
		/* both commands would refuse it */
		cmd_eprintf("%s: neither a \"relay\" nor a \"tunnel\" section", file);
		goto out;
	}
	if (cfg.have_tunnel && conf_check_tunnel_files(&cfg.tunnel, err, sizeof(err)) != 0) {
		cmd_eprintf("%s: %s", file, err);
		goto out;
	}
	if (cfg.have_relay && check_config_relay(&cfg, &co) != 0)
		goto out;
	if (print)
		conf_dump(&cfg, stdout);
	if (!quiet) {
		char more[64] = "";
		if (co.warnings)
			snprintf(more, sizeof(more), ", %u warning%s", co.warnings,
				 co.warnings == 1 ? "" : "s");
		cmd_eprintf("%s: configuration OK (%s%s%s)%s", file,
			    cfg.have_relay ? "relay" : "",
			    cfg.have_relay && cfg.have_tunnel ? ", " : "",
			    cfg.have_tunnel ? "tunnel" : "", more);
	}
	rv = 0;
out:
	conf_free(&cfg);
	return rv;
}

/* mkdir -p: the missing folders of path, each mode 0700 (it will hold a
 * CA key). Existing folders are left as they are. */
static int make_dirs(const char *path, char *err, size_t errlen)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf)) {
		snprintf(err, errlen, "%s: bad folder name", path);
		return -1;
	}
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
			snprintf(err, errlen, "cannot create %s: %s", buf, strerror(errno));
			return -1;
		}
		buf[i] = path[i];
	}
	return 0;
}

#define GEN_CERTS_MAX_SANS 16

static int cmd_gen_certs(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"client", required_argument, NULL, 'c'},
		{"san", required_argument, NULL, 's'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *client = NULL, *sans[GEN_CERTS_MAX_SANS + 1] = {NULL};
	const char *dir;
	unsigned nsans = 0;
	char err[512];
	int kept = 0;
	int ch, rv;

	optind = 1;
	while ((ch = cmd_getopt(argc, argv, "h", longopts, "gen-certs")) != -1) {
		switch (ch) {
		case 'c':
			client = optarg;
			break;
		case 's':
			if (nsans == GEN_CERTS_MAX_SANS) {
				fprintf(stderr, "sparkrelay gen-certs: at most %d --san\n",
					GEN_CERTS_MAX_SANS);
				return 2;
			}
			sans[nsans++] = optarg;
			break;
		case 'h':
		default:
			fprintf(
			    ch == 'h' ? stdout : stderr,
			    "usage: sparkrelay gen-certs DIR [NAME...]\n"
			    "       sparkrelay gen-certs DIR --client NAME [--san SAN]...\n"
			    "Writes a development CA (ca.pem/.key), relay.pem/.key and "
			    "sidecar.pem/.key\n"
			    "into DIR (created, mode 0700, if missing). NAMEs (DNS names or "
			    "IPs) are added\n"
			    "to the relay certificate: those are valid 30 days, the CA a year. "
			    "A CA\n"
			    "already in DIR is kept and signs them, unless it would expire "
			    "first (remove\n"
			    "ca.pem and ca.key for a new one).\n"
			    "With --client, issues client-NAME.pem/.key instead: a client "
			    "certificate with\n"
			    "CN NAME from the CA already in DIR, for an mTLS tenant\n"
			    "(relay.tenants[].match.cn); each --san adds a DNS name, IP or URI "
			    "(match.san).\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (optind >= argc || (client && optind + 1 != argc) || (!client && nsans)) {
		fprintf(stderr, "sparkrelay gen-certs: %s (see --help)\n",
			optind >= argc	? "DIR is required"
			: client	? "--client takes no relay NAMEs"
					: "--san goes with --client");
		return 2;
	}
	dir = argv[optind];
	if (client) {
		rv = sr_devcert_write_client(dir, client, sans, 30, err, sizeof(err));
	} else {
		rv = make_dirs(dir, err, sizeof(err)) != 0
			 ? SR_EIO
			 : sr_devcert_write_keep_ca(dir, (const char *const *)argv + optind + 1,
						    30, &kept, err, sizeof(err));
	}
	if (rv != 0) {
		cmd_eprintf("sparkrelay gen-certs: %s", err);
		return 1;
	}
	if (client)
		cmd_printf("wrote %s/client-%s.pem and .key (CN %s, valid 30 days)", dir,
			   client, client);
	else
		cmd_printf("wrote development certificates to %s (valid 30 days)%s", dir,
			   kept == 1 ? "; kept the CA already there, which signed them"
			   : kept == 2
			       ? "; the CA there would have expired before them: made a "
				 "new one (give the sidecars the new ca.pem, issue client "
				 "certificates again)"
			       : "");
	return 0;
}

/* `config-docs`: the reference on stdout; --help says so briefly. */
static int cmd_config_docs(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("usage: sparkrelay config-docs\n"
		       "Prints the configuration reference (Markdown) generated from the\n"
		       "settings tables: every key, its type, bounds and default, and its\n"
		       "SPARKRELAY_* variable (docs/configuration.md).\n");
		return 0;
	}
	if (argc > 1) {
		fprintf(stderr, "usage: sparkrelay config-docs (no arguments)\n");
		return 2;
	}
	return conf_write_docs(stdout) == 0 ? 0 : 1;
}

/* `version`: the version; --help says so. */
static int cmd_version(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("usage: sparkrelay version (or sparkrelay -V, --version)\n"
		       "Prints the version and the tunnel protocol version.\n");
		return 0;
	}
	if (argc >= 2) {
		cmd_eprintf("sparkrelay version: unexpected argument \"%s\" (--help: usage)",
			    argv[1]);
		return 2;
	}
	return print_version();
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";

	/* libcurl writes the TLS secrets of every connection it makes (to the
	 * Kubernetes API server, with the service account's token in it; to
	 * etcd) to the file this names, readable by all. The daemons say so in
	 * their log (run_role), the other commands here. */
	if (getenv("SSLKEYLOGFILE")) {
		unsetenv("SSLKEYLOGFILE");
		keylog_ignored = 1;
		if (strcmp(cmd, "ctl") == 0) /* the other one that uses libcurl */
			fprintf(stderr, "sparkrelay: %s\n", KEYLOG_IGNORED);
	}

	if (argc < 2 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
	    strcmp(cmd, "help") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0)
		return print_version();
	if (strcmp(cmd, "relay") == 0)
		return run_role(argc - 1, argv + 1, 1);
	if (strcmp(cmd, "tunnel") == 0)
		return run_role(argc - 1, argv + 1, 0);
	if (strcmp(cmd, "demo") == 0)
		return cmd_demo(argc - 1, argv + 1);
	if (strcmp(cmd, "ctl") == 0)
		return cmd_ctl(argc - 1, argv + 1);
	if (strcmp(cmd, "check-config") == 0)
		return cmd_check_config(argc - 1, argv + 1);
	if (strcmp(cmd, "route") == 0)
		return cmd_route(argc - 1, argv + 1);
	if (strcmp(cmd, "config-docs") == 0)
		return cmd_config_docs(argc - 1, argv + 1);
	if (strcmp(cmd, "gen-certs") == 0)
		return cmd_gen_certs(argc - 1, argv + 1);
	if (strcmp(cmd, "version") == 0)
		return cmd_version(argc - 1, argv + 1);
	{
		char esc[SR_ESC_SIZE(32)];
		fprintf(stderr, "sparkrelay: unknown command \"%s\"\n\n",
			sr_esc_n(cmd, 32, esc, sizeof(esc)));
	}
	usage(stderr);
	return 2;
}
