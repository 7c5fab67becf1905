"""What a model costs: parameters, FLOPs, network evaluations per sample, measured throughput.

* parameters and training-forward GFLOPs per image come from `fractalgm.evaluate.flops` (one forward with
  every patch passed down, the paper's Table-1 convention; MAR training passes down only the
  masked patches, so its real training cost is lower);
* network evaluations per sampled image follow from the sampling plan: a level with L tokens runs
  min(num_iter, L) forward passes (MAR) or L KV-cached passes (AR) per sequence, on every sequence
  its parent decides (∏ L of the levels above), the pixel head one pass per channel per pixel,
  and classifier-free guidance doubles every pass (conditional and unconditional rows);
* images/s for a training step (forward + backward, no optimizer update) and for sampling are
  measured here, as is the machine's matmul peak, in the same run, so the share of the peak the
  training step reaches (3 × forward FLOPs per image × images/s) is a ratio of two measurements.
"""
from __future__ import annotations

import copy
import time
from contextlib import nullcontext

import torch

from .flops import level_table


def network_evaluations(config, num_iter=None, guided: bool = False) -> dict:
    """Transformer forward passes per sampled image, per level and in total (see module docstring)."""
    levels = config.levels
    if num_iter is None:
        num_iter = [min(lv.seq_len, 64) for lv in levels]
    elif isinstance(num_iter, int):
        num_iter = [num_iter] * len(levels)
    per_level, sequences = {}, 1
    for i, lv in enumerate(levels):
        steps = lv.seq_len if lv.one_step_per_token else min(int(num_iter[i]), lv.seq_len)
        per_level[f"g{i + 1} ({lv.kind})"] = sequences * steps
        sequences *= lv.seq_len
    per_level[f"g{len(levels) + 1} (pixel head)"] = sequences * config.channels
    factor = 2 if guided else 1
    per_level = {k: v * factor for k, v in per_level.items()}
    return {"per_level": per_level, "total": sum(per_level.values()), "guided": guided}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int = 2048,
                seconds: float = 1.0) -> float:
    """Measured FLOP/s of a square matmul on `device` in `dtype` (best of repeated runs)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure_cost(model, *, train_batch: int = 16, sample_batch: int = 8, repeats: int = 2, amp: str = "auto",
                 sampling: dict | None = None, measure: bool = True, seed: int = 0) -> dict:
    """Parameters, GFLOPs, network evaluations and (when `measure`) images/s and share of the matmul peak."""
    from ..runtime import autocast_context

    cfg, device = model.config, model.device
    sampling = dict(sampling or {})
    table = level_table(cfg)
    fwd = sum(r["gflops"] for r in table)
    out = {"parameters": sum(p.numel() for p in model.parameters()),
           "train_forward_gflops_per_image": fwd,
           "train_forward_gflops_per_image_paper_convention": sum(r["gflops_paper"] or 0.0 for r in table),
           "network_evaluations_per_image": network_evaluations(
               cfg, sampling.get("num_iter"), guided=sampling.get("cfg", 1.0) != 1.0 and cfg.num_classes > 0)}
    if not measure:
        return out
    autocast, _ = autocast_context(amp, device)
    g = torch.Generator().manual_seed(seed)
    S, C = cfg.image_size, cfg.channels
    images = torch.randint(0, 256, (train_batch, C, S, S), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, cfg.num_classes, (train_batch,), generator=g).to(device) if cfg.num_classes else None
    net = copy.deepcopy(model).train()  # the caller's model keeps its mode, weights and gradients

    def train_step():
        with autocast if autocast is not None else nullcontext():
            loss = net(images, labels)
        loss.backward()
        net.zero_grad(set_to_none=True)

    t_train = _timed(train_step, device, repeats)
    sample_labels = (torch.arange(sample_batch) % cfg.num_classes).to(device) if cfg.num_classes else None
    options = {k: v for k, v in sampling.items() if k in ("num_iter", "cfg_scale", "temperature", "cfg_schedule",
                                                          "filter_threshold", "fast")}
    if cfg.num_classes == 0:
        options["cfg_scale"] = 1.0

    def sample():
        gen = torch.Generator(device).manual_seed(seed)
        with autocast if autocast is not None else nullcontext():
            model.sample(sample_labels, num_images=None if cfg.num_classes else sample_batch, generator=gen,
                         **options)

    t_sample = _timed(sample, device, max(1, repeats // 2))
    # the step runs matmuls in the autocast dtype and in fp32 (attention, the heads on CPU): the peak is the
    # faster of the two (a CPU without bf16 units, or ATEN_CPU_CAPABILITY=default, runs bf16 slower than fp32)
    dtypes = [torch.float32] + ([torch.bfloat16] if amp in ("auto", "bf16") and device.type in ("cpu", "cuda") else [])
    peak, peak_dtype = max((matmul_peak(device, d, seconds=0.5), d) for d in dtypes)
    train_ips = train_batch / t_train
    achieved = 3 * fwd * 1e9 * train_ips  # forward + backward ≈ 3 forwards
    out.update({"train_images_per_s": train_ips, "sample_images_per_s": sample_batch / t_sample,
                "train_batch": train_batch, "sample_batch": sample_batch, "amp": amp, "device": str(device),
                "threads": torch.get_num_threads(), "matmul_peak_tflops": peak / 1e12,
                "matmul_peak_dtype": str(peak_dtype).replace("torch.", ""),
                "train_share_of_matmul_peak": achieved / peak})
    return out
