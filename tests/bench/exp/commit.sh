#!/bin/sh
# commit.sh BIN T RATE...: per rate, a fresh server without snapshots (up.sh
# in /tmp/commit), pairs for T s; prints the end-to-end latency and the
# server's own share, bimip_server_chat_commit_seconds (accept to durable),
# with bimip_server_fsync_seconds, percentiles interpolated in the buckets.
BIN=$1; T=$2; shift 2; X=$(dirname "$0"); D=/tmp/commit
pct() { # NAME: p50 p90 p99 of the histogram NAME read on stdin
	sed -n "s/^$1_bucket{le=\"\([^\"]*\)\"} \([0-9]*\)$/\1 \2/p" | awk -v name="$1" '
		{ le[n] = $1; c[n] = $2; n++ }
		function q(p,   t, i, lo, cl) {
			t = p * c[n - 1]; lo = 0; cl = 0
			for (i = 0; i < n; i++) {
				if (c[i] >= t)
					return le[i] == "+Inf" ? lo : lo + (le[i] - lo) * (t - cl) / (c[i] - cl > 0 ? c[i] - cl : 1)
				lo = le[i]; cl = c[i]
			}
			return lo
		}
		END { if (n) printf "%s n=%d p50=%.3fms p90=%.3fms p99=%.3fms\n", name, c[n - 1],
			q(0.5) * 1e3, q(0.9) * 1e3, q(0.99) * 1e3 }'
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
