"""Batches of `sample --out X.npz` one at a time, in two threads, or in two forked processes.

    python benchmarks/side_by_side.py --model fmnist-ar --images 1000 --batch 100 --cfg 1.5 --rounds 3

The three ways take turns in every round (this machine is shared and noisy: compare within a round);
each also checks that its images equal one-at-a-time's. Writes benchmarks/results/side_by_side_<model>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fractalgm import FractalGen, runtime
from fractalgm.evaluate.samples import generate_samples_npz

REPO = Path(__file__).resolve().parents[1]
WAYS = {"sequential": (1, None), "threads": (2, False), "processes": (2, True)}


def run(model, way: str, args) -> tuple[float, str]:
    workers, fork = WAYS[way]
    runtime.can_fork = lambda: fork  # what `side_by_side` would find on a platform without a safe fork
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = generate_samples_npz(model, Path(tmp) / "s.npz", args.images, batch_size=args.batch, progress=False,
                                   workers=workers, cfg_scale=args.cfg)
        seconds = time.perf_counter() - t0
        with np.load(out) as f:
            return seconds, hashlib.sha256(f["arr_0"].tobytes()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FractalGen.from_pretrained(args.model)
    times, digests = {w: [] for w in WAYS}, {w: set() for w in WAYS}
    for r in range(args.rounds):
        ways = list(WAYS) if r % 2 == 0 else list(WAYS)[::-1]
        for way in ways:
            seconds, digest = run(model, way, args)
            times[way].append(seconds)
            digests[way].add(digest)
            print(f"round {r + 1}/{args.rounds}  {way:10s} {seconds:6.1f} s", flush=True)
    base = statistics.median(times["sequential"])
    report = {"model": args.model, "images": args.images, "batch": args.batch, "cfg": args.cfg,
              "threads": args.threads, "torch": torch.__version__, "seconds": times,
              "median_s": {w: statistics.median(t) for w, t in times.items()},
              "speedup_over_sequential": {w: base / statistics.median(t) for w, t in times.items()},
              "same_images": len(set().union(*digests.values())) == 1}
    for way in WAYS:
        print(f"{way:10s} median {report['median_s'][way]:6.1f} s  {report['speedup_over_sequential'][way]:.2f}×")
    print("same images in every way:", report["same_images"])
    out = args.out or REPO / "benchmarks" / "results" / f"side_by_side_{args.model}_{args.threads}t.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
