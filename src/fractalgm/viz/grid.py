"""Pictures: image grids and the training-metrics plot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2, by_column: bool = False) -> np.ndarray:
    """uint8 (B, C, H, W) → one (H', W', C) uint8 array; `by_column` fills columns first."""
    images = images.cpu()
    B, C, H, W = images.shape
    ncol = (B + nrow - 1) // nrow if by_column else nrow
    nrows = nrow if by_column else (B + nrow - 1) // nrow
    grid = np.full((nrows * (H + pad) + pad, ncol * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i in range(B):
        r, c = (i % nrow, i // nrow) if by_column else (i // nrow, i % nrow)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y:y + H, x:x + W] = images[i].permute(1, 2, 0).numpy()
    return grid


def to_pil(array: np.ndarray, scale: int = 1) -> Image.Image:
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: torch.Tensor, path, nrow: int = 8, by_column: bool = False, scale: int = 1):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(make_grid(images, nrow, by_column=by_column), scale).save(path)


def plot_metrics(log_path, out_path):
    """Loss (and validation bpd, when logged) against step, from a metrics.jsonl file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    if not records:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in records if "loss" in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (nats/dim)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per sub-pixel")
    val = [(r["step"], r["val_bpd"]) for r in records if "val_bpd" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="tab:red", label="val bits/dim")
        ax2.set_ylabel("val bits/dim", color="tab:red")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
