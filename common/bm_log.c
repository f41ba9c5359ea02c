#include "bm_log.h"
#include "bm_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int bm_log_level_current = BM_LOG_INFO;
static char node_id[64] = "-";
static int json_lines;
static bm_log_sink_fn *sink;
static void *sink_ud;

static const char *const names[] = { "error", "warn", "info", "debug" };

void bm_log_set_level(enum bm_log_level level)
{
	bm_log_level_current = level;
}

int bm_log_level_parse(const char *s, enum bm_log_level *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum bm_log_level)i;
			return 0;
		}
	}
	return BM_EINVAL;
}

const char *bm_log_level_name(enum bm_log_level level)
{
	return (unsigned)level < 4 ? names[level] : "?";
}

void bm_log_set_node(const char *id)
{
	snprintf(node_id, sizeof(node_id), "%s", id && *id ? id : "-");
}

void bm_log_set_json(int on)
{
	json_lines = on;
}

void bm_log_set_sink(bm_log_sink_fn *fn, void *ud)
{
	sink = fn;
	sink_ud = ud;
}

static void json_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
}

static void default_sink(enum bm_log_level level, const char *component,
			 const char *msg)
{
	struct timespec ts;
	struct tm tm;
	char when[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	flockfile(stderr);
	if (json_lines) {
		fprintf(stderr, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"node\":\"",
			when, ts.tv_nsec / 1000000, bm_log_level_name(level));
		json_escape(stderr, node_id);
		fputs("\",\"component\":\"", stderr);
		json_escape(stderr, component);
		fputs("\",\"msg\":\"", stderr);
		json_escape(stderr, msg);
		fputs("\"}\n", stderr);
	} else {
		fprintf(stderr, "%s.%03ldZ %-5s node=%s %s: %s\n", when,
			ts.tv_nsec / 1000000, bm_log_level_name(level), node_id,
			component, msg);
	}
	funlockfile(stderr);
}

void bm_log_vwrite(enum bm_log_level level, const char *component,
		   const char *fmt, va_list ap)
{
	char msg[1024];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* One event, one line: never let a value break the line. */
	for (char *p = msg; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	if (sink)
		sink(level, component, msg, sink_ud);
	else
		default_sink(level, component, msg);
}

void bm_log_write(enum bm_log_level level, const char *component,
		  const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	bm_log_vwrite(level, component, fmt, ap);
	va_end(ap);
}

void bm_bug(const char *file, int line, const char *expr)
{
	bm_log_write(BM_LOG_ERROR, "bug", "invariant broken at %s:%d: %s",
		     file, line, expr);
	abort();
}
