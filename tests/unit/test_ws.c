/* Unit tests for common/bm_ws.[ch]: RFC 6455 framing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_ws.h"

#define MAXW 300000

struct rec {
	int nmsg;
	uint8_t *msg[8];
	size_t mlen[8];
	uint8_t mop[8];
	int whole;		/* MESSAGE events (zero-copy path) */
	int nping, npong;
	uint8_t ping[8][126];
	size_t pinglen[8];
	int closed;
	uint16_t close_code;
	char reason[126];
	int err;
	uint16_t err_close;
	/* reassembly */
	uint8_t *cur;
	size_t curlen;
};

static void rec_free(struct rec *r)
{
	for (int i = 0; i < r->nmsg; i++)
		free(r->msg[i]);
	free(r->cur);
	memset(r, 0, sizeof(*r));
}

static void on_event(struct rec *r, const struct bm_ws_event *ev)
{
	switch (ev->type) {
	case BM_WS_EV_MESSAGE:
		assert_true(r->nmsg < 8);
		assert_null(r->cur);
		r->msg[r->nmsg] = malloc(ev->len + 1);
		memcpy(r->msg[r->nmsg], ev->data, ev->len);
		r->mlen[r->nmsg] = ev->len;
		r->mop[r->nmsg++] = ev->opcode;
		r->whole++;
		break;
	case BM_WS_EV_CHUNK:
		if (ev->first) {
			assert_null(r->cur);
			r->cur = malloc(MAXW);
			r->curlen = 0;
		}
		assert_non_null(r->cur);
		assert_true(r->curlen + ev->len <= MAXW);
		memcpy(r->cur + r->curlen, ev->data, ev->len);
		r->curlen += ev->len;
		if (ev->fin) {
			assert_true(r->nmsg < 8);
			r->msg[r->nmsg] = r->cur;
			r->mlen[r->nmsg] = r->curlen;
			r->mop[r->nmsg++] = ev->opcode;
			r->cur = NULL;
		}
		break;
	case BM_WS_EV_PING:
	case BM_WS_EV_PONG:
		assert_true(ev->len <= 125);
		if (ev->type == BM_WS_EV_PING) {
			memcpy(r->ping[r->nping], ev->data, ev->len);
			r->pinglen[r->nping++] = ev->len;
		} else {
			r->npong++;
		}
		break;
	case BM_WS_EV_CLOSE:
		r->closed = 1;
		r->close_code = ev->close_code;
		memcpy(r->reason, ev->data, ev->len);
		r->reason[ev->len] = 0;
		break;
	}
}

/*
 * Feed wire[0..len) `step` bytes at a time through p, the way an edge
 * drives it from an evbuffer: unconsumed bytes stay and new ones follow.
 */
static int drive(struct bm_ws_parser *p, const uint8_t *wire, size_t len,
		 size_t step, struct rec *r)
{
	static uint8_t acc[MAXW + 64];
	size_t alen = 0, fed = 0;
	int rc = BM_EAGAIN;

	while (fed < len) {
		size_t n = len - fed < step ? len - fed : step;

		memcpy(acc + alen, wire + fed, n);
		alen += n;
		fed += n;
		for (int guard = 0; guard < 100000; guard++) {
			struct bm_ws_event ev;
			size_t used;

			rc = bm_ws_parse(p, acc, alen, &used, &ev);
			assert_true(used <= alen);
			if (rc == 0)
				on_event(r, &ev);
			memmove(acc, acc + used, alen - used);
			alen -= used;
			if (rc == BM_ECLOSED)
				return rc;
			if (rc == BM_EAGAIN)
				break;
			if (rc < 0) {
				r->err = rc;
				r->err_close = ev.close_code;
				return rc;
			}
		}
		/* At most one control frame payload may remain unconsumed. */
		assert_true(alen <= 125);
	}
	return rc;
}

/* Append a frame to out; key NULL = unmasked. */
static size_t frame(uint8_t *out, unsigned b0, const void *pl, size_t n,
		    const uint8_t *key)
{
	size_t h = bm_ws_frame_header(out, (enum bm_ws_opcode)(b0 & 0x0f),
				      !!(b0 & 0x80), n, key);
	out[0] = (uint8_t)b0;	/* allow RSV bits in tests */
	memcpy(out + h, pl, n);
	if (key)
		bm_ws_mask(out + h, n, key, 0);
	return h + n;
}

static const uint8_t K[4] = { 0x37, 0xfa, 0x21, 0x3d };

/* Run wire through a fresh parser at every split size; check with fn. */
typedef void check_fn(struct rec *r, int rc);

static void every_split(enum bm_ws_role role, uint32_t max, const uint8_t *wire,
			size_t len, check_fn *fn)
{
	for (size_t step = 1; step <= len; step++) {
		struct bm_ws_parser p;
		struct rec r = { 0 };
		uint8_t *copy = malloc(len);
		int rc;

		memcpy(copy, wire, len);
		bm_ws_parser_init(&p, role, max);
		rc = drive(&p, copy, len, step, &r);
		fn(&r, rc);
		rec_free(&r);
		free(copy);
	}
}

static void test_parser_size(void **state)
{
	assert_true(sizeof(struct bm_ws_parser) <= 32);
}

static void check_hello(struct rec *r, int rc)
{
	assert_int_equal(rc, BM_EAGAIN);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->mlen[0], 5);
	assert_memory_equal(r->msg[0], "Hello", 5);
	assert_int_equal(r->mop[0], BM_WS_OP_TEXT);
}

static void test_rfc_examples(void **state)
{
	/* RFC 6455 5.7 */
	static const uint8_t masked[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f,
					  0x9f, 0x4d, 0x51, 0x58 };
	static const uint8_t unmasked[] = { 0x01, 0x03, 0x48, 0x65, 0x6c,
					    0x80, 0x02, 0x6c, 0x6f };
	struct bm_ws_parser p;
	struct rec r = { 0 };
	uint8_t buf[32];

	every_split(BM_WS_SERVER, 1024, masked, sizeof(masked), check_hello);
	every_split(BM_WS_CLIENT, 1024, unmasked, sizeof(unmasked), check_hello);

	/* Whole frame in one buffer: a single MESSAGE pointing into it. */
	memcpy(buf, masked, sizeof(masked));
	bm_ws_parser_init(&p, BM_WS_SERVER, 1024);
	{
		struct bm_ws_event ev;
		size_t used;

		assert_int_equal(bm_ws_parse(&p, buf, sizeof(masked), &used, &ev), 0);
		assert_int_equal(ev.type, BM_WS_EV_MESSAGE);
		assert_ptr_equal(ev.data, buf + 6);
		assert_int_equal(used, sizeof(masked));
		assert_false(bm_ws_parser_in_message(&p));
	}
	rec_free(&r);
}

static void check_proto(struct rec *r, int rc)
{
	assert_int_equal(rc, BM_EPROTO);
	assert_int_equal(r->err_close, 1002);
}

static void test_mask_rules(void **state)
{
	static const uint8_t masked[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f,
					  0x9f, 0x4d, 0x51, 0x58 };
	static const uint8_t unmasked[] = { 0x81, 0x05, 'H', 'e', 'l', 'l', 'o' };

	every_split(BM_WS_CLIENT, 1024, masked, sizeof(masked), check_proto);
	every_split(BM_WS_SERVER, 1024, unmasked, sizeof(unmasked), check_proto);
}

static void check_frag(struct rec *r, int rc)
{
	assert_int_equal(rc, BM_EAGAIN);
	assert_int_equal(r->nmsg, 2);
	assert_int_equal(r->mlen[0], 11);
	assert_memory_equal(r->msg[0], "Hello w\xe2\x82\xac!", 11);
	assert_int_equal(r->mop[0], BM_WS_OP_TEXT);
	assert_int_equal(r->mlen[1], 3);
	assert_int_equal(r->mop[1], BM_WS_OP_BINARY);
	assert_int_equal(r->nping, 1);
	assert_int_equal(r->pinglen[0], 4);
	assert_memory_equal(r->ping[0], "ping", 4);
	assert_int_equal(r->npong, 1);
}

static void test_fragmented_with_ping(void **state)
{
	uint8_t w[256];
	size_t n = 0;

	/* Text split inside the euro sign, a ping and a pong in between,
	 * an empty fragment, then a binary message. */
	n += frame(w + n, 0x01, "Hello w\xe2", 8, K);
	n += frame(w + n, 0x89, "ping", 4, K);
	n += frame(w + n, 0x00, "", 0, K);
	n += frame(w + n, 0x00, "\x82", 1, K);
	n += frame(w + n, 0x8a, "", 0, K);
	n += frame(w + n, 0x80, "\xac!", 2, K);
	n += frame(w + n, 0x82, "\x00\x01\x02", 3, K);
	every_split(BM_WS_SERVER, 64, w, n, check_frag);
}

static void check_toobig(struct rec *r, int rc)
{
	assert_int_equal(rc, BM_ETOOBIG);
	assert_int_equal(r->err_close, 1009);
	assert_int_equal(bm_err_http(rc), 413);
	assert_int_equal(r->nmsg, 0);
}

static void check_fits(struct rec *r, int rc)
{
	assert_int_equal(rc, BM_EAGAIN);
	assert_int_equal(r->nmsg, 1);
	assert_int_equal(r->mlen[0], 100);
}

static void test_oversize(void **state)
{
	uint8_t pl[200], w[512];
	size_t n;
	struct bm_ws_parser p;
	struct bm_ws_event ev;
	size_t used;

	memset(pl, 'a', sizeof(pl));
	n = frame(w, 0x82, pl, 101, K);
	every_split(BM_WS_SERVER, 100, w, n, check_toobig);
	n = frame(w, 0x82, pl, 100, K);
	every_split(BM_WS_SERVER, 100, w, n, check_fits);
	n = frame(w, 0x02, pl, 60, K);
	n += frame(w + n, 0x80, pl, 41, K);
	every_split(BM_WS_SERVER, 100, w, n, check_toobig);
	n = frame(w, 0x02, pl, 60, K);
	n += frame(w + n, 0x80, pl, 40, K);
	every_split(BM_WS_SERVER, 100, w, n, check_fits);

	/* Refused from the header alone, before the payload arrives. */
	n = frame(w, 0x82, pl, 200, K);
	bm_ws_parser_init(&p, BM_WS_SERVER, 100);
	assert_int_equal(bm_ws_parse(&p, w, 4, &used, &ev), BM_ETOOBIG);
	assert_int_equal(ev.close_code, 1009);
	/* Sticky. */
	assert_int_equal(bm_ws_parse(&p, w + 4, 4, &used, &ev), BM_ETOOBIG);
	assert_int_equal(used, 0);
}

static void bad(const uint8_t *w, size_t n, enum bm_ws_role role, int err,
		uint16_t code)
{
	struct bm_ws_parser p;
	struct rec r = { 0 };
	uint8_t copy[512];

	for (size_t step = 1; step <= n; step++) {
		memcpy(copy, w, n);
		bm_ws_parser_init(&p, role, 1000);
		assert_int_equal(drive(&p, copy, n, step, &r), err);
		assert_int_equal(r.err_close, code);
		rec_free(&r);
	}
}

static void test_bad_headers(void **state)
{
	uint8_t w[512];
	size_t n;

	/* RSV1, RSV2, RSV3 */
	for (unsigned rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
		n = frame(w, 0x81 | rsv, "a", 1, K);
		bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* reserved opcodes */
	for (unsigned op = 3; op <= 0xf; op++) {
		if (op >= 8 && op <= 0xa)
			continue;
		n = frame(w, 0x80 | op, "a", 1, K);
		bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* continuation without a message; message inside a message */
	n = frame(w, 0x80, "a", 1, K);
	bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	n = frame(w, 0x01, "a", 1, K);
	n += frame(w + n, 0x81, "b", 1, K);
	bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	/* fragmented ping; control frame longer than 125 */
	n = frame(w, 0x09, "a", 1, K);
	bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	{
		uint8_t pl[126] = { 0 };
		n = frame(w, 0x89, pl, 126, K);
		bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* 16-bit length that fits in 7 bits */
	{
		const uint8_t f[] = { 0x82, 0xfe, 0x00, 0x05, 1, 2, 3, 4, 'a', 'b', 'c', 'd', 'e' };
		bad(f, sizeof(f), BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* 64-bit length that fits in 16 bits */
	{
		const uint8_t f[] = { 0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 1, 2, 3, 4 };
		bad(f, sizeof(f), BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* 64-bit length with the MSB set */
	{
		const uint8_t f[] = { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4 };
		bad(f, sizeof(f), BM_WS_SERVER, BM_EPROTO, 1002);
	}
	/* huge but valid 64-bit length: too big, not a protocol error */
	{
		const uint8_t f[] = { 0x82, 0xff, 0x00, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4 };
		bad(f, sizeof(f), BM_WS_SERVER, BM_ETOOBIG, 1009);
	}
}

static void test_utf8(void **state)
{
	static const struct { const char *s; size_t n; int ok; } cases[] = {
		{ "plain ascii text here", 21, 1 },
		{ "\xc3\xa9t\xc3\xa9", 6, 1 },
		{ "\xf0\x9f\x98\x80", 4, 1 },
		{ "\xf4\x8f\xbf\xbf", 4, 1 },
		{ "\xef\xbb\xbf", 3, 1 },
		{ "\xff", 1, 0 },
		{ "\xc0\x80", 2, 0 },		/* overlong NUL */
		{ "\xe0\x80\xaf", 3, 0 },	/* overlong */
		{ "\xed\xa0\x80", 3, 0 },	/* surrogate */
		{ "\xf4\x90\x80\x80", 4, 0 },	/* > U+10FFFF */
		{ "\xf5\x80\x80\x80", 4, 0 },
		{ "abc\xe2\x82", 5, 0 },	/* truncated at the end */
		{ "\x80", 1, 0 },
	};
	uint8_t w[128];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = frame(w, 0x81, cases[i].s, cases[i].n, K);

		assert_int_equal(bm_ws_utf8_valid((const uint8_t *)cases[i].s,
						  cases[i].n), cases[i].ok);
		if (!cases[i].ok)
			bad(w, n, BM_WS_SERVER, BM_EDECODE, 1007);
		/* binary frames are not checked */
		n = frame(w, 0x82, cases[i].s, cases[i].n, K);
		{
			struct bm_ws_parser p;
			struct rec r = { 0 };
			bm_ws_parser_init(&p, BM_WS_SERVER, 100);
			assert_int_equal(drive(&p, w, n, n, &r), BM_EAGAIN);
			assert_int_equal(r.nmsg, 1);
			rec_free(&r);
		}
	}
	/* Long ASCII with a bad byte deep inside (fast path then slow). */
	{
		uint8_t big[1000];
		memset(big, 'x', sizeof(big));
		assert_true(bm_ws_utf8_valid(big, sizeof(big)));
		big[777] = 0xfe;
		assert_false(bm_ws_utf8_valid(big, sizeof(big)));
	}
}

static void test_close(void **state)
{
	static const struct { unsigned code; int ok; } codes[] = {
		{ 1000, 1 }, { 1001, 1 }, { 1002, 1 }, { 1003, 1 }, { 1004, 0 },
		{ 1005, 0 }, { 1006, 0 }, { 1007, 1 }, { 1011, 1 }, { 1012, 0 },
		{ 1015, 0 }, { 999, 0 }, { 0, 0 }, { 2999, 0 }, { 3000, 1 },
		{ 4999, 1 }, { 5000, 0 }, { 65535, 0 },
	};
	uint8_t w[200], pl[130];

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		struct bm_ws_parser p;
		struct rec r = { 0 };
		size_t n;

		pl[0] = (uint8_t)(codes[i].code >> 8);
		pl[1] = (uint8_t)codes[i].code;
		memcpy(pl + 2, "bye", 3);
		n = frame(w, 0x88, pl, 5, K);
		assert_int_equal(bm_ws_close_code_valid(codes[i].code), codes[i].ok);
		if (!codes[i].ok) {
			bad(w, n, BM_WS_SERVER, BM_EPROTO, 1002);
			continue;
		}
		for (size_t step = 1; step <= n; step++) {
			uint8_t c[200];
			memcpy(c, w, n);
			bm_ws_parser_init(&p, BM_WS_SERVER, 100);
			assert_int_equal(drive(&p, c, n, step, &r), BM_ECLOSED);
			assert_int_equal(r.closed, 1);
			assert_int_equal(r.close_code, codes[i].code);
			assert_string_equal(r.reason, "bye");
			rec_free(&r);
		}
	}
	/* no payload -> 1005; 1-byte payload -> 1002; bad UTF-8 reason -> 1007 */
	{
		struct bm_ws_parser p;
		struct rec r = { 0 };
		size_t n = frame(w, 0x88, "", 0, K);
		uint8_t more[4] = { 0x81, 0x80, 0, 0 };
		struct bm_ws_event ev;
		size_t used;

		bm_ws_parser_init(&p, BM_WS_SERVER, 100);
		assert_int_equal(drive(&p, w, n, n, &r), BM_ECLOSED);
		assert_int_equal(r.close_code, 1005);
		/* Nothing is parsed after a close. */
		assert_int_equal(bm_ws_parse(&p, more, 4, &used, &ev), BM_ECLOSED);
		assert_int_equal(used, 0);
		rec_free(&r);
	}
	bad(w, frame(w, 0x88, "\x03", 1, K), BM_WS_SERVER, BM_EPROTO, 1002);
	bad(w, frame(w, 0x88, "\x03\xe8\xff", 3, K), BM_WS_SERVER, BM_EDECODE, 1007);
}

static void test_encoder(void **state)
{
	uint8_t hdr[BM_WS_MAX_HEADER];
	static const struct { uint64_t len; size_t h; } lens[] = {
		{ 0, 2 }, { 125, 2 }, { 126, 4 }, { 65535, 4 }, { 65536, 10 },
		{ 1ull << 40, 10 },
	};

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		assert_int_equal(bm_ws_frame_header(hdr, BM_WS_OP_BINARY, 1, lens[i].len, NULL),
				 lens[i].h);
		assert_int_equal(bm_ws_frame_header(hdr, BM_WS_OP_BINARY, 1, lens[i].len, K),
				 lens[i].h + 4);
		assert_memory_equal(hdr + lens[i].h, K, 4);
		assert_int_equal(hdr[0], 0x82);
		assert_int_equal(hdr[1] & 0x80, 0x80);
	}

	/* Round trips both ways, with payloads straddling each length form. */
	for (size_t len = 0; len < 70000; len += (len < 130 ? 1 : 997)) {
		static uint8_t w[80000], pl[80000];
		uint8_t key[4];
		struct bm_ws_parser p;
		struct rec r = { 0 };
		size_t h, n;

		for (size_t j = 0; j < len; j++)
			pl[j] = (uint8_t)(j * 31 + 7);
		assert_int_equal(bm_ws_random_key(key), 0);
		h = bm_ws_frame_header(w, BM_WS_OP_BINARY, 1, len, key);
		memcpy(w + h, pl, len);
		bm_ws_mask(w + h, len, key, 0);
		n = h + len;
		bm_ws_parser_init(&p, BM_WS_SERVER, 70000);
		assert_int_equal(drive(&p, w, n, len < 130 ? 1 : 4096, &r), BM_EAGAIN);
		assert_int_equal(r.nmsg, 1);
		assert_int_equal(r.mlen[0], len);
		assert_memory_equal(r.msg[0], pl, len);
		rec_free(&r);

		h = bm_ws_frame_header(w, BM_WS_OP_BINARY, 1, len, NULL);
		memcpy(w + h, pl, len);
		bm_ws_parser_init(&p, BM_WS_CLIENT, 70000);
		assert_int_equal(drive(&p, w, h + len, h + len, &r), BM_EAGAIN);
		assert_int_equal(r.whole, 1);
		assert_memory_equal(r.msg[0], pl, len);
		rec_free(&r);
	}
}

static void test_control_builders(void **state)
{
	uint8_t out[BM_WS_MAX_CONTROL_FRAME], big[200];
	char reason[200];
	struct bm_ws_parser p;
	struct rec r = { 0 };
	int n;

	n = bm_ws_close_frame(out, BM_WS_SERVER, 1009, "message too big");
	assert_int_equal(n, 2 + 2 + 15);
	bm_ws_parser_init(&p, BM_WS_CLIENT, 100);
	assert_int_equal(drive(&p, out, (size_t)n, 1, &r), BM_ECLOSED);
	assert_int_equal(r.close_code, 1009);
	assert_string_equal(r.reason, "message too big");
	rec_free(&r);

	/* A long reason is cut at a character boundary (2-byte chars). */
	for (int i = 0; i < 99; i++)
		memcpy(reason + 2 * i, "\xc3\xa9", 2);
	reason[198] = 0;
	n = bm_ws_close_frame(out, BM_WS_CLIENT, 1000, reason);
	assert_true(n > 0 && n <= BM_WS_MAX_CONTROL_FRAME);
	bm_ws_parser_init(&p, BM_WS_SERVER, 100);
	assert_int_equal(drive(&p, out, (size_t)n, 3, &r), BM_ECLOSED);
	assert_int_equal(r.close_code, 1000);
	assert_int_equal(strlen(r.reason), 122);
	rec_free(&r);

	n = bm_ws_close_frame(out, BM_WS_SERVER, 0, NULL);
	assert_int_equal(n, 2);
	n = bm_ws_control_frame(out, BM_WS_CLIENT, BM_WS_OP_PING, "abc", 3);
	assert_int_equal(n, 2 + 4 + 3);
	bm_ws_parser_init(&p, BM_WS_SERVER, 100);
	assert_int_equal(drive(&p, out, (size_t)n, 1, &r), BM_EAGAIN);
	assert_int_equal(r.nping, 1);
	assert_memory_equal(r.ping[0], "abc", 3);
	rec_free(&r);
	memset(big, 0, sizeof(big));
	assert_int_equal(bm_ws_control_frame(out, BM_WS_SERVER, BM_WS_OP_PING, big, 126),
			 BM_EINVAL);
	assert_int_equal(bm_ws_control_frame(out, BM_WS_SERVER, BM_WS_OP_TEXT, big, 1),
			 BM_EINVAL);
}

static void test_mask_matches_naive(void **state)
{
	uint8_t a[300], b[300];
	const uint8_t key[4] = { 0xde, 0xad, 0xbe, 0xef };

	for (size_t start = 0; start < 9; start++)
		for (size_t len = 0; len < 200; len += 7)
			for (size_t off = 0; off < 4; off++) {
				for (size_t i = 0; i < sizeof(a); i++)
					a[i] = b[i] = (uint8_t)(i * 13);
				bm_ws_mask(a + start, len, key, off);
				for (size_t i = 0; i < len; i++)
					b[start + i] ^= key[(off + i) & 3];
				assert_memory_equal(a, b, sizeof(a));
				{
					uint8_t src[300], dst[300];
					for (size_t i = 0; i < sizeof(src); i++)
						src[i] = (uint8_t)(i * 13);
					memset(dst, 0, sizeof(dst));
					bm_ws_mask_copy(dst + start, src + start, len, key, off);
					assert_memory_equal(dst + start, a + start, len);
				}
			}
}

/* Throughput figure: masked 1 KiB and 64 KiB binary messages, whole frames. */
static void test_throughput(void **state)
{
	static const size_t sizes[] = { 1024, 65536 };

	for (size_t s = 0; s < 2; s++) {
		size_t sz = sizes[s], per, total = 8u << 20, n = 0;
		uint8_t *w = malloc(total + 64), key[4] = { 1, 2, 3, 4 };
		struct bm_ws_parser p;
		struct timespec t0, t1;
		double secs;
		size_t off = 0, msgs = 0;

		assert_non_null(w);
		per = bm_ws_frame_header(w, BM_WS_OP_BINARY, 1, sz, key) + sz;
		while (n + per <= total) {
			size_t h = bm_ws_frame_header(w + n, BM_WS_OP_BINARY, 1, sz, key);
			memset(w + n + h, 'z', sz);
			n += h + sz;
		}
		bm_ws_parser_init(&p, BM_WS_SERVER, (uint32_t)sz);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (off < n) {
			struct bm_ws_event ev;
			size_t used;
			int rc = bm_ws_parse(&p, w + off, n - off, &used, &ev);

			assert_int_equal(rc, 0);
			assert_int_equal(ev.type, BM_WS_EV_MESSAGE);
			off += used;
			msgs++;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
		printf("ws parse+unmask %zu B messages: %.0f MB/s, %.2f M msg/s\n",
		       sz, (double)n / secs / 1e6, (double)msgs / secs / 1e6);
		free(w);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parser_size),
		cmocka_unit_test(test_rfc_examples),
		cmocka_unit_test(test_mask_rules),
		cmocka_unit_test(test_fragmented_with_ping),
		cmocka_unit_test(test_oversize),
		cmocka_unit_test(test_bad_headers),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_close),
		cmocka_unit_test(test_encoder),
		cmocka_unit_test(test_control_builders),
		cmocka_unit_test(test_mask_matches_naive),
		cmocka_unit_test(test_throughput),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
