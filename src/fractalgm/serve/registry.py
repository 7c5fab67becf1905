"""The models the server may use: a whitelist fixed at start, addressed by name only.

A request names a model; it never carries a path. Every name maps to a folder that was resolved
(and loaded) when the server started, so no request can make the server read another file.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io.checkpoint import list_pretrained, resolve_pretrained
from ..models import FractalGen
from ..sampling import resolve_num_iter


class UnknownModel(KeyError):
    def __init__(self, name, available):
        super().__init__(name)
        self.message = f"unknown model {name!r}; this server offers: {', '.join(available)}"

    def __str__(self):
        return self.message


@dataclass
class ModelEntry:
    """One whitelisted model, loaded at start, and the test set its picker shows (if any)."""

    name: str
    folder: Path
    model: FractalGen
    testset: str | None = None
    fast: bool = False  # sample on the fast path (`fractalgm serve --fast`)
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards the lazy test-set load
    _test_images: torch.Tensor | None = None
    _test_labels: torch.Tensor | None = None
    _class_names: list[str] | None = None

    @property
    def config(self):
        return self.model.config

    def level_info(self) -> list[dict]:
        defaults = resolve_num_iter(self.config, None)
        return [{"kind": lv.kind, "image_size": lv.image_size, "patch_size": lv.patch_size, "tokens": lv.seq_len,
                 "default_steps": d} for lv, d in zip(self.config.levels, defaults)]

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The test split (uint8 images, labels), loaded on first use; None when the model has no picker
        (no test set given, or one whose images do not have the model's shape)."""
        with self.lock:
            if self.testset is not None and self._test_images is None:
                from ..data import load_dataset

                data = load_dataset(self.testset, "test")
                cfg = self.config
                if tuple(data.images.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
                    self.testset = None  # uploads only; remembered, so it is not loaded again
                    return None
                self._test_images, self._test_labels = data.images, data.labels
                if data.class_names and len(data.class_names) == cfg.num_classes:
                    self._class_names = list(data.class_names)
        return None if self.testset is None else (self._test_images, self._test_labels)

    def class_names(self) -> list[str]:
        try:
            self.test_set()
        except (OSError, ValueError):
            pass
        return self._class_names or [str(i) for i in range(self.config.num_classes)]

    def info(self) -> dict:
        cfg = self.config
        try:
            test_size = None if self.test_set() is None else len(self._test_images)
        except (OSError, ValueError):  # the data is not installed: uploads still work
            test_size = None
        return {"name": self.name, "image_size": cfg.image_size, "channels": cfg.channels,
                "num_classes": cfg.num_classes, "class_names": self.class_names(), "levels": self.level_info(),
                "exact_likelihood": self.config.is_exact, "testset": self.testset if test_size else None,
                "testset_size": test_size or 0,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def _unique_name(folder: Path, taken: set[str]) -> str:
    base = folder.name or "model"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


class ModelRegistry:
    """Name → loaded model, for the shipped models and the folders given at start (nothing else)."""

    def __init__(self, models: list[str] | None = None, device: str | torch.device = "cpu",
                 testset: str | None = "fashion_mnist", fast: bool = False):
        shipped = set(list_pretrained())
        self.entries: dict[str, ModelEntry] = {}
        for spec in models or sorted(shipped):
            spec = str(spec)
            folder = resolve_pretrained(spec).resolve()
            name = spec if spec in shipped else _unique_name(folder, set(self.entries))
            if name in self.entries:
                continue
            model = FractalGen.from_pretrained(str(folder), device=device).eval()
            self.entries[name] = ModelEntry(name, folder, model, testset, fast)
        if not self.entries:
            raise ValueError("no model to serve: pass --model NAME_OR_FOLDER")

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> ModelEntry:
        # a plain dictionary lookup: a name that is not a key (a path, '..', anything) is unknown
        entry = self.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise UnknownModel(name, self.names)
        return entry
