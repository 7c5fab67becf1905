"""Every bad input of docs/reliability.md's table, through the real CLI: refused at once, naming what is wrong.

The cases live in benchmarks/bad_inputs.py (which also prints the table for the docs).
"""
import importlib.util
from pathlib import Path

import pytest

from fractalgm.io.checkpoint import CheckpointError

_spec = importlib.util.spec_from_file_location("bad_inputs", Path(__file__).parents[1] / "benchmarks" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bad_inputs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-inputs")
    bad_inputs.prepare(tmp)
    return tmp


@pytest.mark.parametrize("argv,expected", bad_inputs.CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in bad_inputs.CASES])
def test_bad_input_is_refused_with_a_message_naming_it(argv, expected, files):
    code, text = bad_inputs.answer(argv, files)
    assert code == 2, text
    assert "Traceback" not in text and "error" in text
    for piece in expected:
        assert piece in text, (piece, text)
    assert not (files / "grid.png").exists() and not (files / "strips.png").exists()  # no work was done


def test_nan_weights_are_refused_by_the_api(files):
    from fractalgm import FractalGen

    with pytest.raises(CheckpointError, match="non-finite values .* fake_latent"):
        FractalGen.from_pretrained(files / "nan_model")


def test_every_option_has_help_and_a_default_and_presets_are_listed():
    """`--help` of every subcommand: each option explains itself and states its default."""
    import argparse

    from fractalgm.cli import build_parser
    from fractalgm.presets import list_presets

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)
                if not action.required and not _in_required_group(command, action):
                    assert "default" in action.help, (name, action.option_strings, action.help)
        if any(a.dest == "preset" for a in command._actions):
            assert "tiny_fmnist" in text and all(p in text for p in list_presets()), name


def _in_required_group(parser, action):
    return any(action in g._group_actions and g.required for g in parser._mutually_exclusive_groups)


def test_wrong_sizes_and_empty_masks_are_said(tmp_path, capsys):
    """A mask or image of another size is resized, and the output says so; a mask keeping nothing too."""
    import numpy as np
    from PIL import Image

    from fractalgm.cli import main

    mask = np.zeros((56, 56), np.uint8)
    mask[28:] = 255  # generate the bottom half
    Image.fromarray(mask).save(tmp_path / "mask56.png")
    Image.fromarray(np.full((40, 30), 200, np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "white.png")
    common = ["inpaint", "--preset", "tiny_fmnist", "--num-samples", "1", "--num-iter", "1", "--scale", "1"]
    main(common + ["--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask56.png"),
                   "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert "--mask" in err and "56×56; resized to the model's 28×28" in err
    assert "--image" in err and "30×40; centre-cropped and resized" in err
    main(common + ["--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "white.png"),
                   "--out", str(tmp_path / "b.png")])
    assert "keeps no pixel" in capsys.readouterr().err
    assert (tmp_path / "a.png").exists() and (tmp_path / "b.png").exists()
