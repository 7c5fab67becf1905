"""Command-line options for data (train, nll, inpaint) and the reference recipe, and how they apply.

Kept in one file so the data options have one owner: every error message in the data
package that names an option names one defined in this file.
"""
from __future__ import annotations

import argparse

from ..checks import POSITIVE_INT


def add_data_args(q: argparse.ArgumentParser, default: bool = True) -> None:
    """--data and the options that say how its files become model-sized images.

    `default=False` leaves them unset when not given, so `train --resume` can read the saved ones."""
    def unset(value):
        return {"default": value if default else argparse.SUPPRESS}

    q.add_argument("--data", **unset("fashion_mnist"), help="dataset name (fashion_mnist, mnist5k, digits, "
                   "photos) or a path: an image folder (root/[train|val|test/]class/*.jpg, streamed), a folder "
                   "of tar shards from `fractalgm prepare` (WebDataset layout, streamed), CIFAR batches, .npz "
                   "(default: fashion_mnist)")
    q.add_argument("--data-dir", **unset(None), help="directory with the Fashion-MNIST IDX files (default: the "
                   "Debian package's, else a cache)")
    q.add_argument("--image-size", type=POSITIVE_INT.parse, **unset(None), help="centre-crop and resize the data "
                   "to this size (default: the model's)")
    q.add_argument("--channels", type=int, choices=[1, 3], **unset(None), help="convert the data to 1 (grayscale) "
                   "or 3 (RGB) channels (default: image folders and shards follow the model; other formats stay "
                   "as stored)")
    q.add_argument("--skip-bad", action="store_true", **unset(False), help="skip unreadable images, zero-byte "
                   "files, empty class folders and damaged shard ends instead of stopping; skipped files are "
                   "counted and listed (default: off)")


def add_recipe_arg(t: argparse.ArgumentParser) -> None:
    from ..training.recipe import RECIPES

    t.add_argument("--recipe", choices=sorted(RECIPES), default=argparse.SUPPRESS, help="the paper's ImageNet "
                   "recipe: AdamW (0.9, 0.95), wd 0.05, blr 5e-5, 40 warm-up + cosine to 800 epochs, label drop "
                   "0.1, global batch 2048 (in64) or 1024 (in256, with gradient checkpointing), NLL over 10 "
                   "passes for MAR; flags given explicitly override it (default: none)")


def apply_recipe(name: str, train: dict, run: dict, given: set[str]) -> None:
    """Fill the recipe's TrainConfig values into `train` and its model options into `run`, except
    where a flag was given (`given`: the names of the options on the command line)."""
    from ..presets import get_preset
    from ..training.config import BUDGETS
    from ..training.recipe import RECIPES

    recipe = RECIPES[name]
    if "preset" not in given:
        run["preset"] = recipe.preset
    mar = get_preset(run["preset"]).levels[0].kind == "mar"
    budget_given = any(b in given for b in BUDGETS)
    for key, value in recipe.train_settings(mar).items():
        if key in BUDGETS:
            if not budget_given:
                train[key] = value
        elif key not in given:
            train[key] = value
    if "label_drop" not in given:
        run["label_drop"] = recipe.model_settings()["label_drop_prob"]
    if "grad_checkpointing" not in given:
        run["grad_checkpointing"] = recipe.grad_checkpointing


def open_for_model(options, split: str, channels: int, image_size: int):
    """The split of `options.data` (a Namespace of the data options above), shaped for a model of
    `channels` × `image_size`² (streaming where possible)."""
    from ..data.load import is_streamable, open_dataset

    streaming = is_streamable(options.data)
    return open_dataset(options.data, split, data_dir=options.data_dir, image_size=options.image_size or image_size,
                        channels=options.channels or (channels if streaming else None), skip_bad=options.skip_bad)


def data_rules(options) -> list:
    """(dest, unused?, why) for the data options that `options.data` cannot honour (see cli.common.refuse_unused)."""
    from ..data.sources import BUILTIN_DATASETS

    builtin = options.data in BUILTIN_DATASETS
    return [("data_dir", options.data != "fashion_mnist", f"it locates the Fashion-MNIST files; --data is {options.data}"),
            ("skip_bad", builtin, f"the built-in {options.data} has no image files to skip")]
