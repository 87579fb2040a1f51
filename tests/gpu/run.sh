#!/usr/bin/env bash
# tests/gpu/run.sh: builds ferry's CUDA targets, runs every GPU test (tests/gpu/test_*.c:
# the op table against the scalar references, the backend and graph-capture test), the
# op-table unit test (cpu vs ref, completeness), then the kernel benchmark, and prints a
# summary. Without a GPU the GPU tests report SKIP and this script exits 77.
# Needs: nvcc + cuBLAS (CUDA 12 or 13), CMake, the Debian packages of scripts/setup.sh
# (../shared/gpu/README.md carries them to a machine without package access).
# Usage: tests/gpu/run.sh [--no-build] [BUILD_DIR]
#   --no-build   use BUILD_DIR as it is (built elsewhere, e.g. here for sm_90 and carried to
#                the GPU machine): no configure, no compiler needed; the test binaries run
#                directly (ctest files hold the build machine's paths). BUILD_DIR needs only
#                tests/gpu_test_*, tests/test_ops_table and bench/bench_cuda (a whole build
#                dir is over the 64 MiB a device call carries; copy these four).
# Env: FERRY_CUDA_ARCHS (default "native" with a GPU, else "86;90"); BENCH=0 skips the
# benchmark; FERRY_OP_FILTER limits the op cases (tests and benchmark); BENCH_MIN_MS;
# LOG_DIR (default: beside BUILD_DIR) receives gpu.log and bench.log.
set -u
src="$(cd "$(dirname "$0")/../.." && pwd)"
build_it=1
if [ "${1:-}" = "--no-build" ]; then build_it=0; shift; fi
build="${1:-$src/build-gpu}"
jobs="$(nproc 2>/dev/null || echo 2)"

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi

if [ "$build_it" = 1 ]; then
  archs="${FERRY_CUDA_ARCHS:-}"
  if [ -z "$archs" ]; then [ "$have_gpu" = 1 ] && archs=native || archs="86;90"; fi
  echo "== configure ($build, CUDA archs $archs)"
  cmake -S "$src" -B "$build" -DFERRY_CUDA=ON -DFERRY_CUDA_ARCHS="$archs" -DFERRY_WERROR=OFF \
    -DCMAKE_BUILD_TYPE=Release \
    >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; echo "configure FAILED"; exit 1; }
  echo "== build"
  cmake --build "$build" -j"$jobs" --target gpu_test_ops gpu_test_backend test_ops_table bench_cuda \
    >"$build.build.log" 2>&1 || { tail -50 "$build.build.log"; echo "build FAILED"; exit 1; }
else
  echo "== using the build in $build (no build)"
fi
[ -x "$build/tests/gpu_test_ops" ] || { echo "no $build/tests/gpu_test_ops: build first"; exit 1; }

log_dir="${LOG_DIR:-$(dirname "$build")}"
mkdir -p "$log_dir"
log="$log_dir/$(basename "$build").gpu.log"
bench_log="$log_dir/$(basename "$build").bench.log"
[ "$have_gpu" = 1 ] && nvidia-smi -L
: >"$log"
n_skip=0
n_fail=0
results=()
# Runs one test binary, its output into the log and onto the terminal (case lines only).
run_test() {
  local name="$1"
  local bin="$2"
  echo "== $name" | tee -a "$log"
  local t0=$SECONDS
  "$bin" >>"$log.tmp" 2>&1
  local rc=$?
  cat "$log.tmp" >>"$log"
  grep -E '^(ok|FAIL) |test_ops|test_backend|SKIP|failed|CHECK' "$log.tmp" | grep -v '^ok ' | head -60
  grep -cE '^ok ' "$log.tmp" | xargs -I{} echo "({} cases ok)"
  rm -f "$log.tmp"
  local what=PASS
  if [ $rc = 77 ]; then what=SKIP; n_skip=$((n_skip + 1));
  elif [ $rc != 0 ]; then what="FAIL (rc $rc)"; n_fail=$((n_fail + 1)); fi
  results+=("$name: $what ($((SECONDS - t0)) s)")
}

for bin in "$build"/tests/gpu_test_*; do
  [ -x "$bin" ] && run_test "$(basename "$bin")" "$bin"
done
run_test test_ops_table "$build/tests/test_ops_table"

bench_rc=0
if [ "${BENCH:-1}" != 0 ] && [ "$have_gpu" = 1 ]; then
  echo "== bench (bench_cuda)"
  "$build/bench/bench_cuda" --min-ms "${BENCH_MIN_MS:-20}" ${FERRY_OP_FILTER:+--filter "$FERRY_OP_FILTER"} \
    2>&1 | tee "$bench_log"
  bench_rc=${PIPESTATUS[0]}
  results+=("bench_cuda: rc $bench_rc")
fi

echo "== summary"
printf '%s\n' "${results[@]}"
echo "logs: $log $bench_log"
if [ $n_fail != 0 ] || [ $bench_rc != 0 ]; then echo "RESULT: FAIL"; exit 1; fi
if [ $n_skip != 0 ]; then echo "RESULT: SKIP (no CUDA device)"; exit 77; fi
echo "RESULT: PASS"
