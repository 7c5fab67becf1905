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

from ..likelihood import Rows, Term
from ..sampling import Known, SamplePlan, paired, paired_rows, random_orders, ranks_of, scheduled_scale, unpaired_count
from .contract import Conditions, LevelSpec
from .layers import ViTBlock, init_weights, run_blocks
from .pixel_head import PixelHead


def neighbour_conditions(out: torch.Tensor, grid: int, count: int = 5) -> Conditions:
    """(R, L, D) outputs → middle and neighbours (top, right, bottom, left), zero outside the grid.

    Only the first `count` are built: a child that reads the middle alone needs no shifted copies.
    """
    if count == 1:
        return Conditions(out)
    R, L, D = out.shape
    m = out.reshape(R, grid, grid, D)
    zr, zc = m.new_zeros(R, 1, grid, D), m.new_zeros(R, grid, 1, D)
    top = torch.cat([zr, m[:, :-1]], dim=1)
    bottom = torch.cat([m[:, 1:], zr], dim=1)
    right = torch.cat([m[:, :, 1:], zc], dim=2)
    left = torch.cat([zc, m[:, :, :-1]], dim=2)
    return Conditions(out, tuple(t.reshape(R, L, D) for t in (top, right, bottom, left))[:count - 1])


def with_neighbours(where: torch.Tensor, grid: int, count: int = 5) -> torch.Tensor:
    """(R, L) bool: `where` and, when the child reads neighbour conditions, the grid neighbours of it."""
    if count == 1:
        return where
    w = where.view(-1, grid, grid)
    out = w.clone()
    out[:, 1:] |= w[:, :-1]
    out[:, :-1] |= w[:, 1:]
    out[:, :, 1:] |= w[:, :, :-1]
    out[:, :, :-1] |= w[:, :, 1:]
    return out.view_as(where)


class MARGenerator(nn.Module):
    """Masked bidirectional transformer over one level's patches (see `models.contract.Generator`).

    With a guiding pixel (`spec.guiding_pixel_head`) it owns that head: it scores and samples the patch's
    mean colour and reads it as its first prefix token.
    """

    scores_every_token = False  # a pass scores the masked tokens only (training masks, estimates, orders)

    def __init__(self, spec: LevelSpec):
        guide = None
        if spec.guiding_pixel_head is not None:  # built first and registered last: the reference's init order
            h = spec.guiding_pixel_head
            guide = PixelHead(h.head, h.cond_dim, h.channel_names, h.channel_order, h.first_weight)
        super().__init__()
        self.spec, self.cfg = spec, spec.level
        cfg = spec.level
        self.num_conds = spec.num_conds
        self.guiding_pixel = guiding_pixel = guide is not None
        self.checkpointing = spec.checkpointing
        D, L = cfg.width, cfg.seq_len
        self.prefix_tokens = spec.num_conds + int(guiding_pixel)  # [gp?, c_{K−1} … c_0]
        self.patch_emb = nn.Linear(spec.token_dim, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.cond_emb = nn.Linear(spec.cond_dim, D)
        if guiding_pixel:
            self.pix_proj = nn.Linear(spec.channels, D)
        self.pos_embed_learned = nn.Parameter(torch.zeros(1, L + self.prefix_tokens, D))
        self.patch_emb_ln = nn.LayerNorm(D, eps=1e-6)
        self.blocks = nn.ModuleList(ViTBlock(D, cfg.num_heads, cfg.attn_dropout, cfg.proj_dropout)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        init_weights(self)
        if guiding_pixel:  # registered after init: the head initialises itself (codebooks N(0, 0.02²))
            self.guiding_pixel_loss = guide
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed_learned, std=0.02)

    @property
    def guiding_pixel_head(self) -> PixelHead | None:
        return self.guiding_pixel_loss if self.guiding_pixel else None

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Integer patches (…, C, p, p) → normalised inputs (…, C·p²), channel-major."""
        return self.spec.pixels.normalize(patches, patches.dim() - 3, self.patch_emb.weight).flatten(-3)

    # ------------------------------------------------------------------ the guiding pixel
    def score_guiding_pixel(self, images: torch.Tensor, conds: Conditions, rows: Rows) -> tuple[list[Term], Conditions]:
        """Score the mean colour of images (M, C, S, S) and add it, normalised, to the conditions."""
        if not self.guiding_pixel:
            return [], conds
        pixels, like = self.spec.pixels, self.patch_emb.weight
        g = pixels.normalize(images, 1, like).mean(-1).mean(-1)  # (M, C)
        ce = self.guiding_pixel_loss.cross_entropy(pixels.quantize(g, 1, like), conds.middle)
        term = Term(f"guiding_pixel_level{self.spec.index}", ce, rows.owner, rows.weight,
                    self.guiding_pixel_loss.channel_weights())
        return [term], conds.with_guiding_pixel(g)

    def sample_guiding_pixel(self, conds: Conditions, plan: SamplePlan) -> Conditions:
        """Sample the mean colour first (both CFG halves then read the same one)."""
        if not self.guiding_pixel:
            return conds
        values = self.guiding_pixel_loss.sample(conds.middle, plan)
        g = self.spec.pixels.normalize(values, 1, self.patch_emb.weight)
        return conds.with_guiding_pixel(paired(g, plan.guided))

    # ------------------------------------------------------------------ network
    def predict(self, patches: torch.Tensor, mask: torch.Tensor, conds: Conditions, count: int = 5,
                needed: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> Conditions:
        """Patches (R, L, C, p, p), mask (R, L) bool → condition maps (R, L, D): the middle one and its
        four grid neighbours (the first `count`). `conds` holds `num_conds` conditions (and the
        guiding pixel).

        Sampling reads the maps at a few positions only: with `needed` (R, L) bool the last block's
        per-token work and the final norm run there alone, so the maps equal the full pass's where
        they read only needed outputs and are zero elsewhere. `prefix` is the embedded prefix
        (`embed_prefix`), computed once for all steps."""
        if len(conds.tokens) != self.num_conds:
            raise ValueError(f"this MAR level reads {self.num_conds} conditions, got {len(conds.tokens)}")
        x = self.patch_emb(self.embed(patches))
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        prefix = self.embed_prefix(conds) if prefix is None else prefix
        x = torch.cat([prefix.to(x.dtype), x], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed_learned)
        if needed is None:
            x = run_blocks(self.blocks, x, self.checkpointing and self.training)
            return neighbour_conditions(self.norm(x)[:, self.prefix_tokens:], self.cfg.grid, count)
        x = run_blocks(self.blocks[:-1], x, False)
        where = torch.cat([needed.new_zeros(needed.size(0), self.prefix_tokens), needed], dim=1)
        out = x.new_zeros(*needed.shape, x.size(-1))
        out[needed] = self.norm(self.blocks[-1].forward_at(x, where))
        return neighbour_conditions(out, self.cfg.grid, count)

    def embed_prefix(self, conds: Conditions) -> torch.Tensor:
        """(R, P, D) prefix tokens `[gp?, c_{K−1} … c_0]`, embedded."""
        prefix = [self.cond_emb(c) for c in reversed(conds.tokens)]  # c_{K-1} … c_0
        if self.guiding_pixel:
            prefix.insert(0, self.pix_proj(conds.guiding_pixel))
        return torch.stack(prefix, dim=1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, conds: Conditions, plan: SamplePlan, child: Callable, known: Known | None = None) -> torch.Tensor:
        """(M, L, C, p, p) integer patches, revealed over min(U, plan.steps) cosine-schedule steps.

        `known` (patches (M, L, C, p, p)) reveals entirely known tokens from the start; the random
        order and the cosine schedule then run over each row's U unknown tokens (U = L without
        `known`: the reference's sampler). `child(conds, plan, index)` samples the patches at
        index = (rows, positions), partly known ones included (the caller passes their known values).
        A partly known patch still samples its guiding pixel. `plan.every_token` generates known tokens
        too (from a fully masked start, teacher-forced below); `plan.order` "raster" fixes the order.
        """
        conds = self.sample_guiding_pixel(conds, plan)
        prefix = self.embed_prefix(conds)  # the same every step
        L, guided = self.cfg.seq_len, plan.guided
        M = unpaired_count(conds.rows, guided)
        device = conds.middle.device
        # tokens of the highest rank are revealed first: raster (position 0 first) is the reversed arange
        orders = (torch.arange(L - 1, -1, -1, device=device).expand(M, L) if plan.order == "raster"
                  else random_orders(M, L, plan.generator, device))
        rank = ranks_of(orders)
        canvas, mask = None, torch.ones(M, L, dtype=torch.bool, device=device)
        if known is not None:
            canvas = known.values.clone()
            if not plan.every_token:  # entirely known tokens are revealed from the start
                mask = ~known.full
                rank = ranks_of((rank + L * known.full).argsort(-1))  # unknown tokens first, same relative order
        schedule = SchedulePlan(mask.sum(1), plan.steps, plan.cfg_scale, plan.schedule)
        p = self.cfg.patch_size
        shape = (self.spec.channels, p, p)
        for step in range(schedule.steps):
            next_mask = rank < schedule.masked_after(step)
            to_pred = mask & ~next_mask
            live = to_pred.any(1)
            if live.any():
                # run only the rows that still generate (rows are independent; all rows without `known`)
                run = slice(None) if live.all() else live.nonzero()[:, 0]
                halves = run if isinstance(run, slice) else paired_rows(run, M, guided)
                # before anything is generated every token is masked: its values are never read
                patches = canvas[run] if canvas is not None else torch.zeros(M, L, *shape, dtype=torch.long,
                                                                              device=device)
                needed = with_neighbours(to_pred[run], self.cfg.grid, self.spec.child_conds)
                maps = self.predict(paired(patches, guided), paired(mask[run], guided), conds.take(halves),
                                    self.spec.child_conds, paired(needed, guided), prefix[halves])
                index = to_pred.nonzero(as_tuple=True)
                sub_conds = maps.take(paired(to_pred[run], guided))
                patches = child(sub_conds, plan.child(schedule.scale(step)).take(index[0]), index)
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

    def __init__(self, unknown: torch.Tensor, num_iter: int, cfg_scale, schedule: str):
        counts = unknown.tolist()
        masked = {u: cosine_schedule(u, num_iter) for u in set(counts)}
        self.steps = max(map(len, masked.values()), default=0)
        self.cfg_scale = cfg_scale
        after = {u: m[:-1] + [0] if m else [] for u, m in masked.items()}  # the last step reveals the rest
        scales = None
        if schedule == "linear":
            scales = {u: [scheduled_scale(cfg_scale, schedule, u - k, u) for k in m] for u, m in masked.items()}
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
        return self.cfg_scale if self._scale is None else self._scale[step]
