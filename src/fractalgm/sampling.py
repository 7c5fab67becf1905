"""Sampling knobs (classifier-free guidance schedules, temperature, the reference's filter rule) and the
state that conditional generation threads down the hierarchy: known pixel values (`Known`) and where
each generated patch sits in the full image (`CanvasView`, for recording the generation process).

Temperature has the standard meaning here: logits are *divided* by it (T < 1 sharpens). The reference
multiplies logits by its `temperature`, so reference value τ corresponds to ours T = 1/τ; e.g. the
README's FractalMAR-64 setting τ = 1.02 is T ≈ 0.980, FractalAR-64 τ = 1.03 is T ≈ 0.971,
FractalMAR-H-256 τ = 1.1 is T ≈ 0.909.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .patchify import patchify

CFG_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class SamplingOptions:
    """What every level needs to know while sampling.

    `cfg` is the scale for the current step: a float, or one value per row (M,) when rows follow
    different schedules (inpainting with a linear schedule). `paired` says whether conditions carry
    conditional and unconditional halves; by default that is `cfg != 1`, and `step()` keeps it, so a
    step whose scale happens to be exactly 1 still runs both halves.
    """

    cfg: float | torch.Tensor = 1.0
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    generator: torch.Generator | None = None
    paired: bool | None = None

    @property
    def guided(self) -> bool:
        return self.paired if self.paired is not None else bool(self.cfg != 1.0)

    def step(self, cfg: float | torch.Tensor) -> SamplingOptions:
        """These options with the scale of one step (the halves stay as they are)."""
        return replace(self, cfg=cfg, paired=self.guided)

    def take(self, rows: torch.Tensor) -> SamplingOptions:
        """The options of a subset of rows (only a per-row scale needs slicing)."""
        return replace(self, cfg=self.cfg[rows]) if isinstance(self.cfg, torch.Tensor) else self


def cfg_scale(cfg: float, schedule: str, revealed: int, seq_len: int) -> float:
    """Guidance scale for a step after which `revealed` of `seq_len` tokens are known.

    "linear" grows as 1 + (cfg−1)·revealed/L (the reference: AR reaches cfg at the last token; MAR
    stops at 1 + (cfg−1)(L−1)/L because its last step leaves one token masked in the formula).
    """
    if schedule == "constant":
        return cfg
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * revealed / seq_len
    raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")


def guided_logits(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Temperature, then (when guided) the filter and CFG combination of cond/uncond halves.

    `logits` has 2M rows when guided (conditional half first), M otherwise; returns M rows.
    Filter (reference rule): where the conditional probability is below τ, the uncond logit is
    raised to at least `c − max(c) + max(u)`, capping the guidance push on tokens the conditional
    model finds very unlikely.
    """
    logits = logits.float() / opts.temperature
    if not opts.guided:
        return logits
    c, u = logits.chunk(2)
    low = torch.softmax(c, dim=-1) < opts.filter_threshold
    floor = c - c.max(-1, keepdim=True).values + u.max(-1, keepdim=True).values
    u = torch.where(low, torch.maximum(u, floor), u)
    cfg = opts.cfg.to(c).unsqueeze(-1) if isinstance(opts.cfg, torch.Tensor) else opts.cfg
    return u + cfg * (c - u)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row from softmax(logits), drawn with `generator` (on its device)."""
    probs = torch.softmax(logits.float(), dim=-1)
    gen_device = generator.device if generator is not None else probs.device
    idx = torch.multinomial(probs.to(gen_device), 1, generator=generator)
    return idx.squeeze(-1).to(probs.device)


def random_orders(rows: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(rows, length) independent uniformly random permutations."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(rows, length, generator=generator, device=gen_device).argsort(-1).to(device)


# ---------------------------------------------------------------------------- conditional generation
@dataclass(frozen=True)
class Known:
    """Known pixel values of the images (or patches) a level generates.

    `values` (…, C, S, S) integers and `mask` of the same shape (True = known, kept exactly). Values
    under a False mask are zero: nothing of the hidden content can leak into the generation.
    """

    values: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, values: torch.Tensor, mask: torch.Tensor) -> Known:
        return cls(values.long() * mask, mask)

    def patches(self, patch: int) -> Known:
        """(M, C, S, S) → (M, L, C, p, p): the same values seen as one level's tokens."""
        return Known(patchify(self.values, patch), patchify(self.mask, patch))

    @property
    def full(self) -> torch.Tensor:
        """(M, L) True where a token is entirely known: it is never generated."""
        return self.mask.flatten(2).all(-1)

    def take(self, index: tuple[torch.Tensor, torch.Tensor]) -> Known | None:
        """The patches at (rows, positions), or None when none of their values is known."""
        mask = self.mask[index]
        return Known(self.values[index], mask) if mask.any() else None


class CanvasView:
    """Where the images one level generates sit in the full canvas, for recording the process.

    The canvas (B, C, H, W) uint8 and its `unknown` mask are shared by every level; each level's
    rows are sub-images of side S with top-left corners (y, x) in image `image`. `write` puts the
    patches a step produced in place and calls `callback(level, canvas, unknown)`.
    """

    def __init__(self, canvas: torch.Tensor, unknown: torch.Tensor, callback: Callable,
                 image: torch.Tensor | None = None, y: torch.Tensor | None = None, x: torch.Tensor | None = None):
        self.canvas, self.unknown, self.callback = canvas, unknown, callback
        B = canvas.size(0)
        zeros = torch.zeros(B, dtype=torch.long, device=canvas.device)
        self.image = torch.arange(B, device=canvas.device) if image is None else image
        self.y = zeros if y is None else y
        self.x = zeros if x is None else x

    def child(self, index: tuple[torch.Tensor, torch.Tensor], grid: int, patch: int) -> CanvasView:
        """The view of the patches at (rows, positions) of a grid×grid level with patches of side `patch`."""
        rows, pos = index
        return CanvasView(self.canvas, self.unknown, self.callback, self.image[rows],
                          self.y[rows] + (pos // grid) * patch, self.x[rows] + (pos % grid) * patch)

    def write(self, level: int, index: tuple[torch.Tensor, torch.Tensor], patches: torch.Tensor, grid: int):
        """Paint `patches` (N, C, p, p) generated at (rows, positions), then report the frame."""
        sub = self.child(index, grid, patches.size(-1))
        steps = torch.arange(patches.size(-1), device=patches.device)
        ys = (sub.y[:, None] + steps)[:, :, None]
        xs = (sub.x[:, None] + steps)[:, None, :]
        where = (sub.image[:, None, None], ys, xs)  # (N, p, p) pixel coordinates, channels last
        self.canvas.permute(0, 2, 3, 1)[where] = patches.permute(0, 2, 3, 1).to(self.canvas.dtype)
        self.unknown.permute(0, 2, 3, 1)[where] = False
        self.callback(level, self.canvas, self.unknown)
