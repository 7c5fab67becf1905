"""The `fractalgm` command line: train | sample | inpaint | nll | eval | info | convert."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

DEFAULT_MODEL = "fmnist-mar"


def _labels(text: str | None, num_classes: int):
    if text is None:
        return None
    if text == "all":
        return list(range(num_classes))
    return [int(v) for v in text.split(",") if v.strip()]


def _load_model(args):
    from .models import FractalGen
    from .presets import create_model, list_presets
    from .train import resolve_device

    device = resolve_device(args.device)
    if getattr(args, "preset", None):
        if args.preset not in list_presets():
            raise SystemExit(f"unknown preset {args.preset!r}; see `fractalgm info --list`")
        return create_model(args.preset).to(device).eval()
    return FractalGen.from_pretrained(args.model, device=device)


# ---------------------------------------------------------------------------- train
def cmd_train(args):
    from .data import check_images, load_dataset
    from .models import FractalGen
    from .presets import get_preset
    from .train import TrainConfig, Trainer

    cfg = get_preset(args.preset)
    train_set = load_dataset(args.data, "train", data_dir=args.data_dir, image_size=cfg.image_size)
    val_set = load_dataset(args.data, "val", data_dir=args.data_dir, image_size=cfg.image_size)
    overrides = {"num_classes": train_set.num_classes} if cfg.num_classes != train_set.num_classes else {}
    if args.grad_checkpointing:
        overrides["grad_checkpointing"] = True
    if args.r_weight is not None:
        overrides["r_weight"] = args.r_weight
    if args.label_drop is not None:
        overrides["label_drop_prob"] = args.label_drop
    if args.unconditional:
        overrides["num_classes"] = 0
    cfg = cfg.replace(**overrides) if overrides else cfg
    check_images(train_set, cfg.channels, cfg.image_size)
    if sum(v is not None for v in (args.steps, args.epochs, args.minutes)) != 1:
        raise SystemExit("give exactly one budget: --steps, --epochs or --minutes")
    tcfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, blr=args.blr, weight_decay=args.weight_decay,
                       warmup=args.warmup, steps=args.steps, epochs=args.epochs, minutes=args.minutes,
                       grad_clip=args.grad_clip, grad_accum=args.grad_accum, ema_decay=args.ema_decay,
                       amp=args.amp, seed=args.seed, log_every=args.log_every, eval_every=args.eval_every,
                       save_every=args.save_every, val_images=args.val_images, device=args.device)
    torch.manual_seed(args.seed)
    trainer = Trainer(FractalGen(cfg), train_set, Path(args.out), tcfg, val_set=val_set)
    if args.resume:
        trainer.resume()
        print(f"resumed {args.out} at step {trainer.step}")
    say = print if trainer.main else (lambda *a, **k: None)
    n = sum(p.numel() for p in trainer.model.parameters())
    say(f"training {args.preset} ({n:,} parameters) on {train_set.name} ({len(train_set):,} images) "
          f"on {trainer.device} × {trainer.world} process(es); run folder {args.out}")
    last = trainer.fit()
    say(json.dumps(last))
    say(f"model folder: {Path(args.out) / 'model'} (load with FractalGen.from_pretrained)")


# ---------------------------------------------------------------------------- sample
def cmd_sample(args):
    from .viz import save_grid

    model = _load_model(args)
    cfg = model.config
    if args.out.endswith(".npz"):  # samples at scale, ADM format, resumable, one share per torchrun rank
        from .evaluate.samples import run_sample_npz
        return run_sample_npz(args, model, _sampling_options(args, model))
    labels = _labels(args.labels, cfg.num_classes)
    if labels is not None:
        labels = torch.tensor(labels).repeat_interleave(args.per_label)
    recorder = _recorder(args)
    options = _sampling_options(args, model)
    with _Progress(model, options["num_iter"], recorder) as progress:
        images = model.sample(labels.to(model.device) if labels is not None else None,
                              num_images=None if labels is not None else args.num_images,
                              **options, record=progress).cpu()
    nrow = args.per_label if labels is not None else max(1, int(math.sqrt(len(images))))
    save_grid(images, args.out, nrow=nrow, by_column=labels is not None, scale=args.scale)
    print(f"wrote {len(images)} samples to {args.out}")
    _write_animation(args, recorder, model, nrow=nrow, by_column=labels is not None)
    if args.save_each:
        folder = Path(args.save_each)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_grid(img[None], folder / f"{i:05d}.png", nrow=1, scale=1)
        print(f"wrote {len(images)} files to {folder}")


class _Progress:
    """A `record` callback that advances a progress bar at every top-level step and feeds `inner`."""

    def __init__(self, model, num_iter, inner=None):
        from tqdm import tqdm

        top = model.config.levels[0]
        steps = num_iter if isinstance(num_iter, int) else (num_iter or model.default_num_iter())[0]
        total = top.seq_len if top.kind == "ar" else min(top.seq_len, steps)
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
    num_iter = [int(v) for v in args.num_iter.split(",")] if args.num_iter else None
    if num_iter is not None and len(num_iter) == 1:
        num_iter = num_iter[0]
    return dict(num_iter=num_iter, cfg=args.cfg, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                filter_threshold=args.filter_threshold,
                generator=torch.Generator(model.device).manual_seed(args.seed))


def _recorder(args):
    if not args.animate:
        return None
    from .animate import Recorder, check_path

    check_path(args.animate)  # before the long sampling run
    return Recorder()


def _write_animation(args, recorder, model, nrow: int, by_column: bool = False):
    if recorder is None:
        return
    from .animate import save_animation

    scale = max(1, math.ceil(96 / model.config.image_size))  # each image at least ~96 px on screen
    info = save_animation(recorder.frames(), args.animate, fps=args.fps, nrow=nrow, by_column=by_column,
                          scale=scale)
    print(f"wrote {args.animate}: {info['frames']} frames at {info['fps']:.0f} fps ({info['seconds']:.1f} s) "
          f"from {len(recorder)} recorded steps")


# ---------------------------------------------------------------------------- inpaint
def _mask(args, size: int) -> torch.Tensor:
    from . import masks

    if args.mask:
        return masks.from_png(args.mask, size, white_is_known=args.mask_white_known)
    if args.box:
        parts = [int(v) for v in args.box.split(",")]
        if len(parts) != 4:
            raise ValueError(f"--box takes TOP,LEFT,HEIGHT,WIDTH, got {args.box!r}")
        return masks.box(size, *parts)
    if args.half:
        return masks.half(size, args.half)
    if args.outpaint is not None:
        return masks.outpaint(size, args.outpaint)
    return masks.uncrop(size, args.uncrop)


def _read_image(path: str, channels: int, size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    from .data import center_crop_arr

    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the image {path}: {e}") from e
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.array(img) if img.size == (size, size) else center_crop_arr(img, size)
    arr = arr.reshape(size, size, channels)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def cmd_inpaint(args):
    from .animate import paint_unknown
    from .viz import save_grid

    model = _load_model(args)
    cfg = model.config
    S, K = cfg.image_size, args.num_samples
    true_labels = None
    if args.image:
        images = torch.stack([_read_image(p, cfg.channels, S) for p in args.image])
    else:
        from .data import check_images, load_dataset

        data = load_dataset(args.data, args.split, data_dir=args.data_dir, image_size=S)
        check_images(data, cfg.channels, S)
        idx = [int(v) for v in args.dataset_index.split(",")]
        if min(idx) < 0 or max(idx) >= len(data):
            raise ValueError(f"--dataset-index must be in [0, {len(data)}) for the {args.split} split")
        images, true_labels = data.images[idx], data.labels[idx]
    B = len(images)
    if args.label in (None, "none"):
        labels = None
    elif args.label == "data":
        if true_labels is None:
            raise ValueError("--label data needs --dataset-index")
        labels = true_labels
    else:
        labels = torch.tensor(_labels(args.label, cfg.num_classes))
        labels = labels.expand(B) if labels.numel() == 1 else labels
        if labels.numel() != B:
            raise ValueError(f"--label gives {labels.numel()} labels for {B} images (give one, or one per image)")
    known = _mask(args, S).expand(B, -1, -1, -1)
    recorder = _recorder(args)
    out = model.inpaint(images.repeat_interleave(K, 0), known.repeat_interleave(K, 0),
                        None if labels is None else labels.repeat_interleave(K).to(model.device),
                        **_sampling_options(args, model), record=recorder).cpu()
    masked = paint_unknown(images, ~known.expand_as(images))
    strips = torch.cat([images[:, None], masked[:, None], out.view(B, K, *out.shape[1:])], 1)
    save_grid(strips.flatten(0, 1), args.out, nrow=K + 2, scale=args.scale)
    print(f"wrote {B} strip(s) (original | masked input | {K} completions) to {args.out}")
    _write_animation(args, recorder, model, nrow=K)


# ---------------------------------------------------------------------------- nll
def cmd_nll(args):
    from .data import check_images, load_dataset
    from .evaluate.likelihood import dataset_bpd

    model = _load_model(args)
    data = load_dataset(args.data, args.split, data_dir=args.data_dir, image_size=model.config.image_size)
    check_images(data, model.config.channels, model.config.image_size)
    n = min(len(data), args.limit) if args.limit else len(data)
    r = dataset_bpd(model, data.images[:n], data.labels[:n] if args.conditional else None,
                    batch_size=args.batch_size, passes=args.passes, exact=args.exact, order=args.order, seed=args.seed)
    result = {"bpd": r["bpd"], "stderr": r["stderr"], "masking_stderr": r["masking_stderr"], "images": n,
              "split": args.split, "kind": r["kind"], "conditional": args.conditional,
              "model": args.preset or args.model}
    print(f"{r['bpd']:.4f} ± {r['stderr']:.4f} bits/dim over {n} {args.split} images ({r['kind']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------------------- info / convert
def cmd_info(args):
    from .flops import format_info
    from .presets import get_preset, list_presets

    if args.list or not args.preset:
        from .checkpoint import list_pretrained

        print("presets:", ", ".join(list_presets()))
        print("shipped models:", ", ".join(list_pretrained()) or "(none)")
        return
    print(format_info(get_preset(args.preset), name=args.preset))


def cmd_convert(args):
    from .checkpoint import convert_reference

    model = convert_reference(args.checkpoint, args.out, preset=args.preset,
                              dtype=getattr(torch, args.dtype) if args.dtype else None)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {args.checkpoint} → {args.out} ({n:,} parameters)")


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fractalgm", description=(
        "Fractal generative models: AR/MAR transformers nested level by level, generating images pixel "
        "by pixel with exact likelihoods."))
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(q):
        q.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"model folder or shipped model name (default: {DEFAULT_MODEL})")
        q.add_argument("--preset", help="use an untrained preset instead of --model (for testing)")
        q.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")

    def sampling_args(q):
        q.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
        q.add_argument("--cfg-schedule", default="constant", choices=["constant", "linear"])
        q.add_argument("--temperature", type=float, default=1.0, help="logits are divided by it (<1 sharpens)")
        q.add_argument("--filter-threshold", type=float, default=1e-4)
        q.add_argument("--num-iter", help="MAR steps per level, e.g. 49,16 (default: one per token, ≤ 64)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--scale", type=int, default=2, help="pixel upscaling of the PNG")
        q.add_argument("--animate", metavar="FILE", help="also write the generation process as a .gif "
                       "(or .mp4 with imageio-ffmpeg): one frame per step of every level")
        q.add_argument("--fps", type=float, help="animation frame rate (default: ~15 s in all, ≤ 50 fps)")

    def data_args(q):
        q.add_argument("--data", default="fashion_mnist", help="dataset name (fashion_mnist, mnist5k, digits, "
                       "photos) or a path (ImageFolder, CIFAR batches dir, .npz)")
        q.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")

    t = sub.add_parser("train", help="train a preset on a dataset", description=(
        "Train a model. Writes metrics.jsonl, loss.png, sample grids, an EMA model folder and a "
        "resumable train_state.pt into --out. Example: fractalgm train --preset fractalmar_fmnist "
        "--minutes 60 --out runs/fmnist"))
    t.add_argument("--preset", default="fractalmar_fmnist")
    data_args(t)
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--steps", type=int)
    t.add_argument("--epochs", type=float)
    t.add_argument("--minutes", type=float, help="training-time budget; the LR schedule follows the clock")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, help="absolute learning rate (default: blr·batch/256)")
    t.add_argument("--blr", type=float, default=3e-3, help="base LR, lr = blr·batch/256 (default 3e-3 for "
                   "small CPU runs; the reference's ImageNet recipe uses 5e-5 at batch 2048)")
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the run")
    t.add_argument("--grad-clip", type=float, default=3.0)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--grad-checkpointing", action="store_true")
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--r-weight", type=float, help="training weight of the first generated channel "
                   "(the reference trains RGB models with 5)")
    t.add_argument("--label-drop", type=float, help="probability of dropping a label in training, for CFG "
                   "(default: the preset's, 0.1)")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    t.add_argument("--unconditional", action="store_true", help="ignore labels (num_classes = 0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=20)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--val-images", type=int, default=500)
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true", help="continue from --out/train_state.pt")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="write a PNG grid of samples", description=(
        "Sample images. Example: fractalgm sample --labels all --per-label 8 --cfg 2 --out grid.png"))
    model_args(s)
    s.add_argument("--labels", help="comma-separated class ids, or 'all'; omit for unconditional samples")
    s.add_argument("--per-label", type=int, default=8, help="samples per label (one column per label)")
    s.add_argument("--num-images", type=int, default=16, help="unconditional samples when no labels "
                   "(with --out X.npz: the total, class-balanced for conditional models)")
    s.add_argument("--batch-size", type=int, default=64, help="with --out X.npz: images per sampling batch")
    sampling_args(s)
    s.add_argument("--out", default="samples.png")
    s.add_argument("--save-each", help="also write each image to this folder")
    s.set_defaults(fn=cmd_sample)

    q = sub.add_parser("inpaint", help="complete images from known pixels", description=(
        "Inpaint, outpaint, uncrop or edit: keep the known pixels exactly and sample the rest. Writes one "
        "row per image: original | masked input | completions. Example: fractalgm inpaint --dataset-index "
        "0,1,2 --half bottom --num-samples 4 --out strips.png --animate strips.gif"))
    model_args(q)
    data_args(q)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", nargs="+", help="image file(s); centre-cropped and resized to the model size")
    src.add_argument("--dataset-index", help="comma-separated indices into --data/--split")
    q.add_argument("--split", default="test")
    region = q.add_mutually_exclusive_group(required=True)
    region.add_argument("--mask", help="mask image: white = generate, black = keep (see --mask-white-known)")
    region.add_argument("--box", help="generate a box: TOP,LEFT,HEIGHT,WIDTH in pixels")
    region.add_argument("--half", choices=["left", "right", "top", "bottom"], help="generate this half")
    region.add_argument("--outpaint", type=int, metavar="BORDER", help="generate a border this many pixels wide")
    region.add_argument("--uncrop", type=int, metavar="CROP", help="keep only the centred CROP×CROP square")
    q.add_argument("--mask-white-known", action="store_true", help="in --mask, white marks the pixels to keep")
    q.add_argument("--label", help="class id (all images), one per image, 'data' (the dataset's labels) or "
                   "omit for unconditional completions; another class than the image's edits it")
    q.add_argument("--num-samples", type=int, default=4, help="completions per image")
    sampling_args(q)
    q.add_argument("--out", default="inpaint.png")
    q.set_defaults(fn=cmd_inpaint)

    n = sub.add_parser("nll", help="bits/dim on a dataset split", description=(
        "Negative log-likelihood in bits/dim. AR models are exact; MAR models give the random-masking "
        "estimate (--passes) or, with --exact, the exact value under a fixed order."))
    model_args(n)
    data_args(n)
    n.add_argument("--split", default="test")
    n.add_argument("--limit", type=int, help="only the first N images")
    n.add_argument("--batch-size", type=int, default=100)
    n.add_argument("--passes", type=int, default=1)
    n.add_argument("--exact", action="store_true")
    n.add_argument("--order", default="random", choices=["random", "raster"])
    n.add_argument("--conditional", action="store_true", help="class-conditional NLL (default: unconditional)")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--json", help="also write the result here")
    n.set_defaults(fn=cmd_nll)

    i = sub.add_parser("info", help="per-level table of a preset", description=(
        "Sequence length, patch, width, depth, heads, parameters and training-forward GFLOPs per level."))
    i.add_argument("--preset")
    i.add_argument("--list", action="store_true")
    i.set_defaults(fn=cmd_info)

    from .cli_eval import add_parser as add_eval_parser
    add_eval_parser(sub)

    c = sub.add_parser("convert", help="reference .pth → model folder", description=(
        "Convert a checkpoint of the reference implementation (LTH14/fractalgen) into a model folder."))
    c.add_argument("checkpoint")
    c.add_argument("--out", required=True)
    c.add_argument("--preset", help="the matching preset (inferred from the keys when omitted)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    c.set_defaults(fn=cmd_convert)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
