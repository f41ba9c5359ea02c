#include "bm_crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define HAVE_HW_CRC 1
#endif

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static int use_hw;

static void init_tables(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			table[t][i] = (table[t - 1][i] >> 8) ^
				      table[0][table[t - 1][i] & 0xff];
#ifdef HAVE_HW_CRC
	__builtin_cpu_init();
	use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t bm_crc32c_sw(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;

	pthread_once(&table_once, init_tables);
	crc = ~crc;
	while (n && ((uintptr_t)b & 7)) {
		crc = table[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
		n--;
	}
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, b, 8);   /* little-endian hosts only (see bm_queue.c) */
		w ^= crc;
		crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
		      table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
		      table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
		      table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
		b += 8;
		n -= 8;
	}
	while (n--)
		crc = table[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#ifdef HAVE_HW_CRC
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t c = ~crc;

	while (n && ((uintptr_t)b & 7)) {
		c = _mm_crc32_u8((uint32_t)c, *b++);
		n--;
	}
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, b, 8);
		c = _mm_crc32_u64(c, w);
		b += 8;
		n -= 8;
	}
	while (n--)
		c = _mm_crc32_u8((uint32_t)c, *b++);
	return ~(uint32_t)c;
}
#endif

uint32_t bm_crc32c(uint32_t crc, const void *p, size_t n)
{
	pthread_once(&table_once, init_tables);
#ifdef HAVE_HW_CRC
	if (use_hw)
		return crc_hw(crc, p, n);
#endif
	return bm_crc32c_sw(crc, p, n);
}
