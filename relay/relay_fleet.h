/* The relay fleet: leases in etcd, any relay serves any lease
 * (docs/architecture.md, "Relay fleet").
 *
 * With relay.fleet.etcd set, the relay
 *   - registers itself under <prefix>relays/<id> on its own etcd lease
 *     (TTL relay.fleet.ttl_s, kept alive while it runs);
 *   - mirrors every key under <prefix> (a range, then a watch) and binds
 *     the ports of every live lease of a pool it has, so an executor may
 *     connect to any relay;
 *   - grants a new lease's ports with one transaction that fails if any of
 *     them exists already, so ports are unique across the fleet;
 *   - resumes a lease by the SHA-256 of its resume token from the mirror,
 *     whichever relay made it;
 *   - carries an executor connection that arrives where the lease has no
 *     tunnel to a relay that holds one (fleet/peer.h header, then
 *     fleet/splice.h), or queues it as a relay alone does.
 * Every hook below is called only when r->fleet is set. */
#ifndef RELAY_FLEET_H
#define RELAY_FLEET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tunnel/tun_ctl.h"

struct relay;
struct relay_fleet;
struct relay_tunnel;
struct relay_lease_ext;

struct relay_fleet_opts;
/* The settings of o that need neither a file nor a socket, checked as
 * relay_fleet_new will (check-config and the configuration loader run it):
 * 0, or -1 with *key the setting to blame ("relay.fleet.id") and why its
 * value is refused ("must be ... (got ...)", escaped). Nothing to check
 * without an etcd endpoint. */
int relay_fleet_check_opts(const struct relay_fleet_opts *o, const char **key, char *why,
			   size_t len);

/* Open the etcd client and the peer listener and start registering and
 * mirroring (in the background: etcd may be down). Reads r->o->fleet once;
 * a reload does not change it. Returns NULL with the reason in err.
 * taking: a live handover (relay_handover.c) makes this relay; peer_fd, if
 * >= 0, is the old process's peer listener (stolen in every case). It then
 * stays frozen (relay_fleet_freeze) until the takeover commits. */
struct relay_fleet *relay_fleet_new(struct relay *r, int peer_fd, int taking, char *err,
				    size_t errlen);
/* Stops everything: no callback runs after it. Keys stay in etcd until
 * their leases expire. NULL does nothing. */
void relay_fleet_free(struct relay_fleet *f);
/* The configuration was reloaded: leases in etcd are matched against it. */
void relay_fleet_reloaded(struct relay_fleet *f);

/* The relay drains: it withdraws from the fleet (its registration and
 * tunnels keys go at once), so other relays stop carrying executors here. */
void relay_fleet_drain(struct relay_fleet *f);
/* The withdrawal is still on its way to etcd (a drain waits for it, within
 * its own deadline). */
int relay_fleet_withdrawing(const struct relay_fleet *f);
/* Executor connections this relay carries to others now (or tries to). */
size_t relay_fleet_carrying(const struct relay_fleet *f);
/* Is this relay's registration alive in etcd now? It is not while etcd has
 * been unreachable for the registration's TTL (relay.fleet.ttl_s). */
int relay_fleet_registered(const struct relay_fleet *f);

struct relay_stats;
/* Fill the fleet_* fields of st. */
void relay_fleet_stats(const struct relay_fleet *f, struct relay_stats *st);

/* A registration (new lease, or resume when m->resume is set) of tunnel t,
 * identified already: answered later, a lease message or an error. */
void relay_fleet_register(struct relay_fleet *f, struct relay_tunnel *t,
			  const struct tun_ctl_msg *m, int tenant, const char *tname,
			  const char *idkey);
/* t is being freed: a registration of it that waits is dropped. */
void relay_fleet_tunnel_gone(struct relay_fleet *f, struct relay_tunnel *t);
/* A tunnel now holds lx here / stopped holding it / lx is released (the
 * lease ends on every relay). */
void relay_fleet_attached(struct relay_fleet *f, struct relay_lease_ext *lx);
void relay_fleet_detached(struct relay_fleet *f, struct relay_lease_ext *lx);
void relay_fleet_released(struct relay_fleet *f, struct relay_lease_ext *lx);
/* lx has no tunnel here: carry fd (executor connection conn_id, which came
 * at since_us) to a relay that holds one. Returns 1 if it took fd (it then
 * owns it whatever happens), 0 if no relay holds a tunnel of lx (fd stays
 * the caller's). If none can be reached, fd waits here again until its
 * first wait's deadline. */
int relay_fleet_forward(struct relay_fleet *f, struct relay_lease_ext *lx, int role, int fd,
			const struct sockaddr *exec, uint64_t conn_id, uint64_t since_us);

/* Live handover. The peer listener's socket, to pass on. */
int relay_fleet_peer_fd(const struct relay_fleet *f);
/* on: the relay freezes for a handover (or a new one takes over): no
 * accept on the peer port, no change to local leases from etcd, its
 * registration not redone. off: it goes on (the handover was abandoned,
 * or the takeover committed: the new relay then registers under the same
 * id, replacing the old process's registration). */
void relay_fleet_freeze(struct relay_fleet *f, int on);
/* Executor connections this relay carries to another (spliced): while
 * frozen, fn is called for each that runs (its connect done), st borrowed
 * (its descriptors stay this relay's until relay_fleet_forget_carried).
 * Stops at fn's first nonzero return and returns it; else the count. A
 * pair still connecting is not passed: it ends with this process. */
struct fleet_splice_state;
typedef int (*relay_fleet_carried_fn)(const char *lease, int role, uint64_t conn_id,
				      const struct fleet_splice_state *st, void *arg);
long relay_fleet_foreach_carried(struct relay_fleet *f, relay_fleet_carried_fn fn, void *arg);
/* The new relay: go on carrying one (descriptors stolen in every case). 0,
 * SR_EINVAL or SR_ENOMEM. */
int relay_fleet_adopt_carried(struct relay_fleet *f, const char *lease, int role,
			      uint64_t conn_id, const struct fleet_splice_state *st);
/* Another process owns every carried connection now: close ours only. */
void relay_fleet_forget_carried(struct relay_fleet *f);

#endif
