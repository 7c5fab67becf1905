"""Peak memory and loader speed of training on a streaming ImageFolder, at 5,000 and 50,000 JPEG files.

The trainer keeps only a compact file index and decodes in DataLoader workers, so its peak RSS must not
grow with the number of files: this trains `tiny_rgb64` for a few steps on generated 64×64 JPEG folders
of both sizes (each in a fresh process) and compares the peaks (target: within 10 %). It also times the
loader alone against training, to show the loader is not the bottleneck.

    python benchmarks/data_memory.py                 # generates /tmp/fractalgm-bench/jpeg64-{5000,50000} once
    python benchmarks/data_memory.py --sizes 500 5000 --steps 5
    python benchmarks/data_memory.py --sizes 5000 --generate-only   # just the folder

Writes JSON (default benchmarks/results/data_memory.json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 10


def _write_block(job):
    root, start, stop = job
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, stop):
        # smooth colour fields plus noise: JPEG sizes like small photos (~2-3 KB), not like pure noise
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        img = np.kron(base, np.ones((16, 16, 1))) + rng.normal(0, 12, (64, 64, 3))
        path = Path(root) / f"class{i % CLASSES}" / f"{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return stop - start


def generate(root: Path, n: int, workers: int) -> Path:
    """n 64×64 JPEGs in CLASSES class folders, written once (a marker file says it is complete)."""
    marker = root / ".complete"
    if marker.is_file() and int(marker.read_text()) == n:
        return root
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    blocks = [(str(root), s, min(s + 1000, n)) for s in range(0, n, 1000)]
    t = time.time()
    with ProcessPoolExecutor(workers) as pool:
        done = sum(pool.map(_write_block, blocks))
    marker.write_text(str(done))
    print(f"generated {done} JPEGs in {root} ({time.time() - t:.0f} s)", file=sys.stderr)
    return root


def child(data: str, steps: int, batch: int, workers: int) -> dict:
    """One measurement in this (fresh) process: train, then time the loader alone."""
    import torch

    from fractalgm import FractalGen, get_preset
    from fractalgm.data import BatchFeed, BatchPlan, open_dataset
    from fractalgm.training.config import TrainConfig
    from fractalgm.training.trainer import Trainer

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    t_open = time.time()
    dataset = open_dataset(data, "train_full", image_size=64)
    open_s = time.time() - t_open
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, amp="auto", device="cpu", workers=workers,
                      log_every=1, save_every=10**9, eval_every=10**9)
    trainer = Trainer(FractalGen(get_preset("tiny_rgb64")), dataset, Path(os.environ["BENCH_OUT"]), cfg,
                      progress_bar=False)
    trainer.fit()
    records = [json.loads(line) for line in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    train_ips = float(np.median([r["images_per_s"] for r in records[1:]]))  # the first step warms up
    trainer.feed.close()
    feed = BatchFeed(dataset, "cpu", num_workers=workers, prefetch=4)
    plan = BatchPlan(len(dataset), batch, flip=True)
    feed.get(plan, 0, 0)  # workers started
    t, n_batches = time.time(), 30
    for step in range(1, n_batches + 1):
        feed.get(plan, step, 0)
    loader_ips = n_batches * batch / (time.time() - t)
    feed.close()
    return {"files": len(dataset), "index_open_s": open_s, "train_images_per_s": train_ips,
            "loader_images_per_s": loader_ips,
            "trainer_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    p.add_argument("--root", default="/tmp/fractalgm-bench")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "data_memory.json"))
    p.add_argument("--generate-only", action="store_true", help="only write the JPEG folders (e.g. for a torchrun check)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.workers)))
        return
    results = []
    for n in args.sizes:
        folder = generate(Path(args.root) / f"jpeg64-{n}", n, max(1, os.cpu_count() or 1))
        if args.generate_only:
            print(folder)
            continue
        out = Path(args.root) / f"run-{n}"
        cmd = [sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_OUT": str(out)})
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    if args.generate_only:
        return
    peaks = [r["trainer_peak_rss_mb"] for r in results]
    summary = {"results": results, "peak_rss_ratio_largest_vs_smallest": peaks[-1] / peaks[0],
               "within_10_percent": abs(peaks[-1] / peaks[0] - 1) <= 0.10,
               "loader_vs_training_speed": [r["loader_images_per_s"] / r["train_images_per_s"] for r in results],
               "machine": f"{os.cpu_count()} CPU cores (shared with other jobs while measured)",
               "settings": {"preset": "tiny_rgb64", "batch_size": args.batch_size, "steps": args.steps,
                            "workers": args.workers}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"peak RSS of the trainer: {' / '.join(f'{p:.0f} MB' for p in peaks)} for "
          f"{' / '.join(str(r['files']) for r in results)} files (ratio {summary['peak_rss_ratio_largest_vs_smallest']:.3f}); "
          f"loader / training images/s: {', '.join(f'{x:.1f}x' for x in summary['loader_vs_training_speed'])}")


if __name__ == "__main__":
    main()
