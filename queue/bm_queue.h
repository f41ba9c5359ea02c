/*
 * bm_queue.h - BimipQueue, the durable segmented log of bimip-server.
 *
 * One queue is a directory holding one global append-only log cut into
 * segment files (every stream interleaved, so appends are sequential and one
 * fdatasync makes a whole batch durable) plus a checkpoint of the in-memory
 * stream table.  The on-disk format is specified at the top of bm_queue.c and
 * in docs/queue-format.md.
 *
 * Streams are named by a string (an EID, 1..255 bytes) and created on their
 * first append.  Offsets start at 1 and are gapless and strictly increasing
 * per stream; offset 0 means "nothing" (an empty stream has head 0).
 *
 * Durability.  bm_queue_append() copies the record into the log and returns
 * the assigned offset at once.  Its completion callback runs later, in the
 * thread that calls bm_queue_poll() (or bm_queue_sync()/bm_queue_close()),
 * once the record is durable under the configured policy:
 *   ALWAYS  the append writes and fdatasyncs inline; the completion runs at
 *           the next poll;
 *   GROUP   a background thread writes and fdatasyncs batches (closed by a
 *           time window or a byte count) and wakes the caller's event loop
 *           through bm_queue_event_fd();
 *   NONE    nothing is fsynced; completions run at the next poll, after the
 *           bytes were handed to the kernel (they survive kill -9, not power
 *           loss).
 * Completions run in append order, and a completion means every record
 * appended before it is durable too: a caller that appends several records
 * for one client request may acknowledge once the last one completes.
 * If writing or syncing ever fails, the queue is failed for good (an fsync
 * error is never retried): pending and later completions get BM_EIO and
 * appends return BM_EIO.
 *
 * Threads.  All functions must be called from one thread at a time (the
 * server's event loop thread).  The queue itself runs one internal thread
 * (GROUP and NONE) that never calls user code.
 *
 * Memory.  Per stream: ~100 bytes plus its name, its device offsets, and one
 * 8-byte sparse-index entry per 64 records still in the log.  The write
 * buffer is bounded by opts.group_bytes (at most twice).  Every segment file
 * stays open (segment_bytes bounds their number: 10 GB / 128 MiB = 80 fds).
 */
#ifndef BM_QUEUE_H
#define BM_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "bm_buf.h"

struct bm_queue;

enum bm_queue_sync {
	BM_QUEUE_SYNC_ALWAYS = 0,
	BM_QUEUE_SYNC_GROUP,
	BM_QUEUE_SYNC_NONE,
};

#define BM_QUEUE_NAME_MAX 255u          /* stream and device names */
#define BM_QUEUE_RECORD_MAX (64u << 20) /* hard payload limit, format-wide */

struct bm_queue_opts {
	enum bm_queue_sync sync;
	uint32_t group_window_us;   /* GROUP/NONE: longest wait before a sync (1000) */
	uint32_t group_bytes;       /* GROUP/NONE: sync early past this many bytes (1 MiB) */
	uint64_t segment_bytes;     /* rotate past this size (128 MiB) */
	uint64_t prealloc_bytes;    /* GROUP: keep the active segment extended with
				     * zeros this far past its end; 0 = off (1 MiB) */
	uint64_t segment_ms;        /* rotate a segment older than this; 0 = never (1 h) */
	uint64_t retention_ms;      /* delete segments whose newest record is older; 0 = keep */
	uint64_t retention_bytes;   /* delete oldest segments past this total; 0 = no limit */
	uint64_t checkpoint_bytes;  /* checkpoint after this much new log (64 MiB) */
	uint32_t max_record;        /* payload limit, <= BM_QUEUE_RECORD_MAX (1 MiB) */
	int create;                 /* create the directory if missing (1) */
};

/* Fills *o with the defaults shown above. */
void bm_queue_opts_default(struct bm_queue_opts *o);
/* Parses "always", "group", "none"; returns 0 or BM_EINVAL. */
int bm_queue_sync_parse(const char *s, enum bm_queue_sync *out);
const char *bm_queue_sync_name(enum bm_queue_sync s);

/* Completion of an append or offset commit: status is 0 once durable, or
 * BM_EIO if the queue failed.  offset is the one the append returned. */
typedef void bm_queue_done_fn(void *ud, int status, uint64_t offset);

/*
 * Opens (and with opts->create, creates) the queue in directory dir and
 * recovers it: reads the checkpoint, scans only the log written after it,
 * and truncates a torn tail to the last complete record.  opts may be NULL
 * for the defaults.  Takes an exclusive lock on dir/LOCK.
 * Returns 0 and *out, or BM_EINVAL (bad options), BM_ESTATE (locked by
 * another process), BM_ECORRUPT (damage that truncating a torn tail cannot
 * explain: bad checkpoint, missing or damaged sealed segment; the log line
 * names the file and position), BM_EIO/BM_ESYS, BM_ENOMEM.
 */
int bm_queue_open(struct bm_queue **out, const char *dir,
		  const struct bm_queue_opts *opts);

/* Flushes, fsyncs, runs the remaining completions (which may still append;
 * those are synced too), writes a checkpoint, frees q.  Returns the first
 * error met (q is freed regardless).  NULL ok. */
int bm_queue_close(struct bm_queue *q);

/*
 * Appends len bytes (copied) to stream (created on first use).  Returns 0 and
 * the assigned offset in *offset (may be NULL); cb (may be NULL) runs once
 * durable, from bm_queue_poll().  Errors: BM_EINVAL (name empty or longer
 * than BM_QUEUE_NAME_MAX), BM_ETOOBIG (len > opts.max_record), BM_EIO
 * (queue failed), BM_ENOMEM.  Nothing is appended on error.
 */
int bm_queue_append(struct bm_queue *q, const char *stream, const void *data,
		    size_t len, uint64_t *offset, bm_queue_done_fn *cb, void *ud);

/* Group commit (sync group/none): while corked, appends do not wake the
 * sync thread; bm_queue_uncork() does, once.  Cork around a burst of
 * appends that should reach the disk in one sync -- the two copies of a
 * chat message, a loop turn's messages -- so that the sync thread does not
 * take the first of them alone and make the rest wait for the next sync.
 * Nests; a sync the group window or group_bytes calls for still happens. */
void bm_queue_cork(struct bm_queue *q);
void bm_queue_uncork(struct bm_queue *q);

/* cb (from bm_queue_poll, with offset 0) once everything appended so far
 * is durable -- and after the completions of those appends.  Returns 0,
 * BM_EIO (queue failed) or BM_ENOMEM; cb does not run on error. */
int bm_queue_after(struct bm_queue *q, bm_queue_done_fn *cb, void *ud);

/* A descriptor that becomes readable when completions are due; never
 * closed by the caller.  Watch it with EV_READ|EV_PERSIST and call
 * bm_queue_poll() when it fires. */
int bm_queue_event_fd(struct bm_queue *q);

/* Runs the completions that are due, in append order, in this thread; also
 * applies periodic checkpoints and retention.  Safe to call any time. */
void bm_queue_poll(struct bm_queue *q);

/* Blocking: writes and fdatasyncs everything appended so far, then runs the
 * due completions.  Returns 0 or BM_EIO. */
int bm_queue_sync(struct bm_queue *q);

struct bm_queue_meta {
	uint64_t offset;
	int64_t ts_ms;      /* wall clock at append */
	uint32_t len;       /* payload length */
};

/*
 * Reads the record at offset of stream into out (reset first, then filled
 * with the payload) and *meta (may be NULL).  Returns 0, BM_ENOENT (unknown
 * stream, or offset below the first available one: deleted by retention),
 * BM_ERANGE (offset 0 or beyond the head), BM_EDESTROYED (erased by
 * bm_queue_destroy; meta is still filled), BM_ECORRUPT (checksum mismatch),
 * BM_EIO, BM_ETOOBIG (out's max_cap).
 */
int bm_queue_read(struct bm_queue *q, const char *stream, uint64_t offset,
		  struct bm_buf *out, struct bm_queue_meta *meta);

/* Called for each record of a scan; data is valid during the call only and
 * is NULL with status BM_EDESTROYED for an erased record.  Return nonzero to
 * stop the scan.  The queue is locked during the call: fn must not call any
 * bm_queue_* function (copy what it needs and act after the scan). */
typedef int bm_queue_scan_fn(void *ud, const struct bm_queue_meta *meta,
			     const void *data, int status);

/*
 * Visits the records of stream with offsets after after_offset, in order, at
 * most max_records of them (<= 65536).  Records deleted by retention are
 * skipped (the scan starts at the first available offset).  Returns the
 * number of records visited (0 when none), or BM_ENOENT (unknown stream),
 * BM_EINVAL, BM_ECORRUPT, BM_EIO.  Touches only this stream's records.
 */
int bm_queue_scan(struct bm_queue *q, const char *stream, uint64_t after_offset,
		  unsigned max_records, bm_queue_scan_fn *fn, void *ud);

/*
 * Position in the log of the first available record of stream with an
 * offset after `after` (after 0: its first record).  Returns 0, BM_ENOENT
 * (unknown stream), BM_ERANGE (no record after it), BM_EINVAL, BM_ECORRUPT,
 * BM_EIO.  Reads at most 15 headers (the sparse index).
 */
int bm_queue_locate(struct bm_queue *q, const char *stream, uint64_t after,
		    uint64_t *pos);

/* Called for each record of a log scan: as bm_queue_scan_fn, with the name
 * of the record's stream (valid during the call). */
typedef int bm_queue_log_fn(void *ud, const char *stream,
			    const struct bm_queue_meta *meta, const void *data,
			    int status);

/*
 * Visits the durable stream records of every stream in log order, from
 * position *pos (a position bm_queue_locate or an earlier call gave, or 0
 * for the start of the log), at most max_records (<= 65536) of them and
 * 64 MiB of log per call, reading the segments sequentially in 1 MiB
 * blocks: the way to read a large part of the log, where bm_queue_scan
 * reads one stream.  *pos is set to where the next call goes on.  Returns
 * the number visited (0 at the end of the durable log), BM_EINVAL,
 * BM_ECORRUPT (a record fails its checks: nothing after it is visited),
 * BM_EIO, BM_ENOMEM.  The lock rule of bm_queue_scan applies to fn.
 */
int bm_queue_scan_log(struct bm_queue *q, uint64_t *pos, unsigned max_records,
		      bm_queue_log_fn *fn, void *ud);

/* Head (last assigned offset, 0 if none) and first available offset (head+1
 * when retention deleted everything).  Either pointer may be NULL.
 * Returns 0 or BM_ENOENT for an unknown stream. */
int bm_queue_stream_head(struct bm_queue *q, const char *stream,
			 uint64_t *head, uint64_t *first);

/* Calls fn for every stream (order unspecified); fn returns nonzero to
 * stop.  name is valid during the call only.  Returns the number visited. */
typedef int bm_queue_stream_fn(void *ud, const char *name, uint64_t head,
			       uint64_t first);
int bm_queue_streams(struct bm_queue *q, bm_queue_stream_fn *fn, void *ud);

/*
 * Persists that device has processed stream up to offset (a record in the
 * log, kept in the checkpoint).  cb as for appends.  Returns 0, BM_ENOENT
 * (unknown stream), BM_ERANGE (offset > head), BM_EINVAL (device name), BM_EIO.
 * A device may move its offset backwards (re-sync); the last commit wins.
 */
int bm_queue_commit_offset(struct bm_queue *q, const char *stream,
			   const char *device, uint64_t offset,
			   bm_queue_done_fn *cb, void *ud);
/* Returns 0 and *offset, or BM_ENOENT (unknown stream or no commit yet). */
int bm_queue_committed_offset(struct bm_queue *q, const char *stream,
			      const char *device, uint64_t *offset);

/* Calls fn(ud, device, offset) for every device with a committed offset on
 * stream, under the queue's lock (fn must not call the queue); fn returns
 * nonzero to stop.  Returns the number visited or BM_ENOENT/BM_EINVAL. */
typedef int bm_queue_device_fn(void *ud, const char *device, uint64_t offset);
int bm_queue_devices(struct bm_queue *q, const char *stream, bm_queue_device_fn *fn,
		     void *ud);

/*
 * Secure erase (seed 004 DESTROY): overwrites the payload of the record in
 * place with zeros and marks it destroyed; reads then return BM_EDESTROYED.
 * Blocking (two fdatasyncs).  Crash-safe: a tombstone record is made durable
 * first and recovery re-applies it.  Idempotent.  Returns 0 or as for
 * bm_queue_read().
 */
int bm_queue_destroy(struct bm_queue *q, const char *stream, uint64_t offset);

/* Blocking: sync and write the checkpoint now.  Returns 0 or an error. */
int bm_queue_checkpoint(struct bm_queue *q);
/* Applies retention now (deletes whole old segments); returns the number
 * of segments deleted or an error.  bm_queue_poll() also does this. */
int bm_queue_retain(struct bm_queue *q);
/* Closes the active segment and starts a new one (tests, tools). */
int bm_queue_rotate(struct bm_queue *q);

struct bm_queue_stats {
	uint64_t streams;
	uint64_t segments;
	uint64_t log_bytes;         /* bytes in the segments still present */
	uint64_t appended_pos;      /* global log position of the end */
	uint64_t durable_pos;       /* ... of the durable end */
	uint64_t syncs;             /* fdatasync calls for data */
	uint64_t recovered_bytes;   /* scanned after the checkpoint at open */
	uint64_t truncated_bytes;   /* cut from a torn tail at open */
	uint64_t open_us;           /* time bm_queue_open took */
};
void bm_queue_stats(struct bm_queue *q, struct bm_queue_stats *st);

/* Durations of the data fdatasyncs since the last call, in microseconds,
 * into us[0..max) (at most BM_QUEUE_SYNC_SAMPLES are kept between calls;
 * the rest are counted in stats.syncs only).  Returns how many. */
#define BM_QUEUE_SYNC_SAMPLES 4096
size_t bm_queue_sync_samples(struct bm_queue *q, uint32_t *us, size_t max);

#endif
