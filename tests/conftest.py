"""Shared helpers for the model tests: tiny configs, random images, fixture paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fractalgm import FractalConfig, FractalGen, LevelConfig, PixelHeadConfig

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"

# The models here are tiny: one thread is as fast, and it avoids OpenMP spin-wait stalls (100× slower)
# when the 2-core machine is busy with other processes. FRACTALGM_TEST_THREADS=2 runs the suite with two
# (CI does, for the numerics tests: the thread count changes the order of reductions).
torch.set_num_threads(int(os.environ.get("FRACTALGM_TEST_THREADS", "1")))
OFFICIAL_KEYS = FIXTURES / "official-keys"


def _have_fmnist() -> bool:
    from fractalgm.data import load_dataset

    try:
        load_dataset("fashion_mnist", "test")
        return True
    except Exception:  # noqa: BLE001 - any loader failure means the data is not installed
        return False


HAVE_FMNIST = _have_fmnist()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed "
                                  "(apt-get install dataset-fashion-mnist)")


def tiny_config(kinds=("mar", "mar"), sizes=None, channels=3, widths=None, heads=None, **kw) -> FractalConfig:
    """A tiny hierarchy: `sizes` (image sizes, last patch 1) with one generator `kind` per level.

    Defaults: 8×8 images 8→2→1 for two levels, 8→4→2→1 for three, widths 32/16/16, depth 1,
    head dims 8 (AR needs a multiple of 4), pixel head 16 wide; dropouts 0 unless given.
    """
    n = len(kinds)
    sizes = sizes or {1: (8, 1), 2: (8, 2, 1), 3: (8, 4, 2, 1)}[n]
    widths = widths or (32, 16, 16)[:n]
    heads = heads or tuple(w // 8 for w in widths)
    drop = kw.pop("dropout", 0.0)
    levels = tuple(LevelConfig(sizes[i], sizes[i + 1], widths[i], 1, heads[i], kinds[i], drop, drop)
                   for i in range(n))
    kw.setdefault("num_classes", 10)
    kw.setdefault("head", PixelHeadConfig(16, 1, 2))
    kw.setdefault("guide_head", PixelHeadConfig(16, 1, 2))
    return FractalConfig(levels=levels, channels=channels, **kw)


def build(config: FractalConfig, seed: int = 0) -> FractalGen:
    torch.manual_seed(seed)
    return FractalGen(config).eval()


def perturb(model, std=0.3, seed=99):
    """Add N(0, std²) noise to every parameter (as the golden fixtures do) so every input matters."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def random_images(config: FractalConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    S = config.image_size
    return torch.randint(0, 256, (batch, config.channels, S, S), generator=g, dtype=torch.uint8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (training masks, dropout use it)."""
    torch.manual_seed(1234)
    yield
