"""`fractalgm sample` and `fractalgm inpaint`, and the model loading and sampling-option checks they
share with `nll`: parse, check everything before the model runs, call the library, write atomically."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ..io.atomic import atomic_write
from .common import (
    check_animation_memory,
    check_grid_size,
    check_output_file,
    check_output_folder,
    check_output_image,
    model_rules,
    refuse_unused,
    sampling_rules,
    save_grid_atomic,
)


def _labels(text: str | None, num_classes: int, arg: str = "--labels"):
    if text is None:
        return None
    if num_classes == 0:
        raise ValueError(f"{arg} {text}: this model is unconditional (no classes); omit {arg}")
    if text == "all":
        return list(range(num_classes))
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        labels = []
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"{arg} must be 'all' or comma-separated class ids in [0, {num_classes}), got {text!r}")
    return labels


def _check_sampling(args, model):
    """The sampling options against this model, before sampling starts."""
    refuse_unused(args, sampling_rules(args, model))
    levels = len(model.config.levels)
    if args.num_iter is not None and len(args.num_iter) not in (1, levels):
        raise ValueError(f"--num-iter needs one value or one per level ({levels}), got "
                         f"{','.join(map(str, args.num_iter))}")
    labelled = getattr(args, "labels", getattr(args, "label", None)) not in (None, "none") or \
        (str(getattr(args, "out", "")).endswith(".npz") and model.config.num_classes > 0)  # .npz: balanced labels
    if args.cfg != 1.0 and not labelled:
        raise ValueError(f"--cfg {args.cfg:g}: classifier-free guidance needs labels (give --labels / --label, "
                         "or --cfg 1)")
    if args.animate:
        from ..viz.animate import check_path

        try:
            check_path(args.animate)
        except ValueError as e:
            raise ValueError(f"--animate {args.animate}: {e}") from None
        check_output_file(args.animate, "--animate")


def _load_model(args):
    from ..models import FractalGen, create_model
    from ..presets import list_presets
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    if getattr(args, "preset", None):
        if args.preset not in list_presets():
            raise SystemExit(f"unknown preset {args.preset!r}; see `fractalgm info --list`")
        return create_model(args.preset).to(device).eval()
    return FractalGen.from_pretrained(args.model, device=device)


# ---------------------------------------------------------------------------- sample
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


def cmd_sample(args):
    _refuse_unused_sample_flags(args)
    if args.out.endswith(".npz"):
        check_output_file(args.out, "--out", {".npz"}, kind="sample file")
    else:
        check_output_image(args.out)
    if args.save_each:
        check_output_folder(args.save_each, "--save-each")
    model = _load_model(args)
    cfg = model.config
    _check_sampling(args, model)
    if args.out.endswith(".npz"):  # samples at scale, ADM format, resumable, one share per torchrun rank
        from ..evaluate.samples import run_sample_npz
        return run_sample_npz(args, model, _sampling_options(args, model))
    labels = _labels(args.labels, cfg.num_classes)
    if labels is not None:
        labels = torch.tensor(labels).repeat_interleave(args.per_label)
    count = len(labels) if labels is not None else args.num_images
    check_grid_size(count, cfg.image_size, args.scale, f"write them with --num-images {count} --out samples.npz")
    if args.animate:
        check_animation_memory(cfg, args.num_iter and list(args.num_iter), count)
    recorder = _recorder(args)
    options = _sampling_options(args, model)
    with _Progress(model, options["num_iter"], recorder) as progress:
        images = model.sample(labels.to(model.device) if labels is not None else None,
                              num_images=None if labels is not None else args.num_images,
                              **options, record=progress).cpu()
    nrow = args.per_label if labels is not None else max(1, int(math.sqrt(len(images))))
    save_grid_atomic(images, args.out, nrow=nrow, by_column=labels is not None, scale=args.scale)
    print(f"wrote {len(images)} samples to {args.out}")
    _write_animation(args, recorder, model, nrow=nrow, by_column=labels is not None)
    if args.save_each:
        folder = Path(args.save_each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_grid_atomic(img[None], folder / f"{i:05d}.png", nrow=1, scale=1)
        print(f"wrote {len(images)} files to {folder}")


class _Progress:
    """A `record` callback that advances a progress bar at every top-level step and feeds `inner`."""

    def __init__(self, model, num_iter, inner=None):
        from tqdm import tqdm

        from ..sampling import steps_per_level

        total = steps_per_level(model.config, num_iter)[0]
        self.inner = inner
        self.bar = tqdm(total=total, unit="step", desc="sampling (top level)", dynamic_ncols=True)

    def __call__(self, level, canvas, unknown):
        if self.inner is not None:
            self.inner(level, canvas, unknown)
        if level == 0:
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def _sampling_options(args, model) -> dict:
    num_iter = list(args.num_iter) if args.num_iter else None
    if num_iter is not None and len(num_iter) == 1:
        num_iter = num_iter[0]
    return dict(num_iter=num_iter, cfg=args.cfg, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                filter_threshold=args.filter_threshold,
                generator=torch.Generator(model.device).manual_seed(args.seed))


def _recorder(args):
    if not args.animate:
        return None
    from ..viz.animate import Recorder, check_path

    check_path(args.animate)  # before the long sampling run
    return Recorder()


def _write_animation(args, recorder, model, nrow: int, by_column: bool = False):
    if recorder is None:
        return
    from ..viz.animate import save_animation

    scale = max(1, math.ceil(96 / model.config.image_size))  # each image at least ~96 px on screen
    info = {}
    atomic_write(args.animate, lambda tmp: info.update(save_animation(
        recorder.frames(), tmp, fps=args.fps, nrow=nrow, by_column=by_column, scale=scale)))
    print(f"wrote {args.animate}: {info['frames']} frames at {info['fps']:.0f} fps ({info['seconds']:.1f} s) "
          f"from {len(recorder)} recorded steps")


# ---------------------------------------------------------------------------- inpaint
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


def cmd_inpaint(args):
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
    model = _load_model(args)
    cfg = model.config
    _check_sampling(args, model)
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
        labels = torch.tensor(_labels(args.label, cfg.num_classes, "--label"))
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
    recorder = _recorder(args)
    out = model.inpaint(images.repeat_interleave(K, 0), known.repeat_interleave(K, 0),
                        None if labels is None else labels.repeat_interleave(K).to(model.device),
                        **_sampling_options(args, model), record=recorder).cpu()
    masked = paint_unknown(images, ~known.expand_as(images))
    strips = torch.cat([images[:, None], masked[:, None], out.view(B, K, *out.shape[1:])], 1)
    save_grid_atomic(strips.flatten(0, 1), args.out, nrow=K + 2, scale=args.scale)
    print(f"wrote {B} strip(s) (original | masked input | {K} completions) to {args.out}")
    _write_animation(args, recorder, model, nrow=K)
