/*
 * bimip-server - start-up, configuration, signals.
 */
#include "srv.h"

#include "bm_admin.h"
#include "bm_cluster.h"
#include "bm_config.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_queue.h"
#include "bm_time.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const algs[] = { "RS256", "ES256", NULL };
static const char *const syncs[] = { "always", "group", "none", NULL };
static const char *const levels[] = { "error", "warn", "info", "debug", NULL };

#define F(m) BM_CFG_FIELD(struct srv_config, m)
static const struct bm_config_key keys[] = {
	{ "node.id", BM_CFG_STRING, F(node_id), .def = "server-1",
	  .help = "unique node id in the cluster (ZeroMQ routing id)" },
	{ "data_dir", BM_CFG_STRING, F(data_dir), .def = "var/server-1",
	  .help = "directory of the queue, the signing key and the admin key" },
	{ "listen.zmq", BM_CFG_STRING, F(zmq_listen), .def = "tcp://127.0.0.1:4100",
	  .help = "ZeroMQ ROUTER endpoint the signals connect to (port 0 = any)" },
	{ "listen.admin", BM_CFG_ADDR, F(admin_listen), .def = "127.0.0.1:4101",
	  .help = "admin HTTP API and /metrics (keep it on loopback)" },
	{ "admin.key", BM_CFG_STRING, F(admin_key), .def = "", .secret = 1, .reloadable = 1,
	  .help = "bearer key of the admin API; empty = generated into <data_dir>/admin.key" },
	{ "tokens.alg", BM_CFG_ENUM, F(token_alg), .def = "RS256", .enums = algs,
	  .help = "algorithm of a newly generated signing key" },
	{ "tokens.ttl", BM_CFG_DURATION, F(token_ttl_ms), .def = "24h", .min = 1000,
	  .max = 366LL * 86400 * 1000, .reloadable = 1, .help = "default token lifetime" },
	{ "tokens.leeway", BM_CFG_DURATION, F(token_leeway_ms), .def = "30s", .min = 0,
	  .max = 600000, .reloadable = 1, .help = "clock skew allowed when verifying" },
	{ "tokens.refresh_grace", BM_CFG_DURATION, F(refresh_grace_ms), .def = "1h", .min = 0,
	  .max = 7LL * 86400 * 1000, .reloadable = 1,
	  .help = "an expired token may still be refreshed this long after expiry" },
	{ "queue.fsync", BM_CFG_ENUM, F(fsync), .def = "group", .enums = syncs,
	  .help = "durability: fsync every append, group commit, or none" },
	{ "queue.group_window", BM_CFG_DURATION, F(group_window_ms), .def = "1ms", .min = 0,
	  .max = 1000, .help = "least time between the starts of two group commits" },
	{ "queue.group_bytes", BM_CFG_SIZE, F(group_bytes), .def = "1MiB", .min = 4096,
	  .max = 64 << 20, .help = "a group commit syncs early past this many bytes" },
	{ "queue.segment_bytes", BM_CFG_SIZE, F(segment_bytes), .def = "128MiB",
	  .min = 1 << 20, .max = 1LL << 34, .help = "segment rotation size" },
	{ "queue.retention", BM_CFG_DURATION, F(retention_ms), .def = "0", .min = 0,
	  .max = 0, .help = "delete segments older than this (0 = keep); must stay 0 "
	  "until state snapshots exist, see docs/operations.md" },
	{ "queue.retention_bytes", BM_CFG_SIZE, F(retention_bytes), .def = "0",
	  .help = "delete oldest segments past this total (0 = no limit); must stay 0" },
	{ "delivery.window", BM_CFG_INT, F(window), .def = "256", .min = 1, .max = 65536,
	  .reloadable = 1, .help = "stanzas pushed to a device before it must commit" },
	{ "handoff.window", BM_CFG_INT, F(handoff_window), .def = "64", .min = 1,
	  .max = 4096, .help = "hand-off messages (stream batches, users, chats) sent to "
	  "a new owner and not yet answered, at most (bounds memory when users move; docs/cluster.md)" },
	{ "handoff.batch", BM_CFG_INT, F(handoff_batch), .def = "256", .min = 1,
	  .max = 65536, .help = "stream records per hand-off message (and at most 256 KiB)" },
	{ "delivery.cache", BM_CFG_INT, F(cache_records), .def = "256", .min = 0,
	  .max = 65536, .help = "records per online user kept in memory for live "
	  "delivery (0 = always read back from the log)" },
	{ "limits.max_contacts", BM_CFG_INT, F(max_contacts), .def = "10000", .min = 1,
	  .max = 1000000, .reloadable = 1, .help = "subscribers per user" },
	{ "limits.resend_memory", BM_CFG_INT, F(idem_max), .def = "1000000", .min = 1024,
	  .max = 100000000,
	  .help = "message_id_local values remembered for resends, the oldest forgotten first (reserved at start as address space, in memory as keys arrive: 64 B per key, 96 B of key text per key on average, an index of 8 B x 2^k >= 2 x this; 176 MiB in all at 1000000)" },
	{ "limits.awareness_interval", BM_CFG_DURATION, F(awareness_min_interval_ms),
	  .def = "200ms", .min = 0, .max = 60000, .reloadable = 1,
	  .help = "minimum time between explicit awareness changes of a user" },
	{ "limits.sync_max", BM_CFG_INT, F(sync_max), .def = "1000", .min = 1,
	  .max = 65536, .reloadable = 1, .help = "most stanzas one sync_request returns" },
	{ "state.snapshot_every", BM_CFG_INT, F(snapshot_every), .def = "200000",
	  .min = 100, .max = 100000000, .reloadable = 1,
	  .help = "state records and chat messages between background snapshots "
		  "(start-up replays or repairs at most this many)" },
	{ "state.snapshot_interval", BM_CFG_DURATION, F(snapshot_interval_ms), .def = "60s",
	  .min = 0, .max = 86400000, .reloadable = 1,
	  .help = "at least this long between background snapshots (each forks the "
		  "server; start-up replays at most what arrived in between)" },
	{ "log.level", BM_CFG_ENUM, F(log_level), .def = "info", .enums = levels,
	  .reloadable = 1, .help = "error, warn, info or debug" },
	{ "log.json", BM_CFG_BOOL, F(log_json), .def = "false", .reloadable = 1,
	  .help = "one JSON object per log line" },
	{ "curve.secret", BM_CFG_STRING, F(curve_secret), .def = "", .secret = 1,
	  .help = "Z85 CURVE secret key of this server (empty = no encryption)" },
	{ "curve.allowed", BM_CFG_LIST, BM_CFG_LIST_FIELD(struct srv_config, curve_allowed),
	  .def = "", .list_max = 8, .help = "Z85 public keys of signals allowed to connect" },
	BM_CLUSTER_CONFIG_KEYS(struct srv_config, cluster),
	{ NULL },
};
#undef F

static struct srv srv;


static void usage(FILE *f)
{
	fprintf(f,
		"usage: bimip-server [options]\n"
		"\n"
		"The authoritative BIMIP control plane: contacts, tokens, chat storage.\n"
		"\n"
		"  -c, --config FILE      JSON configuration (see --help-config)\n"
		"  -d, --data-dir DIR     override data_dir\n"
		"  -r, --ready-file FILE  write the bound addresses as JSON once serving\n"
		"      --print-config     print the effective configuration and exit\n"
		"      --help-config      describe every configuration key and exit\n"
		"  -h, --help             this text\n"
		"\n"
		"Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads log level,\n"
		"limits and the admin key.\n");
}

static int mkdirs(const char *path)
{
	char tmp[sizeof(srv.cfg.data_dir)];

	snprintf(tmp, sizeof(tmp), "%.*s", (int)sizeof(tmp) - 1, path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0700) == -1 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	return mkdir(tmp, 0700) == -1 && errno != EEXIST ? -1 : 0;
}

static int write_file(const char *path, const char *data, mode_t mode)
{
	char tmp[600];
	int fd;
	size_t n = strlen(data);

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
	if (fd == -1)
		return -1;
	if (write(fd, data, n) != (ssize_t)n || fsync(fd) == -1) {
		close(fd);
		return -1;
	}
	close(fd);
	return rename(tmp, path);
}

static int load_keys(struct srv *s)
{
	char path[600];
	struct bm_buf pem = BM_BUF_INIT;
	json_t *arr, *root;
	char *txt;
	int rc;

	snprintf(path, sizeof(path), "%.511s/token.key", s->cfg.data_dir);
	rc = bm_jwt_key_load(path, &s->key);
	if (rc == BM_ENOENT) {
		enum bm_jwt_alg alg = s->cfg.token_alg ? BM_JWT_ES256 : BM_JWT_RS256;
		bm_info("tokens", "generating a %s signing key in '%s'", bm_jwt_alg_name(alg),
			path);
		rc = bm_jwt_key_generate(alg, &s->key);
		if (!rc)
			rc = bm_jwt_key_save(s->key, path);
	}
	if (rc) {
		bm_err("tokens", "cannot load the signing key '%s': %s", path, bm_strerror(rc));
		return rc;
	}
	if (!bm_jwt_key_has_private(s->key)) {
		bm_err("tokens", "signing key '%s' has no private half", path);
		return BM_EINVAL;
	}
	rc = bm_jwt_keyring_new(&s->ring);
	if (rc)
		return rc;
	{
		struct bm_jwt_key *pub;
		rc = bm_jwt_key_public_pem(s->key, &pem);
		if (!rc)
			rc = bm_jwt_key_parse(pem.data, pem.len, &pub);
		if (!rc && (rc = bm_jwt_keyring_add(s->ring, pub)))
			bm_jwt_key_free(pub);
	}
	if (rc)
		goto out;
	arr = json_array();
	json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "kid", bm_jwt_key_kid(s->key),
					     "alg", bm_jwt_alg_name(bm_jwt_key_alg(s->key)),
					     "pem", (char *)pem.data));
	root = json_pack("{s:o}", "keys", arr);
	txt = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	rc = txt ? bm_buf_adds(&s->keys_json, txt) : BM_ENOMEM;
	free(txt);
	bm_info("tokens", "signing key kid=%s alg=%s", bm_jwt_key_kid(s->key),
		bm_jwt_alg_name(bm_jwt_key_alg(s->key)));
out:
	bm_buf_release(&pem);
	return rc;
}

static int load_admin_key(struct srv *s)
{
	char path[600], buf[129];
	FILE *f;

	if (s->cfg.admin_key[0])
		return 0;
	snprintf(path, sizeof(path), "%.511s/admin.key", s->cfg.data_dir);
	f = fopen(path, "r");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
		buf[strcspn(buf, "\r\n")] = 0;
		if (buf[0]) {
			snprintf(s->cfg.admin_key, sizeof(s->cfg.admin_key), "%s", buf);
			return 0;
		}
	}
	if (bm_jwt_random_hex(buf, 24))
		return BM_ECRYPTO;
	if (write_file(path, buf, 0600)) {
		bm_err("admin", "cannot write the admin key '%s': %s", path, strerror(errno));
		return BM_EIO;
	}
	snprintf(s->cfg.admin_key, sizeof(s->cfg.admin_key), "%s", buf);
	bm_info("admin", "generated the admin key in '%s'", path);
	return 0;
}

static double gauge_sessions(void *ud)
{
	return (double)((struct srv *)ud)->m.n_sessions;
}

static double gauge_queue(struct srv *s, int what)
{
	struct bm_queue_stats st;

	if (!s->q)
		return 0;
	bm_queue_stats(s->q, &st);
	return what == 0 ? (double)st.log_bytes : what == 1 ? (double)st.segments
							      : (double)st.streams;
}

static double gauge_queue_bytes(void *ud) { return gauge_queue(ud, 0); }
static double gauge_queue_segments(void *ud) { return gauge_queue(ud, 1); }
static double gauge_queue_streams(void *ud) { return gauge_queue(ud, 2); }

static double gauge_resend_keys(void *ud)
{
	return (double)((struct srv *)ud)->idem.count;
}

static double gauge_peer_batch(void *ud)
{
	const struct srv *s = ud;
	int n = 0;

	for (int i = 0; i < s->n_peers; i++)
		n += s->peers[i].batch;
	return n;
}

static int metrics_open(struct srv *s)
{
	static const double fsync_buckets[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
						0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1 };
	static const double commit_buckets[] = { 0.00025, 0.0005, 0.00075, 0.001, 0.0015,
						 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1 };
	struct bm_metrics *r;
	int rc = bm_metrics_new(&s->m.reg);

	if (rc)
		return rc;
	r = s->m.reg;
	s->m.sessions = &s->m.n_sessions;
	rc = bm_metrics_gauge_cb(r, "bimip_server_sessions", "Online device sessions.", gauge_sessions, s) ||
	     bm_metrics_counter(r, "bimip_server_stanzas_in_total", "Stanzas received from signals.", &s->m.stanzas_in) ||
	     bm_metrics_counter(r, "bimip_server_stanzas_out_total", "Stanzas pushed to signals.", &s->m.stanzas_out) ||
	     bm_metrics_counter(r, "bimip_server_chat_messages_total", "Chat messages stored.", &s->m.chats) ||
	     bm_metrics_counter(r, "bimip_server_acknowledgments_total", "Acknowledgements stored.", &s->m.acks) ||
	     bm_metrics_counter(r, "bimip_server_resends_total", "Resends answered with the original ids.", &s->m.dup_resends) ||
	     bm_metrics_gauge_cb(r, "bimip_server_resend_keys", "Resend keys remembered (limits.resend_memory at most).", gauge_resend_keys, s) ||
	     bm_metrics_counter(r, "bimip_server_queue_appends_total", "Stream appends.", &s->m.appends) ||
	     bm_metrics_counter(r, "bimip_server_ipc_dropped_total", "Internal messages dropped.", &s->m.ipc_dropped) ||
	     bm_metrics_counter(r, "bimip_server_push_failed_total", "Pushes to signals that ZeroMQ refused (queue full or signal gone).", &s->m.push_failed) ||
	     bm_metrics_family(r, "bimip_server_stanzas_by_route_total", "Stanzas received, by route.", "route", 40, &s->m.by_route) ||
	     bm_metrics_family(r, "bimip_server_errors_total", "ErrorMessages sent, by code.", "code", 16, &s->m.errors) ||
	     bm_metrics_gauge_cb(r, "bimip_server_queue_bytes", "Bytes in the queue's segments on disk.", gauge_queue_bytes, s) ||
	     bm_metrics_gauge_cb(r, "bimip_server_queue_segments", "Segment files of the queue.", gauge_queue_segments, s) ||
	     bm_metrics_gauge_cb(r, "bimip_server_queue_streams", "Streams in the queue.", gauge_queue_streams, s) ||
	     bm_metrics_gauge_cb(r, "bimip_server_peer_batch_links", "Links to other servers that send batch frames (the peer said it reads them).", gauge_peer_batch, s) ||
	     bm_metrics_counter(r, "bimip_server_forwarded_total", "Stanzas forwarded to the server that owns their target.", &s->m.forwarded) ||
	     bm_metrics_counter(r, "bimip_server_remote_appends_total", "Appends asked of the server that owns the stream.", &s->m.remote_appends) ||
	     bm_metrics_counter(r, "bimip_server_remote_duplicates_total", "Appends skipped: the message id was in the stream already.", &s->m.remote_dups) ||
	     bm_metrics_counter(r, "bimip_server_pending_retries_total", "Cross-server chat messages retried (a peer away or slow).", &s->m.pending_retries) ||
	     bm_metrics_counter(r, "bimip_server_handoff_users_total", "Users whose data this server handed off to their new owner.", &s->m.handoff_users) ||
	     bm_metrics_counter(r, "bimip_server_handoff_records_total", "Stream records sent in hand-offs.", &s->m.handoff_records) ||
	     bm_metrics_counter(r, "bimip_server_handoff_conflicts_total", "Records taken in a hand-off that differ from the stream's own at their offsets (logged as errors; docs/cluster.md).", &s->m.handoff_conflicts) ||
	     bm_metrics_histogram(r, "bimip_server_fsync_seconds", "Duration of the queue's data fdatasyncs.", fsync_buckets, sizeof(fsync_buckets) / sizeof(fsync_buckets[0]), &s->m.fsync) ||
	     bm_metrics_histogram(r, "bimip_server_chat_commit_seconds", "From accepting a chat message whose two users this server owns to both copies durable: the group commit's wait and sync.", commit_buckets, sizeof(commit_buckets) / sizeof(commit_buckets[0]), &s->m.chat_commit) ||
	     bm_cluster_metrics(r, &s->cluster);
	return rc ? BM_ENOMEM : 0;
}

static void apply_log_config(struct srv *s)
{
	bm_log_set_level((enum bm_log_level)s->cfg.log_level);
	bm_log_set_json(s->cfg.log_json);
	bm_log_set_node(s->cfg.node_id);
}

static void on_queue_event(evutil_socket_t fd, short what, void *arg)
{
	bm_queue_poll(arg);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
	struct srv *s = arg;

	bm_info("server", "signal %d: draining and stopping", (int)sig);
	s->stopping = 1;
	/* No gossip "left": a stopped server keeps its users (they wait for it,
	 * its data is on its disk).  Leaving is `cluster leave`, which hands
	 * the data off first (handoff.c). */
	event_base_loopbreak(s->base);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	struct srv *s = arg;
	struct bm_config_changes ch;
	char err[300], names[256];

	if (!s->config_path) {
		bm_info("server", "SIGHUP: no configuration file to reload");
		return;
	}
	if (bm_config_reload(keys, &s->cfg, sizeof(s->cfg), s->config_path, &ch, err,
			     sizeof(err))) {
		bm_err("server", "reload refused, keeping the running configuration: %s", err);
		return;
	}
	load_admin_key(s);
	bm_admin_set_key(s->admin, s->cfg.admin_key);
	apply_log_config(s);
	bm_config_changes_join(&ch, names, sizeof(names));
	bm_info("server", "reload: changed %s", names);
}

static int write_ready(struct srv *s, const char *path)
{
	char buf[1024];

	snprintf(buf, sizeof(buf),
		 "{\"role\":\"server\",\"node\":\"%s\",\"pid\":%d,\"zmq\":\"%s\","
		 "\"admin\":\"%s\",\"gossip\":\"%s\",\"data_dir\":\"%.400s\"}\n",
		 s->cfg.node_id, (int)getpid(), s->zmq_bound, s->admin_addr,
		 s->cluster ? bm_cluster_addr(s->cluster) : "", s->cfg.data_dir);
	return write_file(path, buf, 0644);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, 0, 'c' },
		{ "data-dir", required_argument, 0, 'd' },
		{ "ready-file", required_argument, 0, 'r' },
		{ "print-config", no_argument, 0, 'P' },
		{ "help-config", no_argument, 0, 'H' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct srv *s = &srv;
	const char *ready = NULL, *data_dir = NULL;
	struct event *ev_term, *ev_int, *ev_hup;
	struct bm_queue_opts qo;
	char qdir[600];
	int c, print = 0, rc = 1;

	while ((c = getopt_long(argc, argv, "c:d:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': s->config_path = optarg; break;
		case 'd': data_dir = optarg; break;
		case 'r': ready = optarg; break;
		case 'P': print = 1; break;
		case 'H': return bm_config_print_help(keys) ? 1 : 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "bimip-server: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (bm_config_start(keys, &s->cfg, s->config_path, "bimip-server"))
		return 1;
	/* Segments hold the __state records too: deleting old segments would
	 * drop contacts, blocks and revocations with them. */
	if (s->cfg.retention_ms || s->cfg.retention_bytes) {
		fprintf(stderr, "bimip-server: config: keys 'queue.retention' and "
			"'queue.retention_bytes' must be 0: retention would delete server "
			"state kept in the same segments (not supported yet)\n");
		return 1;
	}
	if (data_dir) {
		if (strlen(data_dir) >= sizeof(s->cfg.data_dir)) {
			fprintf(stderr, "bimip-server: --data-dir is longer than %zu bytes\n",
				sizeof(s->cfg.data_dir) - 1);
			return 2;
		}
		memcpy(s->cfg.data_dir, data_dir, strlen(data_dir) + 1);
	}
	if (print)
		return bm_config_print(keys, &s->cfg) ? 1 : 0;
	apply_log_config(s);
	signal(SIGPIPE, SIG_IGN);
	if (mkdirs(s->cfg.data_dir)) {
		bm_err("server", "cannot create data directory '%s': %s", s->cfg.data_dir,
		       strerror(errno));
		return 1;
	}
	s->base = event_base_new();
	if (!s->base || metrics_open(s))
		return 1;
	bm_jwt_random_hex(s->boot_id, 16);

	bm_queue_opts_default(&qo);
	qo.sync = (enum bm_queue_sync)s->cfg.fsync;
	qo.group_window_us = (uint32_t)(s->cfg.group_window_ms * 1000);
	qo.group_bytes = (uint32_t)s->cfg.group_bytes;
	qo.segment_bytes = (uint64_t)s->cfg.segment_bytes;
	qo.retention_ms = (uint64_t)s->cfg.retention_ms;
	qo.retention_bytes = (uint64_t)s->cfg.retention_bytes;
	snprintf(qdir, sizeof(qdir), "%.511s/queue", s->cfg.data_dir);
	rc = bm_queue_open(&s->q, qdir, &qo);
	if (rc) {
		bm_err("server", "cannot open the queue in '%s': %s", qdir, bm_strerror(rc));
		return 1;
	}
	s->q_ev = event_new(s->base, bm_queue_event_fd(s->q), EV_READ | EV_PERSIST,
			    on_queue_event, s->q);
	if (!s->q_ev || event_add(s->q_ev, NULL) == -1)
		return 1;
	if (load_keys(s) || load_admin_key(s) || srv_state_open(s) || srv_link_open(s) ||
	    srv_peer_open(s) || srv_admin_open(s) || srv_cluster_open(s)) {
		bm_err("server", "start-up failed");
		rc = 1;
		goto out;
	}
	ev_term = evsignal_new(s->base, SIGTERM, on_term, s);
	ev_int = evsignal_new(s->base, SIGINT, on_term, s);
	ev_hup = evsignal_new(s->base, SIGHUP, on_hup, s);
	event_add(ev_term, NULL);
	event_add(ev_int, NULL);
	event_add(ev_hup, NULL);
	if (ready && write_ready(s, ready)) {
		bm_err("server", "cannot write the ready file '%s': %s", ready, strerror(errno));
		rc = 1;
		goto out;
	}
	bm_info("server", "node '%s' serving: zmq %s, admin %s, data '%s'",
		s->cfg.node_id, s->zmq_bound, s->admin_addr, s->cfg.data_dir);
	event_base_dispatch(s->base);
	rc = s->removed ? 78 : 0;   /* EX_CONFIG: systemd does not restart it */
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
out:
	bm_cluster_free(s->cluster);
	srv_admin_close(s);
	/* Run the last completions while the link can still carry their
	 * answers; then nothing may send any more. */
	if (s->q && bm_queue_sync(s->q))
		bm_err("server", "final sync of the queue failed");
	srv_pump_flush(s);
	srv_snapshot_wait(s);
	if (s->q && !rc && srv_snapshot_now(s))
		bm_err("server", "final state snapshot failed");
	srv_peer_close(s);
	srv_link_close(s);
	s->router = NULL;
	if (s->q_ev)
		event_free(s->q_ev);
	if (bm_queue_close(s->q)) {
		bm_err("server", "the queue did not close cleanly");
		rc = 1;
	}
	srv_pump_release(s);
	srv_state_close(s);
	bm_jwt_keyring_free(s->ring);
	bm_jwt_key_free(s->key);
	bm_buf_release(&s->keys_json);
	bm_metrics_free(s->m.reg);
	event_base_free(s->base);
	bm_info("server", "stopped");
	return rc;
}
