/* `sparkrelay-bench server`: the stand-in driver of every scenario. The
 * protocol (one header line, then ECHO / SINK / SRC / RPC) is described in
 * bench.h. */
#include "bench/bench.h"

#include "common/sr_err.h"
#include "common/sr_util.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SRV_HDR_MAX 64
#define SRV_MAX_LISTEN 8

enum srv_mode { SRV_HDR, SRV_ECHO, SRV_SINK, SRV_SRC, SRV_RPC };

struct srv_conn {
	struct bufferevent *bev;
	enum srv_mode mode;
	uint64_t left;   /* SRC: bytes still to queue */
	int unbounded;   /* SRC 0 */
	uint64_t got;    /* SINK: bytes received */
	int peer_eof;
	int shut;        /* SRC: our write side is half-closed */
	/* RPC: payload bytes of the current message still to come (0: a
	 * header is next) and the size of its reply */
	uint64_t msg_left;
	uint32_t msg_reply;
};

static unsigned long srv_live;

static void srv_free(struct srv_conn *c)
{
	bufferevent_free(c->bev);
	free(c);
	srv_live--;
}

static int srv_src_done(struct srv_conn *c)
{
	return !c->unbounded && c->left == 0 &&
	       evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

/* Returns 1 when c was freed. */
static int srv_progress(struct srv_conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	switch (c->mode) {
	case SRV_SRC:
		if (c->unbounded)
			bench_fill(out, BENCH_OUT_HIGH, NULL);
		else if (c->left > 0)
			bench_fill(out, BENCH_OUT_HIGH, &c->left);
		if (srv_src_done(c) && !c->shut) {
			shutdown(bufferevent_getfd(c->bev), SHUT_WR);
			c->shut = 1;
		}
		if (c->peer_eof && (c->unbounded || srv_src_done(c))) {
			srv_free(c);
			return 1;
		}
		return 0;
	case SRV_ECHO:
	case SRV_SINK:
	case SRV_RPC:
		if (c->peer_eof && evbuffer_get_length(out) == 0) {
			srv_free(c);
			return 1;
		}
		if (!c->peer_eof && evbuffer_get_length(out) < BENCH_OUT_HIGH)
			bufferevent_enable(c->bev, EV_READ);
		return 0;
	case SRV_HDR:
		break;
	}
	return 0;
}

static int srv_header(struct srv_conn *c, const char *line)
{
	char *end;
	unsigned long long n;
	if (strcmp(line, "ECHO") == 0) {
		c->mode = SRV_ECHO;
	} else if (strcmp(line, "SINK") == 0) {
		c->mode = SRV_SINK;
	} else if (strcmp(line, "RPC") == 0) {
		c->mode = SRV_RPC;
	} else if (strncmp(line, "SRC ", 4) == 0) {
		errno = 0;
		n = strtoull(line + 4, &end, 10);
		if (errno != 0 || *end != '\0' || end == line + 4)
			return SR_EINVAL;
		c->mode = SRV_SRC;
		c->left = n;
		c->unbounded = n == 0;
	} else {
		return SR_EINVAL;
	}
	return 0;
}

/* RPC: messages of u32 length | u32 reply size | payload, both big-endian;
 * each answered with reply-size bytes once its last payload byte arrived
 * (a task result acknowledged, a heartbeat answered). Payloads are drained
 * as they come: a 64 MiB result is never held. */
static void srv_rpc(struct srv_conn *c, struct evbuffer *in, struct evbuffer *out)
{
	for (;;) {
		if (c->msg_left == 0 && c->msg_reply == 0) {
			unsigned char h[8];
			if (evbuffer_get_length(in) < sizeof(h) ||
			    evbuffer_remove(in, h, sizeof(h)) != (int)sizeof(h))
				return;
			c->msg_left = (uint64_t)h[0] << 24 | (uint64_t)h[1] << 16 |
				      (uint64_t)h[2] << 8 | h[3];
			c->msg_reply = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 |
				       (uint32_t)h[6] << 8 | h[7];
			if (c->msg_reply == 0)
				c->msg_reply = 1; /* every message is answered */
		}
		if (c->msg_left) {
			size_t n = evbuffer_get_length(in);
			if (n > c->msg_left)
				n = (size_t)c->msg_left;
			evbuffer_drain(in, n);
			c->msg_left -= n;
			if (c->msg_left)
				return;
		}
		{
			uint64_t left = c->msg_reply;
			bench_fill(out, SIZE_MAX, &left);
			c->msg_reply = 0;
		}
		if (evbuffer_get_length(in) < 8)
			return;
	}
}

static void srv_read_cb(struct bufferevent *bev, void *arg)
{
	struct srv_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer *out = bufferevent_get_output(bev);
	if (c->mode == SRV_HDR) {
		size_t n;
		char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
		int rc;
		if (line == NULL) {
			if (evbuffer_get_length(in) > SRV_HDR_MAX)
				srv_free(c);
			return;
		}
		rc = srv_header(c, line);
		free(line);
		if (rc != 0) {
			srv_free(c);
			return;
		}
		if (srv_progress(c))
			return;
	}
	switch (c->mode) {
	case SRV_ECHO:
		evbuffer_add_buffer(out, in);
		if (evbuffer_get_length(out) >= BENCH_OUT_HIGH)
			bufferevent_disable(bev, EV_READ);
		break;
	case SRV_SINK:
		c->got += evbuffer_get_length(in);
		evbuffer_drain(in, evbuffer_get_length(in));
		break;
	case SRV_SRC:
		evbuffer_drain(in, evbuffer_get_length(in));
		break;
	case SRV_RPC:
		srv_rpc(c, in, out);
		break;
	case SRV_HDR:
		break;
	}
}

static void srv_write_cb(struct bufferevent *bev, void *arg)
{
	(void)srv_progress(arg);
}

static void srv_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct srv_conn *c = arg;
	if ((what & BEV_EVENT_ERROR) || !(what & BEV_EVENT_EOF) || c->mode == SRV_HDR) {
		srv_free(c);
		return;
	}
	c->peer_eof = 1;
	bufferevent_disable(bev, EV_READ);
	if (c->mode == SRV_SINK) {
		evbuffer_add_printf(bufferevent_get_output(bev), "OK %" PRIu64 "\n", c->got);
		return; /* freed by the write callback once flushed */
	}
	if (c->mode == SRV_ECHO)
		evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
	(void)srv_progress(c);
}

static void srv_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
			  int salen, void *arg)
{
	struct event_base *base = arg;
	struct srv_conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	sr_sock_nodelay(fd);
	c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		free(c);
		return;
	}
	srv_live++;
	bench_bev_tune(c->bev);
	bufferevent_setwatermark(c->bev, EV_WRITE, BENCH_OUT_HIGH / 2, 0);
	bufferevent_setcb(c->bev, srv_read_cb, srv_write_cb, srv_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void srv_accept_error_cb(struct evconnlistener *l, void *arg)
{
	/* EMFILE and friends: keep the listener; the scenario reports failures. */
	int err = EVUTIL_SOCKET_ERROR();
	fprintf(stderr, "sparkrelay-bench server: accept: %s\n", evutil_socket_error_to_string(err));
}

static void srv_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopexit(arg, NULL);
}

static void srv_usage(void)
{
	fprintf(stderr, "usage: sparkrelay-bench server --listen HOST:PORT [--listen ...] "
			"[--max-seconds S]\n");
}

int bench_server_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"max-seconds", required_argument, NULL, 'm'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct evconnlistener *ls[SRV_MAX_LISTEN] = {0};
	const char *addrs[SRV_MAX_LISTEN];
	struct event *sigint = NULL, *sigterm = NULL, *stop = NULL;
	struct event_base *base;
	double max_s = 3600;
	int naddr = 0, i, opt, rc = 1;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			if (naddr == SRV_MAX_LISTEN) {
				fprintf(stderr, "at most %d --listen\n", SRV_MAX_LISTEN);
				return 2;
			}
			addrs[naddr++] = optarg;
			break;
		case 'm':
			max_s = strtod(optarg, NULL);
			break;
		default:
			srv_usage();
			return 2;
		}
	}
	if (naddr == 0 || max_s <= 0) {
		srv_usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	sr_raise_nofile();
	base = event_base_new();
	if (base == NULL)
		return 1;
	for (i = 0; i < naddr; i++) {
		char host[SR_ADDRSTRLEN];
		uint16_t port;
		struct sockaddr_storage ss;
		socklen_t len;
		if (sr_split_hostport(addrs[i], host, sizeof(host), &port, -1) != 0 ||
		    sr_parse_addr(host, port, &ss, &len) != 0) {
			fprintf(stderr, "sparkrelay-bench server: bad address %s\n", addrs[i]);
			goto out;
		}
		ls[i] = evconnlistener_new_bind(base, srv_accept_cb, base,
						LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE |
							LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_DISABLED,
						4096, (struct sockaddr *)&ss, (int)len);
		if (ls[i] == NULL) {
			fprintf(stderr, "sparkrelay-bench server: cannot listen on %s: %s\n",
				addrs[i], strerror(errno));
			goto out;
		}
		/* Enabled here, checked: libevent's own enable ignores a failure. */
		if (evconnlistener_enable(ls[i]) != 0) {
			fprintf(stderr, "sparkrelay-bench server: cannot accept on %s\n",
				addrs[i]);
			goto out;
		}
		evconnlistener_set_error_cb(ls[i], srv_accept_error_cb);
	}
	sigint = evsignal_new(base, SIGINT, srv_stop_cb, base);
	sigterm = evsignal_new(base, SIGTERM, srv_stop_cb, base);
	stop = evtimer_new(base, srv_stop_cb, base);
	if (sigint == NULL || sigterm == NULL || stop == NULL)
		goto out;
	{
		struct timeval tv = bench_tv(max_s);
		evsignal_add(sigint, NULL);
		evsignal_add(sigterm, NULL);
		evtimer_add(stop, &tv);
	}
	printf("sparkrelay-bench server listening on");
	for (i = 0; i < naddr; i++)
		printf(" %s", addrs[i]);
	printf("\n");
	fflush(stdout);
	event_base_dispatch(base);
	rc = 0;
out:
	if (sigint)
		event_free(sigint);
	if (sigterm)
		event_free(sigterm);
	if (stop)
		event_free(stop);
	for (i = 0; i < naddr; i++)
		if (ls[i])
			evconnlistener_free(ls[i]);
	/* Live connections are reclaimed by exit; the loop has stopped. */
	event_base_free(base);
	return rc;
}
