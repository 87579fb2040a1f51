#!/usr/bin/env bash
# tests/gpu/run.sh: builds ferry with the CUDA backend, runs every GPU test (ctest label
# "gpu") plus the op-table unit test, then the kernel benchmark, and prints a summary.
# Without a GPU the GPU tests report SKIP and this script exits 77 after the build.
# Needs: nvcc + cuBLAS (CUDA 12 or 13), CMake >= 3.24 for "native" archs, the Debian
# packages of scripts/setup.sh, and ../shared/fixtures only for the non-GPU tests.
# Usage: tests/gpu/run.sh [BUILD_DIR]   (env: FERRY_CUDA_ARCHS, default "native" with a
# GPU; BENCH=0 skips the benchmark; FERRY_OP_FILTER limits cases)
set -u
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$src/build-gpu}"
jobs="$(nproc 2>/dev/null || echo 2)"

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
archs="${FERRY_CUDA_ARCHS:-}"
# Without nvidia-smi, build for the common data-centre and desktop GPUs.
if [ -z "$archs" ]; then [ "$have_gpu" = 1 ] && archs=native || archs="80;86;89;90"; fi

echo "== configure ($build, CUDA archs $archs)"
cmake -S "$src" -B "$build" -DFERRY_CUDA=ON -DFERRY_CUDA_ARCHS="$archs" -DFERRY_WERROR=OFF \
  -DCMAKE_BUILD_TYPE=Release \
  >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; echo "configure FAILED"; exit 1; }
echo "== build"
cmake --build "$build" -j"$jobs" >"$build.build.log" 2>&1 || {
  tail -50 "$build.build.log"; echo "build FAILED"; exit 1; }

echo "== tests"
ctest --test-dir "$build" -L gpu --output-on-failure -V >"$build.gpu.log" 2>&1
gpu_rc=$?
ctest --test-dir "$build" -R '^test_ops_table$' --output-on-failure >>"$build.gpu.log" 2>&1
unit_rc=$?
grep -E '^(ok|FAIL) |test_ops:|SKIP' "$build.gpu.log" | sed 's/^[0-9]*: //'
n_skip=$(grep -c 'SKIP: ' "$build.gpu.log" || true)

bench_rc=0
if [ "${BENCH:-1}" != 0 ]; then
  echo "== bench (bench_cuda --cpu)"
  "$build/bench/bench_cuda" --cpu ${FERRY_OP_FILTER:+--filter "$FERRY_OP_FILTER"}
  bench_rc=$?
fi

echo "== summary"
grep -E 'tests passed|Passed|Failed|Not Run|Skipped' "$build.gpu.log" | sed 's/^[0-9]*: //' | tail -8
echo "gpu tests: rc $gpu_rc, op-table unit test: rc $unit_rc, bench: rc $bench_rc, skipped: $n_skip"
echo "logs: $build.build.log $build.gpu.log"
if [ $gpu_rc != 0 ] || [ $unit_rc != 0 ] || [ $bench_rc != 0 ]; then echo "RESULT: FAIL"; exit 1; fi
if [ "$n_skip" != 0 ]; then echo "RESULT: SKIP (no CUDA device)"; exit 77; fi
echo "RESULT: PASS"
