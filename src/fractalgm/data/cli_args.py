"""Command-line options for data (train, nll, inpaint) and the reference recipe, and how they apply.

Kept here, not in cli.py, so the data options have one owner: every error message in the data
package that names an option names one defined in this file.
"""
from __future__ import annotations

import argparse


def add_data_args(q: argparse.ArgumentParser) -> None:
    """--data and the options that say how its files become model-sized images."""
    q.add_argument("--data", default="fashion_mnist", help="dataset name (fashion_mnist, mnist5k, digits, "
                   "photos) or a path: an image folder (root/[train|val|test/]class/*.jpg, streamed), a folder "
                   "of tar shards from `fractalgm prepare` (WebDataset layout, streamed), CIFAR batches, .npz "
                   "(default: fashion_mnist)")
    q.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files (default: the Debian package's)")
    q.add_argument("--image-size", type=int, help="centre-crop and resize the data to this size (default: the "
                   "model's)")
    q.add_argument("--channels", type=int, choices=[1, 3], help="convert the data to 1 (grayscale) or 3 (RGB) "
                   "channels (default: image folders and shards follow the model; other formats stay as stored)")
    q.add_argument("--skip-bad", action="store_true", help="skip unreadable images, zero-byte files, empty class "
                   "folders and damaged shard ends instead of stopping; skipped files are counted and listed")


def add_train_data_args(t: argparse.ArgumentParser) -> None:
    """Training-only options: data loading, the reference recipe, the global batch under torchrun."""
    from ..recipe import RECIPES

    t.add_argument("--recipe", choices=sorted(RECIPES), help="the paper's ImageNet recipe: AdamW (0.9, 0.95), "
                   "wd 0.05, blr 5e-5, 40 warm-up + cosine to 800 epochs, label drop 0.1, global batch 2048 "
                   "(in64) or 1024 (in256, with gradient checkpointing), NLL over 10 passes for MAR; flags "
                   "given explicitly override it (default: none)")
    t.add_argument("--global-batch", type=int, help="images per optimizer step over all processes; sets "
                   "--grad-accum = global / (batch size × processes) (default: batch size × processes × "
                   "--grad-accum)")
    t.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding image folders and shards "
                   "(0 = in the training process; default 4)")
    t.add_argument("--prefetch", type=int, default=4, help="batches each worker prepares ahead (default 4)")
    t.add_argument("--flip", choices=["auto", "on", "off"], default="auto", help="random horizontal flips "
                   "(default auto: on for natural images — folders, shards, CIFAR, photos — off for digits "
                   "and Fashion-MNIST)")
    t.add_argument("--val-passes", type=int, default=1, help="forward passes averaged per validation NLL "
                   "(default 1; the recipe uses the reference's 10 for MAR models)")
    t.add_argument("--allow-world-change", action="store_true", help="let --resume continue on another number "
                   "of processes at the same global batch (same data order and schedule, but not bit-identical)")


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill the recipe's values into `args` where the user left the default (a flag equal to its
    default counts as not given)."""
    if not getattr(args, "recipe", None):
        return
    from ..presets import get_preset
    from ..recipe import RECIPES
    from ..train import TrainConfig

    recipe = RECIPES[args.recipe]
    if args.preset == "fractalmar_fmnist":  # the train parser's default preset
        args.preset = recipe.preset
    mar = get_preset(args.preset).levels[0].kind == "mar"
    defaults = TrainConfig()
    given_budget = any(getattr(args, k, None) is not None for k in ("steps", "epochs", "minutes"))
    for key, value in recipe.train_settings(mar).items():
        if key in ("steps", "epochs", "minutes"):
            if not given_budget:
                setattr(args, key, value)
            continue
        if hasattr(args, key) and getattr(args, key) in (getattr(defaults, key), None):
            setattr(args, key, value)
    if getattr(args, "label_drop", None) is None:
        args.label_drop = recipe.model_settings()["label_drop_prob"]
    args.grad_checkpointing = args.grad_checkpointing or recipe.grad_checkpointing


def train_data_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields set by the options above."""
    return {"workers": args.workers, "prefetch": args.prefetch,
            "flip": {"auto": None, "on": True, "off": False}[args.flip], "global_batch": args.global_batch,
            "allow_world_change": args.allow_world_change, "val_passes": args.val_passes}


def open_for_model(args: argparse.Namespace, split: str, channels: int, image_size: int):
    """The split of --data, shaped for a model of `channels` × `image_size`² (streaming where possible)."""
    from .load import is_streamable, open_dataset

    streaming = is_streamable(args.data)
    return open_dataset(args.data, split, data_dir=args.data_dir, image_size=args.image_size or image_size,
                        channels=args.channels or (channels if streaming else None), skip_bad=args.skip_bad)
