"""Networks: generator levels (AR, MAR), the pixel head, the fractal recursion and the model root."""
from ..presets import get_preset
from .ar import ARGenerator
from .contract import Conditions, Generator, HeadSpec, Level, LevelSpec, resolve_specs
from .fractal import FractalLevel
from .fractal_gen import FractalGen
from .mar import MARGenerator
from .pixel_head import PixelHead, PixelLevel


def create_model(name: str, device=None, **overrides) -> FractalGen:
    """A freshly initialised model of preset `name` (with config field overrides)."""
    model = FractalGen(get_preset(name, **overrides))
    return model.to(device) if device is not None else model


__all__ = ["ARGenerator", "MARGenerator", "PixelHead", "PixelLevel", "FractalLevel", "FractalGen", "Conditions",
           "Generator", "HeadSpec", "Level", "LevelSpec", "resolve_specs", "create_model"]
