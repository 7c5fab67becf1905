"""Sample quality of a set of images against a reference: FID, IS, precision/recall, density/coverage
and (for class-conditional Fashion-MNIST samples) per-class accuracy under the shipped classifier.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .extractors import Extractor
from .fid import FeatureStats, fid
from .scores import class_accuracy, inception_score, prdc


@dataclass
class Reference:
    """The real side of the comparison: statistics (FID) and, when available, features (PRDC)."""

    stats: FeatureStats
    features: np.ndarray | None
    source: str

    @classmethod
    def from_images(cls, images: torch.Tensor, extractor: Extractor, source: str, progress: bool = False):
        feats, _ = extractor(images, progress=progress)
        return cls(FeatureStats.from_features(feats, extractor.name), feats, source)

    @classmethod
    def from_stats(cls, path: str | Path, extractor: Extractor, features: np.ndarray | None = None):
        return cls(FeatureStats.load(path, extractor.name), features, str(path))


def judges_fashion(images: torch.Tensor, num_classes: int | None) -> bool:
    """The shipped classifier can judge these samples: 10-class, grayscale 28×28."""
    return num_classes == 10 and tuple(images.shape[1:]) == (1, 28, 28)


def sample_quality(images: torch.Tensor, labels: torch.Tensor | None, extractor: Extractor, reference: Reference,
                   *, num_classes: int | None = None, is_splits: int = 10, progress: bool = False) -> dict:
    """Every metric of the issue for uint8 samples (N, C, H, W); each result names its extractor."""
    feats, logits = extractor(images, progress=progress)
    stats = FeatureStats.from_features(feats, extractor.name)
    splits = max(1, min(is_splits, len(images) // 2))
    is_mean, is_std = inception_score(logits, splits)
    out = {"extractor": extractor.name, "samples": len(images), "reference": reference.source,
           "reference_images": reference.stats.num_images, "fid": fid(stats, reference.stats),
           "is": is_mean, "is_std": is_std, "is_splits": splits,
           "is_kind": "Inception Score" if extractor.name == "inception-v3" else f"classifier score ({extractor.name} logits)"}
    if reference.features is not None:
        real = reference.features
        if len(real) > len(feats):  # equal set sizes, as the k-NN manifold papers: recall/coverage depend on them
            keep = np.random.default_rng(0).choice(len(real), size=len(feats), replace=False)
            real = real[np.sort(keep)]
        out.update(prdc(real, feats))
        out.update(prdc_k=3, prdc_real_images=len(real))
    if labels is not None and judges_fashion(images, num_classes):
        from .classifier import load_classifier

        if extractor.name == "fmnist-classifier":
            predicted = logits.argmax(1)
        else:
            predicted = load_classifier(images.device).predict(images).numpy()
        acc = class_accuracy(predicted, labels.cpu().numpy(), num_classes)
        out["class_accuracy"] = acc["accuracy"]
        out["class_accuracy_stderr"] = acc["accuracy_stderr"]
        out["class_accuracy_per_class"] = acc["per_class"]
        out["class_accuracy_judge"] = "fmnist-classifier"
    return out
