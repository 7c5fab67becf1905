"""A typed flag that cannot have an effect is refused with one line saying why, before any work;
requests whose output cannot be written are refused before sampling, naming the alternative."""
import pytest

from fractalgm.cli import main

from conftest import needs_fmnist  # noqa: E402

AR = ["--model", "fmnist-ar", "--device", "cpu"]  # every level AR: exact NLL, one step per token
MAR = ["--preset", "tiny_fmnist", "--device", "cpu"]  # MAR levels, 10 classes

REFUSED = {
    # sample
    "per-label without labels": (["sample", "--per-label", "100000", *AR], "--per-label"),
    "num-images with labels (PNG)": (["sample", "--labels", "1", "--num-images", "5", *AR], "--num-images"),
    "per-label with .npz": (["sample", "--labels", "1", "--per-label", "5", "--out", "s.npz", *AR], "--per-label"),
    "batch-size for a PNG": (["sample", "--batch-size", "8", *AR], "--batch-size"),
    "scale for an .npz": (["sample", "--scale", "3", "--out", "s.npz", *AR], "--scale"),
    "animate for an .npz": (["sample", "--animate", "a.gif", "--out", "s.npz", *AR], "--animate"),
    "fps without animate": (["sample", "--fps", "10", *AR], "--fps"),
    "num-iter on an AR model": (["sample", "--num-iter", "4", *AR], "--num-iter"),
    "cfg-schedule without guidance": (["sample", "--cfg-schedule", "linear", *AR], "--cfg-schedule"),
    "filter without guidance": (["sample", "--filter-threshold", "0.1", *AR], "--filter-threshold"),
    "preset and model": (["sample", "--model", "fmnist-ar", "--preset", "tiny_fmnist"], "--preset"),
    # nll
    "passes with exact": (["nll", "--exact", "--passes", "3", *MAR], "--passes"),
    "order without exact": (["nll", "--order", "raster", *MAR], "--order"),
    "passes on an AR model": (["nll", "--passes", "3", *AR], "--passes"),
    "seed on an AR model": (["nll", "--seed", "3", *AR], "--seed"),
    "data-dir with another dataset": (["nll", "--data", "digits", "--data-dir", "/tmp", *AR], "--data-dir"),
    "skip-bad with a built-in dataset": (["nll", "--skip-bad", *AR], "--skip-bad"),
    # inpaint
    "mask-white-known without a mask": (["inpaint", "--dataset-index", "0", "--half", "top",
                                         "--mask-white-known", *AR], "--mask-white-known"),
    # eval
    "eval passes without likelihood": (["eval", "--nll-images", "0", "--passes", "2", *AR], "--passes"),
    "eval passes on an AR model": (["eval", "--passes", "2", *AR], "--passes"),
    "eval inception weights": (["eval", "--inception-weights", "w.pth", *AR], "--inception-weights"),
    "eval sampling flags with --samples": (["eval", "--samples", "s.npz", "--num-samples", "5", *AR],
                                           "--num-samples"),
    "eval fast with --samples": (["eval", "--samples", "s.npz", "--fast", *AR], "--fast"),
    "eval cfg unconditional": (["eval", "--unconditional", "--cfg", "1,2", *AR], "--cfg"),
    # info, prepare, serve, train
    "info preset with list": (["info", "--list", "--preset", "tiny_fmnist"], "--preset"),
    "prepare quality for png": (["prepare", "/tmp", "--out", "/tmp/x", "--image-size", "8", "--quality", "80"],
                                "--quality"),
    "serve allow-remote on loopback": (["serve", "--allow-remote", "--port", "1"], "--allow-remote"),
    "train label-drop unconditional": (["train", "--out", "RUN", "--steps", "1", "--unconditional",
                                        "--label-drop", "0.2"], "--label-drop"),
}


@needs_fmnist
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_flag_without_effect_is_refused(case, tmp_path, monkeypatch, capsys):
    argv, flag = REFUSED[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: {flag} has no effect here: ")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@needs_fmnist
def test_the_same_flags_with_their_partner_are_accepted(tmp_path, capsys):
    """The rules look at what was typed, not at defaults: a flag that matters passes."""
    out = tmp_path / "s.npz"
    main(["sample", "--labels", "1,2", "--per-label", "1", "--scale", "1", "--cfg", "1.5", "--cfg-schedule",
          "linear", "--out", str(tmp_path / "g.png"), *AR])
    main(["sample", "--num-images", "2", "--batch-size", "1", "--out", str(out), "--preset", "tiny_fmnist",
          "--num-iter", "2", "--device", "cpu"])
    assert (tmp_path / "g.png").exists() and out.exists()
    main(["nll", "--exact", "--order", "raster", "--limit", "2", *MAR])
    assert "bits/dim" in capsys.readouterr().out


@pytest.mark.parametrize("argv, alternative", [
    (["sample", "--labels", "all", "--per-label", "100000"], "--num-images 1000000 --out samples.npz"),
    (["sample", "--num-images", "1000000"], "--num-images 1000000 --out samples.npz"),
])
def test_an_unwritable_grid_is_refused_before_sampling(argv, alternative, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *AR])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "megapixels" in err and alternative in err
    assert list(tmp_path.iterdir()) == []


def test_an_animation_larger_than_memory_is_refused(tmp_path, monkeypatch, capsys):
    """tiny_fmnist records ~800 frames of 28×28 per image (~1.3 MB): 100,000 images need ~125 GB."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["sample", *MAR, "--num-images", "100000", "--scale", "1", "--animate", "a.gif"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--animate would record" in err and "animate fewer images" in err
    assert list(tmp_path.iterdir()) == []
