"""Contrastive losses: InfoNCE (softmax cross-entropy over one positive and K − 1 negatives) and
FlatNCE, with float64 references and the float32 rounding diagnostics of the FlatNCE argument.

From https://kexue.fm/archives/8586 (chapter ``flatnce``), which discusses Chen et al., "Simpler,
Faster, Stronger: Breaking The log-K Curse On Contrastive Learners With FlatNCE" (arXiv 2107.01152).

For one anchor with scores ``s_1 … s_K`` (e.g. cos / τ) and the positive at index ``t``, write
``ξ = Σ_{i≠t} exp(s_i − s_t)``. Then

    InfoNCE  ℓ_CE = logsumexp(s) − s_t = log(1 + ξ),   ∂ℓ/∂s_t = −ξ/(1+ξ) = p_t − 1,  ∂ℓ/∂s_i = p_i
    FlatNCE  ℓ_F  = logsumexp_{i≠t}(s_i) − s_t = log ξ, ∂ℓ/∂s_t = −1,  ∂ℓ/∂s_i = e^{s_i}/Σ_{j≠t} e^{s_j}

so ∇ℓ_F = (1 + ξ)/ξ · ∇ℓ_CE row by row: the same direction, rescaled. The paper writes FlatNCE as
ξ / sg(ξ) (value 1, gradient ∇ξ/ξ = ∇ log ξ); Su's form is the log, which may be negative.

The float32 failure mode: once ξ < 2⁻²⁴ ≈ 6e-8, ``1 + ξ`` rounds to 1, so the computed loss is
exactly 0 and the computed p_t exactly 1: autograd's ∂ℓ/∂s_t = p_t − 1 becomes 0 while the
negatives keep their tiny p_i, and a row's score gradient no longer sums to 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _check(scores: torch.Tensor, pos: torch.Tensor) -> None:
    if scores.ndim != 2 or pos.ndim != 1 or len(pos) != len(scores):
        raise ValueError(f"scores must be (n, K) and pos (n,); got {tuple(scores.shape)} and {tuple(pos.shape)}")
    if scores.shape[1] < 2:
        raise ValueError("a contrastive loss needs K >= 2 candidates (one positive, at least one negative)")


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "sum":
        return v.sum()
    if reduction == "none":
        return v
    raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")


def positive_scores(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """s_t of every row. Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    return scores.gather(1, pos[:, None]).squeeze(1)


def negatives_logsumexp(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """logsumexp over the negatives of every row: the positive's logit set to −∞ first (entries that
    are already −∞, e.g. a masked self-similarity, stay out). Chapter ``flatnce``
    (https://kexue.fm/archives/8586)."""
    _check(scores, pos)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, pos[:, None], True)
    return torch.logsumexp(scores.masked_fill(mask, NEG_INF), dim=1)


def xi(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """ξ = Σ_{i≠t} exp(s_i − s_t) per row, computed stably as exp(logsumexp_{i≠t} s_i − s_t).
    Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    return torch.exp(negatives_logsumexp(scores, pos) - positive_scores(scores, pos))


def infonce(scores: torch.Tensor, pos: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """InfoNCE = softmax cross-entropy of the positive, logsumexp(s) − s_t = log(1 + ξ), through
    ``F.cross_entropy`` (what training code calls). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    _check(scores, pos)
    return F.cross_entropy(scores, pos, reduction=reduction)


def infonce_naive(scores: torch.Tensor, pos: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The textbook form log(1 + Σ_{i≠t} exp(s_i − s_t)), with ``log`` (not ``log1p``): the way the
    article writes the loss, to show the rounding of 1 + ξ. Chapter ``flatnce``
    (https://kexue.fm/archives/8586)."""
    _check(scores, pos)
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, pos[:, None], True)
    d = (scores - positive_scores(scores, pos)[:, None]).masked_fill(mask, NEG_INF)
    return _reduce(torch.log(1 + torch.exp(d).sum(1)), reduction)


def flatnce(scores: torch.Tensor, pos: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """FlatNCE in Su's form: log ξ = logsumexp_{i≠t}(s_i) − s_t, the cross-entropy with the positive
    taken out of the logsumexp (may be negative). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    return _reduce(negatives_logsumexp(scores, pos) - positive_scores(scores, pos), reduction)


def flatnce_sg(scores: torch.Tensor, pos: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """FlatNCE in the paper's form ξ / sg(ξ): value 1 per row, gradient ∇ξ / ξ (computed as
    exp(log ξ − sg(log ξ)), so no ξ is ever formed). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    lx = flatnce(scores, pos, reduction="none")
    return _reduce(torch.exp(lx - lx.detach()), reduction)


LOSSES = {"infonce": infonce, "flatnce": flatnce}


def in_batch_scores(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent candidates for a batch of B pairs of views: the 2B × 2B cosine matrix of
    ``[z1; z2]`` divided by ``tau``, each row's self-similarity set to −∞, and the positive of row i
    its other view (i ± B). So each row has one positive and 2B − 2 negatives (K = 2B − 1). Returns
    ``(scores, pos)``. Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    B = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    s = (z @ z.T) / tau
    s = s.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=s.device), NEG_INF)
    pos = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(s.device)
    return s, pos


def score_grad(loss_fn, scores: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """∂(Σ_rows ℓ)/∂scores, each row its own sample's gradient, computed by autograd in ``dtype``
    (default: the scores' own). ``loss_fn(scores, pos, reduction)`` is e.g. :func:`infonce`. Chapter
    ``flatnce`` (https://kexue.fm/archives/8586)."""
    s = scores.detach().to(dtype or scores.dtype).requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(s, pos, reduction="sum"), s)
    return g


def gap_scores(K: int, gaps, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic rows for a sweep: row j has the positive (index 0) at score ``gaps[j]`` and K − 1
    negatives at 0, so ξ = (K − 1) e^{−gap}. Returns ``(scores, pos)``. Chapter ``flatnce``
    (https://kexue.fm/archives/8586)."""
    g = torch.as_tensor(gaps, dtype=dtype)
    s = torch.zeros(len(g), K, dtype=dtype)
    s[:, 0] = g
    return s, torch.zeros(len(g), dtype=torch.long)


def rel_err(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|approx − exact| / |exact| elementwise in float64 (inf where exact is 0 and approx is not, 0
    where both are). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    a, e = approx.double(), exact.double()
    d = (a - e).abs()
    return torch.where(d == 0, torch.zeros_like(d), d / e.abs())


def rounding_report(scores: torch.Tensor, pos: torch.Tensor) -> dict:
    """What float32 does to InfoNCE and FlatNCE at these scores, row by row, against float64.

    The scores are rounded to float32 first (the values a float32 model computes), and both precisions
    start from those same values, so every difference below is the arithmetic's, not the inputs'.
    Returns float64 tensors of length n: ``xi`` (float64), ``loss32`` / ``loss64`` (InfoNCE by
    ``F.cross_entropy``), ``loss_naive32`` (:func:`infonce_naive` in float32), ``gpos32`` /
    ``gpos64`` (∂ℓ_CE/∂s_t), ``gsum32`` (the float32 row sum of ∂ℓ_CE/∂s, exactly 0 in exact
    arithmetic), ``flat32`` / ``flat64`` (FlatNCE values), ``fpos32`` and ``fneg_err`` (FlatNCE's ∂/∂s_t
    in float32, and the largest relative error of its negatives' gradients), plus the relative errors
    ``loss_err``, ``gpos_err``, ``flat_err`` and the boolean ``pos_zero`` (float32 ∂ℓ_CE/∂s_t exactly
    0: p_t rounded to 1). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    s32 = scores.detach().float()
    s64 = s32.double()
    with torch.no_grad():
        l32, l64 = infonce(s32, pos, "none"), infonce(s64, pos, "none")
        naive32 = infonce_naive(s32, pos, "none")
        f32, f64 = flatnce(s32, pos, "none"), flatnce(s64, pos, "none")
        x64 = xi(s64, pos)
    g32 = score_grad(infonce, s32, pos)
    g64 = score_grad(infonce, s64, pos)
    h32 = score_grad(flatnce, s32, pos)
    h64 = score_grad(flatnce, s64, pos)
    gp32, gp64 = positive_scores(g32, pos).double(), positive_scores(g64, pos)
    neg = ~torch.zeros_like(s32, dtype=torch.bool).scatter_(1, pos[:, None], True) & torch.isfinite(s64)
    hn_err = torch.where(neg, rel_err(h32, h64), torch.zeros_like(h64)).amax(1)
    return {"xi": x64, "loss32": l32.double(), "loss64": l64, "loss_naive32": naive32.double(),
            "gpos32": gp32, "gpos64": gp64, "gsum32": g32.sum(1).double(),
            "flat32": f32.double(), "flat64": f64, "fpos32": positive_scores(h32, pos).double(),
            "fneg_err": hn_err, "loss_err": rel_err(l32, l64), "gpos_err": rel_err(gp32, gp64),
            "flat_err": rel_err(f32, f64), "pos_zero": gp32 == 0}
