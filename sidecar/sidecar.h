/* The sidecar role: dials the relay, registers the driver, writes the Spark
 * settings, and connects every tunnelled stream to 127.0.0.1:<leased port>. */
#ifndef SIDECAR_H
#define SIDECAR_H

#include <stdint.h>

#include "discovery/disc.h"
#include "tunnel/tun_conn.h"

struct event_base;
struct sidecar;

#define SIDECAR_MAX_RELAYS 16
#define SIDECAR_MAX_PORT_RANGES 16
/* Tunnels a sidecar may hold for its lease (tunnel.connections); a relay
 * accepts as many per lease (RELAY_LEASE_TUNNELS_MAX). */
#define SIDECAR_MAX_CONNECTIONS 4

struct sidecar_opts {
	/* "host:port", "srv:NAME" or "k8s:[NS/]SERVICE[:PORT]" (discovery/disc.h) */
	char *relays[SIDECAR_MAX_RELAYS];
	unsigned nrelays;
	struct disc_opts disc;
	char *server_name;      /* name verified in the relay certificate; default: the host */
	char *ca_file;          /* CA bundle for the relay certificate (required) */
	char *cert_file;        /* optional client certificate (mTLS) */
	char *key_file;
	char *token;            /* optional bearer token */
	char *app_name;
	int want_ui;            /* also lease a port for spark.ui.port */
	/* Ports a lease may grant: "N" or "N-M" each (sidecar_port_range); a
	 * lease with any other port is a protocol error. None: any port. */
	char *allowed_ports[SIDECAR_MAX_PORT_RANGES];
	unsigned nallowed_ports;
	char *spark_conf_path;  /* spark-defaults.conf fragment written on lease */
	char *spark_json_path;  /* the same settings as JSON */
	/* A spark-defaults.conf Spark reads: the lease's block is kept current
	 * in it, and removed when the lease ends (NULL: none). */
	char *spark_defaults_path;
	char *status_path;      /* state for the notebook (sc_status_write), NULL: none */
	uint32_t direct_result_mib; /* spark.task.maxDirectResultSize, 0: not written */
	char *state_path;       /* resume token kept here across restarts */
	uint32_t backoff_initial_ms;
	uint32_t backoff_max_ms;
	uint32_t dial_timeout_ms;        /* TCP connect plus TLS handshake to a relay */
	uint32_t register_timeout_ms;    /* from TLS up to the relay's lease answer */
	uint32_t driver_connect_timeout_ms;
	uint32_t release_timeout_ms;     /* wait for "released" on shutdown */
	uint32_t resume_hold_s;          /* open driver sockets wait this long for a resume */
	uint32_t connections;            /* tunnels for the lease, 1..SIDECAR_MAX_CONNECTIONS */
	struct tun_conn_opts tun;
	char *admin_listen;     /* status HTTP listener (/healthz, /status), NULL = none */
};

/* Defaults come from the configuration tables (conf_sidecar_defaults). */

/* "N" or "N-M" (decimal, 1..65535, N <= M) into *lo..*hi. 0, or -1. */
int sidecar_port_range(const char *s, uint16_t *lo, uint16_t *hi);

/* What the sidecar learnt from its lease (for the demo and status). */
struct sidecar_lease_info {
	int have_lease;
	int connected;          /* a registered tunnel is up now */
	unsigned tunnels;       /* tunnels that hold the lease now */
	char relay[64];         /* address of the relay that granted or resumed it last */
	char lease[TUN_CTL_LEASE_MAX];
	char host[TUN_CTL_HOST_MAX];
	uint16_t ports[TUN_PORT_MAX];
	uint32_t ttl_s;
	uint64_t reconnects;
};

typedef void (*sidecar_lease_cb)(struct sidecar *s, const struct sidecar_lease_info *info,
				 void *arg);

/* opts is borrowed and must outlive the sidecar. Starts dialling at once.
 * on_lease (may be NULL) is called whenever a lease is granted or resumed. */
struct sidecar *sidecar_new(struct event_base *base, const struct sidecar_opts *opts,
			    sidecar_lease_cb on_lease, void *arg, char *err, size_t errlen);
void sidecar_free(struct sidecar *s);

/* Release the lease and break the loop when done (or after release_timeout_ms). */
void sidecar_shutdown(struct sidecar *s);
void sidecar_get_lease(const struct sidecar *s, struct sidecar_lease_info *info);
/* Its driver connections across tunnels (tunnel/tun_group.h): held now
 * while the tunnel is away, and the counters since start. */
struct tun_group_stats;
void sidecar_get_resume_stats(const struct sidecar *s, struct tun_group_stats *st);

#endif
