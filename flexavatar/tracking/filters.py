"""Temporal smoothing: a One Euro filter (Casiez et al., CHI 2012), vectorised over channels.

The One Euro filter is a first-order low-pass whose cutoff rises with the signal's speed:
slow drifts (jitter around a still pose) are smoothed hard, fast motions (a blink, a jaw
drop) pass with little lag. ``cutoff = min_cutoff + beta * |smoothed derivative|``.

For offline tracks, :func:`smooth_sequence` runs it forward and backward and averages the
two passes: the forward pass lags, the backward pass leads, the mean is (nearly) lag-free.
At the clip's ends one pass has not run in, so the sequence is first extended by its point
reflection about each end (as ``scipy.signal.filtfilt``'s odd padding): without it a head
already turning in frame 0 had its smoothed frame 0 pulled ~1° towards where it was going, and
everything relative to frame 0 carried that offset.
"""

from __future__ import annotations

import math

import numpy as np

#: ``smoothing`` 0..1 maps to a minimum cutoff between these frequencies (Hz), geometrically.
LIGHTEST_CUTOFF_HZ = 6.0
STRONGEST_CUTOFF_HZ = 0.3


def _alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One Euro filter over C channels at a fixed rate.

    min_cutoff_hz: cutoff for a still signal; beta: cutoff increase per unit/s of speed (in the
    signal's own units; a scalar or one per channel [C]); d_cutoff_hz: cutoff of the derivative estimate.
    ``__call__(x [C]) -> [C]`` filters the next sample.
    """

    def __init__(
        self,
        rate_hz: float,
        min_cutoff_hz: float = 1.0,
        beta: float | np.ndarray = 0.5,
        d_cutoff_hz: float = 1.0,
    ):
        self.dt = 1.0 / float(rate_hz)
        self.min_cutoff_hz = float(min_cutoff_hz)
        self.beta = np.asarray(beta, dtype=np.float64)  # scalar or [C]
        self.d_alpha = _alpha(d_cutoff_hz, self.dt)
        self.value: np.ndarray | None = None
        self.derivative: np.ndarray | None = None

    def reset(self) -> None:
        self.value = self.derivative = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.value is None:
            self.value, self.derivative = x.copy(), np.zeros_like(x)
            return self.value.copy()
        raw_derivative = (x - self.value) / self.dt
        self.derivative = self.derivative + self.d_alpha * (raw_derivative - self.derivative)
        cutoff = self.min_cutoff_hz + self.beta * np.abs(self.derivative)
        self.value = self.value + _alpha(cutoff, self.dt) * (x - self.value)
        return self.value.copy()

    def filter(self, sequence: np.ndarray) -> np.ndarray:
        """Filter a whole sequence [T,C] (state reset first); returns [T,C] float64."""
        self.reset()
        sequence = np.asarray(sequence, dtype=np.float64)
        out = np.empty_like(sequence)
        for i in range(len(sequence)):  # time is sequential; channels are vectorised
            out[i] = self(sequence[i])
        return out


def min_cutoff_for(smoothing: float) -> float | None:
    """Minimum cutoff (Hz) for a ``smoothing`` strength in [0,1]; None = no filtering (0)."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if smoothing == 0.0:
        return None
    return LIGHTEST_CUTOFF_HZ * (STRONGEST_CUTOFF_HZ / LIGHTEST_CUTOFF_HZ) ** smoothing


def smooth_sequence(
    sequence: np.ndarray,
    rate_hz: float,
    smoothing: float,
    beta: float | np.ndarray = 0.5,
    zero_phase: bool = True,
) -> np.ndarray:
    """One Euro smoothing of [T,C] at strength ``smoothing`` in [0,1] (0 returns a copy).

    ``beta`` (scalar or [C]) is per unit/s of the signal: scale channels to comparable units first.
    ``zero_phase`` averages a forward and a backward pass (offline use, no lag).
    """
    sequence = np.asarray(sequence, dtype=np.float64)
    min_cutoff = min_cutoff_for(smoothing)
    if min_cutoff is None or len(sequence) < 2:
        return sequence.copy()
    one_euro = OneEuroFilter(rate_hz, min_cutoff_hz=min_cutoff, beta=beta)
    if not zero_phase:
        return one_euro.filter(sequence)
    pad = min(len(sequence) - 1, math.ceil(rate_hz / min_cutoff))  # ~ one time constant x 2 pi
    padded = np.concatenate([
        2 * sequence[:1] - sequence[pad:0:-1], sequence, 2 * sequence[-1:] - sequence[-2 : -pad - 2 : -1],
    ])  # fmt: skip
    forward = one_euro.filter(padded)
    backward = one_euro.filter(padded[::-1])[::-1]
    return (0.5 * (forward + backward))[pad : pad + len(sequence)]
