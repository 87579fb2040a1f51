#!/usr/bin/env bash
# bench/gpu_tiers.sh: the laptop emulated on the GPU machine (issue 12): ferry capped at
# --vram 6G inside a 12 GiB memory cgroup (cgroup v2 or v1; without either, only --ram caps
# it and the log says so), on the full 48-layer 30B shape at Q4_K_M (17 GB; --routing real
# when this ferry's synth has it). Runs, each with --stats and --json: the three tiers with
# the cost model (auto), with every RAM expert on the CPU, with every expert on the device;
# CPU-only stream mode; and full GPU mode without the caps (the model fits the H200).
# Env: FERRY_BIN, FERRY_FIXTURES, OUT, SYNTH_DIR, N (decode tokens, 64), LAYERS (48),
# CONFIGS (which runs, default all five).
set -u
bin=${FERRY_BIN:?}; fix=${FERRY_FIXTURES:?}; out=${OUT:-.}; dir=${SYNTH_DIR:-/tmp/ferry-synth}
n=${N:-64}; layers=${LAYERS:-48}
mkdir -p "$dir" "$out"
routing=""
"$bin" synth --help 2>&1 | grep -q -- "--routing" && routing="--routing real"
m=$dir/s30-$layers.gguf
[ -f "$m" ] || "$bin" synth --preset qwen3-30b-a3b --layers "$layers" --quant q4_k_m $routing \
  --vocab-from "$fix/models/pub-qwen3moe-tiny-F32.gguf" -o "$m" 2>&1 | tail -1
[ -f "$dir/prompt.txt" ] || python3 -c "
import random; random.seed(7)
w='the harbour at dawn was quiet except for gulls a small ferry waited at the pier'.split()
open('$dir/prompt.txt','w').write(' '.join(random.choice(w) for _ in range(300))+'\n')"
"$bin" info -m "$m" --vram 6G --ram 11G | sed -n '/^plan/,/^topology/p'
# a 12 GiB memory cgroup
cg=""
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  cg=/sys/fs/cgroup/ferry-laptop; mkdir -p $cg 2>/dev/null && echo 12G > $cg/memory.max 2>/dev/null &&
    echo 0 > $cg/memory.swap.max 2>/dev/null || cg=""
  [ -n "$cg" ] && procs=$cg/cgroup.procs
elif [ -d /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory/ferry-laptop; mkdir -p $cg 2>/dev/null &&
    echo $((12 << 30)) > $cg/memory.limit_in_bytes 2>/dev/null || cg=""
  [ -n "$cg" ] && procs=$cg/cgroup.procs
fi
echo "cgroup: ${cg:-none (only --ram caps ferry)}"
in_cg() { if [ -n "$cg" ]; then bash -c "echo \$\$ > $procs && exec \"\$@\"" _ "$@"; else "$@"; fi; }
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
run() { # NAME ARGS...
  local name=$1; shift
  echo "== $name: $*"
  in_cg "$bin" run -m "$m" -f "$dir/prompt.txt" --raw -n "$n" --temp 0 --stats \
    --json "$out/tiers-$name.json" "$@" 2>&1 >/dev/null |
    grep -E "mode|backend|load|TTFT|prefill|decode|peak|read from|hit rate|computed|stalls|error"
  [ -n "$cg" ] && cat "$cg/memory.peak" "$cg/memory.max_usage_in_bytes" 2>/dev/null | head -1 |
    sed 's/^/  cgroup peak bytes: /'
}
want() { [[ " ${CONFIGS:-gpu-auto gpu-cpu gpu-gpu cpu-stream gpu-full} " == *" $1 "* ]]; }
want gpu-auto && run gpu-auto --backend cuda --mode stream --vram 6G --ram 11G
want gpu-cpu && run gpu-cpu --backend cuda --mode stream --vram 6G --ram 11G --expert-compute cpu
want gpu-gpu && run gpu-gpu --backend cuda --mode stream --vram 6G --ram 11G --expert-compute gpu
want cpu-stream && run cpu-stream --backend cpu --mode stream --ram 11G
want gpu-full && cg="" run gpu-full --backend cuda --mode full
[ -n "$cg" ] && rmdir "$cg" 2>/dev/null
exit 0
