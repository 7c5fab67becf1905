"""Atomic writes: a file appears complete or not at all, also after a crash or a full disk."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path):
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
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path
