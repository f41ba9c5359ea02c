#!/bin/sh
# thr2.sh BIN DIR RATE: per-thread CPU us/msg during a 6 s run (rate '' = max)
BIN=$1; D=$2; R=$3
sh "$(dirname "$0")"/up.sh $BIN $D group ${WIN:-1ms} >/dev/null
sh "$(dirname "$0")"/pairs.sh $BIN $D 8 "$R" > $D/bench.out &
B=$!
sleep 2
sh "$(dirname "$0")"/threads.sh $D > $D/t0
sleep 5
sh "$(dirname "$0")"/threads.sh $D > $D/t1
wait $B
N=$(sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p' $D/bench.out)
cat $D/bench.out
join $D/t0 $D/t1 | awk -v n=$N '{printf "%-8s %-20s user %.2f sys %.2f us/msg\n", $1, $2, ($6-$3)*1e4/(n*5), ($7-$4)*1e4/(n*5)}'
sh "$(dirname "$0")"/down.sh $D
