/*
 * fuzz_http - the upgrade request parser and the client's response parser
 * (common/bm_http.c) on arbitrary bytes.
 *
 * The whole input is parsed as a request, once in one piece and once fed in
 * two parts split at a byte chosen by the data (results must agree), then
 * answered (101 or error response); it is also parsed as a server response.
 * Invariants: slices lie inside the buffer, the head length is within the
 * input and the limit, errors carry a status and a reason.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_err.h"
#include "bm_http.h"

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void in_buf(const struct bm_http_slice *s, const char *b, size_t n)
{
	if (s->p)
		CHECK(s->p >= b && s->p + s->len <= b + n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bm_http_upgrade req, req2;
	struct bm_http_response resp;
	char *buf, *buf2, out[2048], msg[600];
	size_t split, scan = 0;
	int rc, rc2;

	if (size > 3 * BM_HTTP_MAX_HEAD)
		return 0;
	buf = malloc(size + 1);
	buf2 = malloc(size + 1);
	if (!buf || !buf2)
		goto out;
	memcpy(buf, data, size);
	rc = bm_http_parse_upgrade(buf, size, NULL, &req);
	CHECK(rc == 0 || rc == BM_EAGAIN || rc == BM_EPROTO || rc == BM_ETOOBIG);
	if (rc == 0) {
		CHECK(req.head_len <= size && req.head_len <= BM_HTTP_MAX_HEAD);
		in_buf(&req.path, buf, size);
		in_buf(&req.query, buf, size);
		in_buf(&req.host, buf, size);
		in_buf(&req.key, buf, size);
		in_buf(&req.origin, buf, size);
		in_buf(&req.forwarded_for, buf, size);
		in_buf(&req.token, buf, size);
		CHECK(req.key.len == BM_HTTP_KEY_LEN);
		CHECK(bm_http_upgrade_response(out, sizeof(out), &req) > 0);
	} else if (rc != BM_EAGAIN) {
		CHECK(req.status >= 400 && req.status <= 505 && req.reason);
		CHECK(bm_http_error_response(out, sizeof(out), req.status, req.reason) > 0);
	}

	/* Same bytes in two reads: same verdict. */
	split = size ? data[0] % (size + 1) : 0;
	memcpy(buf2, data, size);
	rc2 = bm_http_parse_upgrade(buf2, split, &scan, &req2);
	if (rc2 == BM_EAGAIN)
		rc2 = bm_http_parse_upgrade(buf2, size, &scan, &req2);
	CHECK(rc2 == rc);
	if (rc == 0)
		CHECK(req2.head_len == req.head_len);

	rc = bm_http_parse_response((const char *)data, size,
				    "dGhlIHNhbXBsZSBub25jZQ==", &resp);
	if (rc != BM_EAGAIN && resp.status) {
		CHECK(resp.head_len <= size);
		in_buf(&resp.body, (const char *)data, size);
		in_buf(&resp.reason_phrase, (const char *)data, size);
		bm_http_response_message(&resp, msg, sizeof(msg));
	}
out:
	free(buf);
	free(buf2);
	return 0;
}
