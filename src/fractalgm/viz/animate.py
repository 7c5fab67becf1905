"""Watching generation: record the canvas as sampling fills it, and write it as a GIF (or MP4).

`Recorder` is the `record=` callback of `FractalGen.sample` / `inpaint`: it keeps one frame for the
starting canvas and one per step of every level, depth first (the paper's Figure 3). `save_animation`
lays each frame out as a grid, paints not-yet-generated pixels in a neutral grey, drops frames that
repeat the previous one (a level's step ends on the frame its last sub-step drew), and picks a frame
rate that plays the whole generation in about `seconds`.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .grid import make_grid

NEUTRAL = 128  # grey for unknown pixels
MAX_FPS = 50  # GIF delays are in 1/100 s and viewers slow down anything under 2/100 s


def paint_unknown(images: torch.Tensor, unknown: torch.Tensor, fill: int = NEUTRAL) -> torch.Tensor:
    """uint8 images with the `unknown` values (bool, broadcastable) replaced by `fill`."""
    return torch.where(unknown.to(images.device), torch.full_like(images, fill), images)


class Recorder:
    """Collects frames during sampling: pass it as `record=` to `sample` or `inpaint`.

    `levels` keeps only the steps of these levels (e.g. (0,) for a long 256-px generation); the
    starting canvas is always kept. `frames()` gives uint8 (B, C, H, W) images, unknown pixels filled.
    """

    def __init__(self, levels=None):
        self.levels = None if levels is None else set(levels)
        self.steps: list[int | None] = []  # the level of each frame (None: the starting canvas)
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []  # (canvas, unknown) per frame

    def __call__(self, level: int | None, canvas: torch.Tensor, unknown: torch.Tensor):
        if level is None or self.levels is None or level in self.levels:
            self.steps.append(level)
            self.records.append((canvas.cpu().clone(), unknown.cpu().clone()))

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, fill: int = NEUTRAL) -> list[torch.Tensor]:
        return [paint_unknown(c, u, fill) for c, u in self.records]


def _pad_even(a: np.ndarray) -> np.ndarray:
    """Video encoders (yuv420p) need even sides: pad the bottom/right with white."""
    h, w = a.shape[:2]
    return np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def check_path(path) -> Path:
    """Fail early (before a long sampling run) on a file type we cannot write."""
    path = Path(path)
    if path.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"an animation must be a .gif or .mp4 file, got {path.name!r}")
    if path.suffix.lower() == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError("writing MP4 needs imageio-ffmpeg (pip install imageio imageio-ffmpeg); "
                         "a .gif works without it")
    return path


def save_animation(frames: list[torch.Tensor], path, fps: float | None = None, seconds: float = 15.0,
                   nrow: int | None = None, by_column: bool = False, scale: int = 4,
                   hold: float = 1.5) -> dict:
    """Write uint8 frames (B, C, H, W) as a GIF, or an MP4 when imageio-ffmpeg is installed.

    Consecutive identical frames are merged; with `fps=None` the rate is chosen so the animation lasts
    about `seconds` (at most 50 fps; beyond that frames are skipped evenly, the last one always kept).
    The final frame is held `hold` seconds. Returns what was written: frames, fps, seconds.
    """
    path = check_path(path)
    suffix = path.suffix.lower()
    if not frames:
        raise ValueError("no frames to write")
    B = frames[0].size(0)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(B))))
    distinct = [frames[0]] + [f for prev, f in zip(frames, frames[1:]) if not torch.equal(prev, f)]
    if fps is None:
        fps = min(MAX_FPS, max(1.0, len(distinct) / seconds))
        keep = max(2, int(round(fps * seconds)))
        if len(distinct) > keep:  # too many frames to play in `seconds` at 50 fps: skip evenly
            idx = np.unique(np.linspace(0, len(distinct) - 1, keep).round().astype(int))
            distinct = [distinct[i] for i in idx]
    grids = [make_grid(f, nrow, by_column=by_column) for f in distinct]
    grids = [g.repeat(scale, 0).repeat(scale, 1) for g in grids]
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        images = [Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g) for g in grids]
        step_ms = max(20, int(round(100 / fps)) * 10)
        durations = [step_ms] * (len(images) - 1) + [step_ms + int(hold * 1000)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0,
                       optimize=False, disposal=1)
    else:
        import imageio.v2 as imageio

        with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
            for g in grids + [grids[-1]] * int(round(hold * fps)):
                writer.append_data(_pad_even(np.repeat(g, 3, -1) if g.shape[-1] == 1 else g))
    return {"path": str(path), "frames": len(grids), "fps": fps, "seconds": len(grids) / fps + hold}
