/*
 * The command-line tools as an operator and a user run them: --help of
 * every binary, the shipped example configs, bimipctl against a live
 * server, bimip-cli sending and reading history through a live edge.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <poll.h>
#include <cmocka.h>

#include "bimip_client.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_time.h"

static struct bm_h_node srv, sig;
static const struct bm_h_node *servers[1] = { &srv };

/* Run a shell command; its stdout (and stderr) into out.  Returns the exit status. */
static int run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t cap, const char *fmt, ...)
{
	char cmd[16384];
	size_t got = 0;
	va_list ap;
	FILE *f;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	f = popen(cmd, "r");
	assert_non_null(f);
	while (got + 1 < cap) {
		size_t n = fread(out + got, 1, cap - 1 - got, f);
		if (!n)
			break;
		got += n;
	}
	out[got] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *bin(void)
{
	const char *b = getenv("BIMIP_BIN");
	return b ? b : "build/bin";
}

static int setup(void **state)
{
	bm_h_init();
	if (bm_h_start_server(&srv, "tools-s1", NULL))
		return -1;
	return bm_h_start_signal(&sig, "tools-g1", servers, 1,
				 "{\"tokens\":{\"leeway\":\"0s\"}}");
}

static int teardown(void **state)
{
	if (bm_h_stop(&sig, SIGTERM) || bm_h_stop(&srv, SIGTERM))
		return -1;
	return bm_h_check_logs() ? -1 : 0;
}

static void test_help_and_configs(void **state)
{
	static const char *const progs[] = { "bimip-server", "bimip-signal", "bimipctl",
					     "bimip-cli", "bimip-bench" };
	char out[65536];

	for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++) {
		assert_int_equal(run(out, sizeof(out), "%s/%s --help 2>&1", bin(), progs[i]), 0);
		assert_non_null(strstr(out, "usage"));
	}
	assert_int_equal(run(out, sizeof(out), "%s/bimip-server --help-config", bin()), 0);
	assert_non_null(strstr(out, "queue.fsync"));
	/* Every configuration key is documented in docs/operations.md. */
	{
		static const char *const daemons[] = { "bimip-server", "bimip-signal" };
		FILE *f = fopen("docs/operations.md", "r");
		static char doc[1 << 18];
		size_t n = f ? fread(doc, 1, sizeof(doc) - 1, f) : 0;
		doc[n] = 0;
		if (f)
			fclose(f);
		assert_true(n > 0);
		for (int d = 0; d < 2; d++) {
			char *line, *save = NULL;
			assert_int_equal(run(out, sizeof(out), "%s/%s --help-config", bin(),
					     daemons[d]), 0);
			for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
				char key[128], needle[140];
				if (line[0] == ' ' || sscanf(line, "%127s", key) != 1)
					continue;
				snprintf(needle, sizeof(needle), "`%s`", key);
				if (!strstr(doc, needle))
					fail_msg("%s key '%s' is not in docs/operations.md "
						 "(run docs/gen-config-tables.py)", daemons[d], key);
			}
		}
	}
	/* The shipped example configs load. */
	assert_int_equal(run(out, sizeof(out), "%s/bimip-server -c deploy/config/server.json "
			     "--print-config", bin()), 0);
	assert_int_equal(run(out, sizeof(out), "%s/bimip-signal -c deploy/config/signal.json "
			     "--print-config", bin()), 0);
	/* The example configs, every key with a "# key" comment, load and are
	 * what the generator makes from the binaries now (none is missing). */
	assert_int_equal(run(out, sizeof(out), "%s/bimip-server -c deploy/config/server.example.json "
			     "--print-config", bin()), 0);
	assert_int_equal(run(out, sizeof(out), "%s/bimip-signal -c deploy/config/signal.example.json "
			     "--print-config", bin()), 0);
	assert_int_equal(run(out, sizeof(out), "/usr/bin/python3 deploy/gen-example-config.py "
			     "%s/bimip-server | diff - deploy/config/server.example.json 2>&1", bin()), 0);
	assert_int_equal(run(out, sizeof(out), "/usr/bin/python3 deploy/gen-example-config.py "
			     "%s/bimip-signal | diff - deploy/config/signal.example.json 2>&1", bin()), 0);
	/* A mistyped key is named, with the file. */
	assert_int_equal(run(out, sizeof(out), "echo '{\"queue\":{\"fsynk\":\"group\"}}' > %s/bad.json; "
			     "%s/bimip-server -c %s/bad.json 2>&1", bm_h_root(), bin(), bm_h_root()), 1);
	assert_non_null(strstr(out, "unknown key 'queue.fsynk'"));
	assert_non_null(strstr(out, "bad.json"));
}

static void test_bimipctl(void **state)
{
	char out[65536], *tok;
	struct bm_client *c;
	struct bm_client_opts o = { .url = sig.url };
	char err[256];

	/* The token is the last word of the output (for app backends' scripts). */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s token issue "
			     "--eid ctl@tools --device phone --ttl 600", bin(), srv.admin,
			     BM_H_ADMIN_KEY), 0);
	tok = strrchr(out, '\n');
	while (tok && tok > out && tok[1] == 0) {
		*tok = 0;
		tok = strrchr(out, '\n');
	}
	tok = tok ? tok + 1 : out;
	o.token = tok;
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), 0);
	bm_client_close(c);
	/* Contacts through the admin API. */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s contact add "
			     "ctl@tools friend@tools", bin(), srv.admin, BM_H_ADMIN_KEY), 0);
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s contacts ctl@tools",
			     bin(), srv.admin, BM_H_ADMIN_KEY), 0);
	assert_non_null(strstr(out, "friend@tools"));
	/* A wrong key is refused with a clear message. */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key wrong status 2>&1",
			     bin(), srv.admin), 1);
	assert_non_null(strstr(out, "401"));
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s status", bin(),
			     srv.admin, BM_H_ADMIN_KEY), 0);
	assert_non_null(strstr(out, "\"role\": \"server\""));
	/* metrics PREFIX: one family, its HELP, TYPE and sample, nothing else. */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s metrics "
			     "bimip_server_queue_segments", bin(), srv.admin, BM_H_ADMIN_KEY), 0);
	assert_non_null(strstr(out, "# HELP bimip_server_queue_segments "));
	assert_non_null(strstr(out, "# TYPE bimip_server_queue_segments gauge\n"));
	assert_non_null(strstr(out, "\nbimip_server_queue_segments "));
	assert_null(strstr(out, "bimip_server_queue_bytes"));
	{
		int lines = 0;
		for (const char *p = out; *p; p++)
			lines += *p == '\n';
		assert_int_equal(lines, 3);
	}
	/* A prefix nothing has: said so, exit status 1. */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s metrics "
			     "bimip_nosuch 2>&1", bin(), srv.admin, BM_H_ADMIN_KEY), 1);
	assert_non_null(strstr(out, "no metric at "));
	assert_non_null(strstr(out, "'bimip_nosuch'"));
	/* Without a prefix: all of them, the histograms too. */
	assert_int_equal(run(out, sizeof(out), "%s/bimipctl --admin %s --key %s metrics", bin(),
			     srv.admin, BM_H_ADMIN_KEY), 0);
	assert_non_null(strstr(out, "bimip_server_queue_bytes "));
	assert_non_null(strstr(out, "bimip_server_chat_commit_seconds_bucket{le=\"+Inf\"} "));
}

static void test_bimip_cli(void **state)
{
	char out[65536];

	setenv("BIMIP_ADMIN_KEY", BM_H_ADMIN_KEY, 1);
	assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid a@cli "
			     "--device d send b@cli hello from the cli", bin(), sig.url, srv.admin), 0);
	assert_non_null(strstr(out, "version 1"));
	assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid b@cli "
			     "--device d history", bin(), sig.url, srv.admin), 0);
	assert_non_null(strstr(out, "hello from the cli"));
	assert_non_null(strstr(out, "1 stanzas"));
	assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid b@cli "
			     "--device d ping", bin(), sig.url, srv.admin), 0);
	assert_non_null(strstr(out, "pong: status 2"));
	/* A text over the 8192-byte bound is refused whole, not cut: nothing
	 * is stored, and the largest that fits arrives complete. */
	{
		static char big[8200];

		memset(big, 'x', 8193);
		big[8193] = 0;
		assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid a@cli "
				     "--device d send b@cli %s 2>&1", bin(), sig.url, srv.admin, big), 1);
		assert_non_null(strstr(out, "8193 bytes exceeds the limit of 8192"));
		big[8192] = 0;
		assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid a@cli "
				     "--device d send b@cli %s 2>&1", bin(), sig.url, srv.admin, big), 0);
		assert_non_null(strstr(out, "version 2"));
		assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --admin %s --eid b@cli "
				     "--device d history", bin(), sig.url, srv.admin), 0);
		assert_non_null(strstr(out, big));
		assert_non_null(strstr(out, "2 stanzas"));
	}
	/* A bad token: the HTTP refusal is shown to the user. */
	assert_int_equal(run(out, sizeof(out), "%s/bimip-cli --url %s --token x.y.z ping 2>&1",
			     bin(), sig.url), 1);
	assert_non_null(strstr(out, "401"));
}

/* Token refresh (admin API): a new token for the same device, the old one
 * refused from then on. */
static void test_token_refresh(void **state)
{
	char *old = bm_h_token(&srv, "ref@tools", "phone", 600);
	char body[4096], out[8192];
	struct bm_client_opts o = { .url = sig.url };
	struct bm_client *c;
	char err[256], *tok, *end;
	uint64_t deadline;

	assert_non_null(old);
	snprintf(body, sizeof(body), "{\"token\":\"%s\"}", old);
	assert_int_equal(bm_h_http(srv.admin, "POST", "/v1/tokens/refresh", BM_H_ADMIN_KEY,
				   body, out, sizeof(out)), 200);
	tok = strstr(out, "\"token\":\"");
	assert_non_null(tok);
	tok += 9;
	end = strchr(tok, '"');
	assert_non_null(end);
	*end = 0;
	o.token = tok;
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), 0);
	bm_client_close(c);
	/* The edge learns the revocation of the old token within a moment. */
	o.token = old;
	deadline = bm_mono_ms() + 5000;
	while (bm_client_connect(&c, &o, err, sizeof(err)) == 0) {
		bm_client_close(c);
		assert_true(bm_mono_ms() < deadline);
	}
	assert_non_null(strstr(err, "revoked"));
	/* Refreshing the revoked one again is refused. */
	assert_int_equal(bm_h_http(srv.admin, "POST", "/v1/tokens/refresh", BM_H_ADMIN_KEY,
				   body, out, sizeof(out)), 401);
	free(old);
}

/* A session does not outlive its token: closed with 4001 at expiry. */
static void test_session_closed_at_token_expiry(void **state)
{
	char *tok = bm_h_token(&srv, "short@tools", "phone", 2);
	struct bm_client_opts o = { .url = sig.url, .token = tok };
	struct bm_client *c;
	bimip_MessageScheme m;
	char err[256];
	uint64_t t0 = bm_mono_ms(), deadline = t0 + 15000;
	int rc;

	assert_non_null(tok);
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), 0);
	while ((rc = bm_client_recv(c, &m, 200)) != BM_ECLOSED && bm_mono_ms() < deadline)
		;
	assert_int_equal(rc, BM_ECLOSED);
	assert_int_equal(bm_client_close_code(c), 4001);
	assert_string_equal(bm_client_close_reason(c), "token expired");
	print_message("session closed %llu ms after connecting with a 2 s token\n",
		      (unsigned long long)(bm_mono_ms() - t0));
	bm_client_abort(c);
	free(tok);
}

/* timeouts.write: a client that sends but never reads is closed once the
 * edge's output stops making progress, long before max_output fills. */
static void test_write_timeout(void **state)
{
	static struct bm_h_node g;
	const struct bm_h_node *one[1] = { &srv };
	char *tok = bm_h_token(&srv, "flood@tools", "phone", 600);
	struct bm_client_opts o = { .token = tok };
	struct bm_client *c;
	char err[256], out[1 << 16];
	uint64_t t0, deadline;
	int rc = 0, sent = 0;

	assert_int_equal(bm_h_start_signal(&g, "tools-gw", one, 1,
		"{\"limits\":{\"rate\":1000000,\"burst\":1000000,\"max_output\":\"64MiB\"},"
		"\"timeouts\":{\"write\":\"1s\"}}"), 0);
	o.url = g.url;
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), 0);
	t0 = bm_mono_ms();
	/* 800,000 pongs (~24 MB) are more than loopback TCP can buffer, and far
	 * below max_output: the edge's queue stays non-empty once the client
	 * stops, and only timeouts.write can close the session.  (The edge may
	 * already close it during the flood; then a send fails, which is fine.) */
	deadline = t0 + 30000;
	while (sent < 800000 && bm_mono_ms() < deadline && (rc = bm_client_send_ping(c)) == 0)
		sent++;
	(void)rc;
	/* Write timeout 1 s, checked every 5 s. */
	deadline = bm_mono_ms() + 20000;
	do {
		assert_int_equal(bm_h_http(g.admin, "GET", "/metrics", NULL, NULL, out,
					   sizeof(out)), 200);
		if (!strstr(out, "bimip_signal_slow_consumers_total 1"))
			poll(NULL, 0, 50);
	} while (!strstr(out, "bimip_signal_slow_consumers_total 1") && bm_mono_ms() < deadline);
	assert_non_null(strstr(out, "bimip_signal_slow_consumers_total 1"));
	assert_true(bm_h_log_has(&g, "no write progress"));
	print_message("never-reading client closed after %d pings, %llu ms\n", sent,
		      (unsigned long long)(bm_mono_ms() - t0));
	bm_client_abort(c);
	assert_int_equal(bm_h_stop(&g, SIGTERM), 0);
	free(tok);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_help_and_configs),
		cmocka_unit_test(test_bimipctl),
		cmocka_unit_test(test_bimip_cli),
		cmocka_unit_test(test_token_refresh),
		cmocka_unit_test(test_session_closed_at_token_expiry),
		cmocka_unit_test(test_write_timeout),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
