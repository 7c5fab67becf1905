"""Lossless compression of Fashion-MNIST test images: fractalgm's codec against PNG, WebP and JPEG-XL.

Reports bytes and bits/pixel of each codec (classic codecs: one file per image, summed; ours: one
.fgm file), the model's exact bits/dim (−log2 p from `model.nll`, the ideal code length), the codec's
overhead over it, the round trip's bit-exactness and encode/decode images/s.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/codec_benchmark.py --limit 10000 --chunk 128 --out …
Needs the bench extra (`pip install -e ".[bench]"`: imagecodecs).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def classic_sizes(images: np.ndarray) -> dict[str, int]:
    """Summed bytes of every image as its own PNG (zlib 9), lossless WebP (level 100, method 6; WebP has
    no grayscale mode, so gray is stored as R = G = B) and lossless JPEG-XL (effort 9)."""
    import imagecodecs

    codecs = {"png_zlib9": lambda a: imagecodecs.png_encode(a, level=9),
              "webp_lossless": lambda a: imagecodecs.webp_encode(np.repeat(a[..., None], 3, -1), level=100,
                                                                  lossless=True, method=6),
              "jpegxl_lossless_e9": lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9)}
    out = {}
    for name, enc in codecs.items():
        total = 0
        for im in images:
            data = enc(np.ascontiguousarray(im[0]))
            assert name != "png_zlib9" or np.array_equal(imagecodecs.png_decode(data), im[0])
            total += len(data)
        out[name] = total
    return out


def exact_bits(model, images: np.ndarray, labels, batch: int = 200) -> float:
    """Σ −log2 p(x) over the images (unconditional, or conditional on `labels`); MAR levels in raster
    order, the order the codec uses."""
    mar = any(lv.kind == "mar" for lv in model.config.levels)
    options = {"exact": True, "order": "raster"} if mar else {}
    batch = 10 if mar else batch  # the exact MAR NLL scores L teacher-forced copies of every sequence
    total = 0.0
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch])
        y = None if labels is None else torch.as_tensor(labels[i:i + batch])
        with torch.no_grad():
            total += model.nll(x, y, **options).nats.double().sum().item() / math.log(2)
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=10000, help="first N test images (default: all 10,000)")
    p.add_argument("--chunk", type=int, default=64, help="rows per model run (default: 64)")
    p.add_argument("--labels", action="store_true", help="code class-conditionally with the test labels")
    p.add_argument("--model", default="fmnist-ar")
    p.add_argument("--no-classic", action="store_true", help="skip PNG/WebP/JPEG-XL")
    p.add_argument("--out", required=True, help="the JSON result (benchmarks/results/codec_*.json)")
    args = p.parse_args()

    from fractalgm import FractalGen, __version__
    from fractalgm.codec import decode, encode, unpack
    from fractalgm.data import load_dataset

    data = load_dataset("fashion_mnist", "test")
    images = np.asarray(data.images[:args.limit], dtype=np.uint8)
    labels = np.asarray(data.labels[:args.limit]) if args.labels else None
    model = FractalGen.from_pretrained(args.model)
    n, dims = len(images), images[0].size
    result = {"images": n, "pixels": n * dims, "model": args.model, "labels": args.labels, "chunk": args.chunk,
              "coding_threads": 1, "torch": torch.__version__, "fractalgm": __version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.processor() or
              platform.machine(), "command": " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ)
              + " .venv/bin/python " + " ".join(sys.argv)}

    def save():
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    bits = exact_bits(model, images, labels)
    result["exact_bytes"] = bits / 8
    result["exact_bpd"] = bits / (n * dims)
    if not args.no_classic:
        result["classic_bytes"] = classic_sizes(images)
    save()

    start = time.perf_counter()
    blob = encode(model, images, labels, chunk=args.chunk, model_name=args.model, progress=True)
    result["encode_seconds"] = time.perf_counter() - start
    c = unpack(blob)
    payload = sum(4 * len(s) for s in c.streams)
    result.update(fgm_bytes=len(blob), fgm_bpd=8 * len(blob) / (n * dims), payload_bytes=payload,
                  container_bytes=len(blob) - payload, overhead_pct=100 * (len(blob) / result["exact_bytes"] - 1),
                  coder_overhead_pct=100 * (payload / result["exact_bytes"] - 1),
                  encode_images_per_s=n / result["encode_seconds"])
    if "classic_bytes" in result:
        best = min(result["classic_bytes"].values())
        result["smaller_than_best_classic_pct"] = 100 * (1 - len(blob) / best)
    save()

    start = time.perf_counter()
    decoded = decode(model, blob, model_name=args.model, progress=True).numpy()
    result["decode_seconds"] = time.perf_counter() - start
    result["decode_images_per_s"] = n / result["decode_seconds"]
    result["bit_exact_images"] = int((decoded == images).reshape(n, -1).all(1).sum())
    save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
