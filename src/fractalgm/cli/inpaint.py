"""`fractalgm inpaint`: inpaint, outpaint, uncrop or edit images from files or a dataset; one strip
per image (original | masked input | completions)."""
from __future__ import annotations

import sys

import torch

from ..checks import NON_NEGATIVE_INT, POSITIVE_INT, NumberList
from .common import add_model_args, check_output_image, load_model, model_rules, refuse_unused, save_grid_atomic
from .data_args import add_data_args
from .generation import (
    add_sampling_args,
    check_animation_memory,
    check_grid_size,
    check_sampling,
    make_recorder,
    parse_labels,
    sampling_options,
    write_animation,
)


def add_parser(sub):
    q = sub.add_parser("inpaint", help="complete images from known pixels", description=(
        "Inpaint, outpaint, uncrop or edit: keep the known pixels exactly and sample the rest. Writes one "
        "row per image: original | masked input | completions. Example: fractalgm inpaint --dataset-index "
        "0,1,2 --half bottom --num-samples 4 --out strips.png --animate strips.gif"))
    add_model_args(q)
    add_data_args(q)
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
    add_sampling_args(q)
    q.add_argument("--out", default="inpaint.png", help="the image file to write (default: inpaint.png)")
    q.set_defaults(fn=run)


def _mask(args, size: int) -> torch.Tensor:
    from .. import masks

    if args.mask:
        known = masks.from_png(args.mask, size, white_is_known=args.mask_white_known)
        from PIL import Image

        with Image.open(args.mask) as img:
            if img.size != (size, size):
                print(f"note: --mask {args.mask} is {img.size[0]}×{img.size[1]}; resized to the model's "
                      f"{size}×{size} (nearest neighbour)", file=sys.stderr)
        return known
    if args.box:
        try:
            return masks.box(size, *args.box)
        except ValueError as e:
            raise ValueError(f"--box {','.join(map(str, args.box))}: {e}") from None
    if args.half:
        return masks.half(size, args.half)
    flag, value, make = ("--outpaint", args.outpaint, masks.outpaint) if args.outpaint is not None else \
        ("--uncrop", args.uncrop, masks.uncrop)
    try:
        return make(size, value)
    except ValueError as e:
        raise ValueError(f"{flag} {value}: {e} for the model's {size}×{size} images") from None


def run(args):
    from ..viz.animate import paint_unknown

    from_files = "the images come from --image files, not from a dataset"
    refuse_unused(args, model_rules(args) + [
        ("mask_white_known", not args.mask, "it says how to read --mask"),
        *((dest, bool(args.image), from_files) for dest in ("split", "data", "data_dir", "image_size", "channels",
                                                            "skip_bad"))])
    if not args.image:
        from .data_args import data_rules

        refuse_unused(args, data_rules(args))
    check_output_image(args.out)
    model = load_model(args)
    cfg = model.config
    check_sampling(args, model)
    S, K = cfg.image_size, args.num_samples
    true_labels = None
    if args.image:
        from ..data import read_image

        images = torch.stack([read_image(p, cfg.channels, S, say=lambda t: print(f"note: --image {t}", file=sys.stderr))
                              for p in args.image])
    else:
        from ..data import check_images
        from .data_args import open_for_model

        data = open_for_model(args, args.split, cfg.channels, S)
        check_images(data, cfg.channels, S)
        idx = list(args.dataset_index)
        if max(idx) >= len(data):
            raise ValueError(f"--dataset-index must be in [0, {len(data)}) for the {args.split} split, got "
                             f"{max(idx)}")
        images, true_labels = torch.stack([data[i][0] for i in idx]), torch.stack([data[i][1] for i in idx])
    B = len(images)
    if args.label in (None, "none"):
        labels = None
    elif args.label == "data":
        if true_labels is None:
            raise ValueError("--label data needs --dataset-index")
        labels = true_labels
    else:
        labels = torch.tensor(parse_labels(args.label, cfg.num_classes, "--label"))
        labels = labels.expand(B) if labels.numel() == 1 else labels
        if labels.numel() != B:
            raise ValueError(f"--label gives {labels.numel()} labels for {B} images (give one, or one per image)")
    known = _mask(args, S)
    if bool(known.all()):
        raise ValueError("the mask keeps every pixel, so there is nothing to generate; mark the region to "
                         "generate (white in --mask, or --box/--half/--outpaint/--uncrop)")
    if not bool(known.any()):
        print("note: the mask keeps no pixel: every completion is an unconditional sample", file=sys.stderr)
    known = known.expand(B, -1, -1, -1)
    check_grid_size(B * (K + 2), S, args.scale, "inpaint fewer images or fewer --num-samples per run")
    if args.animate:
        check_animation_memory(cfg, args.num_iter and list(args.num_iter), B * K)
    recorder = make_recorder(args)
    out = model.inpaint(images.repeat_interleave(K, 0), known.repeat_interleave(K, 0),
                        None if labels is None else labels.repeat_interleave(K).to(model.device),
                        **sampling_options(args, model), record=recorder).cpu()
    masked = paint_unknown(images, ~known.expand_as(images))
    strips = torch.cat([images[:, None], masked[:, None], out.view(B, K, *out.shape[1:])], 1)
    save_grid_atomic(strips.flatten(0, 1), args.out, nrow=K + 2, scale=args.scale)
    print(f"wrote {B} strip(s) (original | masked input | {K} completions) to {args.out}")
    write_animation(args, recorder, model, nrow=K)
