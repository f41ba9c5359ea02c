#include "bm_idmap.h"

#include <stdlib.h>
#include <string.h>

#include "bm_err.h"

uint64_t bm_mix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

uint64_t bm_hash64(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return bm_mix64(h);
}

int bm_cluster_grow(void **p, unsigned *cap, unsigned need, size_t sz)
{
	unsigned c = *cap ? *cap : 16;
	void *n;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	n = realloc(*p, (size_t)c * sz);
	if (!n)
		return BM_ENOMEM;
	*p = n;
	*cap = c;
	return 0;
}

void bm_idmap_init(struct bm_idmap *m)
{
	memset(m, 0, sizeof(*m));
	m->free_head = -1;
}

void bm_idmap_release(struct bm_idmap *m)
{
	free(m->bucket);
	free(m->node);
	bm_idmap_init(m);
}

int32_t bm_idmap_get(const struct bm_idmap *m, const void *key, size_t len)
{
	uint64_t h;
	int32_t i;

	if (!m->nbucket)
		return -1;
	h = bm_hash64(key, len);
	for (i = m->bucket[h & (m->nbucket - 1)]; i >= 0; i = m->node[i].next) {
		const struct bm_idmap_node *n = &m->node[i];
		if (n->hash == h && n->len == len && memcmp(n->key, key, len) == 0)
			return n->val;
	}
	return -1;
}

static int rehash(struct bm_idmap *m, unsigned nb)
{
	int32_t *b = malloc(nb * sizeof(*b));

	if (!b)
		return BM_ENOMEM;
	for (unsigned i = 0; i < nb; i++)
		b[i] = -1;
	for (unsigned i = 0; i < m->nbucket; i++) {
		int32_t j = m->bucket[i];
		while (j >= 0) {
			int32_t next = m->node[j].next;
			unsigned s = (unsigned)(m->node[j].hash & (nb - 1));
			m->node[j].next = b[s];
			b[s] = j;
			j = next;
		}
	}
	free(m->bucket);
	m->bucket = b;
	m->nbucket = nb;
	return 0;
}

int bm_idmap_put(struct bm_idmap *m, const void *key, size_t len, int32_t val)
{
	struct bm_idmap_node *n;
	int32_t i;
	unsigned s;

	if (m->count + 1 > m->nbucket && rehash(m, m->nbucket ? m->nbucket * 2 : 16))
		return BM_ENOMEM;
	if (m->free_head >= 0) {
		i = m->free_head;
		m->free_head = m->node[i].next;
	} else {
		if (m->nnode == m->cap) {
			unsigned cap = m->cap ? m->cap * 2 : 16;
			struct bm_idmap_node *nn = realloc(m->node, cap * sizeof(*nn));
			if (!nn)
				return BM_ENOMEM;
			m->node = nn;
			m->cap = cap;
		}
		i = (int32_t)m->nnode++;
	}
	n = &m->node[i];
	n->hash = bm_hash64(key, len);
	n->key = key;
	n->len = (uint32_t)len;
	n->val = val;
	s = (unsigned)(n->hash & (m->nbucket - 1));
	n->next = m->bucket[s];
	m->bucket[s] = i;
	m->count++;
	return 0;
}

int bm_idmap_del(struct bm_idmap *m, const void *key, size_t len)
{
	uint64_t h;
	int32_t *pp;

	if (!m->nbucket)
		return BM_ENOENT;
	h = bm_hash64(key, len);
	for (pp = &m->bucket[h & (m->nbucket - 1)]; *pp >= 0; pp = &m->node[*pp].next) {
		struct bm_idmap_node *n = &m->node[*pp];
		if (n->hash == h && n->len == len && memcmp(n->key, key, len) == 0) {
			int32_t i = *pp;
			*pp = n->next;
			n->next = m->free_head;
			m->free_head = i;
			m->count--;
			return 0;
		}
	}
	return BM_ENOENT;
}
