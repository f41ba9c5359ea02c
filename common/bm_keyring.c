#include "bm_keyring.h"
#include "bm_err.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* A record: the key's place in the arena, then the caller's value. */
struct rec {
	uint32_t tag;        /* the key's hash >> 32 */
	uint32_t key_off;
	uint32_t key_len;    /* without the NUL */
	uint32_t pad;
};

#define REC(r, slot) ((struct rec *)((r)->ring + (slot) * (r)->rec_size))
#define VAL(p) ((void *)((uint8_t *)(p) + sizeof(struct rec)))

static inline uint64_t mul_fold(uint64_t a, uint64_t b)
{
	unsigned __int128 m = (unsigned __int128)a * b;

	return (uint64_t)m ^ (uint64_t)(m >> 64);
}

/* Eight bytes at a time (keys are tens of bytes: a byte-wise hash spends
 * more on the key than the probe does), seeded per process. */
static uint64_t key_hash(const char *p, size_t n, uint64_t seed)
{
	uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull), w;

	for (; n >= 8; p += 8, n -= 8) {
		memcpy(&w, p, 8);
		h = mul_fold(h ^ w, 0xa0761d6478bd642full);
	}
	if (n) {
		w = 0;
		memcpy(&w, p, n);
		h = mul_fold(h ^ w, 0xe7037ed1a0b428dbull);
	}
	return mul_fold(h ^ (h >> 29), 0x8ebc6af09c88c6e3ull);
}

/* Home entry of a tag: a bijective mix, so keys that share a home share
 * none of the tag's bits by construction and a tag match is a 2^-32
 * chance for a different key. */
static inline size_t home_of(const struct bm_keyring *r, uint32_t tag)
{
	return (size_t)((uint32_t)(tag * 0x9e3779b1u) >> r->index_shift) & r->index_mask;
}

static void *big_alloc(size_t bytes, int nofork)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	if (nofork)
		(void)madvise(p, bytes, MADV_DONTFORK);
	/* Transparent huge pages where the system allows them (madvise mode):
	 * the ring and the arena are written front to back and the index at
	 * random, so 4 KiB pages meant a page fault every few dozen keys while
	 * they fill and a TLB miss on most lookups.  A server at 90 k msgs/s
	 * spent ~10 % of its loop in those faults (docs/performance.md,
	 * eighth session). */
	(void)madvise(p, bytes, MADV_HUGEPAGE);
	return p;
}

static uint64_t new_seed(void)
{
	uint64_t s = 0;
	struct timespec ts;

	if (getrandom(&s, sizeof(s), GRND_NONBLOCK) == (ssize_t)sizeof(s))
		return s;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return mul_fold((uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32),
			0x9e3779b97f4a7c15ull) ^ (uint64_t)(uintptr_t)&s;
}

int bm_keyring_init(struct bm_keyring *r, size_t max_keys, size_t arena_bytes,
		    size_t val_size, int nofork)
{
	size_t entries = 16;
	unsigned bits = 4;

	memset(r, 0, sizeof(*r));
	if (!max_keys || max_keys >= ((size_t)1 << 31) || val_size > 4096 ||
	    arena_bytes < 2 * (BM_KEYRING_KEY_MAX + 1) || arena_bytes > UINT32_MAX)
		return BM_EINVAL;
	while (entries < 2 * max_keys) {
		entries *= 2;
		bits++;
	}
	r->max = max_keys;
	r->val_size = val_size;
	r->rec_size = (sizeof(struct rec) + val_size + 7) & ~(size_t)7;
	r->index_mask = entries - 1;
	r->index_shift = 32 - bits;
	r->index_bytes = entries * sizeof(uint64_t);
	r->ring_bytes = max_keys * r->rec_size;
	r->arena_cap = arena_bytes;
	r->seed = new_seed();
	r->index = big_alloc(r->index_bytes, nofork);
	r->ring = big_alloc(r->ring_bytes, 0);
	r->arena = big_alloc(arena_bytes, 0);
	if (!r->index || !r->ring || !r->arena) {
		bm_keyring_release(r);
		return BM_ENOMEM;
	}
	return 0;
}

void bm_keyring_release(struct bm_keyring *r)
{
	if (r->index)
		munmap(r->index, r->index_bytes);
	if (r->ring)
		munmap(r->ring, r->ring_bytes);
	if (r->arena)
		munmap(r->arena, r->arena_cap);
	memset(r, 0, sizeof(*r));
}

/* The record of key[0..len), whose hash has this tag, or NULL. */
static struct rec *find(const struct bm_keyring *r, const char *key, size_t len,
			uint32_t tag)
{
	uint64_t e;

	for (size_t i = home_of(r, tag); (e = r->index[i]) != 0; i = (i + 1) & r->index_mask) {
		struct rec *c;

		if ((uint32_t)(e >> 32) != tag)
			continue;
		c = REC(r, (size_t)(uint32_t)e - 1);
		if (c->key_len == len && !memcmp(r->arena + c->key_off, key, len))
			return c;
	}
	return NULL;
}

uint64_t bm_keyring_hash(const struct bm_keyring *r, const char *key, size_t len)
{
	return key_hash(key, len, r->seed);
}

void *bm_keyring_get(const struct bm_keyring *r, const char *key, size_t len)
{
	return bm_keyring_get_h(r, key, len, key_hash(key, len, r->seed));
}

void *bm_keyring_get_h(const struct bm_keyring *r, const char *key, size_t len, uint64_t hash)
{
	struct rec *c;

	if (!r->count || len > BM_KEYRING_KEY_MAX)
		return NULL;
	c = find(r, key, len, (uint32_t)(hash >> 32));
	return c ? VAL(c) : NULL;
}

void bm_keyring_prefetch(const struct bm_keyring *r, const char *key, size_t len)
{
	if (len <= BM_KEYRING_KEY_MAX)
		bm_keyring_prefetch_h(r, key_hash(key, len, r->seed));
}

void bm_keyring_prefetch_h(const struct bm_keyring *r, uint64_t hash)
{
	uint32_t tag = (uint32_t)(hash >> 32);

	__builtin_prefetch(&r->index[home_of(r, tag)], 0, 3);
	if (r->count == r->max) {
		/* The oldest record is read here for its tag; the ones after it
		 * come next, so load one well ahead. */
		__builtin_prefetch(REC(r, (r->head + 8) % r->max), 0, 3);
		__builtin_prefetch(&r->index[home_of(r, REC(r, r->head)->tag)], 1, 3);
	}
}

/* Remove index entry i, shifting back the run after it so that every entry
 * stays reachable from its home without tombstones. */
static void index_del(struct bm_keyring *r, size_t i)
{
	size_t mask = r->index_mask, j = i;

	r->index[i] = 0;
	for (;;) {
		size_t home;

		j = (j + 1) & mask;
		if (!r->index[j])
			return;
		home = home_of(r, (uint32_t)(r->index[j] >> 32));
		/* j may move into the hole i unless its home lies cyclically
		 * in (i, j]. */
		if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
			r->index[i] = r->index[j];
			r->index[j] = 0;
			i = j;
		}
	}
}

static void evict_oldest(struct bm_keyring *r)
{
	struct rec *c = REC(r, r->head);
	uint64_t want = (uint64_t)r->head + 1;
	size_t i;

	for (i = home_of(r, c->tag); r->index[i]; i = (i + 1) & r->index_mask)
		if ((uint32_t)r->index[i] == want) {
			index_del(r, i);
			break;
		}
	r->head = r->head + 1 == r->max ? 0 : r->head + 1;
	r->count--;
	r->evicted++;
	if (!r->count)
		r->arena_tail = 0;
}

/* Where n bytes go in the arena, or -1 while the oldest keys hold it. */
static long arena_place(const struct bm_keyring *r, size_t n)
{
	size_t first;

	if (!r->count)
		return 0;
	first = REC(r, r->head)->key_off;   /* the oldest key's bytes */
	if (r->arena_tail > first) {
		/* Held: [first, tail).  After tail, or from the start. */
		if (r->arena_tail + n <= r->arena_cap)
			return (long)r->arena_tail;
		return n < first ? 0 : -1;
	}
	/* Wrapped, held: [first, end) and [0, tail). */
	return r->arena_tail + n < first ? (long)r->arena_tail : -1;
}

void *bm_keyring_add(struct bm_keyring *r, const char *key, size_t len, int *existed)
{
	return bm_keyring_add_h(r, key, len, key_hash(key, len, r->seed), existed);
}

void *bm_keyring_add_h(struct bm_keyring *r, const char *key, size_t len, uint64_t hash,
		       int *existed)
{
	uint32_t tag = (uint32_t)(hash >> 32);
	size_t i, slot;
	long off;
	struct rec *c;

	if (existed)
		*existed = 0;
	if (len > BM_KEYRING_KEY_MAX)
		return NULL;
	c = find(r, key, len, tag);
	if (c) {
		if (existed)
			*existed = 1;
		return VAL(c);
	}
	if (r->count == r->max)
		evict_oldest(r);
	while ((off = arena_place(r, len + 1)) < 0)
		evict_oldest(r);
	memcpy(r->arena + off, key, len);
	r->arena[off + (long)len] = 0;
	r->arena_tail = (size_t)off + len + 1;
	slot = r->head + r->count;
	if (slot >= r->max)
		slot -= r->max;
	c = REC(r, slot);
	c->tag = tag;
	c->key_off = (uint32_t)off;
	c->key_len = (uint32_t)len;
	c->pad = 0;
	memset(VAL(c), 0, r->val_size);
	/* Evictions may have shifted the run: probe again for a free entry. */
	for (i = home_of(r, tag); r->index[i]; i = (i + 1) & r->index_mask)
		;
	r->index[i] = (uint64_t)tag << 32 | ((uint64_t)slot + 1);
	r->count++;
	r->added++;
	return VAL(c);
}

void *bm_keyring_at(const struct bm_keyring *r, size_t i, const char **key)
{
	size_t slot = r->head + i;
	struct rec *c;

	if (slot >= r->max)
		slot -= r->max;
	c = REC(r, slot);
	if (key)
		*key = r->arena + c->key_off;
	return VAL(c);
}

const char *bm_keyring_key(const struct bm_keyring *r, const void *val)
{
	const struct rec *c = (const struct rec *)((const uint8_t *)val - sizeof(struct rec));

	return r->arena + c->key_off;
}

uint64_t bm_keyring_seq(const struct bm_keyring *r, const void *val)
{
	size_t slot = (size_t)((const uint8_t *)val - sizeof(struct rec) - r->ring) / r->rec_size;

	return r->evicted + (slot >= r->head ? slot - r->head : slot + r->max - r->head);
}
