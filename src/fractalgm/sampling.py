"""Sampling knobs: classifier-free guidance schedules, temperature and the reference's filter rule.

Temperature has the standard meaning here: logits are *divided* by it (T < 1 sharpens). The reference
multiplies logits by its `temperature`, so reference value τ corresponds to ours T = 1/τ; e.g. the
README's FractalMAR-64 setting τ = 1.02 is T ≈ 0.980, FractalAR-64 τ = 1.03 is T ≈ 0.971,
FractalMAR-H-256 τ = 1.1 is T ≈ 0.909.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

CFG_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class SamplingOptions:
    """What every level needs to know while sampling (cfg is the scale for the current step)."""

    cfg: float = 1.0
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    generator: torch.Generator | None = None

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


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
    return u + opts.cfg * (c - u)


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
