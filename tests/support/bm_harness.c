#include "bm_harness.h"

#include "bm_httpc.h"
#include "bm_time.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_NODES 32

static char root[256];
/* Every node started, by value: a test's nodes may live on its stack,
 * gone once it returns (or fails, longjmp'ing out), and both the exit
 * cleanup and the sanitizer check still need their pids and logs. */
struct started {
	pid_t pid;                  /* 0 once stopped and reaped */
	char name[32];
	char log[400];
};
static struct started nodes[MAX_NODES];
static int n_nodes;

static void started_pid_gone(pid_t pid)
{
	for (int i = 0; pid > 0 && i < n_nodes; i++)
		if (nodes[i].pid == pid)
			nodes[i].pid = 0;
}
static char host[48] = "127.0.0.1";
static const char *const *prefix;

static void cleanup(void)
{
	for (int i = 0; i < n_nodes; i++)
		if (nodes[i].pid > 0) {
			kill(nodes[i].pid, SIGKILL);
			waitpid(nodes[i].pid, NULL, 0);
			nodes[i].pid = 0;
		}
	if (root[0] && !getenv("BIMIP_KEEP_TEST_DIR")) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
		if (system(cmd) != 0)
			fprintf(stderr, "harness: cannot remove '%s'\n", root);
	}
}

static void on_fatal(int sig)
{
	cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

void bm_h_init(void)
{
	const char *tmp = getenv("TMPDIR");

	if (root[0])
		return;
	snprintf(root, sizeof(root), "%s/bimip-it.XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		exit(1);
	}
	atexit(cleanup);
	signal(SIGABRT, on_fatal);
	signal(SIGSEGV, on_fatal);
	signal(SIGTERM, on_fatal);
	signal(SIGINT, on_fatal);
}

const char *bm_h_root(void)
{
	return root;
}

void bm_h_set_host(const char *ip)
{
	snprintf(host, sizeof(host), "%s", ip ? ip : "127.0.0.1");
}

void bm_h_set_exec_prefix(const char *const *argv)
{
	prefix = argv;
}

static const char *bin_dir(void)
{
	const char *b = getenv("BIMIP_BIN");
	return b && *b ? b : "build/bin";
}

static int write_config(struct bm_h_node *n, json_t *cfg, const char *extra)
{
	if (extra) {
		json_error_t e;
		json_t *x = json_loads(extra, 0, &e);
		if (!x) {
			fprintf(stderr, "harness: bad extra config: %s\n", e.text);
			return -1;
		}
		json_object_update_recursive(cfg, x);
		json_decref(x);
	}
	return json_dump_file(cfg, n->cfg, JSON_INDENT(2));
}

static int spawn(struct bm_h_node *n)
{
	char exe[512];
	const char *argv[16];
	int fd, k = 0, parent_is_main;
	pid_t pid, parent;

	snprintf(exe, sizeof(exe), "%s/%s", bin_dir(), n->server ? "bimip-server" : "bimip-signal");
	for (; n->prefix && k < 10 && n->prefix[k]; k++)
		argv[k] = n->prefix[k];
	argv[k++] = exe;
	argv[k++] = "-c";
	argv[k++] = n->cfg;
	argv[k++] = "-r";
	argv[k++] = n->ready;
	argv[k] = NULL;
	unlink(n->ready);
	parent = getpid();
	parent_is_main = (pid_t)syscall(SYS_gettid) == parent;
	pid = fork();
	if (pid == -1)
		return -1;
	if (pid == 0) {
		/* Dies with the test, however the test ends (even SIGKILL by a
		 * timeout, when no exit cleanup runs).  The signal comes when
		 * the forking *thread* ends: only for the main thread (the soak
		 * restarts nodes from a thread that ends before the checks). */
		if (parent_is_main &&
		    (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent))
			_exit(126);
		fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		execvp(argv[0], (char *const *)argv);
		fprintf(stderr, "harness: cannot exec '%s': %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	n->pid = pid;
	for (int i = 0; i < n_nodes; i++)
		if (!strcmp(nodes[i].log, n->log)) {
			nodes[i].pid = pid;
			return 0;
		}
	if (n_nodes < MAX_NODES) {
		nodes[n_nodes].pid = pid;
		snprintf(nodes[n_nodes].name, sizeof(nodes[n_nodes].name), "%s", n->name);
		snprintf(nodes[n_nodes].log, sizeof(nodes[n_nodes].log), "%s", n->log);
		n_nodes++;
	} else {
		fprintf(stderr, "harness: more than %d nodes: %s is not tracked\n", MAX_NODES,
			n->name);
	}
	return 0;
}

static void tail_log(const struct bm_h_node *n)
{
	char cmd[sizeof(n->log) + 32];

	snprintf(cmd, sizeof(cmd), "tail -n 20 '%s' >&2", n->log);
	if (system(cmd) != 0)
		fprintf(stderr, "harness: no log '%s'\n", n->log);
}

static int wait_ready(struct bm_h_node *n, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	json_t *r;
	const char *v;
	int status;

	for (;;) {
		if (waitpid(n->pid, &status, WNOHANG) == n->pid) {
			fprintf(stderr, "harness: %s exited during start-up (status %d):\n",
				n->name, status);
			started_pid_gone(n->pid);
			n->pid = 0;
			tail_log(n);
			return -1;
		}
		r = json_load_file(n->ready, 0, NULL);
		if (r)
			break;
		if (bm_mono_ms() > deadline) {
			fprintf(stderr, "harness: %s not ready after %d ms:\n", n->name, timeout_ms);
			tail_log(n);
			return -1;
		}
		/* Polling the file at 5 ms: readiness, not a guess of duration. */
		poll(NULL, 0, 5);
	}
	if ((v = json_string_value(json_object_get(r, "zmq"))))
		snprintf(n->zmq, sizeof(n->zmq), "%s", v);
	if ((v = json_string_value(json_object_get(r, "admin"))))
		snprintf(n->admin, sizeof(n->admin), "%s", v);
	if ((v = json_string_value(json_object_get(r, "gossip"))))
		snprintf(n->gossip, sizeof(n->gossip), "%s", v);
	if ((v = json_string_value(json_object_get(r, "ws"))) && *v) {
		snprintf(n->ws, sizeof(n->ws), "%s", v);
		snprintf(n->url, sizeof(n->url), "ws://%s/", v);
	}
	json_decref(r);
	return 0;
}

static int start(struct bm_h_node *n)
{
	if (spawn(n))
		return -1;
	return wait_ready(n, 30000);
}

static void node_paths(struct bm_h_node *n, const char *name, int server)
{
	memset(n, 0, sizeof(*n));
	bm_h_init();
	n->server = server;
	snprintf(n->name, sizeof(n->name), "%s", name);
	snprintf(n->dir, sizeof(n->dir), "%.255s/%.63s", root, name);
	mkdir(n->dir, 0700);
	snprintf(n->cfg, sizeof(n->cfg), "%.320s/config.json", n->dir);
	snprintf(n->log, sizeof(n->log), "%.320s/log", n->dir);
	snprintf(n->ready, sizeof(n->ready), "%.320s/ready", n->dir);
	n->prefix = prefix;
}

int bm_h_start_server(struct bm_h_node *n, const char *name, const char *extra)
{
	char data[sizeof(n->dir) + 8], zmq[80], admin[64];
	json_t *cfg;
	int rc;

	node_paths(n, name, 1);
	snprintf(data, sizeof(data), "%s/data", n->dir);
	snprintf(zmq, sizeof(zmq), "tcp://%s:0", host);
	snprintf(admin, sizeof(admin), "%s:0", host);
	cfg = json_pack("{s:{s:s}, s:s, s:{s:s, s:s}, s:{s:s}, s:{s:s}, s:{s:s}}",
			"node", "id", name, "data_dir", data,
			"listen", "zmq", zmq, "admin", admin,
			"admin", "key", BM_H_ADMIN_KEY, "queue", "fsync", "group",
			"log", "level", getenv("BIMIP_TEST_DEBUG") ? "debug" : "info");
	rc = write_config(n, cfg, extra);
	json_decref(cfg);
	return rc ? rc : start(n);
}

int bm_h_start_signal(struct bm_h_node *n, const char *name,
		      const struct bm_h_node *const *servers, int nservers,
		      const char *extra)
{
	json_t *cfg, *list = json_array();
	char addr[64];
	int rc;

	node_paths(n, name, 0);
	for (int i = 0; i < nservers; i++)
		json_array_append_new(list, json_string(servers[i]->zmq));
	snprintf(addr, sizeof(addr), "%s:0", host);
	cfg = json_pack("{s:{s:s}, s:{s:s, s:s}, s:{s:s}, s:o, s:{s:s}}",
			"node", "id", name, "listen", "ws", addr, "admin",
			addr, "admin", "key", BM_H_ADMIN_KEY, "servers", list,
			"log", "level", getenv("BIMIP_TEST_DEBUG") ? "debug" : "info");
	rc = write_config(n, cfg, extra);
	json_decref(cfg);
	return rc ? rc : start(n);
}

int bm_h_restart(struct bm_h_node *n)
{
	/* Keep the ZeroMQ endpoint so the signals find the server again. */
	if (n->server && n->zmq[0]) {
		json_t *cfg = json_load_file(n->cfg, 0, NULL);
		if (!cfg)
			return -1;
		json_object_set_new(json_object_get(cfg, "listen"), "zmq", json_string(n->zmq));
		json_dump_file(cfg, n->cfg, JSON_INDENT(2));
		json_decref(cfg);
	}
	return start(n);
}

int bm_h_stop(struct bm_h_node *n, int sig)
{
	uint64_t deadline = bm_mono_ms() + 15000;
	int status;

	if (n->pid <= 0)
		return -1;
	kill(n->pid, sig);
	for (;;) {
		pid_t r = waitpid(n->pid, &status, WNOHANG);
		if (r == n->pid)
			break;
		if (bm_mono_ms() > deadline) {
			kill(n->pid, SIGKILL);
			waitpid(n->pid, NULL, 0);
			started_pid_gone(n->pid);
			n->pid = 0;
			return -1;
		}
		poll(NULL, 0, 5);
	}
	started_pid_gone(n->pid);
	n->pid = 0;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

int bm_h_http(const char *hostport, const char *method, const char *path,
	      const char *key, const char *body, char *out, size_t cap)
{
	return bm_httpc_request(hostport, method, path, key, body, out, cap, 5000);
}

long bm_h_metric_in(const char *text, const char *name)
{
	size_t l = strlen(name);

	for (const char *p = text; (p = strstr(p, name)); p += l)
		if ((p == text || p[-1] == '\n') && p[l] == ' ')
			return atol(p + l + 1);
	return -1;
}

/* GET path from n's admin API as JSON (NULL when it does not answer 200). */
static json_t *admin_json(const struct bm_h_node *n, const char *path)
{
	size_t cap = 1 << 16;
	char *out = malloc(cap);
	json_t *j = NULL;

	if (out && bm_h_http(n->admin, "GET", path, BM_H_ADMIN_KEY, NULL, out, cap) == 200)
		j = json_loads(out, 0, NULL);
	free(out);
	return j;
}

int bm_h_servers_up(const struct bm_h_node *sig)
{
	json_t *st = admin_json(sig, "/v1/status"), *e;
	size_t i;
	int up = 0;

	if (!st)
		return -1;
	json_array_foreach(json_object_get(st, "servers"), i, e)
		up += json_is_true(json_object_get(e, "up"));
	json_decref(st);
	return up;
}

int bm_h_wait_servers_up(const struct bm_h_node *sig, int want, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	int up;

	while ((up = bm_h_servers_up(sig)) != want && bm_mono_ms() < deadline)
		poll(NULL, 0, 20);
	return up;
}

int bm_h_member(const struct bm_h_node *n, const char *id, char *state, size_t cap,
		char *admin, size_t admin_cap)
{
	json_t *m = admin_json(n, "/v1/cluster/members"), *e;
	size_t i;

	snprintf(state, cap, "%s", "");
	if (admin)
		snprintf(admin, admin_cap, "%s", "");
	if (!m)
		return -1;
	json_array_foreach(json_object_get(m, "members"), i, e) {
		if (strcmp(json_string_value(json_object_get(e, "id")) ?: "", id))
			continue;
		snprintf(state, cap, "%s", json_string_value(json_object_get(e, "state")) ?: "");
		if (admin)
			snprintf(admin, admin_cap, "%s",
				 json_string_value(json_object_get(e, "admin")) ?: "");
	}
	json_decref(m);
	return 0;
}

int bm_h_wait_readyz(struct bm_h_node *n, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;

	while (bm_mono_ms() < deadline) {
		if (bm_h_http(n->admin, "GET", "/readyz", NULL, NULL, NULL, 0) == 200)
			return 0;
		poll(NULL, 0, 10);
	}
	return -1;
}

char *bm_h_token(const struct bm_h_node *server, const char *eid, const char *device,
		 int ttl_s)
{
	char err[300];

	return bm_httpc_token(server->admin, BM_H_ADMIN_KEY, eid, device, ttl_s, 5000, err,
			      sizeof(err));
}

int bm_h_log_has(const struct bm_h_node *n, const char *needle)
{
	FILE *f = fopen(n->log, "r");
	char line[4096];
	int found = 0;

	if (!f)
		return 0;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

int bm_h_check_logs(void)
{
	static const char *const bad[] = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
					   "runtime error:", "invariant broken" };
	int problems = 0;

	for (int i = 0; i < n_nodes; i++) {
		struct bm_h_node n;

		memset(&n, 0, sizeof(n));
		snprintf(n.name, sizeof(n.name), "%s", nodes[i].name);
		snprintf(n.log, sizeof(n.log), "%s", nodes[i].log);
		for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++)
			if (bm_h_log_has(&n, bad[j])) {
				fprintf(stderr, "harness: '%s' in the log of %s:\n", bad[j],
					n.name);
				tail_log(&n);
				problems++;
			}
	}
	return problems;
}
