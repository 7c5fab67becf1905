"""Lossless image compression with an exact-likelihood (AR) model: each pixel is range-coded with the
model's own probabilities, so a file costs about the model's bits/dim. See docs/codec.md."""
from .api import decode, encode
from .container import Container, unpack
from .errors import CodecError

__all__ = ["encode", "decode", "unpack", "Container", "CodecError"]
