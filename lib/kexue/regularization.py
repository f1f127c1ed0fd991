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


def _matrix_norm(A, matrix_norm: str):
    if matrix_norm == "spectral":
        return spectral_norm(A)
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


def input_jacobians(model: nn.Module, x: torch.Tensor, chunk: int = 64) -> list[torch.Tensor]:
    """``J_t = ∇_x h_t`` for every Linear layer t: the Jacobian of the layer's input with respect to
    the network input, per sample, shape ``(n, dim h_t, dim x)`` (``J_1 = I`` for a plain MLP).
    Reverse mode (``torch.func.jacrev``), batched with ``vmap``, ``chunk`` samples at a time.
    Chapter ``gradient-penalty-inequality`` (https://kexue.fm/archives/8796)."""
    from torch.func import jacrev, vmap

    def hidden(x1):
        with _Capture(model) as cap:
            model(x1.unsqueeze(0))
        return tuple(h.squeeze(0) for h in cap.h)

    parts = [vmap(jacrev(hidden))(x[i:i + chunk]) for i in range(0, len(x), chunk)]
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
                        chunk: int = 64) -> dict:
    """Every term of the inequality, per sample (arrays of length n, float64 numpy):

    ``gx2`` = ‖∇_x f‖², ``gtheta2`` = ‖∇_θ f‖² (= Σ_t ‖δ_t‖² (‖h_t‖² + 1[bias])), ``bracket`` =
    Σ_t (1[bias] + ‖h_t‖²) / (‖W_t‖² ‖J_t‖²), ``lhs`` = gx2 · bracket, ``rhs`` = gtheta2,
    ``ratio`` = lhs / rhs (0 where both are 0, e.g. a dead ReLU net); per layer (lists over t) ``h2``, ``W_norm``, ``J_norm``, ``w_lhs`` =
    gx2 ‖h_t‖²/(‖W_t‖²‖J_t‖²), ``w_rhs`` = ‖∇_{W_t} f‖², ``b_lhs``, ``b_rhs`` (the two per-layer
    inequalities). ``matrix_norm`` ('spectral' or 'fro') is the norm of W_t and J_t; Frobenius
    gives a smaller, still valid left side. Chapter ``gradient-penalty-inequality``
    (https://kexue.fm/archives/8796)."""
    gx, hs, ds, fx = _deltas(model, x, f, y)
    Js = input_jacobians(model, x, chunk=chunk)
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
            total += float(J.flatten(1).pow(2).sum())
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
        lv = float(L)
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
