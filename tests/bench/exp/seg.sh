#!/bin/sh
# seg.sh BIN DIR RATE: TCP segments per message (whole machine) during a 5 s run
BIN=$1; D=$2; R=$3
sh "$(dirname "$0")"/up.sh $BIN $D group ${WIN:-1ms} >/dev/null
sh "$(dirname "$0")"/pairs.sh $BIN $D 7 "$R" > $D/bench.out &
B=$!
sleep 2
s() { awk '/^Tcp:/ && $2 ~ /^[0-9]/ {print $11, $12}' /proc/net/snmp; }
a=$(s); sleep 4; b=$(s)
wait $B
N=$(sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p' $D/bench.out)
echo "$a $b" | awk -v n=$N '{printf "in %.2f out %.2f segs/msg\n", ($3-$1)/(n*4), ($4-$2)/(n*4)}'
sh "$(dirname "$0")"/down.sh $D
