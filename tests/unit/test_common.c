#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_buf.h"
#include "bm_log.h"
#include "bm_time.h"

static void test_err_table_dense(void **state)
{
	/* bm_err.c indexes the table by -code: every code must be its index. */
	static const int codes[] = {
#define C(name, val, http, text) val,
		BM_ERRORS(C)
#undef C
	};
	for (unsigned i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		assert_int_equal(codes[i], -(int)i);
	assert_string_equal(bm_strerror(BM_EINVAL), "invalid argument");
	assert_string_equal(bm_errname(BM_ERATE), "BM_ERATE");
	assert_int_equal(bm_err_http(BM_ERATE), 429);
	assert_int_equal(bm_err_http(BM_ETOOBIG), 413);
	assert_string_equal(bm_strerror(-10000), "unknown error");
	assert_string_equal(bm_strerror(5), "unknown error");
	assert_int_equal(bm_err_http(0), 200);
}

static void test_buf_basic(void **state)
{
	struct bm_buf b = BM_BUF_INIT;

	assert_int_equal(bm_buf_adds(&b, "hello"), 0);
	assert_int_equal(bm_buf_addf(&b, " %d", 42), 0);
	assert_string_equal((char *)b.data, "hello 42");
	assert_int_equal(b.len, 8);
	bm_buf_consume(&b, 6);
	assert_string_equal((char *)b.data, "42");
	bm_buf_reset(&b);
	assert_int_equal(b.len, 0);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(bm_buf_add(&b, "x", 1), 0);
	assert_int_equal(b.len, 1000);
	bm_buf_release(&b);
	assert_null(b.data);
}

static void test_buf_bounded(void **state)
{
	struct bm_buf b;
	char big[200];

	memset(big, 'a', sizeof(big));
	bm_buf_init(&b, 100);
	assert_int_equal(bm_buf_add(&b, big, 100), 0);
	assert_int_equal(bm_buf_add(&b, "x", 1), BM_ETOOBIG);
	assert_int_equal(b.len, 100);
	bm_buf_release(&b);
	bm_buf_init(&b, 100);
	assert_int_equal(bm_buf_add(&b, big, 101), BM_ETOOBIG);
	assert_int_equal(bm_buf_grow(&b, SIZE_MAX), BM_ETOOBIG);
	bm_buf_release(&b);
}

static int sink_calls;
static char sink_last[256];
static void sink(enum bm_log_level l, const char *c, const char *m, void *ud)
{
	sink_calls++;
	strncpy(sink_last, m, sizeof(sink_last) - 1);
}

static void test_log_levels(void **state)
{
	enum bm_log_level l;

	bm_log_set_sink(sink, NULL);
	bm_log_set_level(BM_LOG_WARN);
	sink_calls = 0;
	bm_info("test", "hidden %d", 1);
	assert_int_equal(sink_calls, 0);
	bm_warn("test", "shown %d\nsecond line", 2);
	assert_int_equal(sink_calls, 1);
	assert_string_equal(sink_last, "shown 2 second line");
	assert_int_equal(bm_log_level_parse("debug", &l), 0);
	assert_int_equal(l, BM_LOG_DEBUG);
	assert_int_equal(bm_log_level_parse("loud", &l), BM_EINVAL);
	bm_log_set_sink(NULL, NULL);
	bm_log_set_level(BM_LOG_INFO);
}

static void test_fake_clock(void **state)
{
	uint64_t mono = 5000000000ull;
	int64_t wall = 1700000000123;

	bm_time_set_fake(&mono, &wall);
	assert_int_equal(bm_mono_ms(), 5000);
	assert_int_equal(bm_wall_ms(), 1700000000123);
	mono += 1000000;
	assert_int_equal(bm_mono_ms(), 5001);
	bm_time_set_fake(NULL, NULL);
	assert_true(bm_wall_ms() > 1700000000000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_err_table_dense),
		cmocka_unit_test(test_buf_basic),
		cmocka_unit_test(test_buf_bounded),
		cmocka_unit_test(test_log_levels),
		cmocka_unit_test(test_fake_clock),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
