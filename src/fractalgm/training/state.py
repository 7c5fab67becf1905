"""`RunState`: where a run stands — what a save writes, a resume restores and the schedule reads.

The `Saver` and the `Evaluator` reach the run only through this object (everything else they need
is handed to them explicitly), so what a checkpoint holds is visible in one place. `step` and
`elapsed` (with `reserve`, the seconds kept free for the end-of-run evaluation) are the two clocks;
the learning rate is a function of them, which is one half of what makes resume exact. The other
half is `rng_kept`: evaluating and saving never move the random streams that training draws from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import FractalGen
from .optim import EMA


@dataclass
class RunState:
    model: FractalGen
    ema: EMA
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    step: int = 0
    total_steps: int | None = None  # step and epoch budgets; None: the schedule follows the clock
    elapsed: float = 0.0  # seconds of the run so far, evaluation and saves included (time budgets)
    reserve: float = 0.0  # measured seconds of end-of-run work, kept free at the end of a time budget
    # not saved: the budget comes from the current config (a larger one extends a resumed run)
    budget_s: float = math.inf
    last_step_s: float = 0.0  # the last step's time, agreed over the ranks (0 before this process's first)
    last_batch: tuple | None = None  # the last micro-batch, for the probe loss of the health check

    def time_progress(self, seconds: float) -> float:
        """The share of a time budget `seconds` use; the end keeps `reserve` (at most half the budget)."""
        return seconds / max(self.budget_s - min(self.reserve, self.budget_s / 2), 1e-9)

    @property
    def progress(self) -> float:
        """The share of the budget spent: the run ends at 1."""
        if self.total_steps is not None:
            return self.step / self.total_steps
        return self.time_progress(self.elapsed)

    def step_progress(self) -> float:
        """Where the coming step sits in the schedule: its middle (see `lr_at`)."""
        if self.total_steps is not None:
            return (self.step + 0.5) / self.total_steps
        guess = self.last_step_s / 2 if self.last_step_s else 5e-4 * self.budget_s
        return self.time_progress(self.elapsed + guess)

    def at_end(self) -> bool:
        """After the budget's last step: it is reached, or one more step like the last would overrun it."""
        if self.total_steps is not None:
            return self.step >= self.total_steps
        return self.time_progress(self.elapsed + self.last_step_s) >= 1.0


def rng_kept(device: torch.device):
    """Run a block without moving any RNG the training step draws from."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
