/*
 * bm_swim_proto.c - BIMIP gossip wire format, version 1.
 *
 * One UDP datagram is one packet, at most 1400 bytes including the MAC.
 * Integers are unsigned big-endian.  str8 is a length byte followed by that
 * many bytes (no terminator); ids, eids and device ids are 1..64 bytes
 * (device ids and eids may not be empty; zmq/admin addresses may be),
 * addresses 0..128 bytes.
 *
 *   packet   = header body members registry mac
 *   header   = magic:2 ("BS", 0x42 0x53) version:u8 (1) type:u8
 *   body     = depends on type:
 *     PING       1  seq:u32 target:str8
 *     ACK        2  seq:u32 target:str8            (target = the member acking)
 *     PING_REQ   3  seq:u32 target:str8 target_addr:str8
 *     SYNC       4  flags:u8 chunk:u16             (flags bit0: reply wanted)
 *     REG_DIGEST 5  n:u16 digest*n                 (n <= 80; from = 0)
 *     REG_DATA   6  n:u16 digest*n                 (ranges this packet completes)
 *   digest   = writer:str8 epoch:u64 from:u64 version:u64
 *              REG_DIGEST: "I hold writer's entries of epoch complete up to
 *              version".  REG_DATA: "with this packet's entries, whoever is
 *              complete up to from is complete up to version".
 *   members  = n:u16 member*n                      (n <= 128)
 *   member   = id:str8 role:u8 state:u8 incarnation:u32
 *              gossip_addr:str8 zmq:str8 admin:str8 [suspector:str8]
 *              role 1 signal, 2 server; state 0 alive, 1 suspect, 2 dead, 3 left;
 *              suspector only when state is 1: the id of the member whose
 *              probe failed (0..64 bytes, empty = unknown), so receivers can
 *              count independent suspicions (Lifeguard)
 *   registry = n:u16 entry*n                       (n <= 72)
 *   entry    = writer:str8 eid:str8 epoch:u64 version:u64 ndev:u8 dev:str8*ndev
 *              (ndev <= 8; ndev 0 is a tombstone)
 *   mac      = the first 16 bytes of HMAC-SHA256(cluster key, header..registry)
 *
 * Every packet type may carry member and registry records ("piggyback"):
 * for PING/ACK/PING_REQ they are dissemination updates, for SYNC the sender's
 * member table (one chunk), for REG_DATA the entries a digest asked for.
 * A receiver drops, and counts, a packet whose MAC does not verify or that
 * does not decode exactly (no trailing bytes); it never partially applies one.
 * A new version gets a new version byte; a receiver drops versions it does not
 * know, so mixed clusters must upgrade with both versions understood first.
 */
#include "bm_swim_proto.h"

#include <assert.h>
#include <string.h>

#include <mbedtls/constant_time.h>

#include "bm_err.h"

struct wire_hdr {
	uint8_t magic[2];
	uint8_t version;
	uint8_t type;
};
static_assert(sizeof(struct wire_hdr) == 4, "gossip header is 4 bytes");

/* smallest encodings, used to size the decode arrays */
#define MIN_MEMBER (2 + 1 + 1 + 4 + 1 + 1 + 1)
#define MIN_REG    (2 + 2 + 8 + 8 + 1)
#define MIN_DIG    (2 + 8 + 8 + 8)
static_assert(BM_SWIM_PKT_MAX / MIN_MEMBER <= BM_SWIM_REC_MAX, "rec bound");
static_assert(BM_SWIM_PKT_MAX / MIN_REG <= BM_SWIM_REG_MAX, "reg bound");
static_assert(BM_SWIM_PKT_MAX / MIN_DIG <= BM_SWIM_DIG_MAX, "digest bound");

int bm_swim_str_eq(struct bm_swim_str s, const char *c)
{
	size_t n = strlen(c);

	return n == s.len && memcmp(s.p, c, n) == 0;
}

struct bm_swim_str bm_swim_str_of(const char *c)
{
	struct bm_swim_str s;
	size_t n = c ? strlen(c) : 0;

	s.p = c ? c : "";
	s.len = (uint8_t)(n > 255 ? 255 : n);
	return s;
}

/* --- auth ------------------------------------------------------------------ */

int bm_swim_auth_init(struct bm_swim_auth *a, const uint8_t *key, size_t key_len)
{
	const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
	static const uint8_t nokey[1];

	memset(a, 0, sizeof(*a));
	mbedtls_md_init(&a->md);
	if (!info || mbedtls_md_setup(&a->md, info, 1) != 0)
		goto out_err;
	if (mbedtls_md_hmac_starts(&a->md, key_len ? key : nokey, key_len) != 0)
		goto out_err;
	a->ready = 1;
	return 0;
out_err:
	mbedtls_md_free(&a->md);
	return BM_ECRYPTO;
}

void bm_swim_auth_release(struct bm_swim_auth *a)
{
	mbedtls_md_free(&a->md);
	a->ready = 0;
}

int bm_swim_auth_sign(struct bm_swim_auth *a, const uint8_t *buf, size_t len,
		      uint8_t *mac)
{
	uint8_t full[32];

	if (!a->ready || mbedtls_md_hmac_reset(&a->md) != 0 ||
	    mbedtls_md_hmac_update(&a->md, buf, len) != 0 ||
	    mbedtls_md_hmac_finish(&a->md, full) != 0)
		return BM_ECRYPTO;
	memcpy(mac, full, BM_SWIM_MAC_LEN);
	return 0;
}

/* --- encoder --------------------------------------------------------------- */

static int room(const struct bm_swim_enc *e, size_t n)
{
	/* keep space for the registry count and the MAC */
	return e->len + n + 2 + BM_SWIM_MAC_LEN <= e->limit;
}

static void put8(struct bm_swim_enc *e, uint8_t v)
{
	e->buf[e->len++] = v;
}

static void put16(struct bm_swim_enc *e, uint16_t v)
{
	put8(e, (uint8_t)(v >> 8));
	put8(e, (uint8_t)v);
}

static void put32(struct bm_swim_enc *e, uint32_t v)
{
	put16(e, (uint16_t)(v >> 16));
	put16(e, (uint16_t)v);
}

static void put64(struct bm_swim_enc *e, uint64_t v)
{
	put32(e, (uint32_t)(v >> 32));
	put32(e, (uint32_t)v);
}

static void putstr(struct bm_swim_enc *e, struct bm_swim_str s)
{
	put8(e, s.len);
	memcpy(e->buf + e->len, s.p, s.len);
	e->len += s.len;
}

static size_t cstr_size(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;

	return n > max ? 0 : 1 + n;
}

void bm_swim_enc_start(struct bm_swim_enc *e, enum bm_swim_type type, size_t limit)
{
	e->len = 0;
	e->limit = limit > BM_SWIM_PKT_MAX || limit < 64 ? BM_SWIM_PKT_MAX : limit;
	e->nrec = e->nreg = 0;
	e->nrec_off = e->nreg_off = e->ndig_off = 0;
	e->ndig = 0;
	e->in_reg = 0;
	e->err = 0;
	put8(e, BM_SWIM_MAGIC0);
	put8(e, BM_SWIM_MAGIC1);
	put8(e, BM_SWIM_VERSION);
	put8(e, (uint8_t)type);
}

static void begin_members(struct bm_swim_enc *e)
{
	if (e->nrec_off == 0) {
		e->nrec_off = e->len;
		put16(e, 0);
	}
}

void bm_swim_enc_probe(struct bm_swim_enc *e, uint32_t seq, const char *target,
		       const char *target_addr)
{
	size_t tn = cstr_size(target, BM_SWIM_ID_MAX);
	size_t an = target_addr ? cstr_size(target_addr, BM_SWIM_ADDR_MAX) : 0;

	if (tn <= 1 || (target_addr && an == 0) || !room(e, 4 + tn + an + 2)) {
		e->err = BM_ETOOBIG;
		return;
	}
	put32(e, seq);
	putstr(e, bm_swim_str_of(target));
	if (target_addr)
		putstr(e, bm_swim_str_of(target_addr));
}

void bm_swim_enc_sync(struct bm_swim_enc *e, uint8_t flags, uint16_t chunk)
{
	put8(e, flags);
	put16(e, chunk);
}

void bm_swim_enc_digest_begin(struct bm_swim_enc *e)
{
	e->ndig_off = e->len;
	e->ndig = 0;
	put16(e, 0);
}

int bm_swim_enc_digest(struct bm_swim_enc *e, const char *writer, uint64_t epoch,
		       uint64_t from, uint64_t version)
{
	size_t wn = cstr_size(writer, BM_SWIM_ID_MAX);

	if (wn <= 1 || e->ndig_off == 0 || e->nrec_off != 0 ||
	    e->ndig >= BM_SWIM_DIG_MAX || !room(e, wn + 24 + 2))
		return BM_ETOOBIG;
	putstr(e, bm_swim_str_of(writer));
	put64(e, epoch);
	put64(e, from);
	put64(e, version);
	e->ndig++;
	e->buf[e->ndig_off] = (uint8_t)(e->ndig >> 8);
	e->buf[e->ndig_off + 1] = (uint8_t)e->ndig;
	return 0;
}

static int str_ok(struct bm_swim_str s, unsigned min, unsigned max)
{
	return s.len >= min && s.len <= max && (s.len == 0 || s.p);
}

int bm_swim_enc_member(struct bm_swim_enc *e, const struct bm_swim_rec *r)
{
	size_t n;

	if (e->in_reg || e->nrec >= BM_SWIM_REC_MAX)
		return BM_ETOOBIG;
	if (!str_ok(r->id, 1, BM_SWIM_ID_MAX) || !str_ok(r->addr, 0, BM_SWIM_ADDR_MAX) ||
	    !str_ok(r->zmq, 0, BM_SWIM_ADDR_MAX) || !str_ok(r->admin, 0, BM_SWIM_ADDR_MAX))
		return BM_EINVAL;
	if (r->state == BM_SWIM_SUSPECT && !str_ok(r->from, 0, BM_SWIM_ID_MAX))
		return BM_EINVAL;
	n = 1 + r->id.len + 2 + 4 + 3 + r->addr.len + r->zmq.len + r->admin.len;
	if (r->state == BM_SWIM_SUSPECT)
		n += 1 + r->from.len;
	begin_members(e);
	if (!room(e, n))
		return BM_ETOOBIG;
	putstr(e, r->id);
	put8(e, r->role);
	put8(e, r->state);
	put32(e, r->incarnation);
	putstr(e, r->addr);
	putstr(e, r->zmq);
	putstr(e, r->admin);
	if (r->state == BM_SWIM_SUSPECT)
		putstr(e, r->from);
	e->nrec++;
	return 0;
}

size_t bm_swim_reg_size(const struct bm_swim_reg_rec *r)
{
	size_t n = 2 + r->writer.len + r->eid.len + 16 + 1;

	for (unsigned i = 0; i < r->ndev && i < BM_SWIM_DEV_MAX; i++)
		n += 1 + r->dev[i].len;
	return n;
}

int bm_swim_enc_reg(struct bm_swim_enc *e, const struct bm_swim_reg_rec *r)
{
	size_t n;

	if (e->nreg >= BM_SWIM_REG_MAX)
		return BM_ETOOBIG;
	if (!str_ok(r->writer, 1, BM_SWIM_ID_MAX) || !str_ok(r->eid, 1, BM_SWIM_ID_MAX) ||
	    r->ndev > BM_SWIM_DEV_MAX)
		return BM_EINVAL;
	n = 2 + r->writer.len + r->eid.len + 16 + 1;
	for (unsigned i = 0; i < r->ndev; i++) {
		if (!str_ok(r->dev[i], 1, BM_SWIM_ID_MAX))
			return BM_EINVAL;
		n += 1 + r->dev[i].len;
	}
	begin_members(e);
	if (!e->in_reg) {
		/* the member count is final; the registry count replaces the
		 * two bytes room() kept for it */
		if (e->len + 2 + n + BM_SWIM_MAC_LEN > e->limit)
			return BM_ETOOBIG;
		e->in_reg = 1;
		e->nreg_off = e->len;
		put16(e, 0);
	}
	if (e->len + n + BM_SWIM_MAC_LEN > e->limit)
		return BM_ETOOBIG;
	putstr(e, r->writer);
	putstr(e, r->eid);
	put64(e, r->epoch);
	put64(e, r->version);
	put8(e, r->ndev);
	for (unsigned i = 0; i < r->ndev; i++)
		putstr(e, r->dev[i]);
	e->nreg++;
	return 0;
}

int bm_swim_enc_finish(struct bm_swim_enc *e, struct bm_swim_auth *a)
{
	int rc;

	if (e->err)
		return e->err;
	begin_members(e);
	if (!e->in_reg) {
		e->in_reg = 1;
		e->nreg_off = e->len;
		put16(e, 0);
	}
	if (e->len + BM_SWIM_MAC_LEN > e->limit)
		return BM_ETOOBIG;
	e->buf[e->nrec_off] = (uint8_t)(e->nrec >> 8);
	e->buf[e->nrec_off + 1] = (uint8_t)e->nrec;
	e->buf[e->nreg_off] = (uint8_t)(e->nreg >> 8);
	e->buf[e->nreg_off + 1] = (uint8_t)e->nreg;
	rc = bm_swim_auth_sign(a, e->buf, e->len, e->buf + e->len);
	if (rc)
		return rc;
	e->len += BM_SWIM_MAC_LEN;
	return (int)e->len;
}

/* --- decoder --------------------------------------------------------------- */

struct rd {
	const uint8_t *p, *end;
	int bad;
};

static uint8_t get8(struct rd *r)
{
	if (r->p + 1 > r->end) {
		r->bad = 1;
		return 0;
	}
	return *r->p++;
}

static uint16_t get16(struct rd *r)
{
	uint16_t hi = get8(r);

	return (uint16_t)(hi << 8 | get8(r));
}

static uint32_t get32(struct rd *r)
{
	uint32_t hi = get16(r);

	return hi << 16 | get16(r);
}

static uint64_t get64(struct rd *r)
{
	uint64_t hi = get32(r);

	return hi << 32 | get32(r);
}

static struct bm_swim_str getstr(struct rd *r, unsigned min, unsigned max)
{
	struct bm_swim_str s = { "", 0 };
	uint8_t n = get8(r);

	if (r->bad || n < min || n > max || (size_t)(r->end - r->p) < n) {
		r->bad = 1;
		return s;
	}
	s.p = (const char *)r->p;
	s.len = n;
	r->p += n;
	return s;
}

int bm_swim_decode(struct bm_swim_auth *a, const uint8_t *buf, size_t len,
		   struct bm_swim_pkt *p)
{
	uint8_t mac[BM_SWIM_MAC_LEN];
	struct rd r;
	unsigned n;

	if (len < sizeof(struct wire_hdr) + 4 + BM_SWIM_MAC_LEN || len > BM_SWIM_PKT_MAX)
		return BM_EDECODE;
	if (bm_swim_auth_sign(a, buf, len - BM_SWIM_MAC_LEN, mac) != 0)
		return BM_ECRYPTO;
	if (mbedtls_ct_memcmp(mac, buf + len - BM_SWIM_MAC_LEN, BM_SWIM_MAC_LEN) != 0)
		return BM_EUNAUTH;
	if (buf[0] != BM_SWIM_MAGIC0 || buf[1] != BM_SWIM_MAGIC1 ||
	    buf[2] != BM_SWIM_VERSION || buf[3] < 1 || buf[3] > BM_SWIM_TYPE_MAX)
		return BM_EPROTO;

	r.p = buf + sizeof(struct wire_hdr);
	r.end = buf + len - BM_SWIM_MAC_LEN;
	r.bad = 0;
	p->type = buf[3];
	p->flags = 0;
	p->chunk = 0;
	p->seq = 0;
	p->target.p = p->target_addr.p = "";
	p->target.len = p->target_addr.len = 0;
	p->ndig = p->nrec = p->nreg = 0;

	switch (p->type) {
	case BM_SWIM_PING:
	case BM_SWIM_ACK:
	case BM_SWIM_PING_REQ:
		p->seq = get32(&r);
		p->target = getstr(&r, 1, BM_SWIM_ID_MAX);
		if (p->type == BM_SWIM_PING_REQ)
			p->target_addr = getstr(&r, 1, BM_SWIM_ADDR_MAX);
		break;
	case BM_SWIM_SYNC:
		p->flags = get8(&r);
		p->chunk = get16(&r);
		break;
	case BM_SWIM_REG_DIGEST:
	case BM_SWIM_REG_DATA:
		n = get16(&r);
		if (n > BM_SWIM_DIG_MAX)
			return BM_EDECODE;
		for (unsigned i = 0; i < n && !r.bad; i++) {
			struct bm_swim_digest *d = &p->dig[i];
			d->writer = getstr(&r, 1, BM_SWIM_ID_MAX);
			d->epoch = get64(&r);
			d->from = get64(&r);
			d->version = get64(&r);
		}
		p->ndig = n;
		break;
	default:
		break;
	}

	n = get16(&r);
	if (r.bad || n > BM_SWIM_REC_MAX)
		return BM_EDECODE;
	for (unsigned i = 0; i < n && !r.bad; i++) {
		struct bm_swim_rec *m = &p->rec[i];
		m->id = getstr(&r, 1, BM_SWIM_ID_MAX);
		m->role = get8(&r);
		m->state = get8(&r);
		m->incarnation = get32(&r);
		m->addr = getstr(&r, 0, BM_SWIM_ADDR_MAX);
		m->zmq = getstr(&r, 0, BM_SWIM_ADDR_MAX);
		m->admin = getstr(&r, 0, BM_SWIM_ADDR_MAX);
		m->from.p = "";
		m->from.len = 0;
		if (m->state == BM_SWIM_SUSPECT)
			m->from = getstr(&r, 0, BM_SWIM_ID_MAX);
		if (m->role < BM_SWIM_ROLE_SIGNAL || m->role > BM_SWIM_ROLE_SERVER ||
		    m->state > BM_SWIM_LEFT)
			r.bad = 1;
	}
	p->nrec = n;

	n = get16(&r);
	if (r.bad || n > BM_SWIM_REG_MAX)
		return BM_EDECODE;
	for (unsigned i = 0; i < n && !r.bad; i++) {
		struct bm_swim_reg_rec *g = &p->reg[i];
		g->writer = getstr(&r, 1, BM_SWIM_ID_MAX);
		g->eid = getstr(&r, 1, BM_SWIM_ID_MAX);
		g->epoch = get64(&r);
		g->version = get64(&r);
		g->ndev = get8(&r);
		if (g->ndev > BM_SWIM_DEV_MAX) {
			r.bad = 1;
			break;
		}
		for (unsigned j = 0; j < g->ndev && !r.bad; j++)
			g->dev[j] = getstr(&r, 1, BM_SWIM_ID_MAX);
	}
	p->nreg = n;

	if (r.bad || r.p != r.end)
		return BM_EDECODE;
	return 0;
}
