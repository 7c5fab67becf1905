"""Config validation, serialisation, presets, and the paper models' exact sizes and state_dict layouts."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import OFFICIAL_KEYS, tiny_config
from fractalgm import FractalConfig, FractalGen, LevelConfig, PixelHeadConfig, get_preset, list_presets
from fractalgm.models import FractalLevel

PAPER_PRESETS = ("fractalar_in64", "fractalmar_in64", "fractalmar_base_in256", "fractalmar_large_in256",
                 "fractalmar_huge_in256")

# From the reference (official-param-counts.json): total; total with the reference constructor defaults
# (num_conds=1, no guiding pixel); per generator level (transformer blocks, other generator params,
# guiding-pixel head); pixel head; class table + fake latent.
OFFICIAL = {
    "fractalar_in64": (442068224, 442068224, [(411107328, 1367040, 0), (27271168, 537600, 0)], 760064, 1025024),
    "fractalmar_in64": (431995648, 431989504, [(403079168, 1372160, 0), (25219072, 540160, 0)], 760064, 1025024),
    "fractalmar_base_in256": (186300224, 184755456, [(170108928, 1385472, 0), (10646784, 326016, 792832),
                                                     (1334592, 80640, 743680)], 112512, 768768),
    "fractalmar_large_in256": (437000064, 435403392, [(403079168, 2109440, 0), (25219072, 565760, 825600),
                                                      (3159040, 140288, 760064)], 116608, 1025024),
    "fractalmar_huge_in256": (849586240, 847937664, [(787097600, 2964480, 0), (49235200, 871040, 858368),
                                                     (6164800, 216320, 776448)], 120704, 1281280),
}


def meta_model(config: FractalConfig) -> FractalGen:
    with torch.device("meta"):
        return FractalGen(config)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lv(size=8, patch=1, width=16, depth=1, heads=2, kind="mar", **kw):
    return LevelConfig(size, patch, width, depth, heads, kind, **kw)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("levels,match", [
    ((lv(8, 3),), "patch_size must divide image_size"),
    ((lv(8, 2), lv(4, 1)), "patch_size must equal the next level's image_size"),
    ((lv(8, 2),), "last level must have patch_size 1"),
    ((lv(8, 4), lv(4, 2)), "last level must have patch_size 1"),
    ((lv(8, 1, width=18, heads=4),), "num_heads=4 must divide width=18"),
    ((lv(8, 1, width=12, heads=2, kind="ar"),), "head dim divisible by 4"),
    ((lv(8, 1, kind="diffusion"),), "kind must be one of"),
    ((lv(8, 0),), "patch_size must divide image_size"),
    ((lv(-8, 1),), "level 0"),
    ((lv(8, 1, width=-16),), "width must be positive"),
    ((lv(8, 1, depth=0),), "depth must be positive"),
    ((lv(8, 1, heads=0),), "num_heads must be positive"),
    ((lv(8, 1, attn_dropout=1.0),), "attn_dropout must be in"),
    ((lv(8, 1, attn_dropout=-0.1),), "attn_dropout must be in"),
    ((lv(8, 1, proj_dropout=1.5),), "proj_dropout must be in"),
    ((), "at least one generator level"),
])
def test_invalid_levels(levels, match):
    with pytest.raises(ValueError, match=match):
        FractalConfig(levels=levels)


def test_invalid_level_messages_name_the_level():
    with pytest.raises(ValueError, match=r"level 1 \(4→2\)"):
        FractalConfig(levels=(lv(8, 4), lv(4, 2, width=18, heads=4)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(channels=2), "channels must be 1"),
    (dict(channels=4), "channels must be 1"),
    (dict(channel_order="rgx"), "channel_order must be a permutation"),
    (dict(channel_order="rg"), "channel_order must be a permutation"),
    (dict(channel_order="rrb"), "channel_order must be a permutation"),
    (dict(channels=1, channel_order="rgb"), "channel_order must be a permutation"),
    (dict(num_conds=0), "num_conds must be between 1 and 5"),
    (dict(num_conds=6), "num_conds must be between 1 and 5"),
    (dict(num_classes=-1), "num_classes"),
    (dict(label_drop_prob=1.5), "label_drop_prob"),
    (dict(label_drop_prob=-0.1), "label_drop_prob"),
    (dict(r_weight=0.0), "r_weight"),
    (dict(head=PixelHeadConfig(18, 1, 4)), "head"),
    (dict(head=PixelHeadConfig(-16, 1, 2)), "head"),
    (dict(guide_head=PixelHeadConfig(16, 0, 2)), "guide_head"),
    (dict(pixel_mean=(0.5, 0.5), pixel_std=(0.2, 0.2)), "one value per channel"),
    (dict(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.2, 0.0, 0.2)), "pixel_std must be positive"),
])
def test_invalid_model_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FractalConfig(levels=(lv(8, 2), lv(2, 1)), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(pixel_mean=(0.5, 0.4, 0.3)), dict(pixel_std=(0.5, 0.4, 0.3))])
def test_pixel_mean_without_std(kwargs):
    try:
        cfg = FractalConfig(levels=(lv(8, 2), lv(2, 1)), **kwargs)
    except ValueError as e:  # acceptable: a clear message
        assert "pixel_mean" in str(e) and "pixel_std" in str(e)
    else:  # or the missing one defaults and the given one is kept
        for key, value in kwargs.items():
            assert getattr(cfg, key) == value
        assert len(cfg.pixel_mean) == len(cfg.pixel_std) == 3


@pytest.mark.parametrize("channels,order", [(3, "rgb"), (3, "bgr"), (3, "grb"), (3, "GBR"), (1, "l"), (1, None)])
def test_valid_channel_orders(channels, order):
    cfg = FractalConfig(levels=(lv(8, 1),), channels=channels, channel_order=order)
    assert sorted(cfg.channel_order) == sorted("rgb" if channels == 3 else "l")
    assert len(cfg.pixel_mean) == len(cfg.pixel_std) == channels


def test_from_reference_lists_lengths():
    with pytest.raises(ValueError, match="equal length"):
        FractalConfig.from_reference_lists((8, 2, 1), (32, 16), (1, 1, 1), (2, 2, 2), ("mar", "mar", "ar"))
    with pytest.raises(ValueError, match="equal length"):
        FractalConfig.from_reference_lists((8, 2, 1), (32, 16, 16), (1, 1, 1), (2, 2, 2), ("mar", "ar"))
    with pytest.raises(ValueError):
        FractalConfig.from_reference_lists((8,), (32,), (1,), (2,), ("mar",))


def test_from_reference_lists_maps_levels():
    cfg = FractalConfig.from_reference_lists((16, 4, 1), (64, 32, 16), (2, 1, 3), (4, 2, 2), ("ar", "mar", "ar"),
                                             class_num=7, num_conds=5, guiding_pixel=True)
    assert [(l.image_size, l.patch_size, l.width, l.depth, l.num_heads, l.kind) for l in cfg.levels] == [
        (16, 4, 64, 2, 4, "ar"), (4, 1, 32, 1, 2, "mar")]
    assert cfg.head == PixelHeadConfig(16, 3, 2)
    assert cfg.num_classes == 7 and cfg.guiding_pixel and cfg.num_conds == 5
    # AR levels get the reference's hard-coded dropouts (attention 0, residual/FFN 0.1)
    assert (cfg.levels[0].attn_dropout, cfg.levels[0].proj_dropout) == (0.0, 0.1)
    assert cfg.cond_tokens(1) == 1  # a MAR level under an AR parent reads the middle condition only
    assert cfg.has_guiding_pixel(1) and not cfg.has_guiding_pixel(0)


# ---------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("config", [
    tiny_config(("mar", "mar")),
    tiny_config(("ar", "mar", "mar"), channels=1, guiding_pixel=True, num_conds=3, r_weight=5.0, num_classes=0),
    tiny_config(("mar", "ar"), channel_order="grb", pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.25, 0.5),
                label_drop_prob=0.3, dropout=0.2, grad_checkpointing=True),
] + [get_preset(name) for name in PAPER_PRESETS], ids=lambda c: "-".join(l.kind for l in c.levels))
def test_json_round_trip(config):
    text = config.to_json()
    back = FractalConfig.from_json(text)
    assert back == config
    assert back.to_json() == text
    assert json.loads(text)["format_version"] >= 1
    assert FractalConfig.from_dict(config.to_dict()) == config


def test_json_rejects_newer_format():
    d = tiny_config().to_dict()
    d["format_version"] += 1
    with pytest.raises(ValueError, match="newer"):
        FractalConfig.from_dict(d)


def test_json_round_trip_validates():
    d = tiny_config().to_dict()
    d["num_conds"] = 9
    with pytest.raises(ValueError, match="num_conds"):
        FractalConfig.from_json(json.dumps(d))


# ---------------------------------------------------------------------------- presets
def test_presets_listed():
    names = list_presets()
    assert set(PAPER_PRESETS) <= set(names)
    assert names == sorted(names)
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("no_such_model")
    assert get_preset("fractalmar_in64", num_classes=10).num_classes == 10


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_constructs_on_meta(name):
    cfg = get_preset(name)
    model = meta_model(cfg)
    assert model.config == cfg
    assert numel(model) > 0
    assert FractalConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_parameter_counts(name):
    total, total_defaults, levels, pixel_head, class_params = OFFICIAL[name]
    model = meta_model(get_preset(name))
    assert numel(model) == total
    level, got = model, []
    while isinstance(level, (FractalGen, FractalLevel)):  # the root is level 0
        g = level.generator
        guide = numel(g.guiding_pixel_loss) if hasattr(g, "guiding_pixel_loss") else 0
        got.append((numel(g.blocks), numel(g) - numel(g.blocks) - guide, guide))
        level = level.next_fractal
    assert got == levels
    assert numel(level) == pixel_head
    assert numel(model.class_emb) + model.fake_latent.numel() == class_params
    # the reference constructor's defaults: num_conds=1, no guiding pixel
    assert numel(meta_model(get_preset(name, num_conds=1, guiding_pixel=False))) == total_defaults


@pytest.mark.parametrize("path", sorted(OFFICIAL_KEYS.glob("*.json")), ids=lambda p: p.stem)
def test_state_dict_matches_reference_keys(path):
    want = json.loads(path.read_text())
    model = meta_model(get_preset(path.stem))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(got) - set(want) == set(), "keys the reference does not have"
    assert set(want) - set(got) == set(), "reference keys missing"
    assert got == want
