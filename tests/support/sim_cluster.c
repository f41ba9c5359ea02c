#include "sim_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	struct sim_cluster *c = ud;
	unsigned long i;

	if (ev <= BM_SWIM_EV_UPDATED)
		c->events[ev]++;
	if (ev == BM_SWIM_EV_DEAD && strncmp(m->id, "node-", 5) == 0) {
		i = strtoul(m->id + 5, NULL, 10);
		if (i < c->n && !sim_net_is_down(c->net, (unsigned)i))
			c->false_deads++;
	}
}

struct sim_cluster *sim_cluster_new(unsigned n, unsigned nservers, uint64_t seed,
				    const struct bm_swim_config *tmpl)
{
	struct sim_cluster *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->n = n;
	c->net = sim_net_new(n, seed);
	c->node = calloc(n, sizeof(*c->node));
	if (!c->net || !c->node)
		goto out_free;
	c->period_ms = tmpl->period_ms ? tmpl->period_ms : 1000;
	c->step_ms = c->period_ms / 20 ? c->period_ms / 20 : 1;
	for (unsigned i = 0; i < n; i++) {
		struct bm_swim_config cfg = *tmpl;
		char id[32];

		snprintf(id, sizeof(id), "node-%u", i);
		cfg.id = id;
		cfg.addr = sim_net_addr(c->net, i);
		cfg.role = i < nservers ? BM_SWIM_ROLE_SERVER : BM_SWIM_ROLE_SIGNAL;
		cfg.send = sim_net_send;
		cfg.send_ctx = sim_net_port(c->net, i);
		cfg.seed = seed * 7919 + i;
		cfg.registry_epoch = 1000 + i;
		if (!cfg.on_member) {
			cfg.on_member = on_member;
			cfg.ud = c;
		}
		if (bm_swim_new(&c->node[i], &cfg) != 0)
			goto out_free;
	}
	return c;
out_free:
	sim_cluster_free(c);
	return NULL;
}

void sim_cluster_free(struct sim_cluster *c)
{
	if (!c)
		return;
	for (unsigned i = 0; c->node && i < c->n; i++)
		bm_swim_free(c->node[i]);
	free(c->node);
	sim_net_free(c->net);
	free(c);
}

void sim_cluster_join_all(struct sim_cluster *c, unsigned seed)
{
	for (unsigned i = 0; i < c->n; i++)
		if (i != seed)
			bm_swim_join(c->node[i], sim_net_addr(c->net, seed), c->now);
}

static void deliver(void *ud, unsigned to, const char *from, const uint8_t *buf,
		    size_t len, uint64_t now)
{
	struct sim_cluster *c = ud;

	bm_swim_recv(c->node[to], now, from, buf, len);
}

void sim_cluster_step(struct sim_cluster *c)
{
	c->now += c->step_ms;
	sim_net_run(c->net, c->now, deliver, c);
	for (unsigned i = 0; i < c->n; i++)
		if (!sim_net_is_down(c->net, i))
			bm_swim_tick(c->node[i], c->now);
}

int sim_cluster_run_until(struct sim_cluster *c, int (*pred)(struct sim_cluster *, void *),
			  void *arg, unsigned max_periods)
{
	unsigned steps = c->period_ms / c->step_ms;

	for (unsigned p = 0; p <= max_periods; p++) {
		if (pred(c, arg))
			return (int)p;
		for (unsigned s = 0; s < steps; s++)
			sim_cluster_step(c);
	}
	return -1;
}

void sim_cluster_crash(struct sim_cluster *c, unsigned i)
{
	sim_net_set_down(c->net, i, 1);
}

int sim_cluster_up(const struct sim_cluster *c, unsigned i)
{
	return !sim_net_is_down(c->net, i);
}

int sim_cluster_all_alive(struct sim_cluster *c, void *arg)
{
	unsigned want = *(unsigned *)arg;

	for (unsigned i = 0; i < c->n; i++) {
		if (!sim_cluster_up(c, i))
			continue;
		if (bm_swim_count(c->node[i], BM_SWIM_ALIVE) != want ||
		    bm_swim_count(c->node[i], BM_SWIM_SUSPECT) != 0)
			return 0;
	}
	return 1;
}

int sim_cluster_all_live(struct sim_cluster *c, void *arg)
{
	unsigned want = *(unsigned *)arg;

	for (unsigned i = 0; i < c->n; i++) {
		if (!sim_cluster_up(c, i))
			continue;
		if (bm_swim_count(c->node[i], BM_SWIM_ALIVE) +
		    bm_swim_count(c->node[i], BM_SWIM_SUSPECT) != want ||
		    bm_swim_size(c->node[i]) != want)
			return 0;
	}
	return 1;
}

int sim_cluster_all_see(struct sim_cluster *c, void *arg)
{
	const struct sim_state_pred *p = arg;

	for (unsigned i = 0; i < c->n; i++) {
		struct bm_swim_member m;
		if (!sim_cluster_up(c, i))
			continue;
		if (bm_swim_member_get(c->node[i], p->id, &m) != 0 || m.self)
			continue;
		if (m.state != p->state)
			return 0;
	}
	return 1;
}
