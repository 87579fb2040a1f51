#!/usr/bin/env bash
# tests/e2e/test_synth.sh: `ferry synth` writes small models of both architectures, every
# recipe and both qwen3next layouts that `ferry info` reads back with the intended shape;
# with the fixtures' dims and vocabulary it reproduces the fixtures' tensor types and exact
# file sizes; with the real Qwen3 vocabulary (the vocabulary-only GGUF) it writes a model
# that tokenizes like the vocabulary; --vocab-only writes that kind of file; output is
# deterministic (seed, thread count); bad flags fail cleanly. The output file is written
# whole or not at all: a FIFO, directory or device as -o is refused and left alone, an
# existing OUT.tmp is not touched, and SIGINT/SIGTERM remove the temporary file.
set -u
BIN=${FERRY_BIN:-./build/ferry}
FIX=${FERRY_FIXTURES:-$(dirname "$0")/../fixtures}
M=$FIX/models
[ -x "$BIN" ] || { echo "FAIL: no ferry binary at $BIN"; exit 1; }
[ -f "$M/qwen3-vocab.gguf" ] || { echo "FAIL: no fixtures at $M (tests/fixtures is part of the repository)"; exit 1; }
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
  [ -f "$b" ] || { fail "fixture $b is missing"; return; }
  "$BIN" info -m "$b" >"$T/$1.fixinfo" 2>/dev/null || { fail "ferry info $2"; return; }
  [ "$(stat -c %s "$a")" = "$(stat -c %s "$b")" ] || fail "$1: $(stat -c %s "$a") bytes, $2 has $(stat -c %s "$b")"
  for f in "tensor types" bytes layers vocab attention experts; do
    [ "$(grep -E "^$f " "$T/$1.info")" = "$(grep -E "^$f " "$T/$1.fixinfo")" ] || fail "$1 vs $2: '$f' differs"
  done
}
{
  # shellcheck disable=SC2086
  synth kq-moe --arch qwen3moe $KQ_MOE --name "pub-qwen3moe-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3moe-kq-Q4_K_M.gguf" && check_like kq-moe pub-qwen3moe-kq-Q4_K_M.gguf
  # (the Q8_0 twin of that fixture is not in the repository, tests/fixtures/README.md: its
  #  size, 16,572,544 bytes, and types, q8_0 x30 + f32 x21, are checked from the README)
  # shellcheck disable=SC2086
  synth kq-moe8 --arch qwen3moe $KQ_MOE --name "pub-qwen3moe-kq (random weights)" --quant q8_0 --vocab-from "$M/pub-qwen3moe-kq-Q4_K_M.gguf" && {
    [ "$(stat -c %s "$T/kq-moe8.gguf")" = 16572544 ] || fail "kq-moe8: $(stat -c %s "$T/kq-moe8.gguf") bytes, the fixture has 16572544"
    grep -qE "^tensor types +f32: 21 .* q8_0: 30 " "$T/kq-moe8.info" || fail "kq-moe8 types: $(grep '^tensor types' "$T/kq-moe8.info")"
  }
  # shellcheck disable=SC2086
  synth kq-next --arch qwen3next $KQ_NEXT --name "pub-qwen3next-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3next-kq-Q4_K_M.gguf" && check_like kq-next pub-qwen3next-kq-Q4_K_M.gguf
  # shellcheck disable=SC2086
  synth kq-legacy --arch qwen3next --layout legacy $KQ_NEXT --name "pub-qwen3next-legacy-kq (random weights)" --quant q4_k_m --vocab-from "$M/pub-qwen3next-kq-Q4_K_M.gguf" && check_like kq-legacy pub-qwen3next-legacy-kq-Q4_K_M.gguf
  synth tiny-moe-vocab --arch qwen3moe --name "pub-qwen3moe-tiny (random weights)" --quant f32 --vocab-from "$M/pub-qwen3moe-tiny-F32.gguf" && check_like tiny-moe-vocab pub-qwen3moe-tiny-F32.gguf
  synth tiny-next-vocab --arch qwen3next --name "pub-qwen3next-tiny (random weights)" --quant f32 --vocab-from "$M/pub-qwen3next-tiny-F32.gguf" && check_like tiny-next-vocab pub-qwen3next-tiny-F32.gguf
  # the real vocabulary: the 27,123,456-byte full-vocabulary fixture model, rebuilt from the
  # vocabulary-only GGUF (its weights differ: not in the repository), tokenizes as the
  # vocabulary does
  synth full-vocab --arch qwen3moe --name "qwen3moe-tiny (random weights)" --quant q8_0 --vocab-from "$M/qwen3-vocab.gguf" && {
    [ "$(stat -c %s "$T/full-vocab.gguf")" = 27123456 ] || fail "full-vocab: $(stat -c %s "$T/full-vocab.gguf") bytes, the fixture has 27123456"
    [ "$(info_field full-vocab vocab)" = 151936 ] || fail "full-vocab: vocab $(info_field full-vocab vocab)"
    t1=$("$BIN" tokenize -m "$T/full-vocab.gguf" -p "Hello world, 你好 <|im_start|>" 2>&1)
    t2=$("$BIN" tokenize -m "$M/qwen3-vocab.gguf" -p "Hello world, 你好 <|im_start|>" 2>&1)
    [ "$t1" = "$t2" ] && [ "$t2" = "9707 1879 11 220 108386 220 151644" ] || fail "full-vocab tokenizes '$t1', vocab '$t2'"
  }
  # --vocab-only: no tensors, the source's tokenizer keys, usable as --vocab-from again
  if "$BIN" synth --vocab-only --vocab-from "$M/pub-qwen3moe-tiny-F32.gguf" -o "$T/v.gguf" >"$T/v.out" 2>&1; then
    "$BIN" info -m "$T/v.gguf" >"$T/v.info" 2>&1 && fail "info on a vocabulary-only file must refuse"
    grep -q "no tensors (general.type 'vocab')" "$T/v.info" || fail "vocab-only info: $(cat "$T/v.info")"
    [ "$("$BIN" tokenize -m "$T/v.gguf" -p "The quick brown fox")" = "$("$BIN" tokenize -m "$M/pub-qwen3moe-tiny-F32.gguf" -p "The quick brown fox")" ] ||
      fail "vocab-only file tokenizes differently"
    synth from-vocab-only --arch qwen3moe --name "pub-qwen3moe-tiny (random weights)" --quant f32 --vocab-from "$T/v.gguf" &&
      check_like from-vocab-only pub-qwen3moe-tiny-F32.gguf
  else
    fail "--vocab-only: $(cat "$T/v.out")"
  fi
  # the committed vocabulary is what --vocab-only makes of it (a round trip is byte-exact)
  "$BIN" synth --vocab-only --vocab-from "$M/qwen3-vocab.gguf" --name "Qwen3 vocabulary (151,936 tokens)" -o "$T/v2.gguf" >/dev/null 2>&1 &&
    cmp -s "$T/v2.gguf" "$M/qwen3-vocab.gguf" || fail "--vocab-only of qwen3-vocab.gguf is not byte-identical to it"
}

# 3. determinism: same seed -> same bytes whatever the thread count; other seed -> other bytes
# shellcheck disable=SC2086
synth det1 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 7 -t 1 &&
  synth det2 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 7 -t 3 &&
  synth det3 --arch qwen3next $KQ_NEXT --quant q4_k_m --seed 8 -t 2 && {
  cmp -s "$T/det1.gguf" "$T/det2.gguf" || fail "same seed, different thread count: files differ"
  cmp -s "$T/det1.gguf" "$T/det3.gguf" && fail "different seeds gave identical files"
}
# (--exact-quant is checked by tests/unit/test_synth.c: its rows are the quantized values
#  of the F32 recipe's rows, the block bank's are not)

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
bad "vocab-only without --vocab-from" --vocab-only $O
bad "vocab-only with --quant" --vocab-only --vocab-from "$M/qwen3-vocab.gguf" --quant f32 $O

# 5. outputs: written whole or not at all (issue 15)
refused() { # refused DESC TARGET: synth -o TARGET fails with one line and leaves TARGET as it was
  local before; before=$(stat -c '%F %i' "$2" 2>&1)
  "$BIN" synth --arch qwen3moe --quant f32 -o "$2" >"$T/r.out" 2>"$T/r.err" && fail "$1: synth succeeded"
  grep -q "refusing to write output file" "$T/r.err" && [ "$(wc -l <"$T/r.err")" = 1 ] || fail "$1: $(cat "$T/r.err")"
  [ "$(stat -c '%F %i' "$2" 2>&1)" = "$before" ] || fail "$1: target changed from '$before' to '$(stat -c '%F %i' "$2")'"
}
mkfifo "$T/fifo.gguf"
mkdir "$T/dir.gguf"
ln -s "$T/tiny-moe-f32.gguf" "$T/link.gguf"
refused "FIFO as -o" "$T/fifo.gguf"
refused "directory as -o" "$T/dir.gguf"
refused "symlink as -o" "$T/link.gguf"
if [ "$(id -u)" = 0 ] && mknod "$T/null.gguf" c 1 3 2>/dev/null; then # a character device
  refused "device node as -o (root)" "$T/null.gguf"
else
  echo "note: not root, device-node case left out (the FIFO case covers the same check)"
fi
printf 'not ours\n' >"$T/keep.gguf.tmp"
"$BIN" synth --arch qwen3moe --quant f32 -o "$T/keep.gguf" >/dev/null 2>&1 || fail "synth next to an existing .tmp"
[ "$(cat "$T/keep.gguf.tmp")" = "not ours" ] || fail "an existing OUT.tmp was overwritten"
"$BIN" info -m "$T/keep.gguf" >/dev/null 2>&1 || fail "keep.gguf unreadable"
ls "$T" | grep -qE '^keep\.gguf\..*\.tmp$' && fail "temporary file left after success"
# the free-space check names its 1 GiB reserve (only where the target's free space is
# below the 80B preset's ~45 GB: /dev/shm, a RAM disk, on the development VM)
shm=/dev/shm
if [ -d $shm ] && [ -w $shm ] && [ "$(df -Pk $shm | awk 'NR==2 {print $4}')" -lt 40000000 ]; then
  "$BIN" synth --preset qwen3-next-80b-a3b --quant q4_k_m -o $shm/ferry_synth_$$.gguf >/dev/null 2>"$T/space.err" &&
    { rm -f $shm/ferry_synth_$$.gguf; fail "an 80B model fit in $shm"; }
  grep -q "plus a 1.00 GiB reserve" "$T/space.err" || fail "free-space message: $(cat "$T/space.err")"
else
  echo "note: no small RAM disk: the free-space message is not checked"
fi
# SIGINT / SIGTERM while writing: the temporary file is removed, no output appears
for sig in INT TERM; do
  # (a background job of a script starts with SIGINT ignored, which ferry respects: start
  #  it with the default disposition, as from an interactive shell)
  python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$BIN" synth --preset qwen3-30b-a3b --layers 2 --quant q8_0 -t 1 -o "$T/big-$sig.gguf" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do ls "$T" | grep -qE "^big-$sig\.gguf\..*\.tmp$" && break; sleep 0.05; done
  ls "$T" | grep -qE "^big-$sig\.gguf\..*\.tmp$" || fail "SIG$sig: no temporary file appeared"
  kill -$sig $pid
  wait $pid
  rc=$?
  [ $rc -gt 128 ] || fail "SIG$sig: synth exited $rc, not by the signal"
  left=$(ls "$T" | grep -E "^big-$sig\.gguf" || true)
  [ -z "$left" ] || fail "SIG$sig left: $left"
done

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "test_synth: all passed"
exit 0
