# ferry serve's command line: bad flags end with one clear error line and a non-zero exit,
# before or instead of serving; --help lists the server's flags.
source "$(dirname "$0")/lib.sh"
source "$HERE/serve_lib.sh"
M=$FERRY_FIXTURES/models/pub-qwen3moe-tiny-F32.gguf
F=$FERRY_BIN

run_case "--help lists the flags" bash -c "$F serve --help | grep -q -- '--api-key KEY'"
expect_error "missing model"      "missing -m"                       $F serve --port 0
expect_error "bad port"           "--port: '70000' is not an integer in \[0, 65535\]" $F serve -m "$M" --port 70000
expect_error "bad queue"          "--queue: 'x' is not an integer"   $F serve -m "$M" --queue x
expect_error "port needs a value" "option '--port' needs a value"    $F serve -m "$M" --port
expect_error "empty api key"      "--api-key must not be empty"      $F serve -m "$M" --api-key=
expect_error "bad alias"          "--alias must not contain control" $F serve -m "$M" --alias "$(printf 'a\tb')"
expect_error "bad max-body"       "--max-body: 1 is outside"         $F serve -m "$M" --max-body 1
expect_error "a run-only flag"    "-p/-f is not a flag of ferry serve" $F serve -m "$M" -p hi
expect_error "--json"             "--json is not a flag of ferry serve" $F serve -m "$M" --json x.json
expect_error "unknown flag"       "unknown option '--frob'"          $F serve -m "$M" --frob
expect_error "bad host"           "--host 'no.such.host.invalid'"    $F serve -m "$M" --host no.such.host.invalid --port 0
serve_start "$TMP/serve.log" -m "$M" || exit 1
expect_error "port in use"        "cannot listen on 127.0.0.1 port ${URL##*:}: Address already in use" \
  $F serve -m "$M" --port "${URL##*:}"
serve_stop
run_case "exit 0" test $? -eq 0
finish
