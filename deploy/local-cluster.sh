#!/bin/sh
# A local cluster on loopback, gossiping through one seed:
#   deploy/local-cluster.sh start [BIN]   servers + 2 signals, in the background
#   deploy/local-cluster.sh stop          SIGTERM everything it started
#   deploy/local-cluster.sh status        bimipctl cluster members
#
# Signals: ws://127.0.0.1:4000/ and ws://127.0.0.1:4002/ (admin :4001, :4003).
# Servers: ZeroMQ 4100/4110/4120, admin 4101/4111/4121, gossip 4102/4112/4122.
# SERVERS (default 3) sets how many servers start; users and chats are
# spread over them and routed between them (docs/cluster.md).
# Data under var/cluster/; logs in var/cluster/*.log; one admin key for
# every node in var/cluster/admin.key.
set -eu
cmd=${1:-}
BIN=${2:-build/bin}
DIR=var/cluster
SERVERS=${SERVERS:-3}
KEY=${CLUSTER_KEY:-local-cluster-key}

wait_ready() {
	i=0
	while [ ! -f "$1" ]; do
		i=$((i + 1))
		if [ $i -gt 600 ]; then echo "local-cluster: $2 not ready, see $DIR/$2.log" >&2; exit 1; fi
		sleep 0.05
	done
}

case "$cmd" in
start)
	mkdir -p "$DIR"
	[ -f "$DIR/pids" ] && { echo "local-cluster: already started (stop first)" >&2; exit 1; }
	: > "$DIR/pids"
	# One admin key for every node, so bimipctl works against any of them
	# (and follows a 421 to the server that owns a user).
	if [ ! -s "$DIR/admin.key" ]; then
		(umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$DIR/admin.key")
	fi
	AKEY=$(cat "$DIR/admin.key")
	# Every node gets every server as a seed (each skips itself): a server
	# restarted with seeds waits to hear the cluster before it serves.
	SEEDS=""
	n=0
	while [ $n -lt "$SERVERS" ]; do
		SEEDS="$SEEDS${SEEDS:+, }\"127.0.0.1:$((4102 + 10 * n))\""
		n=$((n + 1))
	done
	n=0
	while [ $n -lt "$SERVERS" ]; do
		p=$((4100 + 10 * n))
		cat > "$DIR/server-$n.json" <<JSON
{ "node": { "id": "server-$n" }, "data_dir": "$DIR/server-$n",
  "listen": { "zmq": "tcp://127.0.0.1:$p", "admin": "127.0.0.1:$((p + 1))" }, "admin": { "key": "$AKEY" },
  "cluster": { "bind": "127.0.0.1:$((p + 2))", "key": "$KEY", "seeds": [ $SEEDS ] } }
JSON
		rm -f "$DIR/server-$n.ready"
		"$BIN/bimip-server" -c "$DIR/server-$n.json" -r "$DIR/server-$n.ready" \
			> "$DIR/server-$n.log" 2>&1 &
		echo $! >> "$DIR/pids"
		wait_ready "$DIR/server-$n.ready" "server-$n"
		n=$((n + 1))
	done
	for n in 0 1; do
		p=$((4000 + 2 * n))
		cat > "$DIR/signal-$n.json" <<JSON
{ "node": { "id": "signal-$n" }, "servers": [],
  "listen": { "ws": "127.0.0.1:$p", "admin": "127.0.0.1:$((p + 1))" }, "admin": { "key": "$AKEY" },
  "cluster": { "bind": "127.0.0.1:$((4200 + n))", "key": "$KEY", "seeds": [ $SEEDS ] } }
JSON
		rm -f "$DIR/signal-$n.ready"
		"$BIN/bimip-signal" -c "$DIR/signal-$n.json" -r "$DIR/signal-$n.ready" \
			> "$DIR/signal-$n.log" 2>&1 &
		echo $! >> "$DIR/pids"
		wait_ready "$DIR/signal-$n.ready" "signal-$n"
	done
	echo "local cluster up: $SERVERS server(s), signals ws://127.0.0.1:4000/ and ws://127.0.0.1:4002/"
	echo "admin key of every node: $DIR/admin.key (bimipctl --key-file $DIR/admin.key ...); stop with: $0 stop"
	;;
stop)
	[ -f "$DIR/pids" ] || { echo "local-cluster: not started" >&2; exit 0; }
	for p in $(cat "$DIR/pids"); do kill -TERM "$p" 2>/dev/null || true; done
	for p in $(cat "$DIR/pids"); do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -f "$DIR/pids"
	echo "local cluster stopped"
	;;
status)
	"$BIN/bimipctl" --admin 127.0.0.1:4101 --key-file "$DIR/admin.key" cluster members
	;;
*)
	echo "usage: $0 start|stop|status [BIN]" >&2
	exit 2
	;;
esac
