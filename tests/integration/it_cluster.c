/*
 * Cluster membership across real processes: three bimip-server and two
 * bimip-signal nodes gossip on loopback, find each other through one seed,
 * signals discover the servers' ZeroMQ endpoints from gossip, a killed
 * server is declared dead, a leaving signal is seen as left, and a node with
 * the wrong cluster key is never admitted.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <cmocka.h>

#include <jansson.h>

#include "bm_harness.h"
#include "bm_time.h"

#define KEY "it-cluster-secret-key"

static struct bm_h_node s[3], g[2], intruder;

static json_t *members(const struct bm_h_node *n)
{
	static char out[1 << 16];
	int st = bm_h_http(n->admin, "GET", "/v1/cluster/members", BM_H_ADMIN_KEY, NULL, out,
			   sizeof(out));
	return st == 200 ? json_loads(out, 0, NULL) : NULL;
}

/* State of member id in n's view ("" when unknown). */
static const char *state_of(const struct bm_h_node *n, const char *id, char *buf, size_t cap)
{
	bm_h_member(n, id, buf, cap, NULL, 0);
	return buf;
}

/* What bimipctl ARGS against n's admin API prints. */
static void bimipctl_out(const struct bm_h_node *n, const char *args, char *out, size_t cap)
{
	const char *b = getenv("BIMIP_BIN");
	char cmd[1024];
	FILE *f;
	size_t got;

	snprintf(cmd, sizeof(cmd), "%.600s/bimipctl --admin %s --key %s %s",
		 b ? b : "build/bin", n->admin, BM_H_ADMIN_KEY, args);
	f = popen(cmd, "r");
	got = f ? fread(out, 1, cap - 1, f) : 0;
	out[got] = 0;
	if (f)
		pclose(f);
}

static int count_alive(const struct bm_h_node *n)
{
	json_t *m = members(n), *e;
	size_t i;
	int alive = 0;

	json_array_foreach(json_object_get(m, "members"), i, e)
		alive += !strcmp(json_string_value(json_object_get(e, "state")), "alive");
	json_decref(m);
	return alive;
}

/* Wait until every listed node sees id in state; returns the ms it took. */
static long wait_state(struct bm_h_node *const *nodes, int n, const char *id,
		       const char *state, int timeout_ms)
{
	uint64_t t0 = bm_mono_ms(), deadline = t0 + (uint64_t)timeout_ms;
	char buf[32];

	for (;;) {
		int ok = 1;
		for (int i = 0; i < n && ok; i++)
			ok = !strcmp(state_of(nodes[i], id, buf, sizeof(buf)), state);
		if (ok)
			return (long)(bm_mono_ms() - t0);
		if (bm_mono_ms() > deadline)
			fail_msg("'%s' not %s everywhere within %d ms", id, state, timeout_ms);
		poll(NULL, 0, 20);
	}
}

static void test_membership(void **state)
{
	char extra[512], name[16], out[65536];
	const struct bm_h_node *none[1] = { NULL };
	struct bm_h_node *all[5] = { &s[0], &s[1], &s[2], &g[0], &g[1] };
	uint64_t t0;
	long ms;

	bm_h_init();
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\","
		 "\"period\":\"200ms\"}}", KEY);
	assert_int_equal(bm_h_start_server(&s[0], "c-s0", extra), 0);
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\","
		 "\"period\":\"200ms\",\"seeds\":[\"%s\"]}}", KEY, s[0].gossip);
	t0 = bm_mono_ms();
	for (int i = 1; i < 3; i++) {
		snprintf(name, sizeof(name), "c-s%d", i);
		assert_int_equal(bm_h_start_server(&s[i], name, extra), 0);
	}
	/* Signals know no server but the gossip seed: "servers" is empty. */
	{
		char sx[600];
		snprintf(sx, sizeof(sx), "{\"servers\":[],\"cluster\":{\"bind\":\"127.0.0.1:0\","
			 "\"key\":\"%s\",\"period\":\"200ms\",\"seeds\":[\"%s\"]}}", KEY, s[0].gossip);
		for (int i = 0; i < 2; i++) {
			snprintf(name, sizeof(name), "c-g%d", i);
			assert_int_equal(bm_h_start_signal(&g[i], name, none, 0, sx), 0);
		}
	}
	/* Everyone sees everyone. */
	for (int i = 0; i < 5; i++) {
		uint64_t deadline = bm_mono_ms() + 20000;
		while (count_alive(all[i]) != 5) {
			if (bm_mono_ms() > deadline)
				fail_msg("%s sees %d alive members, not 5", all[i]->name,
					 count_alive(all[i]));
			poll(NULL, 0, 20);
		}
	}
	print_message("5 nodes converged in %llu ms (200 ms period)\n",
		      (unsigned long long)(bm_mono_ms() - t0));
	/* The signals found all three servers' ZeroMQ endpoints by gossip. */
	for (int i = 0; i < 2; i++) {
		uint64_t deadline = bm_mono_ms() + 10000;
		for (;;) {
			json_t *st;
			int up = 0;
			size_t k;
			json_t *e;
			assert_int_equal(bm_h_http(g[i].admin, "GET", "/v1/status", BM_H_ADMIN_KEY,
						   NULL, out, sizeof(out)), 200);
			st = json_loads(out, 0, NULL);
			json_array_foreach(json_object_get(st, "servers"), k, e)
				up += json_is_true(json_object_get(e, "up"));
			json_decref(st);
			if (up == 3)
				break;
			if (bm_mono_ms() > deadline)
				fail_msg("%s has %d servers up, not 3", g[i].name, up);
			poll(NULL, 0, 20);
		}
	}
	/* A node with another key is never admitted. */
	{
		char bad[512];
		snprintf(bad, sizeof(bad), "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"wrong\","
			 "\"period\":\"200ms\",\"seeds\":[\"%s\"]}}", s[0].gossip);
		assert_int_equal(bm_h_start_server(&intruder, "c-intruder", bad), 0);
	}
	/* /metrics counts the members by state, and the intruder's packets. */
	{
		uint64_t deadline = bm_mono_ms() + 10000;
		for (;;) {
			assert_int_equal(bm_h_http(s[0].admin, "GET", "/metrics", NULL, NULL, out,
						   sizeof(out)), 200);
			if (strstr(out, "bimip_cluster_members_alive 5") &&
			    !strstr(out, "bimip_cluster_gossip_bad_auth_total 0"))
				break;
			if (bm_mono_ms() > deadline)
				fail_msg("metrics never showed 5 alive and refused packets:\n%s", out);
			poll(NULL, 0, 50);
		}
	}
	/* kill -9 a server: the others declare it dead. */
	assert_int_equal(bm_h_stop(&s[2], SIGKILL), 128 + SIGKILL);
	{
		struct bm_h_node *rest[4] = { &s[0], &s[1], &g[0], &g[1] };
		ms = wait_state(rest, 4, "c-s2", "dead", 30000);
		print_message("killed server declared dead everywhere after %ld ms\n", ms);
	}
	/* bimipctl cluster leave on a signal: seen as left. */
	{
		const char *b = getenv("BIMIP_BIN");
		char cmd[512];
		struct bm_h_node *rest[3] = { &s[0], &s[1], &g[0] };
		snprintf(cmd, sizeof(cmd), "%s/bimipctl --admin %s --key %s cluster leave >/dev/null",
			 b ? b : "build/bin", g[1].admin, BM_H_ADMIN_KEY);
		assert_int_equal(system(cmd), 0);
		ms = wait_state(rest, 3, "c-g1", "left", 20000);
		print_message("leaving signal seen as left after %ld ms\n", ms);
		bimipctl_out(&s[0], "--json cluster members", out, sizeof(out));
		assert_non_null(strstr(out, "\"c-g0\""));
		assert_non_null(strstr(out, "\"role\": \"signal\""));
		/* The table operators read: one line per member. */
		bimipctl_out(&s[0], "cluster members", out, sizeof(out));
		assert_non_null(strstr(out, "ID "));
		assert_non_null(strstr(out, "INCARNATION"));
		assert_non_null(strstr(out, "c-g1"));
		assert_non_null(strstr(out, " left "));
		assert_non_null(strstr(out, "(this node)"));
	}
	{
		char buf[32];
		for (int i = 0; i < 2; i++)
			assert_string_equal(state_of(&s[i], "c-intruder", buf, sizeof(buf)), "");
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(bm_h_stop(&g[i], SIGTERM), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(bm_h_stop(&s[i], SIGTERM), 0);
	assert_int_equal(bm_h_stop(&intruder, SIGTERM), 0);
	assert_int_equal(bm_h_check_logs(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_membership),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
