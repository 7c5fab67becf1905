"""`fractalgm convert`: a checkpoint of the reference implementation → a model folder."""
from __future__ import annotations

import torch

from ..presets import list_presets


def add_parser(sub):
    c = sub.add_parser("convert", help="reference .pth → model folder", description=(
        "Convert a checkpoint of the reference implementation (LTH14/fractalgen) into a model folder."))
    c.add_argument("checkpoint", help="the reference .pth file")
    c.add_argument("--out", required=True, help="the model folder to write")
    c.add_argument("--preset", choices=list_presets(), metavar="PRESET",
                   help=f"the matching preset, one of: {', '.join(list_presets())} (default: inferred from the keys)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="cast the weights (default: keep the stored dtype)")
    c.set_defaults(fn=run)


def run(args):
    from ..io.convert import convert_reference

    model = convert_reference(args.checkpoint, args.out, preset=args.preset,
                              dtype=getattr(torch, args.dtype) if args.dtype else None)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.checkpoint} → {args.out} ({n:,} parameters)")
