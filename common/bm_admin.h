/*
 * bm_admin.h - the admin HTTP API of a daemon (libevent evhttp + jansson).
 *
 * A small HTTP/1.1 server on its own, loopback-by-default port, with a route
 * table, bearer-key authentication, JSON in and out, and three built-in
 * routes:
 *   GET /healthz   200 {"status":"ok"} while the loop runs (no auth)
 *   GET /readyz    200 {"ready":true} or 503 {"ready":false,"reason":"..."}
 *                  from the daemon's ready callback (no auth)
 *   GET /metrics   the bm_metrics registry, "text/plain; version=0.0.4"
 *                  (no auth unless opts.metrics_auth)
 * Daemon routes are matched first, so a daemon may override a built-in.
 *
 * Usage:
 *   static void on_sessions(struct bm_admin_req *req, const json_t *body, void *ud)
 *   {
 *           const char *user = bm_admin_query(req, "user");
 *           if (!user) {
 *                   bm_admin_reply_error(req, 400, "missing query parameter '%s'", "user");
 *                   return;
 *           }
 *           bm_admin_reply_json(req, 200, json_pack("{s:s}", "user", user));
 *   }
 *   static const struct bm_admin_route routes[] = {
 *           { BM_ADMIN_GET, "/v1/sessions", 0, on_sessions, 1 },
 *           { BM_ADMIN_POST | BM_ADMIN_DELETE, "/v1/users/", 1, on_user, 1 },
 *           { 0, NULL }
 *   };
 *   struct bm_admin_opts o = { .listen = "127.0.0.1:0", .key = cfg.admin_key,
 *                              .routes = routes, .ud = daemon,
 *                              .metrics = reg, .ready = is_ready, .ready_ud = daemon };
 *   bm_admin_new(base, &o, &admin);
 *   if (bm_admin_start(admin, err, sizeof(err))) ...;
 *   bm_info("admin", "listening on port %u", bm_admin_port(admin));
 *
 * Errors are JSON: {"error":"<message>","status":<code>}, with
 *   401 (missing or wrong "Authorization: Bearer <key>", or no key is
 *       configured: authenticated routes are closed then), 404 (no route),
 *   405 (route exists, method does not; Allow header lists the methods),
 *   400 (body is not JSON), 413 (body over max_body), 500 (handler did not
 *   reply).
 * A request whose Content-Length is over max_body is refused by evhttp
 * itself before the body is read; that 413 has evhttp's HTML body.
 *
 * Handlers run on the loop thread and must reply before returning (with
 * exactly one bm_admin_reply_*); a handler that does not gets a 500.
 * The key is compared in constant time (for a given key length).
 */
#ifndef BM_ADMIN_H
#define BM_ADMIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct bm_admin;
struct bm_admin_req;
struct bm_metrics;

enum bm_admin_method {
	BM_ADMIN_GET = 1 << 0,
	BM_ADMIN_POST = 1 << 1,
	BM_ADMIN_PUT = 1 << 2,
	BM_ADMIN_DELETE = 1 << 3,
	BM_ADMIN_PATCH = 1 << 4,
};

/* body: the parsed JSON request body (borrowed, valid during the call), or
 * NULL when the request had none.  ud: bm_admin_opts.ud. */
typedef void bm_admin_handler_fn(struct bm_admin_req *req, const json_t *body,
				 void *ud);
/* Returns nonzero when ready; otherwise may write a reason into why. */
typedef int bm_admin_ready_fn(void *ud, char *why, size_t whylen);

struct bm_admin_route {
	unsigned methods;           /* BM_ADMIN_* mask; 0 with path NULL ends */
	const char *path;           /* "/v1/sessions" */
	int prefix;                 /* match every path starting with path */
	bm_admin_handler_fn *fn;
	int needs_auth;
};

struct bm_admin_opts {
	const char *listen;         /* "host:port"; NULL = "127.0.0.1:0" */
	const char *key;            /* admin bearer key (copied); NULL or "" = none */
	size_t max_body;            /* request body limit; 0 = 64 KiB */
	int metrics_auth;           /* GET /metrics needs the key */
	struct bm_metrics *metrics; /* borrowed; NULL: /metrics is 404 */
	bm_admin_ready_fn *ready;   /* NULL: always ready */
	void *ready_ud;
	const struct bm_admin_route *routes; /* borrowed, ends with path NULL */
	void *ud;                   /* passed to handlers */
};

/* Allocate a server on base (borrowed, must outlive it).  Nothing is bound
 * yet.  Returns 0 or BM_ENOMEM. */
int bm_admin_new(struct event_base *base, const struct bm_admin_opts *opts,
		 struct bm_admin **out);
/* Bind opts.listen.  Returns 0, BM_ECONFIG (bad address) or BM_ESYS
 * (cannot bind); err gets a message naming the address. */
int bm_admin_start(struct bm_admin *a, char *err, size_t errlen);
/* Bound port (the real one when listen asked for port 0); 0 if not bound. */
uint16_t bm_admin_port(const struct bm_admin *a);
/* Replace the key (config reload).  NULL or "" closes authenticated routes.
 * Returns 0 or BM_ENOMEM (the old key is kept). */
int bm_admin_set_key(struct bm_admin *a, const char *key);
/* Unbind and free; open connections are closed.  NULL is fine. */
void bm_admin_free(struct bm_admin *a);

/* Request accessors, valid during the handler call. */
unsigned bm_admin_req_method(const struct bm_admin_req *req);
const char *bm_admin_req_path(const struct bm_admin_req *req);
/* For prefix routes, the path after the prefix ("42" for "/v1/users/42"). */
const char *bm_admin_req_suffix(const struct bm_admin_req *req);
/* Decoded query parameter, or NULL when absent. */
const char *bm_admin_query(const struct bm_admin_req *req, const char *name);
const char *bm_admin_req_header(const struct bm_admin_req *req, const char *name);

/* Replies.  bm_admin_reply_json takes ownership of body (NULL sends {}).
 * A second reply for the same request is ignored. */
void bm_admin_reply_json(struct bm_admin_req *req, int status, json_t *body);
void bm_admin_reply_error(struct bm_admin_req *req, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Any other body; data is copied. */
void bm_admin_reply_raw(struct bm_admin_req *req, int status, const char *ctype,
			const void *data, size_t len);

#endif
