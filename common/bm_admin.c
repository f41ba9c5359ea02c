/*
 * bm_admin.c - admin HTTP API on evhttp; the contract is in bm_admin.h.
 */
#include "bm_admin.h"
#include "bm_buf.h"
#include "bm_config.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"

#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define DEFAULT_LISTEN   "127.0.0.1:0"
#define DEFAULT_MAX_BODY (64 * 1024)
#define MAX_HEADERS      (16 * 1024)
#define METRICS_MAX      (16 * 1024 * 1024)
#define IO_TIMEOUT_S     10

struct bm_admin {
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *sock;
	char listen[256];
	char *key;
	size_t max_body;
	int metrics_auth;
	struct bm_metrics *metrics;
	bm_admin_ready_fn *ready;
	void *ready_ud;
	const struct bm_admin_route *routes;
	void *ud;
};

struct bm_admin_req {
	struct bm_admin *admin;
	struct evhttp_request *req;
	unsigned method;
	const char *path;
	const char *suffix;
	struct evkeyvalq query;
	int replied;
};

static const struct {
	enum evhttp_cmd_type ev;
	unsigned bm;
	const char *name;
} methods[] = {
	{ EVHTTP_REQ_GET, BM_ADMIN_GET, "GET" },
	{ EVHTTP_REQ_POST, BM_ADMIN_POST, "POST" },
	{ EVHTTP_REQ_PUT, BM_ADMIN_PUT, "PUT" },
	{ EVHTTP_REQ_DELETE, BM_ADMIN_DELETE, "DELETE" },
	{ EVHTTP_REQ_PATCH, BM_ADMIN_PATCH, "PATCH" },
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 421: return "Misdirected Request";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	default: return status < 400 ? "OK" : "Error";
	}
}

/* ---- replies ----------------------------------------------------------- */

void bm_admin_reply_raw(struct bm_admin_req *r, int status, const char *ctype,
			const void *data, size_t len)
{
	struct evkeyvalq *h;
	struct evbuffer *out;

	if (r->replied)
		return;
	r->replied = 1;
	h = evhttp_request_get_output_headers(r->req);
	evhttp_add_header(h, "Content-Type", ctype);
	evhttp_add_header(h, "Cache-Control", "no-store");
	out = evbuffer_new();
	if (!out || (len && evbuffer_add(out, data, len))) {
		if (out)
			evbuffer_free(out);
		evhttp_send_error(r->req, 500, NULL);
		return;
	}
	evhttp_send_reply(r->req, status, reason(status), out);
	evbuffer_free(out);
	bm_debug("admin", "'%s' -> %d", r->path ? r->path : "?", status);
}

void bm_admin_reply_json(struct bm_admin_req *r, int status, json_t *body)
{
	char *s;

	if (r->replied) {
		json_decref(body);
		return;
	}
	s = json_dumps(body ? body : json_object(), JSON_COMPACT);
	json_decref(body);
	if (!s) {
		static const char oom[] = "{\"error\":\"out of memory\",\"status\":500}";
		bm_admin_reply_raw(r, 500, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	bm_admin_reply_raw(r, status, "application/json", s, strlen(s));
	free(s);
}

void bm_admin_reply_error(struct bm_admin_req *r, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bm_admin_reply_json(r, status, json_pack("{s:s,s:i}", "error", msg,
						 "status", status));
}

/* ---- accessors --------------------------------------------------------- */

unsigned bm_admin_req_method(const struct bm_admin_req *r)
{
	return r->method;
}

const char *bm_admin_req_path(const struct bm_admin_req *r)
{
	return r->path;
}

const char *bm_admin_req_suffix(const struct bm_admin_req *r)
{
	return r->suffix ? r->suffix : "";
}

const char *bm_admin_query(const struct bm_admin_req *r, const char *name)
{
	return evhttp_find_header(&r->query, name);
}

const char *bm_admin_req_header(const struct bm_admin_req *r, const char *name)
{
	return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

/* ---- built-in routes --------------------------------------------------- */

static void on_healthz(struct bm_admin_req *r, const json_t *body, void *ud)
{
	bm_admin_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static void on_readyz(struct bm_admin_req *r, const json_t *body, void *ud)
{
	struct bm_admin *a = r->admin;
	char why[256] = "";

	if (!a->ready || a->ready(a->ready_ud, why, sizeof(why))) {
		bm_admin_reply_json(r, 200, json_pack("{s:b}", "ready", 1));
		return;
	}
	bm_admin_reply_json(r, 503, json_pack("{s:b,s:s}", "ready", 0, "reason",
					      why[0] ? why : "not ready"));
}

static void on_metrics(struct bm_admin_req *r, const json_t *body, void *ud)
{
	struct bm_buf out;
	int rc;

	if (!r->admin->metrics) {
		bm_admin_reply_error(r, 404, "no metrics registry");
		return;
	}
	bm_buf_init(&out, METRICS_MAX);
	rc = bm_metrics_render(r->admin->metrics, &out);
	if (rc)
		bm_admin_reply_error(r, 500, "cannot render metrics: %s", bm_strerror(rc));
	else
		bm_admin_reply_raw(r, 200, "text/plain; version=0.0.4", out.data, out.len);
	bm_buf_release(&out);
}

static const struct bm_admin_route builtin[] = {
	{ BM_ADMIN_GET, "/healthz", 0, on_healthz, 0 },
	{ BM_ADMIN_GET, "/readyz", 0, on_readyz, 0 },
	{ BM_ADMIN_GET, "/metrics", 0, on_metrics, 0 },
	{ 0, NULL }
};

/* ---- dispatch ---------------------------------------------------------- */

static int path_match(const struct bm_admin_route *rt, const char *path,
		      const char **suffix)
{
	size_t n = strlen(rt->path);

	if (rt->prefix) {
		if (strncmp(path, rt->path, n))
			return 0;
		*suffix = path + n;
		return 1;
	}
	*suffix = NULL;
	return !strcmp(path, rt->path);
}

/* Constant time in the key's length: no early exit on the first mismatch. */
static int key_equal(const char *key, const char *got, size_t glen)
{
	size_t klen = strlen(key);
	size_t diff = klen ^ glen;

	for (size_t i = 0; i < klen; i++)
		diff |= (unsigned char)key[i] ^ (unsigned char)(i < glen ? got[i] : 0);
	return diff == 0;
}

static int authorized(struct bm_admin_req *r)
{
	const char *h = bm_admin_req_header(r, "Authorization");
	const char *tok;
	size_t n;

	if (!r->admin->key || !h || strncasecmp(h, "Bearer ", 7))
		return 0;
	tok = h + 7;
	while (*tok == ' ')
		tok++;
	n = strlen(tok);
	while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
		n--;
	return n > 0 && key_equal(r->admin->key, tok, n);
}

static const struct bm_admin_route *find_route(struct bm_admin *a, const char *path,
					       unsigned method, unsigned *allowed,
					       const char **suffix)
{
	const struct bm_admin_route *tables[2] = { a->routes, builtin };

	*allowed = 0;
	for (int t = 0; t < 2; t++) {
		for (const struct bm_admin_route *rt = tables[t]; rt && rt->path; rt++) {
			if (!path_match(rt, path, suffix))
				continue;
			if (rt->methods & method)
				return rt;
			*allowed |= rt->methods;
		}
	}
	return NULL;
}

static void reply_405(struct bm_admin_req *r, unsigned allowed)
{
	char allow[64] = "";
	size_t o = 0;

	for (size_t i = 0; i < NMETHODS; i++)
		if (allowed & methods[i].bm)
			o += (size_t)snprintf(allow + o, sizeof(allow) - o, "%s%s",
					      o ? ", " : "", methods[i].name);
	evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
	bm_admin_reply_error(r, 405, "method not allowed on '%s'", r->path);
}

static void dispatch(struct bm_admin_req *r)
{
	struct bm_admin *a = r->admin;
	const struct bm_admin_route *rt;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(r->req);
	struct evbuffer *in;
	const char *query;
	unsigned allowed;
	json_t *body = NULL;
	size_t len;

	r->path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!r->path || !r->path[0])
		r->path = "/";
	for (size_t i = 0; i < NMETHODS; i++)
		if (methods[i].ev == cmd)
			r->method = methods[i].bm;
	query = uri ? evhttp_uri_get_query(uri) : NULL;
	if (query && evhttp_parse_query_str(query, &r->query)) {
		bm_admin_reply_error(r, 400, "malformed query string");
		return;
	}

	rt = find_route(a, r->path, r->method, &allowed, &r->suffix);
	if (!rt) {
		if (allowed)
			reply_405(r, allowed);
		else
			bm_admin_reply_error(r, 404, "no route for '%s'", r->path);
		return;
	}
	if ((rt->needs_auth || (rt->fn == on_metrics && a->metrics_auth)) &&
	    !authorized(r)) {
		evhttp_add_header(evhttp_request_get_output_headers(r->req),
				  "WWW-Authenticate", "Bearer");
		bm_admin_reply_error(r, 401, a->key ? "missing or invalid admin key" :
				     "no admin key configured");
		return;
	}

	in = evhttp_request_get_input_buffer(r->req);
	len = in ? evbuffer_get_length(in) : 0;
	if (len > a->max_body) {
		bm_admin_reply_error(r, 413, "request body over %zu bytes", a->max_body);
		return;
	}
	if (len) {
		json_error_t je;
		const char *data = (const char *)evbuffer_pullup(in, -1);
		body = data ? json_loadb(data, len, JSON_REJECT_DUPLICATES |
					 JSON_DECODE_ANY, &je) : NULL;
		if (!body) {
			bm_admin_reply_error(r, 400, "invalid JSON body: %d:%d: %s",
					     je.line, je.column, je.text);
			return;
		}
	}
	rt->fn(r, body, a->ud);
	json_decref(body);
	if (!r->replied) {
		bm_err("admin", "handler for '%s' did not reply", r->path);
		bm_admin_reply_error(r, 500, "handler did not reply");
	}
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct bm_admin_req r = { .admin = arg, .req = req };

	TAILQ_INIT(&r.query);
	dispatch(&r);
	evhttp_clear_headers(&r.query);
}

/* ---- lifecycle --------------------------------------------------------- */

int bm_admin_new(struct event_base *base, const struct bm_admin_opts *opts,
		 struct bm_admin **out)
{
	struct bm_admin *a = calloc(1, sizeof(*a));
	int rc = BM_ENOMEM;

	if (!a)
		return BM_ENOMEM;
	a->base = base;
	snprintf(a->listen, sizeof(a->listen), "%s",
		 opts->listen && opts->listen[0] ? opts->listen : DEFAULT_LISTEN);
	a->max_body = opts->max_body ? opts->max_body : DEFAULT_MAX_BODY;
	a->metrics_auth = opts->metrics_auth;
	a->metrics = opts->metrics;
	a->ready = opts->ready;
	a->ready_ud = opts->ready_ud;
	a->routes = opts->routes;
	a->ud = opts->ud;
	if (bm_admin_set_key(a, opts->key))
		goto out_free;
	a->http = evhttp_new(base);
	if (!a->http)
		goto out_free;
	evhttp_set_gencb(a->http, on_request, a);
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
				   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
				   EVHTTP_REQ_PATCH | EVHTTP_REQ_HEAD);
	evhttp_set_max_body_size(a->http, (ev_ssize_t)a->max_body);
	evhttp_set_max_headers_size(a->http, MAX_HEADERS);
	evhttp_set_timeout(a->http, IO_TIMEOUT_S);
	/* Read (and drop) an oversized body so the client sees our 413. */
	evhttp_set_flags(a->http, EVHTTP_SERVER_LINGERING_CLOSE);
	*out = a;
	return 0;
out_free:
	free(a->key);
	free(a);
	return rc;
}

int bm_admin_start(struct bm_admin *a, char *err, size_t errlen)
{
	char host[256];
	uint16_t port;

	if (bm_config_addr_split(a->listen, host, sizeof(host), &port)) {
		snprintf(err, errlen, "admin: invalid listen address '%s'", a->listen);
		return BM_ECONFIG;
	}
	a->sock = evhttp_bind_socket_with_handle(a->http, host, port);
	if (!a->sock) {
		snprintf(err, errlen, "admin: cannot listen on '%s'", a->listen);
		return BM_ESYS;
	}
	return 0;
}

uint16_t bm_admin_port(const struct bm_admin *a)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	evutil_socket_t fd;

	if (!a->sock)
		return 0;
	fd = evhttp_bound_socket_get_fd(a->sock);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == -1)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return 0;
}

int bm_admin_set_key(struct bm_admin *a, const char *key)
{
	char *k = NULL;

	if (key && key[0]) {
		k = strdup(key);
		if (!k)
			return BM_ENOMEM;
	}
	free(a->key);
	a->key = k;
	return 0;
}

void bm_admin_free(struct bm_admin *a)
{
	if (!a)
		return;
	if (a->http)
		evhttp_free(a->http);
	free(a->key);
	free(a);
}
