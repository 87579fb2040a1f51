#!/usr/bin/env bash
# Sets up, builds and runs ferry's whole test suite: a Release build (CUDA compiled when
# nvcc is present) with every ctest label, then an ASan+UBSan build running the unit and
# end-to-end tests again, then a clang libFuzzer build running each fuzz target briefly
# over its committed seeds. Every fixture is in the repository (tests/fixtures): only the
# GPU tests report SKIP, where no GPU (or no nvcc) is present. Sources that differ from
# .clang-format fail first (scripts/check-format.sh --fix rewrites them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/check-format.sh
jobs=$(nproc)
# one CUDA architecture keeps the compile of the kernels short (a GPU machine builds for its own)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFERRY_CUDA_ARCHS="${FERRY_CUDA_ARCHS:-86}"
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_CUDA=OFF
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j"$jobs" -L 'unit|e2e' -LE 'slow|nosan')
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DFERRY_FUZZ=ON -DFERRY_CUDA=OFF
cmake --build build-fuzz -j"$jobs" --target fuzz_gguf fuzz_tokenizer fuzz_serve_params
(cd build-fuzz && ctest --output-on-failure -j"$jobs" -L fuzz)
echo "ferry: all test suites passed"
