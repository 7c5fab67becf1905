"""Sampling on a CPU shared with another job: OpenMP's default spin-waiting against OMP_WAIT_POLICY=PASSIVE.

    python benchmarks/wait_policy.py --rounds 2

Each measurement is a fresh process (the policy is read when OpenMP loads) sampling `--images` guided
images of the shipped model in one batch on 2 threads, timed after a warm-up. "busy" runs the same
beside a process that keeps one core busy, as a browser or a second job would. Policies alternate
within each round. Writes benchmarks/results/wait_policy_<model>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = {"default": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
CHILD = """
import sys, time, torch
from fractalgm import FractalGen
torch.set_num_threads(2)
model = FractalGen.from_pretrained(sys.argv[1]).eval()
labels = torch.arange(int(sys.argv[2])) % max(model.config.num_classes, 1)
run = lambda: model.sample(labels, cfg_scale=1.5, generator=torch.Generator().manual_seed(0))
run()
t0 = time.perf_counter()
run()
print(time.perf_counter() - t0)
"""
BUSY = "import time\nwhile True: pass"


def measure(policy: str, args) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.images)], env={**env, **POLICIES[policy]},
                         capture_output=True, text=True, check=True, timeout=args.timeout)
    return float(out.stdout.split()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    seconds = {f"{load} {pol}": [] for load in ("idle", "busy") for pol in POLICIES}
    for load in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
        try:
            for r in range(args.rounds):
                for pol in (list(POLICIES) if r % 2 == 0 else list(POLICIES)[::-1]):
                    seconds[f"{load} {pol}"].append(measure(pol, args))
                    print(f"{load:4s} {pol:8s} round {r + 1}: {seconds[f'{load} {pol}'][-1]:.2f} s", flush=True)
        finally:
            if busy is not None:
                busy.kill()
    report = {"model": args.model, "images": args.images, "threads": 2, "cpu_count": os.cpu_count(),
              "seconds": seconds, "median_s": {k: statistics.median(v) for k, v in seconds.items()}}
    for k, v in report["median_s"].items():
        print(f"{k:16s} median {v:.2f} s")
    out = args.out or REPO / "benchmarks" / "results" / f"wait_policy_{args.model}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
