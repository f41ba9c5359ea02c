/*
 * bm_swim_udp.c - the real transport: one UDP socket and one periodic timer
 * on a libevent base, feeding struct bm_swim.
 */
#include "bm_swim_udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/util.h>

#include "bm_err.h"
#include "bm_log.h"
#include "bm_swim.h"
#include "bm_swim_proto.h"
#include "bm_time.h"

#define RECV_BURST 64 /* datagrams per readable event, so timers still run */

struct bm_swim_udp {
	struct event_base *base;
	evutil_socket_t fd;
	struct event *rd, *tm;
	struct bm_swim *swim;
	unsigned port;
	uint64_t send_errors;
};

int bm_swim_udp_parse(const char *addr, struct sockaddr *sa, size_t len)
{
	char host[BM_SWIM_ADDR_MAX + 1];
	const char *colon;
	char *end;
	unsigned long port;
	size_t hl;

	if (!addr || strlen(addr) > BM_SWIM_ADDR_MAX)
		return BM_EINVAL;
	colon = strrchr(addr, ':');
	if (!colon || colon == addr)
		return BM_EINVAL;
	port = strtoul(colon + 1, &end, 10);
	if (*end || colon[1] == 0 || port > 65535)
		return BM_EINVAL;
	hl = (size_t)(colon - addr);
	if (addr[0] == '[') {
		struct sockaddr_in6 s6;
		if (hl < 3 || addr[hl - 1] != ']' || len < sizeof(s6))
			return BM_EINVAL;
		memcpy(host, addr + 1, hl - 2);
		host[hl - 2] = 0;
		memset(&s6, 0, sizeof(s6));
		s6.sin6_family = AF_INET6;
		s6.sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &s6.sin6_addr) != 1)
			return BM_EINVAL;
		memcpy(sa, &s6, sizeof(s6));
		return (int)sizeof(s6);
	} else {
		struct sockaddr_in s4;
		if (len < sizeof(s4))
			return BM_EINVAL;
		memcpy(host, addr, hl);
		host[hl] = 0;
		memset(&s4, 0, sizeof(s4));
		s4.sin_family = AF_INET;
		s4.sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &s4.sin_addr) != 1)
			return BM_EINVAL;
		memcpy(sa, &s4, sizeof(s4));
		return (int)sizeof(s4);
	}
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
		snprintf(out, n, "[%s]:%u", host, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
		snprintf(out, n, "%s:%u", host, ntohs(s4->sin_port));
	}
}

int bm_swim_udp_open(struct bm_swim_udp **out, struct event_base *base,
		     const char *bind_addr)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	struct bm_swim_udp *u;
	int n, rc;

	*out = NULL;
	n = bm_swim_udp_parse(bind_addr, (struct sockaddr *)&ss, sizeof(ss));
	if (n < 0)
		return n;
	u = calloc(1, sizeof(*u));
	if (!u)
		return BM_ENOMEM;
	u->base = base;
	u->fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (u->fd == -1) {
		bm_err("swim", "cannot create udp socket: %s", strerror(errno));
		rc = BM_ESYS;
		goto out_free;
	}
	if (bind(u->fd, (struct sockaddr *)&ss, (socklen_t)n) == -1) {
		bm_err("swim", "cannot bind '%s': %s", bind_addr, strerror(errno));
		rc = BM_ESYS;
		goto out_close;
	}
	sl = sizeof(ss);
	if (getsockname(u->fd, (struct sockaddr *)&ss, &sl) == -1) {
		bm_err("swim", "cannot read bound address of '%s': %s", bind_addr,
		       strerror(errno));
		rc = BM_ESYS;
		goto out_close;
	}
	u->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
					   : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	*out = u;
	return 0;
out_close:
	close(u->fd);
out_free:
	free(u);
	return rc;
}

unsigned bm_swim_udp_port(const struct bm_swim_udp *u)
{
	return u->port;
}

int bm_swim_udp_send(void *ctx, const char *addr, const uint8_t *buf, size_t len)
{
	struct bm_swim_udp *u = ctx;
	struct sockaddr_storage ss;
	int n = bm_swim_udp_parse(addr, (struct sockaddr *)&ss, sizeof(ss));

	if (n < 0)
		return n;
	if (sendto(u->fd, buf, len, 0, (struct sockaddr *)&ss, (socklen_t)n) == -1) {
		if (u->send_errors++ % 1000 == 0)
			bm_warn("swim", "cannot send to '%s': %s", addr, strerror(errno));
		return BM_ESYS;
	}
	return 0;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct bm_swim_udp *u = arg;
	uint8_t buf[BM_SWIM_PKT_MAX + 1];
	char from[BM_SWIM_ADDR_MAX + 1];

	for (int n = 0; n < RECV_BURST; n++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		ssize_t r = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&ss, &sl);

		if (r == -1)
			break; /* EAGAIN, or an ICMP error for an earlier send */
		format_addr(&ss, from, sizeof(from));
		/* a datagram longer than the bound arrives truncated to
		 * PKT_MAX + 1 bytes, which the decoder refuses */
		bm_swim_recv(u->swim, bm_mono_ms(), from, buf, (size_t)r);
	}
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct bm_swim_udp *u = arg;

	bm_swim_tick(u->swim, bm_mono_ms());
}

int bm_swim_udp_start(struct bm_swim_udp *u, struct bm_swim *swim, unsigned tick_ms)
{
	struct timeval tv;

	if (!tick_ms)
		tick_ms = 50;
	u->swim = swim;
	u->rd = event_new(u->base, u->fd, EV_READ | EV_PERSIST, on_readable, u);
	u->tm = event_new(u->base, -1, EV_PERSIST, on_timer, u);
	if (!u->rd || !u->tm)
		goto out_free;
	tv.tv_sec = tick_ms / 1000;
	tv.tv_usec = (tick_ms % 1000) * 1000;
	if (event_add(u->rd, NULL) == -1 || event_add(u->tm, &tv) == -1)
		goto out_free;
	bm_swim_tick(swim, bm_mono_ms());
	return 0;
out_free:
	if (u->rd)
		event_free(u->rd);
	if (u->tm)
		event_free(u->tm);
	u->rd = u->tm = NULL;
	return BM_ENOMEM;
}

void bm_swim_udp_close(struct bm_swim_udp *u)
{
	if (!u)
		return;
	if (u->rd)
		event_free(u->rd);
	if (u->tm)
		event_free(u->tm);
	close(u->fd);
	free(u);
}
