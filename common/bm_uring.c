/*
 * bm_uring.c - batched non-blocking socket I/O over io_uring (bm_uring.h).
 *
 * The rings are shared with the kernel: the submission tail and the
 * completion head are ours (written with release), the submission head and
 * the completion tail the kernel's (read with acquire).
 */
#include "bm_uring.h"

#include "bm_err.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned wait, unsigned flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

void bm_uring_release(struct bm_uring *u)
{
	if (u->sqes && u->sqes != MAP_FAILED)
		munmap(u->sqes, u->sqes_len);
	if (u->cq_map && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
		munmap(u->cq_map, u->cq_map_len);
	if (u->sq_map && u->sq_map != MAP_FAILED)
		munmap(u->sq_map, u->sq_map_len);
	if (u->fd >= 0)
		close(u->fd);
	memset(u, 0, sizeof(*u));
	u->fd = -1;
}

int bm_uring_init(struct bm_uring *u, unsigned entries)
{
	/* Newest first: fewer interruptions for task work, one submitter. */
	static const unsigned flag_sets[] = {
		IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
		IORING_SETUP_SUBMIT_ALL,
		0,
	};
	struct io_uring_params p;
	uint8_t *sq;

	memset(u, 0, sizeof(*u));
	u->fd = -1;
	if (entries < 2 || entries > 4096 || (entries & (entries - 1)))
		return BM_EINVAL;
	for (size_t i = 0; i < sizeof(flag_sets) / sizeof(flag_sets[0]); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i];
		u->fd = sys_setup(entries, &p);
		if (u->fd >= 0 || errno != EINVAL)
			break;
	}
	if (u->fd < 0)
		return errno == ENOMEM ? BM_ENOMEM : BM_EUNAVAIL;
	u->entries = p.sq_entries;
	u->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	u->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if ((p.features & IORING_FEAT_SINGLE_MMAP) && u->cq_map_len > u->sq_map_len)
		u->sq_map_len = u->cq_map_len;
	u->sq_map = mmap(NULL, u->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			 u->fd, IORING_OFF_SQ_RING);
	if (u->sq_map == MAP_FAILED)
		goto fail;
	if (p.features & IORING_FEAT_SINGLE_MMAP) {
		u->cq_map = u->sq_map;
	} else {
		u->cq_map = mmap(NULL, u->cq_map_len, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_CQ_RING);
		if (u->cq_map == MAP_FAILED)
			goto fail;
	}
	u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
	u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		       u->fd, IORING_OFF_SQES);
	if (u->sqes == MAP_FAILED)
		goto fail;
	sq = u->sq_map;
	u->sq_head = (unsigned *)(sq + p.sq_off.head);
	u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	u->sq_array = (unsigned *)(sq + p.sq_off.array);
	u->cq_head = (unsigned *)((uint8_t *)u->cq_map + p.cq_off.head);
	u->cq_tail = (unsigned *)((uint8_t *)u->cq_map + p.cq_off.tail);
	u->cq_mask = (unsigned *)((uint8_t *)u->cq_map + p.cq_off.ring_mask);
	u->cqes = (struct io_uring_cqe *)((uint8_t *)u->cq_map + p.cq_off.cqes);
	return 0;
fail:
	bm_uring_release(u);
	return BM_ENOMEM;
}

static int prep(struct bm_uring *u, int op, int fd, const void *p, size_t n, int flags,
		uint64_t ud)
{
	unsigned tail, idx;
	struct io_uring_sqe *e;

	if (u->fd < 0)
		return BM_EINVAL;
	if (u->queued >= u->entries)
		return BM_EFULL;
	tail = *u->sq_tail;
	if (n > 0x7fffffffu)
		n = 0x7fffffffu;
	/* No operation outlives bm_uring_run, so slot i of the ring is free
	 * whenever i operations are queued. */
	idx = tail & *u->sq_mask;
	e = &u->sqes[idx];
	memset(e, 0, sizeof(*e));
	e->opcode = (uint8_t)op;
	e->fd = fd;
	e->addr = (uint64_t)(uintptr_t)p;
	e->len = (uint32_t)n;
	e->msg_flags = (uint32_t)flags;
	e->user_data = ud;
	u->sq_array[idx] = idx;
	__atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
	u->queued++;
	return 0;
}

int bm_uring_send(struct bm_uring *u, int fd, const void *p, size_t n, uint64_t ud)
{
	return prep(u, IORING_OP_SEND, fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL, ud);
}

int bm_uring_recv(struct bm_uring *u, int fd, void *p, size_t n, uint64_t ud)
{
	return prep(u, IORING_OP_RECV, fd, p, n, MSG_DONTWAIT, ud);
}

int bm_uring_run(struct bm_uring *u, void (*done)(void *arg, uint64_t ud, int res), void *arg)
{
	unsigned want = u->queued, got = 0;
	int rc = 0;

	if (!want)
		return 0;
	/* MSG_DONTWAIT completes every operation inside the call; waiting for
	 * all of them costs nothing and leaves none in flight. */
	while (got < want) {
		unsigned head = *u->cq_head;
		unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);

		if (head == tail) {
			int n = sys_enter(u->fd, u->queued, want - got, IORING_ENTER_GETEVENTS);
			if (n < 0) {
				if (errno == EINTR || errno == EAGAIN || errno == EBUSY)
					continue;
				rc = BM_EIO;
				break;
			}
			u->queued -= (unsigned)n <= u->queued ? (unsigned)n : u->queued;
			continue;
		}
		for (; head != tail && got < want; head++, got++) {
			const struct io_uring_cqe *c = &u->cqes[head & *u->cq_mask];
			uint64_t ud = c->user_data;
			int res = c->res;
			__atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
			done(arg, ud, res);
		}
	}
	return rc;
}
