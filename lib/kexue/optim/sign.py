"""Sign-based optimizers (Lion, Tiger) and the embedding drift they cause on rare tokens.

From https://kexue.fm/archives/9736 (Lion/Tiger优化器训练下的Embedding异常和对策, chapter
``lion-tiger-embedding``); Tiger is https://kexue.fm/archives/9512 (code ``bojone/tiger``), Lion is
Chen et al., arXiv 2302.06675.

Lion (β1, β2, decoupled decay λ):

    u_t = sign(β1 m_{t-1} + (1 − β1) g_t)
    θ_t = θ_{t-1} − η [u_t + λ θ_{t-1}]
    m_t = β2 m_{t-1} + (1 − β2) g_t

Tiger is Lion with β1 = β2 = β: m_t = β m_{t-1} + (1 − β) g_t, θ_t = θ_{t-1} − η[sign(m_t) + λθ_{t-1}].

Why rare embedding rows drift: once a token has appeared, its row of m is non-zero; while the token is
absent (g = 0) the momentum only decays, but sign(m) keeps magnitude 1, so the row keeps moving at full
speed towards the fixed point of θ ← θ − η[s + λθ], θ* = −s/λ (±100 at λ = 0.01). With constant s and η:

    θ_t = (1 − ηλ)^t θ_0 − (1 − (1 − ηλ)^t) s / λ.

``lazy_rows=True`` (the article's first fix) leaves a row of a matrix parameter untouched (no update, no
decay, momentum kept) when its gradient row is exactly zero, i.e. when the token was absent.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.optimizer import Optimizer


def _present_rows(grad: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask over the first axis: rows whose gradient is not all zero (None for vectors)."""
    if grad.ndim < 2:
        return None
    return grad.reshape(grad.shape[0], -1).ne(0).any(dim=1)


def _rms(p: torch.Tensor, rows: bool) -> torch.Tensor:
    if rows and p.ndim >= 2:
        r = p.reshape(p.shape[0], -1).pow(2).mean(dim=1).sqrt()
        return r.reshape((-1,) + (1,) * (p.ndim - 1))
    return p.pow(2).mean().sqrt()


class Lion(Optimizer):
    """Lion (arXiv 2302.06675) with decoupled weight decay inside the bracket,
    θ ← θ − η[sign(β1 m + (1−β1) g) + λθ], then m ← β2 m + (1−β2) g; equal step for step to
    ``lion_pytorch.Lion`` (tested in float64). ``lazy_rows`` (per group): rows of a matrix whose
    gradient row is zero are left unchanged, momentum included (https://kexue.fm/archives/9736,
    chapter ``lion-tiger-embedding``)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 lazy_rows: bool = False, *, rms_scale: bool = False, rms_rows: bool = False):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1], got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      lazy_rows=lazy_rows, rms_scale=rms_scale, rms_rows=rms_rows))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise ValueError("sparse gradients are not supported: use nn.Embedding(sparse=False); "
                                     "lazy_rows=True gives the lazy update from the dense gradient")
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                eta = lr * _rms(p, group["rms_rows"]) if group["rms_scale"] else lr
                mask = _present_rows(g) if group["lazy_rows"] else None
                if mask is None:
                    upd = (m * b1).add_(g, alpha=1 - b1).sign_()
                    if torch.is_tensor(eta):
                        p.sub_(eta * wd * p).sub_(eta * upd)
                    else:
                        p.mul_(1 - eta * wd).add_(upd, alpha=-eta)
                    m.mul_(b2).add_(g, alpha=1 - b2)
                else:
                    if not mask.any():
                        continue
                    idx = mask.nonzero().squeeze(1)
                    pr, gr, mr = p[idx], g[idx], m[idx]
                    er = eta[idx] if torch.is_tensor(eta) and eta.ndim > 0 else eta
                    upd = (mr * b1).add_(gr, alpha=1 - b1).sign_()
                    pr = pr - er * wd * pr - er * upd
                    mr = mr * b2 + (1 - b2) * gr
                    p[idx] = pr
                    m[idx] = mr
        return loss


class Tiger(Lion):
    """Tiger (https://kexue.fm/archives/9512): Lion with β1 = β2 = β, so one momentum and
    θ ← θ − η[sign(m) + λθ]. Defaults of ``bojone/tiger``: lr 1e-3, β 0.965, λ 0.01.
    ``lazy_rows``: the article's lazy fix (rows with a zero gradient row are skipped);
    ``rms_scale``: the step is η × RMS(θ) (``bojone/tiger``'s parameter-scaled learning rate; per row
    for groups with ``rms_rows=True``, e.g. an embedding; ours: no floor, so a zero tensor stays put).
    Used by chapter ``lion-tiger-embedding`` (https://kexue.fm/archives/9736)."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.965, weight_decay: float = 0.01,
                 lazy_rows: bool = False, rms_scale: bool = False, rms_rows: bool = False):
        super().__init__(params, lr=lr, betas=(beta, beta), weight_decay=weight_decay, lazy_rows=lazy_rows,
                         rms_scale=rms_scale, rms_rows=rms_rows)


def sign_drift_closed_form(theta0, s, lr: float, weight_decay: float, t):
    """θ_t = (1 − ηλ)^t θ_0 − (1 − (1 − ηλ)^t) s/λ: a row under θ ← θ − η[s + λθ] with constant sign s
    (https://kexue.fm/archives/9736, §计算; chapter ``lion-tiger-embedding``)."""
    q = (1.0 - lr * weight_decay) ** np.asarray(t, dtype=float)
    return q * np.asarray(theta0, dtype=float) - (1.0 - q) * np.asarray(s, dtype=float) / weight_decay


def underflow_horizon(m0: float, beta: float, dtype=torch.float32, to: str = "subnormal") -> float:
    """The naive number of steps t = ln(x/|m0|)/ln β for a momentum that only decays (g = 0) to fall to
    x: the smallest subnormal of ``dtype`` (``to="subnormal"``, 1.4e-45 in float32) or the smallest
    normal number (``to="normal"``, 1.2e-38) (https://kexue.fm/archives/9736, chapter
    ``lion-tiger-embedding``)."""
    fi = torch.finfo(dtype)
    x = fi.tiny * fi.eps if to == "subnormal" else fi.tiny
    return math.log(x / abs(m0)) / math.log(beta)


def momentum_underflow_steps(m0: float, beta: float, dtype=torch.float32, max_steps: int = 1_000_000) -> dict:
    """Simulate an absent token's momentum, m ← β m + (1 − β)·0 in ``dtype`` (as Tiger/Lion compute it),
    from m0 until it is exactly 0 or stops changing. Returns ``{to_subnormal, to_zero, stuck_at,
    final}``: the first step at which |m| falls below the smallest normal number, the first step at
    which m == 0 (None if never), the step after which m no longer changes (round-to-nearest keeps
    k·2^-149 fixed when β > 1/2), and the last value. ``torch.sign(0) = 0`` ends the drift only at
    ``to_zero`` (https://kexue.fm/archives/9736, chapter ``lion-tiger-embedding``)."""
    m = torch.tensor([m0], dtype=dtype)
    zero = torch.zeros_like(m)
    tiny = torch.finfo(dtype).tiny
    to_sub, to_zero, stuck = None, None, None
    for t in range(1, max_steps + 1):
        new = (m * beta).add_(zero, alpha=1 - beta)
        if to_sub is None and abs(new.item()) < tiny:
            to_sub = t
        if new.item() == 0.0:
            to_zero = t
            m = new
            break
        if torch.equal(new, m):
            stuck = t - 1
            break
        m = new
    return {"to_subnormal": to_sub, "to_zero": to_zero, "stuck_at": stuck, "final": float(m.item())}


def embedding_outlier_report(E, counts, weight_decay: float, *, rare_frac: float = 0.2,
                             frequent_frac: float = 0.2, threshold: float = 0.5) -> dict:
    """How far an embedding table has drifted towards the sign optimizers' fixed point ±1/λ.

    ``E``: (V, d) table; ``counts``: how often each row's token occurred in training. Among the rows
    seen at least once, sorted by count, the rarest ``rare_frac`` and the most frequent
    ``frequent_frac``; rows never seen apart. Returns ``max_abs`` (global max |E|), ``max_abs_ratio``
    (max |E| · λ, 1 at the fixed point), ``share_rare`` / ``share_frequent`` / ``share_unseen`` (share
    of those rows whose max |E_row| exceeds ``threshold``/λ), ``mean_abs_rare`` / ``mean_abs_frequent``,
    and the group sizes (https://kexue.fm/archives/9736, chapter ``lion-tiger-embedding``)."""
    E = torch.as_tensor(E).detach().float().cpu()
    counts = np.asarray(counts)
    if counts.shape[0] != E.shape[0]:
        raise ValueError(f"counts has {counts.shape[0]} rows, E has {E.shape[0]}")
    row_max = E.abs().amax(dim=1).numpy()
    row_mean = E.abs().mean(dim=1).numpy()
    bar = threshold / weight_decay
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(counts[seen], kind="stable")]
    n_r = max(1, int(round(rare_frac * len(order))))
    n_f = max(1, int(round(frequent_frac * len(order))))
    rare, freq = order[:n_r], order[-n_f:]
    unseen = np.flatnonzero(counts == 0)

    def share(ix):
        return float(np.mean(row_max[ix] > bar)) if len(ix) else float("nan")

    return {"max_abs": float(row_max.max()), "max_abs_ratio": float(row_max.max() * weight_decay),
            "share_rare": share(rare), "share_frequent": share(freq), "share_unseen": share(unseen),
            "share_all_seen": share(seen),
            "mean_abs_rare": float(row_mean[rare].mean()), "mean_abs_frequent": float(row_mean[freq].mean()),
            "n_rare": int(len(rare)), "n_frequent": int(len(freq)), "n_unseen": int(len(unseen)),
            "rare_max_count": int(counts[rare].max()), "frequent_min_count": int(counts[freq].min())}
