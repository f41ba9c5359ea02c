/*
 * Fuzz target: arbitrary bytes as a config document, loaded through a table
 * that has one key of every type.  Whatever loads must dump, and the dump
 * must load back to the same values.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_buf.h"
#include "bm_config.h"
#include "bm_err.h"
#include "bm_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fconf {
	char addr[48];
	char str[16];
	int64_t i64;
	int i32;
	int64_t dur;
	int64_t sz;
	int b;
	bool bb;
	double d;
	int e;
	char list[4][12];
};

static const char *const names[] = { "a", "bb", "ccc", NULL };

static const struct bm_config_key keys[] = {
	{ "net.addr", BM_CFG_ADDR, BM_CFG_FIELD(struct fconf, addr), .def = "127.0.0.1:0" },
	{ "net.name", BM_CFG_STRING, BM_CFG_FIELD(struct fconf, str), .def = "x" },
	{ "n.i64", BM_CFG_INT, BM_CFG_FIELD(struct fconf, i64), .def = "0" },
	{ "n.i32", BM_CFG_INT, BM_CFG_FIELD(struct fconf, i32), .def = "5", .min = -10,
	  .max = 1000 },
	{ "t.dur", BM_CFG_DURATION, BM_CFG_FIELD(struct fconf, dur), .def = "1s" },
	{ "t.size", BM_CFG_SIZE, BM_CFG_FIELD(struct fconf, sz), .def = "1KiB", .min = 1,
	  .max = INT64_MAX },
	{ "b.int", BM_CFG_BOOL, BM_CFG_FIELD(struct fconf, b) },
	{ "b.bool", BM_CFG_BOOL, BM_CFG_FIELD(struct fconf, bb), .def = "true" },
	{ "d", BM_CFG_DOUBLE, BM_CFG_FIELD(struct fconf, d), .def = "0.25", .dmin = -1,
	  .dmax = 1e300 },
	{ "e", BM_CFG_ENUM, BM_CFG_FIELD(struct fconf, e), .def = "bb", .enums = names },
	{ "l", BM_CFG_LIST, BM_CFG_LIST_FIELD(struct fconf, list), .def = "p,q",
	  .list_max = 4 },
	{ NULL }
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fconf c, d;
	struct bm_buf out = BM_BUF_INIT;
	char err[256];

	memset(&c, 0, sizeof(c));
	if (bm_config_load_string(keys, &c, (const char *)data, size, "fuzz", err,
				  sizeof(err)))
		return 0;
	if (bm_config_dump(keys, &c, &out) == 0) {
		memset(&d, 0, sizeof(d));
		if (bm_config_load_string(keys, &d, (const char *)out.data, out.len,
					  "dump", err, sizeof(err)) ||
		    memcmp(&c, &d, sizeof(c)))
			abort();
	}
	bm_buf_release(&out);
	return 0;
}
