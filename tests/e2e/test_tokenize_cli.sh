#!/usr/bin/env bash
# tests/e2e/test_tokenize_cli.sh: `ferry tokenize` end to end. The golden prompts (both
# vocabularies; the chat prompt both as rendered text and via --chat --system) and every
# tokenizer fixture string give llama.cpp's ids; the full Qwen3 vocabulary comes from the
# vocabulary-only GGUF (tests/fixtures/models/qwen3-vocab.gguf). Bad invocations (no model
# file, no -p/-f, unreadable or missing -f, invalid UTF-8, endless input) fail with one
# clear error and print nothing on stdout. Env: FERRY_BIN, FERRY_FIXTURES (set by ctest).
set -u
BIN=${FERRY_BIN:?FERRY_BIN not set}
FIX=${FERRY_FIXTURES:-$(dirname "$0")/../fixtures}
for f in tokenizer/tokenization.json tokenizer/tokenization_reduced4096.json models/qwen3-vocab.gguf; do
  [ -f "$FIX/$f" ] || { echo "FAIL: fixture $FIX/$f is missing (tests/fixtures is part of the repository)"; exit 1; }
done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0

python3 - "$BIN" "$FIX" "$TMP" <<'EOF' || fail=1
import json, subprocess, sys, os
bin_, fix, tmp = sys.argv[1:4]
bad = 0
def tok(model, text, *extra):
    p = os.path.join(tmp, "in.txt")
    with open(p, "wb") as f:
        f.write(text.encode("utf-8"))
    r = subprocess.run([bin_, "tokenize", "-m", os.path.join(fix, "models", model), "-f", p, *extra],
                       capture_output=True)
    if r.returncode != 0:
        print("FAIL: ferry tokenize exited", r.returncode, r.stderr.decode(errors="replace"))
        return None
    return [int(x) for x in r.stdout.split()]

n = 0
# golden file -> the GGUF whose tokenizer it used (the full-vocabulary models' tokenizer is
# the vocabulary-only file; their weights are not in the repository)
for g, model in [("qwen3moe-tiny-Q8_0", "qwen3-vocab"), ("qwen3next-tiny-Q8_0", "qwen3-vocab"),
                 ("pub-qwen3moe-tiny-F32", "pub-qwen3moe-tiny-F32"),
                 ("pub-qwen3next-kq-Q4_K_M", "pub-qwen3next-kq-Q4_K_M")]:
    d = json.load(open(os.path.join(fix, "golden", g + ".golden.json")))
    for p in d["prompts"]:
        got = tok(model + ".gguf", p["prompt_text"])
        n += 1
        if got != p["prompt_token_ids"]:
            print(f"FAIL: {g} prompt {p['id']}: got {got}"); bad += 1
        if p.get("messages"):
            sysm = [m["content"] for m in p["messages"] if m["role"] == "system"]
            user = [m["content"] for m in p["messages"] if m["role"] == "user"][0]
            extra = ["--chat"] + (["--system", sysm[0]] if sysm else [])
            got = tok(model + ".gguf", user, *extra)
            n += 1
            if got != p["prompt_token_ids"]:
                print(f"FAIL: {g} prompt {p['id']} via --chat: got {got}"); bad += 1

for js, model in [("tokenization.json", "qwen3-vocab.gguf"),
                  ("tokenization_reduced4096.json", "pub-qwen3moe-tiny-F32.gguf")]:
    d = json.load(open(os.path.join(fix, "tokenizer", js)))
    for s in d["strings"]:
        n += 2
        if tok(model, s["text"]) != s["llama_cpp_ids"]:
            print(f"FAIL: {js} {s['id']}"); bad += 1
        if tok(model, s["text"], "--no-special") != s["llama_cpp_ids_parse_special_false"]:
            print(f"FAIL: {js} {s['id']} --no-special"); bad += 1
print(f"{n - bad}/{n} tokenizations match")
sys.exit(1 if bad else 0)
EOF

M="$FIX/models/qwen3-vocab.gguf"
expect_error() { # description, then the command's arguments
  local what=$1; shift
  "$BIN" tokenize "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  if [ $rc -eq 0 ] || [ -s "$TMP/out" ] || ! grep -q "error:" "$TMP/err"; then
    echo "FAIL: $what: rc=$rc stdout=$(head -c 200 "$TMP/out") stderr=$(head -c 200 "$TMP/err")"
    fail=1
  else
    echo "ok: $what -> $(head -n 1 "$TMP/err")"
  fi
}
printf 'valid \xff\xfe then more' >"$TMP/bad_utf8.txt"
mkdir "$TMP/a_dir"
expect_error "missing model file" -m "$TMP/no_such.gguf" -p hi
expect_error "no model" -p hi
expect_error "no -p or -f" -m "$M"
expect_error "missing -f file" -m "$M" -f "$TMP/no_such.txt"
expect_error "unreadable -f (a directory)" -m "$M" -f "$TMP/a_dir"
expect_error "invalid UTF-8 file" -m "$M" -f "$TMP/bad_utf8.txt"
expect_error "invalid UTF-8 -p" -m "$M" -p "$(printf 'x\xc3')"
expect_error "both -p and -f" -m "$M" -p hi -f "$TMP/bad_utf8.txt"
expect_error "unknown option" -m "$M" -p hi --bogus
expect_error "not a GGUF model" -m "$TMP/bad_utf8.txt" -p hi
expect_error "unknown letter in a cluster" -m "$M" -p hi -zq
# endless input: reading stops at 1 GiB with an error (it used to grow without bound, until
# the OOM killer ended it). The address-space limit keeps a regression from taking the
# machine's memory; sanitizer builds reserve terabytes of address space, so not there.
lim=unlimited
grep -qa __asan_init "$BIN" || lim=4000000 # KiB
(ulimit -v $lim; expect_error "endless -f /dev/zero" -m "$M" -f /dev/zero; exit $fail) || fail=1
if ! grep -q "larger than 1.00 GiB" "$TMP/err"; then echo "FAIL: /dev/zero: $(cat "$TMP/err")"; fail=1; fi
if ! grep -q "unknown option '-z'" <("$BIN" tokenize -m "$M" -p hi -zq 2>&1); then
  echo "FAIL: -zq must name -z"; fail=1
fi

# The outputs that need no fixture JSON: pieces, count, empty text.
out=$("$BIN" tokenize -m "$M" -p "Hello world" --pieces)
[ "$out" = $'9707\t"Hello"\n1879\t" world"' ] || { echo "FAIL: --pieces: $out"; fail=1; }
out=$("$BIN" tokenize -m "$M" -p "Hello world" --count)
[ "$out" = "2" ] || { echo "FAIL: --count: $out"; fail=1; }
out=$("$BIN" tokenize -m "$M" -p "")
[ -z "$out" ] || { echo "FAIL: empty text: '$out'"; fail=1; }
out=$(printf 'Hello world' | "$BIN" tokenize -m "$M" -f -)
[ "$out" = "9707 1879" ] || { echo "FAIL: -f - (stdin): $out"; fail=1; }
out=$("$BIN" tokenize -m "$M" -p "Hello world" 2>&1 >/dev/full)
[ $? -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c 'error:')" = 1 ] ||
  { echo "FAIL: stdout to /dev/full must fail with one error: $out"; fail=1; }

[ $fail -eq 0 ] && echo "PASS" || echo "FAILED"
exit $fail
