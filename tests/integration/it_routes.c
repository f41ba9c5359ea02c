/*
 * Every route of the protocol, end to end: the real bimip-server and
 * bimip-signal on loopback, two users of two devices each, through
 * libbimip-client.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "bimip_client.h"
#include "bm_env.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_jwt.h"
#include "bm_time.h"

static struct bm_h_node srv, sig;
static const struct bm_h_node *servers[1] = { &srv };

static struct bm_client *connect_dev(const char *eid, const char *dev)
{
	char *tok = bm_h_token(&srv, eid, dev, 3600);
	struct bm_client_opts o = { .url = sig.url, .token = tok };
	struct bm_client *c = NULL;
	char err[256];

	assert_non_null(tok);
	if (bm_client_connect(&c, &o, err, sizeof(err)))
		fail_msg("connect %s/%s: %s", eid, dev, err);
	free(tok);
	return c;
}

/* Next stanza with this route within 5 s; awareness notifications, which
 * arrive whenever contacts come and go, are skipped. */
static void expect(struct bm_client *c, int route, bimip_MessageScheme *m)
{
	uint64_t deadline = bm_mono_ms() + 5000;
	char d[512];

	while (bm_mono_ms() < deadline) {
		int rc = bm_client_recv(c, m, 100);
		if (rc == BM_ETIMEDOUT)
			continue;
		if (rc)
			fail_msg("waiting for route %d: %s (close %d %s)", route, bm_strerror(rc),
				 bm_client_close_code(c), bm_client_close_reason(c));
		if ((int)m->route == route)
			return;
		if (m->route == bimip_MessageScheme_awareness_notification_tag)
			continue;
		fail_msg("waiting for route %d, got %s", route, bm_client_describe(m, d, sizeof(d)));
	}
	fail_msg("no stanza with route %d within 5 s", route);
}

/* Nothing but awareness arrives within ms. */
static void expect_nothing(struct bm_client *c, int ms)
{
	bimip_MessageScheme m;
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	char d[512];

	while (bm_mono_ms() < deadline) {
		int rc = bm_client_recv(c, &m, 20);
		if (rc == BM_ETIMEDOUT)
			continue;
		if (rc == 0 && m.route == bimip_MessageScheme_awareness_notification_tag)
			continue;
		fail_msg("expected silence, got %s", rc ? bm_strerror(rc)
							: bm_client_describe(&m, d, sizeof(d)));
	}
}

static int setup(void **state)
{
	bm_h_init();
	if (bm_h_start_server(&srv, "s1", NULL))
		return -1;
	return bm_h_start_signal(&sig, "g1", servers, 1, NULL);
}

static int teardown(void **state)
{
	int a = bm_h_stop(&sig, SIGTERM), b = bm_h_stop(&srv, SIGTERM);

	if (a != 0 || b != 0) {
		fprintf(stderr, "exit status: signal %d, server %d\n", a, b);
		return -1;
	}
	return bm_h_check_logs() ? -1 : 0;
}

static void test_chat_two_users_two_devices(void **state)
{
	struct bm_client *ap = connect_dev("alice@it", "phone");
	struct bm_client *al = connect_dev("alice@it", "laptop");
	struct bm_client *bp = connect_dev("bob@it", "phone");
	struct bm_client *bt = connect_dev("bob@it", "tablet");
	bimip_MessageScheme m;
	char msgid[sizeof(((bimip_VersionUpdate *)0)->message_id)];
	char chat[sizeof(((bimip_VersionUpdate *)0)->chat_id)];

	assert_int_equal(bm_client_send_text(ap, "bob@it", "Hey Bob!", "local-1"), 0);
	/* The sender's device: VersionUpdate with the assigned ids. */
	expect(ap, bimip_MessageScheme_version_update_tag, &m);
	assert_int_equal(m.payload.version_update.version, 1);
	assert_string_equal(m.payload.version_update.message_id_local, "local-1");
	assert_int_equal(m.payload.version_update.type, 1);
	assert_true(m.offset > 0);
	snprintf(msgid, sizeof(msgid), "%s", m.payload.version_update.message_id);
	snprintf(chat, sizeof(chat), "%s", m.payload.version_update.chat_id);
	/* Every device of the receiver: author receiver, acknowledgment 1. */
	expect(bp, bimip_MessageScheme_chat_message_tag, &m);
	assert_string_equal(m.payload.chat_message.author, "receiver");
	assert_int_equal(m.payload.chat_message.acknowledgment, 1);
	assert_string_equal(m.payload.chat_message.payload.text, "Hey Bob!");
	assert_string_equal(m.payload.chat_message.message_id, msgid);
	assert_string_equal(m.payload.chat_message.from.eid, "alice@it");
	assert_string_equal(m.payload.chat_message.from.connection_resource_id, "phone");
	expect(bt, bimip_MessageScheme_chat_message_tag, &m);
	assert_string_equal(m.payload.chat_message.message_id, msgid);
	/* The sender's other device: author sender, acknowledgment 4. */
	expect(al, bimip_MessageScheme_chat_message_tag, &m);
	assert_string_equal(m.payload.chat_message.author, "sender");
	assert_int_equal(m.payload.chat_message.acknowledgment, 4);
	assert_string_equal(m.payload.chat_message.chat_id, chat);

	/* A resend with the same message_id_local: original ids, stored once. */
	assert_int_equal(bm_client_send_text(ap, "bob@it", "Hey Bob!", "local-1"), 0);
	expect(ap, bimip_MessageScheme_version_update_tag, &m);
	assert_string_equal(m.payload.version_update.message_id, msgid);
	assert_int_equal(m.payload.version_update.version, 1);
	assert_int_equal(m.offset, 0);
	/* ... so the receiver's next message is version 2, not a duplicate. */
	assert_int_equal(bm_client_send_text(ap, "bob@it", "second", "local-2"), 0);
	expect(bp, bimip_MessageScheme_chat_message_tag, &m);
	assert_int_equal(m.payload.chat_message.version, 2);
	assert_string_equal(m.payload.chat_message.payload.text, "second");
	expect(bt, bimip_MessageScheme_chat_message_tag, &m);
	assert_int_equal(m.payload.chat_message.version, 2);

	/* Bob answers: the same chat, the next version, gapless. */
	assert_int_equal(bm_client_send_text(bt, "alice@it", "hi Alice", "b-1"), 0);
	expect(bt, bimip_MessageScheme_version_update_tag, &m);
	assert_int_equal(m.payload.version_update.version, 3);
	assert_string_equal(m.payload.version_update.chat_id, chat);
	expect(bp, bimip_MessageScheme_chat_message_tag, &m);
	assert_string_equal(m.payload.chat_message.author, "sender");

	/* Acknowledgements reach every device of the other side. */
	assert_int_equal(bm_client_send_ack(bp, "alice@it", msgid, 2), 0);
	expect(bp, bimip_MessageScheme_acknowledgment_response_tag, &m);
	expect(ap, bimip_MessageScheme_version_update_tag, &m);   /* local-2 */
	expect(ap, bimip_MessageScheme_chat_message_tag, &m);     /* bob's reply */
	expect(ap, bimip_MessageScheme_acknowledgment_response_tag, &m);
	assert_string_equal(m.payload.acknowledgment_response.message_id, msgid);
	assert_int_equal(m.payload.acknowledgment_response.status, 2);
	assert_string_equal(m.payload.acknowledgment_response.from.eid, "bob@it");
	expect(al, bimip_MessageScheme_chat_message_tag, &m);     /* local-2 copy */
	expect(al, bimip_MessageScheme_chat_message_tag, &m);     /* bob's reply */
	expect(al, bimip_MessageScheme_acknowledgment_response_tag, &m);
	assert_int_equal(bm_client_send_ack(bt, "alice@it", msgid, 3), 0);
	expect(ap, bimip_MessageScheme_acknowledgment_response_tag, &m);
	assert_int_equal(m.payload.acknowledgment_response.status, 3);

	bm_client_close(ap);
	bm_client_close(al);
	bm_client_close(bp);
	bm_client_close(bt);
	/* What an operator scrapes: fsync latencies, bytes on disk, routes. */
	{
		static char out[1 << 16];
		uint64_t deadline = bm_mono_ms() + 5000;
		do {
			assert_int_equal(bm_h_http(srv.admin, "GET", "/metrics", NULL, NULL, out,
						   sizeof(out)), 200);
		} while (strstr(out, "bimip_server_fsync_seconds_count 0") &&
			 bm_mono_ms() < deadline);
		assert_null(strstr(out, "bimip_server_fsync_seconds_count 0"));
		assert_non_null(strstr(out, "bimip_server_fsync_seconds_bucket{le=\"0.001\"}"));
		assert_non_null(strstr(out, "bimip_server_queue_bytes "));
		assert_non_null(strstr(out, "bimip_server_stanzas_by_route_total{route=\"14\"}"));
		assert_non_null(strstr(out, "bimip_server_chat_messages_total "));
		/* Every chat message this server stored for two of its own
		 * users was timed from acceptance to durable, and none took
		 * longer than the test. */
		{
			long nc = bm_h_metric_in(out, "bimip_server_chat_messages_total");

			assert_true(nc >= 3);
			assert_int_equal(bm_h_metric_in(out, "bimip_server_chat_commit_seconds_count"),
					 nc);
			assert_int_equal(bm_h_metric_in(out, "bimip_server_chat_commit_seconds_bucket"
							     "{le=\"1\"}"), nc);
		}
	}
}

static void test_sync_resume_and_new_device(void **state)
{
	struct bm_client *a = connect_dev("carol@it", "phone");
	struct bm_client *d = connect_dev("dave@it", "phone");
	bimip_MessageScheme m;
	int64_t v;

	assert_int_equal(bm_client_send_text(a, "dave@it", "m1", "c-1"), 0);
	expect(d, bimip_MessageScheme_chat_message_tag, &m);
	v = m.payload.chat_message.version;
	assert_int_equal(bm_client_commit(d), 0);
	bm_client_close(d);
	/* While dave is away. */
	for (int i = 2; i <= 4; i++) {
		char text[16], local[16];
		snprintf(text, sizeof(text), "m%d", i);
		snprintf(local, sizeof(local), "c-%d", i);
		assert_int_equal(bm_client_send_text(a, "dave@it", text, local), 0);
		expect(a, bimip_MessageScheme_version_update_tag, &m);
	}
	expect(a, bimip_MessageScheme_version_update_tag, &m);   /* c-1's, in order */
	/* Reconnect: exactly what came after the committed offset, in order. */
	d = connect_dev("dave@it", "phone");
	for (int i = 2; i <= 4; i++) {
		char text[16];
		snprintf(text, sizeof(text), "m%d", i);
		expect(d, bimip_MessageScheme_chat_message_tag, &m);
		assert_string_equal(m.payload.chat_message.payload.text, text);
		assert_int_equal(m.payload.chat_message.version, v + i - 1);
	}
	expect_nothing(d, 200);
	/* A device that never connected receives everything addressed to it. */
	{
		struct bm_client *w = connect_dev("dave@it", "watch");
		for (int i = 1; i <= 4; i++) {
			char text[16];
			snprintf(text, sizeof(text), "m%d", i);
			expect(w, bimip_MessageScheme_chat_message_tag, &m);
			assert_string_equal(m.payload.chat_message.payload.text, text);
		}
		/* History on request: sync from offset 0. */
		assert_int_equal(bm_client_sync(w, 0, 2), 0);
		bm_client_set_last_offset(w, 0);  /* accept the replayed offsets */
		expect(w, bimip_MessageScheme_chat_message_tag, &m);
		assert_int_equal(m.offset, 1);
		expect(w, bimip_MessageScheme_chat_message_tag, &m);
		expect(w, bimip_MessageScheme_sync_response_tag, &m);
		assert_int_equal(m.payload.sync_response.count, 2);
		assert_true(m.payload.sync_response.more);
		bm_client_close(w);
	}
	bm_client_close(a);
	bm_client_close(d);
}

/* The committed offset the server holds for eid's device, from the admin
 * API (-1 if the device has no session there). */
static long long server_committed(const char *eid, const char *device)
{
	static char out[8192];
	char path[256];
	json_t *root, *a, *d;
	long long v = -1;
	size_t i;

	snprintf(path, sizeof(path), "/v1/users/%s/sessions", eid);
	assert_int_equal(bm_h_http(srv.admin, "GET", path, BM_H_ADMIN_KEY, NULL, out,
				   sizeof(out)), 200);
	root = json_loads(out, 0, NULL);
	assert_non_null(root);
	a = json_object_get(root, "sessions");
	json_array_foreach(a, i, d) {
		if (!strcmp(json_string_value(json_object_get(d, "device")), device))
			v = json_integer_value(json_object_get(d, "committed"));
	}
	json_decref(root);
	return v;
}

/* Offsets received but not yet committed when the connection drops are
 * committed on the next connection: the client must not assume the server
 * already has them (it did, and live delivery stalled a whole
 * delivery.window behind after a few reconnects). */
static void test_commit_after_reconnect(void **state)
{
	struct bm_client *a = connect_dev("fay@it", "phone");
	struct bm_client *f = connect_dev("gus@it", "phone");
	bimip_MessageScheme m;
	uint64_t deadline;
	char err[256];

	for (int i = 1; i <= 3; i++) {
		char text[16], local[16];
		snprintf(text, sizeof(text), "r%d", i);
		snprintf(local, sizeof(local), "r-%d", i);
		assert_int_equal(bm_client_send_text(a, "gus@it", text, local), 0);
		expect(f, bimip_MessageScheme_chat_message_tag, &m);
	}
	assert_int_equal(bm_client_last_offset(f), 3);
	assert_int_equal(server_committed("gus@it", "phone"), 0);
	if (bm_client_reconnect(f, err, sizeof(err)))
		fail_msg("reconnect: %s", err);
	/* The first receive after the reconnect commits what was seen. */
	deadline = bm_mono_ms() + 5000;
	while (server_committed("gus@it", "phone") != 3 && bm_mono_ms() < deadline)
		(void)bm_client_recv(f, &m, 20);
	assert_int_equal(server_committed("gus@it", "phone"), 3);
	assert_int_equal(bm_client_committed(f), 3);
	expect_nothing(f, 100);
	bm_client_close(a);
	bm_client_close(f);
}

struct drained {
	int chats;
	int in_order;
};

static void on_drained(void *ud, bimip_MessageScheme *m)
{
	struct drained *d = ud;
	char want[16];

	if (m->which_payload != bimip_MessageScheme_chat_message_tag)
		return;
	snprintf(want, sizeof(want), "d%d", d->chats + 1);
	if (strcmp(m->payload.chat_message.payload.text, want))
		d->in_order = 0;
	d->chats++;
}

/* One turn of an event loop: wait up to ms for h to be readable, then
 * drain it into d.  Returns bm_client_drain's result (0 if not readable). */
static int poll_drain(struct bm_client *h, struct drained *d, int ms)
{
	static bimip_MessageScheme m;
	struct pollfd p = { .fd = bm_client_fd(h), .events = POLLIN };

	return poll(&p, 1, ms) == 1 ? bm_client_drain(h, &m, on_drained, d) : 0;
}

/* Sends "d1".."dn" from a to eid. */
static void send_numbered(struct bm_client *a, const char *eid, int n)
{
	for (int i = 1; i <= n; i++) {
		char text[16];
		snprintf(text, sizeof(text), "d%d", i);
		assert_int_equal(bm_client_send_text(a, eid, text, NULL), 0);
	}
}

/* bm_client_drain, as an event loop uses it: poll the descriptor, take what
 * arrived; every message once, in order, and commits as they come. */
static void test_drain_event_loop(void **state)
{
	char *tok = bm_h_token(&srv, "hal@it", "tab", 3600);
	struct bm_client_opts o = { .url = sig.url, .token = tok, .commit_every = 10 };
	struct bm_client *a = connect_dev("ida@it", "phone"), *h = NULL;
	struct drained d = { 0, 1 };
	bimip_MessageScheme m;
	uint64_t deadline;
	char err[256];

	if (bm_client_connect(&h, &o, err, sizeof(err)))
		fail_msg("connect: %s", err);
	free(tok);
	send_numbered(a, "hal@it", 40);
	deadline = bm_mono_ms() + 5000;
	while (d.chats < 40 && bm_mono_ms() < deadline)
		assert_int_equal(poll_drain(h, &d, 100), 0);
	assert_int_equal(d.chats, 40);
	assert_true(d.in_order);
	assert_int_equal(bm_client_last_offset(h), 40);
	/* Committed by the drains, at least every 10. */
	deadline = bm_mono_ms() + 5000;
	while (server_committed("hal@it", "tab") < 31 && bm_mono_ms() < deadline)
		assert_int_equal(poll_drain(h, &d, 20), 0);
	assert_true(server_committed("hal@it", "tab") >= 31);
	/* Nothing more is there: a drain returns at once with nothing. */
	assert_int_equal(bm_client_drain(h, &m, on_drained, &d), 0);
	assert_int_equal(d.chats, 40);
	/* Corked, sends wait in the client: nothing arrives until uncork, then
	 * all of them, in order, from one write. */
	d.chats = 0;
	d.in_order = 1;
	bm_client_cork(a);
	send_numbered(a, "hal@it", 3);
	deadline = bm_mono_ms() + 300;
	while (bm_mono_ms() < deadline)
		assert_int_equal(poll_drain(h, &d, 20), 0);
	assert_int_equal(d.chats, 0);
	assert_int_equal(bm_client_uncork(a), 0);
	deadline = bm_mono_ms() + 5000;
	while (d.chats < 3 && bm_mono_ms() < deadline)
		assert_int_equal(poll_drain(h, &d, 100), 0);
	assert_int_equal(d.chats, 3);
	assert_true(d.in_order);
	/* The server ends the session: the drain says so. */
	assert_int_equal(bm_client_logout(h), 0);
	deadline = bm_mono_ms() + 5000;
	for (;;) {
		int rc = poll_drain(h, &d, 100);
		if (rc) {
			assert_int_equal(rc, BM_ECLOSED);
			break;
		}
		if (bm_mono_ms() > deadline)
			fail_msg("the drain did not see the session end");
	}
	assert_int_equal(bm_client_close_code(h), 1000);
	bm_client_abort(h);
	bm_client_close(a);
}

static void test_contacts_awareness_block(void **state)
{
	struct bm_client *e = connect_dev("erin@it", "phone");
	struct bm_client *f = connect_dev("frank@it", "phone");
	bimip_MessageScheme m;

	/* Frank may not see Erin's awareness until Erin adds him. */
	assert_int_equal(bm_client_awareness_request(f, "erin@it", 7), 0);
	expect(f, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "4");
	assert_int_equal(bm_client_add_subscriber(e, "frank@it"), 0);
	expect(e, bimip_MessageScheme_subscriber_add_response_tag, &m);
	assert_int_equal(m.payload.subscriber_add_response.status, 1);
	assert_string_equal(m.payload.subscriber_add_response.subscriber.eid, "frank@it");
	assert_int_equal(bm_client_awareness_request(f, "erin@it", 8), 0);
	expect(f, bimip_MessageScheme_awareness_response_tag, &m);
	assert_int_equal(m.payload.awareness_response.status, 1);
	assert_string_equal(m.payload.awareness_response.awareness_identifier, "8");
	/* Location only to an authorized contact: Frank has not added Erin. */
	assert_int_equal(bm_client_set_awareness(e, 3, 6.5, 3.4, 2), 0);
	expect(e, bimip_MessageScheme_awareness_response_tag, &m);
	{
		uint64_t deadline = bm_mono_ms() + 5000;
		int got = 0;
		while (!got && bm_mono_ms() < deadline) {
			if (bm_client_recv(f, &m, 100) == 0 &&
			    m.route == bimip_MessageScheme_awareness_notification_tag &&
			    m.payload.awareness_notification.status == 3)
				got = 1;
		}
		assert_true(got);
		assert_true(m.payload.awareness_notification.latitude == 0.0);
	}
	/* Erin goes offline: Frank is told. */
	bm_client_close(e);
	{
		uint64_t deadline = bm_mono_ms() + 5000;
		int got = 0;
		while (!got && bm_mono_ms() < deadline)
			if (bm_client_recv(f, &m, 100) == 0 &&
			    m.route == bimip_MessageScheme_awareness_notification_tag &&
			    m.payload.awareness_notification.status == 2)
				got = 1;
		assert_true(got);
		assert_true(m.payload.awareness_notification.last_seen > 0);
	}
	e = connect_dev("erin@it", "phone");
	/* Blocking: Frank blocks Erin, Erin's chat is refused with 403. */
	assert_int_equal(bm_client_block(f, "erin@it", 1), 0);
	expect(f, bimip_MessageScheme_block_subscriber_tag, &m);
	assert_int_equal(m.payload.block_subscriber.type, 2);
	assert_int_equal(m.payload.block_subscriber.status, 1);
	assert_int_equal(bm_client_send_text(e, "frank@it", "let me in", "e-1"), 0);
	expect(e, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "14");
	assert_int_equal(bm_client_block(f, "erin@it", 0), 0);
	expect(f, bimip_MessageScheme_block_subscriber_tag, &m);
	assert_int_equal(bm_client_send_text(e, "frank@it", "hello again", "e-2"), 0);
	expect(f, bimip_MessageScheme_chat_message_tag, &m);
	assert_string_equal(m.payload.chat_message.payload.text, "hello again");
	bm_client_close(e);
	bm_client_close(f);
}

static void test_errors_and_ping(void **state)
{
	struct bm_client *g = connect_dev("gina@it", "phone");
	bimip_MessageScheme m;
	/* route 14 but a pingpong payload */
	const uint8_t mismatch[] = { 0x08, 14, 0x32, 0x02, 0x10, 0x01 };

	assert_int_equal(bm_client_send_ping(g), 0);
	expect(g, bimip_MessageScheme_pingpong_message_tag, &m);
	assert_int_equal(m.payload.pingpong_message.type, 2);
	assert_int_equal(m.payload.pingpong_message.status, 2);
	assert_true(m.payload.pingpong_message.rtt >= 0);
	assert_int_equal(bm_client_send_raw(g, mismatch, sizeof(mismatch), 0), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 400);
	assert_non_null(strstr(m.payload.error_message.message, "does not match"));
	assert_int_equal(bm_client_send_ack(g, "x@it", "nope", 2), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 404);
	assert_int_equal(bm_client_send_text(g, "gina@it", "me", "g-1"), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 400);
	/* Identities that are not UTF-8 are refused (the state log is JSON). */
	assert_int_equal(bm_client_send_text(g, "bad\xff@it", "x", "g-2"), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 400);
	assert_non_null(strstr(m.payload.error_message.message, "UTF-8"));
	/* A server-to-client stanza sent by a client. */
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_chat_message_tag;
	assert_int_equal(bm_client_send(g, &m), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 400);
	/* Spoofed from: refused. */
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_text_payload_request_tag;
	m.payload.text_payload_request.has_from = true;
	strcpy(m.payload.text_payload_request.from.eid, "mallory@it");
	m.payload.text_payload_request.to_count = 1;
	strcpy(m.payload.text_payload_request.to[0].eid, "x@it");
	strcpy(m.payload.text_payload_request.content, "spoof");
	assert_int_equal(bm_client_send(g, &m), 0);
	expect(g, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	bm_client_close(g);
}

static void test_logout_and_revoke(void **state)
{
	struct bm_client *h = connect_dev("hank@it", "laptop");
	char *tok = bm_h_token(&srv, "hank@it", "tablet", 3600);
	struct bm_client_opts o = { .url = sig.url, .token = tok };
	struct bm_client *t;
	bimip_MessageScheme m;
	char err[256];

	assert_int_equal(bm_client_logout(h), 0);
	expect(h, bimip_MessageScheme_logout_tag, &m);
	assert_int_equal(m.payload.logout.status, 3);
	assert_int_equal(m.payload.logout.type, 2);
	assert_int_equal(bm_client_recv(h, &m, 5000), BM_ECLOSED);
	assert_int_equal(bm_client_close_code(h), 1000);
	bm_client_abort(h);

	assert_int_equal(bm_client_connect(&t, &o, err, sizeof(err)), 0);
	h = connect_dev("hank@it", "laptop");
	/* Revoke every token of the tablet: its live session closes (4001)
	 * and the same token is refused from then on. */
	assert_int_equal(bm_client_revoke(h, "tablet", ""), 0);
	expect(h, bimip_MessageScheme_token_revoke_response_tag, &m);
	assert_int_equal(m.payload.token_revoke_response.status, 1);
	{
		int rc;
		uint64_t deadline = bm_mono_ms() + 5000;
		while ((rc = bm_client_recv(t, &m, 100)) != BM_ECLOSED && bm_mono_ms() < deadline)
			;
		assert_int_equal(rc, BM_ECLOSED);
		assert_int_equal(bm_client_close_code(t), 4001);
	}
	bm_client_abort(t);
	assert_int_equal(bm_client_connect(&t, &o, err, sizeof(err)), BM_EUNAUTH);
	assert_non_null(strstr(err, "401"));
	assert_non_null(strstr(err, "revoked"));
	/* The laptop's own session is unaffected. */
	assert_int_equal(bm_client_send_ping(h), 0);
	expect(h, bimip_MessageScheme_pingpong_message_tag, &m);
	bm_client_close(h);
	free(tok);
}

static void test_auth_matrix(void **state)
{
	struct bm_client *c;
	struct bm_client_opts o = { .url = sig.url };
	struct bm_jwt_key *key, *other;
	struct bm_buf tok = BM_BUF_INIT;
	char path[400], err[256], payload[256];
	int64_t now = bm_wall_s();

	snprintf(path, sizeof(path), "%s/data/token.key", srv.dir);
	assert_int_equal(bm_jwt_key_load(path, &key), 0);
	assert_int_equal(bm_jwt_key_generate(BM_JWT_ES256, &other), 0);
	/* missing */
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), BM_EUNAUTH);
	assert_non_null(strstr(err, "missing token"));
	/* malformed */
	o.token = "not.a.jwt";
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), BM_EUNAUTH);
	assert_non_null(strstr(err, "malformed"));
	/* alg:none */
	o.token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZGV2aWNlIjoieSIsImp0aSI6InoiLCJpYXQiOjEsImV4cCI6OTk5OTk5OTk5OX0.";
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), BM_EUNAUTH);
	assert_non_null(strstr(err, "algorithm"));
	/* expired */
	snprintf(payload, sizeof(payload),
		 "{\"sub\":\"ivy@it\",\"device\":\"d\",\"jti\":\"j1\",\"iat\":%lld,\"exp\":%lld}",
		 (long long)(now - 7200), (long long)(now - 3600));
	{
		char hdr[128];
		snprintf(hdr, sizeof(hdr), "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
			 bm_jwt_key_kid(key));
		assert_int_equal(bm_jwt_sign_raw(key, hdr, payload, &tok), 0);
	}
	o.token = (char *)tok.data;
	assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), BM_EUNAUTH);
	assert_non_null(strstr(err, "expired"));
	/* wrong key */
	{
		struct bm_jwt_claims cl = { .exp = now + 600 };
		strcpy(cl.sub, "ivy@it");
		strcpy(cl.device, "d");
		bm_buf_reset(&tok);
		assert_int_equal(bm_jwt_sign(other, &cl, &tok), 0);
		o.token = (char *)tok.data;
		assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), BM_EUNAUTH);
		assert_non_null(strstr(err, "401"));
		/* valid, for contrast */
		bm_buf_reset(&tok);
		assert_int_equal(bm_jwt_sign(key, &cl, &tok), 0);
		o.token = (char *)tok.data;
		assert_int_equal(bm_client_connect(&c, &o, err, sizeof(err)), 0);
		bm_client_close(c);
	}
	bm_buf_release(&tok);
	bm_jwt_key_free(key);
	bm_jwt_key_free(other);
}

/* Who may do what: every refusal is an ErrorMessage 403 naming the route. */
static void test_authorization_matrix(void **state)
{
	struct bm_client *x = connect_dev("xena@it", "phone");
	struct bm_client *y = connect_dev("yuri@it", "phone");
	struct bm_client *z = connect_dev("zoe@it", "phone");
	char *ytok = bm_h_token(&srv, "yuri@it", "tablet", 3600);
	bimip_MessageScheme m;
	char msgid[128];

	/* A message between x and y; z is not a party to it. */
	assert_int_equal(bm_client_send_text(x, "yuri@it", "private", "x-1"), 0);
	expect(x, bimip_MessageScheme_version_update_tag, &m);
	snprintf(msgid, sizeof(msgid), "%s", m.payload.version_update.message_id);
	expect(y, bimip_MessageScheme_chat_message_tag, &m);
	assert_int_equal(bm_client_send_ack(z, "xena@it", msgid, 3), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "16");
	/* Revoking someone else's token. */
	assert_int_equal(bm_client_revoke(z, "", ytok), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "7");
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_token_revoke_request_tag;
	m.payload.token_revoke_request.type = 1;
	m.payload.token_revoke_request.has_to = true;
	strcpy(m.payload.token_revoke_request.to.eid, "yuri@it");
	assert_int_equal(bm_client_send(z, &m), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	/* Acting as another owner in contacts and logout. */
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_subscriber_add_request_tag;
	m.payload.subscriber_add_request.has_owner = true;
	strcpy(m.payload.subscriber_add_request.owner.eid, "xena@it");
	m.payload.subscriber_add_request.has_subscriber = true;
	strcpy(m.payload.subscriber_add_request.subscriber.eid, "zoe@it");
	assert_int_equal(bm_client_send(z, &m), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_logout_tag;
	m.payload.logout.type = 1;
	m.payload.logout.has_entity = true;
	strcpy(m.payload.logout.entity.eid, "xena@it");
	assert_int_equal(bm_client_send(z, &m), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	/* A blocked user sees neither awareness nor a way to chat, even as a
	 * subscriber; typing signals are refused too. */
	assert_int_equal(bm_client_add_subscriber(y, "zoe@it"), 0);
	expect(y, bimip_MessageScheme_subscriber_add_response_tag, &m);
	assert_int_equal(bm_client_block(y, "zoe@it", 1), 0);
	expect(y, bimip_MessageScheme_block_subscriber_tag, &m);
	assert_int_equal(bm_client_awareness_request(z, "yuri@it", 1), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "4");
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_signal_tag;
	m.payload.signal.has_to = true;
	strcpy(m.payload.signal.to.eid, "yuri@it");
	m.payload.signal.status = 6;
	assert_int_equal(bm_client_send(z, &m), 0);
	expect(z, bimip_MessageScheme_error_message_tag, &m);
	assert_int_equal(m.payload.error_message.code, 403);
	assert_string_equal(m.payload.error_message.route, "19");
	/* ... while an unblocked contact's typing signal is relayed live. */
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_signal_tag;
	m.payload.signal.has_to = true;
	strcpy(m.payload.signal.to.eid, "yuri@it");
	m.payload.signal.status = 6;
	assert_int_equal(bm_client_send(x, &m), 0);
	expect(y, bimip_MessageScheme_signal_tag, &m);
	assert_string_equal(m.payload.signal.from.eid, "xena@it");
	assert_int_equal(m.payload.signal.status, 6);
	assert_int_equal(m.offset, 0);
	free(ytok);
	bm_client_close(x);
	bm_client_close(y);
	bm_client_close(z);
}

/* Next VersionUpdate on c within 10 s (awareness skipped); its offset too. */
static int64_t next_version(struct bm_client *c, char *local, size_t cap, uint64_t *offset)
{
	bimip_MessageScheme m;

	expect(c, bimip_MessageScheme_version_update_tag, &m);
	snprintf(local, cap, "%s", m.payload.version_update.message_id_local);
	*offset = m.offset;
	return m.payload.version_update.version;
}

/* limits.resend_memory bounds the resend keys: past it the oldest is
 * forgotten (its resend is a new message), the newest are remembered, also
 * across a restart; /metrics shows how many are held. */
static void test_resend_memory_bounded(void **state)
{
	enum { MAX = 1024, N = 1100 };
	static struct bm_h_node s2, g2;
	static const struct bm_h_node *two[1] = { &s2 };
	static int64_t version[N];
	static char out[1 << 16];
	struct bm_client *a;
	char local[sizeof(((bimip_VersionUpdate *)0)->message_id_local)], err[256], *tok;
	uint64_t off;
	int sent = 0, got = 0;

	(void)state;
	assert_int_equal(bm_h_start_server(&s2, "s2", "{\"limits\":{\"resend_memory\":1024}}"), 0);
	assert_int_equal(bm_h_start_signal(&g2, "g2", two, 1,
				       "{\"limits\":{\"rate\":100000,\"burst\":100000}}"), 0);
	tok = bm_h_token(&s2, "ria@it", "phone", 3600);
	assert_non_null(tok);
	{
		struct bm_client_opts o = { .url = g2.url, .token = tok };
		if (bm_client_connect(&a, &o, err, sizeof(err)))
			fail_msg("connect: %s", err);
	}
	/* N messages, 64 in flight: versions 1..N in order. */
	while (got < N) {
		while (sent < N && sent - got < 64) {
			snprintf(local, sizeof(local), "r-%d", sent++);
			assert_int_equal(bm_client_send_text(a, "sam@it", "x", local), 0);
		}
		version[got] = next_version(a, local, sizeof(local), &off);
		assert_int_equal(atoi(local + 2), got);
		assert_int_equal(version[got], got + 1);
		assert_true(off > 0);
		got++;
	}
	assert_int_equal(bm_h_http(s2.admin, "GET", "/metrics", NULL, NULL, out, sizeof(out)), 200);
	assert_non_null(strstr(out, "bimip_server_resend_keys 1024\n"));
	/* The newest is remembered: the original version, nothing stored. */
	assert_int_equal(bm_client_send_text(a, "sam@it", "x", "r-1099"), 0);
	assert_int_equal(next_version(a, local, sizeof(local), &off), N);
	assert_int_equal(off, 0);
	assert_int_equal(bm_client_send_text(a, "sam@it", "x", "r-76"), 0);  /* oldest kept */
	assert_int_equal(next_version(a, local, sizeof(local), &off), 77);
	assert_int_equal(off, 0);
	/* The oldest is forgotten: its resend is stored as a new message. */
	assert_int_equal(bm_client_send_text(a, "sam@it", "x", "r-0"), 0);
	assert_int_equal(next_version(a, local, sizeof(local), &off), N + 1);
	assert_true(off > 0);
	bm_client_close(a);
	/* After a restart: the newest keys again (snapshot or repair). */
	assert_int_equal(bm_h_stop(&s2, SIGTERM), 0);
	assert_int_equal(bm_h_restart(&s2), 0);
	assert_int_equal(bm_h_wait_readyz(&g2, 20000), 0);
	free(tok);
	tok = bm_h_token(&s2, "ria@it", "phone", 3600);
	{
		struct bm_client_opts o = { .url = g2.url, .token = tok, .commit_every = -1 };
		uint64_t deadline = bm_mono_ms() + 20000;
		while (bm_client_connect(&a, &o, err, sizeof(err))) {
			if (bm_mono_ms() > deadline)
				fail_msg("connect after restart: %s", err);
			bm_h_wait_readyz(&g2, 1000);
		}
	}
	assert_int_equal(bm_client_send_text(a, "sam@it", "x", "r-1098"), 0);
	/* The stream replays what was not committed first: skip to the answer
	 * without an offset. */
	{
		uint64_t deadline = bm_mono_ms() + 10000;
		int64_t v = 0;
		off = 1;
		while (off && bm_mono_ms() < deadline)
			v = next_version(a, local, sizeof(local), &off);
		assert_int_equal(off, 0);
		assert_string_equal(local, "r-1098");
		assert_int_equal(v, N - 1);
	}
	bm_client_close(a);
	free(tok);
	assert_int_equal(bm_h_stop(&g2, SIGTERM), 0);
	assert_int_equal(bm_h_stop(&s2, SIGTERM), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chat_two_users_two_devices),
		cmocka_unit_test(test_sync_resume_and_new_device),
		cmocka_unit_test(test_commit_after_reconnect),
		cmocka_unit_test(test_drain_event_loop),
		cmocka_unit_test(test_contacts_awareness_block),
		cmocka_unit_test(test_errors_and_ping),
		cmocka_unit_test(test_logout_and_revoke),
		cmocka_unit_test(test_auth_matrix),
		cmocka_unit_test(test_authorization_matrix),
		cmocka_unit_test(test_resend_memory_bounded),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
