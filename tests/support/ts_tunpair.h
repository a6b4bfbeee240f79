/* Test support: a relay-role and a sidecar-role tun_conn driven through their
 * sans-I/O interface, each with its group (tun_group.h), the bytes between
 * them carried by the test, and executor <-> driver connections through them
 * played over real TCP sockets on loopback (ts_end.h). The test cuts the
 * tunnel where it likes (ts_tp_cut); the next tunnel resumes the lease: the
 * control messages of a resume are played here as relay_tunnel.c and the
 * sidecar do (register with the resume token, a lease that announces the held
 * streams, the relay reopening them). Used by test_resume.c and
 * test_tun_handover.c; the randomness is seeded, so a failure names the seed
 * that reproduces it. Helpers fail the running cmocka test on error. */
#ifndef TS_TUNPAIR_H
#define TS_TUNPAIR_H

#include <stddef.h>
#include <stdint.h>

#include "tests/support/ts_end.h"

struct event_base;
struct evbuffer;
struct tun_conn;
struct tun_group;

#define TS_TP_MAXF 6
#define TS_TP_LEASE "L-1-0123abcd"
#define TS_TP_PORT 41000

/* One executor connection: the executor's end and the driver's. */
struct ts_flow {
	uint64_t conn_id;
	struct ts_end ex, dr;
	int dialled; /* the sidecar dialled the driver for it */
};

struct ts_tp {
	struct event_base *base;
	struct tun_conn *relay, *sc; /* the tunnel now; NULL between a cut and ts_tp_up */
	int closed[2];		     /* on_closed calls: relay, sidecar */
	struct tun_group *gr, *gs;
	struct evbuffer *r2s, *s2r; /* bytes in flight */
	int resuming;		    /* the next register carries the resume token */
	int leased;		    /* sidecar: lease seen on this tunnel */
	struct ts_flow f[TS_TP_MAXF];
	int nf;
	int lfd; /* the loopback listener the flows' sockets are made through */
	uint16_t lport;
	uint64_t rng;
	uint64_t cuts;	/* this iteration */
	uint64_t grows; /* receive window growths, every session since ts_tp_new */
	int small_bufs; /* the driver sockets' kernel buffers as small as can be */
};

/* A harness with its listener, nothing running; ts_tp_free ends it. */
struct ts_tp *ts_tp_new(void);
void ts_tp_free(struct ts_tp *h);
/* cmocka setup and teardown: *state is a new harness, log level ERROR
 * unless SR_TEST_LOG names another. */
int ts_tp_setup(void **state);
int ts_tp_teardown(void **state);

/* A number below n (0 if n is 0), from the harness's seeded sequence. */
uint32_t ts_tp_rnd(struct ts_tp *h, uint32_t n);
void ts_tp_seed(struct ts_tp *h, uint64_t seed);

/* A new loop and both groups (holding streams for 60 s); no tunnel yet. */
void ts_tp_begin(struct ts_tp *h);
/* Both sessions, groups and flows' sockets, and the loop. */
void ts_tp_end(struct ts_tp *h);

/* A new tunnel (random small windows, so that much is acknowledged and
 * retained), up until the sidecar has its lease; it resumes if a cut came
 * before. */
void ts_tp_up(struct ts_tp *h);
/* Move up to n bytes of what is in flight, each way. */
void ts_tp_deliver(struct ts_tp *h, size_t n);
/* Let every flow's ends send and read what they can, and run the loop once. */
void ts_tp_service(struct ts_tp *h);
/* deliver, service and sleep 2 ms, for ms milliseconds of real time. */
void ts_tp_run_for(struct ts_tp *h, uint64_t ms);
/* The tunnel dies: a random part of what is in flight arrives, the rest is
 * lost with the connection; both sessions see the transport fail and are
 * freed. The streams are held by the groups until ts_tp_up. */
void ts_tp_cut(struct ts_tp *h);

/* Open flow i's stream from the relay: a TCP pair through the listener, the
 * executor's end being the test's. Its ends are set up by the caller. */
void ts_tp_open_flow(struct ts_tp *h, int i);

/* One iteration of the random test: 1 to TS_TP_MAXF flows of random sizes
 * (now and then one end resets midway), the tunnel cut 1 to 3 times at
 * random moments, after_cut (if any) called after each cut, before the next
 * tunnel. Then every exchange must have gone right, nothing may stay held,
 * and both sessions' streams_active gauge must be back to 0. trace_env names
 * a variable that prints progress when set. */
void ts_tp_run_one(struct ts_tp *h, uint64_t seed, void (*after_cut)(struct ts_tp *h),
		   const char *trace_env);

#endif
