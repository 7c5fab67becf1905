"""Lossless image compression with an exact-likelihood model (AR, or MAR in raster order): each pixel is
range-coded with the model's own probabilities, so a file costs about its bits/dim. See docs/codec.md."""
from .api import decode, encode
from .container import Container, unpack
from .errors import CodecError

__all__ = ["CodecError", "Container", "decode", "encode", "unpack"]
