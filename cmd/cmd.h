/* Subcommands implemented outside main.c. */
#ifndef CMD_H
#define CMD_H

#include <stddef.h>

#include <jansson.h>

/* `sparkrelay demo`: argv[0] is "demo". Returns the exit status. */
struct option;
/* getopt_long for the commands: the same, but a bad option is reported by
 * us, escaped ("sparkrelay WHO: bad option ..."), not by getopt, which
 * would print its bytes as they are. Returns '?' for it. */
int cmd_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
	       const char *who);

int cmd_demo(int argc, char **argv);

/* fprintf(stderr, ...) for a line that may quote a path, an argument or an
 * error text: control characters (C1 too) are written as \xNN, so none
 * reaches the terminal; the line ends with one newline. */
void cmd_eprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same on stdout (a report that quotes a path). */
void cmd_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* `sparkrelay ctl`: argv[0] is "ctl". Exit status 0 ok, 1 API or
 * connection error, 2 usage error. */
int cmd_ctl(int argc, char **argv);

/* A warning of a check, one line without a newline (escaped). */
typedef void (*cmd_warn_fn)(void *arg, const char *msg);

struct relay_opts;

/* Relay side of `check-config` (check_relay.c), also run by `relay` at start:
 * load relay.tls.cert, .key and .client_ca as the relay does and check that
 * the key matches. Returns 0, or -1 with one line in err naming the file and
 * the setting ("cannot load certificate /x (relay.tls.cert): ..."). A
 * certificate outside its validity window is a warning through fn (may be
 * NULL). */
int cmd_check_relay_tls(const struct relay_opts *o, cmd_warn_fn fn, void *arg, char *err,
			size_t errlen);
/* Warnings about routes and CIDRs that load but cannot mean what was
 * written: a route after a catch-all one of its tenant, which is never used;
 * a CIDR with host bits set ("10.1.2.3/8" is 10.0.0.0/8). */
void cmd_check_relay_policy(const struct relay_opts *o, cmd_warn_fn fn, void *arg);

/* What `route explain` asks about: a registering sidecar. */
#define CMD_ROUTE_MAX_SANS 8
struct cmd_route_query {
	const char *cn, *token, *app, *addr; /* NULL: absent */
	const char *sans[CMD_ROUTE_MAX_SANS];
	size_t nsans;
};
/* Exit statuses of `route explain`, online (ctl) and offline. */
enum { CMD_ROUTE_OK = 0, CMD_ROUTE_REFUSED = 1, CMD_ROUTE_USAGE = 2, CMD_ROUTE_ERROR = 3 };

/* Answer q from the relay configuration in FILE (and SPARKRELAY_RELAY_*
 * variables), without a relay; json: print the answer object instead of
 * its explanation. Returns an exit status above. */
int cmd_route_explain_file(const char *config, const struct cmd_route_query *q, int json);
/* Print an answer object (relay_explain_json, relay_view.h) as text or
 * JSON; returns CMD_ROUTE_OK or CMD_ROUTE_REFUSED, CMD_ROUTE_ERROR if it is
 * not such an object. */
int cmd_route_print(json_t *answer, int json);

/* `sparkrelay route explain` (route.c): argv[0] is "route". Exit status 0: a
 * route is found, 1: the registration would be refused, 2: usage error,
 * 3: the configuration (or the admin API) could not be read. */
int cmd_route(int argc, char **argv);

#endif
