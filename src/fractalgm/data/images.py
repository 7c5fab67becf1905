"""Decoding one image file: the reference's centre crop, channel conversion that is reported, clear errors.

Every on-disk format that stores encoded images (image folders, tar shards, `--image` files) decodes
through `decode_image`, so a corrupt JPEG, a zero-byte file or an undecodable PNG gives the same
`BadImage` message, naming the file, wherever it is met (also inside a DataLoader worker).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
SKIP_HINT = "fix or delete it, or pass --skip-bad to skip unreadable files (they are counted and listed)"


class BadImage(ValueError):
    """A file that cannot be decoded; `where` names it."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"cannot read image {where}: {reason}")
        self.where, self.reason = where, reason


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


def conversion_note(source_mode: str, channels: int) -> str | None:
    """'grayscale'/'CMYK'/'colour' when a file is converted to the set's channel count, else None.

    ImageNet's training set holds grayscale and CMYK JPEGs; the reference converts them silently. We
    convert them too, but count and name them, so a wrong-mode file is never a surprise.
    """
    if channels == 3:
        if source_mode in _GRAY_MODES:
            return "grayscale"
        return "CMYK" if source_mode == "CMYK" else None
    return None if source_mode in _GRAY_MODES else "colour"


def decode_image(source: bytes | str | os.PathLike, channels: int, image_size: int | None,
                 where: str | None = None) -> tuple[np.ndarray, str | None]:
    """(C, H, W) uint8 pixels of an encoded image, centre-cropped to `image_size` (kept as stored when None
    and square), and a note when its mode was converted. Raises `BadImage` for anything unreadable."""
    where = where or str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise BadImage(where, e.strerror or str(e)) from e
    if not data:
        raise BadImage(where, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # PIL decodes lazily: a truncated JPEG only fails here
            note = conversion_note(img.mode, channels)
            img = img.convert("L" if channels == 1 else "RGB")
            if image_size is None:
                if img.size[0] != img.size[1]:
                    raise BadImage(where, f"it is {img.size[0]}x{img.size[1]}, not square; give an image size "
                                          f"(--image-size) to centre-crop it")
                arr = np.array(img)
            else:
                arr = np.array(img) if img.size == (image_size, image_size) else center_crop_arr(img, image_size)
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e)) or type(e).__name__
        raise BadImage(where, reason) from e
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), note


def read_image(path: str | os.PathLike, channels: int, size: int, say=None) -> torch.Tensor:
    """One image file as a (C, size, size) uint8 tensor, centre-cropped when it has another size;
    `say(text)` hears about a resize (the CLI prints it, so a user knows the input was changed)."""
    arr, _ = decode_image(path, channels, size)
    if say is not None:
        try:
            with Image.open(path) as img:
                if img.size != (size, size):
                    say(f"{path} is {img.size[0]}×{img.size[1]}; centre-cropped and resized to the model's "
                        f"{size}×{size}")
        except OSError:
            pass
    return torch.from_numpy(arr)
