/*
 * Golden wire test: the bytes nanopb produces for several stanzas equal what
 * an independent encoder (Debian's python3-protobuf, tests/golden/golden.py)
 * produces from the same proto/bimip.proto, and each of those bytes decodes
 * through bm_env_decode and re-encodes to the same bytes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "bm_env.h"
#include "bm_err.h"

#define MAXCASES 16
static struct { char name[64]; char hex[4096]; } golden[MAXCASES];
static int ngolden;

static void set_id(bimip_Identity *id, const char *eid, const char *dev,
		   const char *node)
{
	BM_SET_STR(id->eid, eid);
	BM_SET_STR(id->connection_resource_id, dev);
	BM_SET_STR(id->node, node);
}

static void build(const char *name, bimip_MessageScheme *m)
{
	memset(m, 0, sizeof(*m));
	if (!strcmp(name, "text_payload_request")) {
		bimip_TextPayloadRequest *t = &m->payload.text_payload_request;
		m->which_payload = 14;
		t->has_from = true;
		set_id(&t->from, "alice@domain.com", "phone", "");
		t->to_count = 1;
		set_id(&t->to[0], "bob@domain.com", "", "");
		BM_SET_STR(t->content, "Hey Bob!");
		BM_SET_STR(t->message_id_local, "local-123");
		BM_SET_STR(t->text_size_count, "8");
		t->created_at = 1764000000123;
	} else if (!strcmp(name, "chat_message")) {
		bimip_ChatMessage *c = &m->payload.chat_message;
		m->which_payload = 13;
		m->offset = 42;
		BM_SET_STR(c->message_id, "c1.7");
		BM_SET_STR(c->message_id_local, "local-123");
		c->version = 7;
		BM_SET_STR(c->chat_id, "c1");
		c->has_from = true;
		set_id(&c->from, "alice@domain.com", "phone", "");
		c->to_count = 1;
		set_id(&c->to[0], "bob@domain.com", "", "");
		BM_SET_STR(c->author, "receiver");
		c->which_payload = bimip_ChatMessage_text_tag;
		BM_SET_STR(c->payload.text, "Hey Bob!");
		c->acknowledgment = 1;
		c->created_at = 1764000000123;
		c->server_received_at = 1764000000200;
	} else if (!strcmp(name, "awareness_response")) {
		bimip_AwarenessResponse *a = &m->payload.awareness_response;
		m->which_payload = 3;
		a->has_from = a->has_to = true;
		set_id(&a->from, "bob@domain.com", "", "");
		set_id(&a->to, "alice@domain.com", "tab", "");
		BM_SET_STR(a->awareness_identifier, "12345");
		a->status = 1;
		a->latitude = 6.5244;
		a->longitude = 3.3792;
		a->awareness_intention = 2;
		a->timestamp = -5;
	} else if (!strcmp(name, "error_message")) {
		bm_env_make_error(m, 429, 14, "rate limit exceeded", NULL);
		m->route = 0;
	} else if (!strcmp(name, "pingpong_message")) {
		bimip_PingPong *p = &m->payload.pingpong_message;
		m->which_payload = 6;
		p->has_to = true;
		set_id(&p->to, "client@domain.com", "", "");
		p->type = 2;
		p->status = 2;
		p->request_time = 1;
		p->response_time = 3;
		p->rtt = 2;
	} else if (!strcmp(name, "version_update")) {
		bimip_VersionUpdate *v = &m->payload.version_update;
		m->which_payload = 18;
		v->has_to = true;
		set_id(&v->to, "alice@domain.com", "phone", "");
		BM_SET_STR(v->message_id, "c1.7");
		BM_SET_STR(v->message_id_local, "local-123");
		v->type = 1;
		v->timestamp = 99;
		v->status = 1;
		v->version = 7;
		BM_SET_STR(v->chat_id, "c1");
	} else if (!strcmp(name, "message_peer_ack_signal")) {
		bimip_MessagePeerAckSignal *s = &m->payload.message_peer_ack_signal;
		m->which_payload = 24;
		s->has_to = s->has_from = s->has_peer = true;
		set_id(&s->to, "a", "", "");
		set_id(&s->from, "b", "", "s1");
		BM_SET_STR(s->message_id, "m");
		s->method = 2;
		s->timestamp = 5;
		s->status_code = 200;
		BM_SET_STR(s->peer.from, "a");
		BM_SET_STR(s->peer.to, "b");
		s->peer.offset = 10;
		s->peer.peer_offset = 9;
	} else {
		fail_msg("no C builder for golden case '%s'", name);
	}
}

static int load_golden(void **state)
{
	const char *src = getenv("BIMIP_SRC");
	char cmd[1024];
	FILE *f;

	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/tests/golden/golden.py",
		 src ? src : ".");
	f = popen(cmd, "r");
	if (!f)
		return -1;
	while (ngolden < MAXCASES &&
	       fscanf(f, "%63s %4095s", golden[ngolden].name,
		      golden[ngolden].hex) == 2)
		ngolden++;
	return pclose(f) == 0 && ngolden >= 7 ? 0 : -1;
}

static void tohex(const uint8_t *p, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", p[i]);
	out[2 * n] = 0;
}

static size_t fromhex(const char *hex, uint8_t *out)
{
	size_t n = strlen(hex) / 2;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		sscanf(hex + 2 * i, "%2x", &v);
		out[i] = (uint8_t)v;
	}
	return n;
}

static void test_golden_bytes(void **state)
{
	static bimip_MessageScheme m, back;
	static uint8_t enc[BM_ENV_MAX_BYTES], py[BM_ENV_MAX_BYTES];
	static char hex[2 * BM_ENV_MAX_BYTES + 1];
	struct bm_env_err err;
	size_t len, pylen, len2;

	for (int i = 0; i < ngolden; i++) {
		build(golden[i].name, &m);
		assert_int_equal(bm_env_encode(&m, enc, sizeof(enc), &len), 0);
		tohex(enc, len, hex);
		if (strcmp(hex, golden[i].hex))
			fail_msg("case %s:\n  nanopb %s\n  python %s", golden[i].name,
				 hex, golden[i].hex);
		pylen = fromhex(golden[i].hex, py);
		assert_int_equal(bm_env_decode(py, pylen, &back, &err), 0);
		assert_int_equal(bm_env_encode(&back, enc, sizeof(enc), &len2), 0);
		assert_memory_equal(enc, py, pylen);
		assert_int_equal(len2, pylen);
	}
	print_message("%d golden stanzas match the independent encoder\n", ngolden);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_golden_bytes, load_golden),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
