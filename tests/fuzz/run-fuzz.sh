#!/bin/sh
# make fuzz: run every libFuzzer target for SECONDS each, starting from its
# corpus in tests/fuzz/corpus/<name>/.  New inputs go to a scratch directory
# (build/fuzz/new/<name>/), not into the committed corpus: copy the few that
# add coverage by hand (libFuzzer -merge=1 helps).  Crashes are saved under
# build/fuzz/artifacts/ and fail the run.
#
#   tests/fuzz/run-fuzz.sh SECONDS DIR_OF_FUZZERS
set -u
secs=${1:-60}
dir=${2:-build/fuzz/fuzzers}
fail=0
ran=0
mkdir -p build/fuzz/artifacts
for f in "$dir"/fuzz_*; do
	[ -x "$f" ] || continue
	name=$(basename "$f")
	corpus=tests/fuzz/corpus/${name#fuzz_}
	scratch=build/fuzz/new/${name#fuzz_}
	mkdir -p "$corpus" "$scratch"
	log=build/fuzz/$name.log
	"$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
		-artifact_prefix=build/fuzz/artifacts/"$name"- -print_final_stats=1 \
		"$scratch" "$corpus" >"$log" 2>&1
	rc=$?
	runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
	ran=$((ran + 1))
	if [ $rc -eq 0 ]; then
		echo "PASS $name: ${runs:-?} runs in ${secs}s"
	else
		fail=$((fail + 1))
		echo "FAIL $name (exit $rc), see $log:"
		grep -E "ERROR|SUMMARY|artifact" "$log" | head -5 | sed 's/^/    /'
	fi
done
echo "$((ran - fail)) passed, $fail failed"
[ $fail -eq 0 ] && [ $ran -gt 0 ]
