"""Does `torch.compile` speed up the AR decode step? Measured on the shipped model's two AR levels.

Three ways to decode one token through a level's blocks, timed in turns in one process:
* `generic`: each block's forward with a `KVCache` (how sampling decoded before `models/decode.py`);
* `lean`: `models.decode.Decoder.step`, the exact path (same numbers as `generic`, bit for bit);
* `compiled`: a static-shape step for `torch.compile` (fixed batch and cache length, the position
  a tensor, attention over the whole cache under a mask, so one graph serves every position); its
  numbers differ from the exact path's at the rounding level.

    python benchmarks/decode_compile.py --threads 2 --rows 200     # batch 100 at cfg ≠ 1
    python benchmarks/decode_compile.py --device cuda --mode reduce-overhead   # the compiled step in CUDA graphs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fractalgm import FractalGen
from fractalgm.models.decode import Decoder, rope_tables
from fractalgm.models.layers import KVCache

REPO = Path(__file__).resolve().parents[1]


def static_step(blocks, cos, sin, rows: int, max_len: int):
    """A decode step with static shapes, for `torch.compile`: step(x, pos, cache) → x."""
    first = blocks[0].attention
    H = first.num_heads
    D = first.wqkv.weight.size(1)
    d = D // H

    def step(x, pos, cache):
        keep = (torch.arange(max_len, device=x.device) <= pos).view(1, max_len)
        c, s = cos.index_select(0, pos.view(1)), sin.index_select(0, pos.view(1))
        for i, blk in enumerate(blocks):
            a = blk.attention
            qkv = F.linear(blk.attention_norm.forward(x), a.wqkv.weight).view(rows, 1, 3, H, d)
            qk = qkv[:, :, :2]
            qk = qk * c + qk.reshape(rows, 1, 2, H, d // 2, 2).flip(-1).flatten(-2) * s
            cache[i, 0].index_copy_(2, pos.view(1), qk[:, 0, 1].unsqueeze(2))
            cache[i, 1].index_copy_(2, pos.view(1), qkv[:, 0, 2].unsqueeze(2))
            out = F.scaled_dot_product_attention(qk[:, :, 0].transpose(1, 2), cache[i, 0], cache[i, 1], attn_mask=keep)
            x = x + F.linear(out.transpose(1, 2).reshape(rows, 1, D), a.wo.weight)
            ff = blk.feed_forward
            h = blk.ffn_norm.forward(x)
            x = x + F.linear(F.silu(F.linear(h, ff.w1.weight)) * F.linear(h, ff.w3.weight), ff.w2.weight)
        return x

    return step


def measure(level, rows: int, rounds: int, mode: str) -> dict:
    g = level
    L, D, device = g.cfg.seq_len + 1, g.cfg.width, g.rope.device
    x = torch.randn(rows, 1, D, device=device)
    cos, sin = rope_tables(g.rope)
    cache = torch.zeros(len(g.blocks), 2, rows, g.cfg.num_heads, L, g.cfg.head_dim, device=device)
    positions = torch.arange(L, device=device)
    compiled = torch.compile(static_step(g.blocks, cos, sin, rows, L), fullgraph=True, dynamic=False, mode=mode)
    t0 = time.perf_counter()
    for _ in range(3):  # CUDA graphs ("reduce-overhead") record on a later call than the first
        compiled(x, positions[0], cache)
    sync(device)
    compile_s = time.perf_counter() - t0

    def generic():
        caches = [KVCache(rows, g.cfg.num_heads, L, g.cfg.head_dim, device, torch.float32) for _ in g.blocks]
        for s in range(L):
            y = x
            for block, c in zip(g.blocks, caches):
                y = block(y, g.rope[s:s + 1], c, s)

    def lean():
        dec = Decoder(g.blocks, g.rope, rows, L)
        for s in range(L):
            dec.step(x, s)

    def comp():
        for s in range(L):
            compiled(x, positions[s], cache)

    ways = {"generic": generic, "lean": lean, "compiled": comp}
    times = {k: [] for k in ways}
    for r in range(rounds):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            sync(device)
            t0 = time.perf_counter()
            ways[name]()
            sync(device)
            times[name].append((time.perf_counter() - t0) / L * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens": L, "width": D, "depth": len(g.blocks), "rows": rows, "compile_s": compile_s,
            "ms_per_step": ms, "lean_speedup_vs_generic": ms["generic"] / ms["lean"],
            "compiled_speedup_vs_lean": ms["lean"] / ms["compiled"]}


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="default", help="torch.compile mode; reduce-overhead runs CUDA graphs on a GPU")
    p.add_argument("--out", type=Path, help="default benchmarks/results/decode_compile_<device>[_<mode>]_<threads>t.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = FractalGen.from_pretrained(args.model, device=args.device).eval()
    levels, level = [], model
    while hasattr(level, "generator"):
        levels.append(level.generator)
        level = level.next_fractal
    report = {"model": args.model, "threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "device": args.device, "mode": args.mode, "levels": []}
    with torch.no_grad():
        for i, g in enumerate(levels):
            r = measure(g, args.rows, args.rounds, args.mode)
            report["levels"].append(r)
            print(f"level {i} ({r['depth']} blocks of width {r['width']}, {r['tokens']} positions, {r['rows']} rows): "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in r["ms_per_step"].items())
                  + f" per step; compile {r['compile_s']:.0f} s")
    mode = "" if args.mode == "default" else f"_{args.mode}"
    out = args.out or REPO / "benchmarks" / "results" / f"decode_compile_{args.device}{mode}_{args.threads}t.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
