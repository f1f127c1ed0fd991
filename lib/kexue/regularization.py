"""Input-gradient and parameter-gradient penalties, and the inequality between them.

Su Jianlin, 输入梯度惩罚与参数梯度惩罚的一个不等式 (https://kexue.fm/archives/8796), after
B. Dherin, M. Munn, D. G. T. Barrett, "The Geometric Occam's Razor Implicit in Deep Learning"
(arXiv 2111.15090). Chapter ``gradient-penalty-inequality``.

An MLP ``z_{t+1} = W_t h_t + b_t``, ``h_{t+1} = g_t(z_{t+1})``, ``h_1 = x``, ``t = 1..l``, and any
scalar ``f`` of its output. With ``δ_t = ∂f/∂z_{t+1}`` the chain rule gives, per sample,

    ∇_{W_t} f = δ_t h_tᵀ,   ∇_{b_t} f = δ_t,   ∇_x f = J_tᵀ W_tᵀ δ_t   (J_t = ∇_x h_t, dim h × dim x)

so ``‖∇_x f‖ ≤ ‖W_t‖ ‖J_t‖ ‖δ_t‖`` (spectral norms, or the larger Frobenius norms), while
``‖∇_{W_t} f‖² = ‖δ_t‖² ‖h_t‖²`` and ``‖∇_{b_t} f‖² = ‖δ_t‖²``. Summing over layers:

    ‖∇_x f‖² · Σ_t (1 + ‖h_t‖²) / (‖W_t‖² ‖J_t‖²)  ≤  ‖∇_θ f‖².

The sum is the *bracket*; it depends on the net and the input, not on ``f``. Su's key identity is
``h_t (∇_x f)ᵀ = (∇_{W_t} f)ᵀ W_t J_t`` (his "gradient has the transposed shape" convention).

Everything here is per sample: the inequality does not hold for batch means. The functions take any
``nn.Module`` whose ``nn.Linear`` layers are each applied once per sample (no weight sharing, no
BatchNorm); ``f`` maps the output batch to one scalar per sample and must depend on θ only through
the output. Through a plain MLP every path from ``x`` to ``f`` crosses every ``z_t``, so the
inequality is a theorem; with skip connections (:class:`ResidualMLP`) it is not, and the bracket is
only the same formula.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "random_mlp", "ResidualMLP", "linears", "true_logit", "per_sample_loss",
           "spectral_norm", "input_jacobians", "gp_inequality_terms", "per_sample_param_grad_sq",
           "key_identity_residual", "dirichlet_energy", "arc_length_1d", "gd_to_loss",
           "random_matrix_spectral_norm"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
               "softplus": nn.Softplus}


def random_mlp(sizes, activation: str = "tanh", init_scale: float = 1.0, seed: int = 0,
               dtype=torch.float64) -> nn.Sequential:
    """``nn.Sequential`` of ``Linear(sizes[i], sizes[i+1])`` with ``activation`` between them (none
    after the last), PyTorch's default init with every weight and bias multiplied by
    ``init_scale``. The random nets of chapter ``gradient-penalty-inequality``
    (https://kexue.fm/archives/8796)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, dtype=dtype)
        bound = 1.0 / math.sqrt(a)  # nn.Linear's default: U(±1/√fan_in) for W and b
        with torch.no_grad():
            lin.weight.copy_((torch.rand(b, a, generator=g, dtype=dtype) * 2 - 1) * bound * init_scale)
            lin.bias.copy_((torch.rand(b, generator=g, dtype=dtype) * 2 - 1) * bound * init_scale)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """``h ← h + g(W h + b)`` blocks between an input and an output ``Linear``: outside the proof,
    since ∇_x f also flows around each block. Chapter ``gradient-penalty-inequality``
    (https://kexue.fm/archives/8796)."""

    def __init__(self, d_in: int, width: int, depth: int, d_out: int, activation: str = "tanh",
                 dtype=torch.float64):
        super().__init__()
        self.inp = nn.Linear(d_in, width, dtype=dtype)
        self.blocks = nn.ModuleList(nn.Linear(width, width, dtype=dtype) for _ in range(depth))
        self.act = ACTIVATIONS[activation]()
        self.out = nn.Linear(width, d_out, dtype=dtype)

    def forward(self, x):
        h = self.act(self.inp(x))
        for blk in self.blocks:
            h = h + self.act(blk(h))
        return self.out(h)


def linears(model: nn.Module) -> list[nn.Linear]:
    """The model's ``nn.Linear`` layers in registration order (= the order of application for the
    models here). Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def true_logit(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f(out, y)`` = the logit of the true class ``y``, one scalar per sample. The read-outs
    ``f`` of this module all take ``(output batch, labels)``. Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return out.gather(1, y.view(-1, 1)).squeeze(1)


def per_sample_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f(out, y)`` = the per-sample cross-entropy loss of the true class ``y``. Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return F.cross_entropy(out, y, reduction="none")


def spectral_norm(A: torch.Tensor) -> torch.Tensor:
    """Largest singular value of a matrix or of each matrix of a batch (``torch.linalg.matrix_norm``
    with ``ord=2``). Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return torch.linalg.matrix_norm(A, ord=2)


def fast_spectral_norm(A: torch.Tensor) -> torch.Tensor:
    """:func:`spectral_norm` by the smaller Gram matrix, √λ_max(A Aᵀ) (``eigvalsh``), much faster
    than an SVD for the wide per-sample Jacobians here, and exactly 1 for identity matrices (J_1 = I
    of a plain MLP, whose 784 × 784 SVD would dominate the cost). In float64 it agrees with the SVD
    to ~1e-15 relative. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    m, n = A.shape[-2:]
    if m == n and torch.equal(A, torch.eye(n, dtype=A.dtype, device=A.device).expand_as(A)):
        return torch.ones(A.shape[:-2], dtype=A.dtype, device=A.device)
    G = A @ A.mT if m <= n else A.mT @ A
    return torch.linalg.eigvalsh(G)[..., -1].clamp_min(0).sqrt()


def _matrix_norm(A, matrix_norm: str):
    if matrix_norm == "spectral":
        return fast_spectral_norm(A)
    if matrix_norm == "fro":
        return torch.linalg.matrix_norm(A, ord="fro")
    raise ValueError(f"matrix_norm is 'spectral' or 'fro'; got {matrix_norm!r}")


class _Capture:
    """Forward hooks that keep each Linear's input ``h_t`` and output ``z_{t+1}``."""

    def __init__(self, model):
        self.layers = linears(model)
        if not self.layers:
            raise ValueError("the model has no nn.Linear layer")
        self.h, self.z, self._handles = [], [], []

    def __enter__(self):
        def hook(mod, inp, out):
            self.h.append(inp[0])
            self.z.append(out)
        self._handles = [m.register_forward_hook(hook) for m in self.layers]
        return self

    def __exit__(self, *exc):
        for hd in self._handles:
            hd.remove()
        if self.h and len(self.h) != len(self.layers):
            raise ValueError(f"{len(self.h)} Linear calls for {len(self.layers)} Linear layers: each "
                             "layer must be applied exactly once per forward pass")


def input_jacobians(model: nn.Module, x: torch.Tensor, chunk: int = 64, mode: str = "auto") -> list[torch.Tensor]:
    """``J_t = ∇_x h_t`` for every Linear layer t: the Jacobian of the layer's input with respect to
    the network input, per sample, shape ``(n, dim h_t, dim x)`` (``J_1 = I`` for a plain MLP).
    ``torch.func.jacrev`` (``mode="rev"``) or ``jacfwd`` (``"fwd"``; ``"auto"``: forward mode when
    dim x is smaller than the summed dims of the h_t), batched with ``vmap``, ``chunk`` samples at a
    time. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from torch.func import jacfwd, jacrev, vmap

    def hidden(x1):
        with _Capture(model) as cap:
            model(x1.unsqueeze(0))
        return tuple(h.squeeze(0) for h in cap.h)

    if mode == "auto":
        mode = "fwd" if x.shape[1] < sum(lin.in_features for lin in linears(model)) else "rev"
    if mode not in ("fwd", "rev"):
        raise ValueError(f"mode is 'auto', 'fwd' or 'rev'; got {mode!r}")
    jac = jacfwd if mode == "fwd" else jacrev
    parts = [vmap(jac(hidden))(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return [torch.cat([p[t] for p in parts]) for t in range(len(parts[0]))]


def _deltas(model, x, f, y):
    """(∇_x f, [h_t], [δ_t = ∂f/∂z_{t+1}], f) per sample, by one backward pass of Σ_n f_n."""
    x = x.detach().clone().requires_grad_(True)
    with _Capture(model) as cap:
        out = model(x)
    fx = f(out, y)
    if fx.shape != (len(x),):
        raise ValueError(f"f must return one scalar per sample, shape ({len(x)},); got {tuple(fx.shape)}")
    grads = torch.autograd.grad(fx.sum(), [x] + cap.z)
    return grads[0], [h.detach() for h in cap.h], list(grads[1:]), fx.detach()


def gp_inequality_terms(model: nn.Module, x: torch.Tensor, f, y=None, matrix_norm: str = "spectral",
                        chunk: int = 64, jacobians=None) -> dict:
    """Every term of the inequality, per sample (arrays of length n, float64 numpy):

    ``gx2`` = ‖∇_x f‖², ``gtheta2`` = ‖∇_θ f‖² (= Σ_t ‖δ_t‖² (‖h_t‖² + 1[bias])), ``bracket`` =
    Σ_t (1[bias] + ‖h_t‖²) / (‖W_t‖² ‖J_t‖²), ``lhs`` = gx2 · bracket, ``rhs`` = gtheta2,
    ``ratio`` = lhs / rhs (0 where both are 0, e.g. a dead ReLU net); per layer (lists over t) ``h2``, ``W_norm``, ``J_norm``, ``w_lhs`` =
    gx2 ‖h_t‖²/(‖W_t‖²‖J_t‖²), ``w_rhs`` = ‖∇_{W_t} f‖², ``b_lhs``, ``b_rhs`` (the two per-layer
    inequalities). ``matrix_norm`` ('spectral' or 'fro') is the norm of W_t and J_t; Frobenius
    gives a smaller, still valid left side. ``jacobians``: the output of :func:`input_jacobians` for
    the same model and ``x``, to reuse across read-outs ``f`` (the J_t do not depend on ``f``).
    Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    gx, hs, ds, fx = _deltas(model, x, f, y)
    Js = input_jacobians(model, x, chunk=chunk) if jacobians is None else jacobians
    gx2 = gx.flatten(1).pow(2).sum(1)
    out = {"f": fx, "gx2": gx2, "h2": [], "W_norm": [], "J_norm": [], "w_lhs": [], "w_rhs": [],
           "b_lhs": [], "b_rhs": []}
    gtheta2 = torch.zeros_like(gx2)
    bracket = torch.zeros_like(gx2)
    lhs = torch.zeros_like(gx2)
    live = gx2 > 0  # ∇_x f = 0 (e.g. J_t = 0 behind dead ReLUs): the left side is 0, not 0 · ∞

    def times_gx2(v):
        return torch.where(live, gx2 * v, torch.zeros_like(v))
    for lin, h, d, J in zip(linears(model), hs, ds, Js):
        h2, d2 = h.pow(2).sum(1), d.pow(2).sum(1)
        wn = _matrix_norm(lin.weight.detach(), matrix_norm)
        jn = _matrix_norm(J, matrix_norm)
        denom = wn ** 2 * jn ** 2
        has_b = lin.bias is not None
        gtheta2 = gtheta2 + d2 * h2 + (d2 if has_b else 0.0)
        bracket = bracket + (h2 + (1.0 if has_b else 0.0)) / denom
        lhs = lhs + times_gx2((h2 + (1.0 if has_b else 0.0)) / denom)
        out["h2"].append(h2)
        out["W_norm"].append(wn.expand_as(h2))
        out["J_norm"].append(jn)
        out["w_lhs"].append(times_gx2(h2 / denom))
        out["w_rhs"].append(d2 * h2)
        out["b_lhs"].append(times_gx2(1.0 / denom) if has_b else torch.zeros_like(gx2))
        out["b_rhs"].append(d2 if has_b else torch.zeros_like(gx2))
    out.update(gtheta2=gtheta2, bracket=bracket, lhs=lhs, rhs=gtheta2)
    out["ratio"] = torch.where(out["rhs"] > 0, out["lhs"] / out["rhs"].clamp_min(1e-300),
                               torch.where(out["lhs"] > 0, math.inf, 0.0))

    def np_(v):
        return [np_(u) for u in v] if isinstance(v, list) else v.detach().double().cpu().numpy()
    return {k: np_(v) for k, v in out.items()}


def per_sample_param_grad_sq(model: nn.Module, x: torch.Tensor, f, y=None, chunk: int = 64) -> np.ndarray:
    """‖∇_θ f(x_n)‖² for each sample by ``torch.func`` per-sample gradients of every parameter (the
    slow reference for ``gp_inequality_terms``'s ``gtheta2``). Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from torch.func import functional_call, grad, vmap
    params = {k: v.detach() for k, v in model.named_parameters()}

    yy = torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y

    def f1(p, x1, y1):
        return f(functional_call(model, p, (x1.unsqueeze(0),)), y1.unsqueeze(0))[0]

    vals = []
    for i in range(0, len(x), chunk):
        g = vmap(grad(f1), in_dims=(None, 0, 0))(params, x[i:i + chunk], yy[i:i + chunk])
        vals.append(sum(v.flatten(1).pow(2).sum(1) for v in g.values()))
    return torch.cat(vals).double().cpu().numpy()


def key_identity_residual(model: nn.Module, x: torch.Tensor, f, y=None, chunk: int = 64) -> np.ndarray:
    """max over entries of |h_t (∇_x f)ᵀ − (∇_{W_t} f)ᵀ W_t J_t| for every layer t (an array of
    length l), with ∇_{W_t} f from ``torch.func`` per-sample gradients (not from the δ formula):
    Su's key identity, zero up to round-off for a plain MLP. Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from torch.func import functional_call, grad, vmap
    yy = torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y
    gx, hs, _, _ = _deltas(model, x, f, yy)
    Js = input_jacobians(model, x, chunk=chunk)
    names = {id(p): k for k, p in model.named_parameters()}
    wkeys = [names[id(lin.weight)] for lin in linears(model)]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f1(p, x1, y1):
        return f(functional_call(model, p, (x1.unsqueeze(0),)), y1.unsqueeze(0))[0]

    chunks = []
    for i in range(0, len(x), chunk):
        g = vmap(grad(f1), in_dims=(None, 0, 0))(params, x[i:i + chunk], yy[i:i + chunk])
        chunks.append([g[k] for k in wkeys])
    G = [torch.cat(parts) for parts in zip(*chunks)]
    res = []
    for lin, h, J, Gt in zip(linears(model), hs, Js, G):
        left = h.unsqueeze(2) * gx.flatten(1).unsqueeze(1)            # (n, dim h, dim x)
        right = Gt.transpose(1, 2) @ lin.weight.detach() @ J           # (n, dim h, dim x)
        res.append(float((left - right).detach().abs().max()))
    return np.array(res)


def dirichlet_energy(model: nn.Module, x: torch.Tensor, f=None, y=None, chunk: int = 256) -> float:
    """The Dirichlet energy E_x ‖∇_x F(x)‖² over the points ``x``: with ``f`` (one scalar per
    sample) of ``f``; without, of the whole output (the squared Frobenius norm of the output's
    Jacobian, summed over output units). The model is used as given (device, dtype). Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from torch.func import jacrev, vmap
    total, n = 0.0, 0
    for i in range(0, len(x), chunk):
        xb = x[i:i + chunk]
        if f is None:
            J = vmap(jacrev(lambda x1: model(x1.unsqueeze(0)).squeeze(0)))(xb)
            total += float(J.detach().flatten(1).pow(2).sum())
        else:
            xb = xb.detach().clone().requires_grad_(True)
            g, = torch.autograd.grad(f(model(xb), None if y is None else y[i:i + chunk]).sum(), xb)
            total += float(g.flatten(1).pow(2).sum())
        n += len(xb)
    return total / n


def arc_length_1d(model, grid: torch.Tensor) -> float:
    """Arc length ∫ √(1 + F'(x)²) dx of a function of one variable over the sorted ``grid`` (shape
    (m,) or (m, 1)): the polygon Σ √(Δx² + ΔF²) through the graph's points, which converges to the
    integral from below. ``model`` is any callable on an (m, 1) tensor. The paper's 1-D complexity;
    chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    g = grid.reshape(-1, 1)
    if len(g) < 2 or bool((g[1:] < g[:-1]).any()):
        raise ValueError("the grid needs at least two sorted points")
    with torch.no_grad():
        y = model(g).reshape(-1)
    dx, dy = torch.diff(g.reshape(-1)), torch.diff(y)
    return float(torch.sqrt(dx ** 2 + dy ** 2).sum())


def gd_to_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, lr: float, stop_loss: float,
               max_steps: int, loss: str = "ce", penalty: float = 0.0, record_steps=(),
               on_record=None) -> dict:
    """Full-batch gradient descent on the mean loss (``"ce"``: cross-entropy with labels ``y``;
    ``"mse"``: ½ mean squared error) until the training loss reaches ``stop_loss`` (or
    ``max_steps``), optionally on ``L + penalty · ‖∇_θ L‖²`` (the explicit parameter-gradient penalty;
    implicit gradient regularisation says gradient descent with step η follows L + (η/4)‖∇_θ L‖²).
    The stop is checked on the plain loss before each step, so every run ends at the same loss.
    ``on_record(step, model)`` is called at the steps in ``record_steps`` and at the stop. Returns
    ``{steps, reached, loss, history: [(step, loss)]}``. Not :func:`kexue.train.fit`: this chapter
    needs full-batch steps and a stop at equal training loss, not early stopping on dev. Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    params = [p for p in model.parameters() if p.requires_grad]
    record = set(int(s) for s in record_steps)

    def objective():
        out = model(X)
        if loss == "ce":
            return F.cross_entropy(out, y)
        if loss == "mse":
            return 0.5 * (out.reshape(-1) - y.reshape(-1)).pow(2).mean()
        raise ValueError(f"loss is 'ce' or 'mse'; got {loss!r}")

    hist, step, reached = [], 0, False
    while True:
        L = objective()
        lv = float(L.detach())
        if not math.isfinite(lv):
            break
        hist.append((step, lv))
        reached = lv <= stop_loss
        if reached or step >= max_steps:
            break
        if step in record and on_record is not None:
            on_record(step, model)
        if penalty:
            g = torch.autograd.grad(L, params, create_graph=True)
            total = L + penalty * sum(gi.pow(2).sum() for gi in g)
            grads = torch.autograd.grad(total, params)
        else:
            grads = torch.autograd.grad(L, params)
        with torch.no_grad():
            for p, gp in zip(params, grads):
                p.sub_(lr * gp)
        step += 1
    if on_record is not None:
        on_record(step, model)
    return {"steps": step, "reached": reached, "loss": hist[-1][1] if hist else math.nan,
            "history": hist}


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``model`` for exact checks of the inequality (training may run in
    float32 on any device). Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float64)


def random_matrix_spectral_norm(m: int, n: int, sigma: float) -> float:
    """σ(√m + √n): the spectral norm of an m × n matrix of i.i.d. entries with standard deviation σ,
    to leading order (Bai-Yin). For nn.Linear's default U(±1/√n), σ = 1/√(3n). Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    return sigma * (math.sqrt(m) + math.sqrt(n))


__all__.append("float64_copy")


# -- the chapter's experiments ----------------------------------------------------------------------
# Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796) calls these; each is a thin
# composition of the functions above, tested in tests/lib/test_regularization.py.

READOUTS = {"loss": per_sample_loss, "logit": true_logit}
"""The two read-outs ``f`` of the chapter: the per-sample loss and the true-class logit."""

INITS = ("pytorch default", "xavier uniform", "xavier normal", "kaiming normal", "orthogonal")


def _mean_log(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[v > 0]
    return float(np.mean(np.log(v))) if v.size else math.nan


def probe_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, readouts=("loss", "logit"),
                fro: bool = True, chunk: int = 64) -> dict:
    """The inequality's terms on probe images, in a float64 CPU copy of ``model``, for each read-out
    in ``readouts`` (keys of :data:`READOUTS`), the Jacobians computed once. Returns
    ``{readout: summary}`` with, per read-out, the means over images of the natural logs of
    ``gx2`` (‖∇_x f‖²), ``bracket``, ``gtheta2`` (‖∇_θ f‖²) and ``ratio`` (LHS/RHS) (keys
    ``log_gx2``, ``log_bracket``, ``log_gtheta2``, ``log_ratio``; zeros left out), ``ratio_max``,
    ``ratio_median``, ``spearman`` (rank correlation of gx2 and gtheta2 across images), per layer
    ``W_norm`` and the means of log ‖h_t‖² and log ‖J_t‖₂ (``log_h2``, ``log_J``), with ``fro``
    also ``fro_ratio_median`` (the Frobenius bound); plus ``"raw"``: the per-image arrays of the
    first read-out. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from scipy.stats import spearmanr
    m64 = float64_copy(model).eval()
    x64 = x.detach().to("cpu", torch.float64)
    y = y.detach().cpu()
    Js = input_jacobians(m64, x64, chunk=chunk)
    out = {}
    for i, name in enumerate(readouts):
        T = gp_inequality_terms(m64, x64, READOUTS[name], y, chunk=chunk, jacobians=Js)
        s = {"log_gx2": _mean_log(T["gx2"]), "log_bracket": _mean_log(T["bracket"]),
             "log_gtheta2": _mean_log(T["gtheta2"]), "log_ratio": _mean_log(T["ratio"]),
             "ratio_max": float(np.max(T["ratio"])), "ratio_median": float(np.median(T["ratio"])),
             "spearman": float(spearmanr(T["gx2"], T["gtheta2"]).statistic),
             "W_norm": [float(w[0]) for w in T["W_norm"]],
             "log_h2": [_mean_log(h) for h in T["h2"]], "log_J": [_mean_log(j) for j in T["J_norm"]]}
        if fro:
            Tf = gp_inequality_terms(m64, x64, READOUTS[name], y, matrix_norm="fro", chunk=chunk, jacobians=Js)
            s["fro_ratio_median"] = float(np.median(Tf["ratio"]))
        out[name] = s
        if i == 0:
            out["raw"] = {k: T[k] for k in ("gx2", "gtheta2", "bracket", "ratio")}
    return out


def log_range(values) -> float:
    """max − min of a sequence of logs (NaN left out): how far a quantity moves over training, in
    e-folds. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max() - v.min()) if v.size else math.nan


def train_with_terms(data: dict, *, sizes, lr: float, momentum: float = 0.9, batch_size: int = 64,
                     epochs: int, seed: int, n_probe: int, patience: int | None = None,
                     readouts=("loss", "logit"), device=None) -> dict:
    """Train a ReLU MLP ``sizes`` (PyTorch's default init, ``random_mlp`` with ``seed``, float32) with
    minibatch SGD (``momentum``) by :func:`kexue.train.fit` on ``data`` (``X_train, y_train, X_dev,
    y_dev, X_test, y_test``), evaluating dev accuracy after every epoch (early stopping with
    ``patience`` epochs; the best-dev parameters are restored), and read :func:`probe_terms` on the
    first ``n_probe`` test images at initialisation and after every epoch. Returns ``{history:
    [{epoch, dev, terms}], best_epoch, test, final}`` (``final``: the terms of the restored model).
    Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from . import resolve_device
    from .train import fit
    dev = resolve_device(device)
    model = random_mlp(sizes, "relu", 1.0, seed=seed, dtype=torch.float32).to(dev)
    X, y = data["X_train"].to(dev), data["y_train"].to(dev)
    Xp, yp = data["X_test"][:n_probe], data["y_test"][:n_probe]
    per_epoch = math.ceil(len(X) / batch_size)

    def acc(Xe, ye):
        with torch.no_grad():
            return float((model(Xe.to(dev)).argmax(1).cpu() == ye.cpu()).float().mean())

    hist = [{"epoch": 0, "dev": acc(data["X_dev"], data["y_dev"]),
             "terms": probe_terms(model, Xp, yp, readouts)}]

    def evaluate():
        d = acc(data["X_dev"], data["y_dev"])
        hist.append({"epoch": len(hist), "dev": d, "terms": probe_terms(model, Xp, yp, readouts)})
        return d

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    out = fit(list(model.parameters()), lambda idx, rng: F.cross_entropy(model(X[idx]), y[idx]), len(X),
              steps=epochs * per_epoch, batch_size=batch_size, evaluate=evaluate, eval_every=per_epoch,
              optimizer=opt, seed=seed, patience=patience)
    return {"history": hist, "best_epoch": out["best_step"] // per_epoch,
            "test": acc(data["X_test"], data["y_test"]), "final": probe_terms(model, Xp, yp, readouts)}


def gd_run(data: dict, *, sizes, lr: float, stop_loss: float, max_steps: int, seed: int,
           penalty: float = 0.0, n_eval: int | None = None, device=None) -> dict:
    """One arm of the learning-rate experiment: a ReLU MLP ``sizes`` (default init, ``seed``,
    float32) trained by full-batch gradient descent (:func:`gd_to_loss`, optionally with the explicit
    penalty ``penalty · ‖∇_θ L‖²``) on ``data["X_train"], data["y_train"]`` until the training loss
    reaches ``stop_loss``; then the Dirichlet energy of the logits (:func:`dirichlet_energy`) and the
    accuracy on the first ``n_eval`` test images. Returns ``{steps, reached, loss, dirichlet, test,
    seconds}``. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    import time
    from . import resolve_device
    dev = resolve_device(device)
    model = random_mlp(sizes, "relu", 1.0, seed=seed, dtype=torch.float32).to(dev)
    t0 = time.perf_counter()
    r = gd_to_loss(model, data["X_train"].to(dev), data["y_train"].to(dev), lr=lr, stop_loss=stop_loss,
                   max_steps=max_steps, penalty=penalty)
    secs = time.perf_counter() - t0
    Xe, ye = data["X_test"][:n_eval].to(dev), data["y_test"][:n_eval]
    with torch.no_grad():
        test = float((model(Xe).argmax(1).cpu() == ye.cpu()).float().mean())
    return {"steps": r["steps"], "reached": r["reached"], "loss": r["loss"],
            "dirichlet": dirichlet_energy(model, Xe), "test": test, "seconds": secs}


def arc_length_run(*, lr: float, seed: int, n_points: int = 12, width: int = 256, stop_loss: float,
                   max_steps: int, activation: str = "tanh", data_seed: int = 0, grid_points: int = 2001,
                   penalty: float = 0.0) -> dict:
    """The paper's 1-D case: ``n_points`` inputs evenly spaced on [−1, 1] with N(0, 1) targets (drawn
    with ``data_seed``, the same for every arm), an MLP 1 → width → width → 1 (``activation``,
    default init from ``seed``, float64) fitted by full-batch gradient descent on ½ MSE to
    ``stop_loss``; its arc length over [−1, 1] (:func:`arc_length_1d`). Returns ``{steps, reached,
    loss, arc, grid, curve, x, y}``. Chapter ``gradient-penalty-inequality``
    (https://kexue.fm/archives/8796)."""
    g = torch.Generator().manual_seed(data_seed)
    x = torch.linspace(-1, 1, n_points, dtype=torch.float64).reshape(-1, 1)
    y = torch.randn(n_points, generator=g, dtype=torch.float64)
    model = random_mlp([1, width, width, 1], activation, 1.0, seed=seed)
    r = gd_to_loss(model, x, y, lr=lr, stop_loss=stop_loss, max_steps=max_steps, loss="mse", penalty=penalty)
    grid = torch.linspace(-1, 1, grid_points, dtype=torch.float64)
    with torch.no_grad():
        curve = model(grid.reshape(-1, 1)).reshape(-1)
    return {"steps": r["steps"], "reached": r["reached"], "loss": r["loss"], "arc": arc_length_1d(model, grid),
            "grid": grid.numpy(), "curve": curve.numpy(), "x": x.reshape(-1).numpy(), "y": y.numpy()}


def random_net_scan(n_nets: int, *, n_inputs: int = 16, seed: int = 0, residual: bool = False,
                    identity: bool = True, max_width: int = 128) -> dict:
    """The inequality over random nets, in float64: ``n_nets`` MLPs of depth 1-6 (input 2-32, widths
    4-``max_width``, 2-10 outputs), each of the five :data:`ACTIVATIONS` and init scales
    ×{0.5, 1, 2} in turn, ``n_inputs`` N(0, s²) inputs each (s ∈ {0.3, 1, 3}), read-outs f = loss and
    true logit alternately. With ``residual`` the nets are :class:`ResidualMLP` (depth 1-4 blocks,
    weights × the init scale), which the proof does not cover. Returns per-sample arrays ``ratio``,
    ``ratio_fro`` and ``activation``; ``layer_max`` (the largest per-layer ratio w_lhs/w_rhs or
    b_lhs/b_rhs), ``net_max`` (each net's largest ratio) and, with ``identity``, ``identity_max``
    (the largest key-identity residual, :func:`key_identity_residual`). Chapter
    ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    rng = np.random.default_rng(seed)
    acts, scales = list(ACTIVATIONS), [0.5, 1.0, 2.0]
    ratio, ratio_fro, act_of, net_max, layer_max, ident = [], [], [], [], 0.0, 0.0
    for k in range(n_nets):
        act, sc = acts[k % len(acts)], scales[(k // len(acts)) % len(scales)]
        d_in, d_out = int(rng.integers(2, 33)), int(rng.integers(2, 11))
        if residual:
            with torch.random.fork_rng():
                torch.manual_seed(int(rng.integers(2 ** 31)))
                model = ResidualMLP(d_in, int(rng.integers(4, max_width + 1)), int(rng.integers(1, 5)), d_out, act)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(sc)
        else:
            depth = int(rng.integers(1, 7))
            sizes = [d_in] + [int(rng.integers(4, max_width + 1)) for _ in range(depth - 1)] + [d_out]
            model = random_mlp(sizes, act, sc, seed=int(rng.integers(2 ** 31)))
        x = torch.as_tensor(rng.standard_normal((n_inputs, d_in)) * rng.choice([0.3, 1.0, 3.0]))
        y = torch.as_tensor(rng.integers(0, d_out, n_inputs))
        f = per_sample_loss if k % 2 == 0 else true_logit
        Js = input_jacobians(model, x)
        T = gp_inequality_terms(model, x, f, y, jacobians=Js)
        Tf = gp_inequality_terms(model, x, f, y, matrix_norm="fro", jacobians=Js)
        ratio.append(T["ratio"]); ratio_fro.append(Tf["ratio"]); act_of += [act] * n_inputs
        net_max.append(float(np.max(T["ratio"])))
        for wl, wr, bl, br in zip(T["w_lhs"], T["w_rhs"], T["b_lhs"], T["b_rhs"]):
            layer_max = max(layer_max, float(np.max(wl[wr > 0] / wr[wr > 0], initial=0.0)),
                            float(np.max(bl[br > 0] / br[br > 0], initial=0.0)))
        if identity and not residual:
            ident = max(ident, float(np.max(key_identity_residual(model, x[:4], f, y[:4]))))
    out = {"ratio": np.concatenate(ratio), "ratio_fro": np.concatenate(ratio_fro), "activation": np.array(act_of),
           "net_max": np.array(net_max), "layer_max": layer_max}
    if identity and not residual:
        out["identity_max"] = ident
    return out


def init_spectral_norms(shapes, *, seed: int = 0) -> list[dict]:
    """‖W‖₂ of weight matrices (m × n = out × in) at the standard inits (:data:`INITS`, through
    ``nn.Linear``'s default and ``torch.nn.init``; Kaiming for ReLU, fan-in) against the random-matrix
    value σ(√m + √n) (:func:`random_matrix_spectral_norm`; 1 for orthogonal): the paper says ‖W‖ is
    near 0 at initialisation, Su says near 1. Returns one row per (init, shape): ``{init, m, n,
    measured, predicted}``. Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for init in INITS:
            for m, n in shapes:
                W = nn.Linear(n, m, dtype=torch.float64).weight.detach().clone()
                if init == "pytorch default":
                    sigma = 1 / math.sqrt(3 * n)
                elif init == "xavier uniform":
                    nn.init.xavier_uniform_(W); sigma = math.sqrt(2 / (m + n))
                elif init == "xavier normal":
                    nn.init.xavier_normal_(W); sigma = math.sqrt(2 / (m + n))
                elif init == "kaiming normal":
                    nn.init.kaiming_normal_(W, nonlinearity="relu"); sigma = math.sqrt(2 / n)
                else:
                    nn.init.orthogonal_(W); sigma = None
                pred = 1.0 if sigma is None else random_matrix_spectral_norm(m, n, sigma)
                rows.append({"init": init, "m": m, "n": n, "measured": float(spectral_norm(W)), "predicted": pred})
    return rows


__all__ += ["fast_spectral_norm", "READOUTS", "INITS", "probe_terms", "log_range", "train_with_terms", "gd_run", "arc_length_run",
            "random_net_scan", "init_spectral_norms"]
