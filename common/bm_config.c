/*
 * bm_config.c - JSON configuration through a table of keys.
 * The document format and the field types are specified in bm_config.h.
 */
#include "bm_config.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PATH_LEN 256

static const char *const type_names[] = {
	[BM_CFG_STRING] = "string",
	[BM_CFG_INT] = "integer",
	[BM_CFG_BOOL] = "bool",
	[BM_CFG_DOUBLE] = "number",
	[BM_CFG_ENUM] = "enum",
	[BM_CFG_DURATION] = "duration",
	[BM_CFG_SIZE] = "size",
	[BM_CFG_ADDR] = "address",
	[BM_CFG_LIST] = "list",
};

const char *bm_config_type_name(enum bm_config_type type)
{
	if ((unsigned)type >= sizeof(type_names) / sizeof(type_names[0]))
		return "unknown";
	return type_names[type];
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* ---- units ------------------------------------------------------------- */

struct unit {
	const char *name;
	int64_t mult;
};

static const struct unit duration_units[] = {
	{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
	{ "d", 86400000 }, { "", 1 }, { NULL, 0 },
};

static const struct unit size_units[] = {
	{ "", 1 }, { "B", 1 },
	{ "KiB", 1LL << 10 }, { "MiB", 1LL << 20 }, { "GiB", 1LL << 30 },
	{ "TiB", 1LL << 40 },
	{ "KB", 1000 }, { "kB", 1000 }, { "MB", 1000000 }, { "GB", 1000000000 },
	{ "TB", 1000000000000LL }, { NULL, 0 },
};

/* "<digits><unit>" -> value; 0 or -1. */
static int parse_units(const char *s, const struct unit *units, int64_t *out)
{
	int64_t n = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		int d = *p - '0';
		if (n > (INT64_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	for (const struct unit *u = units; u->name; u++) {
		if (strcmp(p, u->name))
			continue;
		if (n > INT64_MAX / u->mult)
			return -1;
		*out = n * u->mult;
		return 0;
	}
	return -1;
}

/* Largest exact unit for dumping; the last non-empty-named entry wins. */
static void format_units(char *buf, size_t len, int64_t v, const struct unit *units,
			 int binary_only)
{
	const struct unit *best = NULL;

	for (const struct unit *u = units; u->name; u++) {
		if (!u->name[0] || v == 0 || v % u->mult)
			continue;
		if (binary_only && u->mult > 1 && (u->mult & (u->mult - 1)))
			continue;
		if (!best || u->mult > best->mult)
			best = u;
	}
	if (!best)
		snprintf(buf, len, "%" PRId64, v);
	else
		snprintf(buf, len, "%" PRId64 "%s", v / best->mult, best->name);
}

/* ---- addresses --------------------------------------------------------- */

static int valid_hostname(const char *h, size_t n)
{
	size_t label = 0;

	if (n == 0 || n > 253)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = h[i];
		if (c == '.') {
			if (label == 0 || h[i - 1] == '-')
				return 0;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)c) && c != '-')
			return 0;
		if (c == '-' && label == 0)
			return 0;
		if (++label > 63)
			return 0;
	}
	return label > 0 && h[n - 1] != '-';
}

int bm_config_addr_split(const char *addr, char *host, size_t hostlen,
			 uint16_t *port)
{
	const char *colon, *hs;
	size_t hn;
	char tmp[256];
	unsigned long p = 0;
	const char *q;

	if (!addr)
		return BM_EINVAL;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (!rb || rb[1] != ':')
			return BM_EINVAL;
		hs = addr + 1;
		hn = (size_t)(rb - hs);
		colon = rb + 1;
		if (hn == 0 || hn >= sizeof(tmp))
			return BM_EINVAL;
		memcpy(tmp, hs, hn);
		tmp[hn] = 0;
		{
			struct in6_addr a6;
			if (inet_pton(AF_INET6, tmp, &a6) != 1)
				return BM_EINVAL;
		}
	} else {
		colon = strchr(addr, ':');
		if (!colon || strchr(colon + 1, ':'))
			return BM_EINVAL;
		hs = addr;
		hn = (size_t)(colon - addr);
		if (hn == 0 || hn >= sizeof(tmp))
			return BM_EINVAL;
		memcpy(tmp, hs, hn);
		tmp[hn] = 0;
		if (strspn(tmp, "0123456789.") == hn) {
			struct in_addr a4;
			if (inet_pton(AF_INET, tmp, &a4) != 1)
				return BM_EINVAL;
		} else if (!valid_hostname(tmp, hn)) {
			return BM_EINVAL;
		}
	}
	q = colon + 1;
	if (!*q || strlen(q) > 5 || strspn(q, "0123456789") != strlen(q))
		return BM_EINVAL;
	p = strtoul(q, NULL, 10);
	if (p > 65535)
		return BM_EINVAL;
	if (host) {
		if (hn + 1 > hostlen)
			return BM_EINVAL;
		memcpy(host, tmp, hn + 1);
	}
	if (port)
		*port = (uint16_t)p;
	return 0;
}

/* ---- values ------------------------------------------------------------ */

static void describe(const json_t *v, char *buf, size_t len)
{
	switch (json_typeof(v)) {
	case JSON_STRING: {
		const char *s = json_string_value(v);
		size_t n = json_string_length(v);
		char clip[48];
		size_t i, o = 0;
		/* Printable ASCII only: the message goes to a terminal/log. */
		for (i = 0; i < n && o < 40; i++)
			clip[o++] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
		clip[o] = 0;
		snprintf(buf, len, "string \"%s%s\"", clip, i < n ? "..." : "");
		break;
	}
	case JSON_INTEGER:
		snprintf(buf, len, "integer %" JSON_INTEGER_FORMAT, json_integer_value(v));
		break;
	case JSON_REAL:
		snprintf(buf, len, "number %g", json_real_value(v));
		break;
	case JSON_TRUE:
		snprintf(buf, len, "true");
		break;
	case JSON_FALSE:
		snprintf(buf, len, "false");
		break;
	case JSON_NULL:
		snprintf(buf, len, "null");
		break;
	case JSON_ARRAY:
		snprintf(buf, len, "array");
		break;
	case JSON_OBJECT:
	default:
		snprintf(buf, len, "object");
		break;
	}
}

static void expected(const struct bm_config_key *k, char *buf, size_t len)
{
	switch (k->type) {
	case BM_CFG_STRING:
		snprintf(buf, len, "string of at most %zu bytes", k->size - 1);
		break;
	case BM_CFG_INT:
		snprintf(buf, len, "integer");
		break;
	case BM_CFG_BOOL:
		snprintf(buf, len, "true or false");
		break;
	case BM_CFG_DOUBLE:
		snprintf(buf, len, "number");
		break;
	case BM_CFG_ENUM: {
		size_t o = (size_t)snprintf(buf, len, "one of");
		for (const char *const *e = k->enums; *e && o < len; e++)
			o += (size_t)snprintf(buf + o, len - o, "%s \"%s\"",
					      e == k->enums ? "" : ",", *e);
		break;
	}
	case BM_CFG_DURATION:
		snprintf(buf, len, "duration (ms or \"250ms\", \"5s\", \"2m\", \"1h\")");
		break;
	case BM_CFG_SIZE:
		snprintf(buf, len, "size (bytes or \"64KiB\", \"16MiB\", \"1GiB\")");
		break;
	case BM_CFG_ADDR:
		snprintf(buf, len, "address \"host:port\" of at most %zu bytes",
			 k->size - 1);
		break;
	case BM_CFG_LIST:
		snprintf(buf, len, "array of at most %u non-empty strings of at most %zu bytes",
			 k->list_max, k->size - 1);
		break;
	}
}

static int bounded(int64_t v, int64_t min, int64_t max)
{
	return (min == 0 && max == 0) || (v >= min && v <= max);
}

static int store_int(const struct bm_config_key *k, void *field, int64_t v)
{
	if (k->size == sizeof(int64_t)) {
		memcpy(field, &v, sizeof(v));
		return 0;
	}
	if (v < INT32_MIN || v > INT32_MAX)
		return -1;
	{
		int32_t v32 = (int32_t)v;
		memcpy(field, &v32, sizeof(v32));
	}
	return 0;
}

static int64_t load_int(const struct bm_config_key *k, const void *field)
{
	if (k->size == sizeof(int64_t)) {
		int64_t v;
		memcpy(&v, field, sizeof(v));
		return v;
	} else {
		int32_t v;
		memcpy(&v, field, sizeof(v));
		return v;
	}
}

/* Store v into the field of k.  On failure writes why (without the key). */
static int set_value(const struct bm_config_key *k, const json_t *v, void *conf,
		     char *why, size_t whylen)
{
	char *field = (char *)conf + k->offset;
	char exp[160], got[80];
	int64_t n;

	switch (k->type) {
	case BM_CFG_STRING:
	case BM_CFG_ADDR:
		if (!json_is_string(v) || json_string_length(v) >= k->size ||
		    strlen(json_string_value(v)) != json_string_length(v))
			goto bad_type;
		if (k->type == BM_CFG_ADDR && json_string_length(v) > 0 &&
		    bm_config_addr_split(json_string_value(v), NULL, 0, NULL))
			goto bad_type;
		memset(field, 0, k->size);
		memcpy(field, json_string_value(v), json_string_length(v));
		return 0;
	case BM_CFG_INT:
		if (!json_is_integer(v))
			goto bad_type;
		n = json_integer_value(v);
		goto check_range;
	case BM_CFG_DURATION:
	case BM_CFG_SIZE:
		if (json_is_integer(v)) {
			n = json_integer_value(v);
			if (n < 0)
				goto bad_type;
		} else if (json_is_string(v)) {
			if (parse_units(json_string_value(v), k->type == BM_CFG_SIZE ?
					size_units : duration_units, &n))
				goto bad_type;
		} else {
			goto bad_type;
		}
		goto check_range;
	case BM_CFG_BOOL:
		if (!json_is_boolean(v))
			goto bad_type;
		if (k->size == 1)
			*(bool *)field = json_is_true(v);
		else
			*(int *)field = json_is_true(v);
		return 0;
	case BM_CFG_DOUBLE: {
		double d;
		if (!json_is_number(v))
			goto bad_type;
		d = json_number_value(v);
		if (!(k->dmin == 0 && k->dmax == 0) && !(d >= k->dmin && d <= k->dmax)) {
			snprintf(why, whylen, "%g out of range [%g, %g]", d, k->dmin, k->dmax);
			return -1;
		}
		memcpy(field, &d, sizeof(d));
		return 0;
	}
	case BM_CFG_ENUM:
		if (!json_is_string(v))
			goto bad_type;
		for (int i = 0; k->enums[i]; i++) {
			if (!strcmp(k->enums[i], json_string_value(v))) {
				*(int *)field = i;
				return 0;
			}
		}
		goto bad_type;
	case BM_CFG_LIST: {
		size_t i;
		json_t *it;
		if (!json_is_array(v) || json_array_size(v) > k->list_max)
			goto bad_type;
		json_array_foreach(v, i, it) {
			if (!json_is_string(it) || json_string_length(it) == 0 ||
			    json_string_length(it) >= k->size ||
			    strlen(json_string_value(it)) != json_string_length(it)) {
				expected(k, exp, sizeof(exp));
				describe(it, got, sizeof(got));
				snprintf(why, whylen, "item %zu: expected %s, got %s",
					 i, exp, got);
				return -1;
			}
		}
		memset(field, 0, k->size * k->list_max);
		json_array_foreach(v, i, it)
			memcpy(field + i * k->size, json_string_value(it),
			       json_string_length(it));
		return 0;
	}
	}
bad_type:
	expected(k, exp, sizeof(exp));
	describe(v, got, sizeof(got));
	snprintf(why, whylen, "expected %s, got %s", exp, got);
	return -1;
check_range:
	if (!bounded(n, k->min, k->max)) {
		snprintf(why, whylen, "%" PRId64 " out of range [%" PRId64 ", %" PRId64 "]",
			 n, k->min, k->max);
		return -1;
	}
	if (store_int(k, field, n)) {
		snprintf(why, whylen, "%" PRId64 " does not fit in 32 bits", n);
		return -1;
	}
	return 0;
}

/* The default of k as a JSON value (new reference), NULL if unparsable. */
static json_t *default_json(const struct bm_config_key *k)
{
	const char *d = k->def;
	char *end;

	switch (k->type) {
	case BM_CFG_STRING:
	case BM_CFG_ADDR:
		return json_string(d ? d : "");
	case BM_CFG_ENUM:
		return json_string(d ? d : (k->enums && k->enums[0] ? k->enums[0] : ""));
	case BM_CFG_INT: {
		long long v;
		if (!d)
			return json_integer(0);
		errno = 0;
		v = strtoll(d, &end, 10);
		if (errno || end == d || *end)
			return NULL;
		return json_integer(v);
	}
	case BM_CFG_DOUBLE: {
		double v;
		if (!d)
			return json_real(0);
		v = strtod(d, &end);
		if (end == d || *end)
			return NULL;
		return json_real(v);
	}
	case BM_CFG_BOOL:
		if (!d || !strcmp(d, "false") || !strcmp(d, "0"))
			return json_false();
		if (!strcmp(d, "true") || !strcmp(d, "1"))
			return json_true();
		return NULL;
	case BM_CFG_DURATION:
	case BM_CFG_SIZE:
		return d ? json_string(d) : json_integer(0);
	case BM_CFG_LIST: {
		json_t *a = json_array();
		const char *p = d ? d : "";
		while (a && *p) {
			const char *c = strchr(p, ',');
			size_t n = c ? (size_t)(c - p) : strlen(p);
			if (json_array_append_new(a, json_stringn(p, n))) {
				json_decref(a);
				return NULL;
			}
			p += n + (c ? 1 : 0);
		}
		return a;
	}
	}
	return NULL;
}

static int apply_default(const struct bm_config_key *k, void *conf,
			 char *err, size_t errlen)
{
	char why[320];
	json_t *v = default_json(k);

	if (!v) {
		seterr(err, errlen, "config: key '%s': bad default '%s'", k->name,
		       k->def ? k->def : "");
		return BM_ECONFIG;
	}
	if (set_value(k, v, conf, why, sizeof(why))) {
		seterr(err, errlen, "config: key '%s': default: %s", k->name, why);
		json_decref(v);
		return BM_ECONFIG;
	}
	json_decref(v);
	return 0;
}

int bm_config_defaults(const struct bm_config_key *keys, void *conf,
		       char *err, size_t errlen)
{
	for (const struct bm_config_key *k = keys; k->name; k++) {
		int rc = apply_default(k, conf, err, errlen);
		if (rc)
			return rc;
	}
	return 0;
}

/* ---- table check ------------------------------------------------------- */

static int valid_keyname(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= PATH_LEN || s[0] == '.' || s[n - 1] == '.' || strstr(s, ".."))
		return 0;
	return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_.") == n;
}

static size_t field_span(const struct bm_config_key *k)
{
	return k->type == BM_CFG_LIST ? k->size * k->list_max : k->size;
}

int bm_config_check(const struct bm_config_key *keys, char *err, size_t errlen)
{
	size_t span = 0;
	char *scratch;
	int rc = 0;

	for (const struct bm_config_key *k = keys; k->name; k++) {
		const char *bad = NULL;
		if (!valid_keyname(k->name))
			bad = "invalid name";
		switch (k->type) {
		case BM_CFG_STRING:
		case BM_CFG_ADDR:
			if (k->size < 2)
				bad = "string field too small";
			break;
		case BM_CFG_INT:
			if (k->size != 4 && k->size != 8)
				bad = "integer field must be 4 or 8 bytes";
			break;
		case BM_CFG_DURATION:
		case BM_CFG_SIZE:
			if (k->size != 4 && k->size != 8)
				bad = "field must be 4 or 8 bytes";
			else if (k->min < 0)
				bad = "negative minimum";
			break;
		case BM_CFG_BOOL:
			if (k->size != 1 && k->size != sizeof(int))
				bad = "bool field must be bool or int";
			break;
		case BM_CFG_DOUBLE:
			if (k->size != sizeof(double))
				bad = "field must be a double";
			else if (k->dmin > k->dmax)
				bad = "min > max";
			break;
		case BM_CFG_ENUM:
			if (k->size != sizeof(int))
				bad = "enum field must be an int";
			else if (!k->enums || !k->enums[0])
				bad = "no enum values";
			break;
		case BM_CFG_LIST:
			if (k->size < 2 || k->list_max == 0)
				bad = "list field too small";
			break;
		default:
			bad = "unknown type";
		}
		if (k->min > k->max)
			bad = "min > max";
		for (const struct bm_config_key *o = keys; !bad && o < k; o++) {
			size_t n = strlen(o->name), m = strlen(k->name);
			if (!strcmp(o->name, k->name))
				bad = "duplicate key";
			else if ((n < m && !strncmp(o->name, k->name, n) && k->name[n] == '.') ||
				 (m < n && !strncmp(o->name, k->name, m) && o->name[m] == '.'))
				bad = "key is also an object of another key";
		}
		if (bad) {
			seterr(err, errlen, "config: key '%s': %s", k->name, bad);
			return BM_ECONFIG;
		}
		if (k->offset + field_span(k) > span)
			span = k->offset + field_span(k);
	}
	scratch = calloc(1, span ? span : 1);
	if (!scratch)
		return BM_ENOMEM;
	rc = bm_config_defaults(keys, scratch, err, errlen);
	free(scratch);
	return rc;
}

/* ---- loading ----------------------------------------------------------- */

struct loader {
	const struct bm_config_key *keys;
	void *conf;
	const char *name;
	unsigned char *seen;
	char *err;
	size_t errlen;
};

static const struct bm_config_key *find_key(const struct bm_config_key *keys,
					    const char *path)
{
	for (const struct bm_config_key *k = keys; k->name; k++)
		if (!strcmp(k->name, path))
			return k;
	return NULL;
}

static int is_prefix(const struct bm_config_key *keys, const char *path)
{
	size_t n = strlen(path);

	for (const struct bm_config_key *k = keys; k->name; k++)
		if (!strncmp(k->name, path, n) && k->name[n] == '.')
			return 1;
	return 0;
}

static int walk(struct loader *l, const json_t *obj, char *path, size_t plen)
{
	const char *mk;
	json_t *v;

	json_object_foreach((json_t *)obj, mk, v) {
		size_t mlen = strlen(mk);
		const struct bm_config_key *k;
		char why[320];
		int rc;

		/* A member named "#..." is a comment (JSON has none). */
		if (mk[0] == '#')
			continue;
		if (plen + 1 + mlen >= PATH_LEN) {
			seterr(l->err, l->errlen, "config '%s': unknown key '%.*s...'",
			       l->name, (int)plen, path);
			return BM_ECONFIG;
		}
		if (plen)
			path[plen] = '.';
		memcpy(path + plen + (plen ? 1 : 0), mk, mlen + 1);
		k = find_key(l->keys, path);
		if (k) {
			size_t idx = (size_t)(k - l->keys);
			if (l->seen[idx]) {
				seterr(l->err, l->errlen, "config '%s': key '%s' is set twice",
				       l->name, path);
				return BM_ECONFIG;
			}
			l->seen[idx] = 1;
			if (set_value(k, v, l->conf, why, sizeof(why))) {
				seterr(l->err, l->errlen, "config '%s': key '%s': %s",
				       l->name, path, why);
				return BM_ECONFIG;
			}
		} else if (is_prefix(l->keys, path)) {
			if (!json_is_object(v)) {
				describe(v, why, sizeof(why));
				seterr(l->err, l->errlen,
				       "config '%s': key '%s': expected object, got %s",
				       l->name, path, why);
				return BM_ECONFIG;
			}
			rc = walk(l, v, path, strlen(path));
			if (rc)
				return rc;
		} else {
			seterr(l->err, l->errlen, "config '%s': unknown key '%s'",
			       l->name, path);
			return BM_ECONFIG;
		}
		path[plen] = 0;
	}
	return 0;
}

static size_t count_keys(const struct bm_config_key *keys)
{
	size_t n = 0;

	while (keys[n].name)
		n++;
	return n;
}

static int apply_doc(const struct bm_config_key *keys, void *conf, json_t *doc,
		     const char *name, char *err, size_t errlen)
{
	struct loader l = { keys, conf, name, NULL, err, errlen };
	char path[PATH_LEN] = "";
	int rc;

	if (!json_is_object(doc)) {
		seterr(err, errlen, "config '%s': expected a JSON object at top level",
		       name);
		return BM_ECONFIG;
	}
	rc = bm_config_defaults(keys, conf, err, errlen);
	if (rc)
		return rc;
	l.seen = calloc(1, count_keys(keys) + 1);
	if (!l.seen)
		return BM_ENOMEM;
	rc = walk(&l, doc, path, 0);
	free(l.seen);
	return rc;
}

static int syntax_error(const char *name, const json_error_t *je, char *err,
			size_t errlen)
{
	if (je->line < 0)
		seterr(err, errlen, "config '%s': %s", name, je->text);
	else
		seterr(err, errlen, "config '%s':%d:%d: %s", name, je->line,
		       je->column, je->text);
	return BM_ECONFIG;
}

int bm_config_load_string(const struct bm_config_key *keys, void *conf,
			  const char *text, size_t len, const char *name,
			  char *err, size_t errlen)
{
	json_error_t je;
	json_t *doc;
	int rc;

	if (!name)
		name = "<string>";
	doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!doc)
		return syntax_error(name, &je, err, errlen);
	rc = apply_doc(keys, conf, doc, name, err, errlen);
	json_decref(doc);
	return rc;
}

int bm_config_load_file(const struct bm_config_key *keys, void *conf,
			const char *path, char *err, size_t errlen)
{
	json_error_t je;
	json_t *doc;
	int rc;

	doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!doc)
		return syntax_error(path, &je, err, errlen);
	rc = apply_doc(keys, conf, doc, path, err, errlen);
	json_decref(doc);
	return rc;
}

/* ---- reload ------------------------------------------------------------ */

int bm_config_reload(const struct bm_config_key *keys, void *cur, size_t conf_size,
		     const char *path, struct bm_config_changes *changed,
		     char *err, size_t errlen)
{
	struct bm_config_changes ch = { 0 };
	const struct bm_config_key *restart = NULL;
	char *next;
	int rc;

	next = malloc(conf_size ? conf_size : 1);
	if (!next)
		return BM_ENOMEM;
	memcpy(next, cur, conf_size);
	rc = bm_config_load_file(keys, next, path, err, errlen);
	if (rc)
		goto out_free;
	for (const struct bm_config_key *k = keys; k->name; k++) {
		if (!memcmp((char *)cur + k->offset, next + k->offset, field_span(k)))
			continue;
		if (!k->reloadable) {
			bm_warn("config", "reload of '%s': key '%s' changed but needs a restart",
				path, k->name);
			if (!restart)
				restart = k;
			continue;
		}
		if (ch.n < BM_CONFIG_MAX_CHANGES)
			ch.keys[ch.n] = k->name;
		ch.n++;
	}
	if (restart) {
		seterr(err, errlen,
		       "config '%s': key '%s' changed but is not reloadable; restart to apply (nothing applied)",
		       path, restart->name);
		rc = BM_ESTATE;
		goto out_free;
	}
	memcpy(cur, next, conf_size);
	if (changed)
		*changed = ch;
out_free:
	free(next);
	return rc;
}

void bm_config_changes_join(const struct bm_config_changes *ch, char *buf,
			    size_t len)
{
	size_t o = 0, n = ch->n < BM_CONFIG_MAX_CHANGES ? ch->n : BM_CONFIG_MAX_CHANGES;

	if (!len)
		return;
	buf[0] = 0;
	if (ch->n == 0) {
		snprintf(buf, len, "none");
		return;
	}
	for (size_t i = 0; i < n && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "", ch->keys[i]);
	if (ch->n > n && o < len)
		snprintf(buf + o, len - o, ", ...");
}

/* ---- dump and help ----------------------------------------------------- */

static json_t *value_json(const struct bm_config_key *k, const void *conf)
{
	const char *field = (const char *)conf + k->offset;
	char tmp[64];

	if (k->secret)
		return json_string("(redacted)");
	switch (k->type) {
	case BM_CFG_STRING:
	case BM_CFG_ADDR:
		return json_stringn(field, strnlen(field, k->size));
	case BM_CFG_INT:
		return json_integer(load_int(k, field));
	case BM_CFG_BOOL:
		return json_boolean(k->size == 1 ? *(const bool *)field : *(const int *)field);
	case BM_CFG_DOUBLE: {
		double d;
		memcpy(&d, field, sizeof(d));
		return json_real(d);
	}
	case BM_CFG_ENUM: {
		int i = *(const int *)field, n = 0;
		while (k->enums[n])
			n++;
		return json_string(i >= 0 && i < n ? k->enums[i] : "");
	}
	case BM_CFG_DURATION:
	case BM_CFG_SIZE: {
		int64_t v = load_int(k, field);
		if (k->type == BM_CFG_DURATION && v > 0)
			format_units(tmp, sizeof(tmp), v, duration_units, 0);
		else if (k->type == BM_CFG_SIZE && v > 0)
			format_units(tmp, sizeof(tmp), v, size_units, 1);
		else
			return json_integer(v);
		if (isdigit((unsigned char)tmp[strlen(tmp) - 1]))
			return json_integer(v);
		return json_string(tmp);
	}
	case BM_CFG_LIST: {
		json_t *a = json_array();
		for (unsigned i = 0; a && i < k->list_max; i++) {
			const char *it = field + i * k->size;
			if (!it[0])
				break;
			if (json_array_append_new(a, json_stringn(it, strnlen(it, k->size)))) {
				json_decref(a);
				return NULL;
			}
		}
		return a;
	}
	}
	return NULL;
}

json_t *bm_config_to_json(const struct bm_config_key *keys, const void *conf)
{
	json_t *root = json_object();

	if (!root)
		return NULL;
	for (const struct bm_config_key *k = keys; k->name; k++) {
		char path[PATH_LEN];
		char *p = path, *dot;
		json_t *obj = root, *v;

		snprintf(path, sizeof(path), "%s", k->name);
		while ((dot = strchr(p, '.'))) {
			json_t *sub;
			*dot = 0;
			sub = json_object_get(obj, p);
			if (!sub) {
				sub = json_object();
				if (!sub || json_object_set_new(obj, p, sub))
					goto out_fail;
			}
			obj = sub;
			p = dot + 1;
		}
		v = value_json(k, conf);
		if (!v || json_object_set_new(obj, p, v))
			goto out_fail;
	}
	return root;
out_fail:
	json_decref(root);
	return NULL;
}

int bm_config_dump(const struct bm_config_key *keys, const void *conf,
		   struct bm_buf *out)
{
	json_t *j = bm_config_to_json(keys, conf);
	char *s;
	int rc;

	if (!j)
		return BM_ENOMEM;
	s = json_dumps(j, JSON_INDENT(2));
	json_decref(j);
	if (!s)
		return BM_ENOMEM;
	rc = bm_buf_adds(out, s);
	if (!rc)
		rc = bm_buf_adds(out, "\n");
	free(s);
	return rc;
}

static int help_bounds(const struct bm_config_key *k, struct bm_buf *out)
{
	char a[64], b[64];

	switch (k->type) {
	case BM_CFG_INT:
		if (k->min || k->max)
			return bm_buf_addf(out, ", range [%" PRId64 ", %" PRId64 "]",
					   k->min, k->max);
		return 0;
	case BM_CFG_DURATION:
	case BM_CFG_SIZE:
		if (!k->min && !k->max)
			return 0;
		format_units(a, sizeof(a), k->min, k->type == BM_CFG_SIZE ?
			     size_units : duration_units, k->type == BM_CFG_SIZE);
		format_units(b, sizeof(b), k->max, k->type == BM_CFG_SIZE ?
			     size_units : duration_units, k->type == BM_CFG_SIZE);
		return bm_buf_addf(out, ", range [%s, %s]", a, b);
	case BM_CFG_DOUBLE:
		if (k->dmin != 0 || k->dmax != 0)
			return bm_buf_addf(out, ", range [%g, %g]", k->dmin, k->dmax);
		return 0;
	case BM_CFG_ENUM: {
		int rc = bm_buf_adds(out, ", one of");
		for (const char *const *e = k->enums; !rc && *e; e++)
			rc = bm_buf_addf(out, "%s %s", e == k->enums ? "" : ",", *e);
		return rc;
	}
	case BM_CFG_LIST:
		return bm_buf_addf(out, ", at most %u items of %zu bytes", k->list_max,
				   k->size - 1);
	case BM_CFG_STRING:
	case BM_CFG_ADDR:
		return bm_buf_addf(out, ", at most %zu bytes", k->size - 1);
	default:
		return 0;
	}
}

int bm_config_help(const struct bm_config_key *keys, struct bm_buf *out)
{
	for (const struct bm_config_key *k = keys; k->name; k++) {
		int rc = bm_buf_addf(out, "%s  (%s, default \"%s\"", k->name,
				     bm_config_type_name(k->type), k->def ? k->def : "");
		if (!rc)
			rc = help_bounds(k, out);
		if (!rc)
			rc = bm_buf_addf(out, ", %s%s)\n    %s\n",
					 k->reloadable ? "reloadable" : "restart to change",
					 k->secret ? ", secret" : "",
					 k->help ? k->help : "");
		if (rc)
			return rc;
	}
	return 0;
}

int bm_config_start(const struct bm_config_key *keys, void *conf, const char *path,
		    const char *prog)
{
	char err[300];

	if (bm_config_check(keys, err, sizeof(err)) ||
	    (path ? bm_config_load_file(keys, conf, path, err, sizeof(err))
		  : bm_config_defaults(keys, conf, err, sizeof(err)))) {
		fprintf(stderr, "%s: %s\n", prog, err);
		return BM_ECONFIG;
	}
	return 0;
}

static int print_buf(struct bm_buf *b, int rc)
{
	if (!rc && b->data)
		fputs((char *)b->data, stdout);
	bm_buf_release(b);
	return rc;
}

int bm_config_print_help(const struct bm_config_key *keys)
{
	struct bm_buf b = BM_BUF_INIT;

	return print_buf(&b, bm_config_help(keys, &b));
}

int bm_config_print(const struct bm_config_key *keys, const void *conf)
{
	struct bm_buf b = BM_BUF_INIT;

	return print_buf(&b, bm_config_dump(keys, conf, &b));
}
