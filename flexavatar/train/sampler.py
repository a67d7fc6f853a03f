"""Data distribution adjustment: draw samples inversely to the density of their expression code.

Talking-head video is mostly near-neutral; open mouths, blinks and frowns are rare. Each code
[57] is projected to a few interpretable axes (jaw open, blink, smile, frown/brow down, brow
raise, pucker/funnel), standardised, and its density estimated with a Gaussian kernel density
estimate (Scott's bandwidth). Sampling weight ∝ 1/density, clipped to ``clip`` × the median
weight (so one outlier does not take over), normalised to sum to 1.
``python -m flexavatar train --show-sampler`` prints the before/after histograms.
"""

from __future__ import annotations

import numpy as np

from flexavatar.head.blendshapes import EXPRESSION_INDEX

#: The axes of the projection: name -> blendshapes averaged (max for "pucker").
AXES: dict[str, tuple[str, ...]] = {
    "jaw_open": ("jawOpen",),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "frown": ("browDown_L", "browDown_R", "mouthFrown_L", "mouthFrown_R"),
    "brow_raise": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
    "pucker": ("mouthPucker", "mouthFunnel"),
}
HISTOGRAM_SHAPES = ("jawOpen", "eyeBlink_L", "mouthSmile_L", "browDown_L")
MIN_STD = 0.05  # axes that barely vary are not stretched into noise


def project(codes: np.ndarray) -> np.ndarray:
    """[N,57] expression codes -> [N,len(AXES)] low-dimensional features."""
    codes = np.asarray(codes, dtype=np.float64)
    columns = []
    for name, shapes in AXES.items():
        values = codes[:, [EXPRESSION_INDEX[s] for s in shapes]]
        columns.append(values.max(1) if name == "pucker" else values.mean(1))
    return np.stack(columns, 1)


def kde_density(features: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """Gaussian KDE of every point among all points (leave-in), [N]; features standardised first."""
    n, d = features.shape
    std = np.maximum(features.std(0), MIN_STD)
    x = (features - features.mean(0)) / std
    h = bandwidth if bandwidth is not None else n ** (-1.0 / (d + 4))  # Scott
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * sq / (h * h)).mean(1)


def density_weights(codes: np.ndarray, clip: float = 10.0, bandwidth: float | None = None) -> np.ndarray:
    """[N] sampling probabilities ∝ 1/density of each code, clipped at ``clip`` × median, sum 1."""
    codes = np.asarray(codes)
    if len(codes) == 0:
        return np.zeros(0)
    weights = 1.0 / np.maximum(kde_density(project(codes), bandwidth), 1e-12)
    median = np.median(weights)
    weights = np.clip(weights, median / clip, median * clip)
    return weights / weights.sum()


class DensitySampler:
    """Draw indices of ``codes`` [N,57] with :func:`density_weights` (``adjust=False``: uniform)."""

    def __init__(self, codes: np.ndarray, adjust: bool = True, clip: float = 10.0):
        self.codes = np.asarray(codes, dtype=np.float32)
        n = len(self.codes)
        self.raw = np.full(n, 1.0 / n) if n else np.zeros(0)
        self.weights = density_weights(self.codes, clip) if adjust else self.raw

    def __len__(self) -> int:
        return len(self.codes)

    def draw(self, rng: np.random.Generator, size: int | None = None):
        return rng.choice(len(self.codes), size=size, p=self.weights)

    def mass(self, predicate: np.ndarray, adjusted: bool = True) -> float:
        """Probability that a drawn sample satisfies ``predicate`` [N] bool."""
        return float((self.weights if adjusted else self.raw)[np.asarray(predicate, bool)].sum())


def histogram_table(codes: np.ndarray, weights: np.ndarray, shapes=HISTOGRAM_SHAPES, bins: int = 5) -> str:
    """Before/after histograms (fraction of draws per value bin) of a few blendshapes, as text."""
    codes = np.asarray(codes)
    raw = np.full(len(codes), 1.0 / len(codes))
    edges = np.linspace(0, 1, bins + 1)
    lines = []
    for name in shapes:
        values = codes[:, EXPRESSION_INDEX[name]]
        lines.append(f"{name}  (raw → adjusted share of draws)")
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (values >= lo) & ((values < hi) | (hi == 1.0))
            before, after = raw[inside].sum(), weights[inside].sum()
            lines.append(f"  [{lo:.1f},{hi:.1f}{']' if hi == 1.0 else ')'} {before:6.1%} {'#' * round(40 * before):<40} "
                         f"→ {after:6.1%} {'#' * round(40 * after)}")  # fmt: skip
    return "\n".join(lines)


def rare_mask(codes: np.ndarray, name: str, quantile: float = 0.9) -> np.ndarray:
    """[N] bool: codes whose ``name`` weight is in the top (1 − quantile) of this set (and > 0)."""
    values = np.asarray(codes)[:, EXPRESSION_INDEX[name]]
    return (values >= np.quantile(values, quantile)) & (values > 0)
