# The --json reports of `ferry run` and `ferry score` against the schema of DESIGN.md §6
# (tests/e2e/json_schema.py): every field present with its type and range, in full and
# stream mode, with and without --logprobs, on a qwen3moe and a qwen3next fixture; and
# `--stats` prints its table (load time, TTFT, prefill, decode, peak RAM) on stderr.
# The validator itself must reject broken reports (a missing field, a wrong type, a
# positive log-probability, unsorted top-K, a step count off by one).
source "$(dirname "$0")/lib.sh"
SCHEMA="python3 $HERE/json_schema.py"

# stream mode with a small budget so the expert cache really streams
STREAM="--mode stream --ram 64M"

run_json() { # run_json MODEL NAME N MODE_FLAGS [extra]: ferry run --json + schema check
  local m=$1 name=$2 n=$3 mode=$4; shift 4
  local j=$TMP/$name.json
  # shellcheck disable=SC2086
  "$FERRY_BIN" run -m "$FERRY_FIXTURES/models/$m.gguf" -p "Tell me about the sea." -n "$n" -t 2 $mode \
    --json "$j" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" || { cat "$TMP/$name.err"; return 1; }
  local k="" g=""
  local a prev=""
  for a in "$@"; do
    [ "${prev:-}" = "--logprobs" ] && k="--logprobs $a"
    [ "$a" = "--temp" ] && g=1
    prev=$a
  done
  [ -n "$g" ] && g="--greedy"
  # shellcheck disable=SC2086
  $SCHEMA run "$j" --max-generated "$n" --stdout "$TMP/$name.out" $k $g
}

stats_lines() { # stats_lines MODEL MODE_FLAGS: --stats prints the table on stderr, not stdout
  # shellcheck disable=SC2086
  "$FERRY_BIN" run -m "$FERRY_FIXTURES/models/$1.gguf" -p "Hello" -n 4 -t 2 $2 --stats \
    >"$TMP/s.out" 2>"$TMP/s.err" || { cat "$TMP/s.err"; return 1; }
  local l
  for l in "load time +[0-9.]+ s" "TTFT +[0-9.]+ s" "prefill +[0-9.]+ tok/s" "decode +[0-9.]+ tok/s" \
           "peak RAM \(RSS\) +[0-9.]+ [KMGT]?i?B"; do
    grep -qE "^  $l" "$TMP/s.err" || { echo "stderr lacks /$l/"; cat "$TMP/s.err"; return 1; }
    if grep -qE "^  $l" "$TMP/s.out"; then echo "stats on stdout"; return 1; fi
  done
}

score_json() { # score_json MODEL NAME MODE_FLAGS K
  local m=$1 name=$2 mode=$3 k=$4
  local ids
  ids=$("$FERRY_BIN" tokenize -m "$FERRY_FIXTURES/models/$m.gguf" -p "The ferry left the harbour at dawn, full of bread.") ||
    return 1
  # shellcheck disable=SC2086
  "$FERRY_BIN" score -m "$FERRY_FIXTURES/models/$m.gguf" --ids "$ids" --from 3 --logprobs "$k" -t 2 $mode \
    --json "$TMP/$name.json" 2>"$TMP/$name.err" || { cat "$TMP/$name.err"; return 1; }
  $SCHEMA score "$TMP/$name.json" --ids "$ids" --from 3 --logprobs "$k"
}

for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M; do
  for mode in full stream; do
    flags="--mode full"
    [ $mode = stream ] && flags=$STREAM
    run_case "$m run --json $mode" run_json "$m" "$m-$mode" 8 "$flags"
    run_case "$m run --json $mode --logprobs 5 --temp 0" run_json "$m" "$m-$mode-lp" 6 "$flags" --logprobs 5 --temp 0
    run_case "$m run --json $mode --logprobs 3 (sampled)" run_json "$m" "$m-$mode-lps" 6 "$flags" --logprobs 3 --seed 11
    run_case "$m run --stats $mode" stats_lines "$m" "$flags"
    run_case "$m score --json $mode" score_json "$m" "$m-$mode-score" "$flags" 4
  done
done

# The validator must reject what breaks the contract (so the checks above can fail).
J=$TMP/pub-qwen3moe-kq-Q4_K_M-full-lp.json
broken() { # broken NAME PYTHON-EDIT [schema args]: the edited report must be rejected
  local name=$1 edit=$2; shift 2
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); $edit; json.dump(d, open(sys.argv[2],'w'))" \
    "$J" "$TMP/broken.json" || return 1
  if $SCHEMA run "$TMP/broken.json" "$@" >/dev/null; then echo "accepted: $name"; return 1; fi
}
if [ -f "$J" ]; then
  run_case "validator rejects a missing field" broken missing "del d['ttft_s']" --logprobs 5
  run_case "validator rejects a string count" broken type "d['n_prompt']=str(d['n_prompt'])" --logprobs 5
  run_case "validator rejects a bool for an int" broken bool "d['io']['reads']=True" --logprobs 5
  run_case "validator rejects a missing io field" broken io "del d['io']['direct']" --logprobs 5
  run_case "validator rejects a positive logprob" broken lp "d['steps'][0]['top'][0]['logprob']=0.5" --logprobs 5
  run_case "validator rejects unsorted top" broken sort "d['steps'][0]['top'].reverse()" --logprobs 5
  run_case "validator rejects a missing step" broken steps "d['steps'].pop()" --logprobs 5
  run_case "validator rejects a wrong step id" broken sid "d['steps'][0]['id']+=1" --logprobs 5
  run_case "validator rejects n_prompt mismatch" broken np "d['prompt_tokens'].append(1)" --logprobs 5
  run_case "validator rejects a negative time" broken neg "d['load_s']=-1.0" --logprobs 5
  run_case "validator rejects a missing cache tier" broken tier "del d['expert_cache']['vram']" --logprobs 5
else
  FAILS=$((FAILS + 1)); echo "FAIL no report to break"
fi
finish
