/*
 * sess.c - client sessions at the edge.
 *
 * Life of a connection:
 *   accepted   -> (wss: TLS handshake) -> HTTP upgrade request, read into a
 *                 per-session buffer of at most BM_HTTP_MAX_HEAD bytes;
 *                 token verified; 101 or an HTTP error with a reason
 *   SIG_OPEN   -> WebSocket frames; each binary message is one MessageScheme:
 *                 ping answered here, the rest forwarded to the owning server
 *   SIG_CLOSING-> a close frame is queued; once written the socket is closed
 *   SIG_DEAD   -> reaped after the callback that killed it returned
 *
 * Reads go through one process-wide buffer; a session keeps bytes only for
 * an unfinished frame header or control frame (<= 139 bytes), a fragmented
 * message being reassembled (<= limits.max_message), or output the socket
 * did not take (<= limits.max_output, past which the client is a slow
 * consumer and is disconnected).
 */
#include "sig.h"

#include "bm_config.h"
#include "bm_env.h"
#include "bm_err.h"
#include "bm_http.h"
#include "bm_log.h"
#include "bm_metrics.h"
#include "bm_time.h"
#include "bm_tls.h"
#include "bm_uring.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static uint32_t now_ms32(void)
{
	return (uint32_t)bm_mono_ms();
}

static void on_io(evutil_socket_t fd, short what, void *arg);

/* --- bookkeeping ------------------------------------------------------------------ */

static void lru_unlink(struct sig *g, struct sig_sess *s)
{
	if (s->lru_prev)
		s->lru_prev->lru_next = s->lru_next;
	else if (g->lru_head == s)
		g->lru_head = s->lru_next;
	if (s->lru_next)
		s->lru_next->lru_prev = s->lru_prev;
	else if (g->lru_tail == s)
		g->lru_tail = s->lru_prev;
	s->lru_prev = s->lru_next = NULL;
}

static void lru_touch(struct sig *g, struct sig_sess *s)
{
	s->last_ms = now_ms32();
	s->pinged = 0;
	if (g->lru_tail == s)
		return;
	lru_unlink(g, s);
	s->lru_prev = g->lru_tail;
	if (g->lru_tail)
		g->lru_tail->lru_next = s;
	else
		g->lru_head = s;
	g->lru_tail = s;
}

static void set_events(struct sig *g, struct sig_sess *s, int want_write)
{
	if (s->wants_write == want_write)
		return;
	/* Waiting to write with nothing of ours queued: TLS holds the bytes
	 * (it may refuse to read until they are out).  The stall clock runs. */
	if (want_write && !s->out_len)
		s->out_ms = now_ms32();
	event_del(&s->ev);
	event_assign(&s->ev, g->base, s->fd,
		     EV_READ | EV_PERSIST | (want_write ? EV_WRITE : 0), on_io, s);
	event_add(&s->ev, NULL);
	s->wants_write = (uint8_t)want_write;
}

static void kill_sess(struct sig *g, struct sig_sess *s)
{
	if (s->state == SIG_DEAD)
		return;
	s->state = SIG_DEAD;
	s->reap_next = g->reap;
	g->reap = s;
	event_del(&s->ev);
	if (g->reap_ev)
		event_active(g->reap_ev, 0, 0);
}

void sig_sess_reap(struct sig *g)
{
	while (g->reap) {
		struct sig_sess *s = g->reap;

		g->reap = s->reap_next;
		if (s->registered) {
			if (bm_map_get(&g->sessions, s->key) == s)
				bm_map_del(&g->sessions, s->key);
			sig_link_session_close(g, s);
			g->m.n_sessions--;
		}
		lru_unlink(g, s);
		sig_idtab_del(&g->by_id, s->id);
		if (s->tls)
			bm_tls_free(s->tls);
		close(s->fd);
		free(s->in);
		free(s->out);
		free(s->msg);
		free(s->key);   /* key_buf is in the same allocation */
		free(s);
		g->n_live--;
		(*g->m.closed)++;
	}
}

struct sig_sess *sig_sess_find(struct sig *g, const char *eid, const char *device)
{
	char key[256];

	snprintf(key, sizeof(key), "%s\x1f%s", eid, device);
	return bm_map_get(&g->sessions, key);
}

/* --- raw I/O: plain socket or TLS -------------------------------------------------- */

/* > 0 bytes, 0 end of stream, BM_EAGAIN, or another error. */
static ssize_t sio_read(struct sig_sess *s, uint8_t *buf, size_t cap)
{
	if (s->tls) {
		size_t n;
		int rc = bm_tls_read(s->tls, buf, cap, &n);
		if (rc == BM_ECLOSED)
			return 0;
		return rc ? rc : (ssize_t)n;
	}
	for (;;) {
		ssize_t n = read(s->fd, buf, cap);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? BM_EAGAIN : BM_EIO;
	}
}

static ssize_t sio_write(struct sig_sess *s, const uint8_t *p, size_t n)
{
	if (s->tls) {
		size_t w;
		int rc = bm_tls_write(s->tls, p, n, &w);
		return rc ? rc : (ssize_t)w;
	}
	for (;;) {
		ssize_t w = write(s->fd, p, n);
		if (w >= 0)
			return w;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? BM_EAGAIN : BM_EIO;
	}
}

/* Queue bytes behind unsent output.  Returns 0 or BM_EFULL (slow consumer). */
static int out_append(struct sig *g, struct sig_sess *s, const uint8_t *p, size_t n)
{
	size_t need = s->out_len + n;

	if (need > (size_t)g->cfg.max_output + BM_WS_MAX_CONTROL_FRAME)
		return BM_EFULL;
	if (!s->out_len)
		s->out_ms = now_ms32();
	if (need > s->out_cap) {
		size_t cap = s->out_cap ? s->out_cap : 512;
		uint8_t *q;
		while (cap < need)
			cap *= 2;
		q = realloc(s->out, cap);
		if (!q)
			return BM_ENOMEM;
		s->out = q;
		s->out_cap = (uint32_t)cap;
	}
	if (n)  /* p is NULL for a frame without payload */
		memcpy(s->out + s->out_len, p, n);
	s->out_len = (uint32_t)need;
	return 0;
}

/* Write queued output.  0 when empty, BM_EAGAIN when the socket is full,
 * or an error (the session is then dead). */
static int flush_out(struct sig *g, struct sig_sess *s)
{
	while (s->out_off < s->out_len) {
		size_t n = s->out_len - s->out_off;
		ssize_t w;

		/* After WANT_WRITE, mbedTLS must be called again with the same
		 * length: it finishes the record it holds and returns the length
		 * it is given, so passing the grown queue would skip bytes. */
		if (s->tls_wlen)
			n = s->tls_wlen;
		w = sio_write(s, s->out + s->out_off, n);
		if (w == BM_EAGAIN) {
			if (s->tls)
				s->tls_wlen = (uint32_t)n;
			set_events(g, s, !s->tls || (bm_tls_wants(s->tls) & BM_TLS_WANT_WRITE));
			return BM_EAGAIN;
		}
		s->tls_wlen = 0;
		if (w < 0) {
			kill_sess(g, s);
			return (int)w;
		}
		s->out_off += (uint32_t)w;
	}
	/* All written: give the memory back, an idle session holds none. */
	free(s->out);
	s->out = NULL;
	s->out_len = s->out_cap = s->out_off = 0;
	set_events(g, s, 0);
	if (s->state == SIG_CLOSING) {
		if (s->tls)
			bm_tls_close_notify(s->tls);
		shutdown(s->fd, SHUT_WR);
		kill_sess(g, s);
	}
	return 0;
}

/* More output queued than limits.max_output allows: cut the session. */
static void slow_consumer(struct sig *g, struct sig_sess *s)
{
	(*g->m.slow_consumers)++;
	bm_info("sess", "closing slow consumer eid=%s device=%s: %u bytes unsent",
		s->eid ? s->eid : "-", s->device ? s->device : "-", s->out_len);
	kill_sess(g, s);
}

/* Send header + payload, directly when nothing is queued. */
static int send_raw(struct sig *g, struct sig_sess *s, const uint8_t *h, size_t hn,
		    const uint8_t *p, size_t n)
{
	size_t done = 0, total = hn + n;
	int rc;

	if (s->state == SIG_DEAD)
		return BM_ECLOSED;
	if (!s->out_len && !s->tls) {
		struct iovec iov[2] = { { (void *)h, hn }, { (void *)p, n } };
		ssize_t w = writev(s->fd, iov, n ? 2 : 1);
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			kill_sess(g, s);
			return BM_EIO;
		}
		done = w > 0 ? (size_t)w : 0;
		if (done == total)
			return 0;
	}
	if (done < hn) {
		rc = out_append(g, s, h + done, hn - done);
		if (!rc)
			rc = out_append(g, s, p, n);
	} else {
		rc = out_append(g, s, p + (done - hn), n - (done - hn));
	}
	if (rc) {
		slow_consumer(g, s);
		return rc;
	}
	flush_out(g, s);
	return 0;
}

/* Past this much corked output a session is written at once: memory per
 * session stays small and a slow consumer is judged on what the socket
 * refused, as without corking. */
#define CORK_MAX 65536

static int uring_run(struct sig *g, void (*done)(void *, uint64_t, int))
{
	(*g->m.uring_runs)++;
	(*g->m.uring_ops) += bm_uring_queued(&g->uring);
	return bm_uring_run(&g->uring, done, g);
}

/* A send of sig_sess_flush's ring completed: the same as a write() in
 * flush_out, which finishes the session's output (or tries the rest and
 * waits for EV_WRITE when the socket was full). */
static void on_sent(void *arg, uint64_t id, int res)
{
	struct sig *g = arg;
	struct sig_sess *s = sig_idtab_get(&g->by_id, id);

	if (!s || s->state == SIG_DEAD)
		return;
	if (res < 0 && res != -EAGAIN && res != -EWOULDBLOCK && res != -EINTR) {
		kill_sess(g, s);
		return;
	}
	if (res > 0)
		s->out_off += (uint32_t)res;
	flush_out(g, s);
}

/* Write the corked sessions from first to last that the ring did not: its
 * own failure leaves their output queued. */
static void flush_plain(struct sig *g, size_t first, size_t last)
{
	for (size_t i = first; i < last; i++) {
		struct sig_sess *s = sig_idtab_get(&g->by_id, g->corked[i]);
		if (s && s->state != SIG_DEAD && s->out_len && !s->wants_write)
			flush_out(g, s);
	}
}

void sig_sess_flush(struct sig *g)
{
	size_t i = 0, first = 0;

	while (i < g->n_corked) {
		for (first = i; i < g->n_corked; i++) {
			struct sig_sess *s = sig_idtab_get(&g->by_id, g->corked[i]);

			if (!s || !s->corked)
				continue;
			/* A session waiting for EV_WRITE is written by on_io. */
			if (s->state == SIG_DEAD || !s->out_len || s->wants_write) {
				s->corked = 0;
				continue;
			}
			/* Plain sockets go out together, in one system call. */
			if (g->uring.fd >= 0 && !s->tls) {
				if (bm_uring_send(&g->uring, s->fd, s->out + s->out_off,
						  s->out_len - s->out_off, s->id))
					break;   /* ring full: run it, then go on from s */
				s->corked = 0;
				continue;
			}
			s->corked = 0;
			flush_out(g, s);
		}
		if (bm_uring_queued(&g->uring) && uring_run(g, on_sent)) {
			bm_warn("sess", "io_uring failed: writing with write() from now on");
			bm_uring_release(&g->uring);
			flush_plain(g, first, i);
		}
	}
	g->n_corked = 0;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
	sig_sess_flush(arg);
}

/* Append a session id to a list handled at the end of the loop turn (the
 * corked sessions, the sessions to read), activating ev with the first.
 * 0, or -1 out of memory. */
static int turn_list_add(uint64_t **v, size_t *n, size_t *cap, struct event *ev, uint64_t id)
{
	if (*n == *cap) {
		size_t nc = *cap ? 2 * *cap : 64;
		uint64_t *q = realloc(*v, nc * sizeof(*q));
		if (!q)
			return -1;
		*v = q;
		*cap = nc;
	}
	if (!*n)
		event_active(ev, 0, 0);
	(*v)[(*n)++] = id;
	return 0;
}

/* Queue header + payload behind s's output, to be written at the end of
 * the turn.  Falls back to writing now when it cannot queue the session. */
static int send_corked(struct sig *g, struct sig_sess *s, const uint8_t *h, size_t hn,
		       const uint8_t *p, size_t n)
{
	int rc;

	if (!s->corked) {
		if (turn_list_add(&g->corked, &g->n_corked, &g->corked_cap, g->flush_ev, s->id))
			return send_raw(g, s, h, hn, p, n);
		s->corked = 1;
	}
	rc = out_append(g, s, h, hn);
	if (!rc)
		rc = out_append(g, s, p, n);
	if (rc) {
		slow_consumer(g, s);
	}
	return rc;
}

int sig_sess_send(struct sig *g, struct sig_sess *s, const uint8_t *p, size_t n)
{
	uint8_t hdr[BM_WS_MAX_HEADER];
	size_t hn;

	if (s->state != SIG_OPEN)
		return BM_ECLOSED;
	hn = bm_ws_frame_header(hdr, BM_WS_OP_BINARY, 1, n, NULL);
	(*g->m.stanzas_out)++;
	if (g->flush_ev && s->out_len - s->out_off + hn + n <= CORK_MAX &&
	    (s->corked || !s->out_len))
		return send_corked(g, s, hdr, hn, p, n);
	return send_raw(g, s, hdr, hn, p, n);
}

static void send_error(struct sig *g, struct sig_sess *s, int code, int64_t route,
		       const char *text)
{
	static bimip_MessageScheme m;
	static uint8_t buf[1024];
	char label[16];
	size_t n;

	bm_env_make_error(&m, code, route, text, NULL);
	snprintf(label, sizeof(label), "%d", code);
	bm_metrics_family_inc(g->m.errors, label);
	if (!bm_env_encode(&m, buf, sizeof(buf), &n))
		sig_sess_send(g, s, buf, n);
}

void sig_sess_close(struct sig *g, struct sig_sess *s, int code, const char *reason)
{
	uint8_t f[BM_WS_MAX_CONTROL_FRAME];
	char label[16];
	int n;

	if (s->state == SIG_DEAD || s->state == SIG_CLOSING)
		return;
	if (s->state != SIG_OPEN) {
		kill_sess(g, s);
		return;
	}
	snprintf(label, sizeof(label), "%d", code);
	bm_metrics_family_inc(g->m.close_codes, label);
	n = bm_ws_close_frame(f, BM_WS_SERVER, (uint16_t)code, reason);
	if (n > 0)
		send_raw(g, s, f, (size_t)n, NULL, 0);
	if (s->state == SIG_OPEN) {
		s->state = SIG_CLOSING;
		lru_touch(g, s);  /* sig_sess_tick gives the close timeouts.drain */
	}
	if (s->state == SIG_CLOSING && !s->out_len)
		flush_out(g, s);
}

void sig_sess_close_all(struct sig *g, int code, const char *reason)
{
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);)
		sig_sess_close(g, v, code, reason);
	for (struct sig_sess *s = g->lru_head; s; s = s->lru_next)
		if (s->state == SIG_HANDSHAKE)
			kill_sess(g, s);
}

void sig_sess_expire(struct sig *g)
{
	int64_t now = bm_wall_s() - g->cfg.leeway_ms / 1000;
	uint32_t ms = now_ms32();
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);) {
		struct sig_sess *s = v;
		if (s->state != SIG_OPEN)
			continue;
		/* Output that has not drained to empty for timeouts.write: the
		 * client is not keeping up (or TLS waits to write before it reads
		 * again, so max_output is never reached).  A healthy client empties
		 * the queue again and again; TCP trickling a few bytes in does
		 * not count as catching up. */
		if ((s->out_len || s->wants_write) && ms - s->out_ms >= (uint32_t)g->cfg.write_ms) {
			(*g->m.slow_consumers)++;
			bm_info("sess", "closing slow consumer eid=%s device=%s: output not "
				"drained for %u ms (no write progress)", s->eid, s->device,
				ms - s->out_ms);
			kill_sess(g, s);
			continue;
		}
		if (g->cfg.close_expired && s->exp && s->exp <= now) {
			bm_info("sess", "closing session eid=%s device=%s: token expired",
				s->eid, s->device);
			sig_sess_close(g, s, 4001, "token expired");
		}
	}
}

void sig_sess_enforce_revocations(struct sig *g)
{
	const char *k;
	void *v;

	for (size_t it = 0; bm_map_next(&g->sessions, &it, &k, &v);) {
		struct sig_sess *s = v;
		if (s->state == SIG_OPEN &&
		    sig_auth_revoked(g, s->eid, s->device, s->jti, s->iat)) {
			bm_info("sess", "closing session eid=%s device=%s: token revoked",
				s->eid, s->device);
			sig_sess_close(g, s, 4001, "token revoked");
		}
	}
}

/* --- the HTTP upgrade ---------------------------------------------------------------- */

static void http_refuse(struct sig *g, struct sig_sess *s, int status, const char *why)
{
	char buf[1024];
	int n = bm_http_error_response(buf, sizeof(buf), status, why);

	if (n > 0)
		sio_write(s, (const uint8_t *)buf, (size_t)n);  /* best effort */
	shutdown(s->fd, SHUT_WR);
	kill_sess(g, s);
}

static int open_session(struct sig *g, struct sig_sess *s, const struct bm_jwt_claims *c)
{
	size_t el = strlen(c->sub), dl = strlen(c->device), jl = strlen(c->jti);
	struct sig_sess *old;
	/* One allocation: "eid\x1fdevice\0" (the map's key), then
	 * "eid\0device\0jti\0" (s->key_buf points into it, not freed alone). */
	char *key = malloc(2 * (el + dl + 2) + jl + 1), *kb;

	if (!key)
		return BM_ENOMEM;
	memcpy(key, c->sub, el);
	key[el] = '\x1f';
	memcpy(key + el + 1, c->device, dl + 1);
	kb = key + el + dl + 2;
	memcpy(kb, c->sub, el + 1);
	memcpy(kb + el + 1, c->device, dl + 1);
	memcpy(kb + el + dl + 2, c->jti, jl + 1);
	s->key = key;
	s->key_buf = kb;
	s->eid = kb;
	s->device = kb + el + 1;
	s->jti = kb + el + dl + 2;
	s->iat = c->iat;
	s->exp = c->exp;
	old = bm_map_get(&g->sessions, key);
	if (old) {
		/* One session per device: the newer connection replaces the older. */
		old->registered = 0;
		g->m.n_sessions--;
		sig_link_session_close(g, old);
		sig_sess_close(g, old, 4002, "replaced by a newer session");
	}
	if (bm_map_put(&g->sessions, key, s, NULL))
		return BM_ENOMEM;
	s->registered = 1;
	g->m.n_sessions++;
	return sig_link_session_open(g, s);
}

static int keep_input(struct sig_sess *s, const uint8_t *p, size_t n);

/* The request head in buf[0..len) (the shared read buffer, which the parser
 * may rewrite; the usual head arrives whole and is never copied).  Returns
 * the bytes of the head, 0 when incomplete (then buf is kept in s->in), or
 * < 0 when refused. */
static int on_handshake_bytes(struct sig *g, struct sig_sess *s, uint8_t *buf, size_t len)
{
	struct bm_http_upgrade req;
	struct bm_jwt_claims c;
	char resp[BM_HTTP_UPGRADE_RESPONSE_MAX];
	const char *why = NULL;
	size_t scan = 0;
	int rc, n;

	if (len > BM_HTTP_MAX_HEAD + 4096) {
		http_refuse(g, s, 431, "request head too large");
		return -1;
	}
	rc = bm_http_parse_upgrade((char *)buf, len, &scan, &req);
	if (rc == BM_EAGAIN) {
		if (len >= BM_HTTP_MAX_HEAD || keep_input(s, buf, len)) {
			http_refuse(g, s, 431, "request head too large");
			return -1;
		}
		return 0;
	}
	if (rc) {
		http_refuse(g, s, req.status, req.reason);
		return -1;
	}
	if (!req.token.len) {
		(*g->m.refused_auth)++;
		http_refuse(g, s, 401, "missing token (Authorization: Bearer, token header "
			    "or ?token=)");
		return -1;
	}
	rc = sig_auth_verify(g, req.token.p, req.token.len, &c, &why);
	if (rc) {
		(*g->m.refused_auth)++;
		http_refuse(g, s, rc == BM_EUNAVAIL ? 503 : 401, why);
		return -1;
	}
	n = bm_http_upgrade_response(resp, sizeof(resp), &req);
	rc = n > 0 ? open_session(g, s, &c) : BM_EPROTO;
	if (rc) {
		http_refuse(g, s, 503, rc == BM_EUNAVAIL ? "no server available"
							 : "cannot open the session");
		return -1;
	}
	s->state = SIG_OPEN;
	lru_touch(g, s);
	bm_ws_parser_init(&s->ws, BM_WS_SERVER, (uint32_t)g->cfg.max_message);
	s->tokens = (float)g->cfg.burst;
	s->tokens_ms = now_ms32();
	send_raw(g, s, (const uint8_t *)resp, (size_t)n, NULL, 0);
	(*g->m.accepted)++;
	bm_debug("sess", "session open eid=%s device=%s id=%llu", s->eid, s->device,
		 (unsigned long long)s->id);
	return (int)req.head_len;
}

/* --- messages ---------------------------------------------------------------------------- */

static int rate_ok(struct sig *g, struct sig_sess *s)
{
	uint32_t now = now_ms32();
	float add = (float)(now - s->tokens_ms) * (float)g->cfg.rate / 1000.0f;

	s->tokens_ms = now;
	s->tokens += add;
	if (s->tokens > (float)g->cfg.burst)
		s->tokens = (float)g->cfg.burst;
	if (s->tokens < 1.0f)
		return 0;
	s->tokens -= 1.0f;
	return 1;
}

static void on_message(struct sig *g, struct sig_sess *s, int opcode,
		       const uint8_t *p, size_t n)
{
	static bimip_MessageScheme m;
	static uint8_t buf[512];
	struct bm_env_err err;
	int64_t route;
	size_t len;
	int rc;

	(*g->m.stanzas_in)++;
	if (opcode != BM_WS_OP_BINARY) {
		sig_sess_close(g, s, 1003, "binary frames only: one MessageScheme each");
		return;
	}
	if (!rate_ok(g, s)) {
		(*g->m.rate_limited)++;
		if (++s->refusals > 100) {
			sig_sess_close(g, s, 1008, "rate limit exceeded repeatedly");
			return;
		}
		send_error(g, s, 429, 0, "rate limit exceeded: slow down");
		return;
	}
	s->refusals = 0;
	/* The envelope's outer layer is checked here; the payload is decoded
	 * by the server, which answers a bad one with the same ErrorMessage
	 * (a full decode here was a tenth of this process's time). */
	if (bm_env_peek(p, n, &route, &err)) {
		send_error(g, s, err.code, err.route, err.text);
		return;
	}
	/* A ping request is answered here; other pings go on. */
	if (route == bimip_MessageScheme_pingpong_message_tag) {
		bimip_PingPong *q = &m.payload.pingpong_message;

		if (bm_env_decode(p, n, &m, &err)) {
			send_error(g, s, err.code, err.route, err.text);
			return;
		}
		if (q->type == 1) {
			int64_t t = bm_wall_ms();
			(*g->m.pings)++;
			q->has_to = true;
			BM_SET_STR(q->to.eid, s->eid);
			BM_SET_STR(q->to.connection_resource_id, s->device);
			q->type = 2;
			q->status = 2;
			q->response_time = t;
			q->rtt = q->request_time ? t - q->request_time : 0;
			if (!bm_env_encode(&m, buf, sizeof(buf), &len))
				sig_sess_send(g, s, buf, len);
			return;
		}
	}
	rc = sig_link_stanza(g, s, p, n);
	if (rc) {
		(*g->m.forward_fail)++;
		send_error(g, s, 503, route, rc == BM_EAGAIN ? "server is busy, retry"
							    : "no server available");
	}
}

static void on_ws_error(struct sig *g, struct sig_sess *s, int rc, struct bm_ws_event *ev)
{
	if (rc == BM_ETOOBIG) {
		char text[96];
		(*g->m.too_big)++;
		snprintf(text, sizeof(text), "message exceeds %lld bytes",
			 (long long)g->cfg.max_message);
		send_error(g, s, 413, 0, text);
		sig_sess_close(g, s, BM_WS_CLOSE_TOO_BIG, "message too big");
		return;
	}
	(*g->m.bad_frames)++;
	sig_sess_close(g, s, ev->close_code ? ev->close_code : BM_WS_CLOSE_PROTOCOL,
		       rc == BM_EDECODE ? "invalid UTF-8" : "protocol error");
}

/* Parse frames from p[0..len) (writable); returns bytes consumed. */
static size_t on_frames(struct sig *g, struct sig_sess *s, uint8_t *p, size_t len)
{
	size_t off = 0;

	while (s->state == SIG_OPEN && off < len) {
		struct bm_ws_event ev;
		size_t used = 0;
		int rc = bm_ws_parse(&s->ws, p + off, len - off, &used, &ev);

		off += used;
		if (rc == BM_EAGAIN)
			break;
		if (rc == BM_ECLOSED)
			break;
		if (rc) {
			on_ws_error(g, s, rc, &ev);
			break;
		}
		switch (ev.type) {
		case BM_WS_EV_MESSAGE:
			on_message(g, s, ev.opcode, ev.data, ev.len);
			break;
		case BM_WS_EV_CHUNK:
			if (ev.first && !s->msg) {
				s->msg = malloc((size_t)g->cfg.max_message);
				s->msg_len = 0;
				if (!s->msg) {
					sig_sess_close(g, s, 1011, "out of memory");
					break;
				}
			}
			if (s->msg) {
				memcpy(s->msg + s->msg_len, ev.data, ev.len);
				s->msg_len += (uint32_t)ev.len;
			}
			if (ev.fin && s->msg) {
				on_message(g, s, ev.opcode, s->msg, s->msg_len);
				free(s->msg);
				s->msg = NULL;
				s->msg_len = 0;
			}
			break;
		case BM_WS_EV_PING: {
			uint8_t f[BM_WS_MAX_CONTROL_FRAME];
			int n = bm_ws_control_frame(f, BM_WS_SERVER, BM_WS_OP_PONG, ev.data,
						    ev.len);
			if (n > 0)
				send_raw(g, s, f, (size_t)n, NULL, 0);
			break;
		}
		case BM_WS_EV_PONG:
			break;
		case BM_WS_EV_CLOSE:
			sig_sess_close(g, s, ev.close_code == BM_WS_CLOSE_NO_STATUS
						     ? BM_WS_CLOSE_NORMAL : ev.close_code, "");
			break;
		}
	}
	return off;
}

static int keep_input(struct sig_sess *s, const uint8_t *p, size_t n)
{
	if (n > s->in_cap) {
		uint8_t *q = realloc(s->in, n < 256 ? 256 : n);
		if (!q)
			return BM_ENOMEM;
		s->in = q;
		s->in_cap = (uint32_t)(n < 256 ? 256 : n);
	}
	memmove(s->in, p, n);
	s->in_len = (uint32_t)n;
	return 0;
}

static void drop_input(struct sig_sess *s)
{
	free(s->in);
	s->in = NULL;
	s->in_len = s->in_cap = 0;
}

/* Process the bytes in buf[0..len): frames, or the handshake head. */
static void process(struct sig *g, struct sig_sess *s, uint8_t *buf, size_t len)
{
	size_t used;

	if (s->state == SIG_HANDSHAKE) {
		int n = on_handshake_bytes(g, s, buf, len);
		if (n <= 0)
			return;
		/* Bytes after the head are already WebSocket frames. */
		buf += n;
		len -= (size_t)n;
		if (!len)
			return;
	}
	used = on_frames(g, s, buf, len);
	if (s->state != SIG_OPEN || used == len) {
		drop_input(s);
		return;
	}
	if (buf != s->in || used) {
		if (keep_input(s, buf + used, len - used))
			kill_sess(g, s);
	}
}

static void on_readable(struct sig *g, struct sig_sess *s)
{
	for (int turns = 0; turns < 16 && s->state <= SIG_OPEN; turns++) {
		size_t have = s->in_len;
		uint8_t *dst;
		size_t cap;
		ssize_t n;

		/* Leftover bytes come first: read behind them in the shared buffer. */
		if (have > g->rbuf_cap / 2) {
			kill_sess(g, s);
			return;
		}
		if (have)
			memcpy(g->rbuf, s->in, have);
		dst = g->rbuf + have;
		cap = g->rbuf_cap - have;
		n = sio_read(s, dst, cap);
		if (n == BM_EAGAIN) {
			if (s->tls && (bm_tls_wants(s->tls) & BM_TLS_WANT_WRITE))
				set_events(g, s, 1);
			return;
		}
		if (n <= 0) {
			kill_sess(g, s);
			return;
		}
		/* The handshake deadline runs from accept: a request trickled a
		 * byte at a time must not extend it. */
		if (s->state == SIG_OPEN)
			lru_touch(g, s);
		if (have)
			drop_input(s);
		process(g, s, g->rbuf, have + (size_t)n);
		if ((size_t)n < cap && !(s->tls && bm_tls_pending(s->tls)))
			return;
	}
	/* Turns used up with input left: the socket may have none (TLS holds
	 * it decrypted), so no readiness would bring us back.  Come back after
	 * the other events had their turn. */
	if (s->state <= SIG_OPEN)
		event_active(&s->ev, EV_READ, 0);
}

/* --- batched reads: the sessions epoll found readable, in one system call --- */

/* Each queued session reads into its own slice of g->rdbuf. */
#define READ_SLICE 16384
#define READ_BATCH 64

static void on_received(void *arg, uint64_t i, int res)
{
	struct sig *g = arg;
	struct sig_sess *s = sig_idtab_get(&g->by_id, g->readq[i]);
	uint8_t *slice = g->rdbuf + i * READ_SLICE;
	size_t have;

	if (!s)
		return;
	s->read_queued = 0;
	if (s->state != SIG_OPEN)
		return;
	if (res == -EAGAIN || res == -EWOULDBLOCK || res == -EINTR)
		return;
	if (res <= 0) {
		kill_sess(g, s);
		return;
	}
	lru_touch(g, s);
	have = s->in_len;
	if (have) {
		/* A frame's start came before: put the two together, as
		 * on_readable does. */
		if (have > g->rbuf_cap / 2) {
			kill_sess(g, s);
			return;
		}
		memcpy(g->rbuf, s->in, have);
		memcpy(g->rbuf + have, slice, (size_t)res);
		drop_input(s);
		process(g, s, g->rbuf, have + (size_t)res);
	} else {
		process(g, s, slice, (size_t)res);
	}
	/* The slice was filled: there may be more; read the rest as before. */
	if (res == READ_SLICE && s->state == SIG_OPEN)
		on_readable(g, s);
}

static void on_read_batch(evutil_socket_t fd, short what, void *arg)
{
	struct sig *g = arg;
	size_t done = 0;

	(void)fd;
	(void)what;
	while (done < g->n_readq) {
		size_t n = g->n_readq - done < READ_BATCH ? g->n_readq - done : READ_BATCH;

		/* readq[done..done+n) go out together; the index into readq is
		 * the operation's id, so slot i of rdbuf is readq[done + i]'s. */
		for (size_t i = 0; i < n; i++) {
			struct sig_sess *s = sig_idtab_get(&g->by_id, g->readq[done + i]);

			g->readq[i] = s ? g->readq[done + i] : 0;
			if (!s)
				continue;
			if (s->state == SIG_OPEN && g->uring.fd >= 0 &&
			    !bm_uring_recv(&g->uring, s->fd, g->rdbuf + i * READ_SLICE,
					   READ_SLICE, i))
				continue;
			/* Closed meanwhile, or no ring: as before. */
			g->readq[i] = 0;
			s->read_queued = 0;
			if (s->state <= SIG_OPEN)
				on_readable(g, s);
		}
		if (bm_uring_queued(&g->uring) && uring_run(g, on_received)) {
			bm_warn("sess", "io_uring failed: reading with read() from now on");
			bm_uring_release(&g->uring);
			/* What the ring did not report: read it the old way. */
			for (size_t i = 0; i < n; i++) {
				struct sig_sess *s = g->readq[i] ?
					sig_idtab_get(&g->by_id, g->readq[i]) : NULL;
				if (s && s->read_queued) {
					s->read_queued = 0;
					if (s->state == SIG_OPEN)
						on_readable(g, s);
				}
			}
		}
		done += n;
	}
	g->n_readq = 0;
}

/* Queue s's read for the end of the loop turn; 0, or -1 to read now. */
static int read_later(struct sig *g, struct sig_sess *s)
{
	if (s->read_queued)
		return 0;
	if (g->uring.fd < 0 || !g->read_ev || s->tls || s->state != SIG_OPEN ||
	    turn_list_add(&g->readq, &g->n_readq, &g->readq_cap, g->read_ev, s->id))
		return -1;
	s->read_queued = 1;
	return 0;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
	struct sig_sess *s = arg;
	struct sig *g = sig_global;

	if (s->tls && !bm_tls_is_established(s->tls)) {
		int rc = bm_tls_handshake(s->tls);
		if (rc == BM_EAGAIN) {
			set_events(g, s, (bm_tls_wants(s->tls) & BM_TLS_WANT_WRITE) != 0);
			return;
		}
		if (rc) {
			char why[160];
			bm_debug("sess", "tls handshake failed: %s",
				 bm_tls_strerror(s->tls, why, sizeof(why)));
			kill_sess(g, s);
			return;
		}
		set_events(g, s, 0);
	}
	if ((what & EV_WRITE) && s->out_len)
		flush_out(g, s);
	if (s->state == SIG_OPEN && (what & EV_READ) && !read_later(g, s))
		return;
	if (s->state <= SIG_OPEN && (what & (EV_READ | EV_WRITE)))
		on_readable(g, s);
	else if (s->state == SIG_CLOSING && (what & EV_READ)) {
		/* Drain and discard what the client sends after our close. */
		ssize_t n = sio_read(s, g->rbuf, g->rbuf_cap);
		if (n == 0 || (n < 0 && n != BM_EAGAIN))
			kill_sess(g, s);
	}
}

/* --- accepting ------------------------------------------------------------------------ */

static void accept_fd(struct sig *g, evutil_socket_t fd, int tls)
{
	struct sig_sess *s;

	if (g->stopping || (int64_t)g->n_live >= g->cfg.max_sessions) {
		char buf[256];
		int n = bm_http_error_response(buf, sizeof(buf), 503,
					       g->stopping ? "server is shutting down"
							   : "too many connections");
		(*g->m.refused_full)++;
		if (n > 0 && !tls && write(fd, buf, (size_t)n) < 0)
			(void)0;
		close(fd);
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return;
	}
	/* TCP_NODELAY comes from the listener (Linux copies it into accepted
	 * sockets): one system call less per connection. */
	s->fd = fd;
	s->id = ++g->next_id;
	s->state = SIG_HANDSHAKE;
	if (tls && bm_tls_new(&s->tls, g->tls, fd)) {
		close(fd);
		free(s);
		return;
	}
	if (sig_idtab_put(&g->by_id, s->id, s)) {
		if (s->tls)
			bm_tls_free(s->tls);
		close(fd);
		free(s);
		return;
	}
	event_assign(&s->ev, g->base, fd, EV_READ | EV_PERSIST, on_io, s);
	event_add(&s->ev, NULL);
	g->n_live++;
	lru_touch(g, s);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
		      struct sockaddr *sa, int len, void *arg)
{
	accept_fd(sig_global, fd, 0);
}

static void on_accept_tls(struct evconnlistener *l, evutil_socket_t fd,
			  struct sockaddr *sa, int len, void *arg)
{
	accept_fd(sig_global, fd, 1);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();

	/* EMFILE and friends: log and keep listening. */
	bm_warn("sess", "accept failed: %s", evutil_socket_error_to_string(err));
}

static struct evconnlistener *listen_on(struct sig *g, const char *addr,
					evconnlistener_cb cb, char *bound, size_t cap)
{
	struct sockaddr_storage ss;
	int slen = sizeof(ss), one = 1;
	struct evconnlistener *l;
	socklen_t blen = sizeof(ss);

	char host[64];
	uint16_t port;

	/* libevent's parser refuses port 0, which tests use. */
	memset(&ss, 0, sizeof(ss));
	if (bm_config_addr_split(addr, host, sizeof(host), &port)) {
		bm_err("sess", "cannot parse listen address '%s'", addr);
		return NULL;
	}
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons(port);
		slen = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
		slen = sizeof(struct sockaddr_in6);
	} else {
		bm_err("sess", "listen address '%s' must be a numeric IP and a port", addr);
		return NULL;
	}
	l = evconnlistener_new_bind(g->base, cb, g,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
				    LEV_OPT_CLOSE_ON_EXEC, 4096, (struct sockaddr *)&ss, slen);
	if (!l) {
		bm_err("sess", "cannot listen on '%s': %s", addr, strerror(errno));
		return NULL;
	}
	evconnlistener_set_error_cb(l, on_accept_error);
	if (setsockopt(evconnlistener_get_fd(l), IPPROTO_TCP, TCP_NODELAY, &one,
		       sizeof(one)) == -1)
		bm_warn("sess", "cannot set TCP_NODELAY on '%s': %s", addr, strerror(errno));
	if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &blen) == 0) {
		evutil_inet_ntop(ss.ss_family,
				 ss.ss_family == AF_INET
					 ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
					 : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr,
				 host, sizeof(host));
		snprintf(bound, cap, ss.ss_family == AF_INET ? "%s:%u" : "[%s]:%u", host,
			 ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
						       : ((struct sockaddr_in6 *)&ss)->sin6_port));
	}
	return l;
}

int sig_sess_listen(struct sig *g)
{
	g->rbuf_cap = (size_t)g->cfg.max_message + 65536;
	g->rbuf = malloc(g->rbuf_cap);
	if (!g->rbuf)
		return BM_ENOMEM;
	bm_map_init(&g->sessions);
	g->flush_ev = event_new(g->base, -1, 0, on_flush, g);
	if (!g->flush_ev)
		return BM_ENOMEM;
	/* One io_uring_enter writes a loop turn's output to every plain
	 * session, one more reads every readable one (common/bm_uring.h);
	 * BIMIP_IO_URING=0 keeps read() and write(). */
	{
		const char *e = getenv("BIMIP_IO_URING");
		int off = e && !strcmp(e, "0");
		int rc = off ? BM_EUNAVAIL : bm_uring_init(&g->uring, 256);
		if (!rc) {
			g->read_ev = event_new(g->base, -1, 0, on_read_batch, g);
			g->rdbuf = malloc((size_t)READ_BATCH * READ_SLICE);
			if (!g->read_ev || !g->rdbuf)
				return BM_ENOMEM;
		} else {
			bm_info("sess", "sessions use read() and write(): io_uring %s",
				off ? "off (BIMIP_IO_URING=0)" : bm_strerror(rc));
		}
	}
	if (g->cfg.ws_listen[0]) {
		g->ws_listener = listen_on(g, g->cfg.ws_listen, on_accept, g->ws_bound,
					   sizeof(g->ws_bound));
		if (!g->ws_listener)
			return BM_ESYS;
	}
	if (g->cfg.wss_listen[0]) {
		struct bm_tls_options o = { .server = 1, .cert_file = g->cfg.tls_cert,
					    .key_file = g->cfg.tls_key };
		int rc = bm_tls_config_new(&g->tls, &o);
		if (rc)
			return rc;
		g->wss_listener = listen_on(g, g->cfg.wss_listen, on_accept_tls, g->wss_bound,
					    sizeof(g->wss_bound));
		if (!g->wss_listener)
			return BM_ESYS;
	}
	return 0;
}

void sig_sess_stop_listening(struct sig *g)
{
	if (g->ws_listener)
		evconnlistener_free(g->ws_listener);
	if (g->wss_listener)
		evconnlistener_free(g->wss_listener);
	g->ws_listener = g->wss_listener = NULL;
}

/* Once a second: handshake deadlines, keepalive pings, idle closes. */
void sig_sess_tick(struct sig *g)
{
	uint32_t now = now_ms32();
	uint32_t soonest = (uint32_t)(g->cfg.handshake_ms < g->cfg.ping_ms
					      ? g->cfg.handshake_ms : g->cfg.ping_ms);
	uint32_t close_ms = (uint32_t)(g->cfg.drain_ms > 1000 ? g->cfg.drain_ms : 1000);
	struct sig_sess *s, *next;

	if (close_ms < soonest)
		soonest = close_ms;

	for (s = g->lru_head; s; s = next) {
		uint32_t idle = now - s->last_ms;

		next = s->lru_next;
		if (idle < soonest)
			break;  /* the rest is more recent */
		if (s->state == SIG_HANDSHAKE) {
			if (idle >= (uint32_t)g->cfg.handshake_ms)
				http_refuse(g, s, 408, "handshake timed out");
			continue;
		}
		if (s->state == SIG_CLOSING) {
			/* A close frame the client does not read (nor anything
			 * queued before it) must not hold the connection forever. */
			if (idle >= close_ms)
				kill_sess(g, s);
			continue;
		}
		if (s->state != SIG_OPEN || idle < (uint32_t)g->cfg.ping_ms)
			continue;
		/* Never close without a ping first: when idle - ping is not more
		 * than the tick, a tick can step over the ping window. */
		if (idle >= (uint32_t)g->cfg.idle_ms && s->pinged) {
			sig_sess_close(g, s, 1001, "idle timeout");
		} else if (!s->pinged) {
			uint8_t f[BM_WS_MAX_CONTROL_FRAME];
			int n = bm_ws_control_frame(f, BM_WS_SERVER, BM_WS_OP_PING, "", 0);
			s->pinged = 1;
			if (n > 0)
				send_raw(g, s, f, (size_t)n, NULL, 0);
		}
	}
}
