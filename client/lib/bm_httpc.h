/*
 * bm_httpc.h - a small blocking HTTP/1.1 client for the admin APIs
 * (bimipctl, tests).  One request per connection (Connection: close).
 */
#ifndef BM_HTTPC_H
#define BM_HTTPC_H

#include <stddef.h>

/* method path to hostport ("127.0.0.1:4101"), with "Authorization: Bearer
 * key" when key is non-NULL and body (JSON) when non-NULL.  The response body
 * goes to out (NUL-terminated, truncated to cap).  Returns the HTTP status,
 * or a negative BM_E* code when no answer came within timeout_ms. */
int bm_httpc_request(const char *hostport, const char *method, const char *path,
		     const char *key, const char *body, char *out, size_t cap,
		     int timeout_ms);

/* POST /v1/tokens on the admin API at hostport: a token (malloc'd) for eid
 * and device, lifetime ttl_s (0 = the server's tokens.ttl).  NULL on
 * failure, with the reason ("HTTP 401 ...") in err. */
char *bm_httpc_token(const char *hostport, const char *key, const char *eid,
		     const char *device, int ttl_s, int timeout_ms, char *err,
		     size_t errlen);

/* The first line of a key file into buf.  Returns 0, or -1 when the file
 * cannot be read or is empty. */
int bm_httpc_read_key(const char *path, char *buf, size_t cap);

#endif
