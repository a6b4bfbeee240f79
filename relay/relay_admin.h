/* The relay's admin HTTP API (libevent evhttp, in the relay's own loop):
 *
 *   GET    /healthz              200 "ok" while the loop runs (no token)
 *   GET    /readyz               200 when ready and not draining, else 503 (no token)
 *   GET    /metrics              Prometheus text exposition 0.0.4
 *   GET    /v1/sessions          JSON array, one object per tunnel
 *   GET    /v1/leases            JSON array, one object per lease
 *   DELETE /v1/leases/<id>       revoke a lease (404 if unknown)
 *   GET    /v1/config            effective configuration, secrets redacted
 *   POST   /v1/drain             graceful drain (the relay exits when done)
 *   POST   /v1/reload            re-read the configuration (200 or 400 with the reason)
 *   POST   /v1/route/explain     {"cn","sans","token","app","addr"} -> text/plain
 *                                explanation; with "Accept: application/json" the
 *                                object of relay_explain_json (relay_view.h)
 *
 * Every endpoint but /healthz and /readyz requires "Authorization: Bearer
 * <token>" when a token is configured (401 otherwise). Unknown paths get
 * 404, known paths with another method 405 (with an Allow header). Request
 * headers and bodies are capped (RELAY_ADMIN_MAX_*). At most
 * relay.admin.max_connections connections are open at once (a new one closes
 * the oldest), and each carries one request (answers say "Connection:
 * close") and is closed relay.admin.request_timeout_ms after its accept,
 * however slowly it sends (sr_http_guard.h); both are counted in /metrics.
 * Error bodies are JSON {"error": ".."}. */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct relay;
struct relay_admin;

#define RELAY_ADMIN_MAX_HEADERS (8 * 1024)
#define RELAY_ADMIN_MAX_BODY (16 * 1024)

/* Supplied by the program, which knows the configuration file (the relay
 * module does not). Either may be NULL: the endpoint then answers 501. */
struct relay_admin_cbs {
	/* Re-read and apply the configuration (usually via relay_reload).
	 * Returns 0, or a negative SR_E* code with a one-line reason in err. */
	int (*reload)(void *arg, char *err, size_t errlen);
	/* The effective configuration as JSON with secrets redacted; the
	 * caller owns the returned reference. NULL on failure (500). */
	json_t *(*config_json)(void *arg);
};

/* Bind the admin listener on listen ("host:port"; port 0 picks a free port)
 * in base. r is borrowed and must outlive the admin; its options give the
 * connection limits (admin_max_conns, admin_request_timeout_ms), read once. token (copied) may be
 * NULL or "" for none, which is refused unless the host of listen is
 * loopback (sr_host_is_loopback, sr_cidr.h). cbs is copied; cb_arg is passed to it.
 * Returns NULL with a reason in err. */
struct relay_admin *relay_admin_new(struct event_base *base, struct relay *r,
				    const char *listen, const char *token,
				    const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				    size_t errlen);
/* The same on fd, a listening socket on listen that an old relay passed on
 * in a handover (stolen in every case). */
struct relay_admin *relay_admin_new_fd(struct event_base *base, struct relay *r,
				       const char *listen, int fd, const char *token,
				       const struct relay_admin_cbs *cbs, void *cb_arg, char *err,
				       size_t errlen);
/* Close the listener and every admin connection. NULL is a no-op. */
void relay_admin_free(struct relay_admin *a);

/* The bound port (useful when configured with port 0). */
uint16_t relay_admin_port(const struct relay_admin *a);
/* The listening socket (to pass on in a handover); stays the admin's. */
int relay_admin_listen_fd(const struct relay_admin *a);

/* The read-only metrics listener (relay.metrics.listen): GET or HEAD of
 * /metrics (the admin API's exposition), /healthz and /readyz, without a
 * token on any address, since it can change nothing. Every other path is
 * 404, other methods 405. At most 16 connections at once, each closed 10 s
 * after its accept. admin (may be NULL) adds its connection counters to
 * the exposition, and the admin's /metrics then shows this listener's;
 * either may be freed first. Returns NULL with a reason in err. */
struct relay_metrics;
struct relay_metrics *relay_metrics_new(struct event_base *base, struct relay *r,
					struct relay_admin *admin, const char *listen, char *err,
					size_t errlen);
void relay_metrics_free(struct relay_metrics *m);
uint16_t relay_metrics_port(const struct relay_metrics *m);

#endif
