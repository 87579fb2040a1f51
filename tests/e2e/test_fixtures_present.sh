# The vendored fixtures are complete and intact: every file tests/fixtures/README.md lists
# is there, the models match their SHA-256 sums, and the whole folder stays under the 50 MB
# cap of issue 15. A clone that lost a fixture (a sparse checkout, an LFS pointer, a
# truncated copy) fails here with the file's name rather than somewhere deep in a test.
source "$(dirname "$0")/lib.sh"
need() { [ -s "$FERRY_FIXTURES/$1" ] || { echo "missing fixture: $FERRY_FIXTURES/$1"; return 1; }; }
all_present() {
  local m bad=0
  for m in "${MODELS[@]}"; do
    need "models/$m.gguf" || bad=1
    for k in golden kvf32.golden exact.ref; do need "golden/$m.$k.json" || bad=1; done
  done
  for m in pub-qwen3moe-tiny-F32 pub-qwen3moe-kq-Q4_K_M pub-qwen3next-tiny-F32; do
    need "golden/$m.long.exact.ref.json" || bad=1
  done
  for f in models/qwen3-vocab.gguf models/SHA256SUMS golden/qwen3moe-tiny-Q8_0.golden.json \
           golden/qwen3next-tiny-Q8_0.golden.json tokenizer/tokenization.json \
           tokenizer/tokenization_reduced4096.json shared-README.md README.md; do
    need "$f" || bad=1
  done
  return $bad
}
run_case "every listed fixture is present" all_present
run_case "models match SHA256SUMS" bash -c "cd '$FERRY_FIXTURES/models' && sha256sum --quiet -c SHA256SUMS && [ \$(grep -c . SHA256SUMS) = 6 ]"
size_cap() {
  local total; total=$(du -sb "$FERRY_FIXTURES" | cut -f1)
  echo "fixtures: $total bytes"
  [ "$total" -le 50000000 ]
}
run_case "fixtures within 50 MB" size_cap
finish
