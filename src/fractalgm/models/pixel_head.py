"""The last fractal level: an autoregressive model over the C channel values of one pixel.

Reference `PixelLoss` (spec §5) generalised to C ∈ {1, 3} channels and any channel order: a tiny
causal transformer reads `[proj(cond), E_a[v_a], E_b[v_b], …]` and predicts channel k from output k
through the *same* codebook that embeds it (weight-tied 256-way logits, plus a learned bias).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PixelHeadConfig
from ..sampling import SamplingOptions, guided_logits, sample_categorical
from .layers import ViTBlock, init_weights


class LogitBias(nn.Module):
    """Holds the (1, 256) logit bias; a module so the key reads `r_mlm.bias` as in the reference."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 256))


class PixelHead(nn.Module):
    def __init__(self, cfg: PixelHeadConfig, cond_dim: int, channel_names: str, order: str):
        super().__init__()
        self.channel_names = channel_names
        self.order = [channel_names.index(c) for c in order]  # generation position → channel index
        self.cond_proj = nn.Linear(cond_dim, cfg.width)
        for name in channel_names:
            self.add_module(f"{name}_codebook", nn.Embedding(256, cfg.width))
        self.ln = nn.LayerNorm(cfg.width, eps=1e-6)
        self.blocks = nn.ModuleList(ViTBlock(cfg.width, cfg.num_heads, causal=True) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        for name in channel_names:
            self.add_module(f"{name}_mlm", LogitBias())
        init_weights(self)
        for name in channel_names:
            nn.init.normal_(self.codebook(self.channel_names.index(name)).weight, std=0.02)

    def codebook(self, channel: int) -> nn.Embedding:
        return getattr(self, f"{self.channel_names[channel]}_codebook")

    def _hidden(self, values: torch.Tensor, cond: torch.Tensor, n: int) -> torch.Tensor:
        """Outputs at positions 0..n-1 of `[cond, E(v_order0), …]`; values (M, C) integers."""
        tokens = [self.cond_proj(cond)]
        for pos in range(n - 1):
            ch = self.order[pos]
            tokens.append(self.codebook(ch)(values[:, ch]))
        x = self.ln(torch.stack(tokens, dim=1))  # (M, n, W)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _logits(self, h: torch.Tensor, pos: int) -> torch.Tensor:
        ch = self.order[pos]
        bias = getattr(self, f"{self.channel_names[ch]}_mlm").bias
        with torch.autocast(h.device.type, enabled=False) if h.device.type in ('cpu', 'cuda') else nullcontext():
            dtype = torch.promote_types(h.dtype, torch.float32)  # fp32 logits, fp64 in a float64 model
            return F.linear(h.to(dtype), self.codebook(ch).weight.to(dtype)) + bias.to(dtype)

    def forward(self, values: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats) of every channel, (M, C) in *generation* order."""
        C = len(self.order)
        h = self._hidden(values, cond, C)
        ce = [F.cross_entropy(self._logits(h[:, pos], pos), values[:, self.order[pos]], reduction="none")
              for pos in range(C)]
        return torch.stack(ce, dim=1)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, opts: SamplingOptions, known: torch.Tensor | None = None,
               known_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, C) integer pixels; `cond` has 2·rows entries when guided (cond half first).

        `known`/`known_mask` (rows, C) teacher-force channels whose values are given.
        """
        rows = cond.size(0) // 2 if opts.guided else cond.size(0)
        values = torch.zeros(rows, len(self.order), dtype=torch.long, device=cond.device)
        for pos, ch in enumerate(self.order):
            ctx = torch.cat([values, values]) if opts.guided else values
            h = self._hidden(ctx, cond, pos + 1)[:, pos]
            drawn = sample_categorical(guided_logits(self._logits(h, pos), opts), opts.generator)
            if known_mask is not None:
                drawn = torch.where(known_mask[:, ch], known[:, ch], drawn)
            values[:, ch] = drawn
        return values
