"""Golden likelihoods of the reference FractalGen (tests/fixtures/golden, see its README).

Three tiny random networks with the reference's weights and inputs; every case fixes the MAR masks, so
the eval-mode losses are deterministic. Float32 must match within 1e-5 nats (README §8), float64 within
1e-7 of the reference's float64 re-evaluation. The values are per-token means of about 5.5 nats, so
1e-5 is ~15 float32 ulps: the reference ran on a GPU, and another CPU's vector width or FMA changes the
last bits of every term (measured: under 1 ulp with ATEN_CPU_CAPABILITY=default and with avx2).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import GOLDEN
from fractalgm import FractalConfig, FractalGen, make_scoring, likelihood
from fractalgm.likelihood import pooled_loss

NAMES = ("ar_tiny", "mar_tiny", "mar_gp_tiny")
F32_TOL = 1e-5
F64_TOL = 1e-7


def load_golden(name: str):
    meta = json.loads((GOLDEN / f"{name}.json").read_text())
    c = meta["constructor"]
    cfg = FractalConfig.from_reference_lists(
        c["img_size_list"], c["embed_dim_list"], c["num_blocks_list"], c["num_heads_list"],
        c["generator_type_list"], class_num=c["class_num"], num_conds=c["num_conds"],
        guiding_pixel=c["guiding_pixel"])
    model = FractalGen(cfg)
    model.load_state_dict(load_file(GOLDEN / f"{name}.safetensors"), strict=True)
    model.eval()
    images = torch.from_numpy(np.load(GOLDEN / f"{name}_images.npy")).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.load(GOLDEN / f"{name}_labels.npy"))
    return meta, model, images, labels


def case_masks(case) -> list[torch.Tensor] | None:
    if "masks" not in case:
        return None
    return [torch.tensor([[ch == "1" for ch in bits] for bits in lv["bits"]]) for lv in case["masks"]["levels"]]


def scoring_for(masks) -> make_scoring:
    # ar_tiny has no MAR level: AR levels score everything whatever the scoring mode.
    return make_scoring("fixed", masks=masks) if masks is not None else make_scoring("random", generator=torch.Generator())


def image_masks(masks, index: int, batch: int):
    """The batch-size-1 masks of image `index`: rows are image-major with equal counts per image."""
    if masks is None:
        return None
    return [m.reshape(batch, -1, m.size(1))[index] for m in masks]


_CACHE = {}


def golden(name):
    if name not in _CACHE:
        _CACHE[name] = load_golden(name)
    return _CACHE[name]


CASES = [(name, case["id"]) for name in NAMES for case in json.loads((GOLDEN / f"{name}.json").read_text())["cases"]]


def get_case(name, case_id):
    meta, model, images, labels = golden(name)
    case = next(c for c in meta["cases"] if c["id"] == case_id)
    return meta, model, images, labels, case


def test_golden_fixture_files_and_inputs():
    for name in NAMES:
        meta, model, images, labels = golden(name)
        S = meta["constructor"]["img_size_list"][0]
        assert images.dtype == torch.uint8 and images.shape == (4, 3, S, S)
        assert labels.tolist() == meta["inputs"]["labels_values"]
        # the normalisation checksum of README §2, with the model's own constants
        x = model.spec.pixels.normalize(images, 1, model.fake_latent).double()
        assert x.sum().item() == pytest.approx(meta["inputs"]["normalised_sum_float64"], abs=1e-6)
        assert x.abs().sum().item() == pytest.approx(meta["inputs"]["normalised_abs_sum_float64"], abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_golden_parameter_count(name):
    meta, model, _, _ = golden(name)
    assert sum(p.numel() for p in model.parameters()) == meta["weights"]["num_parameters"]
    sd = load_file(GOLDEN / f"{name}.safetensors")
    assert set(model.state_dict()) == set(sd)
    assert len(sd) == meta["weights"]["num_tensors"]


@pytest.mark.parametrize("name,case_id", CASES)
def test_golden_batch_loss_and_components(name, case_id):
    meta, model, images, _, case = get_case(name, case_id)
    masks = case_masks(case)
    with torch.no_grad():
        terms = likelihood.terms(model, images, None, scoring_for(masks))
        loss = pooled_loss(terms)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - case["loss_nats"]) < F32_TOL
    bpd = float(loss.double()) / math.log(2)
    assert abs(bpd - case["bits_per_dim"]) < F32_TOL / math.log(2)
    # components: pooled mean per head, the equal-weight channel mean
    names = sorted({t.name for t in terms})
    assert names == sorted(case["components_nats"])
    for key, want in case["components_nats"].items():
        got = sum(t.ce.mean() for t in terms if t.name == key).item()
        assert abs(got - want) < F32_TOL, key
    # rows reaching each level (pixel rows last)
    pixel_rows = sum(t.ce.size(0) for t in terms if t.name == "pixel")
    assert pixel_rows == case["rows_per_level"][-1]
    assert pixel_rows == sum(case["scored_pixels_per_image"])


@pytest.mark.parametrize("name,case_id", CASES)
def test_golden_per_image_values(name, case_id):
    meta, model, images, _, case = get_case(name, case_id)
    masks = case_masks(case)
    want = torch.tensor(case["per_image_bs1_nats"], dtype=torch.float64)
    # from the batch run, grouped by image
    scores = likelihood.score(model, images, None, scoring_for(masks))
    assert scores.reference_loss.shape == (4,)
    assert (scores.reference_loss - want).abs().max().item() < F32_TOL
    batch_rows = torch.tensor(case["per_image_from_batch_rows_nats"], dtype=torch.float64)
    assert (scores.reference_loss - batch_rows).abs().max().item() < F32_TOL
    # the components per image average to the pooled components (equal rows per image)
    for key, want_c in case["components_nats"].items():
        assert abs(scores.components[key].mean().item() - want_c) < F32_TOL
    # batch size 1, each image with its own masks
    for i in range(4):
        s1 = likelihood.score(model, images[i:i + 1], None, scoring_for(image_masks(masks, i, 4)))
        assert abs(s1.reference_loss.item() - case["per_image_bs1_nats"][i]) < F32_TOL, i


@pytest.mark.parametrize("name,case_id", CASES)
def test_golden_labels_ignored_only_when_none(name, case_id):
    """labels=None is the reference's eval forward (fake latent); given labels make it class-conditional."""
    meta, model, images, labels, case = get_case(name, case_id)
    masks = case_masks(case)
    uncond = likelihood.score(model, images, None, scoring_for(masks)).reference_loss
    assert (uncond - torch.tensor(case["per_image_bs1_nats"], dtype=torch.float64)).abs().max() < F32_TOL
    cond = likelihood.score(model, images, labels, scoring_for(masks)).reference_loss
    other = likelihood.score(model, images, torch.tensor([9, 8, 7, 6]), scoring_for(masks)).reference_loss
    assert (cond - uncond).abs().min() > 1e-4
    assert (cond - other).abs().min() > 1e-4
    # the same labels give the same numbers
    again = likelihood.score(model, images, labels, scoring_for(masks)).reference_loss
    assert torch.equal(cond, again)


@pytest.mark.parametrize("name,case_id", CASES)
def test_golden_float64(name, case_id):
    meta, model, images, _, case = get_case(name, case_id)
    masks = case_masks(case)
    m64 = load_golden(name)[1].double()
    with torch.no_grad():
        loss = pooled_loss(likelihood.terms(m64, images, None, scoring_for(masks)))
    assert loss.dtype == torch.float64
    assert abs(loss.item() - case["float64_reevaluation_nats"]) < F64_TOL
    # and the float32 gap is the reference's own rounding size
    assert abs(case["loss_nats"] - loss.item()) < 3e-6
