"""Images as the bytes the API sends: PNG grids (frames, results, inputs) and a job's GIF."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import torch

from ..viz.animate import save_animation
from ..viz.grid import make_grid, to_pil
from .jobs import Job


def png_bytes(images: torch.Tensor, nrow: int, by_column: bool = False, scale: int = 1, pad: int = 2) -> bytes:
    """uint8 images as one PNG grid (`fractalgm.viz.make_grid`; pad 0 for a single image)."""
    buffer = io.BytesIO()
    to_pil(make_grid(images, nrow, pad=pad, by_column=by_column), scale).save(buffer, format="PNG")
    return buffer.getvalue()


def gif_bytes(job: Job) -> bytes:
    """The frames a finished job kept, as a 6-second GIF laid out like its result."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "animation.gif"
        save_animation(job.frames, path, nrow=job.grid["nrow"], by_column=job.grid["by_column"], scale=4,
                       seconds=6.0)
        return path.read_bytes()
