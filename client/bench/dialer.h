/*
 * dialer.h - many opening handshakes in flight from one process, for
 * `bimip-bench connections`: plain TCP connects on one epoll, each sending
 * a request built beforehand (a WebSocket upgrade or an MQTT CONNECT) and
 * waiting for its answer (a valid 101, checked with bm_http_parse_response,
 * or a CONNACK with return code 0).
 *
 * Why not libbimip-client: its blocking connect sleeps once per connection
 * and holds an 80 KB read buffer per client, so a load generator on one
 * core made of them costs more CPU per connection than the edge it
 * measures.  Here a connection costs socket, bind, connect, write, one
 * epoll_ctl and a read, and an established one is only its descriptor
 * (left in the epoll set, disarmed: EPOLLONESHOT).
 *
 * Plain TCP only (ws://, MQTT without TLS); the caller uses
 * libbimip-client for wss://.
 */
#ifndef BENCH_DIALER_H
#define BENCH_DIALER_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "bm_http.h"

enum dial_kind {
	DIAL_WS = 0,     /* answer: HTTP 101 with the Sec-WebSocket-Accept of key */
	DIAL_MQTT = 1,   /* answer: CONNACK, return code 0 */
};

struct dial_job {
	char *req;                        /* request bytes (malloc'd, freed by the caller) */
	size_t req_len;
	char key[BM_HTTP_KEY_LEN + 1];    /* DIAL_WS: the Sec-WebSocket-Key in req */
	struct sockaddr_in src;           /* local address (port 0); sin_family 0: any */
	int fd;                           /* after dial_run: the connection, or -1 */
};

struct dial_result {
	int ok, failed;
	char err[160];                    /* the first failure */
};

/* Connect every job to dst, at most inflight (>= 1) handshakes at a time,
 * each failing after timeout_ms; stops starting new ones after 10 failures.
 * Established connections stay open in jobs[i].fd for the caller to hold or
 * close.  Returns 0, or BM_ESYS when epoll itself failed. */
int dial_run(enum dial_kind kind, const struct sockaddr_in *dst, struct dial_job *jobs,
	     int n, int inflight, int timeout_ms, struct dial_result *res);

#endif
