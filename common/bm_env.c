#include "bm_env.h"
#include "bm_err.h"
#include "bm_ipc.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

static const char *const route_names[BM_ENV_ROUTE_MAX + 1] = {
	[2] = "awareness_notification",
	[3] = "awareness_response",
	[4] = "awareness_request",
	[5] = "error_message",
	[6] = "pingpong_message",
	[7] = "token_revoke_request",
	[8] = "token_revoke_response",
	[9] = "subscriber_add_request",
	[10] = "subscriber_add_response",
	[11] = "block_subscriber",
	[12] = "logout",
	[13] = "chat_message",
	[14] = "text_payload_request",
	[15] = "media_payload_request",
	[16] = "acknowledgment_request",
	[17] = "acknowledgment_response",
	[18] = "version_update",
	[19] = "signal",
	[20] = "media",
	[21] = "data_payload",
	[22] = "message",
	[23] = "peer",
	[24] = "message_peer_ack_signal",
	[25] = "awareness",
	[26] = "sync_request",
	[27] = "sync_response",
	[28] = "offset_commit",
	[29] = "subscriber_remove_request",
	[30] = "subscriber_remove_response",
};

const char *bm_env_route_name(int64_t route)
{
	if (route < 0 || route > BM_ENV_ROUTE_MAX)
		return NULL;
	return route_names[route];
}

static int fail(struct bm_env_err *err, int rc, int code, int64_t route,
		const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int fail(struct bm_env_err *err, int rc, int code, int64_t route,
		const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = code;
		err->route = route;
		va_start(ap, fmt);
		vsnprintf(err->text, sizeof(err->text), fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int too_big(size_t n, struct bm_env_err *err)
{
	return fail(err, BM_ETOOBIG, 413, 0, "message of %zu bytes exceeds the limit of %d bytes",
		    n, BM_ENV_MAX_BYTES);
}

/* The envelope's route against the payload field that is set (0: none):
 * the same answers from bm_env_decode and bm_env_peek. */
static int check_payload(int64_t route, unsigned which, struct bm_env_err *err)
{
	if (which == 0) {
		if (route && !bm_env_route_name(route))
			return fail(err, BM_EROUTE, 400, route, "unknown route %" PRId64, route);
		return fail(err, BM_ENOPAYLOAD, 400, route,
			    "MessageScheme has no payload (route %" PRId64 ")", route);
	}
	if (route != (int64_t)which)
		return fail(err, BM_EROUTE, 400, route,
			    "route %" PRId64 " does not match the payload field %u (%s)",
			    route, which, bm_env_route_name(which));
	return 0;
}

/*
 * The chat fast path.  A TextPayloadRequest is most of what a server
 * decodes, and nanopb spends ~0.5 us on one: it clears the ~9 KiB member
 * twice (memset, then the defaults walk) and looks every field up through
 * its descriptors.  text_fast() decodes the common shape directly: route,
 * text_payload_request and offset at the top, the six fields of the request
 * and the three of Identity inside, each with its own wire type and within
 * its bound, varints of at most 9 bytes (4 for keys and lengths).  Anything
 * else -- another payload, an unknown field, a negative number, a string
 * over its bound, a truncated field -- makes it give up (returns -1) and
 * nanopb decodes the whole envelope, errors included.  What it accepts,
 * it decodes as nanopb does: the last of a repeated scalar or string wins,
 * a repeated `from` or payload merges into the first, each `to` starts
 * zeroed.  fuzz_envelope checks that against nanopb on every input
 * (bm_env_decode_nanopb).
 */
struct fast_in {
	const uint8_t *p, *end;
};

static int fast_varint(struct fast_in *in, unsigned max_bytes, uint64_t *v)
{
	uint64_t r = 0;

	for (unsigned k = 0; k < max_bytes && in->p < in->end; k++) {
		uint8_t b = *in->p++;

		r |= (uint64_t)(b & 0x7f) << (7 * k);
		if (!(b & 0x80)) {
			*v = r;
			return 0;
		}
	}
	return -1;
}

/* The next field's number and wire type; a length-delimited field's
 * contents in *sub (checked to lie within in). */
static int fast_field(struct fast_in *in, unsigned *field, unsigned *wt, struct fast_in *sub)
{
	uint64_t key, len;

	if (fast_varint(in, 4, &key) || (key >> 3) == 0)
		return -1;
	*field = (unsigned)(key >> 3);
	*wt = (unsigned)(key & 7);
	if (*wt == 2) {
		if (fast_varint(in, 4, &len) || len > (uint64_t)(in->end - in->p))
			return -1;
		sub->p = in->p;
		sub->end = in->p + len;
		in->p += len;
	}
	return 0;
}

static int fast_str(const struct fast_in *v, char *dst, size_t cap)
{
	size_t n = (size_t)(v->end - v->p);

	if (n + 1 > cap)
		return -1;
	memcpy(dst, v->p, n);
	dst[n] = 0;
	return 0;
}

static int fast_identity(struct fast_in in, bimip_Identity *id)
{
	while (in.p < in.end) {
		struct fast_in v;
		unsigned f, wt;
		int rc;

		if (fast_field(&in, &f, &wt, &v) || wt != 2)
			return -1;
		if (f == 1)
			rc = fast_str(&v, id->eid, sizeof(id->eid));
		else if (f == 2)
			rc = fast_str(&v, id->connection_resource_id, sizeof(id->connection_resource_id));
		else if (f == 3)
			rc = fast_str(&v, id->node, sizeof(id->node));
		else
			rc = -1;
		if (rc)
			return -1;
	}
	return 0;
}

/* Every field of TextPayloadRequest, empty (a static assertion below
 * catches a field added to it). */
static void text_clear(bimip_TextPayloadRequest *t)
{
	t->has_from = false;
	t->from.eid[0] = t->from.connection_resource_id[0] = t->from.node[0] = 0;
	t->to_count = 0;
	t->content[0] = 0;
	t->message_id_local[0] = 0;
	t->text_size_count[0] = 0;
	t->created_at = 0;
}
_Static_assert(offsetof(bimip_TextPayloadRequest, created_at) + sizeof(int64_t) ==
	       sizeof(bimip_TextPayloadRequest),
	       "TextPayloadRequest grew: clear the new field in text_clear and decode it in fast_text");
_Static_assert(sizeof(bimip_Identity) == 129 + 65 + 65,
	       "Identity changed: see fast_identity");

static int fast_text(struct fast_in in, bimip_TextPayloadRequest *t)
{
	while (in.p < in.end) {
		struct fast_in v;
		unsigned f, wt;
		uint64_t x;
		int rc;

		if (fast_field(&in, &f, &wt, &v))
			return -1;
		if (f == 6) {
			if (wt != 0 || fast_varint(&in, 9, &x))
				return -1;
			t->created_at = (int64_t)x;
			continue;
		}
		if (wt != 2)
			return -1;
		switch (f) {
		case 1:
			t->has_from = true;
			rc = fast_identity(v, &t->from);
			break;
		case 2:
			if (t->to_count >= sizeof(t->to) / sizeof(t->to[0]))
				return -1;
			memset(&t->to[t->to_count], 0, sizeof(t->to[0]));
			rc = fast_identity(v, &t->to[t->to_count++]);
			break;
		case 3:
			rc = fast_str(&v, t->content, sizeof(t->content));
			break;
		case 4:
			rc = fast_str(&v, t->message_id_local, sizeof(t->message_id_local));
			break;
		case 5:
			rc = fast_str(&v, t->text_size_count, sizeof(t->text_size_count));
			break;
		default:
			rc = -1;
		}
		if (rc)
			return -1;
	}
	return 0;
}

/* 0: decoded (route, offset and the request set); -1: not the shape this
 * path takes, decode with nanopb. */
static int env_fast(const uint8_t *p, size_t n, bimip_MessageScheme *out)
{
	struct fast_in in = { p, p + n };

	while (in.p < in.end) {
		struct fast_in v;
		unsigned f, wt;
		uint64_t x;

		if (fast_field(&in, &f, &wt, &v))
			return -1;
		if (f == 1 || f == 99) {
			if (wt != 0 || fast_varint(&in, 9, &x))
				return -1;
			if (f == 1)
				out->route = (int64_t)x;
			else
				out->offset = (int64_t)x;
		} else if (f == bimip_MessageScheme_text_payload_request_tag && wt == 2) {
			if (out->which_payload != f) {
				out->which_payload = f;
				text_clear(&out->payload.text_payload_request);
			}
			if (fast_text(v, &out->payload.text_payload_request))
				return -1;
		} else {
			return -1;
		}
	}
	return 0;
}

static int decode_nanopb(const uint8_t *p, size_t n, bimip_MessageScheme *out,
			 struct bm_env_err *err)
{
	pb_istream_t in;
	const char *why;

	/* No memset of the ~17 KiB envelope, and no walk over its ~30 field
	 * descriptors to set defaults (PB_DECODE_NOINIT: a third of a decode):
	 * the fields outside the oneof are reset here -- route and offset, the
	 * only ones; a field added to MessageScheme must be added here --
	 * and nanopb clears the oneof member it decodes (which_payload 0 never
	 * names the member being decoded). */
	out->route = 0;
	out->offset = 0;
	out->which_payload = 0;
	in = pb_istream_from_buffer(p, n);
	if (!pb_decode_ex(&in, bimip_MessageScheme_fields, out, PB_DECODE_NOINIT)) {
		why = PB_GET_ERROR(&in);
		/* nanopb's words for a value beyond its max_size/max_count. */
		if (!strcmp(why, "string overflow") ||
		    !strcmp(why, "bytes overflow") ||
		    !strcmp(why, "array overflow"))
			return fail(err, BM_ETOOBIG, 413, out->route,
				    "a field exceeds its size bound (%s)", why);
		return fail(err, BM_EDECODE, 400, out->route,
			    "cannot decode MessageScheme: %s", why);
	}
	return check_payload(out->route, out->which_payload, err);
}

int bm_env_decode(const uint8_t *p, size_t n, bimip_MessageScheme *out,
		  struct bm_env_err *err)
{
	if (n > BM_ENV_MAX_BYTES)
		return too_big(n, err);
	/* decode_nanopb's reset, for the fast path (which sets which_payload
	 * only when it meets the request). */
	out->route = 0;
	out->offset = 0;
	out->which_payload = 0;
	if (env_fast(p, n, out) == 0)
		return check_payload(out->route, out->which_payload, err);
	return decode_nanopb(p, n, out, err);
}

int bm_env_decode_nanopb(const uint8_t *p, size_t n, bimip_MessageScheme *out,
			 struct bm_env_err *err)
{
	if (n > BM_ENV_MAX_BYTES)
		return too_big(n, err);
	return decode_nanopb(p, n, out, err);
}

/* A protobuf varint at p[*i..n), at most 10 bytes as nanopb reads it;
 * *i moves past the bytes read, as in fast_varint. */
static int peek_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
	struct fast_in in = { p + *i, p + n };
	int rc = fast_varint(&in, 10, v);

	*i = (size_t)(in.p - p);
	return rc;
}

/* An unknown field's varint: nanopb's pb_skip_varint reads up to the first
 * byte without the high bit, however many there are, so the skip does too. */
static int skip_varint(const uint8_t *p, size_t n, size_t *i)
{
	while (*i < n)
		if (!(p[(*i)++] & 0x80))
			return 0;
	return -1;
}

int bm_env_peek(const uint8_t *p, size_t n, int64_t *route_out, struct bm_env_err *err)
{
	const char *why = NULL;
	int64_t route = 0;
	unsigned which = 0;
	size_t i = 0;
	int rc;

	if (n > BM_ENV_MAX_BYTES)
		return too_big(n, err);
	while (i < n && !why) {
		uint64_t key, v;
		unsigned wt, field;

		if (peek_varint(p, n, &i, &key)) {
			why = "bad field key";
			break;
		}
		/* nanopb keeps a key's low 32 bits (pb_decode_varint32). */
		key = (uint32_t)key;
		if (key == 0)
			break;          /* nanopb: a zero tag ends the message */
		wt = (unsigned)(key & 7);
		field = (unsigned)(key >> 3);
		if (field == 0) {
			why = "invalid field number";
			break;
		}
		switch (wt) {
		case 0:
			if (field > BM_ENV_ROUTE_MAX) {
				if (skip_varint(p, n, &i))
					why = "bad varint";
			} else if (field != 1)
				why = "wrong wire type";
			else if (peek_varint(p, n, &i, &v))
				why = "bad varint";
			else
				route = (int64_t)v;
			break;
		case 2:
			if (peek_varint(p, n, &i, &v) || v > n - i)
				why = "length beyond the message";
			else if (field == 1)
				why = "wrong wire type";
			else {
				if (field <= BM_ENV_ROUTE_MAX)
					which = field;
				i += (size_t)v;
			}
			break;
		case 1:
		case 5:
			if (n - i < (wt == 1 ? 8u : 4u))
				why = "truncated field";
			else if (field <= BM_ENV_ROUTE_MAX)
				why = "wrong wire type";
			else
				i += wt == 1 ? 8 : 4;
			break;
		default:
			why = "invalid wire type";
			break;
		}
	}
	if (why)
		return fail(err, BM_EDECODE, 400, route, "cannot decode MessageScheme: %s", why);
	rc = check_payload(route, which, err);
	if (!rc)
		*route_out = route;
	return rc;
}

static int check_route(bimip_MessageScheme *m)
{
	if (m->which_payload == 0)
		return BM_ENOPAYLOAD;
	if (m->route == 0)
		m->route = m->which_payload;
	return m->route == (int64_t)m->which_payload ? 0 : BM_EROUTE;
}

int bm_env_encode(bimip_MessageScheme *m, uint8_t *out, size_t cap, size_t *len)
{
	pb_ostream_t os;
	int rc = check_route(m);

	if (rc)
		return rc;
	os = pb_ostream_from_buffer(out, cap);
	if (!pb_encode(&os, bimip_MessageScheme_fields, m))
		return BM_ETOOBIG;
	*len = os.bytes_written;
	return 0;
}

int bm_env_encode_buf(bimip_MessageScheme *m, struct bm_buf *out)
{
	size_t need, len;
	int rc = check_route(m);

	if (rc)
		return rc;
	if (!pb_get_encoded_size(&need, bimip_MessageScheme_fields, m))
		return BM_EINVAL;
	rc = bm_buf_grow(out, need);
	if (rc)
		return rc;
	rc = bm_env_encode(m, out->data + out->len, need, &len);
	if (rc)
		return rc;
	out->len += len;
	out->data[out->len] = 0;
	return 0;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
	while (v > 0x7f) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

static uint8_t *put_tag(uint8_t *p, unsigned field, unsigned wire)
{
	return put_varint(p, (uint64_t)(field << 3 | wire));
}

/* A length-delimited field, written even when empty. */
static uint8_t *put_bytes(uint8_t *p, unsigned field, const void *data, size_t n)
{
	p = put_tag(p, field, 2);
	p = put_varint(p, n);
	memcpy(p, data, n);
	return p + n;
}

/* A proto3 string field (omitted when empty), cut to a field of cap bytes. */
static uint8_t *put_str(uint8_t *p, unsigned field, const char *s, size_t cap)
{
	size_t n = strnlen(s, cap - 1);

	return n ? put_bytes(p, field, s, n) : p;
}

/* A proto3 varint field (omitted when 0); int32/int64 alike, negatives as
 * ten bytes. */
static uint8_t *put_i64(uint8_t *p, unsigned field, int64_t v)
{
	if (!v)
		return p;
	return put_varint(put_tag(p, field, 0), (uint64_t)v);
}

/* An Identity submessage field, written even when empty (has_, or a
 * repeated entry). */
static uint8_t *put_identity(uint8_t *p, unsigned field, const char *eid, const char *device,
			     const char *node)
{
	uint8_t b[bimip_Identity_size], *e = b;
	const bimip_Identity *f = NULL;

	e = put_str(e, 1, eid, sizeof(f->eid));
	e = put_str(e, 2, device, sizeof(f->connection_resource_id));
	e = put_str(e, 3, node, sizeof(f->node));
	return put_bytes(p, field, b, (size_t)(e - b));
}

size_t bm_env_chat_message(uint8_t *out, size_t cap, const bimip_ChatMessage *c)
{
	uint8_t *p = out;

	if (cap < bimip_ChatMessage_size)
		return 0;
	/* By field number, defaults left out, as nanopb writes it. */
	p = put_str(p, 1, c->message_id, sizeof(c->message_id));
	p = put_str(p, 2, c->message_id_local, sizeof(c->message_id_local));
	p = put_i64(p, 3, c->version);
	p = put_str(p, 4, c->chat_id, sizeof(c->chat_id));
	if (c->has_from)
		p = put_identity(p, 5, c->from.eid, c->from.connection_resource_id, c->from.node);
	for (pb_size_t i = 0; i < c->to_count && i < sizeof(c->to) / sizeof(c->to[0]); i++)
		p = put_identity(p, 6, c->to[i].eid, c->to[i].connection_resource_id,
				 c->to[i].node);
	p = put_str(p, 7, c->author, sizeof(c->author));
	/* A oneof member is written when chosen, even empty. */
	if (c->which_payload == bimip_ChatMessage_text_tag ||
	    c->which_payload == bimip_ChatMessage_media_url_tag) {
		const char *v = c->which_payload == bimip_ChatMessage_text_tag
					? c->payload.text : c->payload.media_url;
		size_t n = strnlen(v, c->which_payload == bimip_ChatMessage_text_tag
					      ? sizeof(c->payload.text)
					      : sizeof(c->payload.media_url));

		p = put_bytes(p, c->which_payload, v, n);
	}
	p = put_i64(p, 10, c->acknowledgment);
	p = put_i64(p, 11, c->acknowledgment_timestamp);
	p = put_i64(p, 12, c->created_at);
	p = put_i64(p, 13, c->server_received_at);
	p = put_i64(p, 14, c->media_type);
	p = put_str(p, 15, c->caption, sizeof(c->caption));
	p = put_str(p, 16, c->thumbnail_url, sizeof(c->thumbnail_url));
	p = put_i64(p, 17, c->media_size_bytes);
	return (size_t)(p - out);
}

size_t bm_env_version_update(uint8_t *out, size_t cap, const char *eid,
			     const char *device, const char *message_id,
			     const char *message_id_local, const char *chat_id,
			     int64_t version, int64_t timestamp)
{
	uint8_t vu[bimip_VersionUpdate_size], *v = vu, *o;
	const bimip_VersionUpdate *f = NULL;

	/* Field order as nanopb writes it: by field number. */
	v = put_identity(v, 1, eid, device, "");     /* to: set even when empty */
	v = put_str(v, 2, message_id, sizeof(f->message_id));
	v = put_str(v, 3, message_id_local, sizeof(f->message_id_local));
	v = put_i64(v, 4, 1);                    /* type: REQUEST */
	v = put_i64(v, 5, timestamp);
	v = put_i64(v, 6, 1);                    /* status: sent */
	v = put_i64(v, 7, version);
	v = put_str(v, 8, chat_id, sizeof(f->chat_id));
	if (cap < (size_t)(v - vu) + 8)
		return 0;
	o = put_i64(out, 1, bimip_MessageScheme_version_update_tag);    /* route */
	o = put_bytes(o, bimip_MessageScheme_version_update_tag, vu, (size_t)(v - vu));
	return (size_t)(o - out);
}

void bm_env_strset(char *dst, size_t cap, const char *src)
{
	bm_ipc_set_str(dst, cap, src ? src : "");
}

void bm_env_make_error(bimip_MessageScheme *m, int code, int64_t route,
		       const char *message, const char *details)
{
	bimip_ErrorMessage *e;

	memset(m, 0, sizeof(*m));
	m->route = bimip_MessageScheme_error_message_tag;
	m->which_payload = bimip_MessageScheme_error_message_tag;
	e = &m->payload.error_message;
	e->code = code;
	if (route)
		snprintf(e->route, sizeof(e->route), "%" PRId64, route);
	BM_SET_STR(e->message, message);
	BM_SET_STR(e->details, details);
}
