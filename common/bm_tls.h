/*
 * bm_tls.h - TLS 1.2 (mbedTLS 2.28) over a non-blocking socket, for a
 * libevent loop or poll().
 *
 * struct bm_tls_config is built once from files and shared by every
 * connection (certificates, keys, one CTR-DRBG; mbedTLS is built with
 * MBEDTLS_THREADING_PTHREAD so the DRBG may be used from several threads).
 * It is reference-counted: each connection holds a reference, so a reload
 * builds a new config, installs it for new connections and drops the old
 * reference; live connections keep using the old one until they close.
 *
 * Protocol: TLS 1.2 only; ECDHE key exchange with ECDSA or RSA certificates,
 * AES-GCM or ChaCha20-Poly1305.  A server issues session tickets (shared
 * key per config) so returning clients skip the public-key operations.
 *
 * Driving a connection (edge or client library):
 *
 *	rc = bm_tls_handshake(t)   until 0; on BM_EAGAIN wait for
 *	                           bm_tls_wants(t) (BM_TLS_WANT_READ / _WRITE)
 *	rc = bm_tls_read(t, ...)   on readable; loop until BM_EAGAIN, since
 *	                           decrypted bytes may stay buffered inside
 *	                           (bm_tls_pending() says how many)
 *	rc = bm_tls_write(t, ...)  BM_EAGAIN means retry later with the SAME
 *	                           buffer and length (an mbedTLS rule)
 *
 * Every function returns 0, BM_EAGAIN, BM_ECLOSED (peer closed: close_notify
 * or EOF), or BM_ECRYPTO / BM_EIO on failure, whose cause
 * bm_tls_strerror() describes ("certificate verification failed: ...").
 * After a failure the connection is only good for bm_tls_free().
 *
 * Memory: Debian's mbedTLS allocates two 16 KiB record buffers per
 * connection (no MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH); see docs/websocket.md.
 */
#ifndef BM_TLS_H
#define BM_TLS_H

#include <stddef.h>
#include <stdint.h>

struct bm_tls_config;
struct bm_tls;

struct bm_tls_options {
	int server;		/* 1: accept side, 0: connect side */
	/* required for a server; a client sets them for mutual TLS */
	const char *cert_file;	/* PEM certificate chain, leaf first */
	const char *key_file;	/* PEM private key (EC or RSA), unencrypted */
	/* server: when set, client certificates signed by it are required;
	 * client: the CA that must sign the server's certificate */
	const char *ca_file;
	/* client */
	const char *server_name;	/* SNI and name to verify; may be NULL */
	int insecure;		/* client: skip verification (tests only) */
};

#define BM_TLS_WANT_READ	1
#define BM_TLS_WANT_WRITE	2

/*
 * Build a config from o (strings are copied; files are read now).
 * Returns 0 and *out with one reference, or BM_ECONFIG (a file cannot be
 * loaded; logged with its name and cause), BM_ECRYPTO, BM_ENOMEM.
 */
int bm_tls_config_new(struct bm_tls_config **out, const struct bm_tls_options *o);
struct bm_tls_config *bm_tls_config_ref(struct bm_tls_config *c);
/* Drop one reference; frees at zero.  NULL is allowed. */
void bm_tls_config_unref(struct bm_tls_config *c);

/*
 * A connection on fd (non-blocking, connected; borrowed, never closed here).
 * Takes a reference on cfg.  Returns 0, BM_ENOMEM or BM_ECRYPTO.
 */
int bm_tls_new(struct bm_tls **out, struct bm_tls_config *cfg, int fd);
/* Free without sending anything.  NULL is allowed. */
void bm_tls_free(struct bm_tls *t);

/*
 * Custom transport in place of the fd, e.g. an evbuffer pair or a fake in
 * tests.  send/recv return the byte count, 0 for EOF (recv only; from send
 * it is taken as BM_EAGAIN), BM_EAGAIN, or another negative BM_E* code.
 * After BM_EAGAIN the caller retries when bm_tls_wants() is satisfied.
 * ctx is borrowed.
 */
typedef int bm_tls_send_fn(void *ctx, const uint8_t *buf, size_t len);
typedef int bm_tls_recv_fn(void *ctx, uint8_t *buf, size_t len);
void bm_tls_set_transport(struct bm_tls *t, bm_tls_send_fn *send_fn,
			  bm_tls_recv_fn *recv_fn, void *ctx);

/* Advance the handshake: 0 when complete, BM_EAGAIN, or an error. */
int bm_tls_handshake(struct bm_tls *t);
/* 1 once the handshake has completed. */
int bm_tls_is_established(const struct bm_tls *t);

/* Read up to cap plaintext bytes into buf; *n is set on 0 (n > 0). */
int bm_tls_read(struct bm_tls *t, void *buf, size_t cap, size_t *n);
/* Write up to len bytes; *n is set on 0 (may be < len: call again with the
 * rest).  On BM_EAGAIN call again with the same buf and len. */
int bm_tls_write(struct bm_tls *t, const void *buf, size_t len, size_t *n);
/* Send close_notify: 0 when sent, BM_EAGAIN (call again), or an error. */
int bm_tls_close_notify(struct bm_tls *t);

/* After BM_EAGAIN: which readiness to wait for (BM_TLS_WANT_*). */
unsigned bm_tls_wants(const struct bm_tls *t);
/* Decrypted bytes buffered inside, readable without socket I/O. */
size_t bm_tls_pending(const struct bm_tls *t);
/* Negotiated suite ("TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"), or "". */
const char *bm_tls_cipher(const struct bm_tls *t);
/* 1 if the session was resumed from a ticket. */
int bm_tls_resumed(const struct bm_tls *t);
/* Describe the last failure into buf (NUL-terminated); returns buf. */
char *bm_tls_strerror(const struct bm_tls *t, char *buf, size_t cap);

/* Client session resumption: save after the handshake (0 or an error),
 * restore before it.  The blob is opaque; max is cap bytes. */
int bm_tls_session_save(struct bm_tls *t, uint8_t *buf, size_t cap, size_t *len);
int bm_tls_session_load(struct bm_tls *t, const uint8_t *buf, size_t len);

#endif
