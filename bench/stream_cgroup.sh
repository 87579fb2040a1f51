#!/usr/bin/env bash
# bench/stream_cgroup.sh: stream-mode decode of a model larger than a memory cgroup,
# next to what the disk can do. Answers "is stream mode disk-bound, and how close to the
# disk's sequential O_DIRECT bandwidth does it read?" (the stream-mode issue's goal:
# >= 85% of sequential bandwidth while streaming, >= 3.4 tok/s = 20x llama.cpp's
# 0.17 tok/s on the 30B in a cgroup).
#
# It measures, in this order:
#   1. the machine (CPU, nproc, RAM, disk, kernel, load) and the commit;
#   2. the disk: dd O_DIRECT sequential 16 MiB reads of MODEL (and bench_io's random
#      expert-sized reads at queue depth 1/8/32 when the build has bench_io);
#   3. MODEL dropped from the page cache, then `ferry run --mode stream --ram RAM` in a
#      fresh memory cgroup of LIMIT bytes, twice: -n 1 (prefill only: its bytes and read
#      time are subtracted so the decode numbers are decode only) and -n N;
#   4. unless FULL=0: `ferry run --mode full` outside the cgroup (decode tok/s baseline).
# Decode bytes/token = (bytes(-n N) - bytes(-n 1)) / (N - 1); achieved bandwidth is shown
# two ways: decode bytes / decode read-wait time (io.read_s: the time the engine blocked
# on reads, a lower bound on the disk's busy time) and decode bytes / decode wall time.
#
# usage: bench/stream_cgroup.sh            (defaults below; all overridable by env)
#   MODEL=/var/tmp/s30.gguf LIMIT=1.5G RAM=1.2G N=64 THREADS=2 FERRY=build/ferry
#   PROMPT="..." OUT=dir (keeps the JSON files) FULL=1 SEQ_MB=2048
#   SAMPLING="--temp 0" (e.g. "--temp 1 --seed 1": random weights tend to repeat one token
#   under greedy decoding, which makes expert routing unrealistically repetitive)
# Besides the report it writes OUT/summary.json with the headline numbers.
# Needs root (cgroup v1 /sys/fs/cgroup/memory or v2). Prints a markdown-friendly report.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=${MODEL:-/var/tmp/s30.gguf}
LIMIT=${LIMIT:-1.5G}
RAM=${RAM:-1.2G}
N=${N:-64}
THREADS=${THREADS:-2}
FERRY=${FERRY:-$src/build/ferry}
PROMPT=${PROMPT:-"Explain how a car ferry loads vehicles, in three short paragraphs."}
FULL=${FULL:-1}
SEQ_MB=${SEQ_MB:-2048}
SAMPLING=${SAMPLING:-"--temp 0"}
OUT=${OUT:-$(mktemp -d /tmp/ferry_bench_stream.XXXXXX)}
mkdir -p "$OUT"

bytes() { # SIZE like 1.5G / 512M / bytes -> bytes (binary units, as ferry parses them)
  python3 -c "import re,sys; m=re.fullmatch(r'([0-9.]+)([KMGT]?)i?B?', sys.argv[1], re.I); \
print(int(float(m[1]) * 1024 ** ' KMGT'.index((m[2] or ' ').upper())))" "$1"
}
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {'d': d}))" "$@"; }
calc() { python3 -c "print($1)"; }
drop_cache() {
  python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$1"
}
cached() { fincore --bytes --noheadings --output RES "$1" 2>/dev/null | tr -d ' ' || echo "?"; }

[ -x "$FERRY" ] || { echo "no ferry binary at $FERRY (set FERRY=)" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "no model at $MODEL (set MODEL=)" >&2; exit 1; }
LIMIT_B=$(bytes "$LIMIT")
SIZE=$(stat -c %s "$MODEL")

# ---- cgroup ----
CG=""
cleanup() { [ -n "$CG" ] && [ -d "$CG" ] && rmdir "$CG" 2>/dev/null || true; }
trap cleanup EXIT
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  CGV=2; CG=/sys/fs/cgroup/ferry_bench_$$; mkdir "$CG"; echo "$LIMIT_B" > "$CG/memory.max"
elif [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  CGV=1; CG=/sys/fs/cgroup/memory/ferry_bench_$$; mkdir "$CG"; echo "$LIMIT_B" > "$CG/memory.limit_in_bytes"
else
  echo "no memory cgroup controller" >&2; exit 1
fi
cg_stat() { awk -v k="$1" '$1==k{print $2}' "$CG/memory.stat"; }
cg_peak() { if [ $CGV = 2 ]; then cat "$CG/memory.peak" 2>/dev/null || echo 0; else cat "$CG/memory.max_usage_in_bytes"; fi; }
cg_reset() { if [ $CGV = 1 ]; then echo 0 > "$CG/memory.max_usage_in_bytes"; fi; }
in_cg() { bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }

# ---- 1. machine ----
dev=$(df --output=source "$MODEL" | tail -1)
disk=$(lsblk -ndo NAME,MODEL,SIZE,ROTA,TRAN "$dev" 2>/dev/null | xargs || echo "$dev")
fstype=$(df --output=fstype "$MODEL" | tail -1)
echo "## machine"
echo "- date: $(date -u +%FT%TZ); commit: $(git -C "$src" rev-parse --short HEAD)$(git -C "$src" diff --quiet HEAD -- engine offload io kernels || echo ' (dirty)')"
echo "- binary: $FERRY, built $(date -u -r "$FERRY" +%FT%TZ) (commits after that are not in it)"
echo "- cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), nproc $(nproc)"
echo "- ram: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); kernel $(uname -r); cgroup v$CGV"
echo "- disk: $disk ($fstype on $dev, scheduler $(cat /sys/block/$(basename "$dev")/queue/scheduler 2>/dev/null || echo ?)); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- model: $MODEL, $SIZE bytes ($(calc "round($SIZE/2**30, 2)") GiB)"

# ---- 2. disk ----
echo "## disk"
SEQ_COUNT=$((SEQ_MB / 16))
seq_bw() { # dd O_DIRECT, 16 MiB blocks, SEQ_MB MiB from the start of MODEL -> bytes/s
  drop_cache "$MODEL"
  local line; line=$(dd if="$MODEL" of=/dev/null bs=16M iflag=direct count=$SEQ_COUNT 2>&1 | tail -1)
  calc "$SEQ_COUNT * 16 * 2**20 / $(echo "$line" | sed -n 's/.*copied, \([0-9.]*\) s.*/\1/p')"
}
par_bw() { # four dd's at once over four disjoint stretches -> bytes/s: a virtual or NVMe
  # disk often needs several requests in flight to reach its bandwidth, and stream mode
  # keeps many in flight
  drop_cache "$MODEL"
  local q=$((SEQ_COUNT / 4)) t0; t0=$(date +%s.%N)
  for i in 0 1 2 3; do dd if="$MODEL" of=/dev/null bs=16M iflag=direct skip=$((i * q)) count=$q 2>/dev/null & done
  wait
  calc "4 * $q * 16 * 2**20 / ($(date +%s.%N) - $t0)"
}
SEQ_BW=$(seq_bw)
PAR_BW=$(par_bw)
echo "- before the runs: dd O_DIRECT sequential, 16 MiB blocks, $SEQ_MB MiB: $(calc "round($SEQ_BW/1e6)") MB/s;" \
     "4 x dd in parallel: $(calc "round($PAR_BW/1e6)") MB/s"
bio="$(dirname "$FERRY")/bench/bench_io"
if [ -x "$bio" ]; then
  "$bio" "$MODEL" --seq 1G --reads 300 --qd 1,8,32 2>&1 | grep -E "sequential|random" | sed 's/^/- bench_io: /'
fi

# ---- 3. stream mode in the cgroup ----
run_stream() { # N JSON
  drop_cache "$MODEL"
  cg_reset
  local c0; c0=$(cached "$MODEL")
  /usr/bin/time -f "%e s wall, %M KiB maxrss" -o "$OUT/time.$1" \
    bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" \
    "$FERRY" run -m "$MODEL" --mode stream --ram "$RAM" -p "$PROMPT" -n "$1" $SAMPLING -t "$THREADS" \
    --stats --json "$2" >"$OUT/stream.$1.out" 2>"$OUT/stream.$1.err" ||
    { echo "stream run -n $1 failed:" >&2; tail -n 5 "$OUT/stream.$1.err" >&2; exit 1; }
  echo "$c0 $(cached "$MODEL") $(cg_peak) $(cg_stat $([ $CGV = 1 ] && echo cache || echo file)) \
    $(cat "$CG/memory.failcnt" 2>/dev/null || echo -)" >"$OUT/cg.$1"
}
echo "## stream mode: --ram $RAM in a $LIMIT cgroup, -n $N, -t $THREADS, $SAMPLING"
run_stream 1 "$OUT/s1.json"
run_stream "$N" "$OUT/sN.json"
read -r c0 c1 cgpeak cgcache failcnt <"$OUT/cg.$N"
J1=$OUT/s1.json J=$OUT/sN.json
b1=$(jget "$J1" "d['io']['bytes_read']") r1=$(jget "$J1" "d['io']['read_s']") n1=$(jget "$J1" "d['io']['reads']")
bN=$(jget "$J" "d['io']['bytes_read']") rN=$(jget "$J" "d['io']['read_s']") nN=$(jget "$J" "d['io']['reads']")
ngen=$(jget "$J" "d['n_generated']")
tps=$(jget "$J" "d['decode_tok_s']")
dec_s=$(calc "($ngen - 1) / $tps")
dec_b=$((bN - b1))
dec_r=$(calc "$rN - $r1")
h=$(jget "$J" "d['expert_cache']['host']")
hits=$(jget "$J" "d['expert_cache']['host']['hits']") miss=$(jget "$J" "d['expert_cache']['host']['misses']")
h1=$(jget "$J1" "d['expert_cache']['host']['hits']") m1=$(jget "$J1" "d['expert_cache']['host']['misses']")
BW_WAIT=$(calc "$dec_b / max($dec_r, 1e-9)")
BW_WALL=$(calc "$dec_b / $dec_s")
echo "- generated $ngen tokens (prompt $(jget "$J" "d['n_prompt']")); load $(jget "$J" "round(d['load_s'],2)") s, TTFT $(jget "$J" "round(d['ttft_s'],2)") s, prefill $(jget "$J" "round(d['prefill_tok_s'],2)") tok/s"
echo "- **decode $(calc "round($tps, 2)") tok/s** ($(calc "round($dec_s, 2)") s for $((ngen - 1)) tokens)"
echo "- expert cache: $h; decode hit rate $(calc "round(100*($hits-$h1)/max(1,$hits-$h1+$miss-$m1),1)")% (whole run $(calc "round(100*$hits/max(1,$hits+$miss),1)")%)"
echo "- disk reads: prefill $b1 B in $n1 reads ($r1 s waiting); whole run $bN B in $nN reads ($rN s waiting), direct=$(jget "$J" "d['io']['direct']")"
echo "- **decode bytes/token $(calc "round($dec_b / ($ngen - 1) / 2**20, 1)") MiB** ($(calc "round(($nN - $n1) / ($ngen - 1), 1)") reads/token, $(calc "round($dec_b / max(1, $nN - $n1) / 1024)") KiB/read)"
echo "- decode read wait $(calc "round($dec_r, 2)") s = $(calc "round(100 * $dec_r / $dec_s)")% of decode wall time"
# the disk is shared (other tenants, other builds): measure it again right after the run
SEQ2=$(seq_bw) PAR2=$(par_bw)
echo "- after the runs: dd sequential $(calc "round($SEQ2/1e6)") MB/s; 4 x dd $(calc "round($PAR2/1e6)") MB/s (the ratios below use the mean of before and after)"
SEQ_BW=$(calc "($SEQ_BW + $SEQ2) / 2") PAR_BW=$(calc "($PAR_BW + $PAR2) / 2")
echo "- **achieved read bandwidth: $(calc "round($BW_WALL/1e6)") MB/s over decode wall time ($(calc "round(100*$BW_WALL/$SEQ_BW)")% of dd, $(calc "round(100*$BW_WALL/$PAR_BW)")% of 4 x dd)**; $(calc "round($BW_WAIT/1e6)") MB/s over read-wait time (reads overlap compute, so this overstates the disk's rate)"
echo "- peak RSS $(jget "$J" "d['peak_rss_bytes']") B (budget $(jget "$J" "d['ram_budget_bytes']")); cgroup peak $cgpeak B of $LIMIT_B, page cache charged $cgcache B, failcnt $failcnt; model pages cached $c0 -> $c1 B"
echo "- /usr/bin/time: $(cat "$OUT/time.$N")"
hit_dec=$(calc "($hits-$h1)/max(1,$hits-$h1+$miss-$m1)")
cat >"$OUT/summary.json" <<EOF
{"model": "$MODEL", "limit": $LIMIT_B, "ram": "$RAM", "seq_bw": $SEQ_BW, "par_bw": $PAR_BW, "decode_tok_s": $tps,
 "decode_tokens": $((ngen - 1)), "decode_s": $dec_s, "decode_bytes": $dec_b, "decode_read_wait_s": $dec_r,
 "decode_reads": $((nN - n1)), "decode_hit_rate": $hit_dec, "capacity": $(jget "$J" "d['expert_cache']['host']['capacity']")}
EOF

# ---- 4. full mode, no cgroup ----
if [ "$FULL" = 1 ]; then
  echo "## full mode (no cgroup, default RAM budget), same prompt and flags"
  drop_cache "$MODEL"
  "$FERRY" run -m "$MODEL" --mode full -p "$PROMPT" -n "$N" $SAMPLING -t "$THREADS" --json "$OUT/full.json" \
    >"$OUT/full.out" 2>"$OUT/full.err" || { echo "full run failed:"; tail -n 3 "$OUT/full.err"; }
  if [ -s "$OUT/full.json" ]; then
    Jf=$OUT/full.json
    echo "- load $(jget "$Jf" "round(d['load_s'],2)") s, prefill $(jget "$Jf" "round(d['prefill_tok_s'],2)") tok/s, **decode $(jget "$Jf" "round(d['decode_tok_s'],2)") tok/s**, peak RSS $(jget "$Jf" "d['peak_rss_bytes']") B"
    same=$(python3 -c "import json,sys; a,b=(json.load(open(p))['generated_tokens'] for p in sys.argv[1:]); print('identical' if a==b else 'DIFFERENT')" "$J" "$Jf")
    echo "- generated tokens vs stream mode: $same"
  fi
fi
echo "## load after: $(cut -d' ' -f1-3 /proc/loadavg); JSON in $OUT"
