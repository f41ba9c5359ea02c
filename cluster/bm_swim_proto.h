/*
 * bm_swim_proto.h - wire format of the gossip protocol (encode/decode/auth).
 *
 * The format itself is specified at the top of bm_swim_proto.c.  This layer
 * knows nothing of membership rules, sockets or clocks: it turns a decoded
 * struct bm_swim_pkt into bytes and back, and signs/verifies packets with
 * the cluster key.
 *
 * Decoding never allocates: strings in a decoded packet are views
 * (struct bm_swim_str) into the caller's buffer and stay valid only as long
 * as that buffer does.  Every count and length is bounded; a packet that
 * breaks a bound, is truncated, has trailing bytes, an unknown version or
 * type, or a bad MAC is rejected with an error and nothing else happens.
 */
#ifndef BM_SWIM_PROTO_H
#define BM_SWIM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <mbedtls/md.h>

#define BM_SWIM_VERSION      1
#define BM_SWIM_MAGIC0       0x42 /* 'B' */
#define BM_SWIM_MAGIC1       0x53 /* 'S' */
#define BM_SWIM_PKT_MAX      1400 /* bytes, MAC included; larger is refused */
#define BM_SWIM_MAC_LEN      16
#define BM_SWIM_ID_MAX       64   /* member id, eid, device id */
#define BM_SWIM_ADDR_MAX     128  /* gossip address, zmq endpoint, admin address */
#define BM_SWIM_DEV_MAX      8    /* devices of one eid on one signal node */
/* Bounds of one decoded packet, derived from the smallest encodings. */
#define BM_SWIM_REC_MAX      128
#define BM_SWIM_REG_MAX      72
#define BM_SWIM_DIG_MAX      80

enum bm_swim_type {
	BM_SWIM_PING = 1,
	BM_SWIM_ACK = 2,
	BM_SWIM_PING_REQ = 3,
	BM_SWIM_SYNC = 4,       /* full member table, chunked (anti-entropy, join) */
	BM_SWIM_REG_DIGEST = 5, /* registry digest: pull what I miss */
	BM_SWIM_REG_DATA = 6,   /* registry entries answering a digest, with ranges */
	BM_SWIM_TYPE_MAX = 6,
};

/* SYNC flags */
#define BM_SWIM_SYNC_REPLY  0x01 /* sender wants the receiver's table back */

enum bm_swim_role {
	BM_SWIM_ROLE_SIGNAL = 1,
	BM_SWIM_ROLE_SERVER = 2,
};

/* Order matters: for one incarnation a higher state overrides a lower one. */
enum bm_swim_state {
	BM_SWIM_ALIVE = 0,
	BM_SWIM_SUSPECT = 1,
	BM_SWIM_DEAD = 2,
	BM_SWIM_LEFT = 3,
};

/* A length-counted view; p is not NUL-terminated. */
struct bm_swim_str {
	const char *p;
	uint8_t len;
};

struct bm_swim_rec {
	struct bm_swim_str id, addr, zmq, admin;
	struct bm_swim_str from;  /* suspector; encoded only when state is SUSPECT */
	uint32_t incarnation;
	uint8_t role;   /* enum bm_swim_role */
	uint8_t state;  /* enum bm_swim_state */
};

struct bm_swim_reg_rec {
	struct bm_swim_str writer, eid;
	uint64_t epoch, version;
	uint8_t ndev;   /* 0 = tombstone: the writer holds no device of eid */
	struct bm_swim_str dev[BM_SWIM_DEV_MAX];
};

/* REG_DIGEST: "I have writer's entries of epoch complete up to version"
 * (from is 0).  REG_DATA: "this packet completes writer's entries of epoch
 * for versions (from, version]" when merged on top of everything <= from. */
struct bm_swim_digest {
	struct bm_swim_str writer;
	uint64_t epoch, from, version;
};

struct bm_swim_pkt {
	uint8_t type;                  /* enum bm_swim_type */
	uint8_t flags;                 /* SYNC */
	uint16_t chunk;                /* SYNC: index of this chunk, 0 first */
	uint32_t seq;                  /* PING, ACK, PING_REQ */
	struct bm_swim_str target;     /* PING, ACK, PING_REQ */
	struct bm_swim_str target_addr;/* PING_REQ */
	unsigned ndig;
	struct bm_swim_digest dig[BM_SWIM_DIG_MAX];
	unsigned nrec;
	struct bm_swim_rec rec[BM_SWIM_REC_MAX];
	unsigned nreg;
	struct bm_swim_reg_rec reg[BM_SWIM_REG_MAX];
};

/* Packet authentication with the cluster key (HMAC-SHA256, truncated). */
struct bm_swim_auth {
	mbedtls_md_context_t md;
	int ready;
};

/* key is copied into the HMAC state; key_len may be 0 (testing only).
 * Returns 0 or BM_ECRYPTO. */
int bm_swim_auth_init(struct bm_swim_auth *a, const uint8_t *key, size_t key_len);
void bm_swim_auth_release(struct bm_swim_auth *a);
/* Writes BM_SWIM_MAC_LEN bytes of MAC over buf[0..len) to mac. */
int bm_swim_auth_sign(struct bm_swim_auth *a, const uint8_t *buf, size_t len,
		      uint8_t *mac);

/*
 * Encoder.  Usage: bm_swim_enc_start(), one body call matching the type,
 * then any number of bm_swim_enc_member() followed by any number of
 * bm_swim_enc_reg(), then bm_swim_enc_finish().  enc_member/enc_reg return
 * BM_ETOOBIG, leaving the packet unchanged, when the record does not fit in
 * the limit given to start (so callers fill a packet greedily).
 */
struct bm_swim_enc {
	uint8_t buf[BM_SWIM_PKT_MAX + 8]; /* slack for the section counts */
	size_t len;
	size_t limit;       /* <= BM_SWIM_PKT_MAX, MAC included */
	size_t nrec_off, nreg_off, ndig_off;
	uint16_t nrec, nreg, ndig;
	int in_reg;
	int err;            /* sticky: a body call that did not fit */
};

void bm_swim_enc_start(struct bm_swim_enc *e, enum bm_swim_type type, size_t limit);
/* PING, ACK: seq + target.  PING_REQ: also target_addr (NULL otherwise). */
void bm_swim_enc_probe(struct bm_swim_enc *e, uint32_t seq, const char *target,
		       const char *target_addr);
void bm_swim_enc_sync(struct bm_swim_enc *e, uint8_t flags, uint16_t chunk);
/* REG_DIGEST and REG_DATA bodies: enc_digest_begin, then enc_digest per
 * writer (before any member or registry record). */
void bm_swim_enc_digest_begin(struct bm_swim_enc *e);
int bm_swim_enc_digest(struct bm_swim_enc *e, const char *writer, uint64_t epoch,
		       uint64_t from, uint64_t version);
/* Encoded sizes, for callers planning a packet. */
size_t bm_swim_reg_size(const struct bm_swim_reg_rec *r);
#define BM_SWIM_DIGEST_SIZE(writer_len) (1 + (writer_len) + 24)
/* Bytes available for digests + registry records in an otherwise empty
 * REG_DATA packet of the given limit. */
#define BM_SWIM_REG_DATA_ROOM(limit) ((limit) - 4 - 2 - 2 - 2 - BM_SWIM_MAC_LEN)
int bm_swim_enc_member(struct bm_swim_enc *e, const struct bm_swim_rec *r);
int bm_swim_enc_reg(struct bm_swim_enc *e, const struct bm_swim_reg_rec *r);
/* Closes the sections and appends the MAC.  Returns the packet length, or a
 * negative BM_E* (BM_ETOOBIG if a body call overflowed, BM_ECRYPTO). */
int bm_swim_enc_finish(struct bm_swim_enc *e, struct bm_swim_auth *a);

/* Verifies the MAC (constant time) and decodes buf into *p (views into buf).
 * Returns 0, BM_EUNAUTH (MAC), BM_EPROTO (magic/version/type) or
 * BM_EDECODE (anything malformed). */
int bm_swim_decode(struct bm_swim_auth *a, const uint8_t *buf, size_t len,
		   struct bm_swim_pkt *p);

/* Helpers on views. */
int bm_swim_str_eq(struct bm_swim_str s, const char *c);
struct bm_swim_str bm_swim_str_of(const char *c);

#endif
