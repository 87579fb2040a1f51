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
finish
