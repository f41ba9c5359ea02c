/*
 * bm_time.h - monotonic and wall clocks.
 *
 * Monotonic time for timeouts and latencies; wall time (Unix milliseconds,
 * seed 001 section 6) only for timestamps that leave the process.  Tests may
 * replace both with bm_time_set_fake() to step time deterministically.
 */
#ifndef BM_TIME_H
#define BM_TIME_H

#include <stdint.h>

uint64_t bm_mono_ns(void);
uint64_t bm_mono_ms(void);
int64_t bm_wall_ms(void);
/* The wall clock as the kernel last ticked it (CLOCK_REALTIME_COARSE):
 * a few ms behind at most (the tick), a memory read instead of ~26 ns of
 * clock read on a VM's paravirtual clock.  For timestamps that only need
 * the millisecond roughly: a queue record's append time. */
int64_t bm_wall_ms_coarse(void);
int64_t bm_wall_s(void);

/* Fake clock for tests: when on, every function above returns values derived
 * from *mono_ns and *wall_ms (borrowed; may be changed between calls).
 * Pass NULLs to return to the real clocks. */
void bm_time_set_fake(const uint64_t *mono_ns, const int64_t *wall_ms);

#endif
