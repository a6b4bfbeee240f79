/* `sparkrelay ctl`: the admin command line, a thin client of the relay's
 * admin HTTP API (relay/relay_admin.h). It is a short-lived CLI, so the
 * blocking libcurl easy API is the right tool here (the daemons use the
 * multi API inside their loop). Exit codes: 0 ok, 1 API or network error,
 * 2 usage error. */
#include "cmd/cmd.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#define CTL_DEFAULT_URL "http://127.0.0.1:9090"
#define CTL_CONNECT_TIMEOUT_MS 3000L
#define CTL_TOTAL_TIMEOUT_MS 10000L
/* A relay with thousands of leases answers with a few MiB at most. */
#define CTL_MAX_RESPONSE (32u << 20)
#define CTL_TOKEN_MAX 4096
/* Where the token comes from, first found wins: --token, --token-file, then
 * SPARKRELAY_ADMIN_TOKEN, then the variable the relay itself reads its token
 * from, so that `ctl` inside the relay's container needs no extra setup. */
#define CTL_ENV_TOKEN "SPARKRELAY_ADMIN_TOKEN"
#define CTL_ENV_RELAY_TOKEN "SPARKRELAY_RELAY_ADMIN_TOKEN"

enum { CTL_OK = 0, CTL_EAPI = 1, CTL_EUSAGE = 2 };
enum ctl_output { OUT_TABLE, OUT_JSON, OUT_WIDE };

struct ctl {
	const char *url;   /* without a trailing slash */
	const char *token; /* NULL: none */
	char token_src[300]; /* where token came from, for a 401 (escaped) */
	int token_given;     /* --token or --token-file: the environment is not read */
	enum ctl_output out;
	int no_headers;
	const char *tenant; /* --tenant: only rows of this tenant */
	const char *app;    /* --app: only rows whose app matches this pattern */
	char *url_buf;
	char *token_buf;
};

struct ctl_resp {
	long code;
	char *body; /* NUL-terminated */
	size_t len;
	int too_big;
};

/* ---- usage ------------------------------------------------------------ */

static void usage(FILE *f)
{
	fprintf(
	    f, "usage: sparkrelay ctl [--admin URL] [--token TOKEN | --token-file FILE]\n"
	       "                      [-o table|wide|json] COMMAND [ARGS]\n"
	       "\n"
	       "Talks to a relay's admin API (relay.admin.listen).\n"
	       "\n"
	       "commands:\n"
	       "  health                      exit 0 iff the relay answers /healthz\n"
	       "  ready                       exit 0 iff the relay is ready (/readyz)\n"
	       "  sessions                    list connected sidecar tunnels\n"
	       "  leases                      list port leases\n"
	       "  lease revoke ID             end a lease now (closes its tunnel and ports)\n"
	       "  drain                       drain the relay gracefully (it exits when done)\n"
	       "  reload                      re-read the relay's configuration file\n"
	       "  metrics                     print the Prometheus metrics\n"
	       "  config                      print the effective configuration (secrets "
	       "redacted)\n"
	       "  route explain [--cn CN] [--san SAN]... [--token T] [--app APP] [--addr IP]\n"
	       "                [-o text|json] [--config FILE]\n"
	       "                              which tenant and route a sidecar would get, and "
	       "why\n"
	       "                              (with --config: from FILE, without a relay)\n"
	       "  help [COMMAND]              this text, or a command's\n"
	       "\n"
	       "options:\n"
	       "  --admin URL        admin API base URL (env SPARKRELAY_ADMIN_URL,\n"
	       "                     default " CTL_DEFAULT_URL ")\n"
	       "  --token TOKEN      bearer token (prefer the environment or --token-file:\n"
	       "                     argv is visible to others)\n"
	       "  --token-file FILE  read the bearer token from FILE\n"
	       "                     without either: env SPARKRELAY_ADMIN_TOKEN, else\n"
	       "                     SPARKRELAY_RELAY_ADMIN_TOKEN (what the relay reads)\n"
	       "  -o, --output FMT   table (default), wide (more columns) or json\n"
	       "  --tenant T         sessions, leases: only those of tenant T\n"
	       "  --app PATTERN      sessions, leases: only apps that match (* and ?)\n"
	       "  --no-headers       tables without their header line\n"
	       "  -h, --help         this help; `sparkrelay ctl COMMAND --help` for a command\n"
	       "  -V, --version      print the version\n"
	       "\n"
	       "exit status: 0 ok, 1 API or connection error, 2 usage error\n"
	       "(route explain: 0 a route, 1 refused, 2 usage error, 3 other errors)\n");
}

struct ctl_cmd_help {
	const char *name;
	const char *text;
};

static const struct ctl_cmd_help cmd_helps[] = {
    {"health",
     "usage: sparkrelay ctl health\n"
     "GET /healthz. Prints the answer; exits 0 iff it is 200 (the relay's loop runs).\n"},
    {"ready", "usage: sparkrelay ctl ready\n"
	      "GET /readyz. Prints the answer; exits 0 iff the relay is ready (listeners up,\n"
	      "configuration loaded, not draining, a fleet relay joined its fleet), 1\n"
	      "otherwise with the reason.\n"},
    {"sessions", "usage: sparkrelay ctl sessions [-o table|wide|json] [--tenant T] [--app PATTERN]\n"
		 "                               [--no-headers]\n"
		 "GET /v1/sessions: one row per sidecar tunnel (peer address, certificate CN,\n"
		 "tenant, app, lease, age, streams, bytes each way, last PING round trip;\n"
		 "wide: streams opened and reset too).\n"},
    {"leases", "usage: sparkrelay ctl leases [-o table|wide|json] [--tenant T] [--app PATTERN]\n"
	       "                             [--no-headers]\n"
	       "GET /v1/leases: one row per lease (id, app, tenant, pool, advertised host, ports\n"
	       "by role, whether a tunnel carries it, waiting and active/total executor\n"
	       "connections; HELD and AWAY: connections held open while the tunnel is away and\n"
	       "for how long; EXPIRES: grace left for a lease without a tunnel. wide: route,\n"
	       "sidecar address, held bytes, resumes, bytes replayed, streams lost).\n"},
    {"lease", "usage: sparkrelay ctl lease revoke ID\n"
	      "DELETE /v1/leases/ID: close the lease's tunnel and listeners now and free its\n"
	      "ports. Exits 1 if there is no such lease.\n"},
    {"drain", "usage: sparkrelay ctl drain\n"
	      "POST /v1/drain: GOAWAY to every tunnel, refuse new leases and executors, and\n"
	      "exit once streams finish (or relay.drain_timeout_ms passes).\n"},
    {"reload", "usage: sparkrelay ctl reload\n"
	       "POST /v1/reload: re-read the configuration file. A bad file is refused with\n"
	       "the reason (exit 1) and the running configuration stays in force.\n"},
    {"metrics", "usage: sparkrelay ctl metrics\n"
		"GET /metrics: the Prometheus text exposition, unchanged.\n"},
    {"config", "usage: sparkrelay ctl config\n"
	       "GET /v1/config: the effective configuration as JSON, secrets redacted.\n"},
    {"route", "usage: sparkrelay ctl route explain [--cn CN] [--san SAN]... [--token T] [--app APP]\n"
	      "                                   [--addr IP] [-o text|json] [--config FILE]\n"
	      "POST /v1/route/explain: which tenant and route a sidecar registering with this\n"
	      "certificate CN and SANs, bearer token, app name and source address would get,\n"
	      "and why. Every field is optional; a missing one is treated as absent. With\n"
	      "--config, the answer comes from FILE, without a relay (sparkrelay route explain).\n"
	      "exit status: 0 a route, 1 refused, 2 usage error, 3 other errors.\n"},
    {"help", "usage: sparkrelay ctl help [COMMAND]\n"
	     "The commands and options, or one command's usage.\n"},
};

static const char *cmd_help(const char *name)
{
	for (size_t i = 0; i < sizeof(cmd_helps) / sizeof(cmd_helps[0]); i++)
		if (strcmp(cmd_helps[i].name, name) == 0)
			return cmd_helps[i].text;
	return NULL;
}

/* ---- HTTP ------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct ctl_resp *r = arg;
	size_t add = size * n;
	char *nb;

	if (r->len + add > CTL_MAX_RESPONSE) {
		r->too_big = 1;
		return 0; /* makes curl fail with CURLE_WRITE_ERROR */
	}
	nb = realloc(r->body, r->len + add + 1);
	if (!nb)
		return 0;
	memcpy(nb + r->len, p, add);
	r->body = nb;
	r->len += add;
	r->body[r->len] = '\0';
	return add;
}

/* One request. body (may be NULL) is sent as JSON. Returns 0 with the
 * status in r->code (whatever it is), or CTL_EAPI after printing why the
 * admin API could not be reached. */
static int ctl_http(const struct ctl *c, const char *method, const char *path, const char *body,
		    const char *accept, struct ctl_resp *r)
{
	char url[2048], errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = NULL, *h;
	char *auth = NULL;
	CURL *curl;
	CURLcode rc;
	int status = CTL_EAPI;

	memset(r, 0, sizeof(*r));
	if ((size_t)snprintf(url, sizeof(url), "%s%s", c->url, path) >= sizeof(url)) {
		fprintf(stderr, "sparkrelay ctl: URL too long\n");
		return CTL_EAPI;
	}
	curl = curl_easy_init();
	if (!curl) {
		fprintf(stderr, "sparkrelay ctl: cannot initialise libcurl\n");
		return CTL_EAPI;
	}
	if (c->token) {
		size_t n = strlen(c->token) + sizeof("Authorization: Bearer ");
		auth = malloc(n);
		if (!auth)
			goto out;
		snprintf(auth, n, "Authorization: Bearer %s", c->token);
		if (!(h = curl_slist_append(hdrs, auth)))
			goto out;
		hdrs = h;
	}
	if (body) {
		if (!(h = curl_slist_append(hdrs, "Content-Type: application/json")))
			goto out;
		hdrs = h;
	}
	if (accept) {
		char line[128];
		snprintf(line, sizeof(line), "Accept: %s", accept);
		if (!(h = curl_slist_append(hdrs, line)))
			goto out;
		hdrs = h;
	}
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CTL_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, CTL_TOTAL_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	/* No proxy from the environment: it would get the admin token (in
	 * clear: the admin API is plain HTTP) and could answer for the relay. */
	curl_easy_setopt(curl, CURLOPT_PROXY, "");
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "sparkrelay-ctl/" SR_VERSION);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, r);
	if (hdrs)
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "");
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	}
	rc = curl_easy_perform(curl);
	if (rc != CURLE_OK) {
		if (r->too_big)
			fprintf(stderr, "sparkrelay ctl: the answer from %s is over %u MiB\n",
				url, CTL_MAX_RESPONSE >> 20);
		else
			fprintf(stderr,
				"sparkrelay ctl: cannot reach the admin API at %s: %s\n",
				c->url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
		goto out;
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->code);
	if (!r->body) {
		r->body = calloc(1, 1);
		if (!r->body)
			goto out;
	}
	status = CTL_OK;
out:
	curl_slist_free_all(hdrs);
	if (auth) {
		memset(auth, 0, strlen(auth));
		free(auth);
	}
	curl_easy_cleanup(curl);
	return status;
}

/* Text from the relay for a terminal: printable ASCII, newlines and tabs as
 * they are, every other byte as \xNN, so an escape sequence in a name
 * cannot reach the terminal. */
static void put_text(FILE *f, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t')
			fputc(c, f);
		else
			fprintf(f, "\\x%02x", c);
	}
}

static void resp_free(struct ctl_resp *r)
{
	free(r->body);
	r->body = NULL;
}

/* Print why a non-2xx answer failed ({"error": ...} when the body has it). */
static int api_error(const struct ctl *c, const char *what, const struct ctl_resp *r)
{
	json_t *j;
	const char *msg = NULL;

	if (r->code == 401) {
		if (c->token)
			fprintf(stderr,
				"sparkrelay ctl: unauthorized: pass --token or " CTL_ENV_TOKEN
				" (the relay refused the token from %s)\n",
				c->token_src);
		else
			fprintf(stderr,
				"sparkrelay ctl: unauthorized: pass --token or " CTL_ENV_TOKEN
				" (no token: none of --token, --token-file, " CTL_ENV_TOKEN
				" or " CTL_ENV_RELAY_TOKEN " is set)\n");
		return CTL_EAPI;
	}
	j = json_loadb(r->body, r->len, 0, NULL);
	if (j)
		msg = json_string_value(json_object_get(j, "error"));
	fprintf(stderr, "sparkrelay ctl: %s: ", what);
	if (msg) {
		put_text(stderr, msg, strlen(msg));
		fprintf(stderr, " (HTTP %ld)\n", r->code);
	} else {
		fprintf(stderr, "HTTP %ld%s", r->code, r->len ? ": " : "");
		put_text(stderr, r->body, r->len < 200 ? r->len : 200);
		fputc('\n', stderr);
	}
	json_decref(j);
	return CTL_EAPI;
}

/* GET/POST/DELETE and turn everything but 2xx into an error message. On
 * success the caller frees r. */
static int ctl_call_accept(const struct ctl *c, const char *what, const char *method,
			   const char *path, const char *body, const char *accept,
			   struct ctl_resp *r)
{
	int rv = ctl_http(c, method, path, body, accept, r);

	if (rv != CTL_OK)
		return rv;
	if (r->code < 200 || r->code > 299) {
		rv = api_error(c, what, r);
		resp_free(r);
	}
	return rv;
}

static int ctl_call(const struct ctl *c, const char *what, const char *method, const char *path,
		    const char *body, struct ctl_resp *r)
{
	return ctl_call_accept(c, what, method, path, body, NULL, r);
}

/* ---- tables --------------------------------------------------------- */

enum col_fmt {
	F_STR,
	F_INT,
	F_BYTES,
	F_AGE,    /* milliseconds as 5s, 4m59s, 2h05m */
	F_AGE0,   /* the same, 0 or null as "-" */
	F_BOOL,
	F_PORTS,
	F_US,
	F_ACTIVE_TOTAL,
	F_INT0,   /* 0 as "-" */
	F_SUM,    /* the sum of the integers of an object */
};

struct col {
	const char *head;
	const char *key;  /* a member, or "a.b" for a member of a member */
	enum col_fmt fmt;
	const char *key2; /* F_ACTIVE_TOTAL: the total */
	int wide;         /* shown with -o wide only */
};

static void fmt_bytes(char *b, size_t n, double v)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	size_t u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(b, n, "%.0f B", v);
	else
		snprintf(b, n, "%.1f %s", v, units[u]);
}

static void fmt_age(char *b, size_t n, long long ms)
{
	long long s = ms / 1000;

	if (s < 60)
		snprintf(b, n, "%llds", s);
	else if (s < 3600)
		snprintf(b, n, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(b, n, "%lldh%02lldm", s / 3600, (s / 60) % 60);
	else
		snprintf(b, n, "%lldd%02lldh", s / 86400, (s / 3600) % 24);
}

/* row[key], or row[a][b] for a key "a.b". */
static json_t *row_get(json_t *row, const char *key)
{
	const char *dot = strchr(key, '.');
	char first[64];

	if (!dot)
		return json_object_get(row, key);
	snprintf(first, sizeof(first), "%.*s", (int)(dot - key), key);
	return json_object_get(json_object_get(row, first), dot + 1);
}

static void fmt_cell(const struct col *c, json_t *row, char *b, size_t n)
{
	json_t *v = row_get(row, c->key);
	long long i = json_is_integer(v) ? json_integer_value(v) : 0;

	if (!v || json_is_null(v)) {
		snprintf(b, n, "-");
		return;
	}
	switch (c->fmt) {
	case F_STR:
		/* Names and ids come from sidecars (the app) or the relay: escaped,
		 * so that a terminal never sees their control bytes. */
		if (json_is_string(v) && *json_string_value(v))
			sr_esc(json_string_value(v), b, n);
		else
			snprintf(b, n, "-");
		break;
	case F_INT:
		snprintf(b, n, "%lld", i);
		break;
	case F_INT0:
		if (i)
			snprintf(b, n, "%lld", i);
		else
			snprintf(b, n, "-");
		break;
	case F_BYTES:
		fmt_bytes(b, n, (double)i);
		break;
	case F_AGE:
		fmt_age(b, n, i);
		break;
	case F_AGE0:
		if (i)
			fmt_age(b, n, i);
		else
			snprintf(b, n, "-");
		break;
	case F_BOOL:
		snprintf(b, n, "%s", json_is_true(v) ? "yes" : "no");
		break;
	case F_US:
		if (i == 0)
			snprintf(b, n, "-");
		else if (i < 10000)
			snprintf(b, n, "%lldus", i);
		else
			snprintf(b, n, "%.1fms", (double)i / 1000);
		break;
	case F_PORTS: {
		const char *k;
		json_t *p;
		size_t off = 0;
		b[0] = '\0';
		json_object_foreach(v, k, p)
		{
			char ek[32];
			int w = snprintf(b + off, n - off, "%s%s=%lld", off ? "," : "",
					 sr_esc(k, ek, sizeof(ek)), json_integer_value(p));
			if (w < 0 || (size_t)w >= n - off)
				break;
			off += (size_t)w;
		}
		if (!off)
			snprintf(b, n, "-");
		break;
	}
	case F_ACTIVE_TOTAL:
		snprintf(b, n, "%lld/%lld", i,
			 json_integer_value(json_object_get(row, c->key2)));
		break;
	case F_SUM: {
		const char *k;
		json_t *p;
		long long sum = 0;
		json_object_foreach(v, k, p) sum += json_integer_value(p);
		snprintf(b, n, "%lld", sum);
		break;
	}
	}
}

#define CELL_MAX 128
#define COLS_MAX 24

/* Print an array of objects as aligned columns (two spaces apart): the
 * columns for this output (wide ones with -o wide), the header unless
 * --no-headers. */
static int print_table(const struct ctl *c, json_t *arr, const struct col *all, size_t nall)
{
	size_t nrows = json_array_size(arr), w[COLS_MAX] = {0}, ncols = 0, first;
	const struct col *cols[COLS_MAX];
	char(*cells)[CELL_MAX];

	for (size_t i = 0; i < nall && ncols < COLS_MAX; i++)
		if (!all[i].wide || c->out == OUT_WIDE)
			cols[ncols++] = &all[i];
	cells = calloc((nrows + 1) * ncols, CELL_MAX);
	if (!cells) {
		fprintf(stderr, "sparkrelay ctl: out of memory\n");
		return CTL_EAPI;
	}
	for (size_t k = 0; k < ncols; k++)
		snprintf(cells[k], CELL_MAX, "%s", cols[k]->head);
	for (size_t r = 0; r < nrows; r++)
		for (size_t k = 0; k < ncols; k++)
			fmt_cell(cols[k], json_array_get(arr, r), cells[(r + 1) * ncols + k],
				 CELL_MAX);
	first = c->no_headers ? 1 : 0;
	for (size_t r = first; r <= nrows; r++)
		for (size_t k = 0; k < ncols; k++) {
			size_t l = strlen(cells[r * ncols + k]);
			if (l > w[k])
				w[k] = l;
		}
	for (size_t r = first; r <= nrows; r++) {
		for (size_t k = 0; k < ncols; k++) {
			const char *s = cells[r * ncols + k];
			if (k + 1 == ncols)
				printf("%s\n", s);
			else
				printf("%-*s  ", (int)w[k], s);
		}
	}
	free(cells);
	return CTL_OK;
}

static const struct col session_cols[] = {
    {"PEER", "peer", F_STR, NULL, 0},
    {"IDENTITY", "identity", F_STR, NULL, 0},
    {"TENANT", "tenant", F_STR, NULL, 0},
    {"APP", "app", F_STR, NULL, 0},
    {"LEASE", "lease", F_STR, NULL, 0},
    {"AGE", "age_ms", F_AGE, NULL, 0},
    {"STREAMS", "streams_active", F_INT, NULL, 0},
    {"OPENED", "streams_opened", F_INT, NULL, 1},
    {"RESET", "streams_reset", F_INT, NULL, 1},
    {"TO_DRIVER", "bytes_to_driver", F_BYTES, NULL, 0},
    {"TO_EXECUTOR", "bytes_to_executor", F_BYTES, NULL, 0},
    {"RTT", "rtt_us", F_US, NULL, 0},
};

static const struct col lease_cols[] = {
    {"ID", "id", F_STR, NULL, 0},
    {"APP", "app", F_STR, NULL, 0},
    {"TENANT", "tenant", F_STR, NULL, 0},
    {"POOL", "pool", F_STR, NULL, 0},
    {"ROUTE", "route", F_STR, NULL, 1},
    {"HOST", "host", F_STR, NULL, 0},
    {"PORTS", "ports", F_PORTS, NULL, 0},
    {"ATTACHED", "attached", F_BOOL, NULL, 0},
    {"TUNNELS", "tunnels", F_INT, NULL, 1},
    {"PEER", "peer", F_STR, NULL, 1},
    {"PENDING", "pending", F_INT, NULL, 0},
    {"CONNS", "conns_active", F_ACTIVE_TOTAL, "conns_total", 0},
    {"HELD", "resumption.streams_held", F_INT0, NULL, 0},
    {"AWAY", "resumption.away_ms", F_AGE0, NULL, 0},
    {"EXPIRES", "expires_in_ms", F_AGE, NULL, 0},
    {"DRIVER_REFUSED", "driver_refused", F_INT, NULL, 0},
    {"HELD_BYTES", "resumption.bytes_held", F_BYTES, NULL, 1},
    {"RESUMES", "resumption.resumes", F_INT, NULL, 1},
    {"REPLAYED", "resumption.bytes_replayed", F_BYTES, NULL, 1},
    {"LOST", "resumption.streams_lost", F_SUM, NULL, 1},
};

/* --tenant and --app: keep the rows that match (in place). */
static void filter_rows(const struct ctl *c, json_t *arr)
{
	for (size_t i = json_array_size(arr); i-- > 0;) {
		json_t *row = json_array_get(arr, i);
		const char *t = json_string_value(json_object_get(row, "tenant"));
		const char *a = json_string_value(json_object_get(row, "app"));
		if ((c->tenant && (!t || strcmp(t, c->tenant) != 0)) ||
		    (c->app && (!a || fnmatch(c->app, a, 0) != 0)))
			json_array_remove(arr, i);
	}
}

/* ---- commands -------------------------------------------------------- */

static int print_json_body(const struct ctl_resp *r)
{
	json_error_t e;
	json_t *j = json_loadb(r->body, r->len, 0, &e);
	char near[SR_ESC_SIZE(60)];

	if (!j) {
		fprintf(stderr, "sparkrelay ctl: the admin API answered malformed JSON: %s\n",
			sr_mask_n(e.text, 60, near, sizeof(near)));
		return CTL_EAPI;
	}
	/* ENSURE_ASCII: \uXXXX for everything else, C1 controls included. */
	json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
	putchar('\n');
	json_decref(j);
	return CTL_OK;
}

static int do_list(const struct ctl *c, const char *what, const char *path,
		   const struct col *cols, size_t ncols)
{
	struct ctl_resp r;
	json_error_t e;
	json_t *j;
	int rv = ctl_call(c, what, "GET", path, NULL, &r);

	if (rv)
		return rv;
	j = json_loadb(r.body, r.len, 0, &e);
	if (!json_is_array(j)) {
		fprintf(stderr, "sparkrelay ctl: %s: expected a JSON array from %s\n", what, path);
		rv = CTL_EAPI;
	} else {
		filter_rows(c, j);
		if (c->out == OUT_JSON) {
			/* ENSURE_ASCII: \uXXXX for everything else, C1 controls included. */
			json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
			putchar('\n');
		} else {
			rv = print_table(c, j, cols, ncols);
		}
	}
	json_decref(j);
	resp_free(&r);
	return rv;
}

/* health / ready: the answer is printed either way; exit 0 iff 200. */
static int do_probe(const struct ctl *c, const char *path)
{
	struct ctl_resp r;
	int rv = ctl_http(c, "GET", path, NULL, NULL, &r);

	if (rv)
		return rv;
	if (r.code == 200 || r.code == 503) {
		put_text(stdout, r.body, r.len);
		if (r.len && r.body[r.len - 1] != '\n')
			putchar('\n');
		rv = r.code == 200 ? CTL_OK : CTL_EAPI;
	} else {
		rv = api_error(c, path + 1, &r);
	}
	resp_free(&r);
	return rv;
}

static int do_raw(const struct ctl *c, const char *what, const char *path)
{
	struct ctl_resp r;
	int rv = ctl_call(c, what, "GET", path, NULL, &r);

	if (rv)
		return rv;
	put_text(stdout, r.body, r.len);
	resp_free(&r);
	return CTL_OK;
}

/* POST/DELETE whose answer is {"result": ...}: a line for people, the JSON
 * for -o json. */
static int do_action(const struct ctl *c, const char *what, const char *method,
		     const char *path, const char *done_text)
{
	struct ctl_resp r;
	int rv = ctl_call(c, what, method, path, NULL, &r);

	if (rv)
		return rv;
	if (c->out == OUT_JSON)
		rv = print_json_body(&r);
	else
		printf("%s\n", done_text);
	resp_free(&r);
	return rv;
}

static int do_revoke(const struct ctl *c, const char *id)
{
	char path[512], text[256];
	CURL *curl = curl_easy_init();
	char *esc = curl ? curl_easy_escape(curl, id, 0) : NULL;
	int rv;

	if (!esc) {
		curl_easy_cleanup(curl);
		fprintf(stderr, "sparkrelay ctl: out of memory\n");
		return CTL_EAPI;
	}
	snprintf(path, sizeof(path), "/v1/leases/%s", esc);
	curl_free(esc);
	curl_easy_cleanup(curl);
	snprintf(text, sizeof(text), "lease %s revoked", id);
	rv = do_action(c, "lease revoke", "DELETE", path, text);
	return rv;
}

/* Options after the command: -o and --help everywhere, filters for lists,
 * and route explain's own. */
struct sub_opts {
	struct cmd_route_query q;
	const char *config; /* route explain --config: offline */
	int help;
};

static int do_explain(const struct ctl *c, const struct sub_opts *so)
{
	const struct cmd_route_query *q = &so->q;
	json_t *req, *sans, *answer;
	char *body;
	struct ctl_resp r;
	int rv;

	if (so->config)
		return cmd_route_explain_file(so->config, q, c->out == OUT_JSON);
	if (q->addr && *q->addr) {
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		if (sr_parse_addr(q->addr, 0, &ss, &sslen) != 0) {
			char esc[SR_ESC_SIZE(64)];
			fprintf(stderr, "sparkrelay ctl: route explain: --addr: not a numeric IPv4 "
					"or IPv6 address: \"%s\"\n",
				sr_esc_n(q->addr, 64, esc, sizeof(esc)));
			return CMD_ROUTE_USAGE;
		}
	}
	req = json_object();
	sans = json_array();
	if (!req || !sans) {
		json_decref(req);
		json_decref(sans);
		return CMD_ROUTE_ERROR;
	}
	if (q->cn)
		json_object_set_new(req, "cn", json_string(q->cn));
	for (size_t i = 0; i < q->nsans; i++)
		json_array_append_new(sans, json_string(q->sans[i]));
	json_object_set_new(req, "sans", sans);
	if (q->token)
		json_object_set_new(req, "token", json_string(q->token));
	if (q->app)
		json_object_set_new(req, "app", json_string(q->app));
	if (q->addr)
		json_object_set_new(req, "addr", json_string(q->addr));
	body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body) {
		fprintf(stderr, "sparkrelay ctl: route explain: arguments must be UTF-8\n");
		return CMD_ROUTE_USAGE;
	}
	rv = ctl_call_accept(c, "route explain", "POST", "/v1/route/explain", body,
			     "application/json", &r);
	free(body);
	if (rv)
		return CMD_ROUTE_ERROR;
	answer = json_loadb(r.body, r.len, 0, NULL);
	if (answer)
		rv = cmd_route_print(answer, c->out == OUT_JSON);
	else
		/* A relay from before JSON answers: its text, and no verdict. */
		rv = (put_text(stdout, r.body, r.len), CMD_ROUTE_ERROR);
	json_decref(answer);
	resp_free(&r);
	return rv;
}

/* ---- argument parsing -------------------------------------------------- */

static int parse_output(struct ctl *c, const char *v)
{
	if (strcmp(v, "table") == 0 || strcmp(v, "text") == 0)
		c->out = OUT_TABLE;
	else if (strcmp(v, "wide") == 0)
		c->out = OUT_WIDE;
	else if (strcmp(v, "json") == 0)
		c->out = OUT_JSON;
	else {
		char esc[SR_ESC_SIZE(32)];
		fprintf(stderr, "sparkrelay ctl: -o takes table, wide or json (got \"%s\")\n",
			sr_esc_n(v, 32, esc, sizeof(esc)));
		return CTL_EUSAGE;
	}
	return CTL_OK;
}

/* A token goes into an HTTP header: printable ASCII only, bounded. */
static int token_ok(const char *t)
{
	size_t n = strlen(t);

	if (n == 0 || n > CTL_TOKEN_MAX)
		return 0;
	for (; *t; t++)
		if ((unsigned char)*t < 0x20 || (unsigned char)*t >= 0x7f)
			return 0;
	return 1;
}

static int set_token(struct ctl *c, const char *token, const char *src)
{
	char esc[SR_ESC_SIZE(64)];

	if (!token_ok(token)) {
		fprintf(stderr, "sparkrelay ctl: the token from %s is empty, over %d bytes, or has "
				"characters other than printable ASCII\n",
			sr_esc_n(src, 200, esc, sizeof(esc)), CTL_TOKEN_MAX);
		return CTL_EUSAGE;
	}
	c->token = token;
	snprintf(c->token_src, sizeof(c->token_src), "%s", sr_esc_n(src, 200, esc, sizeof(esc)));
	return CTL_OK;
}

static int read_token_file(struct ctl *c, const char *path)
{
	FILE *f = fopen(path, "r");
	char buf[CTL_TOKEN_MAX + 2], src[256], esc[SR_ESC_SIZE(200)];
	size_t n;
	int rv;

	sr_esc_n(path, 200, esc, sizeof(esc));
	if (!f) {
		fprintf(stderr, "sparkrelay ctl: cannot read the token file %s: %s\n", esc,
			strerror(errno));
		return CTL_EUSAGE;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	if (ferror(f)) { /* a directory, say */
		fprintf(stderr, "sparkrelay ctl: cannot read the token file %s: %s\n", esc,
			strerror(errno));
		fclose(f);
		return CTL_EUSAGE;
	}
	fclose(f);
	buf[n] = '\0';
	/* One trailing line end or blank run is how files are written. */
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	snprintf(src, sizeof(src), "--token-file %s", esc);
	if (!token_ok(buf)) {
		memset(buf, 0, sizeof(buf));
		fprintf(stderr, "sparkrelay ctl: the token in %s is empty, over %d bytes, or has "
				"characters other than printable ASCII\n",
			esc, CTL_TOKEN_MAX);
		return CTL_EUSAGE;
	}
	free(c->token_buf);
	c->token_buf = strdup(buf);
	memset(buf, 0, sizeof(buf));
	if (!c->token_buf)
		return CTL_EAPI;
	rv = set_token(c, c->token_buf, src);
	return rv;
}

static int parse_sub(struct ctl *c, int argc, char **argv, int explain, struct sub_opts *so,
		     int *first_arg)
{
	static const struct option plain[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {"tenant", required_argument, NULL, 't'},
	    {"app", required_argument, NULL, 'a'},
	    {"no-headers", no_argument, NULL, 'N'},
	    {NULL, 0, NULL, 0},
	};
	static const struct option route[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {"cn", required_argument, NULL, 'C'},
	    {"san", required_argument, NULL, 'S'},
	    {"token", required_argument, NULL, 'T'},
	    {"app", required_argument, NULL, 'A'},
	    {"addr", required_argument, NULL, 'I'},
	    {"config", required_argument, NULL, 'c'},
	    {NULL, 0, NULL, 0},
	};
	int ch;

	memset(so, 0, sizeof(*so));
	optind = 0; /* full re-initialisation of GNU getopt */
	while ((ch = cmd_getopt(argc, argv, "+o:h", explain ? route : plain, "ctl")) != -1) {
		switch (ch) {
		case 'o':
			if (parse_output(c, optarg))
				return CTL_EUSAGE;
			break;
		case 'h':
			so->help = 1;
			break;
		case 't':
			c->tenant = optarg;
			break;
		case 'a':
			c->app = optarg;
			break;
		case 'N':
			c->no_headers = 1;
			break;
		case 'C':
			so->q.cn = optarg;
			break;
		case 'S':
			if (so->q.nsans == CMD_ROUTE_MAX_SANS) {
				fprintf(stderr, "sparkrelay ctl: route explain: at most %d --san\n",
					CMD_ROUTE_MAX_SANS);
				return CTL_EUSAGE;
			}
			so->q.sans[so->q.nsans++] = optarg;
			break;
		case 'T':
			so->q.token = optarg;
			break;
		case 'A':
			so->q.app = optarg;
			break;
		case 'I':
			so->q.addr = optarg;
			break;
		case 'c':
			so->config = optarg;
			break;
		default:
			return CTL_EUSAGE;
		}
	}
	*first_arg = optind;
	return CTL_OK;
}

static int sub_usage(const char *cmd)
{
	fputs(cmd_help(cmd), stderr);
	return CTL_EUSAGE;
}

static int run(struct ctl *c, int argc, char **argv)
{
	const char *cmd = argv[0];
	struct sub_opts so;
	int first, nargs, explain = 0;

	if (strcmp(cmd, "help") == 0) {
		if (argc >= 2 && cmd_help(argv[1])) {
			fputs(cmd_help(argv[1]), stdout);
			return CTL_OK;
		}
		if (argc >= 2 && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0) {
			char esc[SR_ESC_SIZE(32)];
			fprintf(stderr, "sparkrelay ctl: no command \"%s\"\n\n",
				sr_esc_n(argv[1], 32, esc, sizeof(esc)));
			usage(stderr);
			return CTL_EUSAGE;
		}
		usage(stdout);
		return CTL_OK;
	}
	if (!cmd_help(cmd)) {
		char esc[SR_ESC_SIZE(32)];
		fprintf(stderr, "sparkrelay ctl: unknown command \"%s\"\n\n",
			sr_esc_n(cmd, 32, esc, sizeof(esc)));
		usage(stderr);
		return CTL_EUSAGE;
	}
	/* "route explain" and "lease revoke" take a verb before their options. */
	if (strcmp(cmd, "route") == 0 || strcmp(cmd, "lease") == 0) {
		int is_help =
		    argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
		const char *verb = strcmp(cmd, "route") == 0 ? "explain" : "revoke";
		if (is_help) {
			fputs(cmd_help(cmd), stdout);
			return CTL_OK;
		}
		if (argc < 2 || strcmp(argv[1], verb) != 0)
			return sub_usage(cmd);
		explain = strcmp(cmd, "route") == 0;
		argc--;
		argv++;
	}
	if (parse_sub(c, argc, argv, explain, &so, &first))
		return explain ? (sub_usage(cmd), CMD_ROUTE_USAGE) : sub_usage(cmd);
	if (so.help) {
		fputs(cmd_help(cmd), stdout);
		return CTL_OK;
	}
	nargs = argc - first;
	if (strcmp(cmd, "lease") == 0) {
		if (nargs != 1 || !*argv[first])
			return sub_usage(cmd);
		return do_revoke(c, argv[first]);
	}
	if (nargs != 0)
		return sub_usage(cmd);
	if (strcmp(cmd, "health") == 0)
		return do_probe(c, "/healthz");
	if (strcmp(cmd, "ready") == 0)
		return do_probe(c, "/readyz");
	if (strcmp(cmd, "sessions") == 0)
		return do_list(c, "sessions", "/v1/sessions", session_cols,
			       sizeof(session_cols) / sizeof(session_cols[0]));
	if (strcmp(cmd, "leases") == 0)
		return do_list(c, "leases", "/v1/leases", lease_cols,
			       sizeof(lease_cols) / sizeof(lease_cols[0]));
	if (strcmp(cmd, "drain") == 0)
		return do_action(c, "drain", "POST", "/v1/drain",
				 "draining: the relay exits once its streams finish");
	if (strcmp(cmd, "reload") == 0)
		return do_action(c, "reload", "POST", "/v1/reload", "configuration reloaded");
	if (strcmp(cmd, "metrics") == 0)
		return do_raw(c, "metrics", "/metrics");
	if (strcmp(cmd, "config") == 0) {
		struct ctl_resp r;
		int rv = ctl_call(c, "config", "GET", "/v1/config", NULL, &r);
		if (rv)
			return rv;
		rv = print_json_body(&r);
		resp_free(&r);
		return rv;
	}
	return do_explain(c, &so);
}

int cmd_ctl(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"admin", required_argument, NULL, 'a'},
	    {"token", required_argument, NULL, 't'},
	    {"token-file", required_argument, NULL, 'f'},
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {"tenant", required_argument, NULL, 'T'},
	    {"app", required_argument, NULL, 'A'},
	    {"no-headers", no_argument, NULL, 'N'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	struct ctl c;
	const char *env;
	size_t n;
	int ch, rv;

	memset(&c, 0, sizeof(c));
	c.url = (env = getenv("SPARKRELAY_ADMIN_URL")) && *env ? env : CTL_DEFAULT_URL;
	optind = 0;
	/* "+": stop at the command word, whose own options follow it. */
	while ((ch = cmd_getopt(argc, argv, "+o:hV", longopts, "ctl")) != -1) {
		switch (ch) {
		case 'T':
			c.tenant = optarg;
			break;
		case 'A':
			c.app = optarg;
			break;
		case 'N':
			c.no_headers = 1;
			break;
		case 'V':
			printf("sparkrelay %s\n", SR_VERSION);
			rv = CTL_OK;
			goto out;
		case 'a':
			c.url = optarg;
			break;
		case 't':
		case 'f':
			if (c.token_given) {
				fprintf(stderr, "sparkrelay ctl: give one of --token and "
						"--token-file, once\n");
				rv = CTL_EUSAGE;
				goto out;
			}
			c.token_given = 1;
			if (ch == 'f') {
				if ((rv = read_token_file(&c, optarg)) != CTL_OK)
					goto out;
				break;
			}
			if (!*optarg) {
				c.token = NULL; /* --token "": explicitly none */
				break;
			}
			if ((rv = set_token(&c, optarg, "--token")) != CTL_OK)
				goto out;
			break;
		case 'o':
			if ((rv = parse_output(&c, optarg)) != CTL_OK)
				goto out;
			break;
		case 'h':
			usage(stdout);
			rv = CTL_OK;
			goto out;
		default:
			usage(stderr);
			rv = CTL_EUSAGE;
			goto out;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		rv = CTL_EUSAGE;
		goto out;
	}
	if (!c.token_given) {
		if ((env = getenv(CTL_ENV_TOKEN)) && *env)
			rv = set_token(&c, env, CTL_ENV_TOKEN);
		else if ((env = getenv(CTL_ENV_RELAY_TOKEN)) && *env)
			rv = set_token(&c, env, CTL_ENV_RELAY_TOKEN);
		else
			rv = CTL_OK;
		if (rv != CTL_OK)
			goto out;
	}
	n = strlen(c.url);
	while (n && c.url[n - 1] == '/')
		n--;
	c.url_buf = strndup(c.url, n);
	if (!c.url_buf || !n) {
		fprintf(stderr, "sparkrelay ctl: --admin needs a URL such as %s\n",
			CTL_DEFAULT_URL);
		rv = CTL_EUSAGE;
		goto out;
	}
	/* It reaches the terminal in error messages: a URL is printable ASCII. */
	for (const char *p = c.url_buf; *p; p++) {
		if (*p <= ' ' || *p > '~') {
			fprintf(stderr, "sparkrelay ctl: the admin URL (--admin or "
					"SPARKRELAY_ADMIN_URL) has a byte that is not printable "
					"ASCII\n");
			rv = CTL_EUSAGE;
			goto out;
		}
	}
	c.url = c.url_buf;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		fprintf(stderr, "sparkrelay ctl: cannot initialise libcurl\n");
		rv = CTL_EAPI;
		goto out;
	}
	rv = run(&c, argc - optind, argv + optind);
	curl_global_cleanup();
out:
	free(c.url_buf);
	if (c.token_buf) {
		memset(c.token_buf, 0, strlen(c.token_buf));
		free(c.token_buf);
	}
	fflush(stdout);
	return rv;
}
