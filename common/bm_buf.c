#include "bm_buf.h"
#include "bm_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bm_buf_init(struct bm_buf *b, size_t max_cap)
{
	b->data = NULL;
	b->len = b->cap = 0;
	b->max_cap = max_cap;
}

void bm_buf_release(struct bm_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

int bm_buf_grow(struct bm_buf *b, size_t extra)
{
	size_t need, cap;
	uint8_t *p;

	if (extra > SIZE_MAX - b->len - 1)
		return BM_ETOOBIG;
	need = b->len + extra + 1;
	if (need <= b->cap)
		return 0;
	if (b->max_cap && need > b->max_cap + 1)
		return BM_ETOOBIG;
	cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	if (b->max_cap && cap > b->max_cap + 1)
		cap = b->max_cap + 1;
	p = realloc(b->data, cap);
	if (!p)
		return BM_ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

int bm_buf_add(struct bm_buf *b, const void *p, size_t n)
{
	int rc = bm_buf_grow(b, n);

	if (rc)
		return rc;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = 0;
	return 0;
}

int bm_buf_adds(struct bm_buf *b, const char *s)
{
	return bm_buf_add(b, s, strlen(s));
}

int bm_buf_addf(struct bm_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return BM_EINVAL;
	rc = bm_buf_grow(b, (size_t)n);
	if (rc)
		return rc;
	va_start(ap, fmt);
	vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

void bm_buf_consume(struct bm_buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
	} else {
		memmove(b->data, b->data + n, b->len - n);
		b->len -= n;
	}
	if (b->data)
		b->data[b->len] = 0;
}

void bm_buf_reset(struct bm_buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = 0;
}

uint8_t *bm_buf_detach(struct bm_buf *b, size_t *len_out)
{
	uint8_t *p = b->data;

	if (len_out)
		*len_out = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}
