/*
 * bm_b64.c - base64url (unpadded, strict) and standard base64 (mbedTLS).
 * The accepted syntax is specified in bm_b64.h.
 */
#include "bm_b64.h"
#include "bm_buf.h"
#include "bm_err.h"

#include <mbedtls/base64.h>

static const char enc_url[64] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 0..63 for the alphabet, 0xff for every other byte. */
#define X 0xff
static const uint8_t dec_url[256] = {
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, 62, X, X,
	52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X, X, X, X, X, X,
	X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
	15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, X, X, X, X, 63,
	X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
	41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
	X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
};
#undef X

static void encode_url(const uint8_t *in, size_t n, char *out)
{
	size_t i;
	char *o = out;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		*o++ = enc_url[v >> 18];
		*o++ = enc_url[(v >> 12) & 63];
		*o++ = enc_url[(v >> 6) & 63];
		*o++ = enc_url[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		*o++ = enc_url[v >> 18];
		*o++ = enc_url[(v >> 12) & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		*o++ = enc_url[v >> 18];
		*o++ = enc_url[(v >> 12) & 63];
		*o++ = enc_url[(v >> 6) & 63];
	}
	*o = 0;
}

int bm_b64url_encode(const void *in, size_t n, char *out, size_t out_size,
		     size_t *out_len)
{
	size_t need;

	if (n > (SIZE_MAX - 1) / 4 * 3)
		return BM_ETOOBIG;
	need = bm_b64url_encoded_len(n);
	if (out_size < need + 1)
		return BM_ETOOBIG;
	encode_url(in, n, out);
	if (out_len)
		*out_len = need;
	return 0;
}

int bm_b64url_encode_buf(struct bm_buf *b, const void *in, size_t n)
{
	size_t need;
	int rc;

	if (n > (SIZE_MAX - 1) / 4 * 3)
		return BM_ETOOBIG;
	need = bm_b64url_encoded_len(n);
	rc = bm_buf_grow(b, need);
	if (rc)
		return rc;
	encode_url(in, n, (char *)b->data + b->len);
	b->len += need;
	return 0;
}

int bm_b64url_decode(const char *in, size_t n, uint8_t *out, size_t out_size,
		     size_t *out_len)
{
	const uint8_t *p = (const uint8_t *)in;
	size_t i, rem = n % 4, o = 0;
	uint32_t a, b, c, d;

	if (rem == 1)
		return BM_EDECODE;
	if (out_size < bm_b64url_decoded_max(n))
		return BM_ETOOBIG;
	for (i = 0; i + 4 <= n; i += 4) {
		a = dec_url[p[i]];
		b = dec_url[p[i + 1]];
		c = dec_url[p[i + 2]];
		d = dec_url[p[i + 3]];
		if ((a | b | c | d) & 0x80)
			return BM_EDECODE;
		out[o++] = (uint8_t)(a << 2 | b >> 4);
		out[o++] = (uint8_t)(b << 4 | c >> 2);
		out[o++] = (uint8_t)(c << 6 | d);
	}
	if (rem) {
		a = dec_url[p[i]];
		b = dec_url[p[i + 1]];
		c = rem == 3 ? dec_url[p[i + 2]] : 0;
		if ((a | b | c) & 0x80)
			return BM_EDECODE;
		out[o++] = (uint8_t)(a << 2 | b >> 4);
		if (rem == 2) {
			if (b & 0x0f)
				return BM_EDECODE;   /* non-zero unused bits */
		} else {
			out[o++] = (uint8_t)(b << 4 | c >> 2);
			if (c & 0x03)
				return BM_EDECODE;
		}
	}
	*out_len = o;
	return 0;
}

int bm_b64_encode_buf(struct bm_buf *b, const void *in, size_t n)
{
	size_t need = 0, olen;
	int rc;

	/* With an empty destination mbedTLS reports the size it needs
	 * (terminator included). */
	mbedtls_base64_encode(NULL, 0, &need, in, n);
	if (need == 0)
		return n ? BM_ETOOBIG : 0;
	rc = bm_buf_grow(b, need - 1);
	if (rc)
		return rc;
	if (mbedtls_base64_encode(b->data + b->len, b->cap - b->len, &olen,
				  in, n))
		return BM_ETOOBIG;
	b->len += olen;
	return 0;
}

int bm_b64_decode(const char *in, size_t n, uint8_t *out, size_t out_size,
		  size_t *out_len)
{
	int rc = mbedtls_base64_decode(out, out_size, out_len,
				       (const unsigned char *)in, n);

	if (rc == MBEDTLS_ERR_BASE64_BUFFER_TOO_SMALL)
		return BM_ETOOBIG;
	if (rc)
		return BM_EDECODE;
	return 0;
}
