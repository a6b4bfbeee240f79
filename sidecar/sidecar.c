/* The sidecar: tunnel.connections tunnels for one lease, each re-dialled
 * with backoff.
 *
 *   resolve -> dial (TCP + TLS, per address in turn) -> control stream ->
 *   register (with the resume token if we have one) -> leased
 *        ^                                                |
 *        +------------- backoff with jitter <-------- tunnel lost
 *
 * Each tunnel is a slot that runs this machine. The first slot to reach a
 * relay while no tunnel holds the lease registers (or resumes); the others
 * dial only while one holds it, preferring relay addresses no other slot
 * uses, and join that lease (tun_ctl.h): same lease, same ports, no new
 * resume token. All of them carry one group of driver connections
 * (tun_group.h). A relay that answers a join with "unknown_lease" predates
 * joins: the sidecar then keeps one tunnel.
 *
 * With two or more tunnels there is one slot more, the spare: a slot that
 * holds driver connections gives up on their relay after SC_HOLD_DIAL_MS and
 * joins another, and the spare then dials only relays that hold connections
 * of ours no tunnel serves, and joins the lease there so that they resume
 * (spare_take). It stays a tunnel of the lease until it is lost; if another
 * slot then cannot reach its own held connections' relay, the two swap
 * roles (keep_lost_relay): a relay with held connections is given up only
 * when another slot will dial it.
 *
 * The relay is trusted less than the notebook. tun_ctl has checked the shape
 * of every value it sends; here the order is checked too: one lease per
 * tunnel, only after our register, with exactly the roles we asked for (a
 * join: exactly the lease we hold); a stream only on a tunnel that holds the
 * lease, naming that lease and one of its ports. Anything else is a protocol
 * error that ends the tunnel, and each such tunnel in a row doubles the delay
 * before the next one. Relay-chosen text is escaped (sr_esc) in every log line
 * and printed setting. */
#include "sidecar/sc_int.h"
#include "common/sr_err.h"
#include "common/sr_log.h"
#include "common/sr_text.h"
#include "common/sr_util.h"
#include "discovery/disc.h"
#include "tunnel/tun_tls.h"
#include "tunnel/tun_endpoint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* One tunnel of the lease and its dial state machine. */
struct sc_slot {
	struct sidecar *s;
	/* 0: the slot that registers while no tunnel holds the lease;
	 * the spare's is always nslots (keep_lost_relay trades them) */
	unsigned idx;
	int spare;         /* this slot is the spare (spare_take) */
	int spare_refused; /* the spare's join was refused: no fast retries */
	enum sc_state state;
	struct disc_lookup *resolve;
	struct disc_addr *addrs;
	size_t naddrs, next_addr;
	struct tun_endpoint *ep;  /* the tunnel being dialled, or up */
	char dial_peer[SR_ADDRSTRLEN];
	char lost_peer[SR_ADDRSTRLEN]; /* the relay of this slot's last tunnel */
	uint32_t tid;      /* this tunnel's id at its relay (the lease's "tunnel") */
	uint32_t lost_tid; /* the last tunnel's, if it held the lease; 0: none */
	struct event *backoff_timer;
	struct event *register_timer; /* armed while the tunnel is up and not leased */
	unsigned attempt;
	struct tun_conn *tun;
	int sent_resume;
	int joining; /* the register sent on this tunnel is a join */
	/* This tunnel: register sent (with these roles), lease taken on it,
	 * release sent. A lease kept from an earlier tunnel is not "taken on
	 * it" until the relay grants, resumes or joins it here. */
	int registered;
	unsigned req_roles;
	int tun_leased;
	int release_sent;
	uint64_t tun_up_us; /* when this tunnel came up */
	unsigned strikes;   /* tunnels the relay ended with a protocol error, see on_closed */
	unsigned quick;	    /* leased tunnels in a row that ended within SC_QUICK_US */
	struct tun_limits *limits; /* flood budgets its tunnels use, one after another */
	int drain_seen;     /* this tunnel's relay said it drains (logged once) */
};

struct sidecar {
	struct event_base *base;
	const struct sidecar_opts *o;
	struct disc *disc;
	SSL_CTX *ssl_ctx;
	/* the TLS files as read into ssl_ctx (tls_refresh) */
	struct sc_file_stamp {
		dev_t dev;
		ino_t ino;
		off_t size;
		struct timespec mtime;
		int missing;
	} tls_stamp[3];
	sidecar_lease_cb on_lease;
	void *arg;

	/* tunnel.connections slots and, with two or more, the spare: first
	 * the last of the array, then whichever slot took its place
	 * (keep_lost_relay) */
	struct sc_slot slots[SIDECAR_MAX_CONNECTIONS + 1];
	unsigned nslots, nall;
	struct sc_slot *spare;
	struct event *release_timer;
	/* The driver connections, which outlive a tunnel (tunnel/tun_group.h);
	 * every tunnel of the lease carries them. */
	struct tun_group *group;
	char resume[TUN_CTL_RESUME_MAX]; /* from the last lease or the state file */
	struct sidecar_lease_info lease;
	int shutting_down;
	int join_unsupported; /* a relay answered a join as an unknown resume */
	struct sr_ratelog rl_driver; /* "cannot connect to driver port" lines */
	int cert_hint_given;	     /* on_closed: said once */
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
/* A leased tunnel that ends this soon after it came up counts as quick; from
 * the second quick one in a row the next dial backs off as after failed
 * dials (see on_closed). */
#define SC_QUICK_US (10ull * 1000000)

static void sc_start(struct sc_slot *p);
static int slot_may_dial(const struct sc_slot *p);
static void dial_next(struct sc_slot *p);
static void sc_stop(struct sidecar *s, const char *why);

/* Tunnels that hold the lease now, other than except (may be NULL). */
static unsigned slots_leased(const struct sidecar *s, const struct sc_slot *except)
{
	unsigned n = 0;

	for (unsigned i = 0; i < s->nall; i++)
		n += &s->slots[i] != except && s->slots[i].tun_leased;
	return n;
}

/* A slot (not except) whose register or resume waits for its answer. */
static int slot_registering(const struct sidecar *s, const struct sc_slot *except)
{
	for (unsigned i = 0; i < s->nall; i++) {
		const struct sc_slot *q = &s->slots[i];
		if (q != except && q->registered && !q->tun_leased && !q->joining)
			return 1;
	}
	return 0;
}

/* Which relay a driver connection came through (tun_conn_set_origin), so
 * that a relay's resume (its "streams" count) concerns only the connections
 * whose other end it has: a hash of its address, never 0. One tunnel: 0
 * (every held connection is that relay's). */
static uint32_t slot_origin(const struct sidecar *s, const char *addr)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	if (s->nslots == 1)
		return 0;
	for (const unsigned char *c = (const unsigned char *)addr; *c; c++)
		h = (h ^ *c) * 16777619u;
	return h ? h : 1;
}

/* lease.connected and lease.tunnels follow the slots. */
static void lease_links(struct sidecar *s)
{
	s->lease.tunnels = slots_leased(s, NULL);
	s->lease.connected = s->lease.tunnels > 0;
}

/* ---- state file -------------------------------------------------------- */

/* ---- tunnel callbacks ---------------------------------------------------- */

static void send_register(struct tun_conn *c, void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;
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
	p->joining = 0;
	if (p->spare && !slot_may_dial(p)) {
		/* it only joins, for held connections: none left, or no
		 * tunnel holds the lease any more (slot 0 registers) */
		tun_conn_close(c, 0);
		return;
	}
	if (slots_leased(s, p) && s->lease.have_lease) {
		/* Another tunnel holds the lease: join it. A token too long for
		 * a proof cannot come from a relay (they make 64 digits). */
		if (s->join_unsupported ||
		    tun_ctl_join_proof(s->resume, m.resume, sizeof(m.resume)) != 0) {
			tun_conn_close(c, 0);
			return;
		}
		snprintf(m.join, sizeof(m.join), "%s", s->lease.lease);
		/* The relay may not have seen it die yet: its streams resume
		 * here only once the relay lets go of it. */
		if (p->lost_tid && strcmp(p->dial_peer, p->lost_peer) == 0)
			m.replaces = p->lost_tid;
		p->joining = 1;
	} else if (slot_registering(s, p)) {
		/* Another tunnel asks for the lease now: this one joins it
		 * later. */
		SR_DEBUG(tun_conn_logctx(c), "another tunnel is registering; closing this one");
		tun_conn_close(c, 0);
		return;
	} else {
		const char *id = s->lease.have_lease ? s->lease.lease
				 : s->written.have_lease ? s->written.lease
							 : "";

		snprintf(m.resume, sizeof(m.resume), "%s", s->resume);
		/* Which lease: a fleet relay whose copy of the lease table lags
		 * asks etcd for this one key before it refuses the token. */
		if (m.resume[0])
			snprintf(m.lease, sizeof(m.lease), "%s", id);
	}
	p->sent_resume = !p->joining && s->resume[0] != '\0';
	p->req_roles = m.roles;
	p->registered = 1;
	p->state = SC_REGISTERING;
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

/* A lease the relay granted and we cannot take (roles or ports we did not
 * agree to): said released before the tunnel ends, so that the relay does
 * not hold it, and its ports, for the grace period each time we dial
 * again. Not for the lease we hold (a resume or a join answered wrongly):
 * that one is still ours. */
static void set_status(struct sidecar *s, enum sc_status st, const char *msg);

static void refuse_lease(struct sidecar *s, struct sc_slot *p, struct tun_conn *c,
			 const struct tun_ctl_msg *m, const char *why)
{
	struct tun_ctl_msg rel;
	char msg[256];

	if (!p->joining && !(s->lease.have_lease && strcmp(s->lease.lease, m->lease) == 0)) {
		memset(&rel, 0, sizeof(rel));
		rel.type = TUN_CTL_RELEASE;
		(void)tun_conn_send_ctl(c, &rel);
	}
	/* Most often our own tunnel.allowed_ports against the relay's pool:
	 * the notebook's status says so, not just "reconnecting". */
	if (!s->lease.have_lease) {
		snprintf(msg, sizeof(msg), "refused the relay's lease: %s", why);
		set_status(s, SC_STATUS_NO_LEASE, msg);
	}
	protocol_error(c, why);
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
	for (unsigned i = 0; i < s->nall; i++) {
		struct sc_slot *q = &s->slots[i];
		q->attempt = 0;
		/* Its other tunnels carry (or join) a lease that is gone: one on
		 * another relay of a fleet may not have been told, and while it
		 * holds the lease no slot asks for a new one (slot_may_dial). */
		if (q->tun && (q->tun_leased || q->joining))
			tun_conn_close(q->tun, SR_EDENIED);
	}
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

/* The lease is held: the next resting tunnel may join it. One at a time
 * (the next once this one joined), so that a relay that refuses joins
 * sees one attempt. */
static void kick_idle(struct sidecar *s)
{
	for (unsigned i = 0; i < s->nall && !s->join_unsupported; i++)
		if (!s->slots[i].spare && s->slots[i].state == SC_IDLE) {
			sc_start(&s->slots[i]);
			return;
		}
	/* The spare, idle while connections are held: when it last looked,
	 * another slot was dialling their relay, which it may have given up
	 * since (resolved_cb ranks the relays again). */
	if (s->spare && s->spare->state == SC_IDLE && slot_may_dial(s->spare))
		sc_start(s->spare);
}

/* Slot p, leased now on another relay than the one whose tunnel it lost,
 * gave that relay up while it held driver connections of ours (SC_HOLD_DIAL_MS):
 * no slot would dial it again, and they would be reset after resume_hold_s
 * even if it came back within it. The spare takes it over (with the lost
 * tunnel's id, for "replaces") and dials it until they resume or their hold
 * ends. Busy with another relay, it finds this one on its next round
 * (resolved_cb), without the id. */
static void spare_take(struct sidecar *s, const struct sc_slot *p)
{
	struct sc_slot *sp = s->spare;

	if (!sp || p == sp || !p->lost_peer[0] || strcmp(p->dial_peer, p->lost_peer) == 0 ||
	    !tun_group_held_from(s->group, slot_origin(s, p->lost_peer)))
		return;
	if (sp->state != SC_IDLE)
		return;
	snprintf(sp->lost_peer, sizeof(sp->lost_peer), "%s", p->lost_peer);
	sp->lost_tid = p->lost_tid;
	sp->attempt = 0;
	sp->spare_refused = 0;
	SR_INFO("", "driver connections held for relay %s, which no tunnel dials now: a spare "
		    "tunnel dials it until they resume or their resume_hold_s ends",
		p->lost_peer);
	sc_start(sp);
}

/* Slot p could not reach the relay it lost (within SC_HOLD_DIAL_MS, or
 * refused at once), where driver connections of ours wait. It moves on to
 * another relay only if someone will dial this one for them: the spare,
 * idle (spare_take, once p is leased elsewhere). If the spare is a tunnel of
 * the lease (it resumed what it was for), the two swap: the spare's tunnel
 * counts as one of tunnel.connections from now on, and p, the spare now,
 * dials on for them. If the spare dials for another relay, p dials its own
 * again, and the lease has a tunnel less meanwhile: its connections matter
 * more. Returns whether p keeps dialling the relay it lost. */
static int keep_lost_relay(struct sidecar *s, struct sc_slot *p)
{
	struct sc_slot *sp = s->spare;
	unsigned idx;

	if (!sp || p == sp || s->shutting_down || !p->lost_peer[0] ||
	    strcmp(p->dial_peer, p->lost_peer) != 0 ||
	    !tun_group_held_from(s->group, slot_origin(s, p->lost_peer)))
		return 0;
	/* idle: it takes the relay over once p is leased elsewhere; dialling
	 * this very relay: two joins there would race for its connections */
	if (sp->state == SC_IDLE || (sp->ep && !sp->tun_leased &&
				     strcmp(sp->dial_peer, p->lost_peer) == 0))
		return 0;
	if (!sp->tun_leased) {
		SR_INFO("", "driver connections held for relay %s, which does not answer; the "
			    "spare tunnel dials for another relay's: dialling %s again",
			p->lost_peer, p->lost_peer);
		return 1;
	}
	idx = p->idx;
	p->idx = sp->idx;
	sp->idx = idx;
	p->spare = 1;
	p->spare_refused = 0;
	sp->spare = 0;
	s->spare = p;
	SR_INFO("", "driver connections held for relay %s, which does not answer: the spare "
		    "tunnel (relay %s) is one of tunnel.connections now, and this one dials %s "
		    "until they resume or their resume_hold_s ends",
		p->lost_peer, sp->dial_peer, p->lost_peer);
	return 1;
}

/* The answer to a join: the very lease we hold, on one more tunnel. */
static void on_joined(struct sidecar *s, struct sc_slot *p, struct tun_conn *c,
		      const struct tun_ctl_msg *m)
{
	char ctx[128], lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)];

	/* Its host may differ: each relay of a fleet names its own address;
	 * the settings keep the one the lease was granted or resumed with. */
	if (!s->lease.have_lease || strcmp(m->lease, s->lease.lease) != 0 ||
	    memcmp(m->ports, s->lease.ports, sizeof(m->ports)) != 0) {
		protocol_error(c, "the answer to a join is not the lease we hold");
		return;
	}
	spare_take(s, p);
	p->tun_leased = 1;
	p->tid = m->tunnel;
	p->lost_tid = 0;
	p->state = SC_LEASED;
	p->attempt = 0;
	p->spare_refused = 0;
	lease_links(s);
	snprintf(ctx, sizeof(ctx), "lease=%s relay=%s", sr_esc(m->lease, lbuf, sizeof(lbuf)),
		 p->dial_peer);
	tun_conn_set_logctx(c, ctx);
	tun_conn_set_group(c, s->group);
	tun_group_expect_on(s->group, c, m->streams);
	if (p->spare)
		SR_INFO(ctx, "spare tunnel joined the lease, %llu held stream%s to resume: %u "
			     "tunnels carry it now",
			(unsigned long long)m->streams, m->streams == 1 ? "" : "s",
			s->lease.tunnels);
	else
		SR_INFO(ctx, "joined the lease: %u tunnels carry it now", s->lease.tunnels);
	kick_idle(s);
}

/* New lease ports on which something already listens on this loopback,
 * before the driver could have bound them: most likely the relay itself,
 * run on this machine with its pool on 0.0.0.0 or 127.0.0.1, so that each
 * executor connection the sidecar passes on comes back to the relay as a
 * new one, 8,192 deep. Said, not refused: a leftover driver is possible. */
static void warn_ports_taken(const char *ctx, const struct sidecar_lease_info *l)
{
	for (int r = 0; r < TUN_PORT_MAX; r++) {
		struct sockaddr_in sin = {.sin_family = AF_INET,
					  .sin_port = htons(l->ports[r]),
					  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int fd, taken, one = 1;

		if (!l->ports[r] || (fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			continue;
		/* A bind, not a connect, which a listener there (the relay, or a
		 * driver) would see as a connection. SO_REUSEADDR, as the
		 * driver's: only a listener makes it fail, not TIME_WAIT. */
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		taken =
		    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 && errno == EADDRINUSE;
		close(fd);
		if (taken)
			SR_WARN(
			    ctx,
			    "something already listens on 127.0.0.1:%u, the %s port of the new "
			    "lease: the driver cannot bind it, and if it is the relay (run on "
			    "this machine with its pool on 0.0.0.0 or 127.0.0.1), executor "
			    "connections loop back to it; bind the relay's pool to 127.0.0.2",
			    l->ports[r], tun_port_role_name((enum tun_port_role)r));
	}
}

static void on_lease(struct sidecar *s, struct sc_slot *p, struct tun_conn *c,
		     const struct tun_ctl_msg *m)
{
	struct sidecar_lease_info old = s->lease;
	char err[512], ctx[128], why[224], want[128], got[48];
	char lbuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)], hbuf[SR_ESC_SIZE(TUN_CTL_HOST_MAX)];
	char obuf[SR_ESC_SIZE(TUN_CTL_LEASE_MAX)];
	int changed;

	if (!p->registered || p->tun_leased || p->release_sent) {
		protocol_error(c, p->tun_leased ? "a second lease on this tunnel"
						: "a lease that was not asked for");
		return;
	}
	/* tun_ctl made sure the ports are distinct; the roles must be ours. */
	if (m->roles != p->req_roles) {
		role_list(p->req_roles, want, sizeof(want));
		role_list(m->roles, got, sizeof(got));
		snprintf(why, sizeof(why), "lease grants roles %s, registered for %s", got, want);
		refuse_lease(s, p, c, m, why);
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
			refuse_lease(s, p, c, m, why);
			return;
		}
	}
	if (p->joining) {
		on_joined(s, p, c, m);
		return;
	}
	/* A relay answers a resume it cannot honour with "unknown_lease"; a
	 * different lease instead would point our driver's connections (held,
	 * and new ones) at ports we never agreed to. */
	if (p->sent_resume && old.have_lease && strcmp(old.lease, m->lease) != 0) {
		refuse_lease(s, p, c, m, "a different lease in answer to our resume");
		return;
	}
	/* The same lease has the same ports (its host, the relay's advertised
	 * name, may change with the relay that resumes it). */
	if (p->sent_resume && old.have_lease &&
	    memcmp(old.ports, m->ports, sizeof(old.ports)) != 0) {
		protocol_error(c, "other ports for the same lease in answer to our resume");
		return;
	}
	if (old.have_lease && strcmp(old.lease, m->lease) != 0)
		tun_group_reset(s->group, TUN_LOST_ENDED); /* they were the old lease's */
	spare_take(s, p);
	p->tun_leased = 1;
	p->tid = m->tunnel;
	p->lost_tid = 0;
	s->lease.have_lease = 1;
	snprintf(s->lease.lease, sizeof(s->lease.lease), "%s", m->lease);
	snprintf(s->lease.host, sizeof(s->lease.host), "%s", m->host);
	memcpy(s->lease.ports, m->ports, sizeof(s->lease.ports));
	s->lease.ttl_s = m->ttl_s;
	lease_links(s);
	snprintf(s->lease.relay, sizeof(s->lease.relay), "%s", p->dial_peer);
	snprintf(s->resume, sizeof(s->resume), "%s", m->resume);
	p->state = SC_LEASED;
	p->attempt = 0;
	snprintf(ctx, sizeof(ctx), "lease=%s relay=%s", sr_esc(m->lease, lbuf, sizeof(lbuf)),
		 p->dial_peer);
	tun_conn_set_logctx(c, ctx);

	tun_conn_set_group(c, s->group);
	tun_group_set_logctx(s->group, ctx);
	tun_group_set_lease(s->group, m->lease);
	tun_group_expect_on(s->group, c, m->streams);

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
	if (!s->written.have_lease ||
	    memcmp(s->written.ports, s->lease.ports, sizeof(s->lease.ports)) != 0)
		warn_ports_taken(ctx, &s->lease);
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
	kick_idle(s);
}

/* The relay refused a join: it stays one tunnel fewer for now. */
static void on_join_refused(struct sidecar *s, struct sc_slot *p, struct tun_conn *c,
			    const struct tun_ctl_msg *m)
{
	char cbuf[SR_ESC_SIZE(TUN_CTL_CODE_MAX)], mbuf[SR_ESC_SIZE(TUN_CTL_TEXT_MAX)];

	if (strcmp(m->code, "unknown_lease") == 0) {
		/* A relay that predates joins took the proof for a resume
		 * token (tun_ctl.h): no tunnel of this sidecar joins again. */
		if (!s->join_unsupported)
			SR_WARN(tun_conn_logctx(c),
				"the relay cannot add a tunnel to a lease (an older sparkrelay): "
				"keeping one tunnel, tunnel.connections %u is not met",
				s->o->connections);
		s->join_unsupported = 1;
	} else if (strcmp(m->code, "revoked") == 0) {
		lease_lost(s, "revoked");
	} else {
		SR_WARN(tun_conn_logctx(c), "relay refused to add this tunnel to the lease: %s: %s",
			sr_esc(m->code, cbuf, sizeof(cbuf)), sr_esc(m->message, mbuf, sizeof(mbuf)));
	}
	if (p->spare)
		p->spare_refused = 1; /* no retry each second for the hold's length */
	tun_conn_close(c, SR_EDENIED);
}

static void on_ctl(struct tun_conn *c, const struct tun_ctl_msg *m, void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;
	char cbuf[SR_ESC_SIZE(TUN_CTL_CODE_MAX)], mbuf[SR_ESC_SIZE(TUN_CTL_TEXT_MAX)];
	char why[64];

	switch (m->type) {
	case TUN_CTL_LEASE:
		on_lease(s, p, c, m);
		break;
	case TUN_CTL_ERROR:
		if (p->joining && !p->tun_leased) {
			on_join_refused(s, p, c, m);
			break;
		}
		/* A resume the relay no longer knows (it restarted without a
		 * handover, or the grace period ran out) is expected now and then:
		 * a warning, and lease_lost says what it means for the driver. */
		SR_LOG(p->sent_resume && strcmp(m->code, "unknown_lease") == 0 ? SR_LOG_WARN
									       : SR_LOG_ERROR,
		       tun_conn_logctx(c), "relay refused registration: %s: %s",
		       sr_esc(m->code, cbuf, sizeof(cbuf)),
		       sr_esc(m->message, mbuf, sizeof(mbuf)));
		if ((p->sent_resume && strcmp(m->code, "unknown_lease") == 0) ||
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
		if (!p->release_sent) {
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
		if (!p->drain_seen) /* once: a relay may repeat it */
			SR_INFO(tun_conn_logctx(c), "relay is draining; will reconnect when it closes");
		p->drain_seen = 1;
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

/* While another tunnel holds the lease a slot dials to join it; while none
 * does, only the first slot dials (it registers or resumes), and the others
 * rest until a lease is granted (on_lease). */
static int slot_may_dial(const struct sc_slot *p)
{
	const struct sidecar *s = p->s;

	if (p->spare)
		return slots_leased(s, p) && !s->join_unsupported && s->lease.have_lease &&
		       tun_group_held(s->group);
	if (slots_leased(s, p))
		return !s->join_unsupported && s->lease.have_lease;
	return p->idx == 0;
}

static void schedule_backoff(struct sc_slot *p)
{
	struct sidecar *s = p->s;
	uint64_t delay = s->o->backoff_initial_ms;
	struct timeval tv;

	uint64_t max = s->o->backoff_max_ms;
	int holding = tun_group_held(s->group) > 0;

	if (!slot_may_dial(p)) {
		p->state = SC_IDLE;
		return;
	}
	/* Driver connections wait for this tunnel (resume_hold_s): try again
	 * at once, then at least every second, so they resume within a second
	 * of the path coming back. */
	if (p->spare_refused)
		holding = 0;
	if (holding && max > SC_HOLD_RETRY_MS)
		max = SC_HOLD_RETRY_MS;
	for (unsigned i = 0; i < p->attempt && delay < max; i++)
		delay *= 2;
	if (delay > max)
		delay = max;
	/* "equal jitter": half fixed, half random, so a fleet of sidecars that
	 * lost the same relay does not return in lockstep. */
	delay = delay / 2 + sr_rand_below((uint32_t)(delay / 2 + 1));
	if (holding && p->attempt == 0)
		delay = 0;
	p->attempt++;
	p->state = SC_BACKOFF;
	tv.tv_sec = (time_t)(delay / 1000);
	tv.tv_usec = (suseconds_t)((delay % 1000) * 1000);
	SR_INFO("", "%sreconnecting in %llu ms (attempt %u)",
		p->spare ? "spare tunnel: " : p->idx ? "tunnel 2+: " : "",
		(unsigned long long)delay, p->attempt);
	evtimer_add(p->backoff_timer, &tv);
}

static void on_closed(struct tun_endpoint *ep, int err, const char *why_ep, void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;
	char why[200]; /* why_ep goes with ep */
	int was_up = p->tun != NULL, was_leased = p->tun_leased;
	int broke = err == SR_EPROTO || err == SR_ETOOBIG || err == SR_EVERSION;
	unsigned others;

	snprintf(why, sizeof(why), "%s", why_ep ? why_ep : "");
	/* OpenSSL's words for the relay's "certificate_required" alert */
	if (!s->o->cert_file && strstr(why, "certificate required") && !s->cert_hint_given) {
		s->cert_hint_given = 1;
		SR_WARN("",
			"the relay asks for a client certificate and none is configured: set "
			"tunnel.tls.cert and tunnel.tls.key (docs/security.md)");
	}
	evtimer_del(p->register_timer);
	p->registered = p->tun_leased = p->release_sent = p->joining = 0;
	lease_links(s);
	others = s->lease.tunnels;
	if (!was_up) {
		char msg[256];

		/* the spare tries each second while connections are held */
		SR_LOG(p->spare ? SR_LOG_INFO : SR_LOG_WARN, "", "cannot reach relay %s: %s%s",
		       p->dial_peer, err == SR_ETLS ? "TLS handshake failed: " : "", why);
		snprintf(msg, sizeof(msg), "cannot reach relay %s: %s%s", p->dial_peer,
			 err == SR_ETLS ? "TLS handshake failed: " : "", why);
		if (!s->shutting_down && !others)
			set_status(s, SC_STATUS_UNREACHABLE, msg);
	} else {
		if (why[0])
			SR_INFO(tun_conn_logctx(p->tun), "transport: %s", why);
		/* A relay that breaks the protocol waits twice as long each time,
		 * so it cannot replay an attack (a stream flood, a bad lease) on a
		 * fresh tunnel every backoff_initial_ms, nor reset that by closing
		 * one tunnel cleanly in between: only a tunnel that stayed up a
		 * while forgives. */
		if (broke) {
			if (p->strikes < SC_STRIKES_MAX)
				p->strikes++;
			p->attempt = p->strikes;
			SR_WARN(tun_conn_logctx(p->tun),
				"the relay broke the protocol (%u time%s lately)", p->strikes,
				p->strikes == 1 ? "" : "s");
		} else if (sr_now_us() - p->tun_up_us >= SC_STRIKES_FORGIVE_US) {
			p->strikes = 0;
		}
		/* A relay that grants the lease and closes cleanly at once,
		 * again and again, would have the sidecar dial, write its
		 * state and log a few lines every backoff_initial_ms (and
		 * rewrite the Spark settings each time the ports alternate). */
		if (was_leased && !broke) {
			if (sr_now_us() - p->tun_up_us >= SC_QUICK_US)
				p->quick = 0;
			else if (p->quick < SC_STRIKES_MAX && ++p->quick == 3)
				SR_WARN(
				    tun_conn_logctx(p->tun),
				    "the relay ended the tunnel within %llu s of granting the "
				    "lease, %u times in a row: dialling less often until one "
				    "lasts",
				    SC_QUICK_US / 1000000, p->quick);
		}
	}
	tun_endpoint_free(ep);
	p->ep = NULL;
	p->tun = NULL;
	if (was_up) {
		snprintf(p->lost_peer, sizeof(p->lost_peer), "%s", p->dial_peer);
		if (was_leased)
			p->lost_tid = p->tid;
		p->tid = 0;
	}
	if (!was_up) {
		if (keep_lost_relay(s, p))
			schedule_backoff(p);
		else
			dial_next(p);
		return;
	}
	if (s->shutting_down) {
		/* The tunnel that carries the release ends the run (or the
		 * release timer does); the others were closed on purpose. */
		if (s->stopped || !slots_leased(s, NULL)) {
			p->state = SC_DONE;
			event_base_loopbreak(s->base);
		}
		return;
	}
	if (was_leased && s->lease.have_lease && !others)
		s->lease.reconnects++;
	if (p->spare && !was_leased) {
		/* closed by us (nothing to resume), or its join refused */
		SR_INFO("", "spare tunnel to relay %s closed%s%s", p->dial_peer, why[0] ? ": " : "",
			why);
	} else {
		char msg[256];

		if (was_leased && others) {
			SR_WARN("", "%stunnel to relay %s lost%s%s; %u other tunnel%s the lease; "
				    "dialling a replacement",
				p->spare ? "spare " : "", p->dial_peer, why[0] ? ": " : "", why,
				others, others == 1 ? " carries" : "s carry");
		} else if (!others) {
			snprintf(msg, sizeof(msg), "tunnel to relay %s lost%s%s; reconnecting",
				 p->dial_peer, why[0] ? ": " : "", why);
			if (s->lease.have_lease)
				set_status(s, SC_STATUS_RECONNECTING, msg);
			else if (s->status != SC_STATUS_NO_LEASE)
				set_status(s, SC_STATUS_CONNECTING, msg);
		}
	}
	/* Held connections wait: a leased tunnel that broke is dialled again
	 * at once. One that ended before its lease came (with TLS 1.3 a
	 * relay refuses a client certificate only after the handshake)
	 * backs off as usual, up to SC_HOLD_RETRY_MS: at once every time
	 * would dial in a loop for as long as the relay refuses. */
	if (tun_group_held(s->group) && !broke && was_leased)
		p->attempt = 0;
	if (!broke && was_leased && p->quick > 1)
		p->attempt = p->quick - 1;
	schedule_backoff(p);
	/* The first slot rests while another tunnel holds the lease and
	 * joins are refused; none holds it now. */
	for (unsigned i = 0; i < s->nall && !others && p->idx != 0; i++)
		if (s->slots[i].idx == 0 && s->slots[i].state == SC_IDLE)
			sc_start(&s->slots[i]);
}

static struct sr_bsock *on_connect(struct tun_conn *c, const struct tun_connect_req *req,
				   void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;

	return sc_driver_connect(c, s->base, req, &s->lease, p->tun_leased,
				 s->o->driver_connect_timeout_ms, &s->rl_driver);
}

static void on_connect_failed(struct tun_conn *c, uint64_t conn_id, uint16_t port,
			      const char *peer, int err, void *arg)
{
	struct sc_slot *p = arg;

	sc_driver_refused(&p->s->rl_driver, tun_conn_logctx(c), conn_id, peer, port, err);
}

static const struct tun_conn_cbs sc_tun_cbs = {
	.on_ctl = on_ctl,
	.on_ctl_open = send_register,
	.on_connect = on_connect,
	.on_connect_failed = on_connect_failed,
};

static uint32_t register_timeout_ms(const struct sidecar *s)
{
	return s->o->register_timeout_ms ? s->o->register_timeout_ms : 30000;
}

/* The relay took the tunnel (TLS, h2) but has not granted, resumed or
 * joined the lease in register_timeout_ms: it answers PINGs and nothing
 * else, never opened the control stream, ended it, or holds the answer back.
 * Without a limit one such relay would keep this slot (and, while it
 * registers, every other) from the next relay address for good. */
static void register_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sc_slot *p = arg;
	char why[96];

	(void)fd;
	(void)what;
	if (!p->tun || p->tun_leased || p->s->shutting_down)
		return;
	snprintf(why, sizeof(why), "%s within tunnel.register_timeout_ms (%u ms)",
		 p->registered ? "no answer to our registration" : "no control stream",
		 register_timeout_ms(p->s));
	protocol_error(p->tun, why);
}

static void on_up(struct tun_endpoint *ep, void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;
	struct timeval tv;
	char ctx[128];

	snprintf(ctx, sizeof(ctx), "relay=%s", p->dial_peer);
	p->tun = tun_endpoint_conn(ep);
	tun_conn_set_logctx(p->tun, ctx);
	tun_conn_set_origin(p->tun, slot_origin(s, p->dial_peer));
	tun_conn_set_slot(p->tun, (unsigned)(p - s->slots));
	SR_INFO(ctx, "connected (TLS 1.3, h2); registering app \"%s\"", s->o->app_name);
	p->registered = p->tun_leased = p->release_sent = p->joining = p->drain_seen = 0;
	p->tun_up_us = sr_now_us();
	p->state = SC_REGISTERING;
	tv = sr_tv_ms(register_timeout_ms(s));
	evtimer_add(p->register_timer, &tv);
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

/* How much p wants the relay at address a, lower first, among relays no
 * other tunnel uses: the one this slot just lost if it holds waiting driver
 * connections of ours (only it can resume them, and its tunnel was up a
 * moment ago; also beside another live tunnel of ours there), then any other
 * that holds some (lost earlier: perhaps dead or restarted), then those that
 * hold none, the one this slot just lost last (it may be dead); and after
 * all of them the relays of the other tunnels (with one relay only, every
 * tunnel goes to it). One tunnel: discovery's order, but the relay it just
 * lost first while it holds connections. */
#define SC_RANKS 5
static int addr_rank(const struct sc_slot *p, const char *a)
{
	const struct sidecar *s = p->s;
	int lost = strcmp(a, p->lost_peer) == 0;
	int held = tun_group_held_from(s->group, slot_origin(s, a)) > 0;
	int used = 0, leased_there = 0;

	/* One tunnel: discovery's order, but the relay it lost first while it
	 * holds connections (only there can they resume: the fleet chaos test
	 * cut a tunnel whose lease had moved to the second relay listed, and
	 * the resume on the first lost every stream). */
	if (s->nslots == 1)
		return held && !lost ? 1 : 0;
	for (unsigned i = 0; i < s->nall; i++) {
		const struct sc_slot *q = &s->slots[i];
		if (q != p && q->ep && strcmp(q->dial_peer, a) == 0) {
			used = 1;
			leased_there |= q->tun_leased;
		}
	}
	/* Two tunnels of ours on one relay, one lost: its connections resume
	 * only on a join there (the other tunnel's relay is up, so it answers
	 * at once). Found by the fleet soak: the replacement went to a relay
	 * no tunnel used, and they were reset after resume_hold_s. */
	if (used)
		return lost && held && leased_there ? 0 : 4;
	if (held)
		return lost ? 0 : 1;
	return lost ? 3 : 2;
}

/* The stat of each TLS file (CA, client certificate, key; NULL ones
 * zero), followed through symbolic links as OpenSSL opens them. */
static void tls_stamps(const struct sidecar_opts *o, struct sc_file_stamp st[3])
{
	const char *paths[3] = {o->ca_file, o->cert_file, o->key_file};

	memset(st, 0, 3 * sizeof(*st));
	for (int i = 0; i < 3; i++) {
		struct stat sb;
		if (!paths[i])
			continue;
		if (stat(paths[i], &sb) != 0) {
			st[i].missing = 1;
			continue;
		}
		st[i].dev = sb.st_dev;
		st[i].ino = sb.st_ino;
		st[i].size = sb.st_size;
		st[i].mtime = sb.st_mtim;
	}
}

/* Before each dial: TLS files that changed since they were read (a CA or
 * a short-lived client certificate renewed in place, as a Kubernetes
 * Secret is) are read again for this tunnel and the next ones; tunnels up
 * keep theirs. Files that do not load (a certificate written before its
 * key) leave the running context, once per change. */
static void tls_refresh(struct sidecar *s)
{
	struct sc_file_stamp now[3];
	char err[512];
	SSL_CTX *ctx;

	tls_stamps(s->o, now);
	if (memcmp(now, s->tls_stamp, sizeof(now)) == 0)
		return;
	memcpy(s->tls_stamp, now, sizeof(now));
	ctx = tun_tls_client_ctx(s->o->ca_file, s->o->cert_file, s->o->key_file, err,
				 sizeof(err));
	if (!ctx) {
		SR_WARN("",
			"tunnel.tls: the files changed but cannot be used (%s); the ones read "
			"before stay",
			err);
		return;
	}
	SSL_CTX_free(s->ssl_ctx);
	s->ssl_ctx = ctx;
	SR_INFO("", "tunnel.tls: the files changed; this tunnel and the next use them");
}

static void dial_next(struct sc_slot *p)
{
	struct sidecar *s = p->s;
	const struct disc_addr *a;
	const char *name;
	SSL *ssl;

	if (s->shutting_down) {
		event_base_loopbreak(s->base);
		return;
	}
	if (p->next_addr >= p->naddrs) {
		schedule_backoff(p);
		return;
	}
	a = &p->addrs[p->next_addr++];
	sr_format_addr((const struct sockaddr *)&a->ss, p->dial_peer, sizeof(p->dial_peer));
	name = s->o->server_name ? s->o->server_name : a->host;
	tls_refresh(s);
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
			/* EMFILE, say: as many driver connections as descriptors */
			SR_ERROR("", "cannot dial relay %s: socket: %s", p->dial_peer,
				 strerror(errno));
			SSL_free(ssl);
			schedule_backoff(p);
			return;
		}
		sr_sock_nodelay(fd);
		sr_sock_notsent_lowat(fd, 128 * 1024);
		if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0 &&
		    errno != EINPROGRESS) {
			SR_WARN("", "cannot connect to relay %s: %s", p->dial_peer, strerror(errno));
			SSL_free(ssl);
			close(fd);
			if (keep_lost_relay(s, p))
				schedule_backoff(p);
			else
				dial_next(p);
			return;
		}
		/* Driver bytes a relay has not acknowledged, summed over the
		 * tunnel's streams: over it each stream keeps at most its
		 * stream_window (tun_stream.c), so a relay that takes bytes and
		 * never acknowledges them cannot make the sidecar keep a grown
		 * window per stream. An honest relay leaves at most about three
		 * conn_windows unacknowledged (credit paid early within
		 * conn_window plus its growth, and as much again owed), so three
		 * here. */
		struct tun_conn_opts topts = s->o->tun;
		uint64_t cap = 3ull * (topts.conn_window ? topts.conn_window : 64u << 20);
		topts.sock_in_max = cap > UINT32_MAX ? UINT32_MAX : (uint32_t)cap;
		topts.limits = p->limits;
		struct tun_endpoint_opts eo = {
			.role = TUN_ROLE_SIDECAR,
			.ssl = ssl,
			.connecting = 1,
			/* Connections are held: do not wait long on one relay. */
			.handshake_timeout_ms = tun_group_held(s->group) &&
							s->o->dial_timeout_ms > SC_HOLD_DIAL_MS
						    ? SC_HOLD_DIAL_MS
						    : s->o->dial_timeout_ms,
			.conn = &topts,
			.conn_cbs = &sc_tun_cbs,
		};
		p->ep = tun_endpoint_new(s->base, fd, &eo, &sc_ep_cbs, p);
		if (!p->ep)
			goto fail;
	}
	SR_DEBUG("", "dialling relay %s (%s)", p->dial_peer, name);
	p->state = SC_DIALING;
	return;
fail:
	SR_ERROR("", "out of memory while dialling");
	schedule_backoff(p);
}

/* a is among the n of list already, with the same name to verify (a name
 * listed twice in /etc/hosts, say): dialled once. */
static int addr_listed(const struct disc_addr *list, size_t n, const struct disc_addr *a)
{
	char x[SR_ADDRSTRLEN], y[SR_ADDRSTRLEN];

	sr_format_addr((const struct sockaddr *)&a->ss, x, sizeof(x));
	for (size_t i = 0; i < n; i++) {
		sr_format_addr((const struct sockaddr *)&list[i].ss, y, sizeof(y));
		if (strcmp(x, y) == 0 && strcmp(list[i].host, a->host) == 0)
			return 1;
	}
	return 0;
}

static void resolved_cb(int err, const struct disc_addr *addrs, size_t n, void *arg)
{
	struct sc_slot *p = arg;
	struct sidecar *s = p->s;
	size_t k = 0;

	p->resolve = NULL;
	free(p->addrs);
	p->addrs = NULL;
	p->naddrs = p->next_addr = 0;
	if (err != 0 || n == 0) {
		SR_WARN("", "no address found for any relay");
		if (!slots_leased(s, NULL))
			set_status(s, SC_STATUS_UNREACHABLE, "no address found for any relay");
		schedule_backoff(p);
		return;
	}
	p->addrs = malloc(n * sizeof(*addrs));
	if (!p->addrs) {
		schedule_backoff(p);
		return;
	}
	/* In discovery's order within each rank (addr_rank); the spare only
	 * to relays that hold connections of ours no other tunnel serves. */
	for (int rank = 0; rank < (p->spare ? 2 : SC_RANKS); rank++)
		for (size_t i = 0; i < n; i++) {
			char a[SR_ADDRSTRLEN];
			sr_format_addr((const struct sockaddr *)&addrs[i].ss, a, sizeof(a));
			if (addr_rank(p, a) == rank && !addr_listed(p->addrs, k, &addrs[i]))
				p->addrs[k++] = addrs[i];
		}
	p->naddrs = k;
	if (p->spare && k == 0) {
		p->state = SC_IDLE;
		return;
	}
	dial_next(p);
}

static void sc_start(struct sc_slot *p)
{
	struct sidecar *s = p->s;

	p->state = SC_RESOLVING;
	p->resolve = disc_lookup(s->disc, resolved_cb, p);
	if (!p->resolve) {
		SR_ERROR("", "cannot look up relays: out of memory");
		if (!slots_leased(s, NULL))
			set_status(s, SC_STATUS_UNREACHABLE, "cannot look up the relays");
		schedule_backoff(p);
	}
}

static void backoff_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sc_slot *p = arg;

	if (!slot_may_dial(p)) {
		p->state = SC_IDLE;
		return;
	}
	sc_start(p);
}

static void release_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sidecar *s = arg;
	SR_WARN("", "relay did not confirm the release within %u ms; exiting anyway",
		s->o->release_timeout_ms);
	sc_stop(s, "stopped; the relay did not confirm the release");
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
	tls_stamps(opts, s->tls_stamp); /* before the read: a change meanwhile is seen */
	s->ssl_ctx = tun_tls_client_ctx(opts->ca_file, opts->cert_file, opts->key_file, err,
					errlen);
	if (!s->ssl_ctx)
		goto fail;
	s->disc = disc_new(base, &opts->disc, opts->relays, opts->nrelays, err, errlen);
	if (!s->disc)
		goto fail;
	s->nslots = opts->connections == 0 ? 1
		    : opts->connections > SIDECAR_MAX_CONNECTIONS ? SIDECAR_MAX_CONNECTIONS
								  : opts->connections;
	s->nall = s->nslots + (s->nslots > 1);
	for (unsigned i = 0; i < s->nall; i++) {
		struct sc_slot *p = &s->slots[i];
		p->s = s;
		p->idx = i;
		p->spare = i == s->nslots;
		if (p->spare)
			s->spare = p;
		p->state = SC_IDLE;
		p->backoff_timer = evtimer_new(base, backoff_cb, p);
		p->register_timer = evtimer_new(base, register_timeout_cb, p);
		p->limits = tun_limits_new();
		if (!p->backoff_timer || !p->register_timer || !p->limits) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
	}
	s->release_timer = evtimer_new(base, release_timeout_cb, s);
	{
		struct tun_group_opts go = {.hold_ms = opts->resume_hold_s * 1000u};
		if (!go.hold_ms)
			go.hold_ms = 90000;
		s->group = tun_group_new(base, TUN_ROLE_SIDECAR, &go, "");
	}
	if (!s->release_timer || !s->group) {
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
	sc_start(&s->slots[0]); /* the others once it holds the lease */
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
	for (unsigned i = 0; i < s->nall; i++) {
		struct sc_slot *p = &s->slots[i];
		disc_lookup_cancel(p->resolve);
		tun_endpoint_free(p->ep); /* before the group: its session may carry it */
		if (p->backoff_timer)
			event_free(p->backoff_timer);
		if (p->register_timer)
			event_free(p->register_timer);
		tun_limits_free(p->limits); /* after its tunnel */
		free(p->addrs);
	}
	tun_group_free(s->group);
	if (s->release_timer)
		event_free(s->release_timer);
	disc_free(s->disc);
	SSL_CTX_free(s->ssl_ctx);
	free(s);
}

void sidecar_shutdown(struct sidecar *s)
{
	struct sc_slot *rel = NULL;
	struct tun_ctl_msg m;
	struct timeval tv;

	if (s->shutting_down)
		return;
	s->shutting_down = 1;
	for (unsigned i = 0; i < s->nall && !rel; i++)
		if (s->slots[i].tun && s->slots[i].state == SC_LEASED)
			rel = &s->slots[i];
	/* One tunnel carries the release; the others go now, so that none
	 * of them ends the run before the relay's answer. */
	for (unsigned i = 0; i < s->nall; i++) {
		struct sc_slot *p = &s->slots[i];
		if (p == rel)
			continue;
		evtimer_del(p->backoff_timer);
		evtimer_del(p->register_timer);
		disc_lookup_cancel(p->resolve);
		p->resolve = NULL;
		tun_endpoint_free(p->ep);
		p->ep = NULL;
		p->tun = NULL;
		p->registered = p->tun_leased = p->joining = 0;
		p->state = SC_DONE;
	}
	lease_links(s);
	if (!rel) {
		SR_INFO("", "shutting down (no live tunnel: the relay frees the lease after its "
			    "grace period)");
		sc_stop(s, "stopped without a tunnel: the relay frees the lease after its grace "
			   "period");
		event_base_loopbreak(s->base);
		return;
	}
	memset(&m, 0, sizeof(m));
	m.type = TUN_CTL_RELEASE;
	SR_INFO(tun_conn_logctx(rel->tun), "shutting down: releasing lease");
	if (tun_conn_send_ctl(rel->tun, &m) != 0) {
		event_base_loopbreak(s->base);
		return;
	}
	rel->release_sent = 1;
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
