"""Entry points: `open_dataset` (streaming where the format allows) and `load_dataset` (always in memory).

Splits: "test" is the official test set (or a fixed held-out part that never depends on `seed`);
"train" and "val" are carved from the training data by a permutation seeded only by `seed`, unless
the source ships its own validation set; "train_full" is all of the training data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import sources
from .dataset import ImageDataset
from .folder import ImageFolder
from .formats import Arrays, Source, array_source, idx_source
from .images import center_crop_arr
from .shards import TarShards, is_shard_dir, shard_files
from .sources import BUILTIN_DATASETS, SPLITS
from .streaming import StreamingDataset, carve


def is_streamable(name_or_path: str | os.PathLike) -> bool:
    """True for image folders and shard directories: formats that store encoded images, decoded on demand."""
    if str(name_or_path) in BUILTIN_DATASETS:
        return False
    path = Path(name_or_path).expanduser()
    return path.is_dir() and array_source(path) is None


def open_dataset(name_or_path: str | os.PathLike, split: str = "train", *, image_size: int | None = None,
                 channels: int | None = None, val_size: int | None = None, seed: int = 0,
                 skip_bad: bool = False, data_dir: str | os.PathLike | None = None,
                 num_crops: int | None = None):
    """A streaming dataset for image folders and tar shards, the in-memory `ImageDataset` otherwise.

    Streaming sets decode with the ADM centre crop to `image_size` and convert files to `channels`
    (default 3; for shards, what meta.json says), counting the files converted; see `load_dataset` for the other arguments.
    """
    _check_arguments(name_or_path, split, channels, num_crops)
    if not is_streamable(name_or_path):
        return load_dataset(name_or_path, split, data_dir=data_dir, image_size=image_size, channels=channels,
                            val_size=val_size, seed=seed, skip_bad=skip_bad, num_crops=num_crops)
    return _open_streaming(Path(name_or_path).expanduser(), split, image_size, channels, val_size, seed, skip_bad)


def _open_streaming(path: Path, split: str, image_size, channels, val_size, seed, skip_bad) -> StreamingDataset:
    shards = is_shard_dir(path)
    if not shards and image_size is None:
        raise ValueError(f"{path}: image folders need an image size (pass image_size / --image-size)")
    def part(name):
        if shards:  # size and channels default to meta.json's
            return TarShards(path, name, image_size=image_size, channels=channels, skip_bad=skip_bad)
        return ImageFolder(path, name, image_size=image_size, channels=channels or 3, skip_bad=skip_bad)

    own = split == "test" or (split in ("train", "val") and _has_part(path, "val", shards))
    data = part(split if own else "train")
    if own or split == "train_full":
        return data
    return data.subset(carve(len(data), split, val_size, seed, data.name))


def _has_part(path: Path, name: str, shards: bool) -> bool:
    return bool(shard_files(path, name)) if shards else (path / name).is_dir()


def _check_arguments(name_or_path, split, channels, num_crops):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if num_crops is not None and name_or_path != "photos":
        raise ValueError("num_crops only applies to the 'photos' preset")


def load_dataset(name_or_path: str | os.PathLike, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, channels: int | None = None, val_size: int | None = None,
                 seed: int = 0, skip_bad: bool = False, num_crops: int | None = None) -> ImageDataset:
    """Load a built-in dataset (see BUILTIN_DATASETS) or a dataset on disk as an in-memory `ImageDataset`.

    Paths may be an image folder (root/[split/]class/*.png), a directory of tar shards
    ({split}-000000.tar, WebDataset layout), a CIFAR-10/100 python-batches folder, a downsampled-ImageNet
    folder or .npz, an IDX (MNIST-format) folder, or a generic .npz with `x`/`y`. `image_size` resizes
    (ADM centre crop) when it differs from the stored size and is required for image folders; for
    "photos" it is the crop size (default 32). `channels` converts 1<->3 channels (ITU-R 601 luma, as
    PIL's "L"). `data_dir` is where the Fashion-MNIST files are; `val_size` defaults per dataset;
    `num_crops` is for "photos" only. Large image folders should use `open_dataset` (streaming).
    """
    _check_arguments(name_or_path, split, channels, num_crops)
    if name_or_path == "fashion_mnist":
        source = idx_source(sources.fashion_dir(data_dir), "fashion_mnist", sources.FASHION_CLASSES)
    elif name_or_path == "mnist5k":
        source = sources.mnist5k_source()
    elif name_or_path == "digits":
        source = sources.digits_source()
    elif name_or_path == "photos":
        image_size = image_size or 32
        source = sources.photos_source(image_size, seed, num_crops)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"unknown dataset {str(path)!r}: not one of {BUILTIN_DATASETS} and no such file or "
                                    f"directory")
        source = array_source(path)
        if source is None:
            return _open_streaming(path, split, image_size, channels, val_size, seed, skip_bad).materialize()
    images, labels = _select(source, split, val_size, seed)
    images = _match_channels(images, channels)
    if image_size is not None and images.shape[2:] != (image_size, image_size):
        images = _resize(images, image_size)
    # np.array copies: cached arrays are read-only and must not be shared with callers.
    return ImageDataset(torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64)),
                        source.num_classes, source.name, source.class_names, source.num_skipped, source.natural)


def _select(source: Source, split: str, val_size: int | None, seed: int) -> Arrays:
    """Return the requested split, carving train/val from the training part when there is no val part."""
    own = split == "test" or (split in ("train", "val") and "val" in source.parts)
    part = split if own else "train"
    if part not in source.parts:
        raise ValueError(f"dataset '{source.name}' has no '{part}' split")
    images, labels = source.parts[part]()
    if own or split == "train_full":
        return images, labels
    idx = carve(len(labels), split, val_size, seed, source.name, source.default_val)
    return images[idx], labels[idx]


def _match_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert 1<->3 channels only on request; RGB->L uses PIL's integer luma so both paths agree."""
    if channels is None or channels == images.shape[1]:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=1)
    r, g, b = (images[:, i:i + 1].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """ADM centre crop per image, so arrays stored at another size are treated like image files."""
    def one(arr):
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        out = center_crop_arr(img, image_size)
        return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return np.stack([one(a) for a in images])
