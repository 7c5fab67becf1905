"""The project's Fashion-MNIST classifier: extractor (a) and the per-class accuracy judge.

A small VGG-style CNN (two conv blocks with batch norm, a 128-d penultimate layer), trained by
`benchmarks/train_classifier.py` with a fixed seed; its weights ship with the package
(`weights/fmnist_classifier.safetensors`, 1.9 MB) next to a JSON card with its test accuracy and the
command that made it. Its penultimate activations are the features of the "Fréchet LeNet distance"
(FLD/"FID with a LeNet") convention for MNIST-like data: numbers computed with it compare only with
numbers computed with it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS = Path(__file__).parent / "weights" / "fmnist_classifier.safetensors"
CARD = WEIGHTS.with_suffix(".json")
FEATURE_DIM = 128


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class FashionClassifier(nn.Module):
    """conv32×2 → pool → conv64×2 → pool → fc128 → fc10, on uint8 (B, 1, 28, 28) images."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.features_net = nn.Sequential(_block(1, 32), _block(32, 64))
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc_bn = nn.BatchNorm1d(FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.dropout = dropout

    def check(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the Fashion-MNIST classifier takes uint8 (B, 1, 28, 28) images, got "
                             f"{images.dtype} {tuple(images.shape)}")

    def penultimate(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 128) features after the last hidden layer (ReLU), the FLD features."""
        self.check(images)
        x = images.to(self.fc.weight.device, torch.float32) / 127.5 - 1.0
        x = self.features_net(x).flatten(1)
        return F.relu(self.fc_bn(self.fc(F.dropout(x, self.dropout, self.training))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 10) logits."""
        return self.head(F.dropout(self.penultimate(images), self.dropout, self.training))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """(B,) predicted classes (eval mode, batched)."""
        self.eval()
        return torch.cat([self(x).argmax(1).cpu() for x in images.split(batch_size)])


@lru_cache(maxsize=4)
def _load(device: str) -> FashionClassifier:
    from safetensors.torch import load_file

    if not WEIGHTS.exists():
        raise FileNotFoundError(f"the classifier weights are missing ({WEIGHTS}); re-install the package or run "
                                f"`python benchmarks/train_classifier.py`")
    net = FashionClassifier()
    net.load_state_dict(load_file(WEIGHTS))
    return net.to(device).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu") -> FashionClassifier:
    """The shipped classifier (eval mode, frozen), cached per device."""
    return _load(str(torch.device(device)))


def classifier_card() -> dict:
    """What the shipped weights were measured at: test accuracy, images, command, seed."""
    return json.loads(CARD.read_text())
