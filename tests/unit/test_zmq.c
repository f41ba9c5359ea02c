#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <cmocka.h>

#include <event2/event.h>
#include <zmq.h>

#include "bm_err.h"
#include "bm_time.h"
#include "bm_zmq.h"

struct ctx {
	struct event_base *base;
	int got_router, got_dealer;
	char last_body[64];
	uint8_t rid[64];
	size_t rid_len;
	struct bm_zsock *router;
};

static void on_router(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		      const struct bm_ipc_hdr *h, const uint8_t *body, size_t n, void *ud)
{
	struct ctx *c = ud;
	struct bm_ipc_hdr r;

	c->got_router++;
	memcpy(c->rid, rid, rid_len);
	c->rid_len = rid_len;
	snprintf(c->last_body, sizeof(c->last_body), "%.*s", (int)n, body);
	assert_int_equal(h->kind, BM_IPC_STANZA);
	assert_string_equal(h->eid, "alice");
	memset(&r, 0, sizeof(r));
	r.kind = BM_IPC_PUSH;
	r.session = h->session;
	strcpy(r.origin, "srv");
	assert_int_equal(bm_zsock_send(z, rid, rid_len, &r, "pong", 4), 0);
}

static void on_dealer(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		      const struct bm_ipc_hdr *h, const uint8_t *body, size_t n, void *ud)
{
	struct ctx *c = ud;

	assert_null(rid);
	assert_int_equal(h->kind, BM_IPC_PUSH);
	assert_int_equal(h->session, 42 + c->got_dealer);
	c->got_dealer++;
}

static void run_until(struct ctx *c, int want)
{
	/* Bounded: at most ~5 s of loop turns. */
	for (int i = 0; i < 5000 && c->got_dealer < want; i++) {
		struct timeval tv = { 0, 1000 };
		event_base_loopexit(c->base, &tv);
		event_base_dispatch(c->base);
	}
}

static void exchange(struct ctx *c, struct bm_zsock *d, int count)
{
	for (int i = 0; i < count; i++) {
		struct bm_ipc_hdr h;
		memset(&h, 0, sizeof(h));
		h.kind = BM_IPC_STANZA;
		h.session = 42 + (uint64_t)i;
		strcpy(h.origin, "sig-1");
		strcpy(h.eid, "alice");
		assert_int_equal(bm_zsock_send(d, NULL, 0, &h, "ping", 4), 0);
	}
	run_until(c, count);
}

/* A ROUTER "srv" bound on a loopback port (ep) and a DEALER "sig-1"
 * connected to it, on c's loop. */
static void pair_open(struct ctx *c, void *zctx, struct bm_zsock **r, struct bm_zsock **d,
		      char *ep, size_t cap)
{
	*r = bm_zsock_new(c->base, zctx, ZMQ_ROUTER, "srv", on_router, c);
	*d = bm_zsock_new(c->base, zctx, ZMQ_DEALER, "sig-1", on_dealer, c);
	assert_non_null(*r);
	assert_non_null(*d);
	assert_int_equal(bm_zsock_bind(*r, "tcp://127.0.0.1:0", ep, cap), 0);
	assert_int_equal(bm_zsock_connect(*d, ep), 0);
}

static void pair_close(struct ctx *c, void *zctx, struct bm_zsock *r, struct bm_zsock *d)
{
	bm_zsock_free(d);
	bm_zsock_free(r);
	zmq_ctx_term(zctx);
	event_base_free(c->base);
}

static void test_router_dealer(void **state)
{
	void *zctx = zmq_ctx_new();
	struct ctx c = { .base = event_base_new() };
	char ep[128];
	struct bm_zsock *r, *d;

	pair_open(&c, zctx, &r, &d, ep, sizeof(ep));
	assert_non_null(strstr(ep, "tcp://127.0.0.1:"));
	exchange(&c, d, 300);   /* more than one drain batch */
	assert_int_equal(c.got_dealer, 300);
	assert_int_equal(c.got_router, 300);
	assert_string_equal(c.last_body, "ping");
	assert_int_equal(c.rid_len, 5);
	assert_memory_equal(c.rid, "sig-1", 5);
	/* Unknown routing id on a ROUTER is reported, not silently dropped. */
	{
		struct bm_ipc_hdr h = { .kind = BM_IPC_PUSH };
		assert_int_equal(bm_zsock_send(r, (const uint8_t *)"nobody", 6, &h, "", 0),
				 BM_ENOENT);
	}
	pair_close(&c, zctx, r, d);
}

/* Batching peers: one ZeroMQ message per loop turn, in order (on_dealer
 * checks the sessions come back 42, 43, ...), more than one frame's worth
 * (BM_ZBATCH_FLUSH) per turn; malformed batch frames are dropped. */
static void test_batch(void **state)
{
	void *zctx = zmq_ctx_new();
	struct ctx c = { .base = event_base_new() };
	char ep[128];
	struct bm_zsock *r, *d;
	void *raw;
	uint64_t dropped;

	pair_open(&c, zctx, &r, &d, ep, sizeof(ep));
	assert_int_equal(bm_zsock_batch_peer(d, NULL, 0, 1), 0);
	assert_int_equal(bm_zsock_batch_peer(r, (const uint8_t *)"sig-1", 5, 1), 0);
	assert_int_equal(bm_zsock_batch_peer(d, (const uint8_t *)"x", 1, 1), BM_EINVAL);
	exchange(&c, d, 3000);   /* ~150 KiB: several batch frames in one turn */
	assert_int_equal(bm_zsock_held(d, NULL, 0), 0);
	assert_int_equal(c.got_dealer, 3000);
	assert_int_equal(c.got_router, 3000);
	assert_int_equal(bm_zsock_dropped(r), 0);
	assert_int_equal(bm_zsock_dropped(d), 0);
	/* Back to one message per send: still in order, still received. */
	assert_int_equal(bm_zsock_batch_peer(d, NULL, 0, 0), 0);
	c.got_dealer = 0;
	exchange(&c, d, 10);
	assert_int_equal(c.got_dealer, 10);

	/* Malformed batches from a raw peer: dropped and counted, no crash. */
	raw = zmq_socket(zctx, ZMQ_DEALER);
	assert_non_null(raw);
	assert_int_equal(zmq_connect(raw, ep), 0);
	{
		static const uint8_t bad[][12] = {
			{ BM_ZBATCH_MAGIC },                                  /* no version */
			{ BM_ZBATCH_MAGIC, 2 },                               /* version 2 */
			{ BM_ZBATCH_MAGIC, 1, 5, 0 },                         /* short entry */
			{ BM_ZBATCH_MAGIC, 1, 200, 0, 0, 0, 0, 0, 1, 2 },    /* header too long */
			{ BM_ZBATCH_MAGIC, 1, 1, 0, 255, 255, 255, 255, 1 }, /* body too long */
			{ BM_ZBATCH_MAGIC, 1, 2, 0, 0, 0, 0, 0, 0xB1, 1 },   /* bad header */
		};
		static const size_t len[] = { 1, 2, 4, 10, 9, 10 };
		size_t n = sizeof(len) / sizeof(len[0]);

		dropped = bm_zsock_dropped(r);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(zmq_send(raw, bad[i], len[i], 0), (int)len[i]);
		for (int i = 0; i < 5000 && bm_zsock_dropped(r) < dropped + n; i++) {
			struct timeval tv = { 0, 1000 };
			event_base_loopexit(c.base, &tv);
			event_base_dispatch(c.base);
		}
		assert_int_equal(bm_zsock_dropped(r), dropped + n);
	}
	zmq_close(raw);
	pair_close(&c, zctx, r, d);
}

static void test_curve(void **state)
{
	void *zctx = zmq_ctx_new();
	struct ctx c = { .base = event_base_new() };
	char spub[41], ssec[41], cpub[41], csec[41], xpub[41], xsec[41], ep[128];
	const char *allowed[1];
	struct bm_zsock *r, *d, *bad;

	assert_int_equal(bm_zmq_curve_keypair(spub, ssec), 0);
	assert_int_equal(bm_zmq_curve_keypair(cpub, csec), 0);
	assert_int_equal(bm_zmq_curve_keypair(xpub, xsec), 0);
	allowed[0] = cpub;
	r = bm_zsock_new(c.base, zctx, ZMQ_ROUTER, "srv", on_router, &c);
	assert_int_equal(bm_zsock_curve_server(r, ssec, allowed, 1), 0);
	assert_int_equal(bm_zsock_bind(r, "tcp://127.0.0.1:0", ep, sizeof(ep)), 0);
	/* A client with an unknown key is refused by the ZAP handler. */
	bad = bm_zsock_new(c.base, zctx, ZMQ_DEALER, "evil", on_dealer, &c);
	assert_int_equal(bm_zsock_curve_client(bad, spub, xpub, xsec), 0);
	assert_int_equal(bm_zsock_connect(bad, ep), 0);
	d = bm_zsock_new(c.base, zctx, ZMQ_DEALER, "sig-1", on_dealer, &c);
	assert_int_equal(bm_zsock_curve_client(d, spub, cpub, csec), 0);
	assert_int_equal(bm_zsock_connect(d, ep), 0);
	{
		struct bm_ipc_hdr h = { .kind = BM_IPC_STANZA, .session = 42 };
		strcpy(h.eid, "alice");
		assert_int_equal(bm_zsock_send(bad, NULL, 0, &h, "evil", 4), 0);
	}
	exchange(&c, d, 3);
	assert_int_equal(c.got_dealer, 3);
	assert_int_equal(c.got_router, 3);  /* nothing from the refused client */
	assert_string_equal(c.last_body, "ping");
	assert_int_equal(bm_zsock_curve_client(d, "short", cpub, csec), BM_EINVAL);
	bm_zsock_free(bad);
	pair_close(&c, zctx, r, d);
}

struct counts {
	int old, fresh;
};

static void on_count(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		     const struct bm_ipc_hdr *h, const uint8_t *body, size_t n, void *ud)
{
	struct counts *k = ud;

	if (n == 3 && !memcmp(body, "old", 3))
		k->old++;
	else if (n == 3 && !memcmp(body, "new", 3))
		k->fresh++;
}

static void send_n(struct bm_zsock *d, const char *body, int count)
{
	struct bm_ipc_hdr h = { .kind = BM_IPC_STANZA };

	strcpy(h.origin, "sig-1");
	for (int i = 0; i < count; i++)
		assert_int_equal(bm_zsock_send(d, NULL, 0, &h, body, 3), 0);
}

/* A node killed and restarted at once connects again under the same routing
 * id while the ROUTER still holds unread messages from the dead connection
 * (its end is queued behind them).  Without ZMQ_ROUTER_HANDOVER the ROUTER
 * ignored the new connection for good: a signal restarted under load was
 * never heard from again by that server (make soak, SOAK_DOWN_MS=0). */
static void test_same_id_reconnect(void **state)
{
	void *zctx = zmq_ctx_new();
	struct event_base *base = event_base_new();
	struct counts k = { 0, 0 };
	char ep[128];
	struct bm_zsock *r = bm_zsock_new(base, zctx, ZMQ_ROUTER, "srv", on_count, &k);
	struct bm_zsock *d = bm_zsock_new(base, zctx, ZMQ_DEALER, "sig-1", on_count, &k);
	zmq_pollitem_t it = { bm_zsock_raw(r), 0, ZMQ_POLLIN, 0 };

	assert_int_equal(bm_zsock_bind(r, "tcp://127.0.0.1:0", ep, sizeof(ep)), 0);
	assert_int_equal(bm_zsock_connect(d, ep), 0);
	send_n(d, "old", 1000);
	/* The first of them has reached the ROUTER; none is read. */
	assert_int_equal(zmq_poll(&it, 1, 5000), 1);
	bm_zsock_free(d);
	d = bm_zsock_new(base, zctx, ZMQ_DEALER, "sig-1", on_count, &k);
	assert_int_equal(bm_zsock_connect(d, ep), 0);
	/* Bounded: at most ~5 s of loop turns, sending while not heard. */
	for (int i = 0; i < 500 && k.fresh == 0; i++) {
		struct timeval tv = { 0, 10000 };
		send_n(d, "new", 1);
		event_base_loopexit(base, &tv);
		event_base_dispatch(base);
	}
	assert_true(k.old > 0);
	assert_true(k.fresh > 0);
	bm_zsock_free(d);
	bm_zsock_free(r);
	zmq_ctx_term(zctx);
	event_base_free(base);
}

/* A batch ZeroMQ refuses (a DEALER with ZMQ_IMMEDIATE and no peer) is held
 * and retried on a timer; it must not turn the loop into a busy loop
 * (it did: each refused flush kicked the read callback, which flushed). */
static void test_batch_held_no_spin(void **state)
{
	void *zctx = zmq_ctx_new();
	struct event_config *cfg = event_config_new();
	struct ctx c;
	struct bm_zsock *d;
	struct bm_ipc_hdr h = { .kind = BM_IPC_FORWARD };
	int one = 1;
	uint64_t w0;

	memset(&c, 0, sizeof(c));
	assert_non_null(cfg);
	assert_int_equal(event_config_set_max_dispatch_interval(cfg, NULL, 64, 0), 0);
	c.base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	assert_non_null(c.base);
	d = bm_zsock_new(c.base, zctx, ZMQ_DEALER, "lonely", on_dealer, &c);
	assert_non_null(d);
	zmq_setsockopt(bm_zsock_raw(d), ZMQ_IMMEDIATE, &one, sizeof(one));
	/* A port nobody listens on: the connect never completes. */
	assert_int_equal(bm_zsock_connect(d, "tcp://127.0.0.1:1"), 0);
	assert_int_equal(bm_zsock_batch_peer(d, NULL, 0, 1), 0);
	assert_int_equal(bm_zsock_send(d, NULL, 0, &h, "x", 1), 0);
	w0 = bm_zsock_wakeups(d);
	/* The loop stops after 300 ms even if busy: a busy loop fails the
	 * test instead of hanging it (the base checks its timers every 64
	 * callbacks). */
	{
		struct timeval tv = { 0, 300000 };
		event_base_loopexit(c.base, &tv);
		event_base_dispatch(c.base);
	}
	/* Retries every 5 ms come from the timer, not from read wake-ups. */
	print_message("read wake-ups in 300 ms with a held batch: %llu\n",
		      (unsigned long long)(bm_zsock_wakeups(d) - w0));
	assert_true(bm_zsock_wakeups(d) - w0 < 100);
	assert_int_equal(bm_zsock_held(d, NULL, 0), 1);
	bm_zsock_free(d);
	zmq_ctx_term(zctx);
	event_base_free(c.base);
}

/* bm_zmq.c answers getpid() from a cache (libzmq calls it on every mailbox
 * operation): the answer must be the kernel's, in the parent and in the
 * child of a fork, and libzmq must be bound to it. */
static void test_getpid_cache(void **state)
{
	pid_t pid;
	int st;

	assert_int_equal(getpid(), (pid_t)syscall(SYS_getpid));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(getpid() == (pid_t)syscall(SYS_getpid) && getpid() != getppid() ? 0 : 1);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(getpid(), (pid_t)syscall(SYS_getpid));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_getpid_cache),
		cmocka_unit_test(test_router_dealer),
		cmocka_unit_test(test_batch),
		cmocka_unit_test(test_batch_held_no_spin),
		cmocka_unit_test(test_curve),
		cmocka_unit_test(test_same_id_reconnect),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
