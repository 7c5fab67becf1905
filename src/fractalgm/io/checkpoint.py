"""Checkpoints: a folder with `config.json` + `model.safetensors`, written atomically.

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

Reference `.pth` checkpoints are read and converted by `fractalgm.io.convert`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._version import __version__
from ..config import FractalConfig
from .atomic import fsync_dir, fsync_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
_OWNED = {CONFIG_NAME, WEIGHTS_NAME}

__all__ = ["CheckpointError", "LoadReport", "compare_state_dict", "save_pretrained", "read_metadata", "load_pretrained", "list_pretrained",
           "resolve_pretrained"]


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model; the message says what to do."""


# ============================================================================ save
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
    state = _export_state(model, dtype)
    config_text = model.config.to_json()
    meta = {**(extra or {}), "format": "pt", "library": "fractalgm", "fractalgm_version": __version__,
            "dtype": _dtype_name(state), "config": config_text}
    weights, config = directory / (WEIGHTS_NAME + suffix), directory / (CONFIG_NAME + suffix)
    save_file(state, str(weights), metadata=meta)
    fsync_file(weights)
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
            fsync_dir(folder)
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
        fsync_dir(tmp)
        if folder.exists():
            backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(folder, backup)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(backup, folder)
                raise
            fsync_dir(folder.parent)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, folder)
            fsync_dir(folder.parent)
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
                                  "convert it first with fractalgm.io.convert.convert_reference "
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


def load_pretrained(folder_or_name: str | os.PathLike, build: Callable[[FractalConfig], torch.nn.Module],
                    device: str | torch.device | None = None, dtype: torch.dtype | None = torch.float32):
    """Load a model saved by `save_pretrained` (a folder, or the name of a shipped model).

    `build(config)` makes the empty model (`FractalGen`): storage knows configs, not model classes.
    Floating weights are cast to `dtype` (default float32; None keeps the stored dtype) and the
    model is moved to `device`. Returned in eval mode.
    """
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
    model = build(config)
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
