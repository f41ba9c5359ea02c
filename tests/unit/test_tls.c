/* Unit tests for common/bm_tls.[ch]: real TLS 1.2 handshakes between a
 * bm_tls server and a bm_tls client over a non-blocking socketpair, driven
 * by poll(), with a test CA generated at run time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>
#include <event2/event.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_tls.h"
#include "tests/support/tls_testca.h"

static char dir[64];

static char *path(const char *name)
{
	static char p[8][128];
	static int i;

	i = (i + 1) % 8;
	snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
	return p[i];
}

static int setup(void **state)
{
	strcpy(dir, "/tmp/bm_tls_XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	bm_log_set_level(BM_LOG_ERROR);
	return bm_test_make_ca(dir) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	bm_test_rm_ca(dir);
	return 0;
}

struct pair {
	int fd[2];
	struct bm_tls *srv, *cli;
	struct bm_tls_config *scfg, *ccfg;
};

static struct bm_tls_config *server_cfg(const char *cert, const char *key)
{
	struct bm_tls_options o = { .server = 1, .cert_file = path(cert),
				    .key_file = path(key) };
	struct bm_tls_config *c;

	assert_int_equal(bm_tls_config_new(&c, &o), 0);
	return c;
}

static struct bm_tls_config *client_cfg(const char *ca, const char *name, int insecure)
{
	struct bm_tls_options o = { .server = 0, .ca_file = ca ? path(ca) : NULL,
				    .server_name = name, .insecure = insecure };
	struct bm_tls_config *c;

	assert_int_equal(bm_tls_config_new(&c, &o), 0);
	return c;
}

static void pair_open(struct pair *p, struct bm_tls_config *s, struct bm_tls_config *c)
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p->fd), 0);
	p->scfg = s;
	p->ccfg = c;
	assert_int_equal(bm_tls_new(&p->srv, s, p->fd[0]), 0);
	assert_int_equal(bm_tls_new(&p->cli, c, p->fd[1]), 0);
}

static void pair_close(struct pair *p)
{
	bm_tls_free(p->srv);
	bm_tls_free(p->cli);
	close(p->fd[0]);
	close(p->fd[1]);
	bm_tls_config_unref(p->scfg);
	bm_tls_config_unref(p->ccfg);
}

static short ev_of(struct bm_tls *t)
{
	unsigned w = bm_tls_wants(t);

	return (short)((w & BM_TLS_WANT_READ ? POLLIN : 0) |
		       (w & BM_TLS_WANT_WRITE ? POLLOUT : 0));
}

/* Wait until either side can make progress (bounded: 5 s). */
static void wait_both(struct pair *p)
{
	struct pollfd pfd[2] = {
		{ .fd = p->fd[0], .events = ev_of(p->srv) },
		{ .fd = p->fd[1], .events = ev_of(p->cli) },
	};

	assert_true(poll(pfd, 2, 5000) > 0);
}

/* Run both handshakes; returns 0 or the first failure, with the failing
 * side's code in *srv_rc / *cli_rc. */
static int handshake(struct pair *p, int *srv_rc, int *cli_rc)
{
	int s = BM_EAGAIN, c = BM_EAGAIN;

	for (int i = 0; i < 1000; i++) {
		if (s == BM_EAGAIN)
			s = bm_tls_handshake(p->srv);
		if (c == BM_EAGAIN)
			c = bm_tls_handshake(p->cli);
		if ((s == 0 && c == 0) || (s != 0 && s != BM_EAGAIN) ||
		    (c != 0 && c != BM_EAGAIN))
			break;
		/* A finished side waits for nothing; only poll the other. */
		if (s == BM_EAGAIN || c == BM_EAGAIN) {
			struct pollfd pfd[2];
			int n = 0;
			if (s == BM_EAGAIN)
				pfd[n++] = (struct pollfd){ .fd = p->fd[0], .events = ev_of(p->srv) };
			if (c == BM_EAGAIN)
				pfd[n++] = (struct pollfd){ .fd = p->fd[1], .events = ev_of(p->cli) };
			assert_true(poll(pfd, (nfds_t)n, 5000) > 0);
		}
	}
	if (srv_rc)
		*srv_rc = s;
	if (cli_rc)
		*cli_rc = c;
	if (s == 0 && c == 0)
		return 0;
	return c != 0 && c != BM_EAGAIN ? c : s;
}

/* Send len bytes from a to b while draining b; returns bytes received. */
static void transfer(struct pair *p, struct bm_tls *a, struct bm_tls *b,
		     const uint8_t *data, size_t len)
{
	uint8_t *got = malloc(len + 1), buf[4096];
	size_t sent = 0, recvd = 0;

	for (int i = 0; i < 100000 && recvd < len; i++) {
		size_t n;
		int rc;

		if (sent < len) {
			rc = bm_tls_write(a, data + sent, len - sent, &n);
			assert_true(rc == 0 || rc == BM_EAGAIN);
			if (rc == 0)
				sent += n;
		}
		for (;;) {
			rc = bm_tls_read(b, buf, sizeof(buf), &n);
			if (rc == BM_EAGAIN)
				break;
			assert_int_equal(rc, 0);
			assert_true(recvd + n <= len);
			memcpy(got + recvd, buf, n);
			recvd += n;
		}
		assert_int_equal(bm_tls_pending(b), 0);
		if (recvd < len && sent == len)
			wait_both(p);
	}
	assert_int_equal(recvd, len);
	assert_memory_equal(got, data, len);
	free(got);
}

static void test_handshake_and_data(void **state)
{
	struct pair p;
	uint8_t *big = malloc(100 * 1024), buf[64];
	size_t n;

	pair_open(&p, server_cfg("server.pem", "server.key"),
		  client_cfg("ca.pem", "localhost", 0));
	assert_int_equal(bm_tls_is_established(p.cli), 0);
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	assert_int_equal(bm_tls_is_established(p.srv), 1);
	assert_non_null(strstr(bm_tls_cipher(p.cli), "ECDHE-ECDSA"));
	assert_non_null(strstr(bm_tls_cipher(p.srv), "GCM"));
	assert_int_equal(bm_tls_resumed(p.srv), 0);

	transfer(&p, p.cli, p.srv, (const uint8_t *)"hello", 5);
	transfer(&p, p.srv, p.cli, (const uint8_t *)"world!", 6);
	for (size_t i = 0; i < 100 * 1024; i++)
		big[i] = (uint8_t)(i * 7 + (i >> 9));
	transfer(&p, p.cli, p.srv, big, 100 * 1024);
	transfer(&p, p.srv, p.cli, big, 100 * 1024);

	/* Nothing to read: EAGAIN, wanting read. */
	assert_int_equal(bm_tls_read(p.srv, buf, sizeof(buf), &n), BM_EAGAIN);
	assert_int_equal(bm_tls_wants(p.srv), BM_TLS_WANT_READ);

	/* close_notify reaches the peer as BM_ECLOSED. */
	assert_int_equal(bm_tls_close_notify(p.cli), 0);
	for (int i = 0; i < 100; i++) {
		int rc = bm_tls_read(p.srv, buf, sizeof(buf), &n);
		if (rc == BM_ECLOSED)
			break;
		assert_int_equal(rc, BM_EAGAIN);
		wait_both(&p);
		if (i == 99)
			fail_msg("no close_notify");
	}
	free(big);
	pair_close(&p);
}

static void expect_verify_failure(struct bm_tls_config *s, struct bm_tls_config *c,
				  const char *needle)
{
	struct pair p;
	int srv_rc, cli_rc;
	char err[512];

	pair_open(&p, s, c);
	assert_int_not_equal(handshake(&p, &srv_rc, &cli_rc), 0);
	assert_int_equal(cli_rc, BM_ECRYPTO);
	bm_tls_strerror(p.cli, err, sizeof(err));
	if (!strstr(err, needle))
		fail_msg("error '%s' lacks '%s'", err, needle);
	/* The server sees the client's alert (or the close after it). */
	if (srv_rc == BM_EAGAIN) {
		close(p.fd[1]);
		p.fd[1] = -1;
		srv_rc = bm_tls_handshake(p.srv);
	}
	assert_true(srv_rc == BM_ECRYPTO || srv_rc == BM_ECLOSED || srv_rc == BM_EIO);
	pair_close(&p);
}

static void test_wrong_ca(void **state)
{
	expect_verify_failure(server_cfg("server.pem", "server.key"),
			      client_cfg("other-ca.pem", "localhost", 0),
			      "certificate verification failed");
}

static void test_expired(void **state)
{
	expect_verify_failure(server_cfg("expired.pem", "expired.key"),
			      client_cfg("ca.pem", "localhost", 0), "expired");
}

static void test_wrong_name(void **state)
{
	expect_verify_failure(server_cfg("server.pem", "server.key"),
			      client_cfg("ca.pem", "edge.example.org", 0),
			      "certificate verification failed");
}

static void test_insecure_client(void **state)
{
	struct pair p;

	pair_open(&p, server_cfg("server.pem", "server.key"),
		  client_cfg(NULL, NULL, 1));
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	pair_close(&p);
}

/* A server with ca_file requires client certificates signed by it. */
static void test_mutual(void **state)
{
	struct bm_tls_options so = { .server = 1, .cert_file = path("server.pem"),
				     .key_file = path("server.key"),
				     .ca_file = path("ca.pem") };
	struct bm_tls_options co = { .server = 0, .ca_file = path("ca.pem"),
				     .server_name = "localhost",
				     .cert_file = path("server.pem"),
				     .key_file = path("server.key") };
	struct bm_tls_config *s, *c;
	struct pair p;
	int srv_rc, cli_rc;

	assert_int_equal(bm_tls_config_new(&s, &so), 0);
	assert_int_equal(bm_tls_config_new(&c, &co), 0);
	pair_open(&p, bm_tls_config_ref(s), c);
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	pair_close(&p);

	/* Without a client certificate the server refuses. */
	pair_open(&p, s, client_cfg("ca.pem", "localhost", 0));
	assert_int_not_equal(handshake(&p, &srv_rc, &cli_rc), 0);
	assert_int_equal(srv_rc, BM_ECRYPTO);
	pair_close(&p);
}

static void test_config_errors(void **state)
{
	struct bm_tls_config *c = (void *)1;
	struct bm_tls_options o = { .server = 1, .cert_file = path("nope.pem"),
				    .key_file = path("server.key") };

	assert_int_equal(bm_tls_config_new(&c, &o), BM_ECONFIG);
	assert_null(c);
	o.cert_file = path("server.pem");
	o.key_file = NULL;
	assert_int_equal(bm_tls_config_new(&c, &o), BM_ECONFIG);
	o.key_file = path("ca.pem");	/* not a key */
	assert_int_equal(bm_tls_config_new(&c, &o), BM_ECONFIG);
	o.key_file = path("ca.key");	/* key does not match the cert */
	assert_int_equal(bm_tls_config_new(&c, &o), BM_ECONFIG);
	o.key_file = NULL;
	o.server = 0;
	o.insecure = 1;		/* a client certificate without its key */
	assert_int_equal(bm_tls_config_new(&c, &o), BM_ECONFIG);
	/* a client must trust something unless insecure */
	{
		struct bm_tls_options co = { .server = 0 };
		assert_int_equal(bm_tls_config_new(&c, &co), BM_ECONFIG);
	}
}

/* Reload: connections keep the config they started with. */
static void test_reload_refcount(void **state)
{
	struct bm_tls_config *old = server_cfg("server.pem", "server.key"), *cur;
	struct pair p;

	pair_open(&p, bm_tls_config_ref(old), client_cfg("ca.pem", "localhost", 0));
	/* "SIGHUP": build a new config, drop ours on the old one. */
	cur = server_cfg("server.pem", "server.key");
	bm_tls_config_unref(old);
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	transfer(&p, p.cli, p.srv, (const uint8_t *)"still fine", 10);
	pair_close(&p);		/* frees old */
	bm_tls_config_unref(cur);
}

static void test_resumption(void **state)
{
	struct bm_tls_config *s = server_cfg("server.pem", "server.key");
	struct bm_tls_config *c = client_cfg("ca.pem", "localhost", 0);
	uint8_t sess[4096];
	size_t slen;
	struct pair p;

	pair_open(&p, bm_tls_config_ref(s), bm_tls_config_ref(c));
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	assert_int_equal(bm_tls_session_save(p.cli, sess, sizeof(sess), &slen), 0);
	assert_true(slen > 0);
	pair_close(&p);

	pair_open(&p, s, c);
	assert_int_equal(bm_tls_session_load(p.cli, sess, slen), 0);
	assert_int_equal(handshake(&p, NULL, NULL), 0);
	assert_int_equal(bm_tls_resumed(p.srv), 1);
	assert_int_equal(bm_tls_resumed(p.cli), 1);
	transfer(&p, p.cli, p.srv, (const uint8_t *)"resumed", 7);
	pair_close(&p);
}

/* In-memory transport: the hook the edge can use over evbuffers. */
struct pipe {
	uint8_t buf[65536];
	size_t len;
	int eof;
};

struct end {
	struct pipe *in, *out;
};

static int mem_send(void *ctx, const uint8_t *b, size_t n)
{
	struct end *e = ctx;
	size_t room = sizeof(e->out->buf) - e->out->len;

	if (!room)
		return BM_EAGAIN;
	if (n > room)
		n = room;
	memcpy(e->out->buf + e->out->len, b, n);
	e->out->len += n;
	return (int)n;
}

static int mem_recv(void *ctx, uint8_t *b, size_t n)
{
	struct end *e = ctx;

	if (!e->in->len)
		return e->in->eof ? 0 : BM_EAGAIN;
	if (n > e->in->len)
		n = e->in->len;
	memcpy(b, e->in->buf, n);
	memmove(e->in->buf, e->in->buf + n, e->in->len - n);
	e->in->len -= n;
	return (int)n;
}

static void test_custom_transport(void **state)
{
	static struct pipe a2b, b2a;
	struct end se = { &a2b, &b2a }, ce = { &b2a, &a2b };
	struct bm_tls_config *s = server_cfg("server.pem", "server.key");
	struct bm_tls_config *c = client_cfg("ca.pem", "localhost", 0);
	struct bm_tls *srv, *cli;
	int rs = BM_EAGAIN, rc = BM_EAGAIN;
	uint8_t buf[16];
	size_t n;

	assert_int_equal(bm_tls_new(&srv, s, -1), 0);
	assert_int_equal(bm_tls_new(&cli, c, -1), 0);
	bm_tls_set_transport(srv, mem_send, mem_recv, &se);
	bm_tls_set_transport(cli, mem_send, mem_recv, &ce);
	for (int i = 0; i < 100 && (rs || rc); i++) {
		if (rs)
			rs = bm_tls_handshake(srv);
		if (rc)
			rc = bm_tls_handshake(cli);
		assert_true(rs == 0 || rs == BM_EAGAIN);
		assert_true(rc == 0 || rc == BM_EAGAIN);
	}
	assert_int_equal(rs, 0);
	assert_int_equal(rc, 0);
	assert_int_equal(bm_tls_write(cli, "ping", 4, &n), 0);
	assert_int_equal(bm_tls_read(srv, buf, sizeof(buf), &n), 0);
	assert_int_equal(n, 4);
	assert_memory_equal(buf, "ping", 4);
	b2a.eof = 1;	/* server's direction closes without close_notify */
	assert_int_equal(bm_tls_read(cli, buf, sizeof(buf), &n), BM_ECLOSED);
	bm_tls_free(srv);
	bm_tls_free(cli);
	bm_tls_config_unref(s);
	bm_tls_config_unref(c);
}

/* Both ends driven by a libevent loop, re-arming on bm_tls_wants(). */
struct side {
	struct bm_tls *t;
	struct event *ev;
	int server;
	int phase;		/* 0 handshake, 1 exchange, 2 done */
	char got[64];
	size_t got_len;
	size_t sent;
	int failed;
};

static void arm(struct side *sd)
{
	unsigned w = bm_tls_wants(sd->t);
	short what = (short)((w & BM_TLS_WANT_WRITE ? EV_WRITE : 0) |
			     (w & BM_TLS_WANT_READ || !w ? EV_READ : 0));

	event_del(sd->ev);
	event_assign(sd->ev, event_get_base(sd->ev), event_get_fd(sd->ev), what,
		     event_get_callback(sd->ev), sd);
	event_add(sd->ev, NULL);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	static const char msg[] = "ping over libevent";
	struct side *sd = arg;
	size_t n;
	int rc;

	if (sd->phase == 0) {
		rc = bm_tls_handshake(sd->t);
		if (rc == BM_EAGAIN)
			goto out_arm;
		if (rc) {
			sd->failed = 1;
			return;
		}
		sd->phase = 1;
	}
	/* The client sends msg; the server echoes what it reads. */
	if (!sd->server && sd->sent < sizeof(msg)) {
		rc = bm_tls_write(sd->t, msg + sd->sent, sizeof(msg) - sd->sent, &n);
		if (rc == 0)
			sd->sent += n;
		else if (rc != BM_EAGAIN)
			sd->failed = 1;
		if (rc == BM_EAGAIN)
			goto out_arm;
	}
	for (;;) {
		rc = bm_tls_read(sd->t, sd->got + sd->got_len,
				 sizeof(sd->got) - sd->got_len, &n);
		if (rc == BM_EAGAIN)
			break;
		if (rc) {
			sd->failed = 1;
			return;
		}
		if (sd->server) {
			size_t w;
			/* Small echo: the socket buffer takes it at once. */
			if (bm_tls_write(sd->t, sd->got + sd->got_len, n, &w) || w != n)
				sd->failed = 1;
		}
		sd->got_len += n;
	}
	if (sd->got_len == sizeof(msg)) {
		sd->phase = 2;
		if (!sd->server)
			event_base_loopbreak(event_get_base(sd->ev));
		return;
	}
out_arm:
	arm(sd);
}

static void test_libevent_loop(void **state)
{
	struct event_base *base = event_base_new();
	struct timeval limit = { 5, 0 };
	struct side s = { .server = 1 }, c = { .server = 0 };
	struct pair p;

	assert_non_null(base);
	pair_open(&p, server_cfg("server.pem", "server.key"),
		  client_cfg("ca.pem", "localhost", 0));
	s.t = p.srv;
	c.t = p.cli;
	s.ev = event_new(base, p.fd[0], EV_READ, on_io, &s);
	c.ev = event_new(base, p.fd[1], EV_WRITE, on_io, &c);
	event_add(s.ev, NULL);
	event_add(c.ev, NULL);
	event_base_loopexit(base, &limit);
	assert_int_equal(event_base_dispatch(base), 0);
	assert_false(s.failed);
	assert_false(c.failed);
	assert_int_equal(c.phase, 2);
	assert_string_equal(c.got, "ping over libevent");
	assert_string_equal(s.got, "ping over libevent");
	event_free(s.ev);
	event_free(c.ev);
	event_base_free(base);
	pair_close(&p);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Figures: full and resumed handshakes per second (both ends in this one
 * thread, so the server's share is roughly half), heap per connection. */
static void test_figures(void **state)
{
	struct bm_tls_config *s = server_cfg("server.pem", "server.key");
	struct bm_tls_config *c = client_cfg("ca.pem", "localhost", 0);
	enum { N = 40, M = 20 };
	uint8_t sess[4096];
	size_t slen = 0;
	double t0, full, resumed;
	struct bm_tls *conns[M];
	struct mallinfo2 m0, m1, m2, m3;
	struct pair p;
	int fds[2];

	t0 = now_s();
	for (int i = 0; i < N; i++) {
		pair_open(&p, bm_tls_config_ref(s), bm_tls_config_ref(c));
		assert_int_equal(handshake(&p, NULL, NULL), 0);
		if (i == 0)
			assert_int_equal(bm_tls_session_save(p.cli, sess, sizeof(sess), &slen), 0);
		pair_close(&p);
	}
	full = N / (now_s() - t0);
	t0 = now_s();
	for (int i = 0; i < N; i++) {
		pair_open(&p, bm_tls_config_ref(s), bm_tls_config_ref(c));
		assert_int_equal(bm_tls_session_load(p.cli, sess, slen), 0);
		assert_int_equal(handshake(&p, NULL, NULL), 0);
		assert_int_equal(bm_tls_resumed(p.srv), 1);
		pair_close(&p);
	}
	resumed = N / (now_s() - t0);

	/* Heap held by idle connections: set up only, and established. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
	m0 = mallinfo2();
	for (int i = 0; i < M; i++)
		assert_int_equal(bm_tls_new(&conns[i], s, fds[0]), 0);
	m1 = mallinfo2();
	for (int i = 0; i < M; i++)
		bm_tls_free(conns[i]);
	close(fds[0]);
	close(fds[1]);
	{
		static struct pair ps[M];

		m2 = mallinfo2();
		for (int i = 0; i < M; i++) {
			pair_open(&ps[i], bm_tls_config_ref(s), bm_tls_config_ref(c));
			assert_int_equal(handshake(&ps[i], NULL, NULL), 0);
		}
		m3 = mallinfo2();
		for (int i = 0; i < M; i++)
			pair_close(&ps[i]);
	}
	printf("tls: %.0f full handshakes/s, %.0f resumed/s (client and server in one "
	       "thread, ECDSA P-256 cert, X25519)\n", full, resumed);
	printf("tls: heap per connection: %zu bytes after setup, %zu bytes per "
	       "established client+server pair\n",
	       (m1.uordblks - m0.uordblks) / M, (m3.uordblks - m2.uordblks) / M);
	bm_tls_config_unref(s);
	bm_tls_config_unref(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_and_data),
		cmocka_unit_test(test_wrong_ca),
		cmocka_unit_test(test_expired),
		cmocka_unit_test(test_wrong_name),
		cmocka_unit_test(test_insecure_client),
		cmocka_unit_test(test_mutual),
		cmocka_unit_test(test_config_errors),
		cmocka_unit_test(test_reload_refcount),
		cmocka_unit_test(test_resumption),
		cmocka_unit_test(test_custom_transport),
		cmocka_unit_test(test_libevent_loop),
		cmocka_unit_test(test_figures),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
