#!/bin/sh
# restart.sh BIN DIR T: full pairs load for T seconds, kill -9 the server,
# then start it again on the same data (twice, from a copy of the crashed
# directory) and print the time to ready and the start-up lines of its log.
BIN=$1; D=$2; T=${3:-10}
case "$D" in /tmp/?*) ;; *) echo "restart.sh: DIR must be under /tmp" >&2; exit 2 ;; esac
E="$(dirname "$0")"
sh "$E"/up.sh $BIN $D >/dev/null
SP=$(head -1 $D/pids)
sh "$E"/pairs.sh $BIN $D $((T + 5)) >/dev/null 2>&1 &
LP=$!
sleep $T
kill -9 $SP
kill $LP 2>/dev/null; pkill -f "bimip-bench pairs --url $(cat $D/url)" 2>/dev/null
wait $LP 2>/dev/null
sh "$E"/down.sh $D 2>/dev/null
sed -i 's/"level": "[a-z]*"/"level": "info"/' $D/server/config.json
rm -rf $D.crashed && cp -a $D $D.crashed
for i in 1 2; do
	rm -rf $D && cp -a $D.crashed $D && rm -f $D/server/ready
	t0=$(date +%s%N)
	taskset -c 0 $BIN/bimip-server -c $D/server/config.json -r $D/server/ready > $D/server/log2 2>&1 &
	P=$!
	while [ ! -s $D/server/ready ] && kill -0 $P 2>/dev/null; do sleep 0.02; done
	t1=$(date +%s%N)
	echo "ready in $(( (t1 - t0) / 1000000 )) ms"
	kill $P; wait $P 2>/dev/null
	grep -E "queue: opened|loaded the state|repair|restored|replayed" $D/server/log2 | sed 's/.*node=[^ ]* //'
done
rm -rf $D.crashed
