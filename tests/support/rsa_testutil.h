/*
 * rsa_testutil.h - what the RSA tests (test_jwt) and the RSA fuzz target
 * (fuzz_rsa) both build by hand, independently of common/bm_jwt.c, so the
 * code under test is held against its own definition.
 */
#ifndef RSA_TESTUTIL_H
#define RSA_TESTUTIL_H

#include <stddef.h>

/* DigestInfo of SHA-256 (RFC 8017 section 9.2, note 1). */
extern const unsigned char rt_sha256_digest_info[19];

/* em (k bytes) = 00 01 FF..FF 00 DigestInfo(SHA-256) hash, k >= 54 (the
 * padding string may be shorter than RFC 8017's 8 bytes: tests want that). */
void rt_em_encode(unsigned char *em, size_t k, const unsigned char hash[32]);

#endif
