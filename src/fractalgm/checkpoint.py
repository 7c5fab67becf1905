"""Checkpoints: a folder with `config.json` + `model.safetensors`, and reference-checkpoint conversion.

Our format::

    folder/
      config.json          FractalConfig.to_json()
      model.safetensors    the state_dict; metadata: format, dtype, fractalgm version and a copy of
                           the config (so a weights file always knows which config it belongs to)

Writes are atomic. `save_pretrained` writes both files into a fresh temporary sibling directory,
fsyncs them, then swaps directories (old → hidden backup name, new → place, backup removed). An
interrupted or failing save leaves the previous checkpoint untouched; if the process dies between the
two renames, the previous checkpoint survives under `.<name>.old-*` next to it and the loader says so.
If the target folder holds files we do not own (e.g. a training run folder with logs), we never
replace the directory: the two files are replaced one by one with `os.replace` (weights first), and
the config copy inside the weights lets the loader detect a torn pair instead of silently mixing.

Reference checkpoints (`LTH14/fractalgen` `.pth` files) are read with
`torch.load(..., weights_only=True)` only — never unpickling arbitrary objects. Training
checkpoints of the reference also pickle an `argparse.Namespace` (spec §12.4); that one class is
allow-listed for the retry. The reference's key names are ours, so conversion is a strict
`load_state_dict` plus a report of anything that does not match.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import FractalConfig
from .presets import get_preset, list_presets

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
_OWNED = {CONFIG_NAME, WEIGHTS_NAME}
_WRAPPER_KEYS = ("model", "state_dict", "model_ema", "ema")
_PREFIXES = ("module.", "_orig_mod.")

__all__ = [
    "CheckpointError", "LoadReport", "atomic_write", "save_pretrained", "read_metadata", "load_pretrained", "list_pretrained",
    "resolve_pretrained", "load_reference_state_dict", "load_reference", "infer_preset",
    "convert_reference", "compare_state_dict",
]


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message says what to do."""


# ============================================================================ save
def _fsync_file(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file so that readers see the old one or the complete new one, never a torn one.

    `write(tmp)` fills a temporary sibling (same suffix, so writers that infer the format from it
    work); it is fsynced and renamed over `path`. On any failure (a full disk, a file-size limit, an
    exception in `write`) the temporary file is removed and the previous `path` is untouched. The one
    helper for every file we write: training state, logs, plots, sample grids, CLI outputs.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _export_state(model: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors (floating ones cast to `dtype`), no two sharing storage."""
    out, seen = {}, set()
    for key, t in model.state_dict().items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t
    return out


def _dtype_name(state: dict[str, torch.Tensor]) -> str:
    names = {str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()}
    return names.pop() if len(names) == 1 else ("mixed" if names else "none")


def _write_files(model, directory: Path, dtype: torch.dtype | None, suffix: str = "",
                 extra: Mapping[str, str] | None = None):
    """Write weights then config into `directory` (names + suffix), fsynced."""
    from . import __version__

    state = _export_state(model, dtype)
    config_text = model.config.to_json()
    meta = {**(extra or {}), "format": "pt", "library": "fractalgm", "fractalgm_version": __version__,
            "dtype": _dtype_name(state), "config": config_text}
    weights, config = directory / (WEIGHTS_NAME + suffix), directory / (CONFIG_NAME + suffix)
    save_file(state, str(weights), metadata=meta)
    _fsync_file(weights)
    with open(config, "w", encoding="utf-8") as f:
        f.write(config_text + "\n")
        f.flush()
        os.fsync(f.fileno())
    return weights, config


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike, dtype: torch.dtype | None = None,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Save `model` (a FractalGen) to `folder` as `config.json` + `model.safetensors`, atomically.

    `dtype` (e.g. torch.bfloat16) casts floating tensors for shipping; the loader casts back.
    `metadata` adds string entries to the weights file's header (the trainer records its step there).
    An existing checkpoint in `folder` is replaced only once the new one is completely on disk.
    Returns the folder path.
    """
    if not hasattr(model, "config") or not isinstance(model.config, FractalConfig):
        raise TypeError("save_pretrained expects a FractalGen (a module with a FractalConfig `.config`)")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype (e.g. torch.bfloat16), got {dtype}")
    folder = Path(folder).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder; choose another output path")
    folder.parent.mkdir(parents=True, exist_ok=True)
    foreign = folder.is_dir() and any(p.name not in _OWNED for p in folder.iterdir())

    if foreign:  # never replace a directory holding files we do not own: swap the two files
        tag = f".tmp-{uuid.uuid4().hex[:8]}"
        weights = config = None
        try:
            weights, config = _write_files(model, folder, dtype, tag, metadata)
            os.replace(weights, folder / WEIGHTS_NAME)
            os.replace(config, folder / CONFIG_NAME)
            _fsync_dir(folder)
        finally:
            for p in (weights, config):
                if p is not None and p.exists():
                    p.unlink()
            for p in folder.glob(f"*{tag}"):  # a writer that failed half way
                p.unlink()
        return folder

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _write_files(model, tmp, dtype, extra=metadata)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700: give the folder normal permissions
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        _fsync_dir(tmp)
        if folder.exists():
            backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, backup)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(backup, folder)
                raise
            _fsync_dir(folder.parent)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, folder)
            _fsync_dir(folder.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ============================================================================ load
def list_pretrained() -> list[str]:
    """Short names of the models shipped inside the package (`fractalgm/pretrained/<name>/`)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir()
                  if p.is_dir() and (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file())


def resolve_pretrained(folder_or_name: str | os.PathLike) -> Path:
    """The checkpoint folder for a path (folder, or a file inside it) or a shipped model's name."""
    path = Path(folder_or_name).expanduser()
    if path.is_file():
        if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            raise CheckpointError(f"{path} looks like a PyTorch pickle (e.g. a reference checkpoint); "
                                  "convert it first with fractalgm.checkpoint.convert_reference "
                                  "(or `fractalgm convert`)")
        if path.name in _OWNED:
            return path.parent
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    if path.is_dir():
        return path
    shipped = list_pretrained()
    if str(folder_or_name) in shipped:
        return PRETRAINED_DIR / str(folder_or_name)
    hint = ""
    if path.parent.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
        if leftovers:
            hint = (f" A save into it was interrupted; the previous checkpoint is intact at {leftovers[-1]} "
                    f"(rename it to {path.name}).")
    raise CheckpointError(f"no checkpoint folder {str(folder_or_name)!r} and no shipped model of that name "
                          f"(shipped: {', '.join(shipped) or 'none'}).{hint}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    folder = path.parent
    if not path.is_file():
        raise CheckpointError(f"{WEIGHTS_NAME} is missing in {folder}; re-download or re-save the checkpoint")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ...: truncated or not a safetensors file
        raise CheckpointError(f"{WEIGHTS_NAME} in {folder} is truncated or corrupt ({type(e).__name__}: {e}); "
                              "re-download or re-save it") from e
    return state, meta


def read_metadata(folder_or_name: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a checkpoint's weights file (without reading the tensors)."""
    path = resolve_pretrained(folder_or_name) / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - missing, truncated or not safetensors
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e})") from e


def _check_finite(state: dict[str, torch.Tensor], folder: Path):
    """NaN or inf weights give NaN likelihoods and garbage samples: refuse them at load."""
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (first 5 of {len(bad)})" if len(bad) > 5 else ""
        raise CheckpointError(f"{WEIGHTS_NAME} in {folder} holds non-finite values (NaN or inf) in {len(bad)} "
                              f"tensor(s){more}: {', '.join(bad[:5])}. The model cannot give valid results; "
                              "re-save it from a healthy training state")


def _read_config(folder: Path) -> FractalConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{CONFIG_NAME} is missing in {folder}; a checkpoint folder needs "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained)")
    try:
        return FractalConfig.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{CONFIG_NAME} in {folder} is not a valid fractalgm config ({e})") from e


def load_pretrained(folder_or_name: str | os.PathLike, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = torch.float32):
    """Load a FractalGen saved by `save_pretrained` (a folder, or the name of a shipped model).

    Floating weights are cast to `dtype` (default float32; None keeps the stored dtype) and the
    model is moved to `device`. Returned in eval mode.
    """
    from .models import FractalGen

    folder = resolve_pretrained(folder_or_name)
    config = _read_config(folder)
    state, meta = _read_safetensors(folder / WEIGHTS_NAME)
    if "config" in meta:
        try:
            same = FractalConfig.from_json(meta["config"]) == config
        except (ValueError, TypeError, KeyError):
            same = False
        if not same:
            raise CheckpointError(f"{CONFIG_NAME} and {WEIGHTS_NAME} in {folder} come from different saves "
                                  "(an interrupted or concurrent save?); re-save the checkpoint")
    _check_finite(state, folder)
    model = FractalGen(config)
    report = compare_state_dict(model, state)
    if not report.ok:
        raise CheckpointError(f"{WEIGHTS_NAME} in {folder} does not match its {CONFIG_NAME}:\n"
                              + report.describe())
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model.to(dtype=dtype)
    elif (stored := meta.get("dtype")) and stored not in ("mixed", "none", "float32"):
        model.to(dtype=getattr(torch, stored))
    if device is not None:
        model.to(device)
    return model.eval()


# ============================================================================ reference checkpoints
@dataclass
class LoadReport:
    """How a state_dict fits a model: keys it lacks, extra keys, and shape mismatches."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        lines = []

        def block(title, items):
            if items:
                more = f" (first {limit})" if len(items) > limit else ""
                lines.append(f"  {title}: {len(items)}{more}")
                lines.extend(f"    {x}" for x in items[:limit])

        block("missing keys (in the model, not in the checkpoint)", self.missing)
        block("unexpected keys (in the checkpoint, not in the model)", self.unexpected)
        block("shape mismatches (checkpoint vs model)",
              [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.mismatched])
        return "\n".join(lines) if lines else "  all keys and shapes match"


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


def compare_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
    """Compare a state_dict with `model.state_dict()` by key and shape (no data is read)."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                         if k in own and tuple(v.shape) != tuple(own[k].shape)]
    report.loaded = len(own) - len(report.missing) - len(report.mismatched)
    return report


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
    from .models import FractalGen

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
    from .models import FractalGen

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
