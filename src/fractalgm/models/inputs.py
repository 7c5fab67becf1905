"""What `FractalGen` accepts from its callers: uint8 images and int labels, checked with clear errors."""
from __future__ import annotations

import torch

from ..config import FractalConfig


def check_images(config: FractalConfig, images: torch.Tensor):
    """uint8 (B, C, H, W) images of the model's channels and size, or a TypeError / ValueError."""
    want = (config.channels, config.image_size, config.image_size)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor (B, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images have shape {tuple(images.shape)} but this model expects "
                         f"(B, {want[0]}, {want[1]}, {want[2]})")


def check_labels(config: FractalConfig, labels, device, batch: int | None = None) -> torch.Tensor | None:
    """int64 (B,) labels on `device` in [0, num_classes), None for unconditional, or a clear error."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=device)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or labels.dim() != 1:
        raise TypeError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if config.num_classes == 0:
        raise ValueError("this model is unconditional (num_classes = 0); pass labels=None")
    if batch is not None and labels.numel() != batch:
        raise ValueError(f"got {labels.numel()} labels for {batch} images")
    if labels.numel() and (labels.min() < 0 or labels.max() >= config.num_classes):
        raise ValueError(f"labels must be in [0, {config.num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def sample_count(labels: torch.Tensor | None, num_images: int | None) -> int:
    """How many images `sample` draws: one per label, or `num_images` without labels."""
    if labels is None:
        if num_images is None or num_images < 1:
            raise ValueError("pass labels, or num_images for unconditional samples")
        return num_images
    if num_images not in (None, labels.numel()):
        raise ValueError(f"num_images={num_images} disagrees with {labels.numel()} labels")
    return labels.numel()
