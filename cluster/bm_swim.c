/*
 * bm_swim.c - SWIM membership logic: probing, suspicion, dissemination,
 * anti-entropy, join and leave.  The wire format is bm_swim_proto.c; the
 * sockets are bm_swim_udp.c.  Nothing here reads a clock or a socket.
 *
 * Precedence of updates about one member (SWIM section 4.2, with 'left'):
 * a record wins over the one we hold when its incarnation is higher, or equal
 * with a higher state (alive < suspect < dead < left).  Only the member itself
 * raises its incarnation: when it hears it is suspect/dead it refutes with
 * incarnation + 1.  A node that was declared dead (e.g. after a partition)
 * comes back the same way, which is why anti-entropy sometimes syncs with a
 * dead member: that member then learns it was declared dead and refutes.
 *
 * Per-node state is O(members): one slot per member (an id-indexed array),
 * a probe list, pending updates bucketed by sends left, a suspect list; no timer per
 * member, the suspect list is scanned only when its earliest deadline passes.
 */
#include "bm_swim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bm_err.h"
#include "bm_idmap.h"
#include "bm_log.h"
#include "bm_registry.h"

#define RELAYS 16
#define REG_ANSWER_PKTS 32 /* ~1,000 entries per digest answered */
#define REG_ROOM 400 /* packet bytes kept for registry piggyback if any */
#define URGENT 128   /* bucket offset of suspicions, deaths, refutations */
#define CONF_MAX 4   /* independent suspicions that shorten the timeout */
#define SUSP_MAX_MULT 6 /* a lone suspicion waits 6x the minimum timeout */
#define SELF_SLOT (-1)
#define NO_SLOT (-2)

struct member {
	char *id;              /* owned block: id, addr, zmq, admin */
	const char *addr, *zmq, *admin;
	uint32_t inc;
	uint8_t idlen;
	uint8_t role, state;
	uint8_t tx_left;       /* piggyback sends left */
	uint8_t bucket;        /* tx_left, + URGENT for news that must not wait */
	uint8_t in_use, queued;
	int32_t bprev, bnext;  /* bucket list; bnext also chains free slots */
	uint64_t since_ms;     /* last state change */
	uint64_t deadline;     /* suspect -> dead */
	/* Lifeguard suspicion: who suspected first (slot, SELF_SLOT, or
	 * NO_SLOT), and the distinct confirmers heard since (by id hash) */
	int32_t suspector;
	uint8_t nconf, conf_k;
	uint64_t conf[CONF_MAX];
};

struct relay {
	uint32_t seq, orig_seq;
	uint64_t expires;
	char from[BM_SWIM_ADDR_MAX + 1];
	char target[BM_SWIM_ID_MAX + 1];
};

struct bm_swim {
	/* config */
	bm_swim_send_fn *send;
	void *send_ctx;
	bm_swim_member_fn *on_member;
	void *ud;
	unsigned period, probe_timeout, k, susp_mult, rt_mult, sync_periods, mtu;
	unsigned pull_periods, max_members;
	uint64_t reap_ms;

	struct bm_swim_auth auth;
	uint64_t rng;

	struct member *m;
	unsigned nm, mcap;
	int32_t mfree;
	struct bm_idmap map;
	int32_t self;
	unsigned count[4];

	int32_t *probe;
	unsigned nprobe, probe_cap, probe_pos;
	/* pending updates bucketed by sends left: freshest go first */
	int32_t bhead[256], btail[256];
	unsigned npending;
	int32_t *susp;
	unsigned nsusp, susp_cap;
	uint64_t next_susp;

	struct {
		int active, indirect;
		int32_t target;
		uint32_t seq;
		uint64_t start;
	} pr;
	uint32_t seq;
	uint64_t next_probe, next_sync, periods, nsync;
	int started, left;
	int stay_left;

	char join_addr[BM_SWIM_ADDR_MAX + 1];
	int joining, join_heard;
	int table_heard;               /* some member's table came back, ever */
	unsigned join_tries;
	uint64_t join_next;

	struct relay relay[RELAYS];
	unsigned relay_pos;

	struct bm_swim_pkt *pkt;
	struct bm_swim_enc enc;
	struct bm_registry *reg;
	struct bm_swim_stats st;
};

/* --- small helpers --------------------------------------------------------- */

static uint64_t rnd(struct bm_swim *s)
{
	/* splitmix64 */
	uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static unsigned rnd_below(struct bm_swim *s, unsigned n)
{
	return n ? (unsigned)(rnd(s) % n) : 0;
}


static unsigned live_count(const struct bm_swim *s)
{
	return s->count[BM_SWIM_ALIVE] + s->count[BM_SWIM_SUSPECT];
}

static unsigned retransmit_limit(const struct bm_swim *s)
{
	unsigned n = live_count(s);
	unsigned l = s->rt_mult * (unsigned)ceil(log10((double)n + 1.0));

	return l < 1 ? 1 : l > URGENT - 1 ? URGENT - 1 : l;
}

static uint64_t suspicion_timeout(const struct bm_swim *s)
{
	double n = (double)live_count(s);
	double f = n > 10 ? log10(n) : 1.0;

	return (uint64_t)(s->susp_mult * f * s->period);
}

/* Lifeguard (Dadgar et al. 2018) as memberlist does it: a suspicion starts
 * with SUSP_MAX_MULT * min and shrinks towards min as k independent members
 * confirm it: max - (max - min) * log(c + 1) / log(k + 1). */
static unsigned confirmations_wanted(const struct bm_swim *s)
{
	int k = (int)s->susp_mult - 2, n = (int)live_count(s) - 2;

	if (n < k)
		k = n;
	return k < 0 ? 0 : k > CONF_MAX ? CONF_MAX : (unsigned)k;
}

static uint64_t suspicion_deadline(const struct bm_swim *s, const struct member *m)
{
	uint64_t min = suspicion_timeout(s), max = SUSP_MAX_MULT * min;
	double t;

	if (m->conf_k == 0 || m->nconf >= m->conf_k)
		return m->since_ms + min;
	t = (double)max - (double)(max - min) * log((double)m->nconf + 1) /
			  log((double)m->conf_k + 1);
	return m->since_ms + (t < (double)min ? min : (uint64_t)t);
}

static void view(const struct bm_swim *s, int32_t i, struct bm_swim_member *v)
{
	const struct member *m = &s->m[i];

	v->id = m->id;
	v->role = m->role;
	v->state = m->state;
	v->incarnation = m->inc;
	v->addr = m->addr;
	v->zmq = m->zmq;
	v->admin = m->admin;
	v->self = i == s->self;
}

static void to_rec(const struct bm_swim *s, const struct member *m, struct bm_swim_rec *r)
{
	r->from.p = "";
	r->from.len = 0;
	if (m->state == BM_SWIM_SUSPECT) {
		int32_t w = m->suspector == SELF_SLOT ? s->self : m->suspector;
		if (w >= 0 && s->m[w].in_use) {
			r->from.p = s->m[w].id;
			r->from.len = s->m[w].idlen;
		}
	}
	r->id.p = m->id;
	r->id.len = m->idlen;
	r->addr = bm_swim_str_of(m->addr);
	r->zmq = bm_swim_str_of(m->zmq);
	r->admin = bm_swim_str_of(m->admin);
	r->incarnation = m->inc;
	r->role = m->role;
	r->state = m->state;
}

static const char *state_name(unsigned st)
{
	static const char *const n[] = { "alive", "suspect", "dead", "left" };

	return st < 4 ? n[st] : "?";
}

/* --- member table ---------------------------------------------------------- */

/* Sets a member's strings from views; returns 0 or BM_ENOMEM. */
static int set_strings(struct member *m, struct bm_swim_str id, struct bm_swim_str addr,
		       struct bm_swim_str zmq, struct bm_swim_str admin)
{
	size_t n = (size_t)id.len + addr.len + zmq.len + admin.len + 4;
	char *b = malloc(n), *p;

	if (!b)
		return BM_ENOMEM;
	p = b;
	memcpy(p, id.p, id.len);
	p[id.len] = 0;
	p += id.len + 1;
	m->addr = p;
	memcpy(p, addr.p, addr.len);
	p[addr.len] = 0;
	p += addr.len + 1;
	m->zmq = p;
	memcpy(p, zmq.p, zmq.len);
	p[zmq.len] = 0;
	p += zmq.len + 1;
	m->admin = p;
	memcpy(p, admin.p, admin.len);
	p[admin.len] = 0;
	free(m->id);
	m->id = b;
	m->idlen = id.len;
	return 0;
}

static int addrs_differ(const struct member *m, const struct bm_swim_rec *r)
{
	return !bm_swim_str_eq(r->addr, m->addr) || !bm_swim_str_eq(r->zmq, m->zmq) ||
	       !bm_swim_str_eq(r->admin, m->admin);
}

static void pend_remove(struct bm_swim *s, int32_t i)
{
	struct member *m = &s->m[i];
	unsigned b = m->bucket;

	if (!m->queued)
		return;
	if (m->bprev >= 0)
		s->m[m->bprev].bnext = m->bnext;
	else
		s->bhead[b] = m->bnext;
	if (m->bnext >= 0)
		s->m[m->bnext].bprev = m->bprev;
	else
		s->btail[b] = m->bprev;
	m->bprev = m->bnext = -1;
	m->queued = 0;
	s->npending--;
}

static void bucket_append(struct bm_swim *s, int32_t i, unsigned left)
{
	struct member *m = &s->m[i];
	/* a join is old news soon; a suspicion the suspect has not heard of
	 * yet, a death, or a refutation is what failure detection waits for */
	int urgent = m->state != BM_SWIM_ALIVE || i == s->self || m->inc > 0;
	unsigned b = left + (urgent ? URGENT : 0);

	m->tx_left = (uint8_t)left;
	m->bucket = (uint8_t)b;
	m->bprev = s->btail[b];
	m->bnext = -1;
	if (s->btail[b] >= 0)
		s->m[s->btail[b]].bnext = i;
	else
		s->bhead[b] = i;
	s->btail[b] = i;
	m->queued = 1;
	s->npending++;
}

static void pend_add(struct bm_swim *s, int32_t i)
{
	pend_remove(s, i);
	bucket_append(s, i, retransmit_limit(s));
}

static void probe_insert(struct bm_swim *s, int32_t i)
{
	unsigned lo, j;

	if (bm_cluster_grow((void **)&s->probe, &s->probe_cap, s->nprobe + 1, sizeof(int32_t)))
		return; /* picked up at the next rebuild */
	s->probe[s->nprobe++] = i;
	/* a random position among those not yet probed this round */
	lo = s->probe_pos < s->nprobe ? s->probe_pos : s->nprobe - 1;
	j = lo + rnd_below(s, s->nprobe - lo);
	s->probe[s->nprobe - 1] = s->probe[j];
	s->probe[j] = i;
}

static void susp_add(struct bm_swim *s, int32_t i)
{
	if (bm_cluster_grow((void **)&s->susp, &s->susp_cap, s->nsusp + 1, sizeof(int32_t)) == 0)
		s->susp[s->nsusp++] = i;
	if (s->m[i].deadline < s->next_susp || s->next_susp == 0)
		s->next_susp = s->m[i].deadline;
}

static void emit(struct bm_swim *s, enum bm_swim_event ev, int32_t i)
{
	struct bm_swim_member v;

	if (!s->on_member)
		return;
	view(s, i, &v);
	s->on_member(s->ud, ev, &v);
}

static void registry_hook(struct bm_swim *s, int32_t i)
{
	const struct member *m = &s->m[i];

	bm_registry_member(s->reg, m->id, m->role, m->state);
}

static int32_t member_new(struct bm_swim *s, const struct bm_swim_rec *r, uint64_t now)
{
	struct member *m;
	int32_t i;

	if (s->mfree >= 0) {
		i = s->mfree;
		s->mfree = s->m[i].bnext;
	} else {
		if (bm_cluster_grow((void **)&s->m, &s->mcap, s->nm + 1, sizeof(*s->m)))
			return -1;
		i = (int32_t)s->nm++;
	}
	m = &s->m[i];
	memset(m, 0, sizeof(*m));
	m->bprev = m->bnext = -1;
	if (set_strings(m, r->id, r->addr, r->zmq, r->admin))
		goto out_free;
	if (bm_idmap_put(&s->map, m->id, m->idlen, i))
		goto out_strings;
	m->in_use = 1;
	m->role = r->role;
	m->state = r->state;
	m->inc = r->incarnation;
	m->since_ms = now;
	s->count[m->state]++;
	return i;
out_strings:
	free(m->id);
	m->id = NULL;
out_free:
	m->bnext = s->mfree;
	s->mfree = i;
	return -1;
}

static void member_reap(struct bm_swim *s, int32_t i)
{
	struct member *m = &s->m[i];

	pend_remove(s, i);
	bm_idmap_del(&s->map, m->id, m->idlen);
	s->count[m->state]--;
	free(m->id);
	m->id = NULL;
	m->in_use = 0;
	m->bnext = s->mfree;
	s->mfree = i;
	/* probe and suspect lists skip slots that are not in use */
}

static int32_t suspector_slot(const struct bm_swim *s, struct bm_swim_str from)
{
	int32_t i;

	if (!from.len)
		return NO_SLOT;
	i = bm_idmap_get(&s->map, from.p, from.len);
	return i == s->self ? SELF_SLOT : i < 0 ? NO_SLOT : i;
}

static void start_suspicion(struct bm_swim *s, int32_t i, struct bm_swim_str from)
{
	struct member *m = &s->m[i];

	m->suspector = suspector_slot(s, from);
	m->nconf = 0;
	m->conf_k = (uint8_t)confirmations_wanted(s);
	m->deadline = suspicion_deadline(s, m);
	susp_add(s, i);
}

/* Another member independently suspects i: shorten the timeout. */
static void confirm(struct bm_swim *s, int32_t i, struct bm_swim_str from)
{
	struct member *m = &s->m[i];
	int32_t slot = suspector_slot(s, from);
	uint64_t h;

	if (!from.len || (slot != NO_SLOT && slot == m->suspector) || m->nconf >= m->conf_k)
		return;
	h = bm_hash64(from.p, from.len);
	for (unsigned k = 0; k < m->nconf; k++)
		if (m->conf[k] == h)
			return;
	m->conf[m->nconf++] = h;
	m->deadline = suspicion_deadline(s, m);
	if (s->next_susp == 0 || m->deadline < s->next_susp)
		s->next_susp = m->deadline;
}

/* Apply one record about a member (from the wire or local). */
static void apply(struct bm_swim *s, const struct bm_swim_rec *r, uint64_t now)
{
	struct member *m;
	int32_t i;
	unsigned old;

	i = bm_idmap_get(&s->map, r->id.p, r->id.len);
	if (i == s->self) {
		m = &s->m[i];
		if (s->left) {
			/* someone still thinks we are here: say again we left */
			if (r->state != BM_SWIM_LEFT && r->incarnation >= m->inc) {
				m->inc = r->incarnation + 1;
				pend_add(s, i);
			}
			return;
		}
		if (r->state == BM_SWIM_LEFT && r->incarnation >= m->inc && s->stay_left) {
			/* Removed by an operator while we were away. */
			s->count[m->state]--;
			m->inc = r->incarnation;
			m->state = BM_SWIM_LEFT;
			s->count[m->state]++;
			s->left = 1;
			s->joining = 0;
			bm_warn("swim", "member '%s' was removed from the cluster; staying out",
				m->id);
			emit(s, BM_SWIM_EV_LEFT, i);
			return;
		}
		if (r->state != BM_SWIM_ALIVE && r->incarnation >= m->inc) {
			m->inc = r->incarnation + 1;
			s->st.refutes++;
			bm_info("swim", "member '%s' refutes '%s' with incarnation %u",
				m->id, state_name(r->state), m->inc);
			pend_add(s, i);
		} else if (r->incarnation > m->inc) {
			/* an older run of us was alive with a higher incarnation */
			m->inc = r->incarnation + 1;
			pend_add(s, i);
		}
		return;
	}
	if (i < 0) {
		/* an unknown member reported gone tells us nothing useful */
		if (r->state >= BM_SWIM_DEAD)
			return;
		if (bm_swim_size(s) >= s->max_members) {
			if (s->st.refused++ % 1000 == 0)
				bm_warn("swim", "member '%.*s' refused: table full (%u members)",
					(int)r->id.len, r->id.p, s->max_members);
			return;
		}
		i = member_new(s, r, now);
		if (i < 0)
			return;
		m = &s->m[i];
		bm_debug("swim", "member '%s' joined (%s, incarnation %u)", m->id,
			 state_name(m->state), m->inc);
		pend_add(s, i);
		probe_insert(s, i);
		registry_hook(s, i);
		bm_registry_set_retransmit(s->reg, retransmit_limit(s));
		emit(s, BM_SWIM_EV_JOINED, i);
		if (m->state == BM_SWIM_SUSPECT) {
			start_suspicion(s, i, r->from);
			emit(s, BM_SWIM_EV_SUSPECT, i);
		}
		return;
	}
	m = &s->m[i];
	if (r->state == BM_SWIM_SUSPECT && m->state == BM_SWIM_SUSPECT &&
	    r->incarnation == m->inc) {
		confirm(s, i, r->from);
		return;
	}
	if (!(r->incarnation > m->inc || (r->incarnation == m->inc && r->state > m->state)))
		return;
	old = m->state;
	if (r->incarnation > m->inc && r->state == BM_SWIM_ALIVE && addrs_differ(m, r)) {
		uint8_t len = m->idlen;
		char id[BM_SWIM_ID_MAX + 1];
		struct bm_swim_str ids = { id, len };

		memcpy(id, m->id, len);
		bm_idmap_del(&s->map, m->id, len);
		if (set_strings(m, ids, r->addr, r->zmq, r->admin) ||
		    bm_idmap_put(&s->map, m->id, m->idlen, i)) {
			/* keep the old strings on failure; the map needs a key */
			bm_idmap_put(&s->map, m->id, m->idlen, i);
		}
	}
	s->count[old]--;
	m->inc = r->incarnation;
	m->state = r->state;
	m->role = r->role;
	s->count[m->state]++;
	m->since_ms = now;
	pend_add(s, i);
	if (old != m->state)
		registry_hook(s, i);
	switch (m->state) {
	case BM_SWIM_ALIVE:
		if (old != BM_SWIM_ALIVE) {
			bm_info("swim", "member '%s' is alive again (incarnation %u)",
				m->id, m->inc);
			if (old >= BM_SWIM_DEAD)
				probe_insert(s, i);
		}
		emit(s, old == BM_SWIM_ALIVE ? BM_SWIM_EV_UPDATED : BM_SWIM_EV_ALIVE_AGAIN, i);
		break;
	case BM_SWIM_SUSPECT:
		start_suspicion(s, i, r->from);
		s->st.suspects++;
		bm_debug("swim", "member '%s' is suspect (incarnation %u)", m->id, m->inc);
		emit(s, BM_SWIM_EV_SUSPECT, i);
		break;
	case BM_SWIM_DEAD:
		s->st.deads++;
		bm_info("swim", "member '%s' is dead (incarnation %u)", m->id, m->inc);
		emit(s, BM_SWIM_EV_DEAD, i);
		break;
	default:
		bm_info("swim", "member '%s' left", m->id);
		emit(s, BM_SWIM_EV_LEFT, i);
		break;
	}
}

/* Local verdict about member i at its current incarnation. */
static void declare(struct bm_swim *s, int32_t i, unsigned state, uint64_t now)
{
	struct bm_swim_rec r;

	to_rec(s, &s->m[i], &r);
	r.state = (uint8_t)state;
	if (state == BM_SWIM_SUSPECT) {
		r.from.p = s->m[s->self].id;
		r.from.len = s->m[s->self].idlen;
	}
	apply(s, &r, now);
}

/* --- sending --------------------------------------------------------------- */

static void transmit(struct bm_swim *s, const char *addr, struct bm_swim_enc *e)
{
	int n = bm_swim_enc_finish(e, &s->auth);

	if (n < 0 || !addr || !addr[0]) {
		s->st.send_failed++;
		return;
	}
	if (s->send(s->send_ctx, addr, e->buf, (size_t)n) != 0)
		s->st.send_failed++;
	else
		s->st.sent++;
}

static void piggyback(struct bm_swim *s, struct bm_swim_enc *e)
{
	int32_t taken[BM_SWIM_REC_MAX];
	unsigned ntaken = 0;
	size_t limit = e->limit;

	if (e->limit > REG_ROOM + 200 && bm_registry_pending(s->reg))
		e->limit -= REG_ROOM; /* leave registry deltas some room */
	/* fewest sends first (memberlist does the same): a fresh suspicion
	 * must not wait behind a backlog of old news */
	for (unsigned b = 255; b > 0 && s->npending && ntaken < BM_SWIM_REC_MAX; b--) {
		for (int32_t i = s->bhead[b]; i >= 0; i = s->m[i].bnext) {
			struct bm_swim_rec r;

			to_rec(s, &s->m[i], &r);
			if (ntaken == BM_SWIM_REC_MAX || bm_swim_enc_member(e, &r) != 0)
				goto out_full;
			taken[ntaken++] = i;
		}
	}
out_full:
	e->limit = limit;
	for (unsigned k = 0; k < ntaken; k++) {
		unsigned left = s->m[taken[k]].tx_left;

		pend_remove(s, taken[k]);
		if (left > 1)
			bucket_append(s, taken[k], left - 1);
	}
	bm_registry_piggyback(s->reg, e);
}

static void send_probe(struct bm_swim *s, enum bm_swim_type type, const char *addr,
		       uint32_t seq, const char *target, const char *target_addr)
{
	bm_swim_enc_start(&s->enc, type, s->mtu);
	bm_swim_enc_probe(&s->enc, seq, target, target_addr);
	piggyback(s, &s->enc);
	transmit(s, addr, &s->enc);
}

/* Our whole member table, in as many chunks as it takes. */
static void send_sync(struct bm_swim *s, const char *addr, uint8_t flags)
{
	uint16_t chunk = 0;
	unsigned i = 0;

	s->st.syncs++;
	while (i < s->nm || chunk == 0) {
		bm_swim_enc_start(&s->enc, BM_SWIM_SYNC, s->mtu);
		bm_swim_enc_sync(&s->enc, flags, chunk);
		/* self first, so even a lost tail leaves the peer knowing us */
		if (chunk == 0) {
			struct bm_swim_rec r;
			to_rec(s, &s->m[s->self], &r);
			bm_swim_enc_member(&s->enc, &r);
		}
		for (; i < s->nm; i++) {
			struct bm_swim_rec r;
			if (!s->m[i].in_use || (int32_t)i == s->self)
				continue;
			to_rec(s, &s->m[i], &r);
			if (bm_swim_enc_member(&s->enc, &r) == BM_ETOOBIG) {
				if (s->enc.nrec == 0)
					i++; /* cannot happen: a record fits an empty packet */
				break;
			}
		}
		transmit(s, addr, &s->enc);
		chunk++;
	}
}

static void send_digest(struct bm_swim *s, const char *addr)
{
	bm_swim_enc_start(&s->enc, BM_SWIM_REG_DIGEST, s->mtu);
	bm_swim_enc_digest_begin(&s->enc);
	bm_registry_digest(s->reg, &s->enc);
	transmit(s, addr, &s->enc);
}

/* A random member in one of the states of mask (bit per state), not self. */
static int32_t random_member(struct bm_swim *s, unsigned mask, int32_t except)
{
	for (unsigned tries = 0; tries < 64 && s->nm; tries++) {
		int32_t i = (int32_t)rnd_below(s, s->nm);
		const struct member *m = &s->m[i];
		if (m->in_use && i != s->self && i != except && (mask & (1u << m->state)))
			return i;
	}
	/* sparse table: fall back to a scan from a random start */
	for (unsigned k = 0, st = rnd_below(s, s->nm); k < s->nm; k++) {
		int32_t i = (int32_t)((st + k) % s->nm);
		const struct member *m = &s->m[i];
		if (m->in_use && i != s->self && i != except && (mask & (1u << m->state)))
			return i;
	}
	return -1;
}

/* --- lifecycle ------------------------------------------------------------- */

static int str_fits(const char *p, size_t min, size_t max)
{
	size_t n = p ? strlen(p) : 0;

	return n >= min && n <= max;
}

int bm_swim_new(struct bm_swim **out, const struct bm_swim_config *c)
{
	struct bm_swim *s;
	struct bm_swim_rec r;
	int rc = BM_EINVAL;

	*out = NULL;
	if (!str_fits(c->id, 1, BM_SWIM_ID_MAX) || !str_fits(c->addr, 1, BM_SWIM_ADDR_MAX) ||
	    !str_fits(c->zmq, 0, BM_SWIM_ADDR_MAX) || !str_fits(c->admin, 0, BM_SWIM_ADDR_MAX) ||
	    (c->role != BM_SWIM_ROLE_SIGNAL && c->role != BM_SWIM_ROLE_SERVER) || !c->send)
		return BM_EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return BM_ENOMEM;
	s->pkt = malloc(sizeof(*s->pkt));
	rc = BM_ENOMEM;
	if (!s->pkt)
		goto out_free;
	s->send = c->send;
	s->send_ctx = c->send_ctx;
	s->on_member = c->on_member;
	s->ud = c->ud;
	s->period = c->period_ms ? c->period_ms : 1000;
	s->probe_timeout = c->probe_timeout_ms ? c->probe_timeout_ms : s->period / 2;
	if (s->probe_timeout >= s->period)
		s->probe_timeout = s->period / 2;
	s->k = c->indirect_k ? c->indirect_k : 3;
	s->susp_mult = c->suspicion_mult ? c->suspicion_mult : 4;
	s->rt_mult = c->retransmit_mult ? c->retransmit_mult : 4;
	s->sync_periods = c->sync_periods ? c->sync_periods : 10;
	s->pull_periods = c->registry_pull_periods ? c->registry_pull_periods : 1;
	s->max_members = c->max_members ? c->max_members : 10000;
	s->mtu = c->mtu && c->mtu <= BM_SWIM_PKT_MAX && c->mtu >= 512 ? c->mtu : BM_SWIM_PKT_MAX;
	s->reap_ms = c->dead_reap_ms ? c->dead_reap_ms : 3600u * 1000u;
	s->stay_left = c->stay_left;
	s->rng = c->seed ^ bm_hash64(c->id, strlen(c->id));
	s->mfree = -1;
	for (unsigned b = 0; b < 256; b++)
		s->bhead[b] = s->btail[b] = -1;
	bm_idmap_init(&s->map);
	rc = bm_swim_auth_init(&s->auth, c->key, c->key_len);
	if (rc)
		goto out_free;
	rc = BM_ENOMEM;
	s->reg = bm_registry_new(c->id, c->registry_epoch);
	if (!s->reg)
		goto out_auth;
	bm_registry_set_limit(s->reg, c->registry_max_entries ? c->registry_max_entries : 1000000);
	r.id = bm_swim_str_of(c->id);
	r.addr = bm_swim_str_of(c->addr);
	r.zmq = bm_swim_str_of(c->zmq);
	r.admin = bm_swim_str_of(c->admin);
	r.incarnation = c->incarnation;
	r.role = (uint8_t)c->role;
	r.state = BM_SWIM_ALIVE;
	s->self = member_new(s, &r, 0);
	if (s->self < 0)
		goto out_reg;
	bm_registry_member(s->reg, c->id, c->role, BM_SWIM_ALIVE);
	pend_add(s, s->self);
	*out = s;
	return 0;
out_reg:
	bm_registry_free(s->reg);
out_auth:
	bm_swim_auth_release(&s->auth);
out_free:
	bm_idmap_release(&s->map);
	free(s->pkt);
	free(s);
	return rc;
}

void bm_swim_free(struct bm_swim *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->nm; i++)
		free(s->m[i].id);
	free(s->m);
	free(s->probe);
	free(s->susp);
	free(s->pkt);
	bm_idmap_release(&s->map);
	bm_registry_free(s->reg);
	bm_swim_auth_release(&s->auth);
	free(s);
}

int bm_swim_join(struct bm_swim *s, const char *seed, uint64_t now)
{
	if (!str_fits(seed, 1, BM_SWIM_ADDR_MAX))
		return BM_EINVAL;
	if (strcmp(seed, s->m[s->self].addr) == 0)
		return 0;
	strcpy(s->join_addr, seed);
	s->joining = 1;
	s->join_heard = 0;
	s->join_tries = 0;
	s->join_next = now + s->period;
	send_sync(s, s->join_addr, BM_SWIM_SYNC_REPLY);
	return 0;
}

void bm_swim_leave(struct bm_swim *s, uint64_t now)
{
	struct member *me = &s->m[s->self];
	unsigned fanout = 2 * s->k + 1;

	if (s->left)
		return;
	s->count[me->state]--;
	me->inc++;
	me->state = BM_SWIM_LEFT;
	s->count[me->state]++;
	s->left = 1;
	s->joining = 0;
	pend_add(s, s->self);
	bm_info("swim", "member '%s' leaves the cluster", me->id);
	for (unsigned n = 0; n < fanout; n++) {
		int32_t i = random_member(s, 1u << BM_SWIM_ALIVE | 1u << BM_SWIM_SUSPECT, -1);
		struct bm_swim_rec r;
		if (i < 0)
			break;
		bm_swim_enc_start(&s->enc, BM_SWIM_PING, s->mtu);
		bm_swim_enc_probe(&s->enc, ++s->seq, s->m[i].id, NULL);
		to_rec(s, me, &r);
		bm_swim_enc_member(&s->enc, &r);
		transmit(s, s->m[i].addr, &s->enc);
	}
}

int bm_swim_heard(const struct bm_swim *s)
{
	return s->table_heard;
}

int bm_swim_remove(struct bm_swim *s, const char *id, uint64_t now)
{
	int32_t i = bm_idmap_get(&s->map, id, strlen(id));
	struct member *m;

	if (i < 0)
		return BM_ENOENT;
	m = &s->m[i];
	if (i == s->self || m->state == BM_SWIM_ALIVE || m->state == BM_SWIM_SUSPECT)
		return BM_ESTATE;
	if (m->state == BM_SWIM_LEFT)
		return 0;
	s->count[m->state]--;
	m->state = BM_SWIM_LEFT;      /* at its incarnation: beats 'dead' */
	s->count[m->state]++;
	m->since_ms = now;
	pend_add(s, i);
	registry_hook(s, i);
	bm_warn("swim", "member '%s' removed by an operator", m->id);
	emit(s, BM_SWIM_EV_LEFT, i);
	return 0;
}

/* --- tick ------------------------------------------------------------------ */

static int32_t next_probe_target(struct bm_swim *s)
{
	for (unsigned tries = 0; tries < 2 * s->nprobe + 2; tries++) {
		int32_t i;
		if (s->probe_pos >= s->nprobe) {
			/* new round: every live member once, in a fresh order */
			s->nprobe = 0;
			for (unsigned j = 0; j < s->nm; j++) {
				const struct member *m = &s->m[j];
				if (!m->in_use || (int32_t)j == s->self || m->state > BM_SWIM_SUSPECT)
					continue;
				if (bm_cluster_grow((void **)&s->probe, &s->probe_cap, s->nprobe + 1, sizeof(int32_t)))
					break;
				s->probe[s->nprobe++] = (int32_t)j;
			}
			for (unsigned j = s->nprobe; j > 1; j--) {
				unsigned x = rnd_below(s, j);
				int32_t t = s->probe[j - 1];
				s->probe[j - 1] = s->probe[x];
				s->probe[x] = t;
			}
			s->probe_pos = 0;
			if (!s->nprobe)
				return -1;
		}
		i = s->probe[s->probe_pos++];
		if (s->m[i].in_use && i != s->self && s->m[i].state <= BM_SWIM_SUSPECT)
			return i;
	}
	return -1;
}

static void probe_tick(struct bm_swim *s, uint64_t now)
{
	if (s->pr.active) {
		struct member *t = &s->m[s->pr.target];
		int gone = !t->in_use || t->state > BM_SWIM_SUSPECT;

		if (!gone && !s->pr.indirect && now >= s->pr.start + s->probe_timeout) {
			s->pr.indirect = 1;
			for (unsigned n = 0; n < s->k; n++) {
				int32_t i = random_member(s, 1u << BM_SWIM_ALIVE, s->pr.target);
				if (i < 0)
					break;
				s->st.ping_reqs++;
				send_probe(s, BM_SWIM_PING_REQ, s->m[i].addr, s->pr.seq,
					   t->id, t->addr);
			}
		}
		if (gone) {
			s->pr.active = 0;
		} else if (now >= s->pr.start + s->period) {
			s->pr.active = 0;
			s->st.probes_failed++;
			if (t->state == BM_SWIM_ALIVE) {
				declare(s, s->pr.target, BM_SWIM_SUSPECT, now);
				/* tell the suspect first: if it is alive it refutes
				 * in its ACK (the suspicion leads our piggyback) */
				send_probe(s, BM_SWIM_PING, t->addr, ++s->seq, t->id, NULL);
			} else if (t->state == BM_SWIM_SUSPECT) {
				struct bm_swim_str me = { s->m[s->self].id, s->m[s->self].idlen };
				confirm(s, s->pr.target, me);
			}
		}
	}
	if (now >= s->next_probe) {
		int32_t i;

		s->next_probe = now + s->period;
		s->periods++;
		if (s->periods % s->pull_periods == 0) {
			/* registry pull: cheap when in sync (nothing comes back) */
			i = random_member(s, 1u << BM_SWIM_ALIVE, -1);
			if (i >= 0)
				send_digest(s, s->m[i].addr);
		}
		if (s->pr.active)
			return;
		i = next_probe_target(s);
		if (i < 0)
			return;
		s->pr.active = 1;
		s->pr.indirect = 0;
		s->pr.target = i;
		s->pr.seq = ++s->seq;
		s->pr.start = now;
		s->st.probes++;
		send_probe(s, BM_SWIM_PING, s->m[i].addr, s->pr.seq, s->m[i].id, NULL);
	}
}

static void suspect_tick(struct bm_swim *s, uint64_t now)
{
	unsigned j = 0;
	uint64_t next = 0;

	if (!s->nsusp || now < s->next_susp)
		return;
	for (unsigned k = 0; k < s->nsusp; k++) {
		int32_t i = s->susp[k];
		struct member *m = &s->m[i];

		if (!m->in_use || m->state != BM_SWIM_SUSPECT)
			continue;
		if (now >= m->deadline) {
			declare(s, i, BM_SWIM_DEAD, now);
			continue;
		}
		/* a refuted-then-resuspected member may be listed twice */
		if (next == 0 || m->deadline < next)
			next = m->deadline;
		s->susp[j++] = i;
	}
	s->nsusp = j;
	/* entries added by declare() during the loop were appended past k */
	s->next_susp = next;
}

static void sync_tick(struct bm_swim *s, uint64_t now)
{
	int32_t i;

	if (now < s->next_sync)
		return;
	s->next_sync = now + (uint64_t)s->sync_periods * s->period;
	s->nsync++;
	i = random_member(s, 1u << BM_SWIM_ALIVE | 1u << BM_SWIM_SUSPECT, -1);
	if (i >= 0)
		send_sync(s, s->m[i].addr, BM_SWIM_SYNC_REPLY);
	/* every other round, try a dead member: heals partitions */
	if (s->count[BM_SWIM_DEAD] && (s->nsync & 1)) {
		i = random_member(s, 1u << BM_SWIM_DEAD, -1);
		if (i >= 0)
			send_sync(s, s->m[i].addr, BM_SWIM_SYNC_REPLY);
	}
	for (unsigned j = 0; j < s->nm; j++) {
		struct member *m = &s->m[j];
		if (m->in_use && (int32_t)j != s->self && m->state >= BM_SWIM_DEAD &&
		    m->role != BM_SWIM_ROLE_SERVER && now - m->since_ms > s->reap_ms)
			member_reap(s, (int32_t)j);
	}
}

void bm_swim_tick(struct bm_swim *s, uint64_t now)
{
	if (!s->started) {
		s->started = 1;
		/* spread nodes started together over the period */
		s->next_probe = now + rnd_below(s, s->period);
		s->next_sync = now + s->period + rnd_below(s, s->sync_periods * s->period);
	}
	if (s->left)
		return;
	if (s->joining && now >= s->join_next) {
		if (s->join_heard) {
			s->joining = 0;
		} else {
			s->join_next = now + s->period;
			if (++s->join_tries % 10 == 0)
				bm_warn("swim", "seed '%s' has not answered after %u tries",
					s->join_addr, s->join_tries);
			send_sync(s, s->join_addr, BM_SWIM_SYNC_REPLY);
		}
	}
	probe_tick(s, now);
	suspect_tick(s, now);
	sync_tick(s, now);
}

uint64_t bm_swim_next_deadline(const struct bm_swim *s)
{
	uint64_t d = s->next_probe;

	if (!s->started)
		return 0;
	if (s->pr.active) {
		uint64_t x = s->pr.indirect ? s->pr.start + s->period : s->pr.start + s->probe_timeout;
		if (x < d)
			d = x;
	}
	if (s->nsusp && s->next_susp < d)
		d = s->next_susp;
	if (s->next_sync < d)
		d = s->next_sync;
	if (s->joining && s->join_next < d)
		d = s->join_next;
	return d;
}

/* --- receive --------------------------------------------------------------- */

struct answer_ctx {
	struct bm_swim *s;
	const char *to;
};

static int on_answer_packet(void *ctx, struct bm_swim_enc *e)
{
	struct answer_ctx *a = ctx;

	transmit(a->s, a->to, e);
	return 0;
}

static void on_ack(struct bm_swim *s, const struct bm_swim_pkt *p, uint64_t now)
{
	if (s->pr.active && p->seq == s->pr.seq && s->m[s->pr.target].in_use &&
	    bm_swim_str_eq(p->target, s->m[s->pr.target].id)) {
		s->pr.active = 0;
		return;
	}
	for (unsigned k = 0; k < RELAYS; k++) {
		struct relay *r = &s->relay[k];
		if (r->seq == p->seq && r->expires > now && bm_swim_str_eq(p->target, r->target)) {
			send_probe(s, BM_SWIM_ACK, r->from, r->orig_seq, r->target, NULL);
			r->expires = 0;
			return;
		}
	}
}

static void on_ping_req(struct bm_swim *s, const struct bm_swim_pkt *p, const char *from,
			uint64_t now)
{
	struct relay *r = &s->relay[s->relay_pos++ % RELAYS];
	char addr[BM_SWIM_ADDR_MAX + 1];

	if (strlen(from) > BM_SWIM_ADDR_MAX)
		return;
	r->seq = ++s->seq;
	r->orig_seq = p->seq;
	r->expires = now + s->period;
	strcpy(r->from, from);
	memcpy(r->target, p->target.p, p->target.len);
	r->target[p->target.len] = 0;
	memcpy(addr, p->target_addr.p, p->target_addr.len);
	addr[p->target_addr.len] = 0;
	send_probe(s, BM_SWIM_PING, addr, r->seq, r->target, NULL);
}

int bm_swim_recv(struct bm_swim *s, uint64_t now, const char *from,
		 const uint8_t *buf, size_t len)
{
	struct bm_swim_pkt *p = s->pkt;
	const struct member *me;
	int rc;

	s->st.recv++;
	rc = bm_swim_decode(&s->auth, buf, len, p);
	if (rc) {
		if (rc == BM_EUNAUTH)
			s->st.bad_auth++;
		else
			s->st.bad_decode++;
		bm_debug("swim", "dropped packet from '%s': %s", from ? from : "?",
			 bm_strerror(rc));
		return rc;
	}
	if (!from || !from[0] || strlen(from) > BM_SWIM_ADDR_MAX) {
		s->st.bad_other++;
		return BM_EINVAL;
	}
	for (unsigned k = 0; k < p->nrec; k++)
		apply(s, &p->rec[k], now);
	for (unsigned k = 0; k < p->nreg; k++)
		bm_registry_merge(s->reg, &p->reg[k]);
	me = &s->m[s->self];

	switch (p->type) {
	case BM_SWIM_PING:
		if (!bm_swim_str_eq(p->target, me->id)) {
			s->st.bad_other++;
			return BM_ENOENT; /* stale address: not for us */
		}
		send_probe(s, BM_SWIM_ACK, from, p->seq, me->id, NULL);
		break;
	case BM_SWIM_ACK:
		on_ack(s, p, now);
		break;
	case BM_SWIM_PING_REQ:
		if (!s->left)
			on_ping_req(s, p, from, now);
		break;
	case BM_SWIM_SYNC:
		if (s->joining && p->chunk == 0)
			s->join_heard = 1; /* a table came back: stop retrying */
		if (p->chunk == 0)
			s->table_heard = 1;
		if ((p->flags & BM_SWIM_SYNC_REPLY) && p->chunk == 0)
			send_sync(s, from, 0);
		break;
	case BM_SWIM_REG_DIGEST: {
		struct answer_ctx a = { s, from };
		bm_registry_answer(s->reg, p, &s->enc, s->mtu, REG_ANSWER_PKTS,
				   on_answer_packet, &a);
		break;
	}
	case BM_SWIM_REG_DATA:
		bm_registry_ranges(s->reg, p);
		break;
	default:
		break;
	}
	return 0;
}

/* --- queries --------------------------------------------------------------- */

unsigned bm_swim_count(const struct bm_swim *s, enum bm_swim_state st)
{
	return (unsigned)st < 4 ? s->count[st] : 0;
}

unsigned bm_swim_size(const struct bm_swim *s)
{
	return s->count[0] + s->count[1] + s->count[2] + s->count[3];
}

int bm_swim_member_get(const struct bm_swim *s, const char *id, struct bm_swim_member *v)
{
	int32_t i = id ? bm_idmap_get(&s->map, id, strlen(id)) : -1;

	if (i < 0)
		return BM_ENOENT;
	view(s, i, v);
	return 0;
}

void bm_swim_foreach(const struct bm_swim *s, bm_swim_member_fn *fn, void *ud)
{
	struct bm_swim_member v;

	for (unsigned i = 0; i < s->nm; i++) {
		if (!s->m[i].in_use)
			continue;
		view(s, (int32_t)i, &v);
		fn(ud, 0, &v);
	}
}

const char *bm_swim_self_id(const struct bm_swim *s)
{
	return s->m[s->self].id;
}

uint32_t bm_swim_incarnation(const struct bm_swim *s)
{
	return s->m[s->self].inc;
}

uint64_t bm_swim_periods(const struct bm_swim *s)
{
	return s->periods;
}

struct bm_registry *bm_swim_registry(struct bm_swim *s)
{
	return s->reg;
}

void bm_swim_stats(const struct bm_swim *s, struct bm_swim_stats *st)
{
	*st = s->st;
}
