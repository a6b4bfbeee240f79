/* The sidecar's status HTTP listener (libevent evhttp, in the sidecar's loop):
 *
 *   GET /healthz   200 "ok" while the loop runs
 *   GET /readyz    200 when a lease is held and its tunnel is up, else 503
 *   GET /status    JSON: lease id, advertised host, ports by role, TTL,
 *                  tunnel state (connected, relay address), reconnect count
 *
 * Read-only and free of secrets (the resume token is never shown), so it
 * needs no token; it should still stay on loopback, and a warning is logged
 * when it does not. Unknown paths get 404, other methods 405. Request
 * headers and bodies are capped; at most 16 connections are open at once
 * (a new one closes the oldest), and each carries one request and is closed
 * 10 s after its accept however slowly it sends (sr_http_guard.h). */
#ifndef SIDECAR_ADMIN_H
#define SIDECAR_ADMIN_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct sidecar;
struct sidecar_admin;

/* Bind on listen ("host:port"; port 0 picks a free port) in base. s is
 * borrowed and must outlive the admin. Returns NULL with a reason in err. */
struct sidecar_admin *sidecar_admin_new(struct event_base *base, struct sidecar *s,
					const char *listen, char *err, size_t errlen);
/* Close the listener and every connection. NULL is a no-op. */
void sidecar_admin_free(struct sidecar_admin *a);
/* The bound port (useful when configured with port 0). */
uint16_t sidecar_admin_port(const struct sidecar_admin *a);

#endif
