"""Reference checkpoints: reading `LTH14/fractalgen` `.pth` files, checking them against a model,
inferring their preset and converting them into our folder format (`fractalgm.io.checkpoint`).

`.pth` files are read with `torch.load(..., weights_only=True)` only — never unpickling arbitrary
objects. Training checkpoints of the reference also pickle an `argparse.Namespace` (spec §12.4);
that one class is allow-listed for the retry. The reference's key names are ours, so conversion is a
strict `load_state_dict` plus a report of anything that does not match.
"""
from __future__ import annotations

import argparse
import functools
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..config import FractalConfig
from ..models import FractalGen
from ..presets import get_preset, list_presets
from .checkpoint import CheckpointError, LoadReport, compare_state_dict, save_pretrained

_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "ema")
_PREFIXES = ("module.", "_orig_mod.")

__all__ = ["LoadReport", "load_reference_state_dict", "compare_state_dict", "load_reference", "infer_preset",
           "convert_reference"]


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        # training checkpoints of the reference pickle their argparse.Namespace (spec §12.4):
        # allow exactly that class, still under the weights-only unpickler
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors; fractalgm only reads checkpoints with "
                f"torch.load(weights_only=True) and will not run arbitrary code. If you trust the file, "
                f"re-save just its state_dict (torch.save(ckpt['model'], 'weights.pth')) and convert that. "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from first


def load_reference_state_dict(path_or_state_dict, key: str | None = None) -> dict[str, torch.Tensor]:
    """The model weights of a reference checkpoint (a `.pth` path or an already loaded object).

    Unwraps `{"model": …}` (or `key`, or "state_dict" / "model_ema" / "ema") and strips DDP
    `module.` and torch.compile `_orig_mod.` prefixes. Files are read with weights_only=True.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict).expanduser()
        if not path.is_file():
            raise CheckpointError(f"reference checkpoint {path} does not exist")
        try:
            obj = _torch_load(path)
        except CheckpointError:
            raise
        except Exception as e:  # truncated zip, not a torch file, ...
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint, or it is truncated "
                                  f"({type(e).__name__}: {e}); re-download it") from e
        where = str(path)
    else:
        obj, where = path_or_state_dict, "the given object"
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        keys = [key] if key is not None else [k for k in _WRAPPER_KEYS if k in obj]
        if key is not None and key not in obj:
            raise CheckpointError(f"{where} has no entry {key!r}; entries: {', '.join(map(str, obj))}")
        for k in keys:
            if _is_state_dict(obj[k]):
                obj = obj[k]
                break
    if not _is_state_dict(obj):
        what = f"entries: {', '.join(map(str, obj))}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"could not find a state_dict of tensors in {where} ({what}); pass key=... "
                              "to pick the entry holding the weights")
    return _strip_prefixes(obj)


def load_reference(model: torch.nn.Module, state_dict, strict: bool = True) -> LoadReport:
    """Load a reference state_dict (or `.pth` path) into `model`; returns a `LoadReport`.

    strict: raise a CheckpointError (a ValueError) listing missing/unexpected/mismatched keys and
    suggesting the matching preset. Non-strict: load every key whose name and shape match.
    """
    state_dict = load_reference_state_dict(state_dict)
    report = compare_state_dict(model, state_dict)
    if not report.ok and strict:
        msg = "the checkpoint does not fit this model:\n" + report.describe()
        preset = infer_preset(state_dict)
        if preset is not None:
            msg += f"\nits keys and shapes match the preset {preset!r}: build the model with get_preset({preset!r})"
        else:
            msg += ("\nno preset matches it exactly; build a FractalConfig with the reference's lists "
                    "(FractalConfig.from_reference_lists) and the same num_conds / guiding_pixel / class_num")
        raise CheckpointError(msg)
    bad = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in state_dict.items() if k not in bad and k not in report.unexpected}
    model.load_state_dict(usable, strict=False)
    return report


@functools.lru_cache(maxsize=None)
def _preset_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = FractalGen(get_preset(name))
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def infer_preset(state_dict) -> str | None:
    """The preset whose model has exactly these keys and shapes, or None."""
    state_dict = load_reference_state_dict(state_dict)
    want = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in list_presets():
        shapes = _preset_shapes(name)
        if len(shapes) == len(want) and all(want.get(k) == s for k, s in shapes):
            return name
    return None


def convert_reference(pth_path: str | os.PathLike, out_folder: str | os.PathLike,
                      preset: str | FractalConfig | None = None, dtype: torch.dtype | None = None,
                      key: str | None = None):
    """Convert a reference `.pth` checkpoint into a fractalgm checkpoint folder; returns the model.

    `preset` is a preset name or a FractalConfig; by default it is inferred from the keys and shapes.
    """
    state = load_reference_state_dict(pth_path, key=key)
    if preset is None:
        preset = infer_preset(state)
        if preset is None:
            raise CheckpointError(f"{pth_path} matches none of the presets ({', '.join(list_presets())}); "
                                  "pass preset= (a name or a FractalConfig built with "
                                  "FractalConfig.from_reference_lists)")
    config = get_preset(preset) if isinstance(preset, str) else preset
    model = FractalGen(config)
    load_reference(model, state, strict=True)
    save_pretrained(model, out_folder, dtype=dtype)
    return model.eval()
