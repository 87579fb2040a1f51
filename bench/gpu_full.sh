#!/usr/bin/env bash
# bench/gpu_full.sh: full GPU mode (every weight, the KV cache and scratch in VRAM, decode
# replayed as a CUDA graph) on the synthetic 30B (12 of 48 layers) and 80B (8 of 48
# layers) shapes, Q4_K_M, vocabularies from the small fixtures as in the llama.cpp anchor
# of issue 11. Prefill: a ~512-token prompt in one chunk (-b 512); decode: 128 tokens
# after it. Each run twice; then the same decode without the graph (--no-graph) to show
# what the graph saves. Prints the bytes a decode token touches (from `ferry info`) so
# decode can be set against the HBM bandwidth bench_cuda measured.
# Env: FERRY_BIN, FERRY_FIXTURES, OUT, SYNTH_DIR.
set -u
bin=${FERRY_BIN:?}; fix=${FERRY_FIXTURES:?}; out=${OUT:-.}; dir=${SYNTH_DIR:-/tmp/ferry-synth}
mkdir -p "$dir" "$out"
python3 - "$dir/prompt.txt" <<'PY'
import random, sys
random.seed(7)
w = ("the harbour at dawn was quiet except for gulls a small ferry waited at the pier its engine "
     "ticking as it warmed while passengers carried bicycles and baskets of bread up the ramp "
     "captain checked tide tables looked at grey sky over islands and decided").split()
open(sys.argv[1], "w").write(" ".join(random.choice(w) for _ in range(300)) + "\n")
PY
synth() { # NAME PRESET LAYERS VOCAB
  [ -f "$dir/$1.gguf" ] && return 0
  "$bin" synth --preset "$2" --layers "$3" --quant q4_k_m --vocab-from "$fix/models/$4.gguf" \
    -o "$dir/$1.gguf" 2>&1 | tail -1
}
synth s30-12 qwen3-30b-a3b 12 pub-qwen3moe-tiny-F32
synth n80-8 qwen3-next-80b-a3b 8 pub-qwen3next-tiny-F32
for m in s30-12 n80-8; do
  echo "== $m"
  "$bin" info -m "$dir/$m.gguf" | grep -E "^bytes|^layers|touches"
  for i in 1 2; do
    "$bin" run -m "$dir/$m.gguf" -f "$dir/prompt.txt" --raw -n 128 --temp 0 -b 512 --backend cuda \
      --mode full --stats --json "$out/full-$m-$i.json" 2>&1 >/dev/null |
      grep -E "backend|load time|prefill|decode|peak VRAM|error"
  done
  "$bin" run -m "$dir/$m.gguf" -f "$dir/prompt.txt" --raw -n 128 --temp 0 -b 512 --backend cuda \
    --mode full --no-graph --stats 2>&1 >/dev/null | grep -E "decode|error" | sed 's/^/  no graph: /'
done
