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

Each mode is its own type (`RandomMasks`, `ExactOrder`, `FixedMasks`, `TrainingMasks`; `make_scoring(mode, …)`
builds one by name); each gives a level a `Selection`. `estimate_nll` turns scoring passes into an
`NLLResult`; `terms` and `score` run one pass of a model.

The reference's *loss* is instead a pooled mean per component (pixel head, each guiding-pixel head),
available here per image as `Scores.reference_loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch

from .sampling import random_orders, ranks_of

SCORING_MODES = ("train", "random", "exact", "fixed")


@dataclass(frozen=True)
class Selection:
    """What one level runs and scores: one row per sequence it runs (a copy of sequence `source`)."""

    mask: torch.Tensor  # (R, L) bool: tokens hidden from the generator (replaced by the mask token)
    score: torch.Tensor  # (R, L) bool: tokens passed down and scored
    source: torch.Tensor  # (R,) the sequence entering the level that each row copies
    weight: torch.Tensor  # (R,) importance weight of each row's scored tokens


def every_token(rows: int, seq_len: int, device) -> Selection:
    """AR levels (and any order teacher-forced in one pass): each token scored once, weight 1."""
    ones = torch.ones(rows, seq_len, dtype=torch.bool, device=device)
    return Selection(ones, ones, torch.arange(rows, device=device), torch.ones(rows, device=device))


def masked_first(orders: torch.Tensor, count: torch.Tensor, seq_len: int) -> Selection:
    """The first `count` (R,) tokens of each random order masked and scored, weight L/count."""
    mask = ranks_of(orders) < count.unsqueeze(1)
    rows = torch.arange(mask.size(0), device=mask.device)
    return Selection(mask, mask, rows, seq_len / count.float())


class TokenScoring:
    """Which tokens MAR levels mask and score; AR levels always score every token once."""

    mode: ClassVar[str]
    exact: ClassVar[bool] = False  # every level then gives an exact term, not an estimate
    generator: torch.Generator | None

    def select(self, level: int, scores_every_token: bool, rows: int, seq_len: int, device) -> Selection:
        """The selection of level `level` for `rows` sequences of `seq_len` tokens; `scores_every_token` for a
        generator that scores each token once in one pass (`Generator.scores_every_token`)."""
        if scores_every_token:
            return every_token(rows, seq_len, device)
        return self.select_masked(level, rows, seq_len, device)

    def select_masked(self, level: int, rows: int, seq_len: int, device) -> Selection:
        raise NotImplementedError


@dataclass
class TrainingMasks(TokenScoring):
    """The training masks: a truncated-normal mask ratio r, ⌈L·r⌉ tokens (spec §3.3; never 0 here)."""

    generator: torch.Generator | None = None
    mode: ClassVar[str] = "train"

    def select_masked(self, level, rows, seq_len, device):
        count = torch.ceil(seq_len * truncated_normal_ratio(rows, self.generator, device)).long().clamp_(1, seq_len)
        return masked_first(random_orders(rows, seq_len, self.generator, device), count, seq_len)


@dataclass
class RandomMasks(TokenScoring):
    """The reference estimator: k ~ U{1..L} tokens masked along a random order, weight L/k.

    `shared_count`: one k per call for all rows, as the reference (default: one k per sequence).
    """

    generator: torch.Generator | None = None
    shared_count: bool = False
    mode: ClassVar[str] = "random"

    def select_masked(self, level, rows, seq_len, device):
        gen_device = self.generator.device if self.generator is not None else device
        n = 1 if self.shared_count else rows
        count = torch.randint(1, seq_len + 1, (n,), generator=self.generator, device=gen_device)
        return masked_first(random_orders(rows, seq_len, self.generator, device), count.to(device).expand(rows),
                            seq_len)


@dataclass
class ExactOrder(TokenScoring):
    """One fixed order per sequence, teacher-forced: L copies, copy t masks ranks ≥ t and scores rank t.

    `order`: "random" (drawn with `generator`) or "raster".
    """

    generator: torch.Generator | None = None
    order: str = "random"
    mode: ClassVar[str] = "exact"
    exact: ClassVar[bool] = True

    def __post_init__(self):
        if self.order not in ("random", "raster"):
            raise ValueError(f'order must be "random" or "raster", got {self.order!r}')

    def select_masked(self, level, rows, seq_len, device):
        L = seq_len
        orders = (torch.arange(L, device=device).expand(rows, L) if self.order == "raster"
                  else random_orders(rows, L, self.generator, device))
        rank = ranks_of(orders).repeat_interleave(L, dim=0)  # (R·L, L)
        step = torch.arange(L, device=device).repeat(rows).unsqueeze(1)
        src = torch.arange(rows, device=device).repeat_interleave(L)
        return Selection(rank >= step, rank == step, src, torch.ones(rows * L, device=device))


@dataclass
class FixedMasks(TokenScoring):
    """Caller-given masks: one bool (rows, L) tensor per level index, rows = sequences entering it."""

    masks: Sequence[torch.Tensor | None]
    generator: torch.Generator | None = None
    mode: ClassVar[str] = "fixed"

    def select_masked(self, level, rows, seq_len, device):
        mask = torch.as_tensor(self.masks[level], device=device).bool()
        if mask.shape != (rows, seq_len):
            raise ValueError(f"level {level}: fixed mask has shape {tuple(mask.shape)}, "
                             f"expected ({rows}, {seq_len}) (one row per sequence entering the level)")
        count = mask.sum(-1)
        if (count == 0).any():
            raise ValueError(f"level {level}: every fixed mask must score at least one token")
        return Selection(mask, mask, torch.arange(rows, device=device), seq_len / count.float())


def make_scoring(mode: str = "random", generator: torch.Generator | None = None,
                 masks: Sequence[torch.Tensor | None] | None = None, order: str = "random",
                 shared_count: bool = False) -> TokenScoring:
    """The scoring of one pass by name: "train", "random", "exact" or "fixed" (see the module docstring)."""
    if mode not in SCORING_MODES:
        raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {mode!r}")
    if mode == "fixed" and masks is None:
        raise ValueError('scoring mode "fixed" needs masks (one bool tensor per level)')
    if order not in ("random", "raster"):
        raise ValueError(f'order must be "random" or "raster", got {order!r}')
    if mode == "train":
        return TrainingMasks(generator)
    if mode == "random":
        return RandomMasks(generator, shared_count)
    if mode == "exact":
        return ExactOrder(generator, order)
    return FixedMasks(masks, generator)


def truncated_normal_ratio(n: int, generator, device, mean=1.0, std=0.25, low=0.0, high=1.0):
    """Mask ratios ~ N(mean, std²) truncated to [low, high] (scipy `truncnorm(−4, 0)` for the defaults)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = normal.cdf(torch.tensor((low - mean) / std)), normal.cdf(torch.tensor((high - mean) / std))
    gen_device = generator.device if generator is not None else device
    u = a + (b - a) * torch.rand(n, generator=generator, device=gen_device)
    return (mean + std * torch.special.ndtri(u)).clamp(low, high).to(device)


@dataclass(frozen=True)
class Rows:
    """For each sequence entering a level: the image it belongs to and its importance weight."""

    owner: torch.Tensor  # (R,) image index
    weight: torch.Tensor  # (R,)

    @classmethod
    def of_images(cls, batch: int, device) -> Rows:
        return cls(torch.arange(batch, device=device), torch.ones(batch, device=device))

    def descend(self, pick: Selection) -> Rows:
        """The rows of the next level: one per scored token, in pooled (row, position) order."""
        owner = self.owner[pick.source].unsqueeze(1).expand_as(pick.score)[pick.score]
        weight = (self.weight[pick.source] * pick.weight).unsqueeze(1).expand_as(pick.score)[pick.score]
        return Rows(owner, weight)


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


# ---------------------------------------------------------------------------- running a model
def terms(model, images: torch.Tensor, labels=None, scoring: TokenScoring | None = None) -> list[Term]:
    """Every term one pass of `model` (a FractalGen) scores; training masks by default."""
    return model._terms(images, labels, scoring or TrainingMasks())


@torch.no_grad()
def score(model, images: torch.Tensor, labels=None, scoring: TokenScoring | None = None) -> Scores:
    """Per-image NLL estimate and reference-style component losses of one scoring pass (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        return score_images(model._terms(images, labels, scoring or RandomMasks()), images.size(0))
    finally:
        model.train(was_training)


def estimate_nll(score_pass: Callable[[TokenScoring], Scores], num_dims: int, all_ar: bool, *, passes: int = 1,
                 exact: bool = False, order: str = "random", generator: torch.Generator | None = None,
                 scoring: TokenScoring | None = None) -> NLLResult:
    """The NLL of `FractalGen.nll` from scoring passes (`score_pass(scoring) -> Scores`).

    An all-AR model, or `exact=True`, needs one exact pass; otherwise `passes` random-masking
    estimates give the mean and its standard error. `scoring` runs exactly that one pass.
    """
    if scoring is not None:
        return NLLResult(score_pass(scoring).nats, None, all_ar or scoring.exact, 1, num_dims)
    if exact or all_ar:
        return NLLResult(score_pass(ExactOrder(generator, order)).nats, None, True, 1, num_dims)
    if passes < 1:
        raise ValueError("passes must be >= 1")
    runs = torch.stack([score_pass(RandomMasks(generator)).nats for _ in range(passes)])
    stderr = runs.std(0) / passes**0.5 if passes > 1 else None
    return NLLResult(runs.mean(0), stderr, False, passes, num_dims)
