"""Model folders saved by commit 653b0ee load and reproduce that commit's numbers.

`tests/fixtures/old_folders/` holds small models (random weights, fixed seed) written by the old
`save_pretrained`, and the NLLs (every scoring mode), an eval-mode training loss, samples and
inpaintings (cfg 1 and cfg > 1) the old code computed for fixed seeds (`make_fixtures.py` wrote them,
on an AVX-512 machine). The current code must load the folders unchanged and give the same arrays, as
far as any CPU can: floats within the rounding that differs between CPUs (`ulps`), the random inputs
and masks bit for bit (integers from the portable Mersenne Twister), and sampled pixels draw for draw
up to draws within float noise of a tie (`draws.assert_same_draws`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open

from fractalgm import FractalConfig, FractalGen, LevelConfig, PixelHeadConfig, make_scoring, get_preset
from fractalgm import masks
from draws import assert_same_draws

OLD = Path(__file__).parent / "fixtures" / "old_folders"


def tiny(kinds, sizes, channels, **kw) -> FractalConfig:
    widths = (32, 16, 16)[:len(kinds)]
    levels = tuple(LevelConfig(sizes[i], sizes[i + 1], widths[i], 1, widths[i] // 8, kinds[i], 0.1, 0.1)
                   for i in range(len(kinds)))
    return FractalConfig(levels=levels, channels=channels, num_classes=10, head=PixelHeadConfig(16, 1, 2),
                         guide_head=PixelHeadConfig(16, 1, 2), **kw)


CASES = {
    "tiny_fmnist": (get_preset("tiny_fmnist"), (4, 4)),
    "mar3_gp_rgb": (tiny(("mar", "mar", "mar"), (8, 4, 2, 1), 3, guiding_pixel=True, channel_order="grb",
                         r_weight=5.0), (3, 4, 2)),
    "ar_mar_gp_rgb": (tiny(("ar", "mar"), (8, 2, 1), 3, guiding_pixel=True, num_conds=5), (1, 3)),
}


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fixed_masks(config: FractalConfig, batch: int) -> list[torch.Tensor]:
    """One bool (rows, L) mask per level, every row scoring at least one token (AR levels score all)."""
    out, rows = [], batch
    for i, lv in enumerate(config.levels):
        m = torch.rand(rows, lv.seq_len, generator=g(100 + i)) < 0.5
        m[:, 0] = True
        if lv.kind == "ar":
            m[:] = True
        out.append(m)
        rows = int(m.sum())
    return out


def inputs(config: FractalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    S, C = config.image_size, config.channels
    return torch.randint(0, 256, (3, C, S, S), generator=g(1), dtype=torch.uint8), torch.tensor([1, 4, 7])


def known_box(S: int) -> torch.Tensor:
    return masks.box(S, 1, 2, S // 2, S // 2 + 1)


def computed(model: FractalGen) -> dict[str, torch.Tensor]:
    """The inputs, the masks and the float results: every output that involves no sampled pixel."""
    cfg = model.config
    images, labels = inputs(cfg)
    out = {"images": images, "labels": labels, "known": known_box(cfg.image_size)}
    out["nll_random_2"] = model.nll(images, passes=2, generator=g(2)).nats
    out["nll_random_labels"] = model.nll(images, labels, passes=1, generator=g(3)).nats
    out["nll_exact_random"] = model.nll(images, exact=True, generator=g(4)).nats
    out["nll_exact_raster"] = model.nll(images, labels, exact=True, order="raster").nats
    fixed = fixed_masks(cfg, 3)
    for i, m in enumerate(fixed):
        out[f"fixed_mask_{i}"] = m
    out["nll_fixed"] = model.nll(images, scoring=make_scoring("fixed", masks=fixed)).nats
    out["nll_shared_count"] = model.nll(images, scoring=make_scoring("random", g(5), shared_count=True)).nats
    with torch.no_grad():
        out["loss_train_eval_mode"] = model(images, labels, make_scoring("train", g(6))).reshape(1)
    return out


def sampled(model: FractalGen, num_iter) -> dict[str, Callable[[], torch.Tensor]]:
    """The outputs made of sampled pixels, each as a function that samples it again."""
    S = model.config.image_size
    images, labels = inputs(model.config)
    known = known_box(S)
    n = list(num_iter)
    return {
        "sample_cfg1": lambda: model.sample(labels, num_iter=n, generator=g(7)),
        "sample_uncond": lambda: model.sample(num_images=2, generator=g(8)),
        "sample_cfg3_linear": lambda: model.sample(labels, num_iter=n, cfg_scale=3.0, cfg_schedule="linear",
                                                   temperature=0.9, generator=g(9)),
        "inpaint_cfg1": lambda: model.inpaint(images, known, generator=g(10)),
        "inpaint_cfg2": lambda: model.inpaint(images, masks.half(S, "bottom"), labels, num_iter=n, cfg_scale=2.0,
                                              generator=g(11)),
    }


def outputs(model: FractalGen, num_iter) -> dict[str, torch.Tensor]:
    """Every output (make_fixtures.py stores these)."""
    return {**computed(model), **{k: f() for k, f in sampled(model, num_iter).items()}}


# Float results are sums of many fp32 terms (an NLL: C·H·W·levels log-probabilities through the levels'
# networks). Another CPU (vector width, FMA, oneDNN/AMX kernels) changes each term by a few ulps and the
# rounding of the sums by about sqrt(N) ulps of the total. 16 float32 ulps of the value bound both with
# margin: measured between AVX-512 (the fixtures), AVX2 and scalar (ATEN_CPU_CAPABILITY=default) builds,
# the largest difference was 0.2 ulp (1.3e-4 of 5,364 nats).
ULPS = 16
F32_EPS = torch.finfo(torch.float32).eps  # 2^-23, one ulp at 1


def close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor | None = None) -> bool:
    """|got − want| ≤ ULPS float32 ulps of `scale` (default: of the values themselves)."""
    scale = want.abs() if scale is None else scale
    return bool(((got.double() - want.double()).abs() <= ULPS * F32_EPS * scale.double()).all())


def init_fingerprint(config: FractalConfig, absolute: bool = False) -> tuple[list[str], torch.Tensor]:
    """The state_dict keys of a fresh `FractalGen(config)` under seed 0, and each tensor's float64 sum
    (of magnitudes with `absolute`): the same seed must keep giving the same initial weights."""
    torch.manual_seed(0)
    state = FractalGen(config).state_dict()
    return list(state), torch.stack([(v.double().abs() if absolute else v.double()).sum() for v in state.values()])


def expected(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(OLD / f"{name}_expected.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", list(CASES))
def test_old_folder_loads_with_the_same_config(name):
    model = FractalGen.from_pretrained(OLD / name)
    arrays, meta = expected(name)
    assert meta["commit"] == "653b0ee"
    keys, sums = init_fingerprint(model.config)  # the folder's own config: presets may evolve
    assert keys == json.loads(meta["init_keys"]) == list(model.state_dict())
    # The uniform bits are portable; the transforms (erfinv, log, Box-Muller) are vectorised differently
    # per CPU, so each weight may differ by a few ulps: the sum by a few ulps of the sum of magnitudes.
    _, magnitudes = init_fingerprint(model.config, absolute=True)
    assert close(sums, arrays["init_fingerprint"], scale=magnitudes)


@pytest.mark.filterwarnings("ignore:.*cannot see")  # AR levels / RGB heads: inpaint warns, as it did
@pytest.mark.parametrize("name", list(CASES))
def test_old_folder_reproduces_old_outputs(name):
    want, _ = expected(name)
    model = FractalGen.from_pretrained(OLD / name)
    got, draws = computed(model), sampled(model, tuple(want["num_iter"].tolist()))
    assert set(got) | set(draws) == set(want) - {"num_iter", "init_fingerprint"}
    for key, value in got.items():
        assert value.dtype == want[key].dtype, key
        assert close(value, want[key]) if value.is_floating_point() else torch.equal(value, want[key]), key
    for key, generate in draws.items():
        assert_same_draws(generate, want[key], f"{name}: {key}")
