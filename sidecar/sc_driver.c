/* Streams to the driver. The relay names a lease and a port in each
 * CONNECT; the sidecar accepts it only on the tunnel the lease was granted
 * on, only for that lease and one of its ports, and always dials 127.0.0.1:
 * a relay, even a compromised one, cannot make the sidecar reach anything
 * else. */
#include "sidecar/sc_int.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/bufferevent.h>

struct bufferevent *sc_driver_connect(struct event_base *base, const struct tun_connect_req *req,
				      const struct sidecar_lease_info *lease, int leased_here,
				      uint32_t connect_timeout_ms, const char *logctx)
{
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], pbuf[SR_ESC_SIZE(64)];
	struct sockaddr_in sin;
	struct bufferevent *bev;
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
		SR_WARN(logctx, "refused stream to port %u (lease %s): %s; peer %s",
			req->port, sr_esc(req->lease, lbuf, sizeof(lbuf)), why,
			sr_esc(req->peer, pbuf, sizeof(pbuf)));
		return NULL;
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(req->port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* only ever the local driver */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	sr_sock_nodelay(fd);
	/* Connect ourselves: on loopback it usually completes (or is refused)
	 * at once, and the stream can answer in this same loop iteration. */
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0) {
		*req->connected = 1;
	} else if (errno != EINPROGRESS) {
		SR_INFO(logctx, "conn=%llu peer=%s: driver port %u: %s",
			(unsigned long long)req->conn_id, sr_esc(req->peer, pbuf, sizeof(pbuf)),
			req->port, strerror(errno));
		close(fd);
		return NULL;
	}
	bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!bev) {
		close(fd);
		return NULL;
	}
	if (!*req->connected) {
		tv = sr_tv_ms(connect_timeout_ms);
		bufferevent_set_timeouts(bev, NULL, &tv);
		/* sa NULL: the socket is already connecting; report CONNECTED. */
		if (bufferevent_socket_connect(bev, NULL, 0) != 0) {
			bufferevent_free(bev);
			return NULL;
		}
	}
	SR_DEBUG(logctx, "conn=%llu peer=%s: connecting to 127.0.0.1:%u",
		 (unsigned long long)req->conn_id, sr_esc(req->peer, pbuf, sizeof(pbuf)),
		 req->port);
	return bev;
}
