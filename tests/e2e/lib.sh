# tests/e2e/lib.sh: shared helpers for the end-to-end scripts (sourced, not run).
set -u
: "${FERRY_BIN:?FERRY_BIN must point at the ferry binary}"
: "${FERRY_FIXTURES:?FERRY_FIXTURES must point at shared/fixtures}"
export FERRY_BIN FERRY_FIXTURES
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECK="python3 $HERE/fixture_check.py"
MODELS=(pub-qwen3moe-tiny-F32 pub-qwen3moe-kq-Q4_K_M pub-qwen3moe-kq-Q8_0 qwen3moe-tiny-Q8_0
        pub-qwen3next-tiny-F32 pub-qwen3next-kq-Q4_K_M pub-qwen3next-legacy-kq-Q4_K_M qwen3next-tiny-Q8_0)
# FERRY_MODELS="a b c" narrows the list (e.g. to the models carried to a GPU machine)
if [ -n "${FERRY_MODELS:-}" ]; then read -r -a MODELS <<<"$FERRY_MODELS"; fi
FAILS=0
PASSES=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -d "$FERRY_FIXTURES/models" ] || { echo "SKIP: no fixtures at $FERRY_FIXTURES"; exit 77; }

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
  if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$lines" -eq 1 ] && printf '%s' "$err" | grep -qE -- "$pat"; then
    PASSES=$((PASSES + 1)); echo "ok   $name"
  else
    FAILS=$((FAILS + 1)); echo "FAIL $name (rc=$rc, want /$pat/)"; printf '%s\n' "$err" | tail -n 5 | sed 's/^/     /'
  fi
}

finish() {
  echo "$PASSES passed, $FAILS failed"
  [ "$FAILS" -eq 0 ]
}
