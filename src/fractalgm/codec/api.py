"""`encode` / `decode`: images ↔ the bytes of a `.fgm` file, under one exact-likelihood model.

Each image costs −log2 p(x) bits under the model's unconditional distribution (or the class-conditional
one, with labels), plus its coder's flush (~2 bytes) and its index entry (~5 bytes).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..runtime import batch_workers, can_fork, side_by_side
from .coding import CODER, PRECISION
from .container import Container, pack, pixel_crc, unpack
from .engine import THREADS, check_codable, decode_rows, encode_rows
from .errors import CodecError
from .fingerprint import check_compatible, model_fields, runtime

DEFAULT_CHUNK = 64


def _shape(model) -> tuple[int, int, int]:
    c = model.config
    return c.channels, c.image_size, c.image_size


def _check_labels(model, labels, count: int) -> np.ndarray | None:
    if labels is None:
        return None
    k = model.config.num_classes
    if not 0 < k <= 256:
        raise CodecError(f"labels need a class-conditional model with at most 256 classes (this one has {k})")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if labels.size != count or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= k:
        raise CodecError(f"labels must be {count} class ids in [0, {k})")
    return labels.astype(np.int64)


def _batches(count: int, chunk: int, batch_size: int | None):
    size = chunk if batch_size is None else batch_size
    if not 1 <= size <= chunk:
        raise CodecError(f"the batch size must be 1..{chunk} (the file's rows per model run), got {size}")
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def _side_by_side(model, runs: int):
    """Runs on a CPU that can fork go side by side in processes, one per intra-op thread of this one.

    Every run is single-threaded (`engine.THREADS`) whatever the process's setting, so a second core
    otherwise idles; a forked run computes exactly what it would here. Threads are never used: they
    would share (and restore under each other) the process's intra-op thread count.
    """
    fork = model.device.type == "cpu" and can_fork()
    return side_by_side(batch_workers(model.device, runs) if fork else 1, processes=fork)


def encode(model, images, labels=None, *, names: list[str] | None = None, chunk: int = DEFAULT_CHUNK,
           batch_size: int | None = None, model_name: str | None = None, progress: bool = False) -> bytes:
    """The `.fgm` bytes of uint8 images (B, C, H, W) (tensor or array), optionally with class labels.

    `chunk` is the number of rows every model run has (recorded; decoding uses the same), `batch_size`
    (≤ chunk) how many images fill them; `names` are kept for `decompress`.
    """
    check_codable(model)
    images = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != _shape(model):
        C, S, _ = _shape(model)
        raise CodecError(f"images must be uint8 (B, {C}, {S}, {S}) for this model, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if names is not None and len(names) != len(images):
        raise CodecError(f"{len(names)} names for {len(images)} images")
    labels = _check_labels(model, labels, len(images))
    parts = _batches(len(images), chunk, batch_size)

    def code(k: int):
        part = parts[k]
        return k, encode_rows(model, images[part], None if labels is None else labels[part], chunk)

    coded = [None] * len(parts)
    with tqdm(total=len(images), unit="img", desc="compress", disable=not progress) as bar, \
            _side_by_side(model, len(parts)) as run:
        for k, words in run(code, range(len(parts))):
            coded[k] = words
            bar.update(len(words))
    streams = [words for part in coded for words in part]
    header = {**model_fields(model, model_name), **runtime(model), "shape": list(_shape(model)), "chunk": chunk,
              "threads": THREADS, "coder": CODER, "precision": PRECISION, "num_classes": model.config.num_classes}
    return pack(Container(header, streams, [pixel_crc(im) for im in images], labels, names))


def decode(model, data: bytes | Container, *, index: list[int] | None = None, batch_size: int | None = None,
           model_name: str | None = None, progress: bool = False) -> torch.Tensor:
    """uint8 images (B, C, H, W) of a `.fgm` file (all, or those at `index`, in that order).

    Refuses another model or arithmetic (see `fingerprint`), and raises `CodecError` when an image's
    pixels do not match the checksum stored for it, rather than returning wrong pixels.
    """
    c = data if isinstance(data, Container) else unpack(data)
    check_codable(model)
    check_compatible(c.header, model, model_name)
    if tuple(c.header["shape"]) != _shape(model) or c.header["coder"] != CODER:
        raise CodecError(f"the file holds {c.header['shape']} images coded with {c.header['coder']}; "
                         f"this model and codec use {list(_shape(model))} and {CODER}")
    if not isinstance(c.header["chunk"], int) or not 1 <= c.header["chunk"] <= 65536:
        raise CodecError(f"the file's chunk {c.header['chunk']!r} is invalid")
    if c.header["threads"] != THREADS:
        raise CodecError(f"coded with {c.header['threads']} threads per run; this fractalgm codes with {THREADS}")
    index = list(range(len(c))) if index is None else list(index)
    bad = [i for i in index if not 0 <= i < len(c)]
    if bad:
        raise CodecError(f"image index {bad[0]} is out of range: the file holds {len(c)} images (0..{len(c) - 1})")
    out = np.zeros((len(index), *_shape(model)), dtype=np.uint8)
    parts = _batches(len(index), c.header["chunk"], batch_size)

    def run_part(k: int):
        which = index[parts[k]]
        labels = None if c.labels is None else c.labels[which]
        return k, decode_rows(model, [c.streams[i] for i in which], labels, c.header["chunk"])

    with tqdm(total=len(index), unit="img", desc="decompress", disable=not progress) as bar, \
            _side_by_side(model, len(parts)) as run:
        for k, images in run(run_part, range(len(parts))):
            out[parts[k]] = images
            for i, image in zip(index[parts[k]], images):
                if pixel_crc(image) != c.crcs[i]:
                    raise CodecError(f"image {i} does not match its checksum: decoding went out of step "
                                     "(the model's arithmetic differs from the encoder's)")
            bar.update(len(images))
    return torch.from_numpy(out)
