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

#include "bm_config.h"
#include "bm_swim.h"

struct event_base;
struct bm_cluster;
struct bm_admin_req;

/* The "cluster.*" configuration keys both daemons share (embedded in their
 * config structs; BM_CLUSTER_CONFIG_KEYS adds the table rows). */
struct bm_cluster_conf {
	char bind[64];
	char advertise[160];
	char seeds[8][160];
	char key[129];
	int64_t period_ms;
	int stay_left;         /* not a config key: set by the daemon (bm_swim_config) */
};

#define BM_CLUSTER_CONFIG_KEYS(type, member) \
	{ "cluster.bind", BM_CFG_STRING, BM_CFG_FIELD(type, member.bind), .def = "", \
	  .help = "gossip UDP host:port (empty = standalone, no gossip)" }, \
	{ "cluster.advertise", BM_CFG_STRING, BM_CFG_FIELD(type, member.advertise), \
	  .def = "", .help = "gossip address peers use (empty = cluster.bind with its " \
	  "bound port)" }, \
	{ "cluster.seeds", BM_CFG_LIST, BM_CFG_LIST_FIELD(type, member.seeds), .def = "", \
	  .list_max = 8, .help = "gossip addresses to join through at start" }, \
	{ "cluster.key", BM_CFG_STRING, BM_CFG_FIELD(type, member.key), .def = "", \
	  .secret = 1, .help = "shared secret that authenticates gossip (HMAC-SHA256)" }, \
	{ "cluster.period", BM_CFG_DURATION, BM_CFG_FIELD(type, member.period_ms), \
	  .def = "1s", .min = 50, .max = 60000, .help = "gossip protocol period" }

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
	int stay_left;                  /* see bm_swim_config */
	bm_swim_member_fn *on_member;   /* may be NULL */
	void *ud;
};

/* Bind, start gossiping on base and join the seeds.  Returns 0 and *out,
 * or BM_ECONFIG (bad address, logged), BM_ESYS, BM_ENOMEM. */
int bm_cluster_start(struct bm_cluster **out, struct event_base *base,
		     const struct bm_cluster_opts *o);
/* bm_cluster_start from the shared configuration; *out stays NULL (and 0 is
 * returned) when conf->bind is empty.  Member changes are logged, then
 * passed to on_member (may be NULL). */
int bm_cluster_start_conf(struct bm_cluster **out, struct event_base *base,
			  const struct bm_cluster_conf *conf, const char *id,
			  enum bm_swim_role role, const char *zmq, const char *admin,
			  bm_swim_member_fn *on_member, void *ud);
/* The admin address other nodes and operators should use: listen's host
 * (listen.admin) with the bound port; when listen binds every address
 * (0.0.0.0, [::] or empty host), the host of conf's gossip address
 * (cluster.advertise, else cluster.bind), else 127.0.0.1. */
void bm_cluster_admin_addr(const char *listen, unsigned port,
			   const struct bm_cluster_conf *conf, char *out, size_t n);
/* The admin routes GET members, POST join {"seed"}, POST leave, POST
 * remove {"id"}, for a request whose path suffix (after /v1/cluster/) names
 * them; c may be NULL (a standalone node: 409). */
void bm_cluster_admin(struct bm_cluster *c, struct bm_admin_req *req, const json_t *body);

/* 0 while a node started with seeds has not heard any member's table yet
 * (it does not know who else is in the cluster); 1 otherwise, and for a
 * node without seeds (the first of a cluster) or without a cluster. */
int bm_cluster_knows_cluster(const struct bm_cluster *c);
/* bm_swim_remove, logged. */
int bm_cluster_remove(struct bm_cluster *c, const char *id);
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
/* Register gauges bimip_cluster_members_{alive,suspect,dead,left} and
 * counters of dropped gossip packets on reg, read from *cp at each scrape
 * (*cp may be NULL: a standalone node reports zeros).  0 or BM_ENOMEM. */
struct bm_metrics;
int bm_cluster_metrics(struct bm_metrics *reg, struct bm_cluster *const *cp);

/* Members in a state. */
unsigned bm_cluster_count(const struct bm_cluster *c, enum bm_swim_state st);
const char *bm_cluster_state_name(enum bm_swim_state st);

#endif
