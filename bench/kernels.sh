#!/usr/bin/env bash
# bench/kernels.sh: build and run bench_kernels (CPU matvec GB/s per format and dot path
# next to measured memory bandwidth), saving the output with the machine and its load so
# numbers taken on a busy shared box can be recognized as such.
# usage: bench/kernels.sh [build-dir] [bench_kernels args...]   (default build dir: build)
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$src/build}"
shift || true
cmake --build "$build" --target bench_kernels -j2 >/dev/null
out="$src/bench/results/kernels-$(date -u +%Y%m%dT%H%M%SZ).txt"
mkdir -p "$(dirname "$out")"
{
  echo "# $(date -u)  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)  nproc $(nproc)"
  echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$build/bench/bench_kernels" "$@"
  echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
echo "saved $out" >&2
