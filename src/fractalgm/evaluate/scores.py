"""Inception Score (and its classifier analogue), precision/recall, density/coverage, class accuracy.

* Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), mean ± std over `splits`
  equal splits, as the standard implementations. With the Fashion-MNIST classifier's logits it is
  the "classifier score" (at most 10); with Inception-v3 logits it is the IS.
* Precision/recall with k-NN manifolds (Kynkäänniemi et al. 2019) and density/coverage (Naeem et
  al. 2020) with k = 3, computed by the `prdc` package (NAVER's reference code).
* Per-class accuracy: how often class-conditional samples are classified as their label.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

PRDC_K = 3


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` of exp(mean KL(p(y|x) ‖ p(y))), from (N, K) logits."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"need logits (N >= splits={splits}, K), got shape {logits.shape}")
    logp = log_softmax(logits)
    scores = []
    for part in np.array_split(logp, splits):
        p = np.exp(part)
        log_marginal = np.log(p.mean(0) + 1e-30)
        scores.append(np.exp((p * (part - log_marginal)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def prdc(real_features: np.ndarray, fake_features: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` with k-NN balls (k = 3)."""
    from prdc import compute_prdc

    real, fake = np.asarray(real_features, np.float32), np.asarray(fake_features, np.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need real and fake features (N, D) of the same D, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake images")
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(real, fake, nearest_k=k)
    return {name: float(v) for name, v in out.items()}


def class_accuracy(predicted, labels, num_classes: int) -> dict:
    """Overall and per-class fraction of samples classified as their label (± binomial standard error)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.shape != labels.shape or predicted.ndim != 1:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} must be equal 1-D arrays")
    hits = (predicted == labels).astype(np.float64)
    per_class = {}
    for c in range(num_classes):
        sel = labels == c
        if sel.any():
            per_class[c] = float(hits[sel].mean())
    acc = float(hits.mean())
    return {"accuracy": acc, "accuracy_stderr": float(np.sqrt(acc * (1 - acc) / len(hits))), "per_class": per_class,
            "samples": int(len(hits))}
