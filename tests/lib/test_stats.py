"""kexue.stats against slow, obvious references."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

from kexue import stats


def test_mean_sd_uses_ddof_1():
    x = [1.0, 2.0, 4.0]
    m, s = stats.mean_sd(x)
    ref = math.sqrt(sum((v - 7 / 3) ** 2 for v in x) / 2)
    assert m == pytest.approx(7 / 3) and s == pytest.approx(ref)
    assert math.isnan(stats.mean_sd([3.0])[1])
    assert stats.fmt_mean_sd([0.5, 0.7]) == "0.600 ± 0.141"
    assert stats.fmt_mean_sd([0.5]) == "0.500"
    assert stats.fmt_mean_sd([1e23, 3e23]) == "2.00e+23 ± 1.41e+23"
    assert stats.fmt_mean_sd([999_999.0]) == "999999.000"


def test_mean_interval_is_the_t_interval():
    x = np.array([0.61, 0.64, 0.58, 0.66, 0.62])
    m, lo, hi = stats.mean_interval(x, level=0.9)
    half = st.t.ppf(0.95, 4) * x.std(ddof=1) / math.sqrt(5)
    assert (m, lo, hi) == pytest.approx((x.mean(), x.mean() - half, x.mean() + half))
    assert all(math.isnan(v) for v in stats.mean_interval([1.0])[1:])


def test_paired_interval_is_the_interval_of_differences():
    a, b = np.array([0.7, 0.72, 0.69, 0.75, 0.71]), np.array([0.6, 0.66, 0.61, 0.7, 0.6])
    assert stats.paired_interval(a, b) == pytest.approx(stats.mean_interval(a - b))
    with pytest.raises(ValueError, match="same length"):
        stats.paired_interval(a, b[:3])


def slow_paired_bootstrap(a, b, n, level, seed):
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n):
        i = rng.integers(0, len(a), len(a))
        d.append(a[i].mean() - b[i].mean())
    return np.quantile(d, [(1 - level) / 2, (1 + level) / 2])


def test_paired_bootstrap_agrees_with_a_slow_reference():
    rng = np.random.default_rng(1)
    a = (rng.random(400) < 0.7).astype(float)
    b = (rng.random(400) < 0.6).astype(float)
    est, lo, hi = stats.paired_bootstrap_interval(a, b, level=0.9, seed=0, n_resamples=4000)
    ref = slow_paired_bootstrap(a, b, 4000, 0.9, 5)
    assert est == pytest.approx(a.mean() - b.mean())
    assert lo == pytest.approx(ref[0], abs=0.01) and hi == pytest.approx(ref[1], abs=0.01)
    e1, l1, h1 = stats.bootstrap_interval(a, seed=0, n_resamples=4000)
    assert e1 == pytest.approx(a.mean()) and l1 < e1 < h1


def test_accuracy_and_spearman():
    assert stats.accuracy([1, 2, 3, 4], np.array([1, 0, 3, 0])) == 0.5
    assert stats.accuracy(torch.tensor([1, 1]), torch.tensor([1, 0])) == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        stats.accuracy([1, 2], [1])
    x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    assert stats.spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic)
