/*
 * test_jwt.c - base64url, JWT keys, keyrings, signing and every refusal path
 * of bm_jwt_verify; ends by printing sign/verify rates (not asserted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#include "bm_b64.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_jwt.h"
#include "rsa_testutil.h"
#include "bm_time.h"

#define NOW ((int64_t)1800000000)

/* Keys made once for the whole run: RSA generation is slow. */
static struct {
	struct bm_jwt_key *rsa_a, *rsa_b, *ec_a, *ec_b;   /* private */
	struct bm_jwt_keyring *ring;   /* public halves of rsa_a and ec_a */
} K;

static struct bm_jwt_key *public_copy(const struct bm_jwt_key *k)
{
	struct bm_buf pem = BM_BUF_INIT;
	struct bm_jwt_key *pub = NULL;

	assert_int_equal(bm_jwt_key_public_pem(k, &pem), 0);
	assert_non_null(strstr((char *)pem.data, "-----BEGIN PUBLIC KEY-----"));
	assert_int_equal(bm_jwt_key_parse(pem.data, pem.len, &pub), 0);
	assert_int_equal(bm_jwt_key_has_private(pub), 0);
	assert_string_equal(bm_jwt_key_kid(pub), bm_jwt_key_kid(k));
	assert_int_equal(bm_jwt_key_alg(pub), bm_jwt_key_alg(k));
	bm_buf_release(&pem);
	return pub;
}

static int group_setup(void **state)
{
	if (bm_jwt_key_generate(BM_JWT_RS256, &K.rsa_a) ||
	    bm_jwt_key_generate(BM_JWT_RS256, &K.rsa_b) ||
	    bm_jwt_key_generate(BM_JWT_ES256, &K.ec_a) ||
	    bm_jwt_key_generate(BM_JWT_ES256, &K.ec_b) ||
	    bm_jwt_keyring_new(&K.ring))
		return -1;
	if (bm_jwt_keyring_add(K.ring, public_copy(K.rsa_a)) ||
	    bm_jwt_keyring_add(K.ring, public_copy(K.ec_a)))
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	bm_jwt_key_free(K.rsa_a);
	bm_jwt_key_free(K.rsa_b);
	bm_jwt_key_free(K.ec_a);
	bm_jwt_key_free(K.ec_b);
	bm_jwt_keyring_free(K.ring);
	return 0;
}

static void claims_fill(struct bm_jwt_claims *c)
{
	memset(c, 0, sizeof(*c));
	strcpy(c->sub, "alice@example");
	strcpy(c->device, "phone-1");
	c->iat = NOW;
	c->exp = NOW + 3600;
}

/* A token from the three parts given as JSON, JSON and raw signature bytes;
 * NULL sig means an empty signature part.  Caller releases b. */
static void make_tok(struct bm_buf *b, const char *hdr, const char *pay,
		     const void *sig, size_t slen)
{
	bm_buf_init(b, 0);
	assert_int_equal(bm_b64url_encode_buf(b, hdr, strlen(hdr)), 0);
	assert_int_equal(bm_buf_add(b, ".", 1), 0);
	assert_int_equal(bm_b64url_encode_buf(b, pay, strlen(pay)), 0);
	assert_int_equal(bm_buf_add(b, ".", 1), 0);
	if (sig)
		assert_int_equal(bm_b64url_encode_buf(b, sig, slen), 0);
}

static int verify_str(const char *tok, struct bm_jwt_claims *out)
{
	return bm_jwt_verify(K.ring, tok, strlen(tok), NOW, 0, out);
}

static char good_payload[] =
	"{\"sub\":\"alice\",\"device\":\"d1\",\"jti\":\"j1\",\"iat\":1800000000,"
	"\"exp\":1800003600}";

/* Sign header/payload with key and verify against K.ring. */
static int raw_verify(const struct bm_jwt_key *key, const char *hdr,
		      const char *pay, struct bm_jwt_claims *out)
{
	struct bm_buf b = BM_BUF_INIT;
	int rc;

	assert_int_equal(bm_jwt_sign_raw(key, hdr, pay, &b), 0);
	rc = bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 0, out);
	bm_buf_release(&b);
	return rc;
}

static const char *hdr_for(const struct bm_jwt_key *key, const char *alg)
{
	static char h[128];

	snprintf(h, sizeof(h), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
		 alg ? alg : bm_jwt_alg_name(bm_jwt_key_alg(key)),
		 bm_jwt_key_kid(key));
	return h;
}

/* --- base64 ------------------------------------------------------------------ */

static void test_b64url_vectors(void **state)
{
	static const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *enc[] = { "", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy" };
	char out[64];
	uint8_t dec[64];
	size_t n;

	for (int i = 0; i < 7; i++) {
		assert_int_equal(bm_b64url_encode(plain[i], strlen(plain[i]), out,
						  sizeof(out), &n), 0);
		assert_string_equal(out, enc[i]);
		assert_int_equal(n, bm_b64url_encoded_len(strlen(plain[i])));
		assert_int_equal(bm_b64url_decode(enc[i], strlen(enc[i]), dec,
						  sizeof(dec), &n), 0);
		assert_int_equal(n, strlen(plain[i]));
		assert_memory_equal(dec, plain[i], n);
	}
	/* The two characters that differ from standard base64. */
	assert_int_equal(bm_b64url_encode("\xfb\xff", 2, out, sizeof(out), &n), 0);
	assert_string_equal(out, "-_8");
	assert_int_equal(bm_b64url_decode("-_8", 3, dec, sizeof(dec), &n), 0);
	assert_int_equal(n, 2);
	assert_memory_equal(dec, "\xfb\xff", 2);
	/* Room for the terminator is required. */
	assert_int_equal(bm_b64url_encode("foo", 3, out, 4, &n), BM_ETOOBIG);
	assert_int_equal(bm_b64url_encode("foo", 3, out, 5, &n), 0);
	assert_int_equal(bm_b64url_decode("Zm9vYmFy", 8, dec, 5, &n), BM_ETOOBIG);
}

static void test_b64url_refuses(void **state)
{
	static const char *bad[] = {
		"Zg==", "Zg=", "Z", "Zm9vY", "Zm+v", "Zm/v", "Zm9 ", " Zm9",
		"Zh",      /* unused bits not zero */
		"Zm8",     /* fine: "fo" */
		"Zm9",     /* "fo" again, unused bits not zero */
		"Zm-",     /* unused bits not zero */
		"Zm9v\n", "Zm\x80v", "A",
	};
	uint8_t dec[16];
	size_t n;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int want = !strcmp(bad[i], "Zm8") ? 0 : BM_EDECODE;
		assert_int_equal(bm_b64url_decode(bad[i], strlen(bad[i]), dec,
						  sizeof(dec), &n), want);
	}
	assert_int_equal(bm_b64url_decode("Zm\0v", 4, dec, sizeof(dec), &n),
			 BM_EDECODE);
}

static void test_b64url_roundtrip(void **state)
{
	uint8_t in[200], dec[200];
	char enc[300];
	size_t n, m;

	for (size_t len = 0; len < sizeof(in); len++) {
		for (size_t i = 0; i < len; i++)
			in[i] = (uint8_t)(i * 37 + len * 11);
		assert_int_equal(bm_b64url_encode(in, len, enc, sizeof(enc), &n), 0);
		assert_int_equal(strlen(enc), n);
		assert_true(bm_b64url_decoded_max(n) == len);
		assert_int_equal(bm_b64url_decode(enc, n, dec, sizeof(dec), &m), 0);
		assert_int_equal(m, len);
		assert_memory_equal(dec, in, len);
	}
}

static void test_b64_standard(void **state)
{
	struct bm_buf b = BM_BUF_INIT;
	uint8_t dec[16];
	size_t n;

	assert_int_equal(bm_b64_encode_buf(&b, "fo", 2), 0);
	assert_string_equal((char *)b.data, "Zm8=");
	assert_int_equal(bm_b64_encode_buf(&b, "\xfb\xff", 2), 0);
	assert_string_equal((char *)b.data, "Zm8=+/8=");
	assert_int_equal(bm_b64_encode_buf(&b, "", 0), 0);
	assert_int_equal(b.len, 8);
	assert_int_equal(bm_b64_decode("Zm9vYmFy", 8, dec, sizeof(dec), &n), 0);
	assert_int_equal(n, 6);
	assert_memory_equal(dec, "foobar", 6);
	assert_int_equal(bm_b64_decode("Zm8!", 4, dec, sizeof(dec), &n), BM_EDECODE);
	assert_int_equal(bm_b64_decode("Zm9vYmFy", 8, dec, 3, &n), BM_ETOOBIG);
	bm_buf_release(&b);
}

/* --- keys and signing -------------------------------------------------------- */

static void test_random_hex(void **state)
{
	char a[33], b[33], big[2 * 300 + 1];

	assert_int_equal(bm_jwt_random_hex(a, 16), 0);
	assert_int_equal(bm_jwt_random_hex(b, 16), 0);
	assert_int_equal(strlen(a), 32);
	assert_int_equal(strspn(a, "0123456789abcdef"), 32);
	assert_string_not_equal(a, b);
	assert_int_equal(bm_jwt_random_hex(big, 300), 0);
	assert_int_equal(strlen(big), 600);
}

/* A forked child must not replay the parent's random stream (jti values). */
static void test_random_fork(void **state)
{
	char mine[33], theirs[33] = { 0 };
	int fds[2], status;
	pid_t pid;

	assert_int_equal(bm_jwt_random_hex(mine, 4), 0);   /* DRBG is seeded */
	assert_int_equal(pipe(fds), 0);
	pid = fork();
	assert_true(pid != -1);
	if (pid == 0) {
		char c[33];
		close(fds[0]);
		if (bm_jwt_random_hex(c, 16) || write(fds[1], c, 32) != 32)
			_exit(1);
		_exit(0);
	}
	close(fds[1]);
	assert_int_equal(bm_jwt_random_hex(mine, 16), 0);
	assert_int_equal(read(fds[0], theirs, 32), 32);
	close(fds[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_string_not_equal(mine, theirs);
}

static void roundtrip(const struct bm_jwt_key *key, size_t want_sig)
{
	struct bm_buf b = BM_BUF_INIT, b2 = BM_BUF_INIT;
	struct bm_jwt_claims c, got;
	const char *d1, *d2;
	uint8_t part[600];
	size_t n;

	claims_fill(&c);
	c.iat = 0;
	c.nbf = bm_wall_s() - 10;
	c.exp = bm_wall_s() + 3600;
	assert_int_equal(bm_jwt_sign(key, &c, &b), 0);
	assert_int_equal(strlen(c.jti), 32);       /* filled */
	assert_true(c.iat >= bm_wall_s() - 5);     /* filled with now */
	assert_int_equal(b.len, strlen((char *)b.data));

	/* Shape: header names alg, typ and kid; signature length. */
	d1 = strchr((char *)b.data, '.');
	d2 = strchr(d1 + 1, '.');
	assert_non_null(d2);
	assert_null(strchr(d2 + 1, '.'));
	assert_int_equal(bm_b64url_decode((char *)b.data, (size_t)(d1 - (char *)b.data),
					  part, sizeof(part), &n), 0);
	part[n] = 0;
	assert_string_equal((char *)part, hdr_for(key, NULL));
	assert_int_equal(bm_b64url_decode(d2 + 1, strlen(d2 + 1), part,
					  sizeof(part), &n), 0);
	assert_int_equal(n, want_sig);

	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, c.iat, 0,
				       &got), 0);
	assert_string_equal(got.sub, c.sub);
	assert_string_equal(got.device, c.device);
	assert_string_equal(got.jti, c.jti);
	assert_true(got.iat == c.iat && got.nbf == c.nbf && got.exp == c.exp);

	/* Deterministic signatures (RFC 6979 for ES256; PKCS#1 v1.5 is). */
	assert_int_equal(bm_jwt_sign(key, &c, &b2), 0);
	assert_string_equal((char *)b.data, (char *)b2.data);
	bm_buf_release(&b);
	bm_buf_release(&b2);
}

static void test_roundtrip_rs256(void **state)
{
	roundtrip(K.rsa_a, 256);
}

static void test_roundtrip_es256(void **state)
{
	roundtrip(K.ec_a, 64);
}

static void test_sign_refuses(void **state)
{
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;
	const struct bm_jwt_key *pub = bm_jwt_keyring_find(K.ring,
							   bm_jwt_key_kid(K.rsa_a));

	assert_non_null(pub);
	claims_fill(&c);
	assert_int_equal(bm_jwt_sign(pub, &c, &b), BM_EINVAL);   /* public only */
	assert_int_equal(bm_jwt_sign_raw(pub, "{}", "{}", &b), BM_EINVAL);
	c.sub[0] = 0;
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), BM_EINVAL);
	claims_fill(&c);
	c.device[0] = 0;
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), BM_EINVAL);
	claims_fill(&c);
	c.exp = 0;
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), BM_EINVAL);
	claims_fill(&c);
	memset(c.sub, 'x', sizeof(c.sub));   /* not terminated */
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), BM_EINVAL);
	claims_fill(&c);
	strcpy(c.sub, "bad\xff utf8");
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), BM_EINVAL);
	assert_int_equal(c.jti[0], 0);   /* c untouched on error */
	assert_int_equal(b.len, 0);
	/* A bounded output buffer that is too small. */
	claims_fill(&c);
	bm_buf_init(&b, 100);
	assert_int_equal(bm_jwt_sign(K.rsa_a, &c, &b), BM_ETOOBIG);
	assert_int_equal(b.len, 0);
	bm_buf_release(&b);
}

/* --- refusals ----------------------------------------------------------------- */

static void test_refuse_alg(void **state)
{
	struct bm_buf b;
	char hdr[128];

	/* alg:none with an empty signature, with and without a kid. */
	make_tok(&b, "{\"alg\":\"none\",\"typ\":\"JWT\"}", good_payload, NULL, 0);
	assert_int_equal(verify_str((char *)b.data, NULL), BM_ETOKEN_ALG);
	bm_buf_release(&b);
	snprintf(hdr, sizeof(hdr), "{\"alg\":\"none\",\"kid\":\"%s\"}",
		 bm_jwt_key_kid(K.rsa_a));
	make_tok(&b, hdr, good_payload, NULL, 0);
	assert_int_equal(verify_str((char *)b.data, NULL), BM_ETOKEN_ALG);
	bm_buf_release(&b);
	/* Other algorithms, even with a valid signature underneath. */
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, "HS256"),
				    good_payload, NULL), BM_ETOKEN_ALG);
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, "rs256"),
				    good_payload, NULL), BM_ETOKEN_ALG);
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, "PS256"),
				    good_payload, NULL), BM_ETOKEN_ALG);
	/* alg that does not match the type of the key named by kid. */
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.rsa_a, "ES256"),
				    good_payload, NULL), BM_ETOKEN_ALG);
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.ec_a, "RS256"),
				    good_payload, NULL), BM_ETOKEN_ALG);
}

static void test_refuse_key(void **state)
{
	struct bm_jwt_keyring *one;
	struct bm_jwt_claims c;
	static const char nokid[] = "{\"alg\":\"ES256\",\"typ\":\"JWT\"}";

	/* kid unknown to the ring. */
	assert_int_equal(raw_verify(K.rsa_b, hdr_for(K.rsa_b, NULL), good_payload,
				    NULL), BM_ETOKEN_KEY);
	assert_int_equal(raw_verify(K.ec_b, hdr_for(K.ec_b, NULL), good_payload,
				    NULL), BM_ETOKEN_KEY);
	/* No kid: refused with two keys in the ring... */
	assert_int_equal(raw_verify(K.ec_a, nokid, good_payload, NULL),
			 BM_ETOKEN_KEY);
	/* ...accepted with exactly one. */
	{
		struct bm_buf b = BM_BUF_INIT;
		assert_int_equal(bm_jwt_keyring_new(&one), 0);
		assert_int_equal(bm_jwt_keyring_add(one, public_copy(K.ec_a)), 0);
		assert_int_equal(bm_jwt_sign_raw(K.ec_a, nokid, good_payload, &b), 0);
		assert_int_equal(bm_jwt_verify(one, (char *)b.data, b.len, NOW, 0, &c), 0);
		assert_string_equal(c.sub, "alice");
		bm_buf_release(&b);
		assert_int_equal(bm_jwt_sign_raw(K.ec_b, nokid, good_payload, &b), 0);
		assert_int_equal(bm_jwt_verify(one, (char *)b.data, b.len, NOW, 0, &c),
				 BM_ETOKEN_SIG);
		bm_buf_release(&b);
		bm_jwt_keyring_free(one);
	}
}

static void test_refuse_sig(void **state)
{
	struct bm_buf b = BM_BUF_INIT, t;
	uint8_t zero[64] = { 0 }, big[600];
	char *d2, *d1;

	/* Signed by another key under a known kid. */
	assert_int_equal(raw_verify(K.rsa_b, hdr_for(K.rsa_a, NULL), good_payload,
				    NULL), BM_ETOKEN_SIG);
	assert_int_equal(raw_verify(K.ec_b, hdr_for(K.ec_a, NULL), good_payload,
				    NULL), BM_ETOKEN_SIG);
	/* Wrong signature length: ES256 signature on an RSA kid is ALG, so
	 * use right-alg wrong-size signatures. */
	make_tok(&t, hdr_for(K.ec_a, NULL), good_payload, zero, 63);
	assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
	bm_buf_release(&t);
	make_tok(&t, hdr_for(K.ec_a, NULL), good_payload, zero, 64);  /* r=s=0 */
	assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
	bm_buf_release(&t);
	make_tok(&t, hdr_for(K.rsa_a, NULL), good_payload, zero, 64);
	assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
	bm_buf_release(&t);
	memset(big, 0x41, sizeof(big));   /* longer than any key's signature */
	make_tok(&t, hdr_for(K.rsa_a, NULL), good_payload, big, sizeof(big));
	assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
	bm_buf_release(&t);

	for (int i = 0; i < 2; i++) {
		const struct bm_jwt_key *k = i ? K.ec_a : K.rsa_a;
		assert_int_equal(bm_jwt_sign_raw(k, hdr_for(k, NULL), good_payload, &b), 0);
		assert_int_equal(verify_str((char *)b.data, NULL), 0);
		/* One signature character altered (first char: 6 full bits). */
		d2 = strrchr((char *)b.data, '.');
		d2[1] = d2[1] == 'A' ? 'B' : 'A';
		assert_int_equal(verify_str((char *)b.data, NULL), BM_ETOKEN_SIG);
		d2[1] = d2[1] == 'A' ? 'B' : 'A';
		/* Signature one byte short, or one byte long. */
		{
			uint8_t sig[600];
			size_t n;
			assert_int_equal(bm_b64url_decode(d2 + 1, strlen(d2 + 1), sig,
							  sizeof(sig), &n), 0);
			make_tok(&t, hdr_for(k, NULL), good_payload, sig, n - 1);
			assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
			bm_buf_release(&t);
			sig[n] = 0;
			make_tok(&t, hdr_for(k, NULL), good_payload, sig, n + 1);
			assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
			bm_buf_release(&t);
		}
		/* Payload replaced by another valid one, signature kept. */
		d1 = strchr((char *)b.data, '.');
		make_tok(&t, hdr_for(k, NULL), "{\"sub\":\"mallory\",\"device\":\"d1\","
			 "\"jti\":\"j1\",\"iat\":1800000000,\"exp\":1900000000}", NULL, 0);
		assert_int_equal(strncmp((char *)t.data, (char *)b.data,
					 (size_t)(d1 - (char *)b.data)), 0);
		assert_int_equal(bm_buf_adds(&t, d2 + 1), 0);
		assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
		bm_buf_release(&t);
		bm_buf_release(&b);
	}
}

static void test_refuse_time(void **state)
{
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;

	/* Expired: exp in the past; leeway rescues it; exp == now is expired. */
	claims_fill(&c);
	c.iat = NOW - 200;
	c.exp = NOW - 100;
	assert_int_equal(bm_jwt_sign(K.rsa_a, &c, &b), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 30, &c),
			 BM_ETOKEN_EXPIRED);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 101, &c), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW - 100, 0, &c),
			 BM_ETOKEN_EXPIRED);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW - 101, 0, &c), 0);
	bm_buf_reset(&b);

	/* Not yet valid through nbf. */
	claims_fill(&c);
	c.nbf = NOW + 100;
	assert_int_equal(bm_jwt_sign(K.ec_a, &c, &b), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 30, &c),
			 BM_ETOKEN_NOTYET);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 100, &c), 0);
	bm_buf_reset(&b);

	/* Not yet valid through iat in the future. */
	claims_fill(&c);
	c.iat = NOW + 100;
	assert_int_equal(bm_jwt_sign(K.rsa_a, &c, &b), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 30, &c),
			 BM_ETOKEN_NOTYET);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 100, &c), 0);
	/* Absurd leeway values are clamped, not overflowed. */
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, INT64_MAX, &c), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, INT64_MIN, -5, &c),
			 BM_ETOKEN_NOTYET);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, INT64_MAX, 0, &c),
			 BM_ETOKEN_EXPIRED);
	bm_buf_release(&b);
}

static void test_refuse_claims(void **state)
{
	static const char *bad[] = {
		"{\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":7,\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"eid\":\"b\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"device\":null,\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"device\":\"d\",\"iat\":1800000000,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"exp\":1800003600}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":\"1800003600\"}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":-1,\"exp\":1800003600}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":0}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1e300}",
		"{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,\"exp\":1800003600,\"nbf\":true}",
	};
	char pay[512], longs[200];
	struct bm_jwt_claims c;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const struct bm_jwt_key *k = i % 2 ? K.ec_a : K.rsa_a;
		assert_int_equal(raw_verify(k, hdr_for(k, NULL), bad[i], &c),
				 BM_ETOKEN_CLAIMS);
		assert_int_equal(c.sub[0], 0);   /* out cleared on failure */
	}
	/* Strings one byte too long for their field. */
	memset(longs, 'x', sizeof(longs));
	longs[129] = 0;
	snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"device\":\"d\",\"jti\":\"j\","
		 "\"iat\":1800000000,\"exp\":1800003600}", longs);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL), pay, &c),
			 BM_ETOKEN_CLAIMS);
	longs[128] = 0;   /* exactly fits */
	snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"device\":\"d\",\"jti\":\"j\","
		 "\"iat\":1800000000,\"exp\":1800003600}", longs);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL), pay, &c), 0);
	assert_int_equal(strlen(c.sub), 128);
	longs[65] = 0;
	snprintf(pay, sizeof(pay), "{\"sub\":\"a\",\"device\":\"%s\",\"jti\":\"j\","
		 "\"iat\":1800000000,\"exp\":1800003600}", longs);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL), pay, &c),
			 BM_ETOKEN_CLAIMS);
	snprintf(pay, sizeof(pay), "{\"sub\":\"a\",\"device\":\"d\",\"jti\":\"%s\","
		 "\"iat\":1800000000,\"exp\":1800003600}", longs);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL), pay, &c),
			 BM_ETOKEN_CLAIMS);

	/* Accepted variants: eid alias, sub == eid, real times, extra claims. */
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, NULL),
		"{\"eid\":\"bob\",\"device\":\"d\",\"jti\":\"j\",\"iat\":1800000000,"
		"\"exp\":1800003600.9,\"scope\":[1,2]}", &c), 0);
	assert_string_equal(c.sub, "bob");
	assert_true(c.exp == 1800003600);
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, NULL),
		"{\"sub\":\"bob\",\"eid\":\"bob\",\"device\":\"d\",\"jti\":\"j\","
		"\"iat\":1800000000,\"exp\":1800003600}", &c), 0);
	assert_string_equal(c.sub, "bob");
}

static void test_refuse_malformed(void **state)
{
	static const char *bad[] = {
		"", ".", "..", "...", "abc", "a.b", "a.b.c.d",
		"eyJhbGciOiJSUzI1NiJ9.e30",   /* two parts */
		"!!!.e30.AAAA",               /* bad base64url header */
		"eyJhbGciOiJSUzI1NiJ9.e30=.AAAA",
		"eyJhbGciOiJSUzI1NiJ9.e30.AA+A",
		"eyJhbGciOiJSUzI1NiJ9.e30.A",  /* impossible length */
	};
	static const char *bad_hdr[] = {
		"not json", "[1,2]", "\"RS256\"", "{\"alg\":5}", "{}",
		"{\"alg\":\"RS256\",\"alg\":\"RS256\"}",     /* duplicate member */
		"{\"alg\":\"RS256\",\"typ\":\"JWS\"}",
		"{\"alg\":\"RS256\",\"typ\":1}",
		"{\"alg\":\"RS256\",\"kid\":5}",
		"{\"alg\":\"RS256\",\"crit\":[\"exp\"]}",
		"{\"alg\":\"RS256\"} trailing",
		"{\"alg\":\"RS\\u0000256\"}",
	};
	struct bm_buf b;
	char *big;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(verify_str(bad[i], NULL), BM_ETOKEN_MALFORMED);
	assert_int_equal(bm_jwt_verify(K.ring, NULL, 0, NOW, 0, NULL),
			 BM_ETOKEN_MALFORMED);
	for (size_t i = 0; i < sizeof(bad_hdr) / sizeof(bad_hdr[0]); i++) {
		make_tok(&b, bad_hdr[i], good_payload, "sig", 3);
		assert_int_equal(verify_str((char *)b.data, NULL), BM_ETOKEN_MALFORMED);
		bm_buf_release(&b);
	}
	/* Payload that is not a JSON object, even under a valid signature. */
	assert_int_equal(raw_verify(K.rsa_a, hdr_for(K.rsa_a, NULL), "nope", NULL),
			 BM_ETOKEN_MALFORMED);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL), "[]", NULL),
			 BM_ETOKEN_MALFORMED);
	assert_int_equal(raw_verify(K.ec_a, hdr_for(K.ec_a, NULL),
		"{\"sub\":\"a\",\"sub\":\"b\"}", NULL), BM_ETOKEN_MALFORMED);

	/* Oversize: a valid token padded past BM_JWT_MAX_LEN by a long claim. */
	big = malloc(BM_JWT_MAX_LEN * 2);
	assert_non_null(big);
	memset(big, 'x', BM_JWT_MAX_LEN * 2);
	strcpy(big + 3100, "\"}");
	memcpy(big, "{\"pad\":\"", 8);
	make_tok(&b, hdr_for(K.rsa_a, NULL), big, "sig", 3);
	assert_true(b.len > BM_JWT_MAX_LEN);
	assert_int_equal(verify_str((char *)b.data, NULL), BM_ETOKEN_MALFORMED);
	/* The same bytes up to the limit are judged on their merits instead. */
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, BM_JWT_MAX_LEN, NOW, 0,
				       NULL), BM_ETOKEN_MALFORMED);
	bm_buf_release(&b);
	/* sign_raw refuses to produce such a token. */
	bm_buf_init(&b, 0);
	assert_int_equal(bm_jwt_sign_raw(K.rsa_a, hdr_for(K.rsa_a, NULL), big, &b),
			 BM_ETOOBIG);
	assert_int_equal(b.len, 0);
	bm_buf_release(&b);
	free(big);
}

static void test_codes_distinct(void **state)
{
	static const int codes[] = {
		BM_ETOKEN_MALFORMED, BM_ETOKEN_ALG, BM_ETOKEN_SIG, BM_ETOKEN_EXPIRED,
		BM_ETOKEN_NOTYET, BM_ETOKEN_CLAIMS, BM_ETOKEN_KEY,
	};
	for (size_t i = 0; i < 7; i++) {
		assert_true(codes[i] < 0);
		assert_int_equal(bm_err_http(codes[i]), 401);
		for (size_t j = i + 1; j < 7; j++)
			assert_int_not_equal(codes[i], codes[j]);
	}
}

/* --- key files and keyrings ---------------------------------------------------- */

static void write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

static void test_key_files(void **state)
{
	char dir[] = "/tmp/bm_jwt_XXXXXX", path[64], path2[64], path3[128];
	struct bm_jwt_key *k = NULL, *k2 = NULL;
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;
	struct stat st;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/rsa.pem", dir);
	snprintf(path2, sizeof(path2), "%s/ec.pub.pem", dir);
	snprintf(path3, sizeof(path3), "%s/other.pem", dir);

	/* Private RSA key: 0600, loads back private with the same kid. */
	assert_int_equal(bm_jwt_key_save(K.rsa_a, path), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(bm_jwt_key_load(path, &k), 0);
	assert_int_equal(bm_jwt_key_has_private(k), 1);
	assert_int_equal(bm_jwt_key_alg(k), BM_JWT_RS256);
	assert_string_equal(bm_jwt_key_kid(k), bm_jwt_key_kid(K.rsa_a));
	claims_fill(&c);
	assert_int_equal(bm_jwt_sign(k, &c, &b), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 0, NULL), 0);
	/* Saving again replaces the file atomically, no temporary left. */
	assert_int_equal(bm_jwt_key_save(k, path), 0);
	snprintf(path3, sizeof(path3), "%s.tmp", path);
	assert_int_equal(access(path3, F_OK), -1);
	bm_jwt_key_free(k);
	k = NULL;

	/* Private EC key round trip. */
	snprintf(path3, sizeof(path3), "%s/ec.pem", dir);
	assert_int_equal(bm_jwt_key_save(K.ec_a, path3), 0);
	assert_int_equal(bm_jwt_key_load(path3, &k), 0);
	assert_int_equal(bm_jwt_key_alg(k), BM_JWT_ES256);
	assert_int_equal(bm_jwt_key_has_private(k), 1);
	assert_string_equal(bm_jwt_key_kid(k), bm_jwt_key_kid(K.ec_a));
	bm_buf_reset(&b);
	assert_int_equal(bm_jwt_sign(k, &c, &b), 0);
	assert_int_equal(bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 0, NULL), 0);
	bm_jwt_key_free(k);
	k = NULL;
	assert_int_equal(unlink(path3), 0);

	/* Public-only key: 0644, loads back public-only, cannot sign. */
	k2 = public_copy(K.ec_a);
	assert_int_equal(bm_jwt_key_save(k2, path2), 0);
	assert_int_equal(stat(path2, &st), 0);
	assert_int_equal(st.st_mode & 0700, 0600);
	assert_int_equal(bm_jwt_key_load(path2, &k), 0);
	assert_int_equal(bm_jwt_key_has_private(k), 0);
	assert_string_equal(bm_jwt_key_kid(k), bm_jwt_key_kid(K.ec_a));
	bm_buf_reset(&b);
	assert_int_equal(bm_jwt_sign(k, &c, &b), BM_EINVAL);
	bm_jwt_key_free(k);
	bm_jwt_key_free(k2);
	k = NULL;

	/* Missing file, garbage, empty, oversize. */
	snprintf(path3, sizeof(path3), "%s/missing.pem", dir);
	assert_int_equal(bm_jwt_key_load(path3, &k), BM_ENOENT);
	snprintf(path3, sizeof(path3), "%s/garbage.pem", dir);
	{
		static const char g[] = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
		write_file(path3, g, strlen(g));
	}
	assert_int_equal(bm_jwt_key_load(path3, &k), BM_EDECODE);
	assert_int_equal(bm_jwt_key_parse("", 0, &k), BM_EDECODE);
	{
		char *huge = calloc(1, 70000);
		assert_non_null(huge);
		write_file(path3, huge, 70000);
		assert_int_equal(bm_jwt_key_load(path3, &k), BM_ETOOBIG);
		free(huge);
	}
	assert_int_equal(unlink(path3), 0);
	assert_null(k);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(unlink(path2), 0);
	assert_int_equal(rmdir(dir), 0);
	bm_buf_release(&b);
}

/* Keys of a type or size we refuse: P-384 and RSA-1024 made with mbedTLS. */
static void test_key_unsupported(void **state)
{
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_pk_context pk;
	unsigned char pem[4096];
	struct bm_jwt_key *k = NULL;

	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent,
					       NULL, 0), 0);
	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)), 0);
	assert_int_equal(mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP384R1, mbedtls_pk_ec(pk),
					     mbedtls_ctr_drbg_random, &drbg), 0);
	assert_int_equal(mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem)), 0);
	assert_int_equal(bm_jwt_key_parse(pem, strlen((char *)pem), &k), BM_EINVAL);
	assert_int_equal(mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof(pem)), 0);
	assert_int_equal(bm_jwt_key_parse(pem, strlen((char *)pem), &k), BM_EINVAL);
	mbedtls_pk_free(&pk);

	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)), 0);
	assert_int_equal(mbedtls_rsa_gen_key(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random,
					     &drbg, 1024, 65537), 0);
	assert_int_equal(mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof(pem)), 0);
	assert_int_equal(bm_jwt_key_parse(pem, strlen((char *)pem), &k), BM_EINVAL);
	/* DER is accepted as well as PEM (here: refused for its size). */
	{
		int n = mbedtls_pk_write_pubkey_der(&pk, pem, sizeof(pem));
		assert_true(n > 0);
		assert_int_equal(bm_jwt_key_parse(pem + sizeof(pem) - n, (size_t)n, &k),
				 BM_EINVAL);
	}
	mbedtls_pk_free(&pk);
	assert_null(k);
	assert_int_equal(bm_jwt_key_generate((enum bm_jwt_alg)7, &k), BM_EINVAL);
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
}

static void test_keyring_many(void **state)
{
	struct bm_jwt_key *keys[4] = { K.rsa_a, K.rsa_b, K.ec_a, K.ec_b };
	struct bm_jwt_keyring *ring;
	struct bm_jwt_key *dup;
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;

	assert_int_equal(bm_jwt_keyring_new(&ring), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(bm_jwt_keyring_add(ring, public_copy(keys[i])), 0);
	/* Four more EC keys to go past the first growth. */
	for (int i = 0; i < 4; i++) {
		struct bm_jwt_key *k;
		assert_int_equal(bm_jwt_key_generate(BM_JWT_ES256, &k), 0);
		assert_int_equal(bm_jwt_keyring_add(ring, k), 0);   /* private is fine */
	}
	assert_int_equal(bm_jwt_keyring_count(ring), 8);
	/* Duplicate kid: refused, caller keeps the key. */
	dup = public_copy(K.rsa_b);
	assert_int_equal(bm_jwt_keyring_add(ring, dup), BM_EEXIST);
	bm_jwt_key_free(dup);
	assert_null(bm_jwt_keyring_find(ring, "0000000000000000"));

	for (int i = 0; i < 4; i++) {
		const struct bm_jwt_key *f = bm_jwt_keyring_find(ring, bm_jwt_key_kid(keys[i]));
		assert_non_null(f);
		assert_string_equal(bm_jwt_key_kid(f), bm_jwt_key_kid(keys[i]));
		claims_fill(&c);
		snprintf(c.sub, sizeof(c.sub), "user%d", i);
		bm_buf_reset(&b);
		assert_int_equal(bm_jwt_sign(keys[i], &c, &b), 0);
		memset(&c, 0, sizeof(c));
		assert_int_equal(bm_jwt_verify(ring, (char *)b.data, b.len, NOW, 0, &c), 0);
		assert_int_equal(c.sub[4] - '0', i);
	}
	bm_buf_release(&b);
	bm_jwt_keyring_free(ring);
	bm_jwt_keyring_free(NULL);
	bm_jwt_key_free(NULL);
}

/* --- interoperability ------------------------------------------------------- */

/* Known-answer tokens made by another implementation (Python cryptography
 * 48: PKCS1v15/SHA-256, and ECDSA with the DER signature converted to r||s)
 * with "typ" first and spaces in the JSON, for the public keys below.  The
 * kids are SHA-256 over the SubjectPublicKeyInfo DER as Python computed it. */
static const char interop_pems[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAl+upDD90qAm3qsanYv90\n"
	"F4CLCIyqxpljLq+q25fGAvh7JiIpdfnYxgREGxqMcXydtRGHmZXvFm6HPlnuioXM\n"
	"j/pHxN/PH30EEUr1+D9i+xuI0ewOgrPnHdHhjkPyz1VzHDr2Vbm2x8J/I3v6pLaT\n"
	"5AEMbuHT9BfYWESVb4iPOxCqctxcoHr1If7ljOpJdFbjl4RNzdpUdXkb5cZCDNfS\n"
	"21X58QVY4J1E3cJVdHviaubqKFEduzQhIyS3FbqKXx1L/w/gVs8fq7E52ahL7v5A\n"
	"EDAHC2cp+6qG2bLvTJDBdhzIjaVYlw88Ol4y0cokM2HWU8cobDgpJF95zda1HmV7\n"
	"9wIDAQAB\n"
	"-----END PUBLIC KEY-----\n"
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHvE9BjD/H83d+WSfnNGgo7HIfrzQ\n"
	"rAoNaC0QHxNpwfkrt5+nvhKg1IqOrFktDe4vKWFYvVzU75oMvXlxfMcsqg==\n"
	"-----END PUBLIC KEY-----\n";

static const char interop_rs256[] =
	"eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJSUzI1NiIsICJraWQiOiAiN2NlZDNkN2Iz"
	"ZjM0NmM0YyJ9.eyJzdWIiOiAicHkiLCAiZGV2aWNlIjogImRldiIsICJqdGkiOiA"
	"icHlqdGkiLCAiaWF0IjogMTgwMDAwMDAwMCwgImV4cCI6IDE5MDAwMDAwMDB9.Kz"
	"wyuj6qbPtb5cJJ7XzcFe42q93Vg3bAHAOwKtmtYIp0BDH8xIgJo2Bp9kWTrqibCK"
	"l5MHxS3ljDL0dv0ciIMarDuD_J5AGjPCU1bErHvv7Z5t5-TZ0WiOmiGj1or9JmB6"
	"NWjckhWpdPeWNSbvbeTlwoIILSGt8exQtGZ8OMdPMGR8VoJMJIX5yXgDgxyRagCq"
	"sRhs2_RH1ykf6mDyC1R92vJIK9L549J66fiFsaNVRf7MewpPs9s-jnibnWBATaGI"
	"R9-7ZhZJfprwr60Xa-nzo_oG1ntOMp97vpd_ZCdqkPQKx_N03XbRuPH6Z-YRImRA"
	"97fLYYBEaGhyFwzLCr9Q";

static const char interop_es256[] =
	"eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJFUzI1NiIsICJraWQiOiAiM2ZmYTY4MjYy"
	"MmUyMjNhMyJ9.eyJzdWIiOiAicHkiLCAiZGV2aWNlIjogImRldiIsICJqdGkiOiA"
	"icHlqdGkiLCAiaWF0IjogMTgwMDAwMDAwMCwgImV4cCI6IDE5MDAwMDAwMDB9.a2"
	"s69lKwyxKPd0oz0aVzt_B4m6TCWHXZKCz6b-0Wi3pIEZlosFkeFo4Bpju-YZEDp-"
	"LJ-RcQrfx328c6R-SFGQ";

static void test_interop(void **state)
{
	const char *end = strstr(interop_pems, "-----END PUBLIC KEY-----\n") + 25;
	struct bm_jwt_keyring *ring;
	struct bm_jwt_key *rsa, *ec;
	struct bm_jwt_claims c;
	char *t;

	assert_int_equal(bm_jwt_key_parse(interop_pems, (size_t)(end - interop_pems), &rsa), 0);
	assert_int_equal(bm_jwt_key_parse(end, strlen(end), &ec), 0);
	assert_string_equal(bm_jwt_key_kid(rsa), "7ced3d7b3f346c4c");
	assert_string_equal(bm_jwt_key_kid(ec), "3ffa682622e223a3");
	assert_int_equal(bm_jwt_keyring_new(&ring), 0);
	assert_int_equal(bm_jwt_keyring_add(ring, rsa), 0);
	assert_int_equal(bm_jwt_keyring_add(ring, ec), 0);
	assert_int_equal(bm_jwt_verify(ring, interop_rs256, strlen(interop_rs256),
				       NOW, 0, &c), 0);
	assert_string_equal(c.sub, "py");
	assert_string_equal(c.device, "dev");
	assert_string_equal(c.jti, "pyjti");
	assert_int_equal(bm_jwt_verify(ring, interop_es256, strlen(interop_es256),
				       NOW, 0, &c), 0);
	assert_string_equal(c.sub, "py");
	assert_true(c.iat == 1800000000 && c.exp == 1900000000 && c.nbf == 0);
	/* One character of s altered. */
	t = strdup(interop_es256);
	assert_non_null(t);
	t[strlen(t) - 3] = t[strlen(t) - 3] == 'A' ? 'B' : 'A';
	assert_int_equal(bm_jwt_verify(ring, t, strlen(t), NOW, 0, &c), BM_ETOKEN_SIG);
	free(t);
	bm_jwt_keyring_free(ring);
}

/* --- RSA sizes: the fast public operation (bm_jwt.c) against other signers --- */

/* Tokens signed by OpenSSL 3 (openssl dgst -sha256 -sign) with a 4096-bit
 * key (64 limbs: the largest accepted) and a 3000-bit key with e = 3 (375
 * bytes: neither limbs nor bytes fill up); headers without kid. */
static const char big_rsa_4096_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEA5AUIzxAl8uvafusTM98F\n"
	"lRztnWpmjHxc3JqJsZu4F+HJj3KZ37TwJvNola/3y4av9Wd0DWXcjkeUmKGuH0Cv\n"
	"a9tPE1bwl0zVbvoSntxceLm7/T1qbn3o/dJWH9A0A4QYswkFZJErDBMol5RcjYoA\n"
	"5NF5swkC1cZtmmNIDc0iBqBNAPnhQZp9pAcae+CbZJE66vgVDgGp6JzsnQb7p5NN\n"
	"XBuVYJlQ/Tpd6eh58BoHkKu6n+bhF6bGUzxC7QK5EHt+CC7QEuiEZTbmmkqJrONU\n"
	"lpgz6ZSCIjNLxFqvcw3DFmwLRrZf+thcV4LKVEv1oXfL+zorOpxfBlYA68zE4sH/\n"
	"ooXh2bXfVRAgjcv7+oT1p50ksXZ0L1EY7MEwbVTsu8fMuyJsHC/hEr/Vtq4xYqqJ\n"
	"apJEeTPjCvVVGdo76/8vhxU4VfIpUQiDjt89lO75Ug7ffhrGCGrQIsyQCrrJNR+w\n"
	"MmnaWXUzRgbQ+7l7YuQJpYwtPxu0f6bBXJwq7BpZ8hr5OIz0fALXwYkw3H2g1ryi\n"
	"OjzO0tYkuitnDKtb3Z0Vmn62HEgear2JqfjLMRf1ELE0rUnKKOzngMZObrugNtor\n"
	"neIPaKVtDwc5C0LQYi1f6z7JfyJL4nrhIBc3BmFk01+OwrKprOOscAxE5vpc4fAt\n"
	"EHJf/y8RF/wd4TlcL1BdePUCAwEAAQ==\n"
	"-----END PUBLIC KEY-----\n";

static const char big_rsa_4096_tok[] =
	"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiaWciLCJkZXZpY2U"
	"iOiJkIiwianRpIjoiai1rNDA5NiIsImlhdCI6MTgwMDAwMDAwMCwiZXhwIjoxOTA"
	"wMDAwMDAwfQ.LxBHEv5X02PELdTHiKpyJKWq3t4uzqJiwgJkj9K2R9lUwLGB5dtS"
	"I7FczvtvwMDkv3x-d9w89J5b0YaF3umNXM6VIib3-jZyQww8s3vvi6SV7ImiKWQw"
	"wVNiWyAataKmNllipNhYRbqM76I1S8QXHE0F3YgZDWPsLf8ROeCFrpYR8fmKHJmJ"
	"nbRH7MPnSB4iN1hlZPl9nzAeHBxRyrBbpNv1ES3MjiQU0I-nHPFm5lUzM6hTYJ1y"
	"KrQ86zOklYAJ6rvLyJMJKvRAFTslZwrA76DWMopRrrw8SwKWYHSnf7OqdVT8htVV"
	"L9CS-MVwas_u0PO3_elV19frlqFnnQ2uk10bhRc_P4iC_7r7yMSlJIIn2flrCQDD"
	"brPTTTDJ_t9tJRQoEPL_0cXTgqvCnlkGJLkGKpqEimBUZvtoLfShu5Ju0gzJiCKU"
	"djCAmRzxtGIF6SGIv0ku-m-eqFAJm8wghsslN8rIRqDwDNIey2pvv9oJlSaJ4EM1"
	"mRWE8wRpB4prB_sQLewSzIynzQ_83ffrIFnXR_jbdNBmWxOlfV3qay2uaIjLnY1d"
	"tmiQKItOlqAKqqWiz0ojT4yuJ1f8gA0Ihwmjf_ScJ6tkDc20kY1ot0MBJr285mdi"
	"j7ND1zpJxIDCbKpKaO0sHgKpPvIydSRl11R4oG0-_s1gnZJD4KW8QLI";

static const char big_rsa_3000_e3_pem[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIIBlzANBgkqhkiG9w0BAQEFAAOCAYQAMIIBfwKCAXgA6nFmYa7Da2wGyzvO+bnd\n"
	"ODhcnYS29oQcoj2WoSZpKKmRnQp0fCpqG5IouhEmefPMtkiU3AAuqrPnvucB9Wb3\n"
	"tdXVh3Mu/89l4KT/ygfZ2sxGBbNXyjM7hNN5tdOHhxxMfspYwNwdmId/HlqY2Z72\n"
	"+/ig19dclcdUbPYUZ/kAj6f6TD7OZM4ZF2ZSZtXleAxxTnwy1YjswfQ+2kKaaILy\n"
	"xYrvvy8ItKz2Ka2vCsYhYW4HC1rsgrA2MMwZphJw0XT5Kn4cZKHZBupDKDqQCgur\n"
	"WnWdfWemvC7nElwtyiG2O7AEF7w2OLBgsGQfOhAKH3Z3F0wo+MLB4buLhZgul/T+\n"
	"FMNDmF0q8s1PbDSmAk53vYCI7Emk4HponUVBjc1vG8XDOwGTQ7UTqcUtFG3DPD9G\n"
	"aNyiPyccEHD4WCJC43p+e5V+/pxQCNQX9oAFZVg0VdVXUGxSN7d3Z4SCJJuM+p6h\n"
	"HxY0AdTTIlm4Km/IDPOXfnehnzuTyeFFAgED\n"
	"-----END PUBLIC KEY-----\n";

static const char big_rsa_3000_e3_tok[] =
	"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiaWciLCJkZXZpY2U"
	"iOiJkIiwianRpIjoiai1rMzAwMGUzIiwiaWF0IjoxODAwMDAwMDAwLCJleHAiOjE"
	"5MDAwMDAwMDB9.p6JJja0Pq13i10LrlK7GP5JdGdGWGOa3w0e8EvYTeOA7DlbI3j"
	"neGxyDBWRibvog-cHF_JtSlP6Go3B1UMvGNOxesZVRAhRITXHzV-Vr_x-cnksojq"
	"rgxy906HLULh_hNw4GOD2woV-c7HEjdFQ1nu_erRY_YHkgFvHtQGQIN1TaYPKifX"
	"SvOv5RcpxNetzewT3KMX-ZOqOblKEyh5d4DYmnxxM4bXJNhnIqa6yXpG5tTywQ2r"
	"hmguqEMTk2PBDRRuZmhxwGCbtGKY1hbca4-_bYeNekv0ScLaZS1XmcI3j-GhrsNB"
	"j2hp7KWljdmLVS-UH10pFivRGVFEwaxcxGdIiOh775HccM7RQ6uS9Tb6-z-p6-Db"
	"fV-RwzgJXbvOGKYx1rROxivsMIZiKgR1ZTJKIIN6CiYN9zGk4GKwUtkYn6odE7nZ"
	"twTpqdMf3PfdjQKrKWMEB5LVuLmiySMFRdzO8oSrDQEaqA67bNv0HGjs_GGDRFWA"
	"fT";

/* tok with its signature replaced by sig[0..n). */
static void resign(struct bm_buf *t, const char *tok, const void *sig, size_t n)
{
	const char *d2 = strrchr(tok, '.');

	bm_buf_init(t, 0);
	assert_int_equal(bm_buf_add(t, tok, (size_t)(d2 + 1 - tok)), 0);
	assert_int_equal(bm_b64url_encode_buf(t, sig, n), 0);
}

/* Signatures that are not below N, or are 0 or 1, are refused. */
static void check_bad_sigs(struct bm_jwt_keyring *ring, const char *tok, const char *pem,
			   size_t pem_len)
{
	mbedtls_pk_context pk;
	unsigned char n[512];
	size_t k;
	struct bm_buf t;

	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_parse_public_key(&pk, (const unsigned char *)pem,
						     pem_len), 0);
	k = mbedtls_pk_get_len(&pk);
	assert_int_equal(mbedtls_mpi_write_binary(&mbedtls_pk_rsa(pk)->N, n, k), 0);
	for (int v = 0; v < 5; v++) {
		unsigned char sig[512];
		if (v == 0)
			memcpy(sig, n, k);                      /* N */
		else if (v == 1)
			memset(sig, 0xff, k);                   /* > N */
		else
			memset(sig, 0, k);
		if (v == 3)
			sig[k - 1] = 1;                         /* 1 */
		if (v == 4) {
			memcpy(sig, n, k);                      /* N - 1 */
			sig[k - 1]--;
		}
		resign(&t, tok, sig, k);
		assert_int_equal(bm_jwt_verify(ring, (char *)t.data, t.len, NOW, 0, NULL),
				 BM_ETOKEN_SIG);
		bm_buf_release(&t);
	}
	mbedtls_pk_free(&pk);
}

static void check_kat(const char *pem, const char *tok)
{
	struct bm_jwt_keyring *ring;
	struct bm_jwt_key *key;
	struct bm_jwt_claims c;
	char *t;

	assert_int_equal(bm_jwt_key_parse(pem, strlen(pem), &key), 0);
	assert_int_equal(bm_jwt_key_alg(key), BM_JWT_RS256);
	assert_int_equal(bm_jwt_keyring_new(&ring), 0);
	assert_int_equal(bm_jwt_keyring_add(ring, key), 0);
	assert_int_equal(bm_jwt_verify(ring, tok, strlen(tok), NOW, 0, &c), 0);
	assert_string_equal(c.sub, "big");
	/* One character in the middle of the signature altered. */
	t = strdup(tok);
	assert_non_null(t);
	t[strlen(t) - 100] = t[strlen(t) - 100] == 'A' ? 'B' : 'A';
	assert_int_equal(bm_jwt_verify(ring, t, strlen(t), NOW, 0, NULL), BM_ETOKEN_SIG);
	free(t);
	check_bad_sigs(ring, tok, pem, strlen(pem) + 1);
	bm_jwt_keyring_free(ring);
}

static void test_rsa_sizes(void **state)
{
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_pk_context pk;
	unsigned char pem[4096];
	struct bm_jwt_key *priv, *pub;
	struct bm_jwt_keyring *ring;
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;

	check_kat(big_rsa_4096_pem, big_rsa_4096_tok);
	check_kat(big_rsa_3000_e3_pem, big_rsa_3000_e3_tok);

	/* 2056 bits (33 limbs, 257 bytes), signed here: 40 random signatures. */
	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0), 0);
	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)), 0);
	assert_int_equal(mbedtls_rsa_gen_key(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random,
					     &drbg, 2056, 65537), 0);
	assert_int_equal(mbedtls_pk_write_key_pem(&pk, pem, sizeof(pem)), 0);
	assert_int_equal(bm_jwt_key_parse(pem, strlen((char *)pem), &priv), 0);
	pub = public_copy(priv);
	assert_int_equal(bm_jwt_keyring_new(&ring), 0);
	assert_int_equal(bm_jwt_keyring_add(ring, pub), 0);
	for (int i = 0; i < 40; i++) {
		claims_fill(&c);
		snprintf(c.sub, sizeof(c.sub), "user-%d", i);
		bm_buf_reset(&b);
		assert_int_equal(bm_jwt_sign(priv, &c, &b), 0);
		assert_int_equal(bm_jwt_verify(ring, (char *)b.data, b.len, NOW, 0, &c), 0);
		assert_int_equal(atoi(c.sub + 5), i);
		b.data[b.len - 10] = b.data[b.len - 10] == 'A' ? 'B' : 'A';
		assert_int_equal(bm_jwt_verify(ring, (char *)b.data, b.len, NOW, 0, NULL),
				 BM_ETOKEN_SIG);
	}
	assert_int_equal(mbedtls_pk_write_pubkey_pem(&pk, pem, sizeof(pem)), 0);
	bm_buf_reset(&b);
	assert_int_equal(bm_jwt_sign(priv, &c, &b), 0);
	check_bad_sigs(ring, (char *)b.data, (char *)pem, strlen((char *)pem) + 1);
	bm_buf_release(&b);
	bm_jwt_keyring_free(ring);
	bm_jwt_key_free(priv);
	mbedtls_pk_free(&pk);
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
}

/* --- the fast RSA arithmetic held against mbedTLS ----------------------------- */

/* N (big-endian, *k bytes) and e of an RSA context. */
static uint64_t rsa_ne(mbedtls_rsa_context *rsa, unsigned char *n, size_t *k)
{
	unsigned char eb[8];
	uint64_t e = 0;

	*k = mbedtls_rsa_get_len(rsa);
	assert_int_equal(mbedtls_mpi_write_binary(&rsa->N, n, *k), 0);
	assert_int_equal(mbedtls_mpi_write_binary(&rsa->E, eb, 8), 0);
	for (int i = 0; i < 8; i++)
		e = e << 8 | eb[i];
	return e;
}

/* Row implementations to compare (1 or 2); skips the test in a build
 * without the arithmetic. */
static int rsa_impls(void)
{
	int rc = bm_jwt_rsa_portable(0);

	if (rc < 0)
		skip();
	return 1 + rc;
}

/* RFC 8017 section 9.2 step 5: a modulus too short for the padding string's
 * 8 bytes cannot carry a valid signature.  Below 2048 bits bm_jwt refuses
 * the key anyway; the arithmetic on its own must refuse as well (with k < 54
 * the padding length went negative and the check read before its buffer). */
static void test_rsa_short_modulus(void **state)
{
	static const int bits[] = { 464, 488, 400 };   /* k = 58, 61, 50 */
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_rsa_context rsa;
	unsigned char n[64], em[64], sig[64], hash[32];
	size_t k;
	uint64_t e;

	rsa_impls();
	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0), 0);
	memset(hash, 0x5c, sizeof(hash));
	for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
		assert_int_equal(mbedtls_rsa_gen_key(&rsa, mbedtls_ctr_drbg_random, &drbg,
						     (unsigned)bits[i], 3), 0);
		e = rsa_ne(&rsa, n, &k);
		assert_int_equal(k, ((size_t)bits[i] + 7) / 8);
		if (k >= 54) {
			/* 00 01, 0..7 bytes of FF, 00, DigestInfo, hash: signed
			 * exactly, so only the length rule can refuse it. */
			rt_em_encode(em, k, hash);
			assert_int_equal(mbedtls_rsa_private(&rsa, mbedtls_ctr_drbg_random,
							     &drbg, em, sig), 0);
		} else {
			memset(sig, 0, sizeof(sig));
			sig[k - 1] = 2;
		}
		assert_int_equal(bm_jwt_rsa_verify(n, k, e, hash, sig), BM_ETOKEN_SIG);
		assert_int_not_equal(mbedtls_rsa_rsassa_pkcs1_v15_verify(&rsa, NULL, NULL,
									  MBEDTLS_RSA_PUBLIC,
									  MBEDTLS_MD_SHA256, 32,
									  hash, sig), 0);
		mbedtls_rsa_free(&rsa);
	}
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
}

/* The block s^e mod N must be the encoding byte for byte: blocks that
 * differ in one place, signed exactly with a 1024-bit key, are refused by
 * the arithmetic on its own and by mbedTLS; the exact one is accepted. */
static void test_rsa_block_exact(void **state)
{
	mbedtls_entropy_context ent;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_rsa_context rsa;
	unsigned char n[128], em[128], sig[128], hash[32];
	size_t k, ps;
	uint64_t e;
	int impls = rsa_impls();

	mbedtls_entropy_init(&ent);
	mbedtls_ctr_drbg_init(&drbg);
	assert_int_equal(mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0), 0);
	mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
	assert_int_equal(mbedtls_rsa_gen_key(&rsa, mbedtls_ctr_drbg_random, &drbg, 1024, 3), 0);
	e = rsa_ne(&rsa, n, &k);
	ps = k - 3 - sizeof(rt_sha256_digest_info) - 32;
	memset(hash, 0xa5, sizeof(hash));
	for (int v = 0; v < 9; v++) {
		rt_em_encode(em, k, hash);
		switch (v) {
		case 1: em[1] = 2; break;                      /* block type */
		case 2: em[2] = 0xfe; break;                   /* padding byte */
		case 3: em[2 + ps - 1] = 0x01; break;          /* last padding byte */
		case 4: em[2 + ps] = 0x01; break;              /* separator */
		case 5: em[3 + ps + 1] ^= 0x01; break;         /* DigestInfo length */
		case 6: em[3 + ps + 18] = 0x21; break;         /* hash length */
		case 7: em[k - 1] ^= 0x80; break;              /* hash */
		case 8:                                        /* shifted, garbage after */
			memmove(em + k - 53, em + k - 52, 52);
			em[k - 1] = 0x42;
			break;
		}
		assert_int_equal(mbedtls_rsa_private(&rsa, mbedtls_ctr_drbg_random, &drbg,
						     em, sig), 0);
		for (int impl = 0; impl < impls; impl++) {
			bm_jwt_rsa_portable(impl);
			assert_int_equal(bm_jwt_rsa_verify(n, k, e, hash, sig),
					 v ? BM_ETOKEN_SIG : 0);
		}
		assert_int_equal(mbedtls_rsa_rsassa_pkcs1_v15_verify(&rsa, NULL, NULL,
								     MBEDTLS_RSA_PUBLIC,
								     MBEDTLS_MD_SHA256, 32,
								     hash, sig) == 0, v == 0);
	}
	bm_jwt_rsa_portable(0);
	mbedtls_rsa_free(&rsa);
	mbedtls_ctr_drbg_free(&drbg);
	mbedtls_entropy_free(&ent);
}

static uint64_t xs_state = 0x243f6a8885a308d3ull;

static uint64_t xs(void)
{
	xs_state ^= xs_state << 13;
	xs_state ^= xs_state >> 7;
	xs_state ^= xs_state << 17;
	return xs_state;
}

/* p (k bytes, big-endian) += d, wrapping at k bytes. */
static void be_add(unsigned char *p, size_t k, int d)
{
	for (size_t i = k; i-- > 0 && d;) {
		d += p[i];
		p[i] = (unsigned char)d;
		d = d < 0 ? -((255 - d) / 256) : d / 256;
	}
}

/* Both row implementations (the mulx/adcx/adox ones where the CPU has them,
 * and the portable C ones) against mbedtls_rsa_public: moduli of 1 to 512
 * bytes around the limb and unrolling boundaries, shaped for carries (all
 * FF, 80 00..00 01, random), exponents 3, 65537, 2^61 - 1 and 2^64 - 1, and
 * s = 0, 1, 2, N - 2, N - 1, random, N, N + 1, FF..FF: RSAVP1 refuses s >= N
 * (BM_ERANGE, where mbedTLS refuses too). */
static void test_rsa_paths_agree(void **state)
{
	static const size_t sizes[] = { 1, 7, 8, 9, 16, 24, 63, 64, 65, 128, 129, 200, 255,
					256, 257, 258, 264, 272, 375, 384, 511, 512 };
	static const uint64_t exps[] = { 3, 65537, 0x1fffffffffffffffull, UINT64_MAX };
	unsigned char n[512], s[512], want[512], got[512], eb[8], hash[32] = { 0 };
	int impls = rsa_impls(), compared = 0;

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t k = sizes[si];
		for (int shape = 0; shape < 3; shape++) {
			for (size_t i = 0; i < k; i++)
				n[i] = shape == 0 ? 0xff : shape == 1 ? 0 : (unsigned char)xs();
			if (shape == 1)
				n[0] = 0x80;
			n[0] |= shape == 2 ? 1 : 0;
			n[k - 1] |= 1;
			for (size_t ei = 0; ei < sizeof(exps) / sizeof(exps[0]); ei++) {
				mbedtls_rsa_context rsa;
				uint64_t e = exps[ei];
				for (int i = 0; i < 8; i++)
					eb[i] = (unsigned char)(e >> (56 - 8 * i));
				mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
				assert_int_equal(mbedtls_rsa_import_raw(&rsa, n, k, NULL, 0, NULL, 0,
									NULL, 0, eb, 8), 0);
				assert_int_equal(mbedtls_rsa_complete(&rsa), 0);
				for (int sv = 0; sv < 9; sv++) {
					int rc;
					memset(s, sv == 8 ? 0xff : 0, k);
					if (sv <= 2)
						s[k - 1] = (unsigned char)sv;
					if (sv >= 3 && sv <= 7)
						memcpy(s, n, k);
					if (sv == 3 || sv == 4)
						be_add(s, k, sv - 5);           /* N - 2, N - 1 */
					if (sv == 5) {
						for (size_t i = 0; i < k; i++)
							s[i] = (unsigned char)xs();
						s[0] = (unsigned char)(s[0] % n[0]);
					}
					if (sv == 7)
						be_add(s, k, 1);                /* N + 1 */
					rc = mbedtls_rsa_public(&rsa, s, want);
					assert_int_equal(rc != 0, memcmp(s, n, k) >= 0);
					for (int impl = 0; impl < impls; impl++) {
						bm_jwt_rsa_portable(impl);
						assert_int_equal(bm_jwt_rsa_public(n, k, e, s, got),
								 rc ? BM_ERANGE : 0);
						if (!rc)
							assert_memory_equal(got, want, k);
						compared++;
					}
				}
				mbedtls_rsa_free(&rsa);
			}
		}
	}
	/* Every odd one-byte modulus and every s: non-squarefree ones (9, 27,
	 * 225...) take the Montgomery steps through products that are multiples
	 * of N, where a reduction lands on N itself and must give 0. */
	for (unsigned nv = 1; nv < 256; nv += 2) {
		for (size_t ei = 0; ei < 2; ei++) {
			mbedtls_rsa_context rsa;
			uint64_t e = exps[ei];
			n[0] = (unsigned char)nv;
			for (int i = 0; i < 8; i++)
				eb[i] = (unsigned char)(e >> (56 - 8 * i));
			mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
			assert_int_equal(mbedtls_rsa_import_raw(&rsa, n, 1, NULL, 0, NULL, 0,
								NULL, 0, eb, 8), 0);
			assert_int_equal(mbedtls_rsa_complete(&rsa), 0);
			for (unsigned sv = 0; sv < nv; sv++) {
				s[0] = (unsigned char)sv;
				assert_int_equal(mbedtls_rsa_public(&rsa, s, want), 0);
				for (int impl = 0; impl < impls; impl++) {
					bm_jwt_rsa_portable(impl);
					assert_int_equal(bm_jwt_rsa_public(n, 1, e, s, got), 0);
					assert_int_equal(got[0], want[0]);
					compared++;
				}
			}
			mbedtls_rsa_free(&rsa);
		}
	}
	bm_jwt_rsa_portable(0);
	printf("rsa: %d public operations compared with mbedTLS (%s)\n", compared,
	       impls == 2 ? "assembly and portable rows" : "portable rows only");

	/* What the arithmetic declines (mbedTLS verifies such keys). */
	memset(n, 0xab, 256);
	memset(s, 0, 256);
	assert_int_equal(bm_jwt_rsa_public(n, 256, 65537, s, got), 0);
	assert_int_equal(bm_jwt_rsa_public(n, 256, 1, s, got), BM_EINVAL);
	assert_int_equal(bm_jwt_rsa_public(n, 256, 2, s, got), BM_EINVAL);
	assert_int_equal(bm_jwt_rsa_public(n, 256, 65536, s, got), BM_EINVAL);
	assert_int_equal(bm_jwt_rsa_public(n, 0, 3, s, got), BM_EINVAL);
	n[255] = 0xaa;                                          /* even */
	assert_int_equal(bm_jwt_rsa_public(n, 256, 3, s, got), BM_EINVAL);
	assert_int_equal(bm_jwt_rsa_verify(n, 256, 3, hash, s), BM_EINVAL);
	n[255] = 0xab;
	n[0] = 0;                                               /* not minimal */
	assert_int_equal(bm_jwt_rsa_public(n, 256, 3, s, got), BM_EINVAL);
	{
		unsigned char big[513];
		memset(big, 0xab, sizeof(big));
		assert_int_equal(bm_jwt_rsa_public(big, sizeof(big), 3, big, big), BM_EINVAL);
	}
}

/* The RS256 path as the daemons run it, on the portable rows: keys loaded
 * (and checked against mbedTLS) under them, OpenSSL's tokens, a bm_jwt
 * round trip, and the refusals of check_bad_sigs. */
static void test_rsa_portable(void **state)
{
	rsa_impls();
	bm_jwt_rsa_portable(1);
	check_kat(big_rsa_4096_pem, big_rsa_4096_tok);
	check_kat(big_rsa_3000_e3_pem, big_rsa_3000_e3_tok);
	roundtrip(K.rsa_a, 256);
	bm_jwt_rsa_portable(0);
}

/* r = floor(cbrt(a)) for a > 0 (Newton from above). */
static void mpi_cbrt(mbedtls_mpi *r, const mbedtls_mpi *a)
{
	mbedtls_mpi x, y, t;

	mbedtls_mpi_init(&x);
	mbedtls_mpi_init(&y);
	mbedtls_mpi_init(&t);
	assert_int_equal(mbedtls_mpi_lset(&x, 1), 0);
	assert_int_equal(mbedtls_mpi_shift_l(&x, (mbedtls_mpi_bitlen(a) + 2) / 3), 0);
	for (;;) {
		/* y = (2x + a / x^2) / 3 */
		assert_int_equal(mbedtls_mpi_mul_mpi(&t, &x, &x), 0);
		assert_int_equal(mbedtls_mpi_div_mpi(&t, NULL, a, &t), 0);
		assert_int_equal(mbedtls_mpi_add_mpi(&y, &x, &x), 0);
		assert_int_equal(mbedtls_mpi_add_mpi(&y, &y, &t), 0);
		assert_int_equal(mbedtls_mpi_div_int(&y, NULL, &y, 3), 0);
		if (mbedtls_mpi_cmp_mpi(&y, &x) >= 0)
			break;
		assert_int_equal(mbedtls_mpi_copy(&x, &y), 0);
	}
	assert_int_equal(mbedtls_mpi_copy(r, &x), 0);
	mbedtls_mpi_free(&x);
	mbedtls_mpi_free(&y);
	mbedtls_mpi_free(&t);
}

/* x with x^3 = c mod 2^m, c odd: cubing permutes the odd residues, and
 * (x + 2^i)^3 = x^3 + 3 x^2 2^i flips bit i of the cube, so fix one bit at
 * a time. */
static void mpi_cbrt_2m(mbedtls_mpi *x, const mbedtls_mpi *c, size_t m)
{
	mbedtls_mpi t;

	mbedtls_mpi_init(&t);
	assert_int_equal(mbedtls_mpi_lset(x, 1), 0);
	for (size_t i = 1; i < m; i++) {
		assert_int_equal(mbedtls_mpi_mul_mpi(&t, x, x), 0);
		assert_int_equal(mbedtls_mpi_mul_mpi(&t, &t, x), 0);
		if (mbedtls_mpi_get_bit(&t, i) != mbedtls_mpi_get_bit(c, i))
			assert_int_equal(mbedtls_mpi_set_bit(x, i, 1), 0);
	}
	mbedtls_mpi_free(&t);
}

/* sig is refused by bm_jwt_verify (on every row implementation), by the
 * arithmetic on its own, and by mbedTLS. */
static void assert_forgery_refused(struct bm_jwt_keyring *ring, mbedtls_rsa_context *rsa,
				   const char *signing_input, const unsigned char hash[32],
				   const unsigned char *sig, size_t k)
{
	unsigned char n[512];
	struct bm_buf t = BM_BUF_INIT;
	uint64_t e = rsa_ne(rsa, n, &k);
	int impls = rsa_impls();

	assert_int_equal(bm_buf_adds(&t, signing_input), 0);
	assert_int_equal(bm_buf_add(&t, ".", 1), 0);
	assert_int_equal(bm_b64url_encode_buf(&t, sig, k), 0);
	for (int impl = 0; impl < impls; impl++) {
		bm_jwt_rsa_portable(impl);
		assert_int_equal(bm_jwt_verify(ring, (char *)t.data, t.len, NOW, 0, NULL),
				 BM_ETOKEN_SIG);
		assert_int_equal(bm_jwt_rsa_verify(n, k, e, hash, sig), BM_ETOKEN_SIG);
	}
	bm_jwt_rsa_portable(0);
	assert_int_not_equal(mbedtls_rsa_rsassa_pkcs1_v15_verify(rsa, NULL, NULL,
								  MBEDTLS_RSA_PUBLIC,
								  MBEDTLS_MD_SHA256, 32, hash,
								  sig), 0);
	bm_buf_release(&t);
}

/* e = 3 forgeries that fool a lenient PKCS#1 v1.5 parser, with cube roots
 * over the integers (no key needed), against the 3000-bit e = 3 key:
 *  - Bleichenbacher 2006: 00 01 FF x8 00 DigestInfo hash, then garbage to
 *    the end (a parser that stops after the hash);
 *  - garbage in the padding (Kuehn et al. 2008, BERserk-like): 00 01 FF..
 *    FF garbage 00 DigestInfo hash, right-aligned (a parser that skips the
 *    padding or reads it from the end).
 * Each cube is checked to have the intended shape before it is tried. */
static void test_rsa_e3_forgeries(void **state)
{
	static const char hdr[] = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
	mbedtls_pk_context pk;
	mbedtls_rsa_context *rsa;
	struct bm_jwt_key *key;
	struct bm_jwt_keyring *ring;
	unsigned char hash[32], em[512], cube[512], sig[512], prefix[62];
	mbedtls_mpi T, S, C, X, L;
	struct bm_buf in = BM_BUF_INIT;
	size_t k, mid;
	int tries = 0;

	mbedtls_pk_init(&pk);
	assert_int_equal(mbedtls_pk_parse_public_key(&pk, (const unsigned char *)big_rsa_3000_e3_pem,
						     sizeof(big_rsa_3000_e3_pem)), 0);
	rsa = mbedtls_pk_rsa(pk);
	k = mbedtls_rsa_get_len(rsa);
	assert_int_equal(mbedtls_mpi_cmp_int(&rsa->E, 3), 0);
	assert_int_equal(bm_jwt_key_parse(big_rsa_3000_e3_pem, strlen(big_rsa_3000_e3_pem), &key), 0);
	assert_int_equal(bm_jwt_keyring_new(&ring), 0);
	assert_int_equal(bm_jwt_keyring_add(ring, key), 0);
	mbedtls_mpi_init(&T);
	mbedtls_mpi_init(&S);
	mbedtls_mpi_init(&C);
	mbedtls_mpi_init(&X);
	mbedtls_mpi_init(&L);

	/* A token whose hash is odd (the second forgery fixes the cube's low
	 * bits, which needs an odd value there). */
	do {
		char pay[160];
		snprintf(pay, sizeof(pay), "{\"sub\":\"mallory\",\"device\":\"d\",\"jti\":\"f%d\","
			 "\"iat\":1800000000,\"exp\":1900000000}", tries++);
		bm_buf_reset(&in);
		assert_int_equal(bm_b64url_encode_buf(&in, hdr, strlen(hdr)), 0);
		assert_int_equal(bm_buf_add(&in, ".", 1), 0);
		assert_int_equal(bm_b64url_encode_buf(&in, pay, strlen(pay)), 0);
		assert_int_equal(mbedtls_sha256_ret(in.data, in.len, hash, 0), 0);
	} while (!(hash[31] & 1));
	rt_em_encode(em, k, hash);

	/* Bleichenbacher 2006: s = floor(cbrt(prefix || FF..FF)). */
	rt_em_encode(prefix, sizeof(prefix), hash);
	memcpy(cube, prefix, sizeof(prefix));
	memset(cube + sizeof(prefix), 0xff, k - sizeof(prefix));
	assert_int_equal(mbedtls_mpi_read_binary(&T, cube, k), 0);
	mpi_cbrt(&S, &T);
	assert_int_equal(mbedtls_mpi_write_binary(&S, sig, k), 0);
	assert_int_equal(mbedtls_rsa_public(rsa, sig, cube), 0);
	assert_memory_equal(cube, prefix, sizeof(prefix));      /* s^3 mod N */
	assert_memory_not_equal(cube, em, k);
	assert_forgery_refused(ring, rsa, (char *)in.data, hash, sig, k);

	/* Garbage in the padding: the low 52 bytes (00 DigestInfo hash) from a
	 * cube root mod 2^416, the top from an integer cube root. */
	assert_int_equal(mbedtls_mpi_read_binary(&C, em + k - 52, 52), 0);
	mpi_cbrt_2m(&X, &C, 52 * 8);
	memcpy(cube, em, k);                                    /* 00 01 FF..FF */
	assert_int_equal(mbedtls_mpi_read_binary(&T, cube, k), 0);
	mpi_cbrt(&S, &T);
	assert_int_equal(mbedtls_mpi_shift_r(&S, 52 * 8), 0);
	assert_int_equal(mbedtls_mpi_sub_int(&S, &S, 1), 0);
	assert_int_equal(mbedtls_mpi_shift_l(&S, 52 * 8), 0);
	assert_int_equal(mbedtls_mpi_add_mpi(&S, &S, &X), 0);
	assert_int_equal(mbedtls_mpi_write_binary(&S, sig, k), 0);
	assert_int_equal(mbedtls_rsa_public(rsa, sig, cube), 0);
	assert_memory_equal(cube, em, 10);                      /* 00 01 FF x8 */
	assert_memory_equal(cube + k - 52, em + k - 52, 52);    /* 00 DigestInfo hash */
	for (mid = 10; mid < k - 52 && cube[mid] == 0xff; mid++)
		;
	assert_true(mid < k - 52);                              /* garbage in between */
	assert_forgery_refused(ring, rsa, (char *)in.data, hash, sig, k);

	/* And the genuine block's signature cannot be had: the cube root of
	 * the correct encoding, rounded either way, is refused. */
	assert_int_equal(mbedtls_mpi_read_binary(&T, em, k), 0);
	mpi_cbrt(&S, &T);
	for (int up = 0; up < 2; up++) {
		assert_int_equal(mbedtls_mpi_add_int(&S, &S, up), 0);
		assert_int_equal(mbedtls_mpi_write_binary(&S, sig, k), 0);
		assert_forgery_refused(ring, rsa, (char *)in.data, hash, sig, k);
	}

	mbedtls_mpi_free(&T);
	mbedtls_mpi_free(&S);
	mbedtls_mpi_free(&C);
	mbedtls_mpi_free(&X);
	mbedtls_mpi_free(&L);
	bm_buf_release(&in);
	bm_jwt_keyring_free(ring);
	mbedtls_pk_free(&pk);
}

/* A signature is exactly as long as the modulus (RFC 7518 3.3, I2OSP):
 * one whose value has a leading zero byte verifies with it, and neither
 * without it nor with one more. */
static void test_rsa_leading_zero(void **state)
{
	struct bm_buf b = BM_BUF_INIT, t;
	struct bm_jwt_claims c;
	uint8_t sig[600];
	size_t n = 0;
	int i, impls = rsa_impls();

	for (i = 0; i < 20000; i++) {
		claims_fill(&c);
		snprintf(c.jti, sizeof(c.jti), "lz-%d", i);
		bm_buf_reset(&b);
		assert_int_equal(bm_jwt_sign(K.rsa_a, &c, &b), 0);
		assert_int_equal(bm_b64url_decode(strrchr((char *)b.data, '.') + 1,
						  strlen(strrchr((char *)b.data, '.') + 1),
						  sig + 1, sizeof(sig) - 1, &n), 0);
		if (sig[1] == 0)
			break;
	}
	assert_true(i < 20000);
	assert_int_equal(n, 256);
	sig[0] = 0;
	for (int impl = 0; impl < impls; impl++) {
		bm_jwt_rsa_portable(impl);
		assert_int_equal(verify_str((char *)b.data, NULL), 0);
		resign(&t, (char *)b.data, sig + 2, n - 1);      /* zero stripped */
		assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
		bm_buf_release(&t);
		resign(&t, (char *)b.data, sig, n + 1);          /* one more */
		assert_int_equal(verify_str((char *)t.data, NULL), BM_ETOKEN_SIG);
		bm_buf_release(&t);
	}
	bm_jwt_rsa_portable(0);
	bm_buf_release(&b);
}

/* --- rates (printed, not asserted) ---------------------------------------------- */

static void rate(const char *what, const struct bm_jwt_key *key, int sign_n,
		 int verify_n)
{
	struct bm_buf b = BM_BUF_INIT;
	struct bm_jwt_claims c;
	uint64_t t0, t1;
	int ok = 0;

	claims_fill(&c);
	t0 = bm_mono_ns();
	for (int i = 0; i < sign_n; i++) {
		bm_buf_reset(&b);
		c.jti[0] = 0;
		assert_int_equal(bm_jwt_sign(key, &c, &b), 0);
	}
	t1 = bm_mono_ns();
	printf("jwt %s sign:   %5d in %8.1f ms = %8.0f/s (%.3f ms each)\n", what,
	       sign_n, (t1 - t0) / 1e6, sign_n / ((t1 - t0) / 1e9),
	       (t1 - t0) / 1e6 / sign_n);
	t0 = bm_mono_ns();
	for (int i = 0; i < verify_n; i++)
		ok += bm_jwt_verify(K.ring, (char *)b.data, b.len, NOW, 0, &c) == 0;
	t1 = bm_mono_ns();
	assert_int_equal(ok, verify_n);
	printf("jwt %s verify: %5d in %8.1f ms = %8.0f/s (%.3f ms each, token %zu bytes)\n",
	       what, verify_n, (t1 - t0) / 1e6, verify_n / ((t1 - t0) / 1e9),
	       (t1 - t0) / 1e6 / verify_n, b.len);
	bm_buf_release(&b);
}

static void test_rates(void **state)
{
	rate("RS256", K.rsa_a, 200, 2000);
	rate("ES256", K.ec_a, 200, 200);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url_vectors),
		cmocka_unit_test(test_b64url_refuses),
		cmocka_unit_test(test_b64url_roundtrip),
		cmocka_unit_test(test_b64_standard),
		cmocka_unit_test(test_random_hex),
		cmocka_unit_test(test_random_fork),
		cmocka_unit_test(test_roundtrip_rs256),
		cmocka_unit_test(test_roundtrip_es256),
		cmocka_unit_test(test_sign_refuses),
		cmocka_unit_test(test_refuse_alg),
		cmocka_unit_test(test_refuse_key),
		cmocka_unit_test(test_refuse_sig),
		cmocka_unit_test(test_refuse_time),
		cmocka_unit_test(test_refuse_claims),
		cmocka_unit_test(test_refuse_malformed),
		cmocka_unit_test(test_codes_distinct),
		cmocka_unit_test(test_key_files),
		cmocka_unit_test(test_key_unsupported),
		cmocka_unit_test(test_keyring_many),
		cmocka_unit_test(test_interop),
		cmocka_unit_test(test_rsa_sizes),
		cmocka_unit_test(test_rsa_short_modulus),
		cmocka_unit_test(test_rsa_block_exact),
		cmocka_unit_test(test_rsa_paths_agree),
		cmocka_unit_test(test_rsa_portable),
		cmocka_unit_test(test_rsa_e3_forgeries),
		cmocka_unit_test(test_rsa_leading_zero),
		cmocka_unit_test(test_rates),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
