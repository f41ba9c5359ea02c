#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "bm_buf.h"
#include "bm_err.h"
#include "bm_metrics.h"

static double queue_depth(void *ud)
{
	return *(int *)ud * 1.5;
}

static void test_render_all_kinds(void **state)
{
	struct bm_metrics *reg;
	struct bm_metrics_family *fam;
	struct bm_metrics_hist *h;
	struct bm_buf out = BM_BUF_INIT;
	uint64_t *c;
	double *g;
	int depth = 3;
	static const double bounds[] = { 0.001, 0.01, 0.1, 1 };

	assert_int_equal(bm_metrics_new(&reg), 0);
	assert_int_equal(bm_metrics_counter(reg, "bimip_conns_total",
					    "Accepted connections.", &c), 0);
	assert_int_equal(bm_metrics_gauge(reg, "bimip_sessions", "Open\nsessions \\ now.",
					  &g), 0);
	assert_int_equal(bm_metrics_gauge_cb(reg, "bimip_queue_depth", "Depth.",
					     queue_depth, &depth), 0);
	assert_int_equal(bm_metrics_family(reg, "bimip_errors_total", "Errors by code.",
					   "code", 4, &fam), 0);
	assert_int_equal(bm_metrics_histogram(reg, "bimip_fsync_seconds", "fsync latency.",
					      bounds, 4, &h), 0);

	(*c)++;
	bm_counter_add(c, 41);
	*g = 0.1;
	bm_metrics_family_inc(fam, "429");
	bm_metrics_family_add(fam, "429", 2);
	bm_metrics_family_inc(fam, "a\"b\\c\nd");
	bm_metrics_observe(h, 0.0005);
	bm_metrics_observe(h, 0.001);   /* le is inclusive */
	bm_metrics_observe(h, 0.05);
	bm_metrics_observe(h, 7);

	assert_int_equal(bm_metrics_render(reg, &out), 0);
	assert_string_equal((char *)out.data,
		"# HELP bimip_conns_total Accepted connections.\n"
		"# TYPE bimip_conns_total counter\n"
		"bimip_conns_total 42\n"
		"# HELP bimip_sessions Open\\nsessions \\\\ now.\n"
		"# TYPE bimip_sessions gauge\n"
		"bimip_sessions 0.1\n"
		"# HELP bimip_queue_depth Depth.\n"
		"# TYPE bimip_queue_depth gauge\n"
		"bimip_queue_depth 4.5\n"
		"# HELP bimip_errors_total Errors by code.\n"
		"# TYPE bimip_errors_total counter\n"
		"bimip_errors_total{code=\"429\"} 3\n"
		"bimip_errors_total{code=\"a\\\"b\\\\c\\nd\"} 1\n"
		"# HELP bimip_fsync_seconds fsync latency.\n"
		"# TYPE bimip_fsync_seconds histogram\n"
		"bimip_fsync_seconds_bucket{le=\"0.001\"} 2\n"
		"bimip_fsync_seconds_bucket{le=\"0.01\"} 2\n"
		"bimip_fsync_seconds_bucket{le=\"0.1\"} 3\n"
		"bimip_fsync_seconds_bucket{le=\"1\"} 3\n"
		"bimip_fsync_seconds_bucket{le=\"+Inf\"} 4\n"
		"bimip_fsync_seconds_sum 7.0515\n"
		"bimip_fsync_seconds_count 4\n");
	bm_buf_release(&out);

	/* Callback gauges are evaluated at render time. */
	depth = 10;
	assert_int_equal(bm_metrics_render(reg, &out), 0);
	assert_non_null(strstr((char *)out.data, "bimip_queue_depth 15\n"));
	bm_buf_release(&out);
	bm_metrics_free(reg);
}

static void test_family_overflow(void **state)
{
	struct bm_metrics *reg;
	struct bm_metrics_family *fam;
	struct bm_buf out = BM_BUF_INIT;
	char v[16], longv[100];
	uint64_t *first;

	assert_int_equal(bm_metrics_new(&reg), 0);
	assert_int_equal(bm_metrics_family(reg, "stanzas_in_total", "By route.", "route",
					   3, &fam), 0);
	first = bm_metrics_family_get(fam, "1");
	for (int i = 1; i <= 10; i++) {
		snprintf(v, sizeof(v), "%d", i);
		bm_metrics_family_inc(fam, v);
	}
	assert_ptr_equal(bm_metrics_family_get(fam, "1"), first);
	assert_int_equal(*first, 1);
	/* "other" from a caller is the overflow series, not a new one. */
	bm_metrics_family_inc(fam, "other");
	memset(longv, 'x', sizeof(longv) - 1);
	longv[sizeof(longv) - 1] = 0;
	bm_metrics_family_inc(fam, longv);
	assert_int_equal(bm_metrics_render(reg, &out), 0);
	assert_non_null(strstr((char *)out.data,
		"stanzas_in_total{route=\"1\"} 1\n"
		"stanzas_in_total{route=\"2\"} 1\n"
		"stanzas_in_total{route=\"3\"} 1\n"
		"stanzas_in_total{route=\"other\"} 9\n"));
	bm_buf_release(&out);
	bm_metrics_free(reg);
}

static void test_registration_errors(void **state)
{
	struct bm_metrics *reg;
	struct bm_metrics_family *fam;
	struct bm_metrics_hist *h;
	uint64_t *c;
	static const double bad[] = { 1, 1 };
	static const double inf[] = { 1, INFINITY };
	static const double ok[] = { 1 };

	assert_int_equal(bm_metrics_new(&reg), 0);
	assert_int_equal(bm_metrics_counter(reg, "x_total", "", &c), 0);
	assert_int_equal(bm_metrics_counter(reg, "x_total", "", &c), BM_EEXIST);
	assert_int_equal(bm_metrics_counter(reg, "9x", "", &c), BM_EINVAL);
	assert_int_equal(bm_metrics_counter(reg, "x-y", "", &c), BM_EINVAL);
	assert_int_equal(bm_metrics_counter(reg, "", "", &c), BM_EINVAL);
	assert_int_equal(bm_metrics_counter(reg, "ns:x_total", NULL, &c), 0);
	assert_int_equal(bm_metrics_family(reg, "f", "", "le", 2, &fam), BM_EINVAL);
	assert_int_equal(bm_metrics_family(reg, "f", "", "a:b", 2, &fam), BM_EINVAL);
	assert_int_equal(bm_metrics_family(reg, "f", "", "code", 0, &fam), BM_EINVAL);
	assert_int_equal(bm_metrics_family(reg, "f", "", "code",
					   BM_METRICS_MAX_SERIES + 1, &fam), BM_EINVAL);
	assert_int_equal(bm_metrics_family(reg, "x_total", "", "code", 2, &fam), BM_EEXIST);
	assert_int_equal(bm_metrics_histogram(reg, "h", "", bad, 2, &h), BM_EINVAL);
	assert_int_equal(bm_metrics_histogram(reg, "h", "", inf, 2, &h), BM_EINVAL);
	assert_int_equal(bm_metrics_histogram(reg, "h", "", ok, 0, &h), BM_EINVAL);
	assert_int_equal(bm_metrics_histogram(reg, "h", "", ok, 1, &h), 0);
	assert_int_equal(bm_metrics_gauge_cb(reg, "g", "", NULL, NULL), BM_EINVAL);
	bm_metrics_free(reg);
	bm_metrics_free(NULL);
}

static void test_format_double(void **state)
{
	char b[40];

	bm_metrics_format_double(b, sizeof(b), 0.1);
	assert_string_equal(b, "0.1");
	bm_metrics_format_double(b, sizeof(b), 0);
	assert_string_equal(b, "0");
	bm_metrics_format_double(b, sizeof(b), 1e-5);
	assert_string_equal(b, "1e-05");
	bm_metrics_format_double(b, sizeof(b), 123456789.0);
	assert_string_equal(b, "123456789");
	bm_metrics_format_double(b, sizeof(b), 1.0 / 3);
	assert_string_equal(b, "0.3333333333333333");
	bm_metrics_format_double(b, sizeof(b), INFINITY);
	assert_string_equal(b, "+Inf");
	bm_metrics_format_double(b, sizeof(b), -INFINITY);
	assert_string_equal(b, "-Inf");
	bm_metrics_format_double(b, sizeof(b), NAN);
	assert_string_equal(b, "NaN");
}

static void test_bounded_output(void **state)
{
	struct bm_metrics *reg;
	struct bm_buf out;
	uint64_t *c;

	assert_int_equal(bm_metrics_new(&reg), 0);
	assert_int_equal(bm_metrics_counter(reg, "x_total", "help", &c), 0);
	bm_buf_init(&out, 10);
	assert_int_equal(bm_metrics_render(reg, &out), BM_ETOOBIG);
	bm_buf_release(&out);
	bm_metrics_free(reg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_render_all_kinds),
		cmocka_unit_test(test_family_overflow),
		cmocka_unit_test(test_registration_errors),
		cmocka_unit_test(test_format_double),
		cmocka_unit_test(test_bounded_output),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
