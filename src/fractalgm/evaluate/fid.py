"""Fréchet distance between Gaussian feature statistics, and the `.npz` statistics format.

The statistics file is the ADM evaluator's / the reference's format (`adm_in64_stats.npz`,
`adm_in256_stats.npz`): an `.npz` with `mu` (D,) and `sigma` (D, D). We add `extractor` (its
name) and `num_images`; files without `extractor` (the reference's) are Inception-v3 statistics.
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

ADM_EXTRACTOR = "inception-v3"  # what the ADM / reference statistics files hold


@dataclass
class FeatureStats:
    """Mean and covariance of the features of a set of images under one extractor."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    extractor: str
    num_images: int | None = None

    @classmethod
    def from_features(cls, features: np.ndarray, extractor: str) -> "FeatureStats":
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"need features (N >= 2, D), got shape {features.shape}")
        return cls(features.mean(0), np.cov(features, rowvar=False), extractor, len(features))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"statistics files are .npz, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, mu=self.mu, sigma=self.sigma, extractor=np.array(self.extractor),
                 num_images=np.array(-1 if self.num_images is None else self.num_images))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, extractor: str | None = None) -> "FeatureStats":
        """Read `mu`/`sigma` from an `.npz` (ours or the ADM/reference format)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                if "mu" not in f or "sigma" not in f:
                    raise ValueError(f"{path} has no `mu`/`sigma` arrays (keys: {sorted(f.keys())}); is it a "
                                     f"samples file? pass it as samples, or compute statistics first")
                mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
                stored = str(f["extractor"]) if "extractor" in f else ADM_EXTRACTOR
                n = int(f["num_images"]) if "num_images" in f else -1
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"cannot read statistics from {path}: {e}") from e
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match (want (D,), (D, D))")
        if extractor is not None and stored != extractor:
            raise ValueError(f"{path} holds {stored} statistics, not {extractor}: FIDs of different extractors "
                             f"are not comparable")
        return cls(mu, sigma, stored, None if n < 0 else n)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():  # singular products: handled by the caller
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        out = linalg.sqrtm(matrix)
    return out[0] if isinstance(out, tuple) else out  # older SciPy returns (sqrtm, error) with disp=False


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½), the FID formula (Heusel et al. 2017).

    As pytorch-fid / ADM: when the product is singular, `eps`·I is added to both covariances;
    the negligible imaginary part that sqrtm can return is dropped (a large one is an error).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} "
                         f"vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance product has a large imaginary square root "
                             f"({np.max(np.abs(covmean.imag)):.3g}); are the statistics finite and PSD?")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two statistics of the same extractor."""
    if a.extractor != b.extractor:
        raise ValueError(f"cannot compare {a.extractor} statistics with {b.extractor} statistics")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
