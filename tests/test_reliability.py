"""Issue 12's findings 1-8 and 10, each reproduced through the real CLI on Fashion-MNIST (tiny preset).

Each test failed on 653b0ee (trained forever, overwrote, saved poisoned weights, diverged on
resume, needed every flag again, checked outputs after the work, overran its budget, or left
orphaned copies) and passes now.
"""
import json
import math
import shutil
import subprocess
import sys
import time

import pytest
import torch

from fractalgm import FractalGen, get_preset
from fractalgm.cli import main
from fractalgm.data import ImageDataset
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer

from conftest import needs_fmnist  # noqa: E402

T = ["train", "--preset", "tiny_fmnist", "--batch-size", "16", "--val-images", "8", "--log-every", "1",
     "--eval-every", "100000", "--amp", "none", "--no-final-eval"]


def run(argv, capsys):
    """main(argv) → (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def state(run_dir):
    return torch.load(run_dir / "train_state.pt", weights_only=True)


# ---------------------------------------------------------------------------- 1. negative budgets
@pytest.mark.parametrize("budget", [("--minutes", "-1"), ("--steps", "-5"), ("--steps", "0"), ("--epochs", "0")])
def test_1_negative_or_zero_budget_is_refused_before_training(tmp_path, budget):
    cmd = [sys.executable, "-m", "fractalgm", *T, *budget, "--out", str(tmp_path / "r")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # 653b0ee trained forever here
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"argument {budget[0]}" in r.stderr and budget[1] in r.stderr and ("≥ 1" in r.stderr or "> 0" in r.stderr)
    assert not (tmp_path / "r").exists()


def test_1_negative_budget_is_refused_by_the_api():
    for bad in ({"minutes": -1}, {"steps": -5}, {"epochs": 0.0}, {"steps": 3, "minutes": 1}):
        with pytest.raises(ValueError, match="steps|minutes|epochs"):
            TrainConfig(**bad)


# ---------------------------------------------------------------------------- 2. silent overwrite
@needs_fmnist
def test_2_an_existing_run_is_not_overwritten(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "4", "--save-every", "2", "--out", str(r)], capsys)[0] == 0
    code, _, err = run(T + ["--steps", "3", "--out", str(r)], capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert state(r)["step"] == 4 and [x["step"] for x in records(r)] == [0, 1, 2, 3, 4]
    assert run(T + ["--steps", "3", "--out", str(r), "--overwrite"], capsys)[0] == 0
    assert state(r)["step"] == 3 and [x["step"] for x in records(r)] == [0, 1, 2, 3]  # one run, not two mixed


# ---------------------------------------------------------------------------- 3. poisoned saves
@needs_fmnist
def test_3_exploded_weights_are_never_saved(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "2", "--save-every", "1", "--lr", "1e-3", "--out", str(r)], capsys)[0] == 0
    good = state(r)
    code, _, err = run(["train", "--out", str(r), "--resume", "--steps", "8", "--save-every", "1", "--lr", "1e6"],
                       capsys)
    assert code == 1 and "Traceback" not in err
    assert "train_state.pt (step 2)" in err  # names the checkpoint that exists
    kept = state(r)
    assert kept["step"] == 2 and all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())
    model = FractalGen.from_pretrained(r / "model")  # still usable
    assert all(torch.isfinite(p).all() and p.abs().max() < 1e4 for p in model.parameters())


@needs_fmnist
def test_3_without_a_checkpoint_the_message_says_none_exists(tmp_path, capsys):
    r = tmp_path / "r"
    code, _, err = run(T + ["--steps", "6", "--save-every", "1", "--lr", "1e6", "--out", str(r)], capsys)
    assert code == 1 and "no checkpoint was saved yet" in err
    assert not (r / "train_state.pt").exists()


# ---------------------------------------------------------------------------- 5. resume reads the run
@needs_fmnist
def test_5_resume_needs_no_repeated_flags(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "2", "--save-every", "2", "--lr", "2e-3", "--seed", "3", "--out", str(r)], capsys)[0] == 0
    code, out, err = run(["train", "--out", str(r), "--resume", "--steps", "3"], capsys)
    assert code == 0, err
    assert state(r)["step"] == 3
    saved = json.loads((r / "train_config.json").read_text())
    assert saved["train"]["lr"] == 2e-3 and saved["train"]["seed"] == 3 and saved["run"]["preset"] == "tiny_fmnist"
    code, _, err = run(["train", "--out", str(r), "--resume", "--preset", "fractalmar_fmnist"], capsys)
    assert code == 2 and "another model" in err


@needs_fmnist
def test_5_truncated_train_state_gives_a_clear_error(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "2", "--out", str(r)], capsys)[0] == 0
    data = (r / "train_state.pt").read_bytes()
    (r / "train_state.pt").write_bytes(data[: len(data) // 2])
    code, _, err = run(["train", "--out", str(r), "--resume", "--steps", "3"], capsys)
    assert code == 2 and "truncated" in err and "train_state.pt" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- 6. outputs checked first
@needs_fmnist
def test_6_outputs_are_checked_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [
        (["sample", "--preset", "tiny_fmnist", "--labels", "0", "--per-label", "1", "--out", str(tmp_path / "noext")],
         "--out"),
        (["sample", "--preset", "tiny_fmnist", "--labels", "0", "--per-label", "1", "--out", str(blocker / "x.png")],
         "--out"),
        (["inpaint", "--preset", "tiny_fmnist", "--dataset-index", "0", "--half", "top", "--num-samples", "1",
          "--out", str(blocker / "x.png")], "--out"),
        (["nll", "--preset", "tiny_fmnist", "--limit", "2", "--json", str(blocker / "r.json")], "--json"),
        (["sample", "--preset", "tiny_fmnist", "--labels", "0", "--out", str(tmp_path / "g.png"),
          "--animate", str(tmp_path / "a.avi")], "animation"),
    ]
    for argv, flag in cases:
        code, out, err = run(argv, capsys)
        assert code == 2 and flag in err and "Traceback" not in err, (argv, err)
        assert "sampling" not in err and "bits/dim" not in out and "wrote" not in out  # no work was done


def test_6_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from fractalgm.io.atomic import atomic_write

    target = tmp_path / "result.json"
    target.write_text("old")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------- 7. budgets hold
def _tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (n,), generator=g), 10, "random")


def test_7_minutes_cover_the_end_of_run_work(tmp_path):
    torch.manual_seed(0)
    budget = 3.0
    # 100 sample images make the end-of-run grid far longer than the budget (653b0ee ran it anyway)
    cfg = TrainConfig(minutes=budget / 60, batch_size=8, lr=1e-3, log_every=1, eval_every=10**6, save_every=10**6,
                      val_images=8, amp="none", device="cpu", sample_labels=tuple(range(10)) * 10)
    trainer = Trainer(FractalGen(get_preset("tiny_fmnist")), _tiny_data(), tmp_path, cfg, val_set=_tiny_data(16),
                      progress_bar=False)
    t0 = time.monotonic()
    trainer.fit()
    wall = time.monotonic() - t0
    assert wall < budget + 1.5, wall  # one indivisible unit (a step, a sampling step, a save) of slack
    assert any("skipped" in n for n in trainer.notes)  # and it says what it left out
    assert (tmp_path / "train_state.pt").exists()


def test_7_end_of_run_work_can_be_skipped(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1, val_images=8, amp="none", device="cpu",
                      final_eval=False)
    Trainer(FractalGen(get_preset("tiny_fmnist")), _tiny_data(), tmp_path, cfg, val_set=_tiny_data(16),
            progress_bar=False).fit()
    assert [r["step"] for r in records(tmp_path) if "val_bpd" in r] == [0]  # only the starting point
    assert not (tmp_path / "samples").exists()


# ---------------------------------------------------------------------------- 8. silent no-ops
@needs_fmnist
def test_8_no_silent_no_ops(tmp_path, capsys):
    for argv, flag in ((T + ["--steps", "2", "--grad-accum", "0"], "--grad-accum"),
                       (T + ["--epochs", "0"], "--epochs"),
                       (["nll", "--preset", "tiny_fmnist", "--limit", "0"], "--limit")):
        code, _, err = run(argv + ["--out", str(tmp_path / "x")] if argv[0] == "train" else argv, capsys)
        assert code == 2 and f"argument {flag}" in err and "got '0'" in err
    r = tmp_path / "r"
    assert run(T + ["--steps", "4", "--out", str(r)], capsys)[0] == 0
    first = records(r)[1]
    assert first["step"] == 1 and first["lr"] > 0  # warm-up no longer starts at exactly 0
    lrs = [x["lr"] for x in records(r)[1:]]
    assert lrs[-1] > 0 and all(math.isfinite(v) for v in lrs)  # nor ends at exactly 0


# ---------------------------------------------------------------------------- 10. orphans and pairs
@needs_fmnist
def test_10_leftovers_are_removed_and_the_pair_made_consistent(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "2", "--save-every", "2", "--out", str(r)], capsys)[0] == 0
    behind = tmp_path / "model_at_2"
    shutil.copytree(r / "model", behind)
    assert run(["train", "--out", str(r), "--resume", "--steps", "4"], capsys)[0] == 0
    # a kill between the two writes of a save: the model folder one save behind train_state.pt
    shutil.rmtree(r / "model")
    shutil.copytree(behind, r / "model")
    (r / ".model.tmp-dead1234").mkdir()
    (r / ".model.tmp-dead1234" / "model.safetensors").write_bytes(b"\0" * 4096)
    shutil.copytree(behind, r / ".model.old-dead5678")
    (r / ".train_state.pt.tmp-4242").write_bytes(b"\0" * 4096)
    code, _, err = run(["train", "--out", str(r), "--resume", "--steps", "4"], capsys)
    assert code == 0 and "removed 3 temporary" in err and "re-exported" in err
    assert sorted(p.name for p in r.iterdir() if p.name.startswith(".") and p.name != ".lock") == []
    ema = state(r)["ema"]
    model = FractalGen.from_pretrained(r / "model")
    assert all(torch.equal(v, ema[k].to(v.dtype)) for k, v in model.state_dict().items())


@needs_fmnist
def test_10_a_save_killed_between_its_renames_is_restored(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(T + ["--steps", "2", "--out", str(r)], capsys)[0] == 0
    (r / "model").rename(r / ".model.old-abcd1234")  # the state of a kill between the two renames
    code, _, err = run(["train", "--out", str(r), "--resume", "--steps", "3"], capsys)
    assert code == 0 and "restored" in err
    assert FractalGen.from_pretrained(r / "model") is not None and not list(r.glob(".model.*"))
