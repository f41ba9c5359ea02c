/*
 * dialer.c - opening handshakes in flight on one epoll (see dialer.h).
 */
#include "dialer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bm_err.h"
#include "bm_time.h"

#define RESP_CAP 1024   /* a 101 is ~130 bytes, a refusal ~400 */

struct slot {
	int job;             /* -1: free */
	int writing;         /* request not fully written yet */
	size_t off;          /* bytes of the request written */
	size_t rlen;
	uint64_t deadline;   /* bm_mono_ms */
	char rbuf[RESP_CAP];
};

struct dialer {
	enum dial_kind kind;
	int ep;
	struct dial_job *jobs;
	struct slot *slots;
	int *free_slots, n_free;
	struct dial_result *res;
	char dst_text[32];
};

static void fail(struct dialer *d, struct slot *s, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void fail(struct dialer *d, struct slot *s, const char *fmt, ...)
{
	struct dial_job *j = &d->jobs[s->job];
	va_list ap;

	if (!d->res->failed++) {
		va_start(ap, fmt);
		vsnprintf(d->res->err, sizeof(d->res->err), fmt, ap);
		va_end(ap);
	}
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
	s->job = -1;
	d->free_slots[d->n_free++] = (int)(s - d->slots);
}

static void done(struct dialer *d, struct slot *s)
{
	d->res->ok++;
	s->job = -1;
	d->free_slots[d->n_free++] = (int)(s - d->slots);
}

static int arm(struct dialer *d, struct slot *s, int op, uint32_t events)
{
	struct epoll_event ev = { .events = events | EPOLLONESHOT,
				  .data.u32 = (uint32_t)(s - d->slots) };

	return epoll_ctl(d->ep, op, d->jobs[s->job].fd, &ev);
}

/* Write what is left of the request.  0 when all of it is out (the slot
 * now waits for the answer), 1 when the socket is not ready, -1 failed. */
static int send_req(struct dialer *d, struct slot *s, int op)
{
	struct dial_job *j = &d->jobs[s->job];

	while (s->off < j->req_len) {
		ssize_t w = write(j->fd, j->req + s->off, j->req_len - s->off);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1 && (errno == EAGAIN || errno == ENOTCONN)) {
			/* Not connected yet (or full): wait until writable. */
			s->writing = 1;
			if (arm(d, s, op, EPOLLOUT) == -1) {
				fail(d, s, "epoll_ctl: %s", strerror(errno));
				return -1;
			}
			return 1;
		}
		if (w == -1) {
			fail(d, s, "connect %s: %s", d->dst_text, strerror(errno));
			return -1;
		}
		s->off += (size_t)w;
	}
	s->writing = 0;
	if (arm(d, s, op, EPOLLIN) == -1) {
		fail(d, s, "epoll_ctl: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static void start(struct dialer *d, int job, const struct sockaddr_in *dst, int timeout_ms)
{
	struct dial_job *j = &d->jobs[job];
	struct slot *s = &d->slots[d->free_slots[--d->n_free]];
	int one = 1;

	s->job = job;
	s->off = s->rlen = 0;
	s->deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	j->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (j->fd == -1) {
		fail(d, s, "socket: %s", strerror(errno));
		return;
	}
	if (j->src.sin_family) {
		char a[INET_ADDRSTRLEN];
		/* The port is picked at connect, by the whole 4-tuple: the
		 * source addresses hold ~20,000 connections each. */
		setsockopt(j->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(j->fd, (const struct sockaddr *)&j->src, sizeof(j->src)) == -1) {
			fail(d, s, "cannot bind to '%s': %s",
			     inet_ntop(AF_INET, &j->src.sin_addr, a, sizeof(a)), strerror(errno));
			return;
		}
	}
	if (connect(j->fd, (const struct sockaddr *)dst, sizeof(*dst)) == -1 &&
	    errno != EINPROGRESS) {
		fail(d, s, "connect %s: %s", d->dst_text, strerror(errno));
		return;
	}
	/* On loopback the connection is usually up by now: write at once. */
	send_req(d, s, EPOLL_CTL_ADD);
}

/* The answer so far: 0 complete and accepted, 1 incomplete, -1 failed. */
static int check_answer(struct dialer *d, struct slot *s)
{
	struct dial_job *j = &d->jobs[s->job];

	if (d->kind == DIAL_MQTT) {
		const uint8_t *b = (const uint8_t *)s->rbuf;
		if (s->rlen < 4)
			return 1;
		if (b[0] != 0x20 || b[1] != 0x02 || b[3] != 0) {
			fail(d, s, "CONNACK refused or malformed (%02x %02x %02x %02x)", b[0],
			     b[1], b[2], b[3]);
			return -1;
		}
		return 0;
	} else {
		struct bm_http_response resp;
		char msg[128];
		int rc = bm_http_parse_response(s->rbuf, s->rlen, j->key, &resp);

		if (rc == BM_EAGAIN && s->rlen < sizeof(s->rbuf))
			return 1;
		if (rc) {
			fail(d, s, "%s", resp.status ? bm_http_response_message(&resp, msg, sizeof(msg))
						     : "malformed upgrade response");
			return -1;
		}
		return 0;
	}
}

static void on_event(struct dialer *d, struct slot *s)
{
	struct dial_job *j = &d->jobs[s->job];
	ssize_t r;
	int rc;

	if (s->writing) {
		send_req(d, s, EPOLL_CTL_MOD);
		return;
	}
	do
		r = read(j->fd, s->rbuf + s->rlen, sizeof(s->rbuf) - s->rlen);
	while (r == -1 && errno == EINTR);
	if (r == -1 && errno == EAGAIN) {
		if (arm(d, s, EPOLL_CTL_MOD, EPOLLIN) == -1)
			fail(d, s, "epoll_ctl: %s", strerror(errno));
		return;
	}
	if (r <= 0) {
		fail(d, s, "%s %s during the handshake", d->dst_text,
		     r == 0 ? "closed the connection" : strerror(errno));
		return;
	}
	s->rlen += (size_t)r;
	rc = check_answer(d, s);
	if (rc == 0)
		done(d, s);
	else if (rc == 1 && arm(d, s, EPOLL_CTL_MOD, EPOLLIN) == -1)
		fail(d, s, "epoll_ctl: %s", strerror(errno));
}

int dial_run(enum dial_kind kind, const struct sockaddr_in *dst, struct dial_job *jobs,
	     int n, int inflight, int timeout_ms, struct dial_result *res)
{
	struct dialer d = { .kind = kind, .jobs = jobs, .res = res };
	struct epoll_event evs[64];
	uint64_t next_check = 0;
	int next = 0, rc = BM_ESYS;
	char a[INET_ADDRSTRLEN];

	memset(res, 0, sizeof(*res));
	snprintf(d.dst_text, sizeof(d.dst_text), "%s:%u",
		 inet_ntop(AF_INET, &dst->sin_addr, a, sizeof(a)), ntohs(dst->sin_port));
	for (int i = 0; i < n; i++)
		jobs[i].fd = -1;
	d.slots = calloc((size_t)inflight, sizeof(*d.slots));
	d.free_slots = calloc((size_t)inflight, sizeof(*d.free_slots));
	d.ep = epoll_create1(EPOLL_CLOEXEC);
	if (!d.slots || !d.free_slots || d.ep == -1)
		goto out;
	for (int i = inflight - 1; i >= 0; i--) {
		d.slots[i].job = -1;
		d.free_slots[d.n_free++] = i;
	}
	for (;;) {
		uint64_t now;
		int k;

		while (d.n_free && next < n && res->failed < 10)
			start(&d, next++, dst, timeout_ms);
		if (d.n_free == inflight)
			break;   /* nothing in flight, nothing more to start */
		k = epoll_wait(d.ep, evs, 64, 100);
		if (k == -1 && errno != EINTR)
			goto out;
		for (int i = 0; i < k; i++)
			on_event(&d, &d.slots[evs[i].data.u32]);
		now = bm_mono_ms();
		if (now < next_check)
			continue;
		next_check = now + 100;
		for (int i = 0; i < inflight; i++)
			if (d.slots[i].job >= 0 && now >= d.slots[i].deadline)
				fail(&d, &d.slots[i], "%s: no answer in %d ms", d.dst_text, timeout_ms);
	}
	rc = 0;
out:
	/* The descriptors stay open; the epoll set goes (disarmed entries
	 * hold no reference the caller needs). */
	if (d.ep != -1)
		close(d.ep);
	free(d.slots);
	free(d.free_slots);
	return rc;
}
