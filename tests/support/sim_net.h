/*
 * sim_net.h - a deterministic simulated datagram network for tests.
 *
 * Nodes are numbered 0..n-1 and addressed "s<index>".  A packet sent at
 * simulated time t is delivered at t + delay (uniform in [min, max] ms) unless
 * it is lost: with the link's loss probability, when its sender or receiver is
 * down, or when a partition is on and the two nodes are in different groups.
 * Everything random comes from one seeded PRNG, so a run is reproducible.
 * The network never reads a real clock: sim_net_run() moves its time forward.
 */
#ifndef SIM_NET_H
#define SIM_NET_H

#include <stddef.h>
#include <stdint.h>

struct sim_net;

/* Delivery of one packet to node `to` at simulated time now. */
typedef void sim_deliver_fn(void *ud, unsigned to, const char *from_addr,
			    const uint8_t *buf, size_t len, uint64_t now);
/* Optional per-link loss probability (0..1) from -> to. */
typedef double sim_link_loss_fn(void *ud, unsigned from, unsigned to);

/* Per-node send context for a bm_swim_send_fn-shaped function. */
struct sim_port {
	struct sim_net *net;
	unsigned idx;
};

struct sim_net *sim_net_new(unsigned n, uint64_t seed);
void sim_net_free(struct sim_net *net);
void sim_net_set_loss(struct sim_net *net, double p);
void sim_net_set_link_loss(struct sim_net *net, sim_link_loss_fn *fn, void *ud);
void sim_net_set_delay(struct sim_net *net, unsigned min_ms, unsigned max_ms);
void sim_net_set_group(struct sim_net *net, unsigned node, unsigned group);
void sim_net_partition(struct sim_net *net, int on);
void sim_net_set_down(struct sim_net *net, unsigned node, int down);
int sim_net_is_down(const struct sim_net *net, unsigned node);
struct sim_port *sim_net_port(struct sim_net *net, unsigned node);
/* Address string of a node ("s17"); static storage per net. */
const char *sim_net_addr(const struct sim_net *net, unsigned node);

/* Send from the port's node at the net's current time (ctx = sim_port).
 * Returns 0, or -1 for an address that is no node. */
int sim_net_send(void *ctx, const char *addr, const uint8_t *buf, size_t len);
/* Delivers, in time order, every packet due at or before until (including
 * packets sent by the deliveries themselves), then sets the time to until.
 * Returns the number delivered. */
unsigned sim_net_run(struct sim_net *net, uint64_t until, sim_deliver_fn *fn, void *ud);
uint64_t sim_net_now(const struct sim_net *net);

struct sim_net_stats {
	uint64_t sent, lost, delivered, bytes;
};
void sim_net_stats(const struct sim_net *net, struct sim_net_stats *st);

#endif
