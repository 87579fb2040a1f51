#!/usr/bin/env python3
"""`ferry info` on every vendored fixture model must agree with the tables of the fixtures'
own README §9 (tests/fixtures/shared-README.md): tensor count, count per type, and the
hyperparameters of the metadata line. The README describes 8 models; the 5 in
tests/fixtures/models are checked and all 5 must be found."""
import os, re, subprocess, sys

BIN, FIX = os.environ["FERRY_BIN"], os.environ["FERRY_FIXTURES"]
readme = open(os.path.join(FIX, "shared-README.md"), encoding="utf-8").read()
ok = True
sections = re.split(r"^#### `([^`]+\.gguf)`", readme, flags=re.M)
checked = 0
for name, body in zip(sections[1::2], sections[2::2]):
    if not os.path.exists(os.path.join(FIX, "models", name)):
        continue  # described in the README, not vendored (tests/fixtures/README.md)
    head = re.search(r"([\d,]+) bytes, sha256 `\w+`, (\d+) tensors \(([^)]*)\)", body)
    mline = re.search(r"^Metadata: (.*)$", body, flags=re.M)
    meta = dict(re.findall(r"`([\w.]+)`=([^;\n]+)", mline.group(1))) if mline else {}
    out = subprocess.run([BIN, "info", "-m", os.path.join(FIX, "models", name)], capture_output=True, text=True)
    if out.returncode:
        print("FAIL", name, out.stderr.strip()); ok = False; continue
    info = out.stdout
    want_types = {t.lower(): int(n) for t, n in re.findall(r"(\w+)×(\d+)", head.group(3))}
    got_types = {t.lower(): int(n) for t, n in re.findall(r"(\w+): (\d+) \(", info)}
    errs = []
    if not re.search(r"v3, %s tensors" % head.group(2), info):
        errs.append("tensor count %s" % head.group(2))
    if want_types != got_types:
        errs.append("types %s != %s" % (want_types, got_types))
    expect = {
        "block_count": r"layers\s+%s\b", "embedding_length": r"embd\s+%s\b",
        "attention.head_count": r"attention\s+%s heads", "attention.head_count_kv": r", %s kv heads",
        "attention.key_length": r"head dim %s\b", "rope.dimension_count": r"rope dims %s\b",
        "expert_count": r"experts\s+%s,", "expert_used_count": r", %s used", "expert_feed_forward_length": r"expert ff %s\b",
        "expert_shared_feed_forward_length": r"shared expert ff %s\b", "ssm.group_count": r"%s k-heads",
        "ssm.time_step_rank": r"%s v-heads", "ssm.conv_kernel": r"conv %s\b",
    }
    n_keys = sum(k in meta for k in expect)
    if n_keys < 7:
        errs.append("only %d metadata keys found in the README" % n_keys)
    for key, pat in expect.items():
        if key in meta and not re.search(pat % re.escape(meta[key].strip()), info):
            errs.append("%s=%s" % (key, meta[key].strip()))
    if "rope.freq_base" in meta:
        base = float(meta["rope.freq_base"])
        m = re.search(r"rope base ([\d.e+]+)", info)
        if not m or abs(float(m.group(1)) - base) > 1e-6 * base:
            errs.append("rope base %g" % base)
    if os.path.getsize(os.path.join(FIX, "models", name)) != int(head.group(1).replace(",", "")):
        errs.append("file size")
    checked += 1
    if errs:
        ok = False
        print("FAIL", name, "; ".join(errs))
    else:
        print("ok  ", name, "types", got_types)
print("checked %d models" % checked)
vendored = [f for f in os.listdir(os.path.join(FIX, "models")) if f.startswith("pub-") and f.endswith(".gguf")]
sys.exit(0 if ok and checked == len(vendored) == 5 else 1)
