# Routing: --trace-experts writes one JSON line per token per MoE layer in the documented
# format; --routing-stats reports lag1_reuse / stale_gate_accuracy / coverage90 in --json
# and --stats; `ferry cachesim` replaying a stream run's trace with the run's own --ram and
# ferry's policy reproduces the run's expert-cache hits and misses exactly (with and
# without --prefetch, both architectures); bad traces, sizes and flags fail with one error
# line; `synth --routing real` on a small model routes measurably more like a real model
# (reuse between tokens, a working stale gate) than the random one.
source "$(dirname "$0")/lib.sh"
F=$FERRY_BIN
PROMPT="Tell me about the sea and the ships that sail on it, and the harbours they visit."

# The smallest --ram stream mode accepts, from its own error, plus a few slots' worth.
min_ram() { # MODEL -> bytes
  "$F" run -m "$1" -p x -n 1 -t 2 -b 8 --mode stream --ram 1M --trace-experts "$TMP/none.jsonl" 2>&1 |
    sed -n 's/.*use --ram \([0-9]*\) .*/\1/p'
}

# check_trace TRACE JSON: format and counts of a trace against its run's report.
check_trace() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
run = json.load(open(sys.argv[2]))
assert rows, "empty trace"
layers = max(r["layer"] for r in rows) + 1
# every position that went through the model: the prompt and all generated tokens but the
# last (it is sampled, never fed back)
npos = run["n_prompt"] + run["n_generated"] - 1
assert len(rows) == npos * layers, (len(rows), npos, layers)
k = len(rows[0]["experts"])
seen = set()
for r in rows:
    assert list(r)[:5] == ["pos", "layer", "chunk", "experts", "weights"], list(r)
    assert len(r["experts"]) == k and len(set(r["experts"])) == k, r
    assert len(r["weights"]) == k and abs(sum(r["weights"]) - 1) < 1e-4, r
    assert all(w >= 0 for w in r["weights"]) and r["weights"] == sorted(r["weights"], reverse=True)
    assert r["chunk"] <= r["pos"], r
    assert ("pred" in r) == (r["layer"] > 0), r  # predictions are on with --trace-experts
    if "pred" in r:
        assert len(r["pred"]) == k and len(set(r["pred"])) == k, r
    seen.add((r["pos"], r["layer"]))
assert seen == {(p, l) for p in range(npos) for l in range(layers)}, "positions missing"
rt = run["routing"]
for key in ("lag1_reuse", "stale_gate_accuracy", "coverage90"):
    assert 0 <= rt[key] <= 1, (key, rt)
# the report's statistics recomputed from the trace
def ov(a, b): return len(set(a) & set(b))
by = {(r["pos"], r["layer"]): r for r in rows}
lag = [sum(ov(by[p, l]["experts"], by[p - 1, l]["experts"]) for p in range(1, npos)) / ((npos - 1) * k)
       for l in range(layers)]
st = [sum(ov(by[p, l]["experts"], by[p, l]["pred"]) for p in range(npos)) / (npos * k)
      for l in range(1, layers)]
assert abs(sum(lag) / layers - rt["lag1_reuse"]) < 1e-6, (lag, rt)
assert abs(sum(st) / len(st) - rt["stale_gate_accuracy"]) < 1e-6, (st, rt)
n_exp = 16 if run["arch"] == "qwen3moe" else 12  # pub-qwen3moe-kq / pub-qwen3next-kq
cov = []
for l in range(layers):
    cnt = {}
    for p in range(npos):
        for e in by[p, l]["experts"]:
            cnt[e] = cnt.get(e, 0) + 1
    c = sorted(cnt.values(), reverse=True)
    tot, acc, n = sum(c), 0, 0
    while 10 * acc < 9 * tot:
        acc += c[n]; n += 1
    cov.append(n / n_exp)
assert abs(sum(cov) / layers - rt["coverage90"]) < 1e-6, (cov, rt)
print("trace ok: %d lines, %d layers, top-%d" % (len(rows), layers, k))
EOF
}

# same_counts RUN_JSON SIM_JSON: the simulation's hits/misses equal the run's.
same_counts() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))["expert_cache"]
sim = json.load(open(sys.argv[2]))["results"][0]
assert sim["policy"] == "ferry", sim
got = (sim["hits"], sim["misses"], sim["evictions"], sim["capacity_bytes"], sim["capacity_slots"])
want = (run["host"]["hits"], run["host"]["misses"], run["host"]["evictions"],
        run["host_capacity_bytes"], run["host"]["capacity"])
assert got == want, ("sim", got, "run", want)
assert run["host"]["misses"] > 0 and run["host"]["hits"] > 0, run
if "prefetch" in run:
    p = run["prefetch"]
    assert (sim["prefetch_issued"], sim["prefetch_used"], sim["prefetch_wrong"]) == \
        (p["issued"], p["used"], p["wrong"]), (sim, p)
    assert p["used"] > 0, p
print("exact:", got)
EOF
}

replay_case() { # MODEL NAME [--prefetch]
  local m=$FERRY_FIXTURES/models/$1.gguf name=$2 pf=${3:-}
  local base; base=$(min_ram "$m")
  [ -n "$base" ] || { echo "no minimum --ram in the error"; return 1; }
  local ram=$((base + 300000)) # a few slots (~120 KiB each) more than the minimum
  "$F" run -m "$m" -p "$PROMPT" -n 24 -t 2 -b 8 --mode stream --ram "$ram" $pf --routing-stats \
    --trace-experts "$TMP/$name.jsonl" --json "$TMP/$name.json" --stats >/dev/null 2>"$TMP/$name.err" ||
    { cat "$TMP/$name.err"; return 1; }
  grep -qE "^  routing +lag-1 reuse [0-9.]+%, stale-gate accuracy [0-9.]+%, coverage90" "$TMP/$name.err" ||
    { echo "no routing line in --stats"; cat "$TMP/$name.err"; return 1; }
  check_trace "$TMP/$name.jsonl" "$TMP/$name.json" || return 1
  "$F" cachesim "$TMP/$name.jsonl" --model "$m" --ram "$ram" -t 2 -b 8 --policies ferry \
    --prefetch "$([ -n "$pf" ] && echo on || echo off)" --json "$TMP/$name.sim.json" >/dev/null || return 1
  same_counts "$TMP/$name.json" "$TMP/$name.sim.json"
}

run_case "qwen3moe: trace, stats, cachesim == run" replay_case pub-qwen3moe-kq-Q4_K_M moe
run_case "qwen3moe --prefetch: cachesim == run" replay_case pub-qwen3moe-kq-Q4_K_M moepf --prefetch
run_case "qwen3next: trace, stats, cachesim == run" replay_case pub-qwen3next-kq-Q4_K_M next
run_case "qwen3next --prefetch: cachesim == run" replay_case pub-qwen3next-kq-Q4_K_M nextpf --prefetch

# Every policy, scope and size runs, and more slots never hit less under LRU.
policies() {
  "$F" cachesim "$TMP/moe.jsonl" --slots 25%,50%,100% --json "$TMP/all.json" >/dev/null || return 1
  python3 - "$TMP/all.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
res = d["results"]
names = {(r["policy"], r["scope"], r["prefetch"]) for r in res}
assert len(names) == 2 * (1 + 3 * 2), names
lru = [r["hit_rate"] for r in res if r["policy"] == "lru" and r["scope"] == "layer" and not r["prefetch"]]
assert lru == sorted(lru) and lru[-1] > lru[0], lru
full = [r for r in res if r["slots_per_layer"] == d["experts"] and not r["prefetch"]]
first = d["positions"] and min(r["misses"] for r in full)
# with every expert resident only first uses miss
assert all(r["misses"] == first for r in full), [(r["policy"], r["misses"]) for r in full]
print("policies ok", lru)
EOF
}
run_case "cachesim: policies, scopes, sizes" policies

# bench writes one trace per mode
bench_trace() {
  "$F" bench -m "$FERRY_FIXTURES/models/pub-qwen3moe-kq-Q4_K_M.gguf" -n 4 -t 2 --modes full,stream \
    --trace-experts "$TMP/b.jsonl" --routing-stats >"$TMP/b.out" 2>/dev/null || return 1
  cmp "$TMP/b.jsonl.full" "$TMP/b.jsonl.stream" && grep -q "stale-gate acc" "$TMP/b.out"
}
run_case "bench: a trace per mode, identical routing" bench_trace

# bad input: one clear error line each
M=$FERRY_FIXTURES/models/pub-qwen3moe-kq-Q4_K_M.gguf
printf '{"pos": 0, "layer": 0, "experts": [1, 2, 3, 4]}\nnot json\n' >"$TMP/bad1.jsonl"
printf '{"pos": 0, "layer": 0, "experts": [1, 2, 3, 4]}\n{"pos": 1, "layer": 0, "experts": [1, 2]}\n' >"$TMP/bad2.jsonl"
printf '{"pos": 0, "layer": 0, "experts": [1, 2, 3, 99]}\n' >"$TMP/bad3.jsonl"
printf '{"pos": 0, "layer": 0, "experts": [1, -2, 3, 4]}\n' >"$TMP/bad4.jsonl"
printf '{"pos": 0, "experts": [1, 2, 3, 4]}\n' >"$TMP/bad5.jsonl"
printf '{"pos": 0, "layer": 0, "experts": [1, 2, 3, 4]}\n' >"$TMP/nopred.jsonl"
: >"$TMP/empty.jsonl"
expect_error "cachesim: missing trace" "cannot open trace" "$F" cachesim "$TMP/nope.jsonl" --slots 4
expect_error "cachesim: malformed line" "bad1.jsonl:2: not a JSON object" "$F" cachesim "$TMP/bad1.jsonl" --slots 4
expect_error "cachesim: wrong id count" "bad2.jsonl:2: 2 experts, but earlier lines have 4" "$F" cachesim "$TMP/bad2.jsonl" --slots 4
expect_error "cachesim: expert out of range" "expert 99 of layer 0, but that layer has 16" "$F" cachesim "$TMP/bad3.jsonl" --model "$M" --ram 64M
expect_error "cachesim: negative id" "bad4.jsonl:1: \"experts\" is not" "$F" cachesim "$TMP/bad4.jsonl" --slots 4
expect_error "cachesim: missing key" "bad5.jsonl:1: missing \"layer\"" "$F" cachesim "$TMP/bad5.jsonl" --slots 4
expect_error "cachesim: empty trace" "no records" "$F" cachesim "$TMP/empty.jsonl" --slots 4
expect_error "cachesim: prefetch without predictions" "lacks" "$F" cachesim "$TMP/nopred.jsonl" --slots 4 --prefetch on
expect_error "cachesim: bad --slots" "--slots: '12x'" "$F" cachesim "$TMP/nopred.jsonl" --slots 12x
expect_error "cachesim: bad --slots percent" "--slots: '150%'" "$F" cachesim "$TMP/nopred.jsonl" --slots 150%
expect_error "cachesim: --ram needs --model" "--ram needs --model" "$F" cachesim "$TMP/nopred.jsonl" --ram 1G
expect_error "cachesim: bad --ram" "--ram" "$F" cachesim "$TMP/nopred.jsonl" --model "$M" --ram 12Q
expect_error "cachesim: --ram too small" "too small for stream mode" "$F" cachesim "$TMP/nopred.jsonl" --model "$M" --ram 1M
expect_error "cachesim: no size" "give --ram" "$F" cachesim "$TMP/nopred.jsonl"
expect_error "cachesim: unknown policy" "--policies: unknown value 'fifo'" "$F" cachesim "$TMP/nopred.jsonl" --slots 4 --policies fifo
printf '{"pos": 0, "layer": 0, "experts": [1, 2, 3]}\n' >"$TMP/k3.jsonl"
expect_error "cachesim: k differs from the model" "3 experts per token but .* uses 4" "$F" cachesim "$TMP/k3.jsonl" --model "$M" --ram 1G
expect_error "run: unwritable trace" "cannot write --trace-experts file" "$F" run -m "$M" -p hi -n 2 --trace-experts /nonexistent/dir/t.jsonl
expect_error "score: no trace" "--trace-experts is for run and bench" "$F" score -m "$M" --ids "1 2 3" --from 1 --json "$TMP/s.json" --trace-experts "$TMP/t.jsonl"
expect_error "synth: bad --routing" "--routing must be random or real" "$F" synth --arch qwen3moe --quant f32 --routing fake -o "$TMP/x.gguf"
expect_error "synth: real routing needs width" "needs --embd a multiple of 256" "$F" synth --arch qwen3moe --quant f32 --routing real -o "$TMP/x.gguf"
expect_error "synth: bad knob" "unknown knob 'zz'" "$F" synth --arch qwen3moe --embd 512 --quant f32 --routing real --routing-knobs zz=1 -o "$TMP/x.gguf"

# --routing real routes more like a real model than random weights (small model, quick)
real_vs_random() {
  local r
  for r in random real; do
    "$F" synth --arch "$1" --embd 512 --layers 4 --experts 32 --experts-used 4 --heads 4 --kv-heads 2 \
      --head-dim 64 --rope-dims 16 --expert-ff 64 --quant q8_0 --routing $r -o "$TMP/s_$r.gguf" >/dev/null || return 1
    "$F" run -m "$TMP/s_$r.gguf" -p "$PROMPT" --raw -n 48 -t 1 --temp 1 --seed 3 --routing-stats \
      --json "$TMP/s_$r.json" >/dev/null 2>&1 || return 1
  done
  python3 - "$TMP/s_random.json" "$TMP/s_real.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["routing"] for p in sys.argv[1:])
print("random", a, "real", b)
assert b["lag1_reuse"] > a["lag1_reuse"] + 0.1, "no temporal reuse"
assert b["stale_gate_accuracy"] > 0.75 and b["stale_gate_accuracy"] > a["stale_gate_accuracy"] + 0.2
EOF
}
run_case "synth --routing real (qwen3moe): reuse and stale gate" real_vs_random qwen3moe
run_case "synth --routing real (qwen3next): reuse and stale gate" real_vs_random qwen3next
finish
