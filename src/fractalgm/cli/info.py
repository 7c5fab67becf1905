"""`fractalgm info`: the presets and shipped models, or one preset's per-level table."""
from __future__ import annotations

from ..presets import list_presets
from .common import refuse_unused


def add_parser(sub):
    i = sub.add_parser("info", help="per-level table of a preset", description=(
        "Sequence length, patch, width, depth, heads, parameters and training-forward GFLOPs per level."))
    i.add_argument("--preset", choices=list_presets(), metavar="PRESET",
                   help=f"the preset to describe, one of: {', '.join(list_presets())} (default: list them)")
    i.add_argument("--list", action="store_true", help="list presets and shipped models (default: off)")
    i.set_defaults(fn=run)


def run(args):
    from ..evaluate.flops import format_info
    from ..presets import get_preset, list_presets

    refuse_unused(args, [("preset", args.list, "--list lists every preset; give one of them")])
    if args.list or not args.preset:
        from ..io.checkpoint import list_pretrained

        print("presets:", ", ".join(list_presets()))
        print("shipped models:", ", ".join(list_pretrained()) or "(none)")
        return
    print(format_info(get_preset(args.preset), name=args.preset))
