"""Networks: generator levels (AR, MAR), the pixel head, and the fractal recursion."""
from .ar import ARGenerator
from .fractal import FractalGen, FractalLevel
from .mar import MARGenerator
from .pixel_head import PixelHead

__all__ = ["ARGenerator", "MARGenerator", "PixelHead", "FractalLevel", "FractalGen"]
