# Rule 1 on the long references (fixtures README §4.1): 600 teacher-forced ids (prompt 560),
# longer than two prefill batches of 256, so chunked prefill, positions past 512 and the
# state carried from one chunk to the next are checked, at -b 7, 64 and 256 and in stream
# mode (smallest expert cache, and a small batch). Every step within 1e-3 of the reference,
# same argmax. A forward pass that loses the chunk offset of the rows whose logits are
# wanted fails every step here (NOTES.md, "tests that can fail").
# ctest-labels: slow
# (Release pass only: 6 min under ASan, and pub-qwen3next-tiny-F32's long sequence is
#  chaotic (fixtures README §4.1): a -O0 build's other rounding moves its last steps by up
#  to 2.3e-3 at -b 7, where the Release build is within 1.3e-5.)
source "$(dirname "$0")/lib.sh"
LONG=(pub-qwen3moe-tiny-F32 pub-qwen3moe-kq-Q4_K_M pub-qwen3next-tiny-F32)
for m in "${LONG[@]}"; do
  [ -f "$FERRY_FIXTURES/golden/$m.long.exact.ref.json" ] || {
    FAILS=$((FAILS + 1)); echo "FAIL $m: no long reference in $FERRY_FIXTURES/golden"; continue; }
  for b in 7 64 256; do
    run_case "long exact $m -b $b" $CHECK long "$m" --extra="--exact -b $b -t 2"
  done
  for b in 256 64; do # stream mode with the smallest expert cache for this batch size
    min=$("$FERRY_BIN" score -m "$FERRY_FIXTURES/models/$m.gguf" --ids "1 2" --from 1 --json "$TMP/x.json" \
          --mode stream --ram 1 --exact -b $b 2>&1 | sed -n 's/.*use --ram \([0-9]*\).*/\1/p')
    if [ -z "$min" ]; then FAILS=$((FAILS + 1)); echo "FAIL $m: no stream minimum"; continue; fi
    run_case "long exact $m stream -b $b --ram $min" $CHECK long "$m" --extra="--exact --mode stream -b $b --ram $min -t 2"
  done
done
finish
