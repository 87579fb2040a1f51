#!/usr/bin/env python3
"""Checks ferry against the fixtures' references by the rules of fixtures/README.md §5.

  fixture_check.py score MODEL_NAME --rule exact|golden|reduced [--mode M] [--extra ARGS]
      teacher-forced `ferry score` on every prompt of the model's golden file, compared
      with <model>.exact.ref.json (rule 1: every d_k <= 1e-3, agreement unless gap < 2e-3)
      or <model>.golden.json (rule 2: F32 models d_k <= 0.05 and agreement everywhere;
      quantized: median d <= 0.15, p90 <= 0.75, agreement >= 80%), or, --rule reduced, rule 3:
      <model>.exact.ref.json with median d <= 0.15, p90 <= 1.0, agreement >= 80% (engines
      whose fast path keeps F32 or F16 activations).
  fixture_check.py long MODEL_NAME [--extra ARGS]
      rule 1 on <model>.long.exact.ref.json (§4.1: one 600-id teacher-forced sequence, prompt
      560, longer than two prefill batches of 256): every d_k <= 1e-3 and agreement.
  fixture_check.py greedy MODEL_NAME --golden kvf32|golden [--mode M] [--extra ARGS]
      free-running greedy `ferry run --raw` on each prompt; tokens must equal the golden's:
      all of them, or with --until-gap up to the first difference, which is allowed only at
      a step whose golden top-1/top-2 gap is < --max-gap (default 0.5; a near-tie: the
      sequences diverge there). --min-compared N fails when fewer than N were compared.
  fixture_check.py same MODEL_NAME --extra-a ARGS --extra-b ARGS
      two score runs must give bit-identical JSON steps (stream == full).
Env: FERRY_BIN, FERRY_FIXTURES. Prints one summary line per prompt; exits 1 on failure.
"""
import json, os, subprocess, sys, tempfile, argparse, statistics

BIN = os.environ.get("FERRY_BIN", "build/ferry")
FIX = os.environ.get("FERRY_FIXTURES", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../fixtures"))


def load(p):
    with open(p) as f:
        return json.load(f)


def run_score(model, ids, frm, extra, k=64):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as t:
        out = t.name
    cmd = [BIN, "score", "-m", model, "--ids", " ".join(map(str, ids)), "--from", str(frm),
           "--logprobs", str(k), "--json", out] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        print("FAIL: command failed:", " ".join(cmd[:4]), "...", r.stderr.strip()[-500:])
        sys.exit(1)
    j = load(out)
    os.unlink(out)
    return j


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return 0.0
    i = (len(xs) - 1) * p
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def cmd_score(a):
    name = a.model
    model = os.path.join(FIX, "models", name + ".gguf")
    gold = load(os.path.join(FIX, "golden", name + ".golden.json"))
    ref = load(os.path.join(FIX, "golden", name + (".golden.json" if a.rule == "golden" else ".exact.ref.json")))
    extra = a.extra.split() if a.extra else []
    is_f32 = "F32" in name
    ok = True
    pooled_d, pooled_agree = [], []
    for gp, rp in zip(gold["prompts"], ref["prompts"]):
        prompt = gp["prompt_token_ids"]
        gen = gp["generated_token_ids"]
        ids = prompt + gen  # the last id is only a target (DESIGN §6)
        j = run_score(model, ids, len(prompt), extra)
        steps = j["steps"]
        assert len(steps) == len(gen), (len(steps), len(gen))
        ds, agrees, worst = [], 0, 0
        for k, (st, rs) in enumerate(zip(steps, rp["steps"])):
            mine = {}
            # recompute my logprob for the reference's top-5 ids: the score JSON lists my top-K,
            # which includes them when K is large enough; fall back to a wide K run otherwise
            for e in st["top"]:
                mine[e["id"]] = e["logprob"]
            reft = rs["top5"]
            missing = [e["id"] for e in reft if e["id"] not in mine]
            if missing:
                print("FAIL: step %d: reference top ids %s not in ferry's top-%d" % (k, missing, len(st["top"])))
                ok = False
                continue
            d = max(abs(mine[e["id"]] - e["logprob"]) for e in reft)
            gap = reft[0]["logprob"] - reft[1]["logprob"]
            ref_top1 = reft[0]["id"]
            my_top1 = st["top"][0]["id"]
            agree = my_top1 == ref_top1
            ds.append(d)
            agrees += agree
            pooled_d.append(d)
            pooled_agree.append(agree)
            if a.rule == "exact":
                if d > 1e-3 or (not agree and gap >= 2e-3):
                    ok = False
                    print("FAIL: %s/%s step %d: d=%.2e agree=%s gap=%.4f" % (name, gp["id"], k, d, agree, gap))
            elif is_f32 and a.rule == "golden":
                if d > 0.05 or not agree:
                    ok = False
                    print("FAIL: %s/%s step %d: d=%.3f agree=%s" % (name, gp["id"], k, d, agree))
        print("%s %s prompt=%s steps=%d max_d=%.2e median_d=%.2e agree=%d/%d" % (
            name, a.rule, gp["id"], len(ds), max(ds) if ds else 0, statistics.median(ds) if ds else 0, agrees, len(ds)))
    if a.rule == "golden" and not is_f32:
        med, p90 = statistics.median(pooled_d), percentile(pooled_d, 0.9)
        agr = sum(pooled_agree) / len(pooled_agree)
        print("%s pooled: median %.4f p90 %.4f agreement %.1f%%" % (name, med, p90, 100 * agr))
        if med > 0.15 or p90 > 0.75 or agr < 0.80:
            ok = False
            print("FAIL: rule 2 bounds (median <= 0.15, p90 <= 0.75, agreement >= 80%)")
    if a.rule == "reduced":
        med, p90 = statistics.median(pooled_d), percentile(pooled_d, 0.9)
        agr = sum(pooled_agree) / len(pooled_agree)
        print("%s pooled vs exact: median %.4f p90 %.4f agreement %.1f%%" % (name, med, p90, 100 * agr))
        if med > 0.15 or p90 > 1.0 or agr < 0.80:
            ok = False
            print("FAIL: rule 3 bounds (median <= 0.15, p90 <= 1.0, agreement >= 80%)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_greedy(a):
    name = a.model
    model = os.path.join(FIX, "models", name + ".gguf")
    gold = load(os.path.join(FIX, "golden", name + (".kvf32.golden.json" if a.golden == "kvf32" else ".golden.json")))
    extra = a.extra.split() if a.extra else []
    ok = True
    compared = 0
    for gp in gold["prompts"]:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as t:
            out = t.name
        # feed the exact prompt ids via a raw prompt text would re-tokenize; use the text
        cmd = [BIN, "run", "-m", model, "--raw", "-p", gp["prompt_text"], "-n", str(len(gp["generated_token_ids"])),
               "--temp", "0", "--json", out, "--no-progress"] + extra
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if r.returncode != 0:
            print("FAIL: run failed:", r.stderr.strip()[-400:])
            return 1
        j = load(out)
        os.unlink(out)
        if j["prompt_tokens"] != gp["prompt_token_ids"]:
            print("FAIL: %s/%s prompt tokenization differs" % (name, gp["id"]))
            ok = False
            continue
        want = gp["generated_token_ids"]
        got = j["generated_tokens"]
        n = len(want)
        same = got[:n] == want[:n]
        if a.until_gap:
            # Compare token by token while the two agree; the first difference must come at
            # a near-tie of the golden (gap < 0.5), after which the contexts differ and
            # nothing more can be compared.
            n, same = 0, True
            for k, st in enumerate(gp["steps"]):
                if k >= len(got):
                    same = False
                    break
                if got[k] != want[k]:
                    t5 = st["top5"]
                    gap = t5[0]["logprob"] - t5[1]["logprob"]
                    same = gap < a.max_gap
                    if not same:
                        print("  step %d: got %d, golden %d with gap %.3f >= %g" % (k, got[k], want[k], gap, a.max_gap))
                    break
                n += 1
        compared += n
        print("%s greedy prompt=%s compared=%d identical=%s" % (name, gp["id"], n, same))
        if not same:
            ok = False
            print("  want", want[:n + 1], "\n  got ", got[:n + 1])
    if compared < a.min_compared:
        ok = False
        print("FAIL: only %d tokens compared, fewer than --min-compared %d" % (compared, a.min_compared))
    print("%s greedy: %d tokens compared" % (name, compared))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_long(a):
    name = a.model
    model = os.path.join(FIX, "models", name + ".gguf")
    ref = load(os.path.join(FIX, "golden", name + ".long.exact.ref.json"))
    extra = a.extra.split() if a.extra else []
    ok = True
    for rp in ref["prompts"]:
        prompt, tf = rp["prompt_token_ids"], rp["teacher_forced_token_ids"]
        j = run_score(model, prompt + tf, len(prompt), extra)
        steps = j["steps"]
        if len(steps) != len(tf):
            print("FAIL: %d steps, want %d" % (len(steps), len(tf)))
            return 1
        ds, agrees = [], 0
        for k, (st, rs) in enumerate(zip(steps, rp["steps"])):
            mine = {e["id"]: e["logprob"] for e in st["top"]}
            reft = rs["top5"]
            missing = [e["id"] for e in reft if e["id"] not in mine]
            if missing or st["target"] != rs["teacher_forced_token"]:
                print("FAIL: step %d: reference ids %s not in ferry's top-%d (or target differs)" % (k, missing, len(st["top"])))
                ok = False
                continue
            d = max(abs(mine[e["id"]] - e["logprob"]) for e in reft)
            d = max(d, abs(st["logprob_target"] - rs["logprob_teacher_forced_token"]))
            gap = reft[0]["logprob"] - reft[1]["logprob"]
            agree = st["top"][0]["id"] == reft[0]["id"]
            ds.append(d)
            agrees += agree
            if d > 1e-3 or (not agree and gap >= 2e-3):
                ok = False
                print("FAIL: %s/long step %d (pos %d): d=%.2e agree=%s gap=%.4f" % (name, k, st["pos"], d, agree, gap))
        print("%s long [%s] prompt=%d steps=%d max_d=%.2e median_d=%.2e agree=%d/%d" % (
            name, a.extra, len(prompt), len(ds), max(ds) if ds else 0, statistics.median(ds) if ds else 0, agrees, len(ds)))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_same(a):
    name = a.model
    model = os.path.join(FIX, "models", name + ".gguf") if not os.path.exists(name) else name
    gold_path = os.path.join(FIX, "golden", name + ".golden.json")
    prompts = load(gold_path)["prompts"] if os.path.exists(gold_path) else [
        {"prompt_token_ids": list(range(1, 40)), "generated_token_ids": list(range(40, 60)), "id": "synthetic"}]
    ok = True
    for gp in prompts:
        ids = gp["prompt_token_ids"] + gp["generated_token_ids"]
        ja = run_score(model, ids, len(gp["prompt_token_ids"]), a.extra_a.split(), k=8)
        jb = run_score(model, ids, len(gp["prompt_token_ids"]), a.extra_b.split(), k=8)
        same = ja["steps"] == jb["steps"]
        print("%s prompt=%s [%s] vs [%s] bit-identical=%s" % (name, gp["id"], a.extra_a, a.extra_b, same))
        ok &= same
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def run_json(model, extra):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as t:
        out = t.name
    cmd = [BIN, "run", "-m", model, "--json", out, "--no-progress", "--logprobs", "8"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        print("FAIL: run failed:", r.stderr.strip()[-400:])
        sys.exit(1)
    j = load(out)
    os.unlink(out)
    return j


def cmd_same_run(a):
    """Two `ferry run`s (same prompt, sampling and seed) must give identical tokens and
    bit-identical log-probabilities."""
    model = os.path.join(FIX, "models", a.model + ".gguf") if not os.path.exists(a.model) else a.model
    base = ["-p", a.prompt, "-n", str(a.n), "--seed", "7"] + a.sampling.split()
    ja = run_json(model, base + a.extra_a.split())
    jb = run_json(model, base + a.extra_b.split())
    same = ja["generated_tokens"] == jb["generated_tokens"] and ja["steps"] == jb["steps"]
    print("%s run [%s] vs [%s]: %d tokens, identical=%s" % (a.model, a.extra_a, a.extra_b,
                                                          len(ja["generated_tokens"]), same))
    return 0 if same else 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("score"); s.add_argument("model"); s.add_argument("--rule", default="exact"); s.add_argument("--extra", default="")
    g = sub.add_parser("greedy"); g.add_argument("model"); g.add_argument("--golden", default="kvf32"); g.add_argument("--extra", default="")
    g.add_argument("--until-gap", action="store_true"); g.add_argument("--min-compared", type=int, default=0)
    g.add_argument("--max-gap", type=float, default=0.5)  # with --until-gap
    lg = sub.add_parser("long"); lg.add_argument("model"); lg.add_argument("--extra", default="")
    m = sub.add_parser("same"); m.add_argument("model"); m.add_argument("--extra-a", default=""); m.add_argument("--extra-b", default="")
    r = sub.add_parser("same-run"); r.add_argument("model"); r.add_argument("--extra-a", default="")
    r.add_argument("--extra-b", default=""); r.add_argument("--prompt", default="Tell me a story about a ferry.")
    r.add_argument("-n", type=int, default=16); r.add_argument("--sampling", default="--temp 0.8 --top-k 40")
    a = p.parse_args()
    return {"score": cmd_score, "greedy": cmd_greedy, "long": cmd_long, "same": cmd_same,
            "same-run": cmd_same_run}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
