/*
 * routes.c - one handler per client route (seed 001 section 5, DESIGN.md 2).
 *
 * The sender's identity is the session's (r->user, r->device), set by the
 * signal from the verified token; a stanza's own `from`/`owner` is ignored,
 * or refused with 403 when it names someone else.  Every request gets its
 * response stanza or an ErrorMessage; responses to state changes are sent
 * once the change is durable.  docs/protocol.md documents each route.
 */
#include "srv.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_pool.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "bm_ws.h"

#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Awareness status values (docs/protocol.md). */
#define AW_ONLINE 1
#define AW_OFFLINE 2

#define ERR(s, r, code, ...) \
	srv_reply_error((s), (r)->rid, (r)->rid_len, (r)->session, (code), \
			(r)->m->route, __VA_ARGS__)

static bimip_MessageScheme out;   /* one response at a time: single thread */

static void ident(bimip_Identity *id, const char *eid, const char *dev)
{
	memset(id, 0, sizeof(*id));
	BM_SET_STR(id->eid, eid);
	BM_SET_STR(id->connection_resource_id, dev);
}

static bimip_MessageScheme *begin(pb_size_t route)
{
	memset(&out, 0, sizeof(out));
	out.which_payload = route;
	out.route = route;
	return &out;
}

static void reply(struct srv *s, struct srv_req *r, bimip_MessageScheme *m)
{
	srv_reply(s, r->rid, r->rid_len, r->session, m);
}

/* A response held until a record is durable: kept encoded (a few hundred
 * bytes), not as the ~17 KiB envelope it was built in. */
struct deferred {
	struct srv *s;
	uint8_t rid[BM_IPC_ORIGIN_MAX];
	size_t rid_len;
	uint64_t session;
	int64_t route;
	size_t len;
	uint8_t bytes[];
};

static struct deferred *defer(struct srv *s, struct srv_req *r, bimip_MessageScheme *m)
{
	static uint8_t buf[BM_ENV_MAX_BYTES];
	struct deferred *d;
	size_t n;

	if (bm_env_encode(m, buf, sizeof(buf), &n))
		return NULL;
	d = malloc(sizeof(*d) + n);
	if (!d)
		return NULL;
	d->s = s;
	memcpy(d->rid, r->rid, r->rid_len);
	d->rid_len = r->rid_len;
	d->session = r->session;
	d->route = r->m->route;
	d->len = n;
	memcpy(d->bytes, buf, n);
	return d;
}

static void on_durable_reply(void *ud, int status, uint64_t offset)
{
	struct deferred *d = ud;

	if (status)
		srv_reply_error(d->s, d->rid, d->rid_len, d->session, 503, d->route,
				"not stored: %s", bm_strerror(status));
	else
		srv_reply_raw(d->s, d->rid, d->rid_len, d->session, d->bytes, d->len);
	free(d);
}

/* Log a state record and answer with m once it is durable. */
static void log_then_reply(struct srv *s, struct srv_req *r, json_t *rec,
			   bimip_MessageScheme *m)
{
	struct deferred *d = defer(s, r, m);
	int rc;

	if (!d || !rec) {
		free(d);
		json_decref(rec);
		ERR(s, r, 500, "out of memory");
		return;
	}
	rc = srv_state_log(s, rec, on_durable_reply, d);
	if (rc) {
		/* Not appended: on_durable_reply will never run. */
		ERR(s, r, bm_err_http(rc), "cannot store the change: %s", bm_strerror(rc));
		free(d);
	}
}

/* The session user may act only as themself: an empty identity means "me". */
static int is_self(struct srv_req *r, const char *eid)
{
	return !eid[0] || !strcmp(eid, r->user->eid);
}

/* --- awareness --------------------------------------------------------------- */

/* Whether owner has added viewer as a subscriber (may see owner's awareness). */
static int is_subscriber(struct srv_user *owner, const char *viewer)
{
	return bm_map_get(&owner->subscribers, viewer) != NULL;
}

/* Location only to an authorized contact: one u subscribes to as well. */
static void fill_awareness(struct srv_user *u, int authorized, int32_t *status,
			   double *lat, double *lon, int32_t *intention)
{
	*status = u->n_devs ? u->status : AW_OFFLINE;
	*intention = u->intention;
	if (authorized) {
		*lat = u->lat;
		*lon = u->lon;
	}
}

/* Deliver an AwarenessNotification (location included) to viewer's devices,
 * without the location unless viewer has its subject as subscriber too. */
void srv_awareness_push(struct srv *s, struct srv_user *viewer, bimip_MessageScheme *m)
{
	bimip_AwarenessNotification *n = &m->payload.awareness_notification;

	if (!bm_map_get(&viewer->subscribers, n->from.eid))
		n->latitude = n->longitude = 0;
	n->has_to = true;
	ident(&n->to, viewer->eid, "");
	for (struct srv_dev *d = viewer->devs; d; d = d->next)
		srv_push(s, d, m, 0);
}

void srv_awareness_changed(struct srv *s, struct srv_user *u)
{
	const char *k;

	if (s->replaying)
		return;
	for (size_t it = 0; bm_map_next(&u->subscribers, &it, &k, NULL);) {
		int here = srv_owns(s, k);
		struct srv_user *v = here ? srv_user_get(s, k, 0) : NULL;
		bimip_AwarenessNotification *n;

		if ((here && (!v || !v->devs)) || bm_map_get(&u->blocked, k))
			continue;
		n = &begin(bimip_MessageScheme_awareness_notification_tag)
			     ->payload.awareness_notification;
		n->has_from = true;
		ident(&n->from, u->eid, "");
		fill_awareness(u, 1, &n->status, &n->latitude, &n->longitude,
			       &n->awareness_intention);
		n->last_seen = u->last_seen;
		if (here)
			srv_awareness_push(s, v, &out);
		else
			srv_notify_remote(s, k, &out);
	}
}

/* A request about another user owned elsewhere goes to its owner (which
 * answers the session); 1 if it went, or was answered with an error. */
static int elsewhere(struct srv *s, struct srv_req *r, const char *key, int flags)
{
	int rc;

	if (srv_owns(s, key))
		return 0;
	if (r->remote) {
		ERR(s, r, 503, "ownership is moving; try again");
		return 1;
	}
	rc = srv_forward(s, r, key, flags);
	if (rc)
		ERR(s, r, 503, "the server that owns this is unavailable; try again");
	return 1;
}

static void h_awareness_request(struct srv *s, struct srv_req *r)
{
	bimip_AwarenessRequest *q = &r->m->payload.awareness_request;
	bimip_AwarenessResponse *a;
	struct srv_user *y;
	int64_t id = q->awareness_identifier;

	if (!q->has_to || !q->to.eid[0]) {
		ERR(s, r, 400, "awareness_request needs to.eid");
		return;
	}
	if (q->has_from && !is_self(r, q->from.eid)) {
		ERR(s, r, 403, "from.eid must be the session's user");
		return;
	}
	if (!is_self(r, q->to.eid) &&
	    elsewhere(s, r, q->to.eid,
		      bm_map_get(&r->user->subscribers, q->to.eid) ? 0x02 : 0))
		return;
	/* An unknown user has no subscribers: the answer is 403 either way,
	 * and a lookup must not create state. */
	y = srv_user_get(s, q->to.eid, 0);
	if (!y) {
		ERR(s, r, 403, "not a subscriber of '%s'", q->to.eid);
		return;
	}
	if (y != r->user) {
		if (bm_map_get(&y->blocked, r->user->eid)) {
			ERR(s, r, 403, "'%s' has blocked you", y->eid);
			return;
		}
		if (!is_subscriber(y, r->user->eid)) {
			ERR(s, r, 403, "not a subscriber of '%s'", y->eid);
			return;
		}
	}
	a = &begin(bimip_MessageScheme_awareness_response_tag)->payload.awareness_response;
	a->has_from = a->has_to = true;
	ident(&a->from, y->eid, "");
	ident(&a->to, r->user->eid, r->device);
	snprintf(a->awareness_identifier, sizeof(a->awareness_identifier), "%" PRId64, id);
	fill_awareness(y, y == r->user || (r->remote ? r->mutual
				: bm_map_get(&r->user->subscribers, y->eid) != NULL),
		       &a->status, &a->latitude, &a->longitude, &a->awareness_intention);
	a->timestamp = y->n_devs ? bm_wall_ms() : y->last_seen;
	reply(s, r, &out);
}

static void h_awareness_notification(struct srv *s, struct srv_req *r)
{
	bimip_AwarenessNotification *n = &r->m->payload.awareness_notification;
	struct srv_user *u = r->user;
	int64_t now = (int64_t)bm_mono_ms();
	bimip_AwarenessResponse *a;
	json_t *rec;

	if (n->has_from && !is_self(r, n->from.eid)) {
		ERR(s, r, 403, "from.eid must be the session's user");
		return;
	}
	if (n->status < 1 || n->status > 7) {
		ERR(s, r, 400, "awareness status %d is not in 1..7", (int)n->status);
		return;
	}
	if (n->latitude < -90 || n->latitude > 90 || n->longitude < -180 ||
	    n->longitude > 180) {
		ERR(s, r, 400, "latitude/longitude out of range");
		return;
	}
	if (u->last_notify_ms && now - u->last_notify_ms < s->cfg.awareness_min_interval_ms) {
		ERR(s, r, 429, "awareness changes are limited to one per %" PRId64 " ms",
		    s->cfg.awareness_min_interval_ms);
		return;
	}
	u->last_notify_ms = now;
	/* Status 2 while connected means "appear offline". */
	u->status = n->status;
	u->lat = n->latitude;
	u->lon = n->longitude;
	u->intention = n->awareness_intention;
	rec = json_pack("{s:s, s:s, s:I, s:i, s:f, s:f, s:i}", "t", "seen", "e", u->eid,
			"ts", (json_int_t)u->last_seen, "st", u->status, "lat", u->lat,
			"lon", u->lon, "in", u->intention);
	srv_awareness_changed(s, u);
	a = &begin(bimip_MessageScheme_awareness_response_tag)->payload.awareness_response;
	a->has_from = a->has_to = true;
	ident(&a->from, u->eid, "");
	ident(&a->to, u->eid, r->device);
	a->status = u->status;
	a->latitude = u->lat;
	a->longitude = u->lon;
	a->awareness_intention = u->intention;
	a->timestamp = bm_wall_ms();
	log_then_reply(s, r, rec, &out);
}

/* --- ping, logout ---------------------------------------------------------------- */

static void h_ping(struct srv *s, struct srv_req *r)
{
	bimip_PingPong in = r->m->payload.pingpong_message, *p;

	if (in.type != 1) {
		ERR(s, r, 400, "pingpong type must be 1 (REQUEST)");
		return;
	}
	p = &begin(bimip_MessageScheme_pingpong_message_tag)->payload.pingpong_message;
	p->has_to = true;
	ident(&p->to, r->user->eid, r->device);
	p->type = 2;
	p->status = 2;
	p->request_time = in.request_time;
	p->response_time = bm_wall_ms();
	p->rtt = in.request_time ? p->response_time - in.request_time : 0;
	reply(s, r, &out);
}

static void h_logout(struct srv *s, struct srv_req *r)
{
	bimip_Logout *l = &r->m->payload.logout, *o;

	if (l->type != 1) {
		ERR(s, r, 400, "logout type must be 1 (REQUEST)");
		return;
	}
	if (l->has_entity && !is_self(r, l->entity.eid)) {
		ERR(s, r, 403, "can only log out your own session");
		return;
	}
	o = &begin(bimip_MessageScheme_logout_tag)->payload.logout;
	o->has_entity = true;
	ident(&o->entity, r->user->eid, r->device);
	o->type = 2;
	o->status = 3;
	o->timestamp = bm_wall_ms();
	reply(s, r, &out);
	srv_kick(s, r->rid, r->rid_len, r->session, 1000, "logged out");
}

/* --- contacts ---------------------------------------------------------------------- */

static void h_subscriber_add(struct srv *s, struct srv_req *r)
{
	bimip_SubscriberAddRequest *q = &r->m->payload.subscriber_add_request;
	bimip_SubscriberAddResponse *a;
	struct srv_user *u = r->user;
	const char *sub = q->has_subscriber ? q->subscriber.eid : "";
	int exists;

	if (q->has_owner && !is_self(r, q->owner.eid)) {
		ERR(s, r, 403, "owner must be the session's user");
		return;
	}
	if (!sub[0] || !strcmp(sub, u->eid)) {
		ERR(s, r, 400, "subscriber.eid must name another user");
		return;
	}
	exists = bm_map_get(&u->subscribers, sub) != NULL;
	if (!exists && (int64_t)u->subscribers.count >= s->cfg.max_contacts) {
		ERR(s, r, 413, "contact list is full (%" PRId64 " subscribers)",
		    s->cfg.max_contacts);
		return;
	}
	a = &begin(bimip_MessageScheme_subscriber_add_response_tag)
		     ->payload.subscriber_add_response;
	a->has_owner = a->has_subscriber = true;
	ident(&a->owner, u->eid, r->device);
	ident(&a->subscriber, sub, "");
	BM_SET_STR(a->subscriber_resource_id, q->subscriber_resource_id);
	a->status = 1;
	BM_SET_STR(a->message, exists ? "already a subscriber" : "subscriber added");
	a->timestamp = bm_wall_ms();
	if (exists) {
		reply(s, r, &out);
		return;
	}
	log_then_reply(s, r, json_pack("{s:s, s:s, s:s}", "t", "sub", "o", u->eid, "s", sub),
		       &out);
	/* The new subscriber learns the current awareness at once. */
	srv_awareness_changed(s, u);
}

static void h_subscriber_remove(struct srv *s, struct srv_req *r)
{
	bimip_SubscriberRemoveRequest *q = &r->m->payload.subscriber_remove_request;
	bimip_SubscriberRemoveResponse *a;
	const char *sub = q->has_subscriber ? q->subscriber.eid : "";

	if (q->has_owner && !is_self(r, q->owner.eid)) {
		ERR(s, r, 403, "owner must be the session's user");
		return;
	}
	if (!sub[0]) {
		ERR(s, r, 400, "subscriber.eid is required");
		return;
	}
	if (!bm_map_get(&r->user->subscribers, sub)) {
		ERR(s, r, 404, "'%s' is not a subscriber", sub);
		return;
	}
	a = &begin(bimip_MessageScheme_subscriber_remove_response_tag)
		     ->payload.subscriber_remove_response;
	a->has_owner = a->has_subscriber = true;
	ident(&a->owner, r->user->eid, r->device);
	ident(&a->subscriber, sub, "");
	a->status = 1;
	BM_SET_STR(a->message, "subscriber removed");
	a->timestamp = bm_wall_ms();
	log_then_reply(s, r, json_pack("{s:s, s:s, s:s}", "t", "unsub", "o",
				       r->user->eid, "s", sub), &out);
}

static void h_block(struct srv *s, struct srv_req *r)
{
	bimip_BlockSubscriber *q = &r->m->payload.block_subscriber, *a;
	const char *who = q->has_subscriber ? q->subscriber.eid : "";
	int block = q->status != 2;   /* 1 (or unset) = block, 2 = unblock */

	if (q->type != 1) {
		ERR(s, r, 400, "block_subscriber type must be 1 (REQUEST)");
		return;
	}
	if (q->has_owner && !is_self(r, q->owner.eid)) {
		ERR(s, r, 403, "owner must be the session's user");
		return;
	}
	if (!who[0] || !strcmp(who, r->user->eid)) {
		ERR(s, r, 400, "subscriber.eid must name another user");
		return;
	}
	if (q->status < 0 || q->status > 2) {
		ERR(s, r, 400, "block status must be 1 (block) or 2 (unblock)");
		return;
	}
	a = &begin(bimip_MessageScheme_block_subscriber_tag)->payload.block_subscriber;
	a->has_owner = a->has_subscriber = true;
	ident(&a->owner, r->user->eid, r->device);
	ident(&a->subscriber, who, "");
	a->type = 2;
	a->status = 1;
	BM_SET_STR(a->message, block ? "blocked" : "unblocked");
	a->timestamp = bm_wall_ms();
	log_then_reply(s, r, json_pack("{s:s, s:s, s:s}", "t", block ? "block" : "unblock",
				       "o", r->user->eid, "s", who), &out);
}

/* --- tokens ----------------------------------------------------------------------- */

struct revoke_ctx {
	struct deferred *reply;
	struct bm_buf body;
};

static void on_revoked(void *ud, int status, uint64_t offset)
{
	struct revoke_ctx *c = ud;
	struct srv *s = c->reply->s;

	/* Answer first: the revoking session may be one the signal now closes. */
	on_durable_reply(c->reply, status, offset);
	if (!status)
		srv_broadcast(s, BM_IPC_REVOKE, c->body.data, c->body.len);
	bm_buf_release(&c->body);
	free(c);
}

int srv_revoke(struct srv *s, const char *eid, const char *device,
	       const char *jti, int64_t exp, struct bm_buf *delta,
	       srv_done_fn *cb, void *ud)
{
	int64_t now = bm_wall_s();
	char key[SRV_EID_MAX + SRV_DEV_MAX + 4];
	json_t *rec, *d;
	char *txt;

	/* One timestamp for the record and for what the signals are told. */
	if (jti && *jti) {
		rec = json_pack("{s:s, s:s, s:s, s:s, s:I}", "t", "rvk", "e", eid, "d", "",
				"j", jti, "exp", (json_int_t)exp);
		d = json_pack("{s:{s:I}, s:{}}", "jti", jti, (json_int_t)exp, "before");
	} else {
		snprintf(key, sizeof(key), device && *device ? "%s\x1f%s" : "%s", eid,
			 device ? device : "");
		rec = json_pack("{s:s, s:s, s:s, s:s, s:I}", "t", "rvk", "e", eid, "d",
				device ? device : "", "j", "", "bf", (json_int_t)now);
		d = json_pack("{s:{}, s:{s:I}}", "jti", "before", key, (json_int_t)now);
	}
	txt = d ? json_dumps(d, JSON_COMPACT) : NULL;
	json_decref(d);
	if (!rec || !txt || bm_buf_adds(delta, txt)) {
		json_decref(rec);
		free(txt);
		return BM_ENOMEM;
	}
	free(txt);
	bm_info("tokens", "revoking %s of eid=%s%s%s", jti && *jti ? "token" : "tokens",
		eid, device && *device ? " device=" : "", device ? device : "");
	return srv_state_log(s, rec, cb, ud);
}

static void h_token_revoke(struct srv *s, struct srv_req *r)
{
	bimip_TokenRevokeRequest *q = &r->m->payload.token_revoke_request;
	bimip_TokenRevokeResponse *a;
	struct bm_jwt_claims c;
	struct revoke_ctx *ctx;
	const char *device = q->has_to ? q->to.connection_resource_id : "";
	int64_t now = bm_wall_ms();
	int rc;

	memset(&c, 0, sizeof(c));
	if (q->type != 1) {
		ERR(s, r, 400, "token_revoke_request type must be 1 (REQUEST)");
		return;
	}
	if (q->has_to && !is_self(r, q->to.eid)) {
		ERR(s, r, 403, "can only revoke your own tokens");
		return;
	}
	if (q->token[0]) {
		rc = bm_jwt_verify(s->ring, q->token, strlen(q->token), bm_wall_s(),
				   s->cfg.token_leeway_ms / 1000, &c);
		if (rc && rc != BM_ETOKEN_EXPIRED) {
			ERR(s, r, 400, "token cannot be revoked: %s", bm_strerror(rc));
			return;
		}
		if (rc == BM_ETOKEN_EXPIRED) {
			/* Already refused everywhere: nothing to store. */
			a = &begin(bimip_MessageScheme_token_revoke_response_tag)
				     ->payload.token_revoke_response;
			a->has_to = true;
			ident(&a->to, r->user->eid, device);
			a->status = 1;
			a->type = 2;
			a->timestamp = now;
			a->rtt = q->timestamp ? now - q->timestamp : 0;
			reply(s, r, &out);
			return;
		}
		if (strcmp(c.sub, r->user->eid)) {
			ERR(s, r, 403, "can only revoke your own tokens");
			return;
		}
	}
	a = &begin(bimip_MessageScheme_token_revoke_response_tag)->payload.token_revoke_response;
	a->has_to = true;
	ident(&a->to, r->user->eid, device);
	a->status = 1;
	a->type = 2;
	a->timestamp = now;
	a->rtt = q->timestamp ? now - q->timestamp : 0;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx || !(ctx->reply = defer(s, r, &out))) {
		free(ctx);
		ERR(s, r, 500, "out of memory");
		return;
	}
	rc = srv_revoke(s, r->user->eid, device, c.jti, c.exp, &ctx->body, on_revoked, ctx);
	if (rc) {
		ERR(s, r, bm_err_http(rc), "cannot store the revocation: %s", bm_strerror(rc));
		bm_buf_release(&ctx->body);
		free(ctx->reply);
		free(ctx);
	}
}

/* --- chat --------------------------------------------------------------------------- */

static void version_update_fill(struct srv_req *r, const char *local, const char *chat_id,
				int64_t version)
{
	bimip_VersionUpdate *v = &begin(bimip_MessageScheme_version_update_tag)
					  ->payload.version_update;

	v->has_to = true;
	ident(&v->to, r->user->eid, r->device);
	srv_message_id(v->message_id, sizeof(v->message_id), chat_id, version);
	BM_SET_STR(v->message_id_local, local);
	BM_SET_STR(v->chat_id, chat_id);
	v->version = version;
	v->type = 1;
	v->status = 1;
	v->timestamp = bm_wall_ms();
}

static void version_update_reply(struct srv *s, struct srv_req *r, const char *local,
				 const char *chat_id, int64_t version)
{
	version_update_fill(r, local, chat_id, version);
	reply(s, r, &out);
}

/* A resend of a message whose records are appended here but not all
 * durable yet: its VersionUpdate once they are (the queue runs completions
 * in append order, so after the first copy's own).  The sender's device
 * may have had the first one already, through its stream: the resend
 * must still get an answer. */
static void version_update_when_durable(struct srv *s, struct srv_req *r, const char *local,
					const char *chat_id, int64_t version)
{
	struct deferred *d;

	version_update_fill(r, local, chat_id, version);
	d = defer(s, r, &out);
	if (!d) {
		ERR(s, r, 500, "out of memory");
		return;
	}
	if (bm_queue_after(s->q, on_durable_reply, d)) {
		free(d);
		ERR(s, r, 503, "the queue cannot take writes");
	}
}

struct chat_ctx {
	struct srv *s;
	struct srv_idem *idem;   /* the resend key, while idem_seq is not evicted */
	uint64_t idem_seq;
	uint8_t rid[BM_IPC_ORIGIN_MAX];
	size_t rid_len;
	uint64_t session;
	int64_t route;
	uint64_t accepted_ns;    /* for bimip_server_chat_commit_seconds */
};

/* One per chat message, freed when it is durable: reused. */
static struct bm_pool chat_pool = BM_POOL_INIT(struct chat_ctx, 4096);

static void on_chat_stored(void *ud, int status, uint64_t offset)
{
	struct chat_ctx *c = ud;

	if (status) {
		srv_reply_error(c->s, c->rid, c->rid_len, c->session, 503, c->route,
				"message not stored: %s", bm_strerror(status));
	} else {
		bm_metrics_observe(c->s->m.chat_commit,
				   (double)(bm_mono_ns() - c->accepted_ns) / 1e9);
		/* Still remembered (the ring forgets oldest first): no lookup. */
		if (c->idem && c->idem_seq >= c->s->idem.evicted)
			c->idem->durable = 1;
	}
	bm_pool_put(&chat_pool, c);
}

/* MessageScheme{route 13, chat_message = core + author + acknowledgment}. */
size_t srv_chat_envelope(uint8_t *dst, const uint8_t *core, size_t n,
			    const char *author, int ack)
{
	size_t al = strlen(author), cm = n + 2 + al + 2, o = 0;

	dst[o++] = 0x08;                       /* route (1), varint */
	dst[o++] = bimip_MessageScheme_chat_message_tag;
	dst[o++] = (bimip_MessageScheme_chat_message_tag << 3) | 2;
	for (size_t v = cm; ; v >>= 7) {
		dst[o++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		if (v <= 0x7f)
			break;
	}
	memcpy(dst + o, core, n);
	o += n;
	dst[o++] = (bimip_ChatMessage_author_tag << 3) | 2;
	dst[o++] = (uint8_t)al;
	memcpy(dst + o, author, al);
	o += al;
	dst[o++] = bimip_ChatMessage_acknowledgment_tag << 3;   /* varint */
	dst[o++] = (uint8_t)ack;
	return o;
}

/* h_chat clears a ChatMessage field by field past the payload: a field
 * added to the message must be cleared there too. */
_Static_assert(offsetof(bimip_ChatMessage, media_size_bytes) + sizeof(int64_t) ==
	       sizeof(bimip_ChatMessage), "ChatMessage grew: clear the new field in h_chat");

static void h_chat(struct srv *s, struct srv_req *r)
{
	static bimip_MessageScheme cm;
	int media = r->m->which_payload == bimip_MessageScheme_media_payload_request_tag;
	bimip_TextPayloadRequest *t = &r->m->payload.text_payload_request;
	bimip_MediaPayloadRequest *md = &r->m->payload.media_payload_request;
	const bimip_Identity *to = media ? md->to : t->to;
	pb_size_t to_count = media ? md->to_count : t->to_count;
	const char *local = media ? md->message_id_local : t->message_id_local;
	bimip_ChatMessage *c = &cm.payload.chat_message;
	struct srv_user *a = r->user, *b = NULL;
	struct srv_chat *chat;
	struct srv_idem *e;
	struct srv_idem_key ik;
	struct chat_ctx *ctx;
	char cid[SRV_CHAT_ID_LEN + 1];
	uint64_t ro = 0, so = 0;
	int64_t v;
	int rc, here_b, all_here;

	if ((media ? md->has_from : t->has_from) &&
	    !is_self(r, media ? md->from.eid : t->from.eid)) {
		ERR(s, r, 403, "from.eid must be the session's user");
		return;
	}
	if (to_count != 1 || !to[0].eid[0]) {
		ERR(s, r, 400, "a chat message needs exactly one receiver (chat is 1:1)");
		return;
	}
	if (!strcmp(to[0].eid, a->eid)) {
		ERR(s, r, 400, "cannot send a chat message to yourself");
		return;
	}
	if (!bm_ws_utf8_valid((const uint8_t *)to[0].eid, strlen(to[0].eid)) ||
	    !bm_ws_utf8_valid((const uint8_t *)local, strlen(local))) {
		ERR(s, r, 400, "to.eid and message_id_local must be valid UTF-8");
		return;
	}
	/* The session's names come from a verified token (JSON, so UTF-8);
	 * checked anyway, as resend keys and snapshots are JSON. */
	if (!bm_ws_utf8_valid((const uint8_t *)a->eid, strlen(a->eid)) ||
	    !bm_ws_utf8_valid((const uint8_t *)r->device, strlen(r->device))) {
		ERR(s, r, 400, "the session's eid and device must be valid UTF-8");
		return;
	}
	if (media ? !md->cdn_url_id[0] : !t->content[0]) {
		ERR(s, r, 400, media ? "media_payload_request needs cdn_url_id"
				     : "text_payload_request needs content");
		return;
	}
	if (media && (md->type < 1 || md->type > 4)) {
		ERR(s, r, 400, "media type %d is not 1..4", (int)md->type);
		return;
	}
	/* The chat's owner assigns versions; when it has both streams too (one
	 * server, or both users and the chat on this one), the copies are
	 * appended here; otherwise the message is driven across servers
	 * (server/peer.c). */
	if (strlen(to[0].eid) > SRV_EID_MAX) {
		ERR(s, r, 400, "invalid receiver");
		return;
	}
	/* The resend key's index lines load while the chat and the receiver
	 * are looked up. */
	if (local[0]) {
		srv_idem_key(s, &ik, a->eid, r->device, local);
		srv_idem_prefetch(s, &ik);
	}
	/* A known chat's id comes from the pair index (no SHA-256). */
	chat = srv_chat_get(s, a->eid, to[0].eid, 0);
	if (chat)
		memcpy(cid, chat->id, sizeof(cid));
	else
		srv_chat_id(a->eid, to[0].eid, cid);
	if (elsewhere(s, r, cid, 0))
		return;
	here_b = srv_owns(s, to[0].eid);
	all_here = here_b && !r->remote;
	if (here_b) {
		b = srv_user_get(s, to[0].eid, 1);
		if (!b) {
			ERR(s, r, 400, "invalid receiver");
			return;
		}
		if (bm_map_get(&b->blocked, a->eid)) {
			ERR(s, r, 403, "'%s' has blocked you", b->eid);
			return;
		}
	}
	if (local[0]) {
		e = srv_idem_find_key(s, &ik);
		if (e && e->durable >= 0) {
			/* A resend: the original ids, never stored twice.  While the
			 * first copy is still being stored here, the answer waits
			 * for it; while its copies go to other servers (a pending
			 * message), the VersionUpdate comes through the stream. */
			char id[SRV_MSGID_MAX];

			(*s->m.dup_resends)++;
			if (e->durable) {
				version_update_reply(s, r, local, e->chat_id, e->version);
				return;
			}
			srv_message_id(id, sizeof(id), e->chat_id, e->version);
			if (!bm_map_get(&s->pending, id))
				version_update_when_durable(s, r, local, e->chat_id, e->version);
			return;
		}
	}
	if (!chat)
		chat = srv_chat_get(s, a->eid, to[0].eid, 1);
	if (!chat) {
		ERR(s, r, 500, "out of memory");
		return;
	}
	v = chat->version + 1;
	ctx = bm_pool_get(&chat_pool);
	if (!ctx) {
		ERR(s, r, 500, "out of memory");
		return;
	}
	ctx->s = s;
	ctx->idem = NULL;
	memcpy(ctx->rid, r->rid, r->rid_len);
	ctx->rid_len = r->rid_len;
	ctx->session = r->session;
	ctx->route = r->m->route;
	ctx->accepted_ns = bm_mono_ns();

	/* Only the fields used: the whole envelope is ~17 KiB, and the chat
	 * message's text, caption and thumbnail arrays are ~11 KiB that an
	 * empty string clears as well (every encoder stops at the NUL). */
	cm.route = 0;
	cm.offset = 0;
	memset(c, 0, offsetof(bimip_ChatMessage, payload));
	c->payload.text[0] = 0;
	c->acknowledgment = 0;
	c->acknowledgment_timestamp = 0;
	c->media_type = 0;
	c->caption[0] = 0;
	c->thumbnail_url[0] = 0;
	c->media_size_bytes = 0;
	cm.which_payload = bimip_MessageScheme_chat_message_tag;
	srv_message_id(c->message_id, sizeof(c->message_id), chat->id, v);
	BM_SET_STR(c->message_id_local, local);
	c->version = v;
	BM_SET_STR(c->chat_id, chat->id);
	c->has_from = true;
	ident(&c->from, a->eid, r->device);
	c->to_count = 1;
	ident(&c->to[0], to[0].eid, "");
	if (media) {
		c->which_payload = bimip_ChatMessage_media_url_tag;
		BM_SET_STR(c->payload.media_url, md->cdn_url_id);
		c->media_type = md->type;
		BM_SET_STR(c->caption, md->caption);
		BM_SET_STR(c->thumbnail_url, md->thumbnail_url);
		c->media_size_bytes = md->media_size_bytes;
		c->created_at = md->created_at;
	} else {
		c->which_payload = bimip_ChatMessage_text_tag;
		BM_SET_STR(c->payload.text, t->content);
		c->created_at = t->created_at;
	}
	c->server_received_at = bm_wall_ms();

	/* Order: the receiver's copy, then the sender's copy.  Completions run
	 * in append order, so the sender copy's completion means both are
	 * durable.  No state record: the version and the resend key are applied
	 * in memory, and a crash that keeps any prefix of the log has them
	 * restored from the copies at start-up (state.c, repair()), so no
	 * version is ever handed out twice and a resend is never stored twice. */
	/* The two copies differ only in author and acknowledgment: encode the
	 * rest once and append those two fields per copy (protobuf takes fields
	 * in any order). */
	{
		static uint8_t core[bimip_ChatMessage_size], env[bimip_ChatMessage_size + 32];
		size_t n, core_len;

		c->author[0] = 0;
		c->acknowledgment = 0;
		core_len = bm_env_chat_message(core, sizeof(core), c);
		if (!all_here) {
			bm_pool_put(&chat_pool, ctx);
			rc = srv_pending_start(s, chat->id, v, a->eid, to[0].eid, r->device,
					       local, r->rid, r->rid_len, r->session,
					       r->m->route, core, core_len);
			if (rc)
				ERR(s, r, bm_err_http(rc), "message not stored: %s",
				    bm_strerror(rc));
			else
				(*s->m.chats)++;
			return;
		}
		n = srv_chat_envelope(env, core, core_len, "receiver", 1);
		BM_SET_STR(c->author, "receiver");
		c->acknowledgment = 1;
		rc = srv_stream_append(s, b, SRV_REC_PLAIN, r->device, &cm, env, n, &ro,
				       NULL, NULL);
		if (!rc) {
			n = srv_chat_envelope(env, core, core_len, "sender", 4);
			BM_SET_STR(c->author, "sender");
			c->acknowledgment = 4;
			rc = srv_stream_append(s, a, SRV_REC_SENDER_COPY, r->device, &cm, env, n,
					       &so, on_chat_stored, ctx);
		}
	}
	if (rc) {
		ERR(s, r, bm_err_http(rc), "message not stored: %s", bm_strerror(rc));
		bm_pool_put(&chat_pool, ctx);
		return;
	}
	/* Appended: ctx belongs to the completion now.  This fails only out
	 * of memory (the strings were checked above), which leaves the resend
	 * key unrecorded; the version is always taken. */
	if (srv_state_note_msg(s, chat, v, a->eid, r->device, local, local[0] ? &ik : NULL, ro,
			       so, &ctx->idem))
		bm_err("chat", "cannot record message %s.%lld in memory", chat->id,
		       (long long)v);
	if (ctx->idem)
		ctx->idem_seq = bm_keyring_seq(&s->idem, ctx->idem);
	(*s->m.chats)++;
}

static int parse_message_id(const char *id, char chat[SRV_CHAT_ID_LEN + 1],
			    int64_t *version)
{
	const char *dot = strchr(id, '.');
	char *end;

	if (!dot || dot - id != SRV_CHAT_ID_LEN)
		return BM_EINVAL;
	memcpy(chat, id, SRV_CHAT_ID_LEN);
	chat[SRV_CHAT_ID_LEN] = 0;
	*version = strtoll(dot + 1, &end, 10);
	return *end || *version < 1 ? BM_EINVAL : 0;
}

static void h_ack(struct srv *s, struct srv_req *r)
{
	static bimip_MessageScheme am;
	bimip_AcknowledgmentRequest *q = &r->m->payload.acknowledgment_request;
	bimip_AcknowledgmentResponse *a = &am.payload.acknowledgment_response;
	char chat_id[SRV_CHAT_ID_LEN + 1];
	struct srv_chat *chat;
	struct srv_user *other;
	const char *other_eid;
	struct deferred *d;
	int64_t version;
	int rc;

	if (q->has_from && !is_self(r, q->from.eid)) {
		ERR(s, r, 403, "from.eid must be the session's user");
		return;
	}
	if (q->status != 2 && q->status != 3) {
		ERR(s, r, 400, "acknowledgment status must be 2 (delivered) or 3 (read)");
		return;
	}
	if (parse_message_id(q->message_id, chat_id, &version)) {
		ERR(s, r, 404, "unknown message_id '%s'", q->message_id);
		return;
	}
	if (elsewhere(s, r, chat_id, 0))
		return;
	if (!(chat = srv_chat_find(s, chat_id)) || version > chat->version) {
		ERR(s, r, 404, "unknown message_id '%s'", q->message_id);
		return;
	}
	if (strcmp(chat->a, r->user->eid) && strcmp(chat->b, r->user->eid)) {
		ERR(s, r, 403, "not a party to message '%s'", q->message_id);
		return;
	}
	other_eid = strcmp(chat->a, r->user->eid) ? chat->a : chat->b;
	memset(&am, 0, sizeof(am));
	am.which_payload = bimip_MessageScheme_acknowledgment_response_tag;
	am.route = bimip_MessageScheme_acknowledgment_response_tag;
	a->has_from = a->has_to = true;
	ident(&a->from, r->user->eid, r->device);
	ident(&a->to, other_eid, "");
	BM_SET_STR(a->message_id, q->message_id);
	a->status = q->status;
	a->timestamp = q->timestamp ? q->timestamp : bm_wall_ms();
	d = defer(s, r, &am);
	if (!d) {
		ERR(s, r, 500, "out of memory");
		return;
	}
	if (!srv_owns(s, other_eid)) {
		static uint8_t env[BM_ENV_MAX_BYTES];
		size_t n;

		rc = bm_env_encode(&am, env, sizeof(env), &n);
		if (!rc)
			rc = srv_append_any(s, other_eid, SRV_REC_PLAIN, r->device, NULL, NULL,
					    env, n, on_durable_reply, d);
	} else if (!(other = srv_user_get(s, other_eid, 1))) {
		rc = BM_ENOMEM;
	} else {
		rc = srv_stream_append(s, other, SRV_REC_PLAIN, r->device, &am, NULL, 0,
				       NULL, on_durable_reply, d);
	}
	if (rc) {
		free(d);
		ERR(s, r, bm_err_http(rc), "acknowledgment not stored: %s", bm_strerror(rc));
		return;
	}
	(*s->m.acks)++;
}

static void h_version_update(struct srv *s, struct srv_req *r)
{
	/* Seed 001 5.10: the sender answers the server's VersionUpdate with a
	 * RESPONSE.  Nothing waits for it; it is accepted and dropped. */
	if (r->m->payload.version_update.type != 2)
		ERR(s, r, 400, "clients send version_update only as type 2 (RESPONSE)");
}

static void h_signal(struct srv *s, struct srv_req *r)
{
	bimip_Signal *g = &r->m->payload.signal;
	struct srv_user *b;

	if (g->has_from && !is_self(r, g->from.eid)) {
		ERR(s, r, 403, "from.eid must be the session's user");
		return;
	}
	if (!g->has_to || !g->to.eid[0]) {
		ERR(s, r, 400, "signal needs to.eid");
		return;
	}
	if (elsewhere(s, r, g->to.eid, 0))
		return;
	b = srv_user_get(s, g->to.eid, 0);
	if (!b)
		return;  /* nobody online to tell: typing signals are not stored */
	if (bm_map_get(&b->blocked, r->user->eid)) {
		ERR(s, r, 403, "'%s' has blocked you", b->eid);
		return;
	}
	g->has_from = true;
	ident(&g->from, r->user->eid, r->device);
	for (struct srv_dev *d = b->devs; d; d = d->next)
		if (!g->to.connection_resource_id[0] ||
		    !strcmp(g->to.connection_resource_id, d->device))
			srv_push(s, d, r->m, 0);
}

/* --- sync ----------------------------------------------------------------------------- */

struct sync_ctx {
	struct srv *s;
	struct srv_dev dev;
	uint64_t last;
	unsigned count;
};

static int on_sync_record(void *ud, const struct bm_queue_meta *meta,
			  const void *data, int status)
{
	struct sync_ctx *c = ud;
	const uint8_t *p = data;

	c->last = meta->offset;
	if (status || meta->len < 3 || p[0] != 1 || 3u + p[2] > meta->len)
		return 0;
	if (srv_push_raw(c->s, &c->dev, p + 3 + p[2], meta->len - 3 - p[2],
			 (int64_t)meta->offset))
		return 1;
	c->count++;
	return 0;
}

static void h_sync(struct srv *s, struct srv_req *r)
{
	bimip_SyncRequest *q = &r->m->payload.sync_request;
	struct sync_ctx c = { .s = s };
	bimip_SyncResponse *a;
	char name[SRV_EID_MAX + 8];
	int64_t limit = q->limit > 0 ? q->limit : 100;
	int n = 0;

	if (q->after_offset < 0) {
		ERR(s, r, 400, "after_offset must be >= 0");
		return;
	}
	if (limit > s->cfg.sync_max)
		limit = s->cfg.sync_max;
	c.dev.user = r->user;
	snprintf(c.dev.device, sizeof(c.dev.device), "%s", r->device);
	memcpy(c.dev.rid, r->rid, r->rid_len);
	c.dev.rid_len = (uint8_t)r->rid_len;
	c.dev.session = r->session;
	c.last = (uint64_t)q->after_offset;
	srv_stream_name(r->user->eid, name, sizeof(name));
	if ((uint64_t)q->after_offset < r->user->durable) {
		uint64_t avail = r->user->durable - (uint64_t)q->after_offset;
		n = bm_queue_scan(s->q, name, (uint64_t)q->after_offset,
				  (unsigned)((uint64_t)limit < avail ? (uint64_t)limit : avail),
				  on_sync_record, &c);
		if (n < 0 && n != BM_ENOENT) {
			ERR(s, r, 500, "cannot read the stream: %s", bm_strerror(n));
			return;
		}
	}
	a = &begin(bimip_MessageScheme_sync_response_tag)->payload.sync_response;
	a->after_offset = q->after_offset;
	a->last_offset = (int64_t)c.last;
	a->head_offset = (int64_t)r->user->durable;
	a->count = (int32_t)c.count;
	a->more = c.last < r->user->durable;
	a->timestamp = bm_wall_ms();
	reply(s, r, &out);
}

static void h_offset_commit(struct srv *s, struct srv_req *r)
{
	bimip_OffsetCommit *q = &r->m->payload.offset_commit, *a;
	char name[SRV_EID_MAX + 8];
	struct deferred *d;
	int rc;

	if (q->type != 1) {
		ERR(s, r, 400, "offset_commit type must be 1 (REQUEST)");
		return;
	}
	if (q->offset < 0 || (uint64_t)q->offset > r->user->durable) {
		ERR(s, r, 400, "offset %" PRId64 " is outside the stream [0, %" PRIu64 "]",
		    q->offset, r->user->durable);
		return;
	}
	a = &begin(bimip_MessageScheme_offset_commit_tag)->payload.offset_commit;
	a->type = 2;
	a->offset = q->offset;
	a->status = 1;
	a->timestamp = bm_wall_ms();
	if (r->dev) {
		r->dev->committed = (uint64_t)q->offset;
		if (r->dev->sent < r->dev->committed)
			r->dev->sent = r->dev->committed;
	}
	if (q->offset == 0) {
		reply(s, r, &out);
		return;
	}
	d = defer(s, r, &out);
	if (!d) {
		ERR(s, r, 500, "out of memory");
		return;
	}
	srv_stream_name(r->user->eid, name, sizeof(name));
	rc = bm_queue_commit_offset(s->q, name, r->device, (uint64_t)q->offset,
				    on_durable_reply, d);
	if (rc) {
		free(d);
		ERR(s, r, bm_err_http(rc), "cannot commit: %s", bm_strerror(rc));
		return;
	}
	if (r->dev)
		srv_pump(s, r->dev);
}

static void h_server_only(struct srv *s, struct srv_req *r)
{
	ERR(s, r, 400, "route %d (%s) is not accepted from clients", (int)r->m->route,
	    bm_env_route_name(r->m->route));
}

typedef void route_fn(struct srv *s, struct srv_req *r);

static route_fn *const routes[BM_ENV_ROUTE_MAX + 1] = {
	[bimip_MessageScheme_awareness_notification_tag] = h_awareness_notification,
	[bimip_MessageScheme_awareness_request_tag] = h_awareness_request,
	[bimip_MessageScheme_pingpong_message_tag] = h_ping,
	[bimip_MessageScheme_token_revoke_request_tag] = h_token_revoke,
	[bimip_MessageScheme_subscriber_add_request_tag] = h_subscriber_add,
	[bimip_MessageScheme_block_subscriber_tag] = h_block,
	[bimip_MessageScheme_logout_tag] = h_logout,
	[bimip_MessageScheme_text_payload_request_tag] = h_chat,
	[bimip_MessageScheme_media_payload_request_tag] = h_chat,
	[bimip_MessageScheme_acknowledgment_request_tag] = h_ack,
	[bimip_MessageScheme_version_update_tag] = h_version_update,
	[bimip_MessageScheme_signal_tag] = h_signal,
	[bimip_MessageScheme_sync_request_tag] = h_sync,
	[bimip_MessageScheme_offset_commit_tag] = h_offset_commit,
	[bimip_MessageScheme_subscriber_remove_request_tag] = h_subscriber_remove,
};

void srv_route_forwarded(struct srv *s, struct srv_req *r)
{
	switch (r->m->route) {
	case bimip_MessageScheme_text_payload_request_tag:
	case bimip_MessageScheme_media_payload_request_tag:
	case bimip_MessageScheme_acknowledgment_request_tag:
	case bimip_MessageScheme_signal_tag:
	case bimip_MessageScheme_awareness_request_tag:
		routes[r->m->route](s, r);
		break;
	default:
		ERR(s, r, 400, "route %d is not forwarded between servers", (int)r->m->route);
	}
}

void srv_route(struct srv *s, struct srv_req *r)
{
	route_fn *fn = r->m->route > 0 && r->m->route <= BM_ENV_ROUTE_MAX
			       ? routes[r->m->route] : NULL;

	(fn ? fn : h_server_only)(s, r);
}
