"""Pieces shared by the subcommands: the model flags and loading, output-path checks, atomic writes of
results, and the refusal of flags that would do nothing.

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

from ..checks import parse_device
from ..io.atomic import atomic_write

DEFAULT_MODEL = "fmnist-ar"  # the best shipped model: 2.811 exact test bits/dim, 91% of cfg-1.5 samples classified as their label


# ---------------------------------------------------------------------------- the model
def add_model_args(q):
    """--model, --preset, --device: which model runs, and where."""
    from ..presets import list_presets

    q.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model folder or shipped model name (default: {DEFAULT_MODEL})")
    q.add_argument("--preset", choices=list_presets(), metavar="PRESET", help="use an untrained preset "
                   f"instead of --model (for testing), one of: {', '.join(list_presets())} (default: none)")
    q.add_argument("--device", default="auto", type=parse_device,
                   help="cpu, cuda, cuda:N, mps or auto (default: auto)")


def load_model(args):
    """The model of --model (a folder or shipped name) or an untrained --preset, on --device."""
    from ..models import FractalGen, create_model
    from ..presets import list_presets
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    if getattr(args, "preset", None):
        if args.preset not in list_presets():
            raise SystemExit(f"unknown preset {args.preset!r}; see `fractalgm info --list`")
        return create_model(args.preset).to(device).eval()
    return FractalGen.from_pretrained(args.model, device=device)


# ---------------------------------------------------------------------------- outputs
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
