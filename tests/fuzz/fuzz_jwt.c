/*
 * fuzz_jwt.c - arbitrary bytes as a token to bm_jwt_verify.
 *
 * Two rings, built once:
 *   - fixed: two public keys (RSA-2048 and P-256) whose private halves
 *     signed the valid tokens of tests/fuzz/corpus/jwt/, so mutations of
 *     those tokens reach the signature check.  No private key is kept.
 *   - resign: one P-256 key generated at the first call.
 * Every input is verified against the fixed ring as it is.  An input of the
 * form "HEADER.PAYLOAD." (empty signature) is also decoded, re-signed with
 * the generated key and verified against the resign ring, so the fuzzer
 * reaches the claim and time checks that sit behind a valid signature (use
 * a header without "kid": the ring has one key).
 *
 * Under libFuzzer a custom mutator often mutates the decoded JSON of the
 * header or payload instead of the base64url text, which would otherwise
 * nearly always break the JSON.  Time is fixed so the corpus stays valid:
 * now = 1800000000, leeway 60 s.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_b64.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_jwt.h"

#define NOW    1800000000
#define LEEWAY 60

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
			       unsigned int seed);
/* From libFuzzer; absent in the corpus replay, which never mutates. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size)
	__attribute__((weak));

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

static struct bm_jwt_keyring *fixed, *resign;
static struct bm_jwt_key *signer;   /* owned by resign */

static void rings_init(void)
{
	struct bm_jwt_key *k;

	if (fixed)
		return;
	if (bm_jwt_keyring_new(&fixed) || bm_jwt_keyring_new(&resign))
		abort();
	if (bm_jwt_key_parse(rsa_pub, strlen(rsa_pub), &k) || bm_jwt_keyring_add(fixed, k))
		abort();
	if (bm_jwt_key_parse(ec_pub, strlen(ec_pub), &k) || bm_jwt_keyring_add(fixed, k))
		abort();
	if (bm_jwt_key_generate(BM_JWT_ES256, &signer) ||
	    bm_jwt_keyring_add(resign, signer))
		abort();
}

static void check(int rc, const struct bm_jwt_claims *c)
{
	/* Accepted claims are terminated, non-empty strings within their
	 * fields and a time window that holds at NOW. */
	if (rc == 0 && (strnlen(c->sub, sizeof(c->sub)) == sizeof(c->sub) || !c->sub[0] ||
			strnlen(c->device, sizeof(c->device)) == sizeof(c->device) ||
			!c->device[0] || strnlen(c->jti, sizeof(c->jti)) == sizeof(c->jti) ||
			!c->jti[0] || c->exp + LEEWAY <= NOW || c->nbf - LEEWAY > NOW ||
			c->iat - LEEWAY > NOW))
		abort();
	/* Every refusal is one of the documented codes. */
	if (rc != 0 && rc != BM_ENOMEM && (rc > BM_ETOKEN_MALFORMED || rc < BM_ETOKEN_KEY ||
					   rc == BM_ETOKEN_REVOKED))
		abort();
}

/* Split "A.B.C" into its three parts; 0 if there are not exactly three. */
static int split(const uint8_t *d, size_t n, size_t off[3], size_t len[3])
{
	const uint8_t *d1 = memchr(d, '.', n), *d2;

	if (!d1 || !(d2 = memchr(d1 + 1, '.', n - (size_t)(d1 - d) - 1)) ||
	    memchr(d2 + 1, '.', n - (size_t)(d2 - d) - 1))
		return 0;
	off[0] = 0;
	len[0] = (size_t)(d1 - d);
	off[1] = len[0] + 1;
	len[1] = (size_t)(d2 - d1 - 1);
	off[2] = (size_t)(d2 - d) + 1;
	len[2] = n - off[2];
	return 1;
}

static void resign_and_verify(const uint8_t *data, size_t size)
{
	char hdr[BM_JWT_MAX_LEN + 1], pay[BM_JWT_MAX_LEN + 1];
	struct bm_buf tok = BM_BUF_INIT;
	struct bm_jwt_claims c;
	size_t off[3], len[3], hl, pl;

	if (!split(data, size, off, len) || len[2] != 0)
		return;
	if (bm_b64url_decode((const char *)data + off[0], len[0], (uint8_t *)hdr,
			     sizeof(hdr) - 1, &hl) ||
	    bm_b64url_decode((const char *)data + off[1], len[1], (uint8_t *)pay,
			     sizeof(pay) - 1, &pl))
		return;
	hdr[hl] = 0;
	pay[pl] = 0;
	if (bm_jwt_sign_raw(signer, hdr, pay, &tok))
		return;
	check(bm_jwt_verify(resign, (const char *)tok.data, tok.len, NOW, LEEWAY, &c), &c);
	bm_buf_release(&tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bm_jwt_claims c;

	rings_init();
	check(bm_jwt_verify(fixed, (const char *)data, size, NOW, LEEWAY, &c), &c);
	resign_and_verify(data, size);
	return 0;
}

/* Half the time, mutate the decoded JSON of the header or the payload and
 * encode it again; otherwise (or when the input does not decode) mutate the
 * bytes as they are. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
			       unsigned int seed)
{
	uint8_t part[BM_JWT_MAX_LEN], out[BM_JWT_MAX_LEN + 8];
	size_t off[3], len[3], plen, n, enc_len, tail;
	int which = (int)(seed % 4);   /* 0: header, 1, 2: payload, 3: raw */

	if (which == 3 || !split(data, size, off, len) ||
	    bm_b64url_decode((const char *)data + off[which ? 1 : 0],
			     len[which ? 1 : 0], part, sizeof(part) / 2, &plen))
		return LLVMFuzzerMutate(data, size, max_size);
	which = which ? 1 : 0;
	n = LLVMFuzzerMutate(part, plen, sizeof(part) / 2);
	/* Rebuild: parts before, the re-encoded part, parts after. */
	if (bm_b64url_encode(part, n, (char *)out, sizeof(out), &enc_len))
		return LLVMFuzzerMutate(data, size, max_size);
	tail = size - off[which] - len[which];
	if (off[which] + enc_len + tail > max_size)
		return LLVMFuzzerMutate(data, size, max_size);
	memmove(data + off[which] + enc_len, data + off[which] + len[which], tail);
	memcpy(data + off[which], out, enc_len);
	return off[which] + enc_len + tail;
}
