"""fractalgm: fractal generative models (AR/MAR transformers nested level by level)."""
from ._version import __version__
from .config import FractalConfig, LevelConfig, PixelHeadConfig
from .likelihood import NLLResult, Scoring
from .models import FractalGen, create_model
from .presets import get_preset, list_presets

__all__ = ["FractalConfig", "LevelConfig", "PixelHeadConfig", "FractalGen", "NLLResult", "Scoring",
           "create_model", "get_preset", "list_presets", "__version__"]
