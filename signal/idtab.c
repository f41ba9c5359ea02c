/*
 * idtab.c - session id -> session, open addressing on 64-bit keys.
 *
 * Servers address pushes and kicks by the signal-local session id; this
 * table answers that in O(1) for 16 bytes (plus load-factor slack) per
 * session, without a string key.
 */
#include "sig.h"

#include "bm_err.h"

#include <stdlib.h>

static size_t slot_of(uint64_t id, size_t mask)
{
	id ^= id >> 33;
	id *= 0xff51afd7ed558ccdull;
	id ^= id >> 33;
	return (size_t)id & mask;
}

static int grow(struct sig_idtab *t)
{
	size_t ncap = t->cap ? t->cap * 2 : 1024;
	struct sig_idslot *ns = calloc(ncap, sizeof(*ns)), *old = t->slots;

	if (!ns)
		return BM_ENOMEM;
	for (size_t i = 0; i < t->cap; i++) {
		if (old[i].id) {
			size_t j = slot_of(old[i].id, ncap - 1);
			while (ns[j].id)
				j = (j + 1) & (ncap - 1);
			ns[j] = old[i];
		}
	}
	free(old);
	t->slots = ns;
	t->cap = ncap;
	return 0;
}

int sig_idtab_put(struct sig_idtab *t, uint64_t id, struct sig_sess *s)
{
	size_t i;

	if ((t->count + 1) * 4 > t->cap * 3 && grow(t))
		return BM_ENOMEM;
	i = slot_of(id, t->cap - 1);
	while (t->slots[i].id && t->slots[i].id != id)
		i = (i + 1) & (t->cap - 1);
	if (!t->slots[i].id)
		t->count++;
	t->slots[i].id = id;
	t->slots[i].s = s;
	return 0;
}

struct sig_sess *sig_idtab_get(const struct sig_idtab *t, uint64_t id)
{
	size_t i;

	if (!t->cap || !id)
		return NULL;
	for (i = slot_of(id, t->cap - 1); t->slots[i].id; i = (i + 1) & (t->cap - 1))
		if (t->slots[i].id == id)
			return t->slots[i].s;
	return NULL;
}

void sig_idtab_del(struct sig_idtab *t, uint64_t id)
{
	size_t mask = t->cap - 1, i, j;

	if (!t->cap || !id)
		return;
	for (i = slot_of(id, mask); t->slots[i].id != id; i = (i + 1) & mask)
		if (!t->slots[i].id)
			return;
	t->slots[i].id = 0;
	t->count--;
	/* Backward shift keeps every probe sequence unbroken. */
	for (j = (i + 1) & mask; t->slots[j].id; j = (j + 1) & mask) {
		size_t home = slot_of(t->slots[j].id, mask);
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			t->slots[i] = t->slots[j];
			t->slots[j].id = 0;
			i = j;
		}
	}
}

void sig_idtab_release(struct sig_idtab *t)
{
	free(t->slots);
	t->slots = NULL;
	t->cap = t->count = 0;
}
