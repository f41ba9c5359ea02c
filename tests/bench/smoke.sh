#!/bin/sh
# A quick pass through the whole `make bench` driver at toy sizes (about 20
# seconds): checks that every figure is produced and every process started
# is stopped, not what the figures are.
#
#   tests/bench/smoke.sh [BIN]
set -u
BIN=${1:-build/bin}
OUT=$(BENCH_CONN=200 BENCH_CONN_PROCS=2 BENCH_P=4 BENCH_W=4 BENCH_T=2 BENCH_K=20 \
	BENCH_ROUNDS=2 BENCH_SKIP="${BENCH_SKIP:-queue}" \
	"$(dirname "$0")/run-bench.sh" "$BIN")
rc=$?
echo "$OUT"
for fig in "connections bimip" "pairs bimip" "commit half_load" "cpu bimip-write-each" "disk" "ratio half_load_p99/disk_fsync_p99" "fanout bimip" "pairs bimip-3node"; do
	echo "$OUT" | grep -q "^$fig " || { echo "smoke: no '$fig' line" >&2; rc=1; }
done
if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
	echo "$OUT" | grep -q "^ratio bimip/mosquitto = " || { echo "smoke: no ratio line" >&2; rc=1; }
	echo "$OUT" | grep -q "^ratio bimip/mosquitto write-each = " ||
		{ echo "smoke: no write-each ratio line" >&2; rc=1; }
fi
[ $rc -eq 0 ] && echo "smoke: ok"
exit $rc
