#!/usr/bin/env bash
# tests/fuzz/smoke.sh FUZZER SEED_DIR: a short libFuzzer run of one target, as part of the
# test command (so the targets keep building and their harness checks keep holding). It
# runs every committed seed, then mutates for FERRY_FUZZ_SMOKE_S seconds (default 25) into
# a scratch corpus; the committed corpus is never written. Any crash, leak or sanitizer
# report fails the test and leaves the input in the scratch directory, which is printed.
set -u
fuzzer=$(realpath "$1") seeds=$(realpath "$2")
secs=${FERRY_FUZZ_SMOKE_S:-25}
[ -x "$fuzzer" ] || { echo "FAIL: no fuzz target at $fuzzer"; exit 1; }
[ -d "$seeds" ] && [ -n "$(ls -A "$seeds")" ] || { echo "FAIL: no seed corpus at $seeds"; exit 1; }
work=$(mktemp -d /tmp/ferry_fuzz_XXXXXX)
mkdir "$work/corpus"
(cd "$work" && "$fuzzer" -max_total_time="$secs" -seed=1 -max_len=16384 -timeout=20 \
   -rss_limit_mb=4096 -print_final_stats=1 "$work/corpus" "$seeds") >"$work/log" 2>&1
rc=$?
grep -E "^#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units" "$work/log" | tail -n 3
if [ $rc -ne 0 ]; then
  tail -n 40 "$work/log"
  echo "FAIL: $(basename "$fuzzer") exited $rc; inputs and log kept in $work"
  exit 1
fi
rm -rf "$work"
echo "ok: $(basename "$fuzzer") ran ${secs}s without a finding"
