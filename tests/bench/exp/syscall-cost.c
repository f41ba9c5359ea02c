/*
 * syscall-cost.c - ns per system call on this machine: getppid (entry and
 * exit only) and poll of one idle eventfd with timeout 0 (what libzmq does
 * each time a socket is asked for input it does not have).
 * docs/performance.md, ninth session.
 *
 *   cc -O2 -o /tmp/syscall-cost tests/bench/exp/syscall-cost.c && taskset -c 0 /tmp/syscall-cost
 */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void)
{
	const int n = 1000000;
	struct pollfd p = { .events = POLLIN };
	double t;

	t = now();
	for (int i = 0; i < n; i++)
		syscall(SYS_getppid);
	printf("getppid %.0f ns\n", (now() - t) / n * 1e9);
	p.fd = eventfd(0, EFD_NONBLOCK);
	if (p.fd == -1)
		return 1;
	t = now();
	for (int i = 0; i < n; i++)
		poll(&p, 1, 0);
	printf("poll(eventfd, 0) %.0f ns\n", (now() - t) / n * 1e9);
	return 0;
}
