/*
 * bench.h - modes of bimip-bench.  Each mode is one function taking the
 * arguments after the mode name (argv[0] is the mode name) and returning
 * the process exit status.  Add a mode: write bench_<name>.c here and one
 * row in the table of main.c.
 *
 * Output convention: one line per measurement, "key=value" pairs separated
 * by spaces, the first pair naming the measurement, so that scripts can grep
 * and compare runs; free text only on lines starting with '#'.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>

int bench_queue_main(int argc, char **argv);
int bench_disk_main(int argc, char **argv);
/* connections, pairs, fanout (bench_load.c); argv[0] picks the mode. */
int bench_load_main(int argc, char **argv);

/* qsort comparator of uint64_t, ascending (latency samples). */
int bench_cmp_u64(const void *a, const void *b);
/* The p-quantile (0 <= p <= 1) of n > 0 samples sorted ascending: the
 * sample at index floor(p * n), the last one for p = 1. */
uint64_t bench_quantile(const uint64_t *sorted, size_t n, double p);

#endif
