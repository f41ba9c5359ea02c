/*
 * bimip-bench - load generator and micro-benchmarks.
 *
 *   bimip-bench MODE [options]     run one mode (bimip-bench MODE --help)
 *   bimip-bench                    list the modes
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

struct mode {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

static const struct mode modes[] = {
	{ "queue", bench_queue_main,
	  "BimipQueue: appends/s and MB/s per record size and fsync policy against a "
	  "raw write+fdatasync baseline, random reads with p99, reopen time" },
	{ "connections", bench_load_main,
	  "N idle authenticated WebSocket sessions: setup rate, signal memory per session" },
	{ "pairs", bench_load_main,
	  "P sender/receiver pairs, W in flight: delivered msgs/s, latency p50/p99/p999 "
	  "(--mqtt HOST:PORT: the same against an MQTT broker)" },
	{ "disk", bench_disk_main,
	  "one write + fdatasync on a disk, paced: latency p50/p99/p999, the floor "
	  "under any durable answer" },
	{ "fanout", bench_load_main,
	  "awareness change of a user with K subscribers online: time until all K know" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: bimip-bench MODE [options]   (MODE --help for its options)\n\nmodes:\n");
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		fprintf(f, "  %-12s %s\n", modes[i].name, modes[i].help);
}

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (!strcmp(argv[1], modes[i].name))
			return modes[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "bimip-bench: unknown mode '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
