# Disk faults during a real stream-mode run (FERRY_IO_FAULT arms io/'s fault injector;
# attempts are counted from the start of the run). A hard error (EIO) mid-generation
# must end the run with exactly one error line naming the layer, expert, file offset and
# errno, exit code 1, no crash and no hang; transient faults (EAGAIN, short reads,
# delays) must be recovered: greedy output identical to an unfaulted run.
# Each model runs with the smallest expert cache, so nearly every token reads experts.
source "$(dirname "$0")/lib.sh"
F=$FERRY_BIN
PROMPT="Tell me a story about a ferry."

for m in pub-qwen3moe-kq-Q4_K_M pub-qwen3next-kq-Q4_K_M; do
  M=$FERRY_FIXTURES/models/$m.gguf
  min=$("$F" score -m "$M" --ids "1 2" --from 1 --json "$TMP/x.json" --mode stream --ram 1 2>&1 |
    sed -n 's/.*use --ram \([0-9]*\).*/\1/p')
  if [ -z "$min" ]; then FAILS=$((FAILS + 1)); echo "FAIL $m: no minimum in the error message"; continue; fi
  RUN=(timeout 60 "$F" run -m "$M" --mode stream --ram "$min" -p "$PROMPT" -n 32 --temp 0 -t 2)

  "${RUN[@]}" --json "$TMP/base.json" >"$TMP/base.out" 2>"$TMP/base.err"
  rc=$?
  if [ $rc -ne 0 ]; then
    FAILS=$((FAILS + 1)); echo "FAIL $m: unfaulted run rc=$rc"; tail -n 3 "$TMP/base.err"; continue
  fi
  reads=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['io']['reads'])" "$TMP/base.json")
  ngen=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['n_generated'])" "$TMP/base.json")
  echo "     $m: --ram $min, $reads reads, $ngen tokens unfaulted"
  if [ "$reads" -lt 200 ] || [ "$ngen" -lt 8 ]; then
    FAILS=$((FAILS + 1)); echo "FAIL $m: too few reads ($reads) or tokens ($ngen) to inject faults mid-generation"; continue
  fi
  late=$((reads * 3 / 4)) mid=$((reads / 2)) early=3

  # hard error: one line with layer, expert, offset and errno; exit 1; partial output
  for nth in $early $mid $late; do
    FERRY_IO_FAULT="errno:$nth:5" "${RUN[@]}" >"$TMP/f.out" 2>"$TMP/f.err"
    rc=$?
    lines=$(grep -c 'error:' "$TMP/f.err")
    if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] &&
       grep -qE 'error: .*layer [0-9]+ expert [0-9]+.* offset [0-9]+.*\(errno 5\)' "$TMP/f.err"; then
      PASSES=$((PASSES + 1)); echo "ok   $m EIO at read $nth: $(grep 'error:' "$TMP/f.err" | sed "s|.*error: ||")"
    else
      FAILS=$((FAILS + 1)); echo "FAIL $m EIO at read $nth (rc=$rc, $lines error lines)"; tail -n 4 "$TMP/f.err" | sed 's/^/     /'
    fi
    if [ "$nth" = "$late" ]; then # mid-generation: some tokens were printed, fewer than all
      got=$(wc -c <"$TMP/f.out") all=$(wc -c <"$TMP/base.out")
      if [ "$got" -gt 0 ] && [ "$got" -lt "$all" ] && [ "$(head -c "$got" "$TMP/base.out")" = "$(cat "$TMP/f.out")" ]; then
        PASSES=$((PASSES + 1)); echo "ok   $m EIO at read $nth came mid-generation ($got of $all bytes printed)"
      else
        FAILS=$((FAILS + 1)); echo "FAIL $m EIO at read $nth: printed $got of $all bytes, or not a prefix of the unfaulted text"
      fi
    fi
  done

  # transient faults: recovered, same tokens and text as the unfaulted run
  for spec in "errno:$early:11" "errno:$mid:11" "errno:$late:11,errno:$((late + 1)):11,errno:$((late + 2)):4" \
              "short:$early:0" "short:$mid:0" "short:$late:1" "short:$((late + 5)):4096" \
              "delay:$mid:20000,short:$((mid + 3)):0,errno:$((mid + 7)):11"; do
    FERRY_IO_FAULT=$spec "${RUN[@]}" --json "$TMP/t.json" >"$TMP/t.out" 2>"$TMP/t.err"
    rc=$?
    if [ $rc -eq 0 ] && cmp -s "$TMP/base.out" "$TMP/t.out" &&
       python3 -c "import json,sys; a,b=(json.load(open(p)) for p in sys.argv[1:]); sys.exit(a['generated_tokens']!=b['generated_tokens'])" \
         "$TMP/base.json" "$TMP/t.json"; then
      PASSES=$((PASSES + 1)); echo "ok   $m $spec recovered, output identical"
    else
      FAILS=$((FAILS + 1)); echo "FAIL $m $spec (rc=$rc, output differs or run failed)"; tail -n 4 "$TMP/t.err" | sed 's/^/     /'
    fi
  done
done
finish
