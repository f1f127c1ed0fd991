"""Signal propagation at initialisation: closed-form and Monte-Carlo variance gains of dense layers,
and per-layer second-moment profiles of deep networks.

From https://kexue.fm/archives/8725 (chapter ``xavier-averaging``). For a dense layer
y = xW with m inputs, n outputs and iid zero-mean weights of variance t (the chapter's eqs. 1-4):

    forward   E[y_j²]       = m·t·E[x_i²]
    backward  E[(∂l/∂x_i)²] = n·t·E[(∂l/∂y_j)²]

so an m→n→m composition whose two matrices share the variance t has gain m·n·t² both ways (eq. 5).
The averaging rules set t = 1/d with d = ``kexue.init.fan_average(m, n, mode)``.

torch stores a ``Linear`` weight as (out, in) = (n, m); ``kexue.init.init_dense_`` reads m, n from it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .init import FAN_MODES, fan_average, init_dense_

ACTIVATIONS = {"linear": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def _activation(act: str) -> nn.Module:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; use one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[act]()


# -- closed forms ---------------------------------------------------------------------------------
def layer_deviation(m: float, n: float, t):
    """(m·t - 1)² + (n·t - 1)²: how far one layer's forward and backward gains are from 1 (eq. 6).

    Its minimiser is t = (m+n)/(m²+n²), the "quadratic" average (https://kexue.fm/archives/8725,
    chapter ``xavier-averaging``). Works on floats and numpy arrays of t."""
    return (m * t - 1) ** 2 + (n * t - 1) ** 2


def closed_form_gains(m: int, n: int, mode: str) -> dict:
    """The gains of an m-input, n-output dense layer with Var(w) = t = 1/fan_average(m, n, mode).

    ``forward`` m·t (eq. 2), ``backward`` n·t (eq. 4), ``composition`` m·n·t² (eq. 5: the
    m→n→m pair whose two matrices share t; the same forward and backward), ``deviation``
    (m·t-1)² + (n·t-1)² (eq. 6). https://kexue.fm/archives/8725, chapter ``xavier-averaging``."""
    t = 1.0 / fan_average(m, n, mode)
    return {"variance": t, "forward": m * t, "backward": n * t, "composition": m * n * t * t,
            "deviation": layer_deviation(m, n, t)}


def grid_argmin_variance(m: int, n: int, num: int = 200_001) -> float:
    """The variance t on a log-spaced grid over [0.1/max(m, n), 10/min(m, n)] that minimises
    (m·t-1)² + (n·t-1)² (eq. 6), a brute-force check of t = (m+n)/(m²+n²)
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    grid = np.geomspace(0.1 / max(m, n), 10.0 / min(m, n), num)
    return float(grid[np.argmin(layer_deviation(m, n, grid))])


# -- building layers ------------------------------------------------------------------------------
def make_linear(m: int, n: int, mode: str, *, fans: tuple[int, int] | None = None, bias: bool = False,
                gain: float = 1.0, generator: torch.Generator | None = None) -> nn.Linear:
    """``nn.Linear(m, n)`` with Var(w) = gain² / fan_average(*fans, mode), fans = (m, n) by default.

    Passing ``fans`` lets two layers share one variance, as in the article's composition argument.
    Bias (if any) starts at zero (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    layer = nn.Linear(m, n, bias=bias)
    a, b = fans or (m, n)
    with torch.no_grad():
        layer.weight.normal_(0.0, gain / math.sqrt(fan_average(a, b, mode)), generator=generator)
        if bias:
            layer.bias.zero_()
    return layer


def composition(m: int, n: int, mode: str, act: str = "linear", *, shared: bool = True,
                generator: torch.Generator | None = None) -> nn.Sequential:
    """The pair x ↦ act(x·W1)·W2 with W1 ∈ R^{m×n}, W2 ∈ R^{n×m} (a BERT-FFN-like block, eq. 5).

    ``shared=True``: both matrices get Var = 1/fan_average(m, n, mode), the article's "same
    variance" setting, with gain m·n·t² when ``act`` is linear. ``shared=False``: each layer uses its
    own fans (W2 is n→m), which is what a per-layer initialiser does
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    return nn.Sequential(
        make_linear(m, n, mode, generator=generator),
        _activation(act),
        make_linear(n, m, mode, fans=(m, n) if shared else None, generator=generator))


def alternating_widths(d_in: int = 64, wide: int = 256, n_layers: int = 20) -> list[int]:
    """Widths [d_in, wide, d_in, wide, ...] of ``n_layers`` dense layers alternating d_in ↔ wide.

    https://kexue.fm/archives/8725, chapter ``xavier-averaging``."""
    return [d_in if k % 2 == 0 else wide for k in range(n_layers + 1)]


def alternating_mlp(widths: list[int], act: str = "tanh", init_mode: str = "geo", *, gain: float = 1.0,
                    bias: bool = True, generator: torch.Generator | None = None) -> nn.Sequential:
    """MLP Linear(widths[0]→widths[1]), act, Linear(widths[1]→widths[2]), act, …, Linear(→widths[-1]).

    Every weight is drawn by ``kexue.init.init_dense_(w, init_mode, gain)`` with its own (m, n),
    Var = gain²/fan_average(m, n, init_mode); biases start at zero; no activation after the last
    layer (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    if init_mode not in FAN_MODES:
        raise ValueError(f"unknown init mode {init_mode!r}; use one of {FAN_MODES}")
    mods: list[nn.Module] = []
    for k, (m, n) in enumerate(zip(widths[:-1], widths[1:])):
        layer = nn.Linear(m, n, bias=bias)
        init_dense_(layer.weight, init_mode, gain, generator=generator)
        if bias:
            nn.init.zeros_(layer.bias)
        mods.append(layer)
        if k < len(widths) - 2:
            mods.append(_activation(act))
    return nn.Sequential(*mods)


# -- Monte-Carlo gains ----------------------------------------------------------------------------
def _forward_backward(layers: nn.Module, x: torch.Tensor, g: torch.Tensor | None,
                      generator: torch.Generator | None) -> tuple[float, float]:
    x = x.detach().clone().requires_grad_(True)
    y = layers(x)
    if g is None:  # drawn on the CPU generator, then moved: the same numbers on every device
        g = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    (gx,) = torch.autograd.grad(y, x, grad_outputs=g)
    fwd = (y.detach().pow(2).mean() / x.detach().pow(2).mean()).item()
    bwd = (gx.pow(2).mean() / g.pow(2).mean()).item()
    return fwd, bwd


def variance_gain(layers: nn.Module, x: torch.Tensor, direction: str = "forward", *,
                  g: torch.Tensor | None = None, generator: torch.Generator | None = None) -> float:
    """Monte-Carlo second-moment gain of a layer or a composition on the batch ``x``.

    forward: E[y²]/E[x²] with y = layers(x). backward: E[(∂l/∂x)²]/E[(∂l/∂y)²] for l = Σ y·g, where
    the output gradient g is N(0, 1) unless given. For one dense layer these estimate m·t and n·t
    (eqs. 2, 4; https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    fwd, bwd = _forward_backward(layers, x, g, generator)
    return fwd if direction == "forward" else bwd


def monte_carlo_gains(build, d_in: int, *, batch: int, repeats: int, seed: int = 0, device=None) -> dict:
    """Forward and backward gains over ``repeats`` fresh draws of weights, inputs and output gradients.

    ``build(generator)`` returns a new module; inputs are N(0, 1) of width ``d_in``. Everything is
    drawn on the CPU generator and computed on ``device`` (default CPU). Returns arrays
    ``forward`` and ``backward`` of one gain per draw (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    gen = torch.Generator().manual_seed(seed)
    fwd, bwd = [], []
    for _ in range(repeats):
        layers = build(gen).to(device)
        x = torch.randn(batch, d_in, generator=gen).to(device)
        f, b = _forward_backward(layers, x, None, gen)
        fwd.append(f)
        bwd.append(b)
    return {"forward": np.array(fwd), "backward": np.array(bwd)}


# -- depth profiles -------------------------------------------------------------------------------
def moment_profile(model: nn.Sequential, x: torch.Tensor, g: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[list[float], list[float]]:
    """Per-layer second moments of a deep network at initialisation.

    With h_0 = x and h_k the output of the k-th ``nn.Linear`` (pre-activation), returns
    fwd[k] = E[h_k²] and bwd[k] = E[(∂l/∂h_k)²] for k = 0..L, where l = Σ out·g and the output
    gradient g is N(0, 1) unless given, so bwd[L] ≈ 1 (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    h = x.detach().clone().requires_grad_(True)
    taps = [h]
    for module in model:
        h = module(h)
        if isinstance(module, nn.Linear):
            taps.append(h)
    if not isinstance(model[-1], nn.Linear):
        raise ValueError("the model must end with an nn.Linear layer")
    if g is None:  # drawn on the CPU generator, then moved: the same numbers on every device
        g = torch.randn(h.shape, generator=generator, dtype=h.dtype).to(h.device)
    grads = torch.autograd.grad(h, taps, grad_outputs=g)
    fwd = [t.detach().pow(2).mean().item() for t in taps]
    bwd = [gr.pow(2).mean().item() for gr in grads]
    return fwd, bwd


def profile_over_draws(widths: list[int], act: str, mode: str, *, batch: int, repeats: int,
                       seed: int = 0, device=None) -> dict:
    """``moment_profile`` of ``alternating_mlp(widths, act, mode, bias=False)`` over ``repeats``
    independent draws of weights, N(0, 1) inputs and N(0, 1) output gradients (drawn on the CPU
    generator, computed on ``device``, default CPU).

    Returns arrays ``forward`` and ``backward`` of shape (repeats, L+1)
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    gen = torch.Generator().manual_seed(seed)
    fwd, bwd = [], []
    for _ in range(repeats):
        model = alternating_mlp(widths, act, mode, bias=False, generator=gen).to(device)
        x = torch.randn(batch, widths[0], generator=gen).to(device)
        f, b = moment_profile(model, x, generator=gen)
        fwd.append(f)
        bwd.append(b)
    return {"forward": np.array(fwd), "backward": np.array(bwd)}


def end_to_end_ratios(profile: dict) -> dict:
    """Forward E[h_L²]/E[h_0²] and backward E[(∂l/∂h_0)²]/E[(∂l/∂h_L)²] of a profile, as ratios of
    the means over draws (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    f = profile["forward"].mean(axis=0)
    b = profile["backward"].mean(axis=0)
    return {"forward": float(f[-1] / f[0]), "backward": float(b[0] / b[-1])}
