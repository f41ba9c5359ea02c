#include "bm_time.h"

#include <stddef.h>
#include <time.h>

static const uint64_t *fake_mono;
static const int64_t *fake_wall;

void bm_time_set_fake(const uint64_t *mono_ns, const int64_t *wall_ms)
{
	fake_mono = mono_ns;
	fake_wall = wall_ms;
}

uint64_t bm_mono_ns(void)
{
	struct timespec ts;

	if (fake_mono)
		return *fake_mono;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bm_mono_ms(void)
{
	return bm_mono_ns() / 1000000u;
}

static int64_t wall_ms(clockid_t clock)
{
	struct timespec ts;

	if (fake_wall)
		return *fake_wall;
	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t bm_wall_ms(void)
{
	return wall_ms(CLOCK_REALTIME);
}

int64_t bm_wall_ms_coarse(void)
{
	return wall_ms(CLOCK_REALTIME_COARSE);
}

int64_t bm_wall_s(void)
{
	return bm_wall_ms() / 1000;
}
