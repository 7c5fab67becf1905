"""`fractalgm compress` and `fractalgm decompress` (the two ends of `fractalgm.codec`): check everything,
code, then write atomically.

Inputs are all read and checked before the model runs; decoded images are all decoded and verified
before the first one is written, so a refused or damaged file leaves no output behind.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..checks import POSITIVE_INT, parse_device
from ..codec.errors import CodecError
from ..io.atomic import atomic_write
from ..runtime import resolve_device
from .common import DEFAULT_MODEL


def _load_model(name: str, device: str):
    from ..models import FractalGen

    return FractalGen.from_pretrained(name, device=resolve_device(device))


def _labels(text: str | None, inputs) -> np.ndarray | None:
    if text is None:
        return None
    count = len(inputs.images)
    if text == "data":
        if inputs.labels is None:
            raise CodecError("--labels data needs an .npz input with arr_1 (its labels)")
        return inputs.labels
    try:
        ids = [int(v) for v in text.split(",")]
    except ValueError:
        raise CodecError(f"--labels must be 'data', one class id or {count} comma-separated ids, got {text!r}") \
            from None
    if len(ids) not in (1, count):
        raise CodecError(f"--labels gives {len(ids)} ids for {count} images (give one, or one per image)")
    return np.array(ids * count if len(ids) == 1 else ids, dtype=np.int64)


def cmd_compress(args):
    from ..codec.api import encode
    from ..codec.engine import check_codable
    from ..codec.inputs import read_inputs

    out = Path(args.out)
    if out.is_dir() or out.suffix != ".fgm":
        raise CodecError(f"--out {out}: give a file name ending in .fgm")
    model = _load_model(args.model, args.device)
    check_codable(model)
    inputs = read_inputs(args.inputs, model.config.channels, model.config.image_size)
    if inputs.names is not None:
        stems = [Path(n).stem for n in inputs.names]
        dup = next((s for s in stems if stems.count(s) > 1), None)
        if dup is not None:
            raise CodecError(f"two inputs would decode to {dup}.png; rename one")
    labels = _labels(args.labels, inputs)
    start = time.perf_counter()
    data = encode(model, inputs.images, labels, names=inputs.names, chunk=args.chunk, batch_size=args.batch_size,
                  model_name=args.model, progress=True)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    n, dims = len(inputs.images), inputs.images[0].size
    print(f"compressed {n} images into {out}: {len(data):,} bytes, {8 * len(data) / (n * dims):.4f} bits/pixel, "
          f"{n / seconds:.2f} images/s")


def _index(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise CodecError(f"--index must be comma-separated image numbers, got {text!r}") from None


def _safe_names(names: list[str]) -> list[str]:
    """PNG names inside the output folder: the stored names' stems, refusing anything else."""
    out = [f"{Path(n).stem}.png" for n in names]
    if any(Path(n).name != n or n.startswith(".") for n in names) or len(set(out)) != len(out):
        raise CodecError("the file's image names are not plain, distinct file names; it was not written by "
                         "fractalgm compress")
    return out


def _write_pngs(folder: Path, images: np.ndarray, names: list[str]):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        atomic_write(folder / name, lambda tmp, p=pixels: Image.fromarray(p).save(tmp, format="PNG"))


def cmd_decompress(args):
    from ..codec.api import decode
    from ..codec.container import unpack

    source = Path(args.input)
    if not source.is_file():
        raise CodecError(f"{source}: no such file")
    out = Path(args.out)
    if out.suffix == ".npz" and out.is_dir() or out.suffix != ".npz" and out.exists() and not out.is_dir():
        raise CodecError(f"--out {out}: give a folder for PNGs, or a file name ending in .npz")
    c = unpack(source.read_bytes(), str(source))
    index = _index(args.index)
    model = _load_model(args.model or c.header["model"], args.device)
    start = time.perf_counter()
    images = decode(model, c, index=index, batch_size=args.batch_size, model_name=args.model or c.header["model"],
                    progress=True).numpy()
    seconds = time.perf_counter() - start
    chosen = list(range(len(c))) if index is None else index
    if out.suffix == ".npz":
        arrays = {"arr_0": images.transpose(0, 2, 3, 1)}
        if c.labels is not None:
            arrays["arr_1"] = c.labels[chosen]
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: np.savez(tmp, **arrays))
    else:
        names = [f"{i:05d}.png" for i in range(len(c))] if c.names is None else _safe_names(c.names)
        _write_pngs(out, images, [names[i] for i in chosen])
    print(f"decompressed {len(images)} images into {out}: {len(images) / seconds:.2f} images/s")


def add_parser(subparsers):
    """Register `compress` and `decompress`."""
    c = subparsers.add_parser("compress", help="lossless compression of images with the model", description=(
        "Code images losslessly with the model's own probabilities (about its bits/dim). Example: "
        "fractalgm compress shirts/ --out shirts.fgm"))
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="PNG/JPEG files, folders of them, or one ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels)")
    c.add_argument("--out", required=True, help="the .fgm file to write")
    c.add_argument("--model", default=DEFAULT_MODEL,
                   help="model folder or shipped model name; AR, or MAR without guiding pixels "
                   f"(default: {DEFAULT_MODEL})")
    c.add_argument("--labels", help="code class-conditionally with these labels (stored in the file): 'data' "
                   "(the .npz's arr_1), one class id for all, or one per image (default: unconditional)")
    c.add_argument("--chunk", type=POSITIVE_INT.parse, default=64,
                   help="rows of every model run, stored in the file; decoding uses the same (default: 64)")
    c.add_argument("--batch-size", type=POSITIVE_INT.parse, help="images per model run, ≤ --chunk (default: --chunk)")
    c.add_argument("--device", default="cpu", type=parse_device, help="cpu, cuda, cuda:N or auto; decode on the "
                   "same kind of device (default: cpu)")
    c.set_defaults(fn=cmd_compress)

    d = subparsers.add_parser("decompress", help="decode a .fgm file", description=(
        "Decode a file written by fractalgm compress, bit-exactly. Example: fractalgm decompress shirts.fgm "
        "--out shirts/ (or --out shirts.npz; --index 3,7 decodes only those images)"))
    d.add_argument("input", help="the .fgm file")
    d.add_argument("--out", required=True, help="a folder for the PNGs (original names), or a .npz file")
    d.add_argument("--model", help="model folder or shipped model name (default: the one named in the file)")
    d.add_argument("--index", help="comma-separated image numbers (from 0) to decode alone (default: all)")
    d.add_argument("--batch-size", type=POSITIVE_INT.parse,
                   help="images per model run, ≤ the file's chunk (default: its chunk)")
    d.add_argument("--device", default="cpu", type=parse_device, help="cpu, cuda, cuda:N or auto (default: cpu)")
    d.set_defaults(fn=cmd_decompress)
