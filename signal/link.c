/*
 * link.c - the signal's ZeroMQ DEALERs, one per server (server/link.c has
 * the other end and the message bodies).
 *
 * A session belongs to the server that owns its EID: rendezvous hashing over
 * the servers that answered HELLO, so every signal picks the same one.  HELLO
 * is repeated every second; a server that has not answered for three seconds
 * is down.  When a server answers with a new boot id (it restarted), every
 * session it owns is opened again there, so it knows who is online and
 * resumes delivery from the committed offsets.
 */
#include "sig.h"

#include "bm_err.h"
#include "bm_idmap.h"
#include "bm_log.h"
#include "bm_time.h"
#include "bm_zmq.h"
#include "bm_ws.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define DOWN_AFTER_MS 3000

static void fill_hdr(struct sig *g, struct bm_ipc_hdr *h, int kind,
		     const struct sig_sess *s)
{
	bm_ipc_hdr_init(h, kind, g->cfg.node_id);
	if (s) {
		h->session = s->id;
		bm_ipc_set_str(h->eid, sizeof(h->eid), s->eid);
		bm_ipc_set_str(h->device, sizeof(h->device), s->device);
	}
}

/* Rendezvous hashing over the servers of the cluster that have not left
 * (the same as the servers compute, server/peer.c): the one with the
 * highest hash(node, eid).  A server that is down still owns its users:
 * their data is on its disk; they wait for it (503). */
static int owner_of(struct sig *g, const char *eid)
{
	uint64_t best = 0, kh = bm_hash64(eid, strlen(eid));
	int who = -1;

	for (int i = 0; i < g->n_servers; i++) {
		struct sig_server *sv = &g->servers[i];
		uint64_t h;
		if (!sv->member || sv->left)
			continue;
		/* The same score as the cluster registry (cluster/bm_registry.h). */
		h = bm_mix64(sv->node_hash ^ kh);
		if (who < 0 || h > best || (h == best && strcmp(sv->node, g->servers[who].node) < 0)) {
			best = h;
			who = i;
		}
	}
	return who;
}

static void set_node(struct sig_server *sv, const char *node)
{
	snprintf(sv->node, sizeof(sv->node), "%.64s", node);
	sv->node_hash = bm_hash64(sv->node, strlen(sv->node));
}

int sig_link_ready(struct sig *g)
{
	for (int i = 0; i < g->n_servers; i++)
		if (g->servers[i].up)
			return g->ring && bm_jwt_keyring_count(g->ring);
	return 0;
}

static int send_open(struct sig *g, struct sig_sess *s)
{
	struct bm_ipc_hdr h;
	char body[96];
	int n = snprintf(body, sizeof(body), "{\"iat\":%lld,\"exp\":%lld}",
			 (long long)s->iat, (long long)s->exp);

	fill_hdr(g, &h, BM_IPC_SESSION_OPEN, s);
	snprintf(h.aux, sizeof(h.aux), "%s", s->jti);
	return bm_zsock_send(g->servers[s->srv].z, NULL, 0, &h, body, (size_t)n);
}

int sig_link_session_open(struct sig *g, struct sig_sess *s)
{
	int who = owner_of(g, s->eid);

	if (who < 0 || !g->servers[who].up)
		return BM_EUNAVAIL;
	s->srv = (uint8_t)who;
	return send_open(g, s);
}

void sig_link_session_close(struct sig *g, struct sig_sess *s)
{
	struct bm_ipc_hdr h;

	if (!s->eid || s->srv >= g->n_servers)
		return;
	fill_hdr(g, &h, BM_IPC_SESSION_CLOSE, s);
	bm_zsock_send(g->servers[s->srv].z, NULL, 0, &h, "", 0);
}

int sig_link_stanza(struct sig *g, struct sig_sess *s, const uint8_t *p, size_t n)
{
	struct bm_ipc_hdr h;
	struct sig_server *sv;
	int who = owner_of(g, s->eid);

	if (who < 0 || !g->servers[who].up)
		return BM_EUNAVAIL;
	if (who != s->srv) {
		/* The owner changed: the session moves to the new owner. */
		s->srv = (uint8_t)who;
		send_open(g, s);
	}
	sv = &g->servers[who];
	fill_hdr(g, &h, BM_IPC_STANZA, s);
	return bm_zsock_send(sv->z, NULL, 0, &h, p, n);
}

static void reopen_sessions(struct sig *g, int idx)
{
	const char *k;
	void *v;
	unsigned n = 0;

	for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);) {
		struct sig_sess *s = v;
		if (s->state == SIG_OPEN && owner_of(g, s->eid) == idx) {
			s->srv = (uint8_t)idx;
			send_open(g, s);
			n++;
		}
	}
	if (n)
		bm_info("link", "re-opened %u sessions on server '%s'", n, g->servers[idx].node);
}

static void on_welcome(struct sig *g, int idx, const uint8_t *body, size_t n)
{
	struct sig_server *sv = &g->servers[idx];
	json_t *o = json_loadb((const char *)body, n, 0, NULL);
	const char *node = o ? json_string_value(json_object_get(o, "node")) : NULL;
	const char *boot = o ? json_string_value(json_object_get(o, "boot")) : NULL;
	int was_up = sv->up;

	if (node && boot) {
		int restarted = sv->boot[0] && strcmp(sv->boot, boot);
		/* A server that reads batches gets a loop turn's stanzas in one
		 * ZeroMQ message (bm_zmq.h). */
		bm_zsock_batch_peer(sv->z, NULL, 0, json_is_true(json_object_get(o, "batch")));
		set_node(sv, node);
		snprintf(sv->boot, sizeof(sv->boot), "%s", boot);
		sv->up = 1;
		sv->member = 1;
		sv->last_welcome_ms = bm_mono_ms();
		if (!was_up)
			bm_info("link", "server '%s' at %s is up", node, sv->endpoint);
		if (restarted || !was_up)
			reopen_sessions(g, idx);
	}
	json_decref(o);
}

static void on_push(struct sig *g, const struct bm_ipc_hdr *h, const uint8_t *body,
		    size_t n)
{
	struct sig_sess *s = sig_idtab_get(&g->by_id, h->session);

	if (s)
		sig_sess_send(g, s, body, n);
}

static void on_kick(struct sig *g, const struct bm_ipc_hdr *h, const uint8_t *body,
		    size_t n)
{
	struct sig_sess *s = sig_idtab_get(&g->by_id, h->session);
	char text[160];
	char *reason;
	long code;

	if (!s || s->state != SIG_OPEN)
		return;
	snprintf(text, sizeof(text), "%.*s", (int)n, (const char *)body);
	code = strtol(text, &reason, 10);
	if (code < 1000 || code > 4999 || !bm_ws_close_code_valid((unsigned)code))
		code = 1008;
	while (*reason == ' ')
		reason++;
	bm_info("link", "server closes session eid=%s device=%s: %ld %s", s->eid,
		s->device, code, reason);
	sig_sess_close(g, s, (int)code, reason);
}

static void on_msg(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		   const struct bm_ipc_hdr *h, const uint8_t *body, size_t n, void *ud)
{
	struct sig *g = ud;
	int idx = 0;

	while (idx < g->n_servers && g->servers[idx].z != z)
		idx++;
	switch (h->kind) {
	case BM_IPC_WELCOME:
		on_welcome(g, idx, body, n);
		break;
	case BM_IPC_KEYS:
		sig_auth_set_keys(g, (const char *)body, n);
		break;
	case BM_IPC_REVOKE:
		sig_auth_apply_revocations(g, (const char *)body, n);
		break;
	case BM_IPC_PUSH:
		on_push(g, h, body, n);
		break;
	case BM_IPC_KICK:
		on_kick(g, h, body, n);
		break;
	default:
		bm_debug("link", "ignoring %s from server", bm_ipc_kind_name(h->kind));
	}
	sig_sess_reap(g);
}

void sig_link_tick(struct sig *g)
{
	uint64_t now = bm_mono_ms();

	for (int i = 0; i < g->n_servers; i++) {
		struct sig_server *sv = &g->servers[i];
		struct bm_ipc_hdr h;
		char body[96];
		int n = snprintf(body, sizeof(body), "{\"boot\":\"%s\",\"batch\":true}",
				 g->boot_id);

		if (sv->up && now - sv->last_welcome_ms > DOWN_AFTER_MS) {
			sv->up = 0;
			bm_warn("link", "server '%s' at %s is not answering", sv->node,
				sv->endpoint);
		}
		fill_hdr(g, &h, BM_IPC_HELLO, NULL);
		bm_zsock_send(sv->z, NULL, 0, &h, body, (size_t)n);
	}
}

static int connect_server(struct sig *g, struct sig_server *sv)
{
	int hwm = 100000;

	sv->z = bm_zsock_new(g->base, g->zctx, ZMQ_DEALER, g->cfg.node_id, on_msg, g);
	if (!sv->z)
		return BM_ESYS;
	zmq_setsockopt(bm_zsock_raw(sv->z), ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(bm_zsock_raw(sv->z), ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (g->cfg.curve_server_public[0] &&
	    bm_zsock_curve_client(sv->z, g->cfg.curve_server_public, g->cfg.curve_public,
				  g->cfg.curve_secret)) {
		bm_err("link", "invalid CURVE keys in the configuration");
		bm_zsock_free(sv->z);
		sv->z = NULL;
		return BM_ECONFIG;
	}
	if (bm_zsock_connect(sv->z, sv->endpoint)) {
		bm_zsock_free(sv->z);
		sv->z = NULL;
		return BM_ESYS;
	}
	return 0;
}

void sig_link_member(struct sig *g, const char *node, const char *endpoint, int left)
{
	for (int i = 0; i < g->n_servers; i++) {
		struct sig_server *sv = &g->servers[i];

		if (strcmp(sv->node, node) && strcmp(sv->endpoint, endpoint))
			continue;
		set_node(sv, node);
		sv->member = 1;
		if (sv->left != left)
			bm_info("link", "server '%s' %s the cluster", node,
				left ? "left" : "is back in");
		sv->left = left;
		if (endpoint[0] && strcmp(sv->endpoint, endpoint)) {
			/* Restarted on another address. */
			bm_info("link", "server '%s' moved from %s to %s", node, sv->endpoint,
				endpoint);
			bm_zsock_free(sv->z);
			sv->up = 0;
			snprintf(sv->endpoint, sizeof(sv->endpoint), "%s", endpoint);
			if (connect_server(g, sv))
				bm_err("link", "cannot connect to server '%s' at %s", node,
				       endpoint);
		}
		return;
	}
	if (left || !endpoint[0] || sig_link_add_server(g, endpoint))
		return;
	set_node(&g->servers[g->n_servers - 1], node);
	g->servers[g->n_servers - 1].member = 1;
}

int sig_link_add_server(struct sig *g, const char *endpoint)
{
	struct sig_server *sv;
	int rc;

	if (!endpoint[0] || strlen(endpoint) >= sizeof(sv->endpoint))
		return BM_EINVAL;
	for (int i = 0; i < g->n_servers; i++)
		if (!strcmp(g->servers[i].endpoint, endpoint))
			return 0;
	if (g->n_servers == (int)(sizeof(g->servers) / sizeof(g->servers[0]))) {
		bm_warn("link", "cannot add server '%s': %d servers already", endpoint,
			g->n_servers);
		return BM_EFULL;
	}
	sv = &g->servers[g->n_servers];
	memset(sv, 0, sizeof(*sv));
	snprintf(sv->endpoint, sizeof(sv->endpoint), "%s", endpoint);
	set_node(sv, endpoint);
	rc = connect_server(g, sv);
	if (rc)
		return rc;
	g->n_servers++;
	bm_info("link", "connecting to server at %s", endpoint);
	return 0;
}

int sig_link_open(struct sig *g)
{
	g->zctx = bm_zmq_ctx_new();
	if (!g->zctx || bm_jwt_random_hex(g->boot_id, 16))
		return BM_ESYS;
	for (int i = 0; i < 16 && g->cfg.servers[i][0]; i++) {
		int rc = sig_link_add_server(g, g->cfg.servers[i]);
		if (rc)
			return rc;
	}
	if (!g->n_servers && !g->cfg.cluster.bind[0]) {
		bm_err("link", "no server configured: set 'servers' or join a cluster "
		       "with 'cluster.bind' and 'cluster.seeds'");
		return BM_ECONFIG;
	}
	sig_link_tick(g);
	return 0;
}

void sig_link_close(struct sig *g)
{
	for (int i = 0; i < g->n_servers; i++)
		bm_zsock_free(g->servers[i].z);
	if (g->zctx)
		zmq_ctx_term(g->zctx);
}
