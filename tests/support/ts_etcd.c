#include "tests/support/ts_etcd.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "common/sr_devcert.h"
#include "tests/support/ts_net.h"
#include "tests/support/ts_pki.h"

#define ETCD_BIN "etcd"
#define HEALTHY_WITHIN_MS 20000
#define GONE_WITHIN_MS 5000

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

int ts_etcd_installed(void)
{
	const char *path = getenv("PATH");
	char buf[512];

	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		snprintf(buf, sizeof(buf), "%.*s/" ETCD_BIN, (int)n, path);
		if (access(buf, X_OK) == 0)
			return 1;
		path += n + (path[n] == ':');
	}
	return 0;
}

/* ---- removing a folder tree (also from the reaper, so no cmocka here) ---- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void rm_tree(const char *path)
{
	if (path[0])
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the reaper ---------------------------------------------------------- */

/* Reads the pid of the running etcd (0: none) from fd 3 until the test
 * process closes it or dies; then kills that etcd and removes the folder.
 * Never returns. */
static void reaper_main(const char *dir)
{
	int32_t v, pid = 0;

	signal(SIGINT, SIG_IGN); /* Ctrl-C on the test: still clean up after it */
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	while (read(3, &v, sizeof(v)) == (ssize_t)sizeof(v))
		pid = v;
	if (pid > 0) {
		kill(pid, SIGKILL);
		kill(pid, SIGCONT);
		for (int i = 0; i < GONE_WITHIN_MS / 20 && kill(pid, 0) == 0; i++)
			sleep_ms(20);
	}
	rm_tree(dir);
	_exit(0);
}

static void reaper_start(struct ts_etcd *e)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) != 0)
		fail_msg("pipe: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		/* its own session: a signal to the test's process group spares it */
		setsid();
		if (dup2(p[0], 3) != 3)
			_exit(1);
		close_range(4, ~0U, 0);
		reaper_main(e->dir.path);
	}
	close(p[0]);
	e->reaper_fd = p[1];
	e->reaper = pid;
}

static void reaper_tell(struct ts_etcd *e, pid_t pid)
{
	int32_t v = (int32_t)pid;

	if (e->reaper > 0 && write(e->reaper_fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
		fail_msg("reaper pipe: %s", strerror(errno));
}

static void reaper_end(struct ts_etcd *e)
{
	if (e->reaper <= 0)
		return;
	close(e->reaper_fd);
	waitpid(e->reaper, NULL, 0);
	e->reaper = 0;
	e->reaper_fd = -1;
}

/* ---- certificates -------------------------------------------------------- */

static void add_ext(X509 *x, X509 *ca, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");

	if (!f)
		fail_msg("%s: %s", path, strerror(errno));
	if (x)
		assert_int_equal(PEM_write_X509(f, x), 1);
	else
		assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

/* etcd's own gateway connects to etcd with the server certificate as a
 * client certificate, so with --client-cert-auth that certificate needs
 * clientAuth as well as serverAuth (sr_devcert's relay certificate has only
 * serverAuth). */
static void make_server_cert(struct ts_etcd *e)
{
	char err[256] = "";
	X509 *ca, *x;
	EVP_PKEY *ca_key, *key;
	char path[TS_ETCD_PATH];

	if (sr_devcert_write(e->dir.path, NULL, 1, err, sizeof(err)) != 0)
		fail_msg("sr_devcert_write: %s", err);
	ts_dir_file(&e->dir, "ca.pem", e->ca, sizeof(e->ca));
	ts_dir_file(&e->dir, "sidecar.pem", e->client_cert, sizeof(e->client_cert));
	ts_dir_file(&e->dir, "sidecar.key", e->client_key, sizeof(e->client_key));
	ts_dir_file(&e->dir, "etcd.pem", e->server_cert, sizeof(e->server_cert));
	ts_dir_file(&e->dir, "etcd.key", e->server_key, sizeof(e->server_key));
	ca = ts_read_cert(e->ca);
	ts_dir_file(&e->dir, "ca.key", path, sizeof(path));
	ca_key = ts_read_key(path);

	key = EVP_EC_gen("P-256");
	assert_non_null(key);
	x = X509_new();
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(time(NULL) ^ getpid()));
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"ts-etcd", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(ca));
	X509_set_pubkey(x, key);
	add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE");
	add_ext(x, ca, NID_key_usage, "critical,digitalSignature");
	add_ext(x, ca, NID_ext_key_usage, "serverAuth,clientAuth");
	add_ext(x, ca, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
	assert_true(X509_sign(x, ca_key, EVP_sha256()) > 0);
	write_pem(e->server_cert, x, NULL);
	write_pem(e->server_key, NULL, key);
	X509_free(x);
	EVP_PKEY_free(key);
	X509_free(ca);
	EVP_PKEY_free(ca_key);
}

/* ---- the etcd process ---------------------------------------------------- */

static void print_log_tail(const struct ts_etcd *e)
{
	FILE *f = fopen(e->log, "r");
	char line[1024];
	char ring[30][256];
	int n = 0;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		snprintf(ring[n++ % 30], sizeof(ring[0]), "%s", line);
	fclose(f);
	print_error("----- etcd log %s (last lines) -----\n", e->log);
	for (int i = n > 30 ? n - 30 : 0; i < n; i++)
		print_error("  %s", ring[i % 30]);
}

static void spawn(struct ts_etcd *e)
{
	const char *scheme = e->o.tls ? "https" : "http";
	char client[64], peer[64], cluster[96];
	const char *argv[40];
	int a = 0, fd;
	pid_t parent = getpid(), pid;

	snprintf(client, sizeof(client), "%s://127.0.0.1:%u", scheme, e->port);
	snprintf(peer, sizeof(peer), "http://127.0.0.1:%u", e->peer_port);
	snprintf(cluster, sizeof(cluster), "ts=%s", peer);
	snprintf(e->url, sizeof(e->url), "%s", client);
	argv[a++] = ETCD_BIN;
	argv[a++] = "--name=ts";
	argv[a++] = "--data-dir";
	argv[a++] = e->data;
	argv[a++] = "--listen-client-urls";
	argv[a++] = client;
	argv[a++] = "--advertise-client-urls";
	argv[a++] = client;
	argv[a++] = "--listen-peer-urls";
	argv[a++] = peer;
	argv[a++] = "--initial-advertise-peer-urls";
	argv[a++] = peer;
	argv[a++] = "--initial-cluster";
	argv[a++] = cluster;
	argv[a++] = "--logger=zap";
	argv[a++] = "--log-outputs=stderr";
	if (e->o.tls) {
		argv[a++] = "--cert-file";
		argv[a++] = e->server_cert;
		argv[a++] = "--key-file";
		argv[a++] = e->server_key;
		argv[a++] = "--trusted-ca-file";
		argv[a++] = e->ca;
		argv[a++] = "--client-cert-auth";
	}
	if (e->o.progress_interval) {
		argv[a++] = "--experimental-watch-progress-notify-interval";
		argv[a++] = e->o.progress_interval;
	}
	argv[a] = NULL;

	fd = open(e->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		fail_msg("%s: %s", e->log, strerror(errno));
	pid = fork();
	if (pid < 0)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		/* dies with the test, however the test ends */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		if (null < 0 || dup2(null, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			_exit(1);
		close_range(3, ~0U, 0);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(fd);
	e->pid = pid;
	e->paused = 0;
	reaper_tell(e, pid);
}

static size_t sink(char *p, size_t size, size_t nmemb, void *arg)
{
	char **out = arg;
	size_t n = size * nmemb;

	/* out[0]: the buffer, out[1]: its end; keeps what fits, NUL-terminated */
	if (out[0] && out[0] + 1 < out[1]) {
		size_t room = (size_t)(out[1] - out[0]) - 1;
		size_t k = n < room ? n : room;
		memcpy(out[0], p, k);
		out[0] += k;
		*out[0] = '\0';
	}
	return n;
}

static long request(const struct ts_etcd *e, const char *path, const char *json,
		    long timeout_ms, char *out, size_t outlen)
{
	CURL *h = curl_easy_init();
	char url[256];
	char *pos[2] = {out, out ? out + outlen : NULL};
	struct curl_slist *hdr = NULL;
	long status = 0;

	assert_non_null(h);
	if (out && outlen)
		out[0] = '\0';
	snprintf(url, sizeof(url), "%s%s", e->url, path);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)pos);
	if (json) {
		hdr = curl_slist_append(NULL, "Content-Type: application/json");
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
	}
	if (e->o.tls) {
		curl_easy_setopt(h, CURLOPT_CAINFO, e->ca);
		curl_easy_setopt(h, CURLOPT_SSLCERT, e->client_cert);
		curl_easy_setopt(h, CURLOPT_SSLKEY, e->client_key);
	}
	if (curl_easy_perform(h) == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(hdr);
	curl_easy_cleanup(h);
	return status;
}

long ts_etcd_post(const struct ts_etcd *e, const char *path, const char *json, char *out,
		  size_t outlen)
{
	return request(e, path, json, 5000, out, outlen);
}

/* Returns 1 when healthy, 0 if etcd exited first (reaped), and fails the
 * test when the time is up. */
static int wait_healthy(struct ts_etcd *e)
{
	char body[256];

	for (int waited = 0; waited < HEALTHY_WITHIN_MS; waited += 50) {
		int status;
		if (waitpid(e->pid, &status, WNOHANG) == e->pid) {
			e->pid = 0;
			reaper_tell(e, 0);
			return 0;
		}
		if (request(e, "/health", NULL, 1000, body, sizeof(body)) == 200 &&
		    strstr(body, "\"health\":\"true\""))
			return 1;
		sleep_ms(50);
	}
	print_log_tail(e);
	fail_msg("etcd at %s: not healthy within %d ms", e->url, HEALTHY_WITHIN_MS);
	return 0;
}

void ts_etcd_start(struct ts_etcd *e, const char *tag, const struct ts_etcd_opts *o)
{
	memset(e, 0, sizeof(*e));
	e->reaper_fd = -1;
	if (o)
		e->o = *o;
	if (!ts_etcd_installed())
		fail_msg("no etcd binary in PATH: install Debian's etcd-server (./dev deps)");
	ts_dir_make(&e->dir, tag);
	ts_dir_file(&e->dir, "data", e->data, sizeof(e->data));
	ts_dir_file(&e->dir, "etcd.log", e->log, sizeof(e->log));
	reaper_start(e);
	if (e->o.tls)
		make_server_cert(e);
	/* the ports are free when picked, but another test may take them before
	 * etcd binds: then etcd exits, and another pair is tried */
	for (int attempt = 0; attempt < 3; attempt++) {
		e->port = ts_pick_port_range("127.0.0.1", 2);
		e->peer_port = (uint16_t)(e->port + 1);
		spawn(e);
		if (wait_healthy(e))
			return;
		rm_tree(e->data);
	}
	print_log_tail(e);
	fail_msg("etcd exited before it was healthy, three times");
}

void ts_etcd_kill(struct ts_etcd *e)
{
	if (e->pid <= 0)
		return;
	kill(e->pid, SIGKILL);
	kill(e->pid, SIGCONT);
	waitpid(e->pid, NULL, 0);
	e->pid = 0;
	e->paused = 0;
	reaper_tell(e, 0);
}

void ts_etcd_restart(struct ts_etcd *e)
{
	assert_true(e->pid == 0 && e->dir.path[0]);
	spawn(e);
	if (!wait_healthy(e)) {
		print_log_tail(e);
		fail_msg("etcd exited at restart on port %u", e->port);
	}
}

void ts_etcd_pause(struct ts_etcd *e, int paused)
{
	assert_true(e->pid > 0);
	assert_int_equal(kill(e->pid, paused ? SIGSTOP : SIGCONT), 0);
	e->paused = paused;
}

void ts_etcd_stop(struct ts_etcd *e)
{
	ts_etcd_kill(e);
	rm_tree(e->dir.path);
	e->dir.path[0] = '\0';
	reaper_end(e);
}
