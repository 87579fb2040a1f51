#!/usr/bin/env bash
# bench/prefetch_cgroup.sh: does stale-gate prefetch pay? Stream-mode decode in a memory
# cgroup (default: a third of the model file), --prefetch off and on interleaved in one
# run (off, on, off, on, ...), the model dropped from the page cache before every run.
# Per run: decode tok/s, bytes read per decode token, hit rate, read-wait (stall) time
# per token, and with prefetch the share of guesses that were right.
#
# usage: MODEL=/var/tmp/r30.gguf bench/prefetch_cgroup.sh
#   LIMIT=<bytes, default file/3> RAM=<default LIMIT - 128 MiB> N=64 REPS=2 THREADS=2
#   FERRY=build/ferry PROMPT="..." SAMPLING="--seed 7" OUT=dir
#   ON_FLAGS="--prefetch" (e.g. "--prefetch --prefetch-cap 0.1")
# Needs root and a memory cgroup (v1 or v2). Prints a markdown table; OUT keeps the JSON.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=${MODEL:?set MODEL=path.gguf}
SIZE=$(stat -c %s "$MODEL")
LIMIT=${LIMIT:-$((SIZE / 3))}
RAM=${RAM:-$((LIMIT - 134217728))}
N=${N:-64}
REPS=${REPS:-2}
THREADS=${THREADS:-2}
FERRY=${FERRY:-$src/build/ferry}
PROMPT=${PROMPT:-"Explain how a car ferry loads vehicles, in three short paragraphs."}
SAMPLING=${SAMPLING:-"--seed 7"}
OUT=${OUT:-$(mktemp -d /tmp/ferry_prefetch.XXXXXX)}
ON_FLAGS=${ON_FLAGS:---prefetch}
mkdir -p "$OUT"
drop_cache() {
  python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$1"
}
CG=""
cleanup() { [ -n "$CG" ] && [ -d "$CG" ] && rmdir "$CG" 2>/dev/null || true; }
trap cleanup EXIT
if [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  CG=/sys/fs/cgroup/ferry_pf_$$; mkdir "$CG"; echo "$LIMIT" >"$CG/memory.max"
elif [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  CG=/sys/fs/cgroup/memory/ferry_pf_$$; mkdir "$CG"; echo "$LIMIT" >"$CG/memory.limit_in_bytes"
else
  echo "no memory cgroup controller" >&2; exit 1
fi
echo "## prefetch off/on ($ON_FLAGS): $MODEL ($SIZE B), cgroup $LIMIT B, --ram $RAM, -n $N, -t $THREADS, $SAMPLING"
echo "- commit $(git -C "$src" rev-parse --short HEAD); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), nproc $(nproc); load before $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| run | prefetch | decode tok/s | MiB read / decode token | hit rate | stall ms / token | guesses right | wrong guesses read | skipped by cap |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$REPS"); do
  for pf in off on; do
    flag=""; [ $pf = on ] && flag=$ON_FLAGS
    for n in 1 "$N"; do # -n 1 (prefill only) is subtracted so the numbers are decode only
      drop_cache "$MODEL"
      bash -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" \
        "$FERRY" run -m "$MODEL" --mode stream --ram "$RAM" -p "$PROMPT" -n "$n" $SAMPLING -t "$THREADS" \
        $flag --json "$OUT/$pf.$r.$n.json" >/dev/null 2>"$OUT/$pf.$r.$n.err" ||
        { echo "run failed:"; tail -3 "$OUT/$pf.$r.$n.err"; exit 1; }
    done
    python3 - "$OUT/$pf.$r.1.json" "$OUT/$pf.$r.$N.json" "$r" "$pf" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
n = b["n_generated"] - 1
ha, hb = a["expert_cache"]["host"], b["expert_cache"]["host"]
hits, miss = hb["hits"] - ha["hits"], hb["misses"] - ha["misses"]
by = (b["io"]["bytes_read"] - a["io"]["bytes_read"]) / n / 2**20
stall = (b["io"]["read_s"] - a["io"]["read_s"]) / n * 1e3
pa, pb = a["expert_cache"].get("prefetch"), b["expert_cache"].get("prefetch")
right = wrong_read = skipped = "-"
if pb:
    used, wrong = pb["used"] - pa["used"], pb["wrong"] - pa["wrong"]
    right = "%.1f%% of %d" % (100 * used / max(1, used + wrong), used + wrong)
    wrong_read = "%d (%d cancelled)" % (wrong, pb["cancelled"] - pa["cancelled"])
    skipped = "%d" % (pb["skipped_by_cap"] - pa["skipped_by_cap"])
print("| %s | %s | %.2f | %.1f | %.1f%% | %.1f | %s | %s | %s |" % (
    sys.argv[3], sys.argv[4], b["decode_tok_s"], by, 100 * hits / max(1, hits + miss), stall,
    right, wrong_read, skipped))
EOF
  done
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); JSON in $OUT"
