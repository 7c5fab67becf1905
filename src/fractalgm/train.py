"""Training loop: AdamW with the reference's groups, warm-up + cosine per step, EMA, AMP, exact resume.

A run folder holds::

    train_config.json   the TrainConfig and the model config
    metrics.jsonl       one JSON object per logged step (loss, lr, grad norm, images/s, val bpd)
    loss.png            the loss curve (re-drawn at every save)
    samples/            sample grids from the EMA weights
    model/              the EMA model folder (config.json + model.safetensors), loadable with from_pretrained
    train_state.pt      everything `--resume` needs (weights, EMA, optimizer, step, RNG states)

Resuming is exact: the data order is a function of (seed, epoch), RNG states are restored, and the
schedule is a function of the step, so N steps straight equal N/2 + resume + N/2.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import save_pretrained
from .data import ImageDataset
from .models import FractalGen

LOG = "metrics.jsonl"


@dataclass
class TrainConfig:
    batch_size: int = 64
    lr: float | None = None  # absolute LR; default blr · batch · accum / 256
    blr: float = 3e-3  # small-batch CPU default; the reference's ImageNet recipe is 5e-5 at batch 2048
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: float = 0.05  # fraction of the run
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    grad_clip: float = 3.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    amp: str = "auto"  # auto | bf16 | fp16 | none
    seed: int = 0
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 500
    val_images: int = 500
    sample_labels: tuple[int, ...] | None = None
    device: str = "auto"

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step on one process (times the world size under torchrun)."""
        return self.batch_size * self.grad_accum

    def base_lr(self, world: int = 1) -> float:
        return self.lr if self.lr is not None else self.blr * self.effective_batch * world / 256


class NonFiniteLoss(RuntimeError):
    pass


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The reference's groups: no decay for 1-D parameters and biases; decay for everything else."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(progress: float, warmup: float, base: float, minimum: float = 0.0) -> float:
    """Linear warm-up from 0 over the first `warmup` fraction, then half-cosine to `minimum` at 1.

    `progress` is step/total for step budgets and elapsed/budget for `--minutes` (per step, as the
    reference's per-iteration schedule).
    """
    if progress < warmup:
        return base * progress / warmup
    t = (progress - warmup) / max(1.0 - warmup, 1e-12)
    return minimum + (base - minimum) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


class EMA:
    """Exponential moving average of the parameters (used for evaluation and sampling)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))  # warm start: early averages are short
        for k, v in model.state_dict().items():
            self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def copy_to(self, model: torch.nn.Module):
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def autocast_context(amp: str, device: torch.device):
    if amp == "auto":
        amp = "bf16" if device.type in ("cpu", "cuda") else "none"
    if amp == "none":
        return nullcontext(), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def atomic_torch_save(obj, path: Path):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class Trainer:
    model: FractalGen
    train_set: ImageDataset
    out: Path
    cfg: TrainConfig = field(default_factory=TrainConfig)
    val_set: ImageDataset | None = None
    progress_bar: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.rank, self.world, local_rank = init_distributed()
        self.main = self.rank == 0  # only the main process logs, evaluates and saves
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(self.cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.model.to(self.device)
        self.net = self.model  # what the step calls: the model, or its DDP wrapper
        if self.world > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[local_rank] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.base_lr(self.world),
                                     betas=tuple(self.cfg.betas))
        self.ema = EMA(self.model, self.cfg.ema_decay)
        self.autocast, self.scaler = autocast_context(self.cfg.amp, self.device)
        self.step = 0
        self.total_steps = None  # step budgets
        self.elapsed = 0.0  # seconds trained so far (time budgets)
        self.steps_per_epoch = max(len(self.train_set) // (self.cfg.batch_size * self.world), 1)

    # ------------------------------------------------------------------ state
    def _rng_states(self) -> list[torch.Tensor]:
        """CPU RNG state of every rank (masks and dropout draw from it), gathered on all ranks."""
        state = torch.get_rng_state()
        if self.world == 1:
            return [state]
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def _agree(self, seconds: float) -> float:
        """The slowest rank's value, so every rank follows the same clock-based schedule."""
        if self.world == 1:
            return seconds
        t = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.shadow, "opt": self.opt.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "elapsed": self.elapsed,
                "rng": self._rng_states(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "train_config": json.dumps(asdict(self.cfg))}

    def save(self):
        state = self.state_dict()  # collective under torchrun: every rank takes part
        if not self.main:
            return
        atomic_torch_save(state, self.out / "train_state.pt")
        ema_model = FractalGen(self.model.config)
        self.ema.copy_to(ema_model)
        save_pretrained(ema_model, self.out / "model")

    def resume(self, path: Path | None = None):
        path = Path(path or self.out / "train_state.pt")
        if not path.exists():
            raise FileNotFoundError(f"no training state at {path}; start without --resume")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        # the budget comes from the current config: the same budget resumes exactly, a larger one extends
        self.step, self.elapsed = state["step"], state["elapsed"]
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        torch.set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    # ------------------------------------------------------------------ data
    def batch(self, step: int, micro: int):
        """The micro-batch of a step: a pure function of (seed, step), which makes resume exact."""
        n, bs = len(self.train_set), self.cfg.batch_size * self.world  # the global micro-batch
        index = (step * self.cfg.grad_accum + micro) * bs
        epoch, start = divmod(index, self.steps_per_epoch * bs)
        idx = epoch_order(n, self.cfg.seed, epoch)[start:start + bs]
        idx = idx[self.rank * self.cfg.batch_size:(self.rank + 1) * self.cfg.batch_size]  # this rank's share
        return (self.train_set.images[idx].to(self.device, non_blocking=True),
                self.train_set.labels[idx].to(self.device, non_blocking=True))

    def plan_steps(self) -> int | None:
        """Steps for step/epoch budgets; None for a `minutes` budget (the schedule follows the clock)."""
        c = self.cfg
        if c.steps is not None:
            return c.steps
        if c.epochs is not None:
            return max(1, round(c.epochs * self.steps_per_epoch / c.grad_accum))
        if c.minutes is not None:
            return None
        raise ValueError("give a budget: steps, epochs or minutes")

    @property
    def progress(self) -> float:
        if self.total_steps is not None:
            return self.step / self.total_steps
        return self.elapsed / (self.cfg.minutes * 60)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        c, model = self.cfg, self.model
        model.train()
        lr = lr_at(self.progress, c.warmup, c.base_lr(self.world), c.min_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(c.grad_accum):
            images, labels = self.batch(self.step, micro)
            labels = labels if model.config.num_classes > 0 else None
            with self.autocast:
                loss = self.net(images, labels) / c.grad_accum
            check = loss.detach().clone()
            if self.world > 1:  # every rank must see the same verdict, or the others would hang
                dist.all_reduce(check)
                check /= self.world
            if not torch.isfinite(check):
                raise NonFiniteLoss(
                    f"non-finite loss ({loss.item()}) at step {self.step}; the last good checkpoint is "
                    f"{self.out / 'train_state.pt'} — resume from it with a lower --lr or --amp none")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += check.item()
        if self.scaler:
            self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(model, self.step)
        return {"loss": loss_sum, "lr": lr, "grad_norm": float(gnorm)}

    # ------------------------------------------------------------------ evaluation
    def ema_model(self) -> FractalGen:
        m = FractalGen(self.model.config).to(self.device)
        self.ema.copy_to(m)
        return m.eval()

    @torch.no_grad()
    def validate(self, model: FractalGen) -> float:
        """Validation bpd of the EMA weights on a fixed subset with fixed masks (comparable over time)."""
        from .evaluate.likelihood import dataset_bpd

        n = min(len(self.val_set), self.cfg.val_images)
        return dataset_bpd(model, self.val_set.images[:n], batch_size=250, seed=1234, autocast=self.autocast,
                           progress=False)["bpd"]

    @torch.no_grad()
    def write_samples(self, model: FractalGen):
        from .viz import save_grid

        cfg = model.config
        if cfg.num_classes > 0:
            labels = torch.arange(cfg.num_classes).repeat_interleave(max(1, 40 // cfg.num_classes))[:100]
            if self.cfg.sample_labels:
                labels = torch.tensor(self.cfg.sample_labels)
            imgs = model.sample(labels.to(self.device), generator=torch.Generator(self.device).manual_seed(0))
        else:
            imgs = model.sample(num_images=40, generator=torch.Generator(self.device).manual_seed(0))
        (self.out / "samples").mkdir(exist_ok=True)
        save_grid(imgs.cpu(), self.out / "samples" / f"step_{self.step:07d}.png",
                  nrow=max(1, 40 // max(cfg.num_classes, 1)) if cfg.num_classes else 8, by_column=True)

    def log(self, record: dict):
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the end of the budget (or only up to step `stop_after`, saving state there)."""
        from .viz import plot_metrics

        c = self.cfg
        if self.step == 0:
            torch.manual_seed(c.seed + self.rank)
        if self.main:
            (self.out / "train_config.json").write_text(json.dumps(
                {"train": asdict(c), "world_size": self.world, "model": self.model.config.to_dict()}, indent=2))
        if self.total_steps is None:
            self.total_steps = self.plan_steps()
        from tqdm import tqdm

        timed = self.total_steps is None
        bar = tqdm(total=round(c.minutes * 60) if timed else self.total_steps,
                   initial=round(self.elapsed) if timed else self.step, disable=not (self.progress_bar and self.main),
                   unit="s" if timed else "step", dynamic_ncols=True)
        last = {}
        if self.main and self.val_set is not None and self.step == 0:  # the starting point of the curve
            last = {"step": 0, "val_bpd": self.validate(self.ema_model())}
            self.log(last)
        t_log, imgs_since = time.time(), 0
        while self.progress < 1.0:
            t0 = time.time()
            rec = self.train_step()
            self.elapsed += self._agree(time.time() - t0)
            imgs_since += c.effective_batch * self.world
            done = self.progress >= 1.0
            stop = stop_after is not None and self.step >= stop_after
            if self.main and (self.step % c.log_every == 0 or done):
                now = time.time()
                rec.update(step=self.step, epoch=self.step * c.effective_batch * self.world / len(self.train_set),
                           images_per_s=imgs_since / max(now - t_log, 1e-9), elapsed_s=self.elapsed)
                t_log, imgs_since = now, 0
                self.log(rec)
                last = rec
            if self.main and self.val_set is not None and (self.step % c.eval_every == 0 or done):
                model = self.ema_model()
                val = {"step": self.step, "loss": rec["loss"], "val_bpd": self.validate(model)}
                self.write_samples(model)
                self.log(val)
                bar.write(f"step {self.step}: loss {rec['loss']:.4f}  val bpd {val['val_bpd']:.4f}")
                last = {**rec, **val}
            if self.step % c.save_every == 0 or done or stop:
                self.save()
                if self.main:  # re-drawn with each save, not each log: it re-reads the whole log
                    plot_metrics(self.out / LOG, self.out / "loss.png")
            bar.update(round(self.elapsed) - bar.n if timed else 1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", step=self.step)
            if stop:
                break
        bar.close()
        return last
