"""Masked autoregressive generator: a bidirectional transformer that reveals patches in random order.

Reference `models/mar.py` (spec §3): sequence `[gp?, c_{K−1} … c_0, tok_0 … tok_{L−1}]` with masked
patches replaced by a learned mask token; the outputs at the patch positions give each patch five
conditions for the next level (its own output and its four grid neighbours'). Sampling follows the
cosine schedule, revealing tokens back to front along a random order.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from ..config import LevelConfig
from ..likelihood import Scoring
from ..sampling import SamplingOptions, cfg_scale, random_orders
from .layers import ViTBlock, init_weights, run_blocks


def neighbour_conditions(out: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """(R, L, D) outputs → [middle, top, right, bottom, left], zero outside the grid."""
    R, L, D = out.shape
    m = out.reshape(R, grid, grid, D)
    zr, zc = m.new_zeros(R, 1, grid, D), m.new_zeros(R, grid, 1, D)
    top = torch.cat([zr, m[:, :-1]], dim=1)
    bottom = torch.cat([m[:, 1:], zr], dim=1)
    right = torch.cat([m[:, :, 1:], zc], dim=2)
    left = torch.cat([zc, m[:, :, :-1]], dim=2)
    return [out] + [t.reshape(R, L, D) for t in (top, right, bottom, left)]


def truncated_normal_ratio(n: int, generator, device, mean=1.0, std=0.25, low=0.0, high=1.0):
    """Mask ratios ~ N(mean, std²) truncated to [low, high] (scipy `truncnorm(−4, 0)` for the defaults)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    a, b = normal.cdf(torch.tensor((low - mean) / std)), normal.cdf(torch.tensor((high - mean) / std))
    gen_device = generator.device if generator is not None else device
    u = a + (b - a) * torch.rand(n, generator=generator, device=gen_device)
    return (mean + std * torch.special.ndtri(u)).clamp(low, high).to(device)


def ranks_of(orders: torch.Tensor) -> torch.Tensor:
    """rank[b, pos] = index of `pos` in `orders[b]`."""
    return orders.argsort(-1)


class MARGenerator(nn.Module):
    def __init__(self, cfg: LevelConfig, token_dim: int, cond_dim: int, num_conds: int,
                 guide_head: nn.Module | None = None, channels: int = 3, checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.num_conds = num_conds
        self.guiding_pixel = guiding_pixel = guide_head is not None
        self.checkpointing = checkpointing
        D, L = cfg.width, cfg.seq_len
        self.num_prefix = num_conds + int(guiding_pixel)
        self.patch_emb = nn.Linear(token_dim, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.cond_emb = nn.Linear(cond_dim, D)
        if guiding_pixel:
            self.pix_proj = nn.Linear(channels, D)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, L + self.num_prefix, D))
        self.patch_emb_ln = nn.LayerNorm(D, eps=1e-6)
        self.blocks = nn.ModuleList(ViTBlock(D, cfg.num_heads, cfg.attn_dropout, cfg.proj_dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        init_weights(self)
        if guiding_pixel:  # registered after init: the head initialises itself (codebooks N(0, 0.02²))
            self.guiding_pixel_loss = guide_head
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed_learned, std=0.02)

    def predict(self, tokens: torch.Tensor, mask: torch.Tensor, conds: list[torch.Tensor]) -> list[torch.Tensor]:
        """tokens (R, L, T) normalised, mask (R, L) bool → five condition maps (R, L, D).

        `conds` holds at least `num_conds` conditions, plus the guiding pixel last when enabled.
        """
        x = self.patch_emb(tokens)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        prefix = [self.cond_emb(conds[i]) for i in reversed(range(self.num_conds))]  # c_{K-1} … c_0
        if self.guiding_pixel:
            prefix.insert(0, self.pix_proj(conds[-1]))
        x = torch.cat([torch.stack(prefix, dim=1).to(x.dtype), x], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)
        x = run_blocks(self.blocks, x, self.checkpointing and self.training)
        return neighbour_conditions(self.norm(x)[:, self.num_prefix:], self.cfg.grid)

    def select(self, num_rows: int, scoring: Scoring, level: int, device):
        """Rows to run and tokens to mask/score: (mask, score, source row, weight), see `likelihood`."""
        L, gen = self.cfg.seq_len, scoring.generator
        if scoring.mode == "fixed":
            mask = torch.as_tensor(scoring.masks[level], device=device).bool()
            if mask.shape != (num_rows, L):
                raise ValueError(f"level {level}: fixed mask has shape {tuple(mask.shape)}, "
                                 f"expected ({num_rows}, {L}) (one row per sequence entering the level)")
            count = mask.sum(-1)
            if (count == 0).any():
                raise ValueError(f"level {level}: every fixed mask must score at least one token")
            return mask, mask, torch.arange(num_rows, device=device), L / count.float()
        if scoring.mode == "exact":
            orders = (torch.arange(L, device=device).expand(num_rows, L) if scoring.order == "raster"
                      else random_orders(num_rows, L, gen, device))
            rank = ranks_of(orders).repeat_interleave(L, dim=0)  # (R·L, L)
            step = torch.arange(L, device=device).repeat(num_rows).unsqueeze(1)
            src = torch.arange(num_rows, device=device).repeat_interleave(L)
            return rank >= step, rank == step, src, torch.ones(num_rows * L, device=device)
        if scoring.mode == "train":
            count = torch.ceil(L * truncated_normal_ratio(num_rows, gen, device)).long().clamp_(1, L)
        else:  # "random": k ~ U{1..L}
            gen_device = gen.device if gen is not None else device
            n = 1 if scoring.shared_count else num_rows
            count = torch.randint(1, L + 1, (n,), generator=gen, device=gen_device).to(device).expand(num_rows)
        mask = ranks_of(random_orders(num_rows, L, gen, device)) < count.unsqueeze(1)
        return mask, mask, torch.arange(num_rows, device=device), L / count.float()

    @torch.no_grad()
    def sample(self, conds: list[torch.Tensor], embed: Callable, opts: SamplingOptions, num_iter: int,
               schedule: str, child: Callable) -> torch.Tensor:
        """(M, L, C, p, p) integer patches, revealed over min(L, num_iter) cosine-schedule steps."""
        L, rows = self.cfg.seq_len, conds[0].size(0)
        M = rows // 2 if opts.guided else rows
        device = conds[0].device
        mask = torch.ones(M, L, dtype=torch.bool, device=device)
        rank = ranks_of(random_orders(M, L, opts.generator, device))
        steps = min(L, num_iter)
        canvas = None
        for step in range(steps):
            masked = int(mask[0].sum())
            target = max(1, min(masked - 1, math.floor(L * math.cos(math.pi / 2 * (step + 1) / steps))))
            next_mask = rank < target
            to_pred = mask if step == steps - 1 else mask & ~next_mask
            tokens = embed(canvas) if canvas is not None else None
            if tokens is None:
                tokens = torch.zeros(M, L, self.patch_emb.in_features, device=device)
            both = (lambda t: torch.cat([t, t])) if opts.guided else (lambda t: t)
            maps = self.predict(both(tokens), both(mask), conds)
            sel = both(to_pred)
            step_opts = SamplingOptions(cfg_scale(opts.cfg, schedule, L - target, L), opts.temperature,
                                        opts.filter_threshold, opts.generator)
            patches = child([mp[sel] for mp in maps], step_opts, to_pred.nonzero(as_tuple=True))
            if canvas is None:
                canvas = patches.new_zeros(M, L, *patches.shape[1:])
            canvas[to_pred] = patches
            mask = next_mask
        return canvas
