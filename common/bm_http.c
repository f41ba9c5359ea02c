/*
 * bm_http.c - WebSocket opening handshake (RFC 6455 4.1-4.2, RFC 7230 3).
 *
 * Request accepted by the edge (CRLF line ends, head ends with CRLFCRLF):
 *
 *   GET /path?token=<jwt> HTTP/1.1
 *   Host: <host>                               required, once
 *   Upgrade: websocket                         token list, case-insensitive
 *   Connection: Upgrade                        token list containing "upgrade"
 *   Sec-WebSocket-Version: 13                  else 426
 *   Sec-WebSocket-Key: <base64 of 16 bytes>    required, once
 *   Authorization: Bearer <jwt>                optional token, first choice
 *   token: <jwt>                               optional token, second choice
 *   Origin: ..., X-Forwarded-For: ...          kept as slices
 *
 * Header names are case-insensitive tokens followed directly by ':'; values
 * are trimmed of spaces and tabs; obsolete line folding is refused (400).
 * Answer: 101 with Sec-WebSocket-Accept = base64(SHA-1(key + GUID)).
 */
#include "bm_http.h"
#include "bm_err.h"
#include "bm_ws.h"

#include <mbedtls/base64.h>
#include <mbedtls/sha1.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

static int ieq(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);

	if (n != l)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)p[i]) != lit[i])
			return 0;
	return 1;
}

static int is_tchar(int c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_ows(int c)
{
	return c == ' ' || c == '\t';
}

/* Does the comma-separated list p[0..n) contain token lit (lowercase)? */
static int list_has(const char *p, size_t n, const char *lit)
{
	size_t i = 0;

	while (i < n) {
		size_t s, e;

		while (i < n && (is_ows(p[i]) || p[i] == ','))
			i++;
		s = i;
		while (i < n && p[i] != ',')
			i++;
		e = i;
		while (e > s && is_ows(p[e - 1]))
			e--;
		if (ieq(p + s, e - s, lit))
			return 1;
	}
	return 0;
}

/* Find CRLFCRLF in buf[0..len), starting the search at *scan. */
static size_t head_end(const char *buf, size_t len, size_t *scan)
{
	size_t from = scan && *scan > 3 ? *scan - 3 : 0;
	const char *e;

	if (len < 4 || from > len)
		return 0;
	e = memmem(buf + from, len - from, "\r\n\r\n", 4);
	if (!e) {
		if (scan)
			*scan = len;
		return 0;
	}
	return (size_t)(e - buf) + 4;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decode p[0..n) in place; returns the new length or -1. */
static long pct_decode(char *p, size_t n)
{
	size_t i = 0, o = 0;

	while (i < n) {
		if (p[i] == '%') {
			int h, l;

			if (n - i < 3)
				return -1;
			h = hexval((unsigned char)p[i + 1]);
			l = hexval((unsigned char)p[i + 2]);
			if (h < 0 || l < 0 || (h == 0 && l == 0))
				return -1;
			p[o++] = (char)(h << 4 | l);
			i += 3;
		} else {
			p[o++] = p[i++];
		}
	}
	return (long)o;
}

static int key_valid(const char *k, size_t n)
{
	unsigned char raw[18];
	size_t olen = 0;

	if (n != BM_HTTP_KEY_LEN || k[22] != '=' || k[23] != '=')
		return 0;
	if (mbedtls_base64_decode(raw, sizeof(raw), &olen,
				  (const unsigned char *)k, n) != 0)
		return 0;
	return olen == 16;
}

static int reject(struct bm_http_upgrade *req, int status, const char *why)
{
	req->status = status;
	req->reason = why;
	if (status == 431)
		return BM_ETOOBIG;
	return BM_EPROTO;
}

static void slice(struct bm_http_slice *s, const char *p, size_t n)
{
	s->p = p;
	s->len = n;
}

/* Request line: "GET SP target SP HTTP/1.1". */
static int request_line(struct bm_http_upgrade *req, char *p, size_t n)
{
	char *sp1 = memchr(p, ' ', n), *sp2, *t, *q;
	size_t tn, vn;
	const char *v;

	if (!sp1 || sp1 == p)
		return reject(req, 400, "malformed request line");
	for (char *c = p; c < sp1; c++)
		if (!is_tchar((unsigned char)*c))
			return reject(req, 400, "malformed request line");
	t = sp1 + 1;
	sp2 = memchr(t, ' ', n - (size_t)(t - p));
	if (!sp2 || sp2 == t)
		return reject(req, 400, "malformed request line");
	tn = (size_t)(sp2 - t);
	v = sp2 + 1;
	vn = n - (size_t)(v - p);
	if (vn != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' ||
	    v[6] != '.' || v[7] < '0' || v[7] > '9')
		return reject(req, 400, "malformed request line");
	if (memcmp(v, "HTTP/1.1", 8) != 0)
		return reject(req, 505, "HTTP/1.1 is required");
	if ((size_t)(sp1 - p) != 3 || memcmp(p, "GET", 3) != 0)
		return reject(req, 405, "only GET can upgrade to a WebSocket");
	if (t[0] != '/')
		return reject(req, 400, "request target must be a path");
	for (size_t i = 0; i < tn; i++)
		if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
			return reject(req, 400, "malformed request target");
	q = memchr(t, '?', tn);
	if (q) {
		slice(&req->path, t, (size_t)(q - t));
		slice(&req->query, q + 1, tn - (size_t)(q - t) - 1);
	} else {
		slice(&req->path, t, tn);
		slice(&req->query, t + tn, 0);
	}
	return 0;
}

/* Find token= in the query and decode it in place. */
static int query_token(struct bm_http_upgrade *req)
{
	char *q = (char *)req->query.p;
	size_t n = req->query.len, i = 0;

	while (i < n) {
		size_t s = i, e;
		char *eq;

		while (i < n && q[i] != '&')
			i++;
		e = i++;
		eq = memchr(q + s, '=', e - s);
		if (eq && eq - (q + s) == 5 && memcmp(q + s, "token", 5) == 0) {
			long dl = pct_decode(eq + 1, (size_t)(q + e - eq - 1));

			if (dl < 0)
				return reject(req, 400, "bad percent-encoding in token");
			slice(&req->token, eq + 1, (size_t)dl);
			req->token_src = BM_HTTP_TOKEN_QUERY;
			return 0;
		}
	}
	return 0;
}

int bm_http_parse_upgrade(char *buf, size_t len, size_t *scan,
			  struct bm_http_upgrade *req)
{
	struct bm_http_slice auth = { 0 }, tokhdr = { 0 }, upgrade = { 0 },
			     conn = { 0 }, version = { 0 };
	size_t end, pos, nhdr = 0;
	char *line_end;
	int rc;

	memset(req, 0, sizeof(*req));
	end = head_end(buf, len > BM_HTTP_MAX_HEAD ? BM_HTTP_MAX_HEAD : len, scan);
	if (!end) {
		if (len >= BM_HTTP_MAX_HEAD)
			return reject(req, 431, "request head too large");
		return BM_EAGAIN;
	}
	req->head_len = end;

	line_end = memmem(buf, end, "\r\n", 2);
	if ((rc = request_line(req, buf, (size_t)(line_end - buf))))
		return rc;
	pos = (size_t)(line_end - buf) + 2;

	while (pos < end - 2) {
		char *l = buf + pos, *colon, *v, *ve;
		size_t ln, nn;

		line_end = memmem(l, end - pos, "\r\n", 2);
		ln = (size_t)(line_end - l);
		pos += ln + 2;
		if (++nhdr > BM_HTTP_MAX_HEADERS)
			return reject(req, 431, "too many header fields");
		if (is_ows(l[0]))
			return reject(req, 400, "obsolete line folding");
		colon = memchr(l, ':', ln);
		if (!colon || colon == l)
			return reject(req, 400, "malformed header field");
		nn = (size_t)(colon - l);
		for (size_t i = 0; i < nn; i++)
			if (!is_tchar((unsigned char)l[i]))
				return reject(req, 400, "malformed header field");
		v = colon + 1;
		ve = line_end;
		while (v < ve && is_ows(*v))
			v++;
		while (ve > v && is_ows(ve[-1]))
			ve--;
		for (char *c = v; c < ve; c++)
			if ((unsigned char)*c < 0x20 && *c != '\t')
				return reject(req, 400, "control character in header");

		if (ieq(l, nn, "host")) {
			if (req->host.p)
				return reject(req, 400, "duplicate Host header");
			slice(&req->host, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "upgrade")) {
			slice(&upgrade, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "connection")) {
			slice(&conn, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "sec-websocket-version")) {
			slice(&version, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "sec-websocket-key")) {
			if (req->key.p)
				return reject(req, 400, "duplicate Sec-WebSocket-Key");
			slice(&req->key, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "authorization")) {
			slice(&auth, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "token")) {
			slice(&tokhdr, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "origin")) {
			slice(&req->origin, v, (size_t)(ve - v));
		} else if (ieq(l, nn, "x-forwarded-for")) {
			slice(&req->forwarded_for, v, (size_t)(ve - v));
		}
	}

	if (!req->host.p || !req->host.len)
		return reject(req, 400, "missing Host header");
	if (!upgrade.p || !list_has(upgrade.p, upgrade.len, "websocket"))
		return reject(req, 400, "missing Upgrade: websocket");
	if (!conn.p || !list_has(conn.p, conn.len, "upgrade"))
		return reject(req, 400, "missing Connection: Upgrade");
	if (!version.p || version.len != 2 || memcmp(version.p, "13", 2) != 0)
		return reject(req, 426, "Sec-WebSocket-Version 13 is required");
	if (!req->key.p || !key_valid(req->key.p, req->key.len))
		return reject(req, 400, "missing or invalid Sec-WebSocket-Key");

	if (auth.p && auth.len > 7 && ieq(auth.p, 6, "bearer") && is_ows(auth.p[6])) {
		const char *t = auth.p + 7;

		while (t < auth.p + auth.len && is_ows(*t))
			t++;
		slice(&req->token, t, (size_t)(auth.p + auth.len - t));
		req->token_src = BM_HTTP_TOKEN_AUTHORIZATION;
	} else if (tokhdr.p && tokhdr.len) {
		req->token = tokhdr;
		req->token_src = BM_HTTP_TOKEN_HEADER;
	} else if ((rc = query_token(req))) {
		return rc;
	}
	return 0;
}

int bm_http_accept_key(const char *key, size_t key_len,
		       char out[BM_HTTP_ACCEPT_LEN + 1])
{
	unsigned char cat[64 + sizeof(WS_GUID)], sha[20];
	size_t olen = 0;

	if (key_len > 64)
		return BM_EINVAL;
	memcpy(cat, key, key_len);
	memcpy(cat + key_len, WS_GUID, sizeof(WS_GUID) - 1);
	if (mbedtls_sha1_ret(cat, key_len + sizeof(WS_GUID) - 1, sha) != 0)
		return BM_ECRYPTO;
	if (mbedtls_base64_encode((unsigned char *)out, BM_HTTP_ACCEPT_LEN + 1,
				  &olen, sha, sizeof(sha)) != 0)
		return BM_ECRYPTO;
	out[olen] = 0;
	return 0;
}

int bm_http_upgrade_response(char *out, size_t cap,
			     const struct bm_http_upgrade *req)
{
	char acc[BM_HTTP_ACCEPT_LEN + 1];
	int rc, n;

	if ((rc = bm_http_accept_key(req->key.p, req->key.len, acc)))
		return rc;
	n = snprintf(out, cap,
		     "HTTP/1.1 101 Switching Protocols\r\n"
		     "Upgrade: websocket\r\n"
		     "Connection: Upgrade\r\n"
		     "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
	if (n < 0 || (size_t)n >= cap)
		return BM_ETOOBIG;
	return n;
}

const char *bm_http_status_text(int status)
{
	switch (status) {
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 426: return "Upgrade Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

/* Copy reason into out as one printable line; quote-safe when q. */
static void clean_line(char *out, size_t cap, const char *s, int q)
{
	size_t o = 0;

	for (; *s && o + 1 < cap; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c == 0x7f)
			c = ' ';
		if (q && (c == '"' || c == '\\'))
			c = '\'';
		out[o++] = (char)c;
	}
	out[o] = 0;
}

int bm_http_error_response(char *out, size_t cap, int status,
			   const char *reason)
{
	char body[256], desc[256], extra[384];
	int n;

	if (!reason)
		reason = bm_http_status_text(status);
	clean_line(body, sizeof(body), reason, 0);
	extra[0] = 0;
	switch (status) {
	case 401:
		clean_line(desc, sizeof(desc), reason, 1);
		snprintf(extra, sizeof(extra),
			 "WWW-Authenticate: Bearer error=\"invalid_token\", "
			 "error_description=\"%s\"\r\n", desc);
		break;
	case 405:
		snprintf(extra, sizeof(extra), "Allow: GET\r\n");
		break;
	case 426:
		snprintf(extra, sizeof(extra),
			 "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n");
		break;
	case 429:
	case 503:
		snprintf(extra, sizeof(extra), "Retry-After: 1\r\n");
		break;
	}
	n = snprintf(out, cap,
		     "HTTP/1.1 %d %s\r\n"
		     "%s"
		     "Content-Type: text/plain; charset=utf-8\r\n"
		     "Content-Length: %zu\r\n"
		     "Connection: close\r\n\r\n"
		     "%s\n",
		     status, bm_http_status_text(status), extra,
		     strlen(body) + 1, body);
	if (n < 0 || (size_t)n >= cap)
		return BM_ETOOBIG;
	return n;
}

/* --- client side ---------------------------------------------------------- */

int bm_http_client_key(char key[BM_HTTP_KEY_LEN + 1])
{
	uint8_t raw[16];
	size_t olen = 0;

	for (int i = 0; i < 16; i += 4)
		if (bm_ws_random_key(raw + i))
			return BM_ESYS;
	if (mbedtls_base64_encode((unsigned char *)key, BM_HTTP_KEY_LEN + 1,
				  &olen, raw, sizeof(raw)) != 0)
		return BM_ECRYPTO;
	key[olen] = 0;
	return 0;
}

static int header_safe(const char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 0;
	return 1;
}

int bm_http_upgrade_request(char *out, size_t cap, const char *host,
			    const char *path, const char *key,
			    const char *token, const char *origin)
{
	int n;

	if (!host || !*host || !path || path[0] != '/' || !key ||
	    !header_safe(host) || !header_safe(path) || strchr(path, ' ') ||
	    !header_safe(key) || !header_safe(token) || !header_safe(origin))
		return BM_EINVAL;
	n = snprintf(out, cap,
		     "GET %s HTTP/1.1\r\n"
		     "Host: %s\r\n"
		     "Upgrade: websocket\r\n"
		     "Connection: Upgrade\r\n"
		     "Sec-WebSocket-Version: 13\r\n"
		     "Sec-WebSocket-Key: %s\r\n"
		     "%s%s%s"
		     "%s%s%s"
		     "\r\n",
		     path, host, key,
		     token ? "Authorization: Bearer " : "", token ? token : "",
		     token ? "\r\n" : "",
		     origin ? "Origin: " : "", origin ? origin : "",
		     origin ? "\r\n" : "");
	if (n < 0 || (size_t)n >= cap)
		return BM_ETOOBIG;
	return n;
}

static int status_err(int status)
{
	switch (status) {
	case 401: return BM_EUNAUTH;
	case 403: return BM_EFORBIDDEN;
	case 404: return BM_ENOENT;
	case 413: return BM_ETOOBIG;
	case 429: return BM_ERATE;
	case 503: return BM_EUNAVAIL;
	default: return BM_EPROTO;
	}
}

int bm_http_parse_response(const char *buf, size_t len, const char *key,
			   struct bm_http_response *resp)
{
	struct bm_http_slice upgrade = { 0 }, conn = { 0 }, accept = { 0 };
	size_t end, pos, nhdr = 0, clen = 0;
	int have_clen = 0;
	const char *le;

	memset(resp, 0, sizeof(*resp));
	end = head_end(buf, len > BM_HTTP_MAX_HEAD ? BM_HTTP_MAX_HEAD : len, NULL);
	if (!end)
		return len >= BM_HTTP_MAX_HEAD ? BM_EPROTO : BM_EAGAIN;
	le = memmem(buf, end, "\r\n", 2);
	/* "HTTP/1.1 101 Switching Protocols" */
	if (le - buf < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ' ||
	    buf[9] < '1' || buf[9] > '5' || buf[10] < '0' || buf[10] > '9' ||
	    buf[11] < '0' || buf[11] > '9' || (le - buf > 12 && buf[12] != ' '))
		return BM_EPROTO;
	resp->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
	if (le - buf > 13)
		slice(&resp->reason_phrase, buf + 13, (size_t)(le - buf - 13));
	pos = (size_t)(le - buf) + 2;
	while (pos < end - 2) {
		const char *l = buf + pos, *colon, *v, *ve;
		size_t ln, nn;

		le = memmem(l, end - pos, "\r\n", 2);
		ln = (size_t)(le - l);
		pos += ln + 2;
		if (++nhdr > 2 * BM_HTTP_MAX_HEADERS)
			return BM_EPROTO;
		colon = memchr(l, ':', ln);
		if (!colon)
			return BM_EPROTO;
		nn = (size_t)(colon - l);
		v = colon + 1;
		ve = le;
		while (v < ve && is_ows(*v))
			v++;
		while (ve > v && is_ows(ve[-1]))
			ve--;
		if (ieq(l, nn, "upgrade"))
			slice(&upgrade, v, (size_t)(ve - v));
		else if (ieq(l, nn, "connection"))
			slice(&conn, v, (size_t)(ve - v));
		else if (ieq(l, nn, "sec-websocket-accept"))
			slice(&accept, v, (size_t)(ve - v));
		else if (ieq(l, nn, "www-authenticate"))
			slice(&resp->www_authenticate, v, (size_t)(ve - v));
		else if (ieq(l, nn, "content-length")) {
			clen = 0;
			have_clen = ve > v;
			for (const char *c = v; c < ve; c++) {
				if (*c < '0' || *c > '9' || clen > BM_HTTP_MAX_HEAD)
					return BM_EPROTO;
				clen = clen * 10 + (size_t)(*c - '0');
			}
		}
	}

	if (resp->status == 101) {
		char want[BM_HTTP_ACCEPT_LEN + 1];

		resp->head_len = end;
		if (!upgrade.p || !list_has(upgrade.p, upgrade.len, "websocket") ||
		    !conn.p || !list_has(conn.p, conn.len, "upgrade") || !accept.p)
			return BM_EPROTO;
		if (!key || bm_http_accept_key(key, strlen(key), want) ||
		    accept.len != BM_HTTP_ACCEPT_LEN ||
		    memcmp(accept.p, want, BM_HTTP_ACCEPT_LEN) != 0)
			return BM_EPROTO;
		return 0;
	}
	if (have_clen && end + clen <= BM_HTTP_MAX_HEAD) {
		if (len < end + clen)
			return BM_EAGAIN;
		slice(&resp->body, buf + end, clen);
	} else {
		size_t avail = len - end;

		if (have_clen && avail > clen)
			avail = clen;
		slice(&resp->body, buf + end, avail);
	}
	resp->head_len = end + resp->body.len;
	return status_err(resp->status);
}

char *bm_http_response_message(const struct bm_http_response *resp,
			       char *out, size_t cap)
{
	const char *t = resp->body.p;
	size_t n = resp->body.len, i = 0;

	if (!cap)
		return out;
	while (i < n && t[i] != '\n' && t[i] != '\r')
		i++;
	while (i > 0 && is_ows(t[i - 1]))
		i--;
	if (i == 0) {
		t = resp->reason_phrase.p;
		i = resp->reason_phrase.len;
	}
	if (!t || !i) {
		t = bm_http_status_text(resp->status);
		i = strlen(t);
	}
	snprintf(out, cap, "%d: %.*s", resp->status, (int)(i > 512 ? 512 : i), t);
	for (char *c = out; *c; c++)
		if ((unsigned char)*c < 0x20)
			*c = ' ';
	return out;
}
