"""`fractalgm prepare`: pack an image folder into tar shards (see `fractalgm.data.prepare`)."""
from __future__ import annotations

import os

from .common import refuse_unused


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


def run(args) -> dict:
    from ..data.prepare import prepare_shards

    refuse_unused(args, [("quality", args.format != "jpg", "it is the JPEG quality of --format jpg")])
    return prepare_shards(args.source, args.out, args.image_size, args.channels, args.shard_size, args.format,
                          args.quality, args.workers, args.skip_bad, progress=not args.no_progress)
