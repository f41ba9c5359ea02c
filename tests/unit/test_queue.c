/*
 * test_queue.c - BimipQueue: API, persistence, rotation, retention, device
 * offsets, secure erase, and damage on disk (torn tails at every byte,
 * flipped bytes, missing and truncated files) ending in a clear error.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <cmocka.h>

#include "bm_crc32c.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "tests/support/queue_testutil.h"

struct fx {
	char *dir;
	char *dir2;
	struct bm_queue_opts o;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	f->dir = qt_tempdir("bmq");
	assert_non_null(f->dir);
	if (asprintf(&f->dir2, "%s.copy", f->dir) == -1)
		return -1;
	bm_queue_opts_default(&f->o);
	bm_log_set_level(getenv("BIMIP_TEST_VERBOSE") ? BM_LOG_DEBUG : (enum bm_log_level)-1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	qt_rmtree(f->dir);
	qt_rmtree(f->dir2);
	free(f->dir);
	free(f->dir2);
	free(f);
	bm_time_set_fake(NULL, NULL);
	return 0;
}

/* --- helpers ------------------------------------------------------------ */

static int done_count;
static uint64_t done_last;
static int done_order_ok = 1;
static int done_status;

static void on_done(void *ud, int status, uint64_t offset)
{
	uint64_t seq = (uint64_t)(uintptr_t)ud;

	if (seq != done_last + 1)
		done_order_ok = 0;
	done_last = seq;
	done_count++;
	if (status)
		done_status = status;
}

static void reset_done(void)
{
	done_count = 0;
	done_last = 0;
	done_order_ok = 1;
	done_status = 0;
}

/* Waits (bounded) on the event fd until n completions ran. */
static void wait_done(struct bm_queue *q, int n)
{
	for (int i = 0; i < 5000 && done_count < n; i++) {
		struct pollfd p = { .fd = bm_queue_event_fd(q), .events = POLLIN };
		poll(&p, 1, 10);
		bm_queue_poll(q);
	}
	assert_int_equal(done_count, n);
}

static void put(struct bm_queue *q, unsigned si, uint64_t want_off)
{
	char name[32];
	uint8_t buf[1024];
	size_t n = qt_payload_len(si, want_off);
	uint64_t off = 0;

	snprintf(name, sizeof(name), "user-%u", si);
	qt_payload(buf, n, si, want_off);
	assert_int_equal(bm_queue_append(q, name, buf, n, &off, NULL, NULL), 0);
	assert_int_equal(off, want_off);
}

static void check(struct bm_queue *q, unsigned si, uint64_t off)
{
	char name[32];
	uint8_t want[1024];
	struct bm_buf b = BM_BUF_INIT;
	struct bm_queue_meta m;
	size_t n = qt_payload_len(si, off);

	snprintf(name, sizeof(name), "user-%u", si);
	qt_payload(want, n, si, off);
	assert_int_equal(bm_queue_read(q, name, off, &b, &m), 0);
	assert_int_equal(m.offset, off);
	assert_int_equal(m.len, n);
	assert_int_equal(b.len, n);
	assert_memory_equal(b.data, want, n);
	bm_buf_release(&b);
}

static uint64_t head_of(struct bm_queue *q, unsigned si)
{
	char name[32];
	uint64_t h = 0;

	snprintf(name, sizeof(name), "user-%u", si);
	if (bm_queue_stream_head(q, name, &h, NULL))
		return 0;
	return h;
}

static void fill(struct bm_queue *q, unsigned streams, uint64_t per)
{
	for (uint64_t o = 1; o <= per; o++)
		for (unsigned s = 0; s < streams; s++)
			put(q, s, o);
}

static void check_all(struct bm_queue *q, unsigned streams, uint64_t per)
{
	for (unsigned s = 0; s < streams; s++) {
		assert_int_equal(head_of(q, s), per);
		for (uint64_t o = 1; o <= per; o++)
			check(q, s, o);
	}
}

/* --- tests -------------------------------------------------------------- */

static void test_crc32c(void **state)
{
	uint8_t buf[1000];

	assert_int_equal(bm_crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(bm_crc32c_sw(0, "123456789", 9), 0xE3069283u);
	qt_payload(buf, sizeof(buf), 1, 2);
	for (size_t i = 0; i < 40; i++)
		assert_int_equal(bm_crc32c(0, buf + i, sizeof(buf) - 2 * i),
				 bm_crc32c_sw(0, buf + i, sizeof(buf) - 2 * i));
	assert_int_equal(bm_crc32c(bm_crc32c(0, buf, 10), buf + 10, 90),
			 bm_crc32c(0, buf, 100));
}

static void test_basic(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	uint64_t off, head, first;

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 5, 200);
	check_all(q, 5, 200);
	assert_int_equal(bm_queue_stream_head(q, "user-0", &head, &first), 0);
	assert_int_equal(head, 200);
	assert_int_equal(first, 1);
	assert_int_equal(bm_queue_stream_head(q, "nobody", &head, NULL), BM_ENOENT);
	/* Errors. */
	{
		struct bm_buf b = BM_BUF_INIT;
		char longname[300];
		memset(longname, 'a', sizeof(longname) - 1);
		longname[sizeof(longname) - 1] = 0;
		assert_int_equal(bm_queue_read(q, "user-0", 0, &b, NULL), BM_ERANGE);
		assert_int_equal(bm_queue_read(q, "user-0", 201, &b, NULL), BM_ERANGE);
		assert_int_equal(bm_queue_read(q, "nobody", 1, &b, NULL), BM_ENOENT);
		assert_int_equal(bm_queue_append(q, "", "x", 1, &off, NULL, NULL), BM_EINVAL);
		assert_int_equal(bm_queue_append(q, longname, "x", 1, &off, NULL, NULL), BM_EINVAL);
		assert_int_equal(bm_queue_append(q, "a", longname, f->o.max_record + 1, &off,
						 NULL, NULL), BM_ETOOBIG);
		/* A bounded output buffer is respected. */
		bm_buf_init(&b, 4);
		assert_int_equal(bm_queue_read(q, "user-0", 3, &b, NULL), BM_ETOOBIG);
		bm_buf_release(&b);
	}
	/* Empty payloads are fine. */
	assert_int_equal(bm_queue_append(q, "empty", NULL, 0, &off, NULL, NULL), 0);
	assert_int_equal(off, 1);
	assert_int_equal(bm_queue_close(q), 0);

	/* Reopen: everything is there and offsets continue. */
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	check_all(q, 5, 200);
	put(q, 0, 201);
	check(q, 0, 201);
	{
		struct bm_queue *q2;
		assert_int_equal(bm_queue_open(&q2, f->dir, &f->o), BM_ESTATE);
	}
	assert_int_equal(bm_queue_close(q), 0);
}

struct scan_ctx {
	uint64_t next;
	unsigned si;
	int count;
	int destroyed;
	int stop_after;
};

/* A visited record of stream si: the payload put() wrote, or erased
 * (counted in *destroyed). */
static void check_rec(unsigned si, const struct bm_queue_meta *m, const void *data,
		      int status, int *destroyed)
{
	uint8_t want[1024];
	size_t n = qt_payload_len(si, m->offset);

	if (status == BM_EDESTROYED) {
		assert_null(data);
		(*destroyed)++;
	} else {
		assert_int_equal(status, 0);
		qt_payload(want, n, si, m->offset);
		assert_int_equal(m->len, n);
		assert_memory_equal(data, want, n);
	}
}

static int on_rec(void *ud, const struct bm_queue_meta *m, const void *data, int status)
{
	struct scan_ctx *c = ud;

	assert_int_equal(m->offset, c->next);
	c->next++;
	c->count++;
	check_rec(c->si, m, data, status, &c->destroyed);
	return c->stop_after && c->count >= c->stop_after;
}

static void test_scan(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct scan_ctx c;

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 300);
	for (uint64_t after = 0; after <= 300; after += 37) {
		memset(&c, 0, sizeof(c));
		c.si = 1;
		c.next = after + 1;
		assert_int_equal(bm_queue_scan(q, "user-1", after, 100, on_rec, &c),
				 after + 100 <= 300 ? 100 : (int)(300 - after));
	}
	memset(&c, 0, sizeof(c));
	c.si = 2;
	c.next = 11;
	c.stop_after = 5;
	assert_int_equal(bm_queue_scan(q, "user-2", 10, 100, on_rec, &c), 5);
	assert_int_equal(bm_queue_scan(q, "user-2", 300, 100, on_rec, &c), 0);
	assert_int_equal(bm_queue_scan(q, "user-2", 0, 70000, on_rec, &c), BM_EINVAL);
	assert_int_equal(bm_queue_scan(q, "nobody", 0, 10, on_rec, &c), BM_ENOENT);
	assert_int_equal(bm_queue_close(q), 0);
}

static int on_device(void *ud, const char *device, uint64_t offset)
{
	*(uint64_t *)ud += offset;
	return 0;
}

static int on_stream(void *ud, const char *name, uint64_t head, uint64_t first)
{
	int *n = ud;

	assert_int_equal(strncmp(name, "user-", 5), 0);
	assert_int_equal(head, 10);
	(*n)++;
	return 0;
}

static void test_streams_and_offsets(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	uint64_t off;
	int n = 0;

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 50, 10);
	assert_int_equal(bm_queue_streams(q, on_stream, &n), 50);
	assert_int_equal(n, 50);
	assert_int_equal(bm_queue_committed_offset(q, "user-3", "phone", &off), BM_ENOENT);
	assert_int_equal(bm_queue_commit_offset(q, "user-3", "phone", 4, NULL, NULL), 0);
	assert_int_equal(bm_queue_commit_offset(q, "user-3", "laptop", 9, NULL, NULL), 0);
	assert_int_equal(bm_queue_commit_offset(q, "user-3", "phone", 7, NULL, NULL), 0);
	assert_int_equal(bm_queue_commit_offset(q, "user-3", "phone", 11, NULL, NULL), BM_ERANGE);
	assert_int_equal(bm_queue_commit_offset(q, "nobody", "phone", 1, NULL, NULL), BM_ENOENT);
	assert_int_equal(bm_queue_committed_offset(q, "user-3", "phone", &off), 0);
	assert_int_equal(off, 7);
	assert_int_equal(bm_queue_close(q), 0);

	/* From the checkpoint. */
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_committed_offset(q, "user-3", "phone", &off), 0);
	assert_int_equal(off, 7);
	{
		uint64_t sum = 0;
		assert_int_equal(bm_queue_devices(q, "user-3", on_device, &sum), 2);
		assert_int_equal(sum, 7 + 9);
		assert_int_equal(bm_queue_devices(q, "nobody", on_device, &sum), BM_ENOENT);
	}
	assert_int_equal(bm_queue_committed_offset(q, "user-3", "laptop", &off), 0);
	assert_int_equal(off, 9);
	/* From the log tail (a crash snapshot after sync). */
	assert_int_equal(bm_queue_commit_offset(q, "user-3", "phone", 8, NULL, NULL), 0);
	assert_int_equal(bm_queue_commit_offset(q, "user-4", "tab", 2, NULL, NULL), 0);
	assert_int_equal(bm_queue_sync(q), 0);
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	assert_int_equal(bm_queue_committed_offset(q, "user-3", "phone", &off), 0);
	assert_int_equal(off, 8);
	assert_int_equal(bm_queue_committed_offset(q, "user-4", "tab", &off), 0);
	assert_int_equal(off, 2);
	check_all(q, 50, 10);
	assert_int_equal(bm_queue_close(q), 0);
}

static void run_policy(struct fx *f, enum bm_queue_sync pol)
{
	struct bm_queue *q;
	struct bm_queue_stats st;
	uint64_t off;

	f->o.sync = pol;
	reset_done();
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	for (uintptr_t i = 1; i <= 500; i++)
		assert_int_equal(bm_queue_append(q, i % 2 ? "a" : "b", "hello", 5, &off,
						 on_done, (void *)i), 0);
	wait_done(q, 500);
	assert_true(done_order_ok);
	assert_int_equal(done_status, 0);
	bm_queue_stats(q, &st);
	assert_true(st.durable_pos == st.appended_pos);
	if (pol == BM_QUEUE_SYNC_GROUP)
		assert_true(st.syncs < 500);
	/* A commit's completion too, and close runs what is left. */
	assert_int_equal(bm_queue_commit_offset(q, "a", "d", 3, on_done, (void *)501), 0);
	assert_int_equal(bm_queue_append(q, "a", "x", 1, &off, on_done, (void *)502), 0);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(done_count, 502);
	assert_true(done_order_ok);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_stream_head(q, "a", &off, NULL), 0);
	assert_int_equal(off, 251);
	assert_int_equal(bm_queue_close(q), 0);
	qt_rmtree(f->dir);
}

static void test_policies(void **state)
{
	struct fx *f = *state;

	run_policy(f, BM_QUEUE_SYNC_GROUP);
	run_policy(f, BM_QUEUE_SYNC_ALWAYS);
	run_policy(f, BM_QUEUE_SYNC_NONE);
	{
		enum bm_queue_sync s;
		assert_int_equal(bm_queue_sync_parse("group", &s), 0);
		assert_int_equal(s, BM_QUEUE_SYNC_GROUP);
		assert_int_equal(bm_queue_sync_parse("fast", &s), BM_EINVAL);
		assert_string_equal(bm_queue_sync_name(BM_QUEUE_SYNC_NONE), "none");
	}
}

/* Polls the queue for ms milliseconds. */
static void poll_for(struct bm_queue *q, uint64_t ms)
{
	uint64_t t0 = bm_mono_ms();

	while (bm_mono_ms() - t0 < ms) {
		struct pollfd p = { .fd = bm_queue_event_fd(q), .events = POLLIN };
		poll(&p, 1, 10);
		bm_queue_poll(q);
	}
}

/* Group commit: an append that finds the disk idle for a whole window is
 * synced at once; one that comes while the last sync is less than a window
 * old waits for the window.  A 3 s window keeps the two apart by seconds. */
static void test_group_idle_disk(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;
	uint64_t off, t0;

	f->o.sync = BM_QUEUE_SYNC_GROUP;
	f->o.group_window_us = 3000000;
	reset_done();
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	t0 = bm_mono_ms();
	assert_int_equal(bm_queue_append(q, "a", "one", 3, &off, on_done, (void *)1), 0);
	wait_done(q, 1);
	/* Idle disk: not held for the 3 s window. */
	assert_true(bm_mono_ms() - t0 < 2000);
	/* Right after that sync: gathered for the window, not synced at once. */
	assert_int_equal(bm_queue_append(q, "a", "two", 3, &off, on_done, (void *)2), 0);
	poll_for(q, 300);
	assert_int_equal(done_count, 1);
	bm_queue_stats(q, &st);
	assert_true(st.durable_pos < st.appended_pos);
	wait_done(q, 2);
	assert_true(done_order_ok);
	assert_int_equal(bm_queue_close(q), 0);
	f->o.group_window_us = 1000;
	qt_rmtree(f->dir);
}

/* Under a steady stream of appends, batches are taken a window apart: at most
 * one sync per window (plus the first, which finds the disk idle), and the
 * stream is not held back to its end either. */
static void test_group_window_rate(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;
	uint64_t off, t0, ms;
	uintptr_t n = 0;

	f->o.sync = BM_QUEUE_SYNC_GROUP;
	f->o.group_window_us = 100000;
	reset_done();
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	t0 = bm_mono_ms();
	while (bm_mono_ms() - t0 < 1000 && n < 400) {
		assert_int_equal(bm_queue_append(q, "a", "tick", 4, &off, on_done,
						 (void *)++n), 0);
		poll_for(q, 5);
	}
	/* Batches became durable while the stream ran. */
	assert_true(done_count > 0);
	wait_done(q, (int)n);
	ms = bm_mono_ms() - t0;
	assert_true(done_order_ok);
	bm_queue_stats(q, &st);
	assert_true(st.syncs >= 3);
	assert_true(st.syncs <= ms / 100 + 2);
	assert_int_equal(bm_queue_close(q), 0);
	f->o.group_window_us = 1000;
	qt_rmtree(f->dir);
}

/* Corked, appends do not wake the idle sync thread: nothing is synced until
 * the last bm_queue_uncork(), and then at once, in one sync. */
static void test_group_cork(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;
	uint64_t off, t0, syncs;

	f->o.sync = BM_QUEUE_SYNC_GROUP;
	reset_done();
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	bm_queue_uncork(q);   /* not corked: nothing happens */
	/* An append uncorked wakes the sync thread by itself; then it is idle. */
	assert_int_equal(bm_queue_append(q, "a", "zero", 4, &off, on_done, (void *)1), 0);
	wait_done(q, 1);
	poll_for(q, 50);
	bm_queue_stats(q, &st);
	syncs = st.syncs;
	bm_queue_cork(q);
	bm_queue_cork(q);
	assert_int_equal(bm_queue_append(q, "a", "one", 3, &off, on_done, (void *)2), 0);
	assert_int_equal(bm_queue_append(q, "b", "two", 3, &off, on_done, (void *)3), 0);
	poll_for(q, 150);
	assert_int_equal(done_count, 1);
	bm_queue_uncork(q);   /* still corked once */
	poll_for(q, 150);
	assert_int_equal(done_count, 1);
	bm_queue_stats(q, &st);
	assert_true(st.durable_pos < st.appended_pos);
	t0 = bm_mono_ms();
	bm_queue_uncork(q);
	wait_done(q, 3);
	assert_true(bm_mono_ms() - t0 < 2000);
	assert_true(done_order_ok);
	bm_queue_stats(q, &st);
	assert_int_equal(st.syncs, syncs + 1);
	assert_int_equal(bm_queue_close(q), 0);
	qt_rmtree(f->dir);
}

/* bm_queue_after: runs after the completions of what was appended before
 * it, before those of what comes after; on an idle queue, at the next poll. */
static void test_after(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	uint64_t off;

	reset_done();
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_after(q, on_done, (void *)1), 0);   /* nothing before */
	wait_done(q, 1);
	assert_int_equal(bm_queue_append(q, "a", "x", 1, &off, on_done, (void *)2), 0);
	assert_int_equal(bm_queue_after(q, on_done, (void *)3), 0);
	assert_int_equal(bm_queue_append(q, "a", "y", 1, &off, on_done, (void *)4), 0);
	assert_int_equal(bm_queue_after(q, on_done, (void *)5), 0);
	wait_done(q, 5);
	assert_true(done_order_ok);
	assert_int_equal(done_status, 0);
	assert_int_equal(bm_queue_close(q), 0);
	qt_rmtree(f->dir);
}

static void test_rotation_and_size_retention(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;
	struct bm_buf b = BM_BUF_INIT;
	uint64_t head, first, first2;
	struct scan_ctx c;
	int deleted;

	f->o.segment_bytes = 16384;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 4, 300);
	bm_queue_stats(q, &st);
	assert_true(st.segments > 10);
	assert_int_equal(bm_queue_close(q), 0);

	f->o.retention_bytes = 64 * 1024;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	check_all(q, 4, 300);
	deleted = bm_queue_retain(q);
	assert_true(deleted > 0);
	bm_queue_stats(q, &st);
	assert_true(st.log_bytes <= 64 * 1024 + 16384);
	assert_int_equal(bm_queue_stream_head(q, "user-1", &head, &first), 0);
	assert_int_equal(head, 300);
	assert_true(first > 1 && first <= 300);
	assert_int_equal(bm_queue_read(q, "user-1", first - 1, &b, NULL), BM_ENOENT);
	for (uint64_t o = first; o <= 300; o++)
		check(q, 1, o);
	memset(&c, 0, sizeof(c));
	c.si = 1;
	c.next = first;
	assert_int_equal(bm_queue_scan(q, "user-1", 0, 1000, on_rec, &c), (int)(300 - first + 1));
	put(q, 1, 301);
	assert_int_equal(bm_queue_close(q), 0);

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_stream_head(q, "user-1", &head, &first2), 0);
	assert_int_equal(head, 301);
	assert_true(first2 >= first);
	for (uint64_t o = first2; o <= 301; o++)
		check(q, 1, o);
	assert_int_equal(bm_queue_close(q), 0);
	bm_buf_release(&b);
}

static void test_age_retention(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	int64_t wall = 1000000000;
	uint64_t head, first;

	bm_time_set_fake(NULL, &wall);
	f->o.segment_ms = 60 * 1000;
	f->o.retention_ms = 3600 * 1000;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 2, 10);             /* old segment */
	wall += 120 * 1000;         /* the next append rotates by age */
	put(q, 0, 11);
	assert_int_equal(bm_queue_retain(q), 0);
	wall += 3600 * 1000;        /* the first segment is now too old */
	put(q, 0, 12);
	assert_int_equal(bm_queue_retain(q), 1);
	assert_int_equal(bm_queue_stream_head(q, "user-0", &head, &first), 0);
	assert_int_equal(head, 12);
	assert_int_equal(first, 11);
	/* Stream 1 lost every record but keeps its head. */
	assert_int_equal(bm_queue_stream_head(q, "user-1", &head, &first), 0);
	assert_int_equal(head, 10);
	assert_int_equal(first, 11);
	put(q, 1, 11);
	check(q, 1, 11);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	check(q, 1, 11);
	check(q, 0, 12);
	assert_int_equal(bm_queue_close(q), 0);
}

static int file_contains(const char *path, const void *needle, size_t n)
{
	static uint8_t buf[1 << 20];
	int fd = open(path, O_RDONLY);
	ssize_t len = read(fd, buf, sizeof(buf));

	close(fd);
	for (ssize_t i = 0; i + (ssize_t)n <= len; i++)
		if (!memcmp(buf + i, needle, n))
			return 1;
	return 0;
}

static void test_destroy(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_buf b = BM_BUF_INIT;
	struct bm_queue_meta m;
	struct scan_ctx c;
	char seg[4096];
	static const char secret[] = "the launch code is 0000";

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 2, 100);
	assert_int_equal(bm_queue_append(q, "user-0", secret, sizeof(secret), NULL, NULL, NULL), 0);
	fill(q, 0, 0);
	for (uint64_t o = 102; o <= 130; o++)
		put(q, 0, o);
	assert_int_equal(bm_queue_destroy(q, "user-0", 101), 0);
	assert_int_equal(bm_queue_destroy(q, "user-0", 101), 0);   /* idempotent */
	assert_int_equal(bm_queue_destroy(q, "user-0", 5), 0);
	assert_int_equal(bm_queue_destroy(q, "user-0", 500), BM_ERANGE);
	assert_int_equal(bm_queue_read(q, "user-0", 101, &b, &m), BM_EDESTROYED);
	assert_int_equal(m.offset, 101);
	check(q, 0, 100);
	check(q, 0, 102);
	memset(&c, 0, sizeof(c));
	c.si = 0;
	c.next = 1;
	/* scan reports destroyed records; skip the content check for 101. */
	assert_int_equal(bm_queue_scan(q, "user-0", 0, 100, on_rec, &c), 100);
	assert_int_equal(c.destroyed, 1);
	assert_int_equal(qt_segment(f->dir, 0, seg, sizeof(seg)), 1);
	assert_false(file_contains(seg, secret, sizeof(secret) - 1));
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_read(q, "user-0", 101, &b, NULL), BM_EDESTROYED);
	assert_int_equal(bm_queue_read(q, "user-0", 5, &b, NULL), BM_EDESTROYED);
	check(q, 0, 130);
	assert_int_equal(bm_queue_close(q), 0);
	bm_buf_release(&b);
}

/* A torn secure erase: the tombstone is durable, the overwrite only half
 * done.  Recovery must finish it, not truncate the log there. */
static void test_destroy_torn(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_buf b = BM_BUF_INIT;
	char seg[4096];
	long long size;
	int fd;

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_checkpoint(q), 0);
	fill(q, 1, 20);
	assert_int_equal(bm_queue_destroy(q, "user-0", 10), 0);
	put(q, 0, 21);
	assert_int_equal(bm_queue_sync(q), 0);
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	assert_int_equal(bm_queue_close(q), 0);
	/* In the copy, un-mark the erase and put garbage in the payload. */
	assert_int_equal(qt_segment(f->dir2, 0, seg, sizeof(seg)), 1);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	assert_int_equal(bm_queue_read(q, "user-0", 10, &b, NULL), BM_EDESTROYED);
	assert_int_equal(bm_queue_close(q), 0);
	size = qt_filesize(seg);      /* after the open cut the zero tail */
	assert_true(size > 0);
	{
		/* Find record 10 by scanning for the erased marker. */
		uint8_t *buf = malloc((size_t)size);
		uint32_t mark = 0x54534544u, zero = 0;
		fd = open(seg, O_RDWR);
		assert_int_equal(read(fd, buf, (size_t)size), size);
		for (long long i = 0; i + 4 <= size; i++) {
			if (!memcmp(buf + i, &mark, 4)) {
				assert_int_equal(pwrite(fd, &zero, 4, i), 4);
				assert_int_equal(pwrite(fd, "junk", 4, i + 4), 4);
				break;
			}
		}
		close(fd);
		free(buf);
	}
	/* Remove the checkpoint so the tombstone is in the replayed tail. */
	{
		char ck[4096];
		snprintf(ck, sizeof(ck), "%s/checkpoint", f->dir2);
		unlink(ck);
	}
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	assert_int_equal(bm_queue_read(q, "user-0", 10, &b, NULL), BM_EDESTROYED);
	check(q, 0, 21);
	check(q, 0, 11);
	assert_int_equal(bm_queue_close(q), 0);
	bm_buf_release(&b);
}

/* Truncate the tail at every byte of the last records: recovery keeps the
 * complete records before, drops the torn one, and the log accepts appends. */
static void test_torn_tail_every_byte(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	char seg[4096], snap[4096];
	long long full, cut_from;
	uint64_t per = 30;

	f->o.sync = BM_QUEUE_SYNC_NONE;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 2, per - 2);
	assert_int_equal(bm_queue_checkpoint(q), 0);   /* the tail starts here */
	put(q, 0, per - 1);
	put(q, 1, per - 1);
	put(q, 0, per);
	assert_int_equal(bm_queue_sync(q), 0);
	snprintf(snap, sizeof(snap), "%s.snap", f->dir);
	assert_int_equal(qt_copydir(f->dir, snap), 0);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(qt_segment(snap, 0, seg, sizeof(seg)), 1);
	full = qt_filesize(seg);
	/* The last two records: user-1 (per-1), user-0 (per). */
	cut_from = full - 2 * 56 - (long long)qt_payload_len(0, per) -
		   (long long)qt_payload_len(1, per - 1);
	for (long long cut = cut_from; cut <= full; cut++) {
		char path[4096];
		uint64_t want0 = cut == full ? per : per - 1;
		uint64_t want1 = cut >= cut_from + 56 + (long long)qt_payload_len(1, per - 1) ?
				 per - 1 : per - 2;

		qt_rmtree(f->dir2);
		assert_int_equal(qt_copydir(snap, f->dir2), 0);
		assert_int_equal(qt_segment(f->dir2, 0, path, sizeof(path)), 1);
		assert_int_equal(truncate(path, cut), 0);
		assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
		assert_int_equal(head_of(q, 0), want0);
		assert_int_equal(head_of(q, 1), want1);
		check(q, 0, want0);
		check(q, 1, want1);
		put(q, 1, want1 + 1);
		assert_int_equal(bm_queue_close(q), 0);
		/* Twice: the repaired log reopens cleanly. */
		assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
		check(q, 1, want1 + 1);
		assert_int_equal(bm_queue_close(q), 0);
	}
	qt_rmtree(snap);
}

static void flip_byte(const char *path, long long at)
{
	int fd = open(path, O_RDWR);
	uint8_t c;

	assert_true(fd != -1);
	assert_int_equal(pread(fd, &c, 1, at), 1);
	c ^= 0x5a;
	assert_int_equal(pwrite(fd, &c, 1, at), 1);
	close(fd);
}

static void test_flipped_bytes(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_buf b = BM_BUF_INIT;
	char seg[4096], ck[4096];
	long long size;
	int ok = 0, bad = 0;

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 40);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(qt_segment(f->dir, 0, seg, sizeof(seg)), 1);
	size = qt_filesize(seg);

	/* A flipped byte inside the checkpointed log: open works, the read of
	 * the damaged record (or the walk through it) says BM_ECORRUPT and
	 * nothing crashes. */
	for (long long at = 7; at < size; at += size / 37) {
		qt_rmtree(f->dir2);
		assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
		assert_int_equal(qt_segment(f->dir2, 0, seg, sizeof(seg)), 1);
		flip_byte(seg, at);
		assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
		for (unsigned s = 0; s < 3; s++) {
			char name[16];
			snprintf(name, sizeof(name), "user-%u", s);
			for (uint64_t o = 1; o <= 40; o++) {
				int rc = bm_queue_read(q, name, o, &b, NULL);
				assert_true(rc == 0 || rc == BM_ECORRUPT);
				if (rc)
					bad++;
				else
					ok++;
			}
		}
		assert_int_equal(bm_queue_close(q), 0);
	}
	assert_true(bad > 0);
	assert_true(ok > bad);

	/* A flipped byte in the checkpoint: the log starts at 0, so the
	 * table is rebuilt from it. */
	qt_rmtree(f->dir2);
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	snprintf(ck, sizeof(ck), "%s/checkpoint", f->dir2);
	flip_byte(ck, qt_filesize(ck) / 2);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	check_all(q, 3, 40);
	assert_int_equal(bm_queue_close(q), 0);
	bm_buf_release(&b);
}

static int count_rec(void *ud, const struct bm_queue_meta *m, const void *data, int status)
{
	(void)m;
	(void)data;
	(void)status;
	(*(int *)ud)++;
	return 0;
}

/* A scan reads a small record's payload with its header (PEEK bytes) and
 * keeps it for the forward pass.  It must hand out exactly what a read
 * does, around the PEEK size, for records the group commit has not
 * written yet, and refuse a kept payload whose checksum fails. */
static void test_scan_peek(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct scan_ctx c;
	static const char canary[] = "peek-canary-payload";
	char seg[4096];
	int n = 0;

	f->o.group_window_us = 1000000;     /* appends stay in the buffer */
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 120);                    /* 1..700 bytes: both sides of PEEK */
	for (unsigned si = 0; si < 3; si++)
		for (uint64_t after = 0; after < 120; after += 50) {
			memset(&c, 0, sizeof(c));
			c.si = si;
			c.next = after + 1;
			assert_int_equal(bm_queue_scan(q, si == 0 ? "user-0" : si == 1 ? "user-1"
						       : "user-2", after, 60, on_rec, &c),
					 after + 60 <= 120 ? 60 : (int)(120 - after));
		}
	for (int i = 0; i < 5; i++)
		assert_int_equal(bm_queue_append(q, "canary", canary, sizeof(canary), NULL,
						 NULL, NULL), 0);
	assert_int_equal(bm_queue_close(q), 0);

	/* Damage the third canary's payload (inside the checkpointed log, so
	 * open does not read it): the scan that keeps it says BM_ECORRUPT. */
	assert_int_equal(qt_segment(f->dir, 0, seg, sizeof(seg)), 1);
	{
		FILE *fp = fopen(seg, "rb");
		static uint8_t all[1 << 20];
		size_t len, hits = 0;
		assert_non_null(fp);
		len = fread(all, 1, sizeof(all), fp);
		fclose(fp);
		for (size_t i = 0; i + sizeof(canary) <= len; i++)
			if (!memcmp(all + i, canary, sizeof(canary)) && ++hits == 3) {
				flip_byte(seg, (long long)i + 4);
				break;
			}
		assert_int_equal(hits, 3);
	}
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_scan(q, "canary", 0, 10, count_rec, &n), BM_ECORRUPT);
	n = 0;
	assert_int_equal(bm_queue_scan(q, "canary", 3, 10, count_rec, &n), 2);
	assert_int_equal(n, 2);
	memset(&c, 0, sizeof(c));
	c.si = 1;
	c.next = 1;
	assert_int_equal(bm_queue_scan(q, "user-1", 0, 120, on_rec, &c), 120);
	assert_int_equal(bm_queue_close(q), 0);
}

/* bm_queue_scan_log: every stream's records in append order, from the
 * start or from a position bm_queue_locate gave, in chunks that resume,
 * across segments, with erased records and device commits in between;
 * never a record that is not durable; a damaged header stops it. */
struct log_ctx {
	uint64_t next_o;           /* expected: offset next_o of stream next_s */
	unsigned next_s, streams;
	int count, destroyed;
};

static int on_log_rec(void *ud, const char *stream, const struct bm_queue_meta *m,
		      const void *data, int status)
{
	struct log_ctx *c = ud;
	char name[32];

	snprintf(name, sizeof(name), "user-%u", c->next_s);
	assert_string_equal(stream, name);
	assert_int_equal(m->offset, c->next_o);
	check_rec(c->next_s, m, data, status, &c->destroyed);
	if (++c->next_s == c->streams) {
		c->next_s = 0;
		c->next_o++;
	}
	c->count++;
	return 0;
}

static int scan_log_all(struct bm_queue *q, uint64_t pos, unsigned chunk,
			struct log_ctx *c)
{
	int n, calls = 0;

	while ((n = bm_queue_scan_log(q, &pos, chunk, on_log_rec, c)) > 0)
		assert_true(++calls < 100000);
	return n;
}

static void test_scan_log(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct log_ctx c;
	uint64_t pos, p0 = 0;
	char seg[4096];

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	for (uint64_t o = 1; o <= 300; o++) {
		for (unsigned si = 0; si < 3; si++)
			put(q, si, o);
		if (o % 7 == 0)
			assert_int_equal(bm_queue_commit_offset(q, "user-1", "phone", o, NULL,
								NULL), 0);
	}
	assert_int_equal(bm_queue_destroy(q, "user-2", 42), 0);
	assert_int_equal(bm_queue_sync(q), 0);
	for (unsigned chunk = 1; chunk <= 1000; chunk *= 10) {
		memset(&c, 0, sizeof(c));
		c.streams = 3;
		c.next_o = 1;
		assert_int_equal(scan_log_all(q, 0, chunk, &c), 0);
		assert_int_equal(c.count, 900);
		assert_int_equal(c.destroyed, 1);
	}
	/* From the position of user-2's offset 150 on. */
	assert_int_equal(bm_queue_locate(q, "user-2", 149, &pos), 0);
	memset(&c, 0, sizeof(c));
	c.streams = 3;
	c.next_s = 2;
	c.next_o = 150;
	assert_int_equal(scan_log_all(q, pos, 64, &c), 0);
	assert_int_equal(c.count, 1 + 150 * 3);
	/* The end: nothing, and the position stays. */
	pos = UINT64_MAX - 1;
	assert_int_equal(bm_queue_scan_log(q, &pos, 10, on_log_rec, &c), 0);
	assert_int_equal(pos, UINT64_MAX - 1);
	assert_int_equal(bm_queue_locate(q, "user-2", 300, &pos), BM_ERANGE);
	assert_int_equal(bm_queue_locate(q, "nobody", 0, &pos), BM_ENOENT);
	assert_int_equal(bm_queue_scan_log(q, &pos, 0, on_log_rec, &c), BM_EINVAL);
	assert_int_equal(bm_queue_scan_log(q, &pos, 70000, on_log_rec, &c), BM_EINVAL);
	assert_int_equal(bm_queue_scan_log(q, NULL, 10, on_log_rec, &c), BM_EINVAL);
	assert_int_equal(bm_queue_close(q), 0);

	/* Appended but not yet durable (the group window holds it): not
	 * visited.  The first append after open finds the disk idle and is
	 * synced at once; the next ones wait for the window. */
	qt_rmtree(f->dir);
	f->o.segment_bytes = 1 << 20;
	f->o.group_window_us = 3000000;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	put(q, 0, 1);
	assert_int_equal(bm_queue_sync(q), 0);
	put(q, 0, 2);
	put(q, 0, 3);
	memset(&c, 0, sizeof(c));
	c.streams = 1;
	c.next_o = 1;
	assert_int_equal(scan_log_all(q, 0, 100, &c), 0);
	assert_int_equal(c.count, 1);
	assert_int_equal(bm_queue_sync(q), 0);
	memset(&c, 0, sizeof(c));
	c.streams = 1;
	c.next_o = 1;
	assert_int_equal(scan_log_all(q, 0, 100, &c), 0);
	assert_int_equal(c.count, 3);
	assert_int_equal(bm_queue_close(q), 0);

	/* A damaged header in the checkpointed log (open does not read it):
	 * the records before it are visited, then BM_ECORRUPT. */
	assert_int_equal(qt_segment(f->dir, 0, seg, sizeof(seg)), 1);
	/* STREAM record "user-0" (56 + 6 bytes), offset 1, offset 2: flip the
	 * stream id of offset 2's header. */
	flip_byte(seg, 62 + 56 + (long long)qt_payload_len(0, 1) + 16);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	memset(&c, 0, sizeof(c));
	c.streams = 1;
	c.next_o = 1;
	assert_int_equal(bm_queue_scan_log(q, &p0, 100, on_log_rec, &c), BM_ECORRUPT);
	assert_int_equal(c.count, 1);
	assert_int_equal(bm_queue_close(q), 0);
}

static void test_missing_files(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	char seg[4096], ck[4096];
	int nseg;

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 100);
	assert_int_equal(bm_queue_close(q), 0);
	nseg = qt_segment(f->dir, 0, NULL, 0);
	assert_true(nseg > 4);

	/* A missing middle segment. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	qt_segment(f->dir2, 2, seg, sizeof(seg));
	unlink(seg);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	qt_rmtree(f->dir2);

	/* A truncated sealed segment. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	qt_segment(f->dir2, 1, seg, sizeof(seg));
	assert_int_equal(truncate(seg, qt_filesize(seg) - 10), 0);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	qt_rmtree(f->dir2);

	/* The last segment shorter than the checkpoint says (synced data lost). */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	qt_segment(f->dir2, nseg - 1, seg, sizeof(seg));
	assert_int_equal(truncate(seg, qt_filesize(seg) / 2), 0);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	qt_rmtree(f->dir2);

	/* The first segment missing and no checkpoint: cannot rebuild. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	qt_segment(f->dir2, 0, seg, sizeof(seg));
	unlink(seg);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	snprintf(ck, sizeof(ck), "%s/checkpoint", f->dir2);
	unlink(ck);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	qt_rmtree(f->dir2);

	/* Every segment missing, checkpoint present. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	for (int i = 0; i < nseg; i++) {
		qt_segment(f->dir2, 0, seg, sizeof(seg));
		unlink(seg);
	}
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), BM_ECORRUPT);
	qt_rmtree(f->dir2);

	/* Only the checkpoint missing: rebuilt from the log. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	snprintf(ck, sizeof(ck), "%s/checkpoint", f->dir2);
	unlink(ck);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	check_all(q, 3, 100);
	assert_int_equal(bm_queue_close(q), 0);

	/* Options are checked. */
	f->o.segment_bytes = 10;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), BM_EINVAL);
}

/* Sealed segments carry a sparse index file; a missing or damaged one is
 * rebuilt from its segment at open, and the data reads the same. */
static void test_segment_index_files(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	char seg[4096], idx[4096];
	int nseg;

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 200);
	assert_int_equal(bm_queue_close(q), 0);
	nseg = qt_segment(f->dir, 0, NULL, 0);
	assert_true(nseg > 10);
	for (int i = 0; i < nseg - 1; i++) {
		qt_segment(f->dir, i, seg, sizeof(seg));
		snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
		assert_true(qt_filesize(idx) >= 52);   /* sealed: has an index */
	}
	/* Lose one index, damage another, truncate a third. */
	qt_segment(f->dir, 1, seg, sizeof(seg));
	snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
	unlink(idx);
	qt_segment(f->dir, 3, seg, sizeof(seg));
	snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
	flip_byte(idx, qt_filesize(idx) - 10);
	qt_segment(f->dir, 5, seg, sizeof(seg));
	snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
	assert_int_equal(truncate(idx, 30), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	check_all(q, 3, 200);
	fill(q, 0, 0);
	put(q, 2, 201);
	assert_int_equal(bm_queue_close(q), 0);
	qt_segment(f->dir, 1, seg, sizeof(seg));
	snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
	assert_true(qt_filesize(idx) >= 52);        /* rebuilt */
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	check_all(q, 2, 200);
	check(q, 2, 201);
	assert_int_equal(bm_queue_close(q), 0);
}

/* A damaged sealed segment whose index file is lost: open still works (the
 * index of the affected streams is dropped), undamaged records read, damaged
 * ones say BM_ECORRUPT, and the queue reopens again. */
static void test_damaged_sealed_without_index(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_buf b = BM_BUF_INIT;
	char seg[4096], idx[4096];
	int ok = 0, bad = 0;

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 3, 150);
	assert_int_equal(bm_queue_close(q), 0);
	qt_segment(f->dir, 2, seg, sizeof(seg));
	snprintf(idx, sizeof(idx), "%.*s.idx", (int)(strlen(seg) - 4), seg);
	unlink(idx);
	flip_byte(seg, 100);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
		for (unsigned s = 0; s < 3; s++) {
			char name[16];
			snprintf(name, sizeof(name), "user-%u", s);
			for (uint64_t o = 1; o <= 150; o++) {
				int rc = bm_queue_read(q, name, o, &b, NULL);
				assert_true(rc == 0 || rc == BM_ECORRUPT);
				if (rc)
					bad++;
				else
					ok++;
			}
		}
		check(q, 0, 150);
		assert_int_equal(bm_queue_close(q), 0);
	}
	assert_true(bad > 0);
	assert_true(ok > bad);
	bm_buf_release(&b);
}

/* A crash between the retention checkpoint and the unlinks leaves old
 * segments behind: open deletes them and everything reads as before. */
static void test_retention_leftovers(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	char ck[4096], ck2[4096];
	static uint8_t buf[1 << 20];
	ssize_t n;
	int fd;
	uint64_t head, first;
	int before;

	f->o.segment_bytes = 8192;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 2, 100);
	assert_int_equal(bm_queue_sync(q), 0);
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);  /* all segments */
	before = qt_segment(f->dir2, 0, NULL, 0);
	f->o.retention_bytes = 20000;
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	assert_true(bm_queue_retain(q) > 0);
	assert_int_equal(bm_queue_stream_head(q, "user-1", &head, &first), 0);
	assert_int_equal(bm_queue_close(q), 0);
	/* The copy: old segments plus the new checkpoint. */
	snprintf(ck, sizeof(ck), "%s/checkpoint", f->dir);
	snprintf(ck2, sizeof(ck2), "%s/checkpoint", f->dir2);
	fd = open(ck, O_RDONLY);
	n = read(fd, buf, sizeof(buf));
	close(fd);
	assert_true(n > 0);
	fd = open(ck2, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(write(fd, buf, (size_t)n), n);
	close(fd);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	assert_true(qt_segment(f->dir2, 0, NULL, 0) < before);
	for (uint64_t o = first; o <= 100; o++)
		check(q, 1, o);
	assert_int_equal(bm_queue_close(q), 0);
}

static struct bm_queue *chain_q;
static int chain_left;

static void on_chain(void *ud, int status, uint64_t offset)
{
	assert_int_equal(status, 0);
	done_count++;
	/* A server acknowledging by appending state from the completion. */
	if (chain_left-- > 0)
		assert_int_equal(bm_queue_append(chain_q, "state", "ack", 3, NULL,
						 on_chain, NULL), 0);
}

/* Waits (bounded) until the active segment's file is longer than want. */
static long long wait_longer(const char *seg, long long want)
{
	long long size = qt_filesize(seg);

	for (int i = 0; i < 5000 && size <= want; i++) {
		struct pollfd p = { .fd = -1 };
		poll(&p, 0, 1);
		size = qt_filesize(seg);
	}
	return size;
}

/* The sync thread keeps the active segment extended with zeros; a crash
 * leaves them (recovery cuts them quietly, not as a torn tail), a seal and a
 * close cut them, and a torn record before them is still a torn tail. */
/* put(), through the sync thread: waits for the append's completion. */
static void put_wait(struct bm_queue *q, unsigned si, uint64_t want_off)
{
	char name[32];
	uint8_t buf[1024];
	size_t n = qt_payload_len(si, want_off);

	snprintf(name, sizeof(name), "user-%u", si);
	qt_payload(buf, n, si, want_off);
	reset_done();
	assert_int_equal(bm_queue_append(q, name, buf, n, NULL, on_done, (void *)(uintptr_t)1), 0);
	wait_done(q, 1);
	assert_int_equal(done_status, 0);
}

static void test_prealloc_tail(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;
	char seg[4096];
	long long size;
	uint64_t end;
	int fd;

	f->o.prealloc_bytes = 256 * 1024;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 1, 49);
	put_wait(q, 0, 50);
	bm_queue_stats(q, &st);
	end = st.appended_pos;
	assert_int_equal(qt_segment(f->dir, 0, seg, sizeof(seg)), 1);
	size = wait_longer(seg, (long long)end);
	assert_true(size >= (long long)end + 128 * 1024);
	/* A crash now: the copy has the zeros. */
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(qt_filesize(seg), (long long)end);

	assert_int_equal(qt_segment(f->dir2, 0, seg, sizeof(seg)), 1);
	assert_true(qt_filesize(seg) > (long long)end);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	bm_queue_stats(q, &st);
	assert_int_equal(st.truncated_bytes, 0);
	assert_int_equal(st.appended_pos, end);
	for (uint64_t i = 1; i <= 50; i++)
		check(q, 0, i);
	put_wait(q, 0, 51);
	check(q, 0, 51);
	bm_queue_stats(q, &st);
	end = st.appended_pos;
	size = wait_longer(seg, (long long)end);
	assert_true(size > (long long)end);
	/* A torn record in front of the zeros: a torn tail, counted. */
	fd = open(seg, O_WRONLY);
	assert_true(fd != -1);
	assert_int_equal(pwrite(fd, "\x42\x4d\x51\x52junk", 8, (off_t)end), 8);
	close(fd);
	qt_rmtree(f->dir);
	assert_int_equal(qt_copydir(f->dir2, f->dir), 0);
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	bm_queue_stats(q, &st);
	assert_true(st.truncated_bytes > 0);
	assert_int_equal(st.appended_pos, end);
	check(q, 0, 51);
	assert_int_equal(bm_queue_close(q), 0);

	/* Small segments: every sealed one ends where the next begins. */
	qt_rmtree(f->dir);
	f->o.segment_bytes = 64 * 1024;
	f->o.prealloc_bytes = 32 * 1024;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	for (uint64_t i = 1; i <= 600; i++) {
		if (i % 20)
			put(q, 0, i);
		else
			put_wait(q, 0, i);
	}
	{
		int n = qt_segment(f->dir, 0, NULL, 0);
		char next[4096];
		assert_true(n > 2);
		for (int i = 0; i + 1 < n; i++) {
			qt_segment(f->dir, i, seg, sizeof(seg));
			qt_segment(f->dir, i + 1, next, sizeof(next));
			assert_int_equal(strtoull(strrchr(seg, '/') + 1, NULL, 10) +
					 (uint64_t)qt_filesize(seg),
					 strtoull(strrchr(next, '/') + 1, NULL, 10));
		}
	}
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	for (uint64_t i = 1; i <= 600; i++)
		check(q, 0, i);
	assert_int_equal(bm_queue_close(q), 0);
}

static void test_close_runs_chained_completions(void **state)
{
	struct fx *f = *state;
	uint64_t head;

	reset_done();
	chain_left = 3;
	assert_int_equal(bm_queue_open(&chain_q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_append(chain_q, "state", "x", 1, NULL, on_chain, NULL), 0);
	assert_int_equal(bm_queue_close(chain_q), 0);
	assert_int_equal(done_count, 4);
	assert_int_equal(bm_queue_open(&chain_q, f->dir, &f->o), 0);
	assert_int_equal(bm_queue_stream_head(chain_q, "state", &head, NULL), 0);
	assert_int_equal(head, 4);
	assert_int_equal(bm_queue_close(chain_q), 0);
}

/* Reopen after a crash replays only the tail written after the checkpoint. */
static void test_checkpoint_bounds_replay(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;
	struct bm_queue_stats st;

	f->o.checkpoint_bytes = 64 * 1024;
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	for (int round = 0; round < 20; round++) {
		for (unsigned s = 0; s < 10; s++)
			for (uint64_t o = 1; o <= 10; o++)
				put(q, s, (uint64_t)round * 10 + o);
		bm_queue_poll(q);
	}
	assert_int_equal(bm_queue_sync(q), 0);
	assert_int_equal(qt_copydir(f->dir, f->dir2), 0);   /* crash image */
	assert_int_equal(bm_queue_close(q), 0);
	assert_int_equal(bm_queue_open(&q, f->dir2, &f->o), 0);
	bm_queue_stats(q, &st);
	assert_true(st.recovered_bytes < 2 * 64 * 1024);
	assert_true(st.log_bytes > 5 * 64 * 1024);
	check_all(q, 10, 200);
	assert_int_equal(bm_queue_close(q), 0);
}

/* --- checkpoint versions ------------------------------------------------- */

static int logged_warn, logged_err;
static char logged_last[512];

static void count_log(enum bm_log_level level, const char *component, const char *msg,
		      void *ud)
{
	(void)component;
	(void)ud;
	if (level == BM_LOG_WARN)
		logged_warn++;
	else if (level == BM_LOG_ERROR)
		logged_err++;
	snprintf(logged_last, sizeof(logged_last), "%s", msg);
}

/* Rewrites the checkpoint's version (and its header CRC); with flip, also
 * one byte of its body (so that the body CRC fails).  Returns the old
 * version. */
static uint32_t ckpt_patch(const char *dir, uint32_t version, int flip)
{
	char path[4096];
	uint8_t h[64], b;
	uint32_t old, crc;
	int fd;

	snprintf(path, sizeof(path), "%s/checkpoint", dir);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	memcpy(&old, h + 4, 4);
	memcpy(h + 4, &version, 4);
	crc = bm_crc32c(0, h, 60);
	memcpy(h + 60, &crc, 4);
	assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
	if (flip) {
		assert_int_equal(pread(fd, &b, 1, 70), 1);
		b ^= 0x5a;
		assert_int_equal(pwrite(fd, &b, 1, 70), 1);
	}
	close(fd);
	return old;
}

/* Open with the log sink counting; the table must be whole either way. */
static void reopen_counting(struct fx *f, int expect_rebuild)
{
	struct bm_queue *q;
	struct bm_queue_stats st;

	logged_warn = logged_err = 0;
	logged_last[0] = 0;
	bm_log_set_level(BM_LOG_WARN);
	bm_log_set_sink(count_log, NULL);
	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	bm_log_set_sink(NULL, NULL);
	bm_log_set_level(getenv("BIMIP_TEST_VERBOSE") ? BM_LOG_DEBUG : (enum bm_log_level)-1);
	bm_queue_stats(q, &st);
	if (expect_rebuild)
		assert_true(st.recovered_bytes == st.log_bytes);
	else
		assert_true(st.recovered_bytes < st.log_bytes / 2);
	check_all(q, 4, 50);
	assert_int_equal(bm_queue_close(q), 0);
}

/* Checkpoints written before 2026-11-23 say version 1, in either layout:
 * the current one is read as it is; the older one (or a 1 that fails to
 * parse) and one from a newer build are rebuilt from the log with a
 * warning; only a damaged file of this version is an error. */
static void test_checkpoint_versions(void **state)
{
	struct fx *f = *state;
	struct bm_queue *q;

	assert_int_equal(bm_queue_open(&q, f->dir, &f->o), 0);
	fill(q, 4, 50);
	assert_int_equal(bm_queue_close(q), 0);   /* writes the checkpoint */

	/* The current layout labelled 1: used, nothing logged. */
	assert_int_equal(ckpt_patch(f->dir, 1, 0), 2);
	reopen_counting(f, 0);
	assert_int_equal(logged_warn + logged_err, 0);
	/* Nothing was appended, so the close left that file as it was. */
	assert_int_equal(ckpt_patch(f->dir, 2, 0), 1);

	/* A 1 that does not parse: the older layout, a warning. */
	ckpt_patch(f->dir, 1, 1);
	reopen_counting(f, 1);
	assert_int_equal(logged_err, 0);
	assert_int_equal(logged_warn, 2);   /* the layout, then the rebuild */
	assert_non_null(strstr(logged_last, "rebuilding the stream table"));

	/* From a newer build: a warning naming both versions. */
	ckpt_patch(f->dir, 3, 0);
	reopen_counting(f, 1);
	assert_int_equal(logged_err, 0);
	assert_int_equal(logged_warn, 2);

	/* This version, damaged: an error, then the rebuild. */
	ckpt_patch(f->dir, 2, 1);
	reopen_counting(f, 1);
	assert_int_equal(logged_err, 1);
	assert_int_equal(logged_warn, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c),
		cmocka_unit_test_setup_teardown(test_basic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_peek, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_streams_and_offsets, setup, teardown),
		cmocka_unit_test_setup_teardown(test_policies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_idle_disk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_window_rate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_cork, setup, teardown),
		cmocka_unit_test_setup_teardown(test_after, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_and_size_retention, setup, teardown),
		cmocka_unit_test_setup_teardown(test_age_retention, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destroy_torn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail_every_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flipped_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_files, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_bounds_replay, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retention_leftovers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_segment_index_files, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_sealed_without_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_runs_chained_completions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prealloc_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_versions, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
