# A qwen3next file whose metadata declares a multi-token-prediction block
# (block_count 5, nextn_predict_layers 1) runs its 4 trunk layers, says it ignores the
# MTP block, and gives exactly the numbers of the same file without it.
source "$(dirname "$0")/lib.sh"
N=$FERRY_FIXTURES/models/pub-qwen3next-kq-Q4_K_M.gguf
P="python3 $HERE/gguf_patch.py"
$P "$N" "$TMP/a.gguf" set-u32 qwen3next.block_count 5
$P "$TMP/a.gguf" "$TMP/mtp.gguf" add-u32 qwen3next.nextn_predict_layers 1
check_mtp() {
  "$FERRY_BIN" info -m "$TMP/mtp.gguf" | grep -q "layers       4 (+1 MTP blocks ignored)" || return 1
  "$FERRY_BIN" score -m "$TMP/mtp.gguf" --ids "11 22 33 44 55 66 77" --from 2 --json "$TMP/m.json" 2>"$TMP/err" || return 1
  grep -q "ignoring 1 multi-token-prediction block" "$TMP/err" || return 1
  "$FERRY_BIN" score -m "$N" --ids "11 22 33 44 55 66 77" --from 2 --json "$TMP/n.json" 2>/dev/null || return 1
  python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['steps']; b=json.load(open(sys.argv[2]))['steps']; sys.exit(a != b)" \
    "$TMP/m.json" "$TMP/n.json"
}
run_case "MTP block declared, ignored, same numbers" check_mtp
finish
