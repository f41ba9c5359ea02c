/*
 * sim_cluster.h - n bm_swim nodes on a sim_net, driven by a simulated clock.
 *
 * Node i has id "node-<i>", gossip address "s<i>"; the first nservers nodes
 * are servers, the rest signal nodes.  Every step advances time by step_ms:
 * packets due are delivered (in time order), then every node that is not
 * down is ticked.  A crashed node neither ticks nor exchanges packets.
 */
#ifndef SIM_CLUSTER_H
#define SIM_CLUSTER_H

#include <stdint.h>

#include "bm_swim.h"
#include "sim_net.h"

struct sim_cluster {
	struct sim_net *net;
	unsigned n;
	struct bm_swim **node;
	uint64_t now;
	unsigned step_ms, period_ms;
	uint64_t events[BM_SWIM_EV_UPDATED + 1];  /* member events seen, all nodes */
	uint64_t false_deads;                     /* DEAD events about a live node */
};

/* tmpl supplies tuning (period_ms, ...); id, addr, role, send, seed are set
 * here.  Returns NULL on failure. */
struct sim_cluster *sim_cluster_new(unsigned n, unsigned nservers, uint64_t seed,
				    const struct bm_swim_config *tmpl);
void sim_cluster_free(struct sim_cluster *c);
/* Node i joins through node seed (i != seed). */
void sim_cluster_join_all(struct sim_cluster *c, unsigned seed);
void sim_cluster_step(struct sim_cluster *c);
/* Runs whole periods until pred returns 1 or max_periods pass; returns the
 * periods it took, or -1. */
int sim_cluster_run_until(struct sim_cluster *c, int (*pred)(struct sim_cluster *, void *),
			  void *arg, unsigned max_periods);
void sim_cluster_crash(struct sim_cluster *c, unsigned i);
int sim_cluster_up(const struct sim_cluster *c, unsigned i);

/* Every live node sees exactly `alive` alive members and no suspect one. */
int sim_cluster_all_alive(struct sim_cluster *c, void *arg /* unsigned* alive */);
/* Every live node knows exactly `alive` members, none dead or left (some
 * may be suspect at the moment: with loss, in a large cluster, some node
 * always suspects someone, and that suspicion is refuted). */
int sim_cluster_all_live(struct sim_cluster *c, void *arg /* unsigned* */);
/* Every live node holds member id in state st (arg: struct sim_state_pred). */
struct sim_state_pred {
	const char *id;
	enum bm_swim_state state;
};
int sim_cluster_all_see(struct sim_cluster *c, void *arg);

#endif
