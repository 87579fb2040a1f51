# ferry serve under trouble, with generation slowed to one token per 40 ms
# (FERRY_SERVE_PACE_MS) so that requests overlap: a client that hangs up mid-stream (or
# while waiting for a plain answer) stops its generation within a token, a full queue
# answers 503 in each API's error shape, and SIGTERM during a generation finishes the token,
# tells the streaming client and the waiting one, and exits 0.
source "$(dirname "$0")/lib.sh"
source "$HERE/serve_lib.sh"
M=$FERRY_FIXTURES/models/pub-qwen3moe-tiny-F32.gguf
export FERRY_SERVE_PACE_MS=40
LONG='{"messages":[{"role":"user","content":"Tell me everything."}],"max_tokens":400,"temperature":0'
SHORT='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"temperature":0}'

# wait_metric NAME VALUE: until /metrics shows NAME at VALUE (10 s at most)
wait_metric() {
  for _ in $(seq 1 200); do
    [ "$(metric "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1 = $2 (now $(metric "$1"))"
  return 1
}

serve_start "$TMP/serve.log" -m "$M" -c 1024 || exit 1

# --- a client that reads 5 chunks of a stream and hangs up
g0=$(metric ferry_generated_tokens_total)
cat >"$TMP/hangup.py" <<'EOF'
import http.client, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
c.request("POST", "/v1/chat/completions", sys.argv[2] + ',"stream":true}',
          {"Content-Type": "application/json"})
r = c.getresponse()
assert r.status == 200, r.status
chunks = 0
while chunks < 5:
    line = r.fp.readline().decode()
    assert line, "stream ended early"
    if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
        chunks += 1
c.sock.close()  # hang up mid-stream
print(chunks)
EOF
run_case "stream: read 5 chunks, hang up" python3 "$TMP/hangup.py" "$URL" "$LONG"
run_case "hang-up noticed (cancelled counter)" wait_metric ferry_generations_cancelled_total 1
g1=$(metric ferry_generated_tokens_total)
run_case "stopped within a token of the hang-up: $((g1 - g0)) tokens for 5 chunks" \
  test $((g1 - g0)) -le 6
run_case "log says the client left" grep -q "stopped after .* generated tokens (the client left)" "$TMP/serve.log"

# --- a plain (non-streamed) request whose client gives up after 0.5 s
curl -s -o /dev/null --max-time 0.5 -H 'Content-Type: application/json' --data-binary "$LONG}" \
  "$URL/v1/chat/completions"
run_case "plain request: hang-up noticed" wait_metric ferry_generations_cancelled_total 2
g2=$(metric ferry_generated_tokens_total)
run_case "plain request: stopped early ($((g2 - g1)) of 400 tokens)" test $((g2 - g1)) -lt 100
req after "/v1/chat/completions" "$SHORT"
check "serving normally afterwards" "r('after').status == 200"
serve_stop INT
run_case "exit 0" test $? -eq 0

# --- a full queue: one generating, one waiting (--queue 1), the third is refused
serve_start "$TMP/serve_q.log" -m "$M" -c 1024 --queue 1 || exit 1
curl -s -N -o "$TMP/a.body" -H 'Content-Type: application/json' --data-binary "$LONG,\"stream\":true}" \
  "$URL/v1/chat/completions" &
a_pid=$!
run_case "first request generating" wait_metric ferry_requests_generating 1
req b "/v1/chat/completions" "$SHORT" &
b_pid=$!
run_case "second request waiting" wait_metric ferry_queue_length 1
req c "/v1/chat/completions" "$SHORT"
req d "/api/generate" '{"prompt":"Hi","options":{"num_predict":2}}'
check "queue full: 503 with an OpenAI error" "r('c').status == 503
  and r('c').json['error']['type'] == 'unavailable_error' and '--queue 1' in r('c').err"
check "queue full: 503 with an Ollama error" "r('d').status == 503 and 'busy' in r('d').json['error']"
kill "$a_pid" 2>/dev/null # the streaming client leaves: the waiting request runs
wait "$a_pid" 2>/dev/null
wait "$b_pid"
check "the waiting request is answered once the first client leaves" "r('b').status == 200"
run_case "queue empty again" wait_metric ferry_queue_length 0
serve_stop TERM
run_case "exit 0" test $? -eq 0

# --- SIGTERM during a generation, with a request waiting
serve_start "$TMP/serve_t.log" -m "$M" -c 1024 -t 2 || exit 1 # a pool worker exists: signals may land on it
req e "/v1/chat/completions" "$LONG,\"stream\":true}" &
e_pid=$!
run_case "streaming" wait_metric ferry_requests_generating 1
req f "/api/chat" '{"messages":[{"role":"user","content":"Hi"}],"stream":false}' &
f_pid=$!
run_case "one waiting" wait_metric ferry_queue_length 1
sleep 0.3
t0=$(date +%s%N)
serve_stop TERM
rc=$?
t1=$(date +%s%N)
wait "$e_pid" "$f_pid"
run_case "SIGTERM: exit 0 within 2 s ($(((t1 - t0) / 1000000)) ms)" test $rc -eq 0 -a $(((t1 - t0) / 1000000)) -lt 2000
check "SIGTERM: the stream ends with an error event" "r('e').status == 200
  and 'shutting down' in r('e').events[-1]['error']['message'] and len(r('e').text) > 0"
check "SIGTERM: the waiting request gets 503" "r('f').status == 503 and 'shutting down' in r('f').json['error']"
finish
