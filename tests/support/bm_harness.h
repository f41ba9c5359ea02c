/*
 * bm_harness.h - integration tests: real daemons on real sockets.
 *
 * Every node runs in its own directory under one temporary root, with a
 * generated JSON config whose listeners bind port 0; the harness waits for
 * the node's ready file (the daemon writes it once serving) rather than
 * sleeping, kills every process it started at exit (also on a failed
 * assertion), and bm_h_check_logs() fails a test whose logs hold a
 * sanitizer report.  Binaries come from $BIMIP_BIN (default build/bin).
 */
#ifndef BM_HARNESS_H
#define BM_HARNESS_H

#include <jansson.h>
#include <sys/types.h>

struct bm_h_node {
	pid_t pid;
	int server;                 /* 1 server, 0 signal */
	char name[32];
	char dir[320];
	char cfg[400];
	char log[400];
	char ready[400];
	char zmq[128];              /* server: bound ZeroMQ endpoint */
	char admin[64];             /* host:port of the admin API */
	char ws[64];                /* signal: host:port */
	char url[128];              /* signal: ws://host:port/ */
	char gossip[160];           /* gossip address, when clustered */
	const char *const *prefix;  /* argv run before the daemon, or NULL */
};

/* Create the temporary root (once) and register the exit cleanup. */
void bm_h_init(void);
const char *bm_h_root(void);

/* Start a server / a signal with extra config (a JSON object text, may be
 * NULL) merged over the test defaults; waits until ready (or fails). */
int bm_h_start_server(struct bm_h_node *n, const char *name, const char *extra);
int bm_h_start_signal(struct bm_h_node *n, const char *name,
		      const struct bm_h_node *const *servers, int nservers,
		      const char *extra);
/* Nodes started from now on bind their default listeners (listen.zmq,
 * listen.admin, listen.ws) to ip, port 0, instead of 127.0.0.1; NULL goes
 * back to 127.0.0.1.  Bound addresses come from the ready file as before. */
void bm_h_set_host(const char *ip);
/* Nodes started from now on run as prefix + daemon argv, e.g.
 * { "ip", "netns", "exec", "ns1", NULL } (the prefix must exec the daemon in
 * place, so the pid is the daemon's).  Borrowed: argv must outlive the
 * nodes, which keep it for bm_h_restart.  NULL = run the daemon directly. */
void bm_h_set_exec_prefix(const char *const *argv);
/* Start again with the same config, data, ZeroMQ endpoint and prefix. */
int bm_h_restart(struct bm_h_node *n);
/* Send sig and wait (bounded) for the exit; returns the exit status, 128+N
 * for a death by signal N, or -1 on timeout (then SIGKILLed). */
int bm_h_stop(struct bm_h_node *n, int sig);
/* Wait until the admin API answers /readyz with 200. */
int bm_h_wait_readyz(struct bm_h_node *n, int timeout_ms);

/* A token from a server's admin API (malloc'd; NULL on failure). */
char *bm_h_token(const struct bm_h_node *server, const char *eid,
		 const char *device, int ttl_s);
/* Minimal HTTP/1.1 client: returns the status, body into out. */
int bm_h_http(const char *hostport, const char *method, const char *path,
	      const char *key, const char *body, char *out, size_t cap);
/* The value of the sample called name (labels included, as in
 * "x_bucket{le=\"1\"}") in the Prometheus text of a /metrics answer; -1
 * when it has no such sample. */
long bm_h_metric_in(const char *text, const char *name);

/* Servers a signal reports up (GET /v1/status); -1 when it does not answer.
 * Thread-safe. */
int bm_h_servers_up(const struct bm_h_node *sig);
/* Polls until sig reports exactly want servers up, or timeout_ms passes;
 * returns the last count (want on success). */
int bm_h_wait_servers_up(const struct bm_h_node *sig, int want, int timeout_ms);
/* Member id as n's gossip sees it (GET /v1/cluster/members): its state
 * ("alive", "suspect", "dead", "left"; "" when n does not know it) into
 * state, and its advertised admin address into admin (may be NULL).
 * Returns 0, or -1 when n does not answer. */
int bm_h_member(const struct bm_h_node *n, const char *id, char *state, size_t cap,
		char *admin, size_t admin_cap);

/* 1 if the node's log contains needle. */
int bm_h_log_has(const struct bm_h_node *n, const char *needle);
/* 0 when no log under the root shows a sanitizer report. */
int bm_h_check_logs(void);

/* The admin key every test node uses. */
#define BM_H_ADMIN_KEY "test-admin-key"

#endif
