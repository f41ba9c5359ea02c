#!/bin/sh
# lat.sh BIN DIR T RATES...: one start; per rate: latency, cpu us/msg, ctx switches/msg per process, loadgen cpu
BIN=$1; D=$2; T=$3; shift 3
sh "$(dirname "$0")"/up.sh $BIN $D ${FSYNC:-group} ${WIN:-1ms} ${SNAP:-200000} >/dev/null
t() { for p in $(cat $D/pids); do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' '; }
cs() { for p in $(cat $D/pids); do cat /proc/$p/task/*/status | awk '/ctxt_switches/{s+=$2} END{print s}'; done | tr '\n' ' '; }
for R in "$@"; do
A=$(t); CA=$(cs)
OUT=$(sh "$(dirname "$0")"/pairs.sh $BIN $D $T $R)
B=$(t); CB=$(cs)
N=$(echo "$OUT" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
L=$(echo "$OUT" | sed 's/.*msgs\/s=\([0-9]*\) \(.*\) max.*/\1 \2/')
echo "$A $B $CA $CB $N" | awk -v r="$R" -v l="$L" '{printf "rate %s: %s | cpu srv %.1f sig %.1f us/msg | cs srv %.2f sig %.2f /msg\n", r, l, ($3-$1)*1e4/$9, ($4-$2)*1e4/$9, ($7-$5)/$9, ($8-$6)/$9}'
done
sh "$(dirname "$0")"/down.sh $D
