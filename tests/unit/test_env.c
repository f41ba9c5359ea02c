#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <pb_encode.h>

#include "bm_env.h"
#include "bm_err.h"
#include "bm_ipc.h"

static bimip_MessageScheme m, out;
static uint8_t buf[BM_ENV_MAX_BYTES + 64];

static size_t encode_raw(bimip_MessageScheme *x)
{
	pb_ostream_t os = pb_ostream_from_buffer(buf, sizeof(buf));
	assert_true(pb_encode(&os, bimip_MessageScheme_fields, x));
	return os.bytes_written;
}

static void make_ping(bimip_MessageScheme *x)
{
	memset(x, 0, sizeof(*x));
	x->which_payload = bimip_MessageScheme_pingpong_message_tag;
	x->payload.pingpong_message.type = 1;
	x->payload.pingpong_message.request_time = 1000;
}

static void test_roundtrip(void **state)
{
	struct bm_env_err err;
	struct bm_buf b = BM_BUF_INIT;
	size_t n;

	make_ping(&m);
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), 0);
	assert_int_equal(m.route, 6);
	assert_int_equal(bm_env_decode(buf, n, &out, &err), 0);
	assert_int_equal(out.which_payload, 6);
	assert_int_equal(out.payload.pingpong_message.request_time, 1000);
	assert_int_equal(bm_env_encode_buf(&m, &b), 0);
	assert_int_equal(b.len, n);
	assert_memory_equal(b.data, buf, n);
	bm_buf_release(&b);
}

/* Decoding into a target that held another message leaves nothing of it:
 * bm_env_decode does not walk the defaults (PB_DECODE_NOINIT), it resets
 * the fields outside the oneof itself. */
static void test_decode_over_previous(void **state)
{
	static bimip_MessageScheme text;
	bimip_TextPayloadRequest *t = &text.payload.text_payload_request;
	size_t n;

	/* A text request with every field, and offset, first. */
	text.route = text.which_payload = bimip_MessageScheme_text_payload_request_tag;
	text.offset = 77;
	t->has_from = true;
	strcpy(t->from.eid, "a@x");
	t->to_count = 2;
	strcpy(t->to[0].eid, "b@x");
	strcpy(t->to[1].eid, "c@x");
	strcpy(t->content, "hello");
	strcpy(t->message_id_local, "m1");
	strcpy(t->text_size_count, "5");
	t->created_at = 5;
	assert_int_equal(bm_env_encode(&text, buf, sizeof(buf), &n), 0);
	assert_int_equal(bm_env_decode(buf, n, &out, NULL), 0);
	assert_int_equal(out.offset, 77);
	/* Then a bare one of the same route: nothing of the first remains. */
	memset(&text, 0, sizeof(text));
	text.route = text.which_payload = bimip_MessageScheme_text_payload_request_tag;
	strcpy(text.payload.text_payload_request.content, "x");
	assert_int_equal(bm_env_encode(&text, buf, sizeof(buf), &n), 0);
	assert_int_equal(bm_env_decode(buf, n, &out, NULL), 0);
	assert_int_equal(out.offset, 0);
	/* Strings are set up to their NUL: compare them as strings. */
	{
		const bimip_TextPayloadRequest *o = &out.payload.text_payload_request;
		assert_int_equal(out.route, text.route);
		assert_int_equal(out.which_payload, text.which_payload);
		assert_false(o->has_from);
		assert_string_equal(o->from.eid, "");
		assert_int_equal(o->to_count, 0);
		assert_string_equal(o->content, "x");
		assert_string_equal(o->message_id_local, "");
		assert_string_equal(o->text_size_count, "");
		assert_int_equal(o->created_at, 0);
	}
	/* And a ping after it: route and payload are the ping's. */
	make_ping(&m);
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), 0);
	assert_int_equal(bm_env_decode(buf, n, &out, NULL), 0);
	assert_int_equal(out.route, 6);
	assert_int_equal(out.offset, 0);
	assert_memory_equal(&out.payload.pingpong_message, &m.payload.pingpong_message,
			    sizeof(m.payload.pingpong_message));
}

static void test_route_mismatch(void **state)
{
	struct bm_env_err err;
	size_t n;

	make_ping(&m);
	m.route = 14;
	n = encode_raw(&m);
	assert_int_equal(bm_env_decode(buf, n, &out, &err), BM_EROUTE);
	assert_int_equal(err.code, 400);
	assert_int_equal(err.route, 14);
	assert_non_null(strstr(err.text, "does not match"));
	/* route unset */
	m.route = 0;
	n = encode_raw(&m);
	assert_int_equal(bm_env_decode(buf, n, &out, &err), BM_EROUTE);
	/* encoder refuses a mismatch too */
	m.route = 7;
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), BM_EROUTE);
}

static void test_no_payload_and_unknown_route(void **state)
{
	struct bm_env_err err;
	size_t n;
	/* route = 77, no payload: field 1 varint 77 */
	const uint8_t unknown[] = { 0x08, 77 };
	/* route = 14 and an unknown field 31 (length-delimited, 1 byte) */
	const uint8_t nopay[] = { 0x08, 14, 0xfa, 0x01, 0x01, 0x00 };

	assert_int_equal(bm_env_decode(unknown, sizeof(unknown), &out, &err), BM_EROUTE);
	assert_non_null(strstr(err.text, "unknown route 77"));
	assert_int_equal(bm_env_decode(nopay, sizeof(nopay), &out, &err), BM_ENOPAYLOAD);
	assert_int_equal(err.code, 400);
	memset(&m, 0, sizeof(m));
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), BM_ENOPAYLOAD);
	assert_int_equal(bm_env_decode(buf, 0, &out, &err), BM_ENOPAYLOAD);
}

static void test_garbage_and_bounds(void **state)
{
	struct bm_env_err err;
	const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				    0xff, 0xff, 0xff, 0xff };
	const uint8_t truncated[] = { 0x08, 0x06, 0x32, 0x10, 0x08 };
	uint8_t big[600];
	size_t n = 0;

	assert_int_equal(bm_env_decode(garbage, sizeof(garbage), &out, &err), BM_EDECODE);
	assert_int_equal(err.code, 400);
	assert_int_equal(bm_env_decode(truncated, sizeof(truncated), &out, &err), BM_EDECODE);
	/* Oversized input: refused before decoding. */
	assert_int_equal(bm_env_decode(buf, BM_ENV_MAX_BYTES + 1, &out, &err), BM_ETOOBIG);
	assert_int_equal(err.code, 413);
	/* An eid longer than its bound (128): pingpong.to.eid of 200 bytes. */
	n = 0;
	big[n++] = 0x08; big[n++] = 6;
	big[n++] = 0x32; big[n++] = 0xce; big[n++] = 0x01; /* 206 */
	big[n++] = 0x0a; big[n++] = 0xcb; big[n++] = 0x01; /* 203 */
	big[n++] = 0x0a; big[n++] = 0xc8; big[n++] = 0x01; /* 200 */
	memset(big + n, 'x', 200);
	n += 200;
	assert_int_equal(bm_env_decode(big, n, &out, &err), BM_ETOOBIG);
	assert_int_equal(err.code, 413);
	assert_non_null(strstr(err.text, "size bound"));
}

/* ---- the text_payload_request fast path against nanopb ---- */

struct raw {
	uint8_t b[BM_ENV_MAX_BYTES + 64];
	size_t n;
};

static void raw_varint(struct raw *r, uint64_t v)
{
	do {
		r->b[r->n++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
		v >>= 7;
	} while (v);
}

static void raw_key(struct raw *r, unsigned field, unsigned wt)
{
	raw_varint(r, (uint64_t)field << 3 | wt);
}

static void raw_bytes(struct raw *r, unsigned field, const void *p, size_t n)
{
	raw_key(r, field, 2);
	raw_varint(r, n);
	memcpy(r->b + r->n, p, n);
	r->n += n;
}

static void raw_str(struct raw *r, unsigned field, const char *s)
{
	raw_bytes(r, field, s, strlen(s));
}

static void raw_sub(struct raw *r, unsigned field, const struct raw *sub)
{
	raw_bytes(r, field, sub->b, sub->n);
}

/* env = route 14 and req as its text_payload_request. */
static void text_env(struct raw *env, const struct raw *req)
{
	env->n = 0;
	raw_key(env, 1, 0);
	raw_varint(env, 14);
	raw_sub(env, 14, req);
}

static void same_identity(const bimip_Identity *a, const bimip_Identity *b)
{
	assert_string_equal(a->eid, b->eid);
	assert_string_equal(a->connection_resource_id, b->connection_resource_id);
	assert_string_equal(a->node, b->node);
}

/* bm_env_decode (into a target full of an earlier message) and nanopb alone
 * give the same answer for p[0..n); returns that answer. */
static int same_as_nanopb(const uint8_t *p, size_t n)
{
	static bimip_MessageScheme fast, slow;
	struct bm_env_err ef, es;
	int rf, rs;

	memset(&fast, 0x5a, sizeof(fast));
	fast.which_payload = bimip_MessageScheme_text_payload_request_tag;
	memset(&ef, 0, sizeof(ef));
	memset(&es, 0, sizeof(es));
	rf = bm_env_decode(p, n, &fast, &ef);
	rs = bm_env_decode_nanopb(p, n, &slow, &es);
	assert_int_equal(rf, rs);
	assert_int_equal(ef.code, es.code);
	assert_string_equal(ef.text, es.text);
	if (rf)
		return rf;
	assert_int_equal(fast.route, slow.route);
	assert_int_equal(fast.offset, slow.offset);
	assert_int_equal(fast.which_payload, slow.which_payload);
	if (slow.which_payload == bimip_MessageScheme_text_payload_request_tag) {
		const bimip_TextPayloadRequest *a = &fast.payload.text_payload_request;
		const bimip_TextPayloadRequest *b = &slow.payload.text_payload_request;

		assert_int_equal(a->has_from, b->has_from);
		same_identity(&a->from, &b->from);
		assert_int_equal(a->to_count, b->to_count);
		for (pb_size_t i = 0; i < b->to_count; i++)
			same_identity(&a->to[i], &b->to[i]);
		assert_string_equal(a->content, b->content);
		assert_string_equal(a->message_id_local, b->message_id_local);
		assert_string_equal(a->text_size_count, b->text_size_count);
		assert_int_equal(a->created_at, b->created_at);
	}
	return 0;
}

static void identity(struct raw *r, const char *eid, const char *dev, const char *node)
{
	r->n = 0;
	if (eid)
		raw_str(r, 1, eid);
	if (dev)
		raw_str(r, 2, dev);
	if (node)
		raw_str(r, 3, node);
}

/* The shapes the fast path takes, and the ones it leaves to nanopb: the
 * same answers either way, errors included. */
static void test_text_fast_path(void **state)
{
	static struct raw env, req, id, id2;
	static char big[9000];

	/* The common chat: what a client sends. */
	identity(&id, "alice@x", "phone", NULL);
	identity(&id2, "bob@x", NULL, NULL);
	req.n = 0;
	raw_sub(&req, 1, &id);
	raw_sub(&req, 2, &id2);
	raw_str(&req, 3, "hello");
	raw_str(&req, 4, "local-1");
	raw_str(&req, 5, "5");
	raw_key(&req, 6, 0);
	raw_varint(&req, 1763900000000ull);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);

	/* Offset first, route last, and a second request that merges into the
	 * first: its content wins, its `from` merges, its `to` appends. */
	env.n = 0;
	raw_key(&env, 99, 0);
	raw_varint(&env, 42);
	raw_sub(&env, 14, &req);
	req.n = 0;
	identity(&id, NULL, NULL, "node-2");
	raw_sub(&req, 1, &id);
	raw_sub(&req, 2, &id2);
	raw_str(&req, 3, "again");
	raw_sub(&env, 14, &req);
	raw_key(&env, 1, 0);
	raw_varint(&env, 14);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);

	/* An empty request, and no route (BM_EROUTE from both). */
	req.n = 0;
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);
	env.n = 0;
	raw_bytes(&env, 14, "", 0);
	assert_int_equal(same_as_nanopb(env.b, env.n), BM_EROUTE);

	/* Left to nanopb: an unknown field inside (skipped), a negative
	 * created_at (a 10-byte varint), content at and over its bound, a
	 * fifth `to`, a string with the wrong wire type, a truncated one. */
	req.n = 0;
	raw_str(&req, 3, "hi");
	raw_str(&req, 40, "unknown");
	raw_key(&req, 6, 0);
	raw_varint(&req, (uint64_t)-5);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);

	memset(big, 'c', sizeof(big) - 1);
	big[8192] = 0;
	req.n = 0;
	raw_str(&req, 3, big);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);
	big[8192] = 'c';
	big[8193] = 0;
	req.n = 0;
	raw_str(&req, 3, big);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), BM_ETOOBIG);

	req.n = 0;
	for (int i = 0; i < 5; i++)
		raw_sub(&req, 2, &id2);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), BM_ETOOBIG);

	req.n = 0;
	raw_key(&req, 3, 0);
	raw_varint(&req, 7);
	text_env(&env, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), BM_EDECODE);

	env.n -= 1;
	env.b[env.n - 1] = 0;   /* cut, and keep the lengths lying */
	assert_int_equal(same_as_nanopb(env.b, env.n), BM_EDECODE);

	/* Another payload after the request: nanopb's oneof switch. */
	env.n = 0;
	raw_key(&env, 1, 0);
	raw_varint(&env, 6);
	req.n = 0;
	raw_str(&req, 3, "hi");
	raw_sub(&env, 14, &req);
	req.n = 0;
	raw_key(&req, 2, 0);        /* PingPong.type = 1 */
	raw_varint(&req, 1);
	raw_sub(&env, 6, &req);
	assert_int_equal(same_as_nanopb(env.b, env.n), 0);
}

/* bm_env_peek agrees with bm_env_decode on the outer layer: whatever
 * decodes peeks with the same route, the outer errors come with the same
 * code, and only a bad payload gets past it (the server refuses that). */
static void test_peek(void **state)
{
	static const struct {
		const char *what;
		uint8_t b[24];
		size_t n;
		int peek_rc;           /* bm_env_peek's answer */
		int64_t route;
	} cases[] = {
		{ "ping", { 0x08, 6, 0x32, 0x00 }, 4, 0, 6 },
		{ "payload first, route last", { 0x32, 0x00, 0x08, 6 }, 4, 0, 6 },
		{ "zero tag (peek stops there)", { 0x08, 6, 0x32, 0x00, 0x00, 0xff, 0xff }, 7, 0, 6 },
		{ "unknown fields skipped", { 0x08, 6, 0xf8, 0x01, 0x05, 0x32, 0x00,
					      0xfd, 0x01, 1, 2, 3, 4 }, 13, 0, 6 },
		{ "offset field 99", { 0x08, 6, 0x32, 0x00, 0x98, 0x06, 0x07 }, 7, 0, 6 },
		{ "last payload wins", { 0x08, 14, 0x32, 0x00, 0x72, 0x00 }, 6, 0, 14 },
		{ "bad payload inside", { 0x08, 6, 0x32, 0x02, 0xff, 0xff }, 6, 0, 6 },
		{ "route mismatch", { 0x08, 14, 0x32, 0x00 }, 4, BM_EROUTE, 0 },
		{ "no payload", { 0x08, 14 }, 2, BM_ENOPAYLOAD, 0 },
		{ "unknown route", { 0x08, 77 }, 2, BM_EROUTE, 0 },
		{ "empty", { 0 }, 0, BM_ENOPAYLOAD, 0 },
		{ "length past the end", { 0x08, 6, 0x32, 0x05, 0x08 }, 5, BM_EDECODE, 0 },
		{ "payload as varint", { 0x08, 6, 0x30, 0x01 }, 4, BM_EDECODE, 0 },
		{ "route as bytes", { 0x0a, 0x01, 0x06, 0x32, 0x00 }, 5, BM_EDECODE, 0 },
		{ "group wire type", { 0x08, 6, 0x32, 0x00, 0xfb, 0x01 }, 6, BM_EDECODE, 0 },
		/* nanopb skips an unknown varint of any length (pb_skip_varint);
		 * found by fuzz_envelope in CI. */
		{ "unknown field, 14-byte varint", { 0x08, 6, 0x32, 0x00, 0xa8, 0xa8, 0xa8, 0x5e,
						     0xa8, 0xa8, 0xa8, 0xa8, 0xa8, 0xa8, 0xa8, 0xa8,
						     0xa8, 0xa8, 0xa8, 0xa8, 0xa8, 0x00 }, 22, 0, 6 },
		{ "unknown field, varint to the end", { 0x08, 6, 0x32, 0x00, 0xa8, 0xa8, 0xa8, 0x5e,
							0xa8, 0xa8 }, 10, BM_EDECODE, 0 },
		{ "endless varint", { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				      0xff, 0xff, 0x01 }, 12, BM_EDECODE, 0 },
	};
	struct bm_env_err perr, derr;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t route = -1;
		int prc = bm_env_peek(cases[i].b, cases[i].n, &route, &perr);
		int drc = bm_env_decode(cases[i].b, cases[i].n, &out, &derr);

		print_message("%s: peek %d decode %d\n", cases[i].what, prc, drc);
		assert_int_equal(prc, cases[i].peek_rc);
		if (!prc)
			assert_int_equal(route, cases[i].route);
		if (!drc) {
			assert_int_equal(prc, 0);
			assert_int_equal(route, out.route);
		}
		if (prc) {
			/* An outer error: decode refuses it too, with the same code. */
			assert_int_not_equal(drc, 0);
			assert_int_equal(perr.code, derr.code);
			assert_int_equal(perr.code, 400);
		}
	}
	/* Every envelope a peer encodes peeks. */
	make_ping(&m);
	{
		size_t n;
		int64_t route = 0;
		assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), 0);
		assert_int_equal(bm_env_peek(buf, n, &route, NULL), 0);
		assert_int_equal(route, 6);
		assert_int_equal(bm_env_peek(buf, BM_ENV_MAX_BYTES + 1, &route, &perr), BM_ETOOBIG);
		assert_int_equal(perr.code, 413);
	}
}

static void test_make_error(void **state)
{
	struct bm_env_err err;
	size_t n;

	bm_env_make_error(&m, 403, 14, "blocked by the receiver", "bob");
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), 0);
	assert_int_equal(bm_env_decode(buf, n, &out, &err), 0);
	assert_int_equal(out.payload.error_message.code, 403);
	assert_string_equal(out.payload.error_message.route, "14");
	assert_string_equal(out.payload.error_message.message, "blocked by the receiver");
	assert_string_equal(bm_env_route_name(13), "chat_message");
	assert_null(bm_env_route_name(1));
	assert_null(bm_env_route_name(31));
	assert_null(bm_env_route_name(-1));
}

/* The hand-written VersionUpdate encoder writes nanopb's bytes. */
static void check_vu(const char *eid, const char *dev, const char *id, const char *local,
		     const char *chat, int64_t version, int64_t ts)
{
	static uint8_t mine[BM_ENV_VU_MAX];
	bimip_VersionUpdate *v = &m.payload.version_update;
	size_t n, k;

	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_version_update_tag;
	v->has_to = true;
	BM_SET_STR(v->to.eid, eid);
	BM_SET_STR(v->to.connection_resource_id, dev);
	BM_SET_STR(v->message_id, id);
	BM_SET_STR(v->message_id_local, local);
	BM_SET_STR(v->chat_id, chat);
	v->type = 1;
	v->status = 1;
	v->version = version;
	v->timestamp = ts;
	assert_int_equal(bm_env_encode(&m, buf, sizeof(buf), &n), 0);
	k = bm_env_version_update(mine, sizeof(mine), eid, dev, id, local, chat, version, ts);
	assert_int_equal(k, n);
	assert_memory_equal(mine, buf, n);
	assert_int_equal(bm_env_version_update(mine, n - 1, eid, dev, id, local, chat,
					       version, ts), 0);
}

static void test_version_update(void **state)
{
	static char big[400];

	memset(big, 'x', sizeof(big) - 1);
	check_vu("alice@example.com", "phone", "0123456789abcdef0123456789abcdef.42", "m-1",
		 "0123456789abcdef0123456789abcdef", 42, 1795000000000);
	check_vu("", "", "", "", "", 0, 0);
	check_vu("a", "", "id", "", "c", 1, -5);
	check_vu(big, big, big, big, big, INT64_MAX, INT64_MIN);
	check_vu("b\"q", "d\x01", "x.300", "local with spaces", "c", 300, 127);
}

/* bm_env_chat_message writes the bytes pb_encode writes, for random
 * messages: every field empty or set, long strings cut at their bounds,
 * negative numbers, 0..4 receivers, text or media or no payload. */
static void rand_str(unsigned *seed, char *dst, size_t cap)
{
	size_t n;
	unsigned r = (unsigned)rand_r(seed);

	n = r % 4 == 0 ? 0 : r % 4 == 1 ? cap - 1 : (size_t)rand_r(seed) % cap;
	for (size_t i = 0; i < n; i++)
		dst[i] = (char)(1 + rand_r(seed) % 255);
	dst[n] = 0;
}

static int64_t rand_num(unsigned *seed)
{
	switch (rand_r(seed) % 5) {
	case 0: return 0;
	case 1: return -(int64_t)(rand_r(seed) % 1000) - 1;
	case 2: return INT64_MAX - rand_r(seed) % 3;
	case 3: return INT64_MIN + rand_r(seed) % 3;
	default: return rand_r(seed);
	}
}

static void test_chat_message_encoder(void **state)
{
	static bimip_ChatMessage c;
	static uint8_t want[bimip_ChatMessage_size], got[bimip_ChatMessage_size];
	unsigned seed = 7;

	for (int t = 0; t < 3000; t++) {
		pb_ostream_t os = pb_ostream_from_buffer(want, sizeof(want));
		size_t n;

		memset(&c, 0, sizeof(c));
		rand_str(&seed, c.message_id, sizeof(c.message_id));
		rand_str(&seed, c.message_id_local, sizeof(c.message_id_local));
		c.version = rand_num(&seed);
		rand_str(&seed, c.chat_id, sizeof(c.chat_id));
		c.has_from = rand_r(&seed) % 2;
		rand_str(&seed, c.from.eid, sizeof(c.from.eid));
		rand_str(&seed, c.from.connection_resource_id, sizeof(c.from.connection_resource_id));
		rand_str(&seed, c.from.node, sizeof(c.from.node));
		c.to_count = (pb_size_t)(rand_r(&seed) % 5);
		for (int i = 0; i < c.to_count; i++) {
			rand_str(&seed, c.to[i].eid, sizeof(c.to[i].eid));
			rand_str(&seed, c.to[i].connection_resource_id,
				 sizeof(c.to[i].connection_resource_id));
		}
		rand_str(&seed, c.author, sizeof(c.author));
		switch (rand_r(&seed) % 3) {
		case 0:
			c.which_payload = bimip_ChatMessage_text_tag;
			rand_str(&seed, c.payload.text, sizeof(c.payload.text));
			break;
		case 1:
			c.which_payload = bimip_ChatMessage_media_url_tag;
			rand_str(&seed, c.payload.media_url, sizeof(c.payload.media_url));
			break;
		}
		c.acknowledgment = (int32_t)rand_num(&seed);
		c.acknowledgment_timestamp = rand_num(&seed);
		c.created_at = rand_num(&seed);
		c.server_received_at = rand_num(&seed);
		c.media_type = (int32_t)rand_num(&seed);
		rand_str(&seed, c.caption, sizeof(c.caption));
		rand_str(&seed, c.thumbnail_url, sizeof(c.thumbnail_url));
		c.media_size_bytes = rand_num(&seed);
		assert_true(pb_encode(&os, bimip_ChatMessage_fields, &c));
		n = bm_env_chat_message(got, sizeof(got), &c);
		assert_int_equal(n, os.bytes_written);
		assert_memory_equal(got, want, n);
	}
	assert_int_equal(bm_env_chat_message(got, sizeof(got) - 1, &c), 0);
}

/* Decode sets every field, the strings up to their NUL (the bytes after it
 * are not its business). */
static void assert_ipc_equal(const struct bm_ipc_hdr *a, const struct bm_ipc_hdr *b)
{
	assert_int_equal(a->kind, b->kind);
	assert_int_equal(a->flags, b->flags);
	assert_true(a->session == b->session);
	assert_true(a->seq == b->seq);
	assert_true(a->offset == b->offset);
	assert_string_equal(a->origin, b->origin);
	assert_string_equal(a->eid, b->eid);
	assert_string_equal(a->device, b->device);
	assert_string_equal(a->aux, b->aux);
}

static void test_ipc(void **state)
{
	struct bm_ipc_hdr h, back;
	uint8_t b[BM_IPC_HDR_MAX];
	int n;

	memset(&h, 0, sizeof(h));
	h.kind = BM_IPC_STANZA;
	h.flags = BM_IPC_F_REPLAY;
	h.session = 0x1122334455667788ull;
	h.seq = 7;
	h.offset = -3;
	strcpy(h.origin, "sig-1");
	strcpy(h.eid, "alice@domain.com");
	strcpy(h.device, "phone");
	n = bm_ipc_encode(&h, b, sizeof(b));
	assert_true(n > BM_IPC_FIXED);
	assert_int_equal(bm_ipc_decode(b, (size_t)n, &back), 0);
	assert_ipc_equal(&h, &back);
	/* every truncation is refused */
	for (int i = 0; i < n; i++)
		assert_int_equal(bm_ipc_decode(b, (size_t)i, &back), BM_EPROTO);
	b[0] = 0;
	assert_int_equal(bm_ipc_decode(b, (size_t)n, &back), BM_EPROTO);
	b[0] = BM_IPC_MAGIC;
	b[2] = 99;
	assert_int_equal(bm_ipc_decode(b, (size_t)n, &back), BM_EPROTO);
	h.kind = 0;
	assert_int_equal(bm_ipc_encode(&h, b, sizeof(b)), BM_EINVAL);
	h.kind = BM_IPC_PUSH;
	memset(h.eid, 'e', BM_IPC_EID_MAX);
	h.eid[BM_IPC_EID_MAX] = 0;
	assert_true(bm_ipc_encode(&h, b, sizeof(b)) > 0);
	assert_int_equal(bm_ipc_encode(&h, b, 40), BM_ETOOBIG);
	assert_string_equal(bm_ipc_kind_name(BM_IPC_PUSH), "push");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_decode_over_previous),
		cmocka_unit_test(test_route_mismatch),
		cmocka_unit_test(test_no_payload_and_unknown_route),
		cmocka_unit_test(test_garbage_and_bounds),
		cmocka_unit_test(test_text_fast_path),
		cmocka_unit_test(test_peek),
		cmocka_unit_test(test_make_error),
		cmocka_unit_test(test_version_update),
		cmocka_unit_test(test_chat_message_encoder),
		cmocka_unit_test(test_ipc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
