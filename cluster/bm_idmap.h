/*
 * bm_idmap.h - a string-keyed index: key bytes -> int32 (an array slot).
 *
 * Keys are borrowed: the caller keeps the key bytes alive and unchanged while
 * the key is in the map (typically the key lives in the element the value
 * indexes).  Chained hashing over a node pool; grows by doubling, so lookups
 * stay O(1) for the member and registry tables.
 */
#ifndef BM_IDMAP_H
#define BM_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct bm_idmap_node {
	uint64_t hash;
	const char *key;
	uint32_t len;
	int32_t val;
	int32_t next;
};

struct bm_idmap {
	int32_t *bucket;
	unsigned nbucket;      /* power of two */
	struct bm_idmap_node *node;
	unsigned nnode, cap;
	int32_t free_head;
	unsigned count;
};

/* 64-bit FNV-1a followed by the murmur3 finalizer; stable across builds. */
uint64_t bm_hash64(const void *p, size_t n);
/* murmur3 fmix64 */
uint64_t bm_mix64(uint64_t h);
/* Make room for need elements of sz bytes in the array *p of *cap (doubling
 * from 16).  Returns 0 or BM_ENOMEM (the array is unchanged). */
int bm_cluster_grow(void **p, unsigned *cap, unsigned need, size_t sz);

void bm_idmap_init(struct bm_idmap *m);
void bm_idmap_release(struct bm_idmap *m);
/* Value for key, or -1. */
int32_t bm_idmap_get(const struct bm_idmap *m, const void *key, size_t len);
/* Insert a key not yet present.  Returns 0 or BM_ENOMEM. */
int bm_idmap_put(struct bm_idmap *m, const void *key, size_t len, int32_t val);
/* Returns 0 or BM_ENOENT. */
int bm_idmap_del(struct bm_idmap *m, const void *key, size_t len);

#endif
