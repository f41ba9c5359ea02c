#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
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

/* In a child of fork(): is the page at p mapped? (mincore says ENOMEM
 * for an address with no mapping.) */
static int child_sees(const void *p)
{
	long pg = sysconf(_SC_PAGESIZE);
	unsigned char vec;
	pid_t pid = fork();
	int st;

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(mincore((void *)((uintptr_t)p & ~(uintptr_t)(pg - 1)), (size_t)pg, &vec) == 0 ? 0
		      : errno == ENOMEM ? 1 : 2);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_not_equal(WEXITSTATUS(st), 2);
	return WEXITSTATUS(st) == 0;
}

static void test_map_large(void **state)
{
	/* A table of 2 MiB or more is mapped on its own; with bm_map_nofork a
	 * child of fork() has no such mapping, without it the child has. It
	 * still grows (mapped to mapped) and works as a map. */
	struct bm_map a, b;
	char key[32];

	bm_map_init(&a);
	bm_map_init(&b);
	bm_map_nofork(&a);
	assert_int_equal(bm_map_reserve(&a, 100000), 0);
	assert_int_equal(bm_map_reserve(&b, 100000), 0);
	assert_true(a.mapped && b.mapped);
	for (int i = 0; i < 300000; i++) {     /* past the reserve: grows */
		snprintf(key, sizeof(key), "k%d", i);
		assert_int_equal(bm_map_put(&a, key, (void *)(long)(i + 1), NULL), 0);
		if (i < 1000)
			assert_int_equal(bm_map_put(&b, key, (void *)(long)(i + 1), NULL), 0);
	}
	assert_true(a.mapped && a.cap * 3 >= 300000 * 4);
	assert_int_equal(a.count, 300000);
	assert_int_equal((long)bm_map_get(&a, "k299999"), 300000);
	assert_int_equal((long)bm_map_del(&a, "k7"), 8);
	assert_null(bm_map_get(&a, "k7"));
	assert_false(child_sees(a.slots));
	assert_true(child_sees(b.slots));
	bm_map_release(&a);
	bm_map_release(&b);
	assert_int_equal(a.nofork, 1);     /* kept across release, as borrowed */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_model),
		cmocka_unit_test(test_map_borrowed),
		cmocka_unit_test(test_map_reserve),
		cmocka_unit_test(test_map_large),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
