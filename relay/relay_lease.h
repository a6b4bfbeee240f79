/* Port leases: sets of ports from a pool, bound and held by the relay for
 * the life of the lease (bind and keep the listener; never probe-then-bind).
 *
 * A lease is created for a registering sidecar. While a tunnel is attached,
 * executor connections accepted on its ports are handed to the owner. When
 * the tunnel detaches, a grace timer of ttl_s starts: the sidecar may resume
 * the lease (same ports) with its resume token; if it does not, on_expire is
 * called and the lease is freed. */
#ifndef RELAY_LEASE_H
#define RELAY_LEASE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tunnel/tun_ctl.h"

struct event_base;
struct relay_lease;
struct relay_lease_table;

struct relay_pool_opts {
	char *bind_address;   /* numeric address the lease ports bind to */
	char *advertise_host; /* what executors are told (spark.driver.host) */
	uint32_t port_min;    /* inclusive range */
	uint32_t port_max;
	uint32_t max_leases;  /* 0 = no limit but the range */
	uint32_t backlog;     /* listen() backlog of each lease port */
};

struct relay_lease_cbs {
	/* An executor connected to port `role` of lease l. fd is a connected,
	 * non-blocking socket that the callee owns. */
	void (*on_accept)(struct relay_lease *l, enum tun_port_role role, int fd,
			  const struct sockaddr *peer, int peerlen, void *arg);
	/* The grace TTL ran out with no tunnel attached. Called from a timer; the
	 * lease is freed by the table right after this returns. */
	void (*on_expire)(struct relay_lease *l, void *arg);
};

/* opts is copied (strings duplicated). Returns NULL on allocation failure. */
struct relay_lease_table *relay_lease_table_new(struct event_base *base,
						const struct relay_pool_opts *opts,
						const struct relay_lease_cbs *cbs, void *arg);
/* Frees every lease (closing its listeners, without on_expire). */
void relay_lease_table_free(struct relay_lease_table *t);

/* Create a lease with one bound, listening port per role in `roles`
 * (TUN_ROLE_BIT mask), picked from the pool skipping ports that are in use
 * by anyone. Listeners are enabled at once; accepted sockets go to on_accept.
 * Returns 0, SR_ENOPORTS (pool exhausted or every port busy), SR_EBUSY
 * (max_leases reached), SR_EINVAL, SR_ENOMEM. */
int relay_lease_create(struct relay_lease_table *t, const char *app, unsigned roles,
		       uint32_t ttl_s, struct relay_lease **out);

/* Look up by resume token (constant-time compare) or by id; NULL if none. */
struct relay_lease *relay_lease_find_resume(struct relay_lease_table *t, const char *token);
struct relay_lease *relay_lease_find_id(struct relay_lease_table *t, const char *id);

/* Give the lease a new random resume token; the old one no longer finds it.
 * Returns 0 or SR_EIO (the old token stays). */
int relay_lease_rotate_resume(struct relay_lease *l);

/* Release now: close the listeners and free the lease (no on_expire). */
void relay_lease_release(struct relay_lease *l);

/* A tunnel is attached (stops the grace timer) or detached (starts it). */
void relay_lease_attach(struct relay_lease *l);
void relay_lease_detach(struct relay_lease *l);

/* Update fields of a lease message (lease id, host, ports, ttl, resume). */
void relay_lease_describe(const struct relay_lease *l, struct tun_ctl_msg *msg);

const char *relay_lease_id(const struct relay_lease *l);       /* "L-<n>-<hex>" */
const char *relay_lease_app(const struct relay_lease *l);
uint32_t relay_lease_ttl(const struct relay_lease *l); /* grace TTL, seconds */
uint16_t relay_lease_port(const struct relay_lease *l, enum tun_port_role role); /* 0 if none */
/* Per-lease slot for the owner's use (pending executor list etc.). */
void relay_lease_set_data(struct relay_lease *l, void *data);
void *relay_lease_data(const struct relay_lease *l);

size_t relay_lease_count(const struct relay_lease_table *t);
/* The table's options (strings owned by the table). */
const struct relay_pool_opts *relay_lease_table_opts(const struct relay_lease_table *t);
/* Visit every lease (may not create or free leases while iterating). */
void relay_lease_foreach(struct relay_lease_table *t,
			 void (*fn)(struct relay_lease *l, void *arg), void *arg);

/* ---- live handover (relay_handover.c) -------------------------------------
 * A lease moves to another relay process as it is: its id, resume token and
 * ports, and its listening sockets themselves (passed with SCM_RIGHTS), so
 * that no executor connection is refused while it moves. */

/* What a lease is made of. */
struct relay_lease_state {
	const char *id;     /* "L-<n>-<hex>" */
	const char *app;
	const char *resume; /* its resume token */
	unsigned roles;
	uint32_t ttl_s;
	uint16_t ports[TUN_PORT_MAX]; /* by role, 0 where none */
	int fds[TUN_PORT_MAX];        /* their listening sockets, -1 where none */
};
/* Describe l; the strings and descriptors stay l's. */
void relay_lease_get_state(const struct relay_lease *l, struct relay_lease_state *st);
/* Rebuild a lease around listening sockets made by another process (not
 * bound again). Steals st->fds in every case. The listeners are stopped
 * (relay_lease_listen) and no grace period runs. Returns 0, SR_EINVAL (a
 * value breaks its rule, a port is outside the range or already held),
 * SR_EBUSY (the id exists) or SR_ENOMEM. */
int relay_lease_adopt(struct relay_lease_table *t, const struct relay_lease_state *st,
		      struct relay_lease **out);
/* 1 if adopt would take port: inside the table's range and held by no
 * lease of it. For checking ports learned elsewhere before binding them. */
int relay_lease_port_usable(const struct relay_lease_table *t, uint32_t port);
/* Accept on the lease's ports (on), or stop: the kernel then queues new
 * connections in each port's backlog. */
void relay_lease_listen(struct relay_lease *l, int on);
/* Milliseconds left of the grace period, or -1 while none runs. */
int64_t relay_lease_grace_left_ms(const struct relay_lease *l);
/* Stop the grace period (like attach) without a tunnel. */
void relay_lease_grace_stop(struct relay_lease *l);
/* Start the grace period with ms left. */
void relay_lease_detach_ms(struct relay_lease *l, uint64_t ms);

#endif
