#include "bm_env.h"
#include "bm_err.h"

#include <inttypes.h>
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

int bm_env_decode(const uint8_t *p, size_t n, bimip_MessageScheme *out,
		  struct bm_env_err *err)
{
	pb_istream_t in;
	const char *why;

	/* No memset of the ~17 KiB envelope: pb_decode sets every field to its
	 * default and clears the submessage of the oneof member it decodes. */
	out->route = 0;
	out->which_payload = 0;
	if (n > BM_ENV_MAX_BYTES)
		return fail(err, BM_ETOOBIG, 413, 0,
			    "message of %zu bytes exceeds the limit of %d bytes",
			    n, BM_ENV_MAX_BYTES);
	in = pb_istream_from_buffer(p, n);
	if (!pb_decode(&in, bimip_MessageScheme_fields, out)) {
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
	if (out->which_payload == 0) {
		if (out->route && !bm_env_route_name(out->route))
			return fail(err, BM_EROUTE, 400, out->route,
				    "unknown route %" PRId64, out->route);
		return fail(err, BM_ENOPAYLOAD, 400, out->route,
			    "MessageScheme has no payload (route %" PRId64 ")",
			    out->route);
	}
	if (out->route != (int64_t)out->which_payload)
		return fail(err, BM_EROUTE, 400, out->route,
			    "route %" PRId64 " does not match the payload field %u (%s)",
			    out->route, (unsigned)out->which_payload,
			    bm_env_route_name(out->which_payload));
	return 0;
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

/* A proto3 string field (omitted when empty), cut to a field of cap bytes. */
static uint8_t *put_string(uint8_t *p, unsigned field, const char *s, size_t cap)
{
	size_t n = strnlen(s, cap - 1);

	if (!n)
		return p;
	*p++ = (uint8_t)(field << 3 | 2);
	p = put_varint(p, n);
	memcpy(p, s, n);
	return p + n;
}

/* A proto3 varint field (omitted when 0); int32/int64 alike, negatives as
 * ten bytes. */
static uint8_t *put_int(uint8_t *p, unsigned field, int64_t v)
{
	if (!v)
		return p;
	*p++ = (uint8_t)(field << 3);
	return put_varint(p, (uint64_t)v);
}

size_t bm_env_version_update(uint8_t *out, size_t cap, const char *eid,
			     const char *device, const char *message_id,
			     const char *message_id_local, const char *chat_id,
			     int64_t version, int64_t timestamp)
{
	uint8_t to[bimip_Identity_size], vu[bimip_VersionUpdate_size], *t = to, *v = vu, *o;
	const bimip_VersionUpdate *f = NULL;

	/* Field order as nanopb writes it: by field number. */
	t = put_string(t, 1, eid, sizeof(f->to.eid));
	t = put_string(t, 2, device, sizeof(f->to.connection_resource_id));
	*v++ = 1 << 3 | 2;                       /* to: set even when empty */
	v = put_varint(v, (uint64_t)(t - to));
	memcpy(v, to, (size_t)(t - to));
	v += t - to;
	v = put_string(v, 2, message_id, sizeof(f->message_id));
	v = put_string(v, 3, message_id_local, sizeof(f->message_id_local));
	v = put_int(v, 4, 1);                    /* type: REQUEST */
	v = put_int(v, 5, timestamp);
	v = put_int(v, 6, 1);                    /* status: sent */
	v = put_int(v, 7, version);
	v = put_string(v, 8, chat_id, sizeof(f->chat_id));
	if (cap < (size_t)(v - vu) + 8)
		return 0;
	o = put_int(out, 1, bimip_MessageScheme_version_update_tag);    /* route */
	o = put_varint(o, bimip_MessageScheme_version_update_tag << 3 | 2);
	o = put_varint(o, (uint64_t)(v - vu));
	memcpy(o, vu, (size_t)(v - vu));
	return (size_t)(o - out) + (size_t)(v - vu);
}

void bm_env_strset(char *dst, size_t cap, const char *src)
{
	size_t n = src ? strlen(src) : 0;

	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src ? src : "", n);
	dst[n] = 0;
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
