"""Samples at scale in the ADM evaluator's `.npz` format, resumable and split over torchrun ranks.

Format (guided-diffusion's `sample.py`, read by its `evaluator.py`): `arr_0` uint8 (N, H, W, C),
`arr_1` int64 (N,) class labels when class-conditional. Generation writes one shard per batch
into `<out>.parts/` (atomically), skips shards that already exist, then merges them in order: an
interrupted run continues where it stopped. Batch `i` is drawn with seed `seed·1_000_003 + i` and
labels `(i·B + j) mod num_classes`, so the images do not depend on the number of ranks; under
torchrun, rank r generates batches r, r + world, … and rank 0 merges.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..runtime import batch_workers, side_by_side


def save_samples_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Write uint8 (N, C, H, W) images (+ labels) as `arr_0` NHWC (+ `arr_1`), atomically."""
    path = Path(path)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    arrays = {"arr_0": images.permute(0, 2, 3, 1).contiguous().cpu().numpy()}
    if labels is not None:
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        arrays["arr_1"] = torch.as_tensor(labels).long().cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_samples_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an ADM-format samples file → (uint8 (N, C, H, W), int64 labels or None)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "arr_0" not in f:
                raise ValueError(f"{path} has no `arr_0` (keys: {sorted(f.keys())}); a samples file holds uint8 "
                                 f"images (N, H, W, C) as arr_0")
            x = f["arr_0"]
            y = f["arr_1"] if "arr_1" in f else (f["labels"] if "labels" in f else None)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read samples from {path}: {e}") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, 1|3), got {x.dtype} {x.shape}")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    labels = None if y is None else torch.from_numpy(np.asarray(y).astype(np.int64))
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: {labels.shape} labels for {len(images)} images")
    return images, labels


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def generate_samples_npz(model, out: str | Path, num_images: int, *, batch_size: int = 64, conditional: bool = True,
                         label_list=None, seed: int = 0, progress: bool = True, keep_parts: bool = False,
                         workers: int | None = None, **sampling) -> Path | None:
    """Sample `num_images` into `out` (ADM format), resumably; returns `out` on rank 0 (None elsewhere).

    Class-conditional models get balanced labels (cycling over `label_list`, default all classes)
    unless `conditional=False`. `sampling` goes to `model.sample` (num_iter, cfg_scale, temperature, …).
    `workers` batches are sampled side by side (default: `runtime.batch_workers`: on a multi-core
    CPU, forked processes on one thread each on Linux, two threads elsewhere). Each batch has its own
    seed, so the images do not depend on how batches are spread, only (rarely) on the intra-op
    threads each batch gets (see `runtime.side_by_side`): a batch sampled alone (the only one, or the
    last of a resumed run) gets all threads, the others one each.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"the samples file must end in .npz, got {out}")
    if num_images < 1 or batch_size < 1:
        raise ValueError("num_images and batch_size must be >= 1")
    cfg = model.config
    conditional = conditional and cfg.num_classes > 0
    if label_list is None:
        label_list = list(range(cfg.num_classes))
    label_list = torch.as_tensor(list(label_list), dtype=torch.long)
    if conditional and (len(label_list) == 0 or label_list.min() < 0 or label_list.max() >= cfg.num_classes):
        raise ValueError(f"labels must be in [0, {cfg.num_classes})")
    if not conditional:
        sampling["cfg_scale"] = 1.0
    parts = out.with_name(out.name + ".parts")
    rank, world = _rank_world()
    settings = json.dumps({"num_images": num_images, "batch_size": batch_size, "conditional": conditional,
                           "labels": label_list.tolist(), "seed": seed,
                           "sampling": {k: v for k, v in sorted(sampling.items()) if k != "record"}}, default=str)
    if rank == 0:
        parts.mkdir(parents=True, exist_ok=True)
        stamp = parts / "settings.json"
        if stamp.exists() and stamp.read_text() != settings:
            raise ValueError(f"{parts} holds an interrupted run with other settings ({stamp.read_text()}); "
                             f"delete it or pass the same options to resume")
        stamp.write_text(settings)
    _barrier()
    num_batches = math.ceil(num_images / batch_size)
    mine = [i for i in range(num_batches) if i % world == rank]
    todo = [i for i in mine if not (parts / f"batch_{i:06d}.npz").exists()]
    from tqdm import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), unit="batch", dynamic_ncols=True,
               desc=f"sampling → {out.name}" + (f" (rank {rank}/{world})" if world > 1 else ""),
               disable=not progress)

    def sample_batch(i: int):
        start, stop = i * batch_size, min((i + 1) * batch_size, num_images)
        labels = label_list[torch.arange(start, stop) % len(label_list)] if conditional else None
        g = torch.Generator(model.device).manual_seed(seed * 1_000_003 + i)
        images = model.sample(labels.to(model.device) if labels is not None else None,
                              num_images=None if conditional else stop - start, generator=g, **sampling).cpu()
        save_samples_npz(parts / f"batch_{i:06d}.npz", images, labels)

    workers = batch_workers(model.device, len(todo)) if workers is None else workers
    was_training = model.training
    model.eval()  # set once: concurrent `sample` calls (threads) must not toggle the mode under each other
    try:
        # a forked child cannot use the parent's CUDA context: other devices share threads
        with side_by_side(workers, processes=None if model.device.type == "cpu" else False) as run:
            for _ in run(sample_batch, todo):
                bar.update(1)
    finally:
        model.train(was_training)
    bar.close()
    _barrier()
    if rank != 0:
        return None
    shards = [load_samples_npz(parts / f"batch_{i:06d}.npz") for i in range(num_batches)]
    images = torch.cat([s[0] for s in shards])
    labels = torch.cat([s[1] for s in shards]) if conditional else None
    save_samples_npz(out, images, labels)
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return out
