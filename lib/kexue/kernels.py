"""Tangent kernels, path kernels and the kernel-machine form of a network trained by gradient descent.

From https://kexue.fm/archives/8009 (chapter ``sgd-kernel-machine``), which discusses P. Domingos,
"Every Model Learned by Gradient Descent Is Approximately a Kernel Machine" (arXiv 2012.00152).
For a scalar model f_θ trained on L(θ) = Σ_i l(y_i, f_θ(x_i)) (a sum, not a mean):

    tangent kernel  K_θ(x, x') = <∇_θ f_θ(x), ∇_θ f_θ(x')>                              (eq. 1)
    gradient flow   df_θ(x)/dt = Σ_i α_{θ,i} K_θ(x, x_i),   α_{θ,i} = -∂l/∂f(x_i)        (eq. 2)

Gradient descent with step η (θ_{t+1} = θ_t - η Σ_i l'_i(t) ∇f_t(x_i)) gives, to first order,

    f̂_T(x) = f_0(x) + Σ_i Σ_{t<T} η (-l'_i(t)) K_t(x, x_i)                              (eq. 3)
           = β(x) + Σ_i α_i(x) K(x, x_i)                                                (eq. 4)

with β(x) = f_0(x), the path kernel K(x, x_i) = Σ_{t<T} η K_t(x, x_i) and the K-weighted time
average α_i(x) = Σ_t η (-l'_i(t)) K_t(x, x_i) / K(x, x_i). Kernel and loss derivative are taken at
θ_t, *before* the update (a left Riemann sum); the gap f_T - f̂_T is O(η · ηT), and it is exactly
zero for a model that is linear in θ, whose tangent kernel does not move.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "linear": lambda h: h}


# -- losses and their derivative in f ---------------------------------------------------------------
def squared_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(y, f) = (f - y)² / 2 per sample, so l' = f - y (https://kexue.fm/archives/8009, chapter
    ``sgd-kernel-machine``)."""
    return 0.5 * (f - y) ** 2


def logistic_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(y, f) = log(1 + exp(-y f)) per sample, labels y ∈ {-1, +1}; l' = -y σ(-y f)
    (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return nn.functional.softplus(-y * f)


LOSS_DERIVATIVES = {
    squared_loss: lambda f, y: f - y,
    logistic_loss: lambda f, y: -y * torch.sigmoid(-y * f),
}


def loss_derivative(loss, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂l(y, f)/∂f per sample, in closed form for ``squared_loss`` and ``logistic_loss`` and by
    autograd for any other per-sample loss (https://kexue.fm/archives/8009, chapter
    ``sgd-kernel-machine``); -loss_derivative is the article's α_{θ,i}."""
    if loss in LOSS_DERIVATIVES:
        return LOSS_DERIVATIVES[loss](f, y)
    f = f.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(f, y).sum(), f)
    return g


# -- the model --------------------------------------------------------------------------------------
PARAMETERISATIONS = ("ntk", "standard")


class NTKLinear(nn.Module):
    """Dense layer in the NTK parameterisation: y = x Wᵀ / √(fan_in) + b, with W, b ~ N(0, 1).

    The 1/√fan_in sits in the forward pass, not in the initial variance, so the tangent kernel
    stays O(1) as the width grows and one learning rate serves every width (Jacot et al. 2018).
    ``parameterisation="standard"`` is instead PyTorch's default ``nn.Linear``: y = x Wᵀ + b with W,
    b ~ U(-1/√fan_in, 1/√fan_in) (its kaiming-uniform with a = √5), drawn from ``generator``
    (``bias_std`` unused). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""

    def __init__(self, fan_in: int, fan_out: int, *, bias_std: float = 1.0,
                 generator: torch.Generator | None = None, dtype=torch.float64,
                 parameterisation: str = "ntk"):
        super().__init__()
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"unknown parameterisation {parameterisation!r}; use one of {PARAMETERISATIONS}")
        if parameterisation == "ntk":
            self.scale = 1.0 / math.sqrt(fan_in)
            self.weight = nn.Parameter(torch.randn(fan_out, fan_in, generator=generator, dtype=dtype))
            self.bias = nn.Parameter(bias_std * torch.randn(fan_out, generator=generator, dtype=dtype))
        else:
            self.scale, bound = 1.0, 1.0 / math.sqrt(fan_in)
            uniform = lambda *shape: (2 * torch.rand(*shape, generator=generator, dtype=dtype) - 1) * bound  # noqa: E731
            self.weight = nn.Parameter(uniform(fan_out, fan_in))
            self.bias = nn.Parameter(uniform(fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T * self.scale + self.bias


class NTKMLP(nn.Module):
    """Scalar-output MLP widths[0] → … → widths[-1] = 1 of ``NTKLinear`` layers (NTK or, with
    ``parameterisation="standard"``, PyTorch's default parameterisation) and a pointwise
    activation; returns shape (n,). No dropout or normalisation: f(x) depends on x alone, as the
    derivation needs (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""

    def __init__(self, widths: list[int], act: str = "tanh", *, bias_std: float = 1.0,
                 generator: torch.Generator | None = None, dtype=torch.float64, parameterisation: str = "ntk"):
        super().__init__()
        if widths[-1] != 1:
            raise ValueError(f"the last width must be 1 (a scalar output), got {widths[-1]}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {list(ACTIVATIONS)}")
        self.act = act
        self.layers = nn.ModuleList(NTKLinear(m, n, bias_std=bias_std, generator=generator, dtype=dtype,
                                              parameterisation=parameterisation)
                                    for m, n in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < len(self.layers) - 1:
                h = ACTIVATIONS[self.act](h)
        return h.squeeze(-1)


def num_params(model: nn.Module) -> int:
    """Number of scalar parameters P (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return sum(p.numel() for p in model.parameters())


# -- per-sample gradients and the tangent kernel ----------------------------------------------------
def _scalar_fn(model: nn.Module):
    def f(params, x):
        out = functional_call(model, params, (x.unsqueeze(0),)).reshape(())
        return out, out
    return f


def per_sample_grads_and_outputs(model: nn.Module, xs: torch.Tensor, params: dict | None = None, *,
                                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, f): G[n, P] stacks ∇_θ f_θ(x_n) flattened in ``model.named_parameters()`` order, f[n] the
    outputs f_θ(x_n), in one batched call of ``torch.func.vmap(jacrev(functional_call))`` (no Python
    loop over samples). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    params = params if params is not None else {k: v.detach() for k, v in model.named_parameters()}
    jac, out = vmap(jacrev(_scalar_fn(model), has_aux=True), in_dims=(None, 0),
                    chunk_size=chunk_size)(params, xs)
    return torch.cat([jac[k].reshape(xs.shape[0], -1) for k in params], dim=1), out


def per_sample_grads(model: nn.Module, xs: torch.Tensor, params: dict | None = None, *,
                     chunk_size: int | None = None) -> torch.Tensor:
    """G[n, P] = [∇_θ f_θ(x_1); …; ∇_θ f_θ(x_n)], flattened per sample (see
    ``per_sample_grads_and_outputs``). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    return per_sample_grads_and_outputs(model, xs, params, chunk_size=chunk_size)[0]


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                  chunk_size: int | None = None) -> torch.Tensor:
    """K[a, b] = <∇_θ f(x1_a), ∇_θ f(x2_b)> (eq. 1), the empirical tangent kernel of a scalar model,
    accumulated one parameter tensor at a time so that no n × P matrix of all parameters is built
    (x2 = x1 when omitted). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    fn = vmap(jacrev(_scalar_fn(model), has_aux=True), in_dims=(None, 0), chunk_size=chunk_size)
    j1 = fn(params, x1)[0]
    j2 = j1 if x2 is None else fn(params, x2)[0]
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    return sum(j1[k].reshape(n1, -1) @ j2[k].reshape(n2, -1).T for k in params)


def kernel_drift(k_start: torch.Tensor, k_end: torch.Tensor) -> float:
    """‖K_T - K_0‖_F / ‖K_0‖_F, the relative change of a kernel matrix over training
    (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return float(torch.linalg.norm(k_end - k_start) / torch.linalg.norm(k_start))


# -- gradient descent that records the path kernel --------------------------------------------------
class PathKernelRecorder:
    """Accumulates, for a fixed probe set X and training set {x_i}, over the steps of a GD run:

        path_K[a, i]      = Σ_t η_t K_t(X_a, x_i)                       (path kernel, eq. 4)
        path_alphaK[a, i] = Σ_t η_t (-l'_i(t)) K_t(X_a, x_i)            (α_i(X_a) · K(X_a, x_i))
        alpha_sum[i]      = Σ_t η_t (-l'_i(t))                           (the un-weighted sum)

    ``record(lr, G_probe, G_train, dloss, batch)`` adds one step; with a minibatch only the indices in
    ``batch`` enter (SGD). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""

    def __init__(self, n_probe: int, n_train: int, dtype=torch.float64, device=None):
        self.path_K = torch.zeros(n_probe, n_train, dtype=dtype, device=device)
        self.path_alphaK = torch.zeros(n_probe, n_train, dtype=dtype, device=device)
        self.alpha_sum = torch.zeros(n_train, dtype=dtype, device=device)
        self.steps = 0

    def record(self, lr: float, g_probe: torch.Tensor, g_train: torch.Tensor, dloss: torch.Tensor,
               batch: torch.Tensor | None = None) -> None:
        idx = torch.arange(g_train.shape[0], device=g_train.device) if batch is None else batch
        k_t = g_probe @ g_train[idx].T                       # K_t(X, x_i) for i in the batch
        self.path_K[:, idx] += lr * k_t
        self.path_alphaK[:, idx] += lr * (-dloss[idx]) * k_t
        self.alpha_sum[idx] += lr * (-dloss[idx])
        self.steps += 1


def train_with_path_kernel(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                           x_probe: torch.Tensor, *, loss=squared_loss, lr: float, steps: int,
                           batch_size: int | None = None, seed: int = 0, x_eval: torch.Tensor | None = None,
                           chunk_size: int | None = None, optimizer: str = "gd", momentum: float = 0.9,
                           betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> dict:
    """Train ``model`` in place by (S)GD on the summed loss Σ_{i∈B_t} l(y_i, f(x_i)) and record the
    path kernel on ``x_probe``. At each step, at θ_t: G_train, G_probe, f and l'_i = ∂l/∂f (all by
    ``per_sample_grads_and_outputs``); record K_t = G_probe G_trainᵀ; then θ_{t+1} = θ_t - η Σ_{i∈B_t}
    l'_i ∇f(x_i) = θ_t - η G_train[B]ᵀ l'[B], the exact gradient of the summed loss.
    ``batch_size=None`` is full-batch GD. Returns f0_probe, fT_probe (= β and the network after
    T steps), the recorder's sums, K0/KT (probe × train kernels at θ_0, θ_T), K0_train/KT_train
    (train × train), the train-loss history and ``alpha_t`` [T, n], the loss derivatives
    α_{θ(t),i} = -l'_i(t) of every training point at every step (all points, also under SGD).
    Everything runs on the device of ``x_train`` (move the model there first); the minibatches are
    drawn on the CPU from ``seed``, so they do not depend on the device.

    ``x_eval`` (optional, many points): only the *sum* over i of eq. (3) is kept there, through one
    forward-mode product per step, Σ_i η(-l'_i) K_t(x, x_i) = ∇f_t(x)·(θ_{t+1} - θ_t) (``jvp``), so
    no per-pair kernel is stored. Adds eval_f0, eval_fT, eval_fhat (= f_0 + Σ_t of those products,
    the kernel machine's prediction) and eval_frozen = f_0(x) + Σ_i alpha_sum_i K_0(x, x_i) (the
    kernel frozen at θ_0).

    Other optimizers (``optimizer``), on the same gradient g_t = G_train[B]ᵀ l'[B]: ``"momentum"``
    is heavy ball as in ``torch.optim.SGD(momentum=μ)``, v ← μ v + g, Δθ = -η v; ``"adam"`` is
    ``torch.optim.Adam`` (bias-corrected m̂, v̂; Δθ = -η m̂ / (√v̂ + ε)). The recorder still
    sums the gradient-descent form η(-l'_i) K_t (the article's formula with step η), and
    ``tangent_probe`` = f_0 + Σ_t ∇f_t(X)·Δθ_t = f_0 + Σ_t G_probe,t Δθ_t is the first-order
    machine of the actual steps (for GD it equals β + Σ_i α_i(x) K(x, x_i); for momentum and Adam
    Δθ_t is a combination of past per-sample gradients, so it is a kernel machine with the
    optimizer's own, two-time or preconditioned, path kernel). ``full_alphaK`` [n_probe] =
    Σ_t η Σ_i (-l'_i(t)) K_t(X, x_i) sums over *every* training point at every step, also under
    SGD (the full-data machine along the SGD path is f_0 + (|B|/n) · full_alphaK).
    ``frozen_probe`` = f_0 + ∇f_0(X)·(θ_T - θ_0), the model linearised at θ_0 and moved by the actual
    total displacement (the tangent features frozen at initialisation), for any optimizer; for GD
    it is Σ_t η Σ_i (-l'_i(t)) <∇f_0(X), ∇f_t(x_i)>, not the machine K_0 · alpha_sum.
    A run whose training loss becomes non-finite or exceeds 1e6 × its initial value stops there:
    ``diverged`` is True and fT_probe / tangent_probe are NaN. ``sharpness`` is not computed here
    (see ``hessian_top_eigenvalue``). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    if optimizer not in ("gd", "momentum", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'gd', 'momentum' or 'adam'")
    n = x_train.shape[0]
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    shapes = [(k, v.shape, v.numel()) for k, v in params.items()]
    device = x_train.device
    rec = PathKernelRecorder(x_probe.shape[0], n, dtype=x_train.dtype, device=device)
    xs = torch.cat([x_train, x_probe])
    losses, alpha_t = [], []
    out = {}

    def unflatten(vec):
        parts, offset = {}, 0
        for k, shape, size in shapes:
            parts[k] = vec[offset:offset + size].reshape(shape)
            offset += size
        return parts

    def eval_jvp(at, direction):  # ∇_θ f_at(x_eval) · direction, batched over x_eval
        return jvp(lambda p: functional_call(model, p, (x_eval,)), (at,), (unflatten(direction),))

    if x_eval is not None:
        params0 = dict(params)
        eval_sum = torch.zeros(x_eval.shape[0], dtype=x_train.dtype, device=device)
    n_par = sum(size for _, _, size in shapes)
    buf_m = torch.zeros(n_par, dtype=x_train.dtype, device=device)
    buf_v = torch.zeros(n_par, dtype=x_train.dtype, device=device)
    tangent = torch.zeros(x_probe.shape[0], dtype=x_train.dtype, device=device)
    full_alphaK = torch.zeros(x_probe.shape[0], dtype=x_train.dtype, device=device)
    displacement = torch.zeros(n_par, dtype=x_train.dtype, device=device)
    out["diverged"] = False
    for t in range(steps + 1):
        g_all, f_all = per_sample_grads_and_outputs(model, xs, params, chunk_size=chunk_size)
        g_train, g_probe, f_train = g_all[:n], g_all[n:], f_all[:n]
        losses.append(float(loss(f_train, y_train).sum()))
        if t == 0:
            out["f0_probe"] = f_all[n:].clone()
            out["K0"] = g_probe @ g_train.T
            out["K0_train"] = g_train @ g_train.T
            g_probe0 = g_probe.clone()
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6 * max(losses[0], 1e-300):
            out["diverged"] = True
            nan = torch.full_like(out["f0_probe"], float("nan"))
            out["fT_probe"], out["tangent_probe"] = nan, nan.clone()
            out["KT"], out["KT_train"] = torch.full_like(out["K0"], float("nan")), torch.full_like(out["K0_train"], float("nan"))
            break
        if t == steps:
            out["fT_probe"] = f_all[n:].clone()
            out["KT"] = g_probe @ g_train.T
            out["KT_train"] = g_train @ g_train.T
            break
        dloss = loss_derivative(loss, f_train, y_train)
        alpha_t.append(-dloss)
        batch = None if batch_size is None else torch.randperm(n, generator=gen)[:batch_size].to(device)
        rec.record(lr, g_probe, g_train, dloss, batch)
        full_alphaK += lr * (g_probe @ (g_train.T @ -dloss))
        idx = torch.arange(n, device=device) if batch is None else batch
        grad = g_train[idx].T @ dloss[idx]
        if optimizer == "gd":
            step = lr * grad
        elif optimizer == "momentum":
            buf_m = momentum * buf_m + grad
            step = lr * buf_m
        else:
            b1, b2 = betas
            buf_m = b1 * buf_m + (1 - b1) * grad
            buf_v = b2 * buf_v + (1 - b2) * grad ** 2
            m_hat, v_hat = buf_m / (1 - b1 ** (t + 1)), buf_v / (1 - b2 ** (t + 1))
            step = lr * m_hat / (v_hat.sqrt() + eps)
        tangent -= g_probe @ step
        displacement -= step
        if x_eval is not None:
            f_eval, inc = eval_jvp(params, -step)
            if t == 0:
                out["eval_f0"], g_train0 = f_eval.detach().clone(), g_train.clone()
            eval_sum += inc
        params = {k: params[k] - v for k, v in unflatten(step).items()}
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(params[k])
    if not out["diverged"]:
        out["tangent_probe"] = out["f0_probe"] + tangent
        out["frozen_probe"] = out["f0_probe"] + g_probe0 @ displacement
    else:
        out["frozen_probe"] = torch.full_like(out["f0_probe"], float("nan"))
    out.update(path_K=rec.path_K, path_alphaK=rec.path_alphaK, alpha_sum=rec.alpha_sum, full_alphaK=full_alphaK,
               train_loss=np.array(losses), steps=steps, lr=lr, optimizer=optimizer,
               alpha_t=torch.stack(alpha_t) if alpha_t else torch.zeros(0, n, dtype=x_train.dtype, device=device))
    if x_eval is not None and steps > 0 and not out["diverged"]:
        with torch.no_grad():
            out["eval_fT"] = model(x_eval)
        out["eval_fhat"] = out["eval_f0"] + eval_sum
        out["eval_frozen"] = out["eval_f0"] + eval_jvp(params0, g_train0.T @ rec.alpha_sum)[1]
    return out


def kernel_machine_weights(path_K: torch.Tensor, path_alphaK: torch.Tensor) -> torch.Tensor:
    """α_i(x) = Σ_t η(-l'_i(t)) K_t(x, x_i) / K(x, x_i), the K-weighted time average of the loss
    derivative (eq. 4); undefined (NaN) where the path kernel is exactly 0.
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    return torch.where(path_K != 0, path_alphaK / path_K, torch.full_like(path_K, float("nan")))


def kernel_machine_predict(beta: torch.Tensor, path_K: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """f̂(x) = β(x) + Σ_i α_i(x) K(x, x_i) (eq. 4); ``alpha`` is (n_probe, n_train) for the
    x-dependent weights or (n_train,) for x-independent ones (an SVM-like machine).
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    return beta + (alpha * path_K).sum(-1)


def x_dependence(path_K: torch.Tensor, path_alphaK: torch.Tensor, alpha_t: torch.Tensor) -> dict:
    """How much the kernel-machine weights α_i(x) (eq. 4) depend on the input x, over a probe set X.

    For each training point i the probes are weighted by w_a = |K(X_a, x_i)| / Σ_a |K(X_a, x_i)| (a
    pair with a tiny path kernel has an ill-defined α_i(x) and barely enters f̂). Returns
    ``alpha_fixed`` [n] the w-weighted mean of α_i(x) over the probes (x-independent weights, an
    SVM-like machine), ``spread_x`` [n] the w-weighted sd of α_i(x) over the probes, ``spread_t`` [n]
    the sd over the steps of α_{θ(t),i} (``alpha_t``, the quantity α_i(x) averages with x-dependent
    weights), and the medians over i of ``rel_spread`` = spread_x / |alpha_fixed| and
    ``time_ratio`` = spread_x / spread_t (0: the weights' x-dependence does not matter; values near
    1: α_i(x) moves with x as much as the loss derivative moves over training).
    https://kexue.fm/archives/8009 (§ 结果分析), chapter ``sgd-kernel-machine``."""
    alpha = kernel_machine_weights(path_K, path_alphaK)
    w = path_K.abs() / path_K.abs().sum(0, keepdim=True)
    alpha = torch.where(w > 0, alpha, torch.zeros_like(alpha))  # a zero path kernel has zero weight
    mean_x = (w * alpha).sum(0)
    spread_x = torch.sqrt((w * (alpha - mean_x) ** 2).sum(0))
    spread_t = alpha_t.std(0, unbiased=False)
    return {"alpha_fixed": mean_x, "spread_x": spread_x, "spread_t": spread_t,
            "rel_spread": float((spread_x / mean_x.abs()).median()),
            "time_ratio": float((spread_x / spread_t).median())}


def sign_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of points where sign a = sign b (a classifier's decisions, labels ±1)
    (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return float((torch.sign(a) == torch.sign(b)).double().mean())


def reconstruction_error(f_T: torch.Tensor, f_hat: torch.Tensor, f_0: torch.Tensor) -> float:
    """max_x |f_T(x) - f̂_T(x)| / max_x |f_T(x) - f_0(x)|: the kernel machine's error relative to how
    far training moved the function (https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return float((f_T - f_hat).abs().max() / (f_T - f_0).abs().max())


def top_contributors(path_alphaK_row: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Indices of the k training points with the largest |α_i(x) K(x, x_i)| for one probe x: the
    training points that "explain" the prediction f̂(x) - β(x) most (the retrieval view of
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``)."""
    return torch.argsort(path_alphaK_row.abs(), descending=True)[:k]


def most_similar(path_K_row: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Indices of the k training points with the largest path kernel K(x, x_i) for one probe x: the
    training points most similar to x *in the network's gradients*, the retrieval view of
    https://kexue.fm/archives/8009 (chapter ``sgd-kernel-machine``)."""
    return torch.argsort(path_K_row, descending=True)[:k]


def retrieval_summary(path_K: torch.Tensor, path_alphaK: torch.Tensor, x_train: torch.Tensor,
                      y_train: torch.Tensor, x_probe: torch.Tensor, f_probe: torch.Tensor, k: int = 10) -> dict:
    """Averages over the probes x of: ``label_match`` the fraction of the k ``most_similar`` training
    points whose label y_i ∈ {±1} equals sign f(x); ``distance_ratio`` their mean input distance to x
    over the mean distance of all training points; ``cancellation`` (median over probes)
    Σ_i |α_i(x) K(x, x_i)| / |Σ_i α_i(x) K(x, x_i)|, how much the terms of eq. (4) cancel (1: none).
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    match, dist_ratio, cancel = [], [], []
    for a in range(x_probe.shape[0]):
        top = most_similar(path_K[a], k)
        dist = (x_train - x_probe[a]).norm(dim=1)
        match.append(float((y_train[top] == torch.sign(f_probe[a])).double().mean()))
        dist_ratio.append(float(dist[top].mean() / dist.mean()))
        cancel.append(float(path_alphaK[a].abs().sum() / path_alphaK[a].sum().abs()))
    return {"label_match": float(np.mean(match)), "distance_ratio": float(np.mean(dist_ratio)),
            "cancellation": float(np.median(cancel))}


def gradient_descent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss=squared_loss,
                     lr: float, steps: int) -> np.ndarray:
    """Plain full-batch GD θ ← θ - η ∇_θ Σ_i l(y_i, f(x_i)) with autograd (no kernel recorded), for
    wide models whose per-sample gradients are too large to keep every step. Returns the loss per
    step. https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    losses = []
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        total = loss(model(x), y).sum()
        total.backward()
        losses.append(total.item())
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return np.array(losses)


def width_drift(widths: list[int], x_train: torch.Tensor, y_train: torch.Tensor, x_probe: torch.Tensor, *,
                depth: int = 2, loss=logistic_loss, lr: float, steps: int, seeds: list[int],
                chunk_size: int | None = 16) -> dict:
    """For each width w and seed: an ``NTKMLP`` [d, w × depth, 1], the probe Gram K(X, X) before and
    after ``steps`` of full-batch GD, its ``kernel_drift``, the change of the function on the probes
    max|f_T - f_0| and the final training loss, on the device of ``x_train``. Returns {w: {"drift": [...], "df": [...],
    "loss": [...]}}. https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    out = {}
    for w in widths:
        row = {"drift": [], "df": [], "loss": []}
        for s in seeds:
            model = NTKMLP([x_train.shape[1]] + [w] * depth + [1], generator=torch.Generator().manual_seed(s),
                           dtype=x_train.dtype).to(x_train.device)
            k0 = empirical_ntk(model, x_probe, chunk_size=chunk_size)
            with torch.no_grad():
                f0 = model(x_probe)
            gradient_descent(model, x_train, y_train, loss=loss, lr=lr, steps=steps)
            kt = empirical_ntk(model, x_probe, chunk_size=chunk_size)
            with torch.no_grad():
                row["df"].append(float((model(x_probe) - f0).abs().max()))
                row["loss"].append(float(loss(model(x_train), y_train).sum()))
            row["drift"].append(kernel_drift(k0, kt))
        out[w] = row
    return out


def make_sine_regression(n: int = 20, noise: float = 0.1, seed: int = 0, *, dtype=torch.float64):
    """x ~ U(-1, 1) (n points, sorted), y = sin(3x) + noise · ε, ε ~ N(0, 1): the 1-D regression
    set of chapter ``sgd-kernel-machine`` (https://kexue.fm/archives/8009). Returns (x[n, 1], y[n])."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.sort(2 * torch.rand(n, generator=gen, dtype=dtype) - 1).values
    y = torch.sin(3 * x) + noise * torch.randn(n, generator=gen, dtype=dtype)
    return x[:, None], y


def make_moons_split(n_train: int = 200, n_test: int = 1000, noise: float = 0.2, seed: int = 0, *,
                     dtype=torch.float64) -> dict:
    """scikit-learn's two moons, generated offline: independent train and test draws (seeds ``seed``
    and ``seed + 1``), labels mapped to ±1, inputs standardised with the training mean and std.
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    from sklearn.datasets import make_moons
    xtr, ytr = make_moons(n_train, noise=noise, random_state=seed)
    xte, yte = make_moons(n_test, noise=noise, random_state=seed + 1)
    mu, sd = xtr.mean(0), xtr.std(0)
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return {"x_train": t((xtr - mu) / sd), "y_train": t(2.0 * ytr - 1), "x_test": t((xte - mu) / sd),
            "y_test": t(2.0 * yte - 1)}


def drift_slopes(sweep: dict) -> list[float]:
    """Per seed, the least-squares slope of log(kernel drift) against log(width) over the widths of a
    ``width_drift`` result (lazy-training theory: about -1/2). https://kexue.fm/archives/8009,
    chapter ``sgd-kernel-machine``."""
    widths = sorted(sweep)
    logw = np.log(np.array(widths, dtype=float))
    per_seed = np.array([sweep[w]["drift"] for w in widths])  # [widths, seeds]
    return [float(np.polyfit(logw, np.log(per_seed[:, s]), 1)[0]) for s in range(per_seed.shape[1])]


# -- step sizes, the initial output, retrieval baselines (issue 17) ---------------------------------
def hessian_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss=squared_loss,
                           iters: int = 100, seed: int = 0, tol: float = 1e-10) -> float:
    """The eigenvalue of largest magnitude of the Hessian ∇²_θ L of the summed loss
    L(θ) = Σ_i l(y_i, f_θ(x_i)) at the model's current parameters, by power iteration on exact
    Hessian-vector products (forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``); no
    P × P matrix is built. 2 / λ_max is the edge of stability of gradient descent with step η on L
    (a quadratic diverges for η > 2/λ_max). https://kexue.fm/archives/8009, chapter
    ``sgd-kernel-machine``."""
    from torch.func import grad
    params = {k: v.detach() for k, v in model.named_parameters()}
    keys = list(params)

    def total(p):
        return loss(functional_call(model, p, (x,)), y).sum()

    g = grad(total)

    def hvp(vec):
        return jvp(g, (params,), (vec,))[1]

    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(params[k].shape, generator=gen, dtype=params[k].dtype).to(params[k].device) for k in keys}
    norm = torch.sqrt(sum((v[k] ** 2).sum() for k in keys))
    v = {k: v[k] / norm for k in keys}
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        new = float(sum((v[k] * hv[k]).sum() for k in keys))  # Rayleigh quotient
        norm = torch.sqrt(sum((hv[k] ** 2).sum() for k in keys))
        v = {k: hv[k] / norm for k in keys}
        if abs(new - lam) <= tol * max(abs(new), 1.0):
            lam = new
            break
        lam = new
    return lam


def constant_beta_error(f_0: torch.Tensor, f_T: torch.Tensor) -> float:
    """max_x |f_0(x) - mean_x f_0| / max_x |f_T(x) - f_0(x)| over a set of inputs: what replacing
    β(x) = f_0(x) by the constant mean_x f_0 (the article: "我们可以将当它是一个常数项") changes in
    the kernel machine β(x) + Σ_i α_i(x) K(x, x_i), relative to how far training moved the function
    (0: f_0 is constant). https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    return float((f_0 - f_0.mean()).abs().max() / (f_T - f_0).abs().max())


def retrieval_label_match(scores: torch.Tensor, y_train: torch.Tensor, f_probe: torch.Tensor, k: int = 10) -> float:
    """For each probe a (row of ``scores`` [n_probe, n_train], larger = more similar), the fraction of
    its k highest-scoring training points whose label y_i ∈ {±1} equals the network's call
    sign f(x_a); the mean over probes. Scores: the path kernel K(x, x_i) (the article's retrieval by
    gradient similarity), the initial kernel K_0, or -‖x - x_i‖ (Euclidean k nearest neighbours).
    https://kexue.fm/archives/8009 (§ 拓展思考), chapter ``sgd-kernel-machine``."""
    top = torch.topk(scores, k, dim=1).indices
    return float((y_train[top] == torch.sign(f_probe)[:, None]).double().mean())


def euclidean_scores(x_probe: torch.Tensor, x_train: torch.Tensor) -> torch.Tensor:
    """-‖x_a - x_i‖ for every probe a and training point i: the input-space similarity that
    ``retrieval_label_match`` ranks for Euclidean k nearest neighbours (https://kexue.fm/archives/8009,
    chapter ``sgd-kernel-machine``)."""
    return -torch.cdist(x_probe, x_train)


def step_size_sweep(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_probe: torch.Tensor, *,
                    lrs: list[float], steps: int, optimizer: str = "gd", loss=squared_loss, **opt_kw) -> list[dict]:
    """One run of ``train_with_path_kernel`` per step size, each on a fresh copy of ``model`` (which
    stays untouched, so every run starts from the same θ_0), with the same number of steps. Per run: ``lr``, ``stable``
    (finite and final training loss below the initial one), ``final_loss``, ``df`` = max|f_T - f_0|
    on the probes, and the relative errors (``reconstruction_error``) of the first-order machine
    f_0 + Σ_t ∇f_t·Δθ_t (``err``; for GD the path-kernel machine), of the model linearised at θ_0
    (``err_frozen``) and of the article's gradient-descent form f_0 + c Σ_t η Σ_i α_i(t) K_t with
    c = 1/(1 - μ) for momentum, 1 otherwise (``err_gd_form``; not defined for Adam: NaN).
    https://kexue.fm/archives/8009, chapter ``sgd-kernel-machine``."""
    rows = []
    for lr in lrs:
        r = train_with_path_kernel(copy.deepcopy(model), x_train, y_train, x_probe, loss=loss, lr=lr, steps=steps,
                                   optimizer=optimizer, **opt_kw)
        loss_t = r["train_loss"]
        stable = (not r["diverged"]) and bool(np.isfinite(loss_t[-1])) and loss_t[-1] < loss_t[0]
        row = {"lr": lr, "stable": stable, "final_loss": float(loss_t[-1]) if not r["diverged"] else float("inf")}
        if r["diverged"]:
            row.update(df=float("nan"), err=float("nan"), err_frozen=float("nan"), err_gd_form=float("nan"))
        else:
            f0, fT = r["f0_probe"], r["fT_probe"]
            c = 1.0 / (1.0 - opt_kw.get("momentum", 0.9)) if optimizer == "momentum" else 1.0
            row.update(df=float((fT - f0).abs().max()), err=reconstruction_error(fT, r["tangent_probe"], f0),
                       err_frozen=reconstruction_error(fT, r["frozen_probe"], f0),
                       err_gd_form=(float("nan") if optimizer == "adam"
                                    else reconstruction_error(fT, f0 + c * r["full_alphaK"], f0)))
        rows.append(row)
    return rows


def tuned_run(rows: list[dict]) -> dict:
    """The row of a ``step_size_sweep`` with the lowest final training loss among the stable runs
    (the step a practitioner would pick for this budget). https://kexue.fm/archives/8009, chapter
    ``sgd-kernel-machine``."""
    stable = [r for r in rows if r["stable"]]
    if not stable:
        raise ValueError("no stable step size in the sweep")
    return min(stable, key=lambda r: r["final_loss"])
