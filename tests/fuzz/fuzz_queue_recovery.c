/*
 * fuzz_queue_recovery.c - BimipQueue recovery over arbitrary directory
 * contents.  The input describes a queue directory:
 *
 *   byte 0        flags: bit 0 = a checkpoint file follows,
 *                        bit 1 = the log is cut into two segments,
 *                        bit 2 = an index file for segment 0 follows
 *   [u16 LE n]    (bit 0) length of the checkpoint, then n bytes of it
 *   [u16 LE m]    (bit 2) length of the segment index, then m bytes of it
 *   [u16 LE k]    (bit 1) the first segment's size; the second segment's
 *                 base is k
 *   rest          the log bytes (segment 0, and segment k with bit 1)
 *
 * The target opens the queue, reads every stream from its first offset,
 * its device offsets and its first record's position, the whole log in
 * order (below a fuzzed checkpoint, bytes open never read), appends a
 * record and closes it again; the only
 * acceptable outcomes are success or a clean error code.  Files live in a
 * fresh directory under $TMPDIR (/dev/shm when present, for speed).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "tests/support/queue_testutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int put_file(const char *dir, const char *name, const uint8_t *p, size_t n)
{
	char path[4096];
	int fd;
	int rc = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd == -1)
		return -1;
	if (n && write(fd, p, n) != (ssize_t)n)
		rc = -1;
	close(fd);
	return rc;
}

static int on_rec(void *ud, const struct bm_queue_meta *m, const void *d, int status)
{
	volatile uint8_t sink = 0;

	if (d && m->len)
		sink = ((const uint8_t *)d)[m->len - 1];
	(void)sink;
	return 0;
}

static int on_log_rec(void *ud, const char *stream, const struct bm_queue_meta *m,
		      const void *d, int status)
{
	volatile uint8_t sink = (uint8_t)stream[0];

	if (d && m->len)
		sink = ((const uint8_t *)d)[m->len - 1];
	(void)sink;
	return 0;
}

static int on_stream(void *ud, const char *name, uint64_t head, uint64_t first)
{
	struct bm_queue *q = ud;
	uint64_t after = first ? first - 1 : 0, off;

	/* Bounded: at most 16 scans of 256 records per stream. */
	for (int i = 0; i < 16 && after < head; i++) {
		int rc = bm_queue_scan(q, name, after, 256, on_rec, NULL);
		if (rc <= 0)
			break;
		after += (uint64_t)rc;
	}
	bm_queue_committed_offset(q, name, "d", &off);
	bm_queue_locate(q, name, 0, &off);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	struct bm_queue_opts o;
	struct bm_queue *q;
	const char *shm = "/dev/shm";
	char *dir, name[64];
	size_t at = 1, ck = 0, split = 0, ix = 0;
	uint8_t flags;
	struct stat st;

	if (!init) {
		bm_log_set_level(getenv("BIMIP_FUZZ_VERBOSE") ? BM_LOG_DEBUG :
				 (enum bm_log_level)-1);
		if (!getenv("TMPDIR") && stat(shm, &st) == 0 && S_ISDIR(st.st_mode))
			setenv("TMPDIR", shm, 1);
		init = 1;
	}
	if (size < 1)
		return 0;
	flags = data[0];
	dir = qt_tempdir("fuzzq");
	if (!dir)
		return 0;
	if ((flags & 1) && size - at >= 2) {
		ck = (size_t)data[at] | (size_t)data[at + 1] << 8;
		at += 2;
		if (ck > size - at)
			ck = size - at;
		put_file(dir, "checkpoint", data + at, ck);
		at += ck;
	}
	if ((flags & 4) && size - at >= 2) {
		ix = (size_t)data[at] | (size_t)data[at + 1] << 8;
		at += 2;
		if (ix > size - at)
			ix = size - at;
		put_file(dir, "00000000000000000000.idx", data + at, ix);
		at += ix;
	}
	if ((flags & 2) && size - at >= 2) {
		split = (size_t)data[at] | (size_t)data[at + 1] << 8;
		at += 2;
		if (split > size - at)
			split = size - at;
	}
	if (split) {
		put_file(dir, "00000000000000000000.seg", data + at, split);
		snprintf(name, sizeof(name), "%020zu.seg", split);
		put_file(dir, name, data + at + split, size - at - split);
	} else {
		put_file(dir, "00000000000000000000.seg", data + at, size - at);
	}
	bm_queue_opts_default(&o);
	o.sync = BM_QUEUE_SYNC_NONE;
	o.create = 0;
	if (bm_queue_open(&q, dir, &o) == 0) {
		uint64_t pos = 0;

		bm_queue_streams(q, on_stream, q);
		/* Bounded: at most 64 calls of 256 records. */
		for (int i = 0; i < 64 && bm_queue_scan_log(q, &pos, 256, on_log_rec, NULL) > 0; i++)
			;
		bm_queue_append(q, "fuzz", "x", 1, NULL, NULL, NULL);
		bm_queue_close(q);
		/* What recovery left behind must reopen. */
		if (bm_queue_open(&q, dir, &o) == 0)
			bm_queue_close(q);
		else
			abort();
	}
	qt_rmtree(dir);
	free(dir);
	return 0;
}
