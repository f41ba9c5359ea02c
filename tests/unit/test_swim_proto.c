/*
 * Gossip wire format: round trips of every packet type, and rejection (never
 * a crash) of bad MACs, truncation, trailing bytes, wrong versions, bounds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_swim.h"
#include "bm_swim_proto.h"

static struct bm_swim_auth auth, other;
static struct bm_swim_pkt *pkt;
static struct bm_swim_enc enc;

static int setup(void **state)
{
	pkt = malloc(sizeof(*pkt));
	assert_int_equal(bm_swim_auth_init(&auth, (const uint8_t *)"key-one", 7), 0);
	assert_int_equal(bm_swim_auth_init(&other, (const uint8_t *)"key-two", 7), 0);
	return pkt ? 0 : -1;
}

static int teardown(void **state)
{
	bm_swim_auth_release(&auth);
	bm_swim_auth_release(&other);
	free(pkt);
	return 0;
}

static struct bm_swim_rec member(const char *id, uint32_t inc, uint8_t state)
{
	struct bm_swim_rec r;

	r.id = bm_swim_str_of(id);
	r.addr = bm_swim_str_of("10.0.0.1:7946");
	r.zmq = bm_swim_str_of("tcp://10.0.0.1:5555");
	r.admin = bm_swim_str_of("");
	r.incarnation = inc;
	r.role = BM_SWIM_ROLE_SERVER;
	r.state = state;
	r.from = bm_swim_str_of(state == BM_SWIM_SUSPECT ? "server-9" : "");
	return r;
}

static void test_ping_roundtrip(void **state)
{
	struct bm_swim_rec m = member("server-1", 7, BM_SWIM_SUSPECT);
	struct bm_swim_reg_rec g;
	int n;

	memset(&g, 0, sizeof(g));
	g.writer = bm_swim_str_of("signal-1");
	g.eid = bm_swim_str_of("alice@x");
	g.epoch = 99;
	g.version = 3;
	g.ndev = 2;
	g.dev[0] = bm_swim_str_of("phone");
	g.dev[1] = bm_swim_str_of("web");

	bm_swim_enc_start(&enc, BM_SWIM_PING_REQ, BM_SWIM_PKT_MAX);
	bm_swim_enc_probe(&enc, 0xdeadbeef, "server-2", "10.0.0.2:7946");
	assert_int_equal(bm_swim_enc_member(&enc, &m), 0);
	assert_int_equal(bm_swim_enc_reg(&enc, &g), 0);
	assert_int_equal(bm_swim_enc_member(&enc, &m), BM_ETOOBIG); /* members first */
	n = bm_swim_enc_finish(&enc, &auth);
	assert_true(n > 0);
	assert_int_equal(bm_swim_decode(&auth, enc.buf, (size_t)n, pkt), 0);
	assert_int_equal(pkt->type, BM_SWIM_PING_REQ);
	assert_int_equal(pkt->seq, 0xdeadbeef);
	assert_true(bm_swim_str_eq(pkt->target, "server-2"));
	assert_true(bm_swim_str_eq(pkt->target_addr, "10.0.0.2:7946"));
	assert_int_equal(pkt->nrec, 1);
	assert_true(bm_swim_str_eq(pkt->rec[0].id, "server-1"));
	assert_true(bm_swim_str_eq(pkt->rec[0].zmq, "tcp://10.0.0.1:5555"));
	assert_int_equal(pkt->rec[0].incarnation, 7);
	assert_int_equal(pkt->rec[0].state, BM_SWIM_SUSPECT);
	assert_true(bm_swim_str_eq(pkt->rec[0].from, "server-9"));
	assert_int_equal(pkt->nreg, 1);
	assert_true(bm_swim_str_eq(pkt->reg[0].eid, "alice@x"));
	assert_int_equal(pkt->reg[0].version, 3);
	assert_int_equal(pkt->reg[0].ndev, 2);
	assert_true(bm_swim_str_eq(pkt->reg[0].dev[1], "web"));

	/* wrong key, every truncation, a trailing byte, a flipped bit */
	assert_int_equal(bm_swim_decode(&other, enc.buf, (size_t)n, pkt), BM_EUNAUTH);
	for (int k = 0; k < n; k++)
		assert_true(bm_swim_decode(&auth, enc.buf, (size_t)k, pkt) < 0);
	enc.buf[n] = 0;
	assert_true(bm_swim_decode(&auth, enc.buf, (size_t)n + 1, pkt) < 0);
	enc.buf[10] ^= 1;
	assert_int_equal(bm_swim_decode(&auth, enc.buf, (size_t)n, pkt), BM_EUNAUTH);
}

static void test_fill_to_limit(void **state)
{
	char id[32];
	unsigned count = 0;
	int n;

	bm_swim_enc_start(&enc, BM_SWIM_SYNC, BM_SWIM_PKT_MAX);
	bm_swim_enc_sync(&enc, BM_SWIM_SYNC_REPLY, 4);
	for (unsigned i = 0; i < 1000; i++) {
		struct bm_swim_rec m;
		sprintf(id, "member-%u", i);
		m = member(id, i, BM_SWIM_ALIVE);
		if (bm_swim_enc_member(&enc, &m) != 0)
			break;
		count++;
	}
	n = bm_swim_enc_finish(&enc, &auth);
	assert_true(n > 0 && n <= BM_SWIM_PKT_MAX);
	assert_int_equal(bm_swim_decode(&auth, enc.buf, (size_t)n, pkt), 0);
	assert_int_equal(pkt->nrec, count);
	assert_int_equal(pkt->chunk, 4);
	assert_int_equal(pkt->flags, BM_SWIM_SYNC_REPLY);
	printf("proto: %u member records (with zmq addresses) per %d-byte SYNC packet\n",
	       count, n);
}

static void test_digest_roundtrip(void **state)
{
	int n;

	bm_swim_enc_start(&enc, BM_SWIM_REG_DATA, BM_SWIM_PKT_MAX);
	bm_swim_enc_digest_begin(&enc);
	assert_int_equal(bm_swim_enc_digest(&enc, "signal-1", 5, 10, 20), 0);
	assert_int_equal(bm_swim_enc_digest(&enc, "signal-2", 6, 0, 1), 0);
	n = bm_swim_enc_finish(&enc, &auth);
	assert_true(n > 0);
	assert_int_equal(bm_swim_decode(&auth, enc.buf, (size_t)n, pkt), 0);
	assert_int_equal(pkt->ndig, 2);
	assert_int_equal(pkt->dig[0].from, 10);
	assert_int_equal(pkt->dig[0].version, 20);
	assert_true(bm_swim_str_eq(pkt->dig[1].writer, "signal-2"));
}

/* Hand-made bodies, signed, that break one rule each. */
static int sign_raw(uint8_t *buf, size_t len)
{
	assert_int_equal(bm_swim_auth_sign(&auth, buf, len, buf + len), 0);
	return (int)(len + BM_SWIM_MAC_LEN);
}

static void test_malformed_signed(void **state)
{
	uint8_t b[BM_SWIM_PKT_MAX + 64];
	int n;

	/* version 2 */
	memcpy(b, "BS\x02\x01\0\0\0\x01\x01" "a" "\0\0\0\0", 14);
	n = sign_raw(b, 14);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EPROTO);
	/* unknown type 9 */
	b[2] = 1;
	b[3] = 9;
	n = sign_raw(b, 14);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EPROTO);
	/* valid PING with target "a" and empty sections */
	b[3] = 1;
	n = sign_raw(b, 14);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), 0);
	/* the same with one trailing byte */
	b[14] = 0;
	n = sign_raw(b, 15);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EDECODE);
	/* empty target id */
	memcpy(b, "BS\x01\x01\0\0\0\x01\x00" "\0\0\0\0", 13);
	n = sign_raw(b, 13);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EDECODE);
	/* member count beyond the bound */
	memcpy(b, "BS\x01\x04\0\0\0\xff\xff", 9);
	n = sign_raw(b, 9);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EDECODE);
	/* member with role 7 */
	memcpy(b, "BS\x01\x04\0\0\0\0\x01\x01" "a\x07\x00\0\0\0\0\0\0\0" "\0\0", 22);
	n = sign_raw(b, 22);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), BM_EDECODE);
	b[11] = BM_SWIM_ROLE_SIGNAL;
	n = sign_raw(b, 22);
	assert_int_equal(bm_swim_decode(&auth, b, (size_t)n, pkt), 0);
	/* oversized datagram */
	memset(b, 0, sizeof(b));
	assert_int_equal(bm_swim_decode(&auth, b, BM_SWIM_PKT_MAX + 1, pkt), BM_EDECODE);
}

static int sent;
static int count_send(void *ctx, const char *addr, const uint8_t *buf, size_t len)
{
	sent++;
	return 0;
}

static void test_recv_counts_drops(void **state)
{
	struct bm_swim_config cfg;
	struct bm_swim *s;
	struct bm_swim_stats st;
	uint8_t junk[64];
	int n;

	memset(&cfg, 0, sizeof(cfg));
	cfg.id = "n1";
	cfg.role = BM_SWIM_ROLE_SIGNAL;
	cfg.addr = "s1";
	cfg.key = (const uint8_t *)"key-one";
	cfg.key_len = 7;
	cfg.send = count_send;
	assert_int_equal(bm_swim_new(&s, &cfg), 0);
	memset(junk, 0x41, sizeof(junk));
	assert_int_equal(bm_swim_recv(s, 0, "x", junk, sizeof(junk)), BM_EUNAUTH);
	assert_int_equal(bm_swim_recv(s, 0, "x", junk, 3), BM_EDECODE);
	/* a PING for someone else is ignored; one for us is answered */
	bm_swim_enc_start(&enc, BM_SWIM_PING, BM_SWIM_PKT_MAX);
	bm_swim_enc_probe(&enc, 1, "n2", NULL);
	n = bm_swim_enc_finish(&enc, &auth);
	assert_int_equal(bm_swim_recv(s, 0, "x", enc.buf, (size_t)n), BM_ENOENT);
	assert_int_equal(sent, 0);
	bm_swim_enc_start(&enc, BM_SWIM_PING, BM_SWIM_PKT_MAX);
	bm_swim_enc_probe(&enc, 1, "n1", NULL);
	n = bm_swim_enc_finish(&enc, &auth);
	assert_int_equal(bm_swim_recv(s, 0, "x", enc.buf, (size_t)n), 0);
	assert_int_equal(sent, 1);
	bm_swim_stats(s, &st);
	assert_int_equal(st.bad_auth, 1);
	assert_int_equal(st.bad_decode, 1);
	assert_int_equal(st.recv, 4);
	/* bad configs */
	bm_swim_free(s);
	cfg.id = "";
	assert_int_equal(bm_swim_new(&s, &cfg), BM_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ping_roundtrip),
		cmocka_unit_test(test_fill_to_limit),
		cmocka_unit_test(test_digest_roundtrip),
		cmocka_unit_test(test_malformed_signed),
		cmocka_unit_test(test_recv_counts_drops),
	};

	bm_log_set_level(BM_LOG_ERROR);
	return cmocka_run_group_tests(tests, setup, teardown);
}
