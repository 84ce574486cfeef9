"""The NumPy two-sample KS test of tests/ks.py: the Kolmogorov distribution's known values, and its verdicts."""

import numpy as np
import pytest
from ks import kolmogorov_sf, ks_2samp


def test_kolmogorov_distribution_values():
    assert kolmogorov_sf(1.0) == pytest.approx(0.2699996716, abs=1e-8)
    assert kolmogorov_sf(1.36) == pytest.approx(0.0494, abs=2e-4)  # the 5 % critical value
    assert kolmogorov_sf(0.1) == 1.0 and kolmogorov_sf(5.0) < 1e-20


def test_two_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=1500)
    assert ks_2samp(a, b).pvalue > 0.01
    assert ks_2samp(a, b + 0.3).pvalue < 1e-6
    # ties (discrete values) are compared at every value: equal samples give D = 0
    d = rng.integers(0, 5, 500)
    assert ks_2samp(d, d.copy()).statistic == 0.0 and ks_2samp(d, d).pvalue == 1.0
    assert ks_2samp([1, 2, 3], [4, 5, 6]).statistic == 1.0
    with pytest.raises(ValueError):
        ks_2samp([], [1.0])
