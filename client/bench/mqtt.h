/*
 * mqtt.h - a minimal MQTT 3.1.1 client for bimip-bench's peer comparison
 * (bimip-bench pairs --mqtt): CONNECT, SUBSCRIBE (QoS 0/1), PUBLISH (QoS
 * 0/1), PUBACK.  Plain TCP only, no will, no auth, no QoS 2, clean session.
 *
 * Wire format (MQTT 3.1.1, OASIS standard, section 2): every control packet
 * is a fixed header byte (type << 4 | flags), a "remaining length" in 1-4
 * bytes of 7 bits each (least significant first, bit 7 = more), then the
 * variable header and payload.  Strings are a 16-bit big-endian length and
 * the bytes.  Packets used here:
 *
 *   CONNECT   0x10  "MQTT" level 4, flags 0x02 (clean session), keepalive,
 *                   client id
 *   CONNACK   0x20  2 bytes: session present, return code (0 = accepted)
 *   PUBLISH   0x30 | qos << 1   topic, [packet id if qos > 0], payload
 *   PUBACK    0x40  packet id
 *   SUBSCRIBE 0x82  packet id, topic, requested qos
 *   SUBACK    0x90  packet id, granted qos (0x80 = failure)
 *
 * One struct mqtt is one connection, used by one thread; it fits a poll()
 * loop like libbimip-client: mqtt_fd() for readiness and mqtt_next(m, ev)
 * to take the packets already received (it reads once when its buffer holds
 * no complete packet, and after a read that left the socket empty it says
 * BM_EAGAIN once without reading).  An incoming QoS 1 PUBLISH is acknowledged (PUBACK)
 * by mqtt_next before it is returned.
 */
#ifndef BENCH_MQTT_H
#define BENCH_MQTT_H

#include <stddef.h>
#include <stdint.h>

struct mqtt;

enum mqtt_ev_type {
	MQTT_EV_CONNACK = 2,   /* qos holds the return code */
	MQTT_EV_PUBLISH = 3,   /* topic/payload point into the client's buffer,
				  valid until the next call */
	MQTT_EV_PUBACK = 4,
	MQTT_EV_SUBACK = 9,
	MQTT_EV_OTHER = 0,
};

struct mqtt_ev {
	enum mqtt_ev_type type;
	uint16_t packet_id;
	int qos;
	const char *topic;
	size_t topic_len;
	const uint8_t *payload;
	size_t payload_len;
};

/* Connect to host:port (numeric IPv4), optionally from local_addr, send
 * CONNECT with client_id and wait for CONNACK within timeout_ms.  Returns 0
 * (*out set), BM_EUNAVAIL (connect failed), BM_EFORBIDDEN (CONNACK refused),
 * BM_ETIMEDOUT, BM_EIO or BM_ENOMEM, with err describing it. */
int mqtt_connect(struct mqtt **out, const char *host, int port, const char *local_addr,
		 const char *client_id, int timeout_ms, char *err, size_t errlen);
/* The CONNECT packet mqtt_connect sends, for client_id (at most 200 bytes
 * of it are used).  Returns its length. */
#define MQTT_CONNECT_MAX 320
size_t mqtt_connect_packet(uint8_t out[MQTT_CONNECT_MAX], const char *client_id);
/* Subscribe to one topic filter and wait for its SUBACK.  Returns 0,
 * BM_EFORBIDDEN (refused), BM_ETIMEDOUT or BM_EIO. */
int mqtt_subscribe(struct mqtt *m, const char *topic, int qos, int timeout_ms);
/* Send a PUBLISH; qos 1 uses packet id (1..65535).  Blocks up to 5 s when
 * the socket is full.  Returns 0, BM_ETOOBIG, BM_ETIMEDOUT or BM_EIO. */
int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len,
		 int qos, uint16_t packet_id);
/* Next packet into *ev without waiting.  Returns 0, BM_EAGAIN (nothing
 * complete), BM_ECLOSED (peer closed) or BM_EIO / BM_EDECODE (broken
 * stream). */
int mqtt_next(struct mqtt *m, struct mqtt_ev *ev);
/* Between these, PUBLISHes and PUBACKs are gathered and written at uncork
 * in one write (as a client does with what it has queued).  Returns 0 or a
 * write error. */
void mqtt_cork(struct mqtt *m);
int mqtt_uncork(struct mqtt *m);
int mqtt_fd(const struct mqtt *m);
/* Send DISCONNECT, close and free.  NULL is a no-op. */
void mqtt_close(struct mqtt *m);

#endif
