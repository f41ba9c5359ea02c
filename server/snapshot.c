/*
 * snapshot.c - the server's state, written whole, so start-up replays only
 * the "__state" records after it (DESIGN.md section 4: start-up time does not
 * grow with the log).
 *
 * File <data_dir>/state.snap, JSON lines, written to state.snap.tmp, fsync'ed,
 * renamed over state.snap, directory fsync'ed:
 *
 *   {"v":1,"state_offset":N,"created":ms}     the __state records <= N are in it
 *   {"t":"u","e":eid,"subs":[..],"blk":[..],"seen":ms,"lat":x,"lon":y,"in":n,"ref":o}
 *   {"t":"c","c":chat,"a":eid,"b":eid,"v":version}
 *   {"t":"i","e":eid,"d":device,"l":local,"c":chat,"v":version}   oldest first
 *   {"t":"rj","j":jti,"exp":s}
 *   {"t":"rb","k":"eid[\x1fdevice]","bf":s}
 *   {"t":"end","lines":L}                     L = lines before this one
 *
 * A file without its "end" line, or with a wrong count, is refused and the
 * server starts from the full __state stream instead (logged).
 *
 * Consistency: a snapshot may only contain durable state, or a crash could
 * leave it holding a version or a resend key whose message was never
 * stored.  So the queue is synced first (every appended record durable),
 * then the process forks (redis BGSAVE): the child writes its copy-on-write
 * image of the state and exits; the parent goes on serving.
 */
#include "srv.h"

#include "bm_err.h"
#include "bm_log.h"
#include "bm_queue.h"
#include "bm_time.h"
#include "bm_ws.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define STATE_STREAM "__state"

static void path_of(const struct srv *s, char *out, size_t cap, const char *suffix)
{
	snprintf(out, cap, "%.480s/state.snap%s", s->cfg.data_dir, suffix);
}

/* A line built by hand: the resend keys and chats are most of a snapshot
 * (up to limits.resend_memory lines), and jansson objects cost several
 * allocations each.  The strings were UTF-8 when they were stored; one that
 * is not (never expected) fails the snapshot, as jansson would. */
struct line {
	char buf[16384];
	char *p;
	int bad;
};

static void l_begin(struct line *l, const char *type)
{
	l->p = l->buf + sprintf(l->buf, "{\"t\":\"%s\"", type);
	l->bad = 0;
}

static void l_str(struct line *l, const char *k, const char *v)
{
	size_t n = strlen(v);

	/* 6 bytes per escaped byte, the key, quotes and the end. */
	if (l->bad || n > 1024 || !bm_ws_utf8_valid((const uint8_t *)v, n) ||
	    (size_t)(l->p - l->buf) + 6 * n + strlen(k) + 16 > sizeof(l->buf)) {
		l->bad = 1;
		return;
	}
	l->p += sprintf(l->p, ",\"%s\":\"", k);
	l->p = srv_json_escape(l->p, v);
	*l->p++ = '"';
}

static int l_end(struct line *l, FILE *f, const char *num_key, int64_t num,
		 unsigned long *lines)
{
	if (l->bad)
		return -1;
	l->p += sprintf(l->p, ",\"%s\":%lld}\n", num_key, (long long)num);
	if (fwrite(l->buf, 1, (size_t)(l->p - l->buf), f) != (size_t)(l->p - l->buf))
		return -1;
	(*lines)++;
	return 0;
}

static int put_line(FILE *f, json_t *o, unsigned long *lines)
{
	int rc = o ? json_dumpf(o, f, JSON_COMPACT) : -1;

	json_decref(o);
	if (rc || fputc('\n', f) == EOF)
		return -1;
	(*lines)++;
	return 0;
}

/* Write the snapshot of the state as it is now; 0 or -1 (errno set). */
static int write_snapshot(struct srv *s, uint64_t state_offset)
{
	static struct line l;
	char tmp[600], final[600], dir[600];
	unsigned long lines = 0;
	const char *k;
	void *v;
	FILE *f;
	int fd, ok = 1;

	path_of(s, tmp, sizeof(tmp), ".tmp");
	path_of(s, final, sizeof(final), "");
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	/* The child is single-threaded: no stdio locking, large writes. */
	__fsetlocking(f, FSETLOCKING_BYCALLER);
	setvbuf(f, NULL, _IOFBF, 1 << 20);
	ok = !put_line(f, json_pack("{s:i, s:I, s:I}", "v", 1, "state_offset",
				    (json_int_t)state_offset, "created",
				    (json_int_t)bm_wall_ms()), &lines);
	for (size_t it = 0; ok && bm_map_next(&s->users, &it, &k, &v);) {
		struct srv_user *u = v;
		json_t *o = srv_user_json(u);

		if (o) {
			json_object_set_new(o, "t", json_string("u"));
			json_object_set_new(o, "e", json_string(u->eid));
			json_object_set_new(o, "ref", json_integer((json_int_t)u->ref_offset));
		}
		ok = !put_line(f, o, &lines);
	}
	for (size_t it = 0; ok && bm_map_next(&s->chats, &it, &k, &v);) {
		struct srv_chat *c = v;
		l_begin(&l, "c");
		l_str(&l, "c", c->id);
		l_str(&l, "a", c->a);
		l_str(&l, "b", c->b);
		ok = !l_end(&l, f, "v", c->version, &lines);
	}
	/* Resend keys oldest first, so the bounded ring keeps its order. */
	for (size_t i = 0; ok && i < s->idem.count; i++) {
		const char *key;
		struct srv_idem *e = bm_keyring_at(&s->idem, i, &key);
		char eid[SRV_EID_MAX + 1], dev[SRV_DEV_MAX + 1];
		const char *local;

		if (!e->durable || srv_idem_parts(key, eid, dev, &local))
			continue;
		l_begin(&l, "i");
		l_str(&l, "e", eid);
		l_str(&l, "d", dev);
		l_str(&l, "l", local);
		l_str(&l, "c", e->chat_id);
		ok = !l_end(&l, f, "v", e->version, &lines);
	}
	for (size_t it = 0; ok && bm_map_next(&s->pending, &it, &k, &v);)
		ok = !put_line(f, srv_pending_json(v), &lines);
	for (size_t it = 0; ok && bm_map_next(&s->revoked_jti, &it, &k, &v);)
		ok = !put_line(f, json_pack("{s:s, s:s, s:I}", "t", "rj", "j", k, "exp",
					    (json_int_t)(intptr_t)v), &lines);
	for (size_t it = 0; ok && bm_map_next(&s->revoked_before, &it, &k, &v);)
		ok = !put_line(f, json_pack("{s:s, s:s, s:I}", "t", "rb", "k", k, "bf",
					    (json_int_t)(intptr_t)v), &lines);
	if (ok)
		ok = fprintf(f, "{\"t\":\"end\",\"lines\":%lu}\n", lines) > 0;
	if (fflush(f) == EOF || fsync(fileno(f)) == -1)
		ok = 0;
	if (fclose(f) == EOF)
		ok = 0;
	if (!ok || rename(tmp, final) == -1) {
		unlink(tmp);
		return -1;
	}
	snprintf(dir, sizeof(dir), "%.480s", s->cfg.data_dir);
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
	return 0;
}

static int state_head(struct srv *s, uint64_t *head)
{
	int rc = bm_queue_stream_head(s->q, STATE_STREAM, head, NULL);

	if (rc == BM_ENOENT) {
		*head = 0;
		return 0;
	}
	return rc;
}

int srv_snapshot_now(struct srv *s)
{
	uint64_t head, t0 = bm_mono_ms();
	int rc = bm_queue_sync(s->q);

	if (!rc)
		rc = state_head(s, &head);
	if (rc)
		return rc;
	if (write_snapshot(s, head)) {
		bm_err("state", "cannot write the state snapshot: %s", strerror(errno));
		return BM_EIO;
	}
	s->snap_records = 0;
	bm_info("state", "wrote the state snapshot at state offset %llu in %llu ms",
		(unsigned long long)head, (unsigned long long)(bm_mono_ms() - t0));
	return 0;
}

void srv_snapshot_maybe(struct srv *s)
{
	uint64_t head, t0, t1;
	pid_t pid;
	int status;

	if (s->snap_pid > 0) {
		pid = waitpid(s->snap_pid, &status, WNOHANG);
		if (pid != s->snap_pid)
			return;
		s->snap_pid = 0;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
			bm_info("state", "background snapshot done (state offset %llu)",
				(unsigned long long)s->snap_offset);
		else
			bm_err("state", "background snapshot failed (status %d)", status);
	}
	if (s->snap_records < (uint64_t)s->cfg.snapshot_every || s->snap_pid > 0)
		return;
	/* A fork costs the loop its page tables and then copy-on-write faults
	 * while the child writes: at most one per snapshot_interval. */
	if (s->snap_last_ms && bm_mono_ms() - s->snap_last_ms < (uint64_t)s->cfg.snapshot_interval_ms)
		return;
	/* Only durable state may go into a snapshot: sync, then fork. */
	t0 = (bm_mono_ns() / 1000);
	if (bm_queue_sync(s->q) || state_head(s, &head))
		return;
	t1 = (bm_mono_ns() / 1000);
	pid = fork();
	if (pid == -1) {
		bm_err("state", "cannot fork for the snapshot: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		/* Background work: on a busy core the loop's threads come first
		 * (nice 10 is about a tenth of a nice-0 thread's share). */
		if (setpriority(PRIO_PROCESS, 0, 10) == -1)
			bm_warn("state", "snapshot child: cannot lower its priority: %s",
				strerror(errno));
		_exit(write_snapshot(s, head) ? 1 : 0);
	}
	/* The loop stood still this long (sync, then the page tables copied). */
	bm_info("state", "snapshot at state offset %llu: the loop paused %.1f ms to sync "
		"and %.1f ms to fork", (unsigned long long)head, (double)(t1 - t0) / 1000,
		(double)((bm_mono_ns() / 1000) - t1) / 1000);
	s->snap_pid = pid;
	s->snap_offset = head;
	s->snap_records = 0;
	s->snap_last_ms = bm_mono_ms();
}

void srv_snapshot_wait(struct srv *s)
{
	if (s->snap_pid > 0) {
		waitpid(s->snap_pid, NULL, 0);
		s->snap_pid = 0;
	}
}

static const char *str(json_t *o, const char *k)
{
	const char *v = json_string_value(json_object_get(o, k));
	return v ? v : "";
}

static int64_t num(json_t *o, const char *k)
{
	return (int64_t)json_integer_value(json_object_get(o, k));
}

static int load_line(struct srv *s, json_t *o)
{
	const char *t = str(o, "t");

	if (!strcmp(t, "u")) {
		struct srv_user *u = srv_user_get(s, str(o, "e"), 1);
		if (!u)
			return BM_ENOMEM;
		srv_user_load(u, o);
		u->ref_offset = (uint64_t)num(o, "ref");
	} else if (!strcmp(t, "c")) {
		struct srv_chat *c = srv_chat_get(s, str(o, "a"), str(o, "b"), 1);
		if (!c)
			return BM_ENOMEM;
		if (num(o, "v") > c->version)
			c->version = num(o, "v");
	} else if (!strcmp(t, "i")) {
		struct srv_idem *x = srv_idem_add(s, str(o, "e"), str(o, "d"), str(o, "l"),
						  str(o, "c"), num(o, "v"));
		if (x)
			x->durable = 1;
	} else if (!strcmp(t, "rj")) {
		bm_map_put(&s->revoked_jti, str(o, "j"), (void *)(intptr_t)num(o, "exp"), NULL);
	} else if (!strcmp(t, "rb")) {
		bm_map_put(&s->revoked_before, str(o, "k"), (void *)(intptr_t)num(o, "bf"), NULL);
	} else if (!strcmp(t, "pm")) {
		return srv_pending_apply(s, o);
	}
	return 0;
}

int srv_snapshot_load(struct srv *s, uint64_t *state_offset)
{
	char path[600], *line = NULL;
	size_t cap = 0;
	unsigned long lines = 0;
	ssize_t n;
	FILE *f;
	int ended = 0, rc = 0;
	uint64_t t0 = bm_mono_ms();

	*state_offset = 0;
	path_of(s, path, sizeof(path), "");
	f = fopen(path, "r");
	if (!f)
		return errno == ENOENT ? 0 : BM_EIO;
	while (!ended && (n = getline(&line, &cap, f)) > 0) {
		json_t *o = json_loadb(line, (size_t)n, 0, NULL);
		if (!o) {
			rc = BM_ECORRUPT;
			break;
		}
		if (lines == 0) {
			if (num(o, "v") != 1)
				rc = BM_ECORRUPT;
			*state_offset = (uint64_t)num(o, "state_offset");
		} else if (!strcmp(str(o, "t"), "end")) {
			ended = (unsigned long)num(o, "lines") == lines;
			if (!ended)
				rc = BM_ECORRUPT;
		} else {
			rc = load_line(s, o);
		}
		json_decref(o);
		if (rc)
			break;
		lines++;
	}
	free(line);
	fclose(f);
	if (!rc && !ended)
		rc = BM_ECORRUPT;
	if (rc) {
		bm_err("state", "snapshot '%s' is unusable (%s): starting from the whole "
		       "state log", path, bm_strerror(rc));
		return rc;
	}
	bm_info("state", "loaded the state snapshot (state offset %llu, %lu lines) in %llu ms",
		(unsigned long long)*state_offset, lines, (unsigned long long)(bm_mono_ms() - t0));
	return 0;
}
