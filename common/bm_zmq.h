/*
 * bm_zmq.h - ZeroMQ sockets on a libevent loop, carrying bm_ipc messages.
 *
 * A message is [routing id (ROUTER only)] [bm_ipc header] [body] (see
 * bm_ipc.h), or [routing id] [batch frame] of several (below).  ZMQ_FD is edge-triggered, so on every wake-up and after every
 * send the socket is drained while ZMQ_EVENTS says there is input; at most
 * BM_ZSOCK_BATCH messages are handled per turn, then the loop is re-armed so
 * one busy peer cannot starve the others.  Malformed messages (wrong frame
 * count, bad header) are dropped and counted, never fatal.
 *
 * CURVE: when keys are configured the socket encrypts and authenticates;
 * a server socket then accepts only clients whose public key is in the
 * allowed list handed to bm_zsock_curve_server (checked by a ZAP handler on
 * the same loop).
 */
#ifndef BM_ZMQ_H
#define BM_ZMQ_H

#include <stddef.h>
#include <stdint.h>

#include "bm_ipc.h"

struct event_base;
struct bm_zsock;

#define BM_ZSOCK_BATCH 256

/* rid is the peer's routing id on ROUTER sockets (NULL/0 on DEALER). */
typedef void bm_zsock_msg_fn(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
			     const struct bm_ipc_hdr *h, const uint8_t *body,
			     size_t body_len, void *ud);

/* type: ZMQ_ROUTER or ZMQ_DEALER.  identity (may be NULL) sets ZMQ_ROUTING_ID,
 * which is how a ROUTER peer addresses this socket.  Returns NULL on failure
 * (logged). */
struct bm_zsock *bm_zsock_new(struct event_base *base, void *zctx, int type,
			      const char *identity, bm_zsock_msg_fn *on_msg, void *ud);
void bm_zsock_free(struct bm_zsock *z);

/* Bind; "tcp://127.0.0.1:0" binds an ephemeral port.  bound (may be NULL)
 * receives the real endpoint.  Returns 0 or BM_ESYS. */
int bm_zsock_bind(struct bm_zsock *z, const char *endpoint, char *bound, size_t cap);
int bm_zsock_connect(struct bm_zsock *z, const char *endpoint);
int bm_zsock_disconnect(struct bm_zsock *z, const char *endpoint);

/* CURVE.  Keys are Z85 text (40 chars).  Server: own secret key and the list
 * of allowed client public keys (NULL = any client that knows the server
 * key).  Client: the server's public key and own key pair.  Call before
 * bind/connect.  Return 0 or BM_EINVAL. */
int bm_zsock_curve_server(struct bm_zsock *z, const char *secret_z85,
			  const char *const *allowed_public_z85, size_t n_allowed);
int bm_zsock_curve_client(struct bm_zsock *z, const char *server_public_z85,
			  const char *public_z85, const char *secret_z85);

/* Send one message without blocking; the body is copied.  Returns 0,
 * BM_EAGAIN when the peer's queue is at its high-water mark, BM_ENOENT when a
 * ROUTER has no such peer, BM_EPROTO if the header does not encode. */
int bm_zsock_send(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		  const struct bm_ipc_hdr *h, const void *body, size_t body_len);

/* Batches.  A peer that reads them (it says so in its HELLO or WELCOME)
 * is marked with on = 1: whatever is sent to it is then appended to one
 * frame (BM_ZBATCH_MAGIC, version 1, then [u16 header length][u32 body
 * length][header][body] per message) that goes at the end of the loop turn,
 * or when it reaches BM_ZBATCH_FLUSH bytes: one ZeroMQ message and one
 * wake-up of each side's I/O thread for a turn's worth of stanzas instead
 * of one per stanza.  Order is kept.  rid is the peer's routing id on a
 * ROUTER, NULL/0 on a DEALER.  Receiving takes both forms always.
 * bm_zsock_send to a batching peer returns BM_EAGAIN only when a full batch
 * cannot be handed to ZeroMQ (the peer's queue is at its high-water mark);
 * a peer that is gone drops its batch (counted in dropped). */
#define BM_ZBATCH_MAGIC 0xB2
#define BM_ZBATCH_FLUSH (32 * 1024)
int bm_zsock_batch_peer(struct bm_zsock *z, const uint8_t *rid, size_t rid_len, int on);
/* 1 while a batch frame for that peer is held because ZeroMQ refused it
 * (high-water mark, or a DEALER with ZMQ_IMMEDIATE and no connection):
 * callers that must know at once that a peer is unreachable check this
 * before sending, as a plain send would have failed. */
int bm_zsock_held(struct bm_zsock *z, const uint8_t *rid, size_t rid_len);
/* In an on_msg callback: 1 when the message came in a batch frame. */
int bm_zsock_in_batch(const struct bm_zsock *z);

/* Counters. */
uint64_t bm_zsock_dropped(const struct bm_zsock *z);
uint64_t bm_zsock_received(const struct bm_zsock *z);
uint64_t bm_zsock_sent(const struct bm_zsock *z);
uint64_t bm_zsock_wakeups(const struct bm_zsock *z);  /* read callbacks run */
void *bm_zsock_raw(struct bm_zsock *z);

/* A ZeroMQ context for a daemon's event loop.  Its I/O threads run under
 * SCHED_BATCH: a message the loop queues then no longer wakes them at
 * once (preempting the loop on a shared core, one eventfd write and one
 * TCP send per message); they run when the loop waits, and take every
 * message queued since in one batch.  NULL on failure.
 * Also raises the process's malloc trim threshold (M_TRIM_THRESHOLD, 8 MiB):
 * the I/O threads allocate in their own malloc arena what the loop frees,
 * and with the default (128 KiB) nearly every batch freed made glibc give
 * the arena's top back with madvise (~5 % of the signal's loop). */
void *bm_zmq_ctx_new(void);

/* Make a CURVE key pair (Z85, 41 bytes each with the terminator). */
int bm_zmq_curve_keypair(char public_z85[41], char secret_z85[41]);

#endif
