/*
 * soak.h - the soak test: chat load on a real cluster while servers and
 * signals are killed at random, then a check that every acknowledged
 * message reached every device of its receiver exactly once (soak.c says
 * how).  Two programs run it: bimip-soak (make soak, long) and it_soak (the
 * smoke in make check, short).
 */
#ifndef SOAK_H
#define SOAK_H

/* Servers the soak starts when SOAK_SERVERS is not set (make soak and
 * it_soak alike): 3, so chat, acknowledgements and restarts cross servers
 * (docs/cluster.md); SOAK_SERVERS=1 runs the single-server path. */
#define SOAK_DEFAULT_SERVERS 3
#define SOAK_MAX_SERVERS 5
#define SOAK_SIGNALS 2

struct soak_opts {
	int seconds;          /* SOAK_SECONDS: length of the load phase */
	int users;            /* SOAK_USERS: users, two devices each */
	int servers;          /* SOAK_SERVERS: 1..SOAK_MAX_SERVERS */
	int rate;             /* SOAK_RATE: new messages per second, all devices */
	int window;           /* SOAK_WINDOW: unacknowledged messages per device */
	int kill_every_ms;    /* SOAK_KILL_EVERY_MS: between kills (0 = none) */
	int down_ms;          /* SOAK_DOWN_MS: a killed node stays down 0..this */
	int resend_ms;        /* SOAK_RESEND_MS: resend when unanswered this long */
	int churn_ms;         /* SOAK_CHURN_MS: a device reconnects this often
				 (0 = only when its connection dies) */
	int drain_ms;         /* SOAK_DRAIN_MS: bound of each end phase */
	int snapshot_every;   /* SOAK_SNAPSHOT_EVERY: server state.snapshot_every */
	int backoff_ms;       /* SOAK_BACKOFF_MS: longest reconnect back-off */
	unsigned seed;        /* SOAK_SEED: victims, receivers, timing choices */
	int first_kill_server;/* the first kill is a server (else by the seed) */
};

/* Overwrite the fields whose SOAK_* environment variable is set.  Returns 0,
 * or -1 after printing which value is invalid. */
int soak_opts_env(struct soak_opts *o);

/* Start the cluster, run the load and the killer, drain, check, print the
 * figures, stop every process.  Returns 0 when nothing acknowledged was
 * lost or duplicated and no log shows a sanitizer report, else 1. */
int soak_run(const struct soak_opts *o);

#endif
