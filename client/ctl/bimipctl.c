/*
 * bimipctl - the operator's command line, over the admin HTTP API of a
 * bimip-server (or bimip-signal, for sessions and status).
 */
#include "bm_err.h"
#include "bm_httpc.h"

#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *admin = "127.0.0.1:4101";
static const char *key;
static int json_out;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bimipctl [--admin HOST:PORT] [--key KEY | --key-file FILE] [--json] COMMAND\n"
		"\n"
		"Talks to the admin API of a bimip-server (default 127.0.0.1:4101) or a\n"
		"bimip-signal.  The key defaults to $BIMIP_ADMIN_KEY, then the file\n"
		"var/server-1/admin.key that `make run` creates.\n"
		"\n"
		"commands:\n"
		"  token issue --eid EID --device DEV [--ttl SECONDS]\n"
		"                          mint a token for an app backend (printed last)\n"
		"  token revoke --eid EID [--device DEV] [--jti JTI]\n"
		"                          revoke one token, a device's tokens, or all of a user's\n"
		"  status                  node status (server or signal)\n"
		"  keys                    public keys that verify the server's tokens\n"
		"  contacts EID            subscribers and blocks of a user\n"
		"  contact add|remove EID SUBSCRIBER\n"
		"  block|unblock EID OTHER\n"
		"  sessions EID            online devices of a user (server)\n"
		"  kick EID DEVICE         close a device's session\n"
		"  metrics [PREFIX]        the Prometheus metrics (server or signal), only the\n"
		"                          families whose name starts with PREFIX if given\n"
		"  cluster members|join HOST:PORT|leave|remove ID\n"
		"                          cluster membership (see docs/cluster.md); members\n"
		"                          prints a table, --json the API's answer; remove\n"
		"                          takes a dead server out for good (its data is lost)\n");
}

/* One admin request; a user's state answers 503 for a moment while users
 * move between servers (a join or leave): asked again for up to 5 s. */
static int request(const char *method, const char *path, const char *body, char *buf,
		   size_t cap)
{
	int st = bm_httpc_request(admin, method, path, key, body, buf, cap, 10000);

	for (int i = 0; st == 503 && !strncmp(path, "/v1/users/", 10) && i < 20; i++) {
		poll(NULL, 0, 250);
		st = bm_httpc_request(admin, method, path, key, body, buf, cap, 10000);
	}
	return st;
}

/* Says on stderr why an answer is not a success: no answer (st < 0), or an
 * error status with the API's "error" text (or the body as it is).  Returns
 * 0 for a 2xx answer, 1 otherwise. */
static int failed(const char *method, const char *path, int st, const char *buf)
{
	json_t *e;
	const char *msg;

	if (st < 0) {
		fprintf(stderr, "bimipctl: cannot reach the admin API at %s: %s\n", admin,
			bm_strerror(st));
		return 1;
	}
	if (st >= 200 && st <= 299)
		return 0;
	e = json_loads(buf, 0, NULL);
	msg = e ? json_string_value(json_object_get(e, "error")) : NULL;
	fprintf(stderr, "bimipctl: %s %s: %d %s\n", method, path, st, msg ? msg : buf);
	json_decref(e);
	return 1;
}

static int call(const char *method, const char *path, const char *body, json_t **out)
{
	static char buf[1 << 20];
	static char owner_admin[128];
	int st = request(method, path, body, buf, sizeof(buf));

	if (st == 421) {
		/* A user's state lives on the server that owns it: ask that one
		 * (once; the same admin key must be valid there). */
		json_t *e = json_loads(buf, 0, NULL);
		const char *a = e ? json_string_value(json_object_get(e, "admin")) : NULL;

		if (a && *a && strcmp(a, admin)) {
			snprintf(owner_admin, sizeof(owner_admin), "%s", a);
			admin = owner_admin;
			st = request(method, path, body, buf, sizeof(buf));
		}
		json_decref(e);
	}

	if (failed(method, path, st, buf))
		return 1;
	*out = json_loads(buf, 0, NULL);
	if (!*out) {
		fputs(buf, stdout);
		return 0;
	}
	return 0;
}

static int print(json_t *o)
{
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);

	if (s)
		puts(s);
	free(s);
	json_decref(o);
	return 0;
}

static const char *opt_value(int argc, char **argv, const char *name)
{
	for (int i = 0; i + 1 < argc; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return NULL;
}

static int cmd_token(int argc, char **argv)
{
	const char *eid = opt_value(argc, argv, "--eid"), *dev = opt_value(argc, argv, "--device");
	const char *ttl = opt_value(argc, argv, "--ttl"), *jti = opt_value(argc, argv, "--jti");
	json_t *req, *resp = NULL;
	char *body;
	int rc;

	if (argc < 2 || !eid) {
		fprintf(stderr, "bimipctl: token issue|revoke needs --eid\n");
		return 2;
	}
	if (!strcmp(argv[1], "issue")) {
		if (!dev) {
			fprintf(stderr, "bimipctl: token issue needs --device\n");
			return 2;
		}
		req = json_pack("{s:s, s:s}", "eid", eid, "device", dev);
		if (ttl)
			json_object_set_new(req, "ttl", json_integer(atoll(ttl)));
		body = json_dumps(req, JSON_COMPACT);
		json_decref(req);
		rc = call("POST", "/v1/tokens", body, &resp);
		free(body);
		if (rc || !resp)
			return 1;
		if (json_out)
			return print(resp);
		printf("eid %s device %s jti %s expires %lld\n%s\n", eid, dev,
		       json_string_value(json_object_get(resp, "jti")),
		       (long long)json_integer_value(json_object_get(resp, "exp")),
		       json_string_value(json_object_get(resp, "token")));
		json_decref(resp);
		return 0;
	}
	if (!strcmp(argv[1], "revoke")) {
		req = json_pack("{s:s}", "eid", eid);
		if (dev)
			json_object_set_new(req, "device", json_string(dev));
		if (jti)
			json_object_set_new(req, "jti", json_string(jti));
		body = json_dumps(req, JSON_COMPACT);
		json_decref(req);
		rc = call("POST", "/v1/tokens/revoke", body, &resp);
		free(body);
		if (!rc)
			printf("revoked\n");
		json_decref(resp);
		return rc;
	}
	fprintf(stderr, "bimipctl: unknown token command '%s'\n", argv[1]);
	return 2;
}

static int simple_get(const char *path)
{
	json_t *r = NULL;

	if (call("GET", path, NULL, &r))
		return 1;
	return r ? print(r) : 0;
}

/* cluster members: a table, one member per line (--json: the API's JSON). */
static int members(void)
{
	json_t *r = NULL, *a, *m;
	size_t i;

	if (call("GET", "/v1/cluster/members", NULL, &r))
		return 1;
	if (!r || json_out)
		return r ? print(r) : 0;
	a = json_object_get(r, "members");
	printf("%-20s %-7s %-8s %11s  %-21s %-27s %s\n", "ID", "ROLE", "STATE", "INCARNATION",
	       "GOSSIP", "ZMQ", "ADMIN");
	json_array_foreach(a, i, m) {
		const char *z = json_string_value(json_object_get(m, "zmq"));
		printf("%-20s %-7s %-8s %11lld  %-21s %-27s %s%s\n",
		       json_string_value(json_object_get(m, "id")) ?: "?",
		       json_string_value(json_object_get(m, "role")) ?: "?",
		       json_string_value(json_object_get(m, "state")) ?: "?",
		       (long long)json_integer_value(json_object_get(m, "incarnation")),
		       json_string_value(json_object_get(m, "addr")) ?: "",
		       z && *z ? z : "-",
		       json_string_value(json_object_get(m, "admin")) ?: "",
		       json_is_true(json_object_get(m, "self")) ? "  (this node)" : "");
	}
	json_decref(r);
	return 0;
}

/* metrics [PREFIX]: /metrics as it is (text, not JSON), the samples and the
 * HELP/TYPE lines of the families whose name starts with prefix; exit
 * status 1 when none does (a mistyped name is not an empty answer). */
static int metrics(const char *prefix)
{
	static char buf[1 << 20];
	size_t pl = prefix ? strlen(prefix) : 0;
	int st = request("GET", "/metrics", NULL, buf, sizeof(buf));
	char *line, *save = NULL;
	int shown = 0;

	if (failed("GET", "/metrics", st, buf))
		return 1;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		const char *name = line;

		if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7))
			name = line + 7;
		if (!prefix || !strncmp(name, prefix, pl)) {
			puts(line);
			shown++;
		}
	}
	if (!shown && prefix) {
		fprintf(stderr, "bimipctl: no metric at %s starts with '%s'\n", admin, prefix);
		return 1;
	}
	return 0;
}

static int change(const char *method, const char *path, const char *body)
{
	json_t *r = NULL;

	if (call(method, path, body, &r))
		return 1;
	return r ? print(r) : 0;
}

static void load_key(const char *file)
{
	static char buf[256];

	if (key)
		return;
	if (!file && getenv("BIMIP_ADMIN_KEY")) {
		key = getenv("BIMIP_ADMIN_KEY");
		return;
	}
	if (!bm_httpc_read_key(file ? file : "var/server-1/admin.key", buf, sizeof(buf)))
		key = buf;
	else if (file)
		fprintf(stderr, "bimipctl: cannot read key file '%s'\n", file);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "admin", required_argument, 0, 'a' },
		{ "key", required_argument, 0, 'k' },
		{ "key-file", required_argument, 0, 'f' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	const char *key_file = NULL;
	char path[600], body[600];
	int c;

	while ((c = getopt_long(argc, argv, "+a:k:f:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'a': admin = optarg; break;
		case 'k': key = optarg; break;
		case 'f': key_file = optarg; break;
		case 'j': json_out = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1) {
		usage(stderr);
		return 2;
	}
	load_key(key_file);
	if (!strcmp(argv[0], "token"))
		return cmd_token(argc, argv);
	if (!strcmp(argv[0], "status"))
		return simple_get("/v1/status");
	if (!strcmp(argv[0], "keys"))
		return simple_get("/v1/keys");
	if (!strcmp(argv[0], "contacts") && argc == 2) {
		snprintf(path, sizeof(path), "/v1/users/%s/contacts", argv[1]);
		return simple_get(path);
	}
	if (!strcmp(argv[0], "sessions") && argc == 2) {
		snprintf(path, sizeof(path), "/v1/users/%s/sessions", argv[1]);
		return simple_get(path);
	}
	if (!strcmp(argv[0], "metrics") && argc <= 2)
		return metrics(argc == 2 ? argv[1] : NULL);
	if (!strcmp(argv[0], "kick") && argc == 3) {
		snprintf(path, sizeof(path), "/v1/users/%s/sessions/%s", argv[1], argv[2]);
		return change("DELETE", path, NULL);
	}
	if (!strcmp(argv[0], "contact") && argc == 4 &&
	    (!strcmp(argv[1], "add") || !strcmp(argv[1], "remove"))) {
		if (argv[1][0] == 'a') {
			snprintf(path, sizeof(path), "/v1/users/%s/contacts", argv[2]);
			snprintf(body, sizeof(body), "{\"subscriber\":\"%s\"}", argv[3]);
			return change("POST", path, body);
		}
		snprintf(path, sizeof(path), "/v1/users/%s/contacts/%s", argv[2], argv[3]);
		return change("DELETE", path, NULL);
	}
	if ((!strcmp(argv[0], "block") || !strcmp(argv[0], "unblock")) && argc == 3) {
		if (argv[0][0] == 'b') {
			snprintf(path, sizeof(path), "/v1/users/%s/blocks", argv[1]);
			snprintf(body, sizeof(body), "{\"eid\":\"%s\"}", argv[2]);
			return change("POST", path, body);
		}
		snprintf(path, sizeof(path), "/v1/users/%s/blocks/%s", argv[1], argv[2]);
		return change("DELETE", path, NULL);
	}
	if (!strcmp(argv[0], "cluster") && argc >= 2) {
		if (!strcmp(argv[1], "members"))
			return members();
		if (!strcmp(argv[1], "join") && argc == 3) {
			snprintf(body, sizeof(body), "{\"seed\":\"%s\"}", argv[2]);
			return change("POST", "/v1/cluster/join", body);
		}
		if (!strcmp(argv[1], "leave"))
			return change("POST", "/v1/cluster/leave", "{}");
		if (!strcmp(argv[1], "remove") && argc == 3) {
			snprintf(body, sizeof(body), "{\"id\":\"%.500s\"}", argv[2]);
			return change("POST", "/v1/cluster/remove", body);
		}
	}
	fprintf(stderr, "bimipctl: unknown command or wrong arguments: '%s'\n", argv[0]);
	usage(stderr);
	return 2;
}
