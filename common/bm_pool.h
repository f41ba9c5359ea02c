/*
 * bm_pool.h - a free list for one size of object that the event loop
 * allocates and frees once per message (completion contexts).
 *
 * glibc's per-thread cache holds 7 chunks of a size; a loop that allocates a
 * batch of hundreds and frees them when the batch completes goes through
 * malloc's slow paths every time.  A pool keeps up to max freed objects for
 * reuse.  Not thread-safe: one pool per thread.  Under AddressSanitizer it
 * is plain malloc/free, so use-after-free is still caught.
 */
#ifndef BM_POOL_H
#define BM_POOL_H

#include <stdlib.h>

struct bm_pool {
	void *free;       /* singly linked through the first word */
	size_t size;      /* object size, >= sizeof(void *) */
	unsigned n, max;  /* held, most held */
};

#define BM_POOL_INIT(type, most) { NULL, sizeof(type) < sizeof(void *) ? sizeof(void *) : sizeof(type), 0, (most) }

#if defined(__SANITIZE_ADDRESS__)
#define BM_POOL_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BM_POOL_PASSTHROUGH 1
#endif
#endif

static inline void *bm_pool_get(struct bm_pool *p)
{
#ifndef BM_POOL_PASSTHROUGH
	void *o = p->free;

	if (o) {
		p->free = *(void **)o;
		p->n--;
		return o;
	}
#endif
	return malloc(p->size);
}

static inline void bm_pool_put(struct bm_pool *p, void *o)
{
#ifndef BM_POOL_PASSTHROUGH
	if (o && p->n < p->max) {
		*(void **)o = p->free;
		p->free = o;
		p->n++;
		return;
	}
#endif
	free(o);
}

#endif
