#!/bin/sh
# make run: one bimip-server and one bimip-signal on loopback, in the
# foreground until Ctrl-C.  Data under var/ (created on first start, with a
# token signing key and an admin key).  Clients: ws://127.0.0.1:4000/
set -eu
BIN=${1:-build/bin}
mkdir -p var
[ -f var/server.json ] || cat > var/server.json <<'JSON'
{
  "node": { "id": "server-1" },
  "data_dir": "var/server-1",
  "listen": { "zmq": "tcp://127.0.0.1:4100", "admin": "127.0.0.1:4101" }
}
JSON
[ -f var/signal.json ] || cat > var/signal.json <<'JSON'
{
  "node": { "id": "signal-1" },
  "listen": { "ws": "127.0.0.1:4000", "admin": "127.0.0.1:4001" },
  "servers": [ "tcp://127.0.0.1:4100" ]
}
JSON
rm -f var/server.ready var/signal.ready
"$BIN/bimip-server" -c var/server.json -r var/server.ready &
SRV=$!
# Stop both daemons and exit with $1.
stop() {
	kill -TERM $SRV ${SIG:-} 2>/dev/null || true
	wait || true
	exit "$1"
}
trap 'stop 0' INT TERM
i=0
while [ ! -f var/server.ready ]; do
	kill -0 $SRV 2>/dev/null || { echo "bimip-server failed to start" >&2; exit 1; }
	i=$((i + 1)); [ $i -gt 600 ] && { echo "bimip-server not ready" >&2; kill $SRV; exit 1; }
	sleep 0.05
done
"$BIN/bimip-signal" -c var/signal.json -r var/signal.ready &
SIG=$!
i=0
while [ ! -f var/signal.ready ]; do
	kill -0 $SIG 2>/dev/null || { echo "bimip-signal failed to start" >&2; kill $SRV; exit 1; }
	i=$((i + 1)); [ $i -gt 600 ] && { echo "bimip-signal not ready" >&2; kill $SRV $SIG; exit 1; }
	sleep 0.05
done
cat <<MSG

BIMIP is running: clients connect to ws://127.0.0.1:4000/  (Ctrl-C stops it)
  token:    $BIN/bimipctl token issue --eid alice@example.com --device phone
  chat:     $BIN/bimip-cli --eid bob@example.com --device laptop tail
            $BIN/bimip-cli --eid alice@example.com --device phone send bob@example.com hello
  metrics:  $BIN/bimipctl metrics bimip_server_   (signal: --admin 127.0.0.1:4001)

MSG
# Until Ctrl-C (the trap above), or until a daemon exits, or until whatever
# started this script is gone: `make run` killed by a signal it does not
# pass on (SIGINT or SIGKILL to make alone) must not leave the daemons
# running behind it.
PARENT=$PPID
while :; do
	if ! kill -0 $SRV 2>/dev/null || ! kill -0 $SIG 2>/dev/null; then
		echo "make run: a daemon exited (logs above): stopping the other" >&2
		break
	fi
	if [ "$PARENT" -gt 1 ] && ! kill -0 "$PARENT" 2>/dev/null; then
		echo "make run: its parent ($PARENT) is gone: stopping" >&2
		break
	fi
	sleep 1 & wait $! || true
done
stop 1
