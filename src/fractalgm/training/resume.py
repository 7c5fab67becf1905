"""Saving and resuming a training run: side-effect free, never poisoned, always a consistent pair.

* **Side-effect free.** A save reads state and writes files; it draws no random numbers (it used to
  build a fresh `FractalGen` for the EMA export, which advanced the global RNG after its state was
  captured, so `--save-every` alone changed the results). Resume is therefore bit-exact.
* **Never poisoned.** Before each save the weights, the EMA, the optimizer moments and a probe loss of
  the new weights must be finite, and no weight may have exploded (|w| > `EXPLODED`); otherwise the run
  stops and names the last good checkpoint (or says that none exists) instead of overwriting it.
* **Consistent.** `train_state.pt` is written first, then the model folder, each atomically; the model
  folder records its step in the weights' metadata, and a resume re-exports it from the EMA inside
  `train_state.pt` when a kill left it one save behind.
* **A full disk** (or a file-size limit) fails the write, leaves the previous pair intact and stops
  with `SaveError`, which says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..data import BatchPlan
from ..io.atomic import atomic_write
from ..io.checkpoint import CheckpointError, read_metadata, save_pretrained
from .config import TrainConfig
from .ranks import Ranks
from .runfolder import LOG_NAME, MODEL_DIR, STATE_NAME, RunLock, claim, remove_leftovers, truncate_log
from .state import RunState, rng_kept

EXPLODED = 1e4  # |weight| beyond this is a blown-up update (healthy weights here are O(1))


class NonFiniteLoss(RuntimeError):
    """Training diverged (NaN/inf loss or exploded weights); the message names the last good checkpoint."""


class SaveError(OSError):
    """A checkpoint could not be written (full disk, file-size limit, …); the previous one is intact."""


class EMAExport:
    """The EMA weights seen as a model by `save_pretrained`: no module is built, no RNG is drawn."""

    def __init__(self, model: torch.nn.Module, shadow: dict[str, torch.Tensor]):
        self.config = model.config
        self._state = {k: shadow[k].to(v.dtype) for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class Saver:
    """The checkpoint pair of one run folder: its lock, the health check before each save, the two atomic
    writes, the resume from `train_state.pt` and the repairs a kill may call for.

    It works on the `RunState` it is given and is told everything else here; what it did to the folder
    (a stale lock taken over, leftovers removed, log lines dropped) goes into `notes`."""

    def __init__(self, out: Path, state: RunState, ranks: Ranks, cfg: TrainConfig, autocast, notes: list[str]):
        self.out, self.state, self.ranks, self.cfg, self.autocast, self.notes = out, state, ranks, cfg, autocast, notes
        self.lock = RunLock(out)
        self.resumed = False  # the folder continues its saved run, so claiming it again is no overwrite
        self.saved_step: int | None = None  # the step of the train_state.pt on disk, when known (main rank)
        self.last_save_step: int | None = None  # the step of the last save this process took part in

    # ------------------------------------------------------------------ the folder
    def claim_folder(self, overwrite: bool, resume: bool = False):
        """Lock the run folder (once) and clear what interrupted saves left; refuse to start over a run
        unless `overwrite` (or the run is resumed)."""
        if not self.ranks.main or self.lock.fd is not None:
            return
        self.lock.acquire()
        if self.lock.took_over:
            self.notes.append(f"took over a stale lock ({self.lock.took_over}, no longer running)")
        self.notes.extend(remove_leftovers(self.out)[2])
        if not resume and not self.resumed:
            try:
                claim(self.out, resume=False, overwrite=overwrite)
            except BaseException:
                self.lock.release()
                raise

    def last_good(self) -> str:
        state = self.out / STATE_NAME
        if self.saved_step is not None and state.exists():
            return f"the last good checkpoint is {state} (step {self.saved_step})"
        if state.exists():
            return f"the last good checkpoint is {state}"
        return f"no checkpoint was saved yet (--save-every {self.cfg.save_every})"

    # ------------------------------------------------------------------ saving
    @torch.no_grad()
    def unhealthy(self) -> str | None:
        """Why the current state must not be saved (None when it may)."""
        s = self.state
        for name, p in s.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return f"parameter {name} holds NaN/inf"
            if (peak := float(p.abs().max())) > EXPLODED:
                return f"parameter {name} reached |w| = {peak:.3g} (> {EXPLODED:g}): the update exploded"
        for name, v in s.ema.shadow.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"the EMA of {name} holds NaN/inf"
        for moments in s.opt.state.values():
            for t in moments.values():
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return "the optimizer state holds NaN/inf"
        if s.last_batch is not None:  # would the next step still give a finite loss?
            images, labels = s.last_batch
            with rng_kept(self.ranks.device), self.autocast:
                loss = s.model(images, labels)
            if not bool(torch.isfinite(loss)):
                return f"the updated weights give a {float(loss)} loss"
        return None

    def state_dict(self, plan: BatchPlan) -> dict:
        """What `train_state.pt` holds; a collective under torchrun (the RNG states of all ranks)."""
        s = self.state
        return {"model": s.model.state_dict(), "ema": s.ema.shadow, "opt": s.opt.state_dict(),
                "step": s.step, "total_steps": s.total_steps, "elapsed": s.elapsed,
                "reserve": s.reserve, "rng": self.ranks.gather(torch.get_rng_state()),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": s.scaler.state_dict() if s.scaler else {},
                "data": plan.state(),
                "train_config": json.dumps(self.cfg.to_dict())}

    def save(self, plan: BatchPlan):
        """Save the state (every rank calls it; rank 0 writes), or stop every rank when any is unhealthy."""
        step = self.state.step
        problem = self.unhealthy()
        if self.ranks.agree(problem is not None):
            raise NonFiniteLoss(f"not saving step {step}: {problem or 'another rank diverged'}; "
                                f"{self.last_good()} — resume from it with a lower --lr or --amp none")
        state = self.state_dict(plan)
        self.last_save_step = step  # on every rank, so all agree whether a final save is due
        if not self.ranks.main:
            return
        try:
            self._write(state)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            if not isinstance(e, OSError) and not _is_write_failure(e):
                raise
            raise SaveError(f"could not save step {step} into {self.out}: {_write_failure(e, self.out)}. "
                            f"{_sentence(self.last_good())}, intact. Free disk space (or raise the "
                            f"file-size limit) and continue with `fractalgm train --out {self.out} --resume`") from e

    def _write(self, state: dict):
        """train_state.pt, then the model folder: a kill between the two leaves a pair `repair` completes."""
        atomic_write(self.out / STATE_NAME, lambda tmp: torch.save(state, tmp))
        self.saved_step = state["step"]
        try:
            self.export_model()
        except Exception as e:  # noqa: BLE001 - safetensors has its own error types for failed writes
            raise OSError(getattr(e, "errno", None), f"the model folder could not be written ({e}); "
                          f"{STATE_NAME} holds step {state['step']} and a resume re-exports it") from e

    def export_model(self):
        """The EMA model folder, stamped with its step (see `model_step`)."""
        save_pretrained(EMAExport(self.state.model, self.state.ema.shadow), self.out / MODEL_DIR,
                        metadata={"train_step": str(self.state.step)})

    def model_step(self) -> int | None:
        """The step the model folder holds (None when it is missing, unreadable or unstamped)."""
        try:
            return int(read_metadata(self.out / MODEL_DIR)["train_step"])
        except (CheckpointError, KeyError, ValueError):
            return None

    # ------------------------------------------------------------------ resuming
    def load(self, path: Path | None = None) -> dict | None:
        """Restore weights, EMA, optimizer, step, clocks and RNG states from `train_state.pt`; returns the
        saved data plan's state, for the trainer to check that its batches continue."""
        state, s = self._read(Path(path or self.out / STATE_NAME)), self.state
        s.ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        s.opt.load_state_dict(state["opt"])
        # the budget comes from the current config: the same budget resumes exactly, a larger one extends
        s.step, s.elapsed = state["step"], state["elapsed"]
        s.reserve = state.get("reserve", 0.0)
        self.saved_step = self.last_save_step = s.step
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        torch.set_rng_state(rngs[self.ranks.rank] if len(rngs) == self.ranks.world else rngs[0])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if s.scaler and state["scaler"]:
            s.scaler.load_state_dict(state["scaler"])
        return state.get("data")

    def _read(self, path: Path) -> dict:
        """The saved state, its weights already in the model; a clear error for a missing or broken file."""
        if not path.exists():
            raise FileNotFoundError(f"no training state at {path}; start without --resume")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.state.model.load_state_dict(state["model"])
        except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is truncated, corrupt or from another model ({first}). Delete it and "
                                  "start over with --overwrite, or restore a backup") from e
        return state

    def repair(self):
        """After `load`: the folder now continues the saved run; drop log lines written after its step and
        re-export a model folder that a kill between the two writes left one save behind."""
        self.resumed = True
        if not self.ranks.main:
            return
        step = self.state.step
        dropped = truncate_log(self.out / LOG_NAME, step)
        if dropped:
            self.notes.append(f"dropped {dropped} log line(s) written after step {step} (not saved)")
        if self.model_step() != step:
            self.export_model()
            self.notes.append(f"re-exported {self.out / MODEL_DIR} from {STATE_NAME} (step {step})")


def _is_write_failure(e: RuntimeError) -> bool:
    text = str(e)
    return any(m in text for m in ("inline_container", "unexpected pos", "failed writing", "PytorchStreamWriter"))


def _write_failure(e: BaseException, folder: Path) -> str:
    """What went wrong in words: the OS error, or (torch hides it) the disk's free space and file-size limit."""
    import shutil

    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    facts = []
    try:
        facts.append(f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free on its disk")
    except OSError:
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            facts.append(f"a file-size limit of {limit / 1e6:.2f} MB (ulimit -f)")
    except (ImportError, OSError, ValueError):
        pass
    return "the file could not be written (disk full or file-size limit: " + ", ".join(facts) + ")"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe_signal_exit(out: Path, step: int, signal_name: str) -> str:
    return (f"stopped by {signal_name} at step {step}; the run is saved. Continue it with: "
            f"fractalgm train --out {os.fspath(out)} --resume")
