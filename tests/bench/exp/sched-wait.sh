#!/bin/bash
# sched-wait.sh BIN DIR T RATE: per thread of the server and the edge during
# one pairs run, CPU and run-queue wait per message and the mean wait per
# time slice (/proc/PID/task/TID/schedstat).  bash: process substitution.
BIN=$1; D=$2; T=$3; R=$4; E=$(dirname "$0")
sh "$E"/up.sh "$BIN" "$D" group "${WIN:-1ms}" >/dev/null
snap() { for p in $(cat "$D"/pids); do for t in /proc/$p/task/*; do echo "$p ${t##*/} $(tr ' ' _ < "$t"/comm) $(cat "$t"/schedstat)"; done; done; }
snap > "$D"/sched.a
OUT=$(sh "$E"/pairs.sh "$BIN" "$D" "$T" "$R")
snap > "$D"/sched.b
echo "$OUT"
N=$(echo "$OUT" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
join -j 2 <(sort -k2 "$D"/sched.a) <(sort -k2 "$D"/sched.b) | awk -v n="$N" '{
	sl = $11 - $6; if (sl > 0 && n > 0)
	printf "%-8s %-14s run %.2f us/msg wait %.2f us/msg slices %.3f/msg mean wait %.1f us\n",
	       $2, $3, ($9 - $4) / 1e3 / n, ($10 - $5) / 1e3 / n, sl / n, ($10 - $5) / 1e3 / sl }'
sh "$E"/down.sh "$D"
