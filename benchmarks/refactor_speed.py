"""Sampling and training-step time of this tree against another checkout (e.g. the commit before a refactor).

Each measurement runs in a fresh one-thread subprocess, alternating between the two trees so both see
the same machine load; times are the process's CPU time, which other load on a shared machine
disturbs far less than wall-clock time. Read the ratio of medians (new / old: < 1 is faster). Each job
also reports the aten ops it dispatches (independent of the load) and whether both trees give the
same output (samples / loss) for the same seed.

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
from torch.utils._python_dispatch import TorchDispatchMode
torch.set_num_threads(1)
from fractalgm import FractalGen, get_preset


class CountOps(TorchDispatchMode):  # aten ops dispatched: a load-independent measure of the work
    n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        CountOps.n += 1
        return func(*args, **(kwargs or {}))


def guidance(model, scale):  # the keyword of the tree under test: `cfg_scale` now, `cfg` before the rename
    import inspect
    return {"cfg_scale" if "cfg_scale" in inspect.signature(model.sample).parameters else "cfg": scale}


preset, what, opts, repeats = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = FractalGen(get_preset(preset))
times, out = [], None
for i in range(repeats + 2):  # the first run warms up, the last counts ops
    g = torch.Generator().manual_seed(i if i <= repeats else 0)
    with CountOps() if i > repeats else torch.no_grad() if what == "sample" else torch.enable_grad():
        if what == "sample":
            model.eval()
            labels = torch.arange(opts.get("n", 8)) % 10
            t = time.process_time()
            out = model.sample(labels, num_iter=opts.get("num_iter"), generator=g, **guidance(model, opts["cfg"]))
        else:
            model.train()
            x = torch.randint(0, 256, (opts["batch"], 1, 28, 28), generator=g, dtype=torch.uint8)
            y = torch.randint(0, 10, (opts["batch"],), generator=g)
            t = time.process_time()
            out = model(x, y)
            out.backward()
    times.append(time.process_time() - t)
print(json.dumps({"times": times[1:-1], "ops": CountOps.n, "checksum": float(out.double().sum())}))
'''


def run(src: str, job, repeats: int) -> dict:
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
    ap.add_argument("--only", help="run the jobs whose name contains this text")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    for name, job in JOBS.items():
        if args.only and args.only not in name:
            continue
        old, new, info = [], [], {}
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):  # alternate who runs first
                res = run(args.old if which == "old" else args.new, job, args.repeats)
                (old if which == "old" else new).extend(res["times"])
                info[which] = res
        o, n = statistics.median(old), statistics.median(new)
        results[name] = {"old_s": o, "new_s": n, "new_over_old": n / o, "old_ops": info["old"]["ops"],
                         "new_ops": info["new"]["ops"], "same_output": info["old"]["checksum"] == info["new"]["checksum"]}
        print(f"{name:52s} old {o * 1e3:7.1f} ms  new {n * 1e3:7.1f} ms  new/old {n / o:5.3f}  "
              f"aten ops {info['old']['ops']} → {info['new']['ops']}  same output "
              f"{results[name]['same_output']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
