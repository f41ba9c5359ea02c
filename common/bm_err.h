/*
 * bm_err.h - the one error-code table of BIMIP.
 *
 * Fallible functions return int: 0 on success or a negative BM_E* code.
 * "Try again" (BM_EAGAIN) is a result, not a failure.  Each code carries the
 * HTTP-like status a client sees in an ErrorMessage when the error reaches it
 * (seed 001 ErrorMessage.code, DESIGN.md section 2).
 */
#ifndef BM_ERR_H
#define BM_ERR_H

/*   name            value  http  text */
#define BM_ERRORS(X) \
	X(BM_OK,             0, 200, "success") \
	X(BM_EAGAIN,        -1, 503, "try again") \
	X(BM_ENOMEM,        -2, 500, "out of memory") \
	X(BM_EINVAL,        -3, 400, "invalid argument") \
	X(BM_EIO,           -4, 500, "input/output error") \
	X(BM_ENOENT,        -5, 404, "not found") \
	X(BM_EEXIST,        -6, 409, "already exists") \
	X(BM_ETOOBIG,       -7, 413, "too large") \
	X(BM_ECORRUPT,      -8, 500, "data is corrupt") \
	X(BM_EPROTO,        -9, 400, "protocol error") \
	X(BM_EDECODE,      -10, 400, "cannot decode message") \
	X(BM_EROUTE,       -11, 400, "route does not match payload") \
	X(BM_ENOPAYLOAD,   -12, 400, "message has no payload") \
	X(BM_EUNAUTH,      -13, 401, "not authenticated") \
	X(BM_EFORBIDDEN,   -14, 403, "forbidden") \
	X(BM_ERATE,        -15, 429, "rate limit exceeded") \
	X(BM_EUNAVAIL,     -16, 503, "service unavailable") \
	X(BM_ECONFIG,      -17, 500, "configuration error") \
	X(BM_ETOKEN_MALFORMED, -18, 401, "token is malformed") \
	X(BM_ETOKEN_ALG,   -19, 401, "token algorithm not allowed") \
	X(BM_ETOKEN_SIG,   -20, 401, "token signature is invalid") \
	X(BM_ETOKEN_EXPIRED, -21, 401, "token has expired") \
	X(BM_ETOKEN_NOTYET, -22, 401, "token is not yet valid") \
	X(BM_ETOKEN_CLAIMS, -23, 401, "token claims are missing or invalid") \
	X(BM_ETOKEN_REVOKED, -24, 401, "token has been revoked") \
	X(BM_ETOKEN_KEY,   -25, 401, "token signed by an unknown key") \
	X(BM_ECRYPTO,      -26, 500, "cryptographic failure") \
	X(BM_ECLOSED,      -27, 503, "connection closed") \
	X(BM_ETIMEDOUT,    -28, 503, "timed out") \
	X(BM_EDESTROYED,   -29, 410, "record destroyed") \
	X(BM_ERANGE,       -30, 400, "out of range") \
	X(BM_ESTATE,       -31, 409, "operation not allowed in this state") \
	X(BM_EBLOCKED,     -32, 403, "blocked by the receiver") \
	X(BM_EFULL,        -33, 503, "queue is full") \
	X(BM_ESYS,         -34, 500, "system call failed")

enum bm_err {
#define BM_ERR_ENUM(name, val, http, text) name = (val),
	BM_ERRORS(BM_ERR_ENUM)
#undef BM_ERR_ENUM
};

/* Text of an error code; never NULL, "unknown error" for unknown codes. */
const char *bm_strerror(int err);
/* Symbolic name ("BM_EINVAL"); never NULL. */
const char *bm_errname(int err);
/* HTTP-like status a client sees for err (200 for 0, 500 for unknown). */
int bm_err_http(int err);

#endif
