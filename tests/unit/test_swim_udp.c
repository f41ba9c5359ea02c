/*
 * Real sockets: three bm_swim nodes on 127.0.0.1 (ports from binding 0), one
 * libevent base, join through node 0, converge, share a registry entry, and
 * see a graceful leave; every wait is bounded by wall-clock time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <event2/event.h>

#include "bm_cluster.h"
#include "bm_log.h"
#include "bm_registry.h"
#include "bm_swim.h"
#include "bm_swim_udp.h"
#include "bm_time.h"

#include <sys/socket.h>

#define N 3

struct node {
	struct bm_swim_udp *udp;
	struct bm_swim *swim;
	char addr[64], id[16];
	unsigned events;
};

static struct node nodes[N];

static void on_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	struct node *n = ud;

	n->events++;
}

static int converged(void *arg)
{
	for (int i = 0; i < N; i++)
		if (bm_swim_count(nodes[i].swim, BM_SWIM_ALIVE) != N)
			return 0;
	return 1;
}

static int sees_entry(void *arg)
{
	for (int i = 0; i < N; i++)
		if (bm_registry_lookup(bm_swim_registry(nodes[i].swim), "alice", NULL, NULL) != 1)
			return 0;
	return 1;
}

static int sees_left(void *arg)
{
	for (int i = 0; i < N - 1; i++) {
		struct bm_swim_member m;
		if (bm_swim_member_get(nodes[i].swim, nodes[N - 1].id, &m) != 0 ||
		    m.state != BM_SWIM_LEFT)
			return 0;
	}
	return 1;
}

/* Runs the loop until pred holds or timeout_ms of wall time pass. */
static int run_until(struct event_base *base, int (*pred)(void *), unsigned timeout_ms)
{
	uint64_t end = bm_mono_ms() + timeout_ms;

	while (bm_mono_ms() < end) {
		if (pred(NULL))
			return 1;
		/* the swim tick timers fire every 20 ms, so ONCE returns */
		event_base_loop(base, EVLOOP_ONCE);
	}
	return pred(NULL);
}

static void test_three_nodes_loopback(void **state)
{
	struct event_base *base = event_base_new();
	uint64_t t0;
	const char *devs[] = { "phone" };

	assert_non_null(base);
	for (int i = 0; i < N; i++) {
		struct bm_swim_config cfg;
		struct node *n = &nodes[i];

		assert_int_equal(bm_swim_udp_open(&n->udp, base, "127.0.0.1:0"), 0);
		assert_true(bm_swim_udp_port(n->udp) > 0);
		snprintf(n->addr, sizeof(n->addr), "127.0.0.1:%u", bm_swim_udp_port(n->udp));
		snprintf(n->id, sizeof(n->id), "udp-%d", i);
		memset(&cfg, 0, sizeof(cfg));
		cfg.id = n->id;
		cfg.role = i == 0 ? BM_SWIM_ROLE_SERVER : BM_SWIM_ROLE_SIGNAL;
		cfg.addr = n->addr;
		cfg.zmq = "tcp://127.0.0.1:1";
		cfg.key = (const uint8_t *)"loopback key";
		cfg.key_len = 12;
		cfg.seed = (uint64_t)i + 1;
		cfg.registry_epoch = (uint64_t)bm_wall_ms();
		cfg.send = bm_swim_udp_send;
		cfg.send_ctx = n->udp;
		cfg.on_member = on_member;
		cfg.ud = n;
		cfg.period_ms = 100;
		cfg.sync_periods = 5;
		assert_int_equal(bm_swim_new(&n->swim, &cfg), 0);
		assert_int_equal(bm_swim_udp_start(n->udp, n->swim, 20), 0);
	}
	t0 = bm_mono_ms();
	for (int i = 1; i < N; i++)
		assert_int_equal(bm_swim_join(nodes[i].swim, nodes[0].addr, bm_mono_ms()), 0);
	assert_true(run_until(base, converged, 10000));
	printf("udp: %d nodes converged in %llu ms (period 100 ms)\n", N,
	       (unsigned long long)(bm_mono_ms() - t0));
	assert_true(nodes[1].events >= N - 1);

	{
		char owner[BM_SWIM_ID_MAX + 1];
		assert_int_equal(bm_registry_owner(bm_swim_registry(nodes[2].swim), "alice", owner), 0);
		assert_string_equal(owner, "udp-0");
	}
	assert_int_equal(bm_registry_set(bm_swim_registry(nodes[1].swim), "alice", devs, 1), 0);
	assert_true(run_until(base, sees_entry, 10000));

	bm_swim_leave(nodes[N - 1].swim, bm_mono_ms());
	assert_true(run_until(base, sees_left, 10000));

	for (int i = 0; i < N; i++) {
		struct bm_swim_stats st;
		bm_swim_stats(nodes[i].swim, &st);
		assert_int_equal(st.bad_auth, 0);
		assert_int_equal(st.bad_decode, 0);
		bm_swim_udp_close(nodes[i].udp);
		bm_swim_free(nodes[i].swim);
	}
	event_base_free(base);
}

static void test_parse(void **state)
{
	struct sockaddr_storage ss;

	assert_true(bm_swim_udp_parse("127.0.0.1:80", (struct sockaddr *)&ss, sizeof(ss)) > 0);
	assert_true(bm_swim_udp_parse("[::1]:80", (struct sockaddr *)&ss, sizeof(ss)) > 0);
	assert_true(bm_swim_udp_parse("127.0.0.1", (struct sockaddr *)&ss, sizeof(ss)) < 0);
	assert_true(bm_swim_udp_parse("127.0.0.1:99999", (struct sockaddr *)&ss, sizeof(ss)) < 0);
	assert_true(bm_swim_udp_parse("host:1", (struct sockaddr *)&ss, sizeof(ss)) < 0);
	assert_true(bm_swim_udp_parse(":1", (struct sockaddr *)&ss, sizeof(ss)) < 0);
}

/* The admin address a node advertises (421 answers point there). */
static void test_admin_addr(void **state)
{
	struct bm_cluster_conf c;
	char out[200];

	memset(&c, 0, sizeof(c));
	bm_cluster_admin_addr("10.0.0.5:4101", 4101, &c, out, sizeof(out));
	assert_string_equal(out, "10.0.0.5:4101");
	bm_cluster_admin_addr("127.0.0.1:0", 33865, &c, out, sizeof(out));
	assert_string_equal(out, "127.0.0.1:33865");
	snprintf(c.bind, sizeof(c.bind), "10.1.2.3:4102");
	bm_cluster_admin_addr("0.0.0.0:4101", 4101, &c, out, sizeof(out));
	assert_string_equal(out, "10.1.2.3:4101");
	snprintf(c.advertise, sizeof(c.advertise), "node7.example:4102");
	bm_cluster_admin_addr("0.0.0.0:4101", 4101, &c, out, sizeof(out));
	assert_string_equal(out, "node7.example:4101");
	memset(&c, 0, sizeof(c));
	bm_cluster_admin_addr(":4101", 4101, &c, out, sizeof(out));
	assert_string_equal(out, "127.0.0.1:4101");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_admin_addr),
		cmocka_unit_test(test_three_nodes_loopback),
	};

	bm_log_set_level(BM_LOG_WARN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
