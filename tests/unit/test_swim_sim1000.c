/*
 * SWIM at scale: 1,000 simulated nodes with 5% loss join through one seed,
 * converge, then one crashes and every other node must mark it dead.
 * Prints periods, packets and wall time; kept in its own binary because it
 * is the slowest test (budget: well under 60 s on 2 cores).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "bm_log.h"
#include "bm_swim.h"
#include "tests/support/sim_cluster.h"

static const uint8_t key[] = "test cluster key";

static double secs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_sim_1000(void **state)
{
	struct bm_swim_config cfg;
	struct sim_cluster *c;
	struct sim_net_stats ns;
	struct sim_state_pred dead = { "node-500", BM_SWIM_DEAD };
	unsigned n = 1000, want = n;
	double t0 = secs();
	int periods;

	memset(&cfg, 0, sizeof(cfg));
	cfg.key = key;
	cfg.key_len = sizeof(key) - 1;
	cfg.period_ms = 1000;
	cfg.probe_timeout_ms = 400;
	cfg.sync_periods = 10;
	c = sim_cluster_new(n, 50, 1000, &cfg);
	assert_non_null(c);
	sim_net_set_loss(c->net, 0.05);
	sim_net_set_delay(c->net, 1, 20);
	sim_cluster_join_all(c, 0);
	periods = sim_cluster_run_until(c, sim_cluster_all_live, &want, 200);
	sim_net_stats(c->net, &ns);
	printf("swim-sim: join: all know all, none dead n=%u  loss= 5%% periods=%d "
	       "packets=%llu (%.1f/node/period) wall=%.1fs\n", n, periods,
	       (unsigned long long)ns.sent,
	       periods > 0 ? (double)ns.sent / n / periods : 0.0, secs() - t0);
	assert_true(periods >= 0 && periods <= 150);
	assert_int_equal(c->false_deads, 0);

	t0 = secs();
	sim_cluster_crash(c, 500);
	periods = sim_cluster_run_until(c, sim_cluster_all_see, &dead, 200);
	printf("swim-sim: crash detected by all         n=%u  loss= 5%% periods=%d "
	       "false_deads=%llu wall=%.1fs\n", n, periods,
	       (unsigned long long)c->false_deads, secs() - t0);
	assert_true(periods >= 0 && periods <= 100);
	assert_int_equal(c->false_deads, 0);
	for (unsigned i = 0; i < n; i++) {
		if (i == 500)
			continue;
		assert_int_equal(bm_swim_count(c->node[i], BM_SWIM_ALIVE) +
				 bm_swim_count(c->node[i], BM_SWIM_SUSPECT), n - 1);
		assert_int_equal(bm_swim_count(c->node[i], BM_SWIM_DEAD), 1);
	}
	sim_cluster_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sim_1000),
	};

	bm_log_set_level(BM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
