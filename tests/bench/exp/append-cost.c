/*
 * append-cost.c - CPU of group-commit appends (docs/performance.md, seventh
 * session): N batches of BS bytes, each followed by fdatasync, with the file
 * kept extended with zeros 1 MiB ahead of the data, as bm_queue does.
 *
 *   cc -O2 -o append-cost append-cost.c && taskset -c 0 ./append-cost FILE MODE N BS
 *
 * MODE 0: buffered appends.  MODE 1: O_DIRECT, each batch rewriting the
 * partial tail block, zeros also written with O_DIRECT.  Prints CPU (user +
 * system) per batch and the mean and largest write+sync time.  FILE is
 * removed at the end.  Run it twice: the second run reuses the page-cache
 * pages the first one freed, which this VM makes much cheaper to touch.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cost.h"

#define ZCHUNK (64 * 1024)

int main(int argc, char **argv)
{
	size_t bs, pos = 0, zend = 0;
	double c0, lmax = 0, lsum = 0;
	char *buf, *zeros;
	int mode, n, fd;

	if (argc != 5 || (mode = atoi(argv[2])) < 0 || mode > 1 || (n = atoi(argv[3])) <= 0 ||
	    (bs = (size_t)atol(argv[4])) == 0 || bs > (1 << 21)) {
		fprintf(stderr, "usage: append-cost FILE MODE(0|1) N BS(<=2MiB)\n");
		return 2;
	}
	if (posix_memalign((void **)&buf, 4096, 1 << 22) ||
	    posix_memalign((void **)&zeros, 4096, ZCHUNK))
		return 1;
	memset(buf, 'r', 1 << 22);
	memset(zeros, 0, ZCHUNK);
	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | (mode ? O_DIRECT : 0), 0600);
	if (fd == -1)
		return perror("open"), 1;
	/* The first MiB of zeros before the clock starts. */
	for (; zend < (1 << 20); zend += ZCHUNK)
		if (pwrite(fd, zeros, ZCHUNK, (off_t)zend) != ZCHUNK)
			return perror("pwrite zeros"), 1;
	if (fdatasync(fd) == -1)
		return perror("fdatasync"), 1;
	c0 = cpu_us(1);
	for (int i = 0; i < n; i++) {
		double t = now_ms(), l;

		if (mode == 0) {
			if (pwrite(fd, buf, bs, (off_t)pos) != (ssize_t)bs)
				return perror("pwrite"), 1;
		} else {
			size_t start = pos & ~4095UL, end = (pos + bs + 4095) & ~4095UL;
			if (pwrite(fd, buf, end - start, (off_t)start) != (ssize_t)(end - start))
				return perror("pwrite"), 1;
		}
		pos += bs;
		if (fdatasync(fd) == -1)
			return perror("fdatasync"), 1;
		l = now_ms() - t;
		lsum += l;
		if (l > lmax)
			lmax = l;
		if (zend < pos + (1 << 19)) {
			size_t want = (pos + (1 << 20) + ZCHUNK - 1) / ZCHUNK * ZCHUNK;
			for (; zend < want; zend += ZCHUNK)
				if (pwrite(fd, zeros, ZCHUNK, (off_t)zend) != ZCHUNK)
					return perror("pwrite zeros"), 1;
			if (fdatasync(fd) == -1)
				return perror("fdatasync"), 1;
		}
	}
	c0 = cpu_us(1) - c0;
	printf("mode %d bs %zu: %d batches, CPU %.1f us per batch, write+sync mean %.3f max %.3f ms\n",
	       mode, bs, n, c0 / n, lsum / n, lmax);
	close(fd);
	unlink(argv[1]);
	return 0;
}
