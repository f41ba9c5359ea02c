/*
 * bm_metrics.h - a tiny Prometheus registry (text exposition format 0.0.4).
 *
 * Metrics are registered once at start; the registry hands back a pointer to
 * the value so the hot path is a plain add:
 *
 *   struct bm_metrics *reg;
 *   uint64_t *conns;
 *   struct bm_metrics_family *errors;
 *   struct bm_metrics_hist *fsync;
 *   static const double fsync_buckets[] = { .0005, .001, .005, .01, .05, .1, .5 };
 *
 *   bm_metrics_new(&reg);
 *   bm_metrics_counter(reg, "bimip_connections_total", "Accepted connections.", &conns);
 *   bm_metrics_family(reg, "bimip_errors_total", "Errors sent, by code.", "code", 16, &errors);
 *   bm_metrics_histogram(reg, "bimip_fsync_seconds", "fsync latency.", fsync_buckets, 7, &fsync);
 *
 *   (*conns)++;                               // or bm_counter_inc(conns)
 *   bm_metrics_family_inc(errors, "429");     // creates code="429" on first use
 *   bm_metrics_observe(fsync, 0.0031);
 *   bm_metrics_render(reg, &buf);             // GET /metrics
 *
 * Output, in registration order, one block per metric:
 *   # HELP <name> <help, with \ and newline escaped>
 *   # TYPE <name> counter|gauge|histogram
 *   <name>{<label>="<value, with \ " and newline escaped>"} <value>
 * Histograms write cumulative <name>_bucket{le="..."} lines ending with
 * le="+Inf", then <name>_sum and <name>_count.  Floats are written in the
 * shortest form that reads back exactly, "+Inf", "-Inf" and "NaN".
 *
 * Threads: registration and rendering belong to one thread (the loop).
 * Values may be updated from other threads only with the _atomic helpers;
 * rendering reads counters with relaxed atomic loads, so it sees them whole.
 * Family lookups and histogram observations are single-threaded.
 */
#ifndef BM_METRICS_H
#define BM_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct bm_buf;
struct bm_metrics;
struct bm_metrics_family;
struct bm_metrics_hist;

/* Gauge callback, evaluated at each render. */
typedef double bm_metrics_gauge_fn(void *ud);

/* Limits that keep a registry bounded whatever the callers do. */
#define BM_METRICS_MAX_SERIES   256   /* per family, "other" excluded */
#define BM_METRICS_MAX_BUCKETS  32
#define BM_METRICS_LABEL_MAX    64    /* label value bytes; longer values are cut */

/* Returns 0 or BM_ENOMEM. */
int bm_metrics_new(struct bm_metrics **out);
/* Frees the registry and every value it handed out.  NULL is fine. */
void bm_metrics_free(struct bm_metrics *reg);

/*
 * Registration.  name must match [a-zA-Z_:][a-zA-Z0-9_:]* and be unique in
 * the registry; help is copied.  Returns 0, BM_EINVAL (bad name, label or
 * buckets), BM_EEXIST (name taken) or BM_ENOMEM.  Pointers handed out stay
 * valid until bm_metrics_free().
 */
int bm_metrics_counter(struct bm_metrics *reg, const char *name, const char *help,
		       uint64_t **out);
int bm_metrics_gauge(struct bm_metrics *reg, const char *name, const char *help,
		     double **out);
int bm_metrics_gauge_cb(struct bm_metrics *reg, const char *name, const char *help,
			bm_metrics_gauge_fn *fn, void *ud);
/* A counter family with one label (name [a-zA-Z_][a-zA-Z0-9_]*, not "le").
 * At most max_series label values (1..BM_METRICS_MAX_SERIES) are created on
 * first use; later new values are counted under the value "other". */
int bm_metrics_family(struct bm_metrics *reg, const char *name, const char *help,
		      const char *label, unsigned max_series,
		      struct bm_metrics_family **out);
/* Histogram with n (1..BM_METRICS_MAX_BUCKETS) finite, strictly increasing
 * upper bounds (copied); +Inf is implicit. */
int bm_metrics_histogram(struct bm_metrics *reg, const char *name, const char *help,
			 const double *bounds, size_t n, struct bm_metrics_hist **out);

/* Counter of the series labelled value (created on first use, or "other"
 * when the family is full).  Never NULL. */
uint64_t *bm_metrics_family_get(struct bm_metrics_family *fam, const char *value);
static inline void bm_metrics_family_add(struct bm_metrics_family *fam,
					 const char *value, uint64_t n)
{
	*bm_metrics_family_get(fam, value) += n;
}
static inline void bm_metrics_family_inc(struct bm_metrics_family *fam,
					 const char *value)
{
	*bm_metrics_family_get(fam, value) += 1;
}

void bm_metrics_observe(struct bm_metrics_hist *h, double v);

static inline void bm_counter_inc(uint64_t *c) { *c += 1; }
static inline void bm_counter_add(uint64_t *c, uint64_t n) { *c += n; }
static inline void bm_counter_add_atomic(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* Append the exposition text of every metric to out.
 * Returns 0, or the bm_buf error (BM_ENOMEM, BM_ETOOBIG). */
int bm_metrics_render(struct bm_metrics *reg, struct bm_buf *out);

/* Shortest text that reads back as v ("0.1", "1e-05", "+Inf", "NaN");
 * buf needs 32 bytes.  Exposed for tests and other exporters. */
void bm_metrics_format_double(char *buf, size_t len, double v);

#endif
