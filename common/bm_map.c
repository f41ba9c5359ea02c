#include "bm_map.h"
#include "bm_err.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Tables this big get their own mapping (so MADV_DONTFORK can apply). */
#define BM_MAP_MMAP_MIN ((size_t)2 << 20)

/* FNV-1a with a murmur3 finalizer: fast on short keys (EIDs), well mixed. */
uint64_t bm_map_hash(const void *p, size_t n, uint64_t seed)
{
	const uint8_t *s = p;
	uint64_t h = 0xcbf29ce484222325ull ^ seed;

	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

void bm_map_init(struct bm_map *m)
{
	m->slots = NULL;
	m->cap = m->count = 0;
	m->borrowed = m->nofork = m->mapped = 0;
}

void bm_map_init_borrowed(struct bm_map *m)
{
	bm_map_init(m);
	m->borrowed = 1;
}

void bm_map_nofork(struct bm_map *m)
{
	m->nofork = 1;
}

static struct bm_map_slot *table_alloc(const struct bm_map *m, size_t cap, int *mapped)
{
	size_t bytes = cap * sizeof(struct bm_map_slot);
	void *p;

	*mapped = 0;
	if (bytes < BM_MAP_MMAP_MIN)
		return calloc(cap, sizeof(struct bm_map_slot));
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	/* No MADV_HUGEPAGE: measured, it gained nothing clear and its first
	 * touches cost ~40 ms (2 MiB zeroed and compacted per fault). */
	if (m->nofork)
		(void)madvise(p, bytes, MADV_DONTFORK);
	*mapped = 1;
	return p;
}

static void table_free(struct bm_map_slot *t, size_t cap, int mapped)
{
	if (mapped)
		munmap(t, cap * sizeof(*t));
	else
		free(t);
}

void bm_map_release(struct bm_map *m)
{
	int borrowed = m->borrowed, nofork = m->nofork;

	for (size_t i = 0; i < m->cap && !borrowed; i++)
		free(m->slots[i].key);
	if (m->slots)
		table_free(m->slots, m->cap, m->mapped);
	bm_map_init(m);
	m->borrowed = borrowed;
	m->nofork = nofork;
}

static size_t find(const struct bm_map *m, const char *key, uint64_t h)
{
	size_t mask = m->cap - 1, i = h & mask;

	while (m->slots[i].key) {
		if (m->slots[i].hash == h && strcmp(m->slots[i].key, key) == 0)
			return i;
		i = (i + 1) & mask;
	}
	return i;
}

void *bm_map_get(const struct bm_map *m, const char *key)
{
	size_t i;

	if (!m->cap)
		return NULL;
	i = find(m, key, bm_map_hash(key, strlen(key), 0));
	return m->slots[i].key ? m->slots[i].val : NULL;
}

static int resize(struct bm_map *m, size_t ncap);

static int grow(struct bm_map *m)
{
	return resize(m, m->cap ? m->cap * 2 : 16);
}

int bm_map_reserve(struct bm_map *m, size_t n)
{
	size_t cap = m->cap ? m->cap : 16;

	while (n * 4 > cap * 3)
		cap *= 2;
	return cap > m->cap ? resize(m, cap) : 0;
}

static int resize(struct bm_map *m, size_t ncap)
{
	int mapped, omapped = m->mapped;
	struct bm_map_slot *ns = table_alloc(m, ncap, &mapped), *old = m->slots;
	size_t ocap = m->cap;

	if (!ns)
		return BM_ENOMEM;
	m->slots = ns;
	m->cap = ncap;
	m->mapped = mapped;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i].key) {
			size_t j = old[i].hash & (ncap - 1);
			while (ns[j].key)
				j = (j + 1) & (ncap - 1);
			ns[j] = old[i];
		}
	}
	if (old)
		table_free(old, ocap, omapped);
	return 0;
}

int bm_map_put(struct bm_map *m, const char *key, void *val, void **old)
{
	uint64_t h = bm_map_hash(key, strlen(key), 0);
	size_t i;
	char *k;

	if (old)
		*old = NULL;
	if ((m->count + 1) * 4 > m->cap * 3 && grow(m))
		return BM_ENOMEM;
	i = find(m, key, h);
	if (m->slots[i].key) {
		if (old)
			*old = m->slots[i].val;
		m->slots[i].val = val;
		return 0;
	}
	k = m->borrowed ? (char *)key : strdup(key);
	if (!k)
		return BM_ENOMEM;
	m->slots[i].key = k;
	m->slots[i].hash = h;
	m->slots[i].val = val;
	m->count++;
	return 0;
}

void *bm_map_del(struct bm_map *m, const char *key)
{
	size_t mask, i, j;
	void *val;

	if (!m->cap)
		return NULL;
	i = find(m, key, bm_map_hash(key, strlen(key), 0));
	if (!m->slots[i].key)
		return NULL;
	val = m->slots[i].val;
	if (!m->borrowed)
		free(m->slots[i].key);
	m->slots[i].key = NULL;
	m->count--;
	/* Backward-shift the cluster that follows so probes stay unbroken. */
	mask = m->cap - 1;
	j = i;
	for (;;) {
		size_t home;
		j = (j + 1) & mask;
		if (!m->slots[j].key)
			break;
		home = m->slots[j].hash & mask;
		/* Move j into the hole i unless home lies cyclically in (i, j]. */
		if ((j > i && (home <= i || home > j)) ||
		    (j < i && (home <= i && home > j))) {
			m->slots[i] = m->slots[j];
			m->slots[j].key = NULL;
			i = j;
		}
	}
	return val;
}

int bm_map_next(const struct bm_map *m, size_t *iter, const char **key, void **val)
{
	while (*iter < m->cap) {
		size_t i = (*iter)++;
		if (m->slots[i].key) {
			if (key)
				*key = m->slots[i].key;
			if (val)
				*val = m->slots[i].val;
			return 1;
		}
	}
	return 0;
}
