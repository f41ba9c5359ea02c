/*
 * bm_queue.c - BimipQueue: the durable segmented log (see bm_queue.h).
 *
 * ON-DISK FORMAT, version 1.  (docs/queue-format.md says the same with the
 * reasons.)  All integers are little-endian.  The build refuses big-endian
 * hosts.
 *
 * 1. Directory.  A queue is a directory holding
 *      LOCK                       empty; flock(LOCK_EX) while open
 *      NNNNNNNNNNNNNNNNNNNN.seg   segment files; the 20 decimal digits are
 *                                 the segment's BASE position
 *      NNNNNNNNNNNNNNNNNNNN.idx   sparse index of a sealed segment (section 6)
 *      checkpoint                 the stream table (section 4)
 *      *.tmp                      files being written; ignored
 *    Other names are ignored.
 *
 * 2. Log and positions.  The log is one byte sequence; a record's POSITION
 *    is its byte index in it.  Segment files cut the sequence: a segment
 *    holds the bytes [BASE, BASE + file size), and the next segment's BASE is
 *    exactly the previous one's BASE + size (no gaps, no overlap).  A record
 *    never straddles two segments.  Positions are never reused: retention
 *    deletes whole segments from the front, so the first segment's BASE may
 *    be > 0.  A segment other than the last is "sealed": it was fdatasync'ed
 *    before the next one was created, so only the last segment can have a
 *    torn tail.
 *
 * 3. Record.  A 56-byte header, then len payload bytes, no padding:
 *      off size field
 *       0   4   magic   0x52514D42 ("BMQR")
 *       4   4   len     payload bytes, <= 64 MiB
 *       8   4   hcrc    CRC-32C of header bytes [0,8) followed by [12,52)
 *      12   4   pcrc    CRC-32C of the payload as appended
 *      16   8   stream  stream id (ids are 1, 2, 3... in creation order)
 *      24   8   offset  see type
 *      32   8   ts_ms   wall clock, Unix milliseconds, at append (coarse: the tick)
 *      40   8   prev    see type; 2^64-1 = none
 *      48   2   type    1 STREAM, 2 DATA, 3 COMMIT, 4 DESTROY
 *      50   2   flags   0 (reserved)
 *      52   4   erased  0, or 0x54534544 ("DEST") once the payload was
 *                       overwritten with zeros by a secure erase; NOT
 *                       covered by hcrc, and pcrc is then not checked
 *    Types:
 *      STREAM  defines stream id `stream`; payload = its name (1..255
 *              bytes); offset 0; prev none.  Ids are assigned in order, so
 *              the k-th STREAM record of the log (counted from a checkpoint's
 *              next_stream_id) defines id k.
 *      DATA    a stream record: offset = its offset in the stream (the
 *              stream's previous DATA offset + 1; the first is 1); prev = the
 *              position of the stream's previous DATA record (none for the
 *              first).  prev links make "stream S from offset X" touch only
 *              S's records.
 *      COMMIT  device offset: payload = device name (1..255 bytes); offset =
 *              the committed stream offset; prev none.  The last one wins.
 *      DESTROY tombstone of a secure erase: offset = the erased record's
 *              offset, prev = its position, no payload.  It is made durable
 *              before the record is overwritten, and recovery re-applies it.
 *
 * 4. Checkpoint.  Written to checkpoint.tmp, fdatasync'ed, renamed over
 *    checkpoint, directory fsync'ed.  It reflects every record before
 *    log_pos, all of which were durable when it was written:
 *      header, 64 bytes:
 *       0 u32 magic 0x43514D42 ("BMQC")   4 u32 version 1
 *       8 u64 log_pos                    16 u64 next_stream_id
 *      24 u64 nstreams                   32 u64 nsegments
 *      40 i64 written_ms                 48 u64 body_len
 *      56 u32 0                          60 u32 CRC-32C of bytes [0,60)
 *      body, body_len bytes:
 *       nsegments x {u64 base, i64 first_ts, i64 max_ts}    (ascending base)
 *       u64 idx_base   the BASE of the segment that was active
 *       nstreams  x stream entry, packed:
 *         u64 id, u64 first, u64 head, u64 last_pos, u64 first_pos,
 *         u64 idx_first, u32 idx_len, u16 name_len, u16 ndev,
 *         name[name_len],
 *         ndev x {u64 offset, u16 len, device[len]},
 *         idx_len x u64 position   (sparse index, below)
 *      trailer: u32 CRC-32C of the body.
 *    first = first offset still in the log (head + 1 if none); first_pos
 *    its position (none if none); last_pos = position of offset head.
 *    Sparse index: every DATA record whose offset is a multiple of 16 has an
 *    entry (offset -> position).  Entries at positions >= idx_base are in
 *    the checkpoint: entry k of a stream is the position of offset
 *    (idx_first + k) * 16, and they run up to the last multiple of 16 <=
 *    head.  Entries in sealed segments below idx_base are in those
 *    segments' .idx files.  Together they cover every multiple of 16 in
 *    [first, head], contiguously; open checks this.
 *
 * 5. Recovery.  Open lists the segments, checks they are contiguous, loads
 *    the checkpoint (if it is missing or damaged and the log still starts at
 *    position 0, the table is rebuilt from the whole log; otherwise open
 *    fails with BM_ECORRUPT), then scans only [log_pos, end):
 *    pass 1 finds the end of the valid log: the first record whose header is
 *    incomplete or fails magic/hcrc/len, or whose payload is incomplete; a
 *    record whose header is valid but whose payload fails pcrc is tolerated
 *    only if a later valid DESTROY tombstone names it (a torn secure erase).
 *    The end must lie in the last segment and not before log_pos, else
 *    BM_ECORRUPT.  The last segment is truncated there (the lost bytes were
 *    never acknowledged: a torn write can only hit unsynced data).
 *    pass 2 applies the records (checking ids, offsets and prev links, any
 *    mismatch is BM_ECORRUPT) and re-applies DESTROY tombstones.
 *    Records before log_pos are not read at open; a damaged one is reported
 *    by the read that meets it (BM_ECORRUPT).  Segments entirely below the
 *    checkpoint's first segment are leftovers of an interrupted retention
 *    and are deleted.
 *
 * 6. Segment index (NNNN.idx).  Written when its segment is sealed (tmp,
 *    fdatasync, rename; the directory fsync that follows the creation of
 *    the next segment covers the rename):
 *      header, 48 bytes: u32 magic 0x49514D42 ("BMQI"), u32 version 1,
 *        u64 base, u64 end (the segment's BASE and BASE + size),
 *        u64 nentries, i64 max_ts, u32 0, u32 CRC-32C of bytes [0,44)
 *      nentries x {u64 stream, u64 offset, u64 position}, ascending position:
 *        every DATA record of the segment whose offset is a multiple of 16
 *      trailer: u32 CRC-32C of the entries.
 *    Open loads the index files of the segments below the checkpoint's
 *    idx_base.  A missing or damaged one (bad size, magic, CRC, base or end)
 *    is rebuilt by reading its segment, and rewritten; index files missing
 *    for sealed segments at or above idx_base are written from memory after
 *    the replay.  If a stream's entries still do not cover every multiple
 *    of 16 in [first, head] (a damaged sealed segment whose index was lost),
 *    that stream's index is dropped with a warning: its reads then walk prev
 *    links from the head, slower but still checked.  The log stays the only
 *    authority: an index never changes what a read returns, it only says
 *    where to start walking prev links.
 */
#include "bm_queue.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "bm_crc32c.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_time.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "BimipQueue's on-disk format is little-endian; add byte swapping first"
#endif

#define C "queue"

#define REC_MAGIC    0x52514D42u
#define REC_ERASED   0x54534544u
#define CKPT_MAGIC   0x43514D42u
/* 2 since 2026-11-23.  The layout is the one segment index files brought
 * (idx_base, entries every 16 offsets, 2026-11-22) but those checkpoints
 * still said 1, as did the older layout: a 1 is read as the current layout
 * and, if that fails, taken for the older one (rebuilt from the log, with a
 * warning rather than an error). */
#define CKPT_VERSION 2u
#define IDX_MAGIC    0x49514D42u
#define IDX_VERSION  1u
#define NONE         UINT64_MAX
#define IDX_EVERY    16u
#define SCAN_MAX     65536u
#define WBUF_FLUSH   (4u << 20)   /* appenders write inline past this */

enum rec_type {
	REC_STREAM = 1,
	REC_DATA = 2,
	REC_COMMIT = 3,
	REC_DESTROY = 4,
};

struct walk_ent;

struct rec_hdr {
	uint32_t magic;
	uint32_t len;
	uint32_t hcrc;
	uint32_t pcrc;
	uint64_t stream;
	uint64_t offset;
	int64_t ts_ms;
	uint64_t prev;
	uint16_t type;
	uint16_t flags;
	uint32_t erased;
};
#define HDR ((uint64_t)sizeof(struct rec_hdr))
static_assert(sizeof(struct rec_hdr) == 56, "record header layout");
static_assert(offsetof(struct rec_hdr, hcrc) == 8, "record header layout");
static_assert(offsetof(struct rec_hdr, stream) == 16, "record header layout");
static_assert(offsetof(struct rec_hdr, prev) == 40, "record header layout");
static_assert(offsetof(struct rec_hdr, type) == 48, "record header layout");
static_assert(offsetof(struct rec_hdr, erased) == 52, "record header layout");

struct ckpt_hdr {
	uint32_t magic;
	uint32_t version;
	uint64_t log_pos;
	uint64_t next_stream_id;
	uint64_t nstreams;
	uint64_t nsegments;
	int64_t written_ms;
	uint64_t body_len;
	uint32_t zero;
	uint32_t crc;
};
static_assert(sizeof(struct ckpt_hdr) == 64, "checkpoint header layout");
static_assert(offsetof(struct ckpt_hdr, crc) == 60, "checkpoint header layout");

struct ckpt_seg {
	uint64_t base;
	int64_t first_ts;
	int64_t max_ts;
};
static_assert(sizeof(struct ckpt_seg) == 24, "checkpoint segment layout");

struct ckpt_stream {
	uint64_t id, first, head, last_pos, first_pos, idx_first;
	uint32_t idx_len;
	uint16_t name_len;
	uint16_t ndev;
};
static_assert(sizeof(struct ckpt_stream) == 56, "checkpoint stream layout");

/* One sparse-index entry as stored in a segment index file. */
struct idx_ent {
	uint64_t stream;
	uint64_t offset;
	uint64_t pos;
};
static_assert(sizeof(struct idx_ent) == 24, "segment index entry layout");

struct idx_hdr {
	uint32_t magic;
	uint32_t version;
	uint64_t base;
	uint64_t end;
	uint64_t nentries;
	int64_t max_ts;
	uint32_t zero;
	uint32_t crc;
};
static_assert(sizeof(struct idx_hdr) == 48, "segment index header layout");
static_assert(offsetof(struct idx_hdr, crc) == 44, "segment index header layout");

struct entv {
	struct idx_ent *v;
	size_t n, cap;
};

struct dev {
	uint64_t offset;
	char *name;
};

struct stream {
	uint64_t id;
	uint64_t first;        /* first offset still in the log */
	uint64_t head;         /* last assigned offset, 0 = none */
	uint64_t last_pos;     /* position of offset head */
	uint64_t first_pos;    /* position of offset first, NONE if none */
	uint64_t idx_first;    /* idx[k] = position of offset (idx_first+k)*16 */
	uint64_t *idx;
	uint32_t idx_len, idx_cap;
	struct dev *devs;
	uint32_t ndev;
	uint8_t idx_broken;    /* open: an index entry did not fit (see load_index) */
	uint16_t name_len;
	char name[];
};

struct slot {
	uint64_t hash;         /* kept here so probes do not touch the stream */
	struct stream *s;
};

struct seg {
	uint64_t base;
	uint64_t end;          /* sealed: next base; active: appended_pos */
	int fd;
	int64_t first_ts, max_ts;
};

struct comp {
	uint64_t end;          /* durable once durable_pos >= end */
	uint64_t offset;
	bm_queue_done_fn *cb;
	void *ud;
};

struct bm_queue {
	char *dir;
	int dirfd, lockfd, evfd;
	struct bm_queue_opts o;

	pthread_mutex_t mu;       /* everything below unless noted */
	pthread_mutex_t io_mu;    /* written_pos, cur_fd, cur_base, sbuf */
	pthread_cond_t cv;        /* wakes the sync thread */
	pthread_t thr;
	int thr_started, stop;

	uint64_t appended_pos, durable_pos, taken_pos;
	uint64_t written_pos;     /* io_mu */
	int cur_fd;               /* io_mu (and mu to change) */
	uint64_t cur_base;        /* io_mu (and mu to change) */
	uint64_t zero_end;        /* io_mu: the active file ends here, zeros past written_pos */
	struct bm_buf wbuf;       /* appended, not yet written; starts at wbuf_pos */
	uint64_t wbuf_pos;
	struct bm_buf sbuf;       /* io_mu: the sync thread's swapped-out buffer */
	struct bm_buf peek;       /* mu: payloads a scan read with their headers */
	struct walk_ent *walk;    /* mu: a scan's records, reused */
	size_t walk_cap;
	uint64_t pending_since_ns;
	uint64_t taken_at_ns;     /* when the last batch was taken to sync (0 = never) */
	int corked;               /* mu: bm_queue_cork() depth */
	int kick_due;             /* mu: a wake-up of the sync thread held back */
	int failed;
	int ev_armed;

	struct seg *segs;
	size_t nsegs, segs_cap;

	struct stream **by_id;    /* by_id[id-1] */
	uint64_t nstreams, by_id_cap;
	struct slot *ht;          /* open addressing, load <= 1/2 */
	uint64_t ht_cap;

	struct comp *ring;
	size_t ring_head, ring_tail, ring_cap;   /* cap is a power of two */

	struct entv aidx;         /* sparse entries of the active segment */
	uint64_t ckpt_pos;
	uint64_t last_retain_ms;
	struct bm_queue_stats st;
	/* fdatasync durations (us), under mu, drained by bm_queue_sync_samples */
	uint32_t lat[BM_QUEUE_SYNC_SAMPLES];
	unsigned lat_n;
};

/* --- small helpers ----------------------------------------------------- */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	/* Not bm_mono_ns(): the sync thread needs the real clock even when a
	 * test fakes time for retention. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t w = pwrite(fd, b, n, (off_t)off);
		if (w == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		b += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Returns bytes read (< n only at end of file) or -1. */
static ssize_t pread_all(int fd, void *p, size_t n, uint64_t off)
{
	uint8_t *b = p;
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, (off_t)(off + got));
		if (r == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static uint32_t hdr_crc(const struct rec_hdr *h)
{
	const uint8_t *b = (const uint8_t *)h;

	return bm_crc32c(bm_crc32c(0, b, 8), b + 12, 40);
}

static uint64_t hash_name(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull ^ n;
	size_t i = 0;

	/* Eight bytes per step (names are EIDs of 20-40 bytes), then the
	 * murmur3 finalizer to spread the bits over the table mask. */
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		h = (h ^ w) * 0x9E3779B97F4A7C15ull;
		h ^= h >> 29;
	}
	for (; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

static void seg_path(const struct bm_queue *q, char *out, size_t cap, uint64_t base)
{
	snprintf(out, cap, "%s/%020" PRIu64 ".seg", q->dir, base);
}

/* --- stream table ------------------------------------------------------ */

static struct stream *stream_find(struct bm_queue *q, const char *name, size_t n)
{
	uint64_t i, h;

	if (!q->ht_cap)
		return NULL;
	h = hash_name(name, n);
	for (i = h & (q->ht_cap - 1);; i = (i + 1) & (q->ht_cap - 1)) {
		struct stream *s = q->ht[i].s;
		if (!s)
			return NULL;
		if (q->ht[i].hash == h && s->name_len == n && !memcmp(s->name, name, n))
			return s;
	}
}

static struct stream *stream_by_id(struct bm_queue *q, uint64_t id)
{
	if (id == 0 || id > q->nstreams)
		return NULL;
	return q->by_id[id - 1];
}

static void ht_put(struct slot *ht, uint64_t cap, uint64_t h, struct stream *s)
{
	uint64_t i = h & (cap - 1);

	while (ht[i].s)
		i = (i + 1) & (cap - 1);
	ht[i].hash = h;
	ht[i].s = s;
}

/* Sizes the tables for n streams in all (used before loading many). */
static int table_reserve(struct bm_queue *q, uint64_t n)
{
	uint64_t cap = 128;
	struct stream **v;
	struct slot *ht;

	if (n > (1ull << 32))
		return BM_ENOMEM;
	while (cap < n * 2 + 2)
		cap *= 2;
	if (n > q->by_id_cap) {
		v = realloc(q->by_id, n * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		q->by_id = v;
		q->by_id_cap = n;
	}
	if (cap > q->ht_cap) {
		ht = calloc(cap, sizeof(*ht));
		if (!ht)
			return BM_ENOMEM;
		for (uint64_t i = 0; i < q->ht_cap; i++)
			if (q->ht[i].s)
				ht_put(ht, cap, q->ht[i].hash, q->ht[i].s);
		free(q->ht);
		q->ht = ht;
		q->ht_cap = cap;
	}
	return 0;
}

/* Adds a stream with the next id; the caller checked the name is new. */
static int stream_add(struct bm_queue *q, const char *name, size_t n,
		      struct stream **out)
{
	struct stream *s;

	if (q->nstreams == q->by_id_cap) {
		uint64_t cap = q->by_id_cap ? q->by_id_cap * 2 : 64;
		struct stream **v = realloc(q->by_id, cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		q->by_id = v;
		q->by_id_cap = cap;
	}
	if ((q->nstreams + 1) * 2 > q->ht_cap) {
		uint64_t cap = q->ht_cap ? q->ht_cap * 2 : 128;
		struct slot *ht = calloc(cap, sizeof(*ht));
		if (!ht)
			return BM_ENOMEM;
		for (uint64_t i = 0; i < q->ht_cap; i++)
			if (q->ht[i].s)
				ht_put(ht, cap, q->ht[i].hash, q->ht[i].s);
		free(q->ht);
		q->ht = ht;
		q->ht_cap = cap;
	}
	s = calloc(1, sizeof(*s) + n + 1);
	if (!s)
		return BM_ENOMEM;
	memcpy(s->name, name, n);
	s->name_len = (uint16_t)n;
	s->id = q->nstreams + 1;
	s->first = 1;
	s->last_pos = NONE;
	s->first_pos = NONE;
	q->by_id[q->nstreams++] = s;
	ht_put(q->ht, q->ht_cap, hash_name(name, n), s);
	*out = s;
	return 0;
}

static void stream_free(struct stream *s)
{
	for (uint32_t i = 0; i < s->ndev; i++)
		free(s->devs[i].name);
	free(s->devs);
	free(s->idx);
	free(s);
}

static int idx_push(struct stream *s, uint64_t offset, uint64_t pos)
{
	if (s->idx_len == 0)
		s->idx_first = offset / IDX_EVERY;
	if (s->idx_len == s->idx_cap) {
		uint32_t cap = s->idx_cap ? s->idx_cap * 2 : 4;
		uint64_t *v = realloc(s->idx, cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		s->idx = v;
		s->idx_cap = cap;
	}
	s->idx[s->idx_len++] = pos;
	return 0;
}

static int entv_push(struct entv *e, uint64_t stream, uint64_t offset, uint64_t pos)
{
	if (e->n == e->cap) {
		size_t cap = e->cap ? e->cap * 2 : 256;
		struct idx_ent *v = realloc(e->v, cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		e->v = v;
		e->cap = cap;
	}
	e->v[e->n].stream = stream;
	e->v[e->n].offset = offset;
	e->v[e->n].pos = pos;
	e->n++;
	return 0;
}

/* Makes room so that the next stream_push cannot fail. */
static int idx_reserve(struct bm_queue *q, struct stream *s)
{
	int rc;

	if ((s->head + 1) % IDX_EVERY)
		return 0;
	if (q->aidx.n == q->aidx.cap) {
		rc = entv_push(&q->aidx, 0, 0, 0);
		if (rc)
			return rc;
		q->aidx.n--;
	}
	if (s->idx_len < s->idx_cap)
		return 0;
	rc = idx_push(s, s->head + 1, 0);
	if (!rc)
		s->idx_len--;
	return rc;
}

/* Records a DATA record of s at pos (offset head + 1). */
static int stream_push(struct bm_queue *q, struct stream *s, uint64_t pos)
{
	uint64_t off = s->head + 1;

	if (off % IDX_EVERY == 0) {
		int rc = idx_push(s, off, pos);
		if (!rc)
			rc = entv_push(&q->aidx, s->id, off, pos);
		if (rc)
			return rc;
	}
	s->head = off;
	s->last_pos = pos;
	if (s->first == off)
		s->first_pos = pos;
	return 0;
}

static int dev_set(struct stream *s, const char *dev, size_t n, uint64_t offset)
{
	struct dev *v;

	for (uint32_t i = 0; i < s->ndev; i++) {
		if (strlen(s->devs[i].name) == n && !memcmp(s->devs[i].name, dev, n)) {
			s->devs[i].offset = offset;
			return 0;
		}
	}
	if (s->ndev >= UINT16_MAX)
		return BM_EFULL;
	v = realloc(s->devs, (s->ndev + 1) * sizeof(*v));
	if (!v)
		return BM_ENOMEM;
	s->devs = v;
	v[s->ndev].name = strndup(dev, n);
	if (!v[s->ndev].name)
		return BM_ENOMEM;
	v[s->ndev].offset = offset;
	s->ndev++;
	return 0;
}

/* --- segments ---------------------------------------------------------- */

static struct seg *seg_of(struct bm_queue *q, uint64_t pos)
{
	size_t lo = 0, hi = q->nsegs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (q->segs[mid].base <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	if (pos >= q->segs[lo - 1].end && lo != q->nsegs)
		return NULL;
	return &q->segs[lo - 1];
}

static int segs_push(struct bm_queue *q, uint64_t base, int fd)
{
	struct seg *s;

	if (q->nsegs == q->segs_cap) {
		size_t cap = q->segs_cap ? q->segs_cap * 2 : 16;
		struct seg *v = realloc(q->segs, cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		q->segs = v;
		q->segs_cap = cap;
	}
	s = &q->segs[q->nsegs++];
	s->base = base;
	s->end = base;
	s->fd = fd;
	s->first_ts = 0;
	s->max_ts = 0;
	return 0;
}

/* --- writing and syncing (the write path) ------------------------------- */

static void set_failed(struct bm_queue *q, const char *what, int err)
{
	if (!q->failed)
		bm_err(C, "%s in '%s' failed: %s; the queue is now read-only",
		       what, q->dir, strerror(err));
	q->failed = BM_EIO;
}

/* io_mu held: the active file holds everything before end; the zero tail,
 * if any, starts there or later. */
static void set_written(struct bm_queue *q, uint64_t end)
{
	q->written_pos = end;
	if (q->zero_end < end)
		q->zero_end = end;
}

/* mu and io_mu held: hands the buffered bytes to the kernel. */
static int flush_wbuf(struct bm_queue *q)
{
	if (q->wbuf.len) {
		if (pwrite_all(q->cur_fd, q->wbuf.data, q->wbuf.len,
			       q->wbuf_pos - q->cur_base) == -1) {
			set_failed(q, "write", errno);
			return BM_EIO;
		}
		set_written(q, q->wbuf_pos + q->wbuf.len);
		q->wbuf_pos = q->written_pos;
		bm_buf_reset(&q->wbuf);
	}
	return 0;
}

/*
 * io_mu held: keeps the active segment extended with zeros at least half of
 * prealloc_bytes past what is written, so that appends overwrite blocks the
 * file already has and an fdatasync writes only the data, not the inode
 * (see docs/queue-format.md, "Preallocated tail").  Returns 1 when it
 * extended the file (the caller syncs it), 0 when there was nothing to do,
 * or -1 with errno.
 */
static int extend_zeros(struct bm_queue *q)
{
	static const uint8_t zeros[64 * 1024];
	uint64_t want, cap = q->cur_base + q->o.segment_bytes;

	if (!q->o.prealloc_bytes || q->zero_end >= q->written_pos + q->o.prealloc_bytes / 2)
		return 0;
	want = (q->written_pos + q->o.prealloc_bytes + sizeof(zeros) - 1) /
	       sizeof(zeros) * sizeof(zeros);
	if (want > cap)
		want = cap;
	if (want <= q->zero_end)
		return 0;
	while (q->zero_end < want) {
		size_t n = want - q->zero_end < sizeof(zeros) ? (size_t)(want - q->zero_end)
							       : sizeof(zeros);
		if (pwrite_all(q->cur_fd, zeros, n, q->zero_end - q->cur_base) == -1)
			return -1;
		q->zero_end += n;
	}
	return 1;
}

/* mu held, everything written synced: cuts the active segment's zero
 * tail, so that a sealed or closed segment ends at its last record. */
static int cut_zeros(struct bm_queue *q)
{
	int rc = 0;

	pthread_mutex_lock(&q->io_mu);
	if (q->zero_end > q->written_pos) {
		if (ftruncate(q->cur_fd, (off_t)(q->written_pos - q->cur_base)) == -1 ||
		    fdatasync(q->cur_fd) == -1) {
			set_failed(q, "truncate of the preallocated tail", errno);
			rc = BM_EIO;
		} else {
			q->zero_end = q->written_pos;
		}
	}
	pthread_mutex_unlock(&q->io_mu);
	return rc;
}

static void notify(struct bm_queue *q)
{
	uint64_t one = 1;

	if (q->ev_armed || q->ring_head == q->ring_tail)
		return;
	q->ev_armed = 1;
	if (write(q->evfd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		bm_warn(C, "cannot signal event fd: %s", strerror(errno));
}

/* mu held: remember one fdatasync duration (the newest win when full). */
static void record_sync(struct bm_queue *q, uint64_t ns)
{
	uint64_t us = ns / 1000;

	q->lat[q->lat_n % BM_QUEUE_SYNC_SAMPLES] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	q->lat_n++;
}

size_t bm_queue_sync_samples(struct bm_queue *q, uint32_t *us, size_t max)
{
	size_t n;

	pthread_mutex_lock(&q->mu);
	n = q->lat_n < BM_QUEUE_SYNC_SAMPLES ? q->lat_n : BM_QUEUE_SYNC_SAMPLES;
	if (n > max)
		n = max;
	memcpy(us, q->lat, n * sizeof(*us));
	q->lat_n = 0;
	pthread_mutex_unlock(&q->mu);
	return n;
}

/* mu held: everything appended so far written and fdatasync'ed. */
static int sync_locked(struct bm_queue *q)
{
	uint64_t target;
	int fd, rc;

	if (q->failed)
		return q->failed;
	pthread_mutex_lock(&q->io_mu);
	rc = flush_wbuf(q);
	target = q->written_pos;
	fd = q->cur_fd;
	pthread_mutex_unlock(&q->io_mu);
	if (rc)
		return rc;
	if (target > q->durable_pos) {
		uint64_t t0 = mono_ns();

		if (fdatasync(fd) == -1) {
			set_failed(q, "fdatasync", errno);
			return BM_EIO;
		}
		record_sync(q, mono_ns() - t0);
		q->st.syncs++;
		q->durable_pos = target;
	}
	q->taken_pos = q->appended_pos;
	q->pending_since_ns = 0;
	notify(q);
	return 0;
}

/* mu held (released meanwhile): the sync thread extends the active segment
 * with zeros between batches, and syncs them, so that the next batches'
 * syncs find the file's size and blocks already there. */
static void prealloc(struct bm_queue *q)
{
	int rc, e = 0;

	pthread_mutex_unlock(&q->mu);
	pthread_mutex_lock(&q->io_mu);
	rc = extend_zeros(q);
	if (rc == -1 || (rc == 1 && fdatasync(q->cur_fd) == -1))
		e = errno;
	pthread_mutex_unlock(&q->io_mu);
	pthread_mutex_lock(&q->mu);
	if (rc == -1) {
		/* No space for zeros is not yet a failed write: stop preallocating. */
		bm_warn(C, "cannot extend segment of '%s' with zeros: %s; "
			"appends will extend it instead", q->dir, strerror(e));
		q->o.prealloc_bytes = 0;
	} else if (e) {
		set_failed(q, "fdatasync", e);
	}
}

static void *sync_main(void *arg)
{
	struct bm_queue *q = arg;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		uint64_t now, deadline, target, sync_t0, sync_ns = 0;
		int fd = -1, err = 0;

		if (q->failed || q->pending_since_ns == 0) {
			if (q->stop)
				break;
			pthread_cond_wait(&q->cv, &q->mu);
			continue;
		}
		now = mono_ns();
		/* The window gathers appends into one sync: a batch is taken at
		 * least a window after the previous one was, so there are at
		 * most 1/window syncs a second (fewer when a sync takes longer
		 * than the window: they never overlap).  An append waits only
		 * for what is left of that window, not a whole one: one that
		 * finds no sync begun within the last window is synced now.
		 * Counting from the start, not the end, of the previous sync
		 * keeps the sync's own time out of the wait (docs/performance.md,
		 * twelfth session). */
		deadline = q->pending_since_ns;
		if (q->taken_at_ns &&
		    deadline < q->taken_at_ns + (uint64_t)q->o.group_window_us * 1000u)
			deadline = q->taken_at_ns + (uint64_t)q->o.group_window_us * 1000u;
		if (!q->stop && now < deadline &&
		    q->appended_pos - q->taken_pos < q->o.group_bytes) {
			struct timespec ts = {
				.tv_sec = (time_t)(deadline / 1000000000u),
				.tv_nsec = (long)(deadline % 1000000000u),
			};
			pthread_cond_timedwait(&q->cv, &q->mu, &ts);
			continue;
		}
		/* Take the batch: swap buffers, then write and sync without
		 * holding mu so appends continue meanwhile.  io_mu is taken
		 * before mu is released, so writes reach the file in order. */
		q->pending_since_ns = 0;
		q->taken_pos = q->appended_pos;
		q->taken_at_ns = now;
		pthread_mutex_lock(&q->io_mu);
		{
			struct bm_buf t = q->sbuf;
			uint64_t pos = q->wbuf_pos;
			q->sbuf = q->wbuf;
			q->wbuf = t;
			q->wbuf_pos = q->appended_pos;
			pthread_mutex_unlock(&q->mu);
			if (q->sbuf.len &&
			    pwrite_all(q->cur_fd, q->sbuf.data, q->sbuf.len,
				       pos - q->cur_base) == -1)
				err = errno;
			else
				set_written(q, pos + q->sbuf.len);
			bm_buf_reset(&q->sbuf);
		}
		target = q->written_pos;
		if (!err && q->o.sync == BM_QUEUE_SYNC_GROUP) {
			fd = dup(q->cur_fd);
			if (fd == -1)
				err = errno;
		}
		pthread_mutex_unlock(&q->io_mu);
		if (fd != -1) {
			sync_t0 = mono_ns();
			if (fdatasync(fd) == -1)
				err = errno;
			sync_ns = mono_ns() - sync_t0;
			close(fd);
		}
		pthread_mutex_lock(&q->mu);
		if (fd != -1 && !err)
			record_sync(q, sync_ns);
		if (err) {
			set_failed(q, fd != -1 ? "fdatasync" : "write", err);
		} else {
			if (target > q->durable_pos)
				q->durable_pos = target;
			if (q->o.sync == BM_QUEUE_SYNC_GROUP)
				q->st.syncs++;
		}
		notify(q);
		if (!err && q->o.prealloc_bytes && q->o.sync == BM_QUEUE_SYNC_GROUP)
			prealloc(q);
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

static void idx_path(const struct bm_queue *q, char *out, size_t cap, uint64_t base,
		     const char *suffix)
{
	snprintf(out, cap, "%s/%020" PRIu64 ".idx%s", q->dir, base, suffix);
}

/* Writes the index file of sealed segment sg (tmp, fdatasync, rename; the
 * caller fsyncs the directory).  Returns 0 or BM_EIO. */
static int write_seg_idx(struct bm_queue *q, const struct seg *sg,
			 const struct idx_ent *v, size_t n)
{
	char tmp[4096], path[4096];
	struct idx_hdr h;
	uint32_t crc = bm_crc32c(0, v, n * sizeof(*v));
	int fd, rc = 0;

	idx_path(q, tmp, sizeof(tmp), sg->base, ".tmp");
	idx_path(q, path, sizeof(path), sg->base, "");
	memset(&h, 0, sizeof(h));
	h.magic = IDX_MAGIC;
	h.version = IDX_VERSION;
	h.base = sg->base;
	h.end = sg->end;
	h.nentries = n;
	h.max_ts = sg->max_ts;
	h.crc = bm_crc32c(0, &h, offsetof(struct idx_hdr, crc));
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		return BM_EIO;
	if (pwrite_all(fd, &h, sizeof(h), 0) == -1 ||
	    (n && pwrite_all(fd, v, n * sizeof(*v), sizeof(h)) == -1) ||
	    pwrite_all(fd, &crc, 4, sizeof(h) + n * sizeof(*v)) == -1 ||
	    fdatasync(fd) == -1)
		rc = BM_EIO;
	if (close(fd) == -1)
		rc = BM_EIO;
	if (!rc && rename(tmp, path) == -1)
		rc = BM_EIO;
	if (rc) {
		bm_warn(C, "cannot write segment index '%s': %s; open will rebuild it",
			path, strerror(errno));
		unlink(tmp);
	}
	return rc;
}

/* mu held: seals the active segment (synced) and starts a new one. */
static int rotate_locked(struct bm_queue *q)
{
	char path[4096];
	uint64_t base = q->appended_pos;
	int fd, rc;

	if (base == q->segs[q->nsegs - 1].base)
		return 0;
	rc = sync_locked(q);
	if (rc)
		return rc;
	/* A sealed segment ends at its last record: recovery finds where the
	 * next one starts from its size. */
	rc = cut_zeros(q);
	if (rc)
		return rc;
	/* Best effort: a missing index is rebuilt from the segment at open. */
	q->segs[q->nsegs - 1].end = base;
	write_seg_idx(q, &q->segs[q->nsegs - 1], q->aidx.v, q->aidx.n);
	q->aidx.n = 0;
	seg_path(q, path, sizeof(path), base);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd == -1) {
		bm_err(C, "cannot create segment '%s': %s", path, strerror(errno));
		set_failed(q, "create segment", errno);
		return BM_EIO;
	}
	if (fsync(q->dirfd) == -1) {
		set_failed(q, "fsync of directory", errno);
		close(fd);
		return BM_EIO;
	}
	rc = segs_push(q, base, fd);
	if (rc) {
		close(fd);
		unlink(path);
		return rc;
	}
	q->segs[q->nsegs - 2].end = base;
	pthread_mutex_lock(&q->io_mu);
	q->cur_fd = fd;
	q->cur_base = base;
	q->zero_end = base;
	pthread_mutex_unlock(&q->io_mu);
	bm_debug(C, "started segment '%s'", path);
	return 0;
}

/* mu held: appends one record to the write buffer; *pos_out its position. */
static int emit(struct bm_queue *q, uint16_t type, uint64_t stream,
		uint64_t offset, uint64_t prev, const void *p, size_t n,
		uint64_t *pos_out)
{
	struct rec_hdr h;
	struct seg *cur = &q->segs[q->nsegs - 1];
	/* Retention and segment age are counted in minutes to days: the
	 * tick's precision is plenty, and a full clock read was ~2 % of the
	 * server loop at the peak (two records per chat message). */
	int64_t now = bm_wall_ms_coarse();
	int rc;

	if (q->appended_pos > cur->base &&
	    (q->appended_pos - cur->base + HDR + n > q->o.segment_bytes ||
	     (q->o.segment_ms && now - cur->first_ts >= (int64_t)q->o.segment_ms))) {
		rc = rotate_locked(q);
		if (rc)
			return rc;
		cur = &q->segs[q->nsegs - 1];
	}
	h.magic = REC_MAGIC;
	h.len = (uint32_t)n;
	h.hcrc = 0;
	h.pcrc = bm_crc32c(0, p, n);
	h.stream = stream;
	h.offset = offset;
	h.ts_ms = now;
	h.prev = prev;
	h.type = type;
	h.flags = 0;
	h.erased = 0;
	h.hcrc = hdr_crc(&h);
	rc = bm_buf_grow(&q->wbuf, HDR + n);
	if (rc)
		return rc;
	memcpy(q->wbuf.data + q->wbuf.len, &h, sizeof(h));
	if (n)
		memcpy(q->wbuf.data + q->wbuf.len + HDR, p, n);
	q->wbuf.len += HDR + n;
	*pos_out = q->appended_pos;
	q->appended_pos += HDR + n;
	cur->end = q->appended_pos;
	if (cur->first_ts == 0)
		cur->first_ts = now;
	if (now > cur->max_ts)
		cur->max_ts = now;
	if (q->wbuf.len >= WBUF_FLUSH) {
		pthread_mutex_lock(&q->io_mu);
		rc = flush_wbuf(q);
		pthread_mutex_unlock(&q->io_mu);
		if (rc)
			return rc;
	}
	return 0;
}

static int ring_push(struct bm_queue *q, uint64_t offset, bm_queue_done_fn *cb, void *ud)
{
	struct comp *c;

	if (q->ring_tail - q->ring_head == q->ring_cap) {
		size_t cap = q->ring_cap ? q->ring_cap * 2 : 1024;
		struct comp *v = malloc(cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		for (size_t i = q->ring_head; i != q->ring_tail; i++)
			v[i - q->ring_head] = q->ring[i & (q->ring_cap - 1)];
		q->ring_tail -= q->ring_head;
		q->ring_head = 0;
		free(q->ring);
		q->ring = v;
		q->ring_cap = cap;
	}
	c = &q->ring[q->ring_tail++ & (q->ring_cap - 1)];
	c->end = q->appended_pos;
	c->offset = offset;
	c->cb = cb;
	c->ud = ud;
	return 0;
}

/* mu held: after records were emitted, start making them durable. */
static int after_append(struct bm_queue *q, int queued)
{
	switch (q->o.sync) {
	case BM_QUEUE_SYNC_ALWAYS:
		return sync_locked(q);
	case BM_QUEUE_SYNC_GROUP:
	case BM_QUEUE_SYNC_NONE:
		if (q->pending_since_ns == 0) {
			q->pending_since_ns = mono_ns();
			if (q->corked)
				q->kick_due = 1;
			else
				pthread_cond_signal(&q->cv);
		} else if (q->appended_pos - q->taken_pos >= q->o.group_bytes) {
			pthread_cond_signal(&q->cv);
		}
		if (queued && q->o.sync == BM_QUEUE_SYNC_NONE)
			notify(q);
		break;
	}
	return 0;
}

void bm_queue_cork(struct bm_queue *q)
{
	pthread_mutex_lock(&q->mu);
	q->corked++;
	pthread_mutex_unlock(&q->mu);
}

void bm_queue_uncork(struct bm_queue *q)
{
	pthread_mutex_lock(&q->mu);
	if (q->corked > 0 && --q->corked == 0 && q->kick_due) {
		q->kick_due = 0;
		pthread_cond_signal(&q->cv);
	}
	pthread_mutex_unlock(&q->mu);
}

static int check_name(const char *s, size_t *n)
{
	if (!s)
		return BM_EINVAL;
	*n = strnlen(s, BM_QUEUE_NAME_MAX + 1);
	if (*n == 0 || *n > BM_QUEUE_NAME_MAX)
		return BM_EINVAL;
	return 0;
}

int bm_queue_append(struct bm_queue *q, const char *stream, const void *data,
		    size_t len, uint64_t *offset, bm_queue_done_fn *cb, void *ud)
{
	struct stream *s;
	uint64_t pos;
	size_t n;
	int rc;

	rc = check_name(stream, &n);
	if (rc)
		return rc;
	if (len > q->o.max_record)
		return BM_ETOOBIG;
	pthread_mutex_lock(&q->mu);
	if (q->failed) {
		rc = q->failed;
		goto out;
	}
	/* Reserve the completion slot first so that nothing can fail after
	 * the record is in the log. */
	if (cb && q->ring_tail - q->ring_head == q->ring_cap) {
		rc = ring_push(q, 0, NULL, NULL);
		if (rc)
			goto out;
		q->ring_tail--;
	}
	s = stream_find(q, stream, n);
	if (!s) {
		rc = stream_add(q, stream, n, &s);
		if (rc)
			goto out;
		rc = emit(q, REC_STREAM, s->id, 0, NONE, stream, n, &pos);
		if (rc) {
			/* The table now names a stream the log may lack. */
			q->failed = BM_EIO;
			goto out;
		}
	}
	rc = idx_reserve(q, s);
	if (rc)
		goto out;
	rc = emit(q, REC_DATA, s->id, s->head + 1, s->head ? s->last_pos : NONE,
		  data, len, &pos);
	if (rc)
		goto out;
	stream_push(q, s, pos);
	if (offset)
		*offset = s->head;
	if (cb)
		ring_push(q, s->head, cb, ud);
	rc = after_append(q, cb != NULL);
out:
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_after(struct bm_queue *q, bm_queue_done_fn *cb, void *ud)
{
	int rc;

	pthread_mutex_lock(&q->mu);
	rc = q->failed ? BM_EIO : ring_push(q, 0, cb, ud);
	/* Durable already: the next poll runs it. */
	if (!rc)
		notify(q);
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_commit_offset(struct bm_queue *q, const char *stream,
			   const char *device, uint64_t offset,
			   bm_queue_done_fn *cb, void *ud)
{
	struct stream *s;
	uint64_t pos;
	size_t n, dn;
	int rc;

	if (check_name(stream, &n) || check_name(device, &dn))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	rc = q->failed;
	if (rc)
		goto out;
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
		goto out;
	}
	if (offset > s->head) {
		rc = BM_ERANGE;
		goto out;
	}
	if (cb && q->ring_tail - q->ring_head == q->ring_cap) {
		rc = ring_push(q, 0, NULL, NULL);
		if (rc)
			goto out;
		q->ring_tail--;
	}
	rc = dev_set(s, device, dn, offset);
	if (rc)
		goto out;
	rc = emit(q, REC_COMMIT, s->id, offset, NONE, device, dn, &pos);
	if (rc)
		goto out;
	if (cb)
		ring_push(q, offset, cb, ud);
	rc = after_append(q, cb != NULL);
out:
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_committed_offset(struct bm_queue *q, const char *stream,
			      const char *device, uint64_t *offset)
{
	struct stream *s;
	size_t n, dn;
	int rc = BM_ENOENT;

	if (check_name(stream, &n) || check_name(device, &dn))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	for (uint32_t i = 0; s && i < s->ndev; i++) {
		if (!strcmp(s->devs[i].name, device)) {
			*offset = s->devs[i].offset;
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_devices(struct bm_queue *q, const char *stream, bm_queue_device_fn *fn,
		     void *ud)
{
	struct stream *s;
	size_t n;
	int visited = 0;

	if (check_name(stream, &n))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	for (uint32_t i = 0; s && i < s->ndev; i++) {
		visited++;
		if (fn(ud, s->devs[i].name, s->devs[i].offset))
			break;
	}
	pthread_mutex_unlock(&q->mu);
	return s ? visited : BM_ENOENT;
}

int bm_queue_event_fd(struct bm_queue *q)
{
	return q->evfd;
}

static void run_completions(struct bm_queue *q)
{
	for (;;) {
		struct comp batch[64];
		uint64_t durable;
		size_t n = 0;
		int status;

		pthread_mutex_lock(&q->mu);
		while (n < 64 && q->ring_head != q->ring_tail) {
			struct comp *c = &q->ring[q->ring_head & (q->ring_cap - 1)];
			if (c->end > q->durable_pos && !q->failed)
				break;
			batch[n++] = *c;
			q->ring_head++;
		}
		status = q->failed;
		durable = q->durable_pos;
		pthread_mutex_unlock(&q->mu);
		/* A completion that raced with a failure may have been durable;
		 * reporting BM_EIO for it is the safe side. */
		for (size_t i = 0; i < n; i++)
			batch[i].cb(batch[i].ud, batch[i].end <= durable ? 0 : status,
				    batch[i].offset);
		if (n < 64)
			break;
	}
}

static int checkpoint_locked(struct bm_queue *q);
static int retain_locked(struct bm_queue *q);

void bm_queue_poll(struct bm_queue *q)
{
	uint64_t v;

	if (read(q->evfd, &v, sizeof(v)) == -1 && errno != EAGAIN)
		bm_warn(C, "cannot read event fd: %s", strerror(errno));
	pthread_mutex_lock(&q->mu);
	q->ev_armed = 0;
	if (q->o.sync == BM_QUEUE_SYNC_NONE && !q->failed) {
		pthread_mutex_lock(&q->io_mu);
		if (!flush_wbuf(q))
			q->durable_pos = q->written_pos;
		pthread_mutex_unlock(&q->io_mu);
	}
	if (!q->failed) {
		struct seg *cur = &q->segs[q->nsegs - 1];
		uint64_t now = bm_mono_ms();
		if (q->o.segment_ms && q->appended_pos > cur->base &&
		    bm_wall_ms() - cur->first_ts >= (int64_t)q->o.segment_ms)
			rotate_locked(q);
		if (q->appended_pos - q->ckpt_pos >= q->o.checkpoint_bytes)
			checkpoint_locked(q);
		if ((q->o.retention_ms || q->o.retention_bytes) &&
		    now - q->last_retain_ms >= 1000) {
			q->last_retain_ms = now;
			retain_locked(q);
		}
	}
	pthread_mutex_unlock(&q->mu);
	run_completions(q);
}

int bm_queue_sync(struct bm_queue *q)
{
	int rc;

	pthread_mutex_lock(&q->mu);
	rc = sync_locked(q);
	pthread_mutex_unlock(&q->mu);
	run_completions(q);
	return rc;
}

int bm_queue_rotate(struct bm_queue *q)
{
	int rc;

	pthread_mutex_lock(&q->mu);
	rc = q->failed ? q->failed : rotate_locked(q);
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* --- reading ------------------------------------------------------------ */

/* mu held: makes sure [.., end) reached the file so pread sees it;
 * *written (may be NULL) gets how far the file goes now. */
static int ensure_written(struct bm_queue *q, uint64_t end, uint64_t *written)
{
	int rc = 0;

	pthread_mutex_lock(&q->io_mu);
	if (end > q->written_pos)
		rc = flush_wbuf(q);
	if (written)
		*written = q->written_pos;
	pthread_mutex_unlock(&q->io_mu);
	return rc;
}

/* mu held: reads the header at pos and, with it, up to `more` bytes after
 * it (into h + 1, which has room for them) when they are in the file
 * already; *got (may be NULL) gets how many of those came.  Checks the
 * header. */
static int read_hdr_more(struct bm_queue *q, uint64_t pos, struct rec_hdr *h,
			 struct seg **seg_out, size_t more, size_t *got)
{
	struct seg *sg = seg_of(q, pos);
	uint64_t written;
	size_t want = HDR;
	ssize_t r;
	int rc;

	if (!sg || pos + HDR > sg->end) {
		bm_err(C, "record position %" PRIu64 " is outside the log of '%s'",
		       pos, q->dir);
		return BM_ECORRUPT;
	}
	rc = ensure_written(q, pos + HDR, &written);
	if (rc)
		return rc;
	/* Only bytes already written: reading ahead must not force a write
	 * of the group commit's buffer. */
	if (more && written > pos + HDR) {
		uint64_t room = (written < sg->end ? written : sg->end) - pos - HDR;
		want += room < more ? (size_t)room : more;
	}
	r = pread_all(sg->fd, h, want, pos - sg->base);
	if (r == -1) {
		bm_err(C, "cannot read segment %020" PRIu64 " of '%s': %s",
		       sg->base, q->dir, strerror(errno));
		return BM_EIO;
	}
	if (r < (ssize_t)HDR || h->magic != REC_MAGIC || h->hcrc != hdr_crc(h) ||
	    h->len > BM_QUEUE_RECORD_MAX || pos + HDR + h->len > sg->end) {
		bm_err(C, "record header at position %" PRIu64 " in segment %020" PRIu64
		       " of '%s' is damaged", pos, sg->base, q->dir);
		return BM_ECORRUPT;
	}
	if (got)
		*got = (size_t)r - HDR;
	if (seg_out)
		*seg_out = sg;
	return 0;
}

/* mu held: reads and checks the header at pos. */
static int read_hdr(struct bm_queue *q, uint64_t pos, struct rec_hdr *h,
		    struct seg **seg_out)
{
	return read_hdr_more(q, pos, h, seg_out, 0, NULL);
}

/* A scan reads each record's header on its walk back along prev links;
 * reading PEEK bytes instead brings most payloads with it, kept in q->peek
 * (at most PEEK_KEEP bytes per scan) for the forward pass: one pread per
 * small record instead of three. */
struct walk_ent {
	struct rec_hdr h;
	uint64_t pos;
	uint32_t at;              /* in q->peek, or NO_PEEK */
};

#define PEEK      512u
#define PEEK_KEEP (4u << 20)
#define NO_PEEK   UINT32_MAX

/* mu held: read_hdr that keeps the payload in q->peek when it came whole
 * and intact; *at gets where (a NUL follows it), or NO_PEEK. */
static int read_hdr_peek(struct bm_queue *q, uint64_t pos, struct rec_hdr *h,
			 uint32_t *at)
{
	struct {
		struct rec_hdr h;
		uint8_t p[PEEK];
	} b;
	size_t got;
	int rc;

	static_assert(offsetof(__typeof__(b), p) == HDR, "payload right after the header");
	*at = NO_PEEK;
	rc = read_hdr_more(q, pos, &b.h, NULL, PEEK, &got);
	if (rc)
		return rc;
	*h = b.h;
	if (h->erased == 0 && h->len <= got && q->peek.len + h->len + 1 <= PEEK_KEEP &&
	    bm_crc32c(0, b.p, h->len) == h->pcrc && !bm_buf_grow(&q->peek, h->len + 1)) {
		*at = (uint32_t)q->peek.len;
		memcpy(q->peek.data + q->peek.len, b.p, h->len);
		q->peek.len += h->len;
		q->peek.data[q->peek.len++] = 0;
	}
	return 0;
}

/* mu held: reads the payload of the record whose header h is at pos. */
static int read_payload(struct bm_queue *q, uint64_t pos, const struct rec_hdr *h,
			struct bm_buf *out)
{
	struct seg *sg = seg_of(q, pos);
	ssize_t r;
	int rc;

	bm_buf_reset(out);
	if (h->erased == REC_ERASED)
		return BM_EDESTROYED;
	rc = ensure_written(q, pos + HDR + h->len, NULL);
	if (rc)
		return rc;
	rc = bm_buf_grow(out, h->len);
	if (rc)
		return rc;
	r = pread_all(sg->fd, out->data, h->len, pos - sg->base + HDR);
	if (r == -1)
		return BM_EIO;
	if ((size_t)r != h->len || h->erased != 0 ||
	    bm_crc32c(0, out->data, h->len) != h->pcrc) {
		bm_err(C, "record at position %" PRIu64 " in segment %020" PRIu64
		       " of '%s' fails its checksum", pos, sg->base, q->dir);
		return BM_ECORRUPT;
	}
	out->len = h->len;
	out->data[out->len] = 0;
	return 0;
}

/* mu held: position (and header) of offset off of s.  At most 15 steps back
 * from the nearest sparse-index entry or the head. */
static int locate(struct bm_queue *q, struct stream *s, uint64_t off,
		  uint64_t *pos_out, struct rec_hdr *h)
{
	uint64_t j = (off + IDX_EVERY - 1) / IDX_EVERY, cur_off, cur_pos;

	if (off == 0 || off > s->head)
		return BM_ERANGE;
	if (off < s->first)
		return BM_ENOENT;
	if (j * IDX_EVERY <= s->head && j >= s->idx_first &&
	    j - s->idx_first < s->idx_len) {
		cur_off = j * IDX_EVERY;
		cur_pos = s->idx[j - s->idx_first];
	} else {
		cur_off = s->head;
		cur_pos = s->last_pos;
	}
	for (;;) {
		int rc = read_hdr(q, cur_pos, h, NULL);
		if (rc)
			return rc;
		if (h->type != REC_DATA || h->stream != s->id || h->offset != cur_off) {
			bm_err(C, "record at position %" PRIu64 " of '%s' is not offset %"
			       PRIu64 " of stream '%s'", cur_pos, q->dir, cur_off, s->name);
			return BM_ECORRUPT;
		}
		if (cur_off == off)
			break;
		cur_pos = h->prev;
		cur_off--;
	}
	*pos_out = cur_pos;
	return 0;
}

static void fill_meta(struct bm_queue_meta *m, const struct rec_hdr *h)
{
	if (!m)
		return;
	m->offset = h->offset;
	m->ts_ms = h->ts_ms;
	m->len = h->len;
}

int bm_queue_read(struct bm_queue *q, const char *stream, uint64_t offset,
		  struct bm_buf *out, struct bm_queue_meta *meta)
{
	struct stream *s;
	struct rec_hdr h;
	uint64_t pos;
	size_t n;
	int rc;

	if (check_name(stream, &n))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
		goto out;
	}
	rc = locate(q, s, offset, &pos, &h);
	if (rc)
		goto out;
	fill_meta(meta, &h);
	rc = read_payload(q, pos, &h, out);
out:
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_scan(struct bm_queue *q, const char *stream, uint64_t after,
		  unsigned max_records, bm_queue_scan_fn *fn, void *ud)
{
	struct bm_buf buf = BM_BUF_INIT;
	struct walk_ent *w;
	struct stream *s;
	struct rec_hdr h;
	uint64_t from, to, pos;
	size_t n, cnt;
	int rc;

	if (check_name(stream, &n) || max_records > SCAN_MAX || !fn)
		return BM_EINVAL;
	if (max_records == 0 || after >= UINT64_MAX - SCAN_MAX)
		return 0;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
		goto out;
	}
	from = after + 1 > s->first ? after + 1 : s->first;
	to = from - 1 + max_records;
	if (to > s->head)
		to = s->head;
	if (from > to) {
		rc = 0;
		goto out;
	}
	cnt = (size_t)(to - from + 1);
	if (cnt > q->walk_cap) {
		/* Kept between scans (at most SCAN_MAX entries): fresh pages
		 * are costly on some hosts, so a scan reuses the last one's. */
		w = realloc(q->walk, cnt * sizeof(*w));
		if (!w) {
			rc = BM_ENOMEM;
			goto out;
		}
		q->walk = w;
		q->walk_cap = cnt;
	}
	w = q->walk;
	/* Walk back from `to` along prev links, keeping the small payloads
	 * read with the headers, then go forward reading what is not kept. */
	bm_buf_reset(&q->peek);
	rc = locate(q, s, to, &pos, &h);
	if (rc)
		goto out;
	w[cnt - 1].h = h;
	w[cnt - 1].pos = pos;
	w[cnt - 1].at = NO_PEEK;
	for (size_t i = cnt - 1; i > 0; i--) {
		uint64_t want = from + i - 1;
		pos = h.prev;
		rc = read_hdr_peek(q, pos, &h, &w[i - 1].at);
		if (rc)
			goto out;
		if (h.type != REC_DATA || h.stream != s->id || h.offset != want) {
			bm_err(C, "record at position %" PRIu64 " of '%s' is not offset %"
			       PRIu64 " of stream '%s'", pos, q->dir, want, s->name);
			rc = BM_ECORRUPT;
			goto out;
		}
		w[i - 1].h = h;
		w[i - 1].pos = pos;
	}
	for (size_t i = 0; i < cnt; i++) {
		struct bm_queue_meta m;
		const uint8_t *data;
		int st = 0;

		fill_meta(&m, &w[i].h);
		if (w[i].at != NO_PEEK) {
			data = q->peek.data + w[i].at;
		} else {
			st = read_payload(q, w[i].pos, &w[i].h, &buf);
			if (st && st != BM_EDESTROYED) {
				rc = st;
				goto out;
			}
			data = st ? NULL : buf.data;
		}
		if (fn(ud, &m, data, st)) {
			cnt = i + 1;
			break;
		}
	}
	rc = (int)cnt;
out:
	pthread_mutex_unlock(&q->mu);
	bm_buf_release(&buf);
	return rc;
}

int bm_queue_stream_head(struct bm_queue *q, const char *stream,
			 uint64_t *head, uint64_t *first)
{
	struct stream *s;
	size_t n;
	int rc = 0;

	if (check_name(stream, &n))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
	} else {
		if (head)
			*head = s->head;
		if (first)
			*first = s->first;
	}
	pthread_mutex_unlock(&q->mu);
	return rc;
}

int bm_queue_streams(struct bm_queue *q, bm_queue_stream_fn *fn, void *ud)
{
	uint64_t i;
	int count = 0;

	/* fn may call read functions: the lock is dropped around each call,
	 * which is fine because streams are never removed. */
	for (i = 0;; i++) {
		char name[BM_QUEUE_NAME_MAX + 1];
		uint64_t head, first;
		struct stream *s;

		pthread_mutex_lock(&q->mu);
		s = i < q->nstreams ? q->by_id[i] : NULL;
		if (s) {
			memcpy(name, s->name, s->name_len + 1u);
			head = s->head;
			first = s->first;
		}
		pthread_mutex_unlock(&q->mu);
		if (!s)
			break;
		count++;
		if (fn(ud, name, head, first))
			break;
	}
	return count;
}

/* --- secure erase -------------------------------------------------------- */

/* mu held: zeroes the payload at pos and marks it erased (no sync). */
static int erase_at(struct bm_queue *q, uint64_t pos, const struct rec_hdr *h)
{
	static const uint8_t zeros[4096];
	uint32_t mark = REC_ERASED;
	struct seg *sg = seg_of(q, pos);
	uint64_t foff = pos - sg->base + HDR;
	uint32_t left = h->len;

	while (left) {
		uint32_t k = left < sizeof(zeros) ? left : (uint32_t)sizeof(zeros);
		if (pwrite_all(sg->fd, zeros, k, foff) == -1)
			goto fail;
		foff += k;
		left -= k;
	}
	if (pwrite_all(sg->fd, &mark, sizeof(mark),
		       pos - sg->base + offsetof(struct rec_hdr, erased)) == -1)
		goto fail;
	return 0;
fail:
	bm_err(C, "cannot erase record at position %" PRIu64 " of '%s': %s",
	       pos, q->dir, strerror(errno));
	return BM_EIO;
}

int bm_queue_destroy(struct bm_queue *q, const char *stream, uint64_t offset)
{
	struct stream *s;
	struct rec_hdr h;
	struct seg *sg;
	uint64_t pos, tpos;
	size_t n;
	int rc;

	if (check_name(stream, &n))
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	rc = q->failed;
	if (rc)
		goto out;
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
		goto out;
	}
	rc = locate(q, s, offset, &pos, &h);
	if (rc || h.erased == REC_ERASED)
		goto out;
	rc = emit(q, REC_DESTROY, s->id, offset, pos, NULL, 0, &tpos);
	if (rc)
		goto out;
	rc = sync_locked(q);
	if (rc)
		goto out;
	rc = erase_at(q, pos, &h);
	if (rc) {
		set_failed(q, "secure erase", EIO);
		goto out;
	}
	sg = seg_of(q, pos);
	if (fdatasync(sg->fd) == -1) {
		set_failed(q, "fdatasync", errno);
		rc = BM_EIO;
	}
out:
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* --- checkpoint ---------------------------------------------------------- */

struct wr {
	int fd;
	uint64_t off;
	uint32_t crc;
	struct bm_buf b;
};

static int wr_flush(struct wr *w)
{
	if (!w->b.len)
		return 0;
	if (pwrite_all(w->fd, w->b.data, w->b.len, w->off) == -1)
		return BM_EIO;
	w->crc = bm_crc32c(w->crc, w->b.data, w->b.len);
	w->off += w->b.len;
	bm_buf_reset(&w->b);
	return 0;
}

static int wr_add(struct wr *w, const void *p, size_t n)
{
	int rc = bm_buf_add(&w->b, p, n);

	if (!rc && w->b.len >= (1u << 20))
		rc = wr_flush(w);
	return rc;
}

/* mu held. */
static int checkpoint_locked(struct bm_queue *q)
{
	char tmp[4096], path[4096];
	struct ckpt_hdr ch;
	struct wr w = { .fd = -1, .off = sizeof(ch) };
	uint64_t idx_base;
	int rc;

	rc = sync_locked(q);
	if (rc)
		return rc;
	snprintf(tmp, sizeof(tmp), "%s/checkpoint.tmp", q->dir);
	snprintf(path, sizeof(path), "%s/checkpoint", q->dir);
	w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (w.fd == -1) {
		bm_err(C, "cannot create '%s': %s", tmp, strerror(errno));
		return BM_EIO;
	}
	for (size_t i = 0; !rc && i < q->nsegs; i++) {
		struct ckpt_seg cs = { q->segs[i].base, q->segs[i].first_ts,
				       q->segs[i].max_ts };
		rc = wr_add(&w, &cs, sizeof(cs));
	}
	/* Sparse entries in sealed segments are in their .idx files; the
	 * checkpoint carries only those of the active segment. */
	idx_base = q->segs[q->nsegs - 1].base;
	if (!rc)
		rc = wr_add(&w, &idx_base, 8);
	for (uint64_t i = 0; !rc && i < q->nstreams; i++) {
		struct stream *s = q->by_id[i];
		uint32_t k = s->idx_len;
		struct ckpt_stream cs;

		while (k > 0 && s->idx[k - 1] >= idx_base)
			k--;
		cs = (struct ckpt_stream){
			s->id, s->first, s->head, s->last_pos, s->first_pos,
			s->idx_first + k, s->idx_len - k, s->name_len, (uint16_t)s->ndev,
		};
		rc = wr_add(&w, &cs, sizeof(cs));
		if (!rc)
			rc = wr_add(&w, s->name, s->name_len);
		for (uint32_t d = 0; !rc && d < s->ndev; d++) {
			uint16_t dl = (uint16_t)strlen(s->devs[d].name);
			rc = wr_add(&w, &s->devs[d].offset, 8);
			if (!rc)
				rc = wr_add(&w, &dl, 2);
			if (!rc)
				rc = wr_add(&w, s->devs[d].name, dl);
		}
		if (!rc && s->idx_len > k)
			rc = wr_add(&w, s->idx + k, (s->idx_len - k) * sizeof(uint64_t));
	}
	if (!rc)
		rc = wr_flush(&w);
	if (!rc) {
		uint32_t crc = w.crc;
		rc = pwrite_all(w.fd, &crc, 4, w.off) == -1 ? BM_EIO : 0;
	}
	if (!rc) {
		memset(&ch, 0, sizeof(ch));
		ch.magic = CKPT_MAGIC;
		ch.version = CKPT_VERSION;
		ch.log_pos = q->appended_pos;
		ch.next_stream_id = q->nstreams + 1;
		ch.nstreams = q->nstreams;
		ch.nsegments = q->nsegs;
		ch.written_ms = bm_wall_ms();
		ch.body_len = w.off - sizeof(ch);
		ch.crc = bm_crc32c(0, &ch, offsetof(struct ckpt_hdr, crc));
		rc = pwrite_all(w.fd, &ch, sizeof(ch), 0) == -1 ? BM_EIO : 0;
	}
	if (!rc && fdatasync(w.fd) == -1)
		rc = BM_EIO;
	if (close(w.fd) == -1 && !rc)
		rc = BM_EIO;
	if (!rc && rename(tmp, path) == -1)
		rc = BM_EIO;
	if (!rc && fsync(q->dirfd) == -1)
		rc = BM_EIO;
	bm_buf_release(&w.b);
	if (rc) {
		bm_err(C, "cannot write checkpoint '%s': %s", path,
		       rc == BM_EIO ? strerror(errno) : bm_strerror(rc));
		unlink(tmp);
		return rc;
	}
	q->ckpt_pos = q->appended_pos;
	bm_debug(C, "checkpoint of '%s' at position %" PRIu64, q->dir, q->ckpt_pos);
	return 0;
}

int bm_queue_checkpoint(struct bm_queue *q)
{
	int rc;

	pthread_mutex_lock(&q->mu);
	rc = checkpoint_locked(q);
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* Parses a checkpoint image of n bytes into q (streams, segment
 * timestamps in *segs_out).  Every length is checked against n. */
struct portion {
	uint64_t idx_first;
	uint32_t len;
	size_t at;            /* where its positions are in the checkpoint image */
};

/* *version: the header's version when its magic and CRC hold (whether or not
 * the rest parses), else 0. */
static int ckpt_parse(struct bm_queue *q, const uint8_t *p, size_t n,
		      struct ckpt_seg **segs_out, uint64_t *nsegs_out,
		      uint64_t *idx_base_out, struct portion **portions_out,
		      uint32_t *version)
{
	struct ckpt_hdr ch;
	struct ckpt_seg *cs = NULL;
	struct portion *pt = NULL;
	uint64_t idx_base;
	int base_ok = 0;
	size_t at;
	uint32_t crc;
	int rc = BM_ECORRUPT;

	*version = 0;
	if (n < sizeof(ch))
		goto bad;
	memcpy(&ch, p, sizeof(ch));
	if (ch.magic != CKPT_MAGIC || ch.crc != bm_crc32c(0, &ch, offsetof(struct ckpt_hdr, crc)))
		goto bad;
	*version = ch.version;
	if (n < sizeof(ch) + 4 || ch.version < 1 || ch.version > CKPT_VERSION ||
	    ch.body_len != n - sizeof(ch) - 4 ||
	    ch.next_stream_id != ch.nstreams + 1 || ch.nsegments == 0 ||
	    ch.nsegments > ch.body_len / sizeof(struct ckpt_seg))
		goto bad;
	memcpy(&crc, p + n - 4, 4);
	if (crc != bm_crc32c(0, p + sizeof(ch), ch.body_len))
		goto bad;
	/* Each stream entry takes at least 57 bytes: bounds the allocation. */
	if (ch.nstreams > ch.body_len / 57)
		goto bad;
	rc = table_reserve(q, ch.nstreams);
	if (rc)
		goto bad;
	rc = BM_ECORRUPT;
	at = sizeof(ch);
	cs = malloc(ch.nsegments * sizeof(*cs));
	if (!cs) {
		rc = BM_ENOMEM;
		goto bad;
	}
	memcpy(cs, p + at, ch.nsegments * sizeof(*cs));
	at += ch.nsegments * sizeof(*cs);
	for (uint64_t i = 1; i < ch.nsegments; i++)
		if (cs[i].base <= cs[i - 1].base)
			goto bad;
	if (ch.log_pos < cs[0].base || n - 4 - at < 8)
		goto bad;
	memcpy(&idx_base, p + at, 8);
	at += 8;
	for (uint64_t i = 0; i < ch.nsegments; i++)
		if (cs[i].base == idx_base)
			base_ok = 1;
	if (!base_ok || idx_base > ch.log_pos)
		goto bad;
	pt = calloc(ch.nstreams ? ch.nstreams : 1, sizeof(*pt));
	if (!pt) {
		rc = BM_ENOMEM;
		goto bad;
	}
	for (uint64_t i = 0; i < ch.nstreams; i++) {
		struct ckpt_stream e;
		struct stream *s;
		size_t end = n - 4;

		if (end - at < sizeof(e))
			goto bad;
		memcpy(&e, p + at, sizeof(e));
		at += sizeof(e);
		if (e.id != i + 1 || e.name_len == 0 || e.name_len > BM_QUEUE_NAME_MAX ||
		    end - at < e.name_len || e.first == 0 || e.first > e.head + 1 ||
		    e.head == UINT64_MAX || (e.head && e.last_pos >= ch.log_pos) ||
		    (e.first <= e.head && (e.first_pos > e.last_pos)))
			goto bad;
		rc = stream_add(q, (const char *)p + at, e.name_len, &s);
		if (rc)
			goto bad;
		rc = BM_ECORRUPT;
		at += e.name_len;
		s->first = e.first;
		s->head = e.head;
		s->last_pos = e.last_pos;
		s->first_pos = e.first <= e.head ? e.first_pos : NONE;
		for (uint16_t d = 0; d < e.ndev; d++) {
			uint64_t off;
			uint16_t dl;
			if (end - at < 10)
				goto bad;
			memcpy(&off, p + at, 8);
			memcpy(&dl, p + at + 8, 2);
			at += 10;
			if (dl == 0 || dl > BM_QUEUE_NAME_MAX || end - at < dl ||
			    off > e.head)
				goto bad;
			rc = dev_set(s, (const char *)p + at, dl, off);
			if (rc)
				goto bad;
			rc = BM_ECORRUPT;
			at += dl;
		}
		/* The portion in the checkpoint is the tail of the stream's
		 * index: it ends at the last multiple of 16 <= head, and its
		 * positions are in the segment that was active (>= idx_base).
		 * The segment index files supply the rest; recover() checks
		 * that together they cover every multiple of 16 in
		 * [first, head]. */
		if ((end - at) / 8 < e.idx_len)
			goto bad;
		if (e.idx_len) {
			uint64_t prev = 0;
			if (e.idx_first == 0 || e.idx_first > e.head / IDX_EVERY ||
			    e.head / IDX_EVERY - e.idx_first + 1 != e.idx_len ||
			    e.idx_first * IDX_EVERY < e.first)
				goto bad;
			for (uint32_t k = 0; k < e.idx_len; k++) {
				uint64_t pos;
				memcpy(&pos, p + at + k * 8u, 8);
				if (pos < idx_base || pos > e.last_pos || (k && pos <= prev))
					goto bad;
				prev = pos;
			}
		}
		pt[i].idx_first = e.idx_first;
		pt[i].len = e.idx_len;
		pt[i].at = at;
		at += e.idx_len * sizeof(uint64_t);
	}
	if (at != n - 4)
		goto bad;
	q->ckpt_pos = ch.log_pos;
	*segs_out = cs;
	*nsegs_out = ch.nsegments;
	*idx_base_out = idx_base;
	*portions_out = pt;
	return 0;
bad:
	free(cs);
	free(pt);
	return rc;
}

/* --- retention ----------------------------------------------------------- */

/* mu held: s lost every record below position base; find its new first. */
static int advance_first(struct bm_queue *q, struct stream *s, uint64_t base)
{
	uint64_t c_off, c_pos, drop;
	uint32_t lo = 0, hi = s->idx_len;
	struct rec_hdr h;

	if (s->last_pos < base) {
		s->first = s->head + 1;
		s->first_pos = NONE;
		s->idx_len = 0;
		return 0;
	}
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (s->idx[mid] < base)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < s->idx_len) {
		c_off = (s->idx_first + lo) * IDX_EVERY;
		c_pos = s->idx[lo];
	} else {
		c_off = s->head;
		c_pos = s->last_pos;
	}
	while (c_off > s->first) {
		int rc = read_hdr(q, c_pos, &h, NULL);
		if (rc)
			return rc;
		if (h.prev == NONE || h.prev < base)
			break;
		c_pos = h.prev;
		c_off--;
	}
	s->first = c_off;
	s->first_pos = c_pos;
	drop = 0;
	while (drop < s->idx_len && (s->idx_first + drop) * IDX_EVERY < c_off)
		drop++;
	if (drop) {
		memmove(s->idx, s->idx + drop, (s->idx_len - drop) * sizeof(uint64_t));
		s->idx_len -= (uint32_t)drop;
		s->idx_first += drop;
	}
	return 0;
}

/* mu held: returns the number of segments deleted or an error. */
static int retain_locked(struct bm_queue *q)
{
	int64_t now = bm_wall_ms();
	uint64_t total = q->appended_pos - q->segs[0].base, base;
	struct seg *gone;
	size_t k = 0;
	int rc;

	while (k + 1 < q->nsegs) {
		struct seg *sg = &q->segs[k];
		int old = q->o.retention_ms && sg->max_ts < now - (int64_t)q->o.retention_ms;
		int big = q->o.retention_bytes && total > q->o.retention_bytes;
		if (!old && !big)
			break;
		total -= sg->end - sg->base;
		k++;
	}
	if (k == 0)
		return 0;
	rc = sync_locked(q);
	if (rc)
		return rc;
	base = q->segs[k].base;
	for (uint64_t i = 0; i < q->nstreams; i++) {
		struct stream *s = q->by_id[i];
		if (s->first <= s->head && s->first_pos < base) {
			rc = advance_first(q, s, base);
			if (rc)
				return rc;
		}
	}
	gone = malloc(k * sizeof(*gone));
	if (!gone)
		return BM_ENOMEM;
	memcpy(gone, q->segs, k * sizeof(*gone));
	memmove(q->segs, q->segs + k, (q->nsegs - k) * sizeof(*gone));
	q->nsegs -= k;
	/* The checkpoint must stop referring to the segments before they go. */
	rc = checkpoint_locked(q);
	if (rc) {
		memmove(q->segs + k, q->segs, q->nsegs * sizeof(*gone));
		memcpy(q->segs, gone, k * sizeof(*gone));
		q->nsegs += k;
		free(gone);
		return rc;
	}
	for (size_t i = 0; i < k; i++) {
		char path[4096];
		seg_path(q, path, sizeof(path), gone[i].base);
		close(gone[i].fd);
		if (unlink(path) == -1)
			bm_warn(C, "cannot delete segment '%s': %s", path, strerror(errno));
		else
			bm_info(C, "retention deleted segment '%s'", path);
		idx_path(q, path, sizeof(path), gone[i].base, "");
		unlink(path);
	}
	fsync(q->dirfd);
	free(gone);
	return (int)k;
}

int bm_queue_retain(struct bm_queue *q)
{
	int rc;

	pthread_mutex_lock(&q->mu);
	rc = q->failed ? q->failed : retain_locked(q);
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* --- recovery ------------------------------------------------------------ */

struct rdr {
	int fd;
	uint64_t size;      /* file size */
	uint64_t boff;      /* file offset of buf[0] */
	uint8_t *buf;
	size_t len, cap;
};

/* Makes [off, off+n) of the file available; returns a pointer, or NULL
 * with *err set (0 = past the end of file). */
static const uint8_t *rdr_get(struct rdr *r, uint64_t off, size_t n, int *err)
{
	ssize_t got;
	size_t want;

	*err = 0;
	if (off > r->size || n > r->size - off)
		return NULL;
	if (off >= r->boff && off + n <= r->boff + r->len)
		return r->buf + (off - r->boff);
	want = n > (1u << 20) ? n : (1u << 20);
	if (want > r->size - off)
		want = (size_t)(r->size - off);
	if (want > r->cap) {
		uint8_t *b = realloc(r->buf, want);
		if (!b) {
			*err = BM_ENOMEM;
			return NULL;
		}
		r->buf = b;
		r->cap = want;
	}
	got = pread_all(r->fd, r->buf, want, off);
	if (got == -1) {
		*err = BM_EIO;
		return NULL;
	}
	r->boff = off;
	r->len = (size_t)got;
	if (r->len < n)
		return NULL;
	return r->buf;
}

enum { REC_OK, REC_SUSPECT, REC_END };

/* Classifies the record at file offset off; REC_END also for errors (*err). */
static int rdr_record(struct rdr *r, uint64_t off, struct rec_hdr *h,
		      const uint8_t **payload, int *err)
{
	const uint8_t *p = rdr_get(r, off, HDR, err);

	if (!p)
		return REC_END;
	memcpy(h, p, HDR);
	if (h->magic != REC_MAGIC || h->hcrc != hdr_crc(h) || h->len > BM_QUEUE_RECORD_MAX)
		return REC_END;
	p = rdr_get(r, off, HDR + h->len, err);
	if (!p)
		return REC_END;
	*payload = p + HDR;
	if (h->erased == REC_ERASED)
		return REC_OK;
	if (h->erased != 0 || bm_crc32c(0, p + HDR, h->len) != h->pcrc)
		return REC_SUSPECT;
	return REC_OK;
}

/* --- the log in order ------------------------------------------------- */

int bm_queue_locate(struct bm_queue *q, const char *stream, uint64_t after,
		    uint64_t *pos)
{
	struct stream *s;
	struct rec_hdr h;
	uint64_t off;
	size_t n;
	int rc;

	if (check_name(stream, &n) || !pos)
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	s = stream_find(q, stream, n);
	if (!s) {
		rc = BM_ENOENT;
	} else {
		off = after < s->first ? s->first : after + 1;
		rc = off > s->head || after == UINT64_MAX ? BM_ERANGE
							   : locate(q, s, off, pos, &h);
	}
	pthread_mutex_unlock(&q->mu);
	return rc;
}

/* Bytes one call of bm_queue_scan_log reads at most (it holds the lock). */
#define SCAN_LOG_BYTES (64u << 20)

int bm_queue_scan_log(struct bm_queue *q, uint64_t *pos_io, unsigned max_records,
		      bm_queue_log_fn *fn, void *ud)
{
	struct rdr r = { .fd = -1 };
	struct seg *sg = NULL;
	uint64_t pos, stop, start;
	unsigned cnt = 0;
	int rc = 0;

	if (!pos_io || !fn || max_records == 0 || max_records > SCAN_MAX)
		return BM_EINVAL;
	pthread_mutex_lock(&q->mu);
	pos = *pos_io;
	if (q->nsegs && pos < q->segs[0].base)
		pos = q->segs[0].base;
	/* Only durable records: those are written and never change. */
	stop = q->durable_pos;
	start = pos;
	while (pos < stop && cnt < max_records && (pos - start < SCAN_LOG_BYTES || !cnt)) {
		struct bm_queue_meta m;
		struct rec_hdr h;
		const uint8_t *payload;
		struct stream *s;
		int kind, err, st = 0;

		if (!sg || pos >= sg->base + r.size) {
			sg = seg_of(q, pos);
			if (!sg || pos < sg->base) {
				bm_err(C, "position %" PRIu64 " is outside the log of '%s'",
				       pos, q->dir);
				rc = BM_ECORRUPT;
				break;
			}
			r.fd = sg->fd;
			r.size = (sg->end < stop ? sg->end : stop) - sg->base;
			r.boff = 0;
			r.len = 0;
			if (pos == sg->base + r.size)
				break;        /* an empty active segment */
		}
		kind = rdr_record(&r, pos - sg->base, &h, &payload, &err);
		if (kind != REC_OK) {
			bm_err(C, "record at position %" PRIu64 " in segment %020" PRIu64
			       " of '%s' is %s", pos, sg->base, q->dir,
			       err ? "unreadable" : "damaged");
			rc = err == BM_ENOMEM ? BM_ENOMEM : err ? BM_EIO : BM_ECORRUPT;
			break;
		}
		pos += HDR + h.len;
		if (h.type != REC_DATA)
			continue;
		s = stream_by_id(q, h.stream);
		if (!s) {
			bm_err(C, "record at position %" PRIu64 " of '%s' names no stream",
			       pos - HDR - h.len, q->dir);
			rc = BM_ECORRUPT;
			break;
		}
		fill_meta(&m, &h);
		if (h.erased == REC_ERASED)
			st = BM_EDESTROYED;
		cnt++;
		if (fn(ud, s->name, &m, st ? NULL : payload, st))
			break;
	}
	free(r.buf);
	if (!rc)
		*pos_io = pos;
	pthread_mutex_unlock(&q->mu);
	return rc ? rc : (int)cnt;
}

struct mark {
	uint64_t pos, target;
};

struct marks {
	struct mark *v;
	size_t n, cap;
};

static int marks_add(struct marks *m, uint64_t pos, uint64_t target)
{
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 16;
		struct mark *v = realloc(m->v, cap * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		m->v = v;
		m->cap = cap;
	}
	m->v[m->n].pos = pos;
	m->v[m->n].target = target;
	m->n++;
	return 0;
}

/* Pass 1: the end of the valid log from position start. */
static int find_end(struct bm_queue *q, uint64_t start, uint64_t *end_out)
{
	struct marks sus = { 0 }, tomb = { 0 };
	struct rdr r = { 0 };
	uint64_t end = q->segs[q->nsegs - 1].end;
	int rc = 0, changed;

	for (size_t i = 0; i < q->nsegs && end == q->segs[q->nsegs - 1].end; i++) {
		struct seg *sg = &q->segs[i];
		uint64_t off;

		if (sg->end <= start && i + 1 < q->nsegs)
			continue;
		r.fd = sg->fd;
		r.size = sg->end - sg->base;
		r.len = 0;
		off = start > sg->base ? start - sg->base : 0;
		while (off < r.size) {
			struct rec_hdr h;
			const uint8_t *pl;
			int err, k = rdr_record(&r, off, &h, &pl, &err);
			if (err) {
				rc = err;
				goto out;
			}
			if (k == REC_END) {
				end = sg->base + off;
				break;
			}
			if (k == REC_SUSPECT)
				rc = marks_add(&sus, sg->base + off, 0);
			else if (h.type == REC_DESTROY)
				rc = marks_add(&tomb, sg->base + off, h.prev);
			if (rc)
				goto out;
			off += HDR + h.len;
		}
	}
	/* A payload that fails its checksum is a torn secure erase only if a
	 * tombstone before the end names it; otherwise the log ends there. */
	do {
		changed = 0;
		for (size_t i = 0; i < sus.n && sus.v[i].pos < end; i++) {
			int ok = 0;
			for (size_t j = 0; j < tomb.n && tomb.v[j].pos < end; j++)
				if (tomb.v[j].target == sus.v[i].pos)
					ok = 1;
			if (!ok) {
				end = sus.v[i].pos;
				changed = 1;
				break;
			}
		}
	} while (changed);
	*end_out = end;
out:
	free(sus.v);
	free(tomb.v);
	free(r.buf);
	return rc;
}

static int corrupt_at(struct bm_queue *q, uint64_t pos, const char *why)
{
	bm_err(C, "log of '%s' is corrupt at position %" PRIu64 ": %s", q->dir, pos, why);
	return BM_ECORRUPT;
}

/* Pass 2: applies the records in [start, end). */
static int replay(struct bm_queue *q, uint64_t start, uint64_t end)
{
	struct rdr r = { 0 };
	int rc = 0;

	for (size_t i = 0; i < q->nsegs; i++) {
		struct seg *sg = &q->segs[i];
		uint64_t off;

		if (sg->end <= start || sg->base >= end)
			continue;
		r.fd = sg->fd;
		r.size = sg->end - sg->base;
		r.len = 0;
		off = start > sg->base ? start - sg->base : 0;
		while (off < r.size && sg->base + off < end) {
			uint64_t pos = sg->base + off;
			struct rec_hdr h;
			struct stream *s;
			const uint8_t *pl;
			int err;

			if (rdr_record(&r, off, &h, &pl, &err) == REC_END) {
				rc = err ? err : corrupt_at(q, pos, "record changed during recovery");
				goto out;
			}
			q->st.recovered_bytes += HDR + h.len;
			if (sg->first_ts == 0)
				sg->first_ts = h.ts_ms;
			if (h.ts_ms > sg->max_ts)
				sg->max_ts = h.ts_ms;
			s = stream_by_id(q, h.stream);
			switch (h.type) {
			case REC_STREAM:
				if (h.stream != q->nstreams + 1 || h.len == 0 ||
				    h.len > BM_QUEUE_NAME_MAX ||
				    stream_find(q, (const char *)pl, h.len)) {
					rc = corrupt_at(q, pos, "bad stream definition");
					goto out;
				}
				rc = stream_add(q, (const char *)pl, h.len, &s);
				break;
			case REC_DATA:
				if (!s || h.offset != s->head + 1 ||
				    h.prev != (s->head ? s->last_pos : NONE)) {
					bm_debug(C, "stream %" PRIu64 " offset %" PRIu64
						 " prev %" PRIu64 "; expected offset %" PRIu64
						 " prev %" PRIu64, h.stream, h.offset, h.prev,
						 s ? s->head + 1 : 0, s ? s->last_pos : 0);
					rc = corrupt_at(q, pos, "record out of sequence");
					goto out;
				}
				rc = stream_push(q, s, pos);
				break;
			case REC_COMMIT:
				if (!s || h.offset > s->head || h.len == 0 ||
				    h.len > BM_QUEUE_NAME_MAX) {
					rc = corrupt_at(q, pos, "bad offset commit");
					goto out;
				}
				rc = dev_set(s, (const char *)pl, h.len, h.offset);
				break;
			case REC_DESTROY: {
				struct rec_hdr t;
				if (!s || h.prev >= pos) {
					rc = corrupt_at(q, pos, "bad tombstone");
					goto out;
				}
				if (h.prev < q->segs[0].base || h.offset < s->first)
					break;   /* deleted by retention since */
				rc = read_hdr(q, h.prev, &t, NULL);
				if (rc)
					goto out;
				if (t.type != REC_DATA || t.stream != h.stream ||
				    t.offset != h.offset) {
					rc = corrupt_at(q, pos, "tombstone names a wrong record");
					goto out;
				}
				if (t.erased != REC_ERASED) {
					rc = erase_at(q, h.prev, &t);
					if (!rc && fdatasync(seg_of(q, h.prev)->fd) == -1)
						rc = BM_EIO;
				}
				break;
			}
			default:
				rc = corrupt_at(q, pos, "unknown record type");
				goto out;
			}
			if (rc)
				goto out;
			off += HDR + h.len;
		}
	}
out:
	free(r.buf);
	return rc;
}

/* --- segment index files (recovery side) ---------------------------------- */

/* Adds a sparse entry loaded from disk, checking it continues the index. */
/* Adds a sparse entry loaded from disk if it continues the stream's index;
 * otherwise marks the stream's index broken (load_index drops it). */
static int idx_load(struct bm_queue *q, uint64_t stream, uint64_t offset, uint64_t pos)
{
	struct stream *s = stream_by_id(q, stream);

	if (!s || s->idx_broken)
		return 0;
	if (offset == 0 || offset % IDX_EVERY || offset > s->head ||
	    offset < s->first || pos > s->last_pos ||
	    (s->idx_len && (offset / IDX_EVERY != s->idx_first + s->idx_len ||
			    pos <= s->idx[s->idx_len - 1]))) {
		s->idx_broken = 1;
		return 0;
	}
	return idx_push(s, offset, pos);
}

/* Reads the index file of sealed segment sg into *out; 0, or -1 when it is
 * missing or damaged (the caller rebuilds it), or BM_ENOMEM. */
static int read_seg_idx(struct bm_queue *q, const struct seg *sg, struct entv *out)
{
	char path[4096];
	struct idx_hdr h;
	struct stat st;
	uint32_t crc;
	int fd, rc = -1;

	idx_path(q, path, sizeof(path), sg->base, "");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) == -1 || (uint64_t)st.st_size < sizeof(h) + 4 ||
	    pread_all(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    h.magic != IDX_MAGIC || h.version != IDX_VERSION ||
	    h.crc != bm_crc32c(0, &h, offsetof(struct idx_hdr, crc)) ||
	    h.base != sg->base || h.end != sg->end ||
	    h.nentries != ((uint64_t)st.st_size - sizeof(h) - 4) / sizeof(struct idx_ent) ||
	    (uint64_t)st.st_size != sizeof(h) + 4 + h.nentries * sizeof(struct idx_ent))
		goto out;
	out->n = 0;
	if (h.nentries > out->cap) {
		struct idx_ent *v = realloc(out->v, h.nentries * sizeof(*v));
		if (!v) {
			rc = BM_ENOMEM;
			goto out;
		}
		out->v = v;
		out->cap = h.nentries;
	}
	if (pread_all(fd, out->v, h.nentries * sizeof(struct idx_ent), sizeof(h)) !=
	    (ssize_t)(h.nentries * sizeof(struct idx_ent)) ||
	    pread_all(fd, &crc, 4, sizeof(h) + h.nentries * sizeof(struct idx_ent)) != 4 ||
	    crc != bm_crc32c(0, out->v, h.nentries * sizeof(struct idx_ent)))
		goto out;
	out->n = h.nentries;
	rc = 0;
out:
	close(fd);
	return rc;
}

/* Rebuilds the sparse entries of sealed segment sg by reading it. */
static int scan_seg_idx(struct bm_queue *q, const struct seg *sg, struct entv *out)
{
	struct rdr r = { 0 };
	uint64_t off = 0;
	int rc = 0;

	out->n = 0;
	r.fd = sg->fd;
	r.size = sg->end - sg->base;
	while (off < r.size) {
		struct rec_hdr h;
		const uint8_t *pl;
		int err, k = rdr_record(&r, off, &h, &pl, &err);
		if (k == REC_END) {
			/* Record boundaries are lost past damage: keep what was
			 * found; load_index drops the incomplete indexes. */
			rc = err ? err : -1;
			if (!err)
				bm_err(C, "sealed segment %020" PRIu64 " of '%s' is damaged at "
				       "position %" PRIu64 "; its records after it are unreadable",
				       sg->base, q->dir, sg->base + off);
			break;
		}
		if (h.type == REC_DATA && h.offset && h.offset % IDX_EVERY == 0) {
			rc = entv_push(out, h.stream, h.offset, sg->base + off);
			if (rc)
				break;
		}
		off += HDR + h.len;
	}
	free(r.buf);
	return rc;
}

/* Loads the sparse entries of the sealed segments below idx_base, then the
 * checkpoint's portions, and checks every stream's index is complete. */
static int load_index(struct bm_queue *q, uint64_t idx_base, const uint8_t *ck,
		      const struct portion *pt)
{
	struct entv e = { 0 };
	int rc = 0;

	for (size_t i = 0; i < q->nsegs && q->segs[i].base < idx_base; i++) {
		struct seg *sg = &q->segs[i];
		rc = read_seg_idx(q, sg, &e);
		if (rc == -1) {
			char path[4096];
			idx_path(q, path, sizeof(path), sg->base, "");
			bm_warn(C, "segment index '%s' is missing or damaged; rebuilding it", path);
			rc = scan_seg_idx(q, sg, &e);
			if (!rc && !write_seg_idx(q, sg, e.v, e.n))
				fsync(q->dirfd);
			if (rc == -1)
				rc = 0;     /* partial: the entries found so far */
		}
		for (size_t k = 0; !rc && k < e.n; k++) {
			if (e.v[k].pos >= sg->base && e.v[k].pos < sg->end)
				rc = idx_load(q, e.v[k].stream, e.v[k].offset, e.v[k].pos);
		}
		if (rc)
			goto out;
	}
	for (uint64_t i = 0; i < q->nstreams; i++) {
		struct stream *s = q->by_id[i];
		uint64_t lo = (s->first + IDX_EVERY - 1) / IDX_EVERY, hi = s->head / IDX_EVERY;
		uint64_t want = hi >= lo ? hi - lo + 1 : 0;

		for (uint32_t k = 0; !rc && k < pt[i].len; k++) {
			uint64_t pos;
			memcpy(&pos, ck + pt[i].at + k * 8u, 8);
			rc = idx_load(q, s->id, (pt[i].idx_first + k) * IDX_EVERY, pos);
		}
		if (rc)
			goto out;
		if (s->idx_broken || s->idx_len != want || (want && s->idx_first != lo)) {
			/* The index only speeds reads up: without it a read walks
			 * prev links from the head, slower but still checked. */
			bm_warn(C, "sparse index of stream '%s' in '%s' is incomplete "
				"(%u of %" PRIu64 " entries); reads of old offsets of this "
				"stream will be slow", s->name, q->dir, s->idx_len, want);
			s->idx_len = 0;
			s->idx_broken = 0;
		}
	}
out:
	free(e.v);
	return rc;
}

static int cmp_ent_pos(const void *a, const void *b)
{
	const struct idx_ent *x = a, *y = b;

	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Sealed segments at or above idx_base got their entries from the
 * checkpoint and the replay, not from their index files: write any index
 * file that is missing or damaged from memory, so that a later checkpoint
 * (which will not carry those entries) can rely on it.  Best effort. */
static void heal_seg_idx(struct bm_queue *q, uint64_t idx_base)
{
	struct entv e = { 0 };
	int wrote = 0;

	for (size_t i = 0; i + 1 < q->nsegs; i++) {
		struct seg *sg = &q->segs[i];
		if (sg->base < idx_base || read_seg_idx(q, sg, &e) == 0)
			continue;
		e.n = 0;
		for (uint64_t j = 0; j < q->nstreams; j++) {
			struct stream *s = q->by_id[j];
			uint32_t lo = 0, hi = s->idx_len;
			while (lo < hi) {
				uint32_t mid = (lo + hi) / 2;
				if (s->idx[mid] < sg->base)
					lo = mid + 1;
				else
					hi = mid;
			}
			for (; lo < s->idx_len && s->idx[lo] < sg->end; lo++)
				if (entv_push(&e, s->id, (s->idx_first + lo) * IDX_EVERY,
					      s->idx[lo]))
					goto out;
		}
		if (e.n)
			qsort(e.v, e.n, sizeof(*e.v), cmp_ent_pos);
		if (!write_seg_idx(q, sg, e.v, e.n))
			wrote = 1;
	}
out:
	if (wrote)
		fsync(q->dirfd);
	free(e.v);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Reads dir into a sorted array of segment bases. */
static int list_segments(struct bm_queue *q, uint64_t **out, size_t *n_out)
{
	DIR *d = opendir(q->dir);
	struct dirent *e;
	uint64_t *v = NULL;
	size_t n = 0, cap = 0;

	if (!d) {
		bm_err(C, "cannot list '%s': %s", q->dir, strerror(errno));
		return BM_EIO;
	}
	while ((e = readdir(d))) {
		char *end;
		unsigned long long b;
		if (strlen(e->d_name) != 24 || strcmp(e->d_name + 20, ".seg"))
			continue;
		errno = 0;
		b = strtoull(e->d_name, &end, 10);
		if (errno || end != e->d_name + 20)
			continue;
		if (n == cap) {
			uint64_t *nv;
			cap = cap ? cap * 2 : 16;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				free(v);
				closedir(d);
				return BM_ENOMEM;
			}
			v = nv;
		}
		v[n++] = b;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), cmp_u64);
	*out = v;
	*n_out = n;
	return 0;
}

/* Loads the checkpoint if there is one: 0 (loaded), 1 (none), or error.
 * On 0, *img is the file image (the caller frees it; *pt points into it). */
static int load_checkpoint(struct bm_queue *q, struct ckpt_seg **cs, uint64_t *ncs,
			   uint8_t **img, uint64_t *idx_base, struct portion **pt)
{
	char path[4096];
	struct stat st;
	uint8_t *p = NULL;
	uint32_t version;
	int fd, rc;

	snprintf(path, sizeof(path), "%s/checkpoint", q->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		if (errno == ENOENT)
			return 1;
		bm_err(C, "cannot open '%s': %s", path, strerror(errno));
		return BM_EIO;
	}
	if (fstat(fd, &st) == -1) {
		rc = BM_EIO;
		goto out;
	}
	p = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
	if (!p) {
		rc = BM_ENOMEM;
		goto out;
	}
	if (pread_all(fd, p, (size_t)st.st_size, 0) != st.st_size) {
		rc = BM_EIO;
		goto out;
	}
	rc = ckpt_parse(q, p, (size_t)st.st_size, cs, ncs, idx_base, pt, &version);
	/* The stream table is derived data: the caller rebuilds it from the
	 * log.  Only a damaged file is an error worth a look. */
	if (rc == BM_ECORRUPT && version == 1)
		bm_warn(C, "checkpoint '%s' has the layout of a build older than "
			"2026-11-22 (version 1 before segment index files)", path);
	else if (rc == BM_ECORRUPT && version > CKPT_VERSION)
		bm_warn(C, "checkpoint '%s' has version %u, written by a newer "
			"build (this one reads 1 to %u)", path, version, CKPT_VERSION);
	else if (rc == BM_ECORRUPT)
		bm_err(C, "checkpoint '%s' is damaged", path);
	if (!rc) {
		*img = p;
		p = NULL;
	}
out:
	free(p);
	close(fd);
	return rc;
}

static void table_clear(struct bm_queue *q)
{
	for (uint64_t i = 0; i < q->nstreams; i++)
		stream_free(q->by_id[i]);
	q->nstreams = 0;
	if (q->ht)
		memset(q->ht, 0, q->ht_cap * sizeof(*q->ht));
}

/* 1 if fd's bytes [off, off+len) are all zero, 0 if not, -1 on error. */
static int all_zeros(int fd, uint64_t off, uint64_t len)
{
	uint8_t b[64 * 1024];

	while (len) {
		size_t n = len < sizeof(b) ? (size_t)len : sizeof(b);
		ssize_t r = pread_all(fd, b, n, off);
		if (r != (ssize_t)n)
			return r == -1 ? -1 : 0;
		for (size_t i = 0; i < n; i++)
			if (b[i])
				return 0;
		off += n;
		len -= n;
	}
	return 1;
}

static int recover(struct bm_queue *q)
{
	struct ckpt_seg *cs = NULL;
	struct portion *pt = NULL;
	uint8_t *img = NULL;
	uint64_t ncs = 0, *bases = NULL, start, end, idx_base = 0;
	size_t nb = 0, first = 0;
	char path[4096];
	int rc, have_ckpt;

	rc = list_segments(q, &bases, &nb);
	if (rc)
		return rc;
	have_ckpt = load_checkpoint(q, &cs, &ncs, &img, &idx_base, &pt);
	if (have_ckpt < 0 && have_ckpt != BM_ECORRUPT) {
		rc = have_ckpt;
		goto out;
	}
	if (have_ckpt == BM_ECORRUPT || have_ckpt == 1) {
		table_clear(q);
		if (nb && bases[0] != 0) {
			rc = BM_ECORRUPT;
			bm_err(C, "'%s' has no usable checkpoint and its log no longer "
			       "starts at position 0; cannot rebuild the stream table", q->dir);
			goto out;
		}
		if (have_ckpt == BM_ECORRUPT)
			bm_warn(C, "rebuilding the stream table of '%s' from the whole log",
				q->dir);
		have_ckpt = 0;
		q->ckpt_pos = 0;
		free(cs);
		cs = NULL;
		ncs = 0;
		free(pt);
		pt = NULL;
	} else {
		/* Segments below the checkpoint's first one are leftovers of an
		 * interrupted retention. */
		while (first < nb && bases[first] < cs[0].base) {
			seg_path(q, path, sizeof(path), bases[first]);
			bm_info(C, "deleting segment '%s' left by retention", path);
			unlink(path);
			idx_path(q, path, sizeof(path), bases[first], "");
			unlink(path);
			first++;
		}
		if (first == nb || bases[first] != cs[0].base) {
			seg_path(q, path, sizeof(path), cs[0].base);
			bm_err(C, "segment '%s' named by the checkpoint is missing", path);
			rc = BM_ECORRUPT;
			goto out;
		}
	}
	if (first == nb) {
		/* A brand-new queue. */
		int fd;
		seg_path(q, path, sizeof(path), 0);
		fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (fd == -1 || fsync(q->dirfd) == -1) {
			bm_err(C, "cannot create segment '%s': %s", path, strerror(errno));
			if (fd != -1)
				close(fd);
			rc = BM_EIO;
			goto out;
		}
		rc = segs_push(q, 0, fd);
		if (rc) {
			close(fd);
			goto out;
		}
	}
	for (size_t i = first; i < nb; i++) {
		struct stat st;
		int fd;

		seg_path(q, path, sizeof(path), bases[i]);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd == -1 || fstat(fd, &st) == -1) {
			bm_err(C, "cannot open segment '%s': %s", path, strerror(errno));
			if (fd != -1)
				close(fd);
			rc = BM_EIO;
			goto out;
		}
		rc = segs_push(q, bases[i], fd);
		if (rc) {
			close(fd);
			goto out;
		}
		q->segs[q->nsegs - 1].end = bases[i] + (uint64_t)st.st_size;
		if (i > first && q->segs[q->nsegs - 2].end != bases[i]) {
			rc = BM_ECORRUPT;
			bm_err(C, "segment '%s' does not start where the previous one ends "
			       "(%" PRIu64 "): a segment is missing or truncated",
			       path, q->segs[q->nsegs - 2].end);
			goto out;
		}
	}
	/* Segment timestamps from the checkpoint. */
	for (size_t i = 0, j = 0; i < q->nsegs && j < ncs; i++) {
		while (j < ncs && cs[j].base < q->segs[i].base)
			j++;
		if (j < ncs && cs[j].base == q->segs[i].base) {
			q->segs[i].first_ts = cs[j].first_ts;
			q->segs[i].max_ts = cs[j].max_ts;
		}
	}
	if (pt) {
		rc = load_index(q, idx_base, img, pt);
		if (rc)
			goto out;
	}
	start = have_ckpt == 0 && ncs ? q->ckpt_pos : q->segs[0].base;
	if (start > q->segs[q->nsegs - 1].end) {
		rc = BM_ECORRUPT;
		bm_err(C, "the log of '%s' ends at %" PRIu64 " before its checkpoint "
		       "position %" PRIu64 ": synced data is missing", q->dir,
		       q->segs[q->nsegs - 1].end, start);
		goto out;
	}
	rc = find_end(q, start, &end);
	if (rc)
		goto out;
	if (end < q->segs[q->nsegs - 1].base) {
		rc = BM_ECORRUPT;
		bm_err(C, "sealed segment of '%s' is damaged at position %" PRIu64,
		       q->dir, end);
		goto out;
	}
	if (end < q->segs[q->nsegs - 1].end) {
		struct seg *sg = &q->segs[q->nsegs - 1];
		int zeros = all_zeros(sg->fd, end - sg->base, sg->end - end);

		seg_path(q, path, sizeof(path), sg->base);
		if (zeros < 0) {
			bm_err(C, "cannot read segment '%s': %s", path, strerror(errno));
			rc = BM_EIO;
			goto out;
		}
		if (zeros)
			bm_debug(C, "cutting the preallocated tail of segment '%s' at %" PRIu64
				 " (%" PRIu64 " zero bytes)", path, end - sg->base, sg->end - end);
		else
			bm_warn(C, "truncating torn tail of segment '%s' at %" PRIu64
				" (%" PRIu64 " bytes dropped)", path, end - sg->base,
				sg->end - end);
		if (ftruncate(sg->fd, (off_t)(end - sg->base)) == -1 ||
		    fdatasync(sg->fd) == -1) {
			bm_err(C, "cannot truncate segment '%s': %s", path, strerror(errno));
			rc = BM_EIO;
			goto out;
		}
		if (!zeros)
			q->st.truncated_bytes = sg->end - end;
		sg->end = end;
	}
	rc = replay(q, start, end);
	if (rc)
		goto out;
	/* The active segment's sparse entries, for its index file at seal. */
	q->aidx.n = 0;
	for (uint64_t i = 0; i < q->nstreams; i++) {
		struct stream *s = q->by_id[i];
		uint32_t k = s->idx_len;
		while (k > 0 && s->idx[k - 1] >= q->segs[q->nsegs - 1].base)
			k--;
		for (; k < s->idx_len; k++) {
			rc = entv_push(&q->aidx, s->id, (s->idx_first + k) * IDX_EVERY, s->idx[k]);
			if (rc)
				goto out;
		}
	}
	if (q->aidx.n)
		qsort(q->aidx.v, q->aidx.n, sizeof(*q->aidx.v), cmp_ent_pos);
	heal_seg_idx(q, idx_base);
	q->appended_pos = q->durable_pos = q->taken_pos = q->written_pos = end;
	q->wbuf_pos = end;
	q->cur_fd = q->segs[q->nsegs - 1].fd;
	q->cur_base = q->segs[q->nsegs - 1].base;
	q->zero_end = end;
	if (!ncs)
		q->ckpt_pos = q->segs[0].base;
out:
	free(cs);
	free(bases);
	free(pt);
	free(img);
	return rc;
}

/* --- open / close -------------------------------------------------------- */

void bm_queue_opts_default(struct bm_queue_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->sync = BM_QUEUE_SYNC_GROUP;
	o->group_window_us = 1000;
	o->group_bytes = 1u << 20;
	o->segment_bytes = 128u << 20;
	o->prealloc_bytes = 1u << 20;
	o->segment_ms = 3600u * 1000u;
	o->checkpoint_bytes = 64u << 20;
	o->max_record = 1u << 20;
	o->create = 1;
}

int bm_queue_sync_parse(const char *s, enum bm_queue_sync *out)
{
	static const char *names[] = { "always", "group", "none" };

	for (int i = 0; i < 3; i++) {
		if (!strcmp(s, names[i])) {
			*out = (enum bm_queue_sync)i;
			return 0;
		}
	}
	return BM_EINVAL;
}

const char *bm_queue_sync_name(enum bm_queue_sync s)
{
	switch (s) {
	case BM_QUEUE_SYNC_ALWAYS: return "always";
	case BM_QUEUE_SYNC_GROUP: return "group";
	case BM_QUEUE_SYNC_NONE: return "none";
	}
	return "?";
}

static void queue_free(struct bm_queue *q)
{
	for (size_t i = 0; i < q->nsegs; i++)
		close(q->segs[i].fd);
	table_clear(q);
	free(q->by_id);
	free(q->ht);
	free(q->segs);
	free(q->ring);
	free(q->aidx.v);
	bm_buf_release(&q->wbuf);
	bm_buf_release(&q->sbuf);
	bm_buf_release(&q->peek);
	free(q->walk);
	if (q->evfd != -1)
		close(q->evfd);
	if (q->lockfd != -1)
		close(q->lockfd);
	if (q->dirfd != -1)
		close(q->dirfd);
	pthread_mutex_destroy(&q->mu);
	pthread_mutex_destroy(&q->io_mu);
	pthread_cond_destroy(&q->cv);
	free(q->dir);
	free(q);
}

int bm_queue_open(struct bm_queue **out, const char *dir,
		  const struct bm_queue_opts *opts)
{
	struct bm_queue *q;
	pthread_condattr_t ca;
	char path[4096];
	uint64_t t0 = mono_ns();
	int rc;

	*out = NULL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return BM_ENOMEM;
	q->dirfd = q->lockfd = q->evfd = -1;
	pthread_mutex_init(&q->mu, NULL);
	pthread_mutex_init(&q->io_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (opts)
		q->o = *opts;
	else
		bm_queue_opts_default(&q->o);
	if (q->o.sync > BM_QUEUE_SYNC_NONE || q->o.max_record > BM_QUEUE_RECORD_MAX ||
	    q->o.segment_bytes < 4096 || q->o.group_bytes == 0 ||
	    q->o.checkpoint_bytes == 0 || strlen(dir) > 4000) {
		rc = BM_EINVAL;
		goto fail;
	}
	q->dir = strdup(dir);
	if (!q->dir) {
		rc = BM_ENOMEM;
		goto fail;
	}
	if (q->o.create) {
		if (mkdir(dir, 0755) == 0) {
			/* Make the new directory entry itself durable. */
			char *parent = strdup(dir), *slash;
			int pfd;
			if (!parent) {
				rc = BM_ENOMEM;
				goto fail;
			}
			slash = strrchr(parent, '/');
			if (slash == parent)
				slash[1] = 0;
			else if (slash)
				*slash = 0;
			pfd = open(slash ? parent : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (pfd != -1) {
				fsync(pfd);
				close(pfd);
			}
			free(parent);
		} else if (errno != EEXIST) {
			bm_err(C, "cannot create queue directory '%s': %s", dir,
			       strerror(errno));
			rc = BM_EIO;
			goto fail;
		}
	}
	q->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (q->dirfd == -1) {
		bm_err(C, "cannot open queue directory '%s': %s", dir, strerror(errno));
		rc = errno == ENOENT ? BM_ENOENT : BM_EIO;
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/LOCK", dir);
	q->lockfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (q->lockfd == -1) {
		bm_err(C, "cannot open '%s': %s", path, strerror(errno));
		rc = BM_EIO;
		goto fail;
	}
	if (flock(q->lockfd, LOCK_EX | LOCK_NB) == -1) {
		bm_err(C, "queue '%s' is in use by another process", dir);
		rc = BM_ESTATE;
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/checkpoint.tmp", dir);
	unlink(path);
	q->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (q->evfd == -1) {
		rc = BM_ESYS;
		goto fail;
	}
	rc = recover(q);
	if (rc)
		goto fail;
	if (q->o.sync != BM_QUEUE_SYNC_ALWAYS) {
		if (pthread_create(&q->thr, NULL, sync_main, q)) {
			rc = BM_ESYS;
			goto fail;
		}
		q->thr_started = 1;
		/* Named, so that `top -H` and perf tell it from the loop. */
		pthread_setname_np(q->thr, "bimip-qsync");
	}
	q->st.open_us = (mono_ns() - t0) / 1000;
	bm_info(C, "opened '%s': %" PRIu64 " streams, %zu segments, %" PRIu64
		" bytes, %" PRIu64 " bytes replayed, %" PRIu64 " us", dir, q->nstreams,
		q->nsegs, q->appended_pos - q->segs[0].base, q->st.recovered_bytes,
		q->st.open_us);
	*out = q;
	return 0;
fail:
	queue_free(q);
	return rc;
}

int bm_queue_close(struct bm_queue *q)
{
	int rc;

	if (!q)
		return 0;
	pthread_mutex_lock(&q->mu);
	q->stop = 1;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
	if (q->thr_started)
		pthread_join(q->thr, NULL);
	/* Completions may append (a server acknowledging by writing state):
	 * sync and run them until none are left, a bounded number of times. */
	for (int i = 0; i < 8; i++) {
		int empty;
		pthread_mutex_lock(&q->mu);
		rc = sync_locked(q);
		pthread_mutex_unlock(&q->mu);
		run_completions(q);
		pthread_mutex_lock(&q->mu);
		empty = q->ring_head == q->ring_tail && q->wbuf.len == 0;
		pthread_mutex_unlock(&q->mu);
		if (empty || rc)
			break;
	}
	pthread_mutex_lock(&q->mu);
	if (!rc)
		rc = sync_locked(q);
	if (!rc)
		rc = cut_zeros(q);
	if (!rc && q->appended_pos != q->ckpt_pos)
		rc = checkpoint_locked(q);
	if (q->ring_head != q->ring_tail)
		bm_warn(C, "closing '%s' with %zu completions that never ran", q->dir,
			q->ring_tail - q->ring_head);
	pthread_mutex_unlock(&q->mu);
	queue_free(q);
	return rc;
}

void bm_queue_stats(struct bm_queue *q, struct bm_queue_stats *st)
{
	pthread_mutex_lock(&q->mu);
	*st = q->st;
	st->streams = q->nstreams;
	st->segments = q->nsegs;
	st->log_bytes = q->appended_pos - q->segs[0].base;
	st->appended_pos = q->appended_pos;
	st->durable_pos = q->durable_pos;
	pthread_mutex_unlock(&q->mu);
}
