/* `sparkrelay demo`: the whole path in one process and one event loop, on
 * loopback, with throw-away certificates:
 *
 *   executors --TCP--> relay (127.0.0.2:P) ==TLS/h2==> sidecar --TCP--> driver (127.0.0.1:P)
 *
 * Each executor opens an RPC connection to the driver port (64-byte
 * ping-pongs, round trips timed) and a block-manager connection that
 * downloads a broadcast of known content (checked byte for byte). The relay
 * binds 127.0.0.2 because the stand-in driver binds the same port numbers on
 * 127.0.0.1, exactly as a Spark driver would (the advertised port is the
 * bound port). */
#include "cmd/cmd.h"
#include "common/sr_devcert.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "conf/conf.h"
#include "relay/relay.h"
#include "sidecar/sidecar.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define RPC_MSG 64
#define DEMO_TIMEOUT_S 25
#define DEMO_PROGRESS_MS 500 /* a progress line this often */

struct demo;

struct exec_conn {
	struct demo *d;
	struct bufferevent *bev;
	int is_rpc;
	unsigned rounds_left;
	uint64_t sent_at;
	uint64_t received;
	uint64_t rng; /* expected content generator (block manager) */
	int done, failed;
};

struct demo {
	struct event_base *base;
	struct relay *relay;
	struct sidecar *sidecar;
	struct sr_config rcfg, scfg; /* through the same loader as a config file */
	struct evconnlistener *drv[2];
	struct event *timeout, *sigint, *sigterm, *progress;
	char dir[PATH_MAX];	/* "" until made; removed at exit */
	char path[6][PATH_MAX + 32];
	unsigned executors, rounds;
	uint64_t bulk_bytes;
	struct exec_conn *conns;
	struct drv_conn *drv_conns; /* every driver-side connection, freed at exit */
	unsigned nconns, finished, failures;
	uint64_t *rtts;
	size_t nrtt;
	uint64_t bulk_start_us, bulk_end_us, start_us, lease_us;
	struct sidecar_lease_info lease;
	int started, shutting_down, ok;
};

/* Deterministic content so the executor can check every byte it receives. */
static uint8_t next_byte(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return (uint8_t)(*s >> 56);
}

static void demo_finish(struct demo *d, int ok)
{
	if (d->shutting_down)
		return;
	d->shutting_down = 1;
	d->ok = ok;
	sidecar_shutdown(d->sidecar); /* releases the lease, then breaks the loop */
}

static void exec_done(struct exec_conn *e, int failed)
{
	struct demo *d = e->d;
	if (e->done)
		return;
	e->done = 1;
	e->failed = failed;
	d->finished++;
	d->failures += failed != 0;
	if (!e->is_rpc && !failed && d->finished >= d->nconns)
		d->bulk_end_us = sr_now_us();
	if (e->bev) {
		bufferevent_free(e->bev);
		e->bev = NULL;
	}
	if (d->finished == d->nconns) {
		if (!d->bulk_end_us)
			d->bulk_end_us = sr_now_us();
		demo_finish(d, d->failures == 0);
	}
}

/* ---- stand-in driver ------------------------------------------------------- */

struct drv_conn {
	struct drv_conn *next, **pprev;
	struct bufferevent *bev;
	uint64_t left, rng; /* block manager: bytes still to send, content generator */
};

static void drv_conn_free(struct drv_conn *dc)
{
	if (dc->next)
		dc->next->pprev = dc->pprev;
	*dc->pprev = dc->next;
	bufferevent_free(dc->bev);
	free(dc);
}

static void drv_echo_read(struct bufferevent *bev, void *arg)
{
	bufferevent_write_buffer(bev, bufferevent_get_input(bev));
}

static void drv_event(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		drv_conn_free(arg);
}

static void drv_src_write(struct bufferevent *bev, void *arg)
{
	struct drv_conn *src = arg;
	uint8_t buf[16384];

	if (src->left == 0) {
		/* everything handed to the kernel: half-close, as a sender would */
		shutdown(bufferevent_getfd(bev), SHUT_WR);
		return;
	}
	while (src->left > 0 && evbuffer_get_length(bufferevent_get_output(bev)) < 1u << 20) {
		size_t n = src->left < sizeof(buf) ? (size_t)src->left : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = next_byte(&src->rng);
		bufferevent_write(bev, buf, n);
		src->left -= n;
	}
}

static void drv_src_read(struct bufferevent *bev, void *arg)
{
	evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

static void drv_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		       int salen, void *arg)
{
	struct demo *d = arg;
	struct drv_conn *dc = calloc(1, sizeof(*dc));

	if (!dc || !(dc->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE))) {
		free(dc);
		close(fd);
		return;
	}
	dc->next = d->drv_conns;
	if (dc->next)
		dc->next->pprev = &dc->next;
	dc->pprev = &d->drv_conns;
	d->drv_conns = dc;
	sr_sock_nodelay(fd);
	if (l == d->drv[0]) {
		bufferevent_setcb(dc->bev, drv_echo_read, NULL, drv_event, dc);
	} else {
		dc->left = d->bulk_bytes;
		dc->rng = 42;
		bufferevent_setcb(dc->bev, drv_src_read, drv_src_write, drv_event, dc);
		drv_src_write(dc->bev, dc);
	}
	bufferevent_enable(dc->bev, EV_READ | EV_WRITE);
}

/* ---- stand-in executors ---------------------------------------------------- */

static void rpc_send(struct exec_conn *e)
{
	uint8_t msg[RPC_MSG];
	memset(msg, 'a' + (int)(e->rounds_left % 26), sizeof(msg));
	e->sent_at = sr_now_us();
	bufferevent_write(e->bev, msg, sizeof(msg));
}

static void exec_read(struct bufferevent *bev, void *arg)
{
	struct exec_conn *e = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct demo *d = e->d;

	if (e->is_rpc) {
		while (evbuffer_get_length(in) >= RPC_MSG) {
			uint8_t msg[RPC_MSG];
			evbuffer_remove(in, msg, sizeof(msg));
			if (msg[0] != 'a' + (int)(e->rounds_left % 26)) {
				fprintf(stderr, "demo: RPC reply corrupted\n");
				exec_done(e, 1);
				return;
			}
			d->rtts[d->nrtt++] = sr_now_us() - e->sent_at;
			if (--e->rounds_left == 0) {
				exec_done(e, 0);
				return;
			}
			rpc_send(e);
		}
		return;
	}
	{
		struct evbuffer_iovec v[8];
		int n = evbuffer_peek(in, -1, NULL, v, 8);
		if (n > 8)
			n = 8;
		for (int i = 0; i < n; i++) {
			const uint8_t *p = v[i].iov_base;
			for (size_t j = 0; j < v[i].iov_len; j++) {
				if (p[j] != next_byte(&e->rng)) {
					fprintf(stderr, "demo: broadcast byte %llu differs\n",
						(unsigned long long)(e->received + j));
					exec_done(e, 1);
					return;
				}
			}
			e->received += v[i].iov_len;
			evbuffer_drain(in, v[i].iov_len);
		}
	}
}

static void exec_event(struct bufferevent *bev, short what, void *arg)
{
	struct exec_conn *e = arg;

	if (what & BEV_EVENT_CONNECTED) {
		sr_sock_nodelay(bufferevent_getfd(bev));
		if (e->is_rpc)
			rpc_send(e);
		return;
	}
	if (!e->is_rpc && (what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		exec_read(bev, e);
		if (!e->done)
			exec_done(e, e->received != e->d->bulk_bytes);
		return;
	}
	fprintf(stderr, "demo: executor connection %s\n",
		(what & BEV_EVENT_EOF) ? "closed early" : "failed");
	exec_done(e, 1);
}

static void start_executors(struct demo *d)
{
	struct sockaddr_in sin;

	d->nconns = d->executors * 2;
	d->conns = calloc(d->nconns, sizeof(*d->conns));
	d->rtts = calloc((size_t)d->executors * d->rounds + 1, sizeof(*d->rtts));
	if (!d->conns || !d->rtts) {
		demo_finish(d, 0);
		return;
	}
	d->bulk_start_us = sr_now_us();
	for (unsigned i = 0; i < d->nconns; i++) {
		struct exec_conn *e = &d->conns[i];
		e->d = d;
		e->is_rpc = (i % 2) == 0;
		e->rounds_left = d->rounds;
		e->rng = 42;
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		inet_pton(AF_INET, "127.0.0.2", &sin.sin_addr);
		sin.sin_port = htons(d->lease.ports[e->is_rpc ? TUN_PORT_DRIVER : TUN_PORT_BLOCKMANAGER]);
		e->bev = bufferevent_socket_new(d->base, -1, BEV_OPT_CLOSE_ON_FREE);
		if (!e->bev) {
			exec_done(e, 1);
			continue;
		}
		bufferevent_setcb(e->bev, exec_read, NULL, exec_event, e);
		bufferevent_enable(e->bev, EV_READ | EV_WRITE);
		if (bufferevent_socket_connect(e->bev, (struct sockaddr *)&sin, sizeof(sin)) != 0)
			exec_done(e, 1);
	}
}

static void on_lease(struct sidecar *s, const struct sidecar_lease_info *info, void *arg)
{
	struct demo *d = arg;
	struct sockaddr_in sin;

	if (d->started)
		return;
	d->started = 1;
	d->lease = *info;
	d->lease_us = sr_now_us();
	for (int i = 0; i < 2; i++) {
		memset(&sin, 0, sizeof(sin));
		sin.sin_family = AF_INET;
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sin.sin_port = htons(info->ports[i == 0 ? TUN_PORT_DRIVER : TUN_PORT_BLOCKMANAGER]);
		/* Enabled here, checked: libevent's own enable ignores a failure. */
		d->drv[i] = evconnlistener_new_bind(d->base, drv_accept, d,
						    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
							    LEV_OPT_DISABLED,
						    128, (struct sockaddr *)&sin, sizeof(sin));
		if (!d->drv[i] || evconnlistener_enable(d->drv[i]) != 0) {
			fprintf(stderr, "demo: the stand-in driver cannot bind 127.0.0.1:%u\n",
				ntohs(sin.sin_port));
			demo_finish(d, 0);
			return;
		}
	}
	printf("\nstand-in driver listening on 127.0.0.1:%u (RPC) and 127.0.0.1:%u (block "
	       "manager)\n%u executors connecting to %s through the relay...\n",
	       info->ports[TUN_PORT_DRIVER], info->ports[TUN_PORT_BLOCKMANAGER], d->executors,
	       info->host);
	fflush(stdout);
	start_executors(d);
}

/* A live line every half second while executors run. */
static void demo_progress(evutil_socket_t fd, short what, void *arg)
{
	struct demo *d = arg;
	struct relay_stats rs;
	uint64_t bytes = 0;

	if (!d->conns || d->shutting_down)
		return;
	for (unsigned i = 0; i < d->nconns; i++)
		bytes += d->conns[i].received;
	relay_get_stats(d->relay, &rs);
	printf("  %5.1f s  executor conns %llu (%llu open)  broadcast %.0f MiB  RPC round "
	       "trips %zu\n",
	       (double)(sr_now_us() - d->start_us) / 1e6, (unsigned long long)rs.executor_conns,
	       (unsigned long long)rs.streams_active, (double)bytes / (1 << 20), d->nrtt);
	fflush(stdout);
}

static void demo_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct demo *d = arg;
	fprintf(stderr, "demo: did not finish within %d s\n", DEMO_TIMEOUT_S);
	d->ok = 0;
	event_base_loopbreak(d->base);
}

static void demo_sigint(evutil_socket_t fd, short what, void *arg)
{
	struct demo *d = arg;
	d->ok = 0;
	event_base_loopbreak(d->base);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void print_summary(struct demo *d)
{
	struct relay_stats rs;
	double secs = (double)(d->bulk_end_us - d->bulk_start_us) / 1e6;
	uint64_t total = (uint64_t)d->executors * d->bulk_bytes;

	relay_get_stats(d->relay, &rs);
	if (d->nrtt)
		qsort(d->rtts, d->nrtt, sizeof(*d->rtts), cmp_u64);
	printf("\n== sparkrelay demo summary ==\n");
	printf("lease               %s, ports %u (driver) and %u (block manager)\n",
	       d->lease.lease, d->lease.ports[TUN_PORT_DRIVER], d->lease.ports[TUN_PORT_BLOCKMANAGER]);
	printf("time to lease       %.1f ms (TLS 1.3 handshake + register)\n",
	       (double)(d->lease_us - d->start_us) / 1e3);
	printf("executor conns      %llu through the relay, %u ok, %u failed\n",
	       (unsigned long long)rs.executor_conns, d->nconns - d->failures, d->failures);
	if (d->nrtt)
		printf("RPC round trip      %zu x %d bytes: p50 %llu us, p99 %llu us, max %llu us\n",
		       d->nrtt, RPC_MSG, (unsigned long long)d->rtts[d->nrtt / 2],
		       (unsigned long long)d->rtts[(d->nrtt * 99) / 100],
		       (unsigned long long)d->rtts[d->nrtt - 1]);
	printf("broadcast           %u x %.0f MiB checked byte for byte, %.2f Gbit/s aggregate\n",
	       d->executors, (double)d->bulk_bytes / (1 << 20),
	       secs > 0 ? (double)total * 8 / secs / 1e9 : 0.0);
	printf("result              %s\n", d->ok ? "OK" : "FAILED");
}

/* The files the demo reads and writes, in d->dir (mkdtemp in $TMPDIR,
 * else /tmp). */
static const char *const demo_files[6] = {"ca.pem",		 "relay.pem",  "relay.key",
					  "spark-defaults.conf", "spark.json", "state.json"};

static int demo_mkdir(struct demo *d)
{
	const char *tmp = getenv("TMPDIR");
	int n;

	if (!tmp || tmp[0] != '/')
		tmp = "/tmp";
	n = snprintf(d->dir, sizeof(d->dir), "%s/sparkrelay-demo-XXXXXX", tmp);
	if (n < 0 || (size_t)n >= sizeof(d->dir) || !mkdtemp(d->dir)) {
		fprintf(stderr, "demo: cannot make a temporary folder in %s: %s\n", tmp,
			n < 0 || (size_t)n >= sizeof(d->dir) ? "path too long" : strerror(errno));
		d->dir[0] = '\0';
		return -1;
	}
	for (int i = 0; i < 6; i++)
		snprintf(d->path[i], sizeof(d->path[i]), "%s/%s", d->dir, demo_files[i]);
	return 0;
}

/* Remove the folder and everything in it: the certificates and the CA key,
 * the sidecar's files and their temporary names. Only plain entries are
 * expected there (it is ours, mode 0700); anything else is left with a
 * message. */
static void demo_rmdir(struct demo *d)
{
	struct dirent *de;
	DIR *dir;

	if (!d->dir[0])
		return;
	if ((dir = opendir(d->dir))) {
		while ((de = readdir(dir)))
			if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
				(void)unlinkat(dirfd(dir), de->d_name, 0);
		closedir(dir);
	}
	if (rmdir(d->dir) != 0)
		fprintf(stderr, "demo: cannot remove %s: %s\n", d->dir, strerror(errno));
	d->dir[0] = '\0';
}

/* A whole decimal number from lo to hi, or a message naming the option. */
static int demo_num(const char *opt, const char *arg, unsigned long long lo,
		    unsigned long long hi, unsigned long long *out)
{
	char esc[SR_ESC_SIZE(32)], *end = NULL;
	unsigned long long v = 0;

	errno = 0;
	if (arg[0] >= '0' && arg[0] <= '9')
		v = strtoull(arg, &end, 10);
	if (!end || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "demo: --%s takes a number from %llu to %llu, not \"%s\"\n", opt,
			lo, hi, sr_esc_n(arg, 32, esc, sizeof(esc)));
		return -1;
	}
	*out = v;
	return 0;
}

int cmd_demo(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"executors", required_argument, NULL, 'e'},
		{"rounds", required_argument, NULL, 'r'},
		{"bulk-mib", required_argument, NULL, 'b'},
		{"verbose", no_argument, NULL, 'v'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct demo d;
	struct timeval tv = {DEMO_TIMEOUT_S, 0};
	char err[512], json[4 * PATH_MAX];
	unsigned long long v;
	int ch;

	memset(&d, 0, sizeof(d));
	d.executors = 8;
	d.rounds = 200;
	d.bulk_bytes = 16u << 20;
	sr_log_set_level(SR_LOG_WARN);
	optind = 1;
	while ((ch = cmd_getopt(argc, argv, "e:r:b:vh", longopts, "demo")) != -1) {
		switch (ch) {
		case 'e':
			if (demo_num("executors", optarg, 1, 500, &v) != 0)
				return 2;
			d.executors = (unsigned)v;
			break;
		case 'r':
			if (demo_num("rounds", optarg, 1, 100000, &v) != 0)
				return 2;
			d.rounds = (unsigned)v;
			break;
		case 'b':
			if (demo_num("bulk-mib", optarg, 0, 4096, &v) != 0)
				return 2;
			d.bulk_bytes = (uint64_t)v << 20;
			break;
		case 'v':
			sr_log_set_level(SR_LOG_INFO);
			break;
		case 'h':
			printf("usage: sparkrelay demo [--executors N] [--rounds N] [--bulk-mib N] "
			       "[--verbose]\n"
			       "A relay, a sidecar, a stand-in driver and stand-in executors in "
			       "one process on\n"
			       "loopback, with throw-away certificates; prints the Spark settings "
			       "and a summary.\n"
			       "  --executors N  executors, each with an RPC and a block-manager "
			       "connection\n"
			       "                 (1-500, default 8)\n"
			       "  --rounds N     64-byte round trips per RPC connection "
			       "(1-100000, default 200)\n"
			       "  --bulk-mib N   MiB of broadcast each executor downloads (0-4096, "
			       "default 16)\n"
			       "  --verbose      the relay's and the sidecar's log lines\n"
			       "exit status: 0 every byte arrived as sent, 1 otherwise (or it "
			       "could not start),\n"
			       "2 usage error.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "demo: takes no arguments besides its options (see --help)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sr_log_set_role("demo");
	sr_raise_nofile();
	d.start_us = sr_now_us();

	/* The signals are caught before the folder exists: an interrupt at any
	 * point ends the loop (or keeps it from starting) and the folder, which
	 * holds a CA key, is removed on the way out. */
	d.base = event_base_new();
	if (!d.base)
		return 1;
	d.sigint = evsignal_new(d.base, SIGINT, demo_sigint, &d);
	d.sigterm = evsignal_new(d.base, SIGTERM, demo_sigint, &d);
	if (!d.sigint || !d.sigterm || event_add(d.sigint, NULL) != 0 ||
	    event_add(d.sigterm, NULL) != 0)
		goto out;
	if (demo_mkdir(&d) != 0)
		goto out;
	if (sr_devcert_write(d.dir, NULL, 1, err, sizeof(err)) != 0) {
		fprintf(stderr, "demo: %s\n", err);
		goto out;
	}
	printf("sparkrelay demo: development certificates in %s (removed at exit)\n", d.dir);

	/* The pool binds 127.0.0.2 below the ephemeral range (32768+), where the
	 * stand-in driver's bind on 127.0.0.1 could collide with some client's
	 * source port. */
	snprintf(json, sizeof(json),
		 "{\"relay\": {\"listen\": \"127.0.0.1:0\", \"admin\": {\"listen\": null},"
		 " \"handover_socket\": null,"
		 " \"tls\": {\"cert\": \"%s\", \"key\": \"%s\"},"
		 " \"pool\": {\"bind\": \"127.0.0.2\", \"advertise\": \"127.0.0.2\","
		 " \"port_min\": 31000, \"port_max\": 31999}}}",
		 d.path[1], d.path[2]);
	if (conf_load_string(json, "demo", &d.rcfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "demo: %s\n", err);
		goto out;
	}
	d.relay = relay_new(d.base, &d.rcfg.relay, err, sizeof(err));
	if (!d.relay) {
		fprintf(stderr, "demo: relay: %s\n", err);
		goto out;
	}
	char relay_addr[32];
	snprintf(relay_addr, sizeof(relay_addr), "127.0.0.1:%u", relay_listen_port(d.relay));
	snprintf(json, sizeof(json),
		 "{\"tunnel\": {\"relays\": [\"%s\"], \"tls\": {\"ca\": \"%s\"},"
		 " \"app\": \"demo-notebook\", \"spark_conf\": \"%s\", \"spark_json\": \"%s\","
		 " \"state_file\": \"%s\", \"allowed_ports\": [\"31000-31999\"]}}",
		 relay_addr, d.path[0], d.path[3], d.path[4], d.path[5]);
	if (conf_load_string(json, "demo", &d.scfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "demo: %s\n", err);
		goto out;
	}
	printf("relay listening for sidecars on %s; sidecar dialling it over TLS 1.3\n",
	       relay_addr);
	d.sidecar = sidecar_new(d.base, &d.scfg.tunnel, on_lease, &d, err, sizeof(err));
	if (!d.sidecar) {
		fprintf(stderr, "demo: sidecar: %s\n", err);
		goto out;
	}
	d.timeout = evtimer_new(d.base, demo_timeout, &d);
	d.progress = event_new(d.base, -1, EV_PERSIST, demo_progress, &d);
	if (!d.timeout || !d.progress)
		goto out;
	evtimer_add(d.timeout, &tv);
	{
		struct timeval every = sr_tv_ms(DEMO_PROGRESS_MS);
		event_add(d.progress, &every);
	}

	event_base_dispatch(d.base);

	print_summary(&d);
	fflush(stdout);
out:
	/* While the signals are still caught: an interrupt now cannot stop it. */
	demo_rmdir(&d);
	for (unsigned i = 0; i < d.nconns; i++) {
		if (d.conns[i].bev)
			bufferevent_free(d.conns[i].bev);
	}
	while (d.drv_conns)
		drv_conn_free(d.drv_conns);
	for (int i = 0; i < 2; i++) {
		if (d.drv[i])
			evconnlistener_free(d.drv[i]);
	}
	if (d.timeout)
		event_free(d.timeout);
	if (d.sigint)
		event_free(d.sigint);
	if (d.sigterm)
		event_free(d.sigterm);
	if (d.progress)
		event_free(d.progress);
	sidecar_free(d.sidecar);
	relay_free(d.relay);
	if (d.base) {
		/* Deferred bufferevent callbacks hold references until they run. */
		event_base_loop(d.base, EVLOOP_NONBLOCK);
		event_base_free(d.base);
	}
	conf_free(&d.rcfg);
	conf_free(&d.scfg);
	free(d.conns);
	free(d.rtts);
	return d.ok ? 0 : 1;
}
