/*
 * fsync-cost.c - CPU and latency of one 4 KiB write made durable, four ways
 * (docs/performance.md, seventh session).
 *
 *   cc -O2 -o fsync-cost fsync-cost.c && taskset -c 0 ./fsync-cost FILE MODE
 *
 * MODE 0: buffered pwrite + fdatasync; 1: O_DIRECT pwrite + fdatasync;
 * 2: O_DIRECT|O_DSYNC pwrite; 3: buffered pwritev2(RWF_DSYNC).  3000 writes
 * into a 64 MiB file filled with zeros first; prints latency percentiles and
 * system CPU per write.  FILE is removed at the end.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cost.h"

#define N  3000
#define SZ 4096

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static double lat[N];
	int mode, fd, flags = O_RDWR;
	char *buf, *zeros;
	double c0;

	if (argc != 3 || (mode = atoi(argv[2])) < 0 || mode > 3) {
		fprintf(stderr, "usage: fsync-cost FILE MODE(0-3)\n");
		return 2;
	}
	if (posix_memalign((void **)&buf, 4096, SZ) || !(zeros = calloc(1, 1 << 20)))
		return 1;
	memset(buf, 'a', SZ);
	fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd == -1)
		return perror("open"), 1;
	for (int i = 0; i < 64; i++)
		if (write(fd, zeros, 1 << 20) != 1 << 20)
			return perror("write"), 1;
	fsync(fd);
	close(fd);
	if (mode == 1 || mode == 2)
		flags |= O_DIRECT;
	if (mode == 2)
		flags |= O_DSYNC;
	fd = open(argv[1], flags);
	if (fd == -1)
		return perror("open"), 1;
	c0 = cpu_us(0);
	for (int i = 0; i < N; i++) {
		double t = now_ms();
		off_t off = (off_t)i * SZ;

		if (mode == 3) {
			struct iovec v = { buf, SZ };
			if (pwritev2(fd, &v, 1, off, RWF_DSYNC) != SZ)
				return perror("pwritev2"), 1;
		} else {
			if (pwrite(fd, buf, SZ, off) != SZ)
				return perror("pwrite"), 1;
			if (mode != 2 && fdatasync(fd) == -1)
				return perror("fdatasync"), 1;
		}
		lat[i] = now_ms() - t;
	}
	c0 = cpu_us(0) - c0;
	qsort(lat, N, sizeof(lat[0]), cmp);
	printf("mode %d: p50 %.3f p90 %.3f p99 %.3f p999 %.3f ms, system CPU %.1f us per write\n",
	       mode, lat[N / 2], lat[N * 9 / 10], lat[N * 99 / 100], lat[N * 999 / 1000], c0 / N);
	close(fd);
	unlink(argv[1]);
	return 0;
}
