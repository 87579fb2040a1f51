#!/usr/bin/env bash
# tests/gpu/device_run.sh: the one prepared script for a lent GPU machine (no package
# access, only the repository and what is carried). Phases, in order, each logged under
# OUT (default ./gpu-out):
#   build   unpack the carried Debian packages (.gpu-carry/debs) and build everything with
#           CUDA for this device (FERRY_CUDA_ARCHS, default 90)
#   ops     tests/gpu/run.sh: every op case against the scalar references, the backend and
#           graph tests, the op-table unit test, bench_cuda (HBM bandwidth and per-op GB/s)
#   e2e     tests/gpu/test_fixtures_cuda.sh: rules 1 and 2, greedy tokens, graph == no
#           graph, stream mode on the GPU
#   full    bench/gpu_full.sh: full GPU mode on the synthetic 30B and 80B shapes
#   tiers   bench/gpu_tiers.sh: laptop emulation (--vram 6G in a 12 GiB RAM cgroup)
# Usage: tests/gpu/device_run.sh [PHASE...]   (default: build ops e2e full tiers)
# Env: OUT, FERRY_CUDA_ARCHS, FIXTURES (default tests/fixtures, else .gpu-carry/fixtures),
#      BENCH_MIN_MS (bench_cuda, default 10), SYNTH_DIR (default /tmp/ferry-synth).
set -u
src="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$src"
OUT="${OUT:-$src/gpu-out}"
mkdir -p "$OUT"
phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(build ops e2e full tiers)
build="$src/build-gpu"
fix="${FIXTURES:-}"
[ -n "$fix" ] || { [ -d tests/fixtures/models ] && fix=$src/tests/fixtures || fix=$src/.gpu-carry/fixtures; }
export FERRY_FIXTURES="$fix" FERRY_BIN="$build/ferry"
# the e2e lists narrowed to the models that are here (a carried subset)
[ -n "${FERRY_MODELS:-}" ] ||
  export FERRY_MODELS="$(cd "$fix/models" && ls *.gguf | sed 's/\.gguf$//' | tr '\n' ' ')"
t_all=$SECONDS
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

if [ -d .gpu-carry/debs ]; then . .gpu-carry/unpack-debs.sh .gpu-carry/debs >/dev/null; fi
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
summary "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
summary "commit: $(git rev-parse --short HEAD 2>/dev/null || cat .gpu-carry/commit 2>/dev/null)"

for ph in "${phases[@]}"; do
  t0=$SECONDS
  case "$ph" in
    build)
      cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DFERRY_CUDA=ON \
        -DFERRY_CUDA_ARCHS="${FERRY_CUDA_ARCHS:-90}" -DFERRY_WERROR=OFF >"$OUT/configure.log" 2>&1 &&
        cmake --build "$build" -j"$(nproc)" >"$OUT/build.log" 2>&1
      rc=$?
      [ $rc = 0 ] || tail -40 "$OUT/build.log"
      summary "build: rc $rc ($((SECONDS - t0)) s)"
      [ $rc = 0 ] || exit 1
      ;;
    ops)
      LOG_DIR="$OUT" BENCH_MIN_MS="${BENCH_MIN_MS:-10}" tests/gpu/run.sh --no-build "$build" \
        >"$OUT/ops.txt" 2>&1
      rc=$?
      grep -E 'FAIL|PASS|SKIP|RESULT|passed|failed|GB/s' "$OUT/ops.txt" | tail -40
      summary "ops: rc $rc ($((SECONDS - t0)) s)"
      ;;
    e2e)
      bash tests/gpu/test_fixtures_cuda.sh >"$OUT/e2e.txt" 2>&1
      rc=$?
      grep -E '^FAIL|passed' "$OUT/e2e.txt" | head -40
      summary "e2e: rc $rc ($((SECONDS - t0)) s)"
      ;;
    full | tiers)
      OUT="$OUT" bash "bench/gpu_$ph.sh" >"$OUT/bench_$ph.txt" 2>&1
      rc=$?
      grep -E "^==|prefill|decode|error|cgroup" "$OUT/bench_$ph.txt" | head -40
      summary "bench $ph: rc $rc ($((SECONDS - t0)) s)"
      ;;
    *) summary "unknown phase $ph" ;;
  esac
done
summary "total: $((SECONDS - t_all)) s"
