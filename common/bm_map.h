/*
 * bm_map.h - a string-keyed hash map (open addressing, linear probing).
 *
 * Keys are copied into the map (or, for a map made by bm_map_init_borrowed,
 * borrowed: the caller keeps each key alive and unchanged while it is in the
 * map, which saves a copy per insert); values are pointers the caller owns.
 * Lookups and inserts are O(1) on average; the table doubles at 3/4 load and
 * never shrinks below its initial size.  Deleting uses backward-shift, so no
 * tombstones accumulate.  Not thread-safe.
 */
#ifndef BM_MAP_H
#define BM_MAP_H

#include <stddef.h>
#include <stdint.h>

struct bm_map_slot {
	char *key;        /* NULL = empty */
	uint64_t hash;
	void *val;
};

struct bm_map {
	struct bm_map_slot *slots;
	size_t cap;       /* power of two, or 0 before first insert */
	size_t count;
	int borrowed;     /* keys are the caller's (bm_map_init_borrowed) */
	int nofork;       /* a large table is not inherited by fork() */
	int mapped;       /* slots came from mmap (large tables), not calloc */
};

void bm_map_init(struct bm_map *m);
void bm_map_init_borrowed(struct bm_map *m);
/* Frees the keys (unless borrowed) and the table; values are the caller's. */
void bm_map_release(struct bm_map *m);
void *bm_map_get(const struct bm_map *m, const char *key);
/* Size the table for n keys now, so that no insert up to n rehashes (a
 * rehash of a large table is one long stall).  The table is zero pages until
 * written: its pages cost memory as keys land on them.  A table of 2 MiB or
 * more is mapped on its own (munmap'ed when it is freed; bm_map_nofork
 * applies to it).  Returns 0 or BM_ENOMEM. */
int bm_map_reserve(struct bm_map *m, size_t n);
/* Keep the map's table out of any child fork() makes (MADV_DONTFORK on a
 * large table): the child must not read this map at all, and in return the
 * parent takes no copy-on-write fault per slot it writes while the child
 * lives.  Call before the first insert or reserve. */
void bm_map_nofork(struct bm_map *m);
/* Insert or replace.  *old (may be NULL) gets the replaced value or NULL.
 * Returns 0 or BM_ENOMEM. */
int bm_map_put(struct bm_map *m, const char *key, void *val, void **old);
/* Remove; returns the value or NULL when absent. */
void *bm_map_del(struct bm_map *m, const char *key);

/* Iteration: for (size_t i = 0; bm_map_next(m, &i, &k, &v); ) ...
 * The map must not change during iteration (except bm_map_del of the key just
 * returned, after which iteration must restart). */
int bm_map_next(const struct bm_map *m, size_t *iter, const char **key, void **val);

uint64_t bm_map_hash(const void *p, size_t n, uint64_t seed);

#endif
