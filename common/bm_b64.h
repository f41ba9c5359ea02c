/*
 * bm_b64.h - base64url without padding (RFC 4648 section 5, as JOSE uses it,
 * RFC 7515 section 2) and standard padded base64 (RFC 4648 section 4).
 *
 * base64url decoding is strict, because a token is untrusted input and one
 * byte string must have exactly one accepted encoding:
 *   - only A-Z a-z 0-9 '-' '_' are accepted; '=', '+', '/', whitespace and
 *     NUL are refused;
 *   - a length of 1 modulo 4 cannot come from any byte string and is refused;
 *   - the unused low bits of the last character must be zero (so "AB" is the
 *     only encoding of the byte 0x00, and "AC" is refused).
 *
 * Standard base64 wraps mbedTLS (mbedtls_base64_*), which requires padding.
 */
#ifndef BM_B64_H
#define BM_B64_H

#include <stddef.h>
#include <stdint.h>

struct bm_buf;

/* Characters needed to encode n bytes as base64url without padding
 * (terminator not included). */
static inline size_t bm_b64url_encoded_len(size_t n)
{
	return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

/* Upper bound on the bytes that n base64url characters decode to. */
static inline size_t bm_b64url_decoded_max(size_t n)
{
	return n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
}

/* Encode n bytes of in into out (out_size bytes, room for a terminating NUL
 * included).  *out_len (may be NULL) receives the characters written, not
 * counting the NUL.  Returns 0, or BM_ETOOBIG if out is too small (out is then
 * left unspecified). */
int bm_b64url_encode(const void *in, size_t n, char *out, size_t out_size,
		     size_t *out_len);

/* Append the base64url encoding of n bytes of in to b.
 * Returns 0, BM_ETOOBIG (b->max_cap) or BM_ENOMEM; b is unchanged on error. */
int bm_b64url_encode_buf(struct bm_buf *b, const void *in, size_t n);

/* Decode n characters of in into out (out_size bytes; no terminator is
 * written).  *out_len receives the decoded length.
 * Returns 0, BM_EDECODE for input that is not canonical unpadded base64url
 * (see above), or BM_ETOOBIG if out is too small. */
int bm_b64url_decode(const char *in, size_t n, uint8_t *out, size_t out_size,
		     size_t *out_len);

/* Standard base64 with padding: append the encoding of n bytes to b.
 * Returns 0, BM_ETOOBIG or BM_ENOMEM. */
int bm_b64_encode_buf(struct bm_buf *b, const void *in, size_t n);

/* Standard base64 with padding: decode n characters into out (out_size
 * bytes); *out_len receives the decoded length.
 * Returns 0, BM_EDECODE for invalid input, or BM_ETOOBIG if out is too
 * small. */
int bm_b64_decode(const char *in, size_t n, uint8_t *out, size_t out_size,
		  size_t *out_len);

#endif
