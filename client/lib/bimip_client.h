/*
 * bimip_client.h - libbimip-client: a BIMIP client over WebSocket (ws://,
 * wss://), for tools, tests, the load generator and applications.
 *
 * One struct bm_client is one device session.  Calls block up to a timeout
 * and are meant for one thread; many clients can share a poll() loop through
 * bm_client_fd() and bm_client_recv(c, m, 0).
 *
 * Sync (seed 002, docs/protocol.md "Sync"): every stored stanza the server
 * pushes carries MessageScheme.offset.  The client remembers the highest
 * offset it handed to the application and drops any stanza at or below it,
 * so a replay after a reconnect delivers nothing twice.  Offsets are
 * committed to the server with bm_client_commit() -- automatically every
 * opts.commit_every stored stanzas received (default 64) -- and on
 * reconnect the server replays everything after the committed offset.
 *
 *	struct bm_client_opts o = { .url = "ws://127.0.0.1:4000/", .token = tok };
 *	struct bm_client *c;
 *	char err[256];
 *	if (bm_client_connect(&c, &o, err, sizeof err)) { puts(err); ... }
 *	bm_client_send_text(c, "bob@example.com", "hi", "local-1");
 *	while (bm_client_recv(c, &m, 5000) == 0) { ... }
 *	bm_client_close(c);
 */
#ifndef BIMIP_CLIENT_H
#define BIMIP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "bimip.pb.h"

struct bm_client;

struct bm_client_opts {
	const char *url;          /* ws://host:port/path or wss://... */
	const char *token;        /* JWT, sent as Authorization: Bearer */
	const char *ca_file;      /* wss: CA to verify the server (NULL: the system's
				     /etc/ssl/certs/ca-certificates.crt) */
	int insecure_tls;         /* wss: do not verify the server at all (tests only) */
	int timeout_ms;           /* connect + handshake (default 5000) */
	int commit_every;         /* auto-commit after this many stored stanzas;
				     0 = default 64, -1 = never */
	size_t max_message;       /* largest frame accepted (default 1 MiB) */
	const char *local_addr;   /* bind to this source address (load tests) */
};

/* Connect and upgrade.  Returns 0, or BM_EUNAUTH/BM_EFORBIDDEN/BM_EUNAVAIL/...
 * with err holding e.g. "401: token has expired" or "connect 127.0.0.1:4000:
 * Connection refused". */
int bm_client_connect(struct bm_client **out, const struct bm_client_opts *o,
		      char *err, size_t errlen);
/* Reconnect a closed client with the same options (e.g. to another edge by
 * changing url first with bm_client_set_url); keeps the offset state. */
int bm_client_reconnect(struct bm_client *c, char *err, size_t errlen);
int bm_client_set_url(struct bm_client *c, const char *url);
int bm_client_set_token(struct bm_client *c, const char *token);

/* Send a close frame (1000), wait briefly for the server's, free c. */
void bm_client_close(struct bm_client *c);
/* Free without a close handshake (simulates a crash or network cut). */
void bm_client_abort(struct bm_client *c);

/* Encode and send one stanza (route set from the payload).  Returns 0,
 * BM_ECLOSED, BM_ETIMEDOUT, BM_EIO, or an envelope error. */
int bm_client_send(struct bm_client *c, bimip_MessageScheme *m);
/* Send raw bytes as one binary (or, with text=1, text) message. */
int bm_client_send_raw(struct bm_client *c, const void *p, size_t n, int text);
/* Between these, the frames of bm_client_send* are gathered and written at
 * uncork in one write -- what an application does with several stanzas
 * ready at once.  Returns 0 or a send error (of any of them). */
void bm_client_cork(struct bm_client *c);
int bm_client_uncork(struct bm_client *c);

/* Next stanza into *m within timeout_ms (0 = only what is already there,
 * -1 = forever).  Stanzas whose offset the application already saw are
 * skipped.  Returns 0, BM_ETIMEDOUT, BM_ECLOSED (close code and reason in
 * bm_client_close_code/_reason), BM_EDECODE (a frame that is not a valid
 * MessageScheme; skipped), BM_EIO. */
int bm_client_recv(struct bm_client *c, bimip_MessageScheme *m, int timeout_ms);

/* For an event loop, when bm_client_fd() is readable: read what the socket
 * holds and pass each complete stanza to fn (m is the caller's storage,
 * reused for each).  One read() usually: a plain-socket read that does not
 * fill the buffer left the socket empty, so no second read is spent to be
 * told EAGAIN.  Invalid frames are skipped as with bm_client_recv, and a
 * commit is sent once commit_every stanzas arrived.  Returns 0 (nothing
 * more now), BM_ECLOSED or BM_EIO. */
typedef void bm_client_stanza_fn(void *ud, bimip_MessageScheme *m);
int bm_client_drain(struct bm_client *c, bimip_MessageScheme *m, bm_client_stanza_fn *fn,
		    void *ud);

/* Commit the highest offset received so far (no-op when already
 * committed).  Returns 0 or a send error. */
int bm_client_commit(struct bm_client *c);
int64_t bm_client_last_offset(const struct bm_client *c);
int64_t bm_client_committed(const struct bm_client *c);
/* Start from a known offset (e.g. one the application persisted). */
void bm_client_set_last_offset(struct bm_client *c, int64_t offset);

int bm_client_fd(const struct bm_client *c);
/* 1 if decoded-but-unread data is buffered (poll() would not show it). */
int bm_client_pending(const struct bm_client *c);
int bm_client_close_code(const struct bm_client *c);
const char *bm_client_close_reason(const struct bm_client *c);
/* Identity the server assigned (from the token), when known. */
const char *bm_client_eid(const struct bm_client *c);

/* --- stanza helpers (all return as bm_client_send) ------------------------- */
/* Longest text a TextPayloadRequest carries (bytes, proto/bimip.options). */
#define BM_CLIENT_TEXT_MAX ((int)sizeof(((bimip_TextPayloadRequest *)0)->content) - 1)
/* BM_ETOOBIG, nothing sent, when text, to or local_id is longer than its
 * field holds: never a message cut short. */
int bm_client_send_text(struct bm_client *c, const char *to, const char *text,
			const char *local_id);
int bm_client_send_ack(struct bm_client *c, const char *to, const char *message_id,
		       int status);
int bm_client_send_ping(struct bm_client *c);
int bm_client_add_subscriber(struct bm_client *c, const char *subscriber);
int bm_client_block(struct bm_client *c, const char *who, int block);
int bm_client_awareness_request(struct bm_client *c, const char *who, int64_t id);
int bm_client_set_awareness(struct bm_client *c, int status, double lat, double lon,
			    int intention);
int bm_client_sync(struct bm_client *c, int64_t after_offset, int limit);
int bm_client_logout(struct bm_client *c);
int bm_client_revoke(struct bm_client *c, const char *device, const char *token);

/* A one-line human description of a stanza ("chat_message from a@x: hi"). */
const char *bm_client_describe(const bimip_MessageScheme *m, char *buf, size_t cap);

#endif
