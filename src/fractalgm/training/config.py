"""`TrainConfig`: every training knob once, with its default, its valid range and its help text.

The `fractalgm train` flags are generated from these fields (`cli/train.py`), so a default is
written in exactly one place and the CLI and the Python API refuse the same bad values with the
same message: a negative budget, a zero batch or accumulation, a warm-up of the whole run, an EMA
decay of 1, … all fail at construction, before any work starts.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

from ..checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    Choice,
    Number,
    NumberList,
    device_problem,
)

AMP_MODES = ("auto", "bf16", "fp16", "none")
FLIP_MODES = ("auto", "on", "off")
BUDGETS = ("steps", "epochs", "minutes")


def _knob(default, check, help: str):
    """A dataclass field carrying its check and help text (read by __post_init__ and the CLI)."""
    return field(default=default, metadata={"check": check, "help": help})


@dataclass
class TrainConfig:
    batch_size: int = _knob(32, POSITIVE_INT, "images per micro-batch on each process")
    lr: float | None = _knob(None, POSITIVE, "absolute peak learning rate; none means blr · effective batch / 256")
    blr: float = _knob(0.016, POSITIVE, "base LR, lr = blr · batch · accum · processes / 256 (0.016 gives 2e-3 at "
                       "batch 32, tuned for short CPU runs in docs/tuning.md; the reference's ImageNet recipe is "
                       "5e-5 at batch 2048)")
    min_lr: float = _knob(0.0, NON_NEGATIVE, "learning rate at the end of the cosine decay")
    weight_decay: float = _knob(0.05, NON_NEGATIVE, "AdamW weight decay (not applied to biases and norms)")
    betas: tuple[float, float] = _knob((0.9, 0.95), NumberList(Number(float, 0, 1, high_open=True), 2),
                                       "AdamW betas, e.g. 0.9,0.95")
    warmup: float = _knob(0.05, Number(float, 0, 1, high_open=True), "linear warm-up, as a fraction of the run")
    steps: int | None = _knob(None, POSITIVE_INT, "budget: optimizer steps")
    epochs: float | None = _knob(None, POSITIVE, "budget: passes over the training set")
    minutes: float | None = _knob(None, POSITIVE, "budget: wall-clock minutes for the whole run, end-of-run "
                                  "validation and samples included; the LR schedule follows the clock")
    grad_clip: float = _knob(3.0, POSITIVE, "clip the gradient norm to this value")
    grad_accum: int = _knob(1, POSITIVE_INT, "micro-batches accumulated per optimizer step")
    ema_decay: float = _knob(0.995, Number(float, 0, 1, high_open=True), "decay of the weights' moving average "
                             "(the EMA weights are the ones saved, validated and sampled)")
    amp: str = _knob("auto", Choice(AMP_MODES), "mixed precision: auto (bf16 on CPU/CUDA), bf16, fp16 or none")
    seed: int = _knob(0, SEED, "seed of the initialisation, the data order and the masks")
    log_every: int = _knob(20, POSITIVE_INT, "log to metrics.jsonl every N steps")
    eval_every: int = _knob(500, POSITIVE_INT, "validate and write a sample grid every N steps")
    save_every: int = _knob(500, POSITIVE_INT, "save the model folder and train_state.pt every N steps")
    val_images: int = _knob(500, POSITIVE_INT, "validation images per evaluation")
    sample_labels: tuple[int, ...] | None = _knob(None, NumberList(NON_NEGATIVE_INT),
                                                  "labels of the sample grids, e.g. 0,1,2 (default: every class)")
    final_eval: bool = _knob(True, None, "validate and write a sample grid at the end of the run (counts "
                             "against --minutes; skipped when the budget is spent)")
    device: str = _knob("auto", None, "cpu, cuda, cuda:N, mps or auto")
    # data feeding and the global batch under torchrun (data/pipeline.py, recipe.py)
    workers: int = _knob(4, NON_NEGATIVE_INT, "DataLoader workers decoding image folders and shards "
                         "(0 = in the training process)")
    prefetch: int = _knob(4, POSITIVE_INT, "batches each worker prepares ahead")
    flip: str = _knob("auto", Choice(FLIP_MODES), "random horizontal flips: auto (on for natural images — "
                      "folders, shards, CIFAR, photos — off for digits and Fashion-MNIST), on or off")
    global_batch: int | None = _knob(None, POSITIVE_INT, "images per optimizer step over all processes; sets "
                                     "grad_accum = global batch / (batch size × processes)")
    allow_world_change: bool = _knob(False, None, "let --resume continue on another number of processes at "
                                     "the same global batch (same data order and schedule, not bit-identical)")
    val_passes: int = _knob(1, POSITIVE_INT, "forward passes averaged per validation NLL (the reference "
                            "uses 10 for MAR models)")

    def __post_init__(self):
        for f in fields(self):
            value, check = getattr(self, f.name), f.metadata.get("check")
            if check is not None and not (value is None and f.default is None):
                setattr(self, f.name, check.check(f.name, value))
        for name in ("final_eval", "allow_world_change"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or (problem := device_problem(self.device)) is not None:
            raise ValueError(f"device {problem or f'must be a string, got {self.device!r}'}")
        given = [name for name in BUDGETS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one budget, not {' and '.join(given)}")
        if self.lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")

    @property
    def budget(self) -> str | None:
        """The name of the budget given (steps, epochs or minutes), or None."""
        return next((name for name in BUDGETS if getattr(self, name) is not None), None)

    def require_budget(self):
        if self.budget is None:
            raise ValueError("give a budget: steps, epochs or minutes (--steps, --epochs or --minutes)")

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step on one process (times the world size under torchrun)."""
        return self.batch_size * self.grad_accum

    def base_lr(self, world: int = 1) -> float:
        return self.lr if self.lr is not None else self.blr * self.effective_batch * world / 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From `to_dict()` output (e.g. train_config.json); unknown keys from other versions are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
