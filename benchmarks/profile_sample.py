"""Where one sampling run's time goes: operator table (self time, calls, input shapes) under `torch.profiler`.

    python benchmarks/profile_sample.py --model fmnist-ar --batch 100 --cfg 1.5 [--fast]

Writes the table (and the wall time with and without the profiler) to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import profile

from fractalgm import FractalGen

REPO = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--rows", type=int, default=25, help="operator rows in the table")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FractalGen.from_pretrained(args.model).eval()
    labels = torch.arange(args.batch) % max(model.config.num_classes, 1)

    def run():
        return model.sample(labels, cfg_scale=args.cfg, generator=torch.Generator().manual_seed(0), fast=args.fast)

    run()  # warm-up
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    with profile(record_shapes=True) as prof:
        run()
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                               max_name_column_width=48, max_shapes_column_width=70)
    path = "fast" if args.fast else "exact"
    head = (f"{args.model}, {args.batch} images, cfg {args.cfg}, {path} path, {args.threads} threads: "
            f"{wall:.2f} s without the profiler\n")
    out = args.out or REPO / "benchmarks" / "results" / f"profile_sample_{args.model}_b{args.batch}_{path}.txt"
    out.write_text(head + table + "\n")
    print(head + table)


if __name__ == "__main__":
    main()
