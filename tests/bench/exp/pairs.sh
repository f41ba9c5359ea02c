#!/bin/sh
# pairs.sh BIN DIR T [RATE]: the pairs load of every script here, from core 1,
# against the server and edge up.sh started in DIR: P=100 W=10, T seconds,
# RATE msgs/s ('' or none = max).  Prints bimip-bench's line.
BIN=$1; D=$2; T=$3; R=${4:-}
exec taskset -c 1 "$BIN/bimip-bench" pairs --url "$(cat "$D/url")" \
	--key "$D/server/data/token.key" -p 100 -w 10 -t "$T" ${R:+--rate "$R"}
