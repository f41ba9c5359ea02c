/*
 * bench_load.c - client load through a signal node: modes `connections`,
 * `pairs` and `fanout` of bimip-bench (docs/performance.md, "Chat load").
 *
 *   connections  N authenticated idle WebSocket sessions held by J child
 *                processes (each from its own 127.x source addresses), F
 *                handshakes in flight per process with requests built
 *                before the clock starts (dialer.h): setup rate, the CPU
 *                the load processes spent per connection, and with
 *                --signal-pid the signal's CPU per connection and VmRSS
 *                before/after divided by N.
 *   pairs        P sender/receiver pairs on separate connections, W
 *                messages in flight per sender (a message leaves the window
 *                with its VersionUpdate, i.e. once stored), T seconds:
 *                delivered messages/s and send-to-receipt latency.  With
 *                --mqtt HOST:PORT the same workload against an MQTT 3.1.1
 *                broker (QoS 1 publish and subscribe, one topic per pair,
 *                the window counted in PUBACKs).
 *   fanout       one user with K subscribers online changes its awareness;
 *                time until all K received the AwarenessNotification.
 *
 * Tokens come from the server's signing key (--key DATA_DIR/token.key,
 * signed here with bm_jwt, fast) or from its admin API (--admin, --admin-key).
 * User names carry a prefix unique to the run, so runs against the same
 * server do not see each other's streams.  Every loop is bounded in count
 * and time.  Output: one "key=value" line per figure (bench.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "bimip_client.h"
#include "bm_buf.h"
#include "bm_err.h"
#include "bm_httpc.h"
#include "bm_jwt.h"
#include "bm_time.h"
#include "dialer.h"
#include "mqtt.h"

struct load_opts {
	const char *mode;
	const char *url;
	const char *key_file;
	const char *admin;
	const char *admin_key;
	const char *mqtt;
	const char *src;        /* first two octets of source addresses, or NULL */
	int n, procs, hold_s, inflight;
	int p, w, t_s, warmup_s, size;
	double rate;            /* pairs: total msgs/s, 0 = as fast as the window allows */
	int write_each;         /* pairs: a write per message, not per burst */
	int k, rounds, interval_ms;
	pid_t signal_pid;
	char run[24];
};

struct minter {
	struct bm_jwt_key *key;
	const char *admin, *admin_key;
};

/* --- helpers ------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
	return bm_mono_ns();
}

/* A token for eid/device (malloc'd, NUL-terminated) or NULL. */
static char *mint(const struct minter *mt, const char *eid, const char *dev)
{
	if (mt->key) {
		struct bm_jwt_claims c;
		struct bm_buf b;

		memset(&c, 0, sizeof(c));
		snprintf(c.sub, sizeof(c.sub), "%s", eid);
		snprintf(c.device, sizeof(c.device), "%s", dev);
		c.exp = bm_wall_s() + 3600;
		bm_buf_init(&b, 0);
		if (bm_jwt_sign(mt->key, &c, &b) || bm_buf_add(&b, "", 1)) {
			bm_buf_release(&b);
			return NULL;
		}
		return (char *)b.data;
	} else {
		char err[300];
		char *tok = bm_httpc_token(mt->admin, mt->admin_key, eid, dev, 3600, 10000,
					   err, sizeof(err));

		if (!tok)
			fprintf(stderr, "bimip-bench: token for '%s': %s\n", eid, err);
		return tok;
	}
}

static int minter_init(struct minter *mt, const struct load_opts *o)
{
	memset(mt, 0, sizeof(*mt));
	if (o->key_file) {
		int rc = bm_jwt_key_load(o->key_file, &mt->key);
		if (rc || !bm_jwt_key_has_private(mt->key)) {
			fprintf(stderr, "bimip-bench: cannot load the signing key '%s': %s\n",
				o->key_file, rc ? bm_strerror(rc) : "no private key");
			return rc ? rc : BM_EINVAL;
		}
		return 0;
	}
	if (o->admin && o->admin_key) {
		mt->admin = o->admin;
		mt->admin_key = o->admin_key;
		return 0;
	}
	fprintf(stderr, "bimip-bench: tokens need --key DATA_DIR/token.key or --admin "
			"HOST:PORT --admin-key KEY\n");
	return BM_EINVAL;
}

static const char *src_addr(const struct load_opts *o, int proc, int i, char *buf, size_t cap)
{
	if (!o->src)
		return NULL;
	/* ~28k ephemeral ports per source address: move on every 20000. */
	snprintf(buf, cap, "%s.%d.%d", o->src, 1 + proc % 250, 1 + (i / 20000) % 250);
	return buf;
}

/* Connect eid/dev with a fresh token; NULL (message printed) on failure. */
static struct bm_client *dial(const struct load_opts *o, const struct minter *mt,
			      const char *eid, const char *dev, const char *src,
			      const char *token)
{
	struct bm_client_opts co = { .url = o->url, .timeout_ms = 10000,
				     .max_message = 16384, .local_addr = src };
	struct bm_client *c = NULL;
	char err[256], *tok = NULL;
	int rc;

	if (!token && !(token = tok = mint(mt, eid, dev))) {
		fprintf(stderr, "bimip-bench: cannot mint a token for '%s'\n", eid);
		return NULL;
	}
	co.token = token;
	rc = bm_client_connect(&c, &co, err, sizeof(err));
	free(tok);
	if (rc) {
		fprintf(stderr, "bimip-bench: connect '%s': %s\n", eid, err);
		return NULL;
	}
	return c;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Latency histogram: 1 us buckets up to 1 s, then one overflow count. */
#define HIST_US 1000000

struct hist {
	uint32_t *b;
	uint64_t n, over, max_us;
};

static int hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->b = calloc(HIST_US, sizeof(*h->b));
	return h->b ? 0 : BM_ENOMEM;
}

static void hist_add(struct hist *h, uint64_t us)
{
	h->n++;
	if (us > h->max_us)
		h->max_us = us;
	if (us >= HIST_US)
		h->over++;
	else
		h->b[us]++;
}

/* The q-quantile in milliseconds (0 if empty). */
static double hist_ms(const struct hist *h, double q)
{
	uint64_t want = (uint64_t)(q * (double)h->n), seen = 0;

	if (!h->n)
		return 0;
	if (want >= h->n)
		want = h->n - 1;
	for (uint64_t i = 0; i < HIST_US; i++) {
		seen += h->b[i];
		if (seen > want)
			return (double)i / 1000.0;
	}
	return (double)h->max_us / 1000.0;
}

/* --- options ----------------------------------------------------------------- */

static void usage(const char *mode)
{
	printf("usage: bimip-bench %s [options]\n"
	       "  -u, --url URL          signal WebSocket url (ws://127.0.0.1:4000/)\n"
	       "      --key FILE         mint tokens with the server's key (DATA_DIR/token.key)\n"
	       "      --admin H:P        or get them from the server admin API ...\n"
	       "      --admin-key KEY    ... with this key\n"
	       "      --src A.B          source addresses A.B.x.y (connections default 127.1;\n"
	       "                         'none' = let the kernel choose)\n"
	       "connections:\n"
	       "  -n, --sessions N       sessions to open (1000)\n"
	       "  -j, --procs J          client processes holding them (4)\n"
	       "      --signal-pid PID   report the signal's (or with --mqtt the broker's)\n"
	       "                         VmRSS per session and CPU per connection\n"
	       "      --mqtt H:P         hold MQTT connections (CONNECT only) instead\n"
	       "      --hold S           keep the sessions S seconds after measuring (0)\n"
	       "      --inflight F       handshakes in flight per process (16): prebuilt\n"
	       "                         requests on one epoll; 0 = one at a time through\n"
	       "                         libbimip-client (always so for wss://)\n"
	       "pairs:\n"
	       "  -p, --pairs P          sender/receiver pairs (100)\n"
	       "  -w, --window W         messages in flight per sender (10)\n"
	       "  -t, --time T           measured seconds (10)\n"
	       "      --warmup S         seconds before measuring (1)\n"
	       "      --size B           message bytes, >= 20 (20)\n"
	       "      --rate R           total messages/s to offer (0 = window-limited)\n"
	       "      --write-each       one write() per message (default: a sender writes the\n"
	       "                         messages due at once, up to W, in one write)\n"
	       "      --mqtt H:P         run against an MQTT 3.1.1 broker (QoS 1) instead\n"
	       "fanout:\n"
	       "  -k, --subscribers K    subscribers online (1000)\n"
	       "  -r, --rounds R         awareness changes (5)\n"
	       "      --interval MS      pause between changes (300; the server allows one\n"
	       "                         per limits.awareness_interval)\n",
	       mode);
}

static int parse_opts(int argc, char **argv, struct load_opts *o)
{
	static const struct option lo[] = {
		{ "url", required_argument, 0, 'u' },
		{ "key", required_argument, 0, 'K' },
		{ "admin", required_argument, 0, 'A' },
		{ "admin-key", required_argument, 0, 'B' },
		{ "src", required_argument, 0, 'S' },
		{ "sessions", required_argument, 0, 'n' },
		{ "procs", required_argument, 0, 'j' },
		{ "signal-pid", required_argument, 0, 'G' },
		{ "hold", required_argument, 0, 'H' },
		{ "inflight", required_argument, 0, 'F' },
		{ "pairs", required_argument, 0, 'p' },
		{ "window", required_argument, 0, 'w' },
		{ "time", required_argument, 0, 't' },
		{ "warmup", required_argument, 0, 'U' },
		{ "size", required_argument, 0, 'Z' },
		{ "rate", required_argument, 0, 'R' },
		{ "write-each", no_argument, 0, 'E' },
		{ "mqtt", required_argument, 0, 'M' },
		{ "subscribers", required_argument, 0, 'k' },
		{ "rounds", required_argument, 0, 'r' },
		{ "interval", required_argument, 0, 'I' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	int ch;

	o->mode = argv[0];
	o->url = "ws://127.0.0.1:4000/";
	o->n = 1000;
	o->procs = 4;
	o->inflight = 16;
	o->p = 100;
	o->w = 10;
	o->t_s = 10;
	o->warmup_s = 1;
	o->size = 20;
	o->k = 1000;
	o->rounds = 5;
	o->interval_ms = 300;
	o->src = !strcmp(o->mode, "connections") ? "127.1" : NULL;
	snprintf(o->run, sizeof(o->run), "b%x%x", (unsigned)getpid(),
		 (unsigned)(bm_wall_ms() % 0xfffff));
	optind = 1;
	while ((ch = getopt_long(argc, argv, "u:n:j:p:w:t:k:r:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'u': o->url = optarg; break;
		case 'K': o->key_file = optarg; break;
		case 'A': o->admin = optarg; break;
		case 'B': o->admin_key = optarg; break;
		case 'S': o->src = strcmp(optarg, "none") ? optarg : NULL; break;
		case 'n': o->n = atoi(optarg); break;
		case 'j': o->procs = atoi(optarg); break;
		case 'G': o->signal_pid = (pid_t)atoi(optarg); break;
		case 'H': o->hold_s = atoi(optarg); break;
		case 'F': o->inflight = atoi(optarg); break;
		case 'p': o->p = atoi(optarg); break;
		case 'w': o->w = atoi(optarg); break;
		case 't': o->t_s = atoi(optarg); break;
		case 'U': o->warmup_s = atoi(optarg); break;
		case 'Z': o->size = atoi(optarg); break;
		case 'R': o->rate = atof(optarg); break;
		case 'E': o->write_each = 1; break;
		case 'M': o->mqtt = optarg; break;
		case 'k': o->k = atoi(optarg); break;
		case 'r': o->rounds = atoi(optarg); break;
		case 'I': o->interval_ms = atoi(optarg); break;
		case 'h': usage(o->mode); return 1;
		default: usage(o->mode); return -1;
		}
	}
	if (o->n < 1 || o->procs < 1 || o->procs > 64 || o->inflight < 0 ||
	    o->inflight > 4096 || o->p < 1 || o->p > 5000 ||
	    o->w < 1 || o->w > 10000 || o->t_s < 1 || o->t_s > 3600 || o->warmup_s < 0 ||
	    o->size < 20 || o->size > 1024 || o->k < 1 || o->k > 18000 || o->rounds < 1 ||
	    o->rounds > 1000 || o->rate < 0 || o->interval_ms < 0) {
		fprintf(stderr, "bimip-bench %s: an option is out of range (see --help)\n",
			o->mode);
		return -1;
	}
	return 0;
}

/* --- connections ---------------------------------------------------------- */

static int parse_hostport(const char *hp, char *host, size_t cap, int *port);

struct conn_report {
	int ready;             /* 1: tokens minted, waiting for go; 0: done */
	int ok, failed;
	uint64_t t0, t1;
	uint64_t cpu_ns;       /* this process's CPU time from t0 to t1 */
	char err[160];
};

static uint64_t cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == -1)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ws://A.B.C.D:PORT/path -> dst, "A.B.C.D:PORT" (the Host header) and
 * path.  Returns 0, or -1 when the url is not plain ws:// to a numeric IPv4
 * address (dial through libbimip-client then). */
static int ws_url_ipv4(const char *url, struct sockaddr_in *dst, char *hostport, size_t hcap,
		       char *path, size_t pcap)
{
	const char *p = url + 5, *slash, *colon;
	char host[64];

	if (strncmp(url, "ws://", 5))
		return -1;
	slash = strchr(p, '/');
	if (!slash)
		slash = p + strlen(p);
	colon = memchr(p, ':', (size_t)(slash - p));
	if (!colon || (size_t)(colon - p) >= sizeof(host) || (size_t)(slash - p) >= hcap)
		return -1;
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = 0;
	memset(dst, 0, sizeof(*dst));
	dst->sin_family = AF_INET;
	dst->sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &dst->sin_addr) != 1 || !dst->sin_port)
		return -1;
	snprintf(hostport, hcap, "%.*s", (int)(slash - p), p);
	snprintf(path, pcap, "%s", *slash ? slash : "/");
	return 0;
}

/* The request of connection i of process idx, built before the clock starts:
 * a WebSocket upgrade with a fresh token and key, or an MQTT CONNECT. */
static int conn_job(const struct load_opts *o, const struct minter *mt, int idx, int i,
		    const char *hostport, const char *path, struct dial_job *j)
{
	char eid[160], src[64], req[BM_HTTP_MAX_HEAD];
	const char *sa = src_addr(o, idx, i, src, sizeof(src));
	int n;

	memset(j, 0, sizeof(*j));
	j->fd = -1;
	if (sa) {
		j->src.sin_family = AF_INET;
		if (inet_pton(AF_INET, sa, &j->src.sin_addr) != 1)
			return -1;
	}
	if (o->mqtt) {
		snprintf(eid, sizeof(eid), "%s-c%d-%d", o->run, idx, i);
		n = (int)mqtt_connect_packet((uint8_t *)req, eid);
	} else {
		char *tok;
		snprintf(eid, sizeof(eid), "%s-c%d-%d@bench", o->run, idx, i);
		if (!(tok = mint(mt, eid, "d")) || bm_http_client_key(j->key)) {
			free(tok);
			return -1;
		}
		n = bm_http_upgrade_request(req, sizeof(req), hostport, path, j->key, tok, NULL);
		free(tok);
	}
	if (n <= 0 || !(j->req = malloc((size_t)n)))
		return -1;
	memcpy(j->req, req, (size_t)n);
	j->req_len = (size_t)n;
	return 0;
}

/* One connection process: build every request, report ready, wait for go,
 * connect them all (o->inflight at a time; 0 = one by one through
 * libbimip-client or mqtt_connect, as wss:// always is), report, then hold
 * the connections until the parent closes hold_fd. */
static void conn_child(const struct load_opts *o, const struct minter *mt, int idx, int count,
		       int go_fd, int rep_fd, int hold_fd)
{
	void **held = calloc((size_t)count, sizeof(*held));   /* never used, only kept */
	char **toks = calloc((size_t)count, sizeof(*toks));
	struct dial_job *jobs = NULL;
	struct conn_report r = { .ready = 1 };
	struct sockaddr_in dst;
	char eid[160], src[64], host[64], hostport[300], path[512], b;
	int port = 0, fast = 0;

	if (!held || !toks || (o->mqtt && parse_hostport(o->mqtt, host, sizeof(host), &port)))
		_exit(1);
	if (o->inflight > 0) {
		if (o->mqtt) {
			memset(&dst, 0, sizeof(dst));
			dst.sin_family = AF_INET;
			dst.sin_port = htons((uint16_t)port);
			fast = inet_pton(AF_INET, host, &dst.sin_addr) == 1;
		} else {
			fast = !ws_url_ipv4(o->url, &dst, hostport, sizeof(hostport), path,
					    sizeof(path));
		}
	}
	if (fast) {
		if (!(jobs = calloc((size_t)count, sizeof(*jobs))))
			_exit(1);
		for (int i = 0; i < count; i++)
			if (conn_job(o, mt, idx, i, hostport, path, &jobs[i]))
				_exit(1);
	}
	for (int i = 0; i < count && !o->mqtt && !fast; i++) {
		snprintf(eid, sizeof(eid), "%s-c%d-%d@bench", o->run, idx, i);
		if (!(toks[i] = mint(mt, eid, "d")))
			_exit(1);
	}
	if (write(rep_fd, &r, sizeof(r)) != (ssize_t)sizeof(r) || read(go_fd, &b, 1) != 1)
		_exit(1);
	r.ready = 0;
	r.cpu_ns = cpu_ns();
	r.t0 = now_ns();
	if (fast) {
		struct dial_result dr;
		if (dial_run(o->mqtt ? DIAL_MQTT : DIAL_WS, &dst, jobs, count, o->inflight, 10000,
			     &dr))
			_exit(1);
		r.ok = dr.ok;
		r.failed = dr.failed;
		snprintf(r.err, sizeof(r.err), "%s", dr.err);
	}

	for (int i = 0; i < count && !fast && r.failed < 10; i++) {
		struct bm_client_opts co = { .url = o->url, .token = toks[i], .timeout_ms = 10000,
					     .max_message = 16384, .commit_every = -1,
					     .local_addr = src_addr(o, idx, i, src, sizeof(src)) };
		char err[256];
		int rc;

		if (o->mqtt) {
			struct mqtt *q = NULL;
			snprintf(eid, sizeof(eid), "%s-c%d-%d", o->run, idx, i);
			rc = mqtt_connect(&q, host, port, co.local_addr, eid, 10000, err, sizeof(err));
			held[i] = q;
		} else {
			struct bm_client *c = NULL;
			rc = bm_client_connect(&c, &co, err, sizeof(err));
			held[i] = c;
		}

		if (rc) {
			if (!r.failed)
				snprintf(r.err, sizeof(r.err), "%.150s", err);
			r.failed++;
			continue;
		}
		r.ok++;
		free(toks[i]);
		toks[i] = NULL;
	}
	r.t1 = now_ns();
	r.cpu_ns = cpu_ns() - r.cpu_ns;
	if (write(rep_fd, &r, sizeof(r)) != (ssize_t)sizeof(r))
		_exit(1);
	for (int i = 0; jobs && i < count; i++) {
		free(jobs[i].req);
		jobs[i].req = NULL;
	}
	/* Hold until the parent closes the pipe; exit drops every session. */
	while (read(hold_fd, &b, 1) > 0)
		;
	_exit(0);
}

static long vm_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (!(f = fopen(path, "r")))
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* User + system CPU of every thread of pid so far, in clock ticks (-1 if
 * unknown). */
static long long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, st;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY)) == -1)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	/* The command name may hold spaces and parentheses: fields 14 and 15
	 * count from the last ')'. */
	if (!(p = strrchr(buf, ')')) ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (long long)(ut + st);
}

static int mode_connections(const struct load_opts *o, const struct minter *mt)
{
	int go[2], rep[2], hold[2], ok = 0, failed = 0, ready = 0, done = 0, rc = 1;
	uint64_t t0 = UINT64_MAX, t1 = 0, deadline, load_ns = 0;
	long long ticks0 = -1, ticks1 = -1;
	long rss0 = -1, rss1 = -1;
	pid_t *kids = calloc((size_t)o->procs, sizeof(*kids));
	char err[160] = "";

	if (!kids || pipe(go) == -1 || pipe(rep) == -1 || pipe(hold) == -1) {
		perror("bimip-bench: pipe");
		return 1;
	}
	fflush(NULL);
	for (int i = 0; i < o->procs; i++) {
		int count = o->n / o->procs + (i < o->n % o->procs);
		pid_t pid = fork();

		if (pid == -1) {
			perror("bimip-bench: fork");
			goto out;
		}
		if (pid == 0) {
			close(go[1]);
			close(rep[0]);
			close(hold[1]);
			conn_child(o, mt, i, count, go[0], rep[1], hold[0]);
		}
		kids[i] = pid;
	}
	close(go[0]);
	close(rep[1]);
	close(hold[0]);
	/* Minting takes ~1 ms a token per core; allow for it. */
	deadline = bm_mono_ms() + 60000 + (uint64_t)o->n * 5;
	while (ready + done < 2 * o->procs && bm_mono_ms() < deadline) {
		struct conn_report r;
		struct pollfd pfd = { rep[0], POLLIN, 0 };

		if (poll(&pfd, 1, 1000) <= 0)
			continue;
		if (read(rep[0], &r, sizeof(r)) != (ssize_t)sizeof(r)) {
			fprintf(stderr, "bimip-bench: a connection process died\n");
			goto out;
		}
		if (r.ready) {
			if (++ready == o->procs) {
				if (o->signal_pid) {
					rss0 = vm_rss_kb(o->signal_pid);
					ticks0 = cpu_ticks(o->signal_pid);
				}
				for (int i = 0; i < o->procs; i++)
					if (write(go[1], "g", 1) != 1)
						goto out;
			}
			continue;
		}
		done++;
		load_ns += r.cpu_ns;
		ok += r.ok;
		failed += r.failed;
		if (r.t0 < t0)
			t0 = r.t0;
		if (r.t1 > t1)
			t1 = r.t1;
		if (r.failed && !err[0])
			snprintf(err, sizeof(err), "%s", r.err);
	}
	if (done < o->procs) {
		fprintf(stderr, "bimip-bench: connection processes did not finish in time\n");
		goto out;
	}
	if (o->signal_pid) {
		ticks1 = cpu_ticks(o->signal_pid);
		/* Let the signal finish the last handshakes before reading. */
		usleep(1000 * 1000);
		rss1 = vm_rss_kb(o->signal_pid);
	}
	printf("connections %s N=%d procs=%d ok=%d failed=%d setup_s=%.3f conn/s=%.0f",
	       o->mqtt ? "mosquitto" : "bimip", o->n, o->procs, ok, failed, (double)(t1 - t0) / 1e9,
	       ok ? (double)ok / ((double)(t1 - t0) / 1e9) : 0.0);
	if (rss0 >= 0 && rss1 >= 0)
		printf(" broker_rss_before_kb=%ld broker_rss_after_kb=%ld bytes/session=%.0f",
		       rss0, rss1, ok ? (double)(rss1 - rss0) * 1024.0 / ok : 0.0);
	/* CPU per connection while connecting: the broker process (all its
	 * threads; clock ticks, so +-10 ms over the window) and the client
	 * processes together.  A load generator near one core per
	 * (setup_s) would be what limits the rate. */
	if (ok && ticks0 >= 0 && ticks1 >= 0)
		printf(" broker_us/conn=%.1f",
		       (double)(ticks1 - ticks0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / ok);
	if (ok)
		printf(" load_us/conn=%.1f load_cores=%.2f", (double)load_ns / 1e3 / ok,
		       t1 > t0 ? (double)load_ns / (double)(t1 - t0) : 0.0);
	printf("\n");
	if (failed)
		printf("# first failure: %s\n", err);
	fflush(stdout);
	if (o->hold_s > 0)
		sleep((unsigned)o->hold_s);
	rc = ok > 0 && !failed ? 0 : 1;
out:
	close(hold[1]);
	close(go[1]);
	for (int i = 0; i < o->procs; i++) {
		if (kids[i] <= 0)
			continue;
		if (rc)
			kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	close(rep[0]);
	free(kids);
	return rc;
}

/* --- pairs ------------------------------------------------------------------ */

struct peer {
	struct bm_client *c;
	struct mqtt *q;
	int sender;
	int write_each;         /* --write-each: no corking, PUBACKs included */
	int inflight;
	uint16_t packet_id;
	uint64_t seq;
	uint64_t next_due;
	char to[160];
	char topic[64];
};

struct pair_stats {
	uint64_t t0, t1;        /* measured window */
	uint64_t sent, acked, received, delivered, errors;
	uint64_t writes;        /* sender writes: sent/writes messages per write */
	struct hist lat;
};

static bimip_MessageScheme msg;

static int peer_send(const struct load_opts *o, struct peer *p, uint64_t now)
{
	char text[1100], local[32];
	int n = snprintf(text, sizeof(text), "%020" PRIu64, now);

	memset(text + n, 'x', (size_t)(o->size - n));
	text[o->size] = 0;
	if (p->q) {
		if (++p->packet_id == 0)
			p->packet_id = 1;
		return mqtt_publish(p->q, p->topic, text, (size_t)o->size, 1, p->packet_id);
	}
	snprintf(local, sizeof(local), "%" PRIu64, ++p->seq);
	return bm_client_send_text(p->c, p->to, text, local);
}

static void on_payload(struct pair_stats *st, const char *text, size_t len)
{
	uint64_t now = now_ns(), sent;
	char ts[21];

	if (len < 20)
		return;
	memcpy(ts, text, 20);
	ts[20] = 0;
	sent = strtoull(ts, NULL, 10);
	st->received++;
	if (now < st->t0 || now > st->t1 || sent > now)
		return;
	st->delivered++;
	hist_add(&st->lat, (now - sent) / 1000);
}

static void on_error(struct pair_stats *st, const bimip_ErrorMessage *e)
{
	if (st->errors++ < 3)
		fprintf(stderr, "bimip-bench: error %d on %s: %s\n", (int)e->code, e->route,
			e->message);
}

struct drain_ctx {
	struct peer *p;
	struct pair_stats *st;
};

static void on_stanza(void *ud, bimip_MessageScheme *m)
{
	struct drain_ctx *d = ud;
	struct peer *p = d->p;
	struct pair_stats *st = d->st;

	switch (m->which_payload) {
	case bimip_MessageScheme_version_update_tag:
		if (p->sender && p->inflight > 0) {
			p->inflight--;
			st->acked++;
		}
		break;
	case bimip_MessageScheme_chat_message_tag:
		if (!p->sender)
			on_payload(st, m->payload.chat_message.payload.text,
				   strlen(m->payload.chat_message.payload.text));
		break;
	case bimip_MessageScheme_error_message_tag:
		on_error(st, &m->payload.error_message);
		/* A refused message leaves the window too. */
		if (p->sender && p->inflight > 0)
			p->inflight--;
		break;
	default:
		break;
	}
}

/* Take what the peer has received.  Returns 0 or a connection error. */
static int peer_drain(struct peer *p, struct pair_stats *st)
{
	struct drain_ctx d = { p, st };
	int rc;

	if (p->q) {
		struct mqtt_ev ev;
		/* The PUBACKs of what one read brought leave in one write. */
		if (!p->write_each)
			mqtt_cork(p->q);
		while ((rc = mqtt_next(p->q, &ev)) == 0) {
			if (ev.type == MQTT_EV_PUBACK && p->inflight > 0) {
				p->inflight--;
				st->acked++;
			} else if (ev.type == MQTT_EV_PUBLISH) {
				on_payload(st, (const char *)ev.payload, ev.payload_len);
			}
		}
		if (mqtt_uncork(p->q) && rc == BM_EAGAIN)
			rc = BM_EIO;
		return rc == BM_EAGAIN ? 0 : rc;
	}
	return bm_client_drain(p->c, &msg, on_stanza, &d);
}

static int parse_hostport(const char *hp, char *host, size_t cap, int *port)
{
	const char *colon = strrchr(hp, ':');

	if (!colon || (size_t)(colon - hp) >= cap)
		return BM_EINVAL;
	memcpy(host, hp, (size_t)(colon - hp));
	host[colon - hp] = 0;
	*port = atoi(colon + 1);
	return *port > 0 && *port < 65536 ? 0 : BM_EINVAL;
}

static int pairs_connect(const struct load_opts *o, const struct minter *mt, struct peer *peers)
{
	char host[64], id[96], eid[160], src[64];
	int port = 0;

	if (o->mqtt && parse_hostport(o->mqtt, host, sizeof(host), &port)) {
		fprintf(stderr, "bimip-bench: --mqtt wants HOST:PORT, not '%s'\n", o->mqtt);
		return -1;
	}
	/* Receivers (subscribers) first, so nothing is sent before they listen. */
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < o->p; i++) {
			struct peer *p = &peers[pass == 0 ? 2 * i + 1 : 2 * i];
			const char *sa = src_addr(o, 0, 2 * i + pass, src, sizeof(src));

			p->sender = pass == 1;
			p->write_each = o->write_each;
			snprintf(p->topic, sizeof(p->topic), "bench/%s/%d", o->run, i);
			snprintf(p->to, sizeof(p->to), "%s-r%d@bench", o->run, i);
			if (o->mqtt) {
				char err[256];
				snprintf(id, sizeof(id), "%s-%c%d", o->run, p->sender ? 's' : 'r', i);
				if (mqtt_connect(&p->q, host, port, sa, id, 10000, err, sizeof(err))) {
					fprintf(stderr, "bimip-bench: %s\n", err);
					return -1;
				}
				if (!p->sender && mqtt_subscribe(p->q, p->topic, 1, 10000)) {
					fprintf(stderr, "bimip-bench: subscribe '%s' refused\n", p->topic);
					return -1;
				}
				continue;
			}
			snprintf(eid, sizeof(eid), "%s-%c%d@bench", o->run, p->sender ? 's' : 'r', i);
			if (!(p->c = dial(o, mt, eid, "d", sa, NULL)))
				return -1;
		}
	}
	return 0;
}

static int mode_pairs(const struct load_opts *o, const struct minter *mt)
{
	int np = 2 * o->p, rc = 1, tls = !strncmp(o->url, "wss:", 4);
	struct peer *peers = calloc((size_t)np, sizeof(*peers));
	struct pollfd *pfd = calloc((size_t)np, sizeof(*pfd));
	struct pair_stats st;
	uint64_t start, end, interval = 0, drain_until;
	const char *what = o->mqtt ? "mosquitto" : "bimip";
	int pending;

	memset(&st, 0, sizeof(st));
	if (!peers || !pfd || hist_init(&st.lat))
		goto out;
	if (pairs_connect(o, mt, peers))
		goto out;
	for (int i = 0; i < np; i++) {
		pfd[i].fd = peers[i].q ? mqtt_fd(peers[i].q) : bm_client_fd(peers[i].c);
		pfd[i].events = POLLIN;
	}
	start = now_ns();
	st.t0 = start + (uint64_t)o->warmup_s * 1000000000ull;
	st.t1 = st.t0 + (uint64_t)o->t_s * 1000000000ull;
	end = st.t1;
	if (o->rate > 0)
		interval = (uint64_t)(1e9 * o->p / o->rate);
	for (int i = 0; i < np; i += 2)
		peers[i].next_due = start + (interval ? interval * (uint64_t)i / 2 / o->p : 0);
	/* Send phase, then up to 2 s for what is in flight. */
	drain_until = end + 2000000000ull;
	for (;;) {
		uint64_t now = now_ns();
		int inflight = 0, timeout;

		if (now >= end) {
			for (int i = 0; i < np; i += 2)
				inflight += peers[i].inflight;
			if (!inflight || now >= drain_until)
				break;
		} else {
			for (int i = 0; i < np; i += 2) {
				struct peer *p = &peers[i];
				int failed = 0;
				uint64_t before = st.sent;
				/* What is due now leaves in one write (both protocols). */
				if (!o->write_each && p->q)
					mqtt_cork(p->q);
				else if (!o->write_each)
					bm_client_cork(p->c);
				for (int b = 0; b < o->w && p->inflight < o->w &&
				     (!interval || p->next_due <= now); b++) {
					if ((failed = peer_send(o, p, now_ns())) != 0)
						break;
					p->inflight++;
					st.sent++;
					p->next_due += interval;
				}
				if (st.sent > before)
					st.writes += o->write_each ? st.sent - before : 1;
				if ((p->q ? mqtt_uncork(p->q) : bm_client_uncork(p->c)) || failed) {
					fprintf(stderr, "bimip-bench: send failed\n");
					goto out;
				}
				/* Do not save up sends across a stall. */
				if (interval && p->next_due + 100000000ull < now)
					p->next_due = now;
			}
		}
		pending = 0;
		if (tls)
			for (int i = 0; i < np; i++)
				pending |= peers[i].c && bm_client_pending(peers[i].c);
		timeout = pending ? 0 : interval ? 1 : 100;
		if (poll(pfd, (nfds_t)np, timeout) == -1 && errno != EINTR)
			goto out;
		for (int i = 0; i < np; i++) {
			if (!pfd[i].revents && !(tls && peers[i].c && bm_client_pending(peers[i].c)))
				continue;
			if (peer_drain(&peers[i], &st)) {
				fprintf(stderr, "bimip-bench: %s %d lost its connection\n",
					peers[i].sender ? "sender" : "receiver", i / 2);
				goto out;
			}
		}
	}
	printf("pairs %s P=%d W=%d T=%ds size=%d rate=%s%.0f sent=%" PRIu64 " acked=%" PRIu64
	       " received=%" PRIu64 " delivered=%" PRIu64 " msgs/s=%.0f p50=%.3fms p99=%.3fms"
	       " p999=%.3fms max=%.3fms errors=%" PRIu64 " writes=%s msgs_per_write=%.2f\n",
	       what, o->p, o->w, o->t_s, o->size, o->rate > 0 ? "" : "max/", o->rate, st.sent,
	       st.acked, st.received, st.delivered, (double)st.delivered / o->t_s,
	       hist_ms(&st.lat, 0.50), hist_ms(&st.lat, 0.99), hist_ms(&st.lat, 0.999),
	       (double)st.lat.max_us / 1000.0, st.errors, o->write_each ? "each" : "due",
	       st.writes ? (double)st.sent / (double)st.writes : 0.0);
	rc = st.delivered > 0 ? 0 : 1;
out:
	for (int i = 0; peers && i < np; i++) {
		if (peers[i].c)
			bm_client_close(peers[i].c);
		mqtt_close(peers[i].q);
	}
	free(st.lat.b);
	free(peers);
	free(pfd);
	return rc;
}

/* --- fanout ------------------------------------------------------------------ */

/* Owner adds every subscriber, W requests in flight.  Returns 0 or -1. */
static int fanout_add(const struct load_opts *o, struct bm_client *owner)
{
	int sent = 0, answered = 0, refused = 0;
	uint64_t deadline = bm_mono_ms() + 60000;
	char eid[160];

	while (answered < o->k && bm_mono_ms() < deadline) {
		int rc;
		while (sent < o->k && sent - answered < 64) {
			snprintf(eid, sizeof(eid), "%s-f%d@bench", o->run, sent);
			if (bm_client_add_subscriber(owner, eid))
				return -1;
			sent++;
		}
		rc = bm_client_recv(owner, &msg, 1000);
		if (rc == BM_ETIMEDOUT || rc == BM_EDECODE)
			continue;
		if (rc)
			return -1;
		if (msg.which_payload == bimip_MessageScheme_subscriber_add_response_tag) {
			answered++;
		} else if (msg.which_payload == bimip_MessageScheme_error_message_tag) {
			answered++;
			if (refused++ < 3)
				fprintf(stderr, "bimip-bench: subscriber add refused: %d %s\n",
					(int)msg.payload.error_message.code,
					msg.payload.error_message.message);
		}
	}
	return answered == o->k && !refused ? 0 : -1;
}

static int mode_fanout(const struct load_opts *o, const struct minter *mt)
{
	struct bm_client **subs = calloc((size_t)o->k, sizeof(*subs)), *owner = NULL;
	struct pollfd *pfd = calloc((size_t)o->k + 1, sizeof(*pfd));
	uint64_t *got = calloc((size_t)o->k, sizeof(*got));
	double *all = calloc((size_t)o->rounds, sizeof(*all));
	struct hist each;
	char oeid[160], eid[160], src[64];
	uint64_t notified = 0;
	int rc = 1, done_rounds = 0;

	memset(&each, 0, sizeof(each));
	if (!subs || !pfd || !got || !all || hist_init(&each))
		goto out;
	snprintf(oeid, sizeof(oeid), "%s-o@bench", o->run);
	if (!(owner = dial(o, mt, oeid, "d", src_addr(o, 0, 0, src, sizeof(src)), NULL)))
		goto out;
	/* Subscribers added while offline cost no notification each. */
	if (fanout_add(o, owner)) {
		fprintf(stderr, "bimip-bench: adding %d subscribers failed\n", o->k);
		goto out;
	}
	for (int i = 0; i < o->k; i++) {
		snprintf(eid, sizeof(eid), "%s-f%d@bench", o->run, i);
		if (!(subs[i] = dial(o, mt, eid, "d", src_addr(o, 0, i + 1, src, sizeof(src)), NULL)))
			goto out;
		pfd[i].fd = bm_client_fd(subs[i]);
		pfd[i].events = POLLIN;
	}
	pfd[o->k].fd = bm_client_fd(owner);
	pfd[o->k].events = POLLIN;
	for (int r = 0; r < o->rounds; r++) {
		int status = r % 2 ? 4 : 3, count = 0;
		uint64_t t0, wait_until = bm_mono_ms() + (uint64_t)o->interval_ms, last = 0;

		/* Quiet period: drain whatever is still arriving. */
		for (int first = 1; first || bm_mono_ms() < wait_until; first = 0) {
			poll(pfd, (nfds_t)o->k + 1, 10);
			for (int i = 0; i <= o->k; i++) {
				struct bm_client *c = i < o->k ? subs[i] : owner;
				for (int j = 0; j < 1000 && bm_client_recv(c, &msg, 0) == 0; j++)
					;
			}
		}
		memset(got, 0, (size_t)o->k * sizeof(*got));
		t0 = now_ns();
		if (bm_client_set_awareness(owner, status, 0, 0, 0))
			goto out;
		while (count < o->k && now_ns() - t0 < 10000000000ull) {
			poll(pfd, (nfds_t)o->k + 1, 100);
			for (int i = 0; i <= o->k; i++) {
				struct bm_client *c = i < o->k ? subs[i] : owner;
				if (!pfd[i].revents)
					continue;
				for (int j = 0; j < 1000; j++) {
					int e = bm_client_recv(c, &msg, 0);
					uint64_t t;
					if (e == BM_ETIMEDOUT)
						break;
					if (e && e != BM_EDECODE) {
						fprintf(stderr, "bimip-bench: fanout session lost: %s\n",
							bm_strerror(e));
						goto out;
					}
					if (e)
						continue;
					if (msg.which_payload == bimip_MessageScheme_error_message_tag)
						fprintf(stderr, "bimip-bench: error %d: %s\n",
							(int)msg.payload.error_message.code,
							msg.payload.error_message.message);
					if (i == o->k || got[i] ||
					    msg.which_payload != bimip_MessageScheme_awareness_notification_tag ||
					    strcmp(msg.payload.awareness_notification.from.eid, oeid) ||
					    msg.payload.awareness_notification.status != status)
						continue;
					t = now_ns();
					got[i] = t;
					count++;
					notified++;
					hist_add(&each, (t - t0) / 1000);
					if (t > last)
						last = t;
				}
			}
		}
		all[done_rounds++] = count == o->k ? (double)(last - t0) / 1e6 : -1;
		if (count < o->k)
			fprintf(stderr, "bimip-bench: round %d: %d of %d subscribers notified in 10 s\n",
				r, count, o->k);
	}
	{
		double sorted[1000], sum = 0;
		int n = done_rounds, missing = 0;
		memcpy(sorted, all, (size_t)n * sizeof(double));
		for (int i = 0; i < n; i++) {
			if (sorted[i] < 0)
				missing++;
			sum += sorted[i] > 0 ? sorted[i] : 0;
			for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; j--) {
				double t = sorted[j];
				sorted[j] = sorted[j - 1];
				sorted[j - 1] = t;
			}
		}
		printf("fanout bimip K=%d rounds=%d notified=%" PRIu64 "/%" PRIu64
		       " all_p50=%.3fms all_max=%.3fms all_mean=%.3fms each_p50=%.3fms"
		       " each_p99=%.3fms notifications/s=%.0f\n",
		       o->k, n, notified, (uint64_t)o->k * (uint64_t)n, sorted[n / 2],
		       sorted[n - 1], n - missing ? sum / (n - missing) : 0.0,
		       hist_ms(&each, 0.5), hist_ms(&each, 0.99),
		       sum > 0 ? (double)o->k * (n - missing) / (sum / 1000.0) : 0.0);
		rc = notified > 0 && !missing ? 0 : 1;
	}
out:
	for (int i = 0; subs && i < o->k; i++)
		if (subs[i])
			bm_client_abort(subs[i]);
	if (owner)
		bm_client_close(owner);
	free(each.b);
	free(subs);
	free(pfd);
	free(got);
	free(all);
	return rc;
}

/* --- entry ------------------------------------------------------------------- */

int bench_load_main(int argc, char **argv)
{
	struct load_opts o;
	struct minter mt;
	int rc;

	memset(&o, 0, sizeof(o));
	memset(&mt, 0, sizeof(mt));
	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc > 0 ? 0 : 2;
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (o.mqtt && !strcmp(o.mode, "fanout")) {
		fprintf(stderr, "bimip-bench fanout: --mqtt is not supported\n");
		return 2;
	}
	if (!o.mqtt && minter_init(&mt, &o))
		return 2;
	if (!strcmp(o.mode, "connections"))
		rc = mode_connections(&o, &mt);
	else if (!strcmp(o.mode, "pairs"))
		rc = mode_pairs(&o, &mt);
	else
		rc = mode_fanout(&o, &mt);
	fflush(stdout);
	bm_jwt_key_free(mt.key);
	return rc;
}
