"""On-disk formats users bring that decode to arrays in memory: IDX (MNIST), CIFAR batches, .npz files.

Each loader returns a `Source`: lazy loaders for the parts a format ships ("train", optionally "val"
and "test") plus metadata. Formats that store encoded images (image folders, tar shards) stream
instead; see `folder.py` and `shards.py`.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]  # images (N, C, H, W) uint8, labels (N,) int64
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(eq=False)
class Source:
    """Lazy loaders for the parts a source ships ("train", optionally "val" and "test") plus metadata."""

    name: str
    parts: dict[str, Callable[[], Arrays]]
    num_classes: int
    class_names: list[str] | None = None
    default_val: int | None = None  # None: min(5000, n // 10)
    num_skipped: int = 0
    natural: bool = False  # photographs (random flips are a valid augmentation)


def array_source(path: Path) -> Source | None:
    """The in-memory format at `path`, or None when it is not one (an image folder or shard directory)."""
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path}: unsupported file type; expected a .npz file or a directory")
        return _npz_file_source(path)
    if has_idx(path):
        return idx_source(path, path.name)
    if (path / "data_batch_1").is_file() or (path / "train").is_file():
        return _cifar_source(path)
    if (path / "val_data.npz").is_file() or any(path.glob("train_data_batch_*.npz")):
        return _imagenet_npz_source(path)
    if any((path / f"{part}.npz").is_file() for part in ("train", "val", "test")):
        return _npz_dir_source(path)
    return None


# --- IDX (MNIST format) ------------------------------------------------------------------------------------

def idx_path(directory: Path, base: str) -> Path | None:
    return next((p for p in (directory / f"{base}.gz", directory / base) if p.is_file()), None)


def has_idx(directory: Path, part: str = "train") -> bool:
    return all(idx_path(directory, base) for base in _IDX_FILES[part])



def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (MNIST format, optionally gzipped): magic 00 00 08 <ndim>, big-endian sizes, bytes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read IDX file {path}: {e} (corrupt or truncated? delete it and retry)") from e
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"IDX file {path} is truncated or padded: its header ({shape}) needs {expected} "
                         f"bytes but it holds {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=8)
def idx_part(directory: str, part: str) -> Arrays:
    """Decoded (read-only) arrays, cached because tests and the CLI load the same files repeatedly."""
    images_base, labels_base = _IDX_FILES[part]
    images = read_idx(idx_path(Path(directory), images_base), 3)[:, None]
    labels = read_idx(idx_path(Path(directory), labels_base), 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {part} images but {len(labels)} labels")
    labels.flags.writeable = False
    return images, labels


def idx_source(directory: Path, name: str, class_names: list[str] | None = None) -> Source:
    key = str(directory.resolve())
    parts = {part: (lambda part=part: idx_part(key, part)) for part in _IDX_FILES if has_idx(directory, part)}
    num_classes = len(class_names) if class_names else 1 + max(int(p()[1].max(initial=0)) for p in parts.values())
    return Source(name, parts, num_classes, class_names)



# --- CIFAR and .npz ---------------------------------------------------------------------------------------

def _unpickle(path: Path) -> dict:
    """CIFAR's official python format is pickle, which can run code: load only trusted files."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"cannot read CIFAR batch {path}: {e}") from e


def _cifar_source(root: Path) -> Source:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test) python batches."""
    cifar10 = (root / "data_batch_1").is_file()
    files = ({"train": sorted(root.glob("data_batch_*")), "test": [root / "test_batch"]} if cifar10
             else {"train": [root / "train"], "test": [root / "test"]})
    label_key, meta_name, names_key = ((b"labels", "batches.meta", b"label_names") if cifar10
                                       else (b"fine_labels", "meta", b"fine_label_names"))

    def load(part: str) -> Arrays:
        images, labels = [], []
        for path in files[part]:
            batch = _unpickle(path)
            data = batch[b"data"]
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{path}: b'data' must be a uint8 (N, 3072) array")
            images.append(data.reshape(-1, 3, 32, 32))  # rows hold 1024 R, then G, then B values, row-major
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    meta = root / meta_name
    names = [n.decode() for n in _unpickle(meta)[names_key]] if meta.is_file() else None
    parts = {part: (lambda part=part: load(part)) for part, paths in files.items() if all(p.is_file() for p in paths)}
    return Source(root.name, parts, 10 if cifar10 else 100, names, natural=True)


def _uint8_pixels(x: np.ndarray, where: str) -> np.ndarray:
    """Accept uint8, or integers within 0..255; floats are ambiguous (0..1 or 0..255?) and rejected."""
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iu":
        raise ValueError(f"{where}: pixels have dtype {x.dtype}; store uint8 values 0..255")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"{where}: pixel values span {x.min()}..{x.max()}; expected 0..255")
    return x.astype(np.uint8)


def _int_labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise ValueError(f"{where}: labels must be non-negative integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _load_imagenet_npz(paths: list[Path]) -> Arrays:
    """Downsampled ImageNet: `data` (N, 3*S*S) channel-major rows, `labels` 1-based."""
    images, labels = [], []
    for path in paths:
        with np.load(path) as f:
            data, y = _uint8_pixels(f["data"], str(path)), _int_labels(f["labels"], str(path))
        size = int(round((data.shape[1] / 3) ** 0.5))
        if data.ndim != 2 or 3 * size * size != data.shape[1] or len(y) != len(data):
            raise ValueError(f"{path}: expected data (N, 3*S*S) and labels (N,), got {data.shape} and {y.shape}")
        if y.size and y.min() < 1:
            raise ValueError(f"{path}: labels must be 1-based (1..1000)")
        images.append(data.reshape(-1, 3, size, size))
        labels.append(y - 1)
    return np.concatenate(images), np.concatenate(labels)


def _imagenet_npz_source(root: Path) -> Source:
    train = sorted(root.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    parts = {"train": lambda: _load_imagenet_npz(train)} if train else {}
    if (root / "val_data.npz").is_file():  # the official val set serves as the test set
        parts["test"] = lambda: _load_imagenet_npz([root / "val_data.npz"])
    return Source(root.name, parts, 1000, natural=True)


def _load_generic_npz(path: Path) -> Arrays:
    """`x` as (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}; optional `y` (else all zeros)."""
    with np.load(path) as f:
        if "x" not in f:
            raise ValueError(f"{path}: expected keys 'x' (and optional 'y') or 'data'/'labels', got {sorted(f)}")
        x = _uint8_pixels(f["x"], str(path))
        y = _int_labels(f["y"], str(path)) if "y" in f else np.zeros(len(x), np.int64)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim != 4 or (x.shape[1] not in (1, 3) and x.shape[3] not in (1, 3)):
        raise ValueError(f"{path}: x has shape {x.shape}; expected (N, H, W) or 1/3 channels first or last")
    elif x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if y.shape != (len(x),):
        raise ValueError(f"{path}: y has shape {y.shape}; expected ({len(x)},)")
    return x, y


def _npz_file_source(path: Path) -> Source:
    """One file is one split: "train_full" and "test" return all of it, "train"/"val" carve it."""
    with np.load(path) as f:
        imagenet = "data" in f and "labels" in f
    load = (lambda: _load_imagenet_npz([path])) if imagenet else (lambda: _load_generic_npz(path))
    return Source(path.stem, {"train": load, "test": load}, 1000 if imagenet else _npz_num_classes([path]))


def _npz_dir_source(root: Path) -> Source:
    """train.npz / val.npz / test.npz of the generic format; num_classes spans all of them."""
    files = {part: root / f"{part}.npz" for part in ("train", "val", "test") if (root / f"{part}.npz").is_file()}
    parts = {part: (lambda path=path: _load_generic_npz(path)) for part, path in files.items()}
    return Source(root.name, parts, _npz_num_classes(files.values()))


def _npz_num_classes(paths) -> int:
    """1 + the largest label over all files, reading only `y`, so every split agrees."""
    top = 0
    for path in paths:
        with np.load(path) as f:
            if "y" in f:
                top = max(top, int(_int_labels(f["y"], str(path)).max(initial=0)))
    return top + 1
