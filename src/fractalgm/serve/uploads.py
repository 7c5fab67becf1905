"""Uploaded images and masks, decoded defensively: the header is checked before any pixel is.

An upload is PNG or JPEG, within `Limits.max_image_side` / `max_image_pixels` (a small file can
declare a huge image: a decompression bomb), and decodes completely. Images are centre-cropped and
resized to the model's size, like `fractalgm inpaint --image`; masks must already have the model's
size (white = generate, black = keep, as `fractalgm.masks.from_png`).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import center_crop_arr
from .limits import Limits

FORMATS = ("PNG", "JPEG")


class UploadError(ValueError):
    """A bad upload: `status` is the HTTP code to answer with (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def open_upload(data: bytes, what: str, limits: Limits) -> Image.Image:
    """Decode a PNG/JPEG upload completely, or raise UploadError with what is wrong."""
    if not data:
        raise UploadError(f"the {what} upload is empty")
    if len(data) > limits.max_upload_bytes:
        raise UploadError(f"the {what} is {len(data):,} bytes; the limit is {limits.max_upload_bytes:,}", 413)
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:  # PIL's own bound, far above ours
        raise UploadError(f"the {what} declares too many pixels ({e})", 413) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UploadError(f"the {what} is not a PNG or JPEG image ({e})", 415) from e
    if img.format not in FORMATS:
        raise UploadError(f"the {what} is a {img.format} file; upload a PNG or JPEG", 415)
    w, h = img.size
    if max(w, h) > limits.max_image_side or w * h > limits.max_image_pixels:
        raise UploadError(f"the {what} is {w}×{h} pixels; the limit is {limits.max_image_side} pixels a side and "
                          f"{limits.max_image_pixels:,} pixels in all", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise UploadError(f"the {what} is damaged or truncated and cannot be decoded ({e})") from e
    return img


def _flatten_alpha(img: Image.Image, background: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        return Image.alpha_composite(Image.new("RGBA", img.size, background), img.convert("RGBA"))
    return img


def decode_image(data: bytes, channels: int, size: int, limits: Limits) -> torch.Tensor:
    """An uploaded picture as uint8 (1, C, size, size): centre-cropped and resized when needed."""
    img = _flatten_alpha(open_upload(data, "image", limits), "white")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.array(img) if img.size == (size, size) else center_crop_arr(img, size)
    arr = np.ascontiguousarray(arr.reshape(size, size, channels))
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def decode_mask(data: bytes, size: int, limits: Limits) -> torch.Tensor:
    """An uploaded mask as bool known (1, 1, size, size): white (≥ 128) = generate, transparent = keep."""
    img = _flatten_alpha(open_upload(data, "mask", limits), "black")
    if img.size != (size, size):
        raise UploadError(f"the mask is {img.width}×{img.height} pixels; this model needs {size}×{size} "
                          f"(white = generate, black = keep)")
    generate = torch.from_numpy(np.array(img.convert("L")) >= 128)
    return (~generate)[None, None]
