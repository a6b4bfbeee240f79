/* sr-netem: a long, lossy link between two network namespaces, in user space.
 *
 * The kernel of the bench machine has no sch_netem. This program creates one
 * TUN device in each of two network namespaces and forwards every IP packet
 * from one to the other after a fixed one-way delay, dropping each packet
 * independently with a given probability. Both directions get the same
 * delay and loss, like netem on both ends of a link: the round trip is twice
 * the delay. There is no rate limit; the link's capacity is what this loop
 * forwards.
 *
 *   sr-netem --ns-a /run/netns/A --ns-b /run/netns/B --delay-ms 25 --loss 0.01
 *
 * It creates the devices (default names srnetem0 in both) and then waits;
 * the caller gives them addresses and brings them up (`ip -n A ...`). The
 * devices disappear when this process exits. It stops by itself after
 * --max-seconds, and on SIGTERM/SIGINT, printing its counters to stderr.
 *
 * Bounded: at most --queue-mib of packets wait per direction (tail drop past
 * it, counted), packets are at most 65535 bytes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* setns, ppoll */
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define NETEM_PKT_MAX 65535
#define NETEM_BURST 64 /* packets read from one device per wake-up */

struct netem_pkt {
	struct netem_pkt *next;
	uint64_t due_ns;
	size_t len;
	unsigned char data[];
};

/* One direction: packets read from `in` wait in a FIFO (the delay is the
 * same for all, so arrival order is due order) until written to `out`. */
struct netem_dir {
	const char *name;
	int in, out;
	struct netem_pkt *head, *tail;
	size_t queued_bytes;
	uint64_t rx, rx_bytes, lost, overflow, tx, tx_bytes, tx_err, max_queued;
};

static volatile sig_atomic_t netem_stop;

static void netem_on_signal(int sig)
{
	(void)sig;
	netem_stop = 1;
}

static uint64_t netem_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: reproducible from --seed, good enough for a drop decision. */
static uint64_t netem_rng_state = 0x9e3779b97f4a7c15u;

static double netem_uniform(void)
{
	uint64_t x = netem_rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	netem_rng_state = x;
	return (double)((x * 0x2545f4914f6cdd1du) >> 11) * (1.0 / 9007199254740992.0);
}

/* Creates TUN device `name` inside the namespace at `ns_path` and returns its
 * non-blocking descriptor; the caller's namespace is restored. -1 on error,
 * with a message on stderr. */
static int netem_tun_in_ns(const char *ns_path, const char *name, int home_fd)
{
	struct ifreq ifr;
	int ns_fd, fd = -1;

	ns_fd = open(ns_path, O_RDONLY | O_CLOEXEC);
	if (ns_fd < 0) {
		fprintf(stderr, "sr-netem: %s: %s\n", ns_path, strerror(errno));
		return -1;
	}
	if (setns(ns_fd, CLONE_NEWNET) != 0) {
		fprintf(stderr, "sr-netem: setns %s: %s\n", ns_path, strerror(errno));
		close(ns_fd);
		return -1;
	}
	close(ns_fd);
	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "sr-netem: /dev/net/tun: %s\n", strerror(errno));
		goto home;
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
		fprintf(stderr, "sr-netem: TUNSETIFF %s in %s: %s\n", name, ns_path,
			strerror(errno));
		close(fd);
		fd = -1;
	}
home:
	if (setns(home_fd, CLONE_NEWNET) != 0) {
		fprintf(stderr, "sr-netem: setns back: %s\n", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

static void netem_release(struct netem_dir *d, uint64_t now)
{
	while (d->head != NULL && d->head->due_ns <= now) {
		struct netem_pkt *p = d->head;
		ssize_t n = write(d->out, p->data, p->len);
		if (n == (ssize_t)p->len) {
			d->tx++;
			d->tx_bytes += p->len;
		} else {
			d->tx_err++; /* the kernel refused it: a loss too */
		}
		d->head = p->next;
		if (d->head == NULL)
			d->tail = NULL;
		d->queued_bytes -= p->len;
		free(p);
	}
}

/* Reads what `in` has (at most a burst) and queues what survives. Returns -1
 * on a read error other than "nothing more". */
static int netem_intake(struct netem_dir *d, unsigned char *buf, uint64_t delay_ns,
			double loss, size_t queue_cap)
{
	int i;
	for (i = 0; i < NETEM_BURST; i++) {
		ssize_t n = read(d->in, buf, NETEM_PKT_MAX);
		struct netem_pkt *p;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			fprintf(stderr, "sr-netem: read %s: %s\n", d->name, strerror(errno));
			return -1;
		}
		if (n == 0)
			return 0;
		d->rx++;
		d->rx_bytes += (uint64_t)n;
		if (loss > 0 && netem_uniform() < loss) {
			d->lost++;
			continue;
		}
		if (d->queued_bytes + (size_t)n > queue_cap) {
			d->overflow++;
			continue;
		}
		p = malloc(sizeof(*p) + (size_t)n);
		if (p == NULL) {
			d->overflow++;
			continue;
		}
		memcpy(p->data, buf, (size_t)n);
		p->len = (size_t)n;
		p->next = NULL;
		p->due_ns = netem_now_ns() + delay_ns;
		if (d->tail != NULL)
			d->tail->next = p;
		else
			d->head = p;
		d->tail = p;
		d->queued_bytes += (size_t)n;
		if (d->queued_bytes > d->max_queued)
			d->max_queued = d->queued_bytes;
	}
	return 0;
}

static void netem_report(const struct netem_dir *d, double seconds)
{
	fprintf(stderr,
		"sr-netem %s: %llu packets in (%llu bytes), %llu lost (%.3f%%), %llu over the "
		"queue cap, %llu out (%llu bytes), %llu refused by the kernel; at most %llu bytes "
		"queued; %.1f s\n",
		d->name, (unsigned long long)d->rx, (unsigned long long)d->rx_bytes,
		(unsigned long long)d->lost, d->rx ? 100.0 * (double)d->lost / (double)d->rx : 0.0,
		(unsigned long long)d->overflow, (unsigned long long)d->tx,
		(unsigned long long)d->tx_bytes, (unsigned long long)d->tx_err,
		(unsigned long long)d->max_queued, seconds);
}

static void netem_drain(struct netem_dir *d)
{
	while (d->head != NULL) {
		struct netem_pkt *p = d->head;
		d->head = p->next;
		free(p);
	}
	d->tail = NULL;
	d->queued_bytes = 0;
}

static const char netem_usage[] =
	"usage: sr-netem --ns-a PATH --ns-b PATH [--dev-a NAME] [--dev-b NAME]\n"
	"                [--delay-ms D (25)] [--loss P (0.01)] [--seed N]\n"
	"                [--queue-mib M (64)] [--max-seconds S (3600)]\n"
	"One TUN device in each network namespace (PATH: /run/netns/NAME), packets\n"
	"forwarded between them after D ms one way, each dropped with probability P.\n";

int main(int argc, char **argv)
{
	enum { O_NSA = 256, O_NSB, O_DEVA, O_DEVB, O_DELAY, O_LOSS, O_SEED, O_QUEUE, O_MAX, O_HELP };
	static const struct option longopts[] = {
		{"ns-a", required_argument, NULL, O_NSA},
		{"ns-b", required_argument, NULL, O_NSB},
		{"dev-a", required_argument, NULL, O_DEVA},
		{"dev-b", required_argument, NULL, O_DEVB},
		{"delay-ms", required_argument, NULL, O_DELAY},
		{"loss", required_argument, NULL, O_LOSS},
		{"seed", required_argument, NULL, O_SEED},
		{"queue-mib", required_argument, NULL, O_QUEUE},
		{"max-seconds", required_argument, NULL, O_MAX},
		{"help", no_argument, NULL, O_HELP},
		{NULL, 0, NULL, 0},
	};
	const char *ns_a = NULL, *ns_b = NULL, *dev_a = "srnetem0", *dev_b = "srnetem0";
	double delay_ms = 25, loss = 0.01, queue_mib = 64, max_s = 3600;
	struct netem_dir dirs[2];
	struct sigaction sa;
	unsigned char *buf;
	uint64_t delay_ns, t0, t_end;
	size_t queue_cap;
	int opt, home_fd, fa, fb, i, rc = 0;

	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case O_NSA: ns_a = optarg; break;
		case O_NSB: ns_b = optarg; break;
		case O_DEVA: dev_a = optarg; break;
		case O_DEVB: dev_b = optarg; break;
		case O_DELAY: delay_ms = strtod(optarg, NULL); break;
		case O_LOSS: loss = strtod(optarg, NULL); break;
		case O_SEED: netem_rng_state = strtoull(optarg, NULL, 0) | 1u; break;
		case O_QUEUE: queue_mib = strtod(optarg, NULL); break;
		case O_MAX: max_s = strtod(optarg, NULL); break;
		case O_HELP: fputs(netem_usage, stdout); return 0;
		default: fputs(netem_usage, stderr); return 2;
		}
	}
	if (ns_a == NULL || ns_b == NULL || optind != argc || !(delay_ms >= 0 && delay_ms <= 10000) ||
	    !(loss >= 0 && loss < 1) || !(queue_mib > 0 && queue_mib <= 4096) ||
	    !(max_s > 0 && max_s <= 86400) || strlen(dev_a) >= IFNAMSIZ ||
	    strlen(dev_b) >= IFNAMSIZ) {
		fputs(netem_usage, stderr);
		return 2;
	}
	delay_ns = (uint64_t)(delay_ms * 1e6);
	queue_cap = (size_t)(queue_mib * 1024 * 1024);

	home_fd = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (home_fd < 0) {
		fprintf(stderr, "sr-netem: /proc/self/ns/net: %s\n", strerror(errno));
		return 1;
	}
	fa = netem_tun_in_ns(ns_a, dev_a, home_fd);
	fb = fa < 0 ? -1 : netem_tun_in_ns(ns_b, dev_b, home_fd);
	close(home_fd);
	if (fa < 0 || fb < 0) {
		if (fa >= 0)
			close(fa);
		return 1;
	}
	buf = malloc(NETEM_PKT_MAX);
	if (buf == NULL) {
		close(fa);
		close(fb);
		return 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = netem_on_signal; /* no SA_RESTART: ppoll returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	memset(dirs, 0, sizeof(dirs));
	dirs[0].name = "a->b";
	dirs[0].in = fa;
	dirs[0].out = fb;
	dirs[1].name = "b->a";
	dirs[1].in = fb;
	dirs[1].out = fa;
	fprintf(stderr, "sr-netem: %s in %s, %s in %s; %.3f ms one way, loss %.4f\n", dev_a, ns_a,
		dev_b, ns_b, delay_ms, loss);

	t0 = netem_now_ns();
	t_end = t0 + (uint64_t)(max_s * 1e9);
	while (!netem_stop) {
		struct pollfd pfd[2] = {{.fd = fa, .events = POLLIN}, {.fd = fb, .events = POLLIN}};
		uint64_t now = netem_now_ns(), wake = t_end;
		struct timespec ts;
		int n;
		if (now >= t_end)
			break;
		for (i = 0; i < 2; i++)
			if (dirs[i].head != NULL && dirs[i].head->due_ns < wake)
				wake = dirs[i].head->due_ns;
		wake = wake > now ? wake - now : 0;
		ts.tv_sec = (time_t)(wake / 1000000000u);
		ts.tv_nsec = (long)(wake % 1000000000u);
		n = ppoll(pfd, 2, &ts, NULL);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "sr-netem: poll: %s\n", strerror(errno));
			rc = 1;
			break;
		}
		for (i = 0; n > 0 && i < 2; i++) {
			if (pfd[i].revents & (POLLERR | POLLHUP | POLLNVAL)) {
				fprintf(stderr, "sr-netem: device %s failed\n", dirs[i].name);
				rc = 1;
				netem_stop = 1;
			} else if ((pfd[i].revents & POLLIN) &&
				   netem_intake(&dirs[i], buf, delay_ns, loss, queue_cap) != 0) {
				rc = 1;
				netem_stop = 1;
			}
		}
		now = netem_now_ns();
		for (i = 0; i < 2; i++)
			netem_release(&dirs[i], now);
	}
	for (i = 0; i < 2; i++) {
		netem_report(&dirs[i], (double)(netem_now_ns() - t0) / 1e9);
		netem_drain(&dirs[i]);
	}
	free(buf);
	close(fa);
	close(fb);
	return rc;
}
