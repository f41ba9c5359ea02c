/*
 * bm_ipc.h - the internal frame header between BIMIP processes.
 *
 * Signal <-> server and server <-> server talk over ZeroMQ (DEALER -> ROUTER).
 * Every message is two ZeroMQ frames (or one entry of a batch frame between
 * a signal and a server that both read them; bm_zmq.h):
 *
 *   frame 1: header, encoded by bm_ipc_encode (below), at most BM_IPC_HDR_MAX
 *   frame 2: body: for STANZA/PUSH the client's MessageScheme bytes unchanged
 *            (a PUSH of a stored stanza has MessageScheme.offset appended);
 *            for control kinds a small body: HELLO {"boot":..}, WELCOME
 *            {"node":..,"boot":..}, KEYS/REVOKE JSON, SESSION_OPEN
 *            {"iat":..,"exp":..}, KICK "<close code> <reason>", SESSION_CLOSE
 *            empty (server/link.c documents each).
 *
 * Header wire format, little-endian, version 1:
 *
 *   offset size field
 *        0    1 magic     0xB1
 *        1    1 version   1
 *        2    1 kind      enum bm_ipc_kind
 *        3    1 flags     BM_IPC_F_*
 *        4    8 session   sender-local session id (signal) or 0
 *       12    8 seq       per-kind sequence / correlation id, or 0
 *       20    8 offset    stream offset (PUSH of a stored stanza), else 0
 *       28    1 origin_len, then origin (node id, 1..64 bytes)
 *        .    1 eid_len,    then eid (0..128 bytes)
 *        .    1 device_len, then device (0..64 bytes)
 *        .    1 aux_len,    then aux (0..128 bytes; kind-specific, e.g. jti)
 *
 * A header that is short, has a wrong magic/version, an unknown kind, or a
 * length beyond its bound is refused with BM_EPROTO; the receiver drops the
 * message and counts it.  Identity (eid, device) in a STANZA header is the
 * authenticated session's, set by the signal from the verified token: the
 * server never trusts a stanza's `from`.
 */
#ifndef BM_IPC_H
#define BM_IPC_H

#include <stddef.h>
#include <stdint.h>

#define BM_IPC_MAGIC    0xB1
#define BM_IPC_VERSION  1
#define BM_IPC_FIXED    28
#define BM_IPC_ORIGIN_MAX 64
#define BM_IPC_EID_MAX    128
#define BM_IPC_DEVICE_MAX 64
#define BM_IPC_AUX_MAX    128
#define BM_IPC_HDR_MAX (BM_IPC_FIXED + 4 + BM_IPC_ORIGIN_MAX + BM_IPC_EID_MAX + \
			BM_IPC_DEVICE_MAX + BM_IPC_AUX_MAX)

enum bm_ipc_kind {
	/* signal -> server */
	BM_IPC_HELLO = 1,        /* signal announces itself; body: JSON {"ws":...} */
	BM_IPC_SESSION_OPEN = 2, /* device authenticated; aux = jti */
	BM_IPC_SESSION_CLOSE = 3,/* device gone; body: reason text */
	BM_IPC_STANZA = 4,       /* a client stanza; body: MessageScheme */
	/* server -> signal */
	BM_IPC_PUSH = 5,         /* deliver body (MessageScheme) to session */
	BM_IPC_KICK = 6,         /* close the session; body: "code reason" */
	BM_IPC_KEYS = 7,         /* token verification keys; body: JSON */
	BM_IPC_REVOKE = 8,       /* revocation; body: JSON */
	BM_IPC_WELCOME = 9,      /* answer to HELLO; body: JSON */
	/* server -> server (server/peer.c documents each) */
	BM_IPC_FORWARD = 10,     /* a client stanza, to the server that owns its
				    target; aux = the signal's routing id */
	BM_IPC_PING = 11,        /* answered with PONG by the server (not sent yet) */
	BM_IPC_PONG = 12,
	BM_IPC_APPEND = 13,      /* append a record to eid's stream; seq answers */
	BM_IPC_APPENDED = 14,    /* answer: "<code> <text>", offset */
	BM_IPC_NOTIFY = 15,      /* awareness for a subscriber eid the peer owns */
	BM_IPC_HANDOFF = 16,     /* a user's or chat's data, to its new owner */
	BM_IPC_HANDOFF_ACK = 17, /* answer: "<code> <text>" */
	BM_IPC_SETTLED = 18,     /* the sender handed off what it no longer owns */
	BM_IPC_KIND_MAX = 18,
};

#define BM_IPC_F_REPLAY 0x01     /* reserved: PUSH replays stored history */

struct bm_ipc_hdr {
	uint8_t kind;
	uint8_t flags;
	uint64_t session;
	uint64_t seq;
	int64_t offset;
	char origin[BM_IPC_ORIGIN_MAX + 1];
	char eid[BM_IPC_EID_MAX + 1];
	char device[BM_IPC_DEVICE_MAX + 1];
	char aux[BM_IPC_AUX_MAX + 1];
};

/* Start a header to send: kind, origin (cut at its bound), every other
 * field 0 or empty.  Clears the fixed part and each string's first byte,
 * not the ~400 bytes of string arrays: encode and decode read the strings
 * up to their NUL.  Once per stanza, on both sides. */
void bm_ipc_hdr_init(struct bm_ipc_hdr *h, int kind, const char *origin);
/* Set one of h's strings: src cut at cap - 1 bytes (snprintf "%s" without
 * the formatting).  The bounded copy of every fixed-size string field:
 * BM_SET_STR (bm_env.h) goes through it too.  cap >= 1. */
void bm_ipc_set_str(char *dst, size_t cap, const char *src);

/* Encode h into out[0..cap); returns the size (> 0) or BM_ETOOBIG/BM_EINVAL
 * when a string exceeds its bound or cap is short. */
int bm_ipc_encode(const struct bm_ipc_hdr *h, uint8_t *out, size_t cap);
/* Decode; returns 0 or BM_EPROTO.  Every field of *h is set (the strings
 * up to their NUL; bytes past it are left as they were). */
int bm_ipc_decode(const uint8_t *p, size_t n, struct bm_ipc_hdr *h);
const char *bm_ipc_kind_name(int kind);

#endif
