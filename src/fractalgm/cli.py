"""The `fractalgm` command line: train | sample | inpaint | nll | eval | info | convert | prepare | serve.

Each flag's type checks its range (validate.py), and outputs are checked before the work starts
(cli_common.py), so a bad input fails at once with a one-line message naming the flag and the value.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import cli_train
from .cli_generate import _load_model, cmd_inpaint, cmd_sample
from .cli_common import check_output_file, given_flags, model_rules, refuse_unused, write_text_atomic
from .data.cli_args import add_data_args as data_args, data_rules
from .validate import (FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, Number, NumberList,
                       parse_device)

DEFAULT_MODEL = "fmnist-ar"  # the best shipped model: 2.811 exact test bits/dim, 91% of cfg-1.5 samples classified as their label


# ---------------------------------------------------------------------------- nll
def cmd_nll(args):
    from .data import check_images
    from .data.cli_args import open_for_model
    from .evaluate.likelihood import dataset_bpd

    if args.json:
        check_output_file(args.json, "--json")
    refuse_unused(args, model_rules(args) + data_rules(args) + [
        ("passes", args.exact, "--exact scores each image once, under one fixed order"),
        ("order", not args.exact, "the order is fixed only with --exact (random masking has none)")])
    model = _load_model(args)
    all_ar = all(lv.kind == "ar" for lv in model.config.levels)
    refuse_unused(args, [
        ("passes", all_ar, "this model's levels are all AR: its NLL is exact, one pass"),
        ("order", all_ar, "AR levels always score in raster order"),
        ("seed", all_ar or (args.exact and args.order == "raster"), "this NLL draws no random masks or orders"),
        ("conditional", model.config.num_classes == 0, "this model is unconditional (no classes)")])
    data = open_for_model(args, args.split, model.config.channels, model.config.image_size)
    check_images(data, model.config.channels, model.config.image_size)
    n = min(len(data), args.limit) if args.limit else len(data)
    r = dataset_bpd(model, data, conditional=args.conditional, limit=n, batch_size=args.batch_size,
                    passes=args.passes, exact=args.exact, order=args.order, seed=args.seed)
    result = {"bpd": r["bpd"], "stderr": r["stderr"], "masking_stderr": r["masking_stderr"], "images": n,
              "split": args.split, "kind": r["kind"], "conditional": args.conditional,
              "model": args.preset or args.model}
    print(f"{r['bpd']:.4f} ± {r['stderr']:.4f} bits/dim over {n} {args.split} images ({r['kind']})")
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------- info / convert
def cmd_info(args):
    from .flops import format_info
    from .presets import get_preset, list_presets

    refuse_unused(args, [("preset", args.list, "--list lists every preset; give one of them")])
    if args.list or not args.preset:
        from .checkpoint import list_pretrained

        print("presets:", ", ".join(list_presets()))
        print("shipped models:", ", ".join(list_pretrained()) or "(none)")
        return
    print(format_info(get_preset(args.preset), name=args.preset))


def cmd_convert(args):
    from .convert import convert_reference

    model = convert_reference(args.checkpoint, args.out, preset=args.preset,
                              dtype=getattr(torch, args.dtype) if args.dtype else None)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.checkpoint} → {args.out} ({n:,} parameters)")


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .presets import list_presets

    p = argparse.ArgumentParser(prog="fractalgm", description=(
        "Fractal generative models: AR/MAR transformers nested level by level, generating images pixel "
        "by pixel with exact likelihoods."))
    sub = p.add_subparsers(dest="command", required=True)
    presets = ", ".join(list_presets())

    def model_args(q):
        q.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"model folder or shipped model name (default: {DEFAULT_MODEL})")
        q.add_argument("--preset", choices=list_presets(), metavar="PRESET", help="use an untrained preset "
                       f"instead of --model (for testing), one of: {presets} (default: none)")
        q.add_argument("--device", default="auto", type=parse_device,
                       help="cpu, cuda, cuda:N, mps or auto (default: auto)")

    def sampling_args(q):
        q.add_argument("--cfg", type=NON_NEGATIVE.parse, default=1.0,
                       help="classifier-free guidance scale, ≥ 0; 1 = off (default: 1)")
        q.add_argument("--cfg-schedule", default="constant", choices=["constant", "linear"],
                       help="guidance over the steps: constant, or rising linearly from 1 (default: constant)")
        q.add_argument("--temperature", type=POSITIVE.parse, default=1.0,
                       help="logits are divided by it, > 0; < 1 sharpens (default: 1)")
        q.add_argument("--filter-threshold", type=FRACTION.parse, default=1e-4, help="under guidance, tokens "
                       "whose conditional probability is below it are not pushed further; in [0, 1] (default: 1e-4)")
        q.add_argument("--num-iter", type=NumberList(POSITIVE_INT).parse, metavar="N[,N…]", help="MAR steps per "
                       "level (one value, or one per level), e.g. 49,16 (default: one per token, ≤ 64)")
        q.add_argument("--seed", type=SEED.parse, default=0, help="random seed; same seed, same images (default: 0)")
        q.add_argument("--scale", type=Number(int, 1, 64).parse, default=2,
                       help="pixel upscaling of the PNG, 1..64 (default: 2)")
        q.add_argument("--animate", metavar="FILE", help="also write the generation process as a .gif "
                       "(or .mp4 with imageio-ffmpeg): one frame per step of every level (default: none)")
        q.add_argument("--fps", type=Number(float, 0, 1000, low_open=True).parse,
                       help="animation frame rate (default: ~15 s in all, ≤ 50 fps)")

    cli_train.add_parser(sub)

    s = sub.add_parser("sample", help="write a PNG grid of samples", description=(
        "Sample images. Example: fractalgm sample --labels all --per-label 8 --cfg 1.5 --out grid.png"))
    model_args(s)
    s.add_argument("--labels", help="comma-separated class ids, or 'all' (default: none, unconditional samples)")
    s.add_argument("--per-label", type=POSITIVE_INT.parse, default=8,
                   help="samples per label, one column per label (default: 8)")
    s.add_argument("--num-images", type=POSITIVE_INT.parse, default=16,
                   help="unconditional samples when no --labels; with --out X.npz the total, class-balanced for "
                   "conditional models (default: 16)")
    s.add_argument("--batch-size", type=POSITIVE_INT.parse, default=64,
                   help="with --out X.npz: images per sampling batch (default: 64)")
    sampling_args(s)
    s.add_argument("--out", default="samples.png", help="the PNG (or other image file) to write, or an ADM-format .npz "
                   "of --num-images samples for evaluation (default: samples.png)")
    s.add_argument("--save-each", help="also write each image to this folder (default: none)")
    s.set_defaults(fn=cmd_sample)

    q = sub.add_parser("inpaint", help="complete images from known pixels", description=(
        "Inpaint, outpaint, uncrop or edit: keep the known pixels exactly and sample the rest. Writes one "
        "row per image: original | masked input | completions. Example: fractalgm inpaint --dataset-index "
        "0,1,2 --half bottom --num-samples 4 --out strips.png --animate strips.gif"))
    model_args(q)
    data_args(q)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", nargs="+", help="image file(s); centre-cropped and resized to the model size "
                     "(a note says so)")
    src.add_argument("--dataset-index", type=NumberList(NON_NEGATIVE_INT).parse,
                     help="comma-separated indices into --data/--split")
    q.add_argument("--split", default="test", choices=["train", "val", "test", "train_full"],
                   help="dataset split (default: test)")
    region = q.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image: white = generate, black = keep (see --mask-white-known); "
                        "resized to the model size (a note says so)")
    region.add_argument("--box", type=NumberList(NON_NEGATIVE_INT, 4).parse, metavar="TOP,LEFT,HEIGHT,WIDTH",
                        help="generate a box, in pixels")
    region.add_argument("--half", choices=["left", "right", "top", "bottom"], help="generate this half")
    region.add_argument("--outpaint", type=NON_NEGATIVE_INT.parse, metavar="BORDER",
                        help="generate a border this many pixels wide")
    region.add_argument("--uncrop", type=NON_NEGATIVE_INT.parse, metavar="CROP",
                        help="keep only the centred CROP×CROP square")
    q.add_argument("--mask-white-known", action="store_true",
                   help="in --mask, white marks the pixels to keep (default: off)")
    q.add_argument("--label", help="class id (all images), one per image, 'data' (the dataset's labels) or "
                   "omit for unconditional completions; another class than the image's edits it (default: none)")
    q.add_argument("--num-samples", type=POSITIVE_INT.parse, default=4, help="completions per image (default: 4)")
    sampling_args(q)
    q.add_argument("--out", default="inpaint.png", help="the image file to write (default: inpaint.png)")
    q.set_defaults(fn=cmd_inpaint)

    n = sub.add_parser("nll", help="bits/dim on a dataset split", description=(
        "Negative log-likelihood in bits/dim. AR models are exact; MAR models give the random-masking "
        "estimate (--passes) or, with --exact, the exact value under a fixed order."))
    model_args(n)
    data_args(n)
    n.add_argument("--split", default="test", choices=["train", "val", "test", "train_full"],
                   help="dataset split (default: test)")
    n.add_argument("--limit", type=POSITIVE_INT.parse, help="only the first N images, N ≥ 1 (default: all)")
    n.add_argument("--batch-size", type=POSITIVE_INT.parse, default=100, help="images per batch (default: 100)")
    n.add_argument("--passes", type=POSITIVE_INT.parse, default=1,
                   help="random-masking passes per image, MAR models (default: 1)")
    n.add_argument("--exact", action="store_true", help="exact NLL under a fixed order, MAR models (default: off)")
    n.add_argument("--order", default="random", choices=["random", "raster"],
                   help="the fixed order of --exact (default: random)")
    n.add_argument("--conditional", action="store_true", help="class-conditional NLL (default: unconditional)")
    n.add_argument("--seed", type=SEED.parse, default=0, help="seed of the masks and orders (default: 0)")
    n.add_argument("--json", help="also write the result to this file (default: none)")
    n.set_defaults(fn=cmd_nll)

    i = sub.add_parser("info", help="per-level table of a preset", description=(
        "Sequence length, patch, width, depth, heads, parameters and training-forward GFLOPs per level."))
    i.add_argument("--preset", choices=list_presets(), metavar="PRESET",
                   help=f"the preset to describe, one of: {presets} (default: list them)")
    i.add_argument("--list", action="store_true", help="list presets and shipped models (default: off)")
    i.set_defaults(fn=cmd_info)

    from .cli_eval import add_parser as add_eval_parser
    add_eval_parser(sub)

    c = sub.add_parser("convert", help="reference .pth → model folder", description=(
        "Convert a checkpoint of the reference implementation (LTH14/fractalgen) into a model folder."))
    c.add_argument("checkpoint", help="the reference .pth file")
    c.add_argument("--out", required=True, help="the model folder to write")
    c.add_argument("--preset", choices=list_presets(), metavar="PRESET",
                   help=f"the matching preset, one of: {presets} (default: inferred from the keys)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="cast the weights (default: keep the stored dtype)")
    c.set_defaults(fn=cmd_convert)
    from .data import prepare_cli
    prepare_cli.add_parser(sub)
    from .codec.cli import add_parser as add_codec_parser; add_codec_parser(sub)
    from .serve.command import add_parser as add_serve_parser
    add_serve_parser(sub)
    return p


def main(argv=None):
    """Parse and run; a bad input or a failed run exits with a one-line `error:` (2: input, 1: run)."""
    from .train_checkpoint import NonFiniteLoss, SaveError

    args = build_parser().parse_args(argv)
    args.given = given_flags(build_parser, argv)  # a typed flag that would do nothing is refused
    try:
        args.fn(args)  # nothing is returned: the console script would print it and exit 1
    except (NonFiniteLoss, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
