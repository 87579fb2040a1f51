#!/usr/bin/env bash
# The fixtures' rules on the CUDA backend (fixtures/README.md §5): `ferry score --backend
# cuda --exact` within 1e-3 of the exact references (rule 1) on every fixture, and the
# default path within llama.cpp's spread (rule 2) — except on the quantized qwen3next
# models, where the CUDA fast path (F32 activations; F16 in the GEMMs of quantized weights)
# is held to rule 3 against the exact references: the README measures that no engine with
# F32 or F16 activations passes rule 2 there (llama.cpp's Q8 activation rounding alone moves
# those models by a median 0.4-0.5). Greedy tokens equal the golden tokens on the F32 models; the decode graph gives the same numbers as op-by-op decode; and stream mode
# on the GPU (VRAM tier at its minimum, experts on the CPU or all on the device) keeps both
# rules, with every expert on the device equal to full mode bit for bit.
# Exits 77 (SKIP) where ferry has no CUDA backend or no device.
# ctest-labels: gpu
source "$(dirname "$0")/../e2e/lib.sh"
if ! "$FERRY_BIN" score -m "$FERRY_FIXTURES/models/${MODELS[0]}.gguf" --ids "1 2" --from 1 \
     --json "$TMP/probe.json" --backend cuda >/dev/null 2>"$TMP/probe.err"; then
  echo "SKIP: no CUDA backend here ($(tail -1 "$TMP/probe.err"))"
  exit 77
fi
CU=--backend\ cuda
fast_rule() { case "$1" in *qwen3next*kq*) echo reduced ;; *) echo golden ;; esac; }
for m in "${MODELS[@]}"; do
  run_case "cuda exact score $m" $CHECK score "$m" --rule exact --extra="--exact $CU"
  run_case "cuda fast score $m (rule $(fast_rule $m))" $CHECK score "$m" --rule "$(fast_rule $m)" --extra="$CU"
done
for m in pub-qwen3moe-tiny-F32 pub-qwen3next-tiny-F32; do
  run_case "cuda exact greedy $m" $CHECK greedy "$m" --golden kvf32 --extra="--exact $CU"
  run_case "cuda fast greedy $m" $CHECK greedy "$m" --golden golden --extra="$CU"
done
# the captured decode graph and op-by-op decode compute the same thing
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M; do
  run_case "cuda graph == no graph $m" $CHECK same-run "$m" --extra-a="$CU" --extra-b="$CU --no-graph"
done
# stream mode on the GPU: the VRAM tier at its minimum, the experts in RAM on the CPU or on
# the device
min_tier() { # the --vram that holds the dense part and the smallest VRAM expert tier
  local p=$1 vd
  vd=$("$FERRY_BIN" score -m "$p" --ids "1 2" --from 1 --json "$TMP/x.json" $CU --mode stream \
       --vram 1 "${@:2}" 2>&1 | sed -n 's/.*use --vram \([0-9]*\).*/\1/p')
  "$FERRY_BIN" score -m "$p" --ids "1 2" --from 1 --json "$TMP/x.json" $CU --mode stream \
    --vram "$vd" --expert-compute gpu "${@:2}" 2>&1 | sed -n 's/.*use --vram \([0-9]*\).*/\1/p'
}
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M pub-qwen3next-tiny-F32; do
  vt=$(min_tier "$FERRY_FIXTURES/models/$m.gguf" --exact)
  [ -n "$vt" ] || { FAILS=$((FAILS + 1)); echo "FAIL $m: no VRAM minimum in the messages"; continue; }
  for xc in cpu gpu auto; do
    run_case "cuda stream exact $m --expert-compute $xc" $CHECK score "$m" --rule exact \
      --extra="--exact $CU --mode stream --vram $vt --expert-compute $xc"
    # experts the CPU computes use llama.cpp's Q8 activations, the device's F16/F32 ones:
    # on the quantized qwen3next models that mix matches neither rule 2 nor rule 3 (each
    # rounding alone moves them by a median ~0.45; rule 1 above checks the computation)
    if [ "$(fast_rule $m)" = reduced ] && [ $xc != gpu ]; then continue; fi
    run_case "cuda stream fast $m --expert-compute $xc" $CHECK score "$m" --rule "$(fast_rule $m)" \
      --extra="$CU --mode stream --vram $vt --expert-compute $xc"
  done
  run_case "cuda stream (all experts on the device) == full $m" $CHECK same "$m" \
    --extra-a="$CU --mode full" --extra-b="$CU --mode stream --vram $vt --expert-compute gpu"
done
finish
