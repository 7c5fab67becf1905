"""Entropy coding: the model's float logits → integer counts (one function, shared by both ends), and
one `constriction` range coder per image.

The coder sees only integer counts: `quantise` is the single place where floats become integers, so
encoder and decoder agree exactly whenever they see the same logits. Counts are handed to
constriction as the float64 weights `count − 1`: its quantiser then computes
`left_cumulative_i = ⌊W_i · 1.0⌋ + i` (the scale is exactly 1 because the weights sum to
2^24 − 256), i.e. it reproduces our counts exactly instead of re-quantising them.
"""
from __future__ import annotations

import constriction
import numpy as np
import torch

from .errors import CodecError

PRECISION = 24  # constriction's default range and ANS coders work with 24-bit probabilities
CODER = "constriction-range-24"
_MODEL = constriction.stream.model.Categorical(perfect=False)


def quantise(logits: torch.Tensor) -> torch.Tensor:
    """(R, n) float logits → (R, n) int64 counts: every count ≥ 1, each row summing to 2^24.

    softmax in float64, each probability's share of the 2^24 − n free units rounded down, the
    leftover units to the most probable symbol (the first on ties): deterministic in the logits.
    """
    p = torch.softmax(logits.double(), dim=-1)
    if not bool(torch.isfinite(p).all()):
        raise CodecError("the model's probabilities are not finite (NaN weights or inputs?)")
    free = (1 << PRECISION) - p.size(-1)
    w = torch.floor(p * free).long()
    w[torch.arange(w.size(0), device=w.device), p.argmax(-1)] += free - w.sum(-1)
    return w + 1


def coder_weights(counts: torch.Tensor) -> np.ndarray:
    """The float64 weights that make constriction use exactly `counts` (see the module docstring)."""
    return (counts - 1).to("cpu", torch.float64).numpy()


def code_length_bits(counts: torch.Tensor, symbols: torch.Tensor) -> torch.Tensor:
    """−log2 of the quantised probabilities of `symbols` (R,): what an ideal coder would spend."""
    c = counts.gather(-1, symbols.long().unsqueeze(-1)).squeeze(-1).double()
    return PRECISION - torch.log2(c)


class ImageEncoder:
    """One image's symbols, in the order the model draws them."""

    def __init__(self):
        self._coder = constriction.stream.queue.RangeEncoder()

    def push(self, symbol: int, weights: np.ndarray):
        """Code `symbol` under one row of `coder_weights` (shape (1, n))."""
        self._coder.encode(np.array([symbol], dtype=np.int32), _MODEL, weights)

    def finish(self) -> np.ndarray:
        """The compressed words (uint32)."""
        return self._coder.get_compressed()


class ImageDecoder:
    """Pulls one image's symbols back, in the same order."""

    def __init__(self, words: np.ndarray):
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def pull(self, weights: np.ndarray) -> int:
        return int(self._coder.decode(_MODEL, weights)[0])
