"""Named model configurations (configs only: `fractalgm.models.create_model` builds one): the paper's five,
and small ones that train on a laptop CPU."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .config import FractalConfig, LevelConfig, PixelHeadConfig

_PRESETS: dict[str, Callable[[], FractalConfig]] = {}


def register_preset(fn: Callable[[], FractalConfig]) -> Callable[[], FractalConfig]:
    _PRESETS[fn.__name__] = fn
    return fn


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, **overrides) -> FractalConfig:
    """The config of preset `name`, with field overrides (e.g. `num_classes=10`)."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    cfg = _PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


# ---------------------------------------------------------------------------- paper presets
def _ar(size, patch, width, depth, heads):  # the reference hard-codes AR dropouts 0 / 0.1 / 0.1
    return LevelConfig(size, patch, width, depth, heads, "ar", attn_dropout=0.0, proj_dropout=0.1)


def _mar(size, patch, width, depth, heads, drop=0.1):
    return LevelConfig(size, patch, width, depth, heads, "mar", attn_dropout=drop, proj_dropout=drop)


@register_preset
def fractalar_in64() -> FractalConfig:
    """FractalAR, ImageNet 64×64 (paper Table 1): 64→4→1, AR 1024×32 then AR 512×8, 442 M params."""
    return FractalConfig(levels=(_ar(64, 4, 1024, 32, 16), _ar(4, 1, 512, 8, 8)),
                         head=PixelHeadConfig(128, 3, 4), num_conds=1, r_weight=5.0)


@register_preset
def fractalmar_in64() -> FractalConfig:
    """FractalMAR, ImageNet 64×64: 64→4→1, MAR 1024×32 then MAR 512×8, 5 conditions, 432 M params."""
    return FractalConfig(levels=(_mar(64, 4, 1024, 32, 16), _mar(4, 1, 512, 8, 8)),
                         head=PixelHeadConfig(128, 3, 4), num_conds=5, r_weight=5.0)


def _in256(widths, depths, heads) -> FractalConfig:
    sizes = (256, 16, 4, 1)
    levels = tuple(_mar(sizes[i], sizes[i + 1], widths[i], depths[i], heads[i]) for i in range(3))
    return FractalConfig(levels=levels, head=PixelHeadConfig(64, 1, 4), num_conds=5, guiding_pixel=True,
                         r_weight=5.0)


@register_preset
def fractalmar_base_in256() -> FractalConfig:
    """FractalMAR-B, ImageNet 256×256: 256→16→4→1, widths 768/384/192, guiding pixel, 186 M params."""
    return _in256((768, 384, 192), (24, 6, 3), (12, 6, 3))


@register_preset
def fractalmar_large_in256() -> FractalConfig:
    """FractalMAR-L, ImageNet 256×256: widths 1024/512/256, 437 M params."""
    return _in256((1024, 512, 256), (32, 8, 4), (16, 8, 4))


@register_preset
def fractalmar_huge_in256() -> FractalConfig:
    """FractalMAR-H, ImageNet 256×256: widths 1280/640/320, 850 M params."""
    return _in256((1280, 640, 320), (40, 10, 5), (16, 8, 4))


# ---------------------------------------------------------------------------- small CPU presets
def _small(levels, channels: int, kind: str, head=PixelHeadConfig(64, 1, 4), num_classes: int = 10,
           dropout: float | None = None) -> FractalConfig:
    make = _ar if kind == "ar" else _mar
    levels = tuple(make(*lv) for lv in levels)
    if dropout is not None:
        levels = tuple(replace(lv, attn_dropout=dropout, proj_dropout=dropout) for lv in levels)
    return FractalConfig(levels=levels, head=head, channels=channels,
                         num_classes=num_classes, num_conds=1 if kind == "ar" else 5, r_weight=1.0)


_FMNIST = ((28, 4, 256, 6, 4), (4, 1, 128, 3, 4))  # 7×7 patches of 4×4, then 16 pixels
_RGB32 = ((32, 4, 256, 6, 4), (4, 1, 128, 3, 4))  # 8×8 patches of 4×4, then 16 RGB pixels


@register_preset
def fractalmar_fmnist() -> FractalConfig:
    """Fashion-MNIST 28×28×1: MAR 28→4→1 (256×6 over 49 patches, 128×3 over 16 pixels), 5.5 M params."""
    return _small(_FMNIST, 1, "mar")


@register_preset
def fractalar_fmnist() -> FractalConfig:
    """Fashion-MNIST 28×28×1: AR 28→4→1, same sizes as `fractalmar_fmnist`, exact likelihood."""
    return _small(_FMNIST, 1, "ar")


@register_preset
def fractalar_fmnist_lite() -> FractalConfig:
    """Fashion-MNIST 28×28×1, the default for CPU training: AR 28→4→1 with a light pixel level (64×2
    over 16 pixels, head 32×1) and no dropout, 5.4 M params. The pixel level runs on all 784 pixels,
    so its width sets the cost: twice the images/s of `fractalar_fmnist` (docs/tuning.md)."""
    levels = ((28, 4, 256, 6, 4), (4, 1, 64, 2, 4))
    return _small(levels, 1, "ar", head=PixelHeadConfig(32, 1, 4), dropout=0.0)


@register_preset
def fractalmar_rgb32() -> FractalConfig:
    """RGB 32×32 (CIFAR-size, photo crops): MAR 32→4→1, RGB pixel head of depth 2."""
    return _small(_RGB32, 3, "mar", head=PixelHeadConfig(64, 2, 4))


@register_preset
def fractalar_rgb32() -> FractalConfig:
    """RGB 32×32: AR 32→4→1, RGB pixel head of depth 2."""
    return _small(_RGB32, 3, "ar", head=PixelHeadConfig(64, 2, 4))


@register_preset
def tiny_fmnist() -> FractalConfig:
    """A 28×28×1 MAR model small enough for smoke tests and CI (seconds per step)."""
    return _small(((28, 4, 32, 1, 2), (4, 1, 32, 1, 2)), 1, "mar", head=PixelHeadConfig(16, 1, 2))


@register_preset
def tiny_rgb64() -> FractalConfig:
    """A 64×64 RGB MAR model (64→8→1) small enough to check the data pipeline in seconds per step."""
    return _small(((64, 8, 32, 1, 2), (8, 1, 32, 1, 2)), 3, "mar", head=PixelHeadConfig(16, 1, 2))


# ---------------------------------------------------------------------------- Table 2 ablation
# The paper's level ablation at Fashion-MNIST scale; the pixel head counts as a level. Fairness:
# every variant has the same pixel head, a top level of the same width (256) and a total of 12
# transformer blocks split over its generator levels; lower levels halve the width. That keeps
# the models comparable in size (5.7–10.6 M parameters) while the compute per image differs by an
# order of magnitude, which is the paper's point (`fractalgm info --preset ablation_*`,
# benchmarks/train_speed.py).
_ABLATION = {
    2: ((28, 1, 256, 12, 4),),  # one flat transformer over all 784 pixels
    3: ((28, 4, 256, 8, 4), (4, 1, 128, 4, 4)),
    4: ((28, 4, 256, 6, 4), (4, 2, 128, 3, 4), (2, 1, 64, 3, 2)),
}


def _register_ablation(levels: int, kind: str):
    def preset() -> FractalConfig:
        return _small(_ABLATION[levels], 1, kind)

    preset.__name__ = f"ablation_{levels}level_{kind}"
    preset.__doc__ = f"Table-2 ablation, {levels} levels incl. the pixel head, {kind.upper()} (Fashion-MNIST)."
    register_preset(preset)


for _levels in _ABLATION:
    for _kind in ("ar", "mar"):
        _register_ablation(_levels, _kind)
