#include "bm_zmq.h"
#include "bm_err.h"
#include "bm_log.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <event2/event.h>
#include <zmq.h>

/* libzmq calls getpid() on every mailbox signal and wait, to notice a fork
 * (four calls per chat message at low load).  glibc no longer caches the
 * pid, so each is a system call, and on a paravirtualised VM a system call
 * is a few microseconds.  This definition in the executable takes the place
 * of libc's for libzmq (the dynamic linker binds libzmq's reference to it);
 * it returns the same value, read once per process and again in the child
 * of every fork() (pthread_atfork).  A child made by a raw clone() without
 * fork() would see its parent's pid: nothing in bimip does that. */
static pid_t bm_pid_cached;

static void bm_pid_reset(void)
{
	__atomic_store_n(&bm_pid_cached, (pid_t)syscall(SYS_getpid), __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void bm_pid_init(void)
{
	bm_pid_reset();
	(void)pthread_atfork(NULL, NULL, bm_pid_reset);
}

pid_t getpid(void)
{
	pid_t p = __atomic_load_n(&bm_pid_cached, __ATOMIC_RELAXED);

	if (p <= 0) {
		bm_pid_reset();
		p = __atomic_load_n(&bm_pid_cached, __ATOMIC_RELAXED);
	}
	return p;
}

/* A destination that reads batches: what is sent to it in one loop turn
 * goes as one ZeroMQ message (see bm_zsock_batch_peer). */
struct zdest {
	uint8_t rid[256];
	size_t rid_len;
	int on;              /* the peer reads batches */
	int held;            /* ZeroMQ refused the frame in buf; retried */
	uint8_t *buf;        /* batch frame being filled; len 0 = empty */
	size_t len, cap;
};

struct bm_zsock {
	void *sock;
	int type;
	struct event *ev;
	struct event *kick;
	struct event *flush;  /* end of turn: send the batches */
	struct zdest *dests;
	size_t n_dests;
	bm_zsock_msg_fn *on_msg;
	void *ud;
	uint64_t dropped, received, sent;
	int in_batch;         /* on_msg runs for an entry of a batch frame */
	uint64_t wakeups;     /* on_readable calls (ZMQ_FD and kicks) */
	/* ZAP handler (CURVE server with an allow list). */
	void *zctx;
	struct event_base *base;
	void *zap;
	struct event *zap_ev;
	char **allowed;
	size_t n_allowed;
};

static void drain(struct bm_zsock *z);
static void flush_all(struct bm_zsock *z);

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct bm_zsock *z = arg;

	z->wakeups++;
	/* ZMQ_FD also wakes when the socket can take output again. */
	flush_all(z);
	drain(z);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	flush_all(arg);
}

static int has_input(struct bm_zsock *z)
{
	int events = 0;
	size_t len = sizeof(events);

	if (zmq_getsockopt(z->sock, ZMQ_EVENTS, &events, &len) == -1)
		return 0;
	return events & ZMQ_POLLIN;
}

/* Receive one whole multipart message into parts; returns the part count
 * (0 = nothing to read).  Parts beyond max are read and dropped. */
static int recv_parts(void *sock, zmq_msg_t *parts, int max)
{
	int n = 0, more;
	size_t len;

	for (;;) {
		zmq_msg_t tmp;
		zmq_msg_t *m = n < max ? &parts[n] : &tmp;

		zmq_msg_init(m);
		if (zmq_msg_recv(m, sock, n == 0 ? ZMQ_DONTWAIT : 0) == -1) {
			zmq_msg_close(m);
			return n;
		}
		len = sizeof(more);
		zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len);
		if (m == &tmp)
			zmq_msg_close(m);
		n++;
		if (!more)
			return n;
	}
}

/* One batch frame: BM_ZBATCH_MAGIC, version 1, then entries
 * [u16 header length][u32 body length][header][body], little-endian.  A
 * malformed entry drops it and the rest of the frame. */
static void on_batch(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		     const uint8_t *p, size_t n)
{
	struct bm_ipc_hdr h;
	size_t o = 2;

	if (n < 2 || p[1] != 1) {
		z->dropped++;
		return;
	}
	while (o < n) {
		size_t hl, bl;

		if (n - o < 6) {
			z->dropped++;
			return;
		}
		hl = (size_t)p[o] | (size_t)p[o + 1] << 8;
		bl = (size_t)p[o + 2] | (size_t)p[o + 3] << 8 | (size_t)p[o + 4] << 16 |
		     (size_t)p[o + 5] << 24;
		o += 6;
		if (hl > n - o || bl > n - o - hl || bm_ipc_decode(p + o, hl, &h)) {
			z->dropped++;
			return;
		}
		z->received++;
		z->in_batch = 1;
		z->on_msg(z, rid, rid_len, &h, p + o + hl, bl, z->ud);
		z->in_batch = 0;
		o += hl + bl;
	}
}

static void drain(struct bm_zsock *z)
{
	zmq_msg_t parts[3];
	struct bm_ipc_hdr h;

	for (int i = 0; i < BM_ZSOCK_BATCH; i++) {
		int want = z->type == ZMQ_ROUTER ? 3 : 2;
		int n = recv_parts(z->sock, parts, 3), k = 0;

		if (n == 0)
			return;
		if (n == want - 1 && zmq_msg_size(&parts[n - 1]) > 0 &&
		    *(const uint8_t *)zmq_msg_data(&parts[n - 1]) == BM_ZBATCH_MAGIC) {
			on_batch(z, want == 3 ? zmq_msg_data(&parts[0]) : NULL,
				 want == 3 ? zmq_msg_size(&parts[0]) : 0,
				 zmq_msg_data(&parts[n - 1]), zmq_msg_size(&parts[n - 1]));
			goto next;
		}
		if (n != want) {
			z->dropped++;
			goto next;
		}
		if (want == 3)
			k = 1;
		if (bm_ipc_decode(zmq_msg_data(&parts[k]), zmq_msg_size(&parts[k]), &h)) {
			z->dropped++;
			goto next;
		}
		z->received++;
		z->on_msg(z, want == 3 ? zmq_msg_data(&parts[0]) : NULL,
			  want == 3 ? zmq_msg_size(&parts[0]) : 0, &h,
			  zmq_msg_data(&parts[k + 1]), zmq_msg_size(&parts[k + 1]), z->ud);
next:
		for (int j = 0; j < n && j < 3; j++)
			zmq_msg_close(&parts[j]);
	}
	/* Batch used up: come back after other events had their turn. */
	if (has_input(z))
		event_active(z->kick, EV_READ, 0);
}

struct bm_zsock *bm_zsock_new(struct event_base *base, void *zctx, int type,
			      const char *identity, bm_zsock_msg_fn *on_msg, void *ud)
{
	struct bm_zsock *z = calloc(1, sizeof(*z));
	int fd, one = 1, zero = 0;
	size_t len = sizeof(fd);

	if (!z)
		return NULL;
	z->type = type;
	z->zctx = zctx;
	z->base = base;
	z->on_msg = on_msg;
	z->ud = ud;
	z->sock = zmq_socket(zctx, type);
	if (!z->sock) {
		bm_err("zmq", "cannot create socket: %s", zmq_strerror(errno));
		goto out_free;
	}
	zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof(zero));
	if (type == ZMQ_ROUTER) {
		zmq_setsockopt(z->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
		/* A peer that comes back under its routing id (a node restarted
		 * after kill -9) takes it over.  Without this, a connection
		 * whose old one still has unread messages queued here is ignored
		 * for good (libzmq 4.3: the new pipe stays "anonymous"). */
		zmq_setsockopt(z->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
	}
	if (identity && *identity &&
	    zmq_setsockopt(z->sock, ZMQ_ROUTING_ID, identity, strlen(identity)) == -1) {
		bm_err("zmq", "cannot set routing id '%s': %s", identity, zmq_strerror(errno));
		goto out_close;
	}
	if (zmq_getsockopt(z->sock, ZMQ_FD, &fd, &len) == -1)
		goto out_close;
	z->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, z);
	z->kick = event_new(base, -1, 0, on_readable, z);
	z->flush = event_new(base, -1, 0, on_flush, z);
	if (!z->ev || !z->kick || !z->flush || event_add(z->ev, NULL) == -1)
		goto out_close;
	return z;
out_close:
	if (z->ev)
		event_free(z->ev);
	if (z->kick)
		event_free(z->kick);
	if (z->flush)
		event_free(z->flush);
	zmq_close(z->sock);
out_free:
	free(z);
	return NULL;
}

void bm_zsock_free(struct bm_zsock *z)
{
	if (!z)
		return;
	flush_all(z);     /* best effort, as a direct send would have been */
	event_free(z->ev);
	event_free(z->kick);
	event_free(z->flush);
	for (size_t i = 0; i < z->n_dests; i++)
		free(z->dests[i].buf);
	free(z->dests);
	if (z->zap_ev)
		event_free(z->zap_ev);
	if (z->zap)
		zmq_close(z->zap);
	for (size_t i = 0; i < z->n_allowed; i++)
		free(z->allowed[i]);
	free(z->allowed);
	zmq_close(z->sock);
	free(z);
}

int bm_zsock_bind(struct bm_zsock *z, const char *endpoint, char *bound, size_t cap)
{
	char ep[256];
	size_t n = strlen(endpoint);

	/* ZeroMQ spells "any port" as '*'; accept the familiar ':0' too. */
	if (n >= 2 && n < sizeof(ep) && strcmp(endpoint + n - 2, ":0") == 0)
		snprintf(ep, sizeof(ep), "%.*s:*", (int)(n - 2), endpoint);
	else
		snprintf(ep, sizeof(ep), "%s", endpoint);
	if (zmq_bind(z->sock, ep) == -1) {
		bm_err("zmq", "cannot bind '%s': %s", endpoint, zmq_strerror(errno));
		return BM_ESYS;
	}
	if (bound && cap) {
		size_t len = cap;
		if (zmq_getsockopt(z->sock, ZMQ_LAST_ENDPOINT, bound, &len) == -1)
			snprintf(bound, cap, "%s", ep);
	}
	return 0;
}

int bm_zsock_connect(struct bm_zsock *z, const char *endpoint)
{
	if (zmq_connect(z->sock, endpoint) == -1) {
		bm_err("zmq", "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
		return BM_ESYS;
	}
	/* A connect can change ZMQ_EVENTS without an fd edge. */
	event_active(z->kick, EV_READ, 0);
	return 0;
}

int bm_zsock_disconnect(struct bm_zsock *z, const char *endpoint)
{
	return zmq_disconnect(z->sock, endpoint) == -1 ? BM_ESYS : 0;
}

static struct zdest *dest_find(struct bm_zsock *z, const uint8_t *rid, size_t rid_len)
{
	for (size_t i = 0; i < z->n_dests; i++)
		if (z->dests[i].rid_len == rid_len &&
		    (!rid_len || !memcmp(z->dests[i].rid, rid, rid_len)))
			return &z->dests[i];
	return NULL;
}

static int errno_rc(void)
{
	return errno == EHOSTUNREACH ? BM_ENOENT : errno == EAGAIN ? BM_EAGAIN : BM_ESYS;
}

/* Send d's batch: 0 (sent, or dropped because the peer is gone), or
 * BM_EAGAIN (kept for the next try). */
static int flush_dest(struct bm_zsock *z, struct zdest *d)
{
	int rc = 0;

	if (!d->len)
		return 0;
	if (z->type == ZMQ_ROUTER &&
	    zmq_send(z->sock, d->rid, d->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
		rc = errno_rc();
	else if (zmq_send(z->sock, d->buf, d->len, ZMQ_DONTWAIT) == -1)
		rc = errno_rc();
	if (rc == BM_EAGAIN) {
		/* ZMQ_FD wakes the loop when the queue drains; a timer too, in
		 * case that edge was taken by a receive. */
		struct timeval tv = { 0, 5000 };
		event_add(z->flush, &tv);
		d->held = 1;
		return rc;
	}
	d->held = 0;
	if (rc)
		z->dropped++;
	d->len = 0;
	/* Memory back after a message far past the flush size.  A full batch
	 * needs up to 64 KiB (the capacity doubles past 32 KiB): that one is
	 * kept, or every full batch would grow a new buffer from 4 KiB,
	 * copying at each step, on pages the allocator had just given back. */
	if (d->cap > 4 * BM_ZBATCH_FLUSH) {
		free(d->buf);
		d->buf = NULL;
		d->cap = 0;
	}
	return 0;
}

static void flush_all(struct bm_zsock *z)
{
	int sent = 0;

	/* Only a frame ZeroMQ took counts: kicking after a refused one (a
	 * batch held at the high-water mark, or for a DEALER peer that is not
	 * connected) would come back here at once, a busy loop. */
	for (size_t i = 0; i < z->n_dests; i++)
		if (z->dests[i].len && !flush_dest(z, &z->dests[i]))
			sent = 1;
	/* Sending may have consumed the edge that announced pending input. */
	if (sent)
		event_active(z->kick, EV_READ, 0);
}

int bm_zsock_batch_peer(struct bm_zsock *z, const uint8_t *rid, size_t rid_len, int on)
{
	struct zdest *d;

	if (rid_len > sizeof(d->rid) || (z->type != ZMQ_ROUTER && rid_len))
		return BM_EINVAL;
	d = dest_find(z, rid, rid_len);
	if (!d && !on)
		return 0;
	if (!d) {
		struct zdest *v = realloc(z->dests, (z->n_dests + 1) * sizeof(*v));
		if (!v)
			return BM_ENOMEM;
		z->dests = v;
		d = &v[z->n_dests++];
		memset(d, 0, sizeof(*d));
		if (rid_len)
			memcpy(d->rid, rid, rid_len);
		d->rid_len = rid_len;
	}
	/* What is queued goes first if ZeroMQ takes it; a batch held at the
	 * high-water mark goes later, after direct sends (a peer that stopped
	 * reading batches drops it anyway). */
	if (!on)
		flush_dest(z, d);
	d->on = on;
	return 0;
}

/* Append one message to d's batch frame. */
static int batch_add(struct bm_zsock *z, struct zdest *d, const uint8_t *hdr, size_t hn,
		     const void *body, size_t body_len)
{
	size_t need = 6 + hn + body_len;
	uint8_t *p;

	/* Full: send it first; a peer that takes nothing holds the caller back. */
	if (d->len && d->len + need > BM_ZBATCH_FLUSH && flush_dest(z, d))
		return BM_EAGAIN;
	if (d->len + need + 2 > d->cap) {
		size_t cap = d->cap ? d->cap : 4096;
		while (cap < d->len + need + 2)
			cap *= 2;
		p = realloc(d->buf, cap);
		if (!p)
			return BM_ENOMEM;
		d->buf = p;
		d->cap = cap;
	}
	if (!d->len) {
		d->buf[0] = BM_ZBATCH_MAGIC;
		d->buf[1] = 1;
		d->len = 2;
		event_active(z->flush, EV_WRITE, 0);
	}
	p = d->buf + d->len;
	p[0] = (uint8_t)hn;
	p[1] = (uint8_t)(hn >> 8);
	p[2] = (uint8_t)body_len;
	p[3] = (uint8_t)(body_len >> 8);
	p[4] = (uint8_t)(body_len >> 16);
	p[5] = (uint8_t)(body_len >> 24);
	memcpy(p + 6, hdr, hn);
	if (body_len)
		memcpy(p + 6 + hn, body, body_len);
	d->len += need;
	return 0;
}

int bm_zsock_send(struct bm_zsock *z, const uint8_t *rid, size_t rid_len,
		  const struct bm_ipc_hdr *h, const void *body, size_t body_len)
{
	uint8_t hdr[BM_IPC_HDR_MAX];
	int hn = bm_ipc_encode(h, hdr, sizeof(hdr)), rc = 0;
	struct zdest *d;

	if (hn < 0)
		return BM_EPROTO;
	if (z->n_dests && (d = dest_find(z, rid, rid_len)) && d->on) {
		rc = body_len > UINT32_MAX ? BM_ETOOBIG : batch_add(z, d, hdr, (size_t)hn, body, body_len);
		if (!rc)
			z->sent++;
		return rc;
	}
	if (z->type == ZMQ_ROUTER &&
	    zmq_send(z->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
		goto fail;
	/* Once the first part is queued the rest cannot fail for HWM. */
	if (zmq_send(z->sock, hdr, (size_t)hn, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1 ||
	    zmq_send(z->sock, body, body_len, ZMQ_DONTWAIT) == -1)
		goto fail;
	z->sent++;
	goto out;
fail:
	rc = errno_rc();
out:
	/* Sending may have consumed the edge that announced pending input. */
	event_active(z->kick, EV_READ, 0);
	return rc;
}

/* --- CURVE and the ZAP handler --------------------------------------------- */

static void on_zap(evutil_socket_t fd, short what, void *arg)
{
	struct bm_zsock *z = arg;
	int events;
	size_t len;

	for (;;) {
		zmq_msg_t parts[7];
		int n, ok = 0;
		char key[41];

		len = sizeof(events);
		if (zmq_getsockopt(z->zap, ZMQ_EVENTS, &events, &len) == -1 ||
		    !(events & ZMQ_POLLIN))
			return;
		n = recv_parts(z->zap, parts, 7);
		if (n == 0)
			return;
		/* ZAP request: version, request id, domain, address, identity,
		 * mechanism, credentials (the 32-byte client public key). */
		if (n == 7 && zmq_msg_size(&parts[6]) == 32) {
			zmq_z85_encode(key, zmq_msg_data(&parts[6]), 32);
			for (size_t i = 0; i < z->n_allowed && !ok; i++)
				ok = strcmp(key, z->allowed[i]) == 0;
			if (!ok)
				bm_warn("zmq", "refused CURVE client with unknown key '%s'", key);
		}
		if (n >= 2) {
			zmq_send(z->zap, "1.0", 3, ZMQ_SNDMORE);
			zmq_send(z->zap, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), ZMQ_SNDMORE);
			zmq_send(z->zap, ok ? "200" : "400", 3, ZMQ_SNDMORE);
			zmq_send(z->zap, ok ? "OK" : "unknown key", ok ? 2 : 11, ZMQ_SNDMORE);
			zmq_send(z->zap, "", 0, ZMQ_SNDMORE);
			zmq_send(z->zap, "", 0, 0);
		}
		for (int j = 0; j < n && j < 7; j++)
			zmq_msg_close(&parts[j]);
	}
}

int bm_zsock_curve_server(struct bm_zsock *z, const char *secret_z85,
			  const char *const *allowed_public_z85, size_t n_allowed)
{
	int one = 1;

	if (!secret_z85 || strlen(secret_z85) != 40 ||
	    zmq_setsockopt(z->sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) == -1 ||
	    zmq_setsockopt(z->sock, ZMQ_CURVE_SECRETKEY, secret_z85, 40) == -1)
		return BM_EINVAL;
	if (!n_allowed)
		return 0;
	z->allowed = calloc(n_allowed, sizeof(char *));
	if (!z->allowed)
		return BM_ENOMEM;
	for (size_t i = 0; i < n_allowed; i++) {
		z->allowed[i] = strdup(allowed_public_z85[i]);
		if (!z->allowed[i])
			return BM_ENOMEM;
		z->n_allowed++;
	}
	/* The ZAP endpoint is per context: one CURVE server per context. */
	if (!z->zap) {
		int fd;
		size_t len = sizeof(fd);

		z->zap = zmq_socket(z->zctx, ZMQ_REP);
		if (!z->zap || zmq_bind(z->zap, "inproc://zeromq.zap.01") == -1 ||
		    zmq_getsockopt(z->zap, ZMQ_FD, &fd, &len) == -1) {
			bm_err("zmq", "cannot start the ZAP handler: %s", zmq_strerror(errno));
			return BM_ESYS;
		}
		z->zap_ev = event_new(z->base, fd, EV_READ | EV_PERSIST, on_zap, z);
		if (!z->zap_ev || event_add(z->zap_ev, NULL) == -1)
			return BM_ENOMEM;
	}
	return 0;
}

int bm_zsock_curve_client(struct bm_zsock *z, const char *server_public_z85,
			  const char *public_z85, const char *secret_z85)
{
	if (!server_public_z85 || !public_z85 || !secret_z85 ||
	    strlen(server_public_z85) != 40 || strlen(public_z85) != 40 ||
	    strlen(secret_z85) != 40 ||
	    zmq_setsockopt(z->sock, ZMQ_CURVE_SERVERKEY, server_public_z85, 40) == -1 ||
	    zmq_setsockopt(z->sock, ZMQ_CURVE_PUBLICKEY, public_z85, 40) == -1 ||
	    zmq_setsockopt(z->sock, ZMQ_CURVE_SECRETKEY, secret_z85, 40) == -1)
		return BM_EINVAL;
	return 0;
}

void *bm_zmq_ctx_new(void)
{
	void *ctx = zmq_ctx_new();

	mallopt(M_TRIM_THRESHOLD, 8 << 20);

	/* Before the first socket: the threads start with it.  Best effort
	 * (a libzmq without the option keeps the default policy). */
	if (ctx && zmq_ctx_set(ctx, ZMQ_THREAD_SCHED_POLICY, SCHED_BATCH) == -1)
		bm_debug("zmq", "cannot set SCHED_BATCH for the I/O threads: %s",
			 zmq_strerror(errno));
	return ctx;
}

int bm_zmq_curve_keypair(char public_z85[41], char secret_z85[41])
{
	return zmq_curve_keypair(public_z85, secret_z85) == -1 ? BM_ESYS : 0;
}

int bm_zsock_held(struct bm_zsock *z, const uint8_t *rid, size_t rid_len)
{
	struct zdest *d = z->n_dests ? dest_find(z, rid, rid_len) : NULL;

	return d && d->held;
}

int bm_zsock_in_batch(const struct bm_zsock *z) { return z->in_batch; }
uint64_t bm_zsock_wakeups(const struct bm_zsock *z) { return z->wakeups; }
uint64_t bm_zsock_dropped(const struct bm_zsock *z) { return z->dropped; }
uint64_t bm_zsock_received(const struct bm_zsock *z) { return z->received; }
uint64_t bm_zsock_sent(const struct bm_zsock *z) { return z->sent; }
void *bm_zsock_raw(struct bm_zsock *z) { return z->sock; }
