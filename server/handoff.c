/*
 * handoff.c - data moves with ownership.
 *
 * When the owner set changes (a server joins, or one leaves with `bimipctl
 * cluster leave`; a dead server does not change it, peer.c), each server
 * "sweeps": every user stream, chat and pending message it holds but no
 * longer owns is sent to its new owner, which stores it and answers once
 * durable.  When all its hand-offs are acknowledged, a server tells every
 * peer SETTLED(fingerprint of the owner set).  A server serves requests
 * (sessions, stanzas, appends) only while settled: its own sweep is done
 * and every live peer has said SETTLED for the same owner set.  So nobody
 * writes a moving user until its data has arrived, and a change costs a
 * short pause (503, the clients retry) rather than a divergence.
 *
 * A leaving server owns nothing from the moment it is asked to leave
 * (srv_owns is false for everything), refuses every write, sweeps all its
 * data to the others, and only then says LEFT in gossip and stops: nothing
 * acknowledged is lost.  While it hands off, the others still count it in
 * the owner set, so nobody else writes its users either.
 *
 * HANDOFF (header aux = what, eid, seq, offset; body):
 *   "recs"  stream records of u:<eid>, first at offset: [u32 len][record]..
 *           (a record the stream has already is skipped: records never
 *           change, so the copy's prefix is the original's)
 *   "user"  JSON {"subs":[..],"blk":[..],"seen":ms,"lat","lon","in",
 *           "devs":{"device":committed offset}}, after its records
 *   "chat"  JSON {"a","b","v","idem":[{"e","d","l","v"}..]}
 *   "pm"    a pending message's "pm" state record
 *           (or only {"devs":..} when this server has no state for it)
 * HANDOFF_ACK: seq; body "<code> <text>".   SETTLED: body = fingerprint.
 *
 * Once the new owner has taken a user or a pending message, this server
 * logs "ugone"/"pmgone" (server/state.c): its copy is stale from then on and
 * is never handed again.  Handing it again at the next owner-set change
 * would replace the owner's newer contacts, blocks and device offsets with
 * old ones, and re-drive a message already completed.  The stale stream
 * records stay on disk until retention deletes their segments; if the user
 * comes back, its new owner's records are the same prefix and are skipped.
 */
#include "srv.h"

#include "bm_err.h"
#include "bm_idmap.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"

#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_BYTES (256 * 1024)
#define SETTLED_EVERY_MS 300

uint64_t srv_owner_fingerprint(struct srv *s)
{
	uint64_t fp = 0x5eed;

	for (int i = 0; i < s->n_peers; i++)
		if (srv_peer_owner_set(s, &s->peers[i]))
			fp += bm_mix64(s->peers[i].hash);
	return fp;
}

int srv_settled(struct srv *s)
{
	uint64_t fp;

	if (!s->n_peers)
		return 1;
	/* Restarted with seeds, it does not know the others yet: alone in its
	 * own view it would own everyone, and write users that are not its. */
	if (!bm_cluster_knows_cluster(s->cluster))
		return 0;
	fp = srv_owner_fingerprint(s);
	if (s->swept_fp != fp)
		return 0;
	for (int i = 0; i < s->n_peers; i++) {
		const struct srv_peer *p = &s->peers[i];
		if (p->self || p->state > BM_SWIM_SUSPECT)
			continue;
		if ((uint64_t)(uintptr_t)bm_map_get(&s->settled_by, p->id) != fp)
			return 0;
	}
	return 1;
}

/* --- sending --------------------------------------------------------------------- */

void srv_handoff_forget(struct srv *s)
{
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&s->handoff_wait, &it, &k, &v);)
		json_decref(v);
	bm_map_release(&s->handoff_wait);
	bm_map_init(&s->handoff_wait);
	bm_map_release(&s->handoff_sent);
	bm_map_init(&s->handoff_sent);
	s->sweep_more = 0;
	s->sweep_chats_done = 0;
}

/* The window of unanswered hand-off messages is full: the sweep stops
 * here and resumes when answers come back. */
static int window_full(const struct srv *s)
{
	return s->handoff_wait.count >= (size_t)s->cfg.handoff_window;
}

/* Sends one HANDOFF; once the new owner answers that it took it, the state
 * record taken (stolen; NULL for none) is logged here. */
static int send_handoff(struct srv *s, const char *to_key, const char *what,
			const char *eid, uint64_t offset, const void *body, size_t n,
			json_t *taken)
{
	const struct srv_peer *p = srv_owner(s, to_key);
	struct bm_ipc_hdr h;
	char seq[24];

	if (!p || p->self || !taken) {
		json_decref(taken);
		return p && !p->self ? BM_ENOMEM : BM_EUNAVAIL;
	}
	if (!bm_map_get(&s->settled_by, p->id)) {
		/* Not heard from yet: it may not know us, and would drop what we
		 * send.  It says SETTLED every 300 ms once it knows us. */
		json_decref(taken);
		return BM_EAGAIN;
	}
	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_HANDOFF;
	h.seq = ++s->rpc_seq;
	h.offset = (int64_t)offset;
	snprintf(h.aux, sizeof(h.aux), "%s", what);
	snprintf(h.eid, sizeof(h.eid), "%s", eid);
	snprintf(seq, sizeof(seq), "%" PRIu64, h.seq);
	if (bm_map_put(&s->handoff_wait, seq, taken, NULL)) {
		json_decref(taken);
		return BM_ENOMEM;
	}
	if (srv_peer_send(s, p, &h, body, n)) {
		json_decref(bm_map_del(&s->handoff_wait, seq));
		return BM_EUNAVAIL;
	}
	return 0;
}

static int send_json(struct srv *s, const char *to_key, const char *what, const char *eid,
		     json_t *o, json_t *taken)
{
	char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
	int rc;

	if (txt) {
		rc = send_handoff(s, to_key, what, eid, 0, txt, strlen(txt), taken);
	} else {
		json_decref(taken);
		rc = BM_ENOMEM;
	}
	free(txt);
	json_decref(o);
	return rc;
}

struct recs {
	struct bm_buf b;
	uint64_t first, last;
	unsigned count;
};

static int on_rec(void *ud, const struct bm_queue_meta *meta, const void *data, int status)
{
	struct recs *c = ud;
	static const uint8_t placeholder = 0;   /* a destroyed record: kept as a gap filler */
	const void *p = status ? &placeholder : data;
	uint32_t len = status ? 1 : meta->len;

	if (!c->count)
		c->first = meta->offset;
	c->last = meta->offset;
	c->count++;
	if (bm_buf_add(&c->b, &len, 4) || bm_buf_add(&c->b, p, len))
		return 1;
	return c->b.len >= BATCH_BYTES;
}

static int on_dev(void *ud, const char *device, uint64_t offset)
{
	json_object_set_new(ud, device, json_integer((json_int_t)offset));
	return 0;
}

static void sent_set(struct srv *s, const char *eid, uint64_t after, int user)
{
	bm_map_put(&s->handoff_sent, eid, (void *)(uintptr_t)(((after << 1) | (unsigned)user) + 1),
		   NULL);
}

/* Sends what is left of eid's stream (from where this round got to), then
 * its state; BM_EFULL when the window fills first. */
static int hand_user(struct srv *s, const char *eid)
{
	char name[SRV_EID_MAX + 8];
	struct srv_user *u = srv_user_get(s, eid, 0);
	uintptr_t sent = (uintptr_t)bm_map_get(&s->handoff_sent, eid);
	uint64_t head = 0, after = sent ? (uint64_t)(sent - 1) >> 1 : 0;
	json_t *o, *devs;
	int rc;

	if (sent && ((sent - 1) & 1))
		return 0;   /* all sent this round: waiting for the answer */
	srv_stream_name(eid, name, sizeof(name));
	if (bm_queue_stream_head(s->q, name, &head, NULL))
		head = 0;
	while (after < head) {
		struct recs c = { BM_BUF_INIT, 0, 0, 0 };

		if (window_full(s)) {
			sent_set(s, eid, after, 0);
			return BM_EFULL;
		}
		bm_queue_scan(s->q, name, after, (unsigned)s->cfg.handoff_batch, on_rec, &c);
		if (!c.count) {
			bm_buf_release(&c.b);
			break;
		}
		rc = send_handoff(s, eid, "recs", eid, c.first, c.b.data, c.b.len, json_null());
		bm_buf_release(&c.b);
		if (rc) {
			sent_set(s, eid, after, 0);
			return rc;
		}
		(*s->m.handoff_records) += c.count;
		after = c.last;
	}
	if (window_full(s)) {
		sent_set(s, eid, after, 0);
		return BM_EFULL;
	}
	sent_set(s, eid, after, 1);
	devs = json_object();
	bm_queue_devices(s->q, name, on_dev, devs);
	/* No state here (a stream only): send the device offsets alone, so the
	 * new owner keeps whatever state it has. */
	o = u ? srv_user_json(u) : json_object();
	if (o)
		json_object_set_new(o, "devs", devs);
	else
		json_decref(devs);
	return send_json(s, eid, "user", eid, o, json_pack("{s:s, s:s}", "t", "ugone", "e", eid));
}

struct names {
	char **v;
	size_t n, cap;
};

static int names_add(struct names *c, const char *eid)
{
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 64;
		char **v = realloc(c->v, cap * sizeof(*v));
		if (!v)
			return 1;
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n] = strdup(eid);
	if (c->v[c->n])
		c->n++;
	return 0;
}

static int on_stream_name(void *ud, const char *name, uint64_t head, uint64_t first)
{
	return strncmp(name, "u:", 2) ? 0 : names_add(ud, name + 2);
}

/* Everything held here that another server owns now; 0 once all is sent. */
static int sweep(struct srv *s)
{
	struct names nm = { NULL, 0, 0 };
	const char *k;
	void *v;
	int rc = 0;

	bm_queue_streams(s->q, on_stream_name, &nm);
	/* Users with state but no stream yet; the others are listed already.
	 * One with no state at all is skipped: handing it would only replace
	 * whatever the owner has with nothing. */
	for (size_t it = 0; bm_map_next(&s->users, &it, &k, &v);) {
		const struct srv_user *u = v;
		char name[SRV_EID_MAX + 8];

		srv_stream_name(k, name, sizeof(name));
		if (!srv_owns(s, k) && !u->gone &&
		    (u->subscribers.count || u->blocked.count || u->last_seen) &&
		    bm_queue_stream_head(s->q, name, NULL, NULL) == BM_ENOENT)
			names_add(&nm, k);
	}
	for (size_t i = 0; i < nm.n; i++) {
		struct srv_user *u = nm.v[i] ? srv_user_get(s, nm.v[i], 0) : NULL;

		if (u && u->gone && srv_owns(s, nm.v[i])) {
			/* Owned again without a hand-off back (cannot happen with
			 * the current owner rule): this copy is the best there is. */
			srv_state_log(s, json_pack("{s:s, s:s}", "t", "uback", "e", nm.v[i]),
				      NULL, NULL);
		} else if (!rc && nm.v[i] && !srv_owns(s, nm.v[i]) && !(u && u->gone)) {
			/* Its sessions go: the signals re-open them at the owner. */
			while (u && u->devs) {
				struct srv_dev *d = u->devs;
				srv_kick(s, d->rid, d->rid_len, d->session, 4004,
					 "user moved to another server; reconnect");
				u->devs = d->next;
				u->n_devs--;
				free(d);
				(*s->m.sessions)--;
			}
			if (u)
				srv_cache_trim(u);
			rc = hand_user(s, nm.v[i]);
		}
		free(nm.v[i]);
	}
	free(nm.v);
	if (rc || s->sweep_chats_done)
		return rc;
	/* Chats and pending messages are small: sent in one go, once a round. */
	s->sweep_chats_done = 1;
	for (size_t it = 0; !rc && bm_map_next(&s->chats, &it, &k, &v);) {
		struct srv_chat *c = v;
		json_t *idem;

		if (srv_owns(s, c->id))
			continue;
		idem = json_array();
		for (size_t i = 0; i < s->idem.count; i++) {
			const char *key;
			struct srv_idem *e = bm_keyring_at(&s->idem, i, &key);
			char eid[SRV_EID_MAX + 1], dev[SRV_DEV_MAX + 1];
			const char *local;

			if (e->durable != 1 || strcmp(e->chat_id, c->id) ||
			    srv_idem_parts(key, eid, dev, &local))
				continue;
			json_array_append_new(idem, json_pack("{s:s, s:s, s:s, s:I}", "e", eid,
							      "d", dev, "l", local, "v",
							      (json_int_t)e->version));
		}
		rc = send_json(s, c->id, "chat", "", json_pack("{s:s, s:s, s:I, s:o}", "a", c->a,
							     "b", c->b, "v",
							     (json_int_t)c->version, "idem", idem),
			       json_null());
	}
	for (size_t it = 0; !rc && bm_map_next(&s->pending, &it, &k, &v);) {
		struct srv_pending *p = v;
		if (!srv_owns(s, p->chat))
			rc = send_json(s, p->chat, "pm", "", srv_pending_json(p),
				       json_pack("{s:s, s:s, s:I}", "t", "pmgone", "c", p->chat,
						 "v", (json_int_t)p->version));
	}
	return rc;
}

/* --- receiving ------------------------------------------------------------------- */

struct ack_ctx {
	struct srv *s;
	char peer[BM_IPC_ORIGIN_MAX + 1];
	char eid[SRV_EID_MAX + 1];
	uint64_t seq;
};

static void ack(struct srv *s, const char *peer, uint64_t seq, int status)
{
	srv_peer_answer(s, peer, BM_IPC_HANDOFF_ACK, seq, status, 0);
}

static void on_stored(void *ud, int status, uint64_t offset)
{
	struct ack_ctx *c = ud;
	struct srv_user *u = c->eid[0] ? srv_user_get(c->s, c->eid, 0) : NULL;
	char name[SRV_EID_MAX + 8];
	uint64_t head;

	(void)offset;
	srv_stream_name(c->eid, name, sizeof(name));
	if (u && !bm_queue_stream_head(c->s->q, name, &head, NULL) && head > u->durable)
		u->durable = head;
	ack(c->s, c->peer, c->seq, status);
	free(c);
}

static struct ack_ctx *ctx_of(struct srv *s, const struct bm_ipc_hdr *h)
{
	struct ack_ctx *c = calloc(1, sizeof(*c));

	if (c) {
		c->s = s;
		snprintf(c->peer, sizeof(c->peer), "%s", h->origin);
		snprintf(c->eid, sizeof(c->eid), "%s", h->eid);
		c->seq = h->seq;
	}
	return c;
}

/* 1 if the stream's record at off is not the bytes p[0..len) (a gap filler
 * for a destroyed record matches: it was erased on purpose). */
static int differs(struct srv *s, const char *name, uint64_t off, const uint8_t *p,
		   uint32_t len)
{
	struct bm_buf b = BM_BUF_INIT;
	int rc = bm_queue_read(s->q, name, off, &b, NULL);
	int d = rc == 0 && (b.len != len || memcmp(b.data, p, len)) &&
		!(len == 1 && p[0] == 0);

	bm_buf_release(&b);
	return d;
}

/* Records the stream has already are skipped; the rest appended, the last
 * one with the completion that answers (completions run in append order).
 * A skipped record should be the same bytes (records never change, and a
 * copy's prefix is the original's).  If it is not, the stream went on here
 * without the sender's data: a server joined while the old owner was dead
 * (docs/cluster.md, limits).  That is counted and logged as an error, not
 * hidden; the sender's copy stays on its disk. */
static int take_recs(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *p, size_t n,
		     struct ack_ctx *c)
{
	char name[SRV_EID_MAX + 8];
	uint64_t head = 0, off = (uint64_t)h->offset, got, conflicts = 0;
	size_t i, last = SIZE_MAX;
	int rc;

	srv_stream_name(h->eid, name, sizeof(name));
	if (bm_queue_stream_head(s->q, name, &head, NULL))
		head = 0;
	if (off < 1 || off > head + 1) {
		bm_err("handoff", "stream of '%s': records from %" PRIu64 " after head %" PRIu64
		       " (a gap)", h->eid, off, head);
		return BM_ERANGE;
	}
	for (i = 0; i + 4 <= n;) {
		uint32_t len;

		memcpy(&len, p + i, 4);
		if (len > n - i - 4)
			return BM_EPROTO;
		last = i;
		i += 4 + len;
	}
	if (i != n)
		return BM_EPROTO;
	for (i = 0; i + 4 <= n; off++) {
		uint32_t len;

		memcpy(&len, p + i, 4);
		if (off == head + 1) {
			rc = bm_queue_append(s->q, name, p + i + 4, len, &got, i == last ? on_stored
										 : NULL,
					     i == last ? c : NULL);
			if (rc)
				return rc;
			head = got;
			if (i == last)
				break;
		} else if (off <= head && differs(s, name, off, p + i + 4, len)) {
			conflicts++;
		}
		i += 4 + len;
	}
	if (conflicts) {
		(*s->m.handoff_conflicts) += conflicts;
		bm_err("handoff", "stream of '%s': %" PRIu64 " records from '%s' differ from ours "
		       "at the same offsets (the stream went on here without them: a server "
		       "joined or left while its old owner was down); they stay on '%s' only",
		       h->eid, conflicts, h->origin, h->origin);
	}
	if (i != last)
		on_stored(c, 0, head);   /* all there already */
	return 0;
}

static int take_user(struct srv *s, const struct bm_ipc_hdr *h, json_t *o,
		     struct ack_ctx *c)
{
	char name[SRV_EID_MAX + 8];
	json_t *devs = json_object_get(o, "devs"), *v, *rec;
	int fields = !!json_object_get(o, "subs") + !!json_object_get(o, "blk") +
		     !!json_object_get(o, "seen");
	const char *dev;
	struct srv_user *u;
	int rc;

	/* Either the whole state, or none (the previous owner had none). */
	if ((devs && !json_is_object(devs)) || (fields && fields != 3))
		return BM_EINVAL;
	srv_stream_name(h->eid, name, sizeof(name));
	json_object_foreach(devs, dev, v)
		bm_queue_commit_offset(s->q, name, dev, (uint64_t)json_integer_value(v), NULL,
				       NULL);
	if (!fields)
		return srv_state_log(s, json_pack("{s:s, s:s}", "t", "uback", "e", h->eid),
				     on_stored, c);
	/* The body is the record, less the device offsets applied above. */
	rec = json_deep_copy(o);
	if (!rec)
		return BM_ENOMEM;
	json_object_del(rec, "devs");
	json_object_set_new(rec, "t", json_string("uimp"));
	json_object_set_new(rec, "e", json_string(h->eid));
	rc = srv_state_log(s, rec, on_stored, c);
	u = srv_user_get(s, h->eid, 0);
	if (u && !bm_queue_stream_head(s->q, name, &u->durable, NULL))
		srv_pump_user(s, u);
	return rc;
}

static void on_handoff(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		       size_t n)
{
	struct ack_ctx *c = ctx_of(s, h);
	json_t *o = NULL;
	int rc;

	if (!c) {
		ack(s, h->origin, h->seq, BM_ENOMEM);
		return;
	}
	if (!strcmp(h->aux, "recs")) {
		rc = take_recs(s, h, body, n, c);
	} else if (!(o = json_loadb((const char *)body, n, 0, NULL))) {
		rc = BM_EPROTO;
	} else if (!strcmp(h->aux, "user")) {
		rc = take_user(s, h, o, c);
	} else if (!strcmp(h->aux, "chat")) {
		json_t *e;
		size_t i;

		json_array_foreach(json_object_get(o, "idem"), i, e) {
			char cid[SRV_CHAT_ID_LEN + 1];
			json_t *r;
			srv_chat_id(json_string_value(json_object_get(o, "a")) ?: "",
				    json_string_value(json_object_get(o, "b")) ?: "", cid);
			r = json_pack("{s:s, s:O, s:O, s:O, s:s, s:O}", "t", "idem", "e",
				      json_object_get(e, "e"), "d", json_object_get(e, "d"), "l",
				      json_object_get(e, "l"), "c", cid, "v",
				      json_object_get(e, "v"));
			if (r)
				srv_state_log(s, r, NULL, NULL);
		}
		rc = srv_state_log(s, json_pack("{s:s, s:O, s:O, s:O}", "t", "chat", "a",
						json_object_get(o, "a"), "b",
						json_object_get(o, "b"), "v",
						json_object_get(o, "v")), on_stored, c);
	} else if (!strcmp(h->aux, "pm")) {
		rc = srv_state_log(s, json_incref(o), on_stored, c);
	} else {
		rc = BM_EPROTO;
	}
	json_decref(o);
	if (rc) {
		bm_warn("handoff", "refused %s of '%s' from '%s': %s", h->aux, h->eid, h->origin,
			bm_strerror(rc));
		ack(s, h->origin, h->seq, rc);
		free(c);
	}
}

void srv_handoff_msg(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		     size_t n)
{
	char txt[32];

	switch (h->kind) {
	case BM_IPC_HANDOFF:
		on_handoff(s, h, body, n);
		break;
	case BM_IPC_HANDOFF_ACK: {
		json_t *taken;

		snprintf(txt, sizeof(txt), "%" PRIu64, h->seq);
		taken = bm_map_del(&s->handoff_wait, txt);
		if (!taken)
			break;   /* of a sweep given up on */
		s->sweep_started_ms = bm_mono_ms();   /* progress */
		if (n && body[0] != '0') {
			bm_warn("handoff", "'%s' did not take a hand-off: %.*s", h->origin,
				(int)n, (const char *)body);
			s->handoff_failed = 1;
			json_decref(taken);
		} else if (!json_is_null(taken)) {
			if (!strcmp(json_string_value(json_object_get(taken, "t")), "ugone"))
				(*s->m.handoff_users)++;
			srv_state_log(s, taken, NULL, NULL);
		}
		if (s->sweep_more)
			srv_handoff_tick(s);   /* room in the window: go on at once */
		break;
	}
	case BM_IPC_SETTLED:
		snprintf(txt, sizeof(txt), "%.*s", (int)(n < 31 ? n : 31), (const char *)body);
		bm_map_put(&s->settled_by, h->origin,
			   (void *)(uintptr_t)strtoull(txt, NULL, 10), NULL);
		break;
	}
}

/* --- the loop -------------------------------------------------------------------- */

static void on_leave_done(evutil_socket_t fd, short what, void *arg)
{
	struct srv *s = arg;

	event_base_loopexit(s->base, NULL);
}

void srv_handoff_tick(struct srv *s)
{
	uint64_t fp, now = bm_mono_ms();

	if (!s->n_peers)
		return;
	fp = srv_owner_fingerprint(s);
	/* sweep_started_ms: the start of a round, then each answer. */
	if (s->handoff_wait.count && !s->swept_fp && now - s->sweep_started_ms > 5000) {
		bm_warn("handoff", "%zu hand-offs not answered in 5 s: again",
			s->handoff_wait.count);
		s->handoff_failed = 1;
		srv_handoff_forget(s);
	}
	if (fp != s->sweep_fp || (s->handoff_failed && now >= s->sweep_retry_ms) ||
	    (s->sweep_more && now >= s->sweep_retry_ms &&
	     s->handoff_wait.count <= (size_t)s->cfg.handoff_window / 2)) {
		int rc;

		if (fp != s->sweep_fp || s->handoff_failed) {
			/* A new round: from the start, nothing outstanding. */
			if (fp != s->sweep_fp)
				bm_info("handoff", "owner set changed: handing off what moved");
			s->sweep_fp = fp;
			s->swept_fp = 0;
			s->handoff_failed = 0;
			srv_handoff_forget(s);
			s->sweep_started_ms = now;
		}
		s->sweep_more = 0;
		rc = sweep(s);
		if (rc == BM_EFULL) {
			s->sweep_more = 1;   /* resumes as answers come back */
		} else if (rc == BM_EAGAIN) {
			bm_debug("handoff", "a new owner has not spoken yet; sweeping again soon");
			s->sweep_more = 1;
			s->sweep_retry_ms = now + 100;
		} else if (rc) {
			bm_warn("handoff", "hand-off incomplete (%s); trying again",
				bm_strerror(rc));
			s->handoff_failed = 1;
			s->sweep_retry_ms = now + 1000;
		}
	}
	if (!s->swept_fp && !s->handoff_wait.count && !s->handoff_failed && !s->sweep_more) {
		s->swept_fp = fp;
		bm_info("handoff", "hand-off done for this owner set (%" PRIu64 " users so far)",
			*s->m.handoff_users);
		if (s->leaving && !s->left) {
			struct timeval tv = { 2, 0 };
			char marker[600];
			FILE *f;

			/* Started again with this data directory, it may rejoin:
			 * what it held was handed off (srv_cluster_open). */
			snprintf(marker, sizeof(marker), "%.500s/left-cluster", s->cfg.data_dir);
			f = fopen(marker, "w");
			if (!f || fclose(f))
				bm_warn("handoff", "cannot write '%s'", marker);
			s->left = 1;
			bm_info("handoff", "everything handed off: leaving the cluster");
			bm_cluster_leave(s->cluster);
			event_base_once(s->base, -1, EV_TIMEOUT, on_leave_done, s, &tv);
		}
	}
	if (s->swept_fp == fp && now - s->settled_sent_ms >= SETTLED_EVERY_MS) {
		char body[32];
		int n = snprintf(body, sizeof(body), "%" PRIu64, fp);

		s->settled_sent_ms = now;
		for (int i = 0; i < s->n_peers; i++) {
			struct bm_ipc_hdr h;
			if (s->peers[i].self || s->peers[i].state > BM_SWIM_SUSPECT)
				continue;
			memset(&h, 0, sizeof(h));
			h.kind = BM_IPC_SETTLED;
			srv_peer_send(s, &s->peers[i], &h, body, (size_t)n);
		}
	}
}

int srv_leave(struct srv *s, const char **down)
{
	if (!s->cluster || !s->n_peers)
		return BM_ESTATE;
	/* Users move from the leaver and, by the owner rule, between the others;
	 * one whose owner is down would move without its data. */
	for (int i = 0; !s->leaving && i < s->n_peers; i++) {
		const struct srv_peer *p = &s->peers[i];
		if (!p->self && srv_peer_owner_set(s, p) && p->state != BM_SWIM_ALIVE) {
			*down = p->id;
			return BM_EAGAIN;
		}
	}
	if (!s->leaving) {
		bm_info("handoff", "asked to leave: handing everything off first");
		s->leaving = 1;
	}
	return 0;
}
