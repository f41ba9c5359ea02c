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

#endif
