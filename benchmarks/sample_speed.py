"""Seconds per sampled image of a preset with random weights, exact path and `--fast`, on any device.

The paper's cost figure (FractalMAR-H: 1.29 s per 256×256 image on an H100, 64/16/16 steps, cfg) is a
sampling throughput; random weights cost the same arithmetic as trained ones. Both paths run in turns
in one process, after a warm-up each:

    python benchmarks/sample_speed.py --preset fractalmar_huge_in256 --device cuda --batch 64 \\
        --num-iter 64,16,16 --cfg 4.0 --rounds 1
    python benchmarks/sample_speed.py --preset fractalar_fmnist --batch 20 --cfg 1.5     # CPU

Writes benchmarks/results/sample_speed_<preset>_<device>_b<batch>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fractalgm import FractalGen, get_preset

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="fractalar_fmnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--num-iter", default=None, help="MAR steps per level, e.g. 64,16,16 (AR levels ignore it)")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--paths", default="exact,fast")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FractalGen(get_preset(args.preset)).to(device).eval()
    cfg = model.config
    labels = (torch.arange(args.batch) % cfg.num_classes).to(device) if cfg.num_classes else None
    num_iter = [int(n) for n in args.num_iter.split(",")] if args.num_iter else None

    def run(fast: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model.sample(labels, num_images=None if labels is not None else args.batch, num_iter=num_iter,
                     cfg_scale=args.cfg if labels is not None else 1.0, fast=fast,
                     generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    paths = args.paths.split(",")
    seconds = {path: [] for path in paths}
    warm = {path: run(path == "fast") for path in paths}
    for r in range(args.rounds):
        for path in (paths if r % 2 == 0 else paths[::-1]):
            seconds[path].append(run(path == "fast"))
            print(f"round {r + 1}/{args.rounds}  {path:5s} {seconds[path][-1]:8.2f} s  "
                  f"{seconds[path][-1] / args.batch:.4f} s/image", flush=True)
    report = {"preset": args.preset, "device": args.device, "device_name": _device_name(device), "batch": args.batch,
              "num_iter": num_iter, "cfg": args.cfg, "threads": args.threads, "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()), "first_run_s": warm, "seconds": seconds,
              "seconds_per_image": {k: statistics.median(v) / args.batch for k, v in seconds.items()}}
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    for k, v in report["seconds_per_image"].items():
        print(f"{k:5s} {v:.4f} s per image (median of {args.rounds})")
    out = args.out or REPO / "benchmarks" / "results" / f"sample_speed_{args.preset}_{args.device}_b{args.batch}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()}-core CPU ({torch.backends.cpu.get_cpu_capability()})"


if __name__ == "__main__":
    main()
