/*
 * state.c - the server's durable state: users, contacts, blocks, chats,
 * idempotency of resends, revocations, last seen.
 *
 * Every change is one JSON record appended to the "__state" stream of the
 * queue, applied in memory at once, and acknowledged to the client when the
 * record is durable.  At start the stream is replayed from its first record.
 * Record types (member "t"):
 *
 *   {"t":"sub",    "o":owner, "s":subscriber}      add a subscriber
 *   {"t":"unsub",  "o":owner, "s":subscriber}      remove one
 *   {"t":"block",  "o":owner, "s":eid}             block eid
 *   {"t":"unblock","o":owner, "s":eid}
 *   {"t":"msg", "c":chat, "a":eid, "b":eid, "v":version,
 *               "e":sender, "d":device, "l":message_id_local,
 *               "ro":receiver stream offset, "so":sender stream offset}
 *      closes a message whose copies went to other servers (below).  A
 *      message with both copies on this server has no state record: its
 *      copies carry its version and resend key, and the repair at start
 *      (repair() below) restores them from the streams' tails.  Data
 *      directories written before 2026-11-23 have one per message; replay
 *      still applies them.
 *   {"t":"pm", "c":chat, "e":sender, "r":receiver, "v":version, "d":device,
 *              "l":message_id_local, "sg":signal, "ss":session, "rt":route,
 *              "m":base64 ChatMessage}
 *      a chat message whose copies go to other servers: driven until both
 *      are durable, then closed by its "msg" record (server/peer.c)
 *   {"t":"pmx", "c":chat, "v":version, "e":sender, "d":device, "l":local}
 *      that message was refused by the receiver's owner (blocked)
 *   {"t":"uimp", "e":eid, "subs":[..], "blk":[..], "seen":ms, "lat", "lon", "in"}
 *   {"t":"uback", "e":eid}   (the previous owner had no state for it)
 *   {"t":"chat", "a":eid, "b":eid, "v":version}
 *   {"t":"idem", "e":eid, "d":device, "l":local, "c":chat, "v":version}
 *      what a previous owner handed over (server/handoff.c)
 *   {"t":"ugone", "e":eid}   {"t":"pmgone", "c":chat, "v":version}
 *      this server handed that user / pending message to its new owner,
 *      which took it: the copy here is stale, never handed again (a stale
 *      copy would overwrite the owner's newer contacts and offsets)
 *   {"t":"seen", "e":eid, "ts":ms, "st":status, "lat":x, "lon":y, "in":n}
 *   {"t":"rvk",  "e":eid, "d":device, "j":jti, "exp":s, "bf":s}
 *      j set: that token id is revoked until exp;  otherwise every token of
 *      eid (and device, when set) issued at or before bf is revoked.
 *
 * Unknown record types are skipped with a warning, so an older server can
 * start on a newer data directory's state it does not understand.
 */
#include "srv.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "bm_ws.h"

#include <inttypes.h>
#include <jansson.h>
#include <stddef.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATE_STREAM "__state"

void srv_stream_name(const char *eid, char *out, size_t cap)
{
	size_t n = strnlen(eid, cap > 3 ? cap - 3 : 0);

	/* Called for every append and pump: no snprintf. */
	if (cap < 3)
		return;
	out[0] = 'u';
	out[1] = ':';
	memcpy(out + 2, eid, n);
	out[2 + n] = 0;
}

static void user_free(struct srv_user *u)
{
	while (u->devs) {
		struct srv_dev *d = u->devs;
		u->devs = d->next;
		free(d);
	}
	srv_cache_release(u);
	bm_map_release(&u->subscribers);
	bm_map_release(&u->blocked);
	free(u);
}

struct srv_user *srv_user_get(struct srv *s, const char *eid, int create)
{
	struct srv_user *u = bm_map_get(&s->users, eid);
	char name[SRV_EID_MAX + 8];

	if (u || !create || !*eid || strlen(eid) > SRV_EID_MAX)
		return u;
	u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	snprintf(u->eid, sizeof(u->eid), "%s", eid);
	bm_map_init(&u->subscribers);
	bm_map_init(&u->blocked);
	u->status = 2;  /* offline */
	srv_stream_name(eid, name, sizeof(name));
	/* What is in the log after recovery is durable. */
	if (bm_queue_stream_head(s->q, name, &u->durable, NULL))
		u->durable = 0;
	if (bm_map_put(&s->users, eid, u, NULL)) {
		user_free(u);
		return NULL;
	}
	return u;
}

void srv_chat_id(const char *a, const char *b, char out[SRV_CHAT_ID_LEN + 1])
{
	unsigned char h[32];
	mbedtls_sha256_context c;
	const char *lo = strcmp(a, b) < 0 ? a : b, *hi = lo == a ? b : a;

	mbedtls_sha256_init(&c);
	mbedtls_sha256_starts_ret(&c, 0);
	mbedtls_sha256_update_ret(&c, (const unsigned char *)lo, strlen(lo));
	mbedtls_sha256_update_ret(&c, (const unsigned char *)"\n", 1);
	mbedtls_sha256_update_ret(&c, (const unsigned char *)hi, strlen(hi));
	mbedtls_sha256_finish_ret(&c, h);
	mbedtls_sha256_free(&c);
	for (int i = 0; i < SRV_CHAT_ID_LEN / 2; i++)
		sprintf(out + 2 * i, "%02x", h[i]);
	out[SRV_CHAT_ID_LEN] = 0;
}

void srv_message_id(char *dst, size_t cap, const char *chat, int64_t v)
{
	char digits[24];
	size_t n = strnlen(chat, cap - 1), d = 0;
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

	memcpy(dst, chat, n);
	do {
		digits[d++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		digits[d++] = '-';
	if (n + 1 + d >= cap) {
		snprintf(dst, cap, "%s.%" PRId64, chat, v);
		return;
	}
	dst[n++] = '.';
	while (d)
		dst[n++] = digits[--d];
	dst[n] = 0;
}

struct srv_chat *srv_chat_find(struct srv *s, const char *chat_id)
{
	return bm_map_get(&s->chats, chat_id);
}

struct srv_chat *srv_chat_get(struct srv *s, const char *a, const char *b, int create)
{
	char id[SRV_CHAT_ID_LEN + 1], pair[2 * SRV_EID_MAX + 2];
	struct srv_chat *c;
	int lo_first = strcmp(a, b) < 0;

	/* The pair index spares a SHA-256 per message. */
	srv_join(pair, sizeof(pair), lo_first ? a : b, lo_first ? b : a, NULL);
	c = bm_map_get(&s->chat_pairs, pair);
	if (c)
		return c;
	srv_chat_id(a, b, id);
	c = bm_map_get(&s->chats, id);
	if (c) {
		bm_map_put(&s->chat_pairs, pair, c, NULL);
		return c;
	}
	if (!create)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	memcpy(c->id, id, sizeof(id));
	snprintf(c->a, sizeof(c->a), "%s", strcmp(a, b) < 0 ? a : b);
	snprintf(c->b, sizeof(c->b), "%s", strcmp(a, b) < 0 ? b : a);
	if (bm_map_put(&s->chats, id, c, NULL)) {
		free(c);
		return NULL;
	}
	bm_map_put(&s->chat_pairs, pair, c, NULL);
	return c;
}

size_t srv_join(char *out, size_t cap, const char *a, const char *b, const char *c)
{
	const char *part[5] = { a, "\x1f", b, "\x1f", c };
	size_t o = 0;

	for (int i = 0; i < (c ? 5 : 3) && o < cap - 1; i++) {
		size_t n = strnlen(part[i], cap - 1 - o);
		memcpy(out + o, part[i], n);
		o += n;
	}
	out[o] = 0;
	return o;
}

int srv_idem_parts(const char *key, char eid[SRV_EID_MAX + 1],
		   char dev[SRV_DEV_MAX + 1], const char **local)
{
	const char *p1 = strchr(key, '\x1f');
	const char *p2 = p1 ? strchr(p1 + 1, '\x1f') : NULL;

	if (!p2)
		return BM_EINVAL;
	snprintf(eid, SRV_EID_MAX + 1, "%.*s", (int)(p1 - key), key);
	snprintf(dev, SRV_DEV_MAX + 1, "%.*s", (int)(p2 - p1 - 1), p1 + 1);
	*local = p2 + 1;
	return 0;
}

json_t *srv_map_keys(const struct bm_map *m)
{
	json_t *a = json_array();
	const char *k;

	for (size_t it = 0; bm_map_next(m, &it, &k, NULL);)
		json_array_append_new(a, json_string(k));
	return a;
}

json_t *srv_user_json(const struct srv_user *u)
{
	json_t *o = json_pack("{s:o, s:o, s:I, s:f, s:f, s:i}", "subs",
			      srv_map_keys(&u->subscribers), "blk", srv_map_keys(&u->blocked),
			      "seen", (json_int_t)u->last_seen, "lat", u->lat, "lon", u->lon,
			      "in", u->intention);

	if (o && u->gone)
		json_object_set_new(o, "gone", json_true());
	return o;
}

void srv_user_load(struct srv_user *u, json_t *o)
{
	json_t *e;
	size_t i;

	bm_map_release(&u->subscribers);
	bm_map_release(&u->blocked);
	bm_map_init(&u->subscribers);
	bm_map_init(&u->blocked);
	json_array_foreach(json_object_get(o, "subs"), i, e)
		if (json_is_string(e))
			bm_map_put(&u->subscribers, json_string_value(e), (void *)1, NULL);
	json_array_foreach(json_object_get(o, "blk"), i, e)
		if (json_is_string(e))
			bm_map_put(&u->blocked, json_string_value(e), (void *)1, NULL);
	u->last_seen = (int64_t)json_integer_value(json_object_get(o, "seen"));
	u->lat = json_number_value(json_object_get(o, "lat"));
	u->lon = json_number_value(json_object_get(o, "lon"));
	u->intention = (int32_t)json_integer_value(json_object_get(o, "in"));
	u->gone = json_is_true(json_object_get(o, "gone"));
}

void srv_idem_key(struct srv *s, struct srv_idem_key *k, const char *eid, const char *dev,
		  const char *local)
{
	/* "eid\x1fdevice\x1flocal" */
	k->len = srv_join(k->key, sizeof(k->key), eid, dev, local);
	k->hash = bm_keyring_hash(&s->idem, k->key, k->len);
}

struct srv_idem *srv_idem_find(struct srv *s, const char *eid, const char *dev,
			       const char *local)
{
	struct srv_idem_key k;

	srv_idem_key(s, &k, eid, dev, local);
	return srv_idem_find_key(s, &k);
}

void srv_idem_prefetch(struct srv *s, const struct srv_idem_key *k)
{
	bm_keyring_prefetch_h(&s->idem, k->hash);
}

struct srv_idem *srv_idem_find_key(struct srv *s, const struct srv_idem_key *k)
{
	return bm_keyring_get_h(&s->idem, k->key, k->len, k->hash);
}

static struct srv_idem *idem_add(struct srv *s, const struct srv_idem_key *k,
				 const char *chat_id, int64_t version)
{
	struct srv_idem *e;
	int existed;

	/* Known already (a repeated record): the first entry stays.  A new
	 * one may make the ring forget its oldest keys (bounded memory). */
	e = bm_keyring_add_h(&s->idem, k->key, k->len, k->hash, &existed);
	if (!e || existed)
		return e;
	BM_SET_STR(e->chat_id, chat_id);
	e->version = version;
	return e;
}

struct srv_idem *srv_idem_add(struct srv *s, const char *eid, const char *dev,
			      const char *local, const char *chat_id, int64_t version)
{
	struct srv_idem_key k;

	srv_idem_key(s, &k, eid, dev, local);
	return idem_add(s, &k, chat_id, version);
}

/* --- revocations ----------------------------------------------------------- */

static void before_key(char *out, size_t cap, const char *eid, const char *dev)
{
	if (dev && *dev)
		snprintf(out, cap, "%s\x1f%s", eid, dev);
	else
		snprintf(out, cap, "%s", eid);
}

int srv_revoked(struct srv *s, const char *eid, const char *device,
		const char *jti, int64_t iat)
{
	char key[SRV_EID_MAX + SRV_DEV_MAX + 4];
	void *v;

	if (jti && *jti && bm_map_get(&s->revoked_jti, jti))
		return 1;
	before_key(key, sizeof(key), eid, NULL);
	v = bm_map_get(&s->revoked_before, key);
	if (v && iat <= (int64_t)(intptr_t)v)
		return 1;
	before_key(key, sizeof(key), eid, device);
	v = bm_map_get(&s->revoked_before, key);
	return v && iat <= (int64_t)(intptr_t)v;
}

int srv_revocations_json(struct srv *s, struct bm_buf *out)
{
	json_t *root = json_object(), *j = json_object(), *b = json_object();
	const char *k;
	void *v;
	char *txt;
	int rc;

	for (size_t it = 0; bm_map_next(&s->revoked_jti, &it, &k, &v);)
		json_object_set_new(j, k, json_integer((json_int_t)(intptr_t)v));
	for (size_t it = 0; bm_map_next(&s->revoked_before, &it, &k, &v);)
		json_object_set_new(b, k, json_integer((json_int_t)(intptr_t)v));
	json_object_set_new(root, "jti", j);
	json_object_set_new(root, "before", b);
	txt = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!txt)
		return BM_ENOMEM;
	rc = bm_buf_adds(out, txt);
	free(txt);
	return rc;
}

/* --- applying records -------------------------------------------------------- */

static const char *str(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static int64_t num(json_t *o, const char *k)
{
	return (int64_t)json_integer_value(json_object_get(o, k));
}

static int set_flag(struct bm_map *m, const char *k, int on)
{
	if (!on) {
		bm_map_del(m, k);
		return 0;
	}
	return bm_map_put(m, k, (void *)1, NULL);
}

/* A chat message was accepted: the chat's version, the stream offsets of
 * its copies (where the repair at start-up begins), the resend key. */
static int apply_msg(struct srv *s, struct srv_chat *known, const char *a, const char *b,
		     int64_t v, const char *sender, const char *dev, const char *local,
		     const struct srv_idem_key *k, uint64_t ro, uint64_t so,
		     struct srv_idem **idem)
{
	struct srv_chat *c = known ? known : srv_chat_get(s, a, b, 1);
	/* Offsets are named only when the copies were appended here. */
	struct srv_user *sa = so ? srv_user_get(s, sender, 1) : NULL;
	struct srv_user *rb = ro ? srv_user_get(s, strcmp(sender, a) ? a : b, 1) : NULL;
	struct srv_idem *e;

	if (!c || (so && !sa) || (ro && !rb))
		return BM_ENOMEM;
	if (v > c->version)
		c->version = v;
	if (sa && so > sa->ref_offset)
		sa->ref_offset = so;
	if (rb && ro > rb->ref_offset)
		rb->ref_offset = ro;
	if (*local) {
		/* One lookup: an existing key comes back as it is.  k, when
		 * given, is this key already built and hashed. */
		e = k ? idem_add(s, k, c->id, v) : srv_idem_add(s, sender, dev, local, c->id, v);
		if (e && s->replaying)
			e->durable = 1;
		if (idem)
			*idem = e;
	}
	/* Last: the strings may be the pending message's own (peer.c finish). */
	srv_pending_done(s, c->id, v);
	return 0;
}

/* JSON string body of in (no quotes) into out; returns the end. */
char *srv_json_escape(char *out, const char *in)
{
	static const char hex[] = "0123456789abcdef";

	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		if (*p == '"' || *p == '\\') {
			*out++ = '\\';
			*out++ = (char)*p;
		} else if (*p < 0x20) {
			memcpy(out, "\\u00", 4);
			out[4] = hex[*p >> 4];
			out[5] = hex[*p & 15];
			out += 6;
		} else {
			*out++ = (char)*p;
		}
	}
	return out;
}

static int utf8(const char *p)
{
	return bm_ws_utf8_valid((const uint8_t *)p, strlen(p));
}

static void on_logged(void *ud, int status, uint64_t offset);

struct log_ctx {
	srv_done_fn *cb;
	void *ud;
};

/* The "msg" record closes every cross-server chat message: formatted here, not
 * through jansson, and applied directly. */
int srv_state_log_msg(struct srv *s, const struct srv_chat *c, int64_t v,
		      const char *sender, const char *dev, const char *local,
		      uint64_t ro, uint64_t so, srv_done_fn *cb, void *ud,
		      struct srv_idem **idem)
{
	/* Worst case every byte escaped as \u00XX: 6x the bounded strings. */
	static char buf[64 + 6 * (3 * SRV_EID_MAX + SRV_DEV_MAX + 64) + 3 * SRV_CHAT_ID_LEN];
	char *p = buf;
	int rc;

	/* Replay parses this with jansson, which wants valid UTF-8. */
	if (!utf8(c->a) || !utf8(c->b) || !utf8(sender) || !utf8(dev) || !utf8(local))
		return BM_EINVAL;
	p += sprintf(p, "{\"t\":\"msg\",\"c\":\"%s\",\"a\":\"", c->id);
	p = srv_json_escape(p, c->a);
	p = stpcpy(p, "\",\"b\":\"");
	p = srv_json_escape(p, c->b);
	p += sprintf(p, "\",\"v\":%lld,\"e\":\"", (long long)v);
	p = srv_json_escape(p, sender);
	p = stpcpy(p, "\",\"d\":\"");
	p = srv_json_escape(p, dev);
	p = stpcpy(p, "\",\"l\":\"");
	p = srv_json_escape(p, local);
	p += sprintf(p, "\",\"ro\":%llu,\"so\":%llu}", (unsigned long long)ro,
		     (unsigned long long)so);
	/* cb straight to the queue (no wrapper to allocate per message): a
	 * record that is not durable means the queue failed, which it logs. */
	rc = bm_queue_append(s->q, STATE_STREAM, buf, (size_t)(p - buf), NULL, cb, ud);
	if (rc)
		return rc;
	if (srv_state_note_msg(s, c, v, sender, dev, local, NULL, ro, so, idem))
		bm_err("state", "cannot apply state record '%s'", buf);
	return 0;
}

int srv_state_note_msg(struct srv *s, const struct srv_chat *c, int64_t v,
		       const char *sender, const char *dev, const char *local,
		       const struct srv_idem_key *k, uint64_t ro, uint64_t so,
		       struct srv_idem **idem)
{
	/* Counted as a state change: snapshots bound the repair at start. */
	s->snap_records++;
	if (idem)
		*idem = NULL;
	return apply_msg(s, (struct srv_chat *)c, c->a, c->b, v, sender, dev, local, k, ro, so,
			 idem);
}

static const struct {
	const char *type;
	size_t map;     /* which set of the user */
	int on;
} flag_records[] = {
	{ "sub", offsetof(struct srv_user, subscribers), 1 },
	{ "unsub", offsetof(struct srv_user, subscribers), 0 },
	{ "block", offsetof(struct srv_user, blocked), 1 },
	{ "unblock", offsetof(struct srv_user, blocked), 0 },
};

int srv_state_apply(struct srv *s, void *obj)
{
	json_t *o = obj;
	const char *t = str(o, "t");
	struct srv_user *u;

	for (size_t i = 0; i < sizeof(flag_records) / sizeof(flag_records[0]); i++) {
		if (strcmp(t, flag_records[i].type))
			continue;
		u = srv_user_get(s, str(o, "o"), 1);
		if (!u || !*str(o, "s"))
			return BM_EINVAL;
		return set_flag((struct bm_map *)((char *)u + flag_records[i].map),
				str(o, "s"), flag_records[i].on);
	}
	if (!strcmp(t, "pm"))
		return srv_pending_apply(s, o);
	if (!strcmp(t, "uimp")) {
		/* A user handed over by its previous owner: its state replaced. */
		u = srv_user_get(s, str(o, "e"), 1);
		if (!u)
			return BM_ENOMEM;
		srv_user_load(u, o);
		return 0;
	}
	if (!strcmp(t, "ugone") || !strcmp(t, "uback")) {
		/* Handed off and taken / back here: see srv_user.gone. */
		u = srv_user_get(s, str(o, "e"), !strcmp(t, "ugone"));
		if (u)
			u->gone = !strcmp(t, "ugone");
		return u || strcmp(t, "ugone") ? 0 : BM_ENOMEM;
	}
	if (!strcmp(t, "pmgone")) {
		/* Handed off and taken: the new owner drives it now. */
		srv_pending_done(s, str(o, "c"), num(o, "v"));
		return 0;
	}
	if (!strcmp(t, "chat")) {
		struct srv_chat *c = srv_chat_get(s, str(o, "a"), str(o, "b"), 1);

		if (!c)
			return BM_ENOMEM;
		if (num(o, "v") > c->version)
			c->version = num(o, "v");
		return 0;
	}
	if (!strcmp(t, "idem")) {
		struct srv_idem *e = srv_idem_add(s, str(o, "e"), str(o, "d"), str(o, "l"),
						  str(o, "c"), num(o, "v"));

		if (!e)
			return BM_ENOMEM;
		e->durable = 1;
		return 0;
	}
	if (!strcmp(t, "pmx")) {
		struct srv_idem *e = srv_idem_find(s, str(o, "e"), str(o, "d"), str(o, "l"));

		/* Refused (blocked): a resend is a new attempt. */
		if (e && e->version == num(o, "v"))
			e->durable = -1;
		srv_pending_done(s, str(o, "c"), num(o, "v"));
		return 0;
	}
	if (!strcmp(t, "msg"))
		return apply_msg(s, NULL, str(o, "a"), str(o, "b"), num(o, "v"), str(o, "e"),
				 str(o, "d"), str(o, "l"), NULL, (uint64_t)num(o, "ro"),
				 (uint64_t)num(o, "so"), NULL);
	if (!strcmp(t, "seen")) {
		u = srv_user_get(s, str(o, "e"), 1);
		if (!u)
			return BM_ENOMEM;
		u->last_seen = num(o, "ts");
		u->intention = (int32_t)num(o, "in");
		u->lat = json_number_value(json_object_get(o, "lat"));
		u->lon = json_number_value(json_object_get(o, "lon"));
		return 0;
	}
	if (!strcmp(t, "rvk")) {
		char key[SRV_EID_MAX + SRV_DEV_MAX + 4];
		const char *j = str(o, "j");

		if (*j)
			return bm_map_put(&s->revoked_jti, j,
					  (void *)(intptr_t)(num(o, "exp") ? num(o, "exp") : 1),
					  NULL);
		before_key(key, sizeof(key), str(o, "e"), str(o, "d"));
		return bm_map_put(&s->revoked_before, key, (void *)(intptr_t)num(o, "bf"),
				  NULL);
	}
	bm_warn("state", "skipping state record of unknown type '%s'", t);
	return 0;
}

static void on_logged(void *ud, int status, uint64_t offset)
{
	struct log_ctx *c = ud;

	if (status)
		bm_err("state", "state record at offset %llu not durable: %s",
		       (unsigned long long)offset, bm_strerror(status));
	if (c->cb)
		c->cb(c->ud, status, offset);
	free(c);
}

int srv_state_log(struct srv *s, void *obj, srv_done_fn *cb, void *ud)
{
	json_t *o = obj;
	char *txt = json_dumps(o, JSON_COMPACT);
	struct log_ctx *c = malloc(sizeof(*c));
	int rc;

	if (!txt || !c) {
		rc = BM_ENOMEM;
		goto out;
	}
	c->cb = cb;
	c->ud = ud;
	rc = bm_queue_append(s->q, STATE_STREAM, txt, strlen(txt), NULL, on_logged, c);
	if (rc)
		goto out;
	c = NULL;
	s->snap_records++;
	/* Appended: cb will run, so this returns 0 whatever applying says. */
	if (srv_state_apply(s, o))
		bm_err("state", "cannot apply state record '%s'", txt);
out:
	free(c);
	free(txt);
	json_decref(o);
	return rc;
}

/* --- start-up ---------------------------------------------------------------- */

/* Scan callbacks run under the queue's lock and may not call back into the
 * queue, so records are collected per batch and applied afterwards. */
struct replay {
	uint64_t last;
	struct bm_buf batch;       /* [u32 len][bytes] ... */
	int err;
};

static int on_state_record(void *ud, const struct bm_queue_meta *meta,
			   const void *data, int status)
{
	struct replay *r = ud;
	uint32_t len = meta->len;

	r->last = meta->offset;
	if (status)
		return 0;  /* destroyed record: nothing to apply */
	if (bm_buf_add(&r->batch, &len, sizeof(len)) || bm_buf_add(&r->batch, data, len)) {
		r->err = BM_ENOMEM;
		return 1;
	}
	return 0;
}

static int apply_batch(struct srv *s, struct replay *r, uint64_t *count)
{
	for (size_t off = 0; off + 4 <= r->batch.len;) {
		uint32_t len;
		json_error_t jerr;
		json_t *o;

		memcpy(&len, r->batch.data + off, 4);
		o = json_loadb((const char *)r->batch.data + off + 4, len, 0, &jerr);
		if (!o) {
			bm_err("state", "a state record is not JSON: %s", jerr.text);
			return BM_ECORRUPT;
		}
		srv_state_apply(s, o);
		json_decref(o);
		(*count)++;
		off += 4 + len;
	}
	bm_buf_reset(&r->batch);
	return 0;
}

/*
 * A message with both copies on this server has no state record, and a
 * crash may keep a cross-server message's copies but lose the state record
 * written after them.  Every stream whose head lies beyond the offset the
 * snapshot or a state record names (ref_offset) is scanned from there, and
 * each chat message found restores its chat's version and its resend key,
 * so a version is never handed out twice and a resend after the restart is
 * answered with the original ids.  Only those tails are read: at most what
 * was appended since the last snapshot (state.snapshot_every,
 * state.snapshot_interval).
 */
struct repair {
	struct srv *s;
	unsigned fixed;            /* chat versions raised */
	uint64_t tails, records, bytes, ms;
};

static int on_repair_record(void *ud, const struct bm_queue_meta *meta,
			    const void *data, int status)
{
	static bimip_MessageScheme m;
	struct repair *r = ud;
	const uint8_t *p = data;
	bimip_ChatMessage *c = &m.payload.chat_message;
	struct srv_chat *chat;

	/* A sender's copy adds nothing: the receiver's copy was appended before
	 * it (a crash keeps a prefix of the log), and a cross-server message's
	 * version and resend key are in its "pm" record. */
	if (status || meta->len < 3 || p[0] != 1 || p[1] == SRV_REC_SENDER_COPY ||
	    3u + p[2] > meta->len ||
	    bm_env_decode(p + 3 + p[2], meta->len - 3 - p[2], &m, NULL) ||
	    m.which_payload != bimip_MessageScheme_chat_message_tag || c->to_count != 1)
		return 0;
	chat = srv_chat_get(r->s, c->from.eid, c->to[0].eid, 1);
	if (!chat || strcmp(chat->id, c->chat_id))
		return 0;
	if (c->version > chat->version) {
		chat->version = c->version;
		r->fixed++;
	}
	if (c->message_id_local[0] &&
	    !srv_idem_find(r->s, c->from.eid, c->from.connection_resource_id,
			   c->message_id_local)) {
		struct srv_idem *e = srv_idem_add(r->s, c->from.eid,
						  c->from.connection_resource_id,
						  c->message_id_local, chat->id, c->version);
		if (e)
			e->durable = 1;
	}
	return 0;
}

struct stream_list {
	char **names;
	uint64_t *heads;
	size_t n, cap;
};

static int on_list_stream(void *ud, const char *name, uint64_t head, uint64_t first)
{
	struct stream_list *l = ud;

	if (strncmp(name, "u:", 2))
		return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		char **nn = realloc(l->names, cap * sizeof(*nn));
		uint64_t *nh = nn ? realloc(l->heads, cap * sizeof(*nh)) : NULL;
		if (nn)
			l->names = nn;
		if (!nh)
			return 1;
		l->heads = nh;
		l->cap = cap;
	}
	l->names[l->n] = strdup(name);
	l->heads[l->n] = head;
	if (l->names[l->n])
		l->n++;
	return 0;
}

/* The tails in log order: a record of a user's stream counts only past
 * that user's ref_offset, as in the stream by stream walk. */
static int on_repair_log(void *ud, const char *stream, const struct bm_queue_meta *meta,
			 const void *data, int status)
{
	struct repair *r = ud;
	struct srv_user *u;

	if (strncmp(stream, "u:", 2) || !(u = srv_user_get(r->s, stream + 2, 0)) ||
	    meta->offset <= u->ref_offset)
		return 0;
	r->records++;
	return on_repair_record(ud, meta, data, status);
}

static void repair(struct srv *s, struct repair *r)
{
	struct stream_list l = { 0 };
	uint64_t from = UINT64_MAX, t0 = bm_mono_ms();
	int rc = 0, n;

	/* Every user with a tail, and where the earliest tail starts. */
	bm_queue_streams(s->q, on_list_stream, &l);
	for (size_t i = 0; i < l.n; i++) {
		struct srv_user *u = srv_user_get(s, l.names[i] + 2, 0);
		uint64_t pos;

		if (u && u->ref_offset >= l.heads[i])
			continue;
		if (!u && !(u = srv_user_get(s, l.names[i] + 2, 1))) {
			rc = BM_ENOMEM;
			break;
		}
		rc = bm_queue_locate(s->q, l.names[i], u->ref_offset, &pos);
		if (rc == BM_ERANGE) {
			rc = 0;
			continue;
		}
		if (rc)
			break;
		if (pos < from)
			from = pos;
		r->tails++;
	}
	/* One sequential read of the log from there: a few large reads where
	 * each stream's walk read every record on its own (docs/architecture.md
	 * section 4.1). */
	if (!rc && from != UINT64_MAX) {
		uint64_t pos = from;

		while ((n = bm_queue_scan_log(s->q, &pos, 65536, on_repair_log, r)) > 0)
			;
		rc = n;
		r->bytes = pos - from;
	}
	if (rc) {
		/* Every step above is safe to repeat: redo it stream by stream. */
		bm_warn("state", "cannot read the log in order for the repair (%s): "
			"reading each stream's tail instead", bm_strerror(rc));
		for (size_t i = 0; i < l.n; i++) {
			struct srv_user *u = srv_user_get(s, l.names[i] + 2, 1);

			for (uint64_t after = u ? u->ref_offset : l.heads[i]; after < l.heads[i];) {
				n = bm_queue_scan(s->q, l.names[i], after, 4096, on_repair_record,
						  r);
				if (n <= 0)
					break;
				after += (uint64_t)n;
			}
		}
	}
	for (size_t i = 0; i < l.n; i++) {
		struct srv_user *u = srv_user_get(s, l.names[i] + 2, 0);

		if (u && u->ref_offset < l.heads[i])
			u->ref_offset = l.heads[i];
		free(l.names[i]);
	}
	free(l.names);
	free(l.heads);
	r->ms = bm_mono_ms() - t0;
}

static int maps_init(struct srv *s)
{
	uint64_t arena;

	bm_map_init(&s->users);
	bm_map_init(&s->chats);
	bm_map_init(&s->chat_pairs);
	bm_map_init(&s->revoked_jti);
	bm_map_init(&s->revoked_before);
	bm_map_init(&s->rpcs);
	bm_map_init(&s->pending);
	bm_map_init(&s->seen);
	bm_map_init(&s->settled_by);
	bm_map_init(&s->handoff_wait);
	bm_map_init(&s->handoff_sent);
	/* Resend keys: everything at its full size now (address space; pages
	 * as keys land), SRV_IDEM_KEY_BYTES of key per key on average.  The
	 * snapshot child reads the ring and the keys, never the index: keeping
	 * the index out of the child spares the loop a copy-on-write fault per
	 * entry it writes while the child lives. */
	arena = (uint64_t)s->cfg.idem_max * SRV_IDEM_KEY_BYTES;
	return bm_keyring_init(&s->idem, (size_t)s->cfg.idem_max,
			       (size_t)(arena < UINT32_MAX ? arena : UINT32_MAX),
			       sizeof(struct srv_idem), 1) ? BM_ENOMEM : 0;
}

int srv_state_open(struct srv *s)
{
	struct replay r = { 0 };
	uint64_t count = 0;
	uint64_t t0 = bm_mono_ms();
	int n;

	bm_map_init(&s->signals);
	if (maps_init(s))
		return BM_ENOMEM;
	s->replaying = 1;
	if (srv_snapshot_load(s, &r.last)) {
		/* Unusable snapshot: forget what it loaded, replay everything. */
		srv_state_close(s);
		if (maps_init(s))
			return BM_ENOMEM;
		r.last = 0;
	}
	do {
		n = bm_queue_scan(s->q, STATE_STREAM, r.last, 4096, on_state_record, &r);
		if (!r.err)
			r.err = apply_batch(s, &r, &count);
	} while (n > 0 && !r.err);
	bm_buf_release(&r.batch);
	s->replaying = 0;
	if (r.err)
		return r.err;
	if (n < 0 && n != BM_ENOENT)
		return n;
	{
		struct repair rp = { .s = s };
		repair(s, &rp);
		if (rp.tails)
			bm_info("state", "repair: read %llu records of %llu streams' tails "
				"(%llu bytes of log in order) in %llu ms, restored %u chat versions",
				(unsigned long long)rp.records, (unsigned long long)rp.tails,
				(unsigned long long)rp.bytes, (unsigned long long)rp.ms, rp.fixed);
	}
	bm_info("state", "replayed %llu state records in %llu ms: %zu users, %zu chats",
		(unsigned long long)count, (unsigned long long)(bm_mono_ms() - t0),
		s->users.count, s->chats.count);
	return 0;
}

void srv_state_close(struct srv *s)
{
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&s->users, &it, &k, &v);)
		user_free(v);
	for (size_t it = 0; bm_map_next(&s->chats, &it, &k, &v);)
		free(v);
	bm_map_release(&s->users);
	bm_map_release(&s->chats);
	bm_map_release(&s->chat_pairs);
	bm_keyring_release(&s->idem);
	bm_map_release(&s->revoked_jti);
	bm_map_release(&s->revoked_before);
}
