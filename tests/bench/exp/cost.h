/* cost.h - the clocks fsync-cost.c and append-cost.c read (header only, so
 * that each still builds alone with `cc -O2 -o x x.c`). */
#ifndef BENCH_EXP_COST_H
#define BENCH_EXP_COST_H

#include <sys/resource.h>
#include <time.h>

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* CPU this process has spent: system time, plus user time if user_too. */
static double cpu_us(int user_too)
{
	struct rusage r;
	double us;

	getrusage(RUSAGE_SELF, &r);
	us = r.ru_stime.tv_sec * 1e6 + r.ru_stime.tv_usec;
	if (user_too)
		us += r.ru_utime.tv_sec * 1e6 + r.ru_utime.tv_usec;
	return us;
}

#endif
