#!/bin/sh
# commit.sh BIN T RATE...: per rate, a fresh server without snapshots (up.sh
# in /tmp/commit), pairs for T s; prints the end-to-end latency and the
# server's own share, bimip_server_chat_commit_seconds (accept to durable),
# with bimip_server_fsync_seconds, percentiles interpolated in the buckets.
BIN=$1; T=$2; shift 2; X=$(dirname "$0"); D=/tmp/commit
pct() { # NAME: its percentiles, from the /metrics text on stdin
	sed -n "s/^$1_bucket{le=\"\([^\"]*\)\"} \([0-9]*\)$/\1 \2/p" |
		awk -v label="$1" -f "$X/../hist-pct.awk"
}
for R in "$@"; do
	sh $X/up.sh $BIN $D group ${WIN:-1ms} 100000000 >/dev/null
	ADMIN=$(sed -n 's/.*"admin":"\([^"]*\)".*/\1/p' $D/server/ready)
	sh $X/pairs.sh $BIN $D $T $R | sed 's/.*msgs\/s=/msgs\/s=/; s/ p999.*//'
	M=$($BIN/bimipctl --admin $ADMIN --key bench-admin-key metrics bimip_server_)
	echo "$M" | pct bimip_server_chat_commit_seconds
	echo "$M" | pct bimip_server_fsync_seconds
	sh $X/down.sh $D
done
