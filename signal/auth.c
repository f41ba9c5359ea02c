/*
 * auth.c - token checks at the edge: signature with the servers' public
 * keys (KEYS), validity times, and the revocations servers broadcast
 * (REVOKE).  Bodies are the JSON documented in server/link.c.
 */
#include "sig.h"

#include "bm_err.h"
#include "bm_log.h"
#include "bm_time.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int sig_auth_verify(struct sig *g, const char *tok, size_t len,
		    struct bm_jwt_claims *c, const char **why)
{
	int rc;

	if (!g->ring || !bm_jwt_keyring_count(g->ring)) {
		*why = "no server has published its keys yet";
		return BM_EUNAVAIL;
	}
	rc = bm_jwt_verify(g->ring, tok, len, bm_wall_s(), g->cfg.leeway_ms / 1000, c);
	if (rc) {
		*why = bm_strerror(rc);
		return rc;
	}
	if (sig_auth_revoked(g, c->sub, c->device, c->jti, c->iat)) {
		*why = bm_strerror(BM_ETOKEN_REVOKED);
		return BM_ETOKEN_REVOKED;
	}
	return 0;
}

int sig_auth_revoked(struct sig *g, const char *eid, const char *device,
		     const char *jti, int64_t iat)
{
	char key[256];
	void *v;

	if (jti && *jti && bm_map_get(&g->revoked_jti, jti))
		return 1;
	v = bm_map_get(&g->revoked_before, eid);
	if (v && iat <= (int64_t)(intptr_t)v)
		return 1;
	snprintf(key, sizeof(key), "%s\x1f%s", eid, device);
	v = bm_map_get(&g->revoked_before, key);
	return v && iat <= (int64_t)(intptr_t)v;
}

int sig_auth_set_keys(struct sig *g, const char *json, size_t n)
{
	json_t *o = json_loadb(json, n, 0, NULL), *k;
	size_t i;
	int added = 0;

	if (!o)
		return BM_EPROTO;
	if (!g->ring && bm_jwt_keyring_new(&g->ring)) {
		json_decref(o);
		return BM_ENOMEM;
	}
	json_array_foreach(json_object_get(o, "keys"), i, k) {
		const char *pem = json_string_value(json_object_get(k, "pem"));
		const char *kid = json_string_value(json_object_get(k, "kid"));
		struct bm_jwt_key *key;

		if (!pem || !kid || bm_jwt_keyring_find(g->ring, kid))
			continue;
		if (bm_jwt_key_parse(pem, strlen(pem), &key))
			continue;
		if (bm_jwt_keyring_add(g->ring, key)) {
			bm_jwt_key_free(key);
			continue;
		}
		bm_info("auth", "token key kid=%s added", kid);
		added++;
	}
	json_decref(o);
	return added;
}

static void drop_expired(struct bm_map *m)
{
	int64_t now = bm_wall_s();
	const char *k;
	void *v;

	/* A revoked jti needs remembering only while its token could be valid. */
	for (size_t it = 0; bm_map_next(m, &it, &k, &v);) {
		if ((int64_t)(intptr_t)v + 600 < now) {
			bm_map_del(m, k);
			it = 0;
		}
	}
}

int sig_auth_apply_revocations(struct sig *g, const char *json, size_t n)
{
	json_t *o = json_loadb(json, n, 0, NULL), *v;
	const char *k;

	if (!o)
		return BM_EPROTO;
	json_object_foreach(json_object_get(o, "jti"), k, v)
		bm_map_put(&g->revoked_jti, k, (void *)(intptr_t)json_integer_value(v), NULL);
	json_object_foreach(json_object_get(o, "before"), k, v) {
		intptr_t cur = (intptr_t)bm_map_get(&g->revoked_before, k);
		intptr_t nv = (intptr_t)json_integer_value(v);
		if (nv > cur)
			bm_map_put(&g->revoked_before, k, (void *)nv, NULL);
	}
	json_decref(o);
	drop_expired(&g->revoked_jti);
	sig_sess_enforce_revocations(g);
	return 0;
}

void sig_auth_release(struct sig *g)
{
	bm_jwt_keyring_free(g->ring);
	g->ring = NULL;
	bm_map_release(&g->revoked_jti);
	bm_map_release(&g->revoked_before);
}
