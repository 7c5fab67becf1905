"""This process's place under torchrun (world 1 without it), and the one collective that keeps ranks in step.

Every decision that ends or shapes the run (a stop signal, a diverged save, the clock of a time budget)
goes through `Ranks.agree`, so all ranks take it together: a rank that decided alone would leave the
others waiting in a collective it never joins.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import init_distributed, resolve_device


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    device: torch.device  # this rank's device; collectives run on it

    @classmethod
    def start(cls, device: str) -> Ranks:
        """Join torchrun's process group (when launched by it) and pick this rank's device."""
        rank, world, local_rank = init_distributed()
        dev = resolve_device(device)
        if world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        return cls(rank, world, local_rank, dev)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that logs, evaluates and writes files."""
        return self.rank == 0

    def agree(self, *values: float):
        """The largest of each value over the ranks (a flag: true on all when true on any; a clock: the
        slowest rank's), one value or a tuple as given; the values themselves without torchrun."""
        if self.world > 1:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            values = tuple(t.tolist())
        return values[0] if len(values) == 1 else tuple(values)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """`t` averaged over the ranks, in place (the loss every rank logs and judges)."""
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t

    def gather(self, obj) -> list:
        """`obj` of every rank, on every rank."""
        if self.world == 1:
            return [obj]
        objs = [None] * self.world
        dist.all_gather_object(objs, obj)
        return objs

    def leave(self):
        """Wait for rank 0's end-of-run work, then leave the group together (a rank that exits while the
        group lives can abort in gloo's teardown and fail the launch)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
