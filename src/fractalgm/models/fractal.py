"""The fractal recursion (paper "Fractal Generative Models", Li, Sun, Fan, He 2025).

A `FractalLevel` owns one generator (AR or MAR) over the patches of its input and a child: the next
`FractalLevel`, or the pixel head's leaf adapter `PixelLevel` at the bottom. Training/likelihood
passes the scored patches and their conditions down; sampling runs the generator's loop and asks the
child, depth first, for every patch it decides to generate. The root `FractalGen` is level 0 plus the
class condition. Attribute names (`generator`, `next_fractal`, …) follow the reference so its
checkpoints load as is; that is also why the root holds level 0's modules itself and runs the same
two steps (`score_level`, `generate_level`) on them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..likelihood import Rows, Term, TokenScoring
from ..patchify import patchify, unpatchify
from ..sampling import CanvasView, Known, SamplePlan
from .ar import ARGenerator
from .contract import Conditions, Generator, HeadSpec, Level, LevelSpec
from .mar import MARGenerator
from .pixel_head import PixelLevel

GENERATORS = {"ar": ARGenerator, "mar": MARGenerator}


def build_generator(spec: LevelSpec) -> Generator:
    return GENERATORS[spec.kind](spec)


def build_child(specs: Sequence[LevelSpec], head: HeadSpec) -> Level:
    """The level below: the next `FractalLevel` for the remaining specs, else the pixel head's leaf."""
    if specs:
        return FractalLevel(specs, head)
    return PixelLevel(head.head, head.cond_dim, head.channel_names, head.channel_order, head.first_weight)


def score_level(spec: LevelSpec, generator: Generator, child: Level, x: torch.Tensor, conds: Conditions,
                rows: Rows, scoring: TokenScoring) -> list[Term]:
    """Score images x (M, C, S, S) (integers) under `conds` (M rows); returns every scored term."""
    terms, conds = generator.score_guiding_pixel(x, conds, rows)
    patches = patchify(x, spec.level.patch_size)  # (M, L, C, p, p)
    pick = scoring.select(spec.index, generator.scores_every_token, x.size(0), spec.level.seq_len, x.device)
    patches = patches[pick.source]
    maps = generator.predict(patches, pick.mask, conds.take(pick.source), spec.child_conds)
    # (N, C, p, p) in pooled order: row-major over (row, position)
    sub_conds = maps.take(pick.score)
    return terms + child(patches[pick.score], sub_conds, rows.descend(pick), scoring)


def generate_level(spec: LevelSpec, generator: Generator, child: Level, conds: Conditions, plan: SamplePlan,
                   known: Known | None = None, view: CanvasView | None = None) -> torch.Tensor:
    """Sample (M, C, S, S) integer images; conds have 2M rows when guided (cond half first).

    `known` (M, C, S, S) values are kept exactly and condition the rest; `view` records every
    step into the full canvas.
    """
    p, grid = spec.level.patch_size, spec.level.grid
    known = None if known is None else known.patches(p)

    def sample_child(sub_conds: Conditions, sub_plan: SamplePlan, index) -> torch.Tensor:
        sub = None if known is None else known.take(index)
        patches = child.generate(sub_conds, sub_plan, sub, None if view is None else view.child(index, grid, p))
        if view is not None:
            view.write(spec.index, index, patches, grid)
        return patches

    return unpatchify(generator.sample(conds, plan, sample_child, known))


class FractalLevel(nn.Module):
    """A level below the root: a generator over its patches, and the child that fills them."""

    def __init__(self, specs: Sequence[LevelSpec], head: HeadSpec):
        super().__init__()
        self.spec = specs[0]
        self.generator = build_generator(self.spec)
        self.next_fractal = build_child(specs[1:], head)

    def forward(self, x: torch.Tensor, conds: Conditions, rows: Rows, scoring: TokenScoring) -> list[Term]:
        return score_level(self.spec, self.generator, self.next_fractal, x, conds, rows, scoring)

    @torch.no_grad()
    def generate(self, conds: Conditions, plan: SamplePlan, known: Known | None = None,
                 view: CanvasView | None = None) -> torch.Tensor:
        return generate_level(self.spec, self.generator, self.next_fractal, conds, plan, known, view)
