/*
 * peer.c - the other bimip-servers: who owns what, and what crosses between
 * servers over ZeroMQ.
 *
 * Ownership.  owner(key) is rendezvous hashing of key (an eid, or a chat id)
 * over the servers gossip knows that have not left: score = bm_mix64(
 * bm_hash64(node) ^ bm_hash64(key)), the highest wins (the signals compute
 * the same, signal/link.c).  A dead server keeps what it owns: its users'
 * data is on its disk, and they are unavailable (503) until it is back.  A
 * server that leaves, or one that joins, moves data with the ownership
 * (handoff.c).  Every request is checked against this view: a server never
 * writes for a user or chat it does not own.
 *
 * Links.  Each server connects one DEALER (routing id = its node id) to every
 * other server's ROUTER, the one signals connect to.  Messages are one-way;
 * an answer is a message the other way that carries the asker's seq.  The
 * DEALERs are ZMQ_IMMEDIATE: nothing queues for a peer that is not
 * connected; the send fails and the caller tries again later.
 *
 * Kinds (header fields; body):
 *   FORWARD   eid/device = the authenticated sender, session, aux = the
 *             signal's routing id, flags 0x02 = the sender has the target as
 *             subscriber (awareness); body = the client's MessageScheme.
 *             Sent to the owner of the stanza's target (the chat for a chat
 *             message or an acknowledgement, the receiver for a signal, the
 *             looked-up user for an awareness request), which answers the
 *             session itself through its ROUTER: every signal connects to
 *             every server.
 *   APPEND    eid = whose stream, device = origin device, aux = message id
 *             (appended once: a repeat answers the first offset), seq,
 *             flags 0x01 = sender copy; body = [u8 n][check eid][envelope]:
 *             refused (403) when eid has blocked the check eid, 503 from a
 *             server that does not own eid.
 *   APPENDED  seq, offset; body "<code> <text>": 0 once durable.
 *   NOTIFY    eid = a subscriber; body = an AwarenessNotification scheme
 *             with the location: the subscriber's owner removes it unless
 *             the subscriber has the subject as subscriber too.
 *   HANDOFF, HANDOFF_ACK, SETTLED: handoff.c.
 *
 * Chat messages across servers.  The chat's owner assigns the version and
 * logs a "pm" (pending) state record holding the whole message before it
 * asks for the copies: the receiver's first (its owner checks blocks), then
 * the sender's (the sender's VersionUpdate comes from it), each appended at
 * most once per message id.  With both durable it logs the "msg" record.
 * Pending messages are driven again after a restart and retried while a
 * peer is away, so a message once accepted reaches both streams.
 */
#include "srv.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_idmap.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "bm_zmq.h"

#include <event2/event.h>
#include <inttypes.h>
#include <mbedtls/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define RPC_TIMEOUT_MS 5000
#define SEEN_MAX 262144             /* remembered (eid, message id) */
#define SEEN_TAIL 4096              /* records of a stream indexed at first use */
#define F_SENDER_COPY 0x01
#define F_MUTUAL 0x02

struct srv_rpc {
	uint64_t deadline;
	srv_done_fn *fn;
	void *ud;
};

/* --- peers and ownership ----------------------------------------------------- */

struct srv_peer *srv_peer_find(struct srv *s, const char *id)
{
	for (int i = 0; i < s->n_peers; i++)
		if (!strcmp(s->peers[i].id, id))
			return &s->peers[i];
	return NULL;
}

/*
 * Batches between servers.  A server that reads batch frames answers a
 * peer's plain (one stanza per ZeroMQ message) traffic with a WELCOME
 * {"node":..,"batch":true} on its ROUTER, at most once a second per peer;
 * the peer's DEALER then sends batches (bm_zmq.h).  A build without
 * batches never says so and keeps getting plain messages; one restarted
 * as such a build after it said so drops the batches it is sent (as with
 * signals, docs/architecture.md section 3).
 */
#define WELCOME_EVERY_MS 1000

static void on_dealer_msg(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
			  const struct bm_ipc_hdr *h, const uint8_t *body, size_t n,
			  void *ud)
{
	struct srv *s = ud;
	json_t *o;

	(void)rid, (void)rid_len;
	if (h->kind != BM_IPC_WELCOME) {
		bm_debug("peer", "ignoring %s on a peer link", bm_ipc_kind_name(h->kind));
		return;
	}
	o = json_loadb((const char *)body, n, 0, NULL);
	for (int i = 0; o && i < s->n_peers; i++) {
		struct srv_peer *p = &s->peers[i];
		if (p->z != z || p->batch || !json_is_true(json_object_get(o, "batch")))
			continue;
		if (!bm_zsock_batch_peer(z, NULL, 0, 1)) {
			p->batch = 1;
			bm_info("peer", "link to server '%s' sends batch frames", p->id);
		}
	}
	json_decref(o);
}

/* p sent a plain message: tell it (now and then) that batches are read. */
static void welcome_peer(struct srv *s, struct srv_peer *p, const uint8_t *rid,
			 size_t rid_len)
{
	struct bm_ipc_hdr h;
	char body[128];
	int n;
	uint64_t now = bm_mono_ms();

	if (!s->router || (p->welcomed_ms && now - p->welcomed_ms < WELCOME_EVERY_MS))
		return;
	p->welcomed_ms = now;
	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_WELCOME;
	snprintf(h.origin, sizeof(h.origin), "%s", s->cfg.node_id);
	n = snprintf(body, sizeof(body), "{\"node\":\"%s\",\"batch\":true}", s->cfg.node_id);
	if (bm_zsock_send(s->router, rid, rid_len, &h, body, (size_t)n))
		bm_debug("peer", "cannot send WELCOME to server '%s'", p->id);
}

static int peer_connect(struct srv *s, struct srv_peer *p)
{
	int hwm = 10000, one = 1, linger = 0;

	p->z = bm_zsock_new(s->base, s->zctx, ZMQ_DEALER, s->cfg.node_id, on_dealer_msg, s);
	if (!p->z)
		return BM_ESYS;
	zmq_setsockopt(bm_zsock_raw(p->z), ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(bm_zsock_raw(p->z), ZMQ_IMMEDIATE, &one, sizeof(one));
	zmq_setsockopt(bm_zsock_raw(p->z), ZMQ_LINGER, &linger, sizeof(linger));
	if (s->cfg.curve_secret[0]) {
		/* Servers of one cluster share their key pair (docs/security.md). */
		char pub[41];
		if (zmq_curve_public(pub, s->cfg.curve_secret) ||
		    bm_zsock_curve_client(p->z, pub, pub, s->cfg.curve_secret)) {
			bm_zsock_free(p->z);
			p->z = NULL;
			return BM_ECONFIG;
		}
	}
	if (bm_zsock_connect(p->z, p->zmq)) {
		bm_zsock_free(p->z);
		p->z = NULL;
		return BM_ESYS;
	}
	return 0;
}

static struct srv_peer *peer_add(struct srv *s, const char *id, const char *zmq, int self)
{
	struct srv_peer *p;

	if (s->n_peers == SRV_PEERS_MAX) {
		bm_warn("peer", "cannot add server '%s': %d servers already", id, s->n_peers);
		return NULL;
	}
	p = &s->peers[s->n_peers];
	memset(p, 0, sizeof(*p));
	snprintf(p->id, sizeof(p->id), "%s", id);
	snprintf(p->zmq, sizeof(p->zmq), "%s", zmq ? zmq : "");
	p->self = self;
	p->state = BM_SWIM_ALIVE;
	p->hash = bm_hash64(p->id, strlen(p->id));
	if (!self && p->zmq[0] && peer_connect(s, p)) {
		bm_err("peer", "cannot connect to server '%s' at %s", id, p->zmq);
		return NULL;
	}
	s->n_peers++;
	bm_info("peer", "server '%s' at %s joins the owner set (%d servers)", id,
		p->zmq, s->n_peers);
	return p;
}

void srv_peer_on_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	struct srv *s = ud;
	struct srv_peer *p;
	int was_owner;

	(void)ev;
	if (m->self && m->state == BM_SWIM_LEFT && !s->leaving && !s->removed) {
		bm_err("peer", "this server was removed from the cluster (`bimipctl cluster "
		       "remove`) while it was down; its users have moved on without its data. "
		       "Stopping. To join again, start it with an empty data_dir");
		s->removed = 1;
		event_base_loopexit(s->base, NULL);
		return;
	}
	if (m->role != BM_SWIM_ROLE_SERVER || m->self || !m->id)
		return;
	p = srv_peer_find(s, m->id);
	if (!p) {
		if (m->state == BM_SWIM_LEFT || !m->zmq || !m->zmq[0])
			return;
		p = peer_add(s, m->id, m->zmq, 0);
		if (p) {
			p->state = (int)m->state;
			snprintf(p->admin, sizeof(p->admin), "%s", m->admin ? m->admin : "");
		}
		return;
	}
	if (m->admin && m->admin[0])
		snprintf(p->admin, sizeof(p->admin), "%s", m->admin);
	if (m->zmq && m->zmq[0] && strcmp(m->zmq, p->zmq)) {
		/* Restarted on another address. */
		bm_info("peer", "server '%s' moved from %s to %s", p->id, p->zmq, m->zmq);
		bm_zsock_free(p->z);
		p->z = NULL;
		snprintf(p->zmq, sizeof(p->zmq), "%s", m->zmq);
		if (peer_connect(s, p))
			bm_err("peer", "cannot connect to server '%s' at %s", p->id, p->zmq);
	}
	was_owner = p->state != BM_SWIM_LEFT;
	if (m->state == BM_SWIM_ALIVE && p->state >= BM_SWIM_DEAD) {
		/* Back: what waited for it goes now, not after the back-off. */
		const char *k;
		void *v;

		for (size_t it = 0; bm_map_next(&s->pending, &it, &k, &v);) {
			struct srv_pending *q = v;
			q->retry_ms = 0;
			q->tries = 0;
		}
	}
	p->state = (int)m->state;
	if (was_owner != (p->state != BM_SWIM_LEFT))
		bm_info("peer", "server '%s' %s the owner set", p->id,
			was_owner ? "leaves" : "rejoins");
}

int srv_peer_owner_set(const struct srv *s, const struct srv_peer *p)
{
	return p->state != BM_SWIM_LEFT && !(p->self && s->leaving);
}

const struct srv_peer *srv_owner(struct srv *s, const char *key)
{
	const struct srv_peer *best = NULL;
	uint64_t bs = 0, kh = bm_hash64(key, strlen(key));

	for (int i = 0; i < s->n_peers; i++) {
		const struct srv_peer *p = &s->peers[i];
		uint64_t h;

		if (!srv_peer_owner_set(s, p))
			continue;
		h = bm_mix64(p->hash ^ kh);
		if (!best || h > bs || (h == bs && strcmp(p->id, best->id) < 0)) {
			best = p;
			bs = h;
		}
	}
	return best;
}

int srv_owns(struct srv *s, const char *key)
{
	const struct srv_peer *p;

	if (!s->n_peers)
		return !s->leaving;
	p = srv_owner(s, key);
	return p && p->self;
}

int srv_peer_send(struct srv *s, const struct srv_peer *p, struct bm_ipc_hdr *h,
		  const void *body, size_t n)
{
	snprintf(h->origin, sizeof(h->origin), "%s", s->cfg.node_id);
	/* Not connected: ZMQ_IMMEDIATE makes the send fail.  A peer gossip
	 * calls dead may be back already (answers must reach it). */
	if (!p || p->self || !p->z || p->state == BM_SWIM_LEFT)
		return BM_EUNAVAIL;
	/* Batching: a frame ZeroMQ refused means the peer is not connected
	 * (or is full), where a plain send would fail: fail as it would. */
	if (p->batch && bm_zsock_held(p->z, NULL, 0))
		return BM_EUNAVAIL;
	return bm_zsock_send(p->z, NULL, 0, h, body, n) ? BM_EUNAVAIL : 0;
}

/* --- forwarding ------------------------------------------------------------------- */

int srv_forward(struct srv *s, struct srv_req *r, const char *key, int flags)
{
	const struct srv_peer *p = srv_owner(s, key);
	struct bm_ipc_hdr h;
	int rc;

	if (!p || p->self || !r->raw || r->rid_len > BM_IPC_ORIGIN_MAX)
		return BM_EUNAVAIL;
	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_FORWARD;
	h.flags = (uint8_t)flags;
	h.session = r->session;
	snprintf(h.eid, sizeof(h.eid), "%s", r->user->eid);
	snprintf(h.device, sizeof(h.device), "%s", r->device);
	memcpy(h.aux, r->rid, r->rid_len);
	h.aux[r->rid_len] = 0;
	rc = srv_peer_send(s, p, &h, r->raw, r->raw_len);
	if (!rc)
		(*s->m.forwarded)++;
	return rc;
}

static void on_forward(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		       size_t n)
{
	static bimip_MessageScheme m;
	static struct srv_user standin;
	struct bm_env_err err;
	struct srv_req r;
	size_t rl = strlen(h->aux);

	memset(&r, 0, sizeof(r));
	r.rid = (const uint8_t *)h->aux;
	r.rid_len = rl;
	r.session = h->session;
	r.device = h->device;
	r.m = &m;
	r.raw = body;
	r.raw_len = n;
	r.remote = 1;
	r.mutual = !!(h->flags & F_MUTUAL);
	if (!rl || !h->eid[0])
		return;
	if (!srv_settled(s)) {
		srv_reply_error(s, r.rid, rl, h->session, 503, 0,
				"the cluster is re-balancing; try again");
		return;
	}
	if (bm_env_decode(body, n, &m, &err)) {
		srv_reply_error(s, r.rid, rl, h->session, err.code, err.route, "%s", err.text);
		return;
	}
	if (srv_owns(s, h->eid)) {
		r.user = srv_user_get(s, h->eid, 1);
	} else {
		/* The sender lives elsewhere: a stand-in with its name only. */
		memset(&standin, 0, sizeof(standin));
		snprintf(standin.eid, sizeof(standin.eid), "%s", h->eid);
		bm_map_init(&standin.subscribers);
		bm_map_init(&standin.blocked);
		r.user = &standin;
	}
	if (!r.user) {
		srv_reply_error(s, r.rid, rl, h->session, 500, m.route, "out of memory");
		return;
	}
	srv_route_forwarded(s, &r);
}

/* --- appends, here or at the owner -------------------------------------------------- */

static void seen_put(struct srv *s, const char *eid, const char *msgid, uint64_t off)
{
	char key[SRV_EID_MAX + SRV_MSGID_MAX + 2];
	char *k;
	size_t slot;

	snprintf(key, sizeof(key), "%s\x1f%s", eid, msgid);
	if (bm_map_get(&s->seen, key))
		return;
	if (!s->seen_ring && !(s->seen_ring = calloc(SEEN_MAX, sizeof(char *))))
		return;
	if (s->seen_count == SEEN_MAX) {
		slot = s->seen_head;
		bm_map_del(&s->seen, s->seen_ring[slot]);
		free(s->seen_ring[slot]);
		s->seen_ring[slot] = NULL;
		s->seen_head = (s->seen_head + 1) % SEEN_MAX;
		s->seen_count--;
	}
	k = strdup(key);
	if (!k || bm_map_put(&s->seen, k, (void *)(uintptr_t)off, NULL)) {
		free(k);
		return;
	}
	slot = (s->seen_head + s->seen_count) % SEEN_MAX;
	s->seen_ring[slot] = k;
	s->seen_count++;
}

struct seen_scan {
	struct bm_buf ids;           /* [u64 offset][id NUL]... */
};

static int on_seen_record(void *ud, const struct bm_queue_meta *meta, const void *data,
			  int status)
{
	static bimip_MessageScheme m;
	struct seen_scan *c = ud;
	const uint8_t *p = data;
	struct bm_env_err err;
	size_t off;

	if (status || meta->len < 3 || p[0] != 1 || 3u + p[2] > meta->len)
		return 0;
	off = 3u + p[2];
	if (bm_env_decode(p + off, meta->len - off, &m, &err) ||
	    m.which_payload != bimip_MessageScheme_chat_message_tag)
		return 0;
	if (bm_buf_add(&c->ids, &meta->offset, sizeof(meta->offset)) ||
	    bm_buf_add(&c->ids, m.payload.chat_message.message_id,
		       strlen(m.payload.chat_message.message_id) + 1))
		return 1;
	return 0;
}

/* The message ids of a stream's recent records, indexed at first use after
 * a start: what a re-driven message is checked against. */
static void seen_load(struct srv *s, struct srv_user *u)
{
	struct seen_scan c = { BM_BUF_INIT };
	char name[SRV_EID_MAX + 8];
	uint64_t after = u->durable > SEEN_TAIL ? u->durable - SEEN_TAIL : 0;

	u->seen_loaded = 1;
	if (!u->durable)
		return;
	srv_stream_name(u->eid, name, sizeof(name));
	bm_queue_scan(s->q, name, after, SEEN_TAIL, on_seen_record, &c);
	for (size_t i = 0; i + 9 <= c.ids.len;) {
		uint64_t off;
		const char *id = (const char *)c.ids.data + i + 8;

		memcpy(&off, c.ids.data + i, 8);
		seen_put(s, u->eid, id, off);
		i += 8 + strlen(id) + 1;
	}
	bm_buf_release(&c.ids);
}

/* Appended here: 0 (cb will run), 1 (already there, durable: *off set),
 * BM_EBLOCKED, BM_EAGAIN (already there, not yet durable) or an error. */
static int local_append(struct srv *s, const char *eid, int kind, const char *dev,
			const char *check, const char *msgid, const uint8_t *env,
			size_t n, srv_done_fn *cb, void *ud, uint64_t *off)
{
	static bimip_MessageScheme m;
	struct srv_user *u = srv_user_get(s, eid, 1);
	struct bm_env_err err;
	char key[SRV_EID_MAX + SRV_MSGID_MAX + 2];
	uintptr_t was;
	int rc;

	if (!u)
		return BM_ENOMEM;
	if (check && *check && bm_map_get(&u->blocked, check))
		return BM_EBLOCKED;
	if (msgid && *msgid) {
		if (!u->seen_loaded)
			seen_load(s, u);
		snprintf(key, sizeof(key), "%s\x1f%s", eid, msgid);
		was = (uintptr_t)bm_map_get(&s->seen, key);
		if (was) {
			(*s->m.remote_dups)++;
			*off = was;
			return was <= u->durable ? 1 : BM_EAGAIN;
		}
	}
	rc = bm_env_decode(env, n, &m, &err);
	if (rc)
		return rc;
	rc = srv_stream_append(s, u, kind, dev, &m, env, n, off, cb, ud);
	if (!rc && msgid && *msgid)
		seen_put(s, eid, msgid, *off);
	return rc;
}

int srv_append_any(struct srv *s, const char *eid, int kind, const char *origin_dev,
		   const char *check_eid, const char *msgid, const uint8_t *env,
		   size_t n, srv_done_fn *cb, void *ud)
{
	static uint8_t body[1 + SRV_EID_MAX + BM_ENV_MAX_BYTES + 64];
	const struct srv_peer *p = srv_owner(s, eid);
	size_t cl = check_eid ? strlen(check_eid) : 0;
	struct bm_ipc_hdr h;
	struct srv_rpc *rpc;
	char key[24];
	uint64_t off = 0;
	int rc;

	if (!p || p->self) {
		if (!srv_owns(s, eid))
			return BM_EUNAVAIL;
		rc = local_append(s, eid, kind, origin_dev, check_eid, msgid, env, n, cb,
				  ud, &off);
		if (rc == 1 || rc == BM_EBLOCKED) {
			cb(ud, rc == 1 ? 0 : rc, off);
			return 0;
		}
		return rc;
	}
	if (cl > SRV_EID_MAX || n > BM_ENV_MAX_BYTES + 32)
		return BM_EINVAL;
	rpc = calloc(1, sizeof(*rpc));
	if (!rpc)
		return BM_ENOMEM;
	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_APPEND;
	h.flags = kind == SRV_REC_SENDER_COPY ? F_SENDER_COPY : 0;
	h.seq = ++s->rpc_seq;
	snprintf(h.eid, sizeof(h.eid), "%s", eid);
	snprintf(h.device, sizeof(h.device), "%s", origin_dev ? origin_dev : "");
	snprintf(h.aux, sizeof(h.aux), "%s", msgid ? msgid : "");
	body[0] = (uint8_t)cl;
	if (cl)   /* check_eid may be NULL: memcpy's source must not be */
		memcpy(body + 1, check_eid, cl);
	memcpy(body + 1 + cl, env, n);
	snprintf(key, sizeof(key), "%" PRIu64, h.seq);
	rpc->deadline = bm_mono_ms() + RPC_TIMEOUT_MS;
	rpc->fn = cb;
	rpc->ud = ud;
	if (bm_map_put(&s->rpcs, key, rpc, NULL)) {
		free(rpc);
		return BM_ENOMEM;
	}
	rc = srv_peer_send(s, p, &h, body, 1 + cl + n);
	if (rc) {
		bm_map_del(&s->rpcs, key);
		free(rpc);
		return rc;
	}
	(*s->m.remote_appends)++;
	return 0;
}

struct answer_ctx {
	struct srv *s;
	char peer[BM_IPC_ORIGIN_MAX + 1];
	uint64_t seq;
};

void srv_peer_answer(struct srv *s, const char *peer, int kind, uint64_t seq,
		     int status, uint64_t offset)
{
	struct srv_peer *p = srv_peer_find(s, peer);
	struct bm_ipc_hdr h;
	char body[64];
	int n = status ? snprintf(body, sizeof(body), "%d %s", bm_err_http(status),
				  bm_strerror(status))
		       : snprintf(body, sizeof(body), "0 ok");

	memset(&h, 0, sizeof(h));
	h.kind = (uint8_t)kind;
	h.seq = seq;
	h.offset = (int64_t)offset;
	if (srv_peer_send(s, p, &h, body, (size_t)n))
		bm_debug("peer", "cannot answer server '%s'", peer);
}

static void answer(struct srv *s, const char *peer, uint64_t seq, int status,
		   uint64_t offset)
{
	srv_peer_answer(s, peer, BM_IPC_APPENDED, seq, status, offset);
}

static void on_local_done(void *ud, int status, uint64_t offset)
{
	struct answer_ctx *c = ud;

	answer(c->s, c->peer, c->seq, status ? BM_EUNAVAIL : 0, offset);
	free(c);
}

static void on_append(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		      size_t n)
{
	char check[SRV_EID_MAX + 1];
	struct answer_ctx *c;
	uint64_t off = 0;
	size_t cl;
	int rc;

	if (n < 1 || (cl = body[0]) > SRV_EID_MAX || 1 + cl > n) {
		answer(s, h->origin, h->seq, BM_EPROTO, 0);
		return;
	}
	memcpy(check, body + 1, cl);
	check[cl] = 0;
	if (!srv_owns(s, h->eid) || !srv_settled(s)) {
		answer(s, h->origin, h->seq, BM_EUNAVAIL, 0);
		return;
	}
	c = malloc(sizeof(*c));
	if (!c) {
		answer(s, h->origin, h->seq, BM_ENOMEM, 0);
		return;
	}
	c->s = s;
	snprintf(c->peer, sizeof(c->peer), "%s", h->origin);
	c->seq = h->seq;
	rc = local_append(s, h->eid, h->flags & F_SENDER_COPY ? SRV_REC_SENDER_COPY
							  : SRV_REC_PLAIN,
			  h->device, check, h->aux, body + 1 + cl, n - 1 - cl,
			  on_local_done, c, &off);
	if (rc) {
		answer(s, h->origin, h->seq, rc == 1 ? 0 : rc, off);
		free(c);
	}
}

static void on_appended_msg(struct srv *s, const struct bm_ipc_hdr *h,
			    const uint8_t *body, size_t n)
{
	char key[24];
	struct srv_rpc *rpc;
	int code = n ? atoi((const char *)body) : 503;
	char txt[64];

	snprintf(key, sizeof(key), "%" PRIu64, h->seq);
	rpc = bm_map_del(&s->rpcs, key);
	if (!rpc)
		return;   /* timed out already */
	snprintf(txt, sizeof(txt), "%.*s", (int)(n < 63 ? n : 63), (const char *)body);
	if (code && code != 403)
		bm_debug("peer", "append at '%s' refused: %s", h->origin, txt);
	rpc->fn(rpc->ud, code == 0 ? 0 : code == 403 ? BM_EBLOCKED : BM_EUNAVAIL,
		(uint64_t)h->offset);
	free(rpc);
}

/* --- awareness across servers ---------------------------------------------------- */

void srv_notify_remote(struct srv *s, const char *viewer, bimip_MessageScheme *m)
{
	static uint8_t buf[BM_ENV_MAX_BYTES];
	const struct srv_peer *p = srv_owner(s, viewer);
	struct bm_ipc_hdr h;
	size_t n;

	if (!p || p->self || bm_env_encode(m, buf, sizeof(buf), &n))
		return;
	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_NOTIFY;
	snprintf(h.eid, sizeof(h.eid), "%s", viewer);
	srv_peer_send(s, p, &h, buf, n);
}

static void on_notify(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		      size_t n)
{
	static bimip_MessageScheme m;
	struct srv_user *v = srv_owns(s, h->eid) ? srv_user_get(s, h->eid, 0) : NULL;
	struct bm_env_err err;

	if (!v || !v->devs || bm_env_decode(body, n, &m, &err) ||
	    m.which_payload != bimip_MessageScheme_awareness_notification_tag)
		return;
	srv_awareness_push(s, v, &m);
}

/* --- chat messages across servers ------------------------------------------------ */

json_t *srv_pending_json(const struct srv_pending *p)
{
	size_t bl = 0;
	unsigned char *b64;
	json_t *o;
	char rid[BM_IPC_ORIGIN_MAX + 1];

	mbedtls_base64_encode(NULL, 0, &bl, p->core, p->core_len);
	b64 = malloc(bl + 1);
	if (!b64 || mbedtls_base64_encode(b64, bl + 1, &bl, p->core, p->core_len)) {
		free(b64);
		return NULL;
	}
	b64[bl] = 0;
	memcpy(rid, p->rid, p->rid_len);
	rid[p->rid_len] = 0;
	o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:s, s:s, s:s, s:I, s:I, s:s}", "t", "pm",
		      "c", p->chat, "e", p->sender, "r", p->receiver, "v",
		      (json_int_t)p->version, "d", p->dev, "l", p->local, "sg", rid, "ss",
		      (json_int_t)p->session, "rt", (json_int_t)p->route, "m", (char *)b64);
	free(b64);
	return o;
}

static void pending_free(struct srv_pending *p)
{
	if (p) {
		free(p->core);
		free(p);
	}
}

static void str_in(json_t *o, const char *k, char *out, size_t cap)
{
	const char *v = json_string_value(json_object_get(o, k));

	snprintf(out, cap, "%s", v ? v : "");
}

int srv_pending_apply(struct srv *s, void *obj)
{
	json_t *o = obj;
	struct srv_pending *p = calloc(1, sizeof(*p));
	const char *b64 = json_string_value(json_object_get(o, "m"));
	char rid[BM_IPC_ORIGIN_MAX + 1];
	struct srv_chat *chat;
	struct srv_idem *e;
	size_t bl = 0;

	if (!p)
		return BM_ENOMEM;
	str_in(o, "c", p->chat, sizeof(p->chat));
	str_in(o, "e", p->sender, sizeof(p->sender));
	str_in(o, "r", p->receiver, sizeof(p->receiver));
	str_in(o, "d", p->dev, sizeof(p->dev));
	str_in(o, "l", p->local, sizeof(p->local));
	str_in(o, "sg", rid, sizeof(rid));
	p->rid_len = (uint8_t)strlen(rid);
	memcpy(p->rid, rid, p->rid_len);
	p->version = (int64_t)json_integer_value(json_object_get(o, "v"));
	p->session = (uint64_t)json_integer_value(json_object_get(o, "ss"));
	p->route = (int64_t)json_integer_value(json_object_get(o, "rt"));
	srv_message_id(p->key, sizeof(p->key), p->chat, p->version);
	if (!b64 || !p->sender[0] || !p->receiver[0] || p->version < 1 ||
	    mbedtls_base64_decode(NULL, 0, &bl, (const unsigned char *)b64, strlen(b64)) !=
		    MBEDTLS_ERR_BASE64_BUFFER_TOO_SMALL ||
	    !(p->core = malloc(bl)) ||
	    mbedtls_base64_decode(p->core, bl, &p->core_len, (const unsigned char *)b64,
				  strlen(b64))) {
		pending_free(p);
		return BM_EINVAL;
	}
	chat = srv_chat_get(s, p->sender, p->receiver, 1);
	if (!chat) {
		pending_free(p);
		return BM_ENOMEM;
	}
	if (p->version > chat->version)
		chat->version = p->version;
	if (p->local[0]) {
		/* A new key is made with durable 0; one refused before
		 * (durable -1) is being sent again. */
		e = srv_idem_add(s, p->sender, p->dev, p->local, chat->id, p->version);
		if (e && e->durable < 0) {
			e->version = p->version;
			e->durable = 0;
		}
	}
	if (bm_map_get(&s->pending, p->key) || bm_map_put(&s->pending, p->key, p, NULL)) {
		pending_free(p);
		return 0;
	}
	return 0;
}

void srv_pending_done(struct srv *s, const char *chat, int64_t v)
{
	char key[SRV_MSGID_MAX];

	if (!s->pending.count)
		return;
	srv_message_id(key, sizeof(key), chat, v);
	pending_free(bm_map_del(&s->pending, key));
}

struct copy_ctx {
	struct srv *s;
	char key[SRV_MSGID_MAX];
	int stage;
};

static void drive(struct srv *s, struct srv_pending *p);

static void retry_later(struct srv *s, struct srv_pending *p)
{
	unsigned t = p->tries < 5 ? p->tries : 5;

	p->tries++;
	p->retry_ms = bm_mono_ms() + (250u << t);
	(*s->m.pending_retries)++;
}

struct done_ctx {
	struct srv *s;
	char sender[SRV_EID_MAX + 1], dev[SRV_DEV_MAX + 1], local[80];
};

static void on_msg_logged(void *ud, int status, uint64_t offset)
{
	struct done_ctx *c = ud;
	struct srv_idem *e;

	(void)offset;
	if (!status && c->local[0] &&
	    (e = srv_idem_find(c->s, c->sender, c->dev, c->local)) && e->durable >= 0)
		e->durable = 1;
	free(c);
}

static void finish(struct srv *s, struct srv_pending *p)
{
	struct srv_chat *chat = srv_chat_find(s, p->chat);
	struct done_ctx *c = calloc(1, sizeof(*c));
	int rc;

	if (!chat || !c) {
		free(c);
		retry_later(s, p);
		return;
	}
	c->s = s;
	snprintf(c->sender, sizeof(c->sender), "%s", p->sender);
	snprintf(c->dev, sizeof(c->dev), "%s", p->dev);
	snprintf(c->local, sizeof(c->local), "%s", p->local);
	/* Applying the record drops (frees) p. */
	rc = srv_state_log_msg(s, chat, p->version, p->sender, p->dev, p->local, 0, 0,
			       on_msg_logged, c, NULL);
	if (rc) {
		free(c);
		retry_later(s, p);
	}
}

static void refuse(struct srv *s, struct srv_pending *p)
{
	json_t *rec = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s}", "t", "pmx", "c", p->chat,
				"v", (json_int_t)p->version, "e", p->sender, "d", p->dev,
				"l", p->local);

	srv_reply_error(s, p->rid, p->rid_len, p->session, 403, p->route,
			"'%s' has blocked you", p->receiver);
	if (!rec || srv_state_log(s, rec, NULL, NULL))
		retry_later(s, p);
}

static void on_copy(void *ud, int status, uint64_t offset)
{
	struct copy_ctx *c = ud;
	struct srv *s = c->s;
	struct srv_pending *p = bm_map_get(&s->pending, c->key);

	(void)offset;
	if (!p || p->stage != c->stage) {
		free(c);
		return;
	}
	free(c);
	p->inflight = 0;
	if (status == BM_EBLOCKED && p->stage == 0) {
		refuse(s, p);
		return;
	}
	if (status) {
		retry_later(s, p);
		return;
	}
	p->stage++;
	p->tries = 0;
	if (p->stage == 2)
		finish(s, p);
	else
		drive(s, p);
}

static void drive(struct srv *s, struct srv_pending *p)
{
	static uint8_t env[bimip_ChatMessage_size + 64];
	struct copy_ctx *c;
	size_t n;
	int rc, rcv = p->stage == 0;

	/* Only the chat's owner drives it (a moved one was handed off), and
	 * only once it knows the cluster: its view of who owns the copies
	 * must be the others' (an append it thinks local may not be). */
	if (p->inflight || s->replaying || !srv_owns(s, p->chat))
		return;
	if (!srv_settled(s)) {
		p->retry_ms = bm_mono_ms() + 100;   /* not a failure: no back-off */
		return;
	}
	if (p->stage >= 2) {
		finish(s, p);
		return;
	}
	if (p->core_len > bimip_ChatMessage_size)
		return;
	c = malloc(sizeof(*c));
	if (!c) {
		retry_later(s, p);
		return;
	}
	c->s = s;
	snprintf(c->key, sizeof(c->key), "%s", p->key);
	c->stage = p->stage;
	n = srv_chat_envelope(env, p->core, p->core_len, rcv ? "receiver" : "sender",
			      rcv ? 1 : 4);
	p->inflight = 1;
	rc = srv_append_any(s, rcv ? p->receiver : p->sender,
			    rcv ? SRV_REC_PLAIN : SRV_REC_SENDER_COPY, p->dev,
			    rcv ? p->sender : NULL, p->key, env, n, on_copy, c);
	if (rc) {
		/* p still exists: on_copy runs only when rc is 0. */
		p->inflight = 0;
		free(c);
		retry_later(s, p);
	}
}

static void on_pending_logged(void *ud, int status, uint64_t offset)
{
	struct copy_ctx *c = ud;
	struct srv_pending *p = bm_map_get(&c->s->pending, c->key);

	(void)offset;
	if (p && !status)
		drive(c->s, p);
	else if (p)
		retry_later(c->s, p);
	free(c);
}

int srv_pending_start(struct srv *s, const char *chat, int64_t v, const char *sender,
		      const char *receiver, const char *dev, const char *local,
		      const uint8_t *rid, size_t rid_len, uint64_t session,
		      int64_t route, const uint8_t *core, size_t core_len)
{
	struct srv_pending p;
	struct copy_ctx *c;
	json_t *rec;

	memset(&p, 0, sizeof(p));
	snprintf(p.chat, sizeof(p.chat), "%s", chat);
	snprintf(p.sender, sizeof(p.sender), "%s", sender);
	snprintf(p.receiver, sizeof(p.receiver), "%s", receiver);
	snprintf(p.dev, sizeof(p.dev), "%s", dev);
	snprintf(p.local, sizeof(p.local), "%s", local);
	p.version = v;
	p.rid_len = (uint8_t)(rid_len < sizeof(p.rid) ? rid_len : sizeof(p.rid));
	memcpy(p.rid, rid, p.rid_len);
	p.session = session;
	p.route = route;
	p.core = (uint8_t *)core;
	p.core_len = core_len;
	rec = srv_pending_json(&p);
	c = malloc(sizeof(*c));
	if (!rec || !c) {
		json_decref(rec);
		free(c);
		return BM_ENOMEM;
	}
	c->s = s;
	srv_message_id(c->key, sizeof(c->key), chat, v);
	c->stage = 0;
	return srv_state_log(s, rec, on_pending_logged, c);
}

void srv_pending_drive_all(struct srv *s)
{
	const char *keys[256];
	char copy[256][SRV_MSGID_MAX];
	uint64_t now = bm_mono_ms();
	size_t n = 0;
	const char *k;
	void *v;

	for (size_t it = 0; n < 256 && bm_map_next(&s->pending, &it, &k, &v);) {
		struct srv_pending *p = v;
		if (!p->inflight && p->retry_ms <= now)
			keys[n++] = k;
	}
	for (size_t i = 0; i < n; i++)
		snprintf(copy[i], sizeof(copy[i]), "%s", keys[i]);
	for (size_t i = 0; i < n; i++) {
		struct srv_pending *p = bm_map_get(&s->pending, copy[i]);
		if (p)
			drive(s, p);
	}
}

/* --- the loop ------------------------------------------------------------------------ */

void srv_peer_tick(struct srv *s)
{
	char expired[64][24];
	uint64_t now = bm_mono_ms();
	size_t n = 0;
	const char *k;
	void *v;

	for (size_t it = 0; n < 64 && bm_map_next(&s->rpcs, &it, &k, &v);)
		if (((struct srv_rpc *)v)->deadline <= now)
			snprintf(expired[n++], sizeof(expired[0]), "%s", k);
	for (size_t i = 0; i < n; i++) {
		struct srv_rpc *rpc = bm_map_del(&s->rpcs, expired[i]);
		if (rpc) {
			rpc->fn(rpc->ud, BM_ETIMEDOUT, 0);
			free(rpc);
		}
	}
	srv_handoff_tick(s);
	if (s->pending.count)
		srv_pending_drive_all(s);
}

int srv_peer_msg(struct srv *s, const uint8_t *rid, size_t rid_len,
		 const struct bm_ipc_hdr *h, const uint8_t *body, size_t n)
{
	if (h->kind != BM_IPC_FORWARD && h->kind != BM_IPC_APPEND &&
	    h->kind != BM_IPC_APPENDED && h->kind != BM_IPC_NOTIFY &&
	    h->kind != BM_IPC_HANDOFF && h->kind != BM_IPC_HANDOFF_ACK &&
	    h->kind != BM_IPC_SETTLED)
		return 0;
	/* Only a server of the cluster speaks these, under its own name. */
	if (rid_len != strlen(h->origin) || memcmp(rid, h->origin, rid_len) ||
	    !srv_peer_find(s, h->origin) || !strcmp(h->origin, s->cfg.node_id)) {
		(*s->m.ipc_dropped)++;
		bm_debug("peer", "dropping %s from '%.*s': not a known server",
			 bm_ipc_kind_name(h->kind), (int)rid_len, (const char *)rid);
		return 1;
	}
	if (!bm_zsock_in_batch(s->router))
		welcome_peer(s, srv_peer_find(s, h->origin), rid, rid_len);
	switch (h->kind) {
	case BM_IPC_FORWARD:
		on_forward(s, h, body, n);
		break;
	case BM_IPC_APPEND:
		on_append(s, h, body, n);
		break;
	case BM_IPC_APPENDED:
		on_appended_msg(s, h, body, n);
		break;
	case BM_IPC_NOTIFY:
		on_notify(s, h, body, n);
		break;
	default:
		srv_handoff_msg(s, h, body, n);
	}
	return 1;
}

int srv_peer_open(struct srv *s)
{
	if (s->cfg.cluster.bind[0] && !peer_add(s, s->cfg.node_id, s->zmq_bound, 1))
		return BM_ENOMEM;
	return 0;
}

void srv_peer_close(struct srv *s)
{
	const char *k;
	void *v;

	for (int i = 0; i < s->n_peers; i++)
		bm_zsock_free(s->peers[i].z);
	s->n_peers = 0;
	for (size_t it = 0; bm_map_next(&s->rpcs, &it, &k, &v);)
		free(v);
	bm_map_release(&s->rpcs);
	for (size_t it = 0; bm_map_next(&s->pending, &it, &k, &v);)
		pending_free(v);
	bm_map_release(&s->pending);
	bm_map_release(&s->seen);
	for (size_t i = 0; s->seen_ring && i < s->seen_count; i++)
		free(s->seen_ring[(s->seen_head + i) % SEEN_MAX]);
	free(s->seen_ring);
	s->seen_ring = NULL;
	bm_map_release(&s->settled_by);
	srv_handoff_forget(s);
}
