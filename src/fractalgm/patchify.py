"""Pure tensor helpers: patchify/unpatchify and pixel normalisation (`PixelNorm`, one per model).

Integer pixel values travel down the hierarchy unchanged; each level normalises the values it embeds
exactly as the reference's data pipeline does (float32 v/255, minus mean, divided by std), so targets
are the integers themselves and never need re-quantising.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, S, S) → (B, L, C, p, p) with L = (S/p)² tokens in row-major grid order."""
    B, C, S, _ = x.shape
    g = S // patch
    x = x.reshape(B, C, g, patch, g, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C, patch, patch)


def unpatchify(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, C, p, p) → (B, C, S, S); the exact inverse of `patchify`."""
    B, L, C, p, _ = tokens.shape
    g = int(round(L**0.5))
    x = tokens.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, g * p, g * p)


def normalize(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Integer pixel values → float32 network inputs, `(v/255 − mean_c)/std_c` along `channel_dim`."""
    shape = [1] * values.dim()
    shape[channel_dim] = -1
    return (values.float() / 255 - mean.view(shape)) / std.view(shape)


def quantize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Normalised values → nearest integer pixel values in 0..255 (the inverse of `normalize`)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return torch.round(255 * (x.float() * std.view(shape) + mean.view(shape))).clamp(0, 255).long()


@functools.lru_cache(maxsize=None)
def constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached (len(values),) tensor: float32 first, then cast, exactly as a float32 buffer that
    followed `model.to(dtype)` would be (so float64 and bf16 models see the same numbers as before)."""
    with torch.inference_mode(False):  # a cached tensor must stay usable outside inference mode
        return torch.tensor(values, dtype=torch.float32, device="cpu").to(device=device, dtype=dtype)


@dataclass(frozen=True)
class PixelNorm:
    """The per-channel normalisation of [0, 1] pixel values, defined once per model.

    Constants follow the dtype and device of `like` (a parameter of the module that embeds), which
    is what the per-level buffers of older versions did.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, values: torch.Tensor, channel_dim: int, like: torch.Tensor) -> torch.Tensor:
        return normalize(values, constant(self.mean, like.dtype, like.device),
                         constant(self.std, like.dtype, like.device), channel_dim)

    def quantize(self, x: torch.Tensor, channel_dim: int, like: torch.Tensor) -> torch.Tensor:
        return quantize(x, constant(self.mean, like.dtype, like.device),
                        constant(self.std, like.dtype, like.device), channel_dim)
