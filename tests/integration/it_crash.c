/*
 * Crash safety of chat: kill -9 bimip-server while a sender streams
 * messages, restart it, let the sender retry what was not confirmed (same
 * message_id_local, as a real client does), and check that
 *   - every message that got a VersionUpdate reaches the receiver,
 *   - none reaches it twice (by message_id), and
 *   - the versions the receiver sees are 1..N without a gap or a repeat.
 * BIMIP_CRASH_TRIALS sets the number of kill/restart rounds (default 3).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "bimip_client.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_time.h"

#define MAX_MSGS 4000
#define WINDOW 32

static struct bm_h_node srv, sig;
static const struct bm_h_node *servers[1] = { &srv };

struct msg {
	int confirmed;              /* VersionUpdate seen by the sender */
	int received;               /* times the receiver got it */
	int64_t version;
	int64_t sent_ms;
	char message_id[80];
};

static struct msg msgs[MAX_MSGS];
static int n_sent;
static int64_t seen_version[MAX_MSGS * 2];

static struct bm_client *dial(const char *eid, const char *dev)
{
	char *tok = bm_h_token(&srv, eid, dev, 3600);
	struct bm_client_opts o = { .url = sig.url, .token = tok, .timeout_ms = 3000 };
	struct bm_client *c = NULL;
	char err[256];
	uint64_t deadline = bm_mono_ms() + 20000;

	assert_non_null(tok);
	while (bm_client_connect(&c, &o, err, sizeof(err))) {
		if (bm_mono_ms() > deadline)
			fail_msg("connect %s: %s", eid, err);
		bm_h_wait_readyz(&sig, 1000);
	}
	free(tok);
	return c;
}

static int local_index(const char *local)
{
	return strncmp(local, "m-", 2) ? -1 : atoi(local + 2);
}

static void send_msg(struct bm_client *a, int i)
{
	char local[32], text[64];

	/* A quote, a backslash and a two-byte character: the resend key goes
	 * through the state records and the snapshot escaped. */
	snprintf(local, sizeof(local), "m-%d\"\\\xc3\xa9", i);
	snprintf(text, sizeof(text), "message %d", i);
	msgs[i].sent_ms = (int64_t)bm_mono_ms();
	bm_client_send_text(a, "rcv@crash", text, local);  /* errors: retried later */
}

/* Drain both clients; reconnect one that the edge closed. */
static void pump(struct bm_client **a, struct bm_client **b, int ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	bimip_MessageScheme m;

	do {
		int rc;
		while ((rc = bm_client_recv(*a, &m, 5)) == 0) {
			if (m.which_payload == bimip_MessageScheme_version_update_tag) {
				int i = local_index(m.payload.version_update.message_id_local);
				if (i < 0 || i >= MAX_MSGS)
					fail_msg("VersionUpdate for unknown local id '%s'",
						 m.payload.version_update.message_id_local);
				if (msgs[i].confirmed && strcmp(msgs[i].message_id,
								m.payload.version_update.message_id))
					fail_msg("message %d confirmed twice with different ids: %s, %s",
						 i, msgs[i].message_id,
						 m.payload.version_update.message_id);
				msgs[i].confirmed = 1;
				msgs[i].version = m.payload.version_update.version;
				snprintf(msgs[i].message_id, sizeof(msgs[i].message_id), "%s",
					 m.payload.version_update.message_id);
			}
		}
		if (rc == BM_ECLOSED) {
			char err[256];
			bm_h_wait_readyz(&sig, 2000);
			bm_client_reconnect(*a, err, sizeof(err));
		}
		while ((rc = bm_client_recv(*b, &m, 5)) == 0) {
			if (m.which_payload == bimip_MessageScheme_chat_message_tag) {
				const bimip_ChatMessage *c = &m.payload.chat_message;
				int i = local_index(c->message_id_local);
				if (i < 0 || i >= MAX_MSGS)
					fail_msg("receiver got unknown local id '%s'", c->message_id_local);
				if (c->version <= 0 || c->version >= MAX_MSGS * 2)
					fail_msg("version %lld out of range", (long long)c->version);
				if (seen_version[c->version])
					fail_msg("version %lld delivered twice (messages %lld and %d)",
						 (long long)c->version,
						 (long long)seen_version[c->version] - 1, i);
				seen_version[c->version] = i + 1;
				msgs[i].received++;
				if (msgs[i].received > 1)
					fail_msg("message %d (%s) delivered twice", i, c->message_id);
			}
		}
		if (rc == BM_ECLOSED) {
			char err[256];
			bm_h_wait_readyz(&sig, 2000);
			bm_client_reconnect(*b, err, sizeof(err));
		}
	} while (bm_mono_ms() < deadline);
}

static int unconfirmed(int upto)
{
	int n = 0;

	for (int i = 0; i < upto; i++)
		n += !msgs[i].confirmed;
	return n;
}

/* Flips one byte of the first occurrence of needle in path; 1 if found. */
static int flip_first(const char *path, const char *needle)
{
	static char buf[64 << 20];
	size_t n, k = strlen(needle);
	FILE *f = fopen(path, "r+b");
	int found = 0;

	if (!f)
		return 0;
	n = fread(buf, 1, sizeof(buf), f);
	for (size_t i = 0; i + k <= n; i++)
		if (!memcmp(buf + i, needle, k)) {
			buf[i] ^= 0x20;
			found = fseek(f, (long)i, SEEK_SET) == 0 && fputc(buf[i], f) != EOF;
			break;
		}
	fclose(f);
	return found;
}

/* A damaged record in the part of the log the repair reads: the pass in
 * log order stops there, the server says so and repeats the repair stream
 * by stream, and the chats whose streams are intact go on at the right
 * version.  No snapshot (removed after a clean stop), so the repair reads
 * every user stream from its start, and the record lies below the queue's
 * checkpoint, so opening the queue does not read it. */
static void damaged_log_repair(struct bm_client **a, struct bm_client **b)
{
	struct bm_client *x = dial("x@crash", "phone");
	bimip_MessageScheme m;
	uint64_t deadline = bm_mono_ms() + 20000;
	char path[512];
	int confirmed = 0;

	bm_client_send_text(x, "y@crash", "damage-me-please", "dm-1");
	while (!confirmed && bm_mono_ms() < deadline)
		if (bm_client_recv(x, &m, 100) == 0 &&
		    m.which_payload == bimip_MessageScheme_version_update_tag)
			confirmed = 1;
	assert_true(confirmed);
	bm_client_close(x);
	/* Messages of the first chat after the damaged one in the log: only
	 * the repeated repair restores their versions. */
	for (int k = 0; k < 3; k++) {
		send_msg(*a, n_sent++);
		deadline = bm_mono_ms() + 20000;
		while (!msgs[n_sent - 1].confirmed && bm_mono_ms() < deadline)
			pump(a, b, 50);
		assert_true(msgs[n_sent - 1].confirmed);
	}
	assert_int_equal(bm_h_stop(&srv, SIGTERM), 0);
	snprintf(path, sizeof(path), "%s/data/state.snap", srv.dir);
	assert_int_equal(unlink(path), 0);
	snprintf(path, sizeof(path), "%s/data/queue/00000000000000000000.seg", srv.dir);
	assert_true(flip_first(path, "damage-me-please"));
	assert_int_equal(bm_h_restart(&srv), 0);
	assert_true(bm_h_log_has(&srv, "cannot read the log in order"));
	assert_int_equal(bm_h_wait_readyz(&sig, 20000), 0);
	send_msg(*a, n_sent++);
	deadline = bm_mono_ms() + 20000;
	while (!msgs[n_sent - 1].confirmed && bm_mono_ms() < deadline) {
		pump(a, b, 200);
		if (!msgs[n_sent - 1].confirmed &&
		    bm_mono_ms() - (uint64_t)msgs[n_sent - 1].sent_ms > 1000)
			send_msg(*a, n_sent - 1);
	}
	assert_true(msgs[n_sent - 1].confirmed);
	assert_int_equal(msgs[n_sent - 1].version, n_sent);
}

static void test_kill9_during_sends(void **state)
{
	const char *t = getenv("BIMIP_CRASH_TRIALS");
	int trials = t ? atoi(t) : 3;
	struct bm_client *a, *b;
	unsigned seed = (unsigned)bm_mono_ns();
	int lost_window = 0;

	bm_h_init();
	/* Small snapshot interval: background snapshots run during the kills. */
	assert_int_equal(bm_h_start_server(&srv, "crash-s1",
					   "{\"state\":{\"snapshot_every\":150,\"snapshot_interval\":\"0s\"}}"), 0);
	assert_int_equal(bm_h_start_signal(&sig, "crash-g1", servers, 1,
					   "{\"limits\":{\"rate\":100000,\"burst\":100000}}"), 0);
	a = dial("snd@crash", "phone");
	b = dial("rcv@crash", "phone");
	print_message("seed %u, %d trials\n", seed, trials);
	for (int trial = 0; trial < trials; trial++) {
		int target = n_sent + 100 + (int)(rand_r(&seed) % 400);
		uint64_t deadline = bm_mono_ms() + 20000;

		if (target > MAX_MSGS - 1)
			target = MAX_MSGS - 1;
		/* Stream with a window until the kill point. */
		while (n_sent < target && bm_mono_ms() < deadline) {
			while (n_sent < target && n_sent - (n_sent - unconfirmed(n_sent)) < WINDOW)
				send_msg(a, n_sent++);
			pump(&a, &b, 1);
		}
		/* Keep sending a little while the server dies. */
		for (int i = 0; i < 20 && n_sent < MAX_MSGS - 1; i++)
			send_msg(a, n_sent++);
		assert_int_equal(bm_h_stop(&srv, SIGKILL), 128 + SIGKILL);
		lost_window += unconfirmed(n_sent);
		assert_int_equal(bm_h_restart(&srv), 0);
		assert_int_equal(bm_h_wait_readyz(&sig, 20000), 0);
		/* Retry whatever was not confirmed, as a client does, until done. */
		deadline = bm_mono_ms() + 60000;
		while (unconfirmed(n_sent) && bm_mono_ms() < deadline) {
			for (int i = 0; i < n_sent; i++)
				if (!msgs[i].confirmed && bm_mono_ms() - (uint64_t)msgs[i].sent_ms > 1000)
					send_msg(a, i);
			pump(&a, &b, 200);
		}
		if (unconfirmed(n_sent))
			fail_msg("trial %d: %d messages never confirmed", trial, unconfirmed(n_sent));
	}
	/* Everything confirmed must arrive, exactly once. */
	{
		uint64_t deadline = bm_mono_ms() + 30000;
		int missing;
		do {
			pump(&a, &b, 100);
			missing = 0;
			for (int i = 0; i < n_sent; i++)
				missing += msgs[i].confirmed && !msgs[i].received;
		} while (missing && bm_mono_ms() < deadline);
		if (missing)
			fail_msg("%d confirmed messages never reached the receiver", missing);
	}
	/* Versions 1..n_sent, each once. */
	for (int v = 1; v <= n_sent; v++)
		if (!seen_version[v])
			fail_msg("version %d missing at the receiver (gap)", v);
	if (seen_version[n_sent + 1])
		fail_msg("more versions than messages");
	print_message("%d trials: %d messages, %d were in flight at a kill and were "
		      "retried; all delivered once, versions 1..%d gapless\n",
		      trials, n_sent, lost_window, n_sent);
	assert_true(bm_h_log_has(&srv, "loaded the state snapshot"));
	/* The tails were read in log order, not stream by stream. */
	assert_true(bm_h_log_has(&srv, "repair: read"));
	assert_false(bm_h_log_has(&srv, "cannot read the log in order"));
	/* A damaged snapshot is refused and the whole state log replayed: the
	 * chat goes on at the next version, no version handed out twice. */
	assert_int_equal(bm_h_stop(&srv, SIGTERM), 0);
	{
		char path[512], cmd[600];
		snprintf(path, sizeof(path), "%s/data/state.snap", srv.dir);
		snprintf(cmd, sizeof(cmd), "truncate -s -20 '%s'", path);
		assert_int_equal(system(cmd), 0);
	}
	assert_int_equal(bm_h_restart(&srv), 0);
	assert_true(bm_h_log_has(&srv, "is unusable"));
	assert_int_equal(bm_h_wait_readyz(&sig, 20000), 0);
	send_msg(a, n_sent++);
	{
		uint64_t deadline = bm_mono_ms() + 20000;
		while (!msgs[n_sent - 1].confirmed && bm_mono_ms() < deadline) {
			pump(&a, &b, 200);
			if (!msgs[n_sent - 1].confirmed &&
			    bm_mono_ms() - (uint64_t)msgs[n_sent - 1].sent_ms > 1000)
				send_msg(a, n_sent - 1);
		}
		assert_true(msgs[n_sent - 1].confirmed);
		assert_int_equal(msgs[n_sent - 1].version, n_sent);
	}
	damaged_log_repair(&a, &b);
	bm_client_close(a);
	bm_client_close(b);
	assert_int_equal(bm_h_stop(&sig, SIGTERM), 0);
	assert_int_equal(bm_h_stop(&srv, SIGTERM), 0);
	assert_int_equal(bm_h_check_logs(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kill9_during_sends),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
