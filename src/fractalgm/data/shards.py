"""Tar shards in the WebDataset layout: `{split}-000000.tar` holding `{key}.png` (or .jpg …) + `{key}.cls`.

The layout is WebDataset's (files grouped by the key before the first dot of the basename; `.cls` is
the class id as ASCII), so shards made by `webdataset.ShardWriter` or `tarp` read here, and ours read
there. We index members by byte offset instead of using the `webdataset` package: its iterable,
buffer-shuffled pipeline cannot resume mid-epoch exactly nor give each rank a reproducible disjoint
share, which random access can. `meta.json` (written by `fractalgm prepare`) records size, channels
and class names.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS
from .streaming import StreamingDataset

META = "meta.json"
_IMAGE_EXTS = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def shard_files(root: Path, part: str) -> list[Path]:
    files = sorted(root.glob(f"{part}-*.tar"))
    if not files and part == "train":  # a plain folder of shards is the training set
        files = sorted(p for p in root.glob("*.tar") if not p.name.startswith(("val-", "test-")))
    return files


def is_shard_dir(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("*.tar")) or (path / META).is_file())


def index_shard(path: Path) -> tuple[list[tuple[str, int, int, int]], str | None]:
    """[(key, offset, size, label)] of the complete samples in one shard, and why it ends early (or None).

    tarfile stops silently at a header cut short, so completeness is checked by hand: every member's data
    lies inside the file and the archive ends with its zero end-of-archive block.
    """
    size = path.stat().st_size
    groups: dict[str, dict] = {}
    problem, end = None, 0
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    problem = f"it ends inside {member.name} ({size} bytes, member needs {member.offset_data + member.size})"
                    break
                end = member.offset_data + member.size
                base = os.path.basename(member.name)
                if "." not in base:
                    continue
                key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower()
                group = groups.setdefault(key, {})
                if ext in _IMAGE_EXTS:
                    group["image"] = (member.offset_data, member.size)
                elif ext == "cls":
                    tar.fileobj.seek(member.offset_data)
                    group["label"] = int(tar.fileobj.read(member.size).decode().strip())
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem is None:
        with open(path, "rb") as f:
            f.seek(-(-end // 512) * 512)
            if f.read(1024) != bytes(1024):
                problem = "it has no end-of-archive block (cut off after a complete member)"
    complete = [(k, g["image"][0], g["image"][1], g.get("label", 0)) for k, g in groups.items() if "image" in g]
    if problem is not None and complete:
        complete = complete[:-1]  # the last sample may lack members that were cut off
    return complete, problem


class TarShards(StreamingDataset):
    """One split of a shard directory: `{part}-*.tar` (a bare `*.tar` set is the training split)."""

    def __init__(self, root: str | os.PathLike, part: str = "train", *, image_size: int | None = None,
                 channels: int | None = None, skip_bad: bool = False):
        root = Path(root).expanduser()
        meta = json.loads((root / META).read_text()) if (root / META).is_file() else {}
        files = shard_files(root, part)
        if not files:
            raise ValueError(f"dataset '{root.name}' has no '{part}' split (no {part}-*.tar shards in {root})")
        keys, shard, offset, size, labels, problems = [], [], [], [], [], []
        for i, path in enumerate(files):
            samples, problem = index_shard(path)
            if problem:
                problems.append(f"{path} is truncated or damaged: {problem}; {len(samples)} complete samples "
                                f"before it")
            for key, off, n, label in samples:
                keys.append(key.encode())
                shard.append(i), offset.append(off), size.append(n), labels.append(label)
        if problems and not skip_bad:
            raise ValueError(f"{'; '.join(problems)}. Re-create the shard (fractalgm prepare), or pass --skip-bad "
                             f"to use only the complete samples (the rest of that shard is skipped)")
        if problems:
            warnings.warn(f"skipped the damaged end of {len(problems)} shard(s): {'; '.join(problems)}")
        if not keys:
            raise ValueError(f"no samples (key.png/key.jpg + key.cls) in the shards of {root}")
        names = meta.get("class_names")
        num_classes = meta.get("num_classes") or (len(names) if names else int(max(labels)) + 1)
        image_size = image_size or meta.get("image_size")
        if image_size is None:
            raise ValueError(f"{root}: shards without meta.json need an image size (pass image_size / --image-size)")
        super().__init__(root.name, np.array(labels, np.int64), num_classes, names,
                         channels or meta.get("channels", 3), image_size, skip_bad)
        self.root, self.files = root, [str(p) for p in files]
        self.keys, self.shard = np.array(keys), np.array(shard, np.int32)
        self.offset, self.size = np.array(offset, np.int64), np.array(size, np.int64)
        self.num_skipped = len(problems)
        self._handles: dict[int, tuple[int, object]] = {}

    def where(self, record: int) -> str:
        return f"{self.files[self.shard[record]]}:{self.keys[record].decode()}"

    def read(self, record: int) -> bytes:
        index = int(self.shard[record])
        pid, f = self._handles.get(index, (None, None))
        if pid != os.getpid():  # forked workers open their own handles
            f = open(self.files[index], "rb")
            self._handles[index] = (os.getpid(), f)
        f.seek(int(self.offset[record]))
        return f.read(int(self.size[record]))

    def __getstate__(self):  # spawned workers: handles do not pickle
        return {**self.__dict__, "_handles": {}}


class ShardWriter:
    """Writes samples into `{prefix}-000000.tar`, … with at most `per_shard` samples each, atomically."""

    def __init__(self, out: Path, prefix: str, per_shard: int):
        self.out, self.prefix, self.per_shard = Path(out), prefix, per_shard
        self.out.mkdir(parents=True, exist_ok=True)
        self.count, self.shards, self._tar, self._tmp = 0, [], None, None

    def _roll(self):
        self.close()
        name = self.out / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = name.with_name(f".{name.name}.tmp-{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append(name)

    def _add(self, name: str, payload: bytes):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644  # mtime 0: identical input, identical shard
        self._tar.addfile(info, io.BytesIO(payload))

    def write(self, key: str, image: bytes, ext: str, label: int):
        if self._tar is None or self.count % self.per_shard == 0:
            self._roll()
        self._add(f"{key}.{ext}", image)
        self._add(f"{key}.cls", str(label).encode())
        self.count += 1

    def close(self):
        if self._tar is not None:
            self._tar.close()
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.shards[-1])
            self._tar = None
