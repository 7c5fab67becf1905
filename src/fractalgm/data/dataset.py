"""The one dataset interface every source implements, and the in-memory implementation.

A dataset is a map-style `torch.utils.data.Dataset` of `(image, label)` pairs, images uint8 (C, H, W)
with C in {1, 3}, labels int64, plus the metadata the trainer and the CLI need: `name`,
`num_classes`, `class_names`, `channels`, `image_size` and `natural` (natural photographs get the
reference's random horizontal flip by default; digits and clothes do not).

Two implementations: `ImageDataset` holds every image in one uint8 tensor (the small built-in sets),
and the streaming ones (`streaming.StreamingDataset`: image folders, tar shards) decode files on
demand, in DataLoader workers, so memory does not grow with the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset


@runtime_checkable
class ImageSource(Protocol):
    name: str
    num_classes: int
    class_names: list[str] | None
    natural: bool

    @property
    def channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index): ...


@dataclass(eq=False)
class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) with int64 labels; a torch Dataset whose tensors can also be indexed directly."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: list[str] | None = None
    num_skipped: int = 0  # unreadable files left out with skip_bad=True
    natural: bool = False  # photographs: random horizontal flips are a valid augmentation

    streaming = False

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"dataset '{self.name}': images must be uint8 (N, C, H, W) with C in {{1, 3}}, "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"dataset '{self.name}': labels must be int64 of shape ({len(self.images)},), "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(f"dataset '{self.name}': labels span {int(self.labels.min())}..{int(self.labels.max())} "
                             f"but num_classes is {self.num_classes}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]

    def subset(self, indices) -> ImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[idx], labels=self.labels[idx])


def check_images(dataset: ImageSource, channels: int, image_size: int) -> None:
    """Fail early, with a hint, when the data and the model disagree on the image format."""
    if isinstance(dataset, ImageDataset):
        c, h, w = dataset.images.shape[1:]
    else:
        c, h, w = dataset.channels, dataset.image_size, dataset.image_size
    if (c, h, w) != (channels, image_size, image_size):
        raise ValueError(f"dataset '{dataset.name}' has {c}-channel {h}x{w} images but the model expects "
                         f"{channels}-channel {image_size}x{image_size} images; pass --channels/--image-size "
                         f"or choose another preset")


def take(dataset: ImageSource, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels [start, stop) in order, as batched tensors, from any dataset (validation, nll)."""
    if isinstance(dataset, ImageDataset):
        return dataset.images[start:stop], dataset.labels[start:stop]
    pairs = [dataset[i] for i in range(start, stop)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
