/*
 * mqtt.c - minimal MQTT 3.1.1 client (format in mqtt.h).
 */
#include "mqtt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bm_err.h"
#include "bm_time.h"

#define RBUF_CAP (256 * 1024)
#define OBUF_CAP (16 * 1024)

struct mqtt {
	int fd;
	uint8_t *rbuf;
	size_t rlen, roff;   /* bytes held; start of the next packet */
	size_t consumed;     /* packet returned last call, dropped on the next */
	int drained;         /* the last read did not fill the buffer */
	int corked;          /* packets wait in obuf for mqtt_uncork */
	uint8_t obuf[OBUF_CAP];
	size_t olen;
};

static void seterr(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!err || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
}

static int wait_fd(int fd, short ev, int timeout_ms)
{
	struct pollfd p = { fd, ev, 0 };
	int rc;

	do
		rc = poll(&p, 1, timeout_ms);
	while (rc == -1 && errno == EINTR);
	if (rc == 0)
		return BM_ETIMEDOUT;
	return rc == -1 ? BM_EIO : 0;
}

static int write_all(struct mqtt *m, const uint8_t *p, size_t n, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;

	while (n) {
		ssize_t w = write(m->fd, p, n);
		if (w == -1 && errno == EINTR)
			continue;
		if (w == -1 && errno == EAGAIN) {
			uint64_t now = bm_mono_ms();
			int rc;
			if (now >= deadline)
				return BM_ETIMEDOUT;
			rc = wait_fd(m->fd, POLLOUT, (int)(deadline - now));
			if (rc)
				return rc;
			continue;
		}
		if (w == -1)
			return BM_EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Writes what obuf gathered (emptied either way). */
static int flush_out(struct mqtt *m)
{
	int rc = m->olen ? write_all(m, m->obuf, m->olen, 5000) : 0;

	m->olen = 0;
	return rc;
}

/* A packet out: written now, or gathered while corked. */
static int put_out(struct mqtt *m, const uint8_t *p, size_t n)
{
	int rc;

	if (!m->corked)
		return write_all(m, p, n, 5000);
	if (m->olen + n > sizeof(m->obuf)) {
		if ((rc = flush_out(m)))
			return rc;
		if (n > sizeof(m->obuf))
			return write_all(m, p, n, 5000);
	}
	memcpy(m->obuf + m->olen, p, n);
	m->olen += n;
	return 0;
}

void mqtt_cork(struct mqtt *m)
{
	m->corked = 1;
}

int mqtt_uncork(struct mqtt *m)
{
	m->corked = 0;
	return flush_out(m);
}

/* Fixed header with the remaining length; returns its size (2..5). */
static size_t put_header(uint8_t *p, uint8_t type_flags, size_t rem)
{
	size_t n = 0;

	p[n++] = type_flags;
	do {
		uint8_t b = rem % 128;
		rem /= 128;
		p[n++] = rem ? (uint8_t)(b | 0x80) : b;
	} while (rem);
	return n;
}

static size_t put_str(uint8_t *p, const char *s, size_t len)
{
	p[0] = (uint8_t)(len >> 8);
	p[1] = (uint8_t)len;
	memcpy(p + 2, s, len);
	return 2 + len;
}

/* Parse one complete packet at rbuf+roff.  Returns 0, BM_EAGAIN or
 * BM_EDECODE. */
static int parse(struct mqtt *m, struct mqtt_ev *ev)
{
	const uint8_t *p = m->rbuf + m->roff;
	size_t avail = m->rlen - m->roff, rem = 0, hl = 1;
	unsigned shift = 0;
	const uint8_t *v;

	for (;;) {
		if (hl >= avail)
			return BM_EAGAIN;
		rem |= (size_t)(p[hl] & 0x7f) << shift;
		shift += 7;
		if (!(p[hl++] & 0x80))
			break;
		if (hl > 4)
			return BM_EDECODE;
	}
	if (rem > RBUF_CAP - 8)
		return BM_EDECODE;
	if (hl + rem > avail)
		return BM_EAGAIN;
	memset(ev, 0, sizeof(*ev));
	v = p + hl;
	ev->type = (enum mqtt_ev_type)(p[0] >> 4);
	switch (ev->type) {
	case MQTT_EV_PUBLISH: {
		size_t tl, off;
		if (rem < 2)
			return BM_EDECODE;
		ev->qos = (p[0] >> 1) & 3;
		tl = (size_t)v[0] << 8 | v[1];
		off = 2 + tl + (ev->qos ? 2 : 0);
		if (off > rem)
			return BM_EDECODE;
		ev->topic = (const char *)v + 2;
		ev->topic_len = tl;
		if (ev->qos)
			ev->packet_id = (uint16_t)(v[2 + tl] << 8 | v[3 + tl]);
		ev->payload = v + off;
		ev->payload_len = rem - off;
		break;
	}
	case MQTT_EV_CONNACK:
		if (rem < 2)
			return BM_EDECODE;
		ev->qos = v[1];
		break;
	case MQTT_EV_PUBACK:
	case MQTT_EV_SUBACK:
		if (rem < 2)
			return BM_EDECODE;
		ev->packet_id = (uint16_t)(v[0] << 8 | v[1]);
		if (ev->type == MQTT_EV_SUBACK)
			ev->qos = rem > 2 ? v[2] : 0x80;
		break;
	default:
		ev->type = MQTT_EV_OTHER;
		break;
	}
	m->consumed = hl + rem;
	return 0;
}

int mqtt_next(struct mqtt *m, struct mqtt_ev *ev)
{
	int rc;

	m->roff += m->consumed;
	m->consumed = 0;
	for (;;) {
		ssize_t n;
		rc = parse(m, ev);
		if (rc != BM_EAGAIN)
			break;
		/* A read that did not fill the buffer emptied the socket: say
		 * EAGAIN now instead of reading to be told so, and read on the
		 * next call (the caller polls in between). */
		if (m->drained) {
			m->drained = 0;
			return BM_EAGAIN;
		}
		if (m->roff) {
			memmove(m->rbuf, m->rbuf + m->roff, m->rlen - m->roff);
			m->rlen -= m->roff;
			m->roff = 0;
		}
		n = read(m->fd, m->rbuf + m->rlen, RBUF_CAP - m->rlen);
		if (n == 0)
			return BM_ECLOSED;
		if (n == -1)
			return errno == EAGAIN || errno == EINTR ? BM_EAGAIN : BM_EIO;
		m->drained = (size_t)n < RBUF_CAP - m->rlen;
		m->rlen += (size_t)n;
	}
	if (rc)
		return rc;
	if (ev->type == MQTT_EV_PUBLISH && ev->qos == 1) {
		uint8_t ack[4] = { 0x40, 2, (uint8_t)(ev->packet_id >> 8),
				   (uint8_t)ev->packet_id };
		rc = put_out(m, ack, sizeof(ack));
	}
	return rc;
}

/* Block for the next packet of one type (others are dropped). */
static int wait_for(struct mqtt *m, enum mqtt_ev_type type, struct mqtt_ev *ev,
		    int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;

	for (;;) {
		int rc = mqtt_next(m, ev);
		uint64_t now;
		if (rc == 0 && ev->type == type)
			return 0;
		if (rc == 0)
			continue;
		if (rc != BM_EAGAIN)
			return rc;
		now = bm_mono_ms();
		if (now >= deadline)
			return BM_ETIMEDOUT;
		rc = wait_fd(m->fd, POLLIN, (int)(deadline - now));
		if (rc)
			return rc;
	}
}

size_t mqtt_connect_packet(uint8_t out[MQTT_CONNECT_MAX], const char *client_id)
{
	size_t idl = strnlen(client_id, 200), n;

	/* CONNECT: protocol name, level 4, clean session, keepalive 600 s. */
	n = put_header(out, 0x10, 10 + 2 + idl);
	n += put_str(out + n, "MQTT", 4);
	out[n++] = 4;
	out[n++] = 0x02;
	out[n++] = 600 >> 8;
	out[n++] = 600 & 0xff;
	n += put_str(out + n, client_id, idl);
	return n;
}

int mqtt_connect(struct mqtt **out, const char *host, int port, const char *local_addr,
		 const char *client_id, int timeout_ms, char *err, size_t errlen)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct mqtt *m = calloc(1, sizeof(*m));
	size_t idl = strlen(client_id), n;
	uint8_t pkt[MQTT_CONNECT_MAX];
	struct mqtt_ev ev;
	int one = 1, rc;

	*out = NULL;
	if (!m || !(m->rbuf = malloc(RBUF_CAP))) {
		free(m);
		return BM_ENOMEM;
	}
	m->fd = -1;
	if (idl > 200 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		seterr(err, errlen, "bad host '%s' or client id", host);
		rc = BM_EINVAL;
		goto fail;
	}
	m->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (m->fd == -1) {
		seterr(err, errlen, "socket: %s", strerror(errno));
		rc = BM_EIO;
		goto fail;
	}
	if (local_addr) {
		struct sockaddr_in la = { .sin_family = AF_INET };
		inet_pton(AF_INET, local_addr, &la.sin_addr);
		if (bind(m->fd, (struct sockaddr *)&la, sizeof(la)) == -1) {
			seterr(err, errlen, "cannot bind to '%s': %s", local_addr, strerror(errno));
			rc = BM_EUNAVAIL;
			goto fail;
		}
	}
	if (connect(m->fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 && errno != EINPROGRESS) {
		seterr(err, errlen, "connect %s:%d: %s", host, port, strerror(errno));
		rc = BM_EUNAVAIL;
		goto fail;
	} else {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (wait_fd(m->fd, POLLOUT, timeout_ms) ||
		    getsockopt(m->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
			seterr(err, errlen, "connect %s:%d: %s", host, port,
			       soerr ? strerror(soerr) : "timed out");
			rc = BM_EUNAVAIL;
			goto fail;
		}
	}
	setsockopt(m->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	n = mqtt_connect_packet(pkt, client_id);
	if ((rc = write_all(m, pkt, n, timeout_ms)) ||
	    (rc = wait_for(m, MQTT_EV_CONNACK, &ev, timeout_ms))) {
		seterr(err, errlen, "no CONNACK from %s:%d: %s", host, port, bm_strerror(rc));
		goto fail;
	}
	if (ev.qos != 0) {
		seterr(err, errlen, "CONNACK from %s:%d refused the connection", host, port);
		rc = BM_EFORBIDDEN;
		goto fail;
	}
	*out = m;
	return 0;
fail:
	if (m->fd >= 0)
		close(m->fd);
	free(m->rbuf);
	free(m);
	return rc;
}

int mqtt_subscribe(struct mqtt *m, const char *topic, int qos, int timeout_ms)
{
	size_t tl = strlen(topic), n;
	uint8_t pkt[16 + 1024];
	struct mqtt_ev ev;
	int rc;

	if (tl > 1000)
		return BM_ETOOBIG;
	n = put_header(pkt, 0x82, 2 + 2 + tl + 1);
	pkt[n++] = 0;
	pkt[n++] = 1;
	n += put_str(pkt + n, topic, tl);
	pkt[n++] = (uint8_t)qos;
	if ((rc = write_all(m, pkt, n, timeout_ms)))
		return rc;
	if ((rc = wait_for(m, MQTT_EV_SUBACK, &ev, timeout_ms)))
		return rc;
	return ev.qos == 0x80 ? BM_EFORBIDDEN : 0;
}

int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len,
		 int qos, uint16_t packet_id)
{
	size_t tl = strlen(topic), n;
	uint8_t pkt[2048];

	if (tl > 512 || len > sizeof(pkt) - 16 - tl)
		return BM_ETOOBIG;
	n = put_header(pkt, (uint8_t)(0x30 | (qos ? 2 : 0)), 2 + tl + (qos ? 2 : 0) + len);
	n += put_str(pkt + n, topic, tl);
	if (qos) {
		pkt[n++] = (uint8_t)(packet_id >> 8);
		pkt[n++] = (uint8_t)packet_id;
	}
	memcpy(pkt + n, payload, len);
	return put_out(m, pkt, n + len);
}

int mqtt_fd(const struct mqtt *m)
{
	return m->fd;
}

void mqtt_close(struct mqtt *m)
{
	static const uint8_t disc[2] = { 0xe0, 0 };

	if (!m)
		return;
	if (write(m->fd, disc, sizeof(disc)) == -1) {
		/* best effort: the broker sees the close anyway */
	}
	close(m->fd);
	free(m->rbuf);
	free(m);
}
