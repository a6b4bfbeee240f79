/* libFuzzer target for the relay's admin API request handling
 * (relay/relay_admin.c behind evhttp, with its connection guard,
 * common/sr_http_guard.c).
 *
 * A real relay (configured through conf_load_string, certificates from
 * sr_devcert, removed once loaded) and its admin API run in the
 * fuzzer's own event base on loopback, with a token and small limits
 * (4 connections, 1 s per connection). Each input is one client's raw
 * bytes: the fuzzer connects over TCP, writes the input, half-closes, and
 * runs the loop until the relay closes the connection or FZ_MAX_MS pass.
 * The first input byte's low 3 bits open that many idle connections
 * beforehand, so the cap's refusal path is reached too (4 or more make the
 * client's own connection one too many).
 *
 * The reload and config callbacks are the ones `sparkrelay relay` installs
 * (re-read a configuration text, dump the effective configuration). A
 * request that drains the relay (POST /v1/drain with the token) ends that
 * relay: a fresh one serves the next input.
 *
 * Checked: no crash, leak or hang (ASan/UBSan, libFuzzer's -timeout), the
 * relay closes every connection within its deadline, every answer starts
 * with an HTTP status line, and (every 64 inputs, through /metrics) the
 * guard counts no connection open once the inputs' sockets are closed. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <jansson.h>

#include "common/sr_devcert.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "conf/conf.h"
#include "relay/relay.h"
#include "relay/relay_admin.h"

#define FZ_TOKEN "fuzz-admin-token"
#define FZ_MAX_INPUT (64 * 1024)
#define FZ_MAX_IDLE 7
#define FZ_MAX_MS 3000 /* over the 1 s deadline: a connection still open is a bug */
#define FZ_ANSWER_MAX (256 * 1024)

struct fz_relay {
	struct sr_config cfg;
	struct relay *relay;
	struct relay_admin *admin;
	uint16_t port;
};

static struct event_base *fz_base;
static struct fz_relay fz;
static char fz_dir[64];
static char fz_conf[2048];

/* ---- the program's callbacks (as cmd/main.c) ---- */

static int fz_reload(void *arg, char *err, size_t errlen)
{
	struct fz_relay *f = arg;
	struct sr_config ncfg;
	int rv;

	memset(&ncfg, 0, sizeof(ncfg));
	rv = conf_load_string(fz_conf, "fuzz.json", &ncfg, err, errlen);
	if (rv == 0)
		rv = relay_reload(f->relay, &ncfg.relay, err, errlen);
	else
		relay_count_reload_failure(f->relay);
	conf_free(&ncfg);
	return rv;
}

static json_t *fz_config_json(void *arg)
{
	struct fz_relay *f = arg;
	char *text = NULL;
	size_t len = 0;
	json_t *j = NULL;
	FILE *out = open_memstream(&text, &len);

	if (!out)
		return NULL;
	if (conf_dump(&f->cfg, out) == 0 && fflush(out) == 0)
		j = json_loadb(text, len, 0, NULL);
	fclose(out);
	free(text);
	return j;
}

static void fz_relay_stop(void)
{
	relay_admin_free(fz.admin);
	relay_free(fz.relay);
	conf_free(&fz.cfg);
	memset(&fz, 0, sizeof(fz));
	/* deferred bufferevent callbacks and finalizers */
	event_base_loop(fz_base, EVLOOP_NONBLOCK);
}

/* The relay's certificates live on disk only while relay_new loads them
 * (a reload does not re-read them): a crashing input leaves no files. */
static void fz_certs(int make)
{
	static const char *const files[] = {"ca.pem",	 "ca.key",	"relay.pem",
					    "relay.key", "sidecar.pem", "sidecar.key"};
	char err[512], p[128];

	if (make) {
		snprintf(fz_dir, sizeof(fz_dir), "/tmp/sr_fuzz_admin_XXXXXX");
		if (!mkdtemp(fz_dir) ||
		    sr_devcert_write(fz_dir, NULL, 1, err, sizeof(err)) != 0) {
			fprintf(stderr, "fuzz_admin: certificates: %s\n", err);
			abort();
		}
		return;
	}
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", fz_dir, files[i]);
		unlink(p);
	}
	rmdir(fz_dir);
}

static void fz_relay_start(void)
{
	static const struct relay_admin_cbs cbs = {.reload = fz_reload,
						   .config_json = fz_config_json};
	char err[1024];

	memset(&fz, 0, sizeof(fz));
	fz_certs(1);
	/* Lease ports are bound only when a lease is granted, which no admin
	 * request does: the pool range is never used. */
	snprintf(
	    fz_conf, sizeof(fz_conf),
	    "{\"relay\": {\"listen\": \"127.0.0.1:0\","
	    " \"tls\": {\"cert\": \"%s/relay.pem\", \"key\": \"%s/relay.key\"},"
	    " \"pool\": {\"bind\": \"127.0.0.1\", \"port_min\": 64000, \"port_max\": 64009},"
	    " \"drain_timeout_ms\": 0,"
	    " \"admin\": {\"listen\": \"127.0.0.1:0\", \"token\": \"" FZ_TOKEN "\","
	    " \"max_connections\": 4, \"request_timeout_ms\": 1000}}}",
	    fz_dir, fz_dir);
	if (conf_load_string(fz_conf, "fuzz.json", &fz.cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "fuzz_admin: config: %s\n", err);
		abort();
	}
	fz.relay = relay_new(fz_base, &fz.cfg.relay, err, sizeof(err));
	fz_certs(0);
	if (!fz.relay) {
		fprintf(stderr, "fuzz_admin: relay: %s\n", err);
		abort();
	}
	fz.admin = relay_admin_new(fz_base, fz.relay, fz.cfg.relay.admin_listen,
				   fz.cfg.relay.admin_token, &cbs, &fz, err, sizeof(err));
	if (!fz.admin) {
		fprintf(stderr, "fuzz_admin: admin: %s\n", err);
		abort();
	}
	fz.port = relay_admin_port(fz.admin);
}

static void fz_cleanup(void)
{
	fz_relay_stop();
	event_base_free(fz_base);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	sr_log_set_level(getenv("SR_FUZZ_LOG") ? SR_LOG_DEBUG : SR_LOG_ERROR);
	signal(SIGPIPE, SIG_IGN);
	fz_base = event_base_new();
	if (!fz_base)
		abort();
	fz_relay_start();
	atexit(fz_cleanup);
	return 0;
}

/* ---- one client ---- */

static int fz_connect(void)
{
	struct sockaddr_in sin;
	struct pollfd pfd;
	socklen_t len = sizeof(int);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), e = 0, r;

	if (fd < 0)
		return -1;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(fz.port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* non-blocking, then wait: libFuzzer's SIGALRM would interrupt a
	 * blocking connect. Loopback completes against the listen backlog
	 * without the event loop. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
		if (errno != EINPROGRESS && errno != EINTR) {
			close(fd);
			return -1;
		}
		pfd.fd = fd;
		pfd.events = POLLOUT;
		do
			r = poll(&pfd, 1, 5000);
		while (r < 0 && errno == EINTR);
		if (r != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0 || e != 0) {
			close(fd);
			errno = e ? e : ETIMEDOUT;
			return -1;
		}
	}
	return fd;
}

/* Send data on a fresh connection, half-close, read until the relay
 * closes; the answer's first ans_len - 1 bytes go to ans (NUL-terminated).
 * Returns the answer's length. */
static size_t fz_exchange(const uint8_t *data, size_t size, char *ans, size_t ans_len)
{
	int fd = fz_connect(), eof = 0, shut = 0;
	size_t sent = 0, got = 0;
	uint64_t t0 = sr_now_us();

	if (fd < 0) {
		fprintf(stderr, "fuzz_admin: cannot connect: %s\n", strerror(errno));
		abort();
	}
	memset(ans, 0, ans_len);
	while (!eof) {
		char buf[16384];
		ssize_t n;

		if (sent < size) {
			n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				sent = size; /* reset by the relay: just read what is left */
		}
		if (sent == size && !shut) {
			shutdown(fd, SHUT_WR);
			shut = 1;
		}
		for (;;) {
			n = recv(fd, buf, sizeof(buf), 0);
			if (n > 0) {
				if (got < ans_len - 1)
					memcpy(ans + got, buf,
					       (size_t)n < ans_len - 1 - got
						   ? (size_t)n
						   : ans_len - 1 - got);
				got += (size_t)n;
				if (got > FZ_ANSWER_MAX) {
					fprintf(stderr, "fuzz_admin: answer over %d bytes\n",
						FZ_ANSWER_MAX);
					abort();
				}
				continue;
			}
			if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
				eof = 1;
			break;
		}
		if (eof)
			break;
		if ((sr_now_us() - t0) / 1000 > FZ_MAX_MS) {
			fprintf(stderr,
				"fuzz_admin: connection open after %d ms (deadline 1000)\n",
				FZ_MAX_MS);
			abort();
		}
		event_base_loop(fz_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (sent == size)
			usleep(100);
	}
	close(fd);
	return got;
}

/* Every connection of earlier inputs is closed: the guard must count none
 * open but the one asking (a leaked count would end in refusing all). */
static void fz_check_accounting(void)
{
	static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n"
				  "Authorization: Bearer " FZ_TOKEN "\r\n\r\n";
	static char ans[FZ_ANSWER_MAX + 1];
	const char *p;

	for (int i = 0; i < 20; i++) {
		fz_exchange((const uint8_t *)req, sizeof(req) - 1, ans, sizeof(ans));
		p = strstr(ans, "\nsparkrelay_admin_connections_active ");
		if (p && strncmp(p + 37, "1\n", 2) == 0)
			return;
		/* closes of the last input may still be on their way */
		usleep(1000);
		event_base_loop(fz_base, EVLOOP_NONBLOCK);
	}
	fprintf(stderr, "fuzz_admin: connections still counted open: %.60s\n",
		p ? p + 1 : "(no metric in the answer)");
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long runs;
	int idle[FZ_MAX_IDLE], nidle = 0;
	struct relay_stats st;
	char head[16];
	size_t got;

	if (size == 0 || size > FZ_MAX_INPUT)
		return 0;
	for (int i = 0; i < (data[0] & 7); i++) {
		int s = fz_connect();
		if (s >= 0)
			idle[nidle++] = s;
	}
	got = fz_exchange(data + 1, size - 1, head, sizeof(head));
	/* evhttp answers in the request's version, HTTP/0.x included */
	if (got > 0 && strncmp(head, "HTTP/", 5) != 0) {
		fprintf(stderr, "fuzz_admin: the answer is not HTTP: \"%.15s\"\n", head);
		abort();
	}
	for (int i = 0; i < nidle; i++)
		close(idle[i]);
	/* let the relay see the closes before the next input */
	for (int i = 0; i < 4; i++)
		event_base_loop(fz_base, EVLOOP_NONBLOCK);
	relay_get_stats(fz.relay, &st);
	if (st.draining) {
		fz_relay_stop();
		fz_relay_start();
	} else if (++runs % 64 == 0) {
		fz_check_accounting();
	}
	return 0;
}
