"""One-token-at-a-time decoding through a stack of `LlamaBlock`s, at the cost of its arithmetic.

The generic block forward (`LlamaBlock.forward` with a `KVCache`) serves training, scoring and
chunked decoding; sampling calls it 16 times per pixel, where the Python and dispatch work around
the matrix products costs more than the products themselves. `Decoder.step` runs the same
operations on the same shapes, so its numbers are the generic path's bit for bit, with the glue cut
down: module calls become direct calls (no hooks, no `__call__`), RoPE is one multiply-add of q and k
together with tables built once, and the caches of every block live in one preallocated tensor.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import LlamaBlock, attention


def rope_tables(rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d/2, 2) cos/sin pairs → per-position (N, d) tables C and S for `x·C + swap(x)·S`.

    `apply_rope` computes (x₀c − x₁s, x₁c + x₀s) for each pair; with C = (c, c) and S = (−s, s)
    interleaved, x·C + swap(x)·S is the same sum of the same products (a − b is a + (−b) exactly).
    """
    cos, sin = rope.unbind(-1)
    return (torch.stack([cos, cos], -1).flatten(-2), torch.stack([-sin, sin], -1).flatten(-2))


class Decoder:
    """Decodes rows (B, 1, D) at positions 0, 1, … through `blocks`, caching keys and values."""

    def __init__(self, blocks: nn.ModuleList, rope: torch.Tensor, rows: int, max_len: int):
        first: LlamaBlock = blocks[0]
        weight = first.attention.wqkv.weight
        self.blocks = blocks
        self.heads = first.attention.num_heads
        dim = weight.size(1)
        self.head_dim = dim // self.heads
        self.cos, self.sin = rope_tables(rope.to(weight.device))
        # (depth, 2, rows, H, max_len, d): block i's keys at [i, 0], values at [i, 1]; a position is
        # written before it is read, so the buffer needs no zero fill (a 60 MB fill at level 0)
        self.cache = torch.empty(len(blocks), 2, rows, self.heads, max_len, self.head_dim,
                                 device=weight.device, dtype=weight.dtype)

    def step(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """The blocks' output for x (B, 1, D) at position `pos`, after every earlier position."""
        for i, block in enumerate(self.blocks):
            x = x + self._attend(block.attention, block.attention_norm.forward(x), i, pos)
            ff = block.feed_forward
            h = block.ffn_norm.forward(x)
            x = x + F.linear(F.silu(F.linear(h, ff.w1.weight)) * F.linear(h, ff.w3.weight), ff.w2.weight)
        return x

    def _attend(self, attn: nn.Module, h: torch.Tensor, block: int, pos: int) -> torch.Tensor:
        B, _, D = h.shape
        qkv = F.linear(h, attn.wqkv.weight).view(B, 1, 3, self.heads, self.head_dim)
        qk = qkv[:, :, :2].float()
        pairs = qk.view(B, 1, 2, self.heads, -1, 2)
        qk = (qk * self.cos[pos] + pairs.flip(-1).flatten(-2) * self.sin[pos]).to(h.dtype)
        q = qk[:, :, 0].transpose(1, 2)  # (B, H, 1, d)
        cache = self.cache[block]
        cache[0, :, :, pos] = qk[:, 0, 1]
        cache[1, :, :, pos] = qkv[:, 0, 2]
        out = attention(q, cache[0, :, :, :pos + 1], cache[1, :, :, :pos + 1])
        return F.linear(out.transpose(1, 2).reshape(B, 1, D), attn.wo.weight)
