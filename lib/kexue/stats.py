"""Statistics for claims: mean ± sd (ddof 1, everywhere), intervals over seeds or examples.

A claim "A beats B" holds only when its 90 % interval lies on the claimed side (README.md, "How a
chapter is scored"; ``Results.check(..., interval=(lo, hi))`` in :mod:`kexue.results`). Two kinds of interval:

- over **seeds** (a handful of training runs): Student-t intervals, :func:`mean_interval` and
  :func:`paired_interval` (seed ``s`` of method A against seed ``s`` of method B);
- over **examples** (one deterministic run scored on many test items): percentile bootstrap through
  ``scipy.stats.bootstrap``, :func:`bootstrap_interval` and :func:`paired_bootstrap_interval`.

Used by every chapter that compares noisy outcomes (e.g. ``chapters/06-pretraining-and-prompts``).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

LEVEL = 0.9
"""The default confidence level of the book's intervals (README.md, "How a chapter is scored")."""


def _values(x, name="x") -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty: an interval needs at least one value")
    return a


def mean_sd(x) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``); the sd is ``nan`` for a single value."""
    a = _values(x)
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else math.nan)


def fmt_mean_sd(x, digits: int = 3) -> str:
    """``"0.738 ± 0.015"`` (sd with ddof 1); a single value prints alone. Means of a million or
    more print in scientific notation with ``digits`` significant figures (``"1.74e+23 ± 4.89e+23"``),
    so that a table cell stays readable."""
    m, s = mean_sd(x)
    spec = f".{max(digits - 1, 0)}e" if abs(m) >= 1e6 else f".{digits}f"
    return f"{m:{spec}}" if math.isnan(s) else f"{m:{spec}} ± {s:{spec}}"


def fmt_interval(t, digits: int = 3, signed: bool = True) -> str:
    """``"+0.012 [-0.003, +0.027]"`` for a (value, lo, hi) triple such as :func:`paired_interval`'s."""
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"{t[0]:{spec}} [{t[1]:{spec}}, {t[2]:{spec}}]"


def mean_interval(x, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the two-sided Student-t interval of the mean over seeds.

    With one value the interval is undefined, and (mean, nan, nan) is returned, which no claim test
    passes (an interval claim needs at least two seeds)."""
    a = _values(x)
    m = float(a.mean())
    if a.size < 2:
        return m, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return m, m - half, m + half


def paired_interval(a, b, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of a − b, lo, hi): the t interval of the paired difference (seed i of a with seed i of b)."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length; got {a.size} and {b.size}")
    return mean_interval(a - b, level)


def bootstrap_interval(x, stat=np.mean, level: float = LEVEL, seed: int = 0,
                       n_resamples: int = 10_000) -> tuple[float, float, float]:
    """(stat(x), lo, hi): percentile bootstrap over the items of ``x`` (``scipy.stats.bootstrap``)."""
    a = _values(x)
    if a.size < 2:
        return float(stat(a)), math.nan, math.nan
    r = _st.bootstrap((a,), stat, confidence_level=level, n_resamples=n_resamples,
                      method="percentile", rng=np.random.default_rng(seed), vectorized=False)
    return float(stat(a)), float(r.confidence_interval.low), float(r.confidence_interval.high)


def paired_bootstrap_interval(a, b, stat=np.mean, level: float = LEVEL, seed: int = 0,
                              n_resamples: int = 10_000) -> tuple[float, float, float]:
    """(stat(a) − stat(b), lo, hi): paired percentile bootstrap over examples (item i of a with item
    i of b resampled together), e.g. per-example correctness of two methods on the same test set."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length; got {a.size} and {b.size}")

    def diff(x, y):
        return stat(x) - stat(y)

    est = float(diff(a, b))
    if a.size < 2:
        return est, math.nan, math.nan
    r = _st.bootstrap((a, b), diff, paired=True, confidence_level=level, n_resamples=n_resamples,
                      method="percentile", rng=np.random.default_rng(seed), vectorized=False)
    return est, float(r.confidence_interval.low), float(r.confidence_interval.high)


def accuracy(pred, y) -> float:
    """Fraction of ``pred == y`` (arrays, lists or tensors of labels); an error on a length mismatch."""
    p, t = np.asarray(_to_numpy(pred)).ravel(), np.asarray(_to_numpy(y)).ravel()
    if p.shape != t.shape:
        raise ValueError(f"predictions and labels differ in length: {p.size} vs {t.size}")
    if p.size == 0:
        raise ValueError("accuracy of an empty set")
    return float(np.mean(p == t))


def spearman(a, b) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``; ties get average ranks)."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths; got {a.size} and {b.size}")
    return float(_st.spearmanr(a, b).statistic)


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x
