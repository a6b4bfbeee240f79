/* The sidecar: one tunnel to a relay at a time, re-dialled with backoff.
 *
 *   resolve -> dial (TCP + TLS, per address in turn) -> control stream ->
 *   register (with the resume token if we have one) -> leased
 *        ^                                                |
 *        +------------- backoff with jitter <-------- tunnel lost
 *
 * The relay is trusted less than the notebook. tun_ctl has checked the shape
 * of every value it sends; here the order is checked too: one lease per
 * tunnel, only after our register, with exactly the roles we asked for; a
 * stream only on a tunnel that holds the lease, naming that lease and one of
 * its ports. Anything else is a protocol error that ends the tunnel, and each
 * such tunnel in a row doubles the delay before the next one. Relay-chosen
 * text is escaped (sr_esc) in every log line and printed setting. */
#include "sidecar/sc_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "discovery/disc.h"
#include "tunnel/tun_tls.h"
#include "tunnel/tun_endpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/x509v3.h>

enum sc_state {
	SC_IDLE,
	SC_RESOLVING,
	SC_DIALING,
	SC_REGISTERING,
	SC_LEASED,
	SC_BACKOFF,
	SC_DONE,
};

struct sidecar {
	struct event_base *base;
	const struct sidecar_opts *o;
	struct disc *disc;
	SSL_CTX *ssl_ctx;
	sidecar_lease_cb on_lease;
	void *arg;

	enum sc_state state;
	struct disc_lookup *resolve;
	struct disc_addr *addrs;
	size_t naddrs, next_addr;
	struct tun_endpoint *ep;  /* the tunnel being dialled, or up */
	char dial_peer[SR_ADDRSTRLEN];
	struct event *backoff_timer;
	struct event *release_timer;
	unsigned attempt;

	struct tun_conn *tun;
	/* The driver connections, which outlive a tunnel (tunnel/tun_group.h). */
	struct tun_group *group;
	char resume[TUN_CTL_RESUME_MAX]; /* from the last lease or the state file */
	struct sidecar_lease_info lease;
	int shutting_down;
	int sent_resume;
	/* The current tunnel: register sent (with these roles), lease taken on
	 * it, release sent. A lease kept from an earlier tunnel is not "taken
	 * on it" until the relay grants or resumes it here. */
	int registered;
	unsigned req_roles;
	int tun_leased;
	int release_sent;
	uint64_t tun_up_us; /* when the current tunnel came up */
	unsigned strikes;   /* tunnels the relay ended with a protocol error, see on_closed */
	struct sc_ratelog rl_driver; /* "cannot connect to driver port" lines */
	/* The lease whose settings were last written: what a running driver
	 * may have bound (from the state file after a restart). */
	struct sidecar_lease_info written;
	uint64_t lease_changes; /* times its host or ports changed */
	enum sc_status status;  /* last written to the status file */
	char status_msg[256];
	int stopped;            /* the settings were removed on the way out */
	/* opts->allowed_ports, parsed; none: any port */
	struct {
		uint16_t lo, hi;
	} allowed[SIDECAR_MAX_PORT_RANGES];
	unsigned nallowed;
};

/* At most this many strikes count towards the backoff (2^8 x the initial
 * delay is past any sensible backoff_max_ms already); they are forgiven once
 * a tunnel stayed up this long without one. */
#define SC_STRIKES_MAX 8
/* Longest reconnect delay, and dial timeout, while connections are held. */
#define SC_HOLD_RETRY_MS 1000
#define SC_HOLD_DIAL_MS 3000
#define SC_STRIKES_FORGIVE_US (60ull * 1000000)

static void sc_start(struct sidecar *s);
static void dial_next(struct sidecar *s);
static void sc_stop(struct sidecar *s, const char *why);

/* ---- state file -------------------------------------------------------- */

/* ---- tunnel callbacks ---------------------------------------------------- */

static void send_register(struct tun_conn *c, void *arg)
{
	struct sidecar *s = arg;
	struct tun_ctl_msg m;
	int rv;

	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_REGISTER;
	snprintf(m.app, sizeof(m.app), "%s", s->o->app_name ? s->o->app_name : "spark");
	m.roles = TUN_ROLE_BIT(TUN_PORT_DRIVER) | TUN_ROLE_BIT(TUN_PORT_BLOCKMANAGER);
	if (s->o->want_ui)
		m.roles |= TUN_ROLE_BIT(TUN_PORT_UI);
	if (s->o->token)
		snprintf(m.token, sizeof(m.token), "%s", s->o->token);
	snprintf(m.resume, sizeof(m.resume), "%s", s->resume);
	s->sent_resume = s->resume[0] != '\0';
	s->req_roles = m.roles;
	s->registered = 1;
	s->state = SC_REGISTERING;
	if ((rv = tun_conn_send_ctl(c, &m)) != 0) {
		if (rv == SR_EINVAL)
			SR_ERROR(tun_conn_logctx(c), "cannot register: the app name has control "
						     "characters or is not UTF-8");
		tun_conn_close(c, rv);
	}
}

/* End the tunnel for a relay that broke the protocol; on_closed counts it. */
static void protocol_error(struct tun_conn *c, const char *why)
{
	SR_WARN(tun_conn_logctx(c), "protocol error from the relay: %s; closing the tunnel", why);
	tun_conn_close(c, SR_EPROTO);
}

/* The status file follows the state; rewritten only when something in it
 * changed. */
static void set_status(struct sidecar *s, enum sc_status st, const char *msg)
{
	if (s->stopped || (st == s->status && strcmp(msg, s->status_msg) == 0 &&
			   st != SC_STATUS_LEASED))
		return;
	s->status = st;
	snprintf(s->status_msg, sizeof(s->status_msg), "%s", msg);
	sc_status_write(s->o->status_path, st, &s->lease, s->lease_changes, msg);
}

/* The relay ended our lease (it expired, or an operator revoked it): a
 * driver started with its settings would bind ports that may go to another
 * notebook, so they are removed until a new lease is written. */
static void lease_lost(struct sidecar *s, const char *why)
{
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], msg[256];

	s->resume[0] = '\0';
	sc_state_clear(s->o->state_path);
	s->attempt = 0;
	tun_group_reset(s->group, TUN_LOST_ENDED);
	/* also a lease only known from the state file (a restarted sidecar
	 * whose resume failed): its settings are still on disk */
	if (!s->lease.have_lease && !s->written.have_lease)
		return;
	sr_esc(s->lease.have_lease ? s->lease.lease : s->written.lease, lbuf, sizeof(lbuf));
	s->lease.have_lease = 0;
	sc_settings_remove(s->o, "");
	SR_WARN("", "lease %s ended by the relay (%s): Spark settings removed; asking for a "
		    "new lease",
		lbuf, why);
	snprintf(msg, sizeof(msg), "lease %s ended by the relay (%s); asking for a new one", lbuf,
		 why);
	set_status(s, SC_STATUS_NO_LEASE, msg);
}

static void role_list(unsigned roles, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int r = 0; r < TUN_PORT_MAX && n < len; r++)
		if (roles & TUN_ROLE_BIT(r))
			n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? "," : "",
					      tun_port_role_name((enum tun_port_role)r));
}

int sidecar_port_range(const char *s, uint16_t *lo, uint16_t *hi)
{
	unsigned long v[2] = {0, 0};
	int i = 0;

	for (;;) {
		const char *start = s;

		while (*s >= '0' && *s <= '9' && s - start < 5)
			v[i] = v[i] * 10 + (unsigned long)(*s++ - '0');
		if (s == start || (*s >= '0' && *s <= '9') || v[i] < 1 || v[i] > 65535)
			return -1;
		if (*s == '\0')
			break;
		if (*s != '-' || i == 1)
			return -1;
		s++;
		i++;
	}
	if (i == 0)
		v[1] = v[0];
	if (v[0] > v[1])
		return -1;
	*lo = (uint16_t)v[0];
	*hi = (uint16_t)v[1];
	return 0;
}

static int port_allowed(const struct sidecar *s, uint16_t port)
{
	if (s->nallowed == 0)
		return 1;
	for (unsigned i = 0; i < s->nallowed; i++)
		if (port >= s->allowed[i].lo && port <= s->allowed[i].hi)
			return 1;
	return 0;
}

/* "26000-26999,27005" (cut to len). */
static void allowed_list(const struct sidecar *s, char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (unsigned i = 0; i < s->nallowed && n < len; i++) {
		if (s->allowed[i].lo == s->allowed[i].hi)
			n += (size_t)snprintf(buf + n, len - n, "%s%u", i ? "," : "",
					      s->allowed[i].lo);
		else
			n += (size_t)snprintf(buf + n, len - n, "%s%u-%u", i ? "," : "",
					      s->allowed[i].lo, s->allowed[i].hi);
	}
}

static void on_lease(struct sidecar *s, struct tun_conn *c, const struct tun_ctl_msg *m)
{
	struct sidecar_lease_info old = s->lease;
	char err[512], ctx[128], why[224], want[128], got[48];
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], hbuf[SR_ESC_SIZE(TUN_CTL_HOST_MAX)];
	char obuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)];
	int changed;

	if (!s->registered || s->tun_leased || s->release_sent) {
		protocol_error(c, s->tun_leased ? "a second lease on this tunnel"
						: "a lease that was not asked for");
		return;
	}
	/* tun_ctl made sure the ports are distinct; the roles must be ours. */
	if (m->roles != s->req_roles) {
		role_list(s->req_roles, want, sizeof(want));
		role_list(m->roles, got, sizeof(got));
		snprintf(why, sizeof(why), "lease grants roles %s, registered for %s", got, want);
		protocol_error(c, why);
		return;
	}
	/* A relay chooses the ports the driver binds on the notebook: only
	 * those the notebook agreed to (a port of another local service, or a
	 * privileged one, would be the driver's bind failing or worse). */
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		if (m->ports[r] && !port_allowed(s, m->ports[r])) {
			allowed_list(s, want, sizeof(want));
			snprintf(why, sizeof(why), "lease grants %s port %u, outside "
						   "tunnel.allowed_ports (%s)",
				 tun_port_role_name((enum tun_port_role)r), m->ports[r], want);
			protocol_error(c, why);
			return;
		}
	}
	/* A relay answers a resume it cannot honour with "unknown_lease"; a
	 * different lease instead would point our driver's connections (held,
	 * and new ones) at ports we never agreed to. */
	if (s->sent_resume && old.have_lease && strcmp(old.lease, m->lease) != 0) {
		protocol_error(c, "a different lease in answer to our resume");
		return;
	}
	if (old.have_lease && strcmp(old.lease, m->lease) != 0)
		tun_group_reset(s->group, TUN_LOST_ENDED); /* they were the old lease's */
	s->tun_leased = 1;
	s->lease.have_lease = 1;
	snprintf(s->lease.lease, sizeof(s->lease.lease), "%s", m->lease);
	snprintf(s->lease.host, sizeof(s->lease.host), "%s", m->host);
	memcpy(s->lease.ports, m->ports, sizeof(s->lease.ports));
	s->lease.ttl_s = m->ttl_s;
	s->lease.connected = 1;
	snprintf(s->lease.relay, sizeof(s->lease.relay), "%s", s->dial_peer);
	snprintf(s->resume, sizeof(s->resume), "%s", m->resume);
	s->state = SC_LEASED;
	s->attempt = 0;
	snprintf(ctx, sizeof(ctx), "lease=%s relay=%s", sr_esc(m->lease, lbuf, sizeof(lbuf)),
		 s->dial_peer);
	tun_conn_set_logctx(c, ctx);

	tun_conn_set_group(c, s->group);
	tun_group_set_logctx(s->group, ctx);
	tun_group_set_lease(s->group, m->lease);
	tun_group_expect(s->group, m->streams);

	changed = !old.have_lease || strcmp(old.lease, s->lease.lease) != 0 ||
		  memcmp(old.ports, s->lease.ports, sizeof(old.ports)) != 0 ||
		  strcmp(old.host, s->lease.host) != 0;
	/* Only new ports or host make a running driver wrong, whatever the
	 * lease id: compared with the settings written last (a relay restart
	 * that gave the same ports needs no restart of the driver). */
	if (s->written.have_lease &&
	    (memcmp(s->written.ports, s->lease.ports, sizeof(s->lease.ports)) != 0 ||
	     strcmp(s->written.host, s->lease.host) != 0)) {
		char hbuf2[SR_ESC_SIZE(TUN_CTL_HOST_MAX)];

		s->lease_changes++;
		SR_WARN(ctx, "lease changed from %s (host %s, ports %u,%u) to %s (host %s, ports "
			     "%u,%u): the driver must be restarted with the new settings",
			sr_esc(s->written.lease, obuf, sizeof(obuf)),
			sr_esc(s->written.host, hbuf2, sizeof(hbuf2)),
			s->written.ports[TUN_PORT_DRIVER], s->written.ports[TUN_PORT_BLOCKMANAGER],
			lbuf, sr_esc(m->host, hbuf, sizeof(hbuf)), m->ports[TUN_PORT_DRIVER],
			m->ports[TUN_PORT_BLOCKMANAGER]);
	}
	SR_INFO(ctx, "%s: driver port %u, blockManager port %u, host %s, grace %us",
		old.have_lease && !changed ? "lease resumed" : "lease granted",
		m->ports[TUN_PORT_DRIVER], m->ports[TUN_PORT_BLOCKMANAGER],
		sr_esc(m->host, hbuf, sizeof(hbuf)), m->ttl_s);
	sc_state_save(s->o->state_path, s->resume, &s->lease);
	if (changed || !s->written.have_lease) {
		if (sc_settings_write(s->o, &s->lease, err, sizeof(err)) != 0)
			SR_ERROR(ctx, "cannot write Spark settings: %s", err);
		sc_print_settings(&s->lease, s->o->direct_result_mib);
		s->written = s->lease;
	}
	snprintf(why, sizeof(why), "lease %s: driver port %u, blockManager port %u", lbuf,
		 m->ports[TUN_PORT_DRIVER], m->ports[TUN_PORT_BLOCKMANAGER]);
	set_status(s, SC_STATUS_LEASED, why);
	if (s->on_lease)
		s->on_lease(s, &s->lease, s->arg);
}

static void on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct sidecar *s = arg;
	char cbuf[SR_ESC_SIZE(TUN_CTL_CODE_MAX)], mbuf[SR_ESC_SIZE(TUN_CTL_TEXT_MAX)];
	char why[64];

	switch (m->type) {
	case TUN_CTL_LEASE:
		on_lease(s, c, m);
		break;
	case TUN_CTL_ERROR:
		SR_ERROR(tun_conn_logctx(c), "relay refused registration: %s: %s",
			 sr_esc(m->code, cbuf, sizeof(cbuf)), sr_esc(m->message, mbuf, sizeof(mbuf)));
		if ((s->sent_resume && strcmp(m->code, "unknown_lease") == 0) ||
		    strcmp(m->code, "revoked") == 0) {
			/* The lease is gone (expired, revoked, or another relay):
			 * start afresh. */
			lease_lost(s, cbuf);
		} else {
			char msg[256];

			/* raw: sc_status_write escapes it (once) */
			snprintf(msg, sizeof(msg), "relay refused registration: %s: %s", m->code,
				 m->message);
			set_status(s, s->lease.have_lease ? SC_STATUS_RECONNECTING : SC_STATUS_NO_LEASE,
				   msg);
		}
		tun_conn_close(c, SR_EDENIED);
		break;
	case TUN_CTL_RELEASED:
		/* Only the answer to our release: otherwise a relay could make us
		 * forget a lease (and its resume token) we still hold. */
		if (!s->release_sent) {
			protocol_error(c, "\"released\" without a release");
			break;
		}
		SR_INFO(tun_conn_logctx(c), "lease released");
		tun_group_reset(s->group, TUN_LOST_ENDED);
		s->resume[0] = '\0';
		s->lease.have_lease = 0;
		sc_state_clear(s->o->state_path);
		sc_stop(s, "lease released");
		tun_conn_close(c, 0);
		break;
	case TUN_CTL_DRAIN:
		SR_INFO(tun_conn_logctx(c), "relay is draining; will reconnect when it closes");
		break;
	default:
		snprintf(why, sizeof(why), "unexpected control message %s",
			 tun_ctl_type_name(m->type));
		protocol_error(c, why);
		break;
	}
}

/* On the way out: no sidecar carries executor connections for these ports
 * any more, so the settings go (a restarted sidecar that resumes the lease
 * writes them again); the status says so. Once. */
static void sc_stop(struct sidecar *s, const char *why)
{
	if (s->stopped)
		return;
	s->lease.connected = 0;
	sc_settings_remove(s->o, "");
	set_status(s, SC_STATUS_STOPPED, why);
	s->stopped = 1; /* the last word of the status file */
}

static void schedule_backoff(struct sidecar *s)
{
	uint64_t delay = s->o->backoff_initial_ms;
	struct timeval tv;

	uint64_t max = s->o->backoff_max_ms;
	int holding = tun_group_held(s->group) > 0;

	/* Driver connections wait for this tunnel (resume_hold_s): try again
	 * at once, then at least every second, so they resume within a second
	 * of the path coming back. */
	if (holding && max > SC_HOLD_RETRY_MS)
		max = SC_HOLD_RETRY_MS;
	for (unsigned i = 0; i < s->attempt && delay < max; i++)
		delay *= 2;
	if (delay > max)
		delay = max;
	/* "equal jitter": half fixed, half random, so a fleet of sidecars that
	 * lost the same relay does not return in lockstep. */
	delay = delay / 2 + sr_rand_below((uint32_t)(delay / 2 + 1));
	if (holding && s->attempt == 0)
		delay = 0;
	s->attempt++;
	s->state = SC_BACKOFF;
	tv.tv_sec = (time_t)(delay / 1000);
	tv.tv_usec = (suseconds_t)((delay % 1000) * 1000);
	SR_INFO("", "reconnecting in %llu ms (attempt %u)", (unsigned long long)delay, s->attempt);
	evtimer_add(s->backoff_timer, &tv);
}

static void on_closed(struct tun_endpoint *ep, int err, const char *why_ep, void *arg)
{
	struct sidecar *s = arg;
	char why[200]; /* why_ep goes with ep */
	int was_up = s->tun != NULL;
	int broke = err == SR_EPROTO || err == SR_ETOOBIG || err == SR_EVERSION;

	snprintf(why, sizeof(why), "%s", why_ep ? why_ep : "");
	s->lease.connected = 0;
	s->registered = s->tun_leased = s->release_sent = 0;
	if (!was_up) {
		char msg[256];

		SR_WARN("", "cannot reach relay %s: %s%s", s->dial_peer,
			err == SR_ETLS ? "TLS handshake failed: " : "", why);
		snprintf(msg, sizeof(msg), "cannot reach relay %s: %s%s", s->dial_peer,
			 err == SR_ETLS ? "TLS handshake failed: " : "", why);
		if (!s->shutting_down)
			set_status(s, SC_STATUS_UNREACHABLE, msg);
	} else {
		if (why[0])
			SR_INFO(tun_conn_logctx(s->tun), "transport: %s", why);
		/* A relay that breaks the protocol waits twice as long each time,
		 * so it cannot replay an attack (a stream flood, a bad lease) on a
		 * fresh tunnel every backoff_initial_ms, nor reset that by closing
		 * one tunnel cleanly in between: only a tunnel that stayed up a
		 * while forgives. */
		if (broke) {
			if (s->strikes < SC_STRIKES_MAX)
				s->strikes++;
			s->attempt = s->strikes;
			SR_WARN(tun_conn_logctx(s->tun),
				"the relay broke the protocol (%u time%s lately)", s->strikes,
				s->strikes == 1 ? "" : "s");
		} else if (sr_now_us() - s->tun_up_us >= SC_STRIKES_FORGIVE_US) {
			s->strikes = 0;
		}
	}
	tun_endpoint_free(ep);
	s->ep = NULL;
	s->tun = NULL;
	if (!was_up) {
		dial_next(s);
		return;
	}
	if (s->shutting_down) {
		s->state = SC_DONE;
		event_base_loopbreak(s->base);
		return;
	}
	if (s->lease.have_lease)
		s->lease.reconnects++;
	{
		char msg[256];

		snprintf(msg, sizeof(msg), "tunnel to relay %s lost%s%s; reconnecting", s->dial_peer,
			 why[0] ? ": " : "", why);
		if (s->lease.have_lease)
			set_status(s, SC_STATUS_RECONNECTING, msg);
		else if (s->status != SC_STATUS_NO_LEASE)
			set_status(s, SC_STATUS_CONNECTING, msg);
	}
	if (tun_group_held(s->group) && !broke)
		s->attempt = 0;
	schedule_backoff(s);
}

static struct bufferevent *on_connect(struct tun_conn *c, const struct tun_connect_req *req,
				      void *arg)
{
	struct sidecar *s = arg;

	return sc_driver_connect(s->base, req, &s->lease, s->tun_leased,
				 s->o->driver_connect_timeout_ms, &s->rl_driver,
				 tun_conn_logctx(c));
}

static void on_connect_failed(struct tun_conn *c, uint64_t conn_id, uint16_t port,
			      const char *peer, int err, void *arg)
{
	struct sidecar *s = arg;

	sc_driver_refused(&s->rl_driver, tun_conn_logctx(c), conn_id, peer, port, err);
}

static const struct tun_conn_cbs sc_tun_cbs = {
	.on_ctl = on_ctl,
	.on_ctl_open = send_register,
	.on_connect = on_connect,
	.on_connect_failed = on_connect_failed,
};

static void on_up(struct tun_endpoint *ep, void *arg)
{
	struct sidecar *s = arg;
	char ctx[128];

	snprintf(ctx, sizeof(ctx), "relay=%s", s->dial_peer);
	s->tun = tun_endpoint_conn(ep);
	tun_conn_set_logctx(s->tun, ctx);
	SR_INFO(ctx, "connected (TLS 1.3, h2); registering app \"%s\"", s->o->app_name);
	s->registered = s->tun_leased = s->release_sent = 0;
	s->tun_up_us = sr_now_us();
	s->state = SC_REGISTERING;
}

static const struct tun_endpoint_cbs sc_ep_cbs = {
	.on_up = on_up,
	.on_closed = on_closed,
};

/* ---- dialling ------------------------------------------------------------- */

static int is_ip_literal(const char *h)
{
	struct sockaddr_storage ss;
	socklen_t len;
	return sr_parse_addr(h, 1, &ss, &len) == 0;
}

static void dial_next(struct sidecar *s)
{
	const struct disc_addr *a;
	const char *name;
	SSL *ssl;

	if (s->shutting_down) {
		event_base_loopbreak(s->base);
		return;
	}
	if (s->next_addr >= s->naddrs) {
		schedule_backoff(s);
		return;
	}
	a = &s->addrs[s->next_addr++];
	sr_format_addr((const struct sockaddr *)&a->ss, s->dial_peer, sizeof(s->dial_peer));
	name = s->o->server_name ? s->o->server_name : a->host;
	ssl = SSL_new(s->ssl_ctx);
	if (!ssl)
		goto fail;
	if (is_ip_literal(name)) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
	} else {
		SSL_set_tlsext_host_name(ssl, name);
		SSL_set1_host(ssl, name);
	}
	{
		int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			SSL_free(ssl);
			goto fail;
		}
		sr_sock_nodelay(fd);
		sr_sock_notsent_lowat(fd, 128 * 1024);
		if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0 &&
		    errno != EINPROGRESS) {
			SR_WARN("", "cannot connect to relay %s: %s", s->dial_peer, strerror(errno));
			SSL_free(ssl);
			close(fd);
			dial_next(s);
			return;
		}
		struct tun_endpoint_opts eo = {
			.role = TUN_ROLE_SIDECAR,
			.ssl = ssl,
			.connecting = 1,
			/* Connections are held: do not wait long on one relay. */
			.handshake_timeout_ms = tun_group_held(s->group) &&
							s->o->dial_timeout_ms > SC_HOLD_DIAL_MS
						    ? SC_HOLD_DIAL_MS
						    : s->o->dial_timeout_ms,
			.conn = &s->o->tun,
			.conn_cbs = &sc_tun_cbs,
		};
		s->ep = tun_endpoint_new(s->base, fd, &eo, &sc_ep_cbs, s);
		if (!s->ep)
			goto fail;
	}
	SR_DEBUG("", "dialling relay %s (%s)", s->dial_peer, name);
	s->state = SC_DIALING;
	return;
fail:
	SR_ERROR("", "out of memory while dialling");
	schedule_backoff(s);
}

static void resolved_cb(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct sidecar *s = arg;

	s->resolve = NULL;
	free(s->addrs);
	s->addrs = NULL;
	s->naddrs = s->next_addr = 0;
	if (err != 0 || n == 0) {
		SR_WARN("", "no address found for any relay");
		set_status(s, SC_STATUS_UNREACHABLE, "no address found for any relay");
		schedule_backoff(s);
		return;
	}
	s->addrs = malloc(n * sizeof(*addrs));
	if (!s->addrs) {
		schedule_backoff(s);
		return;
	}
	memcpy(s->addrs, addrs, n * sizeof(*addrs));
	s->naddrs = n;
	dial_next(s);
}

static void sc_start(struct sidecar *s)
{
	s->state = SC_RESOLVING;
	s->resolve = disc_lookup(s->disc, resolved_cb, s);
	if (!s->resolve) {
		SR_ERROR("", "cannot look up relays: out of memory");
		set_status(s, SC_STATUS_UNREACHABLE, "cannot look up the relays");
		schedule_backoff(s);
	}
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	sc_start(arg);
}

static void release_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sidecar *s = arg;
	SR_WARN("", "relay did not confirm the release within %u ms; exiting anyway",
		s->o->release_timeout_ms);
	sc_stop(s, "stopped; the relay did not confirm the release");
	s->state = SC_DONE;
	event_base_loopbreak(s->base);
}

struct sidecar *sidecar_new(struct event_base *base, const struct sidecar_opts *opts,
			    sidecar_lease_cb on_lease_cb, void *arg, char *err, size_t errlen)
{
	struct sidecar *s = calloc(1, sizeof(*s));

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->base = base;
	s->o = opts;
	s->on_lease = on_lease_cb;
	s->arg = arg;
	if (opts->nrelays == 0) {
		snprintf(err, errlen, "no relay address configured");
		goto fail;
	}
	for (unsigned i = 0; i < opts->nallowed_ports && i < SIDECAR_MAX_PORT_RANGES; i++) {
		if (!opts->allowed_ports[i] ||
		    sidecar_port_range(opts->allowed_ports[i], &s->allowed[i].lo,
				       &s->allowed[i].hi) != 0) {
			snprintf(err, errlen, "allowed port range %u is not N or N-M within 1..65535",
				 i);
			goto fail;
		}
		s->nallowed++;
	}
	s->ssl_ctx = tun_tls_client_ctx(opts->ca_file, opts->cert_file, opts->key_file, err,
					errlen);
	if (!s->ssl_ctx)
		goto fail;
	s->disc = disc_new(base, &opts->disc, opts->relays, opts->nrelays, err, errlen);
	if (!s->disc)
		goto fail;
	s->backoff_timer = evtimer_new(base, backoff_cb, s);
	s->release_timer = evtimer_new(base, release_timeout_cb, s);
	{
		struct tun_group_opts go = {.hold_ms = opts->resume_hold_s * 1000u};
		if (!go.hold_ms)
			go.hold_ms = 90000;
		s->group = tun_group_new(base, TUN_ROLE_SIDECAR, &go, "");
	}
	if (!s->backoff_timer || !s->release_timer || !s->group) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	sc_state_load(s->o->state_path, s->resume, sizeof(s->resume), &s->written);
	/* Without a resume token no lease of ours can still be valid: settings
	 * left by a sidecar that died would point a new driver at ports that
	 * may be another notebook's. With one, the lease is likely resumed. */
	if (!s->resume[0])
		sc_settings_remove(s->o, "");
	s->status = SC_STATUS_STOPPED; /* so that the first set_status writes */
	set_status(s, SC_STATUS_CONNECTING, "connecting to the relay");
	sc_start(s);
	return s;
fail:
	sidecar_free(s);
	return NULL;
}

void sidecar_free(struct sidecar *s)
{
	if (!s)
		return;
	if (s->shutting_down)
		sc_stop(s, "stopped");
	disc_lookup_cancel(s->resolve);
	tun_endpoint_free(s->ep); /* before the group: its session may carry it */
	tun_group_free(s->group);
	if (s->backoff_timer)
		event_free(s->backoff_timer);
	if (s->release_timer)
		event_free(s->release_timer);
	disc_free(s->disc);
	SSL_CTX_free(s->ssl_ctx);
	free(s->addrs);
	free(s);
}

void sidecar_shutdown(struct sidecar *s)
{
	struct tun_ctl_msg m;
	struct timeval tv;

	if (s->shutting_down)
		return;
	s->shutting_down = 1;
	if (!s->tun || s->state != SC_LEASED) {
		SR_INFO("", "shutting down (no live tunnel: the relay frees the lease after its "
			    "grace period)");
		sc_stop(s, "stopped without a tunnel: the relay frees the lease after its grace "
			   "period");
		s->state = SC_DONE;
		event_base_loopbreak(s->base);
		return;
	}
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_RELEASE;
	SR_INFO(tun_conn_logctx(s->tun), "shutting down: releasing lease");
	if (tun_conn_send_ctl(s->tun, &m) != 0) {
		event_base_loopbreak(s->base);
		return;
	}
	s->release_sent = 1;
	tv.tv_sec = s->o->release_timeout_ms / 1000;
	tv.tv_usec = (s->o->release_timeout_ms % 1000) * 1000;
	evtimer_add(s->release_timer, &tv);
}

void sidecar_get_lease(const struct sidecar *s, struct sidecar_lease_info *info)
{
	*info = s->lease;
}

void sidecar_get_resume_stats(const struct sidecar *s, struct tun_group_stats *st)
{
	tun_group_get_stats(s->group, st);
}
