/*
 * it_soak: the soak (tests/soak/soak.c) short enough for make check: one
 * server kill and one signal kill under a light chat load, then the
 * exactly-once check.  SOAK_* variables override these settings.
 */
#include "soak.h"

#include <time.h>
#include <unistd.h>

int main(void)
{
	struct soak_opts o = {
		.seconds = 8,
		.users = 4,
		.servers = SOAK_DEFAULT_SERVERS,
		.rate = 60,
		.window = 4,
		.kill_every_ms = 3000,
		.down_ms = 1000,
		.resend_ms = 1500,
		.churn_ms = 1000,
		.backoff_ms = 2000,
		.drain_ms = 20000,
		.snapshot_every = 200,
		.seed = (unsigned)time(NULL) ^ (unsigned)getpid(),
		.first_kill_server = 1,
	};

	if (soak_opts_env(&o))
		return 2;
	return soak_run(&o);
}
