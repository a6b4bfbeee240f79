/* Test support: a real etcd (Debian's etcd-server, /usr/bin/etcd) for one
 * test or one group of tests: a single member on loopback ports picked at
 * start, in a private temporary folder, optionally with TLS and client
 * certificates required. Every helper fails the running cmocka test on
 * error (with the tail of etcd's log).
 *
 * Nothing is left behind: etcd dies with the test process (PDEATHSIG), and
 * a small reaper process removes the folder (and kills etcd) when the test
 * process ends in any way, a crash or SIGKILL included. ts_etcd_stop does
 * the same at once, from a teardown. */
#ifndef TS_ETCD_H
#define TS_ETCD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/support/ts_sys.h"

#define TS_ETCD_PATH 192

struct ts_etcd_opts {
	/* https with a server certificate from a fresh CA, client certificates
	 * required (--client-cert-auth) */
	int tls;
	/* etcd's --experimental-watch-progress-notify-interval ("1s"); NULL: its
	 * default (10 min) */
	const char *progress_interval;
};

struct ts_etcd {
	struct ts_etcd_opts o;
	pid_t pid; /* 0: not running */
	int paused;
	uint16_t port, peer_port;
	char url[64]; /* http(s)://127.0.0.1:port */
	struct ts_dir dir;
	char data[TS_ETCD_PATH], log[TS_ETCD_PATH];
	/* with tls: the CA, and a client certificate it accepts */
	char ca[TS_ETCD_PATH], client_cert[TS_ETCD_PATH], client_key[TS_ETCD_PATH];
	char server_cert[TS_ETCD_PATH], server_key[TS_ETCD_PATH];
	int reaper_fd;
	pid_t reaper;
};

/* 1 if an etcd binary is installed. */
int ts_etcd_installed(void);

/* Start a fresh etcd (zero e first) and wait until it is healthy (20 s at
 * most). tag names the folder /tmp/sr-<tag>-XXXXXX. */
void ts_etcd_start(struct ts_etcd *e, const char *tag, const struct ts_etcd_opts *o);
/* SIGKILL, and wait for it to be gone; the data stays for ts_etcd_restart. */
void ts_etcd_kill(struct ts_etcd *e);
/* Start it again on the same data and ports; wait until healthy. */
void ts_etcd_restart(struct ts_etcd *e);
/* SIGSTOP (paused 1) or SIGCONT (paused 0): etcd briefly unavailable, its
 * sockets open but silent. */
void ts_etcd_pause(struct ts_etcd *e, int paused);
/* Kill it and remove its folder. Safe on a zeroed struct, after a failed
 * start, and twice: meant for teardowns. */
void ts_etcd_stop(struct ts_etcd *e);

/* A blocking POST of json to the gateway (path "/v3/kv/put", ...), for
 * tests that act on etcd from outside the client under test. Returns the
 * HTTP status; the answer (cut to fit) in out if out is not NULL. */
long ts_etcd_post(const struct ts_etcd *e, const char *path, const char *json, char *out,
		  size_t outlen);

#endif
