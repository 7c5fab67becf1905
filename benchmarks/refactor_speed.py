"""Sampling and training-step time of this tree against another checkout (e.g. the commit before a refactor).

Each measurement runs in a fresh subprocess (one thread), alternating between the two trees, so both
see the same machine load; the ratio of medians is what to read (new / old: < 1 is faster).

    OMP_NUM_THREADS=1 python benchmarks/refactor_speed.py --old /path/to/old/checkout/src --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

JOBS = {
    "sample tiny_fmnist ×8, cfg 1": ("tiny_fmnist", "sample", dict(cfg=1.0)),
    "sample tiny_fmnist ×8, cfg 1.5": ("tiny_fmnist", "sample", dict(cfg=1.5)),
    "sample fractalmar_fmnist ×4, num_iter 4,4, cfg 1.5": ("fractalmar_fmnist", "sample",
                                                           dict(cfg=1.5, num_iter=[4, 4], n=4)),
    "sample fractalar_fmnist ×2, cfg 1.5": ("fractalar_fmnist", "sample", dict(cfg=1.5, n=2)),
    "train step tiny_fmnist, batch 32": ("tiny_fmnist", "train", dict(batch=32)),
    "train step fractalmar_fmnist, batch 8": ("fractalmar_fmnist", "train", dict(batch=8)),
    "train step fractalar_fmnist, batch 8": ("fractalar_fmnist", "train", dict(batch=8)),
}

CHILD = r'''
import json, sys, time
import torch
torch.set_num_threads(1)
from fractalgm import FractalGen, get_preset
preset, what, opts, repeats = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = FractalGen(get_preset(preset))
times = []
for i in range(repeats + 1):  # the first run warms up
    g = torch.Generator().manual_seed(i)
    if what == "sample":
        model.eval()
        labels = torch.arange(opts.get("n", 8)) % 10
        t = time.perf_counter()
        model.sample(labels, cfg=opts["cfg"], num_iter=opts.get("num_iter"), generator=g)
    else:
        model.train()
        x = torch.randint(0, 256, (opts["batch"], 1, 28, 28), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (opts["batch"],), generator=g)
        t = time.perf_counter()
        model(x, y).backward()
    times.append(time.perf_counter() - t)
print(json.dumps(times[1:]))
'''


def run(src: str, job, repeats: int) -> list[float]:
    preset, what, opts = job
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, preset, what, json.dumps(opts), str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the src/ folder of the checkout to compare against")
    ap.add_argument("--new", default=str(HERE.parent / "src"))
    ap.add_argument("--rounds", type=int, default=3, help="alternating subprocess pairs per job")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per subprocess")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    for name, job in JOBS.items():
        old, new = [], []
        for r in range(args.rounds):
            first, second = (old, new) if r % 2 == 0 else (new, old)  # alternate who runs first
            first += run(args.old if first is old else args.new, job, args.repeats)
            second += run(args.old if second is old else args.new, job, args.repeats)
        o, n = statistics.median(old), statistics.median(new)
        results[name] = {"old_s": o, "new_s": n, "new_over_old": n / o}
        print(f"{name:55s} old {o * 1e3:8.1f} ms   new {n * 1e3:8.1f} ms   new/old {n / o:5.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
