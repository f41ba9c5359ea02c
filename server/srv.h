/*
 * srv.h - bimip-server: the authoritative control plane.
 *
 * One process, one libevent loop, one thread (plus BimipQueue's sync
 * thread).  The pieces:
 *   main.c     configuration, start-up, signals, the ready file
 *   link.c     ZeroMQ ROUTER towards the signals: HELLO/WELCOME, keys,
 *              revocations, session open/close, stanzas in, pushes out
 *   state.c    users, contacts, blocks, chats, idempotency, revocations;
 *              persisted as records of the "__state" stream and rebuilt at
 *              start by replaying it
 *   routes.c   one handler per client route (the table at its end)
 *   pump.c     ordered, flow-controlled delivery of each user's stream to
 *              each online device: replay after the committed offset and live
 *              pushes are the same code
 *   admin.c    the admin HTTP API and /metrics
 *
 * Stream record format (payload of every record in a user stream, "u:<eid>"):
 *
 *   byte 0      record version (1)
 *   byte 1      kind: 0 = plain stanza, 1 = sender copy of a chat message
 *   byte 2      n = length of the origin device id (0..64)
 *   3..3+n      origin device id (the device whose request produced it)
 *   3+n..       the MessageScheme bytes as pushed (offset field unset)
 *
 * A kind-1 record is shown to its origin device as the VersionUpdate of its
 * own message and to the sender's other devices as the ChatMessage itself,
 * at the same offset, so every device sees every offset exactly once, in
 * order, and can commit it.
 */
#ifndef SRV_H
#define SRV_H

#include <jansson.h>
#include <stdint.h>

#include "bimip.pb.h"
#include "bm_buf.h"
#include "bm_cluster.h"
#include "bm_ipc.h"
#include "bm_jwt.h"
#include "bm_map.h"
#include "bm_keyring.h"

struct event_base;
struct event;
struct bm_queue;
struct bm_zsock;
struct bm_admin;
struct bm_metrics;
struct bm_metrics_family;

#define SRV_EID_MAX 128
#define SRV_DEV_MAX 64
#define SRV_CHAT_ID_LEN 32           /* hex digits */
#define SRV_MSGID_MAX 64

#define SRV_REC_PLAIN 0
#define SRV_REC_SENDER_COPY 1

struct srv_config {
	char node_id[65];
	char data_dir[512];
	char zmq_listen[128];
	char admin_listen[64];
	char admin_key[129];
	int token_alg;               /* 0 = RS256, 1 = ES256 */
	int64_t token_ttl_ms;
	int64_t token_leeway_ms;
	int64_t refresh_grace_ms;
	int fsync;                   /* 0 always, 1 group, 2 none */
	int64_t group_window_ms;
	int64_t group_bytes;
	int64_t segment_bytes;
	int64_t retention_ms;
	int64_t retention_bytes;
	int64_t window;              /* max stanzas in flight per device */
	int64_t max_contacts;
	int64_t idem_max;            /* remembered (device, message_id_local) */
	int64_t awareness_min_interval_ms;
	int64_t sync_max;            /* cap of SyncRequest.limit */
	int64_t snapshot_every;      /* state records between snapshots */
	int64_t snapshot_interval_ms;/* and at least this long between them */
	int64_t cache_records;       /* per online user, records kept for delivery */
	int64_t handoff_window;      /* hand-off messages unanswered at most */
	int64_t handoff_batch;       /* stream records per hand-off message */
	int log_level;
	int log_json;
	char curve_secret[41];
	char curve_allowed[8][41];
	struct bm_cluster_conf cluster;
};

/* An online device session, as the signal announced it. */
struct srv_dev {
	struct srv_dev *next;        /* in its user's list */
	struct srv_user *user;
	char device[SRV_DEV_MAX + 1];
	char jti[65];
	uint8_t rid[BM_IPC_ORIGIN_MAX];   /* routing id of the signal */
	uint8_t rid_len;
	uint64_t session;            /* signal-local session id */
	uint64_t sent;               /* highest offset pushed */
	uint64_t committed;          /* highest offset the device committed */
	int pumping;                 /* a read of the stream is under way */
};

/* Records appended while the user had devices online, kept until every
 * online device has been sent past them, so live delivery does not read
 * back from the log what it just wrote.  Offsets increase along the ring. */
struct srv_cached {
	uint64_t offset;
	uint32_t len, alt_len;
	uint8_t *rec;                /* the stream record, header included */
	uint8_t *alt;                /* sender copy: the origin device's
					VersionUpdate, encoded; else NULL */
};

struct srv_cache {
	struct srv_cached *slot;
	uint32_t head, count, cap;
};

struct srv_user {
	char eid[SRV_EID_MAX + 1];
	struct srv_cache cache;
	struct bm_map subscribers;   /* eid -> (void *)1: may see my awareness */
	struct bm_map blocked;       /* eid -> (void *)1 */
	struct srv_dev *devs;
	unsigned n_devs;
	uint64_t durable;            /* stream head whose append completed */
	int64_t last_seen;           /* ms; 0 = never */
	int32_t status;              /* awareness status (docs/protocol.md) */
	int32_t intention;
	double lat, lon;
	int64_t last_notify_ms;      /* awareness rate limit */
	uint64_t ref_offset;         /* highest stream offset a state record names */
	int seen_loaded;             /* recent message ids of the stream indexed */
	int gone;                    /* handed to its new owner, which took it:
					this copy is stale and not handed again
					(handoff.c; cleared when it comes back) */
	int pump_queued;             /* in srv.pump_next: appends completed */
	struct srv_user *pump_next;
};

struct srv_chat {
	char id[SRV_CHAT_ID_LEN + 1];
	char a[SRV_EID_MAX + 1];     /* a < b */
	char b[SRV_EID_MAX + 1];
	int64_t version;             /* last assigned */
};

/* Key bytes per resend key the arena holds on average ("eid\x1fdevice\x1f
 * local" and a NUL): longer keys on average make the ring forget sooner
 * than limits.resend_memory keys. */
#define SRV_IDEM_KEY_BYTES 96

/* What a (sender, device, message_id_local) was answered with: the value
 * of its key "eid\x1fdevice\x1flocal" in s->idem. */
struct srv_idem {
	int64_t version;
	int8_t durable;              /* 1 durable, 0 being stored, -1 refused */
	char chat_id[SRV_CHAT_ID_LEN + 1];
};

/* Another bimip-server, as gossip tells (server/peer.c). */
struct srv_peer {
	char id[65];
	char zmq[160];
	char admin[64];              /* its admin API, from gossip */
	int state;                   /* enum bm_swim_state */
	int self;
	uint64_t hash;               /* bm_hash64(id), for rendezvous scores */
	struct bm_zsock *z;          /* DEALER to its ROUTER; NULL for self */
	int batch;                   /* z sends batch frames (it said it reads them) */
	uint64_t welcomed_ms;        /* when we last told it we read batches */
};

#define SRV_PEERS_MAX 32

/* A chat message whose copies live on other servers, logged ("pm") before
 * they are asked for and driven until both are durable (server/peer.c). */
struct srv_pending {
	char key[SRV_MSGID_MAX];     /* message id: chat.version */
	char chat[SRV_CHAT_ID_LEN + 1];
	char sender[SRV_EID_MAX + 1], receiver[SRV_EID_MAX + 1];
	char dev[SRV_DEV_MAX + 1];
	char local[80];
	int64_t version;
	uint8_t rid[BM_IPC_ORIGIN_MAX];   /* the sending session, for errors */
	uint8_t rid_len;
	uint64_t session;
	int64_t route;
	uint8_t *core;               /* the ChatMessage without author/ack */
	size_t core_len;
	int stage;                   /* 0 receiver copy, 1 sender copy, 2 done */
	int inflight;
	uint64_t retry_ms;           /* monotonic: when to try again */
	unsigned tries;
};

struct srv_metrics {
	struct bm_metrics *reg;
	uint64_t *sessions, n_sessions;
	uint64_t *stanzas_in, *stanzas_out, *chats, *acks, *dup_resends;
	uint64_t *appends, *ipc_dropped, *push_failed;
	uint64_t *forwarded, *remote_appends, *remote_dups, *pending_retries;
	uint64_t *handoff_users, *handoff_records, *handoff_conflicts;
	struct bm_metrics_family *by_route, *errors;
	/* by_route's counters for routes 0..SRV_ROUTE_CACHE-1, found on first
	 * use: the family lookup formats and compares a label. */
#define SRV_ROUTE_CACHE 64
	uint64_t *route_count[SRV_ROUTE_CACHE];
	struct bm_metrics_hist *fsync;
	struct bm_metrics_hist *chat_commit;
};

struct srv {
	struct srv_config cfg;
	const char *config_path;
	struct event_base *base;
	void *zctx;
	struct bm_zsock *router;
	char zmq_bound[128];
	struct bm_queue *q;
	struct event *q_ev;
	struct event *tick;
	struct event *uncork_ev;          /* end of a turn that appended: wake the sync */
	int q_corked;
	struct bm_admin *admin;
	struct bm_cluster *cluster;       /* NULL when cluster.bind is empty */
	struct bm_jwt_key *key;           /* signing key */
	struct bm_jwt_keyring *ring;      /* verification keys */
	struct bm_buf keys_json;          /* KEYS body for signals */
	char boot_id[33];

	struct bm_map users;              /* eid -> struct srv_user */
	struct bm_map chats;              /* chat id -> struct srv_chat */
	struct bm_map chat_pairs;         /* "lo\x1fhi" eids -> the same chats */
	struct bm_keyring idem;           /* resend keys, a bounded FIFO of srv_idem */
	struct bm_map revoked_jti;        /* jti -> (void *)(intptr_t)exp */
	struct bm_map revoked_before;     /* "eid" or "eid\x1fdevice" -> iat bound */
	struct bm_map signals;            /* signal node id -> its boot id (strdup) */
	int replaying;                    /* state rebuild: no side effects */
	int pump_stalled;                 /* a push met a full queue: retry */
	struct srv_user *pump_list;       /* users to pump at the end of the turn */
	struct event *pump_ev;
	uint64_t snap_records;            /* state records since the snapshot */
	int snap_pid;                     /* background snapshot writer, or 0 */
	uint64_t snap_offset;
	uint64_t snap_last_ms;            /* when the last snapshot started */
	int stopping;
	uint64_t msg_seq;

	/* cluster (peer.c, handoff.c) */
	struct srv_peer peers[SRV_PEERS_MAX];
	int n_peers;                      /* 0: standalone, this node owns all */
	struct bm_map rpcs;               /* seq -> struct srv_rpc */
	uint64_t rpc_seq;
	struct bm_map pending;            /* message id -> struct srv_pending */
	struct bm_map seen;               /* "eid\x1fmessage id" -> offset */
	char **seen_ring;
	size_t seen_head, seen_count;
	struct bm_map settled_by;         /* peer id -> fingerprint it is SETTLED for */
	uint64_t sweep_fp, swept_fp;      /* owner set swept for / done for */
	struct bm_map handoff_wait;       /* HANDOFFs not yet answered: their seq ->
					     state record (json_t *) to log once
					     taken, or json_null() */
	struct bm_map handoff_sent;       /* eid -> (records sent << 1 | user sent) + 1,
					     this round (a sweep resumes there) */
	int sweep_more;                   /* window was full: resume the sweep */
	int sweep_chats_done;             /* chats and pending sent this round */
	int handoff_failed;
	uint64_t sweep_retry_ms, settled_sent_ms, sweep_started_ms;
	int leaving;                      /* handing everything off, then exit */
	int left;
	int removed;                      /* removed by an operator: exit 78 */
	char admin_addr[200];             /* advertised admin host:port */

	struct srv_metrics m;
};

/* state.c */
/* snprintf(out, cap, "%s\x1f%s[\x1f%s]", a, b, c) without the formatting (map
 * keys on every message's path); c may be NULL.  cap >= 1.  Returns the
 * length written. */
size_t srv_join(char *out, size_t cap, const char *a, const char *b, const char *c);
int srv_state_open(struct srv *s);
void srv_state_close(struct srv *s);
struct srv_user *srv_user_get(struct srv *s, const char *eid, int create);
struct srv_chat *srv_chat_get(struct srv *s, const char *a, const char *b, int create);
struct srv_chat *srv_chat_find(struct srv *s, const char *chat_id);
void srv_chat_id(const char *a, const char *b, char out[SRV_CHAT_ID_LEN + 1]);
/* "<chat_id>.<version>": a message's id, also the key of a pending one;
 * as snprintf "%s.%lld" writes it, without the formatting (every message). */
void srv_message_id(char *dst, size_t cap, const char *chat, int64_t v);
struct srv_idem *srv_idem_find(struct srv *s, const char *eid, const char *dev,
			       const char *local);
/* A resend key built and hashed once, for a handler that prefetches, looks
 * up and adds the same key (h_chat). */
struct srv_idem_key {
	size_t len;
	uint64_t hash;
	char key[SRV_EID_MAX + SRV_DEV_MAX + 80];
};
void srv_idem_key(struct srv *s, struct srv_idem_key *k, const char *eid, const char *dev,
		  const char *local);
/* Start loading the lines the lookup and the add of k will read (see
 * bm_keyring_prefetch): early in a handler, before its other lookups. */
void srv_idem_prefetch(struct srv *s, const struct srv_idem_key *k);
struct srv_idem *srv_idem_find_key(struct srv *s, const struct srv_idem_key *k);
/* The entry for the key, made (durable 0) when it is new; a key already
 * known comes back as it is, chat and version unchanged.  NULL only for a
 * key past BM_KEYRING_KEY_MAX, which bounded names never make. */
struct srv_idem *srv_idem_add(struct srv *s, const char *eid, const char *dev,
			      const char *local, const char *chat_id, int64_t version);
/* A resend key split into its sender, device and message_id_local. */
int srv_idem_parts(const char *key, char eid[SRV_EID_MAX + 1],
		   char dev[SRV_DEV_MAX + 1], const char **local);
json_t *srv_map_keys(const struct bm_map *m);
/* A user's contacts, blocks and awareness as JSON {"subs","blk","seen",
 * "lat","lon","in"} (snapshot lines, hand-offs), and loaded back (replacing). */
json_t *srv_user_json(const struct srv_user *u);
void srv_user_load(struct srv_user *u, json_t *o);
/* Persist a state change (a JSON object, stolen) then apply it.  cb may be
 * NULL; it runs once the record is durable. */
typedef void srv_done_fn(void *ud, int status, uint64_t offset);
int srv_state_log(struct srv *s, void *json_obj, srv_done_fn *cb, void *ud);
/* Copies in to out escaped for a JSON string (no quotes; out needs 6x the
 * length); returns the end of what it wrote.  in must be valid UTF-8. */
char *srv_json_escape(char *out, const char *in);
/* The "msg" record of a chat message whose copies went to other servers
 * (formatted without jansson).
 * cb (not NULL) runs once the record is durable or the queue failed.
 * *idem (may be NULL) gets the message's resend key entry, or NULL when it
 * has none; it stays valid while its bm_keyring_seq >= s->idem.evicted. */
int srv_state_log_msg(struct srv *s, const struct srv_chat *c, int64_t v,
		      const char *sender, const char *dev, const char *local,
		      uint64_t ro, uint64_t so, srv_done_fn *cb, void *ud,
		      struct srv_idem **idem);
/* A chat message whose two copies were both appended here: applied in
 * memory (chat version, resend key, the streams' repair offsets) with no
 * state record of its own.  The copies carry everything the record would:
 * after a crash, srv_state_open's repair restores the version and the
 * resend key from them (state.c).  *idem as for srv_state_log_msg.  The
 * strings must be valid UTF-8 (snapshots are JSON).  Returns 0 or
 * BM_ENOMEM (the chat's version is taken even then). */
int srv_state_note_msg(struct srv *s, const struct srv_chat *c, int64_t v,
		       const char *sender, const char *dev, const char *local,
		       const struct srv_idem_key *k, uint64_t ro, uint64_t so,
		       struct srv_idem **idem);
/* Apply a state record (also used by the replay at start). */
int srv_state_apply(struct srv *s, void *json_obj);
int srv_revoked(struct srv *s, const char *eid, const char *device,
		const char *jti, int64_t iat);
int srv_revocations_json(struct srv *s, struct bm_buf *out);
/* Stream name of a user. */
void srv_stream_name(const char *eid, char *out, size_t cap);

/* snapshot.c */
int srv_snapshot_load(struct srv *s, uint64_t *state_offset);
int srv_snapshot_now(struct srv *s);
void srv_snapshot_maybe(struct srv *s);
void srv_snapshot_wait(struct srv *s);

/* link.c */
int srv_link_open(struct srv *s);
void srv_link_close(struct srv *s);
/* Send a MessageScheme to one device session; offset 0 = not stored. */
int srv_push(struct srv *s, struct srv_dev *d, bimip_MessageScheme *m, int64_t offset);
int srv_push_raw(struct srv *s, struct srv_dev *d, const uint8_t *p, size_t n,
		 int64_t offset);
/* Reply to the session a stanza came from; _raw with the envelope encoded. */
int srv_reply(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
	      bimip_MessageScheme *m);
int srv_reply_raw(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
		  const uint8_t *env, size_t n);
void srv_reply_error(struct srv *s, const uint8_t *rid, size_t rid_len,
		     uint64_t session, int code, int64_t route, const char *fmt, ...)
	__attribute__((format(printf, 7, 8)));
int srv_kick(struct srv *s, const uint8_t *rid, size_t rid_len, uint64_t session,
	     int code, const char *reason);
void srv_broadcast(struct srv *s, int kind, const void *body, size_t n);
struct srv_dev *srv_dev_find(struct srv_user *u, const char *device);

/* routes.c */
struct srv_req {
	const uint8_t *rid;
	size_t rid_len;
	uint64_t session;
	struct srv_user *user;           /* the authenticated sender */
	struct srv_dev *dev;             /* may be NULL if not open */
	const char *device;
	bimip_MessageScheme *m;
	const uint8_t *raw;              /* the stanza as received */
	size_t raw_len;
	int remote;                      /* forwarded by the sender's owner: user
					    is a stand-in, not owned here */
	int mutual;                      /* forwarded awareness request: the
					    sender has the target as subscriber */
};
void srv_route(struct srv *s, struct srv_req *r);
/* A stanza another server forwarded (BM_IPC_FORWARD). */
void srv_route_forwarded(struct srv *s, struct srv_req *r);
/* Awareness of u for viewer eid (owned here), location when authorized. */
void srv_awareness_push(struct srv *s, struct srv_user *viewer,
			bimip_MessageScheme *m);
void srv_awareness_changed(struct srv *s, struct srv_user *u);

/* pump.c */
void srv_pump(struct srv *s, struct srv_dev *d);
void srv_pump_user(struct srv *s, struct srv_user *u);
/* Pump now every user whose appends completed since the last turn (the
 * completions of one poll only mark their users, so each device's pushes
 * for a whole group commit go out together).  Call after bm_queue_sync()
 * outside the loop; srv_pump_release() at exit. */
void srv_pump_flush(struct srv *s);
void srv_pump_release(struct srv *s);
void srv_cache_trim(struct srv_user *u);
/* Free every cached record of u (the user is going away). */
void srv_cache_release(struct srv_user *u);
/* Append a record to a user stream; cb when durable.  The stored envelope is
 * env[0..env_len) when env is given (m still describes it), else m encoded. */
int srv_stream_append(struct srv *s, struct srv_user *u, int kind,
		      const char *origin_dev, bimip_MessageScheme *m,
		      const uint8_t *env, size_t env_len,
		      uint64_t *offset, srv_done_fn *cb, void *ud);

/* peer.c: the other servers, ownership, and what crosses between them */
int srv_peer_open(struct srv *s);
void srv_peer_close(struct srv *s);
void srv_peer_on_member(void *ud, enum bm_swim_event ev,
			const struct bm_swim_member *m);
/* The server that owns key (an eid or a chat id); NULL only if none is known. */
const struct srv_peer *srv_owner(struct srv *s, const char *key);
int srv_owns(struct srv *s, const char *key);
/* A message from another server on the ROUTER: 1 if it was one. */
int srv_peer_msg(struct srv *s, const uint8_t *rid, size_t rid_len,
		 const struct bm_ipc_hdr *h, const uint8_t *body, size_t n);
int srv_peer_send(struct srv *s, const struct srv_peer *p, struct bm_ipc_hdr *h,
		  const void *body, size_t n);
struct srv_peer *srv_peer_find(struct srv *s, const char *id);
/* Whether p counts in the owner set (has not left; this node not leaving). */
int srv_peer_owner_set(const struct srv *s, const struct srv_peer *p);
/* Answer a peer's request seq with kind: body "<code> <text>", 0 = done. */
void srv_peer_answer(struct srv *s, const char *peer, int kind, uint64_t seq,
		     int status, uint64_t offset);
/* Forward r's stanza to the owner of key; 0, or an error to answer with. */
int srv_forward(struct srv *s, struct srv_req *r, const char *key, int flags);
/* Awareness of u for a subscriber owned elsewhere. */
void srv_notify_remote(struct srv *s, const char *viewer, bimip_MessageScheme *m);
/* Append a record to eid's stream wherever it is owned, skipping a message
 * id already there; cb(ud, status, offset): 0, BM_EBLOCKED (check_eid is
 * blocked by eid), or BM_EUNAVAIL / BM_ETIMEDOUT (try again). */
int srv_append_any(struct srv *s, const char *eid, int kind, const char *origin_dev,
		   const char *check_eid, const char *msgid, const uint8_t *env,
		   size_t n, srv_done_fn *cb, void *ud);
/* Start a chat message across servers: logged, then driven. */
int srv_pending_start(struct srv *s, const char *chat, int64_t v, const char *sender,
		      const char *receiver, const char *dev, const char *local,
		      const uint8_t *rid, size_t rid_len, uint64_t session,
		      int64_t route, const uint8_t *core, size_t core_len);
int srv_pending_apply(struct srv *s, void *json_obj);
void srv_pending_done(struct srv *s, const char *chat, int64_t v);
void srv_pending_drive_all(struct srv *s);
void srv_peer_tick(struct srv *s);
size_t srv_chat_envelope(uint8_t *dst, const uint8_t *core, size_t n,
			 const char *author, int ack);
json_t *srv_pending_json(const struct srv_pending *p);

/* handoff.c: data moves with ownership */
void srv_handoff_msg(struct srv *s, const struct bm_ipc_hdr *h, const uint8_t *body,
		     size_t n);
void srv_handoff_tick(struct srv *s);
/* Forgets the hand-offs still waiting for an answer (a new sweep, exit). */
void srv_handoff_forget(struct srv *s);
/* Serving: this node's hand-off and every live peer's are done. */
int srv_settled(struct srv *s);
uint64_t srv_owner_fingerprint(struct srv *s);
/* `cluster leave`: hand everything off, then leave gossip and stop. */
int srv_leave(struct srv *s, const char **down);

/* admin.c */
int srv_admin_open(struct srv *s);
int srv_cluster_open(struct srv *s);
void srv_admin_close(struct srv *s);
int srv_token_issue(struct srv *s, const char *eid, const char *device,
		    int64_t ttl_s, struct bm_buf *out, struct bm_jwt_claims *c);
/* Store a revocation (a token id until exp, or every token of eid / of
 * eid's device issued up to now) and append to delta the JSON the signals
 * apply.  cb runs once durable; then broadcast delta (BM_IPC_REVOKE). */
int srv_revoke(struct srv *s, const char *eid, const char *device,
	       const char *jti, int64_t exp, struct bm_buf *delta,
	       srv_done_fn *cb, void *ud);

#endif
