/*
 * bimip-cli - a BIMIP client for people: send, receive, presence, history,
 * as one-shot commands or an interactive shell.
 */
#include "bimip_client.h"
#include "bm_err.h"
#include "bm_httpc.h"
#include "bm_time.h"

#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct bm_client *cl;
static int quiet_awareness;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bimip-cli [options] COMMAND [ARGS]\n"
		"\n"
		"  --url URL          edge to connect to (default ws://127.0.0.1:4000/)\n"
		"  --token JWT        token (or $BIMIP_TOKEN)\n"
		"  --eid EID --device DEV\n"
		"                     get a token from the server admin API instead\n"
		"                     (--admin HOST:PORT, default 127.0.0.1:4101; key from\n"
		"                     $BIMIP_ADMIN_KEY or var/server-1/admin.key)\n"
		"  --ca FILE          wss:// CA certificate (default: the system's CAs)\n"
		"  --insecure         wss:// without verifying the server (testing only)\n"
		"\n"
		"commands:\n"
		"  send TO TEXT...            send a message; prints its server ids\n"
		"  tail [SECONDS]             print what arrives (default: until Ctrl-C)\n"
		"  history [AFTER [LIMIT]]    stored stanzas after an offset\n"
		"  add-contact EID            let EID see your awareness\n"
		"  block EID | unblock EID\n"
		"  presence EID               ask for EID's awareness\n"
		"  status N [LAT LON]         set your awareness status (1 online .. 7)\n"
		"  ping                       round trip to the edge\n"
		"  ack TO MESSAGE_ID 2|3      mark delivered (2) or read (3)\n"
		"  logout\n"
		"  shell                      interactive: type the commands above\n");
}

static void show(const bimip_MessageScheme *m)
{
	char d[9000];

	if (quiet_awareness && m->route == bimip_MessageScheme_awareness_notification_tag)
		return;
	printf("%s\n", bm_client_describe(m, d, sizeof(d)));
	fflush(stdout);
}

/* Wait for a stanza of route (others are printed); 0 or an error. */
static int await(int route, bimip_MessageScheme *m, int ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)ms;

	while (bm_mono_ms() < deadline) {
		int rc = bm_client_recv(cl, m, 100);
		if (rc == BM_ETIMEDOUT)
			continue;
		if (rc)
			return rc;
		if ((int)m->route == route)
			return 0;
		show(m);
		if (m->route == bimip_MessageScheme_error_message_tag)
			return BM_EPROTO;
	}
	return BM_ETIMEDOUT;
}

static int run(int argc, char **argv)
{
	static bimip_MessageScheme m;
	static unsigned seq;
	static char text[BM_CLIENT_TEXT_MAX + 1];
	char local[64];
	int rc;

	if (argc < 1)
		return 2;
	if (!strcmp(argv[0], "send") && argc >= 3) {
		size_t len = 0;

		/* The words joined by spaces; refused whole when too long (never
		 * cut: the receiver would get less than was typed). */
		for (int i = 2; i < argc; i++)
			len += strlen(argv[i]) + (i + 1 < argc);
		if (len > BM_CLIENT_TEXT_MAX) {
			fprintf(stderr, "bimip-cli: message of %zu bytes exceeds the limit of %d "
				"bytes; nothing sent\n", len, BM_CLIENT_TEXT_MAX);
			return 1;
		}
		text[0] = 0;
		for (int i = 2; i < argc; i++) {
			strcat(text, argv[i]);
			if (i + 1 < argc)
				strcat(text, " ");
		}
		snprintf(local, sizeof(local), "cli-%lld-%u", (long long)bm_wall_ms(), ++seq);
		rc = bm_client_send_text(cl, argv[1], text, local);
		if (!rc)
			rc = await(bimip_MessageScheme_version_update_tag, &m, 10000);
		if (rc) {
			fprintf(stderr, "bimip-cli: send failed: %s\n", bm_strerror(rc));
			return 1;
		}
		printf("sent %s version %lld chat %s\n", m.payload.version_update.message_id,
		       (long long)m.payload.version_update.version, m.payload.version_update.chat_id);
		bm_client_commit(cl);
		return 0;
	}
	if (!strcmp(argv[0], "tail")) {
		int secs = argc > 1 ? atoi(argv[1]) : -1;
		uint64_t end = secs >= 0 ? bm_mono_ms() + (uint64_t)secs * 1000 : UINT64_MAX;
		while (bm_mono_ms() < end) {
			rc = bm_client_recv(cl, &m, 200);
			if (rc == BM_ETIMEDOUT)
				continue;
			if (rc) {
				fprintf(stderr, "bimip-cli: connection ended: %d %s\n",
					bm_client_close_code(cl), bm_client_close_reason(cl));
				return 1;
			}
			show(&m);
			if (m.route == bimip_MessageScheme_chat_message_tag &&
			    !strcmp(m.payload.chat_message.author, "receiver"))
				bm_client_send_ack(cl, m.payload.chat_message.from.eid,
						   m.payload.chat_message.message_id, 2);
		}
		bm_client_commit(cl);
		return 0;
	}
	if (!strcmp(argv[0], "history")) {
		int64_t after = argc > 1 ? atoll(argv[1]) : 0;
		int limit = argc > 2 ? atoi(argv[2]) : 50;
		bm_client_set_last_offset(cl, after);
		rc = bm_client_sync(cl, after, limit);
		if (!rc)
			rc = await(bimip_MessageScheme_sync_response_tag, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: history failed: %s\n", bm_strerror(rc)), 1;
		printf("-- %d stanzas, last offset %lld of %lld%s\n", m.payload.sync_response.count,
		       (long long)m.payload.sync_response.last_offset,
		       (long long)m.payload.sync_response.head_offset,
		       m.payload.sync_response.more ? ", more" : "");
		return 0;
	}
	if ((!strcmp(argv[0], "add-contact") || !strcmp(argv[0], "block") ||
	     !strcmp(argv[0], "unblock") || !strcmp(argv[0], "presence")) && argc == 2) {
		int route;
		if (argv[0][0] == 'a') {
			rc = bm_client_add_subscriber(cl, argv[1]);
			route = bimip_MessageScheme_subscriber_add_response_tag;
		} else if (argv[0][0] == 'p') {
			rc = bm_client_awareness_request(cl, argv[1], (int64_t)bm_wall_ms());
			route = bimip_MessageScheme_awareness_response_tag;
		} else {
			rc = bm_client_block(cl, argv[1], argv[0][0] == 'b');
			route = bimip_MessageScheme_block_subscriber_tag;
		}
		if (!rc)
			rc = await(route, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: %s failed: %s\n", argv[0], bm_strerror(rc)), 1;
		show(&m);
		return 0;
	}
	if (!strcmp(argv[0], "status") && argc >= 2) {
		rc = bm_client_set_awareness(cl, atoi(argv[1]), argc > 3 ? atof(argv[2]) : 0,
					     argc > 3 ? atof(argv[3]) : 0, 0);
		if (!rc)
			rc = await(bimip_MessageScheme_awareness_response_tag, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: status failed: %s\n", bm_strerror(rc)), 1;
		show(&m);
		return 0;
	}
	if (!strcmp(argv[0], "ping")) {
		rc = bm_client_send_ping(cl);
		if (!rc)
			rc = await(bimip_MessageScheme_pingpong_message_tag, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: ping failed: %s\n", bm_strerror(rc)), 1;
		printf("pong: status %d rtt %lld ms\n", (int)m.payload.pingpong_message.status,
		       (long long)m.payload.pingpong_message.rtt);
		return 0;
	}
	if (!strcmp(argv[0], "ack") && argc == 4) {
		rc = bm_client_send_ack(cl, argv[1], argv[2], atoi(argv[3]));
		if (!rc)
			rc = await(bimip_MessageScheme_acknowledgment_response_tag, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: ack failed: %s\n", bm_strerror(rc)), 1;
		show(&m);
		return 0;
	}
	if (!strcmp(argv[0], "logout")) {
		rc = bm_client_logout(cl);
		if (!rc)
			rc = await(bimip_MessageScheme_logout_tag, &m, 10000);
		if (rc)
			return fprintf(stderr, "bimip-cli: logout failed: %s\n", bm_strerror(rc)), 1;
		printf("logged out (status %d)\n", (int)m.payload.logout.status);
		return 0;
	}
	fprintf(stderr, "bimip-cli: unknown command '%s' (try --help)\n", argv[0]);
	return 2;
}

static int shell(void)
{
	static bimip_MessageScheme m;
	char line[8192];

	printf("connected; commands: send TO TEXT, history, add-contact EID, presence EID, "
	       "status N, ping, block EID, quit\n> ");
	fflush(stdout);
	for (;;) {
		struct pollfd p[2] = { { 0, POLLIN, 0 }, { bm_client_fd(cl), POLLIN, 0 } };
		int rc;
		if (!bm_client_pending(cl) && poll(p, 2, 1000) < 0)
			return 1;
		while ((rc = bm_client_recv(cl, &m, 0)) == 0)
			show(&m);
		if (rc != BM_ETIMEDOUT) {
			fprintf(stderr, "bimip-cli: connection ended: %d %s\n",
				bm_client_close_code(cl), bm_client_close_reason(cl));
			return 1;
		}
		if (p[0].revents & (POLLIN | POLLHUP)) {
			char *args[64];
			int n = 0;
			if (!fgets(line, sizeof(line), stdin))
				return 0;
			line[strcspn(line, "\n")] = 0;
			for (char *t = strtok(line, " "); t && n < 64; t = strtok(NULL, " "))
				args[n++] = t;
			if (n && (!strcmp(args[0], "quit") || !strcmp(args[0], "exit")))
				return 0;
			if (n)
				run(n, args);
			printf("> ");
			fflush(stdout);
		}
	}
}

static char *fetch_token(const char *admin, const char *eid, const char *dev)
{
	char keybuf[256] = "", err[300];
	const char *key = getenv("BIMIP_ADMIN_KEY");
	char *tok;

	if (!key) {
		bm_httpc_read_key("var/server-1/admin.key", keybuf, sizeof(keybuf));
		key = keybuf;
	}
	tok = bm_httpc_token(admin, key, eid, dev, 0, 5000, err, sizeof(err));
	if (!tok)
		fprintf(stderr, "bimip-cli: cannot get a token from %s: %s\n", admin, err);
	return tok;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, 0, 'u' },
		{ "token", required_argument, 0, 't' },
		{ "eid", required_argument, 0, 'e' },
		{ "device", required_argument, 0, 'd' },
		{ "admin", required_argument, 0, 'a' },
		{ "ca", required_argument, 0, 'C' },
		{ "quiet-awareness", no_argument, 0, 'q' },
		{ "insecure", no_argument, 0, 'I' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct bm_client_opts o = { .url = "ws://127.0.0.1:4000/" };
	const char *eid = NULL, *dev = "cli", *admin = "127.0.0.1:4101";
	char *tok = NULL, err[256];
	int c, rc;

	o.token = getenv("BIMIP_TOKEN");
	while ((c = getopt_long(argc, argv, "+u:t:e:d:a:C:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'u': o.url = optarg; break;
		case 't': o.token = optarg; break;
		case 'e': eid = optarg; break;
		case 'd': dev = optarg; break;
		case 'a': admin = optarg; break;
		case 'C': o.ca_file = optarg; break;
		case 'q': quiet_awareness = 1; break;
		case 'I': o.insecure_tls = 1; break;
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
	if (eid) {
		tok = fetch_token(admin, eid, dev);
		if (!tok)
			return 1;
		o.token = tok;
	}
	if (!o.token) {
		fprintf(stderr, "bimip-cli: no token: use --token, $BIMIP_TOKEN or --eid/--device\n");
		return 2;
	}
	rc = bm_client_connect(&cl, &o, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "bimip-cli: %s\n", err);
		free(tok);
		return 1;
	}
	rc = !strcmp(argv[0], "shell") ? shell() : run(argc, argv);
	bm_client_close(cl);
	free(tok);
	return rc;
}
