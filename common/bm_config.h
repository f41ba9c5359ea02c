/*
 * bm_config.h - JSON configuration through a table of keys.
 *
 * A daemon describes its configuration once, as a table (redis config.c,
 * nginx command tables), and this module loads, validates, reloads, dumps
 * and documents it from that table:
 *
 *   struct sig_config {
 *           char ws_listen[64];
 *           int64_t max_frame;
 *           int64_t idle_ms;
 *           int log_level;
 *           char peers[8][64];
 *   };
 *   static const char *const levels[] = { "error", "warn", "info", "debug", NULL };
 *   static const struct bm_config_key keys[] = {
 *           { "listen.ws", BM_CFG_ADDR, BM_CFG_FIELD(struct sig_config, ws_listen),
 *             .def = "127.0.0.1:4000", .help = "WebSocket listener" },
 *           { "limits.max_frame", BM_CFG_SIZE, BM_CFG_FIELD(struct sig_config, max_frame),
 *             .def = "64KiB", .min = 1024, .max = 16 << 20, .reloadable = 1,
 *             .help = "largest frame accepted from a client" },
 *           { "timeouts.idle", BM_CFG_DURATION, BM_CFG_FIELD(struct sig_config, idle_ms),
 *             .def = "30s", .min = 1000, .max = 3600000, .reloadable = 1 },
 *           { "log.level", BM_CFG_ENUM, BM_CFG_FIELD(struct sig_config, log_level),
 *             .def = "info", .enums = levels, .reloadable = 1 },
 *           { "cluster.peers", BM_CFG_LIST, BM_CFG_FIELD(struct sig_config, peers),
 *             .def = "", .list_max = 8 },
 *           { NULL }
 *   };
 *
 * Document format: one JSON object.  A dotted key names nested objects:
 * "limits.max_frame" is {"limits": {"max_frame": 65536}}; the flat spelling
 * {"limits.max_frame": 65536} is accepted too.  A key set twice is an error,
 * so is a key that is not in the table (the message names it and the file).
 * Keys absent from the document keep their default.  A member whose name
 * starts with '#' is a comment and is ignored ({"# fsync": "why group"}).
 *
 * Field types (what the struct member at .offset must be):
 *   BM_CFG_STRING    char[size]; the value must fit with its terminator.
 *   BM_CFG_INT       int64_t or int (size 8 or 4); JSON integer in [min, max].
 *   BM_CFG_BOOL      int or bool (size 4 or 1); JSON true/false.
 *   BM_CFG_DOUBLE    double; JSON number in [dmin, dmax].
 *   BM_CFG_ENUM      int; one of the strings in .enums (stores its index).
 *   BM_CFG_DURATION  int64_t milliseconds; a JSON integer (ms) or a string
 *                    "<n>ms", "<n>s", "<n>m", "<n>h", "<n>d"; in [min, max].
 *   BM_CFG_SIZE      int64_t bytes; a JSON integer or a string "<n>B",
 *                    "<n>KiB" / "MiB" / "GiB" / "TiB" (1024-based) or
 *                    "<n>KB" / "MB" / "GB" (1000-based); in [min, max].
 *   BM_CFG_ADDR      char[size] holding "host:port": an IPv4 address, a
 *                    bracketed IPv6 address or a host name, and a port
 *                    0..65535 ("127.0.0.1:0" means any free port).
 *   BM_CFG_LIST      char[list_max][size]: a JSON array of at most list_max
 *                    non-empty strings; unused slots are empty strings, so
 *                    the list ends at the first empty slot.
 * For INT, DURATION and SIZE, min == max == 0 means unbounded (DURATION and
 * SIZE are never negative); likewise dmin == dmax == 0 for DOUBLE.
 *
 * Defaults (.def) are text, parsed like a document value: "5s", "64KiB",
 * "true", "42", "0.5"; a LIST default is comma-separated ("a,b", "" = empty).
 * .def == NULL means zero / empty string.
 *
 * Errors: every function that can fail writes one lowercase line into err
 * (errlen bytes, may be 0) and returns BM_ECONFIG (BM_ENOMEM on allocation
 * failure).  Messages name the file, the key, what was expected and what was
 * found, e.g.
 *   config 'x.json': unknown key 'limits.max_fram'
 *   config 'x.json': key 'limits.max_frame': 10 out of range [1024, 16777216]
 *   config 'x.json': key 'timeouts.idle': expected duration (ms or "250ms", "5s", "2m"), got string "soon"
 *   config 'x.json':3:14: end of file expected near '}'
 *
 * Nothing here is thread-safe; call from the thread that owns the struct.
 */
#ifndef BM_CONFIG_H
#define BM_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct bm_buf;

enum bm_config_type {
	BM_CFG_STRING = 0,
	BM_CFG_INT,
	BM_CFG_BOOL,
	BM_CFG_DOUBLE,
	BM_CFG_ENUM,
	BM_CFG_DURATION,
	BM_CFG_SIZE,
	BM_CFG_ADDR,
	BM_CFG_LIST,
};

struct bm_config_key {
	const char *name;           /* dotted path; NULL ends the table */
	enum bm_config_type type;
	size_t offset;              /* offsetof(struct ..., field) */
	size_t size;                /* sizeof the field (LIST: of one item) */
	const char *def;            /* default, as text; see above */
	int64_t min, max;           /* INT, DURATION, SIZE */
	double dmin, dmax;          /* DOUBLE */
	const char *const *enums;   /* ENUM: NULL-terminated names */
	unsigned list_max;          /* LIST: number of slots */
	int reloadable;             /* SIGHUP may change it */
	int secret;                 /* dumped as "(redacted)" */
	const char *help;
};

/* offset and size of a struct member, for the table. */
#define BM_CFG_FIELD(type, member) offsetof(type, member), sizeof(((type *)0)->member)
/* For LIST: offset and size of one item of a char[N][M] member. */
#define BM_CFG_LIST_FIELD(type, member) \
	offsetof(type, member), sizeof(((type *)0)->member[0])

/* Keys that a reload changed: names point into the key table (static). */
#define BM_CONFIG_MAX_CHANGES 64
struct bm_config_changes {
	size_t n;                   /* may exceed BM_CONFIG_MAX_CHANGES */
	const char *keys[BM_CONFIG_MAX_CHANGES];
};

/* Check the table itself (sizes, bounds, defaults).  Daemons call it once at
 * start (and tests for every table); the other functions assume it passed. */
int bm_config_check(const struct bm_config_key *keys, char *err, size_t errlen);

/* Write every key's default into conf.  Other bytes of conf are untouched. */
int bm_config_defaults(const struct bm_config_key *keys, void *conf,
		       char *err, size_t errlen);

/* Apply defaults, then the document at path (or text[0..len), named name in
 * messages).  On error conf holds defaults plus whatever was applied before
 * the failing key: a daemon at start exits, it does not use it. */
int bm_config_load_file(const struct bm_config_key *keys, void *conf,
			const char *path, char *err, size_t errlen);
int bm_config_load_string(const struct bm_config_key *keys, void *conf,
			  const char *text, size_t len, const char *name,
			  char *err, size_t errlen);

/* Build a new config from path into a copy of cur (conf_size bytes, so
 * members outside the table are carried over) and compare it key by key.
 *  - a document error: returns BM_ECONFIG, cur untouched;
 *  - a changed key that is not reloadable: logs a warning naming the key
 *    ("needs a restart"), returns BM_ESTATE, cur untouched;
 *  - otherwise copies the new config over cur, fills *changed (may be NULL)
 *    with the names of the keys whose value changed, returns 0.
 * err gets the reason on failure. */
int bm_config_reload(const struct bm_config_key *keys, void *cur, size_t conf_size,
		     const char *path, struct bm_config_changes *changed,
		     char *err, size_t errlen);

/* "limits.rate, log.level" (or "none") into buf; truncated to fit. */
void bm_config_changes_join(const struct bm_config_changes *ch, char *buf,
			    size_t len);

/* The effective config as a nested JSON object (new reference, NULL on
 * allocation failure).  Durations and sizes are written as strings with the
 * largest exact unit ("5s", "64KiB"), so the output loads back as is;
 * secret keys are written as "(redacted)". */
json_t *bm_config_to_json(const struct bm_config_key *keys, const void *conf);
/* The same, indented, with a final newline, appended to out. */
int bm_config_dump(const struct bm_config_key *keys, const void *conf,
		   struct bm_buf *out);

/* A listing of every key: name, type, default, bounds or allowed values,
 * reloadable, help.  For --help-config and man page generation. */
int bm_config_help(const struct bm_config_key *keys, struct bm_buf *out);

/* For daemons at start: check the table, then load path (NULL = defaults
 * only) into conf.  On failure prints "<prog>: <reason>" on stderr and
 * returns BM_ECONFIG. */
int bm_config_start(const struct bm_config_key *keys, void *conf, const char *path,
		    const char *prog);
/* --help-config and --print-config: the listing or the effective config on
 * stdout.  Return 0 or the bm_buf error. */
int bm_config_print_help(const struct bm_config_key *keys);
int bm_config_print(const struct bm_config_key *keys, const void *conf);

/* Name of a type ("duration", ...). */
const char *bm_config_type_name(enum bm_config_type type);

/* Split a validated "host:port" (BM_CFG_ADDR syntax) into host (brackets of
 * an IPv6 address removed) and port.  Returns 0 or BM_EINVAL. */
int bm_config_addr_split(const char *addr, char *host, size_t hostlen,
			 uint16_t *port);

#endif
