"""The `fractalgm` command line: train | sample | inpaint | nll | eval | info | convert | prepare |
compress | decompress | serve.

One module per subcommand, each with `add_parser(sub)` and `run(args)`. Each flag's type checks its range
(`fractalgm.checks`), outputs are checked before the work starts and a typed flag that would do nothing is
refused (`cli.common`), so a bad input fails at once with a one-line message naming the flag and the value.
"""
from __future__ import annotations

import argparse
import sys

from . import codec, convert, info, inpaint, nll, prepare, sample, serve, train
from . import eval as evaluate
from .common import given_flags

SUBCOMMANDS = (train, sample, inpaint, nll, info, evaluate, convert, prepare, codec, serve)  # the order of --help


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fractalgm", description=(
        "Fractal generative models: AR/MAR transformers nested level by level, generating images pixel "
        "by pixel with exact likelihoods."))
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv=None):
    """Parse and run; a bad input or a failed run exits with a one-line `error:` (2: input, 1: run)."""
    from ..training.resume import NonFiniteLoss, SaveError

    args = build_parser().parse_args(argv)
    args.given = given_flags(build_parser, argv)  # a typed flag that would do nothing is refused
    try:
        args.fn(args)  # nothing is returned: the console script would print it and exit 1
    except (NonFiniteLoss, SaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
