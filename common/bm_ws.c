/*
 * bm_ws.c - RFC 6455 framing.
 *
 * Wire format (RFC 6455 5.2), network byte order:
 *
 *   byte 0   FIN(1) RSV1(1) RSV2(1) RSV3(1) opcode(4)
 *   byte 1   MASK(1) len7(7)
 *            len7 <= 125: payload length
 *            len7 == 126: 16-bit length follows, must be >= 126
 *            len7 == 127: 64-bit length follows, MSB 0, must be > 0xffff
 *   [4]      masking key, present iff MASK; client->server frames are always
 *            masked, server->client frames never are
 *   payload  byte i is XORed with key[i % 4] when masked
 *
 * No extension is negotiated, so RSV1-3 must be 0.  Opcodes: 0 continuation,
 * 1 text, 2 binary, 8 close, 9 ping, 10 pong; others are reserved (1002).
 * Control frames (opcode & 8) have FIN set and at most 125 payload bytes and
 * may come between the fragments of a data message.  A close payload is
 * empty, or a 16-bit code followed by a UTF-8 reason.  Text messages are
 * UTF-8 as a whole (fragments may split a code point).
 *
 * The parser reads the header a byte at a time into its 32-byte state, so
 * it never needs the header to be contiguous; only a control frame's payload
 * (<= 125 bytes) is left in the caller's buffer until it is complete.
 */
#include "bm_ws.h"
#include "bm_err.h"

#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>

static_assert(sizeof(struct bm_ws_parser) <= 32, "bm_ws_parser grew");

enum {
	ST_HDR0 = 0,	/* FIN, RSV, opcode */
	ST_HDR1,	/* MASK, len7 */
	ST_LEN,		/* extended length, `need` bytes left */
	ST_MASK,	/* masking key, `need` bytes left */
	ST_PAYLOAD,
	ST_CLOSED,
};

#define F_CLIENT	0x01	/* our role is client: frames must be unmasked */
#define F_MASKED	0x02	/* current frame is masked */
#define F_FIRST		0x04	/* no chunk of the open message handed out yet */
#define F_LEN64		0x08	/* current extended length is 64-bit */

#define FR_FIN		0x80

/* UTF-8 validator states: bytes still expected and the range of the next. */
enum {
	U8_ACCEPT = 0,
	U8_1,		/* 1 more, 80..BF */
	U8_2,		/* 2 more, 80..BF */
	U8_3,		/* 3 more, 80..BF */
	U8_E0,		/* 2 more, first A0..BF (no overlong) */
	U8_ED,		/* 2 more, first 80..9F (no surrogate) */
	U8_F0,		/* 3 more, first 90..BF (no overlong) */
	U8_F4,		/* 3 more, first 80..8F (<= U+10FFFF) */
	U8_REJECT = 0xff,
};

static uint8_t utf8_lead(uint8_t c)
{
	if (c < 0x80)
		return U8_ACCEPT;
	if (c >= 0xc2 && c <= 0xdf)
		return U8_1;
	if (c == 0xe0)
		return U8_E0;
	if (c == 0xed)
		return U8_ED;
	if (c >= 0xe1 && c <= 0xef)
		return U8_2;
	if (c == 0xf0)
		return U8_F0;
	if (c >= 0xf1 && c <= 0xf3)
		return U8_3;
	if (c == 0xf4)
		return U8_F4;
	return U8_REJECT;
}

static uint8_t utf8_cont(uint8_t st, uint8_t c)
{
	static const uint8_t lo[] = { 0, 0x80, 0x80, 0x80, 0xa0, 0x80, 0x90, 0x80 };
	static const uint8_t hi[] = { 0, 0xbf, 0xbf, 0xbf, 0xbf, 0x9f, 0xbf, 0x8f };
	static const uint8_t next[] = { 0, U8_ACCEPT, U8_1, U8_2, U8_1, U8_1, U8_2, U8_2 };

	if (c < lo[st] || c > hi[st])
		return U8_REJECT;
	return next[st];
}

/* Advance the validator over s[0..n); returns the new state. */
static uint8_t utf8_run(uint8_t st, const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		if (st == U8_ACCEPT) {
			/* ASCII fast path, a word at a time. */
			while (n - i >= 8) {
				uint64_t w;
				memcpy(&w, s + i, 8);
				if (w & 0x8080808080808080ull)
					break;
				i += 8;
			}
			if (i == n)
				break;
			st = utf8_lead(s[i++]);
		} else {
			st = utf8_cont(st, s[i++]);
		}
		if (st == U8_REJECT)
			return st;
	}
	return st;
}

int bm_ws_utf8_valid(const uint8_t *s, size_t len)
{
	return utf8_run(U8_ACCEPT, s, len) == U8_ACCEPT;
}

int bm_ws_close_code_valid(unsigned code)
{
	if (code >= 1000 && code <= 1003)
		return 1;
	if (code >= 1007 && code <= 1011)
		return 1;
	return code >= 3000 && code <= 4999;
}

void bm_ws_mask(uint8_t *d, size_t len, const uint8_t key[4], size_t off)
{
	size_t i = 0;

	off &= 3;
	while (i < len && ((uintptr_t)(d + i) & 7)) {
		d[i] ^= key[(off + i) & 3];
		i++;
	}
	if (len - i >= 8) {
		uint8_t k8[8];
		uint64_t k;

		for (int j = 0; j < 8; j++)
			k8[j] = key[(off + i + j) & 3];
		memcpy(&k, k8, 8);
		for (; len - i >= 32; i += 32) {
			uint64_t w[4];
			memcpy(w, d + i, 32);
			w[0] ^= k;
			w[1] ^= k;
			w[2] ^= k;
			w[3] ^= k;
			memcpy(d + i, w, 32);
		}
		for (; len - i >= 8; i += 8) {
			uint64_t w;
			memcpy(&w, d + i, 8);
			w ^= k;
			memcpy(d + i, &w, 8);
		}
	}
	for (; i < len; i++)
		d[i] ^= key[(off + i) & 3];
}

void bm_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len,
		     const uint8_t key[4], size_t off)
{
	size_t i = 0;

	off &= 3;
	if (len >= 8) {
		uint8_t k8[8];
		uint64_t k;

		for (int j = 0; j < 8; j++)
			k8[j] = key[(off + j) & 3];
		memcpy(&k, k8, 8);
		for (; len - i >= 8; i += 8) {
			uint64_t w;
			memcpy(&w, src + i, 8);
			w ^= k;
			memcpy(dst + i, &w, 8);
		}
	}
	for (; i < len; i++)
		dst[i] = src[i] ^ key[(off + i) & 3];
}

void bm_ws_parser_init(struct bm_ws_parser *p, enum bm_ws_role role,
		       uint32_t max_msg)
{
	memset(p, 0, sizeof(*p));
	p->state = ST_HDR0;
	p->max_msg = max_msg ? max_msg : 1;
	p->flags = role == BM_WS_CLIENT ? F_CLIENT : 0;
}

int bm_ws_parser_in_message(const struct bm_ws_parser *p)
{
	return p->msg != 0;
}

static uint16_t close_code_for(int err)
{
	switch (err) {
	case BM_ETOOBIG:
		return BM_WS_CLOSE_TOO_BIG;
	case BM_EDECODE:
		return BM_WS_CLOSE_BAD_DATA;
	case BM_ECLOSED:
		return 0;
	default:
		return BM_WS_CLOSE_PROTOCOL;
	}
}

static int fail(struct bm_ws_parser *p, struct bm_ws_event *ev, int err)
{
	p->err = (uint8_t)-err;
	ev->close_code = close_code_for(err);
	return err;
}

/* Byte 0: FIN, RSV, opcode, and the message sequencing rules. */
static int hdr0(struct bm_ws_parser *p, uint8_t b)
{
	unsigned op = b & 0x0f;

	if (b & 0x70)
		return BM_EPROTO;	/* RSV bit without an extension */
	switch (op) {
	case BM_WS_OP_CLOSE:
	case BM_WS_OP_PING:
	case BM_WS_OP_PONG:
		if (!(b & FR_FIN))
			return BM_EPROTO;	/* fragmented control frame */
		break;
	case BM_WS_OP_CONT:
		if (!p->msg)
			return BM_EPROTO;	/* continuation of nothing */
		break;
	case BM_WS_OP_TEXT:
	case BM_WS_OP_BINARY:
		if (p->msg)
			return BM_EPROTO;	/* new message inside a message */
		break;
	default:
		return BM_EPROTO;	/* reserved opcode */
	}
	p->frame = b & (FR_FIN | 0x0f);
	return 0;
}

static int hdr1(struct bm_ws_parser *p, uint8_t b)
{
	unsigned len7 = b & 0x7f;
	int masked = !!(b & 0x80);
	int client = !!(p->flags & F_CLIENT);

	if (masked == client)
		return BM_EPROTO;	/* mask required c->s, forbidden s->c */
	p->flags = (uint8_t)((p->flags & ~(F_MASKED | F_LEN64)) | (masked ? F_MASKED : 0));
	if ((p->frame & 0x08) && len7 > BM_WS_MAX_CONTROL)
		return BM_EPROTO;
	p->remaining = 0;
	if (len7 == 126) {
		p->need = 2;
		p->state = ST_LEN;
	} else if (len7 == 127) {
		p->need = 8;
		p->flags |= F_LEN64;
		p->state = ST_LEN;
	} else {
		p->remaining = len7;
	}
	return 0;
}

/* The length is known: enforce the message limit before any payload. */
static int length_known(struct bm_ws_parser *p)
{
	if (p->state == ST_LEN) {
		if (p->flags & F_LEN64) {
			if (p->remaining >> 63)
				return BM_EPROTO;
			if (p->remaining <= 0xffff)
				return BM_EPROTO;	/* not minimal */
		} else if (p->remaining < 126) {
			return BM_EPROTO;		/* not minimal */
		}
	}
	if (!(p->frame & 0x08)) {
		/* msg_len still holds the previous message until payload_start
		 * resets it for a new one. */
		uint32_t so_far = (p->frame & 0x0f) == BM_WS_OP_CONT ? p->msg_len : 0;

		if (p->remaining > (uint64_t)(p->max_msg - so_far))
			return BM_ETOOBIG;
	}
	if (p->flags & F_MASKED) {
		p->need = 4;
		p->state = ST_MASK;
	} else {
		p->mask = 0;
		p->state = ST_PAYLOAD;
	}
	return 0;
}

static void payload_start(struct bm_ws_parser *p)
{
	unsigned op = p->frame & 0x0f;

	p->state = ST_PAYLOAD;
	p->mask_off = 0;
	if (op == BM_WS_OP_TEXT || op == BM_WS_OP_BINARY) {
		p->msg = (uint8_t)op;
		p->msg_len = 0;
		p->utf8 = U8_ACCEPT;
		p->flags |= F_FIRST;
	}
}

static int control_event(struct bm_ws_parser *p, uint8_t *d, size_t n,
			 struct bm_ws_event *ev)
{
	unsigned op = p->frame & 0x0f;

	if (p->flags & F_MASKED)
		bm_ws_mask(d, n, (const uint8_t *)&p->mask, 0);
	ev->data = d;
	ev->len = n;
	ev->opcode = (uint8_t)op;
	ev->first = ev->fin = 1;
	ev->close_code = 0;
	p->state = ST_HDR0;
	if (op == BM_WS_OP_PING) {
		ev->type = BM_WS_EV_PING;
		return 0;
	}
	if (op == BM_WS_OP_PONG) {
		ev->type = BM_WS_EV_PONG;
		return 0;
	}
	ev->type = BM_WS_EV_CLOSE;
	if (n == 0) {
		ev->close_code = BM_WS_CLOSE_NO_STATUS;
	} else {
		unsigned code;

		if (n == 1)
			return BM_EPROTO;
		code = (unsigned)d[0] << 8 | d[1];
		if (!bm_ws_close_code_valid(code))
			return BM_EPROTO;
		if (!bm_ws_utf8_valid(d + 2, n - 2))
			return BM_EDECODE;
		ev->close_code = (uint16_t)code;
		ev->data = d + 2;
		ev->len = n - 2;
	}
	p->state = ST_CLOSED;
	return 0;
}

int bm_ws_parse(struct bm_ws_parser *p, uint8_t *in, size_t len,
		size_t *consumed, struct bm_ws_event *ev)
{
	size_t pos = 0;
	int rc;

	*consumed = 0;
	if (p->err)
		return fail(p, ev, -(int)p->err);
	if (p->state == ST_CLOSED)
		return BM_ECLOSED;

	for (;;) {
		switch (p->state) {
		case ST_HDR0:
			if (pos == len)
				goto again;
			if ((rc = hdr0(p, in[pos++])))
				goto out_fail;
			p->state = ST_HDR1;
			break;
		case ST_HDR1:
			if (pos == len)
				goto again;
			if ((rc = hdr1(p, in[pos++])))
				goto out_fail;
			if (p->state == ST_HDR1 && (rc = length_known(p)))
				goto out_fail;
			if (p->state == ST_PAYLOAD)
				payload_start(p);
			break;
		case ST_LEN:
			while (p->need && pos < len) {
				p->remaining = p->remaining << 8 | in[pos++];
				p->need--;
			}
			if (p->need)
				goto again;
			if ((rc = length_known(p)))
				goto out_fail;
			if (p->state == ST_PAYLOAD)
				payload_start(p);
			break;
		case ST_MASK:
			while (p->need && pos < len) {
				((uint8_t *)&p->mask)[4 - p->need] = in[pos++];
				p->need--;
			}
			if (p->need)
				goto again;
			payload_start(p);
			break;
		case ST_PAYLOAD:
			if (p->frame & 0x08) {
				/* Control frame: hand it out whole. */
				if (len - pos < p->remaining)
					goto again;
				rc = control_event(p, in + pos, (size_t)p->remaining, ev);
				pos += (size_t)p->remaining;
				if (rc)
					goto out_fail;
				*consumed = pos;
				return 0;
			} else {
				size_t n = len - pos;
				int last, fin = !!(p->frame & FR_FIN);
				uint8_t *d = in + pos;

				if (n > p->remaining)
					n = (size_t)p->remaining;
				if (n == 0 && p->remaining)
					goto again;
				if (p->flags & F_MASKED)
					bm_ws_mask(d, n, (const uint8_t *)&p->mask, p->mask_off);
				p->mask_off = (uint8_t)((p->mask_off + n) & 3);
				p->remaining -= n;
				p->msg_len += (uint32_t)n;
				pos += n;
				last = fin && p->remaining == 0;
				if (p->msg == BM_WS_OP_TEXT) {
					p->utf8 = utf8_run(p->utf8, d, n);
					if (p->utf8 == U8_REJECT ||
					    (last && p->utf8 != U8_ACCEPT)) {
						rc = BM_EDECODE;
						goto out_fail;
					}
				}
				if (p->remaining == 0)
					p->state = ST_HDR0;
				if (n == 0 && !last)
					break;	/* empty fragment: nothing to say */
				ev->data = d;
				ev->len = n;
				ev->opcode = p->msg;
				ev->close_code = 0;
				ev->fin = (uint8_t)last;
				ev->first = !!(p->flags & F_FIRST);
				ev->type = ev->first && last ? BM_WS_EV_MESSAGE
							     : BM_WS_EV_CHUNK;
				p->flags &= (uint8_t)~F_FIRST;
				if (last)
					p->msg = 0;
				*consumed = pos;
				return 0;
			}
		default:
			rc = BM_EPROTO;	/* unreachable: corrupt state */
			goto out_fail;
		}
	}
again:
	*consumed = pos;
	return BM_EAGAIN;
out_fail:
	*consumed = pos;
	return fail(p, ev, rc);
}

size_t bm_ws_frame_header(uint8_t hdr[BM_WS_MAX_HEADER], enum bm_ws_opcode op,
			  int fin, uint64_t len, const uint8_t *mask_key)
{
	size_t n = 2;
	uint8_t m = mask_key ? 0x80 : 0;

	hdr[0] = (uint8_t)((fin ? FR_FIN : 0) | (op & 0x0f));
	if (len <= 125) {
		hdr[1] = m | (uint8_t)len;
	} else if (len <= 0xffff) {
		hdr[1] = m | 126;
		hdr[2] = (uint8_t)(len >> 8);
		hdr[3] = (uint8_t)len;
		n = 4;
	} else {
		hdr[1] = m | 127;
		for (int i = 0; i < 8; i++)
			hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
		n = 10;
	}
	if (mask_key) {
		memcpy(hdr + n, mask_key, 4);
		n += 4;
	}
	return n;
}

int bm_ws_random_key(uint8_t key[4])
{
	/* Refilling 256 bytes at a time keeps the syscall off the per-frame
	 * path; the bytes still come from the kernel CSPRNG (RFC 6455 10.3). */
	static __thread uint8_t pool[256];
	static __thread size_t avail;

	if (avail < 4) {
		size_t got = 0;

		while (got < sizeof(pool)) {
			ssize_t r = getrandom(pool + got, sizeof(pool) - got, 0);
			if (r == -1) {
				if (errno == EINTR)
					continue;
				return BM_ESYS;
			}
			got += (size_t)r;
		}
		avail = sizeof(pool);
	}
	avail -= 4;
	memcpy(key, pool + avail, 4);
	memset(pool + avail, 0, 4);
	return 0;
}

int bm_ws_control_frame(uint8_t out[BM_WS_MAX_CONTROL_FRAME],
			enum bm_ws_role role, enum bm_ws_opcode op,
			const void *payload, size_t len)
{
	uint8_t key[4];
	size_t h;

	if (len > BM_WS_MAX_CONTROL || !(op & 0x08))
		return BM_EINVAL;
	if (role == BM_WS_CLIENT) {
		if (bm_ws_random_key(key))
			return BM_ESYS;
		h = bm_ws_frame_header(out, op, 1, len, key);
	} else {
		h = bm_ws_frame_header(out, op, 1, len, NULL);
	}
	if (len)
		memcpy(out + h, payload, len);
	if (role == BM_WS_CLIENT)
		bm_ws_mask(out + h, len, key, 0);
	return (int)(h + len);
}

int bm_ws_close_frame(uint8_t out[BM_WS_MAX_CONTROL_FRAME],
		      enum bm_ws_role role, uint16_t code, const char *reason)
{
	uint8_t pl[BM_WS_MAX_CONTROL];
	size_t n = 0;

	if (code) {
		size_t rl = reason ? strlen(reason) : 0;

		if (rl > BM_WS_MAX_CONTROL - 2) {
			rl = BM_WS_MAX_CONTROL - 2;
			/* Do not cut a UTF-8 sequence in half. */
			while (rl > 0 && ((uint8_t)reason[rl] & 0xc0) == 0x80)
				rl--;
		}
		pl[0] = (uint8_t)(code >> 8);
		pl[1] = (uint8_t)code;
		if (rl)
			memcpy(pl + 2, reason, rl);
		n = 2 + rl;
	}
	return bm_ws_control_frame(out, role, BM_WS_OP_CLOSE, pl, n);
}
