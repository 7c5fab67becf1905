"""The last fractal level: an autoregressive model over the C channel values of one pixel.

Reference `PixelLoss` (spec §5) generalised to C ∈ {1, 3} channels and any channel order: a tiny
causal transformer reads `[proj(cond), E_a[v_a], E_b[v_b], …]` and predicts channel k from output k
through the *same* codebook that embeds it (weight-tied 256-way logits, plus a learned bias).

`PixelHead` is the network (also the guiding-pixel head of MAR levels); `PixelLevel` is the same head
behind the level contract (`models.contract`), the leaf the recursion calls like any other level.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import PixelHeadConfig
from ..likelihood import Rows, Term, TokenScoring
from ..patchify import constant
from ..sampling import CanvasView, Known, SamplePlan, draw_categorical, guided_logits, paired, unpaired_count
from .contract import Conditions
from .layers import ViTBlock, init_weights


def channel_weights(first: float, channels: int) -> tuple[float, ...]:
    """Training weights per generated channel: (w, 1, …, 1)/(w + C − 1), the reference's r_weight."""
    w = torch.ones(channels, device="cpu")  # also when the model is built on the meta device
    w[0] = first
    return tuple((w / w.sum()).tolist())  # float32 values, kept exactly


class LogitBias(nn.Module):
    """Holds the (1, 256) logit bias; a module so the key reads `r_mlm.bias` as in the reference."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 256))


class PixelHead(nn.Module):
    """The per-pixel network: cross-entropies of C channel values, and sampling them one by one.

    `first_weight` is the training weight of the first generated channel (`channel_weights`).
    """

    def __init__(self, cfg: PixelHeadConfig, cond_dim: int, channel_names: str, order: str,
                 first_weight: float = 1.0):
        super().__init__()
        self.channel_names = channel_names
        self.weights = channel_weights(first_weight, len(channel_names))
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

    def channel_weights(self) -> torch.Tensor:
        """(C,) training weights in generation order, in the head's dtype (summing to 1)."""
        like = self.cond_proj.weight
        return constant(self.weights, like.dtype, like.device)

    def cross_entropy(self, values: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats) of every channel, (M, C) in *generation* order."""
        C = len(self.order)
        h = self._hidden(values, cond, C)
        ce = [F.cross_entropy(self._logits(h[:, pos], pos), values[:, self.order[pos]], reduction="none")
              for pos in range(C)]
        return torch.stack(ce, dim=1)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, opts: SamplePlan, known: torch.Tensor | None = None,
               known_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, C) integer pixels; `cond` has 2·rows entries when guided (cond half first).

        `known`/`known_mask` (rows, C) teacher-force channels whose values are given. `opts.draw`, when
        set, chooses the values instead of the random draw (see `SamplePlan`).
        """
        rows = unpaired_count(cond.size(0), opts.guided)
        values = torch.zeros(rows, len(self.order), dtype=torch.long, device=cond.device)
        for pos, ch in enumerate(self.order):
            h = self._hidden(paired(values, opts.guided), cond, pos + 1)[:, pos]
            logits = guided_logits(self._logits(h, pos), opts)
            if opts.draw is None:
                drawn = draw_categorical(logits, opts)
            else:
                kept = None if known_mask is None else torch.where(known_mask[:, ch], known[:, ch], -1)
                drawn = opts.draw(logits, kept)
            if known_mask is not None:
                drawn = torch.where(known_mask[:, ch], known[:, ch], drawn)
            values[:, ch] = drawn
        return values


class PixelLevel(PixelHead):
    """The leaf of the recursion: the pixel head with the level contract, over 1×1 patches.

    It is the pixel head itself (not a wrapper) so its parameters keep the reference's key names.
    """

    def forward(self, x: torch.Tensor, conds: Conditions, rows: Rows, scoring: TokenScoring) -> list[Term]:
        """The pixel term of integer pixels x (N, C, 1, 1) under conditions (N, D)."""
        ce = self.cross_entropy(x.flatten(1), conds.middle)
        return [Term("pixel", ce, rows.owner, rows.weight, self.channel_weights())]

    @torch.no_grad()
    def generate(self, conds: Conditions, plan: SamplePlan, known: Known | None = None,
                 view: CanvasView | None = None) -> torch.Tensor:
        """(N, C, 1, 1) integer pixels; known channels are teacher-forced (the parent records them)."""
        C = len(self.order)
        kv, km = (None, None) if known is None else (known.values.view(-1, C), known.mask.view(-1, C))
        return self.sample(conds.middle, plan, kv, km).view(-1, C, 1, 1)
