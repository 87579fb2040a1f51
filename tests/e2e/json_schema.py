#!/usr/bin/env python3
"""tests/e2e/json_schema.py: the --json contracts of DESIGN.md §6 as Python data, and a
validator (stdlib only) that checks a report against them: every field present with the
right type and range, plus the relations between fields a type cannot express (n_prompt
== len(prompt_tokens), one step per generated token, top-K sorted and <= 0, ...).

Usage:
  json_schema.py run FILE [--logprobs K] [--max-generated N] [--greedy] [--stdout FILE]
  json_schema.py score FILE --ids "ID ID ..." --from N [--logprobs K]
Exit 0 when valid; otherwise prints every problem (one a line) and exits 1.

Type words: "str", "bool", "int" (any integer), "uint" (integer >= 0), "num" (number),
"unum" (number >= 0), "logprob" (number <= 0); a list [T] is an array of T; a dict is an
object whose keys are all required (a key ending in "?" is optional); ("enum", [...])
is one of the listed values. Extra keys are allowed (reports may grow), missing ones not.
"""
import json
import math
import sys

CACHE_TIER = {"capacity": "uint", "hits": "uint", "misses": "uint", "evictions": "uint"}
TOP = [{"id": "uint", "logprob": "logprob"}]

RUN_SCHEMA = {
    "model": "str",
    "arch": ("enum", ["qwen3moe", "qwen3next"]),
    "mode": ("enum", ["full", "stream"]),
    "backend": ("enum", ["cpu", "cuda", "sim"]),
    "device": "str",
    "prompt_tokens": ["uint"],
    "generated_tokens": ["uint"],
    "text": "str",
    "n_prompt": "uint",
    "n_generated": "uint",
    "load_s": "unum",
    "ttft_s": "unum",
    "prefill_tok_s": "unum",
    "decode_tok_s": "unum",
    "peak_rss_bytes": "uint",
    "peak_vram_bytes": "uint",
    "ram_budget_bytes": "uint",
    "vram_budget_bytes": "uint",
    "io": {"bytes_read": "uint", "reads": "uint", "read_s": "unum", "direct": "bool"},
    "expert_cache": {"host": CACHE_TIER, "vram": CACHE_TIER},
    "h2d_bytes": "uint",
    "experts_computed": {"gpu": "uint", "cpu": "uint"},
    "stall_s_per_token": {"disk": "unum", "copy": "unum"},
    "steps?": [{"id": "uint", "top": TOP}],
}

SCORE_SCHEMA = {
    "model": "str",
    "arch": ("enum", ["qwen3moe", "qwen3next"]),
    "mode": ("enum", ["full", "stream"]),
    "backend": ("enum", ["cpu", "cuda", "sim"]),
    "device": "str",
    "load_s": "unum",
    "peak_vram_bytes": "uint",
    "vram_budget_bytes": "uint",
    "peak_rss_bytes": "uint",
    "io": {"bytes_read": "uint", "reads": "uint", "direct": "bool"},
    "steps": [{"target": "uint", "logprob_target": "logprob", "top": TOP}],
}


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_type(v, t, path, errs):
    """Appends to errs every way v does not match type t (path names the place)."""
    if isinstance(t, dict):
        if not isinstance(v, dict):
            errs.append("%s: expected an object, got %r" % (path, type(v).__name__))
            return
        for key, sub in t.items():
            opt = key.endswith("?")
            k = key[:-1] if opt else key
            if k not in v:
                if not opt:
                    errs.append("%s.%s: missing" % (path, k))
                continue
            check_type(v[k], sub, "%s.%s" % (path, k), errs)
    elif isinstance(t, list):
        if not isinstance(v, list):
            errs.append("%s: expected an array, got %r" % (path, type(v).__name__))
            return
        for i, x in enumerate(v):
            check_type(x, t[0], "%s[%d]" % (path, i), errs)
    elif isinstance(t, tuple) and t[0] == "enum":
        if v not in t[1]:
            errs.append("%s: %r is not one of %r" % (path, v, t[1]))
    elif t == "str":
        if not isinstance(v, str):
            errs.append("%s: expected a string, got %r" % (path, v))
    elif t == "bool":
        if not isinstance(v, bool):
            errs.append("%s: expected a bool, got %r" % (path, v))
    elif t in ("int", "uint"):
        if not _is_int(v):
            errs.append("%s: expected an integer, got %r" % (path, v))
        elif t == "uint" and v < 0:
            errs.append("%s: %d is negative" % (path, v))
    elif t in ("num", "unum", "logprob"):
        if not _is_num(v):
            errs.append("%s: expected a finite number, got %r" % (path, v))
        elif t == "unum" and v < 0:
            errs.append("%s: %r is negative" % (path, v))
        elif t == "logprob" and v > 0:
            errs.append("%s: log-probability %r > 0" % (path, v))
    else:
        raise ValueError("unknown schema type %r" % (t,))


def check_top(top, k, path, errs):
    """top-K list: K entries, distinct ids, descending log-probabilities, total mass <= 1."""
    if k is not None and len(top) != k:
        errs.append("%s: %d entries, expected %d" % (path, len(top), k))
    lps = [e["logprob"] for e in top]
    if any(a < b for a, b in zip(lps, lps[1:])):
        errs.append("%s: log-probabilities not descending: %r" % (path, lps))
    ids = [e["id"] for e in top]
    if len(set(ids)) != len(ids):
        errs.append("%s: repeated ids %r" % (path, ids))
    if sum(math.exp(x) for x in lps) > 1 + 1e-4:
        errs.append("%s: probabilities sum to more than 1" % path)


def check_run(d, k=None, max_generated=None, greedy=False, stdout=None):
    errs = []
    check_type(d, RUN_SCHEMA, "run", errs)
    if errs:
        return errs
    if d["n_prompt"] != len(d["prompt_tokens"]) or d["n_prompt"] < 1:
        errs.append("n_prompt %d but %d prompt_tokens" % (d["n_prompt"], len(d["prompt_tokens"])))
    if d["n_generated"] != len(d["generated_tokens"]):
        errs.append("n_generated %d but %d generated_tokens" % (d["n_generated"], len(d["generated_tokens"])))
    if max_generated is not None and not 1 <= d["n_generated"] <= max_generated:
        errs.append("n_generated %d not in [1, %d]" % (d["n_generated"], max_generated))
    if d["prefill_tok_s"] <= 0:
        errs.append("prefill_tok_s is 0")
    if d["n_generated"] > 1 and d["decode_tok_s"] <= 0:
        errs.append("decode_tok_s is 0 with %d generated tokens" % d["n_generated"])
    if d["peak_rss_bytes"] <= 0 or d["ram_budget_bytes"] <= 0:
        errs.append("peak_rss_bytes / ram_budget_bytes are 0")
    if d["mode"] == "full" and (d["io"]["bytes_read"] or d["expert_cache"]["host"]["capacity"]):
        errs.append("full mode reports expert reads or an expert cache")
    if d["mode"] == "stream":
        c = d["expert_cache"]["host"]
        if c["capacity"] <= 0 or d["io"]["bytes_read"] <= 0 or c["misses"] <= 0:
            errs.append("stream mode without expert cache activity: %r, io %r" % (c, d["io"]))
    if k:
        steps = d.get("steps")
        if steps is None:
            errs.append("--logprobs %d but no steps" % k)
        else:
            if len(steps) != d["n_generated"]:
                errs.append("%d steps for %d generated tokens" % (len(steps), d["n_generated"]))
            for i, (s, g) in enumerate(zip(steps, d["generated_tokens"])):
                p = "steps[%d]" % i
                if s["id"] != g:
                    errs.append("%s.id %d is not the generated token %d" % (p, s["id"], g))
                check_top(s["top"], k, p + ".top", errs)
                if greedy and s["top"] and s["top"][0]["id"] != s["id"]:
                    errs.append("%s: greedy chose %d but the top log-probability is %d" % (p, s["id"], s["top"][0]["id"]))
    elif "steps" in d:
        errs.append("steps present without --logprobs")
    if stdout is not None and not stdout.startswith(d["text"]):
        errs.append("stdout does not start with the JSON text: %r vs %r" % (stdout[:80], d["text"][:80]))
    return errs


def check_score(d, ids, frm, k):
    errs = []
    check_type(d, SCORE_SCHEMA, "score", errs)
    if errs:
        return errs
    steps = d["steps"]
    if len(steps) != len(ids) - frm:
        errs.append("%d steps, expected %d (ids %d, --from %d)" % (len(steps), len(ids) - frm, len(ids), frm))
    for j, s in enumerate(steps):
        p = "steps[%d]" % j
        if j + frm < len(ids) and s["target"] != ids[j + frm]:
            errs.append("%s.target %d, expected id %d" % (p, s["target"], ids[j + frm]))
        check_top(s["top"], k, p + ".top", errs)
        top = {e["id"]: e["logprob"] for e in s["top"]}
        lt = s["logprob_target"]
        if s["target"] in top and abs(top[s["target"]] - lt) > 1e-9 * max(1.0, abs(lt)):
            errs.append("%s: logprob_target %r but top says %r" % (p, lt, top[s["target"]]))
        if s["top"] and lt > s["top"][0]["logprob"] + 1e-12:
            errs.append("%s: logprob_target %r above the best %r" % (p, lt, s["top"][0]["logprob"]))
        if s["top"] and len(s["top"]) == k and s["target"] not in top and lt > s["top"][-1]["logprob"]:
            errs.append("%s: target %d (logprob %r) should be in the top %d" % (p, s["target"], lt, k))
    return errs


def main(argv):
    if len(argv) < 3 or argv[1] not in ("run", "score"):
        print(__doc__.split("Usage:")[1].split("Exit")[0], file=sys.stderr)
        return 2
    kind, path, rest = argv[1], argv[2], argv[3:]
    opts = {}
    i = 0
    while i < len(rest):
        if rest[i] == "--greedy":
            opts["greedy"] = True
            i += 1
        else:
            opts[rest[i]] = rest[i + 1]
            i += 2
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    k = int(opts["--logprobs"]) if "--logprobs" in opts else None
    if kind == "run":
        out = None
        if "--stdout" in opts:
            with open(opts["--stdout"], encoding="utf-8", errors="replace") as f:
                out = f.read()
        mg = int(opts["--max-generated"]) if "--max-generated" in opts else None
        errs = check_run(d, k, mg, opts.get("greedy", False), out)
    else:
        ids = [int(x) for x in opts["--ids"].split()]
        errs = check_score(d, ids, int(opts["--from"]), k if k else 5)
    for e in errs:
        print("schema: " + e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
