#!/usr/bin/env bash
# bench/serve_ttft.sh: what the prompt cache of `ferry serve` buys a multi-turn chat, and
# what the HTTP layer adds to each request.
#
# For the prompt cache on and off (--no-prompt-cache), a fresh server runs a two-turn chat:
# turn 1 is a document of about WORDS words and a question, turn 2 repeats turn 1 with the
# answer and asks a short follow-up (what chat apps send). Each turn is a streamed request;
# the client's time to first byte is curl's time_starttransfer (ferry starts a stream's
# response with its first token), the engine's TTFT is the `timings.ttft_ms` the last chunk
# reports (prompt cache lookup, prefill, first sample). Then REPEAT short follow-ups on the
# warm server give the server's added latency: first byte minus engine TTFT.
#
# usage: bench/serve_ttft.sh   (env: MODEL=/var/tmp/s30.gguf FERRY=build/ferry THREADS=2
#        RAM=2G MODE=stream WORDS=700 REPEAT=10 CTX=4096)
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=${MODEL:-/var/tmp/s30.gguf}
FERRY=${FERRY:-$src/build/ferry}
THREADS=${THREADS:-2}
RAM=${RAM:-2G}
MODE=${MODE:-stream}
WORDS=${WORDS:-700}
REPEAT=${REPEAT:-10}
CTX=${CTX:-4096}
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -KILL $pid 2>/dev/null; rm -rf "$tmp"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit:  $(git -C "$src" rev-parse --short HEAD)$(git -C "$src" diff --quiet || echo ' (dirty)')"
echo "model:   $MODEL, --mode $MODE --ram $RAM -t $THREADS -c $CTX"

python3 - "$WORDS" >"$tmp/doc.txt" <<'EOF'
import sys
words = ("the ferry leaves the harbour at dawn and carries cars trucks bicycles and people "
         "across the grey water while gulls follow the wake and the captain checks the "
         "weather the tide and the timetable").split()
n = int(sys.argv[1])
print(" ".join(words[(i * 7) % len(words)] + ("." if i % 17 == 16 else "") for i in range(n)))
EOF

# turn NAME BODYFILE: one streamed request; prints "ttfb_ms engine_ttft_ms prompt_n cache_n"
turn() {
  local ttfb
  ttfb=$(curl -s -N -o "$tmp/$1.sse" -w '%{time_starttransfer}' -H 'Content-Type: application/json' \
    --data-binary "@$2" "$url/v1/chat/completions")
  python3 - "$tmp/$1.sse" "$ttfb" <<'EOF'
import json, sys
ev = [json.loads(l[6:]) for l in open(sys.argv[1]) if l.startswith("data: {")]
t = [e for e in ev if "timings" in e][-1]["timings"]
print("%.2f %.2f %d %d" % (float(sys.argv[2]) * 1e3, t["ttft_ms"], t["prompt_n"], t["cache_n"]))
EOF
}

# body FILE [ANSWER_SSE FOLLOWUP]: turn 1, or turn 2 built from turn 1's streamed answer
body() {
  python3 - "$tmp/doc.txt" "$@" <<'EOF'
import json, sys
doc = open(sys.argv[1]).read().strip()
msgs = [{"role": "user", "content": "Read this log and say what the ferry carries.\n\n" + doc}]
if len(sys.argv) > 3:
    ev = [json.loads(l[6:]) for l in open(sys.argv[3]) if l.startswith("data: {")]
    answer = "".join(c["delta"].get("content") or "" for e in ev for c in e.get("choices", []))
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": sys.argv[4]}]
print(json.dumps({"messages": msgs, "max_tokens": 16, "temperature": 0, "stream": True}),
      file=open(sys.argv[2], "w"))
EOF
}

start() {
  "$FERRY" serve -m "$MODEL" --mode "$MODE" --ram "$RAM" -t "$THREADS" -c "$CTX" --port 0 "$@" \
    2>"$tmp/serve.log" &
  pid=$!
  until url=$(grep -o 'http://[^ ]*' "$tmp/serve.log"); do
    kill -0 $pid 2>/dev/null || { cat "$tmp/serve.log"; exit 1; }
    sleep 0.2
  done
}
stop() {
  kill -INT $pid
  wait $pid || { echo "ferry serve exited with $?:"; tail -5 "$tmp/serve.log"; }
  pid=
}

echo
echo "| prompt cache | turn 1 TTFT (prompt tokens) | turn 2 TTFT (computed / cached tokens) | turn 2 / turn 1 |"
echo "|---|---|---|---|"
for cache in on off; do
  flags=()
  [ $cache = off ] && flags=(--no-prompt-cache)
  start "${flags[@]}"
  body "$tmp/t1.json"
  read -r b1 e1 p1 c1 < <(turn t1 "$tmp/t1.json")
  body "$tmp/t2.json" "$tmp/t1.sse" "And who follows the wake?"
  read -r b2 e2 p2 c2 < <(turn t2 "$tmp/t2.json")
  python3 -c "print('| %s | %.0f ms (%d) | %.0f ms (%d / %d) | %.1f%% |' % ('$cache', $e1, $p1, $e2, $p2, $c2, 100 * $e2 / $e1))"
  if [ $cache = on ]; then # the server's own latency on short, cached follow-ups
    for i in $(seq 1 "$REPEAT"); do
      body "$tmp/r.json" "$tmp/t1.sse" "Question $i: and the gulls?"
      turn "r$i" "$tmp/r.json"
    done >"$tmp/added.txt"
    # the server's own share: request in -> engine starts ("queued": parse, tokenize, queue,
    # wake-up) and engine's first token -> first byte handed to the socket
    sleep 0.5 # a stream's line is logged when its connection is done with it
    grep -o 'queued [0-9.]* ms, TTFT [0-9.]* ms, first byte [0-9.]*' "$tmp/serve.log" |
      tail -n "$REPEAT" | awk '{ print $2, $9 }' >"$tmp/inside.txt" || true
  fi
  stop
done
echo
echo "Added latency (client's first byte minus the engine's TTFT), $REPEAT short follow-ups on the warm server:"
python3 - "$tmp/added.txt" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
d = sorted(b - e for b, e, _, _ in rows)
print("  first byte %s ms" % " ".join("%.1f" % r[0] for r in rows))
print("  engine TTFT %s ms" % " ".join("%.1f" % r[1] for r in rows))
print("  added: median %.2f ms, min %.2f, max %.2f" % (statistics.median(d), d[0], d[-1]))
EOF
echo "Inside the server (its log), the same requests:"
python3 - "$tmp/inside.txt" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
s = sorted(a + b for a, b in rows)
print("  request in -> engine starts: %s ms" % " ".join("%.2f" % r[0] for r in rows))
print("  first token -> first byte out: %s ms" % " ".join("%.2f" % r[1] for r in rows))
print("  sum: median %.2f ms, min %.2f, max %.2f" % (statistics.median(s), s[0], s[-1]))
EOF
