# tests/e2e/serve_lib.sh: helpers of the `ferry serve` tests (sourced after lib.sh): start a
# server on a free port, send requests with curl, check the answers with serve_check.py.
SERVE_PID=
URL=
trap 'serve_kill; rm -rf "$TMP"' EXIT

serve_kill() {
  if [ -n "$SERVE_PID" ]; then kill -KILL "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null; fi
  SERVE_PID=
}

# serve_start LOG ARGS...: starts `ferry serve --port 0 ARGS` (stderr to LOG) and waits until
# it prints the address it listens on; sets SERVE_PID and URL.
serve_start() {
  local log=$1
  shift
  "$FERRY_BIN" serve --port 0 -t 1 "$@" 2>"$log" &
  SERVE_PID=$!
  for _ in $(seq 1 600); do
    URL=$(grep -o 'listening on http://[^ ]*' "$log" | head -n 1 | sed 's/listening on //')
    [ -n "$URL" ] && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "ferry serve did not start:"
  cat "$log"
  SERVE_PID=
  return 1
}

# serve_stop [SIGNAL]: signals the server (INT) and waits; returns its exit code.
serve_stop() {
  local rc=0
  kill "-${1:-INT}" "$SERVE_PID"
  wait "$SERVE_PID" || rc=$?
  SERVE_PID=
  return $rc
}

# req NAME PATH [BODY [CURL ARGS...]]: GET (no body) or POST BODY to the server; the
# answer's headers and body go to $TMP/NAME.head and $TMP/NAME.body.
req() {
  local name=$1 path=$2
  shift 2
  local args=(-s -N -D "$TMP/$name.head" -o "$TMP/$name.body" --max-time 120)
  if [ $# -gt 0 ]; then
    args+=(-H 'Content-Type: application/json' --data-binary "$1")
    shift
  fi
  curl "${args[@]}" "$@" "$URL$path" || true
}

# check NAME EXPR: serve_check.py's EXPR over the saved answers, counted as one case.
check() {
  run_case "$1" python3 "$HERE/serve_check.py" "$TMP" "$2"
}

# metric NAME: the value of a /metrics line that starts with NAME (label set included).
metric() {
  curl -s "$URL/metrics" "${AUTH[@]}" | awk -v k="$1" 'index($0, k" ") == 1 { print $2 }'
}
AUTH=()
