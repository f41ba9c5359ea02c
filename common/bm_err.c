#include "bm_err.h"

struct err_entry {
	int code;
	int http;
	const char *name;
	const char *text;
};

static const struct err_entry table[] = {
#define BM_ERR_ROW(name, val, http, text) { val, http, #name, text },
	BM_ERRORS(BM_ERR_ROW)
#undef BM_ERR_ROW
};

static const struct err_entry *find(int err)
{
	unsigned i = (unsigned)(-err);

	if (err > 0 || i >= sizeof(table) / sizeof(table[0]))
		return 0;
	/* The table is dense: index i holds code -i (checked by a unit test). */
	return &table[i];
}

const char *bm_strerror(int err)
{
	const struct err_entry *e = find(err);
	return e ? e->text : "unknown error";
}

const char *bm_errname(int err)
{
	const struct err_entry *e = find(err);
	return e ? e->name : "BM_E?";
}

int bm_err_http(int err)
{
	const struct err_entry *e = find(err);
	return e ? e->http : 500;
}
