# The three expert tiers (VRAM slots, host RAM slots, the file) on the simulated device
# (--backend sim: the CPU kernels behind device memory, copy streams and events), so every
# tier path runs without a GPU:
# - stream mode equals full mode bit for bit (score, exact and fast) with the VRAM tier and
#   the host tier each at their minimum, at 1.5x and at everything-fits, the minimums read
#   from ferry's own messages;
# - rules 1 and 2 hold with every expert computed on the CPU and with every one on the
#   device (--expert-compute cpu / gpu), and the VRAM tier's counters move;
# - a VRAM budget too small for the dense part is refused with one line naming the
#   minimum --vram; an I/O error in the middle of a run is the same clean error as on CPU.
# ctest-labels: slow
source "$(dirname "$0")/lib.sh"
SIM=(--backend sim)
score1() { "$FERRY_BIN" score -m "$1" --ids "1 2" --from 1 --json "$TMP/x.json" "${SIM[@]}" "${@:2}" 2>&1; }
# the --vram that just holds the dense part (stream mode), from the error message
min_vram() { score1 "$1" --mode stream --vram 1 "${@:2}" | sed -n 's/.*use --vram \([0-9]*\).*/\1/p'; }
# the --vram that also holds the smallest VRAM expert tier
min_tier() { score1 "$1" --mode stream --vram "$2" --expert-compute gpu "${@:3}" | sed -n 's/.*use --vram \([0-9]*\).*/\1/p'; }
min_ram() { score1 "$1" --mode stream --vram 4G --ram 1 "${@:2}" | sed -n 's/.*use --ram \([0-9]*\).*/\1/p'; }

for m in "${MODELS[@]}"; do
  path=$FERRY_FIXTURES/models/$m.gguf
  for exact in "" "--exact"; do
    vd=$(min_vram "$path" $exact)
    vt=$( [ -n "$vd" ] && min_tier "$path" "$vd" $exact)
    rm_=$(min_ram "$path" $exact)
    if [ -z "$vd" ] || [ -z "$vt" ] || [ -z "$rm_" ]; then
      FAILS=$((FAILS + 1)); echo "FAIL $m $exact: no minimum in the messages (vram $vd, tier $vt, ram $rm_)"; continue
    fi
    if [ "$m" = "${MODELS[0]}" ]; then
      expect_error "$m $exact --vram below the dense part" "VRAM budget .* too small.*use --vram $vd" \
        "$FERRY_BIN" score -m "$path" --ids "1 2" --from 1 --json "$TMP/x.json" "${SIM[@]}" --mode stream --vram $((vd - 1)) $exact
    fi
    tier=$((vt - vd))
    for pair in "$vt $rm_" "$((vd + tier * 3 / 2)) $((rm_ + rm_ / 2))" "4G 4G"; do
      set -- $pair
      run_case "$m score $exact sim stream --vram $1 --ram $2 == sim full" \
        $CHECK same "$m" --extra-a="--backend sim --mode full $exact" \
        --extra-b="--backend sim --mode stream --vram $1 --ram $2 $exact"
    done
  done
done

# rules 1 and 2 with every expert on the CPU, and with every one on the device
for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M pub-qwen3next-tiny-F32; do
  path=$FERRY_FIXTURES/models/$m.gguf
  vd=$(min_vram "$path" --exact)
  vt=$(min_tier "$path" "$vd" --exact)
  for xc in cpu gpu; do
    run_case "exact score $m sim --expert-compute $xc" $CHECK score "$m" --rule exact \
      --extra="--exact --backend sim --mode stream --vram $vt --expert-compute $xc"
    run_case "fast score $m sim --expert-compute $xc" $CHECK score "$m" --rule golden \
      --extra="--backend sim --mode stream --vram $vt --expert-compute $xc"
  done
done

# the VRAM tier is used: hits, and (with room) promotions of host hits
m=pub-qwen3moe-kq-Q4_K_M
path=$FERRY_FIXTURES/models/$m.gguf
vd=$(min_vram "$path")
if "$FERRY_BIN" run -m "$path" -p "The harbour at dawn was quiet except for the gulls." -n 24 --temp 0 \
     "${SIM[@]}" --mode stream --vram $((vd + vd)) --json "$TMP/r.json" >/dev/null 2>"$TMP/err"; then
  run_case "$m VRAM tier counters" python3 - "$TMP/r.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
v, h, x = d["expert_cache"]["vram"], d["expert_cache"]["host"], d["experts_computed"]
assert v["capacity"] > 0 and v["hits"] > 0 and v["misses"] > 0, v
assert h["capacity"] > 0 and h["misses"] > 0, h
assert x["gpu"] > 0 and x["gpu"] + x["cpu"] >= v["hits"], x
assert d["h2d_bytes"] > 0 and d["backend"] == "sim", d
# decode_traffic: the decode phase's share, every decode acquisition computed somewhere,
# the same number of expert slots for every decode token
t, n = d["decode_traffic"], d["n_generated"] - 1
acq = t["vram_hits"] + t["vram_misses"]
assert n > 0 and 0 < acq == t["experts_gpu"] + t["experts_cpu"] and acq % n == 0, t
assert t["vram_hits"] <= v["hits"] and t["vram_misses"] <= v["misses"], t
assert t["host_hits"] + t["host_misses"] == t["vram_misses"] <= h["hits"] + h["misses"], t
assert t["h2d_bytes"] <= d["h2d_bytes"] and t["io_bytes"] <= d["io"]["bytes_read"], t
print("vram", v, "host", h, "computed", x, "decode", t)
EOF
else
  FAILS=$((FAILS + 1)); echo "FAIL $m tier run: $(tail -1 "$TMP/err")"
fi

# an I/O error in the middle of a run: one clear line, as on the CPU backend
expect_error "$m sim stream EIO mid-run" "read of .* failed: Input/output error" \
  env FERRY_IO_FAULT=errno:30:5 "$FERRY_BIN" run -m "$path" -p "Hello there, how are you" -n 16 --temp 0 \
  "${SIM[@]}" --mode stream --vram "$vd" --ram 4G --expert-compute cpu
finish
