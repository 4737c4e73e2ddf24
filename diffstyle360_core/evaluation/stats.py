"""The arithmetic of the metrics, on feature arrays, in float64 (numpy only, no model)."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np


def gaussian_stats(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (N-1) of ``features`` [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D] for a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative rounding-error eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1-μ2‖² + Tr(Σ1 + Σ2 - 2(Σ1^½ Σ2 Σ1^½)^½), the Fréchet distance of two Gaussians.

    Tr((Σ1Σ2)^½) is taken as Σ√λ of the symmetric PSD matrix Σ1^½Σ2Σ1^½ (same eigenvalues as Σ1Σ2), so
    rank-deficient covariances (N < D) give a real number instead of sqrtm's complex parts.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"feature sizes differ: means {mu1.shape} / {mu2.shape}, covariances {s1.shape} / {s2.shape}")
    root = _psd_sqrt(s1)
    middle = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fid(features_a, features_b) -> float:
    """Fréchet distance between Gaussian fits of two feature sets."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a,b) = (a·b/D + 1)³ (the KID kernel)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 features on each side")
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(features_a, features_b, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD² over random equal-size subsets
    (size min(subset_size, N_a, N_b), drawn without replacement, fixed seed)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays (or one row against N)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def loop_pairs(n: int) -> List[Tuple[int, int]]:
    """Neighbouring views around the turntable, the loop closed: (0,1), (1,2), ..., (n-1,0)."""
    return [(i, (i + 1) % n) for i in range(n)] if n >= 2 else []


def align_scale_shift(source, target, mask=None) -> np.ndarray:
    """``s·source + t`` with (s, t) the least-squares fit onto ``target`` (over ``mask`` if given)."""
    src, tgt = np.asarray(source, np.float64), np.asarray(target, np.float64)
    keep = np.ones(src.shape, bool) if mask is None else np.asarray(mask, bool)
    x, y = src[keep], tgt[keep]
    a = np.stack([x, np.ones_like(x)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, y, rcond=None)
    return s * src + t


def depth_pair_error(depth_a, depth_b) -> float:
    """MSE between view a's depth min-max normalised to [0, 1] and view b's depth scale-and-shift aligned to it.

    Relative depth models give each map its own unknown scale and shift, hence the alignment.
    """
    a = np.asarray(depth_a, np.float64)
    b = np.asarray(depth_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"depth maps differ in size: {a.shape} and {b.shape}")
    span = a.max() - a.min()
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return float(np.mean((align_scale_shift(b, a) - a) ** 2))


def mean_std(values: Sequence[Optional[float]]) -> Optional[dict]:
    """{"mean", "std" (population), "n"} of the finite values, or None when there are none."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept)), "n": len(kept)}
