/*
 * bench_queue.c - `bimip-bench queue`: BimipQueue throughput, reads and
 * reopen time, each append line next to a raw baseline measured in the same
 * run on the same disk:
 *
 *   raw always  write(record) + fdatasync per record
 *   raw group   records copied into a buffer; when the batch is --window-us
 *               old or --group-bytes big: one write() + fdatasync (the
 *               queue's batching, without its second thread)
 *   raw none    records copied into a buffer, one write() per 1 MiB, no
 *               fdatasync
 *
 * A raw "record" has the queue's 56-byte header plus the payload, so both
 * sides put the same bytes on disk.  ratio_to_raw = queue appends/s divided
 * by raw appends/s.  An append counts when its completion ran (durable under
 * the policy), and the clock stops when the last one did.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"

struct cfg {
	const char *dir;
	double seconds;
	unsigned streams;
	unsigned reads;
	unsigned reopen_mb;
	unsigned reopen_record;
	uint32_t window_us;
	uint32_t group_bytes;
	int only_reopen;
	int no_reopen;
};

static uint64_t completed;
static char (*names)[64];   /* precomputed: a server has the EID already */

static void on_done(void *ud, int status, uint64_t offset)
{
	if (status) {
		fprintf(stderr, "append failed: %s\n", bm_strerror(status));
		exit(1);
	}
	completed++;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	return remove(path);
}

static void rmtree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void qopts(const struct cfg *c, struct bm_queue_opts *o, enum bm_queue_sync pol)
{
	bm_queue_opts_default(o);
	o->sync = pol;
	o->group_window_us = c->window_us;
	o->group_bytes = c->group_bytes;
	o->segment_bytes = 128u << 20;
}

static void stream_name(char *out, size_t cap, unsigned i)
{
	snprintf(out, cap, "user-%08u@example.org", i);
}

/* Queue appends for c->seconds; returns appends per second. */
static double run_queue(const struct cfg *c, enum bm_queue_sync pol, size_t size)
{
	char dir[4096];
	struct bm_queue_opts o;
	struct bm_queue *q;
	uint8_t *buf = calloc(1, size);
	uint64_t t0, t_end, n = 0;
	unsigned si = 0;
	int rc;

	snprintf(dir, sizeof(dir), "%s/q-%s-%zu", c->dir, bm_queue_sync_name(pol), size);
	qopts(c, &o, pol);
	rc = bm_queue_open(&q, dir, &o);
	if (rc) {
		fprintf(stderr, "cannot open queue '%s': %s\n", dir, bm_strerror(rc));
		exit(1);
	}
	completed = 0;
	t0 = bm_mono_ns();
	t_end = t0 + (uint64_t)(c->seconds * 1e9);
	while (bm_mono_ns() < t_end) {
		for (int k = 0; k < 64; k++) {
			memcpy(buf, &n, size < 8 ? size : 8);
			rc = bm_queue_append(q, names[si], buf, size, NULL, on_done, NULL);
			if (++si == c->streams)
				si = 0;
			if (rc) {
				fprintf(stderr, "append: %s\n", bm_strerror(rc));
				exit(1);
			}
			n++;
			if (pol == BM_QUEUE_SYNC_ALWAYS)
				break;
		}
		bm_queue_poll(q);
		/* Keep the number in flight bounded (memory), as a server would. */
		while (n - completed > 200000) {
			struct pollfd p = { .fd = bm_queue_event_fd(q), .events = POLLIN };
			poll(&p, 1, 100);
			bm_queue_poll(q);
		}
	}
	/* Wait (bounded) for the last completions through the event fd. */
	for (int i = 0; i < 10000 && completed < n; i++) {
		struct pollfd p = { .fd = bm_queue_event_fd(q), .events = POLLIN };
		poll(&p, 1, 10);
		bm_queue_poll(q);
	}
	t_end = bm_mono_ns();
	if (completed < n)
		fprintf(stderr, "warning: %" PRIu64 " appends still pending\n", n - completed);
	bm_queue_close(q);
	rmtree(dir);
	free(buf);
	return (double)completed / ((double)(t_end - t0) / 1e9);
}

/* Raw baseline with the same batching; returns records per second. */
static double run_raw(const struct cfg *c, enum bm_queue_sync pol, size_t size)
{
	char path[4096];
	size_t rec = 56 + size, cap = c->group_bytes + rec;
	uint8_t *buf = calloc(1, cap), *payload = calloc(1, size);
	uint64_t t0, t_end, n = 0, batch_start = 0, batch_bytes = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/raw-%s-%zu", c->dir, bm_queue_sync_name(pol), size);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (fd == -1) {
		fprintf(stderr, "cannot create '%s': %s\n", path, strerror(errno));
		exit(1);
	}
	t0 = bm_mono_ns();
	t_end = t0 + (uint64_t)(c->seconds * 1e9);
	while (bm_mono_ns() < t_end) {
		uint64_t now = bm_mono_ns();
		int flush;

		if (!batch_bytes)
			batch_start = now;
		memset(buf + batch_bytes, 0, 56);
		memcpy(buf + batch_bytes, &n, 8);
		memcpy(payload, &n, size < 8 ? size : 8);
		memcpy(buf + batch_bytes + 56, payload, size);
		batch_bytes += rec;
		n++;
		switch (pol) {
		case BM_QUEUE_SYNC_ALWAYS:
			flush = 1;
			break;
		case BM_QUEUE_SYNC_GROUP:
			flush = now - batch_start >= (uint64_t)c->window_us * 1000u ||
				batch_bytes >= c->group_bytes;
			break;
		default:
			flush = batch_bytes >= c->group_bytes;
			break;
		}
		if (flush) {
			if (write(fd, buf, batch_bytes) != (ssize_t)batch_bytes) {
				fprintf(stderr, "write '%s': %s\n", path, strerror(errno));
				exit(1);
			}
			if (pol != BM_QUEUE_SYNC_NONE && fdatasync(fd) == -1)
				exit(1);
			batch_bytes = 0;
		}
	}
	if (batch_bytes && write(fd, buf, batch_bytes) != (ssize_t)batch_bytes)
		exit(1);
	if (pol != BM_QUEUE_SYNC_NONE && fdatasync(fd) == -1)
		exit(1);
	t_end = bm_mono_ns();
	close(fd);
	unlink(path);
	free(buf);
	free(payload);
	return (double)n / ((double)(t_end - t0) / 1e9);
}

int bench_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

uint64_t bench_quantile(const uint64_t *sorted, size_t n, double p)
{
	size_t i = (size_t)(p * (double)n);

	return sorted[i < n ? i : n - 1];
}

static void run_reads(const struct cfg *c)
{
	char dir[4096], name[64];
	struct bm_queue_opts o;
	struct bm_queue *q;
	struct bm_buf b = BM_BUF_INIT;
	uint8_t buf[256] = { 0 };
	uint64_t *lat = malloc(c->reads * sizeof(*lat)), t0, per = 200;
	int rc;

	snprintf(dir, sizeof(dir), "%s/q-reads", c->dir);
	qopts(c, &o, BM_QUEUE_SYNC_NONE);
	if (bm_queue_open(&q, dir, &o))
		exit(1);
	for (uint64_t i = 0; i < per * c->streams; i++) {
		stream_name(name, sizeof(name), (unsigned)(i % c->streams));
		if (bm_queue_append(q, name, buf, sizeof(buf), NULL, NULL, NULL))
			exit(1);
	}
	bm_queue_close(q);
	if (bm_queue_open(&q, dir, &o))
		exit(1);
	srand(1);
	t0 = bm_mono_ns();
	for (unsigned i = 0; i < c->reads; i++) {
		uint64_t t = bm_mono_ns(), off = 1 + (uint64_t)rand() % per;
		stream_name(name, sizeof(name), (unsigned)rand() % c->streams);
		rc = bm_queue_read(q, name, off, &b, NULL);
		if (rc) {
			fprintf(stderr, "read %s/%" PRIu64 ": %s\n", name, off, bm_strerror(rc));
			exit(1);
		}
		lat[i] = bm_mono_ns() - t;
	}
	t0 = bm_mono_ns() - t0;
	qsort(lat, c->reads, sizeof(*lat), bench_cmp_u64);
	printf("queue.read size=256 streams=%u records=%" PRIu64 " reads_per_s=%.0f "
	       "p50_us=%.1f p99_us=%.1f max_us=%.1f cache=warm\n", c->streams,
	       per * c->streams, c->reads / (t0 / 1e9),
	       bench_quantile(lat, c->reads, 0.50) / 1e3,
	       bench_quantile(lat, c->reads, 0.99) / 1e3, lat[c->reads - 1] / 1e3);
	bm_queue_close(q);
	bm_buf_release(&b);
	free(lat);
	rmtree(dir);
}

/* Builds a log of reopen_mb MB, then times a clean reopen and a reopen
 * after a crash (a writer that appended 60 MB more and exited without
 * closing, so the tail after the last checkpoint is replayed). */
static void run_reopen(const struct cfg *c)
{
	char dir[4096], name[64];
	struct bm_queue_opts o;
	struct bm_queue *q;
	struct bm_queue_stats st;
	size_t rs = c->reopen_record;
	uint8_t *buf = calloc(1, rs);
	uint64_t total = (uint64_t)c->reopen_mb << 20, t0, i;
	unsigned streams = 100000;
	pid_t pid;
	int status;

	snprintf(dir, sizeof(dir), "%s/q-reopen", c->dir);
	qopts(c, &o, BM_QUEUE_SYNC_NONE);
	if (bm_queue_open(&q, dir, &o))
		exit(1);
	t0 = bm_mono_ns();
	for (i = 0; i * (rs + 56) < total; i++) {
		stream_name(name, sizeof(name), (unsigned)(i % streams));
		if (bm_queue_append(q, name, buf, rs, NULL, NULL, NULL))
			exit(1);
		if (i % 1024 == 0)
			bm_queue_poll(q);   /* periodic checkpoints, as a server does */
	}
	bm_queue_close(q);
	printf("# built a %u MB log (%" PRIu64 " records of %zu B, %u streams) in %.1f s\n",
	       c->reopen_mb, i, rs, streams, (bm_mono_ns() - t0) / 1e9);
	if (bm_queue_open(&q, dir, &o))
		exit(1);
	bm_queue_stats(q, &st);
	printf("queue.reopen kind=clean log_mb=%" PRIu64 " streams=%" PRIu64
	       " open_ms=%.1f replayed_mb=%.1f\n", st.log_bytes >> 20, st.streams,
	       st.open_us / 1e3, st.recovered_bytes / 1048576.0);
	/* What a periodic checkpoint costs the loop that calls bm_queue_poll. */
	if (bm_queue_append(q, "checkpoint-probe", buf, 1, NULL, NULL, NULL))
		exit(1);
	t0 = bm_mono_ns();
	if (bm_queue_checkpoint(q))
		exit(1);
	printf("queue.checkpoint streams=%" PRIu64 " log_mb=%" PRIu64 " ms=%.1f\n",
	       st.streams + 1, st.log_bytes >> 20, (bm_mono_ns() - t0) / 1e6);
	bm_queue_close(q);

	pid = fork();
	if (pid == 0) {
		if (bm_queue_open(&q, dir, &o))
			_exit(1);
		for (i = 0; i * (rs + 56) < (60u << 20); i++) {
			stream_name(name, sizeof(name), (unsigned)(i % streams));
			if (bm_queue_append(q, name, buf, rs, NULL, NULL, NULL))
				_exit(1);
			if (i % 1024 == 0)
				bm_queue_poll(q);
		}
		bm_queue_sync(q);
		_exit(0);   /* no close: no final checkpoint */
	}
	if (pid == -1 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status)) {
		fprintf(stderr, "crash writer failed\n");
		exit(1);
	}
	if (bm_queue_open(&q, dir, &o))
		exit(1);
	bm_queue_stats(q, &st);
	printf("queue.reopen kind=after_crash log_mb=%" PRIu64 " streams=%" PRIu64
	       " open_ms=%.1f replayed_mb=%.1f\n", st.log_bytes >> 20, st.streams,
	       st.open_us / 1e3, st.recovered_bytes / 1048576.0);
	bm_queue_close(q);
	rmtree(dir);
	free(buf);
}

static void usage(void)
{
	printf("usage: bimip-bench queue [options]\n"
	       "  --dir DIR          where to write (default $TMPDIR or /var/tmp; a\n"
	       "                     fresh subdirectory is made and removed)\n"
	       "  --seconds S        duration of each append line (default 1)\n"
	       "  --streams N        streams appended to round-robin (default 1000)\n"
	       "  --window-us N      group commit window (default 1000)\n"
	       "  --group-bytes N    group commit byte limit (default 1048576)\n"
	       "  --reads N          random reads to time (default 200000)\n"
	       "  --reopen-mb N      size of the log for the reopen test (default 1024)\n"
	       "  --reopen-record N  record size in that log (default 4096)\n"
	       "  --no-reopen        skip the reopen test\n"
	       "  --only-reopen      run only the reopen test\n");
}

int bench_queue_main(int argc, char **argv)
{
	static const size_t sizes[] = { 64, 256, 4096 };
	static const enum bm_queue_sync pols[] = {
		BM_QUEUE_SYNC_ALWAYS, BM_QUEUE_SYNC_GROUP, BM_QUEUE_SYNC_NONE,
	};
	struct cfg c = { NULL, 1.0, 1000, 200000, 1024, 4096, 1000, 1u << 20, 0, 0 };
	char *base;
	const char *tmp = getenv("TMPDIR");

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage();
			return 0;
		} else if (!strcmp(a, "--no-reopen")) {
			c.no_reopen = 1;
		} else if (!strcmp(a, "--only-reopen")) {
			c.only_reopen = 1;
		} else if (!v) {
			fprintf(stderr, "bimip-bench queue: option '%s' needs a value\n", a);
			return 2;
		} else {
			i++;
			if (!strcmp(a, "--dir"))
				c.dir = v;
			else if (!strcmp(a, "--seconds"))
				c.seconds = atof(v);
			else if (!strcmp(a, "--streams"))
				c.streams = (unsigned)atoi(v);
			else if (!strcmp(a, "--window-us"))
				c.window_us = (uint32_t)atoi(v);
			else if (!strcmp(a, "--group-bytes"))
				c.group_bytes = (uint32_t)atoi(v);
			else if (!strcmp(a, "--reads"))
				c.reads = (unsigned)atoi(v);
			else if (!strcmp(a, "--reopen-mb"))
				c.reopen_mb = (unsigned)atoi(v);
			else if (!strcmp(a, "--reopen-record"))
				c.reopen_record = (unsigned)atoi(v);
			else {
				fprintf(stderr, "bimip-bench queue: unknown option '%s'\n", a);
				return 2;
			}
		}
	}
	if (c.seconds <= 0 || c.streams == 0 || c.reads == 0 || c.group_bytes == 0 ||
	    c.reopen_record == 0 || c.reopen_record > (1u << 20)) {
		fprintf(stderr, "bimip-bench queue: bad option value\n");
		return 2;
	}
	if (asprintf(&base, "%s/bimip-bench-queue.XXXXXX",
		     c.dir ? c.dir : tmp && *tmp ? tmp : "/var/tmp") == -1 || !mkdtemp(base)) {
		fprintf(stderr, "bimip-bench queue: cannot create a directory: %s\n",
			strerror(errno));
		return 1;
	}
	c.dir = base;
	names = calloc(c.streams, sizeof(*names));
	if (!names)
		return 1;
	for (unsigned i = 0; i < c.streams; i++)
		stream_name(names[i], sizeof(names[i]), i);
	bm_log_set_level(BM_LOG_WARN);
	printf("# bimip-bench queue: dir=%s seconds=%.1f streams=%u window_us=%u "
	       "group_bytes=%u\n", base, c.seconds, c.streams, c.window_us, c.group_bytes);
	for (size_t p = 0; !c.only_reopen && p < 3; p++) {
		for (size_t s = 0; s < 3; s++) {
			double qr = run_queue(&c, pols[p], sizes[s]);
			double rr = run_raw(&c, pols[p], sizes[s]);
			printf("queue.append policy=%s size=%zu appends_per_s=%.0f mb_per_s=%.1f "
			       "raw_appends_per_s=%.0f raw_mb_per_s=%.1f ratio_to_raw=%.2f\n",
			       bm_queue_sync_name(pols[p]), sizes[s], qr, qr * sizes[s] / 1e6,
			       rr, rr * sizes[s] / 1e6, qr / rr);
			fflush(stdout);
		}
	}
	if (!c.only_reopen)
		run_reads(&c);
	if (!c.no_reopen)
		run_reopen(&c);
	rmtree(base);
	free(base);
	free(names);
	return 0;
}
