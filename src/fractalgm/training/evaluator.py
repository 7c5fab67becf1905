"""The `Evaluator`: validation bits/dim and sample grids of the EMA weights, at step 0, every
`eval_every` steps and at the end of the run, inside the `--minutes` budget.

Evaluating draws nothing from the random streams training uses (`rng_kept`), so it cannot change the
run. Each evaluation re-measures `reserve`, the seconds the end of a time budget keeps free for the
final one; the final one gets only what is left of the budget, and is logged as skipped when cut short.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..data import ImageSource
from ..io.atomic import atomic_write
from ..models import FractalGen
from ..sampling import steps_per_level
from .config import TrainConfig
from .runfolder import append_log
from .state import RunState, rng_kept
from .stopsignal import StopOnSignal


class _OutOfTime(Exception):
    """Raised inside sampling when the evaluation passes its deadline or a stop signal came."""


class Evaluator:
    """Evaluates the run's EMA weights (on the main rank only); works on the `RunState` it is given."""

    def __init__(self, state: RunState, val_set: ImageSource | None, out: Path, cfg: TrainConfig,
                 device: torch.device, autocast, stop: StopOnSignal, notes: list[str], progress_bar: bool):
        self.state, self.val_set, self.out, self.cfg = state, val_set, out, cfg
        self.device, self.autocast, self.stop, self.notes, self.progress_bar = device, autocast, stop, notes, progress_bar
        self._model: FractalGen | None = None

    def ema_model(self) -> FractalGen:
        """The EMA weights in an eval-mode model (built once, without drawing from the training RNG)."""
        if self._model is None:
            with rng_kept(self.device):
                self._model = FractalGen(self.state.model.config).to(self.device)
        self.state.ema.copy_to(self._model)
        return self._model.eval()

    def _cut_short(self, deadline: float) -> bool:
        return time.time() > deadline or self.stop.requested is not None

    @torch.no_grad()
    def validate(self, model: FractalGen, deadline: float = math.inf, bar=None) -> float | None:
        """Validation bpd on a fixed subset with fixed masks (comparable over time); None when `deadline`
        (time.time()) passes or a stop signal arrives before the end."""
        from ..evaluate.bpd import dataset_bpd

        with rng_kept(self.device):
            r = dataset_bpd(model, self.val_set, limit=self.cfg.val_images, batch_size=250, seed=1234,
                            passes=self.cfg.val_passes, autocast=self.autocast, bar=bar, progress=False,
                            should_stop=lambda: self._cut_short(deadline))
        return None if r is None else r["bpd"]

    @torch.no_grad()
    def write_samples(self, model: FractalGen, deadline: float = math.inf, bar=None) -> bool:
        """A sample grid (fixed labels and seed); False when cut short by `deadline` or a stop signal."""
        from ..viz.grid import save_grid

        def watch(level, canvas, unknown):
            if level == 0:
                if self._cut_short(deadline):
                    raise _OutOfTime
                if bar is not None:
                    bar.update(1)

        cfg = model.config
        generator = torch.Generator(self.device).manual_seed(0)
        try:
            with rng_kept(self.device):
                if cfg.num_classes > 0:
                    labels = torch.arange(cfg.num_classes).repeat_interleave(max(1, 40 // cfg.num_classes))[:100]
                    if self.cfg.sample_labels:
                        labels = torch.tensor(self.cfg.sample_labels)
                    imgs = model.sample(labels.to(self.device), generator=generator, record=watch)
                else:
                    imgs = model.sample(num_images=40, generator=generator, record=watch)
        except _OutOfTime:
            return False
        (self.out / "samples").mkdir(exist_ok=True)
        path = self.out / "samples" / f"step_{self.state.step:07d}.png"
        nrow = max(1, 40 // max(cfg.num_classes, 1)) if cfg.num_classes else 8
        atomic_write(path, lambda tmp: save_grid(imgs.cpu(), tmp, nrow=nrow, by_column=True))
        return True

    def first(self) -> dict:
        """The starting point of the curve (step 0, logged); its time counts against the budget, and twice
        it is the first guess at the reserve until an evaluation with samples measures it."""
        t0 = time.time()
        record = {"step": 0, "val_bpd": self.validate(self.ema_model())}
        append_log(self.out, record)
        self.state.elapsed += time.time() - t0
        self.state.reserve = 2 * (time.time() - t0)
        return record

    def evaluate(self, loss: float | None, deadline: float = math.inf, final: bool = False) -> dict | None:
        """Validation bpd + a sample grid, logged; returns the logged record (None if cut short)."""
        from tqdm import tqdm

        t0, model, step = time.time(), self.ema_model(), self.state.step
        n = min(len(self.val_set), self.cfg.val_images)
        with tqdm(total=n + steps_per_level(model.config)[0], unit="it", leave=False, dynamic_ncols=True,
                  desc="end of run: validation + samples" if final else f"step {step}: validation + samples",
                  disable=not self.progress_bar) as bar:
            val = self.validate(model, deadline, bar)
            wrote = val is not None and self.write_samples(model, deadline, bar)
        self.state.reserve = 1.25 * (time.time() - t0)  # headroom: the end-of-run evaluation must fit in it
        if val is None:
            return None
        record = {"step": step, "loss": loss, "val_bpd": val}
        if not wrote:
            record["samples"] = "skipped: " + ("stop signal" if self.stop.requested else "--minutes budget spent")
        append_log(self.out, record)
        return record

    def final(self, last: dict) -> dict:
        """The end-of-run evaluation in what is left of the budget: `last` with its results, or `last`
        alone (and a note saying how to measure it later) when it did not fit."""
        s = self.state
        t_final = time.time()
        val = self.evaluate(last.get("loss"), t_final + (s.budget_s - s.elapsed), final=True)
        s.elapsed += time.time() - t_final
        if val is None:
            why = "stop signal" if self.stop.requested else "--minutes budget spent"
            append_log(self.out, {"step": s.step, "final_eval": f"skipped: {why}"})
            self.notes.append(f"skipped the end-of-run validation and samples ({why}); "
                              f"fractalgm nll --model {self.out / 'model'} measures it")
            return last
        if "samples" in val:
            self.notes.append(f"skipped the end-of-run sample grid ({val['samples'].split(': ')[1]})")
        return {**last, **val}
