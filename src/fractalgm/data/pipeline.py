"""The training data feed: which images each rank sees at each step, and getting them onto the device.

`BatchPlan` is a pure function of (seed, epoch position): the order of an epoch is a permutation seeded
by (seed, epoch), cut into global batches of `batch_size · world · grad_accum` images (the remainder of
an epoch is dropped, as DistributedSampler(drop_last) does); micro-batch m of a step is the m-th slice
of its global batch and rank r takes the r-th `batch_size` images of that. Ranks are disjoint, every
image is seen once per epoch, the images of an optimizer step do not depend on how they are split over
ranks and micro-batches, and resuming at step s replays exactly the batches an uninterrupted run
would have seen. Flips are drawn the same way, per (seed, epoch, position), so they resume exactly too.

`BatchFeed` delivers those batches (and lists skipped or converted files, in warnings and optionally
in a file of the run folder): in-memory datasets are indexed directly; streaming ones go
through a DataLoader with workers, prefetching and (on CUDA) pinned memory, started at the requested
position and restarted only when the trainer jumps (resume, a changed plan).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import DataLoader

from .dataset import ImageDataset
from .images import SKIP_HINT

_FLIP_STREAM = 7_919  # decorrelates the flip draws from the permutation of the same epoch


class BadDataError(ValueError):
    """Unreadable training data met during training, raised in the main process with the file's name."""


@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch `epoch` (cached: one epoch is asked for thousands of times)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


@lru_cache(maxsize=4)
def epoch_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) * _FLIP_STREAM + 1)
    return torch.randint(0, 2, (n,), generator=g, dtype=torch.bool)


@dataclass(frozen=True)
class BatchPlan:
    num_images: int
    batch_size: int  # per rank and micro-batch
    world: int = 1
    rank: int = 0
    grad_accum: int = 1
    seed: int = 0
    flip: bool = False

    def __post_init__(self):
        for name, value, flag in (("batch_size", self.batch_size, "--batch-size"), ("world", self.world, "processes"),
                                  ("grad_accum", self.grad_accum, "--grad-accum")):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world - 1}")
        if self.num_images < self.global_batch:
            raise ValueError(f"the dataset has {self.num_images} images, fewer than one global batch of "
                             f"{self.global_batch} (--batch-size {self.batch_size} × {self.world} process(es) × "
                             f"--grad-accum {self.grad_accum}); lower --batch-size or --grad-accum")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_images // self.global_batch

    def positions(self, step: int, micro: int) -> tuple[int, int]:
        """(epoch, first position in that epoch's order) of this rank's share of (step, micro)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return epoch, k * self.global_batch + (micro * self.world + self.rank) * self.batch_size

    def indices(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset indices and flip flags of this rank's micro-batch `micro` of optimizer step `step`."""
        epoch, start = self.positions(step, micro)
        order = epoch_order(self.num_images, self.seed, epoch)[start:start + self.batch_size]
        flips = epoch_flips(self.num_images, self.seed, epoch)[start:start + self.batch_size]
        return order, flips & self.flip

    def state(self) -> dict:
        """What a resume checks: the same images in the same order need the same of these."""
        return {"num_images": self.num_images, "global_batch": self.global_batch, "seed": self.seed,
                "world": self.world, "flip": self.flip}


class _PlannedBatches:
    """Batch sampler for the DataLoader: lists of (index, flip) from micro-batch `start` on, endlessly."""

    def __init__(self, plan: BatchPlan, start: int):
        self.plan, self.start = plan, start

    def __iter__(self):
        k = self.start
        while True:
            idx, flips = self.plan.indices(*divmod(k, self.plan.grad_accum))
            yield list(zip(idx.tolist(), flips.tolist()))
            k += 1


class _Items:
    """Wraps a streaming dataset so workers return `Loaded` records (events included) instead of raising."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, pair):
        return self.dataset.load(*pair)


def _collate(items):
    shape = next((i.image.shape for i in items if i.image is not None), None)
    images = torch.stack([torch.from_numpy(i.image) if i.image is not None else torch.zeros(shape, dtype=torch.uint8)
                          for i in items]) if shape else None
    labels = torch.tensor([i.label for i in items], dtype=torch.int64)
    return images, labels, [e for i in items for e in i.events]


class BatchFeed:
    """Delivers `plan`'s micro-batches of `dataset` on `device`; reports skipped and converted files."""

    def __init__(self, dataset, device: torch.device, num_workers: int = 4, prefetch: int = 4,
                 pin_memory: bool | None = None, log_path: str | os.PathLike | None = None):
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"--workers must be at least 0 and --prefetch at least 1, got {num_workers} and {prefetch}")
        self.dataset, self.device = dataset, torch.device(device)
        self.num_workers, self.prefetch = num_workers, prefetch
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.skipped: dict[str, str] = {}  # file → reason
        self.converted: dict[str, str] = {}
        self.log_path = log_path  # where skips and conversions are also listed (the run folder), or None
        self._iter, self._next, self._plan = None, None, None

    def get(self, plan: BatchPlan, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.dataset, ImageDataset):
            idx, flips = plan.indices(step, micro)
            images = self.dataset.images[idx]
            if flips.any():
                images = torch.where(flips[:, None, None, None], images.flip(-1), images)
            labels = self.dataset.labels[idx]
        else:
            k = step * plan.grad_accum + micro
            if self._iter is None or plan != self._plan or k != self._next:
                self._start(plan, k)
            images, labels, events = next(self._iter)
            self._next = k + 1
            self._report(events)
        return (images.to(self.device, non_blocking=self.pin_memory),
                labels.to(self.device, non_blocking=self.pin_memory))

    def _start(self, plan: BatchPlan, k: int):
        self.close()
        loader = DataLoader(_Items(self.dataset), batch_sampler=_PlannedBatches(plan, k), collate_fn=_collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch if self.num_workers else None,
                            persistent_workers=False,
                            # its own generator: starting a loader must not draw from the global RNG,
                            # which the masks use (else a resumed run's masks would shift by one draw)
                            generator=torch.Generator().manual_seed(plan.seed))
        self._iter, self._plan = iter(loader), plan

    def _report(self, events):
        fresh_skips, fresh_conversions = [], []
        for kind, where, detail in events:
            if kind == "error":
                self.close()
                raise BadDataError(f"cannot read image {where}: {detail}; {SKIP_HINT}")
            book, fresh = (self.skipped, fresh_skips) if kind == "skipped" else (self.converted, fresh_conversions)
            if where not in book:
                book[where] = detail
                fresh.append(f"{where} ({detail})")
                if self.log_path is not None:
                    with open(self.log_path, "a") as f:
                        f.write(f"{kind}\t{where}\t{detail}\n")
        if fresh_skips:
            warnings.warn(f"skipped {len(fresh_skips)} unreadable file(s), {len(self.skipped)} so far: "
                          f"{'; '.join(fresh_skips)}", stacklevel=3)
        if fresh_conversions:
            warnings.warn(f"converted {len(fresh_conversions)} file(s) to {self.dataset.channels} channel(s), "
                          f"{len(self.converted)} so far: {'; '.join(fresh_conversions)}", stacklevel=3)

    def close(self):
        self._iter, self._next = None, None  # dropping the iterator shuts its workers down
