#!/bin/sh
# max.sh BIN DIR T: start, run max-load pairs, print msgs/s and cpu us/msg, stop
BIN=$1; D=$2; T=${3:-8}
sh "$(dirname "$0")"/up.sh $BIN $D group ${WIN:-1ms} >/dev/null
t() { for p in $(cat $D/pids); do awk '{print $14+$15}' /proc/$p/stat; done | tr '\n' ' '; }
A=$(t)
OUT=$(sh "$(dirname "$0")"/pairs.sh $BIN $D $T "${RATE:-}")
B=$(t)
N=$(echo "$OUT" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
R=$(echo "$OUT" | sed 's/.*msgs\/s=\([0-9]*\) \(.*\) errors.*/\1 \2/')
echo "$A $B $N" | awk -v r="$R" '{printf "%s | server %.2f signal %.2f us/msg\n", r, ($3-$1)*1e4/$5, ($4-$2)*1e4/$5}'
sh "$(dirname "$0")"/down.sh $D
