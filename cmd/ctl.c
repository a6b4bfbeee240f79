/* `sparkrelay ctl`: the admin command line, a thin client of the relay's
 * admin HTTP API (relay/relay_admin.h). It is a short-lived CLI, so the
 * blocking libcurl easy API is the right tool here (the daemons use the
 * multi API inside their loop). Exit codes: 0 ok, 1 API or network error,
 * 2 usage error. */
#include "cmd/cmd.h"
#include "common/sr_text.h"

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
enum ctl_output { OUT_TABLE, OUT_JSON };

struct ctl {
	const char *url;   /* without a trailing slash */
	const char *token; /* NULL: none */
	char token_src[300]; /* where token came from, for a 401 (escaped) */
	int token_given;     /* --token or --token-file: the environment is not read */
	enum ctl_output out;
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
	       "                      [-o table|json] COMMAND [ARGS]\n"
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
	       "  route explain [--cn CN] [--token T] [--app APP] [--addr IP]\n"
	       "                              which tenant and route a sidecar would get, and "
	       "why\n"
	       "\n"
	       "options:\n"
	       "  --admin URL        admin API base URL (env SPARKRELAY_ADMIN_URL,\n"
	       "                     default " CTL_DEFAULT_URL ")\n"
	       "  --token TOKEN      bearer token (prefer the environment or --token-file:\n"
	       "                     argv is visible to others)\n"
	       "  --token-file FILE  read the bearer token from FILE\n"
	       "                     without either: env SPARKRELAY_ADMIN_TOKEN, else\n"
	       "                     SPARKRELAY_RELAY_ADMIN_TOKEN (what the relay reads)\n"
	       "  -o, --output FMT   table (default) or json\n"
	       "  -h, --help         this help; `sparkrelay ctl COMMAND --help` for a command\n"
	       "\n"
	       "exit status: 0 ok, 1 API or connection error, 2 usage error\n");
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
	      "configuration loaded, not draining), 1 otherwise with the reason.\n"},
    {"sessions", "usage: sparkrelay ctl [-o table|json] sessions\n"
		 "GET /v1/sessions: one row per sidecar tunnel (peer address, certificate CN,\n"
		 "tenant, lease, age, streams, bytes each way, last PING round trip).\n"},
    {"leases", "usage: sparkrelay ctl [-o table|json] leases\n"
	       "GET /v1/leases: one row per lease (id, app, tenant, pool, route, advertised\n"
	       "host, ports by role, whether a tunnel carries it, waiting and active executor\n"
	       "connections).\n"},
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
    {"route", "usage: sparkrelay ctl route explain [--cn CN] [--token T] [--app APP] "
	      "[--addr IP]\n"
	      "POST /v1/route/explain: which tenant and route a sidecar registering with this\n"
	      "certificate CN, bearer token, app name and source address would get, and why.\n"
	      "Every field is optional; a missing one is treated as absent.\n"},
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
		    struct ctl_resp *r)
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
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CTL_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, CTL_TOTAL_TIMEOUT_MS);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
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
static int ctl_call(const struct ctl *c, const char *what, const char *method, const char *path,
		    const char *body, struct ctl_resp *r)
{
	int rv = ctl_http(c, method, path, body, r);

	if (rv != CTL_OK)
		return rv;
	if (r->code < 200 || r->code > 299) {
		rv = api_error(c, what, r);
		resp_free(r);
	}
	return rv;
}

/* ---- tables --------------------------------------------------------- */

enum col_fmt { F_STR, F_INT, F_BYTES, F_AGE, F_BOOL, F_PORTS, F_US, F_ACTIVE_TOTAL };

struct col {
	const char *head;
	const char *key;
	enum col_fmt fmt;
	const char *key2; /* F_ACTIVE_TOTAL: the total */
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

static void fmt_cell(const struct col *c, json_t *row, char *b, size_t n)
{
	json_t *v = json_object_get(row, c->key);
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
	case F_BYTES:
		fmt_bytes(b, n, (double)i);
		break;
	case F_AGE: {
		long long s = i / 1000;
		if (s < 60)
			snprintf(b, n, "%llds", s);
		else if (s < 3600)
			snprintf(b, n, "%lldm%02llds", s / 60, s % 60);
		else if (s < 86400)
			snprintf(b, n, "%lldh%02lldm", s / 3600, (s / 60) % 60);
		else
			snprintf(b, n, "%lldd%02lldh", s / 86400, (s / 3600) % 24);
		break;
	}
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
	}
}

#define CELL_MAX 128

/* Print an array of objects as aligned columns (two spaces apart). */
static int print_table(json_t *arr, const struct col *cols, size_t ncols)
{
	size_t nrows = json_array_size(arr), w[16] = {0};
	char(*cells)[CELL_MAX];

	if (ncols > sizeof(w) / sizeof(w[0]))
		return CTL_EAPI;
	cells = calloc((nrows + 1) * ncols, CELL_MAX);
	if (!cells) {
		fprintf(stderr, "sparkrelay ctl: out of memory\n");
		return CTL_EAPI;
	}
	for (size_t c = 0; c < ncols; c++)
		snprintf(cells[c], CELL_MAX, "%s", cols[c].head);
	for (size_t r = 0; r < nrows; r++)
		for (size_t c = 0; c < ncols; c++)
			fmt_cell(&cols[c], json_array_get(arr, r), cells[(r + 1) * ncols + c],
				 CELL_MAX);
	for (size_t r = 0; r <= nrows; r++)
		for (size_t c = 0; c < ncols; c++) {
			size_t l = strlen(cells[r * ncols + c]);
			if (l > w[c])
				w[c] = l;
		}
	for (size_t r = 0; r <= nrows; r++) {
		for (size_t c = 0; c < ncols; c++) {
			const char *s = cells[r * ncols + c];
			if (c + 1 == ncols)
				printf("%s\n", s);
			else
				printf("%-*s  ", (int)w[c], s);
		}
	}
	free(cells);
	return CTL_OK;
}

static const struct col session_cols[] = {
    {"PEER", "peer", F_STR, NULL},
    {"IDENTITY", "identity", F_STR, NULL},
    {"TENANT", "tenant", F_STR, NULL},
    {"LEASE", "lease", F_STR, NULL},
    {"AGE", "age_ms", F_AGE, NULL},
    {"STREAMS", "streams_active", F_INT, NULL},
    {"OPENED", "streams_opened", F_INT, NULL},
    {"TO_DRIVER", "bytes_to_driver", F_BYTES, NULL},
    {"TO_EXECUTOR", "bytes_to_executor", F_BYTES, NULL},
    {"RTT", "rtt_us", F_US, NULL},
};

static const struct col lease_cols[] = {
    {"ID", "id", F_STR, NULL},
    {"APP", "app", F_STR, NULL},
    {"TENANT", "tenant", F_STR, NULL},
    {"POOL", "pool", F_STR, NULL},
    {"ROUTE", "route", F_STR, NULL},
    {"HOST", "host", F_STR, NULL},
    {"PORTS", "ports", F_PORTS, NULL},
    {"ATTACHED", "attached", F_BOOL, NULL},
    {"PEER", "peer", F_STR, NULL},
    {"PENDING", "pending", F_INT, NULL},
    {"CONNS", "conns_active", F_ACTIVE_TOTAL, "conns_total"},
    {"DRIVER_REFUSED", "driver_refused", F_INT, NULL},
};

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
	json_t *j;
	int rv = ctl_call(c, what, "GET", path, NULL, &r);

	if (rv)
		return rv;
	if (c->out == OUT_JSON) {
		rv = print_json_body(&r);
	} else {
		j = json_loadb(r.body, r.len, 0, NULL);
		if (!json_is_array(j)) {
			fprintf(stderr, "sparkrelay ctl: %s: expected a JSON array from %s\n",
				what, path);
			rv = CTL_EAPI;
		} else {
			rv = print_table(j, cols, ncols);
		}
		json_decref(j);
	}
	resp_free(&r);
	return rv;
}

/* health / ready: the answer is printed either way; exit 0 iff 200. */
static int do_probe(const struct ctl *c, const char *path)
{
	struct ctl_resp r;
	int rv = ctl_http(c, "GET", path, NULL, &r);

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

static int do_explain(const struct ctl *c, const char *cn, const char *token, const char *app,
		      const char *addr)
{
	json_t *req = json_object();
	char *body;
	struct ctl_resp r;
	int rv;

	if (!req)
		return CTL_EAPI;
	if (cn)
		json_object_set_new(req, "cn", json_string(cn));
	if (token)
		json_object_set_new(req, "token", json_string(token));
	if (app)
		json_object_set_new(req, "app", json_string(app));
	if (addr)
		json_object_set_new(req, "addr", json_string(addr));
	body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body) {
		fprintf(stderr, "sparkrelay ctl: route explain: arguments must be UTF-8\n");
		return CTL_EUSAGE;
	}
	rv = ctl_call(c, "route explain", "POST", "/v1/route/explain", body, &r);
	free(body);
	if (rv)
		return rv;
	if (c->out == OUT_JSON) {
		json_t *j = json_pack("{s:s}", "explanation", r.body);
		if (j) {
			json_dumpf(j, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
			putchar('\n');
			json_decref(j);
		}
	} else {
		put_text(stdout, r.body, r.len);
	}
	resp_free(&r);
	return CTL_OK;
}

/* ---- argument parsing -------------------------------------------------- */

static int parse_output(struct ctl *c, const char *v)
{
	if (strcmp(v, "table") == 0)
		c->out = OUT_TABLE;
	else if (strcmp(v, "json") == 0)
		c->out = OUT_JSON;
	else {
		fprintf(stderr, "sparkrelay ctl: -o takes table or json (got \"%s\")\n", v);
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
		fprintf(stderr, "sparkrelay ctl: cannot read the token file %s\n", esc);
		return CTL_EUSAGE;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
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

/* Options after the command: -o and --help everywhere, plus route explain's
 * own. argv[0] is the command word. */
struct sub_opts {
	const char *cn, *token, *app, *addr;
	int help;
};

static int parse_sub(struct ctl *c, int argc, char **argv, int explain, struct sub_opts *so,
		     int *first_arg)
{
	static const struct option plain[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static const struct option route[] = {
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {"cn", required_argument, NULL, 'C'},
	    {"token", required_argument, NULL, 'T'},
	    {"app", required_argument, NULL, 'A'},
	    {"addr", required_argument, NULL, 'I'},
	    {NULL, 0, NULL, 0},
	};
	int ch;

	memset(so, 0, sizeof(*so));
	optind = 0; /* full re-initialisation of GNU getopt */
	opterr = 1;
	while ((ch = getopt_long(argc, argv, "+o:h", explain ? route : plain, NULL)) != -1) {
		switch (ch) {
		case 'o':
			if (parse_output(c, optarg))
				return CTL_EUSAGE;
			break;
		case 'h':
			so->help = 1;
			break;
		case 'C':
			so->cn = optarg;
			break;
		case 'T':
			so->token = optarg;
			break;
		case 'A':
			so->app = optarg;
			break;
		case 'I':
			so->addr = optarg;
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

	if (!cmd_help(cmd)) {
		fprintf(stderr, "sparkrelay ctl: unknown command \"%s\"\n\n", cmd);
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
		return sub_usage(cmd);
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
	return do_explain(c, so.cn, so.token, so.app, so.addr);
}

int cmd_ctl(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"admin", required_argument, NULL, 'a'},
	    {"token", required_argument, NULL, 't'},
	    {"token-file", required_argument, NULL, 'f'},
	    {"output", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
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
	while ((ch = getopt_long(argc, argv, "+o:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			c.url = optarg;
			break;
		case 't':
			c.token_given = 1;
			if (!*optarg) {
				c.token = NULL; /* --token "": explicitly none */
				break;
			}
			if ((rv = set_token(&c, optarg, "--token")) != CTL_OK)
				goto out;
			break;
		case 'f':
			c.token_given = 1;
			if ((rv = read_token_file(&c, optarg)) != CTL_OK)
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
