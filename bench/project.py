#!/usr/bin/env python3
"""bench/project.py: projects ferry's decode speed on a target machine (issue 12's laptop:
RTX 3060 Laptop 6 GB, PCIe 4.0, Gen4 NVMe, 12 GB RAM) from measured per-tier traffic.

  bench/project.py --run RUN.json --target TARGET.json [--floor-ms MS] [--json OUT]

RUN.json is a `ferry run --json` report of stream mode at the target's --vram/--ram (on the
GPU machine, or on --backend sim, which runs the same tier logic on the CPU): its
`decode_traffic` gives, per generated token, the experts served from VRAM, from host RAM and
from disk, the bytes read and copied, and where experts were computed. TARGET.json gives the
target's rates (GB/s):

  {"name": "...", "vram_gbps": 336, "pcie_gbps": [12, 24], "nvme_gbps": [5, 7],
   "ram_gbps": [40, 60], "cpu_expert_frac": 0.6}

(a [low, high] pair gives a range). The model per decode token, stated in the output:
  GPU    = floor + (dense bytes + bytes of the experts computed on the GPU) / vram_gbps
  copies = bytes copied host -> VRAM / pcie_gbps
  CPU    = bytes of the experts computed on the CPU / (cpu_expert_frac * ram_gbps)
  disk   = bytes read from disk / nvme_gbps
  token  = max(GPU + copies, CPU, disk)   (the three overlap within a layer; copies feed the
           GPU, so they add to it)
floor is the per-token time the GPU needs beyond bandwidth (kernel launches and latency),
--floor-ms, by default the measured H200 full-GPU decode time of the same model minus its
bandwidth time (pass it: it is not in RUN.json). Dense bytes per token (--dense-bytes) and
bytes per expert (--expert-bytes) come from `ferry info` ("decode touches ...", "one expert").
"""
import argparse, json, sys


def rng(v):
    return (v, v) if isinstance(v, (int, float)) else (float(v[0]), float(v[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--dense-bytes", type=float, required=True,
                    help="dense weight bytes a decode token reads (ferry info: decode touches "
                         "minus k experts per layer)")
    ap.add_argument("--expert-bytes", type=float, required=True, help="mean bytes of one expert")
    ap.add_argument("--floor-ms", type=float, default=0.0)
    ap.add_argument("--json")
    a = ap.parse_args()
    run = json.load(open(a.run))
    tgt = json.load(open(a.target))
    d = run.get("decode_traffic")
    n = max(1, run["n_generated"] - 1)  # tokens after the first (decode_s spans them)
    if not d:
        sys.exit("project.py: %s has no decode_traffic (ferry too old?)" % a.run)
    eb = a.expert_bytes
    gpu_exp = d["experts_gpu"] / n
    cpu_exp = d["experts_cpu"] / n
    disk_b = d["io_bytes"] / n
    h2d_b = d["h2d_bytes"] / n
    acc_v = d["vram_hits"] + d["vram_misses"]
    acc_h = d["host_hits"] + d["host_misses"]
    lines = []
    lines.append("target %s; run %s (%s, %d decode tokens)" % (tgt.get("name", "?"), a.run,
                                                               run.get("backend"), n))
    lines.append("per decode token: %.1f experts on the GPU, %.1f on the CPU; %.1f MB from disk, "
                 "%.1f MB copied to VRAM; VRAM hit rate %.1f%%, RAM hit rate %.1f%% (of VRAM misses)"
                 % (gpu_exp, cpu_exp, disk_b / 1e6, h2d_b / 1e6,
                    100.0 * d["vram_hits"] / acc_v if acc_v else 0.0,
                    100.0 * d["host_hits"] / acc_h if acc_h else 0.0))
    out = {}
    for label, pick in (("low", 0), ("high", 1)):
        vram = rng(tgt["vram_gbps"])[pick] * 1e9
        pcie = rng(tgt["pcie_gbps"])[pick] * 1e9
        nvme = rng(tgt["nvme_gbps"])[pick] * 1e9
        ram = rng(tgt["ram_gbps"])[pick] * 1e9 * tgt.get("cpu_expert_frac", 0.6)
        t_gpu = a.floor_ms / 1e3 + (a.dense_bytes + gpu_exp * eb) / vram
        t_copy = h2d_b / pcie
        t_cpu = cpu_exp * eb / ram
        t_disk = disk_b / nvme
        t = max(t_gpu + t_copy, t_cpu, t_disk)
        bound = max((("GPU + copies", t_gpu + t_copy), ("CPU", t_cpu), ("disk", t_disk)),
                    key=lambda x: x[1])[0]
        out[label] = {"tok_s": 1.0 / t, "gpu_ms": t_gpu * 1e3, "copy_ms": t_copy * 1e3,
                      "cpu_ms": t_cpu * 1e3, "disk_ms": t_disk * 1e3, "bound": bound}
        lines.append("%-4s rates: GPU %.2f ms + copies %.2f ms, CPU %.2f ms, disk %.2f ms -> "
                     "%.1f tok/s (bound by %s)" % (label, t_gpu * 1e3, t_copy * 1e3, t_cpu * 1e3,
                                                   t_disk * 1e3, 1.0 / t, bound))
    lines.append("assumptions: the three overlap within a layer (ferry issues the device's "
                 "experts first, computes the CPU's, reads misses in one batch); the GPU floor "
                 "is %.2f ms per token; the CPU computes experts at %.0f%% of RAM bandwidth; "
                 "decode only (prefill not projected)" % (a.floor_ms,
                                                          100 * tgt.get("cpu_expert_frac", 0.6)))
    print("\n".join(lines))
    if a.json:
        json.dump({"target": tgt, "run": a.run, "projection": out}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
