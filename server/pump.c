/*
 * pump.c - delivery of each user's stream to each online device.
 *
 * A device has two numbers: committed (what it said it processed, persisted
 * by the queue) and sent (what this server pushed in this session).  When a
 * session opens, sent = committed; then whenever the stream grows (an append
 * completes) or the device commits, the pump pushes the records after sent,
 * in order, while fewer than cfg.window are unacknowledged.  Replay after a
 * reconnect and live delivery are therefore one mechanism, ordered, and
 * bounded per device: a device that stops committing stops receiving, and
 * holds no more than the window in the signal's queues.
 */
#include "srv.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_pool.h"
#include "bm_queue.h"
#include "bm_time.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define REC_HDR_MAX (3 + SRV_DEV_MAX)

struct append_ctx {
	struct srv *s;
	struct srv_user *u;
	srv_done_fn *cb;
	void *ud;
};

/* One per append, freed at its completion: reused, not malloc'ed. */
static struct bm_pool append_pool = BM_POOL_INIT(struct append_ctx, 8192);

void srv_pump_flush(struct srv *s)
{
	while (s->pump_list) {
		struct srv_user *u = s->pump_list;

		s->pump_list = u->pump_next;
		u->pump_next = NULL;
		u->pump_queued = 0;
		srv_pump_user(s, u);
	}
}

static void on_pump_ev(evutil_socket_t fd, short what, void *arg)
{
	srv_pump_flush(arg);
}

void srv_pump_release(struct srv *s)
{
	if (s->pump_ev)
		event_free(s->pump_ev);
	s->pump_ev = NULL;
	s->pump_list = NULL;
}

/* The user's stream grew: pump it once at the end of this loop turn, after
 * every completion of the poll ran. */
static void pump_later(struct srv *s, struct srv_user *u)
{
	if (u->pump_queued)
		return;
	if (!s->pump_ev)
		s->pump_ev = event_new(s->base, -1, 0, on_pump_ev, s);
	if (!s->pump_ev) {
		srv_pump_user(s, u);
		return;
	}
	if (!s->pump_list)
		event_active(s->pump_ev, 0, 0);
	u->pump_queued = 1;
	u->pump_next = s->pump_list;
	s->pump_list = u;
}

static void on_appended(void *ud, int status, uint64_t offset)
{
	struct append_ctx *c = ud;

	if (!status && offset > c->u->durable)
		c->u->durable = offset;
	if (c->cb)
		c->cb(c->ud, status, offset);
	if (!status)
		pump_later(c->s, c->u);
	bm_pool_put(&append_pool, c);
}

/* A cached record and its VersionUpdate share one block; blocks of up to
 * CACHE_BLOCK bytes (a short message's record, ~300 bytes with its
 * VersionUpdate) come from a free list, as every message makes two and a
 * loop turn frees them in hundreds. */
#define CACHE_BLOCK 512
static struct bm_pool cache_pool = { NULL, CACHE_BLOCK, 0, 8192 };

static void cache_free(struct srv_cached *e)
{
	if (e->rec && (size_t)e->len + e->alt_len <= CACHE_BLOCK)
		bm_pool_put(&cache_pool, e->rec);
	else
		free(e->rec);
	e->rec = e->alt = NULL;
}

static void cache_put(struct srv *s, struct srv_user *u, uint64_t offset,
		      const uint8_t *rec, size_t len, const bimip_MessageScheme *m,
		      const char *origin)
{
	static uint8_t vu[BM_ENV_VU_MAX];
	struct srv_cache *c = &u->cache;
	struct srv_cached *e;
	size_t vn = 0;

	if (!u->devs || !s->cfg.cache_records)
		return;
	if (!c->slot) {
		c->cap = (uint32_t)s->cfg.cache_records;
		c->slot = calloc(c->cap, sizeof(*c->slot));
		if (!c->slot)
			return;
	}
	if (c->count == c->cap) {
		/* Full: a slow device; the oldest goes, the log still has it. */
		cache_free(&c->slot[c->head]);
		c->head = (c->head + 1) % c->cap;
		c->count--;
	}
	if (rec[1] == SRV_REC_SENDER_COPY &&
	    m->which_payload == bimip_MessageScheme_chat_message_tag) {
		const bimip_ChatMessage *cm = &m->payload.chat_message;
		vn = bm_env_version_update(vu, sizeof(vu), u->eid, origin,
					   cm->message_id, cm->message_id_local,
					   cm->chat_id, cm->version, cm->server_received_at);
	}
	e = &c->slot[(c->head + c->count) % c->cap];
	e->rec = len + vn <= CACHE_BLOCK ? bm_pool_get(&cache_pool) : malloc(len + vn);
	if (!e->rec)
		return;
	memcpy(e->rec, rec, len);
	e->len = (uint32_t)len;
	e->offset = offset;
	e->alt = vn ? e->rec + len : NULL;
	e->alt_len = (uint32_t)vn;
	if (vn)
		memcpy(e->alt, vu, vn);
	c->count++;
}

static const struct srv_cached *cache_get(struct srv_user *u, uint64_t offset)
{
	struct srv_cache *c = &u->cache;

	for (uint32_t i = 0; i < c->count; i++) {
		struct srv_cached *e = &c->slot[(c->head + i) % c->cap];
		if (e->offset == offset)
			return e;
		if (e->offset > offset)
			break;
	}
	return NULL;
}

void srv_cache_release(struct srv_user *u)
{
	struct srv_cache *c = &u->cache;

	for (uint32_t i = 0; i < c->count; i++)
		cache_free(&c->slot[(c->head + i) % c->cap]);
	free(c->slot);
	memset(c, 0, sizeof(*c));
}

/* Drop what every online device has been sent; everything when none is. */
void srv_cache_trim(struct srv_user *u)
{
	struct srv_cache *c = &u->cache;
	uint64_t low = UINT64_MAX;

	for (struct srv_dev *d = u->devs; d; d = d->next)
		if (d->sent < low)
			low = d->sent;
	while (c->count && c->slot[c->head].offset <= low) {
		cache_free(&c->slot[c->head]);
		c->head = (c->head + 1) % c->cap;
		c->count--;
	}
	if (!c->count && !u->devs) {
		free(c->slot);
		memset(c, 0, sizeof(*c));
	}
}

int srv_stream_append(struct srv *s, struct srv_user *u, int kind,
		      const char *origin_dev, bimip_MessageScheme *m,
		      const uint8_t *env, size_t env_len,
		      uint64_t *offset, srv_done_fn *cb, void *ud)
{
	static uint8_t rec[REC_HDR_MAX + BM_ENV_MAX_BYTES];
	char name[SRV_EID_MAX + 8];
	size_t dl = origin_dev ? strlen(origin_dev) : 0, n;
	struct append_ctx *c;
	uint64_t off;
	int rc;

	if (dl > SRV_DEV_MAX)
		return BM_EINVAL;
	rec[0] = 1;
	rec[1] = (uint8_t)kind;
	rec[2] = (uint8_t)dl;
	memcpy(rec + 3, origin_dev, dl);
	if (env) {
		if (env_len > sizeof(rec) - 3 - dl)
			return BM_ETOOBIG;
		memcpy(rec + 3 + dl, env, env_len);
		n = env_len;
	} else {
		rc = bm_env_encode(m, rec + 3 + dl, sizeof(rec) - 3 - dl, &n);
		if (rc)
			return rc;
	}
	c = bm_pool_get(&append_pool);
	if (!c)
		return BM_ENOMEM;
	c->s = s;
	c->u = u;
	c->cb = cb;
	c->ud = ud;
	srv_stream_name(u->eid, name, sizeof(name));
	rc = bm_queue_append(s->q, name, rec, 3 + dl + n, &off, on_appended, c);
	if (rc) {
		bm_pool_put(&append_pool, c);
		return rc;
	}
	if (offset)
		*offset = off;
	cache_put(s, u, off, rec, 3 + dl + n, m, origin_dev);
	(*s->m.appends)++;
	return 0;
}

static int push_version_update(struct srv *s, struct srv_dev *d,
			       const uint8_t *p, size_t n, int64_t offset)
{
	static bimip_MessageScheme in;
	static uint8_t buf[BM_ENV_VU_MAX];
	const bimip_ChatMessage *c = &in.payload.chat_message;
	size_t vn;

	/* The origin device sees its own message as the VersionUpdate
	 * answering it. */
	if (bm_env_decode(p, n, &in, NULL) ||
	    in.which_payload != bimip_MessageScheme_chat_message_tag)
		return srv_push_raw(s, d, p, n, offset);
	vn = bm_env_version_update(buf, sizeof(buf), d->user->eid, d->device,
				   c->message_id, c->message_id_local, c->chat_id,
				   c->version, c->server_received_at);
	return vn ? srv_push_raw(s, d, buf, vn, offset) : BM_ETOOBIG;
}

struct pump_ctx {
	struct srv *s;
	struct srv_dev *d;
	int stalled;
};

static int on_record(void *ud, const struct bm_queue_meta *meta,
		     const void *data, int status)
{
	struct pump_ctx *c = ud;
	struct srv_dev *d = c->d;
	const uint8_t *p = data;
	size_t dl;
	int rc;

	if (status || meta->len < 3 || p[0] != 1 ||
	    (dl = p[2]) + 3 > meta->len) {
		/* Destroyed or unreadable: the offset is consumed, nothing sent. */
		if (!status)
			bm_warn("pump", "skipping malformed record %llu of '%s'",
				(unsigned long long)meta->offset, d->user->eid);
		d->sent = meta->offset;
		return 0;
	}
	if (p[1] == SRV_REC_SENDER_COPY && dl == strlen(d->device) &&
	    memcmp(p + 3, d->device, dl) == 0)
		rc = push_version_update(c->s, d, p + 3 + dl, meta->len - 3 - dl,
					 (int64_t)meta->offset);
	else
		rc = srv_push_raw(c->s, d, p + 3 + dl, meta->len - 3 - dl,
				  (int64_t)meta->offset);
	if (rc == BM_EAGAIN) {
		c->stalled = 1;
		c->s->pump_stalled = 1;
		return 1;
	}
	d->sent = meta->offset;
	return 0;
}

void srv_pump(struct srv *s, struct srv_dev *d)
{
	struct srv_user *u = d->user;
	char name[SRV_EID_MAX + 8];
	struct pump_ctx c = { s, d, 0 };

	if (d->pumping)
		return;
	d->pumping = 1;
	srv_stream_name(u->eid, name, sizeof(name));
	/* Live delivery from memory while the cache has the next record. */
	while (d->sent < u->durable && d->sent < d->committed + (uint64_t)s->cfg.window) {
		const struct srv_cached *e = cache_get(u, d->sent + 1);
		struct bm_queue_meta meta;

		if (!e)
			break;
		if (e->alt && (size_t)e->rec[2] == strlen(d->device) &&
		    !memcmp(e->rec + 3, d->device, e->rec[2])) {
			int rc = srv_push_raw(s, d, e->alt, e->alt_len, (int64_t)e->offset);
			if (rc == BM_EAGAIN) {
				s->pump_stalled = 1;
				break;
			}
			d->sent = e->offset;
			continue;
		}
		meta.offset = e->offset;
		meta.len = e->len;
		meta.ts_ms = 0;
		on_record(&c, &meta, e->rec, 0);
		if (c.stalled)
			break;
	}
	while (!c.stalled && d->sent < u->durable &&
	       d->sent < d->committed + (uint64_t)s->cfg.window) {
		uint64_t room = d->committed + (uint64_t)s->cfg.window - d->sent;
		uint64_t avail = u->durable - d->sent;
		unsigned max = (unsigned)(room < avail ? room : avail);
		uint64_t before = d->sent;
		int n = bm_queue_scan(s->q, name, d->sent, max > 256 ? 256 : max,
				      on_record, &c);

		if (n < 0) {
			bm_err("pump", "cannot read stream of '%s' after %llu: %s",
			       u->eid, (unsigned long long)d->sent, bm_strerror(n));
			break;
		}
		if (c.stalled || d->sent == before) {
			/* Retention removed records below the first available one. */
			uint64_t first;
			if (!c.stalled && !bm_queue_stream_head(s->q, name, NULL, &first) &&
			    first > d->sent + 1) {
				d->sent = first - 1;
				continue;
			}
			break;
		}
	}
	d->pumping = 0;
	srv_cache_trim(u);
}

void srv_pump_user(struct srv *s, struct srv_user *u)
{
	for (struct srv_dev *d = u->devs; d; d = d->next)
		srv_pump(s, d);
	srv_cache_trim(u);
}
