"""The training loop: AdamW with the reference's groups, warm-up + cosine per step, EMA, AMP, torchrun.

A run folder holds::

    train_config.json   the TrainConfig, the model config and the CLI's other options (for --resume)
    metrics.jsonl       one JSON object per logged step (loss, lr, grad norm, images/s, val bpd)
    data_issues.tsv     input files skipped (--skip-bad) or converted to the set's channels, if any
    loss.png            the loss curve (re-drawn at every save)
    samples/            sample grids from the EMA weights
    model/              the EMA model folder (config.json + model.safetensors), loadable with from_pretrained
    train_state.pt      everything `--resume` needs (weights, EMA, optimizer, step, RNG states)
    .lock               held by the trainer using the folder (see runfolder.py)

`Trainer` owns the data and the step, and `fit` reads start → steps → finish. Its parts:
`RunState` (state.py: the step, the clocks and what a save writes), `Saver` (resume.py: lock, health
check, atomic saves, resume, repairs), `Evaluator` (evaluator.py: validation bpd, sample grids, the
end-of-run evaluation inside the budget) and `Ranks` (ranks.py: torchrun, and `agree`, the collective
every decision to stop or to save goes through, so that all ranks end at the same step).

Resuming is exact: the data order is a function of (seed, epoch), RNG states are restored, saving and
evaluating draw no random numbers, and the schedule is a function of the step, so N steps straight
equal N/2 + kill + resume + N/2, bit for bit (resume.py has the save/resume rules).
A `--minutes` budget covers the whole run: periodic and end-of-run evaluation count against it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data import BatchFeed, BatchPlan, ImageSource
from ..io.atomic import atomic_write
from ..models import FractalGen
from ..runtime import autocast_context
from .config import TrainConfig
from .evaluator import Evaluator
from .optim import EMA, adamw, lr_at
from .ranks import Ranks
from .recipe import grad_accum_for, world_change
from .resume import NonFiniteLoss, Saver, describe_signal_exit
from .runfolder import LOG_NAME, append_log
from .state import RunState
from .stopsignal import StopOnSignal

DATA_LOG = "data_issues.tsv"  # skipped / converted input files, one per line

__all__ = ["Trainer"]


class _Of:
    """A trainer attribute that one of its parts holds: `trainer.step` is `trainer.state.step`."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, trainer, owner=None):
        return self if trainer is None else getattr(getattr(trainer, self.part), self.name)

    def __set__(self, trainer, value):
        setattr(getattr(trainer, self.part), self.name, value)


@dataclass
class _Pass:
    """What the iterations of one `fit` call share (not saved: a resumed run starts a new pass)."""
    bar: object  # the tqdm bar: steps, or seconds of a time budget
    stop_after: int | None  # save and return after this step
    last: dict  # the latest logged record, which `fit` returns
    t_log: float  # when the last log line was written
    images: int = 0  # images trained on since then, over all ranks
    stopped: str | None = None  # the signal (on any rank) that ends the run after this step


@dataclass
class Trainer:
    model: FractalGen
    train_set: ImageSource
    out: Path
    cfg: TrainConfig = field(default_factory=TrainConfig)
    val_set: ImageSource | None = None
    progress_bar: bool = True
    overwrite: bool = False  # start over in a folder that holds a run (else: refuse, unless resumed)
    run_options: dict = field(default_factory=dict)  # the CLI's other options, saved for --resume

    # what the CLI, the benchmarks and the tests read of a trainer, held by its parts
    step, total_steps, elapsed, ema, opt = _Of("state"), _Of("state"), _Of("state"), _Of("state"), _Of("state")
    rank, world, main, device = _Of("ranks"), _Of("ranks"), _Of("ranks"), _Of("ranks")

    def __post_init__(self):
        c = self.cfg
        c.require_budget()
        self.out = Path(self.out)
        self.ranks = Ranks.start(c.device)
        if self.main:  # only the main process logs, evaluates and saves
            self.out.mkdir(parents=True, exist_ok=True)
        self.notes: list[str] = []  # what the folder checks and the end of the run did (printed by the CLI)
        self.model.to(self.device)
        self.net = self._wrap()
        opt = adamw(self.model, c.weight_decay, c.base_lr(self.world), c.betas, self.device)
        ema = EMA(self.model, c.ema_decay)
        self.autocast, scaler = autocast_context(c.amp, self.device)
        self.state = RunState(self.model, ema, opt, scaler)
        self.stop = StopOnSignal()
        if c.global_batch is not None:
            c.grad_accum = grad_accum_for(c.global_batch, c.batch_size, self.world)
        self.feed = BatchFeed(self.train_set, self.device, c.workers, c.prefetch,
                              log_path=self.out / DATA_LOG if self.main else None)
        self.steps_per_epoch = self.batch_plan().steps_per_epoch  # optimizer steps
        self.saver = Saver(self.out, self.state, self.ranks, c, self.autocast, self.notes)
        self.evaluator = Evaluator(self.state, self.val_set, self.out, c, self.device, self.autocast, self.stop,
                                   self.notes, self.progress_bar)

    def _wrap(self) -> torch.nn.Module:
        """What the step calls: the model, or under torchrun its DDP wrapper."""
        if self.world == 1:
            return self.model
        # without label drop the fake latent gets no gradient; DDP must be told, or the bucket holding it
        # is never all-reduced and every rank silently keeps its own gradient
        return DistributedDataParallel(self.model, find_unused_parameters=self.model.config.label_drop_prob == 0,
                                       device_ids=[self.ranks.local_rank] if self.device.type == "cuda" else None)

    def leave_process_group(self):
        """After a finished run under torchrun: leave with the other ranks (see `Ranks.leave`)."""
        self.ranks.leave()

    def ema_model(self) -> FractalGen:
        """The EMA weights in an eval-mode model (see `Evaluator.ema_model`)."""
        return self.evaluator.ema_model()

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

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches: its loss (mean over the ranks), LR and grad norm."""
        c, s = self.cfg, self.state
        self.model.train()
        lr = lr_at(s.step_progress(), c.warmup, c.base_lr(self.world), c.min_lr)
        for group in s.opt.param_groups:
            group["lr"] = lr
        loss = 0.0
        for micro in range(c.grad_accum):
            loss += self._backward(micro)
        if s.scaler:
            s.scaler.unscale_(s.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        if s.scaler:
            s.scaler.step(s.opt)
            s.scaler.update()
        else:
            s.opt.step()
        s.opt.zero_grad(set_to_none=True)
        s.step += 1
        s.ema.update(self.model, s.step)
        return {"loss": loss, "lr": lr, "grad_norm": float(gnorm)}

    def _backward(self, micro: int) -> float:
        """Forward and backward of one micro-batch; its loss over the ranks, which all refuse a non-finite one
        together (a rank that stopped alone would leave the others hanging)."""
        s = self.state
        images, labels = self.batch(s.step, micro)
        s.last_batch = (images, labels if self.model.config.num_classes > 0 else None)
        with self.autocast:
            loss = self.net(*s.last_batch) / self.cfg.grad_accum
        check = self.ranks.mean(loss.detach().clone())
        if not torch.isfinite(check):
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {s.step}; {self.saver.last_good()} — "
                                "resume from it with a lower --lr or --amp none")
        (s.scaler.scale(loss) if s.scaler else loss).backward()
        return check.item()

    def save(self):
        """Save the run (a collective under torchrun: every rank calls it)."""
        self.saver.save(self.batch_plan())

    def resume(self, path: Path | None = None):
        """Continue from `train_state.pt`: weights, EMA, optimizer, step, clock and RNG states."""
        self.saver.claim_folder(self.overwrite, resume=True)
        self._resume_data(self.saver.load(path))
        self.saver.repair()

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the end of the budget (or only up to step `stop_after`, saving state there).

        SIGTERM/SIGINT end the run after the current step, with a save; the returned record then has
        `"stopped": <signal name>`. The end-of-run validation and samples count against a time budget
        and are skipped when it is spent (or with `final_eval=False`)."""
        try:
            self.saver.claim_folder(self.overwrite)
            with self.stop:
                run = self._start(stop_after)
                while self.state.progress < 1.0 and self._step(run):
                    pass
                return self._finish(run)
        finally:
            self.feed.close()  # shut the loader's workers down
            self.saver.lock.release()

    def _start(self, stop_after: int | None) -> _Pass:
        """Seed a new run, record its options, plan its budget and (at step 0) validate its starting point."""
        from tqdm import tqdm

        c, s = self.cfg, self.state
        if s.step == 0:
            torch.manual_seed(c.seed + self.rank)
        if self.main:
            self._write_run_config()
        if s.total_steps is None:
            s.total_steps = self.plan_steps()
        s.budget_s = c.minutes * 60 if c.minutes is not None else math.inf
        s.last_step_s = 0.0
        timed = s.total_steps is None
        bar = tqdm(total=round(s.budget_s) if timed else s.total_steps, initial=round(s.elapsed) if timed else s.step,
                   disable=not (self.progress_bar and self.main), unit="s" if timed else "step", dynamic_ncols=True)
        last = self.evaluator.first() if self.main and self.val_set is not None and s.step == 0 else {}
        s.elapsed, s.reserve = self.ranks.agree(s.elapsed, self._agreed_reserve())  # rank 0 alone validated
        return _Pass(bar, stop_after, last, t_log=time.time())

    def _step(self, run: _Pass) -> bool:
        """One iteration: a training step, then the log line, evaluation and save it calls for. Every rank
        takes the same decisions (`agree`); False when the run stops after it."""
        c, s = self.cfg, self.state
        t0 = time.time()
        record = self.train_step()
        s.last_step_s = self.ranks.agree(time.time() - t0)
        run.images += c.effective_batch * self.world
        done = s.at_end()
        halt = run.stop_after is not None and s.step >= run.stop_after
        if not run.stopped and self.ranks.agree(bool(self.stop.requested)):
            run.stopped = self.stop.requested or "a signal on another rank"
        if self.main:
            self._report(record, run, t0, end=done or bool(run.stopped))
        if s.step % c.save_every == 0 or done or halt or run.stopped:
            self.save()
            if self.main:  # re-drawn with each save, not each log: it re-reads the whole log
                self._plot()
        # the whole iteration (step, eval, save) and the reserve rank 0's eval may have re-measured
        spent, s.reserve = self.ranks.agree(time.time() - t0, self._agreed_reserve())  # the loop reads both
        s.elapsed += spent
        run.bar.update(round(s.elapsed) - run.bar.n if s.total_steps is None else 1)
        run.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", step=s.step)
        return not (halt or run.stopped)

    def _report(self, record: dict, run: _Pass, t0: float, end: bool):
        """The main rank's log line (every `log_every` steps and at the end) and evaluation (every `eval_every`)."""
        c, step = self.cfg, self.state.step
        if step % c.log_every == 0 or end:
            now = time.time()
            record.update(step=step, epoch=step * c.effective_batch * self.world / len(self.train_set),
                          images_per_s=run.images / max(now - run.t_log, 1e-9), elapsed_s=self.elapsed + now - t0)
            run.t_log, run.images = now, 0
            append_log(self.out, record)
            run.last = record
        if self.val_set is not None and step % c.eval_every == 0 and not end:
            if (val := self.evaluator.evaluate(record["loss"])) is not None:
                run.bar.write(f"step {step}: loss {record['loss']:.4f}  val bpd {val['val_bpd']:.4f}")
                run.last = {**record, **val}

    def _finish(self, run: _Pass) -> dict:
        """Take the save a time budget cut off, then the end-of-run evaluation (not after a stop); returns
        the last logged record."""
        run.bar.close()
        if self.saver.last_save_step != self.step:  # a time budget ran out inside an iteration's eval or save
            self.save()
        if run.stopped:
            return {**run.last, "stopped": run.stopped,
                    "message": describe_signal_exit(self.out, self.step, run.stopped)}
        if run.stop_after is None and self.cfg.final_eval and self.main and self.val_set is not None:
            run.last = self.evaluator.final(run.last)
            self._plot()
        return run.last

    def _agreed_reserve(self) -> float:  # as an `agree` operand: rank 0's, since only rank 0 evaluates
        return self.state.reserve if self.main else -math.inf

    def _write_run_config(self):
        text = json.dumps({"train": self.cfg.to_dict(), "world_size": self.world,
                           "model": self.model.config.to_dict(), "run": self.run_options}, indent=2)
        atomic_write(self.out / "train_config.json", lambda tmp: tmp.write_text(text))

    def _plot(self):
        from ..viz.grid import plot_metrics

        if (self.out / LOG_NAME).exists():
            atomic_write(self.out / "loss.png", lambda tmp: plot_metrics(self.out / LOG_NAME, tmp))
