#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bm_map.h"

static void test_map_model(void **state)
{
	/* Random operations checked against a plain array model. */
	enum { N = 2000, OPS = 50000 };
	static long model[N];
	struct bm_map m;
	char key[32];
	unsigned seed = 12345;
	size_t count = 0, it = 0;
	const char *name;
	void *v;

	bm_map_init(&m);
	for (int i = 0; i < OPS; i++) {
		int k = (int)((seed = seed * 1103515245 + 12345) >> 8) % N;
		int op = (int)(seed >> 4) % 3;
		void *old;
		snprintf(key, sizeof(key), "user%d@example.com", k);
		if (op == 0) {
			assert_int_equal(bm_map_put(&m, key, (void *)(long)(i + 1), &old), 0);
			assert_int_equal((long)old, model[k]);
			model[k] = i + 1;
		} else if (op == 1) {
			assert_int_equal((long)bm_map_del(&m, key), model[k]);
			model[k] = 0;
		} else {
			assert_int_equal((long)bm_map_get(&m, key), model[k]);
		}
	}
	while (bm_map_next(&m, &it, &name, &v)) {
		int idx = atoi(name + 4);
		assert_int_equal((long)v, model[idx]);
		count++;
	}
	assert_int_equal(count, m.count);
	for (int i = 0; i < N; i++)
		if (model[i])
			count--;
	assert_int_equal(count, 0);
	bm_map_release(&m);
}

static void test_map_borrowed(void **state)
{
	/* Borrowed keys: the map stores the caller's pointer, and neither
	 * delete nor release frees it (ASan would report a double free). */
	enum { N = 500 };
	static char keys[N][24];
	struct bm_map m;
	const char *k;
	void *v;
	size_t it = 0;

	bm_map_init_borrowed(&m);
	for (int i = 0; i < N; i++) {
		snprintf(keys[i], sizeof(keys[i]), "a\x1f" "dev\x1f%d", i);
		assert_int_equal(bm_map_put(&m, keys[i], (void *)(long)(i + 1), NULL), 0);
	}
	assert_true(bm_map_next(&m, &it, &k, &v));
	assert_ptr_equal(k, keys[(long)v - 1]);
	for (int i = 0; i < N; i += 2)
		assert_int_equal((long)bm_map_del(&m, keys[i]), i + 1);
	for (int i = 0; i < N; i++) {
		char probe[24];
		snprintf(probe, sizeof(probe), "a\x1f" "dev\x1f%d", i);
		assert_int_equal((long)bm_map_get(&m, probe), i % 2 ? i + 1 : 0);
	}
	assert_int_equal(m.count, N / 2);
	bm_map_release(&m);
	assert_int_equal(m.borrowed, 1);
	assert_int_equal(bm_map_put(&m, keys[0], (void *)1L, NULL), 0);
	bm_map_release(&m);
}

static void test_map_reserve(void **state)
{
	/* Reserved for n keys: n inserts never rehash (cap stays). */
	struct bm_map m;
	char key[32];
	size_t cap;

	bm_map_init(&m);
	assert_int_equal(bm_map_reserve(&m, 1000), 0);
	cap = m.cap;
	assert_true(cap * 3 >= 1000 * 4);
	for (int i = 0; i < 1000; i++) {
		snprintf(key, sizeof(key), "k%d", i);
		assert_int_equal(bm_map_put(&m, key, (void *)(long)(i + 1), NULL), 0);
	}
	assert_int_equal(m.cap, cap);
	assert_int_equal((long)bm_map_get(&m, "k999"), 1000);
	assert_int_equal(bm_map_reserve(&m, 10), 0);     /* never shrinks */
	assert_int_equal(m.cap, cap);
	bm_map_release(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_model),
		cmocka_unit_test(test_map_borrowed),
		cmocka_unit_test(test_map_reserve),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
