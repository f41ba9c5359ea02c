#include "bm_ipc.h"
#include "bm_err.h"

#include <stddef.h>
#include <string.h>

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static int put_str(uint8_t *out, size_t cap, size_t *pos, const char *s,
		   size_t max)
{
	size_t n = strlen(s);

	if (n > max || *pos + 1 + n > cap)
		return BM_ETOOBIG;
	out[(*pos)++] = (uint8_t)n;
	memcpy(out + *pos, s, n);
	*pos += n;
	return 0;
}

static int get_str(const uint8_t *p, size_t n, size_t *pos, char *dst,
		   size_t max)
{
	size_t len;

	if (*pos >= n)
		return BM_EPROTO;
	len = p[(*pos)++];
	if (len > max || *pos + len > n || memchr(p + *pos, 0, len))
		return BM_EPROTO;
	memcpy(dst, p + *pos, len);
	dst[len] = 0;
	*pos += len;
	return 0;
}

int bm_ipc_encode(const struct bm_ipc_hdr *h, uint8_t *out, size_t cap)
{
	size_t pos = BM_IPC_FIXED;

	if (cap < BM_IPC_FIXED || h->kind == 0 || h->kind > BM_IPC_KIND_MAX)
		return BM_EINVAL;
	out[0] = BM_IPC_MAGIC;
	out[1] = BM_IPC_VERSION;
	out[2] = h->kind;
	out[3] = h->flags;
	put64(out + 4, h->session);
	put64(out + 12, h->seq);
	put64(out + 20, (uint64_t)h->offset);
	if (put_str(out, cap, &pos, h->origin, BM_IPC_ORIGIN_MAX) ||
	    put_str(out, cap, &pos, h->eid, BM_IPC_EID_MAX) ||
	    put_str(out, cap, &pos, h->device, BM_IPC_DEVICE_MAX) ||
	    put_str(out, cap, &pos, h->aux, BM_IPC_AUX_MAX))
		return BM_ETOOBIG;
	return (int)pos;
}

void bm_ipc_set_str(char *dst, size_t cap, const char *src)
{
	size_t n = strnlen(src, cap - 1);

	memcpy(dst, src, n);
	dst[n] = 0;
}

void bm_ipc_hdr_init(struct bm_ipc_hdr *h, int kind, const char *origin)
{
	memset(h, 0, offsetof(struct bm_ipc_hdr, origin));
	h->kind = (uint8_t)kind;
	bm_ipc_set_str(h->origin, sizeof(h->origin), origin);
	h->eid[0] = h->device[0] = h->aux[0] = 0;
}

int bm_ipc_decode(const uint8_t *p, size_t n, struct bm_ipc_hdr *h)
{
	size_t pos = BM_IPC_FIXED;

	/* The strings are each written with their NUL below, or the whole
	 * header cleared on an error. */
	bm_ipc_hdr_init(h, 0, "");
	if (n < BM_IPC_FIXED || n > BM_IPC_HDR_MAX || p[0] != BM_IPC_MAGIC ||
	    p[1] != BM_IPC_VERSION || p[2] == 0 || p[2] > BM_IPC_KIND_MAX)
		return BM_EPROTO;
	h->kind = p[2];
	h->flags = p[3];
	h->session = get64(p + 4);
	h->seq = get64(p + 12);
	h->offset = (int64_t)get64(p + 20);
	if (get_str(p, n, &pos, h->origin, BM_IPC_ORIGIN_MAX) ||
	    get_str(p, n, &pos, h->eid, BM_IPC_EID_MAX) ||
	    get_str(p, n, &pos, h->device, BM_IPC_DEVICE_MAX) ||
	    get_str(p, n, &pos, h->aux, BM_IPC_AUX_MAX) || pos != n) {
		memset(h, 0, sizeof(*h));
		return BM_EPROTO;
	}
	return 0;
}

const char *bm_ipc_kind_name(int kind)
{
	static const char *const names[] = {
		"?", "hello", "session_open", "session_close", "stanza", "push",
		"kick", "keys", "revoke", "welcome", "forward", "ping", "pong",
		"append", "appended", "notify", "handoff", "handoff_ack", "settled",
	};
	return kind > 0 && kind <= BM_IPC_KIND_MAX ? names[kind] : "?";
}
