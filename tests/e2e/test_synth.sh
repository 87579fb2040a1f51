#!/usr/bin/env bash
# tests/e2e/test_synth.sh: `ferry synth` writes small models of both architectures, every
# recipe and both qwen3next layouts that `ferry info` reads back with the intended shape;
# with the fixtures' dims and vocabulary it reproduces the fixtures' tensor types and exact
# file sizes; output is deterministic (seed, thread count); bad flags fail cleanly.
set -u
BIN=${FERRY_BIN:-./build/ferry}
FIX=${FERRY_FIXTURES:-/work/shared/fixtures}
M=$FIX/models
[ -x "$BIN" ] || { echo "SKIP: no ferry binary at $BIN"; exit 77; }
T=$(mktemp -d /tmp/ferry_synth_XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# synth NAME ARGS... : runs ferry synth -o $T/NAME.gguf, expects success and a readable file.
synth() {
  local name=$1; shift
  if ! "$BIN" synth "$@" -o "$T/$name.gguf" >"$T/$name.out" 2>"$T/$name.err"; then
    fail "synth $name ($*): $(cat "$T/$name.err")"; return 1
  fi
  if ! "$BIN" info -m "$T/$name.gguf" >"$T/$name.info" 2>"$T/$name.infoerr"; then
    fail "ferry info $name: $(cat "$T/$name.infoerr")"; return 1
  fi
  return 0
}
info_field() { grep -E "^$2 " "$T/$1.info" | head -1 | sed -E "s/^$2 +//"; }

KQ_MOE="--embd 256 --ff 512 --heads 8 --kv-heads 2 --head-dim 32 --rope-dims 32 --experts 16 --experts-used 4 --expert-ff 256"
KQ_NEXT="--embd 256 --ff 512 --heads 4 --kv-heads 2 --head-dim 64 --rope-dims 16 --experts 12 --experts-used 4 --expert-ff 256 --shared-ff 256 --ssm-state 64 --ssm-groups 2 --ssm-dt-rank 4 --ssm-inner 256"

# 1. every arch x layout x recipe, tiny dims (K-quant fallbacks) and K-quant-sized dims
for q in f32 q8_0 q4_k_m; do
  for cfg in "moe|--arch qwen3moe|qwen3moe|" "next|--arch qwen3next|qwen3next|" "legacy|--arch qwen3next --layout legacy|qwen3next|"; do
    IFS='|' read -r tag args arch _ <<<"$cfg"
    # shellcheck disable=SC2086
    if synth "tiny-$tag-$q" $args --quant $q --layers 3; then
      case "$(info_field "tiny-$tag-$q" arch)" in
        "$arch"*) ;;
        *) fail "tiny-$tag-$q: arch $(info_field "tiny-$tag-$q" arch)" ;;
      esac
      case "$tag" in
        next) grep -E "^arch " "$T/tiny-$tag-$q.info" | grep -q split || fail "tiny-$tag-$q: not read as split" ;;
        legacy) grep -E "^arch " "$T/tiny-$tag-$q.info" | grep -q legacy || fail "tiny-$tag-$q: not read as legacy" ;;
      esac
      [ "$(info_field "tiny-$tag-$q" layers)" = "3" ] || fail "tiny-$tag-$q: layers"
      [ "$(info_field "tiny-$tag-$q" vocab)" = "282" ] || fail "tiny-$tag-$q: minimal vocab is not 282 tokens"
    fi
    if [ "$q" = q4_k_m ] && ! grep -q "fallbacks" "$T/tiny-$tag-$q.out"; then
      fail "tiny-$tag-$q: 64-wide rows must report K-quant fallbacks"
    fi
  done
done
grep -q "f32: " "$T/tiny-moe-f32.info" && ! grep -qE "q8_0|q4_K" "$T/tiny-moe-f32.info" || fail "f32 recipe is not all F32"
grep -q "bf16" "$T/tiny-legacy-q8_0.info" || fail "legacy layout lacks the BF16 shared-expert gate"

# 2. fixture dims + fixture vocabulary reproduce the fixtures' types and sizes exactly
check_like() { # name fixture
  local a=$T/$1.gguf b=$M/$2
  [ -f "$b" ] || { echo "note: $b missing, comparison skipped"; return; }
  "$BIN" info -m "$b" >"$T/$1.fixinfo" 2>/dev/null || { fail "ferry info $2"; return; }
  [ "$(stat -c %s "$a")" = "$(stat -c %s "$b")" ] || fail "$1: $(stat -c %s "$a") bytes, $2 has $(stat -c %s "$b")"
  for f in "tensor types" bytes layers vocab attention experts; do
    [ "$(grep -E "^$f " "$T/$1.info")" = "$(grep -E "^$f " "$T/$1.fixinfo")" ] || fail "$1 vs $2: '$f' differs"
  done
}
if [ -d "$M" ]; then
  # shellcheck disable=SC2086
  synth kq-moe --arch qwen3moe $KQ_MOE --name "pub-qwen3moe-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3moe-kq-Q4_K_M.gguf" && check_like kq-moe pub-qwen3moe-kq-Q4_K_M.gguf
  # shellcheck disable=SC2086
  synth kq-moe8 --arch qwen3moe $KQ_MOE --name "pub-qwen3moe-kq (random weights)" --quant q8_0 --vocab-from "$M/pub-qwen3moe-kq-Q4_K_M.gguf" && check_like kq-moe8 pub-qwen3moe-kq-Q8_0.gguf
  # shellcheck disable=SC2086
  synth kq-next --arch qwen3next $KQ_NEXT --name "pub-qwen3next-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3next-kq-Q4_K_M.gguf" && check_like kq-next pub-qwen3next-kq-Q4_K_M.gguf
  # shellcheck disable=SC2086
  synth kq-legacy --arch qwen3next --layout legacy $KQ_NEXT --name "pub-qwen3next-legacy-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3next-kq-Q4_K_M.gguf" && check_like kq-legacy pub-qwen3next-legacy-kq-Q4_K_M.gguf
  synth tiny-moe-vocab --arch qwen3moe --name "pub-qwen3moe-tiny (random weights)" --quant f32 --vocab-from "$M/pub-qwen3moe-tiny-F32.gguf" && check_like tiny-moe-vocab pub-qwen3moe-tiny-F32.gguf
  synth tiny-next-vocab --arch qwen3next --name "pub-qwen3next-tiny (random weights)" --quant f32 --vocab-from "$M/pub-qwen3next-tiny-F32.gguf" && check_like tiny-next-vocab pub-qwen3next-tiny-F32.gguf
  synth full-vocab --arch qwen3moe --name "qwen3moe-tiny (random weights)" --quant q8_0 --vocab-from "$M/qwen3moe-tiny-Q8_0.gguf" && check_like full-vocab qwen3moe-tiny-Q8_0.gguf
else
  echo "note: no fixtures at $M; fixture comparisons skipped"
fi

# 3. determinism: same seed -> same bytes whatever the thread count; other seed -> other bytes
# shellcheck disable=SC2086
synth det1 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 7 -t 1 &&
  synth det2 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 7 -t 3 &&
  synth det3 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 8 -t 2 && {
  cmp -s "$T/det1.gguf" "$T/det2.gguf" || fail "same seed, different thread count: files differ"
  cmp -s "$T/det1.gguf" "$T/det3.gguf" && fail "different seeds gave identical files"
}
# shellcheck disable=SC2086
synth exact --arch qwen3moe $KQ_MOE --quant q4_k_m --exact-quant || true

# 4. bad flags: one clear error, non-zero exit (not a crash), no output file left behind
bad() { # description, args...
  local d=$1; shift
  rm -f "$T/bad.gguf" "$T/bad.gguf.tmp"
  "$BIN" synth "$@" >"$T/bad.out" 2>"$T/bad.err"
  local rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then fail "$d: exit code $rc"; fi
  grep -qi "error" "$T/bad.err" || fail "$d: no error message"
  [ -e "$T/bad.gguf" ] || [ -e "$T/bad.gguf.tmp" ] && fail "$d: left an output file"
  [ "$(wc -l <"$T/bad.err")" -le 2 ] || fail "$d: more than one error line: $(cat "$T/bad.err")"
}
O="-o $T/bad.gguf"
# shellcheck disable=SC2086
{
  bad "unknown flag" --arch qwen3moe --quant f32 --bogus $O
  bad "no arch" --quant f32 $O
  bad "bad arch" --arch llama --quant f32 $O
  bad "no quant" --arch qwen3moe $O
  bad "bad quant" --arch qwen3moe --quant q5_k $O
  bad "no output" --arch qwen3moe --quant f32
  bad "missing value" --arch qwen3moe --quant f32 $O --layers
  bad "zero layers" --arch qwen3moe --quant f32 --layers 0 $O
  bad "non-numeric" --arch qwen3moe --quant f32 --embd 12x $O
  bad "negative" --arch qwen3moe --quant f32 --embd -5 $O
  bad "heads/kv" --arch qwen3moe --quant f32 --heads 6 --kv-heads 4 $O
  bad "experts-used > experts" --arch qwen3moe --quant f32 --experts 4 --experts-used 8 $O
  bad "layout on qwen3moe" --arch qwen3moe --quant f32 --layout legacy $O
  bad "bad layout" --arch qwen3next --quant f32 --layout fused $O
  bad "legacy interval" --arch qwen3next --quant f32 --layout legacy --attn-interval 3 $O
  bad "v-heads vs k-heads" --arch qwen3next --quant f32 --ssm-groups 3 --ssm-dt-rank 4 $O
  bad "unknown preset" --preset qwen3-7b --quant f32 $O
  bad "preset vs arch" --preset qwen3-30b-a3b --arch qwen3next --quant f32 $O
  bad "missing vocab file" --arch qwen3moe --quant f32 --vocab-from "$T/nope.gguf" $O
  bad "vocab file not gguf" --arch qwen3moe --quant f32 --vocab-from "$T/tiny-moe-f32.info" $O
  bad "vocab too small" --arch qwen3moe --quant f32 --vocab 100 $O
  bad "stray argument" --arch qwen3moe --quant f32 extra $O
  bad "unwritable output" --arch qwen3moe --quant f32 -o /nonexistent-dir/x.gguf
}
"$BIN" synth --help >/dev/null || fail "--help"

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "test_synth: all passed"
exit 0
