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
import torch.distributed as dist

from ..io.atomic import atomic_write
from ..io.checkpoint import CheckpointError, read_metadata, save_pretrained
from .runfolder import MODEL_DIR, STATE_NAME, remove_leftovers, truncate_log

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


class Checkpointing:
    """The save/resume half of `Trainer` (uses its model, ema, opt, scaler, step, out, …)."""

    saved_step: int | None = None  # the step of the train_state.pt on disk, when known (main rank)
    last_save_step: int | None = None  # the step of the last save this process took part in

    # ------------------------------------------------------------------ health
    def _rng_kept(self):
        """Run a block without moving any RNG the training step draws from."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    @torch.no_grad()
    def unhealthy(self) -> str | None:
        """Why the current state must not be saved (None when it may)."""
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return f"parameter {name} holds NaN/inf"
            if (peak := float(p.abs().max())) > EXPLODED:
                return f"parameter {name} reached |w| = {peak:.3g} (> {EXPLODED:g}): the update exploded"
        for name, v in self.ema.shadow.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"the EMA of {name} holds NaN/inf"
        for moments in self.opt.state.values():
            for t in moments.values():
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return "the optimizer state holds NaN/inf"
        if getattr(self, "last_batch", None) is not None:  # would the next step still give a finite loss?
            images, labels = self.last_batch
            with self._rng_kept(), self.autocast:
                loss = self.model(images, labels)
            if not bool(torch.isfinite(loss)):
                return f"the updated weights give a {float(loss)} loss"
        return None

    def last_good(self) -> str:
        state = self.out / STATE_NAME
        if self.saved_step is not None and state.exists():
            return f"the last good checkpoint is {state} (step {self.saved_step})"
        if state.exists():
            return f"the last good checkpoint is {state}"
        return f"no checkpoint was saved yet (--save-every {self.cfg.save_every})"

    def _agree_flag(self, flag: bool) -> bool:
        """True on every rank when it is true on any (so all ranks stop together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.shadow, "opt": self.opt.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "elapsed": self.elapsed,
                "reserve": self.reserve, "rng": self._rng_states(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "data": self.batch_plan().state(),
                "train_config": json.dumps(self.cfg.to_dict())}

    def save(self):
        problem = self.unhealthy()
        if self._agree_flag(problem is not None):
            raise NonFiniteLoss(f"not saving step {self.step}: {problem or 'another rank diverged'}; "
                                f"{self.last_good()} — resume from it with a lower --lr or --amp none")
        state = self.state_dict()  # collective under torchrun: every rank takes part
        self.last_save_step = self.step  # on every rank, so all agree whether a final save is due
        if not self.main:
            return
        try:
            atomic_write(self.out / STATE_NAME, lambda tmp: torch.save(state, tmp))
            self.saved_step = self.step
            try:
                self.export_model()
            except Exception as e:  # noqa: BLE001 - safetensors has its own error types for failed writes
                raise OSError(getattr(e, "errno", None), f"the model folder could not be written ({e}); "
                              f"{STATE_NAME} holds step {self.step} and a resume re-exports it") from e
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            if not isinstance(e, OSError) and not _is_write_failure(e):
                raise
            raise SaveError(f"could not save step {self.step} into {self.out}: {_write_failure(e, self.out)}. "
                            f"{_sentence(self.last_good())}, intact. Free disk space (or raise the "
                            f"file-size limit) and continue with `fractalgm train --out {self.out} --resume`") from e

    def export_model(self):
        """The EMA model folder, stamped with its step (see `model_step`)."""
        save_pretrained(EMAExport(self.model, self.ema.shadow), self.out / MODEL_DIR,
                        metadata={"train_step": str(self.step)})

    def model_step(self) -> int | None:
        """The step the model folder holds (None when it is missing, unreadable or unstamped)."""
        try:
            return int(read_metadata(self.out / MODEL_DIR)["train_step"])
        except (CheckpointError, KeyError, ValueError):
            return None

    def resume(self, path: Path | None = None):
        """Continue from `train_state.pt`: weights, EMA, optimizer, step, clock and RNG states."""
        self.claim_folder(resume=True)
        path = Path(path or self.out / STATE_NAME)
        if not path.exists():
            raise FileNotFoundError(f"no training state at {path}; start without --resume")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
        except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} is truncated, corrupt or from another model ({first}). Delete it and "
                                  "start over with --overwrite, or restore a backup") from e
        self.ema.shadow = {k: v.float() for k, v in state["ema"].items()}
        self.opt.load_state_dict(state["opt"])
        # the budget comes from the current config: the same budget resumes exactly, a larger one extends
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.reserve = state.get("reserve", 0.0)
        self.saved_step = self.last_save_step = self.step
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        torch.set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self._resume_data(state.get("data"))
        self.resumed = True
        if self.main:
            dropped = truncate_log(self.out / "metrics.jsonl", self.step)
            if dropped:
                self.notes.append(f"dropped {dropped} log line(s) written after step {self.step} (not saved)")
            if self.model_step() != self.step:  # a kill between the two writes of the last save
                self.export_model()
                self.notes.append(f"re-exported {self.out / MODEL_DIR} from {STATE_NAME} (step {self.step})")

    def claim_folder(self, resume: bool = False):
        """Lock the run folder (once) and clear what interrupted saves left."""
        if not self.main or self.lock.fd is not None:
            return
        self.lock.acquire()
        if self.lock.took_over:
            self.notes.append(f"took over a stale lock ({self.lock.took_over}, no longer running)")
        self.notes.extend(remove_leftovers(self.out)[2])
        if not resume and not self.resumed:
            from .runfolder import claim

            try:
                claim(self.out, resume=False, overwrite=self.overwrite)
            except BaseException:
                self.lock.release()
                raise

    def _rng_states(self) -> list[torch.Tensor]:
        """CPU RNG state of every rank (masks and dropout draw from it), gathered on all ranks."""
        state = torch.get_rng_state()
        if self.world == 1:
            return [state]
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states


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
