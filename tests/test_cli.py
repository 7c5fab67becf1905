"""The command line, run in-process on real Fashion-MNIST with the tiny preset."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fractalgm import FractalGen, get_preset
from fractalgm.cli import main

from conftest import needs_fmnist  # noqa: E402


@needs_fmnist
def test_train_sample_nll_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--preset", "tiny_fmnist", "--steps", "4", "--batch-size", "8", "--lr", "1e-3",
          "--log-every", "2", "--eval-every", "4", "--val-images", "8", "--out", str(run), "--amp", "none"])
    assert (run / "model" / "config.json").exists() and (run / "loss.png").exists()
    assert any(json.loads(line).get("val_bpd") for line in (run / "metrics.jsonl").read_text().splitlines())
    assert list((run / "samples").glob("*.png"))

    grid = tmp_path / "grid.png"
    main(["sample", "--model", str(run / "model"), "--labels", "0,3", "--per-label", "2", "--num-iter", "4",
          "--out", str(grid), "--scale", "1", "--save-each", str(tmp_path / "each")])
    assert Image.open(grid).size[0] > 28 and len(list((tmp_path / "each").glob("*.png"))) == 4

    out = tmp_path / "nll.json"
    main(["nll", "--model", str(run / "model"), "--limit", "6", "--batch-size", "3", "--passes", "2",
          "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == 6 and 0 < result["bpd"] < 12 and "estimate" in result["kind"]
    main(["nll", "--model", str(run / "model"), "--limit", "2", "--exact", "--json", str(out)])
    assert json.loads(out.read_text())["kind"].startswith("exact")


@needs_fmnist
def test_resume_continues_the_run(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny_fmnist", "--batch-size", "8", "--out", str(run), "--amp", "none",
            "--eval-every", "1000", "--val-images", "4"]
    main(args + ["--steps", "2"])
    main(args + ["--steps", "3", "--resume"])
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] == 3


def test_info_prints_levels_and_exact_total(capsys):
    main(["info", "--preset", "fractalmar_in64"])
    out = capsys.readouterr().out
    assert "431995648" in out and "g1" in out and "g2" in out
    main(["info", "--list"])
    assert "fractalmar_fmnist" in capsys.readouterr().out


def test_convert_reference_checkpoint(tmp_path):
    model = FractalGen(get_preset("tiny_fmnist"))
    torch.save({"model": model.state_dict()}, tmp_path / "ref.pth")
    main(["convert", str(tmp_path / "ref.pth"), "--out", str(tmp_path / "conv"), "--preset", "tiny_fmnist"])
    loaded = FractalGen.from_pretrained(tmp_path / "conv")
    assert torch.equal(loaded.generator.mask_token, model.generator.mask_token)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny_fmnist", "--out", str(tmp_path), "--steps", "1", "--minutes", "1"])
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "missing")])
    assert "error" in capsys.readouterr().err


def test_help_of_every_command():
    for cmd in ("train", "sample", "inpaint", "nll", "info", "convert"):
        r = subprocess.run([sys.executable, "-m", "fractalgm", cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout


@needs_fmnist
def test_torchrun_two_processes(tmp_path):
    """A real `torchrun` launch (gloo on CPU): two ranks share each global batch, rank 0 saves."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fractalgm", "train", "--preset", "tiny_fmnist", "--steps", "2", "--batch-size", "4",
           "--out", str(run), "--amp", "none", "--eval-every", "1000", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "train_config.json").read_text())["world_size"] == 2
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0], state["rng"][1])  # ranks draw different masks
    FractalGen.from_pretrained(run / "model")


@needs_fmnist
def test_torchrun_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    """A --minutes budget under torchrun, with validations that only rank 0 runs: every rank must agree
    on the clock (and the reserve kept for the final evaluation), else one stops a step early and the
    other is left in a mismatched collective (gloo: "Received data size doesn't match")."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fractalgm", "train", "--preset", "tiny_fmnist", "--minutes", "0.4", "--batch-size", "4",
           "--out", str(run), "--amp", "none", "--eval-every", "7", "--val-images", "40", "--log-every", "1",
           "--save-every", "1000", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(run / "train_state.pt", weights_only=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert state["step"] == max(steps) > 7  # validated mid-run at least once, then ended together


@needs_fmnist
def test_console_script_exits_0_and_prints_only_its_report(tmp_path):
    """The installed `fractalgm` script (what quickstart.sh runs): exit 0, no stray return value."""
    script = Path(sys.executable).with_name("fractalgm")
    r = subprocess.run([str(script), "nll", "--preset", "tiny_fmnist", "--limit", "4", "--batch-size", "4",
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bits/dim over 4 test images" in r.stdout and "{'bpd'" not in r.stdout + r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 4
