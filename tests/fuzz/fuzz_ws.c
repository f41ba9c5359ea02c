/*
 * fuzz_ws - the RFC 6455 frame parser (common/bm_ws.c) on arbitrary bytes.
 *
 * Input: byte 0 picks the role (bit 0: 1 = client, else server) and the
 * message limit (1 + (byte >> 1), so 1..128 bytes, to reach 1009 often);
 * byte 1 is the feed size (0 = 1 byte at a time); the rest is the stream,
 * fed in pieces with unconsumed bytes kept, as the edge does.  Invariants
 * checked: consumed bytes and event pointers stay in the buffer, messages
 * respect the limit, text is valid UTF-8, control payloads <= 125, errors
 * carry 1002/1007/1009, and errors are sticky.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bm_err.h"
#include "bm_ws.h"

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bm_ws_parser p;
	enum bm_ws_role role;
	uint32_t max;
	size_t step, fed = 0, alen = 0, msg = 0;
	uint8_t *acc, *cur;
	int in_text = 0, done = 0;

	if (size < 2)
		return 0;
	role = data[0] & 1 ? BM_WS_CLIENT : BM_WS_SERVER;
	max = 1 + (data[0] >> 1);
	step = data[1] ? data[1] : 1;
	data += 2;
	size -= 2;
	acc = malloc(size + 1);
	cur = malloc(max + 1);
	if (!acc || !cur)
		goto out;
	bm_ws_parser_init(&p, role, max);

	while (fed < size && !done) {
		size_t n = size - fed < step ? size - fed : step;

		memcpy(acc + alen, data + fed, n);
		alen += n;
		fed += n;
		for (int guard = 0; guard < 1 << 20; guard++) {
			struct bm_ws_event ev;
			size_t used = 12345;
			int rc = bm_ws_parse(&p, acc, alen, &used, &ev);

			CHECK(used <= alen);
			if (rc == BM_EAGAIN) {
				memmove(acc, acc + used, alen - used);
				alen -= used;
				CHECK(alen <= BM_WS_MAX_CONTROL);
				break;
			}
			if (rc == BM_ECLOSED) {
				done = 1;
				break;
			}
			if (rc < 0) {
				size_t again;
				CHECK(ev.close_code == 1002 || ev.close_code == 1007 ||
				      ev.close_code == 1009);
				CHECK((rc == BM_ETOOBIG) == (ev.close_code == 1009));
				CHECK(bm_ws_parse(&p, acc, alen, &again, &ev) == rc);
				CHECK(again == 0);
				done = 1;
				break;
			}
			CHECK(ev.data >= acc && ev.data + ev.len <= acc + used);
			switch (ev.type) {
			case BM_WS_EV_MESSAGE:
				CHECK(msg == 0 && ev.len <= max);
				if (ev.opcode == BM_WS_OP_TEXT)
					CHECK(bm_ws_utf8_valid(ev.data, ev.len));
				break;
			case BM_WS_EV_CHUNK:
				if (ev.first) {
					CHECK(msg == 0);
					in_text = ev.opcode == BM_WS_OP_TEXT;
				}
				CHECK(msg + ev.len <= max);
				memcpy(cur + msg, ev.data, ev.len);
				msg += ev.len;
				if (ev.fin) {
					if (in_text)
						CHECK(bm_ws_utf8_valid(cur, msg));
					msg = 0;
				}
				break;
			case BM_WS_EV_PING:
			case BM_WS_EV_PONG:
				CHECK(ev.len <= BM_WS_MAX_CONTROL);
				break;
			case BM_WS_EV_CLOSE:
				CHECK(ev.close_code == BM_WS_CLOSE_NO_STATUS ||
				      bm_ws_close_code_valid(ev.close_code));
				CHECK(bm_ws_utf8_valid(ev.data, ev.len));
				break;
			default:
				CHECK(0);
			}
			memmove(acc, acc + used, alen - used);
			alen -= used;
		}
	}
out:
	free(acc);
	free(cur);
	return 0;
}
