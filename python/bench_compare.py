"""Runs the performance harness on both sides, alternating, and prints BENCHMARKS.md's table.

    python3 python/make_bench_models.py --out target/bench-models
    cargo build --release
    python3 python/bench_compare.py --tuwen target/release/tuwen --models target/bench-models --threads 2

Each round runs every workload once with tuwen (`tuwen bench infer|train --json`) and once with
PyTorch (python/bench_hf.py), in alternating order; each run is a fresh process that loads the
folder and times `--steps` batches after `--warmup`. The table quotes the median over rounds of
each run's median, the throughput ratio (PyTorch ms / tuwen ms: above 1, tuwen is faster), and
the achieved GFLOP/s (PyTorch's FlopCounterMode count of the same work) as a share of the
machine's SGEMM ceiling: the faster of the two sides' 2048 x 2048 products, measured in the
same run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# name, folder, task, batch, extra flags, steps
WORKLOADS = [
    ("ViT-B/16 logits", "vit-b16", "infer", 8, [], 5),
    ("CLIP ViT-B/32 image embedding", "clip-b32", "infer", 1, [], 20),
    ("CLIP ViT-B/32 image embedding", "clip-b32", "infer", 32, [], 5),
    ("CLIP ViT-B/32 text embedding", "clip-b32", "infer", 64, ["--text"], 5),
    ("SigLIP-B/16 image embedding", "siglip-b16", "infer", 8, [], 5),
    ("EfficientNet-B0 logits", "efficientnet-b0", "infer", 8, [], 10),
    ("MAE-B encoder, 75% masked", "mae-b", "infer", 8, [], 10),
    ("CLIP tiny training step", "clip-tiny", "train", 64, [], 20),
    ("CLIP small training step", "clip-small", "train", 32, [], 10),
    ("EfficientNet-B0 training step", "efficientnet-b0", "train", 8, [], 5),
]


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tuwen", default="target/release/tuwen")
    ap.add_argument("--models", default="target/bench-models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="workload indices (from 0)")
    ap.add_argument("--json-out", help="also write every run here")
    ap.add_argument("--bf16", action="store_true",
                    help="inference workloads with tuwen --precision bf16, against PyTorch fp32 "
                         "and PyTorch under CPU autocast to bfloat16")
    a = ap.parse_args()
    if a.bf16:
        return bf16(a)
    py = [sys.executable, os.path.join(HERE, "bench_hf.py")]
    tw = [a.tuwen, "--threads", str(a.threads), "bench"]
    peak = {"tuwen": [], "pytorch": []}
    for r in range(a.rounds):
        order = [("tuwen", tw + ["gemm", "--json"]),
                 ("pytorch", py + ["gemm", "--threads", str(a.threads)])]
        for side, cmd in (order if r % 2 == 0 else order[::-1]):
            peak[side].append(run(cmd + ["--steps", "5"])["gflops"])
    ceiling = max(statistics.median(v) for v in peak.values())
    rows, log = [], {"gemm": peak}
    chosen = [WORKLOADS[int(i)] for i in a.only] if a.only else WORKLOADS
    for name, folder, task, batch, extra, steps in chosen:
        path = os.path.join(a.models, folder)
        common = ["--model", path, "--batch-size", str(batch), "--steps", str(steps),
                  "--warmup", "2"] + extra
        sides = {"tuwen": tw + [task] + common + ["--json"],
                 "pytorch": py + [task] + common + ["--threads", str(a.threads)]}
        res = {"tuwen": [], "pytorch": []}
        for r in range(a.rounds):
            for side in (["tuwen", "pytorch"] if r % 2 == 0 else ["pytorch", "tuwen"]):
                res[side].append(run(sides[side]))
                print(f"{name} b{batch} {side}: {res[side][-1]['ms']:.1f} ms", file=sys.stderr)
        med = {s: statistics.median(x["ms"] for x in v) for s, v in res.items()}
        flops = res["pytorch"][0]["flops"]
        rows.append((name, batch, task, med, flops, res))
        log[f"{name} b{batch} {task}"] = res
    print(f"SGEMM ceiling (2048 x 2048, {a.threads} threads): tuwen "
          f"{statistics.median(peak['tuwen']):.0f} GFLOP/s, PyTorch "
          f"{statistics.median(peak['pytorch']):.0f} GFLOP/s; ceiling {ceiling:.0f} GFLOP/s\n")
    print("| workload | batch | tuwen ms | PyTorch ms | throughput tuwen / PyTorch | tuwen GFLOP/s (share of ceiling) | PyTorch GFLOP/s (share) | load ms tuwen / PyTorch | peak MiB tuwen / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, batch, task, med, flops, res in rows:
        g = {s: flops / med[s] / 1e6 for s in med}
        load = {s: statistics.median(x["load_ms"] for x in v) for s, v in res.items()}
        rss = {s: statistics.median(x["peak_rss_mb"] for x in v) for s, v in res.items()}
        print(f"| {name} | {batch} | {med['tuwen']:.1f} | {med['pytorch']:.1f} | "
              f"**{med['pytorch'] / med['tuwen']:.2f}** | {g['tuwen']:.0f} ({g['tuwen'] / ceiling:.0%}) | "
              f"{g['pytorch']:.0f} ({g['pytorch'] / ceiling:.0%}) | {load['tuwen']:.0f} / {load['pytorch']:.0f} | "
              f"{rss['tuwen']:.0f} / {rss['pytorch']:.0f} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(log, f, indent=1)


def bf16(a):
    """tuwen's bfloat16 inference against PyTorch fp32 and PyTorch's autocast to bfloat16."""
    py = [sys.executable, os.path.join(HERE, "bench_hf.py")]
    tw = [a.tuwen, "--threads", str(a.threads), "--precision", "bf16", "bench"]
    chosen = [WORKLOADS[int(i)] for i in a.only] if a.only else WORKLOADS
    rows, log = [], {}
    for name, folder, task, batch, extra, steps in chosen:
        if task != "infer":
            continue
        path = os.path.join(a.models, folder)
        common = ["--model", path, "--batch-size", str(batch), "--steps", str(steps),
                  "--warmup", "2"] + extra
        sides = {"tuwen bf16": tw + [task] + common + ["--json"],
                 "pytorch fp32": py + [task] + common + ["--threads", str(a.threads)],
                 "pytorch bf16": py + [task] + common + ["--threads", str(a.threads), "--bf16"]}
        res = {s: [] for s in sides}
        names = list(sides)
        for r in range(a.rounds):
            for side in (names if r % 2 == 0 else names[::-1]):
                res[side].append(run(sides[side]))
                print(f"{name} b{batch} {side}: {res[side][-1]['ms']:.1f} ms", file=sys.stderr)
        med = {s: statistics.median(x["ms"] for x in v) for s, v in res.items()}
        cos = min(x["cosine_to_fp32"] for x in res["tuwen bf16"])
        rows.append((name, batch, med, cos))
        log[f"{name} b{batch} bf16"] = res
    print("| workload | batch | tuwen bf16 ms | PyTorch fp32 ms | PyTorch bf16 (autocast) ms | "
          "tuwen bf16 / PyTorch fp32 | tuwen bf16 / PyTorch bf16 | smallest cosine to tuwen fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, med, cos in rows:
        t = med["tuwen bf16"]
        print(f"| {name} | {batch} | {t:.1f} | {med['pytorch fp32']:.1f} | {med['pytorch bf16']:.1f} | "
              f"**{med['pytorch fp32'] / t:.2f}** | **{med['pytorch bf16'] / t:.2f}** | {cos:.6f} |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(log, f, indent=1)


if __name__ == "__main__":
    main()
