/*
 * bm_swim_udp.h - UDP transport and timer for a struct bm_swim on a
 * libevent 2.1 event_base.
 *
 * Gossip addresses are "host:port" (IPv4 dotted quad or [IPv6]:port, no name
 * resolution: the daemon resolves names once at start).  Typical use:
 *
 *   struct bm_swim_udp *u;
 *   bm_swim_udp_open(&u, base, "0.0.0.0:7946");        // or "127.0.0.1:0"
 *   snprintf(addr, sizeof(addr), "10.0.0.5:%u", bm_swim_udp_port(u));
 *   cfg.addr = addr; cfg.send = bm_swim_udp_send; cfg.send_ctx = u;
 *   bm_swim_new(&swim, &cfg);
 *   bm_swim_udp_start(u, swim, 50);                     // recv + tick
 *   bm_swim_join(swim, "10.0.0.1:7946", bm_mono_ms());
 *   event_base_dispatch(base);
 *   ...
 *   bm_swim_udp_close(u); bm_swim_free(swim);           // this order
 *
 * Time given to bm_swim is bm_mono_ms().
 */
#ifndef BM_SWIM_UDP_H
#define BM_SWIM_UDP_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct bm_swim;
struct bm_swim_udp;

/* Binds a non-blocking UDP socket to bind_addr ("host:port", port 0 picks a
 * free one).  Returns 0, BM_EINVAL (address), BM_ESYS (socket/bind; logged),
 * BM_ENOMEM. */
int bm_swim_udp_open(struct bm_swim_udp **out, struct event_base *base,
		     const char *bind_addr);
/* The bound port (useful after binding port 0). */
unsigned bm_swim_udp_port(const struct bm_swim_udp *u);
/* bm_swim_send_fn for cfg.send, with ctx = the struct bm_swim_udp. */
int bm_swim_udp_send(void *ctx, const char *addr, const uint8_t *buf, size_t len);
/* Starts delivering datagrams to swim and ticking it every tick_ms
 * (0 = 50).  swim is borrowed and must outlive the transport's use of it
 * (close the transport first).  Returns 0 or BM_ENOMEM. */
int bm_swim_udp_start(struct bm_swim_udp *u, struct bm_swim *swim, unsigned tick_ms);
/* Stops events and closes the socket; NULL is fine. */
void bm_swim_udp_close(struct bm_swim_udp *u);

/* Parses "a.b.c.d:port" or "[v6]:port" into a sockaddr (at most len bytes);
 * returns the address length or BM_EINVAL. */
struct sockaddr;
int bm_swim_udp_parse(const char *addr, struct sockaddr *sa, size_t len);

#endif
