/*
 * bm_uring.h - many non-blocking socket sends or receives in one system call.
 *
 * A thin layer over the kernel's io_uring (raw system calls and
 * <linux/io_uring.h>; no liburing).  It is used for one thing: the edge
 * writes every session's output at the end of a loop turn, and reads the
 * sessions epoll found readable, each of which was one write() or read()
 * before.  On this kind of VM a system call's entry and exit cost about as
 * much as the loopback TCP work it does (docs/performance.md), so N writes
 * in one io_uring_enter save N - 1 of them.
 *
 * Every operation carries MSG_DONTWAIT, so the kernel completes it while
 * submitting (with the bytes, or -EAGAIN): bm_uring_run returns with every
 * completion delivered and nothing left in flight, and the caller's buffers
 * are free again.  Nothing is asynchronous beyond the one call.
 *
 * When the kernel has no io_uring (or it is disabled: sysctl
 * kernel.io_uring_disabled, seccomp), bm_uring_init fails and the caller
 * keeps its plain system calls.  Not thread-safe: one ring per thread.
 */
#ifndef BM_URING_H
#define BM_URING_H

#include <stddef.h>
#include <stdint.h>

struct bm_uring {
	int fd;                     /* -1: not set up */
	unsigned entries;           /* submission queue size */
	unsigned queued;            /* prepared, not yet submitted */
	/* submission ring */
	unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
	struct io_uring_sqe *sqes;
	/* completion ring */
	unsigned *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
	void *sq_map, *cq_map;
	size_t sq_map_len, cq_map_len, sqes_len;
};

/* Set up a ring for up to entries (a power of two, 2..4096) operations per
 * bm_uring_run.  Returns 0, BM_EUNAVAIL when the kernel refuses io_uring,
 * BM_EINVAL or BM_ENOMEM.  u->fd is -1 after a failure. */
int bm_uring_init(struct bm_uring *u, unsigned entries);
void bm_uring_release(struct bm_uring *u);

/* Queue a send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) or a recv(fd, p, n,
 * MSG_DONTWAIT), reported to bm_uring_run's callback with ud.  p must stay
 * valid until bm_uring_run returns.  Returns 0, or BM_EFULL when entries
 * are queued already (run them first). */
int bm_uring_send(struct bm_uring *u, int fd, const void *p, size_t n, uint64_t ud);
int bm_uring_recv(struct bm_uring *u, int fd, void *p, size_t n, uint64_t ud);

/* Operations queued and not yet run. */
static inline unsigned bm_uring_queued(const struct bm_uring *u) { return u->queued; }

/* Submit what is queued in one system call and call done(arg, ud, res) for
 * each operation, res being what send/recv would return, or -errno.
 * done must not queue operations.  Returns 0, or a BM_ error when the
 * ring itself failed: the operations not reported may not have run, and
 * the ring is to be released. */
int bm_uring_run(struct bm_uring *u, void (*done)(void *arg, uint64_t ud, int res), void *arg);

#endif
