#include "rsa_testutil.h"

#include <string.h>

const unsigned char rt_sha256_digest_info[19] = {
	0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
	0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
};

void rt_em_encode(unsigned char *em, size_t k, const unsigned char hash[32])
{
	size_t di = sizeof(rt_sha256_digest_info), ps = k - 3 - di - 32;

	em[0] = 0;
	em[1] = 1;
	memset(em + 2, 0xff, ps);
	em[2 + ps] = 0;
	memcpy(em + 3 + ps, rt_sha256_digest_info, di);
	memcpy(em + 3 + ps + di, hash, 32);
}
