# What `ferry run` reports and samples, checked against independent references rather than
# against another ferry run:
#  - its --logprobs equal `ferry score` on the same ids (teacher forcing), for a prompt
#    longer than the prefill batch and with sampling on (the log-probabilities are those of
#    the model, before temperature and filters);
#  - sampling properties: top-k 1 and top-p -> 0 give the greedy tokens; every token drawn
#    with top-p P lies in the smallest set of mass >= P, and with min-p M has probability
#    >= M * p_max, while some draws are not the greedy token; equal seeds give equal text,
#    other seeds other text; temperature changes the draws but not the log-probabilities;
#  - --logit-bias (llama.cpp syntax): ID+inf forces a token and ID-inf bans it; forcing an
#    end-of-generation token (<|im_end|>, <|endoftext|>) ends generation right after it;
#  - the chat template and --system: the prompt ids of `run --json` equal the llama.cpp
#    goldens' ChatML prompts.
source "$(dirname "$0")/lib.sh"
python3 - "$FERRY_BIN" "$FERRY_FIXTURES" "$TMP" <<'PY' && PASSES=$((PASSES + 1)) || FAILS=$((FAILS + 1))
import json, math, os, subprocess, sys
BIN, FIX, TMP = sys.argv[1:4]
bad = 0
def model(m): return os.path.join(FIX, "models", m + ".gguf")
def run(m, *args):
    out = os.path.join(TMP, "r.json")
    r = subprocess.run([BIN, "run", "-m", model(m), "--json", out, "--no-progress", "-t", "2", *args],
                       capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        raise SystemExit("ferry run failed: %s" % r.stderr[-400:])
    return json.load(open(out)), r.stdout
def score(m, ids, frm, *args):
    out = os.path.join(TMP, "s.json")
    r = subprocess.run([BIN, "score", "-m", model(m), "--ids", " ".join(map(str, ids)), "--from", str(frm),
                        "--json", out, "-t", "2", *args], capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        raise SystemExit("ferry score failed: %s" % r.stderr[-400:])
    return json.load(open(out))
def check(name, ok, detail=""):
    global bad
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + detail))
    bad += not ok

# 1. run --logprobs == score on the same ids. The prompt (~330 tokens, raw) is longer than
#    the prefill batch (-b 64), so the first step's logits come from the last chunk.
long_text = " ".join("The ferry left the harbour at dawn, full of bread and bicycles, number %d." % i
                     for i in range(20))
for m, extra, tol in [("pub-qwen3moe-kq-Q4_K_M", ["--exact"], 1e-4), ("pub-qwen3next-tiny-F32", ["--exact"], 1e-4),
                      ("pub-qwen3moe-tiny-F32", [], 2e-3)]:
    j, _ = run(m, "--raw", "-p", long_text, "-n", "12", "-b", "64", "--temp", "0.9", "--seed", "3",
               "--logprobs", "10", *extra)
    ids = j["prompt_tokens"] + j["generated_tokens"]
    s = score(m, ids, j["n_prompt"], "--logprobs", "40", "-b", "64", *extra)
    worst, ok = 0.0, len(s["steps"]) == len(j["steps"]) == j["n_generated"] and j["n_prompt"] > 256
    for a, b in zip(j["steps"], s["steps"]):
        ref = {e["id"]: e["logprob"] for e in b["top"]}
        ok &= a["id"] == b["target"]
        for e in a["top"]:
            if e["id"] not in ref:
                ok = False
                continue
            worst = max(worst, abs(e["logprob"] - ref[e["id"]]))
    check("run --logprobs == score, %s %s (%d prompt tokens, -b 64, max |d| %.1e)"
          % (m, " ".join(extra) or "fast", j["n_prompt"], worst), ok and worst <= tol, "worst %.3g" % worst)

M = "pub-qwen3moe-tiny-F32"
P = ["-p", "Tell me a story about a ferry.", "-n", "24"]
greedy, _ = run(M, *P, "--temp", "0")
g = greedy["generated_tokens"]
# 2. top-k 1 and top-p -> 0 are greedy, whatever the temperature and seed
for flags in (["--top-k", "1", "--top-p", "1", "--temp", "1.5", "--seed", "9"],
              ["--top-k", "0", "--top-p", "0", "--temp", "1.5", "--seed", "9"],
              ["--top-k", "0", "--top-p", "0.000001", "--min-p", "0", "--temp", "1.0", "--seed", "4"]):
    j, _ = run(M, *P, *flags)
    check("%s == greedy" % " ".join(flags[:4]), j["generated_tokens"] == g, "%s vs %s" % (j["generated_tokens"], g))

# 3. top-p and min-p hold on every drawn token, with real sampling going on
def probs(step):
    return [(e["id"], math.exp(e["logprob"])) for e in step["top"]]
for name, flags, rule in [
        ("top-p 0.6", ["--top-k", "0", "--top-p", "0.6", "--min-p", "0"], "p"),
        ("min-p 0.1", ["--top-k", "0", "--top-p", "1", "--min-p", "0.1"], "m")]:
    viol, diverse, steps = 0, 0, 0
    for seed in range(1, 7):
        j, _ = run(M, *P, *flags, "--temp", "1.3", "--seed", str(seed), "--logprobs", "1000")
        for st in j["steps"]:
            pr = probs(st)
            steps += 1
            chosen = dict(pr).get(st["id"])
            if chosen is None:
                viol += 1
                continue
            if rule == "p":  # smallest prefix of the sorted distribution with mass >= 0.6
                acc, allowed = 0.0, set()
                for tid, p in pr:
                    allowed.add(tid)
                    acc += p
                    if acc >= 0.6 - 1e-9:
                        break
                viol += st["id"] not in allowed
                diverse += len(allowed) > 1 and st["id"] != pr[0][0]
            else:
                viol += chosen < 0.1 * pr[0][1] * (1 - 1e-6)
                diverse += st["id"] != pr[0][0]
    check("%s: every draw in the allowed set (%d steps, %d not the top token)" % (name, steps, diverse),
          viol == 0 and diverse >= 3, "%d violations, %d non-greedy draws" % (viol, diverse))

# 4. seeds
a, ta = run(M, *P, "--temp", "1.0", "--seed", "11")
b, tb = run(M, *P, "--temp", "1.0", "--seed", "11")
c, tc = run(M, *P, "--temp", "1.0", "--seed", "12")
check("same seed, same text", ta == tb and a["generated_tokens"] == b["generated_tokens"])
check("other seed, other text", a["generated_tokens"] != c["generated_tokens"])

# 5. temperature changes the draws, not the log-probabilities of the shared prefix
lo, _ = run(M, *P, "--top-k", "0", "--top-p", "1", "--temp", "0.3", "--seed", "5", "--logprobs", "5")
hi, _ = run(M, *P, "--top-k", "0", "--top-p", "1", "--temp", "3.0", "--seed", "5", "--logprobs", "5")
k = 0
while k < min(len(lo["steps"]), len(hi["steps"])) and lo["generated_tokens"][k] == hi["generated_tokens"][k]:
    k += 1
same_lp = all(lo["steps"][i]["top"] == hi["steps"][i]["top"] for i in range(min(k + 1, len(lo["steps"]), len(hi["steps"]))))
check("temperature changes draws (first difference at step %d) but not log-probabilities" % k,
      k < 24 and lo["generated_tokens"] != hi["generated_tokens"] and same_lp)

# 6. --logit-bias: bans, forces, and an end-of-generation token ends the run at once
first = g[0]
j, _ = run(M, *P, "--temp", "0", "--logit-bias", "%d-inf" % first)
check("--logit-bias ID-inf bans the greedy token", j["generated_tokens"][0] != first)
j, _ = run(M, *P, "--temp", "0", "--logit-bias", "1234+inf", "-n", "3")
check("--logit-bias ID+inf forces it", j["generated_tokens"] == [1234] * 3, str(j["generated_tokens"]))
for eog, name in ((4098, "<|im_end|>"), (4096, "<|endoftext|>")):
    for flags in (["--temp", "0"], ["--temp", "0.8", "--seed", "2"]):
        j, text = run(M, *P, *flags, "--logit-bias", "%d+inf" % eog)
        check("forced %s %s ends generation after it" % (name, flags[1]),
              j["generated_tokens"] == [eog] and j["n_generated"] == 1 and j["text"] == "" and text == "\n",
              "%s %r" % (j["generated_tokens"], j["text"]))
# a finite bias moves sampling without forcing: +10 on the 30th most likely first token
# makes it common where it was rare
lp, _ = run(M, *P, "--temp", "0", "--logprobs", "40")
x = lp["steps"][0]["top"][30]["id"]
cnt = {}
for bias in ("+0", "+10"):
    cnt[bias] = 0
    for seed in range(1, 5):
        j, _ = run(M, *P, "-n", "16", "--top-k", "0", "--top-p", "1", "--temp", "1", "--seed", str(seed),
                   "--logit-bias", "%d%s" % (x, bias))
        cnt[bias] += j["generated_tokens"].count(x)
check("--logit-bias %d+10 makes that token common (%d of 64 draws, %d without)" % (x, cnt["+10"], cnt["+0"]),
      cnt["+10"] >= 16 and cnt["+0"] <= 4)

# 7. the chat template and --system: prompt ids equal the llama.cpp goldens' ChatML prompt
for m in ("pub-qwen3moe-tiny-F32", "pub-qwen3next-kq-Q4_K_M"):
    gold = json.load(open(os.path.join(FIX, "golden", m + ".golden.json")))
    p = [p for p in gold["prompts"] if p.get("messages")][0]
    sysm = [x["content"] for x in p["messages"] if x["role"] == "system"][0]
    user = [x["content"] for x in p["messages"] if x["role"] == "user"][0]
    j, _ = run(m, "-p", user, "--system", sysm, "-n", "1", "--temp", "0")
    check("run chat prompt + --system == golden ChatML ids (%s, %d ids)" % (m, len(p["prompt_token_ids"])),
          j["prompt_tokens"] == p["prompt_token_ids"], str(j["prompt_tokens"][:12]))
    raw = [p for p in gold["prompts"] if not p.get("messages")][0]
    j, _ = run(m, "--raw", "-p", raw["prompt_text"], "-n", "1", "--temp", "0")
    check("run --raw prompt == golden ids (%s %s)" % (m, raw["id"]), j["prompt_tokens"] == raw["prompt_token_ids"])
print("%d failed" % bad)
sys.exit(1 if bad else 0)
PY
finish
