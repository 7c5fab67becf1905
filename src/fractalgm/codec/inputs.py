"""What `fractalgm compress` reads: PNG/JPEG files, folders of them, or one ADM-style `.npz`.

Every image is read and checked against the model's size and channels before any coding starts; a
mismatch names the file and the expected shape. Nothing is resized or converted: a lossless codec
codes exactly the pixels it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CodecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MODES = {1: "L", 3: "RGB"}


@dataclass
class Inputs:
    images: np.ndarray  # (B, C, H, W) uint8
    names: list[str] | None  # file names, None for an .npz
    labels: np.ndarray | None  # an .npz's arr_1, if any


def _expected(channels: int, size: int) -> str:
    return f"{size}×{size} {'grayscale' if channels == 1 else 'RGB'} ({MODES[channels]})"


def _read_image(path: Path, channels: int, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
            if mode != MODES[channels] or (w, h) != (size, size):
                raise CodecError(f"{path}: {w}×{h} {mode} image; this model codes {_expected(channels, size)}")
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise CodecError(f"{path}: not a readable image ({e})") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _read_npz(path: Path, channels: int, size: int) -> Inputs:
    try:
        with np.load(path) as f:
            x = f["arr_0"]
            y = f["arr_1"] if "arr_1" in f.files else None
    except (OSError, ValueError, KeyError) as e:
        raise CodecError(f"{path}: not an ADM-style .npz with arr_0 ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (size, size, channels):
        raise CodecError(f"{path}: arr_0 is {x.dtype} {tuple(x.shape)}; this model codes uint8 "
                         f"(N, {size}, {size}, {channels}) ({_expected(channels, size)})")
    if y is not None and (y.shape != (len(x),) or y.dtype.kind not in "iu"):
        raise CodecError(f"{path}: arr_1 must hold one integer label per image, got {y.dtype} {tuple(y.shape)}")
    return Inputs(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), None, y)


def _files(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise CodecError(f"{p}: no PNG or JPEG files in this folder")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise CodecError(f"{p}: not a PNG or JPEG file (or give one .npz alone)")
            out.append(p)
        else:
            raise CodecError(f"{p}: no such file or folder")
    return out


def read_inputs(paths: list[str], channels: int, size: int) -> Inputs:
    """All images of `paths`, checked; file names must be unique (they name the decoded files)."""
    if any(p.lower().endswith(".npz") for p in paths):
        if len(paths) != 1:
            raise CodecError("an .npz input must be given alone")
        return _read_npz(Path(paths[0]), channels, size)
    files = _files(paths)
    names = [f.name for f in files]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise CodecError(f"two inputs are named {dup}: decoded files keep their names, so names must be unique")
    if any("\n" in n for n in names):
        raise CodecError("file names with line breaks cannot be stored")
    return Inputs(np.stack([_read_image(f, channels, size) for f in files]), names, None)
