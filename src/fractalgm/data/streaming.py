"""Datasets that decode encoded images on demand (in DataLoader workers), so memory is independent of size.

`StreamingDataset` keeps only a compact index (numpy arrays, no Python object per image, so forked
workers do not copy it page by page through reference counts) and decodes one record at a time with
the reference's centre crop and an optional horizontal flip. Subclasses say where a record's bytes are:
`folder.ImageFolder` (one file per image), `shards.TarShards` (WebDataset-layout tar archives).

Bad records never raise inside a worker: `load` returns what happened as `events`, and the main process
turns them into one clear error (or, with `skip_bad`, a deterministic substitute and a counted,
named skip), see `pipeline.BatchFeed`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset import ImageDataset
from .images import SKIP_HINT, BadImage, decode_image

MAX_SUBSTITUTES = 64  # with skip_bad, how far to look for a readable replacement record


@dataclass
class Loaded:
    """One decoded record: image (C, H, W) uint8 or None when unreadable, and what happened on the way."""

    image: np.ndarray | None
    label: int
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, where, detail)


class StreamingDataset(Dataset):
    """Map-style dataset over `ids` (a view into the subclass's records); items are (uint8 image, label)."""

    streaming = True

    def __init__(self, name: str, labels: np.ndarray, num_classes: int, class_names: list[str] | None,
                 channels: int, image_size: int, skip_bad: bool, natural: bool = True):
        self.name, self.num_classes, self.class_names = name, num_classes, class_names
        self._channels, self._image_size, self.skip_bad, self.natural = channels, image_size, skip_bad, natural
        self.record_labels = np.asarray(labels, np.int64)
        self.ids = np.arange(len(labels), dtype=np.int64)
        self.num_skipped = 0  # records left out when the index was built (zero-byte files, truncated shards)

    # --- what subclasses provide
    def read(self, record: int) -> bytes:
        raise NotImplementedError

    def where(self, record: int) -> str:
        raise NotImplementedError

    # --- the interface
    @property
    def channels(self) -> int:
        return self._channels

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.record_labels[self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> StreamingDataset:
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.ids = self.ids[np.asarray(indices, dtype=np.int64)]
        return view

    def _decode(self, record: int, flip: bool) -> tuple[np.ndarray, str | None]:
        where = self.where(record)
        try:
            data = self.read(record)
        except OSError as e:
            raise BadImage(where, e.strerror or str(e)) from e
        arr, note = decode_image(data, self._channels, self._image_size, where)
        return (np.ascontiguousarray(arr[:, :, ::-1]) if flip else arr), note

    def load(self, index: int, flip: bool = False) -> Loaded:
        """Decode item `index`; never raises for bad data (safe in a worker). With skip_bad, an unreadable
        record is replaced by the next readable one, so batches keep their size and stay reproducible."""
        events = []
        for k in range(MAX_SUBSTITUTES if self.skip_bad else 1):
            record = int(self.ids[(index + k) % len(self.ids)])
            try:
                arr, note = self._decode(record, flip)
            except BadImage as e:
                events.append(("skipped" if self.skip_bad else "error", e.where, e.reason))
                continue
            if note:
                events.append(("converted", self.where(record), note))
            return Loaded(arr, int(self.record_labels[record]), events)
        if self.skip_bad:  # a whole run of unreadable records: almost surely not a few bad files
            events.append(("error", events[0][1], f"{events[0][2]}, and the next {MAX_SUBSTITUTES - 1} records "
                                                  f"are unreadable too"))
        return Loaded(None, int(self.record_labels[self.ids[index]]), events)

    def __getitem__(self, index):
        """(image, label) tensors; `index` may be an int or an (int, flip) pair from `pipeline.BatchPlan`."""
        index, flip = index if isinstance(index, tuple) else (index, False)
        item = self.load(int(index), bool(flip))
        if item.image is None:
            _, where, reason = item.events[-1]
            raise BadImage(where, reason)
        return torch.from_numpy(item.image), torch.tensor(item.label)

    def materialize(self) -> ImageDataset:
        """Decode everything into one in-memory `ImageDataset` (for small sets); unreadable files are an
        error, or with skip_bad left out, counted and named."""
        images, labels, bad = [], [], []
        for index in range(len(self)):
            record = int(self.ids[index])
            try:
                arr, _ = self._decode(record, False)
            except BadImage as e:
                if not self.skip_bad:
                    raise BadImage(e.where, f"{e.reason}; {SKIP_HINT}") from e
                bad.append(e.where)
                continue
            images.append(arr)
            labels.append(int(self.record_labels[record]))
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image(s) in '{self.name}': {', '.join(bad[:10])}"
                          + (" …" if len(bad) > 10 else ""))
        if not images:
            raise ValueError(f"none of the {len(self)} images in '{self.name}' could be read")
        shape = (0, self._channels, self._image_size, self._image_size)
        return ImageDataset(torch.from_numpy(np.stack(images)) if images else torch.empty(shape, dtype=torch.uint8),
                            torch.tensor(labels, dtype=torch.int64), self.num_classes, self.name,
                            self.class_names, self.num_skipped + len(bad), natural=self.natural)


def carve(n: int, split: str, val_size: int | None, seed: int, name: str, default_val: int | None = None) -> np.ndarray:
    """Indices of "train" or "val" carved from n training records by a permutation seeded only by `seed`."""
    val_size = val_size if val_size is not None else (default_val or min(5000, max(1, n // 10)))
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for dataset '{name}', got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:val_size] if split == "val" else perm[val_size:])
