/*
 * bm_cluster.h - a daemon's membership node: the SWIM protocol (bm_swim.h)
 * on its UDP transport (bm_swim_udp.h), configured from the daemon's
 * "cluster.*" keys, with what the admin API needs (members as JSON, join,
 * leave).  bimip-server and bimip-signal embed one each.
 */
#ifndef BM_CLUSTER_H
#define BM_CLUSTER_H

#include <jansson.h>
#include <stddef.h>

#include "bm_swim.h"

struct event_base;
struct bm_cluster;

struct bm_cluster_opts {
	const char *id;                 /* node id */
	enum bm_swim_role role;
	const char *bind;               /* "host:port" to bind; port 0 = any */
	const char *advertise;          /* address peers use; NULL/"" = bind's */
	const char *const *seeds;       /* gossip addresses to join through */
	size_t n_seeds;
	const char *key;                /* cluster key (text); NULL/"" = none */
	const char *zmq;                /* advertised ZeroMQ endpoint, or NULL */
	const char *admin;              /* advertised admin address, or NULL */
	unsigned period_ms;             /* protocol period; 0 = 1000 */
	bm_swim_member_fn *on_member;   /* may be NULL */
	void *ud;
};

/* Bind, start gossiping on base and join the seeds.  Returns 0 and *out,
 * or BM_ECONFIG (bad address, logged), BM_ESYS, BM_ENOMEM. */
int bm_cluster_start(struct bm_cluster **out, struct event_base *base,
		     const struct bm_cluster_opts *o);
/* Join (again) through seed.  Returns 0 or BM_EINVAL. */
int bm_cluster_join(struct bm_cluster *c, const char *seed);
/* Graceful leave: tell the others now; keep the loop running a little. */
void bm_cluster_leave(struct bm_cluster *c);
/* Stop and free (NULL is fine). */
void bm_cluster_free(struct bm_cluster *c);

/* The address peers reach this node at. */
const char *bm_cluster_addr(const struct bm_cluster *c);
struct bm_swim *bm_cluster_swim(struct bm_cluster *c);
/* {"self":id,"members":[{"id","role","state","incarnation","addr","zmq",
 * "admin"},...]} (new reference). */
json_t *bm_cluster_members_json(const struct bm_cluster *c);
/* Members in a state. */
unsigned bm_cluster_count(const struct bm_cluster *c, enum bm_swim_state st);
const char *bm_cluster_state_name(enum bm_swim_state st);

#endif
