"""The codec's one error type: a ValueError, so the command line turns it into `error: …` and exit 2."""


class CodecError(ValueError):
    """A file that cannot be coded or decoded; the message names the file or the mismatch."""
