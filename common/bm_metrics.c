/*
 * bm_metrics.c - Prometheus registry; the output format is specified in
 * bm_metrics.h (Prometheus text exposition format, version 0.0.4).
 */
#include "bm_metrics.h"
#include "bm_buf.h"
#include "bm_err.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { M_COUNTER, M_GAUGE, M_GAUGE_CB, M_FAMILY, M_HIST };

struct series {
	char value[BM_METRICS_LABEL_MAX + 1];
	uint64_t count;
};

struct bm_metrics_family {
	char label[BM_METRICS_LABEL_MAX + 1];
	unsigned max, n;
	struct series *series;  /* max + 1 slots; series[max] is "other" */
};

struct bm_metrics_hist {
	size_t n;
	double bounds[BM_METRICS_MAX_BUCKETS];
	uint64_t counts[BM_METRICS_MAX_BUCKETS + 1];  /* per bucket, not cumulative */
	double sum;
	uint64_t count;
};

struct metric {
	struct metric *next;
	enum kind kind;
	char *name;
	char *help;
	union {
		uint64_t counter;
		double gauge;
		struct {
			bm_metrics_gauge_fn *fn;
			void *ud;
		} cb;
		struct bm_metrics_family fam;
		struct bm_metrics_hist hist;
	} u;
};

struct bm_metrics {
	struct metric *head;
	struct metric **tail;
};

int bm_metrics_new(struct bm_metrics **out)
{
	struct bm_metrics *reg = calloc(1, sizeof(*reg));

	if (!reg)
		return BM_ENOMEM;
	reg->tail = &reg->head;
	*out = reg;
	return 0;
}

void bm_metrics_free(struct bm_metrics *reg)
{
	struct metric *m, *next;

	if (!reg)
		return;
	for (m = reg->head; m; m = next) {
		next = m->next;
		if (m->kind == M_FAMILY)
			free(m->u.fam.series);
		free(m->name);
		free(m->help);
		free(m);
	}
	free(reg);
}

static int valid_name(const char *s, int colons)
{
	if (!s || !*s)
		return 0;
	for (const char *p = s; *p; p++) {
		char c = *p;
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
			 (colons && c == ':') || (p != s && c >= '0' && c <= '9');
		if (!ok)
			return 0;
	}
	return 1;
}

static int add_metric(struct bm_metrics *reg, enum kind kind, const char *name,
		      const char *help, struct metric **out)
{
	struct metric *m;

	if (!valid_name(name, 1))
		return BM_EINVAL;
	for (m = reg->head; m; m = m->next)
		if (!strcmp(m->name, name))
			return BM_EEXIST;
	m = calloc(1, sizeof(*m));
	if (!m)
		return BM_ENOMEM;
	m->kind = kind;
	m->name = strdup(name);
	m->help = strdup(help ? help : "");
	if (!m->name || !m->help) {
		free(m->name);
		free(m->help);
		free(m);
		return BM_ENOMEM;
	}
	*reg->tail = m;
	reg->tail = &m->next;
	*out = m;
	return 0;
}

int bm_metrics_counter(struct bm_metrics *reg, const char *name, const char *help,
		       uint64_t **out)
{
	struct metric *m;
	int rc = add_metric(reg, M_COUNTER, name, help, &m);

	if (!rc)
		*out = &m->u.counter;
	return rc;
}

int bm_metrics_gauge(struct bm_metrics *reg, const char *name, const char *help,
		     double **out)
{
	struct metric *m;
	int rc = add_metric(reg, M_GAUGE, name, help, &m);

	if (!rc)
		*out = &m->u.gauge;
	return rc;
}

int bm_metrics_gauge_cb(struct bm_metrics *reg, const char *name, const char *help,
			bm_metrics_gauge_fn *fn, void *ud)
{
	struct metric *m;
	int rc;

	if (!fn)
		return BM_EINVAL;
	rc = add_metric(reg, M_GAUGE_CB, name, help, &m);
	if (!rc) {
		m->u.cb.fn = fn;
		m->u.cb.ud = ud;
	}
	return rc;
}

int bm_metrics_family(struct bm_metrics *reg, const char *name, const char *help,
		      const char *label, unsigned max_series,
		      struct bm_metrics_family **out)
{
	struct series *series;
	struct metric *m;
	int rc;

	if (!valid_name(label, 0) || !strcmp(label, "le") || !strncmp(label, "__", 2) ||
	    strlen(label) > BM_METRICS_LABEL_MAX || max_series == 0 ||
	    max_series > BM_METRICS_MAX_SERIES)
		return BM_EINVAL;
	series = calloc(max_series + 1, sizeof(*series));
	if (!series)
		return BM_ENOMEM;
	rc = add_metric(reg, M_FAMILY, name, help, &m);
	if (rc) {
		free(series);
		return rc;
	}
	strcpy(m->u.fam.label, label);
	m->u.fam.max = max_series;
	m->u.fam.series = series;
	strcpy(series[max_series].value, "other");
	*out = &m->u.fam;
	return 0;
}

int bm_metrics_histogram(struct bm_metrics *reg, const char *name, const char *help,
			 const double *bounds, size_t n, struct bm_metrics_hist **out)
{
	struct metric *m;
	int rc;

	if (n == 0 || n > BM_METRICS_MAX_BUCKETS)
		return BM_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!isfinite(bounds[i]) || (i && !(bounds[i] > bounds[i - 1])))
			return BM_EINVAL;
	rc = add_metric(reg, M_HIST, name, help, &m);
	if (rc)
		return rc;
	m->u.hist.n = n;
	memcpy(m->u.hist.bounds, bounds, n * sizeof(*bounds));
	*out = &m->u.hist;
	return 0;
}

uint64_t *bm_metrics_family_get(struct bm_metrics_family *fam, const char *value)
{
	struct series *s;
	size_t n = strlen(value);

	if (n > BM_METRICS_LABEL_MAX) {
		/* Cut at a UTF-8 character boundary. */
		n = BM_METRICS_LABEL_MAX;
		while (n && ((unsigned char)value[n] & 0xc0) == 0x80)
			n--;
	}
	for (unsigned i = 0; i < fam->n; i++) {
		s = &fam->series[i];
		if (!strncmp(s->value, value, n) && s->value[n] == 0)
			return &s->count;
	}
	if (fam->n == fam->max || (n == 5 && !strncmp(value, "other", 5)))
		return &fam->series[fam->max].count;
	s = &fam->series[fam->n++];
	memcpy(s->value, value, n);
	s->value[n] = 0;
	return &s->count;
}

void bm_metrics_observe(struct bm_metrics_hist *h, double v)
{
	size_t i = 0;

	while (i < h->n && !(v <= h->bounds[i]))
		i++;
	h->counts[i]++;
	h->count++;
	h->sum += v;
}

/* ---- rendering --------------------------------------------------------- */

void bm_metrics_format_double(char *buf, size_t len, double v)
{
	if (isnan(v)) {
		snprintf(buf, len, "NaN");
		return;
	}
	if (isinf(v)) {
		snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
		return;
	}
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, len, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

/* HELP text escapes \ and newline; label values also escape ". */
static int add_escaped(struct bm_buf *out, const char *s, int quote)
{
	int rc = 0;

	for (const char *p = s; *p && !rc; p++) {
		if (*p == '\\')
			rc = bm_buf_add(out, "\\\\", 2);
		else if (*p == '\n')
			rc = bm_buf_add(out, "\\n", 2);
		else if (quote && *p == '"')
			rc = bm_buf_add(out, "\\\"", 2);
		else
			rc = bm_buf_add(out, p, 1);
	}
	return rc;
}

static const char *type_of(enum kind k)
{
	switch (k) {
	case M_COUNTER:
	case M_FAMILY:
		return "counter";
	case M_HIST:
		return "histogram";
	default:
		return "gauge";
	}
}

static int render_series(struct bm_buf *out, const char *name, const char *label,
			 const char *value, uint64_t count)
{
	int rc = bm_buf_addf(out, "%s{%s=\"", name, label);

	if (!rc)
		rc = add_escaped(out, value, 1);
	if (!rc)
		rc = bm_buf_addf(out, "\"} %llu\n", (unsigned long long)count);
	return rc;
}

static int render_hist(struct bm_buf *out, const char *name,
		       const struct bm_metrics_hist *h)
{
	uint64_t cum = 0;
	char num[40];
	int rc = 0;

	for (size_t i = 0; i < h->n && !rc; i++) {
		cum += h->counts[i];
		bm_metrics_format_double(num, sizeof(num), h->bounds[i]);
		rc = bm_buf_addf(out, "%s_bucket{le=\"%s\"} %llu\n", name, num,
				 (unsigned long long)cum);
	}
	if (rc)
		return rc;
	bm_metrics_format_double(num, sizeof(num), h->sum);
	return bm_buf_addf(out, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %s\n%s_count %llu\n",
			   name, (unsigned long long)h->count, name, num, name,
			   (unsigned long long)h->count);
}

static int render_one(struct bm_buf *out, const struct metric *m)
{
	char num[40];
	int rc;

	rc = bm_buf_addf(out, "# HELP %s ", m->name);
	if (!rc)
		rc = add_escaped(out, m->help, 0);
	if (!rc)
		rc = bm_buf_addf(out, "\n# TYPE %s %s\n", m->name, type_of(m->kind));
	if (rc)
		return rc;
	switch (m->kind) {
	case M_COUNTER:
		return bm_buf_addf(out, "%s %llu\n", m->name, (unsigned long long)
				   __atomic_load_n(&m->u.counter, __ATOMIC_RELAXED));
	case M_GAUGE:
	case M_GAUGE_CB:
		bm_metrics_format_double(num, sizeof(num), m->kind == M_GAUGE ? m->u.gauge :
					 m->u.cb.fn(m->u.cb.ud));
		return bm_buf_addf(out, "%s %s\n", m->name, num);
	case M_FAMILY: {
		const struct bm_metrics_family *f = &m->u.fam;
		for (unsigned i = 0; i < f->n && !rc; i++)
			rc = render_series(out, m->name, f->label, f->series[i].value,
					   __atomic_load_n(&f->series[i].count,
							   __ATOMIC_RELAXED));
		if (!rc && f->series[f->max].count)
			rc = render_series(out, m->name, f->label, "other",
					   f->series[f->max].count);
		return rc;
	}
	case M_HIST:
		return render_hist(out, m->name, &m->u.hist);
	}
	return 0;
}

int bm_metrics_render(struct bm_metrics *reg, struct bm_buf *out)
{
	for (const struct metric *m = reg->head; m; m = m->next) {
		int rc = render_one(out, m);
		if (rc)
			return rc;
	}
	return 0;
}
