"""Smooth approximations of the Top-k operator.

Su Jianlin, Softmax后传：寻找Top-K的光滑近似 (https://kexue.fm/archives/10373, 2024-09-19).
Chapter ``topk-smooth``.

``T_k(x) ∈ {0,1}^n`` marks the k largest entries of ``x``. A smooth ``ST_k`` maps ``R^n`` into
``{p ∈ [0,1]^n : Σp = k}`` and should be monotone (``ST_i ≥ ST_j ⇔ x_i ≥ x_j``), shift invariant
(``ST(x + c) = ST(x)``) and tend to ``T_k`` as ``ST_k(x/τ)``, τ → 0+. For k = 1, softmax is one.
The article's constructions, all on the last dimension of a torch tensor (any batch shape, the
input's dtype):

* :func:`iterative_soft_kmax` — Su's 2019 soft-k-max: ``x ← x − min x``, ``p ← p + softmax((1 − p) ⊗ x)``
  k times. Neither ``p ∈ [0,1]`` nor monotonicity is proved.
* :func:`weighted_softmax_topk` — the Stack Exchange variant ``p ← p + softmax(x; w = 1 − p)`` with
  ``softmax(x; w)_i = w_i e^{x_i} / Σ_j w_j e^{x_j}``; the article says its τ → 0 limit for k = 2 is
  1.5 on the maximum and 0.5 on the runner-up. In float64 ``1 − p`` underflows to 0 at small τ and
  fakes the right limit, so :func:`weighted_softmax_topk_exact` runs the same iteration in decimal
  arithmetic with hundreds of digits.
* GradTopK: ``ST_k = ∇_x log Z_k``, ``Z_k = Σ_{i_1<…<i_k} e^{x_{i_1}+…+x_{i_k}}``, i.e.
  ``[ST_k]_i = Z_{k,i}/Z_k`` (subsets containing i). :func:`grad_topk` is the article's log-domain
  recursion ``log Z_{k,i} = x_i + log(Z_{k−1} − Z_{k−1,i})``, ``log Z_k = logsumexp_i log Z_{k,i} − log k``,
  which breaks down (log 0 or log of a negative number) when ``Z_{k−1,i}`` and ``Z_{k−1}`` agree to
  the working precision. :func:`grad_topk_dp` computes the same function by another recursion, the
  elementary symmetric polynomials over the elements (sums of positive terms only, in the log
  domain), and is stable; :func:`grad_topk_bruteforce` enumerates the subsets (tests).
* ThreTopK: ``ST_k(x) = f(x − λ(x))`` with ``Σ_i f(x_i − λ) = k`` for an increasing f onto (0, 1).
  :func:`thre_topk_exp` (``f = min(1, e^t)``, closed form), :func:`thre_topk_smooth` (the article's
  C¹ ``f = 1 − e^{−t}/2`` for t ≥ 0, ``e^t/2`` below; closed form), :func:`thre_topk_sigmoid`
  (``f = σ``, bisection, the implicit gradient ``∂λ/∂x_j = σ'_j / Σ_i σ'_i`` in a
  ``torch.autograd.Function``; the article's stop-gradient form and a detached λ as options).

Also :func:`check_properties` (sum, bounds, order, shift, finiteness per row), :func:`l1_to_hard`,
:func:`failure_mask`, and the chapter's learning task (:func:`make_teacher`, :func:`train_selector`):
a differentiable top-k mask trained to select the k items of highest hidden utility, evaluated with
the hard top-k of the learned scores.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from decimal import Decimal, localcontext

import numpy as np
import torch
import torch.nn as nn

__all__ = ["hard_topk", "iterative_soft_kmax", "weighted_softmax_topk", "weighted_softmax_topk_exact",
           "grad_topk", "grad_topk_dp", "grad_topk_bruteforce", "thre_topk_exp", "thre_topk_smooth",
           "thre_topk_sigmoid", "smooth_f", "METHODS", "check_properties", "l1_to_hard", "failure_mask",
           "stability_scan", "make_teacher", "sample_instances", "recall_at_k", "train_selector",
           "TRAIN_METHODS", "run_selection", "PROPERTY_KEYS", "self_checks", "property_scan", "property_summary",
           "property_table", "violation_by_cell", "cell_table", "l1_curves", "weighted_softmax_rows", "stability_fail",
           "stability_pooled", "plot_stability", "smooth_k1_gap", "best_step", "diverged_share", "selection_table",
           "mean_dev_curve", "self_check_rows", "plot_l1_curves", "STABILITY_METHODS", "STABILITY_REFS",
           "stability_scans", "scan_mean", "max_no_valid", "smooth_k1_table", "plot_dev_curves"]

NEG_INF = -math.inf
LOG_ZERO = -1e30
"""The DP's stand-in for log 0: finite, so that autograd through ``logaddexp`` sees no −inf − −inf."""


def hard_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """``T_k(x)``: 1 at the k largest entries of the last dimension, 0 elsewhere (ties: torch.topk's
    choice). https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    idx = x.topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, 1.0)


def iterative_soft_kmax(x: torch.Tensor, k: int) -> torch.Tensor:
    """Su's 2019 iterative soft-k-max: ``x ← x − min x``, ``p⁰ = 0``, ``p^i = p^{i−1} +
    softmax((1 − p^{i−1}) ⊗ x)`` for i = 1..k. https://kexue.fm/archives/10373 (first in
    https://kexue.fm/archives/6620), chapter ``topk-smooth``."""
    x = x - x.min(-1, keepdim=True).values
    p = torch.zeros_like(x)
    for _ in range(k):
        p = p + torch.softmax((1 - p) * x, dim=-1)
    return p


def weighted_softmax_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """The Stack Exchange iteration ``p^i = p^{i−1} + softmax(x; 1 − p^{i−1})`` with the weighted
    softmax ``w_i e^{x_i} / Σ_j w_j e^{x_j}`` (weights may turn negative for k ≥ 3; used as they are).
    In floating point ``1 − p`` underflows at small temperatures: see
    :func:`weighted_softmax_topk_exact`. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    p = torch.zeros_like(x)
    for _ in range(k):
        we = (1 - p) * e
        p = p + we / we.sum(-1, keepdim=True)
    return p


def weighted_softmax_topk_exact(x, k: int, digits: int = 300) -> np.ndarray:
    """:func:`weighted_softmax_topk` of one vector in decimal arithmetic with ``digits`` significant
    digits, so that ``1 − p`` does not underflow (float64 keeps 16 digits; at temperature τ the
    weight of the maximum is about ``e^{−gap/τ}``, i.e. ``gap/(τ ln 10)`` decimal digits below 1).
    Returns float64. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    xs = [float(v) for v in np.asarray(x, dtype=float).ravel()]
    with localcontext() as ctx:
        ctx.prec = digits
        d = [Decimal(v) for v in xs]
        mx = max(d)
        e = [(v - mx).exp() for v in d]
        p = [Decimal(0)] * len(d)
        for _ in range(k):
            we = [(1 - pi) * ei for pi, ei in zip(p, e)]
            z = sum(we)
            p = [pi + w / z for pi, w in zip(p, we)]
        return np.array([float(v) for v in p])


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 − e^d)`` for ``d ≤ 0``, accurately (Mächler's split); NaN for d > 0, −inf at d = 0."""
    return torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def grad_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """GradTopK by the article's log-domain recursion: ``log Z_{1,i} = x_i``,
    ``log Z_{j,i} = x_i + log Z_{j−1} + log(1 − e^{log Z_{j−1,i} − log Z_{j−1}})``,
    ``log Z_j = logsumexp_i log Z_{j,i} − log j``; returns ``e^{log Z_{k,i} − log Z_k}``. The
    ``log(1 − e^d)`` is computed as accurately as floating point allows (:func:`_log1mexp`); the
    recursion still fails (−inf, NaN, or a wrong sum) once ``Z_{j−1,i}`` and ``Z_{j−1}`` coincide to
    the working precision, as the article warns. Not "fixed" here: :func:`grad_topk_dp` is the stable
    route. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    log_zs = x
    log_z = torch.logsumexp(x, -1, keepdim=True)
    for j in range(2, k + 1):
        log_zs = x + log_z + _log1mexp(log_zs - log_z)
        log_z = torch.logsumexp(log_zs, -1, keepdim=True) - math.log(j)
    return torch.exp(log_zs - log_z)


def _esp_prefix(x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """``L[j][..., m] = log e_m(x_1..x_j)`` for j = 0..n, m = 0..k (elementary symmetric polynomials
    of ``e^x``), by ``e_m(..x_j) = e_m(..x_{j−1}) + e^{x_j} e_{m−1}(..x_{j−1})`` in the log domain."""
    shape = x.shape[:-1] + (k + 1,)
    cur = torch.full(shape, LOG_ZERO, dtype=x.dtype, device=x.device)
    cur = torch.cat([torch.zeros_like(cur[..., :1]), cur[..., 1:]], -1)
    out = [cur]
    for j in range(x.shape[-1]):
        shifted = torch.cat([torch.full_like(cur[..., :1], LOG_ZERO), cur[..., :-1] + x[..., j:j + 1]], -1)
        cur = torch.logaddexp(cur, shifted)
        out.append(cur)
    return out


def grad_topk_dp(x: torch.Tensor, k: int) -> torch.Tensor:
    """GradTopK ``[ST_k]_i = e^{x_i} e_{k−1}(x_{−i}) / e_k(x)`` from prefix and suffix elementary
    symmetric polynomials in the log domain (only sums of positive terms: no cancellation, no log 0).
    The same function as :func:`grad_topk`, stable at any scale; O(n k) per row, differentiable by
    autograd. Ours, not the article's. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    n = x.shape[-1]
    pre = _esp_prefix(x, k)                                   # pre[j]: elements 0..j-1
    suf = _esp_prefix(x.flip(-1), k)                          # suf[j]: the last j elements
    log_zk = pre[n][..., k:k + 1]
    cols = []
    for i in range(n):
        a = pre[i][..., :k]                                   # m = 0..k-1 from before i
        b = suf[n - 1 - i][..., :k].flip(-1)                  # k-1-m from after i
        cols.append(torch.logsumexp(a + b, -1, keepdim=True))
    loo = torch.cat(cols, -1)                                 # log e_{k-1}(x without i)
    return torch.exp(x + loo - log_zk)


def grad_topk_bruteforce(x, k: int) -> np.ndarray:
    """GradTopK of one vector by enumerating every k-subset (float64; for tests on tiny n).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    x = np.asarray(x, dtype=float).ravel()
    subsets = list(itertools.combinations(range(len(x)), k))
    s = np.array([x[list(c)].sum() for c in subsets])
    w = np.exp(s - s.max())
    p = np.zeros_like(x)
    for c, wi in zip(subsets, w):
        p[list(c)] += wi
    return p / w.sum()


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def _pick(lam: torch.Tensor, upper: torch.Tensor, lower: torch.Tensor):
    """The first candidate λ_m with ``lower_m ≤ λ_m ≤ upper_m``; where no candidate is valid (rounding),
    the one closest to its interval. Returns (λ, number of valid candidates)."""
    valid = (lam <= upper) & (lam >= lower)
    n_valid = valid.sum(-1)
    gap = torch.clamp(lam - upper, min=0) + torch.clamp(lower - lam, min=0)
    gap = torch.where(torch.isnan(gap), torch.full_like(gap, math.inf), gap)
    first = torch.argmax(valid.to(torch.int8), -1)
    closest = torch.argmin(gap, -1)
    idx = torch.where(n_valid > 0, first, closest)
    return _gather(lam, idx), n_valid


def _sorted_bounds(xs: torch.Tensor, n_cand: int):
    """For candidates m = 0..n_cand-1 (m entries above λ): upper = x_(m) (+inf for m = 0) and lower =
    x_(m+1) (−inf past the end), x sorted descending and 1-indexed as in the article."""
    inf = torch.full_like(xs[..., :1], math.inf)
    upper = torch.cat([inf, xs], -1)[..., :n_cand]
    lower = torch.cat([xs, -inf], -1)[..., :n_cand]
    return upper, lower


def thre_topk_exp(x: torch.Tensor, k: int, return_info: bool = False):
    """ThreTopK with ``f(t) = min(1, e^t)``: with x sorted descending and ``x_m ≥ λ ≥ x_{m+1}``,
    ``λ = log Σ_{i>m} e^{x_i} − log(k − m)``, searched over m = 0..k−1 (the first valid m).
    Gradients by autograd through the closed form (f is not differentiable where ``x_i = λ``).
    ``return_info``: also (λ, number of valid m). For k = 1 it is softmax.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    xs = x.sort(-1, descending=True).values
    tail = torch.logcumsumexp(xs.flip(-1), -1).flip(-1)          # tail[m] = log Σ_{i ≥ m} e^{xs_i}
    m = torch.arange(k, dtype=x.dtype, device=x.device)
    lam_c = tail[..., :k] - torch.log(k - m)
    upper, lower = _sorted_bounds(xs, k)
    lam, n_valid = _pick(lam_c, upper, lower)
    p = torch.clamp(torch.exp(x - lam.unsqueeze(-1)), max=1.0)
    return (p, lam, n_valid) if return_info else p


def smooth_f(t: torch.Tensor) -> torch.Tensor:
    """The article's C¹ S-curve ``f(t) = 1 − e^{−t}/2`` (t ≥ 0), ``e^t/2`` (t < 0).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    h = 0.5 * torch.exp(-t.abs())
    return torch.where(t >= 0, 1 - h, h)


def thre_topk_smooth(x: torch.Tensor, k: int, return_info: bool = False):
    """ThreTopK with :func:`smooth_f`: for ``x_m ≥ λ ≥ x_{m+1}`` (x sorted descending), with
    ``A = log Σ_{i>m} e^{x_i}``, ``B = log Σ_{i≤m} e^{−x_i}``, ``c = k − m``,
    ``λ = A − log(√(c² + e^{A+B}) + c)``, evaluated in the log domain (no ``e^{A+B}`` overflow; for
    c < 0 as ``λ = log(√(c²+E) + |c|) − B``, from ``√(c²+E) + c = E / (√(c²+E) + |c|)``: no cancellation). Candidates
    m = 0..n: the article's m = 0..n−1 misses m = n (λ below every entry), which is the solution
    when k > n/2. For k = 1 it is softmax only while max softmax(x) ≤ 1/2 (m = 0); otherwise m = 1 and
    ``λ = (x_1 + log Σ_{i>1} e^{x_i})/2`` (the article says it is softmax at k = 1: see the tests).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    n = x.shape[-1]
    xs = x.sort(-1, descending=True).values
    ninf = torch.full_like(xs[..., :1], NEG_INF)
    tail = torch.cat([torch.logcumsumexp(xs.flip(-1), -1).flip(-1), ninf], -1)   # A for m = 0..n
    head = torch.cat([ninf, torch.logcumsumexp(-xs, -1)], -1)                       # B for m = 0..n
    m = torch.arange(n + 1, dtype=x.dtype, device=x.device)
    c = k - m
    log_c = torch.log(c.abs())                                   # −inf at c = 0
    s = tail + head                                              # log E, E = e^{A+B}
    h = 0.5 * torch.logaddexp(2 * log_c, s)                     # log √(c² + E)
    l_plus = torch.logaddexp(h, log_c)                           # log(√(c² + E) + |c|)
    # c ≥ 0: λ = A − L; c < 0: λ = A − (A + B − L) = L − B (no −inf − −inf at m = n, where A = −inf)
    lam_c = torch.where(c >= 0, tail - l_plus, l_plus - head)
    upper, lower = _sorted_bounds(xs, n + 1)
    lam, n_valid = _pick(lam_c, upper, lower)
    p = smooth_f(x - lam.unsqueeze(-1))
    return (p, lam, n_valid) if return_info else p


def _sigmoid_lambda(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """λ with ``Σ σ(x_i − λ) = k`` by bisection on the article's bracket
    ``[x_min − σ⁻¹(k/n), x_max − σ⁻¹(k/n)]``."""
    n = x.shape[-1]
    off = math.log(k / (n - k))
    lo = x.min(-1).values - off
    hi = x.max(-1).values - off
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        big = torch.sigmoid(x - mid.unsqueeze(-1)).sum(-1) > k      # Σ too large → λ must rise
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    return 0.5 * (lo + hi)


class _ThreSigmoid(torch.autograd.Function):
    """``σ(x − λ(x))`` with the implicit gradient: ``J = diag(s) − s sᵀ / Σ s``, ``s = σ'(x − λ)``."""

    @staticmethod
    def forward(ctx, x, k, iters):
        lam = _sigmoid_lambda(x, k, iters)
        p = torch.sigmoid(x - lam.unsqueeze(-1))
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        s = p * (1 - p)
        sg = s * g
        return sg - s * sg.sum(-1, keepdim=True) / s.sum(-1, keepdim=True), None, None


def thre_topk_sigmoid(x: torch.Tensor, k: int, grad: str = "implicit", iters: int = 64) -> torch.Tensor:
    """ThreTopK with ``f = σ``: λ by ``iters`` bisection steps (no gradient through the search).
    ``grad``: ``"implicit"`` — the custom backward ``∂λ/∂x_j = σ'(x_j − λ)/Σ_i σ'(x_i − λ)``;
    ``"sg"`` — the article's stop-gradient form ``λ ≈ x·sg[∇λ] + sg[λ − x·∇λ]`` (same gradient);
    ``"detach"`` — λ treated as a constant (the gradient the article warns is lost);
    ``"straight_through"`` — forward the hard ``T_k(x)``, backward the implicit gradient.
    Requires 0 < k < n. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    n = x.shape[-1]
    if not 0 < k < n:
        raise ValueError(f"thre_topk_sigmoid needs 0 < k < n; got k = {k}, n = {n}")
    if grad == "implicit":
        return _ThreSigmoid.apply(x, k, iters)
    if grad == "straight_through":
        soft = _ThreSigmoid.apply(x, k, iters)
        return soft + (hard_topk(x, k) - soft).detach()
    with torch.no_grad():
        lam = _sigmoid_lambda(x, k, iters).unsqueeze(-1)
    if grad == "detach":
        return torch.sigmoid(x - lam)
    if grad == "sg":
        with torch.no_grad():
            s = torch.sigmoid(x - lam)
            s = s * (1 - s)
            dlam = s / s.sum(-1, keepdim=True)
        xd = (x * dlam).sum(-1, keepdim=True)
        lam_sg = xd + (lam - xd).detach()
        return torch.sigmoid(x - lam_sg)
    raise ValueError(f"unknown grad {grad!r}: implicit, sg, detach or straight_through")


METHODS = {
    "iterative soft-k-max": iterative_soft_kmax,
    "weighted-softmax iteration": weighted_softmax_topk,
    "GradTopK (recursion)": grad_topk,
    "GradTopK (symmetric-polynomial DP)": grad_topk_dp,
    "ThreTopK, f = min(1, e^t)": thre_topk_exp,
    "ThreTopK, smooth f": thre_topk_smooth,
    "ThreTopK, f = σ": thre_topk_sigmoid,
}
"""The constructions of the article (and the stable GradTopK), by display name; ``fn(x, k) -> p``."""


def check_properties(fn, x: torch.Tensor, k: int, shift: float = 7.25, tol: float = 1e-9) -> dict:
    """Per-row measurements of ``p = fn(x, k)`` (numpy arrays): ``finite``; ``sum_err = |Σp − k|``;
    ``bound_viol = max(max p − 1, −min p, 0)``; ``order_viol`` = the largest ``p_i − p_j`` over pairs
    with ``x_i < x_j`` (0 when the order is kept; ties in x are not expected); ``shift_err =
    max |fn(x + shift) − p|``; and booleans ``*_bad`` with the tolerance ``tol`` (non-finite rows count
    as bad everywhere). https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    with torch.no_grad():
        p = fn(x, k)
        p2 = fn(x + shift, k)
        finite = torch.isfinite(p).all(-1)
        sum_err = (p.sum(-1) - k).abs()
        bound = torch.clamp(torch.maximum(p.max(-1).values - 1, -p.min(-1).values), min=0)
        order = x.argsort(-1)
        ps = p.gather(-1, order)                                  # p in ascending order of x
        run_max = torch.cummax(ps, -1).values
        order_viol = (run_max - ps).max(-1).values
        shift_err = (p2 - p).abs().max(-1).values
    out = {"finite": finite.cpu().numpy(), "sum_err": sum_err.cpu().numpy(), "bound_viol": bound.cpu().numpy(),
           "order_viol": order_viol.cpu().numpy(), "shift_err": shift_err.cpu().numpy()}
    bad = ~out["finite"]
    for key in ("sum_err", "bound_viol", "order_viol", "shift_err"):
        v = np.nan_to_num(out[key], nan=np.inf)
        out[key.replace("_err", "").replace("_viol", "") + "_bad"] = bad | (v > tol)
    return out


def l1_to_hard(fn, x: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """``‖fn(x/τ, k) − T_k(x)‖₁`` per row. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    with torch.no_grad():
        return (fn(x / tau, k) - hard_topk(x, k)).abs().sum(-1)


def failure_mask(p: torch.Tensor, k: int, ref: torch.Tensor | None = None, sum_tol: float = 1e-3,
                 ref_tol: float = 1e-2) -> np.ndarray:
    """Rows where a soft top-k failed: a non-finite entry, ``|Σp − k| > sum_tol``, or (with a reference)
    ``max |p − ref| > ref_tol``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    with torch.no_grad():
        p64 = p.double()
        bad = ~torch.isfinite(p64).all(-1)
        s = torch.nan_to_num((p64.sum(-1) - k).abs(), nan=math.inf)
        bad |= s > sum_tol
        if ref is not None:
            d = torch.nan_to_num((p64 - ref.double()).abs(), nan=math.inf).max(-1).values
            bad |= d > ref_tol
    return bad.cpu().numpy()


def stability_scan(methods: dict, scales, ks, *, n: int = 100, draws: int = 200, dtype=torch.float64,
                   seed: int = 0, refs: dict | None = None) -> list[dict]:
    """Failure shares of soft top-k functions on ``x = scale · N(0, I_n)`` (``draws`` rows per
    (scale, k), the same rows for every method, drawn in float64 and rounded to ``dtype``). A row
    fails (:func:`failure_mask`) when an entry is not finite or ``|Σp − k| > 1e-3``, or, where
    ``refs[name]`` gives a float64 reference function, when ``max |p − ref| > 0.01``. For functions
    with ``return_info`` (the closed-form ThreTopKs) the share of rows where no candidate λ passed
    the article's validity test is kept as ``no_valid`` (its code would stop there; ours falls back to the
closest candidate), and ``failure_or_no_valid`` counts either. One dict per (method, scale, k).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    refs = refs or {}
    out = []
    for si, scale in enumerate(scales):
        g = torch.Generator().manual_seed(seed * 1000 + si)
        x64 = scale * torch.randn(draws, n, dtype=torch.float64, generator=g)
        x = x64.to(dtype)
        for k in ks:
            for name, fn in methods.items():
                with torch.no_grad():
                    nv = None
                    if fn in (thre_topk_exp, thre_topk_smooth):
                        p, _, nv = fn(x, k, return_info=True)
                        nv = (nv == 0).cpu().numpy()
                    else:
                        p = fn(x, k)
                    ref = refs[name](x.double(), k) if name in refs else None
                    fail = failure_mask(p, k, ref)
                out.append({"method": name, "scale": float(scale), "k": int(k), "dtype": str(dtype).replace("torch.", ""),
                            "failure": float(fail.mean()), "no_valid": None if nv is None else float(nv.mean()),
                            "failure_or_no_valid": float(fail.mean() if nv is None else (fail | nv).mean())})
    return out


# -- the learning task --------------------------------------------------------------------------
def make_teacher(d: int, hidden: int = 32, seed: int = 0) -> nn.Module:
    """A fixed random tanh MLP ``R^d → R`` that assigns each item its hidden utility (weights
    N(0, 1/fan_in), no gradient). https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for lin in (net[0], net[2], net[4]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.in_features))
            lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=g))
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def sample_instances(teacher: nn.Module, n_inst: int, n_items: int, d: int, generator: torch.Generator):
    """``n_inst`` sets of ``n_items`` items with features N(0, I_d): (features, utilities standardised
    by the teacher's spread on the set). https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    z = torch.randn(n_inst, n_items, d, generator=generator).to(next(teacher.parameters()).device)
    with torch.no_grad():
        u = teacher(z).squeeze(-1)
    u = (u - u.mean(-1, keepdim=True)) / (u.std(-1, keepdim=True) + 1e-8)
    return z, u


def recall_at_k(scores: torch.Tensor, u: torch.Tensor, k: int) -> float:
    """Mean share of the true top-k (by utility) among the hard top-k of the scores (chance: k/n).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    with torch.no_grad():
        return float((hard_topk(scores, k) * hard_topk(u, k)).sum(-1).mean() / k)


TRAIN_METHODS = {
    "ThreTopK σ, implicit ∇λ": lambda s, k: thre_topk_sigmoid(s, k, "implicit", iters=32),
    "ThreTopK σ, λ detached": lambda s, k: thre_topk_sigmoid(s, k, "detach", iters=32),
    "ThreTopK exp": thre_topk_exp,
    "ThreTopK smooth f": thre_topk_smooth,
    "GradTopK (recursion)": grad_topk,
    "GradTopK (DP)": grad_topk_dp,
    "iterative soft-k-max": iterative_soft_kmax,
}
"""The masks the learning task trains with (score tensor, k) -> soft mask; all evaluated hard. (A
straight-through hard top-k is left out: the objective is linear in the mask, so its gradient is the
soft mask's exactly. Bisection: 32 steps, float32's precision on these score ranges.)"""


def train_selector(method: str, *, teacher: nn.Module, dev, test, k: int, lr: float, steps: int, seed: int,
                   batch: int = 32, d: int = 8, hidden: int = 32, eval_every: int = 25) -> dict:
    """Train a scorer MLP ``R^d → R`` (2 hidden tanh layers) with Adam to maximise
    ``Σ_i mask_i u_i / k`` for the soft mask ``TRAIN_METHODS[method](scores, k)`` on fresh instances
    each step (generator ``seed``, on the CPU; the scorer and the batches live on the teacher's device), evaluating the hard-top-k recall on ``dev = (z, u)`` every
    ``eval_every`` steps; the best dev checkpoint (early stopping) is scored on ``test``. A step whose
    loss is not finite stops the run (``diverged``). Returns dev history, best dev, test recall,
    steps, diverged, seconds. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    net.to(next(teacher.parameters()).device)     # drawn on the CPU, trained where the teacher is
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(10_000 + seed)
    mask_fn = TRAIN_METHODS[method]
    n_items = dev[0].shape[1]
    score = lambda z: net(z).squeeze(-1)  # noqa: E731
    hist, best, best_state, diverged, t0 = [], -1.0, None, None, time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0:
            r = recall_at_k(score(dev[0]), dev[1], k)
            hist.append((step, r))
            if r > best:
                best, best_state = r, copy.deepcopy(net.state_dict())
        if step == steps:
            break
        z, u = sample_instances(teacher, batch, n_items, d, g)
        loss = -(mask_fn(score(z), k) * u).sum(-1).mean() / k
        if not torch.isfinite(loss):
            diverged = step
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.load_state_dict(best_state)
    return {"history": hist, "best_dev": best, "test": recall_at_k(score(test[0]), test[1], k),
            "diverged": diverged, "seconds": time.perf_counter() - t0}


def run_selection(methods, lrs, seeds, *, n_items: int = 30, k: int = 5, d: int = 8, steps: int = 500,
                  n_eval: int = 500, batch: int = 32, eval_every: int = 25, teacher_seed: int = 0) -> dict:
    """The learning task for every method × lr × seed (:func:`train_selector`); dev and test sets of
    ``n_eval`` instances each from generator 1 (fixed, shared). Per method the lr is chosen by the
    mean over seeds of the best dev recall; returns ``{method: {"lr", "test" (per seed at that lr),
    "dev", "runs" {lr: [run per seed]}}}``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    from . import resolve_device
    teacher = make_teacher(d, seed=teacher_seed).to(resolve_device())   # kexue's current device
    g = torch.Generator().manual_seed(1)
    dev = sample_instances(teacher, n_eval, n_items, d, g)
    test = sample_instances(teacher, n_eval, n_items, d, g)
    out = {}
    for m in methods:
        runs = {lr: [train_selector(m, teacher=teacher, dev=dev, test=test, k=k, lr=lr, steps=steps, seed=s,
                                    batch=batch, d=d, eval_every=eval_every) for s in seeds] for lr in lrs}
        best_lr = max(lrs, key=lambda lr: float(np.mean([r["best_dev"] for r in runs[lr]])))
        out[m] = {"lr": best_lr, "test": np.array([r["test"] for r in runs[best_lr]]),
                  "dev": np.array([r["best_dev"] for r in runs[best_lr]]), "runs": runs}
    return out


# -- the chapter's summaries (tables and pooled shares of the scans) -----------------------------
PROPERTY_KEYS = ("sum_bad", "bound_bad", "order_bad", "shift_bad")


def self_checks(seed: int = 0) -> dict:
    """The chapter's implementation checks on small random inputs (generator ``seed``): ``err_bf``,
    the largest gap of GradTopK (recursion and DP) to the subset enumeration (20 draws, n = 10,
    k = 3); ``err_sm``, the largest gap of ThreTopK exp and both GradTopKs to softmax at k = 1 (3·x);
    ``gradcheck`` of the σ-ThreTopK's custom backward (float64, n = 8, k = 3); the largest gaps of
    its implicit gradient to the sg form (``imp_sg``) and to the detached λ (``imp_det``) for a random
    linear loss. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    g = torch.Generator().manual_seed(seed)
    xb = torch.randn(20, 10, dtype=torch.float64, generator=g)
    bf = torch.tensor(np.stack([grad_topk_bruteforce(r, 3) for r in xb.numpy()]))
    err_bf = max(float((grad_topk(xb, 3) - bf).abs().max()), float((grad_topk_dp(xb, 3) - bf).abs().max()))
    err_sm = max(float((fn(3 * xb, 1) - torch.softmax(3 * xb, -1)).abs().max())
                 for fn in (thre_topk_exp, grad_topk, grad_topk_dp))
    xg = xb[:3, :8].clone().requires_grad_(True)
    gc = torch.autograd.gradcheck(thre_topk_sigmoid, (xg, 3, "implicit", 80), eps=1e-6, atol=1e-7, rtol=1e-5)
    w = torch.randn(3, 8, dtype=torch.float64, generator=g)
    g_imp, g_sg, g_det = (torch.autograd.grad((thre_topk_sigmoid(xg, 3, mode) * w).sum(), xg)[0]
                          for mode in ("implicit", "sg", "detach"))
    return {"err_bf": err_bf, "err_sm": err_sm, "gradcheck": bool(gc),
            "sg_same": bool(torch.allclose(g_imp, g_sg, atol=1e-12)),
            "imp_sg": float((g_imp - g_sg).abs().max()), "imp_det": float((g_imp - g_det).abs().max())}


def property_scan(scales, ks, *, n: int = 100, draws: int = 1000, seed: int = 0, tol: float = 1e-6,
                  methods: dict | None = None) -> dict:
    """:func:`check_properties` of every method on ``x = scale · N(0, I_n)`` (``draws`` float64 rows
    per scale from generator ``seed·1000 + index of the scale``, shared by all k and methods), keyed
    ``(method, scale, k)``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    methods = METHODS if methods is None else methods
    props = {}
    for si, s in enumerate(scales):
        x = s * torch.randn(draws, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed * 1000 + si))
        for k in ks:
            for name, fn in methods.items():
                props[name, s, k] = check_properties(fn, x, k, tol=tol)
    return props


def property_summary(props: dict, scales, ks, methods=None) -> tuple[dict, dict]:
    """From :func:`property_scan`: ``share[method][key]``, the share of draws with each violation
    (``PROPERTY_KEYS``) averaged over the (scale, k) cells, and ``worst[method]`` the largest
    ``bound_viol`` / ``order_viol`` over all draws (a non-finite entry counts as ∞).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    methods = list(METHODS if methods is None else methods)
    cells = [(s, k) for s in scales for k in ks]
    share = {name: {key: float(np.mean([props[name, s, k][key].mean() for s, k in cells])) for key in PROPERTY_KEYS}
             for name in methods}
    worst = {name: {key: float(np.nanmax([np.nan_to_num(props[name, s, k][key], nan=np.inf).max() for s, k in cells]))
                    for key in ("bound_viol", "order_viol")} for name in methods}
    return share, worst


def property_table(share: dict, worst: dict) -> tuple[list, list]:
    """Header and rows (one per method) of the property scan's table from :func:`property_summary`.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    header = ["method", "sum ≠ k", "outside [0, 1]", "order reversed", "shift moves it", "worst bound excess",
              "worst order reversal"]
    rows = [[n] + [f"{share[n][key]:.1%}" for key in PROPERTY_KEYS]
            + [f"{worst[n]['bound_viol']:.2g}", f"{worst[n]['order_viol']:.2g}"] for n in share]
    return header, rows


def violation_by_cell(props: dict, name: str, scales, ks) -> dict:
    """Share of draws of ``name`` outside [0, 1] or out of order, per ``(scale, k)`` cell of
    :func:`property_scan`. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return {(s, k): float((props[name, s, k]["bound_bad"] | props[name, s, k]["order_bad"]).mean())
            for s in scales for k in ks}


def cell_table(values: dict, scales, ks, fmt: str = ".1%") -> tuple[list, list]:
    """Header and rows of a scale × k table of ``values[(scale, k)]``.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return ["scale"] + [f"k = {k}" for k in ks], [[s] + [format(values[s, k], fmt) for k in ks] for s in scales]


def l1_curves(x: torch.Tensor, k: int, taus, methods: dict | None = None) -> dict:
    """Mean :func:`l1_to_hard` over the rows of ``x`` at each temperature, per method.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    methods = METHODS if methods is None else methods
    return {name: [float(l1_to_hard(fn, x, k, t).mean()) for t in taus] for name, fn in methods.items()}


def weighted_softmax_rows(x, k: int, taus, digits: int = 300) -> list:
    """Rows ``[τ, float64 result, decimal result]`` (rounded to 4 digits) of the weighted-softmax
    iteration on ``x/τ``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    x = np.asarray(x, dtype=float)
    return [[t, np.round(weighted_softmax_topk(torch.tensor(x / t), k).numpy(), 4).tolist(),
             np.round(weighted_softmax_topk_exact(x / t, k, digits=digits), 4).tolist()] for t in taus]


def stability_fail(scan: list) -> dict:
    """``{(method, dtype, scale, k): failure_or_no_valid}`` from :func:`stability_scan` rows.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return {(r["method"], r["dtype"], r["scale"], r["k"]): r["failure_or_no_valid"] for r in scan}


def stability_pooled(fail: dict, methods, scales, ks, dtypes=("float64", "float32")) -> dict:
    """The failure share of :func:`stability_fail` averaged over the scale × k grid, per
    ``(method, dtype)``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return {(m, dt): float(np.mean([fail[m, dt, s, k] for s in scales for k in ks])) for m in methods for dt in dtypes}


def plot_stability(ax, fail: dict, dtype: str, scales, ks, n: int, method: str = "GradTopK (recursion)",
                   others=("ThreTopK exp", "ThreTopK smooth f")) -> None:
    """One panel: the failure share of ``method`` against the scale, one curve per k, and the worst
    k of ``others`` dashed. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    from kexue import plot
    for i, k in enumerate(ks):
        ax.plot(scales, [fail[method, dtype, s, k] for s in scales], marker="o", color=f"C{i}", label=f"k = {k}")
    ax.plot(scales, [max(fail[m, dtype, s, k] for m in others for k in ks) for s in scales],
            color="k", ls="--", label="ThreTopK exp and smooth (worst k)")
    plot.label(ax, f"GradTopK's recursion fails as the scale or k grows ({dtype}, n = {n})", "scale of x (standard deviation)",
               "share of draws that fail", logx=True)


def smooth_k1_gap(seed: int = 0, draws: int = 2000, n: int = 20, scale: float = 3.0) -> dict:
    """The smooth-f ThreTopK at k = 1 against softmax on ``x = scale · N(0, I_n)`` (generator
    ``seed + 700``), split by whether the largest softmax weight is ≤ 1/2: the shares of draws
    (``low_share``) and the largest entry gaps (``dev_low``, ``dev_high``).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    xs = scale * torch.randn(draws, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 700))
    sm = torch.softmax(xs, -1)
    dev = (thre_topk_smooth(xs, 1) - sm).abs().max(-1).values
    low = sm.max(-1).values <= 0.5
    return {"low_share": float(low.double().mean()), "dev_low": float(dev[low].max()), "dev_high": float(dev[~low].max())}


def best_step(history) -> int:
    """The step of the (first) best dev recall in a run's ``history`` of (step, recall).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    best = history[0]
    for h in history[1:]:
        if h[1] > best[1]:
            best = h
    return best[0]


def diverged_share(result: dict) -> float:
    """Share of a method's runs (all lrs and seeds of :func:`run_selection`) with a non-finite loss.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return float(np.mean([r["diverged"] is not None for runs in result["runs"].values() for r in runs]))


def selection_table(R: dict, methods) -> tuple[list, list]:
    """Header and rows (one per method) of the learning task's table from :func:`run_selection`: lr
    chosen by dev, dev recall, test recall (mean ± sd and per seed), diverged runs, mean best step,
    seconds per run. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    from kexue import stats
    header = ["method", "lr (by dev)", "dev recall", "test recall (mean ± sd)", "per seed", "runs with a non-finite loss",
              "best step (mean)", "s per run"]
    rows = []
    for m in methods:
        every = [r for runs in R[m]["runs"].values() for r in runs]
        rows.append([m, R[m]["lr"], f"{R[m]['dev'].mean():.3f}", stats.fmt_mean_sd(R[m]["test"]),
                     ", ".join(f"{v:.3f}" for v in R[m]["test"]),
                     f"{sum(r['diverged'] is not None for r in every)} of {len(every)}",
                     f"{np.mean([best_step(r['history']) for r in R[m]['runs'][R[m]['lr']]]):.0f}",
                     f"{np.mean([r['seconds'] for r in every]):.1f}"])
    return header, rows


def mean_dev_curve(runs: list) -> tuple[list, np.ndarray]:
    """Steps and the mean dev recall over runs (cut to the shortest history).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    vals = [[h[1] for h in r["history"]] for r in runs]
    m = min(map(len, vals))
    return [h[0] for h in runs[0]["history"]][:m], np.mean([v[:m] for v in vals], 0)


def self_check_rows(chk: dict) -> list[tuple[str, bool, str]]:
    """The chapter's implementation checks from :func:`self_checks` as (statement, passed, detail) for
    ``Results.implementation_check``. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return [("GradTopK (recursion and DP) equals brute-force subset enumeration, n = 10, k = 3, 20 draws, to 1e-12",
             chk["err_bf"] < 1e-12, f"{chk['err_bf']:.1e}"),
            ("k = 1: ThreTopK exp and GradTopK equal softmax to 1e-12", chk["err_sm"] < 1e-12, f"{chk['err_sm']:.1e}"),
            ("σ-ThreTopK: the custom backward passes gradcheck in float64; the sg form gives the same gradient",
             chk["gradcheck"] and chk["sg_same"], "")]


def plot_l1_curves(ax, taus, l1: dict) -> None:
    """The :func:`l1_curves` against the falling temperature, log-log (zeros drawn at 1e-17).
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    from kexue import plot
    for name, v in l1.items():
        ax.plot(taus, np.maximum(v, 1e-17), marker=".", label=name)
    ax.invert_xaxis()
    plot.label(ax, "Distance to the hard top-10 as the temperature falls (n = 100)", "temperature τ (log scale, falling →)",
               "mean L1 distance to T_k(x)", logx=True, logy=True)


STABILITY_METHODS = {"GradTopK (recursion)": grad_topk, "GradTopK (DP)": grad_topk_dp, "ThreTopK exp": thre_topk_exp,
                     "ThreTopK smooth f": thre_topk_smooth}
"""The functions of the chapter's stability scan, by display name."""
STABILITY_REFS = {"GradTopK (recursion)": grad_topk_dp, "ThreTopK exp": thre_topk_exp, "ThreTopK smooth f": thre_topk_smooth}
"""Their float64 references (the recursion against the DP; each ThreTopK against itself in float64)."""


def stability_scans(scales, ks, *, n: int = 100, draws: int = 1000, seed: int = 0, dtypes=(torch.float64, torch.float32),
                    methods: dict | None = None, refs: dict | None = None) -> list[dict]:
    """:func:`stability_scan` of ``STABILITY_METHODS`` (references ``STABILITY_REFS``) in each dtype,
    the rows concatenated. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    methods = STABILITY_METHODS if methods is None else methods
    refs = STABILITY_REFS if refs is None else refs
    return [r for dt in dtypes for r in stability_scan(methods, scales, ks, n=n, draws=draws, dtype=dt, seed=seed, refs=refs)]


def scan_mean(scan: list, method: str, dtype: str, key: str = "failure") -> float:
    """Mean of ``key`` over the :func:`stability_scan` rows of one method and dtype.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return float(np.mean([r[key] for r in scan if r["method"] == method and r["dtype"] == dtype]))


def max_no_valid(scan: list) -> float:
    """The largest share of rows where no closed-form λ candidate passed, over the scan.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return max(r["no_valid"] for r in scan if r["no_valid"] is not None)


def smooth_k1_table(sk: dict) -> tuple[list, list]:
    """Header and rows of the k = 1 comparison of :func:`smooth_k1_gap`.
    https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    return (["draws", "share", "largest |ThreTopK smooth − softmax|"],
            [["max softmax ≤ 1/2", f"{sk['low_share']:.0%}", f"{sk['dev_low']:.1e}"],
             ["max softmax > 1/2", f"{1 - sk['low_share']:.0%}", f"{sk['dev_high']:.3f}"]])


def plot_dev_curves(ax, R: dict, methods) -> None:
    """Mean dev recall against the step at each method's chosen lr (:func:`mean_dev_curve`), chance
    dotted. https://kexue.fm/archives/10373, chapter ``topk-smooth``."""
    from kexue import plot
    for i, m in enumerate(methods):
        ax.plot(*mean_dev_curve(R[m]["runs"][R[m]["lr"]]), color=f"C{i}", label=f"{m} (lr {R[m]['lr']:g})")
    ax.axhline(5 / 30, color="gray", ls=":", label="chance")
    plot.label(ax, "Dev recall of the hard top-5 while training with each soft top-k", "training step", "dev recall (mean over seeds)")
