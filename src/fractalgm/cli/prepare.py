"""`fractalgm prepare`: pack an image folder into tar shards (WebDataset layout) at one resolution.

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

from ..data.folder import ImageFolder, split_dirs
from ..data.images import SKIP_HINT, BadImage
from ..data.shards import META, ShardWriter


def add_parser(subparsers) -> None:
    q = subparsers.add_parser("prepare", help="pack an image folder into tar shards", description=(
        "Centre-crop every image of an image folder (root/[train|val|test/]class/*.jpg) to --image-size and "
        "write {split}-000000.tar shards (WebDataset layout: key.png + key.cls) and meta.json into --out. "
        "Train on them with `fractalgm train --data OUT`. Example: fractalgm prepare /data/imagenet "
        "--image-size 64 --out /data/in64-shards"))
    q.add_argument("source", help="image folder")
    q.add_argument("--out", required=True, help="output folder for the shards")
    q.add_argument("--image-size", type=int, required=True, help="side of the square centre crop, in pixels")
    q.add_argument("--channels", type=int, choices=[1, 3], default=3, help="1 (grayscale) or 3 (RGB, default)")
    q.add_argument("--shard-size", type=int, default=10_000, help="images per shard (default 10000)")
    q.add_argument("--format", choices=["png", "jpg"], default="png", help="png (lossless, default) or jpg")
    q.add_argument("--quality", type=int, default=95, help="JPEG quality for --format jpg (default 95)")
    q.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes decoding and encoding (default: up to 8)")
    q.add_argument("--skip-bad", action="store_true", help="skip unreadable files (counted and listed) "
                   "instead of stopping (default: off)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    q.set_defaults(fn=run)


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


def run(args) -> dict:
    from tqdm import tqdm

    from .common import refuse_unused

    refuse_unused(args, [("quality", args.format != "jpg", "it is the JPEG quality of --format jpg")])
    if args.image_size <= 0 or args.shard_size <= 0 or args.workers < 1:
        raise ValueError("--image-size, --shard-size and --workers must be positive")
    source, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of images")
    counts, skipped, converted, classes = {}, [], 0, None
    for part in split_dirs(source):
        data = ImageFolder(source, part, image_size=args.image_size, channels=args.channels, skip_bad=args.skip_bad)
        classes = data.class_names
        writer = ShardWriter(out, part, args.shard_size)
        with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(data,)) as pool, \
                tqdm(total=len(data), unit="img", desc=f"prepare {part}", disable=args.no_progress) as bar:
            results = (r for start in range(0, len(data), _BLOCK)  # blocks bound the encoded bytes held
                       for r in pool.map(_encode, [(i, args.format, args.quality)
                                                   for i in range(start, min(start + _BLOCK, len(data)))],
                                         chunksize=32))
            for index, payload, label, where, error, note in results:
                bar.update(1)
                if error is not None:
                    if not args.skip_bad:
                        raise BadImage(where, f"{error}; {SKIP_HINT}")
                    skipped.append(f"{where} ({error})")
                    continue
                converted += note is not None
                writer.write(f"{index:09d}", payload, args.format, label)
        writer.close()
        counts[part] = writer.count
    meta = {"format": "webdataset", "image_size": args.image_size, "channels": args.channels,
            "num_classes": max(1, len(classes or [])), "class_names": classes, "counts": counts,
            "encoding": args.format, "source": str(source)}
    tmp = out / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / META)
    print(f"wrote {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) as "
          f"{args.image_size}x{args.image_size} {args.format.upper()} shards into {out}"
          + (f"; converted {converted} file(s) to {args.channels} channel(s)" if converted else "")
          + (f"; skipped {len(skipped)} unreadable file(s): {'; '.join(skipped[:20])}" if skipped else ""))
    return meta
