/*
 * fuzz_jwt.c - arbitrary bytes as a token to bm_jwt_verify.
 *
 * The keyring is built once from two fixed public keys (RSA-2048 and P-256)
 * whose private halves signed the valid tokens of tests/fuzz/corpus/jwt/, so
 * mutations of those tokens reach the signature and claim checks, not only
 * the parsers.  No private key is kept anywhere.  Time is fixed so the
 * corpus stays valid: now = 1800000000, leeway 60 s.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_err.h"
#include "bm_jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char rsa_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAgKFQqh5czj1+b9Y3EY+Q\n"
	"LWJdS287dKdjET0UUhVdcxTLd0WV49kL6m/7Z5QQ/BrYf/8wWcLrAaHiwGnZiZiE\n"
	"YBMMwR317M9xAtqkJrD7T7Ikja9dCRf3B60zqwFvipC6DL+ooLHUx9fKSebwI+EZ\n"
	"cpokA00fCnp+LXZOv/W1tsrl1zMRmrDpkSeTW+hWOPszWeH7oPlSTVmlNNiakWDR\n"
	"4mBF/5hcay7Nnpszk86acEH7TeJI+/0PoPgCO/3v8y67K28UC826nf+soDOFfAme\n"
	"9to+COtwUUqwz0rniIU2kH77SQuhHRsgxA843WTcDpg9eVKfjRRC3LS9ljsm9QuY\n"
	"MwIDAQAB\n"
	"-----END PUBLIC KEY-----\n";

static const char ec_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwf4sedxlyMW+5YUeNP4banoU8ep5\n"
	"lmhx+Z9gAw5RGaYVJzVZp0ewhBy8w+Sa4csjaqQzwvGll4oGHjdmGBNAKg==\n"
	"-----END PUBLIC KEY-----\n";

static struct bm_jwt_keyring *ring_get(void)
{
	static struct bm_jwt_keyring *ring;
	struct bm_jwt_key *k;

	if (ring)
		return ring;
	if (bm_jwt_keyring_new(&ring))
		abort();
	if (bm_jwt_key_parse(rsa_pub, strlen(rsa_pub), &k) || bm_jwt_keyring_add(ring, k))
		abort();
	if (bm_jwt_key_parse(ec_pub, strlen(ec_pub), &k) || bm_jwt_keyring_add(ring, k))
		abort();
	return ring;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bm_jwt_claims c;
	int rc;

	rc = bm_jwt_verify(ring_get(), (const char *)data, size, 1800000000, 60, &c);
	/* Accepted claims must be terminated strings within their fields. */
	if (rc == 0 && (strnlen(c.sub, sizeof(c.sub)) == sizeof(c.sub) || !c.sub[0] ||
			strnlen(c.device, sizeof(c.device)) == sizeof(c.device) ||
			strnlen(c.jti, sizeof(c.jti)) == sizeof(c.jti) || c.exp <= 0))
		abort();
	/* Every refusal is one of the documented codes. */
	if (rc != 0 && rc != BM_ENOMEM && (rc > BM_ETOKEN_MALFORMED || rc < BM_ETOKEN_KEY ||
					   rc == BM_ETOKEN_REVOKED))
		abort();
	return 0;
}
