/*
 * bm_registry.c - rendezvous owner lookup and the replicated device map.
 * Semantics in bm_registry.h; dissemination trade-offs in docs/cluster.md.
 *
 * Per writer we keep (epoch, synced): "every change the writer made in this
 * epoch up to version synced is reflected here".  The writer itself is
 * always complete.  Piggybacked deltas arrive in any order, so they advance
 * synced only when they are the very next version; REG_DATA answers carry
 * ranges (from, to] that are complete on top of from, which is what repairs
 * losses.  Digests advertise synced, never the highest version seen.
 */
#include "bm_registry.h"

#include <stdlib.h>
#include <string.h>

#include "bm_err.h"
#include "bm_idmap.h"
#include "bm_log.h"

struct writer {
	char *id;              /* owned; the map borrows it */
	uint64_t idhash;
	uint64_t epoch, synced;
	int role;
	int live;              /* alive or suspect */
	int owns;              /* a server in the owner set: not left */
	int32_t head;          /* first entry of this writer, -1 */
	/* ranges received ahead of synced (answers arrive out of order);
	 * allocated on first use */
	struct range *ahead;
	unsigned nahead;
};

#define AHEAD_MAX 32
struct range {
	uint64_t from, to;
};

struct entry {
	char *key;             /* "writer\0eid", owned; NULL = free slot */
	uint16_t klen;
	int32_t writer;
	int32_t wprev, wnext;  /* per-writer list */
	int32_t pend;          /* index in pending[], -1 */
	uint64_t epoch, version;
	uint8_t ndev;
	uint8_t tx_left;
	char *devbuf;          /* ndev NUL-terminated ids back to back */
	const char *dev[BM_SWIM_DEV_MAX];
};

struct bm_registry {
	int32_t self;                  /* writer index of this node */
	struct writer *w;
	unsigned nw, wcap;
	struct bm_idmap wmap;
	int32_t *servers;              /* writer indexes of servers that own (not left) */
	unsigned nservers, scap;
	struct entry *e;
	unsigned ne, ecap;
	int32_t efree;
	unsigned nlive;                /* entries with ndev > 0 */
	struct bm_idmap emap;
	int32_t *pending;
	unsigned npending, pcap, pcursor;
	unsigned retransmit;
	unsigned nentries, max_entries;
	uint64_t refused;
	bm_registry_change_fn *on_change;
	void *ud;
};


static int32_t writer_get(struct bm_registry *r, const char *id, size_t len, int create)
{
	int32_t i = bm_idmap_get(&r->wmap, id, len);
	struct writer *w;

	if (i >= 0 || !create)
		return i;
	if (len == 0 || len > BM_SWIM_ID_MAX)
		return -1;
	if (bm_cluster_grow((void **)&r->w, &r->wcap, r->nw + 1, sizeof(*r->w)))
		return -1;
	i = (int32_t)r->nw;
	w = &r->w[i];
	memset(w, 0, sizeof(*w));
	w->id = malloc(len + 1);
	if (!w->id)
		return -1;
	memcpy(w->id, id, len);
	w->id[len] = 0;
	if (bm_idmap_put(&r->wmap, w->id, len, i)) {
		free(w->id);
		return -1;
	}
	w->idhash = bm_hash64(id, len);
	w->head = -1;
	r->nw++;
	return i;
}

struct bm_registry *bm_registry_new(const char *self_id, uint64_t epoch)
{
	struct bm_registry *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	bm_idmap_init(&r->wmap);
	bm_idmap_init(&r->emap);
	r->efree = -1;
	r->retransmit = 8;
	r->max_entries = 1000000;
	r->self = writer_get(r, self_id, strlen(self_id), 1);
	if (r->self < 0) {
		bm_registry_free(r);
		return NULL;
	}
	r->w[r->self].epoch = epoch ? epoch : 1;
	r->w[r->self].live = 1;
	return r;
}

static void entry_free_storage(struct entry *en)
{
	free(en->key);
	free(en->devbuf);
	en->key = NULL;
	en->devbuf = NULL;
}

void bm_registry_free(struct bm_registry *r)
{
	if (!r)
		return;
	for (unsigned i = 0; i < r->ne; i++)
		entry_free_storage(&r->e[i]);
	free(r->e);
	for (unsigned i = 0; i < r->nw; i++) {
		free(r->w[i].id);
		free(r->w[i].ahead);
	}
	free(r->w);
	free(r->servers);
	free(r->pending);
	bm_idmap_release(&r->wmap);
	bm_idmap_release(&r->emap);
	free(r);
}

void bm_registry_set_callback(struct bm_registry *r, bm_registry_change_fn *fn, void *ud)
{
	r->on_change = fn;
	r->ud = ud;
}

void bm_registry_set_limit(struct bm_registry *r, unsigned n)
{
	r->max_entries = n;
}

void bm_registry_set_retransmit(struct bm_registry *r, unsigned n)
{
	r->retransmit = n > 255 ? 255 : n;
}

static void notify(struct bm_registry *r, const struct entry *en)
{
	if (r->on_change)
		r->on_change(r->ud, en->key, en->key + strlen(en->key) + 1);
}

static void pend_remove(struct bm_registry *r, int32_t idx)
{
	struct entry *en = &r->e[idx];
	int32_t last;

	if (en->pend < 0)
		return;
	last = r->pending[--r->npending];
	r->pending[en->pend] = last;
	r->e[last].pend = en->pend;
	en->pend = -1;
}

/* Own writes are piggybacked `retransmit` times; entries learned from others
 * only RELAY_TX times: re-gossiping every entry at full strength from every
 * node floods the packets, and the digest pull repairs what piggybacking
 * misses at a cost proportional to what is actually missing. */
#define RELAY_TX 2

static void pend_add(struct bm_registry *r, int32_t idx, unsigned tx)
{
	struct entry *en = &r->e[idx];

	en->tx_left = (uint8_t)tx;
	if (en->pend >= 0 || en->tx_left == 0)
		return;
	if (bm_cluster_grow((void **)&r->pending, &r->pcap, r->npending + 1, sizeof(int32_t)))
		return; /* anti-entropy still carries it */
	en->pend = (int32_t)r->npending;
	r->pending[r->npending++] = idx;
}

static void entry_delete(struct bm_registry *r, int32_t idx)
{
	struct entry *en = &r->e[idx];
	struct writer *w = &r->w[en->writer];

	pend_remove(r, idx);
	bm_idmap_del(&r->emap, en->key, en->klen);
	if (en->wprev >= 0)
		r->e[en->wprev].wnext = en->wnext;
	else
		w->head = en->wnext;
	if (en->wnext >= 0)
		r->e[en->wnext].wprev = en->wprev;
	if (en->ndev)
		r->nlive--;
	entry_free_storage(en);
	en->wnext = r->efree;
	r->efree = idx;
	r->nentries--;
}

static void drop_writer_entries(struct bm_registry *r, int32_t wi)
{
	struct writer *w = &r->w[wi];

	while (w->head >= 0) {
		int32_t idx = w->head;
		int had = r->e[idx].ndev > 0;
		char key[2 * BM_SWIM_ID_MAX + 2];

		memcpy(key, r->e[idx].key, r->e[idx].klen);
		entry_delete(r, idx);
		if (had && r->on_change)
			r->on_change(r->ud, key, key + strlen(key) + 1);
	}
	w->synced = 0;
	w->nahead = 0;
	if (wi != r->self)
		w->epoch = 0;
}

int bm_registry_member(struct bm_registry *r, const char *id, int role, int state)
{
	int32_t wi = writer_get(r, id, strlen(id), 1);
	struct writer *w;
	int live = state <= BM_SWIM_SUSPECT;
	int owns = role == BM_SWIM_ROLE_SERVER && state != BM_SWIM_LEFT;

	if (wi < 0)
		return BM_ENOMEM;
	w = &r->w[wi];
	if (w->live == live && w->role == role && w->owns == owns)
		return 0;
	if (w->owns && !owns) {
		for (unsigned i = 0; i < r->nservers; i++)
			if (r->servers[i] == wi) {
				r->servers[i] = r->servers[--r->nservers];
				break;
			}
	}
	if (owns && !w->owns) {
		if (bm_cluster_grow((void **)&r->servers, &r->scap, r->nservers + 1, sizeof(int32_t)))
			return BM_ENOMEM;
		r->servers[r->nservers++] = wi;
	}
	w->role = role;
	w->live = live;
	w->owns = owns;
	if (!live && wi != r->self)
		drop_writer_entries(r, wi);
	return 0;
}

unsigned bm_registry_server_count(const struct bm_registry *r)
{
	return r->nservers;
}

int bm_registry_owner(const struct bm_registry *r, const char *eid, char *out)
{
	uint64_t eh = bm_hash64(eid, strlen(eid)), best = 0;
	int32_t bi = -1;

	for (unsigned i = 0; i < r->nservers; i++) {
		const struct writer *w = &r->w[r->servers[i]];
		uint64_t sc = bm_mix64(w->idhash ^ eh);
		if (bi < 0 || sc > best || (sc == best && strcmp(w->id, r->w[bi].id) < 0)) {
			best = sc;
			bi = r->servers[i];
		}
	}
	if (bi < 0)
		return BM_ENOENT;
	strcpy(out, r->w[bi].id);
	return 0;
}

/* Replace en's device set; returns 1 if the set changed. */
static int set_devices(struct bm_registry *r, struct entry *en,
		       const struct bm_swim_str *dev, unsigned ndev)
{
	size_t total = 0;
	char *buf = NULL, *p;
	int same = en->ndev == ndev;

	for (unsigned i = 0; i < ndev; i++) {
		total += dev[i].len + 1u;
		if (same && !bm_swim_str_eq(dev[i], en->dev[i]))
			same = 0;
	}
	if (same)
		return 0;
	if (ndev) {
		buf = malloc(total);
		if (!buf)
			return BM_ENOMEM;
	}
	p = buf;
	for (unsigned i = 0; i < ndev; i++) {
		memcpy(p, dev[i].p, dev[i].len);
		p[dev[i].len] = 0;
		en->dev[i] = p;
		p += dev[i].len + 1;
	}
	free(en->devbuf);
	en->devbuf = buf;
	if (en->ndev && !ndev)
		r->nlive--;
	else if (!en->ndev && ndev)
		r->nlive++;
	en->ndev = (uint8_t)ndev;
	return 1;
}

static int32_t entry_get(struct bm_registry *r, int32_t wi, struct bm_swim_str eid,
			 int create)
{
	char key[2 * BM_SWIM_ID_MAX + 2];
	size_t wl = strlen(r->w[wi].id), kl = wl + 1 + eid.len;
	struct entry *en;
	int32_t idx;

	memcpy(key, r->w[wi].id, wl + 1);
	memcpy(key + wl + 1, eid.p, eid.len);
	key[kl] = 0;
	idx = bm_idmap_get(&r->emap, key, kl);
	if (idx >= 0 || !create)
		return idx;
	if (r->nentries >= r->max_entries) {
		if (r->refused++ % 10000 == 0)
			bm_warn("registry", "entry '%s' refused: map full (%u entries)",
				key, r->max_entries);
		return -2;
	}
	if (r->efree >= 0) {
		idx = r->efree;
		r->efree = r->e[idx].wnext;
	} else {
		if (bm_cluster_grow((void **)&r->e, &r->ecap, r->ne + 1, sizeof(*r->e)))
			return -1;
		idx = (int32_t)r->ne++;
	}
	en = &r->e[idx];
	memset(en, 0, sizeof(*en));
	en->key = malloc(kl + 1);
	if (!en->key)
		goto out_free;
	memcpy(en->key, key, kl + 1);
	en->klen = (uint16_t)kl;
	if (bm_idmap_put(&r->emap, en->key, kl, idx))
		goto out_free;
	en->writer = wi;
	en->pend = -1;
	en->wprev = -1;
	en->wnext = r->w[wi].head;
	if (en->wnext >= 0)
		r->e[en->wnext].wprev = idx;
	r->w[wi].head = idx;
	r->nentries++;
	return idx;
out_free:
	free(en->key);
	en->key = NULL;
	en->wnext = r->efree;
	r->efree = idx;
	return -1;
}

int bm_registry_set(struct bm_registry *r, const char *eid,
		    const char *const *devices, unsigned ndev)
{
	struct bm_swim_str dv[BM_SWIM_DEV_MAX];
	struct bm_swim_str es = bm_swim_str_of(eid);
	struct writer *w = &r->w[r->self];
	struct entry *en;
	int32_t idx;
	int rc;

	if (!eid || es.len == 0 || strlen(eid) > BM_SWIM_ID_MAX)
		return BM_EINVAL;
	if (ndev > BM_SWIM_DEV_MAX)
		return BM_ETOOBIG;
	for (unsigned i = 0; i < ndev; i++) {
		if (!devices[i] || !devices[i][0] || strlen(devices[i]) > BM_SWIM_ID_MAX)
			return BM_EINVAL;
		dv[i] = bm_swim_str_of(devices[i]);
	}
	idx = entry_get(r, r->self, es, ndev > 0);
	if (idx < 0)
		return !ndev ? 0 : idx == -2 ? BM_EFULL : BM_ENOMEM;
	en = &r->e[idx];
	rc = set_devices(r, en, dv, ndev);
	if (rc <= 0)
		return rc;
	en->epoch = w->epoch;
	en->version = ++w->synced;
	pend_add(r, idx, r->retransmit);
	notify(r, en);
	return 0;
}

unsigned bm_registry_lookup(const struct bm_registry *r, const char *eid,
			    bm_registry_visit_fn *fn, void *ud)
{
	struct bm_swim_str es = bm_swim_str_of(eid);
	unsigned n = 0;

	if (!eid || !es.len || strlen(eid) > BM_SWIM_ID_MAX)
		return 0;
	for (unsigned wi = 0; wi < r->nw; wi++) {
		int32_t idx;
		const struct entry *en;

		if (!r->w[wi].live || r->w[wi].role == BM_SWIM_ROLE_SERVER)
			continue;
		idx = entry_get((struct bm_registry *)r, (int32_t)wi, es, 0);
		if (idx < 0)
			continue;
		en = &r->e[idx];
		if (!en->ndev)
			continue;
		if (fn)
			fn(ud, r->w[wi].id, en->dev, en->ndev);
		n++;
	}
	return n;
}

int bm_registry_merge(struct bm_registry *r, const struct bm_swim_reg_rec *rec)
{
	int32_t wi, idx;
	struct writer *w;
	struct entry *en;
	int rc;

	if (!rec->writer.len || rec->writer.len > BM_SWIM_ID_MAX || !rec->eid.len ||
	    rec->eid.len > BM_SWIM_ID_MAX || rec->ndev > BM_SWIM_DEV_MAX)
		return BM_EINVAL;
	wi = writer_get(r, rec->writer.p, rec->writer.len, 0);
	if (wi < 0 || wi == r->self || !r->w[wi].live ||
	    r->w[wi].role != BM_SWIM_ROLE_SIGNAL || rec->version == 0)
		return 0;
	w = &r->w[wi];
	if (rec->epoch < w->epoch)
		return 0;
	if (rec->epoch > w->epoch) {
		/* the writer restarted: everything older is gone */
		drop_writer_entries(r, wi);
		w->epoch = rec->epoch;
		w->synced = 0;
		w->nahead = 0;
	}
	idx = entry_get(r, wi, rec->eid, 1);
	if (idx == -2)
		return 0;
	if (idx < 0)
		return BM_ENOMEM;
	en = &r->e[idx];
	if (en->version >= rec->version && en->epoch == rec->epoch)
		return 0;
	rc = set_devices(r, en, rec->dev, rec->ndev);
	if (rc < 0)
		return rc;
	en->epoch = rec->epoch;
	en->version = rec->version;
	if (rec->version == w->synced + 1)
		w->synced = rec->version;
	pend_add(r, idx, RELAY_TX < r->retransmit ? RELAY_TX : r->retransmit);
	if (rc)
		notify(r, en);
	return 1;
}

unsigned bm_registry_pending(const struct bm_registry *r)
{
	return r->npending;
}

unsigned bm_registry_size(const struct bm_registry *r)
{
	return r->nlive;
}

uint64_t bm_registry_fingerprint(const struct bm_registry *r)
{
	uint64_t fp = 0;

	for (unsigned i = 0; i < r->ne; i++) {
		const struct entry *en = &r->e[i];
		uint64_t h;

		if (!en->key || !en->ndev)
			continue;
		h = bm_hash64(en->key, en->klen);
		for (unsigned d = 0; d < en->ndev; d++)
			h = bm_mix64(h ^ bm_hash64(en->dev[d], strlen(en->dev[d])));
		fp += bm_mix64(h ^ en->version);
	}
	return fp;
}

static void to_rec(const struct bm_registry *r, const struct entry *en,
		   struct bm_swim_reg_rec *rec)
{
	rec->writer = bm_swim_str_of(en->key);
	rec->eid = bm_swim_str_of(en->key + rec->writer.len + 1);
	rec->epoch = en->epoch;
	rec->version = en->version;
	rec->ndev = en->ndev;
	for (unsigned i = 0; i < en->ndev; i++)
		rec->dev[i] = bm_swim_str_of(en->dev[i]);
}

void bm_registry_piggyback(struct bm_registry *r, struct bm_swim_enc *e)
{
	unsigned n = r->npending, sent = 0;
	int32_t done[BM_SWIM_REG_MAX];
	unsigned ndone = 0;

	for (unsigned k = 0; k < n; k++) {
		int32_t idx = r->pending[(r->pcursor + k) % n];
		struct bm_swim_reg_rec rec;

		to_rec(r, &r->e[idx], &rec);
		if (bm_swim_enc_reg(e, &rec) != 0)
			break;
		sent++;
		if (--r->e[idx].tx_left == 0 && ndone < BM_SWIM_REG_MAX)
			done[ndone++] = idx;
	}
	for (unsigned k = 0; k < ndone; k++)
		pend_remove(r, done[k]);
	if (r->npending)
		r->pcursor = (r->pcursor + sent) % r->npending;
}

void bm_registry_digest(struct bm_registry *r, struct bm_swim_enc *e)
{
	unsigned start = r->nw ? (unsigned)(r->pcursor % r->nw) : 0;

	/* more writers than fit: rotate which ones are asked about */
	for (unsigned k = 0; k < r->nw; k++) {
		const struct writer *w = &r->w[(start + k) % r->nw];
		if (!w->live || w->role != BM_SWIM_ROLE_SIGNAL || !w->epoch)
			continue;
		if (bm_swim_enc_digest(e, w->id, w->epoch, 0, w->synced))
			break;
	}
}

static int cmp_version(const void *a, const void *b, void *arg)
{
	const struct bm_registry *r = arg;
	uint64_t va = r->e[*(const int32_t *)a].version;
	uint64_t vb = r->e[*(const int32_t *)b].version;

	return va < vb ? -1 : va > vb;
}

int bm_registry_answer(struct bm_registry *r, const struct bm_swim_pkt *dg,
		       struct bm_swim_enc *e, size_t limit, unsigned max_pkts,
		       bm_registry_emit_fn *emit, void *ctx)
{
	int32_t *list = NULL;
	unsigned cap = 0, emitted = 0;
	size_t room_total = BM_SWIM_REG_DATA_ROOM(limit > BM_SWIM_PKT_MAX ? BM_SWIM_PKT_MAX : limit);

	for (unsigned wi = 0; wi < r->nw && emitted < max_pkts; wi++) {
		struct writer *w = &r->w[wi];
		uint64_t from = 0;
		unsigned n = 0, pos = 0;
		size_t wl = strlen(w->id);

		if (!w->live || w->role != BM_SWIM_ROLE_SIGNAL || !w->epoch || !w->synced)
			continue;
		for (unsigned d = 0; d < dg->ndig; d++) {
			if (!bm_swim_str_eq(dg->dig[d].writer, w->id))
				continue;
			if (dg->dig[d].epoch > w->epoch)
				from = UINT64_MAX;
			else if (dg->dig[d].epoch == w->epoch)
				from = dg->dig[d].version;
			break;
		}
		if (from >= w->synced)
			continue;
		for (int32_t i = w->head; i >= 0; i = r->e[i].wnext) {
			if (r->e[i].epoch != w->epoch || r->e[i].version <= from ||
			    r->e[i].version > w->synced)
				continue;
			if (bm_cluster_grow((void **)&list, &cap, n + 1, sizeof(*list)))
				goto out;
			list[n++] = i;
		}
		qsort_r(list, n, sizeof(*list), cmp_version, r);
		/* one or more packets per writer, each a complete range */
		while (emitted < max_pkts) {
			size_t used = BM_SWIM_DIGEST_SIZE(wl);
			unsigned first = pos;
			uint64_t to;
			struct bm_swim_reg_rec rec;

			while (pos < n) {
				size_t sz;
				to_rec(r, &r->e[list[pos]], &rec);
				sz = bm_swim_reg_size(&rec);
				if (used + sz > room_total || pos - first >= BM_SWIM_REG_MAX)
					break;
				used += sz;
				pos++;
			}
			to = pos == n ? w->synced : r->e[list[pos - 1]].version;
			if (pos == first && pos < n)
				break; /* cannot happen with bounded entries */
			bm_swim_enc_start(e, BM_SWIM_REG_DATA, limit);
			bm_swim_enc_digest_begin(e);
			bm_swim_enc_digest(e, w->id, w->epoch, from, to);
			for (unsigned k = first; k < pos; k++) {
				to_rec(r, &r->e[list[k]], &rec);
				if (bm_swim_enc_reg(e, &rec))
					break;
			}
			if (emit(ctx, e) == 0)
				emitted++;
			from = to;
			if (pos == n)
				break;
		}
	}
out:
	free(list);
	return (int)emitted;
}

void bm_registry_ranges(struct bm_registry *r, const struct bm_swim_pkt *p)
{
	for (unsigned d = 0; d < p->ndig; d++) {
		int32_t wi = writer_get(r, p->dig[d].writer.p, p->dig[d].writer.len, 0);
		struct writer *w;

		if (wi < 0 || wi == r->self)
			continue;
		w = &r->w[wi];
		if (!w->live || w->epoch != p->dig[d].epoch || p->dig[d].version <= w->synced)
			continue;
		if (p->dig[d].from > w->synced) {
			/* a packet before this one is late or lost: keep the
			 * claim until synced reaches its start */
			if (!w->ahead && !(w->ahead = malloc(AHEAD_MAX * sizeof(*w->ahead))))
				continue;
			if (w->nahead == AHEAD_MAX)
				w->nahead--; /* drop one: a later pull redoes it */
			w->ahead[w->nahead].from = p->dig[d].from;
			w->ahead[w->nahead].to = p->dig[d].version;
			w->nahead++;
			continue;
		}
		w->synced = p->dig[d].version;
		for (int progress = 1; progress;) {
			progress = 0;
			for (unsigned k = 0; k < w->nahead; k++) {
				struct range *g = &w->ahead[k];
				if (g->from <= w->synced) {
					if (g->to > w->synced)
						w->synced = g->to;
					*g = w->ahead[--w->nahead];
					progress = 1;
					break;
				}
			}
		}
	}
}
