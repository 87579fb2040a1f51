# ferry serve with real client libraries: the official `openai` and `ollama` npm packages
# (tests/serve/package-lock.json, installed by scripts/setup.sh) against a server with an
# API key; their answers must be `ferry run`'s text for the same prompt and --temp 0.
source "$(dirname "$0")/lib.sh"
source "$HERE/serve_lib.sh"
CLIENTS=$HERE/../serve
command -v node >/dev/null || { echo "SKIP: node is not installed (scripts/setup.sh installs it)"; exit 77; }
if [ ! -d "$CLIENTS/node_modules/openai" ] || [ ! -d "$CLIENTS/node_modules/ollama" ]; then
  echo "FAIL: the npm clients are not installed: run scripts/setup.sh (npm ci in tests/serve)"
  exit 1
fi
# a tiny model with the real Qwen3 vocabulary (the clients send chat text)
M=$TMP/full-vocab.gguf
"$FERRY_BIN" synth --arch qwen3moe --quant q8_0 --vocab-from "$VOCAB" -o "$M" >/dev/null 2>&1 ||
  { echo "FAIL: cannot synthesize the test model"; exit 1; }
$FERRY_BIN run -m "$M" -t 1 -c 256 -p "Tell me about ferries." -n 16 --temp 0 --json "$TMP/ref.json" \
  >/dev/null 2>&1
serve_start "$TMP/serve.log" -m "$M" -c 256 --api-key k3y --alias qwen3-tiny || exit 1
node "$CLIENTS/clients.mjs" "$URL" qwen3-tiny k3y "$TMP/ref.json" >"$TMP/clients.out" 2>&1
rc=$?
sed 's/^/  /' "$TMP/clients.out"
run_case "openai and ollama npm clients ($(grep -c '^ok' "$TMP/clients.out") checks passed)" test $rc -eq 0
serve_stop
run_case "exit 0" test $? -eq 0
finish
