"""The `.fgm` file: magic, version, a JSON header, optional labels and names, a per-image index
(length and pixel checksum) so any image decodes alone, the coded words, and a CRC32 of it all.

    b"FGMC" | version (1 byte) | varint n + header JSON (n bytes)
    | labels: one byte per image (when the header says so)
    | names: varint n + zlib("\\n".join(names)) (when the header says so)
    | per image: varint word count + CRC32 of its pixels (4 bytes, little-endian)
    | the images' coded uint32 words, little-endian, one after the other
    | CRC32 of everything before (4 bytes)

Varints keep the index at ~5 bytes an image; the trailing CRC refuses truncated or altered files
before any decoding starts.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import CodecError

MAGIC = b"FGMC"
VERSION = 1
HEADER_KEYS = {"model", "weights", "config", "fractalgm", "torch", "cpu", "device", "dtype", "shape", "chunk",
               "threads", "coder", "precision", "count", "labels", "names"}


def pixel_crc(image: np.ndarray) -> int:
    """CRC32 of an image's uint8 pixels (C, H, W), C-ordered."""
    return zlib.crc32(np.ascontiguousarray(image, dtype=np.uint8).tobytes())


@dataclass
class Container:
    header: dict
    streams: list[np.ndarray]  # uint32 words per image
    crcs: list[int]
    labels: np.ndarray | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.streams)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError("the file is inconsistent (a section runs past its end)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return n
            if shift > 63:
                raise CodecError("the file is inconsistent (a length is too long)")


def pack(c: Container) -> bytes:
    header = dict(c.header, count=len(c), labels=c.labels is not None, names=c.names is not None)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    parts = [MAGIC, bytes([VERSION]), _varint(len(text)), text]
    if c.labels is not None:
        parts.append(np.asarray(c.labels, dtype=np.uint8).tobytes())
    if c.names is not None:
        blob = zlib.compress("\n".join(c.names).encode(), 9)
        parts += [_varint(len(blob)), blob]
    for words, crc in zip(c.streams, c.crcs):
        parts += [_varint(len(words)), crc.to_bytes(4, "little")]
    parts += [np.asarray(w, dtype="<u4").tobytes() for w in c.streams]
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(4, "little")


def unpack(data: bytes, source: str = "the file") -> Container:
    """Parse and verify a whole file; anything but an intact `.fgm` raises `CodecError` naming `source`."""
    if data[:4] != MAGIC:
        raise CodecError(f"{source} is not a fractalgm compressed file (no FGMC magic)")
    if len(data) < 9 or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise CodecError(f"{source} is damaged: its checksum does not match (truncated or altered)")
    if data[4] != VERSION:
        raise CodecError(f"{source} has format version {data[4]}; this fractalgm reads version {VERSION}")
    r = _Reader(data[:-4], 5)
    try:
        header = json.loads(r.take(r.varint()))
        missing = HEADER_KEYS - set(header)
        if missing:
            raise CodecError(f"its header lacks {', '.join(sorted(missing))}")
        n = int(header["count"])
        labels = np.frombuffer(r.take(n), dtype=np.uint8).astype(np.int64) if header["labels"] else None
        names = zlib.decompress(r.take(r.varint())).decode().split("\n") if header["names"] else None
        index = [(r.varint(), int.from_bytes(r.take(4), "little")) for _ in range(n)]
        streams = [np.frombuffer(r.take(4 * k), dtype="<u4").astype(np.uint32) for k, _ in index]
    except (ValueError, KeyError, TypeError, zlib.error) as e:  # CodecError is a ValueError too
        raise CodecError(f"{source} is inconsistent ({e})") from None
    if r.pos != len(r.data) or (names is not None and len(names) != n):
        raise CodecError(f"{source} is inconsistent (its sections do not add up)")
    return Container(header, streams, [crc for _, crc in index], labels, names)
