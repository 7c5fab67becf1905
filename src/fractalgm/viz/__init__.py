"""Pictures: image grids, the loss plot, and the generation process as an animation."""
from .animate import Recorder, save_animation
from .grid import make_grid, plot_metrics, save_grid, to_pil

__all__ = ["Recorder", "make_grid", "plot_metrics", "save_animation", "save_grid", "to_pil"]
