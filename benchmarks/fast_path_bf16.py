"""The fast path's numerics on bf16 hardware, on a CPU without bf16 units: bits/dim under bf16 autocast
against fp32, and 1,000 fast-path samples with its bf16 autocast forced on (same rounding, slower).

    python benchmarks/fast_path_bf16.py          # then: fractalgm eval --model fmnist-ar --samples OUT --cfg 1.5
"""
from __future__ import annotations

import argparse
import time

import torch

import fractalgm.models.fractal_gen as fractal_gen
from fractalgm import FractalGen
from fractalgm.data import load_dataset
from fractalgm.evaluate.samples import generate_samples_npz


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--out", default="fast_bf16_samples.npz")
    args = p.parse_args()
    model = FractalGen.from_pretrained(args.model).eval()
    data = load_dataset("fashion_mnist", split="test")
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        bpd = []
        for i in range(0, args.images, 100):
            x, y = data.images[i:i + 100], data.labels[i:i + 100]
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                bpd.append(model.nll(x, y).bpd)
        print(f"{name}: {torch.cat(bpd).double().mean().item():.4f} bits/dim on the first {args.images} test images")
    fractal_gen.fast_context = lambda device: torch.autocast(device.type, dtype=torch.bfloat16)  # as on AMX / GPU
    t0 = time.perf_counter()
    generate_samples_npz(model, args.out, args.images, batch_size=100, cfg_scale=args.cfg, fast=True)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s (bf16 emulated: the speed is not a bf16 machine's)")


if __name__ == "__main__":
    main()
