#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_keyring.h"

struct val {
	int64_t v;
	int n;
};

/* The model: the keys held, oldest first, with their values. */
struct model {
	char **key;
	int64_t *v;
	size_t n, cap, bytes;
};

static void model_drop_oldest(struct model *m)
{
	m->bytes -= strlen(m->key[0]) + 1;
	free(m->key[0]);
	memmove(m->key, m->key + 1, (m->n - 1) * sizeof(*m->key));
	memmove(m->v, m->v + 1, (m->n - 1) * sizeof(*m->v));
	m->n--;
}

static long model_find(const struct model *m, const char *k)
{
	for (size_t i = 0; i < m->n; i++)
		if (!strcmp(m->key[i], k))
			return (long)i;
	return -1;
}

static void check_all(const struct bm_keyring *r, const struct model *m)
{
	assert_int_equal(r->count, m->n);
	for (size_t i = 0; i < m->n; i++) {
		const char *k;
		struct val *v = bm_keyring_at(r, i, &k);

		assert_string_equal(k, m->key[i]);
		assert_int_equal(v->v, m->v[i]);
		assert_ptr_equal(bm_keyring_get(r, m->key[i], strlen(m->key[i])), v);
		assert_string_equal(bm_keyring_key(r, v), m->key[i]);
		assert_int_equal(bm_keyring_seq(r, v), r->evicted + i);
	}
}

/* Random adds and lookups against the model, with a ring small enough that
 * both bounds (key count, arena bytes) forget keys and the arena wraps many
 * times. */
static void run_model(size_t max, size_t arena, int keyspace, int maxlen, unsigned seed)
{
	struct bm_keyring r;
	struct model m = { 0 };
	char key[BM_KEYRING_KEY_MAX + 1];
	uint64_t forgot = 0;

	assert_int_equal(bm_keyring_init(&r, max, arena, sizeof(struct val), 0), 0);
	m.cap = max + 1;
	m.key = calloc(m.cap, sizeof(*m.key));
	m.v = calloc(m.cap, sizeof(*m.v));
	for (int i = 0; i < 40000; i++) {
		int k = (int)((seed = seed * 1103515245 + 12345) >> 8) % keyspace;
		/* The key's length is a function of k, so k names one key. */
		int len = 1 + (k * 7919) % maxlen, existed, hashed;
		uint64_t h;
		long at;
		struct val *v;

		snprintf(key, sizeof(key), "%d\x1f", k);
		while ((int)strlen(key) < len)
			strcat(key, "x");
		at = model_find(&m, key);
		/* Every other step through the hash-once calls (prefetch, get,
		 * add with bm_keyring_hash): the same answers. */
		hashed = (seed >> 20) & 1;
		h = bm_keyring_hash(&r, key, strlen(key));
		if (hashed)
			bm_keyring_prefetch_h(&r, h);
		if ((seed >> 16) % 3 == 0) {
			v = hashed ? bm_keyring_get_h(&r, key, strlen(key), h)
				   : bm_keyring_get(&r, key, strlen(key));
			if (at < 0) {
				assert_null(v);
			} else {
				assert_non_null(v);
				assert_int_equal(v->v, m.v[at]);
			}
			continue;
		}
		v = hashed ? bm_keyring_add_h(&r, key, strlen(key), h, &existed)
			   : bm_keyring_add(&r, key, strlen(key), &existed);
		assert_non_null(v);
		if (at >= 0) {
			assert_int_equal(existed, 1);
			assert_int_equal(v->v, m.v[at]);
			continue;
		}
		assert_int_equal(existed, 0);
		assert_int_equal(v->v, 0);
		assert_int_equal(v->n, 0);
		v->v = i + 1;
		/* The model forgets as the ring must: by count, then by bytes
		 * (the ring may forget more when the arena's free space is cut
		 * by its end; resynchronise from the ring's own count). */
		if (m.n == max) {
			model_drop_oldest(&m);
			forgot++;
		}
		while (m.n > r.count - 1) {
			model_drop_oldest(&m);
			forgot++;
		}
		m.key[m.n] = strdup(key);
		m.v[m.n++] = i + 1;
		m.bytes += strlen(key) + 1;
		assert_true(m.bytes <= arena);
		assert_int_equal(r.evicted, forgot);
		if (i % 997 == 0)
			check_all(&r, &m);
	}
	check_all(&r, &m);
	assert_int_equal(r.added - r.evicted, r.count);
	while (m.n)
		model_drop_oldest(&m);
	free(m.key);
	free(m.v);
	bm_keyring_release(&r);
}

static void test_model_count_bound(void **state)
{
	(void)state;
	/* Room for every key: only the count forgets. */
	run_model(64, 64 * 40, 300, 30, 1);
}

static void test_model_byte_bound(void **state)
{
	(void)state;
	/* Long keys, little arena: the bytes forget, the arena wraps. */
	run_model(512, 2 * (BM_KEYRING_KEY_MAX + 1), 5000, 200, 7);
}

static void test_model_small(void **state)
{
	(void)state;
	run_model(1, 4096, 5, 10, 3);
	run_model(3, 4096, 10, 10, 5);
}

static void test_bounds(void **state)
{
	struct bm_keyring r;
	char big[BM_KEYRING_KEY_MAX + 2];

	(void)state;
	assert_int_equal(bm_keyring_init(&r, 0, 1 << 20, 8, 0), BM_EINVAL);
	assert_int_equal(bm_keyring_init(&r, 10, 100, 8, 0), BM_EINVAL);
	assert_int_equal(bm_keyring_init(&r, 10, 1 << 20, 8192, 0), BM_EINVAL);
	assert_int_equal(bm_keyring_init(&r, 1000, 1 << 20, 8, 1), 0);
	memset(big, 'k', sizeof(big));
	big[sizeof(big) - 1] = 0;
	assert_null(bm_keyring_add(&r, big, strlen(big), NULL));
	assert_null(bm_keyring_get(&r, big, strlen(big)));
	assert_non_null(bm_keyring_add(&r, big, BM_KEYRING_KEY_MAX, NULL));
	assert_non_null(bm_keyring_get(&r, big, BM_KEYRING_KEY_MAX));
	/* The empty key is a key. */
	assert_null(bm_keyring_get(&r, "", 0));
	assert_non_null(bm_keyring_add(&r, "", 0, NULL));
	assert_non_null(bm_keyring_get(&r, "", 0));
	assert_int_equal(r.count, 2);
	/* Keys with the same bytes up to a length are different keys. */
	assert_non_null(bm_keyring_add(&r, "abc", 2, NULL));
	assert_null(bm_keyring_get(&r, "abc", 3));
	bm_keyring_release(&r);
}

static void test_many(void **state)
{
	/* A full-size ring: a million keys added, the last 100 000 held and
	 * every one of them found, the forgotten ones not. */
	enum { MAX = 100000, N = 1000000 };
	struct bm_keyring r;
	char key[64];

	(void)state;
	assert_int_equal(bm_keyring_init(&r, MAX, (size_t)MAX * 48, sizeof(int64_t), 1), 0);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof(key), "user%d@example.com\x1f" "dev\x1f%08x", i % 977, i);
		int64_t *v;

		bm_keyring_prefetch(&r, key, (size_t)n);   /* reads only */
		v = bm_keyring_add(&r, key, (size_t)n, NULL);
		assert_non_null(v);
		*v = i;
	}
	assert_int_equal(r.count, MAX);
	assert_int_equal(r.evicted, N - MAX);
	for (int i = 0; i < N; i += 7) {
		int n = snprintf(key, sizeof(key), "user%d@example.com\x1f" "dev\x1f%08x", i % 977, i);
		int64_t *v = bm_keyring_get(&r, key, (size_t)n);
		if (i < N - MAX) {
			assert_null(v);
		} else {
			assert_non_null(v);
			assert_int_equal(*v, i);
		}
	}
	bm_keyring_release(&r);
}

static void test_nofork(void **state)
{
	/* The child of fork() reads the ring and the keys (a snapshot does). */
	struct bm_keyring r;
	pid_t pid;
	int st;

	(void)state;
	assert_int_equal(bm_keyring_init(&r, 1000, 1 << 20, 8, 1), 0);
	assert_non_null(bm_keyring_add(&r, "a\x1f" "b\x1f" "c", 5, NULL));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		const char *k;
		bm_keyring_at(&r, 0, &k);
		_exit(strcmp(k, "a\x1f" "b\x1f" "c") != 0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	bm_keyring_release(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_model_count_bound),
		cmocka_unit_test(test_model_byte_bound),
		cmocka_unit_test(test_model_small),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_many),
		cmocka_unit_test(test_nofork),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
