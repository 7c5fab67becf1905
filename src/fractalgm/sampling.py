"""Sampling: one plan per level (`SamplePlan`: steps, CFG schedule and scale, temperature, filter, random
generator), the steps per level, CFG pairing, the reference's filter rule, and the state that
conditional generation threads down the hierarchy: known pixel values (`Known`) and where each
generated patch sits in the full image (`CanvasView`, for recording the generation process).

Temperature has the standard meaning here: logits are *divided* by it (T < 1 sharpens). The reference
multiplies logits by its `temperature`, so reference value τ corresponds to ours T = 1/τ; e.g. the
README's FractalMAR-64 setting τ = 1.02 is T ≈ 0.980, FractalAR-64 τ = 1.03 is T ≈ 0.971,
FractalMAR-H-256 τ = 1.1 is T ≈ 0.909.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from .config import FractalConfig
from .patchify import patchify

CFG_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class SamplePlan:
    """Everything a level needs to know while sampling, for one level of the hierarchy.

    `num_iter` holds the MAR steps of every level and `level` says which one this plan is for;
    `schedule` is the CFG schedule of this level (the user's at the top, "constant" below: a lower
    level runs at the scale of its parent's step). `cfg_scale` is the guidance scale for the current step: a float,
    or one value per row (M,) when rows follow different schedules (inpainting with a linear
    schedule). `paired` says whether conditions carry conditional and unconditional halves; by
    default that is `cfg_scale != 1`, and `child()` keeps it, so a step whose scale happens to be exactly 1
    still runs both halves.

    Three hooks serve exact-likelihood coding (`fractalgm.codec`); by default all are off. `draw`
    replaces the random draw of every pixel-head channel: `draw(logits, kept)` gets the guided
    logits (rows, 256) and, when values are known, `kept` (rows,) (−1 where unknown), and returns
    the values. `every_token` makes levels generate entirely known tokens too (AR: call the child;
    MAR: start fully masked), so a teacher-forced run computes every token's probabilities with the
    arithmetic of a free run. `order="raster"` gives every MAR sequence the same fixed order instead
    of a random one (a row's order then does not depend on its position in the batch).

    `fast` trades bit-exactness for speed (`fractalgm sample --fast`): pixel values are drawn by
    `sample_categorical_fast`, and `FractalGen.sample` runs under bf16 autocast where the hardware
    has bf16 matrix units (`runtime.native_bf16`). Same distribution, other numbers.
    """

    cfg_scale: float | torch.Tensor = 1.0
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    generator: torch.Generator | None = None
    num_iter: tuple[int, ...] = (64,)
    schedule: str = "constant"
    level: int = 0
    paired: bool | None = None
    draw: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    every_token: bool = False
    order: str = "random"
    fast: bool = False

    @property
    def guided(self) -> bool:
        return self.paired if self.paired is not None else bool(self.cfg_scale != 1.0)

    @property
    def steps(self) -> int:
        """The MAR steps asked for at this level (AR levels always take one step per token)."""
        return self.num_iter[self.level]

    def scale(self, revealed: int, seq_len: int) -> float:
        """This level's guidance scale for a step after which `revealed` of `seq_len` tokens are known."""
        return scheduled_scale(self.cfg_scale, self.schedule, revealed, seq_len)

    def child(self, cfg_scale: float | torch.Tensor) -> SamplePlan:
        """The plan of the next level down, sampling the patches of a step whose scale is `cfg_scale`."""
        return replace(self, cfg_scale=cfg_scale, level=self.level + 1, schedule="constant", paired=self.guided)

    def take(self, rows: torch.Tensor) -> SamplePlan:
        """The plan of a subset of rows (only a per-row scale needs slicing)."""
        return replace(self, cfg_scale=self.cfg_scale[rows]) if isinstance(self.cfg_scale, torch.Tensor) else self


def default_num_iter(config: FractalConfig) -> list[int]:
    """One step per token up to 64 per MAR level (the paper's 64-px setting is 64, 16)."""
    return [min(lv.seq_len, 64) for lv in config.levels]


def resolve_num_iter(config: FractalConfig, num_iter: int | Sequence[int] | None) -> list[int]:
    """MAR steps per level from the user's `num_iter` (None, one int for all levels, or one per level)."""
    if num_iter is None:
        return default_num_iter(config)
    if isinstance(num_iter, int):
        num_iter = [num_iter] * len(config.levels)
    num_iter = list(num_iter)
    if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in num_iter):
        raise TypeError(f"num_iter must be whole numbers, got {num_iter}")
    if len(num_iter) != len(config.levels) or min(num_iter) < 1:
        raise ValueError(f"num_iter needs one positive entry per level ({len(config.levels)})")
    return num_iter


def steps_per_level(config: FractalConfig, num_iter: int | Sequence[int] | None = None) -> list[int]:
    """Steps each level takes per sequence when sampling: L for AR, min(L, num_iter) for MAR."""
    return [lv.seq_len if lv.one_step_per_token else min(lv.seq_len, n)
            for lv, n in zip(config.levels, resolve_num_iter(config, num_iter))]


def make_plan(config: FractalConfig, conditional: bool, *, num_iter: int | Sequence[int] | None = None,
              cfg_scale: float = 1.0, cfg_schedule: str = "constant", temperature: float = 1.0,
              filter_threshold: float = 1e-4, generator: torch.Generator | None = None,
              fast: bool = False) -> SamplePlan:
    """The top-level plan of `FractalGen.sample`, or a clear error for options that cannot work."""
    for name, value in (("cfg_scale", cfg_scale), ("temperature", temperature), ("filter_threshold", filter_threshold)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 <= filter_threshold <= 1.0:
        raise ValueError(f"filter_threshold is a probability in [0, 1], got {filter_threshold}")
    if not conditional and cfg_scale != 1.0:
        raise ValueError("classifier-free guidance needs labels (cfg_scale must be 1 without them)")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    steps = tuple(resolve_num_iter(config, num_iter))
    return SamplePlan(float(cfg_scale), float(temperature), float(filter_threshold), generator, steps, cfg_schedule,
                      fast=bool(fast))


# ---------------------------------------------------------------------------- CFG pairing
# Guided sampling runs every row twice: the conditional half first, then the unconditional one.
def paired(t: torch.Tensor, guided: bool) -> torch.Tensor:
    """`t` for both halves (the halves see the same canvas), or `t` itself without guidance."""
    return torch.cat([t, t]) if guided else t


def paired_rows(rows: torch.Tensor, num_rows: int, guided: bool) -> torch.Tensor:
    """Indices of `rows` (of M = `num_rows`) in both halves of a (2M, …) tensor."""
    return torch.cat([rows, rows + num_rows]) if guided else rows


def unpaired_count(rows: int, guided: bool) -> int:
    """M, the number of images, from the rows of a condition (2M when guided)."""
    return rows // 2 if guided else rows


def scheduled_scale(cfg_scale: float, schedule: str, revealed: int, seq_len: int) -> float:
    """Guidance scale for a step after which `revealed` of `seq_len` tokens are known.

    "linear" grows as 1 + (cfg−1)·revealed/L (the reference: AR reaches cfg at the last token; MAR
    stops at 1 + (cfg−1)(L−1)/L because its last step leaves one token masked in the formula).
    """
    if schedule == "constant":
        return cfg_scale
    if schedule == "linear":
        return 1.0 + (cfg_scale - 1.0) * revealed / seq_len
    raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")


def guided_logits(logits: torch.Tensor, opts: SamplePlan) -> torch.Tensor:
    """Temperature, then (when guided) the filter and CFG combination of cond/uncond halves.

    `logits` has 2M rows when guided (conditional half first), M otherwise; returns M rows.
    Filter (reference rule): where the conditional probability is below τ, the uncond logit is
    raised to at least `c − max(c) + max(u)`, capping the guidance push on tokens the conditional
    model finds very unlikely.
    """
    logits = logits.float()
    if opts.temperature != 1.0:  # x / 1 is x exactly: skip the kernel
        logits = logits / opts.temperature
    if not opts.guided:
        return logits
    c, u = logits.chunk(2)
    low = torch.softmax(c, dim=-1) < opts.filter_threshold
    floor = c - c.max(-1, keepdim=True).values + u.max(-1, keepdim=True).values
    u = torch.where(low, torch.maximum(u, floor), u)
    scale = opts.cfg_scale.to(c).unsqueeze(-1) if isinstance(opts.cfg_scale, torch.Tensor) else opts.cfg_scale
    return u + scale * (c - u)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row from softmax(logits), drawn with `generator` (on its device)."""
    probs = torch.softmax(logits.float(), dim=-1)
    gen_device = generator.device if generator is not None else probs.device
    idx = torch.multinomial(probs.to(gen_device), 1, generator=generator)
    return idx.squeeze(-1).to(probs.device)


def sample_categorical_fast(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row from softmax(logits) by the Gumbel-max trick on float32 uniforms.

    `torch.multinomial` draws its exponential noise in float64 one value at a time (a third of a
    pixel-head step on CPU); −log(−log u) from one vectorised float32 `rand` is several times
    cheaper. u = 0 gives −inf noise: that category is never chosen, a 2⁻²⁴ bias.
    """
    gen_device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=gen_device).to(logits.device)
    return (logits.float() - u.log_().neg_().log_()).argmax(-1)


def draw_categorical(logits: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
    """One index per row of guided `logits`, drawn with the plan's generator by the plan's method."""
    return (sample_categorical_fast if plan.fast else sample_categorical)(logits, plan.generator)


def random_orders(rows: int, length: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(rows, length) independent uniformly random permutations."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(rows, length, generator=generator, device=gen_device).argsort(-1).to(device)


def ranks_of(orders: torch.Tensor) -> torch.Tensor:
    """rank[b, pos] = index of `pos` in `orders[b]`."""
    return orders.argsort(-1)


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


def start_canvas(config: FractalConfig, batch: int, known: Known | None, record: Callable | None,
                 device) -> CanvasView | None:
    """The shared canvas of a recorded run (known values in place), after reporting its first frame."""
    if record is None:
        return None
    S, C = config.image_size, config.channels
    canvas = torch.zeros(batch, C, S, S, dtype=torch.uint8, device=device)
    unknown = torch.ones(batch, C, S, S, dtype=torch.bool, device=device)
    if known is not None:
        canvas, unknown = known.values.to(torch.uint8), ~known.mask
    record(None, canvas, unknown)
    return CanvasView(canvas, unknown, record)
