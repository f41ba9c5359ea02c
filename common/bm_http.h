/*
 * bm_http.h - the HTTP/1.1 side of the WebSocket opening handshake
 * (RFC 6455 section 4, RFC 7230), for both the edge and the client library.
 *
 * Server side.  The caller accumulates request bytes in one contiguous,
 * writable buffer of at most BM_HTTP_MAX_HEAD bytes and calls
 * bm_http_parse_upgrade() after each read.  It keeps no state besides an
 * optional scan position; the result is a struct of slices pointing into the
 * caller's buffer, valid while that buffer is.  Only the token normally needs
 * to outlive the handshake: copy it before reusing the buffer.
 *
 * Limits: a head longer than BM_HTTP_MAX_HEAD or with more than
 * BM_HTTP_MAX_HEADERS header lines is answered with 431.
 *
 * Client side.  bm_http_upgrade_request() writes the request with a fresh
 * random key; bm_http_parse_response() checks the server's 101 (status,
 * Upgrade, Connection, Sec-WebSocket-Accept) or returns its status and text.
 */
#ifndef BM_HTTP_H
#define BM_HTTP_H

#include <stddef.h>

#define BM_HTTP_MAX_HEAD	8192
#define BM_HTTP_MAX_HEADERS	32
#define BM_HTTP_KEY_LEN		24	/* base64 of 16 bytes */
#define BM_HTTP_ACCEPT_LEN	28	/* base64 of a SHA-1 */
/* Room for bm_http_upgrade_response(). */
#define BM_HTTP_UPGRADE_RESPONSE_MAX 160

struct bm_http_slice {
	const char *p;		/* not NUL-terminated; NULL when absent */
	size_t len;
};

enum bm_http_token_src {
	BM_HTTP_TOKEN_NONE = 0,
	BM_HTTP_TOKEN_AUTHORIZATION,	/* Authorization: Bearer <jwt> */
	BM_HTTP_TOKEN_HEADER,		/* token: <jwt> */
	BM_HTTP_TOKEN_QUERY,		/* ?token=<jwt>, percent-decoded */
};

struct bm_http_upgrade {
	size_t head_len;	/* bytes of the request head incl. CRLFCRLF */
	int status;		/* on error: the status to answer with */
	const char *reason;	/* on error: static text for the body */
	struct bm_http_slice path;	/* request target before '?' (raw) */
	struct bm_http_slice query;	/* after '?' (raw, but see token) */
	struct bm_http_slice host;
	struct bm_http_slice key;	/* Sec-WebSocket-Key, validated */
	struct bm_http_slice origin;
	struct bm_http_slice forwarded_for;	/* X-Forwarded-For, as sent */
	struct bm_http_slice token;	/* empty when none was sent */
	enum bm_http_token_src token_src;
};

/*
 * Parse an upgrade request from buf[0..len).  The token from the query is
 * percent-decoded in place (so buf is writable and `query` no longer reads
 * as sent in that case).  *scan (optional, start at 0) remembers how far the
 * end of the head was searched for, so repeated calls on a growing buffer
 * cost O(new bytes).
 *
 * Returns 0 when the head is complete and a valid upgrade request (the
 * caller still decides on the token: none or a bad one is a 401);
 * BM_EAGAIN when more bytes are needed; otherwise an error with req->status
 * and req->reason set: BM_ETOOBIG (431: head or header count too large),
 * BM_EPROTO (400 malformed, 405 not GET, 505 not HTTP/1.1,
 * 426 missing or unsupported Sec-WebSocket-Version).
 */
int bm_http_parse_upgrade(char *buf, size_t len, size_t *scan,
			  struct bm_http_upgrade *req);

/* Sec-WebSocket-Accept for key: base64(SHA-1(key + GUID)), NUL-terminated.
 * Returns 0 or BM_ECRYPTO. */
int bm_http_accept_key(const char *key, size_t key_len,
		       char out[BM_HTTP_ACCEPT_LEN + 1]);

/* Write the 101 response for req->key into out.  Returns its length or
 * BM_ETOOBIG when cap is too small (BM_HTTP_UPGRADE_RESPONSE_MAX is enough). */
int bm_http_upgrade_response(char *out, size_t cap,
			     const struct bm_http_upgrade *req);

/*
 * Write a complete error response: status line, Content-Type text/plain,
 * Content-Length, Connection: close, and the reason (one line) as the body.
 * 401 adds WWW-Authenticate: Bearer error="invalid_token",
 * error_description="<reason>"; 426 adds Sec-WebSocket-Version: 13 and
 * Upgrade: websocket; 405 adds Allow: GET; 429 and 503 add Retry-After: 1.
 * reason NULL uses the status text.  Returns the length, BM_ETOOBIG when cap
 * is too small (1024 bytes always suffice; the reason is cut at 255).
 */
int bm_http_error_response(char *out, size_t cap, int status,
			   const char *reason);

/* "Unauthorized" etc.; "Error" for statuses it does not know. */
const char *bm_http_status_text(int status);

/* --- client side ---------------------------------------------------------- */

/* A fresh random Sec-WebSocket-Key, NUL-terminated.  0 or BM_ESYS. */
int bm_http_client_key(char key[BM_HTTP_KEY_LEN + 1]);

/*
 * Write a GET upgrade request for host (as in the Host header, with ":port"
 * when not the default) and path (starting with '/', may carry a query) with
 * key, and "Authorization: Bearer <token>" when token is non-NULL, and
 * Origin when origin is non-NULL.  Returns the length, BM_EINVAL when an
 * argument contains CR, LF or NUL-breaking input, BM_ETOOBIG when cap is small.
 */
int bm_http_upgrade_request(char *out, size_t cap, const char *host,
			    const char *path, const char *key,
			    const char *token, const char *origin);

struct bm_http_response {
	size_t head_len;	/* bytes to drain: head (+ body if not 101) */
	int status;
	struct bm_http_slice reason_phrase;
	struct bm_http_slice body;	/* non-101: the error text */
	struct bm_http_slice www_authenticate;
};

/*
 * Parse the server's answer to a request sent with key.  For a non-101
 * answer it waits (BM_EAGAIN) for the Content-Length body when that fits in
 * BM_HTTP_MAX_HEAD.  Returns 0 for a valid 101 (bytes after head_len are
 * already WebSocket frames); BM_EAGAIN; BM_EPROTO for a malformed answer or
 * a 101 that fails the checks; for another status the BM_E* code matching
 * it (401 BM_EUNAUTH, 403 BM_EFORBIDDEN, 404 BM_ENOENT, 413 BM_ETOOBIG,
 * 429 BM_ERATE, 503 BM_EUNAVAIL, others BM_EPROTO), with resp->status set.
 */
int bm_http_parse_response(const char *buf, size_t len, const char *key,
			   struct bm_http_response *resp);

/* Format "401: token has expired" (status, then the body's first line or
 * the reason phrase) into out, NUL-terminated.  Returns out. */
char *bm_http_response_message(const struct bm_http_response *resp,
			       char *out, size_t cap);

#endif
