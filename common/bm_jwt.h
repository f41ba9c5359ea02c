/*
 * bm_jwt.h - JSON Web Tokens (RFC 7519) signed with RS256 or ES256 (RFC 7518
 * section 3.3 and 3.4), on mbedTLS 2.28 and jansson.
 *
 * Token format (compact JWS, RFC 7515 section 7.1):
 *
 *   base64url(header) "." base64url(payload) "." base64url(signature)
 *
 * base64url is unpadded and strict (bm_b64.h).  A token is at most
 * BM_JWT_MAX_LEN bytes.
 *
 *   header   {"alg":"RS256"|"ES256","typ":"JWT","kid":"<16 hex>"}
 *            kid = first 16 hex digits of SHA-256 over the public key's DER
 *            SubjectPublicKeyInfo, so a verifier holding several servers'
 *            keys picks the right one.  "typ", when present, must be "JWT";
 *            a "crit" member is refused (we understand no extension).
 *   payload  {"sub":EID,"device":ID,"jti":ID,"iat":s,"nbf":s,"exp":s}
 *            "eid" is accepted as an alias of "sub" on verify (if both are
 *            present they must be equal).  sub, device, jti, iat and exp are
 *            required; nbf is optional.  Times are Unix seconds (integers,
 *            or reals, which are truncated).  Other members are ignored.
 *   sig      RS256: RSASSA-PKCS1-v1_5 with SHA-256, as long as the modulus.
 *            ES256: ECDSA P-256 with SHA-256, the JOSE form r||s (64 bytes,
 *            each big-endian, zero-padded), not DER.  Signing is
 *            deterministic (RFC 6979).
 *
 * Key files are PEM: the private key as mbedTLS writes it (PKCS#1 "RSA
 * PRIVATE KEY" or SEC1 "EC PRIVATE KEY"), public keys as SubjectPublicKeyInfo
 * "PUBLIC KEY".  Accepted keys: RSA with a modulus of 2048 to 4096 bits, and
 * EC on P-256.
 *
 * RS256 verification does the RSA public operation itself (Montgomery
 * arithmetic, mulx/adcx/adox on x86-64 where the CPU has them): about twice
 * as fast as mbedTLS's, which signs, and verifies ES256 and any key where the
 * two disagree on a test value when the key is loaded.
 *
 * Random numbers (RSA key generation and blinding, jti values) come from one
 * process-wide CTR-DRBG seeded from the mbedTLS entropy sources, created on
 * first use and reseeded when the process id changes (after fork).  Not
 * thread-safe: BIMIP daemons are single-threaded.
 */
#ifndef BM_JWT_H
#define BM_JWT_H

#include <stddef.h>
#include <stdint.h>

struct bm_buf;

#define BM_JWT_MAX_LEN 4096

enum bm_jwt_alg {
	BM_JWT_RS256 = 1,   /* default */
	BM_JWT_ES256 = 2,
};

/* The claims BIMIP uses.  Strings are NUL-terminated UTF-8. */
struct bm_jwt_claims {
	char sub[129];      /* EID; required, non-empty */
	char device[65];    /* connection resource id; required, non-empty */
	char jti[65];       /* token id (revocation); bm_jwt_sign fills it */
	int64_t iat;        /* issued at; bm_jwt_sign fills it when 0 */
	int64_t nbf;        /* not before; 0 = absent */
	int64_t exp;        /* expiry; required, > 0 */
};

struct bm_jwt_key;
struct bm_jwt_keyring;

/* "RS256" or "ES256"; "?" for anything else. */
const char *bm_jwt_alg_name(enum bm_jwt_alg alg);
/* Parses "RS256" / "ES256" (exact).  Returns 0 or BM_EINVAL. */
int bm_jwt_alg_parse(const char *s, enum bm_jwt_alg *out);

/* Write 2*nbytes random lowercase hex digits and a NUL to out, which must
 * hold 2*nbytes+1 bytes.  Returns 0 or BM_ECRYPTO. */
int bm_jwt_random_hex(char *out, size_t nbytes);

/* --- keys ------------------------------------------------------------------ */

/* Generate a key pair: RSA-2048 (e = 65537) for RS256, P-256 for ES256.
 * RSA generation takes from a fraction of a second to a few seconds.
 * On success *out is a new key the caller frees with bm_jwt_key_free().
 * Returns 0, BM_EINVAL (unknown alg), BM_ENOMEM or BM_ECRYPTO. */
int bm_jwt_key_generate(enum bm_jwt_alg alg, struct bm_jwt_key **out);

/* Parse a PEM (or DER) private key, or failing that a public key, of len
 * bytes (need not be NUL-terminated).  On success *out is a new key.
 * Returns 0, BM_EDECODE (not a key), BM_EINVAL (key type or size not
 * accepted, see above), BM_ETOOBIG (len > 64 KiB) or BM_ENOMEM. */
int bm_jwt_key_parse(const void *pem, size_t len, struct bm_jwt_key **out);

/* Read path and parse it as bm_jwt_key_parse() does.  Returns the same codes,
 * or BM_ENOENT / BM_EIO (logged with the path). */
int bm_jwt_key_load(const char *path, struct bm_jwt_key **out);

/* Write the key to path as PEM: the private key with mode 0600 if the key
 * has one, else the public key with mode 0644.  Written to a temporary file
 * in the same directory, fsync'ed, then renamed over path, so a reader sees
 * the old or the new file, never a torn one.
 * Returns 0, BM_EIO (logged) or BM_ECRYPTO. */
int bm_jwt_key_save(const struct bm_jwt_key *key, const char *path);

/* Append the public key as PEM ("-----BEGIN PUBLIC KEY-----" ...) to out.
 * Returns 0, BM_ETOOBIG / BM_ENOMEM (out unchanged) or BM_ECRYPTO. */
int bm_jwt_key_public_pem(const struct bm_jwt_key *key, struct bm_buf *out);

/* The key id: 16 lowercase hex digits, valid while the key lives. */
const char *bm_jwt_key_kid(const struct bm_jwt_key *key);
enum bm_jwt_alg bm_jwt_key_alg(const struct bm_jwt_key *key);
/* 1 if the key can sign, 0 if it is public only. */
int bm_jwt_key_has_private(const struct bm_jwt_key *key);
/* NULL is a no-op.  Private material is zeroed. */
void bm_jwt_key_free(struct bm_jwt_key *key);

/* --- keyrings -------------------------------------------------------------- */

/* A set of keys indexed by kid, used to verify.  Keys may be public-only or
 * private (only the public half is used to verify). */
int bm_jwt_keyring_new(struct bm_jwt_keyring **out);   /* 0 or BM_ENOMEM */
/* Add key.  On success the ring takes ownership of key; on error the caller
 * keeps it.  Returns 0, BM_EEXIST (a key with the same kid is present) or
 * BM_ENOMEM. */
int bm_jwt_keyring_add(struct bm_jwt_keyring *ring, struct bm_jwt_key *key);
/* The key with this kid, or NULL.  Borrowed from the ring. */
const struct bm_jwt_key *bm_jwt_keyring_find(const struct bm_jwt_keyring *ring,
					     const char *kid);
size_t bm_jwt_keyring_count(const struct bm_jwt_keyring *ring);
/* Frees the ring and every key in it.  NULL is a no-op. */
void bm_jwt_keyring_free(struct bm_jwt_keyring *ring);

/* --- tokens ---------------------------------------------------------------- */

/* Sign claims with key (which must have a private half) and append the token
 * to out.  If c->jti is empty it is filled with 32 random hex digits; if
 * c->iat is 0 it is set to bm_wall_s(); c is updated in place so the caller
 * learns the values that went into the token.
 * Returns 0, BM_EINVAL (public-only key, empty sub or device, exp <= 0,
 * negative times, a string not NUL-terminated in its field or not UTF-8),
 * BM_ETOOBIG (token would exceed BM_JWT_MAX_LEN, or out->max_cap),
 * BM_ENOMEM or BM_ECRYPTO.  out is unchanged on error. */
int bm_jwt_sign(const struct bm_jwt_key *key, struct bm_jwt_claims *c,
		struct bm_buf *out);

/* Sign header_json and payload_json exactly as given (no checks on their
 * contents) with key's algorithm, and append the token to out.  For tests,
 * fuzz corpora and tooling that must produce unusual tokens.
 * Returns 0, BM_EINVAL (public-only key), BM_ETOOBIG, BM_ENOMEM or
 * BM_ECRYPTO. */
int bm_jwt_sign_raw(const struct bm_jwt_key *key, const char *header_json,
		    const char *payload_json, struct bm_buf *out);

/* Verify tok (len bytes, need not be NUL-terminated) against the keys of
 * ring at time now_s (Unix seconds), allowing leeway_s seconds of clock skew
 * (>= 0), and fill *out (may be NULL) with its claims.  Checks run in this
 * order, and the first failure is returned:
 *
 *   BM_ETOKEN_MALFORMED  tok NULL or longer than BM_JWT_MAX_LEN, not three
 *                        dot-separated parts, bad base64url, header or
 *                        payload not a JSON object (duplicate members and
 *                        invalid UTF-8 refused), header without a string
 *                        "alg", "typ" not "JWT", "crit" present
 *   BM_ETOKEN_ALG        alg is not RS256 or ES256 ("none" included)
 *   BM_ETOKEN_KEY        kid unknown to the ring (a header without kid is
 *                        accepted only when the ring holds exactly one key)
 *   BM_ETOKEN_ALG        alg does not match the type of that key
 *   BM_ETOKEN_SIG        signature of the wrong length or not valid for the
 *                        key (signed by another key, or altered)
 *   BM_ETOKEN_CLAIMS     a required claim missing, of the wrong type, empty,
 *                        too long for its field, negative, or sub != eid
 *   BM_ETOKEN_NOTYET     nbf > now + leeway, or iat > now + leeway
 *   BM_ETOKEN_EXPIRED    exp + leeway <= now
 *
 * The signature is checked before the claims are read, so a forged token
 * learns nothing about the claim checks.  *out is zeroed on failure.  Allocation is limited to jansson's
 * parse of the two JSON parts; decoding uses bounded stack buffers.
 * Returns 0 or one of the codes above (BM_ENOMEM if jansson runs out). */
int bm_jwt_verify(const struct bm_jwt_keyring *ring, const char *tok,
		  size_t len, int64_t now_s, int64_t leeway_s,
		  struct bm_jwt_claims *out);

/* --- the RSA public operation, for tests -------------------------------------
 *
 * RS256 verification uses its own RSA arithmetic (see above); these expose
 * it on any modulus, so the unit test and tests/fuzz/fuzz_rsa.c can hold it
 * against mbedTLS.  n is the modulus, nlen big-endian bytes with the first
 * non-zero, at most 512; e the public exponent.  The daemons do not call
 * them. */

/* out (nlen bytes) = sig (nlen bytes) ^ e mod n.  Returns 0, BM_ERANGE
 * (sig >= n, which RSAVP1 refuses) or BM_EINVAL (n even, e even or below 3,
 * nlen 0 or above 512, n[0] zero: RS256 leaves such keys to mbedTLS). */
int bm_jwt_rsa_public(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t *sig,
		      uint8_t *out);

/* RSASSA-PKCS1-v1_5 verification (RFC 8017 section 8.2.2) of a SHA-256 hash
 * with sig (nlen bytes): 0, BM_ETOKEN_SIG, or BM_EINVAL as above. */
int bm_jwt_rsa_verify(const uint8_t *n, size_t nlen, uint64_t e, const uint8_t hash[32],
		      const uint8_t *sig);

/* on = 1: the arithmetic uses its portable C rows from now on, for every
 * key, even where the CPU has mulx/adcx/adox; on = 0: back to the fastest
 * (the default).  Returns 1 if the fastest are the assembly rows, 0 if the
 * portable rows are all there is, BM_EINVAL if the build has no arithmetic
 * of its own (no 128-bit integer type: mbedTLS verifies, and the two
 * functions above return BM_EINVAL). */
int bm_jwt_rsa_portable(int on);

#endif
