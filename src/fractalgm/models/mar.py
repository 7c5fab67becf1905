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
from ..sampling import Known, SamplingOptions, cfg_scale, random_orders
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
               schedule: str, child: Callable, known: Known | None = None) -> torch.Tensor:
        """(M, L, C, p, p) integer patches, revealed over min(U, num_iter) cosine-schedule steps.

        `known` (patches (M, L, C, p, p)) reveals entirely known tokens from the start; the random
        order and the cosine schedule then run over each row's U unknown tokens (U = L without
        `known`: the reference's sampler). `child(conds, opts, index)` samples the patches at
        index = (rows, positions), partly known ones included (the caller passes their known values).
        """
        L, rows = self.cfg.seq_len, conds[0].size(0)
        M = rows // 2 if opts.guided else rows
        device = conds[0].device
        rank = ranks_of(random_orders(M, L, opts.generator, device))
        canvas, mask = None, torch.ones(M, L, dtype=torch.bool, device=device)
        if known is not None:
            canvas, mask = known.values.clone(), ~known.full
            rank = ranks_of((rank + L * known.full).argsort(-1))  # unknown tokens first, same relative order
        plan = SchedulePlan(mask.sum(1), num_iter, opts.cfg, schedule)
        both = (lambda t: torch.cat([t, t])) if opts.guided else (lambda t: t)
        for step in range(plan.steps):
            next_mask = rank < plan.masked_after(step)
            to_pred = mask & ~next_mask
            live = to_pred.any(1)
            if live.any():
                # run only the rows that still generate (rows are independent; all rows without `known`)
                run = slice(None) if live.all() else live.nonzero()[:, 0]
                halves = torch.cat([run, run + M]) if opts.guided and not isinstance(run, slice) else run
                tokens = embed(canvas[run]) if canvas is not None else \
                    torch.zeros(M, L, self.patch_emb.in_features, device=device)
                maps = self.predict(both(tokens), both(mask[run]), [c[halves] for c in conds])
                index = to_pred.nonzero(as_tuple=True)
                step_opts = opts.step(plan.scale(step)).take(index[0])
                patches = child([mp[both(to_pred[run])] for mp in maps], step_opts, index)
                if canvas is None:
                    canvas = patches.new_zeros(M, L, *patches.shape[1:])
                canvas[to_pred] = patches
            mask = next_mask
        return canvas


def cosine_schedule(unknown: int, num_iter: int) -> list[int]:
    """Tokens still masked after each step when revealing `unknown` tokens (spec §3.4, L → U).

    m_s = max(1, min(m_{s−1} − 1, ⌊U·cos(π/2·(s+1)/T)⌋)), T = min(U, num_iter): at least one token
    per step; the last step reveals all that remain although the formula says 1 (which the linear
    CFG schedule still uses, as the reference does).
    """
    steps, masked, out = min(unknown, num_iter), unknown, []
    for s in range(steps):
        masked = max(1, min(masked - 1, math.floor(unknown * math.cos(math.pi / 2 * (s + 1) / steps))))
        out.append(masked)
    return out


class SchedulePlan:
    """Per-row cosine schedules: row b reveals its U_b unknown tokens in min(U_b, num_iter) steps.

    Rows with equal U share one schedule (all rows when nothing is known) and get Python numbers,
    exactly as the reference; otherwise per-row tensors. The linear CFG scale of a row follows the
    revealed fraction of *its unknown* tokens, 1 + (cfg − 1)·(U − m)/U.
    """

    def __init__(self, unknown: torch.Tensor, num_iter: int, cfg, schedule: str):
        counts = unknown.tolist()
        masked = {u: cosine_schedule(u, num_iter) for u in set(counts)}
        self.steps = max(map(len, masked.values()), default=0)
        self.cfg = cfg
        after = {u: m[:-1] + [0] if m else [] for u, m in masked.items()}  # the last step reveals the rest
        scales = None
        if schedule == "linear":
            scales = {u: [cfg_scale(cfg, schedule, u - k, u) for k in m] for u, m in masked.items()}
        if len(masked) == 1:
            u, = masked
            self._after, self._scale = after[u], scales and scales[u]
        else:  # (steps, M): rows that are done leave 0 tokens masked
            def per_row(table, fill, dtype):
                rows = [table[u] + [fill] * (self.steps - len(table[u])) for u in counts]
                return torch.tensor(rows, dtype=dtype, device=unknown.device).T

            self._after = per_row(after, 0, torch.long).unsqueeze(-1)
            self._scale = scales and per_row(scales, 1.0, torch.float64)

    def masked_after(self, step: int):
        """Tokens each row leaves masked after `step` (an int, or (M, 1))."""
        return self._after[step]

    def scale(self, step: int):
        """The guidance scale of `step` (a float, or (M,) for per-row linear schedules)."""
        return self.cfg if self._scale is None else self._scale[step]
