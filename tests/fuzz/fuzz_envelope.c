/* libFuzzer target: the envelope decoder, then a re-encode of what decoded;
 * bm_env_peek (the edge's outer check) must accept whatever decodes, and
 * bm_env_decode (with its text_payload_request fast path) must give
 * nanopb's answer (bm_env_decode_nanopb) on every input. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bm_env.h"
#include "bm_ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_identity(const bimip_Identity *a, const bimip_Identity *b)
{
	return !strcmp(a->eid, b->eid) &&
	       !strcmp(a->connection_resource_id, b->connection_resource_id) &&
	       !strcmp(a->node, b->node);
}

/* The fast path's answer is nanopb's: the same code and text, and for a
 * text request the same fields (strings as strings: the bytes after a
 * string's NUL are not part of the answer). */
static void check_fast(const uint8_t *data, size_t size, int rc,
		       const bimip_MessageScheme *a, const struct bm_env_err *ea)
{
	static bimip_MessageScheme b;
	struct bm_env_err eb;
	const bimip_TextPayloadRequest *x, *y;

	memset(&eb, 0, sizeof(eb));
	if (bm_env_decode_nanopb(data, size, &b, &eb) != rc)
		__builtin_trap();
	if (rc) {
		if (ea->code != eb.code || strcmp(ea->text, eb.text))
			__builtin_trap();
		return;
	}
	if (a->route != b.route || a->offset != b.offset || a->which_payload != b.which_payload)
		__builtin_trap();
	if (b.which_payload != bimip_MessageScheme_text_payload_request_tag)
		return;
	x = &a->payload.text_payload_request;
	y = &b.payload.text_payload_request;
	if (x->has_from != y->has_from || !same_identity(&x->from, &y->from) ||
	    x->to_count != y->to_count || strcmp(x->content, y->content) ||
	    strcmp(x->message_id_local, y->message_id_local) ||
	    strcmp(x->text_size_count, y->text_size_count) || x->created_at != y->created_at)
		__builtin_trap();
	for (pb_size_t i = 0; i < y->to_count; i++)
		if (!same_identity(&x->to[i], &y->to[i]))
			__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Kept across inputs, as the server keeps its decode target: what
	 * an earlier input left must not show through. */
	static bimip_MessageScheme m;
	static uint8_t out[BM_ENV_MAX_BYTES];
	struct bm_env_err err;
	struct bm_ipc_hdr h;
	size_t n;
	int rc;

	int64_t route = -1;
	int peeked = bm_env_peek(data, size, &route, &err);

	memset(&err, 0, sizeof(err));
	rc = bm_env_decode(data, size, &m, &err);
	check_fast(data, size, rc, &m, &err);
	if (rc == 0) {
		/* Whatever decodes must encode again within the bound. */
		if (bm_env_encode(&m, out, sizeof(out), &n) != 0)
			__builtin_trap();
		/* The edge's outer check accepts it, with the same route. */
		if (peeked != 0 || route != m.route)
			__builtin_trap();
	}
	(void)bm_ipc_decode(data, size, &h);
	return 0;
}
