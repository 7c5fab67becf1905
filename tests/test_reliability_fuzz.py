"""Property-based tests (hypothesis) over config construction and the CLI's argument space.

The oracle is written here independently of `validate.py`: an invalid input must fail at once with
a message naming what is wrong (a ValueError from the API, exit 2 + the flag's name from the CLI),
and a valid one must be accepted (and, for a few drawn ones, really train).
"""
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fractalgm.cli import build_parser, main
from fractalgm.cli.train import resolve_options
from fractalgm.training.config import TrainConfig


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


SPEC = {  # field → is this value valid?
    "batch_size": lambda v: _int(v) and v >= 1,
    "lr": lambda v: v is None or (_num(v) and v > 0),
    "blr": lambda v: _num(v) and v > 0,
    "min_lr": lambda v: _num(v) and v >= 0,
    "weight_decay": lambda v: _num(v) and v >= 0,
    "warmup": lambda v: _num(v) and 0 <= v < 1,
    "steps": lambda v: v is None or (_int(v) and v >= 1),
    "epochs": lambda v: v is None or (_num(v) and v > 0),
    "minutes": lambda v: v is None or (_num(v) and v > 0),
    "grad_clip": lambda v: _num(v) and v > 0,
    "grad_accum": lambda v: _int(v) and v >= 1,
    "ema_decay": lambda v: _num(v) and 0 <= v < 1,
    "amp": lambda v: v in ("auto", "bf16", "fp16", "none"),
    "seed": lambda v: _int(v) and 0 <= v < 2**63,
    "log_every": lambda v: _int(v) and v >= 1,
    "eval_every": lambda v: _int(v) and v >= 1,
    "save_every": lambda v: _int(v) and v >= 1,
    "val_images": lambda v: _int(v) and v >= 1,
}
ANY_VALUE = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                      st.sampled_from(["auto", "bf16", "none", "x", ""]), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SPEC)), ANY_VALUE, max_size=6))
def test_train_config_accepts_exactly_the_valid_values(values):
    bad = [k for k, v in values.items() if not SPEC[k](v)]
    budgets = [b for b in ("steps", "epochs", "minutes") if values.get(b) is not None]
    min_lr_bad = not bad and values.get("lr") is not None and values.get("min_lr", 0.0) > values["lr"]
    if bad or len(budgets) > 1 or min_lr_bad:
        with pytest.raises(ValueError) as e:
            TrainConfig(**values)
        text = str(e.value)
        assert any(k in text for k in bad) or "budget" in text or "min_lr" in text, text
    else:
        cfg = TrainConfig(**values)
        assert all(getattr(cfg, k) == v for k, v in values.items())


TRAIN_FLAGS = ["--batch-size", "--lr", "--warmup", "--steps", "--epochs", "--minutes", "--grad-accum",
               "--ema-decay", "--save-every", "--val-images", "--seed", "--betas", "--amp", "--device"]
SAMPLE_FLAGS = ["--cfg", "--temperature", "--filter-threshold", "--num-iter", "--scale", "--seed", "--per-label",
                "--num-images", "--fps", "--device"]
TEXT_VALUES = st.one_of(
    st.integers(-3, 10**5).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "0.5", "1e-3", "nan", "inf", "-inf", "", "abc", "0.9,0.95", "1,0.9", "4,2",
                     "cpu", "cuda", "cuda:7", "tpu", "mps", "auto", "none", "bf16"]))


def _parse(argv, capsys):
    try:
        return build_parser().parse_args(argv), ""
    except SystemExit as e:
        assert e.code == 2
        return None, capsys.readouterr().err


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), TEXT_VALUES), max_size=4, unique_by=lambda t: t[0]))
def test_train_flags_fail_at_once_naming_the_flag_or_give_a_valid_config(pairs, capsys):
    argv = ["train", "--out", "/nonexistent/never-created"] + [x for pair in pairs for x in (pair[0], pair[1])]
    args, err = _parse(argv, capsys)
    if args is None:
        assert any(f"argument {flag}" in err for flag, _ in pairs), err
        assert "Traceback" not in err
        return
    try:
        cfg, _, _ = resolve_options(args)
    except ValueError as e:  # only a budget problem remains once every flag parsed
        assert "budget" in str(e), str(e)
        return
    assert all(SPEC[k](getattr(cfg, k)) for k in SPEC)
    assert cfg.budget is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(SAMPLE_FLAGS), TEXT_VALUES), max_size=4, unique_by=lambda t: t[0]))
def test_sample_flags_fail_at_once_naming_the_flag(pairs, capsys):
    argv = ["sample"] + [x for pair in pairs for x in (pair[0], pair[1])]
    args, err = _parse(argv, capsys)
    if args is None:
        assert any(f"argument {flag}" in err for flag, _ in pairs), err
        return
    assert math.isfinite(args.cfg) and args.cfg >= 0 and math.isfinite(args.temperature) and args.temperature > 0
    assert 0 <= args.filter_threshold <= 1 and args.scale >= 1 and args.per_label >= 1
    assert args.num_iter is None or min(args.num_iter) >= 1


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 12), accum=st.integers(1, 2), warmup=st.floats(0, 0.9), steps=st.integers(1, 2),
       ema=st.floats(0, 0.9999), seed=st.integers(0, 2**32))
def test_valid_train_flags_really_train(batch, accum, warmup, steps, ema, seed, capsys):
    import torch

    from fractalgm.data import load_dataset

    try:
        load_dataset("fashion_mnist", "test")
    except Exception:  # noqa: BLE001 - any loader failure means the data is not installed
        pytest.skip("Fashion-MNIST not installed")

    out = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    try:
        main(["train", "--preset", "tiny_fmnist", "--out", str(out / "r"), "--batch-size", str(batch),
              "--grad-accum", str(accum), "--warmup", repr(warmup), "--steps", str(steps), "--ema-decay", repr(ema),
              "--seed", str(seed), "--val-images", "4", "--no-final-eval", "--amp", "none", "--device", "cpu"])
        state = torch.load(out / "r" / "train_state.pt", weights_only=True)
        assert state["step"] == steps
        assert all(torch.isfinite(v).all() for v in state["model"].values())
    finally:
        shutil.rmtree(out, ignore_errors=True)
