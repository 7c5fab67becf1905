"""Autoregressive generator: a causal transformer over the patches of one level in raster order.

Reference `models/ar.py` (spec §2): sequence `[cond, tok_0 … tok_{L−1}]`, learned absolute positions
plus 2-D RoPE, RMSNorm + SwiGLU blocks; the output at position t conditions patch t. Sampling decodes
one patch per step with a KV cache (the reference re-embeds the canvas each step; same numbers).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..likelihood import Rows, Term
from ..sampling import Known, SamplePlan, paired, paired_rows, unpaired_count
from .contract import Conditions, LevelSpec
from .decode import Decoder
from .layers import LlamaBlock, init_weights, rope_2d_table, run_blocks


class ARGenerator(nn.Module):
    """Causal transformer over one level's patches (see `models.contract.Generator`)."""

    guiding_pixel_head = None  # AR levels have no guiding pixel
    scores_every_token = True  # causality scores all tokens in one teacher-forced pass
    prefix_tokens = 1  # the condition token

    def __init__(self, spec: LevelSpec):
        super().__init__()
        self.spec, self.cfg = spec, spec.level
        cfg = spec.level
        self.checkpointing = spec.checkpointing
        D, L = cfg.width, cfg.seq_len
        self.patch_emb = nn.Linear(spec.token_dim, D)
        self.cond_emb = nn.Linear(spec.cond_dim, D)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, L + 1, D))
        self.patch_emb_ln = nn.LayerNorm(D, eps=1e-6)
        self.blocks = nn.ModuleList(LlamaBlock(D, cfg.num_heads, cfg.attn_dropout, cfg.proj_dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.register_buffer("rope", rope_2d_table(cfg.grid, cfg.head_dim), persistent=False)
        init_weights(self)
        nn.init.normal_(self.pos_embed_learned, std=0.02)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Integer patches (…, C, p, p) → normalised inputs (…, C·p²), channel-major."""
        return self.spec.pixels.normalize(patches, patches.dim() - 3, self.patch_emb.weight).flatten(-3)

    def score_guiding_pixel(self, images: torch.Tensor, conds: Conditions, rows: Rows) -> tuple[list[Term], Conditions]:
        return [], conds

    def predict(self, patches: torch.Tensor, mask, conds: Conditions, count: int = 1) -> Conditions:
        """Patches (R, L, C, p, p) → middle conditions (R, L, D): output t has seen cond and tokens < t.

        `mask` is ignored: an AR level never masks, causality hides what comes later; an AR level
        has no neighbour conditions to give (`count`).
        """
        x = torch.cat([self.cond_emb(conds.middle).unsqueeze(1), self.patch_emb(self.embed(patches))], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)  # (R, L+1, D)
        x = run_blocks(self.blocks, x, self.checkpointing and self.training, self.rope)
        return Conditions(self.norm(x)[:, :-1])

    @torch.no_grad()
    def sample(self, conds: Conditions, plan: SamplePlan, child: Callable, known: Known | None = None) -> torch.Tensor:
        """(M, L, C, p, p) integer patches in raster order: always L steps (`plan.steps` is ignored).

        `child(conds, plan, index)` samples the patches at the given (rows, positions). With `known`
        (patches (M, L, C, p, p)), entirely known tokens are teacher-forced without calling the
        child; partly known ones go to the child (the caller passes their known values). A token
        only sees known tokens *before* it in raster order: causality hides the later ones. With
        `plan.every_token` the child is called for every token, known or not (exact coding).
        """
        L, guided = self.cfg.seq_len, plan.guided
        rows = conds.rows
        M = unpaired_count(rows, guided)
        decoder = Decoder(self.blocks, self.rope, rows, L + 1)
        canvas = None if known is None else known.values.clone()
        todo = None if known is None or plan.every_token else ~known.full  # (M, L) tokens to generate
        x = self.cond_emb(conds.middle).unsqueeze(1)  # step 0 decodes the condition token
        for s in range(L):
            if s > 0:
                x = self.patch_emb(paired(self.embed(canvas[:, s - 1:s]), guided))
            x = self.patch_emb_ln(x + self.pos_embed_learned[:, s:s + 1])
            x = decoder.step(x, s)
            cond = self.norm(x)[:, 0]  # (rows, D): the condition of patch s
            step = plan.child(plan.scale(s + 1, L))
            if todo is None:
                rows_idx = torch.arange(M, device=cond.device)
            else:
                rows_idx = todo[:, s].nonzero()[:, 0]
                if rows_idx.numel() == 0:
                    continue
                if rows_idx.numel() < M:
                    cond = cond[paired_rows(rows_idx, M, guided)]
            patch = child(Conditions(cond), step.take(rows_idx), (rows_idx, torch.full_like(rows_idx, s)))
            if canvas is None:
                canvas = patch.new_zeros(M, L, *patch.shape[1:])
            canvas[rows_idx, s] = patch
        return canvas
