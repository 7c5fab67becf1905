"""The reference recipe (--recipe in64|in256): resolved flags, global batch, LR and warm-up in epochs."""
import pytest
import torch

from fractalgm import FractalGen, get_preset
from fractalgm.cli import build_parser
from fractalgm.data import ImageDataset
from fractalgm.cli.train import resolve_options
from fractalgm.training.recipe import grad_accum_for, world_change
from fractalgm.training.config import TrainConfig
from fractalgm.training.trainer import Trainer
from fractalgm.training.optim import lr_at


def parse(*argv):
    """The resolved options of `fractalgm train`, as one namespace: TrainConfig fields and run options."""
    import argparse
    from dataclasses import asdict

    tcfg, run, _ = resolve_options(build_parser().parse_args(["train", "--out", "unused", *argv]))
    return argparse.Namespace(**asdict(tcfg), **run)


def test_recipes_match_the_reference_readme():
    a = parse("--recipe", "in64")
    assert a.preset == "fractalmar_in64" and (a.blr, a.weight_decay, a.grad_clip) == (5e-5, 0.05, 3.0)
    assert (a.epochs, a.warmup, a.batch_size, a.global_batch, a.label_drop) == (800, 0.05, 64, 2048, 0.1)
    assert a.val_passes == 10 and not a.grad_checkpointing and a.steps is None
    b = parse("--recipe", "in256")
    assert (b.preset, b.batch_size, b.global_batch, b.grad_checkpointing) == ("fractalmar_large_in256", 32, 1024, True)
    assert parse("--recipe", "in64", "--preset", "fractalar_in64").val_passes == 1  # AR NLL is exact: one pass
    explicit = parse("--recipe", "in64", "--blr", "1e-4", "--steps", "10", "--preset", "tiny_fmnist")
    assert (explicit.blr, explicit.steps, explicit.epochs, explicit.preset) == (1e-4, 10, None, "tiny_fmnist")


def test_global_batch_sets_accumulation_lr_and_epoch_schedule(tmp_path):
    n = 4096
    data = ImageDataset(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64), 10, "zeros")
    cfg = TrainConfig(batch_size=64, global_batch=2048, blr=5e-5, epochs=800, warmup=40 / 800, device="cpu", amp="none")
    trainer = Trainer(FractalGen(get_preset("tiny_fmnist")), data, tmp_path, cfg, progress_bar=False)
    assert trainer.cfg.grad_accum == 32 and trainer.cfg.base_lr(trainer.world) == pytest.approx(4e-4)  # 2048/256 · 5e-5
    assert trainer.steps_per_epoch == 2 and trainer.plan_steps() == 1600
    assert lr_at(80 / 1600, cfg.warmup, 4e-4) == pytest.approx(4e-4)  # warm-up ends after 40 epochs
    assert lr_at(79 / 1600, cfg.warmup, 4e-4) < 4e-4


@pytest.mark.parametrize("batch, world", [(48, 1), (100, 4), (0, 1)])
def test_global_batch_that_does_not_divide_is_refused(batch, world):
    with pytest.raises(ValueError, match="not a multiple of --batch-size"):
        grad_accum_for(2048, batch, world)


def test_world_change_rules():
    saved = {"world": 4, "global_batch": 16, "num_images": 100, "seed": 0, "flip": False}
    assert world_change(saved, 4, 16, False) is None
    with pytest.raises(ValueError, match="--allow-world-change"):
        world_change(saved, 2, 16, False)
    assert "same global batch (16)" in world_change(saved, 2, 16, True)
    with pytest.raises(ValueError, match="--global-batch 16"):
        world_change(saved, 2, 8, True)
    with pytest.raises(ValueError, match="global batch of 16 .* now 32"):
        world_change(saved, 4, 32, False)
