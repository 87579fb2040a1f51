# ctest-labels: nosan
# ferry serve under load: 200 sequential requests (every endpoint kind, plain and streamed,
# bad ones among them) and 8 concurrent ones, all answered as expected, with the server's
# resident memory flat afterwards (within 5% of what it was after a warm-up of the same mix).
# Left out of the sanitizer pass: ASan's quarantine holds freed memory on purpose.
source "$(dirname "$0")/lib.sh"
source "$HERE/serve_lib.sh"
M=$FERRY_FIXTURES/models/pub-qwen3moe-tiny-F32.gguf
serve_start "$TMP/serve.log" -m "$M" -c 512 --queue 8 || exit 1

Q='{"role":"user","content":"Tell me about ferries."}'
BODIES=(
  "/v1/chat/completions|{\"messages\":[$Q],\"max_tokens\":8}|200"
  "/v1/chat/completions|{\"messages\":[$Q],\"max_tokens\":8,\"stream\":true,\"stream_options\":{\"include_usage\":true}}|200"
  "/v1/completions|{\"prompt\":\"Ferries are\",\"max_tokens\":8,\"stop\":[\"e\"]}|200"
  "/api/chat|{\"messages\":[$Q],\"options\":{\"num_predict\":8}}|200"
  "/api/generate|{\"prompt\":\"Ferries\",\"stream\":false,\"options\":{\"num_predict\":8}}|200"
  "/v1/chat/completions|{\"messages\":[$Q,{\"role\":\"assistant\",\"content\":\"Boats.\"},$Q],\"max_tokens\":8}|200"
  "/v1/chat/completions|{\"messages\":[$Q],\"n\":3}|400"
  "/v1/chat/completions|{\"messages\":[{\"role\":\"user\"|400"
  "/api/tags||200"
  "/metrics||200"
)

# one I: request number I of the mix; prints "ok" or what went wrong
one() {
  IFS='|' read -r path body want <<<"${BODIES[$(($1 % ${#BODIES[@]}))]}"
  local args=(-s -o /dev/null -w '%{http_code}' --max-time 60)
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  local got
  got=$(curl "${args[@]}" "$URL$path")
  [ "$got" = "$want" ] && echo ok || echo "request $1 ($path): $got, want $want"
}

# batch FROM N: N requests one after the other; then 8 at once
batch() {
  local i
  for ((i = $1; i < $1 + $2; i++)); do one $i; done
  local pids=()
  for i in $(seq 0 7); do
    one $((i * 7)) &
    pids+=($!)
  done
  wait "${pids[@]}"
}

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVE_PID/status"; }

batch 0 40 >"$TMP/warm.txt"
rss0=$(rss)
batch 40 200 >"$TMP/load.txt"
rss1=$(rss)
run_case "warm-up: every answer as expected" bash -c "! grep -v '^ok$' '$TMP/warm.txt'"
run_case "200 sequential + 8 concurrent: every answer as expected ($(grep -c '^ok$' "$TMP/load.txt") ok)" \
  bash -c "! grep -v '^ok$' '$TMP/load.txt'"
run_case "RSS flat: $rss0 KiB after the warm-up, $rss1 KiB after the load (within 5%)" \
  test $((rss1 * 100)) -le $((rss0 * 105)) -a $((rss1 * 100)) -ge $((rss0 * 95))
req metrics "/metrics"
check "metrics: no request waiting or generating" "'ferry_queue_length 0' in r('metrics').raw
  and 'ferry_requests_generating 0' in r('metrics').raw"
serve_stop INT
run_case "exit 0" test $? -eq 0
finish
