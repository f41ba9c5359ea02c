/*
 * it_netns.c - a real partition: one of three bimip-servers runs in its own
 * network namespace, reached over a veth pair, and the link is cut
 * (`ip link set <host side> down`) while users chat.  The server keeps
 * running but reaches nobody: chats among users owned by the other two go
 * on, messages that need the cut-off server wait, gossip declares it dead;
 * once the link is up again every message is confirmed and delivered
 * exactly once, and it is alive again in gossip.  it_multi does the same
 * partition with SIGSTOP, which also freezes the server's own clock.
 *
 * Layout (host side 10.200.A.B+1/30, namespace side +2, from the pid):
 *
 *	host namespace                        | bmns-<pid>
 *	n-s0, n-s1, n-g0, n-g1 on 10.200.A.B+1 | n-s2 on 10.200.A.B+2
 *	                 bmh<pid> ============== bmn<pid>   (veth)
 *
 * Processes in the host namespace reach the host-side address locally, also
 * while the link is down.  Needs root and `ip` (iproute2); where a namespace
 * cannot be made (CI containers), every test is skipped with the reason.
 */
#include <errno.h>
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
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>
#include <mbedtls/sha256.h>

#include "bimip_client.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_registry.h"
#include "bm_time.h"

#define KEY "it-netns-key"
#define USERS 6
#define MAX_MSGS 1000
#define CUT 2                   /* s[CUT] lives in the namespace */

static char ns[32], veth_h[16], veth_n[16], ip_h[20], ip_n[20], why[256];
static int ns_made, ns_ok;
static const char *ns_exec[] = { "ip", "netns", "exec", ns, NULL };
static void (*prev_handler[32])(int);

static struct bm_h_node s[3], g[2];
static const struct bm_h_node *no_servers[1] = { NULL };

struct user {
	char eid[32];
	struct bm_client *c;
	int sig;                    /* which signal it is on */
	int owner;                  /* index into s[] */
	int down;                   /* closed; reconnect at retry_ms */
	uint64_t retry_ms;
};

struct msg {
	int from, to;
	int cut;                    /* needs s[CUT]: sender, receiver or chat owner */
	int confirmed;
	int received;
	int64_t sent_ms, first_ms;  /* first_ms: first sent */
	int64_t confirmed_ms;
	char message_id[80];
	char recv_id[80];
};

static struct user users[USERS];
static struct msg msgs[MAX_MSGS];
static int n_msgs;
static int chat_owner[USERS][USERS];
static int reconnects;

/* --- the namespace ------------------------------------------------------------ */

/* Run a shell command; its exit status (-1 if it could not run), stdout and
 * stderr in out (trailing newline dropped). */
__attribute__((format(printf, 3, 4)))
static int sh(char *out, size_t cap, const char *fmt, ...)
{
	char cmd[512];
	size_t n = 0, r;
	va_list ap;
	FILE *p;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd) - 8, fmt, ap);
	va_end(ap);
	strcat(cmd, " 2>&1");
	out[0] = 0;
	if (!(p = popen(cmd, "r"))) {
		snprintf(out, cap, "popen: %s", strerror(errno));
		return -1;
	}
	while (n + 1 < cap && (r = fread(out + n, 1, cap - n - 1, p)) > 0)
		n += r;
	out[n] = 0;
	while (n && out[n - 1] == '\n')
		out[--n] = 0;
	st = pclose(p);
	return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Deleting the host side of the pair deletes both; the namespace goes with
 * its last process (the harness kills them). */
static void ns_remove(void)
{
	char out[256];

	if (!ns_made)
		return;
	ns_made = 0;
	sh(out, sizeof(out), "ip link del %s", veth_h);
	if (sh(out, sizeof(out), "ip netns del %s", ns))
		fprintf(stderr, "it_netns: cannot delete namespace '%s': %s\n", ns, out);
}

static void on_fatal(int sig)
{
	ns_remove();
	signal(sig, prev_handler[sig] ? prev_handler[sig] : SIG_DFL);
	raise(sig);
}

/* Namespaces left by a run that was killed (-9 by a time limit). */
static void sweep_stale(void)
{
	char out[4096], junk[256], *line, *save = NULL;

	if (sh(out, sizeof(out), "ip netns list"))
		return;
	for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		int pid;

		if (sscanf(line, "bmns-%d", &pid) != 1 || pid == getpid() ||
		    kill(pid, 0) == 0 || errno != ESRCH)
			continue;
		sh(junk, sizeof(junk), "ip link del bmh%d", pid);
		sh(junk, sizeof(junk), "ip netns del bmns-%d", pid);
	}
}

/* 0 with the namespace and the link up; -1 with the reason in why. */
static int ns_create(void)
{
	static const int sigs[] = { SIGABRT, SIGSEGV, SIGTERM, SIGINT };
	int pid = getpid(), idx = pid % 16384, a = idx / 64, b = (idx % 64) * 4;
	char out[512];

	snprintf(ns, sizeof(ns), "bmns-%d", pid);
	snprintf(veth_h, sizeof(veth_h), "bmh%d", pid);
	snprintf(veth_n, sizeof(veth_n), "bmn%d", pid);
	snprintf(ip_h, sizeof(ip_h), "10.200.%d.%d", a, b + 1);
	snprintf(ip_n, sizeof(ip_n), "10.200.%d.%d", a, b + 2);
	sweep_stale();
	if (sh(out, sizeof(out), "ip netns add %s", ns)) {
		snprintf(why, sizeof(why), "ip netns add: %.200s", out[0] ? out : "failed");
		return -1;
	}
	ns_made = 1;
	atexit(ns_remove);
	/* After bm_h_init: ours run first, then the harness's (kill the nodes). */
	bm_h_init();
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		prev_handler[sigs[i]] = signal(sigs[i], on_fatal);
	if (sh(out, sizeof(out), "ip link add %s type veth peer name %s", veth_h, veth_n) ||
	    sh(out, sizeof(out), "ip link set %s netns %s", veth_n, ns) ||
	    sh(out, sizeof(out), "ip addr add %s/30 dev %s", ip_h, veth_h) ||
	    sh(out, sizeof(out), "ip link set %s up", veth_h) ||
	    sh(out, sizeof(out), "ip -n %s addr add %s/30 dev %s", ns, ip_n, veth_n) ||
	    sh(out, sizeof(out), "ip -n %s link set %s up", ns, veth_n) ||
	    sh(out, sizeof(out), "ip -n %s link set lo up", ns)) {
		snprintf(why, sizeof(why), "veth: %.200s", out[0] ? out : "failed");
		ns_remove();
		return -1;
	}
	return 0;
}

static void link_set(const char *state)
{
	char out[256];

	if (sh(out, sizeof(out), "ip link set %s %s", veth_h, state))
		fail_msg("ip link set %s %s: %s", veth_h, state, out);
}

/* --- ownership (the library's rule, which the daemons follow) ------------------ */

static struct bm_registry *registry(void)
{
	struct bm_registry *r = bm_registry_new("it-netns", 1);

	assert_non_null(r);
	for (int i = 0; i < 3; i++)
		assert_int_equal(bm_registry_member(r, s[i].name, BM_SWIM_ROLE_SERVER,
						    BM_SWIM_ALIVE), 0);
	return r;
}

static int owner_index(struct bm_registry *r, const char *key)
{
	char out[BM_SWIM_ID_MAX + 1];

	assert_int_equal(bm_registry_owner(r, key, out), 0);
	for (int i = 0; i < 3; i++)
		if (!strcmp(out, s[i].name))
			return i;
	fail_msg("owner '%s' of '%s' is not a server", out, key);
	return -1;
}

/* The server's chat id (server/state.c srv_chat_id): the first 16 bytes of
 * SHA-256(lower eid "\n" higher eid), in hex. */
static void chat_id(const char *a, const char *b, char out[33])
{
	const char *lo = strcmp(a, b) < 0 ? a : b, *hi = lo == a ? b : a;
	unsigned char in[80], h[32];
	int n = snprintf((char *)in, sizeof(in), "%s\n%s", lo, hi);

	assert_int_equal(mbedtls_sha256_ret(in, (size_t)n, h, 0), 0);
	for (int i = 0; i < 16; i++)
		sprintf(out + 2 * i, "%02x", h[i]);
}

/* Two users owned by each server, and who owns each chat. */
static void pick_users(void)
{
	struct bm_registry *r = registry();
	int per[3] = { 0 }, k = 0;
	char cid[33];

	for (int j = 0; j < 200 && k < USERS; j++) {
		char eid[32];
		int o;

		snprintf(eid, sizeof(eid), "user%d@netns", j);
		o = owner_index(r, eid);
		if (per[o] == USERS / 3)
			continue;
		per[o]++;
		snprintf(users[k].eid, sizeof(users[k].eid), "%s", eid);
		users[k++].owner = o;
	}
	assert_int_equal(k, USERS);
	for (int a = 0; a < USERS; a++)
		for (int b = 0; b < USERS; b++)
			if (a != b) {
				chat_id(users[a].eid, users[b].eid, cid);
				chat_owner[a][b] = owner_index(r, cid);
			}
	bm_registry_free(r);
}

/* --- cluster and clients (as it_multi) ----------------------------------------- */

static void wait_servers_up(int want, int timeout_ms)
{
	for (int i = 0; i < 2; i++) {
		int up = bm_h_wait_servers_up(&g[i], want, timeout_ms);
		if (up != want)
			fail_msg("%s has %d servers up, not %d", g[i].name, up, want);
	}
}

static void start_cluster(void)
{
	char extra[600], name[16];

	bm_h_set_host(ip_h);
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"%s:0\",\"key\":\"%s\","
		 "\"period\":\"100ms\"}}", ip_h, KEY);
	assert_int_equal(bm_h_start_server(&s[0], "n-s0", extra), 0);
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"%s:0\",\"key\":\"%s\","
		 "\"period\":\"100ms\",\"seeds\":[\"%s\"]}}", ip_h, KEY, s[0].gossip);
	assert_int_equal(bm_h_start_server(&s[1], "n-s1", extra), 0);
	bm_h_set_host(ip_n);
	bm_h_set_exec_prefix(ns_exec);
	snprintf(extra, sizeof(extra), "{\"cluster\":{\"bind\":\"%s:0\",\"key\":\"%s\","
		 "\"period\":\"100ms\",\"seeds\":[\"%s\"]}}", ip_n, KEY, s[0].gossip);
	assert_int_equal(bm_h_start_server(&s[CUT], "n-s2", extra), 0);
	bm_h_set_exec_prefix(NULL);
	bm_h_set_host(ip_h);
	snprintf(extra, sizeof(extra), "{\"servers\":[],\"cluster\":{\"bind\":\"%s:0\","
		 "\"key\":\"%s\",\"period\":\"100ms\",\"seeds\":[\"%s\"]},"
		 "\"limits\":{\"rate\":100000,\"burst\":100000}}", ip_h, KEY, s[0].gossip);
	for (int i = 0; i < 2; i++) {
		snprintf(name, sizeof(name), "n-g%d", i);
		assert_int_equal(bm_h_start_signal(&g[i], name, no_servers, 0, extra), 0);
	}
	bm_h_set_host(NULL);
	/* Every listener is on the veth addresses, none on loopback. */
	for (int i = 0; i < 3; i++) {
		const char *ip = i == CUT ? ip_n : ip_h;
		assert_non_null(strstr(s[i].zmq, ip));
		assert_non_null(strstr(s[i].admin, ip));
		assert_non_null(strstr(s[i].gossip, ip));
	}
	for (int i = 0; i < 2; i++) {
		assert_non_null(strstr(g[i].url, ip_h));
		assert_non_null(strstr(g[i].admin, ip_h));
		assert_non_null(strstr(g[i].gossip, ip_h));
	}
	wait_servers_up(3, 20000);
	/* Gossip carries the admin address as bound (421 answers name it). */
	{
		char st[32], admin[64];

		assert_int_equal(bm_h_member(&s[0], s[CUT].name, st, sizeof(st), admin, sizeof(admin)), 0);
		assert_string_equal(admin, s[CUT].admin);
	}
}

/* One connection attempt (or reconnect) of u through signal sig. */
static int dial_once(struct user *u, int sig, char *err, size_t cap)
{
	char *tok = bm_h_token(&s[0], u->eid, "phone", 3600);
	struct bm_client_opts o = { .url = g[sig].url, .token = tok, .timeout_ms = 1500 };
	int rc;

	if (!tok) {
		snprintf(err, cap, "no token from %s", s[0].name);
		return -1;
	}
	if (u->c) {
		bm_client_set_url(u->c, o.url);
		bm_client_set_token(u->c, tok);
		rc = bm_client_reconnect(u->c, err, cap);
	} else {
		rc = bm_client_connect(&u->c, &o, err, cap);
	}
	free(tok);
	if (!rc) {
		u->sig = sig;
		u->down = 0;
	}
	return rc;
}

static void dial(struct user *u, int sig, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	char err[256];

	while (dial_once(u, sig, err, sizeof(err))) {
		if (bm_mono_ms() > deadline)
			fail_msg("connect %s through %s: %s", u->eid, g[sig].name, err);
		poll(NULL, 0, 100);
	}
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
	if (!a->down)
		bm_client_send_text(a->c, users[msgs[i].to].eid, text, local);
}

static int new_msg(int from, int to)
{
	int i = n_msgs++;

	assert_true(i < MAX_MSGS);
	msgs[i].from = from;
	msgs[i].to = to;
	msgs[i].cut = users[from].owner == CUT || users[to].owner == CUT ||
		      chat_owner[from][to] == CUT;
	send_msg(i);
	msgs[i].first_ms = msgs[i].sent_ms;
	return i;
}

static void on_stanza(int k, const bimip_MessageScheme *m)
{
	if (m->which_payload == bimip_MessageScheme_version_update_tag) {
		const bimip_VersionUpdate *v = &m->payload.version_update;
		int i = find_local(v->message_id_local);

		if (i < 0 || msgs[i].from != k)
			fail_msg("%s: VersionUpdate for unknown '%s'", users[k].eid,
				 v->message_id_local);
		if (msgs[i].confirmed && strcmp(msgs[i].message_id, v->message_id))
			fail_msg("message %d confirmed as %s and as %s", i, msgs[i].message_id,
				 v->message_id);
		if (!msgs[i].confirmed)
			msgs[i].confirmed_ms = (int64_t)bm_mono_ms();
		msgs[i].confirmed = 1;
		snprintf(msgs[i].message_id, sizeof(msgs[i].message_id), "%s", v->message_id);
	} else if (m->which_payload == bimip_MessageScheme_chat_message_tag) {
		const bimip_ChatMessage *c = &m->payload.chat_message;
		int i = find_local(c->message_id_local);

		if (strcmp(c->author, "receiver"))
			return;
		if (i < 0 || msgs[i].to != k)
			fail_msg("%s got a message it was not sent: '%s'", users[k].eid,
				 c->message_id_local);
		if (++msgs[i].received > 1)
			fail_msg("message %d (%s) delivered twice to %s", i, c->message_id,
				 users[k].eid);
		snprintf(msgs[i].recv_id, sizeof(msgs[i].recv_id), "%s", c->message_id);
	}
}

/* Read whatever arrived on every client; a closed one tries again through
 * either signal every 300 ms without holding up the others; resend what is
 * unconfirmed after 2 s (the server skips a resend it has). */
static void pump(int ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	bimip_MessageScheme m;
	char err[256];

	do {
		for (int k = 0; k < USERS; k++) {
			struct user *u = &users[k];
			int rc = BM_ECLOSED;

			if (u->down) {
				if (bm_mono_ms() < u->retry_ms)
					continue;
				if (dial_once(u, u->sig, err, sizeof(err))) {
					u->retry_ms = bm_mono_ms() + 300;
					continue;
				}
				reconnects++;
			}
			while ((rc = bm_client_recv(u->c, &m, 0)) == 0)
				on_stanza(k, &m);
			if (rc == BM_ECLOSED || rc == BM_EIO) {
				u->down = 1;
				u->retry_ms = 0;
			}
		}
		for (int i = 0; i < n_msgs; i++)
			if (!msgs[i].confirmed && (int64_t)bm_mono_ms() - msgs[i].sent_ms > 2000)
				send_msg(i);
		poll(NULL, 0, 2);
	} while (bm_mono_ms() < deadline);
}

static int done(const struct msg *x)
{
	return x->confirmed && x->received == 1;
}

/* Pump until every message from first on (with cut == which, or any when
 * which < 0) is confirmed and received once; fail after ms. */
static void settle(int first, int which, int ms, const char *what)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;
	int missing, total;

	for (;;) {
		pump(20);
		missing = total = 0;
		for (int i = first; i < n_msgs; i++)
			if (which < 0 || msgs[i].cut == which) {
				total++;
				missing += !done(&msgs[i]);
			}
		if (!missing)
			break;
		if (bm_mono_ms() > deadline) {
			for (int i = first; i < n_msgs; i++)
				if ((which < 0 || msgs[i].cut == which) && !done(&msgs[i]))
					print_message("  message %d %s -> %s: confirmed %d, "
						      "received %d (%s)\n", i,
						      users[msgs[i].from].eid,
						      users[msgs[i].to].eid, msgs[i].confirmed,
						      msgs[i].received, msgs[i].message_id);
			fail_msg("%s: %d of %d messages not confirmed and delivered once", what,
				 missing, total);
		}
	}
	/* Once by message_id: what arrived is what the sender was told. */
	for (int i = first; i < n_msgs; i++)
		if ((which < 0 || msgs[i].cut == which) &&
		    strcmp(msgs[i].message_id, msgs[i].recv_id))
			fail_msg("message %d confirmed as %s, delivered as %s", i,
				 msgs[i].message_id, msgs[i].recv_id);
}

/* --- tests --------------------------------------------------------------------- */

static void test_chat_over_veth(void **state)
{
	int cut = 0;

	if (ns_create()) {
		print_message("skipped: network namespaces not available (%s)\n", why);
		skip();
	}
	ns_ok = 1;
	print_message("namespace %s: %s (%s) <-> %s (%s)\n", ns, veth_h, ip_h, veth_n, ip_n);
	start_cluster();
	pick_users();
	for (int k = 0; k < USERS; k++)
		dial(&users[k], k % 2, 20000);
	for (int a = 0; a < USERS; a++)
		for (int b = 0; b < USERS; b++)
			if (a != b)
				cut += msgs[new_msg(a, b)].cut;
	settle(0, -1, 30000, "all pairs over veth");
	print_message("%d messages across 3 owners (one in %s) confirmed and delivered once; "
		      "%d of them need %s\n", n_msgs, ns, cut, s[CUT].name);
	/* Both kinds exist, or the partition would show nothing. */
	assert_true(cut > 0 && cut < n_msgs);
}

/* The slowest confirmation (from the first send) among messages from first
 * on with cut == which. */
static int64_t slowest(int first, int which)
{
	int64_t w = 0;

	for (int i = first; i < n_msgs; i++)
		if (msgs[i].cut == which && msgs[i].confirmed &&
		    msgs[i].confirmed_ms - msgs[i].first_ms > w)
			w = msgs[i].confirmed_ms - msgs[i].first_ms;
	return w;
}

static int64_t t_cut, t_heal;
static int first_cut;

static void test_partition_link_down(void **state)
{
	int held = 0, reachable = 0, confirmed_cut = 0, before = reconnects;
	int64_t suspect_ms = -1, dead_ms = -1;
	char st[32];

	if (!ns_ok)
		skip();
	link_set("down");
	t_cut = (int64_t)bm_mono_ms();
	first_cut = n_msgs;
	/* Traffic from everyone to everyone until gossip has declared the
	 * server dead, and for at least 3 s (resends happen too). */
	for (int round = 0;; round++) {
		int64_t now;

		for (int a = 0; a < USERS; a++)
			new_msg(a, (a + 1 + round % (USERS - 1)) % USERS);
		pump(100);
		now = (int64_t)bm_mono_ms();
		if (bm_h_member(&s[0], s[CUT].name, st, sizeof(st), NULL, 0))
			fail_msg("%s does not answer during the partition", s[0].name);
		if (suspect_ms < 0 && (!strcmp(st, "suspect") || !strcmp(st, "dead")))
			suspect_ms = now - t_cut;
		if (dead_ms < 0 && !strcmp(st, "dead"))
			dead_ms = now - t_cut;
		if (dead_ms >= 0 && now - t_cut >= 3000)
			break;
		if (now - t_cut > 20000)
			fail_msg("%s still '%s' in the view of %s 20 s after the cut",
				 s[CUT].name, st, s[0].name);
	}
	/* Everything that does not need the cut-off server goes through. */
	settle(first_cut, 0, 15000, "reachable chats during the partition");
	pump(300);
	for (int i = first_cut; i < n_msgs; i++) {
		reachable += !msgs[i].cut;
		held += msgs[i].cut && !msgs[i].confirmed;
		confirmed_cut += msgs[i].cut && msgs[i].confirmed;
	}
	print_message("partition (%s down): %s suspect after %lld ms, dead after %lld ms in "
		      "the view of %s; %d messages among the reachable owners confirmed and "
		      "delivered once (slowest %lld ms), %d that need %s held (none "
		      "confirmed); %d sessions reconnected\n", veth_h, s[CUT].name,
		      (long long)suspect_ms, (long long)dead_ms, s[0].name, reachable,
		      (long long)slowest(first_cut, 0), held, s[CUT].name, reconnects - before);
	assert_true(reachable > 0);
	assert_true(held > 0);
	/* Nothing that needs it can be confirmed while it is out of reach, and
	 * nothing held has reached its receiver. */
	assert_int_equal(confirmed_cut, 0);
	for (int i = first_cut; i < n_msgs; i++)
		if (msgs[i].cut)
			assert_int_equal(msgs[i].received, 0);
	/* The reachable servers stay alive for each other. */
	if (bm_h_member(&s[0], s[1].name, st, sizeof(st), NULL, 0) || strcmp(st, "alive"))
		fail_msg("%s is '%s' in the view of %s during the partition", s[1].name, st,
			 s[0].name);
}

static void test_heal(void **state)
{
	int64_t alive_ms = -1, back_ms = -1, all_ms = -1, first_ms = INT64_MAX;
	int first, held = 0;
	char st[32], st2[32] = "";

	if (!ns_ok)
		skip();
	for (int i = 0; i < n_msgs; i++)
		held += !msgs[i].confirmed;
	link_set("up");
	t_heal = (int64_t)bm_mono_ms();
	/* Every message, held or not, confirmed and delivered exactly once; the
	 * cut-off server alive again for n-s0, and n-s0 for it. */
	{
		uint64_t deadline = bm_mono_ms() + 30000;

		for (;;) {
			int missing = 0;
			int64_t now;

			pump(20);
			now = (int64_t)bm_mono_ms();
			if (alive_ms < 0 && !bm_h_member(&s[0], s[CUT].name, st, sizeof(st), NULL, 0) &&
			    !strcmp(st, "alive"))
				alive_ms = now - t_heal;
			if (back_ms < 0 && !bm_h_member(&s[CUT], s[0].name, st2, sizeof(st2), NULL, 0) &&
			    !strcmp(st2, "alive"))
				back_ms = now - t_heal;
			for (int i = 0; i < n_msgs; i++)
				missing += !done(&msgs[i]);
			if (!missing && all_ms < 0)
				all_ms = now - t_heal;
			if (all_ms >= 0 && alive_ms >= 0 && back_ms >= 0)
				break;
			if (bm_mono_ms() > deadline)
				break;
		}
	}
	settle(0, -1, 1000, "after the link is up again");
	if (alive_ms < 0 || back_ms < 0)
		fail_msg("30 s after the heal %s is '%s' for %s, which is '%s' for it",
			 s[CUT].name, st, s[0].name, st2);
	wait_servers_up(3, 20000);
	for (int i = first_cut; i < n_msgs; i++)
		if (msgs[i].cut && msgs[i].confirmed_ms - t_heal < first_ms)
			first_ms = msgs[i].confirmed_ms - t_heal;
	print_message("healed after %lld ms down: %s alive again for %s after %lld ms, %s "
		      "for it after %lld ms; the first held message confirmed after %lld ms, "
		      "all %d messages (%d held) confirmed and delivered once after %lld ms "
		      "(slowest held message %lld ms from its first send)\n",
		      (long long)(t_heal - t_cut), s[CUT].name, s[0].name, (long long)alive_ms,
		      s[0].name, (long long)back_ms, (long long)first_ms, n_msgs, held,
		      (long long)all_ms,
		      (long long)slowest(first_cut, 1));
	/* Chat goes on across all three owners. */
	first = n_msgs;
	for (int a = 0; a < USERS; a++)
		new_msg(a, (a + 2) % USERS);
	settle(first, -1, 30000, "after the heal");

	for (int k = 0; k < USERS; k++)
		bm_client_close(users[k].c);
	for (int i = 0; i < 2; i++)
		assert_int_equal(bm_h_stop(&g[i], SIGTERM), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(bm_h_stop(&s[i], SIGTERM), 0);
	assert_int_equal(bm_h_check_logs(), 0);
	ns_remove();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_chat_over_veth),
		cmocka_unit_test(test_partition_link_down),
		cmocka_unit_test(test_heal),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
