/* Unit tests for common/bm_http.[ch]: the WebSocket opening handshake. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_http.h"

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static const char good[] =
	"GET /ws?x=1&token=abc%2Edef.ghi HTTP/1.1\r\n"
	"Host: edge.example:8443\r\n"
	"Upgrade: websocket\r\n"
	"Connection: keep-alive, Upgrade\r\n"
	"Sec-WebSocket-Key: " RFC_KEY "\r\n"
	"Sec-WebSocket-Version: 13\r\n"
	"Origin: https://app.example\r\n"
	"X-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n"
	"\r\n";

static int parse(const char *s, struct bm_http_upgrade *req, char *buf)
{
	size_t n = strlen(s);

	memcpy(buf, s, n);
	return bm_http_parse_upgrade(buf, n, NULL, req);
}

static int sl_eq(struct bm_http_slice s, const char *lit)
{
	return s.p && s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

static void test_good_request(void **state)
{
	static char buf[BM_HTTP_MAX_HEAD + 64];
	struct bm_http_upgrade req;
	char out[BM_HTTP_UPGRADE_RESPONSE_MAX];
	int n;

	assert_int_equal(parse(good, &req, buf), 0);
	assert_int_equal(req.head_len, strlen(good));
	assert_true(sl_eq(req.path, "/ws"));
	assert_true(sl_eq(req.host, "edge.example:8443"));
	assert_true(sl_eq(req.origin, "https://app.example"));
	assert_true(sl_eq(req.forwarded_for, "203.0.113.7, 10.0.0.1"));
	assert_true(sl_eq(req.key, RFC_KEY));
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_QUERY);
	assert_true(sl_eq(req.token, "abc.def.ghi"));

	n = bm_http_upgrade_response(out, sizeof(out), &req);
	assert_true(n > 0);
	assert_string_equal(out,
		"HTTP/1.1 101 Switching Protocols\r\n"
		"Upgrade: websocket\r\n"
		"Connection: Upgrade\r\n"
		"Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n\r\n");
	assert_int_equal(bm_http_upgrade_response(out, 50, &req), BM_ETOOBIG);
}

static void test_accept_key(void **state)
{
	char acc[BM_HTTP_ACCEPT_LEN + 1];

	assert_int_equal(bm_http_accept_key(RFC_KEY, strlen(RFC_KEY), acc), 0);
	assert_string_equal(acc, RFC_ACCEPT);
}

static void test_incremental(void **state)
{
	static char buf[BM_HTTP_MAX_HEAD + 64];
	struct bm_http_upgrade req;
	size_t n = strlen(good), scan = 0;

	/* Every prefix is "need more"; the scan position only moves forward. */
	for (size_t i = 0; i < n; i++) {
		size_t before = scan;

		memcpy(buf, good, i);
		assert_int_equal(bm_http_parse_upgrade(buf, i, &scan, &req), BM_EAGAIN);
		assert_true(scan >= before);
	}
	memcpy(buf, good, n);
	assert_int_equal(bm_http_parse_upgrade(buf, n, &scan, &req), 0);
	/* Bytes after the head (an early frame) are not part of it. */
	memcpy(buf, good, n);
	memcpy(buf + n, "\x81\x80", 2);
	assert_int_equal(bm_http_parse_upgrade(buf, n + 2, NULL, &req), 0);
	assert_int_equal(req.head_len, n);
}

struct bad_case {
	const char *req;
	int rc;
	int status;
};

#define H_REST "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
#define H_KEY "Sec-WebSocket-Key: " RFC_KEY "\r\n"
#define H_VER "Sec-WebSocket-Version: 13\r\n"

static void test_rejections(void **state)
{
	static const struct bad_case cases[] = {
		{ "GET / HTTP/1.1\r\n" H_REST H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_VER "Sec-WebSocket-Key: abc\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_VER "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_VER "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR!=\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY "Sec-WebSocket-Version: 8\r\n\r\n", BM_EPROTO, 426 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY "\r\n", BM_EPROTO, 426 },
		{ "POST / HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 405 },
		{ "GET / HTTP/1.0\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 505 },
		{ "GET / HTTP/2.0\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 505 },
		{ "GET / HTTX/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET  / HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET http://x/ HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n" H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY H_VER "Bad Name: x\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY H_VER "NoColon\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY H_VER "X-A: 1\r\n folded\r\n\r\n", BM_EPROTO, 400 },
		{ "GET / HTTP/1.1\r\n" H_REST H_KEY H_VER "X-A : 1\r\n\r\n", BM_EPROTO, 400 },
		{ "GET /?token=ab%zz HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET /?token=ab%00 HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
		{ "GET /?token=ab% HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", BM_EPROTO, 400 },
	};
	static char buf[BM_HTTP_MAX_HEAD + 64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bm_http_upgrade req;
		int rc = parse(cases[i].req, &req, buf);

		if (rc != cases[i].rc || req.status != cases[i].status)
			fail_msg("case %zu: rc %d status %d, want %d %d", i, rc,
				 req.status, cases[i].rc, cases[i].status);
		assert_non_null(req.reason);
	}
}

static void test_limits(void **state)
{
	static char buf[2 * BM_HTTP_MAX_HEAD], src[2 * BM_HTTP_MAX_HEAD];
	struct bm_http_upgrade req;
	size_t n;

	/* 32 header lines are fine, 33 are not. */
	for (int extra = 27; extra <= 28; extra++) {
		n = (size_t)sprintf(src, "GET / HTTP/1.1\r\n" H_REST H_KEY H_VER);
		for (int i = 0; i < extra; i++)
			n += (size_t)sprintf(src + n, "X-H%d: v\r\n", i);
		n += (size_t)sprintf(src + n, "\r\n");
		memcpy(buf, src, n);
		if (extra == 27) {
			assert_int_equal(bm_http_parse_upgrade(buf, n, NULL, &req), 0);
		} else {
			assert_int_equal(bm_http_parse_upgrade(buf, n, NULL, &req), BM_ETOOBIG);
			assert_int_equal(req.status, 431);
		}
	}
	/* A head that never ends within the limit. */
	n = (size_t)sprintf(src, "GET / HTTP/1.1\r\nX-Long: ");
	memset(src + n, 'a', sizeof(src) - n);
	memcpy(buf, src, BM_HTTP_MAX_HEAD - 1);
	assert_int_equal(bm_http_parse_upgrade(buf, BM_HTTP_MAX_HEAD - 1, NULL, &req), BM_EAGAIN);
	memcpy(buf, src, BM_HTTP_MAX_HEAD);
	assert_int_equal(bm_http_parse_upgrade(buf, BM_HTTP_MAX_HEAD, NULL, &req), BM_ETOOBIG);
	assert_int_equal(req.status, 431);
	/* Ending just past the limit is still too large. */
	memcpy(buf, src, BM_HTTP_MAX_HEAD + 8);
	memcpy(buf + BM_HTTP_MAX_HEAD - 2, "\r\n\r\n", 4);
	assert_int_equal(bm_http_parse_upgrade(buf, BM_HTTP_MAX_HEAD + 8, NULL, &req), BM_ETOOBIG);
}

static void test_token_sources(void **state)
{
	static char buf[BM_HTTP_MAX_HEAD];
	struct bm_http_upgrade req;

	assert_int_equal(parse("GET /?token=q HTTP/1.1\r\n" H_REST H_KEY H_VER
			       "token: hdr\r\n"
			       "Authorization: bearer   aaa.bbb.ccc \r\n\r\n", &req, buf), 0);
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_AUTHORIZATION);
	assert_true(sl_eq(req.token, "aaa.bbb.ccc"));

	assert_int_equal(parse("GET /?token=q HTTP/1.1\r\n" H_REST H_KEY H_VER
			       "Authorization: Basic Zm9vOmJhcg==\r\n"
			       "TOKEN: hdr.x.y\r\n\r\n", &req, buf), 0);
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_HEADER);
	assert_true(sl_eq(req.token, "hdr.x.y"));

	assert_int_equal(parse("GET /p/q?a=b&tokenx=1&token=e%79J%2d_.x&c HTTP/1.1\r\n"
			       H_REST H_KEY H_VER "\r\n", &req, buf), 0);
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_QUERY);
	assert_true(sl_eq(req.token, "eyJ-_.x"));
	assert_true(sl_eq(req.path, "/p/q"));

	assert_int_equal(parse("GET /?tok=1 HTTP/1.1\r\n" H_REST H_KEY H_VER "\r\n", &req, buf), 0);
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_NONE);
	assert_int_equal(req.token.len, 0);
}

static void test_error_responses(void **state)
{
	static const int st[] = { 400, 403, 404, 431, 503, 505 };
	char out[1024];
	int n;
	const char *body;

	n = bm_http_error_response(out, sizeof(out), 401, "token has \"expired\"\r\nX: y");
	assert_true(n > 0);
	assert_non_null(strstr(out, "HTTP/1.1 401 Unauthorized\r\n"));
	assert_non_null(strstr(out, "WWW-Authenticate: Bearer error=\"invalid_token\", "
				    "error_description=\"token has 'expired'  X: y\"\r\n"));
	assert_null(strstr(out, "\r\nX: y"));	/* no header injection */
	body = strstr(out, "\r\n\r\n") + 4;
	assert_string_equal(body, "token has \"expired\"  X: y\n");
	{
		char cl[64];
		snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(body));
		assert_non_null(strstr(out, cl));
	}
	n = bm_http_error_response(out, sizeof(out), 426, NULL);
	assert_true(n > 0);
	assert_non_null(strstr(out, "HTTP/1.1 426 Upgrade Required\r\n"));
	assert_non_null(strstr(out, "Sec-WebSocket-Version: 13\r\n"));
	n = bm_http_error_response(out, sizeof(out), 405, NULL);
	assert_non_null(strstr(out, "Allow: GET\r\n"));
	n = bm_http_error_response(out, sizeof(out), 429, "slow down");
	assert_non_null(strstr(out, "Retry-After: 1\r\n"));
	for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
		n = bm_http_error_response(out, sizeof(out), st[i], NULL);
		assert_true(n > 0);
		assert_int_equal(memcmp(out, "HTTP/1.1 ", 9), 0);
		assert_non_null(strstr(out, "Connection: close\r\n"));
	}
	assert_int_equal(bm_http_error_response(out, 40, 400, NULL), BM_ETOOBIG);
}

static void test_client_roundtrip(void **state)
{
	static char buf[BM_HTTP_MAX_HEAD];
	char key[BM_HTTP_KEY_LEN + 1], key2[BM_HTTP_KEY_LEN + 1];
	char reqtxt[2048], resp[512], msg[128];
	struct bm_http_upgrade req;
	struct bm_http_response r;
	int n, m;

	assert_int_equal(bm_http_client_key(key), 0);
	assert_int_equal(bm_http_client_key(key2), 0);
	assert_int_equal(strlen(key), 24);
	assert_string_not_equal(key, key2);
	n = bm_http_upgrade_request(reqtxt, sizeof(reqtxt), "localhost:9000", "/ws",
				    key, "aaa.bbb.ccc", "https://o");
	assert_true(n > 0);
	memcpy(buf, reqtxt, (size_t)n);
	assert_int_equal(bm_http_parse_upgrade(buf, (size_t)n, NULL, &req), 0);
	assert_int_equal(req.token_src, BM_HTTP_TOKEN_AUTHORIZATION);
	assert_true(sl_eq(req.token, "aaa.bbb.ccc"));
	assert_true(sl_eq(req.origin, "https://o"));

	m = bm_http_upgrade_response(resp, sizeof(resp), &req);
	assert_true(m > 0);
	/* Each prefix needs more; with a frame glued on, head_len stops before it. */
	for (int i = 0; i < m; i++)
		assert_int_equal(bm_http_parse_response(resp, (size_t)i, key, &r), BM_EAGAIN);
	memcpy(resp + m, "\x82\x00", 2);
	assert_int_equal(bm_http_parse_response(resp, (size_t)m + 2, key, &r), 0);
	assert_int_equal(r.status, 101);
	assert_int_equal(r.head_len, (size_t)m);
	/* Wrong key -> Accept mismatch. */
	assert_int_equal(bm_http_parse_response(resp, (size_t)m, key2, &r), BM_EPROTO);

	/* Error answers carry the status and text for the user. */
	n = bm_http_error_response(resp, sizeof(resp), 401, "token has expired");
	assert_int_equal(bm_http_parse_response(resp, (size_t)n - 3, key, &r), BM_EAGAIN);
	assert_int_equal(bm_http_parse_response(resp, (size_t)n, key, &r), BM_EUNAUTH);
	assert_int_equal(r.status, 401);
	assert_int_equal(r.head_len, (size_t)n);
	assert_string_equal(bm_http_response_message(&r, msg, sizeof(msg)),
			    "401: token has expired");
	assert_true(r.www_authenticate.len > 0);
	n = bm_http_error_response(resp, sizeof(resp), 429, "too many connections");
	assert_int_equal(bm_http_parse_response(resp, (size_t)n, key, &r), BM_ERATE);
	n = sprintf(resp, "HTTP/1.1 503 Service Unavailable\r\n\r\n");
	assert_int_equal(bm_http_parse_response(resp, (size_t)n, key, &r), BM_EUNAVAIL);
	assert_string_equal(bm_http_response_message(&r, msg, sizeof(msg)),
			    "503: Service Unavailable");
	n = sprintf(resp, "SSH-2.0-OpenSSH\r\n\r\n");
	assert_int_equal(bm_http_parse_response(resp, (size_t)n, key, &r), BM_EPROTO);

	/* Header injection is refused. */
	assert_int_equal(bm_http_upgrade_request(reqtxt, sizeof(reqtxt), "h", "/",
						 key, "a\r\nX: y", NULL), BM_EINVAL);
	assert_int_equal(bm_http_upgrade_request(reqtxt, sizeof(reqtxt), "h", "x",
						 key, NULL, NULL), BM_EINVAL);
	assert_int_equal(bm_http_upgrade_request(reqtxt, 20, "h", "/", key, NULL, NULL),
			 BM_ETOOBIG);
}

/* Figure: parse + 101 response (SHA-1, base64) per second. */
static void test_throughput(void **state)
{
	static char buf[BM_HTTP_MAX_HEAD];
	char out[BM_HTTP_UPGRADE_RESPONSE_MAX];
	struct bm_http_upgrade req;
	struct timespec t0, t1;
	size_t n = strlen(good);
	enum { N = 200000 };
	double secs;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < N; i++) {
		memcpy(buf, good, n);
		assert_int_equal(bm_http_parse_upgrade(buf, n, NULL, &req), 0);
		assert_true(bm_http_upgrade_response(out, sizeof(out), &req) > 0);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("http: %.0f upgrade requests parsed and answered per second (%.2f us each)\n",
	       N / secs, secs / N * 1e6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_request),
		cmocka_unit_test(test_accept_key),
		cmocka_unit_test(test_incremental),
		cmocka_unit_test(test_rejections),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_token_sources),
		cmocka_unit_test(test_error_responses),
		cmocka_unit_test(test_client_roundtrip),
		cmocka_unit_test(test_throughput),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
