"""The sampling flags and what `sample` and `inpaint` share: their checks against the model, the
library's sampling options, the progress bar, the recorded animation and output-size limits."""
from __future__ import annotations

import math
import os

import torch

from ..checks import FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SEED, Number, NumberList
from ..io.atomic import atomic_write
from .common import check_output_file, refuse_unused


def add_sampling_args(q):
    """Guidance, temperature, steps, seed and the picture flags of a generating subcommand."""
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
    add_fast_arg(q)
    q.add_argument("--scale", type=Number(int, 1, 64).parse, default=2,
                   help="pixel upscaling of the PNG, 1..64 (default: 2)")
    q.add_argument("--animate", metavar="FILE", help="also write the generation process as a .gif "
                   "(or .mp4 with imageio-ffmpeg): one frame per step of every level (default: none)")
    q.add_argument("--fps", type=Number(float, 0, 1000, low_open=True).parse,
                   help="animation frame rate (default: ~15 s in all, ≤ 50 fps)")


def add_fast_arg(q):
    """`--fast`, the opt-in fast sampling path of sample, inpaint, eval and serve."""
    q.add_argument("--fast", action="store_true", help="the fast path: the same distribution with faster numerics "
                   "(float32 Gumbel draws, bf16 where the hardware has bf16 units), so other images than the exact "
                   "default; docs/speed.md (default: off)")


def parse_labels(text: str | None, num_classes: int, arg: str = "--labels"):
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


def sampling_rules(args, model) -> list:
    """Sampling flags that a model or the other flags make meaningless."""
    all_ar = all(lv.kind == "ar" for lv in model.config.levels)
    off = "guidance is off (--cfg 1)"
    return [("num_iter", all_ar, "every level of this model is AR and takes one step per token"),
            ("cfg_schedule", args.cfg == 1.0, off), ("filter_threshold", args.cfg == 1.0, off),
            ("fps", not args.animate, "it sets the frame rate of --animate")]


def check_sampling(args, model):
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


def sampling_options(args, model) -> dict:
    num_iter = list(args.num_iter) if args.num_iter else None
    if num_iter is not None and len(num_iter) == 1:
        num_iter = num_iter[0]
    return dict(num_iter=num_iter, cfg_scale=args.cfg, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                filter_threshold=args.filter_threshold, fast=args.fast,
                generator=torch.Generator(model.device).manual_seed(args.seed))


class Progress:
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


def make_recorder(args):
    if not args.animate:
        return None
    from ..viz.animate import Recorder, check_path

    check_path(args.animate)  # before the long sampling run
    return Recorder()


def write_animation(args, recorder, model, nrow: int, by_column: bool = False):
    if recorder is None:
        return
    from ..viz.animate import save_animation

    scale = max(1, math.ceil(96 / model.config.image_size))  # each image at least ~96 px on screen
    info = {}
    atomic_write(args.animate, lambda tmp: info.update(save_animation(
        recorder.frames(), tmp, fps=args.fps, nrow=nrow, by_column=by_column, scale=scale)))
    print(f"wrote {args.animate}: {info['frames']} frames at {info['fps']:.0f} fps ({info['seconds']:.1f} s) "
          f"from {len(recorder)} recorded steps")


def check_grid_size(count: int, size: int, scale: int, hint: str):
    """A PNG grid of `count` images must open in a viewer: at most PIL's image-bomb limit of pixels."""
    from PIL import Image

    pixels = count * (size * scale) ** 2
    if pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"a grid of {count:,} images at --scale {scale} is {pixels / 1e6:,.0f} megapixels, more "
                         f"than image viewers open ({Image.MAX_IMAGE_PIXELS / 1e6:.0f}); {hint}")


def check_animation_memory(config, num_iter, count: int):
    """The recorded frames of --animate (one per step of every level, depth first) must fit in memory."""
    from ..sampling import steps_per_level

    frames, run = 1, 1
    for steps in steps_per_level(config, num_iter):
        run *= steps
        frames += run
    need = frames * count * config.channels * config.image_size ** 2 * 2  # uint8 canvas + bool mask per frame
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have // 4:
        raise ValueError(f"--animate would record {frames:,} frames of {count} images ({need / 2**30:.1f} GiB), more "
                         f"than a quarter of this machine's memory ({have / 2**30:.0f} GiB); animate fewer images")
