"""Gradients of recurrent cells: the tanh step-factor bound, gradient norms through time, exact
per-step Jacobians of LSTM / GRU cells against their gate-only part, and the adding problem.

From https://kexue.fm/archives/7888 (chapter ``rnn-gradients``). For any RNN h_t = f(x_t, h_{t-1})
the contribution of step 1 to dh_t/dθ is multiplied by ∏_{s=2}^t ∂h_s/∂h_{s-1} (eq. 1), so what
matters is the size of the per-step Jacobian J_t = ∂h_t/∂h_{t-1}:

    simple RNN   h_t = tanh(W x_t + U h_{t-1} + b)        J_t = diag(1 - h_t²) U        (eq. 2)
    LSTM         c_t = f_t ∘ c_{t-1} + i_t ∘ ĉ_t           ∂c_t/∂c_{t-1} = diag(f_t) + three terms (eq. 4)
    GRU          h_t = (1 - z_t) ∘ h_{t-1} + z_t ∘ ĥ_t     ∂h_t/∂h_{t-1} = diag(1 - z_t) + ...   (eq. 5)

Cells follow the article's conventions (not ``torch.nn.GRU``'s, which swaps z and moves r):
parameters are a dict ``{"W": (G·H, d), "U": (G·H, H), "b": (G·H,)}`` whose G gate blocks are, in
order, f, i, o, ĉ (LSTM) and z, r, ĥ (GRU, SuGRU); pre-activations are ``x @ W.T + h @ U.T + b``.
An *ensemble* of E independent cells stores every parameter with a leading E axis (``b`` as
(E, 1, G·H)) and takes inputs of shape (E, B, d): the same code runs both.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import resolve_device

GATES = {"tanh": 1, "relu": 1, "irnn": 1, "lstm": 4, "gru": 3, "gru_merged": 2, "sugru": 3}
"""Number of H-blocks in W, U, b for each cell kind."""
KINDS = tuple(GATES)


# -- the closed-form bound (eq. 3) ----------------------------------------------------------------
def tanh_step_factor(c):
    """(1 - tanh² c)·c, the simple RNN's 1-D step factor (1 - h_t²)·U times h_{t-1}, with c = U·h_{t-1}
    and no input or bias (eq. 3; https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    return (1 - np.tanh(c) ** 2) * c


def tanh_factor_bound(tol: float = 1e-15) -> tuple[float, float]:
    """(c*, max_c |(1 - tanh² c)·c|): the maximiser solves 2c·tanh(c) = 1, found by Newton's method
    in float64; the maximum is ≈ 0.4477 at |c| ≈ 0.7717, the article's "< 0.45" (eq. 3;
    https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    c = 0.75
    for _ in range(100):
        t = math.tanh(c)
        f, df = 2 * c * t - 1, 2 * t + 2 * c * (1 - t * t)
        step = f / df
        c -= step
        if abs(step) < tol:
            break
    return c, float(tanh_step_factor(c))


def tanh_rnn_gain(U, h: float, bias: float = 0.0, act: str = "tanh"):
    """The 1-D step factor ∂h_t/∂h_{t-1} as a function of the recurrent weight U for a fixed h_{t-1} = h:
    (1 - tanh²(U·h + bias))·U for tanh, and U·1[U·h + bias > 0] for ReLU (eq. 2). For tanh,
    |factor|·|h| ≤ 0.4477 when bias = 0, so the factor is bounded in U; for ReLU it grows without
    bound (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    U = np.asarray(U, dtype=np.float64)
    pre = U * h + bias
    if act == "tanh":
        return (1 - np.tanh(pre) ** 2) * U
    if act == "relu":
        return U * (pre > 0)
    raise ValueError(f"act must be 'tanh' or 'relu', got {act!r}")


# -- gradient norms through time (eq. 1, 2) -------------------------------------------------------
def orthogonal_matrix(n: int, generator: torch.Generator | None = None,
                      dtype=torch.float64) -> torch.Tensor:
    """A Haar-random n×n orthogonal matrix (QR of a Gaussian with the signs of diag(R) fixed), used
    to set U = ρ·Q with spectral radius exactly ρ (https://kexue.fm/archives/7888, chapter
    ``rnn-gradients``)."""
    a = torch.randn(n, n, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))


def log10_jacobian_norms(act: str, U: torch.Tensor, pre_inputs: torch.Tensor,
                         h0: torch.Tensor) -> torch.Tensor:
    """log10 ‖∂h_t/∂h_0‖₂ for t = 1..T of the simple RNN h_t = act(u_t + U h_{t-1}), where
    u_t = ``pre_inputs[t-1]`` (= W x_t + b) and act is "tanh" or "relu". Batched: U (..., H, H),
    pre_inputs (T, ..., H), h0 (..., H) give (T, ...).

    The product P_t = J_t P_{t-1}, J_t = diag(act'(u_t + U h_{t-1})) U (eq. 2), is rescaled to unit
    Frobenius norm every step and the logs of the scales are summed, so norms far beyond float
    range (ReLU, ρ > 1) stay finite. A product that becomes exactly zero gives -inf
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    if act not in ("tanh", "relu"):
        raise ValueError(f"act must be 'tanh' or 'relu', got {act!r}")
    h = h0.clone()
    P = torch.eye(U.shape[-1], dtype=U.dtype, device=U.device).expand_as(U).clone()
    log_scale = torch.zeros(U.shape[:-2], dtype=torch.float64, device=U.device)
    out = []
    for u in pre_inputs:
        pre = u + (U @ h[..., None])[..., 0]
        if act == "tanh":
            h = torch.tanh(pre)
            deriv = 1 - h * h
        else:
            h = torch.relu(pre)
            deriv = (pre > 0).to(U.dtype)
        P = (deriv[..., :, None] * U) @ P
        s = torch.linalg.matrix_norm(P)
        with torch.no_grad():
            log_scale = log_scale + torch.log10(s)
        P = P / torch.where(s > 0, s, torch.ones_like(s))[..., None, None]
        # ‖P‖₂ = sqrt(λ_max(PᵀP)); eigvalsh is much faster than an SVD on a busy 2-core CPU
        out.append(log_scale + 0.5 * torch.log10(torch.linalg.eigvalsh(P.mT @ P)[..., -1].clamp_min(0)))
    return torch.stack(out)


def gradient_norms_through_time(act: str, rho: float, *, hidden: int = 64, T: int = 200,
                                draws: int = 4, seed: int = 0, device=None) -> np.ndarray:
    """log10 ‖∂h_t/∂h_0‖₂, t = 1..T, of simple RNNs with U = ρ·Q (Q Haar orthogonal), W with
    Var = 1/hidden, zero bias, N(0, 1) inputs and h_0 = 0, for ``draws`` independent draws of
    (Q, W, inputs): an array (draws, T). The same seed gives the same Q, W and inputs for tanh
    and ReLU and every ρ; they are drawn on the CPU and computed on ``device`` (default: the current device)
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    device = resolve_device(device)
    Q, u, _ = _simple_rnn_draws(hidden, T, draws, seed)
    u = u.to(device)
    h0 = torch.zeros(draws, hidden, dtype=torch.float64, device=u.device)
    return log10_jacobian_norms(act, rho * Q.to(device), u, h0).T.cpu().numpy()


def _simple_rnn_draws(hidden: int, T: int, draws: int, seed: int):
    """The draws shared by experiment B's functions, on the CPU: Q (draws, H, H) Haar orthogonal,
    the pre-inputs u = W x (T, draws, H) with Var(W) = 1/H and N(0, 1) inputs, and the generator
    (for any further draws)."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.stack([orthogonal_matrix(hidden, gen) for _ in range(draws)])
    W = torch.randn(draws, hidden, hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden)
    xs = torch.randn(T, draws, hidden, 1, generator=gen, dtype=torch.float64)
    return Q, (W @ xs)[..., 0], gen


# -- cells in the article's conventions (eqs. 2, 4, 5, 7) ------------------------------------------
def init_cell_params(kind: str, d_in: int, hidden: int, *, scale: float = 1.0, members: int | None = None,
                     generator: torch.Generator | None = None, dtype=torch.float32,
                     forget_bias: float = 0.0) -> dict:
    """Parameters of a ``kind`` cell: W, U, b ~ U(-s/√H, s/√H) with s = ``scale`` (PyTorch's
    default for its recurrent layers when s = 1). "irnn" is Le et al.'s IRNN: U = I, W ~ N(0, 0.001²)
    (s scales W), b = 0. With ``members`` = E the arrays get a leading E axis of independent draws
    (b as (E, 1, G·H)), an ensemble trained in one pass. ``forget_bias`` (LSTM only) is added to
    the forget gate's bias, the common "forget-gate bias 1" init when 1
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    if kind not in GATES:
        raise ValueError(f"unknown cell {kind!r}; use one of {KINDS}")
    if forget_bias and kind != "lstm":
        raise ValueError(f"forget_bias applies to the LSTM only, not to {kind!r}")
    G, E = GATES[kind], members or 1
    bound = scale / math.sqrt(hidden)

    def uni(*shape):
        return (torch.rand(E, *shape, generator=generator, dtype=dtype) * 2 - 1) * bound

    if kind == "irnn":
        p = {"W": torch.randn(E, hidden, d_in, generator=generator, dtype=dtype) * 1e-3 * scale,
             "U": torch.eye(hidden, dtype=dtype).expand(E, hidden, hidden).clone(),
             "b": torch.zeros(E, 1, hidden, dtype=dtype)}
    else:
        p = {"W": uni(G * hidden, d_in), "U": uni(G * hidden, hidden), "b": uni(1, G * hidden)}
    if forget_bias:
        p["b"][..., :hidden] += forget_bias  # lstm_cell's gate order is f, i, o, ĉ
    if members is None:
        p = {"W": p["W"][0], "U": p["U"][0], "b": p["b"][0, 0]}
    return p


def _pre(x, h, p):
    return x @ p["W"].transpose(-1, -2) + h @ p["U"].transpose(-1, -2) + p["b"]


def simple_rnn_cell(x, h, p, act: str = "tanh"):
    """h_t = act(W x_t + U h_{t-1} + b), act ∈ {tanh, relu} (eq. 2;
    https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    pre = _pre(x, h, p)
    return torch.tanh(pre) if act == "tanh" else torch.relu(pre)


def lstm_cell(x, h, c, p):
    """f, i, o = σ(W_* x + U_* h + b_*), ĉ = tanh(W_c x + U_c h + b_c), c_t = f∘c + i∘ĉ,
    h_t = o∘tanh(c_t). Returns (h_t, c_t, gates dict with f, i, o, chat) (eq. 4;
    https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    f, i, o, g = _pre(x, h, p).chunk(4, dim=-1)
    f, i, o, g = torch.sigmoid(f), torch.sigmoid(i), torch.sigmoid(o), torch.tanh(g)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new, {"f": f, "i": i, "o": o, "chat": g}


def gru_cell(x, h, p, merged: bool = False):
    """z, r = σ(W_* x + U_* h + b_*), ĥ = tanh(W_h x + U_h (r∘h) + b_h), h_t = (1-z)∘h + z∘ĥ
    (the article's GRU; ``merged`` ties r = z, with parameter blocks z, ĥ). Returns (h_t, gates
    dict with z, r, hhat) (eq. 5; https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    H = h.shape[-1]
    W, U, b = p["W"], p["U"], p["b"]
    G = 2 if merged else 3
    gx = x @ W.transpose(-1, -2) + b
    gh = h @ U[..., : (G - 1) * H, :].transpose(-1, -2)
    z = torch.sigmoid(gx[..., :H] + gh[..., :H])
    r = z if merged else torch.sigmoid(gx[..., H:2 * H] + gh[..., H:2 * H])
    hhat = torch.tanh(gx[..., (G - 1) * H:] + (r * h) @ U[..., (G - 1) * H:, :].transpose(-1, -2))
    return (1 - z) * h + z * hhat, {"z": z, "r": r, "hhat": hhat}


def su_gru_cell(x, h, c, p):
    """The article's proposed variant: z, r as in the GRU, ĉ = tanh(W_h x + U_h h + b_h),
    c_t = (1-z)∘c + z∘ĉ, h_t = r∘c_t (r moved to the output; one extra state). Returns
    (h_t, c_t, gates dict with z, r, chat) (eq. 7; https://kexue.fm/archives/7888, chapter
    ``rnn-gradients``)."""
    z, r, g = _pre(x, h, p).chunk(3, dim=-1)
    z, r, g = torch.sigmoid(z), torch.sigmoid(r), torch.tanh(g)
    c_new = (1 - z) * c + z * g
    return r * c_new, c_new, {"z": z, "r": r, "chat": g}


# -- exact per-step Jacobians (torch.func) ---------------------------------------------------------
def run_cell(kind: str, xs: torch.Tensor, p: dict, hidden: int) -> dict:
    """Run one (unbatched) cell over xs (T, d) from a zero state. Returns the states before each
    step (``state_prev``, (T, H); c for lstm/sugru, h otherwise), the output-gate factor that maps
    it to h_{t-1} (``out_prev``: o_{t-1} for LSTM, r_{t-1} for SuGRU), and the stacked gates.
    Before step 1 the factor is 0: h_0 = 0 is given, not computed from c_0, so the first
    Jacobian has no path through h_0 (for the LSTM, ∂c_1/∂c_0 = diag(f_1) exactly)
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    h = torch.zeros(hidden, dtype=xs.dtype, device=xs.device)
    c, out = torch.zeros_like(h), torch.zeros_like(h)
    prev, outs, gates = [], [], []
    for x in xs:
        prev.append(c if kind in ("lstm", "sugru") else h)
        outs.append(out)
        if kind == "lstm":
            h, c, g = lstm_cell(x, h, c, p)
            out = g["o"]
        elif kind == "sugru":
            h, c, g = su_gru_cell(x, h, c, p)
            out = g["r"]
        elif kind in ("gru", "gru_merged"):
            h, g = gru_cell(x, h, p, merged=kind == "gru_merged")
        else:
            raise ValueError(f"run_cell handles lstm, sugru, gru, gru_merged; got {kind!r}")
        gates.append(g)
    return {"state_prev": torch.stack(prev), "out_prev": torch.stack(outs),
            "gates": {k: torch.stack([g[k] for g in gates]) for k in gates[0]}}


def _step_map(kind: str, p: dict):
    """state_{t-1} ↦ state_t for one step, with h_{t-1} = out_{t-1}∘tanh(c_{t-1}) (LSTM) or
    out_{t-1}∘c_{t-1} (SuGRU) so that the dependence through h_{t-1} is kept."""
    if kind == "lstm":
        return lambda s, x, out: lstm_cell(x, out * torch.tanh(s), s, p)[1]
    if kind == "sugru":
        return lambda s, x, out: su_gru_cell(x, out * s, s, p)[1]
    return lambda s, x, out: gru_cell(x, s, p, merged=kind == "gru_merged")[0]


def step_jacobians(kind: str, xs: torch.Tensor, p: dict, hidden: int) -> dict:
    """Exact per-step Jacobians J_t = ∂s_t/∂s_{t-1}, shape (T, H, H), with ``torch.func.jacrev``
    vectorised over the steps by ``torch.func.vmap``; s = c for LSTM and SuGRU (with
    h_{t-1} = o_{t-1}∘tanh c_{t-1}, resp. r_{t-1}∘c_{t-1}, o and r held fixed), s = h for the GRUs.
    Also returns the ``dominant`` diagonal (f_t for LSTM, 1 - z_t otherwise) and ``run_cell``'s
    trajectory (eqs. 4, 5; https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    from torch.func import jacrev, vmap

    traj = run_cell(kind, xs, p, hidden)
    J = vmap(jacrev(_step_map(kind, p)))(traj["state_prev"], xs, traj["out_prev"])
    g = traj["gates"]
    dominant = g["f"] if kind == "lstm" else 1 - g["z"]
    return {"J": J, "dominant": dominant, **traj}


def secondary_ratio(J: torch.Tensor, dominant: torch.Tensor) -> torch.Tensor:
    """‖J_t - diag(d_t)‖_F / ‖diag(d_t)‖_F per step: how far each Jacobian is from its gate-only
    part (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    rest = J - torch.diag_embed(dominant)
    return torch.linalg.matrix_norm(rest) / torch.linalg.vector_norm(dominant, dim=-1)


def log10_product_norms(J: torch.Tensor, checkpoints, *, start: torch.Tensor | None = None,
                        rows: slice | None = None) -> np.ndarray:
    """log10 ‖(J_t ⋯ J_2 J_1 · start)[rows]‖₂ at the steps t in ``checkpoints`` (1-based) for
    per-step Jacobians J (T, n, n); ``start`` (default the identity) picks the initial directions
    and ``rows`` the part of the state that is measured. The running product is rescaled every step
    and the logs of the scales summed, so norms far below float range stay finite (-inf only for
    an exactly zero product) (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    checkpoints = sorted(int(t) for t in checkpoints)
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] > J.shape[0]:
        raise ValueError(f"checkpoints must lie in 1..{J.shape[0]}; got {checkpoints}")
    P = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device) if start is None else start.to(J)
    rows = rows if rows is not None else slice(None)
    log_scale, out, want = 0.0, [], set(checkpoints)
    for t in range(1, checkpoints[-1] + 1):
        P = J[t - 1] @ P
        s = torch.linalg.matrix_norm(P).item()
        if s == 0:
            log_scale = -math.inf
            P = torch.zeros_like(P)
        else:
            log_scale += math.log10(s)
            P = P / s
        if t in want:
            B = P[rows]
            top = torch.linalg.eigvalsh(B.mT @ B)[-1].clamp_min(0).item()
            out.append(log_scale + 0.5 * math.log10(top) if top > 0 else -math.inf)
    return np.array(out)


def full_state_jacobians(kind: str, xs: torch.Tensor, p: dict, hidden: int) -> torch.Tensor:
    """Exact Jacobians (T, 2H, 2H) of one step of an LSTM or the article's variant on its whole state
    (h, c), from a zero state: unlike :func:`step_jacobians`, which holds the output gate fixed as
    the article's per-step analysis does, these carry every path, so their product is the true
    ∂(h_t, c_t)/∂(h_0, c_0) (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    from torch.func import jacrev, vmap

    if kind not in ("lstm", "sugru"):
        raise ValueError(f"full_state_jacobians is for lstm or sugru (the GRU's state is h); got {kind!r}")
    cell = lstm_cell if kind == "lstm" else su_gru_cell
    h = torch.zeros(hidden, dtype=xs.dtype, device=xs.device)
    c = torch.zeros_like(h)
    states = []
    for x in xs:
        states.append(torch.cat([h, c]))
        h, c, _ = cell(x, h, c, p)

    def step(s, x):
        h_new, c_new, _ = cell(x, s[:hidden], s[hidden:], p)
        return torch.cat([h_new, c_new])

    return vmap(jacrev(step))(torch.stack(states), xs)


def long_range_norms(kind: str, T: int, checkpoints, *, hidden: int = 64, draws: int = 4,
                     seed: int = 0, scale: float = 1.0, forget_bias: float = 0.0, params=None,
                     inputs=None, device=None) -> np.ndarray:
    """log10 ‖∂s_t/∂s_0‖₂ at ``checkpoints`` for ``draws`` cells run from a zero state over T steps,
    with every path (s = c for LSTM and the article's variant, with h_0 = 0 given, through
    :func:`full_state_jacobians`; s = h for the GRUs, through :func:`step_jacobians`), float64: an
    array (draws, len(checkpoints)). The cells are drawn with :func:`init_cell_params` (``scale``,
    ``forget_bias``) and fed N(0, 1) inputs of width ``hidden``, unless ``params`` gives a list of
    trained cells (one per row) with ``inputs(gen, T)`` drawing their inputs (T, d_in). Drawn on the
    CPU, computed on ``device`` ("几千上万步", https://kexue.fm/archives/7888, chapter
    ``rnn-gradients``)."""
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    n = len(params) if params is not None else draws
    for k in range(n):
        if params is None:
            xs = torch.randn(T, hidden, generator=gen, dtype=torch.float64)
            p = init_cell_params(kind, hidden, hidden, scale=scale, generator=gen, dtype=torch.float64,
                                 forget_bias=forget_bias)
        else:
            p = {name: v.detach().to(torch.float64) for name, v in params[k].items()}
            xs = inputs(gen, T).to(torch.float64)
        H = p["U"].shape[-1]
        xs, p = xs.to(device), {name: v.to(device) for name, v in p.items()}
        if kind in ("lstm", "sugru"):
            J = full_state_jacobians(kind, xs, p, H)
            start = torch.eye(2 * H, dtype=torch.float64)[:, H:]  # the directions of c_0 (h_0 = 0 is given)
            rows.append(log10_product_norms(J, checkpoints, start=start, rows=slice(H, 2 * H)))
        else:
            rows.append(log10_product_norms(step_jacobians(kind, xs, p, H)["J"], checkpoints))
    return np.array(rows)


def weight_gradient_contributions(act: str, rho: float, *, hidden: int = 64, T: int = 200,
                                  draws: int = 4, seed: int = 0, split: int | None = None,
                                  device=None) -> dict:
    """The article's second point, measured: the total gradient dL/dU of L = vᵀh_T (v a fixed unit
    vector) for the simple RNN of :func:`gradient_norms_through_time` (same Q, W, inputs for the
    same seed), split into the contribution of each step, dL/dU = Σ_t ∂L/∂U_t with U_t the copy of
    U used at step t. Returns {"total": ‖dL/dU‖_F (draws,), "per_step": ‖∂L/∂U_t‖_F (draws, T),
    "early": ‖Σ_{t ≤ split} ∂L/∂U_t‖_F and "late": ‖Σ_{t > split} ∂L/∂U_t‖_F (draws,)}, with
    ``split`` = T // 2 by default ("不意味着总的梯度就为0了", https://kexue.fm/archives/7888,
    chapter ``rnn-gradients``)."""
    device = resolve_device(device)
    split = T // 2 if split is None else int(split)
    if not 0 < split < T:
        raise ValueError(f"split must lie in 1..{T - 1}; got {split}")
    if act not in ("tanh", "relu"):
        raise ValueError(f"act must be 'tanh' or 'relu', got {act!r}")
    Q, u, gen = _simple_rnn_draws(hidden, T, draws, seed)
    v = torch.randn(draws, hidden, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    u = u.to(device)
    U = (rho * Q).to(device)
    deltas = torch.zeros(T, *U.shape, dtype=torch.float64, device=device, requires_grad=True)
    h = torch.zeros(draws, hidden, dtype=torch.float64, device=device)
    for t in range(T):
        pre = u[t] + ((U + deltas[t]) @ h[..., None])[..., 0]
        h = torch.tanh(pre) if act == "tanh" else torch.relu(pre)
    (h * v.to(device)).sum().backward()
    g = deltas.grad  # (T, draws, H, H): ∂L/∂U_t
    return {"total": torch.linalg.matrix_norm(g.sum(0)).cpu().numpy(),
            "per_step": torch.linalg.matrix_norm(g).T.cpu().numpy(),
            "early": torch.linalg.matrix_norm(g[:split].sum(0)).cpu().numpy(),
            "late": torch.linalg.matrix_norm(g[split:].sum(0)).cpu().numpy()}


def lstm_secondary_terms(gates: dict, c_prev: torch.Tensor, o_prev: torch.Tensor, p: dict) -> dict:
    """The three non-forget terms of ∂c_t/∂c_{t-1} in vector form, with D = diag(o_{t-1}(1 - tanh² c_{t-1})):

        forget:    diag(c_{t-1} f(1-f)) U_f D
        input:     diag(ĉ i(1-i)) U_i D
        candidate: diag(i (1-ĉ²)) U_c D

    so that ∂c_t/∂c_{t-1} = diag(f) + forget + input + candidate; in 1-D these are the article's
    three terms of eq. (4). Inputs are one step's gates (vectors) or stacked over steps
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    H = c_prev.shape[-1]
    Uf, Ui, Uc = p["U"][:H], p["U"][H:2 * H], p["U"][3 * H:]
    f, i, g = gates["f"], gates["i"], gates["chat"]
    D = (o_prev * (1 - torch.tanh(c_prev) ** 2))[..., None, :]
    return {"forget": (c_prev * f * (1 - f))[..., :, None] * Uf * D,
            "input": (g * i * (1 - i))[..., :, None] * Ui * D,
            "candidate": (i * (1 - g * g))[..., :, None] * Uc * D}


def gru_jacobian_formula(gates: dict, h_prev: torch.Tensor, p: dict) -> torch.Tensor:
    """∂h_t/∂h_{t-1} of the article's GRU written out (eq. 5, vector form):

        diag(1-z) + diag((ĥ - h_{t-1}) z(1-z)) U_z + diag(z(1-ĥ²)) U_h [diag(r) + diag(h_{t-1} r(1-r)) U_r]

    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    H = h_prev.shape[-1]
    Uz, Ur, Uh = p["U"][:H], p["U"][H:2 * H], p["U"][2 * H:]
    z, r, hh = gates["z"], gates["r"], gates["hhat"]
    inner = torch.diag_embed(r) + (h_prev * r * (1 - r))[..., :, None] * Ur
    return (torch.diag_embed(1 - z) + ((hh - h_prev) * z * (1 - z))[..., :, None] * Uz
            + (z * (1 - hh * hh))[..., :, None] * (Uh @ inner))


def jacobian_table(kinds, scales, *, hidden: int = 64, T: int = 50, draws: int = 3, seed: int = 0,
                   device=None) -> dict:
    """For each (kind, init scale): per-step ``secondary_ratio`` and ‖J_t‖₂ over ``draws`` cells
    with N(0, 1) inputs of width ``hidden``, float64. Returns {(kind, scale): {"ratio": (draws, T),
    "norm": (draws, T), "dominant_mean": float}}. Draw i of every scale is the same draw rescaled;
    every kind's first draw sees the same inputs. Drawn on the CPU, computed on ``device``
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    device = resolve_device(device)
    out = {}
    for kind in kinds:
        for s in scales:
            gen = torch.Generator().manual_seed(seed)
            ratio, norm, dom = [], [], []
            for _ in range(draws):
                xs = torch.randn(T, hidden, generator=gen, dtype=torch.float64).to(device)
                p = init_cell_params(kind, hidden, hidden, scale=s, generator=gen, dtype=torch.float64)
                r = step_jacobians(kind, xs, {k: v.to(device) for k, v in p.items()}, hidden)
                ratio.append(secondary_ratio(r["J"], r["dominant"]).cpu().numpy())
                norm.append(torch.linalg.eigvalsh(r["J"].mT @ r["J"])[..., -1].sqrt().cpu().numpy())
                dom.append(r["dominant"].mean().item())
            out[(kind, s)] = {"ratio": np.array(ratio), "norm": np.array(norm), "dominant_mean": float(np.mean(dom))}
    return out


# -- the adding problem and training (exp. D) ------------------------------------------------------
def adding_problem(batch: int, T: int, generator: torch.Generator | None = None, dtype=torch.float32,
                   recent: bool = False):
    """Hochreiter & Schmidhuber's adding problem: x (batch, T, 2) with channel 0 ~ U(0, 1) and
    channel 1 a marker equal to 1 at one position in the first half and one in the second half
    (T ≥ 2), else 0; target y = sum of the two marked values. Predicting the constant E[y] = 1 gives
    MSE Var(y) = 2·(1/12) = 1/6. With ``recent`` the two markers sit at the last two steps: the same
    values and target rule, a task that needs no history (the control of the forget-gate claim);
    the random draws are the same as without it (https://kexue.fm/archives/7888, chapter
    ``rnn-gradients``)."""
    if T < 2:
        raise ValueError("the adding problem needs T >= 2")
    values = torch.rand(batch, T, generator=generator, dtype=dtype)
    half = T // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, T, (batch,), generator=generator)
    if recent:
        first, second = torch.full_like(first, T - 2), torch.full_like(second, T - 1)
    marks = torch.zeros(batch, T, dtype=dtype)
    rows = torch.arange(batch)
    marks[rows, first] = 1
    marks[rows, second] = 1
    return torch.stack([values, marks], dim=-1), (values * marks).sum(dim=1)


TRIVIAL_ADDING_MSE = 1 / 6
"""MSE of the best constant predictor (1) on the adding problem: Var(u1 + u2) = 2/12."""


class RecurrentEnsemble(nn.Module):
    """E independent ``kind`` cells of width H (hidden 128 by default) with linear read-outs of the
    last hidden state, trained together: input (E, B, T, d) → prediction (E, B). Each member has
    its own initial draw (``init_cell_params`` with ``members`` = E; read-out ~ U(±1/√H), bias 0)
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""

    def __init__(self, kind: str, d_in: int, hidden: int, members: int, *, scale: float = 1.0,
                 generator: torch.Generator | None = None, forget_bias: float = 0.0):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        p = init_cell_params(kind, d_in, hidden, scale=scale, members=members, generator=generator,
                             forget_bias=forget_bias)
        self.cell = nn.ParameterDict({k: nn.Parameter(v) for k, v in p.items()})
        bound = 1 / math.sqrt(hidden)
        self.readout = nn.Parameter((torch.rand(members, hidden, 1, generator=generator) * 2 - 1) * bound)
        self.readout_bias = nn.Parameter(torch.zeros(members, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        E, B, T, _ = x.shape
        p = dict(self.cell)
        h = x.new_zeros(E, B, self.hidden)
        c = torch.zeros_like(h)
        for t in range(T):
            xt = x[:, :, t]
            if self.kind == "lstm":
                h, c, _ = lstm_cell(xt, h, c, p)
            elif self.kind == "sugru":
                h, c, _ = su_gru_cell(xt, h, c, p)
            elif self.kind in ("gru", "gru_merged"):
                h, _ = gru_cell(xt, h, p, merged=self.kind == "gru_merged")
            else:
                h = simple_rnn_cell(xt, h, p, "tanh" if self.kind == "tanh" else "relu")
        return (h @ self.readout + self.readout_bias).squeeze(-1)


def clip_grad_norm_per_member(params, max_norm: float) -> torch.Tensor:
    """Rescale each ensemble member's gradient (slice e of every parameter) to global norm ≤ max_norm,
    like ``torch.nn.utils.clip_grad_norm_`` applied to each member alone. Returns the norms before
    clipping, shape (E,) (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    grads = [q.grad for q in params if q.grad is not None]
    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads))
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))
    return norms


def adding_inputs(generator: torch.Generator, T: int) -> torch.Tensor:
    """One input sequence (T, 2) of the adding problem (:func:`adding_problem` with batch 1), the
    inputs a trained adding-problem cell is probed on (https://kexue.fm/archives/7888, chapter
    ``rnn-gradients``)."""
    return adding_problem(1, T, generator)[0][0]


def scored_final_mse(run: dict, diverged_mse: float = TRIVIAL_ADDING_MSE) -> np.ndarray:
    """Each member's final test MSE of a :func:`train_adding` run, a member that diverged (or whose
    last evaluation is not finite) scored at ``diverged_mse`` (default the trivial baseline 1/6)
    (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    last = np.asarray(run["eval_mse"][-1], dtype=float).copy()
    bad = np.asarray(run["diverged"], dtype=bool) | ~np.isfinite(last)
    last[bad] = diverged_mse
    return last


def pick_lr(grid, val_mse) -> float:
    """The rate of ``grid`` with the lowest validation MSE; a tie goes to the smaller rate (the
    more cautious choice), a non-finite score counts as the worst."""
    grid, val = np.asarray(grid, dtype=float), np.asarray(val_mse, dtype=float)
    if grid.shape != val.shape or grid.size == 0:
        raise ValueError(f"pick_lr: one validation score per rate, got {grid.size} rates and {val.size} scores")
    val = np.where(np.isfinite(val), val, np.inf)
    best = np.flatnonzero(val == val.min())
    return float(grid[best[np.argmin(grid[best])]])


def choose_lr(kind: str, T: int, grid, *, seed: int, **train_kw) -> dict:
    """Choose ``kind``'s Adam learning rate for the adding problem of length T on validation: one
    :func:`train_adding` ensemble with one member per rate of ``grid`` (one seed per rate, as the
    book's chapter contract asks), each scored by :func:`scored_final_mse` on the run's held-out
    set, the best taken by :func:`pick_lr`. The held-out set is drawn from ``10_000 + seed``, so a
    sweep ``seed`` that no test run uses gives a validation set apart from every test set.
    ``train_kw`` goes to :func:`train_adding` (not ``members`` or ``lr``). Returns {"lr", "grid",
    "val_mse", "diverged"} (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    if "members" in train_kw or "lr" in train_kw:
        raise ValueError("choose_lr: the grid sets the members and their rates; do not pass members or lr")
    grid = [float(g) for g in grid]
    run = train_adding(kind, T, members=len(grid), lr=grid, seed=seed, **train_kw)
    val = scored_final_mse(run)
    return {"lr": pick_lr(grid, val), "grid": grid, "val_mse": val, "diverged": np.asarray(run["diverged"])}


@torch.no_grad()
def mean_forget_gate(params: dict, T: int, *, n: int = 256, seed: int = 0, recent: bool = False,
                     device=None) -> np.ndarray:
    """Per member of a trained LSTM ensemble (``train_adding``'s ``params``), the mean forget gate f_t
    over all steps, units and ``n`` fresh adding-problem sequences of length T (``recent`` as in
    :func:`adding_problem`): how much of its memory the trained cell keeps per step ("如果我们的任务
    比较依赖于历史信息，那么f_t就会接近于1", https://kexue.fm/archives/7888, chapter ``rnn-gradients``).
    Computed on ``device`` (default: the current device); the sequences are drawn on the CPU."""
    params = {k: v.to(resolve_device(device)) for k, v in params.items()}
    E = params["W"].shape[0]
    x, _ = adding_problem(E * n, T, torch.Generator().manual_seed(seed), recent=recent)
    x = x.view(E, n, T, 2).to(params["W"])
    H = params["U"].shape[-1]
    h = x.new_zeros(E, n, H)
    c = torch.zeros_like(h)
    total = torch.zeros(E, dtype=torch.float64)
    for t in range(T):
        h, c, g = lstm_cell(x[:, :, t], h, c, params)
        total += g["f"].double().mean(dim=(1, 2)).cpu()
    return (total / T).numpy()


def member_params(params: dict, e: int) -> dict:
    """Member ``e`` of an ensemble's cell parameters (``train_adding``'s ``params``) in the shapes of
    an unbatched :func:`init_cell_params` (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    return {"W": params["W"][e], "U": params["U"][e], "b": params["b"][e, 0]}


def train_adding(kind: str, T: int, *, members: int = 3, hidden: int = 128, steps: int = 1000,
                 batch: int = 64, lr: float | list[float] = 1e-3, clip: float | None = None, eval_every: int = 50,
                 eval_batch: int = 1000, seed: int = 0, scale: float = 1.0, forget_bias: float = 0.0,
                 recent: bool = False, device=None) -> dict:
    """Train E = ``members`` seeds of a ``kind`` cell on the adding problem of length T with Adam
    (MSE loss, fresh data each step, per-member gradient clipping when ``clip`` is set). Every
    ``eval_every`` steps the MSE on a fixed held-out set (its own generator, never trained on) is
    recorded. ``scale`` and ``forget_bias`` go to :func:`init_cell_params`; ``recent`` trains and
    evaluates the no-history variant of :func:`adding_problem`. ``lr`` is one learning rate, or one
    per member (a list of E rates: Adam's step is the learning rate times a quantity that does not
    depend on it, so each member's step is computed at rate 1 and scaled by its own rate; members
    are independent, so a learning-rate grid fits in one ensemble). Returns {"steps",
    "eval_mse" (n_evals, E), "train_mse" (steps, E), "seconds", "diverged" (E,), "params" (the
    trained cell parameters on the CPU; :func:`member_params` picks one member)}; a member whose loss turns non-finite is marked diverged and its later losses
    are NaN. Data are drawn on the CPU (the same stream on every device); the model and the batches
    live on ``device`` (default: the current device) (https://kexue.fm/archives/7888, chapter ``rnn-gradients``)."""
    device = resolve_device(device)
    import time

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = RecurrentEnsemble(kind, 2, hidden, members, generator=gen, scale=scale,
                              forget_bias=forget_bias).to(device)
    x_ev, y_ev = adding_problem(members * eval_batch, T, torch.Generator().manual_seed(10_000 + seed), recent=recent)
    x_ev, y_ev = x_ev.view(members, eval_batch, T, 2).to(device), y_ev.view(members, eval_batch).to(device)
    per_member = not isinstance(lr, (int, float))
    if per_member:
        rates = torch.as_tensor(list(lr), dtype=torch.float32)
        if rates.shape != (members,) or not bool(torch.all(rates > 0)):
            raise ValueError(f"lr: give one positive learning rate or {members} (one per member), got {list(lr)}")
        rates = rates.to(x_ev.device)
    opt = torch.optim.Adam(model.parameters(), lr=1.0 if per_member else lr)
    rec_steps, ev, tr = [], [], []
    diverged = torch.zeros(members, dtype=torch.bool, device=x_ev.device)

    def evaluate(step):
        with torch.no_grad():
            m = (model(x_ev) - y_ev).pow(2).mean(dim=1)
        m[diverged] = float("nan")
        rec_steps.append(step)
        ev.append(m.cpu().numpy().copy())

    t0 = time.perf_counter()
    evaluate(0)
    for step in range(1, steps + 1):
        x, y = adding_problem(members * batch, T, gen, recent=recent)
        x, y = x.view(members, batch, T, 2).to(x_ev.device), y.view(members, batch).to(x_ev.device)
        per = (model(x) - y).pow(2).mean(dim=1)
        bad = ~torch.isfinite(per)
        diverged |= bad
        loss = torch.where(diverged, torch.zeros_like(per), per).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            clip_grad_norm_per_member(list(model.parameters()), clip)
        for q in model.parameters():  # a diverged member stops moving; the others are unaffected
            q.grad[diverged] = 0
            q.grad.nan_to_num_(0.0)
        if per_member:
            before = [q.detach().clone() for q in model.parameters()]
        opt.step()
        if per_member:
            with torch.no_grad():
                for q, b in zip(model.parameters(), before):
                    q.copy_(b + (q - b) * rates.view(-1, *([1] * (q.dim() - 1))))
        tr.append(torch.where(diverged, torch.full_like(per, float("nan")), per).detach().cpu().numpy())
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return {"steps": np.array(rec_steps), "eval_mse": np.array(ev), "train_mse": np.array(tr),
            "seconds": time.perf_counter() - t0, "diverged": diverged.cpu().numpy(),
            "params": {k: v.detach().cpu() for k, v in model.cell.items()}}
