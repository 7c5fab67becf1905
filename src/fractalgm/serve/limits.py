"""Limits fixed when the server starts: what one request may ask for and how much the server holds."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces; a request beyond one gets a 4xx that names it.

    Args:
        max_upload_bytes: largest request body (image and mask uploads together).
        max_image_side / max_image_pixels: largest decoded upload, checked from the header before
            any pixel is decoded (decompression bombs).
        max_images: images per request (number of images × number of seeds).
        max_seeds: seeds (grid columns) per request.
        max_steps: MAR steps per level (each level is also bounded by its number of tokens).
        max_seconds: running time of one job; it stops with an error beyond it.
        queue_size: jobs that may wait for a worker; one more is answered 503 "busy, retry".
        workers: jobs that run at the same time.
        keep_jobs / keep_seconds: finished jobs kept for their downloads (the oldest go first).
        nll_passes: random-masking passes of the bits/dim estimate for MAR models.
        frames_per_second: most frames one stream sends (the latest frame wins; none is skipped in
            the GIF, which keeps up to `max_frame_bytes` of frames per job).
    """

    max_upload_bytes: int = 4 * 1024 * 1024
    max_image_side: int = 4096
    max_image_pixels: int = 16 * 1024 * 1024
    max_images: int = 64
    max_seeds: int = 16
    max_steps: int = 256
    max_seconds: float = 300.0
    queue_size: int = 8
    workers: int = 1
    keep_jobs: int = 16
    keep_seconds: float = 900.0
    nll_passes: int = 2
    frames_per_second: float = 30.0
    max_frame_bytes: int = 8 * 1024 * 1024

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"limit {name} must be positive, got {value}")
