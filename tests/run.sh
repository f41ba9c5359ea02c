#!/bin/sh
# Runs every test binary in DIR: unit tests (test_*), corpus replays
# (replay_fuzz_*, each over tests/fuzz/corpus/<name>/), then integration
# tests (it_*).  Each runs with a time limit; sanitizer reports fail the run.
# Prints one closing line: "N passed, N failed".
#
#   tests/run.sh DIR [PATTERN]
#
# BIMIP_BIN (set by make) is where integration tests find the daemons.
set -u
dir=$1
pat=${2:-}
pass=0
fail=0
failed=""
logdir=${BIMIP_TEST_LOGS:-build/test-logs}
mkdir -p "$logdir"
# Sanitizers: abort on the first report so a test cannot pass past one.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:halt_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export CMOCKA_MESSAGE_OUTPUT=stdout

run_one() {
	name=$1; shift
	log="$logdir/$name.log"
	start=$(date +%s)
	timeout -k 5 "${BIMIP_TEST_TIMEOUT:-300}" "$@" >"$log" 2>&1
	rc=$?
	secs=$(( $(date +%s) - start ))
	if [ $rc -eq 0 ] && grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$log"; then
		rc=99
	fi
	if [ $rc -eq 0 ]; then
		pass=$((pass + 1))
		printf 'PASS %-40s %3ss\n' "$name" "$secs"
	else
		fail=$((fail + 1))
		failed="$failed $name"
		printf 'FAIL %-40s %3ss (exit %s, log %s)\n' "$name" "$secs" "$rc" "$log"
		tail -n 30 "$log" | sed 's/^/    | /'
	fi
}

for t in "$dir"/test_*; do
	[ -x "$t" ] || continue
	n=$(basename "$t")
	case "$n" in *"$pat"*) ;; *) continue ;; esac
	run_one "$n" "$t"
done
for t in "$dir"/replay_fuzz_*; do
	[ -x "$t" ] || continue
	n=$(basename "$t")
	case "$n" in *"$pat"*) ;; *) continue ;; esac
	corpus=tests/fuzz/corpus/${n#replay_fuzz_}
	run_one "$n" "$t" "$corpus"
done
for t in "$dir"/it_*; do
	[ -x "$t" ] || continue
	n=$(basename "$t")
	case "$n" in *"$pat"*) ;; *) continue ;; esac
	run_one "$n" "$t"
done
# The edge once more with read() and write() instead of io_uring: what runs
# where a kernel or a container's seccomp profile refuses io_uring.
if [ -x "$dir/it_edge" ]; then
	case "it_edge-no-uring" in
	*"$pat"*) run_one it_edge-no-uring env BIMIP_IO_URING=0 "$dir/it_edge" ;;
	esac
fi
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
