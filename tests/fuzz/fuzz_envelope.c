/* libFuzzer target: the envelope decoder, then a re-encode of what decoded;
 * bm_env_peek (the edge's outer check) must accept whatever decodes. */
#include <stddef.h>
#include <stdint.h>

#include "bm_env.h"
#include "bm_ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bimip_MessageScheme m;
	static uint8_t out[BM_ENV_MAX_BYTES];
	struct bm_env_err err;
	struct bm_ipc_hdr h;
	size_t n;

	int64_t route = -1;
	int peeked = bm_env_peek(data, size, &route, &err);

	if (bm_env_decode(data, size, &m, &err) == 0) {
		/* Whatever decodes must encode again within the bound. */
		if (bm_env_encode(&m, out, sizeof(out), &n) != 0)
			__builtin_trap();
		/* The edge's outer check accepts it, with the same route. */
		if (peeked != 0 || route != m.route)
			__builtin_trap();
	}
	(void)bm_ipc_decode(data, size, &h);
	return 0;
}
