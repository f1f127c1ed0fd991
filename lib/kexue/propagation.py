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

from . import resolve_device
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
                    bias: bool = True, generator: torch.Generator | None = None,
                    io_mode: str | None = None) -> nn.Sequential:
    """MLP Linear(widths[0]→widths[1]), act, Linear(widths[1]→widths[2]), act, …, Linear(→widths[-1]).

    Every weight is drawn by ``kexue.init.init_dense_(w, init_mode, gain)`` with its own (m, n),
    Var = gain²/fan_average(m, n, init_mode); biases start at zero; no activation after the last
    layer. With ``io_mode`` the first layer uses ``io_mode`` (with ``gain``) and the last layer
    ``io_mode`` with gain 1 instead, so that several rules can be compared on the interior layers
    alone; the draws are the same either way (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    for mode in (init_mode, io_mode):
        if mode is not None and mode not in FAN_MODES:
            raise ValueError(f"unknown init mode {mode!r}; use one of {FAN_MODES}")
    mods: list[nn.Module] = []
    last = len(widths) - 2
    for k, (m, n) in enumerate(zip(widths[:-1], widths[1:])):
        layer = nn.Linear(m, n, bias=bias)
        mode, g = init_mode, gain
        if io_mode is not None and k in (0, last):
            mode, g = io_mode, (gain if k == 0 else 1.0)
        init_dense_(layer.weight, mode, g, generator=generator)
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
    drawn on the CPU generator and computed on ``device`` (default: the current device). Returns arrays
    ``forward`` and ``backward`` of one gain per draw (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    device = resolve_device(device)
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
    generator, computed on ``device``, default: the current device).

    Returns arrays ``forward`` and ``backward`` of shape (repeats, L+1)
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    device = resolve_device(device)
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


# -- training studies (issue 17: does the averaging rule matter in training?) ---------------------
def two_spirals(n: int, turns: float = 3.0, noise: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of the two-spirals problem: class c ∈ {0, 1} (fair coin), u ~ U(0, 1),
    radius r = √u (uniform density over the disc), angle 2π·turns·r + π·c, x = 2r(cos, sin) + noise·N(0, I)
    (so E[x²] ≈ 1 per coordinate). Telling the arms apart needs a function that oscillates ``turns``
    times along the radius, which deep nets fit in far fewer steps than shallow ones. Returns float32
    X (n, 2) and int64 y (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    r = np.sqrt(rng.random(n))
    angle = 2 * math.pi * turns * r + math.pi * y
    X = 2 * r[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) + noise * rng.standard_normal((n, 2))
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def spirals_split(n_train: int, n_val: int, n_test: int, *, turns: float = 3.0, noise: float = 0.0,
                  seed: int = 0) -> dict:
    """Independent train / val / test draws of :func:`two_spirals` (seeds ``seed``, ``seed+1``,
    ``seed+2``) as the dict ``X_train, y_train, X_val, y_val, X_test, y_test``
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    out = {}
    for i, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        out[f"X_{name}"], out[f"y_{name}"] = two_spirals(n, turns, noise, seed + i)
    return out


def train_early_stopped(model: nn.Module, data: dict, *, lr: float, steps: int, batch_size: int,
                        eval_every: int, seed: int = 0) -> dict:
    """Adam (lr ``lr``, no weight decay) on the cross-entropy for ``steps`` minibatch steps through
    :func:`kexue.train.fit`, validation accuracy every ``eval_every`` steps, the best validation
    checkpoint restored (early stopping). Returns ``val_acc`` (best), ``test_acc`` (at that
    checkpoint), ``best_step``, ``init_test_acc`` (before any step) and ``seconds``. A diverged
    model (non-finite logits) scores as wrong on every example
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    import time

    from .train import accuracy, fit

    t0 = time.perf_counter()
    dev = next(model.parameters()).device   # the batches follow the model (a no-op when they are there)
    data = {k: v.to(dev) for k, v in data.items()}
    X, y = data["X_train"], data["y_train"]
    init_acc = accuracy(model, data["X_test"], data["y_test"])

    def loss_on(idx, rng):
        idx = torch.as_tensor(idx, device=X.device)
        return nn.functional.cross_entropy(model(X[idx]), y[idx])

    out = fit(list(model.parameters()), loss_on, len(X), steps=steps, batch_size=batch_size,
              evaluate=lambda: accuracy(model, data["X_val"], data["y_val"]), eval_every=eval_every,
              lr=lr, seed=seed)
    return {"val_acc": out["best_dev"], "test_acc": accuracy(model, data["X_test"], data["y_test"]),
            "best_step": out["best_step"], "init_test_acc": init_acc,
            "seconds": time.perf_counter() - t0}


def rule_lr_grid(widths: list[int], act: str, rules, data: dict, *, lrs, seeds, gain: float = 1.0,
                 io_mode: str | None = None, device=None, **train_kw) -> dict:
    """For every rule × learning rate × seed, train ``alternating_mlp(widths, act, rule, gain=gain,
    io_mode=io_mode)`` (weights from ``torch.Generator().manual_seed(seed)``, so at one seed the
    rules scale the same draws, and the minibatch order is the same) with
    :func:`train_early_stopped`. Returns {rule: [run dicts with lr, seed and its fields]}; pick each
    rule's lr with :func:`kexue.train.select_lr_by_validation` (https://kexue.fm/archives/8725,
    chapter ``xavier-averaging``)."""
    out = {}
    for rule in rules:
        out[rule] = []
        for lr in lrs:
            for s in seeds:
                model = alternating_mlp(widths, act, rule, gain=gain, io_mode=io_mode,
                                        generator=torch.Generator().manual_seed(s)).to(resolve_device(device))
                r = train_early_stopped(model, data, lr=lr, seed=s, **train_kw)
                out[rule].append({"lr": lr, "seed": s, **r})
    return out


def at_chosen_lr(runs: list[dict], key: str = "test_acc") -> tuple[float, list[float]]:
    """(lr chosen on validation by :func:`kexue.train.select_lr_by_validation`, the per-seed values
    of ``key`` at that lr, in seed order) (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    from .train import select_lr_by_validation

    lr = select_lr_by_validation(runs)
    rows = sorted((r for r in runs if r["lr"] == lr), key=lambda r: r["seed"])
    return lr, [float(r[key]) for r in rows]


def default_not_beaten(values: dict, default: str = "arith", level: float = 0.9) -> dict:
    """Is the default rule beaten? ``values`` maps each rule to its per-seed outcomes (lower is
    better, seed i of every rule paired). For every other rule r: the paired t interval (``level``)
    of default − r (positive: r does better), :func:`kexue.stats.paired_interval`. The margin
    ``delta`` is the seed-to-seed sd pooled over all rules, √(mean of the per-rule variances, ddof 1).
    Returns ``gains`` {r: (mean, lo, hi)}, ``delta``, ``worst`` (the r with the highest upper end) and
    ``excess`` = that upper end − delta: the default is within one seed sd of every rule (not beaten
    by more than the seed spread) when ``excess`` ≤ 0 (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    from .stats import paired_interval

    if default not in values or len(values) < 2:
        raise ValueError(f"values needs the default {default!r} and at least one other rule")
    arrays = {k: np.asarray(v, dtype=float) for k, v in values.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1 or sizes.pop() < 2:
        raise ValueError("every rule needs the same number (≥ 2) of paired seeds")
    gains = {k: paired_interval(arrays[default], a, level) for k, a in arrays.items() if k != default}
    delta = float(np.sqrt(np.mean([a.var(ddof=1) for a in arrays.values()])))
    worst = max(gains, key=lambda k: gains[k][2])
    return {"gains": gains, "delta": delta, "worst": worst, "excess": float(gains[worst][2] - delta)}
