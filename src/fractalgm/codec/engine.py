"""Runs the model's sequential sampling path over a fixed number of rows, with the `draw` hook.

MAR levels run in raster order, one token per step: a fixed order per image, independent of the
batch, so they code exactly like AR levels (at one bidirectional forward per token).

Encoder and decoder both run `FractalGen`'s KV-cached sampling loop (`generate_level`): the decoder
draws each pixel from its image's coder, the encoder teacher-forces the true pixels (`every_token`, so
every token's probabilities are computed exactly as in the free run) and codes them. The draw calls
come depth first in the same order at both ends.

Rows are independent in the model, but the arithmetic of a row may depend on how many rows run
together (kernels choose blockings by shape). So the model always runs on exactly `chunk` rows, the
number recorded in the file: a short batch, or one image decoded alone, is padded with blank rows.
Every run is single-threaded (`THREADS`), whatever the process's setting: with 2 threads, CPU
attention with one query and ≥ 8 keys rounds differently than with 1, and depends on the batch
layout, which would tie a file to the exact batches it was coded in.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from ..models.contract import Conditions
from ..models.fractal import generate_level
from ..sampling import Known, make_plan
from .coding import ImageDecoder, ImageEncoder, coder_weights, quantise
from .errors import CodecError


def check_codable(model):
    """AR levels, and MAR levels without a guiding pixel (run in raster order, one token per step)."""
    guided = [i for i in range(len(model.config.levels)) if model.config.has_guiding_pixel(i)]
    if guided:
        raise CodecError(f"the codec does not code guiding pixels (MAR level {guided[0]} of this model has "
                         "one); use an AR model such as fmnist-ar, or a MAR model without guiding pixels")


THREADS = 1  # torch threads of every coding run, recorded in the file


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _run(model, labels: torch.Tensor | None, chunk: int, draw: Callable, images: torch.Tensor | None):
    """One pass of the sampling loop over `chunk` rows (labels/images already padded to it)."""
    model.eval()
    cond = model._class_condition(labels, chunk)
    conds = Conditions.repeated(cond, model.spec.num_conds)
    one_per_step = [lv.seq_len for lv in model.config.levels]  # MAR: one token per step (AR ignores it)
    plan = replace(make_plan(model.config, labels is not None, num_iter=one_per_step), draw=draw,
                   every_token=images is not None, order="raster")
    known = None if images is None else Known.of(images, torch.ones_like(images, dtype=torch.bool))
    with _threads(THREADS):
        return generate_level(model.spec, model.generator, model.next_fractal, conds, plan, known, None)


def _padded_labels(model, labels: np.ndarray | None, chunk: int) -> torch.Tensor | None:
    if labels is None:
        return None
    out = torch.zeros(chunk, dtype=torch.long, device=model.device)
    out[:len(labels)] = torch.as_tensor(labels, dtype=torch.long)
    return out


def encode_rows(model, images: np.ndarray, labels: np.ndarray | None, chunk: int) -> list[np.ndarray]:
    """Coded words of each of ≤ `chunk` images (n, C, H, W) uint8."""
    n = len(images)
    coders = [ImageEncoder() for _ in range(n)]
    padded = torch.zeros(chunk, *images.shape[1:], dtype=torch.long, device=model.device)
    padded[:n] = torch.as_tensor(images, dtype=torch.long)

    def draw(logits, kept):
        weights = coder_weights(quantise(logits[:n]))
        symbols = kept[:n].tolist()
        for j, coder in enumerate(coders):
            coder.push(symbols[j], weights[j:j + 1])
        return kept

    _run(model, _padded_labels(model, labels, chunk), chunk, draw, padded)
    return [c.finish() for c in coders]


def decode_rows(model, streams: list[np.ndarray], labels: np.ndarray | None, chunk: int) -> np.ndarray:
    """≤ `chunk` images (n, C, H, W) uint8 from their coded words."""
    n = len(streams)
    coders = [ImageDecoder(words) for words in streams]

    def draw(logits, kept):
        weights = coder_weights(quantise(logits[:n]))
        out = torch.zeros(logits.size(0), dtype=torch.long)
        try:
            out[:n] = torch.tensor([coder.pull(weights[j:j + 1]) for j, coder in enumerate(coders)])
        except (ValueError, RuntimeError, AssertionError) as e:  # constriction: stream ran dry / invalid
            raise CodecError(f"a coded image is damaged or was coded with other arithmetic ({e})") from None
        return out.to(logits.device)

    out = _run(model, _padded_labels(model, labels, chunk), chunk, draw, None)
    return out[:n].to("cpu", torch.uint8).numpy()
