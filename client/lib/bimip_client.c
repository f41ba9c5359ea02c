/*
 * bimip_client.c - libbimip-client (see bimip_client.h).
 */
#include "bimip_client.h"

#include "bm_env.h"
#include "bm_err.h"
#include "bm_http.h"
#include "bm_time.h"
#include "bm_tls.h"
#include "bm_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BM_CLIENT_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

struct bm_client {
	struct bm_client_opts o;
	char *url, *token, *ca_file, *local_addr;
	char host[256], port[8], path[512];
	int tls_on;
	int fd;
	struct bm_tls_config *tls_cfg;
	struct bm_tls *tls;
	struct bm_ws_parser ws;
	uint8_t *rbuf;
	size_t rlen, rcap;
	uint8_t *msg;
	size_t msg_len;
	uint8_t *wbuf;
	size_t wcap;
	int corked;              /* frames gather in obuf until bm_client_uncork */
	uint8_t *obuf;
	size_t olen, ocap;
	int closed;
	int close_code;
	char close_reason[128];
	char eid[129];
	int64_t last_offset;
	int64_t committed;
	int since_commit;
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

static char *dupstr(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int parse_url(struct bm_client *c, const char *url)
{
	const char *p, *hostend, *colon;

	if (!strncmp(url, "ws://", 5)) {
		c->tls_on = 0;
		p = url + 5;
	} else if (!strncmp(url, "wss://", 6)) {
		c->tls_on = 1;
		p = url + 6;
	} else {
		return BM_EINVAL;
	}
	hostend = strchr(p, '/');
	if (!hostend)
		hostend = p + strlen(p);
	colon = memchr(p, ':', (size_t)(hostend - p));
	if (colon) {
		snprintf(c->host, sizeof(c->host), "%.*s", (int)(colon - p), p);
		snprintf(c->port, sizeof(c->port), "%.*s", (int)(hostend - colon - 1), colon + 1);
	} else {
		snprintf(c->host, sizeof(c->host), "%.*s", (int)(hostend - p), p);
		snprintf(c->port, sizeof(c->port), "%s", c->tls_on ? "443" : "80");
	}
	snprintf(c->path, sizeof(c->path), "%s", *hostend ? hostend : "/");
	return c->host[0] ? 0 : BM_EINVAL;
}

static int wait_fd(int fd, short ev, int timeout_ms)
{
	struct pollfd p = { fd, ev, 0 };
	int rc;

	do {
		rc = poll(&p, 1, timeout_ms);
	} while (rc == -1 && errno == EINTR);
	if (rc == 0)
		return BM_ETIMEDOUT;
	return rc < 0 ? BM_EIO : 0;
}

static int deadline_left(uint64_t deadline)
{
	uint64_t now = bm_mono_ms();
	return now >= deadline ? 0 : (int)(deadline - now);
}

/* Raw I/O through TLS or the socket: bytes, 0 at EOF, or BM_EAGAIN/error. */
static ssize_t c_read(struct bm_client *c, uint8_t *buf, size_t cap)
{
	if (c->tls) {
		size_t n;
		int rc = bm_tls_read(c->tls, buf, cap, &n);
		if (rc == BM_ECLOSED)
			return 0;
		return rc ? rc : (ssize_t)n;
	}
	for (;;) {
		ssize_t n = read(c->fd, buf, cap);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? BM_EAGAIN : BM_EIO;
	}
}

static int c_write_all(struct bm_client *c, const uint8_t *p, size_t n, int timeout_ms)
{
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;

	while (n) {
		ssize_t w;
		if (c->tls) {
			size_t done;
			int rc = bm_tls_write(c->tls, p, n, &done);
			w = rc ? rc : (ssize_t)done;
		} else {
			w = write(c->fd, p, n);
			if (w < 0)
				w = errno == EAGAIN ? BM_EAGAIN : errno == EINTR ? 0 : BM_EIO;
		}
		if (w == BM_EAGAIN) {
			short ev = c->tls && (bm_tls_wants(c->tls) & BM_TLS_WANT_READ) ? POLLIN
										    : POLLOUT;
			int rc = wait_fd(c->fd, ev, deadline_left(deadline));
			if (rc)
				return rc;
			continue;
		}
		if (w < 0)
			return BM_EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int tcp_connect(struct bm_client *c, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
	int rc = getaddrinfo(c->host, c->port, &hints, &res), fd = -1, one = 1;

	if (rc) {
		seterr(err, errlen, "cannot resolve '%s': %s", c->host, gai_strerror(rc));
		return BM_EINVAL;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd == -1)
			continue;
		if (c->local_addr && ai->ai_family == AF_INET) {
			struct sockaddr_in la = { .sin_family = AF_INET };
			inet_pton(AF_INET, c->local_addr, &la.sin_addr);
			if (bind(fd, (struct sockaddr *)&la, sizeof(la)) == -1) {
				seterr(err, errlen, "cannot bind to '%s': %s", c->local_addr,
				       strerror(errno));
				close(fd);
				fd = -1;
				continue;
			}
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS) {
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (!wait_fd(fd, POLLOUT, timeout_ms) &&
			    !getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) && !soerr)
				break;
			seterr(err, errlen, "connect %s:%s: %s", c->host, c->port,
			       soerr ? strerror(soerr) : "timed out");
		} else {
			seterr(err, errlen, "connect %s:%s: %s", c->host, c->port, strerror(errno));
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1)
		return BM_EUNAVAIL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	return 0;
}

static int tls_handshake(struct bm_client *c, uint64_t deadline, char *err, size_t errlen)
{
	/* Verify against the given CA, else the system's bundle; never
	 * silently unverified. */
	struct bm_tls_options o = { .server = 0,
				    .ca_file = c->ca_file ? c->ca_file : BM_CLIENT_SYSTEM_CA,
				    .server_name = c->host, .insecure = c->o.insecure_tls };
	int rc;

	if (!c->tls_cfg && (rc = bm_tls_config_new(&c->tls_cfg, &o))) {
		seterr(err, errlen, "cannot set up TLS (CA '%s')", c->ca_file ? c->ca_file : "-");
		return rc;
	}
	if ((rc = bm_tls_new(&c->tls, c->tls_cfg, c->fd)))
		return rc;
	for (;;) {
		rc = bm_tls_handshake(c->tls);
		if (rc == 0)
			return 0;
		if (rc != BM_EAGAIN) {
			char why[200];
			seterr(err, errlen, "tls handshake with %s:%s failed: %s", c->host,
			       c->port, bm_tls_strerror(c->tls, why, sizeof(why)));
			return rc;
		}
		rc = wait_fd(c->fd, bm_tls_wants(c->tls) & BM_TLS_WANT_WRITE ? POLLOUT : POLLIN,
			     deadline_left(deadline));
		if (rc) {
			seterr(err, errlen, "tls handshake with %s:%s timed out", c->host, c->port);
			return rc;
		}
	}
}

static void drop_conn(struct bm_client *c)
{
	if (c->tls)
		bm_tls_free(c->tls);
	c->tls = NULL;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->rlen = 0;
	c->olen = 0;
	c->corked = 0;
	free(c->msg);
	c->msg = NULL;
	c->msg_len = 0;
}

static int do_connect(struct bm_client *c, char *err, size_t errlen)
{
	int timeout = c->o.timeout_ms > 0 ? c->o.timeout_ms : 5000;
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout;
	char key[BM_HTTP_KEY_LEN + 1], req[BM_HTTP_MAX_HEAD], hostport[300];
	struct bm_http_response resp;
	int n, rc;

	drop_conn(c);
	c->closed = 0;
	c->close_code = 0;
	c->close_reason[0] = 0;
	rc = tcp_connect(c, timeout, err, errlen);
	if (rc)
		return rc;
	if (c->tls_on && (rc = tls_handshake(c, deadline, err, errlen)))
		goto fail;
	snprintf(hostport, sizeof(hostport), "%s:%s", c->host, c->port);
	if ((rc = bm_http_client_key(key)))
		goto fail;
	n = bm_http_upgrade_request(req, sizeof(req), hostport, c->path, key, c->token, NULL);
	if (n < 0) {
		rc = n;
		seterr(err, errlen, "cannot build the upgrade request");
		goto fail;
	}
	rc = c_write_all(c, (const uint8_t *)req, (size_t)n, deadline_left(deadline));
	if (rc) {
		seterr(err, errlen, "cannot send the upgrade request: %s", bm_strerror(rc));
		goto fail;
	}
	for (;;) {
		ssize_t r;
		rc = bm_http_parse_response((const char *)c->rbuf, c->rlen, key, &resp);
		if (rc != BM_EAGAIN)
			break;
		if (c->rlen >= c->rcap) {
			rc = BM_ETOOBIG;
			break;
		}
		r = c_read(c, c->rbuf + c->rlen, c->rcap - c->rlen);
		if (r == BM_EAGAIN) {
			rc = wait_fd(c->fd, POLLIN, deadline_left(deadline));
			if (rc) {
				seterr(err, errlen, "no answer to the upgrade from %s", hostport);
				goto fail;
			}
			continue;
		}
		if (r <= 0) {
			seterr(err, errlen, "%s closed the connection during the upgrade", hostport);
			rc = BM_ECLOSED;
			goto fail;
		}
		c->rlen += (size_t)r;
	}
	if (rc) {
		char msg[200];
		seterr(err, errlen, "%s", resp.status ? bm_http_response_message(&resp, msg, sizeof(msg))
						       : "malformed upgrade response");
		goto fail;
	}
	memmove(c->rbuf, c->rbuf + resp.head_len, c->rlen - resp.head_len);
	c->rlen -= resp.head_len;
	bm_ws_parser_init(&c->ws, BM_WS_CLIENT, (uint32_t)c->o.max_message);
	/* What the server holds as committed is unknown on a new connection:
	 * a commit may have been lost with the old one.  Assume nothing, so
	 * the next commit sends last_offset again (a repeat is harmless).
	 * Assuming last_offset here left the server a whole delivery window
	 * behind after a few reconnects, and live delivery stalled. */
	c->committed = 0;
	c->since_commit = c->last_offset > 0 ? c->o.commit_every : 0;
	return 0;
fail:
	drop_conn(c);
	return rc;
}

int bm_client_connect(struct bm_client **out, const struct bm_client_opts *o,
		      char *err, size_t errlen)
{
	struct bm_client *c = calloc(1, sizeof(*c));
	int rc;

	*out = NULL;
	if (!c)
		return BM_ENOMEM;
	c->o = *o;
	c->fd = -1;
	if (!c->o.max_message)
		c->o.max_message = 1 << 20;
	if (!c->o.commit_every)
		c->o.commit_every = 64;
	c->url = dupstr(o->url);
	c->token = dupstr(o->token);
	c->ca_file = dupstr(o->ca_file);
	c->local_addr = dupstr(o->local_addr);
	c->rcap = c->o.max_message + 65536;
	c->rbuf = malloc(c->rcap);
	if (!c->rbuf || !c->url) {
		bm_client_abort(c);
		return BM_ENOMEM;
	}
	if (parse_url(c, c->url)) {
		seterr(err, errlen, "bad url '%s' (expected ws://host:port/ or wss://...)", c->url);
		bm_client_abort(c);
		return BM_EINVAL;
	}
	rc = do_connect(c, err, errlen);
	if (rc) {
		bm_client_abort(c);
		return rc;
	}
	*out = c;
	return 0;
}

int bm_client_reconnect(struct bm_client *c, char *err, size_t errlen)
{
	return do_connect(c, err, errlen);
}

int bm_client_set_url(struct bm_client *c, const char *url)
{
	char *u = strdup(url);

	if (!u)
		return BM_ENOMEM;
	free(c->url);
	c->url = u;
	return parse_url(c, url);
}

int bm_client_set_token(struct bm_client *c, const char *token)
{
	char *t = strdup(token);

	if (!t)
		return BM_ENOMEM;
	free(c->token);
	c->token = t;
	return 0;
}

void bm_client_abort(struct bm_client *c)
{
	if (!c)
		return;
	drop_conn(c);
	bm_tls_config_unref(c->tls_cfg);
	free(c->rbuf);
	free(c->wbuf);
	free(c->obuf);
	free(c->url);
	free(c->token);
	free(c->ca_file);
	free(c->local_addr);
	free(c);
}

static int send_frame(struct bm_client *c, int op, const void *p, size_t n)
{
	uint8_t key[4];
	size_t hn;

	if (c->closed || c->fd < 0)
		return BM_ECLOSED;
	if (n + BM_WS_MAX_HEADER > c->wcap) {
		uint8_t *w = realloc(c->wbuf, n + BM_WS_MAX_HEADER);
		if (!w)
			return BM_ENOMEM;
		c->wbuf = w;
		c->wcap = n + BM_WS_MAX_HEADER;
	}
	if (bm_ws_random_key(key))
		return BM_ESYS;
	hn = bm_ws_frame_header(c->wbuf, (enum bm_ws_opcode)op, 1, n, key);
	memcpy(c->wbuf + hn, p, n);
	bm_ws_mask(c->wbuf + hn, n, key, 0);
	if (!c->corked)
		return c_write_all(c, c->wbuf, hn + n, 5000);
	if (c->olen + hn + n > c->ocap) {
		size_t cap = c->ocap ? c->ocap : 16384;
		uint8_t *o;
		while (cap < c->olen + hn + n)
			cap *= 2;
		if (!(o = realloc(c->obuf, cap)))
			return BM_ENOMEM;
		c->obuf = o;
		c->ocap = cap;
	}
	memcpy(c->obuf + c->olen, c->wbuf, hn + n);
	c->olen += hn + n;
	return 0;
}

void bm_client_cork(struct bm_client *c)
{
	c->corked = 1;
}

int bm_client_uncork(struct bm_client *c)
{
	int rc = 0;

	c->corked = 0;
	if (c->olen && !c->closed && c->fd >= 0)
		rc = c_write_all(c, c->obuf, c->olen, 5000);
	c->olen = 0;
	return rc;
}

void bm_client_close(struct bm_client *c)
{
	bimip_MessageScheme m;
	uint8_t f[BM_WS_MAX_CONTROL_FRAME];
	int n;

	if (!c)
		return;
	if (c->olen)
		bm_client_uncork(c);
	if (!c->closed && c->fd >= 0) {
		n = bm_ws_close_frame(f, BM_WS_CLIENT, 1000, "bye");
		if (n > 0)
			c_write_all(c, f, (size_t)n, 1000);
		/* Wait briefly for the server's close so the socket ends cleanly. */
		for (int i = 0; i < 100 && !c->closed; i++)
			if (bm_client_recv(c, &m, 10) == BM_EIO)
				break;
	}
	bm_client_abort(c);
}

int bm_client_send_raw(struct bm_client *c, const void *p, size_t n, int text)
{
	return send_frame(c, text ? BM_WS_OP_TEXT : BM_WS_OP_BINARY, p, n);
}

int bm_client_send(struct bm_client *c, bimip_MessageScheme *m)
{
	static uint8_t buf[BM_ENV_MAX_BYTES];
	size_t n;
	int rc = bm_env_encode(m, buf, sizeof(buf), &n);

	return rc ? rc : send_frame(c, BM_WS_OP_BINARY, buf, n);
}

/* Parse buffered frames; 0 with *m filled, BM_EAGAIN when none complete. */
static int next_message(struct bm_client *c, bimip_MessageScheme *m)
{
	size_t off = 0;
	int rc = BM_EAGAIN;

	while (off < c->rlen) {
		struct bm_ws_event ev;
		size_t used = 0;
		int r = bm_ws_parse(&c->ws, c->rbuf + off, c->rlen - off, &used, &ev);

		off += used;
		if (r == BM_EAGAIN)
			break;
		if (r) {
			c->closed = 1;
			c->close_code = ev.close_code ? ev.close_code : 1002;
			snprintf(c->close_reason, sizeof(c->close_reason), "protocol error from server");
			rc = BM_ECLOSED;
			break;
		}
		if (ev.type == BM_WS_EV_PING) {
			uint8_t f[BM_WS_MAX_CONTROL_FRAME];
			int n = bm_ws_control_frame(f, BM_WS_CLIENT, BM_WS_OP_PONG, ev.data, ev.len);
			if (n > 0)
				c_write_all(c, f, (size_t)n, 1000);
			continue;
		}
		if (ev.type == BM_WS_EV_PONG)
			continue;
		if (ev.type == BM_WS_EV_CLOSE) {
			uint8_t f[BM_WS_MAX_CONTROL_FRAME];
			int n = bm_ws_close_frame(f, BM_WS_CLIENT, 1000, "");
			c->close_code = ev.close_code;
			snprintf(c->close_reason, sizeof(c->close_reason), "%.*s", (int)ev.len,
				 (const char *)ev.data);
			if (n > 0)
				c_write_all(c, f, (size_t)n, 1000);
			c->closed = 1;
			rc = BM_ECLOSED;
			break;
		}
		if (ev.type == BM_WS_EV_CHUNK) {
			if (ev.first) {
				free(c->msg);
				c->msg = malloc(c->o.max_message);
				c->msg_len = 0;
				if (!c->msg)
					return BM_ENOMEM;
			}
			if (c->msg) {
				memcpy(c->msg + c->msg_len, ev.data, ev.len);
				c->msg_len += ev.len;
			}
			if (!ev.fin || !c->msg)
				continue;
			rc = bm_env_decode(c->msg, c->msg_len, m, NULL) ? BM_EDECODE : 0;
			free(c->msg);
			c->msg = NULL;
		} else {
			rc = bm_env_decode(ev.data, ev.len, m, NULL) ? BM_EDECODE : 0;
		}
		if (rc)
			break;
		/* Already seen (a replay after reconnect): skip it. */
		if (m->offset > 0 && m->offset <= c->last_offset) {
			rc = BM_EAGAIN;
			continue;
		}
		if (m->offset > 0) {
			c->last_offset = m->offset;
			c->since_commit++;
		}
		/* The answers to our own commits are bookkeeping, not news. */
		if (m->which_payload == bimip_MessageScheme_offset_commit_tag &&
		    m->payload.offset_commit.type == 2) {
			rc = BM_EAGAIN;
			continue;
		}
		break;
	}
	memmove(c->rbuf, c->rbuf + off, c->rlen - off);
	c->rlen -= off;
	return rc;
}

/* One read into the receive buffer: bytes read (> 0), BM_EAGAIN, BM_ECLOSED
 * (EOF: close code 1006 unless the server sent one) or BM_EIO. */
static ssize_t fill(struct bm_client *c)
{
	ssize_t n;

	if (c->closed || c->fd < 0)
		return BM_ECLOSED;
	if (c->rlen >= c->rcap)
		return BM_EIO;
	n = c_read(c, c->rbuf + c->rlen, c->rcap - c->rlen);
	if (n > 0) {
		c->rlen += (size_t)n;
		return n;
	}
	if (n == 0) {
		c->closed = 1;
		if (!c->close_code)
			c->close_code = 1006;
		return BM_ECLOSED;
	}
	return n == BM_EAGAIN ? BM_EAGAIN : BM_EIO;
}

int bm_client_recv(struct bm_client *c, bimip_MessageScheme *m, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : bm_mono_ms() + (uint64_t)timeout_ms;
	int rc;

	if (c->o.commit_every > 0 && c->since_commit >= c->o.commit_every)
		bm_client_commit(c);
	for (;;) {
		ssize_t n;
		rc = next_message(c, m);
		if (rc != BM_EAGAIN)
			return rc;
		n = fill(c);
		if (n > 0)
			continue;
		if (n != BM_EAGAIN)
			return (int)n;
		if (timeout_ms == 0)
			return BM_ETIMEDOUT;
		rc = wait_fd(c->fd, POLLIN,
			     timeout_ms < 0 ? -1 : deadline_left(deadline));
		if (rc)
			return rc;
	}
}

int bm_client_drain(struct bm_client *c, bimip_MessageScheme *m, bm_client_stanza_fn *fn,
		    void *ud)
{
	int emptied = 0, rc;

	for (;;) {
		size_t space = c->rcap - c->rlen;
		ssize_t n;

		while ((rc = next_message(c, m)) == 0 || rc == BM_EDECODE)
			if (!rc)
				fn(ud, m);
		if (rc != BM_EAGAIN)
			return rc;
		if (emptied)
			break;
		n = fill(c);
		if (n == BM_EAGAIN)
			break;
		if (n < 0)
			return (int)n;
		/* TLS hands out a record at a time: read on until EAGAIN. */
		emptied = (size_t)n < space && !c->tls;
	}
	if (c->o.commit_every > 0 && c->since_commit >= c->o.commit_every)
		bm_client_commit(c);
	return 0;
}

int bm_client_commit(struct bm_client *c)
{
	bimip_MessageScheme m;
	int rc;

	if (c->last_offset <= c->committed)
		return 0;
	memset(&m, 0, sizeof(m));
	m.which_payload = bimip_MessageScheme_offset_commit_tag;
	m.payload.offset_commit.type = 1;
	m.payload.offset_commit.offset = c->last_offset;
	m.payload.offset_commit.timestamp = bm_wall_ms();
	rc = bm_client_send(c, &m);
	if (!rc) {
		c->committed = c->last_offset;
		c->since_commit = 0;
	}
	return rc;
}

int64_t bm_client_last_offset(const struct bm_client *c) { return c->last_offset; }
int64_t bm_client_committed(const struct bm_client *c) { return c->committed; }
void bm_client_set_last_offset(struct bm_client *c, int64_t o) { c->last_offset = o; }
int bm_client_fd(const struct bm_client *c) { return c->fd; }
int bm_client_close_code(const struct bm_client *c) { return c->close_code; }
const char *bm_client_close_reason(const struct bm_client *c) { return c->close_reason; }
const char *bm_client_eid(const struct bm_client *c) { return c->eid; }

int bm_client_pending(const struct bm_client *c)
{
	return c->rlen > 0 || (c->tls && bm_tls_pending(c->tls));
}

/* --- helpers ------------------------------------------------------------------- */

static bimip_MessageScheme hm;

static bimip_MessageScheme *begin(pb_size_t route)
{
	memset(&hm, 0, sizeof(hm));
	hm.which_payload = route;
	return &hm;
}

int bm_client_send_text(struct bm_client *c, const char *to, const char *text,
			const char *local_id)
{
	bimip_TextPayloadRequest *t = &begin(bimip_MessageScheme_text_payload_request_tag)
						->payload.text_payload_request;

	if (strlen(text) >= sizeof(t->content) || strlen(to) >= sizeof(t->to[0].eid) ||
	    (local_id && strlen(local_id) >= sizeof(t->message_id_local)))
		return BM_ETOOBIG;
	t->to_count = 1;
	BM_SET_STR(t->to[0].eid, to);
	BM_SET_STR(t->content, text);
	BM_SET_STR(t->message_id_local, local_id);
	snprintf(t->text_size_count, sizeof(t->text_size_count), "%u", (unsigned)strlen(text) % 100000000u);
	t->created_at = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_send_ack(struct bm_client *c, const char *to, const char *message_id,
		       int status)
{
	bimip_AcknowledgmentRequest *a = &begin(bimip_MessageScheme_acknowledgment_request_tag)
						   ->payload.acknowledgment_request;

	a->has_to = true;
	BM_SET_STR(a->to.eid, to);
	BM_SET_STR(a->message_id, message_id);
	a->status = status;
	a->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_send_ping(struct bm_client *c)
{
	bimip_PingPong *p = &begin(bimip_MessageScheme_pingpong_message_tag)->payload.pingpong_message;

	p->type = 1;
	p->status = 1;
	p->request_time = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_add_subscriber(struct bm_client *c, const char *subscriber)
{
	bimip_SubscriberAddRequest *s = &begin(bimip_MessageScheme_subscriber_add_request_tag)
						  ->payload.subscriber_add_request;

	s->has_subscriber = true;
	BM_SET_STR(s->subscriber.eid, subscriber);
	s->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_block(struct bm_client *c, const char *who, int block)
{
	bimip_BlockSubscriber *b = &begin(bimip_MessageScheme_block_subscriber_tag)
					    ->payload.block_subscriber;

	b->has_subscriber = true;
	BM_SET_STR(b->subscriber.eid, who);
	b->type = 1;
	b->status = block ? 1 : 2;
	b->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_awareness_request(struct bm_client *c, const char *who, int64_t id)
{
	bimip_AwarenessRequest *a = &begin(bimip_MessageScheme_awareness_request_tag)
					     ->payload.awareness_request;

	a->has_to = true;
	BM_SET_STR(a->to.eid, who);
	a->awareness_identifier = id;
	a->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_set_awareness(struct bm_client *c, int status, double lat, double lon,
			    int intention)
{
	bimip_AwarenessNotification *a = &begin(bimip_MessageScheme_awareness_notification_tag)
						  ->payload.awareness_notification;

	a->status = status;
	a->latitude = lat;
	a->longitude = lon;
	a->awareness_intention = intention;
	return bm_client_send(c, &hm);
}

int bm_client_sync(struct bm_client *c, int64_t after_offset, int limit)
{
	bimip_SyncRequest *s = &begin(bimip_MessageScheme_sync_request_tag)->payload.sync_request;

	s->after_offset = after_offset;
	s->limit = limit;
	s->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_logout(struct bm_client *c)
{
	bimip_Logout *l = &begin(bimip_MessageScheme_logout_tag)->payload.logout;

	l->type = 1;
	l->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

int bm_client_revoke(struct bm_client *c, const char *device, const char *token)
{
	bimip_TokenRevokeRequest *r = &begin(bimip_MessageScheme_token_revoke_request_tag)
					       ->payload.token_revoke_request;

	if (device && *device) {
		r->has_to = true;
		BM_SET_STR(r->to.connection_resource_id, device);
	}
	BM_SET_STR(r->token, token);
	r->type = 1;
	r->timestamp = bm_wall_ms();
	return bm_client_send(c, &hm);
}

const char *bm_client_describe(const bimip_MessageScheme *m, char *buf, size_t cap)
{
	const char *name = bm_env_route_name(m->route);
	int n = snprintf(buf, cap, "[%lld] %s", (long long)m->offset, name ? name : "?");

	if (n < 0 || (size_t)n >= cap)
		return buf;
	switch (m->which_payload) {
	case bimip_MessageScheme_chat_message_tag: {
		const bimip_ChatMessage *x = &m->payload.chat_message;
		snprintf(buf + n, cap - (size_t)n, " %s v%lld from %s (%s): %s", x->message_id,
			 (long long)x->version, x->from.eid, x->author,
			 x->which_payload == bimip_ChatMessage_text_tag ? x->payload.text
									 : x->payload.media_url);
		break;
	}
	case bimip_MessageScheme_version_update_tag: {
		const bimip_VersionUpdate *x = &m->payload.version_update;
		snprintf(buf + n, cap - (size_t)n, " %s v%lld for %s", x->message_id,
			 (long long)x->version, x->message_id_local);
		break;
	}
	case bimip_MessageScheme_error_message_tag: {
		const bimip_ErrorMessage *x = &m->payload.error_message;
		snprintf(buf + n, cap - (size_t)n, " %d (route %s): %s", (int)x->code, x->route,
			 x->message);
		break;
	}
	case bimip_MessageScheme_acknowledgment_response_tag: {
		const bimip_AcknowledgmentResponse *x = &m->payload.acknowledgment_response;
		snprintf(buf + n, cap - (size_t)n, " %s status %d from %s", x->message_id,
			 (int)x->status, x->from.eid);
		break;
	}
	case bimip_MessageScheme_awareness_notification_tag: {
		const bimip_AwarenessNotification *x = &m->payload.awareness_notification;
		snprintf(buf + n, cap - (size_t)n, " %s status %d last_seen %lld", x->from.eid,
			 (int)x->status, (long long)x->last_seen);
		break;
	}
	case bimip_MessageScheme_awareness_response_tag: {
		const bimip_AwarenessResponse *x = &m->payload.awareness_response;
		snprintf(buf + n, cap - (size_t)n, " %s status %d", x->from.eid, (int)x->status);
		break;
	}
	default:
		break;
	}
	return buf;
}
