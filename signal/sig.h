/*
 * sig.h - bimip-signal: the stateless edge.
 *
 *   main.c   configuration, start-up, signals, the ready file
 *   sess.c   client sessions: accept, HTTP upgrade + token, WebSocket frames,
 *            limits, idle and keepalive, writing
 *   link.c   ZeroMQ DEALERs to the servers: HELLO, keys, revocations,
 *            forwarding stanzas, pushes back to sessions
 *   auth.c   token verification with the servers' keys and revocations
 *
 * Memory per idle plain session: struct sig_sess (embedded libevent event and
 * 32-byte WebSocket parser) plus its eid/device strings and one slot of the
 * session map; no buffer is held while idle: reads go through one buffer
 * per process, and only a partial frame or unsent output allocate, bounded.
 */
#ifndef SIG_H
#define SIG_H

#include <event2/event_struct.h>
#include <stdint.h>

#include "bm_buf.h"
#include "bm_cluster.h"
#include "bm_jwt.h"
#include "bm_map.h"
#include "bm_uring.h"
#include "bm_ws.h"

struct bm_zsock;
struct bm_tls;
struct bm_tls_config;
struct bm_admin;
struct bm_metrics;
struct bm_metrics_family;

struct sig_config {
	char node_id[65];
	char ws_listen[64];
	char wss_listen[64];
	char tls_cert[256];
	char tls_key[256];
	char admin_listen[64];
	char admin_key[129];
	char servers[16][128];        /* ZeroMQ endpoints of the servers */
	char curve_server_public[41];
	char curve_public[41];
	char curve_secret[41];
	int64_t max_sessions;
	int64_t max_message;          /* bytes of one WebSocket message */
	int64_t max_output;           /* bytes queued to one client: slow consumer */
	int64_t rate;                 /* stanzas per second per session */
	int64_t burst;
	int64_t idle_ms;              /* close after this long without traffic */
	int64_t ping_ms;              /* WebSocket ping after this long idle */
	int64_t handshake_ms;
	int64_t write_ms;             /* output stuck this long: slow consumer */
	int64_t leeway_ms;
	int close_expired;
	int64_t drain_ms;             /* SIGTERM: time to flush before exit */
	struct bm_cluster_conf cluster;
	int log_level;
	int log_json;
};

enum sig_state {
	SIG_HANDSHAKE = 0,
	SIG_OPEN,
	SIG_CLOSING,                  /* close frame queued: flush, then close */
	SIG_DEAD,                     /* reaped at the end of the loop turn */
};

struct sig_sess {
	struct event ev;              /* read (and write while output waits) */
	struct sig_sess *lru_prev, *lru_next;   /* by last activity */
	struct sig_sess *reap_next;
	struct bm_ws_parser ws;
	struct bm_tls *tls;           /* NULL for ws:// */
	uint8_t *in;                  /* partial input; NULL when none */
	uint32_t in_len, in_cap;
	uint8_t *out;                 /* unsent output; NULL when none */
	uint32_t out_len, out_cap, out_off;
	uint32_t tls_wlen;            /* length of a TLS write to retry as is */
	uint8_t *msg;                 /* fragmented message being reassembled */
	uint32_t msg_len;
	uint64_t id;
	char *key;                    /* "eid\x1fdevice" (the map's key) */
	const char *eid, *device;     /* into key_buf */
	char *key_buf;                /* "eid\0device\0jti" */
	const char *jti;
	int64_t iat, exp;
	uint32_t last_ms;             /* last traffic, loop ms clock */
	uint32_t out_ms;              /* output queued since, or last progress */
	float tokens;                 /* rate limit bucket */
	uint32_t tokens_ms;
	uint16_t refusals;            /* consecutive rate refusals */
	int fd;
	uint8_t state;
	uint8_t pinged;
	uint8_t wants_write;
	uint8_t registered;           /* in the session map */
	uint8_t srv;                  /* index of the owning server link */
	uint8_t corked;               /* output waits for the end of the turn */
	uint8_t read_queued;          /* in readq: read at the end of the turn */
};

struct sig_idslot {
	uint64_t id;                  /* 0 = empty */
	struct sig_sess *s;
};

struct sig_idtab {
	struct sig_idslot *slots;
	size_t cap, count;
};

struct sig_server {
	char endpoint[128];
	char node[65];                /* from WELCOME */
	uint64_t node_hash;           /* bm_hash64(node), for owner_of */
	char boot[40];
	struct bm_zsock *z;
	int up;                       /* WELCOME seen */
	int member;                   /* node id known (gossip or WELCOME): in the
					 owner set until it leaves */
	int left;                     /* gossip says it left the cluster */
	uint64_t last_welcome_ms;
};

struct sig_metrics {
	struct bm_metrics *reg;
	uint64_t n_sessions;
	uint64_t *accepted, *refused_auth, *refused_full, *closed;
	uint64_t *stanzas_in, *stanzas_out, *pings, *rate_limited, *slow_consumers;
	uint64_t *too_big, *bad_frames, *forward_fail;
	uint64_t *uring_runs, *uring_ops;
	struct bm_metrics_family *errors, *close_codes;
};

struct sig {
	struct sig_config cfg;
	const char *config_path;
	struct event_base *base;
	struct evconnlistener *ws_listener, *wss_listener;
	char ws_bound[64], wss_bound[64];
	char admin_addr[200];         /* advertised admin host:port */
	struct bm_tls_config *tls;
	struct bm_admin *admin;
	struct bm_cluster *cluster;   /* NULL when cluster.bind is empty */
	void *zctx;
	struct sig_server servers[16];
	int n_servers;
	char boot_id[33];             /* told to servers in HELLO */
	struct event *tick;
	struct event *reap_ev;

	struct bm_jwt_keyring *ring;  /* union of every server's keys */
	struct bm_map revoked_jti;    /* jti -> exp */
	struct bm_map revoked_before; /* eid[\x1fdevice] -> s */

	struct bm_map sessions;       /* "eid\x1fdevice" -> struct sig_sess */
	struct sig_idtab by_id;       /* session id -> every live connection */
	uint64_t n_live;              /* every accepted connection */
	uint64_t next_id;
	struct sig_sess *lru_head, *lru_tail;
	struct sig_sess *reap;
	/* Sessions whose output is written once at the end of the loop turn
	 * (by id: a session may be reaped before), so the pushes of one ZeroMQ
	 * batch cost one write per session, not one per stanza. */
	uint64_t *corked;
	size_t n_corked, corked_cap;
	struct event *flush_ev;
	struct bm_uring uring;        /* writes the corked sessions and reads the
					 readable ones; fd -1: none */
	/* Sessions epoll found readable, read together at the end of the
	 * turn (by id), each into its slice of rdbuf. */
	uint64_t *readq;
	size_t n_readq, readq_cap;
	struct event *read_ev;
	uint8_t *rdbuf;
	uint8_t *rbuf;                /* shared read buffer */
	size_t rbuf_cap;
	int stopping;
	uint64_t stop_deadline;

	struct sig_metrics m;
};

extern struct sig *sig_global;

/* sess.c */
int sig_sess_listen(struct sig *g);
void sig_sess_stop_listening(struct sig *g);
void sig_sess_tick(struct sig *g);
/* Write a MessageScheme (already encoded) to a session as a binary frame,
 * after what was queued before; the bytes go to the socket at the end of
 * the loop turn with everything else queued for the session meanwhile. */
int sig_sess_send(struct sig *g, struct sig_sess *s, const uint8_t *p, size_t n);
void sig_sess_close(struct sig *g, struct sig_sess *s, int code, const char *reason);
struct sig_sess *sig_sess_find(struct sig *g, const char *eid, const char *device);
void sig_sess_close_all(struct sig *g, int code, const char *reason);
void sig_sess_reap(struct sig *g);
/* Write every session's corked output now (also run at the end of each
 * loop turn that corked some). */
void sig_sess_flush(struct sig *g);
/* Every few seconds: close sessions whose token expired (when configured)
 * and sessions whose output made no progress for timeouts.write. */
void sig_sess_expire(struct sig *g);
/* Close every session a revocation now covers. */
void sig_sess_enforce_revocations(struct sig *g);

/* idtab.c */
int sig_idtab_put(struct sig_idtab *t, uint64_t id, struct sig_sess *s);
struct sig_sess *sig_idtab_get(const struct sig_idtab *t, uint64_t id);
void sig_idtab_del(struct sig_idtab *t, uint64_t id);
void sig_idtab_release(struct sig_idtab *t);

/* link.c */
int sig_link_open(struct sig *g);
void sig_link_close(struct sig *g);
int sig_link_ready(struct sig *g);
int sig_link_session_open(struct sig *g, struct sig_sess *s);
void sig_link_session_close(struct sig *g, struct sig_sess *s);
int sig_link_stanza(struct sig *g, struct sig_sess *s, const uint8_t *p, size_t n);
void sig_link_tick(struct sig *g);
/* Connect to a server endpoint learnt from gossip (no-op when known). */
int sig_link_add_server(struct sig *g, const char *endpoint);
/* Gossip: server node is at endpoint, or left the cluster. */
void sig_link_member(struct sig *g, const char *node, const char *endpoint, int left);

/* auth.c */
int sig_auth_verify(struct sig *g, const char *tok, size_t len,
		    struct bm_jwt_claims *c, const char **why);
int sig_auth_revoked(struct sig *g, const char *eid, const char *device,
		     const char *jti, int64_t iat);
int sig_auth_set_keys(struct sig *g, const char *json, size_t n);
int sig_auth_apply_revocations(struct sig *g, const char *json, size_t n);
void sig_auth_release(struct sig *g);

/* admin (in main.c) */
int sig_admin_open(struct sig *g);

#endif
