/*
 * soak.c - chat load on a real cluster while its nodes are killed, then a
 * check that nothing acknowledged was lost or delivered twice.
 *
 * Cluster: SOAK_SERVERS bimip-server and two bimip-signal processes from
 * $BIMIP_BIN, on loopback, gossiping (200 ms period) through the first
 * server; the signals have no "servers" list and find the servers by
 * gossip.  After the first start every node's configuration is pinned to
 * the addresses it bound (ws, admin, gossip; the harness pins ZeroMQ) with
 * every other node as a gossip seed, so a restarted node comes back where
 * its peers and the clients look for it.
 *
 * Users u0..u<N-1>@soak, two devices each (d0, d1), one on each signal when
 * both are up.  Every device sends text chat to random other users, at most
 * SOAK_WINDOW unacknowledged at a time, SOAK_RATE messages per second in
 * all.  message_id_local is "m<i>", i the message's index here, unique in
 * the run.  A message is *acknowledged* when its sending device gets the
 * server's VersionUpdate for it; until then the device resends it with the
 * same message_id_local after every reconnect and after SOAK_RESEND_MS
 * without an answer, as a real client does.  Every ChatMessage a device
 * receives is recorded by its message_id_local, and its message_id, text,
 * and receiver are checked against what was sent and acknowledged.
 * Reconnects, as a mobile client behind a load balancer does them: a device
 * whose connection ends (close 4004 "reconnect to the owner", a dead signal,
 * ...) or whose attempt fails (refused, 503 at the upgrade) tries again
 * through either signal -- a random one after a drop, the other one after a
 * failed attempt -- after a jittered exponential back-off: attempt k waits
 * [b/2, b], b = 50 ms * 2^k, at most SOAK_BACKOFF_MS; the count restarts
 * once a server answers on a connection.  Every SOAK_CHURN_MS one device
 * drops its connection (no close frame) and reconnects to its own signal at
 * once, which also brings devices back after a signal restart.  Close
 * codes, failed attempts by cause and back-offs are counted and printed.
 * The client library drops stanzas at or below the last offset it handed
 * out, and commits every 64.
 *
 * Killer (a thread): every SOAK_KILL_EVERY_MS it SIGKILLs a server or a
 * signal (alternately; which one by SOAK_SEED), keeps it down 0..SOAK_DOWN_MS,
 * restarts it on the same data directory and ports and waits for readiness:
 * the ready file, then every signal seeing every server up (and a
 * restarted signal's /readyz).  One node is down at a time.  A node found
 * dead that was not killed is a failure (and is restarted).
 *
 * End: the load stops and the killer finishes its restart; then, each phase
 * bounded by SOAK_DRAIN_MS:
 *   settle  every device connected, every message acknowledged (resends go
 *           on; what stays unanswered is counted, not a failure);
 *   live    wait until live delivery has brought every acknowledged message
 *           to every device of its receiver (or nothing new came for 5 s);
 *   sync    each device sends SyncRequests from its last offset until the
 *           answer says it reached the stream head.  A copy that first
 *           arrived here is "late": live delivery should have brought it.
 * Check, for every acknowledged message and every device of its receiver:
 * received exactly once (missing / duplicated), with the acknowledged
 * message_id; the sender's other device got the sender copy once; no two
 * messages share a message_id; every daemon exits 0 on SIGTERM; no log
 * shows a sanitizer report.  The figures are printed one per line.
 */
#include "soak.h"

#include "bimip_client.h"
#include "bm_err.h"
#include "bm_harness.h"
#include "bm_time.h"

#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLUSTER_KEY "soak-cluster-key"
#define MAX_USERS 2000
#define MAX_PRINTED 40          /* failure lines printed; the rest counted */
#define QUIET_MS 5000           /* live phase: give up after this long without news */
#define SETTLE_MS 30000         /* readiness bound after a start or restart */
#define BACKOFF_MIN_MS 50       /* first reconnect back-off (25..50 ms) */

struct msg {
	int32_t from;           /* sending device: user * 2 + device */
	int32_t to;             /* receiving user */
	uint64_t sent_ms;       /* last (re)send */
	uint16_t sends;
	uint8_t acked;
	uint8_t got[2];         /* receiver copies per receiver device */
	uint8_t late[2];        /* ... that first arrived in the sync phase */
	uint8_t sgot;           /* sender copies at the sender's other device */
	char mid[66];           /* message_id: from the ack or the first copy */
};

struct dev {
	int user, idx;          /* user, device 0/1 */
	int pref;               /* its signal when both are up */
	struct bm_client *c;    /* NULL until the first connection */
	int up;
	int sig;                /* signal of the current (or last) connection */
	int next_sig;           /* signal of the next attempt */
	uint64_t retry_ms;
	int attempt;            /* attempts since the last served connection */
	int inflight;           /* sent, not acknowledged */
	int sync;               /* sync phase: 0 to ask, 1 asked, 2 at the head */
	char *token;
	char err[160];          /* why the last connection attempt failed */
	char eid[32];
	char name[8];
};

enum phase { P_LOAD, P_SETTLE, P_LIVE, P_SYNC, P_DONE };

struct soak {
	struct soak_opts o;
	struct bm_h_node srv[SOAK_MAX_SERVERS];
	struct bm_h_node sig[SOAK_SIGNALS];
	uint64_t t0;

	pthread_mutex_t mu;     /* url[], failure printing */
	char url[SOAK_SIGNALS][128];

	_Atomic int stop;       /* main -> killer: finish the current restart, return */
	_Atomic int abort;      /* killer -> main: the cluster cannot be restored */
	_Atomic int killer_done;
	_Atomic int trials, server_kills, signal_kills, crashed, port_moves;
	_Atomic int failures, printed;

	struct dev *devs;
	int ndev;
	struct msg *msgs;
	int64_t nmsg, cap, first_pending;
	enum phase phase;
	unsigned rnd;

	struct {                /* why connections ended: close code and reason */
		int code;
		char reason[64];
		int64_t n;
	} closes[24];
	int ncloses;

	/* figures */
	int64_t resends, connects, drops, connect_fails, churns, errors, undecodable;
	int64_t unknown, last_delivery_ms;
	int64_t sig_connects[SOAK_SIGNALS];
	int64_t fail_kind[5];   /* failed attempts by kind (fail_kinds) */
	int64_t backoffs, backoff_total_ms;
	int backoff_max_ms;
	int64_t err_codes[4];   /* ErrorMessage: 503, 500, 4xx, other */
	int64_t acked_load;     /* acknowledged when the load stopped */
	uint64_t load_ms;       /* length of the load phase */
};

static void fail(struct soak *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct soak *s, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&s->failures, 1);
	if (atomic_fetch_add(&s->printed, 1) >= MAX_PRINTED)
		return;
	pthread_mutex_lock(&s->mu);
	fprintf(stderr, "soak: +%.1fs FAIL: ", (double)(bm_mono_ms() - s->t0) / 1000.0);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&s->mu);
}

static void note(struct soak *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct soak *s, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&s->mu);
	printf("soak: +%.1fs ", (double)(bm_mono_ms() - s->t0) / 1000.0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&s->mu);
}

/* --- options --------------------------------------------------------------------- */

static int env_int(const char *name, int *v, long lo, long hi)
{
	const char *e = getenv(name);
	char *end;
	long x;

	if (!e || !*e)
		return 0;
	x = strtol(e, &end, 10);
	if (*end || x < lo || x > hi) {
		fprintf(stderr, "soak: %s='%s' is not an integer in [%ld, %ld]\n", name, e, lo, hi);
		return -1;
	}
	*v = (int)x;
	return 0;
}

int soak_opts_env(struct soak_opts *o)
{
	int seed = -1, rc = 0;

	rc |= env_int("SOAK_SECONDS", &o->seconds, 1, 7 * 86400);
	rc |= env_int("SOAK_USERS", &o->users, 2, MAX_USERS);
	rc |= env_int("SOAK_SERVERS", &o->servers, 1, SOAK_MAX_SERVERS);
	rc |= env_int("SOAK_RATE", &o->rate, 1, 100000);
	rc |= env_int("SOAK_WINDOW", &o->window, 1, 1000);
	rc |= env_int("SOAK_KILL_EVERY_MS", &o->kill_every_ms, 0, 86400000);
	rc |= env_int("SOAK_DOWN_MS", &o->down_ms, 0, 600000);
	rc |= env_int("SOAK_RESEND_MS", &o->resend_ms, 10, 600000);
	rc |= env_int("SOAK_CHURN_MS", &o->churn_ms, 0, 86400000);
	rc |= env_int("SOAK_DRAIN_MS", &o->drain_ms, 1000, 3600000);
	rc |= env_int("SOAK_SNAPSHOT_EVERY", &o->snapshot_every, 100, 100000000);
	rc |= env_int("SOAK_BACKOFF_MS", &o->backoff_ms, BACKOFF_MIN_MS, 600000);
	rc |= env_int("SOAK_SEED", &seed, 0, 2147483647);
	if (seed >= 0)
		o->seed = (unsigned)seed;
	return rc ? -1 : 0;
}

/* --- cluster ---------------------------------------------------------------------- */

static struct bm_h_node *node_at(struct soak *s, int i)
{
	return i < s->o.servers ? &s->srv[i] : &s->sig[i - s->o.servers];
}

static int n_nodes(const struct soak *s)
{
	return s->o.servers + SOAK_SIGNALS;
}

static void publish_urls(struct soak *s)
{
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < SOAK_SIGNALS; i++) {
		/* memcpy: GCC's -Wrestrict sees one struct behind both snprintf
		 * arguments. */
		size_t n = strnlen(s->sig[i].url, sizeof(s->url[i]) - 1);
		memcpy(s->url[i], s->sig[i].url, n);
		s->url[i][n] = 0;
	}
	pthread_mutex_unlock(&s->mu);
}

/* Rewrite n's config so a restart binds the addresses it has now, and joins
 * the gossip through every other node (whichever is up). */
static int pin_config(struct soak *s, struct bm_h_node *n)
{
	json_t *cfg = json_load_file(n->cfg, 0, NULL), *seeds = json_array();
	json_t *listen = cfg ? json_object_get(cfg, "listen") : NULL;
	json_t *cluster = cfg ? json_object_get(cfg, "cluster") : NULL;
	int rc = -1;

	if (!listen || !cluster)
		goto out;
	for (int i = 0; i < n_nodes(s); i++)
		if (node_at(s, i) != n)
			json_array_append_new(seeds, json_string(node_at(s, i)->gossip));
	json_object_set_new(listen, "admin", json_string(n->admin));
	if (!n->server)
		json_object_set_new(listen, "ws", json_string(n->ws));
	json_object_set_new(cluster, "bind", json_string(n->gossip));
	json_object_set(cluster, "seeds", seeds);
	rc = json_dump_file(cfg, n->cfg, JSON_INDENT(2));
out:
	json_decref(seeds);
	json_decref(cfg);
	return rc;
}

static int left_ms(uint64_t deadline)
{
	uint64_t now = bm_mono_ms();

	return now >= deadline ? 0 : (int)(deadline - now);
}

/* Signals a server has heard from since it started, per its /v1/status. */
static int signals_known(const struct bm_h_node *n)
{
	static _Thread_local char out[8192];
	json_t *st;
	int k;

	if (bm_h_http(n->admin, "GET", "/v1/status", BM_H_ADMIN_KEY, NULL, out, sizeof(out)) != 200)
		return -1;
	st = json_loads(out, 0, NULL);
	k = (int)json_integer_value(json_object_get(st, "signals"));
	json_decref(st);
	return k;
}

/* Readiness of the whole cluster: every server has heard from every signal
 * (so a restarted one has its sessions back), every signal is ready and
 * has every server up. */
static int wait_cluster(struct soak *s, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;

	for (int i = 0; i < s->o.servers; i++)
		while (signals_known(&s->srv[i]) < SOAK_SIGNALS) {
			if (bm_mono_ms() > deadline) {
				fail(s, "%s knows %d of %d signals after %d ms", s->srv[i].name,
				     signals_known(&s->srv[i]), SOAK_SIGNALS, timeout_ms);
				return -1;
			}
			poll(NULL, 0, 20);
		}
	for (int i = 0; i < SOAK_SIGNALS; i++) {
		while (bm_h_servers_up(&s->sig[i]) < s->o.servers) {
			if (bm_mono_ms() > deadline) {
				fail(s, "%s sees %d of %d servers up after %d ms", s->sig[i].name,
				     bm_h_servers_up(&s->sig[i]), s->o.servers, timeout_ms);
				return -1;
			}
			poll(NULL, 0, 20);
		}
		if (bm_h_wait_readyz(&s->sig[i], left_ms(deadline))) {
			fail(s, "%s not ready (/readyz) after %d ms", s->sig[i].name, timeout_ms);
			return -1;
		}
	}
	return 0;
}

static int start_cluster(struct soak *s)
{
	char extra[1024], name[32], seed[200], log[64] = "";
	const char *level = getenv("SOAK_LOG_LEVEL");

	/* SOAK_LOG_LEVEL=debug: every node logs its debug lines too (the
	 * server's dropped answers, the signal's routing), to find a cause. */
	if (level && *level)
		snprintf(log, sizeof(log), ",\"log\":{\"level\":\"%.20s\"}", level);

	for (int i = 0; i < s->o.servers; i++) {
		snprintf(seed, sizeof(seed), i ? ",\"seeds\":[\"%s\"]" : "", s->srv[0].gossip);
		snprintf(extra, sizeof(extra),
			 "{\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\",\"period\":\"200ms\"%s},"
			 "\"state\":{\"snapshot_every\":%d,\"snapshot_interval\":\"0s\"}%s}",
			 CLUSTER_KEY, seed, s->o.snapshot_every, log);
		snprintf(name, sizeof(name), "soak-s%d", i);
		if (bm_h_start_server(&s->srv[i], name, extra))
			return -1;
	}
	for (int i = 0; i < SOAK_SIGNALS; i++) {
		snprintf(extra, sizeof(extra),
			 "{\"servers\":[],\"cluster\":{\"bind\":\"127.0.0.1:0\",\"key\":\"%s\","
			 "\"period\":\"200ms\",\"seeds\":[\"%s\"]},"
			 "\"limits\":{\"rate\":100000,\"burst\":100000}%s}", CLUSTER_KEY,
			 s->srv[0].gossip, log);
		snprintf(name, sizeof(name), "soak-g%d", i);
		if (bm_h_start_signal(&s->sig[i], name, NULL, 0, extra))
			return -1;
	}
	for (int i = 0; i < n_nodes(s); i++)
		if (pin_config(s, node_at(s, i))) {
			fail(s, "cannot rewrite the config of %s", node_at(s, i)->name);
			return -1;
		}
	publish_urls(s);
	return wait_cluster(s, SETTLE_MS);
}

/* Restart n where it was.  If one of its TCP ports was taken while it was
 * down (another process's ephemeral port), let it bind new ws/admin ports. */
static int restart_node(struct soak *s, struct bm_h_node *n)
{
	json_t *cfg;

	if (bm_h_restart(n) == 0)
		goto out;
	cfg = json_load_file(n->cfg, 0, NULL);
	if (!cfg)
		return -1;
	json_object_set_new(json_object_get(cfg, "listen"), "admin", json_string("127.0.0.1:0"));
	if (!n->server)
		json_object_set_new(json_object_get(cfg, "listen"), "ws", json_string("127.0.0.1:0"));
	json_dump_file(cfg, n->cfg, JSON_INDENT(2));
	json_decref(cfg);
	if (bm_h_restart(n)) {
		fail(s, "%s does not start again (log %s)", n->name, n->log);
		return -1;
	}
	atomic_fetch_add(&s->port_moves, 1);
	note(s, "%s came back on other ports (admin %s%s%s)", n->name, n->admin,
	     n->server ? "" : ", ws ", n->server ? "" : n->ws);
	if (pin_config(s, n))
		return -1;
out:
	if (!n->server)
		publish_urls(s);
	return 0;
}

/* 1 when the process is a zombie: it died and nobody reaped it yet. */
static int is_dead(pid_t pid)
{
	char path[64], buf[256], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return 1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'Z';
}

/* A node that died without being killed is a failure; bring it back. */
static int reap_crashed(struct soak *s)
{
	for (int i = 0; i < n_nodes(s); i++) {
		struct bm_h_node *n = node_at(s, i);
		int st;
		if (n->pid <= 0 || !is_dead(n->pid))
			continue;
		st = bm_h_stop(n, SIGKILL);
		atomic_fetch_add(&s->crashed, 1);
		fail(s, "%s exited on its own (status %d; log %s)", n->name, st, n->log);
		if (restart_node(s, n) || wait_cluster(s, SETTLE_MS))
			return -1;
	}
	return 0;
}

static int kill_restart(struct soak *s, struct bm_h_node *n, int down_ms)
{
	uint64_t t0 = bm_mono_ms();
	int st = bm_h_stop(n, SIGKILL);

	if (st != 128 + SIGKILL) {
		atomic_fetch_add(&s->crashed, 1);
		fail(s, "%s had exited on its own before the kill (status %d; log %s)", n->name,
		     st, n->log);
	}
	atomic_fetch_add(&s->trials, 1);
	atomic_fetch_add(n->server ? &s->server_kills : &s->signal_kills, 1);
	note(s, "kill -9 %s, down %d ms", n->name, down_ms);
	/* The downtime itself is the point here, not a guess at readiness. */
	while (bm_mono_ms() < t0 + (uint64_t)down_ms)
		poll(NULL, 0, 10);
	if (restart_node(s, n) || wait_cluster(s, SETTLE_MS))
		return -1;
	note(s, "%s back after %llu ms", n->name, (unsigned long long)(bm_mono_ms() - t0));
	return 0;
}

static void *killer_main(void *arg)
{
	struct soak *s = arg;
	unsigned seed = s->o.seed * 2654435761u + 12345u;
	int server_next = s->o.first_kill_server ? 1 : (int)(rand_r(&seed) & 1);
	uint64_t next = bm_mono_ms() + (uint64_t)s->o.kill_every_ms;

	while (!atomic_load(&s->stop)) {
		struct bm_h_node *victim;
		int down;
		if (reap_crashed(s))
			break;
		if (!s->o.kill_every_ms || bm_mono_ms() < next) {
			poll(NULL, 0, 20);
			continue;
		}
		victim = server_next ? &s->srv[rand_r(&seed) % (unsigned)s->o.servers]
				     : &s->sig[rand_r(&seed) % SOAK_SIGNALS];
		server_next ^= 1;
		down = s->o.down_ms ? (int)(rand_r(&seed) % (unsigned)(s->o.down_ms + 1)) : 0;
		next = bm_mono_ms() + (uint64_t)s->o.kill_every_ms;
		if (kill_restart(s, victim, down))
			goto out_abort;
		/* Some load on the whole cluster before the next kill. */
		if (next < bm_mono_ms() + 500)
			next = bm_mono_ms() + 500;
	}
	if (reap_crashed(s))
		goto out_abort;
	atomic_store(&s->killer_done, 1);
	return NULL;
out_abort:
	atomic_store(&s->abort, 1);
	atomic_store(&s->killer_done, 1);
	return NULL;
}

/* --- messages ----------------------------------------------------------------------- */

static int64_t local_index(const struct soak *s, const char *local)
{
	char *end;
	long long i;

	if (local[0] != 'm')
		return -1;
	i = strtoll(local + 1, &end, 10);
	return *end || i < 0 || i >= s->nmsg ? -1 : (int64_t)i;
}

static void msg_text(const struct soak *s, int64_t i, char *buf, size_t cap)
{
	const struct msg *m = &s->msgs[i];

	snprintf(buf, cap, "soak %lld from u%d/d%d to u%d", (long long)i, m->from / 2,
		 m->from % 2, m->to);
}

/* When d tries again: exponential back-off with jitter, as a mobile client
 * does, so a cluster that refuses sessions for a while (503, or 4004 while
 * an owner settles) is not hammered: attempt k waits a random time in
 * [b/2, b], b = BACKOFF_MIN_MS * 2^k up to SOAK_BACKOFF_MS.  The count goes
 * back to 0 once a connection is served (a stanza a server answered), so
 * a connection that served and then died is retried within 50 ms. */
static void backoff(struct soak *s, struct dev *d, uint64_t now)
{
	int b = BACKOFF_MIN_MS;

	for (int k = 0; k < d->attempt && b < s->o.backoff_ms; k++)
		b *= 2;
	if (b > s->o.backoff_ms)
		b = s->o.backoff_ms;
	b = b / 2 + (int)(rand_r(&s->rnd) % (unsigned)(b / 2 + 1));
	if (d->attempt < 30)
		d->attempt++;
	d->retry_ms = now + (uint64_t)b;
	s->backoffs++;
	s->backoff_total_ms += b;
	if (b > s->backoff_max_ms)
		s->backoff_max_ms = b;
}

/* The connection is gone (closed by the other side, a send failed): try
 * again through either signal, after a back-off. */
static void dev_down(struct soak *s, struct dev *d, uint64_t now)
{
	if (!d->up)
		return;
	d->up = 0;
	d->next_sig = (int)(rand_r(&s->rnd) % SOAK_SIGNALS);
	backoff(s, d, now);
	if (d->sync == 1)
		d->sync = 0;
	s->drops++;
}

static void dev_send(struct soak *s, struct dev *d, int64_t i, uint64_t now)
{
	struct msg *m = &s->msgs[i];
	char local[24], text[96], to[32];

	snprintf(local, sizeof(local), "m%lld", (long long)i);
	snprintf(to, sizeof(to), "u%d@soak", m->to);
	msg_text(s, i, text, sizeof(text));
	m->sent_ms = now;
	if (m->sends++)
		s->resends++;
	if (bm_client_send_text(d->c, to, text, local))
		dev_down(s, d, now);
}

/* Everything d sent that is not acknowledged, again (same message_id_local). */
static void resend_all(struct soak *s, struct dev *d, uint64_t now)
{
	int32_t me = d->user * 2 + d->idx;

	for (int64_t i = s->first_pending; i < s->nmsg && d->up; i++)
		if (!s->msgs[i].acked && s->msgs[i].from == me)
			dev_send(s, d, i, now);
}

static const char *const fail_kinds[] = { "refused", "503", "closed during the upgrade",
					  "timed out", "other" };

/* Why connection attempts fail, by kind. */
static void count_fail(struct soak *s, const char *err)
{
	int k;

	if (strstr(err, "Connection refused"))
		k = 0;
	else if (strstr(err, "503"))
		k = 1;
	else if (strstr(err, "closed the connection during the upgrade"))
		k = 2;
	else if (strstr(err, "timed out") || strstr(err, "no answer"))
		k = 3;
	else
		k = 4;
	s->fail_kind[k]++;
}

static void dev_connect(struct soak *s, struct dev *d, uint64_t now)
{
	char url[128], err[256] = "";
	int rc;

	pthread_mutex_lock(&s->mu);
	snprintf(url, sizeof(url), "%s", s->url[d->next_sig]);
	pthread_mutex_unlock(&s->mu);
	if (!d->c) {
		struct bm_client_opts o = { .url = url, .token = d->token, .timeout_ms = 3000 };
		rc = bm_client_connect(&d->c, &o, err, sizeof(err));
	} else {
		rc = bm_client_set_url(d->c, url);
		if (!rc)
			rc = bm_client_reconnect(d->c, err, sizeof(err));
	}
	if (rc) {
		snprintf(d->err, sizeof(d->err), "%.60s: %.90s", url, err);
		if (s->connect_fails++ < 5)
			note(s, "%s/%s cannot connect to %s", d->eid, d->name, d->err);
		count_fail(s, err);
		/* The other signal next: a load balancer routes around a dead one. */
		d->next_sig = (d->next_sig + 1) % SOAK_SIGNALS;
		backoff(s, d, now);
		return;
	}
	d->up = 1;
	d->sig = d->next_sig;
	s->connects++;
	s->sig_connects[d->sig]++;
	resend_all(s, d, now);
}

static int64_t new_msg(struct soak *s, struct dev *d)
{
	struct msg *m;

	if (s->nmsg == s->cap) {
		int64_t cap = s->cap ? s->cap * 2 : 4096;
		struct msg *p = realloc(s->msgs, (size_t)cap * sizeof(*p));
		if (!p)
			return -1;
		s->msgs = p;
		s->cap = cap;
	}
	m = &s->msgs[s->nmsg];
	memset(m, 0, sizeof(*m));
	m->from = d->user * 2 + d->idx;
	m->to = (int32_t)(rand_r(&s->rnd) % (unsigned)(s->o.users - 1));
	if (m->to >= d->user)
		m->to++;
	return s->nmsg++;
}

static void on_ack(struct soak *s, struct dev *d, const bimip_VersionUpdate *v)
{
	int64_t i = local_index(s, v->message_id_local);
	struct msg *m;

	if (i < 0) {
		s->unknown++;
		fail(s, "%s/%s: VersionUpdate for unknown message_id_local '%s'", d->eid, d->name,
		     v->message_id_local);
		return;
	}
	m = &s->msgs[i];
	if (m->from != d->user * 2 + d->idx)
		fail(s, "%s/%s: VersionUpdate for m%lld, sent by u%d/d%d", d->eid, d->name,
		     (long long)i, m->from / 2, m->from % 2);
	if (m->mid[0] && strcmp(m->mid, v->message_id))
		fail(s, "m%lld: acknowledged as %s, earlier seen as %s", (long long)i,
		     v->message_id, m->mid);
	if (!m->mid[0])
		snprintf(m->mid, sizeof(m->mid), "%s", v->message_id);
	if (!m->acked) {
		m->acked = 1;
		s->devs[m->from].inflight--;
	}
}

static void on_chat(struct soak *s, struct dev *d, const bimip_ChatMessage *c)
{
	int64_t i = local_index(s, c->message_id_local);
	int receiver = !strcmp(c->author, "receiver");
	char text[96];
	struct msg *m;

	if (i < 0) {
		s->unknown++;
		fail(s, "%s/%s: ChatMessage %s with unknown message_id_local '%s'", d->eid,
		     d->name, c->message_id, c->message_id_local);
		return;
	}
	m = &s->msgs[i];
	msg_text(s, i, text, sizeof(text));
	if (c->which_payload != bimip_ChatMessage_text_tag || strcmp(c->payload.text, text))
		fail(s, "%s/%s: m%lld arrived with other content", d->eid, d->name, (long long)i);
	if (m->mid[0] && strcmp(m->mid, c->message_id))
		fail(s, "%s/%s: m%lld arrived as %s, acknowledged or seen as %s", d->eid, d->name,
		     (long long)i, c->message_id, m->mid);
	if (!m->mid[0])
		snprintf(m->mid, sizeof(m->mid), "%s", c->message_id);
	if (receiver) {
		if (m->to != d->user) {
			fail(s, "%s/%s: got m%lld meant for u%d", d->eid, d->name, (long long)i,
			     m->to);
			return;
		}
		if (m->got[d->idx] < 255)
			m->got[d->idx]++;
		if (m->got[d->idx] == 1 && s->phase == P_SYNC)
			m->late[d->idx] = 1;
		if (m->got[d->idx] == 2)
			fail(s, "%s/%s: m%lld (%s) delivered twice", d->eid, d->name, (long long)i,
			     c->message_id);
		s->last_delivery_ms = (int64_t)bm_mono_ms();
		return;
	}
	/* A sender copy: the sender's other device; the sending device itself
	 * sees it only from a sync (it got the VersionUpdate live). */
	if (m->from / 2 != d->user)
		fail(s, "%s/%s: sender copy of m%lld, sent by u%d", d->eid, d->name, (long long)i,
		     m->from / 2);
	else if (m->from % 2 != d->idx && m->sgot < 255 && ++m->sgot == 2)
		fail(s, "%s/%s: sender copy of m%lld (%s) delivered twice", d->eid, d->name,
		     (long long)i, c->message_id);
}

/* A server answered on this connection: it is being served, so the next
 * drop is retried without the back-off built up so far. */
static void served(struct dev *d)
{
	d->attempt = 0;
}

static void on_stanza(struct soak *s, struct dev *d, const bimip_MessageScheme *m)
{
	switch (m->which_payload) {
	case bimip_MessageScheme_version_update_tag:
		served(d);
		on_ack(s, d, &m->payload.version_update);
		break;
	case bimip_MessageScheme_chat_message_tag:
		served(d);
		on_chat(s, d, &m->payload.chat_message);
		break;
	case bimip_MessageScheme_sync_response_tag:
		served(d);
		if (d->sync != 1)
			break;
		if (m->payload.sync_response.more) {
			if (bm_client_sync(d->c, bm_client_last_offset(d->c), 1000))
				dev_down(s, d, bm_mono_ms());
		} else {
			d->sync = 2;
		}
		break;
	case bimip_MessageScheme_error_message_tag: {
		int code = (int)m->payload.error_message.code;
		/* 503 while a server is away, for instance: the resend covers it. */
		s->err_codes[code == 503 ? 0 : code == 500 ? 1 : code / 100 == 4 ? 2 : 3]++;
		if (s->errors++ < 5 || s->phase != P_LOAD)
			note(s, "%s/%s: error %d (route %s): %s", d->eid, d->name,
			     (int)m->payload.error_message.code, m->payload.error_message.route,
			     m->payload.error_message.message);
		break;
	}
	default:
		break;
	}
}

/* Why a connection ended: its close code and reason (code 0: no close
 * frame, the reason is the read error). */
static void count_close(struct soak *s, const struct dev *d, int rc)
{
	int code = bm_client_close_code(d->c), i;
	char reason[sizeof(s->closes[0].reason)];

	snprintf(reason, sizeof(reason), "%s",
		 code ? bm_client_close_reason(d->c) : bm_strerror(rc));
	for (i = 0; i < s->ncloses && (s->closes[i].code != code ||
				       strcmp(s->closes[i].reason, reason)); i++)
		;
	if (i == s->ncloses) {
		if (i == (int)(sizeof(s->closes) / sizeof(s->closes[0])))
			return;
		s->ncloses++;
		s->closes[i].code = code;
		memcpy(s->closes[i].reason, reason, sizeof(reason));
	}
	s->closes[i].n++;
}

static void dev_read(struct soak *s, struct dev *d)
{
	static bimip_MessageScheme m;

	for (int k = 0; k < 256 && d->up; k++) {
		int rc = bm_client_recv(d->c, &m, 0);
		if (rc == BM_ETIMEDOUT)
			return;
		if (rc == BM_EDECODE) {
			s->undecodable++;
			continue;
		}
		if (rc) {
			count_close(s, d, rc);
			dev_down(s, d, bm_mono_ms());
			return;
		}
		on_stanza(s, d, &m);
	}
}

/* --- the loop ------------------------------------------------------------------------- */

/* One round: reconnect, send, resend, wait up to 10 ms for input, read. */
static void pump(struct soak *s, double *tokens, uint64_t *last_ms, uint64_t *churn_ms,
		 uint64_t *resend_scan_ms)
{
	static struct pollfd *pfd;
	static int *who;
	uint64_t now = bm_mono_ms();
	int np = 0, timeout = 10;

	if (!pfd) {
		pfd = calloc((size_t)s->ndev, sizeof(*pfd));
		who = calloc((size_t)s->ndev, sizeof(*who));
		if (!pfd || !who) {
			fail(s, "out of memory");
			atomic_store(&s->abort, 1);
			return;
		}
	}
	for (int i = 0; i < s->ndev; i++)
		if (!s->devs[i].up && now >= s->devs[i].retry_ms)
			dev_connect(s, &s->devs[i], now);
	now = bm_mono_ms();
	if (s->phase == P_LOAD && s->o.churn_ms && now >= *churn_ms) {
		struct dev *d = &s->devs[rand_r(&s->rnd) % (unsigned)s->ndev];
		*churn_ms = now + (uint64_t)s->o.churn_ms;
		if (d->up) {
			s->churns++;
			d->up = 0;
			d->next_sig = d->pref;
			dev_connect(s, d, now);
		}
	}
	if (s->phase == P_LOAD) {
		double cap = s->o.rate / 5.0 + 1;
		*tokens += (double)(now - *last_ms) * s->o.rate / 1000.0;
		*last_ms = now;
		if (*tokens > cap)
			*tokens = cap;
		for (int tries = 0; *tokens >= 1 && tries < 4 * s->ndev; tries++) {
			struct dev *d = &s->devs[rand_r(&s->rnd) % (unsigned)s->ndev];
			int64_t i;
			if (!d->up || d->inflight >= s->o.window)
				continue;
			i = new_msg(s, d);
			if (i < 0) {
				fail(s, "out of memory for messages");
				atomic_store(&s->abort, 1);
				return;
			}
			d->inflight++;
			*tokens -= 1;
			dev_send(s, d, i, now);
		}
	}
	if (now >= *resend_scan_ms) {
		*resend_scan_ms = now + 100;
		while (s->first_pending < s->nmsg && s->msgs[s->first_pending].acked)
			s->first_pending++;
		for (int64_t i = s->first_pending; i < s->nmsg; i++) {
			struct msg *m = &s->msgs[i];
			struct dev *d = &s->devs[m->from];
			if (!m->acked && d->up && now >= m->sent_ms + (uint64_t)s->o.resend_ms)
				dev_send(s, d, i, now);
		}
	}
	for (int i = 0; i < s->ndev; i++) {
		struct dev *d = &s->devs[i];
		if (!d->up)
			continue;
		if (bm_client_pending(d->c))
			timeout = 0;
		pfd[np].fd = bm_client_fd(d->c);
		pfd[np].events = POLLIN;
		pfd[np].revents = 0;
		who[np++] = i;
	}
	if (poll(pfd, (nfds_t)np, timeout) == -1)
		return;
	for (int k = 0; k < np; k++) {
		struct dev *d = &s->devs[who[k]];
		if (pfd[k].revents || (d->up && bm_client_pending(d->c)))
			dev_read(s, d);
	}
}

static int all_up(const struct soak *s)
{
	for (int i = 0; i < s->ndev; i++)
		if (!s->devs[i].up)
			return 0;
	return 1;
}

static int64_t pending(const struct soak *s)
{
	int64_t n = 0;

	for (int64_t i = s->first_pending; i < s->nmsg; i++)
		n += !s->msgs[i].acked;
	return n;
}

/* Acknowledged copies not yet at a receiver device. */
static int64_t undelivered(const struct soak *s)
{
	int64_t n = 0;

	for (int64_t i = 0; i < s->nmsg; i++)
		if (s->msgs[i].acked)
			n += !s->msgs[i].got[0] + !s->msgs[i].got[1];
	return n;
}

/* Why a device is behind: its offsets as the library and the server see
 * them (GET /v1/users/<eid>/sessions on every server that has it online). */
static void report_behind(struct soak *s)
{
	static char out[16384];
	int shown = 0;

	for (int i = 0; i < s->ndev && shown < 8; i++) {
		struct dev *d = &s->devs[i];
		int64_t behind = 0;
		char path[96], where[256] = "";
		for (int64_t k = 0; k < s->nmsg; k++)
			behind += s->msgs[k].acked && s->msgs[k].to == d->user && !s->msgs[k].got[d->idx];
		if (!behind)
			continue;
		shown++;
		snprintf(path, sizeof(path), "/v1/users/%s/sessions", d->eid);
		for (int j = 0; j < s->o.servers; j++) {
			json_t *r, *e;
			size_t n;
			if (bm_h_http(s->srv[j].admin, "GET", path, BM_H_ADMIN_KEY, NULL, out,
				      sizeof(out)) != 200 || !(r = json_loads(out, 0, NULL)))
				continue;
			json_array_foreach(json_object_get(r, "sessions"), n, e)
				if (!strcmp(json_string_value(json_object_get(e, "device")) ?: "", d->name)) {
					size_t len = strlen(where);
					snprintf(where + len, sizeof(where) - len,
						 " %s: committed %lld sent %lld;", s->srv[j].name,
						 (long long)json_integer_value(json_object_get(e, "committed")),
						 (long long)json_integer_value(json_object_get(e, "sent")));
				}
			json_decref(r);
		}
		note(s, "%s/%s misses %lld copies: library last offset %lld, committed %lld;%s",
		     d->eid, d->name, (long long)behind, (long long)bm_client_last_offset(d->c),
		     (long long)bm_client_committed(d->c), where[0] ? where : " no server session");
	}
}

static void progress(struct soak *s)
{
	note(s, "sent %lld, unacknowledged %lld, reconnects %lld, failed attempts %lld, kills %d",
	     (long long)s->nmsg, (long long)pending(s), (long long)s->connects - s->ndev,
	     (long long)s->connect_fails, atomic_load(&s->trials));
}

static int cmp_mid(const void *a, const void *b)
{
	return strcmp((*(const struct msg *const *)a)->mid, (*(const struct msg *const *)b)->mid);
}

/* Two messages with one message_id: a version handed out twice. */
static void check_unique_ids(struct soak *s)
{
	struct msg **v = malloc((size_t)(s->nmsg ? s->nmsg : 1) * sizeof(*v));
	int64_t n = 0;

	if (!v) {
		fail(s, "out of memory for the id check");
		return;
	}
	for (int64_t i = 0; i < s->nmsg; i++)
		if (s->msgs[i].mid[0])
			v[n++] = &s->msgs[i];
	qsort(v, (size_t)n, sizeof(*v), cmp_mid);
	for (int64_t i = 1; i < n; i++)
		if (!strcmp(v[i - 1]->mid, v[i]->mid))
			fail(s, "message_id %s given to m%lld and m%lld", v[i]->mid,
			     (long long)(v[i - 1] - s->msgs), (long long)(v[i] - s->msgs));
	free(v);
}

static int setup_devices(struct soak *s)
{
	int ttl = s->o.seconds + 4 * s->o.drain_ms / 1000 + 3600;

	s->ndev = s->o.users * 2;
	s->devs = calloc((size_t)s->ndev, sizeof(*s->devs));
	if (!s->devs)
		return -1;
	for (int i = 0; i < s->ndev; i++) {
		struct dev *d = &s->devs[i];
		d->user = i / 2;
		d->idx = i % 2;
		d->pref = (d->user + d->idx) % SOAK_SIGNALS;
		d->next_sig = d->pref;
		snprintf(d->eid, sizeof(d->eid), "u%d@soak", d->user);
		snprintf(d->name, sizeof(d->name), "d%d", d->idx);
		d->token = bm_h_token(&s->srv[0], d->eid, d->name, ttl);
		if (!d->token) {
			fail(s, "no token for %s/%s from %s", d->eid, d->name, s->srv[0].name);
			return -1;
		}
	}
	return 0;
}

static void stop_killer(struct soak *s, pthread_t killer, int *running)
{
	if (!*running)
		return;
	atomic_store(&s->stop, 1);
	pthread_join(killer, NULL);
	*running = 0;
}

int soak_run(const struct soak_opts *o)
{
	static struct soak soak;
	struct soak *s = &soak;
	pthread_t killer;
	int killer_running = 0, rc = 1;
	int64_t missing = 0, dup = 0, delivered = 0, acked = 0, late = 0, smiss = 0;
	uint64_t now, last_ms, churn_ms, scan_ms = 0, deadline, next_note;
	double tokens = 0;

	s->o = *o;
	s->rnd = o->seed;
	pthread_mutex_init(&s->mu, NULL);
	signal(SIGPIPE, SIG_IGN);
	bm_h_init();
	s->t0 = bm_mono_ms();
	printf("soak: seed %u, %d server(s), %d signals, %d users x 2 devices, %d s, "
	       "%d msg/s, window %d, kill every %d ms, down <= %d ms (BIMIP_BIN=%s)\n",
	       o->seed, o->servers, SOAK_SIGNALS, o->users, o->seconds, o->rate, o->window,
	       o->kill_every_ms, o->down_ms, getenv("BIMIP_BIN") ? getenv("BIMIP_BIN") : "build/bin");
	fflush(stdout);
	if (start_cluster(s) || setup_devices(s))
		goto out;
	note(s, "cluster up: signals %s %s; node directories in %s", s->url[0], s->url[1],
	     bm_h_root());

	/* Everyone connected before the load and the kills start. */
	deadline = bm_mono_ms() + SETTLE_MS;
	last_ms = churn_ms = bm_mono_ms();
	s->phase = P_SETTLE;
	while (!all_up(s)) {
		if (bm_mono_ms() > deadline) {
			fail(s, "devices could not connect within %d ms", SETTLE_MS);
			goto out;
		}
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
	}
	s->phase = P_LOAD;
	if (pthread_create(&killer, NULL, killer_main, s)) {
		fail(s, "cannot start the killer thread");
		goto out;
	}
	killer_running = 1;
	now = bm_mono_ms();
	deadline = now + (uint64_t)o->seconds * 1000;
	last_ms = now;
	churn_ms = now + (uint64_t)o->churn_ms;
	next_note = now + 10000;
	while ((now = bm_mono_ms()) < deadline && !atomic_load(&s->abort)) {
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
		if (now >= next_note) {
			next_note = now + 10000;
			progress(s);
		}
	}
	s->load_ms = bm_mono_ms() - (deadline - (uint64_t)o->seconds * 1000);
	s->acked_load = s->nmsg - pending(s);
	note(s, "load stops; waiting for the killer's restart");
	s->phase = P_SETTLE;
	atomic_store(&s->stop, 1);
	while (!atomic_load(&s->killer_done))
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
	stop_killer(s, killer, &killer_running);
	if (atomic_load(&s->abort))
		goto out;
	for (int i = 0; i < n_nodes(s); i++)
		if (node_at(s, i)->pid <= 0) {
			fail(s, "%s is not running at the end", node_at(s, i)->name);
			goto out;
		}

	/* settle: every device connected, everything acknowledged */
	deadline = bm_mono_ms() + (uint64_t)o->drain_ms;
	while ((!all_up(s) || pending(s)) && bm_mono_ms() < deadline)
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
	note(s, "settled: %lld unacknowledged, all devices connected: %s", (long long)pending(s),
	     all_up(s) ? "yes" : "no");
	for (int i = 0; i < s->ndev; i++)
		if (!s->devs[i].up)
			fail(s, "%s/%s cannot connect at the end (%s)", s->devs[i].eid,
			     s->devs[i].name, s->devs[i].err);

	/* live: delivery alone */
	s->phase = P_LIVE;
	s->last_delivery_ms = (int64_t)bm_mono_ms();
	deadline = bm_mono_ms() + (uint64_t)o->drain_ms;
	while (undelivered(s) && bm_mono_ms() < deadline &&
	       (int64_t)bm_mono_ms() - s->last_delivery_ms < QUIET_MS)
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
	note(s, "live delivery done: %lld acknowledged copies not at a receiver device",
	     (long long)undelivered(s));
	if (undelivered(s))
		report_behind(s);

	/* sync: every device up to its stream head */
	s->phase = P_SYNC;
	deadline = bm_mono_ms() + (uint64_t)o->drain_ms;
	for (;;) {
		int done = 1;
		for (int i = 0; i < s->ndev; i++) {
			struct dev *d = &s->devs[i];
			if (d->up && d->sync == 0) {
				d->sync = 1;
				if (bm_client_sync(d->c, bm_client_last_offset(d->c), 1000))
					dev_down(s, d, bm_mono_ms());
			}
			done &= d->sync == 2;
		}
		if (done)
			break;
		if (bm_mono_ms() > deadline) {
			fail(s, "devices did not reach their stream heads within %d ms", o->drain_ms);
			break;
		}
		pump(s, &tokens, &last_ms, &churn_ms, &scan_ms);
	}
	s->phase = P_DONE;
	for (int i = 0; i < s->ndev; i++)
		if (s->devs[i].up)
			bm_client_commit(s->devs[i].c);

	/* the check */
	for (int64_t i = 0; i < s->nmsg; i++) {
		struct msg *m = &s->msgs[i];
		for (int j = 0; j < 2; j++)
			dup += m->got[j] > 1;
		dup += m->sgot > 1;
		if (!m->acked)
			continue;
		acked++;
		smiss += !m->sgot;
		for (int j = 0; j < 2; j++) {
			if (m->got[j]) {
				delivered++;
				late += m->late[j];
				continue;
			}
			if (missing++ < 10)
				fail(s, "m%lld (%s, u%d/d%d -> u%d/d%d, sent %u times) never arrived",
				     (long long)i, m->mid, m->from / 2, m->from % 2, m->to, j, m->sends);
			else
				atomic_fetch_add(&s->failures, 1);
		}
	}
	if (late)
		fail(s, "%lld copies reached their device only through the final sync",
		     (long long)late);
	if (smiss)
		fail(s, "%lld acknowledged messages never reached the sender's other device",
		     (long long)smiss);
	check_unique_ids(s);
	for (int i = 0; i < s->ndev; i++)
		bm_client_close(s->devs[i].c);
	for (int i = n_nodes(s) - 1; i >= 0; i--) {
		struct bm_h_node *n = node_at(s, i);
		int st = bm_h_stop(n, SIGTERM);
		if (st)
			fail(s, "%s exited with status %d on SIGTERM (log %s)", n->name, st, n->log);
	}
	if (bm_h_check_logs())
		fail(s, "a log shows a sanitizer report or a broken invariant");
	rc = 0;
out:
	stop_killer(s, killer, &killer_running);
	printf("trials %d (kill -9: %d server, %d signal)\n", atomic_load(&s->trials),
	       atomic_load(&s->server_kills), atomic_load(&s->signal_kills));
	printf("sent %lld (resends %lld)\n", (long long)s->nmsg, (long long)s->resends);
	printf("acknowledged %lld (unacknowledged at the end %lld)\n", (long long)acked,
	       (long long)(s->nmsg - acked));
	printf("delivered %lld of %lld (acknowledged x 2 receiver devices; %lld late)\n",
	       (long long)delivered, (long long)acked * 2, (long long)late);
	printf("missing %lld\n", (long long)missing);
	printf("duplicated %lld\n", (long long)dup);
	printf("sender copies missing %lld\n", (long long)smiss);
	printf("throughput %.1f acknowledged msg/s during the load (%lld in %.1f s; asked %d/s)\n",
	       s->load_ms ? (double)s->acked_load * 1000.0 / (double)s->load_ms : 0.0,
	       (long long)s->acked_load, (double)s->load_ms / 1000.0, o->rate);
	printf("reconnects %lld (dropped %lld, churned %lld; connections through signal 0 "
	       "%lld, signal 1 %lld)\n",
	       (long long)(s->connects - s->ndev), (long long)s->drops, (long long)s->churns,
	       (long long)s->sig_connects[0], (long long)s->sig_connects[1]);
	printf("failed attempts %lld:", (long long)s->connect_fails);
	for (int i = 0; i < 5; i++)
		if (s->fail_kind[i])
			printf(" %s x %lld;", fail_kinds[i], (long long)s->fail_kind[i]);
	printf("\n");
	printf("back-offs %lld (mean %lld ms, longest %d ms, bound %d ms)\n",
	       (long long)s->backoffs,
	       (long long)(s->backoffs ? s->backoff_total_ms / s->backoffs : 0),
	       s->backoff_max_ms, o->backoff_ms);
	printf("connections ended by the other side:");
	for (int i = 0; i < s->ncloses; i++)
		printf(" %d%s%s%s x %lld;", s->closes[i].code, s->closes[i].reason[0] ? " '" : "",
		       s->closes[i].reason, s->closes[i].reason[0] ? "'" : "",
		       (long long)s->closes[i].n);
	printf("%s\n", s->ncloses ? "" : " none");
	printf("errors %lld (ErrorMessage stanzas: 503 x %lld, 500 x %lld, 4xx x %lld, other x %lld), "
	       "unknown ids %lld, undecodable %lld\n",
	       (long long)s->errors, (long long)s->err_codes[0], (long long)s->err_codes[1],
	       (long long)s->err_codes[2], (long long)s->err_codes[3], (long long)s->unknown,
	       (long long)s->undecodable);
	printf("nodes died on their own %d, moved ports %d\n", atomic_load(&s->crashed),
	       atomic_load(&s->port_moves));
	if (rc == 0 && atomic_load(&s->failures) == 0 && !missing && !dup) {
		printf("soak: PASS (seed %u)\n", o->seed);
	} else {
		printf("soak: FAIL (seed %u): %d failures; node logs kept in %s\n", o->seed,
		       atomic_load(&s->failures), bm_h_root());
		setenv("BIMIP_KEEP_TEST_DIR", "1", 1);
		rc = 1;
	}
	fflush(stdout);
	return rc;
}
