/* bm_uring: batched non-blocking sends and receives through io_uring. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_uring.h"

#define MAXOPS 64

struct results {
	int n;
	uint64_t ud[MAXOPS];
	int res[MAXOPS];
};

static void done(void *arg, uint64_t ud, int res)
{
	struct results *r = arg;

	assert_true(r->n < MAXOPS);
	r->ud[r->n] = ud;
	r->res[r->n] = res;
	r->n++;
}

static int res_of(const struct results *r, uint64_t ud)
{
	int found = 0, res = 0;

	for (int i = 0; i < r->n; i++)
		if (r->ud[i] == ud) {
			found++;
			res = r->res[i];
		}
	assert_int_equal(found, 1);   /* each operation reported exactly once */
	return res;
}

static void pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
}

/* A kernel without io_uring (or with it disabled) is a supported case:
 * the callers fall back to read()/write(). */
static int ring_or_skip(struct bm_uring *u, unsigned entries)
{
	int rc = bm_uring_init(u, entries);

	if (rc == BM_EUNAVAIL) {
		printf("# io_uring unavailable here: skipped\n");
		return -1;
	}
	assert_int_equal(rc, 0);
	assert_true(u->fd >= 0);
	return 0;
}

static void test_bad_sizes(void **state)
{
	struct bm_uring u;

	(void)state;
	assert_int_equal(bm_uring_init(&u, 0), BM_EINVAL);
	assert_int_equal(u.fd, -1);
	assert_int_equal(bm_uring_init(&u, 3), BM_EINVAL);
	assert_int_equal(bm_uring_init(&u, 8192), BM_EINVAL);
	/* Released twice, or never set up: harmless. */
	bm_uring_release(&u);
	bm_uring_release(&u);
	assert_int_equal(bm_uring_send(&u, 0, "x", 1, 1), BM_EINVAL);
	assert_int_equal(bm_uring_run(&u, done, NULL), 0);
}

static void test_sends_and_receives(void **state)
{
	struct bm_uring u;
	struct results r;
	int sv[8][2];
	char msg[8][32], buf[8][64];

	(void)state;
	if (ring_or_skip(&u, 16))
		return;
	for (int i = 0; i < 8; i++) {
		pair(sv[i]);
		snprintf(msg[i], sizeof(msg[i]), "message %d to socket %d", i * 7, i);
	}
	/* Eight sends in one call. */
	for (int i = 0; i < 8; i++)
		assert_int_equal(bm_uring_send(&u, sv[i][0], msg[i], strlen(msg[i]), 100 + (uint64_t)i), 0);
	assert_int_equal(bm_uring_queued(&u), 8);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	assert_int_equal(r.n, 8);
	assert_int_equal(bm_uring_queued(&u), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(res_of(&r, 100 + (uint64_t)i), (int)strlen(msg[i]));

	/* Eight receives in one call, each into its own buffer: what the
	 * sends put there. */
	for (int i = 0; i < 8; i++)
		assert_int_equal(bm_uring_recv(&u, sv[i][1], buf[i], sizeof(buf[i]), (uint64_t)i), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	assert_int_equal(r.n, 8);
	for (int i = 0; i < 8; i++) {
		int n = res_of(&r, (uint64_t)i);
		assert_int_equal(n, (int)strlen(msg[i]));
		assert_memory_equal(buf[i], msg[i], (size_t)n);
	}

	/* Nothing to read: -EAGAIN at once, never a wait.  The peer gone:
	 * 0, end of stream. */
	close(sv[1][0]);
	assert_int_equal(bm_uring_recv(&u, sv[0][1], buf[0], sizeof(buf[0]), 1), 0);
	assert_int_equal(bm_uring_recv(&u, sv[1][1], buf[1], sizeof(buf[1]), 2), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	assert_int_equal(res_of(&r, 1), -EAGAIN);
	assert_int_equal(res_of(&r, 2), 0);
	sv[1][0] = -1;

	/* Running with nothing queued is free. */
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	for (int i = 0; i < 8; i++) {
		if (sv[i][0] >= 0)
			close(sv[i][0]);
		close(sv[i][1]);
	}
	bm_uring_release(&u);
	assert_int_equal(u.fd, -1);
}

/* A full socket answers -EAGAIN (with MSG_DONTWAIT the kernel never parks
 * the send); a short send reports what went. */
static void test_full_socket_and_errors(void **state)
{
	struct bm_uring u;
	struct results r;
	static char big[1 << 20];
	int sv[2], closed[2], n = 0, got;
	ssize_t w;

	(void)state;
	if (ring_or_skip(&u, 4))
		return;
	pair(sv);
	memset(big, 'b', sizeof(big));
	while ((w = write(sv[0], big, 4096)) > 0)
		n += (int)w;
	assert_true(n > 0);
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(bm_uring_send(&u, sv[0], big, 4096, 7), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	assert_int_equal(res_of(&r, 7), -EAGAIN);

	/* Drain a little, then offer more than fits: a short count. */
	got = (int)read(sv[1], big, 65536);
	assert_true(got > 0);
	assert_int_equal(bm_uring_send(&u, sv[0], big, sizeof(big), 8), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	got = res_of(&r, 8);
	assert_true(got > 0 && got < (int)sizeof(big));

	/* A socket whose peer is gone: -EPIPE, no SIGPIPE (the test would die). */
	pair(closed);
	close(closed[1]);
	assert_int_equal(bm_uring_send(&u, closed[0], "x", 1, 9), 0);
	/* Not a descriptor at all: -EBADF, reported like any result. */
	assert_int_equal(bm_uring_send(&u, 1 << 20, "x", 1, 10), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(bm_uring_run(&u, done, &r), 0);
	assert_int_equal(res_of(&r, 9), -EPIPE);
	assert_int_equal(res_of(&r, 10), -EBADF);
	close(closed[0]);
	close(sv[0]);
	close(sv[1]);
	bm_uring_release(&u);
}

/* The ring takes as many operations as it has entries; the caller runs
 * them and goes on. */
static void test_ring_full(void **state)
{
	struct bm_uring u;
	struct results r;
	int sv[2];
	char buf[16];

	(void)state;
	if (ring_or_skip(&u, 2))
		return;
	pair(sv);
	for (int round = 0; round < 50; round++) {
		assert_int_equal(bm_uring_send(&u, sv[0], "ab", 2, 1), 0);
		assert_int_equal(bm_uring_send(&u, sv[0], "cd", 2, 2), 0);
		assert_int_equal(bm_uring_send(&u, sv[0], "ef", 2, 3), BM_EFULL);
		memset(&r, 0, sizeof(r));
		assert_int_equal(bm_uring_run(&u, done, &r), 0);
		assert_int_equal(r.n, 2);
		/* Completions come in submission order for one socket. */
		assert_int_equal(read(sv[1], buf, sizeof(buf)), 4);
		assert_memory_equal(buf, "abcd", 4);
	}
	close(sv[0]);
	close(sv[1]);
	bm_uring_release(&u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_sends_and_receives),
		cmocka_unit_test(test_full_socket_and_errors),
		cmocka_unit_test(test_ring_full),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
