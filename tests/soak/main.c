/*
 * bimip-soak: `make soak`.  Chat load on a cluster for SOAK_SECONDS while
 * servers and signals are killed at random, then the exactly-once check
 * (tests/soak/soak.c).  Every SOAK_* variable of soak.h may be set; the
 * daemons come from $BIMIP_BIN.
 */
#include "soak.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
	struct soak_opts o = {
		.seconds = 120,
		.users = 16,
		.servers = SOAK_DEFAULT_SERVERS,
		.rate = 200,
		.window = 8,
		.kill_every_ms = 4000,
		.down_ms = 2000,
		.resend_ms = 2000,
		.churn_ms = 1000,
		.backoff_ms = 2000,
		.drain_ms = 30000,
		.snapshot_every = 2000,
		.seed = (unsigned)time(NULL) ^ (unsigned)getpid(),
	};

	if (soak_opts_env(&o))
		return 2;
	return soak_run(&o);
}
