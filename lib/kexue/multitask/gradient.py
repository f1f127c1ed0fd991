r"""Multi-task learning through the gradients: the min-norm direction (MGDA) and its upper bound, after
多任务学习漫谈（二）：行梯度之事 (https://kexue.fm/archives/8896), used by chapter ``multitask-gradient``.
The full text of the article was not found offline; what follows is the standard construction of
Désidéri (2012) and Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS
2018), which the article's section list (a third-party summary) follows.

With task gradients :math:`g_i=\nabla_\theta L_i` and the update :math:`\theta\leftarrow\theta-\eta u`,
look for a direction that decreases every task to first order, :math:`\langle g_i,u\rangle>0`. Posed as
:math:`\max_u \min_i\langle g_i,u\rangle-\tfrac12\lVert u\rVert^2`, its dual is the min-norm point of
the convex hull of the gradients,

.. math:: u^*=\sum_i\alpha_i g_i,\qquad \alpha^*=\arg\min_{\alpha\in\Delta}\Big\lVert\sum_i\alpha_ig_i\Big\rVert^2 ,

and the optimality (KKT) conditions give :math:`\langle g_i,u^*\rangle\ge\lVert u^*\rVert^2` for every
i: either :math:`u^*=0` (the point is Pareto-stationary) or every task decreases for a small step.

- :func:`two_task_min_norm`: the closed form for n = 2,
  :math:`\alpha=\mathrm{clip}(\langle g_2-g_1,g_2\rangle/\lVert g_1-g_2\rVert^2,0,1)` for
  :math:`\alpha g_1+(1-\alpha)g_2`.
- :func:`min_norm_element`: Frank–Wolfe on the simplex with exact line search, on the Gram matrix
  :math:`M=GG^\top` only (n × n, so P never enters the loop). ``variant='plain'`` is the iteration of
  Sener & Koltun's solver (vertex :math:`t=\arg\min_r(M\alpha)_r`, line search between :math:`u`
  and :math:`g_t`), whose error falls only like 1/k when the optimum lies on a face; ``'away'`` adds
  away steps (Lacoste-Julien & Jaggi 2015); ``'corrective'`` (default) adds Wolfe's (1976) correction
  on the active face, which ends exactly. It stops when the Frank–Wolfe gap :math:`\lVert u\rVert^2-\min_i\langle g_i,u\rangle` (an upper bound on the
  objective's error, and the KKT residual) falls below ``tol``.
- :func:`mgda_direction`: α for (optionally normalised) gradients, and the effective weights
  :math:`w_i=\alpha_i/c_i` with :math:`u=\sum_i w_ig_i`; normalisations as in Sener & Koltun:
  ``unit``/``l2`` :math:`c_i=\lVert g_i\rVert`, ``loss`` :math:`c_i=L_i`, ``loss+``
  :math:`c_i=L_i\lVert g_i\rVert`.
- :func:`per_task_grads`: the matrix G of per-task gradients with respect to the shared parameters
  (``wrt='params'``: n backward passes through the trunk) or the shared representation Z
  (``wrt='repr'``: MGDA-UB, whose α costs only the heads' backward passes).
- :class:`MGDAStepper`: wraps an optimizer for :func:`kexue.train.fit`; records, after every step, both
  losses recomputed on the same batch (did the step raise a task's loss?).

The trunk update :math:`\sum_i w_ig_i` is applied with one backward pass of the surrogate
:math:`\sum_i L_i(\mathrm{head}_i(Z_i))`, :math:`Z_i=w_iZ+(1-w_i)\,\mathrm{sg}[Z]` (:func:`weighted_repr`):
its value is the plain sum, the trunk receives :math:`\sum_iw_i\,\partial L_i/\partial\theta`, and each
head its own full gradient, as in Sener & Koltun's code.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NORMALIZE = (None, "none", "unit", "l2", "loss", "loss+")


# ------------------------------------------------------------------------------- the solvers

def two_task_min_norm(g1, g2) -> float:
    r"""α ∈ [0, 1] minimising ‖α g1 + (1 − α) g2‖²: clip(⟨g2 − g1, g2⟩ / ‖g1 − g2‖², 0, 1); 0.5 when
    g1 = g2. Tensors or arrays of any shape. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    g1 = torch.as_tensor(g1, dtype=torch.float64).reshape(-1)
    g2 = torch.as_tensor(g2, dtype=torch.float64).reshape(-1)
    d = g1 - g2
    dd = float(d @ d)
    if dd <= 1e-300:
        return 0.5
    return float(min(1.0, max(0.0, float((g2 - g1) @ g2) / dd)))


def _gram(G) -> np.ndarray:
    G = torch.as_tensor(G).detach().to(torch.float64).reshape(len(G), -1)
    return (G @ G.T).cpu().numpy()


def _affine_min(M: np.ndarray, S: np.ndarray) -> np.ndarray:
    """The minimiser of βᵀMβ over the affine hull of the vertices S (Σβ = 1, zero outside S), from
    the bordered KKT system (least squares where it is singular)."""
    k = len(S)
    A = np.zeros((k + 1, k + 1))
    A[:k, :k] = M[np.ix_(S, S)]
    A[:k, k] = A[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    sol = np.linalg.lstsq(A, rhs, rcond=None)[0][:k]
    return sol / sol.sum()


def min_norm_element(G, max_iter: int = 250, tol: float = 1e-12, *, variant: str = "corrective",
                     return_info: bool = False):
    r"""α on the simplex minimising ‖αᵀG‖² for the rows of ``G`` (n × P), by Frank–Wolfe on the Gram
    matrix M = GGᵀ, starting at α = 1/n (see the module docstring). Each iteration picks the
    Frank–Wolfe vertex t = argmin_r (Mα)_r and moves by exact line search; ``variant``:

    - ``"simplified"``: toward g_t with the fixed step γ = 1/k (the article's "simplified Frank–Wolfe",
      equal to its smoothed-min iteration, :func:`smoothed_min_iteration`); no stopping test but
      ``max_iter``;
    - ``"plain"``: toward g_t only (Sener & Koltun's iteration; error ~ 1/k on a face);
    - ``"away"``: or away from the worst active vertex (Lacoste-Julien & Jaggi 2015; linear rate);
    - ``"corrective"`` (default): after adding t, the minimiser over the affine hull of the active
      vertices, walked back into the simplex where it leaves it (Wolfe's 1976 min-norm-point
      correction): exact after finitely many iterations, at most n per face change.

    Stops when the Frank–Wolfe gap αᵀMα − min_r (Mα)_r (≥ the objective's error; the KKT residual)
    is ≤ ``tol``, or after ``max_iter`` iterations. Degenerate directions end the loop (the guarded
    line search). Returns α (float64 numpy); with ``return_info`` also ``{iters, gap, objective,
    history}`` (the objective after each iteration). https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    if variant not in ("plain", "away", "corrective", "simplified"):
        raise ValueError(f"variant must be 'plain', 'away', 'corrective' or 'simplified', got {variant!r}")
    M = _gram(G)
    n = len(M)
    if n == 0:
        raise ValueError("min_norm_element needs at least one gradient")
    alpha = np.full(n, 1.0 / n)
    hist = []
    it = 0
    for it in range(1, max_iter + 1):
        Ma = M @ alpha
        f = float(alpha @ Ma)
        t = int(np.argmin(Ma))
        gap = f - float(Ma[t])
        if variant == "simplified":
            alpha = (1.0 - 1.0 / it) * alpha
            alpha[t] += 1.0 / it
            hist.append(float(alpha @ M @ alpha))
            continue
        if gap <= tol:
            it -= 1
            break
        if variant == "corrective":
            S = np.union1d(np.flatnonzero(alpha > 0), [t])
            if alpha[t] == 0:   # first a line search toward the new vertex, then correct on the face
                d = -alpha.copy()
                d[t] += 1.0
                dMd = float(d @ M @ d)
                if dMd > 1e-300 and float(d @ Ma) < 0:
                    alpha = alpha + min(1.0, -float(d @ Ma) / dMd) * d
            for _ in range(n + 1):
                beta = np.zeros(n)
                beta[S] = _affine_min(M, S)
                if np.all(beta[S] >= -1e-15):
                    new = np.clip(beta, 0.0, None)
                    if float(new @ M @ new) <= float(alpha @ M @ alpha):
                        alpha = new
                    break
                neg = S[beta[S] < 0]
                theta = float(np.min(alpha[neg] / (alpha[neg] - beta[neg])))
                alpha = np.clip(alpha + theta * (beta - alpha), 0.0, None)
                S = S[alpha[S] > 1e-15]
            alpha = np.clip(alpha, 0.0, None)
            alpha /= alpha.sum()
            hist.append(float(alpha @ M @ alpha))
            continue
        d = -alpha.copy()
        d[t] += 1.0                      # toward vertex t
        gmax = 1.0
        if variant == "away":
            act = np.flatnonzero(alpha > 0)
            s = int(act[np.argmax(Ma[act])])
            away_gap = float(Ma[s]) - f
            if away_gap > gap and alpha[s] < 1.0:     # move away from vertex s
                d = alpha.copy()
                d[s] -= 1.0
                gmax = alpha[s] / (1.0 - alpha[s])
        # f(α + γ d) = f + 2γ dᵀMα + γ² dᵀMd
        dMd = float(d @ M @ d)
        slope = float(d @ Ma)
        if dMd <= 1e-300 or slope >= 0:
            break
        gamma = min(gmax, -slope / dMd)
        alpha = np.clip(alpha + gamma * d, 0.0, None)
        alpha /= alpha.sum()
        hist.append(float(alpha @ M @ alpha))
    Ma = M @ alpha
    f = float(alpha @ Ma)
    gap = f - float(Ma.min())
    if return_info:
        return alpha, {"iters": it, "gap": gap, "objective": f, "history": hist}
    return alpha


def smoothed_min_iteration(G, iters: int) -> tuple[np.ndarray, list]:
    r"""The article's own solver, from the smoothed min (logsumexp, λ → ∞): u ← (k u + g_τ)/(k + 1),
    τ = argmin_i ⟨g_i, u⟩, k = 0, 1, …, in the gradients' own space (P-dimensional), from u = the mean
    gradient. Returns (u, objective ‖u‖² after each iteration). The article notes it equals Frank–Wolfe
    with γ = 1/(k+1) (``min_norm_element(variant='simplified')``). https://kexue.fm/archives/8896,
    chapter ``multitask-gradient``."""
    G = torch.as_tensor(G).detach().to(torch.float64).reshape(len(G), -1).cpu().numpy()
    u = G.mean(0)
    hist = []
    for k in range(iters):
        tau = int(np.argmin(G @ u))
        u = (k * u + G[tau]) / (k + 1)
        hist.append(float(u @ u))
    return u, hist


def ub_counterexample() -> dict:
    r"""Su's counterexample to the lemma in Sener & Koltun's Appendix A ("M symmetric positive definite:
    xᵀy ≥ 0 iff xᵀMy ≥ 0"): x = (1, −2), y = (1, 1), M = diag(3, 1) give xᵀy = −1 < 0 < xᵀMy = 1. And a
    shared-encoder case built on the same idea, where the upper bound's direction raises a task to first
    order: H = Aθ with A = diag(1, √3) (full rank, AAᵀ = diag(1, 3)), ∇_H L_1 = (4, −2), ∇_H L_2 =
    (−2, 4). Their min-norm point is v = (1, 1); the UB update u = Aᵀv has ⟨g_1, u⟩ = ∇_H L_1ᵀ AAᵀ v =
    −2 < 0 with g_i = Aᵀ∇_H L_i. Returns the numbers. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    x, y, M = np.array([1.0, -2.0]), np.array([1.0, 1.0]), np.diag([3.0, 1.0])
    A = np.diag([1.0, np.sqrt(3.0)])
    Hg = np.array([[4.0, -2.0], [-2.0, 4.0]])
    a = two_task_min_norm(Hg[0], Hg[1])
    v = a * Hg[0] + (1 - a) * Hg[1]
    u_ub = A.T @ v
    Gt = Hg @ A                      # rows g_i = Aᵀ ∇_H L_i
    u_full, _, _ = mgda_direction(torch.tensor(Gt))
    return {"xy": float(x @ y), "xMy": float(x @ M @ y), "v": v.tolist(),
            "ub_inner": (Gt @ u_ub).tolist(), "full_inner": (Gt @ u_full.numpy()).tolist(),
            "full_norm2": float(u_full.numpy() @ u_full.numpy())}


def min_norm_reference(G) -> tuple[np.ndarray, float]:
    """The reference QP: ``scipy.optimize.minimize`` (SLSQP, ftol 1e-15, 1,000 iterations) of αᵀMα over
    the simplex, from α = 1/n; returns (α, objective). For tests and the chapter's solver check only
    (https://kexue.fm/archives/8896, chapter ``multitask-gradient``)."""
    from scipy.optimize import minimize

    M = _gram(G)
    n = len(M)
    r = minimize(lambda a: float(a @ M @ a), np.full(n, 1.0 / n), jac=lambda a: 2 * M @ a, method="SLSQP",
                 bounds=[(0.0, 1.0)] * n, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0,
                                                        "jac": lambda a: np.ones_like(a)}],
                 options={"ftol": 1e-15, "maxiter": 1000})
    a = np.clip(r.x, 0, None)
    a /= a.sum()
    return a, float(a @ M @ a)


def kkt_residual(G, alpha) -> float:
    r"""max_i (‖u‖² − ⟨g_i, u⟩) for u = αᵀG: ≤ 0 at the min-norm point (⟨g_i, u*⟩ ≥ ‖u*‖²), the
    Frank–Wolfe gap otherwise. https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    M = _gram(G)
    Ma = M @ np.asarray(alpha, dtype=np.float64)
    return float(np.asarray(alpha) @ Ma - Ma.min())


def is_pareto_stationary(G, tol: float = 1e-8) -> bool:
    """Whether the min-norm point of the gradients' hull has ‖u*‖² ≤ ``tol`` (no common descent
    direction). https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    _, info = min_norm_element(G, max_iter=1000, return_info=True)
    return info["objective"] <= tol


def mgda_direction(grads, normalize=None, losses=None, *, max_iter: int = 250):
    r"""The MGDA direction for per-task gradients ``grads`` (a list of tensors of one shape, or an
    n × P tensor): returns ``(u, alpha, weights)`` with α the min-norm weights of the normalised
    gradients g_i / c_i and ``weights`` w_i = α_i / c_i, so that u = Σ w_i g_i (shape of one gradient).
    ``normalize``: None/'none' (c_i = 1), 'unit' or 'l2' (‖g_i‖), 'loss' (L_i, needs ``losses``),
    'loss+' (L_i‖g_i‖). Zero-norm gradients get c_i = 1. n = 2 uses :func:`two_task_min_norm`,
    otherwise :func:`min_norm_element`. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    G = torch.stack([torch.as_tensor(g).reshape(-1) for g in grads]) if not torch.is_tensor(grads) \
        else grads.reshape(len(grads), -1)
    shape = (torch.as_tensor(grads[0]).shape if not torch.is_tensor(grads) else grads.shape[1:])
    n = len(G)
    norms = G.detach().to(torch.float64).norm(dim=1).cpu().numpy()
    c = np.ones(n)
    if normalize in ("unit", "l2", "loss+"):
        c = np.where(norms > 1e-20, norms, 1.0)
    if normalize in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalize={normalize!r} needs the losses")
        c = c * np.array([float(L) for L in losses])
    Gn = G.detach().to(torch.float64) / torch.as_tensor(c, device=G.device).reshape(-1, 1)
    if n == 2:
        a = two_task_min_norm(Gn[0], Gn[1])
        alpha = np.array([a, 1.0 - a])
    else:
        alpha = min_norm_element(Gn, max_iter=max_iter)
    w = alpha / c
    u = (torch.as_tensor(w, dtype=G.dtype, device=G.device).reshape(-1, 1) * G).sum(0).reshape(shape)
    return u, alpha, w


def per_task_grads(losses, shared, wrt: str = "params") -> torch.Tensor:
    """The n × P matrix of per-task gradients of ``losses`` (scalar tensors) with respect to ``shared``:
    a list of parameters (``wrt='params'``) or the shared representation tensor Z (``wrt='repr'``,
    flattened over the batch: MGDA-UB). Graphs are retained, so the losses can still be backpropagated;
    a parameter a task does not reach contributes zeros. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    if wrt not in ("params", "repr"):
        raise ValueError(f"wrt must be 'params' or 'repr', got {wrt!r}")
    sh = [shared] if torch.is_tensor(shared) else list(shared)
    if wrt == "repr" and len(sh) != 1:
        raise ValueError("wrt='repr' takes the one shared representation tensor")
    rows = []
    for L in losses:
        gs = torch.autograd.grad(L, sh, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, sh)]))
    return torch.stack(rows)


def weighted_repr(Z: torch.Tensor, w: float) -> torch.Tensor:
    """w·Z + (1 − w)·sg[Z]: the value of Z, with the gradient flowing back into the trunk scaled by w
    (see the module docstring). https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    w = float(w)
    if w == 1.0:
        return Z
    return w * Z + (1.0 - w) * Z.detach()


# -------------------------------------------------------------------- the 2-D toy (Experiment B)

def toy_losses(theta: torch.Tensor, a=(1.0, 0.0), b=(0.0, 1.0), scale2: float = 10.0):
    """Two conflicting quadratics L1 = ‖θ − a‖², L2 = scale2·‖θ − b‖²; their Pareto set is the segment
    from a to b. https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    a = torch.as_tensor(a, dtype=theta.dtype)
    b = torch.as_tensor(b, dtype=theta.dtype)
    return torch.stack([((theta - a) ** 2).sum(), scale2 * ((theta - b) ** 2).sum()])


def toy_trajectory(method: str, start=(-1.0, -1.5), *, lr: float = 0.01, steps: int = 400, **kw) -> dict:
    """Gradient descent on :func:`toy_losses` in float64 with ``method`` ∈ {'sum', 'unit' (sum of unit
    gradients), 'mgda'}; returns ``{theta: (steps+1) × 2, losses: (steps+1) × 2, raised: steps × 2
    bools (a loss went up by more than 1e-12)}``. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    th = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    thetas, losses = [], []
    for _ in range(steps + 1):
        L = toy_losses(th, **kw)
        thetas.append(th.detach().clone().numpy())
        losses.append(L.detach().numpy().copy())
        G = torch.stack([torch.autograd.grad(L[i], th, retain_graph=True)[0] for i in range(2)])
        if method == "sum":
            u = G.sum(0)
        elif method == "unit":
            u = (G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)).sum(0)
        elif method == "mgda":
            u, _, _ = mgda_direction(G)
        else:
            raise ValueError(f"unknown toy method {method!r}")
        with torch.no_grad():
            th -= lr * u
    losses = np.array(losses)
    return {"theta": np.array(thetas), "losses": losses, "raised": np.diff(losses, axis=0) > 1e-12}


# ---------------------------------------------------------------- the network (Experiment C)

class MultiLeNet(nn.Module):
    """Sener & Koltun's MultiMNIST network, without BatchNorm or dropout: a LeNet trunk on 1 × 28 × 28
    (conv 5×5 → ``width``, max-pool, ReLU, conv 5×5 → ``width``·2, max-pool, ReLU, linear → ``z_dim``,
    ReLU) and one head per task (linear z_dim → z_dim, ReLU, linear → ``n_classes``). ``downsample``:
    'pool' (the paper's 2 × 2 max-pools) or 'stride' (each conv with stride 2 and no pooling: the same
    4 × 4 × 2·width map before the linear layer, about 4 times cheaper on a CPU). ``forward`` returns
    (Z, [logits_i]). https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""

    def __init__(self, n_tasks: int = 2, n_classes: int = 10, z_dim: int = 50, width: int = 10,
                 downsample: str = "pool"):
        super().__init__()
        if downsample == "pool":
            convs = [nn.Conv2d(1, width, 5), nn.MaxPool2d(2), nn.ReLU(),
                     nn.Conv2d(width, 2 * width, 5), nn.MaxPool2d(2), nn.ReLU()]
        elif downsample == "stride":
            convs = [nn.Conv2d(1, width, 5, stride=2), nn.ReLU(), nn.Conv2d(width, 2 * width, 5, stride=2), nn.ReLU()]
        else:
            raise ValueError(f"downsample must be 'pool' or 'stride', got {downsample!r}")
        self.trunk = nn.Sequential(*convs, nn.Flatten(), nn.Linear(2 * width * 16, z_dim), nn.ReLU())
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(z_dim, z_dim), nn.ReLU(), nn.Linear(z_dim, n_classes))
                                   for _ in range(n_tasks))

    def forward(self, x, tasks=None):
        Z = self.trunk(x)
        tasks = range(len(self.heads)) if tasks is None else tasks
        return Z, [self.heads[t](Z) for t in tasks]


@torch.no_grad()
def task_accuracies(model: MultiLeNet, X, Y, tasks, batch_size: int = 2000) -> list:
    """Per-task accuracy of ``model`` on images ``X`` (n × 1 × 28 × 28) and labels ``Y`` (n × n_tasks),
    for the task indices ``tasks``. https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    hits = np.zeros(len(tasks))
    for s in range(0, len(X), batch_size):
        _, logits = model(X[s:s + batch_size], tasks)
        for j, (t, lg) in enumerate(zip(tasks, logits)):
            hits[j] += (lg.argmax(1) == Y[s:s + batch_size, t]).sum().item()
    return (hits / len(X)).tolist()


ARMS = ("single", "sum", "random", "mgda", "frozen", "mgda_ub", "unit")


class MGDAStepper:
    """An optimizer wrapper for :func:`kexue.train.fit` that turns per-task losses into one multi-task
    update and records what each step did.

    ``loss_fn(idx, rng)`` of :meth:`loss_on` computes the per-task losses of the batch and returns the
    surrogate whose backward pass applies the arm's trunk weights w (see :func:`weighted_repr`):
    'sum' w = 1; 'random' w ~ Dirichlet(1) per step (``seed``); 'frozen' w = ``frozen_alpha``; 'mgda'
    the min-norm weights of the trunk-parameter gradients; 'mgda_ub' those of the gradients with respect
    to Z (Sener & Koltun's upper bound); 'unit' the sum of unit-normalised trunk gradients
    (w_i = 1/‖g_i‖). ``normalize`` applies to 'mgda' / 'mgda_ub'. With ``probe`` the losses of the
    same batch are recomputed after every ``step()`` (``raised``: per step, per task, whether the loss
    went up). ``cos_every`` > 0 (for 'mgda_ub') computes the full-MGDA direction every that many steps
    and records its cosine with the UB direction in trunk-parameter space (``cosines``) and the inner
    products ⟨g_i, u_UB⟩ of the UB trunk update with each task's trunk gradient (``ub_inner``); this
    probe is left out of ``seconds``. ``dir_every`` > 0 (two tasks) probes the trunk *direction* apart from
    its length every that many steps: the min-norm ('mgda'), plain-sum ('sum') and unit-sum ('unit')
    directions of the batch's trunk gradients, each rescaled to the length of this arm's own trunk
    update, are tried as trunk steps of the optimizer's learning rate (heads held fixed, see
    :func:`direction_probe`); ``dir_raised`` records, per probe and direction, whether a task's loss on
    the batch went up (not timed either).
    https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""

    def __init__(self, optimizer, model: MultiLeNet, X, Y, *, arm: str, tasks=(0, 1), normalize=None,
                 frozen_alpha=None, seed: int = 0, probe: bool = True, cos_every: int = 0, dir_every: int = 0):
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
        if arm == "frozen" and frozen_alpha is None:
            raise ValueError("arm 'frozen' needs frozen_alpha")
        self.opt, self.model, self.X, self.Y = optimizer, model, X, Y
        self.arm, self.tasks, self.normalize = arm, list(tasks), normalize
        self.frozen = None if frozen_alpha is None else [float(a) for a in frozen_alpha]
        self.rng = np.random.default_rng(seed)
        self.probe, self.cos_every, self.dir_every = probe, cos_every, dir_every
        self.trunk_params = [p for p in model.trunk.parameters() if p.requires_grad]
        self.alphas, self.raised, self.cosines, self.ub_inner, self.before = [], [], [], [], None
        self.dir_raised, self._shadow, self.grad_cos, self.sum_uphill = [], None, [], []
        self._idx, self.seconds, self.steps, self._t_begin = None, 0.0, 0, None

    def _losses(self, idx):
        x, y = self.X[idx], self.Y[idx]
        Z, logits = self.model(x, self.tasks)
        return Z, [F.cross_entropy(lg, y[:, t]) for t, lg in zip(self.tasks, logits)]

    def loss_on(self, idx, rng=None):
        t0 = time.perf_counter()
        self._idx = torch.as_tensor(idx)
        Z, losses = self._losses(self._idx)
        self.before = [float(L.detach()) for L in losses]
        n = len(losses)
        arm = self.arm
        if n == 1 or arm == "sum":
            w = np.ones(n)
        elif arm == "random":
            w = self.rng.dirichlet(np.ones(n))
        elif arm == "frozen":
            w = np.array(self.frozen)
        elif arm in ("mgda", "unit"):
            G = per_task_grads(losses, self.trunk_params, "params")
            if n == 2:                       # how the two trunk gradients relate at this step
                Gd = G.detach().double()
                c = float(Gd[0] @ Gd[1] / (Gd[0].norm() * Gd[1].norm()).clamp_min(1e-30))
                self.grad_cos.append(c)
                self.sum_uphill.append(bool(float((Gd @ Gd.sum(0)).min()) < 0))
            if arm == "unit":
                w = 1.0 / G.detach().double().norm(dim=1).clamp_min(1e-20).cpu().numpy()
            else:
                _, a, w = mgda_direction(G, self.normalize, [L.detach() for L in losses])
        else:  # mgda_ub
            G = per_task_grads(losses, Z, "repr")
            _, a, w = mgda_direction(G, self.normalize, [L.detach() for L in losses])
            if self.cos_every and self.steps % self.cos_every == 0:   # a probe, not timed
                tp = time.perf_counter()
                Gp = per_task_grads(losses, self.trunk_params, "params").double()
                _, _, wf = mgda_direction(Gp, self.normalize, [L.detach() for L in losses])
                u_ub = (torch.as_tensor(w, device=Gp.device).reshape(-1, 1) * Gp).sum(0)
                u_full = (torch.as_tensor(wf, device=Gp.device).reshape(-1, 1) * Gp).sum(0)
                self.cosines.append(float(u_ub @ u_full / (u_ub.norm() * u_full.norm()).clamp_min(1e-30)))
                self.ub_inner.append((Gp @ u_ub).tolist())   # ⟨g_i, u_UB⟩: < 0 means task i rises
                t0 += time.perf_counter() - tp
        self.alphas.append(np.asarray(w, dtype=float) / max(float(np.sum(w)), 1e-30))
        if self.dir_every and n == 2 and self.steps % self.dir_every == 0:   # a probe, not timed
            tp = time.perf_counter()
            Gp = G if arm in ("mgda", "unit") else per_task_grads(losses, self.trunk_params, "params")
            length = float((torch.as_tensor(w, dtype=Gp.dtype, device=Gp.device).reshape(-1, 1) * Gp.detach()).sum(0).norm())
            lr = float(self.opt.param_groups[0]["lr"])
            if self._shadow is None:                 # a copy to probe on: the live graph stays intact
                self._shadow = copy.deepcopy(self.model)
            with torch.no_grad():
                for q, p in zip(self._shadow.parameters(), self.model.parameters()):
                    q.copy_(p)
            shadow_trunk = [q for q, p in zip(self._shadow.trunk.parameters(), self.model.trunk.parameters())
                            if p.requires_grad]
            x, y = self.X[self._idx], self.Y[self._idx]

            def losses_now():
                _, lg = self._shadow(x, self.tasks)
                return [float(F.cross_entropy(g, y[:, t])) for t, g in zip(self.tasks, lg)]

            self.dir_raised.append(direction_probe(shadow_trunk, Gp.detach(), self.before, losses_now,
                                                   lr=lr, length=length))
            t0 += time.perf_counter() - tp
        heads = [self.model.heads[t] for t in self.tasks]
        sur = sum(F.cross_entropy(h(weighted_repr(Z, wi)), self.Y[self._idx][:, t])
                  for h, wi, t in zip(heads, w, self.tasks))
        self._t_begin = t0          # shifted past the probes above; step() adds the time up to its update
        return sur

    def zero_grad(self, set_to_none: bool = True):
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self):
        t0 = time.perf_counter()
        self.opt.step()
        self.steps += 1
        # the whole step: forward, per-task gradients, the surrogate's backward pass (run by the caller
        # between loss_on and step), the update; the probes are left out
        self.seconds += time.perf_counter() - (t0 if self._t_begin is None else self._t_begin)
        self._t_begin = None
        if self.probe and self._idx is not None:
            with torch.no_grad():
                _, after = self._losses(self._idx)
            self.raised.append([float(a) > b for a, b in zip(after, self.before)])

    @property
    def raise_share(self) -> float:
        """Share of steps after which at least one task's loss on the same batch was higher."""
        r = np.array(self.raised, dtype=bool).reshape(-1, len(self.tasks))
        return float(r.any(axis=1).mean()) if len(r) else math.nan


DIRECTIONS = ("mgda", "sum", "unit")


@torch.no_grad()
def direction_probe(trunk_params, G, before, losses_now, *, lr: float, length: float) -> dict:
    r"""Try each direction d of :data:`DIRECTIONS` (min-norm point of the rows of ``G``, their sum, their
    sum of unit vectors) as the trunk step θ ← θ − lr·length·d/‖d‖ (every direction the same length),
    read the tasks' losses with ``losses_now()`` (heads untouched), restore θ exactly, and return
    ``{direction: bool}``: whether some task's loss rose above ``before``. A zero direction (u* = 0 at
    a Pareto-stationary point: norm ≤ 1e-12 of the largest gradient's) is a zero step. The stepper
    probes on a copy of the model, so the live autograd graph is never touched. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    Gd = G.double()
    u_m, _, _ = mgda_direction(Gd)
    dirs = {"mgda": u_m, "sum": Gd.sum(0),
            "unit": (Gd / Gd.norm(dim=1, keepdim=True).clamp_min(1e-30)).sum(0)}
    saved = [p.detach().clone() for p in trunk_params]
    out = {}
    for name in DIRECTIONS:
        d = dirs[name]
        nd = float(d.norm())
        zero = nd <= 1e-12 * max(float(Gd.norm(dim=1).max()), 1e-300)   # u* = 0 up to rounding
        step = torch.zeros_like(d) if zero else d * (lr * length / nd)
        k = 0
        for p in trunk_params:
            m = p.numel()
            p.sub_(step[k:k + m].reshape(p.shape).to(p.dtype))
            k += m
        out[name] = any(a > b for a, b in zip(losses_now(), before))
        for p, s0 in zip(trunk_params, saved):
            p.copy_(s0)
    return out


def train_arm(data: dict, arm: str, *, lr: float, seed: int, steps: int, batch_size: int, eval_every: int,
              tasks=(0, 1), normalize=None, frozen_alpha=None, cos_every: int = 0, dir_every: int = 0,
              patience: int | None = None, z_dim: int = 50, width: int = 10, downsample: str = "pool",
              device=None) -> dict:
    """Train a fresh :class:`MultiLeNet` (torch seed ``seed``) with plain SGD at ``lr`` for ``steps`` steps
    through :func:`kexue.train.fit` and :class:`MGDAStepper` (``arm``; 'single' trains on the one task
    in ``tasks``); dev score: the worst task's dev accuracy, the best checkpoint restored. Returns the
    test and dev accuracies per task, worst-task test accuracy, the share of steps that raised a task's
    loss on their own batch (``raise_share``, and per task), the mean trunk weights (normalised to sum
    1), seconds per step (``s_per_step``: forward, per-task gradients, backward pass and update, the probes
    excluded),
    best step, the UB/full cosines and ``ub_violation``, the share of probed steps whose UB update had
    ⟨g_i, u_UB⟩ < 0 for some task, ``dir_raise`` (with ``dir_every``: per direction of
    :func:`direction_probe`, the share of probed steps at which that direction, at this arm's step
    length, raised a task's loss), ``patience`` for early stopping (:func:`kexue.train.fit`) and
    ``wall_s_per_step`` (the whole training loop's wall time per step, evaluations and probes
    included); for the arms that compute both trunk gradients every step ('mgda', 'unit'):
    ``grad_cos_mean`` (mean cosine between them), ``grad_conflict_share`` (share of steps with a
    negative cosine) and ``sum_uphill_share`` (share of steps at which the plain sum's direction
    g_1 + g_2 would raise a task to first order, ⟨g_i, g_1 + g_2⟩ < 0). ``data``: :func:`kexue.data.images.multi_fashion`.
    https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    from ..train import fit

    dev = device or data["X_train"].device
    torch.manual_seed(seed)
    model = MultiLeNet(n_tasks=2, z_dim=z_dim, width=width, downsample=downsample).to(dev)
    tasks = list(tasks)
    params = list(model.trunk.parameters()) + [p for t in tasks for p in model.heads[t].parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    st = MGDAStepper(opt, model, data["X_train"], data["y_train"], arm="sum" if arm == "single" else arm,
                     tasks=tasks, normalize=normalize, frozen_alpha=frozen_alpha, seed=seed + 7919,
                     probe=arm != "single", cos_every=cos_every, dir_every=dir_every if arm != "single" else 0)

    def evaluate():
        return min(task_accuracies(model, data["X_dev"], data["y_dev"], tasks))

    t0 = time.perf_counter()
    out = fit(params, st.loss_on, len(data["X_train"]), steps=steps, batch_size=batch_size, evaluate=evaluate,
              eval_every=eval_every, optimizer=st, seed=seed, patience=patience)
    wall = time.perf_counter() - t0
    test = task_accuracies(model, data["X_test"], data["y_test"], tasks)
    r = np.array(st.raised, dtype=bool).reshape(-1, len(tasks)) if st.raised else np.zeros((0, len(tasks)), bool)
    return {"arm": arm, "lr": lr, "seed": seed, "tasks": tasks, "test": test, "worst_test": min(test),
            "dev": task_accuracies(model, data["X_dev"], data["y_dev"], tasks), "best_dev": out["best_dev"],
            "best_step": out["best_step"], "steps": out["steps_run"],
            "raise_share": float(r.any(axis=1).mean()) if len(r) else math.nan,
            "raise_share_task": r.mean(axis=0).tolist() if len(r) else [],
            "alpha_mean": np.mean(st.alphas, axis=0).tolist(), "s_per_step": st.seconds / max(st.steps, 1),
            "wall_s_per_step": wall / max(out["steps_run"], 1),
            "grad_cos_mean": float(np.mean(st.grad_cos)) if st.grad_cos else math.nan,
            "grad_conflict_share": float(np.mean(np.array(st.grad_cos) < 0)) if st.grad_cos else math.nan,
            "sum_uphill_share": float(np.mean(st.sum_uphill)) if st.sum_uphill else math.nan,
            "dir_raise": ({k: float(np.mean([d[k] for d in st.dir_raised])) for k in DIRECTIONS}
                          if st.dir_raised else {}),
            "cosines": st.cosines, "ub_violation": (float(np.mean(np.min(st.ub_inner, axis=1) < 0))
                                                    if st.ub_inner else math.nan),
            "history": out["history"]}


def tune_then_seeds(data: dict, arm: str, *, lrs, seeds, frozen_alphas=None, **kw) -> dict:
    """The book's budget rule: every lr of ``lrs`` at the first seed, the lr with the best dev score
    (worst-task dev accuracy; ties: the smaller lr), then the other seeds at that lr. ``frozen_alphas``
    (arm 'frozen'): a dict seed → α. Returns ``{lr, dev_by_lr, edge, runs}`` (runs: one per seed,
    the first seed's at the chosen lr). https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    fa = (frozen_alphas or {}).get
    first = [train_arm(data, arm, lr=lr, seed=seeds[0], frozen_alpha=fa(seeds[0]), **kw) for lr in lrs]
    devs = [r["best_dev"] for r in first]
    k = int(np.argmax(devs))
    runs = [first[k]] + [train_arm(data, arm, lr=lrs[k], seed=s, frozen_alpha=fa(s), **kw) for s in seeds[1:]]
    return {"lr": lrs[k], "dev_by_lr": devs, "edge": len(lrs) > 1 and k in (0, len(lrs) - 1), "runs": runs}


# ------------------------------------------------------------------ the chapter's orchestration

def random_gradient_sets(seed: int = 0, reps: int = 5):
    """Random gradient sets for the solver checks: n ∈ {2, 3, 5, 10} tasks, P ∈ {10, 1000}, ``reps``
    kinds each (independent; a shared component, so the hull lies away from 0; a nearly conflicting
    pair; scales over three decades; independent again). Yields (n, P, kind, G).
    https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    rng = np.random.default_rng(seed)
    for n in (2, 3, 5, 10):
        for P in (10, 1000):
            for rep in range(reps):
                G = rng.standard_normal((n, P)) / np.sqrt(P)
                if rep % 5 == 1:
                    G = G + rng.standard_normal(P) / np.sqrt(P)
                if rep % 5 == 2:
                    G[1] = -G[0] * 0.7 + 1e-3 * rng.standard_normal(P) / np.sqrt(P)
                if rep % 5 == 3:
                    G = G * np.logspace(-2, 1, n)[:, None]
                yield n, P, rep, G


def solver_checks(seed: int = 0, reps: int = 5, max_iter: int = 250) -> dict:
    r"""The chapter's implementation checks of the solvers, in one place: over
    :func:`random_gradient_sets`, Frank–Wolfe (default variant) against :func:`min_norm_reference`
    (``worst_rel_gap``: the largest (f − f_ref)/max(f_ref, 1e-12·scale), ``max_iters``), the KKT slack
    ``min_kkt`` = min over sets and i of ⟨g_i, u*⟩ − ‖u*‖²; ``opposed_norm2`` (g_2 = −2 g_1);
    ``unit_min_inner``: min over 200 random pairs of ⟨g_i, g_1/‖g_1‖ + g_2/‖g_2‖⟩ / ‖g_i‖ (the
    article's two-task remark); ``smoothed_vs_simplified``: the largest difference between the
    article's averaged iteration and Frank–Wolfe with γ = 1/(k+1), over 300 iterations; ``histories``:
    for one n = 5 set, the objective's error after each iteration of the 'simplified', 'plain' and
    default variants (for the figure). https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    rel, iters, kkt, n_sets = [], [], [], 0
    for n, P, rep, G in random_gradient_sets(seed, reps):
        a, info = min_norm_element(G, max_iter=max_iter, return_info=True)
        _, f_ref = min_norm_reference(G)
        scale = float((G ** 2).sum(1).max())
        rel.append((info["objective"] - f_ref) / max(f_ref, 1e-12 * scale))
        iters.append(info["iters"])
        u = a @ G
        kkt.append(float(np.min(G @ u) - u @ u))
        n_sets += 1
    rng = np.random.default_rng(seed + 1)
    g = rng.standard_normal(50)
    ao = min_norm_element(np.stack([g, -2 * g]))
    uo = ao @ np.stack([g, -2 * g])
    unit = []
    for _ in range(200):
        g1, g2 = rng.standard_normal(5) * rng.uniform(0.01, 10), rng.standard_normal(5) * rng.uniform(0.01, 10)
        u = g1 / np.linalg.norm(g1) + g2 / np.linalg.norm(g2)
        unit.append(min(g1 @ u / np.linalg.norm(g1), g2 @ u / np.linalg.norm(g2)))
    G5 = rng.standard_normal((5, 40)) / np.sqrt(40) + 0.5 * rng.standard_normal(40) / np.sqrt(40)
    u_s, h_s = smoothed_min_iteration(G5, 300)
    a_s, info_s = min_norm_element(G5, variant="simplified", max_iter=300, return_info=True)
    _, f5 = min_norm_reference(G5)
    runs = {"simplified": info_s["history"]} | {v: min_norm_element(G5, variant=v, max_iter=300, return_info=True)[1]["history"]
                                                for v in ("plain", "corrective")}
    hist = {v: np.maximum(np.array(h) - f5, 1e-18).tolist() for v, h in runs.items()}
    return {"n_sets": n_sets, "worst_rel_gap": float(max(rel)), "max_iters": int(max(iters)), "min_kkt": float(min(kkt)),
            "opposed_norm2": float(uo @ uo), "unit_min_inner": float(min(unit)),
            "smoothed_vs_simplified": float(max(np.max(np.abs(np.array(h_s) - np.array(info_s["history"]))),
                                                np.max(np.abs(u_s - a_s @ G5)))),
            "histories": hist}


def run_arms(data: dict, arms, *, lrs, seeds, dir_every: int = 0, cos_every: int = 0, **kw) -> dict:
    """Every arm of ``arms`` by the book's budget rule (:func:`tune_then_seeds`); 'single0'/'single1'
    are the single-task models of task 0/1. 'frozen' runs after 'mgda' at MGDA's chosen rate only
    (no tuning: the same step scale, only the adaptivity removed), each seed with that seed's MGDA
    average weights. ``dir_every`` goes to the 'mgda' and 'sum' arms, ``cos_every`` to 'mgda_ub'.
    Returns {arm: tune_then_seeds output}. https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``."""
    arms = list(arms)
    if "frozen" in arms and ("mgda" not in arms or arms.index("mgda") > arms.index("frozen")):
        raise ValueError("'frozen' needs 'mgda' earlier in arms (it reuses MGDA's rate and weights)")
    out = {}
    for arm in arms:
        extra = {}
        if arm in ("mgda", "sum"):
            extra["dir_every"] = dir_every
        if arm == "mgda_ub":
            extra["cos_every"] = cos_every
        if arm.startswith("single"):
            out[arm] = tune_then_seeds(data, "single", lrs=lrs, seeds=seeds, tasks=(int(arm[-1]),), **kw)
        elif arm == "frozen":
            fa = {r["seed"]: r["alpha_mean"] for r in out["mgda"]["runs"]}
            out[arm] = tune_then_seeds(data, "frozen", lrs=[out["mgda"]["lr"]], seeds=seeds, frozen_alphas=fa, **kw)
        else:
            out[arm] = tune_then_seeds(data, arm, lrs=lrs, seeds=seeds, **extra, **kw)
    return out


def per_seed(results: dict, arm: str, key: str, sub=None) -> np.ndarray:
    """The per-seed values of ``key`` (``sub``: an index or a dict key inside it) of one arm of
    :func:`run_arms`, in seed order. https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    vals = [r[key] if sub is None else r[key][sub] for r in results[arm]["runs"]]
    return np.array(vals, dtype=float)
