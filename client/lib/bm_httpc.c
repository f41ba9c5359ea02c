#include "bm_httpc.h"

#include "bm_buf.h"
#include "bm_err.h"
#include "bm_time.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dial(const char *hostport)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res, *ai;
	char host[256];
	const char *colon = strrchr(hostport, ':');
	int fd = -1;

	if (!colon || (size_t)(colon - hostport) >= sizeof(host))
		return BM_EINVAL;
	snprintf(host, sizeof(host), "%.*s", (int)(colon - hostport), hostport);
	if (getaddrinfo(host, colon + 1, &hints, &res))
		return BM_EINVAL;
	for (ai = res; ai && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == -1) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	return fd < 0 ? BM_EUNAVAIL : fd;
}

int bm_httpc_request(const char *hostport, const char *method, const char *path,
		     const char *key, const char *body, char *out, size_t cap,
		     int timeout_ms)
{
	struct bm_buf req = BM_BUF_INIT, resp = BM_BUF_INIT;
	uint64_t deadline = bm_mono_ms() + (uint64_t)timeout_ms;
	int fd = dial(hostport), status = BM_EPROTO;
	const char *p;

	if (fd < 0)
		return fd;
	bm_buf_addf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method,
		    path, hostport);
	if (key)
		bm_buf_addf(&req, "Authorization: Bearer %s\r\n", key);
	bm_buf_addf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
		    body ? strlen(body) : 0, body ? body : "");
	if (write(fd, req.data, req.len) != (ssize_t)req.len) {
		status = BM_EIO;
		goto out;
	}
	for (;;) {
		struct pollfd pf = { fd, POLLIN, 0 };
		uint64_t now = bm_mono_ms();
		ssize_t r;
		if (now >= deadline || poll(&pf, 1, (int)(deadline - now)) <= 0) {
			status = BM_ETIMEDOUT;
			goto out;
		}
		if (bm_buf_grow(&resp, 4096)) {
			status = BM_ENOMEM;
			goto out;
		}
		r = read(fd, resp.data + resp.len, 4096);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		resp.len += (size_t)r;
		resp.data[resp.len] = 0;
	}
	if (!resp.data || sscanf((char *)resp.data, "HTTP/1.%*d %d", &status) != 1) {
		status = BM_EPROTO;
		goto out;
	}
	p = strstr((char *)resp.data, "\r\n\r\n");
	if (out && cap)
		snprintf(out, cap, "%s", p ? p + 4 : "");
out:
	close(fd);
	bm_buf_release(&req);
	bm_buf_release(&resp);
	return status;
}

char *bm_httpc_token(const char *hostport, const char *key, const char *eid,
		     const char *device, int ttl_s, int timeout_ms, char *err,
		     size_t errlen)
{
	static char out[8192];
	json_t *req = json_pack("{s:s, s:s}", "eid", eid, "device", device), *r;
	char *body, *tok = NULL;
	int st;

	if (req && ttl_s > 0)
		json_object_set_new(req, "ttl", json_integer(ttl_s));
	body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!body) {
		snprintf(err, errlen, "cannot build the request (is the eid valid UTF-8?)");
		return NULL;
	}
	st = bm_httpc_request(hostport, "POST", "/v1/tokens", key, body, out, sizeof(out),
			      timeout_ms);
	free(body);
	if (st != 200) {
		snprintf(err, errlen, "%s%d %.200s", st < 0 ? "error " : "HTTP ", st,
			 st < 0 ? bm_strerror(st) : out);
		return NULL;
	}
	r = json_loads(out, 0, NULL);
	if (r && json_string_value(json_object_get(r, "token")))
		tok = strdup(json_string_value(json_object_get(r, "token")));
	else
		snprintf(err, errlen, "no token in the answer");
	json_decref(r);
	return tok;
}

int bm_httpc_read_key(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "r");
	int ok;

	if (!f)
		return -1;
	ok = fgets(buf, (int)cap, f) != NULL;
	fclose(f);
	if (!ok)
		return -1;
	buf[strcspn(buf, "\r\n")] = 0;
	return buf[0] ? 0 : -1;
}
