/*
 * Fuzz target: arbitrary datagrams into the gossip decoder and protocol.
 *
 * Input = up to 16 chunks, each  mode:u8 len:u16be bytes[len]  (a short tail
 * is one raw chunk).  Mode bit 0: sign the bytes with the cluster key first,
 * so the fuzzer reaches the decoder and the membership/registry logic behind
 * the MAC; otherwise they go in as they are (the MAC must reject them).
 * Bits 1-7: milliseconds/8 to tick the clock forward before the chunk, so
 * probes, suspicions, syncs and digest answers happen too.  A fresh node per
 * input keeps runs independent.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_log.h"
#include "bm_registry.h"
#include "bm_swim.h"
#include "bm_swim_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[] = "fuzz key";
static size_t sent_bytes;

static int on_send(void *ctx, const char *addr, const uint8_t *buf, size_t len)
{
	sent_bytes += len;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct bm_swim_auth auth;
	static int ready;
	struct bm_swim_config cfg;
	struct bm_swim *s;
	uint8_t buf[BM_SWIM_PKT_MAX + 64];
	uint64_t now = 1000;
	const char *devs[] = { "d1" };
	char owner[BM_SWIM_ID_MAX + 1];

	if (!ready) {
		bm_log_set_level(BM_LOG_ERROR);
		if (bm_swim_auth_init(&auth, key, sizeof(key) - 1) != 0)
			abort();
		ready = 1;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.id = "fuzz-node";
	cfg.role = BM_SWIM_ROLE_SIGNAL;
	cfg.addr = "10.0.0.1:7946";
	cfg.key = key;
	cfg.key_len = sizeof(key) - 1;
	cfg.send = on_send;
	cfg.period_ms = 100;
	cfg.max_members = 256;
	cfg.registry_max_entries = 1024;
	if (bm_swim_new(&s, &cfg) != 0)
		return 0;
	bm_registry_set(bm_swim_registry(s), "eid-1", devs, 1);
	bm_swim_tick(s, now);

	for (int chunk = 0; chunk < 16 && size > 0; chunk++) {
		uint8_t mode = data[0];
		size_t len;

		if (size >= 3) {
			len = (size_t)data[1] << 8 | data[2];
			data += 3;
			size -= 3;
			if (len > size)
				len = size;
		} else {
			len = size - 1;
			data += 1;
			size -= 1;
		}
		now += (uint64_t)(mode >> 1) * 8;
		bm_swim_tick(s, now);
		if (mode & 1) {
			if (len > BM_SWIM_PKT_MAX - BM_SWIM_MAC_LEN)
				len = BM_SWIM_PKT_MAX - BM_SWIM_MAC_LEN;
			memcpy(buf, data, len);
			if (bm_swim_auth_sign(&auth, buf, len, buf + len) == 0)
				bm_swim_recv(s, now, "10.0.0.2:7946", buf, len + BM_SWIM_MAC_LEN);
		} else {
			bm_swim_recv(s, now, "10.0.0.2:7946", data, len);
		}
		data += len;
		size -= len;
	}
	bm_registry_owner(bm_swim_registry(s), "eid-1", owner);
	bm_registry_lookup(bm_swim_registry(s), "eid-1", NULL, NULL);
	bm_swim_tick(s, now + 10000);
	bm_swim_free(s);
	return 0;
}
