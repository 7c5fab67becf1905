"""The paper's training recipe as data, the global batch under torchrun, and resuming on another world size.

Reference (LTH14/fractalgen README and main_fractalgen.py): AdamW β (0.9, 0.95), weight decay 0.05,
lr = blr · global batch / 256 with blr 5e-5, 40 warm-up epochs then half-cosine to 0 at epoch 800,
label drop 0.1, gradient clipping 3.0, global batch 2048 (64 px: 32 GPUs × 64) or 1024 (256 px:
32 GPUs × 32), gradient checkpointing for the 256-px models, and NLL averaged over 10 forward passes
for FractalMAR (1 for FractalAR).
"""
from __future__ import annotations

from dataclasses import dataclass

EPOCHS, WARMUP_EPOCHS = 800, 40


@dataclass(frozen=True)
class Recipe:
    preset: str  # the default preset (any preset of the right size may be trained with it)
    global_batch: int
    per_gpu_batch: int
    grad_checkpointing: bool

    def train_settings(self, mar: bool) -> dict:
        """TrainConfig values of the recipe; `mar` chooses the NLL passes (10 for FractalMAR, 1 for AR)."""
        return {"blr": 5e-5, "lr": None, "min_lr": 0.0, "weight_decay": 0.05, "betas": (0.9, 0.95),
                "epochs": float(EPOCHS), "steps": None, "minutes": None, "warmup": WARMUP_EPOCHS / EPOCHS,
                "grad_clip": 3.0, "batch_size": self.per_gpu_batch, "global_batch": self.global_batch,
                "val_passes": 10 if mar else 1}

    def model_settings(self) -> dict:
        return {"label_drop_prob": 0.1, "grad_checkpointing": self.grad_checkpointing}


RECIPES = {
    "in64": Recipe("fractalmar_in64", global_batch=2048, per_gpu_batch=64, grad_checkpointing=False),
    "in256": Recipe("fractalmar_large_in256", global_batch=1024, per_gpu_batch=32, grad_checkpointing=True),
}


def grad_accum_for(global_batch: int, batch_size: int, world: int) -> int:
    """The accumulation that makes per-GPU batch × world × accumulation equal `global_batch`, or an error."""
    per_step = batch_size * world
    if per_step <= 0 or global_batch <= 0 or global_batch % per_step:
        raise ValueError(f"--global-batch {global_batch} is not a multiple of --batch-size {batch_size} × "
                         f"{world} process(es) = {per_step}; choose a per-GPU batch that divides it")
    return global_batch // per_step


def world_change(saved: dict, world: int, global_batch: int, allow: bool) -> str | None:
    """None when the saved run's layout matches; a note when it changed and `allow`; else a ValueError.

    A different world size keeps the data order and LR schedule exact only at the same global batch;
    the per-rank random streams (masks, dropout, label drop) cannot be mapped onto other ranks, so the
    run is not bit-identical to an uninterrupted one, which is why it takes an explicit flag.
    """
    if not saved:
        return None
    old_world, old_batch = saved["world"], saved["global_batch"]
    if old_world == world and old_batch == global_batch:
        return None
    if old_world == world:
        raise ValueError(f"this run was trained with a global batch of {old_batch} images per step, now "
                         f"{global_batch}: the data order and the LR schedule would not continue; resume with "
                         f"the same --batch-size/--grad-accum (or --global-batch {old_batch})")
    if not allow:
        raise ValueError(f"this run was trained on {old_world} process(es), now {world}. It can continue with "
                         f"the same global batch ({old_batch}) and the same data order and LR schedule, but the "
                         f"per-rank random streams (masks, dropout) cannot be carried over, so it will not be "
                         f"bit-identical to an uninterrupted run; pass --allow-world-change to continue anyway")
    if old_batch != global_batch:
        raise ValueError(f"this run used a global batch of {old_batch}; on {world} process(es) pass "
                         f"--global-batch {old_batch} (or a --batch-size/--grad-accum whose product with the "
                         f"world size is {old_batch})")
    return (f"continuing a {old_world}-process run on {world} process(es) at the same global batch "
            f"({old_batch}): same data order and LR schedule, fresh per-rank random streams")
