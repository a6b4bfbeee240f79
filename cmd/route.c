/* `sparkrelay route explain --config FILE`: which tenant, route and pool a
 * sidecar would get, answered from a configuration file without a relay
 * (to try a change before it is applied, as `promtool test rules` does).
 * `sparkrelay ctl route explain` asks a running relay the same question and
 * prints the answer with cmd_route_print. */
#include "cmd/cmd.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "conf/conf.h"
#include "relay/relay_policy.h"
#include "relay/relay_view.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char route_usage[] =
    "usage: sparkrelay route explain --config FILE [--cn CN] [--san SAN]... [--token T]\n"
    "                                [--app APP] [--addr IP] [-o text|json]\n"
    "Which tenant, route and pool a sidecar with this certificate CN and SANs, bearer\n"
    "token, app name and source address would get under the relay configuration in\n"
    "FILE (and SPARKRELAY_RELAY_* variables), and why; no relay is needed. Every field\n"
    "is optional; a missing one is treated as absent.\n"
    "exit status: 0 a route is found, 1 the registration would be refused, 2 usage\n"
    "error, 3 the configuration cannot be loaded.\n"
    "A running relay: sparkrelay ctl route explain ...\n";

int cmd_route_print(json_t *answer, int json)
{
	json_t *allowed = json_object_get(answer, "allowed");
	const char *text = json_string_value(json_object_get(answer, "explanation"));

	if (!json_is_boolean(allowed) || !text) {
		fprintf(stderr, "sparkrelay route explain: the answer is not an explanation\n");
		return CMD_ROUTE_ERROR;
	}
	if (json) {
		/* ENSURE_ASCII: \uXXXX for everything else, C1 controls included. */
		json_dumpf(answer, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
		putchar('\n');
	} else {
		/* Names come from the configuration and the question: printable
		 * ASCII and newlines as they are, every other byte as \xNN, so no
		 * escape sequence reaches the terminal. */
		size_t n = strlen(text);
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)text[i];
			if ((c >= 0x20 && c < 0x7f) || c == '\n')
				putchar(c);
			else
				printf("\\x%02x", c);
		}
		if (n && text[n - 1] != '\n')
			putchar('\n');
	}
	return json_is_true(allowed) ? CMD_ROUTE_OK : CMD_ROUTE_REFUSED;
}

int cmd_route_explain_file(const char *config, const struct cmd_route_query *q, int json)
{
	struct sr_config cfg;
	struct relay_policy *pol = NULL;
	struct relay_identity id;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	char err[1024];
	json_t *answer = NULL;
	int rv = CMD_ROUTE_ERROR;

	memset(&cfg, 0, sizeof(cfg));
	memset(&id, 0, sizeof(id));
	if (q->addr && *q->addr) {
		if (sr_parse_addr(q->addr, 0, &ss, &sslen) != 0) {
			char esc[SR_ESC_SIZE(64)];
			fprintf(stderr,
				"sparkrelay route explain: --addr: not a numeric IPv4 or IPv6 "
				"address: \"%s\"\n",
				sr_esc_n(q->addr, 64, esc, sizeof(esc)));
			return CMD_ROUTE_USAGE;
		}
		id.addr = (const struct sockaddr *)&ss;
	}
	if (conf_load_file_roles(config, CONF_ROLE_RELAY, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "sparkrelay route explain: %s\n", err);
		return CMD_ROUTE_ERROR;
	}
	if (!cfg.have_relay) {
		fprintf(stderr, "sparkrelay route explain: %s has no \"relay\" section\n", config);
		goto out;
	}
	pol = relay_policy_new(&cfg.relay.policy, &cfg.relay.pool, err, sizeof(err));
	if (!pol) {
		fprintf(stderr, "sparkrelay route explain: %s\n", err);
		goto out;
	}
	id.cn = q->cn;
	id.sans = q->sans;
	id.nsans = q->nsans;
	id.token = q->token;
	answer = relay_explain_json(pol, &id, q->app);
	if (!answer) {
		fprintf(stderr, "sparkrelay route explain: out of memory\n");
		goto out;
	}
	rv = cmd_route_print(answer, json);
out:
	json_decref(answer);
	relay_policy_free(pol);
	conf_free(&cfg);
	return rv;
}

int cmd_route(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'}, {"cn", required_argument, NULL, 'C'},
	    {"san", required_argument, NULL, 'S'},    {"token", required_argument, NULL, 'T'},
	    {"app", required_argument, NULL, 'A'},    {"addr", required_argument, NULL, 'I'},
	    {"output", required_argument, NULL, 'o'}, {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct cmd_route_query q;
	const char *config = NULL;
	int ch, json = 0;

	memset(&q, 0, sizeof(q));
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
			  strcmp(argv[1], "help") == 0)) {
		fputs(route_usage, stdout);
		return 0;
	}
	if (argc < 2 || strcmp(argv[1], "explain") != 0) {
		fputs(route_usage, stderr);
		return CMD_ROUTE_USAGE;
	}
	argc--;
	argv++;
	optind = 0;
	while ((ch = cmd_getopt(argc, argv, "c:o:h", longopts, "route")) != -1) {
		switch (ch) {
		case 'c':
			config = optarg;
			break;
		case 'C':
			q.cn = optarg;
			break;
		case 'S':
			if (q.nsans == CMD_ROUTE_MAX_SANS) {
				fprintf(stderr, "sparkrelay route explain: at most %d --san\n",
					CMD_ROUTE_MAX_SANS);
				return CMD_ROUTE_USAGE;
			}
			q.sans[q.nsans++] = optarg;
			break;
		case 'T':
			q.token = optarg;
			break;
		case 'A':
			q.app = optarg;
			break;
		case 'I':
			q.addr = optarg;
			break;
		case 'o':
			if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0) {
				fprintf(stderr, "sparkrelay route explain: -o takes text or json\n");
				return CMD_ROUTE_USAGE;
			}
			json = strcmp(optarg, "json") == 0;
			break;
		case 'h':
			fputs(route_usage, stdout);
			return 0;
		default:
			fputs(route_usage, stderr);
			return CMD_ROUTE_USAGE;
		}
	}
	if (optind != argc || !config) {
		fprintf(stderr, "%s%s", config ? "" : "sparkrelay route explain: --config FILE is "
						       "required (or ask a running relay: "
						       "sparkrelay ctl route explain)\n",
			route_usage);
		return CMD_ROUTE_USAGE;
	}
	return cmd_route_explain_file(config, &q, json);
}
