"""The level contract and the modules around the recursion: specs, conditions, plans, scoring types, imports."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import build, gen, random_images, tiny_config
from test_model import CONFIGS, config, perturb

from fractalgm import make_scoring, get_preset, likelihood, list_presets, masks
from fractalgm.likelihood import ExactOrder, FixedMasks, RandomMasks, Rows, TrainingMasks
from fractalgm.models import Conditions, FractalGen, LevelSpec, MARGenerator, PixelLevel, resolve_specs
from fractalgm.sampling import SamplePlan, make_plan, steps_per_level

SRC = Path(__file__).resolve().parent.parent / "src" / "fractalgm"


# ---------------------------------------------------------------------------- specs
@pytest.mark.parametrize("name", list_presets())
def test_specs_resolve_the_config_once(name):
    cfg = get_preset(name)
    specs, head = resolve_specs(cfg)
    assert [s.level for s in specs] == list(cfg.levels) and [s.index for s in specs] == list(range(len(specs)))
    for i, s in enumerate(specs):
        assert s.cond_dim == cfg.cond_dim(i) and s.num_conds == cfg.cond_tokens(i)
        assert s.child_conds == (specs[i + 1].num_conds if i + 1 < len(specs) else 1)
        assert (s.guiding_pixel_head is not None) == cfg.has_guiding_pixel(i)
        assert s.pixels.mean == cfg.pixel_mean and s.pixels.std == cfg.pixel_std
        assert s.token_dim == cfg.channels * s.level.patch_size**2
    assert head.cond_dim == cfg.levels[-1].width and head.first_weight == cfg.r_weight


def test_every_level_holds_its_own_spec():
    cfg = config("mar-ar-mar-gp")
    model = build(cfg)
    specs, _ = resolve_specs(cfg)
    node, seen = model, []
    while not isinstance(node, PixelLevel):
        assert node.generator.spec is node.spec
        seen.append(node.spec)
        node = node.next_fractal
    assert tuple(seen) == specs
    # the pixel normalisation is defined once: no level keeps constants of its own
    assert not any("pixel_mean" in n or "pixel_std" in n for n, _ in model.named_buffers())


def test_a_mar_level_checks_how_many_conditions_it_reads():
    cfg = tiny_config(("mar", "mar"), num_conds=5)
    g = build(cfg).generator
    assert isinstance(g, MARGenerator) and g.num_conds == 5
    patches = torch.zeros(2, g.cfg.seq_len, 3, 2, 2, dtype=torch.long)
    mask = torch.ones(2, g.cfg.seq_len, dtype=torch.bool)
    with pytest.raises(ValueError, match="reads 5 conditions, got 1"):
        g.predict(patches, mask, Conditions(torch.zeros(2, g.spec.cond_dim)))


def test_level_spec_defaults_follow_the_channels():
    from fractalgm.config import LevelConfig

    grey = LevelSpec(LevelConfig(4, 1, 8, 1, 2, "mar"), 8, channels=1)
    rgb = LevelSpec(LevelConfig(4, 1, 8, 1, 2, "mar"), 8)
    assert len(grey.pixels.mean) == 1 and len(rgb.pixels.mean) == 3
    assert get_preset("tiny_fmnist").pixel_mean == grey.pixels.mean


# ---------------------------------------------------------------------------- conditions
def test_conditions_take_first_and_guide():
    mid, nb = torch.arange(6.0).view(3, 2), tuple(torch.full((3, 2), float(k)) for k in range(4))
    c = Conditions(mid, nb, torch.ones(3, 1))
    assert c.rows == 3 and len(c.tokens) == 5 and c.tokens[0] is mid
    sub = c.take(torch.tensor([2, 0]))
    assert torch.equal(sub.middle, mid[[2, 0]]) and torch.equal(sub.guiding_pixel, torch.ones(2, 1))
    assert all(torch.equal(a, b[[2, 0]]) for a, b in zip(sub.neighbours, nb))
    first = c.first(2)
    assert len(first.tokens) == 2 and first.guiding_pixel is None  # the guiding pixel never passes down
    assert c.first(1).neighbours == () and Conditions.repeated(mid, 3).tokens == (mid, mid, mid)
    assert c.with_guiding_pixel(torch.zeros(3, 1)).guiding_pixel.sum() == 0 and c.guiding_pixel.sum() == 3


# ---------------------------------------------------------------------------- the sampling plan
@pytest.mark.parametrize("name", list(CONFIGS))
def test_steps_per_level_counts_what_sampling_does(name):
    """Level ℓ records prod(steps of levels ≤ ℓ) frames per sample run: each child call runs its own steps."""
    cfg = config(name)
    model = build(cfg)
    for num_iter in (None, 2, [3] * len(cfg.levels)):
        frames = []
        model.sample(torch.tensor([1, 2]), num_iter=num_iter, generator=gen(0),
                     record=lambda level, canvas, unknown: frames.append(level))
        steps = steps_per_level(cfg, num_iter)
        asked = {None: [64] * len(cfg.levels), 2: [2] * len(cfg.levels)}.get(num_iter if num_iter != [3] * len(
            cfg.levels) else 0, num_iter)
        assert steps == [lv.seq_len if lv.kind == "ar" else min(lv.seq_len, n) for lv, n in zip(cfg.levels, asked)]
        assert frames.count(None) == 1
        for level in range(len(cfg.levels)):
            assert frames.count(level) == math.prod(steps[:level + 1]), (num_iter, level)


def test_plan_child_and_bad_options():
    cfg = config("mar-mar")
    plan = make_plan(cfg, True, num_iter=[3, 2], cfg_scale=2.0, cfg_schedule="linear", temperature=0.5, generator=gen(0))
    assert plan.guided and plan.steps == 3 and plan.schedule == "linear" and plan.level == 0
    child = plan.child(1.0)  # a step whose scale is exactly 1 still runs both halves
    assert child.guided and child.cfg_scale == 1.0 and child.level == 1 and child.steps == 2
    assert child.schedule == "constant" and child.temperature == 0.5 and child.generator is plan.generator
    per_row = SamplePlan(cfg_scale=torch.tensor([1.0, 2.0, 3.0]), paired=True).take(torch.tensor([2, 0]))
    assert per_row.cfg_scale.tolist() == [3.0, 1.0]
    assert not make_plan(cfg, False).guided
    with pytest.raises(ValueError, match="needs labels"):
        make_plan(cfg, False, cfg_scale=2.0)
    with pytest.raises(ValueError, match="num_iter"):
        steps_per_level(cfg, [1])
    with pytest.raises(TypeError, match="whole numbers"):
        make_plan(cfg, True, num_iter=[2.5, 2])
    for bad in ({"cfg_scale": float("nan")}, {"temperature": float("inf")}, {"filter_threshold": "0.1"},
                {"cfg_scale": True}, {"filter_threshold": 1.5}, {"filter_threshold": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_plan(cfg, True, **bad)
    assert make_plan(cfg, True, num_iter=torch.tensor([2, 1]).tolist(), filter_threshold=0).filter_threshold == 0
    model = build(cfg)
    images = random_images(cfg, 2)
    with pytest.raises(ValueError, match="both images and known"):
        model.sample(images=images)
    with pytest.raises(ValueError, match="both images and known"):
        model.sample(num_images=2, known=masks.half(8, "top"))


# ---------------------------------------------------------------------------- scoring types
def test_scoring_by_name_gives_distinct_types():
    g = gen(0)
    m = [torch.ones(2, 16, dtype=torch.bool)]
    assert type(make_scoring("train", g)) is TrainingMasks and make_scoring("train").mode == "train"
    assert type(make_scoring("random", g)) is RandomMasks and not make_scoring().exact
    assert make_scoring(shared_count=True).shared_count
    assert type(make_scoring("exact", order="raster")) is ExactOrder and make_scoring("exact").exact
    assert type(make_scoring("fixed", masks=m)) is FixedMasks and make_scoring("fixed", masks=m).masks is m
    with pytest.raises(ValueError, match="order"):
        ExactOrder(order="zigzag")


@pytest.mark.parametrize("scoring", [TrainingMasks(gen(0)), RandomMasks(gen(1)), RandomMasks(gen(2), True),
                                     ExactOrder(gen(3)), ExactOrder(order="raster")], ids=lambda s: repr(s)[:24])
def test_selections_are_consistent(scoring):
    R, L = 7, 9
    pick = scoring.select(0, False, R, L, "cpu")
    assert pick.mask.shape == pick.score.shape and pick.mask.size(1) == L
    assert pick.source.shape == pick.weight.shape == (pick.mask.size(0),)
    assert (pick.score.sum(1) >= 1).all() and not (pick.score & ~pick.mask).any()  # scored tokens are hidden
    if isinstance(scoring, ExactOrder):  # L copies per sequence, each position scored exactly once
        assert pick.source.tolist() == [r for r in range(R) for _ in range(L)]
        assert (pick.score.view(R, L, L).sum(1) == 1).all() and (pick.weight == 1).all()
        visible = (~pick.mask).sum(1).view(R, L).sort(1).values
        assert (visible == torch.arange(L)).all()  # copy t sees t tokens
    else:
        assert torch.equal(pick.source, torch.arange(R))
        assert torch.allclose(pick.weight, L / pick.score.sum(1).float())
    every = scoring.select(0, True, R, L, "cpu")  # AR levels score every token once, whatever the mode
    assert every.mask.all() and every.score.all() and (every.weight == 1).all()


def test_rows_descend_one_per_scored_token():
    rows = Rows(torch.tensor([0, 0, 1]), torch.tensor([1.0, 2.0, 3.0]))
    pick = FixedMasks([torch.tensor([[True, False], [True, True], [False, True]])]).select(0, False, 3, 2, "cpu")
    sub = rows.descend(pick)
    assert sub.owner.tolist() == [0, 0, 0, 1] and sub.weight.tolist() == [2.0, 2.0, 2.0, 6.0]


def test_likelihood_functions_match_the_model_verbs():
    cfg = config("mar-mar-gp-c1")
    model = perturb(build(cfg))
    images = random_images(cfg, 3)
    s = likelihood.score(model, images, None, make_scoring("exact", gen(0)))
    assert torch.equal(s.nats, model.nll(images, exact=True, generator=gen(0)).nats)
    model.eval()
    with torch.no_grad():
        loss = likelihood.training_loss(likelihood.terms(model, images, None, make_scoring("train", gen(1))))
        assert torch.equal(loss, model(images, None, make_scoring("train", gen(1))))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_normalisation_follows_the_model_dtype(dtype):
    cfg = config("mar-mar-gp-c1")
    model = build(cfg).to(dtype)
    images = random_images(cfg, 2)
    mean, std = torch.tensor(cfg.pixel_mean).to(dtype), torch.tensor(cfg.pixel_std).to(dtype)
    want = (images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    got = model.spec.pixels.normalize(images, 1, model.fake_latent)
    assert got.dtype == want.dtype and torch.equal(got, want)
    if dtype == torch.float64:  # (a bf16 model runs under autocast only, as before)
        assert model.nll(images, exact=True).nats.dtype == torch.float64


# ---------------------------------------------------------------------------- the root
def test_the_root_is_thin():
    public = {n for n in vars(FractalGen) if not n.startswith("_")}
    verbs = {"forward", "sample", "inpaint", "nll", "from_pretrained", "save_pretrained"}
    assert public == verbs | {"device"}  # and the device its parameters are on
