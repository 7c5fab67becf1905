"""How a forward pass scores an image, and how scored terms become losses and likelihoods.

Each level hands its children only the tokens it *scores*; every scored row carries the index of the
image it belongs to and an importance weight. Summing `weight · cross-entropy` over all rows of an
image gives its NLL in nats:

* AR levels score every token once (weight 1): exact.
* MAR levels, `mode="random"` (the reference estimator): a random order, the first k ~ U{1..L}
  tokens masked and scored, weight L/k. Each context size 0..L−1 is equally likely, so the
  weighted sum is an unbiased estimate of the random-order AR model's NLL (averaged over orders).
* MAR levels, `mode="exact"`: one fixed order, teacher-forced: the sequence is replicated L times,
  copy t masks the tokens at ranks ≥ t and scores only rank t (weight 1). This is the exact NLL of
  the MAR model generating one token per step in that order.
* `mode="fixed"`: caller-given masks per level (reproducible evaluation, the golden fixtures).
* `mode="train"`: the training masks (truncated-normal mask ratio, spec §3.3).

The reference's *loss* is instead a pooled mean per component (pixel head, each guiding-pixel head),
available here per image as `Scores.reference_loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

SCORING_MODES = ("train", "random", "exact", "fixed")


@dataclass
class Scoring:
    """Which tokens MAR levels mask and score (AR levels always score all)."""

    mode: str = "random"
    generator: torch.Generator | None = None
    masks: Sequence[torch.Tensor | None] | None = None  # "fixed": bool (rows, L) per level index
    order: str = "random"  # "exact": "random" (drawn with `generator`) or "raster"
    shared_count: bool = False  # "random": one k per call for all rows, as the reference

    def __post_init__(self):
        if self.mode not in SCORING_MODES:
            raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {self.mode!r}")
        if self.mode == "fixed" and self.masks is None:
            raise ValueError('scoring mode "fixed" needs masks (one bool tensor per level)')
        if self.order not in ("random", "raster"):
            raise ValueError(f'order must be "random" or "raster", got {self.order!r}')


@dataclass
class Term:
    """Cross-entropies scored by one head: ce (R, C) in generation order, owner/weight (R,)."""

    name: str
    ce: torch.Tensor
    owner: torch.Tensor
    weight: torch.Tensor
    channel_weights: torch.Tensor  # (C,) training weights, summing to 1


@dataclass
class Scores:
    """Per-image results of one scoring pass."""

    nats: torch.Tensor  # (B,) weighted NLL estimate (exact for AR / exact mode)
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) mean CE per sub-value

    @property
    def reference_loss(self) -> torch.Tensor:
        """(B,) the reference's eval loss per image: the sum of every component's mean."""
        return sum(self.components.values())


def training_loss(terms: list[Term]) -> torch.Tensor:
    """The reference objective: per head, the mean over pooled rows of the channel-weighted CE."""
    return sum((t.ce * t.channel_weights).sum(-1).mean() for t in terms)


def pooled_loss(terms: list[Term]) -> torch.Tensor:
    """The reference's eval-mode loss for the batch: per head, the pooled mean of the equal-weight CE."""
    return sum(t.ce.mean() for t in terms)


def score_images(terms: list[Term], batch: int) -> Scores:
    nats = torch.zeros(batch, dtype=torch.float64, device=terms[0].ce.device)
    components = {}
    for t in terms:
        ce = t.ce.double()
        nats.index_add_(0, t.owner, t.weight.double() * ce.sum(-1))
        total = torch.zeros_like(nats).index_add_(0, t.owner, ce.mean(-1))
        count = torch.zeros_like(nats).index_add_(0, t.owner, torch.ones_like(ce[:, 0]))
        components[t.name] = total / count.clamp_min(1)
    return Scores(nats, components)


@dataclass
class NLLResult:
    """Per-image negative log-likelihood in nats, and whether it is exact or an estimate."""

    nats: torch.Tensor  # (B,) mean over passes
    stderr: torch.Tensor | None  # (B,) standard error over passes (estimates with passes > 1)
    exact: bool
    passes: int
    num_dims: int  # C·H·W

    @property
    def bpd(self) -> torch.Tensor:
        return self.nats / (self.num_dims * math.log(2))

    @property
    def bpd_stderr(self) -> torch.Tensor | None:
        return None if self.stderr is None else self.stderr / (self.num_dims * math.log(2))
