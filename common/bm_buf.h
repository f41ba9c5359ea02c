/*
 * bm_buf.h - a growable byte buffer (after git's strbuf).
 *
 * Invariants: buf->data is NULL or points to cap bytes; len <= cap; when
 * cap > 0, data[len] == 0 so the contents can be used as a C string.
 * A zeroed struct bm_buf (BM_BUF_INIT) is a valid empty buffer.
 * Growth is bounded by the caller: bm_buf_grow refuses to exceed max_cap
 * when the buffer has one (0 means no limit).
 */
#ifndef BM_BUF_H
#define BM_BUF_H

#include <stddef.h>
#include <stdint.h>

struct bm_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t max_cap;   /* 0 = unbounded */
};

#define BM_BUF_INIT { 0, 0, 0, 0 }

void bm_buf_init(struct bm_buf *b, size_t max_cap);
void bm_buf_release(struct bm_buf *b);
/* Ensure room for extra more bytes (+1 for the terminator).
 * Returns 0, BM_ETOOBIG past max_cap, or BM_ENOMEM. */
int bm_buf_grow(struct bm_buf *b, size_t extra);
int bm_buf_add(struct bm_buf *b, const void *p, size_t n);
int bm_buf_adds(struct bm_buf *b, const char *s);
int bm_buf_addf(struct bm_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void bm_buf_consume(struct bm_buf *b, size_t n);
void bm_buf_reset(struct bm_buf *b);
/* Detach the storage; caller frees it with free(). *len_out may be NULL. */
uint8_t *bm_buf_detach(struct bm_buf *b, size_t *len_out);

#endif
