"""Dropout that is cheap on CPU: the same Bernoulli(1 − p) masks, drawn several times faster.

PyTorch's CPU dropout draws every mask element with a scalar Bernoulli sampler (MKL's vectorised
one is only used on Intel CPUs), which made dropout a quarter of a MAR training step. Here a mask
element keeps its value iff a uniform 32-bit integer is ≥ round(p·2³²) − 2³¹, i.e. with probability
1 − round(p·2³²)/2³² (within 2⁻³³ of 1 − p); the bits come from numpy's SFC64 generator seeded by
one draw of torch's generator, so `torch.manual_seed` (and a resumed RNG state) still fixes every
mask. As in PyTorch's CPU dropout the output is x · noise, with noise 0 or 1/(1 − p) rounded to
x's dtype. Off the CPU, for p ∈ {0, 1} and inside `torch.compile`, this is `F.dropout`.

`set_fast_dropout(False)` restores PyTorch's own sampler (its exact random stream).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_FAST = True
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def set_fast_dropout(enabled: bool) -> bool:
    """Use the fast CPU sampler (default) or PyTorch's; returns the previous setting."""
    global _FAST
    previous, _FAST = _FAST, bool(enabled)
    return previous


_INT_OF_SIZE = {2: (torch.int16, np.int16), 4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}


def keep_mask(shape, p: float, generator: torch.Generator | None = None) -> np.ndarray:
    """A numpy bool array of `shape`, each element True with probability 1 − p (independently)."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    raw = np.random.SFC64(seed).random_raw((n + 1) // 2)  # 64 bits → two 32-bit uniforms
    return (raw.view(np.int32)[:n] >= round(p * 2**32) - 2**31).reshape(shape)


def dropout_noise(shape, p: float, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """CPU tensor of 0 (probability p) and 1/(1 − p) rounded to `dtype`: `nn.Dropout`'s noise.

    Built as integers (the bit pattern of the scale where kept) so no slow bool → float pass runs.
    """
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    int_torch, int_np = _INT_OF_SIZE[scale.element_size()]
    bits = np.multiply(keep_mask(shape, p, generator), int_np(scale.view(int_torch).item()), dtype=int_np)
    return torch.from_numpy(bits).view(dtype)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the fast CPU mask sampler (x · noise, as PyTorch's CPU dropout)."""
    if not training or p == 0.0:
        return x
    if (not _FAST or x.device.type != "cpu" or p >= 1.0 or x.dtype not in _FLOAT_DTYPES
            or torch.compiler.is_compiling()):  # compiled graphs fuse their own RNG into the kernels
        return F.dropout(x, p, True)
    return x * dropout_noise(x.shape, p, x.dtype)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same name in module trees, no parameters) that uses `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
