# tests/e2e/lib.sh: shared helpers for the end-to-end scripts (sourced, not run).
# The fixtures are part of the repository (tests/fixtures, see its README.md); a test that
# cannot find one fails: a green run must mean the checks ran.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${FERRY_BIN:?FERRY_BIN must point at the ferry binary}"
FERRY_FIXTURES=${FERRY_FIXTURES:-$HERE/../fixtures}
export FERRY_BIN FERRY_FIXTURES
CHECK="python3 $HERE/fixture_check.py"
# Every model in tests/fixtures/models (the vocabulary-only qwen3-vocab.gguf aside).
MODELS=(pub-qwen3moe-tiny-F32 pub-qwen3moe-kq-Q4_K_M
        pub-qwen3next-tiny-F32 pub-qwen3next-kq-Q4_K_M pub-qwen3next-legacy-kq-Q4_K_M)
VOCAB=$FERRY_FIXTURES/models/qwen3-vocab.gguf # the real Qwen3 tokenizer, no tensors
# FERRY_MODELS="a b c" narrows the list (e.g. to the models carried to a GPU machine)
if [ -n "${FERRY_MODELS:-}" ]; then read -r -a MODELS <<<"$FERRY_MODELS"; fi
FAILS=0
PASSES=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for _m in "${MODELS[@]}"; do
  [ -f "$FERRY_FIXTURES/models/$_m.gguf" ] || {
    echo "FAIL: fixture model $FERRY_FIXTURES/models/$_m.gguf is missing (the fixtures are in the"
    echo "      repository under tests/fixtures; -DFERRY_FIXTURES=DIR points the tests elsewhere)"
    exit 1
  }
done

# run_case NAME CMD...: runs a check, counts pass/fail, shows the output of failures.
run_case() {
  local name=$1; shift
  if out=$("$@" 2>&1); then
    PASSES=$((PASSES + 1)); echo "ok   $name"
  else
    FAILS=$((FAILS + 1)); echo "FAIL $name"; echo "$out" | tail -n 15 | sed 's/^/     /'
  fi
}

# expect_error NAME PATTERN CMD...: the command must exit non-zero with exactly one
# "error:" line on stderr matching PATTERN, and must not crash (exit < 128).
expect_error() {
  local name=$1 pat=$2; shift 2
  local err rc
  err=$("$@" 2>&1 >/dev/null); rc=$?
  local lines; lines=$(printf '%s\n' "$err" | grep -c 'error:')
  # a sanitizer report (leak, overflow) is a failure even when the exit code looks right
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && printf '%s' "$err" | grep -qE -- "$pat" &&
     ! printf '%s' "$err" | grep -qE 'Sanitizer|runtime error:'; then
    PASSES=$((PASSES + 1)); echo "ok   $name"
  else
    FAILS=$((FAILS + 1)); echo "FAIL $name (rc=$rc, want /$pat/)"; printf '%s\n' "$err" | tail -n 5 | sed 's/^/     /'
  fi
}

finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}
