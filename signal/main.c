/*
 * bimip-signal - start-up, configuration, signals, admin API.
 */
#include "sig.h"

#include "bm_admin.h"
#include "bm_cluster.h"
#include "bm_config.h"
#include "bm_err.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_time.h"
#include "bm_tls.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const levels[] = { "error", "warn", "info", "debug", NULL };

#define F(m) BM_CFG_FIELD(struct sig_config, m)
static const struct bm_config_key keys[] = {
	{ "node.id", BM_CFG_STRING, F(node_id), .def = "signal-1",
	  .help = "unique node id in the cluster (ZeroMQ routing id)" },
	{ "listen.ws", BM_CFG_STRING, F(ws_listen), .def = "127.0.0.1:4000",
	  .help = "ws:// listener, host:port (empty = none)" },
	{ "listen.wss", BM_CFG_STRING, F(wss_listen), .def = "",
	  .help = "wss:// listener, host:port (empty = none); needs tls.cert and tls.key" },
	{ "tls.cert", BM_CFG_STRING, F(tls_cert), .def = "", .reloadable = 1,
	  .help = "PEM certificate chain for wss://" },
	{ "tls.key", BM_CFG_STRING, F(tls_key), .def = "", .reloadable = 1,
	  .help = "PEM private key for wss://" },
	{ "listen.admin", BM_CFG_ADDR, F(admin_listen), .def = "127.0.0.1:4001",
	  .help = "admin HTTP API and /metrics (keep it on loopback)" },
	{ "admin.key", BM_CFG_STRING, F(admin_key), .def = "", .secret = 1, .reloadable = 1,
	  .help = "bearer key of the admin API (empty = admin routes closed)" },
	{ "servers", BM_CFG_LIST, BM_CFG_LIST_FIELD(struct sig_config, servers),
	  .def = "tcp://127.0.0.1:4100", .list_max = 16,
	  .help = "ZeroMQ endpoints of the bimip-server nodes" },
	{ "curve.server_public", BM_CFG_STRING, F(curve_server_public), .def = "",
	  .help = "Z85 CURVE public key of the servers (empty = no encryption)" },
	{ "curve.public", BM_CFG_STRING, F(curve_public), .def = "",
	  .help = "Z85 CURVE public key of this signal" },
	{ "curve.secret", BM_CFG_STRING, F(curve_secret), .def = "", .secret = 1,
	  .help = "Z85 CURVE secret key of this signal" },
	{ "limits.max_sessions", BM_CFG_INT, F(max_sessions), .def = "100000", .min = 1,
	  .max = 10000000, .reloadable = 1, .help = "connections accepted at once" },
	{ "limits.max_message", BM_CFG_SIZE, F(max_message), .def = "32KiB", .min = 1024,
	  .max = 1 << 20, .help = "largest WebSocket message (413, then close 1009)" },
	{ "limits.max_output", BM_CFG_SIZE, F(max_output), .def = "256KiB", .min = 4096,
	  .max = 64 << 20, .reloadable = 1,
	  .help = "bytes queued to a client before it is closed as a slow consumer" },
	{ "limits.rate", BM_CFG_INT, F(rate), .def = "200", .min = 1, .max = 1000000,
	  .reloadable = 1, .help = "stanzas per second per session (429 past it)" },
	{ "limits.burst", BM_CFG_INT, F(burst), .def = "400", .min = 1, .max = 1000000,
	  .reloadable = 1, .help = "rate limit bucket size" },
	{ "timeouts.idle", BM_CFG_DURATION, F(idle_ms), .def = "90s", .min = 1000,
	  .max = 86400000, .reloadable = 1, .help = "close a session silent this long" },
	{ "timeouts.ping", BM_CFG_DURATION, F(ping_ms), .def = "30s", .min = 500,
	  .max = 86400000, .reloadable = 1, .help = "WebSocket ping after this long silent" },
	{ "timeouts.handshake", BM_CFG_DURATION, F(handshake_ms), .def = "10s", .min = 100,
	  .max = 600000, .reloadable = 1, .help = "time to complete TLS and the upgrade" },
	{ "timeouts.write", BM_CFG_DURATION, F(write_ms), .def = "30s", .min = 1000,
	  .max = 3600000, .reloadable = 1, .help = "close a session whose output has not "
	  "drained to empty for this long (a slow consumer; checked every 5 s)" },
	{ "tokens.leeway", BM_CFG_DURATION, F(leeway_ms), .def = "30s", .min = 0,
	  .max = 600000, .reloadable = 1, .help = "clock skew allowed when verifying" },
	{ "tokens.close_expired", BM_CFG_BOOL, F(close_expired), .def = "true",
	  .reloadable = 1, .help = "close a session (4001) once its token expires" },
	{ "timeouts.drain", BM_CFG_DURATION, F(drain_ms), .def = "2s", .min = 0,
	  .max = 600000, .reloadable = 1, .help = "SIGTERM: time to flush close frames" },
	{ "log.level", BM_CFG_ENUM, F(log_level), .def = "info", .enums = levels,
	  .reloadable = 1, .help = "error, warn, info or debug" },
	{ "log.json", BM_CFG_BOOL, F(log_json), .def = "false", .reloadable = 1,
	  .help = "one JSON object per log line" },
	BM_CLUSTER_CONFIG_KEYS(struct sig_config, cluster),
	{ NULL },
};
#undef F

static struct sig sig;
struct sig *sig_global = &sig;
static const char *ready_path;
static int ready_written;
static struct event *ready_ev;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bimip-signal [options]\n"
		"\n"
		"The BIMIP edge: terminates WebSocket (ws://, wss://) client sessions,\n"
		"verifies tokens, and forwards stanzas to bimip-server over ZeroMQ.\n"
		"\n"
		"  -c, --config FILE      JSON configuration (see --help-config)\n"
		"  -r, --ready-file FILE  write the bound addresses as JSON once serving\n"
		"      --print-config     print the effective configuration and exit\n"
		"      --help-config      describe every configuration key and exit\n"
		"  -h, --help             this text\n"
		"\n"
		"Signals: SIGTERM/SIGINT send close frames, flush and exit 0; SIGHUP\n"
		"reloads limits, timeouts, log level, admin key and the certificate.\n");
}

static void apply_log_config(struct sig *g)
{
	bm_log_set_level((enum bm_log_level)g->cfg.log_level);
	bm_log_set_json(g->cfg.log_json);
	bm_log_set_node(g->cfg.node_id);
}

static int write_ready(struct sig *g)
{
	char buf[512], tmp[600];
	int fd, n;

	n = snprintf(buf, sizeof(buf),
		     "{\"role\":\"signal\",\"node\":\"%s\",\"pid\":%d,\"ws\":\"%s\","
		     "\"wss\":\"%s\",\"admin\":\"%s\",\"gossip\":\"%s\"}\n",
		     g->cfg.node_id, (int)getpid(), g->ws_bound, g->wss_bound,
		     g->admin_addr, g->cluster ? bm_cluster_addr(g->cluster) : "");
	snprintf(tmp, sizeof(tmp), "%s.tmp", ready_path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd == -1)
		return -1;
	if (write(fd, buf, (size_t)n) != n) {
		close(fd);
		return -1;
	}
	close(fd);
	return rename(tmp, ready_path);
}

static void on_ready_check(evutil_socket_t fd, short what, void *arg)
{
	struct sig *g = arg;

	if (ready_written || !sig_link_ready(g))
		return;
	ready_written = 1;
	event_del(ready_ev);
	bm_info("signal", "node '%s' serving: ws %s%s%s, admin %s",
		g->cfg.node_id, g->ws_bound[0] ? g->ws_bound : "-",
		g->wss_bound[0] ? ", wss " : "", g->wss_bound, g->admin_addr);
	if (ready_path && write_ready(g))
		bm_err("signal", "cannot write the ready file '%s': %s", ready_path,
		       strerror(errno));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct sig *g = arg;
	static unsigned ticks;

	sig_link_tick(g);
	sig_sess_tick(g);
	if (++ticks % 5 == 0)
		sig_sess_expire(g);
	sig_sess_reap(g);
	if (g->stopping && (g->n_live == 0 || bm_mono_ms() >= g->stop_deadline))
		event_base_loopbreak(g->base);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
	struct sig *g = arg;

	sig_sess_reap(g);
	if (g->stopping && g->n_live == 0)
		event_base_loopbreak(g->base);
}

static void on_term(evutil_socket_t s, short what, void *arg)
{
	struct sig *g = arg;

	if (g->stopping)
		return;
	bm_info("signal", "signal %d: closing %llu sessions and stopping", (int)s,
		(unsigned long long)g->n_live);
	g->stopping = 1;
	bm_cluster_leave(g->cluster);
	g->stop_deadline = bm_mono_ms() + (uint64_t)g->cfg.drain_ms;
	sig_sess_stop_listening(g);
	sig_sess_close_all(g, 1001, "server shutting down");
	sig_sess_reap(g);
	if (g->n_live == 0)
		event_base_loopbreak(g->base);
}

static void on_hup(evutil_socket_t s, short what, void *arg)
{
	struct sig *g = arg;
	struct bm_config_changes ch;
	char err[300], names[256];
	struct sig_config old = g->cfg;

	if (!g->config_path) {
		bm_info("signal", "SIGHUP: no configuration file to reload");
		return;
	}
	if (bm_config_reload(keys, &g->cfg, sizeof(g->cfg), g->config_path, &ch, err,
			     sizeof(err))) {
		bm_err("signal", "reload refused, keeping the running configuration: %s", err);
		return;
	}
	if (g->cfg.idle_ms <= g->cfg.ping_ms) {
		g->cfg = old;
		bm_err("signal", "reload refused, keeping the running configuration: key "
		       "'timeouts.idle' must exceed 'timeouts.ping'");
		return;
	}
	apply_log_config(g);
	bm_admin_set_key(g->admin, g->cfg.admin_key);
	if (g->tls) {
		struct bm_tls_options o = { .server = 1, .cert_file = g->cfg.tls_cert,
					    .key_file = g->cfg.tls_key };
		struct bm_tls_config *nc;
		if (bm_tls_config_new(&nc, &o)) {
			bm_err("signal", "reload: cannot load the certificate, keeping the old one");
		} else {
			bm_tls_config_unref(g->tls);
			g->tls = nc;
			bm_info("signal", "reload: certificate reloaded for new connections");
		}
	}
	bm_config_changes_join(&ch, names, sizeof(names));
	bm_info("signal", "reload: changed %s", names);
}

/* --- admin ------------------------------------------------------------------------- */

static void on_status(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct sig *g = ud;
	json_t *servers = json_array();

	for (int i = 0; i < g->n_servers; i++)
		json_array_append_new(servers, json_pack("{s:s, s:s, s:b}", "endpoint",
							 g->servers[i].endpoint, "node",
							 g->servers[i].node, "up",
							 g->servers[i].up));
	bm_admin_reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:I, s:I, s:o}", "node",
						g->cfg.node_id, "role", "signal", "ws",
						g->ws_bound, "sessions",
						(json_int_t)g->m.n_sessions, "connections",
						(json_int_t)g->n_live, "servers", servers));
}

static void on_sessions(struct bm_admin_req *req, const json_t *body, void *ud)
{
	struct sig *g = ud;
	const char *eid = bm_admin_query(req, "eid");
	const char *suffix = bm_admin_req_suffix(req);
	json_t *a;
	const char *k;
	void *v;

	if (bm_admin_req_method(req) == BM_ADMIN_DELETE) {
		char e[200];
		const char *slash = strchr(suffix, '/');
		struct sig_sess *s;
		if (!slash || slash == suffix || (size_t)(slash - suffix) >= sizeof(e)) {
			bm_admin_reply_error(req, 400, "expected DELETE /v1/sessions/<eid>/<device>");
			return;
		}
		memcpy(e, suffix, (size_t)(slash - suffix));
		e[slash - suffix] = 0;
		s = sig_sess_find(g, e, slash + 1);
		if (!s) {
			bm_admin_reply_error(req, 404, "no session for eid '%s' device '%s'", e,
					     slash + 1);
			return;
		}
		sig_sess_close(g, s, 4003, "closed by an administrator");
		bm_admin_reply_json(req, 200, json_pack("{s:b}", "kicked", 1));
		return;
	}
	a = json_array();
	for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);) {
		struct sig_sess *s = v;
		if (eid && strcmp(eid, s->eid))
			continue;
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I}", "eid", s->eid,
						   "device", s->device, "id",
						   (json_int_t)s->id, "exp", (json_int_t)s->exp));
		if (json_array_size(a) >= 1000)
			break;
	}
	bm_admin_reply_json(req, 200, json_pack("{s:o}", "sessions", a));
}

static void on_cluster(struct bm_admin_req *req, const json_t *body, void *ud)
{
	bm_cluster_admin(((struct sig *)ud)->cluster, req, body);
}

/* Servers announce their ZeroMQ endpoint in gossip: connect to each; one
 * that left no longer owns users (signal/link.c). */
static void on_member(void *ud, enum bm_swim_event ev, const struct bm_swim_member *m)
{
	if (m->role == BM_SWIM_ROLE_SERVER && !m->self && m->id && m->zmq && *m->zmq)
		sig_link_member(ud, m->id, m->zmq, m->state == BM_SWIM_LEFT);
}

static int cluster_open(struct sig *g)
{
	bm_cluster_admin_addr(g->cfg.admin_listen, bm_admin_port(g->admin), &g->cfg.cluster,
			      g->admin_addr, sizeof(g->admin_addr));
	return bm_cluster_start_conf(&g->cluster, g->base, &g->cfg.cluster, g->cfg.node_id,
				     BM_SWIM_ROLE_SIGNAL, NULL, g->admin_addr, on_member, g);
}

static int is_ready(void *ud, char *why, size_t whylen)
{
	struct sig *g = ud;

	if (g->stopping) {
		snprintf(why, whylen, "draining");
		return 0;
	}
	if (!sig_link_ready(g)) {
		snprintf(why, whylen, "no server reachable");
		return 0;
	}
	return 1;
}

static const struct bm_admin_route routes[] = {
	{ BM_ADMIN_GET, "/v1/status", 0, on_status, 1 },
	{ BM_ADMIN_GET, "/v1/sessions", 0, on_sessions, 1 },
	{ BM_ADMIN_DELETE, "/v1/sessions/", 1, on_sessions, 1 },
	{ BM_ADMIN_GET | BM_ADMIN_POST, "/v1/cluster/", 1, on_cluster, 1 },
	{ 0, NULL, 0, NULL, 0 },
};

static double gauge_sessions(void *ud)
{
	return (double)((struct sig *)ud)->m.n_sessions;
}

static double gauge_conns(void *ud)
{
	return (double)((struct sig *)ud)->n_live;
}

static double gauge_uring(void *ud)
{
	return ((struct sig *)ud)->uring.fd >= 0;
}

static int metrics_open(struct sig *g)
{
	struct bm_metrics *r;

	if (bm_metrics_new(&g->m.reg))
		return BM_ENOMEM;
	r = g->m.reg;
	if (bm_metrics_gauge_cb(r, "bimip_signal_sessions", "Authenticated sessions.", gauge_sessions, g) ||
	    bm_metrics_gauge_cb(r, "bimip_signal_connections", "Open client connections.", gauge_conns, g) ||
	    bm_metrics_counter(r, "bimip_signal_accepted_total", "Sessions opened.", &g->m.accepted) ||
	    bm_metrics_counter(r, "bimip_signal_auth_refused_total", "Upgrades refused for the token.", &g->m.refused_auth) ||
	    bm_metrics_counter(r, "bimip_signal_full_refused_total", "Connections refused at the session limit.", &g->m.refused_full) ||
	    bm_metrics_counter(r, "bimip_signal_closed_total", "Connections closed.", &g->m.closed) ||
	    bm_metrics_counter(r, "bimip_signal_stanzas_in_total", "Stanzas from clients.", &g->m.stanzas_in) ||
	    bm_metrics_counter(r, "bimip_signal_stanzas_out_total", "Stanzas to clients.", &g->m.stanzas_out) ||
	    bm_metrics_counter(r, "bimip_signal_pings_total", "PingPong answered at the edge.", &g->m.pings) ||
	    bm_metrics_counter(r, "bimip_signal_rate_limited_total", "Stanzas refused with 429.", &g->m.rate_limited) ||
	    bm_metrics_counter(r, "bimip_signal_slow_consumers_total", "Sessions closed for unread output.", &g->m.slow_consumers) ||
	    bm_metrics_counter(r, "bimip_signal_too_big_total", "Messages over limits.max_message.", &g->m.too_big) ||
	    bm_metrics_counter(r, "bimip_signal_bad_frames_total", "WebSocket protocol violations.", &g->m.bad_frames) ||
	    bm_metrics_counter(r, "bimip_signal_forward_failed_total", "Stanzas no server took.", &g->m.forward_fail) ||
	    bm_metrics_gauge_cb(r, "bimip_signal_io_uring", "1 when sessions are read and written through io_uring.", gauge_uring, g) ||
	    bm_metrics_counter(r, "bimip_signal_io_uring_calls_total", "io_uring_enter batches of session reads or writes.", &g->m.uring_runs) ||
	    bm_metrics_counter(r, "bimip_signal_io_uring_ops_total", "Session reads and writes done in those batches.", &g->m.uring_ops) ||
	    bm_metrics_family(r, "bimip_signal_errors_total", "ErrorMessages sent, by code.", "code", 16, &g->m.errors) ||
	    bm_metrics_family(r, "bimip_signal_close_codes_total", "Close frames sent, by code.", "code", 16, &g->m.close_codes) ||
	    bm_cluster_metrics(r, &g->cluster))
		return BM_ENOMEM;
	return 0;
}

int sig_admin_open(struct sig *g)
{
	struct bm_admin_opts o = {
		.listen = g->cfg.admin_listen,
		.key = g->cfg.admin_key,
		.metrics = g->m.reg,
		.ready = is_ready,
		.ready_ud = g,
		.routes = routes,
		.ud = g,
	};
	char err[256];
	int rc = bm_admin_new(g->base, &o, &g->admin);

	if (!rc && (rc = bm_admin_start(g->admin, err, sizeof(err))))
		bm_err("admin", "%s", err);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, 0, 'c' },
		{ "ready-file", required_argument, 0, 'r' },
		{ "print-config", no_argument, 0, 'P' },
		{ "help-config", no_argument, 0, 'H' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct sig *g = &sig;
	struct event *ev_term, *ev_int, *ev_hup;
	struct timeval sec = { 1, 0 }, fast = { 0, 20000 };
	int c, print = 0, rc = 1;

	g->uring.fd = -1;

	while ((c = getopt_long(argc, argv, "c:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': g->config_path = optarg; break;
		case 'r': ready_path = optarg; break;
		case 'P': print = 1; break;
		case 'H': return bm_config_print_help(keys) ? 1 : 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "bimip-signal: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (bm_config_start(keys, &g->cfg, g->config_path, "bimip-signal"))
		return 1;
	if (g->cfg.wss_listen[0] && (!g->cfg.tls_cert[0] || !g->cfg.tls_key[0])) {
		fprintf(stderr, "bimip-signal: config: key 'listen.wss' needs 'tls.cert' and 'tls.key'\n");
		return 1;
	}
	if (g->cfg.idle_ms <= g->cfg.ping_ms) {
		fprintf(stderr, "bimip-signal: config: key 'timeouts.idle' must exceed 'timeouts.ping'\n");
		return 1;
	}
	if (print)
		return bm_config_print(keys, &g->cfg) ? 1 : 0;
	apply_log_config(g);
	signal(SIGPIPE, SIG_IGN);
	bm_map_init(&g->revoked_jti);
	bm_map_init(&g->revoked_before);
	g->base = event_base_new();
	if (!g->base || metrics_open(g))
		return 1;
	g->tick = event_new(g->base, -1, EV_PERSIST, on_tick, g);
	g->reap_ev = event_new(g->base, -1, 0, on_reap, g);
	ready_ev = event_new(g->base, -1, EV_PERSIST, on_ready_check, g);
	if (!g->tick || !g->reap_ev || !ready_ev)
		return 1;
	event_add(g->tick, &sec);
	event_add(ready_ev, &fast);
	if (sig_sess_listen(g) || sig_admin_open(g) || sig_link_open(g) || cluster_open(g)) {
		bm_err("signal", "start-up failed");
		goto out;
	}
	ev_term = evsignal_new(g->base, SIGTERM, on_term, g);
	ev_int = evsignal_new(g->base, SIGINT, on_term, g);
	ev_hup = evsignal_new(g->base, SIGHUP, on_hup, g);
	event_add(ev_term, NULL);
	event_add(ev_int, NULL);
	event_add(ev_hup, NULL);
	event_base_dispatch(g->base);
	rc = 0;
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
out:
	sig_sess_stop_listening(g);
	{
		const char *k;
		void *v;
		for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);) {
			struct sig_sess *s = v;
			if (s->state != SIG_DEAD) {
				s->state = SIG_OPEN;
				sig_sess_close(g, s, 1001, "server shutting down");
			}
		}
		for (struct sig_sess *s = g->lru_head; s; s = s->lru_next)
			if (s->state != SIG_DEAD) {
				s->state = SIG_DEAD;
				s->reap_next = g->reap;
				g->reap = s;
			}
		sig_sess_reap(g);
	}
	bm_map_release(&g->sessions);
	sig_idtab_release(&g->by_id);
	bm_cluster_free(g->cluster);
	sig_link_close(g);
	bm_admin_free(g->admin);
	bm_tls_config_unref(g->tls);
	sig_auth_release(g);
	event_free(g->tick);
	event_free(g->reap_ev);
	if (g->flush_ev)
		event_free(g->flush_ev);
	free(g->corked);
	bm_uring_release(&g->uring);
	if (g->read_ev)
		event_free(g->read_ev);
	free(g->readq);
	free(g->rdbuf);
	event_free(ready_ev);
	bm_metrics_free(g->m.reg);
	free(g->rbuf);
	event_base_free(g->base);
	bm_info("signal", "stopped");
	return rc;
}
