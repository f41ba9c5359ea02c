/*
 * it_multi.c - three bimip-servers and two bimip-signals, gossiping: users
 * owned by different servers chat through either signal; one server and one
 * signal are killed (-9) in the middle of traffic and the clients resume
 * through the other signal with nothing acknowledged lost or doubled; a
 * server stopped (SIGSTOP, the partition this machine allows) holds its
 * users' messages back until it continues, and nothing is lost.
 *
 * A message counts as acknowledged when its sender got the VersionUpdate;
 * every acknowledged message must reach its receiver exactly once (by
 * message_id), and every message sent must end up acknowledged.
 */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <cmocka.h>
#include <jansson.h>

#include "bimip_client.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_registry.h"
#include "bm_time.h"

#define KEY "it-multi-key"
#define USERS 6
#define MAX_MSGS 1200

#define HANDOFF "\"handoff\":{\"window\":2,\"batch\":8}"

static struct bm_h_node s[4], g[2];   /* s[3]: a later joiner */
static const struct bm_h_node *no_servers[1] = { NULL };

struct user {
	char eid[32];
	struct bm_client *c;
	int sig;                    /* which signal it is on now */
	int errors_403;
};

struct msg {
	int from, to;
	int confirmed;
	int received;
	int64_t sent_ms;
	char message_id[80];
};

static struct user users[USERS];
static struct msg msgs[MAX_MSGS];
static int n_msgs;

static long metric(const struct bm_h_node *n, const char *name)
{
	static char out[1 << 17];

	if (bm_h_http(n->admin, "GET", "/metrics", NULL, NULL, out, sizeof(out)) != 200)
		return -1;
	return bm_h_metric_in(out, name);
}

static long metric_sum(const char *name)
{
	long t = 0;

	for (int i = 0; i < 4; i++)
		if (s[i].pid > 0)
			t += metric(&s[i], name) > 0 ? metric(&s[i], name) : 0;
	return t;
}

/* The state of member id as n sees it ("alive", "dead", ...; "" if unknown). */
static const char *member_state(const struct bm_h_node *n, const char *id)
{
	static char st[16];

	bm_h_member(n, id, st, sizeof(st), NULL, 0);
	return st;
}

static void wait_servers_up(int want)
{
	for (int i = 0; i < 2; i++) {
		int up = g[i].pid > 0 ? bm_h_wait_servers_up(&g[i], want, 20000) : want;
		if (up != want)
			fail_msg("%s has %d servers up, not %d", g[i].name, up, want);
	}
}

static void start_cluster(void)
{
	char extra[600], name[16];

	bm_h_init();
	/* A tiny hand-off window and batch, so moving a user takes many
	 * round trips and the sweep must resume (handoff.window/batch). */
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\","
		 "\"period\":\"100ms\"}," HANDOFF "}", KEY);
	assert_int_equal(bm_h_start_server(&s[0], "m-s0", extra), 0);
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\","
		 "\"period\":\"100ms\",\"seeds\":[\"%s\"]}," HANDOFF "}", KEY, s[0].gossip);
	for (int i = 1; i < 3; i++) {
		snprintf(name, sizeof(name), "m-s%d", i);
		assert_int_equal(bm_h_start_server(&s[i], name, extra), 0);
	}
	snprintf(extra, sizeof(extra), "{\"servers\":[],\"cluster\":{\"bind\":\"127.0.0.1:0\","
		 "\"key\":\"%s\",\"period\":\"100ms\",\"seeds\":[\"%s\"]},"
		 "\"limits\":{\"rate\":100000,\"burst\":100000}}", KEY, s[0].gossip);
	for (int i = 0; i < 2; i++) {
		snprintf(name, sizeof(name), "m-g%d", i);
		assert_int_equal(bm_h_start_signal(&g[i], name, no_servers, 0, extra), 0);
	}
	wait_servers_up(3);
}

static int dial(struct user *u, int sig, int timeout_ms)
{
	char *tok = bm_h_token(s[0].pid > 0 ? &s[0] : &s[1], u->eid, "phone", 3600);
	struct bm_client_opts o = { .url = g[sig].url, .token = tok, .timeout_ms = 3000 };
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	char err[256];
	int rc;

	if (!tok)
		return -1;
	for (;;) {
		o.url = g[sig].url;
		if (u->c) {
			bm_client_set_url(u->c, o.url);
			rc = bm_client_reconnect(u->c, err, sizeof(err));
		} else {
			rc = bm_client_connect(&u->c, &o, err, sizeof(err));
		}
		if (!rc)
			break;
		if (bm_mono_ms() > deadline) {
			free(tok);
			fail_msg("connect %s through %s: %s", u->eid, g[sig].name, err);
		}
		if (g[sig].pid <= 0)
			sig = !sig;
		poll(NULL, 0, 100);
	}
	free(tok);
	u->sig = sig;
	return 0;
}

static int find_local(const char *local)
{
	int i;

	if (strncmp(local, "x-", 2))
		return -1;
	i = atoi(local + 2);
	return i >= 0 && i < n_msgs ? i : -1;
}

static void send_msg(int i)
{
	char local[32], text[64];
	struct user *a = &users[msgs[i].from];

	snprintf(local, sizeof(local), "x-%d", i);
	snprintf(text, sizeof(text), "message %d from %s", i, a->eid);
	msgs[i].sent_ms = (int64_t)bm_mono_ms();
	bm_client_send_text(a->c, users[msgs[i].to].eid, text, local);
}

static int new_msg(int from, int to)
{
	int i = n_msgs++;

	assert_true(i < MAX_MSGS);
	msgs[i].from = from;
	msgs[i].to = to;
	send_msg(i);
	return i;
}

/* Read whatever arrived on every client; reconnect a closed one through a
 * live signal; resend what is unconfirmed after a while. */
static void pump(int ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	bimip_MessageScheme m;

	do {
		for (int k = 0; k < USERS; k++) {
			struct user *u = &users[k];
			int rc;

			while ((rc = bm_client_recv(u->c, &m, 0)) == 0) {
				if (m.which_payload == bimip_MessageScheme_version_update_tag) {
					const bimip_VersionUpdate *v = &m.payload.version_update;
					int i = find_local(v->message_id_local);

					if (i < 0 || msgs[i].from != k)
						fail_msg("%s: VersionUpdate for unknown '%s'", u->eid,
							 v->message_id_local);
					if (msgs[i].confirmed &&
					    strcmp(msgs[i].message_id, v->message_id))
						fail_msg("message %d confirmed as %s and as %s", i,
							 msgs[i].message_id, v->message_id);
					msgs[i].confirmed = 1;
					snprintf(msgs[i].message_id, sizeof(msgs[i].message_id),
						 "%s", v->message_id);
				} else if (m.which_payload ==
					   bimip_MessageScheme_chat_message_tag) {
					const bimip_ChatMessage *c = &m.payload.chat_message;
					int i = find_local(c->message_id_local);

					if (strcmp(c->author, "receiver"))
						continue;
					if (i < 0 || msgs[i].to != k)
						fail_msg("%s got a message it was not sent: '%s'",
							 u->eid, c->message_id_local);
					if (++msgs[i].received > 1)
						fail_msg("message %d (%s) delivered twice to %s", i,
							 c->message_id, u->eid);
				} else if (m.which_payload == bimip_MessageScheme_error_message_tag) {
					if (m.payload.error_message.code == 403)
						u->errors_403++;
				}
			}
			if (rc == BM_ECLOSED || rc == BM_EIO) {
				int to = g[u->sig].pid > 0 ? u->sig : !u->sig;
				dial(u, to, 30000);
			}
		}
		for (int i = 0; i < n_msgs; i++)
			if (!msgs[i].confirmed && (int64_t)bm_mono_ms() - msgs[i].sent_ms > 2000)
				send_msg(i);
		poll(NULL, 0, 2);
	} while (bm_mono_ms() < deadline);
}

static int count_unconfirmed(void)
{
	int n = 0;

	for (int i = 0; i < n_msgs; i++)
		n += !msgs[i].confirmed;
	return n;
}

/* Pump until every message is confirmed and received; fail after ms. */
static void settle(int ms, const char *what)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	int missing;

	for (;;) {
		pump(50);
		missing = 0;
		for (int i = 0; i < n_msgs; i++)
			missing += !msgs[i].confirmed || msgs[i].received != 1;
		if (!missing)
			return;
		if (bm_mono_ms() > deadline)
			break;
	}
	for (int i = 0; i < n_msgs; i++)
		if (!msgs[i].confirmed || msgs[i].received != 1)
			print_message("  message %d %s -> %s: confirmed %d, received %d (%s)\n", i,
				      users[msgs[i].from].eid, users[msgs[i].to].eid,
				      msgs[i].confirmed, msgs[i].received, msgs[i].message_id);
	fail_msg("%s: %d of %d messages not confirmed and delivered once", what, missing,
		 n_msgs);
}

static void test_chat_across_owners(void **state)
{
	long fwd, remote;

	start_cluster();
	for (int k = 0; k < USERS; k++) {
		snprintf(users[k].eid, sizeof(users[k].eid), "user%d@multi", k);
		dial(&users[k], k % 2, 20000);
	}
	/* Everyone writes to everyone: 30 chats, spread over the owners. */
	for (int a = 0; a < USERS; a++)
		for (int b = 0; b < USERS; b++)
			if (a != b)
				new_msg(a, b);
	settle(30000, "all pairs");
	fwd = metric_sum("bimip_server_forwarded_total");
	remote = metric_sum("bimip_server_remote_appends_total");
	print_message("%d messages across 3 owners: %ld forwarded, %ld remote appends\n",
		      n_msgs, fwd, remote);
	assert_true(fwd > 0);
	assert_true(remote > 0);
	/* Each server that sent to another got its WELCOME: the links batch. */
	{
		uint64_t deadline = bm_mono_ms() + 10000;
		long links;
		while ((links = metric_sum("bimip_server_peer_batch_links")) < 3 &&
		       bm_mono_ms() < deadline)
			pump(50);
		print_message("peer links sending batch frames: %ld\n", links);
		assert_true(links >= 3);
	}
	/* The versions of one chat come from one place, whoever writes. */
	{
		int ab = -1, ba = -1;
		for (int i = 0; i < n_msgs; i++) {
			if (msgs[i].from == 0 && msgs[i].to == 1)
				ab = i;
			if (msgs[i].from == 1 && msgs[i].to == 0)
				ba = i;
		}
		assert_true(ab >= 0 && ba >= 0);
		assert_memory_equal(msgs[ab].message_id, msgs[ba].message_id, 32);
		assert_string_not_equal(msgs[ab].message_id, msgs[ba].message_id);
	}
	/* A block is kept by the blocker's owner and holds across servers. */
	bm_client_block(users[2].c, users[3].eid, 1);
	pump(500);
	{
		int before = users[3].errors_403, i;
		char local[32], text[32];

		i = n_msgs;
		snprintf(local, sizeof(local), "blocked-%d", i);
		snprintf(text, sizeof(text), "you should not see this");
		bm_client_send_text(users[3].c, users[2].eid, text, local);
		{
			uint64_t deadline = bm_mono_ms() + 10000;
			while (users[3].errors_403 == before && bm_mono_ms() < deadline)
				pump(50);
		}
		assert_int_equal(users[3].errors_403, before + 1);
	}
	bm_client_block(users[2].c, users[3].eid, 0);
	pump(300);
}

static void test_kill_server_and_signal(void **state)
{
	int base = n_msgs, victim_srv = 1, victim_sig = 0;

	/* Steady traffic from everyone, then kill -9 a server and a signal. */
	for (int round = 0; round < 40; round++) {
		for (int a = 0; a < USERS; a++)
			new_msg(a, (a + 1 + round % (USERS - 1)) % USERS);
		pump(20);
		if (round == 15) {
			assert_int_equal(bm_h_stop(&s[victim_srv], SIGKILL), 128 + SIGKILL);
			assert_int_equal(bm_h_stop(&g[victim_sig], SIGKILL), 128 + SIGKILL);
			g[victim_sig].pid = 0;
			print_message("killed %s and %s with %d messages sent\n",
				      s[victim_srv].name, g[victim_sig].name, n_msgs - base);
		}
	}
	pump(1000);
	print_message("%d of %d unconfirmed while %s is down (its users wait)\n",
		      count_unconfirmed(), n_msgs, s[victim_srv].name);
	/* Every client is on the surviving signal now. */
	for (int k = 0; k < USERS; k++)
		assert_int_equal(users[k].sig, !victim_sig);
	/* No server may leave while another is down or suspect (its users
	 * would move without their data): 409 naming it. */
	{
		static char out[4096];
		uint64_t t0 = bm_mono_ms();
		int st;

		while (!strcmp(member_state(&s[2], s[victim_srv].name), "alive") &&
		       bm_mono_ms() - t0 < 60000)
			poll(NULL, 0, 50);
		st = bm_h_http(s[2].admin, "POST", "/v1/cluster/leave", BM_H_ADMIN_KEY, "{}", out,
			       sizeof(out));
		assert_int_equal(st, 409);
		assert_non_null(strstr(out, s[victim_srv].name));
	}
	/* The server comes back with its disk: everything goes through. */
	assert_int_equal(bm_h_restart(&s[victim_srv]), 0);
	settle(60000, "after kill -9 of a server and a signal");
	print_message("all %d messages confirmed and delivered once; %ld pending retries\n",
		      n_msgs, metric_sum("bimip_server_pending_retries_total"));
	/* The killed signal returns and takes sessions again. */
	assert_int_equal(bm_h_restart(&g[victim_sig]), 0);
	wait_servers_up(3);
	dial(&users[0], victim_sig, 20000);
	new_msg(0, 1);
	new_msg(1, 0);
	settle(30000, "through the restarted signal");
}

static void test_partition_sigstop(void **state)
{
	int victim = 2;

	/* A server that stops answering (SIGSTOP: its sockets stay open, like a
	 * partition) is declared dead by gossip; its users' messages wait. */
	assert_int_equal(kill(s[victim].pid, SIGSTOP), 0);
	for (int round = 0; round < 10; round++) {
		for (int a = 0; a < USERS; a++)
			new_msg(a, (a + 1 + round % (USERS - 1)) % USERS);
		pump(100);
	}
	pump(1500);
	print_message("partition: %d of %d unconfirmed while %s is stopped\n",
		      count_unconfirmed(), n_msgs, s[victim].name);
	assert_int_equal(kill(s[victim].pid, SIGCONT), 0);
	settle(60000, "after the partition heals");
	print_message("partition healed: all %d messages confirmed and delivered once\n",
		      n_msgs);
}

/* The server that owns eid by the library's rule (bm_registry_owner) when
 * ids are alive and gone has left.  The test asserts the daemons moved
 * exactly these users, so the daemons and the library agree. */
static int owned_by(const char *eid, const char *const *ids, int n, const char *gone,
		    const char *who)
{
	struct bm_registry *r = bm_registry_new("it-multi", 1);
	char out[BM_SWIM_ID_MAX + 1];
	int yes;

	assert_non_null(r);
	for (int i = 0; i < n; i++)
		assert_int_equal(bm_registry_member(r, ids[i], BM_SWIM_ROLE_SERVER,
						    BM_SWIM_ALIVE), 0);
	assert_int_equal(bm_registry_member(r, gone, BM_SWIM_ROLE_SERVER, BM_SWIM_LEFT), 0);
	assert_int_equal(bm_registry_owner(r, eid, out), 0);
	yes = !strcmp(out, who);
	bm_registry_free(r);
	return yes;
}

/* Every message ever addressed to user k, read by a new device from offset 0
 * (a device that read before has committed what it read). */
static char hist_seen[MAX_MSGS];   /* what the last history_of read */

static int history_of(int k, const char *device, int want, int timeout_ms)
{
	struct user t = { 0 };
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	char *tok;
	struct bm_client_opts o = { .timeout_ms = 3000 };
	bimip_MessageScheme m;
	char err[256];
	int got = 0, live = g[0].pid > 0 ? 0 : 1;
	char *seen = hist_seen;

	memset(hist_seen, 0, sizeof(hist_seen));
	memcpy(t.eid, users[k].eid, sizeof(t.eid));
	tok = bm_h_token(&s[0], t.eid, device, 3600);
	assert_non_null(tok);
	o.url = g[live].url;
	o.token = tok;
	while (bm_client_connect(&t.c, &o, err, sizeof(err))) {
		if (bm_mono_ms() > deadline)
			fail_msg("tablet of %s: %s", t.eid, err);
		poll(NULL, 0, 100);
	}
	free(tok);
	while (got < want && bm_mono_ms() < deadline) {
		int rc = bm_client_recv(t.c, &m, 200);
		if (rc == BM_ECLOSED) {
			bm_client_reconnect(t.c, err, sizeof(err));
			continue;
		}
		if (rc || m.which_payload != bimip_MessageScheme_chat_message_tag ||
		    strcmp(m.payload.chat_message.author, "receiver"))
			continue;
		{
			int i = find_local(m.payload.chat_message.message_id_local);
			if (i >= 0 && !seen[i]) {
				seen[i] = 1;
				got++;
			}
		}
	}
	bm_client_close(t.c);
	return got;
}

static void test_graceful_leave(void **state)
{
	const char *b = getenv("BIMIP_BIN");
	char cmd[4096];
	int leaver = 1, want[USERS] = { 0 };
	long users_moved = 0;

	for (int i = 0; i < n_msgs; i++)
		want[msgs[i].to]++;
	/* A leave is refused (409) while the leaver still holds a server
	 * suspect: the partition just healed, so wait for its view to clear. */
	for (int j = 0; j < 3; j++) {
		uint64_t deadline = bm_mono_ms() + 20000;
		while (j != leaver && strcmp(member_state(&s[leaver], s[j].name), "alive") &&
		       bm_mono_ms() < deadline)
			poll(NULL, 0, 50);
	}
	snprintf(cmd, sizeof(cmd), "%.3000s/bimipctl --admin %.63s --key %s cluster leave >/dev/null",
		 b ? b : "build/bin", s[leaver].admin, BM_H_ADMIN_KEY);
	assert_int_equal(system(cmd), 0);
	/* It hands everything off, leaves, and stops by itself. */
	{
		uint64_t deadline = bm_mono_ms() + 30000;
		while (metric(&s[leaver], "bimip_server_handoff_users_total") >= 0 &&
		       bm_mono_ms() < deadline) {
			users_moved = metric(&s[leaver], "bimip_server_handoff_users_total");
			poll(NULL, 0, 50);
		}
		assert_true(bm_mono_ms() < deadline);
	}
	assert_int_equal(bm_h_stop(&s[leaver], 0), 0);   /* it stops by itself */
	s[leaver].pid = 0;
	print_message("%s left after handing off %ld users\n", s[leaver].name, users_moved);
	wait_servers_up(2);
	/* Every user's whole history is still there, wherever it lives now. */
	for (int k = 0; k < USERS; k++) {
		int got = history_of(k, "tablet", want[k], 30000);
		if (got != want[k])
			fail_msg("after the leave %s has %d of its %d messages", users[k].eid, got,
				 want[k]);
	}
	print_message("after the leave every user reads its whole history (%d messages)\n",
		      n_msgs);
	/* And chat goes on between the two servers left. */
	for (int a = 0; a < USERS; a++)
		new_msg(a, (a + 1) % USERS);
	settle(60000, "after a graceful leave");

	/* A new server joins in the leaver's place: the users that move to it
	 * bring their whole history, and chat goes on across three owners. */
	{
		char extra[600];
		long before = metric_sum("bimip_server_handoff_users_total"), moved;
		static char joiner[16];
		const char *ids[3] = { s[0].name, s[2].name, joiner };
		int takes = 0;

		snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"127.0.0.1:0\","
			 "\"key\":\"%s\",\"period\":\"100ms\",\"seeds\":[\"%s\"]}," HANDOFF "}",
			 KEY, s[0].gossip);
		/* A name that takes at least one user (all of them have messages). */
		for (int j = 3; j < 100 && !takes; j++) {
			snprintf(joiner, sizeof(joiner), "m-s%d", j);
			for (int k = 0; k < USERS; k++)
				takes += owned_by(users[k].eid, ids, 3, s[leaver].name, joiner);
		}
		assert_true(takes > 0);
		assert_int_equal(bm_h_start_server(&s[leaver], joiner, extra), 0);
		wait_servers_up(3);
		memset(want, 0, sizeof(want));
		for (int i = 0; i < n_msgs; i++)
			want[msgs[i].to]++;
		for (int k = 0; k < USERS; k++) {
			int got = history_of(k, "laptop", want[k], 30000);
			if (got != want[k])
				fail_msg("after the join %s has %d of its %d messages", users[k].eid,
					 got, want[k]);
		}
		moved = metric_sum("bimip_server_handoff_users_total") - before;
		print_message("%s joined: %ld users handed to it (%d expected), every user "
			      "reads its whole history (%d messages)\n", joiner, moved, takes,
			      n_msgs);
		assert_int_equal(moved, takes);
		for (int a = 0; a < USERS; a++)
			new_msg(a, (a + 2) % USERS);
		settle(60000, "after a join");

		/* The next change must not bring old copies back: a user that
		 * moved to the joiner gets a block there; a fifth server joins
		 * (taking nothing from the joiner); the block is still there. */
		{
			static char out[8192], fifth[16], path[256];
			const char *ids4[4] = { s[0].name, s[2].name, joiner, fifth };
			const char *x = NULL;
			uint64_t deadline;
			int st;

			for (int k = 0; k < USERS && !x; k++)
				if (owned_by(users[k].eid, ids, 3, "m-s1", joiner))
					x = users[k].eid;
			assert_non_null(x);
			snprintf(path, sizeof(path), "/v1/users/%.64s/blocks", x);
			assert_int_equal(bm_h_http(s[leaver].admin, "POST", path, BM_H_ADMIN_KEY,
						   "{\"eid\":\"nobody@it\"}", out, sizeof(out)), 200);
			/* Another server does not answer for it, and says who does. */
			snprintf(path, sizeof(path), "/v1/users/%.64s/contacts", x);
			assert_int_equal(bm_h_http(s[0].admin, "GET", path, BM_H_ADMIN_KEY, NULL, out,
						   sizeof(out)), 421);
			assert_non_null(strstr(out, s[leaver].admin));
			for (int j = 10; j < 200; j++) {
				snprintf(fifth, sizeof(fifth), "m-s%d", j);
				if (owned_by(x, ids4, 4, "m-s1", joiner))
					break;
			}
			assert_int_equal(bm_h_start_server(&s[3], fifth, extra), 0);
			wait_servers_up(4);
			deadline = bm_mono_ms() + 20000;
			do {
				poll(NULL, 0, 50);
				st = bm_h_http(s[leaver].admin, "GET", path, BM_H_ADMIN_KEY, NULL, out,
					       sizeof(out));
			} while (st != 200 && bm_mono_ms() < deadline);
			assert_int_equal(st, 200);
			if (!strstr(out, "nobody@it"))
				fail_msg("after %s joined, %s lost the block it got at %s: %s", fifth,
					 x, joiner, out);
			print_message("%s joined: %s keeps the block it got at %s\n", fifth, x,
				      joiner);
			for (int a = 0; a < USERS; a++)
				new_msg(a, (a + 3) % USERS);
			settle(60000, "after a second join");

			/* The fifth dies for good: an operator removes it, its users
			 * move on (without the history it held), chat goes on; when
			 * it comes back with its stale data it stops by itself. */
			{
				uint64_t t0;

				assert_int_equal(bm_h_stop(&s[3], SIGKILL), 128 + SIGKILL);
				t0 = bm_mono_ms();
				while (strcmp(member_state(&s[0], fifth), "dead") &&
				       bm_mono_ms() - t0 < 60000)
					poll(NULL, 0, 50);
				assert_string_equal(member_state(&s[0], fifth), "dead");
				snprintf(cmd, sizeof(cmd), "%.3000s/bimipctl --admin %.63s --key %s "
					 "cluster remove %s >/dev/null", b ? b : "build/bin",
					 s[0].admin, BM_H_ADMIN_KEY, fifth);
				assert_int_equal(system(cmd), 0);
				/* a live member cannot be removed */
				snprintf(cmd, sizeof(cmd), "%.3000s/bimipctl --admin %.63s --key %s "
					 "cluster remove %s 2>/dev/null", b ? b : "build/bin",
					 s[0].admin, BM_H_ADMIN_KEY, s[2].name);
				assert_int_not_equal(system(cmd), 0);
				wait_servers_up(3);
				/* Users the fifth owned continue on another server
				 * with whatever it has: their stream offsets go back,
				 * so a device that read the lost stream skips new
				 * messages until it syncs from scratch (docs/cluster.md);
				 * a new device reads them. */
				{
					int gone_to[USERS], n_moved = 0, first = n_msgs;

					for (int k = 0; k < USERS; k++) {
						gone_to[k] = owned_by(users[k].eid, ids4, 4, "m-s1", fifth);
						n_moved += gone_to[k];
					}
					for (int a = 0; a < USERS; a++)
						new_msg(a, (a + 4) % USERS);
					for (int i = first; i < n_msgs; i++) {
						if (!gone_to[msgs[i].to])
							continue;
						msgs[i].received = 1;   /* checked below */
					}
					settle(60000, "after removing a dead server");
					for (int k = 0; k < USERS; k++) {
						if (!gone_to[k])
							continue;
						history_of(k, "new-phone", 1000, 5000);
						for (int i = first; i < n_msgs; i++)
							if (msgs[i].to == k && !hist_seen[i])
								fail_msg("%s moved from %s: message %d "
									 "not stored", users[k].eid,
									 fifth, i);
					}
					print_message("%s removed: %d users moved without their "
						      "history; new messages reach them\n", fifth,
						      n_moved);
				}
				/* It may exit before or after its ready file: run it
				 * to its end instead of through the harness. */
				{
					const char *bin = getenv("BIMIP_BIN");
					int ex;

					snprintf(cmd, sizeof(cmd), "timeout 60 %.3000s/bimip-server -c %.400s "
						 ">> %.400s 2>&1", bin ? bin : "build/bin", s[3].cfg,
						 s[3].log);
					t0 = bm_mono_ms();
					ex = system(cmd);
					assert_true(WIFEXITED(ex));
					assert_int_equal(WEXITSTATUS(ex), 78);
				}
				assert_true(bm_h_log_has(&s[3], "was removed from the cluster"));
				print_message("%s removed while dead; chat went on; back with its "
					      "data it stopped by itself (exit 78) in %llu ms\n",
					      fifth, (unsigned long long)(bm_mono_ms() - t0));
			}
		}
	}
	for (int k = 0; k < USERS; k++)
		bm_client_close(users[k].c);
	for (int i = 0; i < 2; i++)
		if (g[i].pid > 0)
			assert_int_equal(bm_h_stop(&g[i], SIGTERM), 0);
	for (int i = 0; i < 4; i++)
		if (s[i].pid > 0)
			assert_int_equal(bm_h_stop(&s[i], SIGTERM), 0);
	assert_int_equal(bm_h_check_logs(), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chat_across_owners),
		cmocka_unit_test(test_kill_server_and_signal),
		cmocka_unit_test(test_partition_sigstop),
		cmocka_unit_test(test_graceful_leave),
	};

	signal(SIGPIPE, SIG_IGN);   /* a killed signal's socket */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
