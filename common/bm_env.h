/*
 * bm_env.h - the MessageScheme envelope codec (seed 001 section 5.11).
 *
 * One serialized MessageScheme travels in each WebSocket binary frame.  A
 * valid envelope has exactly the payload field set whose number equals
 * `route` (DESIGN.md section 2); bm_env_decode checks that and every size
 * bound of proto/bimip.options, and says precisely what is wrong otherwise,
 * as an HTTP-like code and a text fit for ErrorMessage.message.
 *
 * bimip_MessageScheme is large (its biggest member holds an 8 KiB text), so
 * callers keep one decode target per loop rather than one per session.
 */
#ifndef BM_ENV_H
#define BM_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "bimip.pb.h"
#include "bm_buf.h"

/* The largest valid encoded envelope, from the bounds in bimip.options. */
#define BM_ENV_MAX_BYTES bimip_MessageScheme_size
/* Highest payload field number in the envelope. */
#define BM_ENV_ROUTE_MAX 30

struct bm_env_err {
	int code;            /* HTTP-like: 400 or 413 */
	int64_t route;       /* route field as received (0 when unknown) */
	char text[200];
};

/* Decode n bytes into *out (every field set, strings up to their NUL; of
 * the payload union only the member decoded is written).  A
 * text_payload_request of the common shape takes a direct path (bm_env.c,
 * "The chat fast path"), everything else nanopb.  Returns 0, or
 *   BM_ETOOBIG     n exceeds BM_ENV_MAX_BYTES, or a string/array field exceeds
 *                  its bound (code 413)
 *   BM_EDECODE     not a valid protobuf encoding of MessageScheme (400)
 *   BM_ENOPAYLOAD  no payload field set (400)
 *   BM_EROUTE      route is not a known route, or differs from the payload
 *                  field that is set (400)
 * with *err filled (err may be NULL). */
int bm_env_decode(const uint8_t *p, size_t n, bimip_MessageScheme *out,
		  struct bm_env_err *err);
/* The same decode through nanopb alone, without bm_env_decode's fast path
 * for text_payload_request: for the tests that hold the two to the same
 * answers. */
int bm_env_decode_nanopb(const uint8_t *p, size_t n, bimip_MessageScheme *out,
			 struct bm_env_err *err);

/* The envelope's outer layer only, without decoding the payload: the size
 * bound, a well-formed protobuf field walk, a payload field set, and route
 * equal to it (the first four errors of bm_env_decode, same codes).  What
 * bm_env_decode accepts, this accepts with the same route; it may accept
 * what bm_env_decode refuses inside the payload.  The edge checks this and
 * leaves the payload to the server, which decodes it anyway.  *route gets
 * the route. */
int bm_env_peek(const uint8_t *p, size_t n, int64_t *route, struct bm_env_err *err);

/* Encode *m into out[0..cap); *len gets the size.  Sets m->route from the
 * payload field when m->route is 0.  Returns 0, BM_EROUTE if route and
 * payload disagree, BM_ENOPAYLOAD, or BM_ETOOBIG if cap is too small. */
int bm_env_encode(bimip_MessageScheme *m, uint8_t *out, size_t cap, size_t *len);
/* Same, appending to a growable buffer. */
int bm_env_encode_buf(bimip_MessageScheme *m, struct bm_buf *out);

/* A ChatMessage (not the envelope) encoded without nanopb, the same bytes
 * pb_encode writes for it (field order, defaults left out, strings cut at
 * their bounds); on every chat message's path.  Returns the length, or 0
 * if cap < bimip_ChatMessage_size. */
size_t bm_env_chat_message(uint8_t *out, size_t cap, const bimip_ChatMessage *c);

/* The VersionUpdate answering a chat message, encoded without nanopb (it is
 * on every message's path): the same bytes bm_env_encode gives for
 * MessageScheme{version_update{to{eid, device}, message_id,
 * message_id_local, type 1, timestamp, status 1, version, chat_id}}, with
 * strings cut to their bounds as BM_SET_STR does.  Returns the length, or
 * 0 if cap is too small (BM_ENV_VU_MAX always suffices). */
#define BM_ENV_VU_MAX (bimip_VersionUpdate_size + 8)
size_t bm_env_version_update(uint8_t *out, size_t cap, const char *eid,
			     const char *device, const char *message_id,
			     const char *message_id_local, const char *chat_id,
			     int64_t version, int64_t timestamp);
/* Stanza name of a route ("chat_message"), or NULL if unknown. */
const char *bm_env_route_name(int64_t route);

/* Fill *m with an ErrorMessage: code (HTTP-like), the route it answers (as a
 * decimal string, empty when 0), message and optional details (may be NULL).
 * Strings are truncated to their bounds. */
void bm_env_make_error(bimip_MessageScheme *m, int code, int64_t route,
		       const char *message, const char *details);

/* Bounded copy into a nanopb fixed-size string field (always terminated). */
#define BM_SET_STR(field, src) bm_env_strset((field), sizeof(field), (src))
void bm_env_strset(char *dst, size_t cap, const char *src);

#endif
