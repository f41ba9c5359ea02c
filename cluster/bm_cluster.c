#include "bm_cluster.h"

#include "bm_admin.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_swim_udp.h"
#include "bm_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m);

struct bm_cluster {
	struct bm_swim *swim;
	struct bm_swim_udp *udp;
	char addr[160];
	int seeded;                     /* started with seeds other than itself */
	bm_swim_member_fn *on_member;   /* the embedder's, after logging */
	void *ud;
};

const char *bm_cluster_state_name(enum bm_swim_state st)
{
	static const char *const n[] = { "alive", "suspect", "dead", "left" };
	return (unsigned)st < 4 ? n[st] : "?";
}

int bm_cluster_start(struct bm_cluster **out, struct event_base *base,
		     const struct bm_cluster_opts *o)
{
	struct bm_cluster *c = calloc(1, sizeof(*c));
	struct bm_swim_config sc;
	char host[128];
	const char *colon;
	int rc;

	*out = NULL;
	if (!c)
		return BM_ENOMEM;
	rc = bm_swim_udp_open(&c->udp, base, o->bind);
	if (rc) {
		bm_err("cluster", "cannot bind gossip to '%s': %s", o->bind, bm_strerror(rc));
		goto fail;
	}
	if (o->advertise && *o->advertise) {
		snprintf(c->addr, sizeof(c->addr), "%s", o->advertise);
	} else {
		colon = strrchr(o->bind, ':');
		snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - o->bind) : 0, o->bind);
		if (!strcmp(host, "0.0.0.0") || !host[0]) {
			bm_err("cluster", "gossip bound to '%s': set cluster.advertise to the "
			       "address peers should use", o->bind);
			rc = BM_ECONFIG;
			goto fail;
		}
		snprintf(c->addr, sizeof(c->addr), "%s:%u", host, bm_swim_udp_port(c->udp));
	}
	memset(&sc, 0, sizeof(sc));
	sc.id = o->id;
	sc.role = o->role;
	sc.addr = c->addr;
	sc.zmq = o->zmq;
	sc.admin = o->admin;
	sc.key = (const uint8_t *)(o->key ? o->key : "");
	sc.key_len = o->key ? strlen(o->key) : 0;
	sc.registry_epoch = (uint64_t)bm_wall_ms();
	sc.seed = bm_mono_ns() ^ (uint64_t)(uintptr_t)c;
	sc.send = bm_swim_udp_send;
	sc.send_ctx = c->udp;
	sc.on_member = o->on_member;
	sc.ud = o->on_member == log_member ? c : o->ud;
	sc.period_ms = o->period_ms;
	sc.stay_left = o->stay_left;
	if (!sc.key_len)
		bm_warn("cluster", "no cluster.key: gossip is not authenticated");
	rc = bm_swim_new(&c->swim, &sc);
	if (rc) {
		bm_err("cluster", "cannot start gossip: %s", bm_strerror(rc));
		goto fail;
	}
	rc = bm_swim_udp_start(c->udp, c->swim, 50);
	if (rc)
		goto fail;
	for (size_t i = 0; i < o->n_seeds; i++)
		if (o->seeds[i] && *o->seeds[i] && strcmp(o->seeds[i], c->addr)) {
			bm_swim_join(c->swim, o->seeds[i], bm_mono_ms());
			c->seeded = 1;
		}
	bm_info("cluster", "gossip on %s as '%s' (%zu seeds)", c->addr, o->id, o->n_seeds);
	*out = c;
	return 0;
fail:
	bm_cluster_free(c);
	return rc;
}

int bm_cluster_join(struct bm_cluster *c, const char *seed)
{
	bm_info("cluster", "joining through '%s'", seed);
	return bm_swim_join(c->swim, seed, bm_mono_ms());
}

int bm_cluster_knows_cluster(const struct bm_cluster *c)
{
	return !c || !c->seeded || bm_swim_heard(c->swim);
}

int bm_cluster_remove(struct bm_cluster *c, const char *id)
{
	int rc = bm_swim_remove(c->swim, id, bm_mono_ms());

	if (!rc)
		bm_warn("cluster", "member '%s' removed by an operator", id);
	return rc;
}

void bm_cluster_leave(struct bm_cluster *c)
{
	if (!c)
		return;
	bm_info("cluster", "leaving the cluster");
	bm_swim_leave(c->swim, bm_mono_ms());
}

void bm_cluster_free(struct bm_cluster *c)
{
	if (!c)
		return;
	if (c->udp)
		bm_swim_udp_close(c->udp);
	bm_swim_free(c->swim);
	free(c);
}

const char *bm_cluster_addr(const struct bm_cluster *c)
{
	return c->addr;
}

struct bm_swim *bm_cluster_swim(struct bm_cluster *c)
{
	return c->swim;
}

unsigned bm_cluster_count(const struct bm_cluster *c, enum bm_swim_state st)
{
	return bm_swim_count(c->swim, st);
}

static void add_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	json_array_append_new(ud, json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:s, s:b}",
		"id", m->id, "role", m->role == BM_SWIM_ROLE_SERVER ? "server" : "signal",
		"state", bm_cluster_state_name(m->state), "incarnation", (int)m->incarnation,
		"addr", m->addr ? m->addr : "", "zmq", m->zmq ? m->zmq : "",
		"admin", m->admin ? m->admin : "", "self", m->self));
}

static void log_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	static const char *const names[] = { "?", "joined", "suspect", "dead", "left",
					     "alive again", "updated" };
	struct bm_cluster *c = ud;

	if (ev != BM_SWIM_EV_UPDATED)
		bm_info("cluster", "member '%s' (%s, %s) %s", m->id,
			m->role == BM_SWIM_ROLE_SERVER ? "server" : "signal", m->addr,
			(unsigned)ev < 7 ? names[ev] : "?");
	if (c->on_member)
		c->on_member(c->ud, ev, m);
}

static int host_of(const char *addr, char *out, size_t n)
{
	const char *colon = addr ? strrchr(addr, ':') : NULL;
	size_t len = colon ? (size_t)(colon - addr) : 0;

	if (len >= n)
		return 0;
	memcpy(out, addr, len);
	out[len] = 0;
	return len && strcmp(out, "0.0.0.0") && strcmp(out, "[::]") && strcmp(out, "*");
}

void bm_cluster_admin_addr(const char *listen, unsigned port,
			   const struct bm_cluster_conf *conf, char *out, size_t n)
{
	char host[160];

	if (!host_of(listen, host, sizeof(host)) &&
	    !(conf && host_of(conf->advertise, host, sizeof(host))) &&
	    !(conf && host_of(conf->bind, host, sizeof(host))))
		snprintf(host, sizeof(host), "127.0.0.1");
	snprintf(out, n, "%s:%u", host, port);
}

int bm_cluster_start_conf(struct bm_cluster **out, struct event_base *base,
			  const struct bm_cluster_conf *conf, const char *id,
			  enum bm_swim_role role, const char *zmq, const char *admin,
			  bm_swim_member_fn *on_member, void *ud)
{
	const char *seeds[8];
	struct bm_cluster_opts o;
	size_t n = 0;
	int rc;

	*out = NULL;
	if (!conf->bind[0])
		return 0;
	for (int i = 0; i < 8 && conf->seeds[i][0]; i++)
		seeds[n++] = conf->seeds[i];
	memset(&o, 0, sizeof(o));
	o.id = id;
	o.role = role;
	o.bind = conf->bind;
	o.advertise = conf->advertise;
	o.seeds = seeds;
	o.n_seeds = n;
	o.key = conf->key;
	o.zmq = zmq;
	o.admin = admin;
	o.period_ms = (unsigned)conf->period_ms;
	o.stay_left = conf->stay_left;
	o.on_member = log_member;
	rc = bm_cluster_start(out, base, &o);
	if (!rc) {
		(*out)->on_member = on_member;
		(*out)->ud = ud;
	}
	return rc;
}

void bm_cluster_admin(struct bm_cluster *c, struct bm_admin_req *req, const json_t *body)
{
	const char *what = bm_admin_req_suffix(req);
	const char *seed = json_string_value(json_object_get(body, "seed"));
	unsigned method = bm_admin_req_method(req);

	if (!c)
		bm_admin_reply_error(req, 409, "this node is standalone: set cluster.bind to "
				     "gossip with other nodes");
	else if (!strcmp(what, "members") && method == BM_ADMIN_GET)
		bm_admin_reply_json(req, 200, bm_cluster_members_json(c));
	else if (!strcmp(what, "join") && method == BM_ADMIN_POST) {
		if (!seed || bm_cluster_join(c, seed))
			bm_admin_reply_error(req, 400, "expected {\"seed\":\"host:port\"} with a "
					     "numeric gossip address");
		else
			bm_admin_reply_json(req, 200, json_pack("{s:s}", "joining", seed));
	} else if (!strcmp(what, "leave") && method == BM_ADMIN_POST) {
		bm_cluster_leave(c);
		bm_admin_reply_json(req, 200, json_pack("{s:b}", "left", 1));
	} else if (!strcmp(what, "remove") && method == BM_ADMIN_POST) {
		const char *id = json_string_value(json_object_get(body, "id"));
		int rc = id ? bm_cluster_remove(c, id) : BM_EINVAL;

		if (!id)
			bm_admin_reply_error(req, 400, "expected {\"id\":\"node id\"}");
		else if (rc == BM_ENOENT)
			bm_admin_reply_error(req, 404, "no member '%s'", id);
		else if (rc)
			bm_admin_reply_error(req, 409, "member '%s' is not dead: only a dead "
					     "member can be removed (a live one leaves with "
					     "`cluster leave` on itself)", id);
		else
			bm_admin_reply_json(req, 200, json_pack("{s:s}", "removed", id));
	} else {
		bm_admin_reply_error(req, 404, "expected GET members, POST join, POST leave or "
				     "POST remove");
	}
}

json_t *bm_cluster_members_json(const struct bm_cluster *c)
{
	json_t *a = json_array();

	bm_swim_foreach(c->swim, add_member, a);
	return json_pack("{s:s, s:s, s:o}", "self", bm_swim_self_id(c->swim), "addr",
			 c->addr, "members", a);
}

/* --- metrics ------------------------------------------------------------------ */

struct gauge_arg {
	struct bm_cluster *const *cp;
	int what;                       /* a state, or -1/-2 for the drop counters */
};

static double gauge(void *ud)
{
	struct gauge_arg *g = ud;
	struct bm_swim_stats st;

	if (!*g->cp)
		return 0;
	if (g->what >= 0)
		return bm_swim_count((*g->cp)->swim, (enum bm_swim_state)g->what);
	bm_swim_stats((*g->cp)->swim, &st);
	return (double)(g->what == -1 ? st.bad_auth : st.bad_decode);
}

int bm_cluster_metrics(struct bm_metrics *reg, struct bm_cluster *const *cp)
{
	static const struct { const char *name, *help; int what; } rows[] = {
		{ "bimip_cluster_members_alive", "Cluster members alive.", BM_SWIM_ALIVE },
		{ "bimip_cluster_members_suspect", "Cluster members suspected.", BM_SWIM_SUSPECT },
		{ "bimip_cluster_members_dead", "Cluster members declared dead.", BM_SWIM_DEAD },
		{ "bimip_cluster_members_left", "Cluster members that left.", BM_SWIM_LEFT },
		{ "bimip_cluster_gossip_bad_auth_total", "Gossip packets refused: wrong key.", -1 },
		{ "bimip_cluster_gossip_bad_decode_total", "Gossip packets refused: malformed.", -2 },
	};
	/* One set per process: the daemons embed one cluster node each. */
	static struct gauge_arg args[sizeof(rows) / sizeof(rows[0])];

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		args[i].cp = cp;
		args[i].what = rows[i].what;
		if (bm_metrics_gauge_cb(reg, rows[i].name, rows[i].help, gauge, &args[i]))
			return BM_ENOMEM;
	}
	return 0;
}
