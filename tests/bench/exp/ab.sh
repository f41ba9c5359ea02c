#!/bin/sh
# ab.sh OLD_BIN NEW_BIN RATE N: N alternated runs of each build on a fresh
# server without snapshots (up.sh in /tmp/ab), P=100 W=10 for 5 s at RATE
# ('' = max); per run: msgs/s and latency, the broker's CPU per message and
# fsyncs per message (bimip_server_fsync_seconds_count).  REV=1 runs the
# new build first in each pair (to see the drift of the hour).  NEW_BIN/bimipctl
# reads the metrics of both.
OLD=$1; NEW=$2; RATE=$3; N=$4; X=$(dirname "$0"); D=/tmp/ab
run() {
	sh $X/up.sh $1 $D group ${WIN:-1ms} 100000000 >/dev/null
	ADMIN=$(sed -n 's/.*"admin":"\([^"]*\)".*/\1/p' $D/server/ready)
	t() { for p in $(cat $D/pids); do awk '{print $14+$15}' /proc/$p/stat; done | awk '{s+=$1} END{print s}'; }
	A=$(t)
	OUT=$(sh $X/pairs.sh $1 $D 5 "$RATE")
	Z=$(t)
	F=$($NEW/bimipctl --admin $ADMIN --key bench-admin-key metrics bimip_server_fsync_seconds_count |
		sed -n 's/^bimip_server_fsync_seconds_count //p')
	M=$(echo "$OUT" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
	echo "$OUT" | sed 's/.*msgs\/s=\([0-9]*\) \(p50=[^ ]*\) \(p99=[^ ]*\) \(p999=[^ ]*\).*/\1 \2 \3 \4/' | tr '\n' ' '
	awk -v a=$A -v z=$Z -v n=$M -v f=$F -v hz="$(getconf CLK_TCK)" \
		'BEGIN { printf "cpu %.1f us/msg syncs/msg %.3f\n", (z - a) * 1e6 / hz / n, f / n }'
	sh $X/down.sh $D
}
for i in $(seq $N); do
	if [ -n "${REV:-}" ]; then
		echo "new $(run $NEW)"; echo "old $(run $OLD)"
	else
		echo "old $(run $OLD)"; echo "new $(run $NEW)"
	fi
done
