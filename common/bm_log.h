/*
 * bm_log.h - one line per event, with level, component and node id.
 *
 * Libraries log through bm_log(); the daemon installs the sink and level.
 * The level is checked before any formatting happens, so a disabled debug
 * line costs one comparison.  The default sink writes to stderr:
 *
 *   2026-11-22T17:57:36.123Z info  node=s1 queue: opened segment '...'
 *
 * or, with bm_log_set_json(1), one JSON object per line:
 *
 *   {"ts":"...","level":"info","node":"s1","component":"queue","msg":"..."}
 */
#ifndef BM_LOG_H
#define BM_LOG_H

#include <stdarg.h>

enum bm_log_level {
	BM_LOG_ERROR = 0,
	BM_LOG_WARN,
	BM_LOG_INFO,
	BM_LOG_DEBUG,
};

/* Sink: receives the fully formatted message (no newline). */
typedef void bm_log_sink_fn(enum bm_log_level level, const char *component,
			    const char *msg, void *ud);

extern int bm_log_level_current;

void bm_log_set_level(enum bm_log_level level);
/* Parses "error", "warn", "info", "debug"; returns 0 or BM_EINVAL. */
int bm_log_level_parse(const char *s, enum bm_log_level *out);
const char *bm_log_level_name(enum bm_log_level level);
/* Node id printed on every line; copied. */
void bm_log_set_node(const char *node_id);
void bm_log_set_json(int on);
/* NULL restores the default stderr sink. */
void bm_log_set_sink(bm_log_sink_fn *fn, void *ud);

void bm_log_write(enum bm_log_level level, const char *component,
		  const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void bm_log_vwrite(enum bm_log_level level, const char *component,
		   const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

#define bm_log(level, component, ...) do { \
	if ((int)(level) <= bm_log_level_current) \
		bm_log_write((level), (component), __VA_ARGS__); \
} while (0)

#define bm_err(c, ...)   bm_log(BM_LOG_ERROR, c, __VA_ARGS__)
#define bm_warn(c, ...)  bm_log(BM_LOG_WARN, c, __VA_ARGS__)
#define bm_info(c, ...)  bm_log(BM_LOG_INFO, c, __VA_ARGS__)
#define bm_debug(c, ...) bm_log(BM_LOG_DEBUG, c, __VA_ARGS__)

/* Internal invariant broken: log and abort.  Never for client/peer input. */
#define BM_BUG_ON(cond) do { \
	if (cond) bm_bug(__FILE__, __LINE__, #cond); \
} while (0)
void bm_bug(const char *file, int line, const char *expr) __attribute__((noreturn));

#endif
