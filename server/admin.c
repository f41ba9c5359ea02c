/*
 * admin.c - bimip-server's admin HTTP API (loopback by default, bearer key).
 *
 *   POST   /v1/tokens                {"eid","device","ttl"?}  -> {"token","jti","exp","kid"}
 *   POST   /v1/tokens/revoke         {"eid","device"?,"jti"?} -> {"revoked":true}
 *   POST   /v1/tokens/refresh        {"token"}                -> as /v1/tokens; old revoked
 *   GET    /v1/keys                  public keys that verify this server's tokens
 *   GET    /v1/status                node, counts, queue figures
 *   GET    /v1/users/<eid>/contacts  {"subscribers":[..],"blocked":[..]}
 *   POST   /v1/users/<eid>/contacts  {"subscriber":eid}   add
 *   DELETE /v1/users/<eid>/contacts/<subscriber>
 *   POST   /v1/users/<eid>/blocks    {"eid":eid}          block
 *   DELETE /v1/users/<eid>/blocks/<eid>
 *   GET    /v1/users/<eid>/sessions  online devices
 *   DELETE /v1/users/<eid>/sessions/<device>   close that session
 *   GET    /metrics, /healthz, /readyz (bm_admin built-ins)
 *
 * State changes are made durable (bm_queue_sync) before the reply.
 */
#include "srv.h"

#include "bm_admin.h"
#include "bm_cluster.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Longest token lifetime the admin API issues; a revoked jti is kept that
 * long, so it outlives any token that carries it. */
#define MAX_TTL_S (366LL * 86400)

int srv_token_issue(struct srv *s, const char *eid, const char *device,
		    int64_t ttl_s, struct bm_buf *out, struct bm_jwt_claims *c)
{
	memset(c, 0, sizeof(*c));
	if (!eid || !*eid || strlen(eid) > SRV_EID_MAX || !device || !*device ||
	    strlen(device) > SRV_DEV_MAX || ttl_s <= 0)
		return BM_EINVAL;
	snprintf(c->sub, sizeof(c->sub), "%s", eid);
	snprintf(c->device, sizeof(c->device), "%s", device);
	c->iat = bm_wall_s();
	c->exp = c->iat + ttl_s;
	return bm_jwt_sign(s->key, c, out);
}

static const char *jstr(const json_t *body, const char *k)
{
	const char *v = json_string_value(json_object_get(body, k));
	return v ? v : "";
}

static void on_tokens(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;
	struct bm_buf tok = BM_BUF_INIT;
	struct bm_jwt_claims c;
	json_t *ttl = json_object_get(body, "ttl");
	int64_t ttl_s = ttl ? (int64_t)json_integer_value(ttl) : s->cfg.token_ttl_ms / 1000;
	int rc;

	if (ttl_s > MAX_TTL_S) {
		bm_admin_reply_error(req, 400, "ttl %lld exceeds the limit of %lld seconds",
				     (long long)ttl_s, MAX_TTL_S);
		return;
	}

	if (!body || !json_is_object(body)) {
		bm_admin_reply_error(req, 400, "expected a JSON object with eid and device");
		return;
	}
	rc = srv_token_issue(s, jstr(body, "eid"), jstr(body, "device"), ttl_s, &tok, &c);
	if (rc) {
		bm_admin_reply_error(req, 400, "cannot issue a token: %s (eid and device "
				     "are required, ttl > 0)", bm_strerror(rc));
		return;
	}
	bm_info("admin", "issued token jti=%s eid=%s device=%s ttl=%llds", c.jti, c.sub,
		c.device, (long long)ttl_s);
	bm_admin_reply_json(req, 200, json_pack("{s:s, s:s, s:I, s:s, s:s}", "token",
						(char *)tok.data, "jti", c.jti,
						"exp", (json_int_t)c.exp, "kid",
						bm_jwt_key_kid(s->key), "eid", c.sub));
	bm_buf_release(&tok);
}

struct admin_revoke {
	struct srv *s;
	struct bm_buf body;
};

static void on_admin_revoked(void *ud, int status, uint64_t offset)
{
	struct admin_revoke *a = ud;

	if (!status)
		srv_broadcast(a->s, BM_IPC_REVOKE, a->body.data, a->body.len);
	bm_buf_release(&a->body);
	free(a);
}

static void on_revoke(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;
	const char *eid = jstr(body, "eid"), *dev = jstr(body, "device"), *jti = jstr(body, "jti");
	struct admin_revoke *a;
	int rc;

	if (!eid[0] || strlen(eid) > SRV_EID_MAX || strlen(dev) > SRV_DEV_MAX ||
	    strlen(jti) > 64) {
		bm_admin_reply_error(req, 400, "eid is required (device or jti optional)");
		return;
	}
	a = calloc(1, sizeof(*a));
	if (!a) {
		bm_admin_reply_error(req, 500, "out of memory");
		return;
	}
	a->s = s;
	rc = srv_revoke(s, eid, dev, jti, bm_wall_s() + MAX_TTL_S, &a->body,
			on_admin_revoked, a);
	if (rc) {
		bm_buf_release(&a->body);
		free(a);
		bm_admin_reply_error(req, 500, "cannot revoke: %s", bm_strerror(rc));
		return;
	}
	rc = bm_queue_sync(s->q);
	if (rc) {
		bm_admin_reply_error(req, 500, "revocation not durable: %s", bm_strerror(rc));
		return;
	}
	bm_admin_reply_json(req, 200, json_pack("{s:b}", "revoked", 1));
}

/* POST /v1/tokens/refresh {"token":..}: a new token for the same eid and
 * device; the old one is revoked.  A token expired less than
 * tokens.refresh_grace ago may still be refreshed. */
static void on_refresh(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;
	const char *tok = jstr(body, "token");
	struct bm_jwt_claims old, c;
	struct bm_buf out = BM_BUF_INIT;
	struct admin_revoke *a;
	int64_t now = bm_wall_s();
	int rc;

	rc = bm_jwt_verify(s->ring, tok, strlen(tok), now, s->cfg.token_leeway_ms / 1000, &old);
	if (rc == BM_ETOKEN_EXPIRED)
		rc = bm_jwt_verify(s->ring, tok, strlen(tok),
				   now - s->cfg.refresh_grace_ms / 1000,
				   s->cfg.token_leeway_ms / 1000, &old);
	if (!rc && srv_revoked(s, old.sub, old.device, old.jti, old.iat))
		rc = BM_ETOKEN_REVOKED;
	if (rc) {
		bm_admin_reply_error(req, 401, "cannot refresh: %s", bm_strerror(rc));
		return;
	}
	rc = srv_token_issue(s, old.sub, old.device, s->cfg.token_ttl_ms / 1000, &out, &c);
	a = rc ? NULL : calloc(1, sizeof(*a));
	if (a) {
		a->s = s;
		rc = srv_revoke(s, old.sub, "", old.jti, old.exp, &a->body, on_admin_revoked, a);
		if (rc) {
			bm_buf_release(&a->body);
			free(a);
		} else {
			rc = bm_queue_sync(s->q);
		}
	}
	if (rc || !a) {
		bm_buf_release(&out);
		bm_admin_reply_error(req, 500, "cannot refresh: %s", bm_strerror(rc ? rc : BM_ENOMEM));
		return;
	}
	bm_admin_reply_json(req, 200, json_pack("{s:s, s:s, s:I, s:s, s:s}", "token",
						(char *)out.data, "jti", c.jti, "exp",
						(json_int_t)c.exp, "kid", bm_jwt_key_kid(s->key),
						"eid", c.sub));
	bm_buf_release(&out);
}

static void on_keys(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;

	bm_admin_reply_raw(req, 200, "application/json", s->keys_json.data, s->keys_json.len);
}

static void on_status(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;
	struct bm_queue_stats st;

	bm_queue_stats(s->q, &st);
	bm_admin_reply_json(req, 200, json_pack(
		"{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I}}",
		"node", s->cfg.node_id, "role", "server", "zmq", s->zmq_bound,
		"users", (json_int_t)s->users.count, "chats", (json_int_t)s->chats.count,
		"sessions", (json_int_t)*s->m.sessions, "signals",
		(json_int_t)s->signals.count, "queue", "streams", (json_int_t)st.streams,
		"segments", (json_int_t)st.segments, "bytes", (json_int_t)st.log_bytes,
		"syncs", (json_int_t)st.syncs));
}

static json_t *set_keys(struct bm_map *m)
{
	json_t *a = json_array();
	const char *k;

	for (size_t it = 0; bm_map_next(m, &it, &k, NULL);)
		json_array_append_new(a, json_string(k));
	return a;
}

/* /v1/users/<eid>/<what>[/<arg>] */
static void on_users(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;
	char path[512], *eid, *what, *arg;
	unsigned method = bm_admin_req_method(req);
	struct srv_user *u;
	json_t *rec = NULL;

	snprintf(path, sizeof(path), "%s", bm_admin_req_suffix(req));
	eid = path;
	what = strchr(eid, '/');
	if (!what || what == eid) {
		bm_admin_reply_error(req, 404, "expected /v1/users/<eid>/{contacts,blocks,sessions}");
		return;
	}
	*what++ = 0;
	arg = strchr(what, '/');
	if (arg)
		*arg++ = 0;
	if (!srv_owns(s, eid)) {
		/* Only the owner has (and may change) a user's state; creating it
		 * here would hand an empty copy to the owner at the next change. */
		const struct srv_peer *p = srv_owner(s, eid);
		char msg[800];

		if (!p) {
			bm_admin_reply_error(req, 503, "no server owns '%s' now", eid);
			return;
		}
		snprintf(msg, sizeof(msg), "user '%s' is owned by server '%s'; ask its admin API%s%s",
			 eid, p->id, p->admin[0] ? " at " : "", p->admin);
		bm_admin_reply_json(req, 421, json_pack("{s:s, s:i, s:s, s:s}", "error", msg,
							"status", 421, "owner", p->id,
							"admin", p->admin));
		return;
	}
	if (!srv_settled(s)) {
		bm_admin_reply_error(req, 503, "users are moving between servers (a cluster "
				     "change); try again in a moment");
		return;
	}
	u = srv_user_get(s, eid, 1);
	if (!u) {
		bm_admin_reply_error(req, 400, "invalid eid '%s'", eid);
		return;
	}
	if (!strcmp(what, "contacts") && method == BM_ADMIN_GET && !arg) {
		bm_admin_reply_json(req, 200, json_pack("{s:s, s:o, s:o}", "eid", u->eid,
							"subscribers", set_keys(&u->subscribers),
							"blocked", set_keys(&u->blocked)));
		return;
	}
	if (!strcmp(what, "sessions") && method == BM_ADMIN_GET && !arg) {
		json_t *a = json_array();
		for (struct srv_dev *d = u->devs; d; d = d->next)
			json_array_append_new(a, json_pack("{s:s, s:s%, s:I, s:I, s:I}",
				"device", d->device, "signal", (const char *)d->rid,
				(size_t)d->rid_len, "session", (json_int_t)d->session,
				"committed", (json_int_t)d->committed, "sent",
				(json_int_t)d->sent));
		bm_admin_reply_json(req, 200, json_pack("{s:s, s:o}", "eid", u->eid,
							"sessions", a));
		return;
	}
	if (!strcmp(what, "sessions") && method == BM_ADMIN_DELETE && arg) {
		struct srv_dev *d = srv_dev_find(u, arg);
		if (!d) {
			bm_admin_reply_error(req, 404, "no session for device '%s'", arg);
			return;
		}
		srv_kick(s, d->rid, d->rid_len, d->session, 4003, "closed by an administrator");
		bm_admin_reply_json(req, 200, json_pack("{s:b}", "kicked", 1));
		return;
	}
	if (!strcmp(what, "contacts") || !strcmp(what, "blocks")) {
		int contacts = what[0] == 'c';
		const char *other = arg ? arg : jstr(body, contacts ? "subscriber" : "eid");
		if (!other[0] || !strcmp(other, u->eid) || strlen(other) > SRV_EID_MAX ||
		    (method == BM_ADMIN_POST) == (arg != NULL) ||
		    (method != BM_ADMIN_POST && method != BM_ADMIN_DELETE)) {
			bm_admin_reply_error(req, 400, "POST /v1/users/<eid>/%s with {\"%s\":..} "
					     "or DELETE /v1/users/<eid>/%s/<eid>", what,
					     contacts ? "subscriber" : "eid", what);
			return;
		}
		rec = json_pack("{s:s, s:s, s:s}", "t",
				contacts ? (arg ? "unsub" : "sub") : (arg ? "unblock" : "block"),
				"o", u->eid, "s", other);
		if (!rec || srv_state_log(s, rec, NULL, NULL) || bm_queue_sync(s->q)) {
			bm_admin_reply_error(req, 500, "cannot store the change");
			return;
		}
		bm_admin_reply_json(req, 200, json_pack("{s:s, s:o, s:o}", "eid", u->eid,
							"subscribers", set_keys(&u->subscribers),
							"blocked", set_keys(&u->blocked)));
		return;
	}
	bm_admin_reply_error(req, 404, "no such user resource '%s'", what);
}

static void on_cluster(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct srv *s = ud;

	/* A server leaves only after handing its data off (handoff.c). */
	if (!strcmp(bm_admin_req_suffix(req), "leave") &&
	    bm_admin_req_method(req) == BM_ADMIN_POST && s->cluster) {
		json_t *o;
		const char *down = NULL;
		int rc = srv_leave(s, &down);

		if (rc == BM_EAGAIN) {
			bm_admin_reply_error(req, 409, "server '%s' is down or suspect: a leave now "
					     "would move its users without their data; start it "
					     "again, or `cluster remove` it if it is gone for good",
					     down);
			return;
		}
		if (rc) {
			bm_admin_reply_error(req, 409, "not in a cluster with other servers");
			return;
		}
		o = json_pack("{s:b, s:s}", "leaving", 1, "message",
			      "handing data off to the new owners; leaves the cluster and "
			      "stops when done");
		bm_admin_reply_json(req, 202, o);
		return;
	}
	bm_cluster_admin(s->cluster, req, body);
}

static int count_stream(void *ud, const char *name, uint64_t head, uint64_t first)
{
	(*(unsigned *)ud)++;
	return 1;
}

int srv_cluster_open(struct srv *s)
{
	char marker[600];
	unsigned streams = 0;

	/* Told by the cluster that it left while it did not (an operator ran
	 * `cluster remove` while it was down, and its users moved on without
	 * this data): a server with data stays out and stops.  It comes back
	 * after a graceful leave (the marker; its data was handed off and is
	 * marked so), or with an empty data directory. */
	snprintf(marker, sizeof(marker), "%.500s/left-cluster", s->cfg.data_dir);
	bm_queue_streams(s->q, count_stream, &streams);
	s->cfg.cluster.stay_left = (streams || s->users.count) && access(marker, F_OK);
	if (!access(marker, F_OK) && unlink(marker))
		bm_warn("cluster", "cannot remove '%s': %s", marker, strerror(errno));
	bm_cluster_admin_addr(s->cfg.admin_listen, bm_admin_port(s->admin), &s->cfg.cluster,
			      s->admin_addr, sizeof(s->admin_addr));
	return bm_cluster_start_conf(&s->cluster, s->base, &s->cfg.cluster, s->cfg.node_id,
				     BM_SWIM_ROLE_SERVER, s->zmq_bound, s->admin_addr,
				     srv_peer_on_member, s);
}

static int is_ready(void *ud, char *why, size_t whylen)
{
	struct srv *s = ud;

	if (s->stopping) {
		snprintf(why, whylen, "draining");
		return 0;
	}
	return 1;
}

static const struct bm_admin_route routes[] = {
	{ BM_ADMIN_POST, "/v1/tokens", 0, on_tokens, 1 },
	{ BM_ADMIN_POST, "/v1/tokens/revoke", 0, on_revoke, 1 },
	{ BM_ADMIN_POST, "/v1/tokens/refresh", 0, on_refresh, 1 },
	{ BM_ADMIN_GET, "/v1/keys", 0, on_keys, 0 },
	{ BM_ADMIN_GET, "/v1/status", 0, on_status, 1 },
	{ BM_ADMIN_GET | BM_ADMIN_POST | BM_ADMIN_DELETE, "/v1/users/", 1, on_users, 1 },
	{ BM_ADMIN_GET | BM_ADMIN_POST, "/v1/cluster/", 1, on_cluster, 1 },
	{ 0, NULL, 0, NULL, 0 },
};

int srv_admin_open(struct srv *s)
{
	struct bm_admin_opts o = {
		.listen = s->cfg.admin_listen,
		.key = s->cfg.admin_key,
		.metrics = s->m.reg,
		.ready = is_ready,
		.ready_ud = s,
		.routes = routes,
		.ud = s,
	};
	char err[256];
	int rc = bm_admin_new(s->base, &o, &s->admin);

	if (rc)
		return rc;
	rc = bm_admin_start(s->admin, err, sizeof(err));
	if (rc)
		bm_err("admin", "%s", err);
	return rc;
}

void srv_admin_close(struct srv *s)
{
	bm_admin_free(s->admin);
	s->admin = NULL;
}
