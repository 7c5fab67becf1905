"""Autoregressive generator: a causal transformer over the patches of one level in raster order.

Reference `models/ar.py` (spec §2): sequence `[cond, tok_0 … tok_{L−1}]`, learned absolute positions
plus 2-D RoPE, RMSNorm + SwiGLU blocks; the output at position t conditions patch t. Sampling decodes
one patch per step with a KV cache (the reference re-embeds the canvas each step; same numbers).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..config import LevelConfig
from ..sampling import Known, SamplingOptions, cfg_scale
from .layers import KVCache, LlamaBlock, init_weights, rope_2d_table, run_blocks


class ARGenerator(nn.Module):
    def __init__(self, cfg: LevelConfig, token_dim: int, cond_dim: int, checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.checkpointing = checkpointing
        D, L = cfg.width, cfg.seq_len
        self.patch_emb = nn.Linear(token_dim, D)
        self.cond_emb = nn.Linear(cond_dim, D)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, L + 1, D))
        self.patch_emb_ln = nn.LayerNorm(D, eps=1e-6)
        self.blocks = nn.ModuleList(LlamaBlock(D, cfg.num_heads, cfg.attn_dropout, cfg.proj_dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.register_buffer("rope", rope_2d_table(cfg.grid, cfg.head_dim), persistent=False)
        init_weights(self)
        nn.init.normal_(self.pos_embed_learned, std=0.02)

    def predict(self, tokens: torch.Tensor, mask, conds: list[torch.Tensor]) -> list[torch.Tensor]:
        """tokens (R, L, T) normalised → [middle (R, L, D)]: output t has seen cond and tokens < t.

        `mask` is ignored: an AR level never masks, causality hides what comes later.
        """
        x = torch.cat([self.cond_emb(conds[0]).unsqueeze(1), self.patch_emb(tokens)], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)  # (R, L+1, D)
        x = run_blocks(self.blocks, x, self.checkpointing and self.training, self.rope)
        return [self.norm(x)[:, :-1]]

    def select(self, num_rows: int, scoring, level: int, device):
        """Every token is scored exactly once: one row per sequence, all positions, weight 1."""
        L = self.cfg.seq_len
        ones = torch.ones(num_rows, L, dtype=torch.bool, device=device)
        return ones, ones, torch.arange(num_rows, device=device), torch.ones(num_rows, device=device)

    @torch.no_grad()
    def sample(self, conds: list[torch.Tensor], embed: Callable, opts: SamplingOptions, num_iter: int,
               schedule: str, child: Callable, known: Known | None = None) -> torch.Tensor:
        """(M, L, C, p, p) integer patches in raster order; `num_iter` is ignored (always L steps).

        `embed(patches)` normalises and flattens integer patches; `child(conds, opts, index)` samples
        the patches at the given (rows, positions). With `known` (patches (M, L, C, p, p)), entirely
        known tokens are teacher-forced without calling the child; partly known ones go to the child
        (the caller passes their known values). A token only sees known tokens *before* it in raster
        order: causality hides the later ones.
        """
        L, rows = self.cfg.seq_len, conds[0].size(0)
        M = rows // 2 if opts.guided else rows
        dtype = self.pos_embed_learned.dtype
        caches = [KVCache(rows, self.cfg.num_heads, L + 1, self.cfg.head_dim, conds[0].device, dtype)
                  for _ in self.blocks]
        canvas = None if known is None else known.values.clone()
        todo = None if known is None else ~known.full  # (M, L) tokens to generate
        x = self.cond_emb(conds[0]).unsqueeze(1)  # step 0 decodes the condition token
        for s in range(L):
            if s > 0:
                prev = embed(canvas[:, s - 1:s])
                x = self.patch_emb(torch.cat([prev, prev]) if opts.guided else prev)
            x = self.patch_emb_ln(x + self.pos_embed_learned[:, s:s + 1])
            for block, cache in zip(self.blocks, caches):
                x = block(x, self.rope[s:s + 1], cache, s)
            cond = self.norm(x)[:, 0]  # (rows, D): the condition of patch s
            step = opts.step(cfg_scale(opts.cfg, schedule, s + 1, L))
            if todo is None:
                rows_idx = torch.arange(M, device=cond.device)
            else:
                rows_idx = todo[:, s].nonzero()[:, 0]
                if rows_idx.numel() == 0:
                    continue
                if rows_idx.numel() < M:
                    cond = cond[torch.cat([rows_idx, rows_idx + M]) if opts.guided else rows_idx]
            patch = child([cond], step.take(rows_idx), (rows_idx, torch.full_like(rows_idx, s)))  # (N, C, p, p)
            if canvas is None:
                canvas = patch.new_zeros(M, L, *patch.shape[1:])
            canvas[rows_idx, s] = patch
        return canvas
