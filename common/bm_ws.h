/*
 * bm_ws.h - RFC 6455 WebSocket framing: an incremental, zero-allocation frame
 * parser and a header-only encoder, for both roles.
 *
 * Parsing.  A struct bm_ws_parser is 32 bytes and is the only per-connection
 * state; it owns no memory.  The caller accumulates socket bytes in its own
 * buffer (an evbuffer, a struct bm_buf) and calls bm_ws_parse() on the
 * contiguous, WRITABLE bytes it has:
 *
 *	size_t used;
 *	int rc = bm_ws_parse(&p, data, len, &used, &ev);
 *	drain `used` bytes (always, whatever rc is), then:
 *	rc == 0          one event in ev; call again on the rest
 *	rc == BM_EAGAIN  nothing more to do until more bytes arrive; bytes not
 *	                 consumed must be presented again, followed by the new
 *	                 ones (at most 125 bytes of a control frame are left)
 *	rc < 0 other     protocol violation: send a close frame with
 *	                 ev.close_code, then close.  BM_ETOOBIG (close 1009)
 *	                 means the message exceeds max_msg: the edge sends an
 *	                 ErrorMessage 413 before the close frame.
 *	                 BM_EDECODE is invalid UTF-8 (1007), BM_EPROTO any other
 *	                 violation (1002).  Errors are sticky.
 *
 * Payload bytes are unmasked in place and handed out as pointers into the
 * caller's buffer (valid until it is drained), so a whole frame is never
 * copied by the parser:
 *
 *	BM_WS_EV_MESSAGE  a complete unfragmented message whose bytes were all
 *	                  present: ev.data/ev.len is the whole message.
 *	BM_WS_EV_CHUNK    part of a message (fragmented, or a frame whose payload
 *	                  has not fully arrived).  Append ev.data/ev.len to the
 *	                  message buffer; ev.first marks the first chunk of a
 *	                  message, ev.fin the last one.  The parser has already
 *	                  checked that the total stays <= max_msg, so a buffer of
 *	                  max_msg bytes always suffices.
 *	BM_WS_EV_PING/PONG  complete control frame; ev.data/ev.len its payload
 *	                  (<= 125 bytes).  A server answers a ping with a pong.
 *	BM_WS_EV_CLOSE    ev.close_code (1005 when the frame had no code) and the
 *	                  UTF-8 reason in ev.data/ev.len.  Echo the close and
 *	                  shut down; later calls return BM_ECLOSED.
 *
 * ev.opcode is BM_WS_OP_TEXT or BM_WS_OP_BINARY for data events.  Text
 * messages are validated as UTF-8 incrementally, across chunks.  Control
 * frames may arrive between the fragments of a message, as RFC 6455 5.4
 * allows.  An empty unfragmented message is a MESSAGE with len 0; empty
 * fragments produce no event unless they end a message (CHUNK, len 0, fin).
 *
 * Encoding.  bm_ws_frame_header() writes a header into a small array so the
 * payload can follow with writev()/evbuffer_add_reference() without a copy.
 * Server frames are unmasked; client frames must be masked: the client masks
 * its payload (a copy it owns) with bm_ws_mask() and the key it passed in.
 */
#ifndef BM_WS_H
#define BM_WS_H

#include <stddef.h>
#include <stdint.h>

enum bm_ws_role {
	BM_WS_SERVER = 0,	/* expects masked frames from a client */
	BM_WS_CLIENT = 1,	/* expects unmasked frames from a server */
};

enum bm_ws_opcode {
	BM_WS_OP_CONT = 0x0,
	BM_WS_OP_TEXT = 0x1,
	BM_WS_OP_BINARY = 0x2,
	BM_WS_OP_CLOSE = 0x8,
	BM_WS_OP_PING = 0x9,
	BM_WS_OP_PONG = 0xA,
};

enum bm_ws_ev_type {
	BM_WS_EV_MESSAGE = 1,
	BM_WS_EV_CHUNK,
	BM_WS_EV_PING,
	BM_WS_EV_PONG,
	BM_WS_EV_CLOSE,
};

/* Close codes (RFC 6455 7.4.1) the parser reports. */
#define BM_WS_CLOSE_NORMAL	1000
#define BM_WS_CLOSE_GOING_AWAY	1001
#define BM_WS_CLOSE_PROTOCOL	1002
#define BM_WS_CLOSE_NO_STATUS	1005	/* never sent: "close had no code" */
#define BM_WS_CLOSE_BAD_DATA	1007
#define BM_WS_CLOSE_POLICY	1008
#define BM_WS_CLOSE_TOO_BIG	1009
#define BM_WS_CLOSE_INTERNAL	1011

#define BM_WS_MAX_HEADER	14	/* 2 + 8 length + 4 mask */
#define BM_WS_MAX_CONTROL	125	/* control frame payload limit */
/* A complete control frame (header + payload), e.g. for a close. */
#define BM_WS_MAX_CONTROL_FRAME	(6 + BM_WS_MAX_CONTROL)

/* Opaque to callers; 32 bytes.  Initialise with bm_ws_parser_init(). */
struct bm_ws_parser {
	uint64_t remaining;	/* header: value being read; payload: bytes left */
	uint32_t mask;		/* masking key, in wire byte order */
	uint32_t msg_len;	/* bytes of the current message so far */
	uint32_t max_msg;	/* limit on a reassembled message */
	uint8_t state;		/* where in the frame we are */
	uint8_t need;		/* header bytes still to read in this state */
	uint8_t frame;		/* FIN bit | opcode of the current frame */
	uint8_t msg;		/* opcode of the open message, 0 = none */
	uint8_t flags;		/* role, masked, first-chunk-pending */
	uint8_t utf8;		/* UTF-8 validator state for text messages */
	uint8_t mask_off;	/* masking key position of the next payload byte */
	uint8_t err;		/* sticky error, as -BM_E* */
};

struct bm_ws_event {
	enum bm_ws_ev_type type;
	uint8_t opcode;		/* data events: BM_WS_OP_TEXT or _BINARY */
	uint8_t first;		/* CHUNK: first chunk of a message */
	uint8_t fin;		/* CHUNK: last chunk of a message */
	uint16_t close_code;	/* CLOSE: received code; error: code to send */
	uint8_t *data;		/* points into the caller's buffer */
	size_t len;
};

/* max_msg: largest message accepted (data, after reassembly), >= 1. */
void bm_ws_parser_init(struct bm_ws_parser *p, enum bm_ws_role role,
		       uint32_t max_msg);

/*
 * Parse from in[0..len).  Bytes are unmasked in place (so `in` is writable).
 * Always sets *consumed; on 0 fills *ev; on error sets ev->close_code.
 * Returns 0, BM_EAGAIN, BM_ECLOSED (after a close frame), or an error:
 * BM_EPROTO (1002), BM_EDECODE (1007), BM_ETOOBIG (1009).
 */
int bm_ws_parse(struct bm_ws_parser *p, uint8_t *in, size_t len,
		size_t *consumed, struct bm_ws_event *ev);

/* True while a fragmented message is open (a CHUNK without fin was seen). */
int bm_ws_parser_in_message(const struct bm_ws_parser *p);

/*
 * Write a frame header into hdr and return its length (2..14).
 * mask_key NULL: unmasked (server).  Otherwise the 4-byte key is written and
 * the caller sends the payload masked with bm_ws_mask(payload, len, key, 0).
 */
size_t bm_ws_frame_header(uint8_t hdr[BM_WS_MAX_HEADER], enum bm_ws_opcode op,
			  int fin, uint64_t len, const uint8_t *mask_key);

/* XOR data with key, starting at key position offset % 4 (word at a time). */
void bm_ws_mask(uint8_t *data, size_t len, const uint8_t key[4], size_t offset);

/* dst[i] = src[i] ^ key[(offset + i) % 4]: masks while copying into an
 * output buffer (e.g. from evbuffer_reserve_space), one pass.  dst and src
 * must not overlap unless equal. */
void bm_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t len,
		     const uint8_t key[4], size_t offset);

/* Fill key with 4 unpredictable bytes (getrandom, pooled per thread).
 * Returns 0 or BM_ESYS. */
int bm_ws_random_key(uint8_t key[4]);

/*
 * Build a complete control frame (ping, pong or close) in out.  len <= 125,
 * else BM_EINVAL.  Masked with a random key when role is BM_WS_CLIENT.
 * Returns the frame length (> 0) or a negative BM_E* code.
 */
int bm_ws_control_frame(uint8_t out[BM_WS_MAX_CONTROL_FRAME],
			enum bm_ws_role role, enum bm_ws_opcode op,
			const void *payload, size_t len);

/*
 * Build a close frame with code (0 = no code, no reason) and an optional
 * reason, truncated to fit 123 bytes without splitting a UTF-8 sequence.
 * Returns the frame length or a negative BM_E* code.
 */
int bm_ws_close_frame(uint8_t out[BM_WS_MAX_CONTROL_FRAME],
		      enum bm_ws_role role, uint16_t code, const char *reason);

/* 1 if code may appear in a close frame on the wire (RFC 6455 7.4). */
int bm_ws_close_code_valid(unsigned code);

/* 1 if s[0..len) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int bm_ws_utf8_valid(const uint8_t *s, size_t len);

#endif
