"""Training loop: AdamW with the reference's groups, warm-up + cosine per step, EMA, AMP, exact resume.

A run folder holds::

    train_config.json   the TrainConfig, the model config and the CLI's other options (for --resume)
    metrics.jsonl       one JSON object per logged step (loss, lr, grad norm, images/s, val bpd)
    data_issues.tsv     input files skipped (--skip-bad) or converted to the set's channels, if any
    loss.png            the loss curve (re-drawn at every save)
    samples/            sample grids from the EMA weights
    model/              the EMA model folder (config.json + model.safetensors), loadable with from_pretrained
    train_state.pt      everything `--resume` needs (weights, EMA, optimizer, step, RNG states)
    .lock               held by the trainer using the folder (see runfolder.py)

Resuming is exact: the data order is a function of (seed, epoch), RNG states are restored, saving and
evaluating draw no random numbers, and the schedule is a function of the step, so N steps straight
equal N/2 + kill + resume + N/2, bit for bit (train_checkpoint.py has the save/resume rules).
A `--minutes` budget covers the whole run: periodic and end-of-run evaluation count against it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..data import BatchFeed, BatchPlan, ImageSource
from ..io.atomic import atomic_write
from ..models import FractalGen
from ..runtime import autocast_context, init_distributed, resolve_device
from .config import TrainConfig
from .optim import EMA, adamw, lr_at
from .resume import Checkpointing, NonFiniteLoss, describe_signal_exit
from .runfolder import LOG_NAME, RunLock
from .stopsignal import StopOnSignal

DATA_LOG = "data_issues.tsv"  # skipped / converted input files, one per line

__all__ = ["Trainer"]


class _OutOfTime(Exception):
    """Raised inside sampling when the end-of-run work passes the --minutes deadline or a signal came."""


@dataclass
class Trainer(Checkpointing):
    model: FractalGen
    train_set: ImageSource
    out: Path
    cfg: TrainConfig = field(default_factory=TrainConfig)
    val_set: ImageSource | None = None
    progress_bar: bool = True
    overwrite: bool = False  # start over in a folder that holds a run (else: refuse, unless resumed)
    run_options: dict = field(default_factory=dict)  # the CLI's other options, saved for --resume

    def __post_init__(self):
        self.cfg.require_budget()
        self.out = Path(self.out)
        self.rank, self.world, local_rank = init_distributed()
        self.main = self.rank == 0  # only the main process logs, evaluates and saves
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.out)
        self.notes: list[str] = []  # what the folder checks did (printed by the CLI)
        self.resumed = False
        self.device = resolve_device(self.cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.model.to(self.device)
        self.net = self.model  # what the step calls: the model, or its DDP wrapper
        if self.world > 1:
            # without label drop the fake latent gets no gradient; DDP must be told, or the bucket holding it
            # is never all-reduced and every rank silently keeps its own gradient
            self.net = DistributedDataParallel(self.model, device_ids=[local_rank] if self.device.type == "cuda" else None,
                                               find_unused_parameters=self.model.config.label_drop_prob == 0)
        self.opt = adamw(self.model, self.cfg.weight_decay, self.cfg.base_lr(self.world), self.cfg.betas, self.device)
        self.ema = EMA(self.model, self.cfg.ema_decay)
        self.autocast, self.scaler = autocast_context(self.cfg.amp, self.device)
        self.step = 0
        self.total_steps = None  # step budgets
        self.elapsed = 0.0  # seconds of this run so far, evaluation and saves included (time budgets)
        self.reserve = 0.0  # measured seconds of end-of-run work, kept free at the end of a time budget
        self.last_batch = None
        self._last_step_s = 0.0
        self.stop = StopOnSignal()
        self._ema_model = None
        if self.cfg.global_batch is not None:
            from .recipe import grad_accum_for
            self.cfg.grad_accum = grad_accum_for(self.cfg.global_batch, self.cfg.batch_size, self.world)
        self.feed = BatchFeed(self.train_set, self.device, self.cfg.workers, self.cfg.prefetch,
                              log_path=self.out / DATA_LOG if self.main else None)
        self.steps_per_epoch = self.batch_plan().steps_per_epoch  # optimizer steps

    def leave_process_group(self):
        """After a finished run under torchrun: wait for rank 0's end-of-run work, then leave together
        (a rank that exits while the group lives can abort in gloo's teardown and fail the launch)."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _agree(self, *values: float):
        """The largest value over the ranks (the slowest clock): every rank follows one schedule and ends
        at the same step (a rank that stopped early would leave the others in a mismatched collective)."""
        if self.world > 1:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            values = tuple(t.tolist())
        return values[0] if len(values) == 1 else tuple(values)

    def _agreed_reserve(self) -> float:  # as an `_agree` operand: rank 0's, since only rank 0 validates
        return self.reserve if self.main else -math.inf

    # ------------------------------------------------------------------ data
    def batch_plan(self) -> BatchPlan:
        c = self.cfg
        flip = self.train_set.natural if c.flip == "auto" else c.flip == "on"
        return BatchPlan(len(self.train_set), c.batch_size, self.world, self.rank, c.grad_accum, c.seed, flip)

    def batch(self, step: int, micro: int):
        """The micro-batch of a step: a pure function of (seed, step), which makes resume exact."""
        return self.feed.get(self.batch_plan(), step, micro)

    def _resume_data(self, saved: dict | None):
        """Refuse (or, with allow_world_change, adapt to) a resume whose batches would not continue."""
        from .recipe import grad_accum_for, world_change

        c = self.cfg
        if saved and saved["world"] != self.world and c.allow_world_change and c.global_batch is None:
            c.grad_accum = grad_accum_for(saved["global_batch"], c.batch_size, self.world)
        plan = self.batch_plan()
        note = world_change(saved, self.world, plan.global_batch, c.allow_world_change)
        if note:
            torch.manual_seed(c.seed * 1_000_003 + self.step * 1_009 + self.rank)
            if self.main:
                print(note)
        if saved and saved["num_images"] != plan.num_images and self.main:
            print(f"note: the training set has {plan.num_images} images, the saved run had "
                  f"{saved['num_images']}: the data order after resume differs from an uninterrupted run")
        self.steps_per_epoch = plan.steps_per_epoch

    def plan_steps(self) -> int | None:
        """Steps for step/epoch budgets; None for a `minutes` budget (the schedule follows the clock)."""
        c = self.cfg
        if c.steps is not None:
            return c.steps
        if c.epochs is not None:
            return max(1, round(c.epochs * self.steps_per_epoch))
        return None

    @property
    def budget_s(self) -> float:
        return self.cfg.minutes * 60 if self.cfg.minutes is not None else math.inf

    def _time_progress(self, seconds: float) -> float:
        # the end of the run keeps `reserve` seconds for its validation and samples (at most half the budget)
        return seconds / max(self.budget_s - min(self.reserve, self.budget_s / 2), 1e-9)

    @property
    def progress(self) -> float:
        if self.total_steps is not None:
            return self.step / self.total_steps
        return self._time_progress(self.elapsed)

    def _step_progress(self) -> float:
        """Where the coming step sits in the schedule: its middle (see `lr_at`)."""
        if self.total_steps is not None:
            return (self.step + 0.5) / self.total_steps
        guess = self._last_step_s / 2 if self._last_step_s else 5e-4 * self.budget_s
        return self._time_progress(self.elapsed + guess)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        c, model = self.cfg, self.model
        model.train()
        lr = lr_at(self._step_progress(), c.warmup, c.base_lr(self.world), c.min_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(c.grad_accum):
            images, labels = self.batch(self.step, micro)
            labels = labels if model.config.num_classes > 0 else None
            self.last_batch = (images, labels)
            with self.autocast:
                loss = self.net(images, labels) / c.grad_accum
            check = loss.detach().clone()
            if self.world > 1:  # every rank must see the same verdict, or the others would hang
                dist.all_reduce(check)
                check /= self.world
            if not torch.isfinite(check):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {self.step}; {self.last_good()} — "
                                    "resume from it with a lower --lr or --amp none")
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
        """The EMA weights in an eval-mode model (built once, without drawing from the training RNG)."""
        if self._ema_model is None:
            with self._rng_kept():
                self._ema_model = FractalGen(self.model.config).to(self.device)
        self.ema.copy_to(self._ema_model)
        return self._ema_model.eval()

    @torch.no_grad()
    def validate(self, model: FractalGen, deadline: float = math.inf, bar=None) -> float | None:
        """Validation bpd of the EMA weights on a fixed subset with fixed masks (comparable over time).

        None when `deadline` (time.time()) passes or a stop signal arrives before the end."""
        from ..evaluate.bpd import dataset_bpd

        with self._rng_kept():
            r = dataset_bpd(model, self.val_set, limit=self.cfg.val_images, batch_size=250, seed=1234,
                            passes=self.cfg.val_passes, autocast=self.autocast, bar=bar, progress=False,
                            should_stop=lambda: time.time() > deadline or self.stop.requested)
        return None if r is None else r["bpd"]

    @torch.no_grad()
    def write_samples(self, model: FractalGen, deadline: float = math.inf, bar=None) -> bool:
        """A sample grid of the EMA weights; False when cut short by `deadline` or a stop signal."""
        from ..viz.grid import save_grid

        def watch(level, canvas, unknown):
            if level == 0:
                if time.time() > deadline or self.stop.requested:
                    raise _OutOfTime
                if bar is not None:
                    bar.update(1)

        cfg = model.config
        try:
            with self._rng_kept():
                if cfg.num_classes > 0:
                    labels = torch.arange(cfg.num_classes).repeat_interleave(max(1, 40 // cfg.num_classes))[:100]
                    if self.cfg.sample_labels:
                        labels = torch.tensor(self.cfg.sample_labels)
                    imgs = model.sample(labels.to(self.device), generator=torch.Generator(self.device).manual_seed(0),
                                        record=watch)
                else:
                    imgs = model.sample(num_images=40, generator=torch.Generator(self.device).manual_seed(0),
                                        record=watch)
        except _OutOfTime:
            return False
        (self.out / "samples").mkdir(exist_ok=True)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        nrow = max(1, 40 // max(cfg.num_classes, 1)) if cfg.num_classes else 8
        atomic_write(path, lambda tmp: save_grid(imgs.cpu(), tmp, nrow=nrow, by_column=True))
        return True

    def _sample_steps(self, model: FractalGen) -> int:
        from ..sampling import steps_per_level

        return steps_per_level(model.config)[0]

    def evaluate(self, record: dict, deadline: float = math.inf, final: bool = False) -> dict | None:
        """Validation bpd + a sample grid, logged; returns the logged record (None if cut short)."""
        from tqdm import tqdm

        t0, model = time.time(), self.ema_model()
        n = min(len(self.val_set), self.cfg.val_images)
        with tqdm(total=n + self._sample_steps(model), desc="end of run: validation + samples" if final else
                  f"step {self.step}: validation + samples", unit="it", leave=False,
                  disable=not self.progress_bar, dynamic_ncols=True) as bar:
            val = self.validate(model, deadline, bar)
            wrote = val is not None and self.write_samples(model, deadline, bar)
        self.reserve = 1.25 * (time.time() - t0)  # headroom: the end-of-run evaluation must fit in it
        if val is None:
            return None
        rec = {"step": self.step, "loss": record.get("loss"), "val_bpd": val}
        if not wrote:
            rec["samples"] = "skipped: " + ("stop signal" if self.stop.requested else "--minutes budget spent")
        self.log(rec)
        return rec

    def log(self, record: dict):
        with open(self.out / LOG_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _write_run_config(self):
        text = json.dumps({"train": self.cfg.to_dict(), "world_size": self.world,
                           "model": self.model.config.to_dict(), "run": self.run_options}, indent=2)
        atomic_write(self.out / "train_config.json", lambda tmp: tmp.write_text(text))

    def _plot(self):
        from ..viz.grid import plot_metrics

        if (self.out / LOG_NAME).exists():
            atomic_write(self.out / "loss.png", lambda tmp: plot_metrics(self.out / LOG_NAME, tmp))

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the end of the budget (or only up to step `stop_after`, saving state there).

        SIGTERM/SIGINT end the run after the current step, with a save; the returned record then has
        `"stopped": <signal name>`. The end-of-run validation and samples count against a time budget
        and are skipped when it is spent (or with `final_eval=False`)."""
        try:
            self.claim_folder()
            with self.stop:
                return self._fit(stop_after)
        finally:
            self.feed.close()  # shut the loader's workers down
            self.lock.release()

    def _fit(self, stop_after: int | None) -> dict:
        from tqdm import tqdm

        c = self.cfg
        if self.step == 0:
            torch.manual_seed(c.seed + self.rank)
        if self.main:
            self._write_run_config()
        if self.total_steps is None:
            self.total_steps = self.plan_steps()
        timed = self.total_steps is None
        self._last_step_s = 0.0
        bar = tqdm(total=round(self.budget_s) if timed else self.total_steps,
                   initial=round(self.elapsed) if timed else self.step, disable=not (self.progress_bar and self.main),
                   unit="s" if timed else "step", dynamic_ncols=True)
        last = {}
        if self.main and self.val_set is not None and self.step == 0:  # the starting point of the curve
            t0 = time.time()
            last = {"step": 0, "val_bpd": self.validate(self.ema_model())}
            self.log(last)
            self.elapsed += time.time() - t0
            self.reserve = 2 * (time.time() - t0)  # a first guess for validation + samples, measured later
        self.elapsed, self.reserve = self._agree(self.elapsed, self._agreed_reserve())  # rank 0 alone validated
        t_log, imgs_since = time.time(), 0
        stopped = None
        while self.progress < 1.0:
            t0 = time.time()
            rec = self.train_step()
            self._last_step_s = self._agree(time.time() - t0)
            imgs_since += c.effective_batch * self.world
            done = self._time_progress(self.elapsed + self._last_step_s) >= 1.0 if timed \
                else self.step >= self.total_steps
            stop = stop_after is not None and self.step >= stop_after
            if not stopped and self._agree_flag(bool(self.stop.requested)):
                stopped = self.stop.requested or "a signal on another rank"
            if self.main and (self.step % c.log_every == 0 or done or stopped):
                now = time.time()
                rec.update(step=self.step, epoch=self.step * c.effective_batch * self.world / len(self.train_set),
                           images_per_s=imgs_since / max(now - t_log, 1e-9), elapsed_s=self.elapsed + now - t0)
                t_log, imgs_since = now, 0
                self.log(rec)
                last = rec
            if self.main and self.val_set is not None and self.step % c.eval_every == 0 and not (done or stopped):
                if (val := self.evaluate(rec)) is not None:
                    bar.write(f"step {self.step}: loss {rec['loss']:.4f}  val bpd {val['val_bpd']:.4f}")
                    last = {**rec, **val}
            if self.step % c.save_every == 0 or done or stop or stopped:
                self.save()
                if self.main:  # re-drawn with each save, not each log: it re-reads the whole log
                    self._plot()
            # the whole iteration (step, eval, save) and the reserve rank 0's eval may have re-measured
            spent, self.reserve = self._agree(time.time() - t0, self._agreed_reserve())  # the loop reads both
            self.elapsed += spent
            bar.update(round(self.elapsed) - bar.n if timed else 1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", step=self.step)
            if stop or stopped:
                break
        bar.close()
        if self.last_save_step != self.step:  # a time budget ran out inside an iteration's eval or save
            self.save()
        if stopped:
            return {**last, "stopped": stopped, "message": describe_signal_exit(self.out, self.step, stopped)}
        if stop_after is None and c.final_eval and self.main and self.val_set is not None:
            t_final = time.time()
            deadline = t_final + (self.budget_s - self.elapsed)
            val = self.evaluate(last, deadline, final=True)
            self.elapsed += time.time() - t_final
            if val is None:
                why = "stop signal" if self.stop.requested else "--minutes budget spent"
                self.log({"step": self.step, "final_eval": f"skipped: {why}"})
                self.notes.append(f"skipped the end-of-run validation and samples ({why}); "
                                  f"fractalgm nll --model {self.out / 'model'} measures it")
            else:
                last = {**last, **val}
                if "samples" in val:
                    self.notes.append(f"skipped the end-of-run sample grid ({val['samples'].split(': ')[1]})")
            self._plot()
        return last
