/*
 * Admin API tests: a real bm_admin on 127.0.0.1:0 and a small HTTP client.
 * Everything runs on one thread: the client's socket is non-blocking and
 * every wait polls it for 10 ms, then runs one non-blocking pass of the
 * server's loop, until the server closes the connection or 5 s pass.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <cmocka.h>

#include <event2/event.h>

#include "bm_admin.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_time.h"

#define KEY "s3cret-admin-key"

struct resp {
	int status;
	char ctype[128];
	char allow[64];
	struct bm_buf raw;
	const char *body;
};

struct fixture {
	struct event_base *base;
	struct bm_admin *admin;
	struct bm_metrics *reg;
	uint64_t *hits;
	uint16_t port;
	int ready;
	int calls;
};

static struct fixture fx;

static void resp_release(struct resp *r)
{
	bm_buf_release(&r->raw);
}

static void header_value(const char *head, const char *name, char *out, size_t len)
{
	const char *p = head;
	size_t n = strlen(name);

	out[0] = 0;
	while ((p = strstr(p, "\r\n"))) {
		p += 2;
		if (!strncasecmp(p, name, n) && p[n] == ':') {
			const char *v = p + n + 1, *e = strstr(v, "\r\n");
			while (*v == ' ')
				v++;
			snprintf(out, len, "%.*s", (int)(e ? e - v : (long)strlen(v)), v);
			return;
		}
	}
}

/* One request on a fresh connection; returns 0 when a full response came. */
static int http(const char *method, const char *path, const char *auth,
		const char *body, size_t blen, struct resp *r)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct bm_buf req = BM_BUF_INIT;
	size_t sent = 0;
	uint64_t deadline = bm_mono_ms() + 5000;
	int fd, done = 0;
	char *sep;

	memset(r, 0, sizeof(*r));
	sa.sin_port = htons(fx.port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd == -1)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	bm_buf_addf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
		    method, path);
	if (auth)
		bm_buf_addf(&req, "Authorization: %s\r\n", auth);
	if (body)
		bm_buf_addf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
			    blen);
	bm_buf_adds(&req, "\r\n");
	if (body)
		bm_buf_add(&req, body, blen);

	while (!done && bm_mono_ms() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (sent < req.len)
			p.events |= POLLOUT;
		event_base_loop(fx.base, EVLOOP_NONBLOCK);
		if (poll(&p, 1, 10) <= 0)
			continue;
		if ((p.revents & POLLOUT) && sent < req.len) {
			ssize_t n = send(fd, req.data + sent, req.len - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			else if (n == -1 && errno != EAGAIN)
				sent = req.len;   /* server gave up on us; read its answer */
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			char buf[4096];
			ssize_t n = recv(fd, buf, sizeof(buf), 0);
			if (n > 0)
				bm_buf_add(&r->raw, buf, (size_t)n);
			else if (n == 0 || errno != EAGAIN)
				done = 1;
		}
	}
	close(fd);
	bm_buf_release(&req);
	/* Let the server notice the close before the next test. */
	event_base_loop(fx.base, EVLOOP_NONBLOCK);
	if (!done || !r->raw.data || sscanf((char *)r->raw.data, "HTTP/1.1 %d", &r->status) != 1)
		return -1;
	sep = strstr((char *)r->raw.data, "\r\n\r\n");
	if (!sep)
		return -1;
	*sep = 0;
	header_value((char *)r->raw.data, "Content-Type", r->ctype, sizeof(r->ctype));
	header_value((char *)r->raw.data, "Allow", r->allow, sizeof(r->allow));
	r->body = sep + 4;
	return 0;
}

/* ---- daemon side --------------------------------------------------------- */

static void on_echo(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct fixture *f = ud;
	const char *q = bm_admin_query(req, "q");

	f->calls++;
	bm_admin_reply_json(req, 200, json_pack("{s:O?,s:s?,s:s}", "body", body,
						"q", q, "suffix",
						bm_admin_req_suffix(req)));
}

static void on_silent(struct bm_admin_req *req, const json_t *body, void *ud)
{
}

static void on_public(struct bm_admin_req *req, const json_t *body, void *ud)
{
	bm_admin_reply_error(req, 409, "busy '%s'", "x");
}

static int is_ready(void *ud, char *why, size_t len)
{
	struct fixture *f = ud;

	if (!f->ready)
		snprintf(why, len, "joining cluster");
	return f->ready;
}

static const struct bm_admin_route routes[] = {
	{ BM_ADMIN_POST | BM_ADMIN_PUT, "/v1/echo", 0, on_echo, 1 },
	{ BM_ADMIN_GET | BM_ADMIN_DELETE, "/v1/users/", 1, on_echo, 1 },
	{ BM_ADMIN_GET, "/v1/silent", 0, on_silent, 0 },
	{ BM_ADMIN_GET, "/v1/public", 0, on_public, 0 },
	{ 0, NULL }
};

static int setup(void **state)
{
	struct bm_admin_opts o = {
		.listen = "127.0.0.1:0", .key = KEY, .max_body = 1024,
		.routes = routes, .ud = &fx, .ready = is_ready, .ready_ud = &fx,
	};
	char err[256];

	memset(&fx, 0, sizeof(fx));
	fx.base = event_base_new();
	assert_non_null(fx.base);
	assert_int_equal(bm_metrics_new(&fx.reg), 0);
	assert_int_equal(bm_metrics_counter(fx.reg, "bimip_admin_test_total",
					    "Test \"counter\".", &fx.hits), 0);
	o.metrics = fx.reg;
	assert_int_equal(bm_admin_new(fx.base, &o, &fx.admin), 0);
	assert_int_equal(bm_admin_port(fx.admin), 0);
	assert_int_equal(bm_admin_start(fx.admin, err, sizeof(err)), 0);
	fx.port = bm_admin_port(fx.admin);
	assert_true(fx.port > 0);
	return 0;
}

static int teardown(void **state)
{
	bm_admin_free(fx.admin);
	bm_metrics_free(fx.reg);
	event_base_free(fx.base);
	return 0;
}

/* ---- tests ------------------------------------------------------------- */

static void test_auth(void **state)
{
	struct resp r;

	assert_int_equal(http("POST", "/v1/echo", NULL, "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	assert_string_equal(r.ctype, "application/json");
	assert_string_equal(r.body, "{\"error\":\"missing or invalid admin key\",\"status\":401}");
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "Bearer wrong", "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "Bearer " KEY "x", "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "Bearer s3cret", "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "Basic " KEY, "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(fx.calls, 0);
	assert_int_equal(http("POST", "/v1/echo", "Bearer " KEY, "{\"a\":1}", 7, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.ctype, "application/json");
	assert_string_equal(r.body, "{\"body\":{\"a\":1},\"q\":null,\"suffix\":\"\"}");
	assert_int_equal(fx.calls, 1);
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "bearer  " KEY " ", "{}", 2, &r), 0);
	assert_int_equal(r.status, 200);
	resp_release(&r);

	/* Key replaced (reload), then removed: authenticated routes close. */
	assert_int_equal(bm_admin_set_key(fx.admin, "other"), 0);
	assert_int_equal(http("POST", "/v1/echo", "Bearer " KEY, "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(http("POST", "/v1/echo", "Bearer other", "{}", 2, &r), 0);
	assert_int_equal(r.status, 200);
	resp_release(&r);
	assert_int_equal(bm_admin_set_key(fx.admin, NULL), 0);
	assert_int_equal(http("POST", "/v1/echo", "Bearer ", "{}", 2, &r), 0);
	assert_int_equal(r.status, 401);
	assert_non_null(strstr(r.body, "no admin key configured"));
	resp_release(&r);
	assert_int_equal(bm_admin_set_key(fx.admin, KEY), 0);
}

static char last_log[256];

static void capture_log(enum bm_log_level level, const char *component,
			const char *msg, void *ud)
{
	snprintf(last_log, sizeof(last_log), "%s: %s", component, msg);
}

static void test_routing(void **state)
{
	struct resp r;

	assert_int_equal(http("GET", "/nope", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 404);
	assert_string_equal(r.ctype, "application/json");
	assert_string_equal(r.body, "{\"error\":\"no route for '/nope'\",\"status\":404}");
	resp_release(&r);
	assert_int_equal(http("GET", "/v1/echo", "Bearer " KEY, NULL, 0, &r), 0);
	assert_int_equal(r.status, 405);
	assert_string_equal(r.allow, "POST, PUT");
	assert_string_equal(r.ctype, "application/json");
	resp_release(&r);
	assert_int_equal(http("POST", "/healthz", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 405);
	assert_string_equal(r.allow, "GET");
	resp_release(&r);
	/* prefix route, suffix and decoded query */
	assert_int_equal(http("DELETE", "/v1/users/42?q=a%20b&x=1", "Bearer " KEY, NULL, 0,
			      &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"body\":null,\"q\":\"a b\",\"suffix\":\"42\"}");
	resp_release(&r);
	assert_int_equal(http("GET", "/v1/public", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 409);
	assert_string_equal(r.body, "{\"error\":\"busy 'x'\",\"status\":409}");
	resp_release(&r);
	bm_log_set_sink(capture_log, NULL);
	assert_int_equal(http("GET", "/v1/silent", NULL, NULL, 0, &r), 0);
	bm_log_set_sink(NULL, NULL);
	assert_int_equal(r.status, 500);
	assert_string_equal(last_log, "admin: handler for '/v1/silent' did not reply");
	resp_release(&r);
	assert_int_equal(http("GET", "/healthz", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"status\":\"ok\"}");
	resp_release(&r);
}

static void test_bodies(void **state)
{
	struct resp r;
	char big[2048];

	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, "[1,2", 4, &r), 0);
	assert_int_equal(r.status, 400);
	assert_non_null(strstr(r.body, "invalid JSON body"));
	resp_release(&r);
	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, "{\"a\":1,\"a\":2}", 13, &r), 0);
	assert_int_equal(r.status, 400);
	resp_release(&r);
	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, "\"str\"", 5, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"body\":\"str\",\"q\":null,\"suffix\":\"\"}");
	resp_release(&r);
	/* at the limit: accepted */
	memset(big, ' ', sizeof(big));
	big[0] = '{';
	big[1023] = '}';
	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, big, 1024, &r), 0);
	assert_int_equal(r.status, 200);
	resp_release(&r);
	/* over it: 413 */
	big[1023] = ' ';
	big[1024] = '}';
	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, big, 1025, &r), 0);
	assert_int_equal(r.status, 413);
	resp_release(&r);
	big[2047] = '}';
	assert_int_equal(http("PUT", "/v1/echo", "Bearer " KEY, big, sizeof(big), &r), 0);
	assert_int_equal(r.status, 413);
	resp_release(&r);
}

static void test_metrics_and_ready(void **state)
{
	struct resp r;

	*fx.hits = 7;
	assert_int_equal(http("GET", "/metrics", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.ctype, "text/plain; version=0.0.4");
	assert_string_equal(r.body,
		"# HELP bimip_admin_test_total Test \"counter\".\n"
		"# TYPE bimip_admin_test_total counter\n"
		"bimip_admin_test_total 7\n");
	resp_release(&r);

	fx.ready = 0;
	assert_int_equal(http("GET", "/readyz", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 503);
	assert_string_equal(r.body, "{\"ready\":false,\"reason\":\"joining cluster\"}");
	resp_release(&r);
	fx.ready = 1;
	assert_int_equal(http("GET", "/readyz", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "{\"ready\":true}");
	resp_release(&r);
}

static void test_metrics_auth_and_bad_listen(void **state)
{
	struct bm_admin_opts o = { .listen = "127.0.0.1:0", .key = KEY,
				   .metrics_auth = 1, .metrics = fx.reg };
	struct bm_admin *a;
	struct resp r;
	uint16_t saved = fx.port;
	char err[256];

	assert_int_equal(bm_admin_new(fx.base, &o, &a), 0);
	assert_int_equal(bm_admin_start(a, err, sizeof(err)), 0);
	fx.port = bm_admin_port(a);
	assert_int_equal(http("GET", "/metrics", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 401);
	resp_release(&r);
	assert_int_equal(http("GET", "/metrics", "Bearer " KEY, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	resp_release(&r);
	/* no routes table, no ready callback */
	assert_int_equal(http("GET", "/readyz", NULL, NULL, 0, &r), 0);
	assert_int_equal(r.status, 200);
	resp_release(&r);
	bm_admin_free(a);
	fx.port = saved;

	o.listen = "127.0.0.1";
	assert_int_equal(bm_admin_new(fx.base, &o, &a), 0);
	assert_int_equal(bm_admin_start(a, err, sizeof(err)), BM_ECONFIG);
	assert_non_null(strstr(err, "'127.0.0.1'"));
	bm_admin_free(a);
	o.listen = "192.0.2.1:0";   /* not a local address */
	assert_int_equal(bm_admin_new(fx.base, &o, &a), 0);
	assert_int_equal(bm_admin_start(a, err, sizeof(err)), BM_ESYS);
	bm_admin_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_routing),
		cmocka_unit_test(test_bodies),
		cmocka_unit_test(test_metrics_and_ready),
		cmocka_unit_test(test_metrics_auth_and_bad_listen),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
