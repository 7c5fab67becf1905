"""A lazy ImageFolder: root/[train|val|test/]<class>/**/*.jpg, decoded one file at a time.

Labels are the sorted class-folder index over all splits (so every split agrees); images directly under
root (or a split folder) without class folders form one class. Opening scans names and sizes only:
zero-byte files and class folders without images are found here, before any training starts.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS
from .streaming import StreamingDataset

SPLIT_DIRS = ("train", "val", "test")


def _scan(directory: Path) -> list[tuple[str, int]]:
    """(path relative to directory, size in bytes) of every image file below it, sorted."""
    found = []
    stack = [directory]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    found.append((os.path.relpath(entry.path, directory), entry.stat().st_size))
    return sorted(found)


def split_dirs(root: Path) -> dict[str, Path]:
    return {part: root / part for part in SPLIT_DIRS if (root / part).is_dir()} or {"train": root}


def class_names(root: Path) -> list[str]:
    return sorted({c.name for d in split_dirs(root).values() for c in d.iterdir()
                   if c.is_dir() and not c.name.startswith(".")})


class ImageFolder(StreamingDataset):
    """One split of an image folder; `image_size` is required (files are centre-cropped to it)."""

    def __init__(self, root: str | os.PathLike, part: str = "train", *, image_size: int, channels: int = 3,
                 skip_bad: bool = False):
        root = Path(root).expanduser()
        dirs = split_dirs(root)
        if part not in dirs:
            raise ValueError(f"dataset '{root.name}' has no '{part}' split (no folder {root / part})")
        directory, classes = dirs[part], class_names(root)
        records, labels, empty, zero = [], [], [], []
        for label, name in enumerate(classes or [None]):
            folder = directory / name if name else directory
            if name and not folder.is_dir():
                continue  # a class missing from this split
            files = _scan(folder)
            if not files and name:
                empty.append(str(folder))
            for rel, size in files:
                path = folder / rel
                if size == 0:
                    zero.append(str(path))
                    continue
                records.append(os.fsencode(path.relative_to(root)))
                labels.append(label)
        problems = ([f"class folder {p} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})" for p in empty]
                    + [f"{p} is an empty file (0 bytes)" for p in zero])
        if problems and not skip_bad:
            raise ValueError(f"{len(problems)} problem(s) in {directory}: {'; '.join(problems[:5])}"
                             f"{' …' if len(problems) > 5 else ''}. Fix them, or pass --skip-bad to skip "
                             f"them (they are counted and listed)")
        if problems:
            warnings.warn(f"skipped {len(zero)} zero-byte file(s) and {len(empty)} empty class folder(s) in "
                          f"{directory}: {'; '.join(problems[:10])}{' …' if len(problems) > 10 else ''}")
        if not records:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {directory}")
        super().__init__(root.name, np.array(labels, np.int64), max(1, len(classes)), classes or None,
                         channels, image_size, skip_bad)
        self.root = root
        self.paths = np.array(records)  # fixed-width bytes: one buffer, cheap to share with forked workers
        self.num_skipped = len(zero)

    def where(self, record: int) -> str:
        return str(self.root / os.fsdecode(self.paths[record]))

    def read(self, record: int) -> bytes:
        with open(self.root / os.fsdecode(self.paths[record]), "rb") as f:
            return f.read()
