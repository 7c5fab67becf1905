"""Known-pixel masks for `FractalGen.inpaint`: True = keep the value, False = generate it.

Every helper returns a bool tensor (1, 1, size, size) that broadcasts over a batch and its channels;
each is named after the region it *generates*. Coordinates are pixels, (0, 0) the top-left corner.
`check_known` validates a mask against images, `hidden_known` says which known values a model's
generation order cannot see.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import CHANNEL_NAMES, FractalConfig
from .patchify import patchify

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


# ---------------------------------------------------------------------------- checking a mask against a model
def check_known(known: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The `known` mask as bool (B, C, H, W) on the images' device, or a clear error."""
    B, C, H, W = images.shape
    if not isinstance(known, torch.Tensor) or known.dtype != torch.bool:
        raise TypeError(f"known must be a bool tensor (True = keep the value), got "
                        f"{getattr(known, 'dtype', type(known).__name__)}; e.g. known = mask > 0")
    if known.dim() != 4 or known.shape[0] not in (1, B) or known.shape[1] not in (1, C) \
            or tuple(known.shape[2:]) != (H, W):
        raise ValueError(f"known has shape {tuple(known.shape)}; expected ({B} or 1, 1 or {C}, {H}, {W}) "
                         f"to match the images {tuple(images.shape)}")
    return known.to(images.device).expand(B, C, H, W)


def hidden_known(config: FractalConfig, known: torch.Tensor) -> torch.Tensor:
    """(B,) True where a known value comes after a value to generate in an order that cannot look
    ahead (raster order at AR levels, channel order in the pixel head): it is kept, but what is
    generated before it does not see it. Always False for MAR models with C = 1."""
    C = config.channels
    mask = known.bool().expand(-1, C, -1, -1)
    B = mask.size(0)

    def looks_ahead(todo: torch.Tensor, has: torch.Tensor) -> torch.Tensor:  # (N, T) along the order
        generated_before = (todo.long().cumsum(1) - todo.long()) > 0
        return (has & generated_before).any(1)

    hidden = torch.zeros(B, dtype=torch.bool, device=mask.device)
    for lv in config.levels:
        if lv.kind == "ar":  # every sub-image of side S is one sequence of its tokens
            seqs = patchify(patchify(mask, lv.image_size).flatten(0, 1), lv.patch_size).flatten(2)
            hidden |= looks_ahead(~seqs.all(-1), seqs.any(-1)).view(B, -1).any(1)
    order = [CHANNEL_NAMES[C].index(c) for c in config.channel_order]  # generation order
    by_channel = mask[:, order].permute(0, 2, 3, 1).reshape(-1, C)
    return hidden | looks_ahead(~by_channel, by_channel).view(B, -1).any(1)


def warn_if_hidden(config: FractalConfig, known: torch.Tensor, stacklevel: int = 3):
    """Warn when some known values cannot condition what is generated before them (`hidden_known`)."""
    hidden = hidden_known(config, known)
    if hidden.any():
        who = (["AR levels (raster order)"] * any(lv.kind == "ar" for lv in config.levels)
               + [f"the pixel head (channel order {config.channel_order!r})"] * (config.channels > 1))
        warnings.warn(f"{int(hidden.sum())} of {known.size(0)} image(s) have known pixels that this model cannot see "
                      f"when generating: {' and '.join(who)} only condition on earlier values; such known values "
                      f"are kept but ignored by what is generated before them", stacklevel=stacklevel)
