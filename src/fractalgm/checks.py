"""Checks for values that users give (CLI flags, `TrainConfig` fields, sampling options).

Each check fails with a message that names the argument, the value and the valid range, so a bad value
is refused before any work starts (no traceback, no silent no-op, no gradient ascent on a negative
budget). The same objects serve three callers: dataclass `__post_init__` (`check`), argparse
(`parse`, raising `ArgumentTypeError`) and help texts (`describe`).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Number:
    """An int or float in a range; `None` bounds are open-ended, `*_open` excludes the bound itself."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def _show(self, bound) -> str:
        return str(int(bound)) if self.kind is int else f"{bound:g}"

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {lo}{self._show(self.low)}, {self._show(self.high)}{hi}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '≥'} {self._show(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '≤'} {self._show(self.high)}"
        return what

    def ok(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def check(self, name: str, value):
        if not self.ok(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.options)

    def check(self, name: str, value):
        if value not in self.options:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: str):
        if text not in self.options:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return text


@dataclass(frozen=True)
class NumberList:
    """A comma-separated list of numbers, each checked by `item`; `length` fixes how many."""

    item: Number
    length: int | None = None

    def describe(self) -> str:
        count = f"{self.length} " if self.length else ""
        return f"{count}comma-separated values, each {self.item.describe()}"

    def ok(self, value) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) > 0
                and (self.length is None or len(value) == self.length) and all(self.item.ok(v) for v in value))

    def check(self, name: str, value):
        if not self.ok(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return tuple(value)

    def parse(self, text: str):
        try:
            value = tuple(self.item.kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if not self.ok(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


# the ranges users hit most often, named once
POSITIVE_INT = Number(int, 1)
NON_NEGATIVE_INT = Number(int, 0)
POSITIVE = Number(float, 0, low_open=True)
NON_NEGATIVE = Number(float, 0)
FRACTION = Number(float, 0, 1)  # [0, 1]
SEED = Number(int, 0, 2**63 - 1)


def device_problem(name: str) -> str | None:
    """Why `name` is not a usable device on this machine (None when it is): auto, cpu, cuda[:N], mps."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"got {name!r} but this machine has no CUDA device (use cpu or auto)"
        if device.index is not None and device.index >= count:
            return f"got {name!r} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}"
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            return f"got {name!r} but MPS is not available on this machine (use cpu or auto)"
    elif device.type != "cpu":
        return f"must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
    return None


def parse_device(text: str) -> str:
    """argparse type for --device."""
    if (problem := device_problem(text)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return text
