"""Two real processes (torchrun, gloo on CPU) on a streaming ImageFolder: the averaged gradient of one
DDP step, and resuming a 2-process run on one process."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fractalgm import FractalGen, get_preset
from fractalgm.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def deterministic_config():
    """tiny_fmnist made deterministic in training: AR levels (no masks), dropout and label drop off."""
    cfg = get_preset("tiny_fmnist")
    levels = tuple(dataclasses.replace(lv, kind="ar", attn_dropout=0.0, proj_dropout=0.0) for lv in cfg.levels)
    return cfg.replace(levels=levels, num_conds=1, label_drop_prob=0.0)


def gray_folder(root: Path, per_class=8) -> Path:
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (30, 32), dtype=np.uint8), "L").save(root / c / f"{i}.png")
    return root


def test_ddp_step_equals_one_process_on_the_concatenated_batches(tmp_path):
    folder = gray_folder(tmp_path / "data")
    out = tmp_path / "ddp"
    r = subprocess.run(TORCHRUN + [str(Path(__file__).with_name("ddp_gradient_check.py")), str(folder), str(out)],
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(2)]
    seen = torch.cat([ranks[0]["images"], ranks[1]["images"]])
    assert len({bytes(x.numpy()) for x in seen}) == 8  # disjoint shares
    torch.manual_seed(0)
    model = FractalGen(deterministic_config())
    model.train()
    model(seen, torch.cat([ranks[0]["labels"], ranks[1]["labels"]])).backward()
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        for rank in ranks:  # DDP leaves the same averaged gradient on every rank
            assert torch.allclose(rank["grads"][name], p.grad, rtol=1e-4, atol=1e-7), name


def test_resume_on_another_world_size_refuses_then_keeps_the_global_batch(tmp_path, capsys):
    folder = gray_folder(tmp_path / "data", per_class=10)
    run = tmp_path / "run"
    common = ["--preset", "tiny_fmnist", "--data", str(folder), "--batch-size", "4", "--out", str(run),
              "--amp", "none", "--eval-every", "1000", "--val-images", "2", "--device", "cpu", "--workers", "1"]
    r = subprocess.run(TORCHRUN + ["-m", "fractalgm", "train", "--steps", "2"] + common,
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = torch.load(run / "train_state.pt", weights_only=True)["data"]
    assert saved["world"] == 2 and saved["global_batch"] == 8
    with pytest.raises(SystemExit):
        main(["train", "--steps", "3", "--resume"] + common)
    err = capsys.readouterr().err
    assert "trained on 2 process(es), now 1" in err and "--allow-world-change" in err
    main(["train", "--steps", "3", "--resume", "--allow-world-change"] + common)
    assert "same global batch (8)" in capsys.readouterr().out
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["step"] == 3 and state["data"] == {**saved, "world": 1}
    assert json.loads((run / "train_config.json").read_text())["train"]["grad_accum"] == 2
