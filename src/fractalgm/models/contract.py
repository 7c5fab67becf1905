"""The contract between a level, its generator and its child, and the resolved spec each level is built from.

A level receives integer images (M, C, S, S) and `Conditions` (M rows). Its generator predicts, for
every patch, the conditions of the child that generates that patch; the child is the next level or
the pixel head's leaf adapter, and both are called the same way:

    terms = child(patches, conditions, rows, scoring)          # training / likelihood: scored terms
    patches = child.generate(conditions, plan, known, view)    # sampling: integer patches

`resolve_specs` computes every level's `LevelSpec` once, from the whole config, so no module below
the root reads the config or its own index into it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol

import torch

from ..config import CHANNEL_NAMES, IMAGENET_MEAN, IMAGENET_STD, FractalConfig, LevelConfig, PixelHeadConfig
from ..likelihood import Rows, Term, TokenScoring
from ..patchify import PixelNorm
from ..sampling import CanvasView, Known, SamplePlan


@dataclass(frozen=True)
class Conditions:
    """What each sequence of a level is conditioned on, (R, D) each.

    `middle` is the output of the parent at this patch (the class embedding at the top),
    `neighbours` those at the four grid neighbours (top, right, bottom, left; MAR parents only, as
    many as the level reads), `guiding_pixel` the patch's normalised mean colour (R, C) once a MAR level
    with a guiding pixel has scored or sampled it. It never passes further down.
    """

    middle: torch.Tensor
    neighbours: tuple[torch.Tensor, ...] = ()
    guiding_pixel: torch.Tensor | None = None

    @classmethod
    def repeated(cls, cond: torch.Tensor, count: int) -> Conditions:
        """The top level's conditions: the class embedding in every slot (as the reference)."""
        return cls(cond, (cond,) * (count - 1))

    @property
    def tokens(self) -> tuple[torch.Tensor, ...]:
        """Middle first, then the neighbours: c_0 … c_{K−1}."""
        return (self.middle, *self.neighbours)

    @property
    def rows(self) -> int:
        return self.middle.size(0)

    def first(self, count: int) -> Conditions:
        """The `count` conditions a child reads (middle first), without the guiding pixel."""
        return Conditions(self.middle, self.neighbours[:count - 1])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditions:
        return Conditions(fn(self.middle), tuple(fn(t) for t in self.neighbours),
                          None if self.guiding_pixel is None else fn(self.guiding_pixel))

    def take(self, index) -> Conditions:
        """The conditions of rows `index` (or of the positions a bool mask selects)."""
        return self.map(lambda t: t[index])

    def with_guiding_pixel(self, guide: torch.Tensor) -> Conditions:
        return replace(self, guiding_pixel=guide)


@dataclass(frozen=True)
class HeadSpec:
    """A pixel head: its size, the width of its condition, channel names and generation order."""

    head: PixelHeadConfig
    cond_dim: int
    channel_names: str = "rgb"
    channel_order: str = "rgb"
    first_weight: float = 1.0  # training weight of the first generated channel (the reference's r_weight)


@dataclass(frozen=True)
class LevelSpec:
    """Everything one generator level is built from, resolved once by the root.

    Args:
        level: the level's own config (sizes, width, depth, heads, kind, dropouts).
        cond_dim: width of the conditions entering the level.
        index: its depth in the hierarchy (0 = top), for names and per-level scoring masks.
        channels: C of the images.
        num_conds: how many conditions it reads (1, or up to 5 under a MAR parent).
        child_conds: how many conditions its child reads (1 for the pixel head).
        guiding_pixel_head: the guiding-pixel head (MAR levels below the top when enabled), or None.
        pixels: the model's pixel normalisation (default: `FractalConfig`'s for C channels).
        checkpointing: recompute activations in backward (gradient checkpointing).
    """

    level: LevelConfig
    cond_dim: int
    index: int = 0
    channels: int = 3
    num_conds: int = 1
    child_conds: int = 1
    guiding_pixel_head: HeadSpec | None = None
    pixels: PixelNorm | None = None
    checkpointing: bool = False

    def __post_init__(self):
        if self.pixels is None:
            grey = self.channels == 1
            object.__setattr__(self, "pixels", PixelNorm((sum(IMAGENET_MEAN) / 3,) if grey else IMAGENET_MEAN,
                                                         (sum(IMAGENET_STD) / 3,) if grey else IMAGENET_STD))

    @property
    def kind(self) -> str:
        return self.level.kind

    @property
    def token_dim(self) -> int:
        """Values per patch token, C·p²."""
        return self.channels * self.level.patch_size**2


def resolve_specs(config: FractalConfig) -> tuple[tuple[LevelSpec, ...], HeadSpec]:
    """Every level's spec, outermost first, and the pixel head's."""
    names, order, C = CHANNEL_NAMES[config.channels], config.channel_order, config.channels
    pixels = PixelNorm(config.pixel_mean, config.pixel_std)
    n = len(config.levels)
    specs = []
    for i, lv in enumerate(config.levels):
        guide = (HeadSpec(config.guide_head, config.cond_dim(i), names, order, config.guide_r_weight)
                 if config.has_guiding_pixel(i) else None)
        specs.append(LevelSpec(lv, config.cond_dim(i), index=i, channels=C, num_conds=config.cond_tokens(i),
                               child_conds=config.cond_tokens(i + 1) if i + 1 < n else 1, guiding_pixel_head=guide,
                               pixels=pixels, checkpointing=config.grad_checkpointing))
    return tuple(specs), HeadSpec(config.head, config.levels[-1].width, names, order, config.r_weight)


class Generator(Protocol):
    """A level's network: it predicts the children's conditions and runs the level's sampling loop.

    Inputs are integer patches (R, L, C, p, p): each generator normalises what it embeds.
    """

    spec: LevelSpec
    guiding_pixel_head: torch.nn.Module | None  # the guiding-pixel head this generator owns, if any
    scores_every_token: bool  # one teacher-forced pass scores every token (AR); else a selection (MAR)

    def score_guiding_pixel(self, images: torch.Tensor, conds: Conditions, rows: Rows) -> tuple[list[Term], Conditions]:
        """Score what the generator predicts for a whole sequence before its tokens (MAR: the guiding
        pixel of images (M, C, S, S)) and add it to the conditions; nothing for AR."""

    def predict(self, patches: torch.Tensor, mask: torch.Tensor | None, conds: Conditions,
                count: int = ...) -> Conditions:
        """Children's conditions (R, L, D) for patches (R, L, C, p, p): the middle one and up to
        `count` − 1 neighbours; `mask` (R, L) hides tokens (MAR)."""

    def sample(self, conds: Conditions, plan: SamplePlan, child: Callable, known: Known | None = None) -> torch.Tensor:
        """(M, L, C, p, p) integer patches; `child(conds, plan, index)` samples those at (rows, positions)."""


class Level(Protocol):
    """A node of the recursion: a `FractalLevel`, or the pixel head's leaf adapter `PixelLevel`."""

    def __call__(self, x: torch.Tensor, conds: Conditions, rows: Rows, scoring: TokenScoring) -> list[Term]:
        """Every term scored for integer images x (M, C, S, S) under `conds` (M rows)."""

    def generate(self, conds: Conditions, plan: SamplePlan, known: Known | None = None,
                 view: CanvasView | None = None) -> torch.Tensor:
        """(M, C, S, S) integer images; `conds` has 2M rows when `plan.guided` (conditional half first)."""
