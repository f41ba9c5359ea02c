/*
 * link.c - the ZeroMQ ROUTER towards the signal nodes.
 *
 * Each signal connects a DEALER whose routing id is its node id, and says
 * HELLO (again every second, as a heartbeat).  The server answers WELCOME
 * {"node","boot"}, KEYS (the public keys that verify its tokens) and REVOKE
 * (every revocation in force).  A signal that sees a new boot id re-opens
 * all its sessions, so a restarted server learns who is online.
 *
 * Control bodies are JSON:
 *   HELLO    {"boot":"<hex>","batch":true} (the signal's boot id; batch: it
 *            reads batch frames, bm_zmq.h)
 *   WELCOME  {"node":"s1","boot":"<hex>","batch":true}
 *   KEYS     {"keys":[{"kid":"..","alg":"RS256","pem":"-----BEGIN.."}]}
 *   REVOKE   {"jti":{"<jti>":exp,..},"before":{"<eid>[\x1f<device>]":s,..}}
 *   SESSION_OPEN body {"iat":s,"exp":s}; header aux = jti
 *   KICK     "<websocket close code> <reason>"
 */
#include "srv.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "bm_zmq.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void fill_hdr(struct srv *s, struct bm_ipc_hdr *h, int kind,
		     uint64_t session)
{
	bm_ipc_hdr_init(h, kind, s->cfg.node_id);
	h->session = session;
}

/* The offset travels inside the MessageScheme as field 99 (varint), appended
 * to the stored bytes: protobuf merges a trailing field into the message. */
static size_t put_offset(uint8_t *p, int64_t offset)
{
	uint64_t v = (uint64_t)offset;
	size_t n = 0;

	p[n++] = 0x98;  /* (99 << 3) | 0, varint-encoded: 0x98 0x06 */
	p[n++] = 0x06;
	do {
		p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

int srv_push_raw(struct srv *s, struct srv_dev *d, const uint8_t *p, size_t n,
		 int64_t offset)
{
	static uint8_t buf[BM_ENV_MAX_BYTES + 16];
	struct bm_ipc_hdr h;
	size_t len = n;
	int rc;

	if (n > BM_ENV_MAX_BYTES)
		return BM_ETOOBIG;
	if (!s->router)
		return BM_ECLOSED;
	memcpy(buf, p, n);
	if (offset > 0)
		len += put_offset(buf + n, offset);
	fill_hdr(s, &h, BM_IPC_PUSH, d->session);
	h.offset = offset;
	bm_ipc_set_str(h.eid, sizeof(h.eid), d->user->eid);
	bm_ipc_set_str(h.device, sizeof(h.device), d->device);
	rc = bm_zsock_send(s->router, d->rid, d->rid_len, &h, buf, len);
	if (!rc)
		(*s->m.stanzas_out)++;
	else
		(*s->m.push_failed)++;
	return rc;
}

int srv_push(struct srv *s, struct srv_dev *d, bimip_MessageScheme *m, int64_t offset)
{
	static uint8_t buf[BM_ENV_MAX_BYTES];
	size_t n;
	int rc = bm_env_encode(m, buf, sizeof(buf), &n);

	return rc ? rc : srv_push_raw(s, d, buf, n, offset);
}

int srv_reply_raw(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
		  const uint8_t *env, size_t n)
{
	struct bm_ipc_hdr h;
	int rc;

	if (!s->router)
		return BM_ECLOSED;
	fill_hdr(s, &h, BM_IPC_PUSH, session);
	rc = bm_zsock_send(s->router, rid, rid_len, &h, env, n);
	if (!rc)
		(*s->m.stanzas_out)++;
	else
		(*s->m.push_failed)++;
	return rc;
}

int srv_reply(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
	      bimip_MessageScheme *m)
{
	static uint8_t buf[BM_ENV_MAX_BYTES];
	size_t n;
	int rc = bm_env_encode(m, buf, sizeof(buf), &n);

	return rc ? rc : srv_reply_raw(s, rid, rid_len, session, buf, n);
}

void srv_reply_error(struct srv *s, const uint8_t *rid, size_t rid_len,
		     uint64_t session, int code, int64_t route, const char *fmt, ...)
{
	static bimip_MessageScheme m;
	char msg[256], label[16];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bm_env_make_error(&m, code, route, msg, NULL);
	snprintf(label, sizeof(label), "%d", code);
	bm_metrics_family_inc(s->m.errors, label);
	srv_reply(s, rid, rid_len, session, &m);
}

int srv_kick(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
	     int code, const char *reason)
{
	struct bm_ipc_hdr h;
	char body[160];
	int n = snprintf(body, sizeof(body), "%d %s", code, reason);

	if (!s->router)
		return BM_ECLOSED;
	fill_hdr(s, &h, BM_IPC_KICK, session);
	return bm_zsock_send(s->router, rid, rid_len, &h, body, (size_t)n);
}

void srv_broadcast(struct srv *s, int kind, const void *body, size_t n)
{
	struct bm_ipc_hdr h;
	const char *k;

	if (!s->router)
		return;
	fill_hdr(s, &h, kind, 0);
	for (size_t it = 0; bm_map_next(&s->signals, &it, &k, NULL);)
		if (bm_zsock_send(s->router, (const uint8_t *)k, strlen(k), &h, body, n))
			bm_warn("link", "cannot send %s to signal '%s'",
				bm_ipc_kind_name(kind), k);
}

struct srv_dev *srv_dev_find(struct srv_user *u, const char *device)
{
	for (struct srv_dev *d = u->devs; d; d = d->next)
		if (!strcmp(d->device, device))
			return d;
	return NULL;
}

static void dev_unlink(struct srv_user *u, struct srv_dev *d)
{
	for (struct srv_dev **pp = &u->devs; *pp; pp = &(*pp)->next) {
		if (*pp == d) {
			*pp = d->next;
			u->n_devs--;
			return;
		}
	}
}

/* --- messages from signals ----------------------------------------------------- */

/* HELLO is a heartbeat, once a second: answered with WELCOME each time, and
 * with the keys and the revocations in force only when the signal is new or
 * restarted (its body names its boot id). */
static void on_hello(struct srv *s, const uint8_t *rid, size_t rid_len,
		     const uint8_t *body, size_t n)
{
	char id[BM_IPC_ORIGIN_MAX + 1];
	struct bm_ipc_hdr h;
	struct bm_buf b = BM_BUF_INIT;
	json_t *o = json_loadb((const char *)body, n, 0, NULL);
	const char *boot = o ? json_string_value(json_object_get(o, "boot")) : NULL;
	char *known, *copy;

	if (rid_len == 0 || rid_len > BM_IPC_ORIGIN_MAX || memchr(rid, 0, rid_len)) {
		json_decref(o);
		return;
	}
	memcpy(id, rid, rid_len);
	id[rid_len] = 0;
	/* A signal that reads batches gets a loop turn's pushes in one
	 * ZeroMQ message (bm_zmq.h); an older one, one message per push. */
	bm_zsock_batch_peer(s->router, rid, rid_len,
			    o && json_is_true(json_object_get(o, "batch")));
	fill_hdr(s, &h, BM_IPC_WELCOME, 0);
	bm_buf_addf(&b, "{\"node\":\"%s\",\"boot\":\"%s\",\"batch\":true}", s->cfg.node_id,
		    s->boot_id);
	bm_zsock_send(s->router, rid, rid_len, &h, b.data, b.len);
	known = bm_map_get(&s->signals, id);
	if (known && boot && !strcmp(known, boot))
		goto out;
	copy = strdup(boot ? boot : "");
	if (!copy || bm_map_put(&s->signals, id, copy, NULL)) {
		free(copy);
		goto out;
	}
	free(known);
	bm_info("link", "signal '%s' %s", id, known ? "restarted" : "connected");
	fill_hdr(s, &h, BM_IPC_KEYS, 0);
	bm_zsock_send(s->router, rid, rid_len, &h, s->keys_json.data, s->keys_json.len);
	bm_buf_reset(&b);
	if (!srv_revocations_json(s, &b)) {
		fill_hdr(s, &h, BM_IPC_REVOKE, 0);
		bm_zsock_send(s->router, rid, rid_len, &h, b.data, b.len);
	}
out:
	bm_buf_release(&b);
	json_decref(o);
}

static void on_session_open(struct srv *s, const uint8_t *rid, size_t rid_len,
			    const struct bm_ipc_hdr *h, const uint8_t *body, size_t n)
{
	struct srv_user *u;
	struct srv_dev *d;
	char name[SRV_EID_MAX + 8];
	json_t *o = json_loadb((const char *)body, n, 0, NULL);
	int64_t iat = o ? (int64_t)json_integer_value(json_object_get(o, "iat")) : 0;
	uint64_t committed = 0;

	json_decref(o);
	if (!srv_owns(s, h->eid) || !srv_settled(s)) {
		/* The signal's view of the owners differs from ours (a change is
		 * spreading): the client reconnects and lands on the owner. */
		const struct srv_peer *p = srv_owner(s, h->eid);
		char why[128];

		/* This server may be the owner, not settled yet (just restarted,
		 * or users are moving): say so rather than name itself. */
		if (p && p->self)
			snprintf(why, sizeof(why), "the cluster is re-balancing; reconnect");
		else
			snprintf(why, sizeof(why), "user is served by '%s'; reconnect",
				 p ? p->id : "no server");
		srv_kick(s, rid, rid_len, h->session, 4004, why);
		return;
	}
	u = srv_user_get(s, h->eid, 1);   /* only the owner holds a user */
	if (!u || !h->device[0] || rid_len > sizeof(d->rid)) {
		srv_kick(s, rid, rid_len, h->session, 1008, "bad session");
		return;
	}
	if (srv_revoked(s, h->eid, h->device, h->aux, iat)) {
		srv_kick(s, rid, rid_len, h->session, 4001, "token revoked");
		return;
	}
	d = srv_dev_find(u, h->device);
	if (d) {
		/* One session per device: the newest wins. */
		if (d->session != h->session || d->rid_len != rid_len ||
		    memcmp(d->rid, rid, rid_len))
			srv_kick(s, d->rid, d->rid_len, d->session, 4002,
				 "replaced by a newer session");
	} else {
		d = calloc(1, sizeof(*d));
		if (!d) {
			srv_kick(s, rid, rid_len, h->session, 1011, "out of memory");
			return;
		}
		d->user = u;
		snprintf(d->device, sizeof(d->device), "%s", h->device);
		d->next = u->devs;
		u->devs = d;
		u->n_devs++;
		(*s->m.sessions)++;
	}
	memcpy(d->rid, rid, rid_len);
	d->rid_len = (uint8_t)rid_len;
	d->session = h->session;
	snprintf(d->jti, sizeof(d->jti), "%.64s", h->aux);
	srv_stream_name(u->eid, name, sizeof(name));
	if (bm_queue_committed_offset(s->q, name, d->device, &committed))
		committed = 0;
	d->committed = committed;
	d->sent = committed;
	bm_debug("link", "session open eid=%s device=%s committed=%llu head=%llu",
		 u->eid, d->device, (unsigned long long)committed,
		 (unsigned long long)u->durable);
	if (u->n_devs == 1 && u->status == 2) {
		u->status = 1;
		srv_awareness_changed(s, u);
	}
	srv_pump(s, d);
}

static void on_session_close(struct srv *s, const uint8_t *rid, size_t rid_len,
			     const struct bm_ipc_hdr *h)
{
	struct srv_user *u = srv_user_get(s, h->eid, 0);
	struct srv_dev *d = u ? srv_dev_find(u, h->device) : NULL;

	/* A close of a session already replaced by a newer one is stale. */
	if (!d || d->session != h->session || d->rid_len != rid_len ||
	    memcmp(d->rid, rid, rid_len))
		return;
	dev_unlink(u, d);
	free(d);
	(*s->m.sessions)--;
	srv_cache_trim(u);
	if (u->n_devs == 0) {
		json_t *o = json_pack("{s:s, s:s, s:I, s:i, s:f, s:f, s:i}", "t", "seen",
				      "e", u->eid, "ts", (json_int_t)bm_wall_ms(),
				      "st", 2, "lat", u->lat, "lon", u->lon,
				      "in", u->intention);
		u->status = 2;
		if (o)
			srv_state_log(s, o, NULL, NULL);
		srv_awareness_changed(s, u);
	}
}

static void on_stanza(struct srv *s, const uint8_t *rid, size_t rid_len,
		      const struct bm_ipc_hdr *h, const uint8_t *body, size_t n)
{
	static bimip_MessageScheme m;
	struct bm_env_err err;
	struct srv_req r = { rid, rid_len, h->session, NULL, NULL, h->device, &m,
			     body, n, 0, 0 };
	uint64_t *count;

	(*s->m.stanzas_in)++;
	if (bm_env_decode(body, n, &m, &err)) {
		srv_reply_error(s, rid, rid_len, h->session, err.code, err.route, "%s",
				err.text);
		return;
	}
	count = m.route >= 0 && m.route < SRV_ROUTE_CACHE ? s->m.route_count[m.route] : NULL;
	if (!count) {
		char label[16];

		snprintf(label, sizeof(label), "%d", (int)m.route);
		count = bm_metrics_family_get(s->m.by_route, label);
		if (m.route >= 0 && m.route < SRV_ROUTE_CACHE)
			s->m.route_count[m.route] = count;
	}
	(*count)++;
	if (!srv_settled(s)) {
		srv_reply_error(s, rid, rid_len, h->session, 503, m.route,
				"the cluster is re-balancing; try again");
		return;
	}
	if (!srv_owns(s, h->eid)) {
		srv_reply_error(s, rid, rid_len, h->session, 503, m.route,
				"this server does not own '%s' (ownership is moving); "
				"try again", h->eid);
		srv_kick(s, rid, rid_len, h->session, 4004, "reconnect to the owner");
		return;
	}
	r.user = srv_user_get(s, h->eid, 1);
	if (!r.user) {
		srv_reply_error(s, rid, rid_len, h->session, 400, m.route,
				"invalid session identity");
		return;
	}
	r.dev = srv_dev_find(r.user, h->device);
	if (r.dev && r.dev->session != h->session)
		r.dev = NULL;
	srv_route(s, &r);
}

static void on_uncork(evutil_socket_t fd, short what, void *arg)
{
	struct srv *s = arg;

	s->q_corked = 0;
	bm_queue_uncork(s->q);
}

static void on_msg(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		   const struct bm_ipc_hdr *h, const uint8_t *body, size_t n, void *ud)
{
	struct srv *s = ud;

	/* What this turn's messages append (two copies per chat message, a
	 * batch of them) goes to the disk in one sync: the sync thread is
	 * woken once the turn is done, not at the first append. */
	if (!s->q_corked) {
		s->q_corked = 1;
		bm_queue_cork(s->q);
		event_active(s->uncork_ev, EV_WRITE, 0);
	}

	if (srv_peer_msg(s, rid, rid_len, h, body, n))
		return;
	switch (h->kind) {
	case BM_IPC_HELLO:
		on_hello(s, rid, rid_len, body, n);
		break;
	case BM_IPC_SESSION_OPEN:
		on_session_open(s, rid, rid_len, h, body, n);
		break;
	case BM_IPC_SESSION_CLOSE:
		on_session_close(s, rid, rid_len, h);
		break;
	case BM_IPC_STANZA:
		on_stanza(s, rid, rid_len, h, body, n);
		break;
	case BM_IPC_PING: {
		struct bm_ipc_hdr r;
		fill_hdr(s, &r, BM_IPC_PONG, h->session);
		r.seq = h->seq;
		bm_zsock_send(z, rid, rid_len, &r, "", 0);
		break;
	}
	default:
		(*s->m.ipc_dropped)++;
		bm_debug("link", "ignoring %s from a peer", bm_ipc_kind_name(h->kind));
	}
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct srv *s = arg;
	const char *k;
	void *v;

	static uint32_t lat[BM_QUEUE_SYNC_SAMPLES];
	size_t n = bm_queue_sync_samples(s->q, lat, BM_QUEUE_SYNC_SAMPLES);

	for (size_t i = 0; i < n; i++)
		bm_metrics_observe(s->m.fsync, lat[i] / 1e6);
	srv_snapshot_maybe(s);
	srv_peer_tick(s);
	if (!s->pump_stalled)
		return;
	s->pump_stalled = 0;
	for (size_t it = 0; bm_map_next(&s->users, &it, &k, &v);)
		if (((struct srv_user *)v)->devs)
			srv_pump_user(s, v);
}

int srv_link_open(struct srv *s)
{
	const char *allowed[8];
	size_t n_allowed = 0;
	struct timeval tv = { 0, 50000 };
	int hwm = 100000;

	s->uncork_ev = event_new(s->base, -1, 0, on_uncork, s);
	if (!s->uncork_ev)
		return BM_ENOMEM;
	s->zctx = bm_zmq_ctx_new();
	if (!s->zctx)
		return BM_ESYS;
	s->router = bm_zsock_new(s->base, s->zctx, ZMQ_ROUTER, s->cfg.node_id, on_msg, s);
	if (!s->router)
		return BM_ESYS;
	zmq_setsockopt(bm_zsock_raw(s->router), ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(bm_zsock_raw(s->router), ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (s->cfg.curve_secret[0]) {
		for (int i = 0; i < 8 && s->cfg.curve_allowed[i][0]; i++)
			allowed[n_allowed++] = s->cfg.curve_allowed[i];
		if (bm_zsock_curve_server(s->router, s->cfg.curve_secret, allowed, n_allowed)) {
			bm_err("link", "cannot enable CURVE on the server socket");
			return BM_ECONFIG;
		}
	}
	if (bm_zsock_bind(s->router, s->cfg.zmq_listen, s->zmq_bound, sizeof(s->zmq_bound)))
		return BM_ESYS;
	s->tick = event_new(s->base, -1, EV_PERSIST, on_tick, s);
	if (!s->tick || event_add(s->tick, &tv) == -1)
		return BM_ENOMEM;
	bm_info("link", "listening for signals on %s", s->zmq_bound);
	return 0;
}

void srv_link_close(struct srv *s)
{
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&s->signals, &it, &k, &v);)
		free(v);
	bm_map_release(&s->signals);
	if (s->tick)
		event_free(s->tick);
	bm_zsock_free(s->router);
	if (s->uncork_ev)
		event_free(s->uncork_ev);
	if (s->q_corked) {
		s->q_corked = 0;
		bm_queue_uncork(s->q);
	}
	if (s->zctx)
		zmq_ctx_term(s->zctx);
}
