/* sparkrelay-fleet-hop: the two ends of the relay-to-relay hop as standalone
 * forwarders, so that bench/hop.sh can measure the hop by itself.
 *
 *   client -> z (--listen) ==header + bytes, spliced==> x (--listen) -> --target
 *
 * z plays the relay without a tunnel of the lease: it accepts, writes a
 * fleet/peer.h header and splices the connection to x. x plays the relay
 * that has one: its peer listener checks the header, and in place of a
 * tunnel it splices the connection to --target. fwd splices what it accepts
 * to --target without a header: one relay that serves the executor itself,
 * the path the hop is compared with. Each exits 0 on SIGTERM or SIGINT, and
 * after --max-seconds in any case. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_util.h"
#include "fleet/peer.h"
#include "fleet/splice.h"

static const char hop_usage_text[] =
    "usage: sparkrelay-fleet-hop z --listen HOST:PORT --peer HOST:PORT --secret FILE\n"
    "                              [--lease ID] [--max-seconds S]\n"
    "       sparkrelay-fleet-hop x --listen HOST:PORT --target HOST:PORT --secret FILE\n"
    "                              [--max-seconds S]\n"
    "       sparkrelay-fleet-hop fwd --listen HOST:PORT --target HOST:PORT --secret FILE\n"
    "                              [--max-seconds S]\n";

/* x's relay id, which z's headers name. */
#define HOP_X_ID "hop-x"

struct hop {
	struct event_base *base;
	struct fleet_secret *sec;
	struct sockaddr_storage next; /* z: x's peer address; x: the target */
	socklen_t nextlen;
	const char *lease;
	unsigned long pairs, unreached, resets;
};

static int hop_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[SR_ADDRSTRLEN];
	uint16_t port;

	if (sr_split_hostport(s, host, sizeof(host), &port, -1) != 0 || port == 0)
		return -1;
	return sr_parse_addr(host, port, ss, len) == 0 ? 0 : -1;
}

static void hop_pair_cb(struct fleet_splice *sp, enum fleet_splice_end end, int err, void *arg)
{
	struct hop *h = arg;

	if (end == FLEET_SPLICE_UNREACHED)
		h->unreached++;
	else if (end == FLEET_SPLICE_RESET)
		h->resets++;
	fleet_splice_free(sp); /* resets a after UNREACHED: one peer only here */
}

/* Splice fd with the next hop, prefix in front. */
static void hop_forward(struct hop *h, int fd, const void *prefix, size_t plen)
{
	struct fleet_splice *sp = fleet_splice_new(h->base, fd, NULL, hop_pair_cb, h);

	if (sp == NULL) {
		sr_sock_set_reset_on_close(fd);
		close(fd);
		return;
	}
	h->pairs++;
	if (fleet_splice_connect(sp, (struct sockaddr *)&h->next, h->nextlen, prefix, plen) !=
	    0)
		fleet_splice_free(sp);
}

static void z_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
			int salen, void *arg)
{
	struct hop *h = arg;
	struct fleet_peer_hdr hdr;
	uint8_t buf[FLEET_PEER_HDR_MAX];
	int n;

	sr_sock_nodelay((int)fd);
	if (h->lease == NULL) {
		hop_forward(h, (int)fd, NULL, 0);
		return;
	}
	if (fleet_peer_hdr_init(&hdr, h->lease, TUN_PORT_DRIVER, sa) != 0 ||
	    (n = fleet_peer_hdr_encode(&hdr, h->sec, HOP_X_ID, buf, sizeof(buf))) < 0) {
		sr_sock_set_reset_on_close((int)fd);
		close((int)fd);
		return;
	}
	hop_forward(h, (int)fd, buf, (size_t)n);
}

static void x_peer_cb(const struct fleet_peer_hdr *hdr, int fd, void *arg)
{
	sr_sock_nodelay(fd);
	hop_forward(arg, fd, NULL, 0);
}

static void hop_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"peer", required_argument, NULL, 'p'},
	    {"target", required_argument, NULL, 't'},
	    {"secret", required_argument, NULL, 's'},
	    {"lease", required_argument, NULL, 'L'},
	    {"max-seconds", required_argument, NULL, 'm'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *listen_s = NULL, *next_s = NULL, *secret = NULL, *mode;
	struct sockaddr_storage lss;
	socklen_t llen;
	struct hop h;
	struct evconnlistener *lev = NULL;
	struct fleet_peer_listener *pl = NULL;
	struct event *sigterm, *sigint, *stop;
	struct timeval tv;
	long max_s = 3600;
	char err[256] = "";
	int c, rc;

	memset(&h, 0, sizeof(h));
	h.lease = "L-1-0badc0de";
	if (argc < 2 || (strcmp(argv[1], "z") != 0 && strcmp(argv[1], "x") != 0 &&
			 strcmp(argv[1], "fwd") != 0)) {
		fputs(hop_usage_text, stderr);
		return 2;
	}
	mode = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'l':
			listen_s = optarg;
			break;
		case 'p':
		case 't':
			next_s = optarg;
			break;
		case 's':
			secret = optarg;
			break;
		case 'L':
			h.lease = optarg;
			break;
		case 'm':
			max_s = strtol(optarg, NULL, 10);
			break;
		default:
			fputs(hop_usage_text, stderr);
			return c == 'h' ? 0 : 2;
		}
	}
	if (!listen_s || !next_s || !secret || max_s <= 0 ||
	    hop_addr(listen_s, &lss, &llen) != 0 ||
	    hop_addr(next_s, &h.next, &h.nextlen) != 0) {
		fputs(hop_usage_text, stderr);
		return 2;
	}
	sr_log_set_role("fleet-hop");
	signal(SIGPIPE, SIG_IGN);
	sr_raise_nofile();
	if ((rc = fleet_secret_load(secret, &h.sec, err, sizeof(err))) != 0) {
		fprintf(stderr, "sparkrelay-fleet-hop: %s\n", err);
		return 1;
	}
	h.base = event_base_new();
	if (h.base == NULL)
		return 1;
	if (strcmp(mode, "fwd") == 0)
		h.lease = NULL; /* z's listener without the header */
	if (mode[0] != 'x') {
		lev = evconnlistener_new_bind(h.base, z_accept_cb, &h,
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
						  LEV_OPT_CLOSE_ON_EXEC,
					      1024, (struct sockaddr *)&lss, (int)llen);
		if (lev == NULL)
			snprintf(err, sizeof(err), "cannot listen on %s: %s", listen_s,
				 strerror(errno));
	} else {
		pl = fleet_peer_listener_new(h.base, (struct sockaddr *)&lss, llen, h.sec,
					     HOP_X_ID, NULL, x_peer_cb, &h, err, sizeof(err));
	}
	if (lev == NULL && pl == NULL) {
		fprintf(stderr, "sparkrelay-fleet-hop: %s\n", err);
		return 1;
	}
	sigterm = evsignal_new(h.base, SIGTERM, hop_stop_cb, h.base);
	sigint = evsignal_new(h.base, SIGINT, hop_stop_cb, h.base);
	stop = evtimer_new(h.base, hop_stop_cb, h.base);
	tv = sr_tv_ms((uint64_t)max_s * 1000u);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	evtimer_add(stop, &tv);
	event_base_dispatch(h.base);
	fprintf(stderr, "sparkrelay-fleet-hop %s: %lu pairs, %lu unreached, %lu reset\n", mode,
		h.pairs, h.unreached, h.resets);
	if (pl != NULL) {
		for (int s = FLEET_PEER_BAD_MAGIC; s < FLEET_PEER_STATUS_MAX; s++)
			if (fleet_peer_listener_count(pl, s))
				fprintf(stderr, "  refused %s: %llu\n",
					fleet_peer_status_name(s),
					(unsigned long long)fleet_peer_listener_count(pl, s));
	}
	/* Pairs still open are left to the exit: this is a bench tool. */
	event_free(sigterm);
	event_free(sigint);
	event_free(stop);
	fleet_peer_listener_free(pl);
	if (lev)
		evconnlistener_free(lev);
	fleet_secret_free(h.sec);
	return 0;
}
