"""What a job does: check a request against its model, then sample or inpaint, streaming frames.

`build_spec` turns validated parameters into a `Spec` or raises `RequestError` (a 4xx that says what
is wrong). `run_spec` is the job's task: one `sample`/`inpaint` call per seed (so each grid column is
exactly what that seed gives alone), every `record=` frame passed to the job, then the bits/dim.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .. import masks
from ..viz.animate import NEUTRAL, paint_unknown
from .limits import Limits
from .registry import ModelEntry
from .schemas import InpaintParams, SamplingParams


class RequestError(ValueError):
    """A request the model cannot serve: `status` is the HTTP code (400, 404 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Spec:
    entry: ModelEntry
    label: int | None
    num_images: int
    seeds: list[int]
    num_iter: list[int] | None
    cfg_scale: float
    cfg_schedule: str
    temperature: float
    image: torch.Tensor | None = None  # (1, C, H, W) uint8, inpainting only
    known: torch.Tensor | None = None  # (1, 1, H, W) bool, True = keep
    nll_passes: int = 2

    @property
    def grid(self) -> dict:
        """Layout of the result: one column per seed, or a near-square block for one seed."""
        if len(self.seeds) > 1:
            return {"nrow": self.num_images, "by_column": True}
        return {"nrow": max(1, math.ceil(math.sqrt(self.num_images))), "by_column": False}


def build_spec(params: SamplingParams, entry: ModelEntry, limits: Limits, image: torch.Tensor | None = None,
               known: torch.Tensor | None = None) -> Spec:
    cfg = entry.config
    if params.label is not None and params.label >= cfg.num_classes:
        raise RequestError(f"label {params.label} is not a class of {entry.name!r}: it has "
                           + (f"{cfg.num_classes} classes (0–{cfg.num_classes - 1})" if cfg.num_classes
                              else "no classes (unconditional only)"))
    if params.label is None and params.cfg != 1.0:
        raise RequestError("classifier-free guidance (cfg ≠ 1) needs a label; choose a class or set cfg to 1")
    if params.seeds > limits.max_seeds:
        raise RequestError(f"{params.seeds} seeds asked; the limit is {limits.max_seeds}", 413)
    total = params.num_images * params.seeds
    if total > limits.max_images:
        raise RequestError(f"{params.num_images} images × {params.seeds} seeds = {total} images; the limit is "
                           f"{limits.max_images} per request", 413)
    if params.seed + params.seeds > 2**62:
        raise RequestError("seed is too large")
    num_iter = params.num_iter
    if num_iter is not None:
        if len(num_iter) != len(cfg.levels):
            raise RequestError(f"num_iter needs one entry per level ({len(cfg.levels)}), got {len(num_iter)}")
        for i, (steps, lv) in enumerate(zip(num_iter, cfg.levels)):
            most = min(lv.seq_len, limits.max_steps)
            if not 1 <= steps <= most:
                raise RequestError(f"level {i} takes 1 to {most} steps ({lv.seq_len} tokens), got {steps}")
    return Spec(entry, params.label, params.num_images, list(range(params.seed, params.seed + params.seeds)),
                num_iter, params.cfg, params.cfg_schedule, params.temperature, image, known, limits.nll_passes)


def known_mask(params: InpaintParams, mask: torch.Tensor | None, size: int) -> torch.Tensor:
    """The known-pixel mask of an inpainting request: the uploaded one, or its preset."""
    if mask is not None:
        known = mask
    elif params.preset is None:
        raise RequestError("draw a region to generate, choose a preset mask, or upload a mask")
    else:
        try:
            if params.preset.startswith("half_"):
                known = masks.half(size, params.preset[5:])
            elif params.preset == "outpaint":
                known = masks.outpaint(size, params.preset_pixels)
            else:
                known = masks.uncrop(size, params.preset_pixels)
        except ValueError as e:
            raise RequestError(f"preset {params.preset}: {e}") from e
    if known.all():
        raise RequestError("the mask keeps every pixel: mark the region to generate")
    return known


def test_set(entry: ModelEntry) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's test set (uint8 images, labels) for its picker, or a 404 that says why there is none."""
    try:
        data = entry.test_set()
    except (OSError, ValueError) as e:
        raise RequestError(f"the test set of {entry.name!r} cannot be loaded: {e}", 404) from e
    if data is None:
        raise RequestError(f"{entry.name!r} has no test-set picker; upload an image instead", 404)
    return data


def _device_labels(spec: Spec, n: int) -> torch.Tensor | None:
    model = spec.entry.model
    return None if spec.label is None else torch.full((n,), spec.label, dtype=torch.long, device=model.device)


def run_spec(spec: Spec, job) -> dict:
    """The job's task: generate column by column, streaming every recorded step, then score the result."""
    model = spec.entry.model
    C, S = model.config.channels, model.config.image_size
    n, k = spec.num_images, len(spec.seeds)
    pending = torch.full((n, C, S, S), NEUTRAL, dtype=torch.uint8)
    columns: list[torch.Tensor] = []
    notes: list[str] = []
    labels = _device_labels(spec, n)
    for seed in spec.seeds:
        def record(level, canvas, unknown, _done=len(columns)):
            live = paint_unknown(canvas, unknown).cpu()  # a new tensor: the live buffers are not kept
            job.frame(level, torch.cat(columns + [live] + [pending] * (k - _done - 1)))

        generator = torch.Generator(model.device).manual_seed(seed)
        options = dict(num_iter=spec.num_iter, cfg_scale=spec.cfg_scale, cfg_schedule=spec.cfg_schedule,
                       temperature=spec.temperature, generator=generator, record=record, fast=spec.entry.fast)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if spec.known is None:
                out = model.sample(labels, num_images=None if labels is not None else n, **options)
            else:
                out = model.inpaint(spec.image.expand(n, -1, -1, -1), spec.known.expand(n, -1, -1, -1), labels,
                                    **options)
        notes += [str(w.message) for w in caught if str(w.message) not in notes]
        columns.append(out.cpu())
    images = torch.cat(columns)
    job.frame("result", images)
    job.images = images
    result = {"images": len(images), "grid": spec.grid, "seeds": spec.seeds, "label": spec.label,
              "notes": notes, **score(spec, images, job)}
    if spec.known is not None:
        keep = spec.known.expand_as(images)
        result["known_pixels"] = int(spec.known.sum()) * C
        result["known_unchanged"] = bool(torch.equal(images[keep], spec.image.expand_as(images)[keep]))
    return result


def score(spec: Spec, images: torch.Tensor, job) -> dict:
    """Bits/dim of the result under the model: exact for AR models, a random-masking estimate for MAR."""
    job.check()
    model = spec.entry.model
    labels = _device_labels(spec, len(images))
    passes = 1 if model.config.is_exact else spec.nll_passes
    generator = torch.Generator(model.device).manual_seed(spec.seeds[0])
    r = model.nll(images.to(model.device), labels, passes=passes, generator=generator)
    bpd = r.bpd.cpu()
    kind = "exact" if r.exact else f"estimate, {passes} random-masking pass{'es' * (passes > 1)}"
    # standard error of the mean: the spread over images (it contains the masking noise) when there
    # are several, else the estimate's own standard error over passes
    if len(bpd) > 1:
        stderr = float(bpd.std() / math.sqrt(len(bpd)))
    else:
        stderr = None if r.bpd_stderr is None else float(r.bpd_stderr[0])
    return {"bpd": [round(float(v), 4) for v in bpd], "bpd_mean": float(bpd.mean()), "bpd_stderr": stderr,
            "likelihood": kind, "conditional": spec.label is not None}
