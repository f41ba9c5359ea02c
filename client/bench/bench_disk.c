/*
 * bench_disk.c - `bimip-bench disk`: the latency of one durable write on
 * the disk under --dir, the floor under any durable answer.
 *
 * A chat message is answered once its record is on disk, so no send-to-
 * receipt latency can be below one write + fdatasync on the server's disk.
 * This mode measures that floor the way the queue writes in steady state:
 * the file is first extended with zeros and synced (as the queue's
 * preallocation does), then --size bytes are written over the zeros and
 * fdatasync'ed, one write every --gap-us (the group window's rhythm), until
 * -n writes or -t seconds, whichever comes first.  It prints
 *
 *   disk dir=D size=B n=N gap_us=G fsync_p50=..ms fsync_p99=..ms
 *        fsync_p999=..ms max=..ms
 *
 * The file is removed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bm_time.h"

static double pct_ms(const uint64_t *v, size_t n, double p)
{
	return (double)bench_quantile(v, n, p) / 1e6;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bimip-bench disk --dir DIR [-n N] [-t SECONDS] [--size BYTES] [--gap-us US]\n"
		   "  --dir D       directory on the disk to measure (the server's data_dir)\n"
		   "  -n N          writes, at most (default 3000, 1..100000)\n"
		   "  -t S          seconds, at most (default 3, 1..600)\n"
		   "  --size B      bytes per write (default 4096, 1..1048576)\n"
		   "  --gap-us G    pause between writes (default 1000, 0..1000000)\n");
}

int bench_disk_main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dir", required_argument, 0, 'd' },
		{ "size", required_argument, 0, 's' },
		{ "gap-us", required_argument, 0, 'g' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *dir = NULL;
	long n = 3000, secs = 3, size = 4096, gap = 1000;
	char path[4096];
	uint64_t *lat = NULL, t_end;
	char *buf = NULL;
	size_t done = 0, span;
	int c, fd = -1, rc = 1;

	optind = 1;
	while ((c = getopt_long(argc, argv, "n:t:h", lo, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 'n': n = atol(optarg); break;
		case 't': secs = atol(optarg); break;
		case 's': size = atol(optarg); break;
		case 'g': gap = atol(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!dir || n < 1 || n > 100000 || secs < 1 || secs > 600 || size < 1 ||
	    size > 1048576 || gap < 0 || gap > 1000000) {
		usage(stderr);
		return 2;
	}
	if (snprintf(path, sizeof(path), "%s/bimip-bench-disk.%ld", dir, (long)getpid()) >=
	    (int)sizeof(path)) {
		fprintf(stderr, "bimip-bench: --dir too long\n");
		return 2;
	}
	/* The writes cycle over a span of at most 16 MiB of zeros. */
	span = (size_t)size * (size_t)n;
	if (span > (16u << 20))
		span = (16u << 20) / (size_t)size * (size_t)size;
	lat = calloc((size_t)n, sizeof(*lat));
	buf = calloc(1, (size_t)size > 65536 ? (size_t)size : 65536);
	if (!lat || !buf) {
		fprintf(stderr, "bimip-bench: out of memory\n");
		goto out;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		fprintf(stderr, "bimip-bench: cannot create '%s': %s\n", path, strerror(errno));
		goto out;
	}
	for (size_t off = 0; off < span; off += 65536) {
		size_t len = span - off < 65536 ? span - off : 65536;
		if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len)
			goto io_err;
	}
	if (fdatasync(fd) == -1)
		goto io_err;
	memset(buf, 'x', (size_t)size);
	t_end = bm_mono_ns() + (uint64_t)secs * 1000000000u;
	while (done < (size_t)n && bm_mono_ns() < t_end) {
		off_t off = (off_t)((done * (size_t)size) % span);
		uint64_t t0 = bm_mono_ns();

		if (pwrite(fd, buf, (size_t)size, off) != (ssize_t)size || fdatasync(fd) == -1)
			goto io_err;
		lat[done++] = bm_mono_ns() - t0;
		if (gap) {
			struct timespec ts = { gap / 1000000, gap % 1000000 * 1000 };
			nanosleep(&ts, NULL);
		}
	}
	if (!done) {
		fprintf(stderr, "bimip-bench: no write finished in %ld s\n", secs);
		goto out;
	}
	qsort(lat, done, sizeof(*lat), bench_cmp_u64);
	printf("disk dir=%s size=%ld n=%zu gap_us=%ld fsync_p50=%.3fms fsync_p99=%.3fms "
	       "fsync_p999=%.3fms max=%.3fms\n",
	       dir, size, done, gap, pct_ms(lat, done, 0.50), pct_ms(lat, done, 0.99),
	       pct_ms(lat, done, 0.999), (double)lat[done - 1] / 1e6);
	rc = 0;
	goto out;
io_err:
	fprintf(stderr, "bimip-bench: write or fdatasync of '%s': %s\n", path, strerror(errno));
out:
	if (fd != -1) {
		close(fd);
		unlink(path);
	}
	free(lat);
	free(buf);
	return rc;
}
