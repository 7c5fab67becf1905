"""Pieces shared by the subcommands: output-path checks, atomic writes of results.

Outputs are checked before any work starts (a sampling run must not end, minutes later, on an
unwritable path or a file name without an image extension) and written atomically, so a failed or
interrupted write never leaves a half-written PNG or JSON in place of a good one.
"""
from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import fields
from pathlib import Path

from ..io.atomic import atomic_write


def image_suffixes() -> set[str]:
    """File extensions PIL can write."""
    from PIL import Image

    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def _probe_folder(folder: Path, arg: str):
    """Create `folder` if needed and prove a file can be written there (permissions, read-only disks)."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{arg}: cannot write into {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fractalgm-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{arg}: cannot write into {folder} ({e.strerror or e})") from None


def check_output_file(path: str | os.PathLike, arg: str, suffixes: set[str] | tuple[str, ...] | None = None,
                      kind: str = "file") -> Path:
    """Refuse, before the work, an output that could not be written: a folder, a wrong type, no access."""
    path = Path(path)
    if path.is_dir():
        example = path / ("output" + (sorted(suffixes)[0] if suffixes else ""))
        raise ValueError(f"{arg} {path} is a folder; give a file name such as {example}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        shown = ", ".join(s for s in (".png", ".jpg", ".gif", ".webp", ".json") if s in suffixes) or \
            ", ".join(sorted(suffixes))
        what = "has no file extension" if not path.suffix else f"{path.suffix!r} is not a {kind} type we can write"
        raise ValueError(f"{arg} {path}: {what}; use one of {shown} (e.g. {path.with_suffix('.png' if kind == 'image' else '.json')})")
    _probe_folder(path.parent if str(path.parent) else Path("."), arg)
    return path


def check_output_image(path, arg: str = "--out") -> Path:
    return check_output_file(path, arg, image_suffixes(), kind="image")


def check_output_folder(path, arg: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {path} is a file; give a folder")
    _probe_folder(path, arg)
    return path


def save_grid_atomic(images, path, **kwargs):
    from ..viz.grid import save_grid

    return atomic_write(path, lambda tmp: save_grid(images, tmp, **kwargs))


def write_text_atomic(path, text: str):
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, types: dict | None = None):
    """One flag per dataclass field, from its metadata (`check`, `help`) and its default.

    Flags are left unset when not given (argparse.SUPPRESS), so a caller can tell an explicit value
    from a default, e.g. to let `--resume` read the saved ones. `types` overrides the parse function.
    """
    from ..checks import Choice

    group = parser.add_argument_group(title)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        check, text = f.metadata.get("check"), f.metadata.get("help", "").replace("%", "%%")
        default = f.default
        shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=f"{text} (default: {'on' if default else 'off'})")
            continue
        kwargs = {"default": argparse.SUPPRESS, "metavar": f.name.upper()}
        if isinstance(check, Choice):
            kwargs.update(choices=check.options)
            kwargs.pop("metavar")
        elif (types or {}).get(f.name):
            kwargs["type"] = types[f.name]
        elif check is not None:
            kwargs["type"] = check.parse
            text = f"{text}; {check.describe()}"
        group.add_argument(flag, help=f"{text} (default: {shown})", **kwargs)


# ---------------------------------------------------------------------------- flags that would do nothing
def given_flags(build_parser, argv) -> set[str]:
    """The dests of the flags the user typed: the same parse with every default suppressed."""
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:  # argparse keeps no record of which values were typed
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"fn", "command"}


def refuse_unused(args, rules):
    """Refuse the first typed flag whose rule says it has no effect: `rules` is (dest, unused?, why)."""
    given = getattr(args, "given", None)
    if given is None:  # called from Python, not from the command line: nothing to check
        return
    for dest, unused, why in rules:
        if dest in given and unused:
            raise ValueError(f"--{dest.replace('_', '-')} has no effect here: {why}")


def model_rules(args) -> list:
    return [("preset", "model" in args.given, "--preset builds an untrained model instead of --model; give one")]


def sampling_rules(args, model) -> list:
    """Sampling flags that a model or the other flags make meaningless."""
    all_ar = all(lv.kind == "ar" for lv in model.config.levels)
    off = "guidance is off (--cfg 1)"
    return [("num_iter", all_ar, "every level of this model is AR and takes one step per token"),
            ("cfg_schedule", args.cfg == 1.0, off), ("filter_threshold", args.cfg == 1.0, off),
            ("fps", not args.animate, "it sets the frame rate of --animate")]


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
