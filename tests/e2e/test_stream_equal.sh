# Stream mode must equal full mode bit for bit — token ids and log-probabilities, in the
# exact and the fast path, through `ferry score` and `ferry run` — for expert caches from
# the smallest that works (read from ferry's own error message) to everything-fits; one
# byte less than the minimum must be refused with a message naming it.
# ctest-labels: slow
source "$(dirname "$0")/lib.sh"
min_ram() { # prints the --ram value ferry names as the minimum for stream mode
  "$FERRY_BIN" score -m "$1" --ids "1 2" --from 1 --json "$TMP/x.json" --mode stream --ram 1 $2 2>&1 |
    sed -n 's/.*use --ram \([0-9]*\).*/\1/p'
}
for m in "${MODELS[@]}"; do
  path=$FERRY_FIXTURES/models/$m.gguf
  for exact in "" "--exact"; do
    min=$(min_ram "$path" "$exact")
    if [ -z "$min" ]; then
      FAILS=$((FAILS + 1)); echo "FAIL $m: no minimum in the error message"; continue
    fi
    mid=$((min + min / 2))
    expect_error "$m $exact below minimum" "too small for stream mode" \
      "$FERRY_BIN" score -m "$path" --ids "1 2" --from 1 --json "$TMP/x.json" --mode stream --ram $((min - 1)) $exact
    for ram in $min $mid 4G; do
      run_case "$m score $exact stream --ram $ram == full" \
        $CHECK same "$m" --extra-a="--mode full $exact" --extra-b="--mode stream --ram $ram $exact"
    done
    run_case "$m run $exact stream --ram $min == full" \
      $CHECK same-run "$m" --extra-a="--mode full $exact" --extra-b="--mode stream --ram $min $exact"
  done
done
# next-layer prefetch changes what is cached, never the numbers
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M; do
  min=$(min_ram "$FERRY_FIXTURES/models/$m.gguf" "")
  run_case "$m run stream --prefetch == full" \
    $CHECK same-run "$m" --extra-a="--mode full" --extra-b="--mode stream --ram $min --prefetch"
done
finish
