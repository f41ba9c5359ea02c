/*
 * bm_keyring.h - a bounded FIFO of string keys, each with a small value,
 * found by key in O(1).
 *
 * Made for the server's resend keys: one lookup per message (nearly always
 * a miss), one insert, and, once full, the oldest key forgotten.  Every
 * part is allocated once, at bm_keyring_init, and never grows:
 *
 *   ring   max_keys records in insertion order: the key's place in the
 *          arena and the caller's value (val_size bytes, 8-aligned);
 *   arena  the keys' bytes, NUL-terminated, written in the same FIFO order
 *          (a ring of bytes: the oldest key's bytes are the next freed);
 *   index  open addressing over 2^k >= 2 * max_keys 8-byte entries, each a
 *          32-bit tag of the key's hash and the record's slot: a lookup
 *          reads one entry run (usually one cache line) and touches a
 *          record and its key only on a tag match.
 *
 * The oldest key is forgotten when max_keys are held, or when the arena has
 * no room for a new key (keys longer than the average the arena was sized
 * for).  No allocation per key, no pointer per key: a million keys of ~40
 * bytes cost ~16 MiB of index, 48 B x 1 M of records and 40 MiB of arena.
 * The hash is seeded per process (bm_keyring_init), so a client cannot
 * choose keys that pile onto one probe run.  Not thread-safe.
 */
#ifndef BM_KEYRING_H
#define BM_KEYRING_H

#include <stddef.h>
#include <stdint.h>

struct bm_keyring {
	uint64_t *index;        /* 0 = empty, else tag << 32 | (slot + 1) */
	size_t index_mask;      /* entries - 1 */
	unsigned index_shift;   /* 32 - log2(entries): home = mix(tag) >> shift */
	uint8_t *ring;          /* max records of rec_size bytes */
	size_t rec_size, val_size, max;
	size_t head, count;     /* oldest record's slot; records held */
	char *arena;
	size_t arena_cap, arena_tail;
	uint64_t seed;
	uint64_t added, evicted;  /* keys ever added, ever forgotten */
	size_t ring_bytes, index_bytes;
};

/* Longest key taken (bytes, without the NUL). */
#define BM_KEYRING_KEY_MAX 1024

/* max_keys in [1, 2^31), arena_bytes >= 2 * (BM_KEYRING_KEY_MAX + 1) (the
 * arena for max_keys keys of arena_bytes / max_keys bytes on average),
 * val_size <= 4096.  nofork: keep the index out of any child fork() makes
 * (the child may still read the ring and the keys, bm_keyring_at).
 * Returns 0, BM_EINVAL or BM_ENOMEM. */
int bm_keyring_init(struct bm_keyring *r, size_t max_keys, size_t arena_bytes,
		    size_t val_size, int nofork);
void bm_keyring_release(struct bm_keyring *r);

/* The value of key[0..len), or NULL when it is not held. */
void *bm_keyring_get(const struct bm_keyring *r, const char *key, size_t len);

/* Add key[0..len) as the newest key and return its value, zero-filled;
 * when the key is held already, return its value unchanged and set
 * *existed (may be NULL) to 1.  Forgets the oldest keys as needed.  NULL
 * only for a key longer than BM_KEYRING_KEY_MAX. */
void *bm_keyring_add(struct bm_keyring *r, const char *key, size_t len, int *existed);

/* Start loading what a bm_keyring_get or bm_keyring_add of key[0..len)
 * will read first: its index line and, when the ring is full, the index
 * line of the key the add would forget.  Nothing changes; call it early,
 * with other work before the lookup, so that the two cache misses overlap
 * that work instead of stalling the lookup. */
void bm_keyring_prefetch(const struct bm_keyring *r, const char *key, size_t len);

/* The same three with the key's hash computed once by bm_keyring_hash, for
 * a caller that prefetches, looks up and adds one key (hash must be
 * bm_keyring_hash of key[0..len) on this ring). */
uint64_t bm_keyring_hash(const struct bm_keyring *r, const char *key, size_t len);
void *bm_keyring_get_h(const struct bm_keyring *r, const char *key, size_t len, uint64_t hash);
void *bm_keyring_add_h(struct bm_keyring *r, const char *key, size_t len, uint64_t hash,
		       int *existed);
void bm_keyring_prefetch_h(const struct bm_keyring *r, uint64_t hash);

/* The i-th oldest key held (i < r->count): its value, and *key (may be
 * NULL) its NUL-terminated bytes. */
void *bm_keyring_at(const struct bm_keyring *r, size_t i, const char **key);

/* The key of a value this ring returned (NUL-terminated). */
const char *bm_keyring_key(const struct bm_keyring *r, const void *val);

/* The number of keys added before the one of val (a value this ring
 * returned, still held): the key stays held while this is >= r->evicted. */
uint64_t bm_keyring_seq(const struct bm_keyring *r, const void *val);

#endif
