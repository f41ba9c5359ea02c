/*
 * bm_crc32c.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of every BimipQueue record and checkpoint.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once at
 * run time), otherwise a slicing-by-8 table; both give identical results.
 * bm_crc32c(0, "123456789", 9) == 0xE3069283.
 */
#ifndef BM_CRC32C_H
#define BM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over n bytes of p. */
uint32_t bm_crc32c(uint32_t crc, const void *p, size_t n);
/* The portable path only (for tests that compare both). */
uint32_t bm_crc32c_sw(uint32_t crc, const void *p, size_t n);

#endif
