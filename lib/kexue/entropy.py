r"""Entropy normalisation of a probability distribution: move a distribution to a chosen entropy with
the power transform, keeping the order of its probabilities.

Su Jianlin, 概率分布的熵归一化（Entropy Normalization） (https://kexue.fm/archives/8829, 2021-12-24).
Chapter ``entropy-normalization``.

For an n-way distribution ``p`` the entropy is ``H = −Σ p_i log p_i = E_p[−log p] ∈ [0, log n]``.
The power transform (a temperature ``1/γ`` applied to ``log p``)

    p_i  →  p̃_i = p_i^γ / Σ_j p_j^γ ,        log p̃ = γ log p − logsumexp(γ log p)

keeps the order of the probabilities for ``γ > 0`` (``γ < 0`` reverses it). With distinct nonzero
``p_i`` it gives the uniform distribution at ``γ = 0`` and one-hot as ``γ → ∞``, and

    H(γ) = log Σ p^γ − γ Σ p^γ log p / Σ p^γ ,      dH/dγ = −γ Var_{p̃}(log p)  ≤ 0

so every target ``H* ∈ (0, log n)`` is reached by one ``γ > 0``. At ``γ = 1`` the slope is
``H² − E_p[(log p)²] = −Var_p(log p)`` (Su's first-order expansion). His iteration restarts from the
current distribution every time:

    H ← −Σ p log p ,   γ ← 1 + (H* − H)/(H² − E_p[(log p)²]) ,   p ← p^γ / Σ p^γ .

Write the current distribution as ``p₀^G`` (``G`` the product of the steps so far). Its slope in its
own γ is ``G·H'(G)``, so the update is ``G ← G + (H* − H(G))/H'(G)``: exactly Newton's method on
``H(G) = H*`` (Su: "这其实就是求解非线性方程的牛顿法了"). When the entropy must rise a lot
(``H* − H ≥ Var_p(log p)``) the step ``1 + u`` is ≤ 0, which flattens or reverses the order.

Our safeguarded variant (``variant="safe"``, not the article's) is the textbook safeguarded Newton
method: since ``H`` is monotone in ``G``, every evaluation narrows a bracket on ``log G``; Su's step is
taken when it lands inside the bracket (and ``γ > 0``), otherwise the bracket's midpoint in ``log G``,
or, while the bracket is still open on that side, a step of ``log G`` by ``u`` clipped to ``[−2, 2]``
(Newton on ``log G`` with a trust region). Every step is positive and it cannot stall at ``G = 0``.

Everything is in log space (float64 NumPy), vectorised over leading axes: ``logp`` has shape
``(..., n)``, with ``−inf`` for zero probabilities; those entries contribute 0 to every sum and stay 0.
"""
from __future__ import annotations

import numpy as np

__all__ = ["log_normalize", "entropy", "entropy_of_logp", "log_moments", "entropy_slope",
           "power_transform", "entropy_at", "newton_normalize", "bisect_gamma", "solve_gamma",
           "truncate_top_k", "truncate_top_p", "global_gamma_for_mean_entropy", "sample",
           "entropy_normalized_sample", "random_distributions", "FAMILIES", "convergence_study",
           "convergence_grid", "converged", "mlm_distributions",
           "grid_share", "grid_nonpositive_share", "group_means", "sampler_streams",
           "seed_shares", "seed_nonpositive_shares", "grouped_interval", "grouped_paired_interval"]

FAMILIES = ("uniform-random", "dirichlet-0.1", "zipf", "peaked-softmax")
"""Synthetic start distributions of the chapter (see :func:`random_distributions`)."""


def _lse(x: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, keepdims; rows of all −inf give −inf."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def log_normalize(logits) -> np.ndarray:
    """``log softmax`` of ``logits`` over the last axis in float64 (``−inf`` logits stay ``−inf``)
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    x = np.asarray(logits, dtype=np.float64)
    return x - _lse(x)


def _plogp_terms(logp: np.ndarray):
    p = np.exp(logp)
    lp = np.where(p > 0, logp, 0.0)  # 0·log 0 = 0
    return p, lp


def entropy_of_logp(logp) -> np.ndarray:
    """``H = −Σ p log p`` from log-probabilities (``−inf`` entries count 0), over the last axis
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    p, lp = _plogp_terms(np.asarray(logp, dtype=np.float64))
    return -np.sum(p * lp, axis=-1)


def entropy(p) -> np.ndarray:
    """``H = −Σ p log p`` of probabilities ``p`` (zeros count 0), over the last axis, in nats
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return entropy_of_logp(np.log(p))


def log_moments(logp) -> tuple[np.ndarray, np.ndarray]:
    """``(H, E_p[(log p)²])`` over the last axis (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    p, lp = _plogp_terms(np.asarray(logp, dtype=np.float64))
    return -np.sum(p * lp, axis=-1), np.sum(p * lp * lp, axis=-1)


def entropy_slope(logp) -> np.ndarray:
    """``dH/dγ`` of the power transform at ``γ = 1``: ``H² − E_p[(log p)²] = −Var_p(log p) ≤ 0``,
    computed as minus the centred variance (no cancellation); Su's first-order coefficient
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    p, lp = _plogp_terms(np.asarray(logp, dtype=np.float64))
    h = -np.sum(p * lp, axis=-1, keepdims=True)
    d = np.where(p > 0, lp + h, 0.0)
    return -np.sum(p * d * d, axis=-1)


def power_transform(logp, gamma) -> np.ndarray:
    """``log p̃ = γ log p − logsumexp(γ log p)``; ``gamma`` is a scalar or broadcasts against the
    leading axes of ``logp`` (shape ``(...,)``). Zero probabilities stay zero for every γ (at γ = 0:
    the uniform distribution on the support) (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    logp = np.asarray(logp, dtype=np.float64)
    g = np.asarray(gamma, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore"):
        x = np.where(np.isfinite(logp), g * logp, -np.inf)
    return x - _lse(x)


def entropy_at(logp, gamma) -> np.ndarray:
    """``H(γ)``: the entropy of the power transform (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    return entropy_of_logp(power_transform(logp, gamma))


def _target(target, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(target, dtype=np.float64), shape).copy()


def newton_normalize(logp, target, iters: int = 4, variant: str = "su") -> dict:
    """Su's iteration, ``iters`` steps, vectorised over the leading axes (one target per row, or
    one for all).

    ``variant="su"``: the article's step ``γ = 1 + (H* − H)/(H² − E[(log p)²])`` (Newton on the
    cumulative exponent ``G``; a step may be ≤ 0, which flattens or reverses the order);
    ``variant="safe"``: the safeguarded Newton method of the module docstring (Su's step when it stays
    inside the bracket on ``log G`` that the evaluations so far give; otherwise the bracket's midpoint,
    or ``log G`` moved by ``u`` clipped to ``[−2, 2]`` while the bracket is open on that side).
    A row whose slope is 0 (uniform on its support, or ties at the top) keeps ``γ = 1``.

    Returns ``logp`` (the final distribution), ``gamma`` (the cumulative ``G``: ``p_final =
    p^G/Σp^G``), ``trace`` (``H`` before each step and after the last, shape ``(iters + 1, ...)``),
    ``steps`` (each step's γ, shape ``(iters, ...)``) (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    if variant not in ("su", "safe"):
        raise ValueError(f"variant is 'su' or 'safe', got {variant!r}")
    lp0 = np.asarray(logp, dtype=np.float64)
    lp = lp0.copy()
    shape = lp.shape[:-1]
    tgt = _target(target, shape)
    G = np.ones(shape)
    lo, hi = np.full(shape, -np.inf), np.full(shape, np.inf)  # bracket on log G (variant "safe")
    trace, steps = [], []
    for _ in range(iters):
        h = entropy_of_logp(lp)
        s = entropy_slope(lp)
        ok = s < -1e-300
        u = np.where(ok, (tgt - h) / np.where(ok, s, -1.0), 0.0)
        gam = 1.0 + u
        if variant == "safe":
            with np.errstate(divide="ignore"):
                lg = np.log(G)
            lo, hi = np.where(h > tgt, np.maximum(lo, lg), lo), np.where(h < tgt, np.minimum(hi, lg), hi)
            with np.errstate(divide="ignore", invalid="ignore"):
                new = lg + np.log(np.where(gam > 0, gam, np.nan))
            inside = (gam > 0) & (new >= lo) & (new <= hi)
            closed = np.isfinite(lo) & np.isfinite(hi)
            fallback = np.where(closed, (lo + hi) / 2, lg + np.clip(u, -2.0, 2.0))
            new = np.where(inside | ~ok, np.where(ok, new, lg), fallback)
            gam = np.exp(new - lg)
        trace.append(h)
        steps.append(gam)
        G = G * gam
        lp = power_transform(lp0, G)  # p₀^G directly: the same as p ← p^γ/Σp^γ, without drift
    trace.append(entropy_of_logp(lp))
    return {"logp": lp, "gamma": G, "trace": np.stack(trace), "steps": np.stack(steps) if steps else np.zeros((0,) + shape)}


def bisect_gamma(logp, target, iters: int, lo: float = 2.0 ** -10, hi: float = 2.0 ** 10) -> dict:
    """Bisection on ``log G`` over the fixed bracket ``[lo, hi]``: ``iters`` entropy evaluations at
    the midpoints; the estimate after k steps is the k-th midpoint. The control of the chapter (the
    same number of entropy evaluations as k Newton steps). Returns ``gamma`` (the last midpoint) and
    ``trace`` (``H`` at each midpoint, shape ``(iters, ...)``) (https://kexue.fm/archives/8829,
    chapter ``entropy-normalization``)."""
    lp0 = np.asarray(logp, dtype=np.float64)
    shape = lp0.shape[:-1]
    tgt = _target(target, shape)
    a, b = np.full(shape, np.log(lo)), np.full(shape, np.log(hi))
    trace, mid = [], np.exp((a + b) / 2)
    for _ in range(iters):
        m = (a + b) / 2
        mid = np.exp(m)
        h = entropy_at(lp0, mid)
        trace.append(h)
        above = h > tgt  # entropy too high: γ must grow
        a, b = np.where(above, m, a), np.where(above, b, m)
    return {"gamma": mid, "trace": np.stack(trace) if trace else np.zeros((0,) + shape)}


def solve_gamma(logp, target, tol: float = 1e-13, max_iter: int = 400) -> np.ndarray:
    """The reference solver: the ``G > 0`` with ``H(G) = H*`` by bisection on ``G`` after bracketing
    by doubling/halving, to relative width ``tol``. Slow and obvious; used to check
    :func:`newton_normalize` (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    lp0 = np.asarray(logp, dtype=np.float64)
    shape = lp0.shape[:-1]
    tgt = _target(target, shape)
    lo, hi = np.ones(shape), np.ones(shape)
    for _ in range(200):
        grow = entropy_at(lp0, hi) > tgt
        if not grow.any():
            break
        hi = np.where(grow, hi * 2, hi)
    for _ in range(200):
        shrink = entropy_at(lp0, lo) < tgt
        if not shrink.any():
            break
        lo = np.where(shrink, lo / 2, lo)
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        above = entropy_at(lp0, mid) > tgt
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        if np.all(hi - lo <= tol * hi):
            break
    return (lo + hi) / 2


def truncate_top_k(logp, k: int) -> np.ndarray:
    """Top-k truncation, renormalised, in log space (entries outside the k largest set to −inf;
    ties at the k-th value broken by index) (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``: the samplers Su proposes to replace)."""
    lp = np.asarray(logp, dtype=np.float64)
    idx = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    out = np.full_like(lp, -np.inf)
    np.put_along_axis(out, idx, np.take_along_axis(lp, idx, axis=-1), axis=-1)
    return out - _lse(out)


def truncate_top_p(logp, top_p: float) -> np.ndarray:
    """Top-p (nucleus) truncation, renormalised: keep the smallest set of the most probable entries
    whose mass reaches ``top_p`` (always at least one) (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    lp = np.asarray(logp, dtype=np.float64)
    order = np.argsort(-lp, axis=-1, kind="stable")
    sp = np.exp(np.take_along_axis(lp, order, axis=-1))
    before = np.cumsum(sp, axis=-1) - sp  # mass strictly before each entry
    keep_sorted = before < top_p
    keep = np.zeros(lp.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    out = np.where(keep, lp, -np.inf)
    return out - _lse(out)


def global_gamma_for_mean_entropy(logp, target_mean: float, tol: float = 1e-7) -> float:
    """One γ (an inverse temperature) for all rows such that the mean entropy over the rows equals
    ``target_mean`` (bisection on log γ; the mean is decreasing in γ). The global-temperature control
    of the sampling experiment (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    lp = np.asarray(logp, dtype=np.float64)
    a, b = np.log(2.0 ** -12), np.log(2.0 ** 12)
    while b - a > tol:  # tol on log γ
        m = (a + b) / 2
        if entropy_at(lp, np.exp(m)).mean() > target_mean:
            a = m
        else:
            b = m
    return float(np.exp((a + b) / 2))


def sample(logp, seed: int = 0) -> np.ndarray:
    """One index per row drawn from ``exp(logp)`` (inverse CDF with NumPy's generator ``seed``)
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    lp = np.asarray(logp, dtype=np.float64)
    c = np.cumsum(np.exp(lp), axis=-1)
    u = np.random.default_rng(seed).random(lp.shape[:-1] + (1,)) * c[..., -1:]
    return np.minimum(np.sum(c <= u, axis=-1), lp.shape[-1] - 1)


def entropy_normalized_sample(logits, target, iters: int = 4, seed: int = 0, variant: str = "su"):
    """Constant-entropy sampling, the use Su proposes in place of top-k/top-p: each row's
    distribution moved to entropy ``target`` by :func:`newton_normalize`, then one draw per row.
    Returns ``(indices, logp_normalised)`` (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    out = newton_normalize(log_normalize(logits), target, iters=iters, variant=variant)
    return sample(out["logp"], seed=seed), out["logp"]


def random_distributions(family: str, n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random n-way log-distributions, shape ``(count, n)``:

    - ``uniform-random``: ``p ∝ U(0, 1)`` (the article's ``np.random.random(100)``);
    - ``dirichlet-0.1``: ``p ~ Dirichlet(0.1, …, 0.1)`` (sparse; drawn as normalised Gamma(0.1)
      variates in log space, so no entry underflows to 0);
    - ``zipf``: ``p_i ∝ r_i^{−a}``, ranks ``r`` a random permutation, ``a ~ U(1, 2)`` per row;
    - ``peaked-softmax``: ``softmax(s·z)``, ``z ~ N(0, 1)``, ``s ~ U(2, 6)`` per row (a confident
      classifier's or LM's output).

    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    rng = np.random.default_rng(seed)
    if family == "uniform-random":
        x = np.log(rng.random((count, n)))
    elif family == "dirichlet-0.1":
        # log Gamma(α) variate: log Gamma(α+1) + log(U)/α (Marsaglia–Tsang boost; no underflow)
        x = np.log(rng.gamma(1.1, size=(count, n))) + np.log(rng.random((count, n))) / 0.1
    elif family == "zipf":
        a = rng.uniform(1.0, 2.0, size=(count, 1))
        ranks = np.argsort(rng.random((count, n)), axis=-1) + 1.0
        x = -a * np.log(ranks)
    elif family == "peaked-softmax":
        x = rng.uniform(2.0, 6.0, size=(count, 1)) * rng.standard_normal((count, n))
    else:
        raise ValueError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    return log_normalize(x)


def convergence_study(logp, target, iters: int = 8) -> dict:
    """Every method of the chapter on the same rows and targets: ``|H − H*|`` after k = 0..iters
    steps (shape ``(iters + 1, rows)``) for Su's iteration (``su``), the safeguarded variant
    (``safe``) and bisection on log γ over ``[2^-10, 2^10]`` with k entropy evaluations (``bisect``;
    k = 0 is the start), and for Su's iteration ``su_pos`` (the cumulative γ is > 0 after k steps,
    i.e. the order is kept) and ``su_min_step`` (its smallest step per row)
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    lp = np.asarray(logp, dtype=np.float64)
    tgt = _target(target, lp.shape[:-1])
    out = {"h0": entropy_of_logp(lp), "target": tgt}
    cum = {}
    for v in ("su", "safe"):
        r = newton_normalize(lp, tgt, iters=iters, variant=v)
        out[v] = np.abs(r["trace"] - tgt)
        cum[v] = np.cumprod(np.concatenate([np.ones((1,) + tgt.shape), r["steps"]]), axis=0)
        if v == "su":
            out["su_min_step"] = r["steps"].min(axis=0) if iters else np.ones(tgt.shape)
    out["su_pos"] = cum["su"] > 0
    out["safe_pos"] = cum["safe"] > 0
    b = bisect_gamma(lp, tgt, iters=iters)
    out["bisect"] = np.abs(np.concatenate([out["h0"][None], b["trace"]]) - tgt)
    return out


def converged(study: dict, method: str, k: int, tol: float) -> np.ndarray:
    """Per row: ``|H − H*| ≤ tol`` after ``k`` steps of ``method`` and, for the Newton methods, the
    cumulative γ still > 0 (the order of the probabilities kept) (https://kexue.fm/archives/8829,
    chapter ``entropy-normalization``)."""
    ok = study[method][k] <= tol
    if method in ("su", "safe"):
        ok = ok & study[f"{method}_pos"][k]
    return ok


def convergence_grid(families, ns, ratios, count: int, seed: int = 0, iters: int = 8,
                     margin: float = 0.05) -> list[dict]:
    """:func:`convergence_study` over synthetic start distributions: for every family and size ``n``,
    ``count`` random rows (seed derived from ``seed`` and the cell), and for every perplexity ratio
    ``r`` the target ``H* = H₀ + log r`` of each row (``r = 3``: three times as many effective
    choices). Rows whose target falls outside ``[margin, log n − margin]`` are left out (the count
    kept is ``rows``). One dict per cell: ``family``, ``n``, ``ratio``, ``rows`` and the study's arrays
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    cells = []
    for fi, fam in enumerate(families):
        for ni, n in enumerate(ns):
            lp = random_distributions(fam, n, count, seed=seed * 1_000_003 + fi * 1009 + ni)
            h0 = entropy_of_logp(lp)
            for r in ratios:
                tgt = h0 + np.log(r)
                ok = (tgt >= margin) & (tgt <= np.log(n) - margin)
                st = convergence_study(lp[ok], tgt[ok], iters=iters)
                cells.append({"family": fam, "n": n, "ratio": r, "rows": int(ok.sum()), **st})
    return cells


def mlm_distributions(model, tok, texts, batch_size: int = 128, max_length: int = 64) -> dict:
    """Real next-token-like distributions: every position of every text masked in turn (one [MASK]
    per copy) and the MLM head's distribution over the whole vocabulary read there, in float64.
    Positions whose true token is special or [UNK] are skipped. Returns ``logp`` (N, V) NumPy,
    ``true`` (N,) the masked token ids, ``text`` (N,) the index of each position's text. The stream
    of the constant-entropy sampling experiment (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``; the book's BERT, :mod:`kexue.models.bert_zh`)."""
    import torch

    special = set(tok.all_special_ids)
    rows, trues, owners = [], [], []
    for ti, text in enumerate(texts):
        ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
        for j, t in enumerate(ids):
            if t not in special:
                masked = list(ids)
                masked[j] = tok.mask_token_id
                rows.append((masked, j))
                trues.append(t)
                owners.append(ti)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            T = max(len(r[0]) for r in chunk)
            inp = torch.zeros(len(chunk), T, dtype=torch.long)
            att = torch.zeros(len(chunk), T, dtype=torch.long)
            for i, (ids, _) in enumerate(chunk):
                inp[i, :len(ids)] = torch.tensor(ids)
                att[i, :len(ids)] = 1
            pos = torch.tensor([r[1] for r in chunk])
            h = model.bert(input_ids=inp.to(dev), attention_mask=att.to(dev))[0]
            logits = model.cls.predictions(h[torch.arange(len(chunk)), pos.to(dev)])
            out.append(torch.log_softmax(logits.double(), -1).cpu().numpy())
    V = model.config.vocab_size
    return {"logp": np.concatenate(out) if out else np.zeros((0, V)), "true": np.array(trues, dtype=int),
            "text": np.array(owners, dtype=int)}


def grid_share(cells, method: str, k: int, tol: float, ratios=None) -> float:
    """The share of the runs of ``cells`` (from :func:`convergence_grid`, optionally only those with
    a ratio in ``ratios``) that :func:`converged` after ``k`` steps of ``method`` within ``tol``
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    sel = [c for c in cells if ratios is None or any(np.isclose(c["ratio"], r) for r in ratios)]
    ok = np.concatenate([converged(c, method, k, tol) for c in sel])
    return float(ok.mean()) if ok.size else float("nan")


def grid_nonpositive_share(cells, ratios=None) -> float:
    """The share of the runs of ``cells`` in which Su's iteration took a step ``γ ≤ 0``
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    sel = [c for c in cells if ratios is None or any(np.isclose(c["ratio"], r) for r in ratios)]
    return float(np.concatenate([c["su_min_step"] <= 0 for c in sel]).mean())


def group_means(x, groups) -> np.ndarray:
    """The mean of ``x`` within each group label (labels in sorted order), e.g. per-headline means
    of per-position values, the units of the chapter's bootstrap (https://kexue.fm/archives/8829,
    chapter ``entropy-normalization``)."""
    x = np.asarray(x, dtype=np.float64)
    labels, inv = np.unique(np.asarray(groups), return_inverse=True)
    return np.bincount(inv, weights=x) / np.bincount(inv)


def sampler_streams(logp, true, top_p: float = 0.9, top_k: int = 40, iters: int = 4) -> dict:
    """The samplers of the chapter on one stream of distributions (rows of ``logp``, true token
    ``true`` per row): ``raw``, ``top-p``, ``top-k``, and, at the mean entropy of each truncated
    stream, constant-entropy (``entnorm@top-p``, ``entnorm@top-k``: :func:`newton_normalize`, Su's
    step, ``iters`` iterations) and one global temperature (``temp@top-p``, ``temp@top-k``). Per
    sampler: ``H`` (entropy per row), ``acc`` (p̃(true): the chance that one sample is the true token)
    and ``tail`` (the mass put outside the raw distribution's top-p 0.99 nucleus); ``targets`` holds
    the two matched mean entropies and the temperatures' γ (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    lp = np.asarray(logp, dtype=np.float64)
    rows = np.arange(len(lp))
    nucleus = np.isfinite(truncate_top_p(lp, 0.99))

    def summary(q):
        return {"H": entropy_of_logp(q), "acc": np.exp(q[rows, true]),
                "tail": np.sum(np.where(nucleus, 0.0, np.exp(q)), axis=-1)}

    out, targets = {"raw": summary(lp)}, {}
    for name, q in (("top-p", truncate_top_p(lp, top_p)), ("top-k", truncate_top_k(lp, top_k))):
        s = out[name] = summary(q)
        h = float(s["H"].mean())
        g = global_gamma_for_mean_entropy(lp, h)
        targets[name] = {"H": h, "gamma": g}
        out[f"entnorm@{name}"] = summary(newton_normalize(lp, h, iters=iters)["logp"])
        out[f"temp@{name}"] = summary(power_transform(lp, g))
    out["targets"] = targets
    return out


def seed_shares(grids, method: str, k: int, tol: float, ratios=None) -> np.ndarray:
    """:func:`grid_share` of each seed's grid (``grids``: one :func:`convergence_grid` per seed): the
    per-seed values the chapter's claims are scored on (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    return np.array([grid_share(g, method, k, tol, ratios=ratios) for g in grids])


def seed_nonpositive_shares(grids, ratios=None) -> np.ndarray:
    """:func:`grid_nonpositive_share` of each seed's grid (https://kexue.fm/archives/8829, chapter
    ``entropy-normalization``)."""
    return np.array([grid_nonpositive_share(g, ratios=ratios) for g in grids])


def grouped_interval(x, groups, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the per-group means of ``x`` and its 90 % percentile bootstrap
    interval over groups (:func:`kexue.stats.bootstrap_interval`), e.g. positions grouped by headline
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    from . import stats
    return stats.bootstrap_interval(group_means(x, groups), n_resamples=n_resamples, seed=seed)


def grouped_paired_interval(a, b, groups, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(difference, lo, hi): mean of per-group means of ``a`` minus that of ``b``, with the 90 % paired
    percentile bootstrap over groups (:func:`kexue.stats.paired_bootstrap_interval`)
    (https://kexue.fm/archives/8829, chapter ``entropy-normalization``)."""
    from . import stats
    return stats.paired_bootstrap_interval(group_means(a, groups), group_means(b, groups),
                                           n_resamples=n_resamples, seed=seed)
