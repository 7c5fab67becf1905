"""Known-pixel masks for `FractalGen.inpaint`: True = keep the value, False = generate it.

Every helper returns a bool tensor (1, 1, size, size) that broadcasts over a batch and its channels;
each is named after the region it *generates*. Coordinates are pixels, (0, 0) the top-left corner.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIDES = ("left", "right", "top", "bottom")


def _generate_region(size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    known = torch.ones(1, 1, size, size, dtype=torch.bool)
    known[..., top:top + height, left:left + width] = False
    return known


def box(size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """Inpainting: generate the box of `height`×`width` pixels at (top, left), keep the rest."""
    if height < 1 or width < 1 or not (0 <= top < size and 0 <= left < size):
        raise ValueError(f"box (top={top}, left={left}, height={height}, width={width}) does not lie in a "
                         f"{size}×{size} image")
    return _generate_region(size, top, left, height, width)


def half(size: int, side: str) -> torch.Tensor:
    """Generate the `side` half ("left", "right", "top", "bottom"), keep the other one."""
    h = size // 2
    regions = {"left": (0, 0, size, h), "right": (0, size - h, size, h),
               "top": (0, 0, h, size), "bottom": (size - h, 0, h, size)}
    if side not in regions:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return _generate_region(size, *regions[side])


def keep_center(size: int, keep: int) -> torch.Tensor:
    """Keep the centred `keep`×`keep` square, generate everything around it."""
    if not 0 <= keep <= size:
        raise ValueError(f"keep must be in [0, {size}], got {keep}")
    a = (size - keep) // 2
    known = torch.zeros(1, 1, size, size, dtype=torch.bool)
    known[..., a:a + keep, a:a + keep] = True
    return known


def outpaint(size: int, border: int) -> torch.Tensor:
    """Outpainting: generate a frame `border` pixels wide around the kept centre."""
    if not 0 <= 2 * border <= size:
        raise ValueError(f"border must be in [0, {size // 2}], got {border}")
    return keep_center(size, size - 2 * border)


def uncrop(size: int, crop: int) -> torch.Tensor:
    """Uncropping: keep a small centred `crop`×`crop` crop and extend it to the whole image."""
    return keep_center(size, crop)


def from_png(path, size: int | None = None, white_is_known: bool = False) -> torch.Tensor:
    """A mask drawn in an image file: by default white (≥ 128) marks the pixels to generate, the usual
    inpainting convention; `white_is_known` flips it. Transparent pixels count as black. Resized to
    `size` (nearest neighbour) when given."""
    path = Path(path)
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the mask image {path}: {e}") from e
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "black"), img.convert("RGBA"))
    img = img.convert("L")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    white = torch.from_numpy(np.array(img) >= 128)
    return (white if white_is_known else ~white)[None, None]


def to_png(known: torch.Tensor, path, white_is_known: bool = False):
    """Write a (1, 1, H, W) or (H, W) mask in the `from_png` convention."""
    m = known.reshape(known.shape[-2:]).cpu().numpy()
    Image.fromarray(((m if white_is_known else ~m) * 255).astype(np.uint8)).save(path)
