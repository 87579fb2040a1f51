# Rule 2 of fixtures/README.md §5: the default fast path (quantized activations as
# llama.cpp's CPU backend, F16 KV) against the llama.cpp goldens: F32 models d <= 0.05
# and all tokens identical; quantized models median <= 0.15, p90 <= 0.75, agreement
# >= 80%. Free-running greedy tokens on the quantized models: identical to the golden's
# while the two agree, and the first difference only at a golden near-tie (top-1/top-2 gap
# below 1.5, above the 1.3 that llama.cpp's own replays move a single step, README §5);
# at least 12 tokens compared per model, so the check cannot pass by comparing nothing.
source "$(dirname "$0")/lib.sh"
for m in "${MODELS[@]}"; do
  run_case "fast score $m" $CHECK score "$m" --rule golden
done
for m in pub-qwen3moe-tiny-F32 pub-qwen3next-tiny-F32; do
  run_case "fast greedy $m" $CHECK greedy "$m" --golden golden
done
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M pub-qwen3next-legacy-kq-Q4_K_M; do
  run_case "fast greedy until a near-tie $m" $CHECK greedy "$m" --golden golden --until-gap \
    --max-gap 1.5 --min-compared 12
done
# the q8_0 KV cache (the setting users tune llama.cpp and Ollama with) stays within rule 2
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M; do
  run_case "fast score q8_0 KV $m" $CHECK score "$m" --rule golden --extra="--cache-type-k q8_0 --cache-type-v q8_0"
done
finish
