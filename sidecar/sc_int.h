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

#include "common/sr_log.h"
#include "sidecar/sidecar.h"
#include "tunnel/tun_conn.h"
#include "tunnel/tun_group.h"

struct sr_bsock;
struct event_base;

/* sc_driver.c */
/* Lines about the driver refusing connections, at most one per this. */
#define SC_DRIVER_LOG_PERIOD_US (10ull * 1000000)

/* A socket to the driver for a CONNECT the relay opened, or NULL (refused,
 * logged). Only when leased_here (the lease was granted on this tunnel),
 * req names that lease and one of its ports; the socket always goes to
 * 127.0.0.1. Sets *req->connected when connect() completed at once. A
 * driver that refuses is logged through rl (sc_driver_refused); a refused
 * stream through tun_conn_log_refused (rate-limited per tunnel). */
struct sr_bsock *sc_driver_connect(struct tun_conn *c, struct event_base *base,
				   const struct tun_connect_req *req,
				   const struct sidecar_lease_info *lease, int leased_here,
				   uint32_t connect_timeout_ms, struct sr_ratelog *rl);
/* The driver did not take a connection for a stream (err: errno value):
 * the most common setup mistake (the driver not started, or started
 * without the lease's settings), so a WARN line at the default level, at
 * most one per SC_DRIVER_LOG_PERIOD_US with the count of the others. */
void sc_driver_refused(struct sr_ratelog *rl, const char *logctx, uint64_t conn_id,
		       const char *peer, uint16_t port, int err);

/* sc_output.c */
/* Write the Spark settings of lease info where o says (spark_conf fragment,
 * spark_json, the block in spark_defaults), each atomically. Returns 0 or
 * an SR_E* code with the reason in err. */
int sc_settings_write(const struct sidecar_opts *o, const struct sidecar_lease_info *info,
		      char *err, size_t errlen);
/* The lease is gone: remove spark_json and the fragment, and the block from
 * spark_defaults; failures are logged. */
void sc_settings_remove(const struct sidecar_opts *o, const char *logctx);
/* In the spark-defaults.conf at path (NULL: nothing to do), replace the
 * "# sparkrelay begin/end" block with the settings of l, dropping other
 * lines that set one of them; l NULL: only remove the block. Other lines
 * are kept as they are. Not through a symlink, not a file over 1 MiB; the
 * file keeps its mode. Returns 0 or an SR_E* code with the reason in err. */
int sc_defaults_update(const char *path, const struct sidecar_lease_info *l,
		       uint32_t direct_result_mib, char *err, size_t errlen);

/* What the status file says (tunnel.status_file). */
enum sc_status {
	SC_STATUS_CONNECTING,   /* no lease yet: resolving, dialling, registering */
	SC_STATUS_LEASED,       /* a lease, and its tunnel is up */
	SC_STATUS_RECONNECTING, /* a lease, its tunnel lost: dialling again */
	SC_STATUS_UNREACHABLE,  /* the last attempt to reach a relay failed */
	SC_STATUS_NO_LEASE,     /* the relay refused or ended the lease */
	SC_STATUS_STOPPED,      /* the sidecar exited (lease released) */
};
const char *sc_status_name(enum sc_status st);
/* Rewrite the status file at path (NULL: none): state, the lease of l,
 * lease_changes (how many times the lease's host or ports changed), pid,
 * time, and message (escaped). Failures are logged. */
void sc_status_write(const char *path, enum sc_status st, const struct sidecar_lease_info *l,
		     uint64_t changes, const char *message);

/* The resume token kept in path (NULL: none) into resume (at least
 * TUN_CTL_RESUME_MAX bytes); "" if there is none or it is not valid. l
 * gets the lease it belongs to (lease id, host, ports; have_lease 0 if
 * none or not valid). */
void sc_state_load(const char *path, char *resume, size_t len, struct sidecar_lease_info *l);
void sc_state_save(const char *path, const char *resume, const struct sidecar_lease_info *l);
void sc_state_clear(const char *path);
/* The Spark settings of a lease on stdout, for the notebook user. */
void sc_print_settings(const struct sidecar_lease_info *l, uint32_t direct_result_mib);

#endif
