"""Pack an image folder into tar shards (WebDataset layout) at one resolution.

Decoding and centre-cropping once, ahead of training, turns a million small JPEG reads per epoch into
a few large sequential files; PNG keeps the cropped pixels exact (the models are likelihood models of
8-bit values), `--format jpg` trades exactness for size.
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from .folder import ImageFolder, split_dirs
from .images import SKIP_HINT, BadImage
from .shards import META, ShardWriter

_DATASET = None
_BLOCK = 1024


def _init(dataset):
    global _DATASET
    _DATASET = dataset


def _encode(job: tuple[int, str, int]):
    """(index, bytes or None, label, where, error) for one image: runs in a worker process."""
    index, fmt, quality = job
    record = int(_DATASET.ids[index])
    try:
        arr, note = _DATASET._decode(record, False)
    except BadImage as e:
        return index, None, 0, e.where, e.reason, None
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", **({"quality": quality} if fmt == "jpg" else {}))
    return index, buf.getvalue(), int(_DATASET.record_labels[record]), _DATASET.where(record), None, note


def prepare_shards(source, out, image_size: int, channels: int = 3, shard_size: int = 10_000, fmt: str = "png",
                   quality: int = 95, workers: int = 1, skip_bad: bool = False, progress: bool = True) -> dict:
    """Write `source`'s splits as shards + meta.json into `out`; returns the metadata (also printed)."""
    from tqdm import tqdm

    if image_size <= 0 or shard_size <= 0 or workers < 1:
        raise ValueError("--image-size, --shard-size and --workers must be positive")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of images")
    counts, skipped, converted, classes = {}, [], 0, None
    for part in split_dirs(source):
        data = ImageFolder(source, part, image_size=image_size, channels=channels, skip_bad=skip_bad)
        classes = data.class_names
        writer = ShardWriter(out, part, shard_size)
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(data,)) as pool, \
                tqdm(total=len(data), unit="img", desc=f"prepare {part}", disable=not progress) as bar:
            results = (r for start in range(0, len(data), _BLOCK)  # blocks bound the encoded bytes held
                       for r in pool.map(_encode, [(i, fmt, quality)
                                                   for i in range(start, min(start + _BLOCK, len(data)))],
                                         chunksize=32))
            for index, payload, label, where, error, note in results:
                bar.update(1)
                if error is not None:
                    if not skip_bad:
                        raise BadImage(where, f"{error}; {SKIP_HINT}")
                    skipped.append(f"{where} ({error})")
                    continue
                converted += note is not None
                writer.write(f"{index:09d}", payload, fmt, label)
        writer.close()
        counts[part] = writer.count
    meta = {"format": "webdataset", "image_size": image_size, "channels": channels,
            "num_classes": max(1, len(classes or [])), "class_names": classes, "counts": counts,
            "encoding": fmt, "source": str(source)}
    tmp = out / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / META)
    print(f"wrote {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) as "
          f"{image_size}x{image_size} {fmt.upper()} shards into {out}"
          + (f"; converted {converted} file(s) to {channels} channel(s)" if converted else "")
          + (f"; skipped {len(skipped)} unreadable file(s): {'; '.join(skipped[:20])}" if skipped else ""))
    return meta
