# Rule 1 of fixtures/README.md §5 on every fixture model: teacher-forced `ferry score
# --exact` within 1e-3 of the exact float64 reference with the same argmax, and for the
# F32 models free-running greedy `ferry run --exact` reproduces all golden tokens.
source "$(dirname "$0")/lib.sh"
for m in "${MODELS[@]}"; do
  run_case "exact score $m" $CHECK score "$m" --rule exact --extra=--exact
done
for m in pub-qwen3moe-tiny-F32 pub-qwen3next-tiny-F32; do
  run_case "exact greedy $m" $CHECK greedy "$m" --golden kvf32 --extra=--exact
done
finish
