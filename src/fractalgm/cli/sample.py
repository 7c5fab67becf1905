"""`fractalgm sample`: a PNG grid of samples, or an ADM-format .npz of many (resumable, one share per
torchrun rank)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..checks import POSITIVE_INT
from .common import (
    add_model_args,
    check_output_file,
    check_output_folder,
    check_output_image,
    load_model,
    model_rules,
    refuse_unused,
    save_grid_atomic,
)
from .generation import (
    Progress,
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
    s = sub.add_parser("sample", help="write a PNG grid of samples", description=(
        "Sample images. Example: fractalgm sample --labels all --per-label 8 --cfg 1.5 --out grid.png"))
    add_model_args(s)
    s.add_argument("--labels", help="comma-separated class ids, or 'all' (default: none, unconditional samples)")
    s.add_argument("--per-label", type=POSITIVE_INT.parse, default=8,
                   help="samples per label, one column per label (default: 8)")
    s.add_argument("--num-images", type=POSITIVE_INT.parse, default=16,
                   help="unconditional samples when no --labels; with --out X.npz the total, class-balanced for "
                   "conditional models (default: 16)")
    s.add_argument("--batch-size", type=POSITIVE_INT.parse, default=64,
                   help="with --out X.npz: images per sampling batch (default: 64)")
    add_sampling_args(s)
    s.add_argument("--out", default="samples.png", help="the PNG (or other image file) to write, or an ADM-format .npz "
                   "of --num-images samples for evaluation (default: samples.png)")
    s.add_argument("--save-each", help="also write each image to this folder (default: none)")
    s.set_defaults(fn=run)


def _refuse_unused_sample_flags(args):
    npz, labelled = args.out.endswith(".npz"), args.labels not in (None, "none")
    png = "it applies to a PNG grid, not to --out X.npz"
    refuse_unused(args, model_rules(args) + [
        ("per_label", npz, "with --out X.npz, --num-images is the total (class-balanced)"),
        ("per_label", not labelled, "it counts samples per label: give --labels (or --num-images for "
                                    "unconditional samples)"),
        ("num_images", labelled and not npz, "with --labels the grid holds --per-label images per label"),
        ("batch_size", not npz, "a PNG grid is sampled in one batch; --batch-size applies to --out X.npz"),
        ("scale", npz, png), ("save_each", npz, png), ("animate", npz, png)])


def run(args):
    _refuse_unused_sample_flags(args)
    if args.out.endswith(".npz"):
        check_output_file(args.out, "--out", {".npz"}, kind="sample file")
    else:
        check_output_image(args.out)
    if args.save_each:
        check_output_folder(args.save_each, "--save-each")
    model = load_model(args)
    cfg = model.config
    check_sampling(args, model)
    if args.out.endswith(".npz"):  # samples at scale, ADM format, resumable, one share per torchrun rank
        return _run_npz(args, model, sampling_options(args, model))
    labels = parse_labels(args.labels, cfg.num_classes)
    if labels is not None:
        labels = torch.tensor(labels).repeat_interleave(args.per_label)
    count = len(labels) if labels is not None else args.num_images
    check_grid_size(count, cfg.image_size, args.scale, f"write them with --num-images {count} --out samples.npz")
    if args.animate:
        check_animation_memory(cfg, args.num_iter and list(args.num_iter), count)
    recorder = make_recorder(args)
    options = sampling_options(args, model)
    with Progress(model, options["num_iter"], recorder) as progress:
        images = model.sample(labels.to(model.device) if labels is not None else None,
                              num_images=None if labels is not None else args.num_images,
                              **options, record=progress).cpu()
    nrow = args.per_label if labels is not None else max(1, int(math.sqrt(len(images))))
    save_grid_atomic(images, args.out, nrow=nrow, by_column=labels is not None, scale=args.scale)
    print(f"wrote {len(images)} samples to {args.out}")
    write_animation(args, recorder, model, nrow=nrow, by_column=labels is not None)
    if args.save_each:
        folder = Path(args.save_each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_grid_atomic(img[None], folder / f"{i:05d}.png", nrow=1, scale=1)
        print(f"wrote {len(images)} files to {folder}")


def _run_npz(args, model, options: dict) -> Path | None:
    """`fractalgm sample --out X.npz`: --num-images in total; --labels (default: all classes) cycle, 'none'
    for unconditional samples. Joins the torchrun process group when launched by torchrun."""
    from ..evaluate.samples import generate_samples_npz
    from ..runtime import init_distributed

    _, world, local_rank = init_distributed()
    if world > 1 and model.device.type == "cuda":  # one GPU per rank
        torch.cuda.set_device(local_rank)
        model = model.to(torch.device("cuda", local_rank))
    options = {k: v for k, v in options.items() if k != "generator"}  # per-batch seeds instead
    text = getattr(args, "labels", None)
    conditional = model.config.num_classes > 0 and text != "none"
    label_list = None if text in (None, "all", "none") else [int(v) for v in text.split(",") if v.strip()]
    out = generate_samples_npz(model, args.out, args.num_images, batch_size=args.batch_size, conditional=conditional,
                               label_list=label_list, seed=args.seed, **options)
    if out is not None:
        print(f"wrote {args.num_images} samples to {out} (arr_0 uint8 NHWC" + (", arr_1 labels)" if conditional else ")"))
    return out
