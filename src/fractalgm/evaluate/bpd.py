"""Bits/dim over a dataset: the one loop behind `fractalgm nll`, `fractalgm eval` and validation.

bits/dim = NLL in nats / (C·H·W·ln 2) over 8-bit values. All-AR models are exact. MAR models give
the reference's random-masking estimate averaged over `passes` (unbiased; its standard error is
reported), or with `exact=True` the exact NLL under one fixed order per image ("random", drawn
from the seed, or "raster"), which costs one forward per token and level.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch


def nll_kind(model, exact: bool, order: str, passes: int) -> str:
    """How a number was computed, in words (every output says it)."""
    if exact or model.config.is_exact:
        return "exact" + (f" ({order} order)" if not model.config.is_exact else "")
    return f"random-masking estimate, {passes} pass(es)"


def _batches(data, labels, conditional: bool, n: int, batch_size: int):
    """(images, labels or None) batches of the first `n` items of a uint8 tensor or any dataset."""
    from ..data import take

    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        if isinstance(data, torch.Tensor):
            yield data[i:j], (labels[i:j] if labels is not None else None)
        else:  # in-memory or streaming dataset: read only what is scored
            x, y = take(data, i, j)
            yield x, (y if conditional else None)


@torch.no_grad()
def dataset_bpd(model, data, labels: torch.Tensor | None = None, *, conditional: bool = False,
                limit: int | None = None, batch_size: int = 100, passes: int = 1, exact: bool = False,
                order: str = "random", seed: int = 0, autocast=None, progress: bool = True,
                desc: str | None = None, bar=None, should_stop=None) -> dict | None:
    """Bits/dim of `data`: uint8 images (N, C, H, W) with optional `labels`, or a dataset (streamed,
    its labels used when `conditional`); only the first `limit` images when given.

    Returns a JSON-ready dict: bpd, stderr (of the dataset mean: image-to-image spread, masking
    noise included), masking_stderr (the estimator's own noise in the mean; 0 when exact), images,
    kind, exact, passes, conditional, seconds and per-image `bpd_per_image` (a list).
    `autocast` is a context manager to run the forward under (e.g. the trainer's bf16 autocast);
    `bar` an outer progress bar to advance instead of a new one; `should_stop()` is asked before
    every batch, and a True answer returns None (the trainer's time budget and stop signals).
    """
    n = len(data) if limit is None else min(limit, len(data))
    if n == 0:
        raise ValueError("no images to score")
    if passes < 1:
        raise ValueError("passes must be >= 1")
    if labels is not None and len(labels) < n:
        raise ValueError(f"got {len(labels)} labels for {n} images")
    is_exact = exact or model.config.is_exact
    per_dim = model.config.num_dims * math.log(2)
    g = torch.Generator(model.device).manual_seed(seed)
    kind = nll_kind(model, exact, order, passes)
    nats, var = [], []
    from tqdm import tqdm

    t0 = time.time()
    own = tqdm(total=n, unit="img", desc=desc or ("exact nll" if is_exact else f"nll ({passes} passes)"),
               disable=not progress or bar is not None, dynamic_ncols=True)
    with own:
        for x, y in _batches(data, labels, conditional, n, batch_size):
            if should_stop is not None and should_stop():
                return None
            x, y = x.to(model.device), (y.to(model.device) if y is not None else None)
            with autocast if autocast is not None else nullcontext():
                r = model.nll(x, y, passes=passes, exact=exact, order=order, generator=g)
            nats.append(r.nats.double().cpu())
            if r.stderr is not None:
                var.append((r.stderr.double().cpu() ** 2) * passes)  # per-image variance of one pass
            (bar or own).update(len(x))
            own.set_postfix(bpd=f"{float(torch.cat(nats).mean()) / per_dim:.4f}")
    nats = torch.cat(nats)
    bpd = nats / per_dim
    stderr = float(bpd.std() / math.sqrt(n)) if n > 1 else float("nan")
    if is_exact:
        masking = 0.0
    elif var:  # mean per-image variance of one pass, over `passes` passes and n images
        masking = float(torch.cat(var).mean() / (passes * n)) ** 0.5 / per_dim
    else:
        masking = None  # one pass: the masking noise is inside `stderr` but cannot be separated
    return {"bpd": float(bpd.mean()), "stderr": stderr, "masking_stderr": masking, "images": n, "kind": kind,
            "exact": is_exact, "passes": 1 if is_exact else passes, "conditional": labels is not None or conditional,
            "seconds": round(time.time() - t0, 3), "bpd_per_image": bpd.tolist()}
