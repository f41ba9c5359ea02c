/*
 * bm_registry.h - "which server owns EID x" and "which signal nodes hold the
 * devices of EID x", answered locally on every node.
 *
 * Owner: rendezvous (highest random weight) hashing of the eid over the
 * server members that have not left: score(s, eid) = bm_mix64(bm_hash64(s.id)
 * ^ bm_hash64(eid)), highest score wins, ties broken by id.  Adding or
 * removing one of n servers moves only the eids that server wins or won
 * (about 1/n of them).  A dead (or suspect) server keeps its eids: its data
 * is on its disk, so its users wait for it (the daemons answer 503) rather
 * than move to a server without their history; only a graceful leave, after
 * the hand-off (docs/cluster.md), takes a server out of the owner set.  The
 * daemons apply the same rule to their own member lists (server/peer.c,
 * signal/link.c).
 *
 * Device map: a replicated map (writer, eid) -> set of device ids, where the
 * writer is a signal node and the only node allowed to change its entries.
 * Each writer stamps its changes with (epoch, version): epoch is fixed per
 * process start (a restarted writer picks a higher one and its older entries
 * are discarded everywhere), version increases by one per local change.
 * Merge keeps, per (writer, eid), the entry with the highest (epoch, version),
 * so it is commutative, associative and idempotent.  Removal is a tombstone
 * (empty device set).  All entries of a writer are dropped when membership
 * declares it dead or left; entries from writers not known to be alive are
 * refused, so a slow peer cannot resurrect them.
 *
 * Dissemination (driven by bm_swim, see docs/cluster.md): new entries are
 * piggybacked on gossip packets a bounded number of times (by the writer
 * more than by relays), and every protocol period each node sends a digest
 * (writer, epoch, complete-up-to version) to one random peer, which answers
 * with the entries that are newer, up to a packet budget.
 *
 * Not thread-safe; used from the thread that drives the bm_swim it belongs to.
 */
#ifndef BM_REGISTRY_H
#define BM_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "bm_swim_proto.h"

struct bm_registry;

/* A registry entry changed: eid's device set on writer was set, cleared, or
 * dropped with the writer.  Strings are borrowed for the call only. */
typedef void bm_registry_change_fn(void *ud, const char *writer, const char *eid);
/* One signal node holding devices of the looked-up eid. */
typedef void bm_registry_visit_fn(void *ud, const char *writer,
				  const char *const *devices, unsigned ndev);

/* self_id: this node's member id (copied); epoch: this process's writer
 * epoch (the daemon passes something that grows across restarts, e.g. wall
 * milliseconds).  Returns NULL on allocation failure. */
struct bm_registry *bm_registry_new(const char *self_id, uint64_t epoch);
void bm_registry_free(struct bm_registry *r);
void bm_registry_set_callback(struct bm_registry *r, bm_registry_change_fn *fn,
			      void *ud);

/* Membership hook (bm_swim calls it; tests may too): member id with role is
 * in state (BM_SWIM_ALIVE, _SUSPECT, _DEAD or _LEFT).  A server is in the
 * owner set unless it left; a writer that is dead or left loses all its
 * entries.  Returns 0 or BM_ENOMEM/BM_EINVAL. */
int bm_registry_member(struct bm_registry *r, const char *id, int role, int state);

/* Owner of eid: copies the server id into out (BM_SWIM_ID_MAX + 1 bytes).
 * Returns 0, or BM_ENOENT when there is no server (none, or all left). */
int bm_registry_owner(const struct bm_registry *r, const char *eid, char *out);
unsigned bm_registry_server_count(const struct bm_registry *r);

/* Local write: this node now holds exactly these devices of eid (ndev 0
 * clears).  Ids 1..64 bytes, ndev <= BM_SWIM_DEV_MAX.  Returns 0, BM_EINVAL,
 * BM_ETOOBIG, BM_EFULL (map at its limit) or BM_ENOMEM.  An unchanged set is not re-stamped. */
int bm_registry_set(struct bm_registry *r, const char *eid,
		    const char *const *devices, unsigned ndev);
/* Calls fn for each writer holding at least one device of eid; returns the
 * number of calls. */
unsigned bm_registry_lookup(const struct bm_registry *r, const char *eid,
			    bm_registry_visit_fn *fn, void *ud);

/* Merge a remote entry.  Returns 1 if it changed the map, 0 if it was older,
 * equal, or from a writer not live here; BM_EINVAL/BM_ENOMEM on error. */
int bm_registry_merge(struct bm_registry *r, const struct bm_swim_reg_rec *rec);
/* Number of live (non-tombstone) entries, and a digest fingerprint of the
 * whole map (equal maps have equal fingerprints) for convergence checks. */
unsigned bm_registry_size(const struct bm_registry *r);
uint64_t bm_registry_fingerprint(const struct bm_registry *r);

/* --- used by bm_swim for dissemination ----------------------------------- */

/* Own fresh entries are piggybacked this many times (default 8); entries
 * learned from others are relayed at most twice. */
void bm_registry_set_retransmit(struct bm_registry *r, unsigned n);
/* At most n entries (tombstones included); merges that would add more are
 * refused and counted, local writes get BM_EFULL.  Default 1000000. */
void bm_registry_set_limit(struct bm_registry *r, unsigned n);
/* Entries waiting to be piggybacked. */
unsigned bm_registry_pending(const struct bm_registry *r);
/* Appends pending entries that fit to an encoder in its registry phase. */
void bm_registry_piggyback(struct bm_registry *r, struct bm_swim_enc *e);
/* Writes this node's digest into a REG_DIGEST body (enc_digest_begin done). */
void bm_registry_digest(struct bm_registry *r, struct bm_swim_enc *e);
/* Answers a digest: for each packet, starts e as REG_DATA with limit, fills
 * it with entries newer than the digest, and calls emit (which finishes and
 * sends it); at most max_pkts packets.  Returns the number emitted. */
typedef int bm_registry_emit_fn(void *ctx, struct bm_swim_enc *e);
int bm_registry_answer(struct bm_registry *r, const struct bm_swim_pkt *digest,
		       struct bm_swim_enc *e, size_t limit, unsigned max_pkts,
		       bm_registry_emit_fn *emit, void *ctx);
/* After merging a REG_DATA packet's entries: applies its complete ranges. */
void bm_registry_ranges(struct bm_registry *r, const struct bm_swim_pkt *p);

#endif
