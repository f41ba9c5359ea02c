/*
 * Registry: rendezvous ownership moves ~1/n of the keys, the device map
 * merges commutatively and idempotently, entries of a dead writer are
 * dropped, and the map converges over gossip in a simulated cluster.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_registry.h"
#include "bm_swim.h"
#include "tests/support/sim_cluster.h"

#define NKEYS 20000

static void eid_of(unsigned i, char *out)
{
	sprintf(out, "user-%u@example.org", i);
}

static void owners(struct bm_registry *r, char (*own)[BM_SWIM_ID_MAX + 1])
{
	char eid[64];

	for (unsigned i = 0; i < NKEYS; i++) {
		eid_of(i, eid);
		assert_int_equal(bm_registry_owner(r, eid, own[i]), 0);
	}
}

static void test_rendezvous_moves_one_nth(void **state)
{
	struct bm_registry *r = bm_registry_new("observer", 1);
	char (*before)[BM_SWIM_ID_MAX + 1] = calloc(NKEYS, sizeof(*before));
	char (*after)[BM_SWIM_ID_MAX + 1] = calloc(NKEYS, sizeof(*after));
	unsigned n = 10, moved = 0, per[11] = { 0 };
	char id[32], out[BM_SWIM_ID_MAX + 1];

	assert_non_null(r);
	assert_int_equal(bm_registry_owner(r, "x", out), BM_ENOENT);
	for (unsigned i = 0; i < n; i++) {
		sprintf(id, "server-%u", i);
		assert_int_equal(bm_registry_member(r, id, BM_SWIM_ROLE_SERVER, BM_SWIM_ALIVE), 0);
	}
	/* signal members never own anything */
	assert_int_equal(bm_registry_member(r, "signal-0", BM_SWIM_ROLE_SIGNAL, BM_SWIM_ALIVE), 0);
	assert_int_equal(bm_registry_server_count(r), n);
	owners(r, before);
	for (unsigned i = 0; i < NKEYS; i++)
		per[atoi(before[i] + 7)]++;
	for (unsigned i = 0; i < n; i++) /* balance: each within +-25% of 1/n */
		assert_true(per[i] > NKEYS / n * 3 / 4 && per[i] < NKEYS / n * 5 / 4);

	/* a server joins: only keys it now wins move, about 1/(n+1) of them */
	assert_int_equal(bm_registry_member(r, "server-10", BM_SWIM_ROLE_SERVER, BM_SWIM_ALIVE), 0);
	owners(r, after);
	for (unsigned i = 0; i < NKEYS; i++) {
		if (strcmp(before[i], after[i]) != 0) {
			moved++;
			assert_string_equal(after[i], "server-10");
		}
	}
	printf("registry: join of 11th server moved %u of %u keys (%.2f%%, ideal %.2f%%)\n",
	       moved, NKEYS, 100.0 * moved / NKEYS, 100.0 / (n + 1));
	assert_true(moved > NKEYS / (n + 1) / 2 && moved < NKEYS / (n + 1) * 3 / 2);

	/* a server dies (or is suspected): it keeps its keys, whose data is on
	 * its disk; its users wait for it rather than move without history */
	memcpy(before, after, NKEYS * sizeof(*before));
	assert_int_equal(bm_registry_member(r, "server-3", BM_SWIM_ROLE_SERVER, BM_SWIM_SUSPECT), 0);
	assert_int_equal(bm_registry_member(r, "server-3", BM_SWIM_ROLE_SERVER, BM_SWIM_DEAD), 0);
	assert_int_equal(bm_registry_server_count(r), n + 1);
	owners(r, after);
	assert_memory_equal(before, after, NKEYS * sizeof(*before));
	/* back alive: nothing moves either */
	assert_int_equal(bm_registry_member(r, "server-3", BM_SWIM_ROLE_SERVER, BM_SWIM_ALIVE), 0);
	assert_int_equal(bm_registry_server_count(r), n + 1);

	/* a server leaves: only its keys move */
	assert_int_equal(bm_registry_member(r, "server-3", BM_SWIM_ROLE_SERVER, BM_SWIM_LEFT), 0);
	assert_int_equal(bm_registry_server_count(r), n);
	owners(r, after);
	moved = 0;
	for (unsigned i = 0; i < NKEYS; i++) {
		if (strcmp(before[i], after[i]) != 0) {
			moved++;
			assert_string_equal(before[i], "server-3");
		}
		assert_string_not_equal(after[i], "server-3");
	}
	printf("registry: leave of 1 of 11 servers moved %u of %u keys (%.2f%%)\n",
	       moved, NKEYS, 100.0 * moved / NKEYS);
	assert_true(moved > NKEYS / (n + 1) / 2 && moved < NKEYS / (n + 1) * 3 / 2);
	free(before);
	free(after);
	bm_registry_free(r);
}

/* --- merge ------------------------------------------------------------------ */

struct rec_store {
	char w[8], e[16], d[3][16];
	struct bm_swim_reg_rec rec;
};

static void make_rec(struct rec_store *s, unsigned writer, unsigned eid, uint64_t epoch,
		     uint64_t version, unsigned ndev)
{
	memset(s, 0, sizeof(*s));
	sprintf(s->w, "sig-%u", writer);
	sprintf(s->e, "eid-%u", eid);
	s->rec.writer = bm_swim_str_of(s->w);
	s->rec.eid = bm_swim_str_of(s->e);
	s->rec.epoch = epoch;
	s->rec.version = version;
	s->rec.ndev = (uint8_t)ndev;
	for (unsigned i = 0; i < ndev; i++) {
		sprintf(s->d[i], "dev-%u-%u", (unsigned)version, i);
		s->rec.dev[i] = bm_swim_str_of(s->d[i]);
	}
}

static struct bm_registry *observer(void)
{
	struct bm_registry *r = bm_registry_new("obs", 1);

	assert_non_null(r);
	for (unsigned w = 0; w < 3; w++) {
		char id[8];
		sprintf(id, "sig-%u", w);
		assert_int_equal(bm_registry_member(r, id, BM_SWIM_ROLE_SIGNAL, BM_SWIM_ALIVE), 0);
	}
	return r;
}

static void test_merge_commutative_idempotent(void **state)
{
	enum { N = 300 };
	static struct rec_store recs[N];
	unsigned order[N];
	uint64_t fp0 = 0;
	uint64_t seed = 12345;

	/* per writer, versions 1..100 spread over 20 eids, some tombstones;
	 * writer 2 also has an older epoch that must lose */
	for (unsigned i = 0; i < N; i++) {
		unsigned w = i % 3, v = i / 3 + 1;
		make_rec(&recs[i], w, (v * 7) % 20, w == 2 && v < 30 ? 1 : 2, v, v % 5 ? v % 3 + 1 : 0);
	}
	for (unsigned round = 0; round < 20; round++) {
		struct bm_registry *r = observer();
		uint64_t fp;

		for (unsigned i = 0; i < N; i++)
			order[i] = i;
		for (unsigned i = N; i > 1; i--) {
			unsigned j, t;
			seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
			j = (unsigned)((seed >> 33) % i);
			t = order[i - 1];
			order[i - 1] = order[j];
			order[j] = t;
		}
		for (unsigned i = 0; i < N; i++)
			assert_true(bm_registry_merge(r, &recs[order[i]].rec) >= 0);
		fp = bm_registry_fingerprint(r);
		/* idempotent: everything again changes nothing */
		for (unsigned i = 0; i < N; i++)
			assert_int_equal(bm_registry_merge(r, &recs[order[i]].rec), 0);
		assert_true(bm_registry_fingerprint(r) == fp);
		if (round == 0)
			fp0 = fp;
		assert_true(fp == fp0); /* commutative: any order, same map */
		bm_registry_free(r);
	}
}

static int visits;
static void on_visit(void *ud, const char *writer, const char *const *dev, unsigned n)
{
	visits++;
	assert_true(n >= 1);
}

static void test_dead_writer_dropped(void **state)
{
	struct bm_registry *r = observer();
	struct rec_store s;
	const char *devs[] = { "phone", "laptop" };

	make_rec(&s, 0, 1, 5, 1, 2);
	assert_int_equal(bm_registry_merge(r, &s.rec), 1);
	make_rec(&s, 1, 1, 5, 1, 1);
	assert_int_equal(bm_registry_merge(r, &s.rec), 1);
	visits = 0;
	assert_int_equal(bm_registry_lookup(r, "eid-1", on_visit, NULL), 2);
	assert_int_equal(visits, 2);
	/* local write by the observer (it is a writer too) */
	assert_int_equal(bm_registry_set(r, "eid-1", devs, 2), 0);
	assert_int_equal(bm_registry_lookup(r, "eid-1", NULL, NULL), 3);

	/* sig-0 dies: its entries go, and stale copies are refused */
	assert_int_equal(bm_registry_member(r, "sig-0", BM_SWIM_ROLE_SIGNAL, BM_SWIM_DEAD), 0);
	assert_int_equal(bm_registry_lookup(r, "eid-1", NULL, NULL), 2);
	assert_int_equal(bm_registry_set(r, "eid-1", NULL, 0), 0);
	assert_int_equal(bm_registry_lookup(r, "eid-1", NULL, NULL), 1);
	make_rec(&s, 0, 1, 5, 1, 2);
	assert_int_equal(bm_registry_merge(r, &s.rec), 0);
	/* unknown writer refused */
	make_rec(&s, 9, 1, 5, 1, 2);
	assert_int_equal(bm_registry_merge(r, &s.rec), 0);
	/* a restarted writer (higher epoch) replaces everything it had */
	make_rec(&s, 1, 2, 5, 2, 1);
	assert_int_equal(bm_registry_merge(r, &s.rec), 1);
	make_rec(&s, 1, 3, 6, 1, 1);
	assert_int_equal(bm_registry_merge(r, &s.rec), 1);
	assert_int_equal(bm_registry_lookup(r, "eid-1", NULL, NULL), 0);
	assert_int_equal(bm_registry_lookup(r, "eid-2", NULL, NULL), 0);
	assert_int_equal(bm_registry_lookup(r, "eid-3", NULL, NULL), 1);
	/* bad input */
	assert_int_equal(bm_registry_set(r, "", devs, 1), BM_EINVAL);
	assert_int_equal(bm_registry_set(r, "x", devs, BM_SWIM_DEV_MAX + 1), BM_ETOOBIG);
	bm_registry_free(r);
}

/* --- dissemination over gossip ------------------------------------------- */

struct fp_pred {
	unsigned expect_size;
};

static int all_same_registry(struct sim_cluster *c, void *arg)
{
	struct fp_pred *p = arg;
	uint64_t fp = 0;
	int first = 1;

	for (unsigned i = 0; i < c->n; i++) {
		struct bm_registry *r;
		if (!sim_cluster_up(c, i))
			continue;
		r = bm_swim_registry(c->node[i]);
		if (bm_registry_size(r) != p->expect_size)
			return 0;
		if (first)
			fp = bm_registry_fingerprint(r);
		else if (bm_registry_fingerprint(r) != fp)
			return 0;
		first = 0;
	}
	return 1;
}

static void test_registry_gossip(void **state)
{
	struct bm_swim_config cfg;
	struct sim_cluster *c;
	unsigned n = 40, nservers = 8, per = 60, want = n;
	struct fp_pred pred;
	int periods;
	char eid[64], own0[BM_SWIM_ID_MAX + 1], own[BM_SWIM_ID_MAX + 1];

	memset(&cfg, 0, sizeof(cfg));
	cfg.key = (const uint8_t *)"k";
	cfg.key_len = 1;
	cfg.period_ms = 1000;
	cfg.sync_periods = 5;
	c = sim_cluster_new(n, nservers, 3, &cfg);
	assert_non_null(c);
	sim_net_set_loss(c->net, 0.05);
	sim_cluster_join_all(c, 0);
	assert_true(sim_cluster_run_until(c, sim_cluster_all_alive, &want, 100) >= 0);

	/* every signal node holds `per` users; user k sits on two signals */
	for (unsigned i = nservers; i < n; i++) {
		for (unsigned k = 0; k < per; k++) {
			const char *devs[] = { "ios", "web" };
			eid_of((i * per + k) % ((n - nservers) * per / 2), eid);
			assert_int_equal(bm_registry_set(bm_swim_registry(c->node[i]), eid, devs, 1 + k % 2), 0);
		}
	}
	pred.expect_size = (n - nservers) * per;
	periods = sim_cluster_run_until(c, all_same_registry, &pred, 200);
	printf("registry-sim: %u entries from %u writers on %u nodes, loss 5%%: "
	       "converged in %d periods\n", pred.expect_size, n - nservers, n, periods);
	assert_true(periods >= 0 && periods <= 100);

	/* everyone agrees on owners and on who holds a user */
	for (unsigned k = 0; k < 200; k++) {
		eid_of(k, eid);
		assert_int_equal(bm_registry_owner(bm_swim_registry(c->node[0]), eid, own0), 0);
		for (unsigned i = 1; i < n; i++) {
			assert_int_equal(bm_registry_owner(bm_swim_registry(c->node[i]), eid, own), 0);
			assert_string_equal(own, own0);
			assert_int_equal(bm_registry_lookup(bm_swim_registry(c->node[i]), eid, NULL, NULL),
					 bm_registry_lookup(bm_swim_registry(c->node[0]), eid, NULL, NULL));
		}
	}

	/* a burst far beyond what piggybacking carries: digest pulls repair it */
	for (unsigned k = 0; k < 1500; k++) {
		const char *devs[] = { "tablet" };
		sprintf(eid, "burst-%u", k);
		assert_int_equal(bm_registry_set(bm_swim_registry(c->node[n - 1]), eid, devs, 1), 0);
	}
	pred.expect_size += 1500;
	periods = sim_cluster_run_until(c, all_same_registry, &pred, 300);
	printf("registry-sim: burst of 1500 entries from one writer: converged in %d periods\n",
	       periods);
	assert_true(periods >= 0 && periods <= 200);

	/* a signal node crashes: its entries vanish everywhere once it is dead */
	sim_cluster_crash(c, n - 1);
	pred.expect_size -= 1500 + per;
	periods = sim_cluster_run_until(c, all_same_registry, &pred, 200);
	printf("registry-sim: writer crashed: its entries dropped everywhere in %d periods\n",
	       periods);
	assert_true(periods >= 0 && periods <= 100);
	sim_cluster_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rendezvous_moves_one_nth),
		cmocka_unit_test(test_merge_commutative_idempotent),
		cmocka_unit_test(test_dead_writer_dropped),
		cmocka_unit_test(test_registry_gossip),
	};

	bm_log_set_level(BM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
