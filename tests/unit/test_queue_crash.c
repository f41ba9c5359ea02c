/*
 * test_queue_crash.c - kill -9 a process that is appending, then check that
 * every record it reported durable is there, intact, and that offsets are
 * gapless.
 *
 * Each trial forks a writer that opens the queue (policy group or always,
 * alternating; small segments and checkpoints so that rotation and
 * checkpointing happen under fire), appends records with a deterministic
 * payload to a few streams, commits device offsets, and writes (stream,
 * offset) to a pipe from each completion.  The parent SIGKILLs it at a
 * random moment, drains the pipe, reopens the queue and verifies.  The same
 * directory is reused by every trial, so recovery runs on logs that were
 * themselves recovered.
 *
 *   BIMIP_CRASH_TRIALS=N   number of trials (default 12)
 *   BIMIP_CRASH_SEED=S     random seed (default: time; printed)
 *
 * kill -9 keeps the page cache.  To approximate a power cut as well, every
 * other trial then drops the unsynced tail: each report carries the queue's
 * durable position at that moment, and the parent truncates the last
 * segment at a random point at or after the highest durable position it
 * was told about (and after the checkpoint's position), then appends random
 * junk, as a torn page would leave.  Every acknowledged record must survive.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "tests/support/queue_testutil.h"

#define NSTREAMS 6

struct report {
	uint32_t stream;
	uint32_t kind;      /* 0 append, 1 offset commit */
	uint64_t offset;
	uint64_t durable;   /* the queue's durable position when reported */
};

static int report_fd;
static struct bm_queue *child_q;

static void on_done(void *ud, int status, uint64_t offset)
{
	struct report r = { (uint32_t)(uintptr_t)ud & 0xffff,
			    (uint32_t)((uintptr_t)ud >> 16), offset, 0 };
	struct bm_queue_stats st;

	bm_queue_stats(child_q, &st);
	r.durable = st.durable_pos;
	if (status)
		_exit(3);
	if (write(report_fd, &r, sizeof(r)) != (ssize_t)sizeof(r))
		_exit(4);
}

static void writer(const char *dir, int fd, enum bm_queue_sync pol, unsigned seed)
{
	struct bm_queue_opts o;
	struct bm_queue *q;
	uint8_t buf[1024];
	uint64_t deadline = bm_mono_ms() + 20000;

	report_fd = fd;
	bm_queue_opts_default(&o);
	o.sync = pol;
	o.segment_bytes = 256 * 1024;
	o.checkpoint_bytes = 96 * 1024;
	o.group_window_us = 500;
	if (bm_queue_open(&q, dir, &o))
		_exit(2);
	child_q = q;
	srand(seed);
	/* Bounded: the parent kills us long before this. */
	for (uint64_t i = 0; bm_mono_ms() < deadline; i++) {
		unsigned s = (unsigned)rand() % NSTREAMS;
		char name[32];
		uint64_t head = 0, off;
		size_t n;

		snprintf(name, sizeof(name), "user-%u", s);
		bm_queue_stream_head(q, name, &head, NULL);
		n = qt_payload_len(s, head + 1);
		qt_payload(buf, n, s, head + 1);
		if (bm_queue_append(q, name, buf, n, &off, on_done, (void *)(uintptr_t)s) ||
		    off != head + 1)
			_exit(5);
		if (i % 50 == 49 &&
		    bm_queue_commit_offset(q, name, "phone", off, on_done,
					   (void *)(uintptr_t)(s | 1u << 16)))
			_exit(6);
		if (i % 16 == 0) {
			struct pollfd p = { .fd = bm_queue_event_fd(q), .events = POLLIN };
			poll(&p, 1, 0);
			bm_queue_poll(q);
		}
	}
	_exit(0);
}

struct verify {
	unsigned si;
	uint64_t next;
	int bad;
};

static int on_rec(void *ud, const struct bm_queue_meta *m, const void *data, int status)
{
	struct verify *v = ud;
	uint8_t want[1024];
	size_t n = qt_payload_len(v->si, m->offset);

	qt_payload(want, n, v->si, m->offset);
	if (status || m->offset != v->next || m->len != n || memcmp(data, want, n)) {
		print_error("stream %u offset %llu: status %d len %u\n", v->si,
			    (unsigned long long)m->offset, status, m->len);
		v->bad++;
	}
	v->next++;
	return 0;
}

/* Drops what a power cut could drop: everything after a random point at or
 * after the last durable position we know of. */
static void power_cut(const char *dir, uint64_t durable)
{
	char seg[4096], ck[4096];
	uint64_t base, lo = durable, end, cut, logpos = 0;
	long long size;
	int nseg = qt_segment(dir, 0, NULL, 0), fd;
	uint8_t junk[512];

	assert_true(nseg > 0);
	qt_segment(dir, nseg - 1, seg, sizeof(seg));
	base = strtoull(strrchr(seg, '/') + 1, NULL, 10);
	size = qt_filesize(seg);
	assert_true(size >= 0);
	end = base + (uint64_t)size;
	snprintf(ck, sizeof(ck), "%s/checkpoint", dir);
	fd = open(ck, O_RDONLY);
	if (fd != -1) {
		assert_int_equal(pread(fd, &logpos, 8, 8), 8);   /* header.log_pos */
		close(fd);
	}
	/* A later segment exists only after the previous one was synced. */
	if (lo < base)
		lo = base;
	if (lo < logpos)
		lo = logpos;
	if (lo >= end)
		return;
	cut = lo + (uint64_t)rand() % (end - lo + 1);
	assert_int_equal(truncate(seg, (off_t)(cut - base)), 0);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)rand();
	fd = open(seg, O_WRONLY | O_APPEND);
	assert_true(fd != -1);
	assert_true(write(fd, junk, (size_t)(rand() % (int)sizeof(junk))) >= 0);
	close(fd);
}

static void test_crash(void **state)
{
	const char *e = getenv("BIMIP_CRASH_TRIALS");
	int trials = e ? atoi(e) : 12;
	unsigned seed = getenv("BIMIP_CRASH_SEED") ? (unsigned)atoi(getenv("BIMIP_CRASH_SEED")) :
			(unsigned)time(NULL);
	uint64_t acked[NSTREAMS] = { 0 }, committed[NSTREAMS] = { 0 };
	char *dir = qt_tempdir("bmq-crash");
	uint64_t total_acked = 0, durable = 0;

	assert_non_null(dir);
	print_message("crash test: %d trials, seed %u, dir %s\n", trials, seed, dir);
	srand(seed);
	bm_log_set_level(getenv("BIMIP_TEST_VERBOSE") ? BM_LOG_DEBUG : BM_LOG_WARN);
	for (int t = 0; t < trials; t++) {
		int pfd[2];
		pid_t pid;
		uint64_t kill_at, start = bm_mono_ms();
		struct bm_queue *q;
		struct bm_queue_opts o;
		int status, got = 0;

		assert_int_equal(pipe(pfd), 0);
		pid = fork();
		assert_true(pid != -1);
		if (pid == 0) {
			close(pfd[0]);
			writer(dir, pfd[1], t % 2 ? BM_QUEUE_SYNC_ALWAYS : BM_QUEUE_SYNC_GROUP,
			       seed + (unsigned)t);
		}
		close(pfd[1]);
		kill_at = start + 30 + (uint64_t)(rand() % 400);
		/* Read reports until the kill moment (bounded by kill_at). */
		for (;;) {
			struct pollfd p = { .fd = pfd[0], .events = POLLIN };
			uint64_t now = bm_mono_ms();
			struct report r;
			ssize_t n;

			if (now >= kill_at)
				break;
			if (poll(&p, 1, (int)(kill_at - now)) <= 0)
				continue;
			n = read(pfd[0], &r, sizeof(r));
			if (n == 0)
				break;
			assert_int_equal(n, sizeof(r));
			assert_true(r.stream < NSTREAMS);
			if (r.kind == 0) {
				assert_int_equal(r.offset, acked[r.stream] + 1);   /* in order */
				acked[r.stream] = r.offset;
				got++;
			} else {
				committed[r.stream] = r.offset;
			}
			if (r.durable > durable)
				durable = r.durable;
		}
		kill(pid, SIGKILL);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!WIFSIGNALED(status))
			fail_msg("writer exited early with status %d", WEXITSTATUS(status));
		/* Reports written before the kill are still in the pipe. */
		for (;;) {
			struct report r;
			ssize_t n = read(pfd[0], &r, sizeof(r));
			if (n <= 0)
				break;
			assert_int_equal(n, sizeof(r));
			if (r.kind == 0) {
				assert_int_equal(r.offset, acked[r.stream] + 1);
				acked[r.stream] = r.offset;
				got++;
			} else {
				committed[r.stream] = r.offset;
			}
			if (r.durable > durable)
				durable = r.durable;
		}
		close(pfd[0]);
		total_acked += (uint64_t)got;
		if (t % 4 >= 2)
			power_cut(dir, durable);

		/* Recover and check every stream from offset 1. */
		bm_queue_opts_default(&o);
		assert_int_equal(bm_queue_open(&q, dir, &o), 0);
		for (unsigned s = 0; s < NSTREAMS; s++) {
			char name[32];
			uint64_t head = 0, first = 0, c;
			struct verify v = { s, 1, 0 };

			snprintf(name, sizeof(name), "user-%u", s);
			if (bm_queue_stream_head(q, name, &head, &first) == 0) {
				assert_int_equal(first, 1);
				while (v.next <= head) {
					int rc = bm_queue_scan(q, name, v.next - 1, 4096, on_rec, &v);
					assert_true(rc > 0);
				}
				assert_int_equal(v.bad, 0);
			}
			if (head < acked[s])
				fail_msg("trial %d: stream %u lost acknowledged records: head %llu < %llu",
					 t, s, (unsigned long long)head,
					 (unsigned long long)acked[s]);
			/* Unacknowledged records that survived count from now on. */
			acked[s] = head;
			if (committed[s]) {
				assert_int_equal(bm_queue_committed_offset(q, name, "phone", &c), 0);
				assert_true(c >= committed[s]);
				committed[s] = c;
			}
		}
		assert_int_equal(bm_queue_close(q), 0);
		print_message("trial %d: %s%s, killed after %llu ms, %d acknowledged\n", t,
			      t % 2 ? "always" : "group", t % 4 >= 2 ? " + power cut" : "",
			      (unsigned long long)(bm_mono_ms() - start), got);
	}
	assert_true(total_acked > 0);
	qt_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crash),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
