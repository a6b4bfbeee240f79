/* Shared between the files of the sidecar role; not part of its API.
 *
 *   sidecar.c    the dial state machine: resolve, dial, register, lease,
 *                reconnect with backoff, release on shutdown
 *   sc_driver.c  streams to the driver: checked against the lease, then a
 *                socket to 127.0.0.1:<port>
 *   sc_output.c  what the sidecar writes: the Spark settings (fragment,
 *                JSON, stdout) and the state file with the resume token */
#ifndef SC_INT_H
#define SC_INT_H

#include <stddef.h>
#include <stdint.h>

#include "sidecar/sidecar.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_group.h"

struct bufferevent;
struct event_base;

/* sc_driver.c */
/* A socket to the driver for a CONNECT the relay opened, or NULL (refused,
 * logged). Only when leased_here (the lease was granted on this tunnel),
 * req names that lease and one of its ports; the socket always goes to
 * 127.0.0.1. Sets *req->connected when connect() completed at once. */
struct bufferevent *sc_driver_connect(struct event_base *base, const struct tun_connect_req *req,
				      const struct sidecar_lease_info *lease, int leased_here,
				      uint32_t connect_timeout_ms, const char *logctx);

/* sc_output.c */
/* The resume token kept in path (NULL: none) into resume (at least
 * TUN_CTL_RESUME_MAX bytes); "" if there is none or it is not valid. */
void sc_state_load(const char *path, char *resume, size_t len);
void sc_state_save(const char *path, const char *resume, const struct sidecar_lease_info *l);
void sc_state_clear(const char *path);
/* The Spark settings of a lease on stdout, for the notebook user. */
void sc_print_settings(const struct sidecar_lease_info *l);

#endif
