/* Relays from the Kubernetes API: the Ready endpoints of a Service, listed
 * from its EndpointSlices (discovery.k8s.io/v1) with the pod's service
 * account, through sr_curl (never blocking the loop).
 *
 *   GET {api}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices
 *       ?labelSelector=kubernetes.io/service-name={service}
 *   Authorization: Bearer {token file}, verified against {ca file}
 *
 * The answer is untrusted input: at most DISC_K8S_MAX_BODY bytes and
 * DISC_K8S_MAX_CONTAINERS objects and arrays, every
 * field read is checked for its type, an address must be a numeric IP of
 * the slice's address type and a port 1..65535; anything else refuses the
 * whole answer with the JSON path of the first bad field. */
#ifndef DISC_K8S_H
#define DISC_K8S_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct sr_curl;
struct disc_k8s_req;

#define DISC_K8S_MAX_BODY (4u * 1024 * 1024)
/* JSON objects and arrays in one answer: a real list has about four per
 * endpoint; 4 MiB of "{}" would be 1.4 million, some 320 MiB once parsed. */
#define DISC_K8S_MAX_CONTAINERS 200000u
/* Ready endpoints kept from one answer (a uniform random sample when the
 * Service has more). */
#define DISC_K8S_MAX_EPS 1024
#define DISC_K8S_NAME_MAX 63 /* a namespace or Service name */
#define DISC_K8S_PORT_NAME_MAX 15

struct disc_ep {
	struct sockaddr_storage ss;
	socklen_t len;
};

/* Kubernetes names: a namespace or Service is a DNS label (1..63 of a-z,
 * 0-9, '-', starting and ending with a letter or digit); a port name has
 * 1..15 of a-z, 0-9 and '-' with at least one letter, no "--" and no '-' at
 * either end. 1 or 0. */
int disc_k8s_name_ok(const char *s);
int disc_k8s_port_name_ok(const char *s);

/* Parse an EndpointSliceList (body[0..len), need not be NUL-terminated).
 * port_name NULL: each slice must have exactly one TCP port, which is used;
 * else the TCP port of that name. Only endpoints whose conditions.ready is
 * true or absent count, with their first address. Up to max of them go to
 * out (*n), and *ready gets how many there were. rand_below(k) picks the
 * sample when there are more than max. Returns 0 (maybe with no endpoint),
 * SR_EPROTO or SR_ETOOBIG with a one-line reason (safe to log) in err. */
int disc_k8s_parse(const char *body, size_t len, const char *port_name, struct disc_ep *out,
		   size_t max, size_t *n, size_t *ready, uint32_t (*rand_below)(uint32_t),
		   char *err, size_t errlen);

/* Read a namespace file (one name, surrounding white space ignored) into
 * ns (at least DISC_K8S_NAME_MAX + 1 bytes). 0 or SR_EIO / SR_EINVAL with
 * the reason in err. */
int disc_k8s_read_namespace(const char *path, char *ns, size_t len, char *err, size_t errlen);

struct disc_k8s_opts {
	const char *api_server;		      /* "https://host:port" (a trailing '/' is fine) */
	const char *token_file;		      /* read for every request: kubelet rotates it */
	const char *ca_file;		      /* verifies the API server; NULL: system store */
	const char *ns, *service, *port_name; /* port_name NULL: the only port */
	uint32_t timeout_ms;		      /* 0: 5000 */
};

/* err 0: eps[0..n) (maybe none), ready = all Ready endpoints seen; else
 * SR_E* with a one-line reason in msg (safe to log). Borrowed for the call;
 * the request is freed after it. */
typedef void (*disc_k8s_cb)(int err, const struct disc_ep *eps, size_t n, size_t ready,
			    const char *msg, void *arg);

/* Start the list request. The token file is read here (at most 16 KiB,
 * printable ASCII). Returns NULL with the reason in err (unreadable token,
 * bad option, no memory); cb is then never called. cb never runs before
 * this returns, and runs at the latest a second after timeout_ms, whatever
 * libcurl does. */
struct disc_k8s_req *disc_k8s_fetch(struct event_base *base, struct sr_curl *c,
				    const struct disc_k8s_opts *o, disc_k8s_cb cb, void *arg,
				    char *err, size_t errlen);
/* Stop a request whose callback has not run; it will not run. */
void disc_k8s_cancel(struct disc_k8s_req *r);

#endif
