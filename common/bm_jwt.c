/*
 * bm_jwt.c - RS256/ES256 JSON Web Tokens on mbedTLS 2.28 and jansson.
 * The token and key formats are specified in bm_jwt.h.
 */
#include "bm_jwt.h"
#include "bm_b64.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_time.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>

#define KEY_FILE_MAX   (64 * 1024)
#define RSA_MIN_BITS   2048
#define RSA_MAX_BITS   4096
#define SIG_MAX        (RSA_MAX_BITS / 8)
#define ES256_SIG_LEN  64
/* Decoded header or payload: every character of a maximal token. */
#define PART_MAX       (BM_JWT_MAX_LEN / 4 * 3)
/* Claim times beyond 2^53 (JSON's exact integers) are refused. */
#define TIME_MAX       ((int64_t)1 << 53)
#define LEEWAY_MAX     ((int64_t)1 << 40)

struct rsa_mont;

struct bm_jwt_key {
	mbedtls_pk_context pk;
	enum bm_jwt_alg alg;
	int priv;
	char kid[17];
	struct rsa_mont *mont;   /* RSA: the fast public operation, or NULL */
};

struct bm_jwt_keyring {
	struct bm_jwt_key **keys;
	size_t n, cap;
};

/* --- the RSA public operation ------------------------------------------------ */

/*
 * Verifying RS256 is one exponentiation by the public exponent (65537: 16
 * squarings and one multiplication) modulo a 2048-4096-bit N.  mbedTLS 2.28
 * spends ~37 us on it for 2048 bits on the development VM (3 cycles per
 * 64x64-bit multiply-add, no dedicated squaring), the largest cost of
 * accepting a session at the edge.  Here: Montgomery multiplication in
 * separated operand scanning form (the product, then the reduction, both
 * as rows t += a * word), a squaring that computes each cross product once,
 * and on x86-64 with BMI2 and ADX a row with two interleaved carry chains
 * (mulx, adcx, adox): ~16 us.  Every value here is public (signature, key),
 * so nothing needs to be constant-time.  key_finish() compares the result
 * with mbedTLS's on a test value and keeps mbedTLS for a key where they
 * differ; without a 128-bit integer type mbedTLS is used throughout.
 */
#if defined(__SIZEOF_INT128__)
#define RSA_FAST 1
#define LIMBS_MAX (RSA_MAX_BITS / 64)

__extension__ typedef unsigned __int128 u128;

struct rsa_mont {
	size_t n;               /* limbs of N */
	size_t k;               /* bytes of N (= signature length) */
	uint64_t e;             /* public exponent, odd, >= 3 */
	uint64_t n0inv;         /* -N^-1 mod 2^64 */
	uint64_t N[LIMBS_MAX];  /* little-endian limbs */
	uint64_t RR[LIMBS_MAX]; /* R^2 mod N, R = 2^(64 n) */
};

typedef uint64_t row_fn(uint64_t *t, const uint64_t *a, size_t n, uint64_t b);

/* t[0..n) += a[0..n) * b; returns the carry word (n >= 1). */
static uint64_t row_c(uint64_t *t, const uint64_t *a, size_t n, uint64_t b)
{
	uint64_t c = 0;

	for (size_t j = 0; j < n; j++) {
		u128 p = (u128)a[j] * b + t[j] + c;
		t[j] = (uint64_t)p;
		c = (uint64_t)(p >> 64);
	}
	return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>

/* row_c with mulx (b in rdx): CF carries the low halves into t, OF the high
 * half of the previous product; n % 4 single limbs, then groups of four.
 * jrcxz and lea leave both flags alone. */
__attribute__((target("bmi2,adx")))
static uint64_t row_adx(uint64_t *t, const uint64_t *a, size_t n, uint64_t b)
{
	uint64_t hi = 0, lo, x, cnt = n & 3;
	const uint64_t zero = 0;

	__asm__ volatile(
		"xorl %%eax, %%eax\n\t"
		"jrcxz 3f\n\t"
		"4:\n\t"
		"mulx 0(%[a]), %[lo], %[x]\n\t"
		"adcx 0(%[t]), %[lo]\n\t"
		"adox %[hi], %[lo]\n\t"
		"movq %[lo], 0(%[t])\n\t"
		"movq %[x], %[hi]\n\t"
		"leaq 8(%[a]), %[a]\n\t"
		"leaq 8(%[t]), %[t]\n\t"
		"leaq -1(%[cnt]), %[cnt]\n\t"
		"jrcxz 3f\n\t"
		"jmp 4b\n\t"
		"3:\n\t"
		"movq %[n4], %[cnt]\n\t"
		"jrcxz 2f\n\t"
		"1:\n\t"
		"mulx 0(%[a]), %[lo], %[x]\n\t"
		"adcx 0(%[t]), %[lo]\n\t"
		"adox %[hi], %[lo]\n\t"
		"movq %[lo], 0(%[t])\n\t"
		"mulx 8(%[a]), %[lo], %[hi]\n\t"
		"adcx 8(%[t]), %[lo]\n\t"
		"adox %[x], %[lo]\n\t"
		"movq %[lo], 8(%[t])\n\t"
		"mulx 16(%[a]), %[lo], %[x]\n\t"
		"adcx 16(%[t]), %[lo]\n\t"
		"adox %[hi], %[lo]\n\t"
		"movq %[lo], 16(%[t])\n\t"
		"mulx 24(%[a]), %[lo], %[hi]\n\t"
		"adcx 24(%[t]), %[lo]\n\t"
		"adox %[x], %[lo]\n\t"
		"movq %[lo], 24(%[t])\n\t"
		"leaq 32(%[a]), %[a]\n\t"
		"leaq 32(%[t]), %[t]\n\t"
		"leaq -1(%[cnt]), %[cnt]\n\t"
		"jrcxz 2f\n\t"
		"jmp 1b\n\t"
		"2:\n\t"
		"adcx %[zero], %[hi]\n\t"
		"adox %[zero], %[hi]\n\t"
		: [hi] "+&r"(hi), [lo] "=&r"(lo), [x] "=&r"(x), [a] "+&r"(a), [t] "+&r"(t),
		  [cnt] "+&c"(cnt)
		: "d"(b), [zero] "r"(zero), [n4] "r"(n >> 2)
		: "rax", "cc", "memory");
	return hi;
}

static row_fn *row_pick(void)
{
	unsigned a, b, c, d;

	/* Leaf 7: EBX bit 8 BMI2 (mulx), bit 19 ADX (adcx, adox). */
	if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 8)) && (b & (1u << 19)))
		return row_adx;
	return row_c;
}
#else
static row_fn *row_pick(void)
{
	return row_c;
}
#endif

static row_fn *row;   /* set by rsa_mont_init() before any use */

/* r = t[n..2n] - N when that is needed to bring it below N, else t[n..2n).
 * c is the carry word above t[2n-1] (0 or 1). */
static void mont_final(const struct rsa_mont *m, uint64_t *r, const uint64_t *t, uint64_t c)
{
	size_t n = m->n, i = n;

	if (!c) {
		while (i-- > 0 && t[n + i] == m->N[i])
			;
		if (i != (size_t)-1 && t[n + i] < m->N[i]) {
			memcpy(r, t + n, n * sizeof(*r));
			return;
		}
	}
	c = 0;
	for (i = 0; i < n; i++) {
		u128 d = (u128)t[n + i] - m->N[i] - c;
		r[i] = (uint64_t)d;
		c = (uint64_t)(d >> 64) & 1;
	}
}

/* Montgomery reduction of t[0..2n): r = t / R mod N. */
static void mont_reduce(const struct rsa_mont *m, uint64_t *r, uint64_t *t)
{
	uint64_t c = 0;

	for (size_t i = 0; i < m->n; i++) {
		u128 s = (u128)t[i + m->n] + row(t + i, m->N, m->n, t[i] * m->n0inv) + c;
		t[i + m->n] = (uint64_t)s;
		c = (uint64_t)(s >> 64);
	}
	mont_final(m, r, t, c);
}

/* r = a b / R mod N for a, b < N; r may be a or b. */
static void mont_mul(const struct rsa_mont *m, uint64_t *r, const uint64_t *a,
		     const uint64_t *b)
{
	uint64_t t[2 * LIMBS_MAX];

	memset(t, 0, m->n * sizeof(*t));
	for (size_t i = 0; i < m->n; i++)
		t[i + m->n] = row(t + i, a, m->n, b[i]);
	mont_reduce(m, r, t);
}

/* r = a^2 / R mod N: cross products once, doubled, plus the squares. */
static void mont_sqr(const struct rsa_mont *m, uint64_t *r, const uint64_t *a)
{
	uint64_t t[2 * LIMBS_MAX], top = 0, c = 0;
	size_t n = m->n;

	t[0] = 0;
	t[2 * n - 1] = 0;
	memset(t + 1, 0, (n - 1) * sizeof(*t));
	for (size_t i = 0; i + 1 < n; i++)
		t[i + n] = row(t + 2 * i + 1, a + i + 1, n - 1 - i, a[i]);
	for (size_t i = 0; i < 2 * n; i++) {
		uint64_t v = t[i];
		t[i] = v << 1 | top;
		top = v >> 63;
	}
	for (size_t i = 0; i < n; i++) {
		u128 sq = (u128)a[i] * a[i];
		u128 lo = (u128)t[2 * i] + (uint64_t)sq + c;
		u128 hi = (u128)t[2 * i + 1] + (uint64_t)(sq >> 64) + (uint64_t)(lo >> 64);
		t[2 * i] = (uint64_t)lo;
		t[2 * i + 1] = (uint64_t)hi;
		c = (uint64_t)(hi >> 64);
	}
	mont_reduce(m, r, t);
}

static void limbs_from_be(uint64_t *r, size_t n, const unsigned char *p, size_t k)
{
	memset(r, 0, n * sizeof(*r));
	for (size_t i = 0; i < k; i++)
		r[i / 8] |= (uint64_t)p[k - 1 - i] << (8 * (i % 8));
}

static void limbs_to_be(unsigned char *p, size_t k, const uint64_t *r)
{
	for (size_t i = 0; i < k; i++)
		p[k - 1 - i] = (unsigned char)(r[i / 8] >> (8 * (i % 8)));
}

/* out (m->k bytes) = sig^e mod N, as mbedtls_rsa_public does it.
 * Returns 0, or -1 when sig >= N. */
static int rsa_mont_public(const struct rsa_mont *m, const unsigned char *sig,
			   unsigned char *out)
{
	uint64_t s[LIMBS_MAX], a[LIMBS_MAX], x[LIMBS_MAX], one[LIMBS_MAX];
	size_t i;
	int bit;

	limbs_from_be(s, m->n, sig, m->k);
	for (i = m->n; i-- > 0 && s[i] == m->N[i];)
		;
	if (i == (size_t)-1 || s[i] > m->N[i])
		return -1;
	mont_mul(m, a, s, m->RR);   /* s R mod N */
	memcpy(x, a, m->n * sizeof(*x));
	for (bit = 62; bit >= 0 && !(m->e >> (bit + 1)); bit--)
		;
	/* bit is now one below the exponent's top bit. */
	for (; bit >= 0; bit--) {
		mont_sqr(m, x, x);
		if (m->e >> bit & 1)
			mont_mul(m, x, x, a);
	}
	memset(one, 0, m->n * sizeof(*one));
	one[0] = 1;
	mont_mul(m, x, x, one);
	limbs_to_be(out, m->k, x);
	return 0;
}

/* Set m up for the modulus n (k big-endian bytes, the first non-zero) and
 * the exponent e.  Returns 0, or -1 when the arithmetic here does not fit:
 * n even or longer than 4096 bits, e even or below 3. */
static int rsa_mont_init(struct rsa_mont *m, const unsigned char *n, size_t k, uint64_t e)
{
	unsigned char buf[RSA_MAX_BITS / 8];
	mbedtls_mpi N, R;
	uint64_t inv = 1;
	int rc = -1;

	if (!row)
		row = row_pick();
	if (k == 0 || k > sizeof(buf) || n[0] == 0 || !(n[k - 1] & 1) || e < 3 || !(e & 1))
		return -1;
	memset(m, 0, sizeof(*m));
	m->k = k;
	m->n = (k + 7) / 8;
	m->e = e;
	limbs_from_be(m->N, m->n, n, k);
	/* Newton: each step doubles the correct low bits (1 -> 64). */
	for (int i = 0; i < 6; i++)
		inv *= 2 - m->N[0] * inv;
	m->n0inv = -inv;
	mbedtls_mpi_init(&N);
	mbedtls_mpi_init(&R);
	if (mbedtls_mpi_read_binary(&N, n, k) || mbedtls_mpi_lset(&R, 1) ||
	    mbedtls_mpi_shift_l(&R, 128 * m->n) || mbedtls_mpi_mod_mpi(&R, &R, &N) ||
	    mbedtls_mpi_write_binary(&R, buf, k))
		goto out;
	limbs_from_be(m->RR, m->n, buf, k);
	rc = 0;
out:
	mbedtls_mpi_free(&N);
	mbedtls_mpi_free(&R);
	return rc;
}

/* The fast context of an RSA key, checked against mbedTLS on one value;
 * NULL when the key does not fit it (then mbedTLS verifies alone). */
static struct rsa_mont *rsa_mont_new(mbedtls_rsa_context *rsa)
{
	unsigned char buf[RSA_MAX_BITS / 8], want[RSA_MAX_BITS / 8], got[RSA_MAX_BITS / 8];
	struct rsa_mont *m;
	mbedtls_mpi N, E;
	uint64_t e = 0;
	size_t k;
	int ok = 0;

	mbedtls_mpi_init(&N);
	mbedtls_mpi_init(&E);
	m = malloc(sizeof(*m));
	if (!m || mbedtls_rsa_export(rsa, &N, NULL, NULL, NULL, &E) ||
	    mbedtls_mpi_bitlen(&E) > 64)
		goto out;
	k = mbedtls_mpi_size(&N);
	if (k > sizeof(buf) || mbedtls_rsa_get_len(rsa) != k ||
	    mbedtls_mpi_write_binary(&E, buf, 8))
		goto out;
	for (int i = 0; i < 8; i++)
		e = e << 8 | buf[i];
	if (mbedtls_mpi_write_binary(&N, buf, k) || rsa_mont_init(m, buf, k, e))
		goto out;
	/* The test value: N with its top byte lowered by one and the bytes
	 * below it scrambled, so every limb is busy. */
	for (size_t i = 1; i < k; i++)
		buf[i] ^= (unsigned char)(0x5a + 7 * i);
	buf[0] = (unsigned char)(buf[0] > 1 ? buf[0] - 1 : 0);
	ok = !mbedtls_rsa_public(rsa, buf, want) && !rsa_mont_public(m, buf, got) &&
	     !memcmp(want, got, k);
	if (!ok)
		bm_warn("jwt", "fast RSA verification disagrees with mbedTLS: not used "
			"for this key");
out:
	mbedtls_mpi_free(&N);
	mbedtls_mpi_free(&E);
	if (!ok) {
		free(m);
		m = NULL;
	}
	return m;
}

/* RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 section 8.2.2): sig^e mod N
 * must be 00 01 FF..FF 00 DigestInfo(SHA-256, hash), byte for byte, with at
 * least 8 bytes of FF (section 9.2 step 5: a shorter N cannot verify). */
static int rsa_mont_verify(const struct rsa_mont *m, const unsigned char hash[32],
			   const unsigned char *sig)
{
	static const unsigned char digest_info[19] = {
		0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
		0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
	};
	unsigned char em[RSA_MAX_BITS / 8];
	size_t ps;

	if (m->k < 3 + 8 + sizeof(digest_info) + 32)
		return -1;
	ps = m->k - 3 - sizeof(digest_info) - 32;
	if (rsa_mont_public(m, sig, em))
		return -1;
	if (em[0] != 0 || em[1] != 1 || em[2 + ps] != 0)
		return -1;
	for (size_t i = 0; i < ps; i++)
		if (em[2 + i] != 0xff)
			return -1;
	return memcmp(em + 3 + ps, digest_info, sizeof(digest_info)) ||
	       memcmp(em + 3 + ps + sizeof(digest_info), hash, 32) ? -1 : 0;
}

int bm_jwt_rsa_portable(int on)
{
	row_fn *best = row_pick();

	row = on ? row_c : best;
	return best != row_c;
}

int bm_jwt_rsa_public(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t *sig,
		      uint8_t *out)
{
	struct rsa_mont m;

	if (rsa_mont_init(&m, n, nlen, e))
		return BM_EINVAL;
	return rsa_mont_public(&m, sig, out) ? BM_ERANGE : 0;
}

int bm_jwt_rsa_verify(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t hash[32],
		      const uint8_t *sig)
{
	struct rsa_mont m;

	if (rsa_mont_init(&m, n, nlen, e))
		return BM_EINVAL;
	return rsa_mont_verify(&m, hash, sig) ? BM_ETOKEN_SIG : 0;
}
#else
static struct rsa_mont *rsa_mont_new(mbedtls_rsa_context *rsa)
{
	return NULL;
}

static int rsa_mont_verify(const struct rsa_mont *m, const unsigned char hash[32],
			   const unsigned char *sig)
{
	return -1;
}

int bm_jwt_rsa_portable(int on)
{
	return BM_EINVAL;
}

int bm_jwt_rsa_public(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t *sig,
		      uint8_t *out)
{
	return BM_EINVAL;
}

int bm_jwt_rsa_verify(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t hash[32],
		      const uint8_t *sig)
{
	return BM_EINVAL;
}
#endif

/* --- random numbers ---------------------------------------------------------- */

static struct {
	int ready;
	pid_t pid;
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
} rng;

/* The process DRBG, seeded on first use and reseeded in a forked child so
 * parent and child never share a stream.  NULL if seeding failed. */
static mbedtls_ctr_drbg_context *rng_get(void)
{
	static const char pers[] = "bimip-jwt";
	pid_t pid = getpid();

	if (!rng.ready) {
		mbedtls_entropy_init(&rng.entropy);
		mbedtls_ctr_drbg_init(&rng.drbg);
		if (mbedtls_ctr_drbg_seed(&rng.drbg, mbedtls_entropy_func,
					  &rng.entropy,
					  (const unsigned char *)pers,
					  sizeof(pers) - 1)) {
			bm_err("jwt", "cannot seed random generator");
			mbedtls_ctr_drbg_free(&rng.drbg);
			mbedtls_entropy_free(&rng.entropy);
			return NULL;
		}
		rng.ready = 1;
		rng.pid = pid;
	} else if (rng.pid != pid) {
		if (mbedtls_ctr_drbg_reseed(&rng.drbg, (const unsigned char *)&pid,
					    sizeof(pid)))
			return NULL;
		rng.pid = pid;
	}
	return &rng.drbg;
}

int bm_jwt_random_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	mbedtls_ctr_drbg_context *drbg = rng_get();
	unsigned char tmp[64];
	size_t done = 0;

	if (!drbg)
		return BM_ECRYPTO;
	while (done < nbytes) {
		size_t n = nbytes - done < sizeof(tmp) ? nbytes - done : sizeof(tmp);
		if (mbedtls_ctr_drbg_random(drbg, tmp, n))
			return BM_ECRYPTO;
		for (size_t i = 0; i < n; i++) {
			out[2 * (done + i)] = hex[tmp[i] >> 4];
			out[2 * (done + i) + 1] = hex[tmp[i] & 15];
		}
		done += n;
	}
	out[2 * nbytes] = 0;
	return 0;
}

/* --- algorithms ------------------------------------------------------------- */

const char *bm_jwt_alg_name(enum bm_jwt_alg alg)
{
	switch (alg) {
	case BM_JWT_RS256: return "RS256";
	case BM_JWT_ES256: return "ES256";
	}
	return "?";
}

int bm_jwt_alg_parse(const char *s, enum bm_jwt_alg *out)
{
	if (!strcmp(s, "RS256"))
		*out = BM_JWT_RS256;
	else if (!strcmp(s, "ES256"))
		*out = BM_JWT_ES256;
	else
		return BM_EINVAL;
	return 0;
}

/* --- keys ------------------------------------------------------------------- */

static struct bm_jwt_key *key_alloc(void)
{
	struct bm_jwt_key *k = calloc(1, sizeof(*k));

	if (k)
		mbedtls_pk_init(&k->pk);
	return k;
}

void bm_jwt_key_free(struct bm_jwt_key *key)
{
	if (!key)
		return;
	mbedtls_pk_free(&key->pk);   /* zeroizes the key material */
	free(key->mont);
	free(key);
}

/* Check the key type and size, set alg and compute the kid. */
static int key_finish(struct bm_jwt_key *k)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char der[RSA_MAX_BITS / 8 + 128], hash[32];
	int n;

	switch (mbedtls_pk_get_type(&k->pk)) {
	case MBEDTLS_PK_RSA: {
		size_t bits = mbedtls_pk_get_bitlen(&k->pk);
		if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS)
			return BM_EINVAL;
		k->alg = BM_JWT_RS256;
		k->mont = rsa_mont_new(mbedtls_pk_rsa(k->pk));
		break;
	}
	case MBEDTLS_PK_ECKEY:
		if (mbedtls_pk_ec(k->pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1)
			return BM_EINVAL;
		k->alg = BM_JWT_ES256;
		break;
	default:
		return BM_EINVAL;
	}
	/* mbedtls_pk_write_pubkey_der writes at the end of the buffer. */
	n = mbedtls_pk_write_pubkey_der(&k->pk, der, sizeof(der));
	if (n <= 0)
		return BM_ECRYPTO;
	if (mbedtls_sha256_ret(der + sizeof(der) - n, (size_t)n, hash, 0))
		return BM_ECRYPTO;
	for (int i = 0; i < 8; i++) {
		k->kid[2 * i] = hex[hash[i] >> 4];
		k->kid[2 * i + 1] = hex[hash[i] & 15];
	}
	k->kid[16] = 0;
	return 0;
}

int bm_jwt_key_generate(enum bm_jwt_alg alg, struct bm_jwt_key **out)
{
	mbedtls_ctr_drbg_context *drbg = rng_get();
	struct bm_jwt_key *k;
	int rc;

	if (alg != BM_JWT_RS256 && alg != BM_JWT_ES256)
		return BM_EINVAL;
	if (!drbg)
		return BM_ECRYPTO;
	k = key_alloc();
	if (!k)
		return BM_ENOMEM;
	rc = BM_ECRYPTO;
	if (alg == BM_JWT_RS256) {
		if (mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)))
			goto out_free;
		if (mbedtls_rsa_gen_key(mbedtls_pk_rsa(k->pk), mbedtls_ctr_drbg_random,
					drbg, RSA_MIN_BITS, 65537))
			goto out_free;
	} else {
		if (mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)))
			goto out_free;
		if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(k->pk),
					mbedtls_ctr_drbg_random, drbg))
			goto out_free;
	}
	k->priv = 1;
	rc = key_finish(k);
	if (rc)
		goto out_free;
	*out = k;
	return 0;

out_free:
	bm_jwt_key_free(k);
	return rc;
}

int bm_jwt_key_parse(const void *pem, size_t len, struct bm_jwt_key **out)
{
	struct bm_jwt_key *k;
	unsigned char *copy;
	int rc;

	if (len > KEY_FILE_MAX)
		return BM_ETOOBIG;
	/* mbedTLS wants PEM NUL-terminated, with the NUL counted in the length,
	 * and DER without it: try both. */
	copy = malloc(len + 1);
	if (!copy)
		return BM_ENOMEM;
	memcpy(copy, pem, len);
	copy[len] = 0;
	k = key_alloc();
	if (!k) {
		rc = BM_ENOMEM;
		goto out_copy;
	}
	k->priv = 1;
	if (!mbedtls_pk_parse_key(&k->pk, copy, len + 1, NULL, 0) ||
	    (mbedtls_pk_free(&k->pk), mbedtls_pk_init(&k->pk),
	     !mbedtls_pk_parse_key(&k->pk, copy, len, NULL, 0)))
		goto parsed;
	mbedtls_pk_free(&k->pk);
	mbedtls_pk_init(&k->pk);
	k->priv = 0;
	if (!mbedtls_pk_parse_public_key(&k->pk, copy, len + 1) ||
	    (mbedtls_pk_free(&k->pk), mbedtls_pk_init(&k->pk),
	     !mbedtls_pk_parse_public_key(&k->pk, copy, len)))
		goto parsed;
	rc = BM_EDECODE;
	goto out_key;

parsed:
	rc = key_finish(k);
	if (rc)
		goto out_key;
	*out = k;
	k = NULL;
out_key:
	bm_jwt_key_free(k);
out_copy:
	mbedtls_platform_zeroize(copy, len + 1);
	free(copy);
	return rc;
}

int bm_jwt_key_load(const char *path, struct bm_jwt_key **out)
{
	unsigned char *data = NULL;
	size_t len = 0;
	ssize_t n;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		rc = errno == ENOENT ? BM_ENOENT : BM_EIO;
		bm_warn("jwt", "cannot open key '%s': %s", path, strerror(errno));
		return rc;
	}
	data = malloc(KEY_FILE_MAX + 1);
	if (!data) {
		rc = BM_ENOMEM;
		goto out_close;
	}
	/* Read one byte more than the limit to detect an oversize file. */
	while (len <= KEY_FILE_MAX) {
		n = read(fd, data + len, KEY_FILE_MAX + 1 - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			bm_warn("jwt", "cannot read key '%s': %s", path, strerror(errno));
			rc = BM_EIO;
			goto out_data;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	rc = bm_jwt_key_parse(data, len, out);
	if (rc)
		bm_warn("jwt", "cannot load key '%s': %s", path, bm_strerror(rc));
out_data:
	mbedtls_platform_zeroize(data, KEY_FILE_MAX + 1);
	free(data);
out_close:
	close(fd);
	return rc;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* fsync the directory holding path, so a rename into it is durable. */
static void sync_dir(const char *path)
{
	char dir[4096];
	const char *slash = strrchr(path, '/');
	int fd;

	if (!slash) {
		strcpy(dir, ".");
	} else {
		size_t n = slash == path ? 1 : (size_t)(slash - path);
		if (n >= sizeof(dir))
			return;
		memcpy(dir, path, n);
		dir[n] = 0;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return;
	(void)fsync(fd);
	close(fd);
}

int bm_jwt_key_save(const struct bm_jwt_key *key, const char *path)
{
	/* Large enough for an RSA-4096 private key in PEM (about 3.3 KB). */
	unsigned char pem[8192];
	mbedtls_pk_context *pk = (mbedtls_pk_context *)&key->pk;
	char tmp[4096];
	mode_t mode = key->priv ? 0600 : 0644;
	int fd, rc = BM_EIO;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return BM_EINVAL;
	if (key->priv ? mbedtls_pk_write_key_pem(pk, pem, sizeof(pem))
		      : mbedtls_pk_write_pubkey_pem(pk, pem, sizeof(pem))) {
		rc = BM_ECRYPTO;
		goto out_wipe;
	}
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd == -1) {
		bm_err("jwt", "cannot create key file '%s': %s", tmp, strerror(errno));
		goto out_wipe;
	}
	if (fchmod(fd, mode) == -1 ||
	    write_all(fd, pem, strlen((char *)pem)) == -1 || fsync(fd) == -1) {
		bm_err("jwt", "cannot write key file '%s': %s", tmp, strerror(errno));
		close(fd);
		goto out_unlink;
	}
	if (close(fd) == -1) {
		bm_err("jwt", "cannot write key file '%s': %s", tmp, strerror(errno));
		goto out_unlink;
	}
	if (rename(tmp, path) == -1) {
		bm_err("jwt", "cannot rename key file '%s': %s", tmp, strerror(errno));
		goto out_unlink;
	}
	sync_dir(path);
	rc = 0;
	goto out_wipe;

out_unlink:
	(void)unlink(tmp);
out_wipe:
	mbedtls_platform_zeroize(pem, sizeof(pem));
	return rc;
}

int bm_jwt_key_public_pem(const struct bm_jwt_key *key, struct bm_buf *out)
{
	unsigned char pem[2048];
	mbedtls_pk_context *pk = (mbedtls_pk_context *)&key->pk;

	if (mbedtls_pk_write_pubkey_pem(pk, pem, sizeof(pem)))
		return BM_ECRYPTO;
	return bm_buf_add(out, pem, strlen((char *)pem));
}

const char *bm_jwt_key_kid(const struct bm_jwt_key *key)
{
	return key->kid;
}

enum bm_jwt_alg bm_jwt_key_alg(const struct bm_jwt_key *key)
{
	return key->alg;
}

int bm_jwt_key_has_private(const struct bm_jwt_key *key)
{
	return key->priv;
}

/* --- keyrings --------------------------------------------------------------- */

int bm_jwt_keyring_new(struct bm_jwt_keyring **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : BM_ENOMEM;
}

int bm_jwt_keyring_add(struct bm_jwt_keyring *ring, struct bm_jwt_key *key)
{
	if (bm_jwt_keyring_find(ring, key->kid))
		return BM_EEXIST;
	if (ring->n == ring->cap) {
		size_t cap = ring->cap ? ring->cap * 2 : 4;
		struct bm_jwt_key **keys = realloc(ring->keys, cap * sizeof(*keys));
		if (!keys)
			return BM_ENOMEM;
		ring->keys = keys;
		ring->cap = cap;
	}
	ring->keys[ring->n++] = key;
	return 0;
}

/* A ring holds a handful of keys (one per server): a linear scan is the
 * fastest lookup there is at that size. */
static struct bm_jwt_key *ring_find(const struct bm_jwt_keyring *ring,
				    const char *kid, size_t kid_len)
{
	for (size_t i = 0; i < ring->n; i++)
		if (strlen(ring->keys[i]->kid) == kid_len &&
		    !memcmp(ring->keys[i]->kid, kid, kid_len))
			return ring->keys[i];
	return NULL;
}

const struct bm_jwt_key *bm_jwt_keyring_find(const struct bm_jwt_keyring *ring,
					     const char *kid)
{
	return ring_find(ring, kid, strlen(kid));
}

size_t bm_jwt_keyring_count(const struct bm_jwt_keyring *ring)
{
	return ring->n;
}

void bm_jwt_keyring_free(struct bm_jwt_keyring *ring)
{
	if (!ring)
		return;
	for (size_t i = 0; i < ring->n; i++)
		bm_jwt_key_free(ring->keys[i]);
	free(ring->keys);
	free(ring);
}

/* --- signing ---------------------------------------------------------------- */

static size_t sig_len(const struct bm_jwt_key *k)
{
	return k->alg == BM_JWT_ES256 ? ES256_SIG_LEN : mbedtls_pk_get_len(&k->pk);
}

static int sign_hash(const struct bm_jwt_key *k, const unsigned char hash[32],
		     unsigned char *sig)
{
	mbedtls_ctr_drbg_context *drbg = rng_get();
	mbedtls_ecp_keypair *ec;
	mbedtls_mpi r, s;
	int rc = BM_ECRYPTO;

	if (!drbg)
		return BM_ECRYPTO;
	if (k->alg == BM_JWT_RS256) {
		/* The DRBG feeds RSA blinding (side-channel protection). */
		if (mbedtls_rsa_rsassa_pkcs1_v15_sign(mbedtls_pk_rsa(k->pk),
						      mbedtls_ctr_drbg_random, drbg,
						      MBEDTLS_RSA_PRIVATE,
						      MBEDTLS_MD_SHA256, 32, hash, sig))
			return BM_ECRYPTO;
		return 0;
	}
	ec = mbedtls_pk_ec(k->pk);
	mbedtls_mpi_init(&r);
	mbedtls_mpi_init(&s);
	/* RFC 6979 nonce; the DRBG only blinds the computation. */
	if (mbedtls_ecdsa_sign_det_ext(&ec->grp, &r, &s, &ec->d, hash, 32,
				       MBEDTLS_MD_SHA256, mbedtls_ctr_drbg_random,
				       drbg))
		goto out;
	if (mbedtls_mpi_write_binary(&r, sig, 32) ||
	    mbedtls_mpi_write_binary(&s, sig + 32, 32))
		goto out;
	rc = 0;
out:
	mbedtls_mpi_free(&r);
	mbedtls_mpi_free(&s);
	return rc;
}

int bm_jwt_sign_raw(const struct bm_jwt_key *key, const char *header_json,
		    const char *payload_json, struct bm_buf *out)
{
	unsigned char hash[32], sig[SIG_MAX];
	size_t hlen = strlen(header_json), plen = strlen(payload_json);
	size_t slen = sig_len(key), start = out->len, total;
	int rc;

	if (!key->priv)
		return BM_EINVAL;
	if (hlen > BM_JWT_MAX_LEN || plen > BM_JWT_MAX_LEN)
		return BM_ETOOBIG;
	total = bm_b64url_encoded_len(hlen) + 1 + bm_b64url_encoded_len(plen) +
		1 + bm_b64url_encoded_len(slen);
	if (total > BM_JWT_MAX_LEN)
		return BM_ETOOBIG;
	rc = bm_buf_grow(out, total);
	if (rc)
		return rc;
	/* Room is reserved: the appends below cannot fail. */
	bm_b64url_encode_buf(out, header_json, hlen);
	bm_buf_add(out, ".", 1);
	bm_b64url_encode_buf(out, payload_json, plen);
	if (mbedtls_sha256_ret(out->data + start, out->len - start, hash, 0)) {
		rc = BM_ECRYPTO;
		goto out_undo;
	}
	rc = sign_hash(key, hash, sig);
	if (rc)
		goto out_undo;
	bm_buf_add(out, ".", 1);
	bm_b64url_encode_buf(out, sig, slen);
	return 0;

out_undo:
	out->len = start;
	out->data[start] = 0;
	return rc;
}

static int claim_str_ok(const char *s, size_t size)
{
	size_t n = strnlen(s, size);

	return n > 0 && n < size;
}

int bm_jwt_sign(const struct bm_jwt_key *key, struct bm_jwt_claims *c,
		struct bm_buf *out)
{
	struct bm_jwt_claims cl = *c;
	char header[96];
	char *payload = NULL;
	json_t *o = NULL;
	int rc;

	if (!key->priv || !claim_str_ok(cl.sub, sizeof(cl.sub)) ||
	    !claim_str_ok(cl.device, sizeof(cl.device)) ||
	    strnlen(cl.jti, sizeof(cl.jti)) == sizeof(cl.jti) ||
	    cl.exp <= 0 || cl.exp > TIME_MAX || cl.iat < 0 || cl.iat > TIME_MAX ||
	    cl.nbf < 0 || cl.nbf > TIME_MAX)
		return BM_EINVAL;
	if (!cl.jti[0]) {
		rc = bm_jwt_random_hex(cl.jti, 16);
		if (rc)
			return rc;
	}
	if (!cl.iat)
		cl.iat = bm_wall_s();
	snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
		 bm_jwt_alg_name(key->alg), key->kid);

	o = json_object();
	if (!o)
		return BM_ENOMEM;
	/* json_string() refuses invalid UTF-8: that is the EINVAL here. */
	rc = BM_EINVAL;
	if (json_object_set_new(o, "sub", json_string(cl.sub)) ||
	    json_object_set_new(o, "device", json_string(cl.device)) ||
	    json_object_set_new(o, "jti", json_string(cl.jti)) ||
	    json_object_set_new(o, "iat", json_integer(cl.iat)) ||
	    (cl.nbf && json_object_set_new(o, "nbf", json_integer(cl.nbf))) ||
	    json_object_set_new(o, "exp", json_integer(cl.exp)))
		goto out;
	payload = json_dumps(o, JSON_COMPACT);
	if (!payload) {
		rc = BM_ENOMEM;
		goto out;
	}
	rc = bm_jwt_sign_raw(key, header, payload, out);
	if (!rc)
		*c = cl;
out:
	free(payload);
	json_decref(o);
	return rc;
}

/* --- verification ----------------------------------------------------------- */

static int load_json(const uint8_t *p, size_t n, json_t **out)
{
	json_error_t err;
	json_t *j = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, &err);

	if (!j)
		return json_error_code(&err) == json_error_out_of_memory ?
		       BM_ENOMEM : BM_ETOKEN_MALFORMED;
	if (!json_is_object(j)) {
		json_decref(j);
		return BM_ETOKEN_MALFORMED;
	}
	*out = j;
	return 0;
}

static int check_header(json_t *h, enum bm_jwt_alg *alg, const char **kid,
			size_t *kid_len)
{
	json_t *a = json_object_get(h, "alg");
	json_t *t = json_object_get(h, "typ");
	json_t *k = json_object_get(h, "kid");

	if (!json_is_string(a) || (t && !json_is_string(t)) ||
	    (k && !json_is_string(k)) || json_object_get(h, "crit"))
		return BM_ETOKEN_MALFORMED;
	if (t && strcasecmp(json_string_value(t), "JWT"))
		return BM_ETOKEN_MALFORMED;
	/* Exact match: "none", "HS256", "rs256" and the rest are refused. */
	if (bm_jwt_alg_parse(json_string_value(a), alg))
		return BM_ETOKEN_ALG;
	*kid = k ? json_string_value(k) : NULL;
	*kid_len = k ? json_string_length(k) : 0;
	return 0;
}

static int verify_sig(struct bm_jwt_key *k, const unsigned char hash[32],
		      const uint8_t *sig, size_t slen)
{
	mbedtls_ecp_keypair *ec;
	mbedtls_mpi r, s;
	int rc;

	if (slen != sig_len(k))
		return BM_ETOKEN_SIG;
	if (k->mont)
		return rsa_mont_verify(k->mont, hash, sig) ? BM_ETOKEN_SIG : 0;
	if (k->alg == BM_JWT_RS256)
		return mbedtls_rsa_rsassa_pkcs1_v15_verify(mbedtls_pk_rsa(k->pk),
							   NULL, NULL,
							   MBEDTLS_RSA_PUBLIC,
							   MBEDTLS_MD_SHA256, 32,
							   hash, sig) ?
		       BM_ETOKEN_SIG : 0;
	ec = mbedtls_pk_ec(k->pk);
	mbedtls_mpi_init(&r);
	mbedtls_mpi_init(&s);
	rc = mbedtls_mpi_read_binary(&r, sig, 32);
	if (!rc)
		rc = mbedtls_mpi_read_binary(&s, sig + 32, 32);
	if (rc)
		rc = BM_ENOMEM;
	else
		/* Refuses r or s outside [1, n-1] as well as a wrong signature. */
		rc = mbedtls_ecdsa_verify(&ec->grp, hash, 32, &ec->Q, &r, &s) ?
		     BM_ETOKEN_SIG : 0;
	mbedtls_mpi_free(&r);
	mbedtls_mpi_free(&s);
	return rc;
}

/* Copy a required string claim: present, a string, 1..size-1 bytes. */
static int get_str(json_t *v, char *dst, size_t size)
{
	size_t n;

	if (!json_is_string(v))
		return BM_ETOKEN_CLAIMS;
	n = json_string_length(v);
	if (n == 0 || n >= size)
		return BM_ETOKEN_CLAIMS;
	/* jansson refuses \u0000 on load, so there is no NUL inside. */
	memcpy(dst, json_string_value(v), n + 1);
	return 0;
}

/* A NumericDate (RFC 7519 section 2): a number in [0, TIME_MAX]. */
static int get_time(json_t *v, int64_t *out)
{
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);
		if (i < 0 || i > TIME_MAX)
			return BM_ETOKEN_CLAIMS;
		*out = (int64_t)i;
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (!(d >= 0 && d <= (double)TIME_MAX))   /* NaN fails too */
			return BM_ETOKEN_CLAIMS;
		*out = (int64_t)d;
		return 0;
	}
	return BM_ETOKEN_CLAIMS;
}

static int read_claims(json_t *p, struct bm_jwt_claims *c)
{
	json_t *sub = json_object_get(p, "sub");
	json_t *eid = json_object_get(p, "eid");
	json_t *nbf = json_object_get(p, "nbf");
	int rc;

	if (sub && eid && !json_equal(sub, eid))
		return BM_ETOKEN_CLAIMS;
	rc = get_str(sub ? sub : eid, c->sub, sizeof(c->sub));
	if (!rc)
		rc = get_str(json_object_get(p, "device"), c->device,
			     sizeof(c->device));
	if (!rc)
		rc = get_str(json_object_get(p, "jti"), c->jti, sizeof(c->jti));
	if (!rc)
		rc = get_time(json_object_get(p, "iat"), &c->iat);
	if (!rc)
		rc = get_time(json_object_get(p, "exp"), &c->exp);
	if (!rc && nbf)
		rc = get_time(nbf, &c->nbf);
	if (!rc && c->exp == 0)
		rc = BM_ETOKEN_CLAIMS;
	return rc;
}

int bm_jwt_verify(const struct bm_jwt_keyring *ring, const char *tok,
		  size_t len, int64_t now_s, int64_t leeway_s,
		  struct bm_jwt_claims *out)
{
	uint8_t hdr[PART_MAX], pay[PART_MAX], sig[SIG_MAX];
	size_t hlen, plen, slen, kid_len = 0;
	const char *d1, *d2, *end, *kid = NULL;
	unsigned char hash[32];
	struct bm_jwt_claims c;
	struct bm_jwt_key *key;
	json_t *h = NULL, *p = NULL;
	enum bm_jwt_alg alg;
	int rc = BM_ETOKEN_MALFORMED;

	if (out)
		memset(out, 0, sizeof(*out));
	memset(&c, 0, sizeof(c));
	if (!tok || len > BM_JWT_MAX_LEN)
		return BM_ETOKEN_MALFORMED;
	end = tok + len;
	d1 = memchr(tok, '.', len);
	d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
	if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
		return BM_ETOKEN_MALFORMED;
	if (bm_b64url_decode(tok, (size_t)(d1 - tok), hdr, sizeof(hdr), &hlen) ||
	    bm_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pay, sizeof(pay), &plen))
		return BM_ETOKEN_MALFORMED;
	rc = bm_b64url_decode(d2 + 1, (size_t)(end - d2 - 1), sig, sizeof(sig), &slen);
	if (rc == BM_ETOOBIG)
		slen = 0;   /* longer than any key's: BM_ETOKEN_SIG below */
	else if (rc)
		return BM_ETOKEN_MALFORMED;

	rc = load_json(hdr, hlen, &h);
	if (rc)
		return rc;
	rc = load_json(pay, plen, &p);
	if (rc)
		goto out;
	rc = check_header(h, &alg, &kid, &kid_len);
	if (rc)
		goto out;

	if (kid)
		key = ring_find(ring, kid, kid_len);
	else
		key = ring->n == 1 ? ring->keys[0] : NULL;
	if (!key) {
		rc = BM_ETOKEN_KEY;
		goto out;
	}
	if (key->alg != alg) {
		rc = BM_ETOKEN_ALG;
		goto out;
	}
	if (mbedtls_sha256_ret((const unsigned char *)tok, (size_t)(d2 - tok),
			       hash, 0)) {
		rc = BM_ECRYPTO;
		goto out;
	}
	rc = verify_sig(key, hash, sig, slen);
	if (rc)
		goto out;

	rc = read_claims(p, &c);
	if (rc)
		goto out;
	if (leeway_s < 0)
		leeway_s = 0;
	if (leeway_s > LEEWAY_MAX)
		leeway_s = LEEWAY_MAX;
	/* Claim times are within [0, 2^53]: none of these can overflow. */
	if (c.nbf - leeway_s > now_s || c.iat - leeway_s > now_s) {
		rc = BM_ETOKEN_NOTYET;
		goto out;
	}
	if (c.exp + leeway_s <= now_s) {
		rc = BM_ETOKEN_EXPIRED;
		goto out;
	}
	if (out)
		*out = c;
out:
	json_decref(p);
	json_decref(h);
	return rc;
}
