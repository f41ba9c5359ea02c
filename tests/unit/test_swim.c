/*
 * SWIM membership in a simulated network (tests/support/sim_cluster.h):
 * join through one seed, crash detection, partition and heal, graceful
 * leave, false positives under loss.  Every scenario prints the number of
 * protocol periods it took and asserts a generous bound.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_swim.h"
#include "tests/support/sim_cluster.h"

static const uint8_t key[] = "test cluster key";

static struct bm_swim_config tmpl(void)
{
	struct bm_swim_config cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.key = key;
	cfg.key_len = sizeof(key) - 1;
	cfg.period_ms = 1000;
	cfg.probe_timeout_ms = 400;
	cfg.sync_periods = 5;
	return cfg;
}

static struct sim_cluster *boot(unsigned n, double loss, uint64_t seed, int *periods)
{
	struct bm_swim_config cfg = tmpl();
	struct sim_cluster *c = sim_cluster_new(n, n / 4 + 1, seed, &cfg);
	unsigned want = n;

	assert_non_null(c);
	sim_net_set_loss(c->net, loss);
	sim_net_set_delay(c->net, 1, 20);
	sim_cluster_join_all(c, 0);
	*periods = sim_cluster_run_until(c, sim_cluster_all_alive, &want, 300);
	return c;
}

static void report(const char *what, unsigned n, double loss, int periods)
{
	printf("swim-sim: %-28s n=%-5u loss=%2.0f%% periods=%d\n", what, n, loss * 100, periods);
	fflush(stdout);
}

static void scenario_join_crash(unsigned n, double loss, unsigned bound)
{
	int periods;
	struct sim_cluster *c = boot(n, loss, 42 + n, &periods);
	struct sim_state_pred dead = { "node-3", BM_SWIM_DEAD };

	report("join+converge", n, loss, periods);
	assert_true(periods >= 0 && (unsigned)periods <= bound);

	sim_cluster_crash(c, 3);
	periods = sim_cluster_run_until(c, sim_cluster_all_see, &dead, 300);
	report("crash detected by all", n, loss, periods);
	assert_true(periods >= 0 && (unsigned)periods <= bound);
	{
		/* and nobody else got hurt meanwhile */
		unsigned want = n - 1;
		periods = sim_cluster_run_until(c, sim_cluster_all_alive, &want, 100);
		assert_true(periods >= 0);
	}
	sim_cluster_free(c);
}

static void test_sim_5(void **state)
{
	scenario_join_crash(5, 0.05, 60);
}

static void test_sim_100(void **state)
{
	scenario_join_crash(100, 0.05, 120);
}

static void test_partition_heal(void **state)
{
	unsigned n = 100, want = n;
	int periods;
	struct sim_cluster *c = boot(n, 0.05, 7, &periods);

	assert_true(periods >= 0);
	for (unsigned i = n / 2; i < n; i++)
		sim_net_set_group(c->net, i, 1);
	sim_net_partition(c->net, 1);
	/* the first half declares the other side (e.g. node-99) dead */
	for (int p = 0; p < 300; p++) {
		int ok = 1;
		for (unsigned i = 0; i < n / 2 && ok; i++) {
			struct bm_swim_member m;
			ok = bm_swim_member_get(c->node[i], "node-99", &m) == 0 &&
			     m.state == BM_SWIM_DEAD &&
			     bm_swim_count(c->node[i], BM_SWIM_ALIVE) == n / 2;
		}
		if (ok) {
			periods = p;
			break;
		}
		periods = -1;
		for (unsigned s = 0; s < c->period_ms / c->step_ms; s++)
			sim_cluster_step(c);
	}
	report("partition: sides split", n, 0.05, periods);
	assert_true(periods >= 0);

	sim_net_partition(c->net, 0);
	periods = sim_cluster_run_until(c, sim_cluster_all_alive, &want, 300);
	report("partition healed: converged", n, 0.05, periods);
	assert_true(periods >= 0 && periods <= 200);
	sim_cluster_free(c);
}

static void test_false_positives(void **state)
{
	unsigned n = 100, want = n;
	int periods;
	struct sim_cluster *c = boot(n, 0.10, 99, &periods);
	struct bm_swim_stats st;
	uint64_t suspects = 0, probes = 0, refutes = 0, failed = 0;

	assert_true(periods >= 0);
	c->false_deads = 0;
	for (unsigned p = 0; p < 300; p++)
		for (unsigned s = 0; s < c->period_ms / c->step_ms; s++)
			sim_cluster_step(c);
	for (unsigned i = 0; i < n; i++) {
		bm_swim_stats(c->node[i], &st);
		suspects += st.suspects;
		probes += st.probes;
		refutes += st.refutes;
		failed += st.probes_failed;
	}
	printf("swim-sim: false positives n=%u loss=10%% periods=300 probes=%llu "
	       "failed_probes=%llu (%.3f%%) suspicion_records=%llu refutes=%llu "
	       "live_declared_dead=%llu\n", n,
	       (unsigned long long)probes, (unsigned long long)failed,
	       probes ? 100.0 * (double)failed / (double)probes : 0.0,
	       (unsigned long long)suspects,
	       (unsigned long long)refutes, (unsigned long long)c->false_deads);
	/* with 10% loss, some suspicion is expected; a live node declared dead
	 * should be (nearly) impossible with indirect probes and refutation */
	assert_true(c->false_deads <= 2);
	assert_true(sim_cluster_run_until(c, sim_cluster_all_alive, &want, 60) >= 0);
	sim_cluster_free(c);
}

static void test_leave(void **state)
{
	int periods;
	struct sim_cluster *c = boot(20, 0.05, 5, &periods);
	struct sim_state_pred left = { "node-7", BM_SWIM_LEFT };

	assert_true(periods >= 0);
	bm_swim_leave(c->node[7], c->now);
	periods = sim_cluster_run_until(c, sim_cluster_all_see, &left, 60);
	report("leave seen by all", 20, 0.05, periods);
	assert_true(periods >= 0);
	assert_int_equal(c->events[BM_SWIM_EV_DEAD], 0);
	sim_cluster_free(c);
}

static void test_restart_rejoins(void **state)
{
	/* a crashed node declared dead comes back (same id) and refutes */
	int periods;
	unsigned want = 10;
	struct sim_cluster *c = boot(10, 0.0, 11, &periods);
	struct sim_state_pred dead = { "node-4", BM_SWIM_DEAD };

	assert_true(periods >= 0);
	sim_cluster_crash(c, 4);
	assert_true(sim_cluster_run_until(c, sim_cluster_all_see, &dead, 60) >= 0);
	sim_net_set_down(c->net, 4, 0);
	periods = sim_cluster_run_until(c, sim_cluster_all_alive, &want, 60);
	report("dead node back, refuted", 10, 0.0, periods);
	assert_true(periods >= 0);
	assert_true(bm_swim_incarnation(c->node[4]) > 0);
	sim_cluster_free(c);
}

static void test_remove_dead(void **state)
{
	/* an operator removes a node that is dead for good; when it comes
	 * back anyway (with stay_left, as a server with stale data does) it
	 * stays out instead of refuting */
	struct bm_swim_config cfg = tmpl();
	struct sim_cluster *c;
	struct sim_state_pred dead = { "node-4", BM_SWIM_DEAD };
	struct sim_state_pred left = { "node-4", BM_SWIM_LEFT };
	struct bm_swim_member v;
	unsigned want = 10;
	int periods;

	cfg.stay_left = 1;
	c = sim_cluster_new(10, 3, 13, &cfg);
	assert_non_null(c);
	sim_cluster_join_all(c, 0);
	assert_true(sim_cluster_run_until(c, sim_cluster_all_alive, &want, 100) >= 0);
	assert_int_equal(bm_swim_remove(c->node[0], "node-5", c->now), BM_ESTATE);  /* alive */
	assert_int_equal(bm_swim_remove(c->node[0], "node-0", c->now), BM_ESTATE);  /* self */
	assert_int_equal(bm_swim_remove(c->node[0], "nobody", c->now), BM_ENOENT);
	sim_cluster_crash(c, 4);
	assert_true(sim_cluster_run_until(c, sim_cluster_all_see, &dead, 60) >= 0);
	assert_int_equal(bm_swim_remove(c->node[0], "node-4", c->now), 0);
	periods = sim_cluster_run_until(c, sim_cluster_all_see, &left, 60);
	report("removal seen by all", 10, 0.0, periods);
	assert_true(periods >= 0);
	sim_net_set_down(c->net, 4, 0);
	for (int i = 0; i < 30; i++)
		sim_cluster_step(c);
	assert_int_equal(bm_swim_member_get(c->node[4], "node-4", &v), 0);
	assert_int_equal(v.state, BM_SWIM_LEFT);
	assert_int_equal(bm_swim_member_get(c->node[1], "node-4", &v), 0);
	assert_int_equal(v.state, BM_SWIM_LEFT);
	sim_cluster_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sim_5),
		cmocka_unit_test(test_sim_100),
		cmocka_unit_test(test_partition_heal),
		cmocka_unit_test(test_false_positives),
		cmocka_unit_test(test_leave),
		cmocka_unit_test(test_restart_rejoins),
		cmocka_unit_test(test_remove_dead),
	};

	bm_log_set_level(BM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
