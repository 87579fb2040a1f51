#!/usr/bin/env bash
# Sets up, builds and runs ferry's main job on a machine without model files: writes a
# synthetic 2-layer model at the real Qwen3-30B-A3B shapes (about 1.1 GB, Q4_K_M types,
# real Qwen3 vocabulary when ../shared/fixtures is present), prints `ferry info`, then
# generates text in full mode and in stream mode (experts read from disk with io_uring
# into a small RAM cache) and compares the two with `ferry bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
model=${FERRY_DEMO_MODEL:-build/demo-qwen3moe-2l.gguf}
vocab=(--vocab-from tests/fixtures/models/qwen3-vocab.gguf)
if [ ! -f "$model" ]; then
  ./build/ferry synth --preset qwen3-30b-a3b --layers 2 --quant q4_k_m "${vocab[@]}" -o "$model"
fi
./build/ferry info -m "$model" --ram 1G | grep -v '^  layer'
prompt="Explain in one paragraph why a ferry is a good name for an inference engine."
./build/ferry run -m "$model" -p "$prompt" -n 32 --mode full --stats
./build/ferry run -m "$model" -p "$prompt" -n 32 --mode stream --ram 700M --stats
./build/ferry bench -m "$model" -p "$prompt" -n 32 --modes full,stream
