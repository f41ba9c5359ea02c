/*
 * bm_swim.h - cluster membership by gossip (SWIM with suspicion) and the
 * registry it carries.
 *
 * Protocol logic only: no sockets and no clock.  The embedder
 *   - gives a transport (a send function taking an opaque address string),
 *   - calls bm_swim_recv() with every datagram received,
 *   - calls bm_swim_tick() often (every 10..100 ms) with a monotonic now_ms.
 * bm_swim_udp.h does all three on a libevent loop; tests use a simulated
 * network (tests/support/sim_net.h).  Randomness comes from a PRNG seeded by
 * the config, so a run is reproducible given the same inputs.
 *
 * Every protocol period (period_ms) the node probes one member, chosen
 * round-robin over a shuffled list: PING, then after probe_timeout_ms
 * PING_REQ through indirect_k other members, and if no ACK arrives by the end
 * of the period the member becomes suspect.  A suspect is declared dead
 * after suspicion_mult * max(1, log10(n)) periods unless it refutes by
 * gossiping a higher incarnation.  Updates ride on every packet, each
 * repeated retransmit_mult * ceil(log10(n + 1)) times.  Every sync_periods
 * the node exchanges its whole table with a random live member (push-pull;
 * sometimes with a dead one, which is how partitions heal), and every
 * registry_pull_periods it sends its registry digest to a random live member
 * to pull the entries it misses.
 *
 * Not thread-safe: one thread drives a struct bm_swim.
 */
#ifndef BM_SWIM_H
#define BM_SWIM_H

#include <stddef.h>
#include <stdint.h>

#include "bm_swim_proto.h"

struct bm_swim;
struct bm_registry;

/* Send one datagram to addr (a gossip address as the members advertise it).
 * Returns 0 or a negative BM_E*; a failure is counted, not retried. */
typedef int bm_swim_send_fn(void *ctx, const char *addr, const uint8_t *buf,
			    size_t len);

enum bm_swim_event {
	BM_SWIM_EV_JOINED = 1,   /* first heard of, alive */
	BM_SWIM_EV_SUSPECT,
	BM_SWIM_EV_DEAD,
	BM_SWIM_EV_LEFT,
	BM_SWIM_EV_ALIVE_AGAIN,  /* was suspect, dead or left; alive now */
	BM_SWIM_EV_UPDATED,      /* alive, new incarnation or addresses */
};

/* A member as the API shows it; strings borrowed, valid until the next call
 * into the struct bm_swim. */
struct bm_swim_member {
	const char *id;
	enum bm_swim_role role;
	enum bm_swim_state state;
	uint32_t incarnation;
	const char *addr, *zmq, *admin;
	int self;
};

typedef void bm_swim_member_fn(void *ud, enum bm_swim_event ev,
			       const struct bm_swim_member *m);

struct bm_swim_config {
	const char *id;            /* 1..64 bytes, unique in the cluster */
	enum bm_swim_role role;
	const char *addr;          /* gossip address peers send to, <= 128 */
	const char *zmq;           /* opaque, may be NULL */
	const char *admin;         /* opaque, may be NULL */
	const uint8_t *key;        /* cluster key (copied); key_len 0 = none */
	size_t key_len;
	uint32_t incarnation;      /* start incarnation; 0 is fine */
	uint64_t registry_epoch;   /* must grow across restarts (wall ms) */
	uint64_t seed;             /* PRNG seed */
	bm_swim_send_fn *send;
	void *send_ctx;
	bm_swim_member_fn *on_member; /* may be NULL */
	void *ud;
	/* tuning; 0 = default */
	unsigned period_ms;        /* 1000 */
	unsigned probe_timeout_ms; /* period / 2 */
	unsigned indirect_k;       /* 3 */
	unsigned suspicion_mult;   /* 4 */
	unsigned retransmit_mult;  /* 4 */
	unsigned sync_periods;     /* 10: full member-table push-pull */
	unsigned registry_pull_periods; /* 1: registry digest pull */
	unsigned mtu;              /* 1400 (max) */
	unsigned dead_reap_ms;     /* forget dead/left signals after; 1 h (servers
				      are never forgotten: they own data) */
	int stay_left;             /* told by others that it left (an operator
				      removed it while it was down), it stays
				      left and reports itself 'left' to on_member
				      instead of refuting: a server whose data is
				      stale must not come back */
	unsigned max_members;      /* 10000: bounded memory; more are refused */
	unsigned registry_max_entries; /* 1000000 (~200 bytes each) */
};

/* Copies what it needs from cfg.  Returns 0 and *out, or BM_EINVAL (bad
 * id/address/role), BM_ENOMEM, BM_ECRYPTO. */
int bm_swim_new(struct bm_swim **out, const struct bm_swim_config *cfg);
void bm_swim_free(struct bm_swim *s);

/* Contact a seed (its gossip address): sends our table and asks for the
 * seed's; retried every period until some member answers.  May be called
 * again (e.g. bimipctl cluster join).  Returns 0 or BM_EINVAL. */
int bm_swim_join(struct bm_swim *s, const char *seed_addr, uint64_t now_ms);
/* Graceful leave: marks self 'left' and tells up to 2 * indirect_k + 1
 * members at once; keep ticking for a period or two so it spreads. */
void bm_swim_leave(struct bm_swim *s, uint64_t now_ms);

/* 1 once another member's table has reached us (by a join or a sync):
 * from then on this node knows the cluster it is in. */
int bm_swim_heard(const struct bm_swim *s);

/* Operator removal of a member that is dead for good (bimipctl cluster
 * remove): marks it 'left' at its incarnation and spreads that, so it
 * leaves the owner set everywhere.  Returns 0, BM_ENOENT (unknown id) or
 * BM_ESTATE (self, or not dead: a live member leaves by itself). */
int bm_swim_remove(struct bm_swim *s, const char *id, uint64_t now_ms);

/* Drive the protocol. */
void bm_swim_tick(struct bm_swim *s, uint64_t now_ms);
/* One received datagram from address from (the sender's source address).
 * Returns 0, or the BM_E* the packet was dropped for (already counted
 * and logged at debug level). */
int bm_swim_recv(struct bm_swim *s, uint64_t now_ms, const char *from,
		 const uint8_t *buf, size_t len);
/* Earliest time tick() has something to do (for an event loop timer). */
uint64_t bm_swim_next_deadline(const struct bm_swim *s);

/* Queries. */
unsigned bm_swim_count(const struct bm_swim *s, enum bm_swim_state state);
unsigned bm_swim_size(const struct bm_swim *s); /* all known, self included */
/* Copies member id's view into *m; returns 0 or BM_ENOENT. */
int bm_swim_member_get(const struct bm_swim *s, const char *id,
		       struct bm_swim_member *m);
/* Calls fn for every known member (self included, event argument 0). */
void bm_swim_foreach(const struct bm_swim *s, bm_swim_member_fn *fn, void *ud);
const char *bm_swim_self_id(const struct bm_swim *s);
uint32_t bm_swim_incarnation(const struct bm_swim *s);
/* Protocol periods run so far. */
uint64_t bm_swim_periods(const struct bm_swim *s);
/* The registry this node answers from (owned by s). */
struct bm_registry *bm_swim_registry(struct bm_swim *s);

struct bm_swim_stats {
	uint64_t sent, send_failed, recv;
	uint64_t bad_auth, bad_decode, bad_other;
	uint64_t probes, probes_failed, ping_reqs, suspects, deads, refutes;
	uint64_t syncs;
	uint64_t refused;          /* new members refused: table full */
};
void bm_swim_stats(const struct bm_swim *s, struct bm_swim_stats *st);

#endif
