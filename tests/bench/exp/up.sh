#!/bin/sh
# up.sh BIN DIR [fsync] [window] [snap]: start server+signal on core 0, print URL KEY
BIN=$1; D=$2; case "$D" in /tmp/?*) ;; *) echo "up.sh: DIR must be under /tmp" >&2; exit 2 ;; esac; rm -rf "$D" || exit 1; mkdir -p $D/server $D/signal
cat > $D/server/config.json <<JSON
{ "node": { "id": "bench-server" }, "data_dir": "$D/server/data",
  "listen": { "zmq": "${ZMQ_LISTEN:-tcp://127.0.0.1:0}", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" },
  "queue": { "fsync": "${3:-group}", "group_window": "${4:-1ms}" },
  "state": { "snapshot_every": ${5:-200000} }, "delivery": { "window": 4096 }, "log": { "level": "${LOGLEVEL:-warn}" } }
JSON
$PRE taskset -c 0 $BIN/bimip-server -c $D/server/config.json -r $D/server/ready > $D/server/log 2>&1 &
echo $! > $D/pids
while [ ! -s $D/server/ready ]; do sleep 0.05; done
ZMQ=$(sed -n 's/.*"zmq":"\([^"]*\)".*/\1/p' $D/server/ready)
cat > $D/signal/config.json <<JSON
{ "node": { "id": "bench-signal" }, "listen": { "ws": "127.0.0.1:0", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" }, "servers": [ "$ZMQ" ],
  "limits": { "rate": 1000000, "burst": 1000000, "max_sessions": 100000 }, "log": { "level": "${LOGLEVEL:-warn}" } }
JSON
$PRE taskset -c 0 $BIN/bimip-signal -c $D/signal/config.json -r $D/signal/ready > $D/signal/log 2>&1 &
echo $! >> $D/pids
while [ ! -s $D/signal/ready ]; do sleep 0.05; done
echo "ws://$(sed -n 's/.*"ws":"\([^"]*\)".*/\1/p' $D/signal/ready)/" > $D/url
