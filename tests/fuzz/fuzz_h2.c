/* libFuzzer target for the HTTP/2 ingress of a tunnel connection
 * (tunnel/tun_conn.c, tunnel/tun_stream.c), in both roles.
 *
 * The first input byte picks the role under test (bit 0: 0 = relay, the
 * HTTP/2 client; 1 = sidecar, the HTTP/2 server) and whether the sidecar's
 * first on_connect refuses (bit 1). The rest is the peer's byte stream,
 * fed to the conn with tun_conn_recv() (sans-I/O on the tunnel side) in
 * slices while the event loop runs a bounded number of non-blocking rounds;
 * what it sends is dropped. For the
 * sidecar role the HTTP/2 client preface is written first, so inputs start
 * at the frames. The relay under test has two executor streams open (ids 3
 * and 5, behind the control stream 1) with bytes waiting, as in the seeds.
 *
 * on_connect alternates between refusing (NULL) and dialling 127.0.0.1:1,
 * which the kernel refuses at once: both the refusal and the failed-connect
 * paths are reached without a real driver. Control messages are answered
 * (register -> lease) so the control stream's send path runs too.
 *
 * Seeds in corpus/h2 were recorded from a real relay/sidecar session by
 * tests/unit/tunnel/test_tun_conn.c (SR_H2_SEED_DIR=dir). */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#include "common/sr_bsock.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_ctl.h"

#define FZ_ROUNDS 24  /* non-blocking loop rounds per input */
#define FZ_SLICE 4096 /* input bytes written per round */
#define FZ_EXECUTORS 2

struct fz {
	struct event_base *base;
	int role;
	int nconnect;
	int refuse_first;
	int closed;
};

static void fz_on_ctl(struct tun_conn *c, const struct tun_ctl_msg *msg, void *arg)
{
	struct fz *f = arg;
	struct tun_ctl_msg reply;

	if (f->role != TUN_ROLE_RELAY || msg->type != TUN_CTL_REGISTER)
		return;
	memset(&reply, 0, sizeof(reply));
	reply.type = TUN_CTL_LEASE;
	snprintf(reply.lease, sizeof(reply.lease), "L-1");
	snprintf(reply.host, sizeof(reply.host), "relay.example");
	reply.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	reply.ports[TUN_PORT_DRIVER] = 40001;
	reply.ttl_s = 60;
	snprintf(reply.resume, sizeof(reply.resume), "r");
	(void)tun_conn_send_ctl(c, &reply);
}

static void fz_on_ctl_open(struct tun_conn *c, void *arg)
{
	struct tun_ctl_msg reg;

	memset(&reg, 0, sizeof(reg));
	reg.type = TUN_CTL_REGISTER;
	snprintf(reg.app, sizeof(reg.app), "fuzz");
	reg.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER);
	(void)tun_conn_send_ctl(c, &reg);
}

static struct sr_bsock *fz_on_connect(struct tun_conn *c, const struct tun_connect_req *req,
					 void *arg)
{
	struct fz *f = arg;
	struct sr_bsock *bev;
	struct sockaddr_in sin;
	int fd;

	if ((f->nconnect++ & 1) == (f->refuse_first ? 0 : 1))
		return NULL;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || !(bev = sr_bsock_new(f->base, fd)))
		return NULL;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(1);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	/* Refused: reported from the loop, as a driver that is not there. */
	if (sr_bsock_connect(bev, (struct sockaddr *)&sin, sizeof(sin), NULL) != 0) {
		sr_bsock_free(bev);
		return NULL;
	}
	return bev;
}

static void fz_on_closed(struct tun_conn *c, int err, void *arg)
{
	struct fz *f = arg;

	if (f->closed++) {
		fprintf(stderr, "on_closed called twice\n");
		abort();
	}
}

/* What the conn sends is dropped, so its output never backs up. */
static void fz_on_output(struct tun_conn *c, void *arg)
{
	struct evbuffer *out = tun_conn_output(c);
	evbuffer_drain(out, evbuffer_get_length(out));
}

static const struct tun_conn_cbs fz_cbs = {
    .on_output = fz_on_output,
    .on_ctl = fz_on_ctl,
    .on_ctl_open = fz_on_ctl_open,
    .on_connect = fz_on_connect,
    .on_closed = fz_on_closed,
};

/* Read and drop what a socket received. */
static void fz_drain(int fd)
{
	char buf[16384];
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

/* Feed the next slice of [*p, end) to the conn. */
static void fz_feed(struct tun_conn *c, const uint8_t **p, const uint8_t *end, size_t max)
{
	size_t n = (size_t)(end - *p) < max ? (size_t)(end - *p) : max;

	if (n == 0)
		return;
	(void)tun_conn_recv(c, *p, n);
	*p += n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	sr_log_set_level(getenv("FUZZ_H2_LOG") ? SR_LOG_DEBUG : -1);
	signal(SIGPIPE, SIG_IGN);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char preface[] = NGHTTP2_CLIENT_MAGIC;
	struct fz f;
	struct tun_conn_opts opts;
	struct tun_conn *c = NULL;
	int ex[FZ_EXECUTORS][2];
	const uint8_t *p, *end;

	if (size < 1)
		return 0;
	memset(&f, 0, sizeof(f));
	for (int i = 0; i < FZ_EXECUTORS; i++)
		ex[i][0] = ex[i][1] = -1;
	f.role = (data[0] & 1) ? TUN_ROLE_SIDECAR : TUN_ROLE_RELAY;
	f.refuse_first = (data[0] >> 1) & 1;
	p = data + 1;
	end = data + size;

	f.base = event_base_new();
	if (!f.base)
		return 0;

	/* Small limits so that inputs of a few KiB reach the caps. */
	memset(&opts, 0, sizeof(opts));
	opts.stream_window = 65535;
	opts.conn_window = 1u << 20;
	opts.ctl_max = 4096;
	opts.out_high = 64u << 10;
	opts.sock_read_high = 16u << 10;
	opts.max_streams = 16;
	c = tun_conn_new(f.base, (enum tun_role)f.role, &opts, &fz_cbs, &f, "fuzz");
	if (!c)
		goto out;
	tun_conn_start(c);

	if (f.role == TUN_ROLE_RELAY) {
		for (int i = 0; i < FZ_EXECUTORS; i++) {
			struct sr_bsock *sb;
			static const char hello[] = "executor bytes";
			if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, ex[i]) != 0)
				goto out;
			(void)send(ex[i][1], hello, sizeof(hello) - 1, MSG_NOSIGNAL);
			sb = sr_bsock_new(f.base, ex[i][0]);
			if (!sb)
				goto out;
			ex[i][0] = -1;
			(void)tun_conn_open_stream(c, sb, 40001, "L-1", (uint64_t)i + 1,
						   "10.0.0.9:5000");
		}
	} else {
		(void)tun_conn_recv(c, (const uint8_t *)preface, sizeof(preface) - 1);
	}

	for (int r = 0; r < FZ_ROUNDS; r++) {
		fz_feed(c, &p, end, FZ_SLICE);
		event_base_loop(f.base, EVLOOP_NONBLOCK);
		for (int i = 0; i < FZ_EXECUTORS; i++)
			if (ex[i][1] >= 0)
				fz_drain(ex[i][1]);
		if (p == end && r >= 4 && f.closed)
			break;
	}

out:
	tun_conn_free(c);
	for (int i = 0; i < FZ_EXECUTORS; i++) {
		if (ex[i][0] >= 0)
			close(ex[i][0]);
		if (ex[i][1] >= 0)
			close(ex[i][1]);
	}
	event_base_free(f.base);
	return 0;
}
