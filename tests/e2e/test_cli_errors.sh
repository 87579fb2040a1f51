# Bad input to ferry's commands: each case must end with exactly one clear error line on
# stderr, a non-zero exit and no crash.
source "$(dirname "$0")/lib.sh"
M=$FERRY_FIXTURES/models/pub-qwen3moe-tiny-F32.gguf
N=$FERRY_FIXTURES/models/pub-qwen3next-tiny-F32.gguf
P="python3 $HERE/gguf_patch.py"
F=$FERRY_BIN

$P "$M" "$TMP/missing.gguf" rename-tensor blk.1.attn_k.weight blk.1.attn_X.weight
$P "$M" "$TMP/shape.gguf" set-dim blk.2.ffn_norm.weight 0 32
$P "$M" "$TMP/arch.gguf" set-str general.architecture qwen9moe
$P "$N" "$TMP/nossm.gguf" rename-tensor blk.1.attn_qkv.weight blk.1.attn_qkX.weight
$P "$N" "$TMP/heads.gguf" set-u32 qwen3next.ssm.time_step_rank 3
$P "$N" "$TMP/pattern.gguf" rename-tensor blk.3.attn_q.weight blk.3.attn_X.weight
printf 'hello \xff\xfe world' > "$TMP/bad_utf8.txt"
python3 -c "print('word ' * 5000)" > "$TMP/long.txt"
# hostile files (issue 15): each was a crash, a hang or a misleading message
$P "$M" "$TMP/nan_out.gguf" set-f32 output_norm.weight 5 nan
$P "$M" "$TMP/inf_blk2.gguf" set-f32 blk.2.ffn_norm.weight 7 inf
$P "$M" "$TMP/blocks.gguf" set-u32 qwen3moe.block_count 4294967295
$P "$M" "$TMP/ctx0.gguf" set-u32 qwen3moe.context_length 0
$P "$M" "$TMP/offset.gguf" set-offset blk.0.attn_q.weight 18446744073709551584
$P "$M" "$TMP/newline.gguf" set-str general.architecture $'qwen3mo\n'
$P "$N" "$TMP/next_interval.gguf" set-u32 qwen3next.full_attention_interval 0
mkfifo "$TMP/fifo.gguf"
printf 'two\0parts' > "$TMP/nul.txt"
printf 'Hi' > "$TMP/hi.txt"

expect_error "no command"        "usage|command"          $F
expect_error "unknown command"   "unknown command"        $F frobnicate
expect_error "unknown flag"      "unknown option '--frob'" $F run -m "$M" -p hi --frob
expect_error "missing model"     "missing -m"             $F run -p hi
expect_error "no such file"      "cannot open"            $F run -m "$TMP/nope.gguf" -p hi
expect_error "not a gguf"        "bad magic"              $F info -m "$TMP/bad_utf8.txt"
expect_error "missing tensor"    "missing tensor 'blk.1.attn_k.weight'" $F run -m "$TMP/missing.gguf" -p hi -n 1
expect_error "wrong shape"       "blk.2.ffn_norm.weight' has shape \[32" $F run -m "$TMP/shape.gguf" -p hi -n 1
expect_error "unsupported arch"  "unsupported architecture 'qwen9moe'" $F run -m "$TMP/arch.gguf" -p hi -n 1
expect_error "next: no ssm tensors" "layer 1 is a DeltaNet layer.*no ssm_in or attn_qkv" $F run -m "$TMP/nossm.gguf" -p hi -n 1
expect_error "next: head counts" "inconsistent DeltaNet head counts" $F run -m "$TMP/heads.gguf" -p hi -n 1
expect_error "next: pattern"     "layer 3 is a full-attention layer.*no attn_q" $F run -m "$TMP/pattern.gguf" -p hi -n 1
expect_error "negative -n"       "-n: -1 is out of range" $F run -m "$M" -p hi -n -1
expect_error "bad -n"            "-n: 'x' is not an integer" $F run -m "$M" -p hi -n x
expect_error "malformed SIZE"    "malformed size '12Q'"   $F run -m "$M" -p hi --ram 12Q
expect_error "malformed SIZE 2"  "malformed size"         $F info -m "$M" --ram abc
expect_error "bad mode"          "--mode: 'fast'"         $F run -m "$M" -p hi --mode fast
expect_error "bad temp"          "--temp: -1 is out of range" $F run -m "$M" -p hi --temp -1
expect_error "bad top-p"         "--top-p: 2 is out of range" $F run -m "$M" -p hi --top-p 2
expect_error "bad cache type"    "not a KV cache type"    $F run -m "$M" -p hi --cache-type-k q4_0
expect_error "q8_0 KV, head 16"  "multiple of 32"        $F run -m "$M" -p hi --cache-type-k q8_0 --cache-type-v q8_0
expect_error "-p and -f"         "either -p or -f"        $F run -m "$M" -p hi -f "$TMP/long.txt"
expect_error "no prompt"         "missing -p PROMPT"      $F run -m "$M"
expect_error "unreadable file"   "cannot open prompt file" $F run -m "$M" -f "$TMP/none.txt"
expect_error "non-UTF-8 prompt"  "not valid UTF-8"        $F run -m "$M" -f "$TMP/bad_utf8.txt" -n 1
expect_error "prompt > context"  "the prompt has [0-9]+ tokens but the context is 64" $F run -m "$M" -f "$TMP/long.txt" -c 64 -n 1
expect_error "full over budget"  "full mode needs .* use --mode stream" $F run -m "$M" -p hi --mode full --ram 1M
expect_error "stream over budget" "too small for stream mode.*--ram [0-9]+" $F run -m "$M" -p hi --mode stream --ram 1M
expect_error "score: no --ids"   "missing --ids"          $F score -m "$M" --from 1 --json "$TMP/o.json"
expect_error "score: bad id"     "not a token id"         $F score -m "$M" --ids "1 x 3" --from 1 --json "$TMP/o.json"
expect_error "score: from"       "--from 5 must be at most 2" $F score -m "$M" --ids "1 2 3" --from 5 --json "$TMP/o.json"
expect_error "score: id range"   "token id 99999 is out of range" $F score -m "$M" --ids "1 99999 3" --from 1 --json "$TMP/o.json"
expect_error "score: last id range" "token id 99999 is out of range" $F score -m "$M" --ids "1 2 99999" --from 1 --json "$TMP/o.json"
expect_error "json unwritable"   "cannot write --json"    $F run -m "$M" -p hi -n 1 --json /nonexistent/dir/o.json

# ---- issue 15: hostile and careless input ----
# NaN / inf weights: one line naming the non-finite logits (they used to crash the sampler
# or print garbage with exit 0), and with FERRY_CHECK_FINITE=1 the first layer whose output
# is not finite.
expect_error "NaN in output_norm (sampled)" "logits at position [0-9]+ are not finite" $F run -m "$TMP/nan_out.gguf" -p hi -n 4
expect_error "NaN in output_norm (greedy)" "logits at position [0-9]+ are not finite" $F run -m "$TMP/nan_out.gguf" -p hi -n 4 --temp 0
expect_error "NaN in output_norm (score)" "logits at position 1 are not finite" $F score -m "$TMP/nan_out.gguf" --ids "1 2 3" --from 2 --json "$TMP/o.json"
expect_error "inf in layer 2 (check finite)" "output of layer 2 is not finite at position 0" env FERRY_CHECK_FINITE=1 $F run -m "$TMP/inf_blk2.gguf" -p hi -n 1 --temp 0
expect_error "NaN in output_norm (check finite)" "every layer's output was finite" env FERRY_CHECK_FINITE=1 $F run -m "$TMP/nan_out.gguf" -p hi -n 1
expect_error "FIFO as the model"   "fifo.gguf: not a regular file" timeout 20 $F run -m "$TMP/fifo.gguf" -p hi
expect_error "FIFO to info"        "not a regular file"  timeout 20 $F info -m "$TMP/fifo.gguf"
expect_error "block_count 2^32-1"  "block_count 4294967295 is larger than the file's 51 tensors allow" $F run -m "$TMP/blocks.gguf" -p hi
expect_error "context_length 0"    "context_length is 0" $F run -m "$TMP/ctx0.gguf" -p hi
expect_error "offset near 2^64"    "at offset 18446744073709551584 of the data section" $F info -m "$TMP/offset.gguf"
expect_error "newline in a name"   "unsupported architecture 'qwen3mo\?'" $F run -m "$TMP/newline.gguf" -p hi
expect_error "qwen3next interval 0 (no leak)" "full_attention_interval is 0" $F run -m "$TMP/next_interval.gguf" -p hi
expect_error "-zq names -z"        "unknown option '-z'"   $F run -m "$M" -p hi -zq
expect_error "--ram 0"             "--ram: '0' is 0 bytes" $F run -m "$M" -p hi --ram 0
expect_error "--ram 0.5"           "--ram: '0.5' is 0 bytes" $F run -m "$M" -p hi --ram 0.5
expect_error "info --ram 0"        "--ram: '0' is 0 bytes" $F info -m "$M" --ram 0
expect_error "--seed -2"           "--seed: '-2' is not an unsigned integer \(or -1" $F run -m "$M" -p hi --seed -2
expect_error "--logprobs, no --json" "--logprobs needs --json" $F run -m "$M" -p hi --logprobs 3
expect_error "NUL in a chat prompt" "has a NUL byte at byte 3.*--raw" $F run -m "$M" -f "$TMP/nul.txt"
expect_error "stdout is /dev/full (run)"  "cannot write the generated text" sh -c "exec $F run -m $M -p hi -n 4 >/dev/full"
expect_error "stdout is /dev/full (info)" "cannot write to standard output" sh -c "exec $F info -m $M >/dev/full"
expect_error "--logit-bias syntax" "--logit-bias: '12x' is not TOKEN_ID" $F run -m "$M" -p hi --logit-bias 12x
expect_error "--logit-bias range"  "--logit-bias: token id 99999 is out of range" $F run -m "$M" -p hi --logit-bias 99999+1

# Inputs are checked before the model loads: no "mode auto" line, which session_open
# prints once it has read the model and planned its memory.
early() { # early NAME PATTERN ARGS...: the error, and nothing from the model before it
  local name=$1 pat=$2; shift 2
  local out; out=$("$@" 2>&1 >/dev/null)
  if printf '%s' "$out" | grep -qE -- "$pat" && ! printf '%s' "$out" | grep -q "mode auto"; then
    PASSES=$((PASSES + 1)); echo "ok   $name"
  else
    FAILS=$((FAILS + 1)); echo "FAIL $name: $out"
  fi
}
early "missing prompt file first" "cannot open prompt file" $F run -m "$M" -f "$TMP/none.txt"
early "json into a directory first" "refusing to write --json file .* is a directory" $F run -m "$M" -p hi --json "$TMP"
early "json to a device first" "refusing to write --json file '/dev/null'" $F run -m "$M" -p hi --json /dev/null
early "json to a FIFO first" "is a FIFO" timeout 20 $F score -m "$M" --ids "1 2" --from 1 --json "$TMP/fifo.gguf"

# run -f - reads the prompt from stdin (tokenize already did); --seed -1 picks a seed
stdin_prompt() {
  local a b
  a=$(printf 'Hi' | $F run -m "$M" -f - -n 3 --temp 0 --json "$TMP/a.json" 2>/dev/null) || return 1
  b=$($F run -m "$M" -f "$TMP/hi.txt" -n 3 --temp 0 --json "$TMP/b.json" 2>/dev/null) || return 1
  [ "$a" = "$b" ] && [ -n "$a" ] && cmp -s <(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prompt_tokens'])" "$TMP/a.json") \
    <(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prompt_tokens'])" "$TMP/b.json")
}
run_case "run -f - reads stdin" stdin_prompt
random_seed() {
  local e; e=$($F run -m "$M" -p hi -n 2 --seed -1 2>&1 >/dev/null) || return 1
  printf '%s' "$e" | grep -qE -- "--seed -1: random seed [0-9]+" && ! printf '%s' "$e" | grep -q 18446744073709551615
}
run_case "--seed -1 is a random seed" random_seed

# --json is written whole or not at all: a failed write (file size limit) leaves the old
# report as it was; a FIFO, directory or device is refused, not replaced
json_atomic() {
  printf '{"old": true}\n' >"$TMP/keep.json"
  local rc
  (trap '' XFSZ; ulimit -f 1; exec $F run -m "$M" -p hi -n 2 --logprobs 50 --json "$TMP/keep.json") >/dev/null 2>"$TMP/j.err"
  rc=$?
  [ $rc -eq 1 ] && grep -q "cannot write --json file" "$TMP/j.err" || { cat "$TMP/j.err"; return 1; }
  [ "$(cat "$TMP/keep.json")" = '{"old": true}' ] || { echo "report damaged"; return 1; }
  [ -z "$(ls "$TMP" | grep '\.tmp$')" ] || { echo "temporary file left: $(ls "$TMP")"; return 1; }
  $F run -m "$M" -p hi -n 2 --json "$TMP/keep.json" >/dev/null 2>&1 &&
    python3 -c "import json,sys; sys.exit('generated_tokens' not in json.load(open(sys.argv[1])))" "$TMP/keep.json"
}
run_case "--json: atomic replace, failed write keeps the old file" json_atomic

# `ferry info`'s plan names the same stream minimum as a run (both charge the process)
same_minimum() {
  local a b
  a=$($F info -m "$M" | sed -n 's/.*minimum --ram .*(\([0-9]*\)).*/\1/p')
  b=$($F score -m "$M" --ids "1 2" --from 1 --json "$TMP/o.json" --mode stream --ram 1 2>&1 |
      sed -n 's/.*use --ram \([0-9]*\).*/\1/p')
  echo "info $a, score $b"
  [ -n "$a" ] && [ "$a" = "$b" ]
}
run_case "info and run name the same stream minimum" same_minimum
finish
