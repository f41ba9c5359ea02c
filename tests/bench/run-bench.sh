#!/bin/sh
# make bench: every benchmark figure, one line each, then the ratios.
#
#   tests/bench/run-bench.sh [BIN]
#
# Starts its own bimip-server + bimip-signal (and Debian's mosquitto for the
# peer comparison) on loopback, on ports the daemons bind themselves (port 0,
# read back from their ready files; mosquitto gets a port found free just
# before), in a temporary directory, and stops every process it started on
# exit.  The broker processes run on core $BROKER_CPU, the load generator on
# core $LOAD_CPU (see docs/performance.md, "Chat load").
#
# Sizes (environment):
#   BENCH_CONN=19000 BENCH_CONN_PROCS=16  connections: sessions, client processes
#   BENCH_CONN_INFLIGHT=16                handshakes in flight per client process
#                                         (0 = one at a time, the generator before 2026-11-22)
#   BENCH_P=100 BENCH_W=10 BENCH_T=10     pairs: pairs, window, seconds
#   BENCH_K=1000 BENCH_ROUNDS=5           fanout: subscribers, rounds
#   BENCH_SKIP="queue mqtt"               figures to leave out (queue connections
#                                         pairs disk fanout mqtt cluster)
#   BENCH_FSYNC=group                     the server's queue.fsync (always|group|none)
#   BENCH_GROUP_WINDOW=1ms                the server's queue.group_window
#   BENCH_SNAPSHOT_EVERY=200000           the server's state.snapshot_every
#   BENCH_KEEP=1                          keep the temporary directory (logs, data)
#   BENCH_QUEUE_ARGS=                     extra arguments of `bimip-bench queue`
set -u
BIN=${1:-build/bin}
# Absolute: the queue figure runs from the temporary directory.
BIN=$(cd "$BIN" && pwd) || exit 1
BROKER_CPU=${BROKER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CONN=${BENCH_CONN:-19000}
CONN_PROCS=${BENCH_CONN_PROCS:-16}
CONN_INFLIGHT=${BENCH_CONN_INFLIGHT:-16}
P=${BENCH_P:-100}
W=${BENCH_W:-10}
T=${BENCH_T:-10}
K=${BENCH_K:-1000}
ROUNDS=${BENCH_ROUNDS:-5}
SKIP=${BENCH_SKIP:-}

skip() { case " $SKIP " in *" $1 "*) return 0 ;; esac; return 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bimip-bench.XXXXXX") || exit 1
PIDS=""
cleanup() {
	for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
	for p in $PIDS; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [ -n "${BENCH_KEEP:-}" ]; then echo "# logs and data kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PIN_B=""
PIN_L=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
	PIN_B="taskset -c $BROKER_CPU"
	PIN_L="taskset -c $LOAD_CPU"
fi
BENCH="$PIN_L $BIN/bimip-bench"
FAIL=0

# json_field FILE KEY: a string or number member of a one-line JSON object.
json_field() {
	sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$1"
}

wait_file() {
	i=0
	while [ ! -s "$1" ]; do
		kill -0 "$2" 2>/dev/null || { echo "# $3 exited during start-up" >&2; return 1; }
		i=$((i + 1))
		[ $i -gt 600 ] && { echo "# $3 not ready after 30 s" >&2; return 1; }
		sleep 0.05
	done
}

# launch DAEMON DIR NAME: DAEMON (bimip-server, bimip-signal) on the broker
# core with DIR/config.json, logging to DIR/log; waits for DIR/ready and
# leaves the pid in $LAUNCHED (added to PIDS for the clean-up).
launch() {
	$PIN_B "$BIN/$1" -c "$2/config.json" -r "$2/ready" > "$2/log" 2>&1 &
	LAUNCHED=$!
	PIDS="$PIDS $LAUNCHED"
	wait_file "$2/ready" $LAUNCHED "$3" || { cat "$2/log" >&2; exit 1; }
}

# cpu_ticks PID...: user+system clock ticks the processes have used so far.
cpu_ticks() {
	t=0
	for p in "$@"; do
		v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
		t=$((t + v))
	done
	echo $t
}

# cpu_line NAME TICKS_BEFORE TICKS_AFTER PAIRS_OUTPUT: broker CPU per message,
# which the other engineers' jobs on a shared machine distort less than
# the rates do.
cpu_line() {
	n=$(echo "$4" | sed -n 's/.* received=\([0-9]*\).*/\1/p')
	awk -v name="$1" -v a="$2" -v b="$3" -v n="${n:-0}" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { if (n > 0) { us = (b - a) * 1e6 / hz / n;
		  printf "cpu %s broker_us/msg=%.1f msgs/s_per_broker_core=%.0f\n", name, us, (us > 0 ? 1e6 / us : 0) } }'
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

echo "# bimip bench $(date -u +%FT%TZ) on $(nproc) cores; broker cpu $BROKER_CPU, load cpu $LOAD_CPU"

# --- queue (bimip-bench queue) ----------------------------------------------
if ! skip queue; then
	# shellcheck disable=SC2086
	(cd "$TMP" && $BENCH queue ${BENCH_QUEUE_ARGS:-}) || FAIL=1
fi

# --- single node: server + signal -------------------------------------------
mkdir -p "$TMP/server" "$TMP/signal"
cat > "$TMP/server/config.json" <<JSON
{
  "node": { "id": "bench-server" },
  "data_dir": "$TMP/server/data",
  "listen": { "zmq": "tcp://127.0.0.1:0", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" },
  "queue": { "fsync": "${BENCH_FSYNC:-group}", "group_window": "${BENCH_GROUP_WINDOW:-1ms}" },
  "state": { "snapshot_every": ${BENCH_SNAPSHOT_EVERY:-200000} },
  "delivery": { "window": 4096 },
  "log": { "level": "warn" }
}
JSON
launch bimip-server "$TMP/server" bimip-server
SRV=$LAUNCHED
ZMQ=$(json_field "$TMP/server/ready" zmq)
cat > "$TMP/signal/config.json" <<JSON
{
  "node": { "id": "bench-signal" },
  "listen": { "ws": "127.0.0.1:0", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" },
  "servers": [ "$ZMQ" ],
  "limits": { "rate": 1000000, "burst": 1000000, "max_sessions": 100000 },
  "log": { "level": "warn" }
}
JSON
launch bimip-signal "$TMP/signal" bimip-signal
SIG=$LAUNCHED
URL="ws://$(json_field "$TMP/signal/ready" ws)/"
KEY="$TMP/server/data/token.key"
echo "# bimip-server pid $SRV, bimip-signal pid $SIG at $URL"

if ! skip connections; then
	C0=$(cpu_ticks $SRV $SIG)
	OUT=$($BENCH connections --url "$URL" --key "$KEY" -n "$CONN" -j "$CONN_PROCS" \
		--inflight "$CONN_INFLIGHT" --signal-pid "$SIG") || FAIL=1
	C1=$(cpu_ticks $SRV $SIG)
	echo "$OUT"
	# Broker CPU per session set up (includes the 1 s settling pause: an
	# upper bound).
	echo "$OUT" | grep -q '^connections' && awk -v a="$C0" -v b="$C1" -v n="$CONN" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { us = (b - a) * 1e6 / hz / n;
		  printf "cpu connections broker_us/session=%.1f sessions/s_per_broker_core=%.0f\n", us, (us > 0 ? 1e6 / us : 0) }'
fi

# The server's chat commit histogram now: "le count" per bucket.
commit_buckets() {
	$BIN/bimipctl --admin "$(json_field "$TMP/server/ready" admin)" --key bench-admin-key \
		metrics bimip_server_chat_commit_seconds_bucket 2>/dev/null |
		sed -n 's/.*le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
}

# commit_line NAME BEFORE AFTER: percentiles of the commits between the two.
commit_line() {
	printf '%s\n--\n%s\n' "$2" "$3" |
		awk -v label="commit $1 server_accept_to_durable" -f "$(dirname "$0")/hist-pct.awk"
}

PEAK=""
if ! skip pairs; then
	C0=$(cpu_ticks $SRV $SIG)
	OUT=$($BENCH pairs --url "$URL" --key "$KEY" -p "$P" -w "$W" -t "$T") || FAIL=1
	C1=$(cpu_ticks $SRV $SIG)
	echo "$OUT"
	cpu_line bimip "$C0" "$C1" "$OUT"
	PEAK=$(echo "$OUT" | sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p')
	if [ -n "$PEAK" ] && [ "$PEAK" -gt 0 ]; then
		HALF=$((PEAK / 2))
		echo "# the same at half the peak load ($HALF msgs/s offered)"
		H0=$(commit_buckets)
		HOUT=$($BENCH pairs --url "$URL" --key "$KEY" -p "$P" -w "$W" -t "$T" --rate "$HALF") \
			|| FAIL=1
		echo "$HOUT"
		# The server's share of that latency: from accepting a message to
		# both copies durable (bimip_server_chat_commit_seconds over the
		# run, warm-up included; percentiles interpolated in its buckets).
		commit_line half_load "$H0" "$(commit_buckets)"
	fi
	# The peak again with a write() per message: the default lets a sender
	# write the messages it has due at once in one write (msgs_per_write).
	C0=$(cpu_ticks $SRV $SIG)
	EOUT=$($BENCH pairs --url "$URL" --key "$KEY" -p "$P" -w "$W" -t "$T" --write-each) || FAIL=1
	C1=$(cpu_ticks $SRV $SIG)
	echo "$EOUT"
	cpu_line bimip-write-each "$C0" "$C1" "$EOUT"
	EPEAK=$(echo "$EOUT" | sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p')
fi

# The floor under any durable answer: one write + fdatasync on the server's
# disk, measured now, with the server idle (a message's latency also holds
# the group window and the sync in flight when it arrived).
if ! skip disk; then
	DOUT=$($BENCH disk --dir "$TMP/server/data" -t 3) || FAIL=1
	echo "$DOUT"
	H99=$(echo "${HOUT:-}" | sed -n 's/.* p99=\([0-9.]*\)ms.*/\1/p')
	D99=$(echo "$DOUT" | sed -n 's/.* fsync_p99=\([0-9.]*\)ms.*/\1/p')
	if [ -n "$H99" ] && [ -n "$D99" ]; then
		awk -v h="$H99" -v d="$D99" 'BEGIN { if (d > 0)
			printf "ratio half_load_p99/disk_fsync_p99 = %.1f (%.3f ms / %.3f ms)\n", h / d, h, d }'
	fi
fi

if ! skip fanout; then
	$BENCH fanout --url "$URL" --key "$KEY" -k "$K" -r "$ROUNDS" || FAIL=1
fi

kill -TERM $SIG $SRV 2>/dev/null
wait $SIG $SRV 2>/dev/null
PIDS=""
if grep -iE " error |AddressSanitizer|runtime error" "$TMP/server/log" "$TMP/signal/log" >&2; then
	echo "# the daemons logged errors (above)" >&2
fi

# --- peer: mosquitto, same pairs workload -----------------------------------
if ! skip mqtt && [ -n "$PEAK" ]; then
	if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
		echo "# mosquitto not installed (deploy/deps.sh --bench): no ratio"
	else
		MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
		MPORT=$(free_port)
		mkdir -p "$TMP/mosquitto"
		# Persistence on, as durable as mosquitto gets: the in-memory store is
		# written to disk every autosave_interval seconds (it never fsyncs
		# per message; see docs/performance.md).  TCP_NODELAY as the signal
		# sets it on its sessions.
		cat > "$TMP/mosquitto/mosquitto.conf" <<CONF
listener $MPORT 127.0.0.1
set_tcp_nodelay true
user $(id -un)
allow_anonymous true
persistence true
persistence_location $TMP/mosquitto/
autosave_interval 1
autosave_on_changes false
log_dest stderr
log_type error
log_type warning
CONF
		$PIN_B "$MOSQ" -c "$TMP/mosquitto/mosquitto.conf" > "$TMP/mosquitto/log" 2>&1 &
		MQ=$!
		PIDS="$MQ"
		i=0
		until python3 -c "import socket; socket.create_connection(('127.0.0.1', $MPORT), 1)" \
			2>/dev/null; do
			i=$((i + 1))
			kill -0 $MQ 2>/dev/null && [ $i -lt 200 ] || {
				echo "# mosquitto did not start" >&2; cat "$TMP/mosquitto/log" >&2; FAIL=1; break; }
			sleep 0.05
		done
		C0=$(cpu_ticks $MQ)
		MOUT=$($BENCH pairs --mqtt "127.0.0.1:$MPORT" -p "$P" -w "$W" -t "$T") || FAIL=1
		C1=$(cpu_ticks $MQ)
		echo "$MOUT"
		cpu_line mosquitto "$C0" "$C1" "$MOUT"
		if ! skip connections; then
			$BENCH connections --mqtt "127.0.0.1:$MPORT" -n "$CONN" -j "$CONN_PROCS" \
				--inflight "$CONN_INFLIGHT" --signal-pid "$MQ" || FAIL=1
		fi
		MRATE=$(echo "$MOUT" | sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p')
		if [ -n "$MRATE" ] && [ "$MRATE" -gt 0 ]; then
			awk -v b="$PEAK" -v m="$MRATE" \
				'BEGIN { printf "ratio bimip/mosquitto = %.2f (pairs msgs/s %d / %d)\n", b / m, b, m }'
		fi
		C0=$(cpu_ticks $MQ)
		MEOUT=$($BENCH pairs --mqtt "127.0.0.1:$MPORT" -p "$P" -w "$W" -t "$T" --write-each) || FAIL=1
		C1=$(cpu_ticks $MQ)
		echo "$MEOUT"
		cpu_line mosquitto-write-each "$C0" "$C1" "$MEOUT"
		MERATE=$(echo "$MEOUT" | sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p')
		if [ -n "${EPEAK:-}" ] && [ -n "$MERATE" ] && [ "$MERATE" -gt 0 ]; then
			awk -v b="$EPEAK" -v m="$MERATE" \
				'BEGIN { printf "ratio bimip/mosquitto write-each = %.2f (pairs msgs/s %d / %d)\n", b / m, b, m }'
		fi
	fi
fi

# --- three nodes: 3 servers + 2 signals, the same pairs workload -------------
# Every process on the broker core, as above, so this measures what the
# cross-server path costs (most chats have their two users on different
# servers: a pending record and two remote appends per message), not scale-out.
if ! skip cluster && ! skip pairs; then
	CKEY="bench-cluster-key"
	SEED=""
	CPIDS=""
	PIDS_BEFORE=$PIDS
	for n in 0 1 2; do
		d="$TMP/c-server-$n"
		mkdir -p "$d"
		cat > "$d/config.json" <<JSON
{
  "node": { "id": "bench-s$n" },
  "data_dir": "$d/data",
  "listen": { "zmq": "tcp://127.0.0.1:0", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" },
  "cluster": { "bind": "127.0.0.1:0", "key": "$CKEY", "period": "200ms"$SEED },
  "queue": { "fsync": "${BENCH_FSYNC:-group}", "group_window": "${BENCH_GROUP_WINDOW:-1ms}" },
  "state": { "snapshot_every": ${BENCH_SNAPSHOT_EVERY:-200000} },
  "delivery": { "window": 4096 },
  "log": { "level": "warn" }
}
JSON
		launch bimip-server "$d" "bimip-server bench-s$n"
		CPIDS="$CPIDS $LAUNCHED"
		[ -z "$SEED" ] && SEED=", \"seeds\": [ \"$(json_field "$d/ready" gossip)\" ]"
	done
	CURLS=""
	for n in 0 1; do
		d="$TMP/c-signal-$n"
		mkdir -p "$d"
		cat > "$d/config.json" <<JSON
{
  "node": { "id": "bench-g$n" },
  "listen": { "ws": "127.0.0.1:0", "admin": "127.0.0.1:0" },
  "admin": { "key": "bench-admin-key" },
  "servers": [],
  "cluster": { "bind": "127.0.0.1:0", "key": "$CKEY", "period": "200ms"$SEED },
  "limits": { "rate": 1000000, "burst": 1000000, "max_sessions": 100000 },
  "log": { "level": "warn" }
}
JSON
		launch bimip-signal "$d" "bimip-signal bench-g$n"
		CPIDS="$CPIDS $LAUNCHED"
		CURLS="$CURLS ws://$(json_field "$d/ready" ws)/"
	done
	# Ready when both signals have the three servers up and the servers have
	# settled their owner set (a session at an unsettled server is refused).
	i=0
	until [ "$(for n in 0 1; do "$BIN/bimipctl" --admin "$(json_field "$TMP/c-signal-$n/ready" admin)" \
			--key bench-admin-key --json status 2>/dev/null | grep -c '"up": true'; done \
			| awk '{ s += $1 } END { print s + 0 }')" -ge 6 ]; do
		i=$((i + 1))
		[ $i -gt 300 ] && { echo "# the 3-node cluster did not form in 30 s" >&2; FAIL=1; break; }
		sleep 0.1
	done
	sleep 1
	CKEYFILE="$TMP/c-server-0/data/token.key"
	HALF_P=$((P / 2 > 0 ? P / 2 : 1))
	# shellcheck disable=SC2086
	C0=$(cpu_ticks $CPIDS)
	n=0
	for u in $CURLS; do
		$BENCH pairs --url "$u" --key "$CKEYFILE" -p "$HALF_P" -w "$W" -t "$T" \
			> "$TMP/c-pairs-$n.out" 2>&1 &
		eval "BP$n=\$!"
		n=$((n + 1))
	done
	wait "$BP0" || FAIL=1
	wait "$BP1" || FAIL=1
	# shellcheck disable=SC2086
	C1=$(cpu_ticks $CPIDS)
	cat "$TMP/c-pairs-0.out" "$TMP/c-pairs-1.out" | sed 's/^pairs bimip/pairs bimip-3node-half/'
	OUT3=$(cat "$TMP/c-pairs-0.out" "$TMP/c-pairs-1.out" | awk '
		/^pairs / { for (i = 1; i <= NF; i++) { split($i, kv, "=");
			if (kv[1] == "received") r += kv[2]; if (kv[1] == "msgs/s") m += kv[2];
			if (kv[1] == "p99") { v = kv[2] + 0; if (v > p99) p99 = v } } }
		END { printf "pairs bimip-3node P=%d received=%d msgs/s=%.0f p99_max=%.3fms\n", '"$HALF_P"' * 2, r, m, p99 }')
	echo "$OUT3"
	cpu_line bimip-3node "$C0" "$C1" "$OUT3"
	R3=$(echo "$OUT3" | sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p')
	if [ -n "$PEAK" ] && [ "$PEAK" -gt 0 ] && [ -n "$R3" ]; then
		awk -v c="$R3" -v s="$PEAK" \
			'BEGIN { printf "ratio bimip 3-node/1-node = %.2f (pairs msgs/s %d / %d, every process on one core)\n", c / s, c, s }'
	fi
	if [ -n "${MRATE:-}" ] && [ "${MRATE:-0}" -gt 0 ] && [ -n "$R3" ]; then
		awk -v c="$R3" -v m="$MRATE" \
			'BEGIN { printf "ratio bimip 3-node/mosquitto = %.2f (pairs msgs/s %d / %d)\n", c / m, c, m }'
	fi
	# shellcheck disable=SC2086
	kill -TERM $CPIDS 2>/dev/null
	# shellcheck disable=SC2086
	wait $CPIDS 2>/dev/null
	PIDS=$PIDS_BEFORE
	if grep -iE " error |AddressSanitizer|runtime error" "$TMP"/c-*/log >&2; then
		echo "# the cluster's daemons logged errors (above)" >&2
	fi
fi
exit $FAIL
