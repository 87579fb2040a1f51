# ferry serve with curl: the OpenAI and Ollama endpoints (plain and streamed, checked against
# the wire formats by serve_check.py), the same text as `ferry run` for the same prompt and
# seed, stop strings, the prompt cache (a second turn computes only its new tokens and
# answers as a server without the cache does), authentication, bad requests (each a JSON
# error, the server keeps serving), /metrics, and a clean exit on SIGINT.
source "$(dirname "$0")/lib.sh"
source "$HERE/serve_lib.sh"
M=$FERRY_FIXTURES/models/pub-qwen3moe-tiny-F32.gguf
N=$FERRY_FIXTURES/models/pub-qwen3next-tiny-F32.gguf
A=pub-qwen3moe-tiny-F32
Q="Tell me about ferries."
S="You are terse."

# --- references from ferry run
$FERRY_BIN run -m "$M" -t 1 -c 256 -p "$Q" --system "$S" -n 24 --temp 0 --json "$TMP/greedy.json" >/dev/null 2>&1
$FERRY_BIN run -m "$M" -t 1 -c 256 -p "$Q" -n 24 --temp 0.9 --top-k 30 --top-p 0.95 --seed 11 \
  --json "$TMP/seeded.json" >/dev/null 2>&1
$FERRY_BIN run -m "$M" -t 1 -c 256 -p "$Q" --raw -n 16 --temp 0 --json "$TMP/raw.json" >/dev/null 2>&1

serve_start "$TMP/serve.log" -m "$M" -c 256 --max-body 64K || exit 1

GREEDY='{"model":"'$A'","messages":[{"role":"system","content":"'$S'"},{"role":"user","content":"'"$Q"'"}],"max_tokens":24,"temperature":0'
req chat "/v1/chat/completions" "$GREEDY}"
check "chat: same text as ferry run (greedy)" \
  "r('chat').status == 200 and r('chat').text == run('greedy')['text']"
check "chat: OpenAI shape" "(lambda d: d['object'] == 'chat.completion' and d['id'].startswith('chatcmpl-')
  and d['choices'][0]['message']['role'] == 'assistant' and d['choices'][0]['index'] == 0
  and d['choices'][0]['finish_reason'] in ('stop', 'length') and d['model'] == '$A'
  and d['usage']['prompt_tokens'] == run('greedy')['n_prompt']
  and d['usage']['completion_tokens'] == run('greedy')['n_generated']
  and d['usage']['total_tokens'] == d['usage']['prompt_tokens'] + d['usage']['completion_tokens'])(r('chat').json)"
req seeded "/v1/chat/completions" '{"messages":[{"role":"user","content":"'"$Q"'"}],"max_tokens":24,"temperature":0.9,"top_k":30,"top_p":0.95,"seed":11}'
check "chat: same text as ferry run (temperature 0.9, seed 11)" "r('seeded').text == run('seeded')['text']"

req stream "/v1/chat/completions" "$GREEDY,\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
check "chat stream: SSE chunks, role first, [DONE] last, same text" "(lambda s: s.status == 200
  and s.type.startswith('text/event-stream') and s.text == run('greedy')['text']
  and s.events[0]['choices'][0]['delta']['role'] == 'assistant'
  and all(e['object'] == 'chat.completion.chunk' and e['id'] == s.events[0]['id'] for e in s.events)
  and s.events[-2]['choices'][0]['finish_reason'] in ('stop', 'length')
  and all(e['choices'][0]['finish_reason'] is None for e in s.events[:-2])
  and all(e['usage'] is None for e in s.events[:-1])
  and s.events[-1]['choices'] == [] and s.events[-1]['usage']['completion_tokens'] == run('greedy')['n_generated'])(r('stream'))"
req stream2 "/v1/chat/completions" "$GREEDY,\"stream\":true}"
check "chat stream without include_usage: no usage" "all('usage' not in e for e in r('stream2').events)"

req compl "/v1/completions" '{"prompt":"'"$Q"'","max_tokens":16,"temperature":0}'
check "completions: raw prompt, same text as ferry run --raw" "(lambda d: d['object'] == 'text_completion'
  and d['choices'][0]['text'] == run('raw')['text'] and d['id'].startswith('cmpl-'))(r('compl').json)"
req compls "/v1/completions" '{"prompt":["'"$Q"'"],"max_tokens":16,"temperature":0,"stream":true}'
check "completions stream" "r('compls').text == run('raw')['text'] and r('compls').events[-1]['object'] == 'text_completion'"

# --- Ollama
OCHAT='{"model":"'$A':latest","messages":[{"role":"system","content":"'$S'"},{"role":"user","content":"'"$Q"'"}],"options":{"num_predict":24,"temperature":0}'
req ochat "/api/chat" "$OCHAT}"
check "ollama chat stream (default): NDJSON, same text, timings on the last line" "(lambda s: s.type.startswith('application/x-ndjson')
  and s.text == run('greedy')['text'] and s.final['done'] and s.final['done_reason'] in ('stop', 'length')
  and s.final['model'] == '$A:latest' and s.final['created_at'].endswith('Z')
  and all(s.final[k] >= 0 and isinstance(s.final[k], int) for k in ('total_duration', 'load_duration',
      'prompt_eval_count', 'prompt_eval_duration', 'eval_count', 'eval_duration'))
  and s.final['eval_count'] == run('greedy')['n_generated']
  and s.final['total_duration'] >= s.final['prompt_eval_duration'] + s.final['eval_duration']
  and all(e['message']['role'] == 'assistant' for e in s.events))(r('ochat'))"
req ochat1 "/api/chat" "$OCHAT,\"stream\":false}"
check "ollama chat, stream false" "r('ochat1').json['done'] and r('ochat1').text == run('greedy')['text']"
req ogen "/api/generate" '{"model":"'$A'","prompt":"'"$Q"'","raw":true,"options":{"num_predict":16,"temperature":0}}'
check "ollama generate stream (raw)" "r('ogen').text == run('raw')['text'] and r('ogen').final['done']"
req ogen1 "/api/generate" '{"model":"'$A'","prompt":"'"$Q"'","system":"'"$S"'","stream":false,"options":{"num_predict":24,"temperature":0}}'
check "ollama generate (templated), stream false" "r('ogen1').text == run('greedy')['text']"
req oload "/api/generate" '{"model":"'$A'"}'
check "ollama generate without a prompt: load" "r('oload').json['done_reason'] == 'load'"

# --- stop strings: the text ends right before the first occurrence
cat >"$TMP/stop.py" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["text"]
s = t[len(t) // 2: len(t) // 2 + 3]
print(json.dumps({"stop": [s, "never-seen"], "cut": t[:t.index(s)]}))
EOF
python3 "$TMP/stop.py" "$TMP/greedy.json" >"$TMP/stop.json"
STOP=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["stop"]))' "$TMP/stop.json")
req stop "/v1/chat/completions" "$GREEDY,\"stop\":$STOP}"
req stops "/v1/chat/completions" "$GREEDY,\"stop\":$STOP,\"stream\":true}"
req ostop "/api/chat" "${OCHAT%\}},\"stop\":$STOP}}"
check "stop strings cut the text (plain, SSE, Ollama)" "(lambda cut: r('stop').text == cut
  and r('stop').json['choices'][0]['finish_reason'] == 'stop' and r('stops').text == cut
  and r('ostop').text == cut and r('ostop').final['done_reason'] == 'stop')(json.load(open('$TMP/stop.json'))['cut'])"

# --- models
req models "/v1/models"
req tags "/api/tags"
req ps "/api/ps"
req version "/api/version"
req show "/api/show" '{"model":"'$A'"}'
check "models, tags, ps, version, show" "r('models').json['data'][0]['id'] == '$A'
  and r('tags').json['models'][0]['name'] == '$A' and r('tags').json['models'][0]['details']['family'] == 'qwen3moe'
  and r('tags').json['models'][0]['details']['quantization_level'] == 'F32'
  and r('ps').json['models'][0]['size'] > 0 and r('version').json['version']
  and r('show').json['model_info']['context_length'] == 256"
req health "/health"
check "health" "r('health').json == {'status': 'ok'}"

# --- bad requests: a JSON error each (OpenAI's shape under /v1, Ollama's under /api)
bad() { # bad NAME STATUS SUBSTRING PATH BODY
  req "$1" "$4" "$5"
  check "refused: $1" "r('$1').status == $2 and \"\"\"$3\"\"\" in r('$1').err and
    (isinstance(r('$1').json['error'], str) if '$4'.startswith('/api/') else
     r('$1').json['error']['code'] == $2 and r('$1').json['error']['type'])"
}
bad json 400 "invalid JSON" /v1/chat/completions '{"messages":[{"role":"user"'
bad json_ollama 400 "invalid JSON" /api/chat '{"messages":'
bad type 400 "'temperature' must be a number" /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}'
bad n2 400 "only 1 choice" /v1/chat/completions '{"messages":[{"role":"user","content":"x"}],"n":2}'
bad model 404 "model 'gpt-4o' not found" /v1/chat/completions '{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}'
bad model_ollama 404 "not found" /api/generate '{"model":"llama3","prompt":"x"}'
LONG=$(python3 -c 'print("ferry " * 300)')
bad context 400 "but the context is 256 tokens" /v1/chat/completions '{"messages":[{"role":"user","content":"'"$LONG"'"}]}'
bad num_ctx 400 "the context is 8 tokens (options.num_ctx)" /api/chat '{"messages":[{"role":"user","content":"'"$Q"'"}],"options":{"num_ctx":8}}'
python3 -c 'print("{\"messages\":[{\"role\":\"user\",\"content\":\"" + "x" * 70000 + "\"}]}")' >"$TMP/big.json"
bad body 400 "larger than the limit of 65536 bytes" /v1/chat/completions "@$TMP/big.json"
bad deep 400 "nests deeper than 64" /v1/chat/completions "{\"messages\":[],\"x\":$(printf '[%.0s' $(seq 80))$(printf ']%.0s' $(seq 80))}"
bad empty 400 "the prompt is empty" /v1/completions '{"prompt":""}'
bad path 404 "no such endpoint" /v1/embeddings '{}'
req method /v1/chat/completions
check "refused: GET on a POST endpoint" "r('method').status == 405 and 'needs POST' in r('method').err"
# malformed HTTP is answered by libmicrohttpd itself (400), the server keeps serving
port=${URL##*:}
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n' >&3
malformed=$(timeout 5 cat <&3 | head -n 1)
exec 3<&-
run_case "malformed HTTP: 400" grep -q '^HTTP/1.1 400' <<<"$malformed"
req alive "/health"
check "still serving after the bad requests" "r('alive').status == 200"

# --- /metrics
req metrics "/metrics"
run_case "metrics: requests, tokens, TTFT, expert cache, I/O, queue" python3 - "$TMP/metrics.body" <<'EOF'
import sys
m = {}
for l in open(sys.argv[1]):
    if not l.startswith("#"):
        k, v = l.rsplit(" ", 1)
        m[k] = float(v)
req = lambda e, s: m.get('ferry_requests_total{endpoint="%s",status="%d"}' % (e, s), 0)
assert req("/v1/chat/completions", 200) == 6 and req("/v1/chat/completions", 400) == 6, m
assert req("/v1/chat/completions", 404) == 1 and req("/v1/chat/completions", 405) == 1
assert req("/api/chat", 200) == 3 and req("/api/generate", 404) == 1 and req("other", 404) == 1
assert m["ferry_generated_tokens_total"] > 0 and m["ferry_prompt_tokens_total"] > 0
assert m["ferry_ttft_seconds_count"] == 13 and m["ferry_ttft_seconds_sum"] > 0
assert m["ferry_decode_seconds_total"] > 0 and m["ferry_decode_tokens_per_second"] > 0
for k in ("hits", "misses", "evictions"):
    assert 'ferry_expert_cache_%s_total{tier="host"}' % k in m
assert "ferry_io_read_bytes_total" in m and m["ferry_queue_length"] == 0
assert m["ferry_requests_generating"] == 0
EOF
serve_stop INT
run_case "SIGINT: exit 0" test $? -eq 0

# --- the prompt cache, on the hybrid model (recurrent state from the checkpoint), in stream
# mode: a second turn computes only its new tokens and answers as without the cache
T1='{"messages":[{"role":"user","content":"'"$Q"'"}],"max_tokens":12,"temperature":0}'
for cache in on off; do
  flags=()
  [ $cache = off ] && flags=(--no-prompt-cache)
  serve_start "$TMP/serve_$cache.log" -m "$N" -c 512 --mode stream --ram 256M "${flags[@]}" || exit 1
  req "t1_$cache" "/v1/chat/completions" "$T1"
  python3 - "$TMP/t1_$cache.body" "$Q" >"$TMP/t2_$cache.json" <<'EOF'
import json, sys
a = json.load(open(sys.argv[1]))["choices"][0]["message"]["content"]
msgs = [{"role": "user", "content": sys.argv[2]}, {"role": "assistant", "content": a},
        {"role": "user", "content": "And about boats?"}]
print(json.dumps({"messages": msgs, "max_tokens": 12, "temperature": 0}))
print(json.dumps({"messages": msgs, "options": {"num_predict": 12, "temperature": 0}}),
      file=open(sys.argv[1] + ".ollama", "w"))
EOF
  req "t2_$cache" "/v1/chat/completions" "@$TMP/t2_$cache.json"
  req "t3_$cache" "/api/chat" "@$TMP/t1_$cache.body.ollama" # the same conversation, Ollama's way
  req "m_$cache" "/metrics"
  serve_stop
done
check "prompt cache: turn 2 reuses turn 1's prompt (checkpoint), same answer as without" "
  r('t2_on').json['usage']['prompt_tokens_details']['cached_tokens'] == r('t1_on').json['usage']['prompt_tokens']
  and r('t2_off').json['usage']['prompt_tokens_details']['cached_tokens'] == 0
  and r('t2_on').json['timings']['prompt_n'] == r('t2_on').json['usage']['prompt_tokens'] - r('t1_on').json['usage']['prompt_tokens']
  and r('t1_on').text == r('t1_off').text and r('t2_on').text == r('t2_off').text
  and r('t3_on').text == r('t2_off').text"
run_case "stream mode: expert cache counters in /metrics" \
  grep -qE '^ferry_expert_cache_misses_total\{tier="host"\} [1-9]' "$TMP/m_on.body"

# --- authentication
serve_start "$TMP/serve_auth.log" -m "$M" -c 256 --api-key s3cret || exit 1
req noauth "/v1/models"
req badauth "/api/tags" "" -H "Authorization: Bearer nope"
req goodauth "/v1/chat/completions" '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}' -H "Authorization: Bearer s3cret"
req healthauth "/health"
check "auth: 401 without or with a wrong key, 200 with it, /health open" "r('noauth').status == 401
  and r('noauth').json['error']['type'] == 'authentication_error' and r('noauth').headers['www-authenticate'] == 'Bearer'
  and r('badauth').status == 401 and isinstance(r('badauth').json['error'], str)
  and r('goodauth').status == 200 and r('healthauth').status == 200"
serve_stop TERM
run_case "SIGTERM: exit 0" test $? -eq 0
finish
