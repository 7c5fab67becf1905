"""Parameters and training-forward FLOPs per fractal level, measured with `FlopCounterMode`.

What is counted
---------------
One training/likelihood forward of a batch (default 1) in which **every patch is passed down**:
level ℓ runs on all patches of level ℓ−1 (the paper: "level 1 runs on all L_0 patches"), so at
batch 1 level ℓ processes ``rows_ℓ = L_0·…·L_{ℓ−1}`` sequences and the pixel head H·W pixels. (In
real MAR training only the masked patches go down, so lower levels cost less; this is the paper's
convention, and it is what the exact-likelihood pass of an AR hierarchy costs.)

Each level's components run separately on the ``meta`` device (shapes only, no memory, no data),
under `torch.utils.flop_counter.FlopCounterMode`, so nothing has to be split out of a global count:

* ``gflops`` — what our forward actually does: ``generator.predict`` on ``(rows, L, C·p²)`` tokens
  with all its condition / guiding-pixel prefix tokens (MAR: 5 or 6 extra tokens, AR: 1), patch
  and condition embeddings included; guiding-pixel heads and the pixel head run their full forward
  (condition projection, blocks, tied 256-way logits) on every row.
* ``gflops_paper`` — the paper's Table-1 convention: the transformer blocks only, on the L patch
  tokens only (the pixel head: its C channel tokens), no embeddings, no prefix tokens, no logits,
  no guiding-pixel heads.

FlopCounterMode counts matrix products only (mm/addmm/bmm, and attention's two products, also
for causal attention): one multiply-add = 2 FLOPs; norms, activations, softmax and other
elementwise work are not counted.

Against the paper (Table 1, "large" models: FractalMAR-64 and FractalMAR-L-256)
------------------------------------------------------------------------------
The tokens-only convention reproduces the table: fractalmar_in64 gives 214.7 / 207.2 / 14.6
GFLOPs against 215 / 208 / 15, and fractalmar_large_in256 gives 214.7 / 207.2 / 416.6 / 19.5
against 215 / 208 / 419 / 22. The generator levels agree to within 1 %. The 256-px pixel level
comes out ~11 % lower; adding its condition projection (+2.1) brings it to 21.6 ≈ 22, which
suggests the paper also counted some embedding work there. Counting everything the forward runs
(our ``gflops``: prefix tokens, embeddings, logits) adds 2 % at level 0 (261 vs 256 tokens) but
+32 % at level 1 (21 vs 16 tokens) and +39 % at the 256-px level 2 (22 vs 16 tokens), so the
paper's numbers count the patch tokens only.
Our pixel head runs C positions rather than the reference's C + 1 (its last output is unused);
the paper's "seq len 3" agrees with that.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..config import FractalConfig
from ..models import Conditions, FractalGen

# Paper Table 1 (GFLOPs per training forward, batch 1): generator levels then the pixel level.
PAPER_TABLE1_GFLOPS: dict[str, tuple[float, ...]] = {
    "fractalmar_in64": (215.0, 208.0, 15.0),
    "fractalmar_large_in256": (215.0, 208.0, 419.0, 22.0),
}


def _count(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _meta(*shape, dtype=torch.float32):
    return torch.zeros(*shape, device="meta", dtype=dtype)


def _params(module: torch.nn.Module | None, exclude: torch.nn.Module | None = None) -> int:
    if module is None:
        return 0
    skip = {id(p) for p in exclude.parameters()} if exclude is not None else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def _build_meta(config: FractalConfig):
    with torch.device("meta"):
        model = FractalGen(config)
    return model.eval()


def _head_flops(head, rows: int, cond_dim: int, channels: int) -> tuple[int, int]:
    """(full forward, blocks on the C channel tokens) FLOPs of a PixelHead over `rows` pixels."""
    values, cond = _meta(rows, channels, dtype=torch.long), _meta(rows, cond_dim)
    try:
        full = _count(lambda: head.cross_entropy(values, cond))
    except RuntimeError:  # autocast(device_type="meta") is unsupported: same products, piece by piece
        def manual():
            h = head._hidden(values, cond, channels)
            for pos in range(channels):
                F.linear(h[:, pos], head.codebook(head.order[pos]).weight)
        full = _count(manual)
    x = _meta(rows, channels, head.cond_proj.out_features)
    blocks = _count(lambda: [b(x) for b in head.blocks])
    return full, blocks


@functools.lru_cache(maxsize=64)
def _table(config: FractalConfig, batch: int) -> tuple[tuple[tuple[str, Any], ...], ...]:
    model = _build_meta(config)
    C = config.channels
    rows_out = []
    node, rows = model, batch
    for i, lv in enumerate(config.levels):
        gen = node.generator
        guide = gen.guiding_pixel_head
        cond_dim = config.cond_dim(i)
        params = _params(gen, exclude=guide)
        if i == 0:
            params += _params(getattr(model, "class_emb", None)) + model.fake_latent.numel()
        L, D = lv.seq_len, lv.width
        patches = _meta(rows, L, C, lv.patch_size, lv.patch_size, dtype=torch.long)
        mask = _meta(rows, L, dtype=torch.bool)
        conds = Conditions.repeated(_meta(rows, cond_dim), config.cond_tokens(i))
        if guide is not None:
            conds = conds.with_guiding_pixel(_meta(rows, C))
        full = _count(lambda: gen.predict(patches, mask, conds))
        x = _meta(rows, L, D)
        if lv.kind == "ar":
            paper = _count(lambda: [b(x, gen.rope[1:L + 1]) for b in gen.blocks])
        else:
            paper = _count(lambda: [b(x) for b in gen.blocks])
        prefix = gen.prefix_tokens
        rows_out.append(dict(name=f"g{i + 1}", kind=lv.kind, level=i, seq_len=L, grid=lv.grid,
                             patch=lv.patch_size, width=D, depth=lv.depth, heads=lv.num_heads,
                             params=params, rows=rows, tokens=L + prefix, gflops=full / 1e9,
                             gflops_paper=paper / 1e9))
        if guide is not None:  # the guiding-pixel head: one pixel per sequence entering the level
            g_full, _ = _head_flops(guide, rows, cond_dim, C)
            hc = config.guide_head
            rows_out.append(dict(name=f"g{i + 1}.guide", kind="guide", level=i, seq_len=C, grid=None,
                                 patch=None, width=hc.width, depth=hc.depth, heads=hc.num_heads,
                                 params=_params(guide), rows=rows, tokens=C, gflops=g_full / 1e9,
                                 gflops_paper=None))
        rows *= L
        node = node.next_fractal
    head, hc = node, config.head
    h_full, h_blocks = _head_flops(head, rows, config.levels[-1].width, C)
    rows_out.append(dict(name=f"g{len(config.levels) + 1}", kind="pixel", level=len(config.levels),
                         seq_len=C, grid=None, patch=None, width=hc.width, depth=hc.depth, heads=hc.num_heads,
                         params=_params(head), rows=rows, tokens=C, gflops=h_full / 1e9,
                         gflops_paper=h_blocks / 1e9))
    return tuple(tuple(r.items()) for r in rows_out)


def level_table(config: FractalConfig, batch: int = 1, name: str | None = None) -> list[dict]:
    """One dict per level (generator levels, their guiding-pixel heads, the pixel head).

    Keys: name (g1, g2, g2.guide, …, the pixel head last), kind (ar/mar/guide/pixel), level,
    seq_len, grid, patch, width, depth, heads, params, rows (sequences at this level for `batch`
    images), tokens (sequence length actually run, prefix included), gflops (our full forward),
    gflops_paper (blocks on the patch tokens only; None for guide heads) and table1 (the paper's
    number when `name` is a preset listed in Table 1, else None). See the module docstring.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    rows = [dict(r) for r in _table(config, int(batch))]
    ref = PAPER_TABLE1_GFLOPS.get(name) if name is not None and batch == 1 else None
    non_guide = [r for r in rows if r["kind"] != "guide"]
    for r in rows:
        r["table1"] = None
    if ref is not None and len(ref) == len(non_guide):
        for r, v in zip(non_guide, ref):
            r["table1"] = v
    return rows


def total_params(config: FractalConfig) -> int:
    """Number of parameters of `FractalGen(config)` (built on the meta device)."""
    return _params(_build_meta(config))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_info(config: FractalConfig, name: str | None = None) -> str:
    """A fixed-width per-level table (params, GFLOPs at batch 1) with totals and the parameter count."""
    rows = level_table(config, 1, name)
    has_ref = any(r["table1"] is not None for r in rows)
    cols = ["level", "kind", "seq", "grid", "patch", "width", "depth", "heads", "rows", "params",
            "GFLOPs", "GFLOPs(paper)"] + (["Table1"] if has_ref else [])
    body = []
    for r in rows:
        line = [r["name"], r["kind"], str(r["seq_len"]), _fmt(r["grid"], "d"), _fmt(r["patch"], "d"),
                str(r["width"]), str(r["depth"]), str(r["heads"]), str(r["rows"]), f"{r['params']:,}",
                f"{r['gflops']:.2f}", _fmt(r["gflops_paper"], ".2f")]
        if has_ref:
            line.append(_fmt(r["table1"], ".0f"))
        body.append(line)
    total = sum(r["params"] for r in rows)
    tot = ["total", "", "", "", "", "", "", "", "", f"{total:,}", f"{sum(r['gflops'] for r in rows):.2f}",
           f"{sum(r['gflops_paper'] or 0.0 for r in rows):.2f}"]
    if has_ref:
        tot.append(f"{sum(r['table1'] or 0.0 for r in rows):.0f}")
    widths = [max(len(c), *(len(b[j]) for b in body + [tot])) for j, c in enumerate(cols)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    sizes = "→".join(str(lv.image_size) for lv in config.levels) + "→1"
    title = f"{name or 'model'}: {config.channels}×{config.image_size}×{config.image_size}, levels {sizes}"
    rule = "-" * len(fmt(cols))
    out = [title, fmt(cols), rule, *map(fmt, body), rule, fmt(tot),
           "GFLOPs: one training forward of 1 image, every patch passed down; GFLOPs(paper): transformer "
           "blocks on the patch tokens only (the paper's Table-1 convention).",
           f"total parameters: {total}"]
    return "\n".join(out)
