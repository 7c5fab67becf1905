"""The run folder of `fractalgm train`: one trainer at a time, no silent overwrite, no leftovers.

* `RunLock` is an advisory `flock` on `<run>/.lock`, held for the life of the trainer. The kernel
  drops it when the process dies (even by `kill -9`), so a lock left behind is stale by definition
  and the next trainer takes it over; the file records who held it, for the messages.
* `claim` refuses a folder that already holds a run unless the caller resumes or overwrites.
* `remove_leftovers` deletes the temporary copies an interrupted save leaves (`.model.tmp-*`,
  `.model.old-*`, `.train_state.pt.tmp-*`, …); a `.model.old-*` that is the only surviving copy of
  the model folder is renamed back instead.
* `append_log` adds a record to the metrics log; `truncate_log` drops log lines written after the step
  a resume restarts from, so the log of an interrupted and resumed run reads exactly like a straight one's.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..io.atomic import atomic_write

LOCK_NAME = ".lock"
STATE_NAME = "train_state.pt"
MODEL_DIR = "model"
LOG_NAME = "metrics.jsonl"
RUN_FILES = (STATE_NAME, LOG_NAME, "train_config.json", "loss.png", MODEL_DIR, "samples")
LEFTOVER_PATTERNS = (".*.tmp-*", ".*.old-*", f"{MODEL_DIR}/.*.tmp-*", f"{MODEL_DIR}/*.tmp-*", "samples/.*.tmp-*")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message says what to do."""


class RunLock:
    """An exclusive lock on a run folder for as long as this trainer lives."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.fd: int | None = None
        self.took_over: str | None = None  # who held the stale lock we replaced, if anyone

    def acquire(self, probe: bool = False) -> RunLock:
        """Take the lock (or raise RunFolderError naming its holder); `probe` only tests and lets go."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"{self.path.parent} is in use by another trainer ({holder}); wait for it to "
                                 "finish, stop it, or choose another --out") from None
        if probe:
            os.close(fd)
            return self
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        self.took_over = previous or None  # a live holder would still hold the flock: this one died
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # an empty file: not stale; the file itself stays (see module doc)
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __del__(self):
        self.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def leftovers(folder: str | os.PathLike) -> list[Path]:
    """Temporary copies left by interrupted saves (safe to delete once no trainer holds the folder)."""
    folder = Path(folder)
    found = {p for pattern in LEFTOVER_PATTERNS for p in folder.glob(pattern) if p.name != LOCK_NAME}
    return sorted(found)


def leftover_bytes(folder: str | os.PathLike) -> int:
    return sum(_size(p) for p in leftovers(folder))


def remove_leftovers(folder: str | os.PathLike) -> tuple[int, int, list[str]]:
    """Delete what interrupted saves left; returns (items, bytes removed, notes). Hold the lock first."""
    folder = Path(folder)
    notes, count, size = [], 0, 0
    model = folder / MODEL_DIR
    backups = sorted(folder.glob(f".{MODEL_DIR}.old-*"), key=lambda p: p.stat().st_mtime)
    if backups and not model.exists():  # killed between the two renames: the backup is the model
        os.rename(backups[-1], model)
        notes.append(f"restored {model} from {backups[-1].name} (a save was interrupted between two renames)")
    for path in leftovers(folder):
        if not path.exists():
            continue
        count, size = count + 1, size + _size(path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if count:
        notes.append(f"removed {count} temporary file(s) ({size / 1e6:.1f} MB) left by interrupted saves")
    return count, size, notes


def existing_run(folder: str | os.PathLike) -> list[str]:
    """The names of run files already in `folder`."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def claim(folder: str | os.PathLike, resume: bool, overwrite: bool):
    """Check that a new run may start in `folder` (or that there is a run to resume) before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {folder} is a file; give a folder for the run")
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one")
    if resume:
        if not (folder / STATE_NAME).exists():
            raise RunFolderError(f"nothing to resume: no {STATE_NAME} in {folder} (start without --resume)")
        return
    found = existing_run(folder)
    if found and not overwrite:
        raise RunFolderError(f"{folder} already holds a run ({', '.join(found)}); pass --resume to continue it "
                             "or --overwrite to replace it, or choose another --out")
    for name in found:  # --overwrite: start from an empty folder, so logs never mix two runs
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def check_can_start(folder: str | os.PathLike, resume: bool, overwrite: bool):
    """Fail now, before data and model are loaded, if the run could not start in `folder` (changes nothing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {folder} is a file; give a folder for the run")
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one")
    if resume and not (folder / STATE_NAME).exists():
        raise RunFolderError(f"nothing to resume: no {STATE_NAME} in {folder} (start without --resume)")
    if not resume and not overwrite and (found := existing_run(folder)):
        raise RunFolderError(f"{folder} already holds a run ({', '.join(found)}); pass --resume to continue it "
                             "or --overwrite to replace it, or choose another --out")
    if (folder / LOCK_NAME).exists():
        RunLock(folder).acquire(probe=True)  # raises while another trainer holds it
    else:
        _check_writable(folder)


def _check_writable(folder: Path):
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"--out {folder}: cannot create files in {probe} (permission denied)")


def truncate_log(path: str | os.PathLike, step: int) -> int:
    """Keep the log records up to `step` (and drop a torn last line); returns how many were dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # torn by a kill mid-append
            dropped += 1
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
    return dropped


def append_log(folder: str | os.PathLike, record: dict):
    """One record (one JSON line) onto the run's metrics log; `truncate_log` drops a line a kill tore."""
    with open(Path(folder) / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
