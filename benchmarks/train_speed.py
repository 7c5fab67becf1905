"""Training-step speed of the small presets and of the Table-2 level ablation, measured in one run.

Prints step time, images/s and the FLOP rate per preset, plus ratios against the 3-level model, and
writes JSON. The fractal claim is about cost: more levels, far less compute per image.

    python benchmarks/train_speed.py [--presets a,b] [--batch-size 64] [--amp bf16] [--out speed.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fractalgm import FractalGen, get_preset
from fractalgm.evaluate.flops import level_table

DEFAULT = ("fractalmar_fmnist,fractalar_fmnist,fractalmar_rgb32,fractalar_rgb32,"
           "ablation_2level_mar,ablation_3level_mar,ablation_4level_mar,"
           "ablation_2level_ar,ablation_3level_ar,ablation_4level_ar")


def time_steps(model, images, labels, amp: str, steps: int, device) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else torch.autocast(device.type, enabled=False)
    times = []
    for i in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ctx:
            loss = model(images, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]  # median


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=DEFAULT)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--amp", default="bf16", choices=["bf16", "none"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="train_speed.json")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.presets.split(","):
        cfg = get_preset(name)
        torch.manual_seed(0)
        model = FractalGen(cfg).to(device).train()
        B, S = args.batch_size, cfg.image_size
        images = torch.randint(0, 256, (B, cfg.channels, S, S), dtype=torch.uint8, device=device)
        labels = torch.randint(0, cfg.num_classes, (B,), device=device)
        step = time_steps(model, images, labels, args.amp, args.steps, device)
        gflops_fwd = sum(r["gflops"] for r in level_table(cfg))  # every patch passed down, batch 1
        rows.append({"preset": name, "params": sum(p.numel() for p in model.parameters()),
                     "batch": B, "step_s": step, "images_per_s": B / step, "gflops_per_image_fwd": gflops_fwd,
                     "achieved_tflops": 3 * gflops_fwd * B / step / 1e3})
        r = rows[-1]
        print(f"{name:22s} {r['params'] / 1e6:6.2f}M  step {step:7.3f}s  {r['images_per_s']:8.1f} img/s  "
              f"{gflops_fwd:7.2f} GFLOP/img fwd  ~{r['achieved_tflops']:.3f} TFLOP/s (3× fwd)", flush=True)
    base = {r["preset"].rsplit("_", 1)[-1]: r for r in rows if r["preset"].startswith("ablation_3level")}
    for r in rows:
        if r["preset"].startswith("ablation_"):
            b = base.get(r["preset"].rsplit("_", 1)[-1])
            if b:
                r["cost_vs_3level"] = b["images_per_s"] / r["images_per_s"]
                print(f"{r['preset']:22s} time per image vs 3 levels: {r['cost_vs_3level']:.2f}×")
    with open(args.out, "w") as f:
        json.dump({"device": str(device), "amp": args.amp, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
