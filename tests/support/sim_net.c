#include "sim_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pkt {
	uint64_t t, seq;
	unsigned from, to;
	size_t len;
	uint8_t *data;
};

struct sim_net {
	unsigned n;
	uint64_t rng, now, seq;
	double loss;
	sim_link_loss_fn *link_loss;
	void *link_ud;
	unsigned dmin, dmax;
	int partitioned;
	unsigned *group;
	uint8_t *down;
	struct sim_port *ports;
	char (*addr)[16];
	struct pkt *heap;
	size_t nheap, cap;
	struct sim_net_stats st;
};

static uint64_t rnd(struct sim_net *net)
{
	uint64_t z = (net->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double rnd01(struct sim_net *net)
{
	return (double)(rnd(net) >> 11) / (double)(1ULL << 53);
}

struct sim_net *sim_net_new(unsigned n, uint64_t seed)
{
	struct sim_net *net = calloc(1, sizeof(*net));

	if (!net)
		return NULL;
	net->n = n;
	net->rng = seed;
	net->dmin = 1;
	net->dmax = 10;
	net->group = calloc(n, sizeof(*net->group));
	net->down = calloc(n, 1);
	net->ports = calloc(n, sizeof(*net->ports));
	net->addr = calloc(n, sizeof(*net->addr));
	if (!net->group || !net->down || !net->ports || !net->addr) {
		sim_net_free(net);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++) {
		net->ports[i].net = net;
		net->ports[i].idx = i;
		snprintf(net->addr[i], sizeof(net->addr[i]), "s%u", i);
	}
	return net;
}

void sim_net_free(struct sim_net *net)
{
	if (!net)
		return;
	for (size_t i = 0; i < net->nheap; i++)
		free(net->heap[i].data);
	free(net->heap);
	free(net->group);
	free(net->down);
	free(net->ports);
	free(net->addr);
	free(net);
}

void sim_net_set_loss(struct sim_net *net, double p) { net->loss = p; }
void sim_net_set_delay(struct sim_net *net, unsigned lo, unsigned hi)
{
	net->dmin = lo;
	net->dmax = hi < lo ? lo : hi;
}
void sim_net_set_link_loss(struct sim_net *net, sim_link_loss_fn *fn, void *ud)
{
	net->link_loss = fn;
	net->link_ud = ud;
}
void sim_net_set_group(struct sim_net *net, unsigned node, unsigned g) { net->group[node] = g; }
void sim_net_partition(struct sim_net *net, int on) { net->partitioned = on; }
void sim_net_set_down(struct sim_net *net, unsigned node, int d) { net->down[node] = (uint8_t)!!d; }
int sim_net_is_down(const struct sim_net *net, unsigned node) { return net->down[node]; }
struct sim_port *sim_net_port(struct sim_net *net, unsigned node) { return &net->ports[node]; }
const char *sim_net_addr(const struct sim_net *net, unsigned node) { return net->addr[node]; }
uint64_t sim_net_now(const struct sim_net *net) { return net->now; }

void sim_net_stats(const struct sim_net *net, struct sim_net_stats *st)
{
	*st = net->st;
}

static int earlier(const struct pkt *a, const struct pkt *b)
{
	return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static void heap_push(struct sim_net *net, struct pkt p)
{
	size_t i;

	if (net->nheap == net->cap) {
		size_t cap = net->cap ? net->cap * 2 : 1024;
		struct pkt *h = realloc(net->heap, cap * sizeof(*h));
		if (!h) {
			free(p.data);
			return;
		}
		net->heap = h;
		net->cap = cap;
	}
	i = net->nheap++;
	while (i > 0 && earlier(&p, &net->heap[(i - 1) / 2])) {
		net->heap[i] = net->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	net->heap[i] = p;
}

static struct pkt heap_pop(struct sim_net *net)
{
	struct pkt top = net->heap[0], last = net->heap[--net->nheap];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= net->nheap)
			break;
		if (c + 1 < net->nheap && earlier(&net->heap[c + 1], &net->heap[c]))
			c++;
		if (!earlier(&net->heap[c], &last))
			break;
		net->heap[i] = net->heap[c];
		i = c;
	}
	if (net->nheap)
		net->heap[i] = last;
	return top;
}

int sim_net_send(void *ctx, const char *addr, const uint8_t *buf, size_t len)
{
	struct sim_port *port = ctx;
	struct sim_net *net = port->net;
	struct pkt p;
	unsigned long to;
	char *end;
	double loss;

	if (!addr || addr[0] != 's')
		return -1;
	to = strtoul(addr + 1, &end, 10);
	if (*end || end == addr + 1 || to >= net->n)
		return -1;
	net->st.sent++;
	net->st.bytes += len;
	loss = net->link_loss ? net->link_loss(net->link_ud, port->idx, (unsigned)to) : net->loss;
	if (net->down[port->idx] || net->down[to] ||
	    (net->partitioned && net->group[port->idx] != net->group[to]) ||
	    (loss > 0 && rnd01(net) < loss)) {
		net->st.lost++;
		return 0;
	}
	p.t = net->now + net->dmin + (net->dmax > net->dmin ? rnd(net) % (net->dmax - net->dmin + 1) : 0);
	p.seq = net->seq++;
	p.from = port->idx;
	p.to = (unsigned)to;
	p.len = len;
	p.data = malloc(len ? len : 1);
	if (!p.data)
		return -1;
	memcpy(p.data, buf, len);
	heap_push(net, p);
	return 0;
}

unsigned sim_net_run(struct sim_net *net, uint64_t until, sim_deliver_fn *fn, void *ud)
{
	unsigned n = 0;

	while (net->nheap && net->heap[0].t <= until) {
		struct pkt p = heap_pop(net);
		net->now = p.t;
		/* a node that went down meanwhile, or a partition that started
		 * while the packet was in flight, still loses it */
		if (!net->down[p.to] && !(net->partitioned && net->group[p.from] != net->group[p.to])) {
			net->st.delivered++;
			n++;
			fn(ud, p.to, net->addr[p.from], p.data, p.len, p.t);
		} else {
			net->st.lost++;
		}
		free(p.data);
	}
	if (until > net->now)
		net->now = until;
	return n;
}
