"""The two-sample Kolmogorov-Smirnov test in NumPy (asymptotic p-value), for tests that compare distributions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class KSResult(NamedTuple):
    statistic: float
    pvalue: float


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 * sum_k (-1)^(k-1) exp(-2 k^2 x^2)."""
    if x < 0.2:  # the series converges slowly here and the value is 1 to double precision
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * x * x)), 0.0, 1.0))


def ks_2samp(a, b) -> KSResult:
    """Two-sided two-sample KS test: D = sup |F_a - F_b| (ties handled: both CDFs are evaluated at every
    value), p from the Kolmogorov distribution with Stephens' small-sample correction."""
    a, b = np.sort(np.asarray(a, dtype=np.float64).ravel()), np.sort(np.asarray(b, dtype=np.float64).ravel())
    if len(a) == 0 or len(b) == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    values = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, values, side="right") / len(a)
                            - np.searchsorted(b, values, side="right") / len(b))))
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    return KSResult(d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d))
