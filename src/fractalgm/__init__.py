"""fractalgm: fractal generative models (AR/MAR transformers nested level by level)."""
from ._version import __version__
from .config import FractalConfig, LevelConfig, PixelHeadConfig
from .likelihood import NLLResult, make_scoring
from .models import FractalGen, create_model
from .presets import get_preset, list_presets

__all__ = ["FractalConfig", "LevelConfig", "PixelHeadConfig", "FractalGen", "NLLResult", "make_scoring",
           "create_model", "get_preset", "list_presets", "__version__"]
