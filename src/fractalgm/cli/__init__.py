"""The command line: `fractalgm train | sample | inpaint | nll | eval | info | convert | prepare | serve`."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
