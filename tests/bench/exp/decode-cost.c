/*
 * decode-cost.c: ns per decode of the chat envelope bimip-bench sends (a
 * 104-byte text_payload_request), through bm_env_decode (its fast path)
 * and through nanopb alone (bm_env_decode_nanopb).  Build after `make`:
 *
 *   cc -O2 -Icommon -Ibuild/gen -o /tmp/decode-cost tests/bench/exp/decode-cost.c \
 *      build/release/libbm_common.a build/release/libbm_proto.a -l:libprotobuf-nanopb.a
 *   taskset -c 1 /tmp/decode-cost
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bm_env.h"

static uint8_t e[512];
static size_t n;

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void varint(uint64_t x)
{
	do {
		e[n++] = (uint8_t)((x & 0x7f) | (x > 0x7f ? 0x80 : 0));
		x >>= 7;
	} while (x);
}

static void field(unsigned f, const void *p, size_t l)
{
	varint((uint64_t)f << 3 | 2);
	varint(l);
	memcpy(e + n, p, l);
	n += l;
}

int main(void)
{
	static bimip_MessageScheme m;
	uint8_t from[64], to[64], req[300];
	size_t fl, tl, rl;
	const int N = 2000000;

	n = 0;
	field(1, "b5d9a6fb18-s0@bench", 19);
	field(2, "d", 1);
	memcpy(from, e, fl = n);
	n = 0;
	field(1, "b5d9a6fb18-r0@bench", 19);
	memcpy(to, e, tl = n);
	n = 0;
	field(1, from, fl);
	field(2, to, tl);
	field(3, "01234567890123456789", 20);
	field(4, "00000052795598019618", 20);
	varint(6 << 3);
	varint(1763900000000ull);
	memcpy(req, e, rl = n);
	n = 0;
	varint(1 << 3);
	varint(14);
	field(14, req, rl);
	for (int k = 0; k < 3; k++) {
		double t0 = now_ns(), t1, t2;

		for (int i = 0; i < N; i++)
			if (bm_env_decode(e, n, &m, NULL))
				return 1;
		t1 = now_ns();
		for (int i = 0; i < N; i++)
			if (bm_env_decode_nanopb(e, n, &m, NULL))
				return 1;
		t2 = now_ns();
		printf("%zu-byte envelope: bm_env_decode %.0f ns, nanopb alone %.0f ns per decode\n",
		       n, (t1 - t0) / N, (t2 - t1) / N);
	}
	return 0;
}
