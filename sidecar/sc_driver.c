/* Streams to the driver. The relay names a lease and a port in each
 * CONNECT; the sidecar accepts it only on the tunnel the lease was granted
 * on, only for that lease and one of its ports, and always dials 127.0.0.1:
 * a relay, even a compromised one, cannot make the sidecar reach anything
 * else. */
#include "sidecar/sc_int.h"
#include "common/sr_bsock.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void sc_driver_refused(struct sr_ratelog *rl, const char *logctx, uint64_t conn_id,
		       const char *peer, uint16_t port, int err)
{
	char pbuf[SR_ESC_SIZE(64)], more[64] = "";
	uint64_t n = 0;

	if (!sr_ratelog_allow(rl, sr_now_us(), SC_DRIVER_LOG_PERIOD_US, &n))
		return;
	if (n)
		snprintf(more, sizeof(more), "; %llu more since the last line", (unsigned long long)n);
	SR_WARN(logctx, "conn=%llu peer=%s: cannot connect to driver port %u: %s%s%s",
		(unsigned long long)conn_id, sr_esc_n(peer, 64, pbuf, sizeof(pbuf)), port,
		strerror(err),
		err == ECONNREFUSED ? " (is the driver running with this lease's settings?)"
				    : "",
		more);
}

struct sr_bsock *sc_driver_connect(struct tun_conn *c, struct event_base *base,
				   const struct tun_connect_req *req,
				   const struct sidecar_lease_info *lease, int leased_here,
				   uint32_t connect_timeout_ms, struct sr_ratelog *rl)
{
	const char *logctx = tun_conn_logctx(c);
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], pbuf[SR_ESC_SIZE(64)];
	struct sockaddr_in sin;
	struct sr_bsock *bev;
	struct timeval tv;
	const char *why = NULL;
	int ok = 0, fd;

	for (int r = 0; r < TUN_PORT_MAX; r++)
		ok |= req->port && lease->ports[r] == req->port;
	if (!leased_here)
		why = "no lease on this tunnel yet";
	else if (!req->lease[0])
		why = "no sparkrelay-lease header";
	else if (strcmp(req->lease, lease->lease) != 0)
		why = "not the lease of this tunnel";
	else if (!ok)
		why = "not a port of this lease";
	if (why) {
		tun_conn_log_refused(c, "refused stream to port %u (lease %s): %s; peer %s",
				     req->port, sr_esc(req->lease, lbuf, sizeof(lbuf)), why,
				     sr_esc(req->peer, pbuf, sizeof(pbuf)));
		return NULL;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(req->port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* only ever the local driver */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		/* EMFILE: said like a refused connect (and as seldom) */
		sc_driver_refused(rl, logctx, req->conn_id, req->peer, req->port, errno);
		return NULL;
	}
	/* TCP_NODELAY is set once connected (tun_stream_connected). */
	/* Connect ourselves: on loopback it usually completes (or is refused)
	 * at once, and the stream can answer in this same loop iteration.
	 * Linux reports EINPROGRESS even then (it does not look again after
	 * sending the SYN); asking once more costs one call and saves the
	 * write event's two epoll_ctl, its wake-up and its SO_ERROR. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 ||
	    (errno == EINPROGRESS &&
	     (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 || errno == EISCONN))) {
		*req->connected = 1;
	} else if (errno != EINPROGRESS && errno != EALREADY) {
		sc_driver_refused(rl, logctx, req->conn_id, req->peer, req->port, errno);
		close(fd);
		return NULL;
	}
	bev = sr_bsock_new(base, fd); /* closes fd on failure */
	if (!bev)
		return NULL;
	if (!*req->connected) {
		tv = sr_tv_ms(connect_timeout_ms);
		if (sr_bsock_connecting(bev, &tv) != 0) {
			sr_bsock_free(bev);
			return NULL;
		}
	}
	SR_DEBUG(logctx, "conn=%llu peer=%s: %s 127.0.0.1:%u",
		 (unsigned long long)req->conn_id, sr_esc(req->peer, pbuf, sizeof(pbuf)),
		 *req->connected ? "connected to" : "connecting to", req->port);
	return bev;
}
